//! The comparison of a live pod with the pod the engine makes of it now.
//!
//! The engine re-injects the live pod: it strips the earlier injection (the containers and
//! volumes the `sidecar.istio.io/status` annotation lists) and renders the templates afresh, so
//! `fresh` is the live pod with today's injection in place of the old one. What is left to
//! compare is what the engine writes; everything else in `fresh` was copied from `live`.
//!
//! Why "what the engine writes is found in the live pod" (fresh ⊆ live) and not equality: the
//! API server and the kubelet add to what the webhook returned. Defaulting fills fields the
//! template leaves out (`terminationMessagePath`, `imagePullPolicy`, probe `timeoutSeconds`,
//! port `protocol`, a volume's `defaultMode`, `emptyDir: {}` for a volume without a source),
//! the ServiceAccount admission adds the `kube-api-access-*` volume and mounts it, quantities
//! are stored canonically, and `status` and `nodeName` appear. A subset test is immune to all of
//! them, including defaults a newer Kubernetes adds, without a table of them to keep current.
//!
//! A subset test alone would miss what the new configuration no longer writes (a removed
//! `proxyMetadata` entry, hold turned off, a dropped capability). So, for the injected
//! containers only, the fields the templates write conditionally are also checked the other way
//! ([`REVERSE_KEYS`], env vars, mounts, ports, lifecycle hooks, security settings), and the
//! injected containers and volumes are compared as the two status annotations list them. A
//! live-only env var or mount that also sits in a container the injector does not own was put
//! there for every container by someone else (the ServiceAccount admission, another webhook) and
//! is not a difference.
//!
//! Lists are matched by their Kubernetes merge key (containers, env, volumes by `name`, mounts by
//! `mountPath`, ports by `containerPort` and `protocol`), so order and additions by others do
//! not matter; other lists (`args`, capabilities) must match item for item.
//!
//! Cost: one pass over each pod, keyed lists through a map per list: linear in the pod size,
//! repeated keys included.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use crate::inject::quantity;

/// The annotation that lists what an injection added.
pub const STATUS: &str = "sidecar.istio.io/status";

/// One step of a path into the pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// A list item found by its merge key (a container or env var name, a mount path).
    Item(String),
    /// A list item by position.
    Index(usize),
}

/// Where `istio-proxy` or another injected container runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placement {
    /// `containers`: a classic sidecar.
    Classic,
    /// `initContainers` with `restartPolicy: Always`: a native sidecar.
    Native,
    /// `initContainers`, run to completion before the app (`istio-init`).
    Init,
}

impl Placement {
    fn of(list: &str, container: &Value) -> Placement {
        match (list, container.get("restartPolicy").and_then(Value::as_str)) {
            ("containers", _) => Placement::Classic,
            (_, Some("Always")) => Placement::Native,
            _ => Placement::Init,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Placement::Classic => "a classic sidecar",
            Placement::Native => "a native sidecar",
            Placement::Init => "an init container",
        }
    }
}

/// What the status annotation says an injection added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub containers: Vec<String>,
    pub volumes: Vec<String>,
    pub image_pull_secrets: Vec<String>,
    pub revision: Option<String>,
}

impl Status {
    /// Reads the annotation; `None` when the pod carries none. A value that is not a JSON
    /// object reads as an empty one (the engine refuses such a pod; see `assess`).
    pub fn of(pod: &Value) -> Option<Status> {
        let text = pod
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(STATUS))
            .and_then(Value::as_str)?;
        let value = crate::value::from_str(text).unwrap_or(Value::Null);
        let names = |field: &str| -> Vec<String> {
            value
                .get(field)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        };
        let mut containers = names("initContainers");
        containers.extend(names("containers"));
        Some(Status {
            containers,
            volumes: names("volumes"),
            image_pull_secrets: names("imagePullSecrets"),
            revision: value
                .get("revision")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }
}

/// What an injection added, by kind of thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Listed {
    Container,
    Volume,
    ImagePullSecret,
}

