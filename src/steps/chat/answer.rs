//! What the fleet answers to a chat [`Command`]: the same service functions as the HTTP API
//! ([`Tasks`], [`hosts::reports`], the pull [`Board`], the engine's phase and key indexes),
//! told in a few lines of plain text and of HTML in which every value that comes from a task,
//! a host or a person is escaped. Changes (retry, assign, cancel) carry the bot's idempotency
//! key, so a command delivered twice is done once.

use crate::steps::agent_task::{AgentTask, Run, RunOutcome};
use crate::steps::dispatch::Health;
use crate::steps::hosts;
use crate::steps::pull::{Board, Liveness};
use crate::steps::pull_mode::Pin;
use crate::steps::review::issue_key;
use crate::steps::runtime::Runtime;
use crate::steps::task::TaskStatus;
use crate::steps::tasks::{TaskError, TaskRecord, Tasks};
use crate::workflow::{Engine, EngineError, Event, EventKind, InstanceId, Timestamp, Workflow};

use super::command::{COMMANDS, Command, TaskRef, Usage};

/// Most tasks counted per status by default; beyond it the count reads `1000+`.
pub const COUNT_CAP: usize = 1000;
/// Most hosts, pull agents and running tasks listed by `status` (then "… and N more").
const LIST_MAX: usize = 6;
/// Most runs and events shown by `task`.
const RUNS_MAX: usize = 3;
const EVENTS_MAX: usize = 5;
/// Longest title, failure or event text shown, in bytes.
const TEXT_MAX: usize = 240;

/// An answer to show in the room: the same lines as plain text and as HTML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub plain: String,
    pub html: String,
}

/// What the answers read and act through.
#[derive(Clone, Copy)]
pub struct FleetView<'a> {
    pub engine: &'a Engine,
    /// The hosts and the pull board ([`Runtime::board`]); `None`: the answers say they are
    /// not known.
    pub runtime: Option<&'a Runtime>,
    /// Who sent the command (named in a cancel's reason).
    pub sender: Option<&'a str>,
    /// Most tasks counted per status ([`COUNT_CAP`]).
    pub count_cap: usize,
}

impl<'a> FleetView<'a> {
    pub fn new(engine: &'a Engine, runtime: Option<&'a Runtime>) -> Self {
        FleetView {
            engine,
            runtime,
            sender: None,
            count_cap: COUNT_CAP,
        }
    }

    pub fn sent_by(self, sender: &'a str) -> Self {
        FleetView {
            sender: Some(sender),
            ..self
        }
    }
}

/// The answer to `cmd`. `key`: an idempotency key of the message (from its event id), the
/// same each time the message is delivered.
pub async fn answer(cmd: &Command, fleet: &FleetView<'_>, key: &str) -> Answer {
    let result = match cmd {
        Command::Help => Ok(help()),
        Command::Status => Ok(status(fleet)),
        Command::Task(task) => show(fleet, task),
        Command::Retry(task) => retry(fleet, task, key).await,
        Command::Assign { target, task } => assign(fleet, target, task, key).await,
        Command::Cancel(task) => cancel(fleet, task, key).await,
    };
    result.unwrap_or_else(|line| one_line(&line))
}

/// The answer to a message that is not a command: its usage hint.
pub fn usage(u: &Usage) -> Answer {
    one_line(&u.hint)
}

fn one_line(text: &str) -> Answer {
    let mut out = Lines::default();
    out.text(text);
    out.finish()
}

fn help() -> Answer {
    let mut out = Lines::default();
    out.bold("agent-fleet commands").end();
    for (_, syntax, what) in COMMANDS {
        out.text("• ").code(&format!("!fleet {syntax}"));
        out.text(&format!(" — {what}")).end();
    }
    out.finish()
}

// ---------------------------------------------------------------------------------------------
// status

fn status(fleet: &FleetView<'_>) -> Answer {
    let now = Timestamp::now();
    let mut out = Lines::default();
    out.bold("Fleet status").end();
    match fleet.runtime {
        Some(rt) => {
            host_lines(&mut out, fleet.engine, rt, now);
            agent_lines(&mut out, rt.board(), now);
        }
        None => {
            out.text("Hosts and pull agents: not known to this daemon")
                .end();
        }
    }
    match counts(fleet) {
        Ok(counts) => {
            count_line(&mut out, &counts, fleet.count_cap);
            active_lines(&mut out, fleet.engine, &counts, now);
        }
        Err(e) => {
            out.text(&format!("Tasks: cannot be read ({})", cut(&e.to_string())))
                .end();
        }
    }
    out.finish()
}

