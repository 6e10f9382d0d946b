//! Injecting a pod that already carries an injection: keep what it has where the fresh
//! injection gives the same.
//!
//! With `reinvocationPolicy: IfNeeded` the API server reviews a pod again after later admission
//! steps changed it: its ServiceAccount admission mounts the token volume into `istio-init` and
//! `istio-proxy`, the pod is defaulted (`terminationMessagePath`, probe periods, `protocol: TCP`,
//! `defaultMode: 420`, quantities in canonical form, ...), and later webhooks may add env vars or
//! containers. The engine strips and renders the injected containers afresh; answering with that
//! would undo all of it. So after the fresh injection, each injected container and volume the pod
//! already had (same name, same list, listed in the old status) is compared with its fresh
//! rendering, and:
//!
//! - when the pod's has every field the fresh one sets, equal (quantities by value; a field the
//!   fresh one leaves out may be one the API server defaults; a volume mount of a volume that the
//!   injection does not add, such as the token, may be extra), it is the same injection: the pod's
//!   container stays as it is, and only its env follows the fresh one (a value that changed, such
//!   as `ISTIO_KUBE_APP_PROBERS` after a later webhook added a container, is replaced in place; a
//!   var the fresh one adds is inserted after its predecessor; a var the fresh one does not set is
//!   someone else's and stays, except the two the engine itself writes, `ISTIO_KUBE_APP_PROBERS`
//!   and `ISTIO_PROMETHEUS_ANNOTATIONS`: one the fresh container no longer has is a change);
//! - otherwise the configuration changed (a new image, other args, a mount or probe more or less):
//!   the fresh container is used, keeping only what certainly is not the injection's: the fields
//!   the API server defaults where the fresh one leaves them out, and mounts of volumes the
//!   injection does not add. Env vars the fresh one does not set go, since an earlier
//!   configuration's vars cannot be told from another webhook's.
//!
//! A change another webhook made to a field the injection sets (an image rewritten to a mirror)
//! is indistinguishable from a configuration change, and the fresh value wins. The comparison
//! walks only the injected containers and volumes, each once, with lookups by key: linear in
//! their size.

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::{Map, Value};

use super::pod;
use super::quantity;
use super::status::{Added, PROBERS_ENV, PROMETHEUS_ENV, Previous};

/// Puts back, in `fresh` (the injected pod), what `original` already had from an earlier
/// injection, as the module comment says. Does nothing for a pod injected for the first time.
pub(crate) fn keep_current(
    original: &Value,
    fresh: &mut Value,
    previous: &Previous,
    added: &Added,
) {
    if !previous.injected {
        return;
    }
    let ours: HashSet<&str> = previous
        .volumes
        .iter()
        .map(String::as_str)
        .chain(added.volumes.iter().map(String::as_str))
        .collect();
    let rules = Rules { ours: &ours };
    // Sets: a pod's `sidecar.istio.io/userVolume` can make the injected volumes many.
    let set = |names: &'_ [String]| -> HashSet<String> { names.iter().cloned().collect() };
    for (field, names) in [
        ("initContainers", set(&added.init_containers)),
        ("containers", set(&added.containers)),
    ] {
        let had = by_name(pod::list(original, field));
        let Some(list) = pod::list_mut_existing(fresh, field) else {
            continue;
        };
        for container in list.iter_mut() {
            let Some(name) = pod::name_of(container) else {
                continue;
            };
            if !names.contains(name) || !previous.containers.contains(name) {
                continue;
            }
            if let Some(before) = had.get(name) {
                *container = rules.container(before, container);
            }
        }
    }
    let had = by_name(pod::list(original, "volumes"));
    let added_volumes = set(&added.volumes);
    if let Some(volumes) = pod::list_mut_existing(fresh, "volumes") {
        for volume in volumes.iter_mut() {
            let Some(name) = pod::name_of(volume) else {
                continue;
            };
            if !previous.volumes.contains(name) || !added_volumes.contains(name) {
                continue;
            }
            if let Some(before) = had.get(name) {
                *volume = if rules.covers(before, volume, "volumes") {
                    (*before).clone()
                } else {
                    rules.settle(before, volume, "volumes")
                };
            }
        }
    }
}

