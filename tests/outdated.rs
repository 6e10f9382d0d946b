//! The upgrade comparison (`sidecar_injector::upgrade::assess`) on pods as the API server
//! returns them.
//!
//! The golden pods in `tests/golden/outdated/NAME.pod.yaml` are what `kubectl get pod -o yaml`
//! would show: a workload's pod made by its controller, defaulted by the API server, given its
//! token volume by the ServiceAccount admission, injected (by this engine under an older
//! configuration, or by istiod: the `istio-examples` outputs), defaulted again, scheduled and
//! running (see `tests/apiserver`). `NAME.verdict.txt` is what the comparison says of it under
//! the current configuration. Regenerate both on purpose with `UPDATE_GOLDEN=1 cargo test --test
//! outdated` and review the diff like code.

mod apiserver;

use std::path::{Path, PathBuf};

use apiserver::{Webhook, create, pod_of};
use serde_json::{Map, Value, json};
use sidecar_injector::config::{Config, Sources};
use sidecar_injector::inject::{self, Outcome, Request};
use sidecar_injector::upgrade::{Target, Verdict, assess};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn golden_dir() -> PathBuf {
    root().join("tests/golden/outdated")
}

fn update() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some()
}

/// A configuration from the embedded defaults with `values` and `mesh` merged over them.
fn config_with(values: &str, mesh: &str) -> Config {
    let mut sources = Sources::embedded();
    sources.values = values.to_string();
    sources.mesh = mesh.to_string();
    Config::from_sources(&sources).expect("valid config")
}

fn config(values: &str) -> Config {
    config_with(values, "")
}

/// The chart's `config` with only the `sidecar` template, whatever other templates the
/// embedded configuration has: what an injector without istiod's `gateway` and `grpc-agent`
/// templates judges.
fn sidecar_only(values: &str, config_extra: &str) -> Config {
    let files = root().join("charts/sidecar-injector/files");
    let base = std::fs::read_to_string(files.join("config.yaml")).unwrap();
    let template = std::fs::read_to_string(files.join("templates/sidecar.yaml.j2")).unwrap();
    // `config_extra` replaces the keys it sets.
    let mut text = String::new();
    for line in base.lines() {
        let key = line.split(':').next().unwrap_or("");
        let replaced = !line.starts_with(' ')
            && !key.is_empty()
            && config_extra
                .lines()
                .any(|l| l.starts_with(&format!("{key}:")));
        if !replaced {
            text.push_str(line);
            text.push('\n');
        }
    }
    text.push_str(config_extra);
    text.push_str("\ntemplates:\n  sidecar: |\n");
    for line in template.lines() {
        text.push_str("    ");
        text.push_str(line);
        text.push('\n');
    }
    let sources = Sources {
        config: text,
        values: values.to_string(),
        mesh: String::new(),
    };
    Config::from_sources(&sources).expect("valid config")
}

fn labels(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

fn parse(text: &str) -> Value {
    sidecar_injector::yaml::parse_one(text).unwrap()
}

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: cart, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: cart}}
  template:
    metadata:
      labels: {app: cart, version: v3}
    spec:
      containers:
      - name: cart
        image: registry.example.com/cart:3.1.0
        ports: [{containerPort: 8080, name: http}]
        readinessProbe: {httpGet: {path: /ready, port: http}}
        livenessProbe: {tcpSocket: {port: 8080}, initialDelaySeconds: 5}
        resources: {requests: {cpu: 0.25, memory: 256Mi}}
"#;

/// `APP`'s pod as stored after injection under `config` (`None`: created uninjected).
fn app_pod(config: Option<&Config>, native: bool) -> Value {
    create(
        pod_of(&parse(APP), 1),
        config.map(|config| Webhook { config, native }),
        false,
    )
}

