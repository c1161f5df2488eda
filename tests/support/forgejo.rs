//! A fake Forgejo for the end-to-end tests: an HTTP server on 127.0.0.1 that answers the REST API
//! under `/api/v1` (every request validated against Forgejo's swagger document), keeps repositories,
//! labels, issues, pull requests and reviews in memory over REAL bare git repositories on disk, and
//! sends signed webhooks like Forgejo (with delivery faults on demand). Owns the handle
//! ([`FakeForgejo`]: start, the test's "human" actions, inspection) and the state model; the
//! submodules own the REST routes (`api`), JSON shapes (`json`), webhook delivery (`hooks`) and git.
//!
//! Runtime: the fake runs on a tokio runtime of its own (2 workers), so it serves the daemon while
//! a `#[tokio::test]` (current-thread runtime) awaits or even blocks; the async human actions run
//! on that runtime's blocking pool and can be awaited from any runtime. Dropping the handle shuts
//! the runtime down in the background (allowed inside an async test).

#![allow(dead_code)] // each includer uses a part of it

#[path = "forgejo/api.rs"]
mod api;
#[path = "forgejo/git.rs"]
mod git;
#[path = "forgejo/hooks.rs"]
mod hooks;
#[path = "forgejo/json.rs"]
mod json;
#[path = "swagger.rs"]
mod swagger;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

#[allow(unused_imports)] // each includer uses a part of it
pub use hooks::{DeliveryMode, DeliveryRecord, Outcome};

/// The token's user: everything the daemon does through the API is done by it.
pub const BOT: &str = "agent-bot";
/// The human who opens issues, labels them and merges.
pub const ALICE: &str = "alice";
/// The human who reviews.
pub const BOB: &str = "bob";

/// What `create_repo` answers.
#[derive(Debug, Clone)]
pub struct RepoInfo {
    pub full_name: String,
    /// The bare repository's absolute path (clone and push to it).
    pub clone_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewKind {
    Approve,
    RequestChanges,
    Comment,
}

/// A pull request as the inspection methods show it.
#[derive(Debug, Clone)]
pub struct PullInfo {
    pub number: u64,
    pub title: String,
    pub body: String,
    pub author: String,
    pub head: String,
    pub base: String,
    pub head_sha: String,
    pub open: bool,
    pub merged: bool,
    pub merge_commit: Option<String>,
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CommentInfo {
    pub id: u64,
    pub author: String,
    pub body: String,
}

// ---- state model -------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Label {
    id: u64,
    name: String,
    color: String,
    description: String,
    exclusive: bool,
}

#[derive(Debug, Clone)]
struct Comment {
    id: u64,
    author: String,
    body: String,
    created_at: String,
}

#[derive(Debug, Clone)]
struct ReviewComment {
    id: u64,
    path: String,
    line: u64,
    body: String,
    diff_hunk: String,
    commit_id: String,
    created_at: String,
}

#[derive(Debug, Clone)]
struct Review {
    id: u64,
    reviewer: String,
    kind: ReviewKind,
    body: String,
    commit_id: String,
    submitted_at: String,
    comments: Vec<ReviewComment>,
    /// Forgejo's `official`: the reviewer may approve on a protected base branch.
    official: bool,
}

#[derive(Debug, Clone)]
struct Pull {
    id: u64,
    head: String,
    base: String,
    merge_base: String,
    merged: bool,
    merged_at: Option<String>,
    merge_commit: Option<String>,
    merged_by: Option<String>,
    reviews: Vec<Review>,
    /// A pull request from a fork: the fork's full name and bare repository (`None`: the head
    /// branch is in the base repository itself).
    fork: Option<(String, PathBuf)>,
}

#[derive(Debug, Clone)]
struct Issue {
    id: u64,
    number: u64,
    title: String,
    body: String,
    author: String,
    closed: bool,
    labels: Vec<u64>,
    /// Logins, in the order they were assigned.
    assignees: Vec<String>,
    comments: Vec<Comment>,
    created_at: String,
    updated_at: String,
    closed_at: Option<String>,
    pull: Option<Pull>,
}

#[derive(Debug)]
struct Repo {
    id: u64,
    owner: String,
    name: String,
    path: PathBuf,
    created_at: String,
    labels: Vec<Label>,
    issues: BTreeMap<u64, Issue>,
    /// The repository this one is a fork of.
    fork_of: Option<String>,
    /// Collaborators' access (`read`, `write`, `admin`); the owner is `owner`, anyone else
    /// `read` (the fake's repositories are public).
    collaborators: BTreeMap<String, String>,
    /// Whether the base branches are protected with write access as the approvers, which makes
    /// reviews by users with write access `official` (Forgejo's `IsOfficialReviewer`).
    protected: bool,
}

impl Repo {
    fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    /// `login`'s access mode, as Forgejo's `AccessMode.String()` names it.
    fn permission(&self, login: &str) -> String {
        if login.eq_ignore_ascii_case(&self.owner) {
            return "owner".into();
        }
        if login == "admin" {
            return "admin".into(); // the site administrator
        }
        self.collaborators
            .get(login)
            .cloned()
            .unwrap_or_else(|| "read".into())
    }

    fn can_write(&self, login: &str) -> bool {
        matches!(self.permission(login).as_str(), "write" | "admin" | "owner")
    }

    fn label_names(&self, ids: &[u64]) -> Vec<String> {
        ids.iter()
            .filter_map(|id| self.labels.iter().find(|l| l.id == *id))
            .map(|l| l.name.clone())
            .collect()
    }

    fn issue(&self, number: u64) -> Result<&Issue, String> {
        self.issues
            .get(&number)
            .ok_or_else(|| format!("{}#{number} does not exist", self.full_name()))
    }

    fn issue_mut(&mut self, number: u64) -> Result<&mut Issue, String> {
        let full = self.full_name();
        self.issues
            .get_mut(&number)
            .ok_or_else(|| format!("{full}#{number} does not exist"))
    }

