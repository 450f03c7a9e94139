//! Usage sources: token-console reading the fake CLIProxyAPI (`tools/mock-upstream`'s
//! `fake-cliproxyapi`) in subscribe and pop mode — every figure against an independent sum over
//! the records the fake emitted — restarts of either side, a refused management key, two
//! instances on one database, bad records, and the push endpoint.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::{self, on_postgres, sibling_binary, tempdir, wait_until, Server};

const MANAGEMENT_KEY: &str = "cpa-management-secret";
const INGEST_KEY: &str = "ingest-key-0123456789abcdef";

/// The fake CLIProxyAPI on one port (kept across its restarts).
struct Fake {
    child: Child,
    url: String,
    port: u16,
    http: reqwest::Client,
}

impl Fake {
    fn start() -> Self {
        Self::start_on(0)
    }

    fn start_on(port: u16) -> Self {
        let mut child = Command::new(sibling_binary("fake-cliproxyapi"))
            .args(["--key", MANAGEMENT_KEY, "--port", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fake-cliproxyapi");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        let url = line
            .trim()
            .trim_start_matches("fake-cliproxyapi listening on ")
            .to_owned();
        let port = url.rsplit(':').next().unwrap().parse().unwrap();
        Self {
            child,
            url,
            port,
            http: reqwest::Client::new(),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Emits the records of indexes `from..from + count`, `per_ms` a millisecond at most.
    async fn emit(&self, from: u64, count: u64, per_ms: u64, keys: &[&str]) -> reqwest::Result<()> {
        let keys = keys.join(",");
        self.http
            .post(format!(
                "{}/_fake/emit?from={from}&count={count}&per_ms={per_ms}&keys={keys}",
                self.url
            ))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    async fn raw(&self, lines: &str) {
        self.http
            .post(format!("{}/_fake/raw", self.url))
            .body(lines.to_owned())
            .send()
            .await
            .unwrap();
    }

    async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/_fake/stats", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn delivered(&self) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!("{}/_fake/delivered", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array().cloned().unwrap()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.kill();
    }
}

fn source_yaml(url: &str, mode: &str, key: &str) -> String {
    format!(
        "console:\n  max_logs: 100000\n  ingest_key: {INGEST_KEY}\nsources:\n  - name: cpa\n    kind: cliproxyapi\n    url: {url}\n    management_key: {key}\n    mode: {mode}\n    poll_interval_ms: 50\n"
    )
}

async fn health(server: &Server) -> Value {
    server.data("/api/console/sources").await["sources"][0].clone()
}

async fn wait_state(server: &Server, state: &str) {
    wait_until(&format!("the source {state}"), || async {
        let h = health(server).await;
        if h["state"] == state {
            Ok(())
        } else {
            Err(h.to_string())
        }
    })
    .await
}

/// Figures summed independently over emitted records: tokens from `token_breakdown`'s buckets,
/// or, for the legacy (Claude) records without one, `input + cache read + cache creation`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Sum {
    calls: u64,
    failures: u64,
    prompt: u64,
    completion: u64,
    cache_read: u64,
    total: u64,
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

impl Sum {
    fn add(&mut self, r: &Value) {
        self.calls += 1;
        self.failures += u64::from(r["failed"] == true);
        match r.get("token_breakdown") {
            Some(b) => {
                self.prompt += n(&b["input"]["uncached_tokens"])
                    + n(&b["input"]["cache_read_tokens"])
                    + n(&b["input"]["cache_write_tokens"]);
                self.completion +=
                    n(&b["output"]["non_reasoning_tokens"]) + n(&b["output"]["reasoning_tokens"]);
                self.cache_read += n(&b["input"]["cache_read_tokens"]);
                self.total += n(&b["total_tokens"]);
            }
            None => {
                let t = &r["tokens"];
                assert_eq!(
                    r["provider"], "claude",
                    "the fake's legacy records are Claude's"
                );
                self.prompt += n(&t["input_tokens"])
                    + n(&t["cache_read_tokens"])
                    + n(&t["cache_creation_tokens"]);
                self.completion += n(&t["output_tokens"]);
                self.cache_read += n(&t["cache_read_tokens"]);
                self.total += n(&t["total_tokens"]);
            }
        }
    }
}

struct Expected {
    all: Sum,
    models: BTreeMap<String, Sum>,
    credentials: BTreeMap<String, Sum>,
    client_keys: BTreeMap<String, Sum>,
    by_key: HashMap<String, Sum>,
}

fn expected(records: &[Value]) -> Expected {
    let mut e = Expected {
        all: Sum::default(),
        models: BTreeMap::new(),
        credentials: BTreeMap::new(),
        client_keys: BTreeMap::new(),
        by_key: HashMap::new(),
    };
    for r in records {
        e.all.add(r);
        e.models
            .entry(r["model"].as_str().unwrap().to_owned())
            .or_default()
            .add(r);
        e.credentials
            .entry(r["auth_index"].as_str().unwrap().to_owned())
            .or_default()
            .add(r);
        let key = r["api_key"].as_str().unwrap();
        if !key.is_empty() {
            let hash: String = Sha256::digest(key.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            e.client_keys.entry(hash).or_default().add(r);
            e.by_key.entry(key.to_owned()).or_default().add(r);
        }
    }
    e
}

fn row_sum(row: &Value, calls: &str, total: &str) -> Sum {
    Sum {
        calls: n(&row[calls]),
        failures: n(&row["error_count"]),
        prompt: n(&row["prompt_tokens"]),
        completion: n(&row["completion_tokens"]),
        cache_read: n(&row["cache_read_tokens"]),
        total: n(&row[total]),
    }
}

fn table(rows: &Value) -> BTreeMap<String, Sum> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                row_sum(r, "call_count", "token_count"),
            )
        })
        .collect()
}

/// Waits until the console counts `calls` calls.
async fn wait_stored(server: &Server, calls: u64) -> Value {
    wait_until(&format!("{calls} stored calls"), || async {
        let stats = server.data("/api/console/stats").await;
        match stats["api_call_count"].as_u64().unwrap() {
            c if c == calls => Ok(stats),
            c if c > calls => panic!("{c} calls stored, more than the {calls} emitted: {stats}"),
            _ => Err(stats.to_string()),
        }
    })
    .await
}

/// Every figure of the console against the independent sums over `records`.
async fn assert_figures(server: &Server, records: &[Value], key: (i64, &str)) {
    let e = expected(records);
    let stats = wait_stored(server, e.all.calls).await;
    let got = Sum {
        calls: n(&stats["api_call_count"]),
        failures: n(&stats["error_count"]),
        prompt: n(&stats["prompt_tokens"]),
        completion: n(&stats["completion_tokens"]),
        cache_read: n(&stats["cache_read_tokens"]),
        total: n(&stats["used_tokens"]),
    };
    assert_eq!(got, e.all, "totals");
    // The source filter of the dashboard, the logs and the export.
    let of_source = server.data("/api/console/stats?source=cpa").await;
    assert_eq!(of_source["used_tokens"], stats["used_tokens"]);
    assert_eq!(of_source["models"], stats["models"]);
    let gateway = server.data("/api/console/stats?source=gateway").await;
    assert_eq!(gateway["api_call_count"], 0, "{gateway}");
    let (status, both) = server.get("/api/console/stats?source=cpa&key_id=1").await;
    assert_eq!(status, 400, "{both}");
    let rows = server.logs("limit=5&source=cpa").await;
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r["source"] == "cpa"), "{rows:?}");
    assert!(server.logs("source=gateway").await.is_empty());
    let csv = reqwest::get(format!(
        "{}/api/console/export?format=csv&source=gateway",
        server.url
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert_eq!(csv.lines().count(), 1, "the header only: {csv}");
    let models: BTreeMap<String, (u64, u64)> = stats["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                (n(&m["call_count"]), n(&m["token_count"])),
            )
        })
        .collect();
    let want: BTreeMap<String, (u64, u64)> = e
        .models
        .iter()
        .map(|(m, s)| (m.clone(), (s.calls, s.total)))
        .collect();
    assert_eq!(models, want, "per model");
    let sources = server.data("/api/console/sources?source=cpa").await;
    assert_eq!(
        table(&sources["credentials"]),
        e.credentials,
        "per credential"
    );
    assert_eq!(
        table(&sources["client_keys"]),
        e.client_keys,
        "per client key"
    );
    // The credential of an API key is never shown whole.
    let text = sources.to_string();
    assert!(!text.contains("sk-or-v1-0123456789abcdef"), "{text}");
    assert!(!text.contains("alice@example.com") && text.contains("al***@example.com"));
    // Calls made with a token-console key are attributed to it.
    let (key_id, key_value) = key;
    let of_key = server
        .data(&format!("/api/console/stats?key_id={key_id}"))
        .await;
    let want = e.by_key.get(key_value).copied().unwrap_or_default();
    assert_eq!(
        (n(&of_key["api_call_count"]), n(&of_key["used_tokens"])),
        (want.calls, want.total),
        "attributed to the token-console key"
    );
    assert!(want.calls > 0);
}

