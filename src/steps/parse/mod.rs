//! The agent output parsers: what a finished run delivered, judged honestly from its stdout,
//! stderr and exit code ([`parse`] → [`RunReport`]).
//!
//! Each [`OutputFormat`] has its reader (`claude.rs` for `claude -p --output-format
//! json|stream-json`, `codex.rs` for `codex exec --json`); `raw.rs` keeps any other output as
//! text. A reader returns what the output itself says (its own verdict, the final message,
//! usage, files, remarks); [`parse`] then weighs that against the exit code, so that a nonzero
//! exit, a kill, an error the CLI reported with exit 0 and output that is not the expected
//! format are all failures. Nothing here panics or errors, whatever the bytes: unreadable output
//! is a failure with a reason and a note, and its text is kept as the summary.
//!
//! A failed run is classified (`classify.rs`, [`FailureKind`]); a usage limit's reset time is
//! read from what the CLI printed (`reset.rs`), local wall-clock times resolved against a
//! [`RunClock`] (the run's end and the time zone, `zone.rs`). [`parse`] uses the daemon's clock
//! and zone at the time of the call; [`parse_at`] takes the clock explicitly.

mod classify;
mod claude;
mod codex;
mod raw;
mod reset;
pub(crate) mod text;

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::config::OutputFormat;

pub use classify::FailureKind;
pub use jiff::tz::TimeZone;

use text::{find_pr_url, mentions_usage_limit, one_line, stderr_hint, tail_text, truncate_head};

/// Longest [`RunReport::summary`], in bytes.
pub const SUMMARY_MAX_BYTES: usize = 4096;
/// Longest [`RunReport::failure`], in bytes.
pub const FAILURE_MAX_BYTES: usize = 300;
/// Longest single note, in bytes.
pub const NOTE_MAX_BYTES: usize = 300;
/// Most notes kept; one more says how many were dropped.
pub const MAX_NOTES: usize = 40;
/// Most changed files kept; a note says how many were dropped.
pub const MAX_FILES: usize = 1000;
/// Longest session id kept (real ones are UUIDs); a longer one is dropped with a note.
const SESSION_ID_MAX_BYTES: usize = 200;
/// How much of stderr is searched for usage-limit phrases.
const STDERR_SCAN_BYTES: usize = 64 * 1024;

/// What a finished run left behind.
#[derive(Debug, Clone, Copy)]
pub struct RunOutput<'a> {
    pub stdout: &'a [u8],
    pub stderr: &'a [u8],
    /// `None`: the process was killed or left no exit code.
    pub exit_code: Option<i32>,
}

/// When a run ended and the time zone of the times its CLI printed without one: the reference
/// for reset times printed as local wall-clock times (`resets 10:11pm (UTC)` is the next 22:11
/// UTC after the run's end; Codex's `Try again at 10:12 PM.` is 22:12 in `zone`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunClock {
    /// When the run ended (Unix milliseconds).
    pub ended_at_ms: u64,
    /// The zone of the agent's host, for times printed without a zone. The daemon cannot ask
    /// the host: it assumes the host keeps the daemon's own zone ([`TimeZone::system`]).
    pub zone: TimeZone,
}

impl RunClock {
    /// A run that ended at `ended_at_ms`, on a host in the daemon's time zone.
    pub fn ended_at(ended_at_ms: u64) -> Self {
        RunClock {
            ended_at_ms,
            zone: TimeZone::system(),
        }
    }

    /// A run that ended just now, on a host in the daemon's time zone.
    pub fn now() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self::ended_at(now)
    }
}