    fn next_index(&self) -> u64 {
        self.issues.keys().next_back().map_or(1, |n| n + 1)
    }
}

/// What opening a pull request takes.
struct NewPull<'a> {
    head: &'a str,
    base: &'a str,
    title: &'a str,
    body: &'a str,
    labels: Vec<u64>,
    author: &'a str,
    /// The fork the head branch is in (full name), if not the base repository.
    fork: Option<&'a str>,
}

/// The live git view of a pull request.
#[derive(Debug, Clone, Default)]
struct PullGit {
    head_sha: String,
    base_sha: String,
    head_branch_exists: bool,
    mergeable: bool,
    additions: u64,
    deletions: u64,
    changed_files: u64,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    users: BTreeMap<String, u64>,
    repos: BTreeMap<String, Repo>,
    violations: Vec<String>,
    requests: Vec<(String, String)>,
    /// Misbehaviours the test asked for, used up in order.
    faults: Vec<Fault>,
    /// How long every API request waits before it is served (a slow forge).
    latency: Duration,
    /// Operations slower still: (method, swagger path template) → how long each one takes
    /// before it is carried out.
    slow: Vec<(String, String, Duration)>,
}

/// A misbehaviour of the REST API asked for by the test (see [`FakeForgejo::fail`]).
#[derive(Debug, Clone)]
struct Fault {
    method: String,
    /// A swagger path template (`/repos/{owner}/{repo}/pulls`).
    template: String,
    status: u16,
    /// How many more matching requests it applies to.
    times: u32,
    /// The request is carried out first and its answer replaced (an answer lost after the forge
    /// acted: a proxy's 5xx, a timeout); otherwise it is refused without acting.
    after_acting: bool,
}

impl State {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn user_id(&mut self, login: &str) -> u64 {
        if let Some(id) = self.users.get(login) {
            return *id;
        }
        let id = 100 + self.users.len() as u64;
        self.users.insert(login.to_string(), id);
        id
    }

    fn repo(&self, full: &str) -> Result<&Repo, String> {
        self.repos
            .get(full)
            .ok_or_else(|| format!("repository {full} does not exist"))
    }

    fn repo_mut(&mut self, full: &str) -> Result<&mut Repo, String> {
        self.repos
            .get_mut(full)
            .ok_or_else(|| format!("repository {full} does not exist"))
    }
}

