//! `--allow-identity`: which verified client identities may call the local service. The
//! identity is the one the TLS handshake established (`ConnMeta`), never a header. Without
//! patterns every identity the CA signed is allowed and the layer only passes through; with
//! patterns, a caller without a matching identity is answered 403 `forbidden` before any
//! other policy sees the request (a refused caller must not use up rate or breaker budget).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{self, Either, Ready};
use http::{Request, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::config::IdentityPattern;
use crate::error::{BoxError, ErrorKind, ProxyError};
use crate::layers::labels::DirectionLabel;
use crate::proxy::body::Body;
use crate::proxy::Direction;

/// The allow-list core: a synchronous decision.
#[derive(Debug)]
pub struct Allow {
    patterns: Vec<IdentityPattern>,
}

impl Allow {
    pub fn new(patterns: Vec<IdentityPattern>) -> Self {
        Self { patterns }
    }

    /// Whether a caller with this (verified) identity may pass.
    pub fn allows(&self, identity: Option<&str>) -> bool {
        self.patterns.is_empty()
            || identity.is_some_and(|id| self.patterns.iter().any(|p| p.matches(id)))
    }
}

#[derive(Clone)]
pub struct AuthzLayer {
    allow: Arc<Allow>,
    denied: Counter,
}

impl AuthzLayer {
    pub fn new(patterns: Vec<IdentityPattern>, direction: Direction, reg: &mut Registry) -> Self {
        let family: Family<DirectionLabel, Counter> = Family::default();
        reg.register(
            "tracseq_proxy_authz_denied",
            "Requests refused because the client identity is not allowed",
            family.clone(),
        );
        let denied = family.get_or_create(&DirectionLabel { direction }).clone();
        Self {
            allow: Arc::new(Allow::new(patterns)),
            denied,
        }
    }
}

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            allow: self.allow.clone(),
            denied: self.denied.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    allow: Arc<Allow>,
    denied: Counter,
}

impl<S> tower::Service<Request<Body>> for Authz<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Either<Ready<Result<Response<Body>, BoxError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let identity = crate::proxy::RequestCtx::meta(&req).and_then(|m| m.identity().cloned());
        if self.allow.allows(identity.as_deref()) {
            Either::Right(self.inner.call(req))
        } else {
            self.denied.inc();
            tracing::debug!(identity = ?identity, "client identity not allowed");
            Either::Left(future::ready(Err(ProxyError::new(ErrorKind::Forbidden)
                .with_detail("client identity not allowed")
                .into())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_prefix_patterns() {
        let p = |s: &str| s.parse::<IdentityPattern>().expect("pattern");
        let a = Allow::new(vec![
            p("spiffe://tracseq.local/orders"),
            p("spiffe://lab.local/*"),
        ]);
        assert!(a.allows(Some("spiffe://tracseq.local/orders")));
        assert!(a.allows(Some("spiffe://lab.local/anything")));
        assert!(!a.allows(Some("spiffe://tracseq.local/orders2")));
        assert!(!a.allows(None));
        assert!(Allow::new(vec![]).allows(None));
    }
}
