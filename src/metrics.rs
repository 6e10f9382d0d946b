//! The Prometheus registry and the metric families of the server.
//!
//! The injection families keep istiod's names (`sidecar_injection_*`), so dashboards and alerts
//! written for Istio's injector work unchanged. Every request to the webhook is counted once in
//! `requests_total` and once in exactly one of `success_total`, `reinjected_total`, `skip_total`
//! or `failure_total`.
//!
//! Labels are low-cardinality by construction: reasons and finding ids are fixed `&'static str`
//! names (see `SkipReason::label`), never namespaces, pod names or messages.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Why a pod was admitted unchanged, or why a request failed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// One guardrail finding reported as an admission warning.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    /// The finding id from `analyze::CATALOGUE`.
    pub finding: &'static str,
}

/// What re-injecting a pod that already carried an injection did.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReinjectionLabels {
    /// `unchanged` (no patch) or `updated`.
    pub result: &'static str,
}

/// The result of one reload attempt.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `success` or `failure`.
    pub result: &'static str,
}

/// Latency buckets in seconds. Injection itself takes tens to hundreds of microseconds, so the
/// low buckets are fine-grained; the upper ones catch huge pods and a starved CPU, up to the API
/// server's default webhook timeout of 10 s.
const TIME_BUCKETS: [f64; 18] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 7.5, 10.0,
];

