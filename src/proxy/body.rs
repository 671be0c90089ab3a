//! Body types of the proxy. Bodies are streamed frame by frame (data and trailers), never
//! buffered, so memory stays flat for any size. `Observed` tells a callback how a body ended:
//! complete, failed (the upstream died mid-body) or dropped (the client went away), which is
//! when the request's metrics and in-flight counts are settled.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

use crate::error::BoxError;

/// The body type inside the stack, for requests and responses alike.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// How a body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// Every frame was delivered.
    Complete,
    /// The producer failed mid-stream (e.g. the upstream reset the connection).
    Error,
    /// The consumer dropped the body before its end (e.g. the client went away).
    Dropped,
}

/// Called exactly once when an observed body ends.
pub trait OnEnd: Send + 'static {
    fn on_end(self, end: BodyEnd);
}

pin_project_lite::pin_project! {
    /// A body that reports its end to `O`.
    pub struct Observed<B: http_body::Body, O: OnEnd> {
        #[pin]
        inner: B,
        observer: Option<O>,
    }

    impl<B: http_body::Body, O: OnEnd> PinnedDrop for Observed<B, O> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(o) = this.observer.take() {
                // An empty body may be dropped unpolled after the peer saw its end.
                let end = if this.inner.as_ref().get_ref().is_end_stream() {
                    BodyEnd::Complete
                } else {
                    BodyEnd::Dropped
                };
                o.on_end(end);
            }
        }
    }
}

impl<B: http_body::Body, O: OnEnd> Observed<B, O> {
    pub fn new(inner: B, observer: O) -> Self {
        Self {
            inner,
            observer: Some(observer),
        }
    }
}

impl<B, O> http_body::Body for Observed<B, O>
where
    B: http_body::Body<Data = Bytes>,
    O: OnEnd,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let res = ready!(this.inner.poll_frame(cx));
        let end = match &res {
            None => Some(BodyEnd::Complete),
            Some(Err(_)) => Some(BodyEnd::Error),
            Some(Ok(_)) => None,
        };
        if let Some(end) = end {
            if let Some(o) = this.observer.take() {
                o.on_end(end);
            }
        }
        Poll::Ready(res)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// Fails a body that moves no frame for `timeout` while its consumer waits for one: a
    /// stalled upstream response or a stalled upload must not hold connections, a concurrency
    /// slot and the in-flight gauge forever (`--idle-timeout`, like Envoy's stream idle
    /// timeout). The timer exists only once the body has had to wait.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        timeout: std::time::Duration,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
        armed: bool,
    }
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, timeout: std::time::Duration) -> Self {
        Self {
            inner,
            timeout,
            sleep: None,
            armed: false,
        }
    }
}

/// The error an idle body ends with.
#[derive(Debug, thiserror::Error)]
#[error("no body data moved for --idle-timeout ({0:?})")]
pub struct BodyIdle(pub std::time::Duration);

impl<B> http_body::Body for IdleTimeout<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(res) => {
                *this.armed = false;
                Poll::Ready(res.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                let deadline = tokio::time::Instant::now() + *this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !*this.armed {
                    sleep.as_mut().reset(deadline);
                    *this.armed = true;
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyIdle(*this.timeout).into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
