//! The serving certificate: loaded from PEM files, swapped atomically on change.
//!
//! The files are polled by content rather than watched with inotify: kubelet updates a mounted
//! Secret by swapping a `..data` symlink, which removes the inode an inotify watch sits on (the
//! bug behind ingress-nginx#6386 and cilium#13636). Reading the paths again always follows the
//! current link.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
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
    #[error("{origin} holds no PEM certificate")]
    NoCertificate { origin: String },
    #[error("{origin} is not a PEM certificate chain: {message}")]
    BadCertificate { origin: String, message: String },
    #[error("{origin} holds no usable PEM private key: {message}")]
    BadKey { origin: String, message: String },
    #[error("the key does not match the certificate ({origin}): {message}")]
    Mismatch { origin: String, message: String },
    /// Outside its validity window: every client would refuse the handshake.
    #[error(
        "{origin}: the certificate is not valid now ({now}): it is valid from {not_before} to {not_after}; accepted: a certificate whose notBefore has passed and whose notAfter has not"
    )]
    OutsideValidity {
        origin: String,
        now: String,
        not_before: String,
        not_after: String,
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
        let origin = format!("{} and {}", self.cert.display(), self.key.display());
        parse_pem(cert_pem, key_pem, &origin)
    }
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// PEM files, polled for changes (a mounted Secret).
    Files(CertFiles),
    /// A PEM pair fixed at start-up (`--tls-self-signed`).
    Pem { cert: String, key: String },
    /// Pairs installed at run time through [`CertResolver::install`] (self-managed
    /// certificates); nothing is served until the first one arrives.
    Installed,
}

impl From<CertFiles> for CertSource {
    fn from(files: CertFiles) -> CertSource {
        CertSource::Files(files)
    }
}

/// Parses a PEM chain (leaf first) and its private key; `origin` names them in errors.
pub fn parse_pem(cert_pem: &[u8], key_pem: &[u8], origin: &str) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            origin: origin.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::BadKey {
        origin: origin.to_owned(),
        message: e.to_string(),
    })?;
    let certified =
        CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::Mismatch {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
    check_validity(&certified, origin, now_unix())?;
    Ok(certified)
}

/// Seconds since the Unix epoch by the system clock (0 if it is set before 1970).
fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Refuses a leaf outside its validity window at `now` (Unix seconds), as every client would:
/// served, it would fail each handshake while the server reports itself ready.
fn check_validity(certified: &CertifiedKey, origin: &str, now: i64) -> Result<(), TlsError> {
    let Some(leaf) = certified.cert.first() else {
        return Ok(());
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return Err(TlsError::BadCertificate {
            origin: origin.to_owned(),
            message: "the leaf certificate is not X.509 DER".to_owned(),
        });
    };
    let validity = cert.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if (not_before..=not_after).contains(&now) {
        return Ok(());
    }
    let show = |t: i64| {
        x509_parser::time::ASN1Time::from_timestamp(t)
            .map_or_else(|_| format!("{t} (Unix seconds)"), |t| t.to_string())
    };
    Err(TlsError::OutsideValidity {
        origin: origin.to_owned(),
        now: show(now),
        not_before: show(not_before),
        not_after: show(not_after),
    })
}

