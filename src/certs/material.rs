//! The pure part of self-managed certificates: what the Secret holds, when to renew, and
//! generating CAs and serving certificates. No I/O and no clock: `now` is an argument.
//!
//! Rotation without an outage: the API server trusts whatever is in the webhook's caBundle, and
//! replicas may serve an older or newer certificate for a while. So a new CA is first added to
//! the bundle next to the old one (which stays until it expires), and serving certificates are
//! signed by it only once it has been published for `ca_publish_grace`. The serving certificate
//! itself can then be swapped at any time, because its CA is already trusted.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData as _,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

use super::CertError;

/// Secret keys (the `kubernetes.io/tls` layout plus the CA's key).
pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";
pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";

/// Certificates start this long before they are made, so a node whose clock is slightly behind
/// does not reject a fresh certificate as not yet valid.
const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

/// What the Secret holds, as PEM text.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Material {
    /// `ca.crt`: every CA still trusted, newest first. This is the webhook's caBundle.
    pub ca_bundle: String,
    /// `ca.key`: the private key of the newest CA.
    pub ca_key: String,
    /// `tls.crt`: the serving certificate.
    pub cert: String,
    /// `tls.key`: its private key.
    pub key: String,
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Private keys stay out of logs.
        f.debug_struct("Material")
            .field("ca_bundle", &self.ca_bundle)
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl Material {
    /// The serving certificate and key, for the TLS listener.
    pub fn pair(&self) -> CertPair {
        CertPair {
            cert_pem: self.cert.clone(),
            key_pem: self.key.clone(),
        }
    }
}

/// A serving certificate (PEM, leaf first) and its private key (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CertPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertPair")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// What certificates to make.
#[derive(Debug, Clone)]
pub struct Policy {
    /// DNS names of the webhook Service; the serving certificate covers exactly these.
    pub dns_names: Vec<String>,
    pub ca_validity: Duration,
    pub cert_validity: Duration,
    /// How long a new CA sits in the caBundle before serving certificates are signed by it,
    /// so every replica has published it to the webhook configuration first.
    pub ca_publish_grace: Duration,
    pub ca_common_name: String,
}

impl Policy {
    /// Rejects options that cannot give a working certificate.
    pub fn validate(&self) -> Result<(), CertError> {
        if self.dns_names.is_empty() {
            return Err(CertError::Options("at least one DNS name is needed".into()));
        }
        if self.cert_validity >= self.ca_validity {
            return Err(CertError::Options(format!(
                "the serving certificate validity ({}s) must be shorter than the CA's ({}s)",
                self.cert_validity.as_secs(),
                self.ca_validity.as_secs()
            )));
        }
        Ok(())
    }
}

/// The outcome of [`plan`]: the material to hold, and why it differs from what was stored.
#[derive(Debug, Clone)]
pub struct Plan {
    pub material: Material,
    /// The material must be written back to the Secret.
    pub changed: bool,
    /// Human-readable reasons for every change, for the log.
    pub reasons: Vec<String>,
}

/// Whether less than a third of the lifetime from `not_before` to `not_after` is left at `now`.
pub fn needs_renewal(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> bool {
    let lifetime = not_after - not_before;
    let remaining = not_after - now;
    remaining * 3 < lifetime
}

/// The facts of one parsed certificate.
#[derive(Debug, Clone)]
struct CertInfo {
    der: Vec<u8>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    spki: Vec<u8>,
    is_ca: bool,
    dns_names: BTreeSet<String>,
}

impl CertInfo {
    fn parse(der: Vec<u8>) -> Result<CertInfo, CertError> {
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| CertError::Pem {
            what: "certificate",
            message: e.to_string(),
        })?;
        let dns_names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect(),
            _ => BTreeSet::new(),
        };
        let info = CertInfo {
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            spki: cert.public_key().raw.to_vec(),
            is_ca: cert.is_ca(),
            dns_names,
            der: Vec::new(),
        };
        Ok(CertInfo { der, ..info })
    }

    /// Whether this certificate's signature verifies with `issuer`'s public key.
    fn signed_by(&self, issuer: &CertInfo) -> bool {
        let (Ok((_, cert)), Ok((_, ca))) = (
            X509Certificate::from_der(&self.der),
            X509Certificate::from_der(&issuer.der),
        ) else {
            return false;
        };
        cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
    }

    fn pem(&self) -> String {
        to_pem("CERTIFICATE", &self.der)
    }
}

