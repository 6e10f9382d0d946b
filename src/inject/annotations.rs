//! Validation of the injection annotations (istiod's `validate.go` table, plus ours). Every
//! problem becomes part of one denial that names the annotation, its value and what is accepted.

use std::net::IpAddr;

use serde_json::{Map, Value};

use super::prescan::{self, Syntax};
use super::{Problem, quantity};

/// The annotation holding the app URL whose answers hold back the proxy's exit.
pub const DRAIN_URL: &str = "sidecar.istio.io/drainUntilUnready";
/// The upper bound, in seconds, of that wait.
pub const DRAIN_TIMEOUT: &str = "sidecar.istio.io/drainTimeoutSeconds";

type Check = fn(&str) -> Result<(), String>;

/// Each validated annotation with its check. The check's error says what is accepted.
const CHECKS: &[(&str, Check)] = &[
    ("sidecar.istio.io/interceptionMode", interception_mode),
    ("status.sidecar.istio.io/port", port),
    (
        "readiness.status.sidecar.istio.io/initialDelaySeconds",
        uint32,
    ),
    ("readiness.status.sidecar.istio.io/periodSeconds", uint32),
    ("readiness.status.sidecar.istio.io/failureThreshold", uint32),
    (
        "traffic.sidecar.istio.io/includeOutboundIPRanges",
        include_ip_ranges,
    ),
    (
        "traffic.sidecar.istio.io/excludeOutboundIPRanges",
        exclude_ip_ranges,
    ),
    (
        "traffic.sidecar.istio.io/includeInboundPorts",
        include_inbound_ports,
    ),
    ("traffic.sidecar.istio.io/excludeInboundPorts", port_list),
    ("traffic.sidecar.istio.io/excludeOutboundPorts", port_list),
    ("traffic.sidecar.istio.io/includeOutboundPorts", port_list),
    ("traffic.sidecar.istio.io/excludeInterfaces", interfaces),
    ("traffic.sidecar.istio.io/kubevirtInterfaces", interfaces),
    ("istio.io/reroute-virtual-interfaces", interfaces),
    ("prometheus.istio.io/merge-metrics", parse_bool_check),
    ("proxy.istio.io/config", proxy_config),
    ("sidecar.istio.io/proxyCPU", resource_quantity),
    ("sidecar.istio.io/proxyMemory", resource_quantity),
    ("sidecar.istio.io/proxyCPULimit", resource_quantity),
    ("sidecar.istio.io/proxyMemoryLimit", resource_quantity),
    ("sidecar.istio.io/nativeSidecar", true_or_false),
    ("sidecar.istio.io/userVolume", json_map),
    ("sidecar.istio.io/userVolumeMount", json_map),
    ("proxy.istio.io/overrides", overrides),
    ("sidecar.istio.io/status", status),
    (DRAIN_URL, drain_url),
    (DRAIN_TIMEOUT, drain_timeout),
];

/// The annotations whose values a reader parses (here and later in the engine), and which one:
/// each is pre-scanned (see `prescan`) before any reader sees it.
const PARSED: &[(&str, Syntax)] = &[
    ("proxy.istio.io/config", Syntax::Yaml),
    ("sidecar.istio.io/userVolume", Syntax::Json),
    ("sidecar.istio.io/userVolumeMount", Syntax::Json),
    ("proxy.istio.io/overrides", Syntax::Json),
    ("sidecar.istio.io/status", Syntax::Json),
];

/// A denial quotes at most this much of a value.
const SHOWN_BYTES: usize = 256;

/// The annotations `validate` checks, in the table's order.
pub fn validated_names() -> impl Iterator<Item = &'static str> {
    CHECKS.iter().map(|(name, _)| *name)
}

/// Every problem with the pod's annotations, in the table's order.
pub fn validate(annotations: Option<&Map<String, Value>>) -> Vec<Problem> {
    let Some(annotations) = annotations else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for (name, check) in CHECKS {
        let Some(value) = annotations.get(*name) else {
            continue;
        };
        let syntax = PARSED.iter().find(|(n, _)| n == name).map(|(_, s)| *s);
        let result = match value.as_str() {
            // Measured before any reader sees it: the check below parses it.
            Some(text) => match syntax {
                Some(syntax) => prescan::check(text, syntax).and_then(|()| check(text)),
                None => check(text),
            },
            None => Err("annotation values must be strings".to_string()),
        };
        if let Err(accepted) = result {
            problems.push(Problem {
                annotation: (*name).to_string(),
                value: value.as_str().map_or_else(|| value.to_string(), shown),
                accepted,
            });
        }
    }
    problems
}

