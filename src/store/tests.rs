//! Store tests on a real database — a SQLite file, or a scratch PostgreSQL database with
//! `TC_TEST_DATABASE=postgres`: migrations, batches with aggregates, trimming, time zones, key
//! versions and the budget ledger.

use super::*;
use crate::usage::{CallRecord, TokenUsage};

fn record(
    ts: jiff::Timestamp,
    model: &str,
    key_id: Option<i64>,
    status: u16,
    total: u64,
) -> CallRecord {
    CallRecord {
        ts,
        method: "POST".into(),
        endpoint: "/v1/messages".into(),
        status,
        model: model.into(),
        key_id,
        key_name: key_id.map(|id| format!("key-{id}")),
        tokens: TokenUsage::new(total / 2, total - total / 2),
        duration_ms: 40,
        ..CallRecord::default()
    }
}

/// A fresh database of the backend under test, kept while the handle lives.
enum TestDb {
    Sqlite(crate::tempdir::TempDir),
    Postgres(scratch::ScratchDb),
}

impl TestDb {
    fn new() -> Self {
        if scratch::wanted() {
            Self::Postgres(scratch::ScratchDb::create().unwrap())
        } else {
            Self::Sqlite(crate::tempdir::tempdir())
        }
    }

    fn url(&self) -> DatabaseUrl {
        match self {
            Self::Sqlite(dir) => DatabaseUrl::Sqlite(dir.path().join("t.db")),
            Self::Postgres(db) => DatabaseUrl::Postgres(crate::config::ServiceUrl::new(&db.url)),
        }
    }
}

/// Tokens of the global budget (`limit`) leased to `instance`.
async fn granted(store: &Store, instance: String, limit: u64, need: u64, want: u64) -> u64 {
    store
        .lease(instance, LedgerRow::tokens(GLOBAL_SCOPE), limit, need, want)
        .await
        .unwrap()
        .granted
}

/// `instance` gives back tokens of the global budget: `taken` off the ledger, `held` off its
/// slice.
async fn give_back(store: &Store, instance: &str, taken: i64, held: i64) {
    let row = LedgerRow::tokens(GLOBAL_SCOPE);
    store
        .adjust_budgets(instance.into(), vec![(row, -taken, -held)])
        .await
        .unwrap();
}

/// The newest `limit` call records.
async fn newest(store: &Store, limit: u32) -> Vec<LoggedCall> {
    store
        .logs(LogQuery {
            limit,
            ..LogQuery::default()
        })
        .await
        .unwrap()
}

fn open(db: &TestDb, zone: &str) -> Store {
    Store::open(&db.url(), jiff::tz::TimeZone::get(zone).unwrap()).unwrap()
}

#[tokio::test]
async fn reopening_keeps_everything_and_migrations_run_once() {
    let db = TestDb::new();
    let ts: jiff::Timestamp = "2026-03-01T10:00:00Z".parse().unwrap();
    {
        let store = open(&db, "UTC");
        let mut writer = store.batch_writer(10).unwrap();
        let logged = writer
            .write(&[
                record(ts, "a", None, 200, 10),
                record(ts, "b", None, 500, 4),
            ])
            .await
            .unwrap();
        assert_eq!(logged.iter().map(|l| l.id).collect::<Vec<_>>(), [1, 2]);
    }
    let store = open(&db, "UTC");
    let models = store.usage_by_model(UsageFilter::default()).await.unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0].1.tokens.total, 10);
    assert_eq!(models[1].1.failures, 1);
}

#[tokio::test]
async fn trimming_keeps_aggregates() {
    let db = TestDb::new();
    let store = open(&db, "UTC");
    let mut writer = store.batch_writer(3).unwrap();
    let ts = jiff::Timestamp::now();
    for _ in 0..4 {
        writer
            .write(&[
                record(ts, "m", Some(1), 200, 2),
                record(ts, "m", Some(1), 200, 2),
            ])
            .await
            .unwrap();
    }
    let logs = newest(&store, 100).await;
    assert_eq!(logs.iter().map(|l| l.id).collect::<Vec<_>>(), [8, 7, 6]);
    let by_key = store.usage_by_key().await.unwrap();
    assert_eq!(by_key[&1].calls, 8);
    assert_eq!(by_key[&1].tokens.total, 16);
}

