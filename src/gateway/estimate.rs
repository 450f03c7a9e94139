//! Token estimates with a real tokenizer (`o200k_base`), for answers whose upstream reported no
//! usage, and true upper bounds of a request's tokens for budget reservations.
//!
//! An estimate costs a bounded amount of CPU whatever the input: the tokenizer reads at most
//! [`SAMPLE_BYTES`] of text, cut into runs of at most [`RUN_BYTES`] (byte-pair encoding is
//! quadratic in the length of one piece, and its splitting regex gives up on megabytes), and the
//! rest of the text is extrapolated from its byte count. Estimates are flagged as such.

use std::sync::OnceLock;

use super::bpe::Bpe;
use super::request::RequestView;
use super::tally::each_text;
use crate::usage::TokenUsage;

/// Tokens OpenAI adds per message and per request around the text (its documented overhead).
const PER_MESSAGE: u64 = 4;
const PER_REQUEST: u64 = 3;
/// Most text the tokenizer reads for one estimate; longer text is extrapolated by bytes.
pub const SAMPLE_BYTES: usize = 16 * 1024;
/// Longest run of non-space (or of space) characters handed to the tokenizer in one piece.
pub const RUN_BYTES: usize = 256;
/// Reservation bound of one image part (an image URL, file id or inline image): its tokens are
/// not in its bytes. The largest images the providers accept cost at most a few thousand tokens
/// (OpenAI high detail, Anthropic ~1,600), so this errs high.
pub const IMAGE_TOKENS: u64 = 10_000;
/// Reservation bound of one document or file part (a PDF, a file id or URL), of a reference to
/// earlier context kept by the provider (`previous_response_id`, `conversation`) and of a
/// provider-side tool (web search, file search) whose results join the prompt: what one call can
/// read is bounded by the model's context window, 200,000 tokens for most models.
pub const FILE_TOKENS: u64 = 200_000;
/// Reservation bound of the hidden system prompt a provider adds when a request has tools.
pub const TOOLS_TOKENS: u64 = 1_000;

/// The tokenizer, loaded on first use (~3 MB, see `bpe`), which a gateway whose upstreams always
/// report usage never needs to pay.
fn tokenizer() -> Option<&'static Bpe> {
    static BPE: OnceLock<Option<Bpe>> = OnceLock::new();
    BPE.get_or_init(|| match Bpe::load() {
        Ok(bpe) => Some(bpe),
        Err(e) => {
            tracing::error!("cannot load the o200k_base tokenizer: {e}");
            None
        }
    })
    .as_ref()
}

/// Tokens of `text` with `o200k_base`, read from at most [`SAMPLE_BYTES`] of it and
/// extrapolated by bytes beyond (a bytes/4 guess if the tokenizer failed to load).
pub fn count(text: &str) -> u64 {
    let sample = prefix(text, SAMPLE_BYTES);
    extrapolate(count_sample(sample), sample.len(), text.len())
}

/// `tokens` counted in the first `sampled` of `total` bytes, scaled to all of them.
fn extrapolate(tokens: u64, sampled: usize, total: usize) -> u64 {
    if sampled >= total || sampled == 0 {
        return if sampled == 0 {
            (total as u64).div_ceil(4)
        } else {
            tokens
        };
    }
    let scaled = u128::from(tokens) * total as u128 / sampled as u128;
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

/// The longest start of `text` of at most `limit` bytes that ends on a character boundary.
pub(super) fn prefix(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Tokens of a short text, its over-long runs cut into pieces of at most [`RUN_BYTES`] so that
/// no piece costs the byte-pair encoder more than a bounded time.
fn count_sample(text: &str) -> u64 {
    let Some(bpe) = tokenizer() else {
        return (text.len() as u64).div_ceil(4);
    };
    // A long run is cut into equal pieces: the last piece's count is kept, so that a word
    // repeated over kilobytes is merged once, not once per piece.
    fn encode<'t>(bpe: &Bpe, last: &mut (&'t str, u64), piece: &'t str) -> u64 {
        if !piece.is_empty() && piece == last.0 {
            return last.1;
        }
        let n = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bpe.count(piece)))
            .unwrap_or_else(|_| (piece.len() as u64).div_ceil(4));
        *last = (piece, n);
        n
    }
    let mut last = ("", 0);
    let mut tokens = 0;
    let mut start = 0;
    let mut run_start = 0;
    let mut run_space = None;
    for (at, c) in text.char_indices() {
        let space = c.is_whitespace();
        if run_space != Some(space) {
            run_space = Some(space);
            run_start = at;
        } else if at - run_start >= RUN_BYTES {
            tokens += encode(bpe, &mut last, &text[start..at]);
            start = at;
            run_start = at;
        }
    }
    tokens + encode(bpe, &mut last, &text[start..])
}

