//! TLS to an `https://` OTLP collector: the CAs of `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`
//! (else the system's), and a client identity when the collector asks for one. Errors name
//! the variable the file came from. gRPC goes through
//! tonic's rustls; OTLP/HTTP through a hyper client with a rustls connector of our own (the
//! exporter's hyper client speaks plain HTTP only).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::OtlpTls;
use crate::error::BoxError;
use crate::proxy::connect::UpstreamIo;

/// Bound on connecting to the collector, and again on the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// tonic's TLS settings for an `https://` gRPC collector.
pub fn grpc(tls: &OtlpTls) -> Result<ClientTlsConfig, String> {
    // A collector that accepts TCP but never finishes the handshake must not hold export
    // up until the connection dies.
    let mut cfg = ClientTlsConfig::new().timeout(CONNECT_TIMEOUT);
    cfg = match &tls.ca {
        Some(ca) => {
            // Parsed here too, so a file without certificates fails at start-up.
            roots_from_file(ca, tls.vars.ca)?;
            cfg.ca_certificate(Certificate::from_pem(read(ca, tls.vars.ca)?))
        }
        None => cfg.with_native_roots(),
    };
    if let Some((cert, key)) = &tls.client_identity {
        identity(tls, cert, key)?;
        cfg = cfg.identity(Identity::from_pem(
            read(cert, tls.vars.cert)?,
            read(key, tls.vars.key)?,
        ));
    }
    Ok(cfg)
}

/// A hyper client for an `https://` OTLP/HTTP collector.
pub fn http(
    tls: &OtlpTls,
    timeout: Duration,
) -> Result<opentelemetry_http::hyper::HyperClient<TlsConnector>, String> {
    let roots = match &tls.ca {
        Some(ca) => roots_from_file(ca, tls.vars.ca)?,
        None => native_roots()?,
    };
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match &tls.client_identity {
        Some((cert, key)) => {
            let (chain, key) = identity(tls, cert, key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{}: {e}", tls.vars.cert))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let connector = TlsConnector {
        http,
        tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
    };
    Ok(opentelemetry_http::hyper::HyperClient::new(
        connector, timeout, None,
    ))
}

fn roots_from_file(ca: &Path, what: &str) -> Result<rustls::RootCertStore, String> {
    let pem = read(ca, what)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{what} {}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{what} {}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{what} {}: no certificate in it", ca.display()));
    }
    Ok(roots)
}

fn native_roots() -> Result<rustls::RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(
            "no system CA certificates found for the https:// endpoint; set \
             OTEL_EXPORTER_OTLP_CERTIFICATE to the collector's CA"
                .into(),
        );
    }
    Ok(roots)
}

type Chain = Vec<CertificateDer<'static>>;

fn identity(
    tls: &OtlpTls,
    cert: &Path,
    key: &Path,
) -> Result<(Chain, PrivateKeyDer<'static>), String> {
    let cert_what = tls.vars.cert;
    let chain = CertificateDer::pem_slice_iter(&read(cert, cert_what)?)
        .collect::<Result<Chain, _>>()
        .map_err(|e| format!("{cert_what} {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{cert_what} {}: no certificate in it",
            cert.display()
        ));
    }
    let key_what = tls.vars.key;
    let key = PrivateKeyDer::from_pem_slice(&read(key, key_what)?)
        .map_err(|e| format!("{key_what} {}: {e}", key.display()))?;
    Ok((chain, key))
}

/// TCP, then TLS to the host named in the URI.
#[derive(Clone)]
pub struct TlsConnector {
    http: HttpConnector,
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConnector")
    }
}

impl tower::Service<Uri> for TlsConnector {
    type Response = UpstreamIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let host = uri.host().map(|h| h.trim_matches(['[', ']']).to_string());
        let tcp = self.http.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = host.ok_or("the OTLP endpoint has no host")?;
            let name = ServerName::try_from(host)?;
            let tcp = tcp.await?.into_inner();
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, tcp))
                .await
                .map_err(|_| "TLS handshake with the OTLP collector timed out")??;
            Ok(UpstreamIo::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}
