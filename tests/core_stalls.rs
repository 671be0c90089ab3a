//! Requests that stop moving: a stalled response body is cut at `--idle-timeout`, an upstream
//! call dropped by `--request-timeout` still lands in the client metrics, a head that starts
//! like the HTTP/2 preface still gets its 408, and CONNECT on the outbound listener is refused.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use support::raw::{connect, read_to_end, status_of};
use support::*;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn a_stalled_response_body_is_cut_at_the_idle_timeout() {
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    cfg.idle_timeout = Duration::from_millis(300);
    let proxy = start(cfg).await;
    let client = h1_client();
    let t = Instant::now();
    let resp = client
        .request(
            Request::get(proxy.inbound_url("/stall-mid-body"))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("headers arrive");
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .expect("the stalled body ends within the test's bound");
    assert!(
        body.is_err(),
        "a stalled body must end as an error, not look complete"
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "cut too early: {took:?}"
    );
    // The request is settled: no longer in flight, recorded as aborted.
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum("http_server_active_requests", &[("direction", "inbound")]),
        0.0
    );
    assert_eq!(
        m.sum(
            "http_server_request_duration_seconds_count",
            &[("direction", "inbound"), ("error_type", "response-aborted")]
        ),
        1.0
    );
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn a_call_cut_by_the_request_timeout_is_in_the_client_metrics() {
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    cfg.request_timeout = Duration::from_millis(200);
    cfg.breaker_failures = 0;
    let proxy = start(cfg).await;
    let resp = get(&proxy.inbound_url("/slow/2000")).await.expect("answer");
    assert_eq!(resp.status, 504);
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "http_client_request_duration_seconds_count",
            &[("direction", "inbound"), ("error_type", "upstream-timeout")]
        ),
        1.0,
        "{}",
        m.text
    );
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn a_head_that_starts_like_the_h2_preface_still_gets_408() {
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    cfg.header_read_timeout = Duration::from_millis(300);
    let proxy = start(cfg).await;
    let mut s = connect(proxy.inbound.expect("inbound")).await;
    // "P" alone matches the HTTP/2 preface so far; then an HTTP/1 head trickles in.
    s.write_all(b"P").await.expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"OST /x HTTP/1.1\r\nhost: a\r\n")
        .await
        .expect("write");
    let t = Instant::now();
    let answer = tokio::time::timeout(WAIT, read_to_end(&mut s))
        .await
        .expect("the connection is answered and closed");
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&text), 408, "{text}");
    assert!(
        text.contains("tracseq-proxy-error: header-timeout"),
        "{text}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn connect_on_the_outbound_listener_is_refused() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    let mut s = connect(proxy.outbound_addr()).await;
    s.write_all(b"CONNECT orders:443 HTTP/1.1\r\nhost: orders:443\r\n\r\n")
        .await
        .expect("write");
    let answer = tokio::time::timeout(WAIT, support::raw::read_head(&mut s))
        .await
        .expect("answered");
    assert_eq!(status_of(&answer.0), 400, "{}", answer.0);
    assert!(answer.0.contains("tracseq-proxy-error: bad-request"));
    assert_eq!(up.count(), 0);
    assert!(proxy.shutdown().await);
}
