//! The forge as the tasks see it (SPEC §6): [`Forge`] holds the Forgejo client, the webhook
//! secret and an index from issues and pull requests to tasks (rebuilt from the stored states
//! by `recover`). It turns issues into tasks ([`Forge::ingest`]: the trigger label or an
//! `agent:<kind>` label; `type:*`, `priority:*`), routes webhook events to the tasks they
//! concern as durable signals ([`Forge::deliver`]: each delivery id acted on once, durably; an
//! issue event checked like a task submission and decided on the issue as the forge shows it
//! now, so a stale or replayed event can neither withdraw a task nor start one; a new task
//! clones only from the configured forge), and delivers the two outbox effects that keep the
//! forge in step: the status labels and the assignees of an issue (read from the current state
//! of the issue's latest task, so deliveries in any order, of any of its tasks, converge; a
//! person's own assignment is never undone, and is noted once in the task's history) and one
//! comment per receipt or failure (✅ / ❌ / 🙋, every artifact linked), found again by its
//! hidden marker `<!-- agent-fleet:task=<id>:effect=<key> -->` so that no replay posts twice.
//! The per-issue and per-repository locks of the labels effect live only while in use.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{Config, ForgejoConfig};
use crate::io::forgejo::webhook::{ForgeEvent, IssueInfo, PullInfo, RepoInfo};
use crate::io::forgejo::{ForgeError, Forgejo, Issue, Label, RepoRef};
use crate::workflow::{
    Delivery, EffectError, EffectHandler, Engine, EngineError, Timestamp, Workflow,
};

use super::agent_task::{AgentTask, TaskSignal, TaskState};
use super::forge_sync::{self, ForgeSync, Rearmed};
use super::review::{self, ForgeTask, effect};
use super::task::{Priority, Source, TaskSpec, TaskStatus, check_title};

/// Outbox kind: make the issue's status labels match the task's status.
pub const LABELS_EFFECT: &str = "forge.labels";
/// Outbox kind: post one comment (receipt, failure) unless its marker is already there.
pub const COMMENT_EFFECT: &str = "forge.comment";
/// The status labels, one per stage of a task.
pub const STATUS_LABELS: [&str; 5] = [
    "status:todo",
    "status:doing",
    "status:review",
    "status:done",
    "status:failed",
];

#[derive(Debug, Error)]
pub enum ForgeSetupError {
    #[error(
        "the forge needs an API token: set the environment variable {0} (named by forgejo.token_env)"
    )]
    NoToken(String),
    #[error(
        "webhooks need a secret: set the environment variable {0} (named by forgejo.webhook_secret_env)"
    )]
    NoSecret(String),
    #[error("forgejo.base_url: {0}")]
    Client(#[from] ForgeError),
}

/// Why a webhook event or an issue could not be handled.
#[derive(Debug, Error)]
pub enum FlowError {
    #[error("the daemon is still opening its store; try again")]
    NotReady,
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Forge(#[from] ForgeError),
    /// The event or issue fails the checks a task submission gets (title, issue number,
    /// repository): nothing was done.
    #[error("{0}")]
    Invalid(String),
}

/// What became of an issue or an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    Started(u64),
    Signalled(u64),
    Unchanged(u64),
    Ignored(String),
    /// A webhook delivery whose id was handled before: nothing was done, whatever happened to
    /// the issue since.
    Duplicate,
}

impl std::fmt::Display for Handled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handled::Started(id) => write!(f, "task {id} created"),
            Handled::Signalled(id) => write!(f, "task {id} signalled"),
            Handled::Unchanged(id) => write!(f, "task {id} already up to date"),
            Handled::Ignored(why) => write!(f, "ignored: {why}"),
            Handled::Duplicate => write!(f, "delivery handled before: nothing done"),
        }
    }
}

/// Taken while an issue's labels are read and written.
type IssueLock = Arc<tokio::sync::Mutex<()>>;

/// One lock per key (an issue, a repository), made on first use and dropped once nobody holds
/// or waits for it, so the map holds only the keys in use, not every key ever seen.
struct LockMap<K> {
    locks: Mutex<HashMap<K, IssueLock>>,
}

