//! The HTTPS admission webhook server: TLS listener, webhook and admin routers, hot reload of
//! certificate and config, graceful shutdown.
//!
//! [`Server::bind`] does everything that can fail on a bad setup (certificate, config, ports)
//! before anything is served; [`Server::run`] then serves until its shutdown future resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use crate::cluster::{self, Version};
use crate::config::{Config, ConfigError, NativeMode};
use crate::metrics::Metrics;

pub mod admin;
pub mod reload;
pub mod self_signed;
pub mod shutdown;
pub mod state;
pub mod tls;
pub mod webhook;

pub use state::{Limits, Shared};
pub use tls::{CertFiles, CertSource, TlsError};

use reload::{ConfigDir, ConfigReload};
use tls::CertResolver;

/// Istio's limit on an AdmissionReview body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

/// Open webhook connections at most: far above what API servers open (a few per API server
/// replica), far below the file descriptors a container usually gets.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// hyper closes an HTTP/1 connection whose next request head does not arrive in this time, idle
/// keep-alive connections included; long enough not to churn the API server's connections.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything `serve` can be told.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The HTTPS webhook address.
    pub listen: SocketAddr,
    /// The plain-HTTP admin address (`/healthz`, `/readyz`, `/metrics`); `None` disables it.
    pub admin_listen: Option<SocketAddr>,
    pub tls: CertSource,
    /// A mounted ConfigMap directory; `None` runs on the embedded default config.
    pub config_dir: Option<PathBuf>,
    /// Native-sidecar mode for every config; `None` leaves it to the config's values.
    pub native_sidecars: Option<NativeMode>,
    /// The lowest kubelet version that lets `auto` turn native sidecars on.
    pub native_min_kubelet: Version,
    /// Watch the cluster's Nodes when native sidecars are `auto` (off in tests that set the
    /// kubelet versions themselves).
    pub watch_nodes: bool,
    /// How often the certificate and config files are checked for changes.
    pub reload_interval: Duration,
    pub max_body_bytes: usize,
    /// Open webhook connections at most; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Longest time to receive a request body.
    pub read_timeout: Duration,
    /// Longest time for a client to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Longest time for the head of a request on an HTTP/1.1 connection (also how long an idle
    /// keep-alive connection is kept). Not a flag; tests shorten it.
    pub header_read_timeout: Duration,
    /// After a shutdown signal: how long to keep serving while reported not ready, so the
    /// endpoint leaves the Service before the listener closes.
    pub shutdown_grace: Duration,
    /// Then: how long open connections get to finish their requests.
    pub drain_timeout: Duration,
}

impl Settings {
    /// Settings with the defaults of the `serve` command.
    pub fn new(listen: SocketAddr, tls: impl Into<CertSource>) -> Settings {
        Settings {
            listen,
            admin_listen: None,
            tls: tls.into(),
            config_dir: None,
            native_sidecars: None,
            native_min_kubelet: cluster::DEFAULT_MIN_KUBELET,
            watch_nodes: true,
            reload_interval: Duration::from_secs(5),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            read_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: HEADER_READ_TIMEOUT,
            shutdown_grace: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(20),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("serving certificate: {0}")]
    Tls(#[from] TlsError),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("injection config: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A server whose ports are bound and whose certificate and config are loaded.
pub struct Server {
    settings: Settings,
    webhook: TcpListener,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
    config_dir: Option<ConfigDir>,
    acceptor: TlsAcceptor,
}

impl Server {
    /// Loads the certificate and the config and binds the ports; fails on any of them.
    pub async fn bind(settings: Settings) -> Result<Server, ServerError> {
        let certs = Arc::new(CertResolver::load(settings.tls.clone())?);
        let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(certs.clone())?));
        let (config_dir, config) = match &settings.config_dir {
            Some(dir) => {
                let (watch, config) = ConfigDir::load(dir)?;
                (Some(watch), config)
            }
            None => (None, Config::embedded()),
        };
        let limits = Limits {
            max_body_bytes: settings.max_body_bytes,
            read_timeout: settings.read_timeout,
        };
        let shared = Arc::new(Shared::new(config, certs, limits, settings.native_sidecars));
        let webhook = listen(settings.listen).await?;
        let admin = match settings.admin_listen {
            Some(addr) => Some(listen(addr).await?),
            None => None,
        };
        Ok(Server {
            settings,
            webhook,
            admin,
            shared,
            config_dir,
            acceptor,
        })
    }

    /// The bound webhook address (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.webhook.local_addr().unwrap_or(self.settings.listen)
    }

