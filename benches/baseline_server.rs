//! Helpers of `scripts/bench-load.sh`, the load benchmark of `sidecar-injector serve`.
//!
//! The script drives everything; this binary only does what is awkward in a shell script:
//!
//! - `certs DIR`: a CA and serving certificate (the code `--tls-self-signed` uses), as
//!   `DIR/{ca,tls}.crt` and `DIR/tls.key`, shared by every server under test;
//! - `body hello|large`: a realistic AdmissionReview (pod CREATE from a ReplicaSet, with the
//!   defaults the API server fills in before webhooks run), on stdout;
//! - `serve ceiling|parse ADDR CERT KEY [RESPONSE_DIR]`: a baseline server on the same stack as
//!   the real one (tokio, hyper-util's auto builder for HTTP/1.1 and h2, rustls with ring, the
//!   crate's own TLS config, TCP_NODELAY, the same allocator). `ceiling` reads the body and returns a fixed answer: the real
//!   server's answer for the same body, taken from `RESPONSE_DIR/<name>.json` where `<name>` is
//!   the `body=` query parameter, so the bytes moved are the same and only the work differs.
//!   `parse` reads the body into a `serde_json::Value` and returns a small fixed patch: the floor
//!   every injector pays;
//! - `startup RUNS ADMIN_ADDR -- CMD...`: starts CMD `RUNS` times and prints how long each took
//!   from spawn until `GET /readyz` on ADMIN_ADDR answered 200;
//! - `summarize RESULTS.tsv`: the Markdown tables of docs/performance.md.
//!
//! Run without arguments (as `cargo test --all-targets` does) it checks that both bodies are
//! reviews the engine injects, so a change that breaks them shows up in the tests.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use sidecar_injector::admission::{self, Decision, Review};
use sidecar_injector::config::Config;
use sidecar_injector::server::self_signed;
use sidecar_injector::server::tls::{self, CertFiles, CertResolver};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

// The allocator of the real binary (src/main.rs), so the baselines differ from it only in the
// work per request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: baseline_server certs DIR | body hello|large | \
serve ceiling|parse ADDR CERT KEY [RESPONSE_DIR] | startup RUNS ADMIN_ADDR -- CMD... | \
summarize RESULTS.tsv";

fn main() -> ExitCode {
    // `cargo bench` adds `--bench`; it means nothing here.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        [] => self_check(),
        ["certs", dir] => certs(Path::new(dir)),
        ["body", name] => body(name).and_then(|review| {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer(&mut out, &review)?;
            Ok(out.flush()?)
        }),
        ["serve", mode, addr, cert, key, rest @ ..] if rest.len() <= 1 => {
            serve(mode, addr, cert, key, rest.first().copied())
        }
        ["startup", runs, admin, "--", cmd @ ..] if !cmd.is_empty() => startup(runs, admin, cmd),
        ["summarize", file] => summarize(Path::new(file)),
        _ => Err(USAGE.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("baseline_server: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Both bodies decode and get a patch from the embedded config.
fn self_check() -> Result<(), BoxError> {
    let config = Config::embedded();
    for name in ["hello", "large"] {
        let bytes = serde_json::to_vec(&body(name)?)?;
        let review = Review::from_slice(&bytes)?;
        match admission::decide(&config, &review, false)? {
            Decision::Patch { .. } => {}
            other => return Err(format!("body {name} is not injected: {other:?}").into()),
        }
    }
    println!("{USAGE}\nbodies checked: hello and large are injected");
    Ok(())
}

fn certs(dir: &Path) -> Result<(), BoxError> {
    let made = self_signed::generate(&[])?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ca.crt"), made.ca_pem)?;
    std::fs::write(dir.join("tls.crt"), made.cert_pem)?;
    std::fs::write(dir.join("tls.key"), made.key_pem)?;
    Ok(())
}

// ---- request bodies -------------------------------------------------------------------------

/// The review for `hello` (tests/golden/istio/hello.yaml's pod) or `large` (20 containers with
/// 100 env vars, a port, two HTTP probes, resources and a mount each: 2,000 env vars in all).
fn body(name: &str) -> Result<Value, BoxError> {
    let pod = match name {
        "hello" => hello_pod()?,
        "large" => large_pod()?,
        other => return Err(format!("unknown body {other:?}: hello or large").into()),
    };
    Ok(review(pod))
}

/// The Deployment's pod template as the ReplicaSet controller creates it, after the API
/// server's defaulting and its ServiceAccount admission plugin (which run before webhooks).
fn hello_pod() -> Result<Value, BoxError> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/istio/hello.yaml");
    let deployment: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&path)?)?;
    let mut pod = deployment
        .pointer("/spec/template")
        .cloned()
        .ok_or_else(|| format!("{} has no pod template", path.display()))?;
    let hash = "5d8f7b9c6";
    let meta = &mut pod["metadata"];
    meta["generateName"] = json!(format!("hello-{hash}-"));
    meta["namespace"] = json!("default");
    meta["labels"]["pod-template-hash"] = json!(hash);
    meta["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("hello-{hash}"),
        "uid": "0b6f4b3e-8d2f-4f55-9d0c-2f1c7f0e8a11", "controller": true,
        "blockOwnerDeletion": true,
    }]);
    let spec = &mut pod["spec"];
    if let Some(containers) = spec["containers"].as_array_mut() {
        containers.iter_mut().for_each(container_defaults);
    }
    pod_defaults(spec);
    let mut out = json!({"apiVersion": "v1", "kind": "Pod"});
    out["metadata"] = pod["metadata"].take();
    out["spec"] = pod["spec"].take();
    Ok(out)
}

