//! The injection config from a mounted ConfigMap directory: validated at start, reloaded on
//! change, and a broken change never replaces the config in force.

mod tls_client;

use std::time::Duration;

use serde_json::Value;
use sidecar_injector::server::{Server, ServerError, Settings};
use tls_client::{Alpn, Running, app_pod, cert_files, review, write_cert, write_config};

/// A small but complete `config` key: one template that adds a proxy container.
fn config(policy: &str) -> String {
    format!(
        "policy: {policy}\n\
         defaultTemplates: [sidecar]\n\
         templates:\n  \
           sidecar: |\n    \
             spec:\n      \
               containers:\n      \
               - name: istio-proxy\n        \
                 image: registry.example/proxyv2:test\n"
    )
}

async fn outcome(server: &Running) -> (String, String) {
    let reply = server
        .client(Alpn::H2)
        .review(&review(
            "admission.k8s.io/v1",
            "CREATE",
            "default",
            app_pod(),
        ))
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body: Value = reply.json();
    let audit = &body["response"]["auditAnnotations"];
    (
        audit["outcome"].as_str().unwrap_or_default().to_owned(),
        audit["skip-reason"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn bind_refuses_an_invalid_config() {
    let certs = tempfile::tempdir().unwrap();
    write_cert(certs.path());
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "policy: [unclosed\n");
    let mut settings = Settings::new("127.0.0.1:0".parse().unwrap(), cert_files(certs.path()));
    settings.config_dir = Some(dir.path().to_owned());
    let err = Server::bind(settings).await.err().unwrap();
    assert!(matches!(err, ServerError::Config(_)), "{err}");
}

#[tokio::test]
async fn a_changed_config_is_used_and_a_broken_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config("disabled"));
    let config_dir = dir.path().to_owned();
    let server = Running::start(move |s| {
        s.config_dir = Some(config_dir);
        s.reload_interval = Duration::from_millis(100);
    })
    .await;
    assert_eq!(
        outcome(&server).await,
        ("skipped".to_owned(), "policy_disabled".to_owned())
    );

    write_config(dir.path(), &config("enabled"));
    tls_client::eventually("the enabled policy", || async {
        (outcome(&server).await.0 == "injected").then_some(())
    })
    .await;

    write_config(dir.path(), "policy: [unclosed\n");
    tls_client::eventually("the rejected reload to be counted", || async {
        let text = server.shared.metrics.encode();
        text.contains(r#"sidecar_injection_config_reloads_total{result="failure"} 1"#)
            .then_some(())
    })
    .await;
    assert_eq!(outcome(&server).await.0, "injected");
    let text = server.shared.metrics.encode();
    assert!(
        text.contains(r#"sidecar_injection_config_reloads_total{result="success"} 1"#),
        "{text}"
    );
}
