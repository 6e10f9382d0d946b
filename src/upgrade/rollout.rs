//! The pure parts of restarting a workload: the patch `kubectl rollout restart` sends, which
//! workloads it can restart, how many pods a restart replaces, and whether the rollout is done,
//! with `kubectl rollout status`'s rules and messages for each kind.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use serde_json::{Value, json};

/// The pod-template annotation `kubectl rollout restart` sets; changing the template makes the
/// controller replace every pod.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// The kinds a restart applies to (apps/v1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl Kind {
    /// `deployment`, `deploy`, `deployments`, `statefulset`, `sts`, `daemonset`, `ds`, ... as
    /// kubectl accepts them; also the `Kind` itself.
    pub fn parse(text: &str) -> Option<Kind> {
        match text.to_ascii_lowercase().as_str() {
            "deployment" | "deployments" | "deploy" | "deployment.apps" => Some(Kind::Deployment),
            "statefulset" | "statefulsets" | "sts" | "statefulset.apps" => Some(Kind::StatefulSet),
            "daemonset" | "daemonsets" | "ds" | "daemonset.apps" => Some(Kind::DaemonSet),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
        }
    }

    fn lower(self) -> &'static str {
        match self {
            Kind::Deployment => "deployment",
            Kind::StatefulSet => "statefulset",
            Kind::DaemonSet => "daemon set",
        }
    }
}

/// The strategic merge patch `kubectl rollout restart` sends (`at`: RFC 3339, seconds, as Go's
/// `time.RFC3339` writes it).
pub fn restart_patch(at: &str) -> Value {
    json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: at}}}}})
}

/// The restartedAt value for a restart at `now`: kubectl's, or one second later when the
/// template already holds that value (a second restart within the same second), since a patch
/// that changes nothing restarts nothing.
pub fn restart_value(now: time::OffsetDateTime, current: Option<&str>) -> String {
    let at = timestamp(now);
    if current == Some(at.as_str()) {
        timestamp(now + time::Duration::SECOND)
    } else {
        at
    }
}

/// `at` as kubectl writes it: RFC 3339 in UTC, whole seconds (`2026-11-23T04:05:06Z`).
pub fn timestamp(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// A workload as read from the cluster.
#[derive(Debug, Clone)]
pub enum Workload {
    Deployment(Box<Deployment>),
    StatefulSet(Box<StatefulSet>),
    DaemonSet(Box<DaemonSet>),
}

/// The state of a rollout, with kubectl's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Done(String),
    Waiting(String),
    Failed(String),
}

impl Workload {
    pub fn kind(&self) -> Kind {
        match self {
            Workload::Deployment(_) => Kind::Deployment,
            Workload::StatefulSet(_) => Kind::StatefulSet,
            Workload::DaemonSet(_) => Kind::DaemonSet,
        }
    }

    fn name(&self) -> &str {
        let meta = match self {
            Workload::Deployment(d) => &d.metadata,
            Workload::StatefulSet(s) => &s.metadata,
            Workload::DaemonSet(d) => &d.metadata,
        };
        meta.name.as_deref().unwrap_or("")
    }

    /// Why a restart cannot replace its pods, as kubectl refuses it; `None` when it can.
    pub fn cannot_restart(&self) -> Option<String> {
        match self {
            Workload::Deployment(d) => d.spec.paused.filter(|p| *p).map(|_| {
                "it is paused: resume it first (kubectl rollout resume), or leave it for later"
                    .to_string()
            }),
            Workload::StatefulSet(s) => on_delete(
                s.spec
                    .update_strategy
                    .as_ref()
                    .and_then(|u| u.type_.as_deref()),
            ),
            Workload::DaemonSet(d) => on_delete(
                d.spec
                    .update_strategy
                    .as_ref()
                    .and_then(|u| u.type_.as_deref()),
            ),
        }
    }

    /// The pods a restart replaces: the replicas (for a StatefulSet, those at or above its
    /// partition), or a DaemonSet's scheduled pods.
    pub fn pods(&self) -> u64 {
        let n = |v: Option<i32>| u64::try_from(v.unwrap_or(1)).unwrap_or(0);
        match self {
            Workload::Deployment(d) => n(d.spec.replicas),
            Workload::StatefulSet(s) => {
                let replicas = n(s.spec.replicas);
                let partition = u64::try_from(partition(s).unwrap_or(0)).unwrap_or(0);
                replicas.saturating_sub(partition)
            }
            Workload::DaemonSet(d) => d
                .status
                .as_ref()
                .map(|s| u64::try_from(s.desired_number_scheduled).unwrap_or(0))
                .unwrap_or(0),
        }
    }

