//! Raw-socket and streaming helpers: hand-written HTTP/1 bytes for what a well-behaved client
//! cannot send (malformed heads, trickled headers, upgrades, absolute-form), and a client
//! whose request bodies are streams, for large and chunked uploads. Every read is bounded.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

pub type StreamBodyT = BoxBody<Bytes, std::io::Error>;
pub type StreamClient = Client<HttpConnector, StreamBodyT>;

/// A client whose request bodies are streams (`h2` for prior-knowledge HTTP/2).
pub fn stream_client(h2: bool) -> StreamClient {
    Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http()
}

/// A body of `total` bytes produced lazily in `chunk`-sized frames, with no length known in
/// advance (HTTP/1 sends it chunked).
pub fn generated_body(total: usize, chunk: usize) -> StreamBodyT {
    let block = Bytes::from(vec![b'z'; chunk]);
    let stream = futures_util::stream::unfold(total, move |left| {
        let block = block.clone();
        async move {
            if left == 0 {
                return None;
            }
            let take = left.min(block.len());
            Some((
                Ok::<_, std::io::Error>(Frame::data(block.slice(..take))),
                left - take,
            ))
        }
    });
    StreamBody::new(stream).boxed()
}

/// Count a response body's bytes without keeping them; `Err` if the body failed.
pub async fn count_body(body: hyper::body::Incoming) -> Result<u64, String> {
    let mut body = body;
    let mut n = 0u64;
    let fut = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("body error: {e}"))?;
            if let Some(d) = frame.data_ref() {
                n += d.len() as u64;
            }
        }
        Ok::<_, String>(n)
    };
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .map_err(|_| "body timed out".to_string())?
}

pub async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Read until the end of a response head (`\r\n\r\n`) and return it; whatever followed it in
/// the same reads is returned too.
pub async fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let fut = async {
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = buf.split_off(i + 4);
                return (String::from_utf8_lossy(&buf).into_owned(), rest);
            }
            let n = s.read(&mut chunk).await.expect("read head");
            assert!(
                n > 0,
                "connection closed before a full head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("response head in time")
}

/// Read until EOF (or a reset) and return everything read.
pub async fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let fut = async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return buf,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, fut).await.expect("EOF in time")
}

/// Write `req` on a fresh connection and return the full answer up to EOF.
pub async fn exchange(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = connect(addr).await;
    s.write_all(req).await.expect("write");
    String::from_utf8_lossy(&read_to_end(&mut s).await).into_owned()
}

/// The status code of a raw response head.
pub fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"))
}

/// A header's value in a raw response head (case-insensitive name).
pub fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The resident set size of this process (the proxy runs in-process), in bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS line")
        * 1024
}

/// Send one HTTP/1.1 request exactly as built (absolute-form stays absolute-form).
pub async fn send_as_is(
    addr: SocketAddr,
    req: http::Request<http_body_util::Full<Bytes>>,
) -> super::Collected {
    let tcp = connect(addr).await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("in time")
        .expect("response");
    super::collect(resp).await.expect("body")
}

/// A WebSocket handshake to the harness upstream's `/ws` (echo), `Host: app`.
pub const WS_HANDSHAKE: &str = "GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

pub async fn websocket_echo(addr: SocketAddr, handshake: &str) {
    let mut s = connect(addr).await;
    s.write_all(handshake.as_bytes()).await.expect("write");
    let (head, rest) = read_head(&mut s).await;
    assert_eq!(status_of(&head), 101, "{head}");
    assert!(header_of(&head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
    assert!(rest.is_empty());
    for msg in [&b"hello through the tunnel"[..], b"second message"] {
        s.write_all(msg).await.expect("write");
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(WAIT, s.read_exact(&mut buf))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(buf, msg);
    }
}
