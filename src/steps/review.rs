//! The forge side of a task (SPEC §4 Publish, Await review, Verify receipt): once a run's work
//! is verified, **Publish** pushes `task/<id>` (when the agent did not) and opens the pull
//! request unless one exists for that head; **Review** (`review_pending`) watches the pull
//! request — a merge is verified on the forge and completes the task, a close without merge
//! cancels it, requested changes and review comments start a new round (feedback deduplicated
//! by fingerprint, gathered for `forgejo.review_debounce`), too many rounds fail the task and
//! escalate it.
//!
//! Only the task's own work counts: a pull request is the task's when its head branch is
//! `task/<id>` IN THE TASK'S REPOSITORY (never a fork's branch of that name) at the commit the
//! daemon verified and pushed; review feedback comes only from reviewers with write access to the
//! repository (asked of the forge), `official` reviews and `forgejo.trusted_reviewers`; other
//! reviews are ignored and noted in the task's history.
//!
//! Webhooks only wake these steps early: each run asks the forge itself, and the Review step
//! also asks every `forgejo.reconcile_interval` on its own durable timer, so a task gets to
//! the end with every webhook lost.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::io::forgejo::{CreatePull, ForgeError, PullRequest, PullReview, RepoRef};
use crate::workflow::{Effect, Outcome, StepCtx, StepError, StepResult, Timestamp};

use super::agent_task::{AgentTask, Phase, TaskSignal, TaskState};
use super::forge::{self, Forge};
use super::task::TaskStatus;
use super::workspace;

/// Fingerprints of feedback already given, kept per task (the oldest are dropped).
const MAX_FINGERPRINTS: usize = 512;

/// The issue and pull request of a task that came from the forge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForgeTask {
    /// `owner/name`.
    pub repo: String,
    pub issue: u64,
    /// The issue's labels as last seen (webhooks carry the full set, never a diff).
    pub labels: Vec<String>,
    /// `open` or `closed`, as last seen.
    pub issue_state: String,
    pub pr: Option<PullLink>,
    /// Reviews already read (their ids).
    pub seen_reviews: Vec<i64>,
    /// Fingerprints of the feedback already given to the agent (or waiting to be).
    pub fingerprints: Vec<String>,
    /// Feedback gathered for the next round.
    pub pending_feedback: Vec<String>,
    /// When the gathered feedback starts a round (the debounce ends).
    pub round_at: Option<Timestamp>,
    /// The feedback of the current round (in its prompt).
    pub feedback: Vec<String>,
    /// The escalation label is due (the task needs a person).
    pub escalated: bool,
    /// Failure comments posted so far (each failure gets its own).
    pub failures: u32,
}

/// The engine key (see `Workflow::keys`) under which a task of `repo`'s issue `issue` is found.
pub fn issue_key(repo: &str, issue: u64) -> String {
    format!("issue/{repo}#{issue}")
}

/// The engine key of the task that opened pull request `number` of `repo`.
pub fn pull_key(repo: &str, number: u64) -> String {
    format!("pull/{repo}#{number}")
}

impl ForgeTask {
    /// The keys the task is found by: its issue, and its pull request once opened.
    pub fn keys(&self) -> Vec<String> {
        let mut keys = vec![issue_key(&self.repo, self.issue)];
        if let Some(pr) = &self.pr {
            keys.push(pull_key(&self.repo, pr.number));
        }
        keys
    }
}

impl ForgeTask {
    pub fn new(repo: &str, issue: u64, labels: Vec<String>) -> Self {
        ForgeTask {
            repo: repo.to_string(),
            issue,
            labels,
            issue_state: "open".into(),
            pr: None,
            seen_reviews: Vec::new(),
            fingerprints: Vec::new(),
            pending_feedback: Vec::new(),
            round_at: None,
            feedback: Vec::new(),
            escalated: false,
            failures: 0,
        }
    }
}

/// The task's pull request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullLink {
    pub number: u64,
    pub title: String,
    pub url: String,
    pub merged: bool,
    pub merge_sha: Option<String>,
    /// Commits of the pull request, as the forge counted them when it was merged.
    pub commits: u32,
}

