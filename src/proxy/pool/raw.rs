//! HTTP/1.1 exchanges of requests without a body, written and read by the pool itself.
//!
//! Most calls through a sidecar carry no request body (GET, HEAD, DELETE, bodiless POST).
//! For them hyper's client machinery (a dispatcher, a channel per request, a want/give
//! handshake, its body channel) was a fifth of the outbound sidecar's instructions per
//! request (docs/BENCHMARKS.md, fifth round). Here the request head is written in one go, the
//! response head parsed with `httparse` (the parser hyper uses), and the response body framed
//! by [`RawBody`] per RFC 9112 §6.3: no body (HEAD, 1xx, 204, 304), `Content-Length`,
//! `chunked` (trailers included) or until the connection closes. Requests with a body, and
//! upgrades, stay on hyper's client.
//!
//! An idle connection is polled once when it is put back, with a waker that only raises a
//! flag: any socket event while it idles (the upstream closed it, or sent something it should
//! not have) marks it, and checkout looks again before using a marked one.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::uri::Authority;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use super::{Failure, H1Pool, SendError};
use crate::error::BoxError;
use crate::proxy::body::Body;
use crate::proxy::connect::UpstreamIo;

/// Response head limits, as hyper's client: 100 fields, and a bound on the head's bytes.
const MAX_HEADERS: usize = 100;
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A chunk-size line or trailer line longer than this is not HTTP.
const MAX_LINE: usize = 8 * 1024;
const READ_CHUNK: usize = 8 * 1024;

/// Raised by a socket event on an idle connection.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

pub(super) struct RawConn {
    io: TokioIo<UpstreamIo>,
    buf: BytesMut,
    flag: Arc<Flag>,
    waker: Waker,
}

impl RawConn {
    fn new(io: UpstreamIo) -> Self {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        Self {
            io: TokioIo::new(io),
            buf: BytesMut::with_capacity(READ_CHUNK),
            waker: Waker::from(flag.clone()),
            flag,
        }
    }

    /// Idle and nothing to read (the upstream neither closed it nor sent anything): fit for
    /// a request. Leaves the flag's waker registered for the next socket event.
    fn quiet_now(&mut self) -> bool {
        self.flag.0.store(false, Ordering::Release);
        let mut cx = Context::from_waker(&self.waker);
        let mut byte = [0u8; 1];
        let mut rb = ReadBuf::new(&mut byte);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }

    /// Fit for a request: nothing happened since it went idle, or a look finds it open.
    pub(super) fn usable(&mut self) -> bool {
        !self.flag.0.load(Ordering::Acquire) || self.quiet_now()
    }

    /// The connection for hyper's client, unless bytes are waiting (they would be taken for
    /// an answer).
    pub(super) fn into_io(self) -> Option<UpstreamIo> {
        self.buf.is_empty().then(|| self.io.into_inner())
    }

    /// A connection hyper's client left idle, now ours.
    pub(super) fn from_io(io: UpstreamIo) -> Self {
        Self::new(io)
    }

    /// Read more into the buffer (its spare capacity, not zeroed first); `Ok(0)` at the end
    /// of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// The request head, as hyper writes it: request line in origin form, then the fields.
fn encode(req: &Request<Body>) -> Vec<u8> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut out = Vec::with_capacity(64 + path.len() + 48 * req.headers().len());
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Why an exchange on our own connection failed.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("invalid response from the upstream: {0}")]
    Protocol(String),
}

fn protocol(msg: impl Into<String>) -> RawError {
    RawError::Protocol(msg.into())
}

fn eof(what: &str) -> RawError {
    RawError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the upstream closed the connection {what}"),
    ))
}

/// How the response body is delimited.
#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
}

#[derive(Debug)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers(Option<HeaderMap>),
}

struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

