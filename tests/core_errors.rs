//! Failures and the proxy's own answers (issue 2): upstream refused (502), reset mid-body (the
//! client sees an aborted body), oversized (431) and malformed (400) heads, and a client that
//! goes away mid-request or mid-upload (settled metrics, not blamed on the upstream).
//! Deadlines (504, 408, idle) are in `core_timeouts.rs`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::raw::*;
use support::*;
use tokio::io::AsyncWriteExt;

const PROXY_ERROR: &str = "tracseq-proxy-error";

async fn free_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr")
}

#[tokio::test]
async fn upstream_refused_is_502_upstream_unavailable() {
    let proxy = start(config(free_addr().await)).await;
    for client in [h1_client(), h2_client()] {
        let r = send(
            &client,
            Request::get(proxy.inbound_url("/x"))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("response");
        assert_eq!(r.status, 502);
        assert_eq!(r.header(PROXY_ERROR), Some("upstream-unavailable"));
    }
    let m = proxy.metrics().await;
    assert!(
        m.sum(
            "tracseq_proxy_upstream_errors_total",
            &[("direction", "inbound"), ("kind", "connect")]
        ) >= 2.0
    );
    assert_eq!(
        m.sum(
            "http_server_request_duration_seconds_count",
            &[
                ("http_response_status_code", "502"),
                ("error_type", "upstream-unavailable")
            ]
        ),
        2.0
    );
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn reset_mid_body_aborts_the_clients_response() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    let cases = [
        (h1_client(), "h1", "/reset-mid-body"),
        (h2_client(), "h2", "/reset-mid-body"),
        (h1_client(), "h1", "/reset-mid-chunked"),
        (h2_client(), "h2", "/reset-mid-chunked"),
    ];
    for (client, proto, path) in cases {
        let resp = tokio::time::timeout(
            WAIT,
            client.request(
                Request::get(proxy.inbound_url(path))
                    .body(Full::new(Bytes::new()))
                    .expect("request"),
            ),
        )
        .await
        .expect("in time")
        .expect("response head");
        assert_eq!(resp.status(), 200, "{proto}: the head was already sent");
        let body = collect(resp).await;
        assert!(
            body.is_err(),
            "{proto}: a cut body must fail, not end cleanly"
        );
    }
    // Settled as aborted in the metrics (after the body ends, so poll briefly).
    let deadline = Instant::now() + WAIT;
    loop {
        let m = proxy.metrics().await;
        let n = m.sum(
            "http_server_request_duration_seconds_count",
            &[("direction", "inbound"), ("error_type", "response-aborted")],
        );
        if n == 4.0 {
            break;
        }
        assert!(Instant::now() < deadline, "aborted bodies not counted: {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "tracseq_proxy_upstream_errors_total",
            &[("direction", "inbound"), ("kind", "reset")]
        ),
        4.0,
        "a body cut by the upstream is an upstream reset"
    );
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn oversized_head_is_431_and_malformed_is_400() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    let inbound = proxy.inbound.expect("inbound");

    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let answer = exchange(inbound, big.as_bytes()).await;
    assert_eq!(status_of(&answer), 431, "{answer}");

    // Up to 100 header fields pass the inbound listener, 101 are refused before the app.
    let answer = exchange(inbound, fields_head(100).as_bytes()).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(up.count(), 1, "100 fields reach the app");
    for fields in [101, 200] {
        let answer = exchange(inbound, fields_head(fields).as_bytes()).await;
        assert_eq!(status_of(&answer), 431, "{fields} fields: {answer}");
    }
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header Line\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
    ] {
        let answer = exchange(inbound, bad).await;
        assert_eq!(
            status_of(&answer),
            400,
            "{:?} -> {answer}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        up.count(),
        1,
        "nothing oversized or malformed reached the app"
    );

    // HTTP/2: an oversized header list is refused too (431 or a stream reset), never forwarded.
    let r = send(
        &h2_client(),
        Request::get(proxy.inbound_url("/h2-big"))
            .header("x-big", "b".repeat(100 * 1024))
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await;
    if let Ok(r) = r {
        assert_eq!(r.status, 431);
    }
    assert_eq!(up.count(), 1, "only the 100-field request reached the app");
    assert!(proxy.shutdown().await);
}

/// A request head of `fields` header fields (`Host`, `Connection: close` and more).
fn fields_head(fields: usize) -> String {
    let mut head = String::from("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n");
    for i in 2..fields {
        head.push_str(&format!("X-H{i}: v\r\n"));
    }
    head + "\r\n"
}

#[tokio::test]
async fn outbound_leaves_room_for_the_headers_it_adds() {
    // The sidecar adds `x-request-id` (and `traceparent` when tracing) before the peer's
    // inbound listener, which takes 100: the outbound listener takes 96, so what it accepts
    // is never refused one hop later.
    let up = Upstream::start().await;
    let callee = start(config(up.addr)).await;
    let mut cfg = config(up.addr);
    cfg.peers = vec![
        format!("a=127.0.0.1:{}", callee.inbound.expect("inbound").port())
            .parse()
            .expect("peer"),
    ];
    let caller = start(cfg).await;
    let answer = exchange(caller.outbound_addr(), fields_head(96).as_bytes()).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(up.count(), 1, "96 fields cross both sidecars");
    let answer = exchange(caller.outbound_addr(), fields_head(97).as_bytes()).await;
    assert_eq!(status_of(&answer), 431, "{answer}");
    assert_eq!(up.count(), 1, "97 fields are refused by the first sidecar");
    assert!(caller.shutdown().await);
    assert!(callee.shutdown().await);
}

#[tokio::test]
async fn client_gone_mid_request_settles_the_metrics() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    let mut s = connect(proxy.inbound.expect("inbound")).await;
    s.write_all(b"GET /slow/3000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let deadline = Instant::now() + WAIT;
    while up.count() == 0 {
        assert!(
            Instant::now() < deadline,
            "request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum("http_server_active_requests", &[("direction", "inbound")]),
        1.0
    );
    drop(s);
    loop {
        let m = proxy.metrics().await;
        if m.sum("http_server_active_requests", &[("direction", "inbound")]) == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "in-flight gauge stuck after the client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A big download abandoned halfway is settled too.
    let resp = h1_client()
        .request(
            Request::get(proxy.inbound_url("/bytes/67108864"))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("response");
    drop(resp);
    loop {
        let m = proxy.metrics().await;
        if m.sum("http_server_active_requests", &[]) == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "in-flight gauge stuck after an abandoned body"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn client_gone_mid_upload_is_not_an_upstream_error() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    // An echo (answers at once) and a consumer (answers after the whole body): the cut hits
    // the response body in one case and the upstream exchange itself in the other.
    for round in 0..6 {
        let path = if round % 2 == 0 {
            "/upload"
        } else {
            "/consume"
        };
        let mut s = connect(proxy.inbound.expect("inbound")).await;
        s.write_all(
            format!("POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write head");
        s.write_all(&[b'p'; 100_000]).await.expect("write part");
        let deadline = Instant::now() + WAIT;
        while up.count() <= round {
            assert!(
                Instant::now() < deadline,
                "upload never reached the upstream"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(s);
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let m = proxy.metrics().await;
        if m.sum("http_server_active_requests", &[]) == 0.0 {
            let errors = m.sum("tracseq_proxy_upstream_errors_total", &[]);
            assert_eq!(
                errors,
                0.0,
                "a client that left is not the upstream's failure:\n{}",
                m.text
                    .lines()
                    .filter(|l| l.contains("upstream_errors") || l.contains("_count"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            let failed = m.sum(
                "http_server_request_duration_seconds_count",
                &[("http_response_status_code", "502")],
            );
            assert_eq!(failed, 0.0, "no 502 is counted for a client that left");
            break;
        }
        assert!(Instant::now() < deadline, "in-flight gauge stuck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(proxy.shutdown().await);
}

/// The head limit holds for every request of a connection, not only its first: a pipelined
/// head over 64 KiB behind requests hyper serves (a body) or our own loop serves (bodiless)
/// is refused with 431 and the connection closed, whatever hyper had buffered already.
#[tokio::test]
async fn oversized_pipelined_head_is_431_on_any_request() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    let inbound = proxy.inbound.expect("inbound");
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let with_body = "POST /first HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    let bodiless = "GET /first HTTP/1.1\r\nHost: a\r\n\r\n";
    for (name, leading) in [
        ("after a request with a body", with_body.to_string()),
        ("after a bodiless request", bodiless.to_string()),
        (
            "after both kinds",
            format!("{bodiless}{with_body}{bodiless}"),
        ),
    ] {
        let before = up.count();
        let expected = leading.matches("/first").count();
        let answer = exchange(inbound, format!("{leading}{big}").as_bytes()).await;
        let statuses: Vec<u16> = answer
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| status_of(&answer[i..]))
            .collect();
        assert_eq!(statuses.len(), expected + 1, "{name}: {answer}");
        assert!(
            statuses[..expected].iter().all(|s| *s == 200),
            "{name}: {statuses:?}"
        );
        assert_eq!(statuses[expected], 431, "{name}: {answer}");
        assert_eq!(
            up.count() - before,
            expected,
            "{name}: the oversized head never reaches the app"
        );
    }
    // Under the limit, a long pipelined head (past what the loop serves itself) still passes.
    let long = format!(
        "GET /long HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Long: {}\r\n\r\n",
        "l".repeat(40 * 1024)
    );
    for leading in [with_body, bodiless] {
        let before = up.count();
        let answer = exchange(inbound, format!("{leading}{long}").as_bytes()).await;
        assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
        assert_eq!(up.count() - before, 2, "both requests reach the app");
    }
    assert!(proxy.shutdown().await);
}
