//! The guardrail findings: golden files for every finding (positive and negative cases), the
//! admission entry point, and the `analyze` command through the real binary.
//!
//! Golden files live in `tests/golden/analyze/<finding-id>/`: `positive-*.yaml` must produce that
//! finding, `negative-*.yaml` must not, and each `<case>.json` holds the exact findings expected.
//! A first line `# options: native cni hold distroless` sets the analysis options. Regenerate the
//! JSON with `UPDATE_GOLDEN=1 cargo test --test analyze` and review the diff.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};
use sidecar_injector::analyze::{
    self, AnalyzeOptions, CATALOGUE, Finding, PodContext, Severity, WARNING_TEXT_MAX,
};

fn golden_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/analyze")
}

fn options_of(text: &str) -> AnalyzeOptions {
    let mut opts = AnalyzeOptions::default();
    let Some(line) = text.lines().find_map(|l| l.strip_prefix("# options:")) else {
        return opts;
    };
    for word in line.split_whitespace() {
        match word {
            "native" => opts.native_sidecars = true,
            "cni" => opts.cni = true,
            "hold" => opts.hold_application = true,
            "distroless" => opts.distroless_proxy = true,
            other => panic!("unknown golden option {other:?}"),
        }
    }
    opts
}

fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn golden_findings_for_every_finding_positive_and_negative() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let config = sidecar_injector::config::Config::embedded();
    let mut mismatches = Vec::new();
    for kind in CATALOGUE {
        let dir = golden_root().join(kind.id);
        let files = cases(&dir);
        let stem = |p: &PathBuf| p.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(
            files.iter().any(|p| stem(p).starts_with("positive")),
            "{}: no positive case",
            kind.id
        );
        assert!(
            files.iter().any(|p| stem(p).starts_with("negative")),
            "{}: no negative case",
            kind.id
        );
        for file in files {
            let name = format!("{}/{}", kind.id, stem(&file));
            let text = std::fs::read_to_string(&file).unwrap();
            let docs = sidecar_injector::yaml::parse_documents(&text).unwrap();
            let findings = analyze::analyze_documents(&docs, &config, &options_of(&text));

            let has_id = findings.iter().any(|f| f.id == kind.id);
            if stem(&file).starts_with("positive") {
                assert!(has_id, "{name}: expected {} in {findings:#?}", kind.id);
            } else {
                assert!(!has_id, "{name}: unexpected {} in {findings:#?}", kind.id);
            }
            // The decision's own findings are never admission warnings (the webhook skips or
            // refuses those pods instead), so their text need not fit one.
            let decision_ids = [
                analyze::NOT_INJECTED,
                analyze::INJECTION_REFUSED,
                analyze::NO_POD_TEMPLATE,
            ];
            for f in findings.iter().filter(|f| !decision_ids.contains(&f.id)) {
                let w = f.warning_text();
                assert!(w.chars().count() <= WARNING_TEXT_MAX, "{name}: {w}");
                assert!(
                    w.contains(" Fix: "),
                    "{name}: the fix does not fit in the warning: {w}"
                );
            }

            let actual = serde_json::to_string_pretty(&findings).unwrap() + "\n";
            let expected_path = file.with_extension("json");
            if update {
                std::fs::write(&expected_path, &actual).unwrap();
            } else {
                let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
                if expected != actual {
                    mismatches.push(format!("{name}:\n{actual}"));
                }
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "golden mismatch (UPDATE_GOLDEN=1 to regenerate):\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn every_golden_directory_is_a_known_finding() {
    for entry in std::fs::read_dir(golden_root()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            analyze::kind(&name).is_some(),
            "tests/golden/analyze/{name} is not a finding id"
        );
    }
}

#[test]
fn docs_describe_every_finding() {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/findings.md"))
            .unwrap();
    for kind in CATALOGUE {
        assert!(
            docs.contains(&format!("## `{}`", kind.id)),
            "docs/findings.md lacks {}",
            kind.id
        );
    }
}

// ---- admission: one pod at a time ----

fn job_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "migrate-28000000-",
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": "migrate-28000000", "controller": true}
            ]
        },
        "spec": {
            "restartPolicy": "OnFailure",
            "containers": [{"name": "migrate", "image": "example/migrate:1"}]
        }
    })
}

