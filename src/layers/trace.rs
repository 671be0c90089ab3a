//! Distributed tracing of each request: a SERVER span for the request the listener got and a
//! CLIENT span for the call to the upstream or peer (`ClientSpan`, opened by `Forward`), with
//! OpenTelemetry HTTP semantic-convention names and attributes. The layer sits just inside the
//! metrics layer, so it sees every answer (the proxy's own included) and can leave the ids on
//! the response for exemplars (`ExemplarContext`) and the access log (`TraceIds`).
//!
//! Propagation: a valid W3C `traceparent` (or B3 when accepted) is continued; an invalid one
//! starts a new trace and its `tracestate` is dropped; otherwise `tracestate` passes unchanged.
//! `Forward` writes the outgoing `traceparent` naming the CLIENT span. With export off the
//! layer does nothing at all and trace headers pass through untouched.
//!
//! Cost: unsampled requests get two random ids, one extension and one header; attributes,
//! strings and the body wrapper that ends the SERVER span are only paid for sampled requests.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;

use super::metrics::{ExemplarContext, Method, Protocol};
use super::retry::ResendCount;
use crate::config::RouteTemplate;
use crate::error::ErrorKind;
use crate::proxy::body::{self, Body, BodyEnd, Observed, OnEnd};
use crate::proxy::Direction;
use crate::trace::propagation::{self, Extracted};
use crate::trace::{ServerContext, SpanRecord, TraceIds, Tracer};

pub use crate::trace::client::ClientSpan;

#[derive(Clone)]
pub struct TraceLayer {
    shared: Arc<Shared>,
}

struct Shared {
    tracer: Arc<Tracer>,
    direction: Direction,
    routes: Arc<[RouteTemplate]>,
}

impl TraceLayer {
    pub fn new(tracer: Arc<Tracer>, direction: Direction, routes: Arc<[RouteTemplate]>) -> Self {
        Self {
            shared: Arc::new(Shared {
                tracer,
                direction,
                routes,
            }),
        }
    }
}

