//! h2c from the proxy to the app (gRPC) and to plaintext peers: the caller's authority is
//! forwarded as `:authority` (not the address connected to, and the one the call was routed
//! by), concurrent calls share one connection, a connection the app closes (GOAWAY) is
//! replaced and the calls queued on it move to one new connection, and a connection attempt
//! its caller gave up on does not linger for the next call.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

fn grpc_call(url: &str, authority: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::post(url)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(a) = authority {
        b = b.header("host", a);
    }
    b.body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .expect("request")
}

#[tokio::test]
async fn grpc_to_the_app_keeps_the_callers_authority_on_one_connection() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    let inbound = proxy.inbound.expect("inbound");
    let client = h2_client();
    let url = proxy.inbound_url("/pkg.Svc/Call");
    let calls = (0..8).map(|_| send(&client, grpc_call(&url, None)));
    for r in futures_util::future::join_all(calls).await {
        let r = r.expect("response");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for _ in 0..4 {
        let r = send(&client, grpc_call(&url, None))
            .await
            .expect("response");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 12);
    for s in &seen {
        assert_eq!(s.version, Version::HTTP_2, "gRPC goes to the app over h2c");
        // The caller called the sidecar's address; the app is elsewhere. The app sees what
        // the caller asked for (RFC 9113 §8.3.1), as Envoy and Linkerd forward it.
        assert_eq!(
            s.uri.authority().map(|a| a.as_str().to_string()),
            Some(inbound.to_string()),
            "{:?}",
            s.uri
        );
    }
    assert_eq!(up.connections(), 1, "12 calls share one h2 connection");
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn h2c_through_a_plaintext_peer_keeps_the_service_name() {
    let up = Upstream::start().await;
    let callee = start(config(up.addr)).await;
    let mut cfg = config(up.addr);
    cfg.peers = vec![format!(
        "samples=127.0.0.1:{}",
        callee.inbound.expect("inbound").port()
    )
    .parse()
    .expect("peer")];
    let caller = start(cfg).await;
    let tcp = tokio::net::TcpStream::connect(caller.outbound_addr())
        .await
        .expect("connect");
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    for url in [
        "http://samples/plain",
        "http://samples/grpc",
        "http://samples/conflict",
    ] {
        let req = if url.ends_with("grpc") {
            grpc_call(url, None)
        } else if url.ends_with("conflict") {
            // `:authority` and a `Host` that disagree: the call is routed by `:authority`,
            // and that is the name it arrives with.
            Request::get(url)
                .header("host", "other")
                .body(Full::new(Bytes::new()))
                .expect("req")
        } else {
            Request::get(url)
                .body(Full::new(Bytes::new()))
                .expect("req")
        };
        let resp = tokio::time::timeout(WAIT, h2.send_request(req))
            .await
            .expect("in time")
            .expect("response");
        let r = collect(resp).await.expect("body");
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = up.last();
        if url.ends_with("grpc") {
            // h2c end to end: `:authority` is the service name at every hop.
            assert_eq!(seen.version, Version::HTTP_2);
            assert_eq!(seen.uri.authority().map(|a| a.as_str()), Some("samples"));
        } else {
            // Down to HTTP/1.1 at the callee's sidecar: `:authority` became `Host`.
            assert_eq!(seen.version, Version::HTTP_11);
            assert_eq!(seen.headers["host"], "samples");
        }
    }
    assert!(caller.shutdown().await);
    assert!(callee.shutdown().await);
}

/// When an h2c test app closes a connection with GOAWAY (a graceful restart).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Goaway {
    /// Every connection, as its first call is answered (a max-requests policy).
    AfterEachFirstCall,
    /// Once: the first connection allows one stream at a time, and its second call is slow
    /// and followed by a GOAWAY, with more calls queued behind it. Later connections serve
    /// normally.
    RestartWithCallsQueued,
}

