//! Application health-probe rewriting: probes go through the agent on the status port.
//!
//! With mutual TLS in the mesh the kubelet can no longer reach the application's own probe
//! endpoints, so istiod points every httpGet, tcpSocket and grpc probe (and every httpGet or
//! tcpSocket lifecycle handler) of the application containers at the agent's status port,
//! under a path that names the container and the probe. The original handlers travel to the
//! agent in the proxy env var `ISTIO_KUBE_APP_PROBERS`, and the agent runs them on the kubelet's
//! behalf. This mirrors `pkg/kube/inject/app_probe.go`.
//!
//! Everything here works on the raw pod JSON: the rewrite edits only the fields it means to
//! change, so unknown fields of probes and containers survive.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::annotations::parse_bool;
// The proxy's own probes target the agent already and are never rewritten; init containers
// are walked first, as istiod's `allContainers` does.
use super::pod::{CONTAINER_LISTS, PROXY};

/// Annotation that turns the rewrite on or off for one pod (parsed like Go's `ParseBool`).
pub const REWRITE_ANNOTATION: &str = "sidecar.istio.io/rewriteAppHTTPProbers";

/// The proxy's env var that carries the original probers to the agent.
pub const PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";

/// One place in a container that can hold a handler the agent takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Readiness,
    Liveness,
    Startup,
    PreStop,
    PostStart,
}

impl Slot {
    const ALL: [Slot; 5] = [
        Slot::Readiness,
        Slot::Liveness,
        Slot::Startup,
        Slot::PreStop,
        Slot::PostStart,
    ];

    /// The agent URL for this slot of `container` (istio's `status.FormatProberURL`).
    fn url(self, container: &str) -> String {
        match self {
            Slot::Readiness => format!("/app-health/{container}/readyz"),
            Slot::Liveness => format!("/app-health/{container}/livez"),
            Slot::Startup => format!("/app-health/{container}/startupz"),
            Slot::PreStop => format!("/app-lifecycle/{container}/prestopz"),
            Slot::PostStart => format!("/app-lifecycle/{container}/poststartz"),
        }
    }

    /// Probes carry gRPC actions and a timeout; lifecycle handlers carry neither.
    fn is_probe(self) -> bool {
        matches!(self, Slot::Readiness | Slot::Liveness | Slot::Startup)
    }

    /// Where the handler lives: `<field>` or `lifecycle.<field>`.
    fn path(self) -> (Option<&'static str>, &'static str) {
        match self {
            Slot::Readiness => (None, "readinessProbe"),
            Slot::Liveness => (None, "livenessProbe"),
            Slot::Startup => (None, "startupProbe"),
            Slot::PreStop => (Some("lifecycle"), "preStop"),
            Slot::PostStart => (Some("lifecycle"), "postStart"),
        }
    }

    fn handler(self, container: &Map<String, Value>) -> Option<&Map<String, Value>> {
        let (parent, field) = self.path();
        let holder = match parent {
            Some(p) => container.get(p)?.as_object()?,
            None => container,
        };
        holder.get(field)?.as_object()
    }

    fn handler_mut(self, container: &mut Map<String, Value>) -> Option<&mut Map<String, Value>> {
        let (parent, field) = self.path();
        let holder = match parent {
            Some(p) => container.get_mut(p)?.as_object_mut()?,
            None => container,
        };
        holder.get_mut(field)?.as_object_mut()
    }

