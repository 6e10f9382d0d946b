//! The checks on a Service, alone and against the workloads it selects.

use serde_json::Value;

use super::PodContext;
use super::fields::{at, list_at, str_at, string_map};
use super::finding::*;
use super::layout::Layout;
use super::protocol::{self, Class, Protocol, Selected};
use super::workloads::{Object, Service, Workload};

/// A container port a Service port sends traffic to.
struct Target<'a> {
    workload: &'a str,
    container: &'a str,
    name: Option<&'a str>,
    number: i64,
}

pub fn check(svc: &Service<'_>, objects: &[Object<'_>]) -> Vec<Finding> {
    let selected = selected_workloads(svc, objects);
    let mut out = Vec::new();
    // A gateway's Service takes traffic from outside the mesh (a load balancer, its health
    // checks on `status-port`), and the gateway's listeners come from Gateway resources, not
    // from these port names: Istio's own gateway chart would be flagged on every install.
    if !selected.is_empty() && selected.iter().all(|w| super::pod::is_gateway(w.template)) {
        return out;
    }
    let mut push = |id, severity, field: String, message: String, fix: String| {
        out.push(Finding {
            id,
            severity,
            object: svc.name.clone(),
            field,
            message,
            fix,
        })
    };

    for (i, port) in list_at(svc.value, &["spec", "ports"]).iter().enumerate() {
        let number = port.get("port").and_then(Value::as_i64);
        let name = str_at(port, &["name"]).filter(|n| !n.is_empty());
        let app_protocol = str_at(port, &["appProtocol"]);
        let label = name.map_or_else(|| format!("{}", number.unwrap_or(0)), |n| format!("{n:?}"));
        let targets: Vec<Target<'_>> = selected.iter().flat_map(|w| targets(w, port)).collect();

        match protocol::select(str_at(port, &["protocol"]), app_protocol, name) {
            Selected::NotProxied => {}
            Selected::Sniffed => {
                let message = match app_protocol {
                    Some(a) => format!(
                        "Service port {label}: appProtocol {a:?} is unknown to Istio and the name has no protocol: Istio sniffs it."
                    ),
                    None => format!(
                        "Service port {label} names no protocol: Istio sniffs, which detects only HTTP and stalls server-first protocols."
                    ),
                };
                let fix = match targets.iter().find_map(declared) {
                    Some((p, t)) => format!(
                        "Name it {}-{} or set appProtocol: {}, as the container port it targets ({}) says.",
                        p.name(),
                        name.unwrap_or("port"),
                        p.name(),
                        t.name.unwrap_or_default()
                    ),
                    None => "Name it <protocol> or <protocol>-<suffix> (http-web, grpc-api, tcp-db...) or set appProtocol.".into(),
                };
                push(
                    PORT_NAME_PROTOCOL,
                    Severity::Warning,
                    format!("spec.ports[{i}].name"),
                    message,
                    fix,
                );
            }
            Selected::AppProtocol(p) | Selected::Name(p) => {
                // Opaque TCP carries anything and UDP is not proxied, so only an L7 or TLS
                // Service port can disagree.
                if matches!(p.class(), Class::Tcp | Class::Udp) {
                    continue;
                }
                let mismatch = targets
                    .iter()
                    .filter_map(declared)
                    .find(|(q, _)| q.class() != p.class() && q.class() != Class::Udp);
                if let Some((q, t)) = mismatch {
                    push(
                        PORT_PROTOCOL_MISMATCH,
                        Severity::Warning,
                        format!("spec.ports[{i}]"),
                        format!(
                            "Service port {label} ({}) targets port {} ({}) of {} container {}: the proxy will speak the wrong protocol.",
                            p.name(),
                            t.name.unwrap_or_default(),
                            q.name(),
                            t.workload,
                            t.container,
                        ),
                        "Make both port names (or the Service's appProtocol) declare the same protocol.".into(),
                    );
                }
            }
        }
    }

    if str_at(svc.value, &["spec", "clusterIP"]) == Some("None") {
        for w in selected.iter().filter(|w| w.kind == "StatefulSet") {
            headless_statefulset(svc, w, &mut push);
        }
    }
    out
}

