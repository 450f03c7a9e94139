//! Parsing of the console API's query parameters and JSON bodies into typed values, with
//! messages that say what is wrong and what to send instead.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::ConsoleError;
use crate::store::{
    CallKind, CallMatch, Dim, LogQuery, StatusFilter, UsageFilter, UsageOrder, UsageQuery,
};

/// Default and largest `days` of the usage trend.
pub const DEFAULT_DAYS: u32 = 7;
/// Largest `days`; more is clamped to this.
pub const MAX_DAYS: u32 = 90;
/// Default `limit` of the logs.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest `limit`; more is clamped to this.
pub const MAX_LIMIT: u32 = 1000;

/// Query of `GET /api/console/stats`. Every parameter may be empty, which is the same as absent.
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Only this key's calls.
    #[param(value_type = Option<i64>)]
    pub key_id: Option<String>,
    /// Start of the window (widened to the start of its hour); must be earlier than `to`.
    #[param(value_type = Option<String>, format = DateTime)]
    pub from: Option<String>,
    /// End of the window (widened to the end of its hour); must be later than `from`.
    #[param(value_type = Option<String>, format = DateTime)]
    pub to: Option<String>,
    /// Only this source's calls: `gateway` or a usage source's name (not with `key_id`).
    pub source: Option<String>,
}

/// Query of `GET /api/console/usage-trend`.
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct TrendQuery {
    /// Days shown, ending today: default 7, above 90 clamped to 90.
    #[param(schema_with = clamped_count)]
    pub days: Option<String>,
    /// Only this key's calls.
    #[param(value_type = Option<i64>)]
    pub key_id: Option<String>,
    /// Only this source's calls: `gateway` or a usage source's name (not with `key_id`).
    pub source: Option<String>,
}

/// Query of `GET /api/console/logs` and `/logs/stream`: filters, all combined.
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Most rows: default 100, above 1000 clamped to 1000 (the stream: rows of its first page).
    #[param(schema_with = clamped_count)]
    pub limit: Option<String>,
    /// Text in the endpoint, model, method or status (case-insensitive).
    pub q: Option<String>,
    /// HTTP method (case-insensitive).
    pub method: Option<String>,
    /// A status code (`200`) or a class (`2xx`, `4xx`, `5xx`).
    #[param(pattern = r"^([1-5][0-9][0-9]|[1-5][xX][xX])$")]
    pub status: Option<String>,
    /// Model, exact.
    pub model: Option<String>,
    /// Key id.
    #[param(value_type = Option<i64>)]
    pub key_id: Option<String>,
    /// Calls at or after this instant.
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<String>,
    /// Calls before this instant.
    #[param(value_type = Option<String>, format = DateTime)]
    pub until: Option<String>,
    /// Rows with a smaller id only (the next page; not for the stream).
    #[param(value_type = Option<i64>)]
    pub before_id: Option<String>,
    /// `call` (every call but `count_tokens` ones) or `count_tokens`.
    #[param(pattern = r"^(call|count_tokens)$")]
    pub kind: Option<String>,
    /// Client family (`claude-cli`, `codex`, `openai-python`, …, `other`), exact.
    pub client: Option<String>,
    /// Session id, exact.
    pub session_id: Option<String>,
    /// Source, exact: `gateway` (the gateway's own calls) or a usage source's name.
    pub source: Option<String>,
}

/// Query of `GET /api/console/sources`.
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct SourcesQuery {
    /// Only this source's credentials and client keys.
    pub source: Option<String>,
    /// Local days of usage in the tables, ending today: default 30, above 90 clamped to 90.
    #[param(schema_with = clamped_count)]
    pub days: Option<String>,
}

impl SourcesQuery {
    /// `source`, if given.
    pub fn source(&self) -> Option<String> {
        get(&self.source).map(|s| s.trim().to_owned())
    }

    /// `days`: default 30, above 90 clamped.
    pub fn days(&self) -> Result<u32, ConsoleError> {
        bounded(&self.days, "days", 30, MAX_DAYS)
    }
}

