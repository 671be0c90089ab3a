//! Where a request leaves for: its URI made absolute for the pool (`http://address/path`),
//! the authority it carries, and the HTTP/2 → HTTP/1.1 header rules.

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri};

use crate::proxy::body::Body;
use crate::proxy::Dest;

pub(super) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Make the request URI absolute (`http://…/path`) and return the authority the caller gave
/// in it. HTTP/1.1 and ALPN calls name `dest` (their pools and hyper-util's client take the
/// address from the URI; the caller's `Host` header goes along untouched). h2c calls keep the
/// caller's authority, which becomes `:authority` (RFC 9113 §8.3.1: an intermediary forwards
/// it); their pool connects to `dest` whatever the URI names. Outbound that is the authority
/// the request was routed by (`:authority` before `Host`); inbound (`host_first`) a `Host`
/// goes first: an HTTP/2 request carrying both comes from a peer sidecar whose ALPN client
/// had to put the peer's address in `:authority` and the name in `Host`. Either way the h2c
/// request leaves without a `Host` that could contradict its `:authority`.
pub(super) fn aim(
    req: &mut Request<Body>,
    dest: &Dest,
    h2c: bool,
    host_first: bool,
) -> Result<Option<Authority>, http::uri::InvalidUriParts> {
    let downstream = req.uri().authority().cloned();
    let authority = if h2c {
        let host = host_authority(req);
        req.headers_mut().remove(http::header::HOST);
        let (first, second) = if host_first {
            (host, downstream.clone())
        } else {
            (downstream.clone(), host)
        };
        first.or(second).unwrap_or_else(|| dest.authority.clone())
    } else {
        dest.authority.clone()
    };
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts)?;
    Ok(downstream)
}

/// The authority an HTTP/2 request named in `Host`, if it has that header.
fn host_authority(req: &Request<Body>) -> Option<Authority> {
    let v = req.headers().get(http::header::HOST)?;
    Authority::try_from(v.as_bytes()).ok()
}

/// HTTP/2 → HTTP/1.1 header rules (RFC 9113 §8.3.1, §8.2.3): the authority becomes `Host`,
/// and split `cookie` fields are joined with "; " (HTTP/1.1 allows one `Cookie` line).
pub(super) fn downgrade_h2_headers(
    h: &mut http::HeaderMap,
    authority: Option<&http::uri::Authority>,
) {
    use http::header::{COOKIE, HOST};
    if !h.contains_key(HOST) {
        if let Some(v) = authority.and_then(|a| http::HeaderValue::from_str(a.as_str()).ok()) {
            h.insert(HOST, v);
        }
    }
    if h.get_all(COOKIE).iter().nth(1).is_some() {
        let joined: Vec<u8> = h
            .get_all(COOKIE)
            .iter()
            .map(http::HeaderValue::as_bytes)
            .collect::<Vec<_>>()
            .join(&b"; "[..]);
        if let Ok(v) = http::HeaderValue::from_bytes(&joined) {
            h.insert(COOKIE, v);
        }
    }
}
