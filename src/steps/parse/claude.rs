//! Claude Code's headless output: `claude -p --output-format json` (one `result` object, found
//! even among warning lines, pretty-printed, or as the last `result` of a JSON array of
//! messages) and `--output-format stream-json --verbose` (one event per line; the last `result`
//! event decides).
//!
//! A `result` is a failure when `is_error` is true (API errors come with `subtype:"success"`),
//! when `subtype` is not `success` (`error_max_turns` has no `result` text, only `errors[]`), or
//! when `permission_denials` is not empty (such runs exit 0 with `subtype:"success"`). A stream
//! without a `result` line is a failure too. See `tests/fixtures/reference/agents/claude/NOTES.md`.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::text::{mentions_usage_limit, one_line};
use super::{OrderedSet, Parsed, Verdict, jsonl_objects, plural};

type Object = Map<String, Value>;

/// Tools whose `input.file_path` (`notebook_path` for NotebookEdit) is a file they write.
const WRITING_TOOLS: [&str; 4] = ["Write", "Edit", "MultiEdit", "NotebookEdit"];
/// Upper bound on the bytes the search for a `result` object may parse (see
/// [`find_last_result`]); keeps adversarial output linear-ish.
const RESULT_SEARCH_BUDGET: usize = 256 * 1024 * 1024;
/// Longest last assistant text kept while reading a stream.
const LAST_TEXT_MAX_BYTES: usize = 64 * 1024;
/// Most `errors[]` entries and permission denials read from a result.
const MAX_LISTED: usize = 20;

/// Reads `--output-format json` output.
pub(crate) fn parse_json(stdout: &[u8]) -> Parsed {
    match find_last_result(stdout) {
        Some(found) => {
            let mut parsed = found.read();
            if found.surrounded {
                parsed
                    .notes
                    .push("stdout had other text around the result object (ignored)".to_owned());
            }
            parsed
        }
        None => Parsed::new(Verdict::Invalid(no_result_reason(stdout))),
    }
}

/// Reads `--output-format stream-json` output.
pub(crate) fn parse_stream(stdout: &[u8]) -> Parsed {
    let mut events = Events::default();
    let mut skipped = 0usize;
    for object in jsonl_objects(stdout) {
        match object {
            Some(object) => events.feed(&object),
            None => skipped += 1,
        }
    }
    if events.known == 0 {
        // Not a stream. Perhaps the one-object json format (possibly pretty-printed)?
        return match find_last_result(stdout) {
            Some(found) => {
                let mut parsed = found.read();
                parsed
                    .notes
                    .push("the output is one result object, not a stream".to_owned());
                parsed
            }
            None if stdout.trim_ascii().is_empty() => {
                Parsed::new(Verdict::Invalid("empty output".to_owned()))
            }
            None => Parsed::new(Verdict::Invalid("no Claude stream events found".to_owned())),
        };
    }
    let mut parsed = events.finish();
    if skipped > 0 {
        parsed.notes.push(format!(
            "{} not JSON and skipped",
            plural(skipped, "line was", "lines were")
        ));
    }
    parsed
}

fn no_result_reason(stdout: &[u8]) -> String {
    if stdout.trim_ascii().is_empty() {
        "empty output".to_owned()
    } else {
        "no result object found".to_owned()
    }
}

/// A `result` object (or a JSON array of messages holding one) found in the output.
struct Found {
    value: Value,
    /// Other text came before or after it.
    surrounded: bool,
}

impl Found {
    fn read(&self) -> Parsed {
        let mut events = Events::default();
        match &self.value {
            Value::Array(items) => items
                .iter()
                .filter_map(Value::as_object)
                .for_each(|item| events.feed(item)),
            Value::Object(object) => events.feed(object),
            _ => {}
        }
        events.finish()
    }
}

