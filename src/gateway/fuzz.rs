//! Entry points for the fuzz targets in `fuzz/`: each feeds arbitrary bytes to a parser the
//! gateway runs on data it does not control. They must never panic, whatever the input.

use super::sse::{parse_event, EventSplitter};
use super::tally::{from_body, StreamTally};

/// An upstream SSE stream, cut into chunks at the bytes' own values, through the event splitter
/// and the usage tally (with and without hiding the usage chunk).
pub fn stream_usage(data: &[u8]) {
    for hide in [false, true] {
        let mut splitter = EventSplitter::default();
        let mut tally = StreamTally::new(hide);
        let cut = usize::from(data.first().copied().unwrap_or(1)).max(1);
        for chunk in data.chunks(cut) {
            splitter.push(bytes::Bytes::copy_from_slice(chunk));
            while let Some(event) = splitter.next_event() {
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

/// The configuration loader, fed text that may be anything.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::Config::from_yaml(text, &crate::config::Cli::default());
    }
}

/// Replays every seed of `fuzz/corpus/` through its target in the ordinary test run, then a fixed
/// number of deterministic mutations of each seed (byte flips, cuts, insertions of the tokens the
/// parsers look for, splices of two seeds). The instrumented, coverage-guided campaigns are
/// `scripts/fuzz`'s; this keeps every target exercised in CI without a second dependency tree.
#[cfg(test)]
mod replay {
    use std::path::{Path, PathBuf};

    /// A fuzz target's entry point.
    type Target = fn(&[u8]);

    /// Every fuzz target and the entry point it drives: a target added to `fuzz/fuzz_targets`
    /// without a line here fails [`every_target_is_replayed`].
    const TARGETS: &[(&str, Target)] = &[
        ("stream_usage", super::stream_usage),
        ("body_usage", super::body_usage),
        ("request", super::request),
        ("config", super::config),
        ("request_headers", super::request_headers),
    ];
    /// Mutations tried per seed.
    const MUTATIONS: usize = 3_000;
    /// Fragments the parsers branch on, inserted at random places.
    #[rustfmt::skip]
    const TOKENS: &[&[u8]] = &[
        b"{", b"}", b"[", b"]", b"\"", b":", b",", b"\n", b"\n\n", b"\r\n", b"data: ", b"event: ",
        b"[DONE]", b"\"usage\":", b"\"choices\":[]", b"\"prompt_tokens\":", b"\"input_tokens\":",
        b"\"output_tokens\":", b"\"cache_read_input_tokens\":", b"\"message\":", b"\"response\":",
        b"\"delta\":", b"\"model\":", b"\"stream\":true", b"\"max_tokens\":", b"18446744073709551616",
        b"-1", b"1e400", b"null", b"\\u0000", b"\xff\xfe", b"port: ", b"console:\n  ", b"${X}",
        b"providers:\n  - ", b"&a [*a]",
    ];

    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
    }

    fn seeds(target: &str) -> Vec<Vec<u8>> {
        let dir = fuzz_dir().join("corpus").join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files.iter().map(|f| std::fs::read(f).unwrap()).collect()
    }

    /// xorshift64*: deterministic, so a failure is the same on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
        let mut data = seed.to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(data.len() + 1);
            match rng.below(5) {
                0 if !data.is_empty() => {
                    let i = rng.below(data.len());
                    data[i] ^= 1 << rng.below(8);
                }
                1 => data.truncate(at),
                2 => {
                    let token = TOKENS[rng.below(TOKENS.len())];
                    data.splice(at..at, token.iter().copied());
                }
                3 => {
                    let from = rng.below(other.len() + 1);
                    data.splice(at..at, other[from..].iter().copied());
                }
                _ => {
                    let end = (at + rng.below(16)).min(data.len());
                    data.drain(at..end);
                }
            }
        }
        data
    }

    #[test]
    fn every_target_is_replayed() {
        let mut found: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
            .collect();
        found.sort();
        let mut listed: Vec<String> = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
        listed.sort();
        assert_eq!(found, listed, "each fuzz target needs a line in TARGETS");
    }

    #[test]
    fn corpora_and_their_mutations_never_panic() {
        for (name, target) in TARGETS {
            let seeds = seeds(name);
            assert!(!seeds.is_empty(), "fuzz/corpus/{name} has no seed");
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
            for (i, seed) in seeds.iter().enumerate() {
                target(seed);
                let other = &seeds[(i + 1) % seeds.len()];
                for _ in 0..MUTATIONS {
                    target(&mutate(&mut rng, seed, other));
                }
            }
        }
    }
}
