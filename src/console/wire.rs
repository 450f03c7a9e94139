//! The console API's JSON shapes: the guide's field names exactly, plus the additions of SPEC §5.
//! Only these types (and request bodies) derive serde; the rest of the program never does.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

pub use crate::alerts::payload::{round2, AlertPayload, AnomalyFigures};
pub use crate::clock::rfc3339;
use crate::insights::budgets::BudgetUse;
use crate::pricing::{usd, CostStatus};
use crate::store::{Aggregate, AlertHeading, AlertRow, Delivery, KeyRow};
use crate::usage::LoggedCall;

/// The guide's "never used" timestamp.
pub const NEVER: &str = "0001-01-01T00:00:00Z";

/// Success envelope: `{"code":0,"data":…}`.
#[derive(Serialize, ToSchema)]
pub struct Envelope<T: Serialize> {
    /// Always 0.
    #[schema(minimum = 0, maximum = 0)]
    pub code: u16,
    /// The payload.
    pub data: T,
}

/// Failure envelope: `{"code":<HTTP status>,"msg":…}`, the message saying what to do.
#[derive(Serialize, ToSchema)]
pub struct Failure {
    /// The HTTP status.
    #[schema(minimum = 400, maximum = 599)]
    pub code: u16,
    /// What went wrong and what to do.
    pub msg: String,
}

impl<T: Serialize> Envelope<T> {
    /// Wraps data.
    pub fn ok(data: T) -> Self {
        Self { code: 0, data }
    }
}

/// Success envelope with a message and no data: `{"code":0,"msg":…}`.
#[derive(Serialize, ToSchema)]
pub struct Done {
    /// Always 0.
    #[schema(minimum = 0, maximum = 0)]
    pub code: u16,
    /// What happened.
    pub msg: &'static str,
}

