//! A flood of distinct client keys keeps the per-client table and the process's memory bounded.
//! Its own test binary, so that the resident-memory readings see only this flood.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;
use tracseq_proxy::config::{Config, RateLimitKey};
use tracseq_proxy::layers::rate_limit::{RateLimiter, MAX_CLIENT_KEYS};

/// Resident set size of this process, from /proc (Linux).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// The two tests read the process's RSS: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn flood_config(upstream: std::net::SocketAddr) -> Config {
    let mut cfg = config(upstream);
    cfg.rate_limit_per_client = Some("1/m".parse().expect("rate"));
    cfg.rate_limit_key = RateLimitKey::Header(http::HeaderName::from_static("x-client"));
    cfg
}

#[tokio::test]
async fn a_flood_of_distinct_keys_keeps_memory_bounded() {
    const KEYS: usize = 100_000;
    let _serial = SERIAL.lock().await;
    // Long values: stored raw, 100k keys of 1 KiB would be ~100 MB; hashed, they cost a few
    // bytes each.
    let padding = "x".repeat(1000);
    let limiter = RateLimiter::from_config(&flood_config(([127, 0, 0, 1], 1).into()))
        .expect("per-client limit configured");
    let before = rss_bytes();
    let mut allowed = 0usize;
    for i in 0..KEYS {
        let req = Request::get("/")
            .header("x-client", format!("{padding}-{i}"))
            .body(())
            .expect("request");
        let key = limiter.key_of(&req);
        allowed += usize::from(limiter.check(Some(&key)).is_ok());
        if i % 10_000 == 0 {
            assert!(limiter.keys() <= MAX_CLIENT_KEYS, "{} keys", limiter.keys());
        }
    }
    let grown = rss_bytes().saturating_sub(before);
    assert!(limiter.keys() <= MAX_CLIENT_KEYS, "{} keys", limiter.keys());
    // Keys past the cap share one overflow bucket: they do not each get a fresh burst.
    assert!(allowed <= MAX_CLIENT_KEYS + 1, "{allowed} allowed");
    assert!(allowed >= MAX_CLIENT_KEYS, "{allowed} allowed");
    assert!(grown < 32 << 20, "RSS grew by {} MiB", grown >> 20);
}

#[tokio::test]
async fn distinct_clients_through_the_proxy_each_get_their_own_bucket() {
    const CLIENTS: usize = 1000;
    let _serial = SERIAL.lock().await;
    let up = Upstream::start().await;
    let proxy = start(flood_config(up.addr)).await;
    let client = h1_client();
    let call = |who: String| {
        send(
            &client,
            Request::get(proxy.inbound_url("/echo"))
                .header("x-client", who)
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
    };
    let before = rss_bytes();
    for i in 0..CLIENTS {
        let a = call(format!("client-{i}")).await.expect("answer");
        assert_eq!(a.status, 200, "client {i}");
    }
    let again = call("client-7".into()).await.expect("answer");
    assert_eq!(again.status, 429);
    let grown = rss_bytes().saturating_sub(before);
    assert!(grown < 64 << 20, "RSS grew by {} MiB", grown >> 20);
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum("tracseq_proxy_rate_limited_total", &[("mode", "enforce")]),
        1.0
    );
    assert!(proxy.shutdown().await);
}
