//! Data-plane upgrades: which running pods carry a sidecar other than the one the injector would
//! inject now, and why; and the pure parts of restarting their workloads at a safe pace.
//!
//! Everything here is pure (no I/O, no clock): the cluster code (`cluster::upgrade`) lists pods
//! and workloads and feeds them in, and the commands print what comes out.
//!
//! - [`assess`]: one pod, against the current configuration ([`Target`]).
//! - [`compare`]: what the engine writes, against the live pod.
//! - [`selection`]: which revision a namespace and pod labels select.
//! - [`owners`]: the workload a pod belongs to, and what restarts it.
//! - [`report`]: pods grouped by workload, as text or JSON.
//! - [`pace`]: the cluster-wide pod budget of a rollout; [`rollout`]: the restart patch and
//!   kubectl's rollout status.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::config::Config;
use crate::inject::{self, InjectError, Outcome, Request, TEMPLATES_ANNOTATION};

pub mod compare;
pub mod owners;
pub mod pace;
pub mod reason;
pub mod report;
pub mod rollout;
pub mod selection;

pub use compare::{Difference, Status};
pub use reason::{Change, Kind, Probers, Reason};
pub use selection::Selected;

/// The injector a pod is judged against.
#[derive(Debug)]
pub struct Target<'a> {
    pub config: &'a Config,
    /// Whether a pod created now gets a native sidecar (the webhook's cluster-wide decision:
    /// `true`, `false`, or `auto` already resolved from the nodes).
    pub native_sidecars: bool,
    /// The injector's own namespace, which its webhook never selects.
    pub injector_namespace: Option<String>,
}

impl Target<'_> {
    /// The revision this injector serves (`default` for the unnamed one).
    pub fn revision(&self) -> String {
        self.config
            .values()
            .get("revision")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
            .unwrap_or(selection::DEFAULT_REVISION)
            .to_string()
    }
}

/// The judgement of one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Injected exactly as the injector would inject it now.
    Fresh,
    /// Not what the injector would make of it now, for these reasons (at least one).
    Stale(Vec<Reason>),
    /// Injected by another revision, which its namespace still selects: that revision's
    /// injector judges it, not this one.
    OtherRevision(String),
    /// Neither injected nor asked to be: nothing to do.
    NotMeshed,
}

/// The pod's namespace: its own, or `default` as the API server fills it.
fn namespace_of(pod: &Value) -> &str {
    pod.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
}

