//! The response head: parsed, and how its body is framed (RFC 9112 §6.3).

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::{header, HeaderMap, StatusCode, Version};

use super::{protocol, RawError, MAX_HEADERS, MAX_HEAD_BYTES};
use crate::proxy::headers;
use crate::proxy::raw_fields::{field_at, RawFields};

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
    /// Empty when the fields are in `raw`.
    pub(super) headers: HeaderMap,
    pub(super) raw: Option<RawFields>,
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
    // where each field is, and which fields the response does not pass on (hop-by-hop ones,
    // `Content-Length`, which the encoder writes from the framing).
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
    let mut has_date = false;
    // Fields the raw path leaves out (bit i: field i; at most MAX_HEADERS of them).
    const _: () = assert!(MAX_HEADERS <= 128, "one bit per field in `dropped`");
    let mut dropped = 0u128;
    // A field only the map path handles: the head becomes a `HeaderMap`.
    let mut map_only = false;
    let mut upper = false;
    for (i, f) in res.headers.iter().enumerate() {
        let name = f.name;
        let (n0, n1) = at(name.as_bytes());
        let (v0, v1) = at(f.value);
        spans.push([n0, n1, v0, v1]);
        upper |= name.bytes().any(|b| b.is_ascii_uppercase());
        if name.eq_ignore_ascii_case("content-length") {
            dropped |= 1 << i;
            has_length = true;
            for part in headers::list_items(f.value) {
                let n = content_length(part)?;
                if length.is_some_and(|l| l != n) {
                    return Err(protocol("conflicting content-length values"));
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("date") {
            has_date = true;
        } else if name.eq_ignore_ascii_case("trailer") {
            // It decides which trailers the encoder sends: a rule of the map path.
            map_only = true;
        } else if let Some(hop) = headers::hop_by_hop(name) {
            dropped |= 1 << i;
            if *hop == header::CONNECTION {
                for t in headers::list_items(f.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if !t.eq_ignore_ascii_case(b"keep-alive") {
                        // It names a field to strip: the map path's `strip_hop_by_hop` does.
                        map_only = true;
                    }
                }
            } else if *hop == header::TRANSFER_ENCODING {
                // The last coding of the last field is what frames the body.
                chunked_last = Some(
                    headers::list_items(f.value)
                        .next_back()
                        .is_some_and(|last| last.eq_ignore_ascii_case(b"chunked")),
                );
            } else if *hop == header::TE {
                // Kept as `TE: trailers` or dropped: `strip_hop_by_hop`'s rule.
                map_only = true;
            }
        }
    }

    let no_body = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut drop_length = false;
    let framing = if no_body {
        Framing::Done
    } else if let Some(chunked) = chunked_last {
        // Transfer-Encoding overrides Content-Length, which is not forwarded; a connection
        // that carried both is not trusted for another exchange (RFC 9112 §6.3).
        if has_length {
            length = None;
            drop_length = true;
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
    let raw = !map_only && !status.is_informational();
    if raw && upper {
        // Names go out lowercase, as `HeaderName` writes them.
        for &[n0, n1, _, _] in spans.iter() {
            buf[n0..n1].make_ascii_lowercase();
        }
    }
    let head = buf.split_to(len).freeze();
    let (headers, raw) = if raw {
        let kept = spans
            .iter()
            .enumerate()
            .filter(|&(i, _)| dropped & (1 << i) == 0)
            // Offsets into one read buffer (a few hundred KiB at most): within u32.
            .map(|(_, s)| s.map(|x| x as u32))
            .collect();
        let fields = RawFields::new(head, kept, length, has_date);
        (HeaderMap::new(), Some(fields))
    } else {
        // One spare slot: the stack answers with the request's `x-request-id`.
        let mut map = HeaderMap::with_capacity(spans.len() + 1);
        for &span in spans.iter() {
            let (name, value) = field_at(&head, span).map_err(|e| protocol(e.to_string()))?;
            if !(drop_length && name == header::CONTENT_LENGTH) {
                map.append(name, value);
            }
        }
        (map, None)
    };
    Ok(Some(Head {
        status,
        version,
        headers,
        raw,
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
            !h.headers.contains_key(http::header::CONTENT_LENGTH)
                && h.raw.as_ref().is_some_and(
                    |r| r.length().is_none() && r.iter().all(|(n, _)| n != b"content-length")
                ),
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

    fn raw_of(h: &Head) -> Vec<(String, String)> {
        let raw = h.raw.as_ref().expect("raw fields");
        raw.iter()
            .map(|(n, v)| {
                (
                    String::from_utf8(n.to_vec()).expect("ascii"),
                    String::from_utf8(v.to_vec()).expect("ascii"),
                )
            })
            .collect()
    }

    #[test]
    fn end_to_end_fields_stay_bytes_without_hop_by_hop_ones() {
        let h = head(
            "HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\
             Keep-Alive: timeout=5\r\nDate: Sun, 29 Nov 2026 00:00:00 GMT\r\nX-Request-Id:  theirs \r\n\
             Proxy-Connection: x\r\nUpgrade: h2c\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\r\n",
            false,
        )
        .expect("valid")
        .expect("complete");
        assert!(h.headers.is_empty(), "no map is built");
        let raw = h.raw.as_ref().expect("raw fields");
        assert_eq!(raw.length(), Some(2));
        assert!(raw.has_date());
        let fields = raw_of(&h);
        let want = [
            ("server", "up"),
            ("date", "Sun, 29 Nov 2026 00:00:00 GMT"),
            ("x-request-id", "theirs"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ];
        assert_eq!(
            fields,
            want.map(|(n, v)| (n.to_string(), v.to_string())),
            "lowercase names, trimmed values, in order, hop-by-hop fields left out"
        );
        assert!(matches!(h.framing, Framing::Length(2)) && h.keep_alive);

        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\nX: 1\r\n\r\n",
            false,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(h.raw.as_ref().and_then(|r| r.length()), None, "TE wins");
        assert_eq!(raw_of(&h), [("x".to_string(), "1".to_string())]);
        let h = head("HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n", false)
            .expect("valid")
            .expect("complete");
        assert_eq!(h.raw.as_ref().map(|r| r.length()), Some(None));
    }

    #[test]
    fn fields_with_map_only_rules_build_the_map() {
        for (extra, gone, kept) in [
            (
                "Connection: close, X-Secret\r\nX-Secret: 1\r\n",
                "x-secret",
                None,
            ),
            ("Trailer: grpc-status\r\n", "", Some("trailer")),
            ("TE: trailers\r\n", "", Some("te")),
        ] {
            let text = format!("HTTP/1.1 200 OK\r\nServer: up\r\n{extra}content-length: 2\r\n\r\n");
            let h = head(&text, false).expect("valid").expect("complete");
            assert!(h.raw.is_none(), "{extra:?}: map path");
            assert_eq!(h.headers["server"], "up");
            assert_eq!(h.headers["content-length"], "2");
            if let Some(kept) = kept {
                assert!(h.headers.contains_key(kept), "{extra:?}");
            }
            // The map still holds every field: `strip_hop_by_hop` removes the named one.
            if !gone.is_empty() {
                assert!(h.headers.contains_key(gone));
            }
        }
    }
}
