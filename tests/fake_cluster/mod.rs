//! A stand-in Kubernetes API server for the `outdated` and `rollout` tests: axum over plain
//! HTTP on port 0, a kubeconfig pointing at it, and kube-rs's real client against it.
//!
//! It serves Kubernetes JSON the way the API server does for what the commands use: list
//! (paged with `limit` and `continue`, `fieldSelector=metadata.name=`, the metadata-only
//! `PartialObjectMetadataList` form), get (also metadata-only), strategic-merge and merge
//! patches, and watch (newline-delimited events from a resourceVersion, closed after
//! `timeoutSeconds`). Each change bumps a cluster-wide resourceVersion, and a spec change bumps
//! the object's generation.
//!
//! It also plays the controllers: after a change to a Deployment's, StatefulSet's or
//! DaemonSet's pod template, a task replaces its pods one per `step` (the new pods injected by
//! the engine under the cluster's current configuration, as the webhook would, and stored as the
//! API server stores them) and advances the status as the controllers do, until the rollout is
//! complete. A workload can instead be made to fail (`ProgressDeadlineExceeded`) or to hang.
//! Time is tokio's, so a test on a paused clock runs hours of rollouts in milliseconds.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sidecar_injector::config::Config;
use tokio::sync::broadcast;

use crate::apiserver::{self, Webhook};

/// Where objects of one resource live: `("api/v1", "pods")`, `("apis/apps/v1", "deployments")`.
type Resource = (String, String);
/// (namespace, name); namespace empty for cluster-scoped objects.
type Key = (String, String);

/// What a workload's controller does after its template changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Replaces every pod and completes.
    Succeed,
    /// Replaces one pod, which never becomes ready, then reports ProgressDeadlineExceeded.
    Fail,
    /// Observes the change and does nothing more.
    Hang,
}

/// A patch the server received.
#[derive(Debug, Clone, PartialEq)]
pub struct Patched {
    /// Since the server started, on tokio's clock.
    pub at: Duration,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub content_type: String,
    pub body: Value,
}

#[derive(Debug, Clone)]
struct WatchEvent {
    rv: u64,
    resource: Resource,
    namespace: String,
    name: String,
    kind: &'static str,
    object: Value,
}

struct State0 {
    rv: u64,
    objects: HashMap<Resource, BTreeMap<Key, Value>>,
    log: Vec<WatchEvent>,
    patches: Vec<Patched>,
    behaviour: HashMap<(String, String, String), Behaviour>,
    /// Rollouts under way (template changed, not yet complete), and the most at once.
    rolling: usize,
    most_rolling: usize,
    pod_counter: usize,
    /// When set, requests are authorized against these rules, as RBAC would.
    rbac: Option<Rbac>,
}

/// RBAC rules granted to the client: ClusterRoles (bound cluster-wide) and Roles (bound in
/// their namespace).
#[derive(Debug, Clone, Default)]
pub struct Rbac {
    cluster: Vec<Value>,
    namespaced: Vec<(String, Value)>,
}

impl Rbac {
    /// From ClusterRole and Role documents.
    pub fn from_roles(docs: &[Value]) -> Rbac {
        let mut rbac = Rbac::default();
        for doc in docs {
            let rules = doc["rules"].as_array().cloned().unwrap_or_default();
            match doc["kind"].as_str() {
                Some("ClusterRole") => rbac.cluster.extend(rules),
                Some("Role") => {
                    let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
                    rbac.namespaced
                        .extend(rules.into_iter().map(|r| (ns.to_string(), r)));
                }
                _ => {}
            }
        }
        rbac
    }

    fn allows(
        &self,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: &str,
        name: Option<&str>,
    ) -> bool {
        let has = |list: &Value, want: &str| {
            list.as_array()
                .is_some_and(|l| l.iter().any(|v| v == want || v == "*"))
        };
        let matches = |rule: &Value| {
            has(&rule["verbs"], verb)
                && has(&rule["apiGroups"], group)
                && has(&rule["resources"], resource)
                && match rule["resourceNames"].as_array() {
                    None => true,
                    Some(names) if names.is_empty() => true,
                    Some(names) => name.is_some_and(|n| names.iter().any(|x| x == n)),
                }
        };
        self.cluster.iter().any(matches)
            || (!namespace.is_empty()
                && self
                    .namespaced
                    .iter()
                    .any(|(ns, rule)| ns == namespace && matches(rule)))
    }
}

