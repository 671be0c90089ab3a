//! Retries (`--retries N`) of requests that never reached the upstream: a connect failure
//! (`upstream-unavailable`, kind `connect`) of an idempotent method (GET HEAD OPTIONS TRACE PUT
//! DELETE) whose body is empty, the only body that can be sent again (a streamed body is gone
//! once read). POST is never retried. It sits between the request timeout and the upstream
//! client, so every attempt shares the one deadline. A request that could not be sent comes
//! back inside the error (`Unsent`, from the HTTP/1.1 pool) and is sent again as it is; only
//! HTTP/2 requests, which may go out over a client that cannot give them back, have their
//! head copied up front.
//!
//! Retries are bounded by a budget, like Envoy's default: retries may be at most 20% of the
//! requests seen over the last `WINDOW` (10 s), with a floor of `MIN_RETRIES_PER_SEC` (10/s) so
//! a quiet sidecar can still retry. Counts are kept in one-second slots of atomics: no lock on
//! the path, approximate under races, which a budget can afford.
//!
//! `ResendCount` (OpenTelemetry `http.request.resend_count`) marks what was resent: each request
//! sent again carries its ordinal in its extensions (1 for the first resend), which the CLIENT
//! span of that attempt records, and a response that needed retries carries the number of
//! resends, which the SERVER span records. A request that is not resent gets nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::{Method, Request, Response};
use tower::ServiceExt;

use super::{Clock, SystemClock};
use crate::config::Config;
use crate::error::{kind_of, BoxError, ErrorKind, UpstreamFailure};
use crate::proxy::body::{self, Body};
use crate::proxy::{Direction, RequestCtx};

/// Budget window, in one-second slots.
pub const WINDOW_SECS: u64 = 10;
/// Retries allowed per 100 requests in the window.
pub const RETRY_PERCENT: u64 = 20;
/// Retries always allowed per second of window, whatever the request count.
pub const MIN_RETRIES_PER_SEC: u64 = 10;

/// How many times a request was sent again (`http.request.resend_count`): on a resent request,
/// its ordinal among the resends; on a response, the resends it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResendCount(pub u32);

#[derive(Debug, Default)]
struct Slot {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// The retry budget core.
pub struct Budget {
    clock: Arc<dyn Clock>,
    slots: [Slot; WINDOW_SECS as usize],
}

impl Budget {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            slots: Default::default(),
        }
    }

    /// The slot of the current second, reset if it last held an older second. Seconds are
    /// counted from 1 so a fresh slot (second 0) is never mistaken for a live one.
    fn slot(&self) -> (&Slot, u64) {
        let now = self.clock.now().as_secs() + 1;
        let slot = &self.slots[(now % WINDOW_SECS) as usize];
        let seen = slot.second.load(Ordering::Acquire);
        if seen != now
            && slot
                .second
                .compare_exchange(seen, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Release);
            slot.retries.store(0, Ordering::Release);
        }
        (slot, now)
    }

    /// Count a request.
    pub fn deposit(&self) {
        self.slot().0.requests.fetch_add(1, Ordering::AcqRel);
    }

    /// Spend one retry, if the budget has one.
    pub fn try_withdraw(&self) -> bool {
        let (current, now) = self.slot();
        let (mut requests, mut retries) = (0, 0);
        for s in &self.slots {
            if now.saturating_sub(s.second.load(Ordering::Acquire)) < WINDOW_SECS {
                requests += s.requests.load(Ordering::Acquire);
                retries += s.retries.load(Ordering::Acquire);
            }
        }
        let allowed = (requests * RETRY_PERCENT / 100).max(MIN_RETRIES_PER_SEC * WINDOW_SECS);
        if retries < allowed {
            current.retries.fetch_add(1, Ordering::AcqRel);
            true
        } else {
            false
        }
    }
}

