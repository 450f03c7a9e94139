//! Entry points for the fuzz targets in `fuzz/`: each feeds arbitrary bytes to a parser the
//! gateway runs on data it does not control. They must never panic, whatever the input.

use super::sse::{parse_event, EventSplitter};
use super::usage::{from_body, StreamTally};

/// An upstream SSE stream, cut into chunks at the bytes' own values, through the event splitter
/// and the usage tally (with and without hiding the usage chunk).
pub fn stream_usage(data: &[u8]) {
    for hide in [false, true] {
        let mut splitter = EventSplitter::default();
        let mut tally = StreamTally::new(hide);
        let cut = usize::from(data.first().copied().unwrap_or(1)).max(1);
        for chunk in data.chunks(cut) {
            for event in splitter.push(chunk) {
                let (_, payload) = parse_event(&event);
                tally.observe(&payload);
            }
        }
        if let Some(rest) = splitter.finish() {
            tally.observe(&parse_event(&rest).1);
        }
        let _ = tally.reported();
    }
}

/// A non-stream upstream answer body.
pub fn body_usage(data: &[u8]) {
    let _ = from_body(data);
}

/// A client's request body, as the gateway reads it before forwarding.
pub fn request(data: &[u8]) {
    super::proxy::inspect(data);
}

/// A client's request as the gateway reads it: header lines (`name: value`, one per line) up to
/// an empty line, then the body. The headers that parse go through the key lookup, the body
/// through every read of [`request`].
pub fn request_headers(data: &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let mut headers = axum::http::HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name),
            axum::http::HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    let _ = super::proxy::client_key(&headers);
    super::proxy::inspect(body);
}

#[cfg(test)]
mod tests {
    /// Replays the seed corpora of the gateway's fuzz targets (CI has no nightly for cargo-fuzz).
    #[test]
    fn seed_corpora_run_without_panic() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 4] = [
            ("stream_usage", super::stream_usage),
            ("body_usage", super::body_usage),
            ("request", super::request),
            ("request_headers", super::request_headers),
        ];
        for (name, target) in targets {
            let mut seeds = 0;
            for entry in std::fs::read_dir(root.join(name)).unwrap() {
                target(&std::fs::read(entry.unwrap().path()).unwrap());
                seeds += 1;
            }
            assert!(seeds > 0, "fuzz/corpus/{name} has seeds");
        }
    }
}
