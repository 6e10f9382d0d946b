//! Connections and memory are bounded: idle connections of every kind are closed and free
//! their slot, at the cap the idlest connection makes room while one with a request in flight
//! keeps its slot, the admin port is capped too, bodies in flight stay within the budget (read
//! from the process's own memory), and an h2 client reads an early refusal instead of a stream
//! error.

mod tls_client;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt as _;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use sidecar_injector::server::Settings;
use tls_client::{Alpn, Client, Running, UID, app_pod, review, write_cert};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest any single step may take before the test gives up: a bound so a hung server
/// fails the test instead of hanging it, not a speed requirement.
const STEP_BOUND: Duration = Duration::from_secs(60);

async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP_BOUND, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {STEP_BOUND:?}"))
}

/// Short phase timeouts, so that idle connections are closed while the test waits.
fn short_phases(s: &mut Settings) {
    s.handshake_timeout = Duration::from_secs(1);
    s.first_request_timeout = Duration::from_secs(1);
    s.idle_timeout = Duration::from_secs(1);
    s.header_read_timeout = Duration::from_secs(1);
    s.closing_timeout = Duration::from_secs(1);
}

/// Reads (and drops) whatever the server sends until it closes the connection.
async fn closed_by_server(what: &str, stream: &mut (impl AsyncRead + Unpin)) {
    bounded(what, async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

fn pod_review() -> Value {
    review("admission.k8s.io/v1", "CREATE", "default", app_pod())
}

/// The first connection that gets a slot: a connection over the limit is closed before its
/// handshake, and the server frees the slot of a closed connection on its own time.
async fn connect_in_a_free_slot(client: &Client) -> tokio_rustls::client::TlsStream<TcpStream> {
    tls_client::eventually("a free connection slot", || async {
        client.connect().await.ok()
    })
    .await
}

/// A review sent on the first connection that gets a slot.
async fn review_in_a_free_slot(server: &Running, alpn: Alpn) -> tls_client::Reply {
    let client = server.client(alpn);
    let tls = connect_in_a_free_slot(&client).await;
    let body = serde_json::to_vec(&pod_review()).unwrap();
    bounded(
        "a review",
        client.send_on(tls, "POST", "/inject", Some("application/json"), body),
    )
    .await
}

/// A connection kept open by hyper's client after one review, until the server closes it.
async fn review_then_idle(client: &Client, alpn: Alpn) -> tokio::task::JoinHandle<()> {
    let tls = connect_in_a_free_slot(client).await;
    let io = TokioIo::new(tls);
    let body = http_body_util::Full::new(Bytes::from(serde_json::to_vec(&pod_review()).unwrap()));
    let req = hyper::Request::post("https://localhost/inject")
        .header("host", "localhost")
        .header("content-type", "application/json");
    let req = req.body(body).unwrap();
    // The sender is kept alive (moved into a task) so that hyper keeps the connection open.
    let (resp, conn) = match alpn {
        Alpn::Http1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            let conn = tokio::spawn(async move { drop(conn.await) });
            let resp = sender.send_request(req).await;
            tokio::spawn(async move { keep(sender).await });
            (resp, conn)
        }
        Alpn::H2 => {
            let handshake = hyper::client::conn::http2::handshake(TokioExecutor::new(), io);
            let (mut sender, conn) = handshake.await.unwrap();
            let conn = tokio::spawn(async move { drop(conn.await) });
            let resp = sender.send_request(req).await;
            tokio::spawn(async move { keep(sender).await });
            (resp, conn)
        }
    };
    let resp = resp.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    conn
}

/// Holds `value` for the rest of the test.
async fn keep<T>(value: T) {
    let _kept = value;
    std::future::pending::<()>().await;
}

/// With a single connection slot, each kind of idle connection is closed by the server on its
/// own, and a review then gets the slot.
#[tokio::test]
async fn every_kind_of_idle_connection_is_closed_and_frees_its_slot() {
    let server = Running::start(|s| {
        short_phases(s);
        s.max_connections = 1;
    })
    .await;

    // TLS done, then nothing: the server waits for the first bytes to tell HTTP/1.1 from h2.
    let mut silent = connect_in_a_free_slot(&server.client(Alpn::Http1)).await;
    closed_by_server("a TLS connection that sends nothing", &mut silent).await;
    let reply = review_in_a_free_slot(&server, Alpn::Http1).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["response"]["uid"], UID);

    // The h2 preface and an empty SETTINGS frame, then nothing: no stream is ever opened.
    let mut preface = connect_in_a_free_slot(&server.client(Alpn::H2)).await;
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    preface.flush().await.unwrap();
    closed_by_server("an h2 connection that opens no stream", &mut preface).await;
    let reply = review_in_a_free_slot(&server, Alpn::H2).await;
    assert_eq!(reply.status, 200);

    // One review, then the connection is kept for more: keep-alive on HTTP/1.1, an open h2
    // connection with no stream. Both end when the server closes them.
    for alpn in [Alpn::Http1, Alpn::H2] {
        let idle = review_then_idle(&server.client(alpn), alpn).await;
        bounded(&format!("an idle {alpn:?} connection to close"), idle)
            .await
            .unwrap();
        let reply = review_in_a_free_slot(&server, alpn).await;
        assert_eq!(reply.status, 200, "{alpn:?}");
    }
}

