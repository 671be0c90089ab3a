//! TLS for the listeners and for calls to peers (rustls with the ring provider only).
//! `identity` turns PEM files into rustls configs and certificates into identities;
//! `server` terminates inbound mTLS, `client` originates it to peers, `reload` watches the
//! files and swaps configs, `certs` is the development PKI. The metrics shared by all of them
//! live here so each handshake site counts into the same families.

pub mod certs;
pub mod client;
pub mod identity;
pub mod reload;
pub mod server;

use std::io;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls::CertificateError;

use crate::proxy::Direction;

pub use client::ClientTls;
pub use server::ServerTls;

/// Install ring as the process-wide rustls provider. Called once at start-up (and by tests);
/// later calls are no-ops.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    direction: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabel {
    cert: &'static str,
}

/// `tracseq_proxy_tls_handshakes_total`, `_cert_reloads_total`,
/// `_cert_expiration_timestamp_seconds`. Cloning shares the families.
#[derive(Debug, Clone, Default)]
pub struct TlsMetrics {
    handshakes: Family<HandshakeLabels, Counter>,
    reloads: Family<ResultLabel, Counter>,
    expiry: Family<CertLabel, Gauge>,
}

impl TlsMetrics {
    pub fn register(reg: &mut Registry) -> Self {
        let m = Self::default();
        reg.register(
            "tracseq_proxy_tls_handshakes",
            "TLS handshakes by direction and result (ok or the failure reason)",
            m.handshakes.clone(),
        );
        reg.register(
            "tracseq_proxy_tls_cert_reloads",
            "Reloads of the TLS certificate, key and CA files by result",
            m.reloads.clone(),
        );
        reg.register(
            "tracseq_proxy_tls_cert_expiration_timestamp_seconds",
            "Expiry (notAfter, Unix seconds) of the loaded certificates",
            m.expiry.clone(),
        );
        m
    }

    pub fn handshake(&self, direction: Direction, result: &'static str) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                direction: direction.as_str(),
                result,
            })
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn set_expiry(&self, cert: &'static str, not_after_unix: i64) {
        self.expiry
            .get_or_create(&CertLabel { cert })
            .set(not_after_unix);
    }
}

/// A failure reason chosen by our own verifiers, carried through rustls as
/// `CertificateError::Other` so the accept/connect site can count it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Reason(pub &'static str);

/// The bounded `result` label for a failed handshake.
pub fn failure_reason(err: &io::Error) -> &'static str {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = err.get_ref().map(|e| e as _);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return rustls_reason(r);
        }
        cur = e.source();
    }
    match err.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => "closed",
        io::ErrorKind::TimedOut => "timeout",
        _ => "io",
    }
}

pub fn rustls_reason(err: &rustls::Error) -> &'static str {
    use rustls::Error as E;
    match err {
        E::NoCertificatesPresented => "no_client_cert",
        E::InvalidCertificate(c) => {
            match c {
                CertificateError::UnknownIssuer => "unknown_ca",
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "not_yet_valid"
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => "bad_identity",
                CertificateError::InvalidPurpose
                | CertificateError::InvalidPurposeContext { .. } => "bad_purpose",
                CertificateError::Other(o) => match o.0.downcast_ref::<Reason>() {
                    Some(r) => r.0,
                    None => "bad_certificate",
                },
                // A CA that copies our CA's name but holds another key.
                CertificateError::BadSignature => "bad_signature",
                _ => "bad_certificate",
            }
        }
        E::AlertReceived(a) => match a {
            rustls::AlertDescription::UnknownCA => "peer_unknown_ca",
            rustls::AlertDescription::CertificateRequired => "no_client_cert",
            rustls::AlertDescription::BadCertificate => "peer_bad_certificate",
            rustls::AlertDescription::CertificateExpired => "peer_expired",
            rustls::AlertDescription::ProtocolVersion => "protocol_version",
            _ => "alert",
        },
        E::PeerIncompatible(_) => "incompatible",
        E::NoApplicationProtocol => "no_alpn",
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => "protocol",
        E::InappropriateHandshakeMessage { .. } => "protocol",
        _ => "other",
    }
}