fn host_lines(out: &mut Lines, engine: &Engine, rt: &Runtime, now: Timestamp) {
    let reports = match hosts::reports(engine, rt) {
        Ok(r) => r,
        Err(e) => {
            out.text(&format!("Hosts: cannot be read ({})", cut(&e.to_string())))
                .end();
            return;
        }
    };
    if reports.is_empty() {
        out.text("Hosts: none").end();
        return;
    }
    out.bold(&format!("Hosts ({})", reports.len())).end();
    for r in reports.iter().take(LIST_MAX) {
        let load = &r.load;
        out.text("• ").bold(&load.id);
        let health = match &load.health {
            Health::Offline { reason } => format!("offline ({})", cut(reason)),
            h => h.as_str().to_string(),
        };
        let mut line = format!(
            ": {health}, {}/{} running",
            load.running, load.max_concurrent
        );
        let kinds: Vec<String> = r
            .config
            .agents
            .iter()
            .map(|kind| match load.paused.get(kind) {
                Some(p) => format!(
                    "{kind} paused for {}",
                    span(p.until.0.saturating_sub(now.0))
                ),
                None if load.missing_agents.contains(kind) => format!("{kind} ✗"),
                None if load.health == Health::Unchecked => format!("{kind} ?"),
                None => format!("{kind} ✓"),
            })
            .collect();
        if !kinds.is_empty() {
            line.push_str(&format!(" — {}", kinds.join(", ")));
        }
        out.text(&line).end();
    }
    more(out, reports.len(), LIST_MAX.min(reports.len()));
}

fn agent_lines(out: &mut Lines, board: &Board, now: Timestamp) {
    let agents: Vec<_> = board
        .agents()
        .into_iter()
        .filter(|a| a.liveness(now) != Liveness::Deregistered)
        .collect();
    if agents.is_empty() {
        out.text("Pull agents: none").end();
        return;
    }
    let online = agents
        .iter()
        .filter(|a| a.liveness(now) == Liveness::Online)
        .count();
    out.bold(&format!("Pull agents ({}, {online} online)", agents.len()))
        .end();
    for a in agents.iter().take(LIST_MAX) {
        out.text("• ").bold(&a.name);
        out.text(&format!(
            ": {}, last heartbeat {}, holds {}/{} ({})",
            a.liveness(now).as_str(),
            ago(now, a.last_heartbeat),
            board.held(a.id).len(),
            a.max_concurrent,
            a.kinds.join(", ")
        ))
        .end();
    }
    more(out, agents.len(), LIST_MAX.min(agents.len()));
}

/// How many tasks each status has, through the phase index: at most `count_cap + 1` rows read
/// per status (no task state decoded).
fn counts(fleet: &FleetView<'_>) -> Result<Vec<(TaskStatus, usize)>, EngineError> {
    TaskStatus::ALL
        .iter()
        .map(|s| {
            let page =
                fleet
                    .engine
                    .list_phase(AgentTask::NAME, s.as_str(), 0, fleet.count_cap + 1)?;
            Ok((*s, page.len()))
        })
        .collect()
}

fn count_line(out: &mut Lines, counts: &[(TaskStatus, usize)], cap: usize) {
    let parts: Vec<String> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| match *n > cap {
            true => format!("{s} {cap}+"),
            false => format!("{s} {n}"),
        })
        .collect();
    out.bold("Tasks").text(": ");
    match parts.is_empty() {
        true => out.text("none"),
        false => out.text(&parts.join(" · ")),
    };
    out.end();
}

/// The tasks being worked on (`assigned`, `running`): where, how old, last heard of.
fn active_lines(out: &mut Lines, engine: &Engine, counts: &[(TaskStatus, usize)], now: Timestamp) {
    let active = [TaskStatus::Running, TaskStatus::Assigned];
    let total: usize = counts
        .iter()
        .filter(|(s, _)| active.contains(s))
        .map(|(_, n)| n)
        .sum();
    if total == 0 {
        return;
    }
    let tasks = Tasks::new(engine);
    let mut shown = Vec::new();
    for s in active {
        let left = LIST_MAX.saturating_sub(shown.len());
        if left == 0 {
            break;
        }
        match tasks.list(Some(s), None, left) {
            Ok((page, _)) => shown.extend(page),
            Err(e) => {
                out.text(&format!(
                    "Active tasks: cannot be read ({})",
                    cut(&e.to_string())
                ))
                .end();
                return;
            }
        }
    }
    out.bold(&format!("Active ({total})")).end();
    for t in &shown {
        let s = &t.state;
        out.text("• ").bold(&format!("task {}", t.id)).text(": ");
        out.text(&cut(&s.spec.title));
        let mut line = format!(" — {}", t.status());
        match (&s.assigned_host, &s.assigned_agent) {
            (Some(h), _) => line.push_str(&format!(" on host {h}")),
            (None, Some(a)) => line.push_str(&format!(" with agent {a}")),
            (None, None) => {}
        }
        line.push_str(&format!(
            " ({}), {} old",
            s.spec.agent,
            span(now.0.saturating_sub(s.created_at.0))
        ));
        if let Some(at) = s.last_activity_at {
            line.push_str(&format!(", active {}", ago(now, at)));
        }
        out.text(&line).end();
    }
    more(out, total, shown.len());
}

/// "… and N more" when fewer than `total` were shown.
fn more(out: &mut Lines, total: usize, shown: usize) {
    if total > shown {
        out.text(&format!("… and {} more", total - shown)).end();
    }
}

// ---------------------------------------------------------------------------------------------
// task

