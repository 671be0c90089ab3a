//! The innermost service: sends a request to its `Dest` over pooled connections and streams
//! the answer back. HTTP/2 requests go out as HTTP/2 (prior knowledge to the local app, ALPN to
//! TLS peers) so gRPC trailers survive; HTTP/1 requests go out as HTTP/1.1. Upgrades
//! (WebSocket) are tunnelled byte for byte once both sides switched protocols.

mod route;
mod target;

use foldhash::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::{self, Body, BodyEnd, Observed, OnEnd};
use super::connect::Connector;
use super::pool::{self, H1Pool, H2Pool};
use super::{headers, Direction, RequestCtx};
use crate::error::{BoxError, ProxyError, UpstreamFailure};
use crate::layers::metrics::{ClientLabels, ErrorType, HttpMetrics, Method, UpstreamTiming};
use route::{shared, Failed, UpstreamBody, Via};

/// When a request goes to its destination over HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2Policy {
    /// Only gRPC (which needs HTTP/2 trailers); everything else as HTTP/1.1. For the local
    /// app, which may not speak h2c at all (Envoy's default for clusters is HTTP/1.1 too).
    GrpcOnly,
    /// Whenever the caller spoke HTTP/2: peer sidecars accept both.
    FollowDownstream,
}

/// An expected peer identity, and whether h2 is offered in ALPN.
/// A hyper-util client's expected peer identity (none: the peer's DNS name, or plaintext) and
/// whether it offers h2.
type ClientKey = (Option<Arc<str>>, bool);
/// A client and the TLS generation it was built under.
type Tagged = (u64, Client<Connector, Body>);

#[derive(Clone)]
pub struct Forward {
    inner: Arc<Inner>,
}

struct Inner {
    direction: Direction,
    h2_policy: H2Policy,
    /// Peers over mTLS: ALPN picks the protocol, and the auto client follows it (a
    /// connection that negotiated h2 is shared by all requests, whatever their version).
    alpn: bool,
    /// hyper-util's clients, keyed by expected peer identity (with mTLS, one per identity
    /// from the `--peer` table, so bounded: the client's pool key is only the authority, and
    /// two names for one address that expect different identities must never share a
    /// connection) and whether h2 is offered in ALPN (the caller spoke HTTP/2; HTTP/1
    /// callers to TLS peers are offered only HTTP/1.1). Each is tagged with the connector's
    /// TLS generation it was built under and rebuilt after a reload: dropping the old client
    /// closes its idle connections, requests in flight finish on theirs.
    clients: RwLock<HashMap<ClientKey, Tagged>>,
    /// HTTP/1.1 exchanges (all but HTTP/2 and upgrades) go through our own pools, which
    /// drive each connection in the request's task (`proxy::pool`): to the local app or
    /// plaintext peers, to TLS peers without an expected identity, and one per identity.
    pool_plain: H1Pool,
    pool_tls: H1Pool,
    pools_by_identity: RwLock<HashMap<Arc<str>, H1Pool>>,
    auto_builder: hyper_util::client::legacy::Builder,
    connector: Connector,
    /// h2c (prior knowledge) to the local app and plaintext peers.
    h2: H2Pool,
    metrics: Arc<HttpMetrics>,
    /// A response body that moves no data for this long fails (`--idle-timeout`).
    body_idle_timeout: Duration,
}

/// Default for `Forward::with_body_idle_timeout`: the contract's `--idle-timeout` default.
const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Forward {
    pub fn new(
        direction: Direction,
        h2_policy: H2Policy,
        connector: Connector,
        metrics: Arc<HttpMetrics>,
    ) -> Self {
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(pool::IDLE_TIMEOUT)
            .pool_max_idle_per_host(pool::MAX_IDLE_PER_ADDRESS)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        let alpn = connector.is_tls();
        let auto_builder = b.clone();
        let h2 = H2Pool::new(connector.clone());
        Self {
            inner: Arc::new(Inner {
                direction,
                h2_policy,
                alpn,
                clients: RwLock::new(HashMap::default()),
                pool_plain: H1Pool::new(connector.clone()),
                pool_tls: H1Pool::new(connector.clone().http1_only()),
                pools_by_identity: RwLock::new(HashMap::default()),
                auto_builder,
                connector,
                h2,
                metrics,
                body_idle_timeout: DEFAULT_BODY_IDLE_TIMEOUT,
            }),
        }
    }

    /// Fail a response body that stalls for `d` (`--idle-timeout`).
    pub fn with_body_idle_timeout(mut self, d: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.body_idle_timeout = d;
        }
        self
    }
}

