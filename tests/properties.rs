//! Properties of the engine over generated pods: the patch applies and gives the engine's
//! output, nothing the user wrote is lost, injecting twice changes nothing (also when the API
//! server stored the injected pod in between, and when a later webhook added to the proxy), and
//! annotation values cannot add structure to what is rendered.

mod apiserver;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use sidecar_injector::config::Config;
use sidecar_injector::inject::{self, Outcome, Request};

fn config() -> &'static Config {
    static CONFIG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
    CONFIG.get_or_init(Config::embedded)
}

/// Text that tries to break out of a YAML scalar or a template expression.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9 ._-]{0,12}",
        Just("x\nprivileged: true".to_string()),
        Just("{{ values.global.hub }}".to_string()),
        Just("{% if true %}boom{% endif %}".to_string()),
        Just("\"quoted\" and 'single'".to_string()),
        Just("- item\n- other".to_string()),
        Just("a: b\n  c: [d]".to_string()),
        Just("\u{0}\u{7f}é✓".to_string()),
        Just("&anchor *alias !!binary".to_string()),
    ]
}

fn unknown_fields() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("x-[a-z]{1,6}", any::<i32>().prop_map(Value::from), 0..3)
        .prop_map(|m| m.into_iter().collect())
}

fn env_var() -> impl Strategy<Value = Value> {
    ("[A-Z][A-Z0-9_]{0,8}", hostile_text()).prop_map(|(n, v)| json!({"name": n, "value": v}))
}

fn container(name: String) -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(env_var(), 0..4),
        prop::option::of(1u16..=9000),
        unknown_fields(),
        prop::option::of(prop_oneof![
            Just(json!({"httpGet": {"port": 8080, "path": "/ready"}})),
            Just(json!({"tcpSocket": {"port": 9000}})),
            Just(json!({"exec": {"command": ["true"]}})),
        ]),
    )
        .prop_map(move |(env, port, extra, probe)| {
            let mut c = Map::new();
            c.insert("name".into(), Value::from(name.clone()));
            c.insert("image".into(), Value::from("app:1"));
            if !env.is_empty() {
                c.insert("env".into(), Value::from(env));
            }
            if let Some(p) = port {
                c.insert("ports".into(), json!([{"containerPort": p}]));
            }
            if let Some(probe) = probe {
                c.insert("readinessProbe".into(), probe);
            }
            c.extend(extra);
            Value::Object(c)
        })
}

fn containers(
    prefix: &'static str,
    range: std::ops::Range<usize>,
) -> impl Strategy<Value = Vec<Value>> {
    range.prop_flat_map(move |n| {
        (0..n)
            .map(|i| container(format!("{prefix}{i}")))
            .collect::<Vec<_>>()
    })
}

fn pod() -> impl Strategy<Value = Value> {
    (
        containers("app", 1..4),
        containers("init", 0..3),
        prop::collection::btree_map("[a-z]{1,8}\\.example\\.com/[a-z]{1,6}", hostile_text(), 0..4),
        hostile_text(),
        unknown_fields(),
        unknown_fields(),
        any::<bool>(),
        prop::option::of(prop_oneof![Just("true"), Just("false")]),
    )
        .prop_map(|(cs, inits, mut annotations, log_level, pod_extra, spec_extra, hold, native)| {
            annotations.insert("sidecar.istio.io/agentLogLevel".into(), log_level);
            if hold {
                annotations.insert(
                    "proxy.istio.io/config".into(),
                    "holdApplicationUntilProxyStarts: true".into(),
                );
            }
            if let Some(n) = native {
                annotations.insert("sidecar.istio.io/nativeSidecar".into(), n.into());
            }
            let mut spec = Map::new();
            spec.insert("containers".into(), Value::from(cs));
            if !inits.is_empty() {
                spec.insert("initContainers".into(), Value::from(inits));
            }
            spec.extend(spec_extra);
            let mut pod = Map::new();
            pod.insert(
                "metadata".into(),
                json!({"name": "p", "namespace": "team", "annotations": annotations, "labels": {"app": "p"}}),
            );
            pod.insert("spec".into(), Value::Object(spec));
            pod.extend(pod_extra);
            Value::Object(pod)
        })
}

/// A user's own `istio-proxy`, as charts ship it to override the injected one.
fn user_proxy() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(env_var(), 0..3),
        prop::option::of(prop_oneof![Just("3000m"), Just("250m"), Just("1")]),
        prop::option::of(1000i64..2000),
        any::<bool>(),
    )
        .prop_map(|(env, cpu, uid, args)| {
            let mut c = Map::new();
            c.insert("name".into(), json!("istio-proxy"));
            c.insert("image".into(), json!("auto"));
            if args {
                c.insert(
                    "args".into(),
                    json!(["proxy", "sidecar", "--concurrency", "2"]),
                );
            }
            if !env.is_empty() {
                c.insert("env".into(), Value::from(env));
            }
            if let Some(cpu) = cpu {
                c.insert(
                    "resources".into(),
                    json!({"limits": {"cpu": cpu, "memory": "2048Mi"}}),
                );
            }
            if let Some(uid) = uid {
                c.insert("securityContext".into(), json!({"runAsUser": uid}));
            }
            Value::Object(c)
        })
}

