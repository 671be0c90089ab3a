//! HTTP/1.1 requests without a body, served by the proxy itself.
//!
//! Most requests a sidecar sees are heads alone (GET, HEAD, DELETE, bodiless POST). For those
//! this loop reads and parses the head (httparse, as hyper does), calls the stack and writes
//! the answer (`encode`), with none of hyper's dispatcher around it. The first request it
//! does not take — a body (`Content-Length` other than 0, any `Transfer-Encoding`), `Expect`,
//! `Upgrade`, CONNECT, HTTP/1.0, the HTTP/2 preface, anything httparse or `http` refuses, or a
//! head larger than `FAST_HEAD_BYTES` — ends the loop: the connection, with every byte read so
//! far (`Prefixed`), goes to hyper for the rest of its life. Body framing, and with it request
//! smuggling, is therefore never decided here: a request this loop serves has no body by
//! construction, and anything ambiguous is hyper's, answered as before.
//!
//! What hyper's HTTP/1 server did for these requests is kept: a client that closes while its
//! request is in flight cancels it; requests may be pipelined; `Connection: close` (the
//! request's or the response's) and a drain end the connection after the answer, which then
//! says `connection: close`; `date` is added; responses to HEAD and 204/304 carry no body.

mod encode;
mod head;
mod prefixed;

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::io::poll_read_buf;

pub use prefixed::Prefixed;

use head::{take, Field, Parsed};

use super::body::{self, Body};
use super::drain::Drain;
use super::{ConnMeta, RequestCtx};

/// Largest head this loop serves or waits for; a longer one (even complete in the buffer)
/// goes to hyper, which allows up to the listener's limit and answers 431 beyond it.
const FAST_HEAD_BYTES: usize = 16 * 1024;
/// What an HTTP/2 connection with prior knowledge opens with (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `buf` (the start of a connection) is, or may still become, the HTTP/2 preface.
pub fn may_be_h2_preface(buf: &[u8]) -> bool {
    let n = buf.len().min(H2_PREFACE.len());
    buf[..n] == H2_PREFACE[..n]
}
/// Pipelined bytes read ahead while a request is in flight; beyond this the client waits.
const READ_AHEAD: usize = 64 * 1024;
/// Fields per request; the listener's own limit (`max_headers`) is at most this.
const MAX_FIELDS: usize = 100;
/// Fields the stack adds to a request on its way through (outbound: `x-request-id`, and
/// `traceparent` when tracing; inbound: `x-forwarded-for`, `-proto` and, over mTLS,
/// `x-forwarded-client-cert`). A map sized to the parsed fields alone grew, and rehashed,
/// on every request of the benchmark's inbound sidecar (~1,600 instructions). Reserving
/// more would push common maps from 6 usable slots to 12 (1,248 bytes, beyond glibc's
/// per-thread cache) when they never need it.
const ADDED_FIELDS: usize = 2;

/// How the loop ended.
pub enum Next {
    /// The connection is done (closed by either side, or it must close now).
    Close,
    /// A request this loop does not take is at the front of the buffer: hyper goes on.
    /// `fresh`: no request was served yet, so the bytes may still be the HTTP/2 preface;
    /// after one, the connection is HTTP/1.1 for good.
    HandOff { fresh: bool },
}

/// Connection-long state of the loop (buffers are reused request after request).
pub struct Conn<'a, I, S> {
    pub io: &'a mut I,
    pub buf: &'a mut BytesMut,
    pub stack: S,
    pub meta: Arc<ConnMeta>,
    pub drain: &'a Drain,
    /// Fields allowed per request on this listener (beyond them hyper answers 431).
    pub max_headers: usize,
    fields: Vec<Field>,
    out: Vec<u8>,
}