/// The value as a denial quotes it: whole, or its start and its size when it is long.
fn shown(text: &str) -> String {
    if text.len() <= SHOWN_BYTES {
        return text.to_string();
    }
    let mut end = SHOWN_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

/// Go's `strconv.ParseBool`, which istiod uses for boolean annotations.
pub(crate) fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn parse_bool_check(text: &str) -> Result<(), String> {
    parse_bool(text).map(|_| ()).ok_or_else(|| {
        "accepted: true or false (also 1, t, T, TRUE, True, 0, f, F, FALSE, False)".into()
    })
}

fn true_or_false(text: &str) -> Result<(), String> {
    match text {
        "true" | "false" => Ok(()),
        _ => Err("accepted: \"true\" or \"false\"".into()),
    }
}

fn interception_mode(text: &str) -> Result<(), String> {
    match text {
        "REDIRECT" | "TPROXY" | "NONE" => Ok(()),
        _ => Err("accepted: REDIRECT, TPROXY, NONE".into()),
    }
}

fn port(text: &str) -> Result<(), String> {
    text.parse::<u16>().map(|_| ()).map_err(|_| {
        "accepted: a port number from 0 to 65535 (0 turns the proxy's probes off)".into()
    })
}

fn uint32(text: &str) -> Result<(), String> {
    text.parse::<u32>()
        .map(|_| ())
        .map_err(|_| "accepted: a whole number of seconds or attempts (0 to 4294967295)".into())
}

fn cidr(item: &str) -> bool {
    let Some((ip, bits)) = item.split_once('/') else {
        return false;
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    bits.parse::<u8>().is_ok_and(|b| b <= max)
}

fn cidr_list(text: &str) -> Result<(), String> {
    for item in text.split(',') {
        let item = item.trim();
        if !cidr(item) {
            return Err(format!(
                "{item:?} is not a CIDR; accepted: a comma-separated list of CIDRs such as 10.0.0.0/8,fd00::/8"
            ));
        }
    }
    Ok(())
}

fn include_ip_ranges(text: &str) -> Result<(), String> {
    if text.is_empty() || text == "*" {
        return Ok(());
    }
    cidr_list(text).map_err(|e| format!("{e}, or \"*\" for all, or empty for none"))
}

fn exclude_ip_ranges(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Ok(());
    }
    if text.trim() == "*" {
        return Err(
            "\"*\" would exclude all traffic; accepted: a comma-separated list of CIDRs, or empty"
                .into(),
        );
    }
    cidr_list(text)
}

fn port_list(text: &str) -> Result<(), String> {
    for item in text.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        if item.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!(
                "{item:?} is not a port; accepted: a comma-separated list of port numbers from 1 to 65535"
            ));
        }
    }
    Ok(())
}

fn include_inbound_ports(text: &str) -> Result<(), String> {
    if text.trim() == "*" {
        return Ok(());
    }
    port_list(text).map_err(|e| format!("{e}, or \"*\" for all"))
}

fn interfaces(text: &str) -> Result<(), String> {
    for item in text.split(',') {
        let item = item.trim();
        let valid_chars = item.chars().enumerate().all(|(i, c)| {
            if i == 0 {
                c.is_ascii_alphabetic()
            } else {
                c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
            }
        });
        if item.is_empty() || item.len() > 15 || !valid_chars {
            return Err(format!(
                "{item:?} is not an interface name; accepted: a comma-separated list of names that start with a letter, hold only letters, digits, '_', '.', '-', and have at most 15 characters"
            ));
        }
    }
    Ok(())
}

fn resource_quantity(text: &str) -> Result<(), String> {
    quantity::validate(text).map_err(|e| e.0)
}

/// A JSON object of name to specification, or (as Istio also accepts) a JSON list of
/// specifications, each naming itself.
fn json_map(text: &str) -> Result<(), String> {
    match crate::value::from_str(text) {
        Ok(Value::Object(map)) if map.values().all(Value::is_object) => Ok(()),
        Ok(Value::Array(items))
            if items
                .iter()
                .all(|i| i.get("name").is_some_and(Value::is_string)) =>
        {
            Ok(())
        }
        _ => Err("accepted: a JSON object mapping each name to its specification, e.g. {\"data\":{\"emptyDir\":{}}}, or a JSON list of specifications with their names, e.g. [{\"name\":\"data\",\"emptyDir\":{}}]".into()),
    }
}

