//! Token estimates with a real tokenizer (`o200k_base`), for answers whose upstream reported no
//! usage, and cheap upper bounds for budget reservations.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

use super::usage::texts;
use crate::usage::TokenUsage;

/// Tokens OpenAI adds per message and per request around the text (its documented overhead).
const PER_MESSAGE: u64 = 4;
const PER_REQUEST: u64 = 3;

/// The tokenizer, loaded on first use: it costs ~50 MB of memory, which a gateway whose
/// upstreams always report usage never needs to pay.
fn tokenizer() -> Option<&'static CoreBPE> {
    static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| match tiktoken_rs::o200k_base() {
        Ok(bpe) => Some(bpe),
        Err(e) => {
            tracing::error!("cannot load the o200k_base tokenizer: {e}");
            None
        }
    })
    .as_ref()
}

/// Tokens of `text` with `o200k_base` (a bytes/4 guess if the tokenizer failed to load).
pub fn count(text: &str) -> u64 {
    match tokenizer() {
        Some(bpe) => bpe.encode_ordinary(text).len() as u64,
        None => (text.len() as u64).div_ceil(4),
    }
}

fn message_count(request: &serde_json::Value) -> u64 {
    request
        .get("messages")
        .or_else(|| request.get("input"))
        .and_then(serde_json::Value::as_array)
        .map_or(1, |m| m.len().max(1) as u64)
}

/// The prompt tokens of a request, counted with the tokenizer.
pub fn prompt_tokens(request: &serde_json::Value) -> u64 {
    let mut text = String::new();
    texts(request, &mut text);
    count(&text) + PER_MESSAGE * message_count(request) + PER_REQUEST
}

/// An estimated usage from the request and the answer text seen.
pub fn usage(request: &serde_json::Value, answer_text: &str, has_completion: bool) -> TokenUsage {
    let prompt = prompt_tokens(request);
    let completion = if has_completion {
        count(answer_text)
    } else {
        0
    };
    TokenUsage::new(prompt, completion)
}

/// A quick upper bound of a request's prompt tokens for a budget reservation: a token is at
/// least one byte of text, except in rare merges, so bytes/2 plus overhead errs high.
pub fn prompt_upper_bound(request: &serde_json::Value) -> u64 {
    let mut text = String::new();
    texts(request, &mut text);
    (text.len() as u64).div_ceil(2) + PER_MESSAGE * message_count(request) + PER_REQUEST
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_with_o200k() {
        assert_eq!(count(""), 0);
        assert_eq!(count("hello world"), 2);
        let request = serde_json::json!({"messages": [{"role": "user", "content": "hello world"}]});
        assert_eq!(prompt_tokens(&request), 2 + 4 + 3);
        assert!(prompt_upper_bound(&request) >= prompt_tokens(&request));
        let u = usage(&request, "hi there", true);
        assert_eq!((u.prompt, u.completion, u.total), (9, 2, 11));
    }
}
