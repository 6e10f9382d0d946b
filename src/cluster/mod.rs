//! Cluster access for the server: the only code besides the self-managed certificates (`certs`)
//! that talks to the API server. Everything here is optional: the webhook answers without a
//! cluster, and what needs one falls back to the safe choice.

pub mod kubelet;
pub mod nodes;

pub use kubelet::{DEFAULT_MIN_KUBELET, Kubelets, Version, VersionError};

/// Why the cluster cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Neither an in-cluster service account nor a kubeconfig was found, or it is unusable.
    #[error("no cluster access (no in-cluster config and no usable kubeconfig): {0}")]
    NoAccess(#[source] kube::Error),
}

/// A client from the in-cluster service account, else the kubeconfig (`KUBECONFIG`,
/// `~/.kube/config`).
pub async fn client() -> Result<kube::Client, ClusterError> {
    kube::Client::try_default()
        .await
        .map_err(ClusterError::NoAccess)
}
