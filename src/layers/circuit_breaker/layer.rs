//! The circuit breaker as a tower layer: looks up the request's circuit (by `Dest`), refuses
//! with `circuit-open` while it is open, and settles the permit with the response's outcome.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};

use super::{Breakers, CircuitBreaker, Permit};
use crate::classify;
use crate::error::{kind_of, BoxError, ErrorKind, ProxyError};
use crate::proxy::body::Body;

#[derive(Clone)]
pub struct BreakerLayer {
    breakers: Option<Arc<Breakers>>,
}

impl BreakerLayer {
    pub fn new(breakers: Option<Arc<Breakers>>) -> Self {
        Self { breakers }
    }
}

impl<S> tower::Layer<S> for BreakerLayer {
    type Service = Breaker<S>;
    fn layer(&self, inner: S) -> Breaker<S> {
        Breaker {
            inner,
            breakers: self.breakers.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Breaker<S> {
    inner: S,
    breakers: Option<Arc<Breakers>>,
}

/// Settles a permit exactly once: with the outcome, or as released if dropped first.
pub struct Settle {
    breaker: Arc<CircuitBreaker>,
    permit: Option<Permit>,
}

impl Drop for Settle {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.breaker.release(p);
        }
    }
}

pin_project_lite::pin_project! {
    /// The call through a breaker: passed straight through (no breakers configured), refused
    /// (circuit open), or tracked until its response headers settle the permit.
    #[project = BreakerProj]
    pub enum BreakerFuture<F> {
        Pass { #[pin] inner: F },
        Tracked { #[pin] inner: F, settle: Settle },
        Open { answer: std::future::Ready<Result<Response<Body>, BoxError>> },
    }
}

impl<F> Future for BreakerFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            BreakerProj::Pass { inner } => inner.poll(cx),
            BreakerProj::Tracked { inner, settle } => {
                let res = std::task::ready!(inner.poll(cx));
                let outcome = match &res {
                    Ok(resp) => Some(classify::response(resp.status())),
                    Err(e) => classify::error(kind_of(e.as_ref())),
                };
                if let (Some(outcome), Some(permit)) = (outcome, settle.permit.take()) {
                    settle.breaker.record(permit, outcome);
                }
                Poll::Ready(res)
            }
            BreakerProj::Open { answer } => Pin::new(answer).poll(cx),
        }
    }
}

impl<S> tower::Service<Request<Body>> for Breaker<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BreakerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(breakers) = &self.breakers else {
            return BreakerFuture::Pass {
                inner: self.inner.call(req),
            };
        };
        let breaker = match crate::proxy::RequestCtx::dest(&req) {
            Some(d) => breakers.get(d.authority.as_str(), d.label),
            None => breakers.get("_other", "_other"),
        };
        let permit = match breaker.acquire() {
            Ok(p) => p,
            Err(wait) => {
                return BreakerFuture::Open {
                    answer: std::future::ready(Err(ProxyError::new(ErrorKind::CircuitOpen)
                        .with_detail("the upstream is failing; not sent")
                        .with_retry_after(wait)
                        .into())),
                }
            }
        };
        BreakerFuture::Tracked {
            inner: self.inner.call(req),
            settle: Settle {
                breaker,
                permit: Some(permit),
            },
        }
    }
}
