//! Token budgets checked and charged atomically: reserve before forwarding, settle after.
//!
//! A budget admits a request only if what is used, plus what other requests have reserved and
//! not yet settled, plus this request's reservation fits under the limit. So many concurrent
//! calls near the limit cannot together overspend beyond what one reservation under-estimates.

use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct State {
    limit: Option<u64>,
    used: u64,
    reserved: u64,
}

impl State {
    fn fits(&self, amount: u64) -> bool {
        match self.limit {
            None => true,
            Some(limit) => {
                self.used
                    .saturating_add(self.reserved)
                    .saturating_add(amount)
                    <= limit
            }
        }
    }
}

/// A token budget: a limit (or none), the tokens used, and the tokens reserved in flight.
#[derive(Debug, Default)]
pub struct Budget {
    state: Mutex<State>,
}

impl Budget {
    /// A budget with `limit` (`None`: unlimited) of which `used` is spent.
    pub fn new(limit: Option<u64>, used: u64) -> Self {
        Self {
            state: Mutex::new(State {
                limit,
                used,
                reserved: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes the limit (an edit in the console).
    pub fn set_limit(&self, limit: Option<u64>) {
        self.lock().limit = limit;
    }

    /// The limit.
    pub fn limit(&self) -> Option<u64> {
        self.lock().limit
    }

    /// Tokens spent.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// Tokens reserved by requests in flight.
    pub fn reserved(&self) -> u64 {
        self.lock().reserved
    }

    /// Whether nothing is left at all.
    pub fn exhausted(&self) -> bool {
        let state = self.lock();
        state.limit.is_some_and(|limit| state.used >= limit)
    }

    /// Reserves `amount` in `global` and, if given, `key` — both or neither.
    pub fn reserve(
        global: &Arc<Budget>,
        key: Option<&Arc<Budget>>,
        amount: u64,
    ) -> Option<Reservation> {
        let mut g = global.lock();
        if !g.fits(amount) {
            return None;
        }
        if let Some(key) = key {
            let mut k = key.lock();
            if !k.fits(amount) {
                return None;
            }
            k.reserved += amount;
        }
        g.reserved += amount;
        Some(Reservation {
            global: global.clone(),
            key: key.cloned(),
            amount,
            settled: false,
        })
    }

    fn settle(&self, reserved: u64, actual: u64) {
        let mut state = self.lock();
        state.reserved = state.reserved.saturating_sub(reserved);
        state.used = state.used.saturating_add(actual);
    }
}

/// Tokens held for one request; [`Reservation::settle`] charges what it really used. Dropped
/// unsettled (the request failed before any usage was known), it returns the tokens.
#[derive(Debug)]
pub struct Reservation {
    global: Arc<Budget>,
    key: Option<Arc<Budget>>,
    amount: u64,
    settled: bool,
}

impl Reservation {
    /// Releases the reservation and charges `actual` tokens.
    pub fn settle(mut self, actual: u64) {
        self.finish(actual);
    }

    fn finish(&mut self, actual: u64) {
        if self.settled {
            return;
        }
        self.settled = true;
        self.global.settle(self.amount, actual);
        if let Some(key) = &self.key {
            key.settle(self.amount, actual);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.finish(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_only_what_fits_with_reservations_in_flight() {
        let global = Arc::new(Budget::new(Some(100), 10));
        let a = Budget::reserve(&global, None, 40).unwrap();
        let b = Budget::reserve(&global, None, 40).unwrap();
        assert!(Budget::reserve(&global, None, 40).is_none());
        a.settle(30);
        assert_eq!(global.used(), 40);
        assert_eq!(global.reserved(), 40);
        drop(b);
        assert_eq!(global.reserved(), 0);
        assert_eq!(global.used(), 40);
    }

    #[test]
    fn reserves_both_budgets_or_neither() {
        let global = Arc::new(Budget::new(None, 0));
        let key = Arc::new(Budget::new(Some(50), 0));
        assert!(Budget::reserve(&global, Some(&key), 60).is_none());
        assert_eq!(global.reserved(), 0);
        let r = Budget::reserve(&global, Some(&key), 50).unwrap();
        assert_eq!((global.reserved(), key.reserved()), (50, 50));
        r.settle(20);
        assert_eq!((global.used(), key.used()), (20, 20));
    }

    #[test]
    fn exhausted_when_used_reaches_limit() {
        assert!(Budget::new(Some(5), 5).exhausted());
        assert!(!Budget::new(Some(5), 4).exhausted());
        assert!(!Budget::new(None, 1_000).exhausted());
    }
}
