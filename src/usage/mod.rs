//! What a call is: the record of one gateway call, its token usage, and the recorder that stores it.

mod recorder;

pub use recorder::{
    QueueFull, Recorder, RecorderStats, Slot, StoredHook, MAX_BATCH, QUEUE_CAPACITY, SLOT_WAIT,
};

/// Upper bounds (inclusive, milliseconds) of the latency histogram's buckets; a last bucket holds
/// everything slower. Fixed forever: the store keeps one column per bucket.
pub const LATENCY_BOUNDS_MS: [u64; 16] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000,
];
/// Number of histogram buckets (the bounds plus the overflow bucket).
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// The bucket a duration falls into.
pub fn latency_bucket(duration_ms: u64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|&bound| duration_ms <= bound)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// Estimates the `q` quantile (0..1) from bucket counts by linear interpolation inside the bucket.
pub fn latency_quantile(buckets: &[u64; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).max(1.0);
    let mut seen = 0.0;
    for (i, &count) in buckets.iter().enumerate() {
        let next = seen + count as f64;
        if count > 0 && next >= rank {
            let lower = if i == 0 {
                0.0
            } else {
                LATENCY_BOUNDS_MS[i - 1] as f64
            };
            let Some(&upper) = LATENCY_BOUNDS_MS.get(i) else {
                return Some(lower);
            };
            let within = (rank - seen) / count as f64;
            return Some(lower + (upper as f64 - lower) * within);
        }
        seen = next;
    }
    None
}

/// Token counts of one call, or sums of many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Input tokens.
    pub prompt: u64,
    /// Output tokens.
    pub completion: u64,
    /// Input tokens read from the provider's prompt cache.
    pub cache_read: u64,
    /// Input tokens written to the provider's prompt cache.
    pub cache_creation: u64,
    /// Output tokens spent on reasoning.
    pub reasoning: u64,
    /// Total as the upstream defines it (prompt + completion).
    pub total: u64,
}

impl TokenUsage {
    /// Usage with the total derived from prompt and completion.
    pub fn new(prompt: u64, completion: u64) -> Self {
        Self {
            prompt,
            completion,
            total: prompt + completion,
            ..Self::default()
        }
    }

    /// The counts in storage order: prompt, completion, cache read, cache creation, reasoning,
    /// total.
    pub fn counts(&self) -> [u64; 6] {
        [
            self.prompt,
            self.completion,
            self.cache_read,
            self.cache_creation,
            self.reasoning,
            self.total,
        ]
    }
}

/// One gateway call, as the recorder receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// When the call arrived.
    pub ts: jiff::Timestamp,
    /// HTTP method.
    pub method: String,
    /// Request path, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// Status sent to the client (499 when the client went away).
    pub status: u16,
    /// Model asked for (empty when the request named none).
    pub model: String,
    /// The gateway key used, if it was valid.
    pub key_id: Option<i64>,
    /// Its name at the time of the call.
    pub key_name: Option<String>,
    /// Tokens used.
    pub tokens: TokenUsage,
    /// Whole duration in milliseconds.
    pub duration_ms: u64,
    /// Time to the first byte of the answer body, in milliseconds.
    pub ttft_ms: Option<u64>,
    /// Whether the answer was streamed.
    pub stream: bool,
    /// Whether the tokens were estimated by the gateway's tokenizer.
    pub estimated: bool,
    /// Short description of a failure.
    pub error: Option<String>,
    /// The client family, from its `User-Agent` (see [`client_family`]); empty when none was sent.
    pub client: String,
    /// The session id the client sent (`X-Claude-Code-Session-Id`, `session_id`, …), if any.
    pub session_id: Option<String>,
    /// The end user the call was made for (see [`end_user`]), if the request named one.
    pub user: Option<String>,
    /// The name of the configured provider that served the call; empty when none did.
    pub provider: String,
    /// Where the record came from: [`GATEWAY_SOURCE`] for the gateway's own calls, or the name
    /// of an ingested source.
    pub source: String,
    /// The model name the client asked for, when it was mapped to another (`model`): an
    /// ingested record's `alias`. The gateway never renames a model, so its own calls have none.
    pub alias: Option<String>,
    /// The reasoning effort the request asked for (`reasoning_effort`, `reasoning.effort`).
    pub reasoning_effort: Option<String>,
    /// The service tier the request asked for (`service_tier`).
    pub service_tier: Option<String>,
    /// What the call cost in nano-dollars; `None` when its model has no price.
    pub cost_nanos: Option<u64>,
    /// How the cost was found.
    pub cost_status: crate::pricing::CostStatus,
    /// What the provider's answer said about itself (model, finish reasons); not stored, only
    /// exported (see `telemetry`), so a record read back from the store has it empty.
    pub answer: AnswerMeta,
    /// For a record read from a usage source or pushed to the ingest endpoint: where it came
    /// from and what makes it unique; `None` for the gateway's own calls.
    pub ingest: Option<Box<Ingested>>,
}