fn show(fleet: &FleetView<'_>, task: &TaskRef) -> Result<Answer, String> {
    let id = resolve(fleet.engine, task, false)?;
    let t = Tasks::new(fleet.engine)
        .get(id, true)
        .map_err(|e| error_line(&e))?;
    let now = Timestamp::now();
    let s = &t.state;
    let mut out = Lines::default();
    out.bold(&format!("Task {id}"))
        .text(": ")
        .text(&cut(&s.spec.title))
        .end();
    let mut facts = vec![
        t.status().to_string(),
        format!("attempt {}", s.attempt),
        s.spec.agent.clone(),
    ];
    if let Some(h) = &s.assigned_host {
        facts.push(format!("host {h}"));
    }
    if let Some(a) = &s.assigned_agent {
        facts.push(format!("agent {a}"));
    }
    if let Some(f) = &s.forge {
        facts.push(format!("issue {}#{}", f.repo, f.issue));
    }
    facts.push(format!(
        "{} old",
        span(now.0.saturating_sub(s.created_at.0))
    ));
    out.text(&facts.join(" · ")).end();
    if let Some(why) = t.failure() {
        out.bold("Failure").text(": ").text(&cut(&why)).end();
    }
    run_lines(&mut out, &t, now);
    if let Some(pr) = s.forge.as_ref().and_then(|f| f.pr.as_ref()) {
        out.bold("Pull request").text(": ");
        out.link(&format!("#{}", pr.number), &pr.url);
        out.text(&format!(
            " {}{}",
            cut(&pr.title),
            if pr.merged { " (merged)" } else { "" }
        ));
        out.end();
    }
    receipt_line(&mut out, &t);
    let cost: f64 = s
        .runs
        .iter()
        .filter_map(|r| r.report.as_ref()?.cost_usd)
        .sum();
    if cost > 0.0 {
        out.bold("Cost").text(&format!(": ${cost:.2}")).end();
    }
    event_lines(&mut out, t.history.as_deref().unwrap_or_default(), now);
    Ok(out.finish())
}

fn run_lines(out: &mut Lines, t: &TaskRecord, now: Timestamp) {
    let runs = &t.state.runs;
    if runs.is_empty() {
        return;
    }
    out.bold(&format!("Runs ({})", runs.len())).end();
    let skip = runs.len().saturating_sub(RUNS_MAX);
    for (n, run) in runs.iter().enumerate().skip(skip) {
        out.text(&format!("• run {} {}", n + 1, run_text(run, t, now)))
            .end();
    }
}

fn run_text(run: &Run, t: &TaskRecord, now: Timestamp) -> String {
    let outcome = match run.outcome {
        // A cancel stops the run without a step to record it.
        RunOutcome::Running if t.status() == TaskStatus::Cancelled => "cancelled",
        o => o.as_str(),
    };
    let mut text = format!("on {} ({}): {outcome}", run.host, run.agent);
    if let Some(code) = run.exit_code {
        text.push_str(&format!(", exit {code}"));
    }
    let end = run.ended_at.unwrap_or(now);
    text.push_str(&format!(
        ", {}",
        span(end.0.saturating_sub(run.started_at.0))
    ));
    if let Some(cost) = run.report.as_ref().and_then(|r| r.cost_usd) {
        text.push_str(&format!(", ${cost:.2}"));
    }
    text
}

fn receipt_line(out: &mut Lines, t: &TaskRecord) {
    let s = &t.state;
    if let Some(r) = &s.receipt {
        out.bold("Receipt").text(&format!(
            ": {} commit(s), {} file(s) on {}",
            r.work.commits.len(),
            r.work.files_changed.len(),
            r.branch
        ));
        if let Some(first) = r.summary.lines().find(|l| !l.trim().is_empty()) {
            out.text(&format!(" — {}", cut(first.trim())));
        }
        out.end();
    } else if let Some(a) = &s.agent_report {
        let checked = if a.verified {
            "verified"
        } else {
            "not verified"
        };
        out.bold("Agent report").text(&format!(
            ": from {}, {checked}: {}",
            a.agent,
            cut(&a.verification)
        ));
        out.end();
    }
}

/// The last few events that tell the task's story: its steps' notes, errors, cancel, end.
fn event_lines(out: &mut Lines, history: &[(u64, Event)], now: Timestamp) {
    let story: Vec<(Timestamp, String)> = history
        .iter()
        .filter_map(|(_, e)| story(&e.kind).map(|text| (e.at, text)))
        .collect();
    if story.is_empty() {
        return;
    }
    out.bold("Last events").end();
    let skip = story.len().saturating_sub(EVENTS_MAX);
    for (at, text) in story.iter().skip(skip) {
        out.text(&format!("• {}: {}", ago(now, *at), cut(text)))
            .end();
    }
}

