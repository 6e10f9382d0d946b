//! Serving one listener: the cap on open connections, and a bound in time on every phase of a
//! connection, from accept to the last byte, for the webhook (TLS) and admin (plain) ports.
//!
//! hyper bounds the head of an HTTP/1.1 request, but not the wait for the first bytes while the
//! protocol is detected, nor an HTTP/2 connection that never opens a stream, nor one that stays
//! open with no stream. So every connection is driven here with a watch on its requests: while
//! none is in flight, a deadline runs (the first request's, then the idle one), and when it
//! passes the connection is closed gracefully (GOAWAY on h2), then dropped if the client does
//! not let it finish.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Largest HTTP/1.1 read buffer per connection; a request head must fit in it. hyper's default
/// (about 400 KiB) would let each connection hold that much of a body it is reading.
pub const H1_MAX_BUF: usize = 64 * 1024;

/// HTTP/2 flow-control windows (stream and connection): the most body bytes a client can have
/// sent that the server has not read yet. The protocol's own default, instead of hyper's 1 MiB.
pub const H2_WINDOW: u32 = 64 * 1024;

/// Streams open at once on one HTTP/2 connection. Each holds its request head while its body
/// is read, so this times [`H2_MAX_HEADER_LIST`] is part of a connection's memory; a client
/// that wants more opens another connection (Go's HTTP/2 client, the API server's, does).
/// hyper's default is 200.
pub const H2_MAX_STREAMS: u32 = 16;

/// Largest request head on h2 (decoded). An AdmissionReview's head is well under 1 KiB.
pub const H2_MAX_HEADER_LIST: u32 = 8 * 1024;

/// HTTP/2: a PING is sent after this long without a frame from the client...
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// ...and the connection is closed if it is not answered in this time.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a connection may spend in each phase.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    /// From accept to the end of the TLS handshake (the webhook port).
    pub handshake: Duration,
    /// From the end of the handshake (or accept, on the admin port) to the head of the first
    /// request, over HTTP/1.1 or h2.
    pub first_request: Duration,
    /// With no request in flight, how long a connection stays open.
    pub idle: Duration,
    /// HTTP/1.1: from the end of a request to the complete head of the next one.
    pub header_read: Duration,
    /// Once a connection is being closed for idling, how long the client gets to let it close
    /// (read the GOAWAY, the rest of an answer) before it is dropped.
    pub closing: Duration,
}

impl Phases {
    /// The HTTP/1.1 and h2 settings that bound a connection's time and memory.
    pub fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read)
            .max_buf_size(H1_MAX_BUF);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .initial_stream_window_size(H2_WINDOW)
            .initial_connection_window_size(H2_WINDOW)
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_header_list_size(H2_MAX_HEADER_LIST);
        builder
    }
}

/// The cap on open connections of one listener.
///
/// At the cap, a new connection takes the slot of the open connection that has been idle
/// longest (no request in flight: between requests, before its first one, or still in its TLS
/// handshake), which is closed at once. So connections that send nothing cannot keep anyone
/// out, however many a client opens: to hold a slot, a connection must keep a request in
/// flight, and requests are bounded in time and by the body budget. An idle connection is what
/// the idle timeout would close anyway; the API server's HTTP client retries a request on an
/// idle connection the server closed.
///
/// When every connection has a request in flight, a new one is closed as soon as it is
/// accepted rather than left waiting in the listen backlog: a waiting client (the API server)
/// would only give up at its own webhook timeout, seconds later, while a refused one fails at
/// once and can try another replica. The limit is logged when it is first hit, not per
/// connection, so a flood does not flood the log.
pub struct ConnectionSlots {
    name: &'static str,
    slots: Arc<Semaphore>,
    max: u32,
    full: bool,
    open: Arc<Mutex<Open>>,
}

/// The open connections of one listener, for the cap to choose which one to close.
#[derive(Default)]
struct Open {
    next_id: u64,
    connections: HashMap<u64, Arc<OpenConnection>>,
}

struct OpenConnection {
    activity: watch::Receiver<Activity>,
    /// Taken by the connection that evicts this one.
    slot: Mutex<Option<OwnedSemaphorePermit>>,
    evicted: Notify,
}