/// istiod's output for one of Istio's own test inputs (a Deployment; the files in
/// `tests/golden/istio` and `tests/golden/outdated/istiod` are istiod's, unchanged), as its pod
/// is stored.
///
/// istiod injected these from manifests that had not been through the API server; in a
/// cluster the pod it sees is defaulted, so its container ports carry `protocol: TCP`, and so
/// does `ISTIO_META_POD_PORTS`, which istiod writes from them. That one value is written here as
/// istiod writes it for a defaulted pod; the rest is istiod's output as it is.
fn istiod_pod(file: &str) -> Value {
    let shared = root().join("tests/golden/istio").join(file);
    let path = if shared.exists() {
        shared
    } else {
        golden_dir().join("istiod").join(file)
    };
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let doc = sidecar_injector::yaml::parse_documents(&text).unwrap()[0].clone();
    let mut pod = create(pod_of(&doc, 0), None, false);
    for list in ["initContainers", "containers"] {
        for c in pod["spec"][list].as_array_mut().into_iter().flatten() {
            for e in c["env"].as_array_mut().into_iter().flatten() {
                if e["name"] == "ISTIO_META_POD_PORTS" {
                    let ports: Vec<Value> =
                        serde_json::from_str(e["value"].as_str().unwrap()).unwrap();
                    let entries: Vec<String> = ports
                        .into_iter()
                        .map(|mut p| {
                            p["protocol"] = json!("TCP");
                            p.to_string()
                        })
                        .collect();
                    e["value"] = json!(format!("[\n    {}\n]", entries.join("\n    ,")));
                }
            }
        }
    }
    pod
}

fn shop() -> Map<String, Value> {
    labels(json!({"istio-injection": "enabled"}))
}

/// One golden pod and the configuration it is judged against.
struct Case {
    name: &'static str,
    /// What the case shows.
    about: &'static str,
    live: Value,
    config: Config,
    native: bool,
    namespace_labels: Map<String, Value>,
}

