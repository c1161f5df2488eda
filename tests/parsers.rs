//! The output parsers against real CLI output: every file under `tests/fixtures/reference/agents/`
//! (Claude Code 2.1.197 and Codex 0.169 captured against a fake model server, plus older
//! public samples), each with the exit code `captured/CAPTURED.md` documents. Files without a
//! documented exit code (`agents/claude/`, `agents/codex/`) use the one the CLI gives such a
//! run; where the verdict must not depend on it, both are tried.

use std::path::{Path, PathBuf};

use agent_fleet::config::OutputFormat;
use agent_fleet::steps::parse::{
    FAILURE_MAX_BYTES, MAX_NOTES, NOTE_MAX_BYTES, RunOutput, RunReport, SUMMARY_MAX_BYTES, parse,
};

fn agents_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference/agents")
}

fn read(relative: &str) -> Vec<u8> {
    let path = agents_dir().join(relative);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Parses the reference file `stdout_file` (empty stderr).
fn parse_file(format: OutputFormat, stdout_file: &str, exit_code: Option<i32>) -> RunReport {
    parse_bytes(format, &read(stdout_file), b"", exit_code)
}

fn parse_bytes(
    format: OutputFormat,
    stdout: &[u8],
    stderr: &[u8],
    exit_code: Option<i32>,
) -> RunReport {
    parse(
        format,
        &RunOutput {
            stdout,
            stderr,
            exit_code,
        },
    )
}

fn failure(report: &RunReport) -> &str {
    assert!(!report.success, "expected a failure: {report:#?}");
    report
        .failure
        .as_deref()
        .unwrap_or_else(|| panic!("no failure reason: {report:#?}"))
}

/// Costs to the last few bits: serde_json's float parsing is not exactly round-trip.
fn assert_cost(report: &RunReport, expected: f64) {
    let cost = report
        .cost_usd
        .unwrap_or_else(|| panic!("no cost: {report:#?}"));
    assert!(
        (cost - expected).abs() <= expected.abs() * 1e-12,
        "cost {cost}, expected {expected}"
    );
}

fn assert_success(report: &RunReport) {
    assert!(report.success, "expected a success: {report:#?}");
    assert_eq!(report.failure, None);
    assert!(!report.usage_limited);
}

const ALL_FORMATS: [OutputFormat; 4] = [
    OutputFormat::ClaudeJson,
    OutputFormat::ClaudeStreamJson,
    OutputFormat::CodexJsonl,
    OutputFormat::Raw,
];

// ---------------------------------------------------------------------------------------------
// Claude Code, --output-format json (captured)

#[test]
fn claude_json_success_gives_session_turns_tokens_and_cost() {
    let report = parse_file(
        OutputFormat::ClaudeJson,
        "captured/claude/result-success.json",
        Some(0),
    );
    assert_success(&report);
    assert_eq!(report.summary, "Hello! I am a fake model.");
    assert_eq!(
        report.session_id.as_deref(),
        Some("f2289e58-2896-4fdc-ae0a-7e854f748823")
    );
    assert_eq!(report.turns, Some(1));
    assert_eq!(report.input_tokens, Some(25));
    assert_eq!(report.output_tokens, Some(12));
    assert_eq!(report.cache_read_tokens, Some(0));
    assert_eq!(report.cache_write_tokens, Some(0));
    assert_cost(&report, 0.00042500000000000003);
    assert!(report.files_changed.is_empty());
    assert_eq!(report.pr_url, None);
    assert!(report.notes.is_empty(), "{:?}", report.notes);
}

#[test]
fn claude_json_resume_keeps_the_session_id() {
    let report = parse_file(
        OutputFormat::ClaudeJson,
        "captured/claude/result-resume.json",
        Some(0),
    );
    assert_success(&report);
    assert_eq!(
        report.session_id.as_deref(),
        Some("f2289e58-2896-4fdc-ae0a-7e854f748823")
    );
    assert!(report.summary.starts_with("Continuing our conversation"));
    assert_eq!(report.turns, Some(1));
}

#[test]
fn claude_json_tool_use_run_succeeds_without_file_list() {
    // The json format shows no tool uses, so no changed files can be named.
    let report = parse_file(
        OutputFormat::ClaudeJson,
        "captured/claude/result-tooluse.json",
        Some(0),
    );
    assert_success(&report);
    assert_eq!(
        report.summary,
        "Done: I created hello.txt containing 'hello-from-tool'."
    );
    assert_eq!(
        report.session_id.as_deref(),
        Some("9be1c2b8-0f82-4a42-86d4-8914615614c1")
    );
    assert_eq!(report.turns, Some(2));
    assert_eq!(report.input_tokens, Some(50));
    assert_eq!(report.output_tokens, Some(24));
    assert!(report.files_changed.is_empty());
}

#[test]
fn claude_permission_denials_fail_a_run_that_exits_0() {
    let report = parse_file(
        OutputFormat::ClaudeJson,
        "captured/claude/result-permission-denied.json",
        Some(0),
    );
    assert_eq!(failure(&report), "permission denied for tool Bash");
    assert!(!report.usage_limited);
    // The model claims success anyway: the summary keeps its words, the verdict does not.
    assert!(report.summary.starts_with("Done: I created hello.txt"));
    assert_eq!(
        report.session_id.as_deref(),
        Some("f68779cb-b00f-4942-a5f5-14790b8b01cb")
    );
    assert_eq!(report.turns, Some(2));
    assert_cost(&report, 0.0008500000000000001);
    assert_eq!(
        report.notes,
        ["permission denied for tool Bash: echo hello-from-tool > hello.txt && cat hello.txt"]
    );
}

#[test]
fn claude_max_turns_fails_with_the_errors_text_and_keeps_usage() {
    let report = parse_file(
        OutputFormat::ClaudeJson,
        "captured/claude/result-max-turns.json",
        Some(1),
    );
    assert_eq!(
        failure(&report),
        "error_max_turns: Reached maximum number of turns (1); exit code 1"
    );
    assert!(!report.usage_limited);
    assert_eq!(
        report.summary, "",
        "error_max_turns results carry no result text"
    );
    assert_eq!(
        report.session_id.as_deref(),
        Some("e8cb9fc1-81df-4997-85be-2abbccf1d3a2")
    );
    assert_eq!(report.turns, Some(2));
    assert_eq!(report.input_tokens, Some(25));
    assert_eq!(report.output_tokens, Some(12));
    assert_cost(&report, 0.00042500000000000003);
}

#[test]
fn claude_api_errors_fail_despite_subtype_success() {
    let report = parse_file(
        OutputFormat::ClaudeJson,
        "captured/claude/result-error.json",
        Some(1),
    );
    let reason = failure(&report);
    assert!(
        reason.starts_with("API Error: 500 Fake internal server error"),
        "{reason}"
    );
    assert!(reason.ends_with("; exit code 1"), "{reason}");
    assert!(reason.len() <= FAILURE_MAX_BYTES);
    assert!(!report.usage_limited, "a 500 is not a usage limit");
    assert!(report.summary.starts_with("API Error: 500"));
    assert_eq!(
        report.session_id.as_deref(),
        Some("efda43b1-862b-4b18-8edd-450b16184588")
    );
    assert_eq!(report.turns, Some(1));
    assert_cost(&report, 0.0);

    // The same object with exit 0 is still a failure: is_error decides.
    let report = parse_file(
        OutputFormat::ClaudeJson,
        "captured/claude/result-error.json",
        Some(0),
    );
    assert!(failure(&report).starts_with("API Error: 500"));
}

#[test]
fn claude_api_error_without_retries_fails_the_same_way() {
    let report = parse_file(
        OutputFormat::ClaudeJson,
        "captured/claude/result-error-noretry.json",
        Some(1),
    );
    assert!(failure(&report).starts_with("API Error: 500 Fake internal server error"));
    assert_eq!(
        report.session_id.as_deref(),
        Some("f089484b-6396-42ca-982e-9ec9c6c9c75e")
    );
    assert!(!report.usage_limited);
}

#[test]
fn claude_401_failure_names_the_status() {
    let report = parse_file(
        OutputFormat::ClaudeJson,
        "captured/claude/result-error-401.json",
        Some(1),
    );
    assert_eq!(
        failure(&report),
        "API error 401: Invalid API key · Fix external API key; exit code 1"
    );
    assert!(!report.usage_limited);
    assert_eq!(
        report.session_id.as_deref(),
        Some("9cb0a7b0-a8fc-46bd-a6a6-5bd8101d29a2")
    );
}

#[test]
fn claude_text_output_is_raw_and_the_exit_code_decides() {
    let report = parse_file(
        OutputFormat::Raw,
        "captured/claude/result-text.txt",
        Some(0),
    );
    assert_success(&report);
    assert_eq!(report.summary, "Hello! I am a fake model.");
    assert_eq!(report.session_id, None);
    assert!(report.notes.is_empty());

    let report = parse_file(
        OutputFormat::Raw,
        "captured/claude/result-text.txt",
        Some(3),
    );
    assert!(failure(&report).starts_with("exit code 3"));
    assert_eq!(report.summary, "Hello! I am a fake model.");
}

#[test]
fn claude_text_output_read_as_json_is_a_failure_with_a_raw_fallback_note() {
    let report = parse_file(
        OutputFormat::ClaudeJson,
        "captured/claude/result-text.txt",
        Some(0),
    );
    assert_eq!(
        failure(&report),
        "output is not valid claude-json: no result object found"
    );
    assert_eq!(report.summary, "Hello! I am a fake model.");
    assert_eq!(
        report.notes,
        ["output is not valid claude-json (no result object found); kept as raw text"]
    );
}

#[test]
fn claude_refusing_root_bypass_fails_with_its_stderr_line() {
    let stderr = read("captured/claude/bypass-permissions-root-refused.stderr.txt");
    for format in [OutputFormat::ClaudeJson, OutputFormat::ClaudeStreamJson] {
        let report = parse_bytes(format, b"", &stderr, Some(1));
        let reason = failure(&report);
        assert!(
            reason.starts_with(
                "exit code 1: --dangerously-skip-permissions cannot be used with root/sudo privileges"
            ),
            "{reason}"
        );
        assert!(reason.contains("output is not valid"), "{reason}");
        assert!(
            report
                .summary
                .starts_with("--dangerously-skip-permissions cannot be used")
        );
        assert!(report.notes[0].ends_with("(empty output); kept as raw text"));
    }
}

// ---------------------------------------------------------------------------------------------
// Claude Code, --output-format stream-json (captured)

#[test]
fn claude_stream_success_reads_the_result_line() {
    let report = parse_file(
        OutputFormat::ClaudeStreamJson,
        "captured/claude/stream.jsonl",
        Some(0),
    );
    assert_success(&report);
    assert_eq!(report.summary, "Hello! I am a fake model.");
    assert_eq!(
        report.session_id.as_deref(),
        Some("2dea3cb2-ab99-47fd-9b7d-1dad2ebf4509")
    );
    assert_eq!(report.turns, Some(1));
    assert_eq!(report.input_tokens, Some(25));
    assert_eq!(
        report.output_tokens,
        Some(12),
        "from the result, not the per-line usage"
    );
    assert_cost(&report, 0.00042500000000000003);
    assert!(report.notes.is_empty(), "{:?}", report.notes);
}

#[test]
fn claude_stream_partial_message_events_are_ignored() {
    let report = parse_file(
        OutputFormat::ClaudeStreamJson,
        "captured/claude/stream-partial.jsonl",
        Some(0),
    );
    assert_success(&report);
    assert_eq!(report.summary, "Hello! I am a fake model.");
    assert_eq!(
        report.session_id.as_deref(),
        Some("cfe6996a-ace3-4b97-8b9b-109663aa4190")
    );
    assert!(report.notes.is_empty(), "{:?}", report.notes);
}

#[test]
fn claude_stream_bash_tool_use_changes_no_listed_file() {
    // Bash writes hello.txt, but only Write/Edit/MultiEdit/NotebookEdit name their files.
    let report = parse_file(
        OutputFormat::ClaudeStreamJson,
        "captured/claude/stream-tooluse.jsonl",
        Some(0),
    );
    assert_success(&report);
    assert_eq!(
        report.summary,
        "Done: I created hello.txt containing 'hello-from-tool'."
    );
    assert_eq!(
        report.session_id.as_deref(),
        Some("de9add25-b9f1-4eaf-b4c5-b41b2f6ac893")
    );
    assert_eq!(report.turns, Some(2));
    assert!(report.files_changed.is_empty());
    assert!(report.notes.is_empty(), "{:?}", report.notes);
}

#[test]
fn claude_stream_write_tool_lists_the_file_and_a_failed_bash_is_a_note() {
    let report = parse_file(
        OutputFormat::ClaudeStreamJson,
        "captured/claude/stream-rich.jsonl",
        Some(0),
    );
    assert_success(&report);
    assert_eq!(report.files_changed, ["/home/dev/repo-claude/notes.txt"]);
    assert_eq!(report.notes, ["1 tool call failed (Bash)"]);
    assert!(
        report
            .summary
            .starts_with("Wrote notes.txt; the check command failed")
    );
    assert_eq!(
        report.session_id.as_deref(),
        Some("1fb2acca-c0d3-482d-a2d1-b24f88551a09")
    );
    assert_eq!(report.turns, Some(3));
    assert_eq!(report.input_tokens, Some(75));
    assert_eq!(report.output_tokens, Some(36));
    assert_cost(&report, 0.001275);
}

#[test]
fn claude_stream_api_error_fails_and_counts_the_retries() {
    let report = parse_file(
        OutputFormat::ClaudeStreamJson,
        "captured/claude/stream-error.jsonl",
        Some(1),
    );
    let reason = failure(&report);
    assert!(
        reason.starts_with("API Error: 500 Fake internal server error"),
        "{reason}"
    );
    assert!(!report.usage_limited);
    assert_eq!(
        report.session_id.as_deref(),
        Some("94140412-251e-4b18-82e9-5295b898ccee")
    );
    assert_eq!(
        report.notes,
        ["the API request was retried 10 times (last status 500)"]
    );
}

#[test]
fn claude_stream_without_result_line_fails_but_keeps_the_init_session() {
    // The rich stream cut before its result line, as if the process had been killed.
    let full = read("captured/claude/stream-rich.jsonl");
    let text = String::from_utf8(full).expect("utf-8");
    let cut: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains(r#""type":"result""#))
        .collect();
    let mut truncated = cut.join("\n");
    truncated.push_str("\n{\"type\":\"assistant\",\"message\":{\"id\":\"msg_x\",\"con");
    let report = parse_bytes(
        OutputFormat::ClaudeStreamJson,
        truncated.as_bytes(),
        b"",
        None,
    );
    assert_eq!(
        failure(&report),
        "the stream ended without a result; the process was killed (no exit code)"
    );
    assert_eq!(
        report.session_id.as_deref(),
        Some("1fb2acca-c0d3-482d-a2d1-b24f88551a09")
    );
    assert!(
        report.summary.starts_with("Wrote notes.txt"),
        "the last assistant text"
    );
    assert_eq!(report.files_changed, ["/home/dev/repo-claude/notes.txt"]);
    assert_eq!(report.turns, None);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.starts_with("the stream has no result line"))
    );
    assert!(
        report
            .notes
            .contains(&"1 line was not JSON and skipped".to_owned())
    );
}