/// Query of `POST /api/console/ingest`.
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct IngestQuery {
    /// The records' source, shown as their calls' source: default `push`.
    pub source: Option<String>,
}

/// Default hours examined for anomalies.
pub const DEFAULT_ANOMALY_HOURS: u32 = 24;
/// Largest `hours` of the anomalies (a week); more is clamped to this.
pub const MAX_ANOMALY_HOURS: u32 = 168;
/// Default number of alerts listed.
pub const DEFAULT_ALERTS: u32 = 100;

/// Query of `GET /api/console/anomalies`.
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct AnomaliesQuery {
    /// Hours examined, ending with the current one: default 24, above 168 clamped to 168.
    #[param(schema_with = clamped_count)]
    pub hours: Option<String>,
    /// Only this key's calls.
    #[param(value_type = Option<i64>)]
    pub key_id: Option<String>,
}

/// Query of `GET /api/console/alerts`.
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct AlertsQuery {
    /// Most alerts, newest first: default 100, above 1000 clamped to 1000.
    #[param(schema_with = clamped_count)]
    pub limit: Option<String>,
}

/// Query of `GET /api/console/usage`. Blank parameters are absent; unknown ones are refused
/// (the message lists the known ones).
#[derive(Deserialize, IntoParams, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// One or two of `key`, `model`, `user`, `client`, `provider`, `source`, `endpoint`, `day`,
    /// `hour`, comma-separated (default `model`); `user` goes only with `key` and `day` (also as
    /// filters), `hour` with one other dimension at most (grouped or filtered) but not `user`,
    /// and `day` not with `hour`.
    #[param(
        pattern = r"^(key|model|user|client|provider|source|endpoint|day|hour)(,(key|model|user|client|provider|source|endpoint|day|hour))?$"
    )]
    pub group_by: Option<String>,
    /// Start of the window (widened to the start of its hour; to the start of its local day
    /// when grouped by day or when the query names the user or two dimensions); must be earlier
    /// than `to`.
    #[param(value_type = Option<String>, format = DateTime)]
    pub from: Option<String>,
    /// End of the window (widened to the end of its hour, or of its local day as `from` is);
    /// must be later than `from`.
    #[param(value_type = Option<String>, format = DateTime)]
    pub to: Option<String>,
    /// Instead of `from` and `to`: the last `days` local days, today included (above 90
    /// clamped to 90).
    #[param(schema_with = clamped_count)]
    pub days: Option<String>,
    /// Only this key's calls (0: calls without a valid key).
    #[param(value_type = Option<i64>)]
    pub key_id: Option<String>,
    /// Only this model's calls.
    pub model: Option<String>,
    /// Only this end user's calls (`(other)`: the users beyond a day's cap).
    pub user: Option<String>,
    /// Only this client family's calls.
    pub client: Option<String>,
    /// Only the calls this provider served.
    pub provider: Option<String>,
    /// Only this source's calls (`gateway`, or an ingested source).
    pub source: Option<String>,
    /// Only the calls to this path.
    pub endpoint: Option<String>,
    /// `tokens` (default), `cost`, `calls` or `errors`, largest first.
    #[param(pattern = r"^(tokens|cost|calls|errors)$")]
    pub order_by: Option<String>,
    /// Most rows: default 100, above 1000 clamped to 1000.
    #[param(schema_with = clamped_count)]
    pub limit: Option<String>,
}

impl AnomaliesQuery {
    /// `hours`: default 24, above 168 clamped, below 1 or not a number rejected.
    pub fn hours(&self) -> Result<u32, ConsoleError> {
        bounded(
            &self.hours,
            "hours",
            DEFAULT_ANOMALY_HOURS,
            MAX_ANOMALY_HOURS,
        )
    }

    /// `key_id`.
    pub fn key_id(&self) -> Result<Option<i64>, ConsoleError> {
        id(&self.key_id, "key_id")
    }
}

impl AlertsQuery {
    /// `limit`: default 100, above 1000 clamped, below 1 or not a number rejected.
    pub fn limit(&self) -> Result<u32, ConsoleError> {
        bounded(&self.limit, "limit", DEFAULT_ALERTS, MAX_LIMIT)
    }
}

