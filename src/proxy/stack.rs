//! Pieces shared by both directions' tower stacks: the hyper adapter (infallible, one clone of
//! the stack per request), `x-request-id`, `rescue` as a layer, and the request timeout.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use tower::util::Oneshot;
use tower::ServiceExt;

use super::body::{self, Body};
use super::{headers, raw_fields, ConnMeta, Direction, RequestCtx};
use crate::error::{self, BoxError, ErrorKind, ProxyError};
use crate::layers::metrics::HttpMetrics;

/// What hyper calls: converts the body, attaches the connection's facts and runs the stack.
#[derive(Clone)]
pub struct HyperService<S> {
    stack: S,
    meta: Arc<ConnMeta>,
    idle_timeout: Duration,
}

impl<S> HyperService<S> {
    pub fn new(stack: S, meta: Arc<ConnMeta>, idle_timeout: Duration) -> Self {
        Self {
            stack,
            meta,
            idle_timeout,
        }
    }
}

impl<S> hyper::service::Service<Request<Incoming>> for HyperService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Materialize<Oneshot<S, Request<Body>>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let idle = self.idle_timeout;
        let mut req = if http_body::Body::is_end_stream(req.body()) {
            // Nothing left to read: an empty body boxes without allocating.
            req.map(|_| body::empty())
        } else {
            // An upload that stalls is cut after --idle-timeout.
            req.map(|b| body::boxed(body::IdleTimeout::new(b, idle)))
        };
        req.extensions_mut().insert(RequestCtx {
            meta: Some(self.meta.clone()),
            ..RequestCtx::default()
        });
        Materialize {
            inner: self.stack.clone().oneshot(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// The stack's answer for hyper: raw upstream fields go back into the `HeaderMap`, the
    /// only place hyper's encoders read (see `raw_fields`).
    pub struct Materialize<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Future for Materialize<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(mut resp) = std::task::ready!(self.project().inner.poll(cx));
        raw_fields::materialize(&mut resp);
        Poll::Ready(Ok(resp))
    }
}

/// Keeps or generates `x-request-id` and returns it on every response, the proxy's own too.
/// The response's field is `insert`ed: it replaces the upstream's, in the map and among raw
/// upstream fields alike (`raw_fields`: a name in the map hides the upstream's of that name, so
/// a layer that wants to add to an upstream field must take the fields into the map first).
#[derive(Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;
    fn layer(&self, inner: S) -> RequestId<S> {
        RequestId { inner }
    }
}

#[derive(Clone)]
pub struct RequestId<S> {
    inner: S,
}

pin_project_lite::pin_project! {
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut resp) = std::task::ready!(this.inner.poll(cx));
        if let Some(id) = this.id.take() {
            resp.headers_mut().insert(headers::X_REQUEST_ID, id);
        }
        Poll::Ready(Ok(resp))
    }
}

impl<S> tower::Service<Request<Body>> for RequestId<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let id = headers::ensure_request_id(req.headers_mut());
        RequestIdFuture {
            inner: self.inner.call(req),
            id: Some(id),
        }
    }
}

/// The one place where an error becomes an HTTP response (see `error::rescue`).
#[derive(Clone, Copy, Default)]
pub struct RescueLayer;

impl<S> tower::Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Rescue<S> {
        Rescue { inner }
    }
}

#[derive(Clone)]
pub struct Rescue<S> {
    inner: S,
}

pin_project_lite::pin_project! {
    pub struct RescueFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Future for RescueFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>>,
{
    type Output = Result<Response<Body>, Infallible>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match std::task::ready!(self.project().inner.poll(cx)) {
            Ok(resp) => Poll::Ready(Ok(resp)),
            Err(e) => {
                let resp = error::rescue(e.as_ref());
                if resp.status().is_server_error() {
                    tracing::debug!(error = %e, status = resp.status().as_u16(), "proxy answered with an error");
                }
                Poll::Ready(Ok(resp))
            }
        }
    }
}

impl<S> tower::Service<Request<Body>> for Rescue<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // An inner service that fails readiness is answered per request instead: `call`
        // below turns the stack's errors into responses, so report ready.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        RescueFuture {
            inner: self.inner.call(req),
        }
    }
}

/// `--request-timeout`: a deadline for the upstream's response headers (bodies may stream for
/// longer: a download is not a timeout). Fires as 504 `upstream-timeout`.
#[derive(Clone)]
pub struct TimeoutLayer {
    timeout: Duration,
    direction: Direction,
    metrics: Arc<HttpMetrics>,
}

impl TimeoutLayer {
    pub fn new(timeout: Duration, direction: Direction, metrics: Arc<HttpMetrics>) -> Self {
        Self {
            timeout,
            direction,
            metrics,
        }
    }
}

impl<S> tower::Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Timeout<S> {
    inner: S,
    layer: TimeoutLayer,
}

impl<S> tower::Service<Request<Body>> for Timeout<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // Inner layers (the upstream call) learn when they will be cut off, so a call dropped
        // at the deadline is recorded as a timeout rather than a cancellation.
        let deadline = tokio::time::Instant::now() + self.layer.timeout;
        RequestCtx::of_mut(&mut req).deadline = Some(deadline);
        TimeoutFuture {
            inner: tokio::time::timeout_at(deadline, self.inner.call(req)),
            layer: self.layer.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: tokio::time::Timeout<F>,
        layer: TimeoutLayer,
    }
}

impl<F> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>>,
{
    type Output = Result<Response<Body>, BoxError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match std::task::ready!(this.inner.poll(cx)) {
            Ok(res) => Poll::Ready(res),
            Err(elapsed) => {
                this.layer
                    .metrics
                    .upstream_error(this.layer.direction, "timeout");
                Poll::Ready(Err(ProxyError::new(ErrorKind::UpstreamTimeout)
                    .with_detail("no response headers within --request-timeout")
                    .with_source(elapsed)
                    .into()))
            }
        }
    }
}
