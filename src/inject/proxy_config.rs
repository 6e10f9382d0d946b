//! The effective ProxyConfig of a pod: the mesh's `defaultConfig` overlaid with the
//! `proxy.istio.io/config` annotation, and the cleaned JSON the proxy receives as PROXY_CONFIG.

use serde_json::{Map, Value, json};

use crate::config::deep_merge;

/// `mesh.defaultConfig` with the annotation (already validated) applied on top.
pub(crate) fn effective(mesh: &Value, annotation: Option<&str>) -> Value {
    let mut config = match mesh.get("defaultConfig") {
        Some(v @ Value::Object(_)) => v.clone(),
        _ => Value::Object(Map::new()),
    };
    if let Some(text) = annotation
        && let Ok(overlay @ Value::Object(_)) = crate::yaml::parse_one(text)
    {
        deep_merge(&mut config, &overlay);
    }
    config
}

/// Istio's built-in ProxyConfig defaults. PROXY_CONFIG carries only what differs from them, so
/// a default mesh gives `{}`, as istiod writes.
fn istio_defaults(istio_namespace: &str) -> Value {
    json!({
        "binaryPath": "/usr/local/bin/envoy",
        "configPath": "./etc/istio/proxy",
        "controlPlaneAuthPolicy": "MUTUAL_TLS",
        "discoveryAddress": format!("istiod.{istio_namespace}.svc:15012"),
        "drainDuration": "45s",
        "proxyAdminPort": 15000,
        "serviceCluster": "istio-proxy",
        "statNameLength": 189,
        "statusPort": 15020,
        "terminationDrainDuration": "5s",
    })
}

/// The PROXY_CONFIG value: compact JSON of the fields that differ from the defaults, keys sorted.
pub(crate) fn cleaned_json(config: &Value, istio_namespace: &str) -> String {
    let defaults = istio_defaults(istio_namespace);
    let mut kept: Vec<(&String, &Value)> = config
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, v)| defaults.get(k.as_str()) != Some(v) && !v.is_null())
                .collect()
        })
        .unwrap_or_default();
    kept.sort_by(|a, b| a.0.cmp(b.0));
    let map: Map<String, Value> = kept
        .into_iter()
        .map(|(k, v)| (k.clone(), sorted(v)))
        .collect();
    Value::Object(map).to_string()
}

/// A copy with every mapping's keys sorted (serde_json keeps insertion order here).
pub(crate) fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mesh_gives_empty_proxy_config() {
        let mesh = crate::yaml::parse_one(include_str!(
            "../../charts/sidecar-injector/files/mesh.yaml"
        ))
        .unwrap();
        let config = effective(&mesh, None);
        assert_eq!(cleaned_json(&config, "istio-system"), "{}");
    }

    #[test]
    fn annotation_overlays_and_shows_in_proxy_config() {
        let mesh = json!({"defaultConfig": {"statusPort": 15020, "proxyMetadata": {"A": "1"}}});
        let config = effective(
            &mesh,
            Some("{holdApplicationUntilProxyStarts: true, proxyMetadata: {B: '2'}}"),
        );
        assert_eq!(config["proxyMetadata"], json!({"A": "1", "B": "2"}));
        assert_eq!(
            cleaned_json(&config, "istio-system"),
            r#"{"holdApplicationUntilProxyStarts":true,"proxyMetadata":{"A":"1","B":"2"}}"#
        );
    }
}