#[test]
fn claude_stream_read_as_json_finds_the_last_result_line() {
    let report = parse_file(
        OutputFormat::ClaudeJson,
        "captured/claude/stream-rich.jsonl",
        Some(0),
    );
    assert_success(&report);
    assert_eq!(
        report.session_id.as_deref(),
        Some("1fb2acca-c0d3-482d-a2d1-b24f88551a09")
    );
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("other text around the result"))
    );
}

// ---------------------------------------------------------------------------------------------
// Claude Code, older public samples (agents/claude/)

#[test]
fn claude_json_key_order_does_not_matter() {
    // 2.1.x puts "type" last.
    let report = parse_file(
        OutputFormat::ClaudeJson,
        "claude/result-success.json",
        Some(0),
    );
    assert_success(&report);
    assert!(
        report
            .summary
            .starts_with("The tool result confirms the file is `hi`")
    );
    assert_eq!(
        report.session_id.as_deref(),
        Some("d0becfe3-d703-4311-8d8f-bf0ed7139dd7")
    );
    assert_eq!(report.turns, Some(2));
    assert_eq!(report.input_tokens, Some(4));
    assert_eq!(report.output_tokens, Some(171));
    assert_eq!(report.cache_read_tokens, Some(63600));
    assert_eq!(report.cache_write_tokens, Some(5424));
    assert_cost(&report, 0.054201000000000006);
}

