//! Start-up checks, certificate rotation, readiness and graceful shutdown, and the real binary.

mod tls_client;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use sidecar_injector::server::{Server, ServerError, Settings, TlsError};
use tls_client::{Alpn, Client, Running, UID, app_pod, cert_files, free_port, review, write_cert};

fn settings(dir: &Path) -> Settings {
    Settings::new("127.0.0.1:0".parse().unwrap(), cert_files(dir))
}

#[tokio::test]
async fn bind_fails_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let err = Server::bind(settings(dir.path())).await.err().unwrap();
    assert!(
        matches!(err, ServerError::Tls(TlsError::Read { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn bind_fails_when_key_and_certificate_do_not_match() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path());
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(
        dir.path().join("tls.key"),
        other.signing_key.serialize_pem(),
    )
    .unwrap();
    let err = Server::bind(settings(dir.path())).await.err().unwrap();
    assert!(
        matches!(err, ServerError::Tls(TlsError::Mismatch { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn bind_fails_on_a_port_in_use() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut s = settings(dir.path());
    s.listen = taken.local_addr().unwrap();
    let err = Server::bind(s).await.err().unwrap();
    assert!(matches!(err, ServerError::Bind { .. }), "{err}");
}

/// Lays out a directory the way kubelet mounts a Secret: `tls.crt -> ..data/tls.crt`,
/// `..data -> ..<version>`, and rotation swaps the `..data` link.
fn secret_version(root: &Path, version: &str) -> rustls::pki_types::CertificateDer<'static> {
    let dir = root.join(format!("..{version}"));
    std::fs::create_dir(&dir).unwrap();
    let cert = write_cert(&dir);
    let tmp = root.join("..data_tmp");
    symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, root.join("..data")).unwrap();
    cert
}

#[tokio::test]
async fn a_rotated_secret_is_served_and_a_broken_one_is_not() {
    let root = tempfile::tempdir().unwrap();
    let first = secret_version(root.path(), "v1");
    symlink("..data/tls.crt", root.path().join("tls.crt")).unwrap();
    symlink("..data/tls.key", root.path().join("tls.key")).unwrap();
    let mut s = settings(root.path());
    s.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    s.reload_interval = Duration::from_millis(100);
    s.shutdown_grace = Duration::ZERO;
    let server = Server::bind(s).await.unwrap();
    let addr = server.local_addr();
    let shared = server.shared();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let second = secret_version(root.path(), "v2");
    let client = Client::new(addr, &[first.clone(), second.clone()], Alpn::H2);
    let body = review("admission.k8s.io/v1", "UPDATE", "default", app_pod());
    assert_eq!(client.review(&body).await.status, 200);
    tls_client::eventually("the rotated certificate", || async {
        (client.review(&body).await.leaf == second).then_some(())
    })
    .await;

    // A broken version: the key of v3 does not belong to its certificate.
    std::fs::create_dir(root.path().join("..v3")).unwrap();
    write_cert(&root.path().join("..v3"));
    let stray = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(
        root.path().join("..v3/tls.key"),
        stray.signing_key.serialize_pem(),
    )
    .unwrap();
    symlink("..v3", root.path().join("..data_tmp")).unwrap();
    std::fs::rename(root.path().join("..data_tmp"), root.path().join("..data")).unwrap();
    tls_client::eventually("the failed reload to be counted", || async {
        let text = shared.metrics.encode();
        text.contains(r#"sidecar_injection_cert_reloads_total{result="failure"} 1"#)
            .then_some(())
    })
    .await;
    let reply = client.review(&body).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.leaf, second);
    assert!(
        shared
            .metrics
            .encode()
            .contains(r#"sidecar_injection_cert_reloads_total{result="success"} 1"#)
    );

    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test]
async fn shutdown_reports_not_ready_first_then_stops() {
    let mut server = Running::start(|s| s.shutdown_grace = Duration::from_secs(5)).await;
    assert_eq!(server.admin_get("/healthz").await.0, 200);
    assert_eq!(server.admin_get("/readyz").await.0, 200);
    server.signal();
    tls_client::eventually("readiness to drop", || async {
        (server.admin_get("/readyz").await.0 == 503).then_some(())
    })
    .await;
    // Still serving during the grace period, so requests routed before the endpoint left the
    // Service are answered.
    let reply = server
        .client(Alpn::Http1)
        .review(&review(
            "admission.k8s.io/v1",
            "UPDATE",
            "default",
            app_pod(),
        ))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["response"]["uid"], UID);
    tls_client::eventually("the server to stop", || async {
        server.task.is_finished().then_some(())
    })
    .await;
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn the_binary_serves_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path());
    let (mut command, addr, admin) = tls_client::serve_command(dir.path());
    let mut child = command
        .args(["--shutdown-grace", "0", "--log-format", "json"])
        .args(["--log-level", "info", "--native-sidecars", "false"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tls_client::eventually("the binary to listen", || async {
        tokio::net::TcpStream::connect(admin).await.ok().map(|_| ())
    })
    .await;
    let client = Client::new(addr, &[cert], Alpn::H2);
    let reply = client
        .review(&review(
            "admission.k8s.io/v1",
            "UPDATE",
            "default",
            app_pod(),
        ))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["response"]["uid"], UID);

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tls_client::eventually("the binary to exit", || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(status.success(), "{status:?}");

    // One JSON log line per review, carrying the review's span with its fields.
    let mut stderr = String::new();
    let mut pipe = child.stderr.take().unwrap();
    tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stderr)
        .await
        .unwrap();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let reviews: Vec<_> = lines
        .iter()
        .filter(|l| l["span"]["name"] == "review")
        .collect();
    assert_eq!(reviews.len(), 1, "{stderr}");
    let span = &reviews[0]["span"];
    assert_eq!(span["uid"], UID);
    assert_eq!(span["namespace"], "default");
    assert_eq!(span["pod"], "hello-5d4f7c8b9-*");
    assert_eq!(span["outcome"], "skipped");
    assert_eq!(span["reason"], "not_pod_create");
    assert!(span["duration_us"].is_u64(), "{span}");
}

#[tokio::test]
async fn the_binary_refuses_to_start_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidecar-injector"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args([
            "--tls-cert-file",
            dir.path().join("tls.crt").to_str().unwrap(),
        ])
        .args([
            "--tls-key-file",
            dir.path().join("tls.key").to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tls.crt"), "{stderr}");
}

#[tokio::test]
async fn the_binary_makes_its_own_certificate_and_says_how_to_call_it() {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidecar-injector"))
        .arg("serve")
        .arg("--tls-self-signed")
        .args(["--tls-ca-out", ca_file.to_str().unwrap()])
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(["--admin-addr", "127.0.0.1:0"])
        .args(["--shutdown-grace", "0", "--log-format", "json"])
        .args(["--log-level", "warn", "--native-sidecars", "false"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let told = stdout.next_line().await.unwrap().unwrap();
    assert!(
        told.contains(&ca_file.display().to_string()) && told.contains("localhost"),
        "{told}"
    );
    let curl = stdout.next_line().await.unwrap().unwrap();
    assert!(
        curl.starts_with("Try: curl --cacert ")
            && curl.ends_with(&format!("https://localhost:{port}/inject")),
        "{curl}"
    );

    // A client that trusts only the written CA gets an injection.
    let ca: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&ca_file)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let reply = Client::new(addr, &ca, Alpn::Http1)
        .review(&review(
            "admission.k8s.io/v1",
            "CREATE",
            "default",
            app_pod(),
        ))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["response"]["patchType"], "JSONPatch");

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tls_client::eventually("the binary to exit", || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(status.success(), "{status:?}");
    // --log-level warn: the per-review info lines are not written.
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(!stderr.contains(r#""level":"INFO""#), "{stderr}");
}

#[tokio::test]
async fn installed_certificates_gate_readiness_and_swap_on_the_next_handshake() {
    use sidecar_injector::server::CertSource;

    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::new("127.0.0.1:0".parse().unwrap(), CertSource::Installed);
    s.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    s.shutdown_grace = Duration::ZERO;
    let server = Server::bind(s).await.unwrap();
    let (addr, admin) = (server.local_addr(), server.admin_addr().unwrap());
    let shared = server.shared();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let running = Running::attach(addr, admin, shared.clone(), dir);

    // Serving, but nothing to present yet: not ready, no expiry reported.
    tls_client::eventually("the admin listener", || async {
        (running.admin_get("/healthz").await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(running.admin_get("/readyz").await.0, 503);
    assert!(!shared.metrics.encode().contains("cert_expiry"));

    let pair = |name: &str| {
        let made = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        (
            made.cert.pem(),
            made.signing_key.serialize_pem(),
            made.cert.der().clone(),
        )
    };
    let (cert, key, first) = pair("localhost");
    shared.install_cert(&cert, &key, "test");
    assert_eq!(running.admin_get("/readyz").await.0, 200);
    assert!(shared.metrics.encode().contains("cert_expiry_seconds"));
    let body = review("admission.k8s.io/v1", "UPDATE", "default", app_pod());
    let (cert2, key2, second) = pair("localhost");
    let client = Client::new(addr, &[first.clone(), second.clone()], Alpn::H2);
    assert_eq!(client.review(&body).await.leaf, first);

    shared.install_cert(&cert2, &key2, "test");
    assert_eq!(client.review(&body).await.leaf, second);

    // A key that does not belong to the certificate is refused; the last good pair stays.
    shared.install_cert(&cert, &key2, "test");
    assert_eq!(client.review(&body).await.leaf, second);
    let text = shared.metrics.encode();
    assert!(
        text.contains(r#"sidecar_injection_cert_reloads_total{result="success"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"sidecar_injection_cert_reloads_total{result="failure"} 1"#),
        "{text}"
    );

    let _ = stop.send(());
    task.await.unwrap();
}
