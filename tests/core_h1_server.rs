//! The proxy's own HTTP/1.1 server loop (`proxy::h1`): bodiless requests are served by it,
//! everything else is handed to hyper mid-connection with the bytes already read. Raw sockets
//! send what well-behaved clients do not (pipelining, request-smuggling shapes, odd framing);
//! Python's `http.client` is the third-party keep-alive client.

mod support;

use std::time::Duration;

use support::raw::*;
use support::*;
use tokio::io::AsyncWriteExt;

/// One response taken off the front of a byte stream.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Splits a stream of HTTP/1.1 responses; `head_of` tells which answered a HEAD request.
fn answers(mut bytes: &[u8], head_of: &[bool]) -> Vec<Answer> {
    let mut out = Vec::new();
    for &is_head in head_of {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut fields);
        let n = match r.parse(bytes) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "answer {} incomplete ({other:?}): {:?}",
                out.len(),
                String::from_utf8_lossy(bytes)
            ),
        };
        let status = r.code.expect("status");
        let head = String::from_utf8_lossy(&bytes[..n]).into_owned();
        bytes = &bytes[n..];
        let no_body = is_head || status == 204 || status == 304;
        let body = if no_body {
            Vec::new()
        } else if let Some(len) = header_of(&head, "content-length") {
            let len: usize = len.parse().expect("length");
            let (b, rest) = bytes.split_at(len);
            bytes = rest;
            b.to_vec()
        } else {
            assert_eq!(
                header_of(&head, "transfer-encoding"),
                Some("chunked"),
                "{head}"
            );
            let mut body = Vec::new();
            loop {
                let line_end = bytes
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .expect("size line");
                let size = std::str::from_utf8(&bytes[..line_end]).expect("ascii");
                let size = usize::from_str_radix(size.split(';').next().unwrap(), 16).expect("hex");
                bytes = &bytes[line_end + 2..];
                if size == 0 {
                    let end = bytes
                        .windows(2)
                        .position(|w| w == b"\r\n")
                        .expect("trailer end");
                    // Trailer fields, if any, end with an empty line.
                    let mut rest = bytes;
                    let mut at = end;
                    while at != 0 {
                        rest = &rest[at + 2..];
                        at = rest.windows(2).position(|w| w == b"\r\n").expect("crlf");
                    }
                    bytes = &rest[2..];
                    break;
                }
                body.extend_from_slice(&bytes[..size]);
                bytes = &bytes[size + 2..];
            }
            body
        };
        out.push(Answer { status, head, body });
    }
    assert!(
        bytes.is_empty(),
        "bytes after the last answer: {:?}",
        String::from_utf8_lossy(bytes)
    );
    out
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_with_bodies_framed() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    let addr = proxy.inbound.expect("inbound");
    // Bodiless requests, HEAD, no-body statuses, and a chunked answer (trailers announced).
    let reqs = "GET /status/201 HTTP/1.1\r\nHost: app\r\n\r\n\
                HEAD /bytes/10 HTTP/1.1\r\nHost: app\r\n\r\n\
                GET /status/204 HTTP/1.1\r\nHost: app\r\n\r\n\
                DELETE /status/304 HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\n\r\n\
                GET /trailers HTTP/1.1\r\nHost: app\r\nTE: trailers\r\n\r\n\
                GET /bytes/70000 HTTP/1.1\r\nHost: app\r\n\r\n\
                GET /status/202 HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n";
    let mut s = connect(addr).await;
    s.write_all(reqs.as_bytes()).await.expect("write");
    let bytes = read_to_end(&mut s).await;
    let a = answers(&bytes, &[false, true, false, false, false, false, false]);
    let statuses: Vec<u16> = a.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [201, 200, 204, 304, 200, 200, 202]);
    assert_eq!(a[0].body, b"status 201 Created\n");
    assert_eq!(
        header_of(&a[1].head, "content-length"),
        Some("10"),
        "HEAD keeps the length"
    );
    assert!(
        header_of(&a[2].head, "content-length").is_none(),
        "{}",
        a[2].head
    );
    assert_eq!(a[4].body, b"with trailers");
    assert!(
        a[4].head.contains("transfer-encoding: chunked"),
        "{}",
        a[4].head
    );
    assert!(
        bytes.windows(16).any(|w| w == b"grpc-status: 0\r\n"),
        "announced trailer sent"
    );
    assert_eq!(a[5].body.len(), 70000);
    assert_eq!(header_of(&a[6].head, "connection"), Some("close"));
    for x in &a {
        assert!(header_of(&x.head, "date").is_some(), "{}", x.head);
        assert!(header_of(&x.head, "x-request-id").is_some(), "{}", x.head);
    }
    assert_eq!(
        up.connections(),
        1,
        "requests to the app reuse one connection"
    );
    assert_eq!(up.count(), 7);
}

#[tokio::test]
async fn requests_with_bodies_go_to_hyper_mid_connection_with_nothing_lost() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    let addr = proxy.inbound.expect("inbound");
    // Served by the loop, then a length-delimited upload (handed over, bytes already read),
    // then a chunked one and a bodiless request, both now hyper's.
    let reqs = "GET /status/200 HTTP/1.1\r\nHost: app\r\n\r\n\
                POST /consume HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\nhello\
                POST /consume HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n\
                GET /status/203 HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n";
    let mut s = connect(addr).await;
    s.write_all(reqs.as_bytes()).await.expect("write");
    let bytes = read_to_end(&mut s).await;
    let a = answers(&bytes, &[false; 4]);
    assert_eq!(a[0].status, 200);
    assert_eq!(a[1].body, b"consumed 5\n");
    assert_eq!(a[2].body, b"consumed 7\n");
    assert_eq!(a[3].status, 203);
    let paths: Vec<String> = up
        .requests()
        .iter()
        .map(|r| r.uri.path().to_string())
        .collect();
    assert_eq!(
        paths,
        ["/status/200", "/consume", "/consume", "/status/203"]
    );
}