/// One way the live pod differs from what the engine writes now.
#[derive(Debug, Clone, PartialEq)]
pub enum Difference {
    /// The engine writes `fresh` at `path`; the live pod has `live` there (`None`: nothing).
    /// Values are kept for scalars only (an image, a revision), not for whole objects.
    Field {
        path: Vec<Seg>,
        fresh: Option<Value>,
        live: Option<Value>,
    },
    /// The live injected container has something at `path` that the engine no longer writes.
    Removed { path: Vec<Seg>, live: Option<Value> },
    /// An injected container sits elsewhere than the engine puts it now.
    Placement {
        container: String,
        fresh: Placement,
        live: Placement,
    },
    /// The containers of `list` are in another order (e.g. `istio-proxy` first for hold).
    Order {
        list: String,
        fresh: Vec<String>,
        live: Vec<String>,
    },
    /// The injection adds (`added`) or no longer adds (`!added`) this container or volume.
    Injected {
        what: Listed,
        name: String,
        added: bool,
    },
}

/// Fields of an injected container that templates write only in some configurations: a live
/// value the engine no longer writes is a difference (the API server defaults none of them).
pub const REVERSE_KEYS: [&str; 9] = [
    "args",
    "command",
    "lifecycle",
    "readinessProbe",
    "livenessProbe",
    "startupProbe",
    "restartPolicy",
    "workingDir",
    "securityContext",
];

/// The securityContext fields templates write; others may be defaulted by admission plugins.
const SECURITY_KEYS: [&str; 8] = [
    "allowPrivilegeEscalation",
    "capabilities",
    "privileged",
    "readOnlyRootFilesystem",
    "runAsGroup",
    "runAsNonRoot",
    "runAsUser",
    "seccompProfile",
];

