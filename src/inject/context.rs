//! The template context: everything a template may read about one pod, computed once per pod.
//! Names are documented in docs/templates.md.
//!
//! The context is three sources behind one root: the pod (`spec`, read in place), a small JSON
//! document of facts computed about it (`metadata` and every derived name), and values fixed by
//! the configuration (`values`, `mesh`, and the proxy defaults when the pod does not override
//! them). Every read a template makes is logged (see `json_view`), so a render can be reused for
//! any pod that answers the same reads the same way (see `renders`).

use minijinja::Value as J;
use minijinja::value::{Enumerator, Object};
use serde_json::{Map, Value, json};

use std::sync::Arc;

use super::json_view::{self, JsonView, Read, Reads, Seen, Source, Step};
use super::{Workload, pod, quantity, workload};
use crate::config::Config;

/// The facts about one pod that the pipeline and the templates both need.
pub(crate) struct Facts<'a> {
    pub namespace: &'a str,
    pub workload: &'a Workload,
    pub native_sidecar: bool,
    pub hold_application: bool,
    pub proxy_config: &'a Value,
    /// The pod has its own ProxyConfig annotation (else the config's precomputed default applies).
    pub custom_proxy_config: bool,
    pub status_port: u16,
    pub interception_mode: &'a str,
    pub revision: &'a str,
}

