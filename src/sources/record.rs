//! Ingested records → calls: CLIProxyAPI's usage record and the push endpoint's own shape, read
//! into a [`CallRecord`] with the gateway's meaning of tokens (input = uncached + cache read +
//! cache write), its credential masked and its client key hashed. Pure functions, table-tested.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::usage::{
    client_family, label, CallRecord, Ingested, TokenUsage, MAX_ALIAS_BYTES, MAX_OPTION_BYTES,
};

/// Longest text kept from a record's strings (model, endpoint, error), in bytes.
const MAX_TEXT: usize = 256;
/// Longest bad-record example kept for the health report, in bytes.
pub const MAX_EXAMPLE: usize = 300;

/// What one payload of a source turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A usage record, as a call to store.
    Record(Box<CallRecord>),
    /// One of CLIProxyAPI's control messages (`{"support_refresh":true}`, `{"refresh":true}`).
    Control,
    /// Not a usage record: skipped and counted; the reason names the field.
    Bad(String),
}

/// CLIProxyAPI's `tokens` object (provider-native counts).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NativeTokens {
    input_tokens: i64,
    output_tokens: i64,
    reasoning_tokens: i64,
    cached_tokens: i64,
    cache_read_tokens: Option<i64>,
    cache_creation_tokens: i64,
    total_tokens: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BreakdownInput {
    total_tokens: i64,
    uncached_tokens: i64,
    cache_read_tokens: i64,
    cache_write_tokens: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BreakdownOutput {
    total_tokens: i64,
    non_reasoning_tokens: i64,
    reasoning_tokens: i64,
}

/// `token_breakdown` (accounting version 2): buckets that do not overlap.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Breakdown {
    total_tokens: i64,
    input: BreakdownInput,
    output: BreakdownOutput,
    unclassified_tokens: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Fail {
    status_code: i64,
    body: String,
}

/// One CLIProxyAPI usage record (fields of every version tolerated; unknown ones ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CpaRecord {
    timestamp: String,
    latency_ms: i64,
    ttft_ms: i64,
    source: String,
    auth_index: String,
    tokens: NativeTokens,
    failed: bool,
    fail: Option<Fail>,
    token_breakdown: Option<Breakdown>,
    provider: String,
    model: String,
    alias: String,
    endpoint: String,
    api_key: String,
    reasoning_effort: String,
    service_tier: String,
    request_id: Option<String>,
    user_agent: String,
    support_refresh: Option<bool>,
    refresh: Option<bool>,
}

/// How a provider family reports `tokens.*` (CLIProxyAPI's `tokenAccountingSemanticsFor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// `input_tokens` includes cache read and write; `output_tokens` includes reasoning.
    Subset,
    /// Claude: `input_tokens` is uncached only; `output_tokens` includes thinking.
    Independent,
    /// Gemini: `input_tokens` includes cached; `output_tokens` excludes reasoning.
    SeparateReasoning,
    /// Anything else: only the total is known.
    Unknown,
}

fn family(provider: &str) -> Family {
    match provider.to_ascii_lowercase().as_str() {
        "claude" | "anthropic" => Family::Independent,
        "gemini" | "vertex" | "aistudio" | "antigravity" | "gemini-interactions" => {
            Family::SeparateReasoning
        }
        "openai" | "codex" | "xai" | "kimi" | "qwen" | "deepseek" | "openrouter" => Family::Subset,
        "" | "unknown" => Family::Unknown,
        // An openai-compatibility provider is named by its configuration (e.g. `openrouter`).
        _ => Family::Subset,
    }
}

/// Why a count is refused: negative.
fn count(field: &str, v: i64) -> Result<u64, String> {
    u64::try_from(v).map_err(|_| format!("{field} is negative ({v})"))
}