#[tokio::test]
async fn days_follow_the_zone_and_are_rebuilt_when_it_changes() {
    let db = TestDb::new();
    // 15:30 UTC on 1 March is 23:30 in Shanghai; 16:30 UTC is 00:30 on 2 March there.
    let before: jiff::Timestamp = "2026-03-01T15:30:00Z".parse().unwrap();
    let after: jiff::Timestamp = "2026-03-01T16:30:00Z".parse().unwrap();
    {
        let store = open(&db, "Asia/Shanghai");
        let mut writer = store.batch_writer(100).unwrap();
        writer
            .write(&[
                CallRecord {
                    user: Some("u".into()),
                    ..record(before, "m", None, 200, 3)
                },
                record(after, "m", None, 200, 5),
            ])
            .await
            .unwrap();
        let days = store
            .usage_by_day(DayScope::All, 20260301, 20260302)
            .await
            .unwrap();
        let got: Vec<_> = days.iter().map(|d| (d.day, d.calls, d.tokens)).collect();
        assert_eq!(got, [(20260301, 1, 3), (20260302, 1, 5)]);
        assert_eq!(
            users_by_day(&store).await,
            [("".into(), 20260302, 1), ("u".into(), 20260301, 1)]
        );
    }
    let store = open(&db, "UTC");
    let days = store
        .usage_by_day(DayScope::All, 20260301, 20260302)
        .await
        .unwrap();
    let got: Vec<_> = days.iter().map(|d| (d.day, d.calls, d.tokens)).collect();
    assert_eq!(got, [(20260301, 2, 8)], "rebucketed in UTC");
    assert_eq!(
        users_by_day(&store).await,
        [("".into(), 20260302, 1), ("u".into(), 20260301, 1)],
        "users keep the days they were recorded in (no hourly rows to rebuild them from)"
    );
    let by_day = UsageQuery {
        group_by: vec![Dim::Day],
        limit: 10,
        ..UsageQuery::default()
    };
    let rows = store.usage(by_day).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (&rows[0].values[..], rows[0].agg.calls),
        (&[DimValue::Int(20260301)][..], 2)
    );
}

#[tokio::test]
async fn names_are_unique_among_live_keys_only() {
    let db = TestDb::new();
    let store = open(&db, "UTC");
    let key = new_key;
    let first = store.insert_key(key("a", 1), 10).await.unwrap();
    assert!(matches!(
        store.insert_key(key("a", 2), 10).await,
        Err(StoreError::NameTaken(_))
    ));
    assert!(store.delete_key(first.id).await.unwrap());
    assert!(!store.delete_key(first.id).await.unwrap());
    store.insert_key(key("a", 3), 10).await.unwrap();
    assert!(matches!(
        store.insert_key(key("b", 4), 1).await,
        Err(StoreError::KeyLimit(1))
    ));
    let all = store.list_keys().await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all[0].deleted && !all[1].deleted);
}

fn new_key(name: &str, byte: u8) -> NewKey {
    NewKey {
        name: name.into(),
        description: String::new(),
        hash: [byte; 32],
        display: "sk-tc-x…y".into(),
        created_at: jiff::Timestamp::now(),
        limit_period: None,
    }
}

