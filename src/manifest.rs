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

/// What the injector decides for one workload: the engine's own answer (the same call the
/// webhook makes), or why the engine could not be asked.
#[derive(Debug)]
pub enum Decision {
    /// Injected: the workload with its pod template injected, and the engine's warnings.
    Injected {
        doc: Value,
        warnings: Vec<String>,
    },
    Skipped(SkipReason),
    Denied(Denial),
    /// The injector itself failed (the webhook answers HTTP 500, so `failurePolicy` decides).
    Failed(InjectError),
    /// A workload kind without its pod template (`spec.template` missing or not a mapping).
    NoPodTemplate {
        field: String,
    },
}

/// One workload of a manifest and what the injector decides for it.
#[derive(Debug)]
pub struct Decided {
    /// `Kind/namespace/name`.
    pub object: String,
    pub kind: String,
    /// The namespace the pod would be created in (`default` when the manifest has none).
    pub namespace: String,
    pub decision: Decision,
}

impl Decided {
    /// The pod template after injection, when it was injected.
    pub fn injected_template(&self) -> Option<&Value> {
        let Decision::Injected { doc, .. } = &self.decision else {
            return None;
        };
        let (path, _) = pod_template_location(&self.kind)?;
        if path.is_empty() {
            Some(doc)
        } else {
            doc.pointer(path)
        }
    }
}

/// Why a workload could not be injected, for messages.
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
    #[error("{object}: has no pod template at {field}")]
    Shape { object: String, field: String },
}

impl Decided {
    /// The error `inject` stops on, if any.
    pub fn error(&self) -> Option<DocumentError> {
        let object = self.object.clone();
        match &self.decision {
            Decision::Denied(denial) => Some(DocumentError::Denied {
                object,
                denial: denial.clone(),
            }),
            Decision::Failed(source) => Some(DocumentError::Engine {
                object,
                source: source.clone(),
            }),
            Decision::NoPodTemplate { field } => Some(DocumentError::Shape {
                object,
                field: field.clone(),
            }),
            Decision::Injected { .. } | Decision::Skipped(_) => None,
        }
    }
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

/// Whether `doc` is a list of objects (`kind: List`, `DeploymentList`, ...) whose items are
/// injected one by one.
pub fn is_list(doc: &Value) -> bool {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    kind == "List" || kind.ends_with("List") && doc.get("items").is_some_and(Value::is_array)
}

/// Runs the engine on the pod template of one workload document (not a list): what the
/// webhook would answer for its pods. `None` for kinds that hold no pod.
pub fn decide(config: &Config, doc: &Value, native_sidecars: bool) -> Option<Decided> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    let (path, prefix) = pod_template_location(kind)?;
    let object = describe(doc);
    let get = |p: &str| {
        doc.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let namespace = match get("/metadata/namespace") {
        ns if ns.is_empty() => "default".to_string(),
        ns => ns,
    };
    let decided = |decision| Decided {
        object: object.clone(),
        kind: kind.to_string(),
        namespace: namespace.clone(),
        decision,
    };
    let template = if path.is_empty() {
        Some(doc)
    } else {
        doc.pointer(path)
    };
    let Some(template) = template.filter(|t| t.is_object()) else {
        return Some(decided(Decision::NoPodTemplate {
            field: prefix.trim_end_matches('.').to_string(),
        }));
    };
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
        namespace: Some(&namespace),
        workload,
        native_sidecars,
    };
    let decision = match inject::inject(config, &req) {
        Ok(Outcome::Injected(injected)) => {
            let mut out = doc.clone();
            if path.is_empty() {
                out = injected.pod;
            } else if let Some(slot) = out.pointer_mut(path) {
                *slot = injected.pod;
            }
            Decision::Injected {
                doc: out,
                warnings: injected.warnings,
            }
        }
        Ok(Outcome::Skipped(reason)) => Decision::Skipped(reason),
        Ok(Outcome::Denied(denial)) => Decision::Denied(denial),
        Err(source) => Decision::Failed(source),
    };
    Some(decided(decision))
}

/// Injects every workload of one document (recursing into lists), recording each decision
/// in `decided`; other kinds, and skipped workloads, stay as they are. `Err` when a workload
/// is refused or cannot be injected.
pub fn inject_document(
    config: &Config,
    doc: &Value,
    native_sidecars: bool,
    decided: &mut Vec<Decided>,
) -> Result<Value, DocumentError> {
    if is_list(doc) {
        let mut out = doc.clone();
        if let Some(items) = out.get_mut("items").and_then(Value::as_array_mut) {
            for item in items.iter_mut() {
                *item = inject_document(config, item, native_sidecars, decided)?;
            }
        }
        return Ok(out);
    }
    let Some(d) = decide(config, doc, native_sidecars) else {
        return Ok(doc.clone());
    };
    if let Some(err) = d.error() {
        decided.push(d);
        return Err(err);
    }
    let out = match &d.decision {
        Decision::Injected { doc: injected, .. } => injected.clone(),
        _ => doc.clone(),
    };
    decided.push(d);
    Ok(out)
}
