//! Opens connections to upstreams: TCP with a connect timeout and `TCP_NODELAY` (request
//! latency matters more than packet count on loopback and in a mesh). Name resolution happens
//! only when a new connection is opened; pooled connections are reused without DNS.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::BoxError;

#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
}

impl Connector {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.enforce_http(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        Self { http }
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let fut = self.http.call(uri);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}
