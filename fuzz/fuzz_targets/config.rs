//! Fuzz target: the configuration loader must reject bad YAML with an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    token_console::gateway::fuzz::config(data);
});