/// Latency quantiles in milliseconds (`null` without calls).
#[derive(Serialize, Clone, Copy, ToSchema)]
pub struct Latency {
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

/// One row of the per-model table.
#[derive(Serialize, Clone, ToSchema)]
pub struct ModelStats {
    /// Model name.
    pub name: String,
    /// Calls.
    pub call_count: u64,
    /// Total tokens.
    pub token_count: u64,
    /// Average duration, ms, 2 decimals.
    pub avg_time: f64,
    /// Share of 2xx calls, %, 2 decimals.
    pub success_rate: f64,
    /// 2xx calls.
    pub success_count: u64,
    /// Other calls.
    pub error_count: u64,
    /// Input tokens.
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Latency quantiles.
    pub latency_ms: Latency,
    /// Cost of its priced calls in USD; `null` when none of its calls could be priced.
    pub cost: Option<f64>,
    /// The same in nano-dollars (10⁻⁹ USD), exact.
    pub cost_nanos: Option<u64>,
    /// Its calls that spent tokens without a known price (not in `cost`).
    pub unpriced_calls: u64,
}

/// The cost of an aggregate for the wire: `null` when it holds unpriced calls and nothing priced.
pub fn aggregate_cost(agg: &Aggregate) -> Option<u64> {
    (agg.unpriced_calls == 0 || agg.cost_nanos > 0).then_some(agg.cost_nanos)
}

/// The page's second currency: `pricing.display_currency` and its units per USD.
#[derive(Serialize, Clone, ToSchema)]
pub struct DisplayCurrency {
    /// ISO 4217 code, e.g. `CNY`.
    pub code: String,
    /// Units of it per USD.
    pub rate: f64,
}

/// `GET /api/console/stats`.
#[derive(Serialize, Clone, ToSchema)]
pub struct Stats {
    /// The budget; `null` when unlimited.
    pub total_tokens: Option<u64>,
    /// Tokens used by recorded calls.
    pub used_tokens: u64,
    /// Budget left; `null` when unlimited.
    pub remaining_tokens: Option<u64>,
    /// Used share of the budget, %; `null` when unlimited.
    pub usage_percent: Option<f64>,
    /// How often the budget resets (`day`, `week`, `month`); `null`: never. With a period,
    /// `remaining_tokens` and `usage_percent` are of the current period.
    pub limit_period: Option<String>,
    /// Tokens used by recorded calls in the budget's current period (all time when it never
    /// resets).
    pub period_used: u64,
    /// When the current period ends and the budget starts again from nothing; `null`: never.
    pub period_resets_at: Option<String>,
    /// The global money budget (`quota.total_cost`), USD; `null` when unlimited (or with
    /// `key_id`: the key's `cost_limit`).
    pub cost_limit: Option<f64>,
    /// Spent by priced calls in the budget's current period, USD (all time when it never
    /// resets).
    pub period_cost: f64,
    /// Calls (`count_tokens` calls not included).
    pub api_call_count: u64,
    /// `count_tokens` calls, counted apart from the calls.
    pub count_tokens_calls: u64,
    /// 2xx calls.
    pub success_count: u64,
    /// Other calls.
    pub error_count: u64,
    /// Input tokens.
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Cache-read input tokens.
    pub cache_read_tokens: u64,
    /// Cache-creation input tokens.
    pub cache_creation_tokens: u64,
    /// Reasoning output tokens.
    pub reasoning_tokens: u64,
    /// Average duration of all calls, ms.
    pub avg_time: f64,
    /// Latency quantiles over all calls.
    pub latency_ms: Latency,
    /// Per model, most calls first.
    pub models: Vec<ModelStats>,
    /// Cost of the priced calls in USD.
    pub total_cost: f64,
    /// The same in nano-dollars (10⁻⁹ USD), exact.
    pub total_cost_nanos: u64,
    /// Calls that spent tokens on a model without a known price (their cost is not in
    /// `total_cost`).
    pub unpriced_calls: u64,
    /// The second currency the page shows costs in, when configured.
    pub display_currency: Option<DisplayCurrency>,
    /// The budget's recent spend rate and when it runs out at that rate; `null` for one
    /// source's figures (`source=`: budgets count every source).
    pub forecast: Option<Forecast>,
}

/// A budget's forecast: the rate it was spent at over the last days, and when it runs out at
/// that rate.
#[derive(Serialize, Clone, ToSchema)]
pub struct Forecast {
    /// Tokens a day over the window, 2 decimals.
    pub rate_per_day: f64,
    /// When the budget runs out at that rate; `null` when unlimited or nothing is spent; now
    /// when it is used up.
    pub runs_out_at: Option<String>,
    /// The span the rate was measured over, in days (7, or less for a budget first spent from
    /// within the last 7 days, but at least 1), 2 decimals.
    pub window_days: f64,
    /// The budget's period (`total`: all-time).
    pub period: String,
}

impl Forecast {
    /// The forecast of a budget.
    pub fn new(budget: &BudgetUse) -> Self {
        Self {
            rate_per_day: round2(budget.forecast.rate_per_day),
            runs_out_at: budget.forecast.runs_out_at.map(rfc3339),
            window_days: round2(budget.forecast.window_days),
            period: budget.period.clone(),
        }
    }
}

/// One alert of `GET /api/console/alerts`, with its deliveries.
#[derive(Serialize, Clone, ToSchema)]
pub struct AlertView {
    /// Row id.
    pub id: i64,
    /// What it is about.
    #[serde(flatten)]
    pub heading: AlertHeading,
    /// When it was raised.
    pub created_at: String,
    /// The instance that raised and delivered it.
    pub instance: String,
    /// The generic webhook's JSON, as sent.
    pub payload: AlertPayload,
    /// One per target: `pending` (being tried), `sent`, `failed` (after the last try) or
    /// `skipped`.
    pub deliveries: Vec<Delivery>,
}

impl AlertView {
    /// The view of a stored alert; a payload that does not parse (written by a newer version)
    /// leaves the alert out.
    pub fn new(row: &AlertRow) -> Option<Self> {
        let a = &row.alert;
        Some(Self {
            id: row.id,
            heading: a.heading.clone(),
            created_at: rfc3339(a.created_at),
            instance: a.instance.clone(),
            payload: serde_json::from_str(&a.payload).ok()?,
            deliveries: a.deliveries.clone(),
        })
    }
}

/// `GET /api/console/usage-trend`.
#[derive(Serialize, Clone, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Trend {
    /// `MM-DD` per day, oldest first.
    pub labels: Vec<String>,
    /// Tokens per day.
    pub token_data: Vec<u64>,
    /// Calls per day.
    pub call_data: Vec<u64>,
    /// Cost of the priced calls per day, USD.
    pub cost_data: Vec<f64>,
    /// `YYYY-MM-DD` per day.
    pub dates: Vec<String>,
    /// The time zone the days are cut in.
    pub timezone: String,
}

