//! The inbound data path end to end (issue 2): every method over HTTP/1.1 and h2c, HTTP/1.0,
//! pooled upstream connections, chunked uploads, trailers (h2 gRPC and HTTP/1.1 `TE:
//! trailers`), hop-by-hop and forwarding headers, and curl as a real client (h1, h2c, h2c
//! upgrade refused, `Expect: 100-continue`, proxy mode). Tunnels and outbound routing are in
//! `core_outbound.rs`, big bodies in `core_bodies.rs`.

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::Full;
use support::raw::*;
use support::*;

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

#[tokio::test]
async fn every_method_over_h1_and_h2c() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    for (client, proto) in [(h1_client(), "1.1"), (h2_client(), "2")] {
        for m in METHODS {
            let body: &'static [u8] = match m {
                "POST" | "PUT" | "PATCH" => b"payload",
                _ => b"",
            };
            let req = Request::builder()
                .method(m)
                .uri(proxy.inbound_url(&format!("/echo/{m}")))
                .body(Full::new(Bytes::from_static(body)))
                .expect("request");
            let resp = send(&client, req).await.expect("response");
            assert_eq!(resp.status, 200, "{m} over {proto}");
            assert_eq!(
                resp.header("x-upstream-method"),
                Some(m),
                "{m} over {proto}"
            );
            // The local app gets HTTP/1.1 unless the request is gRPC.
            assert_eq!(resp.header("x-upstream-version"), Some("HTTP/1.1"));
            assert!(resp.header("x-request-id").is_some());
            if m != "HEAD" {
                assert_eq!(resp.body, body, "{m} over {proto}");
            }
            let seen = up.last();
            assert_eq!(seen.uri.path(), format!("/echo/{m}"));
            assert!(
                seen.headers.contains_key("host"),
                "HTTP/1.1 to the app needs Host"
            );
        }
    }
    let metrics = proxy.metrics().await;
    for m in METHODS {
        for proto in ["1.1", "2"] {
            let n = metrics.sum(
                "http_server_request_duration_seconds_count",
                &[
                    ("direction", "inbound"),
                    ("http_request_method", m),
                    ("network_protocol_version", proto),
                    ("http_response_status_code", "200"),
                ],
            );
            assert_eq!(n, 1.0, "{m} over {proto}");
        }
    }
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn h2_cookies_are_joined_for_the_http1_app() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    let r = send(
        &h2_client(),
        Request::get(proxy.inbound_url("/cookies"))
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await
    .expect("response");
    assert_eq!(r.status, 200);
    let seen = up.last();
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2"], "one Cookie line over HTTP/1.1");
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_stripped() {
    // A raw upstream that answers every request with hop-by-hop headers of its own.
    let (addr, task) = canned_upstream(|_| {
        "HTTP/1.1 200 OK\r\nConnection: x-private\r\nx-private: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nx-app: kept\r\ncontent-length: 2\r\n\r\nok".to_string()
    })
    .await;
    let proxy = start(config(addr)).await;
    for client in [h1_client(), h2_client()] {
        let r = send(
            &client,
            Request::get(proxy.inbound_url("/"))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("response");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "ok");
        assert_eq!(r.header("x-app"), Some("kept"));
        for gone in ["x-private", "keep-alive", "proxy-connection"] {
            assert!(r.header(gone).is_none(), "{gone} reached the client");
        }
    }
    assert!(proxy.shutdown().await);
    task.abort();
}

/// A bodiless request's answer comes back from the pool as bytes (`raw_fields`) and leaves
/// through our HTTP/1.1 encoder or, for HTTP/2, through hyper: either way every end-to-end
/// field arrives once, repeated ones in order, the stack's `x-request-id` instead of the
/// upstream's, the upstream's `Date` and no second one, and none of the hop-by-hop fields.
#[tokio::test]
async fn bodiless_answers_keep_every_end_to_end_field_once() {
    const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    let (addr, task) = canned_upstream(|req| {
        let body = if req.starts_with(b"HEAD ") { "" } else { "ok" };
        format!(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
             Set-Cookie: a=1\r\nX-Request-Id: upstream-id\r\nProxy-Connection: keep-alive\r\n\
             Upgrade: h2c\r\nSet-Cookie: b=2\r\nSERVER:   up  \r\nDate: {DATE}\r\n\
             Content-Length: 2\r\n\r\n{body}"
        )
    })
    .await;
    let proxy = start(config(addr)).await;
    let inbound = proxy.inbound.expect("inbound");

    // Our own HTTP/1.1 encoder, read off the wire.
    for method in ["GET", "HEAD"] {
        let req = format!(
            "{method} / HTTP/1.1\r\nHost: app\r\nx-request-id: client-id\r\nConnection: close\r\n\r\n"
        );
        let wire = exchange(inbound, req.as_bytes()).await;
        let (head, body) = wire.split_once("\r\n\r\n").expect("a full head");
        let mut lines: Vec<&str> = head.lines().skip(1).collect();
        lines.sort_unstable();
        assert_eq!(
            lines,
            [
                "connection: close",
                "content-length: 2",
                &format!("date: {DATE}"),
                "server: up",
                "set-cookie: a=1",
                "set-cookie: b=2",
                "x-request-id: client-id",
            ],
            "{method}: {head}"
        );
        let cookies: Vec<&str> = head
            .lines()
            .filter(|l| l.starts_with("set-cookie"))
            .collect();
        assert_eq!(cookies, ["set-cookie: a=1", "set-cookie: b=2"], "in order");
        assert_eq!(body, if method == "GET" { "ok" } else { "" }, "{method}");
    }

    // hyper's encoders (HTTP/2, and HTTP/1.1 through a keep-alive client for comparison).
    for (client, name) in [(h2_client(), "h2"), (h1_client(), "h1")] {
        let r = send(
            &client,
            Request::get(proxy.inbound_url("/"))
                .header("x-request-id", "client-id")
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("response");
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.body, "ok", "{name}");
        let all = |n: &str| -> Vec<String> {
            r.headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().expect("ascii").to_string())
                .collect()
        };
        assert_eq!(all("set-cookie"), ["a=1", "b=2"], "{name}");
        assert_eq!(all("x-request-id"), ["client-id"], "{name}");
        assert_eq!(all("date"), [DATE], "{name}");
        assert_eq!(all("server"), ["up"], "{name}");
        for gone in ["keep-alive", "proxy-connection", "upgrade"] {
            assert!(
                r.header(gone).is_none(),
                "{name}: {gone} reached the client"
            );
        }
        if name == "h2" {
            assert!(r.header("connection").is_none());
            assert_eq!(r.headers.len(), 6, "{name}: {:?}", r.headers);
        }
    }
    assert!(proxy.shutdown().await);
    task.abort();
}

