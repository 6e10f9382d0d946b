//! Whether native sidecars can be used, decided from the kubelet versions of the cluster's nodes.
//!
//! Pure: the node watch (see `nodes.rs`) feeds it names and versions, and the webhook asks it per
//! pod. A native sidecar on a kubelet that does not support it is a pod that never starts, so
//! every doubt (no nodes seen yet, an unknown node, a version that does not parse) means off.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// A Kubernetes version, `major.minor.patch`; build suffixes are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

/// The lowest kubelet for `auto`: what Istio's own auto mode requires.
pub const DEFAULT_MIN_KUBELET: Version = Version {
    major: 1,
    minor: 33,
    patch: 0,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Kubernetes version (expected e.g. 1.33 or v1.33.2-eks-4f4795d)")]
pub struct VersionError(pub String);

impl FromStr for Version {
    type Err = VersionError;

    /// Accepts `1.33`, `v1.33.2`, and vendor builds such as `v1.33.2-eks-4f4795d` or
    /// `v1.33.1+k3s1`: an optional `v`, two or three numbers, then an optional `-` or `+` suffix.
    fn from_str(s: &str) -> Result<Version, VersionError> {
        let err = || VersionError(s.to_owned());
        let trimmed = s.trim();
        let core = trimmed.strip_prefix('v').unwrap_or(trimmed);
        let core = core.split(['-', '+']).next().unwrap_or_default();
        let mut parts = core.split('.');
        let mut number = |required: bool| -> Result<u32, VersionError> {
            match parts.next() {
                Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                    p.parse().map_err(|_| err())
                }
                None if !required => Ok(0),
                _ => Err(err()),
            }
        };
        let version = Version {
            major: number(true)?,
            minor: number(true)?,
            patch: number(false)?,
        };
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(version)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Whether a node's `status.nodeInfo.kubeletVersion` is at least `min`; unparsable is false.
pub fn kubelet_at_least(kubelet_version: &str, min: Version) -> bool {
    kubelet_version
        .parse::<Version>()
        .is_ok_and(|version| version >= min)
}

/// The decision for every node, computed once per change of the node list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kubelets {
    /// Every known node allows native sidecars, and at least one node is known.
    every_node: bool,
    /// Per node name: its kubelet allows native sidecars.
    by_node: HashMap<String, bool>,
}

impl Kubelets {
    /// Judges `(node name, kubeletVersion)` pairs against `min`.
    pub fn new<'a>(nodes: impl IntoIterator<Item = (&'a str, &'a str)>, min: Version) -> Kubelets {
        let by_node: HashMap<String, bool> = nodes
            .into_iter()
            .map(|(name, version)| (name.to_owned(), kubelet_at_least(version, min)))
            .collect();
        let every_node = !by_node.is_empty() && by_node.values().all(|ok| *ok);
        Kubelets {
            every_node,
            by_node,
        }
    }

    /// Whether a pod gets a native sidecar: a pod already bound to a node (`spec.nodeName`)
    /// depends on that node's kubelet only (an unknown node counts as too old); any other pod
    /// may land anywhere, so every node must allow it.
    pub fn allow(&self, node: Option<&str>) -> bool {
        match node {
            Some(name) => self.by_node.get(name).copied().unwrap_or(false),
            None => self.every_node,
        }
    }

    /// Number of nodes known.
    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32, patch: u32) -> Version {
        Version {
            major,
            minor,
            patch,
        }
    }

    #[test]
    fn versions_parse_with_prefixes_and_vendor_suffixes() {
        for (text, expected) in [
            ("1.33", v(1, 33, 0)),
            ("v1.33", v(1, 33, 0)),
            ("v1.33.2", v(1, 33, 2)),
            ("v1.33.2-eks-4f4795d", v(1, 33, 2)),
            ("v1.32.6-gke.1025000", v(1, 32, 6)),
            ("v1.34.1+k3s1", v(1, 34, 1)),
            (" v1.30.0 ", v(1, 30, 0)),
        ] {
            assert_eq!(text.parse::<Version>(), Ok(expected), "{text}");
        }
    }

    #[test]
    fn garbage_is_not_a_version() {
        for text in [
            "", "v", "1", "v1.", "1..2", "one.two", "1.33.x", "1.2.3.4", "latest", "v1.-3",
        ] {
            assert!(text.parse::<Version>().is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn comparison_is_numeric_not_textual() {
        let min = v(1, 33, 0);
        assert!(kubelet_at_least("v1.33.0", min));
        assert!(kubelet_at_least("v1.100.0", min));
        assert!(kubelet_at_least("v2.0.0", min));
        assert!(!kubelet_at_least("v1.9.0", min));
        assert!(!kubelet_at_least("v1.32.99-eks-1", min));
        assert!(!kubelet_at_least("unknown", min));
    }

    #[test]
    fn every_node_must_allow_it() {
        let min = DEFAULT_MIN_KUBELET;
        let all_new = Kubelets::new([("a", "v1.33.2-eks-4f4795d"), ("b", "v1.34.0")], min);
        assert!(all_new.allow(None));
        let one_old = Kubelets::new([("a", "v1.33.2"), ("b", "v1.31.4")], min);
        assert!(!one_old.allow(None));
        let one_garbled = Kubelets::new([("a", "v1.33.2"), ("b", "")], min);
        assert!(!one_garbled.allow(None));
    }

    #[test]
    fn no_nodes_known_means_off() {
        let none = Kubelets::new([], DEFAULT_MIN_KUBELET);
        assert!(none.is_empty());
        assert!(!none.allow(None));
        assert!(!Kubelets::default().allow(None));
    }

    #[test]
    fn a_bound_pod_checks_its_own_node_only() {
        let mixed = Kubelets::new(
            [("new", "v1.33.1"), ("old", "v1.29.3")],
            DEFAULT_MIN_KUBELET,
        );
        assert!(!mixed.allow(None));
        assert!(mixed.allow(Some("new")));
        assert!(!mixed.allow(Some("old")));
        // A node the watch has not seen yet cannot be vouched for.
        assert!(!mixed.allow(Some("just-joined")));
    }

    #[test]
    fn the_minimum_is_configurable() {
        let nodes = [("a", "v1.29.0")];
        assert!(!Kubelets::new(nodes, DEFAULT_MIN_KUBELET).allow(None));
        assert!(Kubelets::new(nodes, "1.29".parse().unwrap()).allow(None));
    }
}