fn overrides(text: &str) -> Result<(), String> {
    let accepted = "this annotation is written by the injector; accepted: JSON {\"containers\":[...],\"initContainers\":[...]}";
    match crate::value::from_str(text) {
        Ok(Value::Object(map))
            if map.iter().all(|(k, v)| {
                matches!(k.as_str(), "containers" | "initContainers") && v.is_array()
            }) =>
        {
            Ok(())
        }
        _ => Err(accepted.into()),
    }
}

/// The status annotation is ours; a broken one cannot say what to strip. istiod logs it and
/// strips nothing, which then injects a second proxy next to the first; refusing is safer.
fn status(text: &str) -> Result<(), String> {
    match crate::value::from_str(text) {
        Ok(Value::Object(_)) => Ok(()),
        _ => Err("this annotation is written by the injector and must be the JSON object it wrote; remove it to inject afresh".into()),
    }
}

/// A ProxyConfig mapping whose known fields have the right type (see `proxy_config::check`).
fn proxy_config(text: &str) -> Result<(), String> {
    let value = crate::yaml::parse_one(text)
        .map_err(|e| format!("not YAML or JSON ({}); accepted: a ProxyConfig mapping, e.g. {{\"holdApplicationUntilProxyStarts\": true}}", e.message))?;
    let Value::Object(map) = value else {
        return Err(
            "accepted: a ProxyConfig mapping, e.g. {\"holdApplicationUntilProxyStarts\": true}"
                .into(),
        );
    };
    // The same rules as the mesh's `defaultConfig`; unknown fields are warnings, given by the
    // engine when it injects.
    super::proxy_config::check(&map).map(|_| ())
}

fn drain_url(text: &str) -> Result<(), String> {
    let accepted = "accepted: an http:// URL of the application on localhost, e.g. http://localhost:8080/ready: the host localhost, 127.0.0.1 or [::1], an optional port, then only letters, digits and -._~:/?#@+,=% (none of the [ ] { } that curl reads as a glob, no spaces or quotes)";
    let Some(rest) = text.strip_prefix("http://") else {
        return Err(accepted.into());
    };
    let Some(host) = ["localhost", "127.0.0.1", "[::1]"]
        .into_iter()
        .find(|host| rest.starts_with(host))
    else {
        return Err(accepted.into());
    };
    let after_host = &rest[host.len()..];
    let path = match after_host.strip_prefix(':') {
        Some(port_on) => {
            let end = port_on.find(['/', '?', '#']).unwrap_or(port_on.len());
            if port_on[..end].parse::<u16>().is_err() {
                return Err(accepted.into());
            }
            &port_on[end..]
        }
        None => after_host,
    };
    // The URL is an argument of the hook's script, never part of it, and curl runs it with
    // globbing off; still, only characters a URL needs, none a shell or curl's globbing reads.
    let safe = path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~:/?#@+,=%".contains(c));
    if (path.is_empty() || path.starts_with(['/', '?', '#'])) && safe {
        Ok(())
    } else {
        Err(accepted.into())
    }
}