/// Tokens from `token_breakdown`: each bucket once. Unclassified tokens count in the total only.
fn from_breakdown(b: &Breakdown) -> Result<TokenUsage, String> {
    let uncached = count(
        "token_breakdown.input.uncached_tokens",
        b.input.uncached_tokens,
    )?;
    let cache_read = count(
        "token_breakdown.input.cache_read_tokens",
        b.input.cache_read_tokens,
    )?;
    let cache_write = count(
        "token_breakdown.input.cache_write_tokens",
        b.input.cache_write_tokens,
    )?;
    let non_reasoning = count(
        "token_breakdown.output.non_reasoning_tokens",
        b.output.non_reasoning_tokens,
    )?;
    let reasoning = count(
        "token_breakdown.output.reasoning_tokens",
        b.output.reasoning_tokens,
    )?;
    count("token_breakdown.input.total_tokens", b.input.total_tokens)?;
    count("token_breakdown.output.total_tokens", b.output.total_tokens)?;
    let unclassified = count("token_breakdown.unclassified_tokens", b.unclassified_tokens)?;
    let total = count("token_breakdown.total_tokens", b.total_tokens)?;
    let prompt = uncached + cache_read + cache_write;
    let completion = non_reasoning + reasoning;
    Ok(TokenUsage {
        prompt,
        completion,
        cache_read,
        cache_creation: cache_write,
        reasoning,
        total: total.max(prompt + completion + unclassified),
    })
}

/// Tokens from `tokens.*` of a record without a breakdown (CLIProxyAPI before v7.2.97), by the
/// provider family's meaning of each field.
fn from_native(t: &NativeTokens, provider: &str) -> Result<TokenUsage, String> {
    let input = count("tokens.input_tokens", t.input_tokens)?;
    let output = count("tokens.output_tokens", t.output_tokens)?;
    let reasoning = count("tokens.reasoning_tokens", t.reasoning_tokens)?;
    let cached = count("tokens.cached_tokens", t.cached_tokens)?;
    let cache_read = match t.cache_read_tokens {
        Some(v) => count("tokens.cache_read_tokens", v)?,
        None => cached,
    };
    let cache_creation = count("tokens.cache_creation_tokens", t.cache_creation_tokens)?;
    let total = count("tokens.total_tokens", t.total_tokens)?;
    let (prompt, completion) = match family(provider) {
        Family::Independent => (input + cache_read + cache_creation, output),
        Family::SeparateReasoning => (input, output + reasoning),
        Family::Subset | Family::Unknown => (input, output),
    };
    Ok(TokenUsage {
        prompt,
        completion,
        cache_read,
        cache_creation,
        reasoning,
        total: total.max(prompt + completion),
    })
}

/// `text` without control characters, at most `max` bytes (cut at a character boundary).
pub fn bounded(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// A masked form of a credential's owner: `al***@example.com`, `sk-o…cdef`, `my***`.
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().filter(|c| !c.is_control()).collect();
    if chars.is_empty() {
        return String::new();
    }
    if let Some(at) = chars.iter().position(|&c| c == '@') {
        let head: String = chars[..at.min(2)].iter().collect();
        let domain: String = chars[at..].iter().take(64).collect();
        return format!("{head}***{domain}");
    }
    if chars.len() >= 16 {
        let head: String = chars[..4].iter().collect();
        let tail: String = chars[chars.len() - 4..].iter().collect();
        return format!("{head}…{tail}");
    }
    let head: String = chars[..chars.len().min(2)].iter().collect();
    format!("{head}***")
}

/// A client key as kept: its SHA-256 and a display form (first four and last four characters).
pub fn client_key(key: &str) -> (Option<[u8; 32]>, String) {
    if key.is_empty() {
        return (None, String::new());
    }
    (Some(crate::keys::hash(key)), mask(key))
}