/// What an ingested record carries besides a call (see `crate::sources`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ingested {
    /// SHA-256 of what identifies the record; the store keeps each key once (`ingest_keys`).
    pub dedup_key: [u8; 32],
    /// The upstream credential (CLIProxyAPI's `auth_index`); empty when there is none.
    pub credential: String,
    /// A masked form of the credential's owner (an e-mail, a project, an API key).
    pub credential_label: String,
    /// SHA-256 of the client's key, when one was sent.
    pub client_key_hash: Option<[u8; 32]>,
    /// Display form of the client's key (`cpa-…beta`); empty when none was sent.
    pub client_key_display: String,
}

/// The [`CallRecord::source`] of calls made through the gateway itself.
pub const GATEWAY_SOURCE: &str = "gateway";

impl Default for CallRecord {
    fn default() -> Self {
        Self {
            ts: jiff::Timestamp::default(),
            method: String::new(),
            endpoint: String::new(),
            status: 0,
            model: String::new(),
            key_id: None,
            key_name: None,
            tokens: TokenUsage::default(),
            duration_ms: 0,
            ttft_ms: None,
            stream: false,
            estimated: false,
            error: None,
            client: String::new(),
            session_id: None,
            user: None,
            provider: String::new(),
            source: GATEWAY_SOURCE.to_owned(),
            alias: None,
            reasoning_effort: None,
            service_tier: None,
            cost_nanos: None,
            cost_status: crate::pricing::CostStatus::default(),
            answer: AnswerMeta::default(),
            ingest: None,
        }
    }
}

/// Longest response model name kept, in bytes.
pub const MAX_RESPONSE_MODEL_BYTES: usize = 256;
/// Most finish reasons kept for one answer.
pub const MAX_FINISH_REASONS: usize = 8;
/// Longest finish reason kept, in bytes.
pub const MAX_FINISH_REASON_BYTES: usize = 64;

/// The model that answered and why it stopped, as the provider's answer reported them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnswerMeta {
    /// The model named in the answer (`model`, `message.model`, `response.model`), at most
    /// [`MAX_RESPONSE_MODEL_BYTES`] bytes.
    pub model: Option<String>,
    /// Why each generation stopped (`finish_reason`, `stop_reason`, the Responses API's status
    /// or `incomplete_details.reason`), in arrival order, at most [`MAX_FINISH_REASONS`] of
    /// at most [`MAX_FINISH_REASON_BYTES`] bytes each.
    pub finish_reasons: Vec<String>,
}

impl AnswerMeta {
    /// Keeps `model` when no model was noted yet and it is not blank (the first named wins:
    /// some providers send an empty one in a stream's first chunk).
    pub fn note_model(&mut self, model: &str) {
        if self.model.is_none() && !model.trim().is_empty() {
            self.model = Some(bounded(model, MAX_RESPONSE_MODEL_BYTES));
        }
    }

