//! How each failure the real CLIs were caught in is classified: every scenario of
//! `tests/fixtures/agents/captured/` (see its `CAPTURED.md`: Claude Code 2.1.197 and Codex
//! 0.169.0 against the fake model server) goes through the daemon's parser with the stdout,
//! stderr and exit code the CLI really gave, and its verdict, [`FailureKind`], usage-limit
//! reset time, session id and user-facing reason are checked.
//!
//! Reset times: the captures ran with `TZ=UTC` (their `meta.json` `env`), and the reset epoch
//! is in `server_script`. The run's end time is not recorded; `tests/real_cli.rs` puts the
//! reset `reset_in_hours(h)` = h hours plus one to two minutes after the run started (and
//! every run took about a second), so the run ended about `h` h 1 min before the reset: that is
//! the clock these tests parse with. A reset printed as a wall-clock time (`resets 10:11pm
//! (UTC)`, `Try again at 10:12 PM.`) is cut to the minute by the CLI; the parser takes the end
//! of that minute, so it must be within a minute after the real epoch, never before it.
//! Codex prints local time without a zone: the parser reads it in the clock's zone (the daemon
//! assumes the agent's host keeps its own zone), UTC here as in the capture.

use std::path::{Path, PathBuf};

use agent_fleet::config::OutputFormat;
use agent_fleet::steps::parse::{
    FAILURE_MAX_BYTES, FailureKind, RunClock, RunOutput, RunReport, TimeZone, parse, parse_at,
};

/// A captured run: what the CLI printed and the capture's metadata.
struct Capture {
    name: String,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    meta: serde_json::Value,
}

fn captured_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/agents/captured")
}

impl Capture {
    /// `cli/scenario` (`claude/auth-401`).
    fn load(name: &str) -> Capture {
        let base = captured_dir().join(name);
        let with = |ext: &str| PathBuf::from(format!("{}.{ext}", base.display()));
        let stdout = ["json", "jsonl", "txt"]
            .iter()
            .map(|ext| with(ext))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no stdout file for {name}"));
        let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let meta = serde_json::from_slice(&read(&with("meta.json"))).expect("meta.json is JSON");
        Capture {
            name: name.to_owned(),
            stdout: read(&stdout),
            stderr: read(&with("stderr.txt")),
            meta,
        }
    }

    fn exit_code(&self) -> Option<i32> {
        self.meta["exit_code"]
            .as_i64()
            .map(|c| i32::try_from(c).expect("an exit code"))
    }

    /// The reset epoch (seconds) in `server_script`: `-unified-reset: N` (Claude) or
    /// `"resets_at":N` (Codex).
    fn reset_epoch(&self) -> u64 {
        let script = self.meta["server_script"].as_str().expect("server_script");
        let at = ["-unified-reset: ", "\"resets_at\":"]
            .iter()
            .find_map(|m| script.find(m).map(|i| &script[i + m.len()..]))
            .unwrap_or_else(|| panic!("no reset epoch in {script}"));
        let digits: String = at.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().expect("epoch seconds")
    }

    /// The format the daemon reads this CLI's output in (the kinds' `output_format`).
    fn format(&self) -> OutputFormat {
        match (self.name.split('/').next(), self.name.ends_with("-stream")) {
            (Some("claude"), false) => OutputFormat::ClaudeJson,
            (Some("claude"), true) => OutputFormat::ClaudeStreamJson,
            _ => OutputFormat::CodexJsonl,
        }
    }

    /// Parses with the run ending at `ended_at_ms` on a UTC host, like the capture.
    fn parse_ending_at(&self, ended_at_ms: u64) -> RunReport {
        assert_eq!(
            self.meta["env"]["TZ"].as_str().unwrap_or("UTC"),
            "UTC",
            "{}: captured in UTC",
            self.name
        );
        let clock = RunClock {
            ended_at_ms,
            zone: TimeZone::UTC,
        };
        parse_at(self.format(), &self.output(), &clock)
    }

