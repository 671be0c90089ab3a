//! The demo's stand-in TracSeq services: tiny HTTP/1 apps with a latency range and an error
//! rate, so the summary has something to show (percentiles that differ per service, a few
//! 5xx). They are deliberately not the proxy: the sidecars in front of them are what the demo
//! is about.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How a demo service behaves.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub name: &'static str,
    /// Percent of requests answered with 500.
    pub error_percent: u32,
    /// Service time, uniformly drawn from this range (microseconds).
    pub latency_us: (u64, u64),
}

/// A running demo service; stops accepting when dropped.
#[derive(Debug)]
pub struct DemoApp {
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Drop for DemoApp {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl DemoApp {
    pub async fn start(profile: Profile) -> anyhow::Result<DemoApp> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            answer(profile, req)
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Ok(DemoApp { addr, accept })
    }
}

async fn answer(
    profile: Profile,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (lo, hi) = profile.latency_us;
    let latency = rand::random_range(lo..=hi.max(lo));
    tokio::time::sleep(Duration::from_micros(latency)).await;
    let status = if rand::random_range(0..100) < profile.error_percent {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let body = format!("{} {} {}\n", profile.name, req.method(), req.uri().path());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    Ok(resp)
}
