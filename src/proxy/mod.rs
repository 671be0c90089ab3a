//! The data path: listeners and connections (`server`, `conn_io`), the two directions'
//! request handling (`inbound`, `outbound`), header rules (`headers`), the pooled upstream
//! client (`upstream`) and the body types (`body`).

pub mod body;
pub mod conn_io;
pub mod connect;
pub mod drain;
mod h1;
pub mod headers;
pub mod inbound;
pub mod outbound;
pub mod pool;
pub mod raw_fields;
pub mod server;
pub mod stack;
pub mod tunnel;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From another sidecar (or any client) to the local service.
    Inbound,
    /// From the local service to another service's sidecar.
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// What the TLS handshake established about the client (inbound mTLS).
#[derive(Debug, Clone, Default)]
pub struct PeerTls {
    /// The client's identity from its certificate (SPIFFE URI first, then DNS name).
    pub identity: Option<Arc<str>>,
    /// The `x-forwarded-client-cert` value for this client, computed once per connection.
    pub xfcc: Option<HeaderValue>,
}

/// Facts about one accepted connection, shared by all its requests (an `Arc` in each request's
/// `RequestCtx`).
#[derive(Debug, Clone)]
pub struct ConnMeta {
    pub direction: Direction,
    pub client_addr: SocketAddr,
    /// The client's IP as a header value, formatted once per connection for
    /// `x-forwarded-for` rather than on every request.
    pub client_ip: HeaderValue,
    pub local_addr: SocketAddr,
    /// `Some` when the connection is TLS; `identity` is set only for verified client certs.
    pub tls: Option<PeerTls>,
    /// Request counters the connection's timeouts read.
    pub state: Arc<conn_io::ConnState>,
}

impl ConnMeta {
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn identity(&self) -> Option<&Arc<str>> {
        self.tls.as_ref().and_then(|t| t.identity.as_ref())
    }
}

/// What the stack learns about a request on its way down, for the layers below: one entry in
/// the request's extensions. `http::Extensions` boxes every entry into a hash map; the facts
/// as entries of their own cost a box each besides the map and its table (five allocations per
/// request without tracing, seven with it: the fourth entry grows the table), as one entry
/// three.
#[derive(Clone, Default)]
pub struct RequestCtx {
    /// The connection the request came in on (set by the server, hyper's or ours).
    pub meta: Option<Arc<ConnMeta>>,
    /// Where it goes (set by the inbound or outbound routing).
    pub dest: Option<Dest>,
    /// When `--request-timeout` cuts it off (set by the timeout layer).
    pub deadline: Option<tokio::time::Instant>,
    /// The server span's ids, for the client span and propagation (set by the trace layer).
    pub server: Option<crate::trace::ServerContext>,
    /// Set by our HTTP/1.1 loop, which hands every head with an `Upgrade` field or a
    /// `Connection: upgrade` token to hyper: the layers need not look for them again.
    pub no_upgrade: bool,
}

impl RequestCtx {
    /// A request's context, when the server set one.
    pub fn of<B>(req: &http::Request<B>) -> Option<&RequestCtx> {
        req.extensions().get()
    }

    /// A request's context, made empty if it had none.
    pub fn of_mut<B>(req: &mut http::Request<B>) -> &mut RequestCtx {
        req.extensions_mut().get_or_insert_default()
    }

    /// The connection a request came in on.
    pub fn meta<B>(req: &http::Request<B>) -> Option<&Arc<ConnMeta>> {
        Self::of(req)?.meta.as_ref()
    }

    /// Where a request goes, once routing chose.
    pub fn dest<B>(req: &http::Request<B>) -> Option<&Dest> {
        Self::of(req)?.dest.as_ref()
    }

    /// Whether a request asks to switch protocols (`headers::is_upgrade`), unless its
    /// context already says it cannot.
    pub fn is_upgrade<B>(req: &http::Request<B>) -> bool {
        Self::asks_upgrade(Self::of(req), req.headers())
    }

    /// `is_upgrade` for a caller that has looked the context up already.
    pub fn asks_upgrade(ctx: Option<&RequestCtx>, headers: &http::HeaderMap) -> bool {
        ctx.is_none_or(|c| !c.no_upgrade) && headers::is_upgrade(headers)
    }
}

/// Where a request is going: the local service (inbound) or a peer sidecar (outbound).
#[derive(Debug, Clone)]
pub struct Dest {
    /// Bounded label for metrics and the circuit breaker key: the upstream's `host:port`
    /// inbound, the peer's name outbound.
    pub label: &'static str,
    /// `host:port` to connect to.
    pub authority: http::uri::Authority,
    pub port: u16,
    /// Expected TLS identity of the peer (outbound with mTLS).
    pub identity: Option<Arc<str>>,
}
