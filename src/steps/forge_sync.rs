//! Reconciliation with the forge (SPEC §6): the `forge-sync` workflow, one never-ending
//! instance, wakes every `forgejo.reconcile_interval` on its durable timer and lists the open
//! issues that carry the trigger label or an `agent:<kind>` label in every repository it knows:
//! those of `forgejo.repos`, those with live tasks, those webhooks came from and those with an
//! issue re-armed (so that a webhook refused or lost — a 503 while the daemon recovers — is made
//! good even when `forgejo.repos` is empty and webhooks are taken from any repository). Each
//! issue goes through [`Forge::ingest`] like a webhook would: a missing task is created, a
//! changed issue is signalled to its task. Tasks whose issue no longer shows up (trigger removed,
//! issue closed) are looked at one by one. Pull requests need nothing here: each task in review
//! asks the forge itself on the same interval.
//!
//! Webhooks only make things faster; this alone gets every issue to its task.
//!
//! The instance is also the forge's durable memory, written through the idempotency keys of
//! signals to it (their payload is `()`): `repo/<owner>/<name>` for a repository
//! webhooks came from, `rearm/<owner>/<name>#<issue>/<generation>` for an issue whose last task
//! ended and whose trigger was seen removed since (adding it again starts a new task, after a
//! restart too). Each step takes the signals and keeps what their keys say in its state.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::io::forgejo::{RepoInfo, RepoRef, Repository};
use crate::workflow::codec::{self, CodecError};
use crate::workflow::{Engine, EngineError, Outcome, StepCtx, StepResult, Timestamp, Workflow};

use super::forge::{FlowError, Forge, Handled, issue_info};
use super::runtime::Runtime;

/// The state of the reconciler: counters for its history, and what it remembers for the forge.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncState {
    pub rounds: u64,
    pub last_at: Option<Timestamp>,
    pub last_error: Option<String>,
    /// Repositories webhooks came from (sorted): reconciled with those of `forgejo.repos`.
    pub repos: Vec<String>,
    /// Issues re-armed: their last task ended and their trigger was seen removed since.
    pub rearmed: Vec<Rearmed>,
}

/// An issue whose `generation` tasks have all ended and whose trigger was seen removed after
/// the last one ended: the trigger coming back starts task number `generation + 1`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rearmed {
    pub repo: String,
    pub issue: u64,
    pub generation: u64,
}

impl Rearmed {
    /// The key of the signal that records it.
    pub fn key(&self) -> String {
        format!("rearm/{}#{}/{}", self.repo, self.issue, self.generation)
    }

    fn from_key(key: &str) -> Option<Rearmed> {
        let rest = key.strip_prefix("rearm/")?;
        let (repo, rest) = rest.rsplit_once('#')?;
        let (issue, generation) = rest.split_once('/')?;
        Some(Rearmed {
            repo: repo.to_string(),
            issue: issue.parse().ok()?,
            generation: generation.parse().ok()?,
        })
    }
}

/// The key of the signal that records a repository webhooks came from.
pub fn repo_key(repo: &str) -> String {
    format!("repo/{repo}")
}

/// The most issues kept re-armed (the oldest are dropped; reconciliation still sees the
/// trigger, and removing and adding it again re-arms the issue).
const MAX_REARMED: usize = 10_000;

/// The state of definition version 1, frozen: read by [`ForgeSync::upgrade`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncStateV1 {
    pub rounds: u64,
    pub last_at: Option<Timestamp>,
    pub last_error: Option<String>,
}

impl From<SyncStateV1> for SyncState {
    fn from(v1: SyncStateV1) -> Self {
        SyncState {
            rounds: v1.rounds,
            last_at: v1.last_at,
            last_error: v1.last_error,
            repos: Vec::new(),
            rearmed: Vec::new(),
        }
    }
}

pub struct ForgeSync {
    rt: Arc<Runtime>,
}

impl ForgeSync {
    pub fn new(rt: Arc<Runtime>) -> Self {
        ForgeSync { rt }
    }
}

/// Starts the reconciler once (the same key every time) and returns the live instance. One
/// that ended (it completes when a daemon runs without `[forgejo]`) is followed by a new one,
/// keyed by the id of the one it follows, so every start finds the same live instance.
pub async fn ensure_started(engine: &Engine) -> Result<u64, EngineError> {
    let mut key = "forge-sync".to_string();
    loop {
        let id = engine
            .start_ack::<ForgeSync>(&SyncState::default(), Some(&key))
            .await?
            .id;
        if !engine.info(id)?.status.is_terminal() {
            return Ok(id);
        }
        key = format!("forge-sync/after/{id}");
    }
}

