//! What kind of failure a failed run was, read from what the CLI printed: it decides what the
//! task does next (SPEC §10b) — give up at once with a reason that says what to fix (bad
//! credentials, a CLI that cannot run as configured, a tool the CLI refused), retry with
//! backoff (the API or the network failed), pause the agent kind on its host until the limit
//! resets (a usage or rate limit), or retry as an ordinary failed attempt.
//!
//! The phrases are those the real CLIs print (Claude Code 2.1 and Codex 0.169, captured in
//! `tests/fixtures/agents/captured/`): Claude's `api_error_status` and result text, Codex's
//! `error` / `turn.failed` messages, and the shell's own words for a missing program. A usage
//! limit's reset time is read by `reset.rs`; [`explain`] words the failure for the user: what
//! happened, in the CLI's words, and what to fix.

use serde::{Deserialize, Serialize};

use super::reset::reset_time;
use super::text::{one_line, tail_text};
use super::{Parsed, RunClock, RunOutput, Verdict};

/// How much of stderr is searched.
const STDERR_BYTES: usize = 16 * 1024;

/// The kinds of failure, each with its own treatment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The agent ran and did not deliver (or its output cannot be read): an ordinary failed
    /// attempt, retried while the budget lasts.
    Agent,
    /// The API refused the credentials (401/403, an invalid key, not logged in): no retry.
    Auth,
    /// The CLI cannot run as configured (unknown argument, program missing, bad model or
    /// provider settings): no retry.
    Config,
    /// The CLI refused the agent a tool (its permission mode or sandbox): no retry; the
    /// template's flags need changing.
    Permission,
    /// The API or the network failed (5xx, overloaded, connection errors): retried with
    /// backoff.
    Transient,
    /// A usage or rate limit: the agent kind pauses on that host until the reset; no attempt
    /// is spent.
    UsageLimit,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Agent => "agent",
            FailureKind::Auth => "auth",
            FailureKind::Config => "config",
            FailureKind::Permission => "permission",
            FailureKind::Transient => "transient",
            FailureKind::UsageLimit => "usage_limit",
        }
    }

    /// Whether another attempt can help without somebody changing something first.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            FailureKind::Agent | FailureKind::Transient | FailureKind::UsageLimit
        )
    }
}

const AUTH: &[&str] = &[
    "authentication_error",
    "invalid x-api-key",
    "invalid api key",
    "invalid bearer token",
    "incorrect api key",
    "401 unauthorized",
    "403 forbidden",
    "please run /login",
    "not logged in",
    "missing api key",
    "no api key",
    "oauth token has expired",
];

/// A CLI that cannot run as configured, besides [`MISSING`] and [`BAD_ARGUMENT`]: not
/// executable (`sh: 1: claude: Permission denied`), refusing root (Claude Code's
/// `--dangerously-skip-permissions cannot be used with root/sudo privileges`), a bad config
/// file, or a model that does not exist.
const CONFIG: &[&str] = &[
    "permission denied: ",
    "cannot be used with root",
    "is no longer supported",
    "error loading config",
    "not_found_error",
    "model_not_found",
    "does not exist or you do not have access",
];

const TRANSIENT: &[&str] = &[
    "overloaded",
    "high demand",
    "internal server error",
    "server_error",
    "api_error",
    "service unavailable",
    "bad gateway",
    "gateway timeout",
    "connection error",
    "connection refused",
    "connection reset",
    "econnrefused",
    "econnreset",
    "etimedout",
    "stream disconnected",
    "error sending request",
    "timed out",
    "network error",
];

/// A program that is not there (the shell's words, exit 126/127).
const MISSING: &[&str] = &[
    ": not found",
    "command not found",
    "no such file or directory",
    "exit code 127",
    "exit code 126",
];

/// A command line the CLI rejected.
const BAD_ARGUMENT: &[&str] = &[
    "unexpected argument",
    "unknown option",
    "unrecognized option",
    "unknown argument",
    "invalid value '",
    "error: unknown command",
];

/// Longest piece of the CLI's own words in an [`explain`]ed reason, in bytes.
const DETAIL_MAX_BYTES: usize = 160;

/// What the CLI printed about its failure, gathered once for the phrase checks.
struct Evidence {
    /// The CLI's error texts and the reader's reasons, as printed.
    texts: Vec<String>,
    /// The same, lowercased, and the tail of stderr last.
    lower: Vec<String>,
    /// The API's HTTP status: Claude's `api_error_status`, else one named in a text.
    status: Option<u64>,
}

