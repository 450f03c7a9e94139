//! Fuzz target: `token_console::gateway::fuzz::body_usage` must not panic on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    token_console::gateway::fuzz::body_usage(data);
});