/// One row of `GET /api/console/logs` and of the live stream.
#[derive(Serialize, Clone, ToSchema)]
pub struct LogRow {
    /// Row id.
    pub id: i64,
    /// When the call arrived.
    pub timestamp: String,
    /// HTTP method.
    pub method: String,
    /// Path.
    pub endpoint: String,
    /// Status sent.
    pub status: u16,
    /// Total tokens.
    pub tokens: u64,
    /// Duration, ms.
    pub duration: u64,
    /// Model.
    pub model: String,
    /// Key id.
    pub key_id: Option<i64>,
    /// Key name at the time of the call.
    pub key_name: Option<String>,
    /// Input tokens.
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Cache-read tokens.
    pub cache_read_tokens: u64,
    /// Cache-creation tokens.
    pub cache_creation_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
    /// Streamed answer.
    pub stream: bool,
    /// Time to first token, ms.
    pub ttft: Option<u64>,
    /// Tokens estimated by the gateway.
    pub estimated: bool,
    /// Failure description.
    pub error: Option<String>,
    /// Client family from the `User-Agent` (`claude-cli`, `codex`, …, `other`; empty: none sent).
    pub client: String,
    /// Session id the client sent, if any.
    pub session_id: Option<String>,
    /// End user the call was made for (`x-token-console-user`, `safety_identifier`, `user` or
    /// `metadata.user_id`), if any.
    pub user: Option<String>,
    /// Configured provider that served the call; empty when none did.
    pub provider: String,
    /// Where the record came from: `gateway`, or an ingested source's name.
    pub source: String,
    /// The model name the client asked for when it was mapped to `model` (an ingested record's
    /// `alias`; the gateway never renames a model, so its own calls have `null`).
    pub alias: Option<String>,
    /// The reasoning effort the request asked for (`reasoning_effort` or `reasoning.effort`;
    /// e.g. `low`, `high`), at most 32 bytes; `null` when none.
    pub reasoning_effort: Option<String>,
    /// The service tier the request asked for (`service_tier`; e.g. `auto`, `flex`,
    /// `priority`), at most 32 bytes; `null` when none.
    pub service_tier: Option<String>,
    /// Cost in USD; `null` when no price is known for the model (`cost_status` `unpriced`).
    pub cost: Option<f64>,
    /// The same in nano-dollars (10⁻⁹ USD), exact.
    pub cost_nanos: Option<u64>,
    /// `priced` (from the tokens the provider reported), `estimated` (from the gateway's token
    /// estimate) or `unpriced`.
    #[schema(value_type = String, pattern = "^(priced|estimated|unpriced)$")]
    pub cost_status: &'static str,
}

