//! Test behaviours selected by the request's `model` name (`mock-error-429`, `mock-latency-50`, …).

use std::time::Duration;

/// Delay of plain `mock-slow-first-token`.
const DEFAULT_SLOW_FIRST_TOKEN_MS: u64 = 2000;
/// Upper bound on `mock-chunks-<n>`, so a typo cannot make a gigantic stream.
const MAX_CHUNKS: usize = 100_000;

/// What the mock does for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Ordinary success.
    Normal,
    /// Success without any usage numbers.
    NoUsage,
    /// That HTTP status with a protocol-shaped error body and `x-mock-error: 1`.
    Error(u16),
    /// Wait before sending anything (headers included).
    Latency(Duration),
    /// Stream: headers at once, first event after the delay. Non-stream: delayed response.
    SlowFirstToken(Duration),
    /// 200 headers, then no body ever.
    StallAfterHeaders,
    /// A few chunks (or half a JSON body), then the connection is aborted.
    DropMidStream,
    /// A 200 whose body is not valid JSON / SSE.
    Garbage,
    /// Stream `count` content chunks, `gap` apart.
    Chunks { count: usize, gap: Duration },
    /// Usage shaped like a Claude Code turn: 4 input, 30,000 cache-read, 5,000 cache-write and 12
    /// output tokens (Anthropic); other protocols answer normally.
    ClaudeCodeUsage,
    /// Usage that reports 0 input and 0 output tokens beside a real answer.
    ZeroUsage,
    /// Stream: a few chunks, then the body ends cleanly without the protocol's terminal event.
    EndEarly,
}

/// Reads the behaviour from a model name; anything unrecognised is [`Behaviour::Normal`].
pub fn parse(model: &str) -> Behaviour {
    let Some(rest) = model.strip_prefix("mock-") else {
        return Behaviour::Normal;
    };
    match rest {
        "no-usage" => return Behaviour::NoUsage,
        "stall-after-headers" => return Behaviour::StallAfterHeaders,
        "drop-mid-stream" => return Behaviour::DropMidStream,
        "garbage" => return Behaviour::Garbage,
        "claude-code-usage" => return Behaviour::ClaudeCodeUsage,
        "zero-usage" => return Behaviour::ZeroUsage,
        "end-early" => return Behaviour::EndEarly,
        "slow-first-token" => return slow_first_token(DEFAULT_SLOW_FIRST_TOKEN_MS),
        _ => {}
    }
    parse_numbered(rest).unwrap_or(Behaviour::Normal)
}

fn parse_numbered(rest: &str) -> Option<Behaviour> {
    if let Some(code) = rest.strip_prefix("error-") {
        return code
            .parse::<u16>()
            .ok()
            .filter(|c| (400..=599).contains(c))
            .map(Behaviour::Error);
    }
    if let Some(ms) = rest.strip_prefix("latency-") {
        return ms.parse().ok().map(|ms| Behaviour::Latency(millis(ms)));
    }
    if let Some(ms) = rest.strip_prefix("slow-first-token-") {
        return ms.parse().ok().map(slow_first_token);
    }
    let spec = rest.strip_prefix("chunks-")?;
    let (count, gap) = spec.split_once("-gap-")?;
    let count = count.parse::<usize>().ok()?.min(MAX_CHUNKS);
    let gap = millis(gap.parse().ok()?);
    Some(Behaviour::Chunks { count, gap })
}

fn slow_first_token(ms: u64) -> Behaviour {
    Behaviour::SlowFirstToken(millis(ms))
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names() {
        let ms = Duration::from_millis;
        let cases = [
            ("gpt-4o", Behaviour::Normal),
            ("mock-gpt", Behaviour::Normal),
            ("mock-claude", Behaviour::Normal),
            ("", Behaviour::Normal),
            ("mock-no-usage", Behaviour::NoUsage),
            ("mock-error-500", Behaviour::Error(500)),
            ("mock-error-429", Behaviour::Error(429)),
            ("mock-error-400", Behaviour::Error(400)),
            ("mock-error-200", Behaviour::Normal),
            ("mock-error-abc", Behaviour::Normal),
            ("mock-latency-250", Behaviour::Latency(ms(250))),
            ("mock-latency-", Behaviour::Normal),
            ("mock-slow-first-token", Behaviour::SlowFirstToken(ms(2000))),
            (
                "mock-slow-first-token-300",
                Behaviour::SlowFirstToken(ms(300)),
            ),
            ("mock-stall-after-headers", Behaviour::StallAfterHeaders),
            ("mock-drop-mid-stream", Behaviour::DropMidStream),
            ("mock-garbage", Behaviour::Garbage),
            ("mock-claude-code-usage", Behaviour::ClaudeCodeUsage),
            ("mock-zero-usage", Behaviour::ZeroUsage),
            ("mock-end-early", Behaviour::EndEarly),
            (
                "mock-chunks-200-gap-10",
                Behaviour::Chunks {
                    count: 200,
                    gap: ms(10),
                },
            ),
            (
                "mock-chunks-5-gap-0",
                Behaviour::Chunks {
                    count: 5,
                    gap: ms(0),
                },
            ),
            ("mock-chunks-5", Behaviour::Normal),
            ("mock-chunks-x-gap-1", Behaviour::Normal),
        ];
        for (model, want) in cases {
            assert_eq!(parse(model), want, "model {model:?}");
        }
    }
}