fn repo_info(repo: &Repository) -> RepoInfo {
    RepoInfo {
        full_name: repo.full_name.clone(),
        clone_url: repo.clone_url.clone(),
        default_branch: repo.default_branch.clone(),
    }
}

impl Workflow for ForgeSync {
    const NAME: &'static str = "forge-sync";
    /// v2: the state remembers repositories and re-armed issues (v1 instances are upgraded).
    const VERSION: u32 = 2;
    const UPGRADES_FROM: &'static [u32] = &[1];
    type State = SyncState;
    type Signal = ();

    fn upgrade(from: u32, state: &[u8]) -> Result<SyncState, CodecError> {
        let _ = from; // only v1
        Ok(codec::decode_value::<SyncStateV1>("forge-sync state v1", state)?.into())
    }

    async fn step(&self, ctx: &mut StepCtx<()>, mut s: SyncState) -> StepResult<SyncState> {
        tokio::select! {
            _ = self.rt.fleet().wait_ready() => {}
            _ = ctx.shutdown().cancelled() => {
                return Err(crate::workflow::StepError::msg("the daemon is stopping"));
            }
        }
        let Some(forge) = self.rt.forge() else {
            return Ok(Outcome::complete(s).note("no [forgejo] is configured: reconciliation ends"));
        };
        // Signals are records: their keys say what to remember, nothing else is in them.
        let keys: Vec<String> = ctx.signals().map(|i| i.key.clone()).collect();
        let _taken = ctx.take_all();
        let learnt = remember(&mut s, &keys);
        forget_used(forge, &mut s);
        if let Some(last) = s.last_at {
            let due = last.after(forge.config.reconcile_interval);
            if ctx.now() < due {
                let outcome = Outcome::wait_until(s, due);
                return Ok(match learnt {
                    Some(note) => outcome.note(note),
                    None => outcome,
                });
            }
        }
        s.rounds += 1;
        let mut notes: Vec<String> = learnt.into_iter().collect();
        let mut errors = Vec::new();
        let mut gone = Vec::new();
        for repo in repos_to_reconcile(forge, &s) {
            match reconcile_repo(forge, &repo, s.rounds).await {
                Ok(summary) => notes.push(format!("{repo}: {summary}")),
                Err(RepoTrouble::Gone(e)) => {
                    notes.push(format!("{repo}: {e}; no longer reconciled"));
                    gone.push(repo);
                }
                Err(RepoTrouble::Failed(e)) => errors.push(format!("{repo}: {e}")),
            }
        }
        s.repos.retain(|r| !gone.contains(r));
        s.last_at = Some(ctx.now());
        s.last_error = (!errors.is_empty()).then(|| errors.join("; "));
        let next = ctx.now().after(forge.config.reconcile_interval);
        notes.extend(errors);
        let outcome = Outcome::wait_until(s, next);
        Ok(if notes.is_empty() {
            outcome
        } else {
            outcome.note(notes.join("; "))
        })
    }
}

/// Keeps what the signals' keys record (repositories, re-armed issues); a note saying what is
/// new, if anything.
fn remember(s: &mut SyncState, keys: &[String]) -> Option<String> {
    let mut new = Vec::new();
    for key in keys {
        if let Some(repo) = key.strip_prefix("repo/") {
            if let Err(at) = s.repos.binary_search_by(|r| r.as_str().cmp(repo)) {
                s.repos.insert(at, repo.to_string());
                new.push(format!("webhooks come from {repo}"));
            }
        } else if let Some(r) = Rearmed::from_key(key)
            && !s.rearmed.contains(&r)
        {
            new.push(format!("{}#{} re-armed", r.repo, r.issue));
            s.rearmed.push(r);
        }
    }
    if s.rearmed.len() > MAX_REARMED {
        let extra = s.rearmed.len() - MAX_REARMED;
        s.rearmed.drain(..extra);
    }
    (!new.is_empty()).then(|| new.join("; "))
}

/// Drops the re-armed issues that have had their new task since.
fn forget_used(forge: &Forge, s: &mut SyncState) {
    s.rearmed
        .retain(|r| (forge.task_count(&r.repo, r.issue) as u64) <= r.generation);
}

