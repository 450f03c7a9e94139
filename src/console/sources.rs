//! Usage sources in the console: each source's health with its usage per credential and per
//! client key, and the push endpoint that stores records sent by anything that can report usage.

use axum::http::HeaderMap;
use serde_json::Value;
use subtle::ConstantTimeEq;

use super::{wire, ConsoleState};
use crate::error::ConsoleError;
use crate::sources::record::{self, Payload, PushRecord};
use crate::store::PushSource;
use crate::usage::CallRecord;

/// Most records in one push.
pub const MAX_PUSH_RECORDS: usize = 10_000;
/// The source name of pushed records when the request names none.
pub const DEFAULT_PUSH_SOURCE: &str = "push";

/// Every source's health and the per-credential and per-client-key tables over the last `days`
/// local days (of one source, or all).
pub async fn overview(
    state: &ConsoleState,
    source: Option<String>,
    days: u32,
) -> Result<wire::Sources, ConsoleError> {
    let tz = &state.config.timezone;
    let now = jiff::Timestamp::now();
    let last = crate::store::local_day(now, tz);
    let first_ts = now
        .checked_sub(jiff::SignedDuration::from_hours(
            24 * i64::from(days.saturating_sub(1)),
        ))
        .unwrap_or(now);
    let first = crate::store::local_day(first_ts, tz);
    let store = &state.store;
    let credentials = store
        .source_usage("credential", source.clone(), first, last)
        .await?;
    let client_keys = store
        .source_usage("client_key", source, first, last)
        .await?;
    Ok(wire::Sources {
        sources: state.sources.health().into_iter().map(Into::into).collect(),
        credentials: credentials.into_iter().map(Into::into).collect(),
        client_keys: client_keys.into_iter().map(Into::into).collect(),
    })
}

/// Checks the push endpoint's bearer token against `console.ingest_key` (in constant time).
pub fn check_ingest_key(state: &ConsoleState, headers: &HeaderMap) -> Result<(), ConsoleError> {
    let Some(key) = &state.config.console.ingest_key else {
        return Err(ConsoleError::NotFound(
            "the push endpoint is off: set console.ingest_key to turn it on".into(),
        ));
    };
    let sent = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match sent {
        None => Err(ConsoleError::Unauthorized(
            "send the ingest key as `Authorization: Bearer <console.ingest_key>`".into(),
        )),
        Some(token) if bool::from(token.as_bytes().ct_eq(key.expose().as_bytes())) => Ok(()),
        Some(_) => Err(ConsoleError::Unauthorized(
            "the ingest key is wrong (the admin key is not an ingest key)".into(),
        )),
    }
}

/// Reads a pushed body into calls of `source`: a JSON array of records in the documented shape
/// or CLIProxyAPI's; any bad record refuses the whole push, its message naming the field.
pub fn parse_push(body: &[u8], source: &str) -> Result<Vec<CallRecord>, ConsoleError> {
    let values: Vec<Value> = serde_json::from_slice(body).map_err(|e| {
        ConsoleError::BadRequest(format!(
            "the body must be a JSON array of usage records ({e})"
        ))
    })?;
    if values.is_empty() || values.len() > MAX_PUSH_RECORDS {
        return Err(ConsoleError::BadRequest(format!(
            "send 1 to {MAX_PUSH_RECORDS} records per request; got {}",
            values.len()
        )));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, value)| one_record(i, value, source))
        .collect()
}

fn one_record(i: usize, value: &Value, source: &str) -> Result<CallRecord, ConsoleError> {
    let bad = |what: String| ConsoleError::BadRequest(format!("records[{i}].{what}"));
    if value.get("request_id").is_some() {
        return match record::parse_cpa_value(value, source) {
            Payload::Record(call) => Ok(*call),
            Payload::Control => Err(bad("request_id: a control message is not a record".into())),
            Payload::Bad(reason) => Err(bad(reason)),
        };
    }
    let parsed: PushRecord = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ConsoleError::BadRequest(format!("records[{i}]: {inner}"))
        } else {
            bad(format!("{path}: {inner}"))
        }
    })?;
    record::push_call(parsed, source).map_err(bad)
}

