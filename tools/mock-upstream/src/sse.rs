//! SSE framing and the streamed response body (with delays, aborts, stalls and a drop guard).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream;
use serde_json::Value;
use tokio::time::Instant;

use crate::behaviour::Behaviour;
use crate::stats::{Stats, StreamEnd};

/// How many content chunks `mock-drop-mid-stream` sends before aborting.
const CHUNKS_BEFORE_DROP: usize = 3;
/// Pause before an abort, so hyper flushes what was sent (it discards unflushed output on
/// a body error, which would make the abort look like an empty reply).
const ABORT_DELAY: Duration = Duration::from_millis(20);

/// `data: {json}\n\n` (OpenAI chat/completions framing).
pub fn data(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// `event: <type>\ndata: {json}\n\n` (Anthropic and Responses framing).
pub fn named(event: &str, value: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {value}\n\n"))
}

/// The terminator of OpenAI chat/completions streams.
pub fn done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

/// A protocol's events, split so that behaviours can cut or pace the content.
#[derive(Debug, Default)]
pub struct Parts {
    /// Events before the first content chunk (role chunk, `message_start`, …).
    pub head: Vec<Bytes>,
    /// One event per reply word.
    pub content: Vec<Bytes>,
    /// Events after the content (finish chunk, usage, `[DONE]`, `message_stop`, …).
    pub tail: Vec<Bytes>,
}

/// One event and the pause before it.
#[derive(Debug)]
pub struct Event {
    pub delay: Duration,
    pub data: Bytes,
}

/// What happens after the last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// End the body normally.
    Finish,
    /// Fail the body, so the server aborts the connection.
    Abort,
    /// Never end; wait until the client goes away.
    Stall,
}

/// The full schedule of a streamed body.
#[derive(Debug)]
pub struct Plan {
    pub events: Vec<Event>,
    pub ending: Ending,
}

impl Plan {
    /// Events sent back to back, then `ending`.
    pub fn immediate(events: Vec<Bytes>, ending: Ending) -> Plan {
        let events = events.into_iter().map(|data| Event {
            delay: Duration::ZERO,
            data,
        });
        Plan {
            events: events.collect(),
            ending,
        }
    }
}

/// Lays a protocol's events out according to the behaviour.
pub fn plan(parts: Parts, behaviour: Behaviour) -> Plan {
    match behaviour {
        Behaviour::DropMidStream => {
            let mut events = parts.head;
            events.extend(parts.content.into_iter().take(CHUNKS_BEFORE_DROP));
            Plan::immediate(events, Ending::Abort)
        }
        Behaviour::Chunks { gap, .. } => paced(parts, gap),
        Behaviour::EndEarly => {
            let mut events = parts.head;
            events.extend(parts.content.into_iter().take(CHUNKS_BEFORE_DROP));
            Plan::immediate(events, Ending::Finish)
        }
        Behaviour::SlowFirstToken(delay) => {
            let mut plan = Plan::immediate(flatten(parts), Ending::Finish);
            if let Some(first) = plan.events.first_mut() {
                first.delay = delay;
            }
            plan
        }
        _ => Plan::immediate(flatten(parts), Ending::Finish),
    }
}

fn flatten(parts: Parts) -> Vec<Bytes> {
    let mut events = parts.head;
    events.extend(parts.content);
    events.extend(parts.tail);
    events
}

/// Content chunks `gap` apart (not before the first one).
fn paced(parts: Parts, gap: Duration) -> Plan {
    let mut events: Vec<Event> = Plan::immediate(parts.head, Ending::Finish).events;
    let content = parts
        .content
        .into_iter()
        .enumerate()
        .map(|(i, data)| Event {
            delay: if i == 0 { Duration::ZERO } else { gap },
            data,
        });
    events.extend(content);
    events.extend(Plan::immediate(parts.tail, Ending::Finish).events);
    Plan {
        events,
        ending: Ending::Finish,
    }
}

/// Counts the stream as open while alive, and records how it ended when dropped.
struct Guard {
    stats: Arc<Stats>,
    end: StreamEnd,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stats.stream_closed(self.end);
    }
}