/// The first item of each name (the API server refuses pods whose names repeat).
fn by_name(items: &[Value]) -> HashMap<&str, &Value> {
    let mut out = HashMap::with_capacity(items.len());
    for item in items {
        if let Some(name) = pod::name_of(item) {
            out.entry(name).or_insert(item);
        }
    }
    out
}

/// The merge key of the keyed lists inside a container.
fn list_key(field: &str) -> Option<&'static str> {
    match field {
        "env" => Some("name"),
        "ports" => Some("containerPort"),
        "volumeMounts" => Some("mountPath"),
        _ => None,
    }
}

/// Fields the API server fills in when a pod leaves them out, by the field that holds them (a
/// list's items by the list's field).
fn defaulted(field: &str, key: &str, fresh: &Map<String, Value>) -> bool {
    match field {
        "containers" | "initContainers" => matches!(
            key,
            "imagePullPolicy" | "terminationMessagePath" | "terminationMessagePolicy"
        ),
        "livenessProbe" | "readinessProbe" | "startupProbe" => matches!(
            key,
            "timeoutSeconds" | "periodSeconds" | "successThreshold" | "failureThreshold"
        ),
        "httpGet" => matches!(key, "path" | "scheme"),
        "grpc" => key == "service",
        "ports" => key == "protocol",
        "fieldRef" => key == "apiVersion",
        "configMap" | "secret" | "downwardAPI" | "projected" => key == "defaultMode",
        "serviceAccountToken" => key == "expirationSeconds",
        // Requests default to the limits.
        "resources" => key == "requests",
        // A volume with no source is an emptyDir.
        "volumes" => key == "emptyDir" && fresh.keys().all(|k| k == "name"),
        _ => false,
    }
}

/// The field a map's entry is compared as: its key, except inside a resource list, whose
/// entries (`cpu`, `memory`, ...) are all quantities.
fn child<'a>(field: &'a str, key: &'a str) -> &'a str {
    match field {
        "limits" | "requests" => field,
        _ => key,
    }
}

/// Values the API server drops when stored (Go's `omitempty`), so a stored pod may lack them.
fn zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// Zero values of the plain (non-pointer) fields Go writes with `omitempty`: the API server does
/// not store them. (A `false` of a pointer field such as `allowPrivilegeEscalation` is stored,
/// and its absence means something else.)
fn go_omits(key: &str, v: &Value) -> bool {
    match key {
        "readOnly" | "stdin" | "stdinOnce" | "tty" => v == &Value::Bool(false),
        "initialDelaySeconds" | "hostPort" => v.as_i64() == Some(0),
        _ => false,
    }
}

/// Scalars are equal, or are quantities of equal value (`2000m` is stored as `2`).
fn same_scalar(before: &Value, fresh: &Value, field: &str) -> bool {
    if before == fresh {
        return true;
    }
    let quantities = matches!(field, "limits" | "requests" | "divisor" | "sizeLimit");
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match (quantities, text(before), text(fresh)) {
        (true, Some(b), Some(f)) => matches!(
            (quantity::canonical(&b), quantity::canonical(&f)),
            (Ok(b), Ok(f)) if b == f
        ),
        _ => false,
    }
}

struct Rules<'a> {
    /// Volumes the injection adds (now or before): a mount of any other is not the injection's.
    ours: &'a HashSet<&'a str>,
}