    /// Parses as of the capture day (2026-12-02T19:10:30Z); for runs without a reset time.
    fn parse(&self) -> RunReport {
        self.parse_ending_at(CAPTURE_DAY_MS)
    }

    /// Parses with the run's end reconstructed from a reset `hours` ahead (see the module doc).
    fn parse_with_reset_in(&self, hours: u64) -> RunReport {
        self.parse_ending_at((self.reset_epoch() - hours * 3600 - 60) * 1000)
    }

    fn output(&self) -> RunOutput<'_> {
        RunOutput {
            stdout: &self.stdout,
            stderr: &self.stderr,
            exit_code: self.exit_code(),
        }
    }

    /// The session id in the command line (`--resume <id>`, `exec resume … <id> -`).
    fn resumed_session(&self) -> String {
        let argv: Vec<&str> = self.meta["argv"]
            .as_array()
            .expect("argv")
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        let i = argv
            .iter()
            .position(|a| *a == "--resume")
            .map(|i| i + 1)
            .unwrap_or(argv.len() - 2);
        argv[i].to_owned()
    }
}

/// 2026-12-02T19:10:30Z: the day of the capture.
const CAPTURE_DAY_MS: u64 = 1_796_238_630_000;

fn assert_success(report: &RunReport) {
    assert!(report.success, "expected a success: {report:#?}");
    assert_eq!(report.failure, None);
    assert_eq!(report.kind, None);
    assert_eq!(report.retry_at_ms, None);
    assert_eq!(report.reason(), None);
    assert!(!report.usage_limited);
}

/// Asserts a failure of `kind` and returns its (failure line, user-facing reason).
fn assert_failure(report: &RunReport, kind: FailureKind) -> (String, String) {
    assert!(!report.success, "expected a failure: {report:#?}");
    assert_eq!(report.kind, Some(kind), "{report:#?}");
    assert_eq!(report.usage_limited, kind == FailureKind::UsageLimit);
    let failure = report.failure.clone().expect("a failure line");
    let reason = report.reason().expect("a reason");
    assert!(failure.len() <= FAILURE_MAX_BYTES && reason.len() <= FAILURE_MAX_BYTES);
    assert!(!reason.contains('\n'));
    if kind != FailureKind::UsageLimit {
        assert_eq!(report.retry_at_ms, None);
    }
    (failure, reason)
}

/// A reset printed to the minute: within the minute after the real epoch, never before it.
fn assert_reset_within_the_minute(report: &RunReport, epoch_secs: u64) {
    let at = report.retry_at_ms.expect("a reset time");
    let real = epoch_secs * 1000;
    assert!(
        (real..real + 60_000).contains(&at),
        "reset {at} ms, the server's epoch {real} ms"
    );
}

fn has(text: &str, phrase: &str) -> bool {
    text.to_lowercase().contains(&phrase.to_lowercase())
}

/// Every scenario tested here (a new capture without a test fails
/// `every_captured_scenario_has_a_test`).
const SCENARIOS: &[&str] = &[
    "claude/success-commit",
    "claude/success-commit-non-root",
    "claude/success-commit-skip-permissions-non-root",
    "claude/skip-permissions-root-refused",
    "claude/resume",
    "claude/auth-401",
    "claude/server-error-500",
    "claude/server-error-500-then-success",
    "claude/usage-limit-429",
    "claude/usage-limit-429-weekly",
    "claude/usage-limit-429-stream",
    "claude/usage-limit-429-api-key",
    "claude/permission-denied",
    "claude/unknown-argument",
    "claude/cli-missing",
    "codex/success-commit",
    "codex/success-commit-non-root",
    "codex/resume",
    "codex/sandbox-workspace-write-git-read-only",
    "codex/permission-read-only-sandbox",
    "codex/auth-401",
    "codex/auth-401-reconnects",
    "codex/server-error-500",
    "codex/server-error-500-then-success",
    "codex/server-error-500-then-success-reconnects",
    "codex/usage-limit-429",
    "codex/usage-limit-429-days-away",
    "codex/unknown-argument",
    "codex/resume-unknown-argument",
    "codex/cli-missing",
];