/// State carried between polls of the body stream.
struct Cursor {
    events: std::vec::IntoIter<Event>,
    /// When the previous event was due; delays add up from here, so gaps do not drift.
    due: Instant,
    ending: Ending,
    guard: Guard,
    over: bool,
}

/// A body that plays the plan. hyper drops it when the client goes away, which the guard
/// counts as a disconnect unless the plan had already run out.
pub fn body(plan: Plan, stats: Arc<Stats>) -> Body {
    stats.stream_opened();
    let cursor = Cursor {
        events: plan.events.into_iter(),
        due: Instant::now(),
        ending: plan.ending,
        guard: Guard {
            stats,
            end: StreamEnd::Disconnected,
        },
        over: false,
    };
    Body::from_stream(stream::unfold(cursor, next_chunk))
}

async fn next_chunk(mut cursor: Cursor) -> Option<(Result<Bytes, io::Error>, Cursor)> {
    if cursor.over {
        return None;
    }
    if let Some(event) = cursor.events.next() {
        if !event.delay.is_zero() {
            cursor.due += event.delay;
            tokio::time::sleep_until(cursor.due).await;
        }
        return Some((Ok(event.data), cursor));
    }
    match cursor.ending {
        Ending::Finish => {
            cursor.guard.end = StreamEnd::Completed;
            None
        }
        Ending::Abort => {
            tokio::time::sleep(ABORT_DELAY).await;
            cursor.guard.end = StreamEnd::Aborted;
            cursor.over = true;
            let error = io::Error::new(io::ErrorKind::ConnectionAborted, "mock-drop-mid-stream");
            Some((Err(error), cursor))
        }
        Ending::Stall => std::future::pending().await,
    }
}

/// A 200 response with the given content type whose body plays the plan.
pub fn response(content_type: &'static str, plan: Plan, stats: Arc<Stats>) -> Response {
    let mut response = Response::new(body(plan, stats));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Content type of SSE streams.
pub const EVENT_STREAM: &str = "text/event-stream";

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> Parts {
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        Parts {
            head: vec![b("h")],
            content: vec![b("c0"), b("c1"), b("c2"), b("c3"), b("c4")],
            tail: vec![b("t")],
        }
    }

    fn shape(plan: &Plan) -> Vec<(u64, String)> {
        plan.events
            .iter()
            .map(|e| {
                let ms = e.delay.as_millis() as u64;
                (ms, String::from_utf8_lossy(&e.data).into_owned())
            })
            .collect()
    }

    #[test]
    fn plans() {
        let ms = Duration::from_millis;
        let s = |v: &[(u64, &str)]| -> Vec<(u64, String)> {
            v.iter().map(|(d, t)| (*d, (*t).to_owned())).collect()
        };
        let all = [
            (0, "h"),
            (0, "c0"),
            (0, "c1"),
            (0, "c2"),
            (0, "c3"),
            (0, "c4"),
            (0, "t"),
        ];
        let cases = [
            (Behaviour::Normal, s(&all), Ending::Finish),
            (
                Behaviour::DropMidStream,
                s(&[(0, "h"), (0, "c0"), (0, "c1"), (0, "c2")]),
                Ending::Abort,
            ),
            (
                Behaviour::EndEarly,
                s(&[(0, "h"), (0, "c0"), (0, "c1"), (0, "c2")]),
                Ending::Finish,
            ),
            (
                Behaviour::SlowFirstToken(ms(7)),
                s(&[
                    (7, "h"),
                    (0, "c0"),
                    (0, "c1"),
                    (0, "c2"),
                    (0, "c3"),
                    (0, "c4"),
                    (0, "t"),
                ]),
                Ending::Finish,
            ),
            (
                Behaviour::Chunks {
                    count: 5,
                    gap: ms(3),
                },
                s(&[
                    (0, "h"),
                    (0, "c0"),
                    (3, "c1"),
                    (3, "c2"),
                    (3, "c3"),
                    (3, "c4"),
                    (0, "t"),
                ]),
                Ending::Finish,
            ),
        ];
        for (behaviour, want, ending) in cases {
            let plan = plan(parts(), behaviour);
            assert_eq!(shape(&plan), want, "{behaviour:?}");
            assert_eq!(plan.ending, ending, "{behaviour:?}");
        }
    }
}
