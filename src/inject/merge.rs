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

/// Merges list items by `key` and orders the result as a strategic merge patch does
/// (`normalizeElementOrder` in Kubernetes' `strategicpatch`): the patch's items in the patch's
/// order, with the target's own items (those the patch does not name) woven in by their place
/// in the target. A target item goes before a patch item only when that patch item was in the
/// target too and came after it; so items new to the target come first, and the target's own
/// items follow in their order (a pod's own volume after the injected ones).
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
    let mut slots: Vec<Option<Value>> = std::mem::take(target).into_iter().map(Some).collect();
    // The patch's items, merged, each with the target position it was merged into.
    let mut patched: Vec<(Option<usize>, Value)> = Vec::with_capacity(patch.len());
    for item in patch {
        let found = item
            .get(key)
            .and_then(|k| index.get_mut(&key_text(k)))
            .and_then(VecDeque::pop_front);
        let merged = match (found.and_then(|i| slots[i].take()), item) {
            (Some(Value::Object(mut t)), Value::Object(p)) => {
                merge_into(&mut t, p);
                Value::Object(t)
            }
            (_, item) => without_nulls(item),
        };
        patched.push((found, merged));
    }
    let mut own = slots
        .into_iter()
        .enumerate()
        .filter_map(|(i, slot)| slot.map(|item| (i, item)))
        .peekable();
    let mut patched = patched.into_iter().peekable();
    target.reserve(own.size_hint().0 + patched.size_hint().0);
    loop {
        let own_first = match (own.peek(), patched.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((at, _)), Some((was_at, _))) => was_at.is_some_and(|was_at| *at < was_at),
        };
        let next = if own_first {
            own.next().map(|(_, item)| item)
        } else {
            patched.next().map(|(_, item)| item)
        };
        target.extend(next);
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
            {"name": "istio-proxy", "image": "p"},
            {"name": "app", "image": "a", "x-unknown": 1, "env": [{"name": "A", "value": "1"}]}]})
        );
    }

    #[test]
    fn new_items_come_first_then_the_targets_own_in_their_order() {
        // A StatefulSet's own volume goes after the injected ones, as in istiod's output.
        let out = merged(
            json!({"volumes": [{"name": "data", "hostPath": {"path": "/d"}}, {"name": "cache"}]}),
            json!({"volumes": [{"name": "istio-envoy"}, {"name": "istio-data"}]}),
        );
        assert_eq!(
            out,
            json!({"volumes": [{"name": "istio-envoy"}, {"name": "istio-data"},
                {"name": "data", "hostPath": {"path": "/d"}}, {"name": "cache"}]})
        );
    }

    #[test]
    fn items_in_both_keep_the_patch_order_and_weave_in_the_targets_own() {
        // Kubernetes' strategicpatch: server [a, b, c], patch [x, b] gives [x, a, b, c].
        let out = merged(
            json!({"volumes": [{"name": "a"}, {"name": "b", "v": 1}, {"name": "c"}]}),
            json!({"volumes": [{"name": "x"}, {"name": "b", "w": 2}]}),
        );
        let names: Vec<&str> = out["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["name"].as_str())
            .collect();
        assert_eq!(names, ["x", "a", "b", "c"]);
        assert_eq!(out["volumes"][2], json!({"name": "b", "v": 1, "w": 2}));
        // Patch order wins over the target's for items in both: [b, a] onto [a, b].
        let out = merged(
            json!({"volumes": [{"name": "a"}, {"name": "b"}, {"name": "own"}]}),
            json!({"volumes": [{"name": "b"}, {"name": "a"}]}),
        );
        assert_eq!(
            out,
            json!({"volumes": [{"name": "b"}, {"name": "a"}, {"name": "own"}]})
        );
    }

    #[test]
    fn a_user_proxys_own_mounts_and_env_follow_the_templates() {
        let out = merged(
            json!({"volumeMounts": [{"mountPath": "/mine", "name": "m"}], "env": [{"name": "EXTRA", "value": "1"}]}),
            json!({"volumeMounts": [{"mountPath": "/etc/istio/proxy", "name": "istio-envoy"}],
                   "env": [{"name": "PILOT_CERT_PROVIDER", "value": "istiod"}, {"name": "CA_ADDR", "value": "x"}]}),
        );
        assert_eq!(
            out,
            json!({"volumeMounts": [{"mountPath": "/etc/istio/proxy", "name": "istio-envoy"}, {"mountPath": "/mine", "name": "m"}],
                   "env": [{"name": "PILOT_CERT_PROVIDER", "value": "istiod"}, {"name": "CA_ADDR", "value": "x"}, {"name": "EXTRA", "value": "1"}]})
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
