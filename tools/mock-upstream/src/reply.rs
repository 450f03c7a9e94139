//! The deterministic answer to one request: token counts and reply words.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::behaviour::Behaviour;
use crate::words::{request_bytes, request_words};

/// Fixed prompt overhead added to the word count.
const PROMPT_OVERHEAD: u64 = 10;
/// Longest normal reply, in words (= tokens).
const MAX_REPLY_WORDS: u64 = 20;
/// Fixed cache/reasoning figures reported beside the main counts.
pub const OPENAI_CACHED_TOKENS: u64 = 2;
pub const REASONING_TOKENS: u64 = 1;
pub const ANTHROPIC_CACHE_READ: u64 = 3;
pub const ANTHROPIC_CACHE_CREATION: u64 = 1;
/// The usage of `mock-claude-code-usage`: a Claude Code turn, mostly prompt cache.
const CLAUDE_CODE_INPUT: u64 = 4;
const CLAUDE_CODE_CACHE_READ: u64 = 30_000;
const CLAUDE_CODE_CACHE_CREATION: u64 = 5_000;
const CLAUDE_CODE_OUTPUT: u64 = 12;

/// Everything a protocol needs to render a reply.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The requested model, echoed back.
    pub model: String,
    /// A per-process sequence number, used in ids.
    pub seq: u64,
    /// Unix seconds at the time of the request.
    pub created: u64,
    /// 10 + words of the request (bytes for a `…byte-tokens…` model).
    pub input_tokens: u64,
    /// Words in the reply.
    pub output_tokens: u64,
    /// The reply was cut short by the request's token limit.
    pub truncated: bool,
    /// Whether usage is reported at all (`false` for `mock-no-usage`).
    pub usage: bool,
    /// The request asked for `stream_options.include_usage`.
    pub include_usage: bool,
    /// Anthropic cache-read tokens reported beside `input_tokens`.
    pub cache_read: u64,
    /// Anthropic cache-write tokens reported beside `input_tokens`.
    pub cache_creation: u64,
    /// Whether the usage reports 0 input and 0 output tokens (`mock-zero-usage`).
    pub zero_usage: bool,
}

impl Reply {
    /// Builds the reply for a request body and its behaviour.
    pub fn new(body: &Value, behaviour: Behaviour, seq: u64) -> Reply {
        let (output_tokens, truncated) = match behaviour {
            Behaviour::Chunks { count, .. } => (count as u64, false),
            Behaviour::ClaudeCodeUsage => (CLAUDE_CODE_OUTPUT, false),
            _ => {
                let limit = max_tokens(body);
                (limit.min(MAX_REPLY_WORDS), limit < MAX_REPLY_WORDS)
            }
        };
        let claude_code = behaviour == Behaviour::ClaudeCodeUsage;
        Reply {
            model: str_field(body, "model").to_owned(),
            seq,
            created: unix_now(),
            input_tokens: if claude_code {
                CLAUDE_CODE_INPUT
            } else {
                PROMPT_OVERHEAD
                    + if str_field(body, "model").contains("byte-tokens") {
                        request_bytes(body)
                    } else {
                        request_words(body)
                    }
            },
            output_tokens,
            truncated,
            usage: behaviour != Behaviour::NoUsage,
            include_usage: body
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            cache_read: if claude_code {
                CLAUDE_CODE_CACHE_READ
            } else {
                ANTHROPIC_CACHE_READ
            },
            cache_creation: if claude_code {
                CLAUDE_CODE_CACHE_CREATION
            } else {
                ANTHROPIC_CACHE_CREATION
            },
            zero_usage: behaviour == Behaviour::ZeroUsage,
        }
    }

    /// Input tokens as the usage reports them (0 for `mock-zero-usage`).
    pub fn reported_input(&self) -> u64 {
        if self.zero_usage {
            0
        } else {
            self.input_tokens
        }
    }

    /// Output tokens as the usage reports them (0 for `mock-zero-usage`).
    pub fn reported_output(&self, output_tokens: u64) -> u64 {
        if self.zero_usage {
            0
        } else {
            output_tokens
        }
    }

    /// The text of chunk `i`: `tok0`, ` tok1`, … so that the chunks concatenate to [`Self::text`].
    pub fn delta(&self, i: u64) -> String {
        if i == 0 {
            "tok0".to_owned()
        } else {
            format!(" tok{i}")
        }
    }

    /// The whole reply text.
    pub fn text(&self) -> String {
        (0..self.output_tokens).map(|i| self.delta(i)).collect()
    }

    /// Prompt plus completion tokens.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

/// The request's token limit: `max_tokens`, `max_completion_tokens` or `max_output_tokens`.
fn max_tokens(body: &Value) -> u64 {
    ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| body.get(k).and_then(Value::as_u64))
        .unwrap_or(MAX_REPLY_WORDS)
}

/// A string field of the body, or "".
pub fn str_field<'a>(body: &'a Value, key: &str) -> &'a str {
    body.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn token_counts() {
        let chunks = Behaviour::Chunks {
            count: 200,
            gap: Duration::ZERO,
        };
        let msg = json!([{"role": "user", "content": "a b c"}]);
        let cases = [
            (
                json!({"messages": msg}),
                Behaviour::Normal,
                13,
                20,
                false,
                true,
            ),
            (
                json!({"messages": msg, "max_tokens": 5}),
                Behaviour::Normal,
                13,
                5,
                true,
                true,
            ),
            (
                json!({"max_completion_tokens": 100}),
                Behaviour::Normal,
                10,
                20,
                false,
                true,
            ),
            (
                json!({"max_output_tokens": 20}),
                Behaviour::Normal,
                10,
                20,
                false,
                true,
            ),
            (
                json!({"max_tokens": 3}),
                Behaviour::NoUsage,
                10,
                3,
                true,
                false,
            ),
            (json!({"max_tokens": 3}), chunks, 10, 200, false, true),
        ];
        for (body, behaviour, input, output, truncated, usage) in cases {
            let r = Reply::new(&body, behaviour, 1);
            assert_eq!(
                (r.input_tokens, r.output_tokens, r.truncated, r.usage),
                (input, output, truncated, usage),
                "body {body}"
            );
        }
    }

    #[test]
    fn reply_text() {
        let r = Reply::new(&json!({"max_tokens": 3}), Behaviour::Normal, 1);
        assert_eq!(r.text(), "tok0 tok1 tok2");
        assert_eq!(r.text().split_whitespace().count() as u64, r.output_tokens);
    }
}
