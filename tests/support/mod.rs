//! Test harness: the real proxy in-process on loopback port 0, a scriptable upstream, HTTP
//! clients and a `/metrics` parser. Every wait is bounded.
#![allow(dead_code)]

pub mod collector;
pub mod metrics;
pub mod pki;
pub mod raw;
pub mod upstream;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tracseq_proxy::app::{self, Running};
use tracseq_proxy::config::Config;

pub use metrics::Metrics;
#[allow(unused_imports)] // not every test binary starts an upstream
pub use upstream::Upstream;

/// Upper bound for any single wait in tests.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Proxy {
    pub inbound: Option<SocketAddr>,
    pub outbound: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub running: Option<Running>,
}

impl Proxy {
    pub fn inbound_url(&self, path: &str) -> String {
        format!("http://{}{}", self.inbound.expect("inbound listener"), path)
    }

    pub fn outbound_addr(&self) -> SocketAddr {
        self.outbound.expect("outbound listener")
    }

    pub async fn metrics(&self) -> Metrics {
        Metrics::scrape(self.admin).await
    }

    /// Drain and wait for the proxy to stop; returns whether the drain was clean.
    pub async fn shutdown(mut self) -> bool {
        let running = self.running.take().expect("running");
        running.shutdown();
        tokio::time::timeout(Duration::from_secs(60), running.wait())
            .await
            .expect("shutdown finished")
            .expect("drain ok")
    }
}

/// An address nothing listens on: connecting is refused. The socket stays bound, without
/// listening, for as long as the caller holds it: a port that was only bound and released can
/// be taken by any other process on the machine meanwhile (a listener there turned a refused
/// connection into a hung one and a test into a timeout).
pub fn refused_addr() -> (SocketAddr, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    (socket.local_addr().expect("addr"), socket)
}

/// A config with every listener on loopback port 0 and the given upstream.
pub fn config(upstream: SocketAddr) -> Config {
    Config::for_upstream(upstream)
}

/// Start the proxy and wait until `/ready` answers 200.
pub async fn start(cfg: Config) -> Proxy {
    let running = app::start(cfg).await.expect("proxy starts");
    let p = Proxy {
        inbound: running.inbound,
        outbound: running.outbound,
        admin: running.admin,
        running: Some(running),
    };
    wait_ready(p.admin).await;
    p
}

pub async fn wait_ready(admin: SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(resp) = get(&format!("http://{admin}/ready")).await {
            if resp.status == 200 {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "proxy not ready within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 keep-alive client.
pub fn h1_client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A collected response.
pub struct Collected {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl Collected {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn collect(resp: Response<hyper::body::Incoming>) -> Result<Collected, String> {
    let (parts, body) = resp.into_parts();
    let collected = tokio::time::timeout(WAIT, body.collect())
        .await
        .map_err(|_| "body timed out".to_string())?
        .map_err(|e| format!("body error: {e}"))?;
    let trailers = collected.trailers().cloned();
    Ok(Collected {
        status: parts.status.as_u16(),
        headers: parts.headers,
        trailers,
        body: collected.to_bytes(),
    })
}

/// Send one request and collect the answer.
pub async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Result<Collected, String> {
    let resp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .map_err(|_| "request timed out".to_string())?
        .map_err(|e| format!("request error: {e}"))?;
    collect(resp).await
}

pub async fn get(url: &str) -> Result<Collected, String> {
    send(
        &h1_client(),
        Request::get(url)
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await
}

/// Run a real command (curl, openssl, promtool...), failing loudly if it is not installed.
pub fn require_tool(tool: &str, install_hint: &str) {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is required by this test but is not installed; install it with: {install_hint}"
    );
}