impl<K: std::hash::Hash + Eq + Clone> LockMap<K> {
    fn new() -> Self {
        LockMap {
            locks: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<K, IssueLock>> {
        // A panic while holding it leaves the map consistent (single inserts and removes).
        self.locks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the lock of `key`; held until the returned guard is dropped.
    async fn lock(&self, key: K) -> Held<'_, K> {
        let lock = self.map().entry(key.clone()).or_default().clone();
        // Made before waiting: a waiter dropped while it waits still gives its key back.
        let mut held = Held {
            map: self,
            key,
            lock: lock.clone(),
            guard: None,
        };
        held.guard = Some(lock.lock_owned().await);
        held
    }

    /// Keys with a lock (held, waited for, or about to be).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

/// The lock of one key of a [`LockMap`], held.
struct Held<'a, K: std::hash::Hash + Eq + Clone> {
    map: &'a LockMap<K>,
    key: K,
    lock: IssueLock,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Held<'_, K> {
    fn drop(&mut self) {
        // Under the map's lock, so nobody takes a clone of this lock meanwhile: every holder or
        // waiter has one (taken under the map's lock too), so when only the map and this guard
        // have it, nobody else holds or waits for it and the key can go. Whoever comes next
        // makes a new lock, which nobody else holds either: the exclusion is kept.
        let mut map = self.map.map();
        self.guard = None;
        if Arc::strong_count(&self.lock) == 2
            && map
                .get(&self.key)
                .is_some_and(|l| Arc::ptr_eq(l, &self.lock))
        {
            map.remove(&self.key);
        }
    }
}

#[derive(Default)]
struct Index {
    /// (repository, issue) → its tasks, oldest first.
    issues: HashMap<(String, u64), Vec<u64>>,
    /// (repository, pull request) → task.
    pulls: HashMap<(String, u64), u64>,
    /// Issues whose last task ended and whose trigger label was seen removed since: adding it
    /// again starts a new task. Recorded durably on forge-sync too (see `Forge::rearmed`).
    rearmed: HashSet<(String, u64)>,
    /// Repositories recorded on forge-sync as sending webhooks, since this process started.
    hook_repos: HashSet<String>,
}

pub struct Forge {
    pub client: Forgejo,
    /// The same forge tried once per call: what a webhook delivery asks it (Forgejo gives up
    /// on a delivery after 5 s).
    hook_client: Forgejo,
    /// `forgejo.base_url`, parsed: a payload's clone URL must be on its scheme, host and port.
    base: reqwest::Url,
    pub config: ForgejoConfig,
    /// Agent kinds an `agent:<kind>` label may name.
    kinds: Vec<String>,
    /// Kind of an issue without an `agent:<kind>` label.
    default_agent: Option<String>,
    secret: Vec<u8>,
    engine: OnceLock<Engine>,
    index: Mutex<Index>,
    /// The forge-sync instance, which keeps the delivery ids seen, the repositories webhooks
    /// come from and the re-armed issues (as its signal keys, see `forge_sync`).
    sync: Mutex<Option<u64>>,
    /// One lock per issue for [`LabelsHandler`]: two deliveries of the labels effect (an old
    /// status and the new one, after a restart say) must not interleave their reads and writes.
    label_locks: LockMap<(String, u64)>,
    /// One lock per repository around finding or creating its status labels: Forgejo creates
    /// a second label of the same name rather than refusing it, so two issues' deliveries must
    /// not both create `status:doing`.
    repo_label_locks: LockMap<String>,
    /// The ids of the labels found or created per repository (name → id), so that a status
    /// change costs no listing of the repository's labels. Dropped for a repository when the
    /// forge no longer knows one of them (it silently skips unknown ids when adding).
    label_ids: Mutex<HashMap<String, HashMap<String, i64>>>,
}

impl Forge {
    /// The forge of `config`, with the token and the webhook secret read from the environment.
    pub fn from_config(config: &Config) -> Result<Option<Arc<Forge>>, ForgeSetupError> {
        let Some(f) = &config.forgejo else {
            return Ok(None);
        };
        let token =
            env_secret(&f.token_env).ok_or(ForgeSetupError::NoToken(f.token_env.clone()))?;
        let secret = env_secret(&f.webhook_secret_env)
            .ok_or(ForgeSetupError::NoSecret(f.webhook_secret_env.clone()))?;
        let client = Forgejo::new(&f.base_url, token)?;
        let base = reqwest::Url::parse(f.base_url.trim()).map_err(|e| ForgeError::BadUrl {
            url: f.base_url.trim().to_string(),
            reason: e.to_string(),
        })?;
        let kinds = config
            .agent_kinds()
            .iter()
            .map(|a| a.name.clone())
            .collect::<Vec<_>>();
        let default_agent = f
            .default_agent
            .clone()
            .or_else(|| config.agents.first().map(|a| a.name.clone()))
            .or_else(|| config.hosts.first().and_then(|h| h.agents.first().cloned()));
        Ok(Some(Arc::new(Forge {
            hook_client: client.clone().with_retries(1, Duration::ZERO),
            client,
            base,
            config: f.clone(),
            kinds,
            default_agent,
            secret: secret.into_bytes(),
            engine: OnceLock::new(),
            index: Mutex::new(Index::default()),
            sync: Mutex::new(None),
            label_locks: LockMap::new(),
            repo_label_locks: LockMap::new(),
            label_ids: Mutex::new(HashMap::new()),
        })))
    }

    /// Whether the issue's assignees follow its task (`forgejo.assignee` or `reviewer` set).
    fn assigns(&self) -> bool {
        login(&self.config.assignee).is_some() || login(&self.config.reviewer).is_some()
    }

    fn label_ids(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, i64>>> {
        self.label_ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ids of the labels `names` of `repo`, if all are known.
    fn known_label_ids(&self, repo: &str, names: &[&str]) -> Option<Vec<i64>> {
        let ids = self.label_ids();
        let known = ids.get(repo)?;
        names.iter().map(|n| known.get(*n).copied()).collect()
    }

    fn remember_label_ids(&self, repo: &str, labels: &[Label]) {
        let mut ids = self.label_ids();
        let known = ids.entry(repo.to_string()).or_default();
        for l in labels {
            known.insert(l.name.clone(), l.id);
        }
    }

    fn forget_label_ids(&self, repo: &str) {
        self.label_ids().remove(repo);
    }

    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    pub fn set_engine(&self, engine: Engine) {
        let _ = self.engine.set(engine);
    }

    fn engine(&self) -> Result<&Engine, FlowError> {
        self.engine.get().ok_or(FlowError::NotReady)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        // A panic while holding the lock leaves the maps consistent (single inserts).
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether webhooks of `repo` are served (all, when `forgejo.repos` is empty).
    pub fn serves(&self, repo: &str) -> bool {
        self.config.repos.is_empty() || self.config.repos.iter().any(|r| r == repo)
    }

    /// Whether these labels make an issue a task: the trigger label, or `agent:<kind>` of a
    /// known kind.
    pub fn triggers(&self, labels: &[String]) -> bool {
        labels.contains(&self.config.trigger_label) || self.agent_label(labels).is_some()
    }

    fn agent_label(&self, labels: &[String]) -> Option<String> {
        labels
            .iter()
            .filter_map(|l| l.strip_prefix("agent:"))
            .find(|k| self.kinds.iter().any(|known| known == k))
            .map(str::to_string)
    }

    /// The task an issue asks for: `agent:<kind>` (else the default kind), `priority:<p>`,
    /// `type:<t>`.
    pub fn spec(&self, repo: &RepoInfo, issue: &IssueInfo) -> TaskSpec {
        let label = |prefix: &str| {
            issue
                .labels
                .iter()
                .find_map(|l| l.strip_prefix(prefix).map(str::to_string))
        };
        let priority = label("priority:")
            .and_then(|p| p.parse::<Priority>().ok())
            .unwrap_or_default();
        TaskSpec {
            source: Source::Forge {
                repo: repo.full_name.clone(),
                issue: issue.number,
            },
            title: issue.title.clone(),
            body: issue.body.clone(),
            labels: issue.labels.clone(),
            kind: label("type:"),
            priority,
            agent: self
                .agent_label(&issue.labels)
                .or_else(|| self.default_agent.clone())
                .unwrap_or_default(),
            capabilities: Vec::new(),
            repo: repo.clone_url.clone(),
            base: Some(repo.default_branch.clone()).filter(|b| !b.is_empty()),
            file_scope: Vec::new(),
            validation: Vec::new(),
        }
    }

    /// Records a task of an issue (at start and on recovery).
    pub fn note_task(&self, repo: &str, issue: u64, task: u64) {
        let mut index = self.index();
        let tasks = index.issues.entry((repo.to_string(), issue)).or_default();
        if !tasks.contains(&task) {
            tasks.push(task);
            tasks.sort_unstable();
        }
    }

    /// The tasks of an issue, oldest first, from the engine's key index: a task's issue is
    /// indexed in the commit that starts it, and stays until the store's retention removes the
    /// task. Before the engine is set, or if the index cannot be read (logged), the tasks
    /// noted since the daemon started.
    fn issue_tasks(&self, repo: &str, issue: u64) -> Vec<u64> {
        if let Some(engine) = self.engine.get() {
            match engine.keyed(AgentTask::NAME, &review::issue_key(repo, issue)) {
                Ok(found) => return found,
                Err(e) => tracing::error!(repo, issue, error = %e, "the task index cannot be read"),
            }
        }
        (self.index().issues)
            .get(&(repo.to_string(), issue))
            .cloned()
            .unwrap_or_default()
    }

    /// The newest task of an issue, if it has one.
    pub fn latest_task(&self, repo: &str, issue: u64) -> Option<u64> {
        self.issue_tasks(repo, issue).last().copied()
    }

    /// Records the pull request of a task.
    pub fn note_pull(&self, repo: &str, number: u64, task: u64) {
        self.index().pulls.insert((repo.to_string(), number), task);
    }

    /// The labels that make an issue a task besides the trigger label: `agent:<kind>`.
    pub fn agent_labels(&self) -> Vec<String> {
        self.kinds.iter().map(|k| format!("agent:{k}")).collect()
    }

    /// How many tasks the issue has had.
    pub fn task_count(&self, repo: &str, issue: u64) -> usize {
        self.issue_tasks(repo, issue).len()
    }

    /// The repositories with an issue whose last task has not ended, each once.
    pub fn live_repos(&self) -> Vec<String> {
        let Some(engine) = self.engine.get() else {
            return Vec::new();
        };
        let last: Vec<(String, u64)> = self
            .index()
            .issues
            .iter()
            .filter_map(|((repo, _), ids)| ids.last().map(|id| (repo.clone(), *id)))
            .collect();
        let mut repos: Vec<String> = last
            .into_iter()
            .filter(|(_, id)| engine.info(*id).is_ok_and(|i| !i.status.is_terminal()))
            .map(|(repo, _)| repo)
            .collect();
        repos.sort();
        repos.dedup();
        repos
    }

    /// The last task of each issue of `repo` that has not ended: (issue, task).
    pub fn live_tasks_of_repo(&self, repo: &str) -> Vec<(u64, u64)> {
        let Some(engine) = self.engine.get() else {
            return Vec::new();
        };
        let last: Vec<(u64, u64)> = self
            .index()
            .issues
            .iter()
            .filter(|((r, _), _)| r == repo)
            .filter_map(|((_, n), ids)| ids.last().map(|id| (*n, *id)))
            .collect();
        last.into_iter()
            .filter(|(_, id)| engine.info(*id).is_ok_and(|i| !i.status.is_terminal()))
            .collect()
    }

    /// An issue as reconciliation lists it (read from the forge just now, in a repository the
    /// forge described): a new task when it is triggered and has none (or its last one was
    /// withdrawn and the trigger came back); otherwise its task is told about changed labels or
    /// state (which withdraws a task that has not started when the trigger label is gone).
    /// `key` makes a repeated signal a no-op. An issue that fails the checks of a task
    /// submission is [`FlowError::Invalid`].
    pub async fn ingest(
        &self,
        repo: &RepoInfo,
        issue: &IssueInfo,
        key: &str,
    ) -> Result<Handled, FlowError> {
        self.sync_id().await?; // `plan` reads the re-armed issues it keeps
        let plan = self.plan(repo, issue)?;
        self.perform(plan, repo, issue, key, None, &repo.clone_url)
            .await
    }

    /// What an issue calls for, decided from the index and the task's state alone (nothing is
    /// changed).
    fn plan(&self, repo: &RepoInfo, issue: &IssueInfo) -> Result<Plan, FlowError> {
        if issue.is_pull {
            return Ok(Plan::ignore("a pull request, not an issue"));
        }
        if !self.serves(&repo.full_name) {
            return Ok(Plan::ignore(format!(
                "repository {} is not in forgejo.repos",
                repo.full_name
            )));
        }
        let engine = self.engine()?;
        let at = (repo.full_name.clone(), issue.number);
        let tasks = self.issue_tasks(&at.0, at.1);
        let rearmed = self.index().rearmed.contains(&at);
        let generation = tasks.len();
        let triggered = self.triggers(&issue.labels);
        if let Some(&last) = tasks.last() {
            let state = engine.state::<AgentTask>(last)?;
            let live = !engine.info(last)?.status.is_terminal();
            let known = state.forge.as_ref();
            if live {
                let same =
                    known.is_some_and(|f| f.labels == issue.labels && f.issue_state == issue.state);
                if same {
                    return Ok(Plan::Unchanged(last));
                }
                return Ok(Plan::Signal {
                    task: last,
                    withdraws: !triggered || issue.state != "open",
                });
            }
            let withdrawn = state.status == TaskStatus::Cancelled
                && known.is_some_and(|f| !self.triggers(&f.labels) || f.issue_state == "closed");
            if !triggered {
                return Ok(Plan::Ignore {
                    why: format!(
                        "issue #{} has no trigger label (its task {last} is {})",
                        issue.number, state.status
                    ),
                    rearm: Some(generation),
                });
            }
            if !(withdrawn || rearmed || self.rearmed(&at, generation)?) {
                return Ok(Plan::ignore(format!(
                    "issue #{} already had task {last} ({}); remove and add the trigger label to \
                     start a new one",
                    issue.number, state.status
                )));
            }
        }
        if !triggered {
            return Ok(Plan::ignore(format!(
                "issue #{} has neither `{}` nor an agent:<kind> label",
                issue.number, self.config.trigger_label
            )));
        }
        if issue.state != "open" {
            return Ok(Plan::ignore(format!("issue #{} is closed", issue.number)));
        }
        if self.spec(repo, issue).agent.is_empty() {
            return Ok(Plan::ignore(
                "no agent kind is configured (forgejo.default_agent)",
            ));
        }
        check_issue(repo, issue)?;
        Ok(Plan::Start {
            generation: tasks.len(),
        })
    }

    /// Carries out `plan` for `issue`; a new task clones `clone_url`. `delivery`: the webhook
    /// delivery this is for, recorded in the same commit as what is done for it (see
    /// [`Forge::delivery_seen`]); a delivery recorded before does nothing.
    async fn perform(
        &self,
        plan: Plan,
        repo: &RepoInfo,
        issue: &IssueInfo,
        key: &str,
        delivery: Option<&str>,
        clone_url: &str,
    ) -> Result<Handled, FlowError> {
        let engine = self.engine()?;
        let at = (repo.full_name.clone(), issue.number);
        let once = delivery.map(delivery_key);
        let once = once.as_deref();
        match plan {
            Plan::Ignore { why, rearm } => {
                if !self.record_delivery(once).await? {
                    return Ok(Handled::Duplicate);
                }
                if let Some(generation) = rearm {
                    self.rearm(&at, generation).await?;
                }
                Ok(Handled::Ignored(why))
            }
            Plan::Unchanged(id) => {
                if !self.record_delivery(once).await? {
                    return Ok(Handled::Duplicate);
                }
                Ok(Handled::Unchanged(id))
            }
            Plan::Signal { task, .. } => {
                let signal = TaskSignal::IssueChanged {
                    labels: issue.labels.clone(),
                    state: issue.state.clone(),
                };
                self.signal_task(task, &signal, &format!("issue/{key}"), once)
                    .await
            }
            Plan::Start { generation } => {
                let mut spec = self.spec(repo, issue);
                spec.title = check_title(&issue.title)
                    .map_err(FlowError::Invalid)?
                    .to_string();
                spec.repo = clone_url.to_string();
                let mut state = TaskState::new(spec, Timestamp::now());
                state.forge = Some(ForgeTask::new(
                    &repo.full_name,
                    issue.number,
                    issue.labels.clone(),
                ));
                let key = format!("forge/{}#{}/{generation}", repo.full_name, issue.number);
                let ack = match once {
                    None => engine.start_ack::<AgentTask>(&state, Some(&key)).await?,
                    Some(once) => {
                        match engine
                            .start_once::<AgentTask>(&state, Some(&key), once)
                            .await?
                        {
                            Some(ack) => ack,
                            None => return Ok(Handled::Duplicate),
                        }
                    }
                };
                self.note_task(&repo.full_name, issue.number, ack.id);
                self.index().rearmed.remove(&at);
                Ok(if ack.duplicate {
                    Handled::Unchanged(ack.id)
                } else {
                    Handled::Started(ack.id)
                })
            }
        }
    }

    /// A verified webhook event (`delivery`: its id). Each delivery id is acted on at most
    /// once, durably (see [`Forge::delivery_seen`]): a redelivery is [`Handled::Duplicate`]
    /// whatever happened since.
    pub async fn deliver(&self, event: &ForgeEvent, delivery: &str) -> Result<Handled, FlowError> {
        match event {
            ForgeEvent::Issue { repo, issue, .. } => {
                self.deliver_issue(repo, issue, delivery).await
            }
            ForgeEvent::PullRequest { action, repo, pull } => {
                let what = format!("pull request #{} {action}", pull.number);
                self.poke(repo, pull, what, action == "synchronized", delivery)
                    .await
            }
            ForgeEvent::Review {
                verdict,
                repo,
                pull,
                reviewer,
                ..
            } => {
                let what = format!("review {verdict:?} by {reviewer} on #{}", pull.number);
                self.poke(repo, pull, what, false, delivery).await
            }
            ForgeEvent::Push { repo, git_ref, .. } => {
                let id = match git_ref.strip_prefix("refs/heads/") {
                    Some(b) if b.starts_with("task/") => {
                        super::names::TaskNames::of(self.engine()?).task_of_branch(b)
                    }
                    _ => None,
                };
                let Some(id) = id else {
                    return Ok(Handled::Ignored(format!("push to {git_ref}")));
                };
                if !self.serves(&repo.full_name) {
                    return Ok(Handled::Ignored(format!("repository {}", repo.full_name)));
                }
                let signal = TaskSignal::ForgeActivity {
                    what: format!("push to {git_ref}"),
                    pushed: true,
                };
                self.signal(id, &signal, delivery).await
            }
            ForgeEvent::Comment { .. } => Ok(Handled::Ignored("comments are not acted on".into())),
            ForgeEvent::Ignored { event_type } => {
                Ok(Handled::Ignored(format!("event type {event_type}")))
            }
        }
    }

    /// An issue event. The payload is checked like a task submission, then the forge is asked
    /// for the issue as it is *now*: an event may be stale, reordered or replayed, so its labels
    /// decide nothing the forge does not confirm. When the forge cannot be asked, the payload
    /// may still start or update a task, but never withdraw one (503: Forgejo shows the delivery
    /// failed; reconciliation catches up). Where a new task clones from is never the payload's
    /// choice (see `Forge::clone_url`).
    async fn deliver_issue(
        &self,
        repo: &RepoInfo,
        issue: &IssueInfo,
        delivery: &str,
    ) -> Result<Handled, FlowError> {
        if issue.is_pull {
            return Ok(Handled::Ignored("a pull request, not an issue".into()));
        }
        if !self.serves(&repo.full_name) {
            return Ok(Handled::Ignored(format!(
                "repository {} is not in forgejo.repos",
                repo.full_name
            )));
        }
        let at = check_issue(repo, issue)?;
        // A redelivery is answered before anything else is done for it: no forge request.
        if self.delivery_seen(delivery).await? {
            return Ok(Handled::Duplicate);
        }
        self.note_hook_repo(&repo.full_name).await;
        let (issue, unverified) = match self.hook_client.issue(&at, issue.number).await {
            Ok(current) if current.is_pull() => {
                return Ok(Handled::Ignored(format!(
                    "#{} is a pull request on the forge",
                    issue.number
                )));
            }
            Ok(current) => (issue_info(&current), None),
            Err(e) if e.is_not_found() => {
                return Ok(Handled::Ignored(format!(
                    "the forge has no issue {}#{}",
                    repo.full_name, issue.number
                )));
            }
            Err(e) => {
                tracing::warn!(
                    "webhook: issue {}#{} could not be read from the forge ({e}); using the payload",
                    repo.full_name,
                    issue.number
                );
                (issue.clone(), Some(e))
            }
        };
        self.sync_id().await?; // `plan` reads the re-armed issues it keeps
        let plan = self.plan(repo, &issue)?;
        if let (
            Plan::Signal {
                withdraws: true, ..
            },
            Some(e),
        ) = (&plan, unverified)
        {
            return Err(FlowError::Forge(e));
        }
        let clone_url = match plan {
            Plan::Start { .. } => self.clone_url(repo, &at).await?,
            _ => String::new(),
        };
        self.perform(plan, repo, &issue, delivery, Some(delivery), &clone_url)
            .await
    }

    /// Where a task of `repo` clones from: the payload's `clone_url` when it is on the
    /// configured forge (the scheme, host and port of `forgejo.base_url`); otherwise the clone
    /// URL the forge itself gives for the repository; and when the forge cannot be asked now,
    /// the repository's canonical URL under `base_url`. Never a place the payload alone named.
    async fn clone_url(&self, repo: &RepoInfo, at: &RepoRef) -> Result<String, FlowError> {
        if self.on_forge(&repo.clone_url) {
            return Ok(repo.clone_url.clone());
        }
        match self.hook_client.repo(at).await {
            Ok(r) if !r.clone_url.trim().is_empty() => Ok(r.clone_url),
            Ok(_) => Ok(self.canonical_clone_url(at)),
            Err(e) if e.is_not_found() => Err(FlowError::Invalid(format!(
                "repository {at} is not on the forge"
            ))),
            Err(e) => {
                tracing::warn!(
                    "webhook: repository {at} could not be read from the forge ({e}); cloning \
                     its canonical URL"
                );
                Ok(self.canonical_clone_url(at))
            }
        }
    }

    /// Whether `url` is on the configured forge: same scheme, host and port as `base_url`.
    pub fn on_forge(&self, url: &str) -> bool {
        let Ok(u) = reqwest::Url::parse(url.trim()) else {
            return false;
        };
        matches!(u.scheme(), "http" | "https")
            && u.scheme() == self.base.scheme()
            && u.host_str().is_some()
            && u.host_str() == self.base.host_str()
            && u.port_or_known_default() == self.base.port_or_known_default()
    }

    /// `{base_url}/{owner}/{name}.git`: where Forgejo serves a repository over HTTP.
    fn canonical_clone_url(&self, at: &RepoRef) -> String {
        format!(
            "{}/{}/{}.git",
            self.base.as_str().trim_end_matches('/'),
            at.owner,
            at.name
        )
    }

    /// Whether `delivery` was acted on already: a read, nothing is committed. A delivery is
    /// recorded as an engine once-key ([`delivery_key`]) in the same commit as what is done
    /// for it (a task started or signalled), or alone when nothing is; so a redelivery finds
    /// it after any restart, and a crash before that commit leaves it to be redelivered.
    /// Stores written before once-keys recorded deliveries as signal keys on forge-sync: those
    /// are looked up too.
    async fn delivery_seen(&self, delivery: &str) -> Result<bool, FlowError> {
        let id = self.sync_id().await?;
        let legacy = format!("delivery/{delivery}");
        Ok(self
            .engine()?
            .once_or_signal_key_seen(&delivery_key(delivery), id, &legacy)?)
    }

    /// Records the once-key of a delivery (when there is one) on its own; whether it is new.
    async fn record_delivery(&self, once: Option<&str>) -> Result<bool, FlowError> {
        match once {
            Some(once) => Ok(self.engine()?.record_once(once).await?),
            None => Ok(true),
        }
    }

    /// The live forge-sync instance (started if need be, then cached).
    async fn sync_id(&self) -> Result<u64, FlowError> {
        let cached = *self.sync.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = cached {
            return Ok(id);
        }
        let id = forge_sync::ensure_started(self.engine()?).await?;
        *self.sync.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
        Ok(id)
    }

    /// Records `key` durably on forge-sync (the idempotency key of a signal to it).
    async fn record(&self, key: &str) -> Result<bool, FlowError> {
        let engine = self.engine()?;
        for _ in 0..2 {
            let id = self.sync_id().await?;
            match engine.signal::<ForgeSync>(id, &(), key).await {
                Ok(ack) => return Ok(!ack.duplicate),
                // That instance ended (a daemon ran without [forgejo]): find the live one.
                Err(EngineError::Finished { .. }) => {
                    *self.sync.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(FlowError::NotReady)
    }

    /// Remembers that the issue at `at`, with `generation` tasks all ended, had its trigger
    /// removed: in memory, and durably on forge-sync before the caller is answered.
    async fn rearm(&self, at: &(String, u64), generation: usize) -> Result<(), FlowError> {
        let rearmed = Rearmed {
            repo: at.0.clone(),
            issue: at.1,
            generation: generation as u64,
        };
        self.record(&rearmed.key()).await?;
        self.index().rearmed.insert(at.clone());
        Ok(())
    }

    /// Whether the issue at `at`, with `generation` tasks, was re-armed as forge-sync's state
    /// remembers (across restarts). Read only when the issue's last task has ended and its
    /// trigger is there.
    fn rearmed(&self, at: &(String, u64), generation: usize) -> Result<bool, FlowError> {
        let Some(id) = *self.sync.lock().unwrap_or_else(|p| p.into_inner()) else {
            return Ok(false);
        };
        let state = self.engine()?.state::<ForgeSync>(id)?;
        Ok(state
            .rearmed
            .iter()
            .any(|r| r.repo == at.0 && r.issue == at.1 && r.generation == generation as u64))
    }

    /// Remembers durably that webhooks come from `repo` (once per process and repository), so
    /// that reconciliation covers it. A failure is only logged: the delivery goes on.
    async fn note_hook_repo(&self, repo: &str) {
        if self.index().hook_repos.contains(repo) {
            return;
        }
        match self.record(&forge_sync::repo_key(repo)).await {
            Ok(_) => {
                self.index().hook_repos.insert(repo.to_string());
            }
            Err(e) => tracing::warn!("webhook: cannot record repository {repo}: {e}"),
        }
    }

    async fn poke(
        &self,
        repo: &RepoInfo,
        pull: &PullInfo,
        what: String,
        pushed: bool,
        delivery: &str,
    ) -> Result<Handled, FlowError> {
        if !self.serves(&repo.full_name) {
            return Ok(Handled::Ignored(format!("repository {}", repo.full_name)));
        }
        let by_branch = super::names::TaskNames::of(self.engine()?).task_of_branch(&pull.head_ref);
        // The key index has the task once the step that opened the pull request committed; the
        // note taken while that step runs covers the moment before.
        let key = review::pull_key(&repo.full_name, pull.number);
        let indexed = self.engine()?.keyed(AgentTask::NAME, &key)?.last().copied();
        let by_number = indexed.or_else(|| {
            (self.index().pulls)
                .get(&(repo.full_name.clone(), pull.number))
                .copied()
        });
        let Some(id) = by_number.or(by_branch) else {
            return Ok(Handled::Ignored(format!(
                "pull request #{} is not a task's ({})",
                pull.number, pull.head_ref
            )));
        };
        self.signal(id, &TaskSignal::ForgeActivity { what, pushed }, delivery)
            .await
    }

    /// Tells task `id` of forge activity, once per `delivery`.
    async fn signal(
        &self,
        id: u64,
        signal: &TaskSignal,
        delivery: &str,
    ) -> Result<Handled, FlowError> {
        let engine = self.engine()?;
        match engine.info(id) {
            Ok(info) if info.workflow == <AgentTask as crate::workflow::Workflow>::NAME => {}
            Ok(_) | Err(EngineError::UnknownInstance(_)) => {
                return Ok(Handled::Ignored(format!("no task {id}")));
            }
            Err(e) => return Err(e.into()),
        }
        if self.delivery_seen(delivery).await? {
            return Ok(Handled::Duplicate);
        }
        let once = delivery_key(delivery);
        self.signal_task(id, signal, &format!("hook/{delivery}"), Some(&once))
            .await
    }

    /// Sends `signal` to task `id` under `key`, guarded by the delivery's once-key `once`; a
    /// task that has ended is told nothing (the delivery is still recorded).
    async fn signal_task(
        &self,
        id: u64,
        signal: &TaskSignal,
        key: &str,
        once: Option<&str>,
    ) -> Result<Handled, FlowError> {
        let engine = self.engine()?;
        let sent = match once {
            None => engine.signal::<AgentTask>(id, signal, key).await.map(Some),
            Some(once) => engine.signal_once::<AgentTask>(id, signal, key, once).await,
        };
        match sent {
            Ok(Some(_)) => Ok(Handled::Signalled(id)),
            Ok(None) => Ok(Handled::Duplicate),
            // It ended meanwhile: there is nothing left to tell it.
            Err(EngineError::Finished { status, .. }) => {
                if !self.record_delivery(once).await? {
                    return Ok(Handled::Duplicate);
                }
                Ok(Handled::Ignored(format!(
                    "task {id} has ended ({})",
                    status.as_str()
                )))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The engine once-key of a webhook delivery.
fn delivery_key(delivery: &str) -> String {
    format!("forgejo/delivery/{delivery}")
}

/// What an issue calls for (see [`Forge::ingest`]).
#[derive(Debug)]
enum Plan {
    /// Nothing; `rearm`: the issue's last task (of that many) ended and its trigger is gone, so
    /// adding the
    /// trigger again will start a new task.
    Ignore {
        why: String,
        rearm: Option<usize>,
    },
    Unchanged(u64),
    /// Tell the live task; `withdraws`: the trigger is gone or the issue is closed.
    Signal {
        task: u64,
        withdraws: bool,
    },
    /// A new task, the issue's `generation`-th.
    Start {
        generation: usize,
    },
}

impl Plan {
    fn ignore(why: impl Into<String>) -> Plan {
        Plan::Ignore {
            why: why.into(),
            rearm: None,
        }
    }
}

/// The checks a task submission gets, applied to an issue (from a webhook's payload or the
/// forge): a repository `owner/name`, an issue number (from 1), a title as `POST /tasks`
/// accepts it ([`check_title`]).
fn check_issue(repo: &RepoInfo, issue: &IssueInfo) -> Result<RepoRef, FlowError> {
    let at: RepoRef = repo
        .full_name
        .parse()
        .map_err(|e| FlowError::Invalid(format!("repository: {e}")))?;
    if issue.number == 0 {
        return Err(FlowError::Invalid(
            "issue number 0: issues are numbered from 1".into(),
        ));
    }
    check_title(&issue.title).map_err(FlowError::Invalid)?;
    Ok(at)
}

/// An issue as the REST API answers it, in the shape webhooks give.
pub fn issue_info(issue: &Issue) -> IssueInfo {
    IssueInfo {
        number: issue.number,
        title: issue.title.clone(),
        body: issue.body.clone(),
        state: issue.state.clone(),
        labels: issue.label_names(),
        is_pull: issue.is_pull(),
        author: issue.user.login.clone(),
    }
}

fn env_secret(name: &str) -> Option<String> {
    crate::secrets::var(name).filter(|v| !v.trim().is_empty())
}

// ---------------------------------------------------------------------------------------------
// Outbox effects
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct LabelsPayload {
    task: u64,
    repo: String,
    issue: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct CommentPayload {
    task: u64,
    repo: String,
    issue: u64,
    key: String,
    body: String,
}

pub(super) fn labels_effect(
    task: u64,
    repo: &str,
    issue: u64,
) -> Result<crate::workflow::Effect, crate::workflow::StepError> {
    effect(
        LABELS_EFFECT,
        &LabelsPayload {
            task,
            repo: repo.to_string(),
            issue,
        },
    )
}

pub(super) fn comment_effect(
    task: u64,
    repo: &str,
    issue: u64,
    key: &str,
    body: &str,
) -> Result<crate::workflow::Effect, crate::workflow::StepError> {
    effect(
        COMMENT_EFFECT,
        &CommentPayload {
            task,
            repo: repo.to_string(),
            issue,
            key: key.to_string(),
            body: body.to_string(),
        },
    )
}

/// The hidden marker of a task's comment.
pub fn marker(task: u64, key: &str) -> String {
    format!("<!-- agent-fleet:task={task}:effect={key} -->")
}

/// The status label of a task status (`None`: cancelled, no status label).
pub fn status_label(status: TaskStatus) -> Option<&'static str> {
    Some(match status {
        TaskStatus::Created | TaskStatus::AgentLost => "status:todo",
        TaskStatus::Assigned | TaskStatus::Running => "status:doing",
        TaskStatus::ReviewPending => "status:review",
        TaskStatus::Completed => "status:done",
        TaskStatus::Failed => "status:failed",
        TaskStatus::Cancelled => return None,
    })
}

fn effect_error(e: ForgeError) -> EffectError {
    if e.is_transient() {
        EffectError::Transient(e.to_string())
    } else {
        EffectError::Permanent(e.to_string())
    }
}

fn repo_ref(repo: &str) -> Result<RepoRef, EffectError> {
    repo.parse()
        .map_err(|e| EffectError::Permanent(format!("repository `{repo}`: {e}")))
}

/// Delivers [`LABELS_EFFECT`]: the issue's status labels become those of the status its latest
/// task has *now*, so an old delivery arriving late (of this task or of an older task of the
/// issue) cannot set an old status; deliveries for one issue take turns, so two of them cannot
/// leave two status labels. The issue's assignees follow the same status in the same turn
/// (see [`assignees_plan`]), so they end matching the final status too.
pub struct LabelsHandler(pub Arc<Forge>);

impl EffectHandler for LabelsHandler {
    fn deliver<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<(), EffectError>> {
        Box::pin(async move {
            let p: LabelsPayload = d
                .decode()
                .map_err(|e| EffectError::Permanent(e.to_string()))?;
            let forge = &self.0;
            let engine = forge
                .engine()
                .map_err(|e| EffectError::Transient(e.to_string()))?;
            // The state is read under the issue's lock: the delivery that goes last reads the
            // latest status, and its labels are what stays.
            let _serial = forge.label_locks.lock((p.repo.clone(), p.issue)).await;
            // The issue's LATEST task decides: a delivery of an older task of the issue, retried
            // after a newer task set its status, must not bring the older status back.
            let task = forge
                .latest_task(&p.repo, p.issue)
                .map_or(p.task, |latest| latest.max(p.task));
            let state = engine
                .state::<AgentTask>(task)
                .map_err(|e| EffectError::Permanent(e.to_string()))?;
            let repo = repo_ref(&p.repo)?;
            let mut wanted: Vec<&str> = status_label(state.status).into_iter().collect();
            if state.forge.as_ref().is_some_and(|f| f.escalated) {
                wanted.push(&forge.config.escalation_label);
            }
            if !forge.assigns() && !wanted.is_empty() {
                // One request: adding what is wanted answers the issue's labels after it, and
                // only status labels that are not wanted are left to remove.
                let after = add_labels(forge, &repo, &p, &wanted).await?;
                remove_unwanted(forge, &repo, p.issue, &after, &wanted).await?;
                return Ok(());
            }
            // One read gives both the labels and the assignees.
            let issue = forge
                .client
                .issue(&repo, p.issue)
                .await
                .map_err(effect_error)?;
            let current = &issue.labels;
            remove_unwanted(forge, &repo, p.issue, current, &wanted).await?;
            let missing: Vec<&str> = wanted
                .iter()
                .copied()
                .filter(|w| !current.iter().any(|l| l.name == *w))
                .collect();
            if !missing.is_empty() {
                add_labels(forge, &repo, &p, &missing).await?;
            }
            let taken = keep_assignees(
                forge,
                &repo,
                p.issue,
                state.status,
                &issue.assignee_logins(),
            )
            .await?;
            if let Some(person) = taken {
                note_own_assignment(engine, task, &repo, p.issue, &person).await;
            }
            Ok(())
        })
    }
}

/// Tells task `task` (in its history, through a `Note` signal its next step takes) that its
/// issue is assigned to `person`, whose assignment the daemon leaves alone: once per task and
/// person (the signal's key). A task that has ended is told nothing; a signal that cannot be
/// committed is only logged (the labels are done, and the next delivery tries again).
async fn note_own_assignment(engine: &Engine, task: u64, repo: &RepoRef, issue: u64, person: &str) {
    let text = format!(
        "issue {repo}#{issue} is assigned to {person}: its assignees are left alone (a person's \
         own assignment is never changed)"
    );
    let key = format!("forge/own-assignment/{}", person.to_lowercase());
    match engine
        .signal::<AgentTask>(task, &TaskSignal::Note { text }, &key)
        .await
    {
        Ok(_) | Err(EngineError::Finished { .. }) => {}
        Err(e) => tracing::warn!(
            task,
            "cannot note {person}'s assignment in the history: {e}"
        ),
    }
}

/// Removes from the issue the status labels of `current` that are not `wanted`.
async fn remove_unwanted(
    forge: &Forge,
    repo: &RepoRef,
    issue: u64,
    current: &[Label],
    wanted: &[&str],
) -> Result<(), EffectError> {
    for l in current {
        if STATUS_LABELS.contains(&l.name.as_str()) && !wanted.contains(&l.name.as_str()) {
            forge
                .client
                .remove_label(repo, issue, l.id)
                .await
                .map_err(effect_error)?;
        }
    }
    Ok(())
}

/// Adds the labels `names` to the issue, creating those the repository lacks; answers the
/// issue's labels after it. Label ids come from [`Forge::label_ids`] when all are known there;
/// an id the forge no longer knows (the label was deleted: the forge skips it) drops the
/// repository's ids and the delivery is tried again, which looks them up afresh.
async fn add_labels(
    forge: &Forge,
    repo: &RepoRef,
    p: &LabelsPayload,
    names: &[&str],
) -> Result<Vec<Label>, EffectError> {
    let cached = forge.known_label_ids(&p.repo, names);
    let ids = match &cached {
        Some(ids) => ids.clone(),
        None => {
            // Taken inside the issue's lock, never the other way round.
            let _creating = forge.repo_label_locks.lock(p.repo.clone()).await;
            // Whoever held the lock before may have found them.
            match forge.known_label_ids(&p.repo, names) {
                Some(ids) => ids,
                None => {
                    let labels = forge
                        .client
                        .ensure_labels(repo, names)
                        .await
                        .map_err(effect_error)?;
                    forge.remember_label_ids(&p.repo, &labels);
                    labels.iter().map(|l| l.id).collect()
                }
            }
        }
    };
    let after = match forge.client.add_labels(repo, p.issue, &ids).await {
        Ok(after) => after,
        Err(e) => {
            forge.forget_label_ids(&p.repo);
            return Err(effect_error(e));
        }
    };
    if let Some(name) = names.iter().find(|n| !after.iter().any(|l| l.name == **n)) {
        forge.forget_label_ids(&p.repo);
        return Err(EffectError::Transient(format!(
            "label `{name}` is not on issue {}#{} after adding it (deleted from the repository?); \
             its id is looked up again",
            p.repo, p.issue
        )));
    }
    Ok(after)
}

/// What becomes of an issue's assignees (see [`assignees_plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssigneesPlan {
    /// Nothing to do: assignment is off (`forgejo.assignee` and `forgejo.reviewer` unset), or
    /// the issue has the wanted assignees.
    Keep,
    /// A person other than `forgejo.assignee` and `forgejo.reviewer` is assigned: their
    /// assignment stands, whatever the task does.
    TakenBy(String),
    /// Assign exactly these logins (none: nobody).
    Set(Vec<String>),
}

/// A configured login, if it is one (blank is unset).
fn login(configured: &Option<String>) -> Option<&str> {
    configured
        .as_deref()
        .map(str::trim)
        .filter(|l| !l.is_empty())
}

/// Who an issue is assigned to while its task has `status`: `forgejo.assignee` while the task
/// is assigned or running; `forgejo.reviewer` once it is in review, done or failed; nobody
/// while it waits (`todo`) or once it is cancelled.
pub fn wanted_assignees(config: &ForgejoConfig, status: TaskStatus) -> Vec<String> {
    let who = match status {
        TaskStatus::Assigned | TaskStatus::Running => login(&config.assignee),
        TaskStatus::ReviewPending | TaskStatus::Completed | TaskStatus::Failed => {
            login(&config.reviewer)
        }
        TaskStatus::Created | TaskStatus::AgentLost | TaskStatus::Cancelled => None,
    };
    who.map(str::to_string).into_iter().collect()
}

/// What to do about an issue assigned to `current` whose (latest) task has `status`. Only the
/// daemon's own roles are ever changed: as soon as someone else is assigned, nothing is.
pub fn assignees_plan(
    config: &ForgejoConfig,
    status: TaskStatus,
    current: &[String],
) -> AssigneesPlan {
    let ours: Vec<&str> = [login(&config.assignee), login(&config.reviewer)]
        .into_iter()
        .flatten()
        .collect();
    if ours.is_empty() {
        return AssigneesPlan::Keep;
    }
    if let Some(person) = current
        .iter()
        .find(|c| !ours.iter().any(|o| o.eq_ignore_ascii_case(c)))
    {
        return AssigneesPlan::TakenBy(person.clone());
    }
    let wanted = wanted_assignees(config, status);
    if same_logins(&wanted, current) {
        AssigneesPlan::Keep
    } else {
        AssigneesPlan::Set(wanted)
    }
}

/// Whether two lists name the same users (logins are case-insensitive on Forgejo).
fn same_logins(a: &[String], b: &[String]) -> bool {
    let norm = |l: &[String]| {
        let mut v: Vec<String> = l.iter().map(|x| x.to_lowercase()).collect();
        v.sort();
        v.dedup();
        v
    };
    norm(a) == norm(b)
}

/// Makes the issue's assignees follow the task (see [`assignees_plan`]). Forgejo answers 500,
/// and changes nothing, when a login is no user or may not be assigned: the forge is then
/// asked which users can be, the others are left out (with a warning naming the key to fix)
/// and the edit is sent again, so a misconfigured login is never retried for ever.
///
/// Returns the person whose own assignment was left alone, if one is assigned.
async fn keep_assignees(
    forge: &Forge,
    repo: &RepoRef,
    issue: u64,
    status: TaskStatus,
    current: &[String],
) -> Result<Option<String>, EffectError> {
    let mut wanted = match assignees_plan(&forge.config, status, current) {
        AssigneesPlan::Keep => return Ok(None),
        AssigneesPlan::TakenBy(person) => {
            tracing::info!(
                "issue {repo}#{issue} is assigned to {person}: its assignees are left alone"
            );
            return Ok(Some(person));
        }
        AssigneesPlan::Set(wanted) => wanted,
    };
    let refused = match forge.client.set_assignees(repo, issue, &wanted).await {
        Ok(_) => return Ok(None),
        Err(e) if e.status().is_some_and(|s| s >= 500) && !wanted.is_empty() => e,
        Err(e) => return Err(effect_error(e)),
    };
    let assignable = forge.client.assignable(repo).await.map_err(effect_error)?;
    let (kept, left_out): (Vec<String>, Vec<String>) = wanted
        .drain(..)
        .partition(|w| assignable.iter().any(|u| u.login.eq_ignore_ascii_case(w)));
    if left_out.is_empty() {
        return Err(effect_error(refused));
    }
    tracing::warn!(
        "forgejo.assignee / forgejo.reviewer: {} cannot be assigned issues of {repo} (no such \
         user on the forge, or no write access): left out",
        left_out.join(", ")
    );
    if same_logins(&kept, current) {
        return Ok(None);
    }
    forge
        .client
        .set_assignees(repo, issue, &kept)
        .await
        .map_err(effect_error)?;
    Ok(None)
}

/// Delivers [`COMMENT_EFFECT`]: posts the comment with its marker unless a comment of the
/// issue already carries that marker (a replay after a crash or a lost answer).
pub struct CommentHandler(pub Arc<Forge>);

impl EffectHandler for CommentHandler {
    fn deliver<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<(), EffectError>> {
        Box::pin(async move {
            let p: CommentPayload = d
                .decode()
                .map_err(|e| EffectError::Permanent(e.to_string()))?;
            let forge = &self.0;
            let repo = repo_ref(&p.repo)?;
            let mark = marker(p.task, &p.key);
            let comments = forge
                .client
                .comments(&repo, p.issue)
                .await
                .map_err(effect_error)?;
            if comments.iter().any(|c| c.body.contains(&mark)) {
                return Ok(());
            }
            let body = format!("{}\n\n{mark}", p.body.trim_end());
            forge
                .client
                .create_comment(&repo, p.issue, &body)
                .await
                .map_err(effect_error)?;
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Texts
// ---------------------------------------------------------------------------------------------

fn sha7(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}

/// The body of the pull request opened for a task.
pub fn pull_body(task: u64, issue: u64, branch: &str, s: &TaskState) -> String {
    let summary = s
        .runs
        .iter()
        .rev()
        .find_map(|r| r.report.as_ref().map(|rep| rep.summary.clone()))
        .or_else(|| s.receipt.as_ref().map(|r| r.summary.clone()))
        .unwrap_or_default();
    let mut body = format!("Closes #{issue}\n\n");
    if !summary.trim().is_empty() {
        body.push_str(summary.trim());
        body.push_str("\n\n");
    }
    body.push_str(&format!(
        "---\nOpened by agent-fleet for task {task} (branch `{branch}`).\n"
    ));
    body
}

/// The web page of the task's repository on the forge, `<base_url>/<owner>/<name>`: the
/// comments link commits under it (`…/commit/<sha>`), as Forgejo serves them.
pub fn repo_web_url(base_url: &str, repo: &str) -> String {
    format!("{}/{}", base_url.trim().trim_end_matches('/'), repo)
}

impl Forge {
    /// [`repo_web_url`] on this forge.
    pub fn repo_web_url(&self, repo: &str) -> String {
        repo_web_url(&self.config.base_url, repo)
    }
}

/// `` [`abc1234`](<repo_url>/commit/<sha>) ``: a commit, linked.
fn commit_link(repo_url: &str, sha: &str) -> String {
    format!("[`{}`]({repo_url}/commit/{sha})", sha7(sha))
}

/// The task's pull request, linked: `[#7](<url>)` (`#7` when the forge gave no URL).
fn pull_link(pr: &super::review::PullLink) -> String {
    if pr.url.trim().is_empty() {
        format!("#{}", pr.number)
    } else {
        format!("[#{}]({})", pr.number, pr.url.trim())
    }
}

/// The verified commits of the task's receipt, each linked, as a list under a heading.
fn commits_section(repo_url: &str, s: &TaskState) -> String {
    let Some(r) = s.receipt.as_ref().filter(|r| !r.work.commits.is_empty()) else {
        return String::new();
    };
    let mut out = String::from("**Commits**\n\n");
    for (sha, subject) in r.work.commits.iter().take(30) {
        out.push_str(&format!("- {} {subject}\n", commit_link(repo_url, sha)));
    }
    out.push('\n');
    out
}

/// Where a person finds the runs and their output: the daemon serves no public page of a task,
/// so the comment names the command that shows it.
fn runs_line(task: u64) -> String {
    format!("Each run and its output: `agent-fleet task show {task}`.\n")
}

/// The receipt comment: ✅, what was delivered and verified, every artifact linked (the pull
/// request, its merge commit, each commit of the task's branch). `repo_url`: see
/// [`repo_web_url`].
pub fn receipt_comment(task: u64, s: &TaskState, repo_url: &str) -> String {
    let mut out = format!("### ✅ agent-fleet: task {task} completed\n\n");
    if let Some(pr) = s.forge.as_ref().and_then(|f| f.pr.as_ref()) {
        out.push_str(&format!(
            "Pull request {} merged{}, {} commit(s), verified on the forge.\n\n",
            pull_link(pr),
            pr.merge_sha
                .as_deref()
                .map(|m| format!(" as {}", commit_link(repo_url, m)))
                .unwrap_or_default(),
            pr.commits
        ));
    }
    if let Some(r) = &s.receipt
        && !r.summary.trim().is_empty()
    {
        out.push_str("**Summary**\n\n");
        for line in r.summary.trim().lines().take(20) {
            out.push_str(&format!("> {line}\n"));
        }
        out.push('\n');
    }
    out.push_str(&commits_section(repo_url, s));
    let cost: f64 = s
        .runs
        .iter()
        .filter_map(|r| r.report.as_ref()?.cost_usd)
        .sum();
    out.push_str(&format!(
        "Runs: {}. Review rounds: {}.{}\n",
        s.runs.len(),
        s.review_count,
        if cost > 0.0 {
            format!(" Cost: ${cost:.2}.")
        } else {
            String::new()
        }
    ));
    out.push_str(&runs_line(task));
    out
}

/// The failure comment: ❌ (🙋 when the task needs a person), why, the artifacts there are (the
/// pull request, the verified commits), linked, and what a person can do.
pub fn failure_comment(task: u64, s: &TaskState, repo_url: &str) -> String {
    let reason = s.failure.as_deref().unwrap_or("no reason was recorded");
    let escalated = s.forge.as_ref().is_some_and(|f| f.escalated);
    let mut out = if escalated {
        format!("### 🙋 agent-fleet: task {task} failed and needs a person\n\n{reason}\n\n")
    } else {
        format!("### ❌ agent-fleet: task {task} failed\n\n{reason}\n\n")
    };
    if let Some(pr) = s.forge.as_ref().and_then(|f| f.pr.as_ref()) {
        out.push_str(&format!("Pull request: {}.\n\n", pull_link(pr)));
    }
    out.push_str(&commits_section(repo_url, s));
    out.push_str(&format!(
        "Attempts: {}. Runs: {}. Review rounds: {}.\n",
        s.attempt,
        s.runs.len(),
        s.review_count
    ));
    if escalated {
        out.push_str("\nThis task needs a person.\n");
    }
    out.push_str(&format!(
        "\nRetry with `agent-fleet task retry {task}` once the cause is fixed.\n"
    ));
    out.push_str(&runs_line(task));
    out
}

/// Rebuilds the index from a recovered (or ended) task.
pub(super) fn index_task(forge: &Forge, id: u64, s: &TaskState) {
    if let Some(f) = &s.forge {
        forge.note_task(&f.repo, f.issue, id);
        if let Some(pr) = &f.pr {
            forge.note_pull(&f.repo, pr.number, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::agent_task::Receipt;
    use crate::steps::review::PullLink;
    use crate::steps::workspace::BranchWork;

    const WEB: &str = "https://forge.example.org/acme/widgets";
    const SHA_A: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";
    const SHA_B: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f000112233";
    const MERGE: &str = "9999999aaaaaaabbbbbbbcccccccdddddddeeeee";

    fn task(status: TaskStatus) -> TaskState {
        let spec = TaskSpec {
            source: Source::Forge {
                repo: "acme/widgets".into(),
                issue: 4,
            },
            title: "Add a changelog".into(),
            body: String::new(),
            labels: vec!["agent-fleet".into()],
            kind: None,
            priority: Priority::default(),
            agent: "demo".into(),
            capabilities: Vec::new(),
            repo: "https://forge.example.org/acme/widgets.git".into(),
            base: Some("main".into()),
            file_scope: Vec::new(),
            validation: Vec::new(),
        };
        let mut s = TaskState::new(spec, Timestamp::now());
        s.status = status;
        let mut f = ForgeTask::new("acme/widgets", 4, vec!["agent-fleet".into()]);
        f.pr = Some(PullLink {
            number: 7,
            title: "Add a changelog".into(),
            url: "https://forge.example.org/acme/widgets/pulls/7".into(),
            merged: status == TaskStatus::Completed,
            merge_sha: Some(MERGE.into()).filter(|_| status == TaskStatus::Completed),
            commits: 2,
        });
        s.forge = Some(f);
        s.receipt = Some(Receipt {
            branch: "task/12".into(),
            base: "main".into(),
            base_sha: "b".into(),
            work: BranchWork {
                head_sha: SHA_B.into(),
                commits: vec![
                    (SHA_A.into(), "Add CHANGELOG.md".into()),
                    (SHA_B.into(), "Mention it in the README".into()),
                ],
                files_changed: Vec::new(),
            },
            summary: "Added a changelog.".into(),
            cost_usd: None,
            verified_at: Timestamp::now(),
        });
        s
    }

    #[test]
    fn the_receipt_comment_leads_with_a_check_mark_and_links_the_pull_request_and_every_commit() {
        let body = receipt_comment(12, &task(TaskStatus::Completed), WEB);
        assert!(
            body.starts_with("### ✅ agent-fleet: task 12 completed"),
            "{body}"
        );
        assert!(
            body.contains("[#7](https://forge.example.org/acme/widgets/pulls/7)"),
            "{body}"
        );
        assert!(
            body.contains(&format!("[`9999999`]({WEB}/commit/{MERGE})")),
            "{body}"
        );
        for (sha, subject) in [
            (SHA_A, "Add CHANGELOG.md"),
            (SHA_B, "Mention it in the README"),
        ] {
            let line = format!("- [`{}`]({WEB}/commit/{sha}) {subject}", &sha[..7]);
            assert!(body.contains(&line), "no {line} in:\n{body}");
        }
        assert!(body.contains("`agent-fleet task show 12`"), "{body}");
    }

    #[test]
    fn the_failure_comment_leads_with_a_cross_and_links_what_there_is() {
        let mut s = task(TaskStatus::Failed);
        s.failure = Some("the agent gave up".into());
        let body = failure_comment(12, &s, WEB);
        assert!(body.starts_with("### ❌ agent-fleet: task 12 failed\n\nthe agent gave up"));
        assert!(
            body.contains("Pull request: [#7](https://forge.example.org/acme/widgets/pulls/7)."),
            "{body}"
        );
        assert!(body.contains(&format!("({WEB}/commit/{SHA_A})")), "{body}");
        assert!(body.contains("`agent-fleet task show 12`"), "{body}");
        assert!(!body.contains("needs a person"), "{body}");
    }

    #[test]
    fn an_escalated_failure_leads_with_a_raised_hand() {
        let mut s = task(TaskStatus::Failed);
        s.failure = Some("too many review rounds".into());
        if let Some(f) = s.forge.as_mut() {
            f.escalated = true;
        }
        let body = failure_comment(12, &s, WEB);
        assert!(
            body.starts_with("### 🙋 agent-fleet: task 12 failed and needs a person"),
            "{body}"
        );
    }

    #[test]
    fn commit_links_are_under_the_forges_base_url_whatever_its_trailing_slash() {
        assert_eq!(
            repo_web_url(" https://forge.example.org/git/ ", "acme/widgets"),
            "https://forge.example.org/git/acme/widgets"
        );
    }

    fn roles(assignee: Option<&str>, reviewer: Option<&str>) -> ForgejoConfig {
        let text = format!(
            "base_url = \"https://forge.example.org\"\n{}{}",
            assignee.map_or(String::new(), |a| format!("assignee = \"{a}\"\n")),
            reviewer.map_or(String::new(), |r| format!("reviewer = \"{r}\"\n")),
        );
        toml::from_str(&text).expect("a [forgejo] table")
    }

    fn logins(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn an_issue_lock_nobody_holds_or_waits_for_leaves_the_map() {
        let locks = LockMap::new();
        let key = ("acme/widgets".to_string(), 4);
        let first = locks.lock(key.clone()).await;
        assert_eq!(locks.len(), 1);
        drop(first);
        assert_eq!(locks.len(), 0, "a lock nobody holds is kept");
        for n in 1..=50 {
            drop(locks.lock(("acme/widgets".to_string(), n)).await);
        }
        assert_eq!(locks.len(), 0, "one lock kept per issue ever seen");
    }

    #[tokio::test]
    async fn an_issue_lock_is_kept_while_someone_waits_for_it_and_stays_exclusive() {
        let locks = Arc::new(LockMap::new());
        let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let held = locks.lock("acme/widgets".to_string()).await;
        let mut waiters = Vec::new();
        for _ in 0..8 {
            let (locks, inside, most) = (locks.clone(), inside.clone(), most.clone());
            waiters.push(tokio::spawn(async move {
                let _g = locks.lock("acme/widgets".to_string()).await;
                let now = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::task::yield_now().await;
                inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }));
        }
        tokio::task::yield_now().await;
        drop(held);
        for w in waiters {
            w.await.expect("a waiter");
        }
        assert_eq!(
            most.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "two holders at once"
        );
        assert_eq!(locks.len(), 0);
    }

    #[test]
    fn assignees_follow_the_status_and_never_a_persons_own_assignment() {
        let c = roles(Some("bot"), Some("bob"));
        let set = |l: &[&str]| AssigneesPlan::Set(logins(l));
        assert_eq!(assignees_plan(&c, TaskStatus::Running, &[]), set(&["bot"]));
        assert_eq!(
            assignees_plan(&c, TaskStatus::ReviewPending, &logins(&["bot"])),
            set(&["bob"])
        );
        assert_eq!(
            assignees_plan(&c, TaskStatus::Completed, &logins(&["Bob"])),
            AssigneesPlan::Keep
        );
        assert_eq!(
            assignees_plan(&c, TaskStatus::AgentLost, &logins(&["bot"])),
            set(&[])
        );
        assert_eq!(
            assignees_plan(&c, TaskStatus::Running, &logins(&["bob", "alice"])),
            AssigneesPlan::TakenBy("alice".into())
        );
        let off = roles(None, Some(" "));
        assert_eq!(
            assignees_plan(&off, TaskStatus::Running, &logins(&["bot"])),
            AssigneesPlan::Keep
        );
    }
}