fn story(kind: &EventKind) -> Option<String> {
    Some(match kind {
        EventKind::Step {
            note: Some(note), ..
        } => note.clone(),
        EventKind::StepError { error, .. } => format!("error: {error}"),
        EventKind::CancelRequested { reason } => format!("cancel requested: {reason}"),
        EventKind::EffectAbandoned { error, .. } => format!("gave up on an effect: {error}"),
        EventKind::Completed => "completed".into(),
        EventKind::Failed { reason } => format!("failed: {reason}"),
        EventKind::Cancelled => "cancelled".into(),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// retry, assign, cancel

async fn retry(fleet: &FleetView<'_>, task: &TaskRef, key: &str) -> Result<Answer, String> {
    let id = resolve(fleet.engine, task, false)?;
    let key = format!("chat/retry/{key}");
    let tasks = Tasks::new(fleet.engine);
    if seen(fleet.engine.signal_key_seen(id, &key))? {
        return Ok(already(&tasks, id, "retry"));
    }
    tasks
        .retry(id, &key, false)
        .await
        .map_err(|e| error_line(&e))?;
    Ok(one_line(&format!(
        "Task {id} goes back in the queue (retry recorded; `!fleet task {id}` follows it)"
    )))
}

async fn assign(
    fleet: &FleetView<'_>,
    target: &str,
    task: &TaskRef,
    key: &str,
) -> Result<Answer, String> {
    let rt = fleet
        .runtime
        .ok_or("this daemon has no hosts or pull agents to assign to")?;
    let (pin, what) = if rt.config().host(target).is_some() {
        (Pin::Host(target.to_string()), format!("host {target}"))
    } else if let Some(agent) = rt.board().agent_named(target) {
        (Pin::Agent(agent.id), format!("pull agent {target}"))
    } else {
        return Err(format!("no host or pull agent named `{target}`"));
    };
    let id = resolve(fleet.engine, task, false)?;
    let key = format!("chat/assign/{key}");
    let tasks = Tasks::new(fleet.engine);
    let repeated = seen(fleet.engine.signal_key_seen(id, &key))?;
    // Sent again with the same key, the request answers what its first delivery did.
    let t = tasks
        .assign(id, pin, &key)
        .await
        .map_err(|e| error_line(&e))?;
    let again = if repeated {
        " (this command was already handled)"
    } else {
        ""
    };
    Ok(one_line(&format!(
        "Task {id} assigned to {what}; it is {}{again}",
        t.status()
    )))
}

async fn cancel(fleet: &FleetView<'_>, task: &TaskRef, key: &str) -> Result<Answer, String> {
    let id = resolve(fleet.engine, task, true)?;
    let once = format!("chat/cancel/{key}");
    let tasks = Tasks::new(fleet.engine);
    if seen(fleet.engine.once_seen(&once))? {
        return Ok(already(&tasks, id, "cancel"));
    }
    let reason = match fleet.sender {
        Some(who) => format!("cancelled from the chat by {who}"),
        None => "cancelled from the chat".to_string(),
    };
    tasks
        .cancel(id, &reason)
        .await
        .map_err(|e| error_line(&e))?;
    // Recorded after the cancel: a crash in between only makes a redelivery ask again, and a
    // second cancel of the same task changes nothing.
    if let Err(e) = fleet.engine.record_once(&once).await {
        tracing::warn!(task = id, error = %e, "the chat cancel's key was not recorded");
    }
    Ok(one_line(&format!("Task {id} is being cancelled")))
}

/// The answer to a change delivered again: what the task is now.
fn already(tasks: &Tasks<'_>, id: InstanceId, what: &str) -> Answer {
    let now = match tasks.get(id, false) {
        Ok(t) => format!("; it is {}", t.status()),
        Err(_) => String::new(),
    };
    one_line(&format!("Task {id}: this {what} was already handled{now}"))
}

fn seen(r: Result<bool, EngineError>) -> Result<bool, String> {
    r.map_err(|e| error_line(&TaskError::Engine(e)))
}

/// The task `task` names: an id as is; an issue's newest task, or with `live_only` its only
/// task that has not ended.
fn resolve(engine: &Engine, task: &TaskRef, live_only: bool) -> Result<InstanceId, String> {
    let (repo, number) = match task {
        TaskRef::Id(id) => return Ok(*id),
        TaskRef::Issue {
            owner,
            repo,
            number,
        } => (format!("{owner}/{repo}"), *number),
    };
    let ids = engine
        .keyed(AgentTask::NAME, &issue_key(&repo, number))
        .map_err(|e| error_line(&TaskError::Engine(e)))?;
    let Some(newest) = ids.last().copied() else {
        return Err(format!("no task for {task}"));
    };
    if !live_only {
        return Ok(newest);
    }
    let live: Vec<InstanceId> = ids
        .iter()
        .copied()
        .filter(|id| engine.info(*id).is_ok_and(|i| !i.status.is_terminal()))
        .collect();
    match live.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "{task} has no live task (its tasks: {})",
            list(&ids)
        )),
        many => Err(format!(
            "{task} has {} live tasks ({}): name one by its id",
            many.len(),
            list(many)
        )),
    }
}

fn list(ids: &[InstanceId]) -> String {
    let shown: Vec<String> = ids.iter().take(10).map(u64::to_string).collect();
    match ids.len() > 10 {
        true => format!("{}, …", shown.join(", ")),
        false => shown.join(", "),
    }
}

/// One line for a refused or failed request.
fn error_line(e: &TaskError) -> String {
    match e {
        TaskError::NotFound(id) => format!("No task {id}"),
        TaskError::Pending(id) => format!(
            "Task {id} has the request but has not answered yet; `!fleet task {id}` shows what it did"
        ),
        TaskError::Engine(EngineError::ShuttingDown) => {
            "The daemon is stopping; try again once it is back".into()
        }
        TaskError::Engine(e) if e.is_store_failed() => {
            "The daemon's store failed: it takes no more work until it is restarted".into()
        }
        TaskError::Engine(e) => format!("The fleet could not answer: {}", cut(&e.to_string())),
        TaskError::Conflict(m) | TaskError::Refused { message: m, .. } => cut(m),
    }
}

