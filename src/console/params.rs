//! Parsing of the console API's query parameters and JSON bodies into typed values, with
//! messages that say what is wrong and what to send instead.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::ConsoleError;
use crate::store::{CallKind, LogQuery, StatusFilter, UsageFilter};

/// Query parameters as given.
pub type Params = HashMap<String, String>;

/// Default and largest `days` of the usage trend.
pub const DEFAULT_DAYS: u32 = 7;
/// Largest `days`; more is clamped to this.
pub const MAX_DAYS: u32 = 90;
/// Default `limit` of the logs.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest `limit`; more is clamped to this.
pub const MAX_LIMIT: u32 = 1000;

fn get<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// A positive whole number, clamped to `max`; absent gives `default`.
fn bounded(params: &Params, name: &str, default: u32, max: u32) -> Result<u32, ConsoleError> {
    let Some(raw) = get(params, name) else {
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

/// `days` of the usage trend: default 7, above 90 clamped, below 1 or not a number rejected.
pub fn days(params: &Params) -> Result<u32, ConsoleError> {
    bounded(params, "days", DEFAULT_DAYS, MAX_DAYS)
}

/// `limit` of the logs: default 100, above 1000 clamped, below 1 or not a number rejected.
pub fn limit(params: &Params) -> Result<u32, ConsoleError> {
    bounded(params, "limit", DEFAULT_LIMIT, MAX_LIMIT)
}

/// An optional id parameter.
pub fn id(params: &Params, name: &str) -> Result<Option<i64>, ConsoleError> {
    get(params, name)
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

fn optional_instant(params: &Params, name: &str) -> Result<Option<jiff::Timestamp>, ConsoleError> {
    get(params, name).map(|raw| instant(name, raw)).transpose()
}

/// `key_id`, `from` and `to` of the statistics.
pub fn usage_filter(params: &Params) -> Result<UsageFilter, ConsoleError> {
    let filter = UsageFilter {
        key_id: id(params, "key_id")?,
        from: optional_instant(params, "from")?,
        to: optional_instant(params, "to")?,
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

/// Every filter of the logs.
pub fn log_query(params: &Params) -> Result<LogQuery, ConsoleError> {
    Ok(LogQuery {
        limit: limit(params)?,
        q: get(params, "q").map(str::to_owned),
        method: get(params, "method").map(str::to_owned),
        status: get(params, "status").map(status).transpose()?,
        model: get(params, "model").map(str::to_owned),
        key_id: id(params, "key_id")?,
        since: optional_instant(params, "since")?,
        until: optional_instant(params, "until")?,
        before_id: id(params, "before_id")?,
        kind: get(params, "kind").map(kind).transpose()?,
        client: get(params, "client").map(str::to_owned),
        session_id: get(params, "session_id").map(str::to_owned),
    })
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

/// Parses a JSON body, naming the failing field in the error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConsoleError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ConsoleError::BadRequest(
            "the request body is empty; send a JSON object, e.g. {\"name\":\"my key\"}".to_owned(),
        ));
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

    type Case = (&'static [(&'static str, &'static str)], Option<u32>);

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn days_follow_the_guide() {
        let cases: [Case; 7] = [
            (&[], Some(7)),
            (&[("days", "30")], Some(30)),
            (&[("days", "90")], Some(90)),
            (&[("days", "500")], Some(90)),
            (&[("days", "0")], None),
            (&[("days", "abc")], None),
            (&[("days", "-3")], None),
        ];
        for (given, want) in cases {
            assert_eq!(days(&params(given)).ok(), want, "{given:?}");
        }
    }

    #[test]
    fn limits_follow_the_guide() {
        let cases: [Case; 9] = [
            (&[], Some(100)),
            (&[("limit", "5000")], Some(1000)),
            (&[("limit", "1")], Some(1)),
            (&[("limit", "-1")], None),
            (&[("limit", "x")], None),
            (&[("limit", "99999999999999999999999999")], Some(1000)),
            (&[("limit", "+5")], Some(5)),
            (&[("limit", "0000")], None),
            (&[("limit", "+")], None),
        ];
        for (given, want) in cases {
            assert_eq!(limit(&params(given)).ok(), want, "{given:?}");
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