/// StatefulSet members reach each other by pod DNS name (`db-0.db`), straight to pod IPs. Only
/// the ports this Service declares get mesh listeners; on any other port peer traffic leaves
/// plaintext through the passthrough cluster and is refused where STRICT mTLS applies.
fn headless_statefulset(
    svc: &Service<'_>,
    w: &Workload<'_>,
    push: &mut impl FnMut(&'static str, Severity, String, String, String),
) {
    let declared: Vec<i64> = list_at(svc.value, &["spec", "ports"])
        .iter()
        .flat_map(|port| targets(w, port))
        .map(|t| t.number)
        .collect();
    let layout = Layout::of(w.template, &PodContext::default());
    let mut missing: Vec<i64> = layout
        .user_containers()
        .flat_map(|c| list_at(c.value, &["ports"]))
        .filter(|p| !matches!(str_at(p, &["protocol"]), Some("UDP" | "SCTP")))
        .filter_map(|p| p.get("containerPort").and_then(Value::as_i64))
        .filter(|n| !declared.contains(n))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    let fix = "Declare every port the members use, named with its protocol.".to_string();
    if missing.is_empty() {
        push(
            HEADLESS_STATEFULSET,
            Severity::Info,
            "spec.clusterIP".into(),
            format!(
                "Headless Service selects {}: peers talk pod to pod, and only the ports declared here get mesh routing and mTLS.",
                w.name
            ),
            fix,
        );
    } else {
        let ports = missing
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        push(
            HEADLESS_STATEFULSET,
            Severity::Warning,
            "spec.ports".into(),
            format!(
                "Ports {ports} of {} are not in this headless Service: peer traffic on them gets no mesh routing and fails under STRICT mTLS.",
                w.name
            ),
            fix,
        );
    }
}

/// The protocol a target's container port name declares.
fn declared<'t, 'w>(t: &'t Target<'w>) -> Option<(Protocol, &'t Target<'w>)> {
    t.name.and_then(Protocol::from_port_name).map(|p| (p, t))
}

/// Workloads in the Service's namespace whose pod labels match its selector. A Service without
/// a selector (ExternalName, manual Endpoints) selects nothing.
fn selected_workloads<'o, 'a>(
    svc: &Service<'_>,
    objects: &'o [Object<'a>],
) -> Vec<&'o Workload<'a>> {
    let selector = string_map(at(svc.value, &["spec", "selector"]));
    if selector.is_empty() {
        return Vec::new();
    }
    objects
        .iter()
        .filter_map(|o| match o {
            Object::Workload(w) if w.namespace == svc.namespace => Some(w),
            _ => None,
        })
        .filter(|w| {
            let labels = w.labels();
            selector.iter().all(|pair| labels.contains(pair))
        })
        .collect()
}

/// The container ports of `w` that a Service port targets: `targetPort` by number or by name,
/// defaulting to `port`.
fn targets<'w>(w: &'w Workload<'_>, port: &Value) -> Vec<Target<'w>> {
    let target = port.get("targetPort").or_else(|| port.get("port"));
    let layout = Layout::of(w.template, &PodContext::default());
    let mut out = Vec::new();
    for c in layout.user_containers() {
        for p in list_at(c.value, &["ports"]) {
            let number = p.get("containerPort").and_then(Value::as_i64);
            let name = str_at(p, &["name"]);
            let hit = match target {
                Some(Value::Number(n)) => n.as_i64().is_some() && n.as_i64() == number,
                Some(Value::String(s)) => Some(s.as_str()) == name,
                _ => false,
            };
            if let (true, Some(number)) = (hit, number) {
                out.push(Target {
                    workload: &w.name,
                    container: c.name,
                    name,
                    number,
                });
            }
        }
    }
    out
}
