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

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

use crate::cluster::{self, Version};
use crate::config::{Config, ConfigError, NativeMode};
use crate::metrics::Metrics;

pub mod admin;
pub mod body;
pub mod connections;
pub mod engine_pool;
pub mod memory;
pub mod reload;
pub mod self_signed;
pub mod shutdown;
pub mod state;
pub mod tls;
pub mod webhook;

pub use engine_pool::EngineLimits;
pub use state::{Limits, Shared};
pub use tls::{CertFiles, CertSource, TlsError};

use connections::{ConnectionSlots, Listener, Phases};
use reload::{ConfigDir, ConfigReload};
use tls::CertResolver;

/// Istio's limit on an AdmissionReview body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

/// Open webhook connections at most: far above what API servers open (a few per API server
/// replica), and low enough that their buffers fit the memory budget (docs/server.md).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// Open admin connections at most: probes and metrics scrapes need a handful.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 32;

/// Body bytes held at once across all requests: one body of the largest size next to ordinary
/// reviews (tens of KiB each), or hundreds of those. Kept small as the engine's working memory
/// grows with it (see `memory`).
pub const DEFAULT_BODY_BUDGET_BYTES: usize = 8 * 1024 * 1024;

/// A connection with no request in flight is closed after this long: above the 90 s after
/// which Go's HTTP client (the API server's) closes an idle connection itself, so the API
/// server's keep-alive connections are not churned.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// hyper closes an HTTP/1 connection whose next request head does not arrive in this time, idle
/// keep-alive connections included; the same as the idle timeout, which it backs up.
pub const HEADER_READ_TIMEOUT: Duration = DEFAULT_IDLE_TIMEOUT;

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
    /// Open admin connections at most, likewise.
    pub admin_max_connections: usize,
    /// Body bytes held at once across all webhook requests; a body that does not fit gets 503.
    pub body_budget_bytes: usize,
    /// Longest time to receive a request body.
    pub read_timeout: Duration,
    /// Longest time for a client to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Longest time from the handshake (from accept, on the admin port) to the first request.
    pub first_request_timeout: Duration,
    /// How long a connection with no request in flight is kept (HTTP/1.1 keep-alive, h2).
    pub idle_timeout: Duration,
    /// Longest time for the head of a request on an HTTP/1.1 connection, counted from the end
    /// of the previous request. Not a flag; tests shorten it.
    pub header_read_timeout: Duration,
    /// Once an idle connection is being closed, how long the client gets to let it close
    /// before it is dropped. Not a flag; tests shorten it.
    pub closing_timeout: Duration,
    /// After a shutdown signal: how long to keep serving while reported not ready, so the
    /// endpoint leaves the Service before the listener closes.
    pub shutdown_grace: Duration,
    /// Then: how long open connections get to finish their requests.
    pub drain_timeout: Duration,
    /// The engine's threads, queue and per-review deadline (see `engine_pool`).
    pub engine: EngineLimits,
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
            admin_max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
            body_budget_bytes: DEFAULT_BODY_BUDGET_BYTES,
            read_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            header_read_timeout: HEADER_READ_TIMEOUT,
            closing_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(20),
            engine: EngineLimits::default(),
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
            body_budget_bytes: settings.body_budget_bytes,
        };
        let mut shared = Shared::new(config, certs, limits, settings.native_sidecars);
        shared.engine = engine_pool::EnginePool::new(settings.engine);
        let shared = Arc::new(shared);
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
        let phases = Phases {
            handshake: settings.handshake_timeout,
            first_request: settings.first_request_timeout,
            idle: settings.idle_timeout,
            header_read: settings.header_read_timeout,
            closing: settings.closing_timeout,
        };
        if let Some(tcp) = admin {
            let listener = Listener {
                tcp,
                slots: ConnectionSlots::new("admin", settings.admin_max_connections),
                phases,
                drain: settings.drain_timeout,
            };
            let router = admin::router(shared.clone());
            let stopped = stopped(stop_rx.clone());
            background.spawn(async move {
                let plain = |tcp| async move { Ok(tcp) };
                listener.serve(router, plain, stopped).await;
            });
        }

        let grace = settings.shutdown_grace;
        let flag = shared.clone();
        let stop_accepting = async move {
            shutdown.await;
            flag.set_ready(false);
            info!(grace = ?grace, "shutdown requested: not ready, still serving");
            tokio::time::sleep(grace).await;
        };

        shared.set_ready(true);
        // The engine runs on the runtime's worker threads, one per core.
        let engines = settings.engine.workers;
        info!(
            addr = %webhook.local_addr().unwrap_or(settings.listen),
            memory_bound_mib = memory::worst_case(&settings, engines) / (1024 * 1024),
            "serving"
        );
        let listener = Listener {
            tcp: webhook,
            slots: ConnectionSlots::new("webhook", settings.max_connections),
            phases,
            drain: settings.drain_timeout,
        };
        let handshake = connections::tls_handshake(acceptor, settings.handshake_timeout);
        listener
            .serve(webhook::router(shared.clone()), handshake, stop_accepting)
            .await;
        let _ = stop_tx.send(true);
        while background.join_next().await.is_some() {}
    }
}

async fn listen(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
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