/// A record's `(model, alias, reasoning_effort, service_tier)` as stored: an empty or absent
/// string is none.
type Options = (String, Option<String>, Option<String>, Option<String>);

fn options_of(model: &Value, alias: &Value, effort: &Value, tier: &Value) -> Options {
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    (text(model).unwrap(), text(alias), text(effort), text(tier))
}

fn count_options(items: impl Iterator<Item = Options>) -> BTreeMap<Options, u64> {
    let mut counts = BTreeMap::new();
    for o in items {
        *counts.entry(o).or_default() += 1;
    }
    counts
}

/// Each record's alias, reasoning effort and service tier, in the logs API, the JSON export
/// and the CSV export, against the records the fake emitted.
async fn assert_options(server: &Server, records: &[Value]) {
    let want = count_options(records.iter().map(|r| {
        options_of(
            &r["model"],
            &r["alias"],
            &r["reasoning_effort"],
            &r["service_tier"],
        )
    }));
    assert!(
        want.keys().any(|o| o.2.is_some()) && want.keys().any(|o| o.2.is_none()),
        "records with and without an effort: {want:?}"
    );
    let stored = |rows: &[Value]| {
        count_options(rows.iter().map(|r| {
            options_of(
                &r["model"],
                &r["alias"],
                &r["reasoning_effort"],
                &r["service_tier"],
            )
        }))
    };
    let export: Value =
        serde_json::from_str(&server.text("/api/console/export?source=cpa").await).unwrap();
    let rows = export["logs"].as_array().unwrap();
    assert_eq!(stored(rows), want, "the JSON export");
    let page = server.logs("limit=1000&source=cpa").await;
    let ids: std::collections::HashSet<i64> =
        page.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    let same: Vec<Value> = rows
        .iter()
        .filter(|r| ids.contains(&r["id"].as_i64().unwrap()))
        .cloned()
        .collect();
    assert_eq!(stored(&page), stored(&same), "the logs API, as exported");
    let csv = server
        .text("/api/console/export?format=csv&source=cpa")
        .await;
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let head = reader.headers().unwrap().clone();
    let col = |name: &str| head.iter().position(|h| h == name).unwrap();
    let (m, a, e, t) = (
        col("model"),
        col("alias"),
        col("reasoning_effort"),
        col("service_tier"),
    );
    let cells = reader.records().map(|r| {
        let r = r.unwrap();
        let v = |i: usize| Value::from(r.get(i).unwrap());
        options_of(&v(m), &v(a), &v(e), &v(t))
    });
    assert_eq!(count_options(cells), want, "the CSV export");
}