#[test]
fn every_captured_scenario_has_a_test() {
    let mut found = Vec::new();
    for cli in ["claude", "codex"] {
        let dir = captured_dir().join(cli);
        for entry in std::fs::read_dir(&dir).expect("captured dir") {
            let name = entry.expect("entry").file_name();
            let name = name.to_string_lossy();
            if let Some(scenario) = name.strip_suffix(".meta.json") {
                found.push(format!("{cli}/{scenario}"));
            }
        }
    }
    found.sort();
    let mut tested: Vec<String> = SCENARIOS.iter().map(|s| (*s).to_owned()).collect();
    tested.sort();
    assert_eq!(found, tested);
}

// ---- Claude Code -----------------------------------------------------------------------------

fn claude_success(scenario: &str, session: &str) {
    let run = Capture::load(scenario);
    assert_eq!(run.exit_code(), Some(0));
    let report = run.parse();
    assert_success(&report);
    assert_eq!(report.summary, "Done: committed HELLO.md.");
    assert_eq!(report.session_id.as_deref(), Some(session));
    assert_eq!(report.turns, Some(2));
}

#[test]
fn claude_commit_as_root_with_allowed_tools_succeeds() {
    claude_success(
        "claude/success-commit",
        "55ee7364-a1e9-4015-a546-05d0a02c8f26",
    );
}

#[test]
fn claude_commit_as_a_non_root_user_succeeds() {
    claude_success(
        "claude/success-commit-non-root",
        "5cf0c956-e165-41a5-8855-1ba29b7d220e",
    );
}

#[test]
fn claude_skip_permissions_as_a_non_root_user_succeeds() {
    claude_success(
        "claude/success-commit-skip-permissions-non-root",
        "f71adcdf-c58f-43f2-acb4-d12ac9a6957d",
    );
}

#[test]
fn claude_resume_succeeds_in_the_same_session() {
    let run = Capture::load("claude/resume");
    let session = run.resumed_session();
    assert_eq!(session, "782f2ace-d3bd-4496-8fc6-7eaa29a10349");
    claude_success("claude/resume", &session);
}

#[test]
fn claude_skip_permissions_as_root_is_a_config_failure_not_retried() {
    let run = Capture::load("claude/skip-permissions-root-refused");
    assert_eq!(run.exit_code(), Some(1));
    let report = run.parse();
    let (failure, reason) = assert_failure(&report, FailureKind::Config);
    assert!(!FailureKind::Config.retryable());
    assert!(
        failure.starts_with("exit code 1: --dangerously-skip-permissions cannot be used with root"),
        "{failure}"
    );
    assert!(
        reason.starts_with("the agent CLI refused to run as root ("),
        "{reason}"
    );
    assert!(has(&reason, "non-root user"), "{reason}");
    assert_eq!(report.session_id, None);
}

#[test]
fn claude_401_is_an_auth_failure_not_retried() {
    let run = Capture::load("claude/auth-401");
    assert_eq!(run.exit_code(), Some(1));
    let report = run.parse();
    let (failure, reason) = assert_failure(&report, FailureKind::Auth);
    assert!(!FailureKind::Auth.retryable());
    assert_eq!(
        failure,
        "API error 401: Invalid API key · Fix external API key; exit code 1"
    );
    assert_eq!(
        reason,
        "authentication failed (API error 401: Invalid API key · Fix external API key): check \
         the agent kind's API key or login (its env / env_from, or the CLI's login on the host)"
    );
    assert_eq!(
        report.session_id.as_deref(),
        Some("74c48ad8-df02-409a-b70d-fc68b76821da")
    );
}

#[test]
fn claude_500_is_a_transient_failure_retried_with_backoff() {
    let run = Capture::load("claude/server-error-500");
    let report = run.parse();
    let (failure, reason) = assert_failure(&report, FailureKind::Transient);
    assert!(FailureKind::Transient.retryable());
    assert!(
        failure.starts_with("API Error: 500 Internal server error"),
        "{failure}"
    );
    assert!(reason.starts_with("the model API failed"), "{reason}");
    assert_eq!(
        report.session_id.as_deref(),
        Some("5f087336-ef6c-47ab-992c-f192da572e87")
    );
}

