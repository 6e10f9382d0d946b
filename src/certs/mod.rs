//! Webhook serving certificates that the injector creates and rotates itself
//! (`certificates.mode=selfManaged` in the chart).
//!
//! The CA and the serving certificate live in one Secret shared by every replica; the CA bundle
//! is written into the webhook configuration so the API server trusts the serving certificate.
//! [`material`] holds the pure part (PEM handling, expiry decisions, generation) and
//! [`self_managed`] the loop that talks to the API server.

pub mod duration;
pub mod material;
pub mod self_managed;

pub use material::{CertPair, Material, Plan, Policy};
pub use self_managed::{SelfManagedArgs, run};

/// Why certificate handling failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Generating or signing a certificate failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// Stored PEM text is not what it claims to be.
    #[error("invalid {what}: {message}")]
    Pem { what: &'static str, message: String },
    /// The options do not allow a working certificate.
    #[error("invalid self-managed certificate options: {0}")]
    Options(String),
    /// The API server refused or failed a request.
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// The webhook configuration whose caBundle we keep current does not exist.
    #[error("mutating webhook configuration {0} not found")]
    WebhookMissing(String),
    /// Another writer kept winning the race for the Secret.
    #[error("the certificate Secret kept changing under us ({0} conflicts in a row)")]
    Contended(usize),
}
