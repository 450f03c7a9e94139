//! What calls cost in money: the price book (the bundled genai-prices table under the
//! `pricing:` overrides of the configuration) and the exact cost of a call's tokens in integer
//! nano-dollars. Pure: no I/O, no SQL.
//!
//! Arithmetic: a price of `p` USD per million tokens is `p × 10⁹` femto-dollars (10⁻¹⁵ USD) per
//! token, exact for prices with up to nine decimals (prices are read as `f64` and rounded to the
//! nearest femto-dollar once). A call's cost is the sum over its token kinds of
//! tokens × femto-dollars in `u128`, rounded once to the nearest nano-dollar (half up).

mod table;

use crate::usage::TokenUsage;

pub use table::{Table, BUNDLED_JSON};

/// Femto-dollars in a nano-dollar.
const FEMTOS_PER_NANO: u128 = 1_000_000;
/// Nano-dollars in a dollar.
pub const NANOS_PER_USD: u64 = 1_000_000_000;

/// A price of `usd_per_mtok` USD per million tokens in femto-dollars per token; `None` for a
/// negative, non-finite or absurd (over a million USD per million tokens) price.
pub fn femtos_per_token(usd_per_mtok: f64) -> Option<u64> {
    if !usd_per_mtok.is_finite() || !(0.0..=1e6).contains(&usd_per_mtok) {
        return None;
    }
    Some((usd_per_mtok * 1e9).round() as u64)
}

/// A price per token, possibly by long-context tier: `tiers` (ascending `(start, price)`) apply
/// to every token of the call when its input tokens exceed `start`, as in genai-prices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tiered {
    /// Femto-dollars per token below the first tier.
    pub base: u64,
    /// `(input tokens above which it applies, femto-dollars per token)`, ascending.
    pub tiers: Vec<(u64, u64)>,
}

impl Tiered {
    /// One price whatever the call's size.
    pub fn flat(femtos: u64) -> Self {
        Self {
            base: femtos,
            tiers: Vec::new(),
        }
    }

    /// The price per token for a call of `input` input tokens.
    fn at(&self, input: u64) -> u64 {
        self.tiers
            .iter()
            .rev()
            .find(|(start, _)| input > *start)
            .map_or(self.base, |(_, price)| *price)
    }

    /// The highest price of any tier.
    fn highest(&self) -> u64 {
        self.tiers.iter().map(|(_, p)| *p).fold(self.base, u64::max)
    }
}

/// A model's prices per token kind. Cache reads and writes without a price of their own cost
/// the input price (as in genai-prices: a token kind without a price counts as its parent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prices {
    /// Input tokens that were neither read from nor written to the cache.
    pub input: Tiered,
    /// Output tokens, reasoning included.
    pub output: Tiered,
    /// Input tokens read from the provider's prompt cache.
    pub cache_read: Option<Tiered>,
    /// Input tokens written to the provider's prompt cache.
    pub cache_write: Option<Tiered>,
}

impl Prices {
    /// The cost of `tokens` in femto-dollars. Prompt tokens include cache reads and writes
    /// (`WireUsage::to_tokens`); completion tokens include reasoning.
    fn femtos(&self, tokens: &TokenUsage) -> u128 {
        let input = tokens.prompt;
        let cached = tokens.cache_read.saturating_add(tokens.cache_creation);
        let plain = input.saturating_sub(cached);
        let cache_read = self.cache_read.as_ref().unwrap_or(&self.input);
        let cache_write = self.cache_write.as_ref().unwrap_or(&self.input);
        let line = |count: u64, price: &Tiered| u128::from(count) * u128::from(price.at(input));
        line(plain, &self.input)
            + line(tokens.cache_read, cache_read)
            + line(tokens.cache_creation, cache_write)
            + line(tokens.completion, &self.output)
    }

    /// The most any input token can cost, and the most an output token can, in femto-dollars.
    fn highest(&self) -> (u64, u64) {
        let input = [
            Some(&self.input),
            self.cache_read.as_ref(),
            self.cache_write.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(Tiered::highest)
        .max()
        .unwrap_or(0);
        (input, self.output.highest())
    }
}

/// Femto-dollars rounded to the nearest nano-dollar (half up), saturating.
fn to_nanos(femtos: u128) -> u64 {
    u64::try_from((femtos + FEMTOS_PER_NANO / 2) / FEMTOS_PER_NANO).unwrap_or(u64::MAX)
}

/// A price of the configuration (`pricing.models[]`): a glob on the model name as recorded,
/// its prices, and the instant from which they apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// `*` and `?` glob on the recorded model name.
    pub pattern: String,
    /// Its prices.
    pub prices: Prices,
    /// Effective from this instant on; `None`: always.
    pub from: Option<jiff::Timestamp>,
}

