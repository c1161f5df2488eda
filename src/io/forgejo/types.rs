//! The Forgejo REST answers the daemon reads (swagger definitions `Issue`, `Label`, `Comment`,
//! `PullRequest`, `PRBranchInfo`, `Commit`, `PullReview`, `PullReviewComment`, `Compare`,
//! `Repository`, `RepoCollaboratorPermission`), reduced to the fields it uses, and [`RepoRef`], the `owner/name` of a
//! repository.
//!
//! Unknown fields are ignored. Forgejo (Go) sends `null` for a nil slice or pointer and may leave
//! out `omitempty` fields, so every field that can be absent or `null` reads as its default.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};
use thiserror::Error;

/// `null` or absent → `T::default()`.
fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A repository's `owner/name`, as used in API paths and config.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoRef {
    pub owner: String,
    pub name: String,
}

impl RepoRef {
    pub fn new(owner: impl Into<String>, name: impl Into<String>) -> RepoRef {
        RepoRef {
            owner: owner.into(),
            name: name.into(),
        }
    }
}

/// Why a string is not an `owner/name`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{value:?} is not a repository: expected `owner/name` (e.g. `acme/widgets`)")]
pub struct BadRepoRef {
    pub value: String,
}

impl FromStr for RepoRef {
    type Err = BadRepoRef;

