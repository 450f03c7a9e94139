//! Configuration: the YAML file, environment variables and flags, merged and validated into [`Config`].
//!
//! Precedence, highest first: command-line flags > environment variables > `config.yaml` > defaults.
//! Flags and environment variables are read together by clap (each flag names its variable), the
//! file is parsed into raw structs that reject unknown keys, and [`Config::resolve`] merges the two
//! and checks every value, so the rest of the program only ever sees a valid [`Config`].

use std::fmt;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

/// The default port of the gateway and the console, as the user's guide gives it.
pub const DEFAULT_PORT: u16 = 8317;
/// The default body limit of a gateway request: large enough for long prompts with images.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// The shortest admin key accepted: guessing 16 random characters is hopeless, so failed
/// sign-ins need no lock-out that could shut the real admin out.
pub const MIN_ADMIN_KEY_CHARS: usize = 16;

/// A value that must never be printed: it hides itself in `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret string.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call this only where the value is sent or compared.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Command-line flags, each also readable from the environment variable it names.
#[derive(Debug, Default, Parser)]
#[command(
    name = "token-console",
    version,
    about = "LLM API gateway with a token console"
)]
pub struct Cli {
    /// Path of the YAML configuration file (default: ./config.yaml when present).
    #[arg(long, env = "CONSOLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (0.0.0.0 serves other machines).
    #[arg(long, env = "CONSOLE_HOST")]
    pub host: Option<String>,
    /// Port of the gateway (0 picks a free port).
    #[arg(long, env = "CONSOLE_GATEWAY_PORT")]
    pub port: Option<u16>,
    /// Database URL: sqlite://path/to/file.db or postgres://user:password@host:port/database.
    #[arg(long, env = "CONSOLE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Redis URL (redis://host:port/db) shared by instances for per-key RPM limits.
    #[arg(long, env = "CONSOLE_REDIS_URL")]
    pub redis_url: Option<String>,
    /// IANA time zone for day boundaries of trends, or "local".
    #[arg(long, env = "CONSOLE_TIMEZONE")]
    pub timezone: Option<String>,
    /// Also write service logs to this file.
    #[arg(long, env = "CONSOLE_LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// Serve the console page and API (true/false).
    #[arg(long, env = "CONSOLE_ENABLED")]
    pub console_enabled: Option<bool>,
    /// Port of the console; another value than the gateway's serves it on its own listener.
    #[arg(long, env = "CONSOLE_PORT")]
    pub console_port: Option<u16>,
    /// Path of the console page.
    #[arg(long, env = "CONSOLE_PATH")]
    pub console_path: Option<String>,
    /// Detailed log rows kept (the newest); aggregates are kept regardless.
    #[arg(long, env = "CONSOLE_MAX_LOGS")]
    pub max_logs: Option<u64>,
    /// Most live API keys.
    #[arg(long, env = "CONSOLE_MAX_KEYS")]
    pub max_keys: Option<u64>,
    /// Global token budget (absent: unlimited).
    #[arg(long, env = "CONSOLE_TOTAL_TOKENS")]
    pub total_tokens: Option<u64>,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "CONSOLE_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Extra host names the console answers without an admin key (comma-separated), besides
    /// loopback names and the configured host.
    #[arg(long, env = "CONSOLE_ALLOWED_HOSTS", value_delimiter = ',')]
    pub console_allowed_hosts: Option<Vec<String>>,
    /// Admin key for the console (environment only: flags show in `ps`).
    #[arg(skip)]
    pub admin_key: Option<String>,
    /// For tests only: start the clock at this RFC 3339 instant instead of the wall clock's
    /// (it runs on from there). It moves the instant calls are recorded at and the budget
    /// periods they are charged to; never set it in production.
    #[arg(long, env = "CONSOLE_TEST_NOW", hide = true)]
    pub test_now: Option<String>,
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// A one-off job run instead of the server.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Recompute the stored cost of recorded calls (raw rows and aggregates) from their stored
    /// tokens with the current prices: the `pricing:` overrides and the bundled table. The
    /// gateway may keep running meanwhile.
    Reprice {
        /// Only calls at or after this date (midnight UTC) or RFC 3339 instant, e.g. 2026-12-01.
        #[arg(long)]
        from: Option<String>,
    },
}

impl Cli {
    /// Parses flags and environment variables; the admin key is read from the environment only.
    pub fn from_env_and_args() -> Self {
        let mut cli = Self::parse();
        cli.admin_key = std::env::var("CONSOLE_ADMIN_KEY")
            .ok()
            .filter(|v| !v.is_empty());
        cli
    }
}

/// A string from the file with `${VAR}` replaced by the environment variable `VAR`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EnvString(String);

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        expand_env(&raw, |name| std::env::var(name).ok())
            .map(EnvString)
            .map_err(serde::de::Error::custom)
    }
}

/// Replaces each `${NAME}` in `raw` by `lookup(NAME)`; a missing variable is an error naming it.
fn expand_env(raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in \"{raw}\""))?;
        let name = &after[..end];
        if name.is_empty() {
            return Err(format!("empty variable name `${{}}` in \"{raw}\""));
        }
        let value = lookup(name).ok_or_else(|| {
            format!("environment variable {name} is not set (referenced as ${{{name}}}); set it or remove the reference")
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    host: Option<EnvString>,
    port: Option<u16>,
    database_url: Option<EnvString>,
    redis_url: Option<EnvString>,
    timezone: Option<EnvString>,
    log_file: Option<EnvString>,
    max_body_bytes: Option<usize>,
    client_body_timeout_ms: Option<u64>,
    client_header_timeout_ms: Option<u64>,
    recorder_queue: Option<usize>,
    recorder_wait_ms: Option<u64>,
    client_idle_timeout_ms: Option<u64>,
    console: Option<RawConsole>,
    quota: Option<RawQuota>,
    providers: Option<Vec<RawProvider>>,
    otel: Option<RawOtel>,
    pricing: Option<RawPricing>,
    alerts: Option<RawAlerts>,
    sources: Option<Vec<RawSource>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    targets: Vec<RawTarget>,
    rules: Option<RawRules>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    attempts: Option<u32>,
    backoff_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    kind: TargetKind,
    url: HttpUrl,
    name: Option<EnvString>,
    secret: Option<EnvString>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPricing {
    models: Option<Vec<RawPriceOverride>>,
    display_currency: Option<Spanned<String>>,
    display_rate: Option<Spanned<f64>>,
}

/// One `pricing.models[]` entry; positions are kept so that errors name the line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPriceOverride {
    #[serde(rename = "match")]
    pattern: Spanned<String>,
    input: Spanned<f64>,
    output: Spanned<f64>,
    cache_read: Option<Spanned<f64>>,
    cache_write: Option<Spanned<f64>>,
    from: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    budget_percent: Option<Vec<u32>>,
    forecast_days: Option<u32>,
    anomalies: Option<bool>,
    recorder_degraded: Option<bool>,
}

/// An `http://` or `https://` URL from the file (`${VAR}` expanded). Checked while the file is
/// read, so that a wrong one is reported with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HttpUrl(String);

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let EnvString(raw) = EnvString::deserialize(deserializer)?;
        let url = raw.trim().to_owned();
        let valid = ["http://", "https://"]
            .iter()
            .any(|scheme| url.len() > scheme.len() && url.starts_with(scheme))
            && url.parse::<axum::http::Uri>().is_ok();
        if !valid {
            // Webhook URLs carry their token: name only the scheme given.
            let scheme = url.split_once(':').map_or("none", |(scheme, _)| scheme);
            return Err(serde::de::Error::custom(format!(
                "url must be an http:// or https:// URL (e.g. https://hooks.slack.com/services/…); its scheme is \"{scheme}\""
            )));
        }
        Ok(Self(url))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: EnvString,
    kind: SourceKind,
    url: EnvString,
    management_key: EnvString,
    mode: Option<SourceMode>,
    poll_interval_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOtel {
    endpoint: EnvString,
    headers: Option<std::collections::BTreeMap<String, EnvString>>,
    export_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    enabled: Option<bool>,
    port: Option<u16>,
    path: Option<EnvString>,
    max_logs: Option<u64>,
    max_keys: Option<u64>,
    admin_key: Option<EnvString>,
    ingest_key: Option<EnvString>,
    allowed_hosts: Option<Vec<EnvString>>,
    usage_user_cap: Option<u64>,
    push_source_cap: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuota {
    total_tokens: Option<u64>,
    total_cost: Option<f64>,
    limit_period: Option<EnvString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: EnvString,
    kind: ProviderKind,
    base_url: EnvString,
    api_key: Option<EnvString>,
    models: Option<Vec<EnvString>>,
    connect_timeout_ms: Option<u64>,
    first_byte_timeout_ms: Option<u64>,
    stream_idle_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
}

/// The protocol an upstream provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI or any OpenAI-compatible server.
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
}

/// The service an alert target is: how a message is shaped and signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// Any HTTP receiver: the JSON payload with LiteLLM's budget-alert field names.
    Webhook,
    /// A Slack incoming webhook (`{"text": …}`).
    Slack,
    /// A Feishu (Lark) custom bot, signed when a secret is set.
    Feishu,
    /// A DingTalk custom robot, signed when a secret is set.
    Dingtalk,
    /// A WeCom (企业微信) group robot.
    Wecom,
}