impl From<&LoggedCall> for LogRow {
    fn from(logged: &LoggedCall) -> Self {
        let c = &logged.call;
        Self {
            id: logged.id,
            timestamp: rfc3339(c.ts),
            method: c.method.clone(),
            endpoint: c.endpoint.clone(),
            status: c.status,
            tokens: c.tokens.total,
            duration: c.duration_ms,
            model: c.model.clone(),
            key_id: c.key_id,
            key_name: c.key_name.clone(),
            prompt_tokens: c.tokens.prompt,
            completion_tokens: c.tokens.completion,
            cache_read_tokens: c.tokens.cache_read,
            cache_creation_tokens: c.tokens.cache_creation,
            reasoning_tokens: c.tokens.reasoning,
            stream: c.stream,
            ttft: c.ttft_ms,
            estimated: c.estimated,
            error: c.error.clone(),
            client: c.client.clone(),
            session_id: c.session_id.clone(),
            user: c.user.clone(),
            provider: c.provider.clone(),
            source: c.source.clone(),
            alias: c.alias.clone(),
            reasoning_effort: c.reasoning_effort.clone(),
            service_tier: c.service_tier.clone(),
            cost: c.cost_nanos.map(usd),
            cost_nanos: c.cost_nanos,
            cost_status: cost_status(c.cost_status),
        }
    }
}

/// `GET /api/console/usage`: usage broken down by one or two dimensions.
#[derive(Serialize, ToSchema)]
pub struct Usage {
    /// The dimensions of the rows, in order (each row fills these and leaves the others `null`).
    pub group_by: Vec<String>,
    /// What the rows are ordered by, largest first: `tokens`, `calls` or `errors`.
    pub order_by: String,
    /// The time zone days are cut in.
    pub timezone: String,
    /// At most `limit` rows.
    pub rows: Vec<UsageRow>,
}

/// One row of `GET /api/console/usage`: a value (or a pair of values) of `group_by` and the usage
/// of its calls. Dimensions not grouped by are `null`; an empty text is the calls that had none
/// (no end user named, no `User-Agent`, no provider reached).
#[derive(Serialize, ToSchema)]
pub struct UsageRow {
    /// Key id (0: calls without a valid key).
    pub key_id: Option<i64>,
    /// The key's name (`null` for key 0 or when not grouped by key).
    pub key_name: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// End user; `(other)` holds the users beyond a day's `console.usage_user_cap`.
    pub user: Option<String>,
    /// Client family.
    pub client: Option<String>,
    /// Configured provider that served the calls.
    pub provider: Option<String>,
    /// Source: `gateway` or an ingested source.
    pub source: Option<String>,
    /// Request path.
    pub endpoint: Option<String>,
    /// Local day, `YYYY-MM-DD`.
    pub day: Option<String>,
    /// UTC hour, its start as RFC 3339.
    pub hour: Option<String>,
    /// Calls (`count_tokens` calls not included).
    pub calls: u64,
    /// Calls that did not answer 2xx.
    pub errors: u64,
    /// `count_tokens` calls, counted apart.
    pub count_tokens_calls: u64,
    /// Input tokens (uncached + cache read + cache write).
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Cache-read input tokens.
    pub cache_read_tokens: u64,
    /// Cache-write input tokens.
    pub cache_creation_tokens: u64,
    /// Reasoning output tokens.
    pub reasoning_tokens: u64,
    /// Total tokens.
    pub total_tokens: u64,
    /// Average duration, ms, 2 decimals (0 without calls).
    pub avg_latency_ms: f64,
    /// 95th percentile of the duration, ms, from the latency histogram; `null` without calls.
    pub p95_latency_ms: Option<f64>,
    /// Cost of the priced calls, USD.
    pub cost: f64,
    /// The same in nano-dollars (10⁻⁹ USD), exact.
    pub cost_nanos: u64,
    /// Calls that spent tokens without a known price (not in `cost`).
    pub unpriced_calls: u64,
}

/// `GET /api/console/export?format=json`: what the console shows, then every call still kept.
#[derive(Serialize, ToSchema)]
pub struct Export {
    /// When the export was made.
    pub exported_at: String,
    /// The statistics over all calls.
    pub stats: Stats,
    /// The last 90 days.
    pub trend: Trend,
    /// The per-model table.
    pub models: Vec<ModelStats>,
    /// The keys with their usage.
    pub keys: Vec<KeyView>,
    /// Every call still kept, newest first (streamed page by page; the last field).
    pub logs: Vec<LogRow>,
}

