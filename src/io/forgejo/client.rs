//! [`Forgejo`], the daemon's REST client of one forge (`{base_url}/api/v1`, token auth): issues,
//! labels, comments, pull requests, their commits and reviews, compare. It owns the transport
//! concerns — timeouts, retries of transient failures, pagination, typed [`ForgeError`]s — so
//! callers see one `async fn` per forge operation.
//!
//! The token is sent only as `Authorization: token <token>`; it is never printed (`Debug` hides
//! it) and is scrubbed from any message the forge echoes back.

use std::fmt;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use thiserror::Error;

use super::types::{
    Comment, Commit, Compare, Issue, Label, PullRequest, PullReview, RepoPermission, RepoRef,
    Repository, ReviewComment, User,
};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Items asked per page (Forgejo's default `MAX_RESPONSE_ITEMS` is 50).
const PAGE_LIMIT: usize = 50;
/// A list longer than this many pages is refused rather than read forever.
const MAX_PAGES: u32 = 100;
/// How much of a non-JSON error body is quoted in [`ForgeError::Status`].
const BODY_EXCERPT: usize = 200;
/// The longest `Retry-After` honoured between two tries.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Why a forge call failed.
#[derive(Debug, Error)]
pub enum ForgeError {
    /// The forge's base URL is unusable.
    #[error("invalid forge URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// The token cannot be sent in an HTTP header (control characters, newline…).
    #[error("the forge token is not a valid HTTP header value")]
    BadToken,
    /// The forge answered with an error status. `message` is the JSON `message` field of the
    /// answer when it has one, else the start of the body.
    #[error("{method} {path}: the forge answered HTTP {status}: {message}")]
    Status {
        method: String,
        path: String,
        status: u16,
        message: String,
    },
    /// No answer: connection refused or broken, timeout, TLS…
    #[error("{method} {path}: no answer from the forge: {error}")]
    Transport {
        method: String,
        path: String,
        error: String,
    },
    /// An answer that is not the JSON expected.
    #[error("{method} {path}: unexpected answer from the forge: {error}")]
    Decode {
        method: String,
        path: String,
        error: String,
    },
    /// A list that did not end within `pages` pages.
    #[error("GET {path}: more than {pages} pages; refusing to read further")]
    TooManyPages { path: String, pages: u32 },
}

impl ForgeError {
    /// True when trying again later may succeed (no answer, 5xx, 429, 408). The client has
    /// already retried these; the caller decides whether to try again later.
    pub fn is_transient(&self) -> bool {
        match self {
            ForgeError::Transport { .. } => true,
            ForgeError::Status { status, .. } => transient_status(*status),
            _ => false,
        }
    }

    /// True for a 404: the repository, issue, pull request… does not exist (or the token cannot
    /// see it).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The HTTP status of the forge's answer, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ForgeError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

fn transient_status(status: u16) -> bool {
    status >= 500 || status == 429 || status == 408
}

/// `POST /repos/{owner}/{repo}/pulls` (swagger `CreatePullRequestOption`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatePull {
    /// The branch with the changes (`task/12`).
    pub head: String,
    /// The branch to merge into (`main`).
    pub base: String,
    pub title: String,
    pub body: String,
}

/// A successful answer: its headers and body.
struct Answer {
    headers: HeaderMap,
    body: Vec<u8>,
}

/// The REST client of one forge. Cheap to clone.
#[derive(Clone)]
pub struct Forgejo {
    http: reqwest::Client,
    /// `{base_url}/api/v1`.
    api: Url,
    auth: HeaderValue,
    /// Scrubbed from messages the forge echoes back.
    token: String,
    tries: u32,
    base_delay: Duration,
}

impl fmt::Debug for Forgejo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forgejo")
            .field("api", &self.api.as_str())
            .field("token", &"<redacted>")
            .field("tries", &self.tries)
            .field("base_delay", &self.base_delay)
            .finish()
    }
}

