//! The response head: parsed, and how its body is framed (RFC 9112 §6.3).

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};

use super::{protocol, RawError, MAX_HEADERS, MAX_HEAD_BYTES};
use crate::proxy::headers;

/// How the response body is delimited.
#[derive(Debug)]
pub(super) enum Framing {
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
}

#[derive(Debug)]
pub(super) enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers(Option<HeaderMap>),
}

pub(super) struct Head {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
}

/// Parse one response head from the front of `buf`, if complete.
/// `spans` is scratch space kept by the connection, so a head costs no zeroed arrays.
pub(super) fn parse_head(
    buf: &mut BytesMut,
    spans: &mut Vec<[usize; 4]>,
    head_request: bool,
) -> Result<Option<Head>, RawError> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut fields,
    );
    let len = match parsed {
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
    // First pass: the framing fields read from the bytes (no lookups in a map afterwards),
    // and where each field is. The second pass builds the map from the head's bytes without
    // copying them: values are slices of one shared buffer, as hyper's are.
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start, start + s.len())
    };
    spans.clear();
    let mut keep_alive = version == Version::HTTP_11;
    let mut chunked_last = None;
    let mut length: Option<u64> = None;
    let mut has_length = false;
    for f in res.headers.iter() {
        let name = f.name;
        let (n0, n1) = at(name.as_bytes());
        let (v0, v1) = at(f.value);
        spans.push([n0, n1, v0, v1]);
        if name.eq_ignore_ascii_case("connection") {
            if headers::list_items(f.value).any(|t| t.eq_ignore_ascii_case(b"close")) {
                keep_alive = false;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding of the last field is what frames the body.
            chunked_last = Some(
                headers::list_items(f.value)
                    .next_back()
                    .is_some_and(|last| last.eq_ignore_ascii_case(b"chunked")),
            );
        } else if name.eq_ignore_ascii_case("content-length") {
            has_length = true;
            for part in headers::list_items(f.value) {
                let n = content_length(part)?;
                if length.is_some_and(|l| l != n) {
                    return Err(protocol("conflicting content-length values"));
                }
                length = Some(n);
            }
        }
    }
    let head = buf.split_to(len).freeze();
    // One spare slot: the stack answers with the request's `x-request-id`.
    let mut headers = HeaderMap::with_capacity(spans.len() + 1);
    for &[n0, n1, v0, v1] in spans.iter() {
        let name = HeaderName::from_bytes(&head[n0..n1]).map_err(|e| protocol(e.to_string()))?;
        let value = HeaderValue::from_maybe_shared(head.slice(v0..v1))
            .map_err(|e| protocol(e.to_string()))?;
        headers.append(name, value);
    }

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

fn content_length(part: &[u8]) -> Result<u64, RawError> {
    headers::length_digits(part).ok_or_else(|| protocol("invalid content-length"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, head_request: bool) -> Result<Option<Head>, RawError> {
        parse_head(
            &mut BytesMut::from(text.as_bytes()),
            &mut Vec::new(),
            head_request,
        )
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
}