fn large_pod() -> Result<Value, BoxError> {
    let mut pod = hello_pod()?;
    let containers: Vec<Value> = (0..20)
        .map(|c| {
            let port = 8080 + c;
            let env: Vec<Value> = (0..100)
                .map(|e| json!({"name": format!("APP_{c}_SETTING_{e}"), "value": format!("value-{c}-{e}")}))
                .collect();
            let mut container = json!({
                "name": format!("app-{c}"),
                "image": format!("registry.example.com/team/app-{c}:1.4.{c}"),
                "args": ["--port", port.to_string(), "--log-level", "info"],
                "ports": [{"name": format!("http-{c}"), "containerPort": port}],
                "env": env,
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"cpu": "500m", "memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": port},
                                   "periodSeconds": 5},
                "livenessProbe": {"httpGet": {"path": "/live", "port": format!("http-{c}")},
                                  "initialDelaySeconds": 10},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            });
            container_defaults(&mut container);
            container
        })
        .collect();
    pod["spec"]["containers"] = Value::from(containers);
    if let Some(volumes) = pod["spec"]["volumes"].as_array_mut() {
        volumes.push(json!({"name": "data", "emptyDir": {}}));
    }
    Ok(pod)
}

// scripts/bench-load.sh rewrites this name and the last 12 digits of the uid below in every request.
const TOKEN_VOLUME: &str = "kube-api-access-x7k2p";

fn container_defaults(container: &mut Value) {
    container["imagePullPolicy"] = json!("IfNotPresent");
    container["terminationMessagePath"] = json!("/dev/termination-log");
    container["terminationMessagePolicy"] = json!("File");
    if container.get("resources").is_none() {
        container["resources"] = json!({});
    }
    if let Some(ports) = container["ports"].as_array_mut() {
        ports.iter_mut().for_each(|p| p["protocol"] = json!("TCP"));
    }
    let mount = json!({"name": TOKEN_VOLUME, "readOnly": true,
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"});
    match container["volumeMounts"].as_array_mut() {
        Some(mounts) => mounts.push(mount),
        None => container["volumeMounts"] = json!([mount]),
    }
}

fn pod_defaults(spec: &mut Value) {
    let defaults = json!({
        "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst", "serviceAccountName": "default",
        "serviceAccount": "default", "securityContext": {},
        "schedulerName": "default-scheduler", "enableServiceLinks": true,
        "preemptionPolicy": "PreemptLowerPriority", "priority": 0,
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
             "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
             "effect": "NoExecute", "tolerationSeconds": 300},
        ],
        "volumes": [{"name": TOKEN_VOLUME, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}}],
    });
    if let (Some(spec), Value::Object(defaults)) = (spec.as_object_mut(), defaults) {
        for (key, value) in defaults {
            spec.entry(key).or_insert(value);
        }
    }
}

/// The AdmissionReview the API server sends for a pod CREATE by the ReplicaSet controller.
fn review(pod: Value) -> Value {
    let gvk = json!({"group": "", "version": "v1", "kind": "Pod"});
    let gvr = json!({"group": "", "version": "v1", "resource": "pods"});
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "namespace": "default", "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "2d5a7b1c-1f3e-4c5d-9a8b-7c6d5e4f3a2b",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system",
                           "system:authenticated"],
            },
            "object": pod, "oldObject": null, "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        }
    })
}