#[test]
fn admission_pod_reads_its_owner_and_request_namespace() {
    let ctx = PodContext {
        namespace: Some("shop".into()),
        hold_application: true,
        ..PodContext::default()
    };
    let findings = analyze::analyze_pod(&job_pod(), &ctx);
    let ids: Vec<&str> = findings.iter().map(|f| f.id).collect();
    assert_eq!(ids, [analyze::JOB_NEVER_COMPLETES]);
    assert_eq!(findings[0].object, "Pod/shop/migrate-28000000-");
    assert_eq!(findings[0].field, "spec.containers");
    assert_eq!(findings[0].severity, Severity::Error);
    assert!(
        findings[0]
            .message
            .starts_with("This Job's pod never completes"),
        "{}",
        findings[0].message
    );
}

#[test]
fn admission_pod_in_native_mode_has_no_job_or_startup_findings() {
    let ctx = PodContext {
        native_sidecars: true,
        ..PodContext::default()
    };
    assert_eq!(
        analyze::analyze_pod(&job_pod(), &ctx),
        Vec::<Finding>::new()
    );
}

#[test]
fn admission_pod_after_native_injection_is_judged_by_its_containers() {
    // What the injector returns in native mode: the context's classic setting no longer applies.
    let pod = json!({
        "metadata": {"name": "web", "namespace": "shop",
                     "annotations": {"sidecar.istio.io/status": "{\"initContainers\":[\"istio-init\",\"istio-proxy\"],\"containers\":null}"}},
        "spec": {
            "initContainers": [
                {"name": "istio-init", "image": "proxyv2"},
                {"name": "istio-proxy", "image": "proxyv2", "restartPolicy": "Always",
                 "securityContext": {"runAsUser": 1337},
                 "ports": [{"containerPort": 15090, "name": "http-envoy-prom"}]},
                {"name": "migrate", "image": "example/migrate:1"}
            ],
            "containers": [{"name": "web", "image": "example/web:1"}]
        }
    });
    let ctx = PodContext {
        cni: true,
        ..PodContext::default()
    };
    assert_eq!(analyze::analyze_pod(&pod, &ctx), Vec::<Finding>::new());
}

/// Injects `pod` with the embedded config, the way the server does before analyzing.
fn injected(pod: &Value, native: bool) -> Value {
    let config = sidecar_injector::config::Config::embedded();
    let req = sidecar_injector::inject::Request {
        pod,
        namespace: Some("shop"),
        workload: None,
        native_sidecars: native,
    };
    match sidecar_injector::inject::inject(&config, &req) {
        Ok(sidecar_injector::inject::Outcome::Injected(i)) => i.pod,
        other => panic!("not injected: {other:?}"),
    }
}

fn ids(findings: &[Finding]) -> Vec<&'static str> {
    findings.iter().map(|f| f.id).collect()
}

#[test]
fn the_engines_classic_output_is_recognised_as_classic() {
    // The context claims native mode; the injected pod says otherwise and wins.
    let ctx = PodContext {
        native_sidecars: true,
        ..PodContext::default()
    };
    let pod = injected(&job_pod(), false);
    assert_eq!(
        ids(&analyze::analyze_pod(&pod, &ctx)),
        [
            analyze::APP_STARTS_BEFORE_PROXY,
            analyze::JOB_NEVER_COMPLETES
        ]
    );
}

#[test]
fn the_engines_native_output_is_recognised_as_native() {
    let mut pod = job_pod();
    pod["spec"]["initContainers"] = json!([{"name": "migrate-schema", "image": "example/m:1"}]);
    // Classic and istio-cni in the context would put the init container under the redirect;
    // the injected native pod shows the proxy starts first.
    let ctx = PodContext {
        cni: true,
        ..PodContext::default()
    };
    assert_eq!(
        analyze::analyze_pod(&injected(&pod, true), &ctx),
        Vec::<Finding>::new()
    );
}

#[test]
fn the_engines_proxy_is_not_mistaken_for_an_app_container() {
    // istio-proxy runs as 1337 and listens on 15090: neither is the application's doing.
    let pod = json!({
        "metadata": {"name": "web", "namespace": "shop",
                     "annotations": {"proxy.istio.io/config": "holdApplicationUntilProxyStarts: true"}},
        "spec": {"containers": [{"name": "web", "image": "example/web:1",
                                 "ports": [{"containerPort": 8080}]}]}
    });
    for native in [false, true] {
        let after = injected(&pod, native);
        assert_eq!(
            analyze::analyze_pod(&after, &PodContext::default()),
            Vec::<Finding>::new(),
            "native={native}"
        );
    }
}

#[test]
fn a_malformed_pod_gives_no_findings_and_no_panic() {
    for pod in [
        json!(null),
        json!("pod"),
        json!({"spec": {"containers": {"a": 1}}}),
        json!({"spec": []}),
    ] {
        assert_eq!(
            analyze::analyze_pod(&pod, &PodContext::default()),
            Vec::<Finding>::new()
        );
    }
}

