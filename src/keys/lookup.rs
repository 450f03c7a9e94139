//! Keys unknown to this instance are looked up in the store before a call is refused (the key
//! changes made since the last poll are read at once), so a key created through another instance
//! works on this one at once; a short, bounded negative cache (by key hash) and a rate limit keep
//! garbage keys from hammering the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a key found missing in the store is refused without asking again.
pub const MISSING_FOR: Duration = Duration::from_secs(1);
/// Keys remembered as missing at most (older ones are forgotten first).
pub const MISSING_ENTRIES: usize = 4_096;
/// Store lookups per second at most, across all clients (also the burst allowed).
pub const LOOKUPS_PER_SECOND: u64 = 20;

/// The negative cache and the lookup budget of one instance.
pub struct Lookups {
    state: Mutex<State>,
    made: AtomicU64,
}

struct State {
    missing: HashMap<[u8; 32], Instant>,
    /// Lookups that may be made now (refilled at [`LOOKUPS_PER_SECOND`]).
    allowance: f64,
    refilled: Instant,
}

impl Default for Lookups {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                missing: HashMap::new(),
                allowance: LOOKUPS_PER_SECOND as f64,
                refilled: Instant::now(),
            }),
            made: AtomicU64::new(0),
        }
    }
}

impl Lookups {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the store may be asked for `hash` now: it was not found missing lately and the
    /// lookup budget allows one more. Counts the lookup when it does.
    pub fn admit(&self, hash: &[u8; 32]) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        if let Some(&at) = state.missing.get(hash) {
            if now.duration_since(at) < MISSING_FOR {
                return false;
            }
            state.missing.remove(hash);
        }
        let rate = LOOKUPS_PER_SECOND as f64;
        let elapsed = now.duration_since(state.refilled).as_secs_f64();
        state.allowance = (state.allowance + elapsed * rate).min(rate);
        state.refilled = now;
        if state.allowance < 1.0 {
            return false;
        }
        state.allowance -= 1.0;
        self.made.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Notes that the store has no live key with `hash`.
    pub fn missing(&self, hash: [u8; 32]) {
        let now = Instant::now();
        let mut state = self.lock();
        if state.missing.len() >= MISSING_ENTRIES {
            state
                .missing
                .retain(|_, at| now.duration_since(*at) < MISSING_FOR);
        }
        if state.missing.len() >= MISSING_ENTRIES {
            let oldest = state
                .missing
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(hash, _)| *hash);
            if let Some(oldest) = oldest {
                state.missing.remove(&oldest);
            }
        }
        state.missing.insert(hash, now);
    }

    /// Store lookups made since start.
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_keys_and_the_rate_bound_lookups() {
        let lookups = Lookups::default();
        assert!(lookups.admit(&[1; 32]));
        lookups.missing([1; 32]);
        assert!(
            !lookups.admit(&[1; 32]),
            "a missing key is not looked up again at once"
        );
        let admitted = (0..1000u32)
            .filter(|i| {
                let mut hash = [0u8; 32];
                hash[..4].copy_from_slice(&i.to_le_bytes());
                hash[31] = 9;
                lookups.admit(&hash)
            })
            .count() as u64;
        assert!(admitted < LOOKUPS_PER_SECOND + 2, "{admitted} lookups");
        assert_eq!(lookups.made(), admitted + 1);
    }

    #[test]
    fn the_negative_cache_stays_bounded() {
        let lookups = Lookups::default();
        for i in 0..(MISSING_ENTRIES as u32 + 100) {
            let mut hash = [0u8; 32];
            hash[..4].copy_from_slice(&i.to_le_bytes());
            lookups.missing(hash);
        }
        assert_eq!(lookups.lock().missing.len(), MISSING_ENTRIES);
    }
}
