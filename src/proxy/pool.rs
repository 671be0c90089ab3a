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
//! HTTP/2 and upgrades (WebSocket) stay on hyper-util's client: an HTTP/2 connection is shared
//! by concurrent requests, and an upgraded connection outlives its request.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;

use super::body::Body;
use super::connect::{Connector, UpstreamIo};
use crate::error::BoxError;

/// How long an idle connection is kept (the same as the HTTP/2 client's pool).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per address.
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
/// opened): the caller may send it again without having kept a copy.
pub struct Failure {
    pub error: SendError,
    pub unsent: Option<Request<Body>>,
}

/// One connection: the request handle and the connection future that does its I/O.
struct Conn {
    sender: http1::SendRequest<Body>,
    driver: Pin<Box<http1::Connection<UpstreamIo, Body>>>,
    closed: bool,
    relay: Arc<Relay>,
    relay_waker: Waker,
}

/// The waker every part of a connection is polled with. hyper's client signals its own
/// progress through it (request queued, response ready, body data wanted, connection idle);
/// when the connection is polled in the request's task those signals fire while that task is
/// already polling, and each would schedule one more poll of the whole downstream connection
/// for nothing (measured: 5 polls per request instead of 2). While the owner polls, a signal
/// is only noted, and the owner polls the connection again at once; outside (socket
/// readiness, from the I/O driver) it wakes the owner's task.
struct Relay {
    task: Mutex<Option<Waker>>,
    state: AtomicU8,
}

const POLLING: u8 = 1;
const SIGNALLED: u8 = 2;

impl Relay {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            task: Mutex::new(None),
            state: AtomicU8::new(0),
        })
    }

    fn begin(&self, task: &Waker) {
        if let Ok(mut t) = self.task.lock() {
            if !t.as_ref().is_some_and(|w| w.will_wake(task)) {
                *t = Some(task.clone());
            }
        }
        self.state.store(POLLING, Ordering::Release);
    }

    /// Note signals without waking anyone until `end`, for a caller about to poll anyway.
    fn mute(&self) {
        self.state.store(POLLING, Ordering::Release);
    }

    /// Whether the connection signalled itself since `begin`.
    fn end(&self) -> bool {
        self.state.swap(0, Ordering::AcqRel) & SIGNALLED != 0
    }
}

impl std::task::Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.state.fetch_or(SIGNALLED, Ordering::AcqRel) & POLLING != 0 {
            return;
        }
        if let Ok(t) = self.task.lock() {
            if let Some(w) = t.as_ref() {
                w.wake_by_ref();
            }
        }
    }
}

/// Rounds of polling in one `Conn::poll` before handing back to the scheduler.
const MAX_ROUNDS: usize = 8;

impl Conn {
    fn new(sender: http1::SendRequest<Body>, driver: http1::Connection<UpstreamIo, Body>) -> Self {
        let relay = Relay::new();
        Self {
            sender,
            driver: Box::pin(driver),
            closed: false,
            relay_waker: Waker::from(relay.clone()),
            relay,
        }
    }

    /// Run `f` on this connection with the relay's waker, again while the connection
    /// signalled itself meanwhile (see [`Relay`]).
    fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut f: impl FnMut(&mut Self, &mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let waker = self.relay_waker.clone();
        let mut rcx = Context::from_waker(&waker);
        for _ in 0..MAX_ROUNDS {
            self.relay.begin(cx.waker());
            let r = f(self, &mut rcx);
            let signalled = self.relay.end();
            if r.is_ready() || !signalled {
                return r;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Let the connection do its I/O. False once it has closed (the future completed).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.closed && self.driver.as_mut().poll(cx).is_ready() {
            self.closed = true;
        }
        !self.closed
    }

    /// Ready for a new request right now (open, and the previous exchange fully done)?
    fn ready_now(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx) && matches!(self.sender.poll_ready(cx), Poll::Ready(Ok(())))
    }
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
            let ready = poll_fn(
                |cx| match conn.poll(cx, |c, cx| Poll::Ready(c.ready_now(cx))) {
                    Poll::Ready(ready) => Poll::Ready(ready),
                    Poll::Pending => Poll::Ready(false),
                },
            )
            .await;
            if ready {
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
        self.start_sweeper();
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
        // Nobody waits on an idle connection: polling it with a no-op waker only lets it
        // notice the upstream's close.
        let mut cx = Context::from_waker(Waker::noop());
        map.retain(|_, list| {
            list.retain_mut(|i| i.since.elapsed() < IDLE_TIMEOUT && i.conn.drive(&mut cx));
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

/// A response body that drives its connection while it is read and returns the connection to
/// the pool at its end. Dropped before the end, it closes the connection (its framing is
/// unknown from there on).
pub struct PooledBody {
    incoming: Incoming,
    conn: Option<Conn>,
    pool: H1Pool,
    authority: Authority,
}

impl PooledBody {
    /// The response is complete: the connection goes back to the pool once the exchange is
    /// over. Usually it is at once; but an upstream may answer before it has read the request
    /// body (RFC 9110 allows it; streaming ingesters do it), and then the connection is still
    /// sending that body, which only happens while someone polls it: a task of its own does,
    /// until the connection is ready for the next request (or closes, or idles too long).
    fn release(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let ready = conn.poll(&mut Context::from_waker(Waker::noop()), |c, cx| {
            Poll::Ready(c.ready_now(cx))
        });
        if matches!(ready, Poll::Ready(true)) {
            self.pool.put(self.authority.clone(), conn);
            return;
        }
        if conn.closed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (pool, authority) = (self.pool.clone(), self.authority.clone());
        rt.spawn(async move {
            // Bounded by inactivity, not by total time: an upload may rightly take minutes,
            // but a connection nothing wakes for `IDLE_TIMEOUT` (the upstream stopped reading,
            // the client stopped sending) is dropped.
            let idle = tokio::time::sleep(IDLE_TIMEOUT);
            let mut idle = std::pin::pin!(idle);
            let finished = poll_fn(|cx| {
                if idle.is_elapsed() {
                    return Poll::Ready(false);
                }
                let r = conn.poll(cx, |c, cx| {
                    if !c.drive(cx) {
                        return Poll::Ready(false);
                    }
                    c.sender.poll_ready(cx).map(|r| r.is_ok())
                });
                if r.is_pending() {
                    // Woken by the connection (it moved data or signalled): the clock restarts.
                    idle.as_mut()
                        .reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
                    if idle.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(false);
                    }
                }
                r
            })
            .await;
            if finished {
                pool.put(authority, conn);
            }
        });
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let incoming = &mut this.incoming;
        let frame = match &mut this.conn {
            // The connection reads only as far as the body is wanted: poll the body (which
            // says it wants data), then let the connection read, then the body again.
            Some(conn) => conn.poll(cx, |conn, cx| {
                match Pin::new(&mut *incoming).poll_frame(cx) {
                    Poll::Pending => {
                        conn.drive(cx);
                        Pin::new(&mut *incoming).poll_frame(cx)
                    }
                    ready => ready,
                }
            }),
            None => Pin::new(&mut *incoming).poll_frame(cx),
        };
        match &frame {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.incoming.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        frame.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body nobody reads to its end (HEAD, 204, or a downstream that stopped reading
        // because the length was reached) may still be complete.
        if self.incoming.is_end_stream() {
            self.release();
        }
    }
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
