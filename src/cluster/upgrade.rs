//! What `outdated` reads from the cluster: the injector's configuration (its ConfigMap), the
//! namespaces' labels, the owners of ReplicaSets and Jobs, the nodes' kubelets (for native
//! sidecars `auto`), and the pods, which it judges page by page (`upgrade::assess`) so that
//! memory follows the number of workloads, not of pods.

use std::collections::HashMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node};
use kube::Api;
use kube::api::ListParams;
use serde_json::{Map, Value};

use super::kubelet::Version;
use super::nodes::NodeVersions;
use crate::config::{Config, ConfigError, NativeMode, Sources};
use crate::upgrade::owners::Owners;
use crate::upgrade::report::{Collector, Report};
use crate::upgrade::{Target, assess};

/// Pods per list request: a page stays a few megabytes however large the pods.
const PAGE: u32 = 250;

/// Where to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Namespace(String),
    All,
}

impl Scope {
    fn describe(&self) -> String {
        match self {
            Scope::Namespace(ns) => format!("in namespace {ns}"),
            Scope::All => "in all namespaces".into(),
        }
    }
}

/// Why the cluster could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot {action}: {}", explain(.source))]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "ConfigMap {namespace}/{name} not found: name the injector's ConfigMap with --configmap NAMESPACE/NAME (the chart names it after the release), or give the configuration with --config-dir or --values"
    )]
    NoConfigMap { namespace: String, name: String },
    #[error("ConfigMap {namespace}/{name} has no `config` key: is it the injector's?")]
    NoConfigKey { namespace: String, name: String },
    #[error("the configuration in ConfigMap {namespace}/{name} is invalid: {source}")]
    Config {
        namespace: String,
        name: String,
        #[source]
        source: ConfigError,
    },
    #[error(
        "the pod list expired while it was read page by page (the cluster changed a lot meanwhile): run the command again"
    )]
    Expired,
    #[error("the API server answered the {what} list with something that is not a list")]
    NotAList { what: String },
}

/// The API server's own words for a refusal, with a pointer to the RBAC a command needs.
pub(crate) fn explain(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if status.is_forbidden() => format!(
            "{} (the RBAC for this command is in docs/upgrades.md)",
            status.message
        ),
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

fn api_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> UpgradeError {
    let action = action.into();
    move |source| UpgradeError::Api { action, source }
}

/// Reads the injector's configuration from its ConfigMap (keys `config`, `values`, `mesh`, as
/// the chart writes them).
pub async fn config_map(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Config, UpgradeError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = api
        .get_opt(name)
        .await
        .map_err(api_error(format!("read ConfigMap {namespace}/{name}")))?
        .ok_or_else(|| UpgradeError::NoConfigMap {
            namespace: namespace.into(),
            name: name.into(),
        })?;
    let data = cm.data.unwrap_or_default();
    let key = |k: &str| data.get(k).cloned().unwrap_or_default();
    if !data.contains_key("config") {
        return Err(UpgradeError::NoConfigKey {
            namespace: namespace.into(),
            name: name.into(),
        });
    }
    Config::from_sources(&Sources {
        config: key("config"),
        values: key("values"),
        mesh: key("mesh"),
    })
    .map_err(|source| UpgradeError::Config {
        namespace: namespace.into(),
        name: name.into(),
        source,
    })
}

/// The native-sidecar flags the injector's own Deployment runs `serve` with (the chart passes
/// `--native-sidecars` and `--native-sidecars-min-kubelet` on the command line, not in the
/// ConfigMap), or from its container's environment. `None` when the Deployment cannot be read
/// (absent, or no RBAC for it): the caller falls back to the configuration's values.
pub async fn injector_flags(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Option<(Option<NativeMode>, Option<Version>)> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = api.get_opt(name).await.ok()??;
    let containers = deployment.spec.template.spec?.containers;
    let container = containers
        .iter()
        .find(|c| c.name == "sidecar-injector")
        .or(containers.first())?;
    let words: Vec<&str> = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .map(String::as_str)
        .collect();
    let flag = |name: &str| -> Option<String> {
        let mut found = None;
        for (i, w) in words.iter().enumerate() {
            if let Some(v) = w.strip_prefix(&format!("--{name}=")) {
                found = Some(v.to_string());
            } else if *w == format!("--{name}") {
                found = words.get(i + 1).map(|v| v.to_string());
            }
        }
        found.or_else(|| {
            let env = format!("SIDECAR_INJECTOR_{}", name.to_uppercase().replace('-', "_"));
            container
                .env
                .iter()
                .flatten()
                .find(|e| e.name == env)
                .and_then(|e| e.value.clone())
        })
    };
    Some((
        flag("native-sidecars").and_then(|v| v.parse().ok()),
        flag("native-sidecars-min-kubelet").and_then(|v| v.parse().ok()),
    ))
}

/// Native sidecars `auto`, decided as the webhook decides it for a pod not yet scheduled:
/// every node's kubelet at least `min`.
pub async fn native_from_nodes(client: &kube::Client, min: Version) -> Result<bool, UpgradeError> {
    let api: Api<Node> = Api::all(client.clone());
    let mut versions = NodeVersions::default();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(PAGE);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await.map_err(api_error(
            "list nodes (for native sidecars auto; or pass --native-sidecars true|false)",
        ))?;
        for node in &page.items {
            versions.apply(node);
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    Ok(versions.decide(min).allow(None))
}

/// Metadata of every object of a kind in scope, page by page.
async fn each_metadata<K>(
    api: Api<K>,
    what: &str,
    scope: &Scope,
    mut f: impl FnMut(Value),
) -> Result<(), UpgradeError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(PAGE);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api
            .list_metadata(&lp)
            .await
            .map_err(api_error(format!("list {what} {}", scope.describe())))?;
        for item in page.items {
            f(serde_json::to_value(&item.metadata).unwrap_or(Value::Null));
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(next) => token = Some(next),
            None => return Ok(()),
        }
    }
}

