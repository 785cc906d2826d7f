//! The config loader on any TOML text: it returns a config or errors, never panics. The file
//! name only anchors relative paths; nothing is read from disk.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use scoregate::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = Config::parse(text, Path::new("/etc/scoregate/scoregate.toml"));
    if std::env::var_os("SCOREGATE_FUZZ_VERBOSE").is_some() {
        eprintln!(
            "{:?}",
            parsed
                .as_ref()
                .map(|c| c.services.len())
                .map_err(|e| &e.problems)
        );
    }
    match parsed {
        Ok(c) => {
            // Whatever validates is usable: every service has a valid name.
            for s in &c.services {
                assert!(
                    scoregate::route::valid_service_name(&s.name),
                    "{:?}",
                    s.name
                );
            }
        }
        Err(e) => {
            assert!(
                !e.problems.is_empty(),
                "an error names at least one problem"
            );
            let _ = e.to_string();
        }
    }
});