// ---------------------------------------------------------------------------------------------
// text

/// `text` on one line (whitespace collapsed), at most [`TEXT_MAX`] bytes: the parsers' rule
/// for failure reasons and notes.
fn cut(text: &str) -> String {
    crate::steps::parse::text::one_line(text, TEXT_MAX)
}

/// `12s`, `5m`, `3h`, `2d`.
fn span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn ago(now: Timestamp, then: Timestamp) -> String {
    format!("{} ago", span(now.0.saturating_sub(then.0)))
}

/// An answer being written: each piece goes to the plain text as is and to the HTML escaped
/// (markup comes only from the tags written here).
#[derive(Default)]
struct Lines {
    done: Vec<(String, String)>,
    plain: String,
    html: String,
}

impl Lines {
    fn text(&mut self, s: &str) -> &mut Self {
        self.plain.push_str(s);
        self.html.push_str(&escape(s));
        self
    }

    fn bold(&mut self, s: &str) -> &mut Self {
        self.plain.push_str(s);
        self.html.push_str(&format!("<b>{}</b>", escape(s)));
        self
    }

    fn code(&mut self, s: &str) -> &mut Self {
        self.plain.push_str(s);
        self.html.push_str(&format!("<code>{}</code>", escape(s)));
        self
    }

    /// `text` linked to `url` when it is an http(s) address; `text` alone otherwise.
    fn link(&mut self, text: &str, url: &str) -> &mut Self {
        let url = url.trim();
        let web = (url.starts_with("https://") || url.starts_with("http://"))
            && !url.chars().any(|c| c.is_whitespace() || c.is_control());
        if !web {
            return self.text(text);
        }
        self.plain.push_str(&format!("{text} {url}"));
        self.html
            .push_str(&format!("<a href=\"{}\">{}</a>", escape(url), escape(text)));
        self
    }

    /// Ends the current line.
    fn end(&mut self) -> &mut Self {
        let line = (
            std::mem::take(&mut self.plain),
            std::mem::take(&mut self.html),
        );
        self.done.push(line);
        self
    }

    fn finish(mut self) -> Answer {
        if !self.plain.is_empty() {
            self.end();
        }
        let (plain, html): (Vec<String>, Vec<String>) = self.done.into_iter().unzip();
        Answer {
            plain: plain.join("\n"),
            html: html.join("<br>"),
        }
    }
}