#[test]
fn claude_500s_then_success_after_the_clis_own_retries_succeeds() {
    claude_success(
        "claude/server-error-500-then-success",
        "9bf15197-6031-46b0-9df2-8bbb6b566c53",
    );
}

#[test]
fn claude_session_limit_is_a_usage_limit_resetting_at_the_printed_time() {
    let run = Capture::load("claude/usage-limit-429");
    assert_eq!(run.exit_code(), Some(1));
    let report = run.parse_with_reset_in(3);
    let (failure, reason) = assert_failure(&report, FailureKind::UsageLimit);
    assert!(
        failure.contains("You've hit your session limit · resets 10:11pm (UTC)"),
        "{failure}"
    );
    assert_reset_within_the_minute(&report, run.reset_epoch());
    assert_eq!(
        reason,
        "usage limit reached (API error 429: You've hit your session limit · resets 10:11pm \
         (UTC)): the agent kind pauses until 2026-12-02T22:12:00Z"
    );
    assert_eq!(
        report.session_id.as_deref(),
        Some("a2738fc8-db5c-49c9-bca3-13770ecf789c")
    );
}

#[test]
fn claude_session_limit_read_after_the_reset_time_of_day_resets_the_next_day() {
    // Parsed a day later than the run (e.g. recovered after a long outage) with the daemon's
    // own clock: the reset is the next 22:11 UTC after *that*, still on a minute boundary.
    let run = Capture::load("claude/usage-limit-429");
    let report = run.parse_ending_at((run.reset_epoch() + 3600) * 1000);
    assert_failure(&report, FailureKind::UsageLimit);
    assert_reset_within_the_minute(&report, run.reset_epoch() + 24 * 3600);
}

#[test]
fn claude_weekly_limit_is_a_usage_limit_resetting_on_the_printed_day() {
    let run = Capture::load("claude/usage-limit-429-weekly");
    let report = run.parse_with_reset_in(50);
    let (failure, _) = assert_failure(&report, FailureKind::UsageLimit);
    assert!(
        failure.contains("You've hit your weekly limit · resets Dec 4, 9:11pm (UTC)"),
        "{failure}"
    );
    assert_reset_within_the_minute(&report, run.reset_epoch());
    assert_eq!(
        report.session_id.as_deref(),
        Some("740dd04c-d4fc-4b54-97d7-8c460135a7c6")
    );
}

#[test]
fn claude_stream_usage_limit_resets_at_the_exact_epoch() {
    let run = Capture::load("claude/usage-limit-429-stream");
    assert_eq!(run.format(), OutputFormat::ClaudeStreamJson);
    // Exact whatever the clock says: the epoch is in the rate_limit_event.
    for ended_at in [CAPTURE_DAY_MS, (run.reset_epoch() + 7 * 3600) * 1000] {
        let report = run.parse_ending_at(ended_at);
        let (failure, reason) = assert_failure(&report, FailureKind::UsageLimit);
        assert!(
            failure.contains("You've hit your session limit"),
            "{failure}"
        );
        assert_eq!(report.retry_at_ms, Some(run.reset_epoch() * 1000));
        assert!(
            reason.ends_with("pauses until 2026-12-02T22:11:30Z"),
            "{reason}"
        );
        assert_eq!(
            report.session_id.as_deref(),
            Some("6dd8f3a9-8d49-4467-b232-d30ecd32461b")
        );
    }
}

