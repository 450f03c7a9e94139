//! Fuzz target: the configuration loader must reject bad YAML with an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = token_console::config::Config::from_yaml(text, &token_console::config::Cli::default());
    }
});