/// Where the ServiceAccount admission mounts the API token in every container.
const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Compares `fresh` (the engine's re-injection of `live`) with `live`.
pub fn compare(fresh: &Value, live: &Value) -> Vec<Difference> {
    let mut walk = Walk::default();
    let fresh_status = Status::of(fresh).unwrap_or_default();
    let live_status = Status::of(live).unwrap_or_default();

    // Metadata the templates write: labels and annotations (the status annotation is compared
    // by what it lists, below).
    for field in ["labels", "annotations"] {
        let f = fresh.pointer(&format!("/metadata/{field}"));
        let l = live.pointer(&format!("/metadata/{field}"));
        if let Some(Value::Object(f)) = f {
            walk.path = vec![Seg::Key("metadata".into()), Seg::Key(field.into())];
            for (k, v) in f {
                if field == "annotations" && k == STATUS {
                    continue;
                }
                walk.path.push(Seg::Key(k.clone()));
                walk.subset(v, l.and_then(|l| l.get(k)));
                walk.path.pop();
            }
        }
    }

    injected_sets(&mut walk, &fresh_status, &live_status);

    let injected: HashSet<&str> = fresh_status
        .containers
        .iter()
        .chain(&live_status.containers)
        .map(String::as_str)
        .collect();
    containers(&mut walk, fresh, live, &injected);

    // The rest of the spec: volumes, pull secrets, anything a template sets on the pod.
    if let (Some(Value::Object(f)), l) = (fresh.get("spec"), live.get("spec")) {
        walk.path = vec![Seg::Key("spec".into())];
        for (k, v) in f {
            if k == "containers" || k == "initContainers" {
                continue;
            }
            walk.path.push(Seg::Key(k.clone()));
            walk.subset(v, l.and_then(|l| l.get(k)));
            walk.path.pop();
        }
    }

    // An injected volume or container that the live pod lacks is already reported as added.
    let added: HashSet<&str> = walk
        .out
        .iter()
        .filter_map(|d| match d {
            Difference::Injected {
                name, added: true, ..
            } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let added: HashSet<String> = added.into_iter().map(str::to_string).collect();
    walk.out.retain(|d| match d {
        Difference::Field {
            path, live: None, ..
        } => !matches!(path.as_slice(),
            [Seg::Key(s), Seg::Key(l), Seg::Item(n)] if s == "spec" && (l == "volumes" || l == "imagePullSecrets") && added.contains(n)),
        _ => true,
    });
    walk.out
}

fn injected_sets(walk: &mut Walk, fresh: &Status, live: &Status) {
    for (what, f, l) in [
        (Listed::Container, &fresh.containers, &live.containers),
        (Listed::Volume, &fresh.volumes, &live.volumes),
        (
            Listed::ImagePullSecret,
            &fresh.image_pull_secrets,
            &live.image_pull_secrets,
        ),
    ] {
        let lset: HashSet<&String> = l.iter().collect();
        let fset: HashSet<&String> = f.iter().collect();
        for name in f.iter().filter(|n| !lset.contains(n)) {
            walk.out.push(Difference::Injected {
                what,
                name: name.clone(),
                added: true,
            });
        }
        for name in l.iter().filter(|n| !fset.contains(n)) {
            walk.out.push(Difference::Injected {
                what,
                name: name.clone(),
                added: false,
            });
        }
    }
}

/// `(list, container)` for every container of both lists.
fn all_containers(pod: &Value) -> impl Iterator<Item = (&'static str, &Value)> {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(move |list| {
            pod.pointer(&format!("/spec/{list}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(move |c| (list, c))
        })
}

fn name(item: &Value) -> Option<&str> {
    item.get("name").and_then(Value::as_str)
}

fn containers(walk: &mut Walk, fresh: &Value, live: &Value, injected: &HashSet<&str>) {
    let live_by_name: HashMap<&str, (&str, &Value)> = all_containers(live)
        .filter_map(|(list, c)| Some((name(c)?, (list, c))))
        .collect();
    // Entries that someone adds to every container: found in a container we do not inject.
    let mut shared_env = HashSet::new();
    let mut shared_mounts = HashSet::new();
    for (_, c) in all_containers(live) {
        if name(c).is_some_and(|n| injected.contains(n)) {
            continue;
        }
        for e in items(c, "env") {
            if let Some(n) = name(e) {
                shared_env.insert(n.to_string());
            }
        }
        for m in items(c, "volumeMounts") {
            if let Some(p) = m.get("mountPath").and_then(Value::as_str) {
                shared_mounts.insert(p.to_string());
            }
        }
    }

    for (list, fc) in all_containers(fresh) {
        let Some(cname) = name(fc) else { continue };
        let Some(&(live_list, lc)) = live_by_name.get(cname) else {
            // Not in the live pod: an added injected container, reported from the status.
            if !injected.contains(cname) {
                walk.out.push(Difference::Field {
                    path: vec![Seg::Item(cname.into())],
                    fresh: None,
                    live: None,
                });
            }
            continue;
        };
        let is_injected = injected.contains(cname);
        let (fp, lp) = (Placement::of(list, fc), Placement::of(live_list, lc));
        if is_injected && fp != lp {
            walk.out.push(Difference::Placement {
                container: cname.into(),
                fresh: fp,
                live: lp,
            });
        }
        walk.path = vec![Seg::Item(cname.into())];
        if let (Value::Object(f), Value::Object(l)) = (fc, lc) {
            for (k, v) in f {
                if k == "restartPolicy" && fp != lp {
                    continue;
                }
                walk.path.push(Seg::Key(k.clone()));
                walk.subset(v, l.get(k));
                walk.path.pop();
            }
            if is_injected {
                reverse(walk, f, l, &shared_env, &shared_mounts, fp != lp);
            }
        }
    }

    for list in ["initContainers", "containers"] {
        let names = |pod: &Value| -> Vec<String> {
            items_at(pod, list)
                .iter()
                .filter_map(|c| name(c).map(str::to_string))
                .collect()
        };
        let (f, l) = (names(fresh), names(live));
        let fset: HashSet<&String> = f.iter().collect();
        let lset: HashSet<&String> = l.iter().collect();
        let f: Vec<String> = f.iter().filter(|n| lset.contains(n)).cloned().collect();
        let l: Vec<String> = l.iter().filter(|n| fset.contains(n)).cloned().collect();
        if f != l {
            walk.out.push(Difference::Order {
                list: list.into(),
                fresh: f,
                live: l,
            });
        }
    }
}

/// The other direction, for an injected container: what the live one has and the engine no
/// longer writes.
fn reverse(
    walk: &mut Walk,
    fresh: &Map<String, Value>,
    live: &Map<String, Value>,
    shared_env: &HashSet<String>,
    shared_mounts: &HashSet<String>,
    moved: bool,
) {
    let base = walk.path.clone();
    let removed = |walk: &mut Walk, path: Vec<Seg>, v: &Value| {
        walk.out.push(Difference::Removed {
            path,
            live: scalar(v),
        });
    };
    let at = |segs: &[&str]| {
        let mut p = base.clone();
        p.extend(segs.iter().map(|s| Seg::Key((*s).to_string())));
        p
    };
    for key in REVERSE_KEYS {
        if key == "restartPolicy" && moved {
            continue;
        }
        let Some(lv) = live.get(key).filter(|v| !is_blank(v)) else {
            continue;
        };
        match fresh.get(key).filter(|v| !is_blank(v)) {
            None => removed(walk, at(&[key]), lv),
            Some(fv) => match key {
                "lifecycle" => {
                    for hook in ["postStart", "preStop"] {
                        if let Some(h) = lv.get(hook).filter(|v| !is_blank(v))
                            && fv.get(hook).is_none_or(is_blank)
                        {
                            removed(walk, at(&[key, hook]), h);
                        }
                    }
                }
                "securityContext" => {
                    for sk in SECURITY_KEYS {
                        let Some(l) = lv.get(sk).filter(|v| !is_blank(v)) else {
                            continue;
                        };
                        match fv.get(sk).filter(|v| !is_blank(v)) {
                            None => removed(walk, at(&[key, sk]), l),
                            Some(f) if sk == "capabilities" => {
                                for ck in ["add", "drop"] {
                                    if let Some(c) = l.get(ck).filter(|v| !is_blank(v))
                                        && f.get(ck).is_none_or(is_blank)
                                    {
                                        removed(walk, at(&[key, sk, ck]), c);
                                    }
                                }
                            }
                            Some(_) => {}
                        }
                    }
                }
                _ => {}
            },
        }
    }
    // Keyed lists: entries the live container has under a key the engine no longer writes.
    for (field, key_of, shared) in [
        ("env", Key::Name, Some(shared_env)),
        ("volumeMounts", Key::MountPath, Some(shared_mounts)),
        ("ports", Key::Port, None),
    ] {
        let fkeys: HashSet<String> = fresh
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|i| key_of.of(i))
            .collect();
        for item in live
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(k) = key_of.of(item) else { continue };
            if fkeys.contains(&k) || shared.is_some_and(|s| s.contains(&k)) {
                continue;
            }
            if field == "volumeMounts"
                && (k == SERVICE_ACCOUNT_MOUNT || name(item).is_some_and(is_api_access_volume))
            {
                continue;
            }
            let mut path = base.clone();
            path.push(Seg::Key(field.into()));
            path.push(Seg::Item(k));
            walk.out.push(Difference::Removed { path, live: None });
        }
    }
}

/// The volume the ServiceAccount admission adds (`kube-api-access-<5 random characters>`).
pub fn is_api_access_volume(name: &str) -> bool {
    name.strip_prefix("kube-api-access-")
        .is_some_and(|rest| !rest.is_empty())
}

fn items<'a>(v: &'a Value, field: &str) -> &'a [Value] {
    v.get(field)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn items_at<'a>(pod: &'a Value, list: &str) -> &'a [Value] {
    pod.get("spec").map(|s| items(s, list)).unwrap_or(&[])
}