impl Override {
    /// How specific the pattern is: its literal characters (`gpt-4o-mini*` beats `gpt-4o*`).
    fn specificity(&self) -> usize {
        self.pattern
            .chars()
            .filter(|c| !matches!(c, '*' | '?'))
            .count()
    }
}

/// Whether a call's cost is known, and how.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CostStatus {
    /// Priced from tokens the provider reported.
    #[default]
    Priced,
    /// Priced from tokens the gateway estimated.
    Estimated,
    /// No price is known for the model: the cost is unknown (never 0).
    Unpriced,
}

impl CostStatus {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Priced => "priced",
            Self::Estimated => "estimated",
            Self::Unpriced => "unpriced",
        }
    }

    /// Reads a stored spelling (anything unknown is `unpriced`).
    pub fn parse(text: &str) -> Self {
        match text {
            "priced" => Self::Priced,
            "estimated" => Self::Estimated,
            _ => Self::Unpriced,
        }
    }
}

/// The prices the gateway charges calls at: the configuration's overrides first, then the
/// bundled table.
pub struct PriceBook {
    /// Most specific first; equal specificity in configuration order.
    overrides: Vec<(wildmatch::WildMatch, Override)>,
    table: Option<Table>,
}

impl std::fmt::Debug for PriceBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PriceBook")
            .field("overrides", &self.overrides.len())
            .field("bundled_models", &self.table.as_ref().map_or(0, Table::len))
            .finish()
    }
}

impl PriceBook {
    /// The bundled table under `overrides`.
    pub fn new(overrides: &[Override]) -> Result<Self, String> {
        Ok(Self::with_table(
            overrides,
            Some(Table::parse(BUNDLED_JSON)?),
        ))
    }

    /// `overrides` over `table` (none: only the overrides price anything).
    pub fn with_table(overrides: &[Override], table: Option<Table>) -> Self {
        let mut sorted: Vec<&Override> = overrides.iter().collect();
        sorted.sort_by_key(|o| std::cmp::Reverse(o.specificity()));
        Self {
            overrides: sorted
                .into_iter()
                .map(|o| (wildmatch::WildMatch::new(&o.pattern), o.clone()))
                .collect(),
            table,
        }
    }

    /// The prices of `model` for a call at `at`: of the overrides that match and are in effect,
    /// the most specific, and among equally specific ones the latest `from`; else the table's.
    pub fn prices(&self, model: &str, at: jiff::Timestamp) -> Option<&Prices> {
        let mut best: Option<&Override> = None;
        for (glob, o) in &self.overrides {
            if best.is_some_and(|b| b.specificity() > o.specificity()) {
                break;
            }
            let effective = o.from.is_none_or(|from| at >= from);
            if effective && glob.matches(model) && best.is_none_or(|b| o.from > b.from) {
                best = Some(o);
            }
        }
        match best {
            Some(o) => Some(&o.prices),
            None => self.table.as_ref()?.lookup(model, at),
        }
    }

    /// The cost of `tokens` used by a call to `model` at `at`, in nano-dollars; `None` when no
    /// price is known.
    pub fn cost_nanos(&self, model: &str, at: jiff::Timestamp, tokens: &TokenUsage) -> Option<u64> {
        self.prices(model, at).map(|p| to_nanos(p.femtos(tokens)))
    }

    /// An upper bound of what a call to `model` at `at` can cost, in nano-dollars, whatever its
    /// input tokens turn out to be (plain, cache reads or cache writes) and at the highest
    /// tier: `input_bound` input and `output_bound` output tokens at the highest prices, rounded
    /// up. `None` when no price is known.
    pub fn max_cost_nanos(
        &self,
        model: &str,
        at: jiff::Timestamp,
        input_bound: u64,
        output_bound: u64,
    ) -> Option<u64> {
        let (input, output) = self.prices(model, at)?.highest();
        let femtos = u128::from(input_bound) * u128::from(input)
            + u128::from(output_bound) * u128::from(output);
        Some(u64::try_from(femtos.div_ceil(FEMTOS_PER_NANO)).unwrap_or(u64::MAX))
    }

