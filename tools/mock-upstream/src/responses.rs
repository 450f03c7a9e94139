//! The OpenAI Responses API (`POST /v1/responses`), stream and non-stream.

use serde_json::{json, Value};

use crate::http::insert;
use crate::reply::{Reply, OPENAI_CACHED_TOKENS, REASONING_TOKENS};
use crate::sse::{self, Parts};

fn response_id(r: &Reply) -> String {
    format!("resp_mock{}", r.seq)
}

fn item_id(r: &Reply) -> String {
    format!("msg_mock{}", r.seq)
}

fn usage(r: &Reply) -> Value {
    json!({
        "input_tokens": r.input_tokens,
        "input_tokens_details": {
            "cached_tokens": OPENAI_CACHED_TOKENS,
            "cache_write_tokens": 0
        },
        "output_tokens": r.output_tokens,
        "output_tokens_details": {"reasoning_tokens": REASONING_TOKENS},
        "total_tokens": r.total_tokens()
    })
}

/// An `output_text` content part.
fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// The assistant `message` output item.
fn message_item(r: &Reply, status: &str, content: Vec<Value>) -> Value {
    json!({"id": item_id(r), "type": "message", "status": status, "role": "assistant", "content": content})
}

/// The `response` object with everything the SDK's typed model lists.
fn response_object(r: &Reply, body: &Value, status: &str, output: Vec<Value>) -> Value {
    let field = |key: &str, default: Value| body.get(key).cloned().unwrap_or(default);
    json!({
        "id": response_id(r),
        "object": "response",
        "created_at": r.created,
        "status": status,
        "background": false,
        "error": null,
        "incomplete_details": null,
        "instructions": field("instructions", Value::Null),
        "max_output_tokens": field("max_output_tokens", Value::Null),
        "model": r.model,
        "output": output,
        "parallel_tool_calls": field("parallel_tool_calls", json!(true)),
        "previous_response_id": field("previous_response_id", Value::Null),
        "reasoning": {"effort": null, "summary": null},
        "service_tier": "default",
        "store": field("store", json!(true)),
        "temperature": field("temperature", json!(1.0)),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": field("top_p", json!(1.0)),
        "truncation": "disabled",
        "usage": null,
        "user": null,
        "metadata": field("metadata", json!({}))
    })
}

/// The finished response, with usage when reported.
fn completed(r: &Reply, body: &Value) -> Value {
    let item = message_item(r, "completed", vec![text_part(&r.text())]);
    let mut response = response_object(r, body, "completed", vec![item]);
    if r.usage {
        insert(&mut response, "usage", usage(r));
    }
    response
}

/// Non-stream response (no `usage` key at all for `mock-no-usage`).
pub fn response(r: &Reply, body: &Value) -> Value {
    let mut response = completed(r, body);
    if !r.usage {
        if let Some(map) = response.as_object_mut() {
            map.remove("usage");
        }
    }
    response
}

/// Numbers events in order, as `sequence_number` must be.
struct Sequencer {
    next: u64,
}

impl Sequencer {
    fn event(&mut self, kind: &str, mut fields: Value) -> bytes::Bytes {
        insert(&mut fields, "type", json!(kind));
        insert(&mut fields, "sequence_number", json!(self.next));
        self.next += 1;
        sse::named(kind, &fields)
    }
}

/// Fields that locate the text part: `item_id`, `output_index`, `content_index`.
fn located(r: &Reply, mut fields: Value) -> Value {
    insert(&mut fields, "item_id", json!(item_id(r)));
    insert(&mut fields, "output_index", json!(0));
    insert(&mut fields, "content_index", json!(0));
    fields
}

/// Stream: created, in_progress, item/part added, text deltas, the `done` events, completed.
pub fn stream(r: &Reply, body: &Value) -> Parts {
    let mut seq = Sequencer { next: 0 };
    let head = head_events(&mut seq, r, body);
    let content = (0..r.output_tokens)
        .map(|i| {
            let fields = located(r, json!({"delta": r.delta(i), "logprobs": []}));
            seq.event("response.output_text.delta", fields)
        })
        .collect();
    let tail = tail_events(&mut seq, r, body);
    Parts {
        head,
        content,
        tail,
    }
}

fn head_events(seq: &mut Sequencer, r: &Reply, body: &Value) -> Vec<bytes::Bytes> {
    let in_progress = response_object(r, body, "in_progress", Vec::new());
    let item = message_item(r, "in_progress", Vec::new());
    vec![
        seq.event("response.created", json!({"response": in_progress})),
        seq.event("response.in_progress", json!({"response": in_progress})),
        seq.event(
            "response.output_item.added",
            json!({"output_index": 0, "item": item}),
        ),
        seq.event(
            "response.content_part.added",
            located(r, json!({"part": text_part("")})),
        ),
    ]
}

fn tail_events(seq: &mut Sequencer, r: &Reply, body: &Value) -> Vec<bytes::Bytes> {
    let text = r.text();
    let item = message_item(r, "completed", vec![text_part(&text)]);
    vec![
        seq.event(
            "response.output_text.done",
            located(r, json!({"text": text, "logprobs": []})),
        ),
        seq.event(
            "response.content_part.done",
            located(r, json!({"part": text_part(&text)})),
        ),
        seq.event(
            "response.output_item.done",
            json!({"output_index": 0, "item": item}),
        ),
        seq.event(
            "response.completed",
            json!({"response": completed(r, body)}),
        ),
    ]
}