/// The de-duplication key of a CLIProxyAPI record: `request_id` is not unique (retries on other
/// credentials, image-tool records, WebSocket turns, chance), but with the attempt's start
/// (`timestamp`, nanoseconds), the credential (`auth_index`) and the executed `model` it is.
pub fn cpa_dedup_key(request_id: &str, timestamp: &str, auth_index: &str, model: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in ["cliproxyapi", request_id, timestamp, auth_index, model] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

/// Reads one CLIProxyAPI payload (the text of a `usage` message) of source `source`, in one
/// pass (no JSON tree: this runs for every record of a subscription).
pub fn parse_cpa_text(text: &str, source: &str) -> Payload {
    match serde_json::from_str::<CpaRecord>(text) {
        Ok(record) => from_record(record, source),
        Err(e) if e.is_data() && text.trim_start().starts_with('{') => {
            Payload::Bad(format!("unexpected field type ({e})"))
        }
        Err(e) if e.is_data() => Payload::Bad("not a JSON object".into()),
        Err(e) => Payload::Bad(format!("not JSON ({e})")),
    }
}

/// Reads one CLIProxyAPI record already parsed as JSON.
pub fn parse_cpa_value(value: &serde_json::Value, source: &str) -> Payload {
    if !value.is_object() {
        return Payload::Bad("not a JSON object".into());
    }
    match CpaRecord::deserialize(value) {
        Ok(record) => from_record(record, source),
        Err(e) => Payload::Bad(format!("unexpected field type ({e})")),
    }
}

/// A deserialised record: a control message, a call, or bad.
fn from_record(record: CpaRecord, source: &str) -> Payload {
    if record.request_id.is_none() && (record.support_refresh.is_some() || record.refresh.is_some())
    {
        return Payload::Control;
    }
    match cpa_call(record, source) {
        Ok(call) => Payload::Record(Box::new(call)),
        Err(reason) => Payload::Bad(reason),
    }
}

/// A CLIProxyAPI record as a call.
fn cpa_call(r: CpaRecord, source: &str) -> Result<CallRecord, String> {
    let request_id = r
        .request_id
        .filter(|id| !id.trim().is_empty())
        .ok_or("request_id is missing")?;
    let ts: jiff::Timestamp = r.timestamp.parse().map_err(|_| {
        format!(
            "timestamp \"{}\" is not RFC 3339",
            bounded(&r.timestamp, 64)
        )
    })?;
    let tokens = match &r.token_breakdown {
        Some(b) => from_breakdown(b)?,
        None => from_native(&r.tokens, &r.provider)?,
    };
    let latency = count("latency_ms", r.latency_ms)?;
    let ttft = count("ttft_ms", r.ttft_ms)?;
    let fail = r.fail.unwrap_or_default();
    let status = if r.failed {
        u16::try_from(fail.status_code)
            .ok()
            .filter(|s| (400..600).contains(s))
            .unwrap_or(500)
    } else {
        200
    };
    let (method, path) = r.endpoint.split_once(' ').unwrap_or(("", &r.endpoint));
    let error = r.failed.then(|| {
        let body = bounded(fail.body.trim(), MAX_TEXT);
        if body.is_empty() {
            format!("upstream status {status}")
        } else {
            body
        }
    });
    let (client_key_hash, client_key_display) = client_key(&r.api_key);
    let ingest = Ingested {
        dedup_key: cpa_dedup_key(&request_id, &r.timestamp, &r.auth_index, &r.model),
        credential: bounded(&r.auth_index, 64),
        credential_label: mask(&r.source),
        client_key_hash,
        client_key_display,
    };
    Ok(CallRecord {
        ts,
        method: bounded(method, 16),
        endpoint: bounded(path, MAX_TEXT),
        status,
        model: bounded(&r.model, MAX_TEXT),
        tokens,
        duration_ms: latency,
        ttft_ms: (ttft > 0).then_some(ttft),
        error,
        client: client_family(Some(&r.user_agent)).to_owned(),
        provider: bounded(&r.provider, 64),
        source: source.to_owned(),
        alias: label(&r.alias, MAX_ALIAS_BYTES),
        reasoning_effort: label(&r.reasoning_effort, MAX_OPTION_BYTES),
        service_tier: label(&r.service_tier, MAX_OPTION_BYTES),
        ingest: Some(Box::new(ingest)),
        ..CallRecord::default()
    })
}

/// One record of the push endpoint's own shape (see the README, "Pushing usage").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRecord {
    /// The client's id of the record: a retry with the same id is stored once.
    pub id: String,
    /// When the call started (RFC 3339).
    pub ts: String,
    /// The model used.
    pub model: String,
    /// Who served it (free text, e.g. `openai`).
    #[serde(default)]
    pub provider: Option<String>,
    /// `METHOD /path`, or a path.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// HTTP status of the call; 200 when absent.
    #[serde(default)]
    pub status: Option<u16>,
    /// Whole duration in milliseconds.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Time to the first byte of the answer.
    #[serde(default)]
    pub ttft_ms: Option<u64>,
    /// Tokens.
    pub tokens: PushTokens,
    /// The upstream credential's name or id (stored masked).
    #[serde(default)]
    pub credential: Option<String>,
    /// The client's key (stored hashed, with a display form).
    #[serde(default)]
    pub client_key: Option<String>,
    /// What went wrong, for a failed call.
    #[serde(default)]
    pub error: Option<String>,
    /// The model name the client asked for, when it was mapped to `model` (absent: none).
    pub alias: Option<String>,
    /// The reasoning effort asked for (`low`, `high`, …; absent: none).
    pub reasoning_effort: Option<String>,
    /// The service tier asked for (`auto`, `flex`, `priority`, …; absent: none).
    pub service_tier: Option<String>,
}

