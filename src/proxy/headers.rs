//! Header rules of CONTRACT.md: hop-by-hop headers (RFC 9110 §7.6.1) are not forwarded
//! except for an `Upgrade` handshake, `x-request-id` is kept or generated, `x-forwarded-*` are
//! added, and a caller's `x-forwarded-client-cert` never passes.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

mod hop_by_hop;

pub(crate) use hop_by_hop::hop_by_hop;
pub use hop_by_hop::{is_upgrade, strip_hop_by_hop};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// The non-empty comma-separated elements of a raw field value, trimmed (RFC 9110 §5.6.1).
pub(crate) fn list_items(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// One `Content-Length` number: 1 to 19 digits, nothing else.
pub(crate) fn length_digits(part: &[u8]) -> Option<u64> {
    if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Append the client's address to `x-forwarded-for` and set `x-forwarded-proto`.
/// `client` is the client's IP as a header value (`ConnMeta::client_ip`, formatted once per
/// connection).
pub fn add_forwarded(headers: &mut HeaderMap, client: &HeaderValue, proto: &'static str) {
    let ip = client.clone();
    // Merge every earlier hop (possibly on several header lines) into one comma-separated
    // value (RFC 7239 style list) rather than a second header line, which some apps read only
    // the first of.
    // One look-up for the read and the write.
    match headers.entry(X_FORWARDED_FOR) {
        header::Entry::Vacant(e) => {
            e.insert(ip);
        }
        header::Entry::Occupied(mut e) => {
            let mut prev: Vec<u8> = Vec::new();
            for v in e.iter() {
                if v.is_empty() {
                    continue;
                }
                if !prev.is_empty() {
                    prev.extend_from_slice(b", ");
                }
                prev.extend_from_slice(v.as_bytes());
            }
            let merged = if prev.is_empty() {
                ip
            } else {
                prev.extend_from_slice(b", ");
                prev.extend_from_slice(ip.as_bytes());
                HeaderValue::from_bytes(&prev).unwrap_or(ip)
            };
            // Replaces every earlier line with the one merged value.
            e.insert(merged);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
}

/// The request's id: the caller's `x-request-id` if it is a sane token, else a new random
/// UUIDv4. The value is written back so the upstream sees the same id.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    // One lookup for both the check and the insert.
    match headers.entry(X_REQUEST_ID) {
        header::Entry::Occupied(e) if !e.get().is_empty() && e.get().len() <= 200 => {
            e.get().clone()
        }
        header::Entry::Occupied(mut e) => {
            let v = new_request_id();
            e.insert(v.clone());
            v
        }
        header::Entry::Vacant(e) => {
            let v = new_request_id();
            e.insert(v.clone());
            v
        }
    }
}

fn new_request_id() -> HeaderValue {
    let bits: u128 = rand::random();
    // UUIDv4 layout: version nibble 4, variant bits 10.
    let bits = (bits & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    // One shared allocation: the request and the response each hold a clone.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(uuid_text(bits)))
        .expect("hex and dashes are a valid header value")
}

/// `bits` as 8-4-4-4-12 lowercase hex digits, formatted on the stack a byte at a time: this
/// runs for every request without an id.
fn uuid_text(bits: u128) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 36];
    let mut at = 0;
    for (i, byte) in bits.to_be_bytes().into_iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        out[at] = HEX[usize::from(byte >> 4)];
        out[at + 1] = HEX[usize::from(byte & 0xf)];
        at += 2;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        add_forwarded(&mut h, &HeaderValue::from_static("127.0.0.1"), "https");
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1, 127.0.0.1");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_static("10.0.0.2, 10.0.0.3"),
        );
        add_forwarded(&mut h, &HeaderValue::from_static("127.0.0.1"), "http");
        let all: Vec<_> = h.get_all(X_FORWARDED_FOR).iter().collect();
        assert_eq!(all, ["10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"]);
        // Empty lines add nothing; the field still ends up one line.
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static(""));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static(""));
        add_forwarded(&mut h, &HeaderValue::from_static("::1"), "http");
        let all: Vec<_> = h.get_all(X_FORWARDED_FOR).iter().collect();
        assert_eq!(all, ["::1"]);
    }

    #[test]
    fn request_id_kept_or_generated() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc"));
        assert_eq!(ensure_request_id(&mut h), "abc");
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 36);
        assert_eq!(&id.as_bytes()[14..15], b"4");
        assert_eq!(h[X_REQUEST_ID], id);
        assert_eq!(
            &uuid_text(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210),
            b"01234567-89ab-cdef-fedc-ba9876543210"
        );
        let bits = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128;
        let hex = format!("{bits:032x}");
        let want = format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        );
        assert_eq!(&uuid_text(bits)[..], want.as_bytes());
    }
}
