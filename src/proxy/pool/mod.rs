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
//! past [`IDLE_TIMEOUT`] (or closed by the upstream).
//!
//! HTTP/2 to plaintext destinations has its own pool ([`H2Pool`]): one connection shared by
//! concurrent requests, driven by a task of its own. Upgrades (WebSocket) and ALPN-negotiated
//! connections to TLS peers stay on hyper-util's client: an upgraded connection outlives its
//! request.

mod body;
mod conn;
mod h2;

use std::future::{poll_fn, Future};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::client::conn::http1;

pub use self::body::PooledBody;
use self::conn::Conn;
pub use self::h2::H2Pool;
use super::body::Body;
use super::connect::Connector;
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
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) => Some(e.as_ref()),
            Self::Http(e) => Some(e),
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

struct Idle {
    conn: Conn,
    since: Instant,
}

struct Shared {
    connector: Connector,
    idle: Mutex<foldhash::HashMap<Authority, Vec<Idle>>>,
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
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<PooledBody>, Failure> {
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
        loop {
            let (mut conn, reused) = match self.checkout(&authority).await {
                Some(conn) => (conn, true),
                None => match self.connect(&authority).await {
                    Ok(conn) => (conn, false),
                    Err(error) => {
                        return Err(Failure {
                            error,
                            unsent: Some(req),
                        })
                    }
                },
            };
            // Queueing the request signals the connection; it is polled right below, so the
            // signal need not schedule a poll of its own.
            conn.relay.mute();
            let sent = conn.sender.try_send_request(req);
            conn.relay.end();
            let mut sent = std::pin::pin!(sent);
            let result = poll_fn(|cx| {
                conn.poll(cx, |conn, cx| {
                    if let Poll::Ready(r) = sent.as_mut().poll(cx) {
                        return Poll::Ready(r);
                    }
                    // The connection writes the request and reads the answer; if it closed
                    // instead, the request future now resolves with the reason.
                    conn.drive(cx);
                    sent.as_mut().poll(cx)
                })
            })
            .await;
            match result {
                Ok(resp) => {
                    let pool = self.clone();
                    return Ok(resp.map(|incoming| PooledBody {
                        incoming,
                        conn: Some(conn),
                        pool,
                        authority,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // A reused connection closed before the request was written (the
                    // upstream timed it out meanwhile): safe to send on a new one.
                    Some(back) if reused => req = back,
                    _ => {
                        return Err(Failure {
                            error: SendError::Http(e.into_error()),
                            unsent: None,
                        })
                    }
                },
            }
        }
    }

    /// The most recently used idle connection to `authority` that is still open and ready.
    async fn checkout(&self, authority: &Authority) -> Option<Conn> {
        loop {
            let idle = {
                let mut map = self.shared.idle.lock().ok()?;
                let list = map.get_mut(authority)?;
                let idle = list.pop()?;
                if list.is_empty() {
                    map.remove(authority);
                }
                idle
            };
            if idle.since.elapsed() >= IDLE_TIMEOUT {
                continue;
            }
            let mut conn = idle.conn;
            // Nothing happened on it since it was found ready (the common case): no need to
            // poll it again.
            if conn.relay.quiet() && !conn.sender.is_closed() {
                return Some(conn);
            }
            if poll_fn(|cx| Poll::Ready(conn.ready_settled(cx))).await {
                return Some(conn);
            }
            // Closed by the upstream while idle: not usable, dropped.
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<Conn, SendError> {
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
        let (sender, driver) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        // From the first connection on, idle ones need sweeping.
        self.start_sweeper();
        Ok(Conn::new(sender, driver))
    }

    fn put(&self, authority: Authority, conn: Conn) {
        if conn.closed || conn.sender.is_closed() {
            return;
        }
        if let Ok(mut map) = self.shared.idle.lock() {
            let list = map.entry(authority).or_default();
            if list.len() < MAX_IDLE_PER_ADDRESS {
                list.push(Idle {
                    conn,
                    since: Instant::now(),
                });
            }
        }
    }

    /// Close idle connections past [`IDLE_TIMEOUT`] or closed by the upstream, every half
    /// timeout, for as long as the pool exists.
    fn start_sweeper(&self) {
        if self.shared.sweeper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.shared.sweeper_started.store(false, Ordering::Relaxed);
            return;
        };
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(IDLE_TIMEOUT / 2);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                shared.sweep();
            }
        });
    }
}

impl Shared {
    fn sweep(&self) {
        let Ok(mut map) = self.idle.lock() else {
            return;
        };
        // Nobody waits on an idle connection: polling it (with the relay's waker inside, see
        // `Conn::ready_settled`) only lets it notice the upstream's close.
        let mut cx = Context::from_waker(Waker::noop());
        map.retain(|_, list| {
            list.retain_mut(|i| {
                i.since.elapsed() < IDLE_TIMEOUT
                    && (i.conn.relay.quiet() || i.conn.ready_settled(&mut cx))
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
}
