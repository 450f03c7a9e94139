//! One proxied call, start to end: check the key and its limits, forward the request to the
//! provider, and pass the answer back unchanged while the meter reads its usage.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{stream, Stream, StreamExt};

use super::endpoint::Endpoint;
use super::error::GatewayError;
use super::estimate;
use super::meter::Meter;
use super::providers::Provider;
use super::request::{ParseError, RequestView, MAX_TOKENS_FIELDS};
use super::sse::{parse_event, EventSplitter};
use super::tally::{StreamTally, Verdict};
use super::GatewayState;
use crate::keys::{Budget, KeyEntry, Refusal};

/// Completion tokens reserved for a request that sets no `max_tokens`.
const DEFAULT_MAX_TOKENS: u64 = 4096;
/// Largest non-stream answer kept in memory to read its usage.
const MAX_WHOLE_BODY: usize = 16 * 1024 * 1024;
/// Of a larger answer (a big batch of embeddings), the bytes kept from its start and from its
/// end, where the `usage` object is.
const KEPT_EDGE: usize = 64 * 1024;
/// The record's error when the client hung up before its request body was complete.
pub const CLIENT_GONE_MID_BODY: &str =
    "the client closed the connection before sending the whole request body";
/// Longest model name accepted: longer names are refused (400) and recorded cut to this length.
pub const MAX_MODEL_BYTES: usize = 256;
/// Header telling the client how long the gateway itself took, in milliseconds.
pub const OVERHEAD_HEADER: &str = "x-token-console-overhead-ms";
/// Header of a non-stream answer telling the client what the call cost: USD with nine decimals
/// (`0.000412500`), or `unpriced` when no price is known for the model.
pub const COST_HEADER: &str = "x-token-console-cost";

/// The only client request headers forwarded upstream (an allow-list: anything else, such as
/// `OpenAI-Organization`, `OpenAI-Project`, `Cookie`, `api-key`, `X-Forwarded-*`, `Forwarded` or
/// `Via`, could choose what the operator's provider account bills or leak the client's network).
/// The provider's own credentials and `content-type` are set by the gateway; `accept-encoding` is
/// not forwarded so that answers arrive uncompressed and their usage can be read.
const FORWARDED_REQUEST_HEADERS: [&str; 6] = [
    "accept",
    "user-agent",
    "anthropic-version",
    "anthropic-beta",
    "openai-beta",
    "idempotency-key",
];
/// Request header prefixes forwarded: the official SDKs' `x-stainless-*` telemetry (language,
/// OS, SDK version, retry count, timeout) describes the client program only; it chooses no
/// account, project or credential, and providers use it to diagnose SDK problems.
const FORWARDED_REQUEST_PREFIXES: [&str; 1] = ["x-stainless-"];

/// Whether a client's request header is passed on to the provider.
pub fn forwarded_upstream(name: &HeaderName) -> bool {
    let name = name.as_str();
    FORWARDED_REQUEST_HEADERS.contains(&name)
        || FORWARDED_REQUEST_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix))
}
const DROPPED_RESPONSE_HEADERS: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Handles one call of a token-spending route.
pub async fn handle(state: GatewayState, endpoint: Endpoint, request: Request) -> Response {
    let mut meter = match Meter::start(&state, endpoint, &request).await {
        Ok(meter) => meter,
        Err(unavailable) => return unavailable,
    };
    let prepared = match prepare(&state, endpoint, request, &mut meter).await {
        Ok(prepared) => prepared,
        Err(e) => return refuse(meter, endpoint, e),
    };
    forward(endpoint, prepared, meter).await
}

/// Records a call the gateway refused and answers it in the client's protocol, with the
/// `x-token-console-overhead-ms` header like every other answer.
pub fn refuse(mut meter: Meter, endpoint: Endpoint, error: GatewayError) -> Response {
    let overhead_ms = meter.started().elapsed().as_secs_f64() * 1000.0;
    meter.finish(
        error.status_in(endpoint.protocol()).as_u16(),
        None,
        Some(error.message().to_owned()),
    );
    let mut response = error.into_protocol_response(endpoint.protocol());
    if let Ok(value) = HeaderValue::from_str(&format!("{overhead_ms:.3}")) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(OVERHEAD_HEADER), value);
    }
    response
}

/// A reqwest error and its causes as text, without the URL reqwest puts in its own message.
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&c.to_string());
        cause = c.source();
    }
    if text.is_empty() {
        let kind = if e.is_body() || e.is_decode() {
            "the answer could not be read"
        } else {
            "the request could not be completed"
        };
        text.push_str(kind);
    }
    text
}

struct Prepared {
    provider: Arc<Provider>,
    headers: HeaderMap,
    body: Bytes,
}

/// The key sent as `Authorization: Bearer …` or `x-api-key`.
pub fn client_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    bearer.or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    })
}

/// Notes the key of a call the gateway refuses before checking it (an unknown route, a wrong
/// method), so that the call is recorded when the key is valid, and only then.
pub fn identify(state: &GatewayState, headers: &HeaderMap, meter: &mut Meter) {
    if let Some(entry) = client_key(headers).and_then(|given| state.keys.find(given)) {
        meter.set_key(entry.id, entry.settings().name.clone());
    }
}