#[test]
fn claude_model_not_found_fails_despite_subtype_success() {
    for exit in [Some(0), Some(1)] {
        let report = parse_file(
            OutputFormat::ClaudeJson,
            "claude/result-error-api-404.json",
            exit,
        );
        let reason = failure(&report);
        assert!(
            reason.starts_with(
                "API error 404: There's an issue with the selected model (no-such-model)"
            ),
            "{reason}"
        );
        assert!(!report.usage_limited);
        assert_eq!(
            report.session_id.as_deref(),
            Some("7a995c26-c485-4c08-aa33-071588978c49")
        );
    }
}

#[test]
fn claude_max_turns_with_is_error_true_fails_with_its_usage() {
    let report = parse_file(
        OutputFormat::ClaudeJson,
        "claude/result-error.json",
        Some(1),
    );
    assert_eq!(
        failure(&report),
        "error_max_turns: Reached maximum number of turns (40); exit code 1"
    );
    assert_eq!(report.turns, Some(41));
    assert_eq!(report.input_tokens, Some(2409));
    assert_eq!(report.output_tokens, Some(15946));
    assert_eq!(report.cache_read_tokens, Some(1617801));
    assert_eq!(report.cache_write_tokens, Some(29104));
    assert_cost(&report, 1.4020935000000005);
    assert_eq!(
        report.session_id.as_deref(),
        Some("495cc7e5-d22e-4192-92ba-4ce2d14827a6")
    );
}

