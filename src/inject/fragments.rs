//! Parsed template fragments, remembered by their rendered text.
//!
//! Replicas of one workload render byte-identical fragments (same labels, same spec), and a
//! rollout sends the webhook many of them at once. Reading the rendered YAML back is the largest
//! single cost of an injection, so the parse of a text seen recently is reused. The cache is a
//! pure memo (same text, same value) and lives in one configuration snapshot, so a reload starts
//! it empty.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

/// How many distinct fragments are kept. A fragment is a few kilobytes of text and a few tens of
/// kilobytes parsed; when the cache is full it starts over, which keeps it bounded without
/// bookkeeping on the hot path.
const CAPACITY: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct FragmentCache {
    entries: Mutex<HashMap<String, Arc<Map<String, Value>>>>,
}

impl FragmentCache {
    /// The fragment for `text`: a copy of the remembered parse, or `parse(text)` remembered.
    pub(crate) fn get_or_parse<E>(
        &self,
        text: &str,
        parse: impl FnOnce(&str) -> Result<Map<String, Value>, E>,
    ) -> Result<Map<String, Value>, E> {
        if let Ok(entries) = self.entries.lock()
            && let Some(hit) = entries.get(text)
        {
            return Ok(Map::clone(hit));
        }
        let parsed = parse(text)?;
        // A poisoned lock only means another thread panicked while holding it: skip caching.
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CAPACITY {
                entries.clear();
            }
            entries.insert(text.to_string(), Arc::new(parsed.clone()));
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_parses_once_and_stays_bounded() {
        let cache = FragmentCache::default();
        let mut parses = 0;
        for _ in 0..3 {
            let got: Result<_, ()> = cache.get_or_parse("a: 1", |_| {
                parses += 1;
                Ok(Map::from_iter([("a".to_string(), Value::from(1))]))
            });
            assert_eq!(got.unwrap()["a"], 1);
        }
        assert_eq!(parses, 1);
        for i in 0..CAPACITY * 2 {
            let _: Result<_, ()> = cache.get_or_parse(&format!("k: {i}"), |_| Ok(Map::new()));
        }
        assert!(cache.entries.lock().unwrap().len() <= CAPACITY);
    }
}