/// Encodes DER as PEM with the standard 64-column lines.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Every `CERTIFICATE` block of a PEM text, in order. Other blocks are ignored; text that holds
/// no certificate at all is an error.
pub fn parse_certificates(pem: &str) -> Result<Vec<Vec<u8>>, CertError> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| CertError::Pem {
            what: "PEM",
            message: e.to_string(),
        })?;
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
    }
    if out.is_empty() {
        return Err(CertError::Pem {
            what: "PEM",
            message: "no CERTIFICATE block".into(),
        });
    }
    Ok(out)
}

fn parse_infos(pem: &str) -> Result<Vec<CertInfo>, CertError> {
    parse_certificates(pem)?
        .into_iter()
        .map(CertInfo::parse)
        .collect()
}

fn key_matches(key: &KeyPair, cert: &CertInfo) -> bool {
    key.subject_public_key_info() == cert.spki
}

fn to_offset(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

/// Generates a new CA valid from `now` for `policy.ca_validity`.
fn generate_ca(policy: &Policy, now: OffsetDateTime) -> Result<(CertInfo, KeyPair), CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, policy.ca_common_name.clone());
    params.distinguished_name = dn;
    // Path length 0: this CA signs serving certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + to_offset(policy.ca_validity);
    let cert = params.self_signed(&key)?;
    Ok((CertInfo::parse(cert.der().to_vec())?, key))
}

/// Issues a serving certificate for `policy.dns_names`, signed by `ca`, never outliving it.
fn issue(
    policy: &Policy,
    now: OffsetDateTime,
    ca: &CertInfo,
    ca_key: &KeyPair,
) -> Result<(String, String), CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(policy.dns_names.clone())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, policy.dns_names[0].clone());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - CLOCK_SKEW;
    params.not_after = (now + to_offset(policy.cert_validity)).min(ca.not_after);
    let issuer = Issuer::from_ca_cert_der(&ca.der.clone().into(), ca_key)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Decides what the Secret should hold at `now`, given what it holds (`None`: no Secret yet).
