//! The Node watch behind native sidecars `auto`: keeps every node's kubelet version and
//! publishes a fresh [`Kubelets`] decision whenever a node joins, leaves or changes version.

use std::collections::BTreeMap;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use tracing::{debug, info, warn};

use super::kubelet::{Kubelets, Version};

/// Node name -> `status.nodeInfo.kubeletVersion` (empty when the node does not report one,
/// which the decision treats as too old).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NodeVersions(BTreeMap<String, String>);

impl NodeVersions {
    /// Records `node`; returns whether anything changed. Node status is updated every few
    /// seconds by each kubelet, so most events change nothing we care about.
    pub fn apply(&mut self, node: &Node) -> bool {
        let Some(name) = node.metadata.name.clone() else {
            return false;
        };
        let version = kubelet_version(node);
        if self.0.get(&name) == Some(&version) {
            return false;
        }
        self.0.insert(name, version);
        true
    }

    /// Forgets `node`; returns whether it was known.
    pub fn delete(&mut self, node: &Node) -> bool {
        node.metadata
            .name
            .as_ref()
            .is_some_and(|name| self.0.remove(name).is_some())
    }

    /// The decision for these nodes.
    pub fn decide(&self, min: Version) -> Kubelets {
        Kubelets::new(self.0.iter().map(|(n, v)| (n.as_str(), v.as_str())), min)
    }
}

fn kubelet_version(node: &Node) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.kubelet_version.clone())
        .unwrap_or_default()
}

/// Watches the cluster's Nodes forever, calling `publish` after the initial list and after
/// every change that matters. A re-list (after a lost watch) is applied whole once complete,
/// so nodes deleted meanwhile disappear. Errors are logged and retried with backoff.
pub async fn watch(client: kube::Client, min: Version, mut publish: impl FnMut(Kubelets)) {
    let nodes: Api<Node> = Api::all(client);
    let stream = watcher(nodes, watcher::Config::default()).default_backoff();
    futures_util::pin_mut!(stream);
    let mut known = NodeVersions::default();
    let mut relisting: Option<NodeVersions> = None;
    while let Some(event) = stream.next().await {
        let changed = match event {
            Ok(watcher::Event::Init) => {
                relisting = Some(NodeVersions::default());
                false
            }
            Ok(watcher::Event::InitApply(node)) => {
                if let Some(list) = relisting.as_mut() {
                    list.apply(&node);
                }
                false
            }
            Ok(watcher::Event::InitDone) => {
                let list = relisting.take().unwrap_or_default();
                info!(nodes = list.0.len(), "node list received");
                let changed = list != known;
                known = list;
                // The first list always publishes, even when the cluster has no nodes.
                changed || known.0.is_empty()
            }
            Ok(watcher::Event::Apply(node)) => known.apply(&node),
            Ok(watcher::Event::Delete(node)) => known.delete(&node),
            Err(err) => {
                warn!(error = %err, "node watch failed; retrying");
                false
            }
        };
        if changed {
            let decision = known.decide(min);
            debug!(
                nodes = decision.len(),
                every_node = decision.allow(None),
                "kubelet versions changed"
            );
            publish(decision);
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeStatus, NodeSystemInfo};
    use kube::api::ObjectMeta;

    use super::*;
    use crate::cluster::DEFAULT_MIN_KUBELET;

    fn node(name: &str, kubelet: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            status: kubelet.map(|v| NodeStatus {
                node_info: Some(NodeSystemInfo {
                    kubelet_version: v.to_owned(),
                    ..NodeSystemInfo::default()
                }),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    #[test]
    fn only_version_changes_count() {
        let mut known = NodeVersions::default();
        assert!(known.apply(&node("a", Some("v1.33.0"))));
        assert!(!known.apply(&node("a", Some("v1.33.0"))));
        assert!(known.apply(&node("a", Some("v1.34.0"))));
        assert!(known.delete(&node("a", None)));
        assert!(!known.delete(&node("a", None)));
    }

    #[test]
    fn a_node_without_status_counts_as_too_old() {
        let mut known = NodeVersions::default();
        known.apply(&node("a", Some("v1.33.0")));
        assert!(known.decide(DEFAULT_MIN_KUBELET).allow(None));
        known.apply(&node("b", None));
        assert!(!known.decide(DEFAULT_MIN_KUBELET).allow(None));
        assert!(known.decide(DEFAULT_MIN_KUBELET).allow(Some("a")));
    }
}
