//! Merging a rendered template fragment into the pod, the way a Kubernetes strategic merge patch
//! merges a partial pod: lists of containers, env, volumes and mounts by their key, anything else
//! replaced. Only the parts the fragment names are touched, so every other field of the user's
//! pod (known to us or not) stays exactly as it was.

use std::collections::{HashMap, VecDeque};

use serde_json::{Map, Value};

/// The merge key of a list field of a pod, by field name.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "hostAliases" => Some(match field {
            "hostAliases" => "ip",
            _ => "name",
        }),
        "ports" => Some("containerPort"),
        "volumeMounts" => Some("mountPath"),
        _ => None,
    }
}

/// Merges `patch` into `target` (both mappings). A `null` in the patch removes the key. The
/// patch is consumed: its values move into the pod rather than being copied.
pub(crate) fn merge_into(target: &mut Map<String, Value>, patch: Map<String, Value>) {
    for (key, pv) in patch {
        if pv.is_null() {
            target.shift_remove(&key);
            continue;
        }
        match (target.get_mut(&key), pv) {
            (Some(Value::Object(t)), Value::Object(p)) => merge_into(t, p),
            (Some(Value::Array(t)), Value::Array(p)) if merge_key(&key).is_some() => {
                if let Some(k) = merge_key(&key) {
                    merge_list(t, p, k);
                }
            }
            (_, pv) => {
                target.insert(key, without_nulls(pv));
            }
        }
    }
}

/// Merges list items by `key`: an item whose key matches is merged in place, others are
/// appended in the patch's order.
fn merge_list(target: &mut Vec<Value>, patch: Vec<Value>, key: &str) {
    // Entries pair up by key, and a key that occurs more than once (a user's list can hold
    // duplicates) pairs its occurrences in order: the second of the patch with the second of
    // the target. Merging every duplicate into the first occurrence would lose their fields.
    let mut index: HashMap<String, VecDeque<usize>> = HashMap::with_capacity(target.len());
    for (i, item) in target.iter().enumerate() {
        if let Some(k) = item.get(key) {
            index.entry(key_text(k)).or_default().push_back(i);
        }
    }
    for item in patch {
        let found = item
            .get(key)
            .and_then(|k| index.get_mut(&key_text(k)))
            .and_then(VecDeque::pop_front);
        match (found, item) {
            (Some(i), Value::Object(p)) => {
                if let Value::Object(t) = &mut target[i] {
                    merge_into(t, p);
                } else {
                    target[i] = without_nulls(Value::Object(p));
                }
            }
            (Some(i), other) => target[i] = without_nulls(other),
            (None, item) => target.push(without_nulls(item)),
        }
    }
}

fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The value with null map entries dropped, in place: a rendered `emptyDir: null` means "no
/// such field", as it does after istiod's round trip through Go structs.
pub(crate) fn without_nulls(mut v: Value) -> Value {
    drop_nulls(&mut v);
    v
}

fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn merged(mut target: Value, patch: Value) -> Value {
        if let (Value::Object(t), Value::Object(p)) = (&mut target, patch) {
            merge_into(t, p);
        }
        target
    }

    #[test]
    fn containers_merge_by_name_and_append_new_ones() {
        let out = merged(
            json!({"containers": [{"name": "app", "image": "a", "x-unknown": 1}]}),
            json!({"containers": [{"name": "istio-proxy", "image": "p"}, {"name": "app", "env": [{"name": "A", "value": "1"}]}]}),
        );
        assert_eq!(
            out,
            json!({"containers": [
            {"name": "app", "image": "a", "x-unknown": 1, "env": [{"name": "A", "value": "1"}]},
            {"name": "istio-proxy", "image": "p"}]})
        );
    }

    #[test]
    fn env_ports_mounts_by_key_other_lists_replaced() {
        let out = merged(
            json!({"env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 80, "name": "http"}],
                   "volumeMounts": [{"mountPath": "/a", "name": "x"}], "args": ["a", "b"]}),
            json!({"env": [{"name": "A", "value": "2"}, {"name": "B", "value": "3"}], "ports": [{"containerPort": 80, "protocol": "TCP"}],
                   "volumeMounts": [{"mountPath": "/a", "readOnly": true}], "args": ["c"]}),
        );
        assert_eq!(
            out,
            json!({"env": [{"name": "A", "value": "2"}, {"name": "B", "value": "3"}],
            "ports": [{"containerPort": 80, "name": "http", "protocol": "TCP"}],
            "volumeMounts": [{"mountPath": "/a", "name": "x", "readOnly": true}], "args": ["c"]})
        );
    }

    #[test]
    fn nulls_remove_and_are_not_inserted() {
        let out = merged(
            json!({"a": 1, "b": 2}),
            json!({"a": null, "v": [{"name": "w", "emptyDir": null}]}),
        );
        assert_eq!(out, json!({"b": 2, "v": [{"name": "w"}]}));
    }
}
