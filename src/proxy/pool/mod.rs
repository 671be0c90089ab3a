//! HTTP/1.1 connections to one kind of upstream, pooled per address and driven in the task of
//! the request that uses them.
//!
//! hyper-util's pooled client spawns a task per connection and hands every request to it over
//! a channel; the answer comes back over another, and a further task per request waits for
//! the connection to be reusable. On the request path of a sidecar that was the largest
//! share of user-space work after parsing (docs/BENCHMARKS.md). Here a connection is a
//! hyper `SendRequest` plus its `Connection` future, and whoever holds it polls both: the
//! request future until the response head, then the response body ([`PooledBody`]) until its
//! end, when the connection goes back to the pool. An idle connection is polled by nobody;
//! the next checkout polls it first, so a connection the upstream closed meanwhile is seen
//! and dropped before a request is put on it, and a periodic sweep closes connections idle
//! past [`IDLE_TIMEOUT`] (or closed by the upstream). A connection opened before a TLS
//! reload (an older `ClientTls::generation`) is neither reused nor kept idle.
//!
//! HTTP/2 to plaintext destinations has its own pool ([`H2Pool`]): one connection shared by
//! concurrent requests, driven by a task of its own. Upgrades (WebSocket) and ALPN-negotiated
//! connections to TLS peers stay on hyper-util's client: an upgraded connection outlives its
//! request.

mod body;
mod conn;
mod h2;
mod raw;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};

pub use self::body::{PoolBody, PooledBody};
use self::conn::Conn;
pub use self::h2::H2Pool;
pub use self::raw::{RawBody, RawError};
use super::body::Body;
use super::connect::{Connector, UpstreamIo};
use crate::error::BoxError;

/// How long an idle connection is kept, here and in hyper-util's pool (HTTP/2). Shorter than
/// the keep-alive of common app servers would be safest, but sidecars talk to many stacks:
/// a middle value, with a retry of requests that hit a connection the server closed before
/// the request was written.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per address: enough for bursts on 2 cores without hoarding fds.
pub const MAX_IDLE_PER_ADDRESS: usize = 64;

/// Why a request could not be exchanged.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened (TCP or TLS): the request was never sent.
    Connect(BoxError),
    /// The exchange failed on an open connection.
    Http(hyper::Error),
    /// The exchange of a bodiless request failed on an open connection (`raw`).
    Raw(RawError),
}

impl SendError {
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "cannot connect to the upstream: {e}"),
            Self::Http(e) => write!(f, "upstream exchange failed: {e}"),
            Self::Raw(e) => write!(f, "upstream exchange failed: {e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) => Some(e.as_ref()),
            Self::Http(e) => Some(e),
            Self::Raw(RawError::Io(e)) => Some(e),
            Self::Raw(e) => Some(e),
        }
    }
}

/// A failed exchange, with the request when it was never sent (no connection could be
/// opened, or an HTTP/2 connection handed it back): the caller may send it again without
/// having kept a copy. (The retry layer does so for connect failures only.)
pub struct Failure {
    pub error: SendError,
    pub unsent: Option<Request<Body>>,
}

/// An idle connection, as its last exchange left it: driven by hyper's client (a request
/// with a body) or by our own (`raw`, bodiless). Either kind serves either kind of request
/// next (converted at checkout), so a mixed workload shares one set of connections.
enum Pooled {
    Hyper(Conn),
    Raw(raw::RawConn),
}

struct Idle {
    conn: Pooled,
    since: Instant,
}

impl Pooled {
    fn generation(&self) -> u64 {
        match self {
            Self::Hyper(c) => c.generation,
            Self::Raw(r) => r.generation,
        }
    }
}

impl Idle {
    /// Still open and nothing unexpected arrived (polls only if something happened).
    fn usable(&mut self, cx: &mut Context<'_>) -> bool {
        match &mut self.conn {
            Pooled::Hyper(c) => (c.relay.quiet() && !c.sender.is_closed()) || c.ready_settled(cx),
            Pooled::Raw(r) => r.usable(),
        }
    }
}

