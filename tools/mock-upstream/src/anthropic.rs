//! The Anthropic Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`).

use serde_json::{json, Value};

use crate::http::insert;
use crate::reply::Reply;
use crate::sse::{self, Parts};

fn message_id(r: &Reply) -> String {
    format!("msg_mock{}", r.seq)
}

fn stop_reason(r: &Reply) -> &'static str {
    if r.truncated {
        "max_tokens"
    } else {
        "end_turn"
    }
}

fn usage(r: &Reply, output_tokens: u64) -> Value {
    json!({
        "input_tokens": r.reported_input(),
        "output_tokens": r.reported_output(output_tokens),
        "cache_creation_input_tokens": if r.zero_usage { 0 } else { r.cache_creation },
        "cache_read_input_tokens": if r.zero_usage { 0 } else { r.cache_read },
        "service_tier": "standard"
    })
}

/// A `message` object with the given content and stop reason.
fn message(r: &Reply, content: Value, stop: Option<&str>) -> Value {
    json!({
        "id": message_id(r),
        "type": "message",
        "role": "assistant",
        "model": r.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null
    })
}

/// Non-stream message (no `usage` key for `mock-no-usage`).
pub fn messages(r: &Reply) -> Value {
    let content = json!([{"type": "text", "text": r.text()}]);
    let mut body = message(r, content, Some(stop_reason(r)));
    if r.usage {
        insert(&mut body, "usage", usage(r, r.output_tokens));
    }
    body
}

/// `{"input_tokens": 10 + W}`.
pub fn count_tokens(r: &Reply) -> Value {
    json!({"input_tokens": r.input_tokens})
}

fn event(kind: &str, mut fields: Value) -> bytes::Bytes {
    insert(&mut fields, "type", json!(kind));
    sse::named(kind, &fields)
}

/// Stream: message_start, content_block_start, ping, text deltas, content_block_stop,
/// message_delta, message_stop.
pub fn stream(r: &Reply) -> Parts {
    let content = (0..r.output_tokens)
        .map(|i| {
            let delta = json!({"type": "text_delta", "text": r.delta(i)});
            event("content_block_delta", json!({"index": 0, "delta": delta}))
        })
        .collect();
    Parts {
        head: head_events(r),
        content,
        tail: tail_events(r),
    }
}

fn head_events(r: &Reply) -> Vec<bytes::Bytes> {
    let mut start = message(r, json!([]), None);
    // `mock-no-usage`: the SDK's typed `message_start` needs a usage object, so it gets
    // zeros here, and `message_delta` carries no `usage` at all (see `tail_events`).
    let start_usage = if r.usage {
        usage(r, 1)
    } else {
        json!({"input_tokens": 0, "output_tokens": 0})
    };
    insert(&mut start, "usage", start_usage);
    let block = json!({"type": "text", "text": ""});
    vec![
        event("message_start", json!({"message": start})),
        event(
            "content_block_start",
            json!({"index": 0, "content_block": block}),
        ),
        event("ping", json!({})),
    ]
}

fn tail_events(r: &Reply) -> Vec<bytes::Bytes> {
    let mut delta = json!({"delta": {"stop_reason": stop_reason(r), "stop_sequence": null}});
    if r.usage {
        insert(
            &mut delta,
            "usage",
            json!({"output_tokens": r.reported_output(r.output_tokens)}),
        );
    }
    vec![
        event("content_block_stop", json!({"index": 0})),
        event("message_delta", delta),
        event("message_stop", json!({})),
    ]
}