/// The names `group_by` takes, for messages.
fn dim_names() -> String {
    Dim::ALL.map(Dim::name).join(", ")
}

impl UsageParams {
    /// `days`, when given (and then neither `from` nor `to`).
    pub fn days(&self) -> Result<Option<u32>, ConsoleError> {
        if get(&self.days).is_none() {
            return Ok(None);
        }
        if get(&self.from).is_some() || get(&self.to).is_some() {
            return Err(ConsoleError::BadRequest(
                "give days or from/to, not both".to_owned(),
            ));
        }
        bounded(&self.days, "days", DEFAULT_DAYS, MAX_DAYS).map(Some)
    }

    /// The breakdown asked for, checked: 400 naming the allowed values for an unknown dimension
    /// or order, for a `from` not before `to`, or a pair the rollups do not keep.
    pub fn query(&self) -> Result<UsageQuery, ConsoleError> {
        let group_by = get(&self.group_by)
            .unwrap_or("model")
            .split(',')
            .map(|name| {
                let name = name.trim();
                Dim::parse(name).ok_or_else(|| {
                    ConsoleError::BadRequest(format!(
                        "group_by takes one or two of {}, comma-separated; got \"{name}\"",
                        dim_names()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let window = StatsQuery {
            key_id: None,
            from: self.from.clone(),
            to: self.to.clone(),
            source: None,
        }
        .filter()?;
        let text = |v: &Option<String>| get(v).map(|t| t.trim().to_owned());
        let filters = [
            (Dim::Model, &self.model),
            (Dim::User, &self.user),
            (Dim::Client, &self.client),
            (Dim::Provider, &self.provider),
            (Dim::Source, &self.source),
            (Dim::Endpoint, &self.endpoint),
        ]
        .into_iter()
        .filter_map(|(dim, value)| text(value).map(|v| (dim, v)))
        .collect();
        let query = UsageQuery {
            group_by,
            from: window.from,
            to: window.to,
            key_id: id(&self.key_id, "key_id")?,
            filters,
            order: get(&self.order_by)
                .map(order)
                .transpose()?
                .unwrap_or_default(),
            limit: bounded(&self.limit, "limit", DEFAULT_LIMIT, MAX_LIMIT)?,
        };
        query.check().map_err(ConsoleError::BadRequest)?;
        Ok(query)
    }
}

/// `tokens`, `calls` or `errors`.
fn order(raw: &str) -> Result<UsageOrder, ConsoleError> {
    match raw.trim() {
        "tokens" => Ok(UsageOrder::Tokens),
        "calls" => Ok(UsageOrder::Calls),
        "errors" => Ok(UsageOrder::Errors),
        "cost" => Ok(UsageOrder::Cost),
        _ => Err(ConsoleError::BadRequest(format!(
            "order_by takes tokens, cost, calls or errors; got \"{raw}\""
        ))),
    }
}

/// Query of `GET /api/console/export`.
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `json` (default) or `csv`.
    #[param(pattern = r"^([jJ][sS][oO][nN]|[cC][sS][vV])$")]
    pub format: Option<String>,
    /// Only this source's calls (and, in JSON, its statistics).
    pub source: Option<String>,
}

/// A whole number of 1 or more, of any size (larger than the parameter's maximum is clamped).
fn clamped_count() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Integer)
        .minimum(Some(1))
        .build()
}

/// A parameter's value; blank (empty or white space) is the same as absent.
fn get(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.trim().is_empty())
}

/// A positive whole number, clamped to `max`; absent gives `default`.
fn bounded(
    value: &Option<String>,
    name: &str,
    default: u32,
    max: u32,
) -> Result<u32, ConsoleError> {
    let Some(raw) = get(value) else {
        return Ok(default);
    };
    // Any whole number of 1 or more is valid, however many digits it has: above `max` it is
    // clamped, so one too large for any integer type is clamped too.
    let digits = raw.strip_prefix('+').unwrap_or(raw);
    let whole = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    match digits.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n.min(u64::from(max)) as u32),
        Err(_) if whole => Ok(max),
        _ => Err(ConsoleError::BadRequest(format!(
            "{name} must be a whole number from 1 to {max} (larger values are clamped to {max}); got \"{raw}\""
        ))),
    }
}