/// The stand-in cluster.
#[derive(Clone)]
pub struct Cluster {
    state: Arc<Mutex<State0>>,
    events: broadcast::Sender<WatchEvent>,
    start: tokio::time::Instant,
    /// The injector's configuration new pods are injected with.
    pub config: Arc<Config>,
    pub native: bool,
    /// How long the controller takes per pod.
    pub step: Duration,
    /// How long a failing Deployment takes to exceed its progress deadline.
    pub deadline: Duration,
    pub addr: SocketAddr,
}

fn kind_of(resource: &str) -> &'static str {
    match resource {
        "pods" => "Pod",
        "namespaces" => "Namespace",
        "nodes" => "Node",
        "configmaps" => "ConfigMap",
        "deployments" => "Deployment",
        "replicasets" => "ReplicaSet",
        "statefulsets" => "StatefulSet",
        "daemonsets" => "DaemonSet",
        "jobs" => "Job",
        "cronjobs" => "CronJob",
        _ => "Unknown",
    }
}

fn group_version(resource: &str) -> &'static str {
    match resource {
        "deployments" | "replicasets" | "statefulsets" | "daemonsets" => "apis/apps/v1",
        "jobs" | "cronjobs" => "apis/batch/v1",
        _ => "api/v1",
    }
}

fn api_version(gv: &str) -> String {
    gv.strip_prefix("api/")
        .or_else(|| gv.strip_prefix("apis/"))
        .unwrap_or(gv)
        .to_string()
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                      "status": "Failure", "message": message, "reason": reason, "code": code});
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

fn metadata_only(headers: &HeaderMap) -> bool {
    headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"))
}

/// The path, split: (group-version, namespace, resource, name).
fn route(path: &str) -> Option<(String, String, String, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("api/v1".to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("apis/{g}/{v}"), rest),
        _ => return None,
    };
    match rest {
        [resource] => Some((gv, String::new(), (*resource).into(), None)),
        ["namespaces", name] => {
            Some((gv, String::new(), "namespaces".into(), Some((*name).into())))
        }
        ["namespaces", ns, resource] => Some((gv, (*ns).into(), (*resource).into(), None)),
        ["namespaces", ns, resource, name] => {
            Some((gv, (*ns).into(), (*resource).into(), Some((*name).into())))
        }
        [resource, name] => Some((gv, String::new(), (*resource).into(), Some((*name).into()))),
        _ => None,
    }
}

impl Cluster {
    /// Starts the server.
    pub async fn start(config: Config, native: bool, step: Duration) -> Cluster {
        let (events, _) = broadcast::channel(4096);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cluster = Cluster {
            state: Arc::new(Mutex::new(State0 {
                rv: 100,
                objects: HashMap::new(),
                log: Vec::new(),
                patches: Vec::new(),
                behaviour: HashMap::new(),
                rolling: 0,
                most_rolling: 0,
                pod_counter: 0,
                rbac: None,
            })),
            events,
            start: tokio::time::Instant::now(),
            config: Arc::new(config),
            native,
            step,
            deadline: step * 10,
            addr,
        };
        let router = Router::new().fallback(handle).with_state(cluster.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        cluster
    }

    /// A kubeconfig file for the server, written into `dir`.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig_text()).unwrap();
        path
    }

