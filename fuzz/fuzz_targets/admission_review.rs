//! A request body, exactly as the server reads it: decode the AdmissionReview, run the engine,
//! build the response. Nothing may panic; every answer to a decoded review echoes its uid and
//! apiVersion; a patch applies to the object that was sent. The head the server reads first
//! (for replayed answers) exists only for bodies the review reads too, and agrees with it.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sidecar_injector::admission::{self, AdmitError, Decision, Head, Review};
use sidecar_injector::config::Config;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(Config::embedded)
}

fuzz_target!(|data: &[u8]| {
    let head = Head::from_slice(data);
    let Ok(review) = Review::from_slice(data) else {
        assert!(
            head.is_none(),
            "a head for a body that is not a review: {head:?}"
        );
        return;
    };
    if let Some(head) = &head {
        let pod = review.object.as_ref().expect("a head has a pod");
        assert_eq!(head.api_version, review.api_version);
        assert_eq!(head.uid, review.uid);
        assert_eq!(head.namespace, review.namespace);
        assert_eq!(head.dry_run, review.dry_run);
        assert_eq!(head.display_name, review.display_name());
        let node = pod.pointer("/spec/nodeName").and_then(Value::as_str);
        assert_eq!(head.node_name.as_deref(), node.filter(|n| !n.is_empty()));
        let token = pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.get("name").and_then(Value::as_str))
            .find(|n| n.starts_with("kube-api-access-"));
        assert_eq!(head.token_volume.as_deref(), token);
        assert!(review.group.is_empty() && review.kind == "Pod" && review.operation == "CREATE");
    }
    // The cluster-wide native mode comes from outside the body; the body's length picks it so
    // both modes are explored without spending input bytes on it.
    let native = data.len() % 2 == 0;
    let decision = match admission::decide(config(), &review, native) {
        Ok(decision) => decision,
        Err(AdmitError::Panic(message)) => panic!("the engine panicked: {message}"),
        Err(AdmitError::Inject(_)) => return,
    };
    // The answer goes out as JSON text.
    let response: serde_json::Value = serde_json::from_slice(&admission::response(
        review.api_version,
        &review.uid,
        &decision,
    ))
    .expect("the response is JSON");
    assert_eq!(response["apiVersion"], review.api_version.as_str());
    assert_eq!(response["response"]["uid"], review.uid.as_str());
    if let Decision::Patch { patch, .. } = &decision {
        let patch: json_patch::Patch = serde_json::from_slice(patch).expect("the patch is a patch");
        let mut object = review.object.clone().expect("a patch needs an object");
        json_patch::patch(&mut object, &patch).expect("the patch applies to the sent object");
    }
});