fn cases() -> Vec<Case> {
    let current = config("");
    let parity = "global: {hub: registry.istio.io/testing, tag: latest}";
    vec![
        Case {
            name: "fresh",
            about: "injected under the current configuration",
            live: app_pod(Some(&current), false),
            config: config(""),
            native: false,
            namespace_labels: shop(),
        },
        Case {
            name: "fresh-native",
            about: "a native sidecar, injected under the current configuration, the token mounted into istio-proxy too (webhook reinvocation)",
            live: create(
                pod_of(&parse(APP), 2),
                Some(Webhook {
                    config: &current,
                    native: true,
                }),
                true,
            ),
            config: config(""),
            native: true,
            namespace_labels: shop(),
        },
        Case {
            name: "image-bumped",
            about: "injected with tag 1.27.3; the values now say 1.28.0",
            live: app_pod(Some(&config("global: {tag: 1.27.3}")), false),
            config: config(""),
            native: false,
            namespace_labels: shop(),
        },
        Case {
            name: "values-changed",
            about: "the proxy's memory limit, log level and a proxyMetadata entry changed since injection",
            live: app_pod(
                Some(&config_with(
                    "",
                    "defaultConfig: {proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"true\"}}",
                )),
                false,
            ),
            config: config(
                "global: {proxy: {logLevel: debug, resources: {limits: {memory: 2Gi}}}}",
            ),
            native: false,
            namespace_labels: shop(),
        },
        Case {
            name: "native-now",
            about: "a classic sidecar; native sidecars are on now",
            live: app_pod(Some(&current), false),
            config: config(""),
            native: true,
            namespace_labels: shop(),
        },
        Case {
            name: "hold-now",
            about: "holdApplicationUntilProxyStarts turned on since injection",
            live: app_pod(Some(&current), false),
            config: config("global: {proxy: {holdApplicationUntilProxyStarts: true}}"),
            native: false,
            namespace_labels: shop(),
        },
        Case {
            name: "probes-rewrite-off",
            about: "the probe rewrite turned off since injection",
            live: app_pod(Some(&current), false),
            config: config("sidecarInjectorWebhook: {rewriteAppHTTPProbe: false}"),
            native: false,
            namespace_labels: shop(),
        },
        Case {
            name: "probes-rewrite-on",
            about: "injected with the probe rewrite off; it is on now",
            live: app_pod(
                Some(&config(
                    "sidecarInjectorWebhook: {rewriteAppHTTPProbe: false}",
                )),
                false,
            ),
            config: config(""),
            native: false,
            namespace_labels: shop(),
        },
        Case {
            name: "cni-now",
            about: "istio-cni enabled since injection: istio-validation replaces istio-init",
            live: app_pod(Some(&current), false),
            config: config("pilot: {cni: {enabled: true}}"),
            native: false,
            namespace_labels: shop(),
        },
        Case {
            name: "other-revision-selected-now",
            about: "injected by revision canary; its namespace now selects the default revision, which this injector serves",
            live: app_pod(Some(&config("revision: canary")), false),
            config: config(""),
            native: false,
            namespace_labels: shop(),
        },
        Case {
            name: "other-revision",
            about: "injected by revision canary, which its namespace still selects: not this injector's",
            live: app_pod(Some(&config("revision: canary")), false),
            config: config(""),
            native: false,
            namespace_labels: labels(json!({"istio.io/rev": "canary"})),
        },
        Case {
            name: "unlabelled-now",
            about: "injected, but its namespace lost its injection label",
            live: app_pod(Some(&current), false),
            config: config(""),
            native: false,
            namespace_labels: labels(json!({})),
        },
        Case {
            name: "never-injected",
            about: "created while no injector ran, in a namespace that asks for injection",
            live: app_pod(None, false),
            config: config(""),
            native: false,
            namespace_labels: shop(),
        },
        Case {
            name: "never-injected-not-asked",
            about: "created uninjected in a namespace that does not ask for injection",
            live: app_pod(None, false),
            config: config(""),
            native: false,
            namespace_labels: labels(json!({})),
        },
        Case {
            name: "opted-out-now",
            about: "injected under policy enabled; the policy is disabled now",
            live: app_pod(Some(&current), false),
            config: sidecar_only("", "\npolicy: disabled\n"),
            native: false,
            namespace_labels: shop(),
        },
        Case {
            name: "istiod-hello-fresh",
            about: "istiod's native-sidecar output, judged with the same hub, tag and native sidecars",
            live: istiod_pod("hello.yaml.injected"),
            config: config(parity),
            native: true,
            namespace_labels: shop(),
        },
        Case {
            name: "istiod-hello",
            about: "istiod's native-sidecar output, judged with the embedded defaults and classic sidecars",
            live: istiod_pod("hello.yaml.injected"),
            config: config(""),
            native: false,
            namespace_labels: shop(),
        },
        Case {
            name: "istiod-hello-old-version-fresh",
            about: "istiod's classic-sidecar output, judged with the same hub and tag",
            live: istiod_pod("hello-old-version.yaml.injected"),
            config: config(parity),
            native: false,
            namespace_labels: shop(),
        },
        Case {
            name: "istiod-hello-probes-fresh",
            about: "istiod's output with rewritten probes, judged with the same hub, tag and native sidecars",
            live: istiod_pod("hello-probes.yaml.injected"),
            config: config(parity),
            native: true,
            namespace_labels: shop(),
        },
        Case {
            name: "istiod-marker",
            about: "istiod's output, judged by an injector that writes an injectedAnnotations marker",
            live: istiod_pod("hello.yaml.injected"),
            config: sidecar_only(
                parity,
                "\ninjectedAnnotations:\n  sidecar-injector.io/injected-by: sidecar-injector\n",
            ),
            native: true,
            namespace_labels: shop(),
        },
        Case {
            name: "istiod-gateway",
            about: "istiod's gateway template output, judged by an injector with only the sidecar template",
            live: istiod_pod("gateway.yaml.injected"),
            config: sidecar_only(parity, ""),
            native: true,
            namespace_labels: shop(),
        },
        Case {
            name: "istiod-grpc-agent",
            about: "istiod's grpc-agent template output, judged by an injector with only the sidecar template",
            live: istiod_pod("grpc-agent.yaml.injected"),
            config: sidecar_only(parity, ""),
            native: true,
            namespace_labels: shop(),
        },
    ]
}

fn verdict_text(case: &Case, verdict: &Verdict) -> String {
    let mut out = format!("# {}\n", case.about);
    match verdict {
        Verdict::Fresh => out.push_str("fresh\n"),
        Verdict::NotMeshed => out.push_str("not meshed: nothing to do\n"),
        Verdict::OtherRevision(r) => {
            out.push_str(&format!("another revision's pod: {r}\n"));
        }
        Verdict::Stale(reasons) => {
            out.push_str("stale\n");
            for r in reasons {
                out.push_str(&format!("- {r}\n"));
            }
        }
    }
    out
}