impl Forgejo {
    /// A client of the forge at `base_url` (its root: `https://forge.example.org`, or with a
    /// path prefix if the forge is served under one), authenticating with `token`. Tries
    /// transient failures 3 times, 500 ms apart and doubling (see [`Forgejo::with_retries`]).
    pub fn new(base_url: &str, token: String) -> Result<Forgejo, ForgeError> {
        let trimmed = base_url.trim();
        let bad = |reason: &str| ForgeError::BadUrl {
            url: trimmed.to_string(),
            reason: reason.to_string(),
        };
        let mut api = Url::parse(trimmed).map_err(|e| bad(&e.to_string()))?;
        if !matches!(api.scheme(), "http" | "https") {
            return Err(bad("only http:// and https:// are supported"));
        }
        if api.query().is_some() || api.fragment().is_some() {
            return Err(bad("a query or fragment has no place in it"));
        }
        if !api.username().is_empty() || api.password().is_some() {
            return Err(bad("credentials belong in the token, not in the URL"));
        }
        api.path_segments_mut()
            .map_err(|()| bad("it cannot be a base URL"))?
            .pop_if_empty()
            .extend(["api", "v1"]);
        let token = token.trim().to_string();
        let mut auth =
            HeaderValue::from_str(&format!("token {token}")).map_err(|_| ForgeError::BadToken)?;
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("agent-fleet/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| bad(&format!("cannot build the HTTP client: {}", root_cause(&e))))?;
        Ok(Forgejo {
            http,
            api,
            auth,
            token,
            tries: 3,
            base_delay: Duration::from_millis(500),
        })
    }

    /// Tries each call up to `tries` times (at least once) while it fails transiently, waiting
    /// `base_delay`, then twice as long each time (or the forge's `Retry-After`, up to 30 s).
    /// POSTs are repeated only when the forge surely did not act on them (see `call`).
    pub fn with_retries(mut self, tries: u32, base_delay: Duration) -> Forgejo {
        self.tries = tries.max(1);
        self.base_delay = base_delay;
        self
    }

    /// `GET /repos/{owner}/{repo}`.
    pub async fn repo(&self, repo: &RepoRef) -> Result<Repository, ForgeError> {
        self.get(&repo_path(repo, &[]), &[]).await
    }

    /// `GET /repos/{owner}/{repo}/issues/{index}` (a pull request is an issue too).
    pub async fn issue(&self, repo: &RepoRef, index: u64) -> Result<Issue, ForgeError> {
        self.get(&repo_path(repo, &["issues", &index.to_string()]), &[])
            .await
    }

    /// `PATCH /repos/{owner}/{repo}/issues/{index}` with `assignees`: the issue is assigned to
    /// exactly `logins` (none: nobody). Forgejo answers 500 when a login is no user or cannot
    /// be assigned (see [`Forgejo::assignable`]).
    pub async fn set_assignees(
        &self,
        repo: &RepoRef,
        index: u64,
        logins: &[String],
    ) -> Result<Issue, ForgeError> {
        let body = serde_json::json!({ "assignees": logins });
        let path = repo_path(repo, &["issues", &index.to_string()]);
        self.send(Method::PATCH, &path, &[], Some(&body)).await
    }

    /// `GET /repos/{owner}/{repo}/assignees`: the users issues of the repository can be
    /// assigned to (those with write access).
    pub async fn assignable(&self, repo: &RepoRef) -> Result<Vec<User>, ForgeError> {
        self.get(&repo_path(repo, &["assignees"]), &[]).await
    }

    /// The open issues (not pull requests) carrying `label`, all pages.
    pub async fn open_issues_with_label(
        &self,
        repo: &RepoRef,
        label: &str,
    ) -> Result<Vec<Issue>, ForgeError> {
        let issues: Vec<Issue> = self
            .get_all(
                &repo_path(repo, &["issues"]),
                &[("state", "open"), ("type", "issues"), ("labels", label)],
            )
            .await?;
        Ok(issues.into_iter().filter(|i| !i.is_pull()).collect())
    }

    /// All the repository's labels.
    pub async fn repo_labels(&self, repo: &RepoRef) -> Result<Vec<Label>, ForgeError> {
        self.get_all(&repo_path(repo, &["labels"]), &[]).await
    }

    /// `POST /repos/{owner}/{repo}/labels`; `color` is six hex digits, with or without `#`.
    pub async fn create_label(
        &self,
        repo: &RepoRef,
        name: &str,
        color: &str,
    ) -> Result<Label, ForgeError> {
        let color = format!("#{}", color.trim_start_matches('#'));
        let body = serde_json::json!({ "name": name, "color": color });
        self.send(
            Method::POST,
            &repo_path(repo, &["labels"]),
            &[],
            Some(&body),
        )
        .await
    }

    /// The labels named `names`, in that order, creating those the repository lacks (with a
    /// stable color per name, see [`label_color`]). A label created meanwhile by someone else
    /// (409/422 on create) is read back.
    pub async fn ensure_labels(
        &self,
        repo: &RepoRef,
        names: &[&str],
    ) -> Result<Vec<Label>, ForgeError> {
        let mut known = self.repo_labels(repo).await?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Some(label) = known.iter().find(|l| l.name == *name) {
                out.push(label.clone());
                continue;
            }
            match self.create_label(repo, name, label_color(name)).await {
                Ok(label) => {
                    known.push(label.clone());
                    out.push(label);
                }
                Err(error) if matches!(error.status(), Some(409 | 422)) => {
                    known = self.repo_labels(repo).await?;
                    match known.iter().find(|l| l.name == *name) {
                        Some(label) => out.push(label.clone()),
                        None => return Err(error),
                    }
                }
                Err(error) => return Err(error),
            }
        }
        Ok(out)
    }

    /// `GET /repos/{owner}/{repo}/issues/{index}/labels`.
    pub async fn issue_labels(&self, repo: &RepoRef, index: u64) -> Result<Vec<Label>, ForgeError> {
        self.get(
            &repo_path(repo, &["issues", &index.to_string(), "labels"]),
            &[],
        )
        .await
    }

    /// Adds the labels `ids` to the issue; answers the issue's labels after the change.
    pub async fn add_labels(
        &self,
        repo: &RepoRef,
        index: u64,
        ids: &[i64],
    ) -> Result<Vec<Label>, ForgeError> {
        let body = serde_json::json!({ "labels": ids });
        let path = repo_path(repo, &["issues", &index.to_string(), "labels"]);
        self.send(Method::POST, &path, &[], Some(&body)).await
    }

