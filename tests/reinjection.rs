//! Re-injection of a pod as the API server stores it after the first injection: what the
//! reinvocation review (`reinvocationPolicy: IfNeeded`) sends. The same configuration answers
//! with no patch, or with only what a later webhook's change requires; a changed configuration
//! still renders the sidecar anew.

mod apiserver;

use serde_json::{Value, json};
use sidecar_injector::config::{Config, Sources};
use sidecar_injector::inject::{self, Outcome, Request};

const TOKEN: &str = "kube-api-access-x7k2p";

fn config(values: &str) -> Config {
    let mut sources = Sources::embedded();
    sources.values = values.to_owned();
    Config::from_sources(&sources).expect("test config")
}

fn injected(config: &Config, pod: &Value, native: bool) -> Value {
    let req = Request {
        pod,
        namespace: Some("shop"),
        workload: None,
        native_sidecars: native,
    };
    match inject::inject(config, &req) {
        Ok(Outcome::Injected(i)) => i.pod,
        other => panic!("expected an injection, got {other:?}"),
    }
}

/// A ReplicaSet's pod with a probe to rewrite and a named port.
fn app_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "web-6c9f8d7b5-", "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "6c9f8d7b5"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "web-6c9f8d7b5", "uid": "0d7f3a52-1111-4c3e-9a61-5f0a7d8e2b10",
                "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {"containers": [{
            "name": "web", "image": "shop/web:2.1",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
            "resources": {"limits": {"cpu": "1500m", "memory": "512Mi"}}
        }]}
    })
}

/// The pod of the reinvocation review after a first injection with `config`.
fn stored_after_injection(config: &Config, native: bool) -> Value {
    let created = apiserver::admitted(&app_pod(), TOKEN);
    let once = injected(config, &created, native);
    apiserver::admitted(&once, TOKEN)
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(move |l| pod["spec"][l].as_array().into_iter().flatten())
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    containers(pod)
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {pod}"))
}

fn container_mut<'a>(pod: &'a mut Value, name: &str) -> &'a mut Value {
    let spec = pod["spec"].as_object_mut().expect("spec");
    spec.values_mut()
        .filter_map(Value::as_array_mut)
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)
}

fn has_token_mount(c: &Value) -> bool {
    c["volumeMounts"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["name"] == TOKEN))
}