/// Tokens of a pushed record; `input` includes cache reads and writes, `output` reasoning.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushTokens {
    /// Input tokens, cached ones included.
    pub input: u64,
    /// Output tokens, reasoning included.
    pub output: u64,
    /// Input tokens read from a prompt cache.
    #[serde(default)]
    pub cache_read: u64,
    /// Input tokens written to a prompt cache.
    #[serde(default)]
    pub cache_write: u64,
    /// Output tokens spent on reasoning.
    #[serde(default)]
    pub reasoning: u64,
}

/// Longest pushed record id, in bytes.
pub const MAX_PUSH_ID: usize = 128;

/// A pushed record in our shape as a call of source `source`; the error names the field.
pub fn push_call(r: PushRecord, source: &str) -> Result<CallRecord, String> {
    let id = r.id.trim();
    if id.is_empty() || id.len() > MAX_PUSH_ID {
        return Err(format!("id must be 1 to {MAX_PUSH_ID} bytes"));
    }
    let ts: jiff::Timestamp =
        r.ts.parse()
            .map_err(|_| "ts must be an RFC 3339 time such as 2026-01-31T12:00:00Z".to_owned())?;
    if r.model.trim().is_empty() || r.model.len() > MAX_TEXT {
        return Err(format!("model must be 1 to {MAX_TEXT} bytes"));
    }
    let t = &r.tokens;
    if t.cache_read + t.cache_write > t.input {
        return Err("tokens.input must include tokens.cache_read and tokens.cache_write".into());
    }
    if t.reasoning > t.output {
        return Err("tokens.output must include tokens.reasoning".into());
    }
    let status = r.status.unwrap_or(200);
    if !(100..600).contains(&status) {
        return Err("status must be an HTTP status (100 to 599)".into());
    }
    let endpoint = r.endpoint.unwrap_or_default();
    let (method, path) = endpoint.split_once(' ').unwrap_or(("", &endpoint));
    let credential = r.credential.unwrap_or_default();
    let (client_key_hash, client_key_display) = client_key(r.client_key.as_deref().unwrap_or(""));
    let mut h = Sha256::new();
    for part in ["push", source, id] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let ingest = Ingested {
        dedup_key: h.finalize().into(),
        credential: if credential.is_empty() {
            String::new()
        } else {
            crate::store::hex(&crate::keys::hash(&credential)[..8])
        },
        credential_label: mask(&credential),
        client_key_hash,
        client_key_display,
    };
    Ok(CallRecord {
        ts,
        method: bounded(method, 16),
        endpoint: bounded(path, MAX_TEXT),
        status,
        model: bounded(&r.model, MAX_TEXT),
        tokens: TokenUsage {
            prompt: t.input,
            completion: t.output,
            cache_read: t.cache_read,
            cache_creation: t.cache_write,
            reasoning: t.reasoning,
            total: t.input + t.output,
        },
        duration_ms: r.latency_ms.unwrap_or(0),
        ttft_ms: r.ttft_ms,
        error: r.error.map(|e| bounded(&e, MAX_TEXT)),
        provider: bounded(r.provider.as_deref().unwrap_or_default(), 64),
        source: source.to_owned(),
        alias: r.alias.and_then(|a| label(&a, MAX_ALIAS_BYTES)),
        reasoning_effort: r.reasoning_effort.and_then(|e| label(&e, MAX_OPTION_BYTES)),
        service_tier: r.service_tier.and_then(|t| label(&t, MAX_OPTION_BYTES)),
        ingest: Some(Box::new(ingest)),
        ..CallRecord::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn breakdown(
        u: i64,
        cr: i64,
        cw: i64,
        out: i64,
        reasoning: i64,
        unclassified: i64,
    ) -> serde_json::Value {
        json!({"schema_version": 2, "quality": "complete",
               "total_tokens": u + cr + cw + out + reasoning + unclassified,
               "input": {"total_tokens": u + cr + cw, "uncached_tokens": u, "cache_read_tokens": cr, "cache_write_tokens": cw},
               "output": {"total_tokens": out + reasoning, "non_reasoning_tokens": out, "reasoning_tokens": reasoning},
               "unclassified_tokens": unclassified})
    }

    fn record(extra: serde_json::Value) -> serde_json::Value {
        let mut r = json!({"timestamp": "2026-08-22T10:00:00.123456789+08:00", "latency_ms": 1200,
            "ttft_ms": 300, "source": "alice@example.com", "auth_index": "0123456789abcdef",
            "failed": false, "fail": {"status_code": 200, "body": ""}, "provider": "claude",
            "model": "claude-sonnet-4-5", "alias": "sonnet", "endpoint": "POST /v1/messages",
            "auth_type": "oauth", "api_key": "client-key-0123456789", "request_id": "deadbeef",
            "user_agent": "claude-cli/2.1.3 (external, cli)",
            "tokens": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}});
        if let (Some(r), Some(e)) = (r.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                r.insert(k.clone(), v.clone());
            }
        }
        r
    }

    fn call(v: serde_json::Value) -> CallRecord {
        match parse_cpa_value(&v, "cpa") {
            Payload::Record(c) => *c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tokens_come_from_the_breakdown_with_the_gateways_meaning() {
        let c = call(record(
            json!({"token_breakdown": breakdown(100, 1000, 200, 50, 30, 0)}),
        ));
        assert_eq!(
            c.tokens,
            TokenUsage {
                prompt: 1300,
                completion: 80,
                cache_read: 1000,
                cache_creation: 200,
                reasoning: 30,
                total: 1380
            }
        );
        let c = call(record(
            json!({"token_breakdown": breakdown(0, 0, 0, 0, 0, 42)}),
        ));
        assert_eq!(
            c.tokens.total, 42,
            "unclassified tokens count in the total only"
        );
        assert_eq!(c.tokens.prompt + c.tokens.completion, 0);
    }

    #[test]
    fn records_without_a_breakdown_fall_back_by_provider_family() {
        // (provider, tokens, prompt, completion, cache read, reasoning)
        let cases = [
            (
                "claude",
                json!({"input_tokens": 100, "output_tokens": 80, "reasoning_tokens": 30, "cached_tokens": 1000, "cache_read_tokens": 1000, "cache_creation_tokens": 200, "total_tokens": 1380}),
                1300,
                80,
                1000,
                30,
            ),
            (
                "codex",
                json!({"input_tokens": 1300, "output_tokens": 80, "reasoning_tokens": 30, "cached_tokens": 1000, "cache_read_tokens": 1000, "total_tokens": 1380}),
                1300,
                80,
                1000,
                30,
            ),
            (
                "gemini",
                json!({"input_tokens": 1300, "output_tokens": 50, "reasoning_tokens": 30, "cached_tokens": 1000, "total_tokens": 1380}),
                1300,
                80,
                1000,
                30,
            ),
            (
                "openrouter",
                json!({"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}),
                10,
                5,
                0,
                0,
            ),
            (
                "unknown",
                json!({"input_tokens": 0, "output_tokens": 0, "total_tokens": 99}),
                0,
                0,
                0,
                0,
            ),
        ];
        for (provider, tokens, prompt, completion, cache_read, reasoning) in cases {
            let c = call(record(json!({"provider": provider, "tokens": tokens})));
            assert_eq!(
                (
                    c.tokens.prompt,
                    c.tokens.completion,
                    c.tokens.cache_read,
                    c.tokens.reasoning
                ),
                (prompt, completion, cache_read, reasoning),
                "{provider}"
            );
        }
        let c = call(record(
            json!({"provider": "unknown", "tokens": {"total_tokens": 99}}),
        ));
        assert_eq!(c.tokens.total, 99);
    }

    #[test]
    fn the_call_keeps_no_secret_in_plain_text() {
        let c = call(record(
            json!({"source": "sk-or-v1-0123456789abcdef", "auth_type": "apikey"}),
        ));
        let ingest = c.ingest.as_deref().unwrap();
        assert_eq!(ingest.credential, "0123456789abcdef");
        assert_eq!(ingest.credential_label, "sk-o…cdef");
        assert_eq!(
            ingest.client_key_hash,
            Some(crate::keys::hash("client-key-0123456789"))
        );
        assert_eq!(ingest.client_key_display, "clie…6789");
        let text = format!("{c:?}");
        assert!(
            !text.contains("0123456789abcdef0") && !text.contains("client-key-0123456789"),
            "{text}"
        );
        assert_eq!(mask("alice@example.com"), "al***@example.com");
        assert_eq!(mask("proj"), "pr***");
        assert_eq!(client_key(""), (None, String::new()));
    }

    #[test]
    fn status_endpoint_latency_and_client_are_read() {
        let c = call(record(
            json!({"failed": true, "fail": {"status_code": 429, "body": " rate limited "}, "ttft_ms": 0}),
        ));
        assert_eq!(
            (c.status, c.error.as_deref(), c.ttft_ms),
            (429, Some("rate limited"), None)
        );
        let c = call(record(json!({})));
        assert_eq!(
            (c.method.as_str(), c.endpoint.as_str(), c.status),
            ("POST", "/v1/messages", 200)
        );
        assert_eq!(
            (c.duration_ms, c.ttft_ms, c.client.as_str()),
            (1200, Some(300), "claude-cli")
        );
        assert_eq!(c.ts.to_string(), "2026-08-22T02:00:00.123456789Z");
        let c = call(record(
            json!({"failed": true, "fail": {"status_code": 0, "body": ""}}),
        ));
        assert_eq!(
            (c.status, c.error.as_deref()),
            (500, Some("upstream status 500"))
        );
    }

    #[test]
    fn alias_reasoning_effort_and_service_tier_are_read() {
        let c = call(record(
            json!({"reasoning_effort": "high", "service_tier": "priority"}),
        ));
        assert_eq!(
            (
                c.alias.as_deref(),
                c.reasoning_effort.as_deref(),
                c.service_tier.as_deref()
            ),
            (Some("sonnet"), Some("high"), Some("priority"))
        );
        // Empty strings (no effort asked; records of servers before the fields) are none, and a
        // long value is cut.
        let c = call(record(
            json!({"alias": "", "reasoning_effort": "", "service_tier": "x".repeat(100)}),
        ));
        assert_eq!((c.alias, c.reasoning_effort), (None, None));
        assert_eq!(c.service_tier.map(|t| t.len()), Some(MAX_OPTION_BYTES));
    }

    #[test]
    fn the_dedup_key_tells_apart_what_shares_a_request_id() {
        let base = call(record(json!({})));
        let key = |c: &CallRecord| c.ingest.as_ref().unwrap().dedup_key;
        let retry = call(record(json!({"auth_index": "fedcba9876543210"})));
        let image = call(record(json!({"model": "gpt-image-2"})));
        let turn = call(record(json!({"timestamp": "2026-08-22T10:00:01+08:00"})));
        let again = call(record(json!({})));
        assert_ne!(key(&base), key(&retry));
        assert_ne!(key(&base), key(&image));
        assert_ne!(key(&base), key(&turn));
        assert_eq!(key(&base), key(&again));
    }

    #[test]
    fn bad_records_and_control_messages_are_told_apart() {
        assert_eq!(
            parse_cpa_text(r#"{"support_refresh":true}"#, "cpa"),
            Payload::Control
        );
        assert_eq!(
            parse_cpa_text(r#"{"refresh":true}"#, "cpa"),
            Payload::Control
        );
        let bad = |text: &str| match parse_cpa_text(text, "cpa") {
            Payload::Bad(reason) => reason,
            other => panic!("{text}: {other:?}"),
        };
        assert!(bad("not json").contains("not JSON"));
        assert!(bad("[1]").contains("object"));
        let mut no_id = record(json!({}));
        no_id.as_object_mut().unwrap().remove("request_id");
        assert!(bad(&no_id.to_string()).contains("request_id"));
        let negative = record(json!({"token_breakdown": breakdown(-1, 0, 0, 0, 0, 0)}));
        assert!(bad(&negative.to_string()).contains("uncached_tokens is negative"));
        let negative = record(json!({"tokens": {"input_tokens": 5, "output_tokens": -2}}));
        assert!(bad(&negative.to_string()).contains("tokens.output_tokens"));
        assert!(bad(&record(json!({"timestamp": "yesterday"})).to_string()).contains("timestamp"));
        assert!(bad(&record(json!({"latency_ms": "slow"})).to_string()).contains("type"));
    }

    #[test]
    fn pushed_records_are_validated_field_by_field() {
        let ok = || PushRecord {
            id: "r-1".into(),
            ts: "2026-01-31T12:00:00Z".into(),
            model: "gpt-4o".into(),
            provider: None,
            endpoint: Some("POST /v1/chat/completions".into()),
            status: None,
            latency_ms: Some(10),
            ttft_ms: None,
            tokens: PushTokens {
                input: 10,
                output: 5,
                cache_read: 4,
                cache_write: 0,
                reasoning: 1,
            },
            credential: Some("team-a@example.com".into()),
            client_key: None,
            error: None,
            alias: Some("gpt-4o-latest".into()),
            reasoning_effort: None,
            service_tier: Some(" flex ".into()),
        };
        let c = push_call(ok(), "push").unwrap();
        assert_eq!(
            (c.tokens.prompt, c.tokens.completion, c.tokens.total),
            (10, 5, 15)
        );
        assert_eq!(
            c.ingest.as_ref().unwrap().credential_label,
            "te***@example.com"
        );
        assert_eq!(
            (
                c.alias.as_deref(),
                c.reasoning_effort,
                c.service_tier.as_deref()
            ),
            (Some("gpt-4o-latest"), None, Some("flex"))
        );
        let same = push_call(ok(), "push").unwrap();
        assert_eq!(
            c.ingest.as_ref().unwrap().dedup_key,
            same.ingest.as_ref().unwrap().dedup_key
        );
        type Spoil = fn(&mut PushRecord);
        let cases: [(Spoil, &str); 6] = [
            (|r| r.id = String::new(), "id"),
            (|r| r.ts = "now".into(), "ts"),
            (|r| r.model = " ".into(), "model"),
            (|r| r.tokens.cache_read = 11, "tokens.input"),
            (|r| r.tokens.reasoning = 6, "tokens.output"),
            (|r| r.status = Some(42), "status"),
        ];
        for (spoil, field) in cases {
            let mut r = ok();
            spoil(&mut r);
            let e = push_call(r, "push").unwrap_err();
            assert!(e.starts_with(field), "{field}: {e}");
        }
    }
}
