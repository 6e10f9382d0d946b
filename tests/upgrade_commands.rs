//! `outdated` and `rollout` against a stand-in API server (`tests/fake_cluster`) with kube-rs's
//! real client: through the real binary for output and exit codes, and in-process on tokio's
//! paused clock for pacing (patches counted per minute of the paused clock, never timed).

mod apiserver;
mod fake_cluster;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser as _;
use fake_cluster::{
    Behaviour, Cluster, config_map, daemon_set, deployment, namespace, node, stateful_set,
};
use serde_json::{Value, json};
use sidecar_injector::cli::rollout::{RolloutArgs, execute, plan, summary_text};
use sidecar_injector::cli::{Cli, Command};
use sidecar_injector::cluster::rollout::{Event, Events};
use sidecar_injector::config::{Config, Sources};

/// What the cluster's ConfigMap says now: the embedded defaults (tag 1.28.0), native sidecars
/// `auto` (and the nodes' kubelets too old for them).
const CURRENT_VALUES: &str = r#"{"sidecarInjectorWebhook": {"nativeSidecars": "auto"}}"#;

fn config(values: &str) -> Config {
    let mut sources = Sources::embedded();
    sources.values = values.to_string();
    Config::from_sources(&sources).unwrap()
}

fn current() -> Config {
    config(CURRENT_VALUES)
}

