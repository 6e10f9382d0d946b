//! The template context: everything a template may read about one pod, computed once per pod.
//! Names are documented in docs/templates.md.

use minijinja::Value as J;
use minijinja::value::Serde;
use serde_json::{Map, Value, json};

use std::sync::Arc;

use super::json_view::JsonView;
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

/// Builds the context for the (stripped) pod `p`.
pub(crate) fn build(config: &Config, shared: &Arc<Value>, facts: &Facts<'_>) -> J {
    let p: &Value = shared;
    let values = &config.values;
    let annotation = |name: &str| pod::annotation(p, name);

    let app_containers: Vec<&str> = pod::list(p, "containers")
        .iter()
        .filter_map(pod::name_of)
        .filter(|n| *n != pod::PROXY)
        .collect();

    let image_override = annotation("sidecar.istio.io/proxyImage").filter(|i| i.contains('/'));
    let image_type = super::images::proxy_image_type(
        annotation("sidecar.istio.io/proxyImageType"),
        facts.proxy_config,
        values,
    );
    let proxy_image = image_override.map_or_else(
        || {
            super::images::image(
                values,
                "/global/proxy/image",
                Some(image_type.unwrap_or("")),
            )
        },
        str::to_string,
    );
    let proxy_init_image = image_override.map_or_else(
        || super::images::image(values, "/global/proxy_init/image", None),
        str::to_string,
    );

    let istio_namespace = values
        .pointer("/global/istioNamespace")
        .and_then(Value::as_str)
        .unwrap_or("istio-system");
    let cluster_id = values
        .pointer("/global/multiCluster/clusterName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("Kubernetes");

    let (user_volumes, user_volume_mounts) = (
        named_entries(annotation("sidecar.istio.io/userVolume")),
        named_entries(annotation("sidecar.istio.io/userVolumeMount")),
    );

    let entries: Vec<(&str, J)> = vec![
        (
            "metadata",
            J::from(Serde(MetadataView {
                meta: pod::metadata(p),
                namespace: facts.namespace,
            })),
        ),
        ("spec", JsonView::at(shared, "/spec")),
        ("values", config.values_ctx.clone()),
        ("mesh", config.mesh_ctx.clone()),
        (
            "proxy_config",
            if facts.custom_proxy_config {
                J::from(Serde(facts.proxy_config))
            } else {
                config.proxy_defaults.ctx.clone()
            },
        ),
        ("revision", J::from(facts.revision)),
        ("native_sidecar", J::from(facts.native_sidecar)),
        ("hold_application", J::from(facts.hold_application)),
        ("proxy_image", J::from(proxy_image)),
        ("proxy_init_image", J::from(proxy_init_image)),
        ("proxy_uid", J::from(1337)),
        ("proxy_gid", J::from(1337)),
        (
            "workload",
            J::from(Serde(json!({
                "kind": facts.workload.kind,
                "name": facts.workload.name,
                "api_version": facts.workload.api_version,
                "namespace": facts.namespace,
            }))),
        ),
        (
            "owner",
            J::from(workload::owner_url(facts.workload, facts.namespace)),
        ),
        ("status_port", J::from(facts.status_port)),
        ("interception_mode", J::from(facts.interception_mode)),
        ("app_containers", J::from(Serde(&app_containers))),
        ("pod_ports_json", J::from(pod_ports_json(p))),
        (
            "proxy_config_json",
            if facts.custom_proxy_config {
                J::from(super::proxy_config::cleaned_json(
                    facts.proxy_config,
                    istio_namespace,
                ))
            } else {
                J::from(config.proxy_defaults.json.as_str())
            },
        ),
        ("canonical_name", J::from(canonical_name(p, facts.workload))),
        ("canonical_revision", J::from(canonical_revision(p))),
        ("proxy_resources", proxy_resources(p, config)),
        ("cluster_id", J::from(cluster_id)),
        ("user_volumes", J::from(Serde(user_volumes))),
        ("user_volume_mounts", J::from(Serde(user_volume_mounts))),
    ];
    J::from_pairs(entries)
}

/// The pod's metadata as templates see it: without `managedFields` (large, and no template
/// needs it), with the namespace filled in. Serialized straight from the pod, never copied.
struct MetadataView<'a> {
    meta: Option<&'a Map<String, Value>>,
    namespace: &'a str,
}

impl serde::Serialize for MetadataView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        let mut has_namespace = false;
        for (k, v) in self.meta.into_iter().flatten() {
            match k.as_str() {
                "managedFields" => continue,
                "namespace" if v.as_str().is_none_or(str::is_empty) => continue,
                "namespace" => has_namespace = true,
                _ => {}
            }
            map.serialize_entry(k, v)?;
        }
        if !has_namespace {
            map.serialize_entry("namespace", self.namespace)?;
        }
        map.end()
    }
}

/// ISTIO_META_POD_PORTS exactly as istiod's template writes it: one port a line, each as Go
/// marshals a ContainerPort (name, hostPort, containerPort, protocol, hostIP; empty fields out).
fn pod_ports_json(p: &Value) -> String {
    let mut out = String::from("[");
    let mut first = true;
    // A user-written istio-proxy is left out: it is moved by the injection, so counting its ports
    // where it stood would list them in another order when the pod is injected again.
    for c in pod::list(p, "containers")
        .iter()
        .filter(|c| pod::name_of(c) != Some(pod::PROXY))
    {
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

/// The proxy's resources: when any of the four resource annotations is present only they
/// count; otherwise `global.proxy.resources` (precomputed per config). Quantities in canonical
/// form.
fn proxy_resources(p: &Value, config: &Config) -> J {
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
        return config.proxy_defaults.resources.clone();
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
    J::from(Serde(Value::Object(out)))
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

/// `{"name": {spec}}` (validated JSON) as a list of `{name, ...spec}`, sorted by name.
fn named_entries(annotation: Option<&str>) -> Vec<Value> {
    let Some(Value::Object(map)) = annotation.and_then(|t| serde_json::from_str(t).ok()) else {
        return Vec::new();
    };
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let mut entry = Map::new();
            entry.insert("name".into(), Value::from(name.as_str()));
            if let Some(Value::Object(spec)) = map.get(name) {
                for (k, v) in spec {
                    if k != "name" {
                        entry.insert(k.clone(), v.clone());
                    }
                }
            }
            Value::Object(entry)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let config = Config::embedded();
        let p = json!({"metadata": {"annotations": {"sidecar.istio.io/proxyCPU": "0.5"}}});
        let got = serde_json::to_value(proxy_resources(&p, &config)).unwrap_or_default();
        assert_eq!(got, json!({"requests": {"cpu": "500m"}}));
    }
}
