//! The webhook over real TLS with a real client, on HTTP/1.1 and h2.

mod tls_client;

use base64::Engine as _;
use serde_json::{Value, json};
use tls_client::{Alpn, Running, UID, app_pod, review};

const BOTH: [Alpn; 2] = [Alpn::Http1, Alpn::H2];

fn decode_patch(response: &Value) -> json_patch::Patch {
    let encoded = response["patch"].as_str().expect("a patch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn all_containers(pod: &Value) -> Vec<String> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|list| pod["spec"][list].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn alpn_negotiates_the_protocol_the_client_asks_for() {
    let server = Running::start(|_| {}).await;
    for alpn in BOTH {
        let reply = server
            .client(alpn)
            .review(&review(
                "admission.k8s.io/v1",
                "UPDATE",
                "default",
                app_pod(),
            ))
            .await;
        let expected: &[u8] = match alpn {
            Alpn::Http1 => b"http/1.1",
            Alpn::H2 => b"h2",
        };
        assert_eq!(reply.protocol.as_deref(), Some(expected));
        assert_eq!(reply.status, 200);
    }
}

#[tokio::test]
async fn a_non_create_is_allowed_unchanged_and_echoes_uid_and_version() {
    let server = Running::start(|_| {}).await;
    for alpn in BOTH {
        for version in ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"] {
            let reply = server
                .client(alpn)
                .review(&review(version, "UPDATE", "default", app_pod()))
                .await;
            assert_eq!(reply.status, 200);
            assert_eq!(reply.content_type.as_deref(), Some("application/json"));
            let body = reply.json();
            assert_eq!(body["apiVersion"], version);
            assert_eq!(body["kind"], "AdmissionReview");
            assert_eq!(body["response"]["uid"], UID);
            assert_eq!(body["response"]["allowed"], true);
            assert!(body["response"].get("patch").is_none());
            assert_eq!(
                body["response"]["auditAnnotations"]["skip-reason"],
                "not_pod_create"
            );
        }
    }
}

#[tokio::test]
async fn a_pod_create_is_injected_and_the_patch_applies_to_the_sent_pod() {
    let server = Running::start(|_| {}).await;
    for alpn in BOTH {
        let pod = app_pod();
        let reply = server
            .client(alpn)
            .review(&review(
                "admission.k8s.io/v1",
                "CREATE",
                "default",
                pod.clone(),
            ))
            .await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.content_type.as_deref(), Some("application/json"));
        let body = reply.json();
        let response = &body["response"];
        assert_eq!(response["uid"], UID);
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &decode_patch(response)).unwrap();
        let names = all_containers(&patched);
        assert!(names.contains(&"istio-proxy".to_owned()), "{names:?}");
        assert!(names.contains(&"hello".to_owned()), "{names:?}");
        // Fields this crate does not know survive, also inside the app container.
        assert_eq!(patched["spec"]["xFuturePodField"], 42);
        let app = ["initContainers", "containers"]
            .iter()
            .flat_map(|l| patched["spec"][l].as_array().cloned().unwrap_or_default())
            .find(|c| c["name"] == "hello")
            .unwrap();
        assert_eq!(app["xFutureContainerField"], json!({"keep": ["me"]}));
    }
}

#[tokio::test]
async fn a_host_network_pod_is_allowed_without_patch() {
    let server = Running::start(|_| {}).await;
    let mut pod = app_pod();
    pod["spec"]["hostNetwork"] = json!(true);
    let reply = server
        .client(Alpn::H2)
        .review(&review("admission.k8s.io/v1", "CREATE", "default", pod))
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let response = &reply.json()["response"];
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
    assert_eq!(response["auditAnnotations"]["skip-reason"], "host_network");
}

#[tokio::test]
async fn an_invalid_injection_annotation_is_denied_with_its_name() {
    let server = Running::start(|_| {}).await;
    let mut pod = app_pod();
    pod["metadata"]["annotations"] = json!({"sidecar.istio.io/interceptionMode": "BOGUS"});
    let reply = server
        .client(Alpn::Http1)
        .review(&review("admission.k8s.io/v1", "CREATE", "default", pod))
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let response = &reply.json()["response"];
    assert_eq!(response["uid"], UID);
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("sidecar.istio.io/interceptionMode"),
        "{message}"
    );
    assert!(message.contains("BOGUS"), "{message}");
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let server = Running::start(|_| {}).await;
    for alpn in BOTH {
        let body = serde_json::to_vec(&review(
            "admission.k8s.io/v1",
            "CREATE",
            "default",
            app_pod(),
        ))
        .unwrap();
        for ct in [Some("application/yaml"), None] {
            let reply = server
                .client(alpn)
                .send("POST", "/inject", ct, body.clone())
                .await;
            assert_eq!(reply.status, 415);
            let status = reply.json();
            assert_eq!(status["kind"], "Status");
            assert_eq!(status["code"], 415);
        }
    }
}