impl tower::Service<Request<Body>> for Forward {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            // Both set by layers above (routing, the timeout): one look-up of the context.
            let ctx = RequestCtx::of(&req);
            let deadline = ctx.and_then(|c| c.deadline);
            let dest = ctx.and_then(|c| c.dest.clone()).ok_or_else(|| {
                ProxyError::upstream(UpstreamFailure::Protocol, "request has no destination")
            })?;
            let upgrade = (req.version() <= Version::HTTP_11
                && RequestCtx::asks_upgrade(ctx, req.headers()))
            .then(|| hyper::upgrade::on(&mut req));
            // A request body the client cuts (it went away, or sent broken framing) makes the
            // upstream exchange fail too; this flag keeps that from counting as the upstream's
            // failure. Only requests with a body pay for it.
            let client_cut = (!http_body::Body::is_end_stream(req.body())).then(|| {
                let flag = Arc::new(AtomicBool::new(false));
                let observer = ClientCut(flag.clone());
                let (parts, b) = std::mem::take(&mut req).into_parts();
                req = Request::from_parts(parts, body::boxed(Observed::new(b, observer)));
                flag
            });
            let client_cut_happened = move |f: &Option<Arc<AtomicBool>>| {
                f.as_ref().is_some_and(|f| f.load(Ordering::Relaxed))
            };
            let method = Method::from_http(req.method());
            let h2_caller = req.version() == Version::HTTP_2;
            let use_h2 = !inner.alpn
                && h2_caller
                && match inner.h2_policy {
                    H2Policy::FollowDownstream => true,
                    H2Policy::GrpcOnly => target::is_grpc(req.headers()),
                };
            let host_first = inner.direction == Direction::Inbound;
            let downstream_authority = target::aim(&mut req, &dest, use_h2, host_first)
                .map_err(|e| ProxyError::new(crate::error::ErrorKind::BadRequest).with_source(e))?;
            let via = if use_h2 {
                Via::H2(&inner.h2)
            } else {
                if h2_caller {
                    target::downgrade_h2_headers(req.headers_mut(), downstream_authority.as_ref());
                }
                *req.version_mut() = Version::HTTP_11;
                inner.route(&dest, h2_caller, upgrade.is_some())
            };
            let span = crate::layers::trace::ClientSpan::start(&mut req, &dest);
            let start = Instant::now();
            let mut unfinished = Unfinished {
                inner: inner.clone(),
                labels: ClientLabels {
                    direction: inner.direction,
                    method,
                    status: None,
                    server_address: dest.label,
                    server_port: dest.port,
                    error_type: None,
                },
                start,
                deadline,
                span: Some(span),
            };
            let result = match via {
                Via::Pool(pool) => match pool.send(req).await {
                    Ok(r) => Ok(r.map(UpstreamBody::from)),
                    Err(e) => Err(Failed::Pool(Box::new(e))),
                },
                // The other two are boxed so that their larger state does not widen the
                // future of every HTTP/1.1 exchange (this whole future is allocated, and
                // moved into place, once per request).
                Via::H2(pool) => match Box::pin(pool.send(&dest.authority, req)).await {
                    Ok(r) => Ok(r.map(UpstreamBody::Shared)),
                    Err(e) => Err(Failed::Pool(Box::new(e))),
                },
                Via::Client(client) => shared(Box::pin(client.request(req)).await),
            };
            let elapsed = start.elapsed();
            let (mut labels, span) = unfinished.finish();
            match result {
                Ok(mut resp) => {
                    let status = resp.status();
                    labels.status = Some(status.as_u16());
                    if status.is_server_error() {
                        labels.error_type = Some(ErrorType::Status(status.as_u16()));
                    }
                    inner
                        .metrics
                        .client_duration
                        .get_or_create(&labels)
                        .observe(elapsed.as_secs_f64(), span.exemplar(), None);
                    span.end_response(status);
                    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
                    if switching {
                        if let Some(down) = upgrade {
                            let up = hyper::upgrade::on(&mut resp);
                            tokio::spawn(super::tunnel::tunnel(down, up));
                        }
                    }
                    headers::strip_hop_by_hop(resp.headers_mut(), switching);
                    // The downstream connection decides its own version (an HTTP/1.0 upstream
                    // must not turn our answer into HTTP/1.0).
                    *resp.version_mut() = Version::default();
                    resp.extensions_mut().insert(UpstreamTiming(elapsed));
                    let cut = BodyCut {
                        metrics: inner.metrics.clone(),
                        direction: inner.direction,
                        client_cut,
                    };
                    let idle = inner.body_idle_timeout;
                    Ok(resp
                        .map(|b| body::boxed(Observed::new(body::IdleTimeout::new(b, idle), cut))))
                }
                Err(err) if client_cut_happened(&client_cut) => {
                    let err: BoxError = match err {
                        Failed::Pool(f) => f.error.into(),
                        Failed::Client(e) => e.into(),
                    };
                    // The client's doing, not the upstream's: no upstream error, no 502.
                    let err = ProxyError::new(crate::error::ErrorKind::BadRequest)
                        .with_detail("the request body was cut by the client")
                        .with_source(err);
                    labels.error_type = Some(ErrorType::Proxy(err.kind));
                    inner
                        .metrics
                        .client_duration
                        .get_or_create(&labels)
                        .observe(elapsed.as_secs_f64(), None, None);
                    Err(err.into())
                }
                Err(err) => {
                    let (failure, err, unsent): (_, BoxError, _) = match err {
                        Failed::Pool(f) => (
                            crate::classify::pool_error(&f.error),
                            f.error.into(),
                            f.unsent,
                        ),
                        Failed::Client(e) => (crate::classify::client_error(&e), e.into(), None),
                    };
                    let err = ProxyError::upstream(failure, err);
                    labels.error_type = Some(ErrorType::Proxy(err.kind));
                    inner
                        .metrics
                        .client_duration
                        .get_or_create(&labels)
                        .observe(elapsed.as_secs_f64(), span.exemplar(), None);
                    span.end_error(err.kind);
                    inner
                        .metrics
                        .upstream_error(inner.direction, failure.as_str());
                    tracing::debug!(direction = inner.direction.as_str(), dest = dest.label, error = %err, "upstream request failed");
                    match unsent {
                        // Never sent: the retry layer may send it again as it is.
                        Some(req) => Err(crate::layers::retry::Unsent::new(err, req).into()),
                        None => Err(err.into()),
                    }
                }
            }
        })
    }
}