/// What a run delivered, as far as its output shows. Stored in the (postcard-encoded) workflow
/// state: a plain struct, no skipped or flattened fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub success: bool,
    /// Why it failed, one line of at most [`FAILURE_MAX_BYTES`] bytes; `None` on success.
    pub failure: Option<String>,
    /// The agent's final message (raw output's tail when there is no readable one), at most
    /// [`SUMMARY_MAX_BYTES`] bytes, cut on a char boundary with "…".
    pub summary: String,
    /// Claude `session_id` / Codex `thread_id`.
    pub session_id: Option<String>,
    /// Claude `num_turns`. Codex reports no comparable count: `None`.
    pub turns: Option<u32>,
    /// Input tokens as the CLI counts them: Claude's exclude the cache tokens below, Codex's
    /// include its cached ones (`cached_input_tokens` is a part of `input_tokens`).
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// Claude `cache_read_input_tokens` / Codex `cached_input_tokens`.
    pub cache_read_tokens: Option<u64>,
    /// Claude `cache_creation_input_tokens` / Codex `cache_write_input_tokens` (when present).
    pub cache_write_tokens: Option<u64>,
    /// Claude `total_cost_usd`; Codex reports none.
    pub cost_usd: Option<f64>,
    /// Paths written by the agent when the format shows them (Claude Write/Edit/MultiEdit/
    /// NotebookEdit tool uses that did not fail, Codex `file_change` items), as the CLI printed
    /// them (often absolute), deduplicated in order of first appearance.
    pub files_changed: Vec<String>,
    /// A `http(s)://…/pulls/N` or `…/pull/N` URL in the final message (the last one).
    pub pr_url: Option<String>,
    /// The run failed because the agent hit a usage or rate limit (HTTP 429, "usage limit",
    /// "rate limit", …): pause dispatch rather than spend a retry. Never set on success.
    pub usage_limited: bool,
    /// Honest remarks: unreadable output, permission denials, failed tool commands, CLI
    /// warnings and retries.
    pub notes: Vec<String>,
    /// What kind of failure this was (what to do about it); `None` on success.
    pub kind: Option<FailureKind>,
    /// A usage limit's reset time as the CLI reported it (Unix milliseconds), when it did.
    /// Exact when the output carries the epoch (Claude's stream-json `rate_limit_event`); the
    /// end of the printed minute when it prints a wall-clock time (see [`RunClock`]).
    pub retry_at_ms: Option<u64>,
}

impl RunReport {
    /// Why the run failed and what to fix, one short line for the user; `None` on success.
    /// [`RunReport::failure`] is what happened in the CLI's words; this adds the kind's
    /// remedy: `authentication failed (API error 401: Invalid API key · …): check the agent
    /// kind's API key or login (…)`, `the agent CLI was not found (sh: 1: claude: not found):
    /// install it …`, `the agent CLI denied the agent a tool (permission denied for tool
    /// Bash): allow the tool …`, `usage limit reached (…): the agent kind pauses until …`.
    pub fn reason(&self) -> Option<String> {
        let failure = self.failure.as_deref()?;
        let kind = self.kind.unwrap_or(FailureKind::Agent);
        Some(classify::explain(kind, failure, self.retry_at_ms))
    }
}

/// Reads a finished run's output in `format` and judges it (see the module doc), as if the run
/// had just ended on a host in the daemon's time zone ([`RunClock::now`]).
pub fn parse(format: OutputFormat, out: &RunOutput<'_>) -> RunReport {
    parse_at(format, out, &RunClock::now())
}

/// [`parse`] with the run's end time and zone given: reset times printed without a date
/// (`resets 10:11pm (UTC)`, `Try again at 10:12 PM.`) are the next such time after
/// `clock.ended_at_ms`, so reading the output later (after a restart) gives the same answer.
pub fn parse_at(format: OutputFormat, out: &RunOutput<'_>, clock: &RunClock) -> RunReport {
    let parsed = match format {
        OutputFormat::ClaudeJson => claude::parse_json(out.stdout),
        OutputFormat::ClaudeStreamJson => claude::parse_stream(out.stdout),
        OutputFormat::CodexJsonl => codex::parse(out.stdout),
        OutputFormat::Raw => raw::parse(out.stdout),
    };
    finish(format, parsed, out, clock)
}

