//! A container written the way Go's `encoding/json` writes a `corev1.Container`: fields in the
//! struct's order, nested objects in theirs, `map[string]` fields (resource lists) with sorted
//! keys, and `resources` present even when empty (it is a struct, not a pointer, so `omitempty`
//! does not drop it). istiod records the user's containers in `proxy.istio.io/overrides` this way.
//!
//! Unlike Go, nothing is dropped: a field the struct does not have (a newer cluster's, or one we
//! do not know) follows the known ones in the order it was written, so re-injection applies it
//! again. Values are kept as written (a quantity `3000m` stays `3000m`).

use serde_json::{Map, Value};

/// How one field's value is written.
#[derive(Clone, Copy)]
enum Shape {
    /// Written as it is.
    Leaf,
    /// An object with these fields, in this order.
    Object(&'static [(&'static str, Shape)]),
    /// A list of such objects.
    List(&'static [(&'static str, Shape)]),
    /// A Go map: keys sorted.
    SortedMap,
}

use Shape::{Leaf, List, Object, SortedMap};

const KEY_SELECTOR: &[(&str, Shape)] = &[("name", Leaf), ("key", Leaf), ("optional", Leaf)];
const FILE_KEY_SELECTOR: &[(&str, Shape)] = &[
    ("volumeName", Leaf),
    ("path", Leaf),
    ("key", Leaf),
    ("optional", Leaf),
];
const ENV_VAR_SOURCE: &[(&str, Shape)] = &[
    (
        "fieldRef",
        Object(&[("apiVersion", Leaf), ("fieldPath", Leaf)]),
    ),
    (
        "resourceFieldRef",
        Object(&[
            ("containerName", Leaf),
            ("resource", Leaf),
            ("divisor", Leaf),
        ]),
    ),
    ("configMapKeyRef", Object(KEY_SELECTOR)),
    ("secretKeyRef", Object(KEY_SELECTOR)),
    ("fileKeyRef", Object(FILE_KEY_SELECTOR)),
];
const ENV_VAR: &[(&str, Shape)] = &[
    ("name", Leaf),
    ("value", Leaf),
    ("valueFrom", Object(ENV_VAR_SOURCE)),
];
const ENV_FROM: &[(&str, Shape)] = &[
    ("prefix", Leaf),
    (
        "configMapRef",
        Object(&[("name", Leaf), ("optional", Leaf)]),
    ),
    ("secretRef", Object(&[("name", Leaf), ("optional", Leaf)])),
];
const PORT: &[(&str, Shape)] = &[
    ("name", Leaf),
    ("hostPort", Leaf),
    ("containerPort", Leaf),
    ("protocol", Leaf),
    ("hostIP", Leaf),
];
const RESOURCES: &[(&str, Shape)] = &[
    ("limits", SortedMap),
    ("requests", SortedMap),
    ("claims", List(&[("name", Leaf), ("request", Leaf)])),
];
const VOLUME_MOUNT: &[(&str, Shape)] = &[
    ("name", Leaf),
    ("readOnly", Leaf),
    ("recursiveReadOnly", Leaf),
    ("mountPath", Leaf),
    ("subPath", Leaf),
    ("mountPropagation", Leaf),
    ("subPathExpr", Leaf),
];
const HTTP_GET: &[(&str, Shape)] = &[
    ("path", Leaf),
    ("port", Leaf),
    ("host", Leaf),
    ("scheme", Leaf),
    ("httpHeaders", List(&[("name", Leaf), ("value", Leaf)])),
];
const TCP_SOCKET: &[(&str, Shape)] = &[("port", Leaf), ("host", Leaf)];
const EXEC: &[(&str, Shape)] = &[("command", Leaf)];
const PROBE: &[(&str, Shape)] = &[
    ("exec", Object(EXEC)),
    ("httpGet", Object(HTTP_GET)),
    ("tcpSocket", Object(TCP_SOCKET)),
    ("grpc", Object(&[("port", Leaf), ("service", Leaf)])),
    ("initialDelaySeconds", Leaf),
    ("timeoutSeconds", Leaf),
    ("periodSeconds", Leaf),
    ("successThreshold", Leaf),
    ("failureThreshold", Leaf),
    ("terminationGracePeriodSeconds", Leaf),
];
const HANDLER: &[(&str, Shape)] = &[
    ("exec", Object(EXEC)),
    ("httpGet", Object(HTTP_GET)),
    ("tcpSocket", Object(TCP_SOCKET)),
    ("sleep", Object(&[("seconds", Leaf)])),
];
const PROFILE: &[(&str, Shape)] = &[("type", Leaf), ("localhostProfile", Leaf)];
const SECURITY_CONTEXT: &[(&str, Shape)] = &[
    ("capabilities", Object(&[("add", Leaf), ("drop", Leaf)])),
    ("privileged", Leaf),
    (
        "seLinuxOptions",
        Object(&[
            ("user", Leaf),
            ("role", Leaf),
            ("type", Leaf),
            ("level", Leaf),
        ]),
    ),
    (
        "windowsOptions",
        Object(&[
            ("gmsaCredentialSpecName", Leaf),
            ("gmsaCredentialSpec", Leaf),
            ("runAsUserName", Leaf),
            ("hostProcess", Leaf),
        ]),
    ),
    ("runAsUser", Leaf),
    ("runAsGroup", Leaf),
    ("runAsNonRoot", Leaf),
    ("readOnlyRootFilesystem", Leaf),
    ("allowPrivilegeEscalation", Leaf),
    ("procMount", Leaf),
    ("seccompProfile", Object(PROFILE)),
    ("appArmorProfile", Object(PROFILE)),
];
const CONTAINER: &[(&str, Shape)] = &[
    ("name", Leaf),
    ("image", Leaf),
    ("command", Leaf),
    ("args", Leaf),
    ("workingDir", Leaf),
    ("ports", List(PORT)),
    ("envFrom", List(ENV_FROM)),
    ("env", List(ENV_VAR)),
    ("resources", Object(RESOURCES)),
    (
        "resizePolicy",
        List(&[("resourceName", Leaf), ("restartPolicy", Leaf)]),
    ),
    ("restartPolicy", Leaf),
    ("restartPolicyRules", Leaf),
    ("volumeMounts", List(VOLUME_MOUNT)),
    (
        "volumeDevices",
        List(&[("name", Leaf), ("devicePath", Leaf)]),
    ),
    ("livenessProbe", Object(PROBE)),
    ("readinessProbe", Object(PROBE)),
    ("startupProbe", Object(PROBE)),
    (
        "lifecycle",
        Object(&[
            ("postStart", Object(HANDLER)),
            ("preStop", Object(HANDLER)),
            ("stopSignal", Leaf),
        ]),
    ),
    ("terminationMessagePath", Leaf),
    ("terminationMessagePolicy", Leaf),
    ("imagePullPolicy", Leaf),
    ("securityContext", Object(SECURITY_CONTEXT)),
    ("stdin", Leaf),
    ("stdinOnce", Leaf),
    ("tty", Leaf),
];

