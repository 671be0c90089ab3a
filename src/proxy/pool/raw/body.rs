//! The response body of a bodiless exchange, framed as its head said.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::uri::Authority;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Frame, SizeHint};

use super::head::{Chunk, Framing};
use super::{eof, protocol, RawConn, RawError, MAX_HEADERS, MAX_LINE};
use crate::error::BoxError;
use crate::proxy::pool::H1Pool;

/// A response body read from a connection of our own; the connection goes back to the pool
/// at its end (when reusable), and is closed if the body is dropped before.
pub struct RawBody {
    pub(super) conn: Option<RawConn>,
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
    pub(super) pool: H1Pool,
    pub(super) authority: Authority,
}

impl RawBody {
    pub(super) fn release_if_done(&mut self) {
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
