//! What the answer says beyond the patch: guardrail warnings, and native sidecars `auto`
//! following the cluster's kubelet versions. And, through the whole server, the pods that are
//! not plain applications: an Istio gateway's, and a custom controller's.

mod tls_client;

use base64::Engine as _;
use serde_json::{Value, json};
use sidecar_injector::cluster::{DEFAULT_MIN_KUBELET, Kubelets};
use sidecar_injector::config::{NativeMode, Sources};
use tls_client::{Alpn, Running, app_pod, review};

/// Sends a pod CREATE and returns the `response` of the answer.
async fn create(server: &Running, pod: Value) -> Value {
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
    reply.json()["response"].clone()
}

fn warnings(response: &Value) -> Vec<String> {
    response["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The list (`initContainers` or `containers`) the proxy ended up in.
fn proxy_list(pod: &Value, response: &Value) -> &'static str {
    let encoded = response["patch"].as_str().expect("a patch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    for list in ["initContainers", "containers"] {
        let found = patched["spec"][list]
            .as_array()
            .is_some_and(|l| l.iter().any(|c| c["name"] == "istio-proxy"));
        if found {
            return list;
        }
    }
    panic!("no istio-proxy in {patched}");
}

#[tokio::test]
async fn an_app_on_a_reserved_port_gets_a_warning_that_is_counted() {
    let server = Running::start(|_| {}).await;
    let mut pod = app_pod();
    pod["spec"]["containers"][0]["ports"] = json!([{"containerPort": 15090, "protocol": "TCP"}]);
    let response = create(&server, pod).await;
    assert_eq!(response["allowed"], true);
    let found = warnings(&response);
    let reserved: Vec<_> = found
        .iter()
        .filter(|w| w.starts_with("[reserved-port]"))
        .collect();
    assert_eq!(reserved.len(), 1, "{found:?}");
    assert!(reserved[0].contains("15090"), "{found:?}");
    let (_, text) = server.admin_get("/metrics").await;
    assert!(
        text.contains(r#"sidecar_injection_warnings_total{finding="reserved-port"} 1"#),
        "{text}"
    );

    // The plain pod has no such warning.
    let response = create(&server, app_pod()).await;
    assert!(
        !warnings(&response)
            .iter()
            .any(|w| w.starts_with("[reserved-port]"))
    );
}

#[tokio::test]
async fn an_app_running_as_the_proxy_uid_gets_a_warning() {
    let server = Running::start(|_| {}).await;
    let mut pod = app_pod();
    pod["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 1337});
    let response = create(&server, pod).await;
    let found = warnings(&response);
    assert!(
        found
            .iter()
            .any(|w| w.starts_with("[app-runs-as-proxy-uid]")),
        "{found:?}"
    );
}

fn job_pod() -> Value {
    let mut pod = app_pod();
    pod["metadata"]["generateName"] = json!("backup-29000000-");
    pod["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "batch/v1", "kind": "Job", "name": "backup-29000000",
        "uid": "6f1c1b7e-0000-4000-8000-000000000002", "controller": true,
        "blockOwnerDeletion": true
    }]);
    pod["spec"]["restartPolicy"] = json!("Never");
    pod
}

#[tokio::test]
async fn a_job_pod_in_classic_mode_is_warned_once() {
    let server = Running::start(|s| s.native_sidecars = Some(NativeMode::Disabled)).await;
    let response = create(&server, job_pod()).await;
    let found = warnings(&response);
    let about_the_job: Vec<_> = found
        .iter()
        .filter(|w| w.contains("never complete"))
        .collect();
    assert_eq!(about_the_job.len(), 1, "{found:?}");
    assert!(about_the_job[0].contains("CronJob \"backup\""), "{found:?}");

    // Native sidecars fix it, so there is nothing to say.
    let server = Running::start(|s| s.native_sidecars = Some(NativeMode::Enabled)).await;
    let response = create(&server, job_pod()).await;
    let found = warnings(&response);
    assert!(
        !found.iter().any(|w| w.contains("never complete")),
        "{found:?}"
    );
}

#[tokio::test]
async fn a_finding_disabled_in_the_config_is_not_reported() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = Sources::embedded().config;
    let config = embedded.replace("  disabled: []", "  disabled: [reserved-port]");
    assert_ne!(
        config, embedded,
        "the embedded config lists no disabled findings"
    );
    std::fs::write(dir.path().join("config"), config).unwrap();
    let config_dir = dir.path().to_owned();
    let server = Running::start(move |s| s.config_dir = Some(config_dir)).await;
    let mut pod = app_pod();
    pod["spec"]["containers"][0]["ports"] = json!([{"containerPort": 15090, "protocol": "TCP"}]);
    let response = create(&server, pod).await;
    assert_eq!(response["patchType"], "JSONPatch");
    let found = warnings(&response);
    assert!(
        !found.iter().any(|w| w.starts_with("[reserved-port]")),
        "{found:?}"
    );
    let (_, text) = server.admin_get("/metrics").await;
    assert!(!text.contains(r#"finding="reserved-port""#), "{text}");
}

#[tokio::test]
async fn auto_follows_the_kubelet_versions_of_the_nodes() {
    let server = Running::start(|s| {
        s.native_sidecars = Some(NativeMode::Auto);
        s.watch_nodes = false;
    })
    .await;
    let pod = app_pod();
    let mut bound = app_pod();
    bound["spec"]["nodeName"] = json!("node-new");

    // No node known yet: classic.
    let response = create(&server, pod.clone()).await;
    assert_eq!(proxy_list(&pod, &response), "containers");

    // Every node recent enough: native.
    server.shared.set_kubelets(Kubelets::new(
        [("node-new", "v1.33.2-eks-4f4795d"), ("node-b", "v1.34.0")],
        DEFAULT_MIN_KUBELET,
    ));
    let response = create(&server, pod.clone()).await;
    assert_eq!(proxy_list(&pod, &response), "initContainers");
    let (_, text) = server.admin_get("/metrics").await;
    assert!(
        text.contains("sidecar_injection_native_sidecars_auto 1"),
        "{text}"
    );

    // One old node: an unbound pod may land there, a pod bound to a new node may not.
    server.shared.set_kubelets(Kubelets::new(
        [("node-new", "v1.33.2"), ("node-old", "v1.30.1")],
        DEFAULT_MIN_KUBELET,
    ));
    let response = create(&server, pod.clone()).await;
    assert_eq!(proxy_list(&pod, &response), "containers");
    let response = create(&server, bound.clone()).await;
    assert_eq!(proxy_list(&bound, &response), "initContainers");
    let mut on_old = app_pod();
    on_old["spec"]["nodeName"] = json!("node-old");
    let response = create(&server, on_old.clone()).await;
    assert_eq!(proxy_list(&on_old, &response), "containers");
}

/// Replicas of a workload, as the API server sends them (each its own review uid and token
/// volume name), get the same injection under their own names: the first from the answer
/// computed with a stand-in name, the rest replayed (debug builds also compute each in full and
/// compare).
#[tokio::test]
async fn replicas_get_the_same_injection_under_their_own_names() {
    let server = Running::start(|_| {}).await;
    let client = server.client(Alpn::Http1);
    let tokens = [
        "kube-api-access-x7k2p",
        "kube-api-access-b2d4q",
        "kube-api-access-9zz5m",
        "kube-api-access-hh42w",
    ];
    let mut injected = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let mut pod = app_pod();
        let mount = json!([{"name": token, "readOnly": true,
            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]);
        pod["spec"]["containers"][0]["volumeMounts"] = mount.clone();
        // A user-written istio-proxy is saved in an annotation, so the name is in the patch too.
        pod["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "istio-proxy", "volumeMounts": mount}));
        pod["spec"]["volumes"] = json!([{"name": token, "projected": {"sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}]);
        let uid = format!("0df28fbd-5f5f-11e8-bc74-42010a80000{i}");
        let mut review = review("admission.k8s.io/v1", "CREATE", "default", pod.clone());
        review["request"]["uid"] = json!(uid);
        let reply = client.review(&review).await;
        assert_eq!(reply.status, 200);
        let response = reply.json()["response"].clone();
        assert_eq!(response["uid"], json!(uid));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().expect("a patch"))
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut pod, &patch).unwrap();
        let text = pod.to_string();
        for (j, other) in tokens.iter().enumerate() {
            assert_eq!(text.contains(other), i == j, "replica {i} names token {j}");
        }
        injected.push(text.replace(token, "TOKEN"));
    }
    assert!(injected.iter().all(|p| *p == injected[0]));
    assert!(injected[0].contains("istio-proxy") && injected[0].contains("TOKEN"));
    assert_eq!(server.shared.replicas.len(), 1);
    // The first was injected (under the stand-in name), the others replayed.
    assert_eq!(server.shared.metrics.replayed.get(), 3);
}

/// The patched pod of an answer.
fn patched(pod: &Value, response: &Value) -> Value {
    let encoded = response["patch"].as_str().expect("a patch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).unwrap();
    out
}

fn proxy_env<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    pod["spec"]["containers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == "istio-proxy")?["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

/// A pod of Istio's gateway chart, as its ReplicaSet creates it.
fn gateway_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "istio-ingressgateway-7c9d5b8f6-",
            "namespace": "default",
            "labels": {"app": "istio-ingressgateway", "istio": "ingressgateway",
                "sidecar.istio.io/inject": "true", "pod-template-hash": "7c9d5b8f6"},
            "annotations": {"inject.istio.io/templates": "gateway",
                "prometheus.io/path": "/stats/prometheus", "prometheus.io/port": "15020",
                "prometheus.io/scrape": "true"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "istio-ingressgateway-7c9d5b8f6",
                "uid": "6f1c1b7e-0000-4000-8000-000000000003", "controller": true,
                "blockOwnerDeletion": true
            }]
        },
        "spec": {
            "securityContext": {"sysctls": [
                {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]},
            "containers": [{
                "name": "istio-proxy",
                "image": "auto",
                "securityContext": {"capabilities": {"drop": ["ALL"]},
                    "allowPrivilegeEscalation": false, "privileged": false,
                    "readOnlyRootFilesystem": true, "runAsUser": 1337, "runAsGroup": 1337,
                    "runAsNonRoot": true},
                "ports": [{"containerPort": 15090, "protocol": "TCP", "name": "http-envoy-prom"}]
            }],
            "serviceAccountName": "istio-ingressgateway"
        }
    })
}

#[tokio::test]
async fn an_istio_gateway_pod_is_injected_as_a_gateway_without_warnings() {
    // Native sidecars on: the gateway's proxy is still its main container.
    let server = Running::start(|s| s.native_sidecars = Some(NativeMode::Enabled)).await;
    let pod = gateway_pod();
    let response = create(&server, pod.clone()).await;
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(warnings(&response), Vec::<String>::new());
    let out = patched(&pod, &response);
    let containers = out["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{out}");
    let proxy = &containers[0];
    assert_eq!(proxy["name"], "istio-proxy");
    assert!(out["spec"]["initContainers"].is_null(), "{out}");
    assert!(
        proxy["image"]
            .as_str()
            .is_some_and(|i| i.contains("/proxyv2:")),
        "{proxy}"
    );
    assert_eq!(proxy["args"][1], "router");
    assert_eq!(
        proxy["securityContext"],
        pod["spec"]["containers"][0]["securityContext"]
    );
    assert_eq!(
        proxy_env(&out, "ISTIO_META_WORKLOAD_NAME"),
        Some(&json!({"name": "ISTIO_META_WORKLOAD_NAME", "value": "istio-ingressgateway"}))
    );
    assert_eq!(
        proxy_env(&out, "ISTIO_META_APP_CONTAINERS"),
        Some(&json!({"name": "ISTIO_META_APP_CONTAINERS"}))
    );
    assert!(
        out["metadata"]["annotations"]["sidecar.istio.io/status"]
            .as_str()
            .is_some_and(|s| s.contains(r#""containers":["istio-proxy"]"#)),
        "{out}"
    );
}

#[tokio::test]
async fn a_pod_of_a_custom_controller_belongs_to_it() {
    let server = Running::start(|s| s.native_sidecars = Some(NativeMode::Disabled)).await;
    let mut pod = app_pod();
    pod["metadata"]["generateName"] = json!("clone-");
    pod["metadata"]["labels"] = json!({});
    pod["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "foo/v1", "kind": "Bar", "name": "clone",
        "uid": "6f1c1b7e-0000-4000-8000-000000000004", "controller": true,
        "blockOwnerDeletion": true
    }]);
    let response = create(&server, pod.clone()).await;
    let out = patched(&pod, &response);
    assert_eq!(
        proxy_env(&out, "ISTIO_META_OWNER"),
        Some(&json!({"name": "ISTIO_META_OWNER",
            "value": "kubernetes://apis/foo/v1/namespaces/default/bars/clone"}))
    );
    assert_eq!(
        proxy_env(&out, "ISTIO_META_WORKLOAD_NAME"),
        Some(&json!({"name": "ISTIO_META_WORKLOAD_NAME", "value": "clone"}))
    );
    assert_eq!(
        out["metadata"]["labels"]["service.istio.io/canonical-name"],
        "clone"
    );
}
