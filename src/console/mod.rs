//! The token console: the REST API under `/api/console` and the page under `console.path`.
//!
//! Handlers are thin: they parse the request (see [`params`]), call one function of the
//! sub-module that owns the feature, and wrap the result in the envelope.

pub mod auth;
mod export;
mod insights;
mod keys;
pub mod logs;
pub mod openapi;
pub mod page;
mod params;
mod sources;
mod stats;
mod usage;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{middleware, Json, Router};

use crate::config::Config;
use crate::error::ConsoleError;
use crate::keys::KeyRegistry;
use crate::store::Store;
use crate::usage::Recorder;
use auth::{Admitted, Gatekeeper, PageAccess};

use params::{
    AlertsQuery, AnomaliesQuery, ConsoleJson, ConsoleQuery, ExportQuery, IngestQuery, LogsQuery,
    SourcesQuery, StatsQuery, TrendQuery, UsageParams,
};
use wire::{CreateKey, Done, Envelope, PatchKey};

type ApiResult<T> = Result<Json<Envelope<T>>, ConsoleError>;

/// What the console's handlers use: the store they read, the keys they change, the recorder's
/// live feed, and who may come in.
#[derive(Clone)]
pub struct ConsoleState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The store (read here; keys are changed through it).
    pub store: Store,
    /// Live keys, told of every change made here.
    pub keys: Arc<KeyRegistry>,
    /// The recorder, whose live feed the log stream follows.
    pub recorder: Arc<Recorder>,
    /// Who may use the console.
    pub gate: Arc<Gatekeeper>,
    /// Live-log streams open now, capped per client and in all.
    pub log_streams: Arc<logs::StreamLimits>,
    /// Fires when the process starts shutting down (ends live streams).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The clock budget periods are measured by.
    pub clock: crate::clock::Clock,
    /// The prices stored costs are recomputed with (`POST /api/console/reprice`).
    pub prices: Arc<crate::pricing::PriceBook>,
    /// Held while a repricing runs (one at a time).
    pub repricing: Arc<tokio::sync::Mutex<()>>,
    /// The usage sources, for their health.
    pub sources: Arc<crate::sources::Sources>,
}

impl FromRef<ConsoleState> for Arc<Gatekeeper> {
    fn from_ref(state: &ConsoleState) -> Self {
        state.gate.clone()
    }
}

/// The console API and page, for the listener that serves the console.
pub fn router<S: Clone + Send + Sync + 'static>(state: &ConsoleState) -> Router<S> {
    let api = Router::new()
        .route("/stats", get(get_stats))
        .route("/usage-trend", get(get_trend))
        .route("/usage", get(get_usage))
        .route("/logs", get(get_logs))
        .route("/logs/stream", get(stream_logs))
        .route("/keys", get(list_keys).post(create_key))
        .route(
            "/keys/{id}",
            axum::routing::patch(patch_key).delete(delete_key),
        )
        .route("/export", get(export))
        .route("/reprice", axum::routing::post(reprice))
        .route("/anomalies", get(get_anomalies))
        .route("/alerts", get(get_alerts))
        .route("/sources", get(get_sources))
        .route("/openapi.json", get(openapi))
        .fallback(api_not_found)
        .route_layer(middleware::from_extractor_with_state::<Admitted, _>(
            state.clone(),
        ))
        .layer(middleware::map_response(no_store));
    let path = state.config.console.path.clone();
    let with_slash = format!("{path}/");
    Router::new()
        // The push endpoint admits by the ingest key, not the admin key: outside `api`'s gate.
        .route("/api/console/ingest", axum::routing::post(ingest))
        .nest("/api/console", api)
        .route(
            &path,
            get(move || async move { Redirect::permanent(&with_slash) }),
        )
        .route(&format!("{path}/"), get(index))
        .route(&format!("{path}/{{*file}}"), get(asset))
        .with_state(state.clone())
}

