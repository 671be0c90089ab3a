//! Tunnels and the outbound direction (issue 2): WebSocket upgrades through the inbound and
//! outbound listeners (past `--header-read-timeout`, and closed when silent for `--idle-timeout`),
//! absolute-form and Host-routed outbound requests to the `--peer` table, `NAME:--peer-port`
//! and a second proxy's inbound listener, h2c from the app, and an outbound-only sidecar.

mod support;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use support::raw::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn empty_get(uri: &str) -> http::request::Builder {
    Request::get(uri)
}

#[tokio::test]
async fn websocket_is_tunnelled_inbound_and_outbound() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    websocket_echo(proxy.inbound.expect("inbound"), WS_HANDSHAKE).await;
    let seen = up.last();
    assert_eq!(seen.headers["upgrade"], "websocket");

    let mut cfg = config(up.addr);
    cfg.peers = vec![
        format!("chat=127.0.0.1:{}", proxy.inbound.expect("inbound").port())
            .parse()
            .expect("peer"),
    ];
    let front = start(cfg).await;
    let via_outbound = WS_HANDSHAKE.replace("Host: app", "Host: chat");
    websocket_echo(front.outbound_addr(), &via_outbound).await;
    assert!(front.shutdown().await);
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn websocket_outlives_the_header_read_timeout() {
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    cfg.header_read_timeout = std::time::Duration::from_millis(200);
    let proxy = start(cfg).await;
    let mut s = connect(proxy.inbound.expect("inbound")).await;
    s.write_all(WS_HANDSHAKE.as_bytes()).await.expect("write");
    let (head, _) = read_head(&mut s).await;
    assert_eq!(status_of(&head), 101, "{head}");
    // Tunnel traffic is not a request head: it must flow well past --header-read-timeout.
    for i in 0..8u8 {
        let msg = [b'm', i];
        s.write_all(&msg).await.expect("write");
        let mut buf = [0u8; 2];
        tokio::time::timeout(WAIT, s.read_exact(&mut buf))
            .await
            .expect("echo in time")
            .unwrap_or_else(|e| panic!("tunnel cut after {i} messages: {e}"));
        assert_eq!(buf, msg, "message {i}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn a_silent_websocket_tunnel_is_closed_at_the_idle_timeout() {
    let idle = std::time::Duration::from_millis(300);
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    cfg.idle_timeout = idle;
    let proxy = start(cfg).await;
    let mut s = connect(proxy.inbound.expect("inbound")).await;
    s.write_all(WS_HANDSHAKE.as_bytes()).await.expect("write");
    let (head, _) = read_head(&mut s).await;
    assert_eq!(status_of(&head), 101, "{head}");
    // A tunnel that moves bytes stays open well past the idle timeout...
    for i in 0..8u8 {
        if i > 0 {
            tokio::time::sleep(idle / 3).await;
        }
        let msg = [b'i', i];
        s.write_all(&msg).await.expect("write");
        let mut buf = [0u8; 2];
        tokio::time::timeout(WAIT, s.read_exact(&mut buf))
            .await
            .expect("echo in time")
            .unwrap_or_else(|e| panic!("busy tunnel cut after {i} messages: {e}"));
        assert_eq!(buf, msg, "message {i}");
    }
    // ...and one that goes quiet is closed about the idle timeout later, not left open.
    let quiet = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let end = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("a silent tunnel must be closed at --idle-timeout");
    assert!(
        matches!(end, Ok(0) | Err(_)),
        "expected the tunnel to end, got {end:?}"
    );
    assert!(
        quiet.elapsed() >= idle - std::time::Duration::from_millis(50),
        "closed after {:?}, before the idle timeout",
        quiet.elapsed()
    );
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn outbound_absolute_form_host_routing_and_second_hop() {
    let up = Upstream::start().await;
    let callee = start(config(up.addr)).await;
    let mut cfg = config(up.addr);
    cfg.peers = vec![
        format!("direct=127.0.0.1:{}", up.addr.port())
            .parse()
            .expect("peer"),
        format!("mesh=127.0.0.1:{}", callee.inbound.expect("inbound").port())
            .parse()
            .expect("peer"),
    ];
    // Unknown names go to NAME:--peer-port; `localhost` resolves without any DNS server.
    cfg.peer_port = up.addr.port();
    let caller = start(cfg).await;
    let out = caller.outbound_addr();

    // Absolute-form, straight to the app.
    let r = send_as_is(
        out,
        empty_get("http://direct/abs/path?q=1")
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-upstream-path"), Some("/abs/path"));
    let seen = up.last();
    assert_eq!(seen.uri.path(), "/abs/path");
    assert_eq!(seen.uri.query(), Some("q=1"));
    assert_eq!(seen.headers["host"], "direct");

    // Absolute-form through the callee's sidecar (a second proxy hop).
    let r = send_as_is(
        out,
        empty_get("http://mesh:9999/via/mesh")
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.uri.path(), "/via/mesh");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");

    // Origin-form with Host naming the service; the caller's port is ignored.
    let r = send_as_is(
        out,
        empty_get("/by/host")
            .header("host", "Mesh:1234")
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().uri.path(), "/by/host");

    // Unknown name: NAME:--peer-port.
    let r = send_as_is(
        out,
        empty_get("http://localhost/default/port")
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().uri.path(), "/default/port");

    // h2c from the app (`:authority` names the service): HTTP/2 to the peer sidecar, HTTP/1.1
    // from there to the app.
    let tcp = connect(out).await;
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let resp = tokio::time::timeout(
        WAIT,
        h2.send_request(
            Request::post("http://mesh/h2/out")
                .body(Full::new(Bytes::from_static(b"over h2")))
                .expect("request"),
        ),
    )
    .await
    .expect("in time")
    .expect("response");
    let r = collect(resp).await.expect("body");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, "over h2");
    assert_eq!(up.last().version, Version::HTTP_11);
    // The app behind the peer sidecar sees the name it was called by, not the sidecar's
    // address (the outbound forwards the caller's `:authority`, RFC 9113 §8.3.1).
    assert_eq!(up.last().headers["host"], "mesh");

    // No destination at all.
    let r = send_as_is(
        out,
        Request::get("/nowhere")
            .header("host", "")
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("tracseq-proxy-error"), Some("bad-request"));

    let m = caller.metrics().await;
    assert_eq!(
        m.sum(
            "http_client_request_duration_seconds_count",
            &[("direction", "outbound"), ("server_address", "mesh")]
        ),
        3.0
    );
    assert!(caller.shutdown().await);
    assert!(callee.shutdown().await);
}

#[tokio::test]
async fn outbound_only_sidecar() {
    let up = Upstream::start().await;
    let mut cfg = tracseq_proxy::config::Config::defaults();
    cfg.listen = None;
    cfg.peers = vec![format!("app=127.0.0.1:{}", up.addr.port())
        .parse()
        .expect("peer")];
    let proxy = start(cfg).await;
    assert!(
        proxy.inbound.is_none(),
        "no inbound listener without --upstream"
    );
    let r = send_as_is(
        proxy.outbound_addr(),
        empty_get("http://app/only-out")
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri.path(), "/only-out");
    assert!(proxy.shutdown().await);
}
