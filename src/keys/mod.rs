//! Gateway API keys: generation, hashing, display form, and the in-memory registry the gateway
//! checks on every request (so no request waits for the database to authenticate). With several
//! instances on one database, each keeps its registry in step with the others' key changes
//! ([`KeyRegistry::apply_changes`], fed by `sync`), shares budgets through leases (`budget`) and
//! RPM limits through Redis (`rate`).

mod budget;
mod lookup;
mod rate;
pub mod sync;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rand::rngs::OsRng;
use rand::TryRngCore;
use sha2::{Digest, Sha256};

pub use budget::{ledger_row, Budget, Ledger, LocalRows, Refusal, Reservation, IDLE_RETURN_AFTER};
pub use rate::RateLimiter;

use crate::store::KeyRow;
use rate::RateWindow;

/// Prefix of every key this gateway issues.
pub const KEY_PREFIX: &str = "sk-tc-";
const KEY_RANDOM_CHARS: usize = 40;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A freshly generated key: the full value (shown once) and what is stored of it.
pub struct GeneratedKey {
    /// The full key, returned once by the create call and never stored.
    pub full: String,
    /// SHA-256 of the full key.
    pub hash: [u8; 32],
    /// Display form.
    pub display: String,
}

/// Generates `sk-tc-` + 40 base62 characters from the OS random source (≈238 bits).
pub fn generate() -> Result<GeneratedKey, String> {
    let mut random = String::with_capacity(KEY_RANDOM_CHARS);
    let mut bytes = [0u8; 64];
    while random.len() < KEY_RANDOM_CHARS {
        OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| format!("the OS random source failed: {e}"))?;
        // Rejection sampling: 248 = 4 × 62, so every character is equally likely.
        for &b in bytes.iter().filter(|&&b| b < 248) {
            if random.len() < KEY_RANDOM_CHARS {
                random.push(char::from(BASE62[usize::from(b % 62)]));
            }
        }
    }
    let full = format!("{KEY_PREFIX}{random}");
    Ok(GeneratedKey {
        hash: hash(&full),
        display: display_form(&full),
        full,
    })
}

/// SHA-256 of a key: enough for keys with 200+ bits of randomness (no salt or KDF needed).
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// `sk-tc-AbCd…wxyz`: the prefix, four characters, an ellipsis, the last four.
pub fn display_form(full: &str) -> String {
    let random = full.strip_prefix(KEY_PREFIX).unwrap_or(full);
    let chars: Vec<char> = random.chars().collect();
    if chars.len() < 12 {
        return format!("{KEY_PREFIX}…");
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{KEY_PREFIX}{head}…{tail}")
}

/// The settings of a key the gateway checks, as last written through the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySettings {
    /// Name recorded with each call.
    pub name: String,
    /// Disabled keys get 403.
    pub enabled: bool,
    /// Glob patterns of allowed models; `None` allows all.
    pub allowed_models: Option<Vec<String>>,
    /// Expired keys get 403.
    pub expires_at: Option<jiff::Timestamp>,
    /// Requests per minute; `None` is unlimited.
    pub rpm_limit: Option<u32>,
    /// Lower a call's `max_tokens` to what is left of a budget instead of refusing it.
    pub fit_max_tokens: bool,
}

/// A live key as the gateway sees it.
pub struct KeyEntry {
    /// Row id.
    pub id: i64,
    settings: RwLock<Arc<KeySettings>>,
    /// The version of the row the settings come from.
    version: AtomicI64,
    /// The key's token budget (its `token_limit`, shared through the ledger).
    pub budget: Arc<Budget>,
    /// The key's money budget (its `cost_limit`, in nano-dollars, shared through the ledger).
    pub cost_budget: Arc<Budget>,
    rate: Mutex<RateWindow>,
}

impl KeyEntry {
    fn new(row: &KeyRow, ledger: &Arc<Ledger>) -> Self {
        Self {
            id: row.id,
            settings: RwLock::new(Arc::new(settings_of(row))),
            version: AtomicI64::new(row.version),
            budget: Arc::new(Budget::new(
                ledger.clone(),
                row.id,
                row.token_limit,
                row.limit_period,
            )),
            cost_budget: Arc::new(Budget::of_unit(
                ledger.clone(),
                row.id,
                crate::store::UNIT_NANO_USD,
                row.cost_limit_nanos,
                row.limit_period,
            )),
            rate: Mutex::new(RateWindow::default()),
        }
    }