/// Namespace name -> labels.
async fn namespace_labels(
    client: &kube::Client,
    scope: &Scope,
) -> Result<HashMap<String, Map<String, Value>>, UpgradeError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let mut out = HashMap::new();
    let labels_of = |meta: &Value| -> (String, Map<String, Value>) {
        (
            meta.get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            meta.get("labels")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
        )
    };
    match scope {
        Scope::Namespace(ns) => {
            let meta = api
                .get_metadata(ns)
                .await
                .map_err(api_error(format!("read namespace {ns}")))?;
            let (name, labels) =
                labels_of(&serde_json::to_value(&meta.metadata).unwrap_or_default());
            out.insert(name, labels);
        }
        Scope::All => {
            each_metadata(api, "namespaces", &Scope::All, |meta| {
                let (name, labels) = labels_of(&meta);
                out.insert(name, labels);
            })
            .await?;
        }
    }
    Ok(out)
}

fn pods_path(scope: &Scope) -> String {
    match scope {
        Scope::Namespace(ns) => format!("/api/v1/namespaces/{ns}/pods"),
        Scope::All => "/api/v1/pods".into(),
    }
}

/// A pod that still runs (or will): finished and terminating pods are replaced by nothing.
fn is_live(pod: &Value) -> bool {
    let phase = pod.pointer("/status/phase").and_then(Value::as_str);
    pod.pointer("/metadata/deletionTimestamp").is_none()
        && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Judges every live pod in scope against `target`.
pub async fn outdated(
    client: &kube::Client,
    scope: &Scope,
    target: &Target<'_>,
) -> Result<Report, UpgradeError> {
    let namespaces = namespace_labels(client, scope).await?;
    let mut owners = Owners::default();
    let (rs, jobs): (Api<ReplicaSet>, Api<Job>) = match scope {
        Scope::Namespace(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        Scope::All => (Api::all(client.clone()), Api::all(client.clone())),
    };
    each_metadata(rs, "replicasets", scope, |m| owners.add("ReplicaSet", &m)).await?;
    each_metadata(jobs, "jobs", scope, |m| owners.add("Job", &m)).await?;

    let mut collector = Collector::default();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(PAGE);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let request = kube::core::Request::new(pods_path(scope))
            .list(&lp)
            .map_err(|e| UpgradeError::Api {
                action: "list pods".into(),
                source: kube::Error::BuildRequest(e),
            })?;
        // Raw JSON, not typed pods: the engine reads every field, including ones this
        // crate's Kubernetes types do not know.
        let page: Value = match client.request(request).await {
            Ok(page) => page,
            Err(kube::Error::Api(status)) if status.code == 410 && token.is_some() => {
                return Err(UpgradeError::Expired);
            }
            Err(e) => return Err(api_error(format!("list pods {}", scope.describe()))(e)),
        };
        let Some(items) = page.get("items").and_then(Value::as_array) else {
            return Err(UpgradeError::NotAList { what: "pod".into() });
        };
        for pod in items.iter().filter(|p| is_live(p)) {
            let namespace = pod
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("default");
            let (workload, restart) = owners.resolve(pod);
            match assess(target, pod, namespaces.get(namespace)) {
                Ok(verdict) => collector.add(workload, restart, verdict),
                Err(e) => collector.error(
                    pod.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                    namespace,
                    &e.to_string(),
                ),
            }
        }
        match page
            .pointer("/metadata/continue")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
        {
            Some(next) => token = Some(next.to_string()),
            None => break,
        }
    }
    Ok(collector.finish())
}

/// A Kubernetes namespace or object name (RFC 1123: lowercase letters, digits, `-` and `.`,
/// at most 253 characters), checked before it goes into a URL path.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}
