//! RED metrics (CONTRACT.md names, labels and buckets) and the outermost layer of each
//! direction's stack. It sits outside `rescue`, so it sees every answer, the proxy's own
//! included, and it settles a request when its response body ends (complete, cut or
//! dropped), which is the OpenTelemetry definition of server duration.

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use super::handles::Handles;

pub use super::labels::*;
use crate::config::RouteTemplate;
use crate::error::ErrorKind;
use crate::proxy::body::{self, Body, BodyEnd, Observed, OnEnd};
use crate::proxy::Direction;

/// CONTRACT.md's duration buckets (seconds).
pub const DURATION_BUCKETS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    7.5, 10.0,
];

/// Buckets of `tracseq_proxy_overhead_seconds`: from 10µs, because the proxy's own time is
/// expected in the tens of microseconds and the request buckets start far above that.
pub const OVERHEAD_BUCKETS: [f64; 16] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0,
];

type DurationHistogram = HistogramWithExemplars<TraceExemplar>;
type HistogramCtor = fn() -> DurationHistogram;

fn duration_histogram() -> DurationHistogram {
    HistogramWithExemplars::new(DURATION_BUCKETS.into_iter())
}

fn overhead_histogram() -> Histogram {
    Histogram::new(OVERHEAD_BUCKETS)
}

/// The HTTP metrics of both directions.
#[derive(Debug)]
pub struct HttpMetrics {
    pub server_duration: Handles<ServerLabels, DurationHistogram, HistogramCtor>,
    pub server_active: Family<ActiveLabels, Gauge>,
    pub client_duration: Handles<ClientLabels, DurationHistogram, HistogramCtor>,
    pub overhead: Family<DirectionLabel, Histogram, fn() -> Histogram>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
}

impl HttpMetrics {
    pub fn register(reg: &mut Registry) -> Arc<Self> {
        let m = Self {
            server_duration: Handles::new(Family::new_with_constructor(
                duration_histogram as HistogramCtor,
            )),
            server_active: Family::default(),
            client_duration: Handles::new(Family::new_with_constructor(
                duration_histogram as HistogramCtor,
            )),
            overhead: Family::new_with_constructor(overhead_histogram as fn() -> Histogram),
            upstream_errors: Family::default(),
        };
        reg.register(
            "http_server_request_duration_seconds",
            "Duration of inbound and outbound HTTP requests served by the proxy, until the response body ended",
            m.server_duration.family(),
        );
        reg.register(
            "http_server_active_requests",
            "HTTP requests in flight in the proxy",
            m.server_active.clone(),
        );
        reg.register(
            "http_client_request_duration_seconds",
            "Duration of requests from the proxy to its upstream or peer, until response headers",
            m.client_duration.family(),
        );
        reg.register(
            "tracseq_proxy_overhead_seconds",
            "Time spent in the proxy itself: time to response headers minus the upstream's time to response headers",
            m.overhead.clone(),
        );
        reg.register(
            "tracseq_proxy_upstream_errors",
            "Failures talking to the upstream or a peer, by kind",
            m.upstream_errors.clone(),
        );
        for direction in [Direction::Inbound, Direction::Outbound] {
            // Expose zero-valued series for the common kinds so alerts on rate() see a series
            // before the first failure happens.
            for kind in ["connect", "timeout", "reset", "tls", "protocol"] {
                let _ = m
                    .upstream_errors
                    .get_or_create(&UpstreamErrorLabels { direction, kind });
            }
            let _ = m.overhead.get_or_create(&DirectionLabel { direction });
        }
        Arc::new(m)
    }

    pub fn upstream_error(&self, direction: Direction, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels { direction, kind })
            .inc();
    }
}

/// What the upstream call leaves on the response for the metrics layer: its time to response
/// headers, so that the proxy's own overhead can be computed.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTiming(pub Duration);

/// The trace context of a request, set by the tracing layer, read for exemplars.
#[derive(Debug, Clone)]
pub struct ExemplarContext(pub Option<TraceExemplar>);

/// The outermost layer: RED metrics and the access log.
#[derive(Clone)]
pub struct MetricsLayer {
    shared: Arc<Shared>,
}

struct Shared {
    metrics: Arc<HttpMetrics>,
    direction: Direction,
    routes: Arc<[RouteTemplate]>,
    access_log: bool,
    /// Handles of this direction's series, looked up once instead of per request (a
    /// `Family` lookup is a lock plus a SipHash of the labels). The in-flight gauge per
    /// method is created on first use, so only methods seen get a series.
    active: [OnceLock<Gauge>; METHODS],
    overhead: Histogram,
}

/// Number of `Method` variants.
const METHODS: usize = Method::Other as usize + 1;

impl Shared {
    fn active(&self, method: Method) -> &Gauge {
        self.active[method as usize].get_or_init(|| {
            self.metrics
                .server_active
                .get_or_create_owned(&ActiveLabels {
                    direction: self.direction,
                    method,
                })
        })
    }
}

