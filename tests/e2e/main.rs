//! The Rust end-to-end and API tests of token-console, as one test crate (one binary to build and
//! link): each module is one suite, named for what it covers; `common` is the shared harness (the
//! real `token-console` binary and the mock upstream on port 0, a fresh database per test, the
//! polling helper), `gateway_support` and `faults_support` the helpers of the gateway and fault
//! suites. Run one suite with `cargo test --test e2e gateway_errors::`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod faults_support;
mod gateway_support;

mod alerts;
mod budget_periods;
mod clients;
mod console_api;
mod cost;
mod faults;
mod gateway_bounds;
mod gateway_errors;
mod gateway_flows;
mod insights;
mod money_budgets;
mod multi_instance;
mod otel;
mod process;
mod reliability;
mod security;
mod smoke;
mod sources;
mod usage_api;
