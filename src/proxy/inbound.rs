//! The inbound direction: requests from other sidecars (or any client) to the local service.
//! Layer order, outermost first, and why:
//! 1. request id    — the id must be on every answer, the proxy's own included;
//! 2. metrics       — RED metrics see every answer, including those `rescue` makes;
//!    trace         — just inside: SERVER span, ids on the response for exemplars and logs;
//! 3. rescue        — below this point failures are errors; above, they are responses;
//! 4. prepare       — header rules (hop-by-hop, XFCC, x-forwarded-*) and the destination;
//! 5. policies      — authz → rate limit → load shed → circuit breaker (cheapest refusals
//!    first, and a refused request never touches the breaker's statistics);
//! 6. timeout       — bounds the wait for response headers;
//! 7. forward       — the pooled client to `--upstream`.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use prometheus_client::registry::Registry;
use tower::ServiceBuilder;

use super::body::Body;
use super::connect::Connector;
use super::stack::{RequestIdLayer, RescueLayer, TimeoutLayer};
use super::upstream::{Forward, H2Policy};
use super::{headers, Dest, Direction, RequestCtx};
use crate::config::Config;
use crate::error::BoxError;
use crate::layers::authz::AuthzLayer;
use crate::layers::metrics::{HttpMetrics, MetricsLayer};
use crate::layers::retry::RetryLayer;
use crate::layers::trace::TraceLayer;
use crate::layers::{Policies, PolicyMetrics};

/// Build the inbound stack for `cfg.upstream`.
pub fn stack(
    cfg: &Config,
    metrics: Arc<HttpMetrics>,
    tracer: Arc<crate::trace::Tracer>,
    policy_metrics: Arc<PolicyMetrics>,
    registry: &mut Registry,
) -> impl tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + Sync
       + 'static {
    let upstream = cfg
        .upstream
        .clone()
        .expect("the inbound listener exists only with --upstream");
    // `server_address` is the host alone (OpenTelemetry), the port has its own label.
    let label: &'static str = Box::leak(upstream.host().to_string().into_boxed_str());
    let dest = Dest {
        label,
        port: upstream.port_u16().unwrap_or(80),
        authority: upstream,
        identity: None,
    };
    let policies = Policies::new(cfg, Direction::Inbound, policy_metrics);
    let authz = AuthzLayer::new(cfg.tls.allow_identity.clone(), Direction::Inbound, registry);
    ServiceBuilder::new()
        .layer(RequestIdLayer)
        .layer(MetricsLayer::new(
            metrics.clone(),
            Direction::Inbound,
            cfg.routes.clone().into(),
            cfg.access_log,
        ))
        .layer(TraceLayer::new(
            tracer,
            Direction::Inbound,
            cfg.routes.clone().into(),
        ))
        .layer(RescueLayer)
        .layer(PrepareLayer {
            dest: Arc::new(dest),
        })
        .layer(authz)
        .layer(policies)
        .layer(TimeoutLayer::new(
            cfg.request_timeout,
            Direction::Inbound,
            metrics.clone(),
        ))
        .layer(RetryLayer::new(cfg, Direction::Inbound))
        .service(
            Forward::new(
                Direction::Inbound,
                H2Policy::GrpcOnly,
                Connector::new(cfg.connect_timeout),
                metrics,
            )
            .with_body_idle_timeout(cfg.idle_timeout),
        )
}

#[derive(Clone)]
struct PrepareLayer {
    dest: Arc<Dest>,
}

impl<S> tower::Layer<S> for PrepareLayer {
    type Service = Prepare<S>;
    fn layer(&self, inner: S) -> Prepare<S> {
        Prepare {
            inner,
            dest: self.dest.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Prepare<S> {
    inner: S,
    dest: Arc<Dest>,
}

impl<S> tower::Service<Request<Body>> for Prepare<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> S::Future {
        // One look-up of the context: the destination goes in, the connection comes out.
        let ctx = RequestCtx::of_mut(&mut req);
        ctx.dest = Some((*self.dest).clone());
        let meta = ctx.meta.clone();
        let upgrade = !ctx.no_upgrade && headers::is_upgrade(req.headers());
        let h = req.headers_mut();
        headers::strip_hop_by_hop(h, upgrade);
        // Never let a caller speak for a certificate it did not present: the field is ours
        // (`insert` replaces every line of it) or gone.
        match meta.as_ref().and_then(|m| m.tls.as_ref()?.xfcc.clone()) {
            Some(xfcc) => {
                h.insert(headers::X_FORWARDED_CLIENT_CERT, xfcc);
            }
            None => {
                h.remove(headers::X_FORWARDED_CLIENT_CERT);
            }
        }
        if let Some(meta) = &meta {
            headers::add_forwarded(h, &meta.client_ip, meta.scheme());
        }
        self.inner.call(req)
    }
}