fn check_golden(path: &Path, actual: &str, failures: &mut Vec<String>) {
    if update() {
        std::fs::write(path, actual).unwrap();
        return;
    }
    match std::fs::read_to_string(path) {
        Ok(expected) if expected == actual => {}
        Ok(expected) => failures.push(format!(
            "{} differs:\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        )),
        Err(_) => failures.push(format!(
            "{} is missing (UPDATE_GOLDEN=1 writes it)",
            path.display()
        )),
    }
}

#[test]
fn golden_pods() {
    std::fs::create_dir_all(golden_dir()).unwrap();
    let mut failures = Vec::new();
    for case in cases() {
        let pod_yaml = sidecar_injector::yaml::to_string(&case.live);
        check_golden(
            &golden_dir().join(format!("{}.pod.yaml", case.name)),
            &pod_yaml,
            &mut failures,
        );
        // The comparison reads the pod as written in the golden file.
        let live = parse(&pod_yaml);
        let target = Target {
            config: &case.config,
            native_sidecars: case.native,
            injector_namespace: None,
        };
        let verdict = assess(&target, &live, Some(&case.namespace_labels)).unwrap();
        check_golden(
            &golden_dir().join(format!("{}.verdict.txt", case.name)),
            &verdict_text(&case, &verdict),
            &mut failures,
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The verdict, for the assertions below.
fn verdict_of(name: &str) -> Verdict {
    let case = cases().into_iter().find(|c| c.name == name).unwrap();
    let target = Target {
        config: &case.config,
        native_sidecars: case.native,
        injector_namespace: None,
    };
    assess(&target, &case.live, Some(&case.namespace_labels)).unwrap()
}

fn kinds(v: &Verdict) -> Vec<&'static str> {
    match v {
        Verdict::Stale(reasons) => reasons.iter().map(|r| r.kind().as_str()).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn the_verdicts_that_matter() {
    for fresh in [
        "fresh",
        "fresh-native",
        "istiod-hello-fresh",
        "istiod-hello-old-version-fresh",
        "istiod-hello-probes-fresh",
    ] {
        assert_eq!(verdict_of(fresh), Verdict::Fresh, "{fresh}");
    }
    assert_eq!(kinds(&verdict_of("image-bumped")), ["image"]);
    assert_eq!(kinds(&verdict_of("values-changed")), ["template-or-values"]);
    assert_eq!(
        kinds(&verdict_of("istiod-hello")),
        ["image", "template-or-values"]
    );
    assert_eq!(
        kinds(&verdict_of("other-revision-selected-now")),
        ["revision"]
    );
    assert_eq!(
        verdict_of("other-revision"),
        Verdict::OtherRevision("canary".into())
    );
    assert_eq!(kinds(&verdict_of("unlabelled-now")), ["revision"]);
    assert_eq!(kinds(&verdict_of("never-injected")), ["not-injected"]);
    assert_eq!(verdict_of("never-injected-not-asked"), Verdict::NotMeshed);
    assert_eq!(kinds(&verdict_of("opted-out-now")), ["no-longer-injected"]);
    assert_eq!(kinds(&verdict_of("istiod-marker")), ["other-injector"]);
    assert_eq!(kinds(&verdict_of("istiod-gateway")), ["other-injector"]);
    assert_eq!(kinds(&verdict_of("istiod-grpc-agent")), ["other-injector"]);
}

/// Every pod the golden injection cases make, injected and stored, is fresh under the
/// configuration that injected it: the comparison ignores what the API server adds, whatever
/// the pod holds (probes, drain hooks, user proxies, volumes, Prometheus settings, Jobs...).
#[test]
fn every_golden_input_is_fresh_after_its_own_injection() {
    let cases_dir = root().join("tests/golden/cases");
    let mut failures = Vec::new();
    let mut judged = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&cases_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.ends_with(".yaml") && !n.contains(".injected.") && !n.ends_with(".values.yaml")
        })
        .collect();
    entries.sort();
    for case in entries {
        let text = std::fs::read_to_string(&case).unwrap();
        let header = text.lines().next().unwrap_or("");
        let (mut values, mut mesh, mut native, mut revision) =
            (Value::Null, String::new(), false, None);
        for item in header.trim_start_matches("# golden:").split_whitespace() {
            match item.split_once('=') {
                Some(("native", v)) => native = v == "true",
                Some(("values", f)) => {
                    values = parse(&std::fs::read_to_string(cases_dir.join(f)).unwrap())
                }
                Some(("mesh", f)) => mesh = std::fs::read_to_string(cases_dir.join(f)).unwrap(),
                Some(("revision", r)) => revision = Some(r.to_string()),
                _ => panic!("{}: unknown golden option {item}", case.display()),
            }
        }
        if let Some(r) = revision {
            if !values.is_object() {
                values = json!({});
            }
            values["revision"] = json!(r);
        }
        let values = if values.is_null() {
            String::new()
        } else {
            values.to_string()
        };
        let config = config_with(&values, &mesh);
        let ns_labels = match config.values()["revision"]
            .as_str()
            .filter(|r| !r.is_empty())
        {
            Some(r) => labels(json!({"istio.io/rev": r})),
            None => shop(),
        };
        let docs = sidecar_injector::yaml::parse_documents(&text).unwrap();
        let mut workloads = Vec::new();
        for doc in docs {
            if doc["kind"] == "List" {
                workloads.extend(doc["items"].as_array().cloned().unwrap_or_default());
            } else {
                workloads.push(doc);
            }
        }
        for doc in workloads {
            let kind = doc["kind"].as_str().unwrap_or("");
            if sidecar_injector::manifest::pod_template_location(kind).is_none() {
                continue;
            }
            // A pod the injector refuses is not created (`refused_while_down` covers the
            // ones created while it was down).
            let first = inject::inject(
                &config,
                &Request {
                    pod: &pod_of(&doc, 0),
                    namespace: None,
                    workload: None,
                    native_sidecars: native,
                },
            );
            if matches!(first, Ok(Outcome::Denied(_))) {
                continue;
            }
            for reinvoked in [false, true] {
                let live = create(
                    pod_of(&doc, 0),
                    Some(Webhook {
                        config: &config,
                        native,
                    }),
                    reinvoked,
                );
                let target = Target {
                    config: &config,
                    native_sidecars: native,
                    injector_namespace: None,
                };
                judged += 1;
                match assess(&target, &live, Some(&ns_labels)) {
                    Ok(Verdict::Fresh | Verdict::NotMeshed) => {}
                    other => failures.push(format!(
                        "{} {kind}/{} (reinvoked: {reinvoked}): {other:?}",
                        case.file_name().unwrap().to_string_lossy(),
                        doc["metadata"]["name"]
                    )),
                }
            }
        }
    }
    assert!(judged > 40, "only {judged} pods judged");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn refused_while_down() {
    // Created while the injector was down (failurePolicy Ignore), with an annotation the
    // injector refuses: restarting it would fail, which the user must hear before a rollout.
    let mut doc = parse(APP);
    doc["spec"]["template"]["metadata"]["annotations"] =
        json!({"sidecar.istio.io/interceptionMode": "redirect"});
    let live = create(pod_of(&doc, 0), None, false);
    let current = config("");
    let target = Target {
        config: &current,
        native_sidecars: false,
        injector_namespace: None,
    };
    let v = assess(&target, &live, Some(&shop())).unwrap();
    assert_eq!(kinds(&v), ["refused"]);
    let text = match &v {
        Verdict::Stale(r) => r[0].to_string(),
        _ => unreachable!(),
    };
    assert!(text.contains("sidecar.istio.io/interceptionMode"), "{text}");
}

#[test]
fn the_injectors_own_namespace_is_never_selected() {
    let mut doc = parse(APP);
    doc["metadata"]["namespace"] = json!("sidecar-injector");
    let live = create(pod_of(&doc, 0), None, false);
    let current = config("");
    let target = Target {
        config: &current,
        native_sidecars: false,
        injector_namespace: Some("sidecar-injector".into()),
    };
    assert_eq!(
        assess(&target, &live, Some(&shop())).unwrap(),
        Verdict::NotMeshed
    );
}

#[test]
fn hostile_values_stay_on_one_line() {
    // An image name with a newline and an escape sequence, injected through the annotation.
    let mut doc = parse(APP);
    doc["spec"]["template"]["metadata"]["annotations"] =
        json!({"sidecar.istio.io/proxyImage": "evil.example/proxy:1\n\u{1b}[2Jrm -rf"});
    let current = config("");
    let live = create(
        pod_of(&doc, 0),
        Some(Webhook {
            config: &current,
            native: false,
        }),
        false,
    );
    let mut relabelled = live.clone();
    relabelled["metadata"]["annotations"]["sidecar.istio.io/proxyImage"] = json!("x/proxy:2");
    let target = Target {
        config: &current,
        native_sidecars: false,
        injector_namespace: None,
    };
    let v = assess(&target, &relabelled, Some(&shop())).unwrap();
    let Verdict::Stale(reasons) = v else {
        panic!("{v:?}")
    };
    let text = reasons[0].to_string();
    assert!(!text.chars().any(char::is_control), "{text:?}");
    assert!(text.contains("\\n"), "{text}");
}