/// The leaf's `notAfter` in Unix seconds, for the expiry gauge; `None` if it cannot be read
/// (rustls accepted the chain, so this is not expected).
pub fn not_after(certified: &CertifiedKey) -> Option<i64> {
    let leaf = certified.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
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

/// Hands every handshake the current certificate; [`CertResolver::reload`] and
/// [`CertResolver::install`] swap it.
#[derive(Debug)]
pub struct CertResolver {
    /// The files to poll, for [`CertSource::Files`].
    files: Option<CertFiles>,
    /// `None` only while waiting for the first installed certificate; handshakes fail then.
    current: ArcSwapOption<CertifiedKey>,
    /// The bytes of the last load attempt, good or bad: a broken pair is reported once and
    /// tried again only when either file (or the installed PEM) changes.
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
    /// server never starts. [`CertSource::Installed`] starts empty.
    pub fn load(source: impl Into<CertSource>) -> Result<CertResolver, TlsError> {
        let (files, current, seen) = match source.into() {
            CertSource::Files(files) => {
                let (cert, key) = files.read()?;
                let certified = files.parse(&cert, &key)?;
                (Some(files), Some(Arc::new(certified)), (cert, key))
            }
            CertSource::Pem { cert, key } => {
                let certified = parse_pem(cert.as_bytes(), key.as_bytes(), "the generated pair")?;
                let seen = (cert.into_bytes(), key.into_bytes());
                (None, Some(Arc::new(certified)), seen)
            }
            CertSource::Installed => (None, None, (Vec::new(), Vec::new())),
        };
        Ok(CertResolver {
            files,
            current: ArcSwapOption::new(current),
            seen: std::sync::Mutex::new(seen),
        })
    }

    /// Re-reads the files; on a change, parses them and swaps the certificate. On error the
    /// last good certificate stays in force. Without files there is nothing to re-read.
    pub fn reload(&self) -> Result<Reload, TlsError> {
        let Some(files) = &self.files else {
            return Ok(Reload::Unchanged);
        };
        let (cert, key) = files.read()?;
        let origin = format!("{} and {}", files.cert.display(), files.key.display());
        self.swap(cert, key, &origin)
    }

    /// Serves `cert_pem`/`key_pem` from the next handshake on, unless they fail to parse, in
    /// which case the certificate in use stays.
    pub fn install(&self, cert_pem: &str, key_pem: &str, origin: &str) -> Result<Reload, TlsError> {
        self.swap(
            cert_pem.as_bytes().to_vec(),
            key_pem.as_bytes().to_vec(),
            origin,
        )
    }

    fn swap(&self, cert: Vec<u8>, key: Vec<u8>, origin: &str) -> Result<Reload, TlsError> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.0 == cert && seen.1 == key && self.current.load().is_some() {
            return Ok(Reload::Unchanged);
        }
        // A Secret update swaps both files at once, but a poll can fall between two plain file
        // writes; the second write changes the content, so the pair is tried again then.
        let parsed = parse_pem(&cert, &key, origin);
        *seen = (cert, key);
        self.current.store(Some(Arc::new(parsed?)));
        Ok(Reload::Swapped)
    }

    /// Whether a certificate is being served.
    pub fn has_cert(&self) -> bool {
        self.current.load().is_some()
    }

    /// The certificate chain in use (the leaf first); empty before the first one.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current
            .load()
            .as_ref()
            .map(|c| c.cert.clone())
            .unwrap_or_default()
    }

    /// The `notAfter` of the leaf in use, in Unix seconds.
    pub fn not_after(&self) -> Option<i64> {
        self.current.load().as_deref().and_then(not_after)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
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

    /// A self-signed pair valid from `not_before` to `not_after` (Unix seconds).
    fn pair_valid(not_before: i64, not_after: i64) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).unwrap();
        params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_certificate_outside_its_validity_window_is_refused() {
        let now = now_unix();
        let day = 86_400;
        for (not_before, not_after, what) in [
            (now - 2 * day, now - day, "expired"),
            (now + day, now + 2 * day, "not yet valid"),
        ] {
            let (cert, key) = pair_valid(not_before, not_after);
            let err = parse_pem(cert.as_bytes(), key.as_bytes(), "the pair").unwrap_err();
            assert!(
                matches!(err, TlsError::OutsideValidity { .. }),
                "{what}: {err}"
            );
            assert!(err.to_string().contains("notAfter"), "{err}");
        }
        // The bounds themselves are inside the window, as X.509 defines it.
        let (cert, key) = pair_valid(now - day, now + day);
        let certified = parse_pem(cert.as_bytes(), key.as_bytes(), "the pair").unwrap();
        check_validity(&certified, "t", now - day).unwrap();
        check_validity(&certified, "t", now + day).unwrap();
        assert!(check_validity(&certified, "t", now + day + 1).is_err());
        assert!(check_validity(&certified, "t", now - day - 1).is_err());
    }

    #[test]
    fn an_expired_pair_on_reload_keeps_the_one_in_use() {
        let dir = tempfile::tempdir().unwrap();
        write_cert(dir.path(), "a.example");
        let resolver = CertResolver::load(files(dir.path())).unwrap();
        let first = resolver.chain();
        let now = now_unix();
        let (cert, key) = pair_valid(now - 2 * 86_400, now - 86_400);
        std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), key).unwrap();
        let err = resolver.reload().unwrap_err();
        assert!(matches!(err, TlsError::OutsideValidity { .. }), "{err}");
        assert_eq!(resolver.chain(), first);
        // And at start-up it is an error.
        let err = CertResolver::load(files(dir.path())).unwrap_err();
        assert!(matches!(err, TlsError::OutsideValidity { .. }), "{err}");
    }

    #[test]
    fn missing_files_fail_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let err = CertResolver::load(files(dir.path())).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
    }
}
