//! Load shedding: beyond `--max-concurrent-requests` in flight (per direction) a request is
//! answered 503 `overloaded` at once, with `Retry-After`. No queue: a queue in front of an
//! overloaded service only adds latency and memory. A request counts as in flight from the
//! moment it enters until its response body ends (streamed downloads hold capacity too), or
//! until it is abandoned; a drop guard settles the count in every case.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;

use super::labels::DirectionLabel;
use super::PolicyMetrics;
use crate::error::{BoxError, ErrorKind, ProxyError};
use crate::proxy::body::{Body, BodyEnd, Observed, OnEnd};
use crate::proxy::Direction;

/// What a shed request is told: load changes quickly, so come back soon.
pub const SHED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The in-flight counter.
#[derive(Debug)]
pub struct LoadShed {
    max: usize,
    in_flight: Arc<AtomicUsize>,
}

/// Holds one unit of capacity until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl OnEnd for InFlight {
    fn on_end(self, _end: BodyEnd) {}
}

impl LoadShed {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            in_flight: Arc::default(),
        }
    }

    /// A unit of capacity, or `None` when `max` are already in flight.
    pub fn try_acquire(&self) -> Option<InFlight> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(self.in_flight.clone());
        (before < self.max).then_some(guard)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
pub struct LoadShedLayer {
    shed: Arc<LoadShed>,
    counter: Counter,
}

impl LoadShedLayer {
    pub fn new(shed: Arc<LoadShed>, direction: Direction, metrics: Arc<PolicyMetrics>) -> Self {
        let counter = metrics
            .load_shed
            .get_or_create(&DirectionLabel { direction })
            .clone();
        Self { shed, counter }
    }
}

impl<S> tower::Layer<S> for LoadShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    layer: LoadShedLayer,
}

pin_project_lite::pin_project! {
    /// An admitted call holds its in-flight slot until its response body ends (the guard
    /// moves into the body), or until the call fails or is abandoned; a refused one answers
    /// `overloaded`.
    #[project = ShedProj]
    pub enum ShedFuture<F> {
        Admitted { #[pin] inner: F, guard: Option<InFlight> },
        Refused { answer: std::future::Ready<Result<Response<Body>, BoxError>> },
    }
}

impl<F> Future for ShedFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            ShedProj::Admitted { inner, guard } => {
                let resp = std::task::ready!(inner.poll(cx))?;
                Poll::Ready(Ok(match guard.take() {
                    Some(guard) => resp.map(|b| Observed::new(b, guard).boxed_unsync()),
                    None => resp,
                }))
            }
            ShedProj::Refused { answer } => Pin::new(answer).poll(cx),
        }
    }
}

impl<S> tower::Service<Request<Body>> for Shed<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ShedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(guard) = self.layer.shed.try_acquire() else {
            self.layer.counter.inc();
            return ShedFuture::Refused {
                answer: std::future::ready(Err(ProxyError::new(ErrorKind::Overloaded)
                    .with_detail("too many requests in flight")
                    .with_retry_after(SHED_RETRY_AFTER)
                    .into())),
            };
        };
        ShedFuture::Admitted {
            inner: self.inner.call(req),
            guard: Some(guard),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_max_and_releases_on_drop() {
        let shed = LoadShed::new(2);
        let a = shed.try_acquire().expect("first");
        let b = shed.try_acquire().expect("second");
        assert!(shed.try_acquire().is_none());
        assert_eq!(shed.in_flight(), 2);
        drop(a);
        let c = shed.try_acquire().expect("after a release");
        drop((b, c));
        assert_eq!(shed.in_flight(), 0);
    }
}