// ---- baseline servers -----------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Mode {
    Ceiling,
    Parse,
}

/// The fixed answer of `parse`: a one-operation patch.
const SMALL_PATCH: &[u8] =
    br#"[{"op":"add","path":"/metadata/annotations","value":{"sidecar.istio.io/status":"{}"}}]"#;

fn serve(
    mode: &str,
    addr: &str,
    cert: &str,
    key: &str,
    responses: Option<&str>,
) -> Result<(), BoxError> {
    let mode = match mode {
        "ceiling" => Mode::Ceiling,
        "parse" => Mode::Parse,
        other => return Err(format!("unknown mode {other:?}: ceiling or parse").into()),
    };
    let addr: SocketAddr = addr.parse()?;
    // The ceiling's answers, by body name.
    let mut fixed = BTreeMap::new();
    if let Some(dir) = responses {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if let (Some(stem), Some("json")) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) {
                fixed.insert(stem.to_owned(), Bytes::from(std::fs::read(&path)?));
            }
        }
    }
    if matches!(mode, Mode::Ceiling) && fixed.is_empty() {
        return Err("ceiling needs a RESPONSE_DIR with <name>.json answers".into());
    }
    let fixed = Arc::new(fixed);
    let resolver = Arc::new(CertResolver::load(CertFiles {
        cert: PathBuf::from(cert),
        key: PathBuf::from(key),
    })?);
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(resolver)?));
    // The same runtime `serve` builds.
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        // The same connection settings as the real server.
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30));
        println!("listening on {}", listener.local_addr()?);
        loop {
            let (tcp, _) = listener.accept().await?;
            // As the real server does.
            tcp.set_nodelay(true)?;
            let acceptor = acceptor.clone();
            let builder = builder.clone();
            let fixed = fixed.clone();
            tokio::spawn(async move {
                let accept = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
                let Ok(Ok(tls)) = accept.await else { return };
                let service = hyper::service::service_fn(move |req| {
                    let fixed = fixed.clone();
                    async move { Ok::<_, Infallible>(handle(mode, &fixed, req).await) }
                });
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            });
        }
    })
}

async fn handle(
    mode: Mode,
    fixed: &BTreeMap<String, Bytes>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let name = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("body=")))
        .unwrap_or_default()
        .to_owned();
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return reply(StatusCode::BAD_REQUEST, Bytes::new()),
    };
    match mode {
        Mode::Ceiling => match fixed.get(&name) {
            Some(answer) => reply(StatusCode::OK, answer.clone()),
            None => reply(StatusCode::NOT_FOUND, Bytes::new()),
        },
        Mode::Parse => match serde_json::from_slice::<Value>(&body) {
            Ok(review) => {
                let uid = review.pointer("/request/uid").cloned().unwrap_or_default();
                let answer = json!({
                    "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                    "response": {"uid": uid, "allowed": true, "patchType": "JSONPatch",
                        "patch": base64_small_patch()},
                });
                reply(
                    StatusCode::OK,
                    Bytes::from(serde_json::to_vec(&answer).unwrap_or_default()),
                )
            }
            Err(_) => reply(StatusCode::BAD_REQUEST, Bytes::new()),
        },
    }
}

fn base64_small_patch() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(SMALL_PATCH)
}

