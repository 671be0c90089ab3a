//! This sidecar's identity and trust, read from PEM files, and what a certificate says about
//! its holder. Loading checks everything a handshake would trip over later (the key matches
//! the certificate, the CA parses) so start-up and reloads fail with a message naming the file
//! instead of every handshake failing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::HeaderValue;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use x509_parser::extensions::GeneralName;

/// A loading failure: one line naming the flag and file.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {}: {what}", path.display())]
pub struct LoadError {
    pub flag: &'static str,
    pub path: PathBuf,
    pub what: String,
}

fn err(flag: &'static str, path: &Path, what: impl std::fmt::Display) -> LoadError {
    LoadError {
        flag,
        path: path.to_path_buf(),
        what: what.to_string(),
    }
}

/// Where the files are.
#[derive(Debug, Clone)]
pub struct Paths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

/// Everything loaded from the files: the certified key, the trust roots, facts for metrics.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub certified: Arc<CertifiedKey>,
    pub roots: Option<Arc<RootCertStore>>,
    /// This sidecar's own identity (from its certificate).
    pub identity: Option<String>,
    pub cert_not_after: i64,
    pub ca_not_after: Option<i64>,
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|e| err(flag, path, format!("cannot read: {e}")))
}

fn certs_from(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let pem = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(flag, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(err(flag, path, "no certificate found in the file"));
    }
    for c in &certs {
        x509_parser::parse_x509_certificate(c)
            .map_err(|e| err(flag, path, format!("invalid certificate: {e}")))?;
    }
    Ok(certs)
}

/// Read and check cert, key and CA.
pub fn load(paths: &Paths) -> Result<Loaded, LoadError> {
    let chain = certs_from("--tls-cert", &paths.cert)?;
    let key_pem = read("--tls-key", &paths.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        err(
            "--tls-key",
            &paths.key,
            format!("not a PEM private key: {e}"),
        )
    })?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| err("--tls-key", &paths.key, format!("unsupported key: {e}")))?;
    let leaf = chain[0].clone();
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|_| {
        err(
            "--tls-key",
            &paths.key,
            format!("does not match the certificate in {}", paths.cert.display()),
        )
    })?;
    let cert_not_after = not_after(&leaf).unwrap_or(0);
    let identity = identity_of(&leaf);
    let (roots, ca_not_after) = match &paths.ca {
        None => (None, None),
        Some(ca) => {
            let certs = certs_from("--tls-ca", ca)?;
            let mut store = RootCertStore::empty();
            for c in &certs {
                store
                    .add(c.clone())
                    .map_err(|e| err("--tls-ca", ca, format!("unusable CA certificate: {e}")))?;
            }
            let earliest = certs.iter().filter_map(not_after).min();
            (Some(Arc::new(store)), earliest)
        }
    };
    check_own_cert(&certified, roots.as_ref(), paths)?;
    Ok(Loaded {
        certified: Arc::new(certified),
        roots,
        identity,
        cert_not_after,
        ca_not_after,
    })
}

/// Refuse an identity that peers would refuse: outside its validity period, or not issued by
/// the trust bundle (checked as the client certificate it also is). At start-up this stops
/// the process with exit 2; on reload it keeps the previous identity, so one bad secret
/// update cannot take a sidecar out of the mesh while `/ready` says 200.
fn check_own_cert(
    certified: &CertifiedKey,
    roots: Option<&Arc<RootCertStore>>,
    paths: &Paths,
) -> Result<(), LoadError> {
    let leaf = &certified.cert[0];
    if let Ok((_, x)) = x509_parser::parse_x509_certificate(leaf) {
        let now = x509_parser::time::ASN1Time::now();
        let v = x.validity();
        if now < v.not_before {
            return Err(err(
                "--tls-cert",
                &paths.cert,
                format!("not valid before {}", v.not_before),
            ));
        }
        if now > v.not_after {
            return Err(err(
                "--tls-cert",
                &paths.cert,
                format!("expired at {}", v.not_after),
            ));
        }
    }
    if let (Some(roots), Some(ca)) = (roots, &paths.ca) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
                .build()
                .map_err(|e| err("--tls-ca", ca, format!("unusable trust bundle: {e}")))?;
        verifier
            .verify_client_cert(
                leaf,
                &certified.cert[1..],
                rustls::pki_types::UnixTime::now(),
            )
            .map_err(|e| {
                err(
                    "--tls-cert",
                    &paths.cert,
                    format!("not accepted by the CA in {}: {e}", ca.display()),
                )
            })?;
    }
    Ok(())
}