#[test]
fn claude_v2_max_turns_with_is_error_false_still_fails() {
    // CLI v2.0 said is_error:false for error_max_turns; the subtype decides. Pretty-printed.
    let report = parse_file(
        OutputFormat::ClaudeJson,
        "claude/result-error_max_turns-2025-11-v2.0.json",
        Some(0),
    );
    assert_eq!(
        failure(&report),
        "error_max_turns; permission denied for tool Bash"
    );
    assert_eq!(
        report.session_id.as_deref(),
        Some("550e8400-e29b-41d4-a716-446655440002")
    );
    assert_eq!(report.turns, Some(2));
    assert_cost(&report, 0.16741);
    assert_eq!(report.notes.len(), 1);
    assert!(report.notes[0].starts_with("permission denied for tool Bash: tree -L 3"));
}

#[test]
fn claude_v2_pretty_printed_success_is_read() {
    let report = parse_file(
        OutputFormat::ClaudeJson,
        "claude/result-success-2025-11-v2.0.json",
        Some(0),
    );
    assert_success(&report);
    assert_eq!(report.summary, "The current directory contains...");
    assert_eq!(
        report.session_id.as_deref(),
        Some("550e8400-e29b-41d4-a716-446655440001")
    );
    assert_eq!(report.turns, Some(2));
    assert_eq!(report.input_tokens, Some(9));
    assert_eq!(report.cache_write_tokens, Some(12871));
    assert_cost(&report, 0.013645);
    assert!(report.notes.is_empty(), "{:?}", report.notes);
}