    /// The cost and its status of a call to `model` at `at` that used `tokens` (`estimated`:
    /// counted by the gateway's tokenizer). A call that used no tokens costs nothing, whatever
    /// its model (a refusal, a 404 for an unknown model).
    pub fn cost_of(
        &self,
        model: &str,
        at: jiff::Timestamp,
        tokens: &TokenUsage,
        estimated: bool,
    ) -> (Option<u64>, CostStatus) {
        if tokens == &TokenUsage::default() {
            return (Some(0), CostStatus::Priced);
        }
        match self.cost_nanos(model, at, tokens) {
            None => (None, CostStatus::Unpriced),
            Some(nanos) if estimated => (Some(nanos), CostStatus::Estimated),
            Some(nanos) => (Some(nanos), CostStatus::Priced),
        }
    }
}

/// A date (midnight UTC) or an RFC 3339 instant, as `from` values are written, to the
/// millisecond (calls are stored to the millisecond: a price then applies to the same calls
/// when they are recorded and when they are repriced).
pub fn parse_instant(text: &str) -> Option<jiff::Timestamp> {
    let text = text.trim();
    let ts = text.parse::<jiff::Timestamp>().ok().or_else(|| {
        let date = text.parse::<jiff::civil::Date>().ok()?;
        Some(date.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp())
    })?;
    jiff::Timestamp::from_millisecond(ts.as_millisecond()).ok()
}

/// Nano-dollars as a USD number for the wire (exact to the nano-dollar up to 2⁵³ nanos).
pub fn usd(nanos: u64) -> f64 {
    nanos as f64 / NANOS_PER_USD as f64
}

