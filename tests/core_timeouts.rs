//! Connection deadlines (issue 2): an upstream slower than `--request-timeout` (504), a
//! trickled request head cut at `--header-read-timeout` (408 `header-timeout`, first and later
//! requests of a connection), and idle HTTP/1.1 and HTTP/2 connections closed at
//! `--idle-timeout` while busy ones stay open.

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

/// A client that sends a request and never reads its answer: once the socket buffers are
/// full, nothing moves for `--idle-timeout` and the connection ends (it would otherwise hold
/// the connection, a request slot and the upstream's answer forever). A client that reads
/// slowly but steadily gets all of a large answer.
#[tokio::test]
async fn a_client_that_reads_nothing_loses_its_connection_a_slow_reader_does_not() {
    use tokio::io::AsyncReadExt;
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    cfg.idle_timeout = Duration::from_millis(300);
    let proxy = start(cfg).await;
    let inbound = proxy.inbound.expect("inbound");
    let open = |m: &Metrics| {
        m.sum(
            "tracseq_proxy_tcp_connections_open",
            &[("direction", "inbound")],
        )
    };

    let small = |addr: SocketAddr| async move {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(16 * 1024).expect("rcvbuf");
        tokio::time::timeout(WAIT, sock.connect(addr))
            .await
            .expect("connect in time")
            .expect("connect")
    };
    let mut stuck = small(inbound).await;
    stuck
        .write_all(b"GET /bytes/268435456 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    loop {
        let m = proxy.metrics().await;
        if open(&m) == 0.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "a client that reads nothing still holds its connection"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut slow = small(inbound).await;
    slow.write_all(b"GET /bytes/1048576 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut got = 0usize;
    let mut buf = vec![0u8; 32 * 1024];
    let read_all = async {
        loop {
            let n = slow.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got += n;
            // Well inside the idle timeout between reads.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read_all)
        .await
        .expect("slow read finished");
    assert!(
        got > 1_048_576,
        "the slow reader got its whole answer ({got} bytes)"
    );
    assert!(proxy.shutdown().await);
}