struct Inner {
    state: Mutex<State>,
    spec: swagger::Spec,
    token: String,
    base: String,
    dir: PathBuf,
    push_log: PathBuf,
    outbox: hooks::Outbox,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

// ---- the handle ----------------------------------------------------------------------------

pub struct FakeForgejo {
    inner: Arc<Inner>,
    handle: tokio::runtime::Handle,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for FakeForgejo {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl FakeForgejo {
    /// Starts the fake: bare repositories go under `dir`; `token` is the only accepted API token
    /// (user [`BOT`]).
    pub fn start(dir: &Path, token: &str) -> FakeForgejo {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-forgejo")
            .enable_all()
            .build()
            .expect("fake forgejo runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake forgejo");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let base = format!("http://{}", listener.local_addr().expect("local addr"));
        let spec = swagger::Spec::load(Path::new(swagger::SPEC_PATH)).expect("swagger spec");
        let push_log = dir.join("fake-forgejo-pushes.log");
        std::fs::write(&push_log, "").expect("push log");
        let _context = runtime.enter();
        let mut state = State::default();
        for (login, id) in [("admin", 1), (ALICE, 2), (BOB, 4), (BOT, 5)] {
            state.users.insert(login.to_string(), id);
        }
        let inner = Arc::new(Inner {
            state: Mutex::new(state),
            spec,
            token: token.to_string(),
            base,
            dir: dir.to_path_buf(),
            push_log,
            outbox: hooks::Outbox::start(),
        });
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let app = api::router(inner.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        runtime.spawn(watch_pushes(inner.clone()));
        FakeForgejo {
            inner,
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        }
    }

    /// The forge root, WITHOUT `/api/v1` (what the daemon's `base_url` is).
    pub fn url(&self) -> String {
        self.inner.base.clone()
    }

    /// Runs `f` on the fake's blocking pool; a failure is the test's failure.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, String> + Send + 'static,
    ) -> T {
        let inner = self.inner.clone();
        match self.handle.spawn_blocking(move || f(&inner)).await {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => panic!("fake forgejo: {e}"),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    // -- human actions --

    pub async fn create_repo(&self, owner: &str, name: &str) -> RepoInfo {
        let (owner, name) = (owner.to_string(), name.to_string());
        self.run(move |i| i.create_repo(&owner, &name)).await
    }

    /// `alice` opens an issue; missing labels are created first. Returns its number.
    pub async fn open_issue(&self, repo: &str, title: &str, body: &str, labels: &[&str]) -> u64 {
        let (repo, title, body) = (repo.to_string(), title.to_string(), body.to_string());
        let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        self.run(move |i| i.open_issue(&repo, &title, &body, &labels))
            .await
    }

    /// `alice` replaces the issue's labels (missing ones are created).
    pub async fn set_issue_labels(&self, repo: &str, number: u64, labels: &[&str]) {
        let repo = repo.to_string();
        let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        self.run(move |i| i.set_labels_by_name(&repo, number, &labels, ALICE))
            .await
    }

    /// `alice` deletes the repository's label `name` (as in the web UI): it goes from every
    /// issue too, without a webhook per issue. Returns whether there was one.
    pub async fn delete_label(&self, repo: &str, name: &str) -> bool {
        let (repo, name) = (repo.to_string(), name.to_string());
        self.run(move |i| {
            let mut st = i.lock();
            let r = st.repo_mut(&repo)?;
            let ids: Vec<u64> = r
                .labels
                .iter()
                .filter(|l| l.name == name)
                .map(|l| l.id)
                .collect();
            r.labels.retain(|l| l.name != name);
            for issue in r.issues.values_mut() {
                issue.labels.retain(|id| !ids.contains(id));
            }
            Ok(!ids.is_empty())
        })
        .await
    }

    /// `alice` sets the issue's assignees (logins; empty: nobody), as the web UI does: one
    /// `issue_assign` webhook per login assigned or unassigned.
    pub async fn assign(&self, repo: &str, number: u64, logins: &[&str]) {
        let repo = repo.to_string();
        let logins: Vec<String> = logins.iter().map(|l| l.to_string()).collect();
        self.run(move |i| {
            let mut st = i.lock();
            i.set_assignees(&mut st, &repo, number, &logins, ALICE)
                .map_err(|e| e.to_string())
        })
        .await
    }

    /// `alice` comments on an issue or pull request.
    pub async fn comment(&self, repo: &str, number: u64, body: &str) -> u64 {
        let (repo, body) = (repo.to_string(), body.to_string());
        self.run(move |i| i.add_comment(&repo, number, ALICE, &body))
            .await
    }

    pub async fn close_issue(&self, repo: &str, number: u64) {
        let repo = repo.to_string();
        self.run(move |i| i.close_issue(&repo, number, ALICE)).await
    }

    /// `bob` submits a review; `comments` are (path, new-file line, body). Returns the review id.
    pub async fn review(
        &self,
        repo: &str,
        pr: u64,
        kind: ReviewKind,
        body: &str,
        comments: Vec<(String, u64, String)>,
    ) -> u64 {
        let (repo, body) = (repo.to_string(), body.to_string());
        self.run(move |i| i.review_by(&repo, pr, BOB, kind, &body, &comments))
            .await
    }

    /// `reviewer` submits a review (any user: a stranger, a collaborator…); `official` as Forgejo
    /// computes it (see [`FakeForgejo::protect_branches`]). Returns the review id.
    pub async fn review_as(
        &self,
        repo: &str,
        pr: u64,
        reviewer: &str,
        kind: ReviewKind,
        body: &str,
        comments: Vec<(String, u64, String)>,
    ) -> u64 {
        let (repo, body, reviewer) = (repo.to_string(), body.to_string(), reviewer.to_string());
        self.run(move |i| i.review_by(&repo, pr, &reviewer, kind, &body, &comments))
            .await
    }

    /// Gives `user` `permission` (`read`, `write`, `admin`) on the repository.
    pub async fn set_permission(&self, repo: &str, user: &str, permission: &str) {
        let (repo, user, permission) = (repo.to_string(), user.to_string(), permission.to_string());
        self.run(move |i| {
            let mut st = i.lock();
            st.user_id(&user);
            st.repo_mut(&repo)?.collaborators.insert(user, permission);
            Ok(())
        })
        .await
    }

    /// Whether the repository's base branches are protected (default: yes). Unprotected, no
    /// review is `official`, as in Forgejo.
    pub async fn protect_branches(&self, repo: &str, on: bool) {
        let repo = repo.to_string();
        self.run(move |i| {
            i.lock().repo_mut(&repo)?.protected = on;
            Ok(())
        })
        .await
    }

    /// `user` forks `repo` (once), commits a file on `branch` of the fork (from the fork's
    /// `main`) and opens a pull request from it into `repo`'s `main`. Returns its number.
    pub async fn fork_pull(&self, repo: &str, user: &str, branch: &str, title: &str) -> u64 {
        let (repo, user, branch, title) = (
            repo.to_string(),
            user.to_string(),
            branch.to_string(),
            title.to_string(),
        );
        self.run(move |i| i.fork_pull(&repo, &user, &branch, &title))
            .await
    }

    /// `alice` merges (Forgejo's default style: a merge commit); sends `closed` with `merged: true`
    /// and a push of the base branch.
    pub async fn merge(&self, repo: &str, pr: u64) {
        let repo = repo.to_string();
        self.run(move |i| i.merge(&repo, pr)).await
    }

    /// `alice` reopens an issue (or a pull request).
    pub async fn reopen_issue(&self, repo: &str, number: u64) {
        let repo = repo.to_string();
        self.run(move |i| i.reopen_issue(&repo, number, ALICE))
            .await
    }

    /// `alice` closes a pull request without merging.
    pub async fn close_pull(&self, repo: &str, pr: u64) {
        let repo = repo.to_string();
        self.run(move |i| i.close_issue(&repo, pr, ALICE)).await
    }

    /// Where webhooks go (every event, like a hook subscribed to all of them).
    pub fn set_webhook(&self, url: &str, secret: &str) {
        self.inner.outbox.set_target(url, secret);
    }

    pub async fn set_delivery(&self, mode: DeliveryMode) {
        self.inner.outbox.set_mode(mode);
    }

    /// Sends the deliveries `Reorder` holds and waits until every delivery queued so far is done.
    pub async fn flush(&self) {
        self.inner.outbox.flush().await;
    }

    // -- faults --

    /// The next `times` requests `method template` (a swagger path template such as
    /// `/repos/{owner}/{repo}/issues/{index}/labels`) are answered `status` without being acted on.
    pub fn fail(&self, method: &str, template: &str, status: u16, times: u32) {
        self.add_fault(method, template, status, times, false);
    }

    /// The next `times` requests `method template` are carried out, and then answered `status`
    /// instead of their answer: the forge acted, the caller cannot know it.
    pub fn fail_after_acting(&self, method: &str, template: &str, status: u16, times: u32) {
        self.add_fault(method, template, status, times, true);
    }

    fn add_fault(&self, method: &str, template: &str, status: u16, times: u32, after: bool) {
        self.inner.lock().faults.push(Fault {
            method: method.to_ascii_uppercase(),
            template: template.to_string(),
            status,
            times,
            after_acting: after,
        });
    }

    /// Every request `method template` waits `latency` right before it is carried out (on top
    /// of [`FakeForgejo::set_latency`]); zero removes the slowness.
    pub fn slow_down(&self, method: &str, template: &str, latency: Duration) {
        let method = method.to_ascii_uppercase();
        let mut st = self.inner.lock();
        st.slow.retain(|(m, t, _)| !(*m == method && t == template));
        if !latency.is_zero() {
            st.slow.push((method, template.to_string(), latency));
        }
    }

    /// Drops the faults not used up yet.
    pub fn clear_faults(&self) {
        self.inner.lock().faults.clear();
    }

    /// Every API request waits `latency` before it is served (zero: none).
    pub fn set_latency(&self, latency: Duration) {
        self.inner.lock().latency = latency;
    }

    // -- inspection --

    pub fn pulls(&self, repo: &str) -> Vec<PullInfo> {
        let st = self.inner.lock();
        let Ok(r) = st.repo(repo) else {
            return Vec::new();
        };
        r.issues
            .values()
            .filter(|i| i.pull.is_some())
            .map(|i| self.inner.pull_info(r, i))
            .collect()
    }

    pub fn pull(&self, repo: &str, number: u64) -> Option<PullInfo> {
        let st = self.inner.lock();
        let r = st.repo(repo).ok()?;
        let issue = r.issues.get(&number).filter(|i| i.pull.is_some())?;
        Some(self.inner.pull_info(r, issue))
    }

    pub fn comments(&self, repo: &str, number: u64) -> Vec<CommentInfo> {
        let st = self.inner.lock();
        let Some(issue) = st.repo(repo).ok().and_then(|r| r.issues.get(&number)) else {
            return Vec::new();
        };
        let info = |c: &Comment| CommentInfo {
            id: c.id,
            author: c.author.clone(),
            body: c.body.clone(),
        };
        issue.comments.iter().map(info).collect()
    }

    pub fn issue_labels(&self, repo: &str, number: u64) -> Vec<String> {
        let st = self.inner.lock();
        st.repo(repo)
            .ok()
            .and_then(|r| r.issues.get(&number).map(|i| r.label_names(&i.labels)))
            .unwrap_or_default()
    }

    /// The names of the repository's labels, duplicates included, sorted.
    pub fn repo_labels(&self, repo: &str) -> Vec<String> {
        let st = self.inner.lock();
        let mut names: Vec<String> = st
            .repo(repo)
            .map(|r| r.labels.iter().map(|l| l.name.clone()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The logins the issue is assigned to, in the order they were assigned.
    pub fn issue_assignees(&self, repo: &str, number: u64) -> Vec<String> {
        let st = self.inner.lock();
        st.repo(repo)
            .ok()
            .and_then(|r| r.issues.get(&number).map(|i| i.assignees.clone()))
            .unwrap_or_default()
    }

    pub fn issue_is_open(&self, repo: &str, number: u64) -> Option<bool> {
        let st = self.inner.lock();
        st.repo(repo).ok()?.issues.get(&number).map(|i| !i.closed)
    }

    /// Every request that did not fit Forgejo's API: "METHOD path: reason".
    pub fn violations(&self) -> Vec<String> {
        self.inner.lock().violations.clone()
    }

    /// Every request: (method, path and query).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.inner.lock().requests.clone()
    }

    /// Every webhook delivery (attempt) so far.
    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        self.inner.outbox.records()
    }
}

// ---- behaviour shared by the API and the human actions ------------------------------------------

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn view<'a>(&'a self, st: &'a State, repo: &'a Repo) -> json::View<'a> {
        json::View {
            base: &self.base,
            users: &st.users,
            repos: &st.repos,
            repo,
        }
    }

    /// The fault that applies to this request, if any (one use of it is spent).
    fn take_fault(&self, method: &str, template: &str) -> Option<Fault> {
        let mut st = self.lock();
        let at = st
            .faults
            .iter()
            .position(|f| f.times > 0 && f.method == method && f.template == template)?;
        st.faults[at].times -= 1;
        let fault = st.faults[at].clone();
        st.faults.retain(|f| f.times > 0);
        Some(fault)
    }

    fn latency(&self) -> Duration {
        self.lock().latency
    }

    /// How long `method template` is held before it is carried out (see `slow_down`).
    fn slowness(&self, method: &str, template: &str) -> Option<Duration> {
        let st = self.lock();
        st.slow
            .iter()
            .find(|(m, t, _)| m == method && t == template)
            .map(|(_, _, d)| *d)
    }

    fn violation(&self, method: &str, path: &str, reason: &str) {
        self.lock()
            .violations
            .push(format!("{method} {path}: {reason}"));
    }

    fn create_repo(&self, owner: &str, name: &str) -> Result<RepoInfo, String> {
        let full = format!("{owner}/{name}");
        let path = self
            .dir
            .join("forge")
            .join(owner)
            .join(format!("{name}.git"));
        git::init_bare(&path, &full, &self.push_log)?;
        let mut st = self.lock();
        if st.repos.contains_key(&full) {
            return Err(format!("repository {full} exists"));
        }
        st.user_id(owner);
        let id = st.id();
        let repo = Repo {
            id,
            owner: owner.into(),
            name: name.into(),
            path: path.clone(),
            created_at: now(),
            labels: Vec::new(),
            issues: BTreeMap::new(),
            fork_of: None,
            collaborators: [(ALICE, "write"), (BOB, "write"), (BOT, "admin")]
                .into_iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            protected: true,
        };
        st.repos.insert(full.clone(), repo);
        Ok(RepoInfo {
            full_name: full,
            clone_url: path.display().to_string(),
        })
    }

    /// The label named `name`, created (grey) when missing.
    fn ensure_label(st: &mut State, repo: &str, name: &str) -> Result<u64, String> {
        if let Some(l) = st.repo(repo)?.labels.iter().find(|l| l.name == name) {
            return Ok(l.id);
        }
        let id = st.id();
        let label = Label {
            id,
            name: name.into(),
            color: "ededed".into(),
            description: String::new(),
            exclusive: false,
        };
        st.repo_mut(repo)?.labels.push(label);
        Ok(id)
    }

    fn open_issue(
        &self,
        repo: &str,
        title: &str,
        body: &str,
        labels: &[String],
    ) -> Result<u64, String> {
        let mut st = self.lock();
        let ids = labels
            .iter()
            .map(|l| Self::ensure_label(&mut st, repo, l))
            .collect::<Result<Vec<_>, _>>()?;
        let id = st.id();
        let r = st.repo_mut(repo)?;
        let number = r.next_index();
        let at = now();
        let issue = Issue {
            id,
            number,
            title: title.into(),
            body: body.into(),
            author: ALICE.into(),
            closed: false,
            labels: ids,
            assignees: Vec::new(),
            comments: Vec::new(),
            created_at: at.clone(),
            updated_at: at,
            closed_at: None,
            pull: None,
        };
        r.issues.insert(number, issue);
        self.notify_issue(&st, repo, number, "opened", ALICE)?;
        Ok(number)
    }

    fn set_labels_by_name(
        &self,
        repo: &str,
        number: u64,
        names: &[String],
        sender: &str,
    ) -> Result<(), String> {
        let mut st = self.lock();
        let ids = names
            .iter()
            .map(|l| Self::ensure_label(&mut st, repo, l))
            .collect::<Result<Vec<_>, _>>()?;
        self.change_labels(&mut st, repo, number, |_| ids, sender)
    }

    /// Applies `f` to the issue's label ids and sends the `issue_label` (or `pull_request_label`)
    /// webhook with the full new set, as Forgejo does for every label change, whoever makes it.
    fn change_labels(
        &self,
        st: &mut State,
        repo: &str,
        number: u64,
        f: impl FnOnce(&[u64]) -> Vec<u64>,
        sender: &str,
    ) -> Result<(), String> {
        let issue = st.repo_mut(repo)?.issue_mut(number)?;
        let mut ids = f(&issue.labels);
        ids.dedup();
        issue.labels = ids;
        issue.updated_at = now();
        let cleared = issue.labels.is_empty();
        let action = if cleared {
            "label_cleared"
        } else {
            "label_updated"
        };
        self.notify_labels(st, repo, number, action, sender)
    }

    /// Replaces the issue's assignees with `logins` (Forgejo's `UpdateAssignees`: duplicates
    /// count once; every login must be a user who can be assigned, i.e. has write access);
    /// sends `issue_assign` (`unassigned`, then `assigned`) for each change, by `sender`. Like
    /// Forgejo, an unknown login changes nothing (the users are looked up first), while a user
    /// without access fails after the assignees not asked for were removed.
    fn set_assignees(
        &self,
        st: &mut State,
        repo: &str,
        number: u64,
        logins: &[String],
        sender: &str,
    ) -> Result<(), AssignError> {
        let mut wanted: Vec<String> = Vec::new();
        for login in logins {
            let Some(known) = st.users.keys().find(|u| u.eq_ignore_ascii_case(login)) else {
                return Err(AssignError::UnknownUser(login.clone()));
            };
            if !wanted.contains(known) {
                wanted.push(known.clone());
            }
        }
        let r = st.repo(repo).map_err(AssignError::Other)?;
        let stranger = wanted.iter().find(|u| !r.can_write(u)).cloned();
        if let Some(stranger) = stranger {
            let full = r.full_name();
            let kept: Vec<String> = r
                .issue(number)
                .map_err(AssignError::Other)?
                .assignees
                .iter()
                .filter(|a| wanted.contains(a))
                .cloned()
                .collect();
            self.set_assignees(st, repo, number, &kept, sender)?;
            return Err(AssignError::NoAccess(stranger, full));
        }
        let issue = st
            .repo_mut(repo)
            .and_then(|r| r.issue_mut(number))
            .map_err(AssignError::Other)?;
        let removed: Vec<String> = issue
            .assignees
            .iter()
            .filter(|a| !wanted.contains(a))
            .cloned()
            .collect();
        let added: Vec<String> = wanted
            .iter()
            .filter(|w| !issue.assignees.contains(w))
            .cloned()
            .collect();
        issue.assignees.retain(|a| wanted.contains(a));
        issue.assignees.extend(added.iter().cloned());
        if !removed.is_empty() || !added.is_empty() {
            issue.updated_at = now();
        }
        let actions = removed
            .iter()
            .map(|_| "unassigned")
            .chain(added.iter().map(|_| "assigned"));
        for action in actions {
            self.notify_assign(st, repo, number, action, sender)
                .map_err(AssignError::Other)?;
        }
        Ok(())
    }

    fn add_comment(
        &self,
        repo: &str,
        number: u64,
        author: &str,
        body: &str,
    ) -> Result<u64, String> {
        let mut st = self.lock();
        let id = st.id();
        let issue = st.repo_mut(repo)?.issue_mut(number)?;
        let at = now();
        issue.comments.push(Comment {
            id,
            author: author.into(),
            body: body.into(),
            created_at: at.clone(),
        });
        issue.updated_at = at;
        self.notify_comment(&st, repo, number, id, author)?;
        Ok(id)
    }

    fn close_issue(&self, repo: &str, number: u64, sender: &str) -> Result<(), String> {
        let mut st = self.lock();
        let issue = st.repo_mut(repo)?.issue_mut(number)?;
        if issue.closed {
            return Ok(());
        }
        issue.closed = true;
        let at = now();
        issue.closed_at = Some(at.clone());
        issue.updated_at = at;
        let is_pull = issue.pull.is_some();
        if is_pull {
            self.notify_pull(&st, repo, number, "closed", sender, None)
        } else {
            self.notify_issue(&st, repo, number, "closed", sender)
        }
    }

    fn reopen_issue(&self, repo: &str, number: u64, sender: &str) -> Result<(), String> {
        let mut st = self.lock();
        let issue = st.repo_mut(repo)?.issue_mut(number)?;
        if !issue.closed {
            return Ok(());
        }
        issue.closed = false;
        issue.closed_at = None;
        issue.updated_at = now();
        let is_pull = issue.pull.is_some();
        if is_pull {
            self.notify_pull(&st, repo, number, "reopened", sender, None)
        } else {
            self.notify_issue(&st, repo, number, "reopened", sender)
        }
    }

    fn pull_git(&self, repo: &Repo, issue: &Issue) -> PullGit {
        let Some(pull) = &issue.pull else {
            return PullGit::default();
        };
        let head_path = pull.fork.as_ref().map_or(&repo.path, |(_, path)| path);
        let branch = git::branch_sha(head_path, &pull.head);
        let head_branch_exists = branch.is_some();
        let pull_ref = format!("refs/pull/{}/head", issue.number);
        // An open pull request follows its branch; a closed one keeps the pull ref.
        let head_sha = if issue.closed {
            git::rev(&repo.path, &pull_ref).or(branch)
        } else {
            branch.or_else(|| git::rev(&repo.path, &pull_ref))
        }
        .unwrap_or_default();
        let base_sha = git::branch_sha(&repo.path, &pull.base).unwrap_or_default();
        let mergeable =
            pull.merged || (!issue.closed && git::mergeable(&repo.path, &base_sha, &head_sha));
        let (additions, deletions, changed_files) =
            git::numstat(&repo.path, &pull.merge_base, &head_sha);
        PullGit {
            head_sha,
            base_sha,
            head_branch_exists,
            mergeable,
            additions,
            deletions,
            changed_files,
        }
    }

    fn pull_info(&self, repo: &Repo, issue: &Issue) -> PullInfo {
        let git = self.pull_git(repo, issue);
        let pull = issue.pull.as_ref();
        PullInfo {
            number: issue.number,
            title: issue.title.clone(),
            body: issue.body.clone(),
            author: issue.author.clone(),
            head: pull.map(|p| p.head.clone()).unwrap_or_default(),
            base: pull.map(|p| p.base.clone()).unwrap_or_default(),
            head_sha: git.head_sha,
            open: !issue.closed,
            merged: pull.is_some_and(|p| p.merged),
            merge_commit: pull.and_then(|p| p.merge_commit.clone()),
            labels: repo.label_names(&issue.labels),
        }
    }

    /// Opens a pull request (the API's create, after its checks).
    fn create_pull(&self, st: &mut State, repo: &str, new: NewPull) -> Result<u64, String> {
        let NewPull {
            head,
            base,
            title,
            body,
            labels,
            author,
            fork,
        } = new;
        let (id, pull_id) = (st.id(), st.id());
        let fork = match fork {
            Some(f) => Some((f.to_string(), st.repo(f)?.path.clone())),
            None => None,
        };
        let r = st.repo_mut(repo)?;
        let head_path = fork.as_ref().map_or(&r.path, |(_, path)| path);
        let head_sha = git::branch_sha(head_path, head).ok_or("head branch vanished")?;
        if let Some((_, fork_path)) = &fork {
            // Forgejo copies a fork's head into the base repository as the pull ref.
            let number = r.next_index();
            let pull_ref = format!("refs/pull/{number}/head");
            git::fetch_into(&r.path, fork_path, &format!("refs/heads/{head}"), &pull_ref)?;
        }
        let base_sha = git::branch_sha(&r.path, base).ok_or("base branch vanished")?;
        let merge_base = git::merge_base(&r.path, &base_sha, &head_sha).unwrap_or_default();
        let number = r.next_index();
        git::update_ref(&r.path, &format!("refs/pull/{number}/head"), &head_sha)?;
        let at = now();
        let pull = Pull {
            id: pull_id,
            head: head.into(),
            base: base.into(),
            merge_base,
            merged: false,
            merged_at: None,
            merge_commit: None,
            merged_by: None,
            reviews: Vec::new(),
            fork,
        };
        let issue = Issue {
            id,
            number,
            title: title.into(),
            body: body.into(),
            author: author.into(),
            closed: false,
            labels,
            assignees: Vec::new(),
            comments: Vec::new(),
            created_at: at.clone(),
            updated_at: at,
            closed_at: None,
            pull: Some(pull),
        };
        r.issues.insert(number, issue);
        self.notify_pull(st, repo, number, "opened", author, None)?;
        Ok(number)
    }

    fn review_by(
        &self,
        repo: &str,
        number: u64,
        reviewer: &str,
        kind: ReviewKind,
        body: &str,
        comments: &[(String, u64, String)],
    ) -> Result<u64, String> {
        let mut st = self.lock();
        st.user_id(reviewer);
        let id = st.id();
        let comment_ids: Vec<u64> = comments.iter().map(|_| st.id()).collect();
        let r = st.repo(repo)?;
        let issue = r.issue(number)?;
        let pull = issue
            .pull
            .as_ref()
            .ok_or_else(|| format!("#{number} is not a pull request"))?;
        let head = self.pull_git(r, issue).head_sha;
        let at = now();
        let review_comments = comments
            .iter()
            .zip(comment_ids)
            .map(|((path, line, text), cid)| ReviewComment {
                id: cid,
                path: path.clone(),
                line: *line,
                body: text.clone(),
                diff_hunk: git::diff_hunk(&r.path, &pull.merge_base, &head, path, *line),
                commit_id: head.clone(),
                created_at: at.clone(),
            })
            .collect();
        let review = Review {
            id,
            reviewer: reviewer.into(),
            kind,
            body: body.into(),
            commit_id: head,
            submitted_at: at,
            comments: review_comments,
            official: r.protected && r.can_write(reviewer),
        };
        let pull = st
            .repo_mut(repo)?
            .issue_mut(number)?
            .pull
            .as_mut()
            .ok_or("not a pull request")?;
        pull.reviews.push(review);
        self.notify_review(&st, repo, number, id)?;
        Ok(id)
    }

    /// `user` forks `repo` as `user/<name>` (once), commits on `branch` there and opens a pull
    /// request from it into `main` of `repo`.
    fn fork_pull(&self, repo: &str, user: &str, branch: &str, title: &str) -> Result<u64, String> {
        let (source, name) = {
            let mut st = self.lock();
            st.user_id(user);
            let r = st.repo(repo)?;
            (r.path.clone(), r.name.clone())
        };
        let full = format!("{user}/{name}");
        let path = self
            .dir
            .join("forge")
            .join(user)
            .join(format!("{name}.git"));
        if !self.lock().repos.contains_key(&full) {
            git::fork(&source, &path, &full, &self.push_log)?;
            let mut st = self.lock();
            let id = st.id();
            let fork = Repo {
                id,
                owner: user.into(),
                name: name.clone(),
                path: path.clone(),
                created_at: now(),
                labels: Vec::new(),
                issues: BTreeMap::new(),
                fork_of: Some(repo.to_string()),
                collaborators: BTreeMap::new(),
                protected: false,
            };
            st.repos.insert(full.clone(), fork);
        }
        let content = format!("{user} was here\n");
        git::commit_file(
            &path,
            "refs/heads/main",
            branch,
            "FORK.md",
            &content,
            title,
            user,
        )?;
        let mut st = self.lock();
        self.create_pull(
            &mut st,
            repo,
            NewPull {
                head: branch,
                base: "main",
                title,
                body: "",
                labels: Vec::new(),
                author: user,
                fork: Some(&full),
            },
        )
    }

    fn merge(&self, repo: &str, number: u64) -> Result<(), String> {
        let mut st = self.lock();
        let r = st.repo(repo)?;
        let issue = r.issue(number)?;
        let pull = issue
            .pull
            .as_ref()
            .ok_or_else(|| format!("#{number} is not a pull request"))?;
        if issue.closed {
            return Err(format!("#{number} is closed"));
        }
        let head = self.pull_git(r, issue).head_sha;
        let message = format!(
            "Merge pull request '{}' (#{number}) from {} into {}",
            issue.title, pull.head, pull.base
        );
        let (old, commit) = git::merge(&r.path, &pull.base, &head, &message, ALICE)?;
        git::update_ref(&r.path, &format!("refs/pull/{number}/head"), &head)?;
        let (base, closes) = (pull.base.clone(), closing_refs(&issue.title, &issue.body));
        let issue = st.repo_mut(repo)?.issue_mut(number)?;
        let at = now();
        issue.closed = true;
        issue.closed_at = Some(at.clone());
        issue.updated_at = at.clone();
        if let Some(p) = issue.pull.as_mut() {
            p.merged = true;
            p.merged_at = Some(at);
            p.merge_commit = Some(commit.clone());
            p.merged_by = Some(ALICE.into());
        }
        self.notify_pull(&st, repo, number, "closed", ALICE, None)?;
        drop(st);
        self.log_push(repo, &old, &commit, &format!("refs/heads/{base}"), ALICE)?;
        // Forgejo closes the issues a merged pull request references with a closing keyword.
        for n in closes {
            if self
                .lock()
                .repo(repo)?
                .issues
                .get(&n)
                .is_some_and(|i| i.pull.is_none())
            {
                self.close_issue(repo, n, ALICE)?;
            }
        }
        Ok(())
    }

    /// Appends a line to the push log, as the `post-receive` hook does (for ref updates the fake
    /// makes itself, e.g. merges, which Forgejo also reports as pushes).
    fn log_push(
        &self,
        repo: &str,
        old: &str,
        new: &str,
        refname: &str,
        pusher: &str,
    ) -> Result<(), String> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.push_log)
            .map_err(|e| e.to_string())?;
        writeln!(f, "{repo} {old} {new} {refname} {pusher}").map_err(|e| e.to_string())
    }

