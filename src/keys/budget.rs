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
//!
//! A budget may reset every day, week or month in the configured time zone ([`Period`]): the
//! ledger then has a row per period ([`LedgerRow`]), and a call is charged to the row of the
//! period of the instant it is recorded at — reserved in one period, it settles in that period,
//! whenever it ends. The slice an instance holds belongs to one row; when a new period starts,
//! the unused part of the old slice goes back to the old row and new leases come from the new
//! one. A row missing from the ledger is built from the usage recorded in its period (the day
//! buckets of `agg_day`, whose days are those of the configured zone, so a period's first day
//! is exactly where its usage starts).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::clock::{Clock, Period};
use crate::store::{Lease, LedgerRow, Store, StoreError, UNIT_TOKENS};

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
/// Every period kind a budget may have: none (never resets), day, week, month.
const PERIODS: [Option<Period>; 4] = [
    None,
    Some(Period::Day),
    Some(Period::Week),
    Some(Period::Month),
];

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

/// The ledger row of budget `scope` counting `unit` that an instant `at` is charged to, with
/// periods of `period` in `tz`.
pub fn ledger_row(
    scope: i64,
    unit: i64,
    period: Option<Period>,
    at: Timestamp,
    tz: &TimeZone,
) -> LedgerRow {
    match period {
        None => LedgerRow {
            unit,
            ..LedgerRow::tokens(scope)
        },
        Some(period) => {
            let window = period.window(at, tz);
            LedgerRow {
                scope,
                unit,
                period: period.code(),
                start_ms: window.start.as_millisecond(),
                first_day: window.first_day,
                last_day: window.last_day,
            }
        }
    }
}

/// The in-memory ledger: per budget, unit and period kind, the taken tokens of the current
/// period and of the one before it (a call admitted just before a reset may settle after it).
/// Older periods are forgotten, so it holds at most two rows per budget and period kind.
#[derive(Debug, Default)]
pub struct LocalRows(HashMap<(i64, i64, i64), [(i64, u64); 2]>);

impl LocalRows {
    /// The tokens taken in `row`; `None` for a period older than the two kept.
    fn get(&mut self, row: &LedgerRow) -> Option<&mut u64> {
        let pair = self
            .0
            .entry((row.scope, row.unit, row.period))
            .or_insert([(row.start_ms, 0), (i64::MIN, 0)]);
        if row.start_ms > pair[0].0 {
            pair[1] = pair[0];
            pair[0] = (row.start_ms, 0);
        }
        if row.start_ms == pair[0].0 {
            Some(&mut pair[0].1)
        } else if row.start_ms == pair[1].0 {
            Some(&mut pair[1].1)
        } else {
            None
        }
    }

    /// Notes that `row` has `taken` tokens used (recorded usage at start).
    pub fn seed(&mut self, row: LedgerRow, taken: u64) {
        if let Some(entry) = self.get(&row) {
            *entry = taken;
        }
    }
}

/// The shared ledger: the store, and the changes to send it at the next tick.
pub struct Ledger {
    store: Store,
    /// This instance's id in the `instances` table: the slices it holds are noted under it.
    instance: String,
    /// What decides the period a call falls in.
    clock: Clock,
    /// The zone periods start in.
    timezone: TimeZone,
    /// Per ledger row: changes to its `taken` and to what this instance holds of it.
    pending: Mutex<HashMap<LedgerRow, (i64, i64)>>,
    /// A ledger kept in memory (one instance on SQLite).
    local: Option<Mutex<LocalRows>>,
}

impl Ledger {
    /// A ledger kept in `store`, shared with the other instances on it; `instance` is this
    /// instance's id among them. Periods start in `timezone`, by `clock`.
    pub fn new(store: Store, instance: String, clock: Clock, timezone: TimeZone) -> Arc<Self> {
        Arc::new(Self {
            store,
            instance,
            clock,
            timezone,
            pending: Mutex::new(HashMap::new()),
            local: None,
        })
    }