fn not_after(der: &CertificateDer<'_>) -> Option<i64> {
    let (_, x) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(x.validity().not_after.timestamp())
}

/// The SAN names of a certificate: (URIs, DNS names).
pub fn sans(der: &[u8]) -> (Vec<String>, Vec<String>) {
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    if let Ok((_, x)) = x509_parser::parse_x509_certificate(der) {
        if let Ok(Some(san)) = x.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::URI(u) => uris.push(u.to_string()),
                    GeneralName::DNSName(d) => dns.push(d.to_string()),
                    _ => {}
                }
            }
        }
    }
    (uris, dns)
}

/// The holder's identity: the SPIFFE URI SAN first, then the first DNS SAN.
pub fn identity_of(der: &[u8]) -> Option<String> {
    let (uris, dns) = sans(der);
    uris.iter()
        .find(|u| u.starts_with("spiffe://"))
        .cloned()
        .or_else(|| dns.first().cloned())
}

/// The identity in a PEM certificate file, if it can be read (for `--service-name`'s default,
/// which is decided before the proxy starts).
pub fn identity_of_file(path: &Path) -> Option<String> {
    let pem = std::fs::read(path).ok()?;
    let der = CertificateDer::pem_slice_iter(&pem).next()?.ok()?;
    identity_of(&der)
}

/// Whether the certificate names `expected` (a URI SAN, or a DNS SAN ignoring case).
pub fn names(der: &[u8], expected: &str) -> bool {
    let (uris, dns) = sans(der);
    uris.iter().any(|u| u == expected) || dns.iter().any(|d| d.eq_ignore_ascii_case(expected))
}

/// SHA-256 of the certificate DER, lowercase hex (through the ring provider's hash, which
/// rustls already links).
pub fn sha256_hex(der: &[u8]) -> String {
    let hash = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .expect("a TLS 1.3 suite")
        .common
        .hash_provider
        .hash(der);
    hash.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The Envoy-format `x-forwarded-client-cert` value: `Hash=<sha256>;URI=<spiffe>;DNS=<name>`
/// (one `DNS=` per DNS SAN). Values with characters Envoy would quote are left out.
pub fn xfcc(der: &[u8]) -> Option<HeaderValue> {
    let (uris, dns) = sans(der);
    let safe = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && !b"\",;=".contains(&b))
    };
    let mut v = format!("Hash={}", sha256_hex(der));
    // `URI=` names exactly the identity authz checked (`identity_of`: the first SPIFFE URI);
    // a value that cannot be written safely is left out rather than replaced by another SAN,
    // so the app is never told about a different principal.
    let uri = uris.iter().find(|u| u.starts_with("spiffe://"));
    if let Some(u) = uri.filter(|u| safe(u)) {
        v.push_str(";URI=");
        v.push_str(u);
    }
    for d in dns.iter().filter(|d| safe(d)) {
        v.push_str(";DNS=");
        v.push_str(d);
    }
    HeaderValue::from_str(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certs::DevCa;
    use std::time::Duration;

    #[test]
    fn identity_prefers_spiffe_and_xfcc_has_all_parts() {
        let ca = DevCa::new("tracseq.local", Duration::from_secs(3600)).expect("ca");
        let c = ca.issue("orders", Duration::from_secs(3600)).expect("cert");
        let der = CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).expect("pem");
        assert_eq!(
            identity_of(&der).as_deref(),
            Some("spiffe://tracseq.local/orders")
        );
        assert!(names(&der, "orders"));
        assert!(names(&der, "spiffe://tracseq.local/orders"));
        assert!(!names(&der, "spiffe://tracseq.local/billing"));
        let x = xfcc(&der).expect("xfcc");
        let x = x.to_str().expect("ascii");
        assert!(x.starts_with("Hash="), "{x}");
        assert_eq!(x.split(';').next().map(|h| h.len()), Some(5 + 64));
        assert!(
            x.contains(";URI=spiffe://tracseq.local/orders;DNS=orders"),
            "{x}"
        );
    }
}