    /// Reads the push log from `offset`; handles each complete line; the new offset.
    fn process_pushes(&self, offset: u64) -> u64 {
        let mut text = String::new();
        let read = std::fs::File::open(&self.push_log).and_then(|mut f| {
            f.seek(SeekFrom::Start(offset))?;
            f.read_to_string(&mut text)
        });
        if read.is_err() {
            return offset;
        }
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        for line in text[..complete].lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 4 {
                let pusher = f.get(4).copied().unwrap_or(BOT);
                if let Err(e) = self.on_push(f[0], f[1], f[2], f[3], pusher) {
                    eprintln!("fake forgejo: push {line}: {e}");
                }
            }
        }
        offset + complete as u64
    }

    /// A ref moved: the `push` webhook, and `synchronized` for open pull requests whose head it is.
    /// Branch deletions send nothing here (Forgejo sends a `delete` event, not a push).
    fn on_push(
        &self,
        repo: &str,
        old: &str,
        new: &str,
        refname: &str,
        pusher: &str,
    ) -> Result<(), String> {
        let Some(branch) = refname.strip_prefix("refs/heads/") else {
            return Ok(());
        };
        if new == git::ZERO_SHA {
            return Ok(());
        }
        let st = self.lock();
        let r = st.repo(repo)?;
        // A new branch: the commits no other branch has (`--exclude` precedes `--branches` and
        // takes names without `refs/heads/`).
        let range: Vec<String> = if old == git::ZERO_SHA {
            vec![
                new.to_string(),
                "--not".into(),
                format!("--exclude={branch}"),
                "--branches".into(),
            ]
        } else {
            vec![format!("{old}..{new}")]
        };
        let args: Vec<&str> = range.iter().map(String::as_str).collect();
        let commits = git::commits(&r.path, &args)?;
        let payload = self
            .view(&st, r)
            .push_payload(refname, old, new, &commits, pusher);
        self.outbox.emit("push", "push", payload);
        let synced: Vec<u64> = r
            .issues
            .values()
            .filter(|i| {
                !i.closed
                    && i.pull
                        .as_ref()
                        .is_some_and(|p| p.head == branch && p.fork.is_none())
            })
            .map(|i| i.number)
            .collect();
        for n in synced {
            git::update_ref(&r.path, &format!("refs/pull/{n}/head"), new)?;
            self.notify_pull(&st, repo, n, "synchronized", pusher, None)?;
        }
        Ok(())
    }

