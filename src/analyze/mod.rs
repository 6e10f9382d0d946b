//! Pitfall analysis of pods, workloads and Services: the problems a sidecar mesh causes that
//! can be seen before they bite (startup races, Jobs that never finish, UID 1337, reserved
//! ports, init containers under the redirect, port names that defeat protocol selection...).
//!
//! Pure functions over raw JSON, like the injection engine: no I/O, deterministic, and a
//! malformed object yields fewer findings rather than an error. Finding ids are listed in
//! [`CATALOGUE`] and documented with examples and fixes in `docs/findings.md`.
//!
//! - [`analyze_pod`] is for admission: one pod, before or after injection.
//! - [`analyze_documents`] is for manifests: workloads of every kind, Services, and the checks
//!   that need both (a Service port against the container port it targets).

use serde_json::Value;

use crate::config::Config;
use crate::inject::SkipReason;
use crate::manifest;

mod fields;
mod finding;
mod layout;
mod pod;
mod protocol;
mod service;
mod workloads;

pub use finding::{
    APP_RUNS_AS_PROXY_UID, APP_STARTS_BEFORE_PROXY, DISTROLESS_DRAIN_HOOK, EXEC_PROBE_NETWORK,
    HEADLESS_STATEFULSET, INIT_CONTAINER_NETWORK, INJECTION_REFUSED, JOB_NEVER_COMPLETES,
    NO_POD_TEMPLATE, NOT_INJECTED, PORT_NAME_PROTOCOL, PORT_PROTOCOL_MISMATCH, RESERVED_PORT,
};
pub use finding::{CATALOGUE, Finding, FindingKind, Severity, WARNING_TEXT_MAX, kind};

/// The pod annotation that asks for the proxy's preStop drain hook (its value is the app URL to
/// wait on). The hook is a shell script, so it cannot run in the distroless proxy image.
pub use crate::inject::annotations::DRAIN_URL as DRAIN_HOOK_ANNOTATION;

/// Istio's default proxy UID and GID (`ProxyUID`).
pub const DEFAULT_PROXY_UID: i64 = 1337;

/// What the injector knows about a pod beyond the pod itself. Pod annotations
/// (`sidecar.istio.io/nativeSidecar`, `proxy.istio.io/config`, ...) still override these, as they
/// do for injection; an already-injected pod is judged by what was injected.
#[derive(Debug, Clone)]
pub struct PodContext {
    /// Cluster-wide native-sidecar mode, already resolved (`auto` decided by the caller).
    pub native_sidecars: bool,
    /// Mesh-wide `holdApplicationUntilProxyStarts`.
    pub hold_application: bool,
    /// istio-cni installs the redirect instead of the `istio-init` container.
    pub cni: bool,
    /// The proxy image variant is distroless (`global.variant` or the mesh's `image.imageType`).
    pub distroless_proxy: bool,
    /// The UID the redirect exempts ([`DEFAULT_PROXY_UID`] unless the platform changes it).
    pub proxy_uid: i64,
    /// Kind of the workload owning the pod (`Job`, `CronJob`, `Deployment`...); `None` reads the
    /// pod's controller owner reference.
    pub owner_kind: Option<String>,
    /// Namespace of the request, for pods whose metadata has none yet.
    pub namespace: Option<String>,
}

impl Default for PodContext {
    fn default() -> Self {
        PodContext {
            native_sidecars: false,
            hold_application: false,
            cni: false,
            distroless_proxy: false,
            proxy_uid: DEFAULT_PROXY_UID,
            owner_kind: None,
            namespace: None,
        }
    }
}

/// Findings for one pod (the `request.object` of an admission review), with fields relative to
/// the pod (`spec.containers[0]...`) and the object named `Pod/<namespace>/<name>`.
pub fn analyze_pod(pod: &Value, ctx: &PodContext) -> Vec<Finding> {
    let object = fields::object_name("Pod", pod, ctx.namespace.as_deref());
    pod::check(pod, ctx, &object, "")
}

/// How manifests are judged: the same knowledge as [`PodContext`], for every workload.
#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    pub native_sidecars: bool,
    pub hold_application: bool,
    pub cni: bool,
    pub distroless_proxy: bool,
    pub proxy_uid: i64,
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        AnalyzeOptions {
            native_sidecars: false,
            hold_application: false,
            cni: false,
            distroless_proxy: false,
            proxy_uid: DEFAULT_PROXY_UID,
        }
    }
}