/// Nano-dollars as a decimal USD text with nine decimals, e.g. `0.000012500`.
pub fn usd_text(nanos: u64) -> String {
    format!("{}.{:09}", nanos / NANOS_PER_USD, nanos % NANOS_PER_USD)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> jiff::Timestamp {
        text.parse().unwrap()
    }

    fn flat(input: f64, output: f64, read: Option<f64>, write: Option<f64>) -> Prices {
        let f = |usd| Tiered::flat(femtos_per_token(usd).unwrap());
        Prices {
            input: f(input),
            output: f(output),
            cache_read: read.map(f),
            cache_write: write.map(f),
        }
    }

    fn usage(prompt: u64, completion: u64, read: u64, write: u64) -> TokenUsage {
        TokenUsage {
            prompt,
            completion,
            cache_read: read,
            cache_creation: write,
            reasoning: 0,
            total: prompt + completion,
        }
    }

    #[test]
    fn each_token_kind_at_its_price_rounded_once() {
        let book = PriceBook::with_table(
            &[Override {
                pattern: "m*".into(),
                prices: flat(0.15, 0.6, Some(0.075), Some(0.1875)),
                from: None,
            }],
            None,
        );
        let at = ts("2026-01-01T00:00:00Z");
        // 1000 plain input tokens at $0.15 per million: 1000 × 150 nano-dollars.
        assert_eq!(
            book.cost_nanos("m", at, &usage(1000, 0, 0, 0)),
            Some(150_000)
        );
        // One token of each kind: 150 + 75 + 187.5 + 600 nano-dollars, rounded once (half up).
        let one_each = usage(3, 1, 1, 1);
        assert_eq!(book.cost_nanos("m", at, &one_each), Some(1_013));
        assert_eq!(to_nanos(1_012_500), 1);
        assert_eq!(to_nanos(1_500_000), 2);
        assert_eq!(to_nanos(1_499_999), 1);
        assert_eq!(book.cost_nanos("other", at, &one_each), None);
    }

    #[test]
    fn missing_cache_prices_fall_back_to_input() {
        let book = PriceBook::with_table(
            &[Override {
                pattern: "m".into(),
                prices: flat(2.0, 0.0, None, None),
                from: None,
            }],
            None,
        );
        let at = ts("2026-01-01T00:00:00Z");
        assert_eq!(
            book.cost_nanos("m", at, &usage(1000, 0, 600, 300)),
            Some(2_000_000)
        );
    }

    #[test]
    fn tiers_price_the_whole_call_above_their_start() {
        let prices = Prices {
            input: Tiered {
                base: 3_000_000_000,
                tiers: vec![(200_000, 6_000_000_000)],
            },
            output: Tiered::flat(15_000_000_000),
            cache_read: None,
            cache_write: None,
        };
        assert_eq!(
            prices.femtos(&usage(200_000, 0, 0, 0)),
            200_000 * 3_000_000_000
        );
        assert_eq!(
            prices.femtos(&usage(200_001, 0, 0, 0)),
            200_001 * 6_000_000_000
        );
        assert_eq!(prices.highest(), (6_000_000_000, 15_000_000_000));
    }

    #[test]
    fn most_specific_override_in_effect_wins() {
        let o = |pattern: &str, input: f64, from: Option<&str>| Override {
            pattern: pattern.into(),
            prices: flat(input, 0.0, None, None),
            from: from.map(ts),
        };
        let book = PriceBook::with_table(
            &[
                o("gpt-*", 1.0, None),
                o("gpt-4o*", 2.0, None),
                o("gpt-4o*", 3.0, Some("2026-12-01T00:00:00Z")),
            ],
            None,
        );
        let input = |model: &str, at: &str| book.prices(model, ts(at)).map(|p| p.input.base);
        assert_eq!(input("gpt-3", "2026-01-01T00:00:00Z"), Some(1_000_000_000));
        assert_eq!(
            input("gpt-4o", "2026-11-30T23:59:59.999Z"),
            Some(2_000_000_000)
        );
        assert_eq!(input("gpt-4o", "2026-12-01T00:00:00Z"), Some(3_000_000_000));
        assert_eq!(input("claude", "2026-12-01T00:00:00Z"), None);
    }

    #[test]
    fn max_cost_bounds_every_mix() {
        let book = PriceBook::with_table(
            &[Override {
                pattern: "m".into(),
                prices: flat(1.0, 4.0, Some(0.1), Some(1.25)),
                from: None,
            }],
            None,
        );
        let at = ts("2026-01-01T00:00:00Z");
        let bound = book.max_cost_nanos("m", at, 1000, 100).unwrap();
        assert_eq!(bound, 1000 * 1250 + 100 * 4000);
        for (read, write) in [(0, 0), (1000, 0), (0, 1000), (500, 500)] {
            let cost = book
                .cost_nanos("m", at, &usage(1000, 100, read, write))
                .unwrap();
            assert!(cost <= bound, "{cost} > {bound}");
        }
    }

    #[test]
    fn bundled_table_prices_well_known_models_as_published() {
        let book = PriceBook::new(&[]).unwrap();
        let at = ts("2026-06-01T00:00:00Z");
        let mtok = |model: &str| book.prices(model, at).cloned();
        // Published list prices (USD per million tokens): input, output, cache read, cache write.
        type Published<'a> = (&'a str, f64, f64, Option<f64>, Option<f64>);
        let cases: [Published; 4] = [
            ("gpt-4o", 2.5, 10.0, Some(1.25), None),
            ("gpt-4o-mini", 0.15, 0.6, Some(0.075), None),
            ("claude-3-5-haiku-20241022", 0.8, 4.0, Some(0.08), Some(1.0)),
            ("claude-sonnet-4-20250514", 3.0, 15.0, Some(0.3), Some(3.75)),
        ];
        for (model, input, output, read, write) in cases {
            assert_eq!(
                mtok(model),
                Some(flat(input, output, read, write)),
                "{model}"
            );
        }
        let sonnet = mtok("claude-sonnet-4-5-20250929").unwrap();
        assert_eq!(
            sonnet.input.tiers,
            vec![(200_000, femtos_per_token(6.0).unwrap())]
        );
        assert_eq!(book.prices("no-such-model-xyz", at), None);
    }

    #[test]
    fn zero_token_calls_cost_nothing_and_unknown_models_are_unpriced() {
        let book = PriceBook::with_table(&[], None);
        let at = ts("2026-01-01T00:00:00Z");
        assert_eq!(
            book.cost_of("x", at, &TokenUsage::default(), false),
            (Some(0), CostStatus::Priced)
        );
        assert_eq!(
            book.cost_of("x", at, &usage(1, 1, 0, 0), false),
            (None, CostStatus::Unpriced)
        );
        assert_eq!(usd_text(1_500_000_001), "1.500000001");
    }
}
