//! Containers the user wrote under an injected name (usually `istio-proxy`): their fields win
//! over the template's. They are saved in `proxy.istio.io/overrides` on first injection so that
//! injecting again, after the injected containers are stripped, applies them the same way.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use super::merge::merge_into;
use super::pod::{self, CONTAINER_LISTS, PROXY};
use super::status::Previous;

pub(crate) const OVERRIDES: &str = "proxy.istio.io/overrides";

/// The user's containers that override injected ones, by the list they were written in.
#[derive(Debug, Default)]
pub(crate) struct Overrides {
    pub init_containers: Vec<Value>,
    pub containers: Vec<Value>,
    /// They came from the annotation of an earlier injection.
    from_annotation: bool,
}

impl Overrides {
    /// The overrides saved by an earlier injection (validated JSON).
    pub(crate) fn saved(p: &Value) -> Option<Overrides> {
        let text = pod::annotation(p, OVERRIDES)?;
        let value = crate::value::from_str(text).ok()?;
        let list = |k: &str| {
            value
                .get(k)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        Some(Overrides {
            init_containers: list("initContainers"),
            containers: list("containers"),
            from_annotation: true,
        })
    }

    /// Puts saved overrides back into a stripped pod, so that templates see the same pod they
    /// saw the first time.
    pub(crate) fn reinsert(&self, p: &mut Value) {
        for (field, items) in [
            ("initContainers", &self.init_containers),
            ("containers", &self.containers),
        ] {
            if items.is_empty() {
                continue;
            }
            let present: HashSet<String> = pod::list(p, field)
                .iter()
                .filter_map(pod::name_of)
                .map(str::to_string)
                .collect();
            if let Some(list) = pod::list_mut(p, field) {
                for c in items {
                    if pod::name_of(c).is_some_and(|n| !present.contains(n)) {
                        list.push(c.clone());
                    }
                }
            }
        }
    }

    /// The user's containers named like an injected one, found in the original pod (skipping
    /// those an earlier injection added itself).
    pub(crate) fn from_pod(
        original: &Value,
        injected_names: &[&str],
        previous: &Previous,
    ) -> Overrides {
        let mut out = Overrides::default();
        for field in CONTAINER_LISTS {
            for c in pod::list(original, field) {
                let Some(name) = pod::name_of(c) else {
                    continue;
                };
                if injected_names.contains(&name) && !previous.containers.contains(name) {
                    let target = if field == "initContainers" {
                        &mut out.init_containers
                    } else {
                        &mut out.containers
                    };
                    target.push(c.clone());
                }
            }
        }
        out
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.init_containers.is_empty() && self.containers.is_empty()
    }

    /// The user-written proxy, if any.
    pub(crate) fn proxy(&self) -> Option<&Value> {
        self.containers
            .iter()
            .chain(&self.init_containers)
            .find(|c| pod::name_of(c) == Some(PROXY))
    }

    /// Merges each override on top of the injected container of the same name, wherever it
    /// now is. `image: auto` means "the injected image".
    pub(crate) fn apply(&self, p: &mut Value) {
        for c in self.containers.iter().chain(&self.init_containers) {
            let Some(name) = pod::name_of(c) else {
                continue;
            };
            let mut overlay = c.clone();
            if let Some(map) = overlay.as_object_mut()
                && map.get("image").and_then(Value::as_str) == Some("auto")
            {
                map.shift_remove("image");
            }
            let Value::Object(overlay) = overlay else {
                continue;
            };
            let mut overlay = Some(overlay);
            for field in CONTAINER_LISTS {
                if let Some(target) = p
                    .get_mut("spec")
                    .and_then(|s| s.get_mut(field))
                    .and_then(Value::as_array_mut)
                    .and_then(|l| l.iter_mut().find(|t| pod::name_of(t) == Some(name)))
                    .and_then(Value::as_object_mut)
                {
                    if let Some(overlay) = overlay.take() {
                        merge_into(target, overlay);
                    }
                    break;
                }
            }
        }
    }

    /// Records the overrides on the pod for the next injection.
    pub(crate) fn save(&self, p: &mut Value) {
        if self.is_empty() {
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
            let text = Value::Object(saved).to_string();
            if !(self.from_annotation
                && annotations.get(OVERRIDES).and_then(Value::as_str) == Some(text.as_str()))
            {
                annotations.insert(OVERRIDES.into(), Value::from(text));
            }
        }
    }
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
