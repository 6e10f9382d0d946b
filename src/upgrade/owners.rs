//! The workload a pod belongs to, found through its owner references as the controllers set
//! them (Pod -> ReplicaSet -> Deployment, Pod -> Job -> CronJob, StatefulSet, DaemonSet, custom
//! owners as they are), and what the user does to give its pods a new sidecar.

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;

/// A workload: the object whose pods are counted and restarted together.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadRef {
    pub namespace: String,
    pub kind: String,
    pub name: String,
    pub api_version: String,
}

impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// How a workload's pods get a new sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Restart {
    /// A Deployment, StatefulSet or DaemonSet: `sidecar-injector rollout` (the restart `kubectl
    /// rollout restart` does).
    Rollout,
    /// A Job's pods: they run to the end with the sidecar they have.
    Job,
    /// A CronJob's Job: the next scheduled Job gets the new sidecar.
    CronJob,
    /// A pod no controller owns.
    BarePod,
    /// A ReplicaSet or ReplicationController no Deployment owns.
    ReplicaSet,
    /// An owner of another kind (Argo Rollout, an operator's resource): its own controller.
    Custom,
}

impl Restart {
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::Rollout => "rollout",
            Restart::Job => "job",
            Restart::CronJob => "cronjob",
            Restart::BarePod => "bare-pod",
            Restart::ReplicaSet => "replicaset",
            Restart::Custom => "custom",
        }
    }

    /// What the user does, in words.
    pub fn action(self) -> &'static str {
        match self {
            Restart::Rollout => "sidecar-injector rollout --outdated (or kubectl rollout restart)",
            Restart::Job => {
                "a running Job's pods finish with the sidecar they have; re-create the Job to run it with the new one"
            }
            Restart::CronJob => {
                "its next scheduled Job gets the new sidecar; a running Job finishes with the one it has"
            }
            Restart::BarePod => "a pod no controller owns: delete it and create it again",
            Restart::ReplicaSet => {
                "no Deployment owns it: delete its pods one at a time and it re-creates them"
            }
            Restart::Custom => "restart it through its own controller",
        }
    }
}

/// An owner reference: kind, name, apiVersion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRef {
    pub kind: String,
    pub name: String,
    pub api_version: String,
}