#[test]
fn claude_2025_stream_reads_total_cost_and_cache_tokens() {
    let report = parse_file(
        OutputFormat::ClaudeStreamJson,
        "claude/stream-json-2025-06-claude-opus-4.jsonl",
        Some(0),
    );
    assert_success(&report);
    assert_eq!(report.summary, "London");
    assert_eq!(
        report.session_id.as_deref(),
        Some("acc21b20-13b3-423c-9191-01925b546d5b")
    );
    assert_cost(&report, 0.2882215);
    assert_eq!(report.cache_write_tokens, Some(15342));
    assert_eq!(report.output_tokens, Some(5));
}

#[test]
fn claude_stream_with_hooks_and_rate_limit_events_succeeds_and_lists_the_write() {
    let report = parse_file(
        OutputFormat::ClaudeStreamJson,
        "claude/stream-json.jsonl",
        Some(0),
    );
    assert_success(&report);
    assert_eq!(report.files_changed, ["/scrubbed/hello.txt"]);
    assert_eq!(
        report.session_id.as_deref(),
        Some("d0becfe3-d703-4311-8d8f-bf0ed7139dd7")
    );
    assert!(
        report
            .summary
            .ends_with("Created `hello.txt` with contents \"hi\".")
    );
    assert!(
        report.notes.is_empty(),
        "allowed rate_limit_events are no remark: {:?}",
        report.notes
    );
}

