//! Codex's headless output: `codex exec --json`, one event per line (`thread.started`,
//! `turn.started`, `item.*`, `turn.completed` / `turn.failed`, `error`).
//!
//! The turn's end decides: `turn.completed` is a success, `turn.failed` a failure with its
//! message, and neither (a killed or truncated run) a failure. Top-level `error` events are
//! retries ("Reconnecting... 2/5") and `item.completed` items of type `error` are warnings
//! ("Model metadata for `x` not found"): both become notes, not failures. Failed
//! `command_execution` items are notes too: the agent may have meant them to fail. Usage comes
//! from the last `turn.completed` (after `exec resume` it is cumulative over the thread). See
//! `tests/fixtures/reference/agents/codex/NOTES.md`.

use serde_json::{Map, Value};

use super::text::one_line;
use super::{OrderedSet, Parsed, Verdict, jsonl_objects, plural};

type Object = Map<String, Value>;

/// Reads `codex exec --json` output.
pub(crate) fn parse(stdout: &[u8]) -> Parsed {
    let mut events = Events::default();
    let mut skipped = 0usize;
    for object in jsonl_objects(stdout) {
        match object {
            Some(object) => events.feed(&object),
            None => skipped += 1,
        }
    }
    if events.known == 0 {
        let why = if stdout.trim_ascii().is_empty() {
            "empty output"
        } else {
            "no Codex events found"
        };
        return Parsed::new(Verdict::Invalid(why.to_owned()));
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

fn str_of<'a>(object: &'a Object, key: &str) -> Option<&'a str> {
    object.get(key).and_then(Value::as_str)
}

fn u64_of(object: &Object, key: &str) -> Option<u64> {
    object.get(key).and_then(Value::as_u64)
}

#[derive(Debug)]
enum TurnEnd {
    Completed,
    Failed(String),
}

#[derive(Debug, Default)]
struct Events {
    /// Events of a known Codex type.
    known: usize,
    thread_id: Option<String>,
    turn_end: Option<TurnEnd>,
    usage: Option<Object>,
    last_message: Option<String>,
    files: OrderedSet,
    warnings: Vec<String>,
    reconnects: usize,
    last_reconnect: Option<String>,
    errors: Vec<String>,
    failed_commands: usize,
    last_failed_command: Option<(String, Option<i64>)>,
    declined_commands: usize,
    failed_tool_calls: usize,
    error_texts: Vec<String>,
}

impl Events {
    fn feed(&mut self, event: &Object) {
        let Some(kind) = str_of(event, "type") else {
            return;
        };
        match kind {
            "thread.started" => {
                self.known += 1;
                if self.thread_id.is_none() {
                    self.thread_id = str_of(event, "thread_id").map(str::to_owned);
                }
            }
            "turn.completed" => {
                self.known += 1;
                self.turn_end = Some(TurnEnd::Completed);
                if let Some(usage) = event.get("usage").and_then(Value::as_object) {
                    self.usage = Some(usage.clone());
                }
            }
            "turn.failed" => {
                self.known += 1;
                let message = event
                    .get("error")
                    .and_then(Value::as_object)
                    .and_then(|e| str_of(e, "message"))
                    .filter(|m| !m.trim().is_empty())
                    .unwrap_or("the turn failed without a message");
                self.error_texts.push(message.to_owned());
                self.turn_end = Some(TurnEnd::Failed(message.to_owned()));
            }
            "error" => {
                self.known += 1;
                let message = str_of(event, "message").unwrap_or("(no message)");
                self.error_texts.push(message.to_owned());
                if message.starts_with("Reconnecting") {
                    self.reconnects += 1;
                    self.last_reconnect = Some(message.to_owned());
                } else {
                    self.errors.push(message.to_owned());
                }
            }
            "item.completed" => {
                self.known += 1;
                if let Some(item) = event.get("item").and_then(Value::as_object) {
                    self.item(item);
                }
            }
            "turn.started" | "item.started" | "item.updated" | "item.plan.delta"
            | "request_user_input" => self.known += 1,
            _ => {}
        }
    }

