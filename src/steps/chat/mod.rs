//! The fleet in a chat room (SPEC §7): what a `!fleet …` message asks ([`command`]) and what
//! the fleet answers to it ([`answer`]), through the same service functions as the HTTP API.
//! Nothing here knows Matrix: the bot gives a message's text and shows the answer.

pub mod answer;
pub mod command;
