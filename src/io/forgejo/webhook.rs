//! Forgejo webhook deliveries: checking their signature ([`verify`]), reading their event type
//! and delivery id from the headers, and parsing the payload into a [`ForgeEvent`] ([`parse`]).
//! Pure functions, no I/O: the API handler feeds them the raw request.
//!
//! Forgejo signs the raw body with `hex(HMAC-SHA256(secret, body))`, lowercase, no prefix, in
//! `X-Forgejo-Signature` and identically in `X-Gitea-Signature`. Dispatch is on the fine event
//! type (`X-Forgejo-Event-Type`), which tells a review comment from a PR conversation comment;
//! label changes come as `issue_label` / `label_updated` carrying the full current label set.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use thiserror::Error;

use super::types::RepoRef;

const SIGNATURE_HEADERS: [&str; 2] = ["x-forgejo-signature", "x-gitea-signature"];
const EVENT_TYPE_HEADERS: [&str; 2] = ["x-forgejo-event-type", "x-gitea-event-type"];
const DELIVERY_HEADERS: [&str; 2] = ["x-forgejo-delivery", "x-gitea-delivery"];

/// Why a delivery is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WebhookError {
    /// Neither `X-Forgejo-Signature` nor `X-Gitea-Signature` (or only empty ones: the hook has
    /// no secret configured on the forge).
    #[error("the delivery is not signed: no X-Forgejo-Signature or X-Gitea-Signature header")]
    MissingSignature,
    /// A signature that is not the HMAC-SHA256 of the body under our secret.
    #[error("the delivery's signature does not match its body (wrong secret, or altered body)")]
    BadSignature,
    /// We have no secret: nothing can be verified, every delivery is refused.
    #[error("no webhook secret is configured; deliveries cannot be verified")]
    NoSecret,
    /// Not JSON, or a field the event needs is missing or of the wrong type.
    #[error("malformed webhook payload: {0}")]
    Malformed(String),
}

/// Checks the delivery's signature against `secret` over the raw `body`, in constant time.
pub fn verify(secret: &[u8], body: &[u8], headers: &HeaderMap) -> Result<(), WebhookError> {
    if secret.is_empty() {
        return Err(WebhookError::NoSecret);
    }
    let signature =
        first_header(headers, &SIGNATURE_HEADERS).ok_or(WebhookError::MissingSignature)?;
    let signature = hex::decode(signature).map_err(|_| WebhookError::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| WebhookError::BadSignature)?;
    mac.update(body);
    mac.verify_slice(&signature)
        .map_err(|_| WebhookError::BadSignature)
}

/// The fine event type (`X-Forgejo-Event-Type`, else `X-Gitea-Event-Type`): `issues`,
/// `issue_label`, `pull_request_review_rejected`…
pub fn event_type(headers: &HeaderMap) -> Option<String> {
    first_header(headers, &EVENT_TYPE_HEADERS).map(str::to_string)
}

/// The delivery's id (`X-Forgejo-Delivery`, else `X-Gitea-Delivery`), the same on a redelivery.
pub fn delivery_id(headers: &HeaderMap) -> Option<String> {
    first_header(headers, &DELIVERY_HEADERS).map(str::to_string)
}

/// The first of `names` present with a non-empty value, trimmed.
fn first_header<'h>(headers: &'h HeaderMap, names: &[&str]) -> Option<&'h str> {
    names.iter().find_map(|name| {
        let value = headers.get(*name)?.to_str().ok()?.trim();
        (!value.is_empty()).then_some(value)
    })
}

/// The repository an event happened in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoInfo {
    /// `owner/name`.
    pub full_name: String,
    pub clone_url: String,
    pub default_branch: String,
}

impl RepoInfo {
    /// The repository as an `owner/name` reference (checked by [`parse`]).
    pub fn repo_ref(&self) -> RepoRef {
        match self.full_name.split_once('/') {
            Some((owner, name)) => RepoRef::new(owner, name),
            None => RepoRef::new("", self.full_name.clone()),
        }
    }
}

/// An issue as a webhook shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueInfo {
    pub number: u64,
    pub title: String,
    pub body: String,
    /// `open` or `closed`.
    pub state: String,
    /// The full current set of label names.
    pub labels: Vec<String>,
    /// True when the issue is a pull request's.
    pub is_pull: bool,
    /// The login of who opened it.
    pub author: String,
}

/// A pull request as a webhook shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullInfo {
    pub number: u64,
    pub title: String,
    /// `open` or `closed`.
    pub state: String,
    pub merged: bool,
    /// The head branch (`task/12`; `refs/pull/<n>/head` once a merged branch was deleted).
    pub head_ref: String,
    pub head_sha: String,
    pub base_ref: String,
    pub html_url: String,
}

/// What a submitted review says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewVerdict {
    Approved,
    /// Changes requested.
    Rejected,
    Comment,
}