/// What the output itself says about the run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// The CLI reported success.
    Success,
    /// The CLI reported failure, for these reasons (each one short).
    Failure(Vec<String>),
    /// The format carries no verdict: the exit code decides (raw output).
    ExitCode,
    /// The output is not the expected format (why, briefly): the exit code cannot make it a
    /// success, and the raw text is kept.
    Invalid(String),
}

/// What a format reader found, before the exit code is weighed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Parsed {
    pub verdict: Verdict,
    /// The agent's final message; `None`: use the raw output's tail.
    pub final_message: Option<String>,
    pub session_id: Option<String>,
    pub turns: Option<u32>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_read_tokens: Option<u64>,
    pub cache_write_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    pub files_changed: Vec<String>,
    pub notes: Vec<String>,
    /// Error texts the CLI printed; searched for usage-limit phrases if the run failed. Never
    /// the agent's own messages or tool output (those talk about rate limiters all the time).
    pub error_texts: Vec<String>,
    /// The API answered HTTP 429.
    pub http_429: bool,
    /// The HTTP status of the API error the CLI ended on (Claude's `api_error_status`).
    pub api_status: Option<u64>,
    /// The CLI refused the agent a tool it asked for (Claude's `permission_denials`).
    pub permission_denied: bool,
    /// A usage limit's exact reset time (Unix ms), when the output carries its epoch (Claude's
    /// stream-json `rate_limit_event.rate_limit_info.resetsAt` of a rejected limit).
    pub reset_at_ms: Option<u64>,
}

impl Parsed {
    pub(crate) fn new(verdict: Verdict) -> Self {
        Parsed {
            verdict,
            final_message: None,
            session_id: None,
            turns: None,
            input_tokens: None,
            output_tokens: None,
            cache_read_tokens: None,
            cache_write_tokens: None,
            cost_usd: None,
            files_changed: Vec::new(),
            notes: Vec::new(),
            error_texts: Vec::new(),
            http_429: false,
            api_status: None,
            permission_denied: false,
            reset_at_ms: None,
        }
    }
}