/// Findings for a set of manifests: every pod template (Pod, Deployment, ReplicaSet,
/// ReplicationController, StatefulSet, DaemonSet, Job, CronJob, DeploymentConfig, and the items
/// of `List` kinds), every Service, and the Service-to-workload checks by label selector within
/// a namespace. Findings come in document order; other kinds are ignored.
///
/// Each workload first goes through the injector's own decision ([`manifest::decide`], the
/// engine call the webhook and `inject` make, with `config`): a workload the injector skips
/// gets one `not-injected` info finding saying why and nothing else, one it refuses an
/// `injection-refused` error with the webhook's message, one without a pod template a
/// `no-pod-template` error. Only injected workloads are checked for sidecar pitfalls.
pub fn analyze_documents(docs: &[Value], config: &Config, opts: &AnalyzeOptions) -> Vec<Finding> {
    let objects = workloads::collect(docs);
    let mut findings = Vec::new();
    for object in &objects {
        match object {
            workloads::Object::Workload(w) => {
                let Some(decided) = manifest::decide(config, w.doc, opts.native_sidecars) else {
                    continue;
                };
                if let Some(finding) = decision_finding(&decided, &w.name, w.prefix) {
                    findings.push(finding);
                    continue;
                }
                let ctx = PodContext {
                    native_sidecars: opts.native_sidecars,
                    hold_application: opts.hold_application,
                    cni: opts.cni,
                    distroless_proxy: opts.distroless_proxy,
                    proxy_uid: opts.proxy_uid,
                    owner_kind: Some(w.kind.to_string()),
                    namespace: None,
                };
                findings.extend(pod::check(w.template, &ctx, &w.name, w.prefix));
            }
            workloads::Object::NoTemplate(doc) => {
                if let Some(decided) = manifest::decide(config, doc, opts.native_sidecars) {
                    let kind = decided.kind.clone();
                    let name = fields::object_name(&kind, doc, None);
                    findings.extend(decision_finding(&decided, &name, ""));
                }
            }
            workloads::Object::Service(s) => {
                findings.extend(service::check(s, &objects));
            }
        }
    }
    findings
}

/// The one finding for a workload the injector does not inject; `None` when it injects.
fn decision_finding(decided: &manifest::Decided, object: &str, prefix: &str) -> Option<Finding> {
    let finding = |id: &'static str, severity, field: String, message: String, fix: &str| Finding {
        id,
        severity,
        object: object.to_string(),
        field,
        message,
        fix: fix.to_string(),
    };
    Some(match &decided.decision {
        manifest::Decision::Injected { .. } => return None,
        manifest::Decision::Skipped(reason) => {
            let field = match reason {
                SkipReason::HostNetwork => format!("{prefix}spec.hostNetwork"),
                SkipReason::DisabledByLabel => format!("{prefix}metadata.labels"),
                SkipReason::DisabledByAnnotation => format!("{prefix}metadata.annotations"),
                SkipReason::NeverInjectSelector => format!("{prefix}metadata.labels"),
                SkipReason::RepeatedContainerName(_) => format!("{prefix}spec"),
                SkipReason::IgnoredNamespace(_) => "metadata.namespace".to_string(),
                SkipReason::PolicyDisabled => prefix.trim_end_matches('.').to_string(),
            };
            finding(
                NOT_INJECTED,
                Severity::Info,
                field,
                format!("Not injected: {reason}; no sidecar findings apply."),
                "Nothing to do if this is intended; otherwise remove what keeps the injector away.",
            )
        }
        manifest::Decision::Denied(denial) => finding(
            INJECTION_REFUSED,
            Severity::Error,
            format!("{prefix}metadata.annotations"),
            format!("The webhook refuses this workload's pods with: {denial}."),
            "Correct the annotation values as the message says.",
        ),
        manifest::Decision::Failed(err) => finding(
            INJECTION_REFUSED,
            Severity::Error,
            prefix.trim_end_matches('.').to_string(),
            format!("The injector cannot inject this workload's pods: {err}."),
            "Correct the pod template or the injection templates as the message says.",
        ),
        manifest::Decision::NoPodTemplate { field } => finding(
            NO_POD_TEMPLATE,
            Severity::Error,
            field.clone(),
            format!(
                "{} has no pod template at {field}, so it creates no pods.",
                decided.kind
            ),
            "Add the pod template (metadata and spec) the workload is meant to run.",
        ),
    })
}

impl PodContext {
    /// What the configuration says about every pod: the mesh-wide hold setting, istio-cni and
    /// the distroless proxy image. The webhook and `inject` judge injected pods with this.
    pub fn for_config(config: &Config, native_sidecars: bool, namespace: Option<String>) -> Self {
        let flag = |doc: &Value, pointer: &str| doc.pointer(pointer).and_then(Value::as_bool);
        PodContext {
            native_sidecars,
            hold_application: flag(
                config.mesh(),
                "/defaultConfig/holdApplicationUntilProxyStarts",
            )
            .unwrap_or(false),
            cni: flag(config.values(), "/istio_cni/enabled").unwrap_or(false),
            distroless_proxy: config
                .values()
                .pointer("/global/variant")
                .and_then(Value::as_str)
                == Some("distroless"),
            namespace,
            ..PodContext::default()
        }
    }
}

/// The findings the webhook returns as warnings for a pod it injected (`inject` prints the
/// same): those of warning severity or worse that the config leaves on. A Job the engine
/// already warned about is not reported a second time as `job-never-completes`.
pub fn injected_pod_warnings(
    config: &Config,
    injected: &Value,
    ctx: &PodContext,
    engine_warnings: &[String],
) -> Vec<Finding> {
    let job_warned = engine_warnings
        .iter()
        .any(|w| crate::inject::jobs::is_job_warning(w));
    analyze_pod(injected, ctx)
        .into_iter()
        // Info findings are for `analyze`; admission warnings are kept for what is likely to break.
        .filter(|f| f.severity >= Severity::Warning)
        .filter(|f| config.finding_enabled(f.id))
        .filter(|f| !(job_warned && f.id == JOB_NEVER_COMPLETES))
        .collect()
}
