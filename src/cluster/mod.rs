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
    // kube builds its TLS config from rustls' process-wide provider, which rustls picks from
    // its crate features; if a dependency ever enables a second provider (tokio-rustls' default
    // features add aws-lc-rs) it cannot pick and panics. Installing ring, the provider this
    // crate serves with, rules that out; an error only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    kube::Client::try_default()
        .await
        .map_err(ClusterError::NoAccess)
}
