//! A pod as the Kubernetes API server hands it to a webhook and stores it: defaulted the way
//! `k8s.io/kubernetes/pkg/apis/core/v1/defaults.go` defaults it, with the admission plugins'
//! additions (ServiceAccount: the `kube-api-access-*` token volume, mounted into every container
//! and init container that lacks it; DefaultTolerationSeconds; Priority), quantities in canonical
//! form and Go's `omitempty` applied to env values. Run it on a webhook's output to get the pod of
//! the reinvocation review: everything the webhook added is defaulted too, and the token is
//! mounted into the containers it added.

#![allow(dead_code)]

use serde_json::{Map, Value, json};
use sidecar_injector::inject::quantity;

pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// `pod` after the API server's defaulting and admission plugins, with `token` as the name of
/// the service-account token volume.
pub fn admitted(pod: &Value, token: &str) -> Value {
    let mut pod = pod.clone();
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return pod;
    };
    for (key, value) in [
        ("dnsPolicy", json!("ClusterFirst")),
        ("restartPolicy", json!("Always")),
        ("schedulerName", json!("default-scheduler")),
        ("securityContext", json!({})),
        ("terminationGracePeriodSeconds", json!(30)),
        ("enableServiceLinks", json!(true)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
        ("priority", json!(0)),
        ("serviceAccountName", json!("default")),
    ] {
        spec.entry(key).or_insert(value);
    }
    let account = spec["serviceAccountName"].clone();
    spec.entry("serviceAccount").or_insert(account);
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(list) = tolerations.as_array_mut() {
        for taint in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            if !list.iter().any(|t| t["key"] == taint) {
                list.push(
                    json!({"key": taint, "operator": "Exists", "effect": "NoExecute",
                    "tolerationSeconds": 300}),
                );
            }
        }
    }
    let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
    if let Some(list) = volumes.as_array_mut() {
        if !list.iter().any(|v| v["name"] == token) {
            list.push(json!({"name": token, "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}}));
        }
        list.iter_mut().for_each(default_volume);
    }
    for field in ["initContainers", "containers"] {
        for c in spec
            .get_mut(field)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            default_container(c);
            let mounts = c
                .as_object_mut()
                .map(|c| c.entry("volumeMounts").or_insert_with(|| json!([])));
            if let Some(mounts) = mounts.and_then(Value::as_array_mut) {
                // `readOnly` is a plain bool with omitempty: false is not stored.
                for m in mounts.iter_mut().filter_map(Value::as_object_mut) {
                    if m.get("readOnly") == Some(&json!(false)) {
                        m.shift_remove("readOnly");
                    }
                }
                if !mounts.iter().any(|m| m["mountPath"] == TOKEN_MOUNT_PATH) {
                    mounts.push(
                        json!({"name": token, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH}),
                    );
                }
            }
        }
    }
    pod
}

fn entry<'a>(map: &'a mut Map<String, Value>, key: &str, value: Value) -> &'a mut Value {
    map.entry(key).or_insert(value)
}

fn default_container(c: &mut Value) {
    let Some(c) = c.as_object_mut() else { return };
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let tag = image.rsplit('/').next().unwrap_or("");
    let latest = !image.contains('@') && (!tag.contains(':') || tag.ends_with(":latest"));
    entry(
        c,
        "imagePullPolicy",
        json!(if latest { "Always" } else { "IfNotPresent" }),
    );
    entry(c, "terminationMessagePath", json!("/dev/termination-log"));
    entry(c, "terminationMessagePolicy", json!("File"));
    let resources = entry(c, "resources", json!({}));
    if let Some(r) = resources.as_object_mut() {
        for list in ["limits", "requests"] {
            for q in r
                .get_mut(list)
                .and_then(Value::as_object_mut)
                .into_iter()
                .flat_map(|m| m.values_mut())
            {
                canonical(q);
            }
        }
        // Requests default to the limits.
        if let Some(limits) = r.get("limits").and_then(Value::as_object).cloned() {
            let requests = r.entry("requests").or_insert_with(|| json!({}));
            if let Some(requests) = requests.as_object_mut() {
                for (k, v) in limits {
                    requests.entry(k).or_insert(v);
                }
            }
        }
    }
    for port in c
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(port) = port.as_object_mut() {
            entry(port, "protocol", json!("TCP"));
        }
    }
    for env in c
        .get_mut("env")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let Some(env) = env.as_object_mut() else {
            continue;
        };
        if env.get("value").and_then(Value::as_str) == Some("") {
            env.shift_remove("value");
        }
        if let Some(field) = env
            .get_mut("valueFrom")
            .and_then(|v| v.get_mut("fieldRef"))
            .and_then(Value::as_object_mut)
        {
            entry(field, "apiVersion", json!("v1"));
        }
        if let Some(divisor) = env
            .get_mut("valueFrom")
            .and_then(|v| v.get_mut("resourceFieldRef"))
            .and_then(|r| r.get_mut("divisor"))
        {
            canonical(divisor);
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            entry(p, "timeoutSeconds", json!(1));
            entry(p, "periodSeconds", json!(10));
            entry(p, "successThreshold", json!(1));
            entry(p, "failureThreshold", json!(3));
            default_handler(p);
        }
    }
    if let Some(lifecycle) = c.get_mut("lifecycle").and_then(Value::as_object_mut) {
        for hook in lifecycle.values_mut().filter_map(Value::as_object_mut) {
            default_handler(hook);
        }
    }
}

fn default_handler(handler: &mut Map<String, Value>) {
    if let Some(get) = handler.get_mut("httpGet").and_then(Value::as_object_mut) {
        entry(get, "path", json!("/"));
        entry(get, "scheme", json!("HTTP"));
    }
    if let Some(grpc) = handler.get_mut("grpc").and_then(Value::as_object_mut) {
        entry(grpc, "service", json!(""));
    }
}

fn default_volume(v: &mut Value) {
    let Some(v) = v.as_object_mut() else { return };
    if v.keys().all(|k| k == "name") {
        v.insert("emptyDir".into(), json!({}));
    }
    for source in ["configMap", "secret", "downwardAPI", "projected"] {
        if let Some(s) = v.get_mut(source).and_then(Value::as_object_mut) {
            entry(s, "defaultMode", json!(420));
            default_items(s);
        }
    }
    let sources = v
        .get_mut("projected")
        .and_then(|p| p.get_mut("sources"))
        .and_then(Value::as_array_mut);
    for source in sources.into_iter().flatten() {
        if let Some(token) = source
            .get_mut("serviceAccountToken")
            .and_then(Value::as_object_mut)
        {
            entry(token, "expirationSeconds", json!(3600));
        }
        for inner in ["downwardAPI", "configMap", "secret"] {
            if let Some(s) = source.get_mut(inner).and_then(Value::as_object_mut) {
                default_items(s);
            }
        }
    }
}

fn default_items(source: &mut Map<String, Value>) {
    for item in source
        .get_mut("items")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(field) = item.get_mut("fieldRef").and_then(Value::as_object_mut) {
            entry(field, "apiVersion", json!("v1"));
        }
    }
}

fn canonical(q: &mut Value) {
    let text = match q {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return,
    };
    if let Ok(c) = quantity::canonical(&text) {
        *q = Value::String(c);
    }
}
