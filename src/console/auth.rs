//! Who may use the console (SPEC §6): with an admin key, whoever presents it as a bearer token;
//! without one, this machine only: loopback peers that came through no proxy, *and* requests
//! addressed to a loopback name, the configured host or `console.allowed_hosts` (so that a DNS
//! rebinding page in the operator's browser, whose requests name the attacker's host, is refused).
//! Browsers on other sites are refused outright; failed sign-ins are rate-limited per address,
//! but the right admin key always gets in.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::error::ConsoleError;

const FAILURE_WINDOW: Duration = Duration::from_secs(60);
const MAX_FAILURES: u32 = 10;

/// Headers a reverse proxy or CDN adds to tell who the client is: a request carrying any of them
/// came through a proxy, so its loopback peer proves nothing about the client.
const PROXY_HEADERS: [&str; 12] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "via",
    "cf-connecting-ip",
    "true-client-ip",
    "x-client-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
];

/// What decides who may use the console: the configuration (admin key, host names) and the
/// failed sign-ins so far.
pub struct Gatekeeper {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Failed sign-ins per client.
    pub sign_ins: SignInLimiter,
}

impl Gatekeeper {
    /// A gatekeeper for `config` with no failed sign-ins yet.
    pub fn new(config: Arc<Config>) -> Self {
        Self {
            config,
            sign_ins: SignInLimiter::default(),
        }
    }
}

/// Failed admin sign-ins per client address within the current window.
#[derive(Default)]
pub struct SignInLimiter {
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl SignInLimiter {
    fn blocked(&self, ip: IpAddr) -> bool {
        let Ok(map) = self.failures.lock() else {
            return false;
        };
        map.get(&ip)
            .is_some_and(|(start, n)| start.elapsed() < FAILURE_WINDOW && *n >= MAX_FAILURES)
    }

    fn fail(&self, ip: IpAddr) {
        if let Ok(mut map) = self.failures.lock() {
            map.retain(|_, (start, _)| start.elapsed() < FAILURE_WINDOW);
            let entry = map.entry(ip).or_insert((Instant::now(), 0));
            entry.1 += 1;
        }
    }
}

/// Compares two secrets in constant time (over their hashes, so lengths leak nothing either).
pub fn secrets_equal(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether an address is this machine's loopback, IPv4-mapped IPv6 (`::ffff:127.0.0.1`) included.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Whether the request came through a proxy (then its loopback peer proves nothing).
pub fn forwarded(headers: &HeaderMap) -> bool {
    PROXY_HEADERS.iter().any(|h| headers.contains_key(*h))
}

/// The host part of an authority (`host[:port]`, `[v6]:port`), lowercase, without a final dot.
fn host_of(authority: &str) -> Option<String> {
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let rest = &authority[end + 1..];
        if !(rest.is_empty() || rest.starts_with(':')) {
            return None;
        }
        &authority[..=end]
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            Some(_) => return None,
            None => authority,
        }
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

/// Whether a host (as [`host_of`] returns it) names this machine's loopback.
fn loopback_name(host: &str) -> bool {
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    let ip = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ip.parse::<IpAddr>().is_ok_and(is_loopback)
}

/// Whether the console answers requests addressed to `host` without an admin key.
fn allowed_host(state: &Gatekeeper, host: &str) -> bool {
    if loopback_name(host) {
        return true;
    }
    let configured = state.config.host.trim_end_matches('.').to_ascii_lowercase();
    let wildcard = configured
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified());
    let bare = |h: &str| h.trim_start_matches('[').trim_end_matches(']').to_owned();
    (!configured.is_empty() && !wildcard && bare(&configured) == bare(host))
        || state
            .config
            .console
            .allowed_hosts
            .iter()
            .any(|allowed| bare(allowed) == bare(host))
}

/// Every host the request says it is addressed to: the URI's authority (HTTP/2's `:authority`,
/// or an absolute-form HTTP/1.1 target) and the `Host` header. `None` when one is unreadable.
fn addressed_hosts(uri: &Uri, headers: &HeaderMap) -> Option<Vec<String>> {
    let mut hosts = Vec::with_capacity(2);
    if let Some(authority) = uri.authority() {
        hosts.push(host_of(authority.as_str())?);
    }
    for value in headers.get_all(header::HOST) {
        hosts.push(host_of(value.to_str().ok()?)?);
    }
    Some(hosts)
}

/// The host of an `Origin` header (`scheme://host[:port]`); `None` for `null` or anything else.
fn origin_host(origin: &str) -> Option<String> {
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))?;
    if rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    host_of(rest)
}

