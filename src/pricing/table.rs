//! The bundled price table: pydantic's genai-prices data (MIT, `genai-prices.json`, written by
//! `scripts/update-prices`), read once at start-up, and the lookup of a model's prices in it the
//! way genai-prices looks one up when no provider is named.

use std::collections::HashMap;
use std::sync::RwLock;

use serde::Deserialize;

use super::{Prices, Tiered};

/// Most model names whose place in the table is remembered. Recorded model names are at most
/// 256 bytes, so the memory is bounded whatever names clients send; names past the bound are
/// looked up each time.
const MAX_REMEMBERED: usize = 4096;

/// The bundled data, as compiled into the binary.
pub const BUNDLED_JSON: &str = include_str!("genai-prices.json");

/// The table: providers in the data's order, each with its models.
pub struct Table {
    providers: Vec<Provider>,
    /// Where each model name looked up so far was found: (provider, model) indexes, or `None`
    /// when it is not in the table. Looking a name up tries every provider's rules (regular
    /// expressions among them): microseconds, against nanoseconds for a remembered name.
    found: RwLock<HashMap<Box<str>, Option<Place>>>,
}

/// Where a model is in the table: (provider, model) indexes.
type Place = (usize, usize);

struct Provider {
    id: String,
    model_match: Rule,
    fallbacks: Vec<String>,
    models: Vec<Model>,
}

struct Model {
    rule: Rule,
    /// Prices in the data's order; the last one whose constraint holds applies.
    prices: Vec<(Option<Constraint>, Prices)>,
}

/// When a price of the table applies.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Constraint {
    /// From this instant on (midnight UTC of the data's date).
    From(jiff::Timestamp),
    /// Between two UTC times of day, in seconds since midnight (wrapping past midnight when
    /// `end < start`).
    TimeOfDay { start: i64, end: i64 },
}

impl Constraint {
    fn holds(self, at: jiff::Timestamp) -> bool {
        match self {
            Self::From(from) => at >= from,
            Self::TimeOfDay { start, end } => {
                let second = at.as_second().rem_euclid(86_400);
                if end < start {
                    second >= start || second < end
                } else {
                    second >= start && second < end
                }
            }
        }
    }
}

/// A matching rule of the data: case-insensitive comparisons (literals lowercased once), except
/// regular expressions, which see the name as it is.
enum Rule {
    And(Vec<Rule>),
    Or(Vec<Rule>),
    Contains(String),
    StartsWith(String),
    EndsWith(String),
    Equals(String),
    Regex(Box<fancy_regex::Regex>),
}

impl Rule {
    fn matches(&self, raw: &str, folded: &str) -> bool {
        match self {
            Self::And(rules) => rules.iter().all(|r| r.matches(raw, folded)),
            Self::Or(rules) => rules.iter().any(|r| r.matches(raw, folded)),
            Self::Contains(text) => folded.contains(text.as_str()),
            Self::StartsWith(text) => folded.starts_with(text.as_str()),
            Self::EndsWith(text) => folded.ends_with(text.as_str()),
            Self::Equals(text) => folded == text,
            Self::Regex(regex) => regex.is_match(raw).unwrap_or(false),
        }
    }
}