#[test]
fn claude_stream_model_not_found_fails_with_the_api_status() {
    let report = parse_file(
        OutputFormat::ClaudeStreamJson,
        "claude/stream-json-failure-model-not-found.jsonl",
        Some(1),
    );
    let reason = failure(&report);
    assert!(
        reason.starts_with("API error 404: There's an issue with the selected model"),
        "{reason}"
    );
    assert!(!report.usage_limited);
    assert_eq!(
        report.session_id.as_deref(),
        Some("7a995c26-c485-4c08-aa33-071588978c49")
    );
    assert!(report.files_changed.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Codex, exec --json (captured)

#[test]
fn codex_success_summary_is_the_last_agent_message() {
    let report = parse_file(
        OutputFormat::CodexJsonl,
        "captured/codex/exec-success.jsonl",
        Some(0),
    );
    assert_success(&report);
    // `--output-last-message` wrote the same text to last-message.txt.
    let last_message = String::from_utf8(read("captured/codex/last-message.txt")).expect("utf-8");
    assert_eq!(report.summary, last_message.trim());
    assert_eq!(
        report.session_id.as_deref(),
        Some("01a1ff83-ba51-7e52-a388-69f84787e660")
    );
    assert_eq!(report.turns, None);
    assert_eq!(report.input_tokens, Some(30));
    assert_eq!(report.output_tokens, Some(15));
    assert_eq!(report.cache_read_tokens, Some(0));
    assert_eq!(report.cache_write_tokens, Some(0));
    assert_eq!(report.cost_usd, None);
}

#[test]
fn codex_error_items_are_warnings_not_failures() {
    let report = parse_file(
        OutputFormat::CodexJsonl,
        "captured/codex/exec-success.jsonl",
        Some(0),
    );
    assert_success(&report);
    assert_eq!(report.notes.len(), 1);
    assert!(
        report.notes[0].starts_with("codex warning: Model metadata for `fake-model` not found")
    );
}

#[test]
fn codex_known_model_success_has_no_warning() {
    let report = parse_file(
        OutputFormat::CodexJsonl,
        "captured/codex/exec-success-known-model.jsonl",
        Some(0),
    );
    assert_success(&report);
    assert_eq!(report.summary, "Hello! I am a fake model.");
    assert_eq!(
        report.session_id.as_deref(),
        Some("01a1ff84-948e-7040-831c-34fac600f97d")
    );
    assert!(report.notes.is_empty(), "{:?}", report.notes);
}

#[test]
fn codex_human_format_is_raw_with_the_banner_on_stderr() {
    let stdout = read("captured/codex/exec-success-human.stdout.txt");
    let stderr = read("captured/codex/exec-success-human.stderr.txt");
    let report = parse_bytes(OutputFormat::Raw, &stdout, &stderr, Some(0));
    assert_success(&report);
    assert_eq!(report.summary, "Hello! I am a fake model.");

    // Read as codex-jsonl by mistake: a failure with the text kept.
    let report = parse_bytes(OutputFormat::CodexJsonl, &stdout, &stderr, Some(0));
    assert_eq!(
        failure(&report),
        "output is not valid codex-jsonl: no Codex events found"
    );
    assert_eq!(report.summary, "Hello! I am a fake model.");
}

#[test]
fn codex_command_execution_success_leaves_no_note_but_the_warning() {
    let report = parse_file(
        OutputFormat::CodexJsonl,
        "captured/codex/exec-toolcall.jsonl",
        Some(0),
    );
    assert_success(&report);
    assert_eq!(
        report.summary,
        "Done: hello.txt now contains 'hello-from-codex'."
    );
    assert_eq!(
        report.session_id.as_deref(),
        Some("01a1ff83-bc91-7fe2-99b2-f84c30115262")
    );
    assert_eq!(report.input_tokens, Some(60));
    assert!(
        report.files_changed.is_empty(),
        "a shell command is not a file_change item"
    );
    assert_eq!(report.notes.len(), 1);
    assert!(report.notes[0].starts_with("codex warning:"));
}

#[test]
fn codex_read_only_sandbox_shows_no_command_items_and_still_succeeds() {
    // CAPTURED.md: with the read-only sandbox no command_execution item was emitted at all,
    // though the command ran and failed. The stream cannot tell; the run "succeeds".
    for (file, warnings) in [
        ("captured/codex/exec-toolcall-readonly.jsonl", 1),
        ("captured/codex/exec-toolcall-readonly-gpt55.jsonl", 0),
    ] {
        let report = parse_file(OutputFormat::CodexJsonl, file, Some(0));
        assert_success(&report);
        assert_eq!(
            report.summary, "Done: hello.txt now contains 'hello-from-codex'.",
            "{file}"
        );
        assert!(report.files_changed.is_empty());
        assert_eq!(report.notes.len(), warnings, "{file}: {:?}", report.notes);
    }
}

#[test]
fn codex_failed_command_is_a_note_and_file_change_lists_the_file() {
    let report = parse_file(
        OutputFormat::CodexJsonl,
        "captured/codex/exec-rich.jsonl",
        Some(0),
    );
    assert_success(&report);
    assert_eq!(report.files_changed, ["/home/dev/repo-codex/notes.txt"]);
    assert_eq!(
        report.notes,
        ["1 tool command failed (last: /bin/bash -lc 'wc -l notes.txt && false', exit 1)"]
    );
    assert!(report.summary.starts_with("Added notes.txt (2 lines)"));
    assert_eq!(
        report.session_id.as_deref(),
        Some("01a1ff84-d207-78b3-8dea-7c7b1c459d74")
    );
    assert_eq!(report.input_tokens, Some(90));
    assert_eq!(report.output_tokens, Some(45));
}

#[test]
fn codex_turn_failed_fails_and_reconnects_are_notes() {
    let report = parse_file(
        OutputFormat::CodexJsonl,
        "captured/codex/exec-error.jsonl",
        Some(1),
    );
    assert_eq!(
        failure(&report),
        "We’re currently experiencing high demand, which may cause temporary errors; exit code 1"
    );
    assert!(
        !report.usage_limited,
        "HTTP 500 \"high demand\" is not a usage limit"
    );
    assert_eq!(report.summary, "");
    assert_eq!(
        report.session_id.as_deref(),
        Some("01a1ff83-d1f2-7a33-afc6-85f149c9e846")
    );
    assert_eq!(report.input_tokens, None);
    assert_eq!(report.notes.len(), 2, "{:?}", report.notes);
    assert!(report.notes[0].starts_with("codex warning: Model metadata"));
    assert!(report.notes[1].starts_with("codex reconnected 5 times (last: Reconnecting... 5/5"));
}

#[test]
fn codex_401_turn_failed_names_the_status() {
    let report = parse_file(
        OutputFormat::CodexJsonl,
        "captured/codex/exec-error-401.jsonl",
        Some(1),
    );
    let reason = failure(&report);
    assert!(
        reason.starts_with("unexpected status 401 Unauthorized: Incorrect API key provided"),
        "{reason}"
    );
    assert!(reason.ends_with("; exit code 1"));
    assert!(!report.usage_limited);
    assert_eq!(
        report.session_id.as_deref(),
        Some("01a1ff84-51f4-74d2-b9dd-d6dbe1fdefc3")
    );
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.starts_with("codex reconnected 5 times"))
    );
}

