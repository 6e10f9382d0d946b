//! A config is taken only once its templates render: each one, and the default selection, for a
//! few representative pods, and the result reads back as a pod.
//!
//! A template compiles without knowing its filters or what its expressions read (`{{ x |
//! upperr }}` is a render-time error in Jinja), and a config that loads but cannot render would
//! answer every review with an error while the server reports itself ready. Rendering it here,
//! when it is loaded, refuses it instead: at start-up the server does not start, and on reload
//! the config in force stays.
//!
//! The pods cover the template branches every injection takes: a plain pod, a pod with probes
//! of every kind and the drain hook, each in classic and native sidecar mode. A template that
//! fails only for some other pod still fails only that pod's review.

use serde_json::{Value, json};

use super::{Config, ConfigError};
use crate::inject::{self, Outcome, Request, TEMPLATES_ANNOTATION};

/// Renders every template of `config` for the representative pods; the first failure names
/// the template, the pod and the error.
pub(super) fn check(config: &Config) -> Result<(), ConfigError> {
    let mut selections: Vec<Option<&str>> = vec![None];
    selections.extend(config.templates.names().iter().map(|n| Some(n.as_str())));
    for (pod_name, pod) in pods() {
        for native in [false, true] {
            for selection in &selections {
                let mut pod = pod.clone();
                if let Some(name) = selection {
                    pod["metadata"]["annotations"][TEMPLATES_ANNOTATION] = Value::from(*name);
                }
                let mode = if native { "native" } else { "classic" };
                let what = format!("{pod_name} in {mode} sidecar mode");
                render(config, &pod, native, &what, *selection)?;
            }
        }
    }
    Ok(())
}

fn render(
    config: &Config,
    pod: &Value,
    native: bool,
    what: &str,
    selection: Option<&str>,
) -> Result<(), ConfigError> {
    let req = Request {
        pod,
        namespace: Some("default"),
        workload: None,
        native_sidecars: native,
    };
    let key = |template: &str| format!("config: template {template:?}");
    let selected = || {
        selection.map_or_else(
            || format!("defaultTemplates {:?}", config.injection.default_templates),
            key,
        )
    };
    let injected = match inject::inject(config, &req) {
        Ok(Outcome::Injected(injected)) => injected,
        // The policy or the pod's annotations decided (a selector of the config's own that
        // matches the check's pod): nothing was rendered, so nothing to check.
        Ok(Outcome::Skipped(_) | Outcome::Denied(_)) => return Ok(()),
        Err(
            inject::InjectError::Render { template, message }
            | inject::InjectError::Fragment { template, message },
        ) => {
            return Err(ConfigError::Invalid {
                key: key(&template),
                line: None,
                message: format!("does not render for {what}: {message}"),
            });
        }
        Err(err) => {
            return Err(ConfigError::Invalid {
                key: selected(),
                line: None,
                message: format!("injection fails for {what}: {err}"),
            });
        }
    };
    if let Err(err) = serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(injected.pod) {
        return Err(ConfigError::Invalid {
            key: selected(),
            line: None,
            message: format!("the injected {what} does not read back as a pod: {err}"),
        });
    }
    Ok(())
}

/// The representative pods, named for messages.
fn pods() -> [(&'static str, Value); 2] {
    let labels = json!({"app": "render-check", "sidecar.istio.io/inject": "true"});
    // Every pod has its service account token mounted by the time it is reviewed.
    let token = json!({"name": "kube-api-access-rchk1", "projected": {"sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}
    ]}});
    let token_mount = json!({
        "name": "kube-api-access-rchk1",
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
        "readOnly": true
    });
    let plain = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "render-check", "namespace": "default", "labels": labels},
        "spec": {
            "containers": [{
                "name": "app",
                "image": "registry.example/app:1",
                "ports": [{"containerPort": 8080, "name": "http"}],
                "volumeMounts": [token_mount]
            }],
            "volumes": [token.clone()]
        }
    });
    let probes = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "render-check-probes",
            "namespace": "default",
            "labels": labels,
            "annotations": {
                "sidecar.istio.io/drainUntilUnready": "http://localhost:8080/ready",
                "sidecar.istio.io/drainTimeoutSeconds": "10"
            }
        },
        "spec": {
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "app",
                "image": "registry.example/app:1",
                "ports": [{"containerPort": 8080, "name": "http"}, {"containerPort": 9090}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                "livenessProbe": {"tcpSocket": {"port": 8080}},
                "startupProbe": {"grpc": {"port": 9090}},
                "lifecycle": {"preStop": {"httpGet": {"path": "/stop", "port": 8080}}},
                "volumeMounts": [token_mount]
            }],
            "volumes": [token]
        }
    });
    [
        ("a plain pod", plain),
        ("a pod with probes and a drain hook", probes),
    ]
}