/// A stable fingerprint of one piece of feedback (same place, same words → same fingerprint).
pub fn fingerprint(place: &str, text: &str) -> String {
    let mut h = Sha256::new();
    h.update(place.as_bytes());
    h.update([0]);
    h.update(text.trim().as_bytes());
    super::pull::hex(&h.finalize()[..12])
}

/// Takes the forge's signals of any phase: issue labels and state are recorded, a push counts
/// as activity. Returns history remarks.
pub(super) fn take_forge_signals(ctx: &mut StepCtx<TaskSignal>, s: &mut TaskState) -> Vec<String> {
    let mut remarks = Vec::new();
    while let Some(sig) = ctx.take(|sig| {
        matches!(
            sig,
            TaskSignal::IssueChanged { .. } | TaskSignal::ForgeActivity { .. }
        )
    }) {
        match sig {
            TaskSignal::IssueChanged { labels, state } => {
                if let Some(f) = s.forge.as_mut()
                    && (f.labels != labels || f.issue_state != state)
                {
                    remarks.push(format!(
                        "issue #{} is {state}, labels [{}]",
                        f.issue,
                        labels.join(", ")
                    ));
                    f.labels = labels;
                    f.issue_state = state;
                }
            }
            TaskSignal::ForgeActivity { pushed: true, .. } => {
                s.last_activity_at = Some(ctx.now());
            }
            _ => {}
        }
    }
    remarks
}

/// The effects that keep the forge in step with a status change: the status labels, and one
/// comment for a receipt or a failure. `first`: the task's first step, whose status is the one
/// it was started with (`todo`), which no effect has shown on the issue yet: the labels effect
/// is added even though the status did not change (the handler sets the labels of the status
/// the task has when it delivers, so a second delivery changes nothing).
pub(super) fn status_effects(
    forge: Option<&Forge>,
    id: u64,
    before: TaskStatus,
    first: bool,
    outcome: &mut Outcome<TaskState>,
) -> Result<(), StepError> {
    let s = &mut outcome.state;
    if forge.is_none() || (s.status == before && !first) {
        return Ok(());
    }
    let Some((repo, issue)) = s.forge.as_ref().map(|f| (f.repo.clone(), f.issue)) else {
        return Ok(());
    };
    outcome
        .effects
        .push(forge::labels_effect(id, &repo, issue)?);
    if s.status == before {
        return Ok(());
    }
    let web = forge.map(|f| f.repo_web_url(&repo)).unwrap_or_default();
    let comment = match s.status {
        TaskStatus::Completed => Some(("receipt".to_string(), forge::receipt_comment(id, s, &web))),
        TaskStatus::Failed => {
            let n = s.forge.as_mut().map_or(1, |f| {
                f.failures += 1;
                f.failures
            });
            Some((format!("failure-{n}"), forge::failure_comment(id, s, &web)))
        }
        _ => None,
    };
    if let Some((key, body)) = comment {
        outcome
            .effects
            .push(forge::comment_effect(id, &repo, issue, &key, &body)?);
    }
    Ok(())
}

/// Whether the task was withdrawn on the forge before it started: its trigger label is gone
/// (or the issue was closed) and no run or claim has happened yet.
pub(super) fn withdrawn(forge: Option<&Forge>, s: &TaskState) -> Option<String> {
    let (forge, f) = (forge?, s.forge.as_ref()?);
    let started = !s.runs.is_empty() || s.claim.is_some() || s.epoch > 0 || f.pr.is_some();
    if started || !matches!(s.status, TaskStatus::Created | TaskStatus::AgentLost) {
        return None;
    }
    if f.issue_state == "closed" {
        return Some(format!(
            "issue #{} was closed before the task started",
            f.issue
        ));
    }
    if !forge.triggers(&f.labels) {
        return Some(format!(
            "the trigger label `{}` was removed from issue #{} before the task started",
            forge.config.trigger_label, f.issue
        ));
    }
    None
}