impl Evidence {
    fn gather(parsed: &Parsed, out: &RunOutput<'_>) -> Self {
        let mut texts = parsed.error_texts.clone();
        if let Verdict::Failure(reasons) = &parsed.verdict {
            texts.extend(reasons.iter().cloned());
        }
        let stderr = tail_text(out.stderr, STDERR_BYTES);
        let lower: Vec<String> = texts
            .iter()
            .chain(std::iter::once(&stderr))
            .map(|t| t.to_lowercase())
            .collect();
        texts.push(stderr);
        let status = parsed
            .api_status
            .or_else(|| lower.iter().find_map(|t| http_status(t)));
        Evidence {
            texts,
            lower,
            status,
        }
    }

    /// Whether any text holds one of `phrases` (lowercase).
    fn has(&self, phrases: &[&str]) -> bool {
        phrases
            .iter()
            .any(|p| self.lower.iter().any(|t| t.contains(p)))
    }
}

/// The kind of a failed run and, for a usage limit, the reset time the CLI reported (Unix ms):
/// the exact epoch a reader found (Claude's stream `rate_limit_event.resetsAt`), else one
/// printed in an error text, resolved against `clock`.
pub(crate) fn classify(
    parsed: &Parsed,
    out: &RunOutput<'_>,
    usage_limited: bool,
    clock: &RunClock,
) -> (FailureKind, Option<u64>) {
    let evidence = Evidence::gather(parsed, out);
    let kind = kind_of(&evidence, parsed, out, usage_limited);
    let reset = (kind == FailureKind::UsageLimit)
        .then(|| {
            parsed
                .reset_at_ms
                .or_else(|| evidence.texts.iter().find_map(|t| reset_time(t, clock)))
        })
        .flatten();
    (kind, reset)
}

/// The first kind whose evidence is there, most specific first: a usage limit (HTTP 429 or
/// its words), refused credentials, a CLI that cannot run, a refused tool, a failed API.
fn kind_of(
    evidence: &Evidence,
    parsed: &Parsed,
    out: &RunOutput<'_>,
    usage_limited: bool,
) -> FailureKind {
    let status = evidence.status;
    if usage_limited || status == Some(429) {
        FailureKind::UsageLimit
    } else if matches!(status, Some(401 | 403)) || evidence.has(AUTH) {
        FailureKind::Auth
    } else if matches!(out.exit_code, Some(126 | 127))
        || status == Some(404)
        || evidence.has(MISSING)
        || evidence.has(BAD_ARGUMENT)
        || evidence.has(CONFIG)
    {
        FailureKind::Config
    } else if parsed.permission_denied {
        FailureKind::Permission
    } else if status.is_some_and(|s| s >= 500 || s == 408) || evidence.has(TRANSIENT) {
        FailureKind::Transient
    } else {
        FailureKind::Agent
    }
}

/// An HTTP status in a lowercased error text: `api error: 500 …`, `unexpected status 401
/// unauthorized`, `status code 503`, `request rejected (429)`.
fn http_status(text: &str) -> Option<u64> {
    [
        "api error: ",
        "unexpected status ",
        "status code ",
        "status: ",
        "request rejected (",
    ]
    .iter()
    .filter_map(|marker| text.find(marker).map(|i| &text[i + marker.len()..]))
    .find_map(|rest| {
        let digits = rest
            .get(..3)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))?;
        let after_is_digit = rest[3..].starts_with(|c: char| c.is_ascii_digit());
        let n: u64 = digits.parse().ok()?;
        (!after_is_digit && (400..600).contains(&n)).then_some(n)
    })
}

/// A failed run's reason for the user: what happened, in the CLI's words (`failure`, without
/// the exit code and format remarks that add nothing), and what to fix — e.g. `authentication
/// failed (API error 401: Invalid API key · Fix external API key): check the agent kind's API
/// key or login (its env / env_from, or the CLI's login on the host)`. An
/// [`FailureKind::Agent`] failure is its `failure` line as it is. One line, at most
/// [`super::FAILURE_MAX_BYTES`] bytes.
pub(crate) fn explain(kind: FailureKind, failure: &str, retry_at_ms: Option<u64>) -> String {
    let detail = one_line(&cli_words(failure), DETAIL_MAX_BYTES);
    let line = match kind {
        FailureKind::Agent => failure.to_owned(),
        FailureKind::UsageLimit => {
            let until = retry_at_ms.map_or_else(
                || "for the configured pause (no reset time given)".to_owned(),
                |ms| {
                    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
                    format!("until {}", humantime::format_rfc3339_seconds(at))
                },
            );
            format!("usage limit reached ({detail}): the agent kind pauses {until}")
        }
        _ => {
            let (what, fix) = headline(kind, &failure.to_lowercase());
            format!("{what} ({detail}): {fix}")
        }
    };
    one_line(&line, super::FAILURE_MAX_BYTES)
}

