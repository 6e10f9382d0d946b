//! The serving certificate: loaded from PEM files, swapped atomically on change.
//!
//! The files are polled by content rather than watched with inotify: kubelet updates a mounted
//! Secret by swapping a `..data` symlink, which removes the inode an inotify watch sits on (the
//! bug behind ingress-nginx#6386 and cilium#13636). Reading the paths again always follows the
//! current link.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} is not a PEM certificate chain: {message}")]
    BadCertificate { path: PathBuf, message: String },
    #[error("{path} holds no usable PEM private key: {message}")]
    BadKey { path: PathBuf, message: String },
    #[error("the key in {key} does not match the certificate in {cert}: {message}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
}

/// Where the PEM certificate chain and private key live (`tls.crt` and `tls.key` of a Secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// The raw bytes of both files, to detect a change cheaply.
    pub fn read(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        Ok((read(&self.cert)?, read(&self.key)?))
    }

    /// Parses and checks the chain and key. The key must match the first certificate.
    pub fn parse(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::BadCertificate {
                path: self.cert.clone(),
                message: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: self.cert.clone(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::BadKey {
            path: self.key.clone(),
            message: e.to_string(),
        })?;
        CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::Mismatch {
            cert: self.cert.clone(),
            key: self.key.clone(),
            message: e.to_string(),
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The crypto provider this crate is built with (ring), independent of any process default.
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Hands every handshake the current certificate; [`CertResolver::reload`] swaps it.
#[derive(Debug)]
pub struct CertResolver {
    files: CertFiles,
    current: ArcSwap<CertifiedKey>,
    /// The bytes of the last load attempt, good or bad: a broken pair is reported once and
    /// tried again only when either file changes.
    seen: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// The files are as they were.
    Unchanged,
    /// A new certificate is in use.
    Swapped,
}

impl CertResolver {
    /// Loads the certificate, failing if the files are missing or invalid, so a misconfigured
    /// server never starts.
    pub fn load(files: CertFiles) -> Result<CertResolver, TlsError> {
        let (cert, key) = files.read()?;
        let certified = files.parse(&cert, &key)?;
        Ok(CertResolver {
            files,
            current: ArcSwap::from_pointee(certified),
            seen: std::sync::Mutex::new((cert, key)),
        })
    }

    /// Re-reads the files; on a change, parses them and swaps the certificate. On error the
    /// last good certificate stays in force.
    pub fn reload(&self) -> Result<Reload, TlsError> {
        let (cert, key) = self.files.read()?;
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.0 == cert && seen.1 == key {
            return Ok(Reload::Unchanged);
        }
        // A Secret update swaps both files at once, but a poll can fall between two plain file
        // writes; the second write changes the content, so the pair is tried again then.
        let parsed = self.files.parse(&cert, &key);
        *seen = (cert, key);
        self.current.store(Arc::new(parsed?));
        Ok(Reload::Swapped)
    }

    /// The certificate chain in use (the leaf first).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().cert.clone()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The rustls configuration: TLS 1.2 and 1.3, no client auth, ALPN h2 then http/1.1 (the API
/// server speaks both).
pub fn server_config(resolver: Arc<CertResolver>) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_cert(dir: &Path, name: &str) -> (Vec<u8>, Vec<u8>) {
        let generated = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let cert = generated.cert.pem().into_bytes();
        let key = generated.signing_key.serialize_pem().into_bytes();
        std::fs::write(dir.join("tls.crt"), &cert).unwrap();
        std::fs::write(dir.join("tls.key"), &key).unwrap();
        (cert, key)
    }

    fn files(dir: &Path) -> CertFiles {
        CertFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        }
    }

    #[test]
    fn loads_then_swaps_on_change_and_keeps_the_old_one_on_error() {
        let dir = tempfile::tempdir().unwrap();
        write_cert(dir.path(), "a.example");
        let resolver = CertResolver::load(files(dir.path())).unwrap();
        let first = resolver.chain();
        assert_eq!(resolver.reload().unwrap(), Reload::Unchanged);

        write_cert(dir.path(), "b.example");
        assert_eq!(resolver.reload().unwrap(), Reload::Swapped);
        let second = resolver.chain();
        assert_ne!(first, second);

        std::fs::write(dir.path().join("tls.crt"), b"garbage").unwrap();
        let err = resolver.reload().unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        assert_eq!(resolver.chain(), second);
        // The same broken content is not reported again.
        assert_eq!(resolver.reload().unwrap(), Reload::Unchanged);
        assert_eq!(resolver.chain(), second);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_cert(dir.path(), "a.example");
        let other = rcgen::generate_simple_self_signed(vec!["b.example".to_owned()]).unwrap();
        std::fs::write(
            dir.path().join("tls.key"),
            other.signing_key.serialize_pem(),
        )
        .unwrap();
        let err = CertResolver::load(files(dir.path())).unwrap_err();
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
    }

    #[test]
    fn missing_files_fail_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let err = CertResolver::load(files(dir.path())).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
    }
}