/// How a forge error ends a step: a transient one is retried by the engine (step error with
/// backoff); another one is the task's failure.
enum Trouble {
    Retry(StepError),
    Fail(String),
}

fn trouble(what: &str, e: ForgeError) -> Trouble {
    if e.is_transient() {
        Trouble::Retry(StepError::msg(format!("{what}: {e}")))
    } else {
        Trouble::Fail(format!("{what}: {e}"))
    }
}

impl AgentTask {
    fn forge_parts(&self, s: &TaskState) -> Result<(&Forge, RepoRef), StepError> {
        let forge = self
            .rt
            .forge()
            .ok_or_else(|| StepError::msg("no [forgejo] is configured for a forge task"))?;
        let f = s
            .forge
            .as_ref()
            .ok_or_else(|| StepError::msg("the task has no issue on the forge"))?;
        let repo: RepoRef = f
            .repo
            .parse()
            .map_err(|e| StepError::msg(format!("repository `{}`: {e}", f.repo)))?;
        Ok((forge, repo))
    }

    /// Publish: `task/<id>` on the forge (pushed from the worktree if the agent did not), with
    /// at least one commit ahead of its base, and exactly one pull request for it. A worktree
    /// on a host removed from the config cannot be pushed from: the branch is published as the
    /// forge has it if it is there at the verified commit, else the task is routed again.
    pub(super) async fn publish(
        &self,
        ctx: &mut StepCtx<TaskSignal>,
        s: TaskState,
    ) -> StepResult<TaskState> {
        let tried = self.try_publish(ctx, s.clone()).await;
        self.settle(ctx, s, tried)
    }

    /// A forge phase's result: transient trouble is a step error (retried with backoff), other
    /// trouble fails the task from the state the step started with.
    fn settle(
        &self,
        ctx: &StepCtx<TaskSignal>,
        s: TaskState,
        tried: Result<Outcome<TaskState>, Trouble>,
    ) -> StepResult<TaskState> {
        match tried {
            Ok(outcome) => Ok(outcome),
            Err(Trouble::Retry(e)) => Err(e),
            Err(Trouble::Fail(reason)) => Ok(self.give_up(ctx, s, reason)),
        }
    }