/// `forgejo.repos`, the repositories with live tasks, those webhooks came from and those with
/// re-armed issues; each once, in order.
fn repos_to_reconcile(forge: &Forge, s: &SyncState) -> BTreeSet<String> {
    let mut repos: BTreeSet<String> = forge.config.repos.iter().cloned().collect();
    repos.extend(forge.live_repos());
    repos.extend(s.repos.iter().filter(|r| forge.serves(r)).cloned());
    repos.extend(s.rearmed.iter().map(|r| r.repo.clone()));
    repos
}

/// Why a repository was not reconciled.
enum RepoTrouble {
    /// The forge does not have it (any more).
    Gone(String),
    Failed(String),
}

impl From<String> for RepoTrouble {
    fn from(e: String) -> Self {
        RepoTrouble::Failed(e)
    }
}

/// One repository: its labelled open issues, then the tasks whose issue was not among them.
async fn reconcile_repo(forge: &Forge, repo: &str, round: u64) -> Result<String, RepoTrouble> {
    let r: RepoRef = repo.parse().map_err(|e| format!("{e}"))?;
    let info = match forge.client.repo(&r).await {
        Ok(found) => repo_info(&found),
        Err(e) if e.is_not_found() && !forge.config.repos.iter().any(|c| c == repo) => {
            return Err(RepoTrouble::Gone(e.to_string()));
        }
        Err(e) => return Err(e.to_string().into()),
    };
    let mut labels = vec![forge.config.trigger_label.clone()];
    labels.extend(forge.agent_labels());
    let mut seen = HashSet::new();
    let (mut started, mut signalled) = (0, 0);
    let mut refused = Vec::new();
    for label in &labels {
        let issues = forge
            .client
            .open_issues_with_label(&r, label)
            .await
            .map_err(|e| e.to_string())?;
        for issue in issues {
            if !seen.insert(issue.number) {
                continue;
            }
            let key = format!("reconcile/{round}/{repo}#{}", issue.number);
            match forge.ingest(&info, &issue_info(&issue), &key).await {
                Ok(Handled::Started(_)) => started += 1,
                Ok(Handled::Signalled(_)) => signalled += 1,
                Ok(_) => {}
                // This issue cannot be a task (e.g. its title); the others still can.
                Err(FlowError::Invalid(why)) => refused.push(format!("#{}: {why}", issue.number)),
                Err(e) => return Err(e.to_string().into()),
            }
        }
    }
    for (number, _) in forge.live_tasks_of_repo(repo) {
        if seen.contains(&number) {
            continue;
        }
        let issue = match forge.client.issue(&r, number).await {
            Ok(i) => i,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.to_string().into()),
        };
        let key = format!("reconcile/{round}/{repo}#{number}");
        if let Ok(Handled::Signalled(_)) = forge.ingest(&info, &issue_info(&issue), &key).await {
            signalled += 1;
        }
    }
    let mut summary = format!(
        "{} labelled issue(s), {started} task(s) created, {signalled} signalled",
        seen.len()
    );
    if !refused.is_empty() {
        summary.push_str(&format!(", refused {}", refused.join(", ")));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_state_is_read_and_upgraded() {
        let v1 = SyncStateV1 {
            rounds: 7,
            last_at: Some(Timestamp(1_700_000_000_000)),
            last_error: Some("acme/widgets: 502".into()),
        };
        let bytes = codec::encode_value(&v1).unwrap();
        let s = ForgeSync::upgrade(1, &bytes).unwrap();
        assert_eq!(s.rounds, 7);
        assert_eq!(s.last_at, v1.last_at);
        assert_eq!(s.last_error, v1.last_error);
        assert!(s.repos.is_empty() && s.rearmed.is_empty());
    }

    #[test]
    fn signal_keys_are_remembered_once_and_deliveries_are_not() {
        let r = Rearmed {
            repo: "acme/widgets".into(),
            issue: 12,
            generation: 2,
        };
        assert_eq!(r.key(), "rearm/acme/widgets#12/2");
        assert_eq!(Rearmed::from_key(&r.key()), Some(r.clone()));
        assert_eq!(Rearmed::from_key("rearm/acme/widgets#x/2"), None);
        let mut s = SyncState::default();
        let keys = [
            "delivery/5503a499".to_string(),
            repo_key("zeta/b"),
            repo_key("acme/widgets"),
            r.key(),
            repo_key("acme/widgets"),
            r.key(),
        ];
        let note = remember(&mut s, &keys).unwrap();
        assert_eq!(s.repos, ["acme/widgets", "zeta/b"]);
        assert_eq!(s.rearmed, [r]);
        assert!(note.contains("acme/widgets#12 re-armed"), "{note}");
        assert_eq!(remember(&mut s, &keys), None, "nothing new the second time");
    }
}
