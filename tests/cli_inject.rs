//! `sidecar-injector inject` through the real binary: what it says on standard error, its exit
//! codes, its output formats, and the configuration it refuses.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn inject(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sidecar-injector"))
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const MANIFEST: &str = "\
# Source: shop/templates/config.yaml
apiVersion: v1
kind: ConfigMap
metadata: {name: flags}   # kept as written
data:
  FEATURE_X: \"yes\"
  COUNT: '1_000'
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: web:1, securityContext: {runAsUser: 1337}}
---
apiVersion: batch/v1
kind: Job
metadata: {name: migrate}
spec:
  template:
    metadata:
      annotations: {sidecar.istio.io/inject: \"false\"}
    spec:
      restartPolicy: Never
      containers: [{name: m, image: m:1}]
";

#[test]
fn one_line_per_workload_and_the_webhooks_warnings_on_stderr() {
    let o = inject(&["-f", "-"], MANIFEST);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines[0], "injected Deployment/shop/web");
    assert!(
        lines[1].starts_with("warning: Deployment/shop/web: [app-runs-as-proxy-uid] "),
        "{err}"
    );
    assert_eq!(
        lines[2],
        "skipped Job/migrate: the annotation sidecar.istio.io/inject is \"false\""
    );
    // The ConfigMap and the skipped Job are written as they came.
    let out = text(&o.stdout);
    let configmap = &MANIFEST[..MANIFEST.find("---").unwrap()];
    assert!(out.starts_with(configmap), "{out}");
    let job = &MANIFEST[MANIFEST.rfind("---\n").unwrap()..];
    assert!(out.ends_with(job), "{out}");

    // -q: nothing but errors.
    let o = inject(&["-f", "-", "-q"], MANIFEST);
    assert!(o.status.success());
    assert_eq!(text(&o.stderr), "");
}

#[test]
fn json_output_and_output_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.json");
    let o = inject(
        &[
            "-f",
            "-",
            "-o",
            "json",
            "--output-file",
            file.to_str().unwrap(),
        ],
        MANIFEST,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(o.stdout.is_empty());
    let written = std::fs::read_to_string(&file).unwrap();
    let docs: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&written)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(docs.len(), 3);
    assert_eq!(docs[0]["data"]["FEATURE_X"], "yes");
    let containers = docs[1]["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert!(containers.iter().any(|c| c["name"] == "istio-proxy"));
}

#[test]
fn a_file_name_after_dash_o_points_to_output_file() {
    // `istioctl kube-inject -o FILE` writes to FILE; here `-o` is the format.
    let o = inject(&["-f", "-", "-o", "out.yaml"], MANIFEST);
    assert_eq!(o.status.code(), Some(2));
    let stderr = text(&o.stderr);
    assert!(
        stderr.contains("`out.yaml` is not an output format; accepted: yaml, json")
            && stderr.contains("use --output-file out.yaml"),
        "{stderr}"
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn exit_codes_say_refused_or_unreadable() {
    // 1: a workload the webhook refuses; nothing is written.
    let refused = MANIFEST.replace(
        "metadata: {labels: {app: web}}",
        "metadata: {labels: {app: web}, annotations: {sidecar.istio.io/proxyCPU: lots}}",
    );
    let o = inject(&["-f", "-"], &refused);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert!(
        text(&o.stderr).contains("invalid value \"lots\""),
        "{}",
        text(&o.stderr)
    );
    // 2: input that cannot be read.
    let o = inject(&["-f", "-"], "a: [\n");
    assert_eq!(o.status.code(), Some(2));
    let o = inject(&["-f", "/nonexistent/app.yaml"], "");
    assert_eq!(o.status.code(), Some(2));
    // The codes are in --help.
    let help = Command::new(env!("CARGO_BIN_EXE_sidecar-injector"))
        .args(["inject", "--help"])
        .output()
        .unwrap();
    let help = text(&help.stdout);
    assert!(
        help.contains("Exit codes:") && help.contains("  2  "),
        "{help}"
    );
}

#[test]
fn an_unrendered_helm_template_says_so() {
    let chart = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ include \"app.fullname\" . }}\nspec:\n  template:\n    spec:\n      containers:\n      - image: \"{{ .Values.image }}\"\n";
    let o = inject(&["-f", "-"], chart);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.contains("looks like an unrendered Helm template: run `helm template` first"),
        "{err}"
    );
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn mesh_config_is_checked_like_the_annotation() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.yaml",
        "defaultConfig:\n  holdApplicationUntilProxyStarts: yes please\n",
    );
    let o = inject(&["-f", "-", "--mesh", &bad], MANIFEST);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.contains("holdApplicationUntilProxyStarts") && err.contains("accepted: true or false"),
        "{err}"
    );
    // The same value in the annotation is refused with the same words.
    let annotated = MANIFEST.replace(
        "metadata: {labels: {app: web}}",
        "metadata: {labels: {app: web}, annotations: {proxy.istio.io/config: 'holdApplicationUntilProxyStarts: yes please'}}",
    );
    let o = inject(&["-f", "-"], &annotated);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("accepted: true or false"),
        "{}",
        text(&o.stderr)
    );

    // An unknown field: a warning naming the closest known one, in the mesh and the annotation.
    let typo = write(
        dir.path(),
        "typo.yaml",
        "defaultConfig:\n  holdApplicationUntilProxyStart: true\n",
    );
    let o = inject(&["-f", "-", "--mesh", &typo], MANIFEST);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("warning: mesh: defaultConfig: \"holdApplicationUntilProxyStart\" is not a ProxyConfig field; did you mean \"holdApplicationUntilProxyStarts\"?"),
        "{}",
        text(&o.stderr)
    );
    let annotated = MANIFEST.replace(
        "metadata: {labels: {app: web}}",
        "metadata: {labels: {app: web}, annotations: {proxy.istio.io/config: '{concurency: 2}'}}",
    );
    let o = inject(&["-f", "-"], &annotated);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("warning: Deployment/shop/web: proxy.istio.io/config: \"concurency\" is not a ProxyConfig field; did you mean \"concurrency\"?"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn inject_prints_the_warnings_the_webhook_returns() {
    use sidecar_injector::admission::{self, Decision, Review};
    // A bare pod that runs once, as the app's UID 1337, on a reserved port: the engine's
    // warnings and three findings.
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "once", "namespace": "shop"},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "task", "image": "task:1",
            "securityContext": {"runAsUser": 1337},
            "ports": [{"containerPort": 15010}]
        }]}
    });
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "operation": "CREATE", "namespace": "shop", "object": pod}
    });
    let review = Review::from_slice(review.to_string().as_bytes()).unwrap();
    let config = sidecar_injector::config::Config::embedded();
    let Decision::Patch { warnings, .. } = admission::decide(&config, &review, false).unwrap()
    else {
        panic!("not injected");
    };
    assert_eq!(warnings.len(), 3, "{warnings:?}");

    let o = inject(&["-f", "-", "--native-sidecars", "false"], &pod.to_string());
    assert!(o.status.success(), "{}", text(&o.stderr));
    let printed: Vec<String> = text(&o.stderr)
        .lines()
        .filter_map(|l| l.strip_prefix("warning: Pod/shop/once: "))
        .map(str::to_string)
        .collect();
    assert_eq!(printed, warnings);
}