    async fn try_publish(
        &self,
        ctx: &mut StepCtx<TaskSignal>,
        mut s: TaskState,
    ) -> Result<Outcome<TaskState>, Trouble> {
        let id = ctx.instance();
        let (forge, repo) = self.forge_parts(&s).map_err(Trouble::Retry)?;
        let branch = self.rt.names().map_err(Trouble::Retry)?.branch(id);
        let mut notes = Vec::new();
        let base = s
            .workspace
            .as_ref()
            .map(|w| w.base.clone())
            .or_else(|| s.receipt.as_ref().map(|r| r.base.clone()))
            .or_else(|| s.spec.base.clone())
            .unwrap_or_else(|| "main".into());
        if let Some(ws) = s.workspace.clone() {
            if self.rt.config().host(&ws.host).is_none() {
                // The verified commits are in the workspace on a host this daemon can no longer
                // reach. Unless the branch reached the forge at the verified commit (the agent
                // pushed it, or a push finished before a restart), the work is done again.
                if !self
                    .on_forge_at_receipt(forge, &repo, &base, &branch, &s)
                    .await?
                {
                    return Ok(self.host_removed(ctx, s, &ws.host));
                }
                notes.push(format!(
                    "host {} is no longer in the config; {branch} is on the forge at the \
                     verified commit: published from there",
                    ws.host
                ));
            } else {
                let shell = self.rt.shell(&ws.host).map_err(Trouble::Retry)?;
                match workspace::push_branch(shell.as_ref(), &ws).await {
                    Ok(true) => notes.push(format!("pushed {branch}")),
                    Ok(false) => notes.push(format!("{branch} was already pushed")),
                    Err(workspace::WorkspaceError::Shell(e)) => {
                        return Err(Trouble::Retry(StepError::msg(e.to_string())));
                    }
                    Err(e) => return Err(Trouble::Fail(format!("cannot push {branch}: {e}"))),
                }
            }
        }
        let ahead = forge
            .client
            .compare(&repo, &base, &branch)
            .await
            .map_err(|e| trouble(&format!("comparing {branch} with {base} on the forge"), e))?;
        if ahead.total_commits == 0 {
            return Err(Trouble::Fail(format!(
                "{branch} on the forge has no commit ahead of {base}: no pull request opened"
            )));
        }
        // One request by base and head, however many pull requests the repository has.
        let found = forge
            .client
            .pull_by_base_head(&repo, &base, &branch)
            .await
            .map_err(|e| trouble("looking up the pull request", e))?;
        let pushed = pushed_head(&s);
        let pr = match judge(found, pushed, &branch, &mut notes)? {
            Some(p) if p.state == "closed" && !p.merged => {
                let reason = format!(
                    "pull request #{} of {branch} was closed without merging",
                    p.number
                );
                return Ok(cancelled(s, reason));
            }
            Some(p) => {
                notes.push(format!("pull request #{} exists for {branch}", p.number));
                p
            }
            None => {
                let issue = s.forge.as_ref().map_or(0, |f| f.issue);
                let body = forge::pull_body(id, issue, &branch, &s);
                let create = CreatePull {
                    head: branch.clone(),
                    base: base.clone(),
                    title: s.spec.title.clone(),
                    body,
                };
                match forge.client.create_pull(&repo, &create).await {
                    Ok(p) => {
                        notes.push(format!(
                            "opened pull request #{} ({})",
                            p.number, p.html_url
                        ));
                        p
                    }
                    // An open pull request exists for this head and base: most likely ours, from
                    // a create whose answer was lost (a timeout, a 5xx after the forge acted).
                    Err(e) if e.status() == Some(409) => {
                        let open = self.open_pull(forge, &repo, &base, &branch).await?;
                        match judge(open, pushed, &branch, &mut notes)? {
                            Some(p) if p.state == "open" => {
                                notes.push(format!(
                                    "pull request #{} was already open for {branch} (the forge \
                                     answered 409 to opening another)",
                                    p.number
                                ));
                                p
                            }
                            _ => {
                                return Err(Trouble::Fail(format!(
                                    "opening the pull request: {e}; and no open pull request \
                                     of {branch} into {base} in {repo} was found"
                                )));
                            }
                        }
                    }
                    Err(e) => return Err(trouble("opening the pull request", e)),
                }
            }
        };
        if let Some(f) = s.forge.as_mut() {
            forge.note_pull(&f.repo, pr.number, id);
            f.pr = Some(PullLink {
                number: pr.number,
                title: pr.title.clone(),
                url: pr.html_url.clone(),
                merged: pr.merged,
                merge_sha: pr.merge_commit_sha.clone(),
                commits: 0,
            });
            f.feedback.clear();
        }
        if s.status != TaskStatus::ReviewPending {
            s.set_status(TaskStatus::ReviewPending)
                .map_err(Trouble::Retry)?;
        }
        s.phase = Phase::Review;
        s.last_activity_at = Some(ctx.now());
        Ok(Outcome::next(s).note(notes.join("; ")))
    }

    /// Whether `branch` on the forge holds the commit verified for the task (its receipt's
    /// head): a branch the forge does not have is not.
    async fn on_forge_at_receipt(
        &self,
        forge: &Forge,
        repo: &RepoRef,
        base: &str,
        branch: &str,
        s: &TaskState,
    ) -> Result<bool, Trouble> {
        let Some(head) = pushed_head(s) else {
            return Ok(false);
        };
        match forge.client.compare(repo, base, branch).await {
            Ok(c) => Ok(c.commits.iter().any(|c| c.sha == head)),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(trouble(
                &format!("looking for {branch} on the forge (its host was removed)"),
                e,
            )),
        }
    }