/// Counts an upstream response body that failed mid-stream (the upstream reset or closed
/// the connection before the declared end) as an upstream `reset`: the status was already
/// sent, so this counter and the `response-aborted` error type are the only traces of it.
struct BodyCut {
    metrics: Arc<HttpMetrics>,
    direction: Direction,
    /// Set when the client cut its request body first: then the upstream's abort follows
    /// from it and is not counted against the upstream.
    client_cut: Option<Arc<AtomicBool>>,
}

impl OnEnd for BodyCut {
    fn on_end(self, end: BodyEnd) {
        let clients_fault = self
            .client_cut
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed));
        if end == BodyEnd::Error && !clients_fault {
            self.metrics
                .upstream_error(self.direction, UpstreamFailure::Reset.as_str());
        }
    }
}

/// Notes that the downstream request body failed (the client's side of the exchange).
struct ClientCut(Arc<AtomicBool>);

impl OnEnd for ClientCut {
    fn on_end(self, end: BodyEnd) {
        if end == BodyEnd::Error {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// A call in flight. If its future is dropped before the upstream answered (the request
/// timeout fired, or the caller went away) it still lands in the client metrics and its span
/// ends with the right error, so the slowest calls are not missing from the client view.
struct Unfinished {
    inner: Arc<Inner>,
    labels: ClientLabels,
    start: Instant,
    deadline: Option<tokio::time::Instant>,
    span: Option<crate::layers::trace::ClientSpan>,
}

impl Unfinished {
    /// The call completed: hand back what the normal path records.
    fn finish(&mut self) -> (ClientLabels, crate::layers::trace::ClientSpan) {
        let span = self.span.take().expect("finish is called once");
        (self.labels.clone(), span)
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        let Some(span) = self.span.take() else { return };
        // The timeout layer drops us right at its deadline; allow for timer granularity.
        let timed_out = self.deadline.is_some_and(|d| {
            tokio::time::Instant::now() + std::time::Duration::from_millis(2) >= d
        });
        self.labels.error_type = Some(if timed_out {
            ErrorType::Proxy(crate::error::ErrorKind::UpstreamTimeout)
        } else {
            ErrorType::Cancelled
        });
        self.inner
            .metrics
            .client_duration
            .get_or_create(&self.labels)
            .observe(self.start.elapsed().as_secs_f64(), span.exemplar(), None);
        span.end_unfinished(timed_out);
    }
}
