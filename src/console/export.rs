//! The export: statistics, 90-day trend, models, keys (display form) and every retained log row,
//! as one JSON file or the logs as CSV. Logs are streamed page by page, so memory stays bounded
//! whatever the log's size.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures_util::stream;

use super::ConsoleState;
use crate::error::ConsoleError;
use crate::store::{CallMatch, LogQuery, UsageFilter};

use super::wire::{rfc3339, Export, LogRow};
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
pub async fn export(
    state: &ConsoleState,
    format: Format,
    source: Option<String>,
) -> Result<Response, ConsoleError> {
    let today = jiff::Timestamp::now()
        .to_zoned(state.config.timezone.clone())
        .date()
        .strftime("%Y%m%d")
        .to_string();
    let (head, content_type, ext) = match format {
        Format::Json => (
            json_head(state, source.clone()).await?,
            "application/json",
            "json",
        ),
        Format::Csv => (csv_head()?, "text/csv; charset=utf-8", "csv"),
    };
    let body = Body::from_stream(log_chunks(state.clone(), format, head, source));
    let disposition = format!("attachment; filename=\"token-stats-{today}.{ext}\"");
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

async fn json_head(state: &ConsoleState, source: Option<String>) -> Result<String, ConsoleError> {
    let stats = match source.clone() {
        Some(source) => stats::stats_of_source(state, source, UsageFilter::default()).await?,
        None => stats::stats(state, UsageFilter::default()).await?,
    };
    let head = Export {
        exported_at: rfc3339(jiff::Timestamp::now()),
        models: stats.models.clone(),
        stats,
        trend: stats::trend(state, 90, None, source).await?,
        keys: keys::list(state).await?,
        logs: Vec::new(),
    };
    let text = serde_json::to_string(&head).map_err(|e| ConsoleError::Internal(e.to_string()))?;
    // Reopen the empty logs array (the last field) to append the streamed rows.
    let open = text.strip_suffix("]}").unwrap_or(&text);
    Ok(open.to_owned())
}

struct Cursor {
    state: ConsoleState,
    source: Option<String>,
    format: Format,
    head: Option<String>,
    before_id: Option<i64>,
    first_row: bool,
    done: bool,
}

/// The head, then every log row page by page (newest first), then the closing bytes.
fn log_chunks(
    state: ConsoleState,
    format: Format,
    head: String,
    source: Option<String>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let cursor = Cursor {
        state,
        source,
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
            matches: cursor
                .source
                .clone()
                .map(CallMatch::Source)
                .into_iter()
                .collect(),
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
        let mut csv = csv_writer();
        for logged in &rows {
            let row = LogRow::from(logged);
            match cursor.format {
                Format::Json => {
                    if !cursor.first_row {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(&row).unwrap_or_else(|_| "null".into()));
                }
                Format::Csv => {
                    if let Err(e) = csv.write_record(csv_row(&row)) {
                        cursor.done = true;
                        return Some((Err(std::io::Error::other(e.to_string())), cursor));
                    }
                }
            }
            cursor.first_row = false;
        }
        if cursor.format == Format::Csv {
            match csv.into_inner() {
                Ok(bytes) => out.push_str(&String::from_utf8_lossy(&bytes)),
                Err(e) => {
                    cursor.done = true;
                    return Some((Err(std::io::Error::other(e.to_string())), cursor));
                }
            }
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

/// The CSV's columns.
const CSV_COLUMNS: [&str; 30] = [
    "id",
    "timestamp",
    "method",
    "endpoint",
    "status",
    "tokens",
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
    "duration",
    "ttft",
    "model",
    "key_id",
    "key_name",
    "stream",
    "estimated",
    "error",
    "client",
    "session_id",
    "user",
    "provider",
    "source",
    "alias",
    "reasoning_effort",
    "service_tier",
    "cost",
    "cost_nanos",
    "cost_status",
];

/// Characters that make a spreadsheet cell a formula (or a DDE call) when they start it.
const FORMULA_START: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];
/// Characters a spreadsheet may split a CSV line at, whatever the file says: Excel and LibreOffice
/// pick the separator from the locale (`;` in much of Europe) or the import dialog.
const SPLIT_AT: [char; 6] = [',', ';', '\t', '\r', '\n', '|'];

/// An RFC 4180 writer (quotes where needed, CRLF line ends) into memory.
fn csv_writer() -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new())
}

fn csv_head() -> Result<String, ConsoleError> {
    let mut csv = csv_writer();
    csv.write_record(CSV_COLUMNS)
        .map_err(|e| ConsoleError::Internal(e.to_string()))?;
    let bytes = csv
        .into_inner()
        .map_err(|e| ConsoleError::Internal(e.to_string()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Defuses spreadsheet formulas in a text cell (OWASP's advice): a `'` goes before a formula
/// character that starts the cell, and before one that starts any part a spreadsheet could split
/// the cell into (after `,` `;` tab, CR, LF or `|`, leading spaces and quotes skipped), so that
/// `a;=1+1` stays text even when opened with `;` as the separator. Other text is unchanged.
pub fn defuse(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    let mut part_start = true;
    for c in value.chars() {
        if part_start {
            if FORMULA_START.contains(&c) {
                out.push('\'');
                part_start = false;
            } else if c != ' ' && c != '"' && !SPLIT_AT.contains(&c) {
                part_start = false;
            }
        }
        out.push(c);
        if SPLIT_AT.contains(&c) {
            part_start = true;
        }
    }
    out
}

/// One log row's cells; every text cell defused.
fn csv_row(row: &LogRow) -> [String; 30] {
    let opt = |v: Option<String>| v.unwrap_or_default();
    [
        row.id.to_string(),
        defuse(&row.timestamp),
        defuse(&row.method),
        defuse(&row.endpoint),
        row.status.to_string(),
        row.tokens.to_string(),
        row.prompt_tokens.to_string(),
        row.completion_tokens.to_string(),
        row.cache_read_tokens.to_string(),
        row.cache_creation_tokens.to_string(),
        row.reasoning_tokens.to_string(),
        row.duration.to_string(),
        opt(row.ttft.map(|t| t.to_string())),
        defuse(&row.model),
        opt(row.key_id.map(|k| k.to_string())),
        defuse(row.key_name.as_deref().unwrap_or("")),
        row.stream.to_string(),
        row.estimated.to_string(),
        defuse(row.error.as_deref().unwrap_or("")),
        defuse(&row.client),
        defuse(row.session_id.as_deref().unwrap_or("")),
        defuse(row.user.as_deref().unwrap_or("")),
        defuse(&row.provider),
        defuse(&row.source),
        defuse(row.alias.as_deref().unwrap_or("")),
        defuse(row.reasoning_effort.as_deref().unwrap_or("")),
        defuse(row.service_tier.as_deref().unwrap_or("")),
        opt(row.cost_nanos.map(crate::pricing::usd_text)),
        opt(row.cost_nanos.map(|n| n.to_string())),
        row.cost_status.to_owned(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defuses_formulas_anywhere_a_spreadsheet_may_split() {
        let cases = [
            ("plain", "plain"),
            ("a,b", "a,b"),
            ("=SUM(A1)", "'=SUM(A1)"),
            ("-1", "'-1"),
            ("\tx", "'\tx"),
            ("a;=1+1", "a;'=1+1"),
            ("a; @SUM(1)", "a; '@SUM(1)"),
            ("a,\"+1", "a,\"'+1"),
            ("x|-2", "x|'-2"),
            ("gpt-4o", "gpt-4o"),
        ];
        for (input, want) in cases {
            assert_eq!(defuse(input), want, "{input:?}");
        }
    }

    #[test]
    fn formats_parse() {
        assert_eq!(format(None).ok(), Some(Format::Json));
        assert_eq!(format(Some("CSV")).ok(), Some(Format::Csv));
        assert!(format(Some("xml")).is_err());
    }
}
