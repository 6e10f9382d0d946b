//! The `grpc-simple` template's init container runs a real shell script: run it as the kubelet
//! would (its command, its environment with the downward-API fields filled in) and read the xDS
//! bootstrap it writes, the file every application container is pointed at.

use std::process::Command;

use serde_json::{Value, json};
use sidecar_injector::config::{Config, Sources};
use sidecar_injector::inject::{self, Outcome, Request};

fn injected(pod: &Value, values: Option<&str>) -> Value {
    let mut sources = Sources::embedded();
    if let Some(values) = values {
        sources.values = values.to_string();
    }
    let config = Config::from_sources(&sources).expect("config");
    let req = Request {
        pod,
        namespace: Some("grpc"),
        workload: None,
        native_sidecars: false,
    };
    match inject::inject(&config, &req) {
        Ok(Outcome::Injected(out)) => out.pod,
        other => panic!("not injected: {other:?}"),
    }
}

fn grpc_pod() -> Value {
    json!({
        "metadata": {"generateName": "echo-", "namespace": "grpc",
            "annotations": {"inject.istio.io/templates": "grpc-simple"}},
        "spec": {"containers": [
            {"name": "server", "image": "echo-server:1"},
            {"name": "client", "image": "echo-client:1"}]}
    })
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("{list} has no {name}"))
}

fn env<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["env"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("{} has no env {name}", c["name"]))
}

/// Runs the init container's command with its environment, the downward-API fields set to what
/// the kubelet would give this pod, and the bootstrap written under `dir` instead of the volume.
fn run_init(init: &Value, dir: &std::path::Path) -> Value {
    let command: Vec<&str> = init["command"]
        .as_array()
        .expect("command")
        .iter()
        .map(|a| a.as_str().expect("string arg"))
        .collect();
    let out = dir.join("bootstrap.json");
    let mut cmd = Command::new(command[0]);
    cmd.args(&command[1..]).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for e in init["env"].as_array().expect("env") {
        let name = e["name"].as_str().expect("env name");
        let value = match (
            &e["value"],
            e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        ) {
            (Value::String(v), _) => v.clone(),
            (_, Some("status.podIP")) => "10.1.2.3".into(),
            (_, Some("metadata.name")) => "echo-7f9c".into(),
            (_, Some("metadata.namespace")) => "grpc".into(),
            other => panic!("env {name}: unexpected source {other:?}"),
        };
        cmd.env(name, value);
    }
    cmd.env("GRPC_XDS_BOOTSTRAP", &out);
    let status = cmd.status().expect("run the init script");
    assert!(status.success(), "the init script failed: {status}");
    let text = std::fs::read_to_string(&out).expect("bootstrap written");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bootstrap is not JSON ({e}): {text}"))
}

#[test]
fn the_bootstrap_names_istiod_plaintext_xds_and_the_pod() {
    let pod = injected(&grpc_pod(), None);
    let init = container(&pod, "initContainers", "grpc-bootstrap-init");
    let dir = tempfile::tempdir().expect("tempdir");
    let bootstrap = run_init(init, dir.path());
    assert_eq!(
        bootstrap,
        json!({
            "xds_servers": [{
                "server_uri": "dns:///istiod.istio-system.svc:15010",
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"]
            }],
            "node": {
                "id": "sidecar~10.1.2.3~echo-7f9c.grpc~grpc.svc.cluster.local",
                "metadata": {"GENERATOR": "grpc", "NAMESPACE": "grpc",
                    "INSTANCE_IPS": "10.1.2.3", "CLUSTER_ID": "Kubernetes"}
            },
            "server_listener_resource_name_template": "xds.istio.io/grpc/lds/inbound/%s"
        })
    );
}

#[test]
fn the_bootstrap_follows_the_revision_namespace_and_cluster() {
    let values = "revision: canary\nglobal:\n  istioNamespace: mesh\n  multiCluster:\n    clusterName: east\n  proxy:\n    clusterDomain: corp.example\n";
    let pod = injected(&grpc_pod(), Some(values));
    let init = container(&pod, "initContainers", "grpc-bootstrap-init");
    let dir = tempfile::tempdir().expect("tempdir");
    let bootstrap = run_init(init, dir.path());
    assert_eq!(
        bootstrap["xds_servers"][0]["server_uri"],
        "dns:///istiod-canary.mesh.svc:15010"
    );
    assert_eq!(
        bootstrap["node"]["id"],
        "sidecar~10.1.2.3~echo-7f9c.grpc~grpc.svc.corp.example"
    );
    assert_eq!(bootstrap["node"]["metadata"]["CLUSTER_ID"], "east");
}

/// The file the init container writes is the file each application container reads, on the same
/// volume.
#[test]
fn every_app_container_reads_the_file_the_init_container_writes() {
    let pod = injected(&grpc_pod(), None);
    let init = container(&pod, "initContainers", "grpc-bootstrap-init");
    let written = env(init, "GRPC_XDS_BOOTSTRAP")["value"]
        .as_str()
        .expect("path");
    let mount_of = |c: &Value| -> (String, String) {
        let m = c["volumeMounts"]
            .as_array()
            .and_then(|ms| {
                ms.iter()
                    .find(|m| m["name"] == "grpc-io-proxyless-bootstrap")
            })
            .unwrap_or_else(|| panic!("{} does not mount the bootstrap volume", c["name"]));
        (
            m["mountPath"].as_str().expect("mountPath").to_string(),
            m["name"].as_str().expect("name").to_string(),
        )
    };
    let (init_path, _) = mount_of(init);
    assert_eq!(init_path, "/var/lib/grpc/data/");
    assert!(written.starts_with(&init_path));
    for name in ["server", "client"] {
        let app = container(&pod, "containers", name);
        assert_eq!(env(app, "GRPC_XDS_BOOTSTRAP")["value"], written);
        assert_eq!(mount_of(app).0, init_path);
    }
    let volumes = pod["spec"]["volumes"].as_array().expect("volumes");
    assert_eq!(
        volumes
            .iter()
            .filter(|v| v["name"] == "grpc-io-proxyless-bootstrap")
            .collect::<Vec<_>>(),
        [&json!({"name": "grpc-io-proxyless-bootstrap", "emptyDir": {}})]
    );
    // No Istio process runs in the pod.
    assert!(
        ["initContainers", "containers"]
            .iter()
            .flat_map(|l| pod["spec"][l].as_array().into_iter().flatten())
            .all(|c| c["name"] != "istio-proxy" && c["name"] != "istio-init")
    );
}
