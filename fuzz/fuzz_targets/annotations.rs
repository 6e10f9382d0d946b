//! The annotation checks and the quantity parser on arbitrary values.
//!
//! Invariants: nothing panics; each problem names an annotation the pod has, at most one per
//! annotation; a quantity that has a canonical form is valid, and its canonical form is valid
//! and canonical itself (the API server's form is a fixed point).

#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use sidecar_injector::inject::{annotations, quantity};

/// Every annotation the engine validates, from its own table.
fn names() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| annotations::validated_names().collect())
}

#[derive(Debug, Arbitrary)]
enum AnnotationValue {
    Text(String),
    /// Annotation values must be strings; the API server guarantees it, the engine must not
    /// rely on it.
    Number(i64),
    Flag(bool),
}

/// A quantity: free text, or built from parts so that most are well-formed and the fuzzer
/// spends its time on digits, fractions, exponents and suffixes rather than on syntax.
#[derive(Debug, Arbitrary)]
enum QuantityInput {
    Text(String),
    Parts {
        sign: u8,
        digits: Vec<u8>,
        fraction: Option<Vec<u8>>,
        suffix: u8,
        exponent: i8,
    },
}

const SUFFIXES: &[&str] = &[
    "", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
];

impl QuantityInput {
    fn text(&self) -> String {
        match self {
            QuantityInput::Text(text) => text.clone(),
            QuantityInput::Parts {
                sign,
                digits,
                fraction,
                suffix,
                exponent,
            } => {
                let digit = |d: &u8| char::from(b'0' + d % 10);
                let mut out = String::from(["", "-", "+"][usize::from(*sign % 3)]);
                out.extend(digits.iter().map(digit));
                if let Some(fraction) = fraction {
                    out.push('.');
                    out.extend(fraction.iter().map(digit));
                }
                match SUFFIXES.get(usize::from(*suffix % 20)) {
                    Some(suffix) => out.push_str(suffix),
                    None => out.push_str(&format!("e{exponent}")),
                }
                out
            }
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    entries: Vec<(u8, AnnotationValue)>,
    quantity: QuantityInput,
}

fuzz_target!(|input: Input| {
    let mut map = Map::new();
    for (index, value) in input.entries {
        let names = names();
        let name = names[usize::from(index) % names.len()];
        let value = match value {
            AnnotationValue::Text(text) => Value::String(text),
            AnnotationValue::Number(n) => Value::from(n),
            AnnotationValue::Flag(b) => Value::Bool(b),
        };
        map.insert(name.to_owned(), value);
    }
    let problems = annotations::validate(Some(&map));
    assert!(problems.len() <= map.len());
    let mut named: Vec<&str> = problems.iter().map(|p| p.annotation.as_str()).collect();
    for name in &named {
        assert!(
            map.contains_key(*name),
            "a problem names {name}, which the pod lacks"
        );
    }
    named.sort_unstable();
    named.dedup();
    assert_eq!(named.len(), problems.len(), "an annotation reported twice");

    let text = input.quantity.text();
    let text = text.as_str();
    // Every quantity annotation goes through the same parser as a value.
    let as_annotation =
        Map::from_iter([("sidecar.istio.io/proxyCPU".to_owned(), Value::from(text))]);
    assert_eq!(
        annotations::validate(Some(&as_annotation)).is_empty(),
        quantity::validate(text).is_ok()
    );
    if let Ok(canonical) = quantity::canonical(text) {
        assert!(
            quantity::validate(text).is_ok(),
            "{text:?} has a canonical form but is invalid"
        );
        assert!(
            quantity::validate(&canonical).is_ok(),
            "{text:?} canonical {canonical:?} is invalid"
        );
        assert_eq!(
            quantity::canonical(&canonical).ok().as_deref(),
            Some(canonical.as_str()),
            "the canonical form of {text:?} is not stable"
        );
    }
});