/// The idle map's key: an upstream address compared and hashed as its exact text.
/// `Authority`'s own `Hash` feeds the hasher one lowercased byte at a time (its `Eq` ignores
/// ASCII case): measured at ~1,100 instructions per request for the lookup, the removal and
/// the re-insert of the outbound sidecar's idle list, 3% of its work. The pool's addresses come
/// from configuration and request URIs as given; two spellings of one host that differ in
/// case only keep separate idle lists, which costs reuse, never correctness.
struct AddrKey(Authority);

impl PartialEq for AddrKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for AddrKey {}

impl std::hash::Hash for AddrKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // The same bytes as `str`'s hash, so lookups can borrow a plain `&str`.
        self.0.as_str().hash(state)
    }
}

impl std::borrow::Borrow<str> for AddrKey {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

struct Shared {
    connector: Connector,
    /// Idle connections by address. An address's list stays when it empties (the sweeper
    /// removes empty lists): a request would otherwise remove it at checkout and insert it
    /// again, with a fresh allocation, at check-in.
    idle: Mutex<foldhash::HashMap<AddrKey, Vec<Idle>>>,
    sweeper_started: AtomicBool,
}

/// A pool of HTTP/1.1 connections opened by one connector (plain, or mTLS expecting one peer
/// identity), keyed by upstream address.
#[derive(Clone)]
pub struct H1Pool {
    shared: Arc<Shared>,
}

impl H1Pool {
    pub fn new(connector: Connector) -> Self {
        Self {
            shared: Arc::new(Shared {
                connector,
                idle: Mutex::new(foldhash::HashMap::default()),
                sweeper_started: AtomicBool::new(false),
            }),
        }
    }

    /// Send `req` (absolute URI `http://address/path`) and return the response head; the
    /// body streams from the connection as it is polled.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<PoolBody>, Failure> {
        let Some(authority) = req.uri().authority().cloned() else {
            return Err(Failure {
                error: SendError::Connect("request URI has no upstream address".into()),
                unsent: None,
            });
        };
        if !req.headers().contains_key(http::header::HOST) {
            // As hyper-util's client does: the host, and the port unless it is http's 80.
            let host = match authority.port_u16() {
                Some(port) if port != 80 => format!("{}:{port}", authority.host()),
                _ => authority.host().to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&host) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
        origin_form(req.uri_mut());
        if http_body::Body::is_end_stream(req.body()) {
            return self
                .send_raw(req, authority)
                .await
                .map(|r| r.map(PoolBody::Raw));
        }
        // Boxed (one small allocation for requests with a body): the hyper path's state
        // (checkout, connection, request in flight) would otherwise make the future of
        // every request, bodiless ones too, 150 bytes larger (1,624 against 1,472).
        Box::pin(self.send_hyper(req, authority)).await
    }

    /// The most recently used idle connection to `authority`, open and usable.
    fn pop_idle(&self, authority: &Authority) -> Option<Pooled> {
        loop {
            let mut idle = {
                let mut map = self.shared.idle.lock().ok()?;
                map.get_mut(authority.as_str())?.pop()?
            };
            if idle.since.elapsed() >= IDLE_TIMEOUT
                || idle.conn.generation() != self.shared.connector.tls_generation()
            {
                continue;
            }
            // Polls only a connection something happened on since it went idle; a closed
            // one (the upstream timed it out) is dropped.
            if idle.usable(&mut Context::from_waker(Waker::noop())) {
                return Some(idle.conn);
            }
        }
    }

    /// An idle connection for our own client (a bodiless request).
    fn raw_checkout(&self, authority: &Authority) -> Option<raw::RawConn> {
        loop {
            match self.pop_idle(authority)? {
                Pooled::Raw(raw) => return Some(raw),
                Pooled::Hyper(conn) => {
                    if let Some(raw) = conn.into_raw() {
                        return Some(raw);
                    }
                }
            }
        }
    }

    fn push_idle(&self, authority: Authority, conn: Pooled) {
        // Opened before a reload that happened while it was in use: closed now rather than
        // holding an idle slot until a checkout or the sweeper finds it.
        if conn.generation() != self.shared.connector.tls_generation() {
            return;
        }
        if let Ok(mut map) = self.shared.idle.lock() {
            let list = map.entry(AddrKey(authority)).or_default();
            if list.len() < MAX_IDLE_PER_ADDRESS {
                list.push(Idle {
                    conn,
                    since: Instant::now(),
                });
            }
        }
    }

