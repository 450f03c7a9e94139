//! OpenAI chat completions, legacy completions, embeddings and models, stream and non-stream.

use serde_json::{json, Value};

use crate::b64;
use crate::http::insert;
use crate::reply::{Reply, OPENAI_CACHED_TOKENS, REASONING_TOKENS};
use crate::sse::{self, Parts};
use crate::words::embedding_items;

/// Fingerprint reported like OpenAI's `system_fingerprint`.
const FINGERPRINT: &str = "fp_mock";
/// Embedding size when the request gives no `dimensions`.
const DEFAULT_DIMENSIONS: usize = 16;
/// Largest embedding size served.
const MAX_DIMENSIONS: usize = 4096;

/// `usage` of chat and text completions.
fn usage(r: &Reply) -> Value {
    json!({
        "prompt_tokens": r.reported_input(),
        "completion_tokens": r.reported_output(r.output_tokens),
        "total_tokens": r.reported_input() + r.reported_output(r.output_tokens),
        "prompt_tokens_details": {"cached_tokens": OPENAI_CACHED_TOKENS, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": REASONING_TOKENS,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

fn finish_reason(r: &Reply) -> &'static str {
    if r.truncated {
        "length"
    } else {
        "stop"
    }
}

/// Adds `usage` when the reply reports it.
fn with_usage(mut body: Value, r: &Reply) -> Value {
    if r.usage {
        insert(&mut body, "usage", usage(r));
    }
    body
}

/// Non-stream `chat.completion`.
pub fn chat(r: &Reply) -> Value {
    let body = json!({
        "id": format!("chatcmpl-mock{}", r.seq),
        "object": "chat.completion",
        "created": r.created,
        "model": r.model,
        "system_fingerprint": FINGERPRINT,
        "service_tier": "default",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": r.text(), "refusal": null, "annotations": []},
            "logprobs": null,
            "finish_reason": finish_reason(r)
        }]
    });
    with_usage(body, r)
}

/// Whether the stream ends with a usage-only chunk (asked for, and usage is reported).
fn usage_chunk_wanted(r: &Reply) -> bool {
    r.include_usage && r.usage
}

/// One `chat.completion.chunk` event with a single choice.
fn chat_chunk(r: &Reply, delta: Value, finish: Option<&str>) -> Value {
    let mut chunk = json!({
        "id": format!("chatcmpl-mock{}", r.seq),
        "object": "chat.completion.chunk",
        "created": r.created,
        "model": r.model,
        "system_fingerprint": FINGERPRINT,
        "service_tier": "default",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
    });
    if usage_chunk_wanted(r) {
        insert(&mut chunk, "usage", Value::Null);
    }
    chunk
}

/// The usage-only final chunk: `choices: []` and `usage`.
fn usage_only_chunk(r: &Reply, object: &str, prefix: &str) -> Value {
    json!({
        "id": format!("{prefix}{}", r.seq),
        "object": object,
        "created": r.created,
        "model": r.model,
        "system_fingerprint": FINGERPRINT,
        "choices": [],
        "usage": usage(r)
    })
}

/// Stream of `chat.completion.chunk` events.
pub fn chat_stream(r: &Reply) -> Parts {
    let role = json!({"role": "assistant", "content": "", "refusal": null});
    let content = (0..r.output_tokens)
        .map(|i| sse::data(&chat_chunk(r, json!({"content": r.delta(i)}), None)))
        .collect();
    let mut tail = vec![sse::data(&chat_chunk(r, json!({}), Some(finish_reason(r))))];
    if usage_chunk_wanted(r) {
        tail.push(sse::data(&usage_only_chunk(
            r,
            "chat.completion.chunk",
            "chatcmpl-mock",
        )));
    }
    tail.push(sse::done());
    Parts {
        head: vec![sse::data(&chat_chunk(r, role, None))],
        content,
        tail,
    }
}

/// One `text_completion` object with a single choice.
fn completion_object(r: &Reply, text: String, finish: Option<&str>) -> Value {
    json!({
        "id": format!("cmpl-mock{}", r.seq),
        "object": "text_completion",
        "created": r.created,
        "model": r.model,
        "system_fingerprint": FINGERPRINT,
        "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]
    })
}

/// Non-stream legacy completion.
pub fn completion(r: &Reply) -> Value {
    with_usage(completion_object(r, r.text(), Some(finish_reason(r))), r)
}

/// Stream of legacy `text_completion` chunks.
pub fn completion_stream(r: &Reply) -> Parts {
    let chunk = |text: String, finish: Option<&str>| {
        let mut v = completion_object(r, text, finish);
        if usage_chunk_wanted(r) {
            insert(&mut v, "usage", Value::Null);
        }
        sse::data(&v)
    };
    let content = (0..r.output_tokens)
        .map(|i| chunk(r.delta(i), None))
        .collect();
    let mut tail = vec![chunk(String::new(), Some(finish_reason(r)))];
    if usage_chunk_wanted(r) {
        tail.push(sse::data(&usage_only_chunk(
            r,
            "text_completion",
            "cmpl-mock",
        )));
    }
    tail.push(sse::done());
    Parts {
        head: Vec::new(),
        content,
        tail,
    }
}

/// Deterministic, exactly representable embedding values in [-0.5, 0.5).
fn vector(item: usize, dimensions: usize) -> Vec<f32> {
    (0..dimensions)
        .map(|j| ((item * 31 + j * 17) % 64) as f32 / 64.0 - 0.5)
        .collect()
}

/// Non-stream embeddings list; `encoding_format: "base64"` gives base64 of little-endian f32.
pub fn embeddings(r: &Reply, body: &Value) -> Value {
    let dimensions = body
        .get("dimensions")
        .and_then(Value::as_u64)
        .map_or(DEFAULT_DIMENSIONS, |d| (d as usize).min(MAX_DIMENSIONS));
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = (0..embedding_items(body.get("input")))
        .map(|i| {
            let values = vector(i, dimensions);
            let embedding = if base64 {
                Value::String(b64::encode_f32_le(&values))
            } else {
                json!(values)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let mut out = json!({"object": "list", "data": data, "model": r.model});
    if r.usage {
        let usage = json!({"prompt_tokens": r.input_tokens, "total_tokens": r.input_tokens});
        insert(&mut out, "usage", usage);
    }
    out
}

/// Model ids listed by `GET /v1/models`.
pub const MODELS: [&str; 2] = ["mock-gpt", "mock-claude"];
/// A fixed creation time for listed models.
const MODELS_CREATED: u64 = 1_700_000_000;

/// OpenAI's model list.
pub fn models() -> Value {
    let data: Vec<Value> = MODELS
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": MODELS_CREATED, "owned_by": "mock-upstream"}))
        .collect();
    json!({"object": "list", "data": data})
}

/// Anthropic's model list (served when the request carries `anthropic-version`).
pub fn anthropic_models() -> Value {
    let data: Vec<Value> = MODELS
        .iter()
        .map(|id| {
            json!({
                "type": "model",
                "id": id,
                "display_name": id,
                "created_at": "2023-11-14T22:13:20Z",
                "lifecycle": "active",
                "deprecated_at": null,
                "retires_at": null
            })
        })
        .collect();
    let first = MODELS.first().copied();
    let last = MODELS.last().copied();
    json!({"data": data, "has_more": false, "first_id": first, "last_id": last})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::behaviour::Behaviour;

    #[test]
    fn embeddings_encodings() {
        let r = Reply::new(&json!({"input": ["a b", "c"]}), Behaviour::Normal, 1);
        let floats = embeddings(&r, &json!({"input": ["a b", "c"], "dimensions": 2}));
        assert_eq!(floats["data"][1]["embedding"], json!([-0.015625, 0.25]));
        assert_eq!(
            floats["usage"],
            json!({"prompt_tokens": 13, "total_tokens": 13})
        );
        let b64 = embeddings(
            &r,
            &json!({"input": "x", "dimensions": 2, "encoding_format": "base64"}),
        );
        assert_eq!(
            b64["data"][0]["embedding"],
            json!(b64::encode_f32_le(&[-0.5, -0.234375]))
        );
    }
}
