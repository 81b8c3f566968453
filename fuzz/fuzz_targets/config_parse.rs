//! Feeds arbitrary text to the configuration parser: it must return a config or diagnostics,
//! never panic, and a config it accepts must survive a render/parse round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match redoubt_config::parse("fuzz.toml", text) {
        Ok(config) => {
            let rendered = redoubt_config::render_toml(&config);
            assert_eq!(redoubt_config::parse("rendered.toml", &rendered), Ok(config));
        }
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty());
            for diagnostic in diagnostics {
                assert!(diagnostic.line >= 1 || diagnostic.field == "(file)");
            }
        }
    }
});
