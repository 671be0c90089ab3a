//! Originating mTLS to peer sidecars. A peer is checked against `--tls-ca` and against the
//! identity this sidecar expects for it: the `#IDENTITY` of its `--peer` entry, else its DNS
//! name. A SPIFFE URI is not a TLS server name, so the check is our own verifier (webpki for
//! the chain, then the SANs); the connector passes the expected identity in (one pool per
//! identity in `upstream`). One rustls config per expected identity is cached (bounded) and
//! dropped on reload, so the handshake path builds nothing new.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::identity::{self, Loaded};
use super::TlsMetrics;
use crate::config::TlsVersion;
use crate::proxy::Direction;

/// Cached configs (one per expected identity); beyond this, configs are built per handshake.
const MAX_CACHED: usize = 1024;

/// An expected peer identity, and whether h2 is offered in ALPN.
type PeerKey = (Arc<str>, bool);

struct State {
    certified: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    /// Keyed by expected identity and whether h2 is offered in ALPN.
    by_identity: Mutex<HashMap<PeerKey, Arc<ClientConfig>>>,
}

/// This sidecar's client side towards peers.
pub struct ClientTls {
    state: RwLock<Arc<State>>,
    /// Bumped by every swap: pools drop connections opened under an older one.
    generation: AtomicU64,
    min_version: TlsVersion,
    metrics: TlsMetrics,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl ClientTls {
    /// `None` without a trust bundle: peers cannot be verified, so calls stay plaintext.
    pub fn new(loaded: &Loaded, min_version: TlsVersion, metrics: TlsMetrics) -> Option<Self> {
        let state = state(loaded)?;
        Some(Self {
            state: RwLock::new(Arc::new(state)),
            generation: AtomicU64::new(0),
            min_version,
            metrics,
        })
    }

    /// Swap in newly loaded files. Requests in flight finish on their connections; idle
    /// pooled ones are not reused (see [`generation`](Self::generation)).
    pub fn update(&self, loaded: &Loaded) -> Result<(), String> {
        let s = state(loaded).ok_or("no trust bundle (--tls-ca)")?;
        if let Ok(mut cur) = self.state.write() {
            *cur = Arc::new(s);
        }
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Which identity and trust bundle new handshakes use: changes with every swap. A
    /// connection opened under an older one was authenticated with files since replaced (a
    /// revoked CA, an identity rotated out), so the pools do not reuse it.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn current(&self) -> Arc<State> {
        match self.state.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn config_for(
        &self,
        expected: &Arc<str>,
        h2: bool,
    ) -> Result<Arc<ClientConfig>, rustls::Error> {
        let state = self.current();
        if let Some(c) = state
            .by_identity
            .lock()
            .ok()
            .and_then(|m| m.get(&(expected.clone(), h2)).cloned())
        {
            return Ok(c);
        }
        let verifier = PeerVerifier {
            roots: state.roots.clone(),
            expected: expected.clone(),
            algs: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        };
        let mut config =
            ClientConfig::builder_with_protocol_versions(super::server::versions(self.min_version))
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_client_cert_resolver(Arc::new(Present(state.certified.clone())));
        // HTTP/1 callers get HTTP/1.1 to the peer too (ALPN without h2): on a sidecar hop
        // one h1 connection per in-flight request costs less CPU than h2's framing, HPACK and
        // the task hand-offs of a shared connection (docs/BENCHMARKS.md).
        let alpn: &[&[u8]] = if h2 {
            &super::server::ALPN
        } else {
            &super::server::ALPN[1..]
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let config = Arc::new(config);
        if let Ok(mut m) = state.by_identity.lock() {
            if m.len() < MAX_CACHED {
                m.insert((expected.clone(), h2), config.clone());
            }
        }
        Ok(config)
    }

    /// Count a handshake abandoned at the connect deadline.
    pub fn handshake_timed_out(&self) {
        self.metrics.handshake(Direction::Outbound, "timeout");
    }

    /// Handshake over `tcp` with the peer at `host`, which must present `expected` (else
    /// its DNS name). `h2`: offer HTTP/2 in ALPN (else HTTP/1.1 only).
    pub async fn connect(
        &self,
        expected: Option<Arc<str>>,
        host: &str,
        tcp: TcpStream,
        h2: bool,
    ) -> io::Result<TlsStream<TcpStream>> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let expected = expected.unwrap_or_else(|| Arc::from(host));
        let config = self.config_for(&expected, h2).map_err(io::Error::other)?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        match TlsConnector::from(config).connect(name, tcp).await {
            Ok(s) => {
                self.metrics.handshake(Direction::Outbound, "ok");
                Ok(s)
            }
            Err(e) => {
                self.metrics
                    .handshake(Direction::Outbound, super::failure_reason(&e));
                Err(e)
            }
        }
    }
}

fn state(loaded: &Loaded) -> Option<State> {
    Some(State {
        certified: loaded.certified.clone(),
        roots: loaded.roots.clone()?,
        by_identity: Mutex::new(HashMap::new()),
    })
}

/// Presents this sidecar's certificate whenever the peer asks for one.
#[derive(Debug)]
struct Present(Arc<CertifiedKey>);

impl ResolvesClientCert for Present {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Chain to `--tls-ca` (webpki, serverAuth), then the expected identity among the SANs.
#[derive(Debug)]
struct PeerVerifier {
    roots: Arc<RootCertStore>,
    expected: Arc<str>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        if !identity::names(end_entity, &self.expected) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
