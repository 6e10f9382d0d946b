//! Load generator for `scripts/soak.sh`: keep-alive HTTP/1.1 connections over TLS sending
//! AdmissionReviews to `/inject` for a fixed time, checking every answer.
//!
//! Usage: `soak_load ADDR_FILE CA_PEM SECONDS CONNECTIONS`
//!
//! `ADDR_FILE` holds the server's `host:port`; it is re-read every 100 ms and, when it changes,
//! each connection finishes its request and reconnects to the new address, as clients follow a
//! Service whose endpoint changed. Every request has its own uid; an answer counts as correct
//! when it is HTTP 200 with that uid, `allowed: true`, and a patch exactly when one is expected
//! (pod CREATEs are injected; UPDATEs and opted-out pods are not). Prints one JSON object of
//! counts at the end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    correct: AtomicU64,
    /// Answered, but not as expected.
    wrong: AtomicU64,
    /// Sent, and the connection failed before an answer.
    lost: AtomicU64,
    /// Connections that could not be opened (refused, handshake failed): no request was sent.
    connect_failed: AtomicU64,
    /// Why things failed, for the report.
    reasons: Mutex<BTreeMap<String, u64>>,
}

impl Counts {
    fn note(&self, counter: &AtomicU64, reason: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut reasons) = self.reasons.lock() {
            *reasons.entry(reason).or_default() += 1;
        }
    }
}

/// The three kinds of review sent, and whether each must come back with a patch.
fn review(uid: &str, n: u64) -> (Value, bool) {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "soak-7d9f8c-",
            "namespace": "soak",
            "labels": {"app": "soak", "version": "v1"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "soak-7d9f8c", "uid": "1", "controller": true}]
        },
        "spec": {
            "containers": [{
                "name": "app",
                "image": "registry.example/soak:1",
                "ports": [{"containerPort": 8080, "name": "http"}],
                "readinessProbe": {"httpGet": {"port": "http", "path": "/ready"}},
                "env": [{"name": "N", "value": n.to_string()}]
            }]
        }
    });
    let (operation, patched) = match n % 10 {
        0 => ("UPDATE", false),
        1 => {
            pod["metadata"]["annotations"] = json!({"sidecar.istio.io/inject": "false"});
            ("CREATE", false)
        }
        _ => ("CREATE", true),
    };
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": operation,
            "namespace": "soak",
            "object": pod,
            "dryRun": false
        }
    });
    (review, patched)
}

/// Why an answer is not the right one, or `None` when it is.
fn check(status: u16, body: &[u8], uid: &str, patched: bool) -> Option<String> {
    if status != 200 {
        return Some(format!("HTTP {status}"));
    }
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        return Some("not JSON".into());
    };
    let response = &answer["response"];
    if response["uid"] != uid {
        return Some("uid not echoed".into());
    }
    if response["allowed"] != true {
        return Some("not allowed".into());
    }
    if response.get("patch").is_some() != patched {
        return Some(format!("patch present: {}", !patched));
    }
    None
}

/// The address in the file, re-read by a background task.
struct Target {
    file: PathBuf,
    current: Mutex<Option<SocketAddr>>,
    generation: AtomicU64,
}

impl Target {
    fn read(file: &Path) -> Option<SocketAddr> {
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    fn refresh(&self) {
        let addr = Self::read(&self.file);
        if let Ok(mut current) = self.current.lock()
            && addr.is_some()
            && *current != addr
        {
            *current = addr;
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn get(&self) -> Option<(SocketAddr, u64)> {
        let current = self.current.lock().ok()?;
        Some(((*current)?, self.generation.load(Ordering::SeqCst)))
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr, tls: &TlsConnector) -> Result<Sender, Error> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost")?;
    let stream = tls.connect(name, tcp).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn worker(
    id: u64,
    target: Arc<Target>,
    tls: TlsConnector,
    counts: Arc<Counts>,
    until: Instant,
) {
    let mut n = 0u64;
    let mut conn: Option<(Sender, u64)> = None;
    while Instant::now() < until {
        let Some((addr, generation)) = target.get() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // A new address: finish with the old server, as a client whose endpoint went away.
        if conn.as_ref().is_some_and(|(_, g)| *g != generation) {
            conn = None;
        }
        // A connection the server closed (keep-alive timeout, drain) is replaced before use:
        // no request is sent on it.
        if let Some((sender, _)) = &mut conn
            && sender.ready().await.is_err()
        {
            conn = None;
        }
        let sender = match &mut conn {
            Some((sender, _)) => sender,
            None => match connect(addr, &tls).await {
                Ok(sender) => &mut conn.insert((sender, generation)).0,
                Err(err) => {
                    counts.note(&counts.connect_failed, format!("connect: {err}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        n += 1;
        let uid = format!("soak-{id}-{n}");
        let (body, patched) = review(&uid, n);
        let request = hyper::Request::post("/inject")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                serde_json::to_vec(&body).unwrap_or_default(),
            )));
        let Ok(request) = request else {
            continue;
        };
        counts.sent.fetch_add(1, Ordering::Relaxed);
        let answer = async {
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, Error>((status, body))
        };
        match tokio::time::timeout(Duration::from_secs(10), answer).await {
            Ok(Ok((status, body))) => match check(status, &body, &uid, patched) {
                None => {
                    counts.correct.fetch_add(1, Ordering::Relaxed);
                }
                Some(why) => counts.note(&counts.wrong, why),
            },
            Ok(Err(err)) => {
                counts.note(&counts.lost, format!("request: {err}"));
                conn = None;
            }
            Err(_) => {
                counts.note(&counts.lost, "no answer within 10s".into());
                conn = None;
            }
        }
    }
}

fn tls_connector(ca: &Path) -> Result<TlsConnector, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr_file, ca, seconds, connections] = args.as_slice() else {
        return Err("usage: soak_load ADDR_FILE CA_PEM SECONDS CONNECTIONS".into());
    };
    let tls = tls_connector(Path::new(ca))?;
    let seconds: u64 = seconds.parse()?;
    let connections: u64 = connections.parse()?;
    let target = Arc::new(Target {
        file: PathBuf::from(addr_file),
        current: Mutex::new(None),
        generation: AtomicU64::new(0),
    });
    target.refresh();
    let watcher = {
        let target = target.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                target.refresh();
            }
        })
    };
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut workers = tokio::task::JoinSet::new();
    for id in 0..connections {
        workers.spawn(worker(
            id,
            target.clone(),
            tls.clone(),
            counts.clone(),
            until,
        ));
    }
    while workers.join_next().await.is_some() {}
    watcher.abort();
    let elapsed = started.elapsed().as_secs_f64();
    let reasons = counts.reasons.lock().map(|r| r.clone()).unwrap_or_default();
    let sent = counts.sent.load(Ordering::Relaxed);
    let report = json!({
        "seconds": elapsed,
        "connections": connections,
        "sent": sent,
        "correct": counts.correct.load(Ordering::Relaxed),
        "wrong": counts.wrong.load(Ordering::Relaxed),
        "lost": counts.lost.load(Ordering::Relaxed),
        "connect_failed": counts.connect_failed.load(Ordering::Relaxed),
        "requests_per_second": sent as f64 / elapsed,
        "reasons": reasons,
    });
    println!("{report}");
    Ok(())
}
