//! The workload a pod belongs to, named as istiod names it (`kube.GetDeployMetaFromPod`).
//!
//! A pod made by a controller (its name generated, `generateName` set) belongs to the object its
//! controller owner reference names: ReplicaSets of a Deployment (or an Argo Rollout) and Jobs of
//! a CronJob are traced one step further by their naming conventions; any other owner, kinds
//! istiod knows nothing about included (OpenKruise CloneSets, KubeVirt, operators' own kinds),
//! is the workload itself. A pod named by hand is its own workload.

use serde_json::Value;

use super::{Workload, pod};

/// Derives the workload from the pod's controller owner reference and its name.
pub(crate) fn of_pod(p: &Value) -> Workload {
    let meta = pod::metadata(p);
    let labels = pod::labels(p);
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    // istiod looks at the owners only of a pod whose name is generated.
    let generated = meta
        .and_then(|m| m.get("generateName"))
        .and_then(Value::as_str)
        .is_some_and(|g| !g.is_empty());
    let controller = meta
        .filter(|_| generated)
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .and_then(|refs| {
            refs.iter()
                .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        });

    let Some(owner) = controller else {
        return Workload {
            kind: "Pod".into(),
            name: pod_name(p),
            api_version: "v1".into(),
        };
    };
    let field = |k: &str| {
        owner
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let (kind, mut name, api_version) = (field("kind"), field("name"), field("apiVersion"));
    if name.is_empty() {
        name = pod_name(p);
    }

    if kind == "ReplicaSet" {
        if let Some(hash) = label("rollouts-pod-template-hash")
            && let Some(base) = name.strip_suffix(&format!("-{hash}"))
        {
            return Workload {
                kind: "Rollout".into(),
                name: base.into(),
                api_version: "argoproj.io/v1alpha1".into(),
            };
        }
        if let Some(hash) = label("pod-template-hash")
            && let Some(base) = name.strip_suffix(&format!("-{hash}"))
        {
            return Workload {
                kind: "Deployment".into(),
                name: base.into(),
                api_version: "apps/v1".into(),
            };
        }
    }
    if kind == "ReplicationController" && label("deploymentconfig").is_some() {
        let base = name
            .rsplit_once('-')
            .filter(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .map_or(name.as_str(), |(b, _)| b);
        return Workload {
            kind: "DeploymentConfig".into(),
            name: base.into(),
            api_version: "apps.openshift.io/v1".into(),
        };
    }
    if kind == "Job"
        && let Some(cronjob) = cronjob_name(&name)
    {
        return Workload {
            kind: "CronJob".into(),
            name: cronjob.into(),
            api_version: "batch/v1".into(),
        };
    }
    Workload {
        kind,
        name,
        api_version,
    }
}

/// A Job made by a CronJob is named `<cronjob>-<8 to 10 digits>` (the scheduled time).
pub(crate) fn cronjob_name(job: &str) -> Option<&str> {
    let (base, suffix) = job.rsplit_once('-')?;
    ((8..=10).contains(&suffix.len())
        && suffix.bytes().all(|b| b.is_ascii_digit())
        && !base.is_empty())
    .then_some(base)
}

/// The pod's name, or its `generateName` without the trailing dash when the API server has not
/// named it yet.
pub(crate) fn pod_name(p: &Value) -> String {
    let meta = pod::metadata(p);
    let get = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let name = get("name");
    if !name.is_empty() {
        return name.to_string();
    }
    get("generateName").trim_end_matches('-').to_string()
}

/// `kubernetes://apis/<apiVersion>/namespaces/<ns>/<kind>s/<name>`, istiod's ISTIO_META_OWNER.
pub(crate) fn owner_url(w: &Workload, namespace: &str) -> String {
    format!(
        "kubernetes://apis/{}/namespaces/{}/{}s/{}",
        w.api_version,
        namespace,
        w.kind.to_lowercase(),
        w.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_owned_by(kind: &str, name: &str, labels: Value) -> Value {
        json!({"metadata": {"generateName": format!("{name}-"), "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": name, "controller": true}]}})
    }

    #[test]
    fn deployment_from_replicaset_with_template_hash() {
        let w = of_pod(&pod_owned_by(
            "ReplicaSet",
            "web-5d8f9c7b4",
            json!({"pod-template-hash": "5d8f9c7b4"}),
        ));
        assert_eq!(
            (w.kind.as_str(), w.name.as_str(), w.api_version.as_str()),
            ("Deployment", "web", "apps/v1")
        );
        assert_eq!(
            owner_url(&w, "shop"),
            "kubernetes://apis/apps/v1/namespaces/shop/deployments/web"
        );
    }

    #[test]
    fn a_custom_controller_is_the_workload() {
        let p = json!({"metadata": {"generateName": "web-", "ownerReferences": [
            {"apiVersion": "apps.example.com/v1", "kind": "Other", "name": "not-the-controller"},
            {"apiVersion": "foo/v1", "kind": "Bar", "name": "web", "controller": true}]}});
        let w = of_pod(&p);
        assert_eq!(
            (w.kind.as_str(), w.name.as_str(), w.api_version.as_str()),
            ("Bar", "web", "foo/v1")
        );
        assert_eq!(
            owner_url(&w, "shop"),
            "kubernetes://apis/foo/v1/namespaces/shop/bars/web"
        );
        // OpenKruise names CloneSet pods itself, but still from the template's generateName.
        let p = json!({"metadata": {"name": "cs-x7k2p", "generateName": "cs-", "ownerReferences": [
            {"apiVersion": "apps.kruise.io/v1alpha1", "kind": "CloneSet", "name": "cs", "controller": true}]}});
        assert_eq!(
            owner_url(&of_pod(&p), "shop"),
            "kubernetes://apis/apps.kruise.io/v1alpha1/namespaces/shop/clonesets/cs"
        );
    }

    #[test]
    fn owners_count_only_for_generated_pods() {
        // A pod named by hand is its own workload, whoever owns it (istiod reads the owners only
        // when the name is generated).
        let p = json!({"metadata": {"name": "manual", "ownerReferences": [
            {"apiVersion": "foo/v1", "kind": "Bar", "name": "web", "controller": true}]}});
        let w = of_pod(&p);
        assert_eq!(
            (w.kind.as_str(), w.name.as_str(), w.api_version.as_str()),
            ("Pod", "manual", "v1")
        );
        // Owners that are not the controller do not count.
        let p = json!({"metadata": {"generateName": "web-", "ownerReferences": [
            {"apiVersion": "foo/v1", "kind": "Bar", "name": "web"}]}});
        assert_eq!(of_pod(&p).kind, "Pod");
        // A controller reference without a name leaves the pod's.
        let p = json!({"metadata": {"generateName": "web-", "ownerReferences": [
            {"apiVersion": "foo/v1", "kind": "Bar", "controller": true}]}});
        let w = of_pod(&p);
        assert_eq!((w.kind.as_str(), w.name.as_str()), ("Bar", "web"));
    }

    #[test]
    fn rollouts_and_deploymentconfigs() {
        let w = of_pod(&pod_owned_by(
            "ReplicaSet",
            "canary-6c9f8d7b5",
            json!({"rollouts-pod-template-hash": "6c9f8d7b5"}),
        ));
        assert_eq!(
            (w.kind.as_str(), w.name.as_str(), w.api_version.as_str()),
            ("Rollout", "canary", "argoproj.io/v1alpha1")
        );
        let w = of_pod(&pod_owned_by(
            "ReplicationController",
            "frontend-3",
            json!({"deploymentconfig": "frontend"}),
        ));
        assert_eq!(
            (w.kind.as_str(), w.name.as_str(), w.api_version.as_str()),
            ("DeploymentConfig", "frontend", "apps.openshift.io/v1")
        );
    }

    #[test]
    fn bare_replicaset_and_cronjob_and_pod() {
        let w = of_pod(&pod_owned_by("ReplicaSet", "web-abc", json!({})));
        assert_eq!(
            (w.kind.as_str(), w.name.as_str()),
            ("ReplicaSet", "web-abc")
        );
        let w = of_pod(&pod_owned_by("Job", "nightly-28930140", json!({})));
        assert_eq!(
            (w.kind.as_str(), w.name.as_str(), w.api_version.as_str()),
            ("CronJob", "nightly", "batch/v1")
        );
        let w = of_pod(&pod_owned_by("Job", "migrate", json!({})));
        assert_eq!((w.kind.as_str(), w.name.as_str()), ("Job", "migrate"));
        let w = of_pod(&json!({"metadata": {"generateName": "debug-"}}));
        assert_eq!(
            (w.kind.as_str(), w.name.as_str(), w.api_version.as_str()),
            ("Pod", "debug", "v1")
        );
    }
}