/// Usage statistics, the global budget and the per-model table.
#[utoipa::path(get, path = "/api/console/stats", params(StatsQuery),
    responses((status = 200, description = "Statistics", body = Envelope<wire::Stats>),
        (status = 400, description = "A parameter is wrong", body = wire::Failure),
        (status = 404, description = "No key has this key_id", body = wire::Failure)))]
async fn get_stats(
    State(state): State<ConsoleState>,
    ConsoleQuery(q): ConsoleQuery<StatsQuery>,
) -> ApiResult<wire::Stats> {
    let (filter, source) = (q.filter()?, q.source()?);
    let stats = match source {
        Some(source) => stats::stats_of_source(&state, source, filter).await?,
        None => stats::stats(&state, filter).await?,
    };
    Ok(Json(Envelope::ok(stats)))
}

/// Each usage source's health, and ingested usage per credential and per client key.
#[utoipa::path(get, path = "/api/console/sources", params(SourcesQuery),
    responses((status = 200, description = "Sources", body = Envelope<wire::Sources>),
        (status = 400, description = "A parameter is wrong", body = wire::Failure)))]
async fn get_sources(
    State(state): State<ConsoleState>,
    ConsoleQuery(q): ConsoleQuery<SourcesQuery>,
) -> ApiResult<wire::Sources> {
    let (source, days) = (q.source(), q.days()?);
    Ok(Json(Envelope::ok(
        sources::overview(&state, source, days).await?,
    )))
}

/// Stores usage records pushed by anything that can report usage: a JSON array of records in
/// token-console's shape (see the README) or CLIProxyAPI's. Needs `Authorization: Bearer
/// <console.ingest_key>` (the admin key is refused). A record whose `id` (CLIProxyAPI's:
/// `request_id`, `timestamp`, `auth_index`, `model`) was stored before is stored once, so a
/// retried push counts once. The answer comes once the records are committed.
#[utoipa::path(post, path = "/api/console/ingest", params(IngestQuery),
    request_body(content = Vec<Object>, description = "Usage records"),
    responses((status = 200, description = "Stored", body = Envelope<wire::Ingested>),
        (status = 400, description = "A record is wrong (the message names it and its field), or the source is new and console.push_source_cap names are taken (the message names the cap and them)", body = wire::Failure),
        (status = 401, description = "No ingest key, or a wrong one", body = wire::Failure),
        (status = 404, description = "The push endpoint is off (no console.ingest_key)", body = wire::Failure)))]
async fn ingest(
    State(state): State<ConsoleState>,
    headers: axum::http::HeaderMap,
    ConsoleQuery(q): ConsoleQuery<IngestQuery>,
    body: axum::body::Bytes,
) -> ApiResult<wire::Ingested> {
    sources::check_ingest_key(&state, &headers)?;
    let source = sources::push_source(q.source.as_deref())?;
    let calls = sources::parse_push(&body, &source)?;
    sources::admit_source(&state, &source).await?;
    Ok(Json(Envelope::ok(sources::push(&state, calls).await)))
}

/// Calls and tokens per local day, oldest first: of every call, one key's or one source's.
#[utoipa::path(get, path = "/api/console/usage-trend", params(TrendQuery),
    responses((status = 200, description = "The trend", body = Envelope<wire::Trend>),
        (status = 400, description = "A parameter is wrong", body = wire::Failure)))]
async fn get_trend(
    State(state): State<ConsoleState>,
    ConsoleQuery(q): ConsoleQuery<TrendQuery>,
) -> ApiResult<wire::Trend> {
    let (days, key_id, source) = (q.days()?, q.key_id()?, q.source()?);
    Ok(Json(Envelope::ok(
        stats::trend(&state, days, key_id, source).await?,
    )))
}

/// Usage broken down by one or two dimensions (key, model, end user, client, provider, source,
/// endpoint, day, hour), largest first; read from rollups, so it answers fast at any volume.
#[utoipa::path(get, path = "/api/console/usage", params(UsageParams),
    responses((status = 200, description = "The breakdown", body = Envelope<wire::Usage>),
        (status = 400, description = "A parameter is wrong or unknown (the message names the allowed values)", body = wire::Failure)))]
