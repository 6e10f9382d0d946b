//! The `sidecar.istio.io/status` annotation: what an injection added, so that injecting again
//! can strip it first and come out identical (DESIGN.md decision 6).

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::pod;

pub(crate) const STATUS: &str = "sidecar.istio.io/status";
pub(crate) use super::probes::PROBERS_ENV;
pub(crate) const PROMETHEUS_ENV: &str = "ISTIO_PROMETHEUS_ANNOTATIONS";

/// What an earlier injection left in the pod.
#[derive(Debug, Default)]
pub(crate) struct Previous {
    /// The pod carried a status annotation.
    pub injected: bool,
    /// Container names listed in it (both lists).
    pub containers: HashSet<String>,
    /// Volume names listed in it.
    pub volumes: HashSet<String>,
    /// The old proxy's ISTIO_KUBE_APP_PROBERS, merged into the new one.
    pub probers: Option<String>,
    /// The old proxy's ISTIO_PROMETHEUS_ANNOTATIONS: the user's own scrape settings.
    pub prometheus: Option<String>,
}

fn names(status: &Value, field: &str) -> HashSet<String> {
    status
        .get(field)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    container
        .get("env")?
        .as_array()?
        .iter()
        .find(|e| pod::name_of(e) == Some(name))?
        .get("value")?
        .as_str()
        .map(str::to_string)
}

/// Removes what the status annotation lists and the annotation itself (istiod's `stripPod`).
pub(crate) fn strip(p: &mut Value) -> Previous {
    let Some(text) = pod::annotation(p, STATUS).map(str::to_string) else {
        return Previous::default();
    };
    let mut previous = Previous {
        injected: true,
        ..Previous::default()
    };
    // The annotation was validated as a JSON object before we get here.
    let status = crate::value::from_str(&text).unwrap_or(Value::Null);
    for (field, list) in [
        ("initContainers", "initContainers"),
        ("containers", "containers"),
        ("volumes", "volumes"),
        ("imagePullSecrets", "imagePullSecrets"),
    ] {
        let listed = names(&status, field);
        if listed.is_empty() {
            continue;
        }
        if list.ends_with("ontainers") {
            previous.containers.extend(listed.iter().cloned());
        } else if list == "volumes" {
            previous.volumes.extend(listed.iter().cloned());
        }
        let Some(items) = p
            .get_mut("spec")
            .and_then(|s| s.get_mut(list))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        items.retain(|item| {
            let listed_here = pod::name_of(item).is_some_and(|n| listed.contains(n));
            if listed_here && pod::name_of(item) == Some(pod::PROXY) {
                previous.probers = env_value(item, PROBERS_ENV);
                previous.prometheus = env_value(item, PROMETHEUS_ENV);
            }
            !listed_here
        });
    }
    // The prometheus annotations an earlier injection wrote stay where they are (the merge
    // sees its own port and leaves them); the user's settings come back from the old proxy.
    if let Some(annotations) = pod::annotations_mut(p) {
        annotations.shift_remove(STATUS);
    }
    previous
}

/// The names an injection added, in the order the templates rendered them.
#[derive(Debug, Default)]
pub(crate) struct Added {
    pub init_containers: Vec<String>,
    pub containers: Vec<String>,
    pub volumes: Vec<String>,
    pub image_pull_secrets: Vec<String>,
}

impl Added {
    /// Records the names of a rendered fragment's spec lists.
    pub(crate) fn record(&mut self, fragment_spec: Option<&Map<String, Value>>) {
        let Some(spec) = fragment_spec else { return };
        let take = |field: &str, into: &mut Vec<String>| {
            // A set, not a scan of `into`: `sidecar.istio.io/userVolume` can add many volumes.
            let mut seen: HashSet<String> = into.iter().cloned().collect();
            for item in spec
                .get(field)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(n) = pod::name_of(item)
                    && seen.insert(n.to_string())
                {
                    into.push(n.to_string());
                }
            }
        };
        take("initContainers", &mut self.init_containers);
        take("containers", &mut self.containers);
        take("volumes", &mut self.volumes);
        take("imagePullSecrets", &mut self.image_pull_secrets);
    }

    /// The annotation value, byte for byte as istiod writes it (Go struct field order, empty
    /// lists as null).
    pub(crate) fn annotation(&self, revision: &str) -> String {
        let list = |v: &[String]| {
            if v.is_empty() {
                "null".to_string()
            } else {
                Value::from(v.to_vec()).to_string()
            }
        };
        format!(
            r#"{{"initContainers":{},"containers":{},"volumes":{},"imagePullSecrets":{},"revision":{}}}"#,
            list(&self.init_containers),
            list(&self.containers),
            list(&self.volumes),
            list(&self.image_pull_secrets),
            Value::from(revision)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strip_removes_listed_items_and_keeps_the_rest() {
        let mut p = json!({
            "metadata": {"annotations": {
                STATUS: r#"{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["istio-envoy"],"imagePullSecrets":null,"revision":"default"}"#,
                "keep": "me"}},
            "spec": {
                "initContainers": [{"name": "istio-init"}, {"name": "user-init"}],
                "containers": [{"name": "app"}, {"name": "istio-proxy", "env": [
                    {"name": PROBERS_ENV, "value": "{\"a\":1}"},
                    {"name": PROMETHEUS_ENV, "value": "{\"scrape\":\"true\",\"port\":\"9090\"}"}]}],
                "volumes": [{"name": "data"}, {"name": "istio-envoy"}]}
        });
        let prev = strip(&mut p);
        assert!(prev.injected);
        assert_eq!(prev.probers.as_deref(), Some("{\"a\":1}"));
        assert_eq!(
            p["spec"],
            json!({"initContainers": [{"name": "user-init"}], "containers": [{"name": "app"}], "volumes": [{"name": "data"}]})
        );
        assert_eq!(
            prev.prometheus.as_deref(),
            Some("{\"scrape\":\"true\",\"port\":\"9090\"}")
        );
        assert_eq!(p["metadata"]["annotations"], json!({"keep": "me"}));
    }

    #[test]
    fn annotation_matches_istio_bytes() {
        let mut added = Added::default();
        added.record(
            json!({"initContainers": [{"name": "istio-init"}, {"name": "istio-proxy"}],
            "volumes": [{"name": "a"}, {"name": "b"}]})
            .as_object(),
        );
        assert_eq!(
            added.annotation("default"),
            r#"{"initContainers":["istio-init","istio-proxy"],"containers":null,"volumes":["a","b"],"imagePullSecrets":null,"revision":"default"}"#
        );
    }
}