fn drain_timeout(text: &str) -> Result<(), String> {
    match text.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(()),
        _ => Err("accepted: a whole number of seconds, at least 1".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(annotations: Value) -> Vec<Problem> {
        validate(annotations.as_object())
    }

    #[test]
    fn valid_values_pass() {
        let p = problems(json!({
            "sidecar.istio.io/interceptionMode": "TPROXY",
            "status.sidecar.istio.io/port": "0",
            "readiness.status.sidecar.istio.io/periodSeconds": "30",
            "traffic.sidecar.istio.io/includeOutboundIPRanges": "*",
            "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/8, fd00::/8",
            "traffic.sidecar.istio.io/includeInboundPorts": "",
            "traffic.sidecar.istio.io/excludeInboundPorts": "80,8080",
            "traffic.sidecar.istio.io/excludeInterfaces": "eth1,net-2.x",
            "prometheus.istio.io/merge-metrics": "F",
            "proxy.istio.io/config": "holdApplicationUntilProxyStarts: true\nproxyMetadata: {A: b}",
            "sidecar.istio.io/proxyCPU": "250m",
            "sidecar.istio.io/proxyMemoryLimit": "1Gi",
            "sidecar.istio.io/nativeSidecar": "false",
            "sidecar.istio.io/userVolume": "{\"v\":{\"emptyDir\":{}}}",
            "sidecar.istio.io/userVolumeMount": "[{\"name\":\"v\",\"mountPath\":\"/v\"}]",
            DRAIN_URL: "http://localhost:8080/ready?x=1",
            DRAIN_TIMEOUT: "30",
        }));
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn drain_urls_take_no_glob_or_shell_characters() {
        for good in [
            "http://localhost:8080/ready",
            "http://127.0.0.1/ready?x=1",
            "http://[::1]:8080/",
            "http://[::1]",
            "http://localhost",
            "http://localhost:9000/a-b_c.d~e/%20?q=a,b+c#top",
        ] {
            assert_eq!(drain_url(good), Ok(()), "{good}");
        }
        for bad in [
            "http://127.0.0.1:18999/[1-100000]",
            "http://localhost/{a,b}",
            "http://localhost/a]",
            "http://localhost:80:80/",
            "http://localhostx/",
            "http://localhost.evil.example/",
            "http://localhost:99999/",
            "http://localhost/a b",
            "http://localhost/$(reboot)",
            "http://localhost/'\"",
            "https://localhost/",
        ] {
            let err = drain_url(bad).unwrap_err();
            assert!(err.contains("[ ] { }"), "{bad}: {err}");
        }
    }

    #[test]
    fn parsed_values_are_measured_before_they_are_parsed() {
        let deep = format!("{}{}", "{a: ".repeat(4_000), "}".repeat(4_000));
        let p = problems(json!({
            "proxy.istio.io/config": deep,
            "sidecar.istio.io/userVolume": format!("{}1{}", "[".repeat(65), "]".repeat(65)),
        }));
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].annotation, "proxy.istio.io/config");
        assert!(p[0].accepted.contains("accepted: at most 256"), "{}", p[0]);
        // The denial quotes the start of a long value and its size, not all of it.
        assert!(p[0].value.ends_with("... (20000 bytes)"), "{}", p[0].value);
        assert!(p[0].value.len() < 300);
        assert!(
            p[1].accepted
                .contains("nesting deeper than 64 levels (found 65)"),
            "{}",
            p[1]
        );
    }

    #[test]
    fn every_invalid_value_is_reported_with_what_is_accepted() {
        let p = problems(json!({
            "sidecar.istio.io/interceptionMode": "redirect",
            "status.sidecar.istio.io/port": "70000",
            "traffic.sidecar.istio.io/excludeOutboundIPRanges": "*",
            "traffic.sidecar.istio.io/includeOutboundIPRanges": "10.0.0.0",
            "traffic.sidecar.istio.io/excludeInboundPorts": "http",
            "traffic.sidecar.istio.io/excludeInterfaces": "averyveryverylongname0",
            "proxy.istio.io/config": "holdApplicationUntilProxyStarts: yes please",
            "sidecar.istio.io/proxyCPU": "lots",
            "sidecar.istio.io/nativeSidecar": "yes",
            "sidecar.istio.io/userVolume": "{not json",
            "sidecar.istio.io/userVolumeMount": "[{\"mountPath\":\"/no-name\"}]",
            DRAIN_URL: "http://evil.example.com/$(reboot)",
        }));
        let names: Vec<&str> = p.iter().map(|p| p.annotation.as_str()).collect();
        assert_eq!(
            names,
            [
                "sidecar.istio.io/interceptionMode",
                "status.sidecar.istio.io/port",
                "traffic.sidecar.istio.io/includeOutboundIPRanges",
                "traffic.sidecar.istio.io/excludeOutboundIPRanges",
                "traffic.sidecar.istio.io/excludeInboundPorts",
                "traffic.sidecar.istio.io/excludeInterfaces",
                "proxy.istio.io/config",
                "sidecar.istio.io/proxyCPU",
                "sidecar.istio.io/nativeSidecar",
                "sidecar.istio.io/userVolume",
                "sidecar.istio.io/userVolumeMount",
                DRAIN_URL,
            ]
        );
        for problem in &p {
            assert!(
                problem.accepted.contains("accepted") || problem.accepted.contains("expected"),
                "{problem}"
            );
        }
        assert_eq!(p[0].value, "redirect");
    }
}