/// An optional id parameter.
fn id(value: &Option<String>, name: &str) -> Result<Option<i64>, ConsoleError> {
    get(value)
        .map(|raw| {
            raw.parse::<i64>().map_err(|_| {
                ConsoleError::BadRequest(format!("{name} must be a whole number; got \"{raw}\""))
            })
        })
        .transpose()
}

/// Parses an RFC 3339 instant (`2026-02-20T18:45:32Z`).
pub fn instant(name: &str, raw: &str) -> Result<jiff::Timestamp, ConsoleError> {
    raw.parse::<jiff::Timestamp>().map_err(|_| {
        ConsoleError::BadRequest(format!(
            "{name} must be an RFC 3339 time such as 2026-02-20T18:45:32Z; got \"{raw}\""
        ))
    })
}

fn optional_instant(
    value: &Option<String>,
    name: &str,
) -> Result<Option<jiff::Timestamp>, ConsoleError> {
    get(value).map(|raw| instant(name, raw)).transpose()
}

impl StatsQuery {
    /// `key_id`, `from` and `to` as a filter.
    pub fn filter(&self) -> Result<UsageFilter, ConsoleError> {
        let filter = UsageFilter {
            key_id: id(&self.key_id, "key_id")?,
            from: optional_instant(&self.from, "from")?,
            to: optional_instant(&self.to, "to")?,
        };
        if let (Some(from), Some(to)) = (filter.from, filter.to) {
            if from >= to {
                return Err(ConsoleError::BadRequest(
                    "from must be earlier than to".to_owned(),
                ));
            }
        }
        Ok(filter)
    }
}

impl TrendQuery {
    /// `days`: default 7, above 90 clamped, below 1 or not a number rejected.
    pub fn days(&self) -> Result<u32, ConsoleError> {
        bounded(&self.days, "days", DEFAULT_DAYS, MAX_DAYS)
    }

    /// `key_id`.
    pub fn key_id(&self) -> Result<Option<i64>, ConsoleError> {
        id(&self.key_id, "key_id")
    }

    /// `source`, if given; not with `key_id` (keys are counted over every source).
    pub fn source(&self) -> Result<Option<String>, ConsoleError> {
        source_alone(&self.source, &self.key_id)
    }
}

impl ExportQuery {
    /// The format asked for, if any.
    pub fn format(&self) -> Option<&str> {
        get(&self.format)
    }

    /// `source`, if given.
    pub fn source(&self) -> Option<String> {
        get(&self.source).map(|s| s.trim().to_owned())
    }
}

impl StatsQuery {
    /// `source`, if given; not with `key_id` (keys are counted over every source).
    pub fn source(&self) -> Result<Option<String>, ConsoleError> {
        source_alone(&self.source, &self.key_id)
    }
}

/// `source`, trimmed, refused together with `key_id`.
fn source_alone(
    source: &Option<String>,
    key_id: &Option<String>,
) -> Result<Option<String>, ConsoleError> {
    let source = get(source).map(|s| s.trim().to_owned());
    if source.is_some() && get(key_id).is_some() {
        return Err(ConsoleError::BadRequest(
            "source and key_id cannot be combined; send one of them".into(),
        ));
    }
    Ok(source)
}

/// `200` or a class such as `4xx`.
fn status(raw: &str) -> Result<StatusFilter, ConsoleError> {
    let lower = raw.to_ascii_lowercase();
    if let Some(class) = lower.strip_suffix("xx") {
        if let Ok(class @ 1..=5) = class.parse::<u16>() {
            return Ok(StatusFilter::Class(class));
        }
    } else if let Ok(code @ 100..=599) = lower.parse::<u16>() {
        return Ok(StatusFilter::Exact(code));
    }
    Err(ConsoleError::BadRequest(format!(
        "status must be a status code (e.g. 200) or a class (2xx, 4xx, 5xx); got \"{raw}\""
    )))
}

