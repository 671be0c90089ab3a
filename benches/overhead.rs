//! One proxy hop vs direct: HTTP/1.1 keep-alive GETs to an in-process upstream, directly and
//! through the inbound listener (all policies at their defaults, metrics on). Criterion
//! measures both; at the end a paired run (interleaved, same process, same moment) prints the
//! added median and p99 latency per request, which is the figure the aim is about
//! (< 50 µs at the median on the 2-core machine). Compare ratios within one run only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tracseq_proxy::config::Config;

type C = Client<HttpConnector, Full<Bytes>>;

async fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

async fn one(client: &C, url: &str) {
    let resp = client
        .request(
            Request::get(url)
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await.expect("body");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (direct, proxied, _running) = rt.block_on(async {
        let up = upstream().await;
        let mut cfg = Config::for_upstream(up);
        cfg.outbound_listen = None;
        cfg.log_level = "warn".into();
        let running = tracseq_proxy::app::start(cfg).await.expect("proxy");
        let inbound = running.inbound.expect("inbound");
        (
            format!("http://{up}/"),
            format!("http://{inbound}/"),
            running,
        )
    });
    let client: C = Client::builder(TokioExecutor::new()).build_http();

    let mut g = c.benchmark_group("hop");
    g.bench_function("direct", |b| b.to_async(&rt).iter(|| one(&client, &direct)));
    g.bench_function("one_proxy_hop", |b| {
        b.to_async(&rt).iter(|| one(&client, &proxied))
    });
    g.finish();

    // Paired measurement: interleave direct and proxied requests so both see the same noise.
    const N: usize = 20_000;
    let (mut d, mut p) = (Vec::with_capacity(N), Vec::with_capacity(N));
    rt.block_on(async {
        for _ in 0..N {
            let t = Instant::now();
            one(&client, &direct).await;
            d.push(t.elapsed());
            let t = Instant::now();
            one(&client, &proxied).await;
            p.push(t.elapsed());
        }
    });
    d.sort();
    p.sort();
    let (d50, p50) = (percentile(&d, 0.5), percentile(&p, 0.5));
    let (d99, p99) = (percentile(&d, 0.99), percentile(&p, 0.99));
    println!(
        "\none proxy hop, {N} paired keep-alive requests:\n  direct   p50 {:>7.1} µs  p99 {:>7.1} µs\n  proxied  p50 {:>7.1} µs  p99 {:>7.1} µs\n  added    p50 {:>7.1} µs  p99 {:>7.1} µs\n",
        d50.as_secs_f64() * 1e6,
        d99.as_secs_f64() * 1e6,
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        (p50.as_secs_f64() - d50.as_secs_f64()) * 1e6,
        (p99.as_secs_f64() - d99.as_secs_f64()) * 1e6,
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
