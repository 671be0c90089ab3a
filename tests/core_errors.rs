//! Failures and the proxy's own answers (issue 2): upstream refused (502), too slow (504),
//! reset mid-body (the client sees an aborted body), oversized (431) and malformed (400)
//! heads, a trickled head cut at `--header-read-timeout` (408), idle connections closed at
//! `--idle-timeout`, and a client that goes away mid-request.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
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
async fn slow_upstream_is_504_upstream_timeout() {
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    cfg.request_timeout = Duration::from_millis(300);
    let proxy = start(cfg).await;
    let started = Instant::now();
    let r = get(&proxy.inbound_url("/slow/5000"))
        .await
        .expect("response");
    assert_eq!(r.status, 504);
    assert_eq!(r.header(PROXY_ERROR), Some("upstream-timeout"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered at the timeout, not after the upstream"
    );
    // A fast request on the same proxy is unaffected.
    assert_eq!(
        get(&proxy.inbound_url("/slow/10"))
            .await
            .expect("fast")
            .status,
        200
    );
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "tracseq_proxy_upstream_errors_total",
            &[("direction", "inbound"), ("kind", "timeout")]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "tracseq_proxy_overhead_seconds_count",
            &[("direction", "inbound")]
        ),
        1.0,
        "the 504's wait is the upstream's, not the proxy's overhead"
    );
    assert!(
        m.sum(
            "tracseq_proxy_overhead_seconds_sum",
            &[("direction", "inbound")]
        ) < 0.25
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

    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = exchange(inbound, many.as_bytes()).await;
    assert_eq!(status_of(&answer), 431, "{answer}");

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
    assert_eq!(up.count(), 0, "nothing malformed reached the app");

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
    assert_eq!(up.count(), 0);
    assert!(proxy.shutdown().await);
}

/// Writes `first`, then one header line every 100 ms until the peer stops reading or 50
/// lines were sent; returns the answer read meanwhile.
async fn trickle(addr: SocketAddr, first: &[u8]) -> (String, Duration) {
    let s = connect(addr).await;
    let (mut rd, mut wr) = s.into_split();
    let started = Instant::now();
    wr.write_all(first).await.expect("write");
    let writer = tokio::spawn(async move {
        for i in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr
                .write_all(format!("X-Slow-{i}: v\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = async {
        loop {
            match tokio::io::AsyncReadExt::read(&mut rd, &mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("connection ended in time");
    writer.abort();
    (
        String::from_utf8_lossy(&buf).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn trickled_head_is_cut_with_408_header_timeout() {
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    cfg.header_read_timeout = Duration::from_millis(300);
    let proxy = start(cfg).await;
    let inbound = proxy.inbound.expect("inbound");

    let (answer, took) = trickle(inbound, b"GET /trickle HTTP/1.1\r\nHost: a\r\n").await;
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert_eq!(header_of(&answer, PROXY_ERROR), Some("header-timeout"));
    assert!(
        took >= Duration::from_millis(250),
        "cut too early: {took:?}"
    );
    assert!(
        took < Duration::from_secs(4),
        "not cut at the deadline: {took:?}"
    );

    // The same applies to a later request on a keep-alive connection.
    let first =
        b"GET /first HTTP/1.1\r\nHost: a\r\ncontent-length: 0\r\n\r\nGET /second HTTP/1.1\r\n";
    let (answer, _) = trickle(inbound, first).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let second = &answer[answer
        .find("HTTP/1.1 408")
        .unwrap_or_else(|| panic!("no 408 in {answer}"))..];
    assert_eq!(header_of(second, PROXY_ERROR), Some("header-timeout"));
    assert!(up
        .requests()
        .iter()
        .all(|r| r.uri.path() != "/trickle" && r.uri.path() != "/second"));

    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "http_server_request_duration_seconds_count",
            &[
                ("http_response_status_code", "408"),
                ("error_type", "header-timeout")
            ]
        ),
        2.0
    );
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn idle_connections_are_closed_but_busy_ones_are_not() {
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    cfg.idle_timeout = Duration::from_millis(300);
    let proxy = start(cfg).await;
    let inbound = proxy.inbound.expect("inbound");

    // HTTP/1.1: one request, then silence: the proxy closes without a word.
    let mut s = connect(inbound).await;
    s.write_all(b"GET /slow/800 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let (head, mut rest) = read_head(&mut s).await;
    assert_eq!(
        status_of(&head),
        200,
        "a request longer than the idle timeout is not idle"
    );
    let started = Instant::now();
    rest.extend(read_to_end(&mut s).await);
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "slow done\n",
        "no 408 on an idle close"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // HTTP/2: the connection ends after the idle timeout.
    // The client pings every 50 ms: PING frames keep bytes moving but are not requests.
    let tcp = connect(inbound).await;
    let (mut h2, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_millis(50))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let resp = h2
        .send_request(
            Request::get(proxy.inbound_url("/h2-idle"))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(collect(resp).await.expect("body").status, 200);
    let started = Instant::now();
    let ended = tokio::time::timeout(WAIT, conn).await;
    assert!(ended.is_ok(), "idle h2 connection not closed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed late: {:?}",
        started.elapsed()
    );
    assert!(proxy.shutdown().await);
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