async fn get_usage(
    State(state): State<ConsoleState>,
    ConsoleQuery(q): ConsoleQuery<UsageParams>,
) -> ApiResult<wire::Usage> {
    let (query, days) = (q.query()?, q.days()?);
    Ok(Json(Envelope::ok(usage::usage(&state, query, days).await?)))
}

/// Recorded calls, newest first.
#[utoipa::path(get, path = "/api/console/logs", params(LogsQuery),
    responses((status = 200, description = "One page of calls", body = Envelope<Vec<wire::LogRow>>),
        (status = 400, description = "A parameter is wrong", body = wire::Failure)))]
async fn get_logs(
    State(state): State<ConsoleState>,
    ConsoleQuery(q): ConsoleQuery<LogsQuery>,
) -> ApiResult<Vec<wire::LogRow>> {
    let query = q.query()?;
    Ok(Json(Envelope::ok(logs::page(&state, query).await?)))
}

/// Each new call that passes the filters, as it is recorded (Server-Sent Events: `event: log`
/// with the row as JSON data; `event: lagged` with the number of rows missed by a slow reader;
/// `: keep-alive` comments every 15 s).
#[utoipa::path(get, path = "/api/console/logs/stream", params(LogsQuery),
    responses((status = 200, description = "Calls as they are recorded", content_type = "text/event-stream", body = String),
        (status = 400, description = "A parameter is wrong", body = wire::Failure),
        (status = 429, description = "Too many live streams open", body = wire::Failure)))]
async fn stream_logs(
    State(state): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ConsoleQuery(q): ConsoleQuery<LogsQuery>,
) -> Result<Response, ConsoleError> {
    let query = q.query()?;
    let slot = state.log_streams.open(peer.ip())?;
    Ok(logs::live(&state, query, slot).into_response())
}

/// Hours in which a key's calls to a model failed (at least 10 calls, half or more failed) or
/// spent unlike the key's own recent past (at least 10,000 tokens and over 3× the median hour of
/// the 168 before), newest first, with the figures that made them anomalies.
#[utoipa::path(get, path = "/api/console/anomalies", params(AnomaliesQuery),
    responses((status = 200, description = "The anomalies", body = Envelope<Vec<wire::AnomalyFigures>>),
        (status = 400, description = "A parameter is wrong", body = wire::Failure)))]
async fn get_anomalies(
    State(state): State<ConsoleState>,
    ConsoleQuery(q): ConsoleQuery<AnomaliesQuery>,
) -> ApiResult<Vec<wire::AnomalyFigures>> {
    let (hours, key_id) = (q.hours()?, q.key_id()?);
    Ok(Json(Envelope::ok(
        insights::anomalies(&state, hours, key_id).await?,
    )))
}

/// The alerts raised (by any instance), newest first, each with its delivery to every target.
#[utoipa::path(get, path = "/api/console/alerts", params(AlertsQuery),
    responses((status = 200, description = "The alerts", body = Envelope<Vec<wire::AlertView>>),
        (status = 400, description = "A parameter is wrong", body = wire::Failure)))]
async fn get_alerts(
    State(state): State<ConsoleState>,
    ConsoleQuery(q): ConsoleQuery<AlertsQuery>,
) -> ApiResult<Vec<wire::AlertView>> {
    let limit = q.limit()?;
    Ok(Json(Envelope::ok(insights::alerts(&state, limit).await?)))
}

/// Every console API answer (refusals included) is private and must not be kept by a cache.
async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Every key, deleted ones excluded, with its usage.
#[utoipa::path(get, path = "/api/console/keys",
    responses((status = 200, description = "The keys", body = Envelope<Vec<wire::KeyView>>)))]
async fn list_keys(State(state): State<ConsoleState>) -> ApiResult<Vec<wire::KeyView>> {
    Ok(Json(Envelope::ok(keys::list(&state).await?)))
}