    // -- webhooks --

    fn notify_issue(
        &self,
        st: &State,
        repo: &str,
        number: u64,
        action: &str,
        sender: &str,
    ) -> Result<(), String> {
        let r = st.repo(repo)?;
        let payload = self
            .view(st, r)
            .issue_payload(r.issue(number)?, action, sender);
        self.outbox.emit("issues", "issues", payload);
        Ok(())
    }

    /// `issues` / `issue_assign`: an assignee was added or removed.
    fn notify_assign(
        &self,
        st: &State,
        repo: &str,
        number: u64,
        action: &str,
        sender: &str,
    ) -> Result<(), String> {
        let r = st.repo(repo)?;
        let issue = r.issue(number)?;
        let payload = self.view(st, r).issue_payload(issue, action, sender);
        self.outbox.emit("issues", "issue_assign", payload);
        Ok(())
    }

    fn notify_labels(
        &self,
        st: &State,
        repo: &str,
        number: u64,
        action: &str,
        sender: &str,
    ) -> Result<(), String> {
        let r = st.repo(repo)?;
        let issue = r.issue(number)?;
        if issue.pull.is_some() {
            return self.notify_pull(st, repo, number, action, sender, Some("pull_request_label"));
        }
        let payload = self.view(st, r).issue_payload(issue, action, sender);
        self.outbox.emit("issues", "issue_label", payload);
        Ok(())
    }

