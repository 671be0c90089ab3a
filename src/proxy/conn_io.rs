//! Connection-level deadlines that hyper does not give us in the contract's shape:
//! - header read timeout: a request head not complete within `--header-read-timeout` gets a
//!   `408` with `tracseq-proxy-error: header-timeout` and the connection is closed (hyper's own
//!   timeout closes without an answer). It runs from accept for the first request and from the
//!   first byte of each later one;
//! - idle timeout: a connection with no request in flight and no bytes moving for
//!   `--idle-timeout` is closed (HTTP/1 and HTTP/2 alike, and upgraded tunnels, whose bytes
//!   are never mistaken for a request head);
//! - write stall: a client that takes none of its answer for `--idle-timeout` (the socket
//!   stays full) fails the write and the connection ends, so it cannot hold a connection, a
//!   request slot and the upstream's answer forever.
//!
//! The wrapper sits between the socket (or TLS stream) and hyper. It learns about request
//! boundaries from two counters in `ConnState` that the metrics layer updates, so it needs no
//! knowledge of HTTP parsing beyond spotting the HTTP/2 preface.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The 408 written on a header timeout. Written raw because hyper never produced a request.
const RESPONSE_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ntracseq-proxy-error: header-timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 33\r\nconnection: close\r\n\r\nRequest Timeout (header-timeout)\n";

/// Request counters of one connection, shared by its IO wrapper and its requests.
#[derive(Debug)]
pub struct ConnState {
    /// When the connection was accepted; `quiet_since` counts from here.
    base: Instant,
    /// Microseconds after `base` when the last in-flight request ended. HTTP/2's idle clock
    /// runs from here rather than from the last byte: PING frames (ours or the client's)
    /// move bytes on a connection that carries no requests.
    quiet_since: AtomicU64,
    /// Requests whose head was parsed (monotonic).
    started: AtomicU64,
    /// Requests in flight (head parsed, response body not yet ended).
    active: AtomicUsize,
    /// The connection switched protocols (101): what follows are tunnel bytes, never a
    /// request head, so only the idle deadline applies.
    upgraded: AtomicBool,
}

impl Default for ConnState {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            quiet_since: AtomicU64::new(0),
            started: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            upgraded: AtomicBool::new(false),
        }
    }
}

impl ConnState {
    /// When the connection last had no request in flight (accept, or the last request's end).
    fn quiet_since(&self) -> Instant {
        self.base + Duration::from_micros(self.quiet_since.load(Ordering::Relaxed))
    }

    /// Marks a request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }
}

#[derive(Debug)]
pub struct ActiveGuard(Arc<ConnState>);

