//! The HTTP/1.1 response: head and body framing, with hyper's server rules (RFC 9112 §6):
//! - no body after HEAD, 204 and 304; no `Content-Length` on 204 and 304;
//! - `Content-Length` from the response, else from a body of known size (0 included), else
//!   `Transfer-Encoding: chunked`; a response that names both is refused;
//! - trailers only in chunked bodies, and only the fields the `Trailer` header announced;
//! - `date` when the response has none; `connection: close` when the connection ends after it.

use std::cell::RefCell;
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use http::header::{self, HeaderName};
use http::response::Parts;
use http::{HeaderMap, StatusCode};
use http_body::{Frame, SizeHint};

/// Data frames at least this large are written from their own buffer instead of copied.
const COPY_LIMIT: usize = 16 * 1024;

const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\ntracseq-proxy-error: bad-request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 26\r\nconnection: close\r\n\r\nBad Request (bad-request)\n";

/// The answer to a head httparse accepted but `http` did not (a field value or target it
/// refuses): 400, and the connection closes.
pub fn bad_request(out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(BAD_REQUEST);
}

/// How the response body is delimited on the wire.
#[derive(Debug, PartialEq, Eq)]
pub enum Framing {
    /// Nothing follows the head.
    Empty,
    Length(u64),
    /// Chunked; trailers are sent for these names only.
    Chunked(Vec<HeaderName>),
}

/// Writes the response head into `out`. Returns the body framing and whether the
/// connection stays open after this response; `Err` for a head HTTP/1.1 cannot carry
/// (a 1xx status, an invalid or conflicting length).
pub fn head(
    out: &mut Vec<u8>,
    parts: &Parts,
    hint: SizeHint,
    is_head: bool,
    mut keep_alive: bool,
) -> Result<(Framing, bool), ()> {
    let status = parts.status;
    if status.is_informational() {
        return Err(());
    }
    let no_length = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let can_body = !is_head && !no_length;
    let known = hint.exact();
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        let reason = status.canonical_reason().unwrap_or("<none>");
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut wrote_date = false;
    let mut wrote_close = false;
    let mut trailers = Vec::new();
    for (name, value) in parts.headers.iter() {
        let v = value.as_bytes();
        if *name == header::CONTENT_LENGTH {
            // An empty body is sent as `content-length: 0` whatever the field says, as
            // hyper does; HEAD keeps the length of the body it does not send.
            if no_length || (known == Some(0) && !is_head) {
                continue;
            }
            let n = content_length(v)?;
            if chunked || length.is_some_and(|l| l != n) {
                return Err(());
            }
            if length.is_some() {
                continue;
            }
            length = Some(n);
        } else if *name == header::TRANSFER_ENCODING {
            if !can_body {
                continue;
            }
            if length.is_some() {
                return Err(());
            }
            chunked = true;
            field(out, name, v);
            let last = v.rsplit(|b| *b == b',').next().unwrap_or_default();
            if !last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                // `chunked` must be the last coding, or the body has no end.
                out.truncate(out.len() - 2);
                out.extend_from_slice(b", chunked\r\n");
            }
            continue;
        } else if *name == header::CONNECTION {
            if has_token(v, b"close") {
                keep_alive = false;
                wrote_close = true;
            }
        } else if *name == header::DATE {
            wrote_date = true;
        } else if *name == header::TRAILER {
            if !can_body {
                continue;
            }
            let names = v.split(|b| *b == b',').map(<[u8]>::trim_ascii);
            trailers.extend(names.filter_map(|n| HeaderName::from_bytes(n).ok()));
        }
        field(out, name, v);
    }
    if length.is_none() && !chunked && !no_length {
        match known {
            Some(0) if is_head => {}
            Some(n) => {
                length = Some(n);
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            None if can_body => {
                chunked = true;
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            }
            None => {}
        }
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        DATE.with(|d| out.extend_from_slice(d.borrow_mut().now()));
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive && !wrote_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let framing = match (can_body, chunked, length) {
        (false, _, _) | (true, false, Some(0)) => Framing::Empty,
        (true, true, _) => Framing::Chunked(trailers),
        (true, false, Some(n)) => Framing::Length(n),
        // Only reached with a known length or chunked: see above.
        (true, false, None) => return Err(()),
    };
    Ok((framing, keep_alive))
}

fn field(out: &mut Vec<u8>, name: &HeaderName, value: &[u8]) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// A `Content-Length` value: digits, or a list of equal ones ("2, 2").
fn content_length(v: &[u8]) -> Result<u64, ()> {
    let mut out = None;
    for part in v.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(());
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if out.is_some_and(|o| o != n) {
            return Err(());
        }
        out = Some(n);
    }
    out.ok_or(())
}