    fn item(&mut self, item: &Object) {
        let status = str_of(item, "status");
        match str_of(item, "type") {
            Some("agent_message") => {
                if let Some(text) = str_of(item, "text") {
                    self.last_message = Some(text.to_owned());
                }
            }
            Some("file_change") if !matches!(status, Some("failed" | "declined")) => {
                for change in item
                    .get("changes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_object)
                {
                    if let Some(path) = str_of(change, "path").filter(|p| !p.is_empty()) {
                        self.files.insert(path);
                    }
                }
            }
            Some("command_execution") => match status {
                Some("failed") => {
                    self.failed_commands += 1;
                    let command = str_of(item, "command").unwrap_or("(unknown command)");
                    let exit = item.get("exit_code").and_then(Value::as_i64);
                    self.last_failed_command = Some((command.to_owned(), exit));
                }
                Some("declined") => self.declined_commands += 1,
                _ => {}
            },
            Some("mcp_tool_call")
                if status == Some("failed") || item.get("error").is_some_and(|e| !e.is_null()) =>
            {
                self.failed_tool_calls += 1;
            }
            Some("error") => {
                // A warning of the CLI's (`Model metadata for `x` not found`), not the run's
                // error: a note only, never searched for the failure's kind.
                let message = str_of(item, "message").unwrap_or("(no message)");
                self.warnings.push(message.to_owned());
            }
            _ => {}
        }
    }

    fn finish(self) -> Parsed {
        let failure_message = match &self.turn_end {
            Some(TurnEnd::Failed(message)) => Some(message.clone()),
            _ => None,
        };
        let mut parsed = match self.turn_end {
            Some(TurnEnd::Completed) => {
                let mut parsed = Parsed::new(Verdict::Success);
                parsed.final_message = Some(self.last_message.unwrap_or_default());
                parsed
            }
            Some(TurnEnd::Failed(message)) => {
                let mut parsed = Parsed::new(Verdict::Failure(vec![one_line(&message, 250)]));
                parsed.final_message = Some(self.last_message.unwrap_or_default());
                parsed
            }
            None => {
                let mut reason = "the run ended without completing its turn".to_owned();
                if let Some(last) = self.errors.last() {
                    reason.push_str(&format!(" (last error: {})", one_line(last, 200)));
                }
                let mut parsed = Parsed::new(Verdict::Failure(vec![reason]));
                parsed.notes.push(if self.last_message.is_some() {
                    "no turn.completed or turn.failed event; the summary is the last agent message"
                        .to_owned()
                } else {
                    "no turn.completed or turn.failed event; kept as raw text".to_owned()
                });
                parsed.final_message = self.last_message;
                parsed
            }
        };
        parsed.session_id = self.thread_id;
        if let Some(usage) = &self.usage {
            parsed.input_tokens = u64_of(usage, "input_tokens");
            parsed.output_tokens = u64_of(usage, "output_tokens");
            parsed.cache_read_tokens = u64_of(usage, "cached_input_tokens");
            parsed.cache_write_tokens = u64_of(usage, "cache_write_input_tokens");
        }
        parsed.files_changed = self.files.into_vec();

        let notes = &mut parsed.notes;
        for warning in &self.warnings {
            notes.push(format!("codex warning: {warning}"));
        }
        if self.reconnects > 0 {
            let last = self.last_reconnect.as_deref().unwrap_or_default();
            notes.push(format!(
                "codex reconnected {} (last: {last})",
                plural(self.reconnects, "time", "times")
            ));
        }
        for error in &self.errors {
            if failure_message.as_deref() != Some(error.as_str()) {
                notes.push(format!("codex error: {error}"));
            }
        }
        if let Some((command, exit)) = &self.last_failed_command {
            let exit = exit.map_or_else(String::new, |code| format!(", exit {code}"));
            notes.push(format!(
                "{} failed (last: {}{exit})",
                plural(self.failed_commands, "tool command", "tool commands"),
                one_line(command, 120)
            ));
        }
        if self.declined_commands > 0 {
            notes.push(format!(
                "{} declined",
                plural(
                    self.declined_commands,
                    "tool command was",
                    "tool commands were"
                )
            ));
        }
        if self.failed_tool_calls > 0 {
            notes.push(format!(
                "{} failed",
                plural(self.failed_tool_calls, "MCP tool call", "MCP tool calls")
            ));
        }
        parsed.error_texts = self.error_texts;
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completed_turn_with_warnings_succeeds() {
        let stdout = br#"{"type":"thread.started","thread_id":"t-1"}
{"type":"item.completed","item":{"id":"item_0","type":"error","message":"Model metadata not found"}}
{"type":"turn.started"}
{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"first"}}
{"type":"item.completed","item":{"id":"item_2","type":"file_change","changes":[{"path":"a.rs","kind":"add"},{"path":"b.rs","kind":"update"}],"status":"completed"}}
{"type":"item.completed","item":{"id":"item_3","type":"file_change","changes":[{"path":"c.rs","kind":"add"}],"status":"failed"}}
{"type":"item.completed","item":{"id":"item_4","type":"file_change","changes":[{"path":"a.rs","kind":"update"}],"status":"completed"}}
{"type":"item.completed","item":{"id":"item_5","type":"agent_message","text":"last"}}
{"type":"turn.completed","usage":{"input_tokens":10,"cached_input_tokens":4,"output_tokens":2}}"#;
        let parsed = parse(stdout);
        assert_eq!(parsed.verdict, Verdict::Success);
        assert_eq!(parsed.session_id.as_deref(), Some("t-1"));
        assert_eq!(parsed.final_message.as_deref(), Some("last"));
        assert_eq!(parsed.files_changed, ["a.rs", "b.rs"]);
        assert_eq!(parsed.input_tokens, Some(10));
        assert_eq!(parsed.cache_read_tokens, Some(4));
        assert_eq!(parsed.cache_write_tokens, None);
        assert_eq!(parsed.notes, ["codex warning: Model metadata not found"]);
        assert!(parsed.error_texts.is_empty(), "{:?}", parsed.error_texts);
    }

    #[test]
    fn a_truncated_run_fails_and_names_its_last_error() {
        let stdout = br#"{"type":"thread.started","thread_id":"t-2"}
{"type":"turn.started"}
{"type":"error","message":"stream disconnected before completion"}
{"type":"item.completed","item":{"id":"item_0","type":"agent_mes"#;
        let parsed = parse(stdout);
        assert_eq!(
            parsed.verdict,
            Verdict::Failure(vec![
                "the run ended without completing its turn (last error: stream disconnected before completion)"
                    .to_owned()
            ])
        );
        assert_eq!(parsed.session_id.as_deref(), Some("t-2"));
        assert_eq!(parsed.final_message, None);
        assert!(
            parsed
                .notes
                .contains(&"1 line was not JSON and skipped".to_owned())
        );
        assert!(
            parsed
                .notes
                .contains(&"codex error: stream disconnected before completion".to_owned())
        );
    }

    #[test]
    fn output_without_codex_events_is_invalid() {
        assert_eq!(
            parse(b"").verdict,
            Verdict::Invalid("empty output".to_owned())
        );
        assert_eq!(
            parse(b"{\"type\":\"result\"}\nhello\n").verdict,
            Verdict::Invalid("no Codex events found".to_owned())
        );
    }

    #[test]
    fn declined_commands_and_failed_mcp_calls_are_notes() {
        let stdout = br#"{"type":"item.completed","item":{"id":"i","type":"command_execution","command":"rm -rf /","status":"declined"}}
{"type":"item.completed","item":{"id":"j","type":"mcp_tool_call","server":"s","tool":"t","error":{"message":"boom"},"status":"failed"}}
{"type":"turn.completed","usage":{"input_tokens":-1}}"#;
        let parsed = parse(stdout);
        assert_eq!(parsed.verdict, Verdict::Success);
        assert_eq!(parsed.input_tokens, None);
        assert_eq!(
            parsed.notes,
            ["1 tool command was declined", "1 MCP tool call failed"]
        );
    }
}