/// The template context of one pod.
#[derive(Debug)]
pub(crate) struct Context {
    pod: Arc<Value>,
    facts: Arc<Value>,
    /// Names served from the configuration, the same for every pod that gets them.
    fixed: Vec<(&'static str, J)>,
    reads: Arc<Reads>,
    /// Whether a render read or wrote a string holding the service-account token volume's
    /// prefix (see `renders`): then the output may depend on the name in ways other than a copy.
    token_touched: std::sync::atomic::AtomicBool,
}

impl Context {
    /// Records that a render read or wrote the token volume's name.
    pub(crate) fn note_token_touched(&self) {
        self.token_touched
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether any render so far read or wrote the token volume's name.
    pub(crate) fn token_touched(&self) -> bool {
        self.token_touched
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The root value to render templates with; it logs every read into this context.
    pub(crate) fn root(self: &Arc<Self>) -> J {
        J::from_dyn_object(Arc::clone(self))
    }

    /// The reads logged since the last call.
    pub(crate) fn take_reads(&self) -> Option<Vec<Read>> {
        self.reads.take()
    }

    /// The node a read at `path` reaches: `None` for a name the configuration answers, else
    /// the node, if there is one.
    pub(crate) fn node(&self, source: Source, path: &[Step]) -> Option<Option<&Value>> {
        if let (Source::Facts, [Step::Key(name)]) = (source, path)
            && self.fixed(name).is_some()
        {
            return None;
        }
        let root = match source {
            Source::Pod => &self.pod,
            Source::Facts => &self.facts,
        };
        Some(json_view::resolve(root, path))
    }

    fn fixed(&self, name: &str) -> Option<&J> {
        self.fixed.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

impl Object for Context {
    fn get_value(self: &Arc<Self>, key: &J) -> Option<J> {
        let name = key.as_str()?;
        let path = vec![Step::Key(name.to_string())];
        let value = if let Some(fixed) = self.fixed(name) {
            self.reads.push(Read {
                source: Source::Facts,
                path,
                seen: Seen::Config,
            });
            fixed.clone()
        } else if name == "spec" {
            JsonView::at(&self.pod, Source::Pod, path, &self.reads)
        } else {
            JsonView::at(&self.facts, Source::Facts, path, &self.reads)
        };
        (!value.is_undefined()).then_some(value)
    }

    /// Listing the root (`debug()` does) reads everything at once: such a render is not reused.
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.reads.push(Read {
            source: Source::Facts,
            path: Vec::new(),
            seen: Seen::Unrepeatable,
        });
        let mut names: Vec<J> = self.fixed.iter().map(|(n, _)| J::from(*n)).collect();
        names.push(J::from("spec"));
        if let Value::Object(facts) = self.facts.as_ref() {
            names.extend(facts.keys().map(|k| J::from(k.as_str())));
        }
        Enumerator::Values(names)
    }
}

/// Builds the context for the (stripped) pod `p`.
pub(crate) fn build(config: &Config, shared: &Arc<Value>, facts: &Facts<'_>) -> Arc<Context> {
    let p: &Value = shared;
    let values = &config.values;
    let annotation = |name: &str| pod::annotation(p, name);

    let app_containers: Vec<Value> = pod::list(p, "containers")
        .iter()
        .filter_map(pod::name_of)
        .filter(|n| *n != pod::PROXY)
        .map(Value::from)
        .collect();

    let image_override = annotation("sidecar.istio.io/proxyImage").filter(|i| i.contains('/'));
    let image_type = super::images::proxy_image_type(
        annotation("sidecar.istio.io/proxyImageType"),
        facts.proxy_config,
        values,
    );
    let defaults = &config.proxy_defaults;
    let (proxy_image, proxy_init_image) = match image_override {
        Some(image) => (image.to_string(), image.to_string()),
        // Most pods pick no image of their own: the images were built once per config.
        None if image_type == defaults.image_type.as_deref() => (
            defaults.proxy_image.clone(),
            defaults.proxy_init_image.clone(),
        ),
        None => (
            super::images::image(
                values,
                "/global/proxy/image",
                Some(image_type.unwrap_or("")),
            ),
            super::images::image(values, "/global/proxy_init/image", None),
        ),
    };

    let istio_namespace = values
        .pointer("/global/istioNamespace")
        .and_then(Value::as_str)
        .unwrap_or("istio-system");
    let cluster_id = values
        .pointer("/global/multiCluster/clusterName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("Kubernetes");

    let mut fixed = vec![
        ("values", config.values_ctx.clone()),
        ("mesh", config.mesh_ctx.clone()),
    ];
    let mut derived = Map::new();
    let mut set = |name: &str, value: Value| {
        derived.insert(name.to_string(), value);
    };
    set("metadata", metadata(p, facts.namespace));
    set("revision", Value::from(facts.revision));
    set("native_sidecar", Value::from(facts.native_sidecar));
    set("hold_application", Value::from(facts.hold_application));
    set("proxy_image", Value::from(proxy_image));
    set("proxy_init_image", Value::from(proxy_init_image));
    set("proxy_uid", Value::from(1337));
    set("proxy_gid", Value::from(1337));
    set(
        "workload",
        json!({
            "kind": facts.workload.kind,
            "name": facts.workload.name,
            "api_version": facts.workload.api_version,
            "namespace": facts.namespace,
        }),
    );
    set(
        "owner",
        Value::from(workload::owner_url(facts.workload, facts.namespace)),
    );
    set("status_port", Value::from(facts.status_port));
    set("interception_mode", Value::from(facts.interception_mode));
    set("app_containers", Value::Array(app_containers));
    set("pod_ports_json", Value::from(pod_ports_json(p)));
    set(
        "canonical_name",
        Value::from(canonical_name(p, facts.workload)),
    );
    set("canonical_revision", Value::from(canonical_revision(p)));
    set("cluster_id", Value::from(cluster_id));
    set(
        "user_volumes",
        Value::Array(named_entries(annotation("sidecar.istio.io/userVolume"))),
    );
    set(
        "user_volume_mounts",
        Value::Array(named_entries(annotation(
            "sidecar.istio.io/userVolumeMount",
        ))),
    );
    if facts.custom_proxy_config {
        set("proxy_config", facts.proxy_config.clone());
        set(
            "proxy_config_json",
            Value::from(super::proxy_config::cleaned_json(
                facts.proxy_config,
                istio_namespace,
            )),
        );
    } else {
        fixed.push(("proxy_config", config.proxy_defaults.ctx.clone()));
        fixed.push((
            "proxy_config_json",
            J::from(config.proxy_defaults.json.as_str()),
        ));
    }
    match proxy_resources(p) {
        Some(resources) => set("proxy_resources", resources),
        None => fixed.push(("proxy_resources", config.proxy_defaults.resources.clone())),
    }

    Arc::new(Context {
        pod: Arc::clone(shared),
        facts: Arc::new(Value::Object(derived)),
        fixed,
        reads: Arc::default(),
        token_touched: std::sync::atomic::AtomicBool::new(false),
    })
}

/// The pod's metadata as templates see it: without `managedFields` (large, and no template
/// needs it), with the namespace filled in.
fn metadata(p: &Value, namespace: &str) -> Value {
    let mut out = Map::new();
    for (k, v) in pod::metadata(p).into_iter().flatten() {
        match k.as_str() {
            "managedFields" => continue,
            "namespace" if v.as_str().is_none_or(str::is_empty) => continue,
            _ => {}
        }
        out.insert(k.clone(), v.clone());
    }
    if !out.contains_key("namespace") {
        out.insert("namespace".into(), Value::from(namespace));
    }
    Value::Object(out)
}

/// ISTIO_META_POD_PORTS exactly as istiod's template writes it: one port a line, each as Go
/// marshals a ContainerPort (name, hostPort, containerPort, protocol, hostIP; empty fields out).
fn pod_ports_json(p: &Value) -> String {
    let mut out = String::from("[");
    let mut first = true;
    // The ports of a user-written istio-proxy count too (a gateway's are its only ones), but
    // last, wherever it stands: the injection moves it (to the end, or into initContainers), and
    // listing its ports where it stood would list them in another order when the pod is injected
    // again. That is where istiod lists them when it injects again, too.
    let apps = pod::list(p, "containers")
        .iter()
        .filter(|c| pod::name_of(c) != Some(pod::PROXY));
    let user_proxy = pod::CONTAINER_LISTS.iter().rev().find_map(|l| {
        pod::list(p, l)
            .iter()
            .find(|c| pod::name_of(c) == Some(pod::PROXY))
    });
    for c in apps.chain(user_proxy) {
        for port in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let mut m = Map::new();
            for key in ["name", "hostPort", "containerPort", "protocol", "hostIP"] {
                match port.get(key) {
                    None | Some(Value::Null) => {}
                    Some(Value::String(s)) if s.is_empty() => {}
                    Some(Value::Number(n)) if n.as_i64() == Some(0) && key != "containerPort" => {}
                    Some(v) => {
                        m.insert(key.into(), v.clone());
                    }
                }
            }
            out.push_str("\n    ");
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&Value::Object(m).to_string());
        }
    }
    out.push_str("\n]");
    out
}

fn first_label<'a>(p: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| pod::label(p, k).filter(|v| !v.is_empty()))
}

/// `service.istio.io/canonical-name`: the label if set, else `app.kubernetes.io/name`, else
/// `app`, else the workload name; at most 63 characters, no trailing `-`, `_` or `.`.
///
/// A source that trims down to nothing (`-`) is skipped like an empty one: otherwise the pod
/// would get an empty label, which the next injection skips, and injecting twice would not
/// give the same pod.
fn canonical_name(p: &Value, w: &Workload) -> String {
    let labels = [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ];
    labels
        .iter()
        .filter_map(|k| pod::label(p, k))
        .chain([w.name.as_str()])
        .map(|name| {
            let truncated: String = name.chars().take(63).collect();
            truncated.trim_end_matches(['-', '_', '.']).to_string()
        })
        .find(|name| !name.is_empty())
        .unwrap_or_default()
}

fn canonical_revision(p: &Value) -> String {
    first_label(
        p,
        &[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ],
    )
    .unwrap_or("latest")
    .to_string()
}

/// The proxy's resources when any of the four resource annotations is present (then only they
/// count, quantities in canonical form); `None` leaves `global.proxy.resources`, precomputed per
/// config.
fn proxy_resources(p: &Value) -> Option<Value> {
    let annotations = [
        ("requests", "cpu", "sidecar.istio.io/proxyCPU"),
        ("requests", "memory", "sidecar.istio.io/proxyMemory"),
        ("limits", "cpu", "sidecar.istio.io/proxyCPULimit"),
        ("limits", "memory", "sidecar.istio.io/proxyMemoryLimit"),
    ];
    if !annotations
        .iter()
        .any(|(_, _, a)| pod::annotation(p, a).is_some())
    {
        return None;
    }
    let mut out = Map::new();
    for (group, resource, a) in annotations {
        if let Some(q) = pod::annotation(p, a) {
            let q = quantity::canonical(q).unwrap_or_else(|_| q.to_string());
            if let Some(g) = pod::map_entry(&mut out, group) {
                g.insert(resource.into(), Value::from(q));
            }
        }
    }
    Some(Value::Object(out))
}

/// `global.proxy.resources` with nulls left out and quantities in canonical form.
pub(crate) fn values_resources(values: &Value) -> Value {
    let mut out = Map::new();
    if let Some(resources) = values
        .pointer("/global/proxy/resources")
        .and_then(Value::as_object)
    {
        for (group, entries) in resources {
            let Some(entries) = entries.as_object() else {
                continue;
            };
            let mut g = Map::new();
            for (resource, q) in entries {
                let text = match q {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => continue,
                };
                let text = quantity::canonical(&text).unwrap_or(text);
                g.insert(resource.clone(), Value::from(text));
            }
            if !g.is_empty() {
                out.insert(group.clone(), Value::Object(g));
            }
        }
    }
    Value::Object(out)
}

/// `sidecar.istio.io/userVolume` and `userVolumeMount` as lists of `{name, ...}`, as istiod's
/// template renders them: `range $index, $value := fromJSON ...` writes `name: "<index>"`, then
/// the value, so the value's own `name` (written after) wins. The annotation is a JSON object
/// (index: the key, in sorted order, as Go ranges over a map) or a JSON list of objects (index:
/// the position; Istio's `samples/addons/extras/prometheus-secure-metrics.yaml` uses this form).
fn named_entries(annotation: Option<&str>) -> Vec<Value> {
    let entry = |index: String, spec: &Value| {
        let mut entry = Map::new();
        entry.insert("name".into(), Value::from(index));
        if let Value::Object(spec) = spec {
            for (k, v) in spec {
                entry.insert(k.clone(), v.clone());
            }
        }
        Value::Object(entry)
    };
    match annotation.map(crate::value::from_str) {
        Some(Ok(Value::Object(map))) => {
            let mut names: Vec<&String> = map.keys().collect();
            names.sort();
            names
                .into_iter()
                .map(|name| entry(name.clone(), &map[name.as_str()]))
                .collect()
        }
        Some(Ok(Value::Array(items))) => items
            .iter()
            .enumerate()
            .map(|(i, spec)| entry(i.to_string(), spec))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_volumes_in_both_forms_as_istiod_renders_them() {
        // Object form: sorted by key, the key as the name unless the entry names itself.
        let object = r#"{"b":{"emptyDir":{}},"a":{"name":"own","secret":{"secretName":"s"}}}"#;
        assert_eq!(
            named_entries(Some(object)),
            vec![
                json!({"name": "own", "secret": {"secretName": "s"}}),
                json!({"name": "b", "emptyDir": {}}),
            ]
        );
        // List form: in order, each with its own name.
        let list = r#"[{"name":"istio-certs","mountPath":"/etc/istio-output-certs"},{"name":"x","mountPath":"/x"}]"#;
        assert_eq!(
            named_entries(Some(list)),
            vec![
                json!({"name": "istio-certs", "mountPath": "/etc/istio-output-certs"}),
                json!({"name": "x", "mountPath": "/x"}),
            ]
        );
        assert_eq!(named_entries(Some("not json")), Vec::<Value>::new());
    }

    #[test]
    fn pod_ports_json_matches_istio_layout() {
        let p = json!({"spec": {"containers": [
            {"name": "a", "ports": [{"name": "http", "containerPort": 80}]},
            {"name": "b", "ports": [{"containerPort": 90, "protocol": "TCP", "name": "http"}]},
            {"name": "c"}]}});
        assert_eq!(
            pod_ports_json(&p),
            "[\n    {\"name\":\"http\",\"containerPort\":80}\n    ,{\"name\":\"http\",\"containerPort\":90,\"protocol\":\"TCP\"}\n]"
        );
        assert_eq!(pod_ports_json(&json!({})), "[\n]");
    }

    #[test]
    fn pod_ports_json_lists_a_user_proxy_last() {
        let proxy = json!({"name": "istio-proxy", "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}]});
        let app = json!({"name": "app", "ports": [{"containerPort": 80}]});
        let want = "[\n    {\"containerPort\":80}\n    ,{\"name\":\"http-envoy-prom\",\"containerPort\":15090,\"protocol\":\"TCP\"}\n]";
        let first = json!({"spec": {"containers": [proxy, app]}});
        let in_init = json!({"spec": {"initContainers": [proxy], "containers": [app]}});
        assert_eq!(pod_ports_json(&first), want);
        assert_eq!(pod_ports_json(&in_init), want);
        assert_eq!(
            pod_ports_json(&json!({"spec": {"containers": [proxy]}})),
            "[\n    {\"name\":\"http-envoy-prom\",\"containerPort\":15090,\"protocol\":\"TCP\"}\n]"
        );
    }

    #[test]
    fn canonical_name_falls_back_and_trims() {
        let w = Workload {
            kind: "Deployment".into(),
            name: "web".into(),
            api_version: "apps/v1".into(),
        };
        assert_eq!(
            canonical_name(&json!({"metadata": {"labels": {"app": "shop"}}}), &w),
            "shop"
        );
        assert_eq!(canonical_name(&json!({}), &w), "web");
        let long = format!("{}-x", "a".repeat(62));
        assert_eq!(
            canonical_name(&json!({"metadata": {"labels": {"app": long}}}), &w),
            "a".repeat(62)
        );
    }

    #[test]
    fn resource_annotations_replace_values_entirely() {
        let values = json!({"global": {"proxy": {"resources": {"limits": {"cpu": "2000m", "memory": "1024Mi"}, "requests": {"cpu": "100m", "memory": null}}}}});
        assert_eq!(
            values_resources(&values),
            json!({"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "100m"}})
        );
        let p = json!({"metadata": {"annotations": {"sidecar.istio.io/proxyCPU": "0.5"}}});
        assert_eq!(
            proxy_resources(&p),
            Some(json!({"requests": {"cpu": "500m"}}))
        );
        assert_eq!(proxy_resources(&json!({})), None);
    }
}
