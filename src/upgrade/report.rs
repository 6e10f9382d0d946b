//! Pods grouped by workload: how many are stale and why, and what to do; as text for people
//! and JSON for scripts.
//!
//! The collector keeps a count and the reasons per workload, not the pods, so a cluster-wide
//! report costs memory in proportion to the workloads, whatever the number of pods.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::Verdict;
use super::owners::{Restart, WorkloadRef};
use super::reason::{Reason, shown};

/// At most this many distinct reasons are kept per workload (pods of one workload rarely
/// differ in more than two or three ways; a hostile mix cannot grow the report).
const MAX_REASONS: usize = 8;

/// One workload with stale pods.
#[derive(Debug, Clone, PartialEq)]
pub struct StaleWorkload {
    pub workload: WorkloadRef,
    pub restart: Restart,
    /// Pods judged (fresh or stale).
    pub total: usize,
    pub stale: usize,
    /// Each reason with the number of stale pods it applies to.
    pub reasons: Vec<(Reason, usize)>,
    /// Reasons left out beyond [`MAX_REASONS`].
    pub more_reasons: usize,
}

impl StaleWorkload {
    /// Whether re-creating its pods would fail (the injector refuses them now): a rollout must
    /// not start.
    pub fn blocked(&self) -> Option<&Reason> {
        self.reasons
            .iter()
            .map(|(r, _)| r)
            .find(|r| r.blocks_restart())
    }

    /// Whether `rollout --outdated` restarts it.
    pub fn rollable(&self) -> bool {
        self.restart == Restart::Rollout && self.blocked().is_none()
    }
}

#[derive(Debug, Default)]
struct Entry {
    restart: Option<Restart>,
    total: usize,
    stale: usize,
    reasons: Vec<(Reason, usize)>,
    more_reasons: usize,
}

/// Collects verdicts pod by pod.
#[derive(Debug, Default)]
pub struct Collector {
    workloads: BTreeMap<WorkloadRef, Entry>,
    other_revisions: BTreeMap<String, usize>,
    errors: Vec<String>,
    pods: usize,
}

impl Collector {
    pub fn add(&mut self, workload: WorkloadRef, restart: Restart, verdict: Verdict) {
        self.pods += 1;
        match verdict {
            Verdict::NotMeshed => {}
            Verdict::OtherRevision(r) => *self.other_revisions.entry(r).or_default() += 1,
            Verdict::Fresh => {
                let e = self.workloads.entry(workload).or_default();
                e.restart = Some(restart);
                e.total += 1;
            }
            Verdict::Stale(reasons) => {
                let e = self.workloads.entry(workload).or_default();
                e.restart = Some(restart);
                e.total += 1;
                e.stale += 1;
                for r in reasons {
                    let full = e.reasons.len() >= MAX_REASONS;
                    match e.reasons.iter_mut().find(|(known, _)| *known == r) {
                        Some((_, n)) => *n += 1,
                        None if !full => e.reasons.push((r, 1)),
                        None => e.more_reasons += 1,
                    }
                }
            }
        }
    }

    /// A pod the engine could not judge (a template that does not render for it).
    pub fn error(&mut self, pod: &str, namespace: &str, error: &str) {
        self.pods += 1;
        if self.errors.len() < 100 {
            self.errors.push(format!(
                "pod {}/{}: {}",
                shown(namespace),
                shown(pod),
                shown(error)
            ));
        }
    }

    pub fn finish(self) -> Report {
        let mut fresh = 0;
        let mut stale = Vec::new();
        for (workload, e) in self.workloads {
            if e.stale == 0 {
                fresh += 1;
                continue;
            }
            stale.push(StaleWorkload {
                workload,
                restart: e.restart.unwrap_or(Restart::Custom),
                total: e.total,
                stale: e.stale,
                reasons: e.reasons,
                more_reasons: e.more_reasons,
            });
        }
        Report {
            stale,
            fresh,
            pods: self.pods,
            other_revisions: self.other_revisions,
            errors: self.errors,
        }
    }
}

