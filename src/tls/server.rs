//! The inbound listener's TLS side: accept with the current config (read once per handshake,
//! so a reload takes effect on the next connection and never disturbs live ones), count each
//! handshake by result, and turn the verified client certificate into `PeerTls` once per
//! connection. Client certificates are checked by rustls' webpki verifier wrapped to name two
//! failures it lumps together (a self-signed leaf, a CA certificate used as a leaf).

use std::io;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::identity::{self, Loaded};
use super::{Reason, TlsMetrics};
use crate::config::{ClientAuth, TlsVersion};
use crate::proxy::{Direction, PeerTls};

/// A handshake must finish in this time; a client that stalls it holds a task and a socket.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// ALPN offered to clients: HTTP/2 first (sidecar to sidecar), HTTP/1.1 for everyone else.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
static TLS12_UP: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

pub(crate) fn versions(min: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    match min {
        TlsVersion::V1_3 => &TLS13_ONLY,
        TlsVersion::V1_2 => &TLS12_UP,
    }
}

/// The inbound listener's TLS side.
pub struct ServerTls {
    config: RwLock<Arc<ServerConfig>>,
    client_auth: ClientAuth,
    min_version: TlsVersion,
    metrics: TlsMetrics,
}

impl ServerTls {
    pub fn new(
        loaded: &Loaded,
        client_auth: ClientAuth,
        min_version: TlsVersion,
        metrics: TlsMetrics,
    ) -> Result<Self, String> {
        let config = build(loaded, client_auth, min_version)?;
        Ok(Self {
            config: RwLock::new(Arc::new(config)),
            client_auth,
            min_version,
            metrics,
        })
    }

    /// Swap in a config built from newly loaded files; live connections are unaffected.
    pub fn update(&self, loaded: &Loaded) -> Result<(), String> {
        let config = Arc::new(build(loaded, self.client_auth, self.min_version)?);
        if let Ok(mut c) = self.config.write() {
            *c = config;
        }
        Ok(())
    }

    fn current(&self) -> Arc<ServerConfig> {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub async fn accept(
        &self,
        tcp: TcpStream,
        direction: Direction,
    ) -> io::Result<(TlsStream<TcpStream>, PeerTls)> {
        let acceptor = TlsAcceptor::from(self.current());
        let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                ))
            });
        match result {
            Ok(stream) => {
                self.metrics.handshake(direction, "ok");
                let leaf = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first());
                let peer = match leaf {
                    Some(der) => PeerTls {
                        identity: identity::identity_of(der).map(Arc::from),
                        xfcc: identity::xfcc(der),
                    },
                    None => PeerTls::default(),
                };
                Ok((stream, peer))
            }
            Err(e) => {
                self.metrics.handshake(direction, super::failure_reason(&e));
                Err(e)
            }
        }
    }
}

fn build(loaded: &Loaded, auth: ClientAuth, min: TlsVersion) -> Result<ServerConfig, String> {
    let builder = ServerConfig::builder_with_protocol_versions(versions(min));
    let builder = match (&loaded.roots, auth) {
        (Some(roots), ClientAuth::Required | ClientAuth::Optional) => {
            let mut vb = WebPkiClientVerifier::builder(roots.clone());
            if auth == ClientAuth::Optional {
                vb = vb.allow_unauthenticated();
            }
            let inner = vb.build().map_err(|e| format!("client verifier: {e}"))?;
            builder.with_client_cert_verifier(Arc::new(NamingVerifier { inner }))
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Fixed(loaded.certified.clone())));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Always presents the loaded certificate.
#[derive(Debug)]
pub(crate) struct Fixed(pub Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// webpki's client verifier, with sharper reasons for two refusals.
#[derive(Debug)]
struct NamingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

fn reason(r: &'static str) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        Reason(r),
    ))))
}

impl ClientCertVerifier for NamingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let parsed = x509_parser::parse_x509_certificate(end_entity).ok();
        if parsed.as_ref().is_some_and(|(_, x)| x.is_ca()) {
            return Err(reason("ca_as_leaf"));
        }
        match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))
                if parsed
                    .as_ref()
                    .is_some_and(|(_, x)| x.subject().as_raw() == x.issuer().as_raw()) =>
            {
                Err(reason("self_signed"))
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