/// Creates a key; the answer holds the full key, shown this once.
#[utoipa::path(post, path = "/api/console/keys", request_body = CreateKey,
    responses((status = 200, description = "The new key, with its full value", body = Envelope<wire::KeyView>),
        (status = 400, description = "The body is wrong", body = wire::Failure),
        (status = 409, description = "The name is taken or the key limit is reached", body = wire::Failure)))]
async fn create_key(
    State(state): State<ConsoleState>,
    ConsoleJson(body): ConsoleJson<CreateKey>,
) -> ApiResult<wire::KeyView> {
    Ok(Json(Envelope::ok(keys::create(&state, body).await?)))
}

/// Changes a key: absent fields are left alone, `null` clears a limit.
#[utoipa::path(patch, path = "/api/console/keys/{id}", request_body = PatchKey,
    params(("id" = i64, Path, description = "The key's id")),
    responses((status = 200, description = "The changed key", body = Envelope<wire::KeyView>),
        (status = 400, description = "The id or the body is wrong", body = wire::Failure),
        (status = 404, description = "No such key", body = wire::Failure),
        (status = 409, description = "The name is taken", body = wire::Failure)))]
async fn patch_key(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    ConsoleJson(body): ConsoleJson<PatchKey>,
) -> ApiResult<wire::KeyView> {
    let id = keys::parse_id(&id)?;
    Ok(Json(Envelope::ok(keys::update(&state, id, body).await?)))
}

/// Deletes a key: it is refused from then on; its recorded calls keep its name.
#[utoipa::path(delete, path = "/api/console/keys/{id}",
    params(("id" = i64, Path, description = "The key's id")),
    responses((status = 200, description = "Deleted", body = Done),
        (status = 400, description = "The id is wrong", body = wire::Failure),
        (status = 404, description = "No such key", body = wire::Failure)))]
async fn delete_key(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
) -> Result<Json<Done>, ConsoleError> {
    keys::delete(&state, keys::parse_id(&id)?).await?;
    Ok(Json(Done {
        code: 0,
        msg: "密钥已删除",
    }))
}

/// Every recorded call still kept, as JSON or CSV (a download).
#[utoipa::path(get, path = "/api/console/export", params(ExportQuery),
    responses((status = 200, description = "The calls", content(
            (wire::Export = "application/json"), (String = "text/csv"))),
        (status = 400, description = "The format is wrong", body = wire::Failure)))]
async fn export(
    State(state): State<ConsoleState>,
    ConsoleQuery(q): ConsoleQuery<ExportQuery>,
) -> Result<Response, ConsoleError> {
    let format = export::format(q.format())?;
    export::export(&state, format, q.source()).await
}

/// Recomputes the stored cost of recorded calls (raw rows and aggregates) from their stored
/// tokens with the current prices; the gateway keeps running. One run at a time.
#[utoipa::path(post, path = "/api/console/reprice", request_body = wire::RepriceBody,
    responses((status = 200, description = "What changed", body = Envelope<wire::RepriceDone>),
        (status = 400, description = "The body is wrong", body = wire::Failure),
        (status = 409, description = "A repricing is already running", body = wire::Failure)))]
async fn reprice(
    State(state): State<ConsoleState>,
    ConsoleJson(body): ConsoleJson<wire::RepriceBody>,
) -> ApiResult<wire::RepriceDone> {
    Ok(Json(Envelope::ok(stats::reprice(&state, body).await?)))
}

/// This document.
#[utoipa::path(get, path = "/api/console/openapi.json",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
async fn openapi() -> Response {
    ([("content-type", "application/json")], openapi::document()).into_response()
}

async fn api_not_found() -> ConsoleError {
    ConsoleError::NotFound(
        "no such console API call; see the README for /api/console/stats, /usage-trend, /usage, /logs, /logs/stream, /keys, /export, /reprice, /anomalies and /alerts".into(),
    )
}

/// The page; without an admin key, like the API, for this machine only ([`PageAccess`]).
async fn index(_: PageAccess) -> Response {
    page::asset("")
}

async fn asset(_: PageAccess, Path(file): Path<String>) -> Response {
    page::asset(&file)
}
