//! The real server (real TLS, loopback) against hostile clients: broken and oversized bodies,
//! deep nesting, slow clients, piles of idle connections, huge pods, annotation values that try
//! to add structure. Each case checks the answer and that a normal review still gets answered.

mod tls_client;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use sidecar_injector::server::Settings;
use tls_client::{Alpn, Running, UID, app_pod, review};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The longest any single answer may take before the test gives up: a bound so a hung server
/// fails the test instead of hanging it, not a speed requirement.
const ANSWER_BOUND: Duration = Duration::from_secs(60);

async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(ANSWER_BOUND, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {ANSWER_BOUND:?}"))
}

fn connector(trusted: &[CertificateDer<'static>], alpn: &[u8]) -> TlsConnector {
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
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// A TLS connection speaking HTTP/1.1, for requests written by hand.
async fn tls_stream(
    addr: SocketAddr,
    trusted: &[CertificateDer<'static>],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    connector(trusted, b"http/1.1").connect(name, tcp).await
}

/// Reads an HTTP/1.1 response head and whatever body follows until the server closes or
/// `Content-Length` bytes arrived; returns the status and the body.
async fn read_response(stream: &mut TlsStream<TcpStream>) -> (u16, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        assert!(
            n > 0,
            "connection closed before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(usize::MAX);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    (status, body)
}

/// One POST /inject written by hand on a fresh connection.
async fn raw_post(server: &Running, body: &[u8]) -> (u16, Value) {
    let mut stream = tls_stream(server.addr, &server.trusted).await.unwrap();
    let head = format!(
        "POST /inject HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let (status, body) = bounded("raw POST", read_response(&mut stream)).await;
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, json)
}

fn decode_patch(response: &Value) -> json_patch::Patch {
    let encoded = response["patch"].as_str().expect("a patch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Sends a pod CREATE within the time limit and returns the body of the answer, checked to be a
/// 200 that echoes the review's uid.
async fn create(server: &Running, alpn: Alpn, what: &str, pod: Value) -> Value {
    let reply = bounded(
        what,
        server
            .client(alpn)
            .review(&review("admission.k8s.io/v1", "CREATE", "default", pod)),
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{what}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    assert_eq!(body["response"]["uid"], UID, "{what}");
    body
}

/// A normal pod CREATE is injected: the server is still fine after whatever came before.
async fn still_serving(server: &Running) {
    for alpn in [Alpn::Http1, Alpn::H2] {
        let body = create(server, alpn, "a normal review", app_pod()).await;
        assert_eq!(body["response"]["allowed"], true);
        assert!(!decode_patch(&body["response"]).0.is_empty());
    }
}

/// A Kubernetes `Status` error body with this code.
fn assert_status(body: &Value, code: u16) {
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

fn review_bytes() -> Vec<u8> {
    serde_json::to_vec(&review(
        "admission.k8s.io/v1",
        "CREATE",
        "default",
        app_pod(),
    ))
    .unwrap()
}

#[tokio::test]
async fn truncated_json_is_a_bad_request() {
    let server = Running::start(|_| {}).await;
    let whole = review_bytes();
    for cut in [1, whole.len() / 3, whole.len() / 2, whole.len() - 1] {
        let (status, body) = raw_post(&server, &whole[..cut]).await;
        assert_eq!(status, 400, "cut at {cut}");
        assert_status(&body, 400);
    }
    still_serving(&server).await;
}

#[tokio::test]
async fn deeply_nested_json_is_a_bad_request() {
    let server = Running::start(|_| {}).await;
    // A whole body of brackets, and the same depth inside the pod of a real review.
    let brackets = vec![b'['; 100_000];
    let (status, body) = raw_post(&server, &brackets).await;
    assert_eq!(status, 400);
    assert_status(&body, 400);

    let mut inside = String::from(
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","object":{"metadata":{"x":"#,
    );
    inside.push_str(&"{\"a\":".repeat(50_000));
    inside.push('1');
    inside.push_str(&"}".repeat(50_000));
    inside.push_str("}}}}");
    let (status, body) = raw_post(&server, inside.as_bytes()).await;
    assert_eq!(status, 400);
    assert_status(&body, 400);
    still_serving(&server).await;
}

#[tokio::test]
async fn invalid_utf8_is_a_bad_request() {
    let server = Running::start(|_| {}).await;
    let mut in_a_string = review_bytes();
    let at = in_a_string
        .windows(5)
        .position(|w| w == b"hello")
        .expect("the pod names hello");
    in_a_string[at] = 0xff;
    in_a_string[at + 1] = 0xfe;
    for body in [
        in_a_string,
        vec![0xc3, 0x28, 0xa0, 0xa1],
        b"\xff{}".to_vec(),
    ] {
        let (status, json) = raw_post(&server, &body).await;
        assert_eq!(status, 400);
        assert_status(&json, 400);
    }
    still_serving(&server).await;
}

/// Streams `total` bytes of body (or until the server stops taking them) while reading the
/// answer; returns the status and how many body bytes were written before it came.
async fn flood(server: &Running, total: u64, chunked: bool) -> (u16, u64) {
    let stream = tls_stream(server.addr, &server.trusted).await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let framing = if chunked {
        "transfer-encoding: chunked".to_owned()
    } else {
        format!("content-length: {total}")
    };
    let head = format!(
        "POST /inject HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n{framing}\r\n\r\n"
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let send = tokio::spawn(async move {
        let chunk = vec![b' '; 64 * 1024];
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            let wrote = if chunked {
                let mut framed = format!("{n:x}\r\n").into_bytes();
                framed.extend_from_slice(&chunk[..n]);
                framed.extend_from_slice(b"\r\n");
                writer.write_all(&framed).await
            } else {
                writer.write_all(&chunk[..n]).await
            };
            if wrote.is_err() {
                return;
            }
            counter.fetch_add(n as u64, Ordering::Relaxed);
            left -= n as u64;
        }
    });
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match bounded("a flood's answer", reader.read(&mut byte)).await {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "no response head ({other:?}) after {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    let written = sent.load(Ordering::Relaxed);
    send.abort();
    let status = String::from_utf8_lossy(&head)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, written)
}

#[tokio::test]
async fn a_100_mb_body_is_cut_off_with_413() {
    let server = Running::start(|_| {}).await;
    const HUNDRED_MB: u64 = 100 * 1024 * 1024;
    // Announced: refused on the headers. Chunked: refused once the limit is crossed. Either
    // way the answer comes while most of the 100 MB are still unsent.
    for chunked in [false, true] {
        let (status, written) = flood(&server, HUNDRED_MB, chunked).await;
        assert_eq!(status, 413, "chunked: {chunked}");
        assert!(
            written < HUNDRED_MB / 2,
            "chunked {chunked}: {written} bytes went out before the 413"
        );
    }
    still_serving(&server).await;
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let server = Running::start(|s| {
        s.handshake_timeout = Duration::from_secs(1);
        s.header_read_timeout = Duration::from_secs(1);
        s.read_timeout = Duration::from_secs(1);
    })
    .await;

    // No TLS handshake at all: closed after the handshake timeout.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = bounded("a silent connection", silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // Headers one byte at a time, each well inside any per-read timeout: the head as a whole
    // is late, so the connection is closed before the 40 seconds it would take to send it.
    let mut trickle = tls_stream(server.addr, &server.trusted).await.unwrap();
    let head = format!(
        "POST /inject HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\nx-pad: {}\r\n\r\n",
        "a".repeat(300)
    );
    let mut closed = false;
    for byte in head.as_bytes() {
        if trickle.write_all(&[*byte]).await.is_err() || trickle.flush().await.is_err() {
            closed = true;
            break;
        }
        // The server closing shows as a read of 0 (or an error) rather than a failed write,
        // as small writes land in the socket buffer.
        let mut probe = [0u8; 1];
        if let Ok(read) =
            tokio::time::timeout(Duration::from_millis(100), trickle.read(&mut probe)).await
        {
            assert!(
                matches!(read, Ok(0) | Err(_)),
                "the server answered a head it never got whole: {read:?}"
            );
            closed = true;
            break;
        }
    }
    assert!(closed, "a head trickled byte by byte was taken whole");

    // A body that stops coming: 408.
    let mut stalled = tls_stream(server.addr, &server.trusted).await.unwrap();
    stalled
        .write_all(b"POST /inject HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"apiVersion\"")
        .await
        .unwrap();
    let (status, body) = bounded("a stalled body", read_response(&mut stalled)).await;
    assert_eq!(status, 408);
    assert_status(&serde_json::from_slice(&body).unwrap(), 408);

    still_serving(&server).await;
}

/// Opens `n` connections and completes the TLS handshake on each, a few at a time.
async fn idle_connections(server: &Running, n: usize) -> Vec<TlsStream<TcpStream>> {
    let mut open = Vec::with_capacity(n);
    let mut pending = tokio::task::JoinSet::new();
    let mut started = 0;
    while open.len() < n {
        while started < n && pending.len() < 32 {
            let (addr, trusted) = (server.addr, server.trusted.clone());
            pending.spawn(async move { tls_stream(addr, &trusted).await });
            started += 1;
        }
        let done = bounded("a handshake", pending.join_next()).await;
        let stream = done.expect("a pending handshake").unwrap();
        open.push(stream.expect("the handshake completes under the limit"));
    }
    open
}

#[tokio::test]
async fn two_thousand_idle_connections_do_not_stop_other_clients() {
    let server = Running::start(|_| {}).await;
    let idle = idle_connections(&server, 2_000).await;
    // And as many that never start the handshake.
    let mut silent = Vec::new();
    for _ in 0..500 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    still_serving(&server).await;
    drop(idle);
    drop(silent);
    still_serving(&server).await;
}

#[tokio::test]
async fn a_pod_with_ten_thousand_containers_is_answered() {
    let server = Running::start(|_| {}).await;
    let mut pod = app_pod();
    let containers: Vec<Value> = (0..10_000)
        .map(|i| {
            json!({
                "name": format!("c{i}"),
                "image": "registry.example/app:1",
                "ports": [{"containerPort": 8000 + (i % 1000)}],
                "readinessProbe": {"httpGet": {"port": 8000 + (i % 1000), "path": "/ready"}},
            })
        })
        .collect();
    pod["spec"]["containers"] = Value::Array(containers);
    let body = create(&server, Alpn::Http1, "10,000 containers", pod.clone()).await;
    assert_eq!(body["response"]["allowed"], true);
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &decode_patch(&body["response"])).unwrap();
    let names: Vec<&str> = patched["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(patched["spec"]["initContainers"].as_array().unwrap())
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(names.contains(&"istio-proxy"));
    assert!(names.contains(&"c9999"));
    assert_eq!(names.len(), 10_000 + 2);
    // Every app probe was moved to the proxy's status port.
    let c0 = &patched["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "c0")
        .unwrap()["readinessProbe"];
    assert_eq!(c0["httpGet"]["port"], 15020, "{c0}");
    still_serving(&server).await;
}

#[tokio::test]
async fn annotation_values_with_template_and_yaml_syntax_stay_text() {
    let server = Running::start(|s: &mut Settings| s.max_connections = 100).await;
    let hostile = [
        "{{ values.global.hub }}",
        "{% if true %}boom{% endif %}",
        "x\nprivileged: true",
        "- item\n- other",
        "a: b\n  c: [d]",
        "&anchor *alias !!binary",
        "\"quoted\" and 'single'",
        "}}{{",
        "\u{0}\u{7f}é✓",
    ];
    for value in hostile {
        let mut pod = app_pod();
        // Annotations the template renders into the proxy's args, env and metadata.
        pod["metadata"]["annotations"] = json!({
            "sidecar.istio.io/agentLogLevel": value,
            "sidecar.istio.io/logLevel": value,
            "sidecar.istio.io/componentLogLevel": value,
            "sidecar.istio.io/proxyImage": format!("registry.example/{value}"),
            "example.com/free-text": value,
        });
        let what = format!("a hostile annotation {value:?}");
        let body = create(&server, Alpn::Http1, &what, pod.clone()).await;
        let response = &body["response"];
        if response["allowed"] == false {
            // A refusal must say which annotation and why.
            let message = response["status"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("sidecar.istio.io/"), "{message}");
            continue;
        }
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &decode_patch(response)).unwrap();
        assert_eq!(
            patched["metadata"]["annotations"]["example.com/free-text"],
            value
        );
        let proxy = patched["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(patched["spec"]["initContainers"].as_array().unwrap())
            .find(|c| c["name"] == "istio-proxy")
            .expect("the proxy");
        // The value went in as one string, not as structure.
        assert_eq!(
            proxy["image"],
            format!("registry.example/{value}"),
            "{proxy}"
        );
        for container in patched["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(patched["spec"]["initContainers"].as_array().unwrap())
        {
            assert_ne!(
                container["securityContext"]["privileged"], true,
                "{value:?} made {} privileged",
                container["name"]
            );
        }
    }
    still_serving(&server).await;
}

/// The denial message of a review answered `allowed: false`.
fn denial(body: &Value) -> &str {
    assert_eq!(body["response"]["allowed"], false, "{body}");
    body["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test]
async fn deep_annotation_values_are_refused_before_any_parser_reads_them() {
    let server = Running::start(|_| {}).await;
    // 160 KB of YAML flow nesting: seconds of the YAML reader's time each, before.
    let deep_yaml = format!("{}{}", "{a: ".repeat(32_000), "}".repeat(32_000));
    let just_too_deep = format!("{}{}", "{a: ".repeat(257), "}".repeat(257));
    let deep_json = format!("{}1{}", "[".repeat(65), "]".repeat(65));
    // 50 KB: an anchored list of ten, aliased ten times over eight levels, behind a long list
    // that raises the YAML reader's repetition limit: seconds of copying, before.
    let mut bomb = format!(
        "f: [{}1]\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
        "1,".repeat(25_000)
    );
    for level in 1..9 {
        bomb.push_str(&format!("a{level}: &a{level}\n"));
        for _ in 0..10 {
            bomb.push_str(&format!("  - *a{}\n", level - 1));
        }
    }
    let cases = [
        ("proxy.istio.io/config", bomb, "a YAML alias"),
        (
            "proxy.istio.io/config",
            deep_yaml,
            "larger than 65536 bytes",
        ),
        (
            "proxy.istio.io/config",
            just_too_deep,
            "at most 256 '[' or '{'",
        ),
        (
            "sidecar.istio.io/userVolume",
            deep_json,
            "nesting deeper than 64 levels (found 65)",
        ),
    ];
    // All at once, each on its own connection, and an ordinary review with them.
    let mut hostile = tokio::task::JoinSet::new();
    for (name, value, says) in cases {
        let mut pod = app_pod();
        pod["metadata"]["annotations"] = json!({ name: value });
        let client = server.client(Alpn::H2);
        hostile.spawn(async move {
            let reply = bounded(
                "a hostile review",
                client.review(&review("admission.k8s.io/v1", "CREATE", "default", pod)),
            )
            .await;
            (name, says, reply)
        });
    }
    still_serving(&server).await;
    while let Some(done) = hostile.join_next().await {
        let (name, says, reply) = done.unwrap();
        assert_eq!(reply.status, 200);
        let body = reply.json();
        let message = denial(&body);
        assert!(message.contains(name), "{message}");
        assert!(message.contains(says), "{name}: {message}");
        // The value is quoted by its start and size, not whole.
        assert!(message.len() < 2_000, "{} bytes of denial", message.len());
    }
}

/// A `config` key whose sidecar template spins for `example.com/spin` thousand loop turns: an
/// engine as slow as a test wants, for one pod and not the others.
const SPINNING_CONFIG: &str = r#"policy: enabled
defaultTemplates: [sidecar]
templates:
  sidecar: |
    {%- for i in range(annotation("example.com/spin", "0") | int) %}{% for j in range(1000) %}{% endfor %}{% endfor %}
    spec:
      containers:
      - name: istio-proxy
        image: registry.example/proxyv2:test
"#;

/// How many thousand turns make a review of the spinning config slow: long enough that the
/// other requests of a test are answered first, short enough to end within seconds.
const SPIN: &str = "3000";

/// A server on the spinning config, and its config directory.
async fn spinning_server(tweak: impl FnOnce(&mut Settings)) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    tls_client::write_config(dir.path(), SPINNING_CONFIG);
    let path = dir.path().to_owned();
    let server = Running::start(move |s| {
        s.config_dir = Some(path);
        tweak(s);
    })
    .await;
    (server, dir)
}

/// Sends a spinning review on its own connection, in the background.
fn spin(server: &Running) -> tokio::task::JoinHandle<tls_client::Reply> {
    let mut pod = app_pod();
    pod["metadata"]["annotations"] = json!({"example.com/spin": SPIN});
    let client = server.client(Alpn::Http1);
    tokio::spawn(async move {
        bounded(
            "a slow review",
            client.review(&review("admission.k8s.io/v1", "CREATE", "default", pod)),
        )
        .await
    })
}

#[tokio::test]
async fn slow_reviews_do_not_hold_up_an_ordinary_one() {
    let (server, _config) = spinning_server(|s| {
        s.engine.workers = 3;
        s.engine.queue = 0;
        s.engine.deadline = Duration::from_secs(600);
    })
    .await;
    let slow = [spin(&server), spin(&server)];
    tls_client::eventually("both slow reviews in the engine", || async {
        (server.shared.engine.in_flight() == 2).then_some(())
    })
    .await;
    // Answered on another connection while both are still being worked out.
    still_serving(&server).await;
    assert!(
        slow.iter().all(|s| !s.is_finished()),
        "a slow review ended before the ordinary one was answered"
    );
    for s in slow {
        let reply = s.await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["response"]["allowed"], true);
    }
}

#[tokio::test]
async fn a_review_over_the_queue_is_refused_at_once_and_one_past_its_deadline_gets_an_error() {
    let (server, _config) = spinning_server(|s| {
        s.engine.workers = 1;
        s.engine.queue = 1;
        s.engine.deadline = Duration::from_secs(600);
    })
    .await;
    let running = spin(&server);
    let waiting = spin(&server);
    tls_client::eventually("one review running and one waiting", || async {
        (server.shared.engine.in_flight() == 2).then_some(())
    })
    .await;
    let over = bounded(
        "a review over the queue",
        server.client(Alpn::H2).review(&review(
            "admission.k8s.io/v1",
            "CREATE",
            "default",
            app_pod(),
        )),
    )
    .await;
    assert_eq!(over.status, 503);
    let body = over.json();
    assert_status(&body, 503);
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("busy") && message.contains("1 are waiting"),
        "{message}"
    );
    assert!(!running.is_finished() && !waiting.is_finished());
    for s in [running, waiting] {
        assert_eq!(s.await.unwrap().status, 200);
    }

    // A deadline shorter than the work: an error, while the work still holds its worker.
    let (server, _config) = spinning_server(|s| {
        s.engine.workers = 1;
        s.engine.deadline = Duration::from_millis(200);
    })
    .await;
    let late = spin(&server).await.unwrap();
    assert_eq!(late.status, 504, "{}", String::from_utf8_lossy(&late.body));
    let body = late.json();
    assert_status(&body, 504);
    assert_eq!(body["details"]["uid"], UID, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("deadline"),
        "{body}"
    );
    assert_eq!(server.shared.engine.in_flight(), 1);
    tls_client::eventually("the overrun work to end", || async {
        (server.shared.engine.in_flight() == 0).then_some(())
    })
    .await;
    still_serving(&server).await;
}

/// A self-signed pair for localhost valid from `not_before` to `not_after` (seconds from now).
fn pair_valid(not_before: i64, not_after: i64) -> (String, String) {
    let now = time::OffsetDateTime::now_utc();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = now + time::Duration::seconds(not_before);
    params.not_after = now + time::Duration::seconds(not_after);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn metric_line<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(name))
}

#[tokio::test]
async fn certificates_outside_their_validity_are_never_served() {
    const DAY: i64 = 86_400;
    let server = Running::start(|s| s.reload_interval = Duration::from_millis(100)).await;
    let client = server.client(Alpn::H2);
    let body = review("admission.k8s.io/v1", "CREATE", "default", app_pod());
    let served = client.review(&body).await.leaf;
    for (n, (not_before, not_after)) in [(-2 * DAY, -DAY), (DAY, 2 * DAY)].into_iter().enumerate() {
        let (cert, key) = pair_valid(not_before, not_after);
        std::fs::write(server.dir.path().join("tls.crt"), &cert).unwrap();
        std::fs::write(server.dir.path().join("tls.key"), &key).unwrap();
        let failures = format!(
            r#"sidecar_injection_cert_reloads_total{{result="failure"}} {}"#,
            n + 1
        );
        tls_client::eventually("the refused reload to be counted", || async {
            server
                .shared
                .metrics
                .encode()
                .contains(&failures)
                .then_some(())
        })
        .await;
        // New connections still get the old certificate, and the server stays ready.
        let reply = client.review(&body).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.leaf, served);
        assert_eq!(server.admin_get("/readyz").await.0, 200);
        let text = server.shared.metrics.encode();
        assert!(
            !text.contains(r#"cert_reloads_total{result="success"}"#),
            "{text}"
        );
        let expiry = metric_line(&text, "sidecar_injection_cert_expiry_seconds ")
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("the expiry gauge");
        assert!(
            expiry > 0.0,
            "the gauge shows the refused certificate: {expiry}"
        );

        // At start-up the same pair is an error that says why.
        let mut settings = Settings::new(
            "127.0.0.1:0".parse().unwrap(),
            tls_client::cert_files(server.dir.path()),
        );
        settings.admin_listen = None;
        let err = sidecar_injector::server::Server::bind(settings)
            .await
            .err()
            .expect("bind refuses the pair");
        assert!(err.to_string().contains("not valid now"), "{err}");
    }
}

#[tokio::test]
async fn a_config_whose_template_does_not_render_never_goes_live() {
    let typo = SPINNING_CONFIG.replace(
        "image: registry.example/proxyv2:test",
        "image: {{ proxy_image | upperr }}",
    );
    // At start-up: refused, naming the template and the error.
    let dir = tempfile::tempdir().unwrap();
    tls_client::write_config(dir.path(), &typo);
    let certs = tempfile::tempdir().unwrap();
    tls_client::write_cert(certs.path());
    let mut settings = Settings::new(
        "127.0.0.1:0".parse().unwrap(),
        tls_client::cert_files(certs.path()),
    );
    settings.config_dir = Some(dir.path().to_owned());
    let err = sidecar_injector::server::Server::bind(settings)
        .await
        .err()
        .expect("bind refuses the config");
    let message = err.to_string();
    assert!(message.contains(r#"template "sidecar""#), "{message}");
    assert!(message.contains("upperr"), "{message}");

    // On reload: refused and counted, and the config in force still answers.
    let (server, config) =
        spinning_server(|s| s.reload_interval = Duration::from_millis(100)).await;
    tls_client::write_config(config.path(), &typo);
    tls_client::eventually("the refused reload to be counted", || async {
        let text = server.shared.metrics.encode();
        text.contains(r#"sidecar_injection_config_reloads_total{result="failure"} 1"#)
            .then_some(())
    })
    .await;
    let body = create(
        &server,
        Alpn::H2,
        "a review after the refused reload",
        app_pod(),
    )
    .await;
    assert_eq!(body["response"]["allowed"], true, "{body}");
    assert_eq!(server.admin_get("/readyz").await.0, 200);
}

#[tokio::test]
async fn a_drain_url_that_curl_would_expand_is_denied() {
    let server = Running::start(|_| {}).await;
    for url in [
        "http://127.0.0.1:18999/[1-100000]",
        "http://localhost:8080/{a,b,c}",
    ] {
        let mut pod = app_pod();
        pod["metadata"]["annotations"] = json!({
            "sidecar.istio.io/drainUntilUnready": url,
            "sidecar.istio.io/drainTimeoutSeconds": "3",
        });
        let body = create(&server, Alpn::Http1, url, pod).await;
        let message = denial(&body);
        assert!(
            message.contains("sidecar.istio.io/drainUntilUnready"),
            "{message}"
        );
        assert!(message.contains("-._~:/?#@+,=%"), "{message}");
        assert!(message.contains("[ ] { }"), "{message}");
    }
    still_serving(&server).await;
}