/// Parse one response head from the front of `buf`, if complete.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, RawError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut fields);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(protocol("response head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(protocol(format!("response head: {e}"))),
    };
    let code = res.code.ok_or_else(|| protocol("no status code"))?;
    let status = StatusCode::from_u16(code).map_err(|e| protocol(e.to_string()))?;
    let version = if res.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // One pass: the fields into the map, and the framing fields read from the bytes on
    // the way (no lookups in the map afterwards).
    let mut headers = HeaderMap::with_capacity(res.headers.len());
    let mut keep_alive = version == Version::HTTP_11;
    let mut chunked_last = None;
    let mut length: Option<u64> = None;
    let mut has_length = false;
    for f in res.headers.iter() {
        let name = f.name;
        if name.eq_ignore_ascii_case("connection") {
            if tokens(f.value).any(|t| t.eq_ignore_ascii_case(b"close")) {
                keep_alive = false;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding of the last field is what frames the body.
            chunked_last = Some(
                tokens(f.value)
                    .next_back()
                    .is_some_and(|last| last.eq_ignore_ascii_case(b"chunked")),
            );
        } else if name.eq_ignore_ascii_case("content-length") {
            has_length = true;
            for part in tokens(f.value) {
                let n = content_length(part)?;
                if length.is_some_and(|l| l != n) {
                    return Err(protocol("conflicting content-length values"));
                }
                length = Some(n);
            }
        }
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| protocol(e.to_string()))?;
        let value = HeaderValue::from_bytes(f.value).map_err(|e| protocol(e.to_string()))?;
        headers.append(name, value);
    }
    buf.advance(len);

    let no_body = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Done
    } else if let Some(chunked) = chunked_last {
        // Transfer-Encoding overrides Content-Length, which is not forwarded; a connection
        // that carried both is not trusted for another exchange (RFC 9112 §6.3).
        if has_length {
            headers.remove(http::header::CONTENT_LENGTH);
            keep_alive = false;
        }
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            keep_alive = false;
            Framing::Close
        }
    } else if has_length {
        match length {
            Some(0) => Framing::Done,
            Some(n) => Framing::Length(n),
            None => return Err(protocol("invalid content-length")),
        }
    } else {
        keep_alive = false;
        Framing::Close
    };
    Ok(Some(Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

impl H1Pool {
    /// Exchange a request without a body on a connection of our own (see the module docs).
    pub(super) async fn send_raw(
        &self,
        req: Request<Body>,
        authority: Authority,
    ) -> Result<Response<RawBody>, Failure> {
        let head_request = req.method() == Method::HEAD;
        let wire = encode(&req);
        loop {
            let (mut conn, reused) = match self.raw_checkout(&authority) {
                Some(conn) => (conn, true),
                None => match self.open(&authority).await {
                    Ok(io) => (RawConn::new(io), false),
                    Err(error) => {
                        return Err(Failure {
                            error,
                            unsent: Some(req),
                        })
                    }
                },
            };
            if let Err(e) = write_all(&mut conn, &wire).await {
                // A reused connection the upstream had closed (the close and the request
                // crossed): nothing of the request got through. Try a new one.
                if reused {
                    continue;
                }
                return Err(Failure {
                    error: SendError::Raw(e.into()),
                    unsent: None,
                });
            }
            let head = match read_head(&mut conn, head_request).await {
                Ok(head) => head,
                Err(e) => {
                    return Err(Failure {
                        error: SendError::Raw(e),
                        unsent: None,
                    })
                }
            };
            let mut resp = Response::new(RawBody {
                conn: Some(conn),
                framing: head.framing,
                keep_alive: head.keep_alive,
                pool: self.clone(),
                authority,
            });
            *resp.status_mut() = head.status;
            *resp.version_mut() = head.version;
            *resp.headers_mut() = head.headers;
            resp.body_mut().release_if_done();
            return Ok(resp);
        }
    }

    fn raw_put(&self, authority: Authority, mut conn: RawConn) {
        if !conn.buf.is_empty() || !conn.quiet_now() {
            return;
        }
        self.push_idle(authority, super::Pooled::Raw(conn));
    }
}

async fn write_all(conn: &mut RawConn, wire: &[u8]) -> io::Result<()> {
    conn.io.write_all(wire).await?;
    conn.io.flush().await
}

async fn read_head(conn: &mut RawConn, head_request: bool) -> Result<Head, RawError> {
    loop {
        if let Some(head) = parse_head(&mut conn.buf, head_request)? {
            if head.status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(protocol(
                    "101 Switching Protocols to a request that asked none",
                ));
            }
            // 100 Continue, 102, 103 Early Hints: interim answers, the final one follows.
            if head.status.is_informational() {
                continue;
            }
            return Ok(head);
        }
        let n = poll_fn(|cx| conn.poll_fill(cx)).await?;
        if n == 0 {
            return Err(eof("before the response head"));
        }
    }
}

/// A response body read from a connection of our own; the connection goes back to the pool
/// at its end (when reusable), and is closed if the body is dropped before.
pub struct RawBody {
    conn: Option<RawConn>,
    framing: Framing,
    keep_alive: bool,
    pool: H1Pool,
    authority: Authority,
}

impl RawBody {
    fn release_if_done(&mut self) {
        if matches!(self.framing, Framing::Done) {
            if let Some(conn) = self.conn.take() {
                if self.keep_alive {
                    self.pool.raw_put(self.authority.clone(), conn);
                }
            }
        }
    }

    fn frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, RawError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut self.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) => {
                    if conn.buf.is_empty() && std::task::ready!(conn.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(eof("before the end of the body"))));
                    }
                    let take = conn
                        .buf
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= take as u64;
                    if *left == 0 {
                        self.framing = Framing::Done;
                    }
                    let data = conn.buf.split_to(take).freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close => {
                    if conn.buf.is_empty() && std::task::ready!(conn.poll_fill(cx))? == 0 {
                        self.framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(chunk) => match chunk {
                    Chunk::Size => match line(&mut conn.buf)? {
                        Some(l) => {
                            let size = chunk_size(&l)?;
                            *chunk = if size == 0 {
                                Chunk::Trailers(None)
                            } else {
                                Chunk::Data(size)
                            };
                        }
                        None => {
                            if std::task::ready!(conn.poll_fill(cx))? == 0 {
                                return Poll::Ready(Some(Err(eof("inside a chunked body"))));
                            }
                        }
                    },
                    Chunk::Data(left) => {
                        if conn.buf.is_empty() && std::task::ready!(conn.poll_fill(cx))? == 0 {
                            return Poll::Ready(Some(Err(eof("inside a chunked body"))));
                        }
                        let take = conn
                            .buf
                            .len()
                            .min(usize::try_from(*left).unwrap_or(usize::MAX));
                        *left -= take as u64;
                        if *left == 0 {
                            *chunk = Chunk::DataEnd;
                        }
                        let data = conn.buf.split_to(take).freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Chunk::DataEnd => {
                        if conn.buf.len() < 2 {
                            if std::task::ready!(conn.poll_fill(cx))? == 0 {
                                return Poll::Ready(Some(Err(eof("inside a chunked body"))));
                            }
                            continue;
                        }
                        if &conn.buf[..2] != b"\r\n" {
                            return Poll::Ready(Some(Err(protocol("chunk not followed by CRLF"))));
                        }
                        conn.buf.advance(2);
                        *chunk = Chunk::Size;
                    }
                    Chunk::Trailers(fields) => match line(&mut conn.buf)? {
                        Some(l) if l.is_empty() => {
                            let fields = fields.take();
                            self.framing = Framing::Done;
                            match fields {
                                Some(t) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                                None => return Poll::Ready(None),
                            }
                        }
                        Some(l) => {
                            let map = fields.get_or_insert_with(HeaderMap::new);
                            if map.len() >= MAX_HEADERS {
                                return Poll::Ready(Some(Err(protocol("too many trailers"))));
                            }
                            let (name, value) = trailer(&l)?;
                            map.append(name, value);
                        }
                        None => {
                            if std::task::ready!(conn.poll_fill(cx))? == 0 {
                                return Poll::Ready(Some(Err(eof("inside the trailers"))));
                            }
                        }
                    },
                },
            }
        }
    }
}