/// An h2c app answering "one" that closes connections as `plan` says. Returns its address and
/// its accepted connections.
async fn goaway_app(plan: Goaway) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let first = counter.fetch_add(1, Ordering::Relaxed) == 0;
            tokio::spawn(async move {
                let calls = Arc::new(AtomicUsize::new(0));
                let close = Arc::new(tokio::sync::Notify::new());
                let (c, signal) = (calls.clone(), close.clone());
                let svc = hyper::service::service_fn(move |_req| {
                    let nth = c.fetch_add(1, Ordering::SeqCst);
                    let signal = signal.clone();
                    async move {
                        match plan {
                            Goaway::AfterEachFirstCall if nth == 0 => signal.notify_one(),
                            Goaway::RestartWithCallsQueued if first && nth == 1 => {
                                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                                signal.notify_one();
                            }
                            _ => {}
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"one"))))
                    }
                });
                let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                if plan == Goaway::RestartWithCallsQueued {
                    builder.max_concurrent_streams(if first { 1 } else { 100 });
                }
                let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    () = close.notified() => conn.as_mut().graceful_shutdown(),
                }
                let _ = conn.await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn an_h2_connection_the_app_closed_is_replaced() {
    let (app, accepted) = goaway_app(Goaway::AfterEachFirstCall).await;
    let proxy = start(config(app)).await;
    let client = h2_client();
    let url = proxy.inbound_url("/pkg.Svc/Call");
    for i in 0..5 {
        let r = send(&client, grpc_call(&url, None))
            .await
            .unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!(r.status, 200, "call {i}: {}", r.text());
        assert_eq!(r.body, "one");
        // The app's GOAWAY reaches the proxy between calls.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        5,
        "a new connection for each call after the app closed the last"
    );
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum("tracseq_proxy_upstream_errors_total", &[]),
        0.0,
        "a closed idle connection is no upstream error"
    );
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn a_burst_to_a_refusing_app_fails_then_connects_once_it_is_up() {
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr")
    };
    let mut cfg = config(dead);
    cfg.breaker_failures = 1000;
    let proxy = start(cfg).await;
    let client = h2_client();
    let url = proxy.inbound_url("/pkg.Svc/Call");
    let burst = || {
        let calls = (0..6).map(|_| send(&client, grpc_call(&url, None)));
        tokio::time::timeout(WAIT, futures_util::future::join_all(calls))
    };
    for r in burst().await.expect("every call answered in time") {
        let r = r.expect("response");
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(
            r.headers
                .get("tracseq-proxy-error")
                .and_then(|v| v.to_str().ok()),
            Some("upstream-unavailable")
        );
    }
    let m = proxy.metrics().await;
    assert!(
        m.sum(
            "tracseq_proxy_upstream_errors_total",
            &[("direction", "inbound"), ("kind", "connect")]
        ) >= 1.0,
        "connect failures are counted as such"
    );
    // The app comes up on its address: the failed attempt was not kept, the next burst
    // connects (once) and is served.
    let listener = tokio::net::TcpListener::bind(dead)
        .await
        .unwrap_or_else(|e| panic!("rebinding {dead} for the app: {e}"));
    let up = Upstream::serve(listener);
    for r in burst().await.expect("every call answered in time") {
        let r = r.expect("response");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(up.connections(), 1);
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn a_goaway_with_calls_queued_moves_them_to_one_new_connection() {
    let (app, accepted) = goaway_app(Goaway::RestartWithCallsQueued).await;
    let mut cfg = config(app);
    cfg.breaker_failures = 1000;
    let proxy = start(cfg).await;
    let client = h2_client();
    let url = proxy.inbound_url("/pkg.Svc/Call");
    let r = send(&client, grpc_call(&url, None))
        .await
        .expect("response");
    assert_eq!(r.status, 200, "{}", r.text());
    // Eight calls at once: one is slow, the app then GOAWAYs with the others queued behind
    // its one-stream limit. Those were never sent: they go out on a new connection.
    let calls = (0..8).map(|_| send(&client, grpc_call(&url, None)));
    let answers = tokio::time::timeout(WAIT, futures_util::future::join_all(calls))
        .await
        .expect("every call answered in time");
    let statuses: Vec<u16> = answers
        .iter()
        .map(|r| r.as_ref().map_or(0, |r| r.status))
        .collect();
    // One call may be lost with the old connection: the one hyper had already taken from
    // its queue to open a stream for when the GOAWAY came. hyper fails it without handing
    // it back ("dispatch gone"), so nobody can tell it was never sent. The rest are moved.
    let served = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        served >= 7 && statuses.iter().all(|s| *s == 200 || *s == 502),
        "the queued calls are served on a new connection: {statuses:?}"
    );
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        2,
        "the queued calls share one new connection: {statuses:?}"
    );
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn a_connect_abandoned_by_its_caller_does_not_haunt_the_next_call() {
    // An app whose accept queue is full: a connection attempt to it hangs (the SYN is dropped).
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(0).expect("listen");
    let app = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let attempt = tokio::net::TcpStream::connect(app);
        if let Ok(Ok(s)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), attempt).await
        {
            fillers.push(s);
        }
    }
    let mut cfg = config(app);
    cfg.request_timeout = std::time::Duration::from_millis(200);
    cfg.connect_timeout = std::time::Duration::from_millis(500);
    cfg.breaker_failures = 1000;
    let proxy = start(cfg).await;
    let client = h2_client();
    let url = proxy.inbound_url("/pkg.Svc/Call");
    // The call gives up (request timeout) while the connection is still being opened.
    let r = send(&client, grpc_call(&url, None))
        .await
        .expect("response");
    assert_eq!(r.status, 504, "{}", r.text());
    // The app restarts; meanwhile the abandoned attempt has run out its connect timeout.
    drop(listener);
    drop(fillers);
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let listener = tokio::net::TcpListener::bind(app)
        .await
        .unwrap_or_else(|e| panic!("rebinding {app} for the app: {e}"));
    let up = Upstream::serve(listener);
    let r = send(&client, grpc_call(&url, None))
        .await
        .expect("response");
    assert_eq!(
        r.status,
        200,
        "a fresh connection, not the stale attempt: {}",
        r.text()
    );
    assert_eq!(up.connections(), 1);
    assert!(proxy.shutdown().await);
}
