//! Bodies of 0 B, 1 KiB and 64 MiB through the proxy, both ways, over HTTP/1.1 and h2c, with
//! the process's resident memory sampled during the big transfers: a proxy that buffered a
//! body would grow by at least its size. One test in its own binary, so no other test's
//! allocations blur the measurement.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use support::raw::*;
use support::*;

const BIG: usize = 64 * 1024 * 1024;
/// Growth allowed during a 64 MiB transfer: buffers, windows and allocator slack, far below
/// the body size.
const MAX_GROWTH: u64 = 40 * 1024 * 1024;

/// Samples RSS until dropped; `peak()` is the highest value seen.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_bytes()));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed).max(rss_bytes())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_small_and_huge_stream_both_ways() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;

    for (client, proto) in [(h1_client(), "h1"), (h2_client(), "h2")] {
        for size in [0usize, 1024] {
            let payload = Bytes::from(vec![b'a'; size]);
            let r = send(
                &client,
                Request::put(proxy.inbound_url("/echo"))
                    .body(Full::new(payload.clone()))
                    .expect("request"),
            )
            .await
            .expect("echo");
            assert_eq!(r.status, 200);
            assert_eq!(r.body, payload, "{proto} {size} B up and back");
            let r = get(&proxy.inbound_url(&format!("/bytes/{size}")))
                .await
                .expect("download");
            assert_eq!(r.body.len(), size, "{proto} {size} B down");
        }
    }

    // Warm up the pools and allocator so the baseline includes steady-state buffers.
    for h2 in [false, true] {
        let resp = stream_client(h2)
            .request(
                Request::post(proxy.inbound_url("/echo"))
                    .body(generated_body(1024 * 1024, 64 * 1024))
                    .expect("request"),
            )
            .await
            .expect("warm-up");
        assert_eq!(
            count_body(resp.into_body()).await.expect("warm-up body"),
            1024 * 1024
        );
    }

    for h2 in [false, true] {
        let client = stream_client(h2);
        // Upload 64 MiB, streamed back by the echo: both directions at once.
        let base = rss_bytes();
        let sampler = RssSampler::start();
        let resp = tokio::time::timeout(
            Duration::from_secs(60),
            client.request(
                Request::post(proxy.inbound_url("/echo"))
                    .body(generated_body(BIG, 64 * 1024))
                    .expect("request"),
            ),
        )
        .await
        .expect("in time")
        .expect("response");
        assert_eq!(resp.status(), 200);
        let n = count_body(resp.into_body()).await.expect("echoed body");
        let peak = sampler.finish();
        assert_eq!(n, BIG as u64, "h2={h2}: every byte echoed");
        let growth = peak.saturating_sub(base);
        eprintln!("h2={h2}: RSS growth {} KiB", growth / 1024);
        assert!(
            growth < MAX_GROWTH,
            "h2={h2}: RSS grew by {} MiB during a 64 MiB echo: the body was buffered",
            growth / (1024 * 1024)
        );

        // Download 64 MiB.
        let base = rss_bytes();
        let sampler = RssSampler::start();
        let resp = client
            .request(
                Request::get(proxy.inbound_url(&format!("/bytes/{BIG}")))
                    .body(http_body_util::Empty::new().map_err(|n| match n {}).boxed())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(resp.headers()["content-length"], BIG.to_string().as_str());
        let n = count_body(resp.into_body()).await.expect("downloaded body");
        let peak = sampler.finish();
        assert_eq!(n, BIG as u64, "h2={h2}: every byte downloaded");
        let growth = peak.saturating_sub(base);
        eprintln!("h2={h2}: RSS growth {} KiB", growth / 1024);
        assert!(
            growth < MAX_GROWTH,
            "h2={h2}: RSS grew by {} MiB during a 64 MiB download",
            growth / (1024 * 1024)
        );
    }
    assert!(proxy.shutdown().await);
}
