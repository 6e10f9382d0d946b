//! Cluster access: the only code besides the self-managed certificates (`certs`) that talks to
//! the API server. For the server everything here is optional: the webhook answers without a
//! cluster, and what needs one falls back to the safe choice. `outdated` and `rollout` read
//! pods and workloads (`upgrade`) and restart workloads (`rollout`).

pub mod kubelet;
pub mod nodes;
pub mod rollout;
pub mod upgrade;

pub use kubelet::{DEFAULT_MIN_KUBELET, Kubelets, Version, VersionError};

/// Why the cluster cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Neither an in-cluster service account nor a kubeconfig was found, or it is unusable.
    #[error("no cluster access (no in-cluster config and no usable kubeconfig): {0}")]
    NoAccess(#[source] kube::Error),
    /// The kubeconfig context asked for cannot be loaded.
    #[error("cannot use the kubeconfig context {context:?}: {source}")]
    Context {
        context: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
}

/// A client for a kubeconfig context (`KUBECONFIG`, `~/.kube/config`), or, without one, as
/// [`client`] finds it.
pub async fn client_for(context: Option<&str>) -> Result<kube::Client, ClusterError> {
    let Some(context) = context else {
        return client().await;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let options = kube::config::KubeConfigOptions {
        context: Some(context.to_string()),
        ..Default::default()
    };
    let config = kube::Config::from_kubeconfig(&options)
        .await
        .map_err(|source| ClusterError::Context {
            context: context.to_string(),
            source,
        })?;
    kube::Client::try_from(config).map_err(ClusterError::NoAccess)
}

/// A client from the kubeconfig (`KUBECONFIG`, `~/.kube/config`), else the in-cluster service
/// account.
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
