//! Small accessors over a raw pod (`serde_json::Value`), so the rest of the engine reads like
//! the Kubernetes fields it means.

use serde_json::{Map, Value};

/// The container lists of a pod spec that hold containers the injector may touch.
pub(crate) const CONTAINER_LISTS: [&str; 2] = ["initContainers", "containers"];

/// The name of the injected proxy container.
pub(crate) const PROXY: &str = "istio-proxy";

pub(crate) fn metadata(pod: &Value) -> Option<&Map<String, Value>> {
    pod.get("metadata")?.as_object()
}

pub(crate) fn annotations(pod: &Value) -> Option<&Map<String, Value>> {
    metadata(pod)?.get("annotations")?.as_object()
}

pub(crate) fn labels(pod: &Value) -> Option<&Map<String, Value>> {
    metadata(pod)?.get("labels")?.as_object()
}

/// A string annotation of the pod (non-string values, which the API server never sends, read
/// as absent).
pub(crate) fn annotation<'a>(pod: &'a Value, name: &str) -> Option<&'a str> {
    annotations(pod)?.get(name)?.as_str()
}

pub(crate) fn label<'a>(pod: &'a Value, name: &str) -> Option<&'a str> {
    labels(pod)?.get(name)?.as_str()
}

pub(crate) fn spec(pod: &Value) -> Option<&Map<String, Value>> {
    pod.get("spec")?.as_object()
}

/// `spec.<list>` as a slice (empty when absent).
pub(crate) fn list<'a>(pod: &'a Value, field: &str) -> &'a [Value] {
    pod.get("spec")
        .and_then(|s| s.get(field))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The first container name that appears twice across `initContainers` and `containers`.
pub(crate) fn repeated_container_name(pod: &Value) -> Option<&str> {
    let mut seen = std::collections::HashSet::new();
    CONTAINER_LISTS
        .iter()
        .flat_map(|field| list(pod, field))
        .filter_map(name_of)
        .find(|name| !seen.insert(*name))
}

/// The `name` of a list item.
pub(crate) fn name_of(item: &Value) -> Option<&str> {
    item.get("name")?.as_str()
}

/// Mutable `metadata.annotations`, created when absent.
pub(crate) fn annotations_mut(pod: &mut Value) -> Option<&mut Map<String, Value>> {
    map_entry(map_entry(pod.as_object_mut()?, "metadata")?, "annotations")
}

/// Mutable `spec.<field>` list, created when absent.
pub(crate) fn list_mut<'a>(pod: &'a mut Value, field: &str) -> Option<&'a mut Vec<Value>> {
    let spec = map_entry(pod.as_object_mut()?, "spec")?;
    let entry = spec
        .entry(field.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if entry.is_null() {
        *entry = Value::Array(Vec::new());
    }
    entry.as_array_mut()
}

/// Mutable `spec.<field>` list, when the pod has one.
pub(crate) fn list_mut_existing<'a>(pod: &'a mut Value, field: &str) -> Option<&'a mut Vec<Value>> {
    pod.get_mut("spec")?.get_mut(field)?.as_array_mut()
}

/// `map[key]` as a mutable mapping, inserted when absent or null; `None` when it holds
/// something else.
pub(crate) fn map_entry<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> Option<&'a mut Map<String, Value>> {
    let entry = map
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if entry.is_null() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut()
}
