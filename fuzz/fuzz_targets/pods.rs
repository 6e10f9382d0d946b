//! Pods for the engine targets, built from the fuzz bytes through `arbitrary`, from pieces that
//! reach deep quickly: known container names, probe kinds, ports by number and by name, every
//! annotation the engine reads with values that are valid, nearly valid or hostile, and fields of
//! the wrong type where the engine looks.
// Each target uses part of what is here.
#![allow(dead_code)]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use serde_json::{Map, Value, json};
use sidecar_injector::config::Config;
use sidecar_injector::inject::{self, Workload};

/// Every annotation the engine or its template reads: the validated ones and the others.
fn annotation_names() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| {
        inject::annotations::validated_names()
            .chain(READ_ONLY_ANNOTATIONS.iter().copied())
            .collect()
    })
}

pub fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(Config::embedded)
}

/// Annotations the engine or its template reads without validating them; the validated ones
/// come from the engine's own table (see `annotation_names`).
const READ_ONLY_ANNOTATIONS: &[&str] = &[
    "sidecar.istio.io/inject",
    "inject.istio.io/templates",
    "sidecar.istio.io/proxyImage",
    "sidecar.istio.io/proxyImageType",
    "sidecar.istio.io/rewriteAppHTTPProbers",
    "sidecar.istio.io/agentLogLevel",
    "sidecar.istio.io/logLevel",
    "sidecar.istio.io/componentLogLevel",
    "sidecar.istio.io/bootstrapOverride",
    "sidecar.istio.io/capNetBindService",
    "prometheus.io/scrape",
    "prometheus.io/port",
    "prometheus.io/path",
    "kubectl.kubernetes.io/default-container",
    "kubectl.kubernetes.io/default-logs-container",
    "istio.io/rev",
    "networking.istio.io/tunnel",
];

/// Every label the engine or its template reads.
const LABELS: &[&str] = &[
    "sidecar.istio.io/inject",
    "app",
    "version",
    "app.kubernetes.io/name",
    "app.kubernetes.io/version",
    "service.istio.io/canonical-name",
    "service.istio.io/canonical-revision",
    "security.istio.io/tlsMode",
    "istio.io/rev",
];

/// Values that are valid for some annotation, nearly valid, or try to add structure.
const TEXTS: &[&str] = &[
    "",
    "true",
    "false",
    "True",
    "1",
    "0",
    "REDIRECT",
    "TPROXY",
    "NONE",
    "15020",
    "65536",
    "8080",
    "*",
    "10.0.0.0/8",
    "10.0.0.0/8,fd00::/8",
    "10.0.0.0/33",
    "80,443",
    "80,,0",
    "eth0",
    "100m",
    "1Gi",
    "1.5Gi",
    "2000m",
    "-1",
    "1e3",
    "sidecar",
    "sidecar,grpc-agent",
    "nope",
    "distroless",
    "default",
    "debug",
    "http://localhost:8080/ready",
    "http://localhost:8080/ready;rm -rf /",
    "30",
    "{}",
    "[]",
    "null",
    "{\"data\":{\"emptyDir\":{}}}",
    "{\"data\":{\"mountPath\":\"/data\"}}",
    "{\"containers\":[],\"initContainers\":[]}",
    "{\"initContainers\":[\"istio-init\"],\"containers\":[\"istio-proxy\"],\"volumes\":[\"istio-envoy\",\"istio-data\"],\"imagePullSecrets\":null}",
    "{\"initContainers\":[\"istio-init\",\"istio-proxy\"],\"containers\":[\"app\"]}",
    "holdApplicationUntilProxyStarts: true",
    "{\"holdApplicationUntilProxyStarts\": false, \"statusPort\": 15021}",
    "proxyMetadata: {A: b}",
    "interceptionMode: TPROXY",
    "image: {imageType: distroless}",
    "concurrency: -1",
    "x\nprivileged: true",
    "{{ values.global.hub }}",
    "{% if true %}boom{% endif %}",
    "\"quoted\" and 'single'",
    "- item\n- other",
    "a: b\n  c: [d]",
    "\u{0}\u{7f}é✓",
    "&anchor *alias !!binary",
    "'",
    "\\",
    "${HOME} $(POD_NAME)",
];

const NAMES: &[&str] = &[
    "app",
    "web",
    "istio-proxy",
    "istio-init",
    "istio-validation",
    "a",
    "",
    "sidecar",
];

#[derive(Debug, Arbitrary)]
enum Text {
    Known(u8),
    Free(String),
}