/// One key of `GET /api/console/keys` (and of the create call, with the full value).
#[derive(Serialize, Clone, ToSchema)]
pub struct KeyView {
    /// Row id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Display form, or the full key in the create call's answer only.
    pub value: String,
    /// Creation time.
    pub created_at: String,
    /// Last call, or `0001-01-01T00:00:00Z`.
    pub last_used: String,
    /// Enabled.
    pub enabled: bool,
    /// Token limit.
    pub token_limit: Option<u64>,
    /// Requests-per-minute limit.
    pub rpm_limit: Option<u32>,
    /// Allowed model patterns.
    pub allowed_models: Option<Vec<String>>,
    /// Expiry.
    pub expires_at: Option<String>,
    /// Whether `max_tokens` is lowered to what is left of a budget instead of refusing.
    pub fit_max_tokens: bool,
    /// Tokens used by recorded calls.
    pub used_tokens: u64,
    /// Recorded calls.
    pub call_count: u64,
    /// Spent by its priced calls, USD.
    pub cost: f64,
    /// The same in nano-dollars (10⁻⁹ USD), exact.
    pub cost_nanos: u64,
    /// Its calls that spent tokens without a known price (not in `cost`).
    pub unpriced_calls: u64,
    /// Money limit, USD; `null`: unlimited.
    pub cost_limit: Option<f64>,
    /// The same in nano-dollars (10⁻⁹ USD), exact.
    pub cost_limit_nanos: Option<u64>,
    /// How often the token and money limits reset (`day`, `week`, `month`, in the configured
    /// time zone); `null`: never.
    pub limit_period: Option<String>,
    /// Tokens used by recorded calls in the current period (all time when it never resets).
    pub period_used: u64,
    /// What is left of the token limit in the current period; `null` without a limit.
    pub period_left: Option<u64>,
    /// Spent by priced calls in the current period, USD (all time when it never resets).
    pub period_cost: f64,
    /// What is left of the money limit in the current period, USD; `null` without a limit.
    pub period_cost_left: Option<f64>,
    /// When the current period ends and the limit starts again from nothing; `null`: never.
    pub period_resets_at: Option<String>,
    /// The key's budget's forecast.
    pub forecast: Forecast,
}

/// A budget's current period as the console shows it: the tokens recorded in it and when it
/// ends (`None`: the budget never resets, and `used` is all time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeriodUse {
    /// Tokens recorded in the period.
    pub used: u64,
    /// Nano-dollars of the priced calls recorded in the period.
    pub cost_nanos: u64,
    /// When it ends.
    pub resets_at: Option<jiff::Timestamp>,
}

fn cost_status(status: CostStatus) -> &'static str {
    status.as_str()
}

impl KeyView {
    /// The view of a stored key with its recorded usage (none: no call yet) and what it used in
    /// the current period of its limit; `value` is the display form.
    pub fn new(
        row: &KeyRow,
        usage: Option<&Aggregate>,
        period: PeriodUse,
        forecast: Forecast,
    ) -> Self {
        let usage = usage.copied().unwrap_or_default();
        Self {
            id: row.id,
            name: row.name.clone(),
            description: row.description.clone(),
            value: row.display.clone(),
            created_at: rfc3339(row.created_at),
            last_used: row
                .last_used
                .map(rfc3339)
                .unwrap_or_else(|| NEVER.to_owned()),
            enabled: row.enabled,
            token_limit: row.token_limit,
            rpm_limit: row.rpm_limit,
            allowed_models: row.allowed_models.clone(),
            expires_at: row.expires_at.map(rfc3339),
            fit_max_tokens: row.fit_max_tokens,
            used_tokens: usage.tokens.total,
            call_count: usage.calls,
            cost: usd(usage.cost_nanos),
            cost_nanos: usage.cost_nanos,
            unpriced_calls: usage.unpriced_calls,
            limit_period: row.limit_period.map(|p| p.name().to_owned()),
            period_used: period.used,
            period_left: row.token_limit.map(|l| l.saturating_sub(period.used)),
            period_cost: usd(period.cost_nanos),
            period_cost_left: row
                .cost_limit_nanos
                .map(|l| usd(l.saturating_sub(period.cost_nanos))),
            cost_limit: row.cost_limit_nanos.map(usd),
            cost_limit_nanos: row.cost_limit_nanos,
            period_resets_at: period.resets_at.map(rfc3339),
            forecast,
        }
    }
}