    /// The pods not yet replaced by a rollout in progress (all of them when none is).
    pub fn pods_left(&self) -> u64 {
        let updated = match self {
            Workload::Deployment(d) => d.status.as_ref().and_then(|s| s.updated_replicas),
            Workload::StatefulSet(s) => s.status.as_ref().and_then(|s| s.updated_replicas),
            Workload::DaemonSet(d) => d.status.as_ref().and_then(|s| s.updated_number_scheduled),
        };
        self.pods()
            .saturating_sub(u64::try_from(updated.unwrap_or(0)).unwrap_or(0))
    }

    /// The rollout's state, as `kubectl rollout status` decides it.
    pub fn status(&self) -> Status {
        match self {
            Workload::Deployment(d) => deployment_status(d),
            Workload::StatefulSet(s) => stateful_set_status(s),
            Workload::DaemonSet(d) => daemon_set_status(d),
        }
    }

    /// The pod template's `kubectl.kubernetes.io/restartedAt`, if any.
    pub fn restarted_at(&self) -> Option<&str> {
        let template = match self {
            Workload::Deployment(d) => &d.spec.template,
            Workload::StatefulSet(s) => &s.spec.template,
            Workload::DaemonSet(d) => &d.spec.template,
        };
        template
            .metadata
            .as_ref()?
            .annotations
            .as_ref()?
            .get(RESTARTED_AT)
            .map(String::as_str)
    }

    /// A short name for messages: `deployment "cart"`.
    pub fn describe(&self) -> String {
        format!("{} {:?}", self.kind().lower(), self.name())
    }
}

fn on_delete(strategy: Option<&str>) -> Option<String> {
    (strategy == Some("OnDelete")).then(|| {
        "its updateStrategy is OnDelete, so a restart replaces no pod: delete its pods one at a time"
            .to_string()
    })
}

fn partition(s: &StatefulSet) -> Option<i32> {
    s.spec
        .update_strategy
        .as_ref()?
        .rolling_update
        .as_ref()?
        .partition
}

fn deployment_status(d: &Deployment) -> Status {
    let name = d.metadata.name.as_deref().unwrap_or("");
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(status) = d.status.as_ref() else {
        return Status::Waiting("Waiting for deployment spec update to be observed...".into());
    };
    if generation > status.observed_generation.unwrap_or(0) {
        return Status::Waiting("Waiting for deployment spec update to be observed...".into());
    }
    let progressing = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_.as_deref() == Some("Progressing"));
    if progressing.and_then(|c| c.reason.as_deref()) == Some("ProgressDeadlineExceeded") {
        return Status::Failed(format!(
            "deployment {name:?} exceeded its progress deadline"
        ));
    }
    let replicas = d.spec.replicas;
    let updated = status.updated_replicas.unwrap_or(0);
    if let Some(replicas) = replicas
        && updated < replicas
    {
        return Status::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {updated} out of {replicas} new replicas have been updated..."
        ));
    }
    let total = status.replicas.unwrap_or(0);
    if total > updated {
        return Status::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...",
            total - updated
        ));
    }
    let available = status.available_replicas.unwrap_or(0);
    if available < updated {
        return Status::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available..."
        ));
    }
    Status::Done(format!("deployment {name:?} successfully rolled out"))
}