    /// The current settings (shared: a change replaces them, it does not edit them in place).
    pub fn settings(&self) -> Arc<KeySettings> {
        match self.settings.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Counts a request against the RPM limit; `Err(seconds)` says when to retry.
    pub fn check_rate(&self, limit: Option<u32>, now: jiff::Timestamp) -> Result<(), u64> {
        let Some(limit) = limit else { return Ok(()) };
        let mut window = match self.rate.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        window.admit(limit, now.as_millisecond())
    }
}

fn settings_of(row: &KeyRow) -> KeySettings {
    KeySettings {
        name: row.name.clone(),
        enabled: row.enabled,
        allowed_models: row.allowed_models.clone(),
        expires_at: row.expires_at,
        rpm_limit: row.rpm_limit,
        fit_max_tokens: row.fit_max_tokens,
    }
}

/// The live keys by hash and by id; the console and the poller of other instances' changes
/// keep it in step with the store.
pub struct KeyRegistry {
    by_hash: RwLock<HashMap<[u8; 32], Arc<KeyEntry>>>,
    by_id: RwLock<HashMap<i64, [u8; 32]>>,
    /// Keys deleted since start: never brought back by a change read before the deletion.
    deleted: RwLock<HashSet<i64>>,
    /// The newest key version the poller applied.
    version: AtomicI64,
    ledger: Arc<Ledger>,
    rates: RateLimiter,
    lookups: lookup::Lookups,
    /// Held while the store is asked about an unknown key: callers with the same key wait for
    /// the answer instead of asking again.
    lookup_turn: tokio::sync::Mutex<()>,
}

impl KeyRegistry {
    /// Builds the registry from the stored keys; budgets are shared through `ledger`, RPM limits
    /// counted by `rates`.
    pub fn load(rows: &[KeyRow], ledger: Arc<Ledger>, rates: RateLimiter) -> Self {
        let registry = Self {
            by_hash: RwLock::default(),
            by_id: RwLock::default(),
            deleted: RwLock::default(),
            version: AtomicI64::new(0),
            ledger,
            rates,
            lookups: lookup::Lookups::default(),
            lookup_turn: tokio::sync::Mutex::new(()),
        };
        registry.apply_changes(rows);
        registry.advance_version(rows.iter().map(|r| r.version).max().unwrap_or(0));
        registry
    }

    /// Finds a live key by its full value.
    pub fn find(&self, full_key: &str) -> Option<Arc<KeyEntry>> {
        let hash = hash(full_key);
        self.by_hash.read().ok()?.get(&hash).cloned()
    }

    /// Finds a live key by its hash (a client key reported by a usage source).
    pub fn find_by_hash(&self, hash: &[u8; 32]) -> Option<Arc<KeyEntry>> {
        self.by_hash.read().ok()?.get(hash).cloned()
    }

    /// Finds a live key by its full value; a key this instance does not know is looked up in a
    /// shared (PostgreSQL) store before it is refused — the key changes made since the last poll
    /// are read and applied at once — so a key just created through another instance works at
    /// once. Unknown keys are remembered as missing for a second and lookups
    /// are limited per second, so garbage keys cannot hammer the database.
    pub async fn find_or_look_up(&self, full_key: &str) -> Option<Arc<KeyEntry>> {
        if let Some(entry) = self.find(full_key) {
            return Some(entry);
        }
        let store = self.ledger.store();
        if store.kind() != "postgres" {
            // One instance on SQLite: its registry knows every key.
            return None;
        }
        let hash = hash(full_key);
        let _turn = self.lookup_turn.lock().await;
        if let Some(entry) = self.find(full_key) {
            // Found by the caller before us with the same key.
            return Some(entry);
        }
        if !self.lookups.admit(&hash) {
            return None;
        }
        // Reading every key change since the last poll (not just this key's row) applies them in
        // the order they were made, as the poller would: a key created after a change is never
        // honoured before that change.
        match store.keys_changed_since(self.version()).await {
            Ok(rows) => {
                if let Some(newest) = rows.iter().map(|r| r.version).max() {
                    self.apply_changes(&rows);
                    self.advance_version(newest);
                }
                let found = self.find(full_key);
                if found.is_none() {
                    self.lookups.missing(hash);
                }
                found
            }
            Err(e) => {
                tracing::warn!("cannot look up an unknown key in the store: {e}");
                None
            }
        }
    }

    /// Store lookups of unknown keys made since start.
    pub fn store_lookups(&self) -> u64 {
        self.lookups.made()
    }

