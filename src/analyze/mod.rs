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

mod fields;
mod finding;
mod layout;
mod pod;
mod protocol;
mod service;
mod workloads;

pub use finding::{
    APP_RUNS_AS_PROXY_UID, APP_STARTS_BEFORE_PROXY, DISTROLESS_DRAIN_HOOK, EXEC_PROBE_NETWORK,
    HEADLESS_STATEFULSET, INIT_CONTAINER_NETWORK, JOB_NEVER_COMPLETES, PORT_NAME_PROTOCOL,
    PORT_PROTOCOL_MISMATCH, RESERVED_PORT,
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
pub fn analyze_documents(docs: &[Value], opts: &AnalyzeOptions) -> Vec<Finding> {
    let objects = workloads::collect(docs);
    let mut findings = Vec::new();
    for object in &objects {
        match object {
            workloads::Object::Workload(w) => {
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
            workloads::Object::Service(s) => {
                findings.extend(service::check(s, &objects));
            }
        }
    }
    findings
}