impl<S> tower::Layer<S> for TraceLayer {
    type Service = TraceService<S>;
    fn layer(&self, inner: S) -> TraceService<S> {
        TraceService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct TraceService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// The ids of the SERVER span from the request headers: continue the caller's trace when
/// they are valid, start a new one otherwise.
fn server_ids(tracer: &Tracer, headers: &mut http::HeaderMap) -> (TraceIds, Option<[u8; 8]>) {
    let span_id = Tracer::new_span_id();
    let root = |sampled: Option<bool>| {
        let trace_id = Tracer::new_trace_id();
        let sampled = sampled.unwrap_or_else(|| tracer.sample_root(&trace_id));
        (
            TraceIds {
                trace_id,
                span_id,
                sampled,
            },
            None,
        )
    };
    let extracted = propagation::extract(headers, tracer.accept_b3());
    if !matches!(extracted, Extracted::W3c(_)) {
        // `tracestate` belongs to a valid `traceparent` only: with none (or a B3 parent) it
        // describes no trace we continue, so it does not travel on.
        headers.remove(propagation::TRACESTATE);
    }
    match extracted {
        Extracted::W3c(p) | Extracted::B3(p) => {
            if tracer.accept_b3() {
                propagation::remove_b3(headers);
            }
            let sampled = p.sampled.unwrap_or_else(|| tracer.sample_root(&p.trace_id));
            let ids = TraceIds {
                trace_id: p.trace_id,
                span_id,
                sampled,
            };
            (ids, Some(p.span_id))
        }
        Extracted::B3Decision(d) => {
            propagation::remove_b3(headers);
            root(Some(d))
        }
        Extracted::Invalid => {
            // The spec: a vendor that cannot parse traceparent must not use tracestate.
            headers.remove(propagation::TRACESTATE);
            if tracer.accept_b3() {
                propagation::remove_b3(headers);
            }
            root(None)
        }
        Extracted::None => root(None),
    }
}

impl<S> TraceService<S> {
    fn server_span(
        &self,
        req: &Request<Body>,
        ids: TraceIds,
        parent: Option<[u8; 8]>,
    ) -> SpanRecord {
        let method = Method::from_http(req.method());
        let route = (!self.shared.routes.is_empty())
            .then(|| {
                let path = req.uri().path();
                self.shared.routes.iter().find(|r| r.matches(path))
            })
            .flatten()
            .map(|r| r.template);
        let meta = crate::proxy::RequestCtx::meta(req);
        let scheme = meta.map_or("http", |m| m.scheme());
        let mut attrs = Vec::with_capacity(14);
        attrs.push(KeyValue::new("http.request.method", method.as_str()));
        attrs.push(KeyValue::new("url.path", req.uri().path().to_string()));
        attrs.push(KeyValue::new("url.scheme", scheme));
        attrs.push(KeyValue::new(
            "network.protocol.version",
            Protocol::from_version(req.version()).as_str(),
        ));
        attrs.push(KeyValue::new(
            "tracseq.direction",
            self.shared.direction.as_str(),
        ));
        if let Some(a) = authority(req) {
            attrs.push(KeyValue::new("server.address", a.host().to_string()));
            let default = if scheme == "https" { 443 } else { 80 };
            attrs.push(KeyValue::new(
                "server.port",
                i64::from(a.port_u16().unwrap_or(default)),
            ));
        }
        if let Some(m) = meta {
            attrs.push(KeyValue::new(
                "client.address",
                m.client_addr.ip().to_string(),
            ));
            attrs.push(KeyValue::new(
                "client.port",
                i64::from(m.client_addr.port()),
            ));
            if let Some(id) = m.identity() {
                attrs.push(KeyValue::new("tracseq.peer.identity", id.to_string()));
            }
        }
        if let Some(r) = route {
            attrs.push(KeyValue::new("http.route", r));
        }
        let name = span_name(method, route);
        self.shared.tracer.start(
            SpanKind::Server,
            name,
            ids,
            parent.map(|p| (p, true)),
            attrs,
        )
    }
}

fn authority(req: &Request<Body>) -> Option<http::uri::Authority> {
    if let Some(a) = req.uri().authority() {
        return Some(a.clone());
    }
    req.headers()
        .get(http::header::HOST)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// `{method} {http.route}`, or `{method}` alone; `HTTP` for methods outside the known set.
pub(crate) fn span_name(method: Method, route: Option<&'static str>) -> Cow<'static, str> {
    let m = match method {
        Method::Other => "HTTP",
        m => m.as_str(),
    };
    match route {
        Some(r) => Cow::Owned(format!("{m} {r}")),
        None => Cow::Borrowed(m),
    }
}

impl<S> tower::Service<Request<Body>> for TraceService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        if !self.shared.tracer.enabled() {
            return TraceFuture {
                inner: self.inner.call(req),
                state: None,
                log_span: tracing::Span::none(),
            };
        }
        let (ids, parent) = server_ids(&self.shared.tracer, req.headers_mut());
        let span = ids.sampled.then(|| self.server_span(&req, ids, parent));
        crate::proxy::RequestCtx::of_mut(&mut req).server = Some(ServerContext {
            tracer: self.shared.tracer.clone(),
            ids,
        });
        // Log correlation inside the request (debug level, so the default costs nothing).
        let log_span = tracing::debug_span!(
            "request",
            trace_id = %propagation::hex(&ids.trace_id),
            span_id = %propagation::hex(&ids.span_id),
        );
        TraceFuture {
            inner: self.inner.call(req),
            state: Some((ids, span)),
            log_span,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct TraceFuture<F> {
        #[pin]
        inner: F,
        state: Option<(TraceIds, Option<SpanRecord>)>,
        log_span: tracing::Span,
    }
}

impl<F> std::future::Future for TraceFuture<F>
where
    F: std::future::Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _enter = this.log_span.enter();
        let Ok(mut resp) = std::task::ready!(this.inner.poll(cx));
        let Some((ids, span)) = this.state.take() else {
            return Poll::Ready(Ok(resp));
        };
        resp.extensions_mut().insert(ids);
        let Some(mut span) = span else {
            return Poll::Ready(Ok(resp));
        };
        resp.extensions_mut()
            .insert(ExemplarContext(Some(ids.exemplar())));
        let status = resp.status();
        span.set(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        let error_type = match resp.extensions().get::<ErrorKind>() {
            Some(kind) => Some(Cow::Borrowed(kind.as_str())),
            None if status.is_server_error() => Some(Cow::Owned(status.as_str().to_string())),
            None => None,
        };
        if let Some(e) = error_type {
            span.set(KeyValue::new("error.type", e));
        }
        // Semconv: on SERVER spans only 5xx is an error (4xx is the caller's problem).
        if status.is_server_error() {
            span.error();
        }
        // Semconv defines it for CLIENT spans (each resent attempt has it); on the SERVER span
        // it sums up how many resends this answer took.
        if let Some(n) = resp.extensions().get::<ResendCount>() {
            span.set(KeyValue::new("http.request.resend_count", i64::from(n.0)));
        }
        let (parts, body) = resp.into_parts();
        Poll::Ready(Ok(Response::from_parts(
            parts,
            body::boxed(Observed::new(body, EndServerSpan(span))),
        )))
    }
}

/// Ends the SERVER span when the response body ends (the OpenTelemetry server duration).
struct EndServerSpan(SpanRecord);

impl OnEnd for EndServerSpan {
    fn on_end(self, end: BodyEnd) {
        let mut span = self.0;
        if end == BodyEnd::Error && !span.has("error.type") {
            span.set(KeyValue::new("error.type", "response-aborted"));
            span.error();
        }
        span.end();
    }
}