/// The merge key of the items of a keyed list.
#[derive(Debug, Clone, Copy)]
enum Key {
    Name,
    MountPath,
    /// `containerPort` and `protocol` (TCP when absent, as the API server defaults it).
    Port,
}

impl Key {
    /// The key of the list held under `field`, when it is a keyed list.
    fn for_field(field: &str) -> Option<Key> {
        match field {
            "env"
            | "volumes"
            | "imagePullSecrets"
            | "containers"
            | "initContainers"
            | "ephemeralContainers" => Some(Key::Name),
            "volumeMounts" => Some(Key::MountPath),
            "ports" => Some(Key::Port),
            _ => None,
        }
    }

    fn of(self, item: &Value) -> Option<String> {
        match self {
            Key::Name => name(item).map(str::to_string),
            Key::MountPath => item
                .get("mountPath")
                .and_then(Value::as_str)
                .map(str::to_string),
            Key::Port => {
                let port = item.get("containerPort")?;
                let protocol = item
                    .get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("TCP");
                Some(format!("{port}/{protocol}"))
            }
        }
    }
}

/// A value worth keeping in a difference: scalars only, and at most a few hundred bytes, so a
/// hostile pod cannot make the report large.
fn scalar(v: &Value) -> Option<Value> {
    match v {
        Value::String(s) if s.len() <= 512 => Some(v.clone()),
        Value::Number(_) | Value::Bool(_) => Some(v.clone()),
        _ => None,
    }
}

