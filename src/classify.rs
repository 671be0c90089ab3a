//! The one answer to "was this a failure?" (and of what kind), shared by the circuit breaker,
//! the RED metrics and spans, so that they never disagree about the same request.

use http::StatusCode;

use crate::error::{ErrorKind, UpstreamFailure};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

/// A response the upstream produced: 5xx is a failure of the upstream, 4xx is the caller's
/// problem and says nothing about the upstream's health.
pub fn response(status: StatusCode) -> Outcome {
    if status.is_server_error() {
        Outcome::Failure
    } else {
        Outcome::Success
    }
}

/// An error raised while talking to the upstream. Everything the upstream caused (connect,
/// reset, protocol, TLS, timeouts) counts against it; the proxy's own policy decisions
/// (rate limits, shedding, authorization) say nothing about the upstream and count as neither.
pub fn error(kind: ErrorKind) -> Option<Outcome> {
    match kind {
        ErrorKind::UpstreamUnavailable(_) | ErrorKind::UpstreamTimeout => Some(Outcome::Failure),
        _ => None,
    }
}

/// The `kind` label of `tracseq_proxy_upstream_errors_total` for an upstream-caused error.
pub fn upstream_failure(kind: ErrorKind) -> Option<UpstreamFailure> {
    match kind {
        ErrorKind::UpstreamUnavailable(f) => Some(f),
        ErrorKind::UpstreamTimeout => Some(UpstreamFailure::Timeout),
        _ => None,
    }
}

/// Map a client error to the contract's upstream failure kinds by walking its causes.
pub fn client_error(err: &hyper_util::client::legacy::Error) -> UpstreamFailure {
    exchange_error(err, err.is_connect())
}

/// The same for an error of our HTTP/1.1 pool (`proxy::pool`).
pub fn pool_error(err: &crate::proxy::pool::SendError) -> UpstreamFailure {
    exchange_error(err, err.is_connect())
}

/// `connect`: the error happened while opening the connection (the request never left).
fn exchange_error(err: &(dyn std::error::Error + 'static), connect: bool) -> UpstreamFailure {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut failure = if connect {
        UpstreamFailure::Connect
    } else {
        UpstreamFailure::Protocol
    };
    while let Some(e) = cur {
        if e.is::<rustls::Error>() {
            return UpstreamFailure::Tls;
        }
        if let Some(p) = e.downcast_ref::<crate::error::ProxyError>() {
            if let ErrorKind::UpstreamUnavailable(f) = p.kind {
                return f;
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            match io.kind() {
                K::TimedOut if connect => return UpstreamFailure::Connect,
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof
                    if !connect =>
                {
                    failure = UpstreamFailure::Reset
                }
                _ => {}
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                failure = UpstreamFailure::Reset;
            }
        }
        cur = e.source();
    }
    failure
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(response(StatusCode::OK), Outcome::Success);
        assert_eq!(response(StatusCode::NOT_FOUND), Outcome::Success);
        assert_eq!(
            response(StatusCode::INTERNAL_SERVER_ERROR),
            Outcome::Failure
        );
        assert_eq!(response(StatusCode::SERVICE_UNAVAILABLE), Outcome::Failure);
    }

    #[test]
    fn errors() {
        assert_eq!(error(ErrorKind::UpstreamTimeout), Some(Outcome::Failure));
        assert_eq!(
            error(ErrorKind::UpstreamUnavailable(UpstreamFailure::Connect)),
            Some(Outcome::Failure)
        );
        assert_eq!(error(ErrorKind::RateLimited), None);
        assert_eq!(error(ErrorKind::CircuitOpen), None);
    }
}