/// `POST /api/console/keys` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Required, 1–64 characters after trimming.
    #[schema(min_length = 1, max_length = 64, pattern = r"\S")]
    pub name: String,
    /// Optional, up to 1,000 characters.
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub description: Option<String>,
    /// How often the key's token limit resets: `day`, `week` or `month` in the configured time
    /// zone; absent or `null`: never.
    #[serde(default)]
    pub limit_period: Option<LimitPeriod>,
}

/// How often a budget resets, at midnight in the configured time zone.
#[derive(Deserialize, Clone, Copy, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LimitPeriod {
    /// Every day.
    Day,
    /// Every Monday.
    Week,
    /// On the first of every month.
    Month,
}

impl From<LimitPeriod> for crate::clock::Period {
    fn from(period: LimitPeriod) -> Self {
        match period {
            LimitPeriod::Day => Self::Day,
            LimitPeriod::Week => Self::Week,
            LimitPeriod::Month => Self::Month,
        }
    }
}

/// `POST /api/console/reprice` body.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepriceBody {
    /// Only calls at or after this RFC 3339 instant (a date such as `2026-12-01`, midnight UTC,
    /// is accepted too); absent or `null`: every call.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub from: Option<String>,
}

/// What `POST /api/console/reprice` changed.
#[derive(Serialize, Clone, ToSchema)]
pub struct RepriceDone {
    /// Hours of recorded calls repriced.
    pub hours: u64,
    /// Stored calls whose cost changed.
    pub calls_changed: u64,
    /// Hourly aggregates summed exactly from their stored calls.
    pub exact_aggregates: u64,
    /// Hourly aggregates priced from their summed tokens (their calls were trimmed by
    /// `max_logs`): exact for flat prices up to half a nano-dollar per call.
    pub approximate_aggregates: u64,
    /// Change of the total cost, USD.
    pub cost_delta: f64,
    /// The same in nano-dollars.
    pub cost_delta_nanos: i64,
    /// One line saying all this.
    pub summary: String,
}

/// `PATCH /api/console/keys/{id}` body; an absent field is left alone, `null` clears a limit.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchKey {
    /// New name, 1–64 characters after trimming.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = String, min_length = 1, max_length = 64, pattern = r"\S")]
    pub name: Option<String>,
    /// New description.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = String, max_length = 1000)]
    pub description: Option<String>,
    /// Enable or disable.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = bool)]
    pub enabled: Option<bool>,
    /// Token limit, or `null` for none (at most 2^63 − 1, what the store can hold).
    #[serde(default, deserialize_with = "present_u64")]
    #[schema(value_type = Option<u64>, minimum = 0)]
    pub token_limit: Option<Option<u64>>,
    /// RPM limit, or `null` for none.
    #[serde(default, deserialize_with = "present_u32")]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 4294967295.0)]
    pub rpm_limit: Option<Option<u32>>,
    /// Allowed model patterns (globs such as `gpt-4o*`), or `null` for all.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<ModelPattern>>)]
    pub allowed_models: Option<Option<Vec<String>>>,
    /// Expiry (RFC 3339), or `null` for none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Option<String>>,
    /// Lower a call's `max_tokens` to what is left of the token budget instead of refusing the
    /// call.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = bool)]
    pub fit_max_tokens: Option<bool>,
    /// Money limit in USD (priced calls' cost; a call to a model without a known price is
    /// refused while the key has one), at most 9,223,372,036 (2^63 − 1 nano-dollars, what the
    /// store can hold), or `null` for none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 9223372036.0)]
    pub cost_limit: Option<Option<f64>>,
    /// How often the token and money limits reset (`day`, `week`, `month`), or `null` for never.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<LimitPeriod>)]
    pub limit_period: Option<Option<LimitPeriod>>,
}