    fn notify_comment(
        &self,
        st: &State,
        repo: &str,
        number: u64,
        comment_id: u64,
        sender: &str,
    ) -> Result<(), String> {
        let r = st.repo(repo)?;
        let issue = r.issue(number)?;
        let comment = issue
            .comments
            .iter()
            .find(|c| c.id == comment_id)
            .ok_or("comment vanished")?;
        let git = self.pull_git(r, issue);
        let payload = self
            .view(st, r)
            .comment_payload(issue, comment, &git, sender);
        let event_type = if issue.pull.is_some() {
            "pull_request_comment"
        } else {
            "issue_comment"
        };
        self.outbox.emit("issue_comment", event_type, payload);
        Ok(())
    }

    fn notify_pull(
        &self,
        st: &State,
        repo: &str,
        number: u64,
        action: &str,
        sender: &str,
        event_type: Option<&str>,
    ) -> Result<(), String> {
        let r = st.repo(repo)?;
        let issue = r.issue(number)?;
        let git = self.pull_git(r, issue);
        let payload = self.view(st, r).pull_payload(issue, &git, action, sender);
        let event_type = event_type.unwrap_or(if action == "synchronized" {
            "pull_request_sync"
        } else {
            "pull_request"
        });
        self.outbox.emit("pull_request", event_type, payload);
        Ok(())
    }