impl TargetKind {
    /// The name used in the file and in the console.
    pub fn name(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Slack => "slack",
            Self::Feishu => "feishu",
            Self::Dingtalk => "dingtalk",
            Self::Wecom => "wecom",
        }
    }
}

/// Where the store keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// An embedded SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by one or more instances.
    Postgres(ServiceUrl),
}

/// The URL of a network service (PostgreSQL, Redis) that may carry a password: it prints only
/// in its redacted form (`postgres://user:***@host/db`).
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceUrl(Secret);

impl ServiceUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(Secret::new(url))
    }

    /// The URL itself, password included; call this only to connect.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(self.0.expose())
    }
}

impl fmt::Debug for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceUrl({})", self.redacted())
    }
}

impl fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The console's settings (the guide's `console:` section plus the admin key).
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// Whether the page and `/api/console` are served at all.
    pub enabled: bool,
    /// `Some(port)` serves the console on its own listener; `None` shares the gateway's.
    pub separate_port: Option<u16>,
    /// Path of the page, e.g. `/console`.
    pub path: String,
    /// Detailed log rows kept.
    pub max_logs: u64,
    /// Most live keys.
    pub max_keys: u64,
    /// Distinct end users a local day's usage rollups keep apart; the calls of later users are
    /// kept under `(other)`.
    pub usage_user_cap: u64,
    /// Most source names the push endpoint admits besides the configured sources; a push under
    /// a new name past them is refused.
    pub push_source_cap: u64,
    /// When set, every console call needs it as a bearer token.
    pub admin_key: Option<Secret>,
    /// The bearer token of `POST /api/console/ingest` (never the admin key); `None` turns the
    /// push endpoint off.
    pub ingest_key: Option<Secret>,
    /// Host names (lowercase, without port) the console answers without an admin key, besides
    /// loopback names and the configured host.
    pub allowed_hosts: Vec<String>,
}

/// One upstream provider.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Name shown in logs.
    pub name: String,
    /// Protocol it speaks.
    pub kind: ProviderKind,
    /// Base URL without a trailing slash.
    pub base_url: String,
    /// Key sent upstream in place of the client's.
    pub api_key: Option<Secret>,
    /// Glob patterns of the models it serves.
    pub models: Vec<String>,
    /// Connect timeout.
    pub connect_timeout_ms: u64,
    /// Time allowed until the upstream's response headers arrive.
    pub first_byte_timeout_ms: u64,
    /// Longest silence allowed between two chunks of an answer.
    pub stream_idle_timeout_ms: u64,
    /// Pooled connections idle longer than this are closed.
    pub idle_timeout_ms: u64,
}

/// The validated configuration the program runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub host: String,
    /// Gateway port (0: any free port).
    pub port: u16,
    /// The store's location.
    pub database: DatabaseUrl,
    /// Redis shared by instances for per-key RPM limits; `None` counts them in this process.
    pub redis_url: Option<ServiceUrl>,
    /// Day boundaries of trends.
    pub timezone: jiff::tz::TimeZone,
    /// Name of the time zone as configured.
    pub timezone_name: String,
    /// Optional log file besides stderr.
    pub log_file: Option<PathBuf>,
    /// Largest gateway request body.
    pub max_body_bytes: usize,
    /// Time allowed for a client to send its whole request body (408 after).
    pub client_body_timeout_ms: u64,
    /// Time allowed for a client to send a request's headers (the connection is closed after).
    pub client_header_timeout_ms: u64,
    /// Capacity of the record queue: calls in flight plus records not yet committed.
    pub recorder_queue: usize,
    /// Longest wait of a new call for room in the record queue before it is refused (503).
    pub recorder_wait_ms: u64,
    /// Longest a kept-alive client connection may sit idle between requests (closed after).
    pub client_idle_timeout_ms: u64,
    /// Console settings.
    pub console: ConsoleConfig,
    /// Global token budget; `None` is unlimited.
    pub total_tokens: Option<u64>,
    /// Global money budget in nano-dollars (`quota.total_cost`, USD); `None` is unlimited.
    pub total_cost_nanos: Option<u64>,
    /// How often the global budgets reset (`quota.limit_period`); `None`: never.
    pub limit_period: Option<crate::clock::Period>,
    /// For tests only (`CONSOLE_TEST_NOW`): the instant the clock starts at.
    pub test_now: Option<jiff::Timestamp>,
    /// Upstream providers, in routing order.
    pub providers: Vec<ProviderConfig>,
    /// OpenTelemetry export of every call; `None` (the default) exports nothing.
    pub otel: Option<OtelConfig>,
    /// Usage sources read besides the gateway's own calls (the `sources:` section).
    pub sources: Vec<SourceConfig>,
    /// Alerts; `None` (the default) sends none.
    pub alerts: Option<AlertsConfig>,
    /// Price overrides and the display currency (the `pricing:` section).
    pub pricing: PricingConfig,
}

/// The `pricing:` section: prices that beat the bundled table, and a second currency for the
/// page.
#[derive(Debug, Clone, Default)]
pub struct PricingConfig {
    /// Overrides, in the file's order.
    pub overrides: Vec<crate::pricing::Override>,
    /// The page's second currency (ISO 4217 code, e.g. `CNY`), with its units per USD.
    pub display: Option<(String, f64)>,
}