/// Frames the body's data as the head announced.
pub struct BodyEncoder {
    framing: Framing,
    trailers: Option<HeaderMap>,
}

impl BodyEncoder {
    pub fn new(framing: Framing) -> Self {
        Self {
            framing,
            trailers: None,
        }
    }

    pub fn is_done(&self) -> bool {
        self.framing == Framing::Empty
    }

    /// Adds one frame to `out`. A large data frame is returned instead, to be written after
    /// `out`, followed by what `after_direct` adds.
    pub fn frame(&mut self, out: &mut Vec<u8>, frame: Frame<Bytes>) -> io::Result<Option<Bytes>> {
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    self.trailers = Some(t);
                }
                return Ok(None);
            }
        };
        let len = data.len();
        match &mut self.framing {
            Framing::Empty => return Ok(None),
            Framing::Length(left) => {
                if len as u64 > *left {
                    return Err(invalid("response body longer than its content-length"));
                }
                *left -= len as u64;
            }
            Framing::Chunked(_) => {
                if len == 0 {
                    // An empty chunk would end the body.
                    return Ok(None);
                }
                out.extend_from_slice(format!("{len:x}\r\n").as_bytes());
            }
        }
        if len >= COPY_LIMIT {
            return Ok(Some(data));
        }
        out.extend_from_slice(data.chunk());
        self.after_direct(out);
        Ok(None)
    }

    /// What follows a data frame written on its own.
    pub fn after_direct(&self, out: &mut Vec<u8>) {
        if matches!(self.framing, Framing::Chunked(_)) {
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Ends the body: the last chunk (and announced trailers), or a check that every
    /// announced byte was sent.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        match &self.framing {
            Framing::Empty => Ok(()),
            Framing::Length(0) => Ok(()),
            Framing::Length(_) => Err(invalid("response body shorter than its content-length")),
            Framing::Chunked(allowed) => {
                out.extend_from_slice(b"0\r\n");
                if let Some(t) = &self.trailers {
                    for (name, value) in t.iter().filter(|(n, _)| allowed.contains(n)) {
                        field(out, name, value.as_bytes());
                    }
                }
                out.extend_from_slice(b"\r\n");
                Ok(())
            }
        }
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The `date` value, formatted once per second per thread.
struct CachedDate {
    second: u64,
    text: Vec<u8>,
}

impl CachedDate {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text.clear();
            self.text
                .extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
        }
        &self.text
    }
}

