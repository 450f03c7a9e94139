//! Shared harness of the end-to-end tests: the real `token-console` binary and the mock upstream,
//! each on port 0, with a fresh database in a temporary directory.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The longest a test waits for a condition before failing (a guard, not a synchronisation).
pub const DEADLINE: Duration = Duration::from_secs(30);

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
}

impl Server {
    /// Writes `yaml` (with `port: 0` and a database in `dir` added) and starts the binary.
    pub fn start(dir: &Path, yaml: &str) -> Self {
        Self::start_with(dir, yaml, &[])
    }

    /// As [`Server::start`], with extra environment variables.
    pub fn start_with(dir: &Path, yaml: &str, env: &[(&str, &str)]) -> Self {
        let db = dir.join("tc.db");
        let config = format!("port: 0\ndatabase_url: sqlite://{}\n{yaml}", db.display());
        let path = dir.join("config.yaml");
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
                std::fs::File::create(dir.join("stderr.log")).unwrap(),
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

    /// The service log so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
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

    /// Waits until the store has at least `n` calls (polling the console; fails after the deadline).
    pub async fn wait_for_calls(&self, n: u64) -> Value {
        let start = Instant::now();
        loop {
            let stats = self.data("/api/console/stats").await;
            if stats["api_call_count"].as_u64().unwrap() >= n {
                return stats;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "only {} of {n} calls recorded: {stats}",
                stats["api_call_count"]
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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

/// A temporary directory for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("token-console-test")
        .tempdir()
        .unwrap()
}