/// What kind of usage source a `sources:` entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// CLIProxyAPI's usage export (its management API and RESP interface).
    Cliproxyapi,
}

/// How a CLIProxyAPI source is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceMode {
    /// `SUBSCRIBE usage` over RESP; falls back to popping when it is not available.
    Subscribe,
    /// `GET /v0/management/usage-queue` every `poll_interval_ms`.
    Pop,
}

/// One usage source (a `sources:` entry), validated.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Shown in the console as the calls' source; unique, `[A-Za-z0-9._-]`, at most 64 bytes.
    pub name: String,
    /// What it is.
    pub kind: SourceKind,
    /// Base URL without a trailing slash, `http://` or `https://`.
    pub url: String,
    /// CLIProxyAPI's management secret.
    pub management_key: Secret,
    /// Subscribe (default) or pop.
    pub mode: SourceMode,
    /// Pause between pops that found the queue empty.
    pub poll_interval_ms: u64,
}

/// Longest source name, in bytes.
pub const MAX_SOURCE_NAME: usize = 64;
/// Default of `console.push_source_cap`.
pub const DEFAULT_PUSH_SOURCE_CAP: u64 = 20;

/// Where the OpenTelemetry GenAI spans and metrics of the calls go (the `otel:` section).
#[derive(Debug, Clone)]
pub struct OtelConfig {
    /// Base URL of an OTLP/HTTP receiver, e.g. `http://127.0.0.1:4318`; spans go to
    /// `/v1/traces` under it, metrics to `/v1/metrics`.
    pub endpoint: String,
    /// Headers sent with every export (an API key of the collector, for example).
    pub headers: Vec<(String, Secret)>,
    /// How often batches of spans and the metrics are sent.
    pub export_interval_ms: u64,
}

/// Where alerts go and when they are raised (the `alerts:` section).
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    /// Receivers; every alert goes to each of them.
    pub targets: Vec<AlertTarget>,
    /// What raises an alert.
    pub rules: AlertRules,
    /// How often the rules are evaluated.
    pub interval_ms: u64,
    /// Longest wait for one delivery attempt's answer.
    pub timeout_ms: u64,
    /// Tries per delivery before it is recorded as failed.
    pub attempts: u32,
    /// Wait before the second try, doubled before each further one.
    pub backoff_ms: u64,
}

/// One receiver of alerts.
#[derive(Debug, Clone)]
pub struct AlertTarget {
    /// Unique name, shown in the console (default `kind-N`).
    pub name: String,
    /// How messages are shaped and signed.
    pub kind: TargetKind,
    /// Where they are posted; webhook URLs often carry a token, so it never prints.
    pub url: Secret,
    /// The signing secret (Feishu, DingTalk, and an HMAC header for generic webhooks).
    pub secret: Option<Secret>,
}

/// What raises an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRules {
    /// Percentages of a budget whose crossing is announced (once each per budget and period).
    pub budget_percent: Vec<u32>,
    /// Announce a budget that runs out within this many days at its current rate; 0 is off.
    pub forecast_days: u32,
    /// Announce anomalies (error rate or token volume of a key and model).
    pub anomalies: bool,
    /// Announce that the recorder cannot write to the store.
    pub recorder_degraded: bool,
}

impl Default for AlertRules {
    fn default() -> Self {
        Self {
            budget_percent: vec![50, 80, 100],
            forecast_days: 3,
            anomalies: true,
            recorder_degraded: true,
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The reason.
        source: std::io::Error,
    },
    /// The file is not valid (unknown key, wrong type, bad YAML); the message names key and line.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong and where.
        message: String,
    },
    /// A value is out of its allowed range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads the file named by the flags (or `./config.yaml` when present) and merges the flags.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let path = match &cli.config {
            Some(path) => Some(path.clone()),
            None => Some(PathBuf::from("config.yaml")).filter(|p| p.exists()),
        };
        let raw = match &path {
            Some(path) => parse_file(path)?,
            None => RawConfig::default(),
        };
        Self::resolve(raw, cli, |name| std::env::var(name).ok())
    }

    /// Parses a configuration from YAML text (used by tests and the fuzzer).
    pub fn from_yaml(text: &str, cli: &Cli) -> Result<Self, ConfigError> {
        let raw = parse_text(text, Path::new("<inline>"))?;
        Self::resolve(raw, cli, |_| None)
    }

    fn resolve(
        raw: RawConfig,
        cli: &Cli,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let console_raw = raw.console.unwrap_or_default();
        let port = cli.port.or(raw.port).unwrap_or(DEFAULT_PORT);
        let console_port = cli.console_port.or(console_raw.port);
        let separate_port = console_port.filter(|&p| p != port || p == 0);
        let path = normalize_console_path(
            cli.console_path
                .clone()
                .or(console_raw.path.map(|p| p.0))
                .unwrap_or_else(|| "/console".to_owned()),
        )?;
        let max_logs = positive(
            "console.max_logs",
            cli.max_logs.or(console_raw.max_logs).unwrap_or(1000),
        )?;
        let max_keys = positive(
            "console.max_keys",
            cli.max_keys.or(console_raw.max_keys).unwrap_or(100),
        )?;
        let usage_user_cap = positive(
            "console.usage_user_cap",
            console_raw
                .usage_user_cap
                .unwrap_or(crate::store::DEFAULT_USER_CAP),
        )?;
        let push_source_cap = positive(
            "console.push_source_cap",
            console_raw
                .push_source_cap
                .unwrap_or(DEFAULT_PUSH_SOURCE_CAP),
        )?;
        let admin_key = cli
            .admin_key
            .clone()
            .or(console_raw.admin_key.map(|k| k.0))
            .filter(|k| !k.is_empty())
            .map(Secret::new);
        if admin_key
            .as_ref()
            .is_some_and(|k| k.expose().chars().count() < MIN_ADMIN_KEY_CHARS)
        {
            return Err(ConfigError::Invalid(format!(
                "console.admin_key (CONSOLE_ADMIN_KEY) must be at least {MIN_ADMIN_KEY_CHARS} characters long; generate one with `openssl rand -hex 24`"
            )));
        }
        let ingest_key = console_raw
            .ingest_key
            .map(|k| k.0)
            .filter(|k| !k.is_empty())
            .map(Secret::new);
        if let Some(key) = &ingest_key {
            if key.expose().chars().count() < MIN_ADMIN_KEY_CHARS {
                return Err(ConfigError::Invalid(format!(
                    "console.ingest_key must be at least {MIN_ADMIN_KEY_CHARS} characters long; generate one with `openssl rand -hex 24`"
                )));
            }
            if admin_key
                .as_ref()
                .is_some_and(|a| a.expose() == key.expose())
            {
                return Err(ConfigError::Invalid(
                    "console.ingest_key must differ from console.admin_key: whoever pushes usage must not administer the console".into(),
                ));
            }
        }
        let allowed_hosts = cli
            .console_allowed_hosts
            .clone()
            .or(console_raw
                .allowed_hosts
                .map(|hosts| hosts.into_iter().map(|h| h.0).collect()))
            .unwrap_or_default()
            .iter()
            .map(|h| allowed_host(h))
            .filter_map(Result::transpose)
            .collect::<Result<Vec<_>, _>>()?;
        let timezone_name = cli
            .timezone
            .clone()
            .or(raw.timezone.map(|t| t.0))
            .unwrap_or_else(|| "local".to_owned());
        let timezone = parse_timezone(&timezone_name)?;
        let database = parse_database_url(
            &cli.database_url
                .clone()
                .or(raw.database_url.map(|d| d.0))
                .unwrap_or_else(|| "sqlite://data/token-console.db".to_owned()),
        )?;
        let redis_url = parse_redis_url(cli.redis_url.clone().or(raw.redis_url.map(|r| r.0)))?;
        let providers = match raw.providers {
            Some(list) => list
                .into_iter()
                .map(validate_provider)
                .collect::<Result<Vec<_>, _>>()?,
            None => providers_from_env(&env),
        };
        let quota = raw.quota.unwrap_or_default();
        Ok(Self {
            host: cli
                .host
                .clone()
                .or(raw.host.map(|h| h.0))
                .unwrap_or_else(|| "127.0.0.1".to_owned()),
            port,
            database,
            redis_url,
            timezone,
            timezone_name,
            log_file: cli
                .log_file
                .clone()
                .or(raw.log_file.map(|f| PathBuf::from(f.0))),
            max_body_bytes: positive_usize(
                "max_body_bytes",
                cli.max_body_bytes
                    .or(raw.max_body_bytes)
                    .unwrap_or(DEFAULT_MAX_BODY_BYTES),
            )?,
            client_body_timeout_ms: positive(
                "client_body_timeout_ms",
                raw.client_body_timeout_ms.unwrap_or(60_000),
            )?,
            client_header_timeout_ms: positive(
                "client_header_timeout_ms",
                raw.client_header_timeout_ms.unwrap_or(30_000),
            )?,
            recorder_queue: positive_usize(
                "recorder_queue",
                raw.recorder_queue.unwrap_or(crate::usage::QUEUE_CAPACITY),
            )?,
            recorder_wait_ms: positive(
                "recorder_wait_ms",
                raw.recorder_wait_ms
                    .unwrap_or(crate::usage::SLOT_WAIT.as_millis() as u64),
            )?,
            client_idle_timeout_ms: positive(
                "client_idle_timeout_ms",
                raw.client_idle_timeout_ms.unwrap_or(75_000),
            )?,
            console: ConsoleConfig {
                enabled: cli.console_enabled.or(console_raw.enabled).unwrap_or(true),
                separate_port,
                path,
                max_logs,
                max_keys,
                usage_user_cap,
                push_source_cap,
                admin_key,
                ingest_key,
                allowed_hosts,
            },
            total_tokens: cli.total_tokens.or(quota.total_tokens),
            total_cost_nanos: quota
                .total_cost
                .map(|usd| usd_to_nanos("quota.total_cost", usd))
                .transpose()?,
            limit_period: quota
                .limit_period
                .map(|p| parse_period("quota.limit_period", &p.0))
                .transpose()?,
            test_now: cli.test_now.as_deref().map(parse_test_now).transpose()?,
            providers,
            otel: raw.otel.map(validate_otel).transpose()?,
            pricing: validate_pricing(raw.pricing.unwrap_or_default())?,
            alerts: raw.alerts.map(validate_alerts).transpose()?,
            sources: validate_sources(raw.sources.unwrap_or_default())?,
        })
    }
}

