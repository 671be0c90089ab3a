//! Opens connections to upstreams: TCP with a connect timeout and `TCP_NODELAY` (request
//! latency matters more than packet count on loopback and in a mesh). Name resolution happens
//! only when a new connection is opened; pooled connections are reused without DNS. Towards
//! peer sidecars (when this sidecar has an identity and a trust bundle) the TCP stream is
//! wrapped in mTLS; a negotiated `h2` is reported through `Connected::negotiated_h2`, which
//! makes hyper-util's pool run HTTP/2 on that connection and share it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::{BoxError, ProxyError, UpstreamFailure};
use crate::tls::ClientTls;

#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: Option<Arc<ClientTls>>,
    /// The identity the peer must present (`#IDENTITY` of `--peer`); else its DNS name.
    expected: Option<Arc<str>>,
    /// Bound on the TLS handshake after TCP connected (`--connect-timeout` again): a peer
    /// that accepts and then stalls is a TLS failure (502), not a 504 much later.
    handshake_timeout: Duration,
    /// Offer h2 in ALPN to TLS peers (else HTTP/1.1 only).
    h2: bool,
}

impl Connector {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.enforce_http(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        Self {
            http,
            tls: None,
            expected: None,
            handshake_timeout: connect_timeout,
            h2: true,
        }
    }

    /// Connections made by this connector use mTLS.
    pub fn with_tls(mut self, tls: Option<Arc<ClientTls>>) -> Self {
        self.tls = tls;
        self
    }

    /// The same connector, for a peer that must present `identity`.
    pub fn expecting(mut self, identity: Arc<str>) -> Self {
        self.expected = Some(identity);
        self
    }

    /// The same connector, offering only HTTP/1.1 to TLS peers.
    pub fn http1_only(mut self) -> Self {
        self.h2 = false;
        self
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS generation new connections are opened under (0 for plain TCP); see
    /// [`ClientTls::generation`].
    pub fn tls_generation(&self) -> u64 {
        self.tls.as_ref().map_or(0, |t| t.generation())
    }
}

/// A connection to an upstream: plain TCP, or mTLS to a peer sidecar.
pub enum UpstreamIo {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        match self {
            Self::Plain(s) => s.connected(),
            Self::Tls(s) => {
                let (tcp, tls) = s.inner().get_ref();
                let c = tcp.connected();
                if tls.alpn_protocol() == Some(b"h2") {
                    c.negotiated_h2()
                } else {
                    c
                }
            }
        }
    }
}

impl Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tower::Service<Uri> for Connector {
    type Response = UpstreamIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let host = uri.host().map(str::to_string);
        let expected = self.expected.clone();
        let fut = self.http.call(uri);
        let tls = self.tls.clone();
        let handshake_timeout = self.handshake_timeout;
        let h2 = self.h2;
        Box::pin(async move {
            let tcp = fut.await?;
            let Some(tls) = tls else {
                return Ok(UpstreamIo::Plain(tcp));
            };
            let Some(host) = host else {
                return Err(ProxyError::upstream(UpstreamFailure::Tls, "no peer host name").into());
            };
            let handshake = tls.connect(expected, &host, tcp.into_inner(), h2);
            match tokio::time::timeout(handshake_timeout, handshake).await {
                Ok(Ok(s)) => Ok(UpstreamIo::Tls(Box::new(TokioIo::new(s)))),
                // Tagged here: the client error chain would hide rustls' error inside io::Error.
                Ok(Err(e)) => Err(ProxyError::upstream(UpstreamFailure::Tls, e).into()),
                Err(_) => {
                    tls.handshake_timed_out();
                    Err(ProxyError::upstream(
                        UpstreamFailure::Tls,
                        "TLS handshake with the peer timed out (--connect-timeout)",
                    )
                    .into())
                }
            }
        })
    }
}