/// A model name pattern: `*` matches any run of characters.
pub struct ModelPattern;

impl utoipa::PartialSchema for ModelPattern {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .min_length(Some(1))
            .pattern(Some(r"\S"))
            .into()
    }
}

impl ToSchema for ModelPattern {}

/// A field that may be absent but, when present, must not be `null`.
fn not_null<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// [`present`] for a whole number up to `max`, which JSON may also write with a zero fraction
/// (`5.0`, `1e3`): JSON Schema's `integer`, the type the OpenAPI document gives, admits those.
fn present_whole<'de, D>(deserializer: D, max: u64) -> Result<Option<Option<u64>>, D::Error>
where
    D: Deserializer<'de>,
{
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(Some(None));
    };
    let whole = number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f as u64)
    });
    match whole {
        Some(n) if n <= max => Ok(Some(Some(n))),
        _ => Err(D::Error::custom(format!(
            "invalid value: {number}, expected a whole number from 0 to {max}"
        ))),
    }
}

fn present_u64<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<u64>>, D::Error> {
    present_whole(deserializer, i64::MAX as u64)
}

fn present_u32<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<u32>>, D::Error> {
    let n = present_whole(deserializer, u64::from(u32::MAX))?;
    Ok(n.map(|n| n.and_then(|n| u32::try_from(n).ok())))
}

