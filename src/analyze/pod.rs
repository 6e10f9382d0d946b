//! The checks on one pod (or pod template).

use serde_json::Value;

use super::fields::{annotation, at, list_at, str_at};
use super::finding::*;
use super::layout::{self, Container, InitStep, Layout, RunAsSource};
use super::{DRAIN_HOOK_ANNOTATION, PodContext};

/// Ports the injected sidecar listens on inside the pod's network namespace, with what uses
/// them. An app port here collides with the proxy.
const PROXY_PORTS: &[(i64, &str)] = &[
    (15000, "Envoy admin"),
    (15001, "outbound capture"),
    (15004, "agent debug"),
    (15006, "inbound capture"),
    (15008, "HBONE tunnel"),
    (15020, "agent status and merged metrics"),
    (15021, "proxy health"),
    (15053, "DNS proxy"),
    (15090, "Envoy metrics"),
];
const RESERVED: std::ops::RangeInclusive<i64> = 15000..=15099;

/// Commands that open network connections. Exec probes are matched by word, so `curl` in
/// `sh -c "curl -f http://db/health"` counts.
const NETWORK_TOOLS: &[&str] = &[
    "curl",
    "wget",
    "nc",
    "ncat",
    "netcat",
    "telnet",
    "grpc_health_probe",
    "grpcurl",
    "http",
    "https",
];
const PROBES: &[&str] = &["startupProbe", "livenessProbe", "readinessProbe"];

/// Outbound redirect settings that can exempt an init container's destinations.
const OUTBOUND_EXCLUSIONS: &[&str] = &[
    "traffic.sidecar.istio.io/excludeOutboundIPRanges",
    "traffic.sidecar.istio.io/excludeOutboundPorts",
];
const INCLUDE_OUTBOUND: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";

/// Templates that put no sidecar beside an application: with `gateway` the pod *is* the proxy
/// (it listens on 80 and 443 as the proxy's UID by design, and nothing redirects its traffic);
/// `grpc-simple` runs no Istio process at all. The sidecar pitfalls checked here do not apply.
const NO_SIDECAR_TEMPLATES: &[&str] = &["gateway", "grpc-simple"];

/// The templates a pod asks for with `inject.istio.io/templates` (none: the default sidecar).
fn requested_templates(pod: &Value) -> Vec<&str> {
    annotation(pod, crate::inject::TEMPLATES_ANNOTATION)
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the pod asks only for templates that run no sidecar (see [`NO_SIDECAR_TEMPLATES`]).
fn runs_no_sidecar(pod: &Value) -> bool {
    let templates = requested_templates(pod);
    !templates.is_empty() && templates.iter().all(|t| NO_SIDECAR_TEMPLATES.contains(t))
}

/// Whether the pod is an Istio gateway (`inject.istio.io/templates: gateway`).
pub fn is_gateway(pod: &Value) -> bool {
    requested_templates(pod) == ["gateway"]
}

/// Runs every pod check. `prefix` is the path from the reported object to the pod (`""` for a
/// Pod, `spec.template.` for a Deployment).
pub fn check(pod: &Value, ctx: &PodContext, object: &str, prefix: &str) -> Vec<Finding> {
    if runs_no_sidecar(pod) {
        return Vec::new();
    }
    let layout = Layout::of(pod, ctx);
    let mut out = Findings {
        object,
        prefix,
        list: Vec::new(),
    };
    app_starts_before_proxy(&layout, &mut out);
    job_never_completes(pod, ctx, &layout, &mut out);
    app_runs_as_proxy_uid(pod, &layout, &mut out);
    reserved_ports(&layout, &mut out);
    init_container_network(pod, &layout, &mut out);
    exec_probe_network(&layout, &mut out);
    distroless_drain_hook(pod, ctx, &layout, &mut out);
    out.list
}

struct Findings<'o> {
    object: &'o str,
    prefix: &'o str,
    list: Vec<Finding>,
}

impl Findings<'_> {
    fn push(
        &mut self,
        id: &'static str,
        severity: Severity,
        field: &str,
        message: String,
        fix: &str,
    ) {
        self.list.push(Finding {
            id,
            severity,
            object: self.object.to_string(),
            field: format!("{}{}", self.prefix, field),
            message,
            fix: fix.to_string(),
        });
    }
}

