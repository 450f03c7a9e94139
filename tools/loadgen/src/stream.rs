//! Many concurrent streamed requests: time to first token, gap between chunks, completeness.
//!
//! Every stream gets its own connection, opened before the clock starts (so connecting is not
//! measured), and stream `i` is sent at `i × ramp / N`. Time to first token is measured from
//! the moment the request is sent to the arrival of the first body frame that carries a content
//! delta (`"content":"` followed by text); the chunk gap is the time between consecutive frames
//! that carry content.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde_json::{json, Value};

use crate::cli::Options;
use crate::http::Target;
use crate::report::Latencies;

const CONTENT_MARK: &[u8] = b"\"content\":\"";

struct Stats {
    ttft: Latencies,
    gap: Latencies,
    total: Latencies,
    ok: u64,
    failed: u64,
    statuses: std::collections::BTreeMap<u16, u64>,
    content_frames_min: u64,
    content_frames_max: u64,
}

/// Whether a frame carries a non-empty content delta.
fn has_content(frame: &[u8]) -> bool {
    frame
        .windows(CONTENT_MARK.len() + 1)
        .any(|w| w.starts_with(CONTENT_MARK) && w[CONTENT_MARK.len()] != b'"')
}

/// Runs the streams and returns the JSON report.
pub async fn run(o: &Options) -> Result<Value, String> {
    let target = Rc::new(Target::new(&o.url, &o.headers, o.body.clone())?);
    let mut senders = Vec::with_capacity(o.streams);
    for _ in 0..o.streams {
        senders.push(
            target
                .connect()
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", target.authority))?,
        );
    }
    let stats = Rc::new(RefCell::new(Stats {
        ttft: Latencies::new()?,
        gap: Latencies::new()?,
        total: Latencies::new()?,
        ok: 0,
        failed: 0,
        statuses: std::collections::BTreeMap::new(),
        content_frames_min: u64::MAX,
        content_frames_max: 0,
    }));
    let t0 = tokio::time::Instant::now();
    let n = senders.len() as u32;
    let mut tasks = Vec::with_capacity(senders.len());
    for (i, mut sender) in senders.into_iter().enumerate() {
        let target = target.clone();
        let stats = stats.clone();
        let timeout = o.timeout;
        let offset = o.ramp.checked_div(n).unwrap_or_default() * i as u32;
        tasks.push(tokio::task::spawn_local(async move {
            tokio::time::sleep_until(t0 + offset).await;
            let outcome = tokio::time::timeout(timeout, one(&mut sender, &target)).await;
            let mut s = stats.borrow_mut();
            match outcome {
                Ok(Ok(stream)) if (200..300).contains(&stream.status) => {
                    s.ok += 1;
                    if let Some(ttft) = stream.ttft {
                        s.ttft.record(ttft);
                    }
                    for gap in &stream.gaps {
                        s.gap.record(*gap);
                    }
                    s.total.record(stream.total);
                    s.content_frames_min = s.content_frames_min.min(stream.content_frames);
                    s.content_frames_max = s.content_frames_max.max(stream.content_frames);
                }
                Ok(Ok(stream)) => {
                    s.failed += 1;
                    *s.statuses.entry(stream.status).or_default() += 1;
                }
                _ => s.failed += 1,
            }
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| format!("a stream task failed: {e}"))?;
    }
    let s = stats.borrow();
    let statuses: serde_json::Map<String, Value> = s
        .statuses
        .iter()
        .map(|(code, n)| (code.to_string(), json!(n)))
        .collect();
    Ok(json!({
        "mode": "stream",
        "url": o.url,
        "streams": o.streams,
        "ramp_ms": o.ramp.as_millis() as u64,
        "ok": s.ok,
        "failed": s.failed,
        "status_errors": statuses,
        "elapsed_s": t0.elapsed().as_secs_f64(),
        "content_frames_min": if s.ok == 0 { 0 } else { s.content_frames_min },
        "content_frames_max": s.content_frames_max,
        "ttft_ms": s.ttft.summary(),
        "gap_ms": s.gap.summary(),
        "stream_total_ms": s.total.summary(),
    }))
}

struct StreamResult {
    status: u16,
    ttft: Option<Duration>,
    gaps: Vec<Duration>,
    total: Duration,
    content_frames: u64,
}

async fn one(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    target: &Target,
) -> Result<StreamResult, String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let request = target.request().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut result = StreamResult {
        status,
        ttft: None,
        gaps: Vec::with_capacity(256),
        total: Duration::ZERO,
        content_frames: 0,
    };
    let mut last_content: Option<Instant> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        let now = Instant::now();
        let Some(data) = frame.data_ref() else {
            continue;
        };
        if has_content(data) {
            result.content_frames += 1;
            match last_content {
                None => result.ttft = Some(now - start),
                Some(prev) => result.gaps.push(now - prev),
            }
            last_content = Some(now);
        }
    }
    result.total = start.elapsed();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_frames_are_recognised() {
        assert!(has_content(br#"data: {"delta":{"content":"tok0"}}"#));
        assert!(!has_content(
            br#"data: {"delta":{"role":"assistant","content":""}}"#
        ));
        assert!(!has_content(b"data: [DONE]"));
    }
}
