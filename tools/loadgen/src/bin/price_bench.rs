//! `price-bench`: how long token-console's `PriceBook` takes to price one call, in-process, for
//! the benchmark's pricing ratio (`bench/tc_bench/pricing.py`): a model found in the bundled
//! table, one matched by a configuration override, and an unknown model (the slowest lookup:
//! every provider's rules are tried). Prints one JSON object: nanoseconds per call of each.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

use token_console::pricing::{femtos_per_token, Override, PriceBook, Prices, Tiered};
use token_console::usage::TokenUsage;

/// Calls priced per case.
const CALLS: u32 = 200_000;

fn main() -> ExitCode {
    match run() {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("price-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<serde_json::Value, String> {
    let price = |usd| Tiered::flat(femtos_per_token(usd).unwrap_or(0));
    let overrides = [Override {
        pattern: "bench-override*".into(),
        prices: Prices {
            input: price(0.15),
            output: price(0.6),
            cache_read: Some(price(0.075)),
            cache_write: None,
        },
        from: None,
    }];
    let started = Instant::now();
    let book = PriceBook::new(&overrides)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let tokens = TokenUsage {
        prompt: 1_234,
        completion: 56,
        cache_read: 1_000,
        cache_creation: 0,
        reasoning: 7,
        total: 1_290,
    };
    let at = jiff::Timestamp::now();
    let mut out = serde_json::Map::new();
    for (case, model) in [
        ("bundled_table", "gpt-4o-mini"),
        ("override", "bench-override-1"),
        ("unpriced", "no-such-model-anywhere"),
    ] {
        let t0 = Instant::now();
        for _ in 0..CALLS {
            black_box(book.cost_of(black_box(model), at, black_box(&tokens), false));
        }
        let ns = t0.elapsed().as_nanos() as f64 / f64::from(CALLS);
        out.insert(
            case.into(),
            serde_json::json!({"model": model, "ns_per_call": (ns * 10.0).round() / 10.0}),
        );
    }
    out.insert("calls_per_case".into(), CALLS.into());
    out.insert(
        "table_load_ms".into(),
        ((load_ms * 10.0).round() / 10.0).into(),
    );
    Ok(serde_json::Value::Object(out))
}
