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

const OVERRIDES: &str = "proxy.istio.io/overrides";

/// The containers of a `proxy.istio.io/overrides` record as istiod's struct round trip writes
/// them: `image: auto` left out, `resources: {}` present. Key order is not compared.
fn record_in_go_form(text: &str) -> Value {
    let mut record: Value = serde_json::from_str(text).expect("the record is JSON");
    for list in ["containers", "initContainers"] {
        for c in record[list].as_array_mut().into_iter().flatten() {
            let Some(c) = c.as_object_mut() else { continue };
            if c.get("image").and_then(Value::as_str) == Some("auto") {
                c.shift_remove("image");
            }
            c.entry("resources")
                .or_insert_with(|| serde_json::json!({}));
        }
    }
    record
}

/// Takes the overrides record out of each pod template and returns them, in Go's form.
fn take_records(docs: &mut [Value]) -> Vec<Option<Value>> {
    docs.iter_mut()
        .map(|d| {
            d.pointer_mut("/spec/template/metadata/annotations")
                .and_then(Value::as_object_mut)
                .and_then(|a| a.shift_remove(OVERRIDES))
                .and_then(|v| v.as_str().map(record_in_go_form))
        })
        .collect()
}

fn check(input: &str, expected: &str, native: bool) {
    compare(input, expected, native, false);
}

/// As [`check`], but the overrides record is compared by content: the same containers with the
/// same fields, whatever form the record is written in.
fn check_record_by_content(input: &str, expected: &str, native: bool) {
    compare(input, expected, native, true);
}

fn compare(input: &str, expected: &str, native: bool, record_by_content: bool) {
    let config = config();
    let mut events = Vec::new();
    let mut got: Vec<Value> = read(input)
        .iter()
        .map(|d| manifest::inject_document(&config, d, native, &mut events).expect("injects"))
        .collect();
    let mut want = read(expected);
    if record_by_content {
        let (got_records, want_records) = (take_records(&mut got), take_records(&mut want));
        assert!(
            want_records.iter().any(Option::is_some),
            "{expected} has an overrides record"
        );
        assert_eq!(
            got_records, want_records,
            "{input}: the overrides record holds other containers or fields than istiod's"
        );
    }
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

// The gateway and grpc-agent records hold the user's containers as written; istiod writes
// them in Go's struct form. Everything else is compared field for field.

#[test]
fn gateway_template() {
    check_record_by_content("gateway.yaml", "gateway.yaml.injected", false);
    check_record_by_content("gateway.yaml", "gateway.yaml.injected", true);
}

#[test]
fn grpc_agent_template() {
    check_record_by_content("grpc-agent.yaml", "grpc-agent.yaml.injected", false);
    check_record_by_content("grpc-agent.yaml", "grpc-agent.yaml.injected", true);
}
