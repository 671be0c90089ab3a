//! An upstream's response fields kept as the bytes they arrived in.
//!
//! The raw HTTP/1.1 pool (`pool::raw`) parses a response head with `httparse`; between there
//! and the HTTP/1.1 encoder no layer reads a response field (retries, the breaker, metrics
//! and traces look at the status and the extensions; the stack only adds `x-request-id`).
//! Building a `HeaderMap` (a `HeaderName` and a shared `HeaderValue` per field, hashed into
//! the map, dropped again after the encoder walked it) was about 2,000 instructions per
//! response and sidecar. So the pool leaves the fields as spans of the head's bytes in the
//! response's extensions, with the hop-by-hop ones already left out, and the response's
//! `HeaderMap` holds only what the stack adds; a name the map holds replaces the upstream's
//! field of that name, as `insert` into a full map did.
//!
//! Responses that go out through hyper (HTTP/2 clients, connections hyper serves) take the
//! fields back into the map first: [`materialize`].

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response};

/// The end-to-end fields of one upstream response head (names lowercased, values as sent,
/// without surrounding whitespace), its `Content-Length` (not among the fields) and whether
/// it carried `Date`.
#[derive(Clone, Debug)]
pub struct RawFields {
    head: Bytes,
    spans: Vec<[u32; 4]>,
    length: Option<u64>,
    has_date: bool,
}

impl RawFields {
    /// `spans` are `[name start, name end, value start, value end]` into `head`. The caller
    /// (the pool's head parser) guarantees what `httparse` checked: names are lowercase
    /// tokens, values hold no control characters but tab.
    pub(crate) fn new(
        head: Bytes,
        spans: Vec<[u32; 4]>,
        length: Option<u64>,
        has_date: bool,
    ) -> Self {
        debug_assert!(spans
            .iter()
            .all(|&[n0, n1, v0, v1]| n0 < n1 && n1 <= v0 && v0 <= v1 && v1 as usize <= head.len()));
        Self {
            head,
            spans,
            length,
            has_date,
        }
    }

    /// The fields in the order they arrived: (lowercase name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans.iter().map(|&[n0, n1, v0, v1]| {
            (
                &self.head[n0 as usize..n1 as usize],
                &self.head[v0 as usize..v1 as usize],
            )
        })
    }

    /// The upstream's `Content-Length`, when it framed the body by one.
    pub fn length(&self) -> Option<u64> {
        self.length
    }

    /// Whether the upstream sent `Date`.
    pub fn has_date(&self) -> bool {
        self.has_date
    }

    /// The fields as a map, then `map`'s own entries on top (a name in `map` replaces the
    /// upstream's values of that name).
    fn into_map(self, map: HeaderMap) -> HeaderMap {
        let mut out = HeaderMap::with_capacity(self.spans.len() + map.len() + 1);
        for span in &self.spans {
            // Checked by httparse already; a field `http` still refused could not be sent.
            if let Ok((name, value)) = field_at(&self.head, span.map(|x| x as usize)) {
                out.append(name, value);
            }
        }
        if let Some(n) = self.length {
            out.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        if !map.is_empty() {
            out.extend(map);
        }
        out
    }
}

/// The field at `[name start, name end, value start, value end]` of `head`, the value sharing
/// `head`'s buffer (as hyper's parsed values do).
pub(crate) fn field_at(
    head: &Bytes,
    [n0, n1, v0, v1]: [usize; 4],
) -> Result<(HeaderName, HeaderValue), http::Error> {
    let name = HeaderName::from_bytes(&head[n0..n1])?;
    let value = HeaderValue::from_maybe_shared(head.slice(v0..v1))?;
    Ok((name, value))
}

/// Moves a response's raw upstream fields, if it has any, into its `HeaderMap`: for code that
/// reads the map (hyper's encoders, tests).
pub fn materialize<B>(resp: &mut Response<B>) {
    if let Some(raw) = resp.extensions_mut().remove::<RawFields>() {
        let map = std::mem::take(resp.headers_mut());
        *resp.headers_mut() = raw.into_map(map);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &'static str, length: Option<u64>) -> RawFields {
        // "name: value" lines, as the pool's parser would have found them.
        let head = Bytes::from_static(text.as_bytes());
        let mut spans = Vec::new();
        let mut at = 0;
        for line in text.split("\r\n").filter(|l| !l.is_empty()) {
            let start = text[at..].find(line).expect("line") + at;
            let colon = line.find(':').expect("colon");
            let v0 = start + colon + 2;
            spans.push([
                start as u32,
                (start + colon) as u32,
                v0 as u32,
                (start + line.len()) as u32,
            ]);
            at = start + line.len();
        }
        RawFields::new(head, spans, length, text.contains("date:"))
    }

    #[test]
    fn materialize_keeps_order_repeats_and_lets_the_map_win() {
        let mut resp = Response::new(());
        resp.headers_mut()
            .insert("x-request-id", HeaderValue::from_static("ours"));
        resp.extensions_mut().insert(raw(
            "set-cookie: a=1\r\nx-request-id: theirs\r\nset-cookie: b=2\r\nserver: up\r\n",
            Some(2),
        ));
        materialize(&mut resp);
        assert!(resp.extensions().get::<RawFields>().is_none());
        let h = resp.headers();
        let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"], "repeated fields stay, in order");
        let ids: Vec<_> = h.get_all("x-request-id").iter().collect();
        assert_eq!(ids, ["ours"], "the stack's field replaces the upstream's");
        assert_eq!(h["server"], "up");
        assert_eq!(h["content-length"], "2");
        assert_eq!(h.len(), 5);
    }

    #[test]
    fn materialize_without_raw_fields_changes_nothing() {
        let mut resp = Response::new(());
        resp.headers_mut()
            .insert("a", HeaderValue::from_static("1"));
        materialize(&mut resp);
        assert_eq!(resp.headers().len(), 1);
        let mut resp = Response::new(());
        resp.extensions_mut().insert(raw("", None));
        materialize(&mut resp);
        assert!(resp.headers().is_empty());
    }
}