    pub fn kubeconfig_text(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             users:\n- name: fake\n  user:\n    token: fake-token\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: shop\n\
             current-context: fake\n",
            self.addr
        )
    }

    /// A kube client for the server (without touching `KUBECONFIG`, which other tests share).
    pub async fn client(&self) -> kube::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_text()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Stores (creates or replaces) an object, as a controller or a user would.
    pub fn put(&self, object: Value) {
        let kind = object["kind"].as_str().unwrap_or("").to_string();
        let resource = match kind.as_str() {
            "Pod" => "pods",
            "Namespace" => "namespaces",
            "Node" => "nodes",
            "ConfigMap" => "configmaps",
            "Deployment" => "deployments",
            "ReplicaSet" => "replicasets",
            "StatefulSet" => "statefulsets",
            "DaemonSet" => "daemonsets",
            "Job" => "jobs",
            "CronJob" => "cronjobs",
            other => panic!("unknown kind {other}"),
        };
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        let mut s = self.state.lock().unwrap();
        self.store(&mut s, resource, &namespace, &name, object);
    }

    fn store(
        &self,
        s: &mut State0,
        resource: &str,
        namespace: &str,
        name: &str,
        mut object: Value,
    ) {
        s.rv += 1;
        let rv = s.rv;
        let gv = group_version(resource);
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        object["apiVersion"] = json!(api_version(gv));
        object["kind"] = json!(kind_of(resource));
        let key = (gv.to_string(), resource.to_string());
        let map = s.objects.entry(key.clone()).or_default();
        let kind = if map.contains_key(&(namespace.to_string(), name.to_string())) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        map.insert((namespace.into(), name.into()), object.clone());
        self.emit(s, key, namespace, name, kind, object);
    }

    fn remove(&self, s: &mut State0, resource: &str, namespace: &str, name: &str) {
        let key = (group_version(resource).to_string(), resource.to_string());
        let Some(mut object) = s
            .objects
            .get_mut(&key)
            .and_then(|m| m.remove(&(namespace.to_string(), name.to_string())))
        else {
            return;
        };
        s.rv += 1;
        object["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        self.emit(s, key, namespace, name, "DELETED", object);
    }

    fn emit(
        &self,
        s: &mut State0,
        resource: Resource,
        ns: &str,
        name: &str,
        kind: &'static str,
        object: Value,
    ) {
        let event = WatchEvent {
            rv: s.rv,
            resource,
            namespace: ns.into(),
            name: name.into(),
            kind,
            object,
        };
        s.log.push(event.clone());
        let _ = self.events.send(event);
    }

    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let s = self.state.lock().unwrap();
        s.objects
            .get(&(group_version(resource).to_string(), resource.to_string()))?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every object of a resource.
    pub fn all(&self, resource: &str) -> Vec<Value> {
        let s = self.state.lock().unwrap();
        s.objects
            .get(&(group_version(resource).to_string(), resource.to_string()))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn patches(&self) -> Vec<Patched> {
        self.state.lock().unwrap().patches.clone()
    }

    /// The most rollouts under way at once so far.
    pub fn most_rolling(&self) -> usize {
        self.state.lock().unwrap().most_rolling
    }

    /// Authorizes every later request against `rbac` (403 otherwise, with the API server's
    /// message).
    pub fn enforce(&self, rbac: Rbac) {
        self.state.lock().unwrap().rbac = Some(rbac);
    }

    pub fn behave(&self, kind: &str, namespace: &str, name: &str, b: Behaviour) {
        self.state
            .lock()
            .unwrap()
            .behaviour
            .insert((kind.into(), namespace.into(), name.into()), b);
    }

    fn behaviour(&self, kind: &str, namespace: &str, name: &str) -> Behaviour {
        self.state
            .lock()
            .unwrap()
            .behaviour
            .get(&(kind.to_string(), namespace.to_string(), name.to_string()))
            .copied()
            .unwrap_or(Behaviour::Succeed)
    }

    /// A pod of `workload` injected under `config` (`None`: uninjected) and stored, owned as
    /// its controller owns it (`hash`: the template revision).
    /// `name`: the pod's name (a StatefulSet's pod keeps its name when replaced).
    pub fn add_pod(
        &self,
        workload: &Value,
        hash: &str,
        config: Option<&Config>,
        native: bool,
        name: Option<&str>,
    ) -> String {
        let n = {
            let mut s = self.state.lock().unwrap();
            s.pod_counter += 1;
            s.pod_counter
        };
        let mut pod = apiserver::pod_of_revision(workload, n, hash);
        if workload["kind"] == "StatefulSet" {
            let base = workload["metadata"]["name"].as_str().unwrap();
            let ordinal = self.pods_of(workload).len();
            pod["metadata"]["name"] = json!(format!("{base}-{ordinal}"));
        }
        if let Some(name) = name {
            pod["metadata"]["name"] = json!(name);
        }
        let pod = apiserver::create(pod, config.map(|config| Webhook { config, native }), false);
        let name = pod["metadata"]["name"].as_str().unwrap().to_string();
        self.put(pod);
        name
    }

    /// The pods a workload's controller owns now.
    pub fn pods_of(&self, workload: &Value) -> Vec<Value> {
        let kind = workload["kind"].as_str().unwrap_or("");
        let name = workload["metadata"]["name"].as_str().unwrap_or("");
        let ns = workload["metadata"]["namespace"].as_str().unwrap_or("");
        let owner_names: Vec<String> = match kind {
            "Deployment" => self
                .all("replicasets")
                .into_iter()
                .filter(|rs| {
                    rs["metadata"]["namespace"] == ns
                        && rs["metadata"]["ownerReferences"][0]["name"] == name
                })
                .map(|rs| rs["metadata"]["name"].as_str().unwrap().to_string())
                .collect(),
            _ => vec![name.to_string()],
        };
        self.all("pods")
            .into_iter()
            .filter(|p| {
                p["metadata"]["namespace"] == ns
                    && p["metadata"]["ownerReferences"][0]["name"]
                        .as_str()
                        .is_some_and(|o| owner_names.iter().any(|n| n == o))
            })
            .collect()
    }

    /// A ReplicaSet of a Deployment for template revision `hash`.
    pub fn add_replica_set(&self, deployment: &Value, hash: &str) {
        let name = deployment["metadata"]["name"].as_str().unwrap();
        let ns = deployment["metadata"]["namespace"].as_str().unwrap();
        self.put(json!({
            "kind": "ReplicaSet",
            "metadata": {"name": format!("{name}-{hash}"), "namespace": ns,
                "labels": {"pod-template-hash": hash},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                    "uid": format!("uid-{name}"), "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"selector": deployment["spec"]["selector"], "template": deployment["spec"]["template"]}
        }));
    }

    /// A workload with `replicas` pods injected under `old`, its status complete.
    pub fn add_workload(&self, mut workload: Value, old: Option<&Config>) {
        let kind = workload["kind"].as_str().unwrap().to_string();
        workload["metadata"]["generation"] = json!(1);
        let hash = "5c8f7b9d4";
        let replicas = match kind.as_str() {
            "DaemonSet" => self.all("nodes").len().max(1),
            _ => workload["spec"]["replicas"].as_u64().unwrap_or(1) as usize,
        };
        if kind == "Deployment" {
            self.add_replica_set(&workload, hash);
        }
        for _ in 0..replicas {
            self.add_pod(&workload, hash, old, self.native, None);
        }
        workload["status"] = complete_status(&kind, replicas as i64, 1, &format!("r{hash}"));
        self.put(workload);
    }

    /// The controller, after `name`'s pod template changed.
    fn roll(&self, resource: String, namespace: String, name: String) {
        let cluster = self.clone();
        tokio::spawn(async move {
            let Some(workload) = cluster.get(&resource, &namespace, &name) else {
                return;
            };
            let kind = workload["kind"].as_str().unwrap().to_string();
            let generation = workload["metadata"]["generation"].as_i64().unwrap_or(1);
            let behaviour = cluster.behaviour(&kind, &namespace, &name);
            {
                let mut s = cluster.state.lock().unwrap();
                s.rolling += 1;
                s.most_rolling = s.most_rolling.max(s.rolling);
            }
            let replicas = match kind.as_str() {
                "DaemonSet" => cluster.all("nodes").len().max(1) as i64,
                _ => workload["spec"]["replicas"].as_i64().unwrap_or(1),
            };
            let hash = format!("{:x}", 0x6a5b_0000u64 + generation as u64);
            let revision = format!("r{hash}");
            let set_status = |updated: i64, extra: Value| {
                let mut s = cluster.state.lock().unwrap();
                let Some(mut w) = s
                    .objects
                    .get(&(group_version(&resource).to_string(), resource.clone()))
                    .and_then(|m| m.get(&(namespace.clone(), name.clone())))
                    .cloned()
                else {
                    return;
                };
                // A newer template took over: this controller pass is stale.
                if w["metadata"]["generation"].as_i64() != Some(generation) {
                    return;
                }
                w["status"] = rolling_status(&kind, replicas, updated, generation, &revision);
                if let Value::Object(extra) = extra {
                    for (k, v) in extra {
                        w["status"][k] = v;
                    }
                }
                cluster.store(&mut s, &resource, &namespace, &name, w);
            };
            tokio::time::sleep(cluster.step).await;
            if kind == "Deployment" {
                cluster.add_replica_set(&workload, &hash);
            }
            set_status(0, json!({}));
            match behaviour {
                Behaviour::Hang => return,
                Behaviour::Fail => {
                    // One new pod that never becomes ready; the old ones stay.
                    let stuck = json!({"replicas": replicas + 1, "readyReplicas": replicas,
                        "availableReplicas": replicas, "unavailableReplicas": 1});
                    tokio::time::sleep(cluster.step).await;
                    set_status(1, stuck.clone());
                    tokio::time::sleep(cluster.deadline).await;
                    let mut failed = stuck;
                    failed["conditions"] = json!([{"type": "Progressing", "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": format!("ReplicaSet \"{name}-{hash}\" has timed out progressing.")}]);
                    set_status(1, failed);
                    cluster.state.lock().unwrap().rolling -= 1;
                    return;
                }
                Behaviour::Succeed => {}
            }
            let old: Vec<Value> = cluster.pods_of(&workload);
            for i in 0..replicas {
                tokio::time::sleep(cluster.step).await;
                let mut keep_name = None;
                if let Some(pod) = old.get(i as usize) {
                    let pod_name = pod["metadata"]["name"].as_str().unwrap().to_string();
                    let mut s = cluster.state.lock().unwrap();
                    cluster.remove(&mut s, "pods", &namespace, &pod_name);
                    if kind == "StatefulSet" {
                        keep_name = Some(pod_name);
                    }
                }
                let current = cluster
                    .get(&resource, &namespace, &name)
                    .unwrap_or(workload.clone());
                cluster.add_pod(
                    &current,
                    &hash,
                    Some(&cluster.config),
                    cluster.native,
                    keep_name.as_deref(),
                );
                set_status(i + 1, json!({}));
            }
            {
                let mut s = cluster.state.lock().unwrap();
                if let Some(mut w) = s
                    .objects
                    .get(&(group_version(&resource).to_string(), resource.clone()))
                    .and_then(|m| m.get(&(namespace.clone(), name.clone())))
                    .cloned()
                    && w["metadata"]["generation"].as_i64() == Some(generation)
                {
                    w["status"] = complete_status(&kind, replicas, generation, &revision);
                    cluster.store(&mut s, &resource, &namespace, &name, w);
                }
                s.rolling -= 1;
            }
        });
    }
}

/// The status of a workload whose rollout is complete.
pub fn complete_status(kind: &str, replicas: i64, generation: i64, revision: &str) -> Value {
    match kind {
        "Deployment" => json!({"observedGeneration": generation, "replicas": replicas,
            "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                           {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]}),
        "StatefulSet" => json!({"observedGeneration": generation, "replicas": replicas,
            "readyReplicas": replicas, "currentReplicas": replicas, "updatedReplicas": replicas,
            "availableReplicas": replicas, "currentRevision": revision, "updateRevision": revision}),
        _ => json!({"observedGeneration": generation, "desiredNumberScheduled": replicas,
            "currentNumberScheduled": replicas, "numberMisscheduled": 0, "numberReady": replicas,
            "updatedNumberScheduled": replicas, "numberAvailable": replicas}),
    }
}

/// The status while `updated` of `replicas` pods run the new template.
fn rolling_status(
    kind: &str,
    replicas: i64,
    updated: i64,
    generation: i64,
    revision: &str,
) -> Value {
    match kind {
        "Deployment" => json!({"observedGeneration": generation,
            "replicas": replicas + i64::from(updated < replicas),
            "updatedReplicas": updated, "readyReplicas": replicas,
            "availableReplicas": if updated < replicas { replicas - 1 } else { replicas },
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                           {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]}),
        "StatefulSet" => json!({"observedGeneration": generation, "replicas": replicas,
            "readyReplicas": replicas - 1, "currentReplicas": replicas - updated, "updatedReplicas": updated,
            "currentRevision": "old", "updateRevision": revision}),
        _ => json!({"observedGeneration": generation, "desiredNumberScheduled": replicas,
            "currentNumberScheduled": replicas, "numberMisscheduled": 0, "numberReady": replicas - 1,
            "updatedNumberScheduled": updated, "numberAvailable": replicas - 1}),
    }
}

#[derive(Debug, serde::Deserialize, Default)]
struct Params {
    #[serde(rename = "fieldSelector")]
    field_selector: Option<String>,
    limit: Option<usize>,
    #[serde(rename = "continue")]
    continue_: Option<String>,
    watch: Option<String>,
    #[serde(rename = "resourceVersion")]
    resource_version: Option<String>,
    #[serde(rename = "timeoutSeconds")]
    timeout_seconds: Option<u64>,
}

fn selected(params: &Params, name: &str) -> bool {
    match params
        .field_selector
        .as_deref()
        .and_then(|f| f.strip_prefix("metadata.name="))
    {
        Some(want) => want == name,
        None => true,
    }
}

fn partial(object: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
           "metadata": object["metadata"]})
}

async fn handle(
    State(cluster): State<Cluster>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(params): Query<Params>,
    body: Bytes,
) -> Response {
    let Some((gv, namespace, resource, name)) = route(uri.path()) else {
        return status(
            404,
            "NotFound",
            format!("the server could not find {}", uri.path()),
        );
    };
    let key = (gv.clone(), resource.clone());
    let watching = params
        .watch
        .as_deref()
        .is_some_and(|w| w == "true" || w == "1");
    let verb = match (&method, &name) {
        (&Method::GET, Some(_)) => "get",
        (&Method::GET, None) if watching => "watch",
        (&Method::GET, None) => "list",
        (&Method::PATCH, _) => "patch",
        _ => "other",
    };
    let group = gv
        .strip_prefix("apis/")
        .and_then(|g| g.split('/').next())
        .unwrap_or("");
    let rbac = cluster.state.lock().unwrap().rbac.clone();
    if let Some(rbac) = rbac
        && !rbac.allows(verb, group, &resource, &namespace, name.as_deref())
    {
        let scope = if namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace \"{namespace}\"")
        };
        return status(
            403,
            "Forbidden",
            format!(
                "{resource} is forbidden: User \"fake\" cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}"
            ),
        );
    }
    match (method, name) {
        (Method::GET, Some(name)) => {
            let object = cluster
                .state
                .lock()
                .unwrap()
                .objects
                .get(&key)
                .and_then(|m| m.get(&(namespace.clone(), name.clone())))
                .cloned();
            match object {
                Some(o) if metadata_only(&headers) => axum::Json(partial(&o)).into_response(),
                Some(o) => axum::Json(o).into_response(),
                None => status(404, "NotFound", format!("{resource} {name:?} not found")),
            }
        }
        (Method::PATCH, Some(name)) => {
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if !matches!(
                content_type.as_str(),
                "application/strategic-merge-patch+json" | "application/merge-patch+json"
            ) {
                return status(
                    415,
                    "UnsupportedMediaType",
                    format!("patch type {content_type}"),
                );
            }
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return status(400, "BadRequest", "invalid patch".into());
            };
            let mut s = cluster.state.lock().unwrap();
            let Some(mut object) = s
                .objects
                .get(&key)
                .and_then(|m| m.get(&(namespace.clone(), name.clone())))
                .cloned()
            else {
                return status(404, "NotFound", format!("{resource} {name:?} not found"));
            };
            let before = object["spec"].clone();
            json_patch::merge(&mut object, &patch);
            let template_changed = object["spec"]["template"] != before["template"];
            if object["spec"] != before {
                let g = object["metadata"]["generation"].as_i64().unwrap_or(1);
                object["metadata"]["generation"] = json!(g + 1);
            }
            s.patches.push(Patched {
                at: cluster.start.elapsed(),
                resource: resource.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
                content_type,
                body: patch,
            });
            cluster.store(&mut s, &resource, &namespace, &name, object.clone());
            drop(s);
            if template_changed
                && matches!(
                    resource.as_str(),
                    "deployments" | "statefulsets" | "daemonsets"
                )
            {
                cluster.roll(resource, namespace, name);
            }
            let stored = cluster
                .state
                .lock()
                .unwrap()
                .objects
                .get(&key)
                .and_then(|m| {
                    m.get(&(
                        object["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                        object["metadata"]["name"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                    ))
                })
                .cloned()
                .unwrap_or(object);
            axum::Json(stored).into_response()
        }
        (Method::GET, None)
            if params
                .watch
                .as_deref()
                .is_some_and(|w| w == "true" || w == "1") =>
        {
            watch(cluster, key, namespace, params).await
        }
        (Method::GET, None) => list(&cluster, &key, &namespace, &params, metadata_only(&headers)),
        (m, _) => status(405, "MethodNotAllowed", format!("{m} is not served here")),
    }
}

fn list(
    cluster: &Cluster,
    key: &Resource,
    namespace: &str,
    params: &Params,
    partial_items: bool,
) -> Response {
    let s = cluster.state.lock().unwrap();
    let all: Vec<Value> = s
        .objects
        .get(key)
        .map(|m| {
            m.iter()
                .filter(|((ns, name), _)| {
                    (namespace.is_empty() || ns == namespace) && selected(params, name)
                })
                .map(|(_, o)| o.clone())
                .collect()
        })
        .unwrap_or_default();
    let offset: usize = params
        .continue_
        .as_deref()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let limit = params.limit.unwrap_or(usize::MAX).max(1);
    let page: Vec<Value> = all.iter().skip(offset).take(limit).cloned().collect();
    let next = offset + page.len();
    let mut metadata = json!({"resourceVersion": s.rv.to_string()});
    if next < all.len() {
        metadata["continue"] = json!(next.to_string());
        metadata["remainingItemCount"] = json!(all.len() - next);
    }
    let (api_version, kind, items) = if partial_items {
        (
            "meta.k8s.io/v1".to_string(),
            "PartialObjectMetadataList".to_string(),
            page.iter().map(partial).collect::<Vec<_>>(),
        )
    } else {
        (
            api_version(&key.0),
            format!("{}List", kind_of(&key.1)),
            page,
        )
    };
    axum::Json(
        json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "items": items}),
    )
    .into_response()
}