    /// Adds one finish reason, unless it is blank or [`MAX_FINISH_REASONS`] are already kept.
    pub fn note_finish_reason(&mut self, reason: &str) {
        if self.finish_reasons.len() < MAX_FINISH_REASONS && !reason.trim().is_empty() {
            self.finish_reasons
                .push(bounded(reason, MAX_FINISH_REASON_BYTES));
        }
    }

    /// Whether the answer reported neither a model nor a finish reason.
    pub fn is_empty(&self) -> bool {
        self.model.is_none() && self.finish_reasons.is_empty()
    }
}

/// `text` without control characters, cut to at most `max` bytes at a character boundary.
fn bounded(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// The path of Anthropic's token counting route: its calls spend nothing and are counted apart.
pub const COUNT_TOKENS_PATH: &str = "/v1/messages/count_tokens";

impl CallRecord {
    /// Whether the call succeeded (a 2xx status).
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Whether this is a `count_tokens` call, which is recorded but not counted as a call.
    pub fn is_count_tokens(&self) -> bool {
        self.endpoint == COUNT_TOKENS_PATH
    }
}

/// Client families recognised in a `User-Agent`, as (prefix of a product token, family), the
/// first match winning; anything else is `other`. A small fixed set, never the raw header.
const CLIENT_FAMILIES: [(&str, &str); 9] = [
    ("claude-cli", "claude-cli"),
    ("claude-code", "claude-cli"),
    ("codex", "codex"),
    ("openai/python", "openai-python"),
    ("openai/js", "openai-node"),
    ("openai-node", "openai-node"),
    ("anthropic/python", "anthropic-python"),
    ("anthropic/js", "anthropic-typescript"),
    ("curl", "curl"),
];

/// The client family of a `User-Agent` header: `claude-cli`, `codex`, `openai-python`,
/// `openai-node`, `anthropic-python`, `anthropic-typescript`, `curl`, or `other`; empty when the
/// header is absent or blank.
pub fn client_family(user_agent: Option<&str>) -> &'static str {
    let Some(agent) = user_agent.map(str::trim).filter(|a| !a.is_empty()) else {
        return "";
    };
    let agent = agent.to_ascii_lowercase();
    for token in agent.split_whitespace() {
        for (prefix, family) in CLIENT_FAMILIES {
            if token.starts_with(prefix) {
                return family;
            }
        }
    }
    "other"
}

/// Longest session id kept, in characters.
pub const MAX_SESSION_ID_CHARS: usize = 128;

/// A session id as recorded: trimmed, control characters dropped, at most
/// [`MAX_SESSION_ID_CHARS`] characters; `None` when nothing is left.
pub fn session_id(raw: &str) -> Option<String> {
    let id: String = raw
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_SESSION_ID_CHARS)
        .collect();
    (!id.is_empty()).then_some(id)
}

/// Longest reasoning effort or service tier kept, in bytes (the values are short words such
/// as `high` or `priority`).
pub const MAX_OPTION_BYTES: usize = 32;
/// Longest alias kept, in bytes (as a model name).
pub const MAX_ALIAS_BYTES: usize = 256;

