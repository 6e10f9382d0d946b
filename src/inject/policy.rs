//! Whether a pod is injected at all: istiod's `injectRequired`, in its order.

use serde_json::Value;

use super::SkipReason;
use super::pod;
use crate::config::{Injection, Policy};

/// Namespaces istiod never injects into, whatever the webhook selectors say.
pub const IGNORED_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

const INJECT: &str = "sidecar.istio.io/inject";

/// `None` when the pod is to be injected, else why not.
pub(crate) fn skip_reason(
    injection: &Injection,
    pod: &Value,
    namespace: &str,
) -> Option<SkipReason> {
    if let Some(name) = pod::repeated_container_name(pod) {
        return Some(SkipReason::RepeatedContainerName(name.to_string()));
    }
    if pod::spec(pod)
        .and_then(|s| s.get("hostNetwork"))
        .and_then(Value::as_bool)
        == Some(true)
    {
        return Some(SkipReason::HostNetwork);
    }
    if IGNORED_NAMESPACES.contains(&namespace) {
        return Some(SkipReason::IgnoredNamespace(namespace.to_string()));
    }

    // The label wins over the (deprecated) annotation. Only the exact strings "true" and
    // "false" decide; anything else (empty included) falls back to selectors and policy.
    let (explicit, from_label) = match pod::label(pod, INJECT) {
        Some(v) => (v, true),
        None => (pod::annotation(pod, INJECT).unwrap_or(""), false),
    };
    match explicit {
        "true" => return None,
        "false" if from_label => return Some(SkipReason::DisabledByLabel),
        "false" => return Some(SkipReason::DisabledByAnnotation),
        _ => {}
    }

    let labels = pod::labels(pod);
    if injection
        .never_inject_selector
        .iter()
        .any(|s| s.matches(labels))
    {
        return Some(SkipReason::NeverInjectSelector);
    }
    if injection
        .always_inject_selector
        .iter()
        .any(|s| s.matches(labels))
    {
        return None;
    }
    match injection.policy {
        Policy::Enabled => None,
        Policy::Disabled => Some(SkipReason::PolicyDisabled),
    }
}

/// A value of the inject label or annotation that decides nothing (neither "true" nor "false"
/// nor empty): istiod falls back to the policy silently; we say so.
pub(crate) fn ambiguous_inject_value(pod: &Value) -> Option<(&'static str, String)> {
    for (kind, value) in [
        ("label", pod::label(pod, INJECT)),
        ("annotation", pod::annotation(pod, INJECT)),
    ] {
        if let Some(v) = value {
            return match v {
                "true" | "false" | "" => None,
                other => Some((kind, other.to_string())),
            };
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn injection(extra: &str) -> Injection {
        Injection::parse(&format!("templates: {{sidecar: x}}\n{extra}")).unwrap()
    }

    fn pod(labels: Value, annotations: Value, host_network: bool) -> Value {
        json!({"metadata": {"labels": labels, "annotations": annotations},
               "spec": {"hostNetwork": host_network, "containers": []}})
    }

    #[test]
    fn repeated_container_names_skip_before_anything_else() {
        let enabled = injection("");
        let mut p = pod(json!({INJECT: "true"}), json!({}), true);
        p["spec"]["initContainers"] = json!([{"name": "setup"}, {"name": "istio-proxy"}]);
        p["spec"]["containers"] = json!([{"name": "app"}, {"name": "istio-proxy"}]);
        assert_eq!(
            skip_reason(&enabled, &p, "default"),
            Some(SkipReason::RepeatedContainerName("istio-proxy".into()))
        );
        // Unnamed containers and distinct names are not repeats.
        p["spec"]["initContainers"] = json!([{"image": "a"}, {"image": "b"}]);
        assert_eq!(
            skip_reason(&enabled, &p, "default"),
            Some(SkipReason::HostNetwork)
        );
    }

    #[test]
    fn order_of_the_rules() {
        let enabled = injection("");
        let p = pod(json!({INJECT: "true"}), json!({}), true);
        assert_eq!(
            skip_reason(&enabled, &p, "default"),
            Some(SkipReason::HostNetwork)
        );
        let p = pod(json!({INJECT: "true"}), json!({}), false);
        assert_eq!(
            skip_reason(&enabled, &p, "kube-system"),
            Some(SkipReason::IgnoredNamespace("kube-system".into()))
        );
        // label beats annotation
        let p = pod(json!({INJECT: "true"}), json!({INJECT: "false"}), false);
        assert_eq!(skip_reason(&enabled, &p, "default"), None);
        let p = pod(json!({INJECT: "false"}), json!({INJECT: "true"}), false);
        assert_eq!(
            skip_reason(&enabled, &p, "default"),
            Some(SkipReason::DisabledByLabel)
        );
        let p = pod(json!({}), json!({INJECT: "false"}), false);
        assert_eq!(
            skip_reason(&enabled, &p, "default"),
            Some(SkipReason::DisabledByAnnotation)
        );
        // "False" is not "false": falls back to the policy, as istiod does.
        let p = pod(json!({INJECT: "False"}), json!({}), false);
        assert_eq!(skip_reason(&enabled, &p, "default"), None);
        assert_eq!(ambiguous_inject_value(&p), Some(("label", "False".into())));
    }

    #[test]
    fn selectors_then_policy() {
        let disabled = injection(
            "policy: disabled\nneverInjectSelector: [{matchLabels: {app: db}}]\nalwaysInjectSelector: [{matchLabels: {mesh: yes}}, {matchLabels: {app: db}}]",
        );
        let p = pod(json!({"app": "db"}), json!({}), false);
        assert_eq!(
            skip_reason(&disabled, &p, "default"),
            Some(SkipReason::NeverInjectSelector)
        );
        let p = pod(json!({"mesh": "yes"}), json!({}), false);
        assert_eq!(skip_reason(&disabled, &p, "default"), None);
        let p = pod(json!({}), json!({}), false);
        assert_eq!(
            skip_reason(&disabled, &p, "default"),
            Some(SkipReason::PolicyDisabled)
        );
        let p = pod(json!({}), json!({INJECT: "true"}), false);
        assert_eq!(skip_reason(&disabled, &p, "default"), None);
    }
}
