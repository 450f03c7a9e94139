//! Shared harness of the end-to-end tests: the real `token-console` binary and the mock upstream,
//! each on port 0, with a fresh database: a SQLite file in a temporary directory, or with
//! `TC_TEST_DATABASE=postgres` a scratch PostgreSQL database per directory (shared by the servers
//! started on that directory, dropped with the last of them).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod scratch;
use scratch::ScratchDb;
pub mod tempdir;
pub use tempdir::{tempdir, TempDir};

/// Whether the tests run on PostgreSQL (`TC_TEST_DATABASE=postgres`).
pub fn on_postgres() -> bool {
    scratch::wanted()
}

/// The Redis that servers share RPM limits through: `TC_TEST_REDIS_URL` on PostgreSQL runs (SQLite
/// runs keep the limits in each process).
pub fn redis_url() -> Option<String> {
    std::env::var("TC_TEST_REDIS_URL")
        .ok()
        .filter(|url| on_postgres() && !url.is_empty())
}

/// The scratch database of a test directory, created by the first server started on it.
fn database_of(dir: &Path) -> Arc<ScratchDb> {
    static DATABASES: Mutex<Vec<(PathBuf, Weak<ScratchDb>)>> = Mutex::new(Vec::new());
    let mut databases = DATABASES.lock().unwrap_or_else(|e| e.into_inner());
    databases.retain(|(_, db)| db.strong_count() > 0);
    if let Some(db) = databases
        .iter()
        .find(|(d, _)| d == dir)
        .and_then(|(_, db)| db.upgrade())
    {
        return db;
    }
    let db = Arc::new(ScratchDb::create().expect("create a scratch PostgreSQL database"));
    databases.push((dir.to_owned(), Arc::downgrade(&db)));
    db
}

/// The `database_url` a server on `dir` uses, and the scratch database to keep alive with it.
pub fn database_url(dir: &Path) -> (String, Option<Arc<ScratchDb>>) {
    if on_postgres() {
        let db = database_of(dir);
        (db.url.clone(), Some(db))
    } else {
        (format!("sqlite://{}", dir.join("tc.db").display()), None)
    }
}

/// Runs one SQL statement on a database (PostgreSQL URL) and returns the first column of each row
/// as text.
pub async fn postgres_query(url: &str, sql: &str) -> Vec<String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let rows = client.simple_query(sql).await.unwrap();
    drop(client);
    let _ = driver.await;
    rows.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

/// Checks the stored data of the server's directory: SQLite's `integrity_check`, or on PostgreSQL
/// that the hourly, daily (per key and the rollup) and all-time aggregates agree. Returns "ok" or what is wrong.
pub async fn integrity(dir: &Path) -> String {
    if on_postgres() {
        let (url, _db) = database_url(dir);
        let sums = postgres_query(
            &url,
            "SELECT (SELECT COALESCE(SUM(calls), 0) FROM agg_hour) || ',' ||
                    (SELECT COALESCE(SUM(calls), 0) FROM agg_day WHERE key_id <> -1) || ',' ||
                    (SELECT COALESCE(SUM(calls), 0) FROM agg_day WHERE key_id = -1) || ',' ||
                    (SELECT COALESCE(SUM(calls), 0) FROM agg_total)",
        )
        .await;
        let parts: Vec<&str> = sums[0].split(',').collect();
        return if parts.iter().all(|p| *p == parts[0]) {
            "ok".to_owned()
        } else {
            format!(
                "aggregates disagree (hour, day, day rollup, total calls): {}",
                sums[0]
            )
        };
    }
    let conn = rusqlite::Connection::open(dir.join("tc.db")).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
        .unwrap()
}

/// Makes the server's database refuse writes until the guard is dropped: SQLite's exclusive
/// lock, or on PostgreSQL an exclusive lock on the `calls` table held by another session.
pub struct DatabaseLock {
    _sqlite: Option<rusqlite::Connection>,
    _postgres: Option<(tokio_postgres::Client, tokio::task::JoinHandle<()>)>,
}

impl DatabaseLock {
    /// Takes the lock on the database of `dir`.
    pub async fn take(dir: &Path) -> Self {
        if on_postgres() {
            let (url, _db) = database_url(dir);
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            client
                .batch_execute("BEGIN; LOCK TABLE calls IN ACCESS EXCLUSIVE MODE")
                .await
                .unwrap();
            return Self {
                _sqlite: None,
                _postgres: Some((client, driver)),
            };
        }
        let lock = rusqlite::Connection::open(dir.join("tc.db")).unwrap();
        lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
        Self {
            _sqlite: Some(lock),
            _postgres: None,
        }
    }

    /// Releases the lock.
    pub async fn release(mut self) {
        if let Some(lock) = self._sqlite.take() {
            lock.execute_batch("ROLLBACK").unwrap();
        }
        if let Some((client, driver)) = self._postgres.take() {
            client.batch_execute("ROLLBACK").await.unwrap();
            drop(client);
            let _ = driver.await;
        }
    }
}