#[test]
fn claude_rate_limit_with_an_api_key_is_a_usage_limit_without_a_reset_time() {
    let run = Capture::load("claude/usage-limit-429-api-key");
    let report = run.parse_with_reset_in(3);
    let (failure, reason) = assert_failure(&report, FailureKind::UsageLimit);
    assert!(failure.contains("Request rejected (429)"), "{failure}");
    assert_eq!(report.retry_at_ms, None, "Claude printed no reset time");
    assert!(
        reason.ends_with("the agent kind pauses for the configured pause (no reset time given)"),
        "{reason}"
    );
    assert_eq!(
        report.session_id.as_deref(),
        Some("8d8f47db-4aca-4c7d-ad1f-7112e9e4f0ed")
    );
}

#[test]
fn claude_permission_denial_with_exit_0_is_a_permission_failure_not_retried() {
    let run = Capture::load("claude/permission-denied");
    assert_eq!(run.exit_code(), Some(0));
    let report = run.parse();
    let (failure, reason) = assert_failure(&report, FailureKind::Permission);
    assert!(!FailureKind::Permission.retryable());
    assert_eq!(failure, "permission denied for tool Bash");
    assert_eq!(
        reason,
        "the agent CLI denied the agent a tool (permission denied for tool Bash): allow the tool \
         in the kind's cli_template (permission mode, allowed tools or sandbox)"
    );
    // The model claims success anyway; its words stay the summary.
    assert_eq!(report.summary, "Done: committed HELLO.md.");
    assert_eq!(
        report.session_id.as_deref(),
        Some("642ebb9a-28b0-4e2e-bbbd-53b3ee0311df")
    );
}

#[test]
fn claude_unknown_option_is_a_config_failure_naming_the_option() {
    let run = Capture::load("claude/unknown-argument");
    assert_eq!(run.exit_code(), Some(1));
    let report = run.parse();
    let (failure, reason) = assert_failure(&report, FailureKind::Config);
    assert!(
        failure.starts_with("exit code 1: error: unknown option '--no-such-option'"),
        "{failure}"
    );
    assert_eq!(
        reason,
        "the agent CLI rejected its command line (unknown option or argument) (error: unknown \
         option '--no-such-option'): fix the kind's cli_template / resume_template for this CLI \
         version"
    );
    assert_eq!(report.session_id, None);
}

#[test]
fn claude_missing_cli_is_a_config_failure_saying_not_found() {
    let run = Capture::load("claude/cli-missing");
    assert_eq!(run.exit_code(), Some(127));
    let report = run.parse();
    let (failure, reason) = assert_failure(&report, FailureKind::Config);
    assert!(
        failure.starts_with("exit code 127: sh: 1: claude: not found"),
        "{failure}"
    );
    assert!(
        reason.starts_with("the agent CLI was not found (sh: 1: claude: not found): install it"),
        "{reason}"
    );
}

// ---- Codex -----------------------------------------------------------------------------------

fn codex_success(scenario: &str) -> RunReport {
    let run = Capture::load(scenario);
    assert_eq!(run.exit_code(), Some(0));
    let report = run.parse();
    assert_success(&report);
    // The warning item is a note, not the run's error.
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.starts_with("codex warning: Model metadata for `fake-model` not found")),
        "{:?}",
        report.notes
    );
    report
}

fn thread_started(run: &Capture) -> String {
    let first = run.stdout.split(|b| *b == b'\n').next().expect("a line");
    let event: serde_json::Value = serde_json::from_slice(first).expect("json");
    assert_eq!(event["type"], "thread.started");
    event["thread_id"].as_str().expect("thread_id").to_owned()
}

#[test]
fn codex_commit_succeeds_and_the_model_metadata_warning_is_only_a_note() {
    let report = codex_success("codex/success-commit");
    assert_eq!(report.summary, "Done: committed HELLO.md.");
    assert_eq!(
        report.session_id.as_deref(),
        Some("01a2382a-d5a4-7482-8862-59b9419b5414")
    );
    assert_eq!(report.input_tokens, Some(60));
}

#[test]
fn codex_commit_as_a_non_root_user_succeeds() {
    let run = Capture::load("codex/success-commit-non-root");
    let report = codex_success("codex/success-commit-non-root");
    assert_eq!(report.session_id, Some(thread_started(&run)));
}

