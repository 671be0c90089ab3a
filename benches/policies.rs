//! Per-layer cost of the resilience policies: each layer, and all of them together, around a
//! trivial inner service (no network, no runtime: every future is ready on first poll), minus
//! the bare inner service = added nanoseconds per request. Also the time an open circuit takes
//! to answer (error → `rescue` response), which must stay far below 1 ms.
//!
//! Run: `cargo bench --bench policies`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::future::{ready, Ready};
use futures_util::FutureExt;
use http::{Request, Response};
use prometheus_client::registry::Registry;
use tower::{Layer, Service, ServiceExt};
use tracseq_proxy::config::{Config, Rate, RateLimitKey};
use tracseq_proxy::error::{rescue, BoxError};
use tracseq_proxy::layers::circuit_breaker::{BreakerLayer, Breakers};
use tracseq_proxy::layers::load_shed::{LoadShed, LoadShedLayer};
use tracseq_proxy::layers::rate_limit::{RateLimitLayer, RateLimiter};
use tracseq_proxy::layers::retry::{Budget, RetryLayer};
use tracseq_proxy::layers::{Policies, PolicyMetrics, SystemClock};
use tracseq_proxy::proxy::body::{self, Body};
use tracseq_proxy::proxy::{Dest, Direction, RequestCtx};

/// The inner service: answers 200 at once.
#[derive(Clone, Copy)]
struct Ok200;

impl Service<Request<Body>> for Ok200 {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Ready<Result<Response<Body>, BoxError>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<Body>) -> Self::Future {
        ready(Ok(Response::new(body::empty())))
    }
}

/// A 5xx-answering inner service, to open a circuit.
#[derive(Clone, Copy)]
struct Fail500;

impl Service<Request<Body>> for Fail500 {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Ready<Result<Response<Body>, BoxError>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<Body>) -> Self::Future {
        let mut r = Response::new(body::empty());
        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        ready(Ok(r))
    }
}

fn request() -> Request<Body> {
    let mut req = Request::get("/api/samples/1")
        .body(body::empty())
        .expect("request");
    RequestCtx::of_mut(&mut req).dest = Some(Dest {
        label: "app",
        authority: http::uri::Authority::from_static("127.0.0.1:8080"),
        port: 8080,
        identity: None,
    });
    req
}

/// One request as hyper drives it: clone the stack, call, take the response, drop its body.
fn run<S>(svc: &S) -> u16
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone,
{
    let resp = svc
        .clone()
        .oneshot(request())
        .now_or_never()
        .expect("every future here is ready at once");
    match resp {
        Ok(r) => r.status().as_u16(),
        Err(e) => rescue(e.as_ref()).status().as_u16(),
    }
}

fn all_enabled() -> Config {
    let mut cfg = Config::for_upstream(([127, 0, 0, 1], 8080).into());
    let huge = Rate {
        count: u32::MAX,
        per: Duration::from_secs(1),
    };
    cfg.rate_limit = Some(huge);
    cfg.rate_limit_per_client = Some(huge);
    cfg.rate_limit_key = RateLimitKey::Ip;
    cfg.max_concurrent_requests = usize::MAX / 2;
    cfg.breaker_failures = 5;
    cfg.retries = 1;
    cfg
}

fn bench(c: &mut Criterion) {
    let cfg = all_enabled();
    let mut reg = Registry::default();
    let metrics = PolicyMetrics::register(&mut reg);
    let dir = Direction::Inbound;
    let mut g = c.benchmark_group("policies");

    g.bench_function("baseline", |b| b.iter(|| run(&Ok200)));

    let all = tower::ServiceBuilder::new()
        .layer(Policies::new(
            &cfg,
            dir,
            PolicyMetrics::register(&mut Registry::default()),
        ))
        .layer(RetryLayer::new(&cfg, dir))
        .service(Ok200);
    g.bench_function("all_enabled", |b| b.iter(|| run(&all)));

    let mut off = cfg.clone();
    off.breaker_failures = 0;
    off.retries = 0;
    off.rate_limit = None;
    off.rate_limit_per_client = None;
    let disabled = tower::ServiceBuilder::new()
        .layer(Policies::new(
            &off,
            dir,
            PolicyMetrics::register(&mut Registry::default()),
        ))
        .layer(RetryLayer::new(&off, dir))
        .service(Ok200);
    g.bench_function("all_disabled", |b| b.iter(|| run(&disabled)));

    let mut global_only = cfg.clone();
    global_only.rate_limit_per_client = None;
    let rl = RateLimitLayer::new(
        RateLimiter::from_config(&global_only).map(Arc::new),
        dir,
        metrics.clone(),
    )
    .layer(Ok200);
    g.bench_function("rate_limit_global", |b| b.iter(|| run(&rl)));

    let rl_client = RateLimitLayer::new(
        RateLimiter::from_config(&cfg).map(Arc::new),
        dir,
        metrics.clone(),
    )
    .layer(Ok200);
    g.bench_function("rate_limit_global_and_client", |b| {
        b.iter(|| run(&rl_client))
    });

    let shed = LoadShedLayer::new(
        Arc::new(LoadShed::new(usize::MAX / 2)),
        dir,
        metrics.clone(),
    )
    .layer(Ok200);
    g.bench_function("load_shed", |b| b.iter(|| run(&shed)));

    let breakers = |m: &Arc<PolicyMetrics>| {
        Arc::new(Breakers::new(
            5,
            (Duration::from_secs(60), Duration::from_secs(60)),
            dir,
            m.clone(),
            Arc::new(SystemClock::default()),
        ))
    };
    let breaker = BreakerLayer::new(Some(breakers(&metrics))).layer(Ok200);
    g.bench_function("circuit_breaker_closed", |b| b.iter(|| run(&breaker)));

    let retry = RetryLayer::with_budget(1, Arc::new(Budget::new(Arc::new(SystemClock::default()))))
        .layer(Ok200);
    g.bench_function("retry", |b| b.iter(|| run(&retry)));

    // An open circuit: its refusal, turned into the 503 response, without the upstream.
    let open = BreakerLayer::new(Some(breakers(&metrics))).layer(Fail500);
    for _ in 0..5 {
        run(&open);
    }
    assert_eq!(run(&open), 503, "the circuit is open");
    g.bench_function("circuit_open_answer", |b| b.iter(|| run(&open)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
