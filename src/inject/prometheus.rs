//! Prometheus metrics merge: scrapes go to the agent, which merges the app's metrics with the
//! proxy's. The user's own scrape settings are kept for the agent in ISTIO_PROMETHEUS_ANNOTATIONS.

use serde_json::{Map, Value};

use super::annotations::parse_bool;
use super::{Problem, pod};

/// Ports the proxy itself listens on; an app's metrics cannot be there.
const RESERVED: [u16; 10] = [
    15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090,
];

/// Annotation keys are compared as Prometheus sees them (`prometheus.io/scrape` and
/// `prometheus.io.scrape` are the same label once sanitized).
/// Whether `key` reads as `want` once sanitized, without building the sanitized string.
fn sanitizes_to(key: &str, want: &str) -> bool {
    key.len() == want.len()
        && key.bytes().zip(want.bytes()).all(|(k, w)| {
            let k = if k.is_ascii_alphanumeric() || k == b'_' {
                k
            } else {
                b'_'
            };
            k == w
        })
}

/// What the user wrote for one of `scrape`, `path`, `port`, under any spelling.
fn user_setting<'a>(annotations: &'a Map<String, Value>, what: &str) -> Option<&'a str> {
    let want = match what {
        "scrape" => "prometheus_io_scrape",
        "path" => "prometheus_io_path",
        _ => "prometheus_io_port",
    };
    annotations
        .iter()
        .find(|(k, _)| sanitizes_to(k, want))
        .and_then(|(_, v)| v.as_str())
}

/// Applies the merge to the pod's annotations. Returns the value for the proxy's
/// ISTIO_PROMETHEUS_ANNOTATIONS env when the user had settings of their own.
pub(crate) fn apply(
    p: &mut Value,
    mesh: &Value,
    mesh_status_port: u16,
) -> Result<Option<String>, Problem> {
    let empty = Map::new();
    let annotations = pod::annotations(p).unwrap_or(&empty);
    let scrape = user_setting(annotations, "scrape");
    if scrape == Some("false") {
        return Ok(None);
    }
    let enabled = match annotations
        .get("prometheus.istio.io/merge-metrics")
        .and_then(Value::as_str)
    {
        Some(v) => parse_bool(v).unwrap_or(true),
        None => mesh
            .get("enablePrometheusMerge")
            .and_then(Value::as_bool)
            .unwrap_or(true),
    };
    if !enabled {
        return Ok(None);
    }
    let target = mesh_status_port.to_string();
    let port = user_setting(annotations, "port");
    if port == Some(target.as_str()) {
        return Ok(None);
    }
    if let Some(port) = port {
        let ok = port
            .parse::<u16>()
            .is_ok_and(|n| n != 0 && !RESERVED.contains(&n));
        if !ok {
            return Err(Problem {
                annotation: "prometheus.io/port".into(),
                value: port.into(),
                accepted: format!(
                    "metrics merging needs the application's metrics port: a number from 1 to 65535 that is not one of the proxy's ports ({})",
                    RESERVED.map(|p| p.to_string()).join(", ")
                ),
            });
        }
    }

    // Go struct field order of istiod's PrometheusScrapeConfiguration: scrape, path, port.
    let mut saved = Map::new();
    for key in ["scrape", "path", "port"] {
        if let Some(v) = user_setting(annotations, key) {
            saved.insert(key.into(), Value::from(v));
        }
    }
    let env = (!saved.is_empty()).then(|| Value::Object(saved).to_string());

    if let Some(annotations) = pod::annotations_mut(p) {
        annotations.retain(|k, _| {
            ![
                "prometheus_io_scrape",
                "prometheus_io_port",
                "prometheus_io_path",
            ]
            .iter()
            .any(|w| sanitizes_to(k, w))
        });
        annotations.insert("prometheus.io/port".into(), Value::from(target));
        annotations.insert(
            "prometheus.io/path".into(),
            Value::from("/stats/prometheus"),
        );
        annotations.insert("prometheus.io/scrape".into(), Value::from("true"));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(annotations: Value) -> (Value, Result<Option<String>, Problem>) {
        let mut p = json!({"metadata": {"annotations": annotations}});
        let r = apply(&mut p, &json!({}), 15020);
        (p["metadata"]["annotations"].clone(), r)
    }

    #[test]
    fn user_settings_move_to_the_env_var() {
        let (a, r) = run(
            json!({"prometheus.io.scrape": "true", "prometheus.io/port": "9090", "prometheus.io/path": "/m"}),
        );
        assert_eq!(
            r.unwrap().as_deref(),
            Some(r#"{"scrape":"true","path":"/m","port":"9090"}"#)
        );
        assert_eq!(
            a,
            json!({"prometheus.io/port": "15020", "prometheus.io/path": "/stats/prometheus", "prometheus.io/scrape": "true"})
        );
    }

    #[test]
    fn scrape_false_and_merge_off_leave_the_pod_alone() {
        let (a, r) = run(json!({"prometheus.io/scrape": "false"}));
        assert_eq!(
            (a, r.unwrap()),
            (json!({"prometheus.io/scrape": "false"}), None)
        );
        let (a, r) = run(json!({"prometheus.istio.io/merge-metrics": "false"}));
        assert_eq!(
            (a, r.unwrap()),
            (json!({"prometheus.istio.io/merge-metrics": "false"}), None)
        );
    }

    #[test]
    fn reserved_ports_are_refused() {
        let (_, r) = run(json!({"prometheus.io/port": "15090"}));
        assert!(
            r.unwrap_err()
                .accepted
                .contains("not one of the proxy's ports")
        );
    }
}