/// The non-empty comma-separated elements of a field value, trimmed.
fn tokens(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

fn content_length(part: &[u8]) -> Result<u64, RawError> {
    if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
        return Err(protocol("invalid content-length"));
    }
    std::str::from_utf8(part)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| protocol("invalid content-length"))
}

/// The next CRLF-terminated line (without it), if complete.
fn line(buf: &mut BytesMut) -> Result<Option<Bytes>, RawError> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(i) => {
            let l = buf.split_to(i).freeze();
            buf.advance(2);
            Ok(Some(l))
        }
        None if buf.len() > MAX_LINE => Err(protocol("line too long in a chunked body")),
        None => Ok(None),
    }
}

/// `1a;ext=1` → 26. Extensions are ignored, as RFC 9112 §7.1.1 allows.
fn chunk_size(l: &[u8]) -> Result<u64, RawError> {
    let hex = l.split(|b| *b == b';').next().unwrap_or(&[]);
    let hex = hex.trim_ascii();
    if hex.is_empty() || hex.len() > 15 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err(protocol("invalid chunk size"));
    }
    let s = std::str::from_utf8(hex).map_err(|_| protocol("invalid chunk size"))?;
    u64::from_str_radix(s, 16).map_err(|_| protocol("invalid chunk size"))
}