/// Finds the live key of a request (asking the store about a key this instance does not know)
/// and checks that it may be used now.
pub async fn authenticate(
    state: &GatewayState,
    headers: &HeaderMap,
    meter: &mut Meter,
) -> Result<Arc<KeyEntry>, GatewayError> {
    let Some(given) = client_key(headers).filter(|k| !k.is_empty()) else {
        return Err(GatewayError::Unauthorized(
            "missing API key: send the key issued by the token console as Authorization: Bearer sk-tc-…".into(),
        ));
    };
    let Some(entry) = state.keys.find_or_look_up(given).await else {
        return Err(GatewayError::Unauthorized(
            "invalid API key: it is unknown or was deleted; create a key in the token console"
                .into(),
        ));
    };
    let settings = entry.settings();
    meter.set_key(entry.id, settings.name.clone());
    if !settings.enabled {
        return Err(GatewayError::Forbidden(format!(
            "the API key \"{}\" is disabled; enable it in the token console",
            settings.name
        )));
    }
    if settings
        .expires_at
        .is_some_and(|at| at <= jiff::Timestamp::now())
    {
        return Err(GatewayError::Forbidden(format!(
            "the API key \"{}\" has expired; extend it or create a new key in the token console",
            settings.name
        )));
    }
    Ok(entry)
}

async fn read_body(
    state: &GatewayState,
    request: Request,
) -> Result<(HeaderMap, Bytes), GatewayError> {
    let limit = state.config.max_body_bytes;
    let too_large = || {
        GatewayError::TooLarge(format!(
            "the request body is larger than the gateway's limit of {limit} bytes; send less, or raise max_body_bytes"
        ))
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let (parts, body) = request.into_parts();
    let wait = Duration::from_millis(state.config.client_body_timeout_ms);
    let read = tokio::time::timeout(wait, axum::body::to_bytes(body, limit)).await;
    let read = read.map_err(|_| {
        GatewayError::RequestTimeout(format!(
            "the request body did not arrive within {} ms (client_body_timeout_ms); send it faster or raise the limit",
            wait.as_millis()
        ))
    })?;
    let bytes = read.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            too_large()
        } else if client_went_away(&e) {
            GatewayError::ClientClosed(CLIENT_GONE_MID_BODY.into())
        } else {
            GatewayError::BadRequest(format!("cannot read the request body: {e}"))
        }
    })?;
    Ok((parts.headers, bytes))
}

/// Whether reading the request body failed because the client's connection ended or broke
/// before the whole body arrived (as opposed to a body that is malformed on the wire).
fn client_went_away(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind;
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                ErrorKind::UnexpectedEof
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
            ) {
                return true;
            }
        }
        cause = e.source();
    }
    false
}

fn parse_request(bytes: &[u8]) -> Result<RequestView<'_>, GatewayError> {
    RequestView::parse(bytes).map_err(|e| match e {
        ParseError::NotObject => {
            GatewayError::BadRequest("the request body must be a JSON object".into())
        }
        ParseError::Syntax(e) => GatewayError::BadRequest(format!(
            "the request body is not valid JSON ({e}); send a JSON object such as {{\"model\":\"…\",\"messages\":[…]}}"
        )),
    })
}

/// The most tokens a call can spend: a true upper bound of its prompt (see
/// [`estimate::prompt_upper_bound`]) plus every answer it asks for at its `max_tokens` (or
/// [`DEFAULT_MAX_TOKENS`] when it sets none).
fn spend_bound(endpoint: Endpoint, body_len: usize, request: &RequestView) -> u64 {
    let completion = if endpoint.has_completion() {
        request
            .max_tokens()
            .unwrap_or(DEFAULT_MAX_TOKENS)
            .saturating_mul(request.choices())
    } else {
        0
    };
    estimate::prompt_upper_bound(body_len, request).saturating_add(completion)
}

/// What a call holds of the budgets until it ends, and the `max_tokens` to send upstream (a
/// lowered one, or [`DEFAULT_MAX_TOKENS`] for a request that names none: without it the model
/// could write past the reservation).
#[derive(Default)]
struct Held {
    tokens: Option<crate::keys::Reservation>,
    money: Option<crate::keys::Reservation>,
    max_tokens: Option<u64>,
}

/// Reserves what the call may spend in tokens and, under a money budget, in nano-dollars.
async fn reserve(
    state: &GatewayState,
    key: &KeyEntry,
    endpoint: Endpoint,
    body_len: usize,
    request: &RequestView<'_>,
    at: jiff::Timestamp,
) -> Result<Held, GatewayError> {
    if !endpoint.spends_tokens() {
        return Ok(Held::default());
    }
    let mut held = Held::default();
    if let Some((reservation, lowered)) =
        reserve_tokens(state, key, endpoint, body_len, request, at).await?
    {
        held.tokens = Some(reservation);
        held.max_tokens = lowered;
    }
    let money = reserve_money(state, key, endpoint, body_len, request, at, held.max_tokens).await?;
    if money.is_some() && held.max_tokens.is_none() {
        held.max_tokens = (endpoint.has_completion() && request.max_tokens().is_none())
            .then_some(DEFAULT_MAX_TOKENS);
    }
    held.money = money;
    Ok(held)
}

