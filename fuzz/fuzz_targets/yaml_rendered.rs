//! Differential: whenever the fast reader of rendered YAML accepts a text, its value must be
//! the full parser's value for the same text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sidecar_injector::yaml;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(fast) = yaml::parse_rendered(text) {
        match yaml::parse_one(text) {
            Ok(full) => assert_eq!(fast, full, "the readers disagree on {text:?}"),
            Err(err) => panic!("the fast reader accepted {text:?}, the full parser said: {err}"),
        }
    }
});
