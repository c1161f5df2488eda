//! What a failed run means for its task (SPEC §10b), from the run's [`FailureKind`]: give up at
//! once with a reason that says what to fix (credentials, a CLI that cannot run as configured,
//! a tool the CLI refused), pause the agent kind on that host until its usage limit resets
//! (no attempt spent), or retry with backoff. And whether a retry resumes the last agent
//! session (a failure outside the session) or starts a fresh one.

use std::time::Duration;

use crate::workflow::Timestamp;

use super::agent_task::{Run, RunOutcome, TaskState};
use super::parse::FailureKind;

/// What to do after a failed run.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Another attempt cannot help until somebody changes something: fail now, saying what.
    GiveUp(String),
    /// A usage limit: pause the agent kind on the run's host until `until`; no attempt spent.
    Pause { until: Timestamp, reason: String },
    /// An ordinary failed attempt (or a transient error): retry with backoff.
    Retry(String),
}

/// The decision for `run`, which failed for `reason` (`now` for pauses without a reset time,
/// which last `default_pause`).
pub fn decide(run: &Run, reason: String, now: Timestamp, default_pause: Duration) -> Decision {
    let Some(report) = &run.report else {
        return Decision::Retry(reason);
    };
    let kind = match run.outcome {
        RunOutcome::TimedOut | RunOutcome::Lost | RunOutcome::HostLost => {
            return Decision::Retry(reason);
        }
        _ => report.kind.unwrap_or(FailureKind::Agent),
    };
    let (agent, host) = (&run.agent, &run.host);
    // The CLI's words with what to fix (`RunReport::reason`), else the run's failure line.
    let explained = report.reason().unwrap_or_else(|| reason.clone());
    match kind {
        FailureKind::Auth | FailureKind::Config => Decision::GiveUp(format!(
            "`{agent}` on {host}: {explained}; not retried automatically"
        )),
        FailureKind::Permission => Decision::GiveUp(format!(
            "`{agent}` on {host}: the CLI refused the agent a tool ({reason}). {}; not retried \
             automatically",
            permission_hint(agent)
        )),
        FailureKind::UsageLimit => {
            let until = report
                .retry_at_ms
                .map(Timestamp)
                .filter(|t| *t > now)
                .unwrap_or_else(|| now.after(default_pause));
            Decision::Pause { until, reason }
        }
        FailureKind::Transient | FailureKind::Agent => Decision::Retry(reason),
    }
}

/// Which template flag lets the agent use its tools, by agent kind.
fn permission_hint(agent: &str) -> String {
    match agent {
        "claude" => "Allow the tools in the kind's cli_template (`--allowedTools Bash,Edit,…`, \
                     or `--permission-mode bypassPermissions` as a non-root agent user)"
            .to_string(),
        "codex" => "Let the sandbox write the work directory and its .git in the kind's \
                    cli_template (`-c 'sandbox_mode=\"workspace-write\"' -c \
                    'sandbox_workspace_write.writable_roots=[\"<work_dir>/.git\"]'`, \
                    or `--dangerously-bypass-approvals-and-sandbox`)"
            .to_string(),
        _ => format!("Allow the tools in the cli_template of agent kind `{agent}`"),
    }
}

/// What may explain a run that reported success without a commit, by agent kind: Codex's
/// sandbox shows a refused write only to the model, never in its output.
pub fn no_commit_hint(agent: &str) -> &'static str {
    match agent {
        "codex" => {
            "; if the agent's commands could not write .git, Codex's sandbox refused them \
             (the kind's cli_template must name <work_dir>/.git a writable root, or run \
             without the sandbox)"
        }
        _ => "",
    }
}

/// The session a retry of `s` resumes, as `(host, session id)`: the last run's session, when
/// it left one and failed outside the session itself — it timed out, it hit a transient error,
/// a usage limit or a refused tool, or it reported success but its work was refused (no
/// commit). A session that itself reported failure (or never started) is not resumed.
pub fn resumable_session(s: &TaskState) -> Option<(String, String)> {
    if s.fresh {
        return None;
    }
    let run = s.runs.last()?;
    let report = run.report.as_ref()?;
    let session = report.session_id.clone()?;
    let outside = run.outcome == RunOutcome::TimedOut
        || report.success
        || matches!(
            report.kind,
            Some(FailureKind::Transient | FailureKind::UsageLimit | FailureKind::Permission)
        );
    (outside && run.outcome != RunOutcome::Succeeded).then(|| (run.host.clone(), session))
}