fn message_count(request: &serde_json::Value) -> u64 {
    request
        .get("messages")
        .or_else(|| request.get("input"))
        .and_then(serde_json::Value::as_array)
        .map_or(1, |m| m.len().max(1) as u64)
}

/// The prompt tokens of a request, counted with the tokenizer on the start of its text and
/// extrapolated by bytes over the rest.
pub fn prompt_tokens(request: &serde_json::Value) -> u64 {
    let mut sample = String::new();
    let mut total = 0usize;
    each_text(request, &mut |s| {
        if total > 0 {
            total += 1;
            if sample.len() < SAMPLE_BYTES {
                sample.push('\n');
            }
        }
        total += s.len();
        let room = SAMPLE_BYTES.saturating_sub(sample.len());
        sample.push_str(prefix(s, room));
    });
    extrapolate(count_sample(&sample), sample.len(), total)
        + PER_MESSAGE * message_count(request)
        + PER_REQUEST
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

/// A true upper bound of a request's prompt tokens, for a budget reservation. A token is at least
/// one byte of text, and all the text of a request is in its body, so the body's length bounds
/// its text tokens (tool schemas included); parts whose tokens are not in their bytes count a
/// fixed bound each instead of their bytes: an image [`IMAGE_TOKENS`], a document or file, a
/// reference to earlier context or a provider-side tool [`FILE_TOKENS`]; tools add the hidden
/// prompt [`TOOLS_TOKENS`]; and each message the provider's framing.
pub fn prompt_upper_bound(body_len: usize, request: &RequestView) -> u64 {
    let tools = request.tools().map_or(0, |(count, provider_side)| {
        if count == 0 {
            0
        } else {
            TOOLS_TOKENS.saturating_add(provider_side.saturating_mul(FILE_TOKENS))
        }
    });
    (body_len as u64)
        .saturating_sub(request.media.inline_bytes)
        .saturating_add(request.media.bound)
        .saturating_add(request.context_refs().saturating_mul(FILE_TOKENS))
        .saturating_add(tools)
        .saturating_add(PER_MESSAGE.saturating_mul(request.message_count()))
        .saturating_add(PER_REQUEST)
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
        let body = serde_json::to_vec(&request).unwrap();
        let view = RequestView::parse(&body).unwrap();
        assert!(prompt_upper_bound(body.len(), &view) >= prompt_tokens(&request));
        let u = usage(&request, "hi there", true);
        assert_eq!((u.prompt, u.completion, u.total), (9, 2, 11));
    }

    #[test]
    fn long_words_are_sampled_and_never_panic() {
        let word = "a".repeat(4 << 20);
        let tokens = count(&word);
        assert!(tokens > 0 && tokens <= word.len() as u64, "{tokens}");
        let request = serde_json::json!({"messages": [{"role": "user", "content": word}]});
        assert!(prompt_tokens(&request) > tokens);
        let digits = "7".repeat(1 << 20);
        let tokens = count(&digits);
        assert!((349_000..353_000).contains(&tokens), "{tokens}");
    }

    #[test]
    fn the_bound_counts_media_by_part_and_text_by_byte() {
        let digits = "1".repeat(1000);
        let request = serde_json::json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": digits},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", "A".repeat(100_000))}},
            {"type": "input_file", "file_id": "file-1"},
        ]}], "tools": [{"type": "function", "function": {"name": "f"}}, {"type": "web_search"}]});
        let body = serde_json::to_vec(&request).unwrap();
        let bound = prompt_upper_bound(body.len(), &RequestView::parse(&body).unwrap());
        assert!(
            bound >= 1000 + IMAGE_TOKENS + 2 * FILE_TOKENS + TOOLS_TOKENS,
            "{bound}"
        );
        assert!(
            bound < 100_000 + IMAGE_TOKENS + 2 * FILE_TOKENS + TOOLS_TOKENS,
            "{bound}"
        );
        let chained = br#"{"input": "hi", "previous_response_id": "resp_1"}"#;
        let view = RequestView::parse(chained).unwrap();
        assert!(prompt_upper_bound(chained.len(), &view) >= FILE_TOKENS);
    }
}
