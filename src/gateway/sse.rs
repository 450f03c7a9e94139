//! Server-Sent Events framing: splits a byte stream into whole events without copying them,
//! so the gateway can pass each event through unchanged (or hold one back) as soon as it is whole.

use bytes::{Bytes, BytesMut};

/// Collects bytes and yields complete events (each with its terminating blank line).
#[derive(Default)]
pub struct EventSplitter {
    buffer: BytesMut,
}

/// The end of the first complete event in `buf`: the index just past its blank line.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            match buf.get(i + 1) {
                Some(b'\n') => return Some(i + 2),
                Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

impl EventSplitter {
    /// Adds a chunk and returns every event it completes.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Bytes> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = event_end(&self.buffer) {
            events.push(self.buffer.split_to(end).freeze());
        }
        events
    }

    /// Whatever is left when the stream ends (an unterminated last event).
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.buffer.is_empty()).then(|| self.buffer.split().freeze())
    }
}

/// The `event:` name and the joined `data:` lines of one event.
pub fn parse_event(raw: &[u8]) -> (Option<&str>, String) {
    let text = std::str::from_utf8(raw).unwrap_or("");
    let mut name = None;
    let mut data = String::new();
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            name = Some(value.trim());
        } else if let Some(value) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    (name, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_chunks() {
        let mut s = EventSplitter::default();
        assert!(s.push(b"data: {\"a\"").is_empty());
        let events = s.push(b":1}\n\ndata: [DONE]\n\nevent: x\n");
        assert_eq!(
            events,
            vec![
                Bytes::from("data: {\"a\":1}\n\n"),
                Bytes::from("data: [DONE]\n\n")
            ]
        );
        assert_eq!(s.push(b"data: y\r\n\r\n").len(), 1);
        assert_eq!(s.finish(), None);
        s.push(b"data: tail");
        assert_eq!(s.finish(), Some(Bytes::from("data: tail")));
    }

    #[test]
    fn parses_names_and_data() {
        assert_eq!(
            parse_event(b"event: message_start\ndata: {}\n\n"),
            (Some("message_start"), "{}".to_owned())
        );
        assert_eq!(
            parse_event(b"data: a\ndata: b\n\n"),
            (None, "a\nb".to_owned())
        );
        assert_eq!(parse_event(b": comment\n\n"), (None, String::new()));
    }
}