impl LogsQuery {
    /// `limit`: default 100, above 1000 clamped, below 1 or not a number rejected.
    pub fn limit(&self) -> Result<u32, ConsoleError> {
        bounded(&self.limit, "limit", DEFAULT_LIMIT, MAX_LIMIT)
    }

    /// Every filter of the logs.
    pub fn query(&self) -> Result<LogQuery, ConsoleError> {
        let text = |v: &Option<String>| get(v).map(|t| t.trim().to_owned());
        let matches = [
            text(&self.method).map(CallMatch::Method),
            text(&self.model).map(CallMatch::Model),
            id(&self.key_id, "key_id")?.map(CallMatch::Key),
            text(&self.client).map(CallMatch::Client),
            text(&self.session_id).map(CallMatch::Session),
            text(&self.source).map(CallMatch::Source),
        ];
        Ok(LogQuery {
            limit: self.limit()?,
            before_id: id(&self.before_id, "before_id")?,
            since: optional_instant(&self.since, "since")?,
            until: optional_instant(&self.until, "until")?,
            q: text(&self.q),
            status: get(&self.status).map(status).transpose()?,
            kind: get(&self.kind).map(kind).transpose()?,
            matches: matches.into_iter().flatten().collect(),
        })
    }
}

/// `call` (every call but `count_tokens`) or `count_tokens`.
fn kind(raw: &str) -> Result<CallKind, ConsoleError> {
    match raw {
        "call" => Ok(CallKind::Call),
        "count_tokens" => Ok(CallKind::CountTokens),
        _ => Err(ConsoleError::BadRequest(format!(
            "kind must be call (every call but count_tokens) or count_tokens; got \"{raw}\""
        ))),
    }
}

/// Query parameters as a typed struct (every field an optional string, parsed by its methods with
/// messages that say what to send). A repeated parameter counts once, its last value; a query that
/// is not valid URL encoding is answered in the console envelope.
pub struct ConsoleQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ConsoleQuery<T> {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ConsoleError> {
        let Query(pairs) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                ConsoleError::BadRequest(format!(
                    "the query string cannot be read ({}); percent-encode its values",
                    e.body_text()
                ))
            })?;
        let value =
            serde_json::to_value(pairs).map_err(|e| ConsoleError::Internal(e.to_string()))?;
        serde_json::from_value(value)
            .map(Self)
            .map_err(|e| ConsoleError::BadRequest(format!("bad query parameters: {e}")))
    }
}

/// A JSON body whose parse errors name the failing field, answered in the console envelope.
pub struct ConsoleJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ConsoleJson<T> {
    type Rejection = ConsoleError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ConsoleError::BadRequest(format!("cannot read the request body: {e}")))?;
        parse_json(&bytes).map(ConsoleJson)
    }
}

