//! Listeners and connections: accept, (TLS), deadlines, HTTP/1 + HTTP/2 (auto-detected, h2c by
//! prior knowledge), and graceful drain. One task per connection; the stack is cloned per
//! connection (cheap: a few `Arc`s), and as a whole per request only by the hyper adapter (our
//! HTTP/1.1 loop calls the connection's copy; the retry layer clones `Forward` to resend).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http::{Request, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::body::Body;
use super::conn_io::{ConnState, TimedIo};
use super::h1;
use super::stack::HyperService;
use super::{ConnMeta, Direction};
use crate::error::ErrorKind;
use crate::layers::metrics::{
    DirectionLabel, ErrorType, HttpMetrics, Method, Protocol, ServerLabels,
};

/// Largest request head accepted (HTTP/1: request line and header lines; HTTP/2: the header
/// list); beyond it HTTP/1 answers 431 and closes, HTTP/2 refuses the stream. Enforced on
/// every request of a connection, not only the first. 64 KiB is Envoy's default and well
/// above what browsers send.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Header fields per HTTP/1 request on the inbound listener: Envoy's default, and hyper's own.
/// Above 100 hyper parses into two heap arrays (7 KiB) per request instead of its stack ones.
const MAX_HEADERS: usize = 100;
/// Fields the outbound direction may add before a request reaches the peer sidecar's inbound
/// listener (`Host`, `x-request-id`, `traceparent`, one spare): the outbound listener takes
/// that many fewer, so a request it accepts is never refused one hop later.
const OUTBOUND_HEADROOM: usize = 4;
/// How long a closing connection may take to send its TLS close_notify and FIN.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// `tracseq_proxy_tcp_connections_open` / `_total`.
#[derive(Debug)]
pub struct ConnMetrics {
    open: Family<DirectionLabel, Gauge>,
    total: Family<DirectionLabel, Counter>,
}

impl ConnMetrics {
    pub fn register(reg: &mut Registry) -> Arc<Self> {
        let m = Self {
            open: Family::default(),
            total: Family::default(),
        };
        reg.register(
            "tracseq_proxy_tcp_connections_open",
            "TCP connections currently open on the proxy's listeners",
            m.open.clone(),
        );
        reg.register(
            "tracseq_proxy_tcp_connections",
            "TCP connections accepted by the proxy's listeners",
            m.total.clone(),
        );
        for direction in [Direction::Inbound, Direction::Outbound] {
            let _ = m.open.get_or_create(&DirectionLabel { direction });
            let _ = m.total.get_or_create(&DirectionLabel { direction });
        }
        Arc::new(m)
    }
}

struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The stream hyper reads: plain TCP or TLS over TCP.
pub enum ServerIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            ServerIo::Plain($s) => $e,
            ServerIo::Tls($s) => $e,
        }
    };
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Plain(s) => s.is_write_vectored(),
            ServerIo::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

pub use super::drain::{Drain, DrainController};

/// Settings of one listener.
pub struct Listener {
    pub direction: Direction,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub metrics: Arc<HttpMetrics>,
    pub conns: Arc<ConnMetrics>,
    pub tls: Option<Arc<crate::tls::ServerTls>>,
}

/// The HTTP/1 server settings, for hyper's own builder and hyper-util's auto one alike
/// (two types with the same methods). The auto builder has no `max_header_size`: its buffer
/// limit bounds the first head only (a read may carry the buffer past it and complete a
/// longer pipelined head), so HTTP/1 connections go to hyper's own builder, which has it.
macro_rules! http1_settings {
    ($b:expr, $listener:expr) => {
        $b.timer(TokioTimer::new())
            // Our own `TimedIo` answers a slow head with 408; hyper's would close silently.
            .header_read_timeout(None)
            .keep_alive(true)
            .max_buf_size(MAX_HEADER_BYTES.max(8192))
            .max_headers($listener.max_headers())
    };
}

impl Listener {
    fn max_headers(&self) -> usize {
        match self.direction {
            Direction::Inbound => MAX_HEADERS,
            Direction::Outbound => MAX_HEADERS - OUTBOUND_HEADROOM,
        }
    }