/// The last JSON value that is a `type:"result"` object, or an array holding one, among the
/// values starting a line (after blanks). Searched from the end, so trailing garbage and
/// leading warnings cost little; gives up once [`RESULT_SEARCH_BUDGET`] bytes may have been
/// parsed.
fn find_last_result(bytes: &[u8]) -> Option<Found> {
    let first = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
    let content_end = bytes.len()
        - bytes
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
    let mut budget = RESULT_SEARCH_BUDGET;
    let mut line_end = bytes.len();
    loop {
        let line_start = bytes[..line_end]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let start = line_start
            + bytes[line_start..line_end]
                .iter()
                .take_while(|b| matches!(b, b' ' | b'\t' | b'\r'))
                .count();
        if start < line_end && matches!(bytes[start], b'{' | b'[') {
            let cost = bytes.len() - start;
            if cost > budget {
                return None;
            }
            budget -= cost;
            let mut values =
                serde_json::Deserializer::from_slice(&bytes[start..]).into_iter::<Value>();
            if let Some(Ok(value)) = values.next() {
                let end = start + values.byte_offset();
                let holds_result = match &value {
                    Value::Array(items) => items.iter().any(is_result),
                    other => is_result(other),
                };
                if holds_result {
                    return Some(Found {
                        value,
                        surrounded: start != first || end < content_end,
                    });
                }
            }
        }
        if line_start == 0 {
            return None;
        }
        line_end = line_start - 1;
    }
}

fn is_result(value: &Value) -> bool {
    value.get("type").and_then(Value::as_str) == Some("result")
}

fn str_of<'a>(object: &'a Object, key: &str) -> Option<&'a str> {
    object.get(key).and_then(Value::as_str)
}

fn u64_of(object: &Object, key: &str) -> Option<u64> {
    object.get(key).and_then(Value::as_u64)
}

/// What a stream (or a JSON array of messages, or one result object) told so far.
#[derive(Debug, Default)]
struct Events {
    /// Events of a known Claude type.
    known: usize,
    init_session: Option<String>,
    any_session: Option<String>,
    result: Option<Object>,
    /// The text of the last top-level assistant message: (message id, text).
    last_text: Option<(Option<String>, String)>,
    /// Writing tool uses: (tool_use id, path).
    writes: Vec<(Option<String>, String)>,
    tool_names: HashMap<String, String>,
    failed_tool_calls: usize,
    failed_tool_ids: HashSet<String>,
    failed_tool_names: OrderedSet,
    api_retries: usize,
    last_retry_status: Option<u64>,
    retried_on_429: bool,
    rate_limit_rejections: OrderedSet,
    /// The last rejected limit's `resetsAt` (Unix ms).
    rate_limit_reset_ms: Option<u64>,
    error_texts: Vec<String>,
}

impl Events {
    fn feed(&mut self, event: &Object) {
        let Some(kind) = str_of(event, "type") else {
            return;
        };
        if self.any_session.is_none() {
            self.any_session = str_of(event, "session_id").map(str::to_owned);
        }
        match kind {
            "system" => {
                self.known += 1;
                match str_of(event, "subtype") {
                    Some("init") => {
                        self.init_session = str_of(event, "session_id").map(str::to_owned);
                    }
                    Some("api_retry") => {
                        self.api_retries += 1;
                        self.last_retry_status = u64_of(event, "error_status");
                        self.retried_on_429 |= self.last_retry_status == Some(429);
                        if let Some(error) = str_of(event, "error") {
                            self.error_texts.push(error.to_owned());
                        }
                    }
                    _ => {}
                }
            }
            "assistant" => {
                self.known += 1;
                self.assistant(event);
            }
            "user" => {
                self.known += 1;
                self.user(event);
            }
            "result" => {
                self.known += 1;
                self.result = Some(event.clone());
            }
            "rate_limit_event" => {
                self.known += 1;
                let info = event.get("rate_limit_info").and_then(Value::as_object);
                let status = info.and_then(|i| str_of(i, "status"));
                if status == Some("rejected") {
                    let kind = info
                        .and_then(|i| str_of(i, "rateLimitType"))
                        .unwrap_or("unknown");
                    self.rate_limit_rejections.insert(kind);
                    if let Some(at) = info.and_then(|i| u64_of(i, "resetsAt")).and_then(epoch_ms) {
                        self.rate_limit_reset_ms = Some(at);
                    }
                }
            }
            "stream_event" => self.known += 1,
            _ => {}
        }
    }