#[tokio::test]
async fn http_1_0_client_is_served() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    let answer = exchange(
        proxy.inbound.expect("inbound"),
        b"POST /old HTTP/1.0\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(answer.ends_with("abc"), "{answer}");
    assert_eq!(up.last().uri.path(), "/old");
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    // Ten callers on ten connections, one after the other: one pooled connection to the app.
    for i in 0..10 {
        let r = get(&proxy.inbound_url(&format!("/pooled/{i}")))
            .await
            .expect("response");
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.count(), 10);
    assert_eq!(up.connections(), 1, "the upstream connection is reused");
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn chunked_upload_is_streamed_without_a_length() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    for h2 in [false, true] {
        let client = stream_client(h2);
        let req = Request::post(proxy.inbound_url("/upload"))
            .body(generated_body(100_000, 4096))
            .expect("request");
        let resp = tokio::time::timeout(WAIT, client.request(req))
            .await
            .expect("in time")
            .expect("response");
        assert_eq!(resp.status(), 200);
        let n = count_body(resp.into_body()).await.expect("body");
        assert_eq!(n, 100_000, "h2={h2}");
        let seen = up.last();
        assert!(
            seen.headers.get("content-length").is_none(),
            "h2={h2}: no length was known"
        );
        assert_eq!(
            seen.headers.get("transfer-encoding").map(|v| v.as_bytes()),
            Some(&b"chunked"[..]),
            "h2={h2}"
        );
    }
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn grpc_trailers_survive_over_h2() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    let req = Request::post(proxy.inbound_url("/trailers"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = send(&h2_client(), req).await.expect("response");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "with trailers");
    let trailers = resp.trailers.expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    let seen = up.last();
    assert_eq!(
        seen.version,
        Version::HTTP_2,
        "gRPC goes to the app over h2c"
    );
    assert_eq!(seen.headers["te"], "trailers");
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn h1_trailers_with_te_trailers() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    let req = Request::get(proxy.inbound_url("/trailers"))
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = send(&h1_client(), req).await.expect("response");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "with trailers");
    let trailers = resp
        .trailers
        .expect("trailers arrive over chunked HTTP/1.1");
    assert_eq!(trailers["grpc-status"], "0");
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn hop_by_hop_stripped_and_forwarding_headers_set() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    let inbound = proxy.inbound.expect("inbound");
    let r = send_as_is(
        inbound,
        Request::post("/headers")
            .header("host", "app")
            .header("connection", "x-secret, keep-alive")
            .header("x-secret", "must not pass")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .header("x-forwarded-client-cert", "Hash=forged;URI=spiffe://evil")
            .header("x-request-id", "req-123")
            .header("x-forwarded-for", "10.9.8.7")
            .header("x-app", "kept")
            .body(Full::new(Bytes::from_static(b"b")))
            .expect("request"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("req-123"));
    let seen = up.last();
    for gone in [
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "x-forwarded-client-cert",
    ] {
        assert!(
            seen.headers.get(gone).is_none(),
            "{gone} reached the upstream"
        );
    }
    if let Some(c) = seen.headers.get("connection") {
        assert!(!c.to_str().unwrap_or("").contains("x-secret"));
    }
    assert_eq!(seen.headers["x-forwarded-for"], "10.9.8.7, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-request-id"], "req-123");
    assert_eq!(seen.headers["x-app"], "kept");

    // Without an id, one is generated, sent upstream and returned.
    let r = send(
        &h1_client(),
        Request::get(proxy.inbound_url("/no-id"))
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await
    .expect("response");
    let id = r.header("x-request-id").expect("generated id").to_string();
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(up.last().headers["x-request-id"], id.as_str());

    // The proxy's own answers carry the id too.
    let (refused, _bound) = refused_addr();
    let dead = start(config(refused)).await;
    let r = send(
        &h1_client(),
        Request::get(dead.inbound_url("/x"))
            .header("x-request-id", "mine")
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await
    .expect("response");
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-request-id"), Some("mine"));
    assert!(dead.shutdown().await);
    assert!(proxy.shutdown().await);
}

/// An upstream on loopback that answers each read with `answer(what was read)`: one read is
/// one request here (small bodiless heads, one at a time per connection).
async fn canned_upstream(answer: fn(&[u8]) -> String) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = tcp.read(&mut buf).await {
                    if tcp.write_all(answer(&buf[..n]).as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

async fn curl(args: &[&str]) -> String {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(args)
            .output(),
    )
    .await
    .expect("curl in time")
    .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn curl_h1_h2c_and_proxy_mode() {
    require_tool("curl", "apt-get install curl");
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    cfg.peers = vec![format!("app=127.0.0.1:{}", up.addr.port())
        .parse()
        .expect("peer")];
    let proxy = start(cfg).await;
    let url = proxy.inbound_url("/curl");
    let out = curl(&["-D", "-", "--data-binary", "from curl", &url]).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.to_ascii_lowercase().contains("x-request-id:"), "{out}");
    assert!(out.ends_with("from curl"), "{out}");

    let out = curl(&[
        "--http2-prior-knowledge",
        "-D",
        "-",
        "--data-binary",
        "h2 body",
        &url,
    ])
    .await;
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert!(out.ends_with("h2 body"), "{out}");

    // `curl --http2` on http:// asks for an h2c upgrade: served over HTTP/1.1, never passed on.
    let out = curl(&[
        "--http2",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_version}",
        &url,
    ])
    .await;
    assert_eq!(out, "200 1.1");
    let seen = up.last();
    assert!(seen.headers.get("upgrade").is_none() && seen.headers.get("http2-settings").is_none());

    // A 3 MiB upload: curl sends `Expect: 100-continue` and waits for the 100.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("upload.bin");
    std::fs::write(&file, vec![b'u'; 3 * 1024 * 1024]).expect("write upload");
    let upload = format!("@{}", file.display());
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download}",
        "--data-binary",
        &upload,
        &url,
    ])
    .await;
    assert_eq!(out, format!("200 {}", 3 * 1024 * 1024));

    // curl as the app with HTTP_PROXY pointing at the outbound listener (absolute-form).
    let proxy_url = format!("http://{}", proxy.outbound_addr());
    let out = curl(&[
        "-x",
        &proxy_url,
        "-w",
        "%{http_code}",
        "http://app/through/proxy",
    ])
    .await;
    assert!(out.ends_with("200"), "{out}");
    assert_eq!(up.last().uri.path(), "/through/proxy");
    assert!(proxy.shutdown().await);
}
