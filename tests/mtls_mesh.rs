//! Two sidecars in one test: caller app → caller's outbound listener → mTLS → callee's inbound
//! listener → callee app. The callee app learns the caller's SPIFFE identity from
//! `x-forwarded-client-cert`, never from what the caller wrote; sidecars reuse one connection
//! and speak the caller's HTTP version (HTTP/1.1 for HTTP/1 callers, HTTP/2 via ALPN for h2); a peer presenting the wrong identity gets no request (502, counted).

mod support;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::Full;
use support::pki::*;
use support::*;
use tracseq_proxy::config::Peer;

fn peer(name: &str, port: u16, identity: &str) -> Peer {
    Peer {
        name: name.into(),
        host: "127.0.0.1".into(),
        port,
        identity: Some(identity.into()),
    }
}

#[tokio::test]
async fn caller_identity_reaches_the_callee_and_wrong_peers_are_refused() {
    let pki = Pki::new();
    let caller_files = pki.service("caller");
    let callee_files = pki.service("callee");

    let callee_app = Upstream::start().await;
    let mut cfg = config(callee_app.addr);
    with_tls(&mut cfg, &callee_files);
    let callee = start(cfg).await;
    let callee_port = callee.inbound.expect("inbound").port();

    let caller_app = Upstream::start().await;
    let mut cfg = config(caller_app.addr);
    with_tls(&mut cfg, &caller_files);
    cfg.peers = vec![
        peer("callee", callee_port, "spiffe://tracseq.local/callee"),
        // The same sidecar, but we expect someone else there: must be refused.
        peer("billing", callee_port, "spiffe://tracseq.local/billing"),
    ];
    let caller = start(cfg).await;
    let out = caller.outbound_addr();

    let client = h1_client();
    for i in 0..3 {
        let resp = send(
            &client,
            Request::post(format!("http://{out}/api/samples/{i}"))
                .header("host", "callee")
                .header(
                    "x-forwarded-client-cert",
                    "Hash=00;URI=spiffe://tracseq.local/admin",
                )
                .body(Full::new(Bytes::from_static(b"sample")))
                .expect("request"),
        )
        .await
        .expect("response");
        if resp.status != 200 {
            let m = caller.metrics().await;
            let c = callee.metrics().await;
            let f = |m: &Metrics| {
                m.text
                    .lines()
                    .filter(|l| l.contains("tls_") || l.contains("upstream_errors"))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            panic!(
                "status {} {}\ncaller:\n{}\ncallee:\n{}",
                resp.status,
                resp.text(),
                f(&m),
                f(&c)
            );
        }
        assert_eq!(resp.body, "sample");
    }
    let seen = callee_app.last();
    let xfcc: Vec<_> = seen
        .headers
        .get_all("x-forwarded-client-cert")
        .iter()
        .map(|v| v.to_str().expect("ascii").to_string())
        .collect();
    assert_eq!(xfcc.len(), 1, "exactly one XFCC: {xfcc:?}");
    assert!(
        xfcc[0].contains("URI=spiffe://tracseq.local/caller"),
        "{xfcc:?}"
    );
    assert!(xfcc[0].contains("DNS=caller"), "{xfcc:?}");
    assert!(
        !xfcc[0].contains("admin"),
        "the spoofed header is gone: {xfcc:?}"
    );
    assert_eq!(seen.headers["x-forwarded-proto"], "https");

    // One mTLS connection, HTTP/1.1 like the caller (ALPN), reused by all three requests.
    let cm = callee.metrics().await;
    assert_eq!(
        cm.sum(
            "tracseq_proxy_tls_handshakes_total",
            &[("direction", "inbound"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        cm.sum(
            "tracseq_proxy_tcp_connections_total",
            &[("direction", "inbound")]
        ),
        1.0
    );
    assert_eq!(
        cm.sum(
            "http_server_request_duration_seconds_count",
            &[
                ("direction", "inbound"),
                ("network_protocol_version", "1.1")
            ]
        ),
        3.0
    );

    // An HTTP/2 caller gets HTTP/2 between the sidecars (ALPN h2), on a second connection.
    // (h2c with `:authority` naming the service.)
    let tcp = tokio::net::TcpStream::connect(out).await.expect("connect");
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let resp = tokio::time::timeout(
        WAIT,
        h2.send_request(
            Request::get("http://callee/api/samples/h2")
                .body(Full::new(Bytes::new()))
                .expect("request"),
        ),
    )
    .await
    .expect("in time")
    .expect("response");
    let resp = collect(resp).await.expect("body");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(callee_app.last().headers["host"], "callee");
    // gRPC on the same connection: h2c from the callee's sidecar to its app, whose
    // `:authority` is the service name too (not the callee sidecar's address).
    let resp = tokio::time::timeout(
        WAIT,
        h2.send_request(
            Request::post("http://callee/pkg.Samples/List")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(Bytes::new()))
                .expect("request"),
        ),
    )
    .await
    .expect("in time")
    .expect("response");
    let resp = collect(resp).await.expect("body");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = callee_app.last();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.uri.authority().map(|a| a.as_str()), Some("callee"));
    let cm = callee.metrics().await;
    assert_eq!(
        cm.sum(
            "http_server_request_duration_seconds_count",
            &[("direction", "inbound"), ("network_protocol_version", "2")]
        ),
        2.0,
        "both HTTP/2 calls crossed the mesh as HTTP/2"
    );
    assert_eq!(
        cm.sum(
            "tracseq_proxy_tls_handshakes_total",
            &[("direction", "inbound"), ("result", "ok")]
        ),
        2.0
    );

    // The wrong identity: refused before any request is written.
    let before = callee_app.count();
    let resp = send(
        &client,
        Request::get(format!("http://{out}/secret"))
            .header("host", "billing")
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await
    .expect("response");
    assert_eq!(resp.status, 502);
    assert_eq!(
        resp.header("tracseq-proxy-error"),
        Some("upstream-unavailable")
    );
    assert_eq!(
        callee_app.count(),
        before,
        "no request reached the wrong peer's app"
    );
    let m = caller.metrics().await;
    assert!(
        m.sum(
            "tracseq_proxy_upstream_errors_total",
            &[("direction", "outbound"), ("kind", "tls")]
        ) >= 1.0,
        "counted as a TLS failure"
    );
    assert!(
        m.sum(
            "tracseq_proxy_tls_handshakes_total",
            &[("direction", "outbound"), ("result", "bad_identity")]
        ) >= 1.0
    );
    assert_eq!(
        m.sum(
            "tracseq_proxy_tls_handshakes_total",
            &[("direction", "outbound"), ("result", "ok")]
        ),
        2.0,
        "one connection for the HTTP/1.1 requests, one for the HTTP/2 one"
    );
    assert!(caller.shutdown().await);
    assert!(callee.shutdown().await);
}

/// A WebSocket crosses the mesh: sidecars normally speak HTTP/2 to each other, which cannot
/// carry an `Upgrade`, so upgrade requests get an HTTP/1.1-only mTLS connection.
#[tokio::test]
async fn websocket_crosses_the_mtls_mesh() {
    use support::raw::{websocket_echo, WS_HANDSHAKE};

    let pki = Pki::new();
    let callee_app = Upstream::start().await;
    let mut cfg = config(callee_app.addr);
    with_tls(&mut cfg, &pki.service("callee"));
    let callee = start(cfg).await;
    let caller_app = Upstream::start().await;
    let mut cfg = config(caller_app.addr);
    with_tls(&mut cfg, &pki.service("caller"));
    cfg.peers = vec![peer(
        "callee",
        callee.inbound.expect("inbound").port(),
        "spiffe://tracseq.local/callee",
    )];
    let caller = start(cfg).await;

    // A normal request first, so an HTTP/2 connection to the peer already exists.
    let ok = send(
        &h1_client(),
        Request::get(format!("http://{}/x", caller.outbound_addr()))
            .header("host", "callee")
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await
    .expect("response");
    assert_eq!(ok.status, 200);

    let handshake = WS_HANDSHAKE.replace("Host: app", "Host: callee");
    websocket_echo(caller.outbound_addr(), &handshake).await;
    // The callee's app saw the caller's identity on the upgrade request too.
    let ws = callee_app
        .requests()
        .into_iter()
        .find(|r| r.uri.path() == "/ws")
        .expect("the upgrade reached the callee's app");
    let xfcc = ws
        .headers
        .get("x-forwarded-client-cert")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(xfcc.contains("URI=spiffe://tracseq.local/caller"), "{xfcc}");
}
