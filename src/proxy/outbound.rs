//! The outbound direction: the local service's calls to other services, through this sidecar.
//! Accepts absolute-form requests (`HTTP_PROXY=http://127.0.0.1:15001`) and origin-form
//! requests whose `Host` names the service. The name is looked up in the `--peer` table;
//! unknown names go to `NAME:--peer-port` (the other service's sidecar). The port a caller
//! wrote is ignored: a service's sidecar is the way in, whatever port the app thought of.
//! Layer order matches `inbound` (request id → metrics → rescue → resolve → policies →
//! timeout → forward).

use foldhash::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use http::header::HOST;
use http::{HeaderValue, Request, Response};
use prometheus_client::registry::Registry;
use tower::ServiceBuilder;

use super::body::Body;
use super::connect::Connector;
use super::stack::{RequestIdLayer, RescueLayer, TimeoutLayer};
use super::upstream::{Forward, H2Policy};
use super::{headers, Dest, Direction, RequestCtx};
use crate::config::{Config, Peer};
use crate::error::{BoxError, ErrorKind, ProxyError};
use crate::layers::metrics::{HttpMetrics, MetricsLayer};
use crate::layers::retry::RetryLayer;
use crate::layers::trace::TraceLayer;
use crate::layers::{Policies, PolicyMetrics};

/// Distinct unknown destination names that get their own metric label; later ones share
/// `_other`, so a misbehaving app cannot grow the metric families without bound.
const MAX_DYNAMIC_NAMES: usize = 256;

pub fn stack(
    cfg: &Config,
    metrics: Arc<HttpMetrics>,
    tracer: Arc<crate::trace::Tracer>,
    policy_metrics: Arc<PolicyMetrics>,
    _registry: &mut Registry,
    tls: Option<Arc<crate::tls::ClientTls>>,
) -> impl tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + Sync
       + 'static {
    let resolver = Resolver::new(&cfg.peers, cfg.peer_port);
    let policies = Policies::new(cfg, Direction::Outbound, policy_metrics);
    ServiceBuilder::new()
        .layer(RequestIdLayer)
        .layer(MetricsLayer::new(
            metrics.clone(),
            Direction::Outbound,
            cfg.routes.clone().into(),
            cfg.access_log,
        ))
        .layer(TraceLayer::new(
            tracer,
            Direction::Outbound,
            cfg.routes.clone().into(),
        ))
        .layer(RescueLayer)
        .layer(ResolveLayer {
            resolver: Arc::new(resolver),
        })
        .layer(policies)
        .layer(TimeoutLayer::new(
            cfg.request_timeout,
            Direction::Outbound,
            metrics.clone(),
        ))
        .layer(RetryLayer::new(cfg, Direction::Outbound))
        .service(
            Forward::new(
                Direction::Outbound,
                H2Policy::FollowDownstream,
                Connector::new(cfg.connect_timeout).with_tls(tls),
                metrics,
            )
            .with_body_idle_timeout(cfg.idle_timeout),
        )
}

/// Name → destination. The static table is built once; unknown names are interned up to
/// `MAX_DYNAMIC_NAMES`.
pub struct Resolver {
    peers: HashMap<String, Dest>,
    peer_port: u16,
    dynamic: RwLock<HashMap<String, &'static str>>,
}

impl Resolver {
    pub fn new(peers: &[Peer], peer_port: u16) -> Self {
        let peers = peers
            .iter()
            .filter_map(|p| {
                let authority = format!("{}:{}", bracket(&p.host), p.port).parse().ok()?;
                let label: &'static str = Box::leak(p.name.clone().into_boxed_str());
                Some((
                    p.name.clone(),
                    Dest {
                        label,
                        authority,
                        port: p.port,
                        // Without `#IDENTITY` the peer must present its service name (what
                        // `certs init` puts in the DNS SAN), not the host it runs on.
                        identity: Some(Arc::from(p.identity.as_deref().unwrap_or(&p.name))),
                    },
                ))
            })
            .collect();
        Self {
            peers,
            peer_port,
            dynamic: RwLock::new(HashMap::default()),
        }
    }

    pub fn resolve(&self, name: &str) -> Result<Dest, BoxError> {
        // `Uri::host` keeps the brackets of an IPv6 literal; `bracket` adds them back.
        let name = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        let name = name.trim_end_matches('.');
        // Host names arrive in lower case nearly always: no copy for them.
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(d) = self.peers.get(name) {
            return Ok(d.clone());
        }
        let authority = format!("{}:{}", bracket(name), self.peer_port)
            .parse()
            .map_err(|e| -> BoxError {
                ProxyError::new(ErrorKind::BadRequest)
                    .with_detail("destination is not a valid host name")
                    .with_source(e)
                    .into()
            })?;
        Ok(Dest {
            label: self.label(name),
            authority,
            port: self.peer_port,
            identity: None,
        })
    }