    /// The bound admin address, when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The state shared with the handlers (config snapshot, metrics, readiness).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until `shutdown` resolves, then: reports not ready, keeps serving for the grace
    /// period, stops accepting, and waits up to the drain timeout for open connections.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let Server {
            settings,
            webhook,
            admin,
            shared,
            config_dir,
            acceptor,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);

        let mut background = tokio::task::JoinSet::new();
        background.spawn(poll_certs(
            shared.clone(),
            settings.reload_interval,
            stop_rx.clone(),
        ));
        let auto_now = shared.native_mode(&shared.config.load()) == NativeMode::Auto;
        let (want_nodes, wanted) = watch::channel(auto_now);
        if settings.watch_nodes {
            background.spawn(watch_nodes(
                shared.clone(),
                settings.native_min_kubelet,
                wanted,
                stop_rx.clone(),
            ));
        }
        if let Some(dir) = config_dir {
            background.spawn(poll_config(
                dir,
                shared.clone(),
                want_nodes,
                settings.reload_interval,
                stop_rx.clone(),
            ));
        }
        if let Some(listener) = admin {
            let router = admin::router(shared.clone());
            let stopped = stopped(stop_rx.clone());
            background.spawn(async move {
                if let Err(err) = axum::serve(listener, router)
                    .with_graceful_shutdown(stopped)
                    .await
                {
                    error!(error = %err, "admin listener failed");
                }
            });
        }

        let service = TowerToHyperService::new(webhook::router(shared.clone()));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout);
        let graceful = GracefulShutdown::new();

        let grace = settings.shutdown_grace;
        let flag = shared.clone();
        let stop_accepting = async move {
            shutdown.await;
            flag.set_ready(false);
            info!(grace = ?grace, "shutdown requested: not ready, still serving");
            tokio::time::sleep(grace).await;
        };
        tokio::pin!(stop_accepting);

        let mut slots = ConnectionSlots::new(settings.max_connections);
        shared.set_ready(true);
        info!(addr = %webhook.local_addr().unwrap_or(settings.listen), "serving");
        loop {
            tokio::select! {
                () = &mut stop_accepting => break,
                accepted = webhook.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let Some(slot) = slots.take(peer) else {
                            drop(tcp);
                            continue;
                        };
                        let conn = serve_connection(
                            tcp,
                            acceptor.clone(),
                            builder.clone(),
                            service.clone(),
                            settings.handshake_timeout,
                        );
                        let watcher = graceful.watcher();
                        tokio::spawn(async move {
                            if let Err(err) = conn(watcher).await {
                                debug!(%peer, error = %err, "connection ended with an error");
                            }
                            drop(slot);
                        });
                    }
                    // Out of file descriptors and the like: back off instead of spinning.
                    Err(err) => {
                        warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(webhook);
        info!(timeout = ?settings.drain_timeout, "listener closed, draining connections");
        match tokio::time::timeout(settings.drain_timeout, graceful.shutdown()).await {
            Ok(()) => info!("all connections closed"),
            Err(_) => warn!("connections still open after the drain timeout; closing them"),
        }
        let _ = stop_tx.send(true);
        while background.join_next().await.is_some() {}
    }
}

/// The cap on open webhook connections.
///
/// A connection over the cap is closed as soon as it is accepted rather than left waiting in
/// the listen backlog: a waiting client (the API server) would only give up at its own webhook
/// timeout, seconds later, while a refused one fails at once and can try another replica. The
/// limit is logged when it is first hit, not per connection, so a flood does not flood the log.
struct ConnectionSlots {
    slots: Arc<Semaphore>,
    max: usize,
    full: bool,
}

impl ConnectionSlots {
    fn new(max: usize) -> ConnectionSlots {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        ConnectionSlots {
            slots: Arc::new(Semaphore::new(max)),
            max,
            full: false,
        }
    }

