//! `tracseq-proxy demo`: a self-contained mesh in one process — a demo upstream service, its
//! sidecar, and a traffic generator — ending with a RED summary. The embedded default that
//! README's first command runs.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::config::{cli::DemoArgs, parse_duration, Config};

/// A demo upstream: answers after a little latency, fails a few percent of requests.
pub async fn demo_upstream(error_percent: u32) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: Request<hyper::body::Incoming>| async move {
                        let r: u32 = rand::random_range(0..100);
                        tokio::time::sleep(Duration::from_micros(200 + u64::from(r) * 20)).await;
                        let status = if r < error_percent {
                            StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            StatusCode::OK
                        };
                        let body = format!("{} {}\n", req.method(), req.uri().path());
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = status;
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let duration =
        parse_duration(&args.duration).map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
    let upstream = demo_upstream(5).await?;
    let mut cfg = Config::for_upstream(upstream);
    cfg.outbound_listen = None;
    let running = crate::app::start(cfg)
        .await
        .context("starting the sidecar")?;
    let inbound = running.inbound.context("no inbound listener")?;
    if !args.quiet {
        println!(
            "demo: upstream {upstream}, sidecar inbound {inbound}, admin http://{}/metrics",
            running.admin
        );
    }
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut counts: BTreeMap<u16, u64> = BTreeMap::new();
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let start = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    let mut last_report = Instant::now();
    while start.elapsed() < duration {
        ticker.tick().await;
        let req = Request::get(format!(
            "http://{inbound}/api/samples/{}",
            rand::random_range(0..1000u32)
        ))
        .body(Full::new(Bytes::new()))?;
        let status = match client.request(req).await {
            Ok(resp) => {
                let s = resp.status().as_u16();
                let _ = resp.into_body().collect().await;
                s
            }
            Err(_) => 0,
        };
        *counts.entry(status).or_default() += 1;
        if !args.quiet && last_report.elapsed() >= Duration::from_secs(2) {
            last_report = Instant::now();
            println!(
                "demo: {:>4.0}s sent {}",
                start.elapsed().as_secs_f64(),
                counts.values().sum::<u64>()
            );
        }
    }
    let total: u64 = counts.values().sum();
    let errors: u64 = counts
        .iter()
        .filter(|(s, _)| **s >= 500 || **s == 0)
        .map(|(_, n)| n)
        .sum();
    println!("service   direction  requests  errors  error%");
    println!(
        "demo      inbound    {total:>8}  {errors:>6}  {:>5.1}",
        if total > 0 {
            errors as f64 * 100.0 / total as f64
        } else {
            0.0
        }
    );
    if args.keep_running {
        println!(
            "demo: --keep-running: admin at http://{}; Ctrl-C to stop",
            running.admin
        );
        let trigger = running.shutdown_handle();
        tokio::spawn(async move {
            crate::app::wait_for_signal().await;
            let _ = trigger.send(true);
        });
    } else {
        running.shutdown();
    }
    running.wait().await?;
    Ok(())
}