// ---- the CLI, through the real binary ----

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sidecar-injector"))
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = bin()
        .arg("analyze")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const JOB: &str = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: migrate, namespace: shop}\n\
spec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - {name: migrate, image: m}\n";
const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\n\
spec:\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: web\n        image: w\n        ports:\n        - {name: grpc-api, containerPort: 9000}\n";
const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
spec:\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: 9000}\n";

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn cli_exit_code_follows_fail_on() {
    let dir = tempfile::tempdir().unwrap();
    let job = write(dir.path(), "job.yaml", JOB);
    let web = write(dir.path(), "web.yaml", DEPLOYMENT);

    // An error (the Job) fails by default; never does not.
    let o = run(&["-f", &job], None);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stdout(&o).contains("job-never-completes"), "{}", stdout(&o));
    assert_eq!(
        run(&["-f", &job, "--fail-on", "never"], None).status.code(),
        Some(0)
    );
    // Native sidecars make the Job complete.
    let o = run(&["-f", &job, "--native-sidecars", "true"], None);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("no findings"), "{}", stdout(&o));

    // Info only (the classic start-up race): fine even with --fail-on warning.
    assert_eq!(
        run(&["-f", &web, "--fail-on", "warning"], None)
            .status
            .code(),
        Some(0)
    );
    // Warnings only (a port in Istio's reserved range): fine by default, fatal with --fail-on
    // warning, fine again once that finding is switched off.
    let reserved = write(
        dir.path(),
        "reserved.yaml",
        &DEPLOYMENT.replace("containerPort: 9000", "containerPort: 15050"),
    );
    assert_eq!(run(&["-f", &reserved], None).status.code(), Some(0));
    assert_eq!(
        run(&["-f", &reserved, "--fail-on", "warning"], None)
            .status
            .code(),
        Some(1)
    );
    let o = run(
        &[
            "-f",
            &reserved,
            "--fail-on",
            "warning",
            "--disable",
            "reserved-port",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

#[test]
fn cli_reads_helm_output_on_stdin_and_prints_json() {
    let helm = format!(
        "---\n# Source: web/templates/service.yaml\n{SERVICE}---\n# Source: web/templates/deployment.yaml\n{DEPLOYMENT}---\n# Source: web/templates/empty.yaml\n"
    );
    let o = run(
        &["-f", "-", "-o", "json", "--native-sidecars", "true"],
        Some(&helm),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let findings: Vec<Value> = serde_json::from_str(&stdout(&o)).unwrap();
    let ids: Vec<&str> = findings.iter().filter_map(|f| f["id"].as_str()).collect();
    assert_eq!(ids, ["port-protocol-mismatch"]);
    assert_eq!(findings[0]["object"], "Service/shop/web");
    assert_eq!(findings[0]["severity"], "warning");
    assert_eq!(findings[0]["field"], "spec.ports[0]");
}

#[test]
fn cli_walks_directories_and_checks_objects_across_files() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "svc/service.yml", SERVICE);
    write(
        dir.path(),
        "apps/nested/web.json",
        &serde_json::to_string(&sidecar_injector::yaml::parse_one(DEPLOYMENT).unwrap()).unwrap(),
    );
    write(dir.path(), "apps/notes.txt", "kind: [not yaml");
    let root = dir.path().display().to_string();
    let o = run(&["-f", &root, "--native-sidecars", "true"], None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("Service/shop/web\n  warning port-protocol-mismatch  spec.ports[0]\n"),
        "{out}"
    );
    assert!(
        out.ends_with("1 finding: 0 errors, 1 warning, 0 info (port-protocol-mismatch)\n"),
        "{out}"
    );
}

#[test]
fn cli_unreadable_input_exits_2_naming_file_document_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.yaml",
        &format!("{JOB}---\nkind: Service\nspec: [\n"),
    );
    let o = run(&["-f", &bad], None);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains(&bad) && err.contains("document 2") && err.contains("line "),
        "{err}"
    );
    assert_eq!(stdout(&o), "no findings\n");

    let missing = dir.path().join("missing.yaml").display().to_string();
    let o = run(&["-f", &missing], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains(&missing), "{}", stderr(&o));

    let o = run(&["-f", "-"], Some("- just\n- a list\n"));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("<stdin>: document 1"), "{}", stderr(&o));

    let o = run(&["-f", &bad, "--disable", "no-such-finding"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no-such-finding"), "{}", stderr(&o));
}

#[test]
fn cli_reports_a_bad_file_and_analyzes_the_others() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a-bad.yaml", "kind: Service\nspec: [\n");
    write(dir.path(), "b-job.yaml", JOB);
    write(dir.path(), "c-list.yaml", "- not\n- an object\n");
    let root = dir.path().display().to_string();
    let o = run(&["-f", &root], None);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("a-bad.yaml: document 1"), "{err}");
    assert!(
        err.contains("c-list.yaml: document 1: not a Kubernetes object"),
        "{err}"
    );
    // The Job in between is analyzed all the same.
    assert!(stdout(&o).contains("job-never-completes"), "{}", stdout(&o));
}

