//! `--tls-self-signed`: a throwaway CA and serving certificate made at start-up, so the real
//! server runs on a laptop with nothing prepared. Not for clusters: the CA key is discarded, so
//! the certificate cannot be renewed, and every start makes a new CA.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use time::OffsetDateTime;

use crate::certs::{CertError, Policy};

/// Names every self-signed certificate covers: what a local client dials.
pub const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The generated material.
#[derive(Debug, Clone)]
pub struct SelfSigned {
    /// The CA certificate (PEM) that clients trust.
    pub ca_pem: String,
    /// The serving certificate (PEM), signed by the CA.
    pub cert_pem: String,
    pub key_pem: String,
    /// The DNS names and IP addresses the serving certificate covers.
    pub names: Vec<String>,
}

/// Makes a CA and a serving certificate for [`LOCAL_NAMES`] plus `extra_names` (DNS names or IP
/// addresses), valid for 90 days. The same code as self-managed certificates issues them.
pub fn generate(extra_names: &[String]) -> Result<SelfSigned, CertError> {
    let mut names: Vec<String> = LOCAL_NAMES.iter().map(|n| (*n).to_owned()).collect();
    for name in extra_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let day = Duration::from_secs(86_400);
    let policy = Policy {
        dns_names: names.clone(),
        ca_validity: day * 365,
        cert_validity: day * 90,
        ca_publish_grace: Duration::ZERO,
        ca_common_name: "sidecar-injector self-signed CA".to_owned(),
    };
    let material = crate::certs::material::plan(None, OffsetDateTime::now_utc(), &policy)?.material;
    Ok(SelfSigned {
        ca_pem: material.ca_bundle,
        cert_pem: material.cert,
        key_pem: material.key,
        names,
    })
}

/// A curl command that sends a small pod CREATE review to the server at `addr`, trusting the
/// CA in `ca_file`. An unspecified listen address (`0.0.0.0`, `::`) is reached as `localhost`.
pub fn curl_example(addr: SocketAddr, ca_file: &Path) -> String {
    let host = if addr.ip().is_unspecified() || addr.ip().is_loopback() {
        "localhost".to_owned()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    let review = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"1","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","namespace":"default","object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"demo"},"spec":{"containers":[{"name":"app","image":"nginx"}]}}}}"#;
    format!(
        "curl --cacert {} -H 'Content-Type: application/json' -d '{review}' https://{host}:{}/inject",
        shell_quote(&ca_file.display().to_string()),
        addr.port()
    )
}

/// Quotes `s` for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    let plain = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@%,".contains(&b));
    if plain && !s.is_empty() {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;

    use crate::server::tls::{not_after, parse_pem};

    #[test]
    fn the_certificate_covers_local_names_and_extras_and_is_signed_by_the_ca() {
        let made = generate(&["injector.test".to_owned(), "localhost".to_owned()]).unwrap();
        assert_eq!(
            made.names,
            ["localhost", "127.0.0.1", "::1", "injector.test"]
        );
        let certified = parse_pem(made.cert_pem.as_bytes(), made.key_pem.as_bytes(), "t").unwrap();
        assert!(not_after(&certified).is_some());

        // A client trusting only the CA accepts the certificate for each name.
        let ca = crate::certs::material::parse_certificates(&made.ca_pem).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca[0].clone().into()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(crate::server::tls::provider()),
        )
        .build()
        .unwrap();
        for name in ["localhost", "127.0.0.1", "::1", "injector.test"] {
            let server_name = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(
                    &certified.cert[0],
                    &[],
                    &server_name,
                    &[],
                    rustls::pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = rustls::pki_types::ServerName::try_from("elsewhere.test").unwrap();
        assert!(
            verifier
                .verify_server_cert(
                    &certified.cert[0],
                    &[],
                    &other,
                    &[],
                    rustls::pki_types::UnixTime::now()
                )
                .is_err()
        );
    }

    #[test]
    fn the_curl_example_targets_the_listen_port() {
        let ca = Path::new("/tmp/sidecar-injector-ca.crt");
        let line = curl_example("0.0.0.0:9443".parse().unwrap(), ca);
        assert!(line.starts_with("curl --cacert /tmp/sidecar-injector-ca.crt "));
        assert!(line.ends_with(" https://localhost:9443/inject"), "{line}");
        let line = curl_example("10.1.2.3:8443".parse().unwrap(), Path::new("/a b/ca.crt"));
        assert!(line.contains("--cacert '/a b/ca.crt'"), "{line}");
        assert!(line.ends_with("https://10.1.2.3:8443/inject"), "{line}");
        let line = curl_example("[fd00::1]:9443".parse().unwrap(), ca);
        assert!(line.ends_with("https://[fd00::1]:9443/inject"), "{line}");
    }
}