/// The dashboard's trend of the source: every record, and nothing under `gateway`.
async fn assert_trend(server: &Server, records: &[Value]) {
    let e = expected(records);
    let sums = |trend: &Value| {
        let total = |field: &str| -> u64 { trend[field].as_array().unwrap().iter().map(n).sum() };
        (total("callData"), total("tokenData"))
    };
    let of_source = server
        .data("/api/console/usage-trend?days=7&source=cpa")
        .await;
    assert_eq!(sums(&of_source), (e.all.calls, e.all.total), "{of_source}");
    let all = server.data("/api/console/usage-trend?days=7").await;
    assert_eq!(sums(&all), sums(&of_source));
    let gateway = server
        .data("/api/console/usage-trend?days=7&source=gateway")
        .await;
    assert_eq!(sums(&gateway), (0, 0), "{gateway}");
    let (status, both) = server
        .get("/api/console/usage-trend?source=cpa&key_id=1")
        .await;
    assert_eq!(status, 400, "{both}");
}

/// 10,000 records across families, attributed, in `mode`.
async fn ten_thousand_records(mode: &str) {
    let fake = Fake::start();
    let dir = tempdir();
    let server = Server::start(dir.path(), &source_yaml(&fake.url, mode, MANAGEMENT_KEY));
    wait_state(
        &server,
        if mode == "pop" {
            "polling"
        } else {
            "subscribed"
        },
    )
    .await;
    let key = server.create_key("cpa-client").await;
    fake.emit(0, 10_000, 2, &[&key.1, "cpa-client-beta", ""])
        .await
        .unwrap();
    let records = fake.delivered().await;
    wait_until("every record delivered", || async {
        let s = fake.stats().await;
        (s["delivered"] == 10_000).then_some(()).ok_or(s)
    })
    .await;
    let records = if records.len() == 10_000 {
        records
    } else {
        fake.delivered().await
    };
    let s = fake.stats().await;
    assert_eq!(s["lost_to_slow_subscribers"], 0, "{s}");
    if mode == "subscribe" {
        assert!(
            n(&s["published"]) > 9_000,
            "mostly through the subscription: {s}"
        );
    } else {
        assert_eq!(s["published"], 0, "{s}");
    }
    assert_figures(&server, &records, (key.0, &key.1)).await;
    assert_options(&server, &records).await;
    assert_trend(&server, &records).await;
    let h = health(&server).await;
    assert_eq!(h["records_ingested"], 10_000, "{h}");
    assert_eq!(h["bad_records"], 0, "{h}");
    assert!(h["last_error"].is_null(), "{h}");
    let healthz = server.get("/healthz").await.1;
    assert_eq!(healthz["sources"][0]["name"], "cpa", "{healthz}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_mode_counts_ten_thousand_records_as_an_independent_sum() {
    ten_thousand_records("subscribe").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop_mode_counts_ten_thousand_records_as_an_independent_sum() {
    ten_thousand_records("pop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_of_token_console_and_of_the_fake_count_nothing_twice() {
    let mut fake = Fake::start();
    let dir = tempdir();
    let yaml = source_yaml(&fake.url, "subscribe", MANAGEMENT_KEY);
    let mut server = Server::start(dir.path(), &yaml);
    wait_state(&server, "subscribed").await;
    fake.emit(0, 2_000, 2, &["k"]).await.unwrap();
    wait_stored(&server, 2_000).await;

    // token-console killed while records flow: what the fake emits meanwhile is queued (no
    // subscriber) and popped by the restarted instance.
    let emitting = {
        let url = fake.url.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!(
                    "{url}/_fake/emit?from=2000&count=2000&per_ms=1&keys=k"
                ))
                .send()
                .await
                .map(|r| r.status())
        })
    };
    wait_until("half the second batch emitted", || async {
        let s = fake.stats().await;
        (n(&s["emitted"]) >= 2_500).then_some(()).ok_or(s)
    })
    .await;
    server.kill();
    let mut server = Server::start(dir.path(), &yaml);
    assert!(emitting.await.unwrap().unwrap().is_success());
    wait_until("the queue popped by the new instance", || async {
        let s = fake.stats().await;
        (s["in_queue"] == 0 && s["subscribers"] == 1)
            .then_some(())
            .ok_or(s)
    })
    .await;
    let delivered = fake.delivered().await.len() as u64;
    assert_eq!(delivered, 4_000);
    // What the killed instance had read but not committed is lost (the README's statement);
    // nothing is counted twice.
    let stored_after_kill = wait_until("the store settles", || async {
        let a = n(&server.data("/api/console/stats").await["api_call_count"]);
        let h = health(&server).await;
        (h["state"] == "subscribed").then_some(a).ok_or(h)
    })
    .await;
    assert!(
        stored_after_kill <= delivered,
        "{stored_after_kill} > {delivered}"
    );

    // The fake restarted on its port while emitting: its queue is gone (CLIProxyAPI's loss),
    // token-console reconnects by itself, and the records after that are all stored once.
    let emitting = {
        let url = fake.url.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!(
                    "{url}/_fake/emit?from=4000&count=4000&per_ms=1&keys=k"
                ))
                .send()
                .await
                .map(|r| r.status())
        })
    };
    wait_until("part of the third batch emitted", || async {
        let s = fake.stats().await;
        (n(&s["emitted"]) >= 4_500).then_some(()).ok_or(s)
    })
    .await;
    fake.kill();
    let _ = emitting.await;
    let port = fake.port;
    let before = n(&server.data("/api/console/stats").await["api_call_count"]);
    let fake = Fake::start_on(port);
    wait_until("token-console subscribed to the new fake", || async {
        let s = fake.stats().await;
        (s["subscribers"] == 1).then_some(()).ok_or(s)
    })
    .await;
    // The old session handed what it read to the recorder before the new one subscribed: once
    // nothing is queued, every record of the old fake is stored.
    wait_until("the recorder's queue drained", || async {
        let h = server.healthz().await;
        (h["recorder"]["queued"] == 0).then_some(()).ok_or(h)
    })
    .await;
    let stored = n(&server.data("/api/console/stats").await["api_call_count"]);
    assert!(stored <= 8_000 && stored >= before);
    fake.emit(8_000, 1_000, 4, &["k"]).await.unwrap();
    wait_stored(&server, stored + 1_000).await;
    let h = health(&server).await;
    assert!(h["last_error"].is_null(), "{h}");
    server.terminate();
}