/// A GET /healthz on a plain connection; `None` if the connection was closed first (over the
/// admin connection limit).
async fn try_healthz(admin: SocketAddr) -> Option<u16> {
    let mut tcp = TcpStream::connect(admin).await.ok()?;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.ok()?;
    let head = String::from_utf8_lossy(&answer);
    head.split(' ').nth(1)?.parse().ok()
}

/// Whether the server keeps `stream` open: what it has sent (a TLS session ticket, say) is read
/// and dropped, then a read would wait, where a closed one gives end of file or an error.
fn still_open(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.try_read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
}

#[tokio::test]
async fn the_admin_port_is_capped_and_idle_connections_make_room() {
    let server = Running::start(|s| s.admin_max_connections = 2).await;
    let mut oldest = TcpStream::connect(server.admin).await.unwrap();
    // Accepted after the first: the server has both once its `requests` would count a third.
    let newer = TcpStream::connect(server.admin).await.unwrap();
    // At the cap, a new connection takes the slot of the one idle the longest (10 s before its
    // first-request timeout would close it): kubelet probes get through idle connections.
    let status = try_healthz(server.admin).await;
    assert_eq!(status, Some(200));
    closed_by_server("the admin connection idle the longest", &mut oldest).await;
    assert!(
        still_open(&newer),
        "the newer idle admin connection was closed too"
    );
}

#[tokio::test]
async fn idle_webhook_connections_make_room_for_a_review() {
    // Phases far longer than the test: only the cap can close a connection here.
    let server = Running::start(|s| {
        s.max_connections = 2;
        s.first_request_timeout = STEP_BOUND * 2;
        s.idle_timeout = STEP_BOUND * 2;
    })
    .await;
    let client = server.client(Alpn::Http1);
    let mut oldest = client.connect().await.unwrap();
    let newer = client.connect().await.unwrap();
    let tls = client.connect().await.unwrap();
    let body = serde_json::to_vec(&pod_review()).unwrap();
    let reply = bounded(
        "a review at the cap",
        client.send_on(tls, "POST", "/inject", Some("application/json"), body),
    )
    .await;
    assert_eq!(reply.status, 200);
    closed_by_server("the webhook connection idle the longest", &mut oldest).await;
    assert!(
        still_open(newer.get_ref().0),
        "the newer idle webhook connection was closed too"
    );
}

