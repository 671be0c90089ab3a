//! A collector that accepts connections and never answers: requests keep their latency, spans
//! overflow the (tiny, for the test) export queue and are counted as dropped, and shutdown does
//! not wait past `--drain-timeout` for the stuck export. Its own test binary because the queue
//! capacity is a process-wide internal knob.

mod support;

use std::time::{Duration, Instant};

use support::collector::black_hole;
use support::*;
use tracseq_proxy::config::OtlpProtocol;

async fn dead_collector(protocol: OtlpProtocol) {
    tracseq_proxy::telemetry::export::set_queue_capacity(4);
    let up = Upstream::start().await;
    let (hole, _task) = black_hole().await;
    let mut cfg = config(up.addr);
    cfg.otlp_endpoint = Some(format!("http://{hole}"));
    cfg.otlp_protocol = protocol;
    cfg.drain_timeout = Duration::from_secs(2);
    let proxy = start(cfg).await;
    let client = h1_client();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let t = Instant::now();
        let resp = get_with_client(&client, &proxy.inbound_url("/x")).await;
        assert_eq!(resp, 200);
        slowest = slowest.max(t.elapsed());
    }
    // Generous bounds (shared, noisy machine): the export timeout is 5s, so a request that
    // waited for the collector would take seconds.
    assert!(
        slowest < Duration::from_secs(1),
        "slowest request {slowest:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    let m = proxy.metrics().await;
    let dropped = m.sum("tracseq_proxy_spans_dropped_total", &[]);
    // 100 spans (SERVER + CLIENT per request), one batch stuck in export, 4 queued.
    assert!(dropped >= 50.0, "dropped {dropped}\n{}", m.text);

    let t = Instant::now();
    assert!(proxy.shutdown().await);
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(2) + Duration::from_millis(1500),
        "shutdown took {took:?} with --drain-timeout 2s"
    );
}

async fn get_with_client(client: &TestClient, url: &str) -> u16 {
    let req = http::Request::get(url)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    send(client, req).await.expect("response").status
}

#[tokio::test]
async fn dead_grpc_collector_never_slows_requests() {
    dead_collector(OtlpProtocol::Grpc).await;
}

#[tokio::test]
async fn dead_http_collector_never_slows_requests() {
    dead_collector(OtlpProtocol::Http).await;
}