    fn label(&self, name: &str) -> &'static str {
        if let Some(l) = self.dynamic.read().ok().and_then(|m| m.get(name).copied()) {
            return l;
        }
        let Ok(mut map) = self.dynamic.write() else {
            return "_other";
        };
        if let Some(l) = map.get(name) {
            return l;
        }
        if map.len() >= MAX_DYNAMIC_NAMES {
            return "_other";
        }
        let l: &'static str = Box::leak(name.to_string().into_boxed_str());
        map.insert(name.to_string(), l);
        l
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[derive(Clone)]
struct ResolveLayer {
    resolver: Arc<Resolver>,
}

impl<S> tower::Layer<S> for ResolveLayer {
    type Service = Resolve<S>;
    fn layer(&self, inner: S) -> Resolve<S> {
        Resolve {
            inner,
            resolver: self.resolver.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Resolve<S> {
    inner: S,
    resolver: Arc<Resolver>,
}

/// The destination name of an outbound request: the absolute-form URI's host, else `Host`.
fn target_host(req: &Request<Body>) -> Option<String> {
    if let Some(h) = req.uri().host() {
        return Some(h.to_string());
    }
    let host = req.headers().get(HOST)?.to_str().ok()?;
    let auth: http::uri::Authority = host.parse().ok()?;
    Some(auth.host().to_string())
}

impl<S> tower::Service<Request<Body>> for Resolve<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = futures_util::future::Either<
        S::Future,
        futures_util::future::Ready<Result<Response<Body>, BoxError>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        use futures_util::future::{ready, Either};
        if req.method() == http::Method::CONNECT {
            // An app with HTTPS_PROXY set would tunnel TLS through us; the sidecar is the one
            // that adds TLS, so refuse clearly instead of forwarding a CONNECT to a peer.
            return Either::Right(ready(Err(ProxyError::new(ErrorKind::BadRequest)
                .with_detail("CONNECT is not supported: call http:// URLs, the sidecar adds mTLS")
                .into())));
        }
        let Some(host) = target_host(&req) else {
            return Either::Right(ready(Err(ProxyError::new(ErrorKind::BadRequest)
                .with_detail("no destination: send an absolute-form URI or a Host header")
                .into())));
        };
        let dest = match self.resolver.resolve(&host) {
            Ok(d) => d,
            Err(e) => return Either::Right(ready(Err(e))),
        };
        let upgrade = RequestCtx::is_upgrade(&req);
        let h = req.headers_mut();
        headers::strip_hop_by_hop(h, upgrade);
        if req.version() < http::Version::HTTP_2 && !req.headers().contains_key(HOST) {
            if let Ok(v) = HeaderValue::from_str(&host) {
                req.headers_mut().insert(HOST, v);
            }
        }
        RequestCtx::of_mut(&mut req).dest = Some(dest);
        Either::Left(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_table_then_default_port() {
        let peers = vec!["orders=10.1.2.3:9443#spiffe://t/orders"
            .parse::<Peer>()
            .expect("peer")];
        let r = Resolver::new(&peers, 8443);
        let d = r.resolve("Orders").expect("known");
        assert_eq!(d.authority.as_str(), "10.1.2.3:9443");
        assert_eq!(d.identity.as_deref(), Some("spiffe://t/orders"));
        let u = r.resolve("samples").expect("unknown");
        assert_eq!(u.authority.as_str(), "samples:8443");
        assert_eq!(u.label, "samples");
        let v6 = r
            .resolve("[::1]")
            .expect("IPv6 literal as Uri::host gives it");
        assert_eq!(v6.authority.as_str(), "[::1]:8443");
        assert_eq!(r.resolve("samples.").expect("FQDN dot").label, "samples");
        assert!(r.resolve("bad name").is_err());
    }

    #[test]
    fn dynamic_labels_are_bounded() {
        let r = Resolver::new(&[], 8443);
        for i in 0..MAX_DYNAMIC_NAMES + 10 {
            let _ = r.resolve(&format!("svc{i}")).expect("valid");
        }
        assert_eq!(r.resolve("another").expect("valid").label, "_other");
        assert_eq!(r.resolve("svc1").expect("valid").label, "svc1");
    }
}
