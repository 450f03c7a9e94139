//! Per-key requests-per-minute limits: a sliding window in this process, or — with `redis_url` —
//! one window per key shared by every instance through Redis.
//!
//! Redis keeps a counter per key and minute (`<namespace>:rpm:<key id>:<minute>`, expiring after
//! two minutes). A Lua script admits a request when the current minute's count plus the previous
//! minute's count, weighted by how much of it still lies in the last sixty seconds, stays under
//! the limit — the usual sliding-window approximation, one round trip, atomic across instances.
//! When Redis cannot be reached the key's local window decides, and the service log says so.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::config::ServiceUrl;

const WINDOW_MS: i64 = 60_000;

/// The sliding-window script: `KEYS[1]` the key's prefix, `ARGV[1]` the limit. Returns
/// `{1, 0}` when admitted, else `{0, milliseconds until a request would be admitted}`.
const SCRIPT: &str = r"
local limit = tonumber(ARGV[1])
local window = 60000
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local minute = math.floor(now / window)
local elapsed = now - minute * window
local current_key = KEYS[1] .. ':' .. minute
local current = tonumber(redis.call('GET', current_key) or '0')
local previous = tonumber(redis.call('GET', KEYS[1] .. ':' .. (minute - 1)) or '0')
local weighted = previous * (window - elapsed) / window + current
if weighted + 1 > limit then
  local wait = window - elapsed
  if current + 1 <= limit and previous > 0 then
    wait = (window - elapsed) - math.floor((limit - current - 1) * window / previous)
  end
  if wait < 1 then wait = 1 end
  return {0, wait}
end
redis.call('INCR', current_key)
redis.call('PEXPIRE', current_key, 2 * window)
return {1, 0}
";

/// A sliding one-minute window of request times, in this process.
#[derive(Default)]
pub(super) struct RateWindow {
    times: VecDeque<i64>,
}

impl RateWindow {
    /// Counts a request at `now_ms` against `limit`; `Err(seconds)` says when to retry.
    pub(super) fn admit(&mut self, limit: u32, now_ms: i64) -> Result<(), u64> {
        while self.times.front().is_some_and(|&t| t <= now_ms - WINDOW_MS) {
            self.times.pop_front();
        }
        if self.times.len() >= limit as usize {
            let oldest = self.times.front().copied().unwrap_or(now_ms);
            let wait_ms = (oldest + WINDOW_MS - now_ms).max(0);
            return Err((wait_ms as u64).div_ceil(1000).max(1));
        }
        self.times.push_back(now_ms);
        Ok(())
    }
}

/// Where RPM limits are counted.
pub struct RateLimiter {
    redis: Option<SharedWindows>,
}

struct SharedWindows {
    connection: ConnectionManager,
    script: redis::Script,
    namespace: String,
    last_warning_ms: AtomicI64,
}

impl RateLimiter {
    /// Limits counted in this process only.
    pub fn local() -> Self {
        Self { redis: None }
    }

    /// Limits shared through Redis at `url`, under `namespace` (one per database, so that
    /// several deployments may share a Redis). Fails when Redis cannot be reached now.
    pub async fn shared(url: &ServiceUrl, namespace: &str) -> Result<Self, String> {
        let what = |e: redis::RedisError| {
            format!(
                "cannot reach Redis at {}: {e}; check that it runs and redis_url is right",
                url.redacted()
            )
        };
        let client = redis::Client::open(url.expose()).map_err(what)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(what)?;
        Ok(Self {
            redis: Some(SharedWindows {
                connection,
                script: redis::Script::new(SCRIPT),
                namespace: namespace.to_owned(),
                last_warning_ms: AtomicI64::new(0),
            }),
        })
    }

    /// Whether limits are shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.redis.is_some()
    }

    /// Counts a request of key `key_id` against `limit`; `Err(seconds)` says when to retry.
    /// `local` is the key's own window, used without Redis or when Redis fails.
    pub async fn check(
        &self,
        key_id: i64,
        limit: u32,
        local: impl FnOnce() -> Result<(), u64>,
    ) -> Result<(), u64> {
        let Some(shared) = &self.redis else {
            return local();
        };
        let mut connection = shared.connection.clone();
        let answer: redis::RedisResult<(i64, i64)> = shared
            .script
            .key(format!("{}:rpm:{key_id}", shared.namespace))
            .arg(limit)
            .invoke_async(&mut connection)
            .await;
        match answer {
            Ok((1, _)) => Ok(()),
            Ok((_, wait_ms)) => Err((wait_ms.max(1) as u64).div_ceil(1000).max(1)),
            Err(e) => {
                let now = jiff::Timestamp::now().as_millisecond();
                let last = shared.last_warning_ms.load(Ordering::Relaxed);
                if now - last >= 10_000
                    && shared
                        .last_warning_ms
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(
                        "Redis failed ({e}); RPM limits are counted per instance until it answers again"
                    );
                }
                local()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_window_slides() {
        let mut window = RateWindow::default();
        assert_eq!(window.admit(2, 0), Ok(()));
        assert_eq!(window.admit(2, 1_000), Ok(()));
        assert_eq!(window.admit(2, 30_000), Err(30));
        assert_eq!(window.admit(2, 60_000), Ok(()));
        assert_eq!(window.admit(2, 60_500), Err(1));
    }

    /// Redis from `TC_TEST_REDIS_URL`, when the test run has one.
    async fn redis() -> Option<RateLimiter> {
        let url = std::env::var("TC_TEST_REDIS_URL").ok()?;
        let namespace = format!("tc-test-{}", crate::keys::generate().ok()?.display);
        RateLimiter::shared(&ServiceUrl::new(url), &namespace)
            .await
            .ok()
    }

    #[tokio::test]
    async fn two_instances_share_one_window_through_redis() {
        let (Some(a), Some(b)) = (redis().await, redis().await) else {
            eprintln!("TC_TEST_REDIS_URL is not set: only the local window is tested");
            let limiter = RateLimiter::local();
            let mut window = RateWindow::default();
            let mut admit = || window.admit(1, 0);
            assert!(limiter.check(1, 1, &mut admit).await.is_ok());
            assert!(limiter.check(1, 1, &mut admit).await.is_err());
            return;
        };
        // Two limiters in one namespace are two instances of one deployment.
        let b = RateLimiter {
            redis: b.redis.map(|mut shared| {
                shared.namespace = a
                    .redis
                    .as_ref()
                    .map(|s| s.namespace.clone())
                    .unwrap_or_default();
                shared
            }),
        };
        let never = || -> Result<(), u64> { panic!("Redis answers, the local window is not used") };
        assert!(a.check(7, 3, never).await.is_ok());
        assert!(b.check(7, 3, never).await.is_ok());
        assert!(a.check(7, 3, never).await.is_ok());
        let retry = b.check(7, 3, never).await.unwrap_err();
        assert!((1..=60).contains(&retry), "{retry}");
        assert!(
            a.check(8, 3, never).await.is_ok(),
            "other keys have their own window"
        );
    }
}
