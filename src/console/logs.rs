//! The request log: pages of raw records and the live stream of new ones (Server-Sent Events).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt as _;

use super::ConsoleState;
use crate::error::ConsoleError;
use crate::store::{CallKind, LogQuery, StatusFilter};
use crate::usage::LoggedCall;

use super::wire::LogRow;

/// Most live-log streams open at once from one client address.
pub const MAX_STREAMS_PER_CLIENT: usize = 8;
/// Most live-log streams open at once in all.
pub const MAX_STREAMS: usize = 64;

/// The live-log streams open now, per client address: each holds a task and a subscription to
/// every new record, so their number is capped.
#[derive(Default)]
pub struct StreamLimits {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One open live-log stream; dropping it (when the client goes away) frees its place.
pub struct StreamSlot {
    limits: Arc<StreamLimits>,
    ip: IpAddr,
}

impl StreamLimits {
    /// Takes a place for a new stream from `ip`, or says why there is none.
    pub fn open(self: &Arc<Self>, ip: IpAddr) -> Result<StreamSlot, ConsoleError> {
        let ip = ip.to_canonical();
        let mut open = self
            .open
            .lock()
            .map_err(|_| ConsoleError::Internal("the live-log stream table is poisoned".into()))?;
        let (total, per_client) = &mut *open;
        let mine = per_client.get(&ip).copied().unwrap_or(0);
        if mine >= MAX_STREAMS_PER_CLIENT {
            return Err(ConsoleError::TooManyRequests(format!(
                "this address already has {MAX_STREAMS_PER_CLIENT} live-log streams open; close a console tab (or its stream) and try again"
            )));
        }
        if *total >= MAX_STREAMS {
            return Err(ConsoleError::TooManyRequests(format!(
                "the console already serves {MAX_STREAMS} live-log streams; close some console tabs and try again"
            )));
        }
        *total += 1;
        per_client.insert(ip, mine + 1);
        Ok(StreamSlot {
            limits: self.clone(),
            ip,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.limits.open.lock() {
            let (total, per_client) = &mut *open;
            *total = total.saturating_sub(1);
            if let Some(n) = per_client.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_client.remove(&self.ip);
                }
            }
        }
    }
}

/// A page of the log, newest first.
pub async fn page(state: &ConsoleState, query: LogQuery) -> Result<Vec<LogRow>, ConsoleError> {
    let rows = state.store.logs(query).await?;
    Ok(rows.iter().map(LogRow::from).collect())
}

/// Whether a new record passes the filters, with the same meaning as the store's query.
pub fn matches(query: &LogQuery, logged: &LoggedCall) -> bool {
    let c = &logged.call;
    let contains =
        |haystack: &str, needle: &str| haystack.to_lowercase().contains(&needle.to_lowercase());
    if let Some(q) = &query.q {
        let hit = contains(&c.endpoint, q)
            || contains(&c.model, q)
            || contains(&c.method, q)
            || c.status.to_string().contains(q.as_str());
        if !hit {
            return false;
        }
    }
    let checks = [
        match query.status {
            Some(StatusFilter::Exact(code)) => c.status == code,
            Some(StatusFilter::Class(class)) => c.status / 100 == class,
            None => true,
        },
        query.since.is_none_or(|s| c.ts >= s),
        query.until.is_none_or(|u| c.ts < u),
        match query.kind {
            Some(CallKind::Call) => !c.is_count_tokens(),
            Some(CallKind::CountTokens) => c.is_count_tokens(),
            None => true,
        },
        query.matches.iter().all(|m| m.holds(c)),
    ];
    checks.iter().all(|&ok| ok)
}

/// Every new record that passes the filters, as `event: log` with the row as JSON data.
///
/// The stream holds `slot` until it ends, so that its place is free again when the client leaves.
pub fn live(
    state: &ConsoleState,
    query: LogQuery,
    slot: StreamSlot,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut stop = state.shutdown.clone();
    let stopping = async move {
        let _ = stop.wait_for(|stopping| *stopping).await;
    };
    let stream = BroadcastStream::new(state.recorder.subscribe()).filter_map(move |item| {
        let _held = &slot;
        match item {
            Ok(logged) if matches(&query, &logged) => {
                let row = LogRow::from(logged.as_ref());
                Some(Ok(Event::default()
                    .event("log")
                    .json_data(&row)
                    .unwrap_or_else(|_| {
                        Event::default().comment("unserializable row")
                    })))
            }
            Ok(_) => None,
            Err(BroadcastStreamRecvError::Lagged(missed)) => Some(Ok(Event::default()
                .event("lagged")
                .data(missed.to_string()))),
        }
    });
    Sse::new(futures_util::StreamExt::take_until(
        stream,
        Box::pin(stopping),
    ))
    .keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keep-alive"),
    )
}