/// The refusal of a spent budget (`what`: "token" or "money"), saying when it resets.
fn exhausted(
    state: &GatewayState,
    who: &str,
    what: &str,
    budget: &Budget,
    at: jiff::Timestamp,
) -> GatewayError {
    let when = match budget.period() {
        Some(period) => format!(
            "it resets at {} (every {})",
            period.window(at, &state.config.timezone).end,
            period.name()
        ),
        None => "or wait for it to be reset".to_owned(),
    };
    GatewayError::QuotaExhausted(format!(
        "{who} {what} budget is used up (or what this request may use does not fit in what is left); raise the limit in the token console, {when}"
    ))
}

/// Maps a refusal of the global or the key's budget of `what` to the client's error.
fn refused(
    state: &GatewayState,
    key: &KeyEntry,
    what: &str,
    (global, key_budget): (&Budget, &Budget),
    refusal: Refusal,
    at: jiff::Timestamp,
) -> GatewayError {
    match refusal {
        Refusal::Global => exhausted(state, "the gateway's", what, global, at),
        Refusal::Key => exhausted(
            state,
            &format!("the API key \"{}\"'s", key.settings().name),
            what,
            key_budget,
            at,
        ),
        Refusal::Unavailable(reason) => {
            tracing::error!("cannot confirm the {what} budget: {reason}");
            GatewayError::QuotaExhausted(format!(
                "the {what} budget cannot be confirmed right now (the gateway's database does not answer); retry shortly"
            ))
        }
    }
}

/// Reserves the tokens the call may spend; with the key's `fit_max_tokens`, a call that does
/// not fit reserves what is left instead. The answer's second part is the `max_tokens` to send.
async fn reserve_tokens(
    state: &GatewayState,
    key: &KeyEntry,
    endpoint: Endpoint,
    body_len: usize,
    request: &RequestView<'_>,
    at: jiff::Timestamp,
) -> Result<Option<(crate::keys::Reservation, Option<u64>)>, GatewayError> {
    let key_budget = key.budget.limit().is_some().then_some(&key.budget);
    if state.budget.limit().is_none() && key_budget.is_none() {
        return Ok(None);
    }
    let amount = spend_bound(endpoint, body_len, request);
    let fit = key.settings().fit_max_tokens && endpoint.has_completion();
    let reserved = match Budget::reserve(&state.budget, key_budget, amount, at).await {
        Err(Refusal::Global | Refusal::Key) if fit => {
            // The prompt must fit whole; the answers get what is left, at least a token each.
            let prompt = estimate::prompt_upper_bound(body_len, request);
            let choices = request.choices();
            let least = prompt.saturating_add(choices);
            Budget::reserve_up_to(&state.budget, key_budget, least, amount, at)
                .await
                .map(|r| {
                    let output = r.amount().saturating_sub(prompt) / choices;
                    let lowered = (r.amount() < amount).then_some(output.max(1));
                    (r, lowered)
                })
        }
        // A request that names no output limit may run to the model's own: it is given the
        // limit it was reserved for, so that the reservation stays a true upper bound.
        other => other.map(|r| {
            let unlimited = endpoint.has_completion() && request.max_tokens().is_none();
            (r, unlimited.then_some(DEFAULT_MAX_TOKENS))
        }),
    };
    reserved.map(Some).map_err(|refusal| {
        refused(
            state,
            key,
            "token",
            (&state.budget, &key.budget),
            refusal,
            at,
        )
    })
}

/// Reserves, under a money budget (the global `quota.total_cost` or the key's `cost_limit`),
/// what the call can cost at most: its token bound at the model's highest prices, with the
/// output bound lowered to `max_tokens` when the token budget lowered it. A model without a
/// known price is refused: its cost could not be bounded, nor charged.
async fn reserve_money(
    state: &GatewayState,
    key: &KeyEntry,
    endpoint: Endpoint,
    body_len: usize,
    request: &RequestView<'_>,
    at: jiff::Timestamp,
    max_tokens: Option<u64>,
) -> Result<Option<crate::keys::Reservation>, GatewayError> {
    let key_budget = key
        .cost_budget
        .limit()
        .is_some()
        .then_some(&key.cost_budget);
    if state.cost_budget.limit().is_none() && key_budget.is_none() {
        return Ok(None);
    }
    let model = request.model.as_deref().unwrap_or_default();
    let input = estimate::prompt_upper_bound(body_len, request);
    let output = if endpoint.has_completion() {
        max_tokens
            .or(request.max_tokens())
            .unwrap_or(DEFAULT_MAX_TOKENS)
            .saturating_mul(request.choices())
    } else {
        0
    };
    let Some(nanos) = state.sinks.prices.max_cost_nanos(model, at, input, output) else {
        let whose = if key_budget.is_some() {
            format!("the API key \"{}\" has", key.settings().name)
        } else {
            "the gateway has".to_owned()
        };
        return Err(GatewayError::Forbidden(format!(
            "the model \"{model}\" has no known price, and {whose} a money budget, which cannot admit a call whose cost it cannot bound; add its price under pricing.models in config.yaml, or remove the money limit"
        )));
    };
    Budget::reserve(&state.cost_budget, key_budget, nanos, at)
        .await
        .map(Some)
        .map_err(|refusal| {
            refused(
                state,
                key,
                "money",
                (&state.cost_budget, &key.cost_budget),
                refusal,
                at,
            )
        })
}

