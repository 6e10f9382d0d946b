//! What a Kubernetes API server and its controllers do to a pod between a manifest and the
//! object `kubectl get pod -o json` returns, for tests of the upgrade comparison:
//!
//! 1. a controller makes the pod from the workload's template ([`pod_of`]: owner references,
//!    `generateName`, the controller's labels);
//! 2. the API server decodes the create with defaulting ([`defaults`], as
//!    `pkg/apis/core/v1/defaults.go` does);
//! 3. the admission plugins: ServiceAccount mounts the API token ([`service_account`]),
//!    DefaultTolerationSeconds adds two tolerations ([`default_tolerations`]);
//! 4. the injection webhook patches it (here: the engine, as the webhook runs it);
//! 5. the patched object is decoded, and so defaulted, again;
//! 6. it is stored and scheduled, and the kubelet reports status ([`persisted`]).
//!
//! [`create`] runs the whole way; [`admitted`] is steps 2 and 3, which is also what the
//! reinvocation review of a webhook's output carries.
#![allow(dead_code)]

use serde_json::{Map, Value, json};
use sidecar_injector::config::Config;
use sidecar_injector::inject::{self, Outcome, Request};
use sidecar_injector::manifest;

/// The pod a controller creates from a workload document (a Pod document is taken as is).
/// `n` tells replicas apart.
pub fn pod_of(doc: &Value, n: usize) -> Value {
    pod_of_revision(doc, n, "7d4b9c8f5")
}

/// [`pod_of`] for the template revision `hash` (a Deployment's pod-template-hash, a
/// StatefulSet's or DaemonSet's controller-revision-hash).
pub fn pod_of_revision(doc: &Value, n: usize, hash: &str) -> Value {
    let kind = doc["kind"].as_str().unwrap_or("Pod");
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or("app")
        .to_string();
    let namespace = doc["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let Some((pointer, _)) = manifest::pod_template_location(kind) else {
        panic!("{kind} holds no pod");
    };
    let mut pod = if pointer.is_empty() {
        doc.clone()
    } else {
        doc.pointer(pointer).cloned().unwrap_or_else(|| json!({}))
    };
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    if !pod["metadata"].is_object() {
        pod["metadata"] = json!({});
    }
    let meta = &mut pod["metadata"];
    meta["namespace"] = json!(namespace);
    let owner = |kind: &str, api: &str, owner_name: &str| {
        json!([{"apiVersion": api, "kind": kind, "name": owner_name,
                "uid": format!("uid-{}", owner_name), "controller": true,
                "blockOwnerDeletion": true}])
    };
    let labels = |meta: &mut Value, extra: Value| {
        if !meta["labels"].is_object() {
            meta["labels"] = json!({});
        }
        for (k, v) in extra.as_object().unwrap() {
            meta["labels"][k] = v.clone();
        }
    };
    match kind {
        "Pod" => return pod,
        "Deployment" => {
            let rs = format!("{name}-{hash}");
            labels(meta, json!({"pod-template-hash": hash}));
            meta["generateName"] = json!(format!("{rs}-"));
            meta["name"] = json!(format!("{rs}-{}", suffix(n)));
            meta["ownerReferences"] = owner("ReplicaSet", "apps/v1", &rs);
        }
        "StatefulSet" => {
            labels(
                meta,
                json!({"controller-revision-hash": format!("{name}-{hash}"),
                       "statefulset.kubernetes.io/pod-name": format!("{name}-{n}"),
                       "apps.kubernetes.io/pod-index": n.to_string()}),
            );
            meta["generateName"] = json!(format!("{name}-"));
            meta["name"] = json!(format!("{name}-{n}"));
            meta["ownerReferences"] = owner("StatefulSet", "apps/v1", &name);
        }
        "CronJob" => {
            let job = format!("{name}-29012345");
            labels(
                meta,
                json!({"batch.kubernetes.io/job-name": job, "job-name": job}),
            );
            meta["generateName"] = json!(format!("{job}-"));
            meta["name"] = json!(format!("{job}-{}", suffix(n)));
            meta["ownerReferences"] = owner("Job", "batch/v1", &job);
        }
        "Job" => {
            labels(
                meta,
                json!({"batch.kubernetes.io/job-name": name, "job-name": name}),
            );
            meta["generateName"] = json!(format!("{name}-"));
            meta["name"] = json!(format!("{name}-{}", suffix(n)));
            meta["ownerReferences"] = owner("Job", "batch/v1", &name);
        }
        other => {
            let api = doc["apiVersion"].as_str().unwrap_or("apps/v1");
            meta["generateName"] = json!(format!("{name}-"));
            meta["name"] = json!(format!("{name}-{}", suffix(n)));
            meta["ownerReferences"] = owner(other, api, &name);
        }
    }
    pod
}

/// Five characters from the API server's name alphabet (no vowels), as in generated names.
pub fn suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = n.wrapping_mul(2_654_435_761).wrapping_add(12_345);
    (0..5)
        .map(|_| {
            let c = ALPHABET[x % ALPHABET.len()] as char;
            x /= ALPHABET.len();
            c
        })
        .collect()
}

fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_string(), value);
    }
}

/// A quantity in the API server's canonical form (`3000m` -> `3`); left as it is when it is not
/// a quantity (the API server would refuse the pod, which these tests do not model).
fn canonical(q: &Value) -> Value {
    let text = match q {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => return other.clone(),
    };
    match inject::quantity::canonical(&text) {
        Ok(c) => json!(c),
        Err(_) => q.clone(),
    }
}

fn default_probe(probe: &mut Value) {
    let Some(p) = probe.as_object_mut() else {
        return;
    };
    set_default(p, "timeoutSeconds", json!(1));
    set_default(p, "periodSeconds", json!(10));
    set_default(p, "successThreshold", json!(1));
    set_default(p, "failureThreshold", json!(3));
    default_handler(probe);
}

fn default_handler(handler: &mut Value) {
    if let Some(h) = handler.get_mut("httpGet").and_then(Value::as_object_mut) {
        set_default(h, "path", json!("/"));
        set_default(h, "scheme", json!("HTTP"));
    }
    if let Some(g) = handler.get_mut("grpc").and_then(Value::as_object_mut) {
        set_default(g, "service", json!(""));
    }
}

/// `fieldRef.apiVersion` and canonical `resourceFieldRef.divisor`, wherever they are (env,
/// downward-API volumes, projected sources).
fn default_field_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(f)) = m.get_mut("fieldRef") {
                set_default(f, "apiVersion", json!("v1"));
            }
            if let Some(Value::Object(r)) = m.get_mut("resourceFieldRef")
                && let Some(d) = r.get("divisor").cloned()
            {
                r.insert("divisor".into(), canonical(&d));
            }
            for (_, child) in m.iter_mut() {
                default_field_refs(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(default_field_refs),
        _ => {}
    }
}

fn default_container(c: &mut Value) {
    let image = c["image"].as_str().unwrap_or("").to_string();
    let Some(m) = c.as_object_mut() else { return };
    set_default(m, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(m, "terminationMessagePolicy", json!("File"));
    // `Always` for `:latest` or no tag, unless pinned by digest.
    let tag = image.rsplit('/').next().unwrap_or("");
    let latest = !image.contains('@') && (!tag.contains(':') || tag.ends_with(":latest"));
    set_default(
        m,
        "imagePullPolicy",
        json!(if latest { "Always" } else { "IfNotPresent" }),
    );
    set_default(m, "resources", json!({}));
    if let Some(Value::Object(r)) = m.get_mut("resources") {
        for part in ["limits", "requests"] {
            if let Some(Value::Object(list)) = r.get_mut(part) {
                for (_, q) in list.iter_mut() {
                    *q = canonical(q);
                }
            }
        }
        // Requests default to the limits.
        if let Some(Value::Object(limits)) = r.get("limits").cloned() {
            let requests = r.entry("requests").or_insert_with(|| json!({}));
            if let Some(req) = requests.as_object_mut() {
                for (k, v) in limits {
                    req.entry(k).or_insert(v);
                }
            }
        }
    }
    for port in m
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(p) = port.as_object_mut() {
            set_default(p, "protocol", json!("TCP"));
        }
    }
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        if let Some(p) = m.get_mut(probe) {
            default_probe(p);
        }
    }
    if let Some(Value::Object(l)) = m.get_mut("lifecycle") {
        for (_, h) in l.iter_mut() {
            default_handler(h);
        }
    }
    // Go's `omitempty`: a mount's `readOnly: false` and an env var's `value: ""` are not stored.
    for mount in m
        .get_mut("volumeMounts")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
    {
        if mount.get("readOnly") == Some(&json!(false)) {
            mount.shift_remove("readOnly");
        }
    }
    if let Some(env) = m.get_mut("env") {
        for var in env
            .as_array_mut()
            .into_iter()
            .flatten()
            .filter_map(Value::as_object_mut)
        {
            if var.get("value").and_then(Value::as_str) == Some("") {
                var.shift_remove("value");
            }
        }
        default_field_refs(env);
    }
}

fn default_volume(v: &mut Value) {
    let Some(vol) = v.as_object_mut() else {
        return;
    };
    // A volume without a source is an emptyDir.
    vol.retain(|k, x| k == "name" || !x.is_null());
    if vol.len() == 1 {
        vol.insert("emptyDir".into(), json!({}));
    }
    for kind in ["configMap", "secret", "projected", "downwardAPI"] {
        if let Some(Value::Object(src)) = vol.get_mut(kind) {
            set_default(src, "defaultMode", json!(420));
        }
    }
    let sources = vol
        .get_mut("projected")
        .and_then(|p| p.get_mut("sources"))
        .and_then(Value::as_array_mut);
    for source in sources.into_iter().flatten() {
        if let Some(Value::Object(token)) = source.get_mut("serviceAccountToken") {
            set_default(token, "expirationSeconds", json!(3600));
        }
    }
    default_field_refs(v);
}