/// What `outdated` found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Workloads with at least one stale pod, by namespace, kind and name.
    pub stale: Vec<StaleWorkload>,
    /// Meshed workloads whose pods are all fresh.
    pub fresh: usize,
    /// Pods looked at.
    pub pods: usize,
    /// Pods of other revisions, not judged here, per revision.
    pub other_revisions: BTreeMap<String, usize>,
    pub errors: Vec<String>,
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl Report {
    /// A table, one workload per row (a row per reason), then a summary:
    ///
    /// ```text
    /// NAMESPACE  WORKLOAD         STALE  WHY
    /// shop       Deployment/cart  2/2    proxy image docker.io/istio/proxyv2:1.27.3 -> ...:1.28.0
    /// ```
    pub fn text(&self) -> String {
        let mut out = String::new();
        if !self.stale.is_empty() {
            let rows: Vec<(String, String, String)> = self
                .stale
                .iter()
                .map(|w| {
                    (
                        shown(&w.workload.namespace),
                        format!("{}/{}", shown(&w.workload.kind), shown(&w.workload.name)),
                        format!("{}/{}", w.stale, w.total),
                    )
                })
                .collect();
            let width = |f: fn(&(String, String, String)) -> &String, title: &str| {
                rows.iter()
                    .map(|r| f(r).chars().count())
                    .chain([title.len()])
                    .max()
                    .unwrap_or(0)
            };
            let (a, b, c) = (
                width(|r| &r.0, "NAMESPACE"),
                width(|r| &r.1, "WORKLOAD"),
                width(|r| &r.2, "STALE"),
            );
            let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w - s.chars().count()));
            out.push_str(&format!(
                "{}  {}  {}  WHY\n",
                pad("NAMESPACE", a),
                pad("WORKLOAD", b),
                pad("STALE", c)
            ));
            let indent = " ".repeat(a + b + c + 6);
            for (w, row) in self.stale.iter().zip(&rows) {
                let mut lines: Vec<String> = w
                    .reasons
                    .iter()
                    .map(|(r, n)| {
                        if *n < w.stale {
                            format!("{r} ({})", plural(*n, "pod", "pods"))
                        } else {
                            r.to_string()
                        }
                    })
                    .collect();
                if w.more_reasons > 0 {
                    lines.push(format!(
                        "and {} more",
                        plural(w.more_reasons, "reason", "reasons")
                    ));
                }
                if w.blocked().is_some() {
                    lines.push(
                        "what to do: fix this before restarting it; rollout leaves it alone".into(),
                    );
                } else if w.restart != Restart::Rollout {
                    lines.push(format!("what to do: {}", w.restart.action()));
                }
                for (i, line) in lines.iter().enumerate() {
                    if i == 0 {
                        out.push_str(&format!(
                            "{}  {}  {}  {line}\n",
                            pad(&row.0, a),
                            pad(&row.1, b),
                            pad(&row.2, c)
                        ));
                    } else {
                        out.push_str(&format!("{indent}{line}\n"));
                    }
                }
            }
            out.push('\n');
        }
        let stale_pods: usize = self.stale.iter().map(|w| w.stale).sum();
        let workloads = self.stale.len() + self.fresh;
        if self.stale.is_empty() {
            out.push_str(&format!(
                "every sidecar is up to date ({} meshed, {} looked at)\n",
                plural(workloads, "workload", "workloads"),
                plural(self.pods, "pod", "pods")
            ));
        } else {
            out.push_str(&format!(
                "{} of {} {} stale pods ({} stale)\n",
                self.stale.len(),
                plural(workloads, "meshed workload", "meshed workloads"),
                if self.stale.len() == 1 { "has" } else { "have" },
                plural(stale_pods, "pod", "pods")
            ));
            let rollable = self.stale.iter().filter(|w| w.rollable()).count();
            if rollable > 0 {
                out.push_str(&format!(
                    "restart {} with sidecar-injector rollout --outdated and the same flags\n",
                    if rollable == 1 {
                        "it".to_string()
                    } else {
                        format!("the {rollable} Deployments, StatefulSets and DaemonSets")
                    }
                ));
            }
        }
        for (revision, n) in &self.other_revisions {
            out.push_str(&format!(
                "{} of revision {} not judged: {} that revision, which this injector does not serve (judge {} with that revision's --configmap)\n",
                plural(*n, "pod", "pods"),
                shown(revision),
                if *n == 1 {
                    "its namespace selects"
                } else {
                    "their namespaces select"
                },
                if *n == 1 { "it" } else { "them" }
            ));
        }
        for e in &self.errors {
            out.push_str(&format!("error: {e}\n"));
        }
        out
    }

    /// The same as JSON: `{"workloads": [...], "summary": {...}}`.
    pub fn json(&self) -> Value {
        let workloads: Vec<Value> = self
            .stale
            .iter()
            .map(|w| {
                json!({
                    "namespace": w.workload.namespace,
                    "kind": w.workload.kind,
                    "name": w.workload.name,
                    "apiVersion": w.workload.api_version,
                    "pods": {"stale": w.stale, "total": w.total},
                    "reasons": w.reasons.iter().map(|(r, n)| {
                        let mut v = r.to_json();
                        v["pods"] = json!(n);
                        v
                    }).collect::<Vec<_>>(),
                    "moreReasons": w.more_reasons,
                    "restart": w.restart.as_str(),
                    "rollable": w.rollable(),
                    "action": if w.blocked().is_some() {
                        "fix this before restarting it; rollout leaves it alone"
                    } else {
                        w.restart.action()
                    },
                })
            })
            .collect();
        json!({
            "workloads": workloads,
            "summary": {
                "staleWorkloads": self.stale.len(),
                "freshWorkloads": self.fresh,
                "stalePods": self.stale.iter().map(|w| w.stale).sum::<usize>(),
                "podsLookedAt": self.pods,
                "otherRevisions": self.other_revisions,
            },
            "errors": self.errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(ns: &str, kind: &str, name: &str) -> WorkloadRef {
        WorkloadRef {
            namespace: ns.into(),
            kind: kind.into(),
            name: name.into(),
            api_version: "apps/v1".into(),
        }
    }

    fn image(from: &str) -> Reason {
        Reason::Image {
            containers: vec!["istio-init".into(), "istio-proxy".into()],
            from: format!("docker.io/istio/proxyv2:{from}"),
            to: "docker.io/istio/proxyv2:1.28.0".into(),
        }
    }

    #[test]
    fn pods_are_counted_per_workload_with_their_reasons() {
        let mut c = Collector::default();
        let cart = w("shop", "Deployment", "cart");
        c.add(
            cart.clone(),
            Restart::Rollout,
            Verdict::Stale(vec![image("1.27.3")]),
        );
        c.add(
            cart.clone(),
            Restart::Rollout,
            Verdict::Stale(vec![image("1.27.3")]),
        );
        c.add(
            cart.clone(),
            Restart::Rollout,
            Verdict::Stale(vec![image("1.26.0")]),
        );
        c.add(cart, Restart::Rollout, Verdict::Fresh);
        c.add(
            w("shop", "StatefulSet", "db"),
            Restart::Rollout,
            Verdict::Fresh,
        );
        c.add(
            w("shop", "Pod", "debug"),
            Restart::BarePod,
            Verdict::Stale(vec![image("1.27.3")]),
        );
        c.add(
            w("x", "Deployment", "y"),
            Restart::Rollout,
            Verdict::OtherRevision("canary".into()),
        );
        c.add(
            w("x", "Deployment", "z"),
            Restart::Rollout,
            Verdict::NotMeshed,
        );
        let report = c.finish();
        assert_eq!(report.fresh, 1);
        assert_eq!(report.pods, 8);
        assert_eq!(report.stale.len(), 2);
        let cart = &report.stale[0];
        assert_eq!((cart.stale, cart.total), (3, 4));
        assert_eq!(
            cart.reasons,
            vec![(image("1.27.3"), 2), (image("1.26.0"), 1)]
        );
        let text = report.text();
        assert_eq!(
            text,
            "\
NAMESPACE  WORKLOAD         STALE  WHY
shop       Deployment/cart  3/4    proxy image docker.io/istio/proxyv2:1.27.3 -> docker.io/istio/proxyv2:1.28.0 (2 pods)
                                   proxy image docker.io/istio/proxyv2:1.26.0 -> docker.io/istio/proxyv2:1.28.0 (1 pod)
shop       Pod/debug        1/1    proxy image docker.io/istio/proxyv2:1.27.3 -> docker.io/istio/proxyv2:1.28.0
                                   what to do: a pod no controller owns: delete it and create it again

2 of 3 meshed workloads have stale pods (4 pods stale)
restart it with sidecar-injector rollout --outdated and the same flags
1 pod of revision canary not judged: its namespace selects that revision, which this injector does not serve (judge it with that revision's --configmap)
"
        );
        let json = report.json();
        assert_eq!(
            json["workloads"][0]["pods"],
            json!({"stale": 3, "total": 4})
        );
        assert_eq!(json["workloads"][0]["reasons"][0]["kind"], "image");
        assert_eq!(json["workloads"][1]["rollable"], false);
        assert_eq!(json["summary"]["otherRevisions"]["canary"], 1);
    }

    #[test]
    fn a_refused_workload_is_not_rollable() {
        let mut c = Collector::default();
        c.add(
            w("shop", "Deployment", "gw"),
            Restart::Rollout,
            Verdict::Stale(vec![Reason::OtherInjector {
                why: "it asks for the template gateway".into(),
                refused: true,
            }]),
        );
        let report = c.finish();
        assert!(!report.stale[0].rollable());
        assert!(report.text().contains("rollout leaves it alone"));
        assert!(
            !report
                .text()
                .contains("sidecar-injector rollout --outdated")
        );
    }

    #[test]
    fn reasons_per_workload_are_bounded() {
        let mut c = Collector::default();
        for i in 0..50 {
            c.add(
                w("a", "Deployment", "b"),
                Restart::Rollout,
                Verdict::Stale(vec![image(&format!("1.{i}"))]),
            );
        }
        let r = c.finish();
        assert_eq!(r.stale[0].reasons.len(), MAX_REASONS);
        assert_eq!(r.stale[0].more_reasons, 50 - MAX_REASONS);
    }
}