/// Each head is ambiguous or hostile about where its body ends; a request for `/smuggled`
/// hides where a proxy that misreads the framing would see a second request. Whatever the
/// answer, the app must never receive `/smuggled`, and the proxy must not answer it.
#[tokio::test]
async fn smuggling_shapes_never_reach_the_app_as_a_second_request() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    let addr = proxy.inbound.expect("inbound");
    let hidden = "GET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n";
    let vectors = [
        // CL.TE: a zero length next to chunked.
        format!("POST /status/200 HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n", hidden.len()),
        // TE.CL: chunked first, a length after.
        format!("POST /status/200 HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n", hidden.len()),
        // Two lengths, 0 then the hidden request's.
        format!("POST /status/200 HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{hidden}", hidden.len()),
        // Two lengths in one field.
        format!("POST /status/200 HTTP/1.1\r\nHost: app\r\nContent-Length: 0, {}\r\n\r\n{hidden}", hidden.len()),
        // A length that is not plain digits.
        format!("POST /status/200 HTTP/1.1\r\nHost: app\r\nContent-Length: +{}\r\n\r\n{hidden}", hidden.len()),
        // Whitespace before the colon (RFC 9112 §5.1: must be rejected).
        format!("POST /status/200 HTTP/1.1\r\nHost: app\r\nContent-Length : {}\r\n\r\n{hidden}", hidden.len()),
        // An obsolete line fold continuing the length field.
        format!("POST /status/200 HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\n {}\r\n\r\n{hidden}", hidden.len()),
        // A coding other than chunked last (length unknowable: must be refused).
        format!("POST /status/200 HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked, identity\r\n\r\n{hidden}"),
        // A NUL in a field value.
        format!("GET /status/200 HTTP/1.1\r\nHost: app\r\nX-A: a\0b\r\nContent-Length: {}\r\n\r\n{hidden}", hidden.len()),
    ];
    for v in &vectors {
        let answer = tokio::time::timeout(Duration::from_secs(5), exchange_closing(addr, v))
            .await
            .unwrap_or_else(|_| panic!("no end for {v:?}"));
        assert!(
            !answer.contains("smuggled"),
            "{v:?} answered the hidden request: {answer}"
        );
    }
    let paths: Vec<String> = up
        .requests()
        .iter()
        .map(|r| r.uri.path().to_string())
        .collect();
    assert!(
        !paths.iter().any(|p| p.contains("smuggled")),
        "the app saw a hidden request: {paths:?}"
    );
}

/// Writes `req`, half-closes nothing (the proxy must end the exchange itself: answer and close,
/// or refuse and close), and returns everything read until EOF or a quiet second.
async fn exchange_closing(addr: std::net::SocketAddr, req: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut s = connect(addr).await;
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn targets_and_values_the_http_crate_refuses_get_400_bad_request() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    let addr = proxy.inbound.expect("inbound");
    // httparse takes this target; `http::Uri` does not (a bare authority-less scheme).
    let answer = exchange(addr, b"GET http:// HTTP/1.1\r\nHost: app\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_client_that_closes_cancels_its_request_and_a_drain_closes_idle_connections() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    let addr = proxy.inbound.expect("inbound");
    let mut gone = connect(addr).await;
    gone.write_all(b"GET /slow/3000 HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .expect("write");
    let mut idle = connect(addr).await;
    idle.write_all(b"GET /status/200 HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .expect("write");
    let (head, _) = read_head(&mut idle).await;
    assert_eq!(status_of(&head), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(gone);
    // The cancelled request settles without waiting for the app's 3 s.
    let settled = async {
        loop {
            let m = proxy.metrics().await;
            if m.sum("http_server_active_requests", &[("direction", "inbound")]) == 0.0 {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(2), settled)
        .await
        .expect("the cancelled request settled well before the app answered");
    // Draining closes the idle keep-alive connection.
    let done = tokio::spawn(proxy.shutdown());
    let rest = read_to_end(&mut idle).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(done.await.expect("join"));
}

#[tokio::test]
async fn python_http_client_keeps_one_connection_across_methods() {
    require_tool("python3", "apt-get install -y python3");
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    let addr = proxy.inbound.expect("inbound");
    let script = format!(
        r#"
import http.client
c = http.client.HTTPConnection("127.0.0.1", {port}, timeout=10)
out = []
for method, path, body in [("GET", "/status/200", None), ("HEAD", "/bytes/5", None),
                           ("POST", "/consume", b"12345"), ("GET", "/bytes/3", None),
                           ("DELETE", "/status/204", None), ("GET", "/trailers", None)]:
    c.request(method, path, body=body, headers={{"Host": "app"}})
    r = c.getresponse()
    out.append("%s %d %r" % (method, r.status, r.read()))
print("\n".join(out))
print("sock", c.sock is not None)
"#,
        port = addr.port()
    );
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .await
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = [
        "GET 200 b'status 200 OK\\n'",
        "HEAD 200 b''",
        "POST 200 b'consumed 5\\n'",
        "GET 200 b'xxx'",
        "DELETE 204 b''",
        "GET 200 b'with trailers'",
        "sock True",
    ];
    assert_eq!(text.lines().collect::<Vec<_>>(), want);
    assert_eq!(up.count(), 6);
}