fn reply(code: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = code;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

// ---- start-up time --------------------------------------------------------------------------

fn startup(runs: &str, admin: &str, cmd: &[&str]) -> Result<(), BoxError> {
    let runs: usize = runs.parse()?;
    let admin: SocketAddr = admin.parse()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let mut child = Command::new(cmd[0])
            .args(&cmd[1..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let ready = loop {
            if ready(admin) {
                break Some(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(10) || child.try_wait()?.is_some() {
                break None;
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        child.kill()?;
        child.wait()?;
        let ready = ready.ok_or("the server did not become ready within 10 s")?;
        println!("ready_ms {:.1}", ready.as_secs_f64() * 1000.0);
        times.push(ready);
        // Let the port and the core settle before the next start.
        std::thread::sleep(Duration::from_millis(200));
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "startup runs={runs} min_ms={:.1} median_ms={:.1} max_ms={:.1}",
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1])
    );
    Ok(())
}

/// `GET /readyz` answered 200 (a plain HTTP/1.0 request, so the answer ends with the
/// connection).
fn ready(admin: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&admin, Duration::from_millis(100)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream
        .write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200")
}

// ---- summary --------------------------------------------------------------------------------

/// One load run: a line of the script's results file.
struct Run {
    proto: String,
    body: String,
    conc: u32,
    round: u32,
    server: String,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    requests: u64,
    cpu_us_per_req: f64,
    /// CPU use of the load generator's core, in percent.
    client_cpu_pct: f64,
}

fn parse_run(line: &str) -> Option<Run> {
    let f: Vec<&str> = line.split('\t').collect();
    if f.len() < 11 || f[0] == "proto" {
        return None;
    }
    Some(Run {
        proto: f[0].to_owned(),
        body: f[1].to_owned(),
        conc: f[2].parse().ok()?,
        round: f[3].parse().ok()?,
        server: f[4].to_owned(),
        rps: f[5].parse().ok()?,
        p50_us: f[6].parse().ok()?,
        p99_us: f[7].parse().ok()?,
        errors: f[8].parse().ok()?,
        requests: f[9].parse().ok()?,
        cpu_us_per_req: f[10].parse().ok()?,
        client_cpu_pct: f.get(11).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Medians over the rounds; the ratios are medians of per-round ratios, each taken between runs
/// minutes apart at most, so the machine's drift cancels out.
fn summarize(file: &Path) -> Result<(), BoxError> {
    let text = std::fs::read_to_string(file)?;
    let runs: Vec<Run> = text.lines().filter_map(parse_run).collect();
    let mut cells: Vec<(String, String, u32)> = Vec::new();
    for run in &runs {
        let cell = (run.proto.clone(), run.body.clone(), run.conc);
        if !cells.contains(&cell) {
            cells.push(cell);
        }
    }
    let pick = |cell: &(String, String, u32), server: &str| -> Vec<&Run> {
        runs.iter()
            .filter(|r| (&r.proto, &r.body, r.conc) == (&cell.0, &cell.1, cell.2))
            .filter(|r| r.server == server)
            .collect()
    };
    let med = |runs: &[&Run], f: fn(&Run) -> f64| median(runs.iter().map(|r| f(r)).collect());
    let ratio = |ours: &[&Run], base: &[&Run]| {
        let per_round = ours
            .iter()
            .filter_map(|o| {
                let b = base.iter().find(|b| b.round == o.round)?;
                Some(o.rps / b.rps)
            })
            .collect();
        median(per_round)
    };
    println!(
        "| protocol | body | conc. | ours req/s | ceiling req/s | parse req/s | ours/ceiling | ours/parse \
         | ours p50 / p99 ms | ceiling p50 / p99 ms | parse p50 / p99 ms \
         | CPU µs/req ours / ceiling / parse | load generator CPU % ours / ceiling / parse \
         | non-2xx or failed, of all requests |"
    );
    println!("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for cell in &cells {
        let (ours, ceiling, parse) = (
            pick(cell, "ours"),
            pick(cell, "ceiling"),
            pick(cell, "parse"),
        );
        let lat = |runs: &[&Run]| {
            format!(
                "{:.2} / {:.2}",
                med(runs, |r| r.p50_us) / 1000.0,
                med(runs, |r| r.p99_us) / 1000.0
            )
        };
        let all = || {
            [&ours, &ceiling, &parse]
                .into_iter()
                .flat_map(|runs| runs.iter())
        };
        let errors: u64 = all().map(|r| r.errors).sum();
        let requests: u64 = all().map(|r| r.requests).sum();
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0}% | {:.0}% | {} | {} | {} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {} of {} |",
            cell.0,
            cell.1,
            cell.2,
            med(&ours, |r| r.rps),
            med(&ceiling, |r| r.rps),
            med(&parse, |r| r.rps),
            100.0 * ratio(&ours, &ceiling),
            100.0 * ratio(&ours, &parse),
            lat(&ours),
            lat(&ceiling),
            lat(&parse),
            med(&ours, |r| r.cpu_us_per_req),
            med(&ceiling, |r| r.cpu_us_per_req),
            med(&parse, |r| r.cpu_us_per_req),
            med(&ours, |r| r.client_cpu_pct),
            med(&ceiling, |r| r.client_cpu_pct),
            med(&parse, |r| r.client_cpu_pct),
            errors,
            requests,
        );
    }
    Ok(())
}
