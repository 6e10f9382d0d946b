//! Containers the user wrote under an injected name (usually `istio-proxy`): their fields win
//! over the template's. On first injection they are recorded in `proxy.istio.io/overrides` as
//! istiod records them: under the key of the list where the *template* puts the container (in
//! native mode `istio-proxy` is an init container), without `image: auto` (it means "the
//! injected image"), in Go's `corev1.Container` form. Injecting again, after the injected
//! containers are stripped, reads the record (either key) and applies it the same way.

use serde_json::{Map, Value, json};

use super::go_container;
use super::merge::merge_into;
use super::pod::{self, CONTAINER_LISTS, PROXY};
use super::status::{Added, Previous};

pub(crate) const OVERRIDES: &str = "proxy.istio.io/overrides";

/// The user's containers that override injected ones, by the list the record keeps them in.
#[derive(Debug, Default)]
pub(crate) struct Overrides {
    pub init_containers: Vec<Value>,
    pub containers: Vec<Value>,
}

impl Overrides {
    /// The overrides recorded by an earlier injection (validated JSON), in recorded form.
    pub(crate) fn saved(p: &Value) -> Option<Overrides> {
        let text = pod::annotation(p, OVERRIDES)?;
        let value = crate::value::from_str(text).ok()?;
        let list = |k: &str| {
            value
                .get(k)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(recorded)
                .collect()
        };
        Some(Overrides {
            init_containers: list("initContainers"),
            containers: list("containers"),
        })
    }

    /// Puts recorded overrides back into a stripped pod, so that templates see the pod they
    /// saw the first time. A user writes `istio-proxy` as a container, whichever key it was
    /// recorded under: native mode moves it afterwards, as on first injection.
    pub(crate) fn reinsert(&self, p: &mut Value) {
        for (key, items) in [
            ("initContainers", &self.init_containers),
            ("containers", &self.containers),
        ] {
            for c in items {
                let Some(name) = pod::name_of(c) else {
                    continue;
                };
                let present = CONTAINER_LISTS.iter().any(|l| {
                    pod::list(p, l)
                        .iter()
                        .any(|x| pod::name_of(x) == Some(name))
                });
                let field = if name == PROXY { "containers" } else { key };
                if !present && let Some(list) = pod::list_mut(p, field) {
                    list.push(c.clone());
                }
            }
        }
    }

