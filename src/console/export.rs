//! The export: statistics, 90-day trend, models, keys (display form) and every retained log row,
//! as one JSON file or the logs as CSV. Logs are streamed page by page, so memory stays bounded
//! whatever the log's size.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures_util::stream;

use crate::error::ConsoleError;
use crate::state::AppState;
use crate::store::{LogQuery, UsageFilter};

use super::wire::{rfc3339, LogRow};
use super::{keys, stats};

const PAGE: u32 = 1000;

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Everything as one JSON document.
    Json,
    /// The logs as CSV.
    Csv,
}

/// Parses `format` (absent: JSON).
pub fn format(raw: Option<&str>) -> Result<Format, ConsoleError> {
    match raw.map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("json") => Ok(Format::Json),
        Some("csv") => Ok(Format::Csv),
        Some(other) => Err(ConsoleError::BadRequest(format!(
            "format must be json or csv; got \"{other}\""
        ))),
    }
}

/// The export response with its download file name.
pub async fn export(state: &AppState, format: Format) -> Result<Response, ConsoleError> {
    let today = jiff::Timestamp::now()
        .to_zoned(state.config.timezone.clone())
        .date()
        .strftime("%Y%m%d")
        .to_string();
    let (head, content_type, ext) = match format {
        Format::Json => (json_head(state).await?, "application/json", "json"),
        Format::Csv => (CSV_HEADER.to_owned(), "text/csv; charset=utf-8", "csv"),
    };
    let body = Body::from_stream(log_chunks(state.clone(), format, head));
    let disposition = format!("attachment; filename=\"token-stats-{today}.{ext}\"");
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

async fn json_head(state: &AppState) -> Result<String, ConsoleError> {
    let stats = stats::stats(state, UsageFilter::default()).await?;
    let trend = stats::trend(state, 90, None).await?;
    let keys = keys::list(state).await?;
    let head = serde_json::json!({
        "exported_at": rfc3339(jiff::Timestamp::now()),
        "stats": stats,
        "trend": trend,
        "models": stats.models,
        "keys": keys,
    });
    let text = serde_json::to_string(&head).map_err(|e| ConsoleError::Internal(e.to_string()))?;
    // Reopen the object to append the streamed logs array.
    let open = text.strip_suffix('}').unwrap_or(&text);
    Ok(format!("{open},\"logs\":["))
}

struct Cursor {
    state: AppState,
    format: Format,
    head: Option<String>,
    before_id: Option<i64>,
    first_row: bool,
    done: bool,
}

/// The head, then every log row page by page (newest first), then the closing bytes.
fn log_chunks(
    state: AppState,
    format: Format,
    head: String,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let cursor = Cursor {
        state,
        format,
        head: Some(head),
        before_id: None,
        first_row: true,
        done: false,
    };
    stream::unfold(cursor, |mut cursor| async move {
        if let Some(head) = cursor.head.take() {
            return Some((Ok(Bytes::from(head)), cursor));
        }
        if cursor.done {
            return None;
        }
        let query = LogQuery {
            limit: PAGE,
            before_id: cursor.before_id,
            ..LogQuery::default()
        };
        let rows = match cursor.state.store.logs(query).await {
            Ok(rows) => rows,
            Err(e) => {
                cursor.done = true;
                return Some((Err(std::io::Error::other(e.to_string())), cursor));
            }
        };
        let mut out = String::new();
        for logged in &rows {
            let row = LogRow::from(logged);
            match cursor.format {
                Format::Json => {
                    if !cursor.first_row {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(&row).unwrap_or_else(|_| "null".into()));
                }
                Format::Csv => csv_row(&mut out, &row),
            }
            cursor.first_row = false;
        }
        cursor.before_id = rows.last().map(|r| r.id);
        if rows.len() < PAGE as usize {
            cursor.done = true;
            if cursor.format == Format::Json {
                out.push_str("]}");
            }
        }
        Some((Ok(Bytes::from(out)), cursor))
    })
}

const CSV_HEADER: &str = "id,timestamp,method,endpoint,status,tokens,prompt_tokens,completion_tokens,cache_read_tokens,cache_creation_tokens,reasoning_tokens,duration,ttft,model,key_id,key_name,stream,estimated,error,client,session_id\r\n";

/// Quotes a CSV field, and defuses spreadsheet formulas in text from requests.
fn csv_text(out: &mut String, value: &str) {
    let defused = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if defused.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&defused.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(&defused);
    }
}

fn csv_row(out: &mut String, row: &LogRow) {
    let opt = |v: Option<String>| v.unwrap_or_default();
    out.push_str(&format!("{},{},{},", row.id, row.timestamp, row.method));
    csv_text(out, &row.endpoint);
    out.push_str(&format!(
        ",{},{},{},{},{},{},{},{},{},",
        row.status,
        row.tokens,
        row.prompt_tokens,
        row.completion_tokens,
        row.cache_read_tokens,
        row.cache_creation_tokens,
        row.reasoning_tokens,
        row.duration,
        opt(row.ttft.map(|t| t.to_string())),
    ));
    csv_text(out, &row.model);
    out.push_str(&format!(",{},", opt(row.key_id.map(|k| k.to_string()))));
    csv_text(out, row.key_name.as_deref().unwrap_or(""));
    out.push_str(&format!(",{},{},", row.stream, row.estimated));
    csv_text(out, row.error.as_deref().unwrap_or(""));
    out.push(',');
    csv_text(out, &row.client);
    out.push(',');
    csv_text(out, row.session_id.as_deref().unwrap_or(""));
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses() {
        let cases = [
            ("plain", "plain"),
            ("a,b", "\"a,b\""),
            ("say \"hi\"", "\"say \"\"hi\"\"\""),
            ("=SUM(A1)", "'=SUM(A1)"),
            ("-1", "'-1"),
        ];
        for (input, want) in cases {
            let mut out = String::new();
            csv_text(&mut out, input);
            assert_eq!(out, want, "{input}");
        }
    }

    #[test]
    fn formats_parse() {
        assert_eq!(format(None).ok(), Some(Format::Json));
        assert_eq!(format(Some("CSV")).ok(), Some(Format::Csv));
        assert!(format(Some("xml")).is_err());
    }
}
