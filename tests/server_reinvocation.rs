//! The reinvocation review through the real server: after the first answer the API server
//! defaults the pod, its ServiceAccount admission mounts the token into `istio-init` and
//! `istio-proxy`, a later webhook adds to the proxy, and the pod is reviewed again
//! (`reinvocationPolicy: IfNeeded`). That review gets no patch, or only what a later webhook's
//! new container requires, and is counted as a re-injection, not as a second injected pod.

mod apiserver;
mod tls_client;

use base64::Engine as _;
use serde_json::{Value, json};
use tls_client::{Alpn, Running, app_pod, review};

const TOKEN: &str = "kube-api-access-7fq2m";

async fn send(server: &Running, uid: &str, pod: &Value) -> Value {
    let mut review = review("admission.k8s.io/v1", "CREATE", "default", pod.clone());
    review["request"]["uid"] = json!(uid);
    let reply = server.client(Alpn::H2).review(&review).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let response = reply.json()["response"].clone();
    assert_eq!(response["uid"], uid);
    assert_eq!(response["allowed"], true);
    response
}

fn patched(pod: &Value, response: &Value) -> (Value, json_patch::Patch) {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("a patch"))
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).unwrap();
    (out, patch)
}

fn proxy_mut(pod: &mut Value) -> &mut Value {
    pod["spec"]
        .as_object_mut()
        .unwrap()
        .values_mut()
        .filter_map(Value::as_array_mut)
        .flatten()
        .find(|c| c["name"] == "istio-proxy")
        .expect("the proxy")
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l[name.len()..].trim().parse().ok())
}

#[tokio::test]
async fn the_reinvocation_review_gets_no_patch_and_is_counted_as_a_reinjection() {
    let server = Running::start(|_| {}).await;
    // The first review: the pod as the API server sends it, token already mounted into the app.
    let created = apiserver::admitted(&app_pod(), TOKEN);
    let first = send(&server, "6a4b2c10-0000-4000-8000-000000000001", &created).await;
    assert_eq!(first["auditAnnotations"]["outcome"], "injected");
    let (injected, _) = patched(&created, &first);

    // What the API server stores, then a later webhook's env var on the proxy.
    let mut stored = apiserver::admitted(&injected, TOKEN);
    proxy_mut(&mut stored)["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "LATER_WEBHOOK", "value": "kept"}));
    let second = send(&server, "6a4b2c10-0000-4000-8000-000000000002", &stored).await;
    assert!(second.get("patch").is_none(), "{second}");
    assert_eq!(second["auditAnnotations"]["outcome"], "reinjected");
    assert_eq!(second["auditAnnotations"]["reinjection"], "unchanged");

    // A later webhook added a container with an HTTP probe: only what it requires changes.
    let mut grown = stored.clone();
    grown["spec"]["containers"].as_array_mut().unwrap().insert(
        0,
        json!({"name": "sidecar-logs", "image": "logs:3", "imagePullPolicy": "IfNotPresent",
            "readinessProbe": {"httpGet": {"path": "/ok", "port": 9000, "scheme": "HTTP"},
                "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1,
                "failureThreshold": 3},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File", "resources": {}}),
    );
    let third = send(&server, "6a4b2c10-0000-4000-8000-000000000003", &grown).await;
    assert_eq!(third["auditAnnotations"]["outcome"], "reinjected");
    assert_eq!(third["auditAnnotations"]["reinjection"], "updated");
    let (after, patch) = patched(&grown, &third);
    let proxy_at = after["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .position(|c| c["name"] == "istio-proxy")
        .expect("classic proxy");
    for op in &patch.0 {
        let path = serde_json::to_value(op).unwrap()["path"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            path.starts_with("/spec/containers/0/readinessProbe/")
                || path.starts_with(&format!("/spec/containers/{proxy_at}/env/")),
            "unexpected operation {path}"
        );
    }
    let proxy = &after["spec"]["containers"][proxy_at];
    let env = proxy["env"].as_array().unwrap();
    let probers = env
        .iter()
        .find(|e| e["name"] == "ISTIO_KUBE_APP_PROBERS")
        .expect("probers")["value"]
        .as_str()
        .unwrap();
    assert!(
        probers.contains("/app-health/sidecar-logs/readyz"),
        "{probers}"
    );
    assert!(env.iter().any(|e| e["name"] == "LATER_WEBHOOK"));
    assert!(
        proxy["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == TOKEN)
    );

    // One injected pod, two re-injection reviews; none counted as a skip.
    let (_, text) = server.admin_get("/metrics").await;
    assert_eq!(
        metric(&text, "sidecar_injection_success_total"),
        Some(1),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"sidecar_injection_reinjected_total{result="unchanged"}"#
        ),
        Some(1),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"sidecar_injection_reinjected_total{result="updated"}"#
        ),
        Some(1),
        "{text}"
    );
    assert!(!text.contains("sidecar_injection_skip_total{"), "{text}");
    assert_eq!(
        metric(&text, "sidecar_injection_requests_total"),
        Some(3),
        "{text}"
    );
}