fn forbidden(message: String) -> ConsoleError {
    ConsoleError::Forbidden(message)
}

/// Refuses what a browser sends from another site: `Sec-Fetch-Site: cross-site` (or `same-site`).
fn cross_site(state: &Gatekeeper, headers: &HeaderMap) -> Option<ConsoleError> {
    headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site == "cross-site" || site == "same-site")
        .then(|| {
            let what = if state.config.console.admin_key.is_some() {
                "use the console page itself".to_owned()
            } else {
                how_to_open(state)
            };
            forbidden(format!(
                "the console does not answer requests from other web sites; {what}"
            ))
        })
}

fn how_to_open(state: &Gatekeeper) -> String {
    let port = state
        .config
        .console
        .separate_port
        .unwrap_or(state.config.port);
    format!(
        "open the console as http://localhost:{port}{path}/ or http://127.0.0.1:{port}{path}/, list the name you use in console.allowed_hosts (CONSOLE_ALLOWED_HOSTS), or set CONSOLE_ADMIN_KEY (console.admin_key) and sign in with it",
        path = state.config.console.path
    )
}

/// Without an admin key, the refusal for a request that is not from this machine *and* addressed
/// to it: the peer must be loopback with no proxy in between, every address the request names
/// (`Host`, `:authority`) must be a loopback name, the configured host or an allowed host, and a
/// present `Origin` must be such an origin too (it is never compared with `Host`, which a DNS
/// rebinding page chooses).
pub fn local_only_refusal(
    state: &Gatekeeper,
    peer: SocketAddr,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<ConsoleError> {
    if state.config.console.admin_key.is_some() {
        return None;
    }
    if !is_loopback(peer.ip()) || forwarded(headers) {
        return Some(forbidden(
            "the console answers only this machine because no admin key is set; set CONSOLE_ADMIN_KEY (or console.admin_key in config.yaml) and sign in with it".into(),
        ));
    }
    if let Some(refusal) = cross_site(state, headers) {
        return Some(refusal);
    }
    let hosts = addressed_hosts(uri, headers).unwrap_or_default();
    if hosts.is_empty() {
        return Some(forbidden(format!(
            "the request names no host (no Host header or :authority), so the console cannot tell it is addressed to this machine; {}",
            how_to_open(state)
        )));
    }
    if let Some(foreign) = hosts.iter().find(|h| !allowed_host(state, h)) {
        return Some(forbidden(format!(
            "without an admin key the console answers only requests addressed to this machine, and this one is addressed to \"{foreign}\"; {}",
            how_to_open(state)
        )));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let text = origin.to_str().unwrap_or("");
        if !origin_host(text).is_some_and(|h| allowed_host(state, &h)) {
            return Some(forbidden(format!(
                "the console does not answer pages from the origin \"{text}\"; {}",
                how_to_open(state)
            )));
        }
    }
    None
}

/// With an admin key, a state-changing call must not come from a foreign page: a present
/// `Origin` must be an allowed origin or the one the request is addressed to.
fn foreign_origin_change(
    state: &Gatekeeper,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<ConsoleError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().unwrap_or("");
    let own = addressed_hosts(uri, headers).unwrap_or_default();
    let fine = origin_host(text).is_some_and(|h| {
        allowed_host(state, &h) || (!own.is_empty() && own.iter().all(|o| *o == h))
    });
    (!fine).then(|| {
        forbidden(format!(
            "the console does not accept changes from pages of the origin \"{text}\"; use the console page itself"
        ))
    })
}

/// Checks console access for one request.
///
/// The right admin key is compared first and always admits, however many wrong keys the same
/// address sent: behind a reverse proxy every client shares one address, and a lock-out would shut
/// the admin out. Only failures are counted; past the limit wrong keys get 429.
pub fn check(
    state: &Gatekeeper,
    peer: SocketAddr,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(), ConsoleError> {
    if let Some(refusal) = cross_site(state, headers) {
        return Err(refusal);
    }
    if let Some(refusal) = local_only_refusal(state, peer, uri, headers) {
        return Err(refusal);
    }
    let Some(admin_key) = &state.config.console.admin_key else {
        return Ok(());
    };
    if let Some(refusal) = foreign_origin_change(state, method, uri, headers) {
        return Err(refusal);
    }
    let ip = peer.ip().to_canonical();
    match bearer(headers) {
        Some(token) if secrets_equal(token, admin_key.expose()) => Ok(()),
        Some(_) if state.sign_ins.blocked(ip) => Err(ConsoleError::TooManyRequests(
            "too many wrong admin keys from this address; wait a minute and try again".into(),
        )),
        Some(_) => {
            state.sign_ins.fail(ip);
            Err(ConsoleError::Unauthorized(
                "the admin key is wrong; send the console's admin key as Authorization: Bearer <key>".into(),
            ))
        }
        None => Err(ConsoleError::Unauthorized(
            "the console needs the admin key: send it as Authorization: Bearer <key>".into(),
        )),
    }
}

/// A request admitted to the console API (and `/metrics`): it passed [`check`] — not from
/// another web site; without an admin key, from this machine (loopback peer, no proxy headers)
/// and addressed to it (Host, `:authority` and Origin name this machine or an allowed host); with
/// one, carrying it as `Authorization: Bearer …` (wrong keys are rate-limited per address, and
/// changes from foreign origins refused). Refused with 403, 401 or 429 and a message that says
/// what to do.
pub struct Admitted;

impl<S: Send + Sync> FromRequestParts<S> for Admitted
where
    Arc<Gatekeeper>: axum::extract::FromRef<S>,
{
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ConsoleError> {
        let (gate, peer) = gate_and_peer(parts, state).await?;
        check(&gate, peer, &parts.method, &parts.uri, &parts.headers).map(|()| Self)
    }
}

/// A request admitted to the console page: without an admin key, only [`local_only_refusal`]'s
/// rule (the page itself asks for the admin key when there is one, and holds no data). Refused
/// with a plain-text 403 that says how to open the console.
pub struct PageAccess;

impl<S: Send + Sync> FromRequestParts<S> for PageAccess
where
    Arc<Gatekeeper>: axum::extract::FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let refusal = match gate_and_peer(parts, state).await {
            Ok((gate, peer)) => local_only_refusal(&gate, peer, &parts.uri, &parts.headers),
            Err(e) => Some(e),
        };
        match refusal {
            None => Ok(Self),
            Some(e) => {
                let text = [("content-type", "text/plain; charset=utf-8")];
                let response = (axum::http::StatusCode::FORBIDDEN, text, e.to_string());
                Err(super::page::secure(response.into_response()))
            }
        }
    }
}