/// The longest a test waits for a condition before failing (a guard, not a synchronisation).
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How long [`wait_until`] lets pass between two looks.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// What a [`wait_until`] check reports: `true`, `Some(value)` or `Ok(value)` once the awaited
/// condition holds; `false`, `None` or `Err(what it saw instead)` while it does not.
pub trait Awaited {
    /// What the wait returns once the condition holds.
    type Value;
    /// The value, or what was seen instead (for the failure message).
    fn outcome(self) -> Result<Self::Value, String>;
}

impl Awaited for bool {
    type Value = ();
    fn outcome(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    }
}

impl<T> Awaited for Option<T> {
    type Value = T;
    fn outcome(self) -> Result<T, String> {
        self.ok_or_else(|| "not yet".to_owned())
    }
}

impl<T, E: std::fmt::Display> Awaited for Result<T, E> {
    type Value = T;
    fn outcome(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

/// The one way the tests wait: runs `check` until the condition holds and returns its value —
/// at once when it already holds, else within [`POLL_EVERY`] of it coming true. Fails after
/// [`DEADLINE`] naming `what` was awaited and what `check` saw last.
pub async fn wait_until<W, F, Fut>(what: &str, mut check: F) -> W::Value
where
    W: Awaited,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = W>,
{
    let start = Instant::now();
    loop {
        let last = match check().await.outcome() {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            start.elapsed() < DEADLINE,
            "waited {DEADLINE:?} for {what}; last seen: {last}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Path of a binary built next to `token-console` (the workspace shares one target dir).
pub fn sibling_binary(name: &str) -> PathBuf {
    let main = PathBuf::from(env!("CARGO_BIN_EXE_token-console"));
    let path = main.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Reads the child's stdout until a line starting with `prefix` and returns it; the rest of the
/// output keeps draining in the background so the child never blocks on a full pipe.
fn read_until(child: &mut Child, prefix: &str) -> String {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let prefix = prefix.to_owned();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent && line.starts_with(&prefix) {
                let _ = tx.send(line);
                sent = true;
            }
        }
    });
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("the process did not print its ready line within {DEADLINE:?}"))
}

/// The mock upstream.
pub struct Mock {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

/// Key the mock requires: proves the gateway swaps the client's key for the provider's.
pub const PROVIDER_KEY: &str = "provider-secret-key-123";

impl Mock {
    /// Starts the mock, requiring [`PROVIDER_KEY`].
    pub fn start() -> Self {
        let mut child = Command::new(sibling_binary("mock-upstream"))
            .args(["--port", "0", "--require-key", PROVIDER_KEY])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mock-upstream");
        let line = read_until(&mut child, "mock-upstream listening on ");
        let url = line
            .trim_start_matches("mock-upstream listening on ")
            .trim()
            .to_owned();
        Self { child, url }
    }

    /// `/_mock/stats`.
    pub async fn stats(&self) -> Value {
        reqwest::get(format!("{}/_mock/stats", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `/_mock/requests`.
    pub async fn requests(&self) -> Vec<Value> {
        let v: Value = reqwest::get(format!("{}/_mock/requests", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Providers section pointing both kinds at the mock.
pub fn providers_yaml(mock_url: &str) -> String {
    format!(
        "providers:\n  - {{ name: mock-openai, kind: openai, base_url: \"{mock_url}/v1\", api_key: \"{PROVIDER_KEY}\", models: [\"*\"] }}\n  - {{ name: mock-anthropic, kind: anthropic, base_url: \"{mock_url}\", api_key: \"{PROVIDER_KEY}\", models: [\"*\"] }}\n"
    )
}

/// A running token-console.
pub struct Server {
    child: Option<Child>,
    /// Gateway base URL.
    pub url: String,
    /// Console page URL (or "off").
    pub console: String,
    /// The directory holding config, database and logs.
    pub dir: PathBuf,
    http: reqwest::Client,
    /// The scratch PostgreSQL database, kept while a server of this directory lives.
    _database: Option<Arc<ScratchDb>>,
    /// File name of the service log in `dir`.
    log_name: String,
}

impl Server {
    /// Writes `yaml` (with `port: 0` and the directory's database added) and starts the binary.
    pub fn start(dir: &Path, yaml: &str) -> Self {
        Self::start_with(dir, yaml, &[])
    }

    /// As [`Server::start`], with extra environment variables.
    pub fn start_with(dir: &Path, yaml: &str, env: &[(&str, &str)]) -> Self {
        Self::start_on(dir, &dir.join("config.yaml"), yaml, env)
    }

    /// As [`Server::start_with`], writing the configuration to `config` (so that several servers
    /// can share a directory, and so a database).
    pub fn start_on(dir: &Path, config_path: &Path, yaml: &str, env: &[(&str, &str)]) -> Self {
        let (database_url, database) = database_url(dir);
        let redis = match redis_url() {
            Some(url) if !yaml.contains("redis_url:") => format!("redis_url: {url}\n"),
            _ => String::new(),
        };
        let config = format!("port: 0\ndatabase_url: {database_url}\n{redis}{yaml}");
        let path = config_path.to_owned();
        let log_name = match path.file_stem().and_then(|s| s.to_str()) {
            Some("config") | None => "stderr.log".to_owned(),
            Some(stem) => format!("{stem}.stderr.log"),
        };
        std::fs::write(&path, config).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_token-console"));
        command
            .arg("--config")
            .arg(&path)
            .current_dir(dir)
            .env_remove("OPENAI_API_KEY")
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("CONSOLE_ADMIN_KEY")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join(&log_name)).unwrap(),
            ));
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start token-console");
        let line = read_until(&mut child, "token-console ready ");
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|part| part.strip_prefix(&format!("{name}=")))
                .unwrap()
                .to_owned()
        };
        Self {
            url: field("gateway"),
            console: field("console"),
            child: Some(child),
            dir: dir.to_owned(),
            http: reqwest::Client::new(),
            _database: database,
            log_name,
        }
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        child.wait().unwrap()
    }

    /// Sends SIGKILL and waits.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// CPU time (user + system) the server process has used so far, from `/proc/<pid>/stat`.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the parenthesised command name: state is the 3rd, utime the 14th and
        // stime the 15th field of the whole line.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf only reads a system constant.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }

    /// The service log so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join(&self.log_name)).unwrap_or_default()
    }

    /// GET a console API path and return (status, body).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The body of a successful GET as text.
    pub async fn text(&self, path: &str) -> String {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.text().await.unwrap()
    }

    /// What `/healthz` says.
    pub async fn healthz(&self) -> Value {
        let (status, body) = self.get("/healthz").await;
        assert_eq!(status, 200, "/healthz: {body}");
        body
    }

    /// `data` of a successful GET.
    pub async fn data(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["code"], 0, "{path}: {body}");
        body["data"].clone()
    }

    /// POST JSON and return (status, body).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// PATCH JSON and return (status, body).
    pub async fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .patch(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// DELETE and return (status, body).
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .delete(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Creates a key and returns (id, full key).
    pub async fn create_key(&self, name: &str) -> (i64, String) {
        let (status, body) = self
            .post("/api/console/keys", &serde_json::json!({"name": name}))
            .await;
        assert_eq!(status, 200, "{body}");
        (
            body["data"]["id"].as_i64().unwrap(),
            body["data"]["value"].as_str().unwrap().to_owned(),
        )
    }

    /// Creates a key with a token limit and returns (id, full key).
    pub async fn create_limited_key(&self, name: &str, token_limit: u64) -> (i64, String) {
        let (id, key) = self.create_key(name).await;
        let (status, body) = self
            .patch(
                &format!("/api/console/keys/{id}"),
                &serde_json::json!({ "token_limit": token_limit }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        (id, key)
    }

    /// Waits until the store has at least `n` calls (polling the console; fails after the deadline).
    pub async fn wait_for_calls(&self, n: u64) -> Value {
        wait_until(&format!("{n} recorded calls"), || async {
            let stats = self.data("/api/console/stats").await;
            if stats["api_call_count"].as_u64().unwrap() >= n {
                Ok(stats)
            } else {
                Err(format!("/api/console/stats {stats}"))
            }
        })
        .await
    }

    /// The newest log rows.
    pub async fn logs(&self, query: &str) -> Vec<Value> {
        self.data(&format!("/api/console/logs?{query}"))
            .await
            .as_array()
            .cloned()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A server in a fresh directory, both providers at `mock`, `extra_yaml` after them; the
/// directory (and so the database) lives as long as the returned handle.
pub fn start_behind(mock: &Mock, extra_yaml: &str) -> (TempDir, Server) {
    let dir = tempdir();
    let yaml = format!("{}{extra_yaml}", providers_yaml(&mock.url));
    let server = Server::start(dir.path(), &yaml);
    (dir, server)
}

/// Load on a gateway: `clients` loops, each POSTing a short chat call (`model`, `max_tokens` 5)
/// to `url` with `key` until `stop`, counting in `ok` the 200 answers completely received and
/// noting in `ends` when each was. A loop ends early when the gateway stops answering.
pub fn chat_load(
    url: &str,
    key: &str,
    model: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    ends: Arc<Mutex<Vec<Instant>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let body = serde_json::json!({"model": model, "max_tokens": 5,
        "messages": [{"role": "user", "content": "one two three"}]});
    (0..clients)
        .map(|_| {
            let (url, key, body) = (url.to_owned(), key.to_owned(), body.clone());
            let (stop, ok, ends) = (stop.clone(), ok.clone(), ends.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = client
                        .post(format!("{url}/v1/chat/completions"))
                        .bearer_auth(&key)
                        .json(&body)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 200 => {
                            if r.bytes().await.is_ok() {
                                ok.fetch_add(1, Ordering::Relaxed);
                                ends.lock().unwrap().push(Instant::now());
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            })
        })
        .collect()
}

/// A gateway client call: POST JSON with a bearer key.
pub async fn call(url: &str, path: &str, key: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}{path}"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}
