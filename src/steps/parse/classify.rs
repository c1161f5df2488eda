//! What kind of failure a failed run was, read from what the CLI printed: it decides what the
//! task does next (SPEC §10b) — give up at once with a reason that says what to fix (bad
//! credentials, a CLI that cannot run as configured, a tool the CLI refused), retry with
//! backoff (the API or the network failed), pause the agent kind on its host until the limit
//! resets (a usage or rate limit), or retry as an ordinary failed attempt.
//!
//! The phrases are those the real CLIs print (Claude Code 2.1 and Codex 0.169, captured in
//! `tests/fixtures/agents/captured/`): Claude's `api_error_status` and result text, Codex's
//! `error` / `turn.failed` messages, and the shell's own words for a missing program.

use serde::{Deserialize, Serialize};

use super::text::tail_text;
use super::{Parsed, RunOutput};

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

const CONFIG: &[&str] = &[
    "unexpected argument",
    "unknown option",
    "unrecognized option",
    "unknown argument",
    "invalid value '",
    "error: unknown command",
    "no such file or directory",
    "command not found",
    ": not found",
    "permission denied: ", // `sh: 1: claude: Permission denied` (not executable)
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

/// The kind of a failed run and, for a usage limit, the reset time the CLI reported (Unix ms).
pub(crate) fn classify(
    parsed: &Parsed,
    out: &RunOutput<'_>,
    usage_limited: bool,
) -> (FailureKind, Option<u64>) {
    let mut texts: Vec<String> = parsed
        .error_texts
        .iter()
        .map(|t| t.to_lowercase())
        .collect();
    if let super::Verdict::Failure(reasons) = &parsed.verdict {
        texts.extend(reasons.iter().map(|r| r.to_lowercase()));
    }
    let stderr = tail_text(out.stderr, STDERR_BYTES).to_lowercase();
    let has = |phrases: &[&str]| {
        phrases
            .iter()
            .any(|p| stderr.contains(p) || texts.iter().any(|t| t.contains(p)))
    };
    let status = parsed.api_status.or_else(|| {
        texts
            .iter()
            .chain(std::iter::once(&stderr))
            .find_map(|t| http_status(t))
    });
    if usage_limited || status == Some(429) {
        let at = texts
            .iter()
            .chain(std::iter::once(&stderr))
            .find_map(|t| reset_time(t));
        return (FailureKind::UsageLimit, at);
    }
    if matches!(status, Some(401 | 403)) || has(AUTH) {
        return (FailureKind::Auth, None);
    }
    if matches!(out.exit_code, Some(126 | 127)) || status == Some(404) || has(CONFIG) {
        return (FailureKind::Config, None);
    }
    if parsed.permission_denied {
        return (FailureKind::Permission, None);
    }
    if status.is_some_and(|s| s >= 500 || s == 408) || has(TRANSIENT) {
        return (FailureKind::Transient, None);
    }
    (FailureKind::Agent, None)
}

/// An HTTP status in an error text: `API Error: 500 …`, `unexpected status 401 Unauthorized`,
/// `status code 503`.
fn http_status(text: &str) -> Option<u64> {
    for marker in [
        "api error: ",
        "unexpected status ",
        "status code ",
        "status: ",
    ] {
        if let Some(i) = text.find(marker) {
            let digits: String = text[i + marker.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if digits.len() == 3
                && let Ok(n) = digits.parse::<u64>()
                && (400..600).contains(&n)
            {
                return Some(n);
            }
        }
    }
    None
}

/// A usage limit's reset time in a (lowercased) error text, as Unix milliseconds: Claude's
/// `usage limit reached|<epoch seconds>`, an RFC 3339 time, `resets_at` / `reset` followed by
/// epoch seconds, or `try again in N seconds|minutes|hours` (from now).
pub(crate) fn reset_time(text: &str) -> Option<u64> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let epoch_after = |marker: &str| -> Option<u64> {
        let i = text.find(marker)?;
        let digits: String = text[i + marker.len()..]
            .trim_start_matches(['"', ':', ' ', '='])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let n: u64 = digits.parse().ok()?;
        // Seconds since 2001 .. 2286 (ten digits), or already milliseconds (thirteen).
        match digits.len() {
            10 => Some(n * 1000),
            13 => Some(n),
            _ => None,
        }
    };
    if let Some(at) = [
        "limit reached|",
        "resets_at",
        "reset_at",
        "resets at ",
        "reset\":",
    ]
    .iter()
    .find_map(|m| epoch_after(m))
    {
        return Some(at);
    }
    for (i, _) in text.match_indices("try again in ") {
        let rest = &text[i + "try again in ".len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(n) = digits.parse::<u64>() else {
            continue;
        };
        let unit = rest[digits.len()..].trim_start();
        let secs = if unit.starts_with('h') {
            n * 3600
        } else if unit.starts_with('m') {
            n * 60
        } else {
            n
        };
        return Some(now_ms + secs * 1000);
    }
    rfc3339_in(text)
}

/// The first RFC 3339 time (`2026-12-02T19:30:00Z`) in a lowercased text, as Unix ms.
fn rfc3339_in(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(19)).find_map(|i| {
        let b = &bytes[i..];
        let shape = b[4] == b'-' && b[7] == b'-' && b[10] == b't' && b[13] == b':';
        if !shape || !b[..4].iter().all(u8::is_ascii_digit) {
            return None;
        }
        let end = text[i..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '.' | '+')))
            .map_or(text.len(), |e| i + e);
        let ts: humantime::Timestamp = text[i..end].to_uppercase().parse().ok()?;
        let t: std::time::SystemTime = ts.into();
        t.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis() as u64)
    })
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
        assert_eq!(http_status("no status here"), None);
    }

    #[test]
    fn reset_times_are_read_in_each_form_the_clis_print() {
        assert_eq!(
            reset_time("claude ai usage limit reached|1753441200"),
            Some(1_753_441_200_000)
        );
        assert_eq!(
            reset_time(r#"{"resets_at": 1753441200}"#),
            Some(1_753_441_200_000)
        );
        assert_eq!(
            reset_time("rate limited until 2026-12-02t19:30:00z, sorry"),
            Some(1_796_239_800_000)
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let at = reset_time("please try again in 5 minutes").unwrap();
        assert!(at >= now + 299_000 && at <= now + 301_000, "{at}");
        assert_eq!(reset_time("no time at all"), None);
    }
}
