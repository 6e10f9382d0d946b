//! What every handler shares: the config snapshot, metrics, readiness and limits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{Config, NativeMode};
use crate::metrics::Metrics;

/// Limits applied to each webhook request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted body; larger ones get HTTP 413.
    pub max_body_bytes: usize,
    /// Longest time to receive a whole body; a slower client gets HTTP 408.
    pub read_timeout: Duration,
}

/// State shared by the webhook and admin routers and the background reloaders.
#[derive(Debug)]
pub struct Shared {
    /// The validated config in force; one `load_full()` per review gives it one snapshot.
    pub config: ArcSwap<Config>,
    pub metrics: Metrics,
    /// True while the server accepts reviews; false before start and once shutdown begins, so
    /// the endpoint leaves the Service before connections are closed.
    pub ready: AtomicBool,
    /// The operator's native-sidecar mode, over the config's.
    pub native_override: Option<NativeMode>,
    /// What `auto` resolves to. Deciding it needs the cluster's kubelet versions; without them
    /// it stays off, like istiod without node access.
    pub native_auto: AtomicBool,
    pub limits: Limits,
}

impl Shared {
    pub fn new(config: Config, limits: Limits, native_override: Option<NativeMode>) -> Shared {
        Shared {
            config: ArcSwap::from_pointee(config),
            metrics: Metrics::new(),
            ready: AtomicBool::new(false),
            native_override,
            native_auto: AtomicBool::new(false),
            limits,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// The mode in force with `config`: the operator's, else the config's.
    pub fn native_mode(&self, config: &Config) -> NativeMode {
        self.native_override.unwrap_or_else(|| config.native_mode())
    }

    /// Whether the proxy goes in as a native sidecar with `config`.
    pub fn native_sidecars(&self, config: &Config) -> bool {
        match self.native_mode(config) {
            NativeMode::Enabled => true,
            NativeMode::Disabled => false,
            NativeMode::Auto => self.native_auto.load(Ordering::Relaxed),
        }
    }
}
