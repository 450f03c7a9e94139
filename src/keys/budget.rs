//! Token budgets checked and charged atomically — reserve before forwarding, settle after — and
//! shared by every instance on one database through leases.
//!
//! The database keeps one ledger row per budget (the global budget and each limited key): the
//! tokens used or leased to an instance. An instance admits a request from the slice it holds,
//! in memory, so no request waits for the database while its slice lasts; when the slice is too
//! small it leases more with one atomic statement (about one second of its recent demand, at most
//! an eighth of what is left, at least what the request needs), and it gives back what it did not
//! use after a second without requests, when the limit changes, and on shutdown. A request is
//! admitted only if the tokens held minus those reserved in flight cover its reservation, so
//! the instances together never admit more than the limit, however their requests interleave.
//! Every lease is noted under the instance that took it (`budget_leases`), and every change to
//! what it holds is sent with the next sync; when an instance dies, a live one gives what it
//! held back to the ledger once its heartbeat is stale (`sync.rs`).
//!
//! On SQLite (one instance) the ledger itself is kept in memory ([`Ledger::local`]): built at
//! start from the recorded usage, it grants leases without a statement, so no request ever waits
//! for the database, even one locked by another process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::store::{Lease, Store, StoreError};

/// How long a "nothing left" answer of the ledger is trusted before asking again.
const KNOWN_EMPTY_FOR: Duration = Duration::from_millis(250);
/// A budget without requests for this long gives its unused slice back.
pub const IDLE_RETURN_AFTER: Duration = Duration::from_secs(1);
/// A lease takes at most this share of what is left (1/8), beyond what the request needs.
const LEASE_SHARE: u64 = 8;
/// Times a request tries to reserve: each failed try leases more (or ends in a refusal when the
/// ledger has not enough left), so only requests of the same instance taking the fresh tokens
/// first can make one try again.
const ATTEMPTS: usize = 32;

/// Which budget refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The global budget (`quota.total_tokens`).
    Global,
    /// The key's token limit.
    Key,
    /// The ledger could not be reached, so the budget cannot be confirmed.
    Unavailable(String),
}

/// The shared ledger: the store, and the changes to send it at the next tick.
pub struct Ledger {
    store: Store,
    /// This instance's id in the `instances` table: the slices it holds are noted under it.
    instance: String,
    /// Per budget scope: changes to the ledger row's `taken` and to what this instance holds.
    pending: Mutex<HashMap<i64, (i64, i64)>>,
    /// A ledger kept in memory (one instance on SQLite): tokens used or held per budget scope.
    local: Option<Mutex<HashMap<i64, u64>>>,
}

impl Ledger {
    /// A ledger kept in `store`, shared with the other instances on it; `instance` is this
    /// instance's id among them.
    pub fn new(store: Store, instance: String) -> Arc<Self> {
        Arc::new(Self {
            store,
            instance,
            pending: Mutex::new(HashMap::new()),
            local: None,
        })
    }

    /// A ledger of this instance alone, kept in memory: `used` holds the tokens recorded per
    /// budget scope (the global budget and each key) when the instance starts.
    pub fn local(store: Store, used: HashMap<i64, u64>) -> Arc<Self> {
        Arc::new(Self {
            store,
            instance: String::new(),
            pending: Mutex::new(HashMap::new()),
            local: Some(Mutex::new(used)),
        })
    }

    /// Leases from the in-memory ledger, or `None` when the ledger is the store's.
    fn lease_locally(&self, scope: i64, limit: u64, need: u64, want: u64) -> Option<Lease> {
        let local = self.local.as_ref()?;
        let mut taken = local.lock().unwrap_or_else(|p| p.into_inner());
        let entry = taken.entry(scope).or_insert(0);
        let lease = crate::store::grant(limit, *entry, need, want);
        *entry = entry.saturating_add(lease.granted);
        Some(lease)
    }