#[test]
fn codex_resume_succeeds_in_the_same_thread() {
    let run = Capture::load("codex/resume");
    let report = codex_success("codex/resume");
    assert_eq!(report.session_id, Some(run.resumed_session()));
    assert_eq!(
        report.input_tokens,
        Some(120),
        "thread-cumulative after resume"
    );
}

#[test]
fn codex_workspace_write_sandbox_run_parses_as_a_success_for_the_receipt_check() {
    // The commit failed inside the sandbox, but nothing in the output says so: the run
    // "succeeds" and the daemon's receipt check finds no commit.
    let report = codex_success("codex/sandbox-workspace-write-git-read-only");
    assert!(report.files_changed.is_empty());
}

#[test]
fn codex_read_only_sandbox_run_parses_as_a_success_for_the_receipt_check() {
    let report = codex_success("codex/permission-read-only-sandbox");
    assert!(report.files_changed.is_empty());
}

fn codex_auth(scenario: &str) -> RunReport {
    let run = Capture::load(scenario);
    assert_eq!(run.exit_code(), Some(1));
    let report = run.parse();
    let (failure, reason) = assert_failure(&report, FailureKind::Auth);
    assert!(
        failure.starts_with("unexpected status 401 Unauthorized: invalid x-api-key"),
        "{failure}"
    );
    assert!(
        reason.starts_with(
            "authentication failed (unexpected status 401 Unauthorized: invalid x-api-key"
        ),
        "{reason}"
    );
    assert!(
        has(&reason, "check the agent kind's API key or login"),
        "{reason}"
    );
    assert_eq!(report.session_id, Some(thread_started(&run)));
    report
}

#[test]
fn codex_401_is_an_auth_failure_not_retried() {
    let report = codex_auth("codex/auth-401");
    assert!(
        !report
            .notes
            .iter()
            .any(|n| n.starts_with("codex reconnected"))
    );
}

#[test]
fn codex_401_after_reconnects_is_an_auth_failure_not_retried() {
    let report = codex_auth("codex/auth-401-reconnects");
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.starts_with("codex reconnected 2 times")),
        "{:?}",
        report.notes
    );
}

#[test]
fn codex_500_high_demand_is_a_transient_failure() {
    let run = Capture::load("codex/server-error-500");
    let report = run.parse();
    let (failure, reason) = assert_failure(&report, FailureKind::Transient);
    assert_eq!(
        failure,
        "We’re currently experiencing high demand, which may cause temporary errors; exit code 1"
    );
    assert!(reason.ends_with("retried with backoff"), "{reason}");
    assert_eq!(report.session_id, Some(thread_started(&run)));
}

#[test]
fn codex_500s_retried_silently_then_success_succeeds() {
    let run = Capture::load("codex/server-error-500-then-success");
    let report = codex_success("codex/server-error-500-then-success");
    assert_eq!(report.session_id, Some(thread_started(&run)));
}

#[test]
fn codex_reconnecting_errors_do_not_fail_a_run_that_completes() {
    let run = Capture::load("codex/server-error-500-then-success-reconnects");
    let report = codex_success("codex/server-error-500-then-success-reconnects");
    assert_eq!(report.summary, "Done: committed HELLO.md.");
    assert_eq!(report.session_id, Some(thread_started(&run)));
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.starts_with("codex reconnected 2 times")),
        "{:?}",
        report.notes
    );
}

#[test]
fn codex_usage_limit_resets_at_the_printed_local_time() {
    let run = Capture::load("codex/usage-limit-429");
    assert_eq!(run.exit_code(), Some(1));
    let report = run.parse_with_reset_in(3);
    let (failure, reason) = assert_failure(&report, FailureKind::UsageLimit);
    assert_eq!(
        failure,
        "You’ve hit your usage limit. Try again at 10:12 PM; exit code 1"
    );
    assert_reset_within_the_minute(&report, run.reset_epoch());
    assert!(
        reason.ends_with("pauses until 2026-12-02T22:13:00Z"),
        "{reason}"
    );
    assert_eq!(report.session_id, Some(thread_started(&run)));
}

