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

use crate::proxy::headers::{length_digits, list_items};
use crate::proxy::raw_fields::RawFields;

/// Data frames at least this large are written from their own buffer instead of copied.
const COPY_LIMIT: usize = 16 * 1024;

const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\ntracseq-proxy-error: bad-request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 26\r\nconnection: close\r\n\r\nBad Request (bad-request)\n";

/// The answer to a head httparse accepted but `http` did not (a field value or target it
/// refuses): 400, and the connection closes.
pub fn bad_request(out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(BAD_REQUEST);
}

const INTERNAL_ERROR: &[u8] =
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// The answer when the stack's response is an interim (1xx) status, as hyper sends.
pub fn internal_error(out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(INTERNAL_ERROR);
}

/// What the request allows of its answer.
#[derive(Debug, Clone, Copy)]
pub struct Allow {
    /// The request was HEAD: no body follows the head.
    pub is_head: bool,
    /// The connection may stay open after this answer.
    pub keep_alive: bool,
    /// The client sent `TE: trailers`.
    pub trailers: bool,
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
    allow: Allow,
) -> Result<(Framing, bool), ()> {
    let Allow {
        is_head,
        mut keep_alive,
        trailers: trailers_ok,
    } = allow;
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
    if let Some(raw) = parts.extensions.get::<RawFields>() {
        // An upstream's fields as it sent them (hop-by-hop ones left out already); one the
        // stack set in the map replaces the upstream's (`x-request-id`).
        if let Some(n) = raw.length() {
            if !no_length && (known != Some(0) || is_head) {
                length = Some(n);
                write_length(out, n);
            }
        }
        wrote_date = raw.has_date();
        for (name, value) in raw.iter() {
            if !in_map(&parts.headers, name) {
                field(out, name, value);
            }
        }
    }
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
            if length.is_none() {
                // Written as one number, whatever list of equal ones the field held.
                length = Some(n);
                write_length(out, n);
            }
            continue;
        } else if *name == header::TRANSFER_ENCODING {
            if !can_body {
                continue;
            }
            if length.is_some() {
                return Err(());
            }
            chunked = true;
            field(out, name.as_str().as_bytes(), v);
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
            if !trailers_ok {
                // Announced, but this client did not ask for trailers: none are sent.
                field(out, name.as_str().as_bytes(), v);
                continue;
            }
            trailers.extend(list_items(v).filter_map(|n| HeaderName::from_bytes(n).ok()));
        }
        field(out, name.as_str().as_bytes(), v);
    }
    if length.is_none() && !chunked && !no_length {
        match known {
            Some(0) if is_head => {}
            Some(n) => {
                length = Some(n);
                write_length(out, n);
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

fn write_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// One `name: value` line; `name` lowercase, as `HeaderName` and raw fields hold it.
fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Does `map` hold the (lowercase) `name`? The maps that come with raw fields hold what the
/// stack added, one or two names: comparing bytes beats hashing the name.
fn in_map(map: &HeaderMap, name: &[u8]) -> bool {
    if map.keys_len() <= 4 {
        map.keys().any(|k| k.as_str().as_bytes() == name)
    } else {
        std::str::from_utf8(name).is_ok_and(|n| map.contains_key(n))
    }
}

fn has_token(v: &[u8], token: &[u8]) -> bool {
    list_items(v).any(|t| t.eq_ignore_ascii_case(token))
}

/// A `Content-Length` value: digits, or a list of equal ones ("2, 2").
fn content_length(v: &[u8]) -> Result<u64, ()> {
    let mut out = None;
    for part in v.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
        let n = length_digits(part).ok_or(())?;
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
                        field(out, name.as_str().as_bytes(), value.as_bytes());
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
#[path = "encode_tests.rs"]
mod tests;
