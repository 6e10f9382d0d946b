//! The Prometheus registry and the metric families of the server.
//!
//! Labels are low-cardinality by construction: outcomes and reasons are fixed `&'static str`
//! names (see `SkipReason::label`), never namespaces, pod names or messages.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The answer given to one review.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// `injected`, `skipped`, `denied` or `error`.
    pub outcome: &'static str,
    /// The skip reason, `invalid_annotations`, or the kind of error; empty for `injected`.
    pub reason: &'static str,
}

/// An HTTP request refused before it reached the engine.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// The HTTP status code sent.
    pub code: u16,
}

/// The result of one reload attempt.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `success` or `failure`.
    pub result: &'static str,
}

/// Every metric the server exports, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub reviews: Family<ReviewLabels, Counter>,
    pub review_seconds: Histogram,
    pub rejected: Family<RejectLabels, Counter>,
    pub config_reloads: Family<ReloadLabels, Counter>,
    pub cert_reloads: Family<ReloadLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sidecar_injector");
        let reviews = Family::<ReviewLabels, Counter>::default();
        registry.register(
            "reviews",
            "AdmissionReviews answered, by outcome and reason",
            reviews.clone(),
        );
        // Injection is sub-millisecond; the upper buckets catch huge pods and a starved CPU,
        // up to the API server's default webhook timeout of 10 s.
        let review_seconds = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0,
        ]);
        registry.register(
            "review_duration_seconds",
            "Time from a request's arrival to its answer, body read included",
            review_seconds.clone(),
        );
        let rejected = Family::<RejectLabels, Counter>::default();
        registry.register(
            "rejected_requests",
            "Requests refused before injection (bad body, wrong content type, too large)",
            rejected.clone(),
        );
        let config_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Attempts to load a changed injection config; a failure keeps the last good one",
            config_reloads.clone(),
        );
        let cert_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "cert_reloads",
            "Attempts to load a changed serving certificate; a failure keeps the last good one",
            cert_reloads.clone(),
        );
        Metrics {
            registry,
            reviews,
            review_seconds,
            rejected,
            config_reloads,
            cert_reloads,
        }
    }

    /// Counts one answered review.
    pub fn review(&self, outcome: &'static str, reason: &'static str) {
        self.reviews
            .get_or_create(&ReviewLabels { outcome, reason })
            .inc();
    }

    /// Counts one reload attempt.
    pub fn reload(family: &Family<ReloadLabels, Counter>, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        family.get_or_create(&ReloadLabels { result }).inc();
    }

    /// The OpenMetrics text exposition of every family.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_up_in_the_exposition() {
        let m = Metrics::new();
        m.review("skipped", "host_network");
        m.review("skipped", "host_network");
        m.rejected.get_or_create(&RejectLabels { code: 415 }).inc();
        Metrics::reload(&m.config_reloads, false);
        let text = m.encode();
        assert!(
            text.contains(
                r#"sidecar_injector_reviews_total{outcome="skipped",reason="host_network"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"sidecar_injector_rejected_requests_total{code="415"} 1"#));
        assert!(text.contains(r#"sidecar_injector_config_reloads_total{result="failure"} 1"#));
        assert!(text.ends_with("# EOF\n"));
    }
}