/// A budget period's name: `day`, `week` or `month`.
fn parse_period(field: &str, name: &str) -> Result<crate::clock::Period, ConfigError> {
    crate::clock::Period::parse(name.trim()).ok_or_else(|| {
        ConfigError::Invalid(format!(
            "{field} \"{name}\" is not a period; use {}",
            crate::clock::Period::NAMES
        ))
    })
}

/// A money amount in USD as whole nano-dollars (rounded to the nearest), refused when negative or not
/// finite.
pub fn usd_to_nanos(field: &str, usd: f64) -> Result<u64, ConfigError> {
    if !usd.is_finite() || usd < 0.0 || usd > (i64::MAX / 1_000_000_000) as f64 {
        return Err(ConfigError::Invalid(format!(
            "{field} {usd} is not an amount of USD; give a number of dollars such as 25 or 0.5"
        )));
    }
    Ok((usd * 1e9).round() as u64)
}

/// `CONSOLE_TEST_NOW`: an RFC 3339 instant.
fn parse_test_now(raw: &str) -> Result<jiff::Timestamp, ConfigError> {
    raw.trim().parse().map_err(|_| {
        ConfigError::Invalid(format!(
            "CONSOLE_TEST_NOW \"{raw}\" is not an RFC 3339 instant such as 2026-01-31T23:59:00+08:00"
        ))
    })
}

fn parse_file(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_text(&text, path)
}

fn parse_text(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
    if text.trim().is_empty() {
        return Ok(RawConfig::default());
    }
    serde_saphyr::from_str::<RawConfig>(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// `key (line N)` for an error message.
fn at_line<T>(key: &str, spanned: &Spanned<T>) -> String {
    format!("{key} (line {})", spanned.referenced.line())
}

fn validate_pricing(raw: RawPricing) -> Result<PricingConfig, ConfigError> {
    let mut overrides: Vec<crate::pricing::Override> = Vec::new();
    for (i, entry) in raw.models.unwrap_or_default().into_iter().enumerate() {
        let o = validate_override(entry, i)?;
        if let Some(earlier) = overrides
            .iter()
            .position(|e| e.pattern == o.0.pattern && e.from == o.0.from)
        {
            return Err(ConfigError::Invalid(format!(
                "{} repeats pricing.models[{earlier}]: two prices with the same match \"{}\" and the same from; remove one or give it another from",
                o.1, o.0.pattern
            )));
        }
        overrides.push(o.0);
    }
    let display = match (raw.display_currency, raw.display_rate) {
        (None, None) => None,
        (Some(currency), Some(rate)) => {
            let code = currency.value.trim().to_ascii_uppercase();
            if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(ConfigError::Invalid(format!(
                    "{} must be a three-letter currency code such as CNY or EUR, not \"{}\"",
                    at_line("pricing.display_currency", &currency),
                    currency.value
                )));
            }
            if !rate.value.is_finite() || rate.value <= 0.0 {
                return Err(ConfigError::Invalid(format!(
                    "{} must be a positive number of {code} per USD, not {}",
                    at_line("pricing.display_rate", &rate),
                    rate.value
                )));
            }
            Some((code, rate.value))
        }
        (Some(currency), None) => {
            return Err(ConfigError::Invalid(format!(
                "{} needs pricing.display_rate (units of it per USD)",
                at_line("pricing.display_currency", &currency)
            )))
        }
        (None, Some(rate)) => {
            return Err(ConfigError::Invalid(format!(
                "{} needs pricing.display_currency (the currency it converts to)",
                at_line("pricing.display_rate", &rate)
            )))
        }
    };
    Ok(PricingConfig { overrides, display })
}

/// A validated override and where it is (`pricing.models[i] (line N)`).
fn validate_override(
    raw: RawPriceOverride,
    i: usize,
) -> Result<(crate::pricing::Override, String), ConfigError> {
    let key = |name: &str| format!("pricing.models[{i}].{name}");
    let place = format!(
        "pricing.models[{i}] (line {})",
        raw.pattern.referenced.line()
    );
    let pattern = raw.pattern.value.trim().to_owned();
    if pattern.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "{} must not be empty: give a model name or a glob such as \"gpt-4o*\"",
            at_line(&key("match"), &raw.pattern)
        )));
    }
    let price = |name: &str, value: &Spanned<f64>| -> Result<crate::pricing::Tiered, ConfigError> {
        crate::pricing::femtos_per_token(value.value)
            .map(crate::pricing::Tiered::flat)
            .ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "{} must be a non-negative number of USD per million tokens, not {}",
                    at_line(&key(name), value),
                    value.value
                ))
            })
    };
    let optional = |name: &str, value: &Option<Spanned<f64>>| {
        value.as_ref().map(|v| price(name, v)).transpose()
    };
    let from = raw
        .from
        .as_ref()
        .map(|from| {
            crate::pricing::parse_instant(&from.value).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "{} \"{}\" is neither a date (2026-12-01, midnight UTC) nor an RFC 3339 instant (2026-12-01T08:00:00+08:00)",
                    at_line(&key("from"), from),
                    from.value
                ))
            })
        })
        .transpose()?;
    let prices = crate::pricing::Prices {
        input: price("input", &raw.input)?,
        output: price("output", &raw.output)?,
        cache_read: optional("cache_read", &raw.cache_read)?,
        cache_write: optional("cache_write", &raw.cache_write)?,
    };
    Ok((
        crate::pricing::Override {
            pattern,
            prices,
            from,
        },
        place,
    ))
}