/// Distinguishes a present `null` (`Some(None)`) from an absent field (`None`, via `default`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(body: &str) -> Result<PatchKey, serde_json::Error> {
        serde_json::from_str(body)
    }

    #[test]
    fn limits_are_whole_numbers_however_json_writes_them() {
        let p = patch(r#"{"token_limit": 1e3, "rpm_limit": 60.0}"#).unwrap();
        assert_eq!(p.token_limit, Some(Some(1000)));
        assert_eq!(p.rpm_limit, Some(Some(60)));
        let p = patch(r#"{"token_limit": null, "rpm_limit": null}"#).unwrap();
        assert_eq!((p.token_limit, p.rpm_limit), (Some(None), Some(None)));
        let p = patch("{}").unwrap();
        assert_eq!((p.token_limit, p.rpm_limit), (None, None));
        let p = patch(r#"{"token_limit": 9223372036854775807}"#).unwrap();
        assert_eq!(p.token_limit, Some(Some(i64::MAX as u64)));
        let p = patch(r#"{"rpm_limit": 4294967295}"#).unwrap();
        assert_eq!(p.rpm_limit, Some(Some(u32::MAX)));
        for bad in [
            r#"{"token_limit": 1.5}"#,
            r#"{"token_limit": -1}"#,
            r#"{"token_limit": "5"}"#,
            r#"{"token_limit": 1e30}"#,
            r#"{"token_limit": 9223372036854775808}"#,
            r#"{"rpm_limit": 4294967296}"#,
        ] {
            let e = patch(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} is refused"));
            assert!(!e.to_string().is_empty());
        }
    }
}

/// One usage source's health (`GET /api/console/sources`, and `/healthz`).
#[derive(Serialize, Clone, ToSchema)]
pub struct SourceHealth {
    /// The source's name, as its calls show it.
    pub name: String,
    /// `subscribe` or `pop`, as configured.
    pub mode: &'static str,
    /// `standby` (another instance consumes it), `connecting`, `subscribed`, `polling` or
    /// `stopped` (the management key was refused).
    pub state: &'static str,
    /// Whether a connection is up.
    pub connected: bool,
    /// When the last record arrived; `null` before the first.
    pub last_record_at: Option<String>,
    /// Records read since this instance started (before de-duplication).
    pub records_ingested: u64,
    /// Payloads skipped as not usage records (not JSON, no `request_id`, negative tokens…).
    pub bad_records: u64,
    /// Why the last one was skipped, with its first bytes.
    pub last_bad_record: Option<String>,
    /// CLIProxyAPI control messages received.
    pub control_messages: u64,
    /// Events received on CLIProxyAPI's `errors` channel.
    pub error_events: u64,
    /// Milliseconds from the last record's start to its arrival here.
    pub lag_ms: Option<u64>,
    /// The last error (e.g. "management key rejected …"); `null` while records flow.
    pub last_error: Option<String>,
    /// When it happened.
    pub last_error_at: Option<String>,
    /// Times the management key was refused since start.
    pub auth_failures: u64,
}

impl From<crate::sources::Health> for SourceHealth {
    fn from(h: crate::sources::Health) -> Self {
        Self {
            name: h.name,
            mode: h.mode,
            state: h.state.as_str(),
            connected: h.connected,
            last_record_at: h.last_record_at.map(rfc3339),
            records_ingested: h.records_ingested,
            bad_records: h.bad_records,
            last_bad_record: h.last_bad_record,
            control_messages: h.control_messages,
            error_events: h.error_events,
            lag_ms: h.lag_ms,
            last_error: h.last_error,
            last_error_at: h.last_error_at.map(rfc3339),
            auth_failures: h.auth_failures,
        }
    }
}

/// Ingested usage of one credential or client key of a source.
#[derive(Serialize, Clone, ToSchema)]
pub struct SourceUsageRow {
    /// The source.
    pub source: String,
    /// The credential's `auth_index`, or the hex SHA-256 of the client key.
    pub id: String,
    /// The masked credential (`al***@example.com`) or the key's display form.
    pub label: String,
    /// Calls.
    pub call_count: u64,
    /// Failed calls (status not 2xx).
    pub error_count: u64,
    /// Input tokens (uncached + cache read + cache write).
    pub prompt_tokens: u64,
    /// Output tokens (reasoning included).
    pub completion_tokens: u64,
    /// Cache-read input tokens.
    pub cache_read_tokens: u64,
    /// Cache-write input tokens.
    pub cache_creation_tokens: u64,
    /// Reasoning output tokens.
    pub reasoning_tokens: u64,
    /// All tokens (unclassified ones included).
    pub token_count: u64,
}

impl From<crate::store::SourceUsage> for SourceUsageRow {
    fn from(s: crate::store::SourceUsage) -> Self {
        let t = s.usage.tokens;
        Self {
            source: s.source,
            id: s.ident,
            label: s.label,
            call_count: s.usage.calls,
            error_count: s.usage.failures,
            prompt_tokens: t.prompt,
            completion_tokens: t.completion,
            cache_read_tokens: t.cache_read,
            cache_creation_tokens: t.cache_creation,
            reasoning_tokens: t.reasoning,
            token_count: t.total,
        }
    }
}

/// `GET /api/console/sources`: each source's health and its usage per credential and per
/// client key.
#[derive(Serialize, Clone, ToSchema)]
pub struct Sources {
    /// The configured sources, in configuration order.
    pub sources: Vec<SourceHealth>,
    /// Usage per upstream credential, most tokens first (at most 1000 rows).
    pub credentials: Vec<SourceUsageRow>,
    /// Usage per client key, most tokens first (at most 1000 rows).
    pub client_keys: Vec<SourceUsageRow>,
}

/// `POST /api/console/ingest`'s answer.
#[derive(Serialize, Clone, ToSchema)]
pub struct Ingested {
    /// Records accepted and committed (a record whose `id` was stored before is accepted and
    /// stored once).
    pub accepted: u64,
}
