//! The part of the Server-Sent Events format (WHATWG HTML, "event stream interpretation") the
//! change feed needs: bytes in, events out. Lines end with `\n` or `\r\n`; `data:` lines are
//! joined with `\n`, `event:` and `id:` kept, comments (`:`) and `retry:` skipped; a blank line
//! ends an event, and an event without data is none.

/// One event of the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: String,
}

/// Reads an event stream as its bytes arrive, in any chunks.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes not yet read as lines (at most one partial line after [`Parser::next_event`]).
    pending: Vec<u8>,
    /// The event being read.
    current: SseEvent,
    /// Whether a `data:` line was read for it.
    has_data: bool,
}

impl Parser {
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next complete event in what was pushed, if any.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.pending.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if let Some(event) = self.line(&String::from_utf8_lossy(&line)) {
                return Some(event);
            }
        }
        None
    }

    /// Reads one line; a blank one dispatches the event read so far (if it has data).
    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let mut event = std::mem::take(&mut self.current);
            let has_data = std::mem::take(&mut self.has_data);
            if !has_data {
                return None;
            }
            if event.data.ends_with('\n') {
                event.data.pop();
            }
            return Some(event);
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => {
                self.current.data.push_str(value);
                self.current.data.push('\n');
                self.has_data = true;
            }
            "event" => self.current.event = Some(value.to_string()),
            "id" if !value.contains('\0') => self.current.id = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&str]) -> Vec<SseEvent> {
        let mut parser = Parser::default();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.push(chunk.as_bytes());
            while let Some(e) = parser.next_event() {
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn an_event_has_its_id_kind_and_data() {
        let got = events(&["id: 7\nevent: step\ndata: {\"seq\":7}\n\n"]);
        assert_eq!(
            got,
            [SseEvent {
                event: Some("step".into()),
                id: Some("7".into()),
                data: "{\"seq\":7}".into(),
            }]
        );
    }

    #[test]
    fn events_split_anywhere_across_chunks_come_out_whole() {
        let text = "id: 1\nevent: started\ndata: a\n\nid: 2\r\ndata: b\r\n\r\n";
        let whole = events(&[text]);
        for cut in 0..text.len() {
            assert_eq!(events(&[&text[..cut], &text[cut..]]), whole, "cut at {cut}");
        }
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[1].data, "b");
    }

    #[test]
    fn comments_and_events_without_data_are_skipped_and_data_lines_joined() {
        let got = events(&[": keep-alive\n\nevent: x\n\ndata: one\ndata:two\nretry: 5\n\n"]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, "one\ntwo");
        assert_eq!(got[0].event, None);
    }
}
