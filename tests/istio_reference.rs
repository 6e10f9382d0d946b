//! Field-for-field equality with what Istio's own injector produced for the same inputs
//! (`istioctl kube-inject` with Istio's test hub `registry.istio.io/testing` and tag `latest`).
//!
//! Istio's output went through Go structs, which add zero values the input never had
//! (`strategy: {}`, `status: {}`, `resources: {}` on app containers, `creationTimestamp: null`).
//! Those are the only differences removed before comparing; everything else must be equal.

use serde_json::Value;
use sidecar_injector::config::{Config, Sources};
use sidecar_injector::manifest;

fn config() -> Config {
    let mut sources = Sources::embedded();
    sources.values = "global:\n  hub: registry.istio.io/testing\n  tag: latest\n".into();
    Config::from_sources(&sources).expect("test config")
}

fn read(name: &str) -> Vec<Value> {
    let path = format!("{}/tests/golden/istio/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("reference file");
    sidecar_injector::yaml::parse_documents(&text).expect("reference YAML")
}

/// Removes the empty values Go's struct round trip adds.
fn without_go_zero_values(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for key in ["strategy", "status", "resources", "creationTimestamp"] {
                if map
                    .get(key)
                    .is_some_and(|x| x.as_object().is_some_and(|m| m.is_empty()) || x.is_null())
                {
                    map.shift_remove(key);
                }
            }
            map.values_mut().for_each(without_go_zero_values);
        }
        Value::Array(items) => items.iter_mut().for_each(without_go_zero_values),
        _ => {}
    }
}

fn check(input: &str, expected: &str, native: bool) {
    let config = config();
    let mut events = Vec::new();
    let mut got: Vec<Value> = read(input)
        .iter()
        .map(|d| manifest::inject_document(&config, d, native, &mut events).expect("injects"))
        .collect();
    let mut want = read(expected);
    got.iter_mut().for_each(without_go_zero_values);
    want.iter_mut().for_each(without_go_zero_values);
    if got != want {
        let g = sidecar_injector::yaml::to_documents(&got);
        let w = sidecar_injector::yaml::to_documents(&want);
        let dir = std::env::temp_dir().join("sidecar-injector-reference");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(format!("{expected}.got")), &g);
        let _ = std::fs::write(dir.join(format!("{expected}.want")), &w);
        panic!(
            "{input} does not inject to {expected}; compare {}/{expected}.got with .want",
            dir.display()
        );
    }
}

#[test]
fn hello_native_sidecars() {
    check("hello.yaml", "hello.yaml.injected", true);
}

#[test]
fn hello_classic_sidecar() {
    check("hello.yaml", "hello-old-version.yaml.injected", false);
}

#[test]
fn hello_probes_rewritten() {
    check("hello-probes.yaml", "hello-probes.yaml.injected", true);
}

// Their `proxy.istio.io/overrides` records (the user's istio-proxy, the app containers the
// template renders over) are compared byte for byte like everything else.

#[test]
fn gateway_template() {
    check("gateway.yaml", "gateway.yaml.injected", false);
    check("gateway.yaml", "gateway.yaml.injected", true);
}

#[test]
fn grpc_agent_template() {
    check("grpc-agent.yaml", "grpc-agent.yaml.injected", false);
    check("grpc-agent.yaml", "grpc-agent.yaml.injected", true);
}
