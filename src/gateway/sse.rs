//! Server-Sent Events framing: splits a byte stream into whole events without copying them (an
//! event is a slice of the chunk it arrived in; only an event split across chunks is joined),
//! so the gateway can pass each event through unchanged (or hold one back) as soon as it is
//! whole, and read its data in place.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

/// Collects bytes and yields complete events (each with its terminating blank line).
#[derive(Default)]
pub struct EventSplitter {
    /// The latest chunk's events not yet taken (shared with the chunk, not copied).
    chunk: Bytes,
    /// The start of an event that continues in the next chunk, and what arrived after it.
    carry: BytesMut,
    /// Where the search for the end of the event in `carry` resumes.
    scanned: usize,
}

/// The end of the first complete event in `buf`, searching from `from`: the index just past its
/// blank line.
fn event_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(at) = buf
        .get(i..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
    {
        let nl = i + at;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

impl EventSplitter {
    /// Adds a chunk; take the events it completes with [`EventSplitter::next_event`].
    pub fn push(&mut self, chunk: Bytes) {
        if self.carry.is_empty() && self.chunk.is_empty() {
            self.chunk = chunk;
        } else {
            if !self.chunk.is_empty() {
                self.carry
                    .extend_from_slice(&std::mem::take(&mut self.chunk));
            }
            self.carry.extend_from_slice(&chunk);
        }
    }

    /// The next complete event, if one is whole.
    pub fn next_event(&mut self) -> Option<Bytes> {
        if !self.carry.is_empty() {
            return match event_end(&self.carry, self.scanned) {
                Some(end) => {
                    self.scanned = 0;
                    Some(self.carry.split_to(end).freeze())
                }
                None => {
                    // A blank line may start in the last two bytes and end in the next chunk.
                    self.scanned = self.carry.len().saturating_sub(2);
                    None
                }
            };
        }
        if self.chunk.is_empty() {
            return None;
        }
        match event_end(&self.chunk, 0) {
            Some(end) => Some(self.chunk.split_to(end)),
            None => {
                self.carry
                    .extend_from_slice(&std::mem::take(&mut self.chunk));
                self.scanned = self.carry.len().saturating_sub(2);
                None
            }
        }
    }

    /// Whatever is left when the stream ends (an unterminated last event).
    pub fn finish(&mut self) -> Option<Bytes> {
        if !self.chunk.is_empty() {
            self.carry
                .extend_from_slice(&std::mem::take(&mut self.chunk));
        }
        self.scanned = 0;
        (!self.carry.is_empty()).then(|| self.carry.split().freeze())
    }
}

/// The `event:` name and the `data:` lines of one event: the one data line as it is in the
/// event (the common case), several joined by newlines.
pub fn parse_event(raw: &[u8]) -> (Option<&str>, Cow<'_, str>) {
    let text = std::str::from_utf8(raw).unwrap_or("");
    let mut name = None;
    let mut data: Option<Cow<'_, str>> = None;
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            name = Some(value.trim());
        } else if let Some(value) = line.strip_prefix("data:") {
            let value = value.strip_prefix(' ').unwrap_or(value);
            data = Some(match data {
                None => Cow::Borrowed(value),
                Some(joined) => {
                    let mut joined = joined.into_owned();
                    joined.push('\n');
                    joined.push_str(value);
                    Cow::Owned(joined)
                }
            });
        }
    }
    (name, data.unwrap_or(Cow::Borrowed("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(s: &mut EventSplitter, chunk: &'static [u8]) -> Vec<Bytes> {
        s.push(Bytes::from_static(chunk));
        std::iter::from_fn(|| s.next_event()).collect()
    }

    #[test]
    fn splits_events_across_chunks() {
        let mut s = EventSplitter::default();
        assert!(push(&mut s, b"data: {\"a\"").is_empty());
        let events = push(&mut s, b":1}\n\ndata: [DONE]\n\nevent: x\n");
        assert_eq!(
            events,
            vec![
                Bytes::from("data: {\"a\":1}\n\n"),
                Bytes::from("data: [DONE]\n\n")
            ]
        );
        assert_eq!(push(&mut s, b"data: y\r\n\r\n").len(), 1);
        assert_eq!(s.finish(), None);
        push(&mut s, b"data: tail");
        assert_eq!(s.finish(), Some(Bytes::from("data: tail")));
        // A blank line cut between two chunks, and one chunk carrying whole events and a part.
        assert!(push(&mut s, b"data: a\n").is_empty());
        assert_eq!(
            push(&mut s, b"\ndata: b\n\nda"),
            ["data: a\n\n", "data: b\n\n"]
        );
        assert_eq!(push(&mut s, b"ta: c\n\n"), ["data: c\n\n"]);
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn parses_names_and_data() {
        let (name, data) = parse_event(b"event: message_start\ndata: {}\n\n");
        assert_eq!((name, data.as_ref()), (Some("message_start"), "{}"));
        assert!(
            matches!(data, Cow::Borrowed(_)),
            "one data line is not copied"
        );
        assert_eq!(parse_event(b"data: a\ndata: b\n\n").1, "a\nb");
        assert_eq!(parse_event(b": comment\n\n"), (None, Cow::Borrowed("")));
    }
}
