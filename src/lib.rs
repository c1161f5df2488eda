pub mod api;
pub mod config;
pub mod io;
pub mod steps;
pub mod workflow;