/// The API server's defaulting of a pod (what a create or a patched object is decoded into), as
/// `pkg/apis/core/v1/defaults.go` does it, with Go's `omitempty` on what is stored.
pub fn defaults(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "enableServiceLinks", json!(true));
    set_default(spec, "serviceAccountName", json!("default"));
    let account = spec["serviceAccountName"].clone();
    set_default(spec, "serviceAccount", account);
    set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    set_default(spec, "priority", json!(0));
    for list in ["initContainers", "containers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            default_container(c);
        }
    }
    for v in spec
        .get_mut("volumes")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        default_volume(v);
    }
}

/// The DefaultTolerationSeconds admission plugin: 300 s on not-ready and unreachable nodes.
pub fn default_tolerations(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = tolerations.as_array_mut() else {
        return;
    };
    for taint in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        if !list.iter().any(|t| t["key"] == taint) {
            list.push(
                json!({"effect": "NoExecute", "key": taint, "operator": "Exists",
                             "tolerationSeconds": 300}),
            );
        }
    }
}

pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The ServiceAccount admission plugin: the projected token volume `name`, mounted into every
/// container and init container that lacks it. It runs before the webhook, and again on
/// reinvocation (then the injected containers get the mount as well).
pub fn service_account(pod: &mut Value, name: &str) {
    let volume = json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ]
        }
    });
    let spec = pod["spec"].as_object_mut().expect("a pod spec");
    let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
    let volumes = volumes.as_array_mut().expect("volumes list");
    if !volumes.iter().any(|v| v["name"] == name) {
        volumes.push(volume);
    }
    let mount = json!({"name": name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
    for list in ["initContainers", "containers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let mounts = c
                .as_object_mut()
                .expect("a container")
                .entry("volumeMounts")
                .or_insert_with(|| json!([]));
            let mounts = mounts.as_array_mut().expect("mounts list");
            if !mounts.iter().any(|m| m["mountPath"] == TOKEN_MOUNT_PATH) {
                mounts.push(mount.clone());
            }
        }
    }
}

/// `pod` as the API server hands it to a webhook (and, run on the webhook's output, as it
/// stores it and sends it in the reinvocation review): defaulted, with the admission plugins'
/// additions and `token` as the name of the service-account token volume.
pub fn admitted(pod: &Value, token: &str) -> Value {
    let mut pod = pod.clone();
    if !pod["spec"].is_object() {
        return pod;
    }
    defaults(&mut pod);
    default_tolerations(&mut pod);
    service_account(&mut pod, token);
    pod
}

/// What storing, scheduling and running add: identity, node, status.
pub fn persisted(pod: &mut Value, node: &str) {
    let name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or("app")
        .to_string();
    let meta = pod["metadata"].as_object_mut().expect("metadata");
    set_default(meta, "name", json!(name));
    meta.insert("uid".into(), json!(format!("0b9e4d2a-{name}")));
    meta.insert("resourceVersion".into(), json!("48213"));
    meta.insert("creationTimestamp".into(), json!("2026-10-01T08:00:00Z"));
    pod["spec"]["nodeName"] = json!(node);
    let statuses = |list: &str| -> Vec<Value> {
        pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": true,
                       "restartCount": 0, "started": true,
                       "state": {"running": {"startedAt": "2026-10-01T08:00:05Z"}}})
            })
            .collect()
    };
    let (init, containers) = (statuses("initContainers"), statuses("containers"));
    pod["status"] = json!({
        "phase": "Running",
        "hostIP": "10.0.0.7",
        "podIP": "10.244.1.23",
        "podIPs": [{"ip": "10.244.1.23"}],
        "qosClass": "Burstable",
        "startTime": "2026-10-01T08:00:00Z",
        "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": null,
                        "lastTransitionTime": "2026-10-01T08:00:09Z"}],
        "initContainerStatuses": init,
        "containerStatuses": containers,
    });
}

/// How the webhook treats the pod on its way in.
pub struct Webhook<'a> {
    pub config: &'a Config,
    pub native: bool,
}

/// A pod from a controller (or a user) to what the API server returns for it.
/// `webhook: None` is a pod created while no injector was called.
pub fn create(mut pod: Value, webhook: Option<Webhook<'_>>, reinvoked: bool) -> Value {
    let token = format!(
        "kube-api-access-{}",
        suffix(pod["metadata"]["name"].as_str().map_or(0, str::len))
    );
    defaults(&mut pod);
    default_tolerations(&mut pod);
    service_account(&mut pod, &token);
    if let Some(w) = webhook {
        let namespace = pod["metadata"]["namespace"].as_str().map(str::to_string);
        let outcome = inject::inject(
            w.config,
            &Request {
                pod: &pod,
                namespace: namespace.as_deref(),
                workload: None,
                native_sidecars: w.native,
            },
        )
        .expect("the engine runs");
        if let Outcome::Injected(injected) = outcome {
            let patch = inject::patch(&pod, &injected.pod);
            json_patch::patch(&mut pod, &patch).expect("the patch applies");
        }
        defaults(&mut pod);
        if reinvoked {
            service_account(&mut pod, &token);
        }
    }
    persisted(&mut pod, "node-a");
    pod
}