    /// Removes one label from the issue. A label already gone (404) is fine.
    pub async fn remove_label(
        &self,
        repo: &RepoRef,
        index: u64,
        id: i64,
    ) -> Result<(), ForgeError> {
        let path = repo_path(
            repo,
            &["issues", &index.to_string(), "labels", &id.to_string()],
        );
        match self.call(Method::DELETE, &path, &[], None).await {
            Ok(_) => Ok(()),
            Err(error) if error.is_not_found() => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// All the comments of an issue or pull request conversation, oldest first. (Forgejo answers
    /// them in one list: this endpoint has no pagination.)
    pub async fn comments(&self, repo: &RepoRef, index: u64) -> Result<Vec<Comment>, ForgeError> {
        self.get(
            &repo_path(repo, &["issues", &index.to_string(), "comments"]),
            &[],
        )
        .await
    }

    /// Posts a comment on an issue or pull request.
    pub async fn create_comment(
        &self,
        repo: &RepoRef,
        index: u64,
        body: &str,
    ) -> Result<Comment, ForgeError> {
        let payload = serde_json::json!({ "body": body });
        let path = repo_path(repo, &["issues", &index.to_string(), "comments"]);
        self.send(Method::POST, &path, &[], Some(&payload)).await
    }

    /// `GET /repos/{owner}/{repo}/pulls/{index}`.
    pub async fn pull(&self, repo: &RepoRef, index: u64) -> Result<PullRequest, ForgeError> {
        self.get(&repo_path(repo, &["pulls", &index.to_string()]), &[])
            .await
    }

    /// The pull requests in `state` (`open`, `closed` or `all`), all pages.
    pub async fn pulls(&self, repo: &RepoRef, state: &str) -> Result<Vec<PullRequest>, ForgeError> {
        self.get_all(&repo_path(repo, &["pulls"]), &[("state", state)])
            .await
    }

    /// `GET /repos/{owner}/{repo}/pulls/{base}/{head}`: a pull request from branch `head` OF THE
    /// REPOSITORY ITSELF into `base`, in any state, or `None`. One request, however many pull
    /// requests the repository has. When several match (an old closed one and a newer one),
    /// Forgejo answers one of them in no set order: see [`Forgejo::open_pull_by_base_head`].
    /// A pull request from a fork (or from a deleted repository) is never it, whatever its
    /// branch is called: anyone who can fork can name a branch `task/12`.
    pub async fn pull_by_base_head(
        &self,
        repo: &RepoRef,
        base: &str,
        head: &str,
    ) -> Result<Option<PullRequest>, ForgeError> {
        // Forgejo routes `/pulls/{base}/*` and unescapes both: each travels as one
        // percent-encoded segment (`main/task%2F12`), so a base with a slash stays one name.
        let path = repo_path(repo, &["pulls", base, head]);
        match self.get::<PullRequest>(&path, &[]).await {
            Ok(p) => Ok(Some(p).filter(|p| is_from(p, base, head))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The OPEN pull request from branch `head` of the repository itself into `base` (the
    /// newest, should there be several), read from the list of open pull requests. For when
    /// [`Forgejo::pull_by_base_head`] answered a closed one but the forge says an open one
    /// exists (a 409 on create): only the open ones are listed, never every pull request.
    pub async fn open_pull_by_base_head(
        &self,
        repo: &RepoRef,
        base: &str,
        head: &str,
    ) -> Result<Option<PullRequest>, ForgeError> {
        let open = self.pulls(repo, "open").await?;
        Ok(open
            .into_iter()
            .filter(|p| p.state == "open" && is_from(p, base, head))
            .max_by_key(|p| p.number))
    }

    /// Opens a pull request.
    pub async fn create_pull(
        &self,
        repo: &RepoRef,
        pull: &CreatePull,
    ) -> Result<PullRequest, ForgeError> {
        let body = serde_json::json!({
            "head": pull.head,
            "base": pull.base,
            "title": pull.title,
            "body": pull.body,
        });
        self.send(Method::POST, &repo_path(repo, &["pulls"]), &[], Some(&body))
            .await
    }

    /// The commits of a pull request, all pages (without files and signature checks).
    pub async fn pull_commits(
        &self,
        repo: &RepoRef,
        index: u64,
    ) -> Result<Vec<Commit>, ForgeError> {
        self.get_all(
            &repo_path(repo, &["pulls", &index.to_string(), "commits"]),
            &[("verification", "false"), ("files", "false")],
        )
        .await
    }

    /// The reviews of a pull request, all pages.
    pub async fn reviews(&self, repo: &RepoRef, index: u64) -> Result<Vec<PullReview>, ForgeError> {
        self.get_all(
            &repo_path(repo, &["pulls", &index.to_string(), "reviews"]),
            &[],
        )
        .await
    }

    /// The inline comments of one review (one list: this endpoint has no pagination).
    pub async fn review_comments(
        &self,
        repo: &RepoRef,
        index: u64,
        review_id: i64,
    ) -> Result<Vec<ReviewComment>, ForgeError> {
        let path = repo_path(
            repo,
            &[
                "pulls",
                &index.to_string(),
                "reviews",
                &review_id.to_string(),
                "comments",
            ],
        );
        self.get(&path, &[]).await
    }

    /// `GET /repos/{owner}/{repo}/collaborators/{user}/permission`: `user`'s access to the
    /// repository. The forge answers 403 unless the token's user administers the repository (or
    /// is `user`), 404 for an unknown user.
    pub async fn permission(
        &self,
        repo: &RepoRef,
        user: &str,
    ) -> Result<RepoPermission, ForgeError> {
        self.get(
            &repo_path(repo, &["collaborators", user, "permission"]),
            &[],
        )
        .await
    }

    /// `GET /repos/{owner}/{repo}/compare/{base}...{head}`: the commits of `head` not in `base`.
    ///
    /// Forgejo routes this as `/compare/*` and unescapes the captured rest of the path, so the
    /// whole `base...head` travels as one percent-encoded segment (`main...task%2F12`).
    pub async fn compare(
        &self,
        repo: &RepoRef,
        base: &str,
        head: &str,
    ) -> Result<Compare, ForgeError> {
        let basehead = format!("{base}...{head}");
        self.get(&repo_path(repo, &["compare", &basehead]), &[])
            .await
    }

    // ---- transport ----

    async fn get<T: DeserializeOwned>(
        &self,
        path: &[String],
        query: &[(&str, &str)],
    ) -> Result<T, ForgeError> {
        self.send(Method::GET, path, query, None).await
    }

    /// Every page of a list: `page=1,2,…` with `limit=50` until a page is short (or, when the
    /// forge sends `X-Total-Count`, until that many items were read or a page is empty).
    async fn get_all<T: DeserializeOwned>(
        &self,
        path: &[String],
        query: &[(&str, &str)],
    ) -> Result<Vec<T>, ForgeError> {
        let mut all = Vec::new();
        let limit = PAGE_LIMIT.to_string();
        for page in 1..=MAX_PAGES {
            let page_text = page.to_string();
            let mut q = query.to_vec();
            q.push(("page", &page_text));
            q.push(("limit", &limit));
            let answer = self.call(Method::GET, path, &q, None).await?;
            let items: Vec<T> = decode(&Method::GET, path, &answer.body)?;
            let got = items.len();
            all.extend(items);
            let total = answer
                .headers
                .get("x-total-count")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<usize>().ok());
            let done = match total {
                Some(total) => got == 0 || all.len() >= total,
                None => got < PAGE_LIMIT,
            };
            if done {
                return Ok(all);
            }
        }
        Err(ForgeError::TooManyPages {
            path: display_path(path),
            pages: MAX_PAGES,
        })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[String],
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Result<T, ForgeError> {
        let answer = self.call(method.clone(), path, query, body).await?;
        decode(&method, path, &answer.body)
    }

    /// One call, tried again while it fails transiently. A POST is repeated only when the forge
    /// surely did not act on it (no connection, 408, 429, 503): after a timeout, a connection
    /// broken mid-request, a 500, 502 or 504 a comment or pull request may already exist, and
    /// the caller (which can look for it) decides whether to send it again.
    async fn call(
        &self,
        method: Method,
        path: &[String],
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, ForgeError> {
        let mut url = self.api.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.extend(path);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let idempotent = method != Method::POST;
        let mut delay = self.base_delay;
        let mut attempt = 1;
        loop {
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .header(AUTHORIZATION, self.auth.clone());
            if let Some(body) = body {
                request = request.json(body);
            }
            let (error, retry, retry_after) = match request.send().await {
                Err(e) => {
                    let retry = idempotent || e.is_connect();
                    let error = ForgeError::Transport {
                        method: method.to_string(),
                        path: display_path(path),
                        error: self.scrub(&root_cause(&e)),
                    };
                    (error, retry, None)
                }
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    let bytes = response.bytes().await;
                    match bytes {
                        Err(e) => {
                            let error = ForgeError::Transport {
                                method: method.to_string(),
                                path: display_path(path),
                                error: self.scrub(&root_cause(&e)),
                            };
                            (error, idempotent, None)
                        }
                        Ok(bytes) if status.is_success() => {
                            return Ok(Answer {
                                headers,
                                body: bytes.to_vec(),
                            });
                        }
                        Ok(bytes) => {
                            let error = ForgeError::Status {
                                method: method.to_string(),
                                path: display_path(path),
                                status: status.as_u16(),
                                message: self.scrub(&error_message(status, &bytes)),
                            };
                            let code = status.as_u16();
                            let retry = if idempotent {
                                transient_status(code)
                            } else {
                                matches!(code, 408 | 429 | 503)
                            };
                            (error, retry, retry_after(&headers))
                        }
                    }
                }
            };
            if !retry || attempt >= self.tries {
                return Err(error);
            }
            tracing::debug!(%error, attempt, "forge call failed; trying again");
            tokio::time::sleep(retry_after.map_or(delay, |after| after.max(delay))).await;
            delay = delay.saturating_mul(2);
            attempt += 1;
        }
    }

    /// `text` with the token replaced, in case the forge quotes the request back.
    fn scrub(&self, text: &str) -> String {
        if self.token.is_empty() {
            text.to_string()
        } else {
            text.replace(&self.token, "<redacted>")
        }
    }
}

/// The color given to a label [`Forgejo::ensure_labels`] creates: fixed ones for the task status
/// labels, otherwise one picked from a palette by a hash of the name (the same on every run).
pub fn label_color(name: &str) -> &'static str {
    match name {
        "status:todo" => "c5def5",
        "status:doing" => "fbca04",
        "status:review" => "1d76db",
        "status:done" => "0e8a16",
        "status:failed" => "b60205",
        _ => {
            const PALETTE: [&str; 8] = [
                "5319e7", "006b75", "d93f0b", "0052cc", "e99695", "bfd4f2", "c2e0c6", "fef2c0",
            ];
            // FNV-1a: stable across runs and builds, unlike std's hasher.
            let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
            PALETTE[(hash % PALETTE.len() as u64) as usize]
        }
    }
}

fn repo_path(repo: &RepoRef, rest: &[&str]) -> Vec<String> {
    let mut path = vec!["repos".to_string(), repo.owner.clone(), repo.name.clone()];
    path.extend(rest.iter().map(|s| s.to_string()));
    path
}

/// Whether `p` goes from branch `head` of the base repository itself into `base`. (Once the
/// head branch is deleted, Forgejo names the head `refs/pull/<number>/head`.)
fn is_from(p: &PullRequest, base: &str, head: &str) -> bool {
    let moved = format!("refs/pull/{}/head", p.number);
    (p.head.ref_name == head || p.head.ref_name == moved)
        && p.base.ref_name == base
        && p.head_in_base_repo()
}

/// The API path for messages: unescaped, without `/api/v1` and the query.
fn display_path(path: &[String]) -> String {
    format!("/{}", path.join("/"))
}

fn decode<T: DeserializeOwned>(
    method: &Method,
    path: &[String],
    body: &[u8],
) -> Result<T, ForgeError> {
    serde_json::from_slice(body).map_err(|e| ForgeError::Decode {
        method: method.to_string(),
        path: display_path(path),
        error: e.to_string(),
    })
}

/// The JSON `message` of an error answer, else the start of its body.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_string))
        .filter(|m| !m.trim().is_empty());
    if let Some(message) = from_json {
        return message;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return status
            .canonical_reason()
            .unwrap_or("no message")
            .to_string();
    }
    let mut excerpt: String = text.chars().take(BODY_EXCERPT).collect();
    if excerpt.len() < text.len() {
        excerpt.push('…');
    }
    excerpt
}

/// A `Retry-After` in seconds (the form Forgejo and proxies use), at most 30 s.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// The innermost cause: reqwest's own message ("error sending request for url …") hides it.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::IntoResponse;

    use super::*;

    const TOKEN: &str = "s3cret-forge-token";

    /// One request the fake forge received.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        /// Path and query, as sent (still percent-encoded).
        uri: String,
        auth: Option<String>,
        body: String,
    }

    type Respond = dyn Fn(&Seen, usize) -> (u16, String) + Send + Sync;

    #[derive(Clone)]
    struct FakeState {
        seen: Arc<Mutex<Vec<Seen>>>,
        respond: Arc<Respond>,
    }

    struct Fake {
        url: String,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Fake {
        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }

        fn client(&self) -> Forgejo {
            Forgejo::new(&self.url, TOKEN.to_string())
                .unwrap()
                .with_retries(3, Duration::from_millis(1))
        }
    }

    async fn handle(
        State(state): State<FakeState>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> impl IntoResponse {
        let seen = Seen {
            method: method.to_string(),
            uri: uri.to_string(),
            auth: headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string()),
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        let n = {
            let mut all = state.seen.lock().unwrap();
            all.push(seen.clone());
            all.len()
        };
        let (status, body) = (state.respond)(&seen, n);
        (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            body,
        )
    }

    /// A forge on 127.0.0.1 answering every request with `respond(request, nth request)`.
    async fn fake(respond: impl Fn(&Seen, usize) -> (u16, String) + Send + Sync + 'static) -> Fake {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = FakeState {
            seen: seen.clone(),
            respond: Arc::new(respond),
        };
        let app = Router::new().fallback(handle).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Fake {
            url: format!("http://{addr}"),
            seen,
        }
    }

    fn repo() -> RepoRef {
        RepoRef::new("acme", "widgets")
    }

    fn label_json(id: i64, name: &str) -> serde_json::Value {
        serde_json::json!({"id": id, "name": name, "color": "ffffff", "description": ""})
    }

    fn issue_json(number: u64) -> String {
        serde_json::json!({
            "id": number + 100, "number": number, "title": "t", "body": "b", "state": "open",
            "labels": [], "user": {"id": 2, "login": "alice"}, "pull_request": null,
            "html_url": format!("https://forge.example.com/acme/widgets/issues/{number}")
        })
        .to_string()
    }

    #[tokio::test]
    async fn token_is_sent_in_the_authorization_header() {
        let forge = fake(|seen, _| match seen.auth.as_deref() {
            Some(auth) if auth == format!("token {TOKEN}") => (200, issue_json(42)),
            _ => (401, r#"{"message":"token is required"}"#.into()),
        })
        .await;
        let issue = forge.client().issue(&repo(), 42).await.unwrap();
        assert_eq!(issue.number, 42);
        assert_eq!(issue.user.login, "alice");
        let seen = forge.seen();
        assert_eq!(seen[0].method, "GET");
        assert_eq!(seen[0].uri, "/api/v1/repos/acme/widgets/issues/42");
    }

    #[tokio::test]
    async fn a_503_is_retried_and_then_succeeds() {
        let forge = fake(|_, n| match n {
            1 => (503, "upstream unavailable".into()),
            _ => (200, issue_json(7)),
        })
        .await;
        let issue = forge.client().issue(&repo(), 7).await.unwrap();
        assert_eq!(issue.number, 7);
        assert_eq!(forge.seen().len(), 2);
    }

    #[tokio::test]
    async fn transient_failures_give_up_after_the_tries() {
        let forge = fake(|_, _| (502, String::new())).await;
        let err = forge.client().issue(&repo(), 7).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert_eq!(err.status(), Some(502));
        assert_eq!(forge.seen().len(), 3);
    }

    #[tokio::test]
    async fn a_post_is_repeated_only_when_the_forge_surely_did_not_act() {
        let forge = fake(|_, n| match n {
            1 => (429, r#"{"message":"slow down"}"#.into()),
            2 => (502, "bad gateway".into()),
            _ => (201, r#"{"id":1,"body":"x"}"#.into()),
        })
        .await;
        let err = forge
            .client()
            .create_comment(&repo(), 1, "x")
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(502));
        assert!(err.is_transient());
        assert_eq!(forge.seen().len(), 2);
    }

    #[tokio::test]
    async fn a_404_is_not_found_and_not_retried() {
        let forge = fake(|_, _| (404, r#"{"message":"issue does not exist"}"#.into())).await;
        let err = forge.client().issue(&repo(), 9).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(!err.is_transient());
        assert_eq!(forge.seen().len(), 1);
        match &err {
            ForgeError::Status { method, path, .. } => {
                assert_eq!(method, "GET");
                assert_eq!(path, "/repos/acme/widgets/issues/9");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_422_message_ends_up_in_the_error() {
        let forge = fake(|_, _| {
            (
                422,
                r#"{"message":"label color is invalid","url":"https://forge/api/swagger"}"#.into(),
            )
        })
        .await;
        let err = forge
            .client()
            .create_label(&repo(), "x", "zz")
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(422));
        assert!(!err.is_transient());
        assert!(err.to_string().contains("label color is invalid"), "{err}");
        assert_eq!(forge.seen().len(), 1);
    }

    #[tokio::test]
    async fn lists_read_every_page() {
        let forge = fake(|seen, _| {
            let page: usize = seen
                .uri
                .split(['?', '&'])
                .find_map(|kv| kv.strip_prefix("page="))
                .unwrap()
                .parse()
                .unwrap();
            let count = if page < 3 { 50 } else { 7 };
            let labels: Vec<_> = (0..count)
                .map(|i| label_json((page * 100 + i) as i64, &format!("l{page}-{i}")))
                .collect();
            (200, serde_json::to_string(&labels).unwrap())
        })
        .await;
        let labels = forge.client().repo_labels(&repo()).await.unwrap();
        assert_eq!(labels.len(), 107);
        let uris: Vec<String> = forge.seen().into_iter().map(|s| s.uri).collect();
        assert_eq!(
            uris,
            [
                "/api/v1/repos/acme/widgets/labels?page=1&limit=50",
                "/api/v1/repos/acme/widgets/labels?page=2&limit=50",
                "/api/v1/repos/acme/widgets/labels?page=3&limit=50",
            ]
        );
    }

    #[tokio::test]
    async fn a_list_that_never_ends_is_refused() {
        let forge = fake(|_, _| {
            let labels: Vec<_> = (0..50).map(|i| label_json(i, "same")).collect();
            (200, serde_json::to_string(&labels).unwrap())
        })
        .await;
        let err = forge.client().repo_labels(&repo()).await.unwrap_err();
        assert!(
            matches!(err, ForgeError::TooManyPages { pages: 100, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_token_is_never_shown() {
        // The forge echoes the request's Authorization header in its error.
        let forge = fake(|seen, _| {
            let echo = serde_json::json!({ "message": format!("bad auth {:?}", seen.auth) });
            (400, echo.to_string())
        })
        .await;
        let client = forge.client();
        assert!(!format!("{client:?}").contains(TOKEN));
        let err = client.issue(&repo(), 1).await.unwrap_err();
        assert!(!err.to_string().contains(TOKEN), "{err}");
        assert!(!format!("{err:?}").contains(TOKEN), "{err:?}");
        // No answer at all: a port nobody listens on.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let client = Forgejo::new(&url, TOKEN.into())
            .unwrap()
            .with_retries(1, Duration::from_millis(1));
        let err = client.issue(&repo(), 1).await.unwrap_err();
        assert!(matches!(err, ForgeError::Transport { .. }), "{err}");
        assert!(err.is_transient());
        assert!(!err.to_string().contains(TOKEN), "{err}");
    }

    #[tokio::test]
    async fn open_issues_with_label_asks_for_open_issues_and_drops_pulls() {
        let forge = fake(|_, _| {
            let mut pull: serde_json::Value = serde_json::from_str(&issue_json(2)).unwrap();
            pull["pull_request"] = serde_json::json!({"merged": false});
            let issues = serde_json::json!([
                serde_json::from_str::<serde_json::Value>(&issue_json(1)).unwrap(),
                pull
            ]);
            (200, issues.to_string())
        })
        .await;
        let issues = forge
            .client()
            .open_issues_with_label(&repo(), "agent:ready")
            .await
            .unwrap();
        assert_eq!(issues.iter().map(|i| i.number).collect::<Vec<_>>(), [1]);
        assert_eq!(
            forge.seen()[0].uri,
            "/api/v1/repos/acme/widgets/issues?state=open&type=issues&labels=agent%3Aready&page=1&limit=50"
        );
    }

    #[tokio::test]
    async fn ensure_labels_creates_the_missing_and_rereads_a_lost_race() {
        // `a` exists; `status:doing` is created; `b` answers 422 because it appeared meanwhile.
        let forge = fake(|seen, _| match (seen.method.as_str(), seen.uri.as_str()) {
            ("GET", _) => (200, serde_json::json!([label_json(1, "a")]).to_string()),
            ("POST", _) if seen.body.contains("\"name\":\"b\"") => {
                (422, r#"{"message":"label already exists"}"#.into())
            }
            ("POST", _) => {
                let body: serde_json::Value = serde_json::from_str(&seen.body).unwrap();
                (
                    201,
                    label_json(2, body["name"].as_str().unwrap()).to_string(),
                )
            }
            _ => (500, String::new()),
        })
        .await;
        // The re-read after the 422 does not list `b` in this fake: the 422 is returned.
        let err = forge
            .client()
            .ensure_labels(&repo(), &["status:doing", "a", "b"])
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(422));
        let seen = forge.seen();
        assert_eq!(seen[1].method, "POST");
        assert_eq!(
            seen[1].body,
            r##"{"color":"#fbca04","name":"status:doing"}"##
        );
        assert_eq!(seen.last().unwrap().method, "GET", "re-read after the 422");

        let reads = Arc::new(Mutex::new(0));
        let counter = reads.clone();
        let forge = fake(move |seen, _| match seen.method.as_str() {
            "GET" => {
                let mut n = counter.lock().unwrap();
                *n += 1;
                let labels = if *n == 1 {
                    serde_json::json!([label_json(1, "a")])
                } else {
                    serde_json::json!([label_json(1, "a"), label_json(3, "b")])
                };
                (200, labels.to_string())
            }
            _ => (409, r#"{"message":"exists"}"#.into()),
        })
        .await;
        let labels = forge
            .client()
            .ensure_labels(&repo(), &["b", "a"])
            .await
            .unwrap();
        assert_eq!(labels.iter().map(|l| l.id).collect::<Vec<_>>(), [3, 1]);
    }

    #[tokio::test]
    async fn remove_label_takes_404_as_done() {
        let forge = fake(|_, _| (404, r#"{"message":"not found"}"#.into())).await;
        forge.client().remove_label(&repo(), 4, 12).await.unwrap();
        let seen = forge.seen();
        assert_eq!(seen[0].method, "DELETE");
        assert_eq!(seen[0].uri, "/api/v1/repos/acme/widgets/issues/4/labels/12");
    }

    fn pull_from(repo_id: i64, number: u64, head: &str, state: &str) -> serde_json::Value {
        serde_json::json!({"id": number, "number": number, "state": state, "merged": false,
            "head": {"ref": head, "sha": "s", "label": head, "repo_id": repo_id},
            "base": {"ref": "main", "sha": "b", "label": "main", "repo_id": 3}})
    }

    #[tokio::test]
    async fn pull_by_base_head_is_one_request_however_many_pulls_the_repository_has() {
        // The list of pull requests never ends; the lookup by base and head does not read it.
        let forge = fake(|seen, _| {
            let path = seen.uri.split('?').next().unwrap_or_default();
            match path {
                "/api/v1/repos/acme/widgets/pulls" => {
                    let page: Vec<_> = (0..50).map(|i| pull_from(3, i, "x", "closed")).collect();
                    (200, serde_json::Value::Array(page).to_string())
                }
                "/api/v1/repos/acme/widgets/pulls/main/task%2F12" => {
                    (200, pull_from(3, 7, "task/12", "open").to_string())
                }
                "/api/v1/repos/acme/widgets/pulls/main/task%2F13" => {
                    (200, pull_from(44, 8, "task/13", "open").to_string())
                }
                _ => (404, r#"{"message":"The target couldn't be found."}"#.into()),
            }
        })
        .await;
        let client = forge.client();
        let found = client
            .pull_by_base_head(&repo(), "main", "task/12")
            .await
            .unwrap();
        assert_eq!(found.map(|p| p.number), Some(7));
        // From a fork: never the task's.
        let fork = client.pull_by_base_head(&repo(), "main", "task/13").await;
        assert_eq!(fork.unwrap(), None);
        let none = client.pull_by_base_head(&repo(), "main", "nope").await;
        assert_eq!(none.unwrap(), None);
        let uris: Vec<String> = forge.seen().into_iter().map(|s| s.uri).collect();
        assert_eq!(
            uris,
            [
                "/api/v1/repos/acme/widgets/pulls/main/task%2F12",
                "/api/v1/repos/acme/widgets/pulls/main/task%2F13",
                "/api/v1/repos/acme/widgets/pulls/main/nope",
            ]
        );
    }

    #[tokio::test]
    async fn open_pull_by_base_head_reads_only_the_open_pulls_and_skips_forks() {
        let open = serde_json::json!([
            pull_from(3, 9, "task/12", "open"),
            pull_from(44, 11, "task/12", "open"),
            pull_from(3, 10, "task/13", "open"),
        ]);
        let forge = fake(move |_, _| (200, open.to_string())).await;
        let client = forge.client();
        let found = client
            .open_pull_by_base_head(&repo(), "main", "task/12")
            .await;
        assert_eq!(found.unwrap().map(|p| p.number), Some(9));
        let other_base = client
            .open_pull_by_base_head(&repo(), "dev", "task/12")
            .await;
        assert_eq!(other_base.unwrap(), None);
        assert_eq!(
            forge.seen()[0].uri,
            "/api/v1/repos/acme/widgets/pulls?state=open&page=1&limit=50"
        );
    }

    #[tokio::test]
    async fn compare_sends_base_and_head_as_one_encoded_segment() {
        let forge = fake(|_, _| {
            (
                200,
                r#"{"total_commits":1,"commits":[{"sha":"abc","commit":{"message":"m"}}],"files":null}"#
                    .into(),
            )
        })
        .await;
        let compare = forge
            .client()
            .compare(&repo(), "main", "task/12")
            .await
            .unwrap();
        assert_eq!(compare.total_commits, 1);
        assert_eq!(compare.commits[0].message(), "m");
        assert_eq!(
            forge.seen()[0].uri,
            "/api/v1/repos/acme/widgets/compare/main...task%2F12"
        );
    }

    #[tokio::test]
    async fn create_pull_and_comment_send_the_documented_bodies() {
        let forge = fake(|seen, _| {
            if seen.uri.ends_with("/pulls") {
                (
                    201,
                    r#"{"id":1,"number":3,"state":"open","head":{"ref":"task/1"},"base":{"ref":"main"}}"#
                        .into(),
                )
            } else {
                (201, r#"{"id":9,"body":"hi","user":{"id":1,"login":"bot"}}"#.into())
            }
        })
        .await;
        let client = forge.client();
        let pull = client
            .create_pull(
                &repo(),
                &CreatePull {
                    head: "task/1".into(),
                    base: "main".into(),
                    title: "T".into(),
                    body: "B".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(pull.number, 3);
        let comment = client.create_comment(&repo(), 3, "hi").await.unwrap();
        assert_eq!(comment.user.login, "bot");
        let seen = forge.seen();
        let body: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"head": "task/1", "base": "main", "title": "T", "body": "B"})
        );
        assert_eq!(seen[1].uri, "/api/v1/repos/acme/widgets/issues/3/comments");
        assert_eq!(seen[1].body, r#"{"body":"hi"}"#);
    }

    #[tokio::test]
    async fn permission_asks_for_the_collaborators_access() {
        let forge = fake(|_, _| {
            (
                200,
                r#"{"permission":"write","role_name":"write","user":{"id":4,"login":"bob"}}"#
                    .into(),
            )
        })
        .await;
        let p = forge.client().permission(&repo(), "bob").await.unwrap();
        assert!(p.can_write());
        assert_eq!(p.user.login, "bob");
        assert_eq!(
            forge.seen()[0].uri,
            "/api/v1/repos/acme/widgets/collaborators/bob/permission"
        );
    }

    #[test]
    fn bad_urls_and_tokens_are_refused() {
        for url in ["forge.example.org", "ftp://forge", "https://forge/?x=1"] {
            let err = Forgejo::new(url, TOKEN.into()).unwrap_err();
            assert!(matches!(err, ForgeError::BadUrl { .. }), "{url}: {err}");
        }
        let err = Forgejo::new("https://forge", "a\nb".into()).unwrap_err();
        assert!(matches!(err, ForgeError::BadToken));
        let ok = Forgejo::new("https://forge.example.org/sub/", TOKEN.into()).unwrap();
        assert_eq!(ok.api.as_str(), "https://forge.example.org/sub/api/v1");
    }

    #[test]
    fn label_colors_are_stable() {
        assert_eq!(label_color("status:failed"), "b60205");
        assert_eq!(label_color("type:bug"), label_color("type:bug"));
        assert_eq!(label_color("type:bug").len(), 6);
    }
}