    /// hyper's HTTP/1 server alone, for every connection the HTTP/1.1 loop hands over that
    /// is not (yet) the HTTP/2 preface: after a request served as HTTP/1.1 auto-detection
    /// would take the preface as a switch of protocol, and only this builder holds the head
    /// limit (`max_header_size`; it also raises hyper's limit on chunked trailers to it). The
    /// same settings as the HTTP/1 half of `builder`.
    fn http1_builder(&self) -> http1::Builder {
        let mut b = http1::Builder::new();
        http1_settings!(b, self);
        b.max_header_size(MAX_HEADER_BYTES);
        b
    }

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut b = auto::Builder::new(TokioExecutor::new());
        http1_settings!(b.http1(), self);
        b.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .adaptive_window(true)
            .max_concurrent_streams(1024)
            // Bound resets a client may cause (CVE-2023-44487 "rapid reset").
            .max_pending_accept_reset_streams(64)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        b
    }

    /// Accept until draining starts; then stop accepting (the socket closes: new connections
    /// are refused) and let live connections finish.
    pub async fn serve<S>(self, listener: TcpListener, stack: S, drain: Drain)
    where
        S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let this = Arc::new(self);
        let builders = Arc::new((this.builder(), this.http1_builder()));
        loop {
            let accepted = tokio::select! {
                biased;
                _ = drain.signaled() => break,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of fds or similar: back off briefly instead of spinning.
                    tracing::warn!(direction = this.direction.as_str(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let local = tcp.local_addr().unwrap_or(peer);
            let _ = tcp.set_nodelay(true);
            tokio::spawn(this.clone().connection(
                tcp,
                peer,
                local,
                stack.clone(),
                builders.clone(),
                drain.clone(),
            ));
        }
        drop(listener);
    }

    async fn connection<S>(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
        stack: S,
        builders: Arc<(auto::Builder<TokioExecutor>, http1::Builder)>,
        drain: Drain,
    ) where
        S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let label = DirectionLabel {
            direction: self.direction,
        };
        self.conns.total.get_or_create(&label).inc();
        let open = self.conns.open.get_or_create_owned(&label);
        open.inc();
        let _open = OpenGuard(open);

        let (io, tls) = match &self.tls {
            None => (ServerIo::Plain(tcp), None),
            Some(tls) => match tls.accept(tcp, self.direction).await {
                Ok((stream, info)) => (ServerIo::Tls(Box::new(stream)), Some(info)),
                Err(e) => {
                    tracing::debug!(direction = self.direction.as_str(), client = %peer, error = %e, "TLS handshake failed");
                    return;
                }
            },
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let state = Arc::new(ConnState::default());
        let meta = Arc::new(ConnMeta {
            direction: self.direction,
            client_addr: peer,
            client_ip: http::HeaderValue::from_str(&peer.ip().to_string())
                .expect("an IP address is a valid header value"),
            local_addr: local,
            tls,
            state: state.clone(),
        });
        let metrics = self.metrics.clone();
        let direction = self.direction;
        let header_timeout = self.header_read_timeout;
        let on_timeout = Box::new(move || {
            let labels = ServerLabels {
                direction,
                method: Method::Other,
                status: 408,
                scheme,
                protocol: Protocol::Http11,
                route: None,
                error_type: Some(ErrorType::Proxy(ErrorKind::HeaderTimeout)),
            };
            metrics.server_duration.get_or_create(&labels).observe(
                header_timeout.as_secs_f64(),
                None,
                None,
            );
        });
        // Every connection starts in our own HTTP/1.1 loop, which hands over to hyper at the
        // first request it does not serve itself. HTTP/2 by ALPN too: its preface is handed
        // over at once, and a client that negotiated h2 but speaks HTTP/1.1 still meets the
        // head limit (hyper-util's auto builder, which would take it, has no such limit).
        let mut io = TimedIo::new(
            io,
            state,
            self.header_read_timeout,
            self.idle_timeout,
            on_timeout,
        );
        let mut read = BytesMut::new();
        let max_headers = self.max_headers();
        let own = h1::Conn::new(
            &mut io,
            &mut read,
            stack.clone(),
            meta.clone(),
            &drain,
            max_headers,
        );
        let h1_only = match own.run().await {
            // A fresh connection is HTTP/2 (prior knowledge) only if it opens with the
            // preface; anything else is HTTP/1 for hyper's own builder.
            Ok(h1::Next::HandOff { fresh }) => !fresh || !h1::may_be_h2_preface(&read),
            Ok(h1::Next::Close) => {
                // As hyper does: close_notify (TLS) and FIN rather than a bare close.
                let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, io.shutdown()).await;
                return;
            }
            Err(e) => {
                tracing::debug!(direction = self.direction.as_str(), client = %peer, error = %e, "connection ended with an error");
                return;
            }
        };
        let service = HyperService::new(stack, meta, self.idle_timeout);
        let io = h1::Prefixed::new(read.freeze(), io);
        // After a request served as HTTP/1.1 the connection stays HTTP/1.1: the HTTP/2
        // preface there is a malformed request, not a protocol switch.
        // The connection is polled before the drain: a request already read (handed over by
        // the loop) is taken before a drain can close the connection as idle.
        macro_rules! until_drained {
            ($conn:expr) => {{
                let conn = $conn;
                tokio::pin!(conn);
                tokio::select! {
                    biased;
                    res = conn.as_mut() => res.map_err(|e| e.to_string()),
                    _ = drain.signaled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.as_mut().await.map_err(|e| e.to_string())
                    }
                }
            }};
        }
        let io = TokioIo::new(io);
        let result = if h1_only {
            until_drained!(builders.1.serve_connection(io, service).with_upgrades())
        } else {
            until_drained!(builders.0.serve_connection_with_upgrades(io, service))
        };
        if let Err(e) = result {
            tracing::debug!(direction = self.direction.as_str(), client = %peer, error = %e, "connection ended with an error");
        }
    }
}