#[test]
fn codex_resume_keeps_the_thread_id_and_warns_about_the_model_switch() {
    let report = parse_file(
        OutputFormat::CodexJsonl,
        "captured/codex/exec-resume.jsonl",
        Some(0),
    );
    assert_success(&report);
    assert_eq!(
        report.session_id.as_deref(),
        Some("01a1ff83-ba51-7e52-a388-69f84787e660")
    );
    assert_eq!(
        report.summary,
        "Continuing: I see 3 user messages in the history."
    );
    assert_eq!(
        report.input_tokens,
        Some(60),
        "thread-cumulative after resume"
    );

    let report = parse_file(
        OutputFormat::CodexJsonl,
        "captured/codex/exec-resume-last.jsonl",
        Some(0),
    );
    assert_success(&report);
    assert_eq!(
        report.session_id.as_deref(),
        Some("01a1ff84-948e-7040-831c-34fac600f97d")
    );
    assert_eq!(report.notes.len(), 2);
    assert!(
        report.notes[0]
            .starts_with("codex warning: This session was recorded with model `gpt-5.5`")
    );
}

#[test]
fn codex_rejected_config_fails_with_the_stderr_error_line() {
    let stderr = read("captured/codex/exec-wire-chat-rejected.stderr.txt");
    let report = parse_bytes(OutputFormat::CodexJsonl, b"", &stderr, Some(1));
    let reason = failure(&report);
    assert!(
        reason.starts_with(
            "exit code 1: Error loading config.toml: `wire_api = \"chat\"` is no longer supported"
        ),
        "{reason}"
    );
    assert!(
        reason.ends_with("output is not valid codex-jsonl: empty output"),
        "{reason}"
    );
    assert!(
        report
            .summary
            .contains("How to fix: set `wire_api = \"responses\"`")
    );
    assert_eq!(report.session_id, None);
}

#[test]
fn codex_typical_stderr_noise_is_neither_a_failure_nor_a_reason() {
    let stderr = read("captured/codex/exec-stderr-typical.txt");
    let stdout = read("captured/codex/exec-success.jsonl");
    let report = parse_bytes(OutputFormat::CodexJsonl, &stdout, &stderr, Some(0));
    assert_success(&report);

    // A crash with only the usual warnings on stderr: the exit code alone is the reason.
    let report = parse_bytes(OutputFormat::CodexJsonl, b"", &stderr, Some(101));
    assert_eq!(
        failure(&report),
        "exit code 101; output is not valid codex-jsonl: empty output"
    );
}

// ---------------------------------------------------------------------------------------------
// Codex, public samples (agents/codex/)

#[test]
fn codex_docs_sample_counts_cached_input_tokens_as_cache_reads() {
    let report = parse_file(
        OutputFormat::CodexJsonl,
        "codex/exec-docs-sample.jsonl",
        Some(0),
    );
    assert_success(&report);
    assert_eq!(
        report.summary,
        "Yep — there’s a `README.md` in the repository root."
    );
    assert_eq!(
        report.session_id.as_deref(),
        Some("0199a213-81c0-7800-8aa1-bbab2a035a53")
    );
    assert_eq!(report.input_tokens, Some(24763));
    assert_eq!(report.cache_read_tokens, Some(24448));
    assert_eq!(report.output_tokens, Some(122));
    assert_eq!(
        report.cache_write_tokens, None,
        "older Codex has no cache_write_input_tokens"
    );
    assert!(report.notes.is_empty(), "{:?}", report.notes);
}

#[test]
fn codex_turn_failed_fails_a_run_that_exits_0() {
    // Third parties report `codex exec` exiting 0 after turn.failed: the stream decides.
    let report = parse_file(OutputFormat::CodexJsonl, "codex/exec-failed.jsonl", Some(0));
    assert_eq!(
        failure(&report),
        "unexpected status 401 Unauthorized: Incorrect API key provided"
    );
    assert!(!report.usage_limited);
    assert_eq!(
        report.session_id.as_deref(),
        Some("0199b7c9-0a11-7c42-8e03-5d2f7b9a1c6e")
    );
    assert!(
        report.notes.is_empty(),
        "the final error repeats the failure: {:?}",
        report.notes
    );
}

