//! Jobs and CronJobs: a classic sidecar keeps a Job pod from completing.
//!
//! A Job's pod is done when all its containers have exited, but a classic `istio-proxy` runs
//! until it is told to stop. Native sidecars (init containers with `restartPolicy: Always`) do
//! not count, so they fix this; otherwise the application has to stop the agent itself. This
//! module recognises Job pods so the caller can say so in an admission warning.

use serde_json::Value;

/// The Job that controls a pod, and the CronJob that made the Job when its name says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOwner {
    pub job: String,
    pub cronjob: Option<String>,
}

/// The controlling `batch` Job of `pod`, from its owner references.
///
/// The CronJob is derived as istiod does (`GetDeployMetaFromPod`): the CronJob controller names
/// each Job `<cronjob>-<scheduled time in minutes>`, so a suffix of 8 to 10 digits is taken off.
pub fn job_owner(pod: &Value) -> Option<JobOwner> {
    let refs = pod.get("metadata")?.get("ownerReferences")?.as_array()?;
    // Only the controller owns the pod's lifecycle; other owners (garbage-collection links)
    // say nothing about whether it must complete.
    let controller = refs
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))?;
    let kind = controller.get("kind").and_then(Value::as_str)?;
    let api_version = controller.get("apiVersion").and_then(Value::as_str)?;
    if kind != "Job" || api_version.split_once('/').map(|(group, _)| group) != Some("batch") {
        return None;
    }
    let job = controller.get("name").and_then(Value::as_str)?;
    Some(JobOwner {
        job: job.to_owned(),
        cronjob: cronjob_of(job).map(str::to_owned),
    })
}

/// `^(.+)-\d{8,10}$` without a regex: the CronJob part of a Job name.
fn cronjob_of(job: &str) -> Option<&str> {
    let (prefix, suffix) = job.rsplit_once('-')?;
    let digits = suffix.bytes().all(|b| b.is_ascii_digit());
    (digits && (8..=10).contains(&suffix.len()) && !prefix.is_empty()).then_some(prefix)
}

/// A one-line admission warning (kubectl prints it) saying why the Job will hang and how to fix
/// it. It names the CronJob when there is one, because that is the object the user edits. The
/// API server may truncate warnings past 256 characters, so the text is kept close to that.
pub fn job_warning(owner: &JobOwner) -> String {
    let subject = match &owner.cronjob {
        Some(cronjob) => format!("CronJob {cronjob:?}"),
        None => format!("Job {:?}", owner.job),
    };
    format!("pods of {subject}{JOB_WARNING_TAIL}")
}

const JOB_WARNING_TAIL: &str = " never complete while the istio-proxy sidecar runs. Fix: annotation \
     sidecar.istio.io/nativeSidecar: \"true\" (Kubernetes 1.33+) or \
     sidecarInjectorWebhook.nativeSidecarsForJobs: true, or the app POSTs \
     http://localhost:15020/quitquitquit at exit";

/// Whether an engine warning is the one [`job_warning`] writes.
pub fn is_job_warning(text: &str) -> bool {
    text.starts_with("pods of ") && text.ends_with(JOB_WARNING_TAIL)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod_owned_by(refs: Value) -> Value {
        json!({"metadata": {"name": "p", "ownerReferences": refs}})
    }

    fn job_ref(name: &str) -> Value {
        json!({"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": "u", "controller": true})
    }

    #[test]
    fn a_job_pod_names_its_job() {
        let pod = pod_owned_by(json!([job_ref("migrate")]));
        assert_eq!(
            job_owner(&pod),
            Some(JobOwner {
                job: "migrate".into(),
                cronjob: None
            })
        );
    }

    #[test]
    fn a_cronjob_made_job_names_the_cronjob() {
        for (job, cronjob) in [
            ("backup-28904520", Some("backup")),
            ("nightly-backup-2890452012", Some("nightly-backup")),
            ("backup-1234567", None),
            ("backup-12345678901", None),
            ("backup-2890452a", None),
            ("-28904520", None),
        ] {
            let owner = job_owner(&pod_owned_by(json!([job_ref(job)]))).expect("a Job pod");
            assert_eq!(owner.cronjob.as_deref(), cronjob, "{job}");
            assert_eq!(owner.job, job);
        }
    }

    #[test]
    fn other_controllers_and_plain_pods_are_not_jobs() {
        let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d4f", "controller": true});
        assert_eq!(job_owner(&pod_owned_by(json!([rs]))), None);
        let foreign_job =
            json!({"apiVersion": "example.com/v1", "kind": "Job", "name": "j", "controller": true});
        assert_eq!(job_owner(&pod_owned_by(json!([foreign_job]))), None);
        assert_eq!(job_owner(&json!({"metadata": {"name": "p"}})), None);
        assert_eq!(job_owner(&json!("not a pod")), None);
    }

    #[test]
    fn a_job_that_is_not_the_controller_does_not_count() {
        let mut owner = job_ref("migrate");
        owner["controller"] = json!(false);
        assert_eq!(job_owner(&pod_owned_by(json!([owner.clone()]))), None);
        owner.as_object_mut().map(|o| o.shift_remove("controller"));
        assert_eq!(job_owner(&pod_owned_by(json!([owner]))), None);
        // The controller is found among several owners.
        let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "c"});
        let pod = pod_owned_by(json!([other, job_ref("j")]));
        assert_eq!(job_owner(&pod).map(|o| o.job), Some("j".to_owned()));
    }

    #[test]
    fn the_warning_names_the_owner_and_every_fix() {
        let job = JobOwner {
            job: "migrate".into(),
            cronjob: None,
        };
        let cron = JobOwner {
            job: "backup-28904520".into(),
            cronjob: Some("backup".into()),
        };
        for (owner, subject) in [(job, "Job \"migrate\""), (cron, "CronJob \"backup\"")] {
            let w = job_warning(&owner);
            assert!(w.contains(subject), "{w}");
            assert!(
                w.contains("sidecar.istio.io/nativeSidecar: \"true\""),
                "{w}"
            );
            assert!(w.contains("1.33"), "{w}");
            assert!(
                w.contains("sidecarInjectorWebhook.nativeSidecarsForJobs: true"),
                "{w}"
            );
            assert!(w.contains("POST"), "{w}");
            assert!(w.contains("http://localhost:15020/quitquitquit"), "{w}");
            assert!(w.len() < 300, "{} characters: {w}", w.len());
            assert!(!w.contains('\n'), "{w}");
        }
    }
}
