//! Fuzz target: `token_console::gateway::fuzz::request_headers` must not panic on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    token_console::gateway::fuzz::request_headers(data);
});