/// A short label of a request (reasoning effort, service tier, alias) as recorded: trimmed,
/// control characters dropped, at most `max` bytes; `None` when nothing is left.
pub fn label(raw: &str, max: usize) -> Option<String> {
    let text = bounded(raw.trim(), max);
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// Longest end user id kept, in bytes: longer ids are cut (at a character boundary), not
/// refused — the provider accepts them, and refusing would break a client over a label.
pub const MAX_USER_BYTES: usize = 128;

/// An end user id as recorded: trimmed, control characters dropped, at most
/// [`MAX_USER_BYTES`] bytes; `None` when nothing is left. Claude Code's `metadata.user_id`
/// (`user_<hash>_account_<uuid>_session_<uuid>`) loses its `_session_…` part: the session is
/// recorded apart, and the user is the same across its sessions.
pub fn end_user(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let raw = match raw.find("_session_") {
        Some(at) if raw.starts_with("user_") => &raw[..at],
        _ => raw,
    };
    let user = bounded(raw, MAX_USER_BYTES);
    let user = user.trim();
    (!user.is_empty()).then(|| user.to_owned())
}

/// A stored call: the record with the id the store gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedCall {
    /// Row id; newer calls have larger ids.
    pub id: i64,
    /// The call.
    pub call: CallRecord,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_families_from_user_agents() {
        let cases = [
            (Some("claude-cli/2.1.3 (external, cli)"), "claude-cli"),
            (
                Some("codex_cli_rs/0.171.0 (Ubuntu 24.4.0; x86_64) xterm"),
                "codex",
            ),
            (Some("OpenAI/Python 1.99.1"), "openai-python"),
            (Some("OpenAI/JS 5.12.0"), "openai-node"),
            (Some("Anthropic/Python 0.64.0"), "anthropic-python"),
            (Some("Anthropic/JS 0.60.0"), "anthropic-typescript"),
            (Some("curl/8.5.0"), "curl"),
            (Some("python-httpx/0.28.1"), "other"),
            (Some("   "), ""),
            (None, ""),
        ];
        for (agent, want) in cases {
            assert_eq!(client_family(agent), want, "{agent:?}");
        }
    }

    #[test]
    fn session_ids_are_trimmed_and_bounded() {
        assert_eq!(session_id(" abc-1 "), Some("abc-1".into()));
        assert_eq!(session_id("a\u{7}b"), Some("ab".into()));
        assert_eq!(session_id(""), None);
        let long = "x".repeat(1000);
        assert_eq!(
            session_id(&long).map(|s| s.chars().count()),
            Some(MAX_SESSION_ID_CHARS)
        );
    }

    #[test]
    fn end_users_are_trimmed_bounded_and_lose_claude_codes_session() {
        assert_eq!(end_user(" alice "), Some("alice".into()));
        assert_eq!(end_user("a\u{7}b"), Some("ab".into()));
        assert_eq!(end_user(" \t"), None);
        let hash = "ab".repeat(32);
        let uuid = "0e5b1c1e-63a4-4a4c-9f0d-0c6f5c3f4f8e";
        assert_eq!(
            end_user(&format!("user_{hash}_account_{uuid}_session_{uuid}")),
            Some(format!("user_{hash}_account_{uuid}"))
        );
        assert_eq!(end_user("ops_session_1"), Some("ops_session_1".into()));
        let long = "é".repeat(100);
        let cut = end_user(&long).unwrap();
        assert_eq!(cut.len(), MAX_USER_BYTES);
        assert!(long.starts_with(&cut));
    }

    #[test]
    fn buckets_include_their_upper_bound() {
        let cases = [
            (0, 0),
            (1, 0),
            (2, 1),
            (3, 2),
            (1_000, 9),
            (1_001, 10),
            (120_000, 15),
            (999_999, 16),
        ];
        for (ms, want) in cases {
            assert_eq!(latency_bucket(ms), want, "{ms} ms");
        }
    }

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let mut buckets = [0u64; LATENCY_BUCKETS];
        assert_eq!(latency_quantile(&buckets, 0.5), None);
        buckets[latency_bucket(80)] = 100; // all in (50, 100]
        let p50 = latency_quantile(&buckets, 0.5).unwrap();
        assert!((p50 - 75.0).abs() < 1e-9, "{p50}");
        let p99 = latency_quantile(&buckets, 0.99).unwrap();
        assert!(p99 > 99.0 && p99 <= 100.0, "{p99}");
        buckets = [0; LATENCY_BUCKETS];
        buckets[LATENCY_BUCKETS - 1] = 3;
        assert_eq!(latency_quantile(&buckets, 0.5), Some(120_000.0));
    }
}