impl ActiveGuard {
    /// The request's answer switches protocols (101): the connection becomes a tunnel.
    pub fn mark_upgraded(&self) {
        self.0.upgraded.store(true, Ordering::Relaxed);
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let state = &self.0;
        // Record the quiet time first: a reader that sees `active == 0` then sees it too (or
        // an older one, which only makes its deadline earlier and re-checked).
        let micros = u64::try_from(state.base.elapsed().as_micros()).unwrap_or(u64::MAX);
        state.quiet_since.fetch_max(micros, Ordering::Relaxed);
        state.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    Header,
    Idle,
    /// Requests in flight: re-check after an idle period (HTTP/2 may not poll reads again
    /// when its last stream ends).
    Recheck,
}

pub struct TimedIo<T> {
    inner: T,
    state: Arc<ConnState>,
    header_timeout: Duration,
    idle_timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    armed: Option<(Instant, Deadline)>,
    accepted: Instant,
    last_activity: Instant,
    seen_started: u64,
    /// When the first byte of a not-yet-dispatched request head arrived.
    head_start: Option<Instant>,
    /// `None` until the first bytes tell HTTP/1 from HTTP/2.
    is_h2: Option<bool>,
    /// How many bytes of the HTTP/2 preface have matched so far.
    preface_seen: usize,
    on_header_timeout: Option<Box<dyn FnOnce() + Send>>,
    /// The write-stall timer, made the first time a write has to wait.
    write_sleep: Option<Pin<Box<Sleep>>>,
}

impl<T> TimedIo<T> {
    pub fn new(
        inner: T,
        state: Arc<ConnState>,
        header_timeout: Duration,
        idle_timeout: Duration,
        on_header_timeout: Box<dyn FnOnce() + Send>,
    ) -> Self {
        let now = Instant::now();
        Self {
            inner,
            state,
            header_timeout,
            idle_timeout,
            sleep: Box::pin(tokio::time::sleep_until(now + header_timeout)),
            armed: None,
            accepted: now,
            last_activity: now,
            seen_started: 0,
            head_start: None,
            is_h2: None,
            preface_seen: 0,
            on_header_timeout: Some(on_header_timeout),
            write_sleep: None,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn sync(&mut self) {
        let started = self.state.started.load(Ordering::Relaxed);
        if started != self.seen_started {
            self.seen_started = started;
            self.head_start = None;
        }
    }

    fn on_read(&mut self, bytes: &[u8]) {
        let now = Instant::now();
        self.last_activity = now;
        if self.is_h2.is_none() {
            // Decide only on a mismatch or on the whole preface: a client that sends "P" and
            // then trickles must not escape the header deadline by looking like HTTP/2.
            let seen = self.preface_seen;
            let n = bytes.len().min(H2_PREFACE.len() - seen);
            if bytes[..n] != H2_PREFACE[seen..seen + n] {
                self.is_h2 = Some(false);
            } else {
                self.preface_seen += n;
                if self.preface_seen == H2_PREFACE.len() {
                    self.is_h2 = Some(true);
                }
            }
        }
        self.sync();
        if self.state.active.load(Ordering::Relaxed) == 0 && self.head_start.is_none() {
            self.head_start = Some(now);
        }
    }

    fn deadline(&mut self) -> (Instant, Deadline) {
        self.sync();
        if self.state.upgraded.load(Ordering::Relaxed) {
            return (self.last_activity + self.idle_timeout, Deadline::Idle);
        }
        let h2 = self.is_h2 == Some(true);
        if self.state.active.load(Ordering::Relaxed) > 0 {
            return (Instant::now() + self.idle_timeout, Deadline::Recheck);
        }
        if !h2 {
            if self.seen_started == 0 {
                return (self.accepted + self.header_timeout, Deadline::Header);
            }
            if let Some(start) = self.head_start {
                return (start + self.header_timeout, Deadline::Header);
            }
        }
        let idle_from = if h2 {
            self.state.quiet_since()
        } else {
            self.last_activity
        };
        (idle_from + self.idle_timeout, Deadline::Idle)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> TimedIo<T> {
    /// Checks the deadline; `Ready` means the connection must end now.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let want = self.deadline();
            let (_, kind) = match self.armed {
                // A re-check is periodic by nature; an idle deadline armed earlier than the
                // current one is merely stale (activity since) and is recomputed when it fires.
                // Anything else is re-armed: e.g. a header deadline armed before hyper started
                // the request would otherwise hold back the (earlier) idle deadline after it.
                Some((at, kind))
                    if kind == want.1 && (kind == Deadline::Recheck || at <= want.0) =>
                {
                    (at, kind)
                }
                _ => {
                    self.sleep.as_mut().reset(want.0);
                    self.armed = Some(want);
                    want
                }
            };
            if std::future::Future::poll(self.sleep.as_mut(), cx).is_pending() {
                return Poll::Pending;
            }
            let (now_at, now_kind) = self.deadline();
            if now_kind == kind && now_at <= Instant::now() && kind != Deadline::Recheck {
                return Poll::Ready(self.expire(cx, kind));
            }
            self.armed = None;
        }
    }

    fn expire(&mut self, cx: &mut Context<'_>, kind: Deadline) -> io::Result<()> {
        match kind {
            Deadline::Header => {
                // Best effort: the socket buffer is empty on a stalled request, so one write
                // normally takes all of it; a client that does not read gets no answer.
                let _ = Pin::new(&mut self.inner).poll_write(cx, RESPONSE_408);
                let _ = Pin::new(&mut self.inner).poll_flush(cx);
                if let Some(f) = self.on_header_timeout.take() {
                    f();
                }
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not received within --header-read-timeout",
                ))
            }
            // End of stream: hyper closes an idle connection quietly.
            Deadline::Idle | Deadline::Recheck => Ok(()),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let filled = buf.filled();
                if filled.len() > before {
                    this.on_read(&filled[before..]);
                    this.armed = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

impl<T> TimedIo<T> {
    /// A write that has to wait: fails once nothing moved for `--idle-timeout`.
    fn poll_stall<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let deadline = self.last_activity + self.idle_timeout;
        let sleep = self
            .write_sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        match std::future::Future::poll(sleep.as_mut(), cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took none of its answer for --idle-timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn wrote(
        &mut self,
        res: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match res {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.last_activity = Instant::now();
                Poll::Ready(Ok(n))
            }
            Poll::Pending => self.poll_stall(cx),
            other => other,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(res, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(res, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            // A TLS flush waits on the socket like a write does.
            Poll::Pending => self.poll_stall(cx),
            done => done,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
