//! One pooled connection for hyper's HTTP/1 client, the waker it is polled with, and the
//! exchange of a request with a body over it (bodiless ones take `raw`).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures_util::task::AtomicWaker;
use http::uri::Authority;
use http::{Request, Response};
use hyper::client::conn::http1;

use crate::proxy::body::Body;
use crate::proxy::connect::UpstreamIo;

use super::{Failure, H1Pool, PoolBody, Pooled, PooledBody, SendError};

/// One connection: the request handle and the connection future that does its I/O.
pub(super) struct Conn {
    pub(super) sender: http1::SendRequest<Body>,
    driver: Pin<Box<http1::Connection<UpstreamIo, Body>>>,
    pub(super) closed: bool,
    pub(super) relay: Arc<Relay>,
    relay_waker: Waker,
    /// The connector's TLS generation when the connection was opened.
    pub(super) generation: u64,
}

/// The waker every part of a connection is polled with. hyper's client signals its own
/// progress through it (request queued, response ready, body data wanted, connection idle);
/// when the connection is polled in the request's task those signals fire while that task is
/// already polling, and each would schedule one more poll of the whole downstream connection
/// for nothing (measured: 5 polls per request instead of 2). While the owner polls, a signal
/// is only noted, and the owner polls the connection again at once; outside (socket
/// readiness, from the I/O driver) it wakes the owner's task.
pub(super) struct Relay {
    task: AtomicWaker,
    state: AtomicU8,
}

const POLLING: u8 = 1;
const SIGNALLED: u8 = 2;

impl Relay {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            task: AtomicWaker::new(),
            state: AtomicU8::new(0),
        })
    }

    fn begin(&self, task: &Waker) {
        // Lock-free; clones the waker only when the owner changed.
        self.task.register(task);
        self.state.store(POLLING, Ordering::Release);
    }

    /// Note signals without waking anyone until `end`, for a caller about to poll anyway.
    pub(super) fn mute(&self) {
        self.state.store(POLLING, Ordering::Release);
    }

    /// Whether the connection signalled itself since `begin`.
    pub(super) fn end(&self) -> bool {
        self.state.swap(0, Ordering::AcqRel) & SIGNALLED != 0
    }

    /// Keep a signal noted after the poll that saw it, for `quiet`.
    fn note(&self) {
        self.state.fetch_or(SIGNALLED, Ordering::AcqRel);
    }

    /// Nothing woke the connection since it was last polled to a settled state: no socket
    /// event (data, EOF, error) and no signal of its own that is still to be handled.
    pub(super) fn quiet(&self) -> bool {
        self.state.load(Ordering::Acquire) & SIGNALLED == 0
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
        // Takes the waker: the owner registers again when it polls, which this schedules.
        self.task.wake();
    }
}

/// Rounds of polling in one `Conn::poll` before handing back to the scheduler.
const MAX_ROUNDS: usize = 8;

impl Conn {
    pub(super) fn new(
        sender: http1::SendRequest<Body>,
        driver: http1::Connection<UpstreamIo, Body>,
        generation: u64,
    ) -> Self {
        let relay = Relay::new();
        Self {
            sender,
            driver: Box::pin(driver),
            closed: false,
            relay_waker: Waker::from(relay.clone()),
            relay,
            generation,
        }
    }

    /// Run `f` on this connection with the relay's waker, again while the connection
    /// signalled itself meanwhile (see [`Relay`]).
    pub(super) fn poll<T>(
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
                if signalled {
                    self.relay.note();
                }
                return r;
            }
        }
        self.relay.note();
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Whether the connection can take a new request now, polled until it stops signalling
    /// itself. Every poll of an idle connection goes through here, with the relay's waker,
    /// so a later socket event marks the relay: while `relay.quiet()`, the answer still holds
    /// and checkout need not poll again.
    pub(super) fn ready_settled(&mut self, cx: &mut Context<'_>) -> bool {
        // A ready connection answers `Pending`, which `poll` repeats while the connection
        // signals itself (and marks the relay if it never stops): the settling wanted here.
        self.poll(cx, |c, cx| {
            if c.ready_now(cx) {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .is_pending()
    }

    /// Let the connection do its I/O. False once it has closed (the future completed).
    pub(super) fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.closed && self.driver.as_mut().poll(cx).is_ready() {
            self.closed = true;
        }
        !self.closed
    }

    /// The connection for our own client (`raw`): its socket, with what hyper read ahead.
    pub(super) fn into_raw(self) -> Option<super::raw::RawConn> {
        if self.closed {
            return None;
        }
        let parts = Pin::into_inner(self.driver).into_parts();
        // Bytes an idle connection received are no answer to anything: not usable.
        parts
            .read_buf
            .is_empty()
            .then(|| super::raw::RawConn::new(parts.io, self.generation))
    }

    /// Ready for a new request right now (open, and the previous exchange fully done)?
    fn ready_now(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx) && matches!(self.sender.poll_ready(cx), Poll::Ready(Ok(())))
    }
}

impl H1Pool {
    /// A request with a body: hyper's HTTP/1 client on a pooled connection of ours.
    pub(super) async fn send_hyper(
        &self,
        mut req: Request<Body>,
        authority: Authority,
    ) -> Result<Response<PoolBody>, Failure> {
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
                    return Ok(resp.map(|incoming| {
                        PoolBody::Hyper(PooledBody {
                            incoming,
                            conn: Some(conn),
                            pool,
                            authority,
                        })
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

    /// An idle connection for hyper's client (a request with a body).
    async fn checkout(&self, authority: &Authority) -> Option<Conn> {
        loop {
            match self.pop_idle(authority)? {
                Pooled::Hyper(conn) => return Some(conn),
                Pooled::Raw(raw) => {
                    let generation = raw.generation;
                    let Some(io) = raw.into_io() else { continue };
                    // No I/O: an HTTP/1 handshake only sets up the connection's state.
                    if let Ok((sender, driver)) = http1::Builder::new().handshake(io).await {
                        return Some(Conn::new(sender, driver, generation));
                    }
                }
            }
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<Conn, SendError> {
        let (io, generation) = self.open(authority).await?;
        let (sender, driver) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        Ok(Conn::new(sender, driver, generation))
    }

    pub(super) fn put(&self, authority: Authority, conn: Conn) {
        if conn.closed || conn.sender.is_closed() {
            return;
        }
        self.push_idle(authority, Pooled::Hyper(conn));
    }
}