/// Default `otel.export_interval_ms`: spans and metrics leave in batches every 5 s.
const DEFAULT_OTEL_EXPORT_INTERVAL_MS: u64 = 5_000;

fn validate_otel(raw: RawOtel) -> Result<OtelConfig, ConfigError> {
    let endpoint = raw.endpoint.0.trim_end_matches('/').to_owned();
    let valid_url = ["http://", "https://"]
        .iter()
        .any(|scheme| endpoint.len() > scheme.len() && endpoint.starts_with(scheme))
        && endpoint.parse::<axum::http::Uri>().is_ok();
    if !valid_url {
        return Err(ConfigError::Invalid(format!(
            "otel.endpoint \"{endpoint}\" must be the http:// or https:// URL of an OTLP/HTTP receiver (e.g. http://127.0.0.1:4318)"
        )));
    }
    let mut headers = Vec::new();
    for (name, value) in raw.headers.unwrap_or_default() {
        if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || axum::http::HeaderValue::from_str(&value.0).is_err()
        {
            return Err(ConfigError::Invalid(format!(
                "otel.headers: \"{name}\" is not a valid HTTP header name, or its value is not a valid header value"
            )));
        }
        headers.push((name, Secret::new(value.0)));
    }
    Ok(OtelConfig {
        endpoint,
        headers,
        export_interval_ms: positive(
            "otel.export_interval_ms",
            raw.export_interval_ms
                .unwrap_or(DEFAULT_OTEL_EXPORT_INTERVAL_MS),
        )?,
    })
}

fn validate_alerts(raw: RawAlerts) -> Result<AlertsConfig, ConfigError> {
    let mut targets: Vec<AlertTarget> = Vec::with_capacity(raw.targets.len());
    for (i, target) in raw.targets.into_iter().enumerate() {
        let name = target
            .name
            .map(|n| n.0.trim().to_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("{}-{}", target.kind.name(), i + 1));
        if targets.iter().any(|t| t.name == name) {
            return Err(ConfigError::Invalid(format!(
                "alerts.targets: two targets are named \"{name}\"; give each a unique name"
            )));
        }
        let secret = target.secret.map(|s| s.0).filter(|s| !s.is_empty());
        if secret.is_some() && matches!(target.kind, TargetKind::Slack | TargetKind::Wecom) {
            return Err(ConfigError::Invalid(format!(
                "alerts.targets[{i}] ({}): {} does not sign its webhooks; remove `secret`",
                name,
                target.kind.name()
            )));
        }
        targets.push(AlertTarget {
            name,
            kind: target.kind,
            url: Secret::new(target.url.0),
            secret: secret.map(Secret::new),
        });
    }
    let raw_rules = raw.rules.unwrap_or_default();
    let defaults = AlertRules::default();
    let rules = AlertRules {
        budget_percent: raw_rules.budget_percent.unwrap_or(defaults.budget_percent),
        forecast_days: raw_rules.forecast_days.unwrap_or(defaults.forecast_days),
        anomalies: raw_rules.anomalies.unwrap_or(defaults.anomalies),
        recorder_degraded: raw_rules
            .recorder_degraded
            .unwrap_or(defaults.recorder_degraded),
    };
    if let Some(bad) = rules
        .budget_percent
        .iter()
        .find(|p| !(1..=100).contains(*p))
    {
        return Err(ConfigError::Invalid(format!(
            "alerts.rules.budget_percent: {bad} is not a percentage from 1 to 100 (e.g. [50, 80, 100])"
        )));
    }
    if rules.forecast_days > 366 {
        return Err(ConfigError::Invalid(
            "alerts.rules.forecast_days must be from 0 (off) to 366".into(),
        ));
    }
    let attempts = raw.attempts.unwrap_or(4);
    if !(1..=10).contains(&attempts) {
        return Err(ConfigError::Invalid(
            "alerts.attempts must be from 1 to 10".into(),
        ));
    }
    Ok(AlertsConfig {
        targets,
        rules,
        interval_ms: positive("alerts.interval_ms", raw.interval_ms.unwrap_or(60_000))?,
        timeout_ms: positive("alerts.timeout_ms", raw.timeout_ms.unwrap_or(10_000))?,
        attempts,
        backoff_ms: raw.backoff_ms.unwrap_or(1_000),
    })
}

fn positive(key: &str, value: u64) -> Result<u64, ConfigError> {
    if value == 0 {
        return Err(ConfigError::Invalid(format!("{key} must be at least 1")));
    }
    Ok(value)
}

fn positive_usize(key: &str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(ConfigError::Invalid(format!("{key} must be at least 1")));
    }
    Ok(value)
}

/// Validates one `console.allowed_hosts` entry: a host name or IP address without scheme, port or
/// path; returns it lowercase (`None` for an empty entry, as a trailing comma leaves).
fn allowed_host(raw: &str) -> Result<Option<String>, ConfigError> {
    let host = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Ok(None);
    }
    let bracketed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
    let name = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    });
    if bracketed || name {
        Ok(Some(host))
    } else {
        Err(ConfigError::Invalid(format!(
            "console.allowed_hosts entry \"{raw}\" must be a host name or IP address such as tc.example.com, 192.0.2.7 or [2001:db8::7], without scheme, port or path"
        )))
    }
}

fn normalize_console_path(path: String) -> Result<String, ConfigError> {
    let trimmed = path.trim().trim_end_matches('/');
    let valid = trimmed.starts_with('/')
        && trimmed.len() > 1
        && !trimmed.starts_with("/api")
        && !trimmed.starts_with("/v1")
        && trimmed
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c));
    if !valid {
        return Err(ConfigError::Invalid(format!(
            "console.path \"{path}\" must start with '/', use letters, digits, '-', '_' or '.', and not be under /api or /v1 (e.g. /console)"
        )));
    }
    Ok(trimmed.to_owned())
}

