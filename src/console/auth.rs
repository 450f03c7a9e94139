//! Who may use the console (SPEC §6): with an admin key, whoever presents it as a bearer token;
//! without one, this machine only (loopback peers that came through no proxy). Browsers on other
//! sites are refused outright, and failed sign-ins are rate-limited per client address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ConsoleError;
use crate::state::AppState;

const FAILURE_WINDOW: Duration = Duration::from_secs(60);
const MAX_FAILURES: u32 = 10;

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

/// Whether the request came through a proxy (then its loopback peer proves nothing).
fn forwarded(headers: &HeaderMap) -> bool {
    ["forwarded", "x-forwarded-for", "x-real-ip"]
        .iter()
        .any(|h| headers.contains_key(*h))
}

/// Refuses requests a browser sends from another site.
fn cross_origin(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site == "cross-site" || site == "same-site")
    {
        return true;
    }
    let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or(origin);
    origin_host != host
}

/// Without an admin key, the refusal for a client that is not this machine.
pub fn local_only_refusal(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Option<ConsoleError> {
    if state.config.console.admin_key.is_some() || (peer.ip().is_loopback() && !forwarded(headers))
    {
        return None;
    }
    Some(ConsoleError::Forbidden(
        "the console answers only this machine because no admin key is set; set CONSOLE_ADMIN_KEY (or console.admin_key in config.yaml) and sign in with it".into(),
    ))
}

/// Checks console access for one request.
pub fn check(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> Result<(), ConsoleError> {
    if cross_origin(headers) {
        return Err(ConsoleError::Forbidden(
            "the console API does not answer requests from other web sites".into(),
        ));
    }
    if let Some(refusal) = local_only_refusal(state, peer, headers) {
        return Err(refusal);
    }
    let Some(admin_key) = &state.config.console.admin_key else {
        return Ok(());
    };
    let ip = peer.ip();
    if state.sign_ins.blocked(ip) {
        return Err(ConsoleError::TooManyRequests(
            "too many failed sign-ins from this address; wait a minute and try again".into(),
        ));
    }
    match bearer(headers) {
        Some(token) if secrets_equal(token, admin_key.expose()) => Ok(()),
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

/// Middleware in front of `/api/console/*`.
pub async fn require_console_access(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    match check(&state, peer, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
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
    fn spots_cross_origin_requests() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:8317".parse().unwrap());
        assert!(!cross_origin(&headers));
        headers.insert(header::ORIGIN, "http://127.0.0.1:8317".parse().unwrap());
        assert!(!cross_origin(&headers));
        headers.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(cross_origin(&headers));
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