thread_local! {
    static DATE: RefCell<CachedDate> = const {
        RefCell::new(CachedDate { second: 0, text: Vec::new() })
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;

    fn encode(
        resp: Response<()>,
        hint: SizeHint,
        is_head: bool,
        keep: bool,
    ) -> (String, Framing, bool) {
        let (parts, ()) = resp.into_parts();
        let mut out = Vec::new();
        let (f, k) = head(&mut out, &parts, hint, is_head, keep).expect("encodes");
        let text = String::from_utf8(out).unwrap();
        let text = text
            .lines()
            .filter(|l| !l.starts_with("date: "))
            .collect::<Vec<_>>()
            .join("\n");
        (text, f, k)
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> Response<()> {
        let mut r = Response::builder().status(status);
        for (n, v) in headers {
            r = r.header(*n, *v);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn lengths_from_field_or_body() {
        let (t, f, k) = encode(
            resp(200, &[("content-length", "2")]),
            SizeHint::with_exact(2),
            false,
            true,
        );
        assert_eq!(t, "HTTP/1.1 200 OK\ncontent-length: 2\n");
        assert_eq!((f, k), (Framing::Length(2), true));
        let (t, f, _) = encode(resp(404, &[]), SizeHint::with_exact(5), false, true);
        assert_eq!(t, "HTTP/1.1 404 Not Found\ncontent-length: 5\n");
        assert_eq!(f, Framing::Length(5));
        let (t, f, _) = encode(resp(200, &[]), SizeHint::default(), false, true);
        assert_eq!(t, "HTTP/1.1 200 OK\ntransfer-encoding: chunked\n");
        assert_eq!(f, Framing::Chunked(vec![]));
        let (t, f, _) = encode(
            resp(200, &[("content-length", "7")]),
            SizeHint::with_exact(0),
            false,
            true,
        );
        assert_eq!(t, "HTTP/1.1 200 OK\ncontent-length: 0\n");
        assert_eq!(f, Framing::Empty);
    }

    #[test]
    fn no_body_after_head_204_304() {
        let (t, f, _) = encode(
            resp(200, &[("content-length", "9")]),
            SizeHint::with_exact(0),
            true,
            true,
        );
        assert_eq!(t, "HTTP/1.1 200 OK\ncontent-length: 9\n");
        assert_eq!(f, Framing::Empty);
        let (t, f, _) = encode(resp(200, &[]), SizeHint::default(), true, true);
        assert_eq!(t, "HTTP/1.1 200 OK\n");
        assert_eq!(f, Framing::Empty);
        for s in [204, 304] {
            let (t, f, _) = encode(
                resp(
                    s,
                    &[("content-length", "3"), ("transfer-encoding", "chunked")],
                ),
                SizeHint::default(),
                false,
                true,
            );
            assert!(
                !t.contains("content-length") && !t.contains("transfer-encoding"),
                "{t}"
            );
            assert_eq!(f, Framing::Empty);
        }
    }

    #[test]
    fn close_and_conflicts() {
        let (t, _, k) = encode(resp(200, &[]), SizeHint::with_exact(0), false, false);
        assert!(t.contains("\nconnection: close\n"), "{t}");
        assert!(!k);
        let (t, _, k) = encode(
            resp(200, &[("connection", "Close")]),
            SizeHint::with_exact(0),
            false,
            true,
        );
        assert_eq!(t.matches("onnection").count(), 1, "{t}");
        assert!(!k);
        let (parts, ()) = resp(
            200,
            &[("content-length", "2"), ("transfer-encoding", "chunked")],
        )
        .into_parts();
        assert!(head(&mut Vec::new(), &parts, SizeHint::default(), false, true).is_err());
        let (parts, ()) = resp(200, &[("content-length", "x")]).into_parts();
        assert!(head(&mut Vec::new(), &parts, SizeHint::default(), false, true).is_err());
        let (parts, ()) = resp(103, &[]).into_parts();
        assert!(head(&mut Vec::new(), &parts, SizeHint::default(), false, true).is_err());
        let (t, f, _) = encode(
            resp(200, &[("transfer-encoding", "gzip")]),
            SizeHint::default(),
            false,
            true,
        );
        assert!(t.contains("transfer-encoding: gzip, chunked"), "{t}");
        assert!(matches!(f, Framing::Chunked(_)));
    }

    #[test]
    fn chunks_and_trailers() {
        let mut enc = BodyEncoder::new(Framing::Chunked(vec![HeaderName::from_static(
            "grpc-status",
        )]));
        let mut out = Vec::new();
        assert!(enc
            .frame(&mut out, Frame::data(Bytes::from_static(b"hello")))
            .unwrap()
            .is_none());
        assert!(enc
            .frame(&mut out, Frame::data(Bytes::new()))
            .unwrap()
            .is_none());
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        t.insert("x-secret", "1".parse().unwrap());
        enc.frame(&mut out, Frame::trailers(t)).unwrap();
        enc.finish(&mut out).unwrap();
        assert_eq!(out, b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n");
    }

    #[test]
    fn length_is_enforced() {
        let mut enc = BodyEncoder::new(Framing::Length(3));
        let mut out = Vec::new();
        assert!(enc
            .frame(&mut out, Frame::data(Bytes::from_static(b"ab")))
            .unwrap()
            .is_none());
        assert!(enc.finish(&mut out).is_err());
        assert!(enc
            .frame(&mut out, Frame::data(Bytes::from_static(b"cd")))
            .is_err());
        let big = Bytes::from(vec![b'x'; COPY_LIMIT]);
        let mut enc = BodyEncoder::new(Framing::Length(COPY_LIMIT as u64));
        assert_eq!(
            enc.frame(&mut out, Frame::data(big.clone())).unwrap(),
            Some(big)
        );
        enc.finish(&mut out).unwrap();
    }
}