/// Parses a JSON object body, naming the failing field in the error. Anything but an object is
/// refused first: serde reads a struct from an array too (`[]` would be a body with no fields).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConsoleError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(ConsoleError::BadRequest(
                "the request body is empty; send a JSON object, e.g. {\"name\":\"my key\"}"
                    .to_owned(),
            ))
        }
        Some(b'{') => {}
        Some(_) => {
            return Err(ConsoleError::BadRequest(
                "the request body is not a JSON object; send one, e.g. {\"name\":\"my key\"}"
                    .to_owned(),
            ))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = if path == "." {
            String::new()
        } else {
            format!(" at `{path}`")
        };
        ConsoleError::BadRequest(format!(
            "invalid JSON body{at}: {inner}; send a JSON object with the documented fields"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type Case = (Option<&'static str>, Option<u32>);

    fn some(v: Option<&str>) -> Option<String> {
        v.map(str::to_owned)
    }

    #[test]
    fn bodies_must_be_json_objects() {
        #[derive(serde::Deserialize, Debug)]
        struct Body {
            #[serde(default)]
            _from: Option<String>,
        }
        for bad in ["", "  ", "[]", "[null]", "null", "1", "\"x\""] {
            let err = parse_json::<Body>(bad.as_bytes()).unwrap_err();
            assert!(matches!(err, ConsoleError::BadRequest(_)), "{bad:?}");
        }
        assert!(parse_json::<Body>(b" {} ").is_ok());
    }

    #[test]
    fn days_follow_the_guide() {
        let cases: [Case; 8] = [
            (None, Some(7)),
            (Some(""), Some(7)),
            (Some("30"), Some(30)),
            (Some("90"), Some(90)),
            (Some("500"), Some(90)),
            (Some("0"), None),
            (Some("abc"), None),
            (Some("-3"), None),
        ];
        for (given, want) in cases {
            let q = TrendQuery {
                days: some(given),
                ..TrendQuery::default()
            };
            assert_eq!(q.days().ok(), want, "{given:?}");
        }
    }

    #[test]
    fn limits_follow_the_guide() {
        let cases: [Case; 9] = [
            (None, Some(100)),
            (Some("5000"), Some(1000)),
            (Some("1"), Some(1)),
            (Some("-1"), None),
            (Some("x"), None),
            (Some("99999999999999999999999999"), Some(1000)),
            (Some("+5"), Some(5)),
            (Some("0000"), None),
            (Some("+"), None),
        ];
        for (given, want) in cases {
            let q = LogsQuery {
                limit: some(given),
                ..LogsQuery::default()
            };
            assert_eq!(q.limit().ok(), want, "{given:?}");
        }
    }

    #[test]
    fn usage_queries_are_checked_with_messages_naming_what_is_allowed() {
        let parse = |group_by: &str, extra: fn(&mut UsageParams)| {
            let mut p = UsageParams {
                group_by: some(Some(group_by)),
                ..UsageParams::default()
            };
            extra(&mut p);
            p.query().map_err(|e| e.to_string())
        };
        let ok = parse("user, day", |p| p.user = some(Some(" alice "))).unwrap();
        assert_eq!(ok.group_by, [Dim::User, Dim::Day]);
        assert_eq!(ok.filters, [(Dim::User, "alice".to_owned())]);
        assert_eq!((ok.limit, ok.order), (DEFAULT_LIMIT, UsageOrder::Tokens));
        let none = UsageParams::default().query().unwrap();
        assert_eq!(none.group_by, [Dim::Model]);
        type Case = (&'static str, fn(&mut UsageParams), &'static str);
        let bad: [Case; 8] = [
            (
                "team",
                |_| {},
                "key, model, user, client, provider, source, endpoint, day, hour",
            ),
            ("model,key,day", |_| {}, "one or two"),
            ("day,hour", |_| {}, "day or hour"),
            ("model,model", |_| {}, "twice"),
            ("user,client", |_| {}, "not with client"),
            ("user", |p| p.model = some(Some("gpt-4o")), "not with model"),
            (
                "model",
                |p| p.order_by = some(Some("latency")),
                "tokens, cost, calls or errors",
            ),
            (
                "model",
                |p| {
                    p.from = some(Some("2026-02-02T00:00:00Z"));
                    p.to = some(Some("2026-02-01T00:00:00Z"));
                },
                "from must be earlier than to",
            ),
        ];
        for (group_by, extra, want) in bad {
            let err = parse(group_by, extra).err().unwrap_or_default();
            assert!(err.contains(want), "{group_by}: {err}");
        }
    }

    #[test]
    fn statuses_are_codes_or_classes() {
        assert_eq!(status("200").ok(), Some(StatusFilter::Exact(200)));
        assert_eq!(status("4xx").ok(), Some(StatusFilter::Class(4)));
        assert_eq!(status("5XX").ok(), Some(StatusFilter::Class(5)));
        for bad in ["6xx", "abc", "42", "xx"] {
            assert!(status(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        let err = parse_json::<crate::console::wire::CreateKey>(br#"{"name": 5}"#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("name"), "{err}");
        assert!(parse_json::<crate::console::wire::CreateKey>(b"{bad").is_err());
        assert!(parse_json::<crate::console::wire::CreateKey>(b"").is_err());
    }
}