    fn assistant(&mut self, event: &Object) {
        let Some(message) = event.get("message").and_then(Value::as_object) else {
            return;
        };
        let mut texts = Vec::new();
        for block in message
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
        {
            match str_of(block, "type") {
                Some("text") => texts.extend(str_of(block, "text")),
                Some("tool_use") => self.tool_use(block),
                _ => {}
            }
        }
        if let Some(error) = str_of(event, "error") {
            // A CLI-made ("<synthetic>") message reporting an API error.
            self.error_texts.push(error.to_owned());
            self.error_texts
                .extend(texts.iter().map(|t| (*t).to_owned()));
        }
        let top_level = event.get("parent_tool_use_id").is_none_or(Value::is_null);
        if !top_level || texts.is_empty() {
            return;
        }
        let id = str_of(message, "id").map(str::to_owned);
        let joined = texts.join("\n");
        match &mut self.last_text {
            // One API message arrives as one line per content block.
            Some((last_id, text)) if id.is_some() && *last_id == id => {
                if text.len() < LAST_TEXT_MAX_BYTES {
                    text.push('\n');
                    text.push_str(&joined);
                }
            }
            _ => self.last_text = Some((id, joined)),
        }
    }

    fn tool_use(&mut self, block: &Object) {
        let id = str_of(block, "id");
        let Some(name) = str_of(block, "name") else {
            return;
        };
        if let Some(id) = id {
            self.tool_names.insert(id.to_owned(), name.to_owned());
        }
        if WRITING_TOOLS.contains(&name) {
            let input = block.get("input").and_then(Value::as_object);
            let path =
                input.and_then(|i| str_of(i, "file_path").or_else(|| str_of(i, "notebook_path")));
            if let Some(path) = path.filter(|p| !p.is_empty()) {
                self.writes.push((id.map(str::to_owned), path.to_owned()));
            }
        }
    }

    fn user(&mut self, event: &Object) {
        let blocks = event
            .get("message")
            .and_then(|m| m.get("content"))
            .and_then(Value::as_array);
        for block in blocks.into_iter().flatten().filter_map(Value::as_object) {
            if str_of(block, "type") != Some("tool_result")
                || block.get("is_error").and_then(Value::as_bool) != Some(true)
            {
                continue;
            }
            self.failed_tool_calls += 1;
            if let Some(id) = str_of(block, "tool_use_id") {
                self.failed_tool_ids.insert(id.to_owned());
                if let Some(name) = self.tool_names.get(id) {
                    self.failed_tool_names.insert(name);
                }
            }
        }
    }

    fn finish(self) -> Parsed {
        let last_text = self.last_text.map(|(_, text)| text);
        let (mut parsed, denied) = match &self.result {
            Some(result) => {
                let (mut parsed, denied, text) = read_result(result);
                parsed.final_message = Some(
                    text.filter(|t| !t.trim().is_empty())
                        .or(last_text)
                        .unwrap_or_default(),
                );
                // 429 retries explain the failure only when the run ended on an error.
                let is_error = result.get("is_error").and_then(Value::as_bool) == Some(true);
                parsed.http_429 |= self.retried_on_429 && is_error;
                (parsed, denied)
            }
            None => {
                let mut parsed = Parsed::new(Verdict::Failure(vec![
                    "the stream ended without a result".to_owned(),
                ]));
                parsed.notes.push(if last_text.is_some() {
                    "the stream has no result line; the summary is the last assistant message"
                        .to_owned()
                } else {
                    "the stream has no result line; kept as raw text".to_owned()
                });
                parsed.final_message = last_text;
                parsed.http_429 = self.retried_on_429;
                (parsed, HashSet::new())
            }
        };
        if parsed.session_id.is_none() {
            parsed.session_id = self.init_session.or(self.any_session);
        }

        let mut files = OrderedSet::default();
        for (id, path) in &self.writes {
            let undone = id
                .as_ref()
                .is_some_and(|id| self.failed_tool_ids.contains(id) || denied.contains(id));
            if !undone {
                files.insert(path);
            }
        }
        parsed.files_changed = files.into_vec();

        if self.failed_tool_calls > 0 {
            let mut note = format!(
                "{} failed",
                plural(self.failed_tool_calls, "tool call", "tool calls")
            );
            if !self.failed_tool_names.is_empty() {
                note.push_str(&format!(
                    " ({})",
                    self.failed_tool_names.as_slice().join(", ")
                ));
            }
            parsed.notes.push(note);
        }
        if self.api_retries > 0 {
            let mut note = format!(
                "the API request was retried {}",
                plural(self.api_retries, "time", "times")
            );
            if let Some(status) = self.last_retry_status {
                note.push_str(&format!(" (last status {status})"));
            }
            parsed.notes.push(note);
        }
        parsed.reset_at_ms = self.rate_limit_reset_ms;
        if !self.rate_limit_rejections.is_empty() {
            let kinds = self.rate_limit_rejections.as_slice().join(", ");
            parsed.notes.push(format!("rate limit rejected ({kinds})"));
            parsed
                .error_texts
                .push(format!("rate limit rejected ({kinds})"));
        }
        parsed.error_texts.extend(self.error_texts);
        parsed
    }
}

