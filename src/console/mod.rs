//! The token console: the REST API under `/api/console` and the page under `console.path`.
//!
//! Handlers are thin: they parse the request (see [`params`]), call one function of the
//! sub-module that owns the feature, and wrap the result in the envelope.

pub mod auth;
mod export;
mod keys;
pub mod logs;
pub mod page;
mod params;
mod stats;
pub mod wire;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{middleware, Json, Router};

use crate::error::ConsoleError;
use crate::state::AppState;

use params::{ConsoleJson, Params};
use wire::{CreateKey, Done, Envelope, PatchKey};

type ApiResult<T> = Result<Json<Envelope<T>>, ConsoleError>;

/// The console API and page, for the listener that serves the console.
pub fn router(state: &AppState) -> Router<AppState> {
    let api = Router::new()
        .route("/stats", get(get_stats))
        .route("/usage-trend", get(get_trend))
        .route("/logs", get(get_logs))
        .route("/logs/stream", get(stream_logs))
        .route("/keys", get(list_keys).post(create_key))
        .route(
            "/keys/{id}",
            axum::routing::patch(patch_key).delete(delete_key),
        )
        .route("/export", get(export))
        .route("/openapi.json", get(openapi))
        .fallback(api_not_found)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_console_access,
        ))
        .layer(middleware::map_response(no_store));
    let path = state.config.console.path.clone();
    let with_slash = format!("{path}/");
    Router::new()
        .nest("/api/console", api)
        .route(
            &path,
            get(move || async move { Redirect::permanent(&with_slash) }),
        )
        .route(&format!("{path}/"), get(index))
        .route(&format!("{path}/{{*file}}"), get(asset))
}

async fn get_stats(
    State(state): State<AppState>,
    Query(q): Query<Params>,
) -> ApiResult<wire::Stats> {
    let filter = params::usage_filter(&q)?;
    Ok(Json(Envelope::ok(stats::stats(&state, filter).await?)))
}

async fn get_trend(
    State(state): State<AppState>,
    Query(q): Query<Params>,
) -> ApiResult<wire::Trend> {
    let days = params::days(&q)?;
    let key_id = params::id(&q, "key_id")?;
    Ok(Json(Envelope::ok(
        stats::trend(&state, days, key_id).await?,
    )))
}

async fn get_logs(
    State(state): State<AppState>,
    Query(q): Query<Params>,
) -> ApiResult<Vec<wire::LogRow>> {
    let query = params::log_query(&q)?;
    Ok(Json(Envelope::ok(logs::page(&state, query).await?)))
}

async fn stream_logs(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<Params>,
) -> Result<Response, ConsoleError> {
    let query = params::log_query(&q)?;
    let slot = state.log_streams.open(peer.ip())?;
    Ok(logs::live(&state, query, slot).into_response())
}

/// Every console API answer (refusals included) is private and must not be kept by a cache.
async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn list_keys(State(state): State<AppState>) -> ApiResult<Vec<wire::KeyView>> {
    Ok(Json(Envelope::ok(keys::list(&state).await?)))
}

async fn create_key(
    State(state): State<AppState>,
    ConsoleJson(body): ConsoleJson<CreateKey>,
) -> ApiResult<wire::KeyView> {
    Ok(Json(Envelope::ok(keys::create(&state, body).await?)))
}

async fn patch_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ConsoleJson(body): ConsoleJson<PatchKey>,
) -> ApiResult<wire::KeyView> {
    let id = keys::parse_id(&id)?;
    Ok(Json(Envelope::ok(keys::update(&state, id, body).await?)))
}

async fn delete_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Done>, ConsoleError> {
    keys::delete(&state, keys::parse_id(&id)?).await?;
    Ok(Json(Done {
        code: 0,
        msg: "密钥已删除",
    }))
}

async fn export(
    State(state): State<AppState>,
    Query(q): Query<Params>,
) -> Result<Response, ConsoleError> {
    let format = export::format(q.get("format").map(String::as_str))?;
    export::export(&state, format).await
}

/// The API's OpenAPI 3.1 description (also its reference in the README).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([("content-type", "application/json")], OPENAPI).into_response()
}

async fn api_not_found() -> ConsoleError {
    ConsoleError::NotFound(
        "no such console API call; see the README for /api/console/stats, /usage-trend, /logs, /logs/stream, /keys and /export".into(),
    )
}

/// Without an admin key the page, like the API, is for this machine only.
fn page_refusal(
    state: &AppState,
    peer: SocketAddr,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<Response> {
    auth::local_only_refusal(state, peer, uri, headers).map(|e| {
        let text = [("content-type", "text/plain; charset=utf-8")];
        page::secure((StatusCode::FORBIDDEN, text, e.to_string()).into_response())
    })
}

async fn index(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    page_refusal(&state, peer, &uri, &headers).unwrap_or_else(|| page::asset(""))
}

async fn asset(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    Path(file): Path<String>,
) -> Response {
    page_refusal(&state, peer, &uri, &headers).unwrap_or_else(|| page::asset(&file))
}