fn trailer(l: &[u8]) -> Result<(HeaderName, HeaderValue), RawError> {
    let colon = l
        .iter()
        .position(|b| *b == b':')
        .ok_or_else(|| protocol("invalid trailer field"))?;
    let name = HeaderName::from_bytes(&l[..colon]).map_err(|e| protocol(e.to_string()))?;
    let value = HeaderValue::from_bytes(l[colon + 1..].trim_ascii())
        .map_err(|e| protocol(e.to_string()))?;
    Ok((name, value))
}

impl http_body::Body for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = this.frame(cx);
        match &r {
            Poll::Ready(Some(Err(_))) => this.conn = None,
            Poll::Ready(_) => this.release_if_done(),
            Poll::Pending => {}
        }
        r.map(|o| o.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, head_request: bool) -> Result<Option<Head>, RawError> {
        parse_head(&mut BytesMut::from(text.as_bytes()), head_request)
    }

    fn framed(text: &str) -> (Framing, bool) {
        let h = head(text, false)
            .expect("valid head")
            .expect("complete head");
        (h.framing, h.keep_alive)
    }

    #[test]
    fn framing_follows_rfc_9112_section_6_3() {
        let (f, keep) = framed("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n");
        assert!(matches!(f, Framing::Length(5)) && keep);
        let (f, _) = framed("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n");
        assert!(
            matches!(f, Framing::Length(5)),
            "equal repeats are one length"
        );
        let (f, keep) = framed("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert!(matches!(f, Framing::Done) && keep);
        for bad in ["5, 6", "-1", "+5", "5x", "", "99999999999999999999999"] {
            let text = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
            assert!(head(&text, false).is_err(), "content-length {bad:?}");
        }
        let h = head(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
            false,
        )
        .expect("valid")
        .expect("complete");
        assert!(
            matches!(h.framing, Framing::Chunked(_)) && !h.keep_alive,
            "TE wins, no reuse"
        );
        assert!(
            !h.headers.contains_key(http::header::CONTENT_LENGTH),
            "the overridden length is not forwarded"
        );
        let (f, keep) = framed("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
        assert!(matches!(f, Framing::Chunked(_)) && keep);
        let (f, keep) = framed("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
        assert!(
            matches!(f, Framing::Close) && !keep,
            "not chunked last: until close"
        );
        let (f, keep) = framed("HTTP/1.1 200 OK\r\n\r\n");
        assert!(matches!(f, Framing::Close) && !keep);
        for status in ["204 No Content", "304 Not Modified", "100 Continue"] {
            let (f, _) = framed(&format!("HTTP/1.1 {status}\r\ncontent-length: 7\r\n\r\n"));
            assert!(matches!(f, Framing::Done), "{status}: no body");
        }
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n", true)
            .expect("valid")
            .expect("complete");
        assert!(matches!(h.framing, Framing::Done), "HEAD: no body");
        let (_, keep) =
            framed("HTTP/1.1 200 OK\r\nconnection: keep-alive, close\r\ncontent-length: 1\r\n\r\n");
        assert!(!keep);
        let (_, keep) = framed("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n");
        assert!(!keep, "HTTP/1.0 is not reused");
    }

    #[test]
    fn heads_partial_oversized_and_malformed() {
        assert!(head("HTTP/1.1 200 OK\r\ncontent-le", false)
            .expect("no error yet")
            .is_none());
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES + 1));
        assert!(head(&huge, false).is_err(), "unbounded head");
        assert!(head("HTTP/1.1 2000 OK\r\n\r\n", false).is_err());
        assert!(head("HTTP/1.1 200 OK\r\nbad header\r\n\r\n", false).is_err());
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert!(head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), false).is_err());
    }

    #[test]
    fn chunk_sizes_and_trailers() {
        assert_eq!(chunk_size(b"1a").ok(), Some(26));
        assert_eq!(chunk_size(b"1A;name=value").ok(), Some(26));
        assert_eq!(chunk_size(b"0").ok(), Some(0));
        for bad in [&b""[..], b"g", b"-1", b"1 2", b"ffffffffffffffff"] {
            assert!(
                chunk_size(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let (n, v) = trailer(b"grpc-status: 0").expect("trailer");
        assert_eq!((n.as_str(), v.to_str().ok()), ("grpc-status", Some("0")));
        assert!(trailer(b"no colon").is_err());
        let mut buf = BytesMut::from(&b"abc\r\nrest"[..]);
        assert_eq!(line(&mut buf).ok().flatten().as_deref(), Some(&b"abc"[..]));
        assert_eq!(&buf[..], b"rest");
        assert!(line(&mut buf).expect("no error").is_none());
    }
}