async fn prepare(
    state: &GatewayState,
    endpoint: Endpoint,
    request: Request,
    meter: &mut Meter,
) -> Result<Prepared, GatewayError> {
    let key = authenticate(state, request.headers(), meter).await?;
    let (headers, bytes) = read_body(state, request).await?;
    let view = parse_request(&bytes)?;
    meter.set_user(view.end_user());
    meter.set_options(view.reasoning_effort(), view.service_tier.as_deref());
    let model = match view.model.as_deref() {
        Some(m) if !m.trim().is_empty() => m,
        _ => {
            return Err(GatewayError::BadRequest(
                "the request needs a \"model\" (a string naming the model)".into(),
            ))
        }
    };
    let stream = view.stream;
    if model.len() > MAX_MODEL_BYTES {
        meter.set_request(Meter::UNROUTED, stream, Bytes::new());
        let cut = estimate::prefix(model, 64);
        return Err(GatewayError::BadRequest(format!(
            "the model name is {} bytes long, more than the gateway's limit of {MAX_MODEL_BYTES}; name a configured model (it began \"{cut}…\")",
            model.len()
        )));
    }
    let provider = state.sinks.gateway.route(endpoint, model);
    if let Some(provider) = &provider {
        meter.set_provider(&provider.config.name);
    }
    // Calls and metrics are grouped by the model only once it routes to a configured provider,
    // so that names a client invents cannot grow the aggregates (see ARCHITECTURE.md).
    let label = if provider.is_some() {
        model
    } else {
        Meter::UNROUTED
    };
    let settings = key.settings();
    if settings
        .allowed_models
        .as_ref()
        .is_some_and(|allowed| !super::glob::any(allowed, model))
    {
        meter.set_request(label, stream, Bytes::new());
        return Err(GatewayError::Forbidden(format!(
            "the API key \"{}\" may not use the model \"{model}\"; allow it for the key in the token console",
            settings.name
        )));
    }
    let with_usage = (stream && endpoint.wants_stream_usage_option())
        .then(|| ask_for_stream_usage(&bytes, &view))
        .flatten();
    let hide_usage_chunk = with_usage.is_some();
    meter.set_request(label, stream, bytes.clone());
    meter.tally = StreamTally::new(hide_usage_chunk);
    let provider = provider.ok_or_else(|| {
        GatewayError::NotFound(format!(
            "no configured provider serves the model \"{model}\" on {}; add it to a provider's models in config.yaml",
            endpoint.path()
        ))
    })?;
    // Counting tokens spends nothing and is not a call: it neither uses nor is held to the RPM
    // limit (Claude Code sends a burst of them for `/context`).
    let rpm_limit = settings
        .rpm_limit
        .filter(|_| endpoint != Endpoint::CountTokens);
    if let Err(retry_after) = state.keys.check_rate(&key, rpm_limit).await {
        return Err(GatewayError::RateLimited(
            format!(
                "the API key \"{}\" is limited to {} requests per minute; retry after {retry_after} s",
                settings.name,
                settings.rpm_limit.unwrap_or(0)
            ),
            retry_after,
        ));
    }
    let mut body = with_usage.unwrap_or_else(|| bytes.clone());
    let held = reserve(
        state,
        &key,
        endpoint,
        body.len(),
        &view,
        meter.recorded_at(),
    )
    .await?;
    if let Some(max_tokens) = held.max_tokens {
        body = lower_max_tokens(&body, endpoint, &view, max_tokens);
    }
    meter.hold(held.tokens, held.money);
    Ok(Prepared {
        provider,
        headers,
        body,
    })
}

