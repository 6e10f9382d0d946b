//! Prometheus metrics merge: scrapes go to the agent, which merges the app's metrics with the
//! proxy's. The user's own scrape settings are kept for the agent in ISTIO_PROMETHEUS_ANNOTATIONS:
//! `prometheus.io/scrape`, `path` and `port` (any spelling Prometheus sanitizes alike), and the
//! list of `PORT:PATH` endpoints of `prometheus.istio.io/scrape-targets` for an app that serves
//! metrics on more than one port.

use serde_json::{Map, Value};

use super::annotations::parse_bool;
use super::{Problem, pod};

/// Ports the proxy itself listens on; an app's metrics cannot be there.
const RESERVED: [u16; 10] = [
    15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090,
];

/// The annotation listing several metrics endpoints of the app.
pub(crate) const SCRAPE_TARGETS: &str = "prometheus.istio.io/scrape-targets";

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
    if let Some(port) = port
        && !metrics_port(port)
    {
        return Err(Problem {
            annotation: "prometheus.io/port".into(),
            value: port.into(),
            accepted: format!(
                "metrics merging needs the application's metrics port: {}",
                port_rule()
            ),
        });
    }
    let targets = match annotations.get(SCRAPE_TARGETS) {
        None => Vec::new(),
        Some(value) => {
            let parsed = match value.as_str() {
                Some(text) => parse_targets(text),
                None => Err("annotation values must be strings".to_string()),
            };
            parsed.map_err(|wrong| Problem {
                annotation: SCRAPE_TARGETS.into(),
                value: value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_string),
                accepted: format!(
                    "{wrong}; accepted: PORT:PATH[,PORT:PATH...], e.g. 8080:/metrics,9100:/custom-metrics, each PORT {} and each PATH starting with /",
                    port_rule()
                ),
            })?
        }
    };

    // Go struct field order of istiod's PrometheusScrapeConfiguration: scrape, path, port,
    // targets (each port, path). The first target stands for the pod's single endpoint when the
    // pod names neither a path nor a port of its own.
    let mut saved = Map::new();
    let (path, port) = match (user_setting(annotations, "path"), port, targets.first()) {
        (None, None, Some(first)) => (Some(first.path), Some(first.port)),
        (path, port, _) => (path, port),
    };
    for (key, v) in [
        ("scrape", user_setting(annotations, "scrape")),
        ("path", path),
        ("port", port),
    ] {
        if let Some(v) = v {
            saved.insert(key.into(), Value::from(v));
        }
    }
    if !targets.is_empty() {
        let list = targets
            .iter()
            .map(|t| {
                let mut m = Map::new();
                m.insert("port".into(), Value::from(t.port));
                m.insert("path".into(), Value::from(t.path));
                Value::Object(m)
            })
            .collect();
        saved.insert("targets".into(), Value::Array(list));
    }
    let env = (!saved.is_empty()).then(|| Value::Object(saved).to_string());

    if let Some(annotations) = pod::annotations_mut(p) {
        annotations.retain(|k, _| {
            k != SCRAPE_TARGETS
                && ![
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

/// An application metrics port: 1 to 65535, none of the proxy's own.
fn metrics_port(text: &str) -> bool {
    text.parse::<u16>()
        .is_ok_and(|n| n != 0 && !RESERVED.contains(&n))
}

fn port_rule() -> String {
    format!(
        "a number from 1 to 65535 that is not one of the proxy's ports ({})",
        RESERVED.map(|p| p.to_string()).join(", ")
    )
}

/// One `PORT:PATH` of `prometheus.istio.io/scrape-targets`, as written.
#[derive(Debug, PartialEq)]
struct Target<'a> {
    port: &'a str,
    path: &'a str,
}

/// Parses `PORT:PATH[,PORT:PATH...]` (spaces around an item are allowed), or says what is
/// wrong with the first item that does not read.
fn parse_targets(text: &str) -> Result<Vec<Target<'_>>, String> {
    let mut out = Vec::new();
    for (i, item) in text.split(',').enumerate() {
        let item = item.trim();
        let n = i + 1;
        if item.is_empty() {
            return Err(format!("target {n} is empty"));
        }
        let Some((port, path)) = item.split_once(':') else {
            return Err(format!("target {n} ({item:?}) is not PORT:PATH"));
        };
        if !metrics_port(port) {
            return Err(format!(
                "target {n} ({item:?}) has an invalid port {port:?}"
            ));
        }
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "target {n} ({item:?}) has an invalid path {path:?} (it must start with / and hold no spaces)"
            ));
        }
        out.push(Target { port, path });
    }
    Ok(out)
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
    fn scrape_targets_join_the_env_var_and_leave_the_pod() {
        let (a, r) = run(json!({
            "prometheus.io/scrape": "true",
            SCRAPE_TARGETS: "8080:/metrics,9100:/custom-metrics",
            "example.com/keep": "yes"}));
        assert_eq!(
            r.unwrap().as_deref(),
            Some(
                r#"{"scrape":"true","path":"/metrics","port":"8080","targets":[{"port":"8080","path":"/metrics"},{"port":"9100","path":"/custom-metrics"}]}"#
            )
        );
        assert_eq!(
            a,
            json!({"example.com/keep": "yes", "prometheus.io/port": "15020",
                "prometheus.io/path": "/stats/prometheus", "prometheus.io/scrape": "true"})
        );
    }

    #[test]
    fn the_pods_own_path_or_port_stays_beside_the_targets() {
        let (_, r) = run(json!({
            "prometheus.io/port": "9090",
            SCRAPE_TARGETS: " 8080:/metrics , 9100:/x:y "}));
        assert_eq!(
            r.unwrap().as_deref(),
            Some(
                r#"{"port":"9090","targets":[{"port":"8080","path":"/metrics"},{"port":"9100","path":"/x:y"}]}"#
            )
        );
    }

    #[test]
    fn invalid_target_lists_are_refused_naming_the_form() {
        for (text, wrong) in [
            ("", "target 1 is empty"),
            ("8080:/metrics,", "target 2 is empty"),
            ("8080", "target 1 (\"8080\") is not PORT:PATH"),
            ("http:/metrics", "invalid port \"http\""),
            ("0:/metrics", "invalid port \"0\""),
            ("70000:/metrics", "invalid port \"70000\""),
            ("15020:/stats", "invalid port \"15020\""),
            ("8080:metrics", "invalid path \"metrics\""),
            ("8080:/a b", "invalid path \"/a b\""),
            ("8080:/a\nprivileged: true", "invalid path"),
        ] {
            let (a, r) = run(json!({SCRAPE_TARGETS: text}));
            let problem = r.expect_err(text);
            assert_eq!(problem.annotation, SCRAPE_TARGETS);
            assert_eq!(problem.value, text);
            assert!(
                problem.accepted.contains(wrong),
                "{text:?}: {}",
                problem.accepted
            );
            assert!(
                problem.accepted.contains("PORT:PATH[,PORT:PATH...]"),
                "{}",
                problem.accepted
            );
            // Nothing of the pod was changed.
            assert_eq!(a, json!({SCRAPE_TARGETS: text}));
        }
    }

    #[test]
    fn targets_are_not_read_when_the_merge_does_not_apply() {
        for annotations in [
            json!({"prometheus.io/scrape": "false", SCRAPE_TARGETS: "bad"}),
            json!({"prometheus.istio.io/merge-metrics": "false", SCRAPE_TARGETS: "bad"}),
            json!({"prometheus.io/port": "15020", SCRAPE_TARGETS: "bad"}),
        ] {
            let (a, r) = run(annotations.clone());
            assert_eq!((a, r.unwrap()), (annotations, None));
        }
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
