//! Replicas through the whole server: whatever a template does with the generated names, and
//! whatever names a client makes up, every answer is the answer a server that never saw the
//! workload before gives.

mod tls_client;

use std::path::PathBuf;

use base64::Engine as _;
use serde_json::{Value, json};
use tls_client::{Alpn, Running, app_pod, review};

/// A config whose only template writes `expression` into an annotation.
fn template_config(expression: &str) -> String {
    format!(
        "policy: enabled\n\
         defaultTemplates: [t]\n\
         templates:\n  \
           t: |\n    \
             metadata:\n      \
               annotations:\n        \
                 read: {{{{ ({expression}) | string }}}}\n    \
             spec:\n      \
               containers:\n      \
               - name: istio-proxy\n        \
                 image: registry.example/proxyv2:test\n"
    )
}

/// A server with `config` (else the embedded one), and the directory it reads it from.
async fn start(config: Option<&str>) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config_dir: Option<PathBuf> = None;
    if let Some(config) = config {
        std::fs::write(dir.path().join("config"), config).unwrap();
        config_dir = Some(dir.path().to_owned());
    }
    (Running::start(|s| s.config_dir = config_dir).await, dir)
}

/// A ReplicaSet's pod with its token volume, mounted, and `extra` volumes before it.
fn replica(token: &str, extra: &[&str]) -> Value {
    let mut pod = app_pod();
    pod["spec"]["containers"][0]["volumeMounts"] = json!([{"name": token, "readOnly": true,
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]);
    let mut volumes: Vec<Value> = extra
        .iter()
        .map(|name| json!({"name": name, "emptyDir": {}}))
        .collect();
    volumes.push(json!({"name": token, "projected": {"sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}));
    pod["spec"]["volumes"] = json!(volumes);
    pod
}

fn body(uid: &str, pod: Value) -> Value {
    let mut review = review("admission.k8s.io/v1", "CREATE", "default", pod);
    review["request"]["uid"] = json!(uid);
    review
}

/// The status and the decoded patch (or the body, when there is no patch).
async fn send(server: &Running, review: &Value) -> (u16, String) {
    let reply = server.client(Alpn::Http1).review(review).await;
    if reply.status != 200 {
        return (
            reply.status,
            String::from_utf8_lossy(&reply.body).into_owned(),
        );
    }
    let response = reply.json()["response"].clone();
    assert_eq!(response["uid"], review["request"]["uid"]);
    let patch = response["patch"].as_str().map(|p| {
        let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        String::from_utf8(bytes).unwrap()
    });
    (200, patch.unwrap_or_else(|| response.to_string()))
}

/// Sends each review to one server in turn, and each to a server of its own, and checks that
/// the answers are the same; returns how many the first server replayed.
async fn every_answer_is_a_fresh_one(config: Option<&str>, reviews: &[Value]) -> u64 {
    let (server, _dir) = start(config).await;
    for (i, review) in reviews.iter().enumerate() {
        let answered = send(&server, review).await;
        let fresh = send(&start(config).await.0, review).await;
        assert_eq!(answered, fresh, "review {i}");
    }
    server.shared.replicas.replayed()
}

const UIDS: [&str; 4] = [
    "705ab4f5-6393-11e8-b7cc-42010a800001",
    "705ab4f5-6393-11e8-b7cc-42010a800002",
    "705ab4f5-6393-11e8-b7cc-42010a800003",
    "705ab4f5-6393-11e8-b7cc-42010a800004",
];

/// Two replicas whose names end alike no longer teach the memo anything: a template that reads
/// into the name is answered in full, and the later replicas get their own last character.
#[tokio::test]
async fn names_that_end_alike_do_not_make_a_sliced_name_replayed() {
    let config = template_config("spec.volumes[0].name[-1:]");
    let tokens = [
        "kube-api-access-bbbbx",
        "kube-api-access-ccccx",
        "kube-api-access-dddds",
        "kube-api-access-ffffq",
    ];
    let reviews: Vec<Value> = UIDS
        .iter()
        .zip(tokens)
        .map(|(uid, token)| body(uid, replica(token, &[])))
        .collect();
    let replayed = every_answer_is_a_fresh_one(Some(&config), &reviews).await;
    assert_eq!(replayed, 0);
    let last = send(&start(Some(&config)).await.0, &reviews[3]).await.1;
    assert!(last.contains(r#""read":"q""#), "{last}");
}

/// The first review sent again (a retry) is one more replica: with the documented `name[-5:]`
/// template every replica still gets its own suffix.
#[tokio::test]
async fn a_repeated_review_verifies_nothing() {
    let config = template_config("spec.volumes[0].name[-5:]");
    let first = body(UIDS[0], replica("kube-api-access-x7k2p", &[]));
    let mut reviews = vec![first.clone(), first];
    for (uid, token) in UIDS[1..]
        .iter()
        .zip(["kube-api-access-b2d4q", "kube-api-access-9zz5m"])
    {
        reviews.push(body(uid, replica(token, &[])));
    }
    assert_eq!(
        every_answer_is_a_fresh_one(Some(&config), &reviews).await,
        0
    );
    // The default templates do not read the name: the same retry is replayed, correctly.
    assert_eq!(every_answer_is_a_fresh_one(None, &reviews).await, 3);
}

/// Client-chosen names: a token name that sorts on either side of another volume with the
/// prefix, a uid that is the name of a container the engine writes, a uid that is also a bare
/// number in the pod. Each answer is a fresh server's, a 400 included.
#[tokio::test]
async fn client_chosen_names_get_the_answer_of_a_fresh_server() {
    // Sorting: another volume with the prefix, between the replicas' names.
    let reviews: Vec<Value> = UIDS
        .iter()
        .zip([
            "kube-api-access-bbbbb",
            "kube-api-access-zzzzz",
            "kube-api-access-ccccc",
            "kube-api-access-xxxxx",
        ])
        .map(|(uid, token)| body(uid, replica(token, &["kube-api-access-mmmmm", "data"])))
        .collect();
    every_answer_is_a_fresh_one(None, &reviews).await;
    every_answer_is_a_fresh_one(
        Some(&template_config(
            "spec.volumes | map(attribute='name') | sort | join(',')",
        )),
        &reviews,
    )
    .await;

    // A uid that is a constant the engine writes, then another replica.
    let reviews = [
        body("istio-proxy", replica("kube-api-access-x7k2p", &[])),
        body("istio-init", replica("kube-api-access-b2d4q", &[])),
        body(UIDS[2], replica("kube-api-access-9zz5m", &[])),
    ];
    every_answer_is_a_fresh_one(None, &reviews).await;

    // A uid that is also a bare number in the pod, then one that is out of range as a number.
    let numbered = |uid: &str| {
        let mut pod = replica("kube-api-access-x7k2p", &[]);
        pod["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(12345678);
        let mut text = serde_json::to_string(&body(uid, pod)).unwrap();
        text = text.replace("12345678,", &format!("{uid},"));
        text
    };
    let (server, _dir) = start(None).await;
    for uid in ["12345678", "1e999999", UIDS[0], UIDS[1]] {
        let text = numbered(uid);
        let send_raw = |server: &Running| {
            let client = server.client(Alpn::Http1);
            let text = text.clone();
            async move {
                let reply = client
                    .send(
                        "POST",
                        "/inject",
                        Some("application/json"),
                        text.into_bytes(),
                    )
                    .await;
                reply.status
            }
        };
        let answered = send_raw(&server).await;
        let fresh = send_raw(&start(None).await.0).await;
        assert_eq!(answered, fresh, "uid {uid}");
        if uid == "1e999999" {
            assert_eq!(answered, 400);
        }
    }
}