    /// The open pull request of `branch` into `base`: asked by base and head first; when the
    /// forge answers a closed one (it picks any of several), read from the open ones.
    async fn open_pull(
        &self,
        forge: &Forge,
        repo: &RepoRef,
        base: &str,
        branch: &str,
    ) -> Result<Option<PullRequest>, Trouble> {
        let look = |e| trouble("looking up the pull request again after a 409", e);
        match forge.client.pull_by_base_head(repo, base, branch).await {
            Ok(Some(p)) if p.state == "open" => Ok(Some(p)),
            Ok(_) => forge
                .client
                .open_pull_by_base_head(repo, base, branch)
                .await
                .map_err(look),
            Err(e) => Err(look(e)),
        }
    }

    /// Review (`review_pending`): what the forge says about the pull request now.
    pub(super) async fn review(
        &self,
        ctx: &mut StepCtx<TaskSignal>,
        s: TaskState,
    ) -> StepResult<TaskState> {
        let tried = self.try_review(ctx, s.clone()).await;
        self.settle(ctx, s, tried)
    }

    async fn try_review(
        &self,
        ctx: &mut StepCtx<TaskSignal>,
        mut s: TaskState,
    ) -> Result<Outcome<TaskState>, Trouble> {
        let (forge, repo) = self.forge_parts(&s).map_err(Trouble::Retry)?;
        let number = s
            .forge
            .as_ref()
            .and_then(|f| f.pr.as_ref())
            .map(|p| p.number)
            .ok_or_else(|| Trouble::Retry(StepError::msg("no pull request to review")))?;
        let pr = forge
            .client
            .pull(&repo, number)
            .await
            .map_err(|e| trouble(&format!("reading pull request #{number}"), e))?;
        if pr.merged {
            return self.merged(ctx, s, forge, &repo, pr).await;
        }
        if pr.state == "closed" {
            let reason = format!("pull request #{number} was closed without merging");
            return Ok(cancelled(s, reason));
        }
        let reviews = forge
            .client
            .reviews(&repo, number)
            .await
            .map_err(|e| trouble(&format!("reading the reviews of #{number}"), e))?;
        let mut notes = Vec::new();
        let mut access = HashMap::new();
        for r in reviews {
            let f = s.forge.as_mut().expect("forge_parts checked it"); // a forge task
            if f.seen_reviews.contains(&r.id) || r.state == "PENDING" || r.dismissed {
                continue;
            }
            f.seen_reviews.push(r.id);
            if r.state != "REQUEST_CHANGES" && r.state != "COMMENT" {
                continue;
            }
            let who = r.user.as_ref().map(|u| u.login.clone()).unwrap_or_default();
            if let Some(why) = untrusted(forge, &repo, &r, &who, &mut access).await? {
                notes.push(format!(
                    "ignored review {} {} on #{number}: {why}",
                    r.state.to_lowercase(),
                    if who.is_empty() {
                        "without an author".to_string()
                    } else {
                        format!("by {who}")
                    }
                ));
                continue;
            }
            let mut items = Vec::new();
            if !r.body.trim().is_empty() {
                let place = format!("review by {who}");
                items.push((
                    fingerprint(&place, &r.body),
                    format!("{place}: {}", r.body.trim()),
                ));
            }
            if r.comments_count > 0 {
                let comments = forge
                    .client
                    .review_comments(&repo, number, r.id)
                    .await
                    .map_err(|e| trouble("reading review comments", e))?;
                for c in comments {
                    let line = c.position.or(c.original_position).unwrap_or(0);
                    let place = format!("{}:{line}", c.path);
                    items.push((
                        fingerprint(&place, &c.body),
                        format!("{place} ({who}): {}", c.body.trim()),
                    ));
                }
            }
            let f = s.forge.as_mut().expect("forge_parts checked it"); // a forge task
            let before = f.pending_feedback.len();
            for (fp, text) in items {
                if !f.fingerprints.contains(&fp) {
                    f.fingerprints.push(fp);
                    f.pending_feedback.push(text);
                }
            }
            if f.fingerprints.len() > MAX_FINGERPRINTS {
                let extra = f.fingerprints.len() - MAX_FINGERPRINTS;
                f.fingerprints.drain(..extra);
            }
            let added = f.pending_feedback.len() - before;
            notes.push(format!(
                "review {} by {who} on #{number}: {added} new comment(s)",
                r.state.to_lowercase()
            ));
        }
        let now = ctx.now();
        let debounce = forge.config.review_debounce;
        let poll = forge.config.reconcile_interval;
        let f = s.forge.as_mut().expect("forge_parts checked it"); // a forge task
        if f.pending_feedback.is_empty() {
            let outcome = Outcome::wait_until(s, now.after(poll));
            return Ok(if notes.is_empty() {
                outcome
            } else {
                outcome.note(notes.join("; "))
            });
        }
        let round_at = *f.round_at.get_or_insert(now.after(debounce));
        if now < round_at {
            return Ok(Outcome::wait_until(s, round_at).note(if notes.is_empty() {
                "gathering review feedback".to_string()
            } else {
                notes.join("; ")
            }));
        }
        s.review_count += 1;
        let max = self.rt.config().dispatch.max_reviews;
        if s.review_count > max {
            f.escalated = true;
            let reason = format!(
                "review round {} would exceed dispatch.max_reviews ({max}): a person must take \
                 over pull request #{number} (label `{}`)",
                s.review_count, forge.config.escalation_label
            );
            return Ok(self.give_up(ctx, s, reason));
        }
        f.feedback = std::mem::take(&mut f.pending_feedback);
        f.round_at = None;
        let count = f.feedback.len();
        s.attempt = 1;
        s.failure = None;
        s.phase = Phase::Route;
        notes.push(format!(
            "review round {} of {max}: {count} piece(s) of feedback for the agent",
            s.review_count
        ));
        Ok(Outcome::next(s).note(notes.join("; ")))
    }