fn paths(before: &Value, after: &Value) -> Vec<String> {
    let patch = serde_json::to_value(inject::patch(before, after)).expect("patch");
    patch
        .as_array()
        .into_iter()
        .flatten()
        .map(|op| {
            format!(
                "{} {}",
                op["op"].as_str().unwrap_or(""),
                op["path"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[test]
fn the_stored_pod_gets_no_patch_in_either_mode() {
    let config = Config::embedded();
    for native in [false, true] {
        let stored = stored_after_injection(&config, native);
        // The stored pod really differs from the fresh injection: defaults and token mounts.
        assert!(has_token_mount(container(&stored, "istio-proxy")));
        assert!(has_token_mount(container(&stored, "istio-init")));
        assert_eq!(
            container(&stored, "istio-proxy")["terminationMessagePolicy"],
            "File"
        );
        let again = injected(&config, &stored, native);
        assert_eq!(
            paths(&stored, &again),
            Vec::<String>::new(),
            "native={native}"
        );
    }
}

#[test]
fn a_later_webhooks_env_var_and_mount_on_the_proxy_survive() {
    let config = Config::embedded();
    let mut stored = stored_after_injection(&config, true);
    let proxy = container_mut(&mut stored, "istio-proxy");
    proxy["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "OTEL_SERVICE_NAME", "value": "web"}));
    proxy["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "otel-config", "mountPath": "/etc/otel"}));
    stored["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "otel-config", "configMap": {"name": "otel", "defaultMode": 420}}));
    let again = injected(&config, &stored, true);
    assert_eq!(paths(&stored, &again), Vec::<String>::new());
}

/// A later webhook added a container with an HTTP probe: its probe is rewritten and joins
/// `ISTIO_KUBE_APP_PROBERS` (with the app containers and ports the proxy is told about), and
/// nothing else changes.
#[test]
fn a_container_added_by_a_later_webhook_gets_only_what_it_requires() {
    let config = Config::embedded();
    let mut stored = stored_after_injection(&config, false);
    let added = json!({"name": "log-shipper", "image": "logs/shipper:3",
        "ports": [{"containerPort": 9000, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 9000, "scheme": "HTTP"},
            "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3},
        "imagePullPolicy": "IfNotPresent", "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File", "resources": {},
        "volumeMounts": [{"name": TOKEN, "readOnly": true, "mountPath": apiserver::TOKEN_MOUNT_PATH}]});
    let list = stored["spec"]["containers"].as_array_mut().unwrap();
    let proxy_at = list.len() - 1;
    list.insert(proxy_at, added);
    let again = injected(&config, &stored, false);
    let proxy = container(&again, "istio-proxy");
    let probers = env(proxy, "ISTIO_KUBE_APP_PROBERS").expect("probers")["value"]
        .as_str()
        .unwrap();
    assert!(
        probers.contains("/app-health/log-shipper/readyz"),
        "{probers}"
    );
    assert!(probers.contains("/app-health/web/readyz"), "{probers}");
    assert_eq!(
        container(&again, "log-shipper")["readinessProbe"]["httpGet"],
        json!({"path": "/app-health/log-shipper/readyz", "port": 15020, "scheme": "HTTP"})
    );
    let changed = paths(&stored, &again);
    let env_at = |name: &str| {
        let i = proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .position(|e| e["name"] == name)
            .unwrap();
        format!("replace /spec/containers/2/env/{i}/value")
    };
    assert_eq!(
        changed,
        [
            "replace /spec/containers/1/readinessProbe/httpGet/path".to_owned(),
            "replace /spec/containers/1/readinessProbe/httpGet/port".to_owned(),
            env_at("ISTIO_META_POD_PORTS"),
            env_at("ISTIO_META_APP_CONTAINERS"),
            env_at("ISTIO_KUBE_APP_PROBERS"),
        ]
    );
    // What the API server added to the proxy stays.
    assert!(has_token_mount(proxy));
    assert_eq!(proxy["terminationMessagePath"], "/dev/termination-log");
}

/// A new proxy version is a changed configuration: the sidecar is rendered anew, keeping only
/// what the API server added (defaults, the token mount); an env var the pod's proxy has and the
/// fresh one does not set goes.
#[test]
fn a_changed_configuration_renders_the_sidecar_anew() {
    let before = Config::embedded();
    let after = config("global:\n  tag: 1.99.0\n");
    for native in [false, true] {
        let mut stored = stored_after_injection(&before, native);
        container_mut(&mut stored, "istio-proxy")["env"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "STALE", "value": "1"}));
        let again = injected(&after, &stored, native);
        for name in ["istio-init", "istio-proxy"] {
            let c = container(&again, name);
            assert!(c["image"].as_str().unwrap().ends_with(":1.99.0"), "{c}");
            assert!(has_token_mount(c), "{name}: {c}");
            assert_eq!(c["terminationMessagePolicy"], "File");
        }
        let proxy = container(&again, "istio-proxy");
        assert!(env(proxy, "STALE").is_none());
        // Apart from what the API server added, it is the fresh injection's proxy.
        let fresh = injected(&after, &apiserver::admitted(&app_pod(), TOKEN), native);
        let mut expected = apiserver::admitted(&fresh, TOKEN);
        let mut got = again.clone();
        for p in [&mut expected, &mut got] {
            p["metadata"]["annotations"]
                .as_object_mut()
                .unwrap()
                .shift_remove("sidecar.istio.io/status");
        }
        assert_eq!(
            container(&got, "istio-proxy"),
            container(&expected, "istio-proxy")
        );
        assert_eq!(
            container(&got, "istio-init"),
            container(&expected, "istio-init")
        );
        // And the result is stable: injecting it again, stored, changes nothing.
        let stored_again = apiserver::admitted(&again, TOKEN);
        assert_eq!(
            paths(&stored_again, &injected(&after, &stored_again, native)),
            Vec::<String>::new()
        );
    }
}

/// A mount the configuration no longer renders, of a volume the injection added, is a changed
/// configuration too: the mount and its volume go.
#[test]
fn a_mount_the_configuration_dropped_goes_with_its_volume() {
    let before = config("global:\n  mountMtlsCerts: true\n");
    let after = Config::embedded();
    let stored = stored_after_injection(&before, false);
    let mounted = |p: &Value| {
        container(p, "istio-proxy")["volumeMounts"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == "istio-certs"))
    };
    assert!(mounted(&stored));
    let again = injected(&after, &stored, false);
    assert!(!mounted(&again));
    assert!(
        again["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["name"] != "istio-certs")
    );
    assert!(has_token_mount(container(&again, "istio-proxy")));
}

/// Classic to native: the proxy moves to the init containers as the clean new sidecar.
#[test]
fn a_mode_change_gives_the_clean_new_sidecar() {
    let config = Config::embedded();
    let mut stored = stored_after_injection(&config, false);
    container_mut(&mut stored, "istio-proxy")["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "OLD", "value": "1"}));
    let again = injected(&config, &stored, true);
    let proxy = again["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "istio-proxy")
        .expect("native proxy");
    assert!(env(proxy, "OLD").is_none());
    assert_eq!(proxy["restartPolicy"], "Always");
    assert!(
        again["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["name"] != "istio-proxy")
    );
}

/// A manifest injected by `sidecar-injector inject` keeps a user's `istio-proxy` quantities as
/// written (`3000m`); the API server creates its pods with them in canonical form (`"3"`), and
/// the webhook's review of such a pod finds the same injection.
#[test]
fn an_override_whose_quantities_the_api_server_canonicalised_is_the_same_injection() {
    let config = Config::embedded();
    let mut pod = app_pod();
    // As `kubectl get -o yaml` writes it (ISTIO_META_POD_PORTS lists the protocol).
    pod["spec"]["containers"][0]["ports"][0]["protocol"] = json!("TCP");
    pod["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({
        "name": "istio-proxy", "image": "auto",
        "resources": {"limits": {"cpu": "3000m", "memory": "2048Mi"}}}));
    for native in [false, true] {
        let once = injected(&config, &pod, native);
        assert_eq!(
            container(&once, "istio-proxy")["resources"]["limits"]["cpu"],
            "3000m"
        );
        let stored = apiserver::admitted(&once, TOKEN);
        assert_eq!(
            container(&stored, "istio-proxy")["resources"]["limits"]["cpu"],
            "3"
        );
        let again = injected(&config, &stored, native);
        assert_eq!(
            paths(&stored, &again),
            Vec::<String>::new(),
            "native={native}"
        );
    }
}
