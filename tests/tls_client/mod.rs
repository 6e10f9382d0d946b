//! Test support for the server tests: certificates, a running server, and a real TLS client
//! that speaks HTTP/1.1 or h2 as negotiated by ALPN.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use sidecar_injector::server::{CertFiles, Server, Settings, Shared};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

/// A self-signed certificate for localhost / 127.0.0.1, written as `tls.crt` and `tls.key`.
pub fn write_cert(dir: &Path) -> CertificateDer<'static> {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    std::fs::write(dir.join("tls.crt"), generated.cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), generated.signing_key.serialize_pem()).unwrap();
    generated.cert.der().clone()
}

/// Writes the `config` key of a mounted ConfigMap directory: aside, then renamed, as kubelet's
/// symlink swap makes the change atomic.
pub fn write_config(dir: &Path, text: &str) {
    let tmp = dir.join(".config.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join("config")).unwrap();
}

pub fn cert_files(dir: &Path) -> CertFiles {
    CertFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    }
}

/// A server running on loopback ports chosen by the OS.
pub struct Running {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub shared: Arc<Shared>,
    pub dir: tempfile::TempDir,
    pub trusted: Vec<CertificateDer<'static>>,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<()>,
}

impl Running {
    pub async fn start(tweak: impl FnOnce(&mut Settings)) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let cert = write_cert(dir.path());
        let mut settings = Settings::new("127.0.0.1:0".parse().unwrap(), cert_files(dir.path()));
        settings.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        settings.shutdown_grace = Duration::ZERO;
        settings.drain_timeout = Duration::from_secs(5);
        // Room for the tests that open thousands of idle connections at once; the default
        // (sized for the memory limit of a pod) is far lower. Tests of the cap set their own.
        settings.max_connections = 10_000;
        tweak(&mut settings);
        let server = Server::bind(settings).await.unwrap();
        let addr = server.local_addr();
        let admin = server.admin_addr().unwrap();
        let shared = server.shared();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            admin,
            shared,
            dir,
            trusted: vec![cert],
            stop: Some(stop),
            task,
        }
    }

    /// Wraps a server started by the test itself, for the admin helpers; `signal` does
    /// nothing on it.
    pub fn attach(
        addr: SocketAddr,
        admin: SocketAddr,
        shared: Arc<Shared>,
        dir: tempfile::TempDir,
    ) -> Running {
        Running {
            addr,
            admin,
            shared,
            dir,
            trusted: Vec::new(),
            stop: None,
            task: tokio::spawn(async {}),
        }
    }

    pub fn client(&self, alpn: Alpn) -> Client {
        Client::new(self.addr, &self.trusted, alpn)
    }

    /// Asks the server to stop (as a signal would).
    pub fn signal(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// GET on the admin port; returns status and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        admin_get(self.admin, path).await
    }
}

/// GET on a plain-HTTP admin listener; returns status and body.
pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let tcp = TcpStream::connect(admin).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    Http1,
    H2,
}

/// One HTTP response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
    /// What ALPN settled on.
    pub protocol: Option<Vec<u8>>,
    /// The server's leaf certificate.
    pub leaf: CertificateDer<'static>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

pub struct Client {
    addr: SocketAddr,
    connector: TlsConnector,
    alpn: Alpn,
}

impl Client {
    pub fn new(addr: SocketAddr, trusted: &[CertificateDer<'static>], alpn: Alpn) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        for cert in trusted {
            roots.add(cert.clone()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Every connection does a full handshake, so it sees the certificate served now rather
        // than the one of a resumed session.
        config.resumption = rustls::client::Resumption::disabled();
        config.alpn_protocols = vec![match alpn {
            Alpn::Http1 => b"http/1.1".to_vec(),
            Alpn::H2 => b"h2".to_vec(),
        }];
        Client {
            addr,
            connector: TlsConnector::from(Arc::new(config)),
            alpn,
        }
    }

    /// Opens a new connection and completes the TLS handshake, offering this client's ALPN.
    pub async fn connect(&self) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        self.connector.connect(name, tcp).await
    }

    /// Opens a new connection and sends one request on it.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let tls = self.connect().await.unwrap();
        self.send_on(tls, method, path, content_type, body).await
    }

    /// Sends one request on a connection opened with [`Client::connect`].
    pub async fn send_on(
        &self,
        tls: tokio_rustls::client::TlsStream<TcpStream>,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let (_, session) = tls.get_ref();
        let protocol = session.alpn_protocol().map(<[u8]>::to_vec);
        let leaf = session.peer_certificates().unwrap()[0].clone().into_owned();
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("https://localhost:{}{path}", self.addr.port()));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if self.alpn == Alpn::Http1 {
            req = req.header("host", "localhost");
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        let io = TokioIo::new(tls);
        let resp = match self.alpn {
            Alpn::Http1 => {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                sender.send_request(req).await.unwrap()
            }
            Alpn::H2 => {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .unwrap();
                tokio::spawn(conn);
                sender.send_request(req).await.unwrap()
            }
        };
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            content_type,
            body,
            protocol,
            leaf,
        }
    }

    /// POSTs a review as JSON to `/inject`.
    pub async fn review(&self, review: &Value) -> Reply {
        self.send(
            "POST",
            "/inject",
            Some("application/json"),
            serde_json::to_vec(review).unwrap(),
        )
        .await
    }
}

pub const UID: &str = "0df28fbd-5f5f-11e8-bc74-42010a800002";

/// An AdmissionReview for a pod CREATE.
pub fn review(api_version: &str, operation: &str, namespace: &str, pod: Value) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": operation,
            "namespace": namespace,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

/// A pod as a ReplicaSet creates it, with a field no Kubernetes version has.
pub fn app_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "hello-5d4f7c8b9-",
            "namespace": "default",
            "labels": {"app": "hello", "version": "v1", "pod-template-hash": "5d4f7c8b9"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "hello-5d4f7c8b9",
                "uid": "6f1c1b7e-0000-4000-8000-000000000001", "controller": true,
                "blockOwnerDeletion": true
            }]
        },
        "spec": {
            "containers": [{
                "name": "hello",
                "image": "registry.example/hello:1.0",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "resources": {},
                "xFutureContainerField": {"keep": ["me"]}
            }],
            "restartPolicy": "Always",
            "xFuturePodField": 42
        }
    })
}

/// A loopback port free now, for a server started as a separate process.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `sidecar-injector serve` on loopback ports free now, with the certificate [`write_cert`]
/// wrote to `dir`; returns the command (to add flags to), the webhook and the admin address.
pub fn serve_command(dir: &Path) -> (tokio::process::Command, SocketAddr, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidecar-injector"));
    command
        .arg("serve")
        .arg(format!("--addr={addr}"))
        .arg(format!("--admin-addr={admin}"))
        .arg("--tls-cert-file")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key-file")
        .arg(dir.join("tls.key"));
    (command, addr, admin)
}

/// Polls `check` every 50 ms until it returns `Some`, for at most 20 s.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..400 {
        if let Some(found) = check().await {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gave up waiting for {what}");
}

pub fn path_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