fn parse_timezone(name: &str) -> Result<jiff::tz::TimeZone, ConfigError> {
    if name.eq_ignore_ascii_case("local") {
        return Ok(jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC));
    }
    jiff::tz::TimeZone::get(name).map_err(|_| {
        ConfigError::Invalid(format!(
            "timezone \"{name}\" is not a known IANA time zone (e.g. Asia/Shanghai, UTC) or \"local\""
        ))
    })
}

fn parse_database_url(url: &str) -> Result<DatabaseUrl, ConfigError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(ConfigError::Invalid(
                "database_url sqlite:// needs a file path, e.g. sqlite://data/token-console.db"
                    .into(),
            ));
        }
        return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        if url.parse::<tokio_postgres::Config>().is_err() {
            return Err(ConfigError::Invalid(format!(
                "database_url \"{}\" is not a valid PostgreSQL URL; use postgres://user:password@host:5432/database",
                redact_url(url)
            )));
        }
        return Ok(DatabaseUrl::Postgres(ServiceUrl::new(url)));
    }
    Err(ConfigError::Invalid(format!(
        "database_url \"{}\" is not supported: use sqlite://path/to/file.db or postgres://user:password@host:5432/database",
        redact_url(url)
    )))
}

fn parse_redis_url(url: Option<String>) -> Result<Option<ServiceUrl>, ConfigError> {
    let Some(url) = url.map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://"))
    {
        return Err(ConfigError::Invalid(format!(
            "redis_url \"{}\" must start with redis:// (e.g. redis://127.0.0.1:6379/0)",
            redact_url(&url)
        )));
    }
    Ok(Some(ServiceUrl::new(url)))
}

/// Hides a password in a URL (`scheme://user:pass@host` → `scheme://user:***@host`).
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn validate_provider(raw: RawProvider) -> Result<ProviderConfig, ConfigError> {
    let name = raw.name.0.trim().to_owned();
    if name.is_empty() {
        return Err(ConfigError::Invalid(
            "providers[].name must not be empty".into(),
        ));
    }
    let base_url = raw.base_url.0.trim().trim_end_matches('/').to_owned();
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        return Err(ConfigError::Invalid(format!(
            "provider {name}: base_url \"{base_url}\" must start with http:// or https://"
        )));
    }
    let models: Vec<String> = raw
        .models
        .map(|m| m.into_iter().map(|p| p.0).collect())
        .unwrap_or_else(|| vec!["*".to_owned()]);
    if models.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "provider {name}: models must list at least one pattern (\"*\" for all)"
        )));
    }
    Ok(ProviderConfig {
        name,
        kind: raw.kind,
        base_url,
        api_key: raw
            .api_key
            .map(|k| Secret::new(k.0))
            .filter(|k| !k.0.is_empty()),
        models,
        connect_timeout_ms: raw.connect_timeout_ms.unwrap_or(10_000),
        first_byte_timeout_ms: raw.first_byte_timeout_ms.unwrap_or(300_000),
        stream_idle_timeout_ms: raw.stream_idle_timeout_ms.unwrap_or(300_000),
        idle_timeout_ms: raw.idle_timeout_ms.unwrap_or(90_000),
    })
}

/// Longest `poll_interval_ms`: CLIProxyAPI keeps queued records 60 s by default.
const MAX_POLL_INTERVAL_MS: u64 = 30_000;

fn validate_sources(raw: Vec<RawSource>) -> Result<Vec<SourceConfig>, ConfigError> {
    let mut out: Vec<SourceConfig> = Vec::with_capacity(raw.len());
    for (i, source) in raw.into_iter().enumerate() {
        let at = |field: &str, what: String| {
            ConfigError::Invalid(format!("sources[{i}].{field}: {what}"))
        };
        let name = source.name.0.trim().to_owned();
        let valid_name = !name.is_empty()
            && name.len() <= MAX_SOURCE_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid_name {
            return Err(at(
                "name",
                format!(
                    "\"{name}\" must be 1 to {MAX_SOURCE_NAME} letters, digits, '.', '_' or '-'"
                ),
            ));
        }
        if name == "gateway" || out.iter().any(|s| s.name == name) {
            return Err(at("name", format!("\"{name}\" is taken (\"gateway\" is the gateway's own calls; names are unique)")));
        }
        let url = source.url.0.trim().trim_end_matches('/').to_owned();
        let valid_url = ["http://", "https://"]
            .iter()
            .any(|scheme| url.len() > scheme.len() && url.starts_with(scheme))
            && url
                .parse::<axum::http::Uri>()
                .is_ok_and(|u| u.host().is_some());
        if !valid_url {
            return Err(at("url", format!("\"{url}\" must be CLIProxyAPI's http:// or https:// address, e.g. http://127.0.0.1:8317")));
        }
        if source.management_key.0.is_empty() {
            return Err(at(
                "management_key",
                "must not be empty: set CLIProxyAPI's remote-management.secret-key here".into(),
            ));
        }
        let poll_interval_ms = source.poll_interval_ms.unwrap_or(1_000);
        if poll_interval_ms == 0 || poll_interval_ms > MAX_POLL_INTERVAL_MS {
            return Err(at("poll_interval_ms", format!("{poll_interval_ms} must be 1 to {MAX_POLL_INTERVAL_MS}: well inside CLIProxyAPI's retention window (60 s by default)")));
        }
        out.push(SourceConfig {
            name,
            kind: source.kind,
            url,
            management_key: Secret::new(source.management_key.0),
            mode: source.mode.unwrap_or(SourceMode::Subscribe),
            poll_interval_ms,
        });
    }
    Ok(out)
}