/// Weighs a reader's findings against the exit code and bounds every field.
fn finish(
    format: OutputFormat,
    parsed: Parsed,
    out: &RunOutput<'_>,
    clock: &RunClock,
) -> RunReport {
    let exit_reason = match out.exit_code {
        Some(0) => None,
        Some(code) => Some(format!("exit code {code}")),
        None => Some("the process was killed (no exit code)".to_owned()),
    };
    // Raw text stands in for the verdict: the exit reason gets the useful line of the output.
    let with_hint = |reason: String, stdout_too: bool| {
        let hint = stderr_hint(out.stderr).or_else(|| {
            if stdout_too {
                stderr_hint(out.stdout)
            } else {
                None
            }
        });
        match hint {
            Some(hint) => format!("{reason}: {hint}"),
            None => reason,
        }
    };

    let mut reasons = Vec::new();
    let mut notes = Vec::new();
    let mut raw_like = false;
    match &parsed.verdict {
        Verdict::Success => reasons.extend(exit_reason.map(|r| with_hint(r, false))),
        Verdict::Failure(found) => {
            reasons.extend(found.iter().cloned());
            reasons.extend(exit_reason);
        }
        Verdict::ExitCode => {
            raw_like = true;
            reasons.extend(exit_reason.map(|r| with_hint(r, true)));
        }
        Verdict::Invalid(why) => {
            raw_like = true;
            let name = format.as_str();
            reasons.extend(exit_reason.map(|r| with_hint(r, true)));
            reasons.push(format!("output is not valid {name}: {why}"));
            notes.push(format!(
                "output is not valid {name} ({why}); kept as raw text"
            ));
        }
    }
    let success = reasons.is_empty();
    let usage_limited = !success
        && (parsed.http_429
            || parsed.error_texts.iter().any(|t| mentions_usage_limit(t))
            || mentions_usage_limit(&tail_text(out.stderr, STDERR_SCAN_BYTES))
            || (raw_like && mentions_usage_limit(&tail_text(out.stdout, SUMMARY_MAX_BYTES))));
    let (kind, retry_at_ms) = if success {
        (None, None)
    } else {
        let (kind, at) = classify::classify(&parsed, out, usage_limited, clock);
        (Some(kind), at)
    };
    notes.extend(parsed.notes);

    let raw_text = || {
        let text = tail_text(out.stdout, SUMMARY_MAX_BYTES);
        if text.is_empty() {
            tail_text(out.stderr, SUMMARY_MAX_BYTES)
        } else {
            text
        }
    };
    let (summary, pr_url) = match &parsed.final_message {
        Some(message) if !raw_like => {
            let message = message.trim();
            (
                truncate_head(message, SUMMARY_MAX_BYTES),
                find_pr_url(message),
            )
        }
        _ => {
            let text = raw_text();
            let pr_url = find_pr_url(&text);
            (text, pr_url)
        }
    };

    let mut session_id = parsed.session_id;
    if session_id
        .as_ref()
        .is_some_and(|s| s.len() > SESSION_ID_MAX_BYTES)
    {
        session_id = None;
        notes.push("the session id was implausibly long and was dropped".to_owned());
    }

    let mut files_changed = parsed.files_changed;
    if files_changed.len() > MAX_FILES {
        let dropped = files_changed.len() - MAX_FILES;
        files_changed.truncate(MAX_FILES);
        notes.push(format!("{dropped} more changed files not listed"));
    }

    RunReport {
        success,
        failure: (!success).then(|| failure_line(&reasons)),
        summary,
        session_id,
        turns: parsed.turns,
        input_tokens: parsed.input_tokens,
        output_tokens: parsed.output_tokens,
        cache_read_tokens: parsed.cache_read_tokens,
        cache_write_tokens: parsed.cache_write_tokens,
        cost_usd: parsed.cost_usd,
        files_changed,
        pr_url,
        usage_limited: kind == Some(FailureKind::UsageLimit),
        notes: bound_notes(notes),
        kind,
        retry_at_ms,
    }
}

/// The reasons as one line ("a; b; c") of at most [`FAILURE_MAX_BYTES`] bytes.
fn failure_line(reasons: &[String]) -> String {
    let joined = if reasons.len() == 1 {
        reasons[0].clone()
    } else {
        let parts: Vec<&str> = reasons
            .iter()
            .map(|r| r.trim().trim_end_matches('.'))
            .collect();
        parts.join("; ")
    };
    one_line(&joined, FAILURE_MAX_BYTES)
}

