//! mTLS test helpers: a dev CA in a tempdir, per-service files, a rustls client that sends one
//! request per connection (so every request is a handshake) and reports the served
//! certificate, and a bounded wait for a metric value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tracseq_proxy::tls::certs::{write_service, DevCa, IssuedCert};

use super::{collect, Collected, Metrics, WAIT};

pub const DAY: Duration = Duration::from_secs(86_400);

/// A CA and its files in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: DevCa,
}

/// Paths of one service's files.
#[derive(Clone)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub issued: Arc<IssuedCert>,
}

impl Pki {
    pub fn new() -> Pki {
        tracseq_proxy::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = DevCa::new("tracseq.local", 30 * DAY).expect("CA");
        Pki { dir, ca }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.ca_pem()
    }

    /// Issue and write `<service>.pem`, `<service>-key.pem` and `ca.pem`.
    pub fn service(&self, service: &str) -> Files {
        let issued = self.ca.issue(service, 30 * DAY).expect("issue");
        write_service(self.dir.path(), &self.ca, service, &issued).expect("write");
        self.files(service, issued)
    }

    pub fn files(&self, service: &str, issued: IssuedCert) -> Files {
        Files {
            cert: self.dir.path().join(format!("{service}.pem")),
            key: self.dir.path().join(format!("{service}-key.pem")),
            ca: self.dir.path().join("ca.pem"),
            issued: Arc::new(issued),
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// Configure a sidecar with these files as its identity and trust.
pub fn with_tls(cfg: &mut tracseq_proxy::config::Config, f: &Files) {
    cfg.tls.cert = Some(f.cert.clone());
    cfg.tls.key = Some(f.key.clone());
    cfg.tls.ca = Some(f.ca.clone());
    cfg.tls.client_auth = tracseq_proxy::config::ClientAuth::Required;
}

/// A rustls client trusting `ca_pem`, presenting `client` (cert, key PEM) if given.
pub fn client_config(ca_pem: &str, client: Option<(&str, &str)>) -> Arc<ClientConfig> {
    tracseq_proxy::tls::install_crypto_provider();
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("CA pem")).expect("add root");
    }
    let b = ClientConfig::builder().with_root_certificates(roots);
    let mut config = match client {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("cert pem");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key pem");
            b.with_client_auth_cert(chain, key).expect("client cert")
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// What one TLS request saw.
pub struct TlsResponse {
    pub resp: Collected,
    /// The certificate the server presented.
    pub server_cert: CertificateDer<'static>,
}

/// One request over a new TLS connection to `addr`, verifying the server as `server_name`.
pub async fn tls_request(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
    req: Request<Full<Bytes>>,
) -> Result<TlsResponse, String> {
    let fut = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let server_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .ok_or("no server certificate")?
            .into_owned();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("http handshake: {e}"))?;
        tokio::spawn(conn);
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let resp = collect(resp).await?;
        Ok(TlsResponse { resp, server_cert })
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .map_err(|_| "timed out".to_string())?
}

pub fn get_req(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "callee")
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// Wait (bounded) until the metric sum reaches `want`; returns the last value seen.
pub async fn wait_metric(admin: SocketAddr, name: &str, filter: &[(&str, &str)], want: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = Metrics::scrape(admin).await.sum(name, filter);
        if v >= want || tokio::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The serial number (hex) of a DER certificate.
pub fn serial(der: &[u8]) -> String {
    let (_, x) = x509_parser::parse_x509_certificate(der).expect("certificate");
    x.raw_serial_as_string()
}
