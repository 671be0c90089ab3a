//! The admin server (CONTRACT.md): `/metrics`, `/live`, `/ready`, `POST /shutdown`. A separate
//! listener with its own tiny router: it must keep answering while the data path is
//! overloaded or draining.

pub mod expfmt;
pub mod process;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Register `tracseq_proxy_build_info` and the process metrics.
pub fn register_build_and_process(reg: &mut Registry) {
    let build: Family<Vec<(&'static str, &'static str)>, Gauge> = Family::default();
    build
        .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))])
        .set(1);
    reg.register(
        "tracseq_proxy_build_info",
        "Build information; always 1",
        build,
    );
    reg.register_collector(Box::new(process::ProcessCollector));
}

/// Why the proxy is not ready, if it is not. Readiness flips to 503 as soon as draining
/// starts, so a load balancer stops sending before the listeners close.
#[derive(Debug)]
pub struct Readiness {
    reasons: Mutex<Vec<&'static str>>,
}

impl Readiness {
    /// Not ready until every reason given here is cleared.
    pub fn new(initial: &[&'static str]) -> Arc<Self> {
        Arc::new(Self {
            reasons: Mutex::new(initial.to_vec()),
        })
    }

    pub fn set(&self, reason: &'static str) {
        if let Ok(mut r) = self.reasons.lock() {
            if !r.contains(&reason) {
                r.push(reason);
            }
        }
    }

    pub fn clear(&self, reason: &'static str) {
        if let Ok(mut r) = self.reasons.lock() {
            r.retain(|x| *x != reason);
        }
    }

    /// `None` when ready, else the reasons joined.
    pub fn not_ready(&self) -> Option<String> {
        let r = self.reasons.lock().ok()?;
        (!r.is_empty()).then(|| r.join(", "))
    }
}

pub const NOT_BOUND: &str = "listeners not bound";
pub const DRAINING: &str = "draining";
pub const NO_IDENTITY: &str = "TLS identity not loaded";

#[derive(Clone)]
pub struct Admin {
    pub registry: Arc<Registry>,
    pub readiness: Arc<Readiness>,
    /// Sending `true` asks the process to drain and exit.
    pub shutdown: watch::Sender<bool>,
}

impl Admin {
    pub async fn serve(self, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new());
        let builder = Arc::new(builder);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let this = this.clone();
            let builder = builder.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.route(req, peer)) }
                });
                let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    }

    fn route(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/metrics") => self.metrics(&req),
            (&Method::GET | &Method::HEAD, "/live") => text(StatusCode::OK, "live\n".into()),
            (&Method::GET | &Method::HEAD, "/ready") => match self.readiness.not_ready() {
                None => text(StatusCode::OK, "ready\n".into()),
                Some(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
            },
            (&Method::POST, "/shutdown") => {
                if !may_shutdown(peer) {
                    return text(
                        StatusCode::FORBIDDEN,
                        "shutdown is allowed from loopback only\n".into(),
                    );
                }
                tracing::info!(client = %peer, "shutdown requested via admin");
                let _ = self.shutdown.send(true);
                text(StatusCode::OK, "draining\n".into())
            }
            (_, "/metrics" | "/live" | "/ready" | "/shutdown") => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
            ),
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }

    fn metrics(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let wants_om = req.headers().get_all(ACCEPT).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.contains("application/openmetrics-text"))
        });
        let mut om = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut om, &self.registry) {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding failed: {e}\n"),
            );
        }
        let (body, ctype) = if wants_om {
            (om, OPENMETRICS)
        } else {
            (expfmt::openmetrics_to_prometheus(&om), PROMETHEUS_TEXT)
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
        resp
    }
}

/// `POST /shutdown` is for the pod's own tooling (preStop hooks, the operator on the node),
/// never for the network: loopback callers only, IPv4-mapped IPv6 loopback included.
fn may_shutdown(peer: SocketAddr) -> bool {
    peer.ip().is_loopback() || is_mapped_loopback(peer)
}

fn is_mapped_loopback(peer: SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        std::net::IpAddr::V4(_) => false,
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_is_loopback_only() {
        for ok in [
            "127.0.0.1:1",
            "127.8.9.10:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(may_shutdown(ok.parse().expect("addr")), "{ok}");
        }
        for no in [
            "10.0.0.1:1",
            "192.168.1.2:1",
            "[2001:db8::1]:1",
            "[::ffff:10.0.0.1]:1",
        ] {
            assert!(!may_shutdown(no.parse().expect("addr")), "{no}");
        }
    }
}