#[tokio::test]
async fn a_connection_with_a_request_in_flight_keeps_its_slot() {
    let server = Running::start(|s| s.max_connections = 1).await;
    let client = server.client(Alpn::Http1);
    let body = serde_json::to_vec(&pod_review()).unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut busy = client.connect().await.unwrap();
    let head = format!(
        "POST /inject HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    busy.write_all(head.as_bytes()).await.unwrap();
    busy.write_all(first).await.unwrap();
    busy.flush().await.unwrap();
    // The review is in flight once the handler has it.
    tls_client::eventually("the review to reach the handler", || async {
        (server.shared.metrics.requests.get() == 1).then_some(())
    })
    .await;
    // No idle connection to close: the new one is refused, before its TLS handshake.
    assert!(
        bounded("a connection over the cap", client.connect())
            .await
            .is_err(),
        "a connection over the cap got in while the only slot had a request in flight"
    );
    busy.write_all(rest).await.unwrap();
    busy.flush().await.unwrap();
    let mut answer = Vec::new();
    bounded("the answer", busy.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(UID), "{answer}");
    // Its connection closed after the answer (`connection: close`): the slot is free again, once
    // the server has seen the close.
    let reply = review_in_a_free_slot(&server, Alpn::Http1).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn idle_admin_connections_are_closed() {
    let server = Running::start(|s| {
        short_phases(s);
        s.admin_max_connections = 1;
    })
    .await;
    let mut silent = TcpStream::connect(server.admin).await.unwrap();
    closed_by_server("an admin connection that sends nothing", &mut silent).await;
    let status = tls_client::eventually("a free admin slot", || try_healthz(server.admin)).await;
    assert_eq!(status, 200);

    // After one request, a keep-alive connection is closed once idle.
    let mut kept = TcpStream::connect(server.admin).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    closed_by_server("an idle keep-alive admin connection", &mut kept).await;
    let status = tls_client::eventually("a free admin slot", || try_healthz(server.admin)).await;
    assert_eq!(status, 200);
}

/// A POST to /inject announcing `announced` bytes, of which `sent` are sent before the body
/// stalls (`sent == announced`: the whole body); returns the status and the body of the answer.
async fn post_announced(
    client: &Client,
    alpn: Alpn,
    announced: usize,
    sent: usize,
) -> Result<(u16, Bytes), String> {
    let tls = client.connect().await.map_err(|e| e.to_string())?;
    let io = TokioIo::new(tls);
    const CHUNK: usize = 64 * 1024;
    let chunks = (0..sent.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(sent - i * CHUNK);
        Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b' '; len])))
    });
    let stalls = sent < announced;
    let stream =
        futures_util::stream::iter(chunks).chain(futures_util::stream::poll_fn(move |_| {
            if stalls {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(None)
            }
        }));
    let req = hyper::Request::post("https://localhost/inject")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .header("content-length", announced)
        .body(StreamBody::new(stream))
        .unwrap();
    let resp = match alpn {
        Alpn::Http1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            sender.send_request(req).await
        }
        Alpn::H2 => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            sender.send_request(req).await
        }
    }
    .map_err(|e| format!("the request failed: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("the answer's body failed: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// A field of /proc/<pid>/status, in kB.
fn proc_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Forty-eight clients (half HTTP/1.1, half h2) each announce a 6 MiB body and send all of it
/// but the last byte, at once. The budget admits four; the others get 503 (with Retry-After), and the process's peak
/// memory grows by the budget plus per-connection buffers, not by 48 bodies (288 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_in_flight_stay_within_the_budget() {
    const BODY: usize = 6 * 1024 * 1024;
    const CLIENTS: usize = 48;
    const ADMITTED: usize = 4;
    const BUDGET: usize = ADMITTED * BODY;
    // What each connection may hold besides its body (docs/server.md), with room to spare.
    const PER_CONNECTION: u64 = 256 * 1024;
    // Allocator slack: freed pages that are not returned at once, the arenas of new threads.
    const SLACK: u64 = 16 * 1024 * 1024;

    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path());
    let (mut command, addr, _) = tls_client::serve_command(dir.path());
    let child = command
        .args(["--max-body-bytes", &BODY.to_string()])
        .args(["--body-budget-bytes", &BUDGET.to_string()])
        .args(["--read-timeout", "5", "--max-connections", "100"])
        .args(["--log-level", "error", "--native-sidecars", "false"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let trusted = vec![cert];
    let client = Client::new(addr, &trusted, Alpn::Http1);
    tls_client::eventually("the binary to listen", || async {
        client.connect().await.ok().map(|_| ())
    })
    .await;
    let warm = bounded("a review", client.review(&pod_review())).await;
    assert_eq!(warm.status, 200);
    let before = proc_kb(pid, "VmRSS");

    let mut clients = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let alpn = if i % 2 == 0 { Alpn::Http1 } else { Alpn::H2 };
        let client = Client::new(addr, &trusted, alpn);
        clients.spawn(async move { post_announced(&client, alpn, BODY, BODY - 1).await });
    }
    let mut statuses = Vec::new();
    while let Some(done) = bounded("the hostile clients", clients.join_next()).await {
        let (status, body) = done.unwrap().unwrap();
        if status == 503 {
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["kind"], "Status", "{body}");
            assert_eq!(body["code"], 503, "{body}");
        }
        statuses.push(status);
    }
    let peak = proc_kb(pid, "VmHWM");

    let refused = statuses.iter().filter(|s| **s == 503).count();
    let timed_out = statuses.iter().filter(|s| **s == 408).count();
    assert_eq!(refused + timed_out, CLIENTS, "{statuses:?}");
    assert!(timed_out <= ADMITTED, "{statuses:?}");
    assert!(refused >= CLIENTS - ADMITTED, "{statuses:?}");

    let grown = (peak.saturating_sub(before)) * 1024;
    let bound = BUDGET as u64 + CLIENTS as u64 * PER_CONNECTION + SLACK;
    assert!(
        grown <= bound,
        "peak memory grew by {grown} bytes, over the bound of {bound} (VmRSS {before} kB before, \
         VmHWM {peak} kB after)"
    );

    // And the budget is whole again: an ordinary review gets through.
    let after = bounded("a review after", client.review(&pod_review())).await;
    assert_eq!(after.status, 200);
    assert_eq!(after.json()["response"]["uid"], UID);
    drop(child);
}

