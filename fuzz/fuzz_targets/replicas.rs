//! Replicas of generated pods (see `pods.rs`) through the server's replica memo, as the API
//! server sends them: each with its own review uid and its own token volume, mounted in every
//! container, under the embedded templates or an operator template that slices, measures,
//! compares, sorts or copies the token volume's name. Token names share prefixes and suffixes
//! and repeat (a retried review). Invariants: nothing panics; every answer, replayed or not, is
//! the full answer to its own review; when the first replica is injected, so are the others, and
//! each answer applies to its own pod; under the embedded templates a remembered shape is
//! replayed for every later replica.

#![no_main]

mod pods;

use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pods::{Input, pod};
use serde_json::{Value, json};
use sidecar_injector::admission::{self, Decision, Review};
use sidecar_injector::config::{Config, Sources};
use sidecar_injector::replicas::ReplicaMemo;

/// What operator templates do with the token volume's name (`NAME`), besides the embedded ones.
const READINGS: [&str; 6] = [
    "NAME[-1:]",
    "NAME | length",
    "NAME[-1:] in 'bcdfghjklm'",
    "spec.volumes | map(attribute='name') | sort | join(',')",
    "spec.volumes | map(attribute='name') | list",
    "NAME > 'kube-api-access-m'",
];

/// The embedded config (`None`) or one whose only template shows `READINGS[i]` in an annotation.
fn config(reading: Option<usize>) -> Arc<Config> {
    static CONFIGS: OnceLock<Vec<Arc<Config>>> = OnceLock::new();
    let configs = CONFIGS.get_or_init(|| {
        let mut all = vec![Arc::new(Config::embedded())];
        for reading in READINGS {
            let name = "(spec.volumes | selectattr('name', 'startingwith', 'kube-api-access-') | first).name";
            let expr = reading.replace("NAME", &format!("({name})"));
            let mut sources = Sources::embedded();
            sources.config = format!(
                "templates:\n  t: |\n    metadata:\n      annotations:\n        read: {{{{ ({expr}) | string }}}}\n    spec:\n      containers:\n      - name: istio-proxy\n        image: proxy\ndefaultTemplates: [t]\npolicy: enabled\n"
            );
            all.push(Arc::new(Config::from_sources(&sources).expect("the template compiles")));
        }
        all
    });
    Arc::clone(&configs[reading.map_or(0, |r| r + 1)])
}

/// The API server's alphabet for the token volume's suffix.
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// How the replicas are named: a template choice, and for each of four replicas which of a few
/// names it gets (names that share all but their first or last character; a repeat is a retry).
#[derive(Debug, Arbitrary)]
struct Names {
    reading: u8,
    suffixes: [[u8; 5]; 4],
    repeat: [bool; 4],
}

/// The four token names and uids: each suffix drawn from the alphabet; a replica marked as a
/// repeat gets the previous one's names.
fn names(n: &Names) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, suffix) in n.suffixes.iter().enumerate() {
        if n.repeat[i] && i > 0 {
            let last = out[i - 1].clone();
            out.push(last);
            continue;
        }
        let suffix: String = suffix
            .iter()
            .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
            .collect();
        out.push((
            format!("705ab4f5-6393-11e8-b7cc-42010a80000{i}"),
            format!("kube-api-access-{suffix}"),
        ));
    }
    out
}

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

fuzz_target!(|input: (Names, Input)| {
    let (naming, input) = input;
    let base = pod(&input);
    let reading = (usize::from(naming.reading) % (READINGS.len() + 1)).checked_sub(1);
    let config = config(reading);
    let memo = ReplicaMemo::default();
    let mut first_injected = false;
    let replicas = names(&naming);
    for (i, (uid, token)) in replicas.iter().enumerate() {
        let pod = replica(&base, token);
        let body = serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE", "namespace": "default", "object": pod}
        }))
        .expect("a JSON value serializes");
        // Read whole for the checks below; the memo is used as the server uses it.
        let Ok(review) = Review::from_slice(&body) else {
            return;
        };
        let native = input.native;
        let full = || admission::decide(&config, &review, native);
        let decision = memo
            .answer(&config, &body, native)
            .expect("a body that reads as a review");
        // Every answer is its own review's full answer, whatever the template does.
        let fresh = full();
        match (&decision, &fresh) {
            (Ok(Decision::Patch { patch: a, warnings: wa, .. }), Ok(Decision::Patch { patch: b, warnings: wb, .. })) => {
                assert_eq!(
                    String::from_utf8_lossy(a),
                    String::from_utf8_lossy(b),
                    "replica {i}: the answer is not the full answer"
                );
                assert_eq!(wa, wb, "replica {i}: the warnings are not the full answer's");
            }
            (Ok(a), Ok(b)) => assert_eq!(a.outcome(), b.outcome(), "replica {i}"),
            (a, b) => assert_eq!(a.is_ok(), b.is_ok(), "replica {i}"),
        }
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
    // A shape is remembered when the pod's text holds the names only as whole name values;
    // under the embedded templates, which never read the token volume, it is then replayed for
    // every later replica.
    if reading.is_none() && memo.replayable() == 1 {
        assert_eq!(memo.replayed(), 3, "a remembered shape was not replayed");
    }
});