impl<'a, I, S> Conn<'a, I, S>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
    S: Send + 'static,
{
    pub fn new(
        io: &'a mut I,
        buf: &'a mut BytesMut,
        stack: S,
        meta: Arc<ConnMeta>,
        drain: &'a Drain,
        max_headers: usize,
    ) -> Self {
        Self {
            io,
            buf,
            stack,
            meta,
            drain,
            max_headers: max_headers.min(MAX_FIELDS),
            fields: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Serves requests until the connection ends or a request must go to hyper.
    pub async fn run(mut self) -> io::Result<Next> {
        let mut drained = pin!(self.drain.signaled());
        let mut fresh = true;
        loop {
            if !self.buf.is_empty() {
                match self.parse() {
                    Some(Ok(parsed)) => {
                        fresh = false;
                        if !self.serve(parsed).await? {
                            return Ok(Next::Close);
                        }
                        continue;
                    }
                    Some(Err(())) => return Ok(Next::HandOff { fresh }),
                    None if self.buf.len() >= FAST_HEAD_BYTES => {
                        return Ok(Next::HandOff { fresh })
                    }
                    None => {}
                }
            }
            reserve(self.buf);
            // Between requests a drain closes the connection; a head already begun is read
            // to its end and answered first.
            let idle = self.buf.is_empty();
            let n = tokio::select! {
                biased;
                _ = drained.as_mut(), if idle => return Ok(Next::Close),
                n = poll_fn(|cx| poll_read_buf(Pin::new(&mut *self.io), cx, &mut *self.buf)) => n?,
            };
            if n == 0 {
                // The client closed (or `TimedIo` ended an idle connection).
                return Ok(Next::Close);
            }
        }
    }

    /// The head at the front of the buffer: `None` while incomplete, `Some(Err)` when hyper
    /// must take it.
    fn parse(&mut self) -> Option<Result<Parsed, ()>> {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut []);
        let buf: &[u8] = self.buf;
        let head_len = match req.parse_with_uninit_headers(buf, &mut fields[..self.max_headers]) {
            Ok(httparse::Status::Complete(n)) if n <= FAST_HEAD_BYTES => n,
            Ok(httparse::Status::Complete(_)) => return Some(Err(())),
            Ok(httparse::Status::Partial) => return None,
            Err(_) => return Some(Err(())),
        };
        Some(take(
            &req,
            head_len,
            buf.as_ptr() as usize,
            &mut self.fields,
        ))
    }

    /// One request and its answer; `false` when the connection must close after it.
    async fn serve(&mut self, parsed: Parsed) -> io::Result<bool> {
        let head = self.buf.split_to(parsed.head_len).freeze();
        let is_head = parsed.method == Method::HEAD;
        let req = match self.request(&head, parsed.method, parsed.path) {
            Ok(req) => req,
            Err(()) => {
                // Fields and target passed httparse but not `http`'s stricter rules.
                encode::bad_request(&mut self.out);
                self.write_out().await?;
                return Ok(false);
            }
        };
        // Boxed: with the stack's future named inside this loop's future, rustc cannot prove
        // the connection task `Send` (the `dyn Error` lifetime in the body type becomes
        // higher-ranked); one allocation per request, as hyper's dispatcher makes too.
        //
        // The connection's own copy of the stack is called, not a clone per request: every
        // layer passes readiness down to `Forward`, which is always ready, and keeps its
        // state behind `Arc`s, so a clone would only add a reference count to each of them
        // (and drop it again) on every request. The wait for readiness is not watched (a
        // client that leaves, a drain): a layer that can really be not ready would need it to
        // be.
        let Ok(()) = poll_fn(|cx| self.stack.poll_ready(cx)).await;
        let call: Pin<Box<dyn Future<Output = Response<Body>> + Send>> = Box::pin(Call {
            inner: self.stack.call(req),
        });
        let Some(resp) = self.watching(call).await? else {
            // The client went away while its request was in flight: dropping the call
            // cancels it, as hyper does.
            return Ok(false);
        };
        let keep_alive = !parsed.close && !self.drain.is_draining();
        let (parts, body) = resp.into_parts();
        self.out.clear();
        if parts.status.is_informational() {
            // One answer per request, as with hyper: an interim status cannot be it.
            tracing::warn!(status = %parts.status, "interim status as the final answer; sending 500");
            encode::internal_error(&mut self.out);
            self.write_out().await?;
            return Ok(false);
        }
        let allow = encode::Allow {
            is_head,
            keep_alive,
            trailers: parsed.trailers,
        };
        let Ok((framing, keep_alive)) =
            encode::head(&mut self.out, &parts, body.size_hint(), allow)
        else {
            tracing::warn!(status = %parts.status, "response head cannot be sent over HTTP/1.1; closing");
            return Ok(false);
        };
        self.body(framing, body).await?;
        Ok(keep_alive)
    }

    fn request(
        &mut self,
        head: &Bytes,
        method: Method,
        path: (usize, usize),
    ) -> Result<Request<Body>, ()> {
        let uri = Uri::from_maybe_shared(head.slice(path.0..path.1)).map_err(|_| ())?;
        let mut headers = HeaderMap::with_capacity(self.fields.len() + ADDED_FIELDS);
        for f in self.fields.drain(..) {
            let value =
                HeaderValue::from_maybe_shared(head.slice(f.value.0..f.value.1)).map_err(|_| ())?;
            headers.append(f.name, value);
        }
        let mut req = Request::new(body::empty());
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        req.extensions_mut().insert(RequestCtx {
            meta: Some(self.meta.clone()),
            // `head::take` passed no upgrade to this loop.
            no_upgrade: true,
            ..RequestCtx::default()
        });
        Ok(req)
    }

    /// Writes the response body in the framing the head announced. Frames that are ready
    /// together leave in one write; the buffer is flushed whenever the body has to wait.
    async fn body(&mut self, framing: encode::Framing, body: Body) -> io::Result<()> {
        let mut body = pin!(body);
        let mut enc = encode::BodyEncoder::new(framing);
        if enc.is_done() {
            // HEAD, 204, 304: nothing may follow the head; the body is dropped unread.
            return self.write_out().await;
        }
        loop {
            let ready = poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
            let frame = match ready {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    self.write_out().await?;
                    let next = poll_fn(|cx| body.as_mut().poll_frame(cx));
                    match self.watching(next).await? {
                        Some(frame) => frame,
                        None => return Err(gone()),
                    }
                }
            };
            match frame {
                None => {
                    enc.finish(&mut self.out)?;
                    return self.write_out().await;
                }
                Some(Err(e)) => {
                    // Ending without the rest (no last chunk, fewer bytes than announced)
                    // tells the client the answer is cut; the connection cannot be reused.
                    let _ = self.write_out().await;
                    return Err(io::Error::other(e));
                }
                Some(Ok(frame)) => {
                    if let Some(big) = enc.frame(&mut self.out, frame)? {
                        self.write_out().await?;
                        self.io.write_all(&big).await?;
                        enc.after_direct(&mut self.out);
                    }
                }
            }
        }
    }

    async fn write_out(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
        }
        self.io.flush().await
    }

    /// Awaits `fut` while watching the client's side of the connection: bytes that arrive
    /// are kept (pipelined requests); `None` when the client closed or failed.
    async fn watching<F: Future>(&mut self, fut: F) -> io::Result<Option<F::Output>> {
        let mut fut = pin!(fut);
        let io = &mut *self.io;
        let buf = &mut *self.buf;
        let mut open = true;
        poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(Some(out)));
            }
            while open && buf.len() < READ_AHEAD {
                reserve(buf);
                match poll_read_buf(Pin::new(&mut *io), cx, buf) {
                    // A client that sent pipelined requests and then half-closed still
                    // gets their answers; like hyper, only an end of input with nothing
                    // left to serve cancels.
                    Poll::Ready(Ok(0)) if !buf.is_empty() => open = false,
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ok(None)),
                    Poll::Ready(Ok(_)) => {}
                    Poll::Pending => break,
                }
            }
            Poll::Pending
        })
        .await
    }
}

pin_project_lite::pin_project! {
    /// The stack's call with its (infallible) result unwrapped.
    struct Call<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future<Output = Result<Response<Body>, Infallible>>> Future for Call<F> {
    type Output = Response<Body>;
    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Response<Body>> {
        match self.project().inner.poll(cx) {
            Poll::Ready(Ok(resp)) => Poll::Ready(resp),
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Poll::Pending,
        }
    }
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(8 * 1024);
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "client closed mid-response",
    )
}

#[cfg(test)]
mod tests;
