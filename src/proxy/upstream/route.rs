//! Which client carries a request: our HTTP/1.1 pools (plain, TLS, one per expected peer
//! identity), our h2c pool, or hyper-util's client (ALPN to TLS peers, upgrades), and the
//! body and error types that hide the difference from `Forward`.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Response;
use hyper_util::client::legacy::Client;

use super::Inner;
use crate::error::BoxError;
use crate::proxy::body::Body;
use crate::proxy::connect::Connector;
use crate::proxy::pool::{Failure, H1Pool, H2Pool};
use crate::proxy::Dest;

/// How one request reaches its upstream.
pub(super) enum Via<'a> {
    Pool(H1Pool),
    /// h2c to the address in `Dest`; the request's URI keeps the caller's authority.
    H2(&'a H2Pool),
    Client(Box<Client<Connector, Body>>),
}

/// A response body from either kind of client.
pub(super) enum UpstreamBody {
    Pooled(super::pool::PooledBody),
    Raw(super::pool::RawBody),
    Shared(hyper::body::Incoming),
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Pooled(b) => std::pin::Pin::new(b).poll_frame(cx),
            Self::Raw(b) => std::pin::Pin::new(b).poll_frame(cx),
            Self::Shared(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Pooled(b) => b.is_end_stream(),
            Self::Raw(b) => b.is_end_stream(),
            Self::Shared(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Pooled(b) => b.size_hint(),
            Self::Raw(b) => b.size_hint(),
            Self::Shared(b) => b.size_hint(),
        }
    }
}

impl From<super::pool::PoolBody> for UpstreamBody {
    fn from(b: super::pool::PoolBody) -> Self {
        match b {
            super::pool::PoolBody::Hyper(b) => Self::Pooled(b),
            super::pool::PoolBody::Raw(b) => Self::Raw(b),
        }
    }
}

pub(super) fn shared(
    r: Result<Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>,
) -> Result<Response<UpstreamBody>, Failed> {
    r.map(|r| r.map(UpstreamBody::Shared))
        .map_err(Failed::Client)
}

/// An exchange that failed, from either kind of client.
pub(super) enum Failed {
    Pool(Box<Failure>),
    Client(hyper_util::client::legacy::Error),
}

impl Inner {
    /// The client for an HTTP/1.1 exchange (`upgrade`: the request asks to switch protocols).
    pub(super) fn route(&self, dest: &Dest, h2_caller: bool, upgrade: bool) -> Via<'_> {
        // A TLS peer gets ALPN with h2 for HTTP/2 callers (hyper-util's auto client shares an
        // h2 connection); upgraded connections leave the pool for good.
        let pooled = !(upgrade || (self.alpn && h2_caller));
        match (&dest.identity, self.alpn) {
            (Some(id), true) if pooled => Via::Pool(self.pool_for_identity(id)),
            (Some(id), true) => Via::Client(Box::new(self.client(Some(id), h2_caller))),
            (_, true) if pooled => Via::Pool(self.pool_tls.clone()),
            (_, true) => Via::Client(Box::new(self.client(None, h2_caller))),
            (_, false) if pooled => Via::Pool(self.pool_plain.clone()),
            // Plaintext: the connector offers no ALPN; one client for every caller.
            _ => Via::Client(Box::new(self.client(None, true))),
        }
    }

    /// The HTTP/1.1 pool for a TLS peer expected to present `identity`.
    fn pool_for_identity(&self, identity: &Arc<str>) -> H1Pool {
        if let Some(p) = self
            .pools_by_identity
            .read()
            .ok()
            .and_then(|m| m.get(identity).cloned())
        {
            return p;
        }
        let pool = H1Pool::new(
            self.connector
                .clone()
                .expecting(identity.clone())
                .http1_only(),
        );
        if let Ok(mut m) = self.pools_by_identity.write() {
            return m.entry(identity.clone()).or_insert(pool).clone();
        }
        pool
    }

    /// hyper-util's pooled client for a peer expected to present `identity` (else its DNS
    /// name, or plaintext), offering h2 in ALPN or not; a new one after a TLS reload.
    fn client(&self, identity: Option<&Arc<str>>, h2: bool) -> Client<Connector, Body> {
        let key = (identity.cloned(), h2);
        let generation = self.connector.tls_generation();
        if let Some((_, c)) = self
            .clients
            .read()
            .ok()
            .and_then(|m| m.get(&key).filter(|(g, _)| *g == generation).cloned())
        {
            return c;
        }
        let mut connector = self.connector.clone();
        if let Some(id) = identity {
            connector = connector.expecting(id.clone());
        }
        if !h2 {
            connector = connector.http1_only();
        }
        let client = self.auto_builder.build(connector);
        if let Ok(mut m) = self.clients.write() {
            let entry = m.entry(key).or_insert_with(|| (generation, client.clone()));
            if entry.0 < generation {
                // Dropping the old client closes its idle connections.
                *entry = (generation, client);
            }
            return entry.1.clone();
        }
        client
    }
}
