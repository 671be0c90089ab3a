//! The response body of a pooled exchange.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::uri::Authority;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;

use super::conn::Conn;
use super::{H1Pool, IDLE_TIMEOUT};
use crate::error::BoxError;

/// A response body that drives its connection while it is read and returns the connection to
/// the pool at its end. Dropped before the end, it closes the connection (its framing is
/// unknown from there on).
pub struct PooledBody {
    pub(super) incoming: Incoming,
    pub(super) conn: Option<Conn>,
    pub(super) pool: H1Pool,
    pub(super) authority: Authority,
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
        if conn.ready_settled(&mut Context::from_waker(Waker::noop())) {
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

/// A pooled response body: read by hyper's client (requests with a body) or by our own
/// (`raw`, bodiless requests). `Forward` unpacks it into its own body type, so a frame goes
/// through one match, not two.
pub enum PoolBody {
    Hyper(PooledBody),
    Raw(super::RawBody),
}
