//! The JSON patch between the pod as received and the pod after injection.
//!
//! The same operations as `json_patch::diff` (which the tests check), but equal subtrees are
//! recognised with one comparison instead of a walk that builds a JSON pointer for every node:
//! an injection changes a few places of a pod that may hold thousands of env vars, and the walk
//! over the unchanged ones was the larger part of the patch's cost (callgrind: 6.8M of 25M
//! instructions for a pod with 2,000 env vars, against 4.2M with the comparisons).

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::{Map, Value};

/// The patch that turns `left` into `right`.
pub(crate) fn diff(left: &Value, right: &Value) -> Patch {
    let mut patch = Patch(Vec::new());
    let mut path = PointerBuf::new();
    value(left, right, &mut path, &mut patch);
    patch
}

fn value(left: &Value, right: &Value, path: &mut PointerBuf, patch: &mut Patch) {
    if left == right {
        return;
    }
    match (left, right) {
        (Value::Object(l), Value::Object(r)) => object(l, r, path, patch),
        (Value::Array(l), Value::Array(r)) => array(l, r, path, patch),
        _ => patch.0.push(PatchOperation::Replace(ReplaceOperation {
            path: path.clone(),
            value: right.clone(),
        })),
    }
}

fn array(left: &[Value], right: &[Value], path: &mut PointerBuf, patch: &mut Patch) {
    let len = left.len().max(right.len());
    let mut shift = 0usize;
    for idx in 0..len {
        match (left.get(idx), right.get(idx)) {
            (Some(l), Some(r)) => {
                if l != r {
                    path.push_back(idx - shift);
                    value(l, r, path, patch);
                    path.pop_back();
                }
            }
            (Some(_), None) => {
                path.push_back(idx - shift);
                patch.0.push(PatchOperation::Remove(RemoveOperation {
                    path: path.clone(),
                }));
                path.pop_back();
                shift += 1;
            }
            (None, Some(r)) => {
                path.push_back(idx - shift);
                patch.0.push(PatchOperation::Add(AddOperation {
                    path: path.clone(),
                    value: r.clone(),
                }));
                path.pop_back();
            }
            (None, None) => {}
        }
    }
}

fn object(
    left: &Map<String, Value>,
    right: &Map<String, Value>,
    path: &mut PointerBuf,
    patch: &mut Patch,
) {
    for (key, r) in right {
        match left.get(key) {
            Some(l) if l == r => {}
            Some(l) => {
                path.push_back(key);
                value(l, r, path, patch);
                path.pop_back();
            }
            None => {
                path.push_back(key);
                patch.0.push(PatchOperation::Add(AddOperation {
                    path: path.clone(),
                    value: r.clone(),
                }));
                path.pop_back();
            }
        }
    }
    for key in left.keys() {
        if !right.contains_key(key) {
            path.push_back(key);
            patch.0.push(PatchOperation::Remove(RemoveOperation {
                path: path.clone(),
            }));
            path.pop_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (0i64..4).prop_map(Value::from),
            "[ab/~]{0,2}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[ab/~]{1,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn same_operations_as_json_patch_and_the_patch_applies(a in json(), b in json()) {
            let ours = diff(&a, &b);
            prop_assert_eq!(&ours, &json_patch::diff(&a, &b));
            let mut patched = a.clone();
            json_patch::patch(&mut patched, &ours).expect("applies");
            prop_assert_eq!(patched, b);
        }
    }
}
