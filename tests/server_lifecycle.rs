//! Start-up checks, certificate rotation, readiness and graceful shutdown, and the real binary.

mod tls_client;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use sidecar_injector::server::{Server, ServerError, Settings, TlsError};
use tls_client::{Alpn, Client, Running, UID, app_pod, cert_files, review, write_cert};

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
        text.contains(r#"sidecar_injector_cert_reloads_total{result="failure"} 1"#)
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
            .contains(r#"sidecar_injector_cert_reloads_total{result="success"} 1"#)
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_binary_serves_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path());
    let (port, admin_port) = (free_port(), free_port());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidecar-injector"))
        .arg("serve")
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
        .args([
            "--tls-cert-file",
            dir.path().join("tls.crt").to_str().unwrap(),
        ])
        .args([
            "--tls-key-file",
            dir.path().join("tls.key").to_str().unwrap(),
        ])
        .args(["--shutdown-grace", "0", "--log-format", "json"])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    tls_client::eventually("the binary to listen", || async {
        tokio::net::TcpStream::connect(admin).await.ok().map(|_| ())
    })
    .await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
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
