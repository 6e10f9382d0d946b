//! What the engine answers: skipped, injected, or denied, plus the engine's own failures.

use std::fmt;

use serde_json::Value;

/// The answer for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Not injected, for a reason that is not an error: the pod is admitted unchanged.
    Skipped(SkipReason),
    /// Injected: the pod after injection, plus warnings for the user who created it.
    Injected(Injected),
    /// An explicit, explained refusal: invalid injection annotations, unknown template.
    Denied(Denial),
}

/// An injected pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Injected {
    /// The whole pod after injection (raw JSON, nothing of the input lost).
    pub pod: Value,
    /// Short, actionable warnings (AdmissionResponse `warnings`, printed by kubectl).
    pub warnings: Vec<String>,
    /// The pod already carried an injection (`sidecar.istio.io/status`): a reinvocation review,
    /// or a pod created from an injected manifest.
    pub reinjection: bool,
    /// A template read or wrote a string holding the service-account token volume's prefix
    /// (`kube-api-access-`): its output may depend on that name (see `crate::replicas`).
    pub templates_touched_token: bool,
}

/// Why a pod was not injected. Typed so that metrics, logs and audit annotations agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// `spec.hostNetwork: true`: the iptables redirect would capture the node's traffic.
    HostNetwork,
    /// The pod's namespace is one istiod never injects into.
    IgnoredNamespace(String),
    /// The label `sidecar.istio.io/inject` is `"false"`.
    DisabledByLabel,
    /// The annotation `sidecar.istio.io/inject` is `"false"` (and no label decided).
    DisabledByAnnotation,
    /// The pod's labels match one of the config's `neverInjectSelector` entries.
    NeverInjectSelector,
    /// `policy: disabled` and nothing asked for injection explicitly.
    PolicyDisabled,
    /// Two containers (init or not) share this name. The API server rejects such a pod, and
    /// merging by name cannot tell which one a rendered container belongs to, so the pod is left
    /// as it came for the API server's own validation to explain.
    RepeatedContainerName(String),
}

impl SkipReason {
    /// A stable, low-cardinality name for metric labels and audit annotations.
    pub fn label(&self) -> &'static str {
        match self {
            SkipReason::HostNetwork => "host_network",
            SkipReason::IgnoredNamespace(_) => "ignored_namespace",
            SkipReason::DisabledByLabel => "disabled_by_label",
            SkipReason::DisabledByAnnotation => "disabled_by_annotation",
            SkipReason::NeverInjectSelector => "never_inject_selector",
            SkipReason::PolicyDisabled => "policy_disabled",
            SkipReason::RepeatedContainerName(_) => "repeated_container_name",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::HostNetwork => f.write_str("the pod uses host networking"),
            SkipReason::IgnoredNamespace(ns) => {
                write!(f, "namespace {ns:?} is never injected")
            }
            SkipReason::DisabledByLabel => {
                f.write_str("the label sidecar.istio.io/inject is \"false\"")
            }
            SkipReason::DisabledByAnnotation => {
                f.write_str("the annotation sidecar.istio.io/inject is \"false\"")
            }
            SkipReason::NeverInjectSelector => {
                f.write_str("the pod's labels match the config's neverInjectSelector")
            }
            SkipReason::PolicyDisabled => f.write_str(
                "the injection policy is disabled and the pod does not ask for injection",
            ),
            SkipReason::RepeatedContainerName(name) => write!(
                f,
                "the container name {name:?} is used twice (containers and initContainers share one set of names), which the API server rejects"
            ),
        }
    }
}

/// One thing wrong with a pod's injection annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The annotation (or setting) at fault.
    pub annotation: String,
    /// The value found.
    pub value: String,
    /// What went wrong and what is accepted.
    pub accepted: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid value {:?} for annotation {:?}: {}",
            self.value, self.annotation, self.accepted
        )
    }
}

/// A refusal: every problem found, in one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub problems: Vec<Problem>,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sidecar injection refused: ")?;
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// The workload a pod belongs to, as istiod names it in `ISTIO_META_WORKLOAD_NAME` and
/// `ISTIO_META_OWNER`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Workload {
    /// `Deployment`, `CronJob`, `Pod`, ...
    pub kind: String,
    pub name: String,
    /// `apps/v1`, `batch/v1`, `v1`, ...
    pub api_version: String,
}

/// A failure of the injector itself, not of the user's pod annotations.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InjectError {
    /// The object is not a pod we can read (not a JSON object, `spec.containers` not a list).
    #[error("the pod cannot be read: {0}")]
    Pod(String),
    /// A template failed to render: an operator's template bug.
    #[error("template {template:?} failed to render: {message}")]
    Render { template: String, message: String },
    /// A template rendered something that is not a YAML mapping of pod fields.
    #[error("template {template:?} rendered invalid YAML: {message}")]
    Fragment { template: String, message: String },
}
