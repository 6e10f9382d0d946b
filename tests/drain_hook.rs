//! The drain hook the template renders is a real shell script: run it, as the kubelet would in
//! the proxy container, against a local HTTP server.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use sidecar_injector::config::Config;
use sidecar_injector::inject::{self, Outcome, Request};

/// The preStop command of the proxy injected into a pod with the drain annotations.
fn hook(url: &str, timeout: &str, grace: u64) -> Vec<String> {
    let pod = json!({
        "metadata": {"name": "p", "annotations": {
            "sidecar.istio.io/drainUntilUnready": url,
            "sidecar.istio.io/drainTimeoutSeconds": timeout}},
        "spec": {"terminationGracePeriodSeconds": grace, "containers": [{"name": "app", "image": "app"}]}
    });
    let config = Config::embedded();
    let req = Request {
        pod: &pod,
        namespace: Some("default"),
        workload: None,
        native_sidecars: false,
    };
    let Ok(Outcome::Injected(out)) = inject::inject(&config, &req) else {
        panic!("injection failed");
    };
    let proxy = out.pod["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "istio-proxy"))
        .expect("proxy")
        .clone();
    proxy["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .expect("preStop exec")
        .iter()
        .map(|v| v.as_str().expect("string arg").to_string())
        .collect()
}

/// An HTTP server that answers 200 while `up` is true, counting the requests it answered.
fn server(up: Arc<AtomicBool>, answered: Arc<AtomicUsize>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            if up.load(Ordering::SeqCst) {
                answered.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            } else {
                let _ = stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
        }
    });
    port
}

fn run(command: &[String]) -> std::process::Child {
    Command::new(&command[0])
        .args(&command[1..])
        .spawn()
        .expect("run the hook")
}

fn wait(child: &mut std::process::Child, limit: Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("the hook did not finish");
}

#[test]
fn hook_waits_while_the_app_answers_and_returns_once_it_stops() {
    let up = Arc::new(AtomicBool::new(true));
    let answered = Arc::new(AtomicUsize::new(0));
    let port = server(up.clone(), answered.clone());
    let command = hook(&format!("http://127.0.0.1:{port}/ready"), "60", 90);
    assert_eq!(command[..2], ["/bin/sh".to_string(), "-c".to_string()]);
    let mut child = run(&command);
    // The hook keeps polling while the app answers...
    while answered.load(Ordering::SeqCst) < 2 {
        assert!(
            child.try_wait().expect("status").is_none(),
            "the hook returned while the app still answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // ...and returns soon after the app stops answering.
    up.store(false, Ordering::SeqCst);
    assert!(wait(&mut child, Duration::from_secs(30)));
}

#[test]
fn hook_is_bounded_even_when_the_app_never_stops() {
    let up = Arc::new(AtomicBool::new(true));
    let answered = Arc::new(AtomicUsize::new(0));
    let port = server(up, answered.clone());
    // The pod's grace period bounds the wait: 7 s minus the proxy's own 5 s drain = 2 s,
    // although the annotation asks for 600.
    let command = hook(&format!("http://localhost:{port}/"), "600", 7);
    assert_eq!(command.last().map(String::as_str), Some("2"));
    let mut child = run(&command);
    assert!(wait(&mut child, Duration::from_secs(30)));
    assert!(
        answered.load(Ordering::SeqCst) >= 1,
        "the hook never asked the app"
    );
}

#[test]
fn hostile_urls_are_refused_before_they_reach_a_shell() {
    let pod = json!({
        "metadata": {"name": "p", "annotations": {"sidecar.istio.io/drainUntilUnready": "http://localhost/$(touch /tmp/pwned)"}},
        "spec": {"containers": [{"name": "app", "image": "app"}]}
    });
    let config = Config::embedded();
    let req = Request {
        pod: &pod,
        namespace: None,
        workload: None,
        native_sidecars: false,
    };
    match inject::inject(&config, &req) {
        Ok(Outcome::Denied(d)) => assert!(
            d.to_string().contains("sidecar.istio.io/drainUntilUnready"),
            "{d}"
        ),
        other => panic!("expected a denial, got {other:?}"),
    }
}