/// The body with `stream_options.include_usage` set to `true`, when the client did not ask for
/// the usage chunk and the gateway can ask for it (`stream_options` absent, `null` or an
/// object); `None` otherwise. Spliced into the client's bytes: re-serialising a large body would
/// cost a pass over all of it. A member name written with escapes, which the splice does not
/// find, has the body re-serialised.
fn ask_for_stream_usage(body: &Bytes, view: &RequestView) -> Option<Bytes> {
    if view.include_usage {
        return None;
    }
    if !view.has_stream_options {
        return Some(splice_member(body, USAGE_OPTION));
    }
    let spans = member_values(body, &["stream_options"]).filter(|s| !s.is_empty());
    let Some(spans) = spans else {
        return view
            .stream_options_object
            .then(|| reserialised(body, set_include_usage))
            .flatten();
    };
    let mut edits = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        let value = &body[start..end];
        if value == b"null" {
            edits.push((start, end, Cow::Borrowed(&br#"{"include_usage":true}"#[..])));
            continue;
        }
        if !value.starts_with(b"{") {
            return None;
        }
        match member_values(value, &["include_usage"]) {
            Some(inner) if !inner.is_empty() => edits.extend(
                inner
                    .into_iter()
                    .map(|(s, e)| (start + s, start + e, Cow::Borrowed(&b"true"[..]))),
            ),
            Some(_) => {
                let spliced = splice_member(value, br#""include_usage":true"#);
                edits.push((start, end, Cow::Owned(spliced.to_vec())));
            }
            None => return reserialised(body, set_include_usage),
        }
    }
    Some(apply_edits(body, &edits))
}

/// The member asking for the usage chunk, as the gateway adds it.
const USAGE_OPTION: &[u8] = br#""stream_options":{"include_usage":true}"#;

/// Sets `stream_options.include_usage` in a request read as a tree; whether it could.
fn set_include_usage(object: &mut serde_json::Map<String, serde_json::Value>) -> bool {
    let options = object
        .entry("stream_options")
        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    if options.is_null() {
        *options = serde_json::Value::Object(serde_json::Map::new());
    }
    match options {
        serde_json::Value::Object(options) => {
            options.insert("include_usage".into(), serde_json::Value::Bool(true));
            true
        }
        _ => false,
    }
}

/// The body read as a tree, changed by `change` and written again (for the rare body a splice
/// cannot read); `None` when it is not a JSON object or `change` declines.
fn reserialised(
    body: &[u8],
    change: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>) -> bool,
) -> Option<Bytes> {
    let mut value = serde_json::from_slice::<serde_json::Value>(body).ok()?;
    let object = value.as_object_mut()?;
    change(object).then(|| Bytes::from(value.to_string()))
}

/// `body` with each span `start..end` replaced by its bytes (spans in order, not overlapping).
fn apply_edits(body: &[u8], edits: &[(usize, usize, Cow<'_, [u8]>)]) -> Bytes {
    let added: usize = edits.iter().map(|(_, _, with)| with.len()).sum();
    let mut out = Vec::with_capacity(body.len() + added);
    let mut at = 0;
    for (start, end, with) in edits {
        out.extend_from_slice(&body[at..*start]);
        out.extend_from_slice(with);
        at = *end;
    }
    out.extend_from_slice(&body[at..]);
    Bytes::from(out)
}

fn upstream_headers(client: &HeaderMap, provider: &Provider) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(client.len() + 2);
    for (name, value) in client {
        if forwarded_upstream(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    provider.authorize(&mut headers);
    headers
}

fn send_error(provider: &Provider, e: &reqwest::Error, timeout: Duration) -> GatewayError {
    if e.is_timeout() {
        GatewayError::Timeout(format!(
            "the provider \"{}\" did not answer within {} ms; try again later",
            provider.config.name,
            timeout.as_millis()
        ))
    } else if e.is_connect() {
        GatewayError::BadGateway(format!(
            "cannot connect to the provider \"{}\"; check its base_url and that it is up",
            provider.config.name
        ))
    } else {
        // reqwest's errors name the provider's URL; the client is told the provider's name only.
        GatewayError::BadGateway(format!(
            "the request to the provider \"{}\" failed: {}; check that the provider is up",
            provider.config.name,
            error_chain(e)
        ))
    }
}

async fn forward(endpoint: Endpoint, prepared: Prepared, mut meter: Meter) -> Response {
    let provider = prepared.provider.clone();
    let timeout = Duration::from_millis(provider.config.first_byte_timeout_ms);
    let request = provider
        .client
        .post(provider.url(endpoint))
        .headers(upstream_headers(&prepared.headers, &provider))
        .body(prepared.body);
    let before_send = meter.started().elapsed();
    let sent = tokio::time::timeout(timeout, request.send()).await;
    let upstream = match sent {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return refuse(meter, endpoint, send_error(&provider, &e, timeout)),
        Err(_) => {
            return refuse(
                meter,
                endpoint,
                GatewayError::Timeout(format!(
                    "the provider \"{}\" sent no answer within {} ms (first_byte_timeout_ms); try again later",
                    provider.config.name,
                    timeout.as_millis()
                )),
            )
        }
    };
    let after_headers = std::time::Instant::now();
    let status = upstream.status();
    meter.answered(status.as_u16());
    let is_sse = upstream
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let mut builder = Response::builder().status(status);
    for (name, value) in upstream.headers() {
        let drop = DROPPED_RESPONSE_HEADERS.contains(&name.as_str())
            || (is_sse && name == header::CONTENT_LENGTH);
        if !drop {
            builder = builder.header(name, value);
        }
    }
    meter.overhead_ms = (before_send + after_headers.elapsed()).as_secs_f64() * 1000.0;
    if let Ok(value) = HeaderValue::from_str(&format!("{:.3}", meter.overhead_ms)) {
        builder = builder.header(HeaderName::from_static(OVERHEAD_HEADER), value);
    }
    let declared_length = if is_sse {
        None
    } else {
        upstream.content_length()
    };
    let idle = Duration::from_millis(provider.config.stream_idle_timeout_ms);
    let cost = (!is_sse).then(|| meter.cost());
    let relayed = relay(
        upstream.bytes_stream(),
        meter,
        status,
        is_sse,
        declared_length,
        idle,
    );
    let body = match cost {
        Some(cost) => {
            let (body, header) = whole_with_cost(Box::pin(relayed), cost).await;
            if let Some(value) = header {
                builder = builder.header(HeaderName::from_static(COST_HEADER), value);
            }
            body
        }
        None => Body::from_stream(relayed),
    };
    builder
        .body(body)
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// A non-stream answer read whole before it is passed on, so that its headers can carry what
/// the call cost (the call is recorded, and priced, when its answer is complete). An answer
/// larger than [`MAX_WHOLE_BODY`] is passed on as it arrives instead, without the cost; one
/// that breaks off is passed on as far as it came, then broken off as before.
async fn whole_with_cost<S>(
    mut relayed: S,
    cost: tokio::sync::oneshot::Receiver<super::meter::Cost>,
) -> (Body, Option<HeaderValue>)
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + Unpin + 'static,
{
    let mut chunks: Vec<Result<Bytes, std::io::Error>> = Vec::new();
    let mut size = 0usize;
    while let Some(item) = relayed.next().await {
        let failed = item.is_err();
        size += item.as_ref().map_or(0, Bytes::len);
        chunks.push(item);
        if failed {
            return (Body::from_stream(stream::iter(chunks)), None);
        }
        if size > MAX_WHOLE_BODY {
            return (Body::from_stream(stream::iter(chunks).chain(relayed)), None);
        }
    }
    let header = cost.await.ok().and_then(|(nanos, _)| {
        let text = nanos.map_or_else(|| "unpriced".to_owned(), crate::pricing::usd_text);
        HeaderValue::from_str(&text).ok()
    });
    (Body::from_stream(stream::iter(chunks)), header)
}

struct Relay<S> {
    upstream: S,
    /// The body's declared length: hyper stops reading a body once it has sent that many
    /// bytes, so the call must be complete then, not only when the stream ends.
    declared_length: Option<u64>,
    received: u64,
    /// Longest silence allowed between two chunks of the answer.
    idle: Duration,
    meter: Meter,
    status: StatusCode,
    sse: Option<EventSplitter>,
    /// The non-stream answer so far; past [`MAX_WHOLE_BODY`], only its first bytes.
    whole: Vec<u8>,
    /// The last bytes of a non-stream answer larger than [`MAX_WHOLE_BODY`].
    tail: Option<Vec<u8>>,
    pending: std::collections::VecDeque<Bytes>,
    done: bool,
}

/// The answer's bytes as they arrive: SSE event by event (holding back a hidden usage chunk),
/// other bodies chunk by chunk while a copy is kept to read the usage at the end.
fn relay<S>(
    upstream: S,
    meter: Meter,
    status: StatusCode,
    is_sse: bool,
    declared_length: Option<u64>,
    idle: Duration,
) -> impl Stream<Item = Result<Bytes, std::io::Error>>
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Send + Unpin + 'static,
{
    let state = Relay {
        upstream,
        declared_length,
        received: 0,
        idle,
        meter,
        status,
        sse: is_sse.then(EventSplitter::default),
        whole: Vec::new(),
        tail: None,
        pending: std::collections::VecDeque::new(),
        done: false,
    };
    stream::unfold(state, |mut relay| async move {
        loop {
            if let Some(bytes) = relay.pending.pop_front() {
                return Some((Ok(bytes), relay));
            }
            if relay.done {
                return None;
            }
            let Ok(next) = tokio::time::timeout(relay.idle, relay.upstream.next()).await else {
                relay.done = true;
                let message = format!(
                    "the provider sent nothing for {} ms (stream_idle_timeout_ms); the answer was cut off",
                    relay.idle.as_millis()
                );
                relay
                    .meter
                    .cut_short(StatusCode::GATEWAY_TIMEOUT.as_u16(), message);
                return Some((Err(std::io::Error::other("upstream answer stalled")), relay));
            };
            match next {
                Some(Ok(chunk)) => {
                    relay.take(chunk);
                    if relay.declared_length.is_some_and(|n| relay.received >= n) {
                        relay.end();
                    }
                }
                Some(Err(e)) => {
                    relay.done = true;
                    relay.meter.cut_short(
                        StatusCode::BAD_GATEWAY.as_u16(),
                        format!("the provider's answer broke off: {}", error_chain(&e)),
                    );
                    return Some((
                        Err(std::io::Error::other("upstream answer broke off")),
                        relay,
                    ));
                }
                None => relay.end(),
            }
        }
    })
}

impl<S> Relay<S> {
    fn take(&mut self, chunk: Bytes) {
        self.meter.first_byte();
        self.received += chunk.len() as u64;
        match &mut self.sse {
            Some(splitter) => {
                splitter.push(chunk);
                while let Some(event) = splitter.next_event() {
                    let (_, data) = parse_event(&event);
                    if self.meter.tally.observe(&data) == Verdict::Forward {
                        self.pending.push_back(event);
                    }
                }
            }
            None => {
                self.keep(&chunk);
                self.pending.push_back(chunk);
            }
        }
    }

    /// Keeps a copy of a non-stream answer to read its usage at the end: the whole answer up to
    /// [`MAX_WHOLE_BODY`], then only its first and last [`KEPT_EDGE`] bytes.
    fn keep(&mut self, chunk: &[u8]) {
        let tail = match &mut self.tail {
            Some(tail) => {
                tail.extend_from_slice(chunk);
                tail
            }
            None if self.whole.len() + chunk.len() <= MAX_WHOLE_BODY => {
                self.whole.extend_from_slice(chunk);
                return;
            }
            None => {
                // Past the limit: the first bytes stay in `whole`, the rest go to the tail.
                let mut tail = self.whole.split_off(self.whole.len().min(KEPT_EDGE));
                let room = KEPT_EDGE - self.whole.len();
                let (head, rest) = chunk.split_at(room.min(chunk.len()));
                self.whole.extend_from_slice(head);
                self.whole.shrink_to_fit();
                tail.extend_from_slice(rest);
                self.tail.insert(tail)
            }
        };
        if tail.len() > 2 * KEPT_EDGE {
            tail.drain(..tail.len() - KEPT_EDGE);
            if tail.capacity() > 4 * KEPT_EDGE {
                tail.shrink_to(2 * KEPT_EDGE);
            }
        }
    }

    fn end(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some(rest) = self.sse.as_mut().and_then(EventSplitter::finish) {
            let (_, data) = parse_event(&rest);
            if self.meter.tally.observe(&data) == Verdict::Forward {
                self.pending.push_back(rest);
            }
        }
        let status = self.status.as_u16();
        if self.sse.is_some() {
            let cut_off = (200..300)
                .contains(&status)
                .then(|| self.meter.stream_end_missing())
                .flatten();
            let malformed = self
                .meter
                .tally
                .malformed
                .then(|| "the provider's stream had malformed events".to_owned());
            let problems: Vec<String> = malformed.into_iter().chain(cut_off).collect();
            let error = (!problems.is_empty()).then(|| problems.join("; "));
            self.meter.finish(status, None, error);
        } else if let Some(tail) = self.tail.take() {
            let usage = super::tally::from_fragment(&tail)
                .or_else(|| super::tally::from_fragment(&self.whole));
            let error = match usage {
                Some(usage) => {
                    self.meter.tally.report_final(&usage);
                    None
                }
                None => Some(format!(
                    "the provider's answer ({} bytes) is too large to read whole and no usage was found at its start or end",
                    self.received
                )),
            };
            self.meter.finish(status, None, error);
        } else {
            let body = std::mem::take(&mut self.whole);
            self.meter.finish(status, Some(&body), None);
        }
    }
}

/// The body with the value of each top-level token-limit member ([`MAX_TOKENS_FIELDS`]) replaced
/// by `max_tokens`, or with the protocol's member added when it has none. The number is spliced
/// into the client's bytes (re-serialising a large body would cost a pass over all of it); a
/// body the splice cannot read (a member name written with escapes) is re-serialised.
fn lower_max_tokens(
    body: &Bytes,
    endpoint: Endpoint,
    request: &RequestView,
    max_tokens: u64,
) -> Bytes {
    let number = max_tokens.to_string();
    match member_values(body, &MAX_TOKENS_FIELDS) {
        Some(spans) if !spans.is_empty() => {
            let edits: Vec<_> = spans
                .into_iter()
                .map(|(start, end)| (start, end, Cow::Borrowed(number.as_bytes())))
                .collect();
            apply_edits(body, &edits)
        }
        Some(_) if !request.has_max_tokens_field() => {
            let name = limit_field(endpoint);
            let member = format!("\"{name}\":{number}");
            splice_member(body, member.as_bytes())
        }
        _ => reserialised(body, |object| {
            let name = MAX_TOKENS_FIELDS
                .iter()
                .find(|f| object.contains_key(**f))
                .copied()
                .unwrap_or(limit_field(endpoint));
            for field in MAX_TOKENS_FIELDS {
                if object.contains_key(field) {
                    object.insert(field.into(), max_tokens.into());
                }
            }
            object.entry(name).or_insert_with(|| max_tokens.into());
            true
        })
        .unwrap_or_else(|| body.clone()),
    }
}

/// The member a request of `endpoint` names its output limit with when the gateway adds one:
/// chat/completions takes `max_completion_tokens` (OpenAI's reasoning models refuse
/// `max_tokens`), the Responses API `max_output_tokens`, the others `max_tokens`.
fn limit_field(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Responses => "max_output_tokens",
        Endpoint::ChatCompletions => "max_completion_tokens",
        _ => "max_tokens",
    }
}

/// The body with `member` added as the first member of its top-level object.
fn splice_member(body: &[u8], member: &[u8]) -> Bytes {
    let Some(open) = body.iter().position(|&b| b == b'{') else {
        return Bytes::copy_from_slice(body);
    };
    let empty = body[open + 1..]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'}');
    let mut spliced = Vec::with_capacity(body.len() + member.len() + 1);
    spliced.extend_from_slice(&body[..=open]);
    spliced.extend_from_slice(member);
    if !empty {
        spliced.push(b',');
    }
    spliced.extend_from_slice(&body[open + 1..]);
    Bytes::from(spliced)
}

/// The byte spans of the values of the top-level members of the JSON object `body` whose names
/// (as written, without escapes) are among `names`; `None` when `body` is not such an object.
fn member_values(body: &[u8], names: &[&str]) -> Option<Vec<(usize, usize)>> {
    let skip_ws = |mut i: usize| {
        while body.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    let mut i = skip_ws(0);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(i + 1);
    let mut spans = Vec::new();
    if body.get(i) == Some(&b'}') {
        return Some(spans);
    }
    loop {
        let name_end = string_end(body, i)?;
        let name = body.get(i + 1..name_end - 1)?;
        i = skip_ws(name_end);
        if body.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(i + 1);
        let end = value_end(body, start)?;
        if names.iter().any(|n| n.as_bytes() == name) {
            spans.push((start, end));
        }
        i = skip_ws(end);
        match body.get(i) {
            Some(b',') => i = skip_ws(i + 1),
            Some(b'}') => return Some(spans),
            _ => return None,
        }
    }
}

/// The index just past the JSON string that starts at `start`.
fn string_end(body: &[u8], start: usize) -> Option<usize> {
    if body.get(start) != Some(&b'"') {
        return None;
    }
    let mut i = start + 1;
    loop {
        match body.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// The index just past the JSON value that starts at `start`.
fn value_end(body: &[u8], start: usize) -> Option<usize> {
    match body.get(start)? {
        b'"' => string_end(body, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            loop {
                match body.get(i)? {
                    b'"' => {
                        i = string_end(body, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let mut i = start;
            while body
                .get(i)
                .is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace())
            {
                i += 1;
            }
            (i > start).then_some(i)
        }
    }
}

/// Runs every read the gateway makes of a client's request body (for the fuzzer).
pub(crate) fn inspect(bytes: &[u8]) {
    let Ok(view) = parse_request(bytes) else {
        return;
    };
    let body = Bytes::copy_from_slice(bytes);
    if let Some(spliced) = ask_for_stream_usage(&body, &view) {
        let reread = RequestView::parse(&spliced).ok();
        debug_assert!(
            reread.is_some_and(|r| r.include_usage),
            "asking for the usage chunk keeps the body JSON and asks"
        );
    }
    let lowered = lower_max_tokens(&body, Endpoint::Messages, &view, 1);
    let reread = RequestView::parse(&lowered).ok();
    debug_assert!(
        reread.is_some_and(|r| r.has_max_tokens_field()),
        "lowering max_tokens keeps the body JSON"
    );
    let _ = spend_bound(Endpoint::ChatCompletions, bytes.len(), &view);
    // The tokenizer estimate reads the body as a tree, only when a call needs one.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        let _ = estimate::prompt_tokens(&value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(body: &[u8]) -> Option<String> {
        let body = Bytes::copy_from_slice(body);
        let view = RequestView::parse(&body).unwrap();
        ask_for_stream_usage(&body, &view).map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn splices_the_usage_option_into_the_clients_bytes() {
        assert_eq!(
            asked(br#" {"model": "m", "stream": true}"#).as_deref(),
            Some(r#" {"stream_options":{"include_usage":true},"model": "m", "stream": true}"#)
        );
        assert_eq!(
            asked(b"{ }").as_deref(),
            Some(r#"{"stream_options":{"include_usage":true} }"#)
        );
        // Present but not asking: the option is set inside the client's own object.
        assert_eq!(
            asked(br#"{"model":"m","stream_options":{"include_usage": false,"x":1}}"#).as_deref(),
            Some(r#"{"model":"m","stream_options":{"include_usage": true,"x":1}}"#)
        );
        assert_eq!(
            asked(br#"{"model":"m","stream_options":{ "x":1}}"#).as_deref(),
            Some(r#"{"model":"m","stream_options":{"include_usage":true, "x":1}}"#)
        );
        assert_eq!(
            asked(br#"{"model":"m","stream_options":null}"#).as_deref(),
            Some(r#"{"model":"m","stream_options":{"include_usage":true}}"#)
        );
        // Asked for by the client, or not an object: left alone (and the chunk not hidden).
        assert_eq!(asked(br#"{"stream_options":{"include_usage":true}}"#), None);
        assert_eq!(asked(br#"{"stream_options":"x"}"#), None);
        // A name written with escapes is not found by the splice: the body is re-serialised.
        let escaped = asked(br#"{"model":"m","stream\u005foptions":{"include_usage":false}}"#);
        let reread: serde_json::Value = serde_json::from_str(&escaped.unwrap()).unwrap();
        assert_eq!(reread["stream_options"]["include_usage"], true);
    }

    fn lowered(body: &[u8], endpoint: Endpoint, max_tokens: u64) -> Bytes {
        let body = Bytes::copy_from_slice(body);
        let view = RequestView::parse(&body).unwrap();
        lower_max_tokens(&body, endpoint, &view, max_tokens)
    }

    #[test]
    fn lowers_only_the_top_level_max_tokens_in_the_clients_bytes() {
        let body = br#"{"model":"m", "messages":[{"content":"\"max_tokens\": 9","max_tokens":7}],
            "max_tokens" : 32000 ,"n":1}"#;
        let expected =
            br#"{"model":"m", "messages":[{"content":"\"max_tokens\": 9","max_tokens":7}],
            "max_tokens" : 4242 ,"n":1}"#;
        assert_eq!(
            &lowered(body, Endpoint::ChatCompletions, 4242)[..],
            &expected[..]
        );
        let body = br#"{"model":"m","max_output_tokens":null}"#;
        assert_eq!(
            &lowered(body, Endpoint::Responses, 5)[..],
            br#"{"model":"m","max_output_tokens":5}"#
        );
    }

    #[test]
    fn adds_the_protocols_max_tokens_when_the_request_has_none() {
        let body = br#"{"model":"m","input":"hi"}"#;
        assert_eq!(
            &lowered(body, Endpoint::Responses, 5)[..],
            br#"{"max_output_tokens":5,"model":"m","input":"hi"}"#
        );
        assert_eq!(
            &lowered(body, Endpoint::Messages, 5)[..],
            br#"{"max_tokens":5,"model":"m","input":"hi"}"#
        );
        // A name written with escapes is not found by the splice: the body is re-serialised.
        let body = br#"{"model":"m","max\u005ftokens":900}"#;
        let reread: serde_json::Value =
            serde_json::from_slice(&lowered(body, Endpoint::Messages, 5)).unwrap();
        assert_eq!(reread["max_tokens"], 5);
    }
}