/// `container` in Go's field order, with `"resources":{}` when it has none.
pub(crate) fn container(container: &Value) -> Value {
    let mut out = ordered(container, Object(CONTAINER));
    if let Value::Object(map) = &mut out
        && !map.contains_key("resources")
    {
        // Rebuilt rather than inserted, so that `resources` lands at its place in the struct.
        let mut with = Map::with_capacity(map.len() + 1);
        let mut pending = Some(Value::Object(Map::new()));
        let after_resources = |key: &str| {
            let at = |k: &str| CONTAINER.iter().position(|(f, _)| *f == k);
            match (at(key), at("resources")) {
                (Some(k), Some(r)) => k > r,
                // A field Go does not know comes after every known one.
                (None, _) => true,
                _ => false,
            }
        };
        for (k, v) in std::mem::take(map) {
            if after_resources(&k)
                && let Some(resources) = pending.take()
            {
                with.insert("resources".into(), resources);
            }
            with.insert(k, v);
        }
        if let Some(resources) = pending {
            with.insert("resources".into(), resources);
        }
        *map = with;
    }
    out
}

fn ordered(value: &Value, shape: Shape) -> Value {
    match (shape, value) {
        (Object(fields), Value::Object(map)) => {
            let mut out = Map::with_capacity(map.len());
            for (key, field) in fields {
                if let Some(v) = map.get(*key) {
                    out.insert((*key).to_string(), ordered(v, *field));
                }
            }
            for (key, v) in map {
                if !out.contains_key(key) {
                    out.insert(key.clone(), v.clone());
                }
            }
            Value::Object(out)
        }
        (List(fields), Value::Array(items)) => Value::Array(
            items
                .iter()
                .map(|item| ordered(item, Object(fields)))
                .collect(),
        ),
        (SortedMap, Value::Object(map)) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), map[k].clone()))
                    .collect(),
            )
        }
        _ => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_follow_the_go_struct_and_resources_is_always_written() {
        let user = json!({
            "securityContext": {"runAsGroup": 4321, "runAsUser": 1234},
            "x-unknown": 42,
            "env": [{"value": "1", "name": "EXTRA"}],
            "name": "istio-proxy",
            "volumeMounts": [{"mountPath": "/m", "readOnly": true, "name": "v"}],
        });
        assert_eq!(
            container(&user).to_string(),
            r#"{"name":"istio-proxy","env":[{"name":"EXTRA","value":"1"}],"resources":{},"volumeMounts":[{"name":"v","readOnly":true,"mountPath":"/m"}],"securityContext":{"runAsUser":1234,"runAsGroup":4321},"x-unknown":42}"#
        );
    }

    #[test]
    fn resource_lists_are_sorted_and_quantities_kept_as_written() {
        let user = json!({"name": "p", "resources": {"requests": {"memory": "1Gi", "cpu": "3000m"}, "limits": {"memory": "2Gi"}}});
        assert_eq!(
            container(&user).to_string(),
            r#"{"name":"p","resources":{"limits":{"memory":"2Gi"},"requests":{"cpu":"3000m","memory":"1Gi"}}}"#
        );
    }

    #[test]
    fn resources_goes_before_later_fields_even_when_only_unknown_ones_follow() {
        assert_eq!(
            container(&json!({"name": "p", "x": 1})).to_string(),
            r#"{"name":"p","resources":{},"x":1}"#
        );
        assert_eq!(
            container(&json!({"args": ["a"], "name": "p"})).to_string(),
            r#"{"name":"p","args":["a"],"resources":{}}"#
        );
    }
}