/// The gatekeeper, and the peer address the listener recorded for the connection.
async fn gate_and_peer<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
) -> Result<(Arc<Gatekeeper>, SocketAddr), ConsoleError>
where
    Arc<Gatekeeper>: axum::extract::FromRef<S>,
{
    let peer = ConnectInfo::<SocketAddr>::from_request_parts(parts, state)
        .await
        .map_err(|_| forbidden("the connection's peer address is unknown".into()))?;
    Ok((axum::extract::FromRef::from_ref(state), peer.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_secrets() {
        assert!(secrets_equal("admin-key-1", "admin-key-1"));
        assert!(!secrets_equal("admin-key-1", "admin-key-2"));
        assert!(!secrets_equal("", "admin-key-1"));
    }

    #[test]
    fn reads_bearer_tokens() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn reads_hosts_and_origins() {
        assert_eq!(host_of("127.0.0.1:8317").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_of("LocalHost.").as_deref(), Some("localhost"));
        assert_eq!(host_of("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(host_of("evil.example:x"), None);
        assert!(loopback_name("[::1]"));
        assert!(loopback_name("[::ffff:127.0.0.1]"));
        assert!(loopback_name("127.9.8.7"));
        assert!(loopback_name("app.localhost"));
        assert!(!loopback_name("localhost.evil.example"));
        assert_eq!(
            origin_host("http://localhost:8317").as_deref(),
            Some("localhost")
        );
        assert_eq!(origin_host("null"), None);
        assert_eq!(origin_host("http://127.0.0.1@evil.example"), None);
    }

    #[test]
    fn mapped_loopback_is_loopback() {
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("::ffff:10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn limiter_blocks_after_repeated_failures() {
        let limiter = SignInLimiter::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(!limiter.blocked(ip));
            limiter.fail(ip);
        }
        assert!(limiter.blocked(ip));
    }
}