/// The pushed records' source: `source` from the query, else [`DEFAULT_PUSH_SOURCE`].
pub fn push_source(raw: Option<&str>) -> Result<String, ConsoleError> {
    let name = raw
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_PUSH_SOURCE);
    let valid = name.len() <= crate::config::MAX_SOURCE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name != "gateway";
    if !valid {
        return Err(ConsoleError::BadRequest(format!(
            "source must be 1 to {} letters, digits, '.', '_' or '-' (not \"gateway\"); got \"{}\"",
            crate::config::MAX_SOURCE_NAME,
            record::bounded(name, 80)
        )));
    }
    Ok(name.to_owned())
}

/// Admits `source` as a source of pushed records: a configured source, one pushed before, or a
/// new one while fewer than `console.push_source_cap` names are taken; otherwise a 400 naming
/// the cap and the names taken (a push client cannot grow the sources without bound).
pub async fn admit_source(state: &ConsoleState, source: &str) -> Result<(), ConsoleError> {
    let configured = state
        .config
        .sources
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let cap = state.config.console.push_source_cap;
    match state
        .store
        .admit_push_source(source.to_owned(), configured, cap)
        .await?
    {
        PushSource::Admitted => Ok(()),
        PushSource::Full(taken) => Err(ConsoleError::BadRequest(format!(
            "source \"{source}\" is new, and the push endpoint takes at most {cap} source names \
             (console.push_source_cap), all taken: {}; push under one of them or raise the cap",
            taken.join(", ")
        ))),
    }
}

/// Stores pushed records and waits for their commit; a record whose id was stored before is
/// stored once.
pub async fn push(state: &ConsoleState, calls: Vec<CallRecord>) -> wire::Ingested {
    let accepted = calls.len() as u64;
    for mut call in calls {
        if let Some(hash) = call.ingest.as_ref().and_then(|i| i.client_key_hash) {
            if let Some(entry) = state.keys.find_by_hash(&hash) {
                call.key_id = Some(entry.id);
                call.key_name = Some(entry.settings().name.clone());
            }
        }
        crate::sources::price(&state.prices, &mut call);
        state.recorder.record(call).await;
    }
    state.recorder.flush().await;
    wire::Ingested { accepted }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_are_refused_naming_the_record_and_field() {
        let ok =
            r#"{"id":"a","ts":"2026-01-01T00:00:00Z","model":"m","tokens":{"input":1,"output":2}}"#;
        assert_eq!(
            parse_push(format!("[{ok}]").as_bytes(), "push")
                .unwrap()
                .len(),
            1
        );
        let cases = [
            ("{}", "JSON array"),
            ("[]", "1 to"),
            (r#"[{"id":"a"}]"#, "records[0]: missing field"),
            (
                &format!(
                    r#"[{ok},{{"id":"b","ts":"2026-01-01T00:00:00Z","model":"m","tokens":{{"input":-1,"output":2}}}}]"#
                ),
                "records[1].tokens.input",
            ),
            (
                &format!(
                    r#"[{ok},{{"id":"b","ts":"x","model":"m","tokens":{{"input":1,"output":2}}}}]"#
                ),
                "records[1].ts",
            ),
            (
                r#"[{"id":"a","ts":"2026-01-01T00:00:00Z","model":"m","tokens":{"input":1,"output":2},"colour":1}]"#,
                "unknown field `colour`",
            ),
            (
                r#"[{"request_id":"ab","timestamp":"2026-01-01T00:00:00Z","tokens":{"input_tokens":-3}}]"#,
                "records[0].tokens.input_tokens is negative",
            ),
        ];
        for (body, want) in cases {
            let e = parse_push(body.as_bytes(), "push").unwrap_err().to_string();
            assert!(e.contains(want), "{body}: {e}");
        }
        assert!(push_source(Some("bad name")).is_err());
        assert!(push_source(Some("gateway")).is_err());
        assert_eq!(push_source(None).unwrap(), "push");
    }
}
