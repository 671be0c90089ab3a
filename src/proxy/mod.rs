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

/// Facts about one accepted connection, shared by all its requests (an `Arc` in the request
/// extensions).
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
