//! Replicas of generated pods (see `pods.rs`) through the server's replica memo, as the API
//! server sends them: each with its own review uid and its own token volume, mounted in every
//! container. Invariants: nothing panics; when the first replica is injected, the second one's
//! full answer agrees with the first one's renamed, so the third is replayed (debug assertions
//! also compare that replay with a full answer); each answer applies to its own pod.

#![no_main]

mod pods;

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use pods::{Input, pod};
use serde_json::{Value, json};
use sidecar_injector::admission::{self, Decision, Head, Review};
use sidecar_injector::config::Config;
use sidecar_injector::replicas::{Key, ReplicaMemo};

fn config() -> Arc<Config> {
    static CONFIG: OnceLock<Arc<Config>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| Arc::new(Config::embedded())))
}

const TOKENS: [&str; 3] = [
    "kube-api-access-x7k2p",
    "kube-api-access-b2d4q",
    "kube-api-access-9zz5m",
];
const UIDS: [&str; 3] = [
    "705ab4f5-6393-11e8-b7cc-42010a800001",
    "705ab4f5-6393-11e8-b7cc-42010a800002",
    "705ab4f5-6393-11e8-b7cc-42010a800003",
];

/// The pod with the token volume the ServiceAccount admission adds, where the pod has room for
/// it (fields of the wrong type are left as they are).
fn replica(base: &Value, token: &str) -> Value {
    let mut pod = base.clone();
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return pod;
    };
    let volume = json!({"name": token, "projected": {"sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}});
    match spec.entry("volumes").or_insert_with(|| json!([])) {
        Value::Array(volumes) => volumes.push(volume),
        Value::Null => *spec.get_mut("volumes").unwrap_or(&mut Value::Null) = json!([volume]),
        _ => {}
    }
    for list in ["initContainers", "containers"] {
        let Some(Value::Array(containers)) = spec.get_mut(list) else {
            continue;
        };
        for c in containers.iter_mut().filter_map(Value::as_object_mut) {
            let mount = json!({"name": token, "readOnly": true,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"});
            if let Value::Array(mounts) = c.entry("volumeMounts").or_insert_with(|| json!([])) {
                mounts.push(mount);
            }
        }
    }
    pod
}

fuzz_target!(|input: Input| {
    let base = pod(&input);
    let config = config();
    let memo = ReplicaMemo::default();
    let mut first_injected = false;
    for (i, (uid, token)) in UIDS.iter().zip(TOKENS).enumerate() {
        let pod = replica(&base, token);
        let body = serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE", "namespace": "default", "object": pod}
        }))
        .expect("a JSON value serializes");
        // Read whole for the checks below. The memo is used as the server uses it: the head
        // first, a replay when the shape has a verified answer, else the review through the memo.
        let Ok(review) = Review::from_slice(&body) else {
            return;
        };
        let native = input.native;
        let full = || admission::decide(&config, &review, native);
        let key = Head::from_slice(&body)
            .and_then(|head| Key::new(&body, &head.uid, head.token_volume.as_deref(), native));
        let decision = match key.as_ref().and_then(|key| memo.replay(&config, key, full)) {
            Some(replayed) => Ok(replayed),
            None => {
                let key = key.or_else(|| Key::of_review(&body, &review, native));
                memo.decide(&config, key, full)
            }
        };
        let Ok(Decision::Patch { patch, .. }) = decision else {
            assert!(
                !first_injected,
                "replica {i} is not injected, the first was"
            );
            return;
        };
        first_injected |= i == 0;
        let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("the patch is JSON");
        let mut patched = review.object.clone().expect("a pod");
        json_patch::patch(&mut patched, &patch).expect("the patch applies to its own pod");
    }
    // A shape is remembered when the pod's text holds the names only as whole tokens, which
    // generated text can break (a name followed by a letter); only then is a replay expected.
    if memo.len() == 1 {
        assert_eq!(memo.replayed(), 1, "the second replica refuted the replay");
    }
});
