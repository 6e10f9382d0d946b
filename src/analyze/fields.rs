//! Reading raw JSON fields without trusting their shape: a missing field or a field of the
//! wrong type reads as absent, so a malformed manifest gives fewer findings, never a panic.

use serde_json::Value;

/// The value at a dotted path of object keys.
pub fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

pub fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

/// The list at `path`, or an empty slice.
pub fn list_at<'a>(value: &'a Value, path: &[&str]) -> &'a [Value] {
    at(value, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// A metadata annotation of a pod or pod template.
pub fn annotation<'a>(pod: &'a Value, name: &str) -> Option<&'a str> {
    at(pod, &["metadata", "annotations", name]).and_then(Value::as_str)
}

/// A string-to-string map (labels, a Service selector); non-string values are ignored.
pub fn string_map(value: Option<&Value>) -> Vec<(&str, &str)> {
    value
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v)))
                .collect()
        })
        .unwrap_or_default()
}

/// `Kind/namespace/name`, or `Kind/name` without a namespace. A pod created by a controller
/// has only a `generateName` when it reaches admission; that prefix names it.
pub fn object_name(kind: &str, object: &Value, namespace: Option<&str>) -> String {
    let name = str_at(object, &["metadata", "name"])
        .or_else(|| str_at(object, &["metadata", "generateName"]))
        .unwrap_or("");
    let ns = str_at(object, &["metadata", "namespace"]).or(namespace);
    match ns {
        Some(ns) if !ns.is_empty() => format!("{kind}/{ns}/{name}"),
        _ => format!("{kind}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wrong_shapes_read_as_absent() {
        let v = json!({"spec": {"containers": "nope", "n": 3}});
        assert!(list_at(&v, &["spec", "containers"]).is_empty());
        assert_eq!(str_at(&v, &["spec", "n"]), None);
        assert_eq!(at(&v, &["spec", "n", "deeper"]), None);
    }

    #[test]
    fn object_names_use_generate_name_and_fallback_namespace() {
        let pod = json!({"metadata": {"generateName": "web-5d9f-"}});
        assert_eq!(object_name("Pod", &pod, Some("shop")), "Pod/shop/web-5d9f-");
        let dep = json!({"metadata": {"name": "web"}});
        assert_eq!(object_name("Deployment", &dep, None), "Deployment/web");
    }
}