fn stateful_set_status(s: &StatefulSet) -> Status {
    let generation = s.metadata.generation.unwrap_or(0);
    let Some(status) = s.status.as_ref() else {
        return Status::Waiting("Waiting for statefulset spec update to be observed...".into());
    };
    let observed = status.observed_generation.unwrap_or(0);
    if observed == 0 || generation > observed {
        return Status::Waiting("Waiting for statefulset spec update to be observed...".into());
    }
    let replicas = s.spec.replicas;
    if let Some(replicas) = replicas
        && status.ready_replicas.unwrap_or(0) < replicas
    {
        return Status::Waiting(format!(
            "Waiting for {} pods to be ready...",
            replicas - status.ready_replicas.unwrap_or(0)
        ));
    }
    // As kubectl: with a rollingUpdate section (the API server writes one, partition 0), the
    // pods at or above the partition are what must be updated.
    let rolling = s
        .spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.rolling_update.as_ref());
    if rolling.is_some() {
        let updated = status.updated_replicas.unwrap_or(0);
        if let (Some(replicas), Some(partition)) = (replicas, partition(s))
            && updated < replicas - partition
        {
            return Status::Waiting(format!(
                "Waiting for partitioned roll out to finish: {updated} out of {} new pods have been updated...",
                replicas - partition
            ));
        }
        return Status::Done(format!(
            "partitioned roll out complete: {updated} new pods have been updated..."
        ));
    }
    let update = status.update_revision.as_deref().unwrap_or("");
    if update != status.current_revision.as_deref().unwrap_or("") {
        return Status::Waiting(format!(
            "waiting for statefulset rolling update to complete {} pods at revision {update}...",
            status.updated_replicas.unwrap_or(0)
        ));
    }
    Status::Done(format!(
        "statefulset rolling update complete {} pods at revision {update}...",
        status.current_replicas.unwrap_or(0)
    ))
}

