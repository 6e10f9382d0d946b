//! The injection engine: pure, synchronous and deterministic.
//!
//! It never does I/O, never reads the clock or the environment: everything it needs arrives as
//! arguments, so the same pod and the same [`Config`] always give byte-identical output. The pod
//! is handled as raw JSON from start to end (see DESIGN.md, "Lossless"): fields this crate does not
//! know survive injection, even inside a container that moves in the list.

use serde_json::Value;

use crate::config::Config;

pub(crate) mod jobs;
mod outcome;
pub(crate) mod probes;

pub use outcome::{Denial, InjectError, Injected, Outcome, Problem, SkipReason, Workload};

/// What the caller knows about one pod beyond the pod itself.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// The pod exactly as received (`request.object` of the AdmissionReview, or the pod template
    /// of a workload for the CLI).
    pub pod: &'a Value,
    /// `request.namespace`: used when the pod's own `metadata.namespace` is empty, as it is for
    /// pods created through a controller.
    pub namespace: Option<&'a str>,
    /// The workload that owns the pod when the caller knows it (the CLI injecting a Deployment);
    /// `None` makes the engine derive it from the pod's owner references, as istiod does.
    pub workload: Option<Workload>,
    /// Cluster-wide native-sidecar mode, already resolved by the caller (`auto` is decided by the
    /// server from the cluster's nodes). The pod annotation `sidecar.istio.io/nativeSidecar`
    /// still overrides it.
    pub native_sidecars: bool,
}

/// Injects the sidecar into `req.pod` with the given configuration snapshot.
///
/// `Ok(Outcome::Skipped)` and `Ok(Outcome::Denied)` are ordinary answers; `Err` means the
/// injector itself failed (a template that does not render, a pod that is not an object) and the
/// caller must not pretend the pod was handled.
pub fn inject(config: &Config, req: &Request<'_>) -> Result<Outcome, InjectError> {
    let _ = (config, req);
    Err(InjectError::Pod("engine not built yet".into()))
}

/// The RFC 6902 patch that turns `before` into `after`: a plain structural diff of the raw
/// objects, so applying it to the object the API server sent gives exactly `after`.
pub fn patch(before: &Value, after: &Value) -> json_patch::Patch {
    json_patch::diff(before, after)
}