    /// A ledger of this instance alone, kept in memory: `rows` holds the tokens recorded per
    /// ledger row (each budget in every period kind) when the instance starts.
    pub fn local(store: Store, clock: Clock, timezone: TimeZone, rows: LocalRows) -> Arc<Self> {
        Arc::new(Self {
            store,
            instance: String::new(),
            clock,
            timezone,
            pending: Mutex::new(HashMap::new()),
            local: Some(Mutex::new(rows)),
        })
    }

    /// The clock periods are measured by.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The row of budget `scope` counting `unit` with `period` that `at` is charged to.
    pub fn row(&self, scope: i64, unit: i64, period: Option<Period>, at: Timestamp) -> LedgerRow {
        ledger_row(scope, unit, period, at, &self.timezone)
    }

    fn local_rows(&self) -> Option<MutexGuard<'_, LocalRows>> {
        self.local
            .as_ref()
            .map(|l| l.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Leases from the in-memory ledger, or `None` when the ledger is the store's.
    fn lease_locally(&self, row: &LedgerRow, limit: u64, need: u64, want: u64) -> Option<Lease> {
        let mut rows = self.local_rows()?;
        let Some(taken) = rows.get(row) else {
            // A period two resets ago: nothing more is admitted in it.
            return Some(Lease {
                granted: 0,
                remaining: 0,
            });
        };
        let lease = crate::store::grant(limit, *taken, need, want);
        *taken = taken.saturating_add(lease.granted);
        Some(lease)
    }

    /// Counts `tokens` used at `at` under budget `scope` in the rows of every period kind but
    /// `charged` (the row the call's slice is charged to), so that a limit or period set later
    /// starts from them (in-memory ledger only; the store's ledger rebuilds a row from the
    /// recorded usage).
    fn note_use(
        &self,
        (scope, unit): (i64, i64),
        at: Timestamp,
        tokens: u64,
        charged: Option<LedgerRow>,
    ) {
        let Some(mut rows) = self.local_rows() else {
            return;
        };
        for period in PERIODS {
            let row = self.row(scope, unit, period, at);
            if Some(row) == charged {
                continue;
            }
            if let Some(taken) = rows.get(&row) {
                *taken = taken.saturating_add(tokens);
            }
        }
    }

    /// The store the ledger is kept in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<LedgerRow, (i64, i64)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a change of ledger row `row` (`taken`) and of what this instance holds of it
    /// (`held`), for the next sync.
    fn add(&self, row: LedgerRow, taken: i64, held: i64) {
        if let Some(mut rows) = self.local_rows() {
            if let Some(entry) = rows.get(&row) {
                *entry = entry.saturating_add_signed(taken);
            }
            return;
        }
        if taken != 0 || held != 0 {
            let mut pending = self.pending();
            let entry = pending.entry(row).or_insert((0, 0));
            entry.0 = entry.0.saturating_add(taken);
            entry.1 = entry.1.saturating_add(held);
        }
    }

    /// Gives `tokens` of a slice of `row` back to the ledger.
    fn give_back(&self, row: LedgerRow, tokens: u64) {
        if tokens > 0 {
            self.add(row, -to_i64(tokens), -to_i64(tokens));
        }
    }

    /// Gives back the unused slices of `budgets` idle for `idle` (all of them with
    /// `Duration::ZERO`), and sends every pending change to the database in one statement.
    pub async fn sync<'a>(
        &self,
        budgets: impl IntoIterator<Item = &'a Arc<Budget>>,
        idle: Duration,
    ) -> Result<(), StoreError> {
        for budget in budgets {
            for (row, returned) in budget.give_back_if_idle(idle) {
                self.give_back(row, returned);
            }
        }
        let deltas: Vec<(LedgerRow, i64, i64)> = std::mem::take(&mut *self.pending())
            .into_iter()
            .filter(|(_, (taken, held))| *taken != 0 || *held != 0)
            .map(|(row, (taken, held))| (row, taken, held))
            .collect();
        if deltas.is_empty() {
            return Ok(());
        }
        if let Err(e) = self
            .store
            .adjust_budgets(self.instance.clone(), deltas.clone())
            .await
        {
            for (row, taken, held) in deltas {
                self.add(row, taken, held);
            }
            return Err(e);
        }
        Ok(())
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The part of a budget's slice that belongs to one ledger row.
#[derive(Debug)]
struct Slice {
    row: LedgerRow,
    /// Tokens leased to this instance from the row and not used yet: free plus reserved.
    held: u64,
    /// Tokens reserved by requests in flight charged to the row.
    reserved: u64,
}

impl Slice {
    fn free(&self) -> u64 {
        self.held.saturating_sub(self.reserved)
    }
}

#[derive(Debug)]
struct State {
    limit: Option<u64>,
    period: Option<Period>,
    /// What this instance holds, per ledger row: the current period's, and past ones' while
    /// requests admitted in them are in flight.
    slices: Vec<Slice>,
    /// The row new requests were last charged to; `known_left` is about it.
    current: Option<LedgerRow>,
    /// Tokens settled through this instance since it started.
    used: u64,
    last_reserve: Option<Instant>,
    /// Tokens reserved in the current second and in the one before it.
    demand: (Instant, u64, u64),
    /// What the ledger said was left of the current row, and when.
    known_left: Option<(u64, Instant)>,
}

impl State {
    fn slice(&mut self, row: LedgerRow) -> &mut Slice {
        let index = match self.slices.iter().position(|s| s.row == row) {
            Some(index) => index,
            None => {
                self.slices.push(Slice {
                    row,
                    held: 0,
                    reserved: 0,
                });
                self.slices.len() - 1
            }
        };
        &mut self.slices[index]
    }

    /// Makes `row` the current one: the free part of every other slice is returned (listed in
    /// `returns`), and slices left empty are dropped.
    fn enter(&mut self, row: LedgerRow, returns: &mut Vec<(LedgerRow, u64)>) {
        if self.current == Some(row) {
            return;
        }
        self.current = Some(row);
        self.known_left = None;
        self.return_free(|s| s.row != row, returns);
    }

    /// Returns the free part of the slices `which` selects; drops the empty ones but the
    /// current one.
    fn return_free(&mut self, which: impl Fn(&Slice) -> bool, returns: &mut Vec<(LedgerRow, u64)>) {
        for slice in self.slices.iter_mut().filter(|s| which(s)) {
            let free = slice.free();
            if free > 0 {
                slice.held -= free;
                returns.push((slice.row, free));
            }
        }
        let current = self.current;
        self.slices
            .retain(|s| s.held > 0 || s.reserved > 0 || Some(s.row) == current);
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

/// A budget of tokens or of money: a limit (or none), how often it resets, and the slices of it
/// this instance holds.
#[derive(Debug)]
pub struct Budget {
    scope: i64,
    /// What it counts: [`UNIT_TOKENS`] or [`crate::store::UNIT_NANO_USD`].
    unit: i64,
    ledger: Arc<Ledger>,
    state: Mutex<State>,
    refill: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ledger")
    }
}

/// What a reservation holds of one budget: the ledger row it is charged to, and whether a
/// slice of that row covered it (the budget had a limit when it was made).
#[derive(Debug, Clone, Copy)]
struct Part {
    row: LedgerRow,
    backed: bool,
}

impl Budget {
    /// The token budget `scope` of the ledger (0: global, else a key id) with `limit` (`None`:
    /// unlimited), starting again from nothing every `period` (`None`: never).
    pub fn new(
        ledger: Arc<Ledger>,
        scope: i64,
        limit: Option<u64>,
        period: Option<Period>,
    ) -> Self {
        Self::of_unit(ledger, scope, UNIT_TOKENS, limit, period)
    }

    /// The budget `scope` counting `unit` (see [`Budget::new`]).
    pub fn of_unit(
        ledger: Arc<Ledger>,
        scope: i64,
        unit: i64,
        limit: Option<u64>,
        period: Option<Period>,
    ) -> Self {
        Self {
            scope,
            unit,
            ledger,
            state: Mutex::new(State {
                limit,
                period,
                slices: Vec::new(),
                current: None,
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

    fn give_back_all(&self, returns: Vec<(LedgerRow, u64)>) {
        for (row, tokens) in returns {
            self.ledger.give_back(row, tokens);
        }
    }

    /// Changes the limit or its period (an edit in a console); the unused slices go back to the
    /// ledger so that the next lease is measured against the new limit.
    pub fn set_limit(&self, limit: Option<u64>, period: Option<Period>) {
        let mut returns = Vec::new();
        {
            let mut state = self.lock();
            if state.limit == limit && state.period == period {
                return;
            }
            state.limit = limit;
            state.period = period;
            state.known_left = None;
            state.current = None;
            state.return_free(|_| true, &mut returns);
        }
        self.give_back_all(returns);
    }

    /// The limit.
    pub fn limit(&self) -> Option<u64> {
        self.lock().limit
    }

    /// How often the limit resets.
    pub fn period(&self) -> Option<Period> {
        self.lock().period
    }

    /// Tokens settled through this instance since it started.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// Tokens reserved by requests in flight on this instance.
    pub fn reserved(&self) -> u64 {
        self.lock().slices.iter().map(|s| s.reserved).sum()
    }

    /// Tokens this instance holds and has not reserved.
    pub fn free(&self) -> u64 {
        self.lock().slices.iter().map(Slice::free).sum()
    }

    fn give_back_if_idle(&self, idle: Duration) -> Vec<(LedgerRow, u64)> {
        let mut returns = Vec::new();
        let mut state = self.lock();
        let idle_long_enough = state.last_reserve.is_none_or(|at| at.elapsed() >= idle);
        if !idle_long_enough {
            return returns;
        }
        state.return_free(|_| true, &mut returns);
        let current = state.current;
        if let Some((left, at)) = state.known_left {
            let back: u64 = returns
                .iter()
                .filter(|(row, _)| Some(*row) == current)
                .map(|(_, n)| n)
                .sum();
            state.known_left = Some((left.saturating_add(back), at));
        }
        returns
    }

    /// Reserves `amount` in `global` and, if given, `key` — both or neither — for a call
    /// recorded at `at` (which decides the period it is charged to), leasing more of a budget
    /// from the ledger when the slice this instance holds is too small.
    pub async fn reserve(
        global: &Arc<Budget>,
        key: Option<&Arc<Budget>>,
        amount: u64,
        at: Timestamp,
    ) -> Result<Reservation, Refusal> {
        for _ in 0..ATTEMPTS {
            match Self::try_reserve_up_to(global, key, amount, amount, at) {
                Ok(reservation) => return Ok(reservation),
                Err(Refusal::Global) => global.refill(amount, amount, Refusal::Global, at).await?,
                Err(_) => match key {
                    Some(key) => key.refill(amount, amount, Refusal::Key, at).await?,
                    None => return Err(Refusal::Key),
                },
            }
        }
        Err(Refusal::Global)
    }

    /// Reserves as many tokens as `global` and `key` have left, at most `most` and at least
    /// `least` — both budgets or neither — for a call recorded at `at`, leasing what the ledger
    /// still has when the slices this instance holds are too small. A budget without a limit
    /// never lowers the amount.
    pub async fn reserve_up_to(
        global: &Arc<Budget>,
        key: Option<&Arc<Budget>>,
        least: u64,
        most: u64,
        at: Timestamp,
    ) -> Result<Reservation, Refusal> {
        let most = most.max(least);
        let mut last = Refusal::Global;
        for _ in 0..ATTEMPTS {
            global.refill(least, most, Refusal::Global, at).await?;
            if let Some(key) = key {
                key.refill(least, most, Refusal::Key, at).await?;
            }
            match Self::try_reserve_up_to(global, key, least, most, at) {
                Ok(reservation) => return Ok(reservation),
                Err(refusal) => last = refusal,
            }
        }
        Err(last)
    }

    /// [`Budget::reserve_up_to`] from the slices held, without waiting; says which budget is
    /// short.
    fn try_reserve_up_to(
        global: &Arc<Budget>,
        key: Option<&Arc<Budget>>,
        least: u64,
        most: u64,
        at: Timestamp,
    ) -> Result<Reservation, Refusal> {
        let now = Instant::now();
        let mut returns = Vec::new();
        let mut key_returns = Vec::new();
        let reserved = (|| {
            let mut g = global.lock();
            let g_row = global.ledger.row(global.scope, global.unit, g.period, at);
            g.enter(g_row, &mut returns);
            let mut amount = most;
            if g.limit.is_some() {
                amount = amount.min(g.slice(g_row).free());
            }
            if amount < least {
                return Err(Refusal::Global);
            }
            let key_part = match key {
                Some(key) => {
                    let mut k = key.lock();
                    let k_row = key.ledger.row(key.scope, key.unit, k.period, at);
                    k.enter(k_row, &mut key_returns);
                    if k.limit.is_some() {
                        amount = amount.min(k.slice(k_row).free());
                    }
                    if amount < least {
                        return Err(Refusal::Key);
                    }
                    k.slice(k_row).reserved += amount;
                    k.note_demand(amount, now);
                    Some(Part {
                        row: k_row,
                        backed: k.limit.is_some(),
                    })
                }
                None => None,
            };
            g.slice(g_row).reserved += amount;
            g.note_demand(amount, now);
            Ok(Reservation {
                global: global.clone(),
                key: key.cloned(),
                amount,
                at,
                parts: (
                    Part {
                        row: g_row,
                        backed: g.limit.is_some(),
                    },
                    key_part,
                ),
                settled: false,
            })
        })();
        global.give_back_all(returns);
        if let Some(key) = key {
            key.give_back_all(key_returns);
        }
        reserved
    }

    /// Leases enough of the row `at` is charged to for `most` more, or what the ledger has
    /// left when that is less; `refusal` when it has not even enough for `least`.
    async fn refill(
        &self,
        least: u64,
        most: u64,
        refusal: Refusal,
        at: Timestamp,
    ) -> Result<(), Refusal> {
        let _one_at_a_time = self.refill.lock().await;
        let mut returns = Vec::new();
        let (row, period, plan) = {
            let mut state = self.lock();
            let period = state.period;
            let row = self.ledger.row(self.scope, self.unit, period, at);
            state.enter(row, &mut returns);
            (row, period, to_lease(&mut state, row, least, most))
        };
        self.give_back_all(returns);
        let Some((limit, need, want)) = plan.map_err(|()| refusal.clone())? else {
            return Ok(());
        };
        let lease = match self.ledger.lease_locally(&row, limit, need, want) {
            Some(lease) => lease,
            None => self
                .ledger
                .store
                .lease(self.ledger.instance.clone(), row, limit, need, want)
                .await
                .map_err(|e| Refusal::Unavailable(e.to_string()))?,
        };
        let mut state = self.lock();
        if state.limit != Some(limit) || state.period != period {
            // The limit changed meanwhile: give the lease back, the caller tries again.
            drop(state);
            self.ledger.give_back(row, lease.granted);
            return Ok(());
        }
        state.slice(row).held += lease.granted;
        if state.current == Some(row) {
            state.known_left = Some((lease.remaining, Instant::now()));
        }
        if lease.granted == 0 && need > 0 {
            return Err(refusal);
        }
        Ok(())
    }

    /// Charges `tokens` used without a reservation (usage reported after the fact by a usage
    /// source): it cannot be refused, but it counts against the limit like any call's.
    /// It is charged to the period `at` (the call's instant) falls in.
    pub fn charge(&self, tokens: u64, at: Timestamp) {
        if tokens > 0 {
            let period = self.lock().period;
            let row = self.ledger.row(self.scope, self.unit, period, at);
            self.settle(Part { row, backed: false }, 0, tokens, at);
        }
    }

    fn settle(&self, part: Part, reserved: u64, actual: u64, at: Timestamp) {
        let mut returned = 0;
        let charge = {
            let mut state = self.lock();
            state.used = state.used.saturating_add(actual);
            let limited = state.limit.is_some();
            let current = state.current;
            let slice = state.slice(part.row);
            slice.reserved = slice.reserved.saturating_sub(reserved);
            let charge = if !limited {
                None
            } else if part.backed {
                // The reservation's tokens leave the slice: what was used is spent, the rest is
                // free. Used more than reserved: take it from the free slice, and what that lacks
                // from the ledger directly.
                let spent = actual.min(reserved).min(slice.held);
                slice.held -= spent;
                let over = actual.saturating_sub(reserved);
                let from_free = over.min(slice.free());
                slice.held -= from_free;
                Some((over - from_free, spent + from_free))
            } else {
                // Admitted before the budget had a limit: what it used comes from the free slice,
                // and what that lacks from the ledger directly.
                let from_free = actual.min(slice.free());
                slice.held -= from_free;
                Some((actual - from_free, from_free))
            };
            if current != Some(part.row) {
                // A past period's slice: what it does not use goes back at once.
                returned = slice.free();
                slice.held -= returned;
            }
            state.return_free(|_| false, &mut Vec::new());
            charge
        };
        match charge {
            Some((overdraft, from_slice)) => {
                // Tokens of the slice used are no longer held (they stay taken, as used); the
                // overdraft is taken from the ledger directly.
                self.ledger.add(
                    part.row,
                    to_i64(overdraft) - to_i64(returned),
                    -to_i64(from_slice) - to_i64(returned),
                );
                self.ledger
                    .note_use((self.scope, self.unit), at, actual, Some(part.row));
            }
            None => {
                self.ledger.give_back(part.row, returned);
                self.ledger
                    .note_use((self.scope, self.unit), at, actual, None);
            }
        }
    }
}

/// What to lease for a reservation of `least` to `most` from `row`: `Ok(None)` when nothing is
/// needed, `Err` when the ledger said recently that not even `least` is left.
fn to_lease(
    state: &mut State,
    row: LedgerRow,
    least: u64,
    most: u64,
) -> Result<Option<(u64, u64, u64)>, ()> {
    let Some(limit) = state.limit else {
        return Ok(None);
    };
    let free = state.slice(row).free();
    if free >= most {
        return Ok(None);
    }
    let need = least.saturating_sub(free);
    let wanted = most - free;
    if let Some((left, at)) = state.known_left {
        if left < need && at.elapsed() < KNOWN_EMPTY_FOR {
            return Err(());
        }
    }
    let mut extra = state.recent_demand();
    if let Some((left, _)) = state.known_left {
        extra = extra.min(left / LEASE_SHARE);
    }
    Ok(Some((limit, need, wanted.saturating_add(extra))))
}

/// Tokens held for one request; [`Reservation::settle`] charges what it really used. Dropped
/// unsettled (the request failed before any usage was known), it returns the tokens.
#[derive(Debug)]
pub struct Reservation {
    global: Arc<Budget>,
    key: Option<Arc<Budget>>,
    amount: u64,
    /// The instant the call is recorded at.
    at: Timestamp,
    /// The ledger rows of the global and the key's budget it is charged to.
    parts: (Part, Option<Part>),
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
        self.global
            .settle(self.parts.0, self.amount, actual, self.at);
        if let (Some(key), Some(part)) = (&self.key, self.parts.1) {
            key.settle(part, self.amount, actual, self.at);
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
            Store::open(&url, TimeZone::UTC).unwrap(),
            crate::keys::sync::Instance::new_id(),
            Clock::system(),
            TimeZone::UTC,
        )
    }

    fn now() -> Timestamp {
        Timestamp::now()
    }

    #[tokio::test]
    async fn admits_only_what_fits_with_reservations_in_flight() {
        let dir = crate::tempdir::tempdir();
        let ledger = ledger(&dir);
        let global = Arc::new(Budget::new(ledger.clone(), GLOBAL_SCOPE, Some(100), None));
        let a = Budget::reserve(&global, None, 40, now()).await.unwrap();
        let b = Budget::reserve(&global, None, 40, now()).await.unwrap();
        assert_eq!(
            Budget::reserve(&global, None, 40, now()).await.unwrap_err(),
            Refusal::Global
        );
        a.settle(30);
        assert_eq!(global.used(), 30);
        assert_eq!(global.reserved(), 40);
        drop(b);
        assert_eq!(global.reserved(), 0);
        // 30 used: 70 left, whichever instance asks.
        let c = Budget::reserve(&global, None, 70, now()).await.unwrap();
        assert!(Budget::reserve(&global, None, 1, now()).await.is_err());
        drop(c);
    }

    #[tokio::test]
    async fn reserves_both_budgets_or_neither() {
        let dir = crate::tempdir::tempdir();
        let ledger = ledger(&dir);
        let global = Arc::new(Budget::new(ledger.clone(), GLOBAL_SCOPE, None, None));
        let key = Arc::new(Budget::new(ledger.clone(), 5, Some(50), None));
        assert_eq!(
            Budget::reserve(&global, Some(&key), 60, now())
                .await
                .unwrap_err(),
            Refusal::Key
        );
        assert_eq!(global.reserved(), 0);
        let r = Budget::reserve(&global, Some(&key), 50, now())
            .await
            .unwrap();
        assert_eq!((global.reserved(), key.reserved()), (50, 50));
        r.settle(20);
        assert_eq!((global.used(), key.used()), (20, 20));
    }

    #[tokio::test]
    async fn two_instances_share_one_limit_and_return_what_they_do_not_use() {
        let dir = crate::tempdir::tempdir();
        // Two ledgers on one database: two instances.
        let (a, b) = (ledger(&dir), ledger(&dir));
        let on_a = Arc::new(Budget::new(a.clone(), GLOBAL_SCOPE, Some(100), None));
        let on_b = Arc::new(Budget::new(b.clone(), GLOBAL_SCOPE, Some(100), None));
        let first = Budget::reserve(&on_a, None, 60, now()).await.unwrap();
        assert_eq!(
            Budget::reserve(&on_b, None, 60, now()).await.unwrap_err(),
            Refusal::Global,
            "60 + 60 does not fit in 100"
        );
        let _second = Budget::reserve(&on_b, None, 40, now()).await.unwrap();
        first.settle(10);
        // a used 10 and holds 50 it does not use; once idle it gives them back.
        a.sync([&on_a], Duration::ZERO).await.unwrap();
        assert_eq!(on_a.free(), 0);
        assert!(
            Budget::reserve(&on_a, None, 51, now()).await.is_err(),
            "10 + 40 + 51 > 100"
        );
        Budget::reserve(&on_a, None, 50, now()).await.unwrap();
    }

    #[tokio::test]
    async fn using_more_than_reserved_is_charged_to_the_ledger() {
        let dir = crate::tempdir::tempdir();
        let ledger = ledger(&dir);
        let global = Arc::new(Budget::new(ledger.clone(), GLOBAL_SCOPE, Some(100), None));
        Budget::reserve(&global, None, 10, now())
            .await
            .unwrap()
            .settle(40);
        ledger.sync([&global], Duration::ZERO).await.unwrap();
        let other = Arc::new(Budget::new(ledger.clone(), GLOBAL_SCOPE, Some(100), None));
        assert!(Budget::reserve(&other, None, 61, now()).await.is_err());
        Budget::reserve(&other, None, 60, now()).await.unwrap();
    }

    fn shanghai() -> TimeZone {
        TimeZone::get("Asia/Shanghai").unwrap()
    }

    /// The two ledgers a budget can have: in memory (SQLite, one instance) and the store's.
    fn both_ledgers(dir: &crate::tempdir::TempDir) -> [Arc<Ledger>; 2] {
        let url = DatabaseUrl::Sqlite(dir.path().join("p.db"));
        let store = Store::open(&url, shanghai()).unwrap();
        [
            Ledger::local(
                store.clone(),
                Clock::system(),
                shanghai(),
                LocalRows::default(),
            ),
            Ledger::new(store, "a".into(), Clock::system(), shanghai()),
        ]
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn a_monthly_budget_starts_again_at_the_month_boundary_and_charges_calls_to_their_month()
    {
        // 15:59 UTC on Jan 31 is 23:59 in Shanghai; 16:00 UTC is midnight of Feb 1 there.
        let (jan, feb) = (at("2026-01-31T15:59:00Z"), at("2026-01-31T16:00:00Z"));
        let dir = crate::tempdir::tempdir();
        for ledger in both_ledgers(&dir) {
            let global = Arc::new(Budget::new(ledger.clone(), GLOBAL_SCOPE, None, None));
            let key = Arc::new(Budget::new(
                ledger.clone(),
                5,
                Some(100),
                Some(Period::Month),
            ));
            let reserve = |amount, at| Budget::reserve(&global, Some(&key), amount, at);
            let first = reserve(40, jan).await.unwrap();
            let second = reserve(60, jan).await.unwrap();
            assert_eq!(reserve(1, jan).await.unwrap_err(), Refusal::Key);
            // February starts from nothing, while January's calls are still in flight.
            let third = reserve(100, feb).await.unwrap();
            assert_eq!(reserve(1, feb).await.unwrap_err(), Refusal::Key);
            // January's calls settle in January: February gains nothing from what they did not
            // use, and loses nothing to what they did.
            first.settle(40);
            second.settle(10);
            assert_eq!(reserve(1, feb).await.unwrap_err(), Refusal::Key);
            drop(third);
            let fourth = reserve(100, feb).await.unwrap();
            fourth.settle(70);
            assert_eq!(reserve(31, feb).await.unwrap_err(), Refusal::Key);
            reserve(30, feb).await.unwrap().settle(30);
            // A late call of January finds what January left: 100 - 40 - 10 (once the ledger
            // in the store has what was given back).
            ledger
                .sync([&global, &key], Duration::from_secs(3600))
                .await
                .unwrap();
            assert_eq!(reserve(51, jan).await.unwrap_err(), Refusal::Key);
            reserve(50, jan).await.unwrap();
            assert_eq!(key.used(), 150);
        }
    }

    #[tokio::test]
    async fn a_limit_set_later_starts_from_what_was_used_in_its_period() {
        let (jan, feb) = (at("2026-01-20T00:00:00Z"), at("2026-02-02T00:00:00Z"));
        let dir = crate::tempdir::tempdir();
        let [ledger, _] = both_ledgers(&dir);
        let global = Arc::new(Budget::new(ledger.clone(), GLOBAL_SCOPE, None, None));
        let key = Arc::new(Budget::new(ledger.clone(), 5, None, None));
        Budget::reserve(&global, Some(&key), 500, jan)
            .await
            .unwrap()
            .settle(500);
        Budget::reserve(&global, Some(&key), 30, feb)
            .await
            .unwrap()
            .settle(30);
        // A monthly limit counts February's 30 only; a limit that never resets counts all 530.
        key.set_limit(Some(100), Some(Period::Month));
        assert!(Budget::reserve(&global, Some(&key), 71, feb).await.is_err());
        Budget::reserve(&global, Some(&key), 70, feb).await.unwrap();
        key.set_limit(Some(600), None);
        assert!(Budget::reserve(&global, Some(&key), 71, feb).await.is_err());
        Budget::reserve(&global, Some(&key), 70, feb).await.unwrap();
    }

    #[tokio::test]
    async fn a_daily_global_budget_resets_every_local_midnight() {
        let dir = crate::tempdir::tempdir();
        for ledger in both_ledgers(&dir) {
            let global = Arc::new(Budget::new(
                ledger.clone(),
                GLOBAL_SCOPE,
                Some(10),
                Some(Period::Day),
            ));
            for day in [
                "2026-03-01T15:00:00Z",
                "2026-03-01T16:00:00Z",
                "2026-03-02T16:00:00Z",
            ] {
                Budget::reserve(&global, None, 10, at(day))
                    .await
                    .unwrap()
                    .settle(10);
                assert_eq!(
                    Budget::reserve(&global, None, 1, at(day))
                        .await
                        .unwrap_err(),
                    Refusal::Global,
                    "{day}"
                );
            }
        }
    }
}