impl Rules<'_> {
    /// The container the pod keeps for an injected container it already had.
    fn container(&self, before: &Value, fresh: &Value) -> Value {
        let (Value::Object(b), Value::Object(f)) = (before, fresh) else {
            return fresh.clone();
        };
        // The env vars the engine itself writes (not a template) are known to be ours: one the
        // pod has and the fresh container does not means the configuration dropped it (the
        // probe rewrite turned off), not that another webhook added it.
        let dropped = [PROBERS_ENV, PROMETHEUS_ENV]
            .into_iter()
            .any(|name| has_env(b, name) && !has_env(f, name));
        if dropped || !self.covers_map(b, f, "containers", Some("env")) {
            return self.settle(before, fresh, "containers");
        }
        let env = env_following(b.get("env"), f.get("env"), self);
        let mut kept = b.clone();
        if let Some(env) = env {
            kept.insert("env".into(), Value::Array(env));
        }
        Value::Object(kept)
    }

    /// `before` is `fresh` as the API server stores it, plus what others may add.
    fn covers(&self, before: &Value, fresh: &Value, field: &str) -> bool {
        match (before, fresh) {
            (Value::Object(b), Value::Object(f)) => self.covers_map(b, f, field, None),
            (Value::Array(b), Value::Array(f)) => match list_key(field) {
                Some(key) => self.covers_keyed(b, f, field, key),
                None => {
                    b.len() == f.len() && b.iter().zip(f).all(|(b, f)| self.covers(b, f, field))
                }
            },
            _ => same_scalar(before, fresh, field),
        }
    }

    fn covers_map(
        &self,
        b: &Map<String, Value>,
        f: &Map<String, Value>,
        field: &str,
        skip: Option<&str>,
    ) -> bool {
        let skipped = |k: &str| skip == Some(k);
        f.iter()
            .filter(|(k, _)| !skipped(k))
            .all(|(k, fv)| match b.get(k) {
                Some(bv) => self.covers(bv, fv, child(field, k)),
                None => zero(fv) || go_omits(k, fv),
            })
            && b.iter()
                .filter(|(k, _)| !skipped(k) && !f.contains_key(*k))
                .all(|(k, bv)| defaulted(field, k, f) || zero(bv) || self.only_foreign(bv, k))
    }

    /// A list the fresh container does not have holds only what is certainly not the
    /// injection's (the token mount on `istio-init`).
    fn only_foreign(&self, list: &Value, field: &str) -> bool {
        list.as_array()
            .is_some_and(|items| items.iter().all(|item| self.foreign_item(item, field)))
    }

    fn covers_keyed(&self, b: &[Value], f: &[Value], field: &str, key: &str) -> bool {
        let mut index = keyed(b, key);
        let mut matched = vec![false; b.len()];
        for item in f {
            let Some(i) = take(&mut index, item, key) else {
                return false;
            };
            if !self.covers(&b[i], item, field) {
                return false;
            }
            matched[i] = true;
        }
        b.iter()
            .zip(matched)
            .all(|(item, matched)| matched || self.foreign_item(item, field))
    }

    /// An item of a container's list that is certainly not the injection's.
    fn foreign_item(&self, item: &Value, field: &str) -> bool {
        field == "volumeMounts" && pod::name_of(item).is_some_and(|v| !self.ours.contains(v))
    }

    /// `fresh`, with the parts of `before` that are equal to it modulo storage kept as stored,
    /// and what certainly is not the injection's carried over (see the module comment).
    fn settle(&self, before: &Value, fresh: &Value, field: &str) -> Value {
        if self.covers(before, fresh, field) {
            return before.clone();
        }
        match (before, fresh) {
            (Value::Object(b), Value::Object(f)) => {
                let mut out = Map::with_capacity(f.len() + 3);
                for (k, fv) in f {
                    let v = match b.get(k) {
                        Some(bv) => self.settle(bv, fv, child(field, k)),
                        None => fv.clone(),
                    };
                    out.insert(k.clone(), v);
                }
                for (k, bv) in b {
                    if f.contains_key(k) {
                        continue;
                    }
                    if defaulted(field, k, f) {
                        out.insert(k.clone(), bv.clone());
                    } else if let Some(items) = bv.as_array() {
                        let foreign: Vec<Value> = items
                            .iter()
                            .filter(|item| self.foreign_item(item, k))
                            .cloned()
                            .collect();
                        if !foreign.is_empty() {
                            out.insert(k.clone(), Value::Array(foreign));
                        }
                    }
                }
                Value::Object(out)
            }
            (Value::Array(b), Value::Array(f)) => match list_key(field) {
                Some(key) => {
                    let mut index = keyed(b, key);
                    let mut matched = vec![false; b.len()];
                    let mut out: Vec<Value> = f
                        .iter()
                        .map(|item| match take(&mut index, item, key) {
                            Some(i) => {
                                matched[i] = true;
                                self.settle(&b[i], item, field)
                            }
                            None => item.clone(),
                        })
                        .collect();
                    out.extend(
                        b.iter()
                            .zip(matched)
                            .filter(|(item, matched)| !matched && self.foreign_item(item, field))
                            .map(|(item, _)| item.clone()),
                    );
                    Value::Array(out)
                }
                None if b.len() == f.len() => Value::Array(
                    b.iter()
                        .zip(f)
                        .map(|(b, f)| self.settle(b, f, field))
                        .collect(),
                ),
                None => fresh.clone(),
            },
            _ => fresh.clone(),
        }
    }
}