/// Over h2, a body announced over the limit is refused with 413, and the client reads the 413:
/// hyper's client, and curl (nghttp2), which reported a framing error when the stream was reset
/// under its upload.
#[tokio::test]
async fn h2_clients_read_the_413_of_a_body_over_the_limit() {
    const LIMIT: usize = 1024 * 1024;
    // Well over the limit, within twice the limit, which is drained.
    const BIG: usize = LIMIT * 3 / 2;
    let server = Running::start(|s| s.max_body_bytes = LIMIT).await;

    let (status, body) = post_announced(&server.client(Alpn::H2), Alpn::H2, BIG, BIG)
        .await
        .unwrap();
    assert_eq!(status, 413);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], 413, "{body}");

    let upload = server.dir.path().join("big.json");
    std::fs::write(&upload, vec![b' '; BIG]).unwrap();
    let answer = server.dir.path().join("answer.json");
    let port = server.addr.port();
    let curl = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--http2"])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg("--cacert")
        .arg(server.dir.path().join("tls.crt"))
        .args(["-H", "content-type: application/json"])
        .arg("--data-binary")
        .arg(format!("@{}", upload.display()))
        .arg("-o")
        .arg(&answer)
        .args(["-w", "%{http_version} %{http_code}"])
        .arg(format!("https://localhost:{port}/inject"))
        .output();
    let curl = bounded("curl", curl).await.unwrap();
    assert!(
        curl.status.success(),
        "curl failed ({:?}): {}",
        curl.status,
        String::from_utf8_lossy(&curl.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "2 413");
    let body: Value = serde_json::from_slice(&std::fs::read(&answer).unwrap()).unwrap();
    assert_eq!(body["code"], 413, "{body}");
}