    /// A new connection to `authority` (TCP, and TLS when the connector says so), with the
    /// TLS generation it is opened under (read before the handshake: one racing a reload
    /// counts as the older).
    async fn open(&self, authority: &Authority) -> Result<(UpstreamIo, u64), SendError> {
        let generation = self.shared.connector.tls_generation();
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| SendError::Connect(e.into()))?;
        let mut connector = self.shared.connector.clone();
        let io = tower::Service::call(&mut connector, uri)
            .await
            .map_err(SendError::Connect)?;
        // From the first connection on, idle ones need sweeping.
        self.start_sweeper();
        Ok((io, generation))
    }

    /// Close idle connections past [`IDLE_TIMEOUT`] or closed by the upstream, every half
    /// timeout, for as long as the pool exists.
    fn start_sweeper(&self) {
        spawn_sweeper(&self.shared.sweeper_started, &self.shared, Shared::sweep);
    }
}

/// Run `sweep` on `pool` every half [`IDLE_TIMEOUT`] for as long as the pool exists, once per
/// `started` flag (left unset outside a runtime, so a later call tries again). Shared by the
/// HTTP/1.1 and the h2c pools.
fn spawn_sweeper<T: Send + Sync + 'static>(started: &AtomicBool, pool: &Arc<T>, sweep: fn(&T)) {
    if started.swap(true, Ordering::Relaxed) {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        started.store(false, Ordering::Relaxed);
        return;
    };
    let weak: Weak<T> = Arc::downgrade(pool);
    rt.spawn(async move {
        let mut tick = tokio::time::interval(IDLE_TIMEOUT / 2);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(pool) = weak.upgrade() else { return };
            sweep(&pool);
        }
    });
}

impl Shared {
    fn sweep(&self) {
        let Ok(mut map) = self.idle.lock() else {
            return;
        };
        // Nobody waits on an idle connection: polling it (with the relay's or the raw
        // connection's own waker inside) only lets it notice the upstream's close.
        let mut cx = Context::from_waker(Waker::noop());
        let generation = self.connector.tls_generation();
        map.retain(|_, list| {
            list.retain_mut(|i| {
                i.since.elapsed() < IDLE_TIMEOUT
                    && i.conn.generation() == generation
                    && i.usable(&mut cx)
            });
            !list.is_empty()
        });
    }
}

/// `http://host:port/path?q` → `/path?q` (origin form, RFC 9112 §3.2.1) for the request line.
fn origin_form(uri: &mut Uri) {
    let path = match uri.path_and_query() {
        Some(p) if p.as_str() != "/" => {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(p.clone());
            Uri::from_parts(parts).unwrap_or_default()
        }
        _ => Uri::default(),
    };
    *uri = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_form_keeps_path_and_query_only() {
        let mut u: Uri = "http://127.0.0.1:8080/a/b?x=1".parse().expect("uri");
        origin_form(&mut u);
        assert_eq!(u, "/a/b?x=1");
        let mut u: Uri = "http://127.0.0.1:8080".parse().expect("uri");
        origin_form(&mut u);
        assert_eq!(u, "/");
    }

    #[test]
    fn idle_lists_are_found_by_address_text_and_swept_once_empty() {
        let pool = H1Pool::new(Connector::new(Duration::from_secs(1)));
        let a: Authority = "127.0.0.1:8080".parse().expect("authority");
        {
            let mut map = pool.shared.idle.lock().expect("lock");
            map.insert(AddrKey(a.clone()), Vec::new());
            // Looked up by the text, with the same hash as the key's.
            assert!(map.get_mut(a.as_str()).is_some());
            assert!(map.get_mut("127.0.0.1:8081").is_none());
        }
        // Nothing idle: a checkout finds the (empty) list and returns nothing.
        assert!(pool.pop_idle(&a).is_none());
        assert_eq!(pool.shared.idle.lock().expect("lock").len(), 1);
        // The sweeper drops lists that emptied, so addresses seen once do not pile up.
        pool.shared.sweep();
        assert!(pool.shared.idle.lock().expect("lock").is_empty());
    }
}