/// What went wrong and what to fix, for the kinds that need somebody to change something
/// (`lower`: the failure line, lowercased).
fn headline(kind: FailureKind, lower: &str) -> (&'static str, &'static str) {
    let has = |phrases: &[&str]| phrases.iter().any(|p| lower.contains(p));
    match kind {
        FailureKind::Auth => (
            "authentication failed",
            "check the agent kind's API key or login (its env / env_from, or the CLI's login \
             on the host)",
        ),
        FailureKind::Config if has(MISSING) => (
            "the agent CLI was not found",
            "install it for the agent's user on the host, or fix the kind's command or PATH",
        ),
        FailureKind::Config if has(BAD_ARGUMENT) => (
            "the agent CLI rejected its command line (unknown option or argument)",
            "fix the kind's cli_template / resume_template for this CLI version",
        ),
        FailureKind::Config if lower.contains("with root") => (
            "the agent CLI refused to run as root",
            "run the agent as a non-root user, or drop --dangerously-skip-permissions",
        ),
        FailureKind::Config => (
            "the agent CLI cannot run as configured",
            "check the kind's cli_template and the CLI's configuration on the host",
        ),
        FailureKind::Permission => (
            "the agent CLI denied the agent a tool",
            "allow the tool in the kind's cli_template (permission mode, allowed tools or \
             sandbox)",
        ),
        FailureKind::Transient => (
            "the model API failed, probably for a while",
            "retried with backoff",
        ),
        FailureKind::Agent | FailureKind::UsageLimit => ("the run failed", "see its output"),
    }
}

/// The CLI's own words in a failure line: the parts that only say `exit code N` or that the
/// output is not the expected format are left out (when anything else is left), and an
/// `exit code N: ` before a stderr line is dropped.
fn cli_words(failure: &str) -> String {
    let is_exit_code = |part: &str| {
        part.strip_prefix("exit code ")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit() || b == b'-'))
    };
    let parts: Vec<&str> = failure
        .split("; ")
        .map(|part| match part.strip_prefix("exit code ") {
            Some(rest) => rest.split_once(": ").map_or(part, |(_, line)| line),
            None => part,
        })
        .filter(|part| !is_exit_code(part) && !part.starts_with("output is not valid "))
        .collect();
    if parts.is_empty() {
        failure.to_owned()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_read_from_the_clis_error_texts() {
        assert_eq!(
            http_status("api error: 500 {\"type\":\"error\"}"),
            Some(500)
        );
        assert_eq!(
            http_status("unexpected status 401 unauthorized: invalid key"),
            Some(401)
        );
        assert_eq!(
            http_status("api error: request rejected (429) · this request would exceed"),
            Some(429)
        );
        assert_eq!(http_status("status code 5000"), None);
        assert_eq!(http_status("no status here"), None);
    }

    #[test]
    fn the_clis_words_are_kept_without_our_boilerplate() {
        assert_eq!(
            cli_words(
                "exit code 127: sh: 1: claude: not found; output is not valid claude-json: empty output"
            ),
            "sh: 1: claude: not found"
        );
        assert_eq!(
            cli_words("API error 401: Invalid API key · Fix external API key; exit code 1"),
            "API error 401: Invalid API key · Fix external API key"
        );
        assert_eq!(
            cli_words("exit code 101; output is not valid codex-jsonl: empty output"),
            "exit code 101; output is not valid codex-jsonl: empty output"
        );
    }

    #[test]
    fn each_kind_says_what_to_fix() {
        let auth = explain(
            FailureKind::Auth,
            "API error 401: Invalid API key · Fix external API key; exit code 1",
            None,
        );
        assert_eq!(
            auth,
            "authentication failed (API error 401: Invalid API key · Fix external API key): \
             check the agent kind's API key or login (its env / env_from, or the CLI's login on \
             the host)"
        );
        let missing = explain(
            FailureKind::Config,
            "exit code 127: sh: 1: codex: not found; output is not valid codex-jsonl: empty output",
            None,
        );
        assert!(
            missing.starts_with("the agent CLI was not found (sh: 1: codex: not found): install")
        );
        let limit = explain(
            FailureKind::UsageLimit,
            "You've hit your limit",
            Some(1_796_249_520_000),
        );
        assert_eq!(
            limit,
            "usage limit reached (You've hit your limit): the agent kind pauses until \
             2026-12-02T22:12:00Z"
        );
        assert_eq!(
            explain(FailureKind::Agent, "exit code 3", None),
            "exit code 3"
        );
        let long = "x".repeat(2000);
        assert!(
            explain(FailureKind::Transient, &long, None).len() <= super::super::FAILURE_MAX_BYTES
        );
    }
}