fn daemon_set_status(d: &DaemonSet) -> Status {
    let name = d.metadata.name.as_deref().unwrap_or("");
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(status) = d.status.as_ref() else {
        return Status::Waiting("Waiting for daemon set spec update to be observed...".into());
    };
    if generation > status.observed_generation.unwrap_or(0) {
        return Status::Waiting("Waiting for daemon set spec update to be observed...".into());
    }
    let desired = status.desired_number_scheduled;
    let updated = status.updated_number_scheduled.unwrap_or(0);
    if updated < desired {
        return Status::Waiting(format!(
            "Waiting for daemon set {name:?} rollout to finish: {updated} out of {desired} new pods have been updated..."
        ));
    }
    let available = status.number_available.unwrap_or(0);
    if available < desired {
        return Status::Waiting(format!(
            "Waiting for daemon set {name:?} rollout to finish: {available} of {desired} updated pods are available..."
        ));
    }
    Status::Done(format!("daemon set {name:?} successfully rolled out"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(v: Value) -> Workload {
        Workload::Deployment(Box::new(serde_json::from_value(v).unwrap()))
    }

    fn sts(v: Value) -> Workload {
        Workload::StatefulSet(Box::new(serde_json::from_value(v).unwrap()))
    }

    fn ds(v: Value) -> Workload {
        Workload::DaemonSet(Box::new(serde_json::from_value(v).unwrap()))
    }

    #[test]
    fn the_patch_is_kubectls() {
        let at = time::OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap();
        assert_eq!(timestamp(at), "2026-11-18T11:06:40Z");
        assert_eq!(
            restart_patch("2026-11-18T11:06:40Z").to_string(),
            r#"{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":"2026-11-18T11:06:40Z"}}}}}"#
        );
    }

    #[test]
    fn a_second_restart_in_the_same_second_still_changes_the_template() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap();
        assert_eq!(restart_value(now, None), "2026-11-18T11:06:40Z");
        assert_eq!(
            restart_value(now, Some("2026-11-18T11:06:40Z")),
            "2026-11-18T11:06:41Z"
        );
        assert_eq!(
            restart_value(now, Some("2026-11-18T10:00:00Z")),
            "2026-11-18T11:06:40Z"
        );
    }

    #[test]
    fn deployment_status_follows_kubectl() {
        let d = |generation: i64, status: Value| {
            deployment(
                json!({"metadata": {"name": "cart", "generation": generation},
                              "spec": {"replicas": 3, "selector": {}, "template": {}},
                              "status": status}),
            )
            .status()
        };
        assert!(
            matches!(d(2, json!({"observedGeneration": 1})), Status::Waiting(m) if m.contains("spec update"))
        );
        assert_eq!(
            d(2, json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 1})),
            Status::Waiting("Waiting for deployment \"cart\" rollout to finish: 1 out of 3 new replicas have been updated...".into())
        );
        assert!(matches!(
            d(2, json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3})),
            Status::Waiting(m) if m.contains("1 old replicas are pending termination")));
        assert!(matches!(
            d(2, json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 2})),
            Status::Waiting(m) if m.contains("2 of 3 updated replicas are available")));
        assert_eq!(
            d(
                2,
                json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3})
            ),
            Status::Done("deployment \"cart\" successfully rolled out".into())
        );
        assert_eq!(
            d(
                2,
                json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1,
                        "conditions": [{"type": "Progressing", "status": "False",
                                        "reason": "ProgressDeadlineExceeded"}]})
            ),
            Status::Failed("deployment \"cart\" exceeded its progress deadline".into())
        );
    }

    #[test]
    fn statefulset_status_follows_kubectl_with_partitions() {
        let s = |strategy: Value, status: Value| {
            sts(json!({"metadata": {"name": "db", "generation": 5},
                       "spec": {"replicas": 3, "selector": {}, "serviceName": "db", "template": {},
                                "updateStrategy": strategy},
                       "status": status}))
        };
        let rolling = json!({"type": "RollingUpdate"});
        assert!(
            matches!(s(rolling.clone(), json!({"replicas": 3, "observedGeneration": 4})).status(),
            Status::Waiting(m) if m.contains("spec update"))
        );
        assert!(
            matches!(s(rolling.clone(), json!({"replicas": 3, "observedGeneration": 5, "readyReplicas": 2})).status(),
            Status::Waiting(m) if m == "Waiting for 1 pods to be ready...")
        );
        assert!(
            matches!(s(rolling.clone(), json!({"replicas": 3, "observedGeneration": 5, "readyReplicas": 3,
            "updateRevision": "db-2", "currentRevision": "db-1", "updatedReplicas": 2})).status(),
            Status::Waiting(m) if m.contains("complete 2 pods at revision db-2"))
        );
        assert!(matches!(
            s(
                rolling.clone(),
                json!({"replicas": 3, "observedGeneration": 5, "readyReplicas": 3,
            "updateRevision": "db-2", "currentRevision": "db-2", "currentReplicas": 3})
            )
            .status(),
            Status::Done(_)
        ));
        let partitioned = json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 2}});
        let p = s(
            partitioned.clone(),
            json!({"replicas": 3, "observedGeneration": 5, "readyReplicas": 3,
            "updateRevision": "db-2", "currentRevision": "db-1", "updatedReplicas": 1}),
        );
        assert_eq!(p.pods(), 1);
        assert!(
            matches!(p.status(), Status::Done(m) if m.starts_with("partitioned roll out complete"))
        );
        let p = s(
            partitioned,
            json!({"replicas": 3, "observedGeneration": 5, "readyReplicas": 3, "updatedReplicas": 0}),
        );
        assert!(matches!(p.status(), Status::Waiting(m) if m.contains("0 out of 1 new pods")));
        let on_delete = s(json!({"type": "OnDelete"}), json!({"replicas": 3}));
        assert!(on_delete.cannot_restart().unwrap().contains("OnDelete"));
    }

    #[test]
    fn daemonset_status_follows_kubectl() {
        let d = |status: Value| {
            ds(json!({"metadata": {"name": "agent", "generation": 3},
                      "spec": {"selector": {}, "template": {}}, "status": status}))
        };
        let w = d(
            json!({"observedGeneration": 3, "desiredNumberScheduled": 4, "updatedNumberScheduled": 2,
                         "currentNumberScheduled": 4, "numberMisscheduled": 0, "numberReady": 4}),
        );
        assert_eq!(w.pods(), 4);
        assert_eq!(w.pods_left(), 2);
        assert!(matches!(w.status(), Status::Waiting(m) if m.contains("2 out of 4 new pods")));
        let w = d(
            json!({"observedGeneration": 3, "desiredNumberScheduled": 4, "updatedNumberScheduled": 4,
                         "numberAvailable": 3, "currentNumberScheduled": 4, "numberMisscheduled": 0, "numberReady": 4}),
        );
        assert!(
            matches!(w.status(), Status::Waiting(m) if m.contains("3 of 4 updated pods are available"))
        );
        let w = d(
            json!({"observedGeneration": 3, "desiredNumberScheduled": 4, "updatedNumberScheduled": 4,
                         "numberAvailable": 4, "currentNumberScheduled": 4, "numberMisscheduled": 0, "numberReady": 4}),
        );
        assert_eq!(
            w.status(),
            Status::Done("daemon set \"agent\" successfully rolled out".into())
        );
    }

    #[test]
    fn a_paused_deployment_is_not_restarted() {
        let d = deployment(json!({"metadata": {"name": "cart"},
            "spec": {"paused": true, "selector": {}, "template": {}}}));
        assert!(d.cannot_restart().unwrap().contains("paused"));
    }
}
