//! Forgejo (SPEC §6): [`client`] is the REST client of a forge, [`types`] holds its answers.
//!
//! Nothing here knows about tasks or workflows: steps and effect handlers decide what a label,
//! comment or review means.

pub mod client;
pub mod types;

pub use client::{CreatePull, ForgeError, Forgejo};
pub use types::{
    BadRepoRef, Branch, Comment, Commit, Compare, Issue, Label, PullRequest, PullReview, RepoRef,
    Repository, ReviewComment, User,
};