/// Reads a `result` object: its verdict and numbers, the ids of the denied tool uses and its
/// `result` text.
fn read_result(result: &Object) -> (Parsed, HashSet<String>, Option<String>) {
    let mut reasons = Vec::new();
    let mut notes = Vec::new();
    let mut error_texts = Vec::new();

    let is_error = result.get("is_error").and_then(Value::as_bool) == Some(true);
    let subtype = str_of(result, "subtype");
    let text = str_of(result, "result");
    let api_status = u64_of(result, "api_error_status");
    let errors: Vec<String> = result
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .take(MAX_LISTED)
        .map(|e| match e {
            Value::String(s) => s.clone(),
            Value::Object(o) => str_of(o, "message").map_or_else(|| e.to_string(), str::to_owned),
            other => other.to_string(),
        })
        .filter(|e| !e.trim().is_empty())
        .collect();
    let failed_subtype = subtype.filter(|s| *s != "success");

    if is_error || failed_subtype.is_some() {
        error_texts.extend(text.map(str::to_owned));
        error_texts.extend(errors.iter().cloned());
        let detail = text
            .filter(|t| is_error && !t.trim().is_empty())
            .map(|t| one_line(t, 200))
            .or_else(|| (!errors.is_empty()).then(|| one_line(&errors.join("; "), 200)));
        let mut reason = match (failed_subtype, detail) {
            (Some(subtype), Some(detail)) => format!("{subtype}: {detail}"),
            (Some(subtype), None) => subtype.to_owned(),
            (None, Some(detail)) => detail,
            (None, None) => "the CLI reported an error".to_owned(),
        };
        if let Some(status) = api_status.filter(|s| !reason.contains(&s.to_string())) {
            reason = format!("API error {status}: {reason}");
        }
        reasons.push(reason);
    } else if let Some(text) = text.filter(|t| is_limit_notice(t)) {
        // Older CLIs printed the usage-limit notice as the result of a "successful" run.
        error_texts.push(text.to_owned());
        reasons.push(one_line(text, 200));
    }

    let mut denied_ids = HashSet::new();
    let mut denied_tools = OrderedSet::default();
    for denial in result
        .get("permission_denials")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .take(MAX_LISTED)
    {
        let tool = str_of(denial, "tool_name").unwrap_or("(unnamed)");
        denied_tools.insert(tool);
        if let Some(id) = str_of(denial, "tool_use_id") {
            denied_ids.insert(id.to_owned());
        }
        let input = denial.get("tool_input").and_then(Value::as_object);
        let what = input.and_then(|i| {
            [
                "command",
                "file_path",
                "notebook_path",
                "url",
                "pattern",
                "path",
            ]
            .iter()
            .find_map(|key| str_of(i, key))
        });
        notes.push(match what {
            Some(what) => format!("permission denied for tool {tool}: {}", one_line(what, 160)),
            None => format!("permission denied for tool {tool}"),
        });
    }
    if !denied_tools.is_empty() {
        let names = denied_tools.as_slice();
        reasons.push(if names.len() == 1 {
            format!("permission denied for tool {}", names[0])
        } else {
            format!("permission denied for tools {}", names.join(", "))
        });
    }

    let mut parsed = Parsed::new(if reasons.is_empty() {
        Verdict::Success
    } else {
        Verdict::Failure(reasons)
    });
    parsed.session_id = str_of(result, "session_id").map(str::to_owned);
    parsed.turns = u64_of(result, "num_turns").and_then(|n| u32::try_from(n).ok());
    parsed.cost_usd = result
        .get("total_cost_usd")
        .or_else(|| result.get("cost_usd"))
        .and_then(Value::as_f64)
        .filter(|c| c.is_finite() && *c >= 0.0);
    if let Some(usage) = result.get("usage").and_then(Value::as_object) {
        parsed.input_tokens = u64_of(usage, "input_tokens");
        parsed.output_tokens = u64_of(usage, "output_tokens");
        parsed.cache_read_tokens = u64_of(usage, "cache_read_input_tokens");
        parsed.cache_write_tokens = u64_of(usage, "cache_creation_input_tokens");
    }
    parsed.http_429 = api_status == Some(429);
    parsed.api_status = api_status;
    parsed.permission_denied = !denied_tools.is_empty();
    parsed.notes = notes;
    parsed.error_texts = error_texts;
    (parsed, denied_ids, text.map(str::to_owned))
}

