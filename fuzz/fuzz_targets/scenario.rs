//! Fuzz target: the chaos scenario parser (TOML, steps, `{{vu}}`/`{{iter}}` templates).
#![no_main]

use libfuzzer_sys::fuzz_target;
use unstick::chaos::scenario::{Scenario, Template};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Scenario::parse(text, "fuzz.toml");
    let _ = Template::parse(text);
});