    /// A slot for a new connection, held until the connection ends; `None` at the cap.
    fn take(&mut self, peer: SocketAddr) -> Option<OwnedSemaphorePermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => {
                if std::mem::take(&mut self.full) {
                    info!(max = self.max, "below the connection limit again");
                }
                Some(slot)
            }
            Err(_) => {
                if !std::mem::replace(&mut self.full, true) {
                    warn!(
                        max = self.max,
                        "connection limit reached: new connections are closed until one ends"
                    );
                }
                debug!(%peer, "connection closed: at the connection limit");
                None
            }
        }
    }
}

async fn listen(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

type HyperService = TowerToHyperService<axum::Router>;
type ConnResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The work for one accepted connection: handshake (bounded in time), then HTTP/1.1 or h2 as
/// negotiated, watched so shutdown can close it gracefully.
fn serve_connection(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    builder: auto::Builder<TokioExecutor>,
    service: HyperService,
    handshake_timeout: Duration,
) -> impl FnOnce(
    hyper_util::server::graceful::Watcher,
) -> std::pin::Pin<Box<dyn Future<Output = ConnResult> + Send>> {
    move |watcher| {
        Box::pin(async move {
            // Without it, an answer written right after another small write (an h2
            // WINDOW_UPDATE for a large body) waits for the client's delayed ACK: 40 ms per
            // review. Failing to set it only costs latency, so the connection goes on.
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => return Err(format!("TLS handshake failed: {err}").into()),
                Err(_) => return Err("TLS handshake timed out".into()),
            };
            let conn = builder
                .serve_connection(TokioIo::new(tls), service)
                .into_owned();
            watcher.watch(conn).await
        })
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Runs `tick` every `interval` until stopped.
async fn every(interval: Duration, stop: watch::Receiver<bool>, mut tick: impl FnMut()) {
    let mut timer = tokio::time::interval(interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer.tick().await;
    let stopped = stopped(stop);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => return,
            _ = timer.tick() => tick(),
        }
    }
}

async fn poll_certs(shared: Arc<Shared>, interval: Duration, stop: watch::Receiver<bool>) {
    every(interval, stop, || {
        shared.cert_reloaded(shared.certs.reload())
    })
    .await
}

async fn poll_config(
    dir: ConfigDir,
    shared: Arc<Shared>,
    want_nodes: watch::Sender<bool>,
    interval: Duration,
    stop: watch::Receiver<bool>,
) {
    every(interval, stop, || match dir.reload() {
        Ok(ConfigReload::Unchanged) => {}
        Ok(ConfigReload::Changed(config)) => {
            // A config that turns `auto` on starts the node watch; it is never stopped again,
            // as the next config may want it back.
            if shared.native_mode(&config) == NativeMode::Auto {
                want_nodes.send_if_modified(|wanted| !std::mem::replace(wanted, true));
            }
            shared.config.store(config);
            info!(dir = %dir.path().display(), "injection config reloaded");
            Metrics::reload(&shared.metrics.config_reloads, true);
        }
        Err(err) => {
            error!(error = %err, "injection config rejected; the previous one stays in force");
            Metrics::reload(&shared.metrics.config_reloads, false);
        }
    })
    .await
}

/// Feeds native sidecars `auto` with the cluster's kubelet versions, from the first moment
/// `auto` is in force until shutdown. Without cluster access `auto` stays off; that is said
/// once, as it will not change while the process runs.
async fn watch_nodes(
    shared: Arc<Shared>,
    min: Version,
    mut wanted: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
) {
    let stopped = stopped(stop);
    tokio::pin!(stopped);
    tokio::select! {
        () = &mut stopped => return,
        result = wanted.wait_for(|wanted| *wanted) => if result.is_err() {
            // The config is never reloaded, and it does not ask for `auto`.
            return;
        },
    }
    let client = match cluster::client().await {
        Ok(client) => client,
        Err(err) => {
            warn!(
                error = %err,
                "native sidecars are `auto` but the cluster's kubelet versions cannot be read; \
                 injecting classic sidecars"
            );
            return;
        }
    };
    info!(min_kubelet = %min, "native sidecars are `auto`: watching the cluster's nodes");
    let watch = cluster::nodes::watch(client, min, |kubelets| shared.set_kubelets(kubelets));
    tokio::select! {
        () = &mut stopped => {}
        () = watch => {}
    }
}