/// Null, an empty mapping or list, or a mapping of only such values: what the API server does
/// not store.
fn is_blank(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.values().all(is_blank),
        _ => false,
    }
}

#[derive(Default)]
struct Walk {
    path: Vec<Seg>,
    out: Vec<Difference>,
}

impl Walk {
    fn differ(&mut self, fresh: &Value, live: Option<&Value>) {
        self.out.push(Difference::Field {
            path: self.path.clone(),
            fresh: scalar(fresh),
            live: live.and_then(scalar),
        });
    }

    /// Records where `fresh` is not found in `live`.
    fn subset(&mut self, fresh: &Value, live: Option<&Value>) {
        if is_blank(fresh) {
            return;
        }
        match (fresh, live) {
            (Value::Object(f), Some(Value::Object(l))) => {
                for (k, v) in f {
                    self.path.push(Seg::Key(k.clone()));
                    self.subset(v, l.get(k));
                    self.path.pop();
                }
            }
            (Value::Array(f), Some(Value::Array(l))) => self.list(f, l),
            (Value::Object(_) | Value::Array(_), _) => self.differ(fresh, live),
            (_, Some(l)) if self.scalar_eq(fresh, l) => {}
            _ => self.differ(fresh, live),
        }
    }

    fn list(&mut self, fresh: &[Value], live: &[Value]) {
        let key = match self.path.last() {
            Some(Seg::Key(field)) => Key::for_field(field),
            _ => None,
        };
        let keyed = key.filter(|k| fresh.iter().all(|i| k.of(i).is_some()));
        let Some(key) = keyed else {
            if fresh.len() != live.len() {
                // Compared whole: an item added or removed changes the list.
                self.out.push(Difference::Field {
                    path: self.path.clone(),
                    fresh: None,
                    live: None,
                });
                return;
            }
            for (i, (f, l)) in fresh.iter().zip(live).enumerate() {
                self.path.push(Seg::Index(i));
                self.subset(f, Some(l));
                self.path.pop();
            }
            return;
        };
        let mut by_key: HashMap<String, Vec<&Value>> = HashMap::new();
        for item in live {
            if let Some(k) = key.of(item) {
                by_key.entry(k).or_default().push(item);
            }
        }
        // A key may repeat (env vars may): the n-th item with a key is compared with the n-th
        // live item with that key, which keeps the walk linear whatever the repeats.
        let mut seen: HashMap<String, usize> = HashMap::new();
        for item in fresh {
            let Some(k) = key.of(item) else { continue };
            let nth = seen.entry(k.clone()).or_default();
            let candidate = by_key.get(&k).and_then(|c| c.get(*nth).or(c.last()));
            *nth += 1;
            self.path.push(Seg::Item(k));
            match candidate {
                None => self.differ(item, None),
                Some(live_item) => self.subset(item, Some(live_item)),
            }
            self.path.pop();
        }
    }

