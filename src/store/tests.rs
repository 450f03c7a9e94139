//! Store tests on a real SQLite file: migrations, batches with aggregates, trimming, time zones.

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
        ttft_ms: None,
        stream: false,
        estimated: false,
        error: None,
    }
}

fn open(dir: &std::path::Path, zone: &str) -> Store {
    let url = DatabaseUrl::Sqlite(dir.join("t.db"));
    Store::open(&url, jiff::tz::TimeZone::get(zone).unwrap()).unwrap()
}

#[tokio::test]
async fn reopening_keeps_everything_and_migrations_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let ts: jiff::Timestamp = "2026-03-01T10:00:00Z".parse().unwrap();
    {
        let store = open(dir.path(), "UTC");
        let mut writer = store.batch_writer(10).unwrap();
        let logged = writer
            .write(&[
                record(ts, "a", None, 200, 10),
                record(ts, "b", None, 500, 4),
            ])
            .unwrap();
        assert_eq!(logged.iter().map(|l| l.id).collect::<Vec<_>>(), [1, 2]);
    }
    let store = open(dir.path(), "UTC");
    let models = store.usage_by_model(UsageFilter::default()).await.unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0].1.tokens.total, 10);
    assert_eq!(models[1].1.failures, 1);
}

#[tokio::test]
async fn trimming_keeps_aggregates() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "UTC");
    let mut writer = store.batch_writer(3).unwrap();
    let ts = jiff::Timestamp::now();
    for _ in 0..4 {
        writer
            .write(&[
                record(ts, "m", Some(1), 200, 2),
                record(ts, "m", Some(1), 200, 2),
            ])
            .unwrap();
    }
    let logs = store
        .logs(LogQuery {
            limit: 100,
            ..LogQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(logs.iter().map(|l| l.id).collect::<Vec<_>>(), [8, 7, 6]);
    let by_key = store.usage_by_key().await.unwrap();
    assert_eq!(by_key[&1].calls, 8);
    assert_eq!(by_key[&1].tokens.total, 16);
}

#[tokio::test]
async fn days_follow_the_zone_and_are_rebuilt_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    // 15:30 UTC on 1 March is 23:30 in Shanghai; 16:30 UTC is 00:30 on 2 March there.
    let before: jiff::Timestamp = "2026-03-01T15:30:00Z".parse().unwrap();
    let after: jiff::Timestamp = "2026-03-01T16:30:00Z".parse().unwrap();
    {
        let store = open(dir.path(), "Asia/Shanghai");
        let mut writer = store.batch_writer(100).unwrap();
        writer
            .write(&[
                record(before, "m", None, 200, 3),
                record(after, "m", None, 200, 5),
            ])
            .unwrap();
        let days = store.usage_by_day(None, 20260301, 20260302).await.unwrap();
        let got: Vec<_> = days.iter().map(|d| (d.day, d.calls, d.tokens)).collect();
        assert_eq!(got, [(20260301, 1, 3), (20260302, 1, 5)]);
    }
    let store = open(dir.path(), "UTC");
    let days = store.usage_by_day(None, 20260301, 20260302).await.unwrap();
    let got: Vec<_> = days.iter().map(|d| (d.day, d.calls, d.tokens)).collect();
    assert_eq!(got, [(20260301, 2, 8)], "rebucketed in UTC");
}

#[tokio::test]
async fn names_are_unique_among_live_keys_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "UTC");
    let key = |name: &str, byte: u8| NewKey {
        name: name.into(),
        description: String::new(),
        hash: [byte; 32],
        display: "sk-tc-x…y".into(),
        created_at: jiff::Timestamp::now(),
    };
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