/// Removes a connection from [`Open`] when its task ends, however it ends.
struct Registered {
    open: Arc<Mutex<Open>>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.open).connections.remove(&self.id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ConnectionSlots {
    pub fn new(name: &'static str, max: usize) -> ConnectionSlots {
        // u32: all slots are taken back at once when draining.
        let max = u32::try_from(max.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        ConnectionSlots {
            name,
            slots: Arc::new(Semaphore::new(max as usize)),
            max,
            full: false,
            open: Arc::default(),
        }
    }

    /// Records a new connection holding `slot`; its task holds the returned guard and watches
    /// the connection's `evicted`.
    fn register(
        &self,
        slot: OwnedSemaphorePermit,
        activity: watch::Receiver<Activity>,
    ) -> (Registered, Arc<OpenConnection>) {
        let connection = Arc::new(OpenConnection {
            activity,
            slot: Mutex::new(Some(slot)),
            evicted: Notify::new(),
        });
        let mut open = lock(&self.open);
        let id = open.next_id;
        open.next_id += 1;
        open.connections.insert(id, connection.clone());
        let registered = Registered {
            open: self.open.clone(),
            id,
        };
        (registered, connection)
    }

    /// The slot of the connection idle the longest, which is told to close; `None` when every
    /// open connection has a request in flight.
    fn evict_idlest(&self) -> Option<OwnedSemaphorePermit> {
        let mut open = lock(&self.open);
        loop {
            let (&id, _) = open
                .connections
                .iter()
                .filter(|(_, c)| c.activity.borrow().in_flight == 0)
                .min_by_key(|(_, c)| c.activity.borrow().idle_since)?;
            let victim = open.connections.remove(&id)?;
            if let Some(slot) = lock(&victim.slot).take() {
                // `notify_one` keeps the wake-up for a task that is not waiting yet.
                victim.evicted.notify_one();
                return Some(slot);
            }
        }
    }

    /// A slot for a new connection, held until the connection ends; `None` at the cap.
    fn take(&mut self, peer: SocketAddr) -> Option<OwnedSemaphorePermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => {
                if std::mem::take(&mut self.full) {
                    info!(
                        listener = self.name,
                        max = self.max,
                        "below the connection limit again"
                    );
                }
                Some(slot)
            }
            Err(_) => {
                if let Some(slot) = self.evict_idlest() {
                    debug!(listener = self.name, %peer, "at the connection limit: closed the connection idle the longest");
                    return Some(slot);
                }
                if !std::mem::replace(&mut self.full, true) {
                    warn!(
                        listener = self.name,
                        max = self.max,
                        "connection limit reached with a request in flight on every connection: new connections are closed until one ends"
                    );
                }
                debug!(listener = self.name, %peer, "connection closed: at the connection limit, none idle");
                None
            }
        }
    }

    /// Resolves once every connection has ended.
    async fn drained(&self) {
        let _ = self.slots.acquire_many(self.max).await;
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One listener and how its connections are served.
pub struct Listener {
    pub tcp: TcpListener,
    pub slots: ConnectionSlots,
    pub phases: Phases,
    /// After the listener closes: how long open connections get to finish.
    pub drain: Duration,
}

impl Listener {
    /// Serves `router` until `stop_accepting` resolves, then closes the listener, asks every
    /// connection to close gracefully and waits up to the drain time for them. `handshake`
    /// turns an accepted socket into the stream HTTP runs on (TLS, or the socket itself).
    pub async fn serve<H, F, IO>(
        self,
        router: axum::Router,
        handshake: H,
        stop_accepting: impl Future<Output = ()>,
    ) where
        H: Fn(TcpStream) -> F,
        F: Future<Output = Result<IO, BoxError>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Listener {
            tcp,
            mut slots,
            phases,
            drain,
        } = self;
        let name = slots.name;
        let builder = phases.builder();
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::pin!(stop_accepting);
        loop {
            tokio::select! {
                () = &mut stop_accepting => break,
                accepted = tcp.accept() => match accepted {
                    Ok((socket, peer)) => {
                        let Some(slot) = slots.take(peer) else {
                            drop(socket);
                            continue;
                        };
                        let (activity, watched) = watch::channel(Activity::new());
                        let (registered, connection) = slots.register(slot, watched);
                        let handshake = handshake(socket);
                        let builder = builder.clone();
                        let router = router.clone();
                        let stop = stop_rx.clone();
                        tokio::spawn(async move {
                            let served = async {
                                let io = handshake.await?;
                                serve_connection(io, builder, router, &phases, stop, activity).await
                            };
                            tokio::select! {
                                result = served => if let Err(err) = result {
                                    debug!(listener = name, %peer, error = %err, "connection ended with an error");
                                },
                                () = connection.evicted.notified() => {
                                    debug!(listener = name, %peer, "idle connection closed to make room for a new one");
                                }
                            }
                            drop(registered);
                        });
                    }
                    // Out of file descriptors and the like: back off instead of spinning.
                    Err(err) => {
                        warn!(listener = name, error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(tcp);
        info!(listener = name, timeout = ?drain, "listener closed, draining connections");
        let _ = stop_tx.send(true);
        match tokio::time::timeout(drain, slots.drained()).await {
            Ok(()) => info!(listener = name, "all connections closed"),
            Err(_) => warn!(
                listener = name,
                "connections still open after the drain timeout; closing them"
            ),
        }
    }
}

/// The TLS handshake, bounded in time.
pub fn tls_handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    timeout: Duration,
) -> impl Fn(TcpStream) -> Pin<Box<dyn Future<Output = Result<TlsStream, BoxError>> + Send>> {
    move |tcp| {
        let acceptor = acceptor.clone();
        Box::pin(async move {
            // Without it, an answer written right after another small write (an h2
            // WINDOW_UPDATE for a large body) waits for the client's delayed ACK: 40 ms per
            // review. Failing to set it only costs latency, so the connection goes on.
            let _ = tcp.set_nodelay(true);
            match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Ok(tls),
                Ok(Err(err)) => Err(format!("TLS handshake failed: {err}").into()),
                Err(_) => Err("TLS handshake timed out".into()),
            }
        })
    }
}

pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// HTTP/1.1 or h2 on one connection, closed at the first deadline that passes (see the module
/// documentation) or when `stop` turns true.
async fn serve_connection<IO>(
    io: IO,
    builder: auto::Builder<TokioExecutor>,
    router: axum::Router,
    phases: &Phases,
    mut stop: watch::Receiver<bool>,
    activity: watch::Sender<Activity>,
) -> Result<(), BoxError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The first request's time runs from the end of the handshake.
    activity.send_modify(|a| a.idle_since = Instant::now());
    let mut watched = activity.subscribe();
    let service = Tracked {
        inner: TowerToHyperService::new(router),
        activity,
    };
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    tokio::pin!(conn);

    let mut stopping = false;
    // Set once a close has begun for idling: the time the client has to let it finish.
    let mut closing: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let now = *watched.borrow_and_update();
        let deadline = (closing.is_none() && !stopping && now.in_flight == 0).then(|| {
            now.idle_since
                + if now.requests == 0 {
                    phases.first_request
                } else {
                    phases.idle
                }
        });
        tokio::select! {
            result = conn.as_mut() => return result,
            changed = watched.changed() => {
                if changed.is_err() {
                    // The service is gone only with the connection, which then ends.
                    return conn.as_mut().await;
                }
            }
            () = stopped(&mut stop), if !stopping => {
                // Shutdown (or the listener gone): close gracefully; the drain bounds the rest.
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            () = sleep_until(deadline) => {
                let what = if now.requests == 0 { "no first request" } else { "idle" };
                debug!(after = ?(deadline.map(|d| d - now.idle_since)), "{what}: closing the connection");
                conn.as_mut().graceful_shutdown();
                closing = Some(Box::pin(tokio::time::sleep(phases.closing)));
            }
            () = expired(&mut closing) => {
                return Err("the client did not let the connection close".into());
            }
        }
    }
}

/// Resolves once `stop` turns true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn expired(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What the deadlines and the cap need to know of a connection's requests.
#[derive(Debug, Clone, Copy)]
struct Activity {
    /// Requests whose answer is not ready yet.
    in_flight: usize,
    /// Requests seen so far.
    requests: u64,
    /// When the last request in flight ended (or the connection began).
    idle_since: Instant,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: 0,
            requests: 0,
            idle_since: Instant::now(),
        }
    }
}

/// The service of one connection, counting its requests in flight.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: watch::Sender<Activity>,
}

/// Ends a request's time in flight when its answer is ready or it is dropped.
struct InFlight(watch::Sender<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|a| {
            a.in_flight -= 1;
            if a.in_flight == 0 {
                a.idle_since = Instant::now();
            }
        });
    }
}

impl<S> hyper::service::Service<hyper::Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<hyper::Request<Incoming>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.activity.send_modify(|a| {
            a.in_flight += 1;
            a.requests += 1;
        });
        let guard = InFlight(self.activity.clone());
        let answer = self.inner.call(req);
        Box::pin(async move {
            let answered = answer.await;
            drop(guard);
            answered
        })
    }
}