    /// The user's containers named like one the templates rendered, found in the original pod
    /// (skipping those an earlier injection added itself), in the templates' order and under
    /// the key of the list the templates put them in (istiod's `reapplyOverwrittenContainers`).
    pub(crate) fn from_pod(original: &Value, added: &Added, previous: &Previous) -> Overrides {
        let find = |name: &str| {
            CONTAINER_LISTS
                .iter()
                .flat_map(|l| pod::list(original, l))
                .find(|c| pod::name_of(c) == Some(name))
        };
        let take = |names: &[String]| -> Vec<Value> {
            names
                .iter()
                .filter(|n| !previous.containers.contains(n.as_str()))
                .filter_map(|n| find(n))
                .map(recorded)
                .collect()
        };
        Overrides {
            containers: take(&added.containers),
            init_containers: take(&added.init_containers),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.init_containers.is_empty() && self.containers.is_empty()
    }

    fn all(&self) -> impl Iterator<Item = &Value> {
        self.containers.iter().chain(&self.init_containers)
    }

    /// The user-written proxy, if any.
    pub(crate) fn proxy(&self) -> Option<&Value> {
        self.all().find(|c| pod::name_of(c) == Some(PROXY))
    }

    /// Writes the user's containers in the pod in recorded form before the templates merge
    /// into them, so that the first injection and every later one (which starts from the
    /// record) merge into the same container and come out alike, field order included.
    pub(crate) fn use_recorded_form(&self, p: &mut Value) {
        for c in self.all() {
            let Some(name) = pod::name_of(c) else {
                continue;
            };
            for field in CONTAINER_LISTS {
                if let Some(target) = pod::list_mut_existing(p, field)
                    .and_then(|l| l.iter_mut().find(|t| pod::name_of(t) == Some(name)))
                {
                    *target = c.clone();
                    break;
                }
            }
        }
    }

    /// Merges each override on top of the injected container of the same name, wherever it
    /// now is.
    pub(crate) fn apply(&self, p: &mut Value) {
        for c in self.all() {
            let (Some(name), Value::Object(overlay)) = (pod::name_of(c), c.clone()) else {
                continue;
            };
            for field in CONTAINER_LISTS {
                if let Some(target) = pod::list_mut_existing(p, field)
                    .and_then(|l| l.iter_mut().find(|t| pod::name_of(t) == Some(name)))
                    .and_then(Value::as_object_mut)
                {
                    merge_into(target, overlay);
                    break;
                }
            }
        }
    }

    /// Records the overrides on the pod, on first injection only: injecting again keeps the
    /// record the pod has, as istiod does.
    pub(crate) fn save(&self, p: &mut Value, previous: &Previous) {
        if self.is_empty() || previous.injected {
            return;
        }
        let mut saved = Map::new();
        if !self.containers.is_empty() {
            saved.insert("containers".into(), Value::from(self.containers.clone()));
        }
        if !self.init_containers.is_empty() {
            saved.insert(
                "initContainers".into(),
                Value::from(self.init_containers.clone()),
            );
        }
        if let Some(annotations) = pod::annotations_mut(p) {
            annotations.insert(
                OVERRIDES.into(),
                Value::from(Value::Object(saved).to_string()),
            );
        }
    }
}

/// A user's container as the record keeps it: `image: auto` dropped, Go's field order.
fn recorded(c: &Value) -> Value {
    let mut c = go_container::container(c);
    if let Some(map) = c.as_object_mut()
        && map.get("image").and_then(Value::as_str) == Some("auto")
    {
        map.shift_remove("image");
    }
    c
}

/// In native mode the proxy is an init container: a user `istio-proxy` written under
/// `containers` moves there first, so that it merges with the injected one.
pub(crate) fn move_proxy_to_init_containers(p: &mut Value) {
    let Some(containers) = p
        .get_mut("spec")
        .and_then(|s| s.get_mut("containers"))
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    let Some(i) = containers
        .iter()
        .position(|c| pod::name_of(c) == Some(PROXY))
    else {
        return;
    };
    let proxy = containers.remove(i);
    if let Some(init) = pod::list_mut(p, "initContainers") {
        init.push(proxy);
    }
}

/// A user proxy that sets `runAsUser`/`runAsGroup` changes who the iptables rules exempt: the
/// `-u` of `istio-init` follows it, and `istio-validation` runs as it (istiod's
/// `adjustInitContainerUser`). Under TPROXY the proxy must run as root.
pub(crate) fn adjust_init_user(p: &mut Value, user_proxy: &Value, tproxy: bool) {
    let ctx = user_proxy.get("securityContext");
    let run_as_user = ctx.and_then(|c| c.get("runAsUser")).and_then(Value::as_i64);
    let run_as_group = ctx
        .and_then(|c| c.get("runAsGroup"))
        .and_then(Value::as_i64);
    if run_as_user.is_none() && run_as_group.is_none() {
        return;
    }
    let Some(init) = p
        .get_mut("spec")
        .and_then(|s| s.get_mut("initContainers"))
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for c in init.iter_mut() {
        match pod::name_of(c) {
            Some("istio-validation") => {
                if let Some(sc) = c
                    .as_object_mut()
                    .and_then(|m| pod::map_entry(m, "securityContext"))
                {
                    if let Some(u) = run_as_user {
                        sc.insert("runAsUser".into(), json!(u));
                    }
                    if let Some(g) = run_as_group {
                        sc.insert("runAsGroup".into(), json!(g));
                    }
                }
            }
            Some("istio-init") => {
                if let Some(u) = run_as_user.filter(|u| *u != 0)
                    && let Some(args) = c.get_mut("args").and_then(Value::as_array_mut)
                    && let Some(i) = args.iter().position(|a| a == "-u")
                    && i + 1 < args.len()
                {
                    args[i + 1] = Value::from(u.to_string());
                }
            }
            _ => {}
        }
    }
    if tproxy {
        for field in CONTAINER_LISTS {
            if let Some(sc) = p
                .get_mut("spec")
                .and_then(|s| s.get_mut(field))
                .and_then(Value::as_array_mut)
                .and_then(|l| l.iter_mut().find(|c| pod::name_of(c) == Some(PROXY)))
                .and_then(Value::as_object_mut)
                .and_then(|m| pod::map_entry(m, "securityContext"))
            {
                sc.insert("runAsUser".into(), json!(0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::config::Config;
    use crate::inject::{Outcome, Request, inject};

    fn injected(pod: &Value, native: bool) -> Value {
        let req = Request {
            pod,
            namespace: Some("default"),
            workload: None,
            native_sidecars: native,
        };
        match inject(&Config::embedded(), &req) {
            Ok(Outcome::Injected(i)) => i.pod,
            other => panic!("{other:?}"),
        }
    }

    fn proxy(p: &Value) -> &Value {
        p["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "istio-proxy")
            .expect("a native proxy")
    }

    /// Pods injected before the record followed istiod's form carry the proxy under
    /// `containers` with `image: auto`; injecting them again applies it all the same.
    #[test]
    fn a_record_under_either_key_is_applied_on_reinjection() {
        let user = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "app", "image": "app:1"},
            {"name": "istio-proxy", "image": "auto", "args": ["proxy", "sidecar", "--concurrency", "2"]}]}});
        let once = injected(&user, true);
        let record = once["metadata"]["annotations"]["proxy.istio.io/overrides"].clone();
        assert_eq!(
            record,
            json!(
                r#"{"initContainers":[{"name":"istio-proxy","args":["proxy","sidecar","--concurrency","2"],"resources":{}}]}"#
            )
        );
        let mut old_form = once.clone();
        old_form["metadata"]["annotations"]["proxy.istio.io/overrides"] = json!(
            r#"{"containers":[{"name":"istio-proxy","image":"auto","args":["proxy","sidecar","--concurrency","2"]}]}"#
        );
        let again = injected(&old_form, true);
        assert_eq!(proxy(&again), proxy(&once));
        assert!(
            again["spec"]["containers"]
                .as_array()
                .is_some_and(|l| l.iter().all(|c| c["name"] != "istio-proxy")),
            "{again}"
        );
        // Injecting again keeps the record the pod has.
        assert_eq!(
            again["metadata"]["annotations"]["proxy.istio.io/overrides"],
            old_form["metadata"]["annotations"]["proxy.istio.io/overrides"]
        );
        // And a native record read in classic mode puts the proxy back among the containers.
        let classic = injected(&once, false);
        let in_containers = classic["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["name"] == "istio-proxy")
            .count();
        assert_eq!(in_containers, 1, "{classic}");
        assert!(
            classic["spec"]["initContainers"]
                .as_array()
                .is_some_and(|l| l.iter().all(|c| c["name"] != "istio-proxy"))
        );
    }
}