/// What the pods were injected with: the release before.
fn old() -> Config {
    config(r#"{"global": {"tag": "1.27.3"}, "sidecarInjectorWebhook": {"nativeSidecars": "auto"}}"#)
}

/// The cluster's base: the injector's ConfigMap, namespaces, two nodes.
async fn base(step: Duration) -> Cluster {
    let cluster = Cluster::start(current(), false, step).await;
    cluster.put(config_map(
        "sidecar-injector",
        "sidecar-injector",
        CURRENT_VALUES,
    ));
    cluster.put(namespace("sidecar-injector", json!({})));
    cluster.put(namespace("shop", json!({"istio-injection": "enabled"})));
    cluster.put(node("node-a", "v1.32.4"));
    cluster.put(node("node-b", "v1.32.4-eks-1"));
    cluster
}

/// A cluster after an upgrade of the injector: most pods still carry the old sidecar.
async fn upgraded_cluster(step: Duration) -> Cluster {
    let cluster = base(step).await;
    let old = old();
    let current = current();
    cluster.put(namespace("batch", json!({"istio-injection": "enabled"})));
    cluster.put(namespace("legacy", json!({"istio.io/rev": "canary"})));
    cluster.put(namespace("tools", json!({})));

    cluster.add_workload(deployment("shop", "cart", 3), Some(&old));
    cluster.add_workload(deployment("shop", "web", 2), Some(&current));
    // Injected by the release before, with DNS capture on and a smaller memory limit.
    let mut sources = Sources::embedded();
    sources.values =
        r#"{"global": {"tag": "1.27.3", "proxy": {"resources": {"limits": {"memory": "512Mi"}}}}}"#
            .into();
    sources.mesh = "defaultConfig: {proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"true\"}}".into();
    let old_db = Config::from_sources(&sources).unwrap();
    cluster.add_workload(stateful_set("shop", "db", 2), Some(&old_db));
    cluster.add_workload(daemon_set("shop", "agent"), Some(&old));
    // Created while the injector was down, with failurePolicy Ignore.
    cluster.add_workload(deployment("shop", "late", 1), None);
    // A bare pod.
    let debug = json!({"kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": "debug", "namespace": "shop", "labels": {"run": "debug"}},
        "spec": {"containers": [{"name": "debug", "image": "busybox:1.37", "command": ["sleep", "1d"]}]}});
    cluster.put(apiserver::create(
        debug,
        Some(apiserver::Webhook {
            config: &old,
            native: false,
        }),
        false,
    ));
    // A CronJob's running Job.
    let cron = json!({"kind": "CronJob", "apiVersion": "batch/v1",
        "metadata": {"name": "report", "namespace": "batch"},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "report", "image": "registry.example.com/report:5"}]}}}}}});
    cluster.put(
        json!({"kind": "Job", "metadata": {"name": "report-29012345", "namespace": "batch",
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "report",
            "uid": "uid-report", "controller": true}]},
        "spec": {"template": cron["spec"]["jobTemplate"]["spec"]["template"]}}),
    );
    cluster.put(apiserver::create(
        apiserver::pod_of(&cron, 1),
        Some(apiserver::Webhook {
            config: &old,
            native: false,
        }),
        false,
    ));
    // Another revision's namespace, and a namespace without a mesh.
    let canary = config(r#"{"revision": "canary"}"#);
    cluster.add_workload(deployment("legacy", "billing", 1), Some(&canary));
    cluster.add_workload(deployment("tools", "ci", 1), None);
    cluster
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn binary(cluster: &Cluster, dir: &Path, args: &[&str]) -> Run {
    let kubeconfig = cluster.kubeconfig(dir);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidecar-injector"))
        .args(args)
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/outdated")
        .join(name)
}

fn check_golden(name: &str, actual: &str) {
    let path = golden(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(actual, expected, "{} differs", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outdated_lists_stale_workloads_with_why_and_what_to_do() {
    let cluster = upgraded_cluster(Duration::from_millis(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let run = binary(&cluster, dir.path(), &["outdated", "-A"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    check_golden("report.txt", &run.stdout);

    // CI and cron: exit 1 when something is stale.
    let run = binary(
        &cluster,
        dir.path(),
        &["outdated", "-A", "--fail-on", "outdated"],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);

    let run = binary(
        &cluster,
        dir.path(),
        &["outdated", "-n", "shop", "-o", "json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    let workloads = report["workloads"].as_array().unwrap();
    let find = |kind: &str, name: &str| {
        workloads
            .iter()
            .find(|w| w["kind"] == kind && w["name"] == name)
            .unwrap_or_else(|| panic!("{kind}/{name} not in {workloads:?}"))
    };
    let cart = find("Deployment", "cart");
    assert_eq!(cart["pods"], json!({"stale": 3, "total": 3}));
    assert_eq!(cart["reasons"][0]["kind"], "image");
    assert_eq!(cart["reasons"][0]["from"], "docker.io/istio/proxyv2:1.27.3");
    assert_eq!(cart["rollable"], true);
    assert_eq!(
        find("Deployment", "late")["reasons"][0]["kind"],
        "not-injected"
    );
    assert_eq!(find("Pod", "debug")["restart"], "bare-pod");
    assert!(workloads.iter().all(|w| w["name"] != "web"), "web is fresh");
    assert_eq!(report["summary"]["freshWorkloads"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outdated_reads_the_injector_configuration_from_files_too() {
    let cluster = upgraded_cluster(Duration::from_millis(10)).await;
    let dir = tempfile::tempdir().unwrap();
    // Judged against the old values, the old pods are fresh and web is the stale one.
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "global: {tag: 1.27.3}\nsidecarInjectorWebhook: {nativeSidecars: false}\n",
    )
    .unwrap();
    let run = binary(
        &cluster,
        dir.path(),
        &[
            "outdated",
            "-n",
            "shop",
            "--values",
            values.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("Deployment/web"), "{}", run.stdout);
    assert!(
        run.stdout.contains(
            "proxy image docker.io/istio/proxyv2:1.28.0 -> docker.io/istio/proxyv2:1.27.3"
        ),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("Deployment/cart"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outdated_says_what_is_wrong_with_the_cluster() {
    let cluster = base(Duration::from_millis(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let run = binary(
        &cluster,
        dir.path(),
        &["outdated", "-n", "shop", "--configmap", "mesh/injector"],
    )
    .await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("ConfigMap mesh/injector not found"),
        "{}",
        run.stderr
    );
    let run = binary(&cluster, dir.path(), &["outdated", "-n", "Not_A_Namespace"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("is not a namespace name"),
        "{}",
        run.stderr
    );
}

/// Records events, and the paused clock's time of each.
#[derive(Default)]
struct Recorder(
    std::sync::Mutex<Vec<(Duration, Event)>>,
    Option<tokio::time::Instant>,
);

impl Recorder {
    fn new() -> Recorder {
        Recorder(Default::default(), Some(tokio::time::Instant::now()))
    }
    fn events(&self) -> Vec<(Duration, Event)> {
        self.0.lock().unwrap().clone()
    }
}

impl Events for Recorder {
    fn event(&self, event: Event) {
        let at = self.1.map(|s| s.elapsed()).unwrap_or_default();
        self.0.lock().unwrap().push((at, event));
    }
}

fn rollout_args(args: &[&str]) -> RolloutArgs {
    let argv = ["sidecar-injector", "rollout"].iter().chain(args);
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Rollout(args),
        }) => args,
        Ok(other) => panic!("not rollout: {other:?}"),
        Err(e) => panic!("{e}"),
    }
}

/// A fixed wall clock for the restartedAt annotation, advancing with tokio's clock.
fn wall_clock() -> impl Fn() -> time::OffsetDateTime + Send + Sync {
    let start = tokio::time::Instant::now();
    move || {
        time::OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap()
            + time::Duration::try_from(start.elapsed()).unwrap()
    }
}

/// Runs `rollout` in-process and returns the closing text and the summary's failure count.
async fn rollout(cluster: &Cluster, args: &[&str], events: &dyn Events) -> (String, usize) {
    let client = cluster.client().await;
    let args = rollout_args(args);
    let plan = plan(&args, &client).await.unwrap();
    let start = tokio::time::Instant::now();
    let clock = wall_clock();
    let summary = execute(&args, &client, &clock, events, &plan).await;
    (
        summary_text(&plan, &summary, args.dry_run, start.elapsed()),
        summary.failed.len(),
    )
}

#[tokio::test(start_paused = true)]
async fn rollout_keeps_to_the_pod_budget() {
    // Six Deployments of ten stale pods, up to six at a time: only the budget of 30 pods a
    // minute holds them back.
    let cluster = base(Duration::from_secs(3)).await;
    let old = old();
    for i in 0..6 {
        cluster.add_workload(deployment("shop", &format!("app{i}"), 10), Some(&old));
    }
    let recorder = Recorder::new();
    let (text, failed) = rollout(
        &cluster,
        &[
            "--outdated",
            "-n",
            "shop",
            "--parallel",
            "6",
            "--max-pods-per-minute",
            "30",
        ],
        &recorder,
    )
    .await;
    assert_eq!(failed, 0, "{text}");
    let patches = cluster.patches();
    let at: Vec<u64> = patches.iter().map(|p| p.at.as_secs()).collect();
    // Three workloads fill the first minute; the next three start when it is over.
    assert_eq!(at, [0, 0, 0, 60, 60, 60], "{patches:#?}");
    // No 60 s window of the paused clock holds more than 30 pods.
    for from in &patches {
        let pods = patches
            .iter()
            .filter(|p| p.at >= from.at && p.at < from.at + Duration::from_secs(60))
            .count()
            * 10;
        assert!(pods <= 30, "{pods} pods in the minute from {:?}", from.at);
    }
    // Each patch is kubectl's restart: the restartedAt template annotation, as a strategic merge.
    for p in &patches {
        assert_eq!(p.content_type, "application/strategic-merge-patch+json");
        let at = p.body["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .as_str()
            .unwrap();
        assert!(
            at.starts_with("2026-11-18T11:") && at.ends_with('Z'),
            "{at}"
        );
    }
    assert!(
        recorder
            .events()
            .iter()
            .any(|(_, e)| matches!(e, Event::Pacing { .. })),
        "the waits are reported"
    );
    assert!(
        text.starts_with("rolled out 6 of 6 workloads (60 pods)"),
        "{text}"
    );
    // Every pod now carries the new sidecar.
    let (text, _) = rollout(
        &cluster,
        &["--outdated", "-n", "shop", "--dry-run"],
        &Recorder::new(),
    )
    .await;
    assert!(text.starts_with("would restart 0 of 0 workloads"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn rollout_one_at_a_time_waits_for_each() {
    let cluster = base(Duration::from_secs(5)).await;
    let old = old();
    cluster.add_workload(deployment("shop", "a", 2), Some(&old));
    cluster.add_workload(stateful_set("shop", "b", 2), Some(&old));
    cluster.add_workload(daemon_set("shop", "c"), Some(&old));
    let recorder = Recorder::new();
    let (text, failed) = rollout(&cluster, &["--outdated", "-n", "shop"], &recorder).await;
    assert_eq!(failed, 0, "{text}");
    // The order of what happened (the plan's order: namespace, kind, name): each restart only
    // after the rollout before it completed.
    let order: Vec<String> = recorder
        .events()
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Restarted { item, .. } => Some(format!("restart {}", item.name)),
            Event::Done { item, .. } => Some(format!("done {}", item.name)),
            _ => None,
        })
        .collect();
    assert_eq!(
        order,
        [
            "restart c",
            "done c",
            "restart a",
            "done a",
            "restart b",
            "done b"
        ],
        "{text}"
    );
    assert_eq!(cluster.most_rolling(), 1);
    // kubectl's words when done.
    assert!(recorder.events().iter().any(|(_, e)| matches!(e,
        Event::Done { message, .. } if message == "daemon set \"c\" successfully rolled out")));
}

#[tokio::test(start_paused = true)]
async fn rollout_in_parallel_never_exceeds_its_width() {
    let cluster = base(Duration::from_secs(2)).await;
    let old = old();
    for i in 0..7 {
        cluster.add_workload(deployment("shop", &format!("w{i}"), 2), Some(&old));
    }
    let (text, failed) = rollout(
        &cluster,
        &[
            "--outdated",
            "-n",
            "shop",
            "--parallel",
            "3",
            "--max-pods-per-minute",
            "1000",
        ],
        &Recorder::new(),
    )
    .await;
    assert_eq!(failed, 0, "{text}");
    assert_eq!(cluster.most_rolling(), 3);
    assert_eq!(cluster.patches().len(), 7);
}

#[tokio::test(start_paused = true)]
async fn rollout_stops_at_a_timeout_and_says_where_it_stood() {
    let cluster = base(Duration::from_secs(5)).await;
    let old = old();
    cluster.add_workload(deployment("shop", "stuck", 2), Some(&old));
    cluster.add_workload(deployment("shop", "zz-next", 2), Some(&old));
    cluster.behave("Deployment", "shop", "stuck", Behaviour::Hang);
    let (text, failed) = rollout(
        &cluster,
        &["--outdated", "-n", "shop", "--timeout", "5m"],
        &Recorder::new(),
    )
    .await;
    assert_eq!(failed, 1);
    assert!(
        text.contains("failed: Deployment shop/stuck: its rollout did not finish within 5m: Waiting for deployment \"stuck\" rollout to finish: 0 out of 2 new replicas have been updated..."),
        "{text}"
    );
    assert!(
        text.contains("not started: Deployment shop/zz-next"),
        "{text}"
    );
    assert_eq!(cluster.patches().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn rollout_waits_for_a_rollout_already_under_way_instead_of_restarting_it() {
    let cluster = base(Duration::from_secs(5)).await;
    let old = old();
    cluster.add_workload(deployment("shop", "cart", 2), Some(&old));
    // An earlier run restarted it and was interrupted: the controller is halfway through.
    let mut cart = cluster.get("deployments", "shop", "cart").unwrap();
    cart["metadata"]["generation"] = json!(2);
    cart["status"] = json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1,
        "readyReplicas": 2, "availableReplicas": 2});
    cluster.put(cart.clone());
    let recorder = Recorder::new();
    let client = cluster.client().await;
    let args = rollout_args(&["deployment/cart", "-n", "shop"]);
    let plan = plan(&args, &client).await.unwrap();
    let clock = wall_clock();
    let run = execute(&args, &client, &clock, &recorder, &plan);
    // The controller finishes it meanwhile.
    let finish = async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        cart["status"] = fake_cluster::complete_status("Deployment", 2, 2, "x");
        cluster.put(cart);
    };
    let (summary, ()) = tokio::join!(run, finish);
    assert!(summary.failed.is_empty(), "{summary:?}");
    assert!(cluster.patches().is_empty(), "not restarted again");
    assert!(
        recorder
            .events()
            .iter()
            .any(|(_, e)| matches!(e, Event::Resumed { pods: 1, .. }))
    );
}

#[tokio::test(start_paused = true)]
async fn rollout_leaves_alone_what_it_cannot_restart() {
    let cluster = base(Duration::from_secs(5)).await;
    let old = old();
    let mut paused = deployment("shop", "paused", 1);
    paused["spec"]["paused"] = json!(true);
    cluster.add_workload(paused, Some(&old));
    let mut on_delete = stateful_set("shop", "ondelete", 1);
    on_delete["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
    cluster.add_workload(on_delete, Some(&old));
    let debug = json!({"kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": "debug", "namespace": "shop"},
        "spec": {"containers": [{"name": "debug", "image": "busybox:1.37"}]}});
    cluster.put(apiserver::create(
        debug,
        Some(apiserver::Webhook {
            config: &old,
            native: false,
        }),
        false,
    ));
    let (text, failed) = rollout(&cluster, &["--outdated", "-n", "shop"], &Recorder::new()).await;
    assert_eq!(failed, 0, "{text}");
    assert!(cluster.patches().is_empty());
    assert!(
        text.contains("skipped: Deployment shop/paused: it is paused"),
        "{text}"
    );
    assert!(
        text.contains("skipped: StatefulSet shop/ondelete: its updateStrategy is OnDelete"),
        "{text}"
    );
    assert!(
        text.contains(
            "left alone: Pod shop/debug: a pod no controller owns: delete it and create it again"
        ),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_patches_nothing() {
    let cluster = base(Duration::from_secs(5)).await;
    cluster.add_workload(deployment("shop", "cart", 3), Some(&old()));
    let recorder = Recorder::new();
    let (text, failed) = rollout(
        &cluster,
        &["--outdated", "-n", "shop", "--dry-run"],
        &recorder,
    )
    .await;
    assert_eq!(failed, 0);
    assert!(cluster.patches().is_empty());
    assert_eq!(
        text.lines().next(),
        Some("would restart 1 of 1 workload (3 pods)")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_stops_at_the_first_failure_and_a_second_run_continues() {
    let cluster = base(Duration::from_millis(20)).await;
    let old = old();
    cluster.add_workload(deployment("shop", "a-cart", 2), Some(&old));
    cluster.add_workload(deployment("shop", "b-web", 2), Some(&old));
    cluster.add_workload(deployment("shop", "c-api", 2), Some(&old));
    cluster.behave("Deployment", "shop", "b-web", Behaviour::Fail);
    let dir = tempfile::tempdir().unwrap();

    let run = binary(
        &cluster,
        dir.path(),
        &["rollout", "--outdated", "-n", "shop"],
    )
    .await;
    assert_eq!(
        run.code, 1,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        run.stdout.contains(
            "failed: Deployment shop/b-web: deployment \"b-web\" exceeded its progress deadline"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("not started: Deployment shop/c-api"),
        "{}",
        run.stdout
    );
    // Plain lines on a pipe, one per step.
    assert!(
        run.stderr
            .contains("Deployment shop/a-cart: restarted (2 pods)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("Deployment shop/a-cart: deployment \"a-cart\" successfully rolled out"),
        "{}",
        run.stderr
    );
    let names = |from: usize| -> Vec<String> {
        cluster.patches()[from..]
            .iter()
            .map(|p| p.name.clone())
            .collect()
    };
    assert_eq!(names(0), ["a-cart", "b-web"]);

    // The cause is fixed; running again restarts only what is still stale.
    cluster.behave("Deployment", "shop", "b-web", Behaviour::Succeed);
    let run = binary(
        &cluster,
        dir.path(),
        &["rollout", "--outdated", "-n", "shop"],
    )
    .await;
    assert_eq!(
        run.code, 0,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert_eq!(
        names(2),
        ["b-web", "c-api"],
        "a-cart is fresh and is skipped"
    );
    assert!(
        run.stdout
            .starts_with("rolled out 2 of 2 workloads (4 pods)"),
        "{}",
        run.stdout
    );

    let run = binary(
        &cluster,
        dir.path(),
        &["outdated", "-n", "shop", "--fail-on", "outdated"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_refuses_unclear_requests() {
    let cluster = base(Duration::from_millis(20)).await;
    let dir = tempfile::tempdir().unwrap();
    for (args, says) in [
        (
            &["rollout", "-n", "shop"][..],
            "name the workloads to restart",
        ),
        (
            &["rollout", "job/x", "-n", "shop"],
            "cannot be restarted by a rollout",
        ),
        (&["rollout", "deployment/x", "-A"], "need one namespace"),
        (&["rollout", "cart"], "expected KIND/NAME"),
    ] {
        let run = binary(&cluster, dir.path(), args).await;
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
    }
    // A named workload that does not exist is skipped, and said so.
    let run = binary(
        &cluster,
        dir.path(),
        &["rollout", "deployment/ghost", "-n", "shop"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("skipped: Deployment shop/ghost: it no longer exists"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outdated_judges_with_the_native_sidecar_flag_the_injector_runs_with() {
    // The chart passes --native-sidecars to `serve`, not through the ConfigMap: here the
    // ConfigMap says auto (and the kubelets are too old), the injector runs with true.
    let cluster = base(Duration::from_millis(10)).await;
    cluster.add_workload(deployment("shop", "cart", 1), Some(&current()));
    let dir = tempfile::tempdir().unwrap();
    let run = binary(&cluster, dir.path(), &["outdated", "-n", "shop"]).await;
    assert!(
        run.stdout.starts_with("every sidecar is up to date"),
        "{}",
        run.stdout
    );

    let mut injector = deployment("sidecar-injector", "sidecar-injector", 2);
    injector["spec"]["template"]["spec"]["containers"] = json!([{
        "name": "sidecar-injector", "image": "registry.example.com/sidecar-injector:0.1.0",
        "args": ["serve", "--config-dir=/etc/sidecar-injector/config", "--native-sidecars=true"]}]);
    cluster.put(injector);
    let run = binary(&cluster, dir.path(), &["outdated", "-n", "shop"]).await;
    assert!(
        run.stdout
            .contains("istio-proxy from a classic sidecar to a native sidecar"),
        "{}",
        run.stdout
    );
    // The command line's flag wins.
    let run = binary(
        &cluster,
        dir.path(),
        &["outdated", "-n", "shop", "--native-sidecars", "auto"],
    )
    .await;
    assert!(
        run.stdout.starts_with("every sidecar is up to date"),
        "{}",
        run.stdout
    );
}

/// The YAML blocks of a markdown file, as documents.
fn yaml_blocks(markdown: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut rest = markdown;
    while let Some(start) = rest.find("```yaml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").expect("a closed block");
        docs.extend(sidecar_injector::yaml::parse_documents(&body[..end]).unwrap());
        rest = &body[end + 3..];
    }
    docs
}

fn docs() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/upgrades.md")).unwrap()
}

fn roles(names: &[&str]) -> fake_cluster::Rbac {
    let docs: Vec<Value> = yaml_blocks(&docs())
        .into_iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        .filter(|d| names.iter().any(|n| d["metadata"]["name"] == *n))
        .collect();
    assert!(!docs.is_empty());
    fake_cluster::Rbac::from_roles(&docs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rbac_in_the_docs_is_what_the_commands_need() {
    let cluster = upgraded_cluster(Duration::from_millis(10)).await;
    let dir = tempfile::tempdir().unwrap();
    cluster.enforce(roles(&["sidecar-injector-outdated"]));
    let run = binary(&cluster, dir.path(), &["outdated", "-A"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    check_golden("report.txt", &run.stdout);
    let run = binary(&cluster, dir.path(), &["outdated", "-n", "shop"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);

    // Without the rollout role, a rollout is refused, and the message says where the RBAC is.
    let run = binary(
        &cluster,
        dir.path(),
        &["rollout", "--outdated", "-n", "shop"],
    )
    .await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("daemonsets is forbidden") && run.stdout.contains("docs/upgrades.md"),
        "{}",
        run.stdout
    );
    assert!(cluster.patches().is_empty());

    cluster.enforce(roles(&[
        "sidecar-injector-outdated",
        "sidecar-injector-rollout",
    ]));
    let run = binary(
        &cluster,
        dir.path(),
        &["rollout", "--outdated", "-n", "shop", "--parallel", "4"],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.starts_with("rolled out 4 of 4 workloads"),
        "{}",
        run.stdout
    );
    // Named workloads need the rollout role only.
    cluster.enforce(roles(&["sidecar-injector-rollout"]));
    let run = binary(
        &cluster,
        dir.path(),
        &["rollout", "deployment/cart", "-n", "shop"],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    // And without the outdated role, outdated says what it could not read.
    let run = binary(&cluster, dir.path(), &["outdated", "-n", "shop"]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("is forbidden"), "{}", run.stderr);
}

#[test]
fn the_docs_show_real_output_and_a_cronjob_that_parses() {
    let report = std::fs::read_to_string(golden("report.txt")).unwrap();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(
        readme.contains(&report),
        "README's outdated example is not the command's output"
    );
    assert!(
        docs().contains(&report),
        "docs/upgrades.md's example is not the command's output"
    );
    let revision = std::fs::read_to_string(golden("revision-report.txt")).unwrap();
    assert!(
        docs().contains(&revision),
        "docs/upgrades.md's revision example is stale"
    );

    let cron = yaml_blocks(&docs())
        .into_iter()
        .find(|d| d["kind"] == "CronJob")
        .expect("a CronJob example");
    let container = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    let mut argv = vec!["sidecar-injector".to_string()];
    argv.extend(
        container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string()),
    );
    match Cli::try_parse_from(&argv) {
        Ok(Cli {
            command: Command::Outdated(_),
        }) => {}
        other => panic!("{argv:?}: {other:?}"),
    }
    assert_eq!(
        cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]["sidecar.istio.io/inject"],
        "false",
        "the report's own pod must not be injected, or its Job never completes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_moved_to_another_revision_is_stale_for_that_revision() {
    let cluster = base(Duration::from_millis(10)).await;
    cluster.put(config_map(
        "sidecar-injector",
        "sidecar-injector-canary",
        r#"{"revision": "canary", "sidecarInjectorWebhook": {"nativeSidecars": false}}"#,
    ));
    cluster.add_workload(deployment("shop", "cart", 3), Some(&current()));
    cluster.put(namespace("shop", json!({"istio.io/rev": "canary"})));
    let dir = tempfile::tempdir().unwrap();
    let run = binary(
        &cluster,
        dir.path(),
        &[
            "outdated",
            "-n",
            "shop",
            "--configmap",
            "sidecar-injector/sidecar-injector-canary",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    check_golden("revision-report.txt", &run.stdout);
}

#[tokio::test(start_paused = true)]
async fn a_second_restart_within_the_same_second_still_restarts() {
    // kubectl's restartedAt has whole seconds: two restarts in one second would write the same
    // value, a patch that changes nothing, and the second would wait on the first's status.
    let cluster = base(Duration::from_secs(5)).await;
    cluster.add_workload(deployment("shop", "cart", 1), Some(&old()));
    cluster.behave("Deployment", "shop", "cart", Behaviour::Fail);
    let client = cluster.client().await;
    let args = rollout_args(&["deployment/cart", "-n", "shop"]);
    let plan = plan(&args, &client).await.unwrap();
    let stopped = || time::OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap();
    let first = execute(&args, &client, &stopped, &Recorder::new(), &plan).await;
    assert_eq!(first.failed.len(), 1, "{first:?}");
    cluster.behave("Deployment", "shop", "cart", Behaviour::Succeed);
    let second = execute(&args, &client, &stopped, &Recorder::new(), &plan).await;
    assert!(second.failed.is_empty(), "{second:?}");
    let values: Vec<String> = cluster
        .patches()
        .iter()
        .map(|p| {
            p.body["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(values, ["2026-11-18T11:06:40Z", "2026-11-18T11:06:41Z"]);
}
