//! Which injector revision a pod's namespace and labels select, as the webhook configuration
//! selects (the chart's `webhook.yaml`, the same rows as istiod's):
//!
//! | namespace labels | pod labels | revision |
//! | --- | --- | --- |
//! | `istio-injection=enabled` | `sidecar.istio.io/inject` not `false` | `default` |
//! | `istio-injection` = anything else | | none |
//! | `istio.io/rev=R` (no `istio-injection`) | `sidecar.istio.io/inject` not `false` | `R` |
//! | neither | `istio.io/rev=R`, inject not `false` | `R` |
//! | neither | `sidecar.istio.io/inject=true`, no `istio.io/rev` | `default` |
//!
//! `istio-injection` wins over `istio.io/rev`, and a namespace label wins over a pod label.

use serde_json::{Map, Value};

/// The revision a namespace labelled only `istio-injection=enabled` selects.
pub const DEFAULT_REVISION: &str = "default";

/// What asked for injection, for the words of a report.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Selected {
    /// The revision selected (`default` for the unnamed one).
    pub revision: String,
    /// The label that selects it, as `key=value`, and whether it is the namespace's.
    pub by: String,
    pub by_namespace: bool,
}

fn get<'a>(labels: Option<&'a Map<String, Value>>, key: &str) -> Option<&'a str> {
    labels?.get(key)?.as_str()
}

/// The revision that injects a pod with these labels in a namespace with these labels; `None`
/// when no webhook row matches (the pod is created without injection).
pub fn selected(
    namespace_labels: Option<&Map<String, Value>>,
    pod_labels: Option<&Map<String, Value>>,
) -> Option<Selected> {
    let pod_inject = get(pod_labels, "sidecar.istio.io/inject");
    if pod_inject == Some("false") {
        return None;
    }
    if let Some(v) = get(namespace_labels, "istio-injection") {
        return (v == "enabled").then(|| Selected {
            revision: DEFAULT_REVISION.into(),
            by: format!("istio-injection={v}"),
            by_namespace: true,
        });
    }
    if let Some(rev) = get(namespace_labels, "istio.io/rev") {
        return Some(Selected {
            revision: rev.into(),
            by: format!("istio.io/rev={rev}"),
            by_namespace: true,
        });
    }
    if let Some(rev) = get(pod_labels, "istio.io/rev") {
        return Some(Selected {
            revision: rev.into(),
            by: format!("istio.io/rev={rev}"),
            by_namespace: false,
        });
    }
    (pod_inject == Some("true")).then(|| Selected {
        revision: DEFAULT_REVISION.into(),
        by: "sidecar.istio.io/inject=true".into(),
        by_namespace: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(ns: Value, pod: Value) -> Option<String> {
        selected(ns.as_object(), pod.as_object()).map(|s| s.revision)
    }

    #[test]
    fn the_webhook_rows() {
        let none = json!({});
        assert_eq!(
            sel(json!({"istio-injection": "enabled"}), none.clone()),
            Some("default".into())
        );
        assert_eq!(
            sel(json!({"istio-injection": "disabled"}), none.clone()),
            None
        );
        // istio-injection wins over istio.io/rev, and disabled selects nothing at all.
        assert_eq!(
            sel(
                json!({"istio-injection": "disabled", "istio.io/rev": "canary"}),
                json!({"sidecar.istio.io/inject": "true"})
            ),
            None
        );
        assert_eq!(
            sel(json!({"istio.io/rev": "canary"}), none.clone()),
            Some("canary".into())
        );
        assert_eq!(
            sel(
                json!({"istio.io/rev": "canary"}),
                json!({"istio.io/rev": "stable"})
            ),
            Some("canary".into()),
            "the namespace label wins"
        );
        assert_eq!(
            sel(none.clone(), json!({"istio.io/rev": "stable"})),
            Some("stable".into())
        );
        assert_eq!(
            sel(none.clone(), json!({"sidecar.istio.io/inject": "true"})),
            Some("default".into())
        );
        assert_eq!(sel(none.clone(), none.clone()), None);
        assert_eq!(
            sel(
                json!({"istio-injection": "enabled"}),
                json!({"sidecar.istio.io/inject": "false"})
            ),
            None
        );
    }
}