    /// Equal scalars; quantities (under `resources` or a `divisor`) by their canonical form.
    fn scalar_eq(&self, fresh: &Value, live: &Value) -> bool {
        if fresh == live {
            return true;
        }
        if let (Some(a), Some(b)) = (fresh.as_f64(), live.as_f64())
            && a == b
        {
            return true;
        }
        if self.is_quantity() {
            let text = |v: &Value| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            };
            if let (Some(a), Some(b)) = (text(fresh), text(live))
                && let (Ok(a), Ok(b)) = (quantity::canonical(&a), quantity::canonical(&b))
            {
                return a == b;
            }
        }
        false
    }

    fn is_quantity(&self) -> bool {
        let keys: Vec<&str> = self
            .path
            .iter()
            .filter_map(|s| match s {
                Seg::Key(k) => Some(k.as_str()),
                _ => None,
            })
            .collect();
        matches!(
            keys.as_slice(),
            [.., "divisor"] | [.., "resources", "limits" | "requests", _]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(containers: &[&str], volumes: &[&str]) -> String {
        json!({"initContainers": null, "containers": containers, "volumes": volumes,
               "imagePullSecrets": null, "revision": "default"})
        .to_string()
    }

    fn pod(proxy: Value, extra_volumes: Value) -> Value {
        json!({
            "metadata": {"annotations": {STATUS: status(&["istio-proxy"], &["istio-envoy"])}},
            "spec": {
                "containers": [
                    {"name": "app", "image": "app:1", "volumeMounts": [
                        {"name": "kube-api-access-x7k2p", "mountPath": SERVICE_ACCOUNT_MOUNT}]},
                    proxy
                ],
                "volumes": extra_volumes
            }
        })
    }

    #[test]
    fn defaults_added_by_the_api_server_are_not_differences() {
        let fresh = pod(
            json!({"name": "istio-proxy", "image": "proxyv2:1.28.0",
                   "resources": {"limits": {"cpu": "2000m", "memory": "1024Mi"}},
                   "ports": [{"containerPort": 15090, "name": "http-envoy-prom"}],
                   "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}}}),
            json!([{"name": "istio-envoy", "emptyDir": null}]),
        );
        let live = pod(
            json!({"name": "istio-proxy", "image": "proxyv2:1.28.0",
                   "imagePullPolicy": "IfNotPresent",
                   "terminationMessagePath": "/dev/termination-log",
                   "resources": {"limits": {"cpu": "2", "memory": "1Gi"},
                                 "requests": {"cpu": "2", "memory": "1Gi"}},
                   "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}],
                   "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"},
                                      "timeoutSeconds": 1, "periodSeconds": 10},
                   "volumeMounts": [{"name": "kube-api-access-x7k2p", "mountPath": SERVICE_ACCOUNT_MOUNT,
                                     "readOnly": true}]}),
            json!([{"name": "kube-api-access-x7k2p", "projected": {}},
                   {"name": "istio-envoy", "emptyDir": {}}]),
        );
        assert_eq!(compare(&fresh, &live), vec![]);
    }

    #[test]
    fn a_changed_image_and_a_removed_env_var_are_found() {
        let fresh = pod(
            json!({"name": "istio-proxy", "image": "proxyv2:1.28.0", "env": [{"name": "A", "value": "1"}]}),
            json!([]),
        );
        let live = pod(
            json!({"name": "istio-proxy", "image": "proxyv2:1.27.0",
                   "env": [{"name": "A", "value": "1"}, {"name": "DNS", "value": "true"}]}),
            json!([]),
        );
        let diffs = compare(&fresh, &live);
        assert_eq!(
            diffs,
            vec![
                Difference::Field {
                    path: vec![Seg::Item("istio-proxy".into()), Seg::Key("image".into())],
                    fresh: Some(json!("proxyv2:1.28.0")),
                    live: Some(json!("proxyv2:1.27.0")),
                },
                Difference::Removed {
                    path: vec![
                        Seg::Item("istio-proxy".into()),
                        Seg::Key("env".into()),
                        Seg::Item("DNS".into())
                    ],
                    live: None,
                },
            ]
        );
    }

    #[test]
    fn an_env_var_every_container_has_belongs_to_someone_else() {
        let mut live = pod(
            json!({"name": "istio-proxy", "env": [{"name": "DD_AGENT_HOST", "value": "x"}]}),
            json!([]),
        );
        live["spec"]["containers"][0]["env"] = json!([{"name": "DD_AGENT_HOST", "value": "x"}]);
        let fresh = pod(json!({"name": "istio-proxy"}), json!([]));
        let mut fresh_app = fresh.clone();
        fresh_app["spec"]["containers"][0]["env"] =
            json!([{"name": "DD_AGENT_HOST", "value": "x"}]);
        assert_eq!(compare(&fresh_app, &live), vec![]);
    }

    #[test]
    fn a_hook_the_engine_no_longer_writes_is_found() {
        let fresh = pod(json!({"name": "istio-proxy"}), json!([]));
        let live = pod(
            json!({"name": "istio-proxy", "lifecycle": {"postStart": {"exec": {"command": ["pilot-agent", "wait"]}}}}),
            json!([]),
        );
        assert_eq!(
            compare(&fresh, &live),
            vec![Difference::Removed {
                path: vec![
                    Seg::Item("istio-proxy".into()),
                    Seg::Key("lifecycle".into())
                ],
                live: None,
            }]
        );
    }

    #[test]
    fn placement_order_and_injected_sets() {
        let mut fresh = pod(json!({"name": "istio-proxy"}), json!([]));
        let proxy = fresh["spec"]["containers"][1].take();
        fresh["spec"]["containers"] = json!([fresh["spec"]["containers"][0].clone()]);
        let mut proxy = proxy;
        proxy["restartPolicy"] = json!("Always");
        fresh["spec"]["initContainers"] = json!([{"name": "istio-init"}, proxy]);
        fresh["metadata"]["annotations"][STATUS] =
            json!(status(&["istio-init", "istio-proxy"], &["istio-envoy"]));
        let live = pod(json!({"name": "istio-proxy"}), json!([]));
        let diffs = compare(&fresh, &live);
        assert!(diffs.contains(&Difference::Injected {
            what: Listed::Container,
            name: "istio-init".into(),
            added: true
        }));
        assert!(diffs.contains(&Difference::Placement {
            container: "istio-proxy".into(),
            fresh: Placement::Native,
            live: Placement::Classic
        }));
        assert_eq!(diffs.len(), 2, "{diffs:?}");

        let app_first = pod(json!({"name": "istio-proxy"}), json!([]));
        let mut proxy_first = app_first.clone();
        proxy_first["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .reverse();
        assert_eq!(
            compare(&proxy_first, &app_first),
            vec![Difference::Order {
                list: "containers".into(),
                fresh: vec!["istio-proxy".into(), "app".into()],
                live: vec!["app".into(), "istio-proxy".into()],
            }]
        );
    }

    #[test]
    fn repeated_keys_are_matched_in_order_in_linear_time() {
        // 5,000 env vars of one name: a pairwise search would take 25 million comparisons.
        let env: Vec<Value> = (0..5_000)
            .map(|i| json!({"name": "X", "value": i.to_string()}))
            .collect();
        let with = |env: &[Value]| pod(json!({"name": "istio-proxy", "env": env}), json!([]));
        assert_eq!(compare(&with(&env), &with(&env)), vec![]);
        let mut changed = env.clone();
        changed[7] = json!({"name": "X", "value": "other"});
        assert_eq!(compare(&with(&changed), &with(&env)).len(), 1);
    }

    #[test]
    fn unkeyed_lists_compare_item_for_item() {
        let fresh = pod(
            json!({"name": "istio-proxy", "args": ["proxy", "sidecar"]}),
            json!([]),
        );
        let live = pod(
            json!({"name": "istio-proxy", "args": ["proxy", "sidecar", "--x"]}),
            json!([]),
        );
        assert_eq!(
            compare(&fresh, &live),
            vec![Difference::Field {
                path: vec![Seg::Item("istio-proxy".into()), Seg::Key("args".into())],
                fresh: None,
                live: None
            }]
        );
    }
}
