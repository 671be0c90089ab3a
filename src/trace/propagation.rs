//! Trace context headers: W3C `traceparent` parse and format, B3 (single `b3` header and the
//! `X-B3-*` multi-header form) parse. A small strict implementation instead of the
//! OpenTelemetry propagators: it works on `http::HeaderMap` directly, allocates nothing while
//! parsing, and rejects exactly what the W3C Trace Context spec (level 1, §3.2) says a vendor
//! must not continue: wrong length, version `ff`, all-zero ids, upper-case hex, a flags field
//! that is not two hex digits. A rejected header means "start a new trace", never an error.

use http::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub const B3: HeaderName = HeaderName::from_static("b3");
pub const X_B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const X_B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const X_B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// The caller's span, as read from the request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's sampling decision; `None` when it deferred it (B3 without a sampled flag).
    pub sampled: Option<bool>,
}

/// What the request headers say about the caller's trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extracted {
    /// No trace headers at all.
    None,
    /// Headers present but invalid: start a new trace, and drop `tracestate` (it belongs to a
    /// trace we do not continue).
    Invalid,
    /// A valid W3C parent (`tracestate`, if any, is passed on unchanged).
    W3c(Parent),
    /// A valid B3 parent (only when B3 is accepted).
    B3(Parent),
    /// `b3: 0|1|d` without ids: a new trace with the caller's decision.
    B3Decision(bool),
}

/// Read the caller's context: W3C first (it is what we emit), then B3 when accepted.
pub fn extract(headers: &HeaderMap, accept_b3: bool) -> Extracted {
    let mut all = headers.get_all(TRACEPARENT).iter();
    // Two `traceparent` headers are as good as an invalid one (W3C test suite).
    let w3c = all.next().map(|v| match all.next() {
        None => parse_traceparent(v.as_bytes()),
        Some(_) => None,
    });
    if let Some(Some(p)) = w3c {
        return Extracted::W3c(p);
    }
    if accept_b3 {
        if let Some(v) = headers.get(B3) {
            match parse_b3_single(v.as_bytes()) {
                Some(B3Single::Parent(p)) => return Extracted::B3(p),
                Some(B3Single::Decision(d)) => return Extracted::B3Decision(d),
                None => {}
            }
        } else if let Some(p) = parse_b3_multi(headers) {
            return Extracted::B3(p);
        }
    }
    match w3c {
        Some(_) => Extracted::Invalid,
        None => Extracted::None,
    }
}

/// Remove the B3 headers (after they were accepted: what goes out is W3C only, so a downstream
/// that reads B3 cannot pick up a stale parent).
pub fn remove_b3(headers: &mut HeaderMap) {
    for h in [
        B3,
        X_B3_TRACE_ID,
        X_B3_SPAN_ID,
        X_B3_PARENT_SPAN_ID,
        X_B3_SAMPLED,
        X_B3_FLAGS,
    ] {
        headers.remove(h);
    }
}

/// Parse a `traceparent` value. Version 00 must be exactly 55 bytes; a higher version (not
/// `ff`) may carry more fields after a `-`, and its first four fields are read as version 00.
pub fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    if v.len() < 55 {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    if version == 0xff || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    if version == 0 && v.len() != 55 {
        return None;
    }
    if version > 0 && v.len() > 55 && v[55] != b'-' {
        return None;
    }
    let trace_id: [u8; 16] = hex_array(&v[3..35])?;
    let span_id: [u8; 8] = hex_array(&v[36..52])?;
    let flags = hex_byte(&v[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
    })
}

/// Format a version-00 `traceparent`.
pub fn format_traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> HeaderValue {
    let mut buf = [0u8; 55];
    buf[0] = b'0';
    buf[1] = b'0';
    buf[2] = b'-';
    write_hex(&mut buf[3..35], trace_id);
    buf[35] = b'-';
    write_hex(&mut buf[36..52], span_id);
    buf[52] = b'-';
    buf[53] = b'0';
    buf[54] = if sampled { b'1' } else { b'0' };
    HeaderValue::from_bytes(&buf).expect("hex digits and dashes are valid header bytes")
}

enum B3Single {
    Parent(Parent),
    Decision(bool),
}

/// `b3: {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]` or `b3: {SamplingState}`.
fn parse_b3_single(v: &[u8]) -> Option<B3Single> {
    if let Some(d) = b3_sampling(v) {
        return Some(B3Single::Decision(d));
    }
    let mut parts = v.split(|b| *b == b'-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let span_id: [u8; 8] = hex_array(parts.next()?)?;
    let sampled = match parts.next() {
        None => None,
        Some(s) => Some(b3_sampling(s)?),
    };
    if let Some(parent) = parts.next() {
        let _: [u8; 8] = hex_array(parent)?;
    }
    if parts.next().is_some() || span_id == [0; 8] {
        return None;
    }
    Some(B3Single::Parent(Parent {
        trace_id,
        span_id,
        sampled,
    }))
}

/// `X-B3-TraceId` + `X-B3-SpanId` (+ `X-B3-Sampled`, `X-B3-Flags: 1` = debug = sampled).
fn parse_b3_multi(h: &HeaderMap) -> Option<Parent> {
    let trace_id = b3_trace_id(h.get(X_B3_TRACE_ID)?.as_bytes())?;
    let span_id: [u8; 8] = hex_array(h.get(X_B3_SPAN_ID)?.as_bytes())?;
    if span_id == [0; 8] {
        return None;
    }
    let debug = h.get(X_B3_FLAGS).is_some_and(|v| v.as_bytes() == b"1");
    let sampled = if debug {
        Some(true)
    } else {
        match h.get(X_B3_SAMPLED).map(|v| v.as_bytes()) {
            None => None,
            Some(b"1") | Some(b"true") => Some(true),
            Some(b"0") | Some(b"false") => Some(false),
            Some(_) => return None,
        }
    };
    Some(Parent {
        trace_id,
        span_id,
        sampled,
    })
}

/// A B3 sampling state: `1` or `d` (debug) sample, `0` does not; `None` when `v` is not one
/// (a deferred decision is expressed by leaving the field out).
fn b3_sampling(v: &[u8]) -> Option<bool> {
    match v {
        b"1" | b"d" => Some(true),
        b"0" => Some(false),
        _ => None,
    }
}

/// B3 trace ids are 64 or 128 bits; a 64-bit id is left-padded with zeros.
fn b3_trace_id(v: &[u8]) -> Option<[u8; 16]> {
    let id = match v.len() {
        32 => hex_array::<16>(v)?,
        16 => {
            let low: [u8; 8] = hex_array(v)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            id
        }
        _ => return None,
    };
    (id != [0; 16]).then_some(id)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        // Upper-case hex is invalid in W3C Trace Context (and in B3).
        _ => None,
    }
}

fn hex_byte(v: &[u8]) -> Option<u8> {
    Some(hex_val(v[0])? << 4 | hex_val(v[1])?)
}

fn hex_array<const N: usize>(v: &[u8]) -> Option<[u8; N]> {
    if v.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = hex_byte(&v[2 * i..2 * i + 2])?;
    }
    Some(out)
}

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[(b >> 4) as usize];
        out[2 * i + 1] = DIGITS[(b & 0xf) as usize];
    }
}

/// Lower-case hex of an id, for logs and exemplars.
pub fn hex<const N: usize>(bytes: &[u8; N]) -> String {
    let mut out = vec![0u8; 2 * N];
    write_hex(&mut out, bytes);
    String::from_utf8(out).expect("hex digits are ASCII")
}

#[cfg(test)]
#[path = "propagation_tests.rs"]
mod tests;