#[tokio::test]
async fn malformed_bodies_are_400() {
    let server = Running::start(|_| {}).await;
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{not json".to_vec(),
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
        br#"{"apiVersion":"admission.k8s.io/v2","kind":"AdmissionReview","request":{"uid":"x"}}"#
            .to_vec(),
    ];
    for alpn in BOTH {
        for body in &bodies {
            let reply = server
                .client(alpn)
                .send("POST", "/inject", Some("application/json"), body.clone())
                .await;
            assert_eq!(reply.status, 400, "{}", String::from_utf8_lossy(body));
            assert_eq!(reply.json()["reason"], "BadRequest");
        }
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let server = Running::start(|s| s.max_body_bytes = 4096).await;
    let mut pod = app_pod();
    pod["metadata"]["annotations"] = json!({"filler": "x".repeat(8192)});
    for alpn in BOTH {
        let reply = server
            .client(alpn)
            .review(&review(
                "admission.k8s.io/v1",
                "CREATE",
                "default",
                pod.clone(),
            ))
            .await;
        assert_eq!(reply.status, 413);
        assert_eq!(reply.json()["code"], 413);
    }
    // Just under the limit is still read.
    let small = review("admission.k8s.io/v1", "UPDATE", "default", app_pod());
    assert!(serde_json::to_vec(&small).unwrap().len() < 4096);
    let reply = server.client(Alpn::H2).review(&small).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn other_paths_and_methods_are_refused() {
    let server = Running::start(|_| {}).await;
    let client = server.client(Alpn::Http1);
    let reply = client
        .send("POST", "/mutate", Some("application/json"), b"{}".to_vec())
        .await;
    assert_eq!(reply.status, 404);
    let reply = client.send("GET", "/inject", None, Vec::new()).await;
    assert_eq!(reply.status, 405);
    // The admin endpoints are not on the webhook port.
    let reply = client.send("GET", "/metrics", None, Vec::new()).await;
    assert_eq!(reply.status, 404);
}

#[tokio::test]
async fn the_trailing_slash_path_works_too() {
    let server = Running::start(|_| {}).await;
    let body = serde_json::to_vec(&review(
        "admission.k8s.io/v1",
        "UPDATE",
        "default",
        app_pod(),
    ))
    .unwrap();
    let reply = server
        .client(Alpn::H2)
        .send(
            "POST",
            "/inject/",
            Some("application/json; charset=utf-8"),
            body,
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["response"]["uid"], UID);
}

#[tokio::test]
async fn metrics_count_every_request_once_under_istio_names() {
    let server = Running::start(|_| {}).await;
    let client = server.client(Alpn::H2);
    // A skip, an injection, a denial and a refusal.
    client
        .review(&review(
            "admission.k8s.io/v1",
            "UPDATE",
            "default",
            app_pod(),
        ))
        .await;
    client
        .review(&review(
            "admission.k8s.io/v1",
            "CREATE",
            "default",
            app_pod(),
        ))
        .await;
    let mut bad = app_pod();
    bad["metadata"]["annotations"] = json!({"sidecar.istio.io/interceptionMode": "BOGUS"});
    client
        .review(&review("admission.k8s.io/v1", "CREATE", "default", bad))
        .await;
    client
        .send("POST", "/inject", Some("text/plain"), b"x".to_vec())
        .await;
    let (status, text) = server.admin_get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "sidecar_injection_requests_total 4",
        "sidecar_injection_success_total 1",
        r#"sidecar_injection_skip_total{reason="not_pod_create"} 1"#,
        r#"sidecar_injection_failure_total{reason="invalid_annotations"} 1"#,
        r#"sidecar_injection_failure_total{reason="unsupported_media_type"} 1"#,
        "sidecar_injection_time_seconds_count 4",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    // The served certificate's expiry, counted from now: rcgen's default is far ahead.
    let expiry: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("sidecar_injection_cert_expiry_seconds "))
        .unwrap_or_else(|| panic!("no expiry gauge in\n{text}"))
        .parse()
        .unwrap();
    assert!(expiry > 86_400, "{expiry}");
}

#[tokio::test]
async fn the_native_sidecar_setting_decides_where_the_proxy_goes() {
    for (mode, list) in [
        (
            sidecar_injector::config::NativeMode::Enabled,
            "initContainers",
        ),
        (sidecar_injector::config::NativeMode::Disabled, "containers"),
    ] {
        let server = Running::start(|s| s.native_sidecars = Some(mode)).await;
        let pod = app_pod();
        let reply = server
            .client(Alpn::H2)
            .review(&review(
                "admission.k8s.io/v1",
                "CREATE",
                "default",
                pod.clone(),
            ))
            .await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let mut patched = pod;
        json_patch::patch(&mut patched, &decode_patch(&reply.json()["response"])).unwrap();
        let in_list = patched["spec"][list]
            .as_array()
            .is_some_and(|l| l.iter().any(|c| c["name"] == "istio-proxy"));
        assert!(in_list, "{mode:?}: istio-proxy not in {list}: {patched}");
    }
}
