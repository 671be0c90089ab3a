//! The demo's traffic generator. It plays the apps: every request goes to a *caller's*
//! outbound listener with the callee's name in `Host`, so it crosses two sidecars (caller
//! outbound → callee inbound → callee app), exactly the path of CONTRACT.md's topology. It
//! counts what it sent per service and direction, which is what the summary must agree with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;

/// One kind of call in the mesh, with its share of the traffic.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    pub caller: &'static str,
    pub callee: &'static str,
    pub path: &'static str,
    pub weight: u32,
}

/// Requests and 5xx answers, per (service, direction).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
}

/// What the generator sent and saw.
#[derive(Debug, Default, Clone)]
pub struct Sent {
    /// Keyed by (service, "inbound" | "outbound").
    pub by_service: BTreeMap<(String, &'static str), Counts>,
    /// Requests that got no HTTP answer at all (not expected on loopback).
    pub transport_failures: u64,
}

impl Sent {
    fn record(&mut self, flow: &Flow, status: Option<u16>) {
        let Some(status) = status else {
            self.transport_failures += 1;
            return;
        };
        let error = u64::from(status >= 500);
        for key in [
            (flow.caller.to_string(), "outbound"),
            (flow.callee.to_string(), "inbound"),
        ] {
            let c = self.by_service.entry(key).or_default();
            c.requests += 1;
            c.errors += error;
        }
    }

    pub fn total(&self) -> Counts {
        // Every request is counted once as outbound (at its caller).
        self.by_service
            .iter()
            .filter(|((_, d), _)| *d == "outbound")
            .fold(Counts::default(), |acc, (_, c)| Counts {
                requests: acc.requests + c.requests,
                errors: acc.errors + c.errors,
            })
    }
}

/// Requests in flight at most: bounds memory and sockets if the mesh slows down.
const MAX_IN_FLIGHT: usize = 256;
/// A demo request that takes longer than this counts as a transport failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Send `rate` requests per second for `duration`, spread over `flows` by weight, each to the
/// outbound listener of its caller (`outbound[caller]`). `progress` is called about every 2s.
pub async fn generate(
    flows: &[Flow],
    outbound: &BTreeMap<&'static str, SocketAddr>,
    rate: u32,
    duration: Duration,
    mut progress: impl FnMut(Duration, &Sent),
) -> anyhow::Result<Sent> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let total_weight: u32 = flows.iter().map(|f| f.weight).sum();
    anyhow::ensure!(total_weight > 0, "no traffic flows");
    let flows: Arc<[Flow]> = flows.into();
    let mut sent = Sent::default();
    let mut in_flight = JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let start = Instant::now();
    let mut last_progress = start;
    let mut n: u64 = 0;
    while start.elapsed() < duration {
        ticker.tick().await;
        while in_flight.len() >= MAX_IN_FLIGHT {
            if let Some(Ok((i, status))) = in_flight.join_next().await {
                sent.record(&flows[i], status);
            }
        }
        while let Some(Ok((i, status))) = in_flight.try_join_next() {
            sent.record(&flows[i], status);
        }
        let i = pick(&flows, total_weight);
        let flow = flows[i];
        let addr = *outbound
            .get(flow.caller)
            .ok_or_else(|| anyhow::anyhow!("no sidecar for {}", flow.caller))?;
        n += 1;
        let req = Request::get(format!("http://{addr}{}/{}", flow.path, n % 1000))
            .header(HOST, flow.callee)
            .body(Full::new(Bytes::new()))?;
        let client = client.clone();
        in_flight.spawn(async move { (i, call(&client, req).await) });
        if last_progress.elapsed() >= Duration::from_secs(2) {
            last_progress = Instant::now();
            progress(start.elapsed(), &sent);
        }
    }
    while let Some(done) = in_flight.join_next().await {
        if let Ok((i, status)) = done {
            sent.record(&flows[i], status);
        }
    }
    Ok(sent)
}

fn pick(flows: &[Flow], total_weight: u32) -> usize {
    let mut r = rand::random_range(0..total_weight);
    for (i, f) in flows.iter().enumerate() {
        if r < f.weight {
            return i;
        }
        r -= f.weight;
    }
    flows.len() - 1
}

async fn call<C>(client: &Client<C, Full<Bytes>>, req: Request<Full<Bytes>>) -> Option<u16>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let exchange = async {
        let resp = client.request(req).await.ok()?;
        let status = resp.status().as_u16();
        // Read the body to its end: the sidecars settle a request when its body ends.
        resp.into_body().collect().await.ok()?;
        Some(status)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}
