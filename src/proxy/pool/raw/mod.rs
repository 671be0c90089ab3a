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

mod body;
mod head;

pub use self::body::RawBody;
use self::head::{parse_head, Head};

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use bytes::BytesMut;
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use super::{Failure, H1Pool, SendError};
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
    /// Where the fields of the last response head were (scratch for `parse_head`).
    spans: Vec<[usize; 4]>,
    flag: Arc<Flag>,
    waker: Waker,
    /// The connector's TLS generation when the connection was opened.
    pub(super) generation: u64,
}

impl RawConn {
    pub(super) fn new(io: UpstreamIo, generation: u64) -> Self {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        Self {
            io: TokioIo::new(io),
            buf: BytesMut::with_capacity(READ_CHUNK),
            spans: Vec::new(),
            waker: Waker::from(flag.clone()),
            flag,
            generation,
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
                    Ok((io, generation)) => (RawConn::new(io, generation), false),
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
            if let Some(raw) = head.raw {
                resp.extensions_mut().insert(raw);
            }
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
        if let Some(head) = parse_head(&mut conn.buf, &mut conn.spans, head_request)? {
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
