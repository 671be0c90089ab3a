//! Cost of tracing: tracing off, on with sampling 0, and on with sampling 1 exporting to a
//! local OTLP collector. Two views:
//! - `trace_layer/*`: the trace layer and the CLIENT span hook alone around a trivial inner
//!   service (a request with a caller's `traceparent`), which isolates the per-request cost
//!   that the aim "unsampled costs < 1 µs more than off" is about;
//! - `proxy/*`: a full HTTP/1.1 round trip through the inbound listener to a local upstream.
//!
//! Measured on the 2-core shared dev machine (bench profile without LTO), for reference:
//! trace_layer off 0.59 µs, sampling 0 1.03 µs (+0.44 µs), sampling 1 2.15 µs;
//! proxy off 100 µs, sampling 0 103 µs (within noise), sampling 1 116 µs (the collector runs
//! in the same process and competes for the CPU).

#[path = "../tests/support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use prometheus_client::registry::Registry;
use support::collector::{Collector, Protocol};
use tower::{Service, ServiceBuilder, ServiceExt};
use tracseq_proxy::config::Config;
use tracseq_proxy::layers::trace::{ClientSpan, TraceLayer};
use tracseq_proxy::proxy::body::{self, Body};
use tracseq_proxy::proxy::{Dest, Direction};
use tracseq_proxy::telemetry::Tracing;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TP_UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

#[derive(Clone, Copy)]
enum Mode {
    Off,
    Ratio0,
    Ratio1,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Ratio0 => "on_sampling_0",
            Mode::Ratio1 => "on_sampling_1",
        }
    }

    fn apply(self, cfg: &mut Config, collector: &Collector) {
        if let Mode::Ratio0 | Mode::Ratio1 = self {
            cfg.otlp_endpoint = Some(collector.endpoint());
            cfg.trace_sample_ratio = if let Mode::Ratio1 = self { 1.0 } else { 0.0 };
        }
    }

    /// The caller's header: sampled unless the mode samples nothing (a caller that sampled
    /// would be honoured, which is not what "sampling 0" measures).
    fn traceparent(self) -> &'static str {
        match self {
            Mode::Ratio0 => TP_UNSAMPLED,
            _ => TP,
        }
    }
}

fn layer_bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let collector = rt.block_on(Collector::start(Protocol::Grpc));
    let dest = Dest {
        label: "bench",
        authority: "127.0.0.1:1".parse().expect("authority"),
        port: 1,
        identity: None,
    };
    let mut group = c.benchmark_group("trace_layer");
    for mode in [Mode::Off, Mode::Ratio0, Mode::Ratio1] {
        let mut cfg = Config::for_upstream("127.0.0.1:1".parse().expect("addr"));
        mode.apply(&mut cfg, &collector);
        let tracing = rt.block_on(async { Tracing::start(&cfg, &mut Registry::default()) });
        let tracing = tracing.expect("tracing starts");
        let dest = dest.clone();
        let inner = tower::service_fn(move |mut req: Request<Body>| {
            // What `Forward` does around the upstream call.
            let span = ClientSpan::start(&mut req, &dest);
            span.end_response(http::StatusCode::OK);
            std::future::ready(Ok::<_, Infallible>(Response::new(body::empty())))
        });
        let svc = ServiceBuilder::new()
            .layer(TraceLayer::new(
                tracing.tracer.clone(),
                Direction::Inbound,
                Arc::from(Vec::new()),
            ))
            .service(inner);
        let tp = mode.traceparent();
        group.bench_function(mode.name(), |b| {
            b.to_async(&rt).iter(|| {
                let mut svc = svc.clone();
                async move {
                    let req = Request::get("/api/samples/1")
                        .header("traceparent", tp)
                        .body(body::empty())
                        .expect("request");
                    let resp = svc.ready().await.expect("ready").call(req).await;
                    drop(resp);
                }
            })
        });
        let mut tracing = tracing;
        rt.block_on(tracing.shutdown(Duration::from_secs(5)));
    }
    group.finish();
}

fn proxy_bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (up, collector) = rt.block_on(async {
        (
            support::Upstream::start().await,
            Collector::start(Protocol::Grpc).await,
        )
    });
    let mut group = c.benchmark_group("proxy");
    group.measurement_time(Duration::from_secs(5));
    for mode in [Mode::Off, Mode::Ratio0, Mode::Ratio1] {
        let mut cfg = support::config(up.addr);
        mode.apply(&mut cfg, &collector);
        let proxy = rt.block_on(support::start(cfg));
        let url = proxy.inbound_url("/bench");
        let client = support::h1_client();
        let tp = mode.traceparent();
        group.bench_function(mode.name(), |b| {
            b.to_async(&rt).iter(|| {
                let client = client.clone();
                let url = url.clone();
                async move {
                    let req = Request::get(url)
                        .header("traceparent", tp)
                        .body(Full::new(Bytes::new()))
                        .expect("request");
                    let resp = support::send(&client, req).await.expect("response");
                    assert_eq!(resp.status, 200);
                }
            })
        });
        rt.block_on(proxy.shutdown());
    }
    group.finish();
}

criterion_group!(benches, layer_bench, proxy_bench);
criterion_main!(benches);