/// A delivery, by what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForgeEvent {
    /// `issues` (opened, closed, reopened, edited…), `issue_label` (`label_updated`,
    /// `label_cleared`: the full label set is in `issue.labels`), `issue_assign`,
    /// `issue_milestone`.
    Issue {
        action: String,
        repo: RepoInfo,
        issue: IssueInfo,
    },
    /// `pull_request` (opened, closed — merged when `pull.merged` —, reopened, edited),
    /// `pull_request_sync` (`synchronized`: new commits), and `pull_request_label`,
    /// `pull_request_assign`, `pull_request_milestone`, `pull_request_review_request`.
    PullRequest {
        action: String,
        repo: RepoInfo,
        pull: PullInfo,
    },
    /// `pull_request_review_approved` / `_rejected` / `_comment` (action `reviewed`). The
    /// payload has the review's body but not its id or inline comments: fetch
    /// `/pulls/{index}/reviews` for those.
    Review {
        verdict: ReviewVerdict,
        repo: RepoInfo,
        pull: PullInfo,
        /// The review's body.
        content: String,
        /// The reviewer's login.
        reviewer: String,
    },
    /// `push`.
    Push {
        repo: RepoInfo,
        /// `refs/heads/<branch>` or `refs/tags/<tag>`.
        git_ref: String,
        before: String,
        after: String,
        /// How many commits were pushed.
        commits: usize,
    },
    /// A new comment (action `created`): `issue_comment` on an issue, `pull_request_comment` on a
    /// pull request's conversation. Edited and deleted comments are [`ForgeEvent::Ignored`].
    Comment {
        repo: RepoInfo,
        issue_number: u64,
        is_pull: bool,
        author: String,
        body: String,
    },
    /// Any other event type (or comment action): acknowledged and ignored.
    Ignored { event_type: String },
}

impl ForgeEvent {
    /// The repository the event is about (`None` for [`ForgeEvent::Ignored`]).
    pub fn repo(&self) -> Option<&RepoInfo> {
        match self {
            ForgeEvent::Issue { repo, .. }
            | ForgeEvent::PullRequest { repo, .. }
            | ForgeEvent::Review { repo, .. }
            | ForgeEvent::Push { repo, .. }
            | ForgeEvent::Comment { repo, .. } => Some(repo),
            ForgeEvent::Ignored { .. } => None,
        }
    }
}

/// Parses the payload of a delivery of fine type `event_type` (see [`event_type`]). Event types
/// not listed on [`ForgeEvent`] are [`ForgeEvent::Ignored`] without reading the body.
pub fn parse(event_type: &str, body: &[u8]) -> Result<ForgeEvent, WebhookError> {
    let event_type = event_type.trim();
    let Some(kind) = kind_of(event_type) else {
        return Ok(ForgeEvent::Ignored {
            event_type: event_type.to_string(),
        });
    };
    let root: Value = super::sparse::parse(body, READ)
        .map_err(|e| WebhookError::Malformed(format!("{event_type} payload is not JSON: {e}")))?;
    event_of(event_type, kind, &root)
}

/// What a fine event type is about; `None`: not acted on.
fn kind_of(event_type: &str) -> Option<Kind> {
    Some(match event_type {
        "issues" | "issue_label" | "issue_assign" | "issue_milestone" => Kind::Issue,
        "pull_request"
        | "pull_request_sync"
        | "pull_request_label"
        | "pull_request_assign"
        | "pull_request_milestone"
        | "pull_request_review_request" => Kind::Pull,
        "pull_request_review_approved" => Kind::Review(ReviewVerdict::Approved),
        "pull_request_review_rejected" => Kind::Review(ReviewVerdict::Rejected),
        "pull_request_review_comment" => Kind::Review(ReviewVerdict::Comment),
        "push" => Kind::Push,
        "issue_comment" | "pull_request_comment" => Kind::Comment,
        _ => return None,
    })
}

