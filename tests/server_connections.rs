//! Connections are bounded: idle connections of every kind are closed and free their slot, and
//! the admin port is capped too.

mod tls_client;

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use sidecar_injector::server::Settings;
use tls_client::{Alpn, Client, Running, UID, app_pod, review};
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
    let (status, conn) = match alpn {
        Alpn::Http1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            let conn = tokio::spawn(async move {
                let _ = conn.await;
            });
            let resp = sender.send_request(req.body(body).unwrap()).await.unwrap();
            let status = resp.status();
            resp.into_body().collect().await.unwrap();
            // The sender stays alive (moved into the task) so hyper keeps the connection.
            tokio::spawn(async move {
                let _keep = sender;
                std::future::pending::<()>().await;
            });
            (status, conn)
        }
        Alpn::H2 => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            let conn = tokio::spawn(async move {
                let _ = conn.await;
            });
            let resp = sender.send_request(req.body(body).unwrap()).await.unwrap();
            let status = resp.status();
            resp.into_body().collect().await.unwrap();
            tokio::spawn(async move {
                let _keep = sender;
                std::future::pending::<()>().await;
            });
            (status, conn)
        }
    };
    assert_eq!(status, 200);
    conn
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

#[tokio::test]
async fn the_admin_port_is_capped() {
    let server = Running::start(|s| s.admin_max_connections = 2).await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(TcpStream::connect(server.admin).await.unwrap());
    }
    // Accepted and closed at once, while the two idle ones (10 s to their first request) stay.
    let mut over = TcpStream::connect(server.admin).await.unwrap();
    closed_by_server("an admin connection over the limit", &mut over).await;
    for open in &idle {
        let mut probe = [0u8; 1];
        assert!(
            matches!(open.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "an idle admin connection under the limit was closed"
        );
    }
    drop(idle.pop());
    let status = tls_client::eventually("a free admin slot", || try_healthz(server.admin)).await;
    assert_eq!(status, 200);
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
