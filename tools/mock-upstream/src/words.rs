//! Deterministic "tokenizers": count whitespace-separated words in every text of a request, or,
//! for models named `…byte-tokens…`, one token per byte (the worst case of a real tokenizer, as
//! digit- or punctuation-heavy text can be).

use serde_json::Value;

/// Request fields whose text counts towards the prompt.
const TEXT_FIELDS: [&str; 5] = ["messages", "prompt", "input", "system", "instructions"];

/// Number of whitespace-separated words in all the request's text (messages, prompt, input,
/// system, instructions). A token-id array counts one word per id.
pub fn request_words(body: &Value) -> u64 {
    request_tokens(body, count)
}

/// Bytes of all the request's text (the same fields as [`request_words`]): one token per byte.
pub fn request_bytes(body: &Value) -> u64 {
    request_tokens(body, |s| s.len() as u64)
}

fn request_tokens(body: &Value, count: fn(&str) -> u64) -> u64 {
    TEXT_FIELDS
        .iter()
        .filter_map(|field| body.get(field))
        .map(|v| text_tokens(v, count))
        .sum()
}

/// Tokens in a string, an array of strings/parts, or a part/message object (`text`, `content`).
fn text_tokens(value: &Value, count: fn(&str) -> u64) -> u64 {
    match value {
        Value::String(s) => count(s),
        Value::Number(_) => 1,
        Value::Array(items) => items.iter().map(|v| text_tokens(v, count)).sum(),
        Value::Object(obj) => {
            let text = obj
                .get("text")
                .filter(|t| t.is_string())
                .map_or(0, |v| text_tokens(v, count));
            text + obj.get("content").map_or(0, |v| text_tokens(v, count))
        }
        _ => 0,
    }
}

fn count(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Number of embeddings an embeddings `input` asks for: one per string or token array.
pub fn embedding_items(input: Option<&Value>) -> usize {
    match input {
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            usize::from(!items.is_empty())
        }
        Some(Value::Array(items)) => items.len(),
        Some(Value::Null) | None => 0,
        Some(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_bytes() {
        let body = json!({"messages": [{"role": "user", "content": "12345 678"}], "model": "x"});
        assert_eq!(request_bytes(&body), 9);
        assert_eq!(request_words(&body), 2);
    }

    #[test]
    fn counts_words() {
        let cases = [
            (json!({}), 0),
            (json!({"model": "x y z", "max_tokens": 5}), 0),
            (
                json!({"messages": [{"role": "user", "content": "hello  there\nworld"}]}),
                3,
            ),
            (
                json!({"messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": [
                        {"type": "text", "text": "one two"},
                        {"type": "image_url", "image_url": {"url": "data:x"}}
                    ]}
                ]}),
                4,
            ),
            (json!({"prompt": "a b c"}), 3),
            (json!({"prompt": ["a b", "c"]}), 3),
            (json!({"prompt": [1, 2, 3, 4]}), 4),
            (json!({"input": "the quick brown fox"}), 4),
            (json!({"input": [[1, 2], [3]]}), 3),
            (json!({"input": ["x", "y z"]}), 3),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_text", "text": "a b"}]}],
                       "instructions": "c d e"}),
                5,
            ),
            (
                json!({"system": [{"type": "text", "text": "sys one"}],
                "messages": [{"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": "r1 r2"},
                    {"type": "text", "text": "q"}
                ]}]}),
                5,
            ),
            (
                json!({"system": "s", "messages": [{"role": "user", "content": ""}]}),
                1,
            ),
        ];
        for (body, want) in cases {
            assert_eq!(request_words(&body), want, "body {body}");
        }
    }

    #[test]
    fn counts_embedding_items() {
        let cases = [
            (None, 0),
            (Some(json!("a")), 1),
            (Some(json!(["a", "b"])), 2),
            (Some(json!([1, 2, 3])), 1),
            (Some(json!([[1], [2], [3]])), 3),
            (Some(json!([])), 0),
        ];
        for (input, want) in cases {
            assert_eq!(embedding_items(input.as_ref()), want, "input {input:?}");
        }
    }
}