/// Unreadable parts are replaced, never trusted.
pub fn plan(
    current: Option<&Material>,
    now: OffsetDateTime,
    policy: &Policy,
) -> Result<Plan, CertError> {
    policy.validate()?;
    let empty = Material::default();
    let current = current.unwrap_or(&empty);
    let mut reasons = Vec::new();

    // The trusted CAs: drop expired ones and anything that is not a CA.
    let mut cas = if current.ca_bundle.trim().is_empty() {
        Vec::new()
    } else {
        parse_infos(&current.ca_bundle).unwrap_or_else(|e| {
            reasons.push(format!("{CA_CERT_KEY} unreadable ({e})"));
            Vec::new()
        })
    };
    let before = cas.len();
    cas.retain(|c| c.is_ca && c.not_after > now);
    if cas.len() < before {
        reasons.push(format!("dropped {} expired CA(s)", before - cas.len()));
    }

    // The newest CA signs; its key must be the stored one, and it must not be due for renewal.
    let stored_key = KeyPair::from_pem(&current.ca_key).ok();
    let mut ca_key = match (cas.first(), stored_key) {
        (Some(ca), Some(key)) if key_matches(&key, ca) => {
            if needs_renewal(ca.not_before, ca.not_after, now) {
                reasons.push("CA renewal due (less than a third of its lifetime left)".into());
                None
            } else {
                Some(key)
            }
        }
        (None, _) => {
            reasons.push("no valid CA".into());
            None
        }
        (Some(_), _) => {
            reasons.push(format!("{CA_KEY_KEY} does not match the newest CA"));
            None
        }
    };
    if ca_key.is_none() {
        let (ca, key) = generate_ca(policy, now)?;
        cas.insert(0, ca);
        ca_key = Some(key);
    }
    let (signer, signer_key) = match (cas.first(), ca_key.as_ref()) {
        (Some(ca), Some(key)) => (ca, key),
        _ => {
            return Err(CertError::Options("no signing CA after generation".into()));
        }
    };

    // The serving certificate.
    let wanted: BTreeSet<String> = policy.dns_names.iter().cloned().collect();
    let serving = parse_infos(&current.cert)
        .ok()
        .and_then(|mut v| (!v.is_empty()).then(|| v.remove(0)));
    let serving_key = KeyPair::from_pem(&current.key).ok();
    let usable = match (&serving, &serving_key) {
        (Some(cert), Some(key)) => {
            if !key_matches(key, cert) {
                Err(format!("{KEY_KEY} does not match {CERT_KEY}"))
            } else if cert.dns_names != wanted {
                Err("the serving certificate's DNS names changed".into())
            } else if cert.not_after <= now {
                Err("the serving certificate expired".into())
            } else if !cas.iter().any(|ca| cert.signed_by(ca)) {
                Err("the serving certificate is not signed by a trusted CA".into())
            } else {
                Ok(cert)
            }
        }
        _ => Err("no readable serving certificate".into()),
    };
    let (cert, key) = match usable {
        Ok(cert) if !needs_renewal(cert.not_before, cert.not_after, now) => {
            (current.cert.clone(), current.key.clone())
        }
        Ok(_) if now - (signer.not_before + CLOCK_SKEW) < to_offset(policy.ca_publish_grace) => {
            // Renewal is due but the newest CA may not be in every caBundle yet; the current
            // certificate is still valid, so wait for the next pass.
            reasons.push("serving certificate renewal waits for the new CA to be published".into());
            (current.cert.clone(), current.key.clone())
        }
        Ok(_) => {
            reasons.push(
                "serving certificate renewal due (less than a third of its lifetime left)".into(),
            );
            issue(policy, now, signer, signer_key)?
        }
        Err(why) => {
            reasons.push(why);
            issue(policy, now, signer, signer_key)?
        }
    };

    let material = Material {
        ca_bundle: cas.iter().map(CertInfo::pem).collect(),
        // Keep the stored text when it is the signer's key, so an unchanged Secret stays equal.
        ca_key: match KeyPair::from_pem(&current.ca_key) {
            Ok(k) if k.subject_public_key_info() == signer_key.subject_public_key_info() => {
                current.ca_key.clone()
            }
            _ => signer_key.serialize_pem(),
        },
        cert,
        key,
    };
    let changed = material != *current;
    Ok(Plan {
        material,
        changed,
        reasons,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            dns_names: vec![
                "injector.ns.svc".into(),
                "injector.ns.svc.cluster.local".into(),
            ],
            ca_validity: Duration::from_secs(300 * 86_400),
            cert_validity: Duration::from_secs(30 * 86_400),
            ca_publish_grace: Duration::from_secs(600),
            ca_common_name: "injector-ca".into(),
        }
    }

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("valid timestamp")
    }

    fn days(n: i64) -> time::Duration {
        time::Duration::days(n)
    }

    fn fresh() -> Material {
        let p = plan(None, t0(), &policy()).expect("plan");
        assert!(p.changed);
        p.material
    }

    fn cas(m: &Material) -> Vec<CertInfo> {
        parse_infos(&m.ca_bundle).expect("bundle parses")
    }

    fn serving(m: &Material) -> CertInfo {
        parse_infos(&m.cert).expect("cert parses").remove(0)
    }

    #[test]
    fn renewal_is_due_when_less_than_a_third_is_left() {
        let start = t0();
        let end = start + days(90);
        assert!(!needs_renewal(start, end, start));
        assert!(!needs_renewal(start, end, start + days(59)));
        assert!(needs_renewal(start, end, start + days(61)));
        assert!(needs_renewal(start, end, end + days(1)));
    }

    #[test]
    fn pem_round_trips_and_rejects_garbage() {
        let m = fresh();
        let ders = parse_certificates(&m.ca_bundle).expect("CA parses");
        assert_eq!(ders.len(), 1);
        assert_eq!(to_pem("CERTIFICATE", &ders[0]), m.ca_bundle);
        let two = format!("{}{}", m.cert, m.ca_bundle);
        assert_eq!(parse_certificates(&two).expect("chain").len(), 2);
        assert!(parse_certificates("").is_err());
        assert!(parse_certificates("not pem at all").is_err());
        assert!(
            parse_certificates(&m.key).is_err(),
            "a key is not a certificate"
        );
    }

    #[test]
    fn first_plan_makes_a_ca_and_a_serving_certificate_it_signs() {
        let m = fresh();
        let ca = &cas(&m)[0];
        let cert = serving(&m);
        assert!(ca.is_ca);
        assert!(!cert.is_ca);
        assert!(cert.signed_by(ca));
        assert_eq!(cert.dns_names, policy().dns_names.into_iter().collect());
        assert!(key_matches(&KeyPair::from_pem(&m.key).expect("key"), &cert));
        assert!(key_matches(
            &KeyPair::from_pem(&m.ca_key).expect("CA key"),
            ca
        ));
        assert!(cert.not_before <= t0() && cert.not_after > t0() + days(29));
    }

    #[test]
    fn a_valid_secret_is_kept_as_is() {
        let m = fresh();
        for later in [days(1), days(19)] {
            let p = plan(Some(&m), t0() + later, &policy()).expect("plan");
            assert!(!p.changed, "after {later}: {:?}", p.reasons);
            assert_eq!(p.material, m);
        }
    }

    #[test]
    fn serving_certificate_rotates_with_a_third_left_under_the_same_ca() {
        let m = fresh();
        let p = plan(Some(&m), t0() + days(21), &policy()).expect("plan");
        assert!(p.changed);
        assert_eq!(p.material.ca_bundle, m.ca_bundle, "CA unchanged");
        assert_eq!(p.material.ca_key, m.ca_key);
        assert_ne!(p.material.cert, m.cert);
        assert_ne!(p.material.key, m.key);
        assert!(serving(&p.material).signed_by(&cas(&m)[0]));
    }

    #[test]
    fn ca_rotation_keeps_the_old_ca_trusted_until_it_expires() {
        let m = fresh();
        // Keep the serving certificate fresh up to the CA's renewal point.
        let at = t0() + days(201);
        let mut m2 = m.clone();
        let p = plan(Some(&m2), at - days(10), &policy()).expect("plan");
        m2 = p.material;
        let p = plan(Some(&m2), at, &policy()).expect("plan");
        assert!(p.changed);
        let bundle = cas(&p.material);
        assert_eq!(bundle.len(), 2, "new CA first, old CA still trusted");
        assert_eq!(bundle[1].der, cas(&m)[0].der);
        assert!(key_matches(
            &KeyPair::from_pem(&p.material.ca_key).expect("key"),
            &bundle[0]
        ));
        // The serving certificate (signed by the old CA) stays: the old CA is still trusted.
        assert_eq!(p.material.cert, m2.cert);

        // Once the serving certificate is due (well past the grace), the new CA signs it and
        // the old CA stays in the bundle until it expires.
        let rotated = p.material;
        let due = at + days(15);
        let renewed = plan(Some(&rotated), due, &policy()).expect("plan");
        assert_ne!(renewed.material.cert, rotated.cert);
        let bundle = cas(&renewed.material);
        assert_eq!(bundle.len(), 2);
        assert!(
            serving(&renewed.material).signed_by(&bundle[0]),
            "the newest CA signs"
        );
        assert!(!serving(&renewed.material).signed_by(&bundle[1]));
    }

    #[test]
    fn renewal_due_right_after_a_new_ca_waits_for_the_grace_period() {
        let mut pol = policy();
        pol.ca_publish_grace = Duration::from_secs(30 * 86_400);
        let m = plan(None, t0(), &pol).expect("plan").material;
        // Due (22 of 30 days gone) but the only CA is younger than the grace: keep, still valid.
        let p = plan(Some(&m), t0() + days(22), &pol).expect("plan");
        assert_eq!(p.material.cert, m.cert);
        assert!(
            p.reasons.iter().any(|r| r.contains("waits")),
            "{:?}",
            p.reasons
        );
        // Expired certificates are never kept, grace or not.
        let p = plan(Some(&m), t0() + days(31), &pol).expect("plan");
        assert_ne!(p.material.cert, m.cert);
    }

    #[test]
    fn expired_cas_leave_the_bundle() {
        let m = fresh();
        let p = plan(Some(&m), t0() + days(301), &policy()).expect("plan");
        let bundle = cas(&p.material);
        assert_eq!(bundle.len(), 1);
        assert_ne!(bundle[0].der, cas(&m)[0].der);
        assert!(serving(&p.material).signed_by(&bundle[0]));
    }

    #[test]
    fn broken_or_mismatched_parts_are_replaced() {
        let m = fresh();
        let other = plan(None, t0(), &policy()).expect("plan").material;

        let swapped_key = Material {
            key: other.key.clone(),
            ..m.clone()
        };
        let p = plan(Some(&swapped_key), t0(), &policy()).expect("plan");
        assert_ne!(p.material.cert, m.cert);
        assert_eq!(
            p.material.ca_bundle, m.ca_bundle,
            "a bad leaf does not touch the CA"
        );

        let foreign_cert = Material {
            cert: other.cert.clone(),
            key: other.key.clone(),
            ..m.clone()
        };
        let p = plan(Some(&foreign_cert), t0(), &policy()).expect("plan");
        assert!(serving(&p.material).signed_by(&cas(&m)[0]));

        let garbage = Material {
            ca_bundle: "garbage".into(),
            ca_key: "garbage".into(),
            cert: "garbage".into(),
            key: String::new(),
        };
        let p = plan(Some(&garbage), t0(), &policy()).expect("plan");
        assert!(p.changed);
        assert!(serving(&p.material).signed_by(&cas(&p.material)[0]));

        let mut renamed = policy();
        renamed.dns_names.push("injector".into());
        let p = plan(Some(&m), t0(), &renamed).expect("plan");
        assert_eq!(serving(&p.material).dns_names.len(), 3);
        assert_eq!(p.material.ca_bundle, m.ca_bundle);
    }

    #[test]
    fn serving_certificate_never_outlives_its_ca() {
        let mut pol = policy();
        pol.ca_validity = Duration::from_secs(40 * 86_400);
        let m = plan(None, t0(), &pol).expect("plan").material;
        let ca = &cas(&m)[0];
        assert!(serving(&m).not_after <= ca.not_after);
    }

    #[test]
    fn invalid_policies_are_rejected() {
        let mut p = policy();
        p.dns_names.clear();
        assert!(plan(None, t0(), &p).is_err());
        let mut p = policy();
        p.cert_validity = p.ca_validity;
        assert!(plan(None, t0(), &p).is_err());
    }

    #[test]
    fn debug_output_hides_private_keys() {
        let m = fresh();
        let shown = format!("{m:?} {:?}", m.pair());
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    }
}