impl Text {
    pub fn get(&self) -> String {
        match self {
            Text::Known(i) => TEXTS[usize::from(*i) % TEXTS.len()].to_owned(),
            Text::Free(s) => s.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
pub enum Name {
    Known(u8),
    Free(String),
}

impl Name {
    pub fn get(&self) -> String {
        match self {
            Name::Known(i) => NAMES[usize::from(*i) % NAMES.len()].to_owned(),
            Name::Free(s) => s.clone(),
        }
    }
}

/// Any JSON, for fields of unexpected type or content.
#[derive(Debug, Arbitrary)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Text),
    List(Vec<Json>),
    Object(Vec<(Name, Json)>),
}

impl Json {
    fn get(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Int(n) => Value::from(*n),
            Json::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Json::Str(t) => Value::String(t.get()),
            Json::List(items) => Value::Array(items.iter().map(Json::get).collect()),
            Json::Object(entries) => {
                Value::Object(entries.iter().map(|(k, v)| (k.get(), v.get())).collect())
            }
        }
    }
}

#[derive(Debug, Arbitrary)]
enum PortRef {
    Number(i32),
    Name(Name),
    Odd(Json),
}

impl PortRef {
    fn get(&self) -> Value {
        match self {
            PortRef::Number(n) => Value::from(*n),
            PortRef::Name(n) => Value::String(n.get()),
            PortRef::Odd(j) => j.get(),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Handler {
    Http {
        port: PortRef,
        path: Option<Text>,
        https: bool,
        headers: Vec<(Name, Text)>,
    },
    Tcp(PortRef),
    Grpc(i32, Option<Name>),
    Exec(Vec<Text>),
    Sleep(i64),
    Odd(Json),
}

impl Handler {
    fn get(&self) -> Value {
        match self {
            Handler::Http {
                port,
                path,
                https,
                headers,
            } => {
                let mut h = json!({"port": port.get()});
                if let Some(path) = path {
                    h["path"] = Value::String(path.get());
                }
                if *https {
                    h["scheme"] = json!("HTTPS");
                }
                if !headers.is_empty() {
                    h["httpHeaders"] = headers
                        .iter()
                        .map(|(n, v)| json!({"name": n.get(), "value": v.get()}))
                        .collect();
                }
                json!({"httpGet": h})
            }
            Handler::Tcp(port) => json!({"tcpSocket": {"port": port.get()}}),
            Handler::Grpc(port, service) => {
                let mut g = json!({"port": port});
                if let Some(s) = service {
                    g["service"] = Value::String(s.get());
                }
                json!({"grpc": g})
            }
            Handler::Exec(cmd) => {
                json!({"exec": {"command": cmd.iter().map(Text::get).collect::<Vec<_>>()}})
            }
            Handler::Sleep(s) => json!({"sleep": {"seconds": s}}),
            Handler::Odd(j) => j.get(),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Port {
    number: i32,
    name: Option<Name>,
    udp: bool,
}

#[derive(Debug, Arbitrary)]
struct Container {
    name: Name,
    image: Option<Text>,
    ports: Vec<Port>,
    env: Vec<(Name, Text)>,
    readiness: Option<Handler>,
    liveness: Option<Handler>,
    startup: Option<Handler>,
    pre_stop: Option<Handler>,
    post_start: Option<Handler>,
    restart_always: bool,
    /// Fields by name, some the engine reads (`ports`, `env`, `securityContext`, ...).
    extra: Vec<(FieldName, Json)>,
}

#[derive(Debug, Arbitrary)]
enum FieldName {
    Known(u8),
    Free(String),
}

/// Keys the engine reads somewhere in a pod, for fields of the wrong type.
const FIELDS: &[&str] = &[
    "containers",
    "initContainers",
    "volumes",
    "ports",
    "env",
    "name",
    "image",
    "securityContext",
    "lifecycle",
    "readinessProbe",
    "livenessProbe",
    "startupProbe",
    "restartPolicy",
    "resources",
    "volumeMounts",
    "annotations",
    "labels",
    "namespace",
    "ownerReferences",
    "hostNetwork",
    "nodeName",
    "imagePullSecrets",
    "dnsConfig",
    "serviceAccountName",
    "x-unknown",
];

impl FieldName {
    pub fn get(&self) -> String {
        match self {
            FieldName::Known(i) => FIELDS[usize::from(*i) % FIELDS.len()].to_owned(),
            FieldName::Free(s) => s.clone(),
        }
    }
}

impl Container {
    fn get(&self) -> Value {
        let mut c = Map::new();
        c.insert("name".into(), Value::String(self.name.get()));
        if let Some(image) = &self.image {
            c.insert("image".into(), Value::String(image.get()));
        }
        if !self.ports.is_empty() {
            let ports = self
                .ports
                .iter()
                .map(|p| {
                    let mut port = json!({"containerPort": p.number});
                    if let Some(name) = &p.name {
                        port["name"] = Value::String(name.get());
                    }
                    if p.udp {
                        port["protocol"] = json!("UDP");
                    }
                    port
                })
                .collect();
            c.insert("ports".into(), Value::Array(ports));
        }
        if !self.env.is_empty() {
            let env = self
                .env
                .iter()
                .map(|(n, v)| json!({"name": n.get(), "value": v.get()}))
                .collect();
            c.insert("env".into(), Value::Array(env));
        }
        for (key, probe) in [
            ("readinessProbe", &self.readiness),
            ("livenessProbe", &self.liveness),
            ("startupProbe", &self.startup),
        ] {
            if let Some(probe) = probe {
                c.insert(key.into(), probe.get());
            }
        }
        let mut lifecycle = Map::new();
        if let Some(h) = &self.pre_stop {
            lifecycle.insert("preStop".into(), h.get());
        }
        if let Some(h) = &self.post_start {
            lifecycle.insert("postStart".into(), h.get());
        }
        if !lifecycle.is_empty() {
            c.insert("lifecycle".into(), Value::Object(lifecycle));
        }
        if self.restart_always {
            c.insert("restartPolicy".into(), json!("Always"));
        }
        for (k, v) in &self.extra {
            c.insert(k.get(), v.get());
        }
        Value::Object(c)
    }
}

#[derive(Debug, Arbitrary)]
enum Owner {
    ReplicaSet(Name),
    Job(Name),
    Odd(Json),
}

#[derive(Debug, Arbitrary)]
pub enum WorkloadKind {
    None,
    Deployment(Name),
    Job(Name),
    CronJob(Name),
}

#[derive(Debug, Arbitrary)]
pub struct Input {
    pub native: bool,
    pub request_namespace: Option<Name>,
    namespace: Option<Name>,
    name: Option<Name>,
    generate_name: Option<Name>,
    labels: Vec<(u8, Text)>,
    annotations: Vec<(u8, Text)>,
    containers: Vec<Container>,
    init_containers: Vec<Container>,
    volumes: Vec<(Name, Json)>,
    host_network: Option<bool>,
    owner: Option<Owner>,
    pub workload: WorkloadKind,
    /// Fields by name at the pod, metadata and spec levels.
    pod_extra: Vec<(FieldName, Json)>,
    metadata_extra: Vec<(FieldName, Json)>,
    spec_extra: Vec<(FieldName, Json)>,
}

pub fn pod(input: &Input) -> Value {
    let mut metadata = Map::new();
    if let Some(ns) = &input.namespace {
        metadata.insert("namespace".into(), Value::String(ns.get()));
    }
    if let Some(name) = &input.name {
        metadata.insert("name".into(), Value::String(name.get()));
    }
    if let Some(name) = &input.generate_name {
        metadata.insert("generateName".into(), Value::String(name.get()));
    }
    let pick = |list: &[&str], i: u8| list[usize::from(i) % list.len()].to_owned();
    let annotations = annotation_names();
    if !input.labels.is_empty() {
        let labels = input
            .labels
            .iter()
            .map(|(k, v)| (pick(LABELS, *k), Value::String(v.get())))
            .collect();
        metadata.insert("labels".into(), Value::Object(labels));
    }
    if !input.annotations.is_empty() {
        let annotations = input
            .annotations
            .iter()
            .map(|(k, v)| (pick(annotations, *k), Value::String(v.get())))
            .collect();
        metadata.insert("annotations".into(), Value::Object(annotations));
    }
    match &input.owner {
        None => {}
        Some(Owner::ReplicaSet(n)) => {
            metadata.insert(
                "ownerReferences".into(),
                json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": n.get(), "controller": true}]),
            );
        }
        Some(Owner::Job(n)) => {
            metadata.insert(
                "ownerReferences".into(),
                json!([{"apiVersion": "batch/v1", "kind": "Job", "name": n.get(), "controller": true}]),
            );
        }
        Some(Owner::Odd(j)) => {
            metadata.insert("ownerReferences".into(), j.get());
        }
    }
    for (k, v) in &input.metadata_extra {
        metadata.insert(k.get(), v.get());
    }
    let mut spec = Map::new();
    spec.insert(
        "containers".into(),
        input.containers.iter().map(Container::get).collect(),
    );
    if !input.init_containers.is_empty() {
        spec.insert(
            "initContainers".into(),
            input.init_containers.iter().map(Container::get).collect(),
        );
    }
    if !input.volumes.is_empty() {
        let volumes = input
            .volumes
            .iter()
            .map(|(n, source)| json!({"name": n.get(), "emptyDir": source.get()}))
            .collect();
        spec.insert("volumes".into(), Value::Array(volumes));
    }
    if let Some(host) = input.host_network {
        spec.insert("hostNetwork".into(), Value::Bool(host));
    }
    for (k, v) in &input.spec_extra {
        spec.insert(k.get(), v.get());
    }
    let mut pod = Map::new();
    pod.insert("apiVersion".into(), json!("v1"));
    pod.insert("kind".into(), json!("Pod"));
    pod.insert("metadata".into(), Value::Object(metadata));
    pod.insert("spec".into(), Value::Object(spec));
    for (k, v) in &input.pod_extra {
        pod.insert(k.get(), v.get());
    }
    Value::Object(pod)
}

pub fn workload(kind: &WorkloadKind) -> Option<Workload> {
    let (kind, name, api_version) = match kind {
        WorkloadKind::None => return None,
        WorkloadKind::Deployment(n) => ("Deployment", n, "apps/v1"),
        WorkloadKind::Job(n) => ("Job", n, "batch/v1"),
        WorkloadKind::CronJob(n) => ("CronJob", n, "batch/v1"),
    };
    Some(Workload {
        kind: kind.to_owned(),
        name: name.get(),
        api_version: api_version.to_owned(),
    })
}