#[test]
fn codex_usage_limit_local_time_is_read_in_the_daemons_zone() {
    // The same output on a host two hours east of UTC: 10:12 PM there is 20:12 UTC.
    let run = Capture::load("codex/usage-limit-429");
    let clock = RunClock {
        ended_at_ms: (run.reset_epoch() - 3 * 3600 - 60) * 1000,
        zone: TimeZone::fixed(jiff::tz::offset(2)),
    };
    let report = parse_at(run.format(), &run.output(), &clock);
    assert_failure(&report, FailureKind::UsageLimit);
    assert_reset_within_the_minute(&report, run.reset_epoch() - 2 * 3600);
}

#[test]
fn codex_usage_limit_days_away_resets_on_the_printed_date() {
    let run = Capture::load("codex/usage-limit-429-days-away");
    let report = run.parse_with_reset_in(50);
    let (failure, _) = assert_failure(&report, FailureKind::UsageLimit);
    assert!(
        failure.starts_with("You’ve hit your usage limit. Try again at Dec 4th, 2026 9:12 PM"),
        "{failure}"
    );
    assert_reset_within_the_minute(&report, run.reset_epoch());
    // A full date does not depend on when the run ended.
    let later = run.parse_ending_at(CAPTURE_DAY_MS + 36 * 3600 * 1000);
    assert_eq!(later.retry_at_ms, report.retry_at_ms);
}

fn codex_bad_argument(scenario: &str, argument: &str) {
    let run = Capture::load(scenario);
    assert_eq!(run.exit_code(), Some(2));
    let report = run.parse();
    let (failure, reason) = assert_failure(&report, FailureKind::Config);
    assert!(!FailureKind::Config.retryable());
    let said = format!("error: unexpected argument '{argument}' found");
    assert!(
        failure.starts_with(&format!("exit code 2: {said}")),
        "{failure}"
    );
    assert!(
        reason.starts_with(&format!(
            "the agent CLI rejected its command line (unknown option or argument) ({said})"
        )),
        "{reason}"
    );
    assert!(reason.ends_with("fix the kind's cli_template / resume_template for this CLI version"));
    assert_eq!(report.session_id, None);
}

#[test]
fn codex_unknown_argument_is_a_config_failure_naming_the_argument() {
    codex_bad_argument("codex/unknown-argument", "--full-auto");
}

#[test]
fn codex_resume_unknown_argument_is_a_config_failure_naming_the_argument() {
    codex_bad_argument("codex/resume-unknown-argument", "-s");
}

#[test]
fn codex_missing_cli_is_a_config_failure_saying_not_found() {
    let run = Capture::load("codex/cli-missing");
    assert_eq!(run.exit_code(), Some(127));
    let report = run.parse();
    let (failure, reason) = assert_failure(&report, FailureKind::Config);
    assert!(
        failure.starts_with("exit code 127: sh: 1: codex: not found"),
        "{failure}"
    );
    assert!(
        reason.starts_with("the agent CLI was not found (sh: 1: codex: not found): install it"),
        "{reason}"
    );
}

// ---- The daemon's entry point ----------------------------------------------------------------

#[test]
fn the_daemons_parse_gives_the_same_verdicts_and_kinds() {
    // `parse` (the daemon's clock and zone, now) agrees with `parse_at` on everything but the
    // reset times printed as wall-clock times, which depend on the clock and the zone.
    for scenario in SCENARIOS {
        let run = Capture::load(scenario);
        let now = parse(run.format(), &run.output());
        let then = run.parse();
        assert_eq!(now.success, then.success, "{scenario}");
        assert_eq!(now.kind, then.kind, "{scenario}");
        assert_eq!(now.failure, then.failure, "{scenario}");
        assert_eq!(now.session_id, then.session_id, "{scenario}");
        if scenario.ends_with("-stream") {
            assert_eq!(now.retry_at_ms, then.retry_at_ms, "{scenario}");
        }
    }
}
