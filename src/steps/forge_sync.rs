//! Reconciliation with the forge (SPEC §6): the `forge-sync` workflow, one never-ending
//! instance, wakes every `forgejo.reconcile_interval` on its durable timer and lists the open
//! issues of each repository in `forgejo.repos` that carry the trigger label or an
//! `agent:<kind>` label. Each one goes through [`Forge::ingest`] like a webhook would: a missing
//! task is created, a changed issue is signalled to its task. Tasks whose issue no longer shows
//! up (trigger removed, issue closed) are looked at one by one. Pull requests need nothing here:
//! each task in review asks the forge itself on the same interval.
//!
//! Webhooks only make things faster; this alone gets every issue to its task.
//!
//! The instance also keeps the ids of the webhook deliveries acted on: each is the idempotency
//! key of a signal to it (`Forge::first_delivery`), a durable record a redelivery runs into.
//! Those signals carry nothing else: a step woken by them takes them and waits on for its round.

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::io::forgejo::{RepoInfo, RepoRef, Repository};
use crate::workflow::{Engine, EngineError, Outcome, StepCtx, StepResult, Timestamp, Workflow};

use super::forge::{FlowError, Forge, Handled, issue_info};
use super::runtime::Runtime;

/// The state of the reconciler: counters for its history and `GET` views.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncState {
    pub rounds: u64,
    pub last_at: Option<Timestamp>,
    pub last_error: Option<String>,
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
    const VERSION: u32 = 1;
    type State = SyncState;
    type Signal = ();

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
        // Signals are delivery ids recorded as seen: their keys are the record, nothing else
        // is in them. Woken by them before the round is due, wait on.
        let _seen = ctx.take_all();
        if let Some(last) = s.last_at {
            let due = last.after(forge.config.reconcile_interval);
            if ctx.now() < due {
                return Ok(Outcome::wait_until(s, due));
            }
        }
        s.rounds += 1;
        let mut notes = Vec::new();
        let mut errors = Vec::new();
        for repo in &forge.config.repos {
            match reconcile_repo(forge, repo, s.rounds).await {
                Ok(summary) => notes.push(format!("{repo}: {summary}")),
                Err(e) => errors.push(format!("{repo}: {e}")),
            }
        }
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

/// One repository: its labelled open issues, then the tasks whose issue was not among them.
async fn reconcile_repo(forge: &Forge, repo: &str, round: u64) -> Result<String, String> {
    let r: RepoRef = repo.parse().map_err(|e| format!("{e}"))?;
    let info = repo_info(&forge.client.repo(&r).await.map_err(|e| e.to_string())?);
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
                Err(e) => return Err(e.to_string()),
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
            Err(e) => return Err(e.to_string()),
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