/// Whether a request may be sent again: its body is empty (a streamed body is consumed by
/// the first attempt and cannot be replayed), it is not an upgrade (its connection is handed
/// over once) and not CONNECT. The method does not matter because the only failure retried
/// is a connect failure, after which nothing was sent: CONTRACT.md retries "requests never
/// sent (connect failures)" whatever their method, so an empty POST is retried too, while a
/// POST (or any request) with a body is not.
pub fn replayable<B: http_body::Body>(req: &Request<B>) -> bool {
    (req.body().is_end_stream() || req.body().size_hint().exact() == Some(0))
        && req.method() != Method::CONNECT
        && !RequestCtx::is_upgrade(req)
}

/// An upstream error that gives back the request it failed to send (no connection could be
/// opened), so that a retry needs no copy of it. Its source is the error itself, so anything
/// that classifies errors by walking sources sees through it. The request comes back as the
/// service below handed it to its client (`Forward` set the version, `Host`, `traceparent`
/// and an origin-form URI); `Forward` takes such a request again as it is, rebuilding the
/// URI from `Dest`. A layer placed between this one and `Forward` that changes requests per
/// attempt must allow for that.
pub struct Unsent {
    error: BoxError,
    // `Request<Body>` is not `Sync` (the body is not); errors must be.
    request: std::sync::Mutex<Option<Request<Body>>>,
}

impl Unsent {
    pub fn new(error: impl Into<BoxError>, request: Request<Body>) -> Self {
        Self {
            error: error.into(),
            request: std::sync::Mutex::new(Some(request)),
        }
    }

    /// The error, and the request when `e` is an `Unsent`.
    pub fn take(e: BoxError) -> (BoxError, Option<Request<Body>>) {
        match e.downcast::<Unsent>() {
            Ok(u) => {
                let request = u.request.into_inner().ok().flatten();
                (u.error, request)
            }
            Err(e) => (e, None),
        }
    }
}

impl std::fmt::Debug for Unsent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unsent")
            .field("error", &self.error)
            .finish()
    }
}

impl std::fmt::Display for Unsent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for Unsent {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.error.as_ref())
    }
}

/// Whether an error means the request never left: only connect failures qualify.
pub fn never_sent(err: &BoxError) -> bool {
    kind_of(err.as_ref()) == ErrorKind::UpstreamUnavailable(UpstreamFailure::Connect)
}

#[derive(Clone)]
pub struct RetryLayer {
    max: u32,
    budget: Arc<Budget>,
}

impl RetryLayer {
    pub fn new(cfg: &Config, _direction: Direction) -> Self {
        Self::with_budget(
            cfg.retries,
            Arc::new(Budget::new(Arc::new(SystemClock::default()))),
        )
    }

    pub fn with_budget(max: u32, budget: Arc<Budget>) -> Self {
        Self { max, budget }
    }
}

impl<S> tower::Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    layer: RetryLayer,
}