    /// The pull request was merged: verify it on the forge (no trust), then complete.
    async fn merged(
        &self,
        ctx: &mut StepCtx<TaskSignal>,
        mut s: TaskState,
        forge: &Forge,
        repo: &RepoRef,
        pr: PullRequest,
    ) -> Result<Outcome<TaskState>, Trouble> {
        let id = ctx.instance();
        let branch = self.rt.names().map_err(Trouble::Retry)?.branch(id);
        let moved = format!("refs/pull/{}/head", pr.number);
        if pr.head.ref_name != branch && pr.head.ref_name != moved {
            return Err(Trouble::Fail(format!(
                "receipt refused: pull request #{} has head {}, not {branch}",
                pr.number, pr.head.ref_name
            )));
        }
        if !pr.head_in_base_repo() {
            return Err(Trouble::Fail(format!(
                "receipt refused: the head of pull request #{} is not in {repo} (repository id {} \
                 instead of {}): a fork's branch is not the task's work",
                pr.number, pr.head.repo_id, pr.base.repo_id
            )));
        }
        let commits = forge
            .client
            .pull_commits(repo, pr.number)
            .await
            .map_err(|e| trouble("reading the merged pull request's commits", e))?;
        if commits.is_empty() {
            return Err(Trouble::Fail(format!(
                "receipt refused: pull request #{} was merged without any commit",
                pr.number
            )));
        }
        // The merged head is the pushed commit, or one a person with write access added to on
        // the task's branch: either way the pushed commit is among the merged ones.
        if let Some(pushed) = pushed_head(&s)
            && pr.head.sha != pushed
            && !commits.iter().any(|c| c.sha == pushed)
        {
            return Err(Trouble::Fail(format!(
                "receipt refused: pull request #{} was merged at {} without the commit pushed \
                 for this task ({})",
                pr.number,
                short(&pr.head.sha),
                short(pushed)
            )));
        }
        if let Some(link) = s.forge.as_mut().and_then(|f| f.pr.as_mut()) {
            link.merged = true;
            link.merge_sha = pr.merge_commit_sha.clone();
            link.commits = u32::try_from(commits.len()).unwrap_or(u32::MAX);
        }
        s.set_status(TaskStatus::Completed)
            .map_err(Trouble::Retry)?;
        s.failure = None;
        s.phase = Phase::Settled;
        s.last_activity_at = Some(ctx.now());
        let note = format!(
            "receipt verified on the forge: pull request #{} merged{} with {} commit(s) from {branch}",
            pr.number,
            pr.merge_commit_sha
                .as_deref()
                .map(|m| format!(" as {}", &m[..m.len().min(7)]))
                .unwrap_or_default(),
            commits.len()
        );
        Ok(Outcome::complete(s).note(note))
    }
}

