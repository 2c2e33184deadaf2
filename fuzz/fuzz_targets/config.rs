//! Fuzz target: the config loader (TOML, the stickiness refusal, validation) on any text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unstick::config::RawConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((raw, _)) = RawConfig::parse(text, None, &[]) {
        // What loads prints back as TOML that loads to the same config.
        let printed = raw.to_toml();
        let (_, again) = RawConfig::parse(&printed, None, &[]).expect("printed config loads");
        let (_, first) = RawConfig::parse(text, None, &[]).unwrap();
        assert_eq!(first, again);
    }
});