#[test]
fn codex_rich_sample_lists_file_changes_once_and_ignores_rate_limit_talk() {
    let report = parse_file(OutputFormat::CodexJsonl, "codex/exec.jsonl", Some(0));
    assert_success(&report);
    assert_eq!(
        report.files_changed,
        ["src/rate_limit.rs", "src/login.rs", "src/lib.rs"]
    );
    assert!(report.summary.starts_with("Added a token-bucket limiter"));
    assert_eq!(report.input_tokens, Some(48211));
    assert_eq!(report.cache_read_tokens, Some(40960));
    assert_eq!(report.output_tokens, Some(2317));
    assert_eq!(
        report.notes,
        [
            "codex warning: command failed; retrying after fixing the compile error",
            "1 tool command failed (last: bash -lc 'cargo test rate_limit', exit 101)",
        ]
    );

    // The agent's work talks about rate limits and HTTP 429; if the run is killed, that is
    // still no usage limit.
    let report = parse_file(OutputFormat::CodexJsonl, "codex/exec.jsonl", None);
    assert_eq!(failure(&report), "the process was killed (no exit code)");
    assert!(!report.usage_limited);
}

// ---------------------------------------------------------------------------------------------
// Usage limits, PR URLs

#[test]
fn usage_limit_failures_pause_dispatch_instead_of_spending_a_retry() {
    let report = parse_bytes(
        OutputFormat::CodexJsonl,
        br#"{"type":"thread.started","thread_id":"t"}
{"type":"turn.started"}
{"type":"error","message":"Reconnecting... 1/5 (exceeded retry limit, last status: 429 Too Many Requests)"}
{"type":"turn.failed","error":{"message":"You've hit your usage limit. Try again later."}}"#,
        b"",
        Some(1),
    );
    assert!(report.usage_limited);
    assert!(failure(&report).starts_with("You've hit your usage limit"));

    let report = parse_bytes(
        OutputFormat::ClaudeJson,
        br#"{"type":"result","subtype":"success","is_error":true,"api_error_status":429,"result":"API Error: Request rejected","session_id":"s"}"#,
        b"",
        Some(1),
    );
    assert!(report.usage_limited);
    assert_eq!(
        failure(&report),
        "API error 429: API Error: Request rejected; exit code 1"
    );
}

#[test]
fn a_pr_url_in_the_final_message_is_reported() {
    let stdout = br#"{"type":"thread.started","thread_id":"t"}
{"type":"item.completed","item":{"id":"item_0","type":"agent_message","text":"Opened https://forge.example.com/acme/widgets/pulls/42 for review."}}
{"type":"turn.completed","usage":{"input_tokens":1,"cached_input_tokens":0,"output_tokens":1}}"#;
    let report = parse_bytes(OutputFormat::CodexJsonl, stdout, b"", Some(0));
    assert_success(&report);
    assert_eq!(
        report.pr_url.as_deref(),
        Some("https://forge.example.com/acme/widgets/pulls/42")
    );
}

// ---------------------------------------------------------------------------------------------
// Robustness over the whole reference directory

fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            all_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn every_reference_file_in_every_format_parses_without_panic_and_within_bounds() {
    let mut files = Vec::new();
    all_files(&agents_dir(), &mut files);
    assert!(
        files.len() >= 45,
        "found only {} reference files",
        files.len()
    );
    for path in &files {
        let bytes = std::fs::read(path).expect("read");
        let halves = [&bytes[..], &bytes[..bytes.len() / 2]];
        for format in ALL_FORMATS {
            for exit_code in [Some(0), Some(1), None] {
                for stdout in halves {
                    for (stdout, stderr) in [(stdout, &b""[..]), (&b""[..], stdout)] {
                        let report = parse_bytes(format, stdout, stderr, exit_code);
                        let context =
                            format!("{} as {format:?}, exit {exit_code:?}", path.display());
                        assert!(report.summary.len() <= SUMMARY_MAX_BYTES, "{context}");
                        assert_eq!(report.success, report.failure.is_none(), "{context}");
                        assert!(
                            report
                                .failure
                                .as_ref()
                                .is_none_or(|f| f.len() <= FAILURE_MAX_BYTES),
                            "{context}"
                        );
                        assert!(report.notes.len() <= MAX_NOTES + 1, "{context}");
                        assert!(
                            report.notes.iter().all(|n| n.len() <= NOTE_MAX_BYTES),
                            "{context}"
                        );
                        if exit_code != Some(0) {
                            assert!(!report.success, "{context}");
                        }
                        if report.success {
                            assert!(!report.usage_limited, "{context}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn session_files_are_not_cli_output_and_never_pass_as_a_success() {
    // On-disk session formats (transcript, rollout), not what the CLIs print: reading them as
    // the CLI formats must not panic and must not look like a successful run.
    let transcript = read("captured/sessions/claude-transcript-rich.jsonl");
    let report = parse_bytes(OutputFormat::ClaudeStreamJson, &transcript, b"", Some(0));
    assert_eq!(failure(&report), "the stream ended without a result");

    let rollout = read("captured/sessions/codex-rollout-rich.jsonl");
    let report = parse_bytes(OutputFormat::CodexJsonl, &rollout, b"", Some(0));
    assert_eq!(
        failure(&report),
        "output is not valid codex-jsonl: no Codex events found"
    );
}