fn has_env(container: &Map<String, Value>, name: &str) -> bool {
    container
        .get("env")
        .and_then(Value::as_array)
        .is_some_and(|env| env.iter().any(|e| pod::name_of(e) == Some(name)))
}

/// The pod's env with the fresh env's vars brought in: a var of both keeps the pod's entry when
/// it is the same modulo storage and takes the fresh one otherwise, in the pod's place; a var
/// only the fresh env has goes after the var it follows there; the pod's other vars stay.
/// `None` when neither has an env.
fn env_following(
    before: Option<&Value>,
    fresh: Option<&Value>,
    rules: &Rules<'_>,
) -> Option<Vec<Value>> {
    let empty = Vec::new();
    let b = before.and_then(Value::as_array).unwrap_or(&empty);
    let f = fresh.and_then(Value::as_array).unwrap_or(&empty);
    if b.is_empty() && f.is_empty() {
        return None;
    }
    let mut index = keyed(b, "name");
    let mut kept: Vec<Value> = b.clone();
    // New vars, by the position (in `b`, plus one) of the var they follow; 0 is "first".
    let mut inserted: Vec<Vec<Value>> = vec![Vec::new(); b.len() + 1];
    let mut after = 0;
    for item in f {
        match take(&mut index, item, "name") {
            Some(i) => {
                if !rules.covers(&b[i], item, "env") {
                    kept[i] = item.clone();
                }
                after = i + 1;
            }
            None => inserted[after].push(item.clone()),
        }
    }
    let mut out = Vec::with_capacity(b.len() + f.len());
    let mut inserted = inserted.into_iter();
    out.extend(inserted.next().into_iter().flatten());
    for (item, new) in kept.into_iter().zip(inserted) {
        out.push(item);
        out.extend(new);
    }
    Some(out)
}

/// Positions of the items by key; a key that repeats pairs its occurrences in order.
fn keyed(items: &[Value], key: &str) -> HashMap<String, VecDeque<usize>> {
    let mut index: HashMap<String, VecDeque<usize>> = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if let Some(k) = item.get(key) {
            index.entry(key_text(k)).or_default().push_back(i);
        }
    }
    index
}

fn take(index: &mut HashMap<String, VecDeque<usize>>, item: &Value, key: &str) -> Option<usize> {
    index
        .get_mut(&key_text(item.get(key)?))
        .and_then(VecDeque::pop_front)
}

fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules_for<'a>(ours: &'a HashSet<&'a str>) -> Rules<'a> {
        Rules { ours }
    }

    #[test]
    fn stored_forms_and_defaults_cover_the_fresh_container() {
        let ours = HashSet::from(["istio-envoy"]);
        let rules = rules_for(&ours);
        let fresh = json!({"name": "istio-proxy", "image": "proxyv2:1",
            "resources": {"limits": {"cpu": "2000m", "memory": "1024Mi"}},
            "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}, "timeoutSeconds": 3},
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "EMPTY", "value": ""}],
            "volumeMounts": [{"name": "istio-envoy", "mountPath": "/etc/istio/proxy"}]});
        let stored = json!({"name": "istio-proxy", "image": "proxyv2:1",
            "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "2", "memory": "1Gi"}},
            "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"},
                "timeoutSeconds": 3, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3},
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                    {"name": "EMPTY"}, {"name": "THEIRS", "value": "1"}],
            "volumeMounts": [{"name": "istio-envoy", "mountPath": "/etc/istio/proxy"},
                {"name": "kube-api-access-abcde", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent"});
        assert_eq!(rules.container(&stored, &fresh), stored);
    }

    #[test]
    fn a_value_of_ours_that_differs_renders_anew_keeping_what_the_api_server_added() {
        let ours = HashSet::from(["istio-envoy"]);
        let rules = rules_for(&ours);
        let fresh = json!({"name": "istio-proxy", "image": "proxyv2:2",
            "env": [{"name": "A", "value": "1"}],
            "volumeMounts": [{"name": "istio-envoy", "mountPath": "/etc/istio/proxy"}]});
        let stored = json!({"name": "istio-proxy", "image": "proxyv2:1",
            "env": [{"name": "A", "value": "1"}, {"name": "OLD", "value": "x"}],
            "volumeMounts": [{"name": "istio-envoy", "mountPath": "/etc/istio/proxy"},
                {"name": "istio-certs", "mountPath": "/etc/certs/"},
                {"name": "token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
            "terminationMessagePolicy": "File"});
        let ours = HashSet::from(["istio-envoy", "istio-certs"]);
        let rules_with_certs = rules_for(&ours);
        assert_eq!(
            rules_with_certs.container(&stored, &fresh),
            json!({"name": "istio-proxy", "image": "proxyv2:2",
                "env": [{"name": "A", "value": "1"}],
                "volumeMounts": [{"name": "istio-envoy", "mountPath": "/etc/istio/proxy"},
                    {"name": "token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePolicy": "File"})
        );
        // A mount of a volume the injection adds, that the fresh container lacks, is a change
        // even when everything else is the same.
        let mut same_image = stored.clone();
        same_image["image"] = json!("proxyv2:2");
        assert_ne!(rules_with_certs.container(&same_image, &fresh), same_image);
        // Without it among ours, the extra mount is someone else's and stays.
        assert_eq!(rules.container(&same_image, &fresh), same_image);
    }

    #[test]
    fn zero_values_go_does_not_store_may_be_absent_but_pointer_falses_may_not() {
        let ours = HashSet::new();
        let rules = rules_for(&ours);
        let fresh = json!({"name": "p", "stdin": false,
            "volumeMounts": [{"name": "v", "mountPath": "/v", "readOnly": false}],
            "readinessProbe": {"initialDelaySeconds": 0, "periodSeconds": 15},
            "securityContext": {"allowPrivilegeEscalation": false}});
        let stored = json!({"name": "p",
            "volumeMounts": [{"name": "v", "mountPath": "/v"}],
            "readinessProbe": {"periodSeconds": 15},
            "securityContext": {"allowPrivilegeEscalation": false}});
        assert_eq!(rules.container(&stored, &fresh), stored);
        let mut loosened = stored.clone();
        loosened["securityContext"] = json!({});
        assert!(!rules.covers(&loosened, &fresh, "containers"));
    }

    #[test]
    fn env_follows_the_fresh_values_in_place_and_inserts_new_vars_after_their_predecessor() {
        let ours = HashSet::new();
        let rules = rules_for(&ours);
        let b = json!([{"name": "A", "value": "1"}, {"name": "X", "value": "theirs"}, {"name": "C", "value": "3"}]);
        let f = json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}, {"name": "C", "value": "4"}]);
        assert_eq!(
            Value::Array(env_following(Some(&b), Some(&f), &rules).unwrap()),
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}, {"name": "X", "value": "theirs"}, {"name": "C", "value": "4"}])
        );
    }
}