    /// Finds a live key by id.
    pub fn get(&self, id: i64) -> Option<Arc<KeyEntry>> {
        let hash = *self.by_id.read().ok()?.get(&id)?;
        self.by_hash.read().ok()?.get(&hash).cloned()
    }

    /// Adds a key, or updates the settings and limit of a known one (keeping its counters; the
    /// tokens it used are in the budget ledger).
    pub fn upsert(&self, row: &KeyRow) {
        self.apply_changes(std::slice::from_ref(row));
    }

    /// Removes a key: the next request with it is refused.
    pub fn remove(&self, id: i64) {
        if let Ok(mut deleted) = self.deleted.write() {
            deleted.insert(id);
        }
        if let (Ok(mut by_hash), Ok(mut by_id)) = (self.by_hash.write(), self.by_id.write()) {
            if let Some(hash) = by_id.remove(&id) {
                by_hash.remove(&hash);
            }
        }
    }

    /// Applies key rows as read from the store (created, changed or deleted), ignoring any row
    /// older than what is known of its key.
    pub fn apply_changes(&self, rows: &[KeyRow]) {
        for row in rows {
            if row.deleted {
                self.remove(row.id);
                continue;
            }
            if self.deleted.read().is_ok_and(|d| d.contains(&row.id)) {
                continue;
            }
            if let Some(entry) = self.get(row.id) {
                if entry.version.fetch_max(row.version, Ordering::Relaxed) > row.version {
                    continue;
                }
                if let Ok(mut settings) = entry.settings.write() {
                    *settings = Arc::new(settings_of(row));
                }
                entry.budget.set_limit(row.token_limit, row.limit_period);
                entry
                    .cost_budget
                    .set_limit(row.cost_limit_nanos, row.limit_period);
                continue;
            }
            let entry = Arc::new(KeyEntry::new(row, &self.ledger));
            if let (Ok(mut by_hash), Ok(mut by_id)) = (self.by_hash.write(), self.by_id.write()) {
                by_hash.insert(row.hash, entry);
                by_id.insert(row.id, row.hash);
            }
        }
    }

    /// The newest key version the poller has applied: it asks the store for changes after it.
    /// (Changes this instance's console applies itself do not move it: a change another instance
    /// made just before could otherwise be skipped.)
    pub fn version(&self) -> i64 {
        self.version.load(Ordering::Relaxed)
    }

    /// Notes that every change up to `version` has been applied.
    pub fn advance_version(&self, version: i64) {
        self.version.fetch_max(version, Ordering::Relaxed);
    }

    /// The budgets of the live keys, tokens and money.
    pub fn key_budgets(&self) -> Vec<Arc<Budget>> {
        let Ok(by_hash) = self.by_hash.read() else {
            return Vec::new();
        };
        by_hash
            .values()
            .flat_map(|e| [e.budget.clone(), e.cost_budget.clone()])
            .collect()
    }

    /// Tokens used (through this instance) and in flight per live key id.
    pub fn budgets(&self) -> HashMap<i64, (u64, u64)> {
        let Ok(by_hash) = self.by_hash.read() else {
            return HashMap::new();
        };
        by_hash
            .values()
            .map(|e| (e.id, (e.budget.used(), e.budget.reserved())))
            .collect()
    }

    /// Counts a request of `entry` against its RPM limit — across instances when Redis is
    /// configured; `Err(seconds)` says when to retry.
    pub async fn check_rate(&self, entry: &KeyEntry, limit: Option<u32>) -> Result<(), u64> {
        let Some(limit) = limit else { return Ok(()) };
        self.rates
            .check(entry.id, limit, || {
                entry.check_rate(Some(limit), jiff::Timestamp::now())
            })
            .await
    }

    /// Whether RPM limits are shared through Redis.
    pub fn shares_rates(&self) -> bool {
        self.rates.is_shared()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let key = generate().unwrap();
        assert!(key.full.starts_with("sk-tc-"));
        assert_eq!(key.full.len(), 6 + 40);
        assert!(key.full[6..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(key.hash, hash(&key.full));
        assert!(key.display.starts_with("sk-tc-"));
        assert!(key.display.contains('…'));
        assert!(!key.display.contains(&key.full[10..40]));
        assert_ne!(generate().unwrap().full, key.full);
    }

    #[test]
    fn display_form_keeps_four_and_four() {
        let full = "sk-tc-AbCd0123456789012345678901234567wxyz";
        assert_eq!(display_form(full), "sk-tc-AbCd…wxyz");
        assert_eq!(display_form("short"), "sk-tc-…");
    }
}