/// Whether a pull request the forge found for `branch` is the task's: one at the commit verified
/// and pushed for this task. A closed one at another commit is an older one of a branch of the
/// same name (`None`, noted); an open one at another commit means someone else moved the branch
/// (the task fails).
fn judge(
    found: Option<PullRequest>,
    pushed: Option<&str>,
    branch: &str,
    notes: &mut Vec<String>,
) -> Result<Option<PullRequest>, Trouble> {
    let Some(p) = found else {
        return Ok(None);
    };
    let Some(pushed) = pushed.filter(|h| *h != p.head.sha) else {
        return Ok(Some(p));
    };
    if p.state != "open" {
        notes.push(format!(
            "pull request #{} of {branch} ({}) is at {}, not at the pushed {}: not this task's",
            p.number,
            p.state,
            short(&p.head.sha),
            short(pushed)
        ));
        return Ok(None);
    }
    Err(Trouble::Fail(format!(
        "pull request #{} of {branch} is at {}, not at the commit pushed for this task ({}): \
         someone else moved the branch",
        p.number,
        short(&p.head.sha),
        short(pushed)
    )))
}

/// The commit verified (and then pushed) for the task's latest round: its receipt's head.
fn pushed_head(s: &TaskState) -> Option<&str> {
    s.receipt
        .as_ref()
        .map(|r| r.work.head_sha.as_str())
        .filter(|h| !h.is_empty())
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}

/// Why a review is not taken as feedback, or `None` when it is: an `official` review, one by a
/// user on `forgejo.trusted_reviewers`, or one by a user with write access to the repository
/// (asked of the forge once per user and step; `access` keeps the answers). Anything the
/// forge does not confirm is refused; only a transient failure retries the step.
async fn untrusted(
    forge: &Forge,
    repo: &RepoRef,
    r: &PullReview,
    who: &str,
    access: &mut HashMap<String, Option<String>>,
) -> Result<Option<String>, Trouble> {
    if r.official {
        return Ok(None);
    }
    if who.trim().is_empty() {
        return Ok(Some("a review without an author is not feedback".into()));
    }
    let allowed = &forge.config.trusted_reviewers;
    if allowed.iter().any(|t| t.trim().eq_ignore_ascii_case(who)) {
        return Ok(None);
    }
    if let Some(known) = access.get(who) {
        return Ok(known.clone());
    }
    let why = match forge.client.permission(repo, who).await {
        Ok(p) if p.can_write() => None,
        Ok(p) => Some(format!(
            "{who} has {} access to {repo}, not write access (see forgejo.trusted_reviewers)",
            if p.permission.trim().is_empty() {
                "no"
            } else {
                p.permission.trim()
            }
        )),
        Err(e) if e.is_transient() => {
            return Err(trouble(&format!("asking the forge for {who}'s access"), e));
        }
        Err(e) if e.status() == Some(403) => Some(format!(
            "the forge would not say whether {who} has write access to {repo} (HTTP 403: the \
             token's user must administer the repository)"
        )),
        Err(e) if e.is_not_found() => Some(format!("{who} has no write access to {repo} (404)")),
        Err(e) => Some(format!("{who}'s write access to {repo} is unproven: {e}")),
    };
    access.insert(who.to_string(), why.clone());
    Ok(why)
}

/// The task ends `cancelled` by its own step (see `Outcome::cancel`).
pub(super) fn cancelled(mut s: TaskState, reason: String) -> Outcome<TaskState> {
    s.status = TaskStatus::Cancelled;
    Outcome::cancel(s, reason)
}

/// An effect, or the step error that says why it could not be encoded.
pub(super) fn effect<T: Serialize>(kind: &str, payload: &T) -> Result<Effect, StepError> {
    Effect::new(kind, payload).map_err(|e| StepError::msg(e.to_string()))
}
