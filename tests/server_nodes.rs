//! Native sidecars `auto` through the real binary and a stand-in API server that lists Nodes:
//! the kubeconfig is found, the node watch runs, and the kubelet versions decide.

mod tls_client;

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::Query;
use axum::response::IntoResponse as _;
use axum::routing::get;
use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};
use tls_client::{Alpn, Client, app_pod, review};

fn node(name: &str, kubelet: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "resourceVersion": "7"},
        "status": {"nodeInfo": {
            "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "containerd://2.0.0",
            "kernelVersion": "6.1.0", "kubeProxyVersion": "", "kubeletVersion": kubelet,
            "machineID": "", "operatingSystem": "linux", "osImage": "Linux", "systemUUID": ""
        }}
    })
}

/// Answers the Node list with `nodes`, and holds every watch open without events.
async fn fake_api_server(nodes: Vec<Value>) -> SocketAddr {
    let list = json!({
        "apiVersion": "v1",
        "kind": "NodeList",
        "metadata": {"resourceVersion": "7"},
        "items": nodes,
    });
    let router = Router::new().route(
        "/api/v1/nodes",
        get(
            move |Query(query): Query<std::collections::HashMap<String, String>>| async move {
                if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                    let never = futures_util::stream::pending::<Result<Vec<u8>, std::io::Error>>();
                    axum::response::Response::new(Body::from_stream(never))
                } else {
                    axum::Json(list).into_response()
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

fn kubeconfig(dir: &std::path::Path, api: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: fake\n  cluster:\n    server: http://{api}\n\
         users:\n- name: fake\n  user:\n    token: fake-token\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
         current-context: fake\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the binary in `auto` against the fake API server, waits until the node list has been
/// judged, and returns where the proxy of a plain pod goes.
async fn proxy_list_with_nodes(nodes: Vec<Value>) -> &'static str {
    let count = nodes.len();
    let api = fake_api_server(nodes).await;
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), api);
    let ca_file = dir.path().join("ca.crt");
    let (port, admin_port) = (free_port(), free_port());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidecar-injector"))
        .arg("serve")
        .arg("--tls-self-signed")
        .args(["--tls-ca-out", ca_file.to_str().unwrap()])
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
        .args(["--native-sidecars", "auto", "--shutdown-grace", "0"])
        .env("KUBECONFIG", &config)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let watched = format!("sidecar_injection_nodes_watched {count}");
    let watched = watched.as_str();
    tls_client::eventually("the node list to be judged", || async {
        if tokio::net::TcpStream::connect(admin).await.is_err() {
            return None;
        }
        let (_, text) = tls_client::admin_get(admin, "/metrics").await;
        text.lines().any(|l| l == watched).then_some(())
    })
    .await;
    let ca: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&ca_file)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let pod = app_pod();
    let reply = Client::new(addr, &ca, Alpn::H2)
        .review(&review(
            "admission.k8s.io/v1",
            "CREATE",
            "default",
            pod.clone(),
        ))
        .await;
    let _ = child.start_kill();
    let response = &reply.json()["response"];
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("a patch"))
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut patched = pod;
    json_patch::patch(&mut patched, &patch).unwrap();
    for list in ["initContainers", "containers"] {
        if patched["spec"][list]
            .as_array()
            .is_some_and(|l| l.iter().any(|c| c["name"] == "istio-proxy"))
        {
            return list;
        }
    }
    panic!("no istio-proxy in {patched}");
}

#[tokio::test]
async fn auto_turns_native_sidecars_on_when_every_kubelet_is_recent() {
    let nodes = vec![node("a", "v1.33.2-eks-4f4795d"), node("b", "v1.34.1")];
    assert_eq!(proxy_list_with_nodes(nodes).await, "initContainers");
}

#[tokio::test]
async fn auto_keeps_classic_sidecars_while_one_kubelet_is_old() {
    let nodes = vec![node("a", "v1.33.2"), node("b", "v1.31.9-gke.1000")];
    assert_eq!(proxy_list_with_nodes(nodes).await, "containers");
}