#[tokio::test]
async fn every_key_change_is_seen_once_in_order_by_a_poller() {
    let db = TestDb::new();
    let store = open(&db, "UTC");
    let a = store.insert_key(new_key("a", 1), 10).await.unwrap();
    let b = store.insert_key(new_key("b", 2), 10).await.unwrap();
    let changes = store.keys_changed_since(0).await.unwrap();
    assert_eq!(
        changes.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let seen = changes.last().unwrap().version;
    assert!(store.keys_changed_since(seen).await.unwrap().is_empty());
    let patch = KeyPatch {
        enabled: Some(false),
        ..KeyPatch::default()
    };
    store.update_key(a.id, patch).await.unwrap().unwrap();
    assert!(store.delete_key(b.id).await.unwrap());
    let changes = store.keys_changed_since(seen).await.unwrap();
    let got: Vec<_> = changes
        .iter()
        .map(|k| (k.name.as_str(), k.enabled, k.deleted))
        .collect();
    assert_eq!(got, [("a", false, false), ("b", false, true)]);
    // Recording calls (last_used) is not a change a poller needs to see.
    let mut writer = store.batch_writer(10).unwrap();
    writer
        .write(&[record(jiff::Timestamp::now(), "m", Some(a.id), 200, 2)])
        .await
        .unwrap();
    let last = changes.last().unwrap().version;
    assert!(store.keys_changed_since(last).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_ledger_leases_what_is_left_and_starts_from_recorded_usage() {
    let db = TestDb::new();
    let store = open(&db, "UTC");
    let mut writer = store.batch_writer(10).unwrap();
    writer
        .write(&[record(jiff::Timestamp::now(), "m", Some(7), 200, 30)])
        .await
        .unwrap();
    let global =
        |need, want| store.lease("a".into(), LedgerRow::tokens(GLOBAL_SCOPE), 100, need, want);
    let both = |lease: Lease| (lease.granted, lease.remaining);
    // 30 of 100 already used: 50 asked, 50 granted; then only 20 are left.
    assert_eq!(both(global(10, 50).await.unwrap()), (50, 20));
    assert_eq!(both(global(10, 50).await.unwrap()), (20, 0));
    assert_eq!(global(1, 1).await.unwrap().granted, 0, "nothing left");
    // Unused tokens given back can be leased again.
    give_back(&store, "a", 15, 15).await;
    assert_eq!(
        global(20, 20).await.unwrap().granted,
        0,
        "15 left, 20 needed"
    );
    assert_eq!(both(global(15, 20).await.unwrap()), (15, 0));
    // A key's ledger starts from that key's usage.
    let lease = store
        .lease("a".into(), LedgerRow::tokens(7), 40, 5, 100)
        .await
        .unwrap();
    assert_eq!((lease.granted, lease.remaining), (10, 0));
}

/// The ledger row of key `scope`'s monthly budget for the month (in Shanghai) that `at` is in.
fn month_row(scope: i64, at: &str) -> LedgerRow {
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
    let window = crate::clock::Period::Month.window(at.parse().unwrap(), &tz);
    LedgerRow {
        scope,
        unit: UNIT_TOKENS,
        period: crate::clock::Period::Month.code(),
        start_ms: window.start.as_millisecond(),
        first_day: window.first_day,
        last_day: window.last_day,
    }
}

#[tokio::test]
async fn a_period_row_starts_from_the_usage_recorded_in_its_period_only() {
    let db = TestDb::new();
    let store = open(&db, "Asia/Shanghai");
    let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
    // 15:00 UTC on Jan 31 is 23:00 in Shanghai; 16:30 UTC is 00:30 on Feb 1 there.
    store
        .batch_writer(10)
        .unwrap()
        .write(&[
            record(at("2026-01-31T15:00:00Z"), "m", Some(7), 200, 30),
            record(at("2026-01-31T16:30:00Z"), "m", Some(7), 200, 20),
            record(at("2026-01-31T16:40:00Z"), "m", Some(8), 200, 5),
        ])
        .await
        .unwrap();
    let (jan, feb) = (
        month_row(7, "2026-01-31T15:00:00Z"),
        month_row(7, "2026-01-31T16:30:00Z"),
    );
    assert_ne!(jan, feb);
    let lease = |row| store.lease("a".into(), row, 100, 1, 1000);
    let both = |lease: Lease| (lease.granted, lease.remaining);
    assert_eq!(both(lease(feb).await.unwrap()), (80, 0), "February used 20");
    assert_eq!(both(lease(jan).await.unwrap()), (70, 0), "January used 30");
    let global = month_row(GLOBAL_SCOPE, "2026-01-31T16:30:00Z");
    assert_eq!(
        both(lease(global).await.unwrap()),
        (75, 0),
        "every key's 25"
    );
    let never = LedgerRow::tokens(7);
    assert_eq!(both(lease(never).await.unwrap()), (50, 0), "all time: 50");
    // Leases of each row are noted apart, and given back to their own row.
    store
        .adjust_budgets("a".into(), vec![(jan, -70, -70)])
        .await
        .unwrap();
    assert_eq!(both(lease(jan).await.unwrap()), (70, 0));
    assert_eq!(lease(feb).await.unwrap().granted, 0);
    // Past periods are forgotten; a row asked for again is rebuilt from the recorded usage.
    store.prune_budgets(feb.start_ms).await.unwrap();
    assert_eq!(both(lease(jan).await.unwrap()), (70, 0));
    assert_eq!(
        lease(feb).await.unwrap().granted,
        0,
        "February's row is kept"
    );
}

#[tokio::test]
async fn an_instance_alone_rebuilds_the_ledgers_others_keep_them() {
    let db = TestDb::new();
    let store = open(&db, "UTC");
    assert_eq!(
        store.register_instance("a".into(), 60_000).await.unwrap(),
        0
    );
    store
        .lease("a".into(), LedgerRow::tokens(GLOBAL_SCOPE), 100, 60, 60)
        .await
        .unwrap();
    // Instance a died holding 60 tokens; b starts while a's heartbeat is recent: kept.
    assert_eq!(
        store.register_instance("b".into(), 60_000).await.unwrap(),
        1
    );
    assert_eq!(granted(&store, "b".into(), 100, 1, 100).await, 40);
    // c starts when nobody else is registered: the ledger is rebuilt from recorded usage.
    store.unregister_instance("a".into()).await.unwrap();
    store.unregister_instance("b".into()).await.unwrap();
    assert_eq!(
        store.register_instance("c".into(), 60_000).await.unwrap(),
        0
    );
    assert_eq!(granted(&store, "b".into(), 100, 1, 100).await, 100);
    // An instance not seen within the stale period counts as dead (here: a period reaching
    // into the future, so that c's heartbeat of this very millisecond is stale too).
    assert_eq!(
        store.register_instance("d".into(), -60_000).await.unwrap(),
        0
    );
}

#[tokio::test]
async fn the_slices_of_a_dead_instance_go_back_to_the_ledger() {
    let db = TestDb::new();
    let store = open(&db, "UTC");
    store.register_instance("a".into(), 60_000).await.unwrap();
    store.register_instance("b".into(), 60_000).await.unwrap();
    assert_eq!(granted(&store, "a".into(), 100, 60, 60).await, 60);
    // a used 10 of its 60 and gave 20 back: it holds 30.
    give_back(&store, "a", 20, 30).await;
    store
        .lease("b".into(), LedgerRow::tokens(GLOBAL_SCOPE), 100, 10, 10)
        .await
        .unwrap();
    // Both alive: nothing is given back.
    assert_eq!(store.reap_instances(60_000).await.unwrap(), 0);
    // a stops noting that it is alive (b keeps doing so): its 30 come back, b's 10 stay.
    store.unregister_instance("a".into()).await.unwrap();
    store.heartbeat("b".into()).await.unwrap();
    assert_eq!(store.reap_instances(60_000).await.unwrap(), 30);
    assert_eq!(store.reap_instances(60_000).await.unwrap(), 0, "once");
    // 100 - 10 used by a - 10 held by b = 80 left.
    let lease = store
        .lease("b".into(), LedgerRow::tokens(GLOBAL_SCOPE), 100, 1, 1000)
        .await
        .unwrap();
    assert_eq!(lease.granted, 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_writers_keep_aggregates_exact_and_trim_to_max_logs() {
    let db = TestDb::new();
    let store = open(&db, "UTC");
    let ts = jiff::Timestamp::now();
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let mut writer = store.batch_writer(50).unwrap();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let batch: Vec<_> = (0..8)
                    .map(|i| record(ts, ["m1", "m2"][i % 2], Some(1 + (w as i64 % 2)), 200, 3))
                    .collect();
                writer.write(&batch).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let by_key = store.usage_by_key().await.unwrap();
    assert_eq!(by_key[&1].calls + by_key[&2].calls, 4 * 25 * 8);
    assert_eq!(by_key[&1].tokens.total, 2 * 25 * 8 * 3);
    let models = store.usage_by_model(UsageFilter::default()).await.unwrap();
    assert_eq!(models.iter().map(|m| m.1.calls).sum::<u64>(), 800);
    // One more write trims whatever every writer left below its newest id minus max_logs.
    let mut writer = store.batch_writer(50).unwrap();
    writer
        .write(&[record(ts, "m1", None, 200, 1)])
        .await
        .unwrap();
    let logs = newest(&store, 1000).await;
    assert_eq!(logs.len(), 50, "the newest max_logs rows are kept");
    assert!(logs.windows(2).all(|w| w[0].id > w[1].id));
}

#[test]
fn instances_starting_together_on_an_empty_database_migrate_once() {
    let db = TestDb::new();
    let url = db.url();
    let opened: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| Store::open(&url, jiff::tz::TimeZone::UTC).map(|_| ())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for result in opened {
        result.unwrap();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = Store::open(&url, jiff::tz::TimeZone::UTC).unwrap();
    let keys = runtime.block_on(store.list_keys()).unwrap();
    assert!(keys.is_empty());
}

/// `INSERT` of an aggregate row of `table` with the given dimensions and figures (`calls`
/// successful calls, in latency bucket 5).
fn old_agg_row(table: &str, dims: &str, values: &str, calls: u64, t: [u64; 5]) -> String {
    let [prompt, completion, cache_read, cache_creation, total] = t;
    let latency: Vec<String> = (0..crate::usage::LATENCY_BUCKETS)
        .map(|i| {
            if i == 5 {
                calls.to_string()
            } else {
                "0".into()
            }
        })
        .collect();
    let columns: Vec<String> = (0..crate::usage::LATENCY_BUCKETS)
        .map(|i| format!("l{i}"))
        .collect();
    format!(
        "INSERT INTO {table} ({dims}, calls, successes, failures, prompt_tokens, completion_tokens,
         cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens, duration_ms, {})
         VALUES ({values}, {calls}, {calls}, 0, {prompt}, {completion}, {cache_read},
         {cache_creation}, 0, {total}, {}, {});",
        columns.join(", "),
        40 * calls,
        latency.join(", ")
    )
}

/// Rows as schema 3 stored them: a Claude Code turn on /v1/messages whose prompt_tokens left out
/// 30,000 cache-read and 5,000 cache-write tokens, and an OpenAI call whose prompt_tokens already
/// included its 80 cached tokens; their aggregates, the day's rollup and the budget ledgers
/// (key 1 holding an unused lease of 500).
fn old_rows_sql() -> String {
    let (hour, day) = (492_322, 20_260_301);
    let claude = [4, 12, 30_000, 5_000, 16];
    let gpt = [100, 10, 80, 0, 110];
    let rollup = [104, 22, 30_080, 5_000, 126];
    let mut sql = String::from(
        "INSERT INTO calls (ts, method, endpoint, status, model, key_id, key_name, prompt_tokens,
         completion_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens,
         total_tokens, duration_ms, ttft_ms, stream, estimated, error) VALUES
         (1772359200000, 'POST', '/v1/messages', 200, 'claude-x', 1, 'k', 4, 12, 30000, 5000, 0,
          16, 40, NULL, TRUE, FALSE, NULL),
         (1772359200001, 'POST', '/v1/chat/completions', 200, 'gpt-x', 1, 'k', 100, 10, 80, 0, 0,
          110, 40, NULL, FALSE, FALSE, NULL);
         INSERT INTO budgets (scope, taken) VALUES (0, 126), (1, 626);",
    );
    for (model, t) in [("claude-x", claude), ("gpt-x", gpt)] {
        sql.push_str(&old_agg_row(
            "agg_hour",
            "hour, key_id, model",
            &format!("{hour}, 1, '{model}'"),
            1,
            t,
        ));
        sql.push_str(&old_agg_row(
            "agg_day",
            "day, key_id, model",
            &format!("{day}, 1, '{model}'"),
            1,
            t,
        ));
        sql.push_str(&old_agg_row(
            "agg_total",
            "key_id, model",
            &format!("1, '{model}'"),
            1,
            t,
        ));
    }
    sql.push_str(&old_agg_row(
        "agg_day",
        "day, key_id, model",
        &format!("{day}, -1, ''"),
        2,
        rollup,
    ));
    sql
}

/// Builds a database at schema version 3 holding [`old_rows_sql`].
async fn database_at_version_3(db: &TestDb) {
    match db {
        TestDb::Sqlite(dir) => {
            let conn = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
            for version in 1..=3 {
                conn.execute_batch(&schema::rendered(sql::Dialect::Sqlite, version))
                    .unwrap();
            }
            conn.pragma_update(None, "user_version", 3).unwrap();
            conn.execute_batch(&old_rows_sql()).unwrap();
        }
        TestDb::Postgres(pg) => {
            let (client, connection) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let driver = tokio::spawn(connection);
            let schema = (1..=3).map(|v| schema::rendered(sql::Dialect::Postgres, v));
            for sql in schema.chain([
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL);
                 INSERT INTO schema_migrations VALUES (1, 0), (2, 0), (3, 0);"
                    .to_owned(),
                old_rows_sql(),
            ]) {
                client.batch_execute(&sql).await.unwrap();
            }
            drop(client);
            let _ = driver.await;
        }
    }
}

#[tokio::test]
async fn migration_4_adds_anthropic_cache_tokens_to_old_rows_aggregates_and_ledgers() {
    let db = TestDb::new();
    database_at_version_3(&db).await;
    let store = open(&db, "UTC");
    let rows = newest(&store, 10).await;
    let tokens: Vec<(String, u64, u64, u64)> = rows
        .iter()
        .map(|r| {
            let t = r.call.tokens;
            (r.call.model.clone(), t.prompt, t.cache_read, t.total)
        })
        .collect();
    assert_eq!(
        tokens,
        [
            ("gpt-x".into(), 100, 80, 110),
            ("claude-x".into(), 35_004, 30_000, 35_016)
        ]
    );
    assert!(rows
        .iter()
        .all(|r| r.call.client.is_empty() && r.call.session_id.is_none()));
    let ts: jiff::Timestamp = "2026-03-01T10:00:00Z".parse().unwrap();
    let hours = UsageFilter {
        key_id: Some(1),
        from: Some(ts),
        to: Some(ts + jiff::SignedDuration::from_hours(1)),
    };
    for filter in [UsageFilter::default(), hours] {
        let models = store.usage_by_model(filter).await.unwrap();
        let figures: Vec<(&str, u64, u64, u64)> = models
            .iter()
            .map(|(m, a)| (m.as_str(), a.tokens.prompt, a.tokens.total, a.calls))
            .collect();
        assert_eq!(
            figures,
            [("claude-x", 35_004, 35_016, 1), ("gpt-x", 100, 110, 1)],
            "{filter:?}"
        );
    }
    assert_eq!(store.usage_by_key().await.unwrap()[&1].tokens.total, 35_126);
    for key in [DayScope::All, DayScope::Key(1)] {
        let days = store
            .usage_by_day(key.clone(), 20_260_301, 20_260_301)
            .await
            .unwrap();
        assert_eq!(days.len(), 1);
        assert_eq!((days[0].calls, days[0].tokens), (2, 35_126), "{key:?}");
    }
    // The usage rollups start from the migrated aggregates: key and model known, no user.
    let by = |group_by: Vec<Dim>| UsageQuery {
        group_by,
        limit: 10,
        ..UsageQuery::default()
    };
    let models = store.usage(by(vec![Dim::Model, Dim::Day])).await.unwrap();
    let figures: Vec<_> = models
        .iter()
        .map(|g| (g.values.clone(), g.agg.tokens.total, g.agg.calls))
        .collect();
    let text = |t: &str| DimValue::Text(t.into());
    assert_eq!(
        figures,
        [
            (vec![text("claude-x"), DimValue::Int(20_260_301)], 35_016, 1),
            (vec![text("gpt-x"), DimValue::Int(20_260_301)], 110, 1)
        ]
    );
    // Each dimension of the hourly and daily rollups: the key and model known, the rest blank
    // but the source.
    for (dim, want) in [
        (Dim::Key, DimValue::Int(1)),
        (Dim::Source, text("gateway")),
        (Dim::Client, text("")),
        (Dim::Endpoint, text("")),
    ] {
        for with in [Dim::Day, Dim::Hour] {
            let rows = store.usage(by(vec![dim, with])).await.unwrap();
            let calls: u64 = rows.iter().map(|g| g.agg.calls).sum();
            let tokens: u64 = rows.iter().map(|g| g.agg.tokens.total).sum();
            assert!(rows.iter().all(|g| g.values[0] == want), "{dim:?} {rows:?}");
            assert_eq!((calls, tokens), (2, 35_126), "{dim:?} by {with:?}");
        }
    }
    let users = store.usage(by(vec![Dim::User, Dim::Day])).await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].values[0], text(""));
    assert_eq!((users[0].agg.calls, users[0].agg.tokens.total), (2, 35_126));
    // The ledgers grew by the 35,000 tokens now counted; key 1 keeps its lease of 500.
    let limit: u64 = 1_000_000;
    let global = store
        .lease("a".into(), LedgerRow::tokens(GLOBAL_SCOPE), limit, 1, 1)
        .await
        .unwrap();
    assert_eq!(global.remaining, limit - 35_126 - 1);
    let key = store
        .lease("a".into(), LedgerRow::tokens(1), limit, 1, 1)
        .await
        .unwrap();
    assert_eq!(key.remaining, limit - 35_626 - 1);
    // New calls are written with the new columns beside the migrated ones.
    let mut call = record(ts, "claude-x", Some(1), 200, 10);
    call.client = "claude-cli".into();
    call.session_id = Some("s-1".into());
    store
        .batch_writer(10)
        .unwrap()
        .write(&[call])
        .await
        .unwrap();
    let newest = store
        .logs(LogQuery {
            limit: 1,
            matches: vec![
                CallMatch::Client("claude-cli".into()),
                CallMatch::Session("s-1".into()),
            ],
            ..LogQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].call.session_id.as_deref(), Some("s-1"));
}

/// `group_by=user,day` read back as (user, day, calls).
async fn users_by_day(store: &Store) -> Vec<(String, i64, u64)> {
    let query = UsageQuery {
        group_by: vec![Dim::User, Dim::Day],
        limit: 100,
        ..UsageQuery::default()
    };
    let mut rows: Vec<_> = store
        .usage(query)
        .await
        .unwrap()
        .into_iter()
        .map(|g| match &g.values[..] {
            [DimValue::Text(user), DimValue::Int(day)] => (user.clone(), *day, g.agg.calls),
            other => panic!("{other:?}"),
        })
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn writers_that_never_met_share_each_days_user_cap() {
    let db = TestDb::new();
    let store = open(&db, "UTC");
    let ts: jiff::Timestamp = "2026-03-01T10:00:00Z".parse().unwrap();
    let next_day = ts + jiff::SignedDuration::from_hours(24);
    let by = |user: &str, ts| CallRecord {
        user: Some(user.to_owned()),
        ..record(ts, "m", Some(1), 200, 2)
    };
    let mut first = store.batch_writer(100).unwrap().with_user_cap(3);
    first
        .write(&[by("a", ts), by("b", ts), by("a", ts)])
        .await
        .unwrap();
    // A second writer (another instance, or a restart) knows nothing of what the first admitted:
    // "a" is found admitted (not counted again), "c" takes the last place, "d" and "e" are folded;
    // the next day starts afresh.
    let mut second = store.batch_writer(100).unwrap().with_user_cap(3);
    second
        .write(&[by("d", next_day), by("a", ts), by("c", ts), by("d", ts)])
        .await
        .unwrap();
    second.write(&[by("e", ts), by("c", ts)]).await.unwrap();
    first.write(&[by("d", ts)]).await.unwrap();
    assert_eq!(
        users_by_day(&store).await,
        [
            ("(other)".to_owned(), 20260301, 3),
            ("a".to_owned(), 20260301, 3),
            ("b".to_owned(), 20260301, 1),
            ("c".to_owned(), 20260301, 2),
            ("d".to_owned(), 20260302, 1),
        ]
    );
}

fn ingested(ts: jiff::Timestamp, key: u8, credential: &str, client: Option<u8>) -> CallRecord {
    let mut call = record(ts, "m", None, 200, 10);
    call.source = "cpa".into();
    call.ingest = Some(Box::new(crate::usage::Ingested {
        dedup_key: [key; 32],
        credential: credential.into(),
        credential_label: format!("{credential}-label"),
        client_key_hash: client.map(|c| [c; 32]),
        client_key_display: client.map(|c| format!("key-{c}")).unwrap_or_default(),
    }));
    call
}

#[tokio::test]
async fn an_ingested_record_is_stored_once_across_batches_writers_and_reopening() {
    let db = TestDb::new();
    let ts = jiff::Timestamp::now();
    {
        let store = open(&db, "UTC");
        let mut writer = store.batch_writer(100).unwrap();
        // One batch holding a record twice, and a gateway call (never de-duplicated).
        let logged = writer
            .write(&[
                ingested(ts, 1, "a", Some(9)),
                ingested(ts, 1, "a", Some(9)),
                record(ts, "g", None, 200, 5),
            ])
            .await
            .unwrap();
        assert_eq!(logged.len(), 2);
    }
    let store = open(&db, "UTC");
    let mut first = store.batch_writer(100).unwrap();
    let mut second = store.batch_writer(100).unwrap();
    let batch_a = [ingested(ts, 1, "a", Some(9)), ingested(ts, 2, "b", None)];
    let batch_b = [ingested(ts, 2, "b", None), ingested(ts, 3, "a", Some(9))];
    let a = first.write(&batch_a);
    let b = second.write(&batch_b);
    let (a, b) = if store.kind() == "sqlite" {
        // SQLite's writers take turns on one file.
        (a.await.unwrap(), b.await.unwrap())
    } else {
        let (a, b) = tokio::join!(a, b);
        (a.unwrap(), b.unwrap())
    };
    assert_eq!(a.len() + b.len(), 2, "records 2 and 3 only: {a:?} {b:?}");
    let models = store.usage_by_model(UsageFilter::default()).await.unwrap();
    let m = models.iter().find(|(name, _)| name == "m").unwrap();
    assert_eq!(m.1.calls, 3);
    let day = crate::store::local_day(ts, &jiff::tz::TimeZone::UTC);
    let credentials = store
        .source_usage("credential", None, day, day)
        .await
        .unwrap();
    let rows: Vec<_> = credentials
        .iter()
        .map(|r| {
            (
                r.ident.as_str(),
                r.label.as_str(),
                r.usage.calls,
                r.usage.tokens.total,
            )
        })
        .collect();
    assert_eq!(rows, [("a", "a-label", 2, 20), ("b", "b-label", 1, 10)]);
    let keys = store
        .source_usage("client_key", Some("cpa".into()), day, day)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(
        (keys[0].ident.as_str(), keys[0].usage.calls),
        (&*crate::store::hex(&[9; 32]), 2)
    );
    assert!(store
        .source_usage("credential", Some("other".into()), day, day)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_source_lease_has_one_holder_until_it_expires_or_is_given_up() {
    let db = TestDb::new();
    let store = open(&db, "UTC");
    let take = |holder: &str, ttl: i64| store.take_source_lease("cpa".into(), holder.into(), ttl);
    assert!(take("one", 60_000).await.unwrap());
    assert!(!take("two", 60_000).await.unwrap());
    assert!(take("one", 60_000).await.unwrap(), "the holder renews");
    assert!(
        take("one", -1).await.unwrap(),
        "renewed into the past: expired"
    );
    assert!(
        take("two", 60_000).await.unwrap(),
        "an expired lease is taken over"
    );
    store
        .release_source_lease("cpa".into(), "one".into())
        .await
        .unwrap();
    assert!(
        !take("one", 60_000).await.unwrap(),
        "only the holder gives it up"
    );
    store
        .release_source_lease("cpa".into(), "two".into())
        .await
        .unwrap();
    assert!(take("one", 60_000).await.unwrap());
}