pin_project_lite::pin_project! {
    /// A call that may be retried. The first attempt is polled in place; only a request that
    /// is actually sent again moves to a boxed loop (rare: connect failures).
    #[project = RetryProj]
    pub enum RetryFuture<F, S> {
        Once { #[pin] inner: F },
        First { #[pin] first: F, ctx: Option<Resend<S>> },
        Again { again: BoxFuture<'static, Result<Response<Body>, BoxError>> },
    }
}

/// What a retry needs: the service, the policy, the head of an HTTP/2 request and when the
/// first attempt started.
pub struct Resend<S> {
    inner: S,
    layer: RetryLayer,
    template: Option<Request<()>>,
    started: std::time::Instant,
}

impl<S> Resend<S> {
    /// The request to send again after `e`, if the policy and the budget allow it, marked as
    /// resend `resends + 1`; `resends` counts those already made.
    fn next(&self, e: BoxError, resends: u32) -> Result<Request<Body>, BoxError> {
        let (e, back) = Unsent::take(e);
        let again = back.or_else(|| self.template.as_ref().map(|t| copy(t, body::empty())));
        match again {
            Some(mut again)
                if resends < self.layer.max
                    && never_sent(&e)
                    && self.layer.budget.try_withdraw() =>
            {
                // tests/tracing_retry.rs keys on this event (its target and `attempt`).
                tracing::debug!(attempt = resends + 1, error = %e, "retrying a request that was never sent");
                // Replaces the mark of an earlier resend (a request handed back keeps its
                // extensions); a copied HTTP/2 head starts without one.
                again.extensions_mut().insert(ResendCount(resends + 1));
                Ok(again)
            }
            _ => Err(e),
        }
    }
}

impl<F, S> Future for RetryFuture<F, S>
where
    F: Future<Output = Result<Response<Body>, BoxError>>,
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        loop {
            let again = match self.as_mut().project() {
                RetryProj::Once { inner } => return inner.poll(cx),
                RetryProj::Again { again } => return again.as_mut().poll(cx),
                RetryProj::First { first, ctx } => {
                    let e = match std::task::ready!(first.poll(cx)) {
                        Ok(resp) => return Poll::Ready(Ok(resp)),
                        Err(e) => e,
                    };
                    let ctx = ctx.take().expect("RetryFuture polled after completion");
                    match ctx.next(e, 0) {
                        Ok(req) => Box::pin(resend(ctx, req)),
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            };
            self.set(RetryFuture::Again { again });
        }
    }
}

/// The attempts after the first, each once the service is ready again.
async fn resend<S>(mut ctx: Resend<S>, mut req: Request<Body>) -> Result<Response<Body>, BoxError>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    let mut attempt = 1u32;
    loop {
        let svc = ctx.inner.ready().await?;
        match boxed_call(svc, req).await {
            Ok(mut resp) => {
                resp.extensions_mut().insert(ResendCount(attempt));
                // The failed attempts were time spent on the upstream, not in the proxy: the
                // overhead metric subtracts all of it.
                resp.extensions_mut()
                    .insert(crate::layers::metrics::UpstreamTiming(
                        ctx.started.elapsed(),
                    ));
                return Ok(resp);
            }
            Err(e) => req = ctx.next(e, attempt)?,
        }
        attempt += 1;
    }
}

impl<S> tower::Service<Request<Body>> for Retry<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = RetryFuture<S::Future, S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if self.layer.max == 0 {
            return RetryFuture::Once {
                inner: self.inner.call(req),
            };
        }
        self.layer.budget.deposit();
        if !replayable(&req) {
            return RetryFuture::Once {
                inner: self.inner.call(req),
            };
        }
        let started = std::time::Instant::now();
        // HTTP/1.1 exchanges hand a request that was never sent back in their error
        // (`Unsent`); an HTTP/2 request may go out over hyper-util's client, which cannot,
        // so its head (the body is empty) is copied for the next attempts.
        let (template, first) = if req.version() == http::Version::HTTP_2 {
            let (parts, body) = req.into_parts();
            let template = Request::from_parts(parts, ());
            let first = self.inner.call(copy(&template, body));
            (Some(template), first)
        } else {
            (None, self.inner.call(req))
        };
        RetryFuture::First {
            first,
            ctx: Some(Resend {
                inner: self.inner.clone(),
                layer: self.layer.clone(),
                template,
                started,
            }),
        }
    }
}

/// Boxed before the async block holds it: rustc cannot prove an async block holding a
/// generic `S::Future` is Send for every lifetime.
fn boxed_call<S>(
    svc: &mut S,
    req: Request<Body>,
) -> BoxFuture<'static, Result<Response<Body>, BoxError>>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    Box::pin(svc.call(req))
}

fn copy(template: &Request<()>, body: Body) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = template.method().clone();
    *req.uri_mut() = template.uri().clone();
    *req.version_mut() = template.version();
    *req.headers_mut() = template.headers().clone();
    *req.extensions_mut() = template.extensions().clone();
    req
}