#[tokio::test]
async fn a_wrong_management_key_is_reported_after_one_refusal_and_never_retried_into_a_ban() {
    let fake = Fake::start();
    let dir = tempdir();
    let yaml = format!(
        "sources:\n  - {{name: sub, kind: cliproxyapi, url: \"{0}\", management_key: wrong-key}}\n  - {{name: pop, kind: cliproxyapi, url: \"{0}\", management_key: wrong-key, mode: pop, poll_interval_ms: 10}}\n",
        fake.url
    );
    let server = Server::start(dir.path(), &yaml);
    let sources = wait_until("both sources stopped", || async {
        let s = server.data("/api/console/sources").await["sources"].clone();
        let stopped = s
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["state"] == "stopped");
        stopped.then(|| s.clone()).ok_or(s)
    })
    .await;
    for h in sources.as_array().unwrap() {
        let error = h["last_error"].as_str().unwrap();
        assert!(error.contains("management key rejected"), "{h}");
        assert!(error.contains("invalid management key"), "{h}");
        assert_eq!(h["auth_failures"], 1, "{h}");
        assert_eq!(h["connected"], false, "{h}");
    }
    let healthz = server.get("/healthz").await.1;
    assert!(healthz["sources"][1]["last_error"]
        .as_str()
        .unwrap()
        .contains("rejected"));
    // Records keep arriving at the fake; the sources do not try again.
    fake.emit(0, 10, 0, &[]).await.unwrap();
    server.data("/api/console/stats").await;
    let s = fake.stats().await;
    assert_eq!(s["failed_logins"], 2, "one refusal per source: {s}");
    assert!(n(&s["failures_toward_ban"]) < n(&s["ban_limit"]), "{s}");
    assert_eq!(s["banned"], false, "{s}");
    assert_eq!(s["in_queue"], 10, "{s}");
}

