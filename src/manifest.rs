//! Manifests: the workloads in a stream of Kubernetes documents, and the pod template each holds.
//! Used by `sidecar-injector inject` to run the engine over what users commit.

use serde_json::Value;

use crate::config::Config;
use crate::inject::{self, Denial, InjectError, Outcome, Request, SkipReason, Workload};

/// Where a workload kind keeps its pod template: as a JSON pointer, and as the field-path prefix
/// that findings report (`spec.template.`). `None` for kinds that hold no pod.
pub fn pod_template_location(kind: &str) -> Option<(&'static str, &'static str)> {
    match kind {
        "Pod" => Some(("", "")),
        "Deployment"
        | "ReplicaSet"
        | "ReplicationController"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "DeploymentConfig" => Some(("/spec/template", "spec.template.")),
        "CronJob" => Some((
            "/spec/jobTemplate/spec/template",
            "spec.jobTemplate.spec.template.",
        )),
        _ => None,
    }
}

/// What happened to one workload of a document.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Injected {
        object: String,
        warnings: Vec<String>,
    },
    Skipped {
        object: String,
        reason: SkipReason,
    },
}

/// Why a document could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("{object}: {denial}")]
    Denied { object: String, denial: Denial },
    #[error("{object}: {source}")]
    Engine {
        object: String,
        #[source]
        source: InjectError,
    },
    #[error("{object}: {message}")]
    Shape { object: String, message: String },
}

/// `Kind/namespace/name` for messages.
pub fn describe(doc: &Value) -> String {
    let get = |p: &str| doc.pointer(p).and_then(Value::as_str).unwrap_or("");
    let kind = get("/kind");
    let kind = if kind.is_empty() { "object" } else { kind };
    let name = match get("/metadata/name") {
        "" => get("/metadata/generateName"),
        n => n,
    };
    match get("/metadata/namespace") {
        "" => format!("{kind}/{name}"),
        ns => format!("{kind}/{ns}/{name}"),
    }
}

/// Injects every workload of one document (recursing into `kind: List`); other kinds pass
/// through unchanged.
pub fn inject_document(
    config: &Config,
    doc: &Value,
    native_sidecars: bool,
    events: &mut Vec<Event>,
) -> Result<Value, DocumentError> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind == "List" || kind.ends_with("List") && doc.get("items").is_some_and(Value::is_array) {
        let mut out = doc.clone();
        if let Some(items) = out.get_mut("items").and_then(Value::as_array_mut) {
            for item in items.iter_mut() {
                *item = inject_document(config, item, native_sidecars, events)?;
            }
        }
        return Ok(out);
    }
    let Some((path, _)) = pod_template_location(kind) else {
        return Ok(doc.clone());
    };
    let object = describe(doc);
    let template = if path.is_empty() {
        Some(doc)
    } else {
        doc.pointer(path)
    };
    let Some(template) = template.filter(|t| t.is_object()) else {
        return Err(DocumentError::Shape {
            object,
            message: format!(
                "has no pod template at {}",
                path.replace('/', ".").trim_start_matches('.')
            ),
        });
    };
    let get = |p: &str| {
        doc.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let namespace = get("/metadata/namespace");
    // A Pod's workload is found from its owner references, as the webhook finds it (and as
    // `istioctl kube-inject` does); a workload's pod template belongs to the workload.
    let workload = (kind != "Pod").then(|| Workload {
        kind: kind.to_string(),
        name: match get("/metadata/name") {
            n if n.is_empty() => get("/metadata/generateName")
                .trim_end_matches('-')
                .to_string(),
            n => n,
        },
        api_version: get("/apiVersion"),
    });
    let req = Request {
        pod: template,
        namespace: Some(if namespace.is_empty() {
            "default"
        } else {
            &namespace
        }),
        workload,
        native_sidecars,
    };
    match inject::inject(config, &req) {
        Ok(Outcome::Injected(injected)) => {
            events.push(Event::Injected {
                object,
                warnings: injected.warnings,
            });
            let mut out = doc.clone();
            if path.is_empty() {
                out = injected.pod;
            } else if let Some(slot) = out.pointer_mut(path) {
                *slot = injected.pod;
            }
            Ok(out)
        }
        Ok(Outcome::Skipped(reason)) => {
            events.push(Event::Skipped { object, reason });
            Ok(doc.clone())
        }
        Ok(Outcome::Denied(denial)) => Err(DocumentError::Denied { object, denial }),
        Err(source) => Err(DocumentError::Engine { object, source }),
    }
}