/// Every metric the server exports, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Counter,
    pub success: Counter,
    /// Injected pods answered with an earlier replica's answer (see `replicas`).
    pub replayed: Counter,
    /// Reviews of pods that already carried an injection, by result.
    pub reinjected: Family<ReinjectionLabels, Counter>,
    pub skip: Family<ReasonLabels, Counter>,
    pub failure: Family<ReasonLabels, Counter>,
    pub time_seconds: Histogram,
    pub warnings: Family<FindingLabels, Counter>,
    pub config_reloads: Family<ReloadLabels, Counter>,
    pub cert_reloads: Family<ReloadLabels, Counter>,
    /// 1 while native sidecars are `auto` and the cluster's kubelets allow them, else 0.
    pub native_auto: Gauge,
    /// Nodes whose kubelet version the node watch knows.
    pub nodes_watched: Gauge,
    cert_expiry: std::sync::Arc<CertExpiry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Counter::default();
        registry.register(
            "sidecar_injection_requests",
            "Requests to the injection webhook",
            requests.clone(),
        );
        let success = Counter::default();
        registry.register(
            "sidecar_injection_success",
            "Pods injected (answered with a patch)",
            success.clone(),
        );
        let replayed = Counter::default();
        registry.register(
            "sidecar_injection_replayed",
            "Pods injected with the answer to an earlier replica of their workload, renamed",
            replayed.clone(),
        );
        let reinjected = Family::<ReinjectionLabels, Counter>::default();
        registry.register(
            "sidecar_injection_reinjected",
            "Reviews of pods that already carry an injection (the API server's reinvocation after \
             later admission changes, or a pod created from an injected manifest), by result: \
             unchanged (no patch) or updated",
            reinjected.clone(),
        );
        let skip = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "sidecar_injection_skip",
            "Pods admitted without injection, by reason",
            skip.clone(),
        );
        let failure = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "sidecar_injection_failure",
            "Requests not answered with an injection or a skip: denials (invalid injection \
             annotations), malformed or refused requests, and internal errors, by reason",
            failure.clone(),
        );
        let time_seconds = Histogram::new(TIME_BUCKETS);
        registry.register(
            "sidecar_injection_time_seconds",
            "Time from a request's arrival to its answer, body read included",
            time_seconds.clone(),
        );
        let warnings = Family::<FindingLabels, Counter>::default();
        registry.register(
            "sidecar_injection_warnings",
            "Guardrail findings returned as admission warnings, by finding id",
            warnings.clone(),
        );
        let config_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "sidecar_injection_config_reloads",
            "Attempts to load a changed injection config; a failure keeps the last good one",
            config_reloads.clone(),
        );
        let cert_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "sidecar_injection_cert_reloads",
            "Attempts to load a changed serving certificate; a failure keeps the last good one",
            cert_reloads.clone(),
        );
        let native_auto = Gauge::default();
        registry.register(
            "sidecar_injection_native_sidecars_auto",
            "1 while native sidecars are `auto` and every node's kubelet is recent enough",
            native_auto.clone(),
        );
        let nodes_watched = Gauge::default();
        registry.register(
            "sidecar_injection_nodes_watched",
            "Nodes whose kubelet version is known to native sidecars `auto`",
            nodes_watched.clone(),
        );
        let cert_expiry = std::sync::Arc::new(CertExpiry::default());
        registry.register_collector(Box::new(cert_expiry.clone()));
        Metrics {
            registry,
            requests,
            success,
            replayed,
            reinjected,
            skip,
            failure,
            time_seconds,
            warnings,
            config_reloads,
            cert_reloads,
            native_auto,
            nodes_watched,
            cert_expiry,
        }
    }

    /// Counts a review of a pod that already carried an injection: `unchanged` or `updated`.
    pub fn reinjection(&self, result: &'static str) {
        self.reinjected
            .get_or_create(&ReinjectionLabels { result })
            .inc();
    }

    /// Counts a pod admitted without injection.
    pub fn skipped(&self, reason: &'static str) {
        self.skip.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts a request that ended in a denial, a refusal or an error.
    pub fn failed(&self, reason: &'static str) {
        self.failure.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts one finding returned as a warning.
    pub fn warned(&self, finding: &'static str) {
        self.warnings
            .get_or_create(&FindingLabels { finding })
            .inc();
    }

    /// Counts one reload attempt.
    pub fn reload(family: &Family<ReloadLabels, Counter>, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        family.get_or_create(&ReloadLabels { result }).inc();
    }

    /// Records the `notAfter` (Unix seconds) of the certificate now served.
    pub fn set_cert_not_after(&self, unix_seconds: i64) {
        self.cert_expiry
            .not_after
            .store(unix_seconds, Ordering::Relaxed);
    }

    /// The OpenMetrics text exposition of every family.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// `sidecar_injection_cert_expiry_seconds`, computed at scrape time so it counts down between
/// reloads, and absent until a certificate is served (a zero would look like an expired one).
#[derive(Debug)]
struct CertExpiry {
    /// `notAfter` in Unix seconds; `i64::MIN` while no certificate is served.
    not_after: AtomicI64,
}

impl Default for CertExpiry {
    fn default() -> Self {
        CertExpiry {
            not_after: AtomicI64::new(i64::MIN),
        }
    }
}

impl Collector for CertExpiry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let not_after = self.not_after.load(Ordering::Relaxed);
        if not_after == i64::MIN {
            return Ok(());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let gauge = ConstGauge::new(not_after.saturating_sub(now));
        let metric = encoder.encode_descriptor(
            "sidecar_injection_cert_expiry_seconds",
            "Seconds until the served certificate's notAfter",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_up_under_istio_names() {
        let m = Metrics::new();
        m.requests.inc();
        m.requests.inc();
        m.skipped("host_network");
        m.failed("unsupported_media_type");
        m.warned("reserved-port");
        m.time_seconds.observe(0.00007);
        Metrics::reload(&m.config_reloads, false);
        let text = m.encode();
        for line in [
            "sidecar_injection_requests_total 2",
            "sidecar_injection_success_total 0",
            r#"sidecar_injection_skip_total{reason="host_network"} 1"#,
            r#"sidecar_injection_failure_total{reason="unsupported_media_type"} 1"#,
            r#"sidecar_injection_warnings_total{finding="reserved-port"} 1"#,
            r#"sidecar_injection_config_reloads_total{result="failure"} 1"#,
            // A sub-100µs answer lands in its own bucket.
            r#"sidecar_injection_time_seconds_bucket{le="0.00005"} 0"#,
            r#"sidecar_injection_time_seconds_bucket{le="0.0001"} 1"#,
            "sidecar_injection_native_sidecars_auto 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn cert_expiry_is_absent_until_known_then_counts_from_now() {
        let m = Metrics::new();
        assert!(!m.encode().contains("cert_expiry"));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        m.set_cert_not_after(now + 86_400);
        let text = m.encode();
        let value: i64 = text
            .lines()
            .find_map(|l| l.strip_prefix("sidecar_injection_cert_expiry_seconds "))
            .unwrap_or_else(|| panic!("no expiry gauge in\n{text}"))
            .parse()
            .unwrap();
        assert!((86_000..=86_400).contains(&value), "{value}");
    }
}
