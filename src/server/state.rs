//! What every handler shares: the config snapshot, certificates, metrics, readiness and limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tracing::{error, info};

use super::body::BodyBudget;
use super::engine_pool::{EngineLimits, EnginePool};
use super::tls::{CertResolver, Reload, TlsError};
use crate::cluster::Kubelets;
use crate::config::{Config, NativeMode};
use crate::metrics::Metrics;
use crate::replicas::ReplicaMemo;

/// Limits applied to each webhook request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted body; larger ones get HTTP 413.
    pub max_body_bytes: usize,
    /// Longest time to receive a whole body; a slower client gets HTTP 408.
    pub read_timeout: Duration,
    /// Body bytes held at once across all requests; a body that does not fit gets HTTP 503.
    pub body_budget_bytes: usize,
}

/// State shared by the webhook and admin routers and the background reloaders.
#[derive(Debug)]
pub struct Shared {
    /// The validated config in force; one `load_full()` per review gives it one snapshot.
    pub config: ArcSwap<Config>,
    /// The serving certificate, for handshakes and readiness.
    pub certs: Arc<CertResolver>,
    pub metrics: Metrics,
    /// True while the server accepts reviews; false before start and once shutdown begins, so
    /// the endpoint leaves the Service before connections are closed.
    serving: AtomicBool,
    /// The operator's native-sidecar mode, over the config's.
    pub native_override: Option<NativeMode>,
    /// What `auto` resolves to, from the cluster's kubelet versions; until the node watch
    /// reports (or without cluster access) no node is known, which means off.
    kubelets: ArcSwap<Kubelets>,
    pub limits: Limits,
    /// Answers replayed for the replicas of a workload (see `replicas`).
    pub replicas: ReplicaMemo,
    /// The bytes of the bodies being read or held, across all requests.
    pub bodies: BodyBudget,
    /// Where reviews the memo cannot answer are worked out.
    pub engine: EnginePool,
}

impl Shared {
    pub fn new(
        config: Config,
        certs: Arc<CertResolver>,
        limits: Limits,
        native_override: Option<NativeMode>,
    ) -> Shared {
        let metrics = Metrics::new();
        if let Some(not_after) = certs.not_after() {
            metrics.set_cert_not_after(not_after);
        }
        Shared {
            replicas: ReplicaMemo::new(metrics.replayed.clone()),
            config: ArcSwap::from_pointee(config),
            certs,
            metrics,
            serving: AtomicBool::new(false),
            native_override,
            kubelets: ArcSwap::from_pointee(Kubelets::default()),
            bodies: BodyBudget::new(limits.body_budget_bytes),
            limits,
            engine: EnginePool::new(EngineLimits::default()),
        }
    }

    /// Ready: serving, not shutting down, and a certificate to serve (self-managed
    /// certificates arrive after start). The config is loaded before the server exists.
    pub fn is_ready(&self) -> bool {
        self.serving.load(Ordering::Acquire) && self.certs.has_cert()
    }

    pub fn set_ready(&self, ready: bool) {
        self.serving.store(ready, Ordering::Release);
    }

    /// The mode in force with `config`: the operator's, else the config's.
    pub fn native_mode(&self, config: &Config) -> NativeMode {
        self.native_override.unwrap_or_else(|| config.native_mode())
    }

    /// Whether the proxy goes in as a native sidecar with `config`, for a pod bound to `node`
    /// (`spec.nodeName`) or not bound yet.
    pub fn native_sidecars(&self, config: &Config, node: Option<&str>) -> bool {
        match self.native_mode(config) {
            NativeMode::Enabled => true,
            NativeMode::Disabled => false,
            NativeMode::Auto => self.kubelets.load().allow(node),
        }
    }

    /// Takes a new decision of the node watch.
    pub fn set_kubelets(&self, kubelets: Kubelets) {
        let every_node = kubelets.allow(None);
        let count = i64::try_from(kubelets.len()).unwrap_or(i64::MAX);
        self.metrics.nodes_watched.set(count);
        let previous = self.kubelets.swap(Arc::new(kubelets));
        if previous.allow(None) != every_node {
            info!(
                native_sidecars = every_node,
                "native sidecars `auto` changed with the cluster's kubelet versions"
            );
        }
        self.metrics.native_auto.set(i64::from(every_node));
    }

    /// Serves a new certificate pair (self-managed certificates); a pair that does not parse is
    /// logged and counted, and the one in use stays.
    pub fn install_cert(&self, cert_pem: &str, key_pem: &str, origin: &str) {
        let result = self.certs.install(cert_pem, key_pem, origin);
        self.cert_reloaded(result);
    }

    /// Logs and counts the result of a certificate reload or install.
    pub fn cert_reloaded(&self, result: Result<Reload, TlsError>) {
        match result {
            Ok(Reload::Unchanged) => {}
            Ok(Reload::Swapped) => {
                info!("serving certificate loaded");
                Metrics::reload(&self.metrics.cert_reloads, true);
                if let Some(not_after) = self.certs.not_after() {
                    self.metrics.set_cert_not_after(not_after);
                }
            }
            Err(err) => {
                error!(error = %err, "serving certificate not loaded; the previous one (if any) stays in use");
                Metrics::reload(&self.metrics.cert_reloads, false);
            }
        }
    }
}