async fn watch(cluster: Cluster, key: Resource, namespace: String, params: Params) -> Response {
    let from: u64 = params
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let mut live = cluster.events.subscribe();
    let backlog: Vec<WatchEvent> = cluster
        .state
        .lock()
        .unwrap()
        .log
        .iter()
        .filter(|e| e.rv > from)
        .cloned()
        .collect();
    let timeout = Duration::from_secs(params.timeout_seconds.unwrap_or(290));
    let wanted = move |e: &WatchEvent| {
        e.resource == key
            && (namespace.is_empty() || e.namespace == namespace)
            && selected(&params, &e.name)
    };
    let stream = async_stream(move |tx| async move {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut last = from;
        for e in backlog {
            last = e.rv;
            if wanted(&e) && tx.send(line(&e)).await.is_err() {
                return;
            }
        }
        loop {
            tokio::select! {
                () = &mut deadline => return,
                e = live.recv() => match e {
                    Ok(e) if e.rv > last => {
                        last = e.rv;
                        if wanted(&e) && tx.send(line(&e)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn line(e: &WatchEvent) -> Result<Bytes, std::io::Error> {
    let mut text = json!({"type": e.kind, "object": e.object}).to_string();
    text.push('\n');
    Ok(Bytes::from(text))
}

/// A stream fed by a task through a channel.
fn async_stream<F, Fut>(f: F) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Kubernetes objects for a cluster.
pub fn namespace(name: &str, labels: Value) -> Value {
    json!({"kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

pub fn node(name: &str, kubelet: &str) -> Value {
    json!({"kind": "Node", "metadata": {"name": name},
           "status": {"nodeInfo": {"architecture": "amd64", "bootID": "", "containerRuntimeVersion": "containerd://2.0.0",
               "kernelVersion": "6.1.0", "kubeProxyVersion": "", "kubeletVersion": kubelet,
               "machineID": "", "operatingSystem": "linux", "osImage": "Linux", "systemUUID": ""}}})
}

/// The injector's ConfigMap holding `values` over the embedded configuration.
pub fn config_map(namespace: &str, name: &str, values: &str) -> Value {
    let sources = sidecar_injector::config::Sources::embedded();
    json!({"kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace},
           "data": {"config": sources.config, "values": values, "mesh": ""}})
}

pub fn deployment(namespace: &str, name: &str, replicas: u64) -> Value {
    json!({"kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}")},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "progressDeadlineSeconds": 600,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": name, "image": format!("registry.example.com/{name}:2.4.1"),
                    "ports": [{"containerPort": 8080, "name": "http"}],
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}}]}}}})
}

pub fn stateful_set(namespace: &str, name: &str, replicas: u64) -> Value {
    json!({"kind": "StatefulSet",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}")},
        "spec": {"replicas": replicas, "serviceName": name, "selector": {"matchLabels": {"app": name}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": name, "image": "postgres:17",
                    "ports": [{"containerPort": 5432, "name": "tcp-postgres"}]}]}}}})
}

pub fn daemon_set(namespace: &str, name: &str) -> Value {
    json!({"kind": "DaemonSet",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}")},
        "spec": {"selector": {"matchLabels": {"app": name}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": name, "image": "registry.example.com/agent:1.0"}]}}}})
}