/// The event of a parsed payload.
fn event_of(event_type: &str, kind: Kind, root: &Value) -> Result<ForgeEvent, WebhookError> {
    if !root.is_object() {
        return Err(WebhookError::Malformed(format!(
            "{event_type} payload is not a JSON object"
        )));
    }
    let p = Payload { event_type, root };
    let event = match kind {
        Kind::Issue => ForgeEvent::Issue {
            action: p.string("action")?,
            repo: p.repo()?,
            issue: p.issue()?,
        },
        Kind::Pull => ForgeEvent::PullRequest {
            action: p.string("action")?,
            repo: p.repo()?,
            pull: p.pull()?,
        },
        Kind::Review(verdict) => ForgeEvent::Review {
            verdict,
            repo: p.repo()?,
            pull: p.pull()?,
            content: p.string_or_empty("review.content")?,
            reviewer: match p.string_or_empty("sender.login")? {
                login if !login.is_empty() => login,
                _ => p.string_or_empty("requested_reviewer.login")?,
            },
        },
        Kind::Push => {
            let commits = match p.get("total_commits") {
                Some(_) => usize::try_from(p.number("total_commits")?).unwrap_or(usize::MAX),
                None => p.array_or_empty("commits")?.len(),
            };
            ForgeEvent::Push {
                repo: p.repo()?,
                git_ref: p.string("ref")?,
                before: p.string("before")?,
                after: p.string("after")?,
                commits,
            }
        }
        Kind::Comment => {
            let action = p.string("action")?;
            if action != "created" {
                return Ok(ForgeEvent::Ignored {
                    event_type: format!("{event_type} ({action})"),
                });
            }
            let is_pull = match p.get("is_pull") {
                Some(_) => p.boolean("is_pull")?,
                None => p.get("issue.pull_request").is_some(),
            };
            ForgeEvent::Comment {
                repo: p.repo()?,
                issue_number: p.number("issue.number")?,
                is_pull,
                author: p.string_or_empty("comment.user.login")?,
                body: p.string_or_empty("comment.body")?,
            }
        }
    };
    Ok(event)
}

/// Every path of a payload that [`parse`] reads: the rest is skipped while parsing (see
/// `sparse`). `issue.labels.name` is the name of each label; of `commits` only the count is
/// used.
const READ: &[&str] = &[
    "action",
    "after",
    "before",
    "comment.body",
    "comment.user.login",
    "commits.id",
    "is_pull",
    "issue.body",
    "issue.labels.name",
    "issue.number",
    "issue.pull_request",
    "issue.state",
    "issue.title",
    "issue.user.login",
    "pull_request.base.ref",
    "pull_request.head.ref",
    "pull_request.head.sha",
    "pull_request.html_url",
    "pull_request.merged",
    "pull_request.number",
    "pull_request.state",
    "pull_request.title",
    "ref",
    "repository.clone_url",
    "repository.default_branch",
    "repository.full_name",
    "requested_reviewer.login",
    "review.content",
    "sender.login",
    "total_commits",
];

#[derive(Clone, Copy)]
enum Kind {
    Issue,
    Pull,
    Review(ReviewVerdict),
    Push,
    Comment,
}

/// Typed reads of dotted paths in a payload, with errors that name the path.
struct Payload<'a> {
    event_type: &'a str,
    root: &'a Value,
}