impl Table {
    /// Reads a table in genai-prices' shape (the bundled subset or the full upstream file).
    pub fn parse(json: &str) -> Result<Self, String> {
        let raw: Vec<RawProvider> =
            serde_json::from_str(json).map_err(|e| format!("price table: {e}"))?;
        let providers = raw
            .into_iter()
            .filter_map(|p| {
                let model_match = p.model_match?;
                Some(provider(
                    p.id,
                    model_match,
                    p.fallback_model_providers,
                    p.models,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            providers,
            found: RwLock::default(),
        })
    }

    /// The prices of `model` at `at`: the first provider whose own models the name matches (as
    /// genai-prices picks one without a provider id), then its first model that matches, or one
    /// of the providers it falls back to.
    pub fn lookup(&self, model: &str, at: jiff::Timestamp) -> Option<&Prices> {
        let remembered = self
            .found
            .read()
            .ok()
            .and_then(|found| found.get(model).copied());
        let place = match remembered {
            Some(place) => place,
            None => {
                let place = self.find(model);
                if let Ok(mut found) = self.found.write() {
                    if found.len() < MAX_REMEMBERED {
                        found.insert(model.into(), place);
                    }
                }
                place
            }
        };
        let (provider, index) = place?;
        let found = self.providers.get(provider)?.models.get(index)?;
        found
            .prices
            .iter()
            .rev()
            .find(|(constraint, _)| constraint.is_none_or(|c| c.holds(at)))
            .or(found.prices.first())
            .map(|(_, prices)| prices)
    }

    /// Where `model` is in the table: (provider, model) indexes.
    fn find(&self, model: &str) -> Option<Place> {
        let folded = model.to_lowercase();
        let in_provider = |p: usize| {
            self.providers[p]
                .models
                .iter()
                .position(|m| m.rule.matches(model, &folded))
                .map(|m| (p, m))
        };
        let selected = self
            .providers
            .iter()
            .position(|p| p.model_match.matches(model, &folded))?;
        in_provider(selected).or_else(|| {
            self.providers[selected]
                .fallbacks
                .iter()
                .find_map(|id| in_provider(self.providers.iter().position(|p| &p.id == id)?))
        })
    }

    /// Number of models in the table.
    pub fn len(&self) -> usize {
        self.providers.iter().map(|p| p.models.len()).sum()
    }

    /// Whether the table holds no model.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn provider(
    id: String,
    model_match: RawRule,
    fallbacks: Option<Vec<String>>,
    models: Vec<RawModel>,
) -> Result<Provider, String> {
    let models = models
        .into_iter()
        .filter_map(|m| model(m).transpose())
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Provider {
        id,
        model_match: rule(model_match)?,
        fallbacks: fallbacks.unwrap_or_default(),
        models,
    })
}

/// A model of the data, or `None` when it has no text-token price (audio, images, searches).
fn model(raw: RawModel) -> Result<Option<Model>, String> {
    let entries = match raw.prices {
        RawModelPrices::Direct(p) => vec![RawConditional {
            constraint: None,
            prices: p,
        }],
        RawModelPrices::Conditional(list) => list,
    };
    let mut prices = Vec::with_capacity(entries.len());
    for entry in entries {
        let constraint = entry.constraint.map(constraint).transpose()?;
        let context = |key: &str| format!("{}.{key}", raw.id);
        let p = entry.prices;
        if p.input_mtok.is_none() && p.output_mtok.is_none() {
            continue;
        }
        let tiered = |value: Option<RawPrice>, key: &str| -> Result<Option<Tiered>, String> {
            value.map(|v| tiered(v, &context(key))).transpose()
        };
        prices.push((
            constraint,
            Prices {
                input: tiered(p.input_mtok, "input_mtok")?.unwrap_or_default(),
                output: tiered(p.output_mtok, "output_mtok")?.unwrap_or_default(),
                cache_read: tiered(p.cache_read_mtok, "cache_read_mtok")?,
                cache_write: tiered(p.cache_write_mtok, "cache_write_mtok")?,
            },
        ));
    }
    if prices.is_empty() {
        return Ok(None);
    }
    Ok(Some(Model {
        rule: rule(raw.rule)?,
        prices,
    }))
}

fn tiered(raw: RawPrice, context: &str) -> Result<Tiered, String> {
    let femtos = |usd: f64| {
        super::femtos_per_token(usd)
            .ok_or_else(|| format!("price table: {context} is not a price ({usd})"))
    };
    match raw {
        RawPrice::Flat(usd) => Ok(Tiered::flat(femtos(usd)?)),
        RawPrice::Tiered { base, tiers } => {
            let mut steps = tiers
                .into_iter()
                .map(|t| Ok((t.start, femtos(t.price)?)))
                .collect::<Result<Vec<_>, String>>()?;
            steps.sort_unstable_by_key(|(start, _)| *start);
            Ok(Tiered {
                base: femtos(base)?,
                tiers: steps,
            })
        }
    }
}

fn constraint(raw: RawConstraint) -> Result<Constraint, String> {
    match raw {
        RawConstraint::Date { start_date } => start_date
            .parse::<jiff::civil::Date>()
            .ok()
            .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
            .map(|z| Constraint::From(z.timestamp()))
            .ok_or_else(|| format!("price table: start_date {start_date:?} is not a date")),
        RawConstraint::TimeOfDay {
            start_time,
            end_time,
        } => Ok(Constraint::TimeOfDay {
            start: seconds_of_day(&start_time)?,
            end: seconds_of_day(&end_time)?,
        }),
    }
}

/// `HH:MM:SSZ` as seconds since midnight UTC.
fn seconds_of_day(text: &str) -> Result<i64, String> {
    text.trim_end_matches('Z')
        .parse::<jiff::civil::Time>()
        .map(|t| i64::from(t.hour()) * 3600 + i64::from(t.minute()) * 60 + i64::from(t.second()))
        .map_err(|_| format!("price table: {text:?} is not a time of day"))
}

fn rule(raw: RawRule) -> Result<Rule, String> {
    let all = |rules: Vec<RawRule>| rules.into_iter().map(rule).collect::<Result<Vec<_>, _>>();
    Ok(match raw {
        RawRule::And(rules) => Rule::And(all(rules)?),
        RawRule::Or(rules) => Rule::Or(all(rules)?),
        RawRule::Contains(text) => Rule::Contains(text.to_lowercase()),
        RawRule::StartsWith(text) => Rule::StartsWith(text.to_lowercase()),
        RawRule::EndsWith(text) => Rule::EndsWith(text.to_lowercase()),
        RawRule::Equals(text) => Rule::Equals(text.to_lowercase()),
        RawRule::Regex(pattern) => Rule::Regex(Box::new(
            fancy_regex::Regex::new(&pattern)
                .map_err(|e| format!("price table: regex {pattern:?}: {e}"))?,
        )),
    })
}

#[derive(Deserialize)]
struct RawProvider {
    id: String,
    model_match: Option<RawRule>,
    fallback_model_providers: Option<Vec<String>>,
    models: Vec<RawModel>,
}

#[derive(Deserialize)]
struct RawModel {
    id: String,
    #[serde(rename = "match")]
    rule: RawRule,
    prices: RawModelPrices,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawRule {
    And(Vec<RawRule>),
    Or(Vec<RawRule>),
    Contains(String),
    StartsWith(String),
    EndsWith(String),
    Equals(String),
    Regex(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawModelPrices {
    Direct(RawPrices),
    Conditional(Vec<RawConditional>),
}

#[derive(Deserialize)]
struct RawConditional {
    constraint: Option<RawConstraint>,
    prices: RawPrices,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawConstraint {
    Date {
        start_date: String,
    },
    TimeOfDay {
        start_time: String,
        end_time: String,
    },
}

#[derive(Deserialize)]
struct RawPrices {
    input_mtok: Option<RawPrice>,
    output_mtok: Option<RawPrice>,
    cache_read_mtok: Option<RawPrice>,
    cache_write_mtok: Option<RawPrice>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPrice {
    Flat(f64),
    Tiered { base: f64, tiers: Vec<RawTier> },
}

#[derive(Deserialize)]
struct RawTier {
    start: u64,
    price: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_a_bounded_number_of_names_and_answers_the_same() {
        let table = Table::parse(BUNDLED_JSON).unwrap();
        let at = jiff::Timestamp::now();
        let first = table.lookup("gpt-4o-mini", at).cloned();
        assert!(first.is_some());
        assert_eq!(table.lookup("gpt-4o-mini", at).cloned(), first);
        for n in 0..MAX_REMEMBERED + 100 {
            assert!(table.lookup(&format!("made-up-{n}"), at).is_none());
        }
        assert_eq!(table.found.read().unwrap().len(), MAX_REMEMBERED);
        assert_eq!(table.lookup("gpt-4o-mini", at).cloned(), first);
        assert!(table.lookup("claude-sonnet-4-5-20250929", at).is_some());
    }
}