/// The controller owner reference of an object's metadata (`controller: true`).
pub fn controller_of(metadata: &Value) -> Option<OwnerRef> {
    let r = metadata
        .get("ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))?;
    let get = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
    Some(OwnerRef {
        kind: get("kind")?,
        name: get("name")?,
        api_version: get("apiVersion").unwrap_or_default(),
    })
}

/// The owners of the ReplicaSets and Jobs in scope: what a pod's owner is owned by.
#[derive(Debug, Default)]
pub struct Owners {
    /// (namespace, kind, name) of a ReplicaSet or Job -> its controller, if any.
    parents: HashMap<(String, String, String), Option<OwnerRef>>,
}

impl Owners {
    /// Records a ReplicaSet or Job (`kind`) from its metadata.
    pub fn add(&mut self, kind: &str, metadata: &Value) {
        let get = |k: &str| metadata.get(k).and_then(Value::as_str).unwrap_or("");
        self.parents.insert(
            (get("namespace").into(), kind.into(), get("name").into()),
            controller_of(metadata),
        );
    }

    /// The workload of a pod and how it is restarted.
    pub fn resolve(&self, pod: &Value) -> (WorkloadRef, Restart) {
        let meta = pod.get("metadata").unwrap_or(&Value::Null);
        let namespace = meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let workload = |r: &OwnerRef| WorkloadRef {
            namespace: namespace.clone(),
            kind: r.kind.clone(),
            name: r.name.clone(),
            api_version: r.api_version.clone(),
        };
        let Some(owner) = controller_of(meta) else {
            let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
            return (
                WorkloadRef {
                    namespace: namespace.clone(),
                    kind: "Pod".into(),
                    name: name.into(),
                    api_version: "v1".into(),
                },
                Restart::BarePod,
            );
        };
        let parent = self
            .parents
            .get(&(namespace.clone(), owner.kind.clone(), owner.name.clone()));
        match owner.kind.as_str() {
            "ReplicaSet" if owner.api_version == "apps/v1" => match parent {
                Some(Some(p)) if p.kind == "Deployment" && p.api_version == "apps/v1" => {
                    (workload(p), Restart::Rollout)
                }
                Some(Some(p)) => (workload(p), Restart::Custom),
                _ => (workload(&owner), Restart::ReplicaSet),
            },
            "Job" if owner.api_version == "batch/v1" => match parent {
                Some(Some(p)) if p.kind == "CronJob" && p.api_version == "batch/v1" => {
                    (workload(p), Restart::CronJob)
                }
                Some(Some(p)) => (workload(p), Restart::Custom),
                _ => (workload(&owner), Restart::Job),
            },
            "StatefulSet" | "DaemonSet" if owner.api_version == "apps/v1" => {
                (workload(&owner), Restart::Rollout)
            }
            "ReplicationController" if owner.api_version == "v1" => {
                (workload(&owner), Restart::ReplicaSet)
            }
            _ => (workload(&owner), Restart::Custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn owned(kind: &str, api: &str, name: &str) -> Value {
        json!({"namespace": "shop", "name": name, "ownerReferences": [
            {"apiVersion": "v1", "kind": "Other", "name": "not-the-controller"},
            {"apiVersion": api, "kind": kind, "name": "owner", "controller": true}]})
    }

    fn pod(kind: &str, api: &str) -> Value {
        let mut meta = owned(kind, api, "p");
        meta["ownerReferences"][1]["name"] = json!("parent");
        json!({"metadata": meta})
    }

    #[test]
    fn owners_are_followed_as_the_controllers_set_them() {
        let mut owners = Owners::default();
        let mut rs = owned("Deployment", "apps/v1", "parent");
        rs["ownerReferences"][1]["name"] = json!("cart");
        owners.add("ReplicaSet", &rs);
        let (w, r) = owners.resolve(&pod("ReplicaSet", "apps/v1"));
        assert_eq!(
            (w.kind.as_str(), w.name.as_str(), r),
            ("Deployment", "cart", Restart::Rollout)
        );

        let mut job = owned("CronJob", "batch/v1", "parent");
        job["ownerReferences"][1]["name"] = json!("report");
        owners.add("Job", &job);
        let (w, r) = owners.resolve(&pod("Job", "batch/v1"));
        assert_eq!(
            (w.kind.as_str(), w.name.as_str(), r),
            ("CronJob", "report", Restart::CronJob)
        );

        let (w, r) = owners.resolve(&pod("StatefulSet", "apps/v1"));
        assert_eq!((w.kind.as_str(), r), ("StatefulSet", Restart::Rollout));
        let (w, r) = owners.resolve(&pod("Rollout", "argoproj.io/v1alpha1"));
        assert_eq!((w.kind.as_str(), r), ("Rollout", Restart::Custom));
        let (w, r) = owners.resolve(&json!({"metadata": {"name": "debug", "namespace": "shop"}}));
        assert_eq!(
            (w.kind.as_str(), w.name.as_str(), r),
            ("Pod", "debug", Restart::BarePod)
        );
    }

    #[test]
    fn owners_not_listed_are_taken_as_they_are() {
        let owners = Owners::default();
        let (w, r) = owners.resolve(&pod("ReplicaSet", "apps/v1"));
        assert_eq!(
            (w.kind.as_str(), w.name.as_str(), r),
            ("ReplicaSet", "parent", Restart::ReplicaSet)
        );
        let (w, r) = owners.resolve(&pod("Job", "batch/v1"));
        assert_eq!((w.kind.as_str(), r), ("Job", Restart::Job));
        // A ReplicaSet owned by an Argo Rollout: restarted through Argo.
        let mut owners = Owners::default();
        let mut rs = owned("Rollout", "argoproj.io/v1alpha1", "parent");
        rs["ownerReferences"][1]["name"] = json!("canary");
        owners.add("ReplicaSet", &rs);
        let (w, r) = owners.resolve(&pod("ReplicaSet", "apps/v1"));
        assert_eq!(
            (w.kind.as_str(), w.name.as_str(), r),
            ("Rollout", "canary", Restart::Custom)
        );
    }
}
