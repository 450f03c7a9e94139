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