    /// Counts tokens used under a budget without a limit, so that a limit set later starts from
    /// them (in-memory ledger only; the store's ledger rebuilds from the recorded usage).
    fn note_unlimited_use(&self, scope: i64, tokens: u64) {
        if let Some(local) = &self.local {
            let mut taken = local.lock().unwrap_or_else(|p| p.into_inner());
            let entry = taken.entry(scope).or_insert(0);
            *entry = entry.saturating_add(tokens);
        }
    }

    /// The store the ledger is kept in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<i64, (i64, i64)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a change of the ledger row of `scope` (`taken`) and of what this instance holds of
    /// it (`held`), for the next sync.
    fn add(&self, scope: i64, taken: i64, held: i64) {
        if let Some(local) = &self.local {
            let mut ledger = local.lock().unwrap_or_else(|p| p.into_inner());
            let entry = ledger.entry(scope).or_insert(0);
            *entry = entry.saturating_add_signed(taken);
            return;
        }
        if taken != 0 || held != 0 {
            let mut pending = self.pending();
            let entry = pending.entry(scope).or_insert((0, 0));
            entry.0 = entry.0.saturating_add(taken);
            entry.1 = entry.1.saturating_add(held);
        }
    }

    /// Gives `tokens` of the slice of `scope` back to the ledger.
    fn give_back(&self, scope: i64, tokens: u64) {
        self.add(scope, -to_i64(tokens), -to_i64(tokens));
    }

    /// Gives back the unused slices of `budgets` idle for `idle` (all of them with
    /// `Duration::ZERO`), and sends every pending change to the database in one statement.
    pub async fn sync<'a>(
        &self,
        budgets: impl IntoIterator<Item = &'a Arc<Budget>>,
        idle: Duration,
    ) -> Result<(), StoreError> {
        for budget in budgets {
            let returned = budget.give_back_if_idle(idle);
            self.give_back(budget.scope, returned);
        }
        let deltas: Vec<(i64, i64, i64)> = std::mem::take(&mut *self.pending())
            .into_iter()
            .filter(|(_, (taken, held))| *taken != 0 || *held != 0)
            .map(|(scope, (taken, held))| (scope, taken, held))
            .collect();
        if deltas.is_empty() {
            return Ok(());
        }
        if let Err(e) = self
            .store
            .adjust_budgets(self.instance.clone(), deltas.clone())
            .await
        {
            for (scope, taken, held) in deltas {
                self.add(scope, taken, held);
            }
            return Err(e);
        }
        Ok(())
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[derive(Debug)]
struct State {
    limit: Option<u64>,
    /// Tokens leased to this instance and not used yet: free plus reserved.
    held: u64,
    /// Tokens reserved by requests in flight.
    reserved: u64,
    /// Tokens settled through this instance since it started.
    used: u64,
    last_reserve: Option<Instant>,
    /// Tokens reserved in the current second and in the one before it.
    demand: (Instant, u64, u64),
    /// What the ledger said was left, and when.
    known_left: Option<(u64, Instant)>,
}

impl State {
    fn free(&self) -> u64 {
        self.held.saturating_sub(self.reserved)
    }

    fn note_demand(&mut self, amount: u64, now: Instant) {
        let (start, current, previous) = &mut self.demand;
        let elapsed = now.saturating_duration_since(*start);
        if elapsed >= Duration::from_secs(2) {
            *previous = 0;
            *current = 0;
            *start = now;
        } else if elapsed >= Duration::from_secs(1) {
            *previous = *current;
            *current = 0;
            *start = now;
        }
        *current = current.saturating_add(amount);
        self.last_reserve = Some(now);
    }

    /// About one second of recent demand.
    fn recent_demand(&self) -> u64 {
        let (_, current, previous) = self.demand;
        current.max(previous)
    }
}

/// A token budget: a limit (or none) and the slice of it this instance holds.
#[derive(Debug)]
pub struct Budget {
    scope: i64,
    ledger: Arc<Ledger>,
    state: Mutex<State>,
    refill: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ledger")
    }
}

