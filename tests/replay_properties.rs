//! The replica memo's answers are full answers, for any sequence of generated names (shared
//! prefixes and suffixes, repeats) under templates that slice, measure, compare, sort or copy
//! the token volume's name, and under the embedded ones.

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Value, json};
use sidecar_injector::admission::{self, Decision, Review};
use sidecar_injector::config::{Config, Sources};
use sidecar_injector::replicas::{ReplicaMemo, TOKEN_ALPHABET};

const NAME: &str =
    "(spec.volumes | selectattr('name', 'startingwith', 'kube-api-access-') | first).name";

const READINGS: [&str; 7] = [
    "NAME[-1:]",
    "NAME[:-1]",
    "NAME | length",
    "NAME[-1:] in 'bcdfghjklm'",
    "NAME > 'kube-api-access-m'",
    "spec.volumes | map(attribute='name') | sort | join(',')",
    "spec.volumes | map(attribute='name') | list",
];

fn configs() -> Vec<Arc<Config>> {
    let mut all = vec![Arc::new(Config::embedded())];
    for reading in READINGS {
        let expression = reading.replace("NAME", &format!("({NAME})"));
        let mut sources = Sources::embedded();
        sources.config = format!(
            "templates:\n  t: |\n    metadata:\n      annotations:\n        read: {{{{ ({expression}) | string }}}}\n    spec:\n      containers:\n      - name: istio-proxy\n        image: proxy\n      - name: app\n        volumeMounts:\n        - name: {{{{ {NAME} }}}}\n          mountPath: /copied\ndefaultTemplates: [t]\npolicy: enabled\n"
        );
        all.push(Arc::new(Config::from_sources(&sources).unwrap()));
    }
    all
}

fn body(uid: &str, token: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE", "namespace": "default",
            "object": {"metadata": {"generateName": "web-5d8f7b9c6-", "labels": {"app": "web"}},
                "spec": {"containers": [
                        {"name": "app", "image": "web", "volumeMounts": [{"name": token,
                            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]},
                        {"name": "istio-proxy", "volumeMounts": [{"name": token, "mountPath": "/t"}]}],
                    "volumes": [{"name": "data", "emptyDir": {}},
                        {"name": token, "projected": {"sources": [
                            {"serviceAccountToken": {"path": "token"}}]}}]}}}
    }))
    .unwrap()
}

/// The memo's answer, used as the server uses it (head first).
fn through_memo(memo: &ReplicaMemo, config: &Arc<Config>, body: &[u8]) -> Option<Value> {
    comparable(memo.answer(config, body, false)?.ok()?)
}

fn comparable(decision: Decision) -> Option<Value> {
    match decision {
        Decision::Patch {
            patch, warnings, ..
        } => Some(json!({"patch": String::from_utf8(patch).ok()?, "warnings": warnings})),
        other => Some(json!(other.outcome())),
    }
}

/// Token names built from a few stems, so that they share prefixes and suffixes; a repeat is the
/// previous review again.
fn replicas() -> impl Strategy<Value = Vec<(usize, String, bool)>> {
    let suffix = prop::collection::vec(0..TOKEN_ALPHABET.len(), 5).prop_map(|ix| {
        ix.into_iter()
            .map(|i| char::from(TOKEN_ALPHABET[i]))
            .collect::<String>()
    });
    let stem = prop::sample::select(vec!["bbbb", "bbbc", "cbbb", "x7k2", "zzzz"]);
    let name = prop_oneof![
        suffix,
        (stem.clone(), prop::sample::select(TOKEN_ALPHABET.to_vec()))
            .prop_map(|(s, c)| format!("{s}{}", char::from(c))),
        (prop::sample::select(TOKEN_ALPHABET.to_vec()), stem)
            .prop_map(|(c, s)| format!("{}{s}", char::from(c))),
    ];
    prop::collection::vec((0..READINGS.len() + 1, name, any::<bool>()), 2..6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn every_replayed_answer_is_the_full_answer(replicas in replicas()) {
        let configs = configs();
        let config = &configs[replicas[0].0];
        let memo = ReplicaMemo::default();
        let mut last: Option<Vec<u8>> = None;
        for (i, (_, suffix, repeat)) in replicas.iter().enumerate() {
            let body = match (&last, repeat) {
                (Some(last), true) => last.clone(),
                _ => body(&format!("705ab4f5-6393-11e8-b7cc-42010a8000{i:02}"), &format!("kube-api-access-{suffix}")),
            };
            let review = Review::from_slice(&body).unwrap();
            let fresh = comparable(admission::decide(config, &review, false).unwrap());
            prop_assert_eq!(through_memo(&memo, config, &body), fresh, "replica {}", i);
            last = Some(body);
        }
        // The embedded templates never read the token volume: every replica after the first is
        // replayed. A template that reads it never is.
        let expected = if replicas[0].0 == 0 { replicas.len() as u64 - 1 } else { 0 };
        prop_assert_eq!(memo.replayed(), expected);
    }
}