/// Judges a live pod (as the API server returns it) against the injector it would meet if it
/// were created now. `namespace_labels` are its namespace's labels.
///
/// Whether a pod was injected by *this* injector: the pod cannot say, since this injector
/// writes what istiod writes, byte for byte. An injection this injector would write the same
/// way is fresh whoever wrote it. When they differ, three things tell another injector apart:
/// the pod's revision is not one this injector serves (and its namespace selects that
/// revision: [`Verdict::OtherRevision`]); it asks for a template (`inject.istio.io/templates`)
/// this configuration does not have; or it lacks the `injectedAnnotations` this injector adds
/// to every pod (configure one to make the tell certain).
pub fn assess(
    target: &Target<'_>,
    pod: &Value,
    namespace_labels: Option<&Map<String, Value>>,
) -> Result<Verdict, InjectError> {
    let namespace = namespace_of(pod);
    let ours = target.revision();
    let pod_labels = pod.pointer("/metadata/labels").and_then(Value::as_object);
    let selected = if target.injector_namespace.as_deref() == Some(namespace)
        || inject::IGNORED_NAMESPACES.contains(&namespace)
    {
        None
    } else {
        selection::selected(namespace_labels, pod_labels)
    };

    let Some(status) = Status::of(pod) else {
        return Ok(match selected {
            Some(s) if s.revision == ours => match engine(target, pod, namespace)? {
                Outcome::Injected(_) => Verdict::Stale(vec![Reason::NotInjected {
                    selected: s,
                    namespace: namespace.into(),
                }]),
                Outcome::Skipped(_) => Verdict::NotMeshed,
                Outcome::Denied(d) => Verdict::Stale(vec![Reason::Refused(d.to_string())]),
            },
            // Another revision's injector decides whether it would inject this pod.
            Some(s) => Verdict::OtherRevision(s.revision),
            None => Verdict::NotMeshed,
        });
    };

    let injected = status
        .revision
        .clone()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            pod.pointer("/metadata/annotations/istio.io~1rev")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| selection::DEFAULT_REVISION.to_string());
    let revision_reason = |selected: Option<Selected>| {
        Verdict::Stale(vec![Reason::Revision {
            injected: injected.clone(),
            selected,
            namespace: namespace.into(),
        }])
    };
    match selected {
        None => return Ok(revision_reason(None)),
        Some(s) if s.revision != ours => {
            return Ok(if s.revision == injected {
                Verdict::OtherRevision(injected)
            } else {
                revision_reason(Some(s))
            });
        }
        Some(s) if injected != ours => return Ok(revision_reason(Some(s))),
        Some(_) => {}
    }

    match engine(target, pod, namespace)? {
        Outcome::Injected(fresh) => {
            let differences = compare::compare(&fresh.pod, pod);
            if differences.is_empty() {
                return Ok(Verdict::Fresh);
            }
            let mut owned: HashSet<String> = status.containers.iter().cloned().collect();
            if let Some(now) = Status::of(&fresh.pod) {
                owned.extend(now.containers);
            }
            let markers: Vec<String> = target
                .config
                .injection()
                .injected_annotations
                .keys()
                .cloned()
                .collect();
            let missing = reason::missing_marker(&differences, &markers);
            let mut reasons = Vec::new();
            if !missing.is_empty() {
                reasons.push(Reason::OtherInjector {
                    why: format!(
                        "it lacks {}, which this injector adds to every pod (injectedAnnotations), or it was injected before that was configured",
                        missing.join(", ")
                    ),
                    refused: false,
                });
            }
            let rest: Vec<Difference> = differences
                .into_iter()
                .filter(|d| !is_marker(d, &missing))
                .collect();
            reasons.extend(reason::reasons(&rest, &owned));
            if reasons.is_empty() {
                return Ok(Verdict::Fresh);
            }
            Ok(Verdict::Stale(reasons))
        }
        Outcome::Skipped(why) => Ok(Verdict::Stale(vec![Reason::NoLongerInjected(
            why.to_string(),
        )])),
        Outcome::Denied(denial) => {
            let unknown = unknown_templates(target.config, pod);
            Ok(Verdict::Stale(vec![if unknown.is_empty() {
                Reason::Refused(denial.to_string())
            } else {
                Reason::OtherInjector {
                    why: format!(
                        "it asks for the template{} {} ({TEMPLATES_ANNOTATION}), which this injector does not have; re-created, it would be refused",
                        if unknown.len() == 1 { "" } else { "s" },
                        unknown
                            .iter()
                            .map(|u| reason::shown(u))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    refused: true,
                }
            }]))
        }
    }
}

fn is_marker(d: &Difference, missing: &[String]) -> bool {
    matches!(d, Difference::Field { path, live: None, .. }
        if matches!(path.as_slice(),
            [compare::Seg::Key(m), compare::Seg::Key(a), compare::Seg::Key(k)]
                if m == "metadata" && a == "annotations" && missing.contains(k)))
}

/// The templates the pod asks for that the configuration has neither as a template nor as an
/// alias.
fn unknown_templates(config: &Config, pod: &Value) -> Vec<String> {
    let Some(list) = pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(TEMPLATES_ANNOTATION))
        .and_then(Value::as_str)
    else {
        return Vec::new();
    };
    list.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .filter(|n| !config.templates.contains(n) && !config.injection().aliases.contains_key(*n))
        .map(str::to_string)
        .collect()
}

/// The engine, as the webhook would run it for this pod if it were created now.
fn engine(target: &Target<'_>, pod: &Value, namespace: &str) -> Result<Outcome, InjectError> {
    inject::inject(
        target.config,
        &Request {
            pod,
            namespace: Some(namespace),
            // Derived from the owner references, as the webhook derives it.
            workload: None,
            native_sidecars: target.native_sidecars,
        },
    )
}
