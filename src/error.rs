//! The proxy's own answers. Every policy or transport failure is a `ProxyError` carrying one
//! `ErrorKind` of CONTRACT.md's table; errors travel boxed through the tower stack and
//! `rescue` is the one place where one becomes an HTTP response (hyper must never see an
//! error: it would drop the connection without an answer).
//!
//! One error struct with a kind enum, instead of a type per module, keeps `rescue` a single
//! match and lets the metrics layer label `error_type` without a downcast chain; modules still
//! build their errors with their own context (`with_retry_after`, `with_header`, `source`).

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};

use crate::proxy::body::{self, Body};

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The header that marks an answer made by the proxy rather than the application.
pub const PROXY_ERROR_HEADER: HeaderName = HeaderName::from_static("tracseq-proxy-error");

/// Why an upstream (local app or peer sidecar) could not give an answer; the `kind` label of
/// `tracseq_proxy_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamFailure {
    Connect,
    Timeout,
    Reset,
    Tls,
    Protocol,
}

impl UpstreamFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::Tls => "tls",
            Self::Protocol => "protocol",
        }
    }
}

/// The rows of CONTRACT.md's "Responses the proxy makes itself".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    BadRequest,
    Forbidden,
    HeaderTimeout,
    RateLimited,
    HeadersTooLarge,
    UpstreamUnavailable(UpstreamFailure),
    CircuitOpen,
    Overloaded,
    UpstreamTimeout,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::HeaderTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            Self::CircuitOpen | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The value of the `tracseq-proxy-error` header (and of the `error_type` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::Forbidden => "forbidden",
            Self::HeaderTimeout => "header-timeout",
            Self::RateLimited => "rate-limited",
            Self::HeadersTooLarge => "headers-too-large",
            Self::UpstreamUnavailable(_) => "upstream-unavailable",
            Self::CircuitOpen => "circuit-open",
            Self::Overloaded => "overloaded",
            Self::UpstreamTimeout => "upstream-timeout",
        }
    }
}

/// A failure the proxy answers itself.
#[derive(Debug)]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub retry_after: Option<Duration>,
    pub headers: HeaderMap,
    pub detail: &'static str,
    pub source: Option<BoxError>,
}

impl ProxyError {
    pub fn new(kind: ErrorKind) -> Self {
        Self {
            kind,
            retry_after: None,
            headers: HeaderMap::new(),
            detail: "",
            source: None,
        }
    }

    pub fn upstream(failure: UpstreamFailure, source: impl Into<BoxError>) -> Self {
        Self::new(ErrorKind::UpstreamUnavailable(failure)).with_source(source)
    }

    pub fn with_retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// A short, fixed explanation for the response body (never request data).
    pub fn with_detail(mut self, detail: &'static str) -> Self {
        self.detail = detail;
        self
    }

    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.as_str())?;
        if let ErrorKind::UpstreamUnavailable(why) = self.kind {
            write!(f, " ({})", why.as_str())?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        if let Some(src) = &self.source {
            write!(f, ": {src}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e.as_ref() as &(dyn std::error::Error + 'static))
    }
}

/// The contract kind of any error that reached the top of the stack. Errors that are not a
/// `ProxyError` are classified by what they are (a timer that fired is a timeout; anything
/// else failed talking to the upstream).
pub fn kind_of(err: &(dyn std::error::Error + 'static)) -> ErrorKind {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(p) = e.downcast_ref::<ProxyError>() {
            return p.kind;
        }
        if e.is::<tokio::time::error::Elapsed>() {
            return ErrorKind::UpstreamTimeout;
        }
        cur = e.source();
    }
    ErrorKind::UpstreamUnavailable(UpstreamFailure::Protocol)
}

fn find_proxy_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a ProxyError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(p) = e.downcast_ref::<ProxyError>() {
            return Some(p);
        }
        cur = e.source();
    }
    None
}

/// Turn any error into the proxy's answer: status and `tracseq-proxy-error` from the kind,
/// `Retry-After` and policy headers when the error carries them, a one-line text body.
pub fn rescue(err: &(dyn std::error::Error + 'static)) -> Response<Body> {
    let kind = kind_of(err);
    let found = find_proxy_error(err);
    let mut text = String::with_capacity(64);
    text.push_str(kind.status().canonical_reason().unwrap_or("error"));
    text.push_str(" (");
    text.push_str(kind.as_str());
    text.push(')');
    if let Some(d) = found.map(|p| p.detail).filter(|d| !d.is_empty()) {
        text.push_str(": ");
        text.push_str(d);
    }
    text.push('\n');
    let mut resp = Response::new(body::full(Bytes::from(text)));
    *resp.status_mut() = kind.status();
    let h = resp.headers_mut();
    h.insert(PROXY_ERROR_HEADER, HeaderValue::from_static(kind.as_str()));
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(p) = found {
        if let Some(ra) = p.retry_after {
            // Retry-After is whole seconds; round up so a client never retries too early.
            let secs = ra.as_secs() + u64::from(ra.subsec_nanos() > 0);
            h.insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        for (name, value) in &p.headers {
            h.append(name.clone(), value.clone());
        }
    }
    resp.extensions_mut().insert(kind);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One table for every error → status pair of CONTRACT.md.
    #[test]
    fn every_kind_maps_to_its_contract_status() {
        let table = [
            (ErrorKind::BadRequest, 400, "bad-request"),
            (ErrorKind::Forbidden, 403, "forbidden"),
            (ErrorKind::HeaderTimeout, 408, "header-timeout"),
            (ErrorKind::RateLimited, 429, "rate-limited"),
            (ErrorKind::HeadersTooLarge, 431, "headers-too-large"),
            (
                ErrorKind::UpstreamUnavailable(UpstreamFailure::Connect),
                502,
                "upstream-unavailable",
            ),
            (
                ErrorKind::UpstreamUnavailable(UpstreamFailure::Tls),
                502,
                "upstream-unavailable",
            ),
            (ErrorKind::CircuitOpen, 503, "circuit-open"),
            (ErrorKind::Overloaded, 503, "overloaded"),
            (ErrorKind::UpstreamTimeout, 504, "upstream-timeout"),
        ];
        for (kind, status, name) in table {
            let err: BoxError = Box::new(ProxyError::new(kind));
            let resp = rescue(err.as_ref());
            assert_eq!(resp.status().as_u16(), status, "{kind:?}");
            assert_eq!(resp.headers()[&PROXY_ERROR_HEADER], name, "{kind:?}");
        }
    }

    #[test]
    fn retry_after_rounds_up_and_extra_headers_pass() {
        let err = ProxyError::new(ErrorKind::CircuitOpen)
            .with_retry_after(Duration::from_millis(1500))
            .with_header(
                HeaderName::from_static("ratelimit-policy"),
                HeaderValue::from_static("\"x\";q=1;w=1"),
            );
        let resp = rescue(&err);
        assert_eq!(resp.headers()[RETRY_AFTER], "2");
        assert_eq!(resp.headers()["ratelimit-policy"], "\"x\";q=1;w=1");
    }

    #[test]
    fn foreign_errors_are_classified() {
        let io = std::io::Error::other("boom");
        assert_eq!(
            kind_of(&io),
            ErrorKind::UpstreamUnavailable(UpstreamFailure::Protocol)
        );
        let wrapped = ProxyError::upstream(UpstreamFailure::Reset, io);
        assert_eq!(rescue(&wrapped).status(), StatusCode::BAD_GATEWAY);
    }
}