    fn from_str(s: &str) -> Result<RepoRef, BadRepoRef> {
        let bad = || BadRepoRef {
            value: s.to_string(),
        };
        let (owner, name) = s.trim().split_once('/').ok_or_else(bad)?;
        let valid = |part: &str| {
            !part.is_empty()
                && !part.contains('/')
                && !part.chars().any(|c| c.is_whitespace() || c.is_control())
        };
        if !valid(owner) || !valid(name) {
            return Err(bad());
        }
        Ok(RepoRef::new(owner, name))
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Label {
    pub id: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    /// Six hex digits, without `#` (as Forgejo answers it).
    #[serde(default, deserialize_with = "null_default")]
    pub color: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct User {
    #[serde(default, deserialize_with = "null_default")]
    pub id: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub login: String,
}

/// An issue, or the issue side of a pull request (`pull_request` set).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Issue {
    pub id: i64,
    pub number: u64,
    #[serde(default, deserialize_with = "null_default")]
    pub title: String,
    #[serde(default, deserialize_with = "null_default")]
    pub body: String,
    /// `open` or `closed`.
    #[serde(default, deserialize_with = "null_default")]
    pub state: String,
    #[serde(default, deserialize_with = "null_default")]
    pub labels: Vec<Label>,
    #[serde(default, deserialize_with = "null_default")]
    pub user: User,
    /// Who the issue is assigned to (Forgejo sends `null` for nobody).
    #[serde(default, deserialize_with = "null_default")]
    pub assignees: Vec<User>,
    #[serde(default, deserialize_with = "null_default")]
    pub html_url: String,
    /// `PullRequestMeta` when the issue is a pull request, else absent or `null`.
    #[serde(default)]
    pub pull_request: Option<serde_json::Value>,
}

impl Issue {
    /// True when this "issue" is a pull request.
    pub fn is_pull(&self) -> bool {
        self.pull_request.as_ref().is_some_and(|v| !v.is_null())
    }

    /// The logins it is assigned to, in the forge's order.
    pub fn assignee_logins(&self) -> Vec<String> {
        self.assignees.iter().map(|u| u.login.clone()).collect()
    }

    /// The names of its labels, in the forge's order.
    pub fn label_names(&self) -> Vec<String> {
        self.labels.iter().map(|l| l.name.clone()).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Repository {
    pub id: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub full_name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub owner: User,
    #[serde(default, deserialize_with = "null_default")]
    pub clone_url: String,
    #[serde(default, deserialize_with = "null_default")]
    pub ssh_url: String,
    #[serde(default, deserialize_with = "null_default")]
    pub default_branch: String,
    #[serde(default, deserialize_with = "null_default")]
    pub html_url: String,
}

/// A comment on an issue or on a pull request's conversation.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Comment {
    pub id: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub body: String,
    #[serde(default, deserialize_with = "null_default")]
    pub user: User,
    #[serde(default, deserialize_with = "null_default")]
    pub html_url: String,
}

/// One side of a pull request (swagger `PRBranchInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Branch {
    /// The branch name (`task/12`); `refs/pull/<n>/head` once a merged head branch was deleted.
    #[serde(rename = "ref", default, deserialize_with = "null_default")]
    pub ref_name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub sha: String,
    #[serde(default, deserialize_with = "null_default")]
    pub label: String,
    /// The repository the branch is in: for the head, the base repository's id unless the pull
    /// request comes from a fork (`-1` once the head repository was deleted; `0` if absent).
    #[serde(default, deserialize_with = "null_default")]
    pub repo_id: i64,
}

impl PullRequest {
    /// True when the head branch is in the base repository itself (not a fork, not a deleted
    /// repository): only then is a branch named `task/<id>` one the daemon could have pushed.
    pub fn head_in_base_repo(&self) -> bool {
        self.head.repo_id > 0 && self.head.repo_id == self.base.repo_id
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct PullRequest {
    pub id: i64,
    pub number: u64,
    #[serde(default, deserialize_with = "null_default")]
    pub title: String,
    #[serde(default, deserialize_with = "null_default")]
    pub body: String,
    /// `open` or `closed` (a merged pull request is `closed` with `merged`).
    #[serde(default, deserialize_with = "null_default")]
    pub state: String,
    #[serde(default, deserialize_with = "null_default")]
    pub merged: bool,
    #[serde(default)]
    pub merged_at: Option<String>,
    #[serde(default)]
    pub merge_commit_sha: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub html_url: String,
    #[serde(default, deserialize_with = "null_default")]
    pub head: Branch,
    #[serde(default, deserialize_with = "null_default")]
    pub base: Branch,
}

/// The git side of a [`Commit`] (swagger `RepoCommit`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct RepoCommit {
    #[serde(default, deserialize_with = "null_default")]
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Commit {
    #[serde(default, deserialize_with = "null_default")]
    pub sha: String,
    #[serde(default, deserialize_with = "null_default")]
    pub commit: RepoCommit,
}

impl Commit {
    /// The full commit message.
    pub fn message(&self) -> &str {
        &self.commit.message
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct PullReview {
    pub id: i64,
    /// `APPROVED`, `PENDING`, `COMMENT`, `REQUEST_CHANGES` or `REQUEST_REVIEW`.
    #[serde(default, deserialize_with = "null_default")]
    pub state: String,
    #[serde(default, deserialize_with = "null_default")]
    pub body: String,
    #[serde(default)]
    pub user: Option<User>,
    #[serde(default)]
    pub submitted_at: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub comments_count: u64,
    #[serde(default, deserialize_with = "null_default")]
    pub stale: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub dismissed: bool,
    /// The reviewer may approve on the (protected) base branch, as the forge decided.
    #[serde(default, deserialize_with = "null_default")]
    pub official: bool,
}

/// `GET /repos/{owner}/{repo}/collaborators/{collaborator}/permission` (swagger
/// `RepoCollaboratorPermission`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct RepoPermission {
    /// The user's access mode: `none`, `read`, `write`, `admin` or `owner`.
    #[serde(default, deserialize_with = "null_default")]
    pub permission: String,
    #[serde(default, deserialize_with = "null_default")]
    pub role_name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub user: User,
}

impl RepoPermission {
    /// Write access or more (`write`, `admin`, `owner`).
    pub fn can_write(&self) -> bool {
        matches!(
            self.permission.trim().to_ascii_lowercase().as_str(),
            "write" | "admin" | "owner"
        )
    }
}

/// An inline comment of a review (swagger `PullReviewComment`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct ReviewComment {
    pub id: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub body: String,
    /// The file the comment is on.
    #[serde(default, deserialize_with = "null_default")]
    pub path: String,
    /// The line in the current diff (swagger `position`); `None` when outdated.
    #[serde(default)]
    pub position: Option<u64>,
    /// The line in the diff the comment was written on (swagger `original_position`).
    #[serde(default)]
    pub original_position: Option<u64>,
    #[serde(default, deserialize_with = "null_default")]
    pub diff_hunk: String,
    #[serde(default)]
    pub user: Option<User>,
}

/// `GET /repos/{owner}/{repo}/compare/{base}...{head}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Compare {
    #[serde(default, deserialize_with = "null_default")]
    pub total_commits: u64,
    #[serde(default, deserialize_with = "null_default")]
    pub commits: Vec<Commit>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ref_parses_and_displays() {
        let repo: RepoRef = "acme/widgets".parse().unwrap();
        assert_eq!(repo, RepoRef::new("acme", "widgets"));
        assert_eq!(repo.to_string(), "acme/widgets");
        for bad in ["", "acme", "acme/", "/widgets", "a/b/c", "ac me/w"] {
            let err = bad.parse::<RepoRef>().unwrap_err();
            assert!(err.to_string().contains("owner/name"), "{bad}: {err}");
        }
    }

    #[test]
    fn nulls_and_missing_fields_read_as_defaults() {
        let issue: Issue = serde_json::from_str(
            r#"{"id":1,"number":2,"title":"t","body":null,"labels":null,"user":null,
                "pull_request":null,"extra":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(issue.body, "");
        assert!(issue.labels.is_empty());
        assert!(!issue.is_pull());
        let pull: Issue = serde_json::from_str(
            r#"{"id":1,"number":2,"labels":[{"id":3,"name":"a","color":"ffffff"}],
                "pull_request":{"merged":false}}"#,
        )
        .unwrap();
        assert!(pull.is_pull());
        assert_eq!(pull.label_names(), ["a"]);
        let commit: Commit =
            serde_json::from_str(r#"{"sha":"abc","commit":{"message":"m\n\nbody"}}"#).unwrap();
        assert_eq!(commit.message(), "m\n\nbody");
        let pr: PullRequest = serde_json::from_str(
            r#"{"id":1,"number":2,"merged":true,"merged_at":null,
                "head":{"ref":"task/1","sha":"s","label":"task/1","repo":null},"base":null}"#,
        )
        .unwrap();
        assert_eq!(pr.head.ref_name, "task/1");
        assert!(pr.merged && pr.merged_at.is_none() && pr.base.ref_name.is_empty());
        assert!(
            !pr.head_in_base_repo(),
            "no repository ids: not known to be the base's"
        );
        let pr: PullRequest = serde_json::from_str(
            r#"{"id":1,"number":2,"head":{"ref":"task/1","repo_id":7},"base":{"ref":"main","repo_id":7}}"#,
        )
        .unwrap();
        assert!(pr.head_in_base_repo());
        let fork: PullRequest = serde_json::from_str(
            r#"{"id":1,"number":2,"head":{"ref":"task/1","repo_id":9},"base":{"ref":"main","repo_id":7}}"#,
        )
        .unwrap();
        assert!(!fork.head_in_base_repo());
        let review: PullReview =
            serde_json::from_str(r#"{"id":3,"state":"COMMENT","official":null}"#).unwrap();
        assert!(!review.official);
        for (mode, write) in [
            ("read", false),
            ("none", false),
            ("write", true),
            ("admin", true),
            ("owner", true),
        ] {
            let p: RepoPermission = serde_json::from_str(&format!(
                r#"{{"permission":"{mode}","role_name":"{mode}","user":null}}"#
            ))
            .unwrap();
            assert_eq!(p.can_write(), write, "{mode}");
        }
    }
}
