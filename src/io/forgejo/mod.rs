//! Forgejo (SPEC §6): [`client`] is the REST client of a forge, [`webhook`] verifies and parses
//! the deliveries it sends, [`types`] holds the REST answers both share with callers.
//!
//! Nothing here knows about tasks or workflows: steps and effect handlers decide what a label,
//! comment or review means.

pub mod client;
mod sparse;
pub mod types;
pub mod webhook;

pub use client::{CreatePull, ForgeError, Forgejo};
pub use types::{
    BadRepoRef, Branch, Comment, Commit, Compare, Issue, Label, PullRequest, PullReview,
    RepoPermission, RepoRef, Repository, ReviewComment, User,
};
pub use webhook::{ForgeEvent, IssueInfo, PullInfo, RepoInfo, ReviewVerdict, WebhookError};