/// Notes deduplicated (order kept), one line each, at most [`MAX_NOTES`] of them.
fn bound_notes(notes: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut dropped = 0usize;
    for note in notes {
        let note = one_line(&note, NOTE_MAX_BYTES);
        if note.is_empty() || !seen.insert(note.clone()) {
            continue;
        }
        if out.len() < MAX_NOTES {
            out.push(note);
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        out.push(format!("{dropped} more notes dropped"));
    }
    out
}

/// An insertion-ordered set of strings (changed files, tool names).
#[derive(Debug, Default)]
pub(crate) struct OrderedSet {
    items: Vec<String>,
    seen: HashSet<String>,
}

impl OrderedSet {
    pub(crate) fn insert(&mut self, item: &str) {
        if !self.seen.contains(item) {
            self.seen.insert(item.to_owned());
            self.items.push(item.to_owned());
        }
    }

    pub(crate) fn into_vec(self) -> Vec<String> {
        self.items
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(crate) fn as_slice(&self) -> &[String] {
        &self.items
    }
}

/// The lines of a JSONL output with their parsed objects, or `None` for a line that is not a
/// JSON object. Empty lines are left out.
pub(crate) fn jsonl_objects(
    bytes: &[u8],
) -> impl Iterator<Item = Option<serde_json::Map<String, serde_json::Value>>> + '_ {
    bytes
        .split(|b| *b == b'\n')
        .map(<[u8]>::trim_ascii)
        .filter(|line| !line.is_empty())
        .map(
            |line| match serde_json::from_slice::<serde_json::Value>(line) {
                Ok(serde_json::Value::Object(map)) => Some(map),
                _ => None,
            },
        )
}

/// "1 line was" / "3 lines were".
pub(crate) fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stdout: &[u8], stderr: &[u8], exit_code: Option<i32>) -> RunOutput<'static> {
        let stdout: &'static [u8] = Box::leak(stdout.to_vec().into_boxed_slice());
        let stderr: &'static [u8] = Box::leak(stderr.to_vec().into_boxed_slice());
        RunOutput {
            stdout,
            stderr,
            exit_code,
        }
    }

    const ALL: [OutputFormat; 4] = [
        OutputFormat::ClaudeJson,
        OutputFormat::ClaudeStreamJson,
        OutputFormat::CodexJsonl,
        OutputFormat::Raw,
    ];

    #[test]
    fn empty_output_fails_every_structured_format_even_with_exit_0() {
        for format in ALL {
            let report = parse(format, &run(b"", b"", Some(0)));
            assert_eq!(report.summary, "");
            if format == OutputFormat::Raw {
                assert!(report.success);
                assert!(report.notes.is_empty());
            } else {
                assert!(!report.success, "{format:?}");
                let failure = report.failure.unwrap_or_default();
                assert!(failure.starts_with("output is not valid"), "{failure}");
                assert!(
                    report.notes[0].ends_with("kept as raw text"),
                    "{:?}",
                    report.notes
                );
            }
        }
    }

    #[test]
    fn a_killed_process_fails_whatever_the_output_says() {
        let stdout = br#"{"type":"result","subtype":"success","is_error":false,"result":"done","session_id":"s1","num_turns":2}"#;
        let report = parse(OutputFormat::ClaudeJson, &run(stdout, b"", None));
        assert!(!report.success);
        assert_eq!(
            report.failure.as_deref(),
            Some("the process was killed (no exit code)")
        );
        assert_eq!(report.session_id.as_deref(), Some("s1"));
        assert_eq!(report.turns, Some(2));
        assert_eq!(report.summary, "done");

        let report = parse(OutputFormat::Raw, &run(b"partial", b"", None));
        assert!(!report.success);
        assert_eq!(report.summary, "partial");
    }

    #[test]
    fn a_nonzero_exit_fails_a_reported_success_and_names_the_stderr_error() {
        let stdout = br#"{"type":"result","subtype":"success","is_error":false,"result":"done"}"#;
        let report = parse(
            OutputFormat::ClaudeJson,
            &run(stdout, b"warning: x\nError: disk full\n", Some(2)),
        );
        assert!(!report.success);
        assert_eq!(
            report.failure.as_deref(),
            Some("exit code 2: Error: disk full")
        );
    }

    #[test]
    fn non_utf8_bytes_never_panic_and_are_kept_lossily() {
        let bytes = b"\xff\xfe{\"type\":\"result\"\xc3\x28\n\x80\x80 text \xe2\x82\n";
        for format in ALL {
            for exit in [Some(0), Some(1), None] {
                let report = parse(format, &run(bytes, bytes, exit));
                assert!(report.summary.len() <= SUMMARY_MAX_BYTES);
            }
        }
        let report = parse(OutputFormat::Raw, &run(b"ok \xff", b"", Some(0)));
        assert_eq!(report.summary, "ok \u{fffd}");
    }

    #[test]
    fn five_megabytes_of_junk_are_bounded_and_fail_structured_formats() {
        let mut junk = Vec::with_capacity(5 * 1024 * 1024 + 64);
        let mut i: u32 = 0;
        while junk.len() < 5 * 1024 * 1024 {
            i = i.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            match i % 7 {
                0 => junk.extend_from_slice(b"{\"type\":\"resu"),
                1 => junk.push(b'\n'),
                2 => junk.extend_from_slice(b"[1,2,"),
                3 => junk.extend_from_slice(b"\xff\xfe"),
                4 => junk.extend_from_slice("é rate".as_bytes()),
                5 => junk.extend_from_slice(b"{}\n"),
                _ => junk.extend_from_slice(b"abc "),
            }
        }
        for format in ALL {
            let report = parse(format, &run(&junk, &junk, Some(0)));
            assert!(report.summary.len() <= SUMMARY_MAX_BYTES);
            assert!(
                report
                    .failure
                    .as_ref()
                    .is_none_or(|f| f.len() <= FAILURE_MAX_BYTES)
            );
            assert!(report.notes.len() <= MAX_NOTES + 1);
            assert!(report.notes.iter().all(|n| n.len() <= NOTE_MAX_BYTES));
            assert_eq!(report.success, format == OutputFormat::Raw, "{format:?}");
        }
    }

    #[test]
    fn summaries_are_cut_to_4096_bytes_on_a_char_boundary() {
        let long = "é".repeat(5000);
        let stdout = serde_json::json!({"type":"result","subtype":"success","is_error":false,"result": long}).to_string();
        let report = parse(
            OutputFormat::ClaudeJson,
            &run(stdout.as_bytes(), b"", Some(0)),
        );
        assert!(report.success);
        assert!(report.summary.len() <= SUMMARY_MAX_BYTES);
        assert!(report.summary.ends_with('…'));
        assert!(report.summary.starts_with("éé"));

        let report = parse(OutputFormat::Raw, &run(long.as_bytes(), b"", Some(0)));
        assert!(report.summary.len() <= SUMMARY_MAX_BYTES);
        assert!(report.summary.starts_with('…'));
    }

    #[test]
    fn raw_output_uses_stderr_when_stdout_is_empty() {
        let report = parse(
            OutputFormat::Raw,
            &run(b"  \n", b"fatal: not a git repository\n", Some(128)),
        );
        assert!(!report.success);
        assert_eq!(report.summary, "fatal: not a git repository");
        assert_eq!(
            report.failure.as_deref(),
            Some("exit code 128: fatal: not a git repository")
        );
        assert!(!report.usage_limited);
    }

    #[test]
    fn usage_limits_are_flagged_only_on_failure() {
        let report = parse(
            OutputFormat::Raw,
            &run(
                b"You've hit your limit \xc2\xb7 resets 1pm (Europe/Lisbon)\n",
                b"",
                Some(1),
            ),
        );
        assert!(!report.success);
        assert!(report.usage_limited);
        assert!(
            report
                .failure
                .unwrap_or_default()
                .contains("hit your limit")
        );

        let report = parse(
            OutputFormat::Raw,
            &run(
                b"Added a rate limiter; 429 Too Many Requests is returned",
                b"",
                Some(0),
            ),
        );
        assert!(report.success);
        assert!(!report.usage_limited);
    }

    #[test]
    fn notes_are_deduplicated_and_bounded() {
        let notes: Vec<String> = (0..100).map(|i| format!("note {}", i % 60)).collect();
        let bounded = bound_notes(notes);
        assert_eq!(bounded.len(), MAX_NOTES + 1);
        assert_eq!(bounded[MAX_NOTES], "20 more notes dropped");
    }

    #[test]
    fn the_report_round_trips_through_postcard() {
        let report = RunReport {
            success: false,
            failure: Some("x".into()),
            summary: "s".into(),
            session_id: None,
            turns: Some(3),
            input_tokens: Some(1),
            output_tokens: None,
            cache_read_tokens: Some(2),
            cache_write_tokens: None,
            cost_usd: Some(0.5),
            files_changed: vec!["a".into()],
            pr_url: None,
            usage_limited: true,
            notes: vec!["n".into()],
            kind: Some(FailureKind::UsageLimit),
            retry_at_ms: Some(1_796_239_800_000),
        };
        let bytes = postcard::to_allocvec(&report).expect("encode");
        let back: RunReport = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, report);
    }
}
