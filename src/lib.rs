//! token-console: an LLM API gateway with a token console.
//!
//! Applications call the gateway (`gateway`) with OpenAI- or Anthropic-format requests and a key
//! the console issued (`keys`); every call is metered and handed to the recorder (`usage`), which
//! writes it with its aggregates to the store (`store`); the console (`console`) shows what was
//! recorded. `server` assembles the listeners; `config` reads the configuration; `pricing` says
//! what calls cost, and `reprice` recomputes stored costs when prices change.

pub mod alerts;
pub mod clock;
pub mod config;
pub mod console;
pub mod error;
pub mod gateway;
pub mod insights;
pub mod keys;
pub mod metrics;
pub mod pricing;
pub mod reprice;
pub mod server;
pub mod sources;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod usage;

/// Temporary directories of the unit tests (shared with the end-to-end tests).
#[cfg(test)]
#[path = "../tests/e2e/common/tempdir.rs"]
mod tempdir;

pub use server::{app, run};