/// Providers from `OPENAI_API_KEY` / `ANTHROPIC_API_KEY` (and their `*_BASE_URL`) when the file has none.
fn providers_from_env(env: &impl Fn(&str) -> Option<String>) -> Vec<ProviderConfig> {
    let mut providers = Vec::new();
    let defaults = [
        (
            "openai",
            ProviderKind::Openai,
            "OPENAI",
            "https://api.openai.com/v1",
        ),
        (
            "anthropic",
            ProviderKind::Anthropic,
            "ANTHROPIC",
            "https://api.anthropic.com",
        ),
    ];
    for (name, kind, prefix, default_url) in defaults {
        let Some(key) = env(&format!("{prefix}_API_KEY")).filter(|k| !k.is_empty()) else {
            continue;
        };
        let base_url = env(&format!("{prefix}_BASE_URL"))
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| default_url.to_owned());
        providers.push(ProviderConfig {
            name: name.to_owned(),
            kind,
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key: Some(Secret::new(key)),
            models: vec!["*".to_owned()],
            connect_timeout_ms: 10_000,
            first_byte_timeout_ms: 300_000,
            stream_idle_timeout_ms: 300_000,
            idle_timeout_ms: 90_000,
        });
    }
    providers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> Cli {
        Cli::parse_from(["token-console"])
    }

    #[test]
    fn expands_environment_variables() {
        let lookup = |name: &str| (name == "A").then(|| "x".to_owned());
        let cases = [
            ("plain", Ok("plain".to_owned())),
            ("${A}", Ok("x".to_owned())),
            ("pre-${A}-post", Ok("pre-x-post".to_owned())),
            ("${A}${A}", Ok("xx".to_owned())),
        ];
        for (input, want) in cases {
            assert_eq!(expand_env(input, lookup), want, "{input}");
        }
        for bad in ["${B}", "${A", "${}"] {
            assert!(expand_env(bad, lookup).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_follow_the_guide() {
        let config = Config::from_yaml("", &cli()).unwrap();
        assert_eq!(config.port, 8317);
        assert_eq!(config.host, "127.0.0.1");
        assert_eq!(config.console.path, "/console");
        assert_eq!(config.console.max_logs, 1000);
        assert_eq!(config.console.max_keys, 100);
        assert!(config.console.enabled);
        assert!(config.console.separate_port.is_none());
        assert_eq!(config.total_tokens, None);
        assert_eq!(
            config.database,
            DatabaseUrl::Sqlite(PathBuf::from("data/token-console.db"))
        );
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let err = Config::from_yaml("port: 1\nconsole:\n  max_log: 5\n", &cli()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("max_log"), "{text}");
        assert!(text.contains('3'), "{text}");
    }

    #[test]
    fn pricing_overrides_are_read_and_their_errors_name_the_line() {
        let yaml = "pricing:\n  models:\n    - match: \"gpt-4o-mini*\"\n      input: 0.15\n      output: 0.60\n      cache_read: 0.075\n      cache_write: 0.1875\n    - match: \"claude-sonnet-4-5*\"\n      input: 2.4\n      output: 12\n      from: 2026-12-01\n  display_currency: CNY\n  display_rate: 7.1\n";
        let config = Config::from_yaml(yaml, &cli()).unwrap();
        let o = &config.pricing.overrides;
        assert_eq!(o.len(), 2);
        assert_eq!(
            o[0].prices.cache_write,
            Some(crate::pricing::Tiered::flat(187_500_000))
        );
        assert_eq!(o[1].from, Some("2026-12-01T00:00:00Z".parse().unwrap()));
        assert_eq!(config.pricing.display, Some(("CNY".into(), 7.1)));
        let cases = [
            ("pricing:\n  models:\n    - match: a\n      input: 1\n      output: 1\n      cached: 1\n", &["cached", "line 6"][..]),
            ("pricing:\n  models:\n    - match: a\n      input: -1\n      output: 1\n", &["pricing.models[0].input (line 4)", "non-negative"]),
            ("pricing:\n  models:\n    - match: a\n      input: 1\n      output: 1\n      from: yesterday\n", &["pricing.models[0].from (line 6)", "yesterday"]),
            ("pricing:\n  models:\n    - match: a\n      input: 1\n      output: 1\n    - match: a\n      input: 2\n      output: 2\n", &["pricing.models[1] (line 6)", "repeats pricing.models[0]"]),
            ("pricing:\n  colour: red\n", &["colour", "line 2"]),
            ("pricing:\n  display_currency: CNY\n", &["display_rate", "line 2"]),
            ("pricing:\n  models:\n    - match: a\n      output: 1\n", &["input"]),
        ];
        for (yaml, wants) in cases {
            let text = Config::from_yaml(yaml, &cli()).unwrap_err().to_string();
            for want in wants {
                assert!(text.contains(want), "{yaml}: {text}");
            }
        }
        // The same match with another `from` is a price change, not a duplicate.
        let changed = "pricing:\n  models:\n    - match: a\n      input: 1\n      output: 1\n    - match: a\n      input: 2\n      output: 2\n      from: 2026-12-01T08:00:00+08:00\n";
        assert!(Config::from_yaml(changed, &cli()).is_ok());
    }

    #[test]
    fn sources_are_validated_and_name_their_field() {
        let ok = "sources:\n  - name: cpa\n    kind: cliproxyapi\n    url: http://127.0.0.1:8318/\n    management_key: secret\n";
        let config = Config::from_yaml(ok, &cli()).unwrap();
        assert_eq!(config.sources.len(), 1);
        assert_eq!(config.sources[0].url, "http://127.0.0.1:8318");
        assert_eq!(config.sources[0].mode, SourceMode::Subscribe);
        assert_eq!(config.sources[0].poll_interval_ms, 1_000);
        assert!(!format!("{:?}", config.sources[0]).contains("secret"));
        let unknown = Config::from_yaml(&format!("{ok}    poll_every: 5\n"), &cli()).unwrap_err();
        let text = unknown.to_string();
        assert!(text.contains("poll_every") && text.contains('6'), "{text}");
        let cases = [
            (ok.replace("cpa", "bad name"), "sources[0].name"),
            (ok.replace("cpa", "gateway"), "sources[0].name"),
            (
                ok.replace("http://127.0.0.1:8318/", "127.0.0.1:8318"),
                "sources[0].url",
            ),
            (ok.replace("secret", "''"), "sources[0].management_key"),
            (
                format!("{ok}    poll_interval_ms: 0\n"),
                "sources[0].poll_interval_ms",
            ),
            (format!("{ok}{}", &ok["sources:\n".len()..]), "is taken"),
        ];
        for (yaml, want) in cases {
            let text = Config::from_yaml(&yaml, &cli()).unwrap_err().to_string();
            assert!(text.contains(want), "{yaml}: {text}");
        }
        let mode = Config::from_yaml(
            &ok.replace("kind: cliproxyapi", "kind: cliproxyapi\n    mode: sideways"),
            &cli(),
        );
        assert!(mode.unwrap_err().to_string().contains("sideways"));
    }

    #[test]
    fn the_ingest_key_is_long_and_not_the_admin_key() {
        let same = "console: {admin_key: aaaaaaaaaaaaaaaaaaaa, ingest_key: aaaaaaaaaaaaaaaaaaaa}";
        assert!(Config::from_yaml(same, &cli())
            .unwrap_err()
            .to_string()
            .contains("differ"));
        let short = "console: {ingest_key: short}";
        assert!(Config::from_yaml(short, &cli())
            .unwrap_err()
            .to_string()
            .contains("16"));
        let ok = "console: {ingest_key: bbbbbbbbbbbbbbbbbbbb}";
        assert!(Config::from_yaml(ok, &cli())
            .unwrap()
            .console
            .ingest_key
            .is_some());
    }

    #[test]
    fn flags_override_the_file() {
        let mut cli = cli();
        cli.port = Some(9000);
        let config = Config::from_yaml("port: 1234\nconsole: {port: 1234}\n", &cli).unwrap();
        assert_eq!(config.port, 9000);
        assert_eq!(config.console.separate_port, Some(1234));
    }

    #[test]
    fn rejects_bad_values() {
        for yaml in [
            "console: {max_logs: 0}",
            "console: {path: 'no-slash'}",
            "timezone: Mars/Olympus",
            "database_url: mysql://x",
            "providers: [{name: a, kind: openai, base_url: 'ftp://x'}]",
            "providers: [{name: a, kind: gemini, base_url: 'http://x'}]",
        ] {
            assert!(Config::from_yaml(yaml, &cli()).is_err(), "{yaml}");
        }
    }

    #[test]
    fn budget_periods_money_and_the_test_clock_are_read_and_checked() {
        let config = Config::from_yaml(
            "quota: {total_tokens: 10, total_cost: 2.5, limit_period: week}",
            &cli(),
        )
        .unwrap();
        assert_eq!(config.limit_period, Some(crate::clock::Period::Week));
        assert_eq!(config.total_cost_nanos, Some(2_500_000_000));
        assert_eq!(config.test_now, None);
        for (yaml, named) in [
            ("quota: {limit_period: year}", "quota.limit_period"),
            ("quota: {total_cost: -1}", "quota.total_cost"),
        ] {
            let e = Config::from_yaml(yaml, &cli()).unwrap_err().to_string();
            assert!(
                e.contains(named) && e.contains("year") == yaml.contains("year"),
                "{e}"
            );
        }
        let mut test_clock = cli();
        test_clock.test_now = Some("2026-01-31T23:58:00+08:00".into());
        let config = Config::from_yaml("", &test_clock).unwrap();
        assert_eq!(
            config.test_now,
            Some("2026-01-31T15:58:00Z".parse().unwrap())
        );
        test_clock.test_now = Some("yesterday".into());
        let e = Config::from_yaml("", &test_clock).unwrap_err().to_string();
        assert!(e.contains("CONSOLE_TEST_NOW"), "{e}");
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret::new("sk-very-secret");
        assert!(!format!("{secret:?}").contains("very"));
    }

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(
            redact_url("postgres://u:p@h/db"),
            "postgres://u:***@h/db".to_owned()
        );
        assert_eq!(
            redact_url("postgres://u:p@ss@h/db"),
            "postgres://u:***@h/db".to_owned()
        );
    }

    #[test]
    fn postgres_and_redis_urls_never_print_their_password() {
        let mut cli = cli();
        cli.redis_url = Some("redis://:hunter22@127.0.0.1:6379/0".into());
        let config = Config::from_yaml(
            "database_url: postgres://tc:s3cret-pw@db.internal:5432/tc\n",
            &cli,
        )
        .unwrap();
        let DatabaseUrl::Postgres(url) = &config.database else {
            panic!("not postgres: {:?}", config.database);
        };
        assert_eq!(url.expose(), "postgres://tc:s3cret-pw@db.internal:5432/tc");
        let shown = format!("{config:?} {url}");
        assert!(
            !shown.contains("s3cret-pw") && !shown.contains("hunter22"),
            "{shown}"
        );
        let err = Config::from_yaml("database_url: mysql://u:s3cret-pw@h/db\n", &cli)
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("s3cret-pw") && err.contains("postgres://"),
            "{err}"
        );
        let err = Config::from_yaml("redis_url: http://u:s3cret-pw@h\n", &self::cli())
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("s3cret-pw") && err.contains("redis_url"),
            "{err}"
        );
    }

    #[test]
    fn allowed_hosts_and_admin_key_length_are_checked() {
        let config = Config::from_yaml(
            "console: {allowed_hosts: [TC.Example.com., '[::1]', '']}\n",
            &cli(),
        )
        .unwrap();
        assert_eq!(config.console.allowed_hosts, ["tc.example.com", "[::1]"]);
        for bad in ["http://tc.example.com", "tc.example.com:8317", "*", "a/b"] {
            let yaml = format!("console: {{allowed_hosts: ['{bad}']}}\n");
            let err = Config::from_yaml(&yaml, &cli()).unwrap_err().to_string();
            assert!(err.contains("console.allowed_hosts"), "{bad}: {err}");
        }
        let mut from_env = cli();
        from_env.console_allowed_hosts = Some(vec!["tc.internal".into()]);
        let config = Config::from_yaml("", &from_env).unwrap();
        assert_eq!(config.console.allowed_hosts, ["tc.internal"]);
        let err = Config::from_yaml("console: {admin_key: fifteen-chars!!}\n", &cli())
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 16"), "{err}");
        assert!(Config::from_yaml("console: {admin_key: sixteen-chars!!!}\n", &cli()).is_ok());
        let err = Config::from_yaml("console: {allowed_host: [x]}\n", &cli())
            .unwrap_err()
            .to_string();
        assert!(err.contains("allowed_host"), "{err}");
    }

    #[test]
    fn otel_is_off_by_default_and_its_section_is_validated() {
        assert!(Config::from_yaml("", &cli()).unwrap().otel.is_none());
        let config = Config::from_yaml(
            "otel:\n  endpoint: http://127.0.0.1:4318/\n  headers: {x-api-key: s3cret}\n",
            &cli(),
        )
        .unwrap();
        let otel = config.otel.unwrap();
        assert_eq!(otel.endpoint, "http://127.0.0.1:4318");
        assert_eq!(otel.export_interval_ms, 5_000);
        assert_eq!(otel.headers[0].0, "x-api-key");
        assert_eq!(otel.headers[0].1.expose(), "s3cret");
        assert!(
            !format!("{otel:?}").contains("s3cret"),
            "headers never print"
        );
        let cases = [
            ("otel: {endpoint: localhost:4318}\n", "otel.endpoint"),
            ("otel: {endpoint: 'http://'}\n", "otel.endpoint"),
            (
                "otel: {endpoint: 'http://h', export_interval_ms: 0}\n",
                "export_interval_ms",
            ),
            (
                "otel: {endpoint: 'http://h', headers: {'a b': x}}\n",
                "otel.headers",
            ),
            ("otel: {endpoint: 'http://h', protocol: grpc}\n", "protocol"),
            ("otel: {}\n", "endpoint"),
        ];
        for (yaml, named) in cases {
            let err = Config::from_yaml(yaml, &cli()).unwrap_err().to_string();
            assert!(err.contains(named), "{yaml}: {err}");
        }
    }

    #[test]
    fn alerts_are_off_by_default_and_their_section_is_validated() {
        assert!(Config::from_yaml("", &cli()).unwrap().alerts.is_none());
        let yaml = "alerts:\n  targets:\n    - {kind: webhook, url: 'http://127.0.0.1:9/hook'}\n    - {kind: feishu, url: 'https://open.feishu.cn/x', secret: s3cret}\n  rules: {budget_percent: [80], forecast_days: 0}\n";
        let alerts = Config::from_yaml(yaml, &cli()).unwrap().alerts.unwrap();
        assert_eq!(alerts.targets[0].name, "webhook-1");
        assert_eq!(alerts.targets[1].kind, TargetKind::Feishu);
        assert_eq!(alerts.rules.budget_percent, [80]);
        assert_eq!(alerts.rules.forecast_days, 0);
        assert!(alerts.rules.anomalies && alerts.rules.recorder_degraded);
        assert_eq!((alerts.interval_ms, alerts.attempts), (60_000, 4));
        assert!(
            !format!("{alerts:?}").contains("s3cret"),
            "secrets never print"
        );
        // A URL that is not http(s) names its line (the fourth).
        let err = Config::from_yaml(
            "port: 1\nalerts:\n  targets:\n    - {kind: slack, url: 'ftp://x/y'}\n",
            &cli(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("http://") && err.contains("line 4"), "{err}");
        let cases = [
            ("alerts: {targets: [{kind: pager, url: 'http://x'}]}\n", "pager"),
            ("alerts: {targets: [], rule: {}}\n", "rule"),
            ("alerts: {targets: [{kind: slack, url: 'http://x', secret: a}]}\n", "secret"),
            ("alerts: {targets: [], rules: {budget_percent: [0]}}\n", "budget_percent"),
            ("alerts: {targets: [], attempts: 0}\n", "attempts"),
            (
                "alerts: {targets: [{kind: slack, url: 'http://x', name: a}, {kind: slack, url: 'http://y', name: a}]}\n",
                "unique",
            ),
        ];
        for (yaml, named) in cases {
            let err = Config::from_yaml(yaml, &cli()).unwrap_err().to_string();
            assert!(err.contains(named), "{yaml}: {err}");
        }
    }
}