impl Budget {
    /// The budget `scope` of the ledger (0: global, else a key id) with `limit` (`None`:
    /// unlimited).
    pub fn new(ledger: Arc<Ledger>, scope: i64, limit: Option<u64>) -> Self {
        Self {
            scope,
            ledger,
            state: Mutex::new(State {
                limit,
                held: 0,
                reserved: 0,
                used: 0,
                last_reserve: None,
                demand: (Instant::now(), 0, 0),
                known_left: None,
            }),
            refill: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes the limit (an edit in a console); the unused slice goes back to the ledger so
    /// that the next lease is measured against the new limit.
    pub fn set_limit(&self, limit: Option<u64>) {
        let returned = {
            let mut state = self.lock();
            if state.limit == limit {
                return;
            }
            state.limit = limit;
            state.known_left = None;
            let free = state.free();
            state.held -= free;
            free
        };
        self.ledger.give_back(self.scope, returned);
    }

    /// The limit.
    pub fn limit(&self) -> Option<u64> {
        self.lock().limit
    }

    /// Tokens settled through this instance since it started.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// Tokens reserved by requests in flight on this instance.
    pub fn reserved(&self) -> u64 {
        self.lock().reserved
    }

    /// Tokens this instance holds and has not reserved.
    pub fn free(&self) -> u64 {
        self.lock().free()
    }

    fn give_back_if_idle(&self, idle: Duration) -> u64 {
        let mut state = self.lock();
        let idle_long_enough = state.last_reserve.is_none_or(|at| at.elapsed() >= idle);
        if !idle_long_enough {
            return 0;
        }
        let free = state.free();
        state.held -= free;
        if let Some((left, at)) = state.known_left {
            state.known_left = Some((left.saturating_add(free), at));
        }
        free
    }

    /// Reserves `amount` in `global` and, if given, `key` — both or neither — leasing more of a
    /// budget from the ledger when the slice this instance holds is too small.
    pub async fn reserve(
        global: &Arc<Budget>,
        key: Option<&Arc<Budget>>,
        amount: u64,
    ) -> Result<Reservation, Refusal> {
        for _ in 0..ATTEMPTS {
            match Self::try_reserve(global, key, amount) {
                Ok(reservation) => return Ok(reservation),
                Err(Refusal::Global) => global.refill(amount, Refusal::Global).await?,
                Err(_) => match key {
                    Some(key) => key.refill(amount, Refusal::Key).await?,
                    None => return Err(Refusal::Key),
                },
            }
        }
        Err(Refusal::Global)
    }

    /// Reserves as many tokens as `global` and `key` have left, at most `most` and at least
    /// `least` — both budgets or neither — leasing what the ledger still has when the slices this
    /// instance holds are too small. A budget without a limit never lowers the amount.
    pub async fn reserve_up_to(
        global: &Arc<Budget>,
        key: Option<&Arc<Budget>>,
        least: u64,
        most: u64,
    ) -> Result<Reservation, Refusal> {
        let most = most.max(least);
        let mut last = Refusal::Global;
        for _ in 0..ATTEMPTS {
            global.refill_between(least, most, Refusal::Global).await?;
            if let Some(key) = key {
                key.refill_between(least, most, Refusal::Key).await?;
            }
            match Self::try_reserve_up_to(global, key, least, most) {
                Ok(reservation) => return Ok(reservation),
                Err(refusal) => last = refusal,
            }
        }
        Err(last)
    }

    /// [`Budget::reserve_up_to`] from the slices held, without waiting.
    fn try_reserve_up_to(
        global: &Arc<Budget>,
        key: Option<&Arc<Budget>>,
        least: u64,
        most: u64,
    ) -> Result<Reservation, Refusal> {
        let now = Instant::now();
        let mut g = global.lock();
        let mut amount = most;
        if g.limit.is_some() {
            amount = amount.min(g.free());
        }
        if amount < least {
            return Err(Refusal::Global);
        }
        if let Some(key) = key {
            let mut k = key.lock();
            if k.limit.is_some() {
                amount = amount.min(k.free());
            }
            if amount < least {
                return Err(Refusal::Key);
            }
            k.reserved += amount;
            k.note_demand(amount, now);
        }
        g.reserved += amount;
        g.note_demand(amount, now);
        Ok(Reservation {
            global: global.clone(),
            key: key.cloned(),
            amount,
            settled: false,
        })
    }

    /// Reserves exactly `amount` from the slices held, without waiting; says which budget is short.
    fn try_reserve(
        global: &Arc<Budget>,
        key: Option<&Arc<Budget>>,
        amount: u64,
    ) -> Result<Reservation, Refusal> {
        Self::try_reserve_up_to(global, key, amount, amount)
    }

    /// Leases enough for `amount` more; `refusal` when the ledger has not that much left.
    async fn refill(&self, amount: u64, refusal: Refusal) -> Result<(), Refusal> {
        self.refill_between(amount, amount, refusal).await
    }

    /// Leases enough for `most` more, or what the ledger has left when that is less;
    /// `refusal` when it has not even enough for `least`.
    async fn refill_between(&self, least: u64, most: u64, refusal: Refusal) -> Result<(), Refusal> {
        let _one_at_a_time = self.refill.lock().await;
        let (limit, need, want) = {
            let state = self.lock();
            let Some(limit) = state.limit else {
                return Ok(());
            };
            let free = state.free();
            if free >= most {
                return Ok(());
            }
            let need = least.saturating_sub(free);
            let wanted = most - free;
            if let Some((left, at)) = state.known_left {
                if left < need && at.elapsed() < KNOWN_EMPTY_FOR {
                    return Err(refusal);
                }
            }
            let mut extra = state.recent_demand();
            if let Some((left, _)) = state.known_left {
                extra = extra.min(left / LEASE_SHARE);
            }
            (limit, need, wanted.saturating_add(extra))
        };
        let lease = match self.ledger.lease_locally(self.scope, limit, need, want) {
            Some(lease) => lease,
            None => self
                .ledger
                .store
                .lease(self.ledger.instance.clone(), self.scope, limit, need, want)
                .await
                .map_err(|e| Refusal::Unavailable(e.to_string()))?,
        };
        let mut state = self.lock();
        if state.limit != Some(limit) {
            // The limit changed meanwhile: give the lease back, the caller tries again.
            self.ledger.give_back(self.scope, lease.granted);
            return Ok(());
        }
        state.held += lease.granted;
        state.known_left = Some((lease.remaining, Instant::now()));
        if lease.granted == 0 && need > 0 {
            return Err(refusal);
        }
        Ok(())
    }

    /// Charges `tokens` used without a reservation (usage reported after the fact by a usage
    /// source): it cannot be refused, but it counts against the limit like any call's.
    pub fn charge(&self, tokens: u64) {
        if tokens > 0 {
            self.settle(0, tokens);
        }
    }

    fn settle(&self, reserved: u64, actual: u64) {
        let (overdraft, used_from_slice) = {
            let mut state = self.lock();
            state.reserved = state.reserved.saturating_sub(reserved);
            state.used = state.used.saturating_add(actual);
            if state.limit.is_none() {
                drop(state);
                self.ledger.note_unlimited_use(self.scope, actual);
                return;
            }
            // The reservation's tokens leave the slice: what was used is spent, the rest is free.
            let spent = actual.min(reserved).min(state.held);
            state.held -= spent;
            // Used more than reserved: take it from the free slice, and what that lacks from the
            // ledger directly.
            let over = actual.saturating_sub(reserved);
            let from_free = over.min(state.free());
            state.held -= from_free;
            (over - from_free, spent + from_free)
        };
        // Tokens of the slice used are no longer held (they stay taken, as used); the overdraft
        // is taken from the ledger directly.
        self.ledger
            .add(self.scope, to_i64(overdraft), -to_i64(used_from_slice));
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
    /// The tokens reserved.
    pub fn amount(&self) -> u64 {
        self.amount
    }

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
    use crate::config::DatabaseUrl;
    use crate::store::GLOBAL_SCOPE;

    fn ledger(dir: &crate::tempdir::TempDir) -> Arc<Ledger> {
        let url = DatabaseUrl::Sqlite(dir.path().join("b.db"));
        Ledger::new(
            Store::open(&url, jiff::tz::TimeZone::UTC).unwrap(),
            crate::keys::sync::Instance::new_id(),
        )
    }

    #[tokio::test]
    async fn admits_only_what_fits_with_reservations_in_flight() {
        let dir = crate::tempdir::tempdir();
        let ledger = ledger(&dir);
        let global = Arc::new(Budget::new(ledger.clone(), GLOBAL_SCOPE, Some(100)));
        let a = Budget::reserve(&global, None, 40).await.unwrap();
        let b = Budget::reserve(&global, None, 40).await.unwrap();
        assert_eq!(
            Budget::reserve(&global, None, 40).await.unwrap_err(),
            Refusal::Global
        );
        a.settle(30);
        assert_eq!(global.used(), 30);
        assert_eq!(global.reserved(), 40);
        drop(b);
        assert_eq!(global.reserved(), 0);
        // 30 used: 70 left, whichever instance asks.
        let c = Budget::reserve(&global, None, 70).await.unwrap();
        assert!(Budget::reserve(&global, None, 1).await.is_err());
        drop(c);
    }

    #[tokio::test]
    async fn reserves_both_budgets_or_neither() {
        let dir = crate::tempdir::tempdir();
        let ledger = ledger(&dir);
        let global = Arc::new(Budget::new(ledger.clone(), GLOBAL_SCOPE, None));
        let key = Arc::new(Budget::new(ledger.clone(), 5, Some(50)));
        assert_eq!(
            Budget::reserve(&global, Some(&key), 60).await.unwrap_err(),
            Refusal::Key
        );
        assert_eq!(global.reserved(), 0);
        let r = Budget::reserve(&global, Some(&key), 50).await.unwrap();
        assert_eq!((global.reserved(), key.reserved()), (50, 50));
        r.settle(20);
        assert_eq!((global.used(), key.used()), (20, 20));
    }

    #[tokio::test]
    async fn two_instances_share_one_limit_and_return_what_they_do_not_use() {
        let dir = crate::tempdir::tempdir();
        // Two ledgers on one database: two instances.
        let (a, b) = (ledger(&dir), ledger(&dir));
        let on_a = Arc::new(Budget::new(a.clone(), GLOBAL_SCOPE, Some(100)));
        let on_b = Arc::new(Budget::new(b.clone(), GLOBAL_SCOPE, Some(100)));
        let first = Budget::reserve(&on_a, None, 60).await.unwrap();
        assert_eq!(
            Budget::reserve(&on_b, None, 60).await.unwrap_err(),
            Refusal::Global,
            "60 + 60 does not fit in 100"
        );
        let _second = Budget::reserve(&on_b, None, 40).await.unwrap();
        first.settle(10);
        // a used 10 and holds 50 it does not use; once idle it gives them back.
        a.sync([&on_a], Duration::ZERO).await.unwrap();
        assert_eq!(on_a.free(), 0);
        assert!(
            Budget::reserve(&on_a, None, 51).await.is_err(),
            "10 + 40 + 51 > 100"
        );
        Budget::reserve(&on_a, None, 50).await.unwrap();
    }

    #[tokio::test]
    async fn using_more_than_reserved_is_charged_to_the_ledger() {
        let dir = crate::tempdir::tempdir();
        let ledger = ledger(&dir);
        let global = Arc::new(Budget::new(ledger.clone(), GLOBAL_SCOPE, Some(100)));
        Budget::reserve(&global, None, 10).await.unwrap().settle(40);
        ledger.sync([&global], Duration::ZERO).await.unwrap();
        let other = Arc::new(Budget::new(ledger.clone(), GLOBAL_SCOPE, Some(100)));
        assert!(Budget::reserve(&other, None, 61).await.is_err());
        Budget::reserve(&other, None, 60).await.unwrap();
    }
}