fn injected(pod: &Value, native: bool) -> Value {
    let req = Request {
        pod,
        namespace: Some("team"),
        workload: None,
        native_sidecars: native,
    };
    match inject::inject(config(), &req) {
        Ok(Outcome::Injected(i)) => i.pod,
        other => panic!("expected an injection, got {other:?}"),
    }
}

/// Every `x-*` field of the input, as (JSON pointer of its parent, key, value), located by
/// container name rather than position since containers move.
fn unknown_leaves(pod: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    let mut take = |path: String, m: &Map<String, Value>| {
        for (k, v) in m {
            if k.starts_with("x-") {
                out.push((path.clone(), k.clone(), v.clone()));
            }
        }
    };
    if let Some(m) = pod.as_object() {
        take("pod".into(), m);
    }
    if let Some(m) = pod.get("spec").and_then(Value::as_object) {
        take("spec".into(), m);
    }
    for list in ["containers", "initContainers"] {
        for c in pod["spec"][list].as_array().into_iter().flatten() {
            if let Some(m) = c.as_object() {
                take(format!("container {}", c["name"]), m);
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn patch_applies_and_reproduces_the_output(p in pod(), native in any::<bool>()) {
        let after = injected(&p, native);
        let patch = inject::patch(&p, &after);
        let mut patched = p.clone();
        json_patch::patch(&mut patched, &patch).expect("the patch applies to the input");
        prop_assert_eq!(patched, after);
    }

    #[test]
    fn nothing_the_user_wrote_is_lost(p in pod(), native in any::<bool>()) {
        let after = injected(&p, native);
        let mut got = unknown_leaves(&after);
        got.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let mut want = unknown_leaves(&p);
        want.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        prop_assert_eq!(got, want);
        // Every user annotation and env var survives (annotations the engine manages aside).
        for (k, v) in p["metadata"]["annotations"].as_object().into_iter().flatten() {
            prop_assert_eq!(&after["metadata"]["annotations"][k], v, "annotation {}", k);
        }
        for list in ["containers", "initContainers"] {
            for c in p["spec"][list].as_array().into_iter().flatten() {
                let name = &c["name"];
                let out = ["containers", "initContainers"].iter()
                    .flat_map(|l| after["spec"][*l].as_array().into_iter().flatten())
                    .find(|o| &o["name"] == name)
                    .expect("container kept");
                prop_assert_eq!(&out["env"], &c["env"]);
                prop_assert_eq!(&out["image"], &c["image"]);
            }
        }
    }

    #[test]
    fn injecting_twice_changes_nothing(p in pod(), native in any::<bool>()) {
        let once = injected(&p, native);
        let twice = injected(&once, native);
        prop_assert_eq!(once, twice);
    }

    /// The reinvocation review: the API server defaulted what the injection added and mounted
    /// its token into istio-init and istio-proxy, and a later webhook may have set an env var on
    /// the proxy. Injecting that pod again answers with no patch.
    #[test]
    fn reinjecting_the_pod_the_api_server_stored_changes_nothing(
        p in pod(),
        native in any::<bool>(),
        later_webhook in any::<bool>(),
        user_proxy in prop::option::of(user_proxy()),
    ) {
        let token = "kube-api-access-x7k2p";
        let mut p = p;
        if let Some(proxy) = user_proxy {
            p["spec"]["containers"].as_array_mut().expect("containers").push(proxy);
        }
        let created = apiserver::admitted(&p, token);
        let once = injected(&created, native);
        let mut stored = apiserver::admitted(&once, token);
        if later_webhook {
            let spec = stored["spec"].as_object_mut().expect("spec");
            let proxy = spec.values_mut()
                .filter_map(Value::as_array_mut)
                .flatten()
                .find(|c| c["name"] == "istio-proxy")
                .expect("proxy injected");
            proxy["env"].as_array_mut().expect("env").push(json!({"name": "LATER_WEBHOOK", "value": "1"}));
        }
        let again = injected(&stored, native);
        prop_assert_eq!(inject::patch(&stored, &again).0, vec![]);
    }

    #[test]
    fn annotation_values_stay_plain_strings(p in pod()) {
        let after = injected(&p, false);
        let level = p["metadata"]["annotations"]["sidecar.istio.io/agentLogLevel"].as_str().unwrap_or_default();
        let proxy = after["spec"]["containers"].as_array().into_iter().flatten()
            .chain(after["spec"]["initContainers"].as_array().into_iter().flatten())
            .find(|c| c["name"] == "istio-proxy")
            .expect("proxy injected");
        let want = format!("--log_output_level={level}");
        prop_assert!(proxy["args"].as_array().expect("args").iter().any(|a| a == &Value::from(want.clone())));
        prop_assert_eq!(&proxy["securityContext"]["privileged"], &Value::Bool(false));
        // The rendered proxy has exactly the template's fields: nothing was spliced in.
        let keys: Vec<&str> = proxy.as_object().expect("object").keys().map(String::as_str).collect();
        for k in &keys {
            prop_assert!(
                ["name", "image", "ports", "args", "env", "lifecycle", "readinessProbe", "startupProbe",
                 "securityContext", "resources", "volumeMounts", "restartPolicy"].contains(k),
                "unexpected field {} on istio-proxy", k
            );
        }
    }
}

/// A pod asking for one of the other shipped templates: the gRPC ones render into the app
/// containers, the gateway one into the pod's own `istio-proxy`.
fn templated_pod() -> impl Strategy<Value = Value> {
    let gateway = (
        prop::collection::vec(env_var(), 0..4),
        prop::option::of(1u16..=9000),
        unknown_fields(),
        prop::collection::vec(("[a-z]{1,6}\\.[a-z_]{1,10}", "[0-9]{1,4}"), 0..3),
        hostile_text(),
    )
        .prop_map(|(env, port, extra, sysctls, level)| {
            let mut proxy = Map::new();
            proxy.insert("name".into(), Value::from("istio-proxy"));
            proxy.insert("image".into(), Value::from("auto"));
            proxy.insert("env".into(), Value::from(env));
            if let Some(p) = port {
                proxy.insert("ports".into(), json!([{"containerPort": p}]));
            }
            proxy.extend(extra);
            let sysctls: Vec<Value> = sysctls
                .into_iter()
                .map(|(n, v)| json!({"name": n, "value": v}))
                .collect();
            json!({
                "metadata": {"name": "gw", "namespace": "team", "labels": {"istio": "gw"},
                    "annotations": {"inject.istio.io/templates": "gateway",
                        "sidecar.istio.io/agentLogLevel": level}},
                "spec": {"securityContext": {"sysctls": sysctls},
                    "containers": [Value::Object(proxy)]}
            })
        });
    let grpc = (pod(), prop_oneof![Just("grpc-agent"), Just("grpc-simple")]).prop_map(
        |(mut p, template)| {
            p["metadata"]["annotations"]["inject.istio.io/templates"] = Value::from(template);
            p
        },
    );
    prop_oneof![gateway, grpc]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn other_templates_patch_applies_and_injecting_twice_changes_nothing(
        p in templated_pod(),
        native in any::<bool>(),
    ) {
        let once = injected(&p, native);
        let mut patched = p.clone();
        json_patch::patch(&mut patched, &inject::patch(&p, &once)).expect("the patch applies");
        prop_assert_eq!(&patched, &once);
        let twice = injected(&once, native);
        prop_assert_eq!(once, twice);
    }

    #[test]
    fn other_templates_lose_nothing_the_user_wrote(p in templated_pod(), native in any::<bool>()) {
        let after = injected(&p, native);
        let mut got = unknown_leaves(&after);
        got.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let mut want = unknown_leaves(&p);
        want.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        prop_assert_eq!(got, want);
        for (k, v) in p["metadata"]["annotations"].as_object().into_iter().flatten() {
            prop_assert_eq!(&after["metadata"]["annotations"][k], v, "annotation {}", k);
        }
        for sysctl in p["spec"]["securityContext"]["sysctls"].as_array().into_iter().flatten() {
            let kept = after["spec"]["securityContext"]["sysctls"].as_array().into_iter().flatten();
            prop_assert!(kept.into_iter().any(|s| s == sysctl), "sysctl {} lost", sysctl);
        }
        for list in ["containers", "initContainers"] {
            for c in p["spec"][list].as_array().into_iter().flatten() {
                let out = ["containers", "initContainers"].iter()
                    .flat_map(|l| after["spec"][*l].as_array().into_iter().flatten())
                    .find(|o| o["name"] == c["name"])
                    .expect("container kept");
                // The templates add env vars; every one the user wrote is there as written.
                let out_env = out["env"].as_array().cloned().unwrap_or_default();
                for e in c["env"].as_array().into_iter().flatten() {
                    prop_assert!(out_env.contains(e), "env {} of {} lost", e, c["name"]);
                }
                if c["image"] != "auto" {
                    prop_assert_eq!(&out["image"], &c["image"]);
                }
            }
        }
    }
}