#[test]
fn cli_an_unrendered_helm_template_says_so() {
    let chart = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}\nspec:\n  replicas: {{ .Values.replicas }}\n";
    let o = run(&["-f", "-"], Some(chart));
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("looks like an unrendered Helm template: run `helm template` first"),
        "{err}"
    );
}

#[test]
fn cli_skipped_workloads_get_only_an_info_line() {
    // The usual fix for Jobs (opt the pod out), and a hostNetwork CronJob: `inject` skips both.
    let opted_out = JOB.replace(
        "  template:\n    spec:\n",
        "  template:\n    metadata:\n      annotations: {sidecar.istio.io/inject: \"false\"}\n    spec:\n",
    );
    let cron = "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: report, namespace: ops}\nspec:\n  schedule: '@hourly'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          hostNetwork: true\n          restartPolicy: OnFailure\n          containers:\n          - {name: report, image: r}\n";
    let input = format!("{opted_out}---\n{cron}");
    let o = run(&["-f", "-", "-o", "json"], Some(&input));
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let findings: Vec<Value> = serde_json::from_str(&stdout(&o)).unwrap();
    let got: Vec<(&str, &str, &str)> = findings
        .iter()
        .map(|f| {
            (
                f["object"].as_str().unwrap(),
                f["id"].as_str().unwrap(),
                f["severity"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("Job/shop/migrate", "not-injected", "info"),
            ("CronJob/ops/report", "not-injected", "info")
        ]
    );
    assert!(
        findings[1]["message"]
            .as_str()
            .unwrap()
            .contains("host networking"),
        "{findings:?}"
    );
    // `--fail-on info` makes even that fail.
    let o = run(&["-f", "-", "--fail-on", "info"], Some(&input));
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn cli_refuses_what_the_webhook_refuses() {
    let bad = DEPLOYMENT.replace(
        "    metadata:\n      labels: {app: web}\n",
        "    metadata:\n      labels: {app: web}\n      annotations:\n        sidecar.istio.io/proxyCPU: lots\n        traffic.sidecar.istio.io/excludeOutboundIPRanges: 10.0.0.0/33\n        traffic.sidecar.istio.io/excludeInboundPorts: 80,http\n",
    );
    let o = run(&["-f", "-", "--native-sidecars", "true"], Some(&bad));
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(out.contains("error   injection-refused"), "{out}");
    for part in ["\"lots\"", "10.0.0.0/33", "\"http\" is not a port"] {
        assert!(out.contains(part), "{part}: {out}");
    }
    // The same manifest through `inject`: the same refusal.
    let inject = bin()
        .args(["inject", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = inject.stdin.as_ref().unwrap();
    stdin.write_all(bad.as_bytes()).unwrap();
    let o = inject.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("invalid value \"lots\""),
        "{}",
        stderr(&o)
    );

    // A workload with no pod template is a finding too.
    let o = run(
        &["-f", "-"],
        Some("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: 1}\n"),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("no-pod-template  spec.template"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn cli_takes_the_configuration_flags_of_inject() {
    let dir = tempfile::tempdir().unwrap();
    let job = write(dir.path(), "job.yaml", JOB);
    // Native sidecars from the values, as `inject` reads them: the Job completes.
    let values = write(
        dir.path(),
        "values.yaml",
        "sidecarInjectorWebhook: {nativeSidecars: true}\n",
    );
    let o = run(&["-f", &job, "--values", &values], None);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    // Hold from the mesh: no start-up race finding.
    let mesh = write(
        dir.path(),
        "mesh.yaml",
        "defaultConfig: {holdApplicationUntilProxyStarts: true}\n",
    );
    let o = run(&["-f", &job, "--mesh", &mesh, "-o", "json"], None);
    let out = stdout(&o);
    assert!(!out.contains("app-starts-before-proxy"), "{out}");
    assert!(out.contains("job-never-completes"), "{out}");
    let o = run(
        &["-f", &job, "--revision", "canary", "--fail-on", "never"],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}
