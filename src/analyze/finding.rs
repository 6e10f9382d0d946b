//! What an analysis returns: findings, their severities, and the catalogue of finding ids.

use std::fmt;

use serde::Serialize;

/// How bad a finding is. Ordered: `Info < Warning < Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; breaks only under conditions the analysis cannot see.
    Info,
    /// Likely to break, or breaks in some clusters.
    Warning,
    /// Breaks as written.
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One pitfall found in one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable kebab-case id from [`CATALOGUE`]: used in metrics labels, in the config's
    /// `findings.disabled` list and in the CLI's `--disable`.
    pub id: &'static str,
    pub severity: Severity,
    /// The object at fault: `Kind/namespace/name`, or `Kind/name` when the manifest gives no
    /// namespace.
    pub object: String,
    /// Where in the object, as a dotted path with list indexes (`spec.containers[0].ports[1]`).
    pub field: String,
    /// What is wrong, naming the container or port.
    pub message: String,
    /// What to change.
    pub fix: String,
}

/// Kubernetes may truncate a single admission warning above 256 characters.
pub const WARNING_TEXT_MAX: usize = 250;

impl Finding {
    /// One line for an AdmissionResponse `warning` (kubectl prints each as `Warning: ...`):
    /// `[id] message Fix: fix`, shortened to [`WARNING_TEXT_MAX`] characters. The fix is the
    /// first thing to go, since the message alone still says what to look at.
    pub fn warning_text(&self) -> String {
        let full = format!("[{}] {} Fix: {}", self.id, self.message, self.fix);
        let text = if full.chars().count() <= WARNING_TEXT_MAX {
            full
        } else {
            format!("[{}] {}", self.id, self.message)
        };
        one_line_truncated(&text, WARNING_TEXT_MAX)
    }
}

/// Newlines would split a warning in kubectl's output; overlong text is cut with an ellipsis.
fn one_line_truncated(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A finding kind: its id, the severity it usually has, and a one-line title.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FindingKind {
    pub id: &'static str,
    /// The severity most instances get; some findings raise or lower it per instance (see
    /// docs/findings.md).
    pub severity: Severity,
    pub title: &'static str,
}

pub const APP_STARTS_BEFORE_PROXY: &str = "app-starts-before-proxy";
pub const JOB_NEVER_COMPLETES: &str = "job-never-completes";
pub const APP_RUNS_AS_PROXY_UID: &str = "app-runs-as-proxy-uid";
pub const RESERVED_PORT: &str = "reserved-port";
pub const INIT_CONTAINER_NETWORK: &str = "init-container-network";
pub const EXEC_PROBE_NETWORK: &str = "exec-probe-network";
pub const DISTROLESS_DRAIN_HOOK: &str = "distroless-drain-hook";
pub const PORT_NAME_PROTOCOL: &str = "port-name-protocol";
pub const PORT_PROTOCOL_MISMATCH: &str = "port-protocol-mismatch";
pub const HEADLESS_STATEFULSET: &str = "headless-statefulset";
pub const NOT_INJECTED: &str = "not-injected";
pub const INJECTION_REFUSED: &str = "injection-refused";
pub const NO_POD_TEMPLATE: &str = "no-pod-template";

/// Every finding this module can return. Ids are stable: renaming one breaks users' config and
/// dashboards.
pub const CATALOGUE: &[FindingKind] = &[
    FindingKind {
        id: APP_STARTS_BEFORE_PROXY,
        severity: Severity::Info,
        title: "application containers may start before the proxy is ready",
    },
    FindingKind {
        id: JOB_NEVER_COMPLETES,
        severity: Severity::Error,
        title: "a run-to-completion pod never completes while a classic sidecar keeps running",
    },
    FindingKind {
        id: APP_RUNS_AS_PROXY_UID,
        severity: Severity::Error,
        title: "an application container runs as the proxy's UID and bypasses the proxy",
    },
    FindingKind {
        id: RESERVED_PORT,
        severity: Severity::Error,
        title: "a port in Istio's reserved range 15000-15099",
    },
    FindingKind {
        id: INIT_CONTAINER_NETWORK,
        severity: Severity::Warning,
        title: "an init container runs under the traffic redirect before the proxy is up",
    },
    FindingKind {
        id: EXEC_PROBE_NETWORK,
        severity: Severity::Info,
        title: "an exec probe calls the network and is not rewritten",
    },
    FindingKind {
        id: DISTROLESS_DRAIN_HOOK,
        severity: Severity::Error,
        title: "the drain hook needs a shell that the distroless proxy image does not have",
    },
    FindingKind {
        id: PORT_NAME_PROTOCOL,
        severity: Severity::Warning,
        title: "a Service port whose name and appProtocol do not declare a protocol",
    },
    FindingKind {
        id: PORT_PROTOCOL_MISMATCH,
        severity: Severity::Warning,
        title: "a Service port's protocol disagrees with the container port it targets",
    },
    FindingKind {
        id: HEADLESS_STATEFULSET,
        severity: Severity::Info,
        title: "a headless Service selects StatefulSet pods",
    },
    FindingKind {
        id: NOT_INJECTED,
        severity: Severity::Info,
        title: "the injector skips this workload (an opt-out, host networking, a selector...)",
    },
    FindingKind {
        id: INJECTION_REFUSED,
        severity: Severity::Error,
        title: "the webhook refuses this workload's pods (invalid injection annotations)",
    },
    FindingKind {
        id: NO_POD_TEMPLATE,
        severity: Severity::Error,
        title: "a workload without a pod template",
    },
];

/// The catalogue entry for `id`, if it is a known finding id.
pub fn kind(id: &str) -> Option<&'static FindingKind> {
    CATALOGUE.iter().find(|k| k.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(message: &str, fix: &str) -> Finding {
        Finding {
            id: RESERVED_PORT,
            severity: Severity::Error,
            object: "Pod/ns/p".into(),
            field: "spec".into(),
            message: message.into(),
            fix: fix.into(),
        }
    }

    #[test]
    fn warning_text_keeps_the_fix_when_it_fits() {
        let f = finding("Port 15001 is taken.", "Move it.");
        assert_eq!(
            f.warning_text(),
            "[reserved-port] Port 15001 is taken. Fix: Move it."
        );
    }

    #[test]
    fn warning_text_drops_the_fix_then_truncates_and_stays_on_one_line() {
        let f = finding("short\nmessage", &"x".repeat(300));
        assert_eq!(f.warning_text(), "[reserved-port] short message");
        let long = finding(&"m".repeat(400), "fix");
        let text = long.warning_text();
        assert_eq!(text.chars().count(), WARNING_TEXT_MAX);
        assert!(text.ends_with('…'));
    }

    #[test]
    fn catalogue_ids_are_unique_kebab_case() {
        for (i, k) in CATALOGUE.iter().enumerate() {
            assert!(
                k.id.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-' || c.is_ascii_digit()),
                "{}",
                k.id
            );
            assert!(CATALOGUE[i + 1..].iter().all(|o| o.id != k.id), "{}", k.id);
            assert_eq!(kind(k.id), Some(k));
        }
        assert_eq!(kind("nope"), None);
    }
}