#[tokio::test]
async fn bad_records_are_skipped_and_shown_and_management_off_is_named() {
    let fake = Fake::start();
    let dir = tempdir();
    let server = Server::start(dir.path(), &source_yaml(&fake.url, "pop", MANAGEMENT_KEY));
    wait_state(&server, "polling").await;
    fake.raw(
        "not json at all\n{\"timestamp\":\"2026-08-22T10:00:00Z\",\"model\":\"m\"}\n{\"request_id\":\"ab\",\"timestamp\":\"2026-08-22T10:00:00Z\",\"model\":\"m\",\"tokens\":{\"input_tokens\":-5}}\n",
    )
    .await;
    fake.emit(0, 8, 0, &[]).await.unwrap();
    let records = {
        wait_stored(&server, 8).await;
        fake.delivered().await
    };
    let h = health(&server).await;
    assert_eq!(h["bad_records"], 3, "{h}");
    assert!(h["last_bad_record"]
        .as_str()
        .unwrap()
        .contains("tokens.input_tokens is negative"));
    assert_eq!(records.len(), 11);
    // Management turned off: 404, named; turned on again: ingestion resumes by itself.
    reqwest::Client::new()
        .post(format!("{}/_fake/management?enabled=false", fake.url))
        .send()
        .await
        .unwrap();
    wait_until("health names the 404", || async {
        let h = health(&server).await;
        let e = h["last_error"].as_str().unwrap_or_default().to_owned();
        e.contains("404").then_some(()).ok_or(h)
    })
    .await;
    reqwest::Client::new()
        .post(format!("{}/_fake/management?enabled=true", fake.url))
        .send()
        .await
        .unwrap();
    fake.emit(8, 8, 0, &[]).await.unwrap();
    wait_stored(&server, 16).await;
    let h = health(&server).await;
    assert!(h["last_error"].is_null(), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_database_store_every_record_once() {
    if !on_postgres() {
        eprintln!("two instances share a database on PostgreSQL only (TC_TEST_DATABASE=postgres)");
        return;
    }
    let fake = Fake::start();
    let dir = tempdir();
    let yaml = source_yaml(&fake.url, "subscribe", MANAGEMENT_KEY);
    let mut servers = [
        Server::start_on(dir.path(), &dir.path().join("a.yaml"), &yaml, &[]),
        Server::start_on(dir.path(), &dir.path().join("b.yaml"), &yaml, &[]),
    ];
    let consumer = wait_until("one consumer, one standby", || async {
        let (ha, hb) = (health(&servers[0]).await, health(&servers[1]).await);
        match (ha["state"].as_str(), hb["state"].as_str()) {
            (Some("subscribed"), Some("standby")) => Ok(0),
            (Some("standby"), Some("subscribed")) => Ok(1),
            _ => Err(format!("{ha} {hb}")),
        }
    })
    .await;
    fake.emit(0, 5_000, 2, &["k1", "k2"]).await.unwrap();
    assert_eq!(fake.stats().await["subscribers"], 1);
    assert_eq!(fake.delivered().await.len(), 5_000);
    wait_stored(&servers[1 - consumer], 5_000).await;
    // The consumer dies; the standby takes over once the lease runs out (10 s) and pops what
    // was queued meanwhile.
    servers[consumer].kill();
    let survivor = &servers[1 - consumer];
    fake.emit(5_000, 5_000, 2, &["k1", "k2"]).await.unwrap();
    wait_state(survivor, "subscribed").await;
    wait_until("the queue emptied by the new consumer", || async {
        let s = fake.stats().await;
        (s["in_queue"] == 0).then_some(()).ok_or(s)
    })
    .await;
    let records = fake.delivered().await;
    assert_eq!(records.len(), 10_000);
    assert_figures_without_key(survivor, &records).await;
}

async fn assert_figures_without_key(server: &Server, records: &[Value]) {
    let e = expected(records);
    let stats = wait_stored(server, e.all.calls).await;
    assert_eq!(n(&stats["used_tokens"]), e.all.total);
    let sources = server.data("/api/console/sources").await;
    assert_eq!(table(&sources["credentials"]), e.credentials);
}

#[tokio::test]
async fn the_push_endpoint_needs_its_key_refuses_bad_fields_and_is_idempotent() {
    let dir = tempdir();
    let server = Server::start(
        dir.path(),
        &format!("console:\n  ingest_key: {INGEST_KEY}\n"),
    );
    let http = reqwest::Client::new();
    let url = format!("{}/api/console/ingest", server.url);
    let now = jiff::Timestamp::now().to_string();
    let record = json!({"id": "job-1", "ts": now, "model": "gpt-4o",
        "endpoint": "POST /v1/chat/completions", "latency_ms": 120,
        "tokens": {"input": 100, "output": 20, "cache_read": 60, "reasoning": 5},
        "credential": "team-a@example.com", "client_key": "client-secret-123456"});
    let push = |body: Value, key: Option<&'static str>| {
        let mut r = http.post(&url).json(&body);
        if let Some(key) = key {
            r = r.bearer_auth(key);
        }
        async move {
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = push(json!([record]), None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = push(json!([record]), Some("not-the-ingest-key")).await;
    assert_eq!(status, 401, "{body}");
    for _ in 0..3 {
        let (status, body) = push(json!([record]), Some(INGEST_KEY)).await;
        assert_eq!(
            (status, body["data"]["accepted"].clone()),
            (200, json!(1)),
            "{body}"
        );
    }
    let stats = server.data("/api/console/stats").await;
    assert_eq!(
        stats["api_call_count"], 1,
        "a retried push counts once: {stats}"
    );
    assert_eq!(stats["prompt_tokens"], 100);
    assert_eq!(stats["cache_read_tokens"], 60);
    let cases = [
        (json!({"id": "x"}), "JSON array"),
        (
            json!([{"id": "x", "ts": "2026-08-22T10:00:00Z", "model": "m"}]),
            "records[0]: missing field `tokens`",
        ),
        (
            json!([record, {"id": "y", "ts": "later", "model": "m", "tokens": {"input": 1, "output": 1}}]),
            "records[1].ts",
        ),
        (
            json!([{"id": "y", "ts": "2026-08-22T10:00:00Z", "model": "m", "tokens": {"input": 1, "output": "1"}}]),
            "records[0].tokens.output",
        ),
        (
            json!([{"request_id": "ab12cd34", "timestamp": "2026-08-22T10:00:00Z", "model": "m", "tokens": {"input_tokens": -1}}]),
            "records[0].tokens.input_tokens is negative",
        ),
    ];
    for (body, want) in cases {
        let (status, answer) = push(body.clone(), Some(INGEST_KEY)).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["msg"].as_str().unwrap().contains(want),
            "{want}: {answer}"
        );
    }
    assert_eq!(
        server.data("/api/console/stats").await["api_call_count"],
        1,
        "a refused push stores nothing"
    );
    // CLIProxyAPI's shape is accepted too, and stored once.
    let cpa = json!({"timestamp": now, "latency_ms": 10, "source": "bob@example.com",
        "auth_index": "00112233aabbccdd", "tokens": {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10},
        "failed": false, "provider": "codex", "model": "gpt-5", "endpoint": "POST /v1/responses",
        "api_key": "", "request_id": "ab12cd34"});
    for _ in 0..2 {
        let (status, body) = push(json!([cpa]), Some(INGEST_KEY)).await;
        assert_eq!(status, 200, "{body}");
    }
    let sources = server.data("/api/console/sources?source=push").await;
    let credentials = sources["credentials"].as_array().unwrap();
    assert_eq!(credentials.len(), 2, "{sources}");
    assert!(sources.to_string().contains("bo***@example.com"));
    assert!(!sources.to_string().contains("client-secret-123456"));
    assert_eq!(server.data("/api/console/stats").await["api_call_count"], 2);
}

#[tokio::test]
async fn ingested_usage_counts_against_the_budget_of_its_key() {
    let mock = common::Mock::start();
    let (_dir, server) =
        common::start_behind(&mock, &format!("console:\n  ingest_key: {INGEST_KEY}\n"));
    let (id, key) = server.create_limited_key("cpa-user", 10_000).await;
    let chat = json!({"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    let first = common::call(&server.url, "/v1/chat/completions", &key, &chat).await;
    assert_eq!(first.status().as_u16(), 200);
    // Usage reported after the fact by a source, made with the same key: it cannot be refused,
    // but it uses up the budget.
    let pushed = json!([{"id": "r1", "ts": jiff::Timestamp::now().to_string(), "model": "claude-sonnet-4-5",
        "tokens": {"input": 10_000, "output": 2_000}, "client_key": key}]);
    let r = reqwest::Client::new()
        .post(format!("{}/api/console/ingest", server.url))
        .bearer_auth(INGEST_KEY)
        .json(&pushed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let stats = server
        .data(&format!("/api/console/stats?key_id={id}"))
        .await;
    assert_eq!(stats["api_call_count"], 2, "attributed to the key: {stats}");
    // On one instance the budget knows at once; instances sharing PostgreSQL apply changes to
    // the shared ledger at their next sync, so a few more calls may pass first — not the
    // hundreds that 10,000 tokens of ~30-token calls would take without the charge.
    let answered = std::sync::atomic::AtomicU32::new(0);
    let body = wait_until("the key refused for its budget", || async {
        let r = common::call(&server.url, "/v1/chat/completions", &key, &chat).await;
        match r.status().as_u16() {
            200 => {
                let n = answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                assert!(n < 50, "{n} calls answered after the budget was used up");
                Err("answered".to_owned())
            }
            429 => Ok(r.json::<Value>().await.unwrap()),
            other => panic!("unexpected {other}"),
        }
    })
    .await;
    assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
    if !on_postgres() {
        assert_eq!(
            answered.into_inner(),
            0,
            "one instance's budget is charged at once"
        );
    }
}

/// A push client cannot grow the sources without bound: names past `console.push_source_cap`
/// are refused with a 400 that names the cap and the names taken; names admitted before, and
/// configured sources, stay open — across a restart.
#[tokio::test]
async fn push_source_names_are_bounded_by_the_cap() {
    let dir = tempdir();
    // A configured source, unreachable: its name is admitted whatever the cap.
    let yaml = format!(
        "console:\n  ingest_key: {INGEST_KEY}\n  push_source_cap: 2\nsources:\n  - {{name: cpa, kind: cliproxyapi, url: 'http://127.0.0.1:9', management_key: k, mode: pop, poll_interval_ms: 30000}}\n"
    );
    let mut server = Server::start(dir.path(), &yaml);
    let mut id = 0;
    let mut push = |server: &Server, source: &str| {
        id += 1;
        let body = json!([{"id": format!("r{id}"), "ts": jiff::Timestamp::now().to_string(),
            "model": "m", "tokens": {"input": 1, "output": 1}}]);
        let request = reqwest::Client::new()
            .post(format!("{}/api/console/ingest?source={source}", server.url))
            .bearer_auth(INGEST_KEY)
            .json(&body);
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(push(&server, "tool-a").await.0, 200);
    assert_eq!(push(&server, "tool-b").await.0, 200);
    let (status, body) = push(&server, "tool-c").await;
    assert_eq!(status, 400, "{body}");
    let msg = body["msg"].as_str().unwrap();
    assert!(
        msg.contains("console.push_source_cap") && msg.contains("at most 2"),
        "{msg}"
    );
    assert!(msg.contains("tool-a, tool-b"), "{msg}");
    assert_eq!(push(&server, "tool-a").await.0, 200);
    assert_eq!(push(&server, "cpa").await.0, 200, "a configured source");
    let of_c = server.data("/api/console/stats?source=tool-c").await;
    assert_eq!(of_c["api_call_count"], 0, "a refused push stores nothing");
    server.terminate();
    let server = Server::start(dir.path(), &yaml);
    assert_eq!(push(&server, "tool-d").await.0, 400, "the names are stored");
    assert_eq!(push(&server, "tool-b").await.0, 200);
    assert_eq!(server.data("/api/console/stats").await["api_call_count"], 5);
}