/// Epoch seconds (Claude's `resetsAt`, ten digits) or milliseconds (thirteen) as Unix ms;
/// `None` for anything else.
fn epoch_ms(n: u64) -> Option<u64> {
    match n {
        1_000_000_000..=9_999_999_999 => Some(n * 1000),
        1_000_000_000_000..=9_999_999_999_999 => Some(n),
        _ => None,
    }
}

/// A `result` text that is nothing but Claude's usage-limit notice ("Claude AI usage limit
/// reached|1753441200", "You've hit your limit · resets 1pm (Europe/Lisbon)", "You've hit your
/// session limit · resets 10:11pm (UTC)").
fn is_limit_notice(text: &str) -> bool {
    let text = text.trim();
    text.len() < 300
        && (text.starts_with("Claude AI usage limit reached")
            || text.starts_with("You've hit your ")
            || text.starts_with("You’ve hit your "))
        && mentions_usage_limit(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESULT: &str = r#"{"type":"result","subtype":"success","is_error":false,"num_turns":1,"result":"Hi","session_id":"s-1","total_cost_usd":0.5,"usage":{"input_tokens":3,"output_tokens":4,"cache_read_input_tokens":5,"cache_creation_input_tokens":6},"permission_denials":[]}"#;

    #[test]
    fn a_result_after_warning_lines_and_before_garbage_is_found() {
        let stdout =
            format!("Warning: something odd\n[deprecated] flag\n{RESULT}\ntrailing junk {{\n");
        let parsed = parse_json(stdout.as_bytes());
        assert_eq!(parsed.verdict, Verdict::Success);
        assert_eq!(parsed.session_id.as_deref(), Some("s-1"));
        assert_eq!(parsed.final_message.as_deref(), Some("Hi"));
        assert_eq!(parsed.input_tokens, Some(3));
        assert_eq!(parsed.output_tokens, Some(4));
        assert_eq!(parsed.cache_read_tokens, Some(5));
        assert_eq!(parsed.cache_write_tokens, Some(6));
        assert_eq!(parsed.cost_usd, Some(0.5));
        assert!(parsed.notes.iter().any(|n| n.contains("other text around")));

        let clean = parse_json(RESULT.as_bytes());
        assert!(clean.notes.is_empty(), "{:?}", clean.notes);
    }

    #[test]
    fn truncated_json_is_invalid() {
        let parsed = parse_json(&RESULT.as_bytes()[..RESULT.len() / 2]);
        assert_eq!(
            parsed.verdict,
            Verdict::Invalid("no result object found".to_owned())
        );
        let parsed = parse_json(b"   \n");
        assert_eq!(parsed.verdict, Verdict::Invalid("empty output".to_owned()));
    }

    #[test]
    fn an_array_of_messages_is_read_like_a_stream() {
        let stdout = format!(
            r#"[{{"type":"system","subtype":"init","session_id":"s-1"}},{{"type":"assistant","message":{{"id":"m","content":[{{"type":"tool_use","id":"t","name":"Edit","input":{{"file_path":"a.rs"}}}}]}}}},{RESULT}]"#
        );
        let parsed = parse_json(stdout.as_bytes());
        assert_eq!(parsed.verdict, Verdict::Success);
        assert_eq!(parsed.files_changed, ["a.rs"]);
    }

    #[test]
    fn a_truncated_stream_keeps_the_init_session_and_last_text() {
        let stdout = br#"{"type":"system","subtype":"init","session_id":"s-9"}
{"type":"assistant","message":{"id":"m1","content":[{"type":"text","text":"Working on it"}]},"parent_tool_use_id":null}
{"type":"assistant","message":{"id":"m2","content":[{"type":"text","text":"sub-agent"}]},"parent_tool_use_id":"t0"}
{"type":"assistant","message":{"id":"m3","cont"#;
        let parsed = parse_stream(stdout);
        assert_eq!(
            parsed.verdict,
            Verdict::Failure(vec!["the stream ended without a result".to_owned()])
        );
        assert_eq!(parsed.session_id.as_deref(), Some("s-9"));
        assert_eq!(parsed.final_message.as_deref(), Some("Working on it"));
        assert!(
            parsed
                .notes
                .contains(&"1 line was not JSON and skipped".to_owned())
        );
    }

    #[test]
    fn a_pretty_printed_result_given_as_a_stream_is_still_read() {
        let pretty =
            serde_json::to_string_pretty(&serde_json::from_str::<Value>(RESULT).expect("valid"))
                .expect("serialize");
        let parsed = parse_stream(pretty.as_bytes());
        assert_eq!(parsed.verdict, Verdict::Success);
        assert_eq!(parsed.session_id.as_deref(), Some("s-1"));
    }

    #[test]
    fn failed_and_denied_writes_are_not_changed_files() {
        let stdout = br#"{"type":"assistant","message":{"id":"m","content":[{"type":"tool_use","id":"a","name":"Write","input":{"file_path":"ok.txt"}},{"type":"tool_use","id":"b","name":"Write","input":{"file_path":"failed.txt"}},{"type":"tool_use","id":"c","name":"Edit","input":{"file_path":"denied.txt"}},{"type":"tool_use","id":"d","name":"NotebookEdit","input":{"notebook_path":"n.ipynb"}},{"type":"tool_use","id":"e","name":"Write","input":{"file_path":"ok.txt"}}]}}
{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"b","is_error":true,"content":"EACCES"},{"type":"tool_result","tool_use_id":"c","is_error":true,"content":"denied"}]}}
{"type":"result","subtype":"success","is_error":false,"result":"done","permission_denials":[{"tool_name":"Edit","tool_use_id":"c","tool_input":{"file_path":"denied.txt"}}]}"#;
        let parsed = parse_stream(stdout);
        assert_eq!(parsed.files_changed, ["ok.txt", "n.ipynb"]);
        assert_eq!(
            parsed.verdict,
            Verdict::Failure(vec!["permission denied for tool Edit".to_owned()])
        );
        assert!(
            parsed
                .notes
                .contains(&"2 tool calls failed (Write, Edit)".to_owned())
        );
        assert!(
            parsed
                .notes
                .contains(&"permission denied for tool Edit: denied.txt".to_owned())
        );
    }

    #[test]
    fn http_429_and_usage_limit_notices_are_usage_limits() {
        let parsed = parse_json(
            br#"{"type":"result","subtype":"success","is_error":true,"api_error_status":429,"result":"API Error: 429 {\"type\":\"error\"}"}"#,
        );
        assert!(parsed.http_429);
        assert_eq!(
            parsed.verdict,
            Verdict::Failure(vec!["API Error: 429 {\"type\":\"error\"}".to_owned()])
        );

        let parsed = parse_json(
            br#"{"type":"result","subtype":"success","is_error":false,"result":"Claude AI usage limit reached|1753441200"}"#,
        );
        assert_eq!(
            parsed.verdict,
            Verdict::Failure(vec!["Claude AI usage limit reached|1753441200".to_owned()])
        );
        assert!(parsed.error_texts.iter().any(|t| mentions_usage_limit(t)));
    }

    #[test]
    fn a_rejected_rate_limit_event_is_an_error_text_with_its_reset() {
        let stdout = br#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1796249490,"rateLimitType":"five_hour"}}
{"type":"rate_limit_event","rate_limit_info":{"status":"allowed","rateLimitType":"seven_day"}}"#;
        let parsed = parse_stream(stdout);
        assert!(
            parsed
                .notes
                .contains(&"rate limit rejected (five_hour)".to_owned())
        );
        assert!(parsed.error_texts.iter().any(|t| mentions_usage_limit(t)));
        assert_eq!(parsed.reset_at_ms, Some(1_796_249_490_000));

        let allowed = br#"{"type":"rate_limit_event","rate_limit_info":{"status":"allowed","resetsAt":1796249490}}"#;
        assert_eq!(parse_stream(allowed).reset_at_ms, None);
    }

    #[test]
    fn odd_field_types_are_ignored() {
        let stdout = br#"{"type":"result","subtype":7,"is_error":"yes","num_turns":-1,"total_cost_usd":"free","usage":[],"errors":{},"permission_denials":"none","session_id":42}"#;
        let parsed = parse_json(stdout);
        assert_eq!(parsed.verdict, Verdict::Success);
        assert_eq!(parsed.turns, None);
        assert_eq!(parsed.cost_usd, None);
        assert_eq!(parsed.session_id, None);
        let huge_turns = br#"{"type":"result","num_turns":99999999999}"#;
        assert_eq!(parse_json(huge_turns).turns, None);
    }
}