fn names(containers: &[&Container<'_>]) -> String {
    containers
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `Container web` or `Containers web, worker`.
fn containers_phrase(containers: &[&Container<'_>]) -> String {
    let plural = if containers.len() == 1 { "" } else { "s" };
    format!("Container{plural} {}", names(containers))
}

/// Classic mode without hold: the kubelet starts containers in order but does not wait for the
/// proxy, so an app that calls out at startup hits the redirect with nothing listening.
fn app_starts_before_proxy(layout: &Layout<'_>, out: &mut Findings<'_>) {
    if layout.native || layout.hold || layout.no_interception {
        return;
    }
    let apps: Vec<_> = layout.app_containers().filter(|c| !c.init).collect();
    if apps.is_empty() {
        return;
    }
    // Info, not Warning: it holds for every classic pod, and most apps make no outbound call
    // before the proxy is up; a warning on every pod would drown the ones that matter.
    out.push(
        APP_STARTS_BEFORE_PROXY,
        Severity::Info,
        "spec.containers",
        format!(
            "{} can start before istio-proxy is ready; outbound calls made at startup fail until it is.",
            containers_phrase(&apps)
        ),
        "Annotate proxy.istio.io/config: '{\"holdApplicationUntilProxyStarts\": true}' or use native sidecars.",
    );
}

/// A classic sidecar never exits on its own, so a pod meant to run to completion never does.
fn job_never_completes(pod: &Value, ctx: &PodContext, layout: &Layout<'_>, out: &mut Findings<'_>) {
    if layout.native {
        return;
    }
    let owner = ctx.owner_kind.as_deref().or_else(|| controller_kind(pod));
    let restart = str_at(pod, &["spec", "restartPolicy"]);
    let what = match (owner, restart) {
        (Some(kind @ ("Job" | "CronJob")), _) => format!("This {kind}'s pod"),
        (_, Some(policy @ ("Never" | "OnFailure"))) => {
            format!("This pod (restartPolicy {policy})")
        }
        _ => return,
    };
    let apps: Vec<_> = layout.app_containers().filter(|c| !c.init).collect();
    // An app that ends by telling the agent to quit handles it already.
    if apps.is_empty()
        || apps
            .iter()
            .any(|c| command_text(c.value).contains("quitquitquit"))
    {
        return;
    }
    out.push(
        JOB_NEVER_COMPLETES,
        Severity::Error,
        "spec.containers",
        format!("{what} never completes: a classic istio-proxy keeps running after {} exits.", names(&apps)),
        "Use native sidecars (sidecar.istio.io/nativeSidecar: \"true\") or POST localhost:15020/quitquitquit when done.",
    );
}

fn controller_kind(pod: &Value) -> Option<&str> {
    list_at(pod, &["metadata", "ownerReferences"])
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        .and_then(|r| str_at(r, &["kind"]))
}

/// The redirect exempts the proxy's UID so the proxy's own traffic is not looped back; an app
/// running as that UID is exempt too and leaves the mesh (no mTLS, no policy).
fn app_runs_as_proxy_uid(pod: &Value, layout: &Layout<'_>, out: &mut Findings<'_>) {
    if layout.no_interception {
        return;
    }
    let uid = layout.proxy_uid;
    let mut from_pod = Vec::new();
    for c in layout.app_containers() {
        match c.run_as_user(pod) {
            Some((u, RunAsSource::Container)) if u == uid => out.push(
                APP_RUNS_AS_PROXY_UID,
                Severity::Error,
                &format!("{}.securityContext.runAsUser", c.path),
                format!("Container {} runs as UID {uid}, the proxy's UID: its traffic bypasses istio-proxy (no mTLS, no policy).", c.name),
                "Run the app as another UID.",
            ),
            Some((u, RunAsSource::Pod)) if u == uid => from_pod.push(c),
            _ => {}
        }
    }
    if !from_pod.is_empty() {
        out.push(
            APP_RUNS_AS_PROXY_UID,
            Severity::Error,
            "spec.securityContext.runAsUser",
            format!("The pod runs {} as UID {uid}, the proxy's UID: their traffic bypasses istio-proxy (no mTLS, no policy).", names(&from_pod)),
            "Set another runAsUser for the pod or for each app container.",
        );
    }
}

fn reserved_ports(layout: &Layout<'_>, out: &mut Findings<'_>) {
    for c in layout.user_containers() {
        for (j, port) in list_at(c.value, &["ports"]).iter().enumerate() {
            let Some(number) = port.get("containerPort").and_then(Value::as_i64) else {
                continue;
            };
            if !RESERVED.contains(&number) {
                continue;
            }
            let field = format!("{}.ports[{j}].containerPort", c.path);
            match PROXY_PORTS.iter().find(|(p, _)| *p == number) {
                Some((_, used_for)) => out.push(
                    RESERVED_PORT,
                    Severity::Error,
                    &field,
                    format!("Container {} uses port {number}, which istio-proxy listens on ({used_for}); they collide.", c.name),
                    "Move the port out of 15000-15099.",
                ),
                None => out.push(
                    RESERVED_PORT,
                    Severity::Warning,
                    &field,
                    format!("Container {} uses port {number}, in Istio's reserved range 15000-15099.", c.name),
                    "Move the port out of 15000-15099.",
                ),
            }
        }
    }
}

/// An init container that runs with the redirect in place but no proxy listening has every
/// outbound TCP connection refused. That happens with istio-cni in classic mode (the CNI plugin
/// sets the redirect up before any container, and the proxy starts only after the init phase).
/// In classic mode without istio-cni user init containers run before `istio-init`, and in native
/// mode after the proxy is ready, so both are fine.
fn init_container_network(pod: &Value, layout: &Layout<'_>, out: &mut Findings<'_>) {
    if layout.no_interception
        || annotation(pod, INCLUDE_OUTBOUND).is_some_and(|v| v.trim().is_empty())
    {
        return;
    }
    let partial = OUTBOUND_EXCLUSIONS
        .iter()
        .any(|a| annotation(pod, a).is_some_and(|v| !v.trim().is_empty()))
        || annotation(pod, INCLUDE_OUTBOUND).is_some_and(|v| v.trim() != "*");
    let cause = if layout.cni {
        "istio-cni's redirect"
    } else {
        "the redirect"
    };
    let (mut redirect, mut proxy_ready) = (false, false);
    for step in layout.init_sequence() {
        match step {
            InitStep::Redirect => redirect = true,
            InitStep::ProxyReady => proxy_ready = true,
            InitStep::User(c) => {
                if !redirect || proxy_ready {
                    continue;
                }
                if c.run_as_user(pod)
                    .is_some_and(|(u, _)| u == layout.proxy_uid)
                {
                    continue;
                }
                let (severity, message) = if partial {
                    (
                        Severity::Info,
                        format!(
                            "Init container {} runs under {cause} before istio-proxy starts; only destinations the pod excludes are reachable.",
                            c.name
                        ),
                    )
                } else {
                    (
                        Severity::Warning,
                        format!(
                            "Init container {} runs under {cause} before istio-proxy starts: its outbound connections fail.",
                            c.name
                        ),
                    )
                };
                out.push(
                    INIT_CONTAINER_NETWORK,
                    severity,
                    &c.path,
                    message,
                    "Use native sidecars, run it as UID 1337, or exclude its destinations from the redirect.",
                );
            }
        }
    }
}

/// Exec probes run inside the container and are not rewritten. One that reaches another host
/// goes through the proxy and fails while the proxy starts or drains.
fn exec_probe_network(layout: &Layout<'_>, out: &mut Findings<'_>) {
    for c in layout.app_containers() {
        for probe in PROBES {
            let Some(command) = at(c.value, &[probe, "exec", "command"]).and_then(Value::as_array)
            else {
                continue;
            };
            let text = command
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ");
            let Some(tool) = network_tool(&text) else {
                continue;
            };
            if mentions_local_address(&text) {
                continue;
            }
            out.push(
                EXEC_PROBE_NETWORK,
                Severity::Info,
                &format!("{}.{probe}.exec.command", c.path),
                format!("Exec {probe} of {} calls {tool} on a remote host: it is not rewritten and fails while istio-proxy starts or drains.", c.name),
                "Probe localhost, or use an httpGet/tcpSocket/grpc probe, which the injector rewrites.",
            );
        }
    }
}

fn network_tool(text: &str) -> Option<&'static str> {
    text.split(|c: char| c.is_whitespace() || ";|&()'\"`$".contains(c))
        .map(|word| word.rsplit('/').next().unwrap_or(word))
        .find_map(|word| NETWORK_TOOLS.iter().find(|t| **t == word).copied())
}

/// `localhost`, loopback addresses, or a port with no host (`-addr=:8080`).
fn mentions_local_address(text: &str) -> bool {
    ["localhost", "127.0.0.1", "::1", "=:"]
        .iter()
        .any(|s| text.contains(s))
        || text.split_whitespace().any(|w| {
            w.strip_prefix(':')
                .is_some_and(|p| p.starts_with(|c: char| c.is_ascii_digit()))
        })
}

fn command_text(container: &Value) -> String {
    ["command", "args"]
        .iter()
        .flat_map(|k| list_at(container, &[k]))
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The drain hook is a shell script run as istio-proxy's preStop; distroless images have no
/// shell, so the hook fails and the proxy is killed without draining.
fn distroless_drain_hook(
    pod: &Value,
    ctx: &PodContext,
    layout: &Layout<'_>,
    out: &mut Findings<'_>,
) {
    let hook = annotation(pod, DRAIN_HOOK_ANNOTATION).is_some_and(|url| !url.trim().is_empty());
    if !hook || !layout::proxy_is_distroless(pod, layout, ctx) {
        return;
    }
    out.push(
        DISTROLESS_DRAIN_HOOK,
        Severity::Error,
        &format!("metadata.annotations[\"{DRAIN_HOOK_ANNOTATION}\"]"),
        "The drain hook is a shell preStop on istio-proxy; the distroless proxy image has no shell, so the proxy stops without draining.".to_string(),
        "Set sidecar.istio.io/proxyImageType: default on this pod, or remove the drain annotation.",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_tools_are_found_by_word_and_path() {
        assert_eq!(network_tool("sh -c curl -f http://db/health"), Some("curl"));
        assert_eq!(
            network_tool("/bin/grpc_health_probe -addr=svc:9000"),
            Some("grpc_health_probe")
        );
        assert_eq!(network_tool("cat /tmp/healthy"), None);
        assert_eq!(network_tool("curlish"), None);
    }

    #[test]
    fn local_addresses_are_recognised() {
        assert!(mentions_local_address("curl http://localhost:8080/"));
        assert!(mentions_local_address("grpc_health_probe -addr=:9000"));
        assert!(mentions_local_address("grpcurl -plaintext :9000 list"));
        assert!(!mentions_local_address("curl http://db.prod:8080/"));
    }
}