impl Payload<'_> {
    /// The value at `path` (`a.b.c`); `null` counts as absent.
    fn get(&self, path: &str) -> Option<&Value> {
        path.split('.')
            .try_fold(self.root, |v, key| v.get(key))
            .filter(|v| !v.is_null())
    }

    /// `path` is absent (or `null`) or not of the `expected` type.
    fn missing(&self, path: &str, expected: &str) -> WebhookError {
        let detail = match self.get(path) {
            None => format!("`{path}` is missing (expected {expected})"),
            Some(_) => format!("`{path}` is not {expected}"),
        };
        WebhookError::Malformed(format!("{} payload: {detail}", self.event_type))
    }

    fn string(&self, path: &str) -> Result<String, WebhookError> {
        self.get(path)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| self.missing(path, "a string"))
    }

    /// A string that may be absent or `null` (then empty), but not of another type.
    fn string_or_empty(&self, path: &str) -> Result<String, WebhookError> {
        match self.get(path) {
            None => Ok(String::new()),
            Some(_) => self.string(path),
        }
    }

    fn number(&self, path: &str) -> Result<u64, WebhookError> {
        self.get(path)
            .and_then(Value::as_u64)
            .ok_or_else(|| self.missing(path, "a non-negative integer"))
    }

    fn boolean(&self, path: &str) -> Result<bool, WebhookError> {
        self.get(path)
            .and_then(Value::as_bool)
            .ok_or_else(|| self.missing(path, "a boolean"))
    }

    fn boolean_or_false(&self, path: &str) -> Result<bool, WebhookError> {
        match self.get(path) {
            None => Ok(false),
            Some(_) => self.boolean(path),
        }
    }

    fn array_or_empty(&self, path: &str) -> Result<&[Value], WebhookError> {
        match self.get(path) {
            None => Ok(&[]),
            Some(v) => v
                .as_array()
                .map(Vec::as_slice)
                .ok_or_else(|| self.missing(path, "an array")),
        }
    }

    fn repo(&self) -> Result<RepoInfo, WebhookError> {
        let full_name = self.string("repository.full_name")?;
        if full_name.parse::<RepoRef>().is_err() {
            return Err(WebhookError::Malformed(format!(
                "{} payload: `repository.full_name` {full_name:?} is not `owner/name`",
                self.event_type
            )));
        }
        Ok(RepoInfo {
            full_name,
            clone_url: self.string_or_empty("repository.clone_url")?,
            default_branch: self.string_or_empty("repository.default_branch")?,
        })
    }

    fn issue(&self) -> Result<IssueInfo, WebhookError> {
        let labels = self
            .array_or_empty("issue.labels")?
            .iter()
            .enumerate()
            .map(|(i, label)| {
                label
                    .get("name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        WebhookError::Malformed(format!(
                            "{} payload: `issue.labels[{i}].name` is missing (expected a string)",
                            self.event_type
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(IssueInfo {
            number: self.number("issue.number")?,
            title: self.string("issue.title")?,
            body: self.string_or_empty("issue.body")?,
            state: self.string("issue.state")?,
            labels,
            is_pull: self.get("issue.pull_request").is_some(),
            author: self.string_or_empty("issue.user.login")?,
        })
    }

    fn pull(&self) -> Result<PullInfo, WebhookError> {
        Ok(PullInfo {
            number: self.number("pull_request.number")?,
            title: self.string("pull_request.title")?,
            state: self.string("pull_request.state")?,
            merged: self.boolean_or_false("pull_request.merged")?,
            head_ref: self.string("pull_request.head.ref")?,
            head_sha: self.string("pull_request.head.sha")?,
            base_ref: self.string("pull_request.base.ref")?,
            html_url: self.string_or_empty("pull_request.html_url")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(secret: &[u8], body: &[u8]) -> HeaderMap {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        let mut headers = HeaderMap::new();
        headers.insert(
            "X-Forgejo-Signature",
            hex::encode(mac.finalize().into_bytes()).parse().unwrap(),
        );
        headers
    }

    /// `READ` lists every path `event_of` reads: each reference payload, parsed sparsely,
    /// gives the event it gives when parsed whole.
    #[test]
    fn every_reference_payload_reads_the_same_when_only_the_read_paths_are_parsed() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/reference/forgejo/webhooks"
        );
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let headers = std::fs::read_to_string(path.with_extension("headers")).unwrap();
            let event_type = headers
                .lines()
                .find_map(|l| l.strip_prefix("X-Forgejo-Event-Type: "))
                .unwrap()
                .trim();
            let body = std::fs::read(&path).unwrap();
            let whole: Value = serde_json::from_slice(&body).unwrap();
            let kind = kind_of(event_type).unwrap();
            let expected = event_of(event_type, kind, &whole).unwrap();
            assert_eq!(
                parse(event_type, &body).unwrap(),
                expected,
                "{}",
                path.display()
            );
            seen += 1;
        }
        assert!(seen >= 11, "only {seen} reference payloads");
    }

    #[test]
    fn empty_secret_refuses_everything() {
        let headers = signed(b"", b"{}");
        assert_eq!(verify(b"", b"{}", &headers), Err(WebhookError::NoSecret));
    }

    #[test]
    fn empty_forgejo_signature_falls_back_to_gitea() {
        let mut headers = signed(b"s", b"{}");
        let value = headers.remove("x-forgejo-signature").unwrap();
        headers.insert("x-forgejo-signature", "".parse().unwrap());
        headers.insert("x-gitea-signature", value);
        assert_eq!(verify(b"s", b"{}", &headers), Ok(()));
    }

    #[test]
    fn non_hex_signature_is_bad() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forgejo-signature", "sha256=zz".parse().unwrap());
        assert_eq!(
            verify(b"s", b"{}", &headers),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn missing_field_is_named() {
        let body = br#"{"action":"opened","repository":{"full_name":"a/b"},"issue":{"title":"t","state":"open"}}"#;
        let err = parse("issues", body).unwrap_err();
        assert_eq!(
            err,
            WebhookError::Malformed(
                "issues payload: `issue.number` is missing (expected a non-negative integer)"
                    .into()
            )
        );
        let body = br#"{"action":"opened","repository":{"full_name":"a/b"},"issue":{"number":"7","title":"t","state":"open"}}"#;
        let err = parse("issues", body).unwrap_err().to_string();
        assert!(
            err.contains("`issue.number` is not a non-negative integer"),
            "{err}"
        );
    }

    #[test]
    fn edited_comment_is_ignored() {
        let body = br#"{"action":"edited","repository":{"full_name":"a/b"},"issue":{"number":1},"comment":{"body":"x"}}"#;
        assert_eq!(
            parse("issue_comment", body).unwrap(),
            ForgeEvent::Ignored {
                event_type: "issue_comment (edited)".into()
            }
        );
    }

    #[test]
    fn repo_ref_of_repo_info() {
        let info = RepoInfo {
            full_name: "acme/widgets".into(),
            clone_url: String::new(),
            default_branch: "main".into(),
        };
        assert_eq!(info.repo_ref(), RepoRef::new("acme", "widgets"));
    }
}