    /// Which action of the handler the agent takes over, in istiod's order of precedence.
    fn action(self, handler: &Map<String, Value>) -> Option<Action> {
        let present = |key: &str| handler.get(key).is_some_and(Value::is_object);
        if present("httpGet") {
            Some(Action::HttpGet)
        } else if present("tcpSocket") {
            Some(Action::TcpSocket)
        } else if self.is_probe() && present("grpc") {
            Some(Action::Grpc)
        } else {
            // exec (and lifecycle sleep) run inside the container and need no agent.
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    HttpGet,
    TcpSocket,
    Grpc,
}

impl Action {
    fn key(self) -> &'static str {
        match self {
            Action::HttpGet => "httpGet",
            Action::TcpSocket => "tcpSocket",
            Action::Grpc => "grpc",
        }
    }
}

/// The application containers of a pod spec, init containers first, the proxy left out.
fn app_containers(spec: &Value) -> impl Iterator<Item = &Map<String, Value>> {
    CONTAINER_LISTS
        .iter()
        .filter_map(|list| spec.get(*list)?.as_array())
        .flatten()
        .filter_map(Value::as_object)
        .filter(|c| container_name(c) != PROXY)
}

fn container_name(container: &Map<String, Value>) -> &str {
    container.get("name").and_then(Value::as_str).unwrap_or("")
}

/// The original handlers of the application containers, keyed by their agent URL
/// (istio's `DumpAppProbers`).
///
/// Named ports are resolved against the container's own ports, and an entry whose name does not
/// resolve is left out (the agent could not run it). An integer port equal to
/// `mesh_status_port` means the handler already targets the agent (a pod injected before), so it
/// is left out too. Each value keeps only the fields istiod's `Prober` type has, in the order Go
/// marshals them, so the env value matches istiod's byte for byte.
pub fn app_probers(spec: &Value, mesh_status_port: u16) -> Map<String, Value> {
    let mut out = Map::new();
    for container in app_containers(spec) {
        let name = container_name(container);
        let ports = named_ports(container);
        for slot in Slot::ALL {
            let Some(handler) = slot.handler(container) else {
                continue;
            };
            if let Some(prober) = dump_handler(slot, handler, &ports, mesh_status_port) {
                // A later container with the same name wins, as in istiod's map.
                out.insert(slot.url(name), prober);
            }
        }
    }
    out
}

/// `name -> containerPort` of one container; a repeated name resolves to its last port, as
/// istiod's map does.
fn named_ports(container: &Map<String, Value>) -> Vec<(&str, i64)> {
    let mut ports: Vec<(&str, i64)> = Vec::new();
    let list = container.get("ports").and_then(Value::as_array);
    for port in list.into_iter().flatten() {
        let name = port.get("name").and_then(Value::as_str).unwrap_or("");
        let number = port.get("containerPort").and_then(Value::as_i64);
        if let (false, Some(number)) = (name.is_empty(), number) {
            ports.retain(|(n, _)| *n != name);
            ports.push((name, number));
        }
    }
    ports
}

fn dump_handler(
    slot: Slot,
    handler: &Map<String, Value>,
    ports: &[(&str, i64)],
    mesh_status_port: u16,
) -> Option<Value> {
    let action = slot.action(handler)?;
    let body = handler.get(action.key())?.as_object()?;
    let timeout = if slot.is_probe() {
        handler.get("timeoutSeconds").and_then(Value::as_i64)
    } else {
        None
    };
    let encoded = match action {
        // gRPC ports are integers only, and istiod takes them as they are.
        Action::Grpc => grpc_json(body),
        Action::HttpGet | Action::TcpSocket => {
            let port = match body.get("port") {
                Some(Value::String(name)) => {
                    let (_, number) = ports.iter().find(|(n, _)| n == name)?;
                    *number
                }
                Some(Value::Number(n)) => n.as_i64()?,
                // An absent port is Go's zero IntOrString.
                None | Some(Value::Null) => 0,
                Some(_) => return None,
            };
            if port == i64::from(mesh_status_port) {
                return None;
            }
            let port = Value::from(port);
            if action == Action::HttpGet {
                http_get_json(body, port)
            } else {
                tcp_socket_json(body, port)
            }
        }
    };
    let (http, tcp, grpc) = match action {
        Action::HttpGet => (Some(encoded), None, None),
        Action::TcpSocket => (None, Some(encoded), None),
        Action::Grpc => (None, None, Some(encoded)),
    };
    Some(prober_json(http, tcp, grpc, timeout))
}

/// istiod's `Prober`: `httpGet`, `tcpSocket`, `grpc`, then `timeoutSeconds` (zero omitted).
fn prober_json(
    http: Option<Value>,
    tcp: Option<Value>,
    grpc: Option<Value>,
    timeout: Option<i64>,
) -> Value {
    let mut out = Map::new();
    let fields = [("httpGet", http), ("tcpSocket", tcp), ("grpc", grpc)];
    for (key, value) in fields {
        if let Some(value) = value {
            out.insert(key.into(), value);
        }
    }
    if let Some(t) = timeout.filter(|t| *t != 0) {
        out.insert("timeoutSeconds".into(), t.into());
    }
    Value::Object(out)
}

/// A non-empty string field, as Go's `omitempty` writes it.
fn non_empty<'a>(action: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    action
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// `HTTPGetAction` in Go's field order: path, port, host, scheme, httpHeaders.
fn http_get_json(action: &Map<String, Value>, port: Value) -> Value {
    let mut out = Map::new();
    if let Some(path) = non_empty(action, "path") {
        out.insert("path".into(), path.into());
    }
    out.insert("port".into(), port);
    if let Some(host) = non_empty(action, "host") {
        out.insert("host".into(), host.into());
    }
    if let Some(scheme) = non_empty(action, "scheme") {
        out.insert("scheme".into(), scheme.into());
    }
    let headers = action.get("httpHeaders").and_then(Value::as_array);
    if let Some(headers) = headers.filter(|h| !h.is_empty()) {
        let headers = headers
            .iter()
            .map(|h| {
                let field = |key: &str| h.get(key).and_then(Value::as_str).unwrap_or("");
                let mut header = Map::new();
                header.insert("name".into(), field("name").into());
                header.insert("value".into(), field("value").into());
                Value::Object(header)
            })
            .collect();
        out.insert("httpHeaders".into(), Value::Array(headers));
    }
    Value::Object(out)
}

/// `TCPSocketAction` in Go's field order: port, host.
fn tcp_socket_json(action: &Map<String, Value>, port: Value) -> Value {
    let mut out = Map::new();
    out.insert("port".into(), port);
    if let Some(host) = non_empty(action, "host") {
        out.insert("host".into(), host.into());
    }
    Value::Object(out)
}

/// `GRPCAction`: port, then service, which Go writes as `null` when unset (no omitempty).
fn grpc_json(action: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    let port = action.get("port").and_then(Value::as_i64).unwrap_or(0);
    out.insert("port".into(), port.into());
    let service = match action.get("service") {
        Some(Value::String(s)) => Value::String(s.clone()),
        _ => Value::Null,
    };
    out.insert("service".into(), service);
    Value::Object(out)
}

/// A prober read back from a previous env value, re-encoded as istiod does when it unmarshals
/// and marshals it again: fields outside `Prober` are dropped, ports kept as they are.
fn normalize_prober(prober: &Value) -> Option<Value> {
    let prober = prober.as_object()?;
    let action = |key: &str| prober.get(key).and_then(Value::as_object);
    let port = |a: &Map<String, Value>| match a.get("port") {
        Some(p @ (Value::Number(_) | Value::String(_))) => p.clone(),
        _ => Value::from(0),
    };
    Some(prober_json(
        action("httpGet").map(|a| http_get_json(a, port(a))),
        action("tcpSocket").map(|a| tcp_socket_json(a, port(a))),
        action("grpc").map(grpc_json),
        prober.get("timeoutSeconds").and_then(Value::as_i64),
    ))
}

/// The value of `ISTIO_KUBE_APP_PROBERS`: `new` merged with the value the proxy carried before
/// (on re-injection), where the old entries win, as in istiod's `mergeOrAppendProbers`.
///
/// Keys are sorted and `<`, `>`, `&`, U+2028 and U+2029 escaped as Go's `encoding/json` does,
/// so the text equals istiod's. A previous value that is not a JSON object is ignored: the agent
/// could not read it either. Returns `None` when there is nothing to carry.
pub fn probers_env(new: Map<String, Value>, previous: Option<&str>) -> Option<String> {
    let mut merged: BTreeMap<String, Value> = new.into_iter().collect();
    let old = match previous.map(crate::value::from_str) {
        Some(Ok(Value::Object(map))) => Some(map),
        _ => None,
    };
    for (key, value) in old.into_iter().flatten() {
        if let Some(value) = normalize_prober(&value) {
            merged.insert(key, value);
        }
    }
    if merged.is_empty() {
        return None;
    }
    let sorted: Map<String, Value> = merged.into_iter().collect();
    Some(go_html_escape(&Value::Object(sorted).to_string()))
}

/// Go's `encoding/json` escapes these even inside strings; serde_json leaves them as they are.
/// They can only occur inside JSON strings, so replacing them in the text is exact.
fn go_html_escape(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Points every httpGet, tcpSocket and grpc probe and every httpGet or tcpSocket lifecycle
/// handler of the application containers at the agent on `status_port` (istio's
/// `patchRewriteProbe`).
///
/// httpGet keeps its host, headers and other fields, with port and path replaced and HTTPS
/// turned into HTTP (the agent speaks HTTPS to the application itself); tcpSocket and grpc are
/// replaced, in place, by an `httpGet` with only path and port. Thresholds, timeouts, exec
/// handlers and every field this crate does not know are left untouched. A named port that does
/// not resolve is rewritten all the same, as istiod does.
pub fn rewrite(spec: &mut Value, status_port: u16) {
    for list in CONTAINER_LISTS {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for container in containers.iter_mut().filter_map(Value::as_object_mut) {
            let name = container_name(container).to_owned();
            if name == PROXY {
                continue;
            }
            for slot in Slot::ALL {
                if let Some(handler) = slot.handler_mut(container) {
                    rewrite_handler(slot, handler, &slot.url(&name), status_port);
                }
            }
        }
    }
}

fn rewrite_handler(slot: Slot, handler: &mut Map<String, Value>, url: &str, status_port: u16) {
    let Some(action) = slot.action(handler) else {
        return;
    };
    if action == Action::HttpGet {
        if let Some(http) = handler.get_mut("httpGet").and_then(Value::as_object_mut) {
            http.insert("port".into(), status_port.into());
            http.insert("path".into(), url.into());
            if http.get("scheme").and_then(Value::as_str) == Some("HTTPS") {
                http.insert("scheme".into(), "HTTP".into());
            }
        }
        return;
    }
    let mut http = Map::new();
    http.insert("path".into(), url.into());
    http.insert("port".into(), status_port.into());
    // A null `httpGet` beside the action would otherwise keep its own place.
    handler.shift_remove("httpGet");
    // Take the replaced action's place so the handler reads in the same order as before.
    let index = handler
        .keys()
        .position(|k| k == action.key())
        .unwrap_or(handler.len());
    handler.shift_remove(action.key());
    handler.shift_insert(index, "httpGet".into(), Value::Object(http));
}

/// Whether probes are rewritten for this pod: the annotation
/// `sidecar.istio.io/rewriteAppHTTPProbers` when it parses as Go's `ParseBool`, else the
/// `sidecarInjectorWebhook.rewriteAppHTTPProbe` value.
pub fn rewrite_enabled(annotations: Option<&Map<String, Value>>, values_default: bool) -> bool {
    annotations
        .and_then(|a| a.get(REWRITE_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(parse_bool)
        .unwrap_or(values_default)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::yaml::parse_one;

    /// Istio's `hello-probes.yaml` (pkg/kube/inject/testdata/inject), verbatim.
    const HELLO_PROBES: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
spec:
  replicas: 7
  selector:
    matchLabels:
      app: hello
      tier: backend
      track: stable
  template:
    metadata:
      labels:
        app: hello
        tier: backend
        track: stable
    spec:
      containers:
        - name: hello
          image: "fake.docker.io/google-samples/hello-go-gke:1.0"
          ports:
            - name: http
              containerPort: 80
          livenessProbe:
            httpGet:
              port: http
          readinessProbe:
            httpGet:
              port: 3333
          lifecycle:
            preStop:
              httpGet:
                port: 91
            postStart:
              tcpSocket:
                port: 93
        - name: world
          image: "fake.docker.io/google-samples/hello-go-gke:1.0"
          ports:
            - name: http
              containerPort: 90
          livenessProbe:
            httpGet:
              port: http
          readinessProbe:
            exec:
              command:
                - cat
                - /tmp/healthy
"#;

    /// The `ISTIO_KUBE_APP_PROBERS` value in Istio's `hello-probes.yaml.injected`, verbatim.
    const HELLO_PROBES_ENV: &str = r#"{"/app-health/hello/livez":{"httpGet":{"port":80}},"/app-health/hello/readyz":{"httpGet":{"port":3333}},"/app-health/world/livez":{"httpGet":{"port":90}},"/app-lifecycle/hello/poststartz":{"tcpSocket":{"port":93}},"/app-lifecycle/hello/prestopz":{"httpGet":{"port":91}}}"#;

    /// The application containers in `hello-probes.yaml.injected`, without the `resources: {}`
    /// Go's typed round trip adds.
    const HELLO_PROBES_INJECTED: &str = r#"
- image: fake.docker.io/google-samples/hello-go-gke:1.0
  lifecycle:
    postStart:
      httpGet:
        path: /app-lifecycle/hello/poststartz
        port: 15020
    preStop:
      httpGet:
        path: /app-lifecycle/hello/prestopz
        port: 15020
  livenessProbe:
    httpGet:
      path: /app-health/hello/livez
      port: 15020
  name: hello
  ports:
  - containerPort: 80
    name: http
  readinessProbe:
    httpGet:
      path: /app-health/hello/readyz
      port: 15020
- image: fake.docker.io/google-samples/hello-go-gke:1.0
  livenessProbe:
    httpGet:
      path: /app-health/world/livez
      port: 15020
  name: world
  ports:
  - containerPort: 90
    name: http
  readinessProbe:
    exec:
      command:
      - cat
      - /tmp/healthy
"#;

    fn hello_spec() -> Value {
        let deployment = parse_one(HELLO_PROBES).expect("the embedded example parses");
        deployment["spec"]["template"]["spec"].clone()
    }

    /// A pod spec with one container `app` holding `container` fields.
    fn spec_with(container: Value) -> Value {
        let mut c = container;
        c["name"] = json!("app");
        json!({ "containers": [c] })
    }

    fn env(spec: &Value) -> Option<String> {
        probers_env(app_probers(spec, 15020), None)
    }

    #[test]
    fn hello_probes_env_matches_istio_byte_for_byte() {
        assert_eq!(env(&hello_spec()).as_deref(), Some(HELLO_PROBES_ENV));
    }

    #[test]
    fn hello_probes_rewrite_matches_istio() {
        let mut spec = hello_spec();
        rewrite(&mut spec, 15020);
        let expected = parse_one(HELLO_PROBES_INJECTED).expect("the embedded example parses");
        assert_eq!(spec["containers"], expected);
    }

    #[test]
    fn http_get_keeps_path_host_scheme_headers_in_go_order() {
        let spec = spec_with(json!({
            "readinessProbe": {
                "httpGet": {
                    "httpHeaders": [{"name": "X-A", "value": "1"}],
                    "scheme": "HTTPS",
                    "host": "10.0.0.1",
                    "port": 8443,
                    "path": "/ready",
                },
                "timeoutSeconds": 5,
                "periodSeconds": 7,
            }
        }));
        assert_eq!(
            env(&spec).as_deref(),
            Some(
                r#"{"/app-health/app/readyz":{"httpGet":{"path":"/ready","port":8443,"host":"10.0.0.1","scheme":"HTTPS","httpHeaders":[{"name":"X-A","value":"1"}]},"timeoutSeconds":5}}"#
            )
        );
    }

    #[test]
    fn tcp_socket_and_grpc_are_dumped_with_timeouts() {
        let spec = spec_with(json!({
            "livenessProbe": {"tcpSocket": {"port": 5000, "host": "h"}},
            "startupProbe": {"grpc": {"port": 1234}, "timeoutSeconds": 10},
            "readinessProbe": {"grpc": {"port": 1235, "service": "health"}, "timeoutSeconds": 0},
        }));
        assert_eq!(
            env(&spec).as_deref(),
            Some(concat!(
                r#"{"/app-health/app/livez":{"tcpSocket":{"port":5000,"host":"h"}},"#,
                r#""/app-health/app/readyz":{"grpc":{"port":1235,"service":"health"}},"#,
                r#""/app-health/app/startupz":{"grpc":{"port":1234,"service":null},"timeoutSeconds":10}}"#
            ))
        );
    }

    #[test]
    fn exec_probes_and_handlers_are_not_dumped() {
        let spec = spec_with(json!({
            "livenessProbe": {"exec": {"command": ["true"]}},
            "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}, "postStart": {"sleep": {"seconds": 1}}},
        }));
        assert_eq!(app_probers(&spec, 15020), Map::new());
        assert_eq!(env(&spec), None);
    }

    #[test]
    fn named_ports_resolve_against_the_own_container_only() {
        let spec = json!({
            "containers": [
                {"name": "a", "ports": [{"name": "web", "containerPort": 8080}],
                 "livenessProbe": {"httpGet": {"port": "web"}},
                 "readinessProbe": {"tcpSocket": {"port": "admin"}}},
                {"name": "b", "ports": [{"name": "admin", "containerPort": 9000}],
                 "livenessProbe": {"httpGet": {"port": "web"}},
                 "readinessProbe": {"tcpSocket": {"port": "admin"}}},
            ]
        });
        let probers = app_probers(&spec, 15020);
        let keys: Vec<&str> = probers.keys().map(String::as_str).collect();
        assert_eq!(keys, ["/app-health/a/livez", "/app-health/b/readyz"]);
        assert_eq!(
            probers["/app-health/a/livez"],
            json!({"httpGet": {"port": 8080}})
        );
        assert_eq!(
            probers["/app-health/b/readyz"],
            json!({"tcpSocket": {"port": 9000}})
        );
    }

    #[test]
    fn ports_already_on_the_status_port_are_dropped() {
        let spec = spec_with(json!({
            "livenessProbe": {"httpGet": {"port": 15020, "path": "/app-health/app/livez"}},
            "readinessProbe": {"httpGet": {"port": 8080}},
        }));
        let probers = app_probers(&spec, 15020);
        assert_eq!(probers.len(), 1);
        assert!(probers.contains_key("/app-health/app/readyz"));
        // A differently configured status port is an ordinary application port.
        assert_eq!(app_probers(&spec, 15021).len(), 2);
    }

    #[test]
    fn init_containers_come_first_and_the_proxy_is_skipped() {
        let spec = json!({
            "initContainers": [
                {"name": "istio-proxy", "readinessProbe": {"httpGet": {"port": 15021, "path": "/healthz/ready"}}},
                {"name": "setup", "startupProbe": {"tcpSocket": {"port": 7000}}, "restartPolicy": "Always"},
            ],
            "containers": [
                {"name": "app", "readinessProbe": {"httpGet": {"port": 8080}}},
                {"name": "istio-proxy", "startupProbe": {"httpGet": {"port": 15021}}},
            ]
        });
        let keys: Vec<String> = app_probers(&spec, 15020).keys().cloned().collect();
        assert_eq!(
            keys,
            ["/app-health/setup/startupz", "/app-health/app/readyz"]
        );

        let mut rewritten = spec.clone();
        rewrite(&mut rewritten, 15020);
        assert_eq!(rewritten["initContainers"][0], spec["initContainers"][0]);
        assert_eq!(rewritten["containers"][1], spec["containers"][1]);
        assert_eq!(
            rewritten["initContainers"][1]["startupProbe"],
            json!({"httpGet": {"path": "/app-health/setup/startupz", "port": 15020}})
        );
    }

    #[test]
    fn lifecycle_handlers_are_dumped_without_timeouts() {
        let spec = spec_with(json!({
            "lifecycle": {
                "preStop": {"httpGet": {"port": 91, "path": "/drain"}},
                "postStart": {"tcpSocket": {"port": 93}},
            }
        }));
        let probers = app_probers(&spec, 15020);
        assert_eq!(
            probers["/app-lifecycle/app/prestopz"],
            json!({"httpGet": {"path": "/drain", "port": 91}})
        );
        assert_eq!(
            probers["/app-lifecycle/app/poststartz"],
            json!({"tcpSocket": {"port": 93}})
        );
    }

    #[test]
    fn rewrite_http_get_keeps_host_headers_and_turns_https_into_http() {
        let mut spec = spec_with(json!({
            "livenessProbe": {
                "httpGet": {
                    "path": "/live",
                    "port": "web",
                    "host": "example.internal",
                    "scheme": "HTTPS",
                    "httpHeaders": [{"name": "Host", "value": "x"}],
                },
                "initialDelaySeconds": 3,
                "periodSeconds": 4,
                "timeoutSeconds": 5,
                "successThreshold": 1,
                "failureThreshold": 6,
                "terminationGracePeriodSeconds": 7,
            }
        }));
        rewrite(&mut spec, 15020);
        assert_eq!(
            spec["containers"][0]["livenessProbe"],
            json!({
                "httpGet": {
                    "path": "/app-health/app/livez",
                    "port": 15020,
                    "host": "example.internal",
                    "scheme": "HTTP",
                    "httpHeaders": [{"name": "Host", "value": "x"}],
                },
                "initialDelaySeconds": 3,
                "periodSeconds": 4,
                "timeoutSeconds": 5,
                "successThreshold": 1,
                "failureThreshold": 6,
                "terminationGracePeriodSeconds": 7,
            })
        );
    }

    #[test]
    fn rewrite_replaces_tcp_socket_and_grpc_in_place() {
        let mut spec = spec_with(json!({
            "readinessProbe": {"periodSeconds": 2, "tcpSocket": {"port": 5000}, "timeoutSeconds": 1},
            "startupProbe": {"grpc": {"port": 1234, "service": "s"}, "failureThreshold": 30},
            "lifecycle": {"postStart": {"tcpSocket": {"port": 93}}},
        }));
        rewrite(&mut spec, 15021);
        let c = &spec["containers"][0];
        let readiness = c["readinessProbe"]
            .as_object()
            .expect("probe stays an object");
        let keys: Vec<&str> = readiness.keys().map(String::as_str).collect();
        assert_eq!(keys, ["periodSeconds", "httpGet", "timeoutSeconds"]);
        assert_eq!(
            readiness["httpGet"],
            json!({"path": "/app-health/app/readyz", "port": 15021})
        );
        assert_eq!(
            c["startupProbe"],
            json!({"httpGet": {"path": "/app-health/app/startupz", "port": 15021}, "failureThreshold": 30})
        );
        assert_eq!(
            c["lifecycle"]["postStart"],
            json!({"httpGet": {"path": "/app-lifecycle/app/poststartz", "port": 15021}})
        );
    }

    #[test]
    fn rewrite_leaves_exec_and_unresolved_names_follow_istio() {
        let exec = json!({"exec": {"command": ["cat", "/tmp/ok"]}, "periodSeconds": 3});
        let mut spec = spec_with(json!({
            "readinessProbe": exec.clone(),
            "livenessProbe": {"httpGet": {"port": "missing"}},
        }));
        let probers = app_probers(&spec, 15020);
        rewrite(&mut spec, 15020);
        assert_eq!(spec["containers"][0]["readinessProbe"], exec);
        // No prober for the unresolved name, but the probe is still pointed at the agent.
        assert!(probers.is_empty());
        assert_eq!(
            spec["containers"][0]["livenessProbe"]["httpGet"],
            json!({"port": 15020, "path": "/app-health/app/livez"})
        );
    }

    #[test]
    fn unknown_fields_survive_the_rewrite() {
        let mut spec = json!({
            "futureSpecField": {"a": 1},
            "containers": [{
                "name": "app",
                "futureContainerField": [1, 2],
                "readinessProbe": {
                    "futureProbeField": "x",
                    "httpGet": {"port": 80, "futureActionField": true},
                },
                "livenessProbe": {"tcpSocket": {"port": 81}, "futureProbeField": "y"},
                "lifecycle": {"futureHook": {}, "preStop": {"httpGet": {"port": 82}, "extra": 1}},
            }]
        });
        rewrite(&mut spec, 15020);
        let c = &spec["containers"][0];
        assert_eq!(spec["futureSpecField"], json!({"a": 1}));
        assert_eq!(c["futureContainerField"], json!([1, 2]));
        assert_eq!(c["readinessProbe"]["futureProbeField"], json!("x"));
        assert_eq!(
            c["readinessProbe"]["httpGet"]["futureActionField"],
            json!(true)
        );
        assert_eq!(c["livenessProbe"]["futureProbeField"], json!("y"));
        assert_eq!(c["lifecycle"]["futureHook"], json!({}));
        assert_eq!(c["lifecycle"]["preStop"]["extra"], json!(1));
        assert_eq!(c["lifecycle"]["preStop"]["httpGet"]["port"], json!(15020));
    }

    #[test]
    fn rewrite_is_idempotent() {
        let mut once = hello_spec();
        rewrite(&mut once, 15020);
        let mut twice = once.clone();
        rewrite(&mut twice, 15020);
        assert_eq!(once, twice);
        // The rewritten probes point at the agent, so they carry no probers of their own.
        assert_eq!(env(&once), None);
    }

    #[test]
    fn reinjection_merge_keeps_old_entries() {
        let previous = r#"{"/app-health/hello/livez":{"httpGet":{"port":80}},"/app-health/old/readyz":{"tcpSocket":{"port":1}}}"#;
        let mut new = Map::new();
        new.insert(
            "/app-health/hello/livez".into(),
            json!({"httpGet": {"port": 8080}}),
        );
        new.insert(
            "/app-health/hello/readyz".into(),
            json!({"httpGet": {"port": 3333}}),
        );
        assert_eq!(
            probers_env(new, Some(previous)).as_deref(),
            Some(concat!(
                r#"{"/app-health/hello/livez":{"httpGet":{"port":80}},"#,
                r#""/app-health/hello/readyz":{"httpGet":{"port":3333}},"#,
                r#""/app-health/old/readyz":{"tcpSocket":{"port":1}}}"#
            ))
        );
    }

    #[test]
    fn previous_probers_are_reencoded_like_istio() {
        // Unknown fields drop out and field order follows Go's struct, as istiod's
        // unmarshal-then-marshal does.
        let previous = r#"{"/p":{"timeoutSeconds":3,"extra":1,"httpGet":{"scheme":"HTTPS","port":443,"x":2}}}"#;
        assert_eq!(
            probers_env(Map::new(), Some(previous)).as_deref(),
            Some(r#"{"/p":{"httpGet":{"port":443,"scheme":"HTTPS"},"timeoutSeconds":3}}"#)
        );
    }

    #[test]
    fn invalid_or_empty_previous_values_are_ignored() {
        let mut new = Map::new();
        new.insert("/a".into(), json!({"httpGet": {"port": 1}}));
        let expected = Some(r#"{"/a":{"httpGet":{"port":1}}}"#.to_owned());
        assert_eq!(probers_env(new.clone(), Some("not json")), expected);
        assert_eq!(probers_env(new.clone(), Some("[]")), expected);
        assert_eq!(probers_env(new, Some("{}")), expected);
        assert_eq!(probers_env(Map::new(), Some("{}")), None);
        assert_eq!(probers_env(Map::new(), None), None);
    }

    #[test]
    fn env_escapes_html_characters_like_go() {
        let spec = spec_with(json!({
            "readinessProbe": {"httpGet": {"port": 80, "path": "/h?a=<1>&b=2"}}
        }));
        assert_eq!(
            env(&spec).as_deref(),
            Some(
                r#"{"/app-health/app/readyz":{"httpGet":{"path":"/h?a=\u003c1\u003e\u0026b=2","port":80}}}"#
            )
        );
    }

    #[test]
    fn rewrite_switch_parses_like_go_parse_bool() {
        let with = |v: &str| {
            let mut m = Map::new();
            m.insert(REWRITE_ANNOTATION.into(), json!(v));
            m
        };
        for v in ["1", "t", "T", "TRUE", "true", "True"] {
            assert!(rewrite_enabled(Some(&with(v)), false), "{v}");
        }
        for v in ["0", "f", "F", "FALSE", "false", "False"] {
            assert!(!rewrite_enabled(Some(&with(v)), true), "{v}");
        }
        for v in ["", "yes", "tRUE", " true", "2"] {
            assert!(rewrite_enabled(Some(&with(v)), true), "{v}");
            assert!(!rewrite_enabled(Some(&with(v)), false), "{v}");
        }
        assert!(rewrite_enabled(None, true));
        assert!(!rewrite_enabled(Some(&Map::new()), false));
    }
}