/// `s` safe in HTML text and in a double-quoted attribute.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::config::Config;
    use crate::steps::agent_task::TaskState;
    use crate::steps::agents::{self, Profile};
    use crate::steps::chat::command;
    use crate::steps::pull::new_token;
    use crate::steps::pull_mode::{AgentProgress, FromAgent};
    use crate::steps::review::{ForgeTask, PullLink};
    use crate::steps::task::{Priority, Source, TaskSpec};
    use crate::steps::tasks::fresh_key;

    /// Longest a test waits for a task to get somewhere.
    const T: Duration = Duration::from_secs(10);

    /// A real engine with every workflow registered, one host (never checked, offering only
    /// the `local` kind) and tasks of the `remote` kind, which only pull agents take.
    struct Rig {
        engine: Engine,
        rt: Arc<Runtime>,
        _dir: tempfile::TempDir,
    }

    fn spec(title: &str, source: Source) -> TaskSpec {
        TaskSpec {
            source,
            title: title.into(),
            body: String::new(),
            labels: Vec::new(),
            kind: None,
            priority: Priority::Normal,
            agent: "remote".into(),
            capabilities: Vec::new(),
            repo: "/nonexistent/repository".into(),
            base: None,
            file_scope: Vec::new(),
            validation: Vec::new(),
        }
    }

    impl Rig {
        async fn start() -> Rig {
            let dir = tempfile::tempdir().unwrap();
            let text = format!(
                r#"
[storage]
path = "{store}"

[dispatch]
max_retries = 0

[[agents]]
name = "remote"
cli_template = "remote {{prompt_file}}"
output_format = "raw"

[[agents]]
name = "local"
cli_template = "local {{prompt_file}}"
output_format = "raw"

[[hosts]]
host_id = "gpu-1"
hostname = "localhost"
agents = ["local"]
max_concurrent = 2
work_root = "{work}"
"#,
                store = dir.path().join("fleet.redb").display(),
                work = dir.path().join("work").display(),
            );
            let config = Arc::new(Config::from_toml_str(&text).unwrap());
            let rt = Arc::new(Runtime::new(config, dir.path().to_path_buf()).unwrap());
            let builder = Engine::builder(dir.path().join("fleet.redb"));
            let engine = crate::steps::register(builder, &rt).open().await.unwrap();
            crate::steps::recover(&engine, &rt).unwrap();
            Rig {
                engine,
                rt,
                _dir: dir,
            }
        }

        fn view(&self) -> FleetView<'_> {
            FleetView::new(&self.engine, Some(&self.rt))
        }

        async fn submit(&self, title: &str) -> InstanceId {
            let (task, _) = Tasks::new(&self.engine)
                .submit(spec(title, Source::Api), None)
                .await
                .unwrap();
            task.id
        }

        /// A task of issue `repo#issue`, as the forge starts one (its key indexed).
        async fn submit_for_issue(&self, repo: &str, issue: u64) -> InstanceId {
            self.start_with(ForgeTask::new(repo, issue, Vec::new()))
                .await
        }

        async fn start_with(&self, forge: ForgeTask) -> InstanceId {
            let source = Source::Forge {
                repo: forge.repo.clone(),
                issue: forge.issue,
            };
            let mut state = TaskState::new(spec("from an issue", source), Timestamp::now());
            state.forge = Some(forge);
            let ack = self.engine.start_ack::<AgentTask>(&state, None).await;
            ack.unwrap().id
        }

        async fn ask_with(&self, view: &FleetView<'_>, body: &str, key: &str) -> Answer {
            let cmd = command::parse(body).unwrap().unwrap();
            answer(&cmd, view, key).await
        }

        async fn ask(&self, body: &str, key: &str) -> Answer {
            self.ask_with(&self.view(), body, key).await
        }

        async fn agent(&self, name: &str) -> InstanceId {
            let profile = Profile {
                kinds: vec!["remote".into()],
                capabilities: Vec::new(),
                max_concurrent: 4,
            };
            let (_, hash) = new_token();
            let agent = agents::register(&self.engine, &self.rt, name, profile, hash).await;
            agent.unwrap()
        }

        /// Pull agent `name` claims task `id` (once the task is open to agents): its epoch.
        async fn claim(&self, name: &str, id: InstanceId) -> u64 {
            let agent = self.rt.board().agent_named(name).unwrap();
            let tasks = Tasks::new(&self.engine);
            let deadline = tokio::time::Instant::now() + T;
            loop {
                let key = fresh_key("dequeue");
                if let Some(g) = tasks.dequeue(self.rt.board(), &agent, &key).await.unwrap() {
                    assert_eq!(g.task.id, id);
                    return g.epoch;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "task {id} never offered"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        async fn report(&self, name: &str, id: InstanceId, epoch: u64, progress: AgentProgress) {
            let agent = self.rt.board().agent_named(name).unwrap();
            let message = FromAgent::Status {
                progress,
                message: Some("boom".into()),
            };
            Tasks::new(&self.engine)
                .from_agent(id, &agent, epoch, message, &fresh_key("report"))
                .await
                .unwrap();
        }

        /// Task `id` failed: claimed by pull agent `laptop`, which reports a failure (no retry
        /// is left with `max_retries = 0`).
        async fn failed(&self, id: InstanceId) {
            self.agent("laptop").await;
            let epoch = self.claim("laptop", id).await;
            self.report("laptop", id, epoch, AgentProgress::Failed)
                .await;
            self.wait(id, TaskStatus::Failed).await;
        }

        async fn wait(&self, id: InstanceId, want: TaskStatus) {
            let deadline = tokio::time::Instant::now() + T;
            loop {
                let now = Tasks::new(&self.engine).get(id, false).unwrap().status();
                if now == want {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "task {id} is {now}, wanted {want}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        fn signals_with_key(&self, id: InstanceId, key: &str) -> usize {
            let history = self.engine.history(id).unwrap();
            history
                .iter()
                .filter(|(_, e)| matches!(&e.kind, EventKind::SignalReceived { key: k, .. } if k == key))
                .count()
        }
    }

    #[tokio::test]
    async fn help_lists_every_command_on_a_line_of_its_own() {
        let a = help();
        let lines: Vec<&str> = a.plain.lines().collect();
        assert_eq!(lines.len(), 1 + COMMANDS.len(), "{}", a.plain);
        assert!(
            lines[2].starts_with("• !fleet task <id | owner/repo#n> — "),
            "{}",
            a.plain
        );
        assert!(
            a.html
                .contains("<code>!fleet retry &lt;id | owner/repo#n&gt;</code>")
        );
    }

    #[tokio::test]
    async fn status_shows_hosts_pull_agents_and_task_counts() {
        let rig = Rig::start().await;
        rig.submit("one").await;
        rig.submit("two").await;
        rig.agent("laptop").await;
        let a = rig.ask("!fleet status", "$s").await;
        let p = &a.plain;
        assert!(
            p.contains("Hosts (1)\n• gpu-1: unchecked, 0/2 running — local ?"),
            "{p}"
        );
        assert!(p.contains("Pull agents (1, 1 online)"), "{p}");
        assert!(
            p.contains("• laptop: online, last heartbeat 0s ago, holds 0/4 (remote)"),
            "{p}"
        );
        assert!(p.contains("Tasks: created 2"), "{p}");
        assert!(p.lines().count() <= 25, "{p}");
        rig.engine.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn status_counts_tasks_by_status_without_reading_ended_ones_beyond_a_page() {
        let rig = Rig::start().await;
        for n in 0..3 {
            let id = rig.submit(&format!("to cancel {n}")).await;
            Tasks::new(&rig.engine).cancel(id, "test").await.unwrap();
            rig.wait(id, TaskStatus::Cancelled).await;
        }
        rig.submit("open").await;
        let view = FleetView {
            count_cap: 2,
            ..rig.view()
        };
        let a = rig.ask_with(&view, "!fleet status", "$s").await;
        assert!(
            a.plain.contains("Tasks: created 1 · cancelled 2+"),
            "{}",
            a.plain
        );
        rig.engine.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn status_lists_a_running_task_with_its_agent_and_age() {
        let rig = Rig::start().await;
        let id = rig.submit("Write the parser").await;
        rig.agent("laptop").await;
        let epoch = rig.claim("laptop", id).await;
        rig.report("laptop", id, epoch, AgentProgress::Running)
            .await;
        rig.wait(id, TaskStatus::Running).await;
        let a = rig.ask("!fleet status", "$s").await;
        let want = format!(
            "Active (1)\n• task {id}: Write the parser — running with agent laptop (remote), "
        );
        let line = a
            .plain
            .lines()
            .find(|l| l.starts_with(&format!("• task {id}: ")));
        assert!(a.plain.contains(&want), "{}", a.plain);
        let line = line.unwrap();
        assert!(
            line.contains("s old, active ") && line.ends_with("s ago"),
            "{line}"
        );
        assert!(a.plain.contains("holds 1/4"), "{}", a.plain);
        rig.engine.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn status_caps_a_long_list_with_and_n_more() {
        let rig = Rig::start().await;
        for n in 0..LIST_MAX + 2 {
            rig.agent(&format!("agent-{n}")).await;
        }
        let a = rig.ask("!fleet status", "$s").await;
        assert!(a.plain.contains("… and 2 more"), "{}", a.plain);
        assert!(a.plain.lines().count() <= 25, "{}", a.plain);
        rig.engine.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn task_shows_its_status_failure_and_last_events() {
        let rig = Rig::start().await;
        let id = rig.submit("Fix the build").await;
        rig.failed(id).await;
        let a = rig.ask(&format!("!fleet task {id}"), "$t").await;
        let p = &a.plain;
        assert!(
            p.starts_with(&format!(
                "Task {id}: Fix the build\nfailed · attempt 1 · remote"
            )),
            "{p}"
        );
        assert!(
            p.contains("Failure: failed after 1 attempt(s): agent laptop reported failure: boom"),
            "{p}"
        );
        assert!(p.contains("Last events\n• "), "{p}");
        assert!(p.lines().count() <= 25, "{p}");
        rig.engine.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_task_by_issue_reference_is_found_through_the_key_index() {
        let rig = Rig::start().await;
        rig.submit_for_issue("acme/widgets", 7).await;
        let newest = rig.submit_for_issue("acme/widgets", 7).await;
        rig.submit_for_issue("acme/widgets", 8).await;
        let a = rig.ask("!fleet task acme/widgets#7", "$t").await;
        assert!(
            a.plain
                .starts_with(&format!("Task {newest}: from an issue\n")),
            "{}",
            a.plain
        );
        assert!(a.plain.contains("issue acme/widgets#7"), "{}", a.plain);
        let none = rig.ask("!fleet task acme/widgets#9", "$t").await;
        assert_eq!(none.plain, "no task for acme/widgets#9");
        rig.engine.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn an_unknown_task_is_one_clear_line() {
        let rig = Rig::start().await;
        for body in ["!fleet task 99", "!fleet retry 99", "!fleet cancel 99"] {
            let a = rig.ask(body, "$u").await;
            assert_eq!(a.plain, "No task 99", "{body}");
            assert_eq!(a.html, "No task 99", "{body}");
        }
        rig.engine.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn html_escapes_a_title_with_markup() {
        let rig = Rig::start().await;
        let title = r#"<script>alert("x")</script> & <a href='y'>co</a>"#;
        let id = rig.submit(title).await;
        let a = rig.ask(&format!("!fleet task {id}"), "$t").await;
        assert!(a.plain.contains(title), "{}", a.plain);
        assert!(
            a.html.contains(
                "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; \
                 &lt;a href=&#39;y&#39;&gt;co&lt;/a&gt;"
            ),
            "{}",
            a.html
        );
        assert!(
            !a.html.contains("<script") && !a.html.contains("<a "),
            "{}",
            a.html
        );
        rig.engine.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn retry_of_a_failed_task_puts_it_back_and_says_so() {
        let rig = Rig::start().await;
        let id = rig.submit("flaky").await;
        rig.failed(id).await;
        let a = rig.ask(&format!("!fleet retry {id}"), "$r1").await;
        assert_eq!(
            a.plain,
            format!(
                "Task {id} goes back in the queue (retry recorded; `!fleet task {id}` follows it)"
            )
        );
        rig.wait(id, TaskStatus::Created).await;
        rig.engine.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_retry_delivered_twice_is_done_once() {
        let rig = Rig::start().await;
        let id = rig.submit("flaky").await;
        rig.failed(id).await;
        rig.ask(&format!("!fleet retry {id}"), "$r1").await;
        let again = rig.ask(&format!("!fleet retry {id}"), "$r1").await;
        assert!(
            again.plain.starts_with(&format!(
                "Task {id}: this retry was already handled; it is "
            )),
            "{}",
            again.plain
        );
        assert_eq!(rig.signals_with_key(id, "chat/retry/$r1"), 1);
        rig.engine.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn retry_of_a_task_that_has_not_failed_is_refused_in_one_line() {
        let rig = Rig::start().await;
        let id = rig.submit("fine").await;
        let a = rig.ask(&format!("!fleet retry {id}"), "$r").await;
        assert_eq!(
            a.plain,
            format!(
                "task {id} is created: it cannot be retried; only a failed task can be retried"
            )
        );
        rig.engine.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn assign_to_a_pull_agent_pins_the_task_to_it() {
        let rig = Rig::start().await;
        let id = rig.submit("for the laptop").await;
        let agent = rig.agent("laptop").await;
        let a = rig.ask(&format!("!fleet assign laptop {id}"), "$a").await;
        assert!(
            a.plain
                .starts_with(&format!("Task {id} assigned to pull agent laptop; it is ")),
            "{}",
            a.plain
        );
        let state = Tasks::new(&rig.engine).get(id, false).unwrap().state;
        assert_eq!(state.pin, Some(Pin::Agent(agent)));
        let again = rig.ask(&format!("!fleet assign laptop {id}"), "$a").await;
        assert!(
            again.plain.ends_with("(this command was already handled)"),
            "{}",
            again.plain
        );
        assert_eq!(rig.signals_with_key(id, "chat/assign/$a"), 1);
        rig.engine.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn assign_to_an_unknown_target_names_it() {
        let rig = Rig::start().await;
        let id = rig.submit("nowhere").await;
        let a = rig.ask(&format!("!fleet assign nobody {id}"), "$a").await;
        assert_eq!(a.plain, "no host or pull agent named `nobody`");
        rig.engine.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn assign_to_a_host_without_the_tasks_agent_kind_is_refused() {
        let rig = Rig::start().await;
        let id = rig.submit("wrong host").await;
        let a = rig.ask(&format!("!fleet assign gpu-1 {id}"), "$a").await;
        assert_eq!(a.plain, "host `gpu-1` does not offer agent kind `remote`");
        rig.engine.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn cancel_stops_the_task_and_a_redelivery_does_nothing_twice() {
        let rig = Rig::start().await;
        let id = rig.submit("unwanted").await;
        let view = rig.view().sent_by("@alice:example.org");
        let a = rig
            .ask_with(&view, &format!("!fleet cancel {id}"), "$c")
            .await;
        assert_eq!(a.plain, format!("Task {id} is being cancelled"));
        rig.wait(id, TaskStatus::Cancelled).await;
        let failure = Tasks::new(&rig.engine).get(id, false).unwrap().failure();
        assert_eq!(
            failure.as_deref(),
            Some("cancelled: cancelled from the chat by @alice:example.org")
        );
        let again = rig.ask(&format!("!fleet cancel {id}"), "$c").await;
        assert_eq!(
            again.plain,
            format!("Task {id}: this cancel was already handled; it is cancelled")
        );
        rig.engine.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn cancel_by_issue_needs_exactly_one_live_task() {
        let rig = Rig::start().await;
        let first = rig.submit_for_issue("acme/widgets", 3).await;
        let second = rig.submit_for_issue("acme/widgets", 3).await;
        let a = rig.ask("!fleet cancel acme/widgets#3", "$c1").await;
        assert_eq!(
            a.plain,
            format!("acme/widgets#3 has 2 live tasks ({first}, {second}): name one by its id")
        );
        rig.ask(&format!("!fleet cancel {first}"), "$c2").await;
        rig.wait(first, TaskStatus::Cancelled).await;
        let a = rig.ask("!fleet cancel acme/widgets#3", "$c3").await;
        assert_eq!(a.plain, format!("Task {second} is being cancelled"));
        rig.engine.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_pull_request_is_linked_with_its_address_escaped() {
        let rig = Rig::start().await;
        let url = r#"https://forge.example.org/acme/widgets/pulls/7?a=1&b="x""#;
        let mut forge = ForgeTask::new("acme/widgets", 7, Vec::new());
        forge.pr = Some(PullLink {
            number: 7,
            title: "Add <i>it</i>".into(),
            url: url.into(),
            merged: false,
            merge_sha: None,
            commits: 1,
        });
        let id = rig.start_with(forge).await;
        let a = rig.ask(&format!("!fleet task {id}"), "$t").await;
        assert!(
            a.plain
                .contains(&format!("Pull request: #7 {url} Add <i>it</i>")),
            "{}",
            a.plain
        );
        let link = "<a href=\"https://forge.example.org/acme/widgets/pulls/7?a=1&amp;b=&quot;x&quot;\">#7</a>";
        assert!(
            a.html
                .contains(&format!("{link} Add &lt;i&gt;it&lt;/i&gt;")),
            "{}",
            a.html
        );
        rig.engine.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_pull_request_address_that_is_not_http_is_not_linked() {
        let rig = Rig::start().await;
        let mut forge = ForgeTask::new("acme/widgets", 7, Vec::new());
        forge.pr = Some(PullLink {
            number: 7,
            title: "t".into(),
            url: "javascript:alert(1)".into(),
            merged: true,
            merge_sha: None,
            commits: 1,
        });
        let id = rig.start_with(forge).await;
        let a = rig.ask(&format!("!fleet task {id}"), "$t").await;
        assert!(
            a.plain.contains("Pull request: #7 t (merged)"),
            "{}",
            a.plain
        );
        assert!(
            !a.html.contains("<a ") && !a.html.contains("javascript"),
            "{}",
            a.html
        );
        rig.engine.shutdown().await.unwrap();
    }
}