    fn notify_review(
        &self,
        st: &State,
        repo: &str,
        number: u64,
        review_id: u64,
    ) -> Result<(), String> {
        let r = st.repo(repo)?;
        let issue = r.issue(number)?;
        let review = issue
            .pull
            .as_ref()
            .and_then(|p| p.reviews.iter().find(|v| v.id == review_id))
            .ok_or("review vanished")?;
        let git = self.pull_git(r, issue);
        let payload = self.view(st, r).review_payload(issue, &git, review);
        let (event, event_type) = match review.kind {
            ReviewKind::Approve => ("pull_request_approved", "pull_request_review_approved"),
            ReviewKind::RequestChanges => ("pull_request_rejected", "pull_request_review_rejected"),
            ReviewKind::Comment => ("pull_request_comment", "pull_request_review_comment"),
        };
        self.outbox.emit(event, event_type, payload);
        Ok(())
    }
}

/// Why assignees were refused (see `Inner::set_assignees`).
#[derive(Debug)]
enum AssignError {
    /// Forgejo's `user_model.ErrUserNotExist`.
    UnknownUser(String),
    /// Forgejo's `repo_model.ErrUserDoesNotHaveAccessToRepo`.
    NoAccess(String, String),
    Other(String),
}

impl std::fmt::Display for AssignError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AssignError::UnknownUser(name) => {
                write!(f, "user does not exist [uid: 0, name: {name}]")
            }
            AssignError::NoAccess(user, repo) => {
                write!(f, "user {user} does not have access to repository {repo}")
            }
            AssignError::Other(e) => f.write_str(e),
        }
    }
}

/// Issue numbers after a closing keyword (`Closes #42`, `fixes #7`, …) in a pull request's text.
fn closing_refs(title: &str, body: &str) -> Vec<u64> {
    const KEYWORDS: &[&str] = &[
        "close", "closes", "closed", "fix", "fixes", "fixed", "resolve", "resolves", "resolved",
    ];
    let text = format!("{title}\n{body}");
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| KEYWORDS.contains(&w[0].trim_end_matches(':').to_ascii_lowercase().as_str()))
        .filter_map(|w| {
            w[1].strip_prefix('#')?
                .trim_end_matches([',', '.', ';'])
                .parse()
                .ok()
        })
        .collect()
}

/// Polls the push log every 100 ms.
async fn watch_pushes(inner: Arc<Inner>) {
    let mut offset = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let i = inner.clone();
        if let Ok(next) = tokio::task::spawn_blocking(move || i.process_pushes(offset)).await {
            offset = next;
        }
    }
}
