//! Where the injected containers go in the pod's lists (istiod's `reorderPod`).

use serde_json::Value;

use super::pod::{self, PROXY};

/// Orders init containers and containers.
///
/// Native mode: `istio-init`, `istio-validation`, `istio-proxy`, `enable-core-dump`, then the
/// user's init containers, which so run with the proxy up. Classic mode: `istio-validation`
/// first, the user's init containers, then `istio-init` and `enable-core-dump` (so user init
/// containers are not caught by the iptables redirect); `istio-proxy` last among the containers
/// so that `kubectl exec` picks the app, or first when the app must wait for it.
pub(crate) fn reorder(p: &mut Value, native: bool, hold: bool) {
    if let Some(init) = existing_list(p, "initContainers") {
        let rank = |c: &Value| -> u8 {
            match (native, pod::name_of(c)) {
                (true, Some("istio-init")) => 0,
                (true, Some("istio-validation")) => 1,
                (true, Some(PROXY)) => 2,
                (true, Some("enable-core-dump")) => 3,
                (true, _) => 4,
                (false, Some("istio-validation")) => 0,
                (false, Some("istio-init")) => 2,
                (false, Some("enable-core-dump")) => 3,
                (false, _) => 1,
            }
        };
        // A stable sort keeps the user's own order within each rank.
        init.sort_by_key(rank);
    }
    if let Some(containers) = existing_list(p, "containers")
        && let Some(i) = containers
            .iter()
            .position(|c| pod::name_of(c) == Some(PROXY))
    {
        let proxy = containers.remove(i);
        if hold {
            containers.insert(0, proxy);
        } else {
            containers.push(proxy);
        }
    }
}

fn existing_list<'a>(p: &'a mut Value, field: &str) -> Option<&'a mut Vec<Value>> {
    p.get_mut("spec")?.get_mut(field)?.as_array_mut()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(v: &Value, field: &str) -> Vec<String> {
        pod::list(v, field)
            .iter()
            .filter_map(pod::name_of)
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn native_puts_ours_before_user_init_containers() {
        let mut p = json!({"spec": {"initContainers": [{"name": "u1"}, {"name": "istio-proxy"}, {"name": "u2"}, {"name": "istio-init"}], "containers": [{"name": "app"}]}});
        reorder(&mut p, true, false);
        assert_eq!(
            names(&p, "initContainers"),
            ["istio-init", "istio-proxy", "u1", "u2"]
        );
    }

    #[test]
    fn classic_puts_init_last_and_proxy_last_or_first() {
        let mut p = json!({"spec": {"initContainers": [{"name": "istio-init"}, {"name": "u1"}], "containers": [{"name": "istio-proxy"}, {"name": "a"}, {"name": "b"}]}});
        reorder(&mut p, false, false);
        assert_eq!(names(&p, "initContainers"), ["u1", "istio-init"]);
        assert_eq!(names(&p, "containers"), ["a", "b", "istio-proxy"]);
        reorder(&mut p, false, true);
        assert_eq!(names(&p, "containers"), ["istio-proxy", "a", "b"]);
    }
}