impl MetricsLayer {
    pub fn new(
        metrics: Arc<HttpMetrics>,
        direction: Direction,
        routes: Arc<[RouteTemplate]>,
        access_log: bool,
    ) -> Self {
        let overhead = metrics
            .overhead
            .get_or_create_owned(&DirectionLabel { direction });
        Self {
            shared: Arc::new(Shared {
                metrics,
                direction,
                routes,
                access_log,
                active: std::array::from_fn(|_| OnceLock::new()),
                overhead,
            }),
        }
    }
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> tower::Service<Request<Body>> for MetricsService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = MetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let start = Instant::now();
        let shared = self.shared.clone();
        let method = Method::from_http(req.method());
        let protocol = Protocol::from_version(req.version());
        let meta = crate::proxy::RequestCtx::meta(&req);
        let scheme = meta.map_or("http", |c| c.scheme());
        let route = if shared.routes.is_empty() {
            None
        } else {
            let path = req.uri().path();
            shared
                .routes
                .iter()
                .find(|r| r.matches(path))
                .map(|r| r.template)
        };
        shared.active(method).inc();
        let access = shared.access_log.then(|| AccessInfo {
            method: req.method().clone(),
            uri: req.uri().clone(),
            request_id: req
                .headers()
                .get(crate::proxy::headers::X_REQUEST_ID)
                .cloned(),
            client: meta.map(|c| c.client_addr),
        });
        let conn = meta.map(|c| c.state.begin());
        let mut guard = RequestGuard {
            conn,
            shared,
            start,
            labels: ServerLabels {
                direction: Direction::Inbound,
                method,
                status: 0,
                scheme,
                protocol,
                route,
                error_type: None,
            },
            exemplar: None,
            trace: None,
            access,
        };
        guard.labels.direction = guard.shared.direction;
        MetricsFuture {
            inner: self.inner.call(req),
            guard: Some(guard),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct MetricsFuture<F> {
        #[pin]
        inner: F,
        guard: Option<RequestGuard>,
    }
}

impl<F> std::future::Future for MetricsFuture<F>
where
    F: std::future::Future<Output = Result<Response<Body>, std::convert::Infallible>>,
{
    type Output = Result<Response<Body>, std::convert::Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(resp) = std::task::ready!(this.inner.poll(cx));
        let Some(mut guard) = this.guard.take() else {
            return Poll::Ready(Ok(resp));
        };
        let to_headers = guard.start.elapsed();
        let upstream = resp.extensions().get::<UpstreamTiming>().map(|t| t.0);
        // When the upstream failed (refused, timed out) its share of the wait is unknown: a
        // 504 after `--request-timeout` is not the proxy's own time, so it is not observed.
        // A policy's answer (429, 503) never involved the upstream: all of it is overhead.
        let upstream_failed = resp
            .extensions()
            .get::<ErrorKind>()
            .is_some_and(|k| crate::classify::upstream_failure(*k).is_some());
        if !upstream_failed {
            let overhead = to_headers.saturating_sub(upstream.unwrap_or_default());
            guard.shared.overhead.observe(overhead.as_secs_f64());
        }
        let status = resp.status();
        if status == http::StatusCode::SWITCHING_PROTOCOLS {
            if let Some(conn) = &guard.conn {
                conn.mark_upgraded();
            }
        }
        guard.labels.status = status.as_u16();
        guard.labels.error_type = match resp.extensions().get::<ErrorKind>() {
            Some(kind) => Some(ErrorType::Proxy(*kind)),
            None if status.is_server_error() => Some(ErrorType::Status(status.as_u16())),
            None => None,
        };
        guard.exemplar = resp
            .extensions()
            .get::<ExemplarContext>()
            .and_then(|c| c.0.clone());
        if guard.access.is_some() {
            guard.trace = resp.extensions().get::<crate::trace::TraceIds>().copied();
        }
        let (parts, body) = resp.into_parts();
        Poll::Ready(Ok(Response::from_parts(
            parts,
            body::boxed(Observed::new(body, guard)),
        )))
    }
}

struct AccessInfo {
    method: http::Method,
    uri: http::Uri,
    request_id: Option<http::HeaderValue>,
    client: Option<std::net::SocketAddr>,
}

/// Settles one request: the in-flight gauge always, the duration once a status is known.
pub struct RequestGuard {
    /// Keeps the connection's in-flight count (its deadlines read it) until the request settles.
    conn: Option<crate::proxy::conn_io::ActiveGuard>,
    shared: Arc<Shared>,
    start: Instant,
    labels: ServerLabels,
    exemplar: Option<TraceExemplar>,
    /// Set by the trace layer; for the access log's `trace_id`/`span_id`.
    trace: Option<crate::trace::TraceIds>,
    access: Option<AccessInfo>,
}

impl OnEnd for RequestGuard {
    fn on_end(mut self, end: BodyEnd) {
        if end == BodyEnd::Error && self.labels.error_type.is_none() {
            self.labels.error_type = Some(ErrorType::BodyAborted);
        }
        let elapsed = self.start.elapsed();
        self.shared
            .metrics
            .server_duration
            .get_or_create(&self.labels)
            .observe(elapsed.as_secs_f64(), self.exemplar.take(), None);
        if let Some(a) = &self.access {
            use crate::trace::propagation::hex;
            let (trace_id, span_id) = self
                .trace
                .map(|t| (hex(&t.trace_id), hex(&t.span_id)))
                .unwrap_or_default();
            let mut err = String::new();
            if let Some(e) = &self.labels.error_type {
                let _ = e.write(&mut err);
            }
            tracing::info!(
                target: "access",
                direction = self.shared.direction.as_str(),
                method = %a.method,
                path = a.uri.path(),
                status = self.labels.status,
                duration_ms = elapsed.as_secs_f64() * 1e3,
                end = ?end,
                error = %err,
                client = ?a.client,
                request_id = a.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
                trace_id,
                span_id,
                "request"
            );
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // Cancelled before a response existed (client went away): no status to record, but the
        // request is no longer in flight.
        self.shared.active(self.labels.method).dec();
    }
}
