//! Deep merge of settings, as `helm -f` merges a values file over the chart's defaults.

use serde_json::Value;

/// Merges `overlay` into `base`: mappings are merged key by key, anything else (lists included)
/// replaces. A `null` in the overlay removes the key, as in Helm.
pub fn deep_merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                if value.is_null() {
                    base.shift_remove(key);
                } else if let Some(existing) = base.get_mut(key) {
                    deep_merge(existing, value);
                } else {
                    base.insert(key.clone(), value.clone());
                }
            }
        }
        (base, overlay) => *base = overlay.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mappings_merge_lists_replace_nulls_remove() {
        let mut base = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x", "e": 1});
        deep_merge(&mut base, &json!({"a": {"c": [3]}, "d": null, "f": true}));
        assert_eq!(base, json!({"a": {"b": 1, "c": [3]}, "e": 1, "f": true}));
    }
}
