//! The CLIENT span of a request: the proxy's call to the upstream or peer. `Forward` opens it
//! right before sending (the one hook in `proxy::upstream`), which also writes the outgoing
//! `traceparent` naming this span, so the next hop's parent is exactly this call. It ends at
//! response headers, like `http_client_request_duration_seconds`.

use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;

use super::propagation;
use super::{SpanRecord, TraceIds, Tracer};
use crate::error::ErrorKind;
use crate::layers::metrics::{Method, Protocol, TraceExemplar};
use crate::layers::retry::ResendCount;
use crate::layers::trace::span_name;
use crate::proxy::body::Body;
use crate::proxy::Dest;
use http::Request;

/// The CLIENT span of the call to the upstream or peer. `Forward` opens it right before
/// sending (it also writes the outgoing `traceparent`) and ends it at response headers, like
/// `http_client_request_duration_seconds`. Dropped unfinished (the timeout layer gave up on
/// the call), it ends with `error.type = cancelled`.
pub struct ClientSpan {
    ids: Option<TraceIds>,
    record: Option<SpanRecord>,
}

impl ClientSpan {
    pub fn start(req: &mut Request<Body>, dest: &Dest) -> Self {
        let Some(server) = crate::proxy::RequestCtx::of(req).and_then(|c| c.server.as_ref()) else {
            return Self {
                ids: None,
                record: None,
            };
        };
        let parent = server.ids;
        let tracer = parent.sampled.then(|| server.tracer.clone());
        let ids = TraceIds {
            span_id: Tracer::new_span_id(),
            ..parent
        };
        req.headers_mut().insert(
            propagation::TRACEPARENT,
            propagation::format_traceparent(&ids.trace_id, &ids.span_id, ids.sampled),
        );
        let record = tracer.map(|tracer| {
            let method = Method::from_http(req.method());
            let mut attrs = Vec::with_capacity(10);
            attrs.push(KeyValue::new("http.request.method", method.as_str()));
            attrs.push(KeyValue::new(
                "server.address",
                dest.authority.host().to_string(),
            ));
            attrs.push(KeyValue::new("server.port", i64::from(dest.port)));
            // The query is left out: it may carry tokens, and spans leave the machine. The
            // authority is the address connected to, like `server.address` (an h2c request's
            // URI carries the caller's authority instead; HTTP/1's carries the address).
            let uri = req.uri();
            attrs.push(KeyValue::new(
                "url.full",
                format!(
                    "{}://{}{}",
                    uri.scheme_str().unwrap_or("http"),
                    dest.authority.as_str(),
                    uri.path()
                ),
            ));
            attrs.push(KeyValue::new(
                "network.protocol.version",
                Protocol::from_version(req.version()).as_str(),
            ));
            attrs.push(KeyValue::new("tracseq.destination", dest.label));
            if let Some(id) = &dest.identity {
                attrs.push(KeyValue::new("tracseq.peer.identity", id.to_string()));
            }
            // Semconv: only on the second and later attempts, as the ordinal of the resend.
            if let Some(n) = req.extensions().get::<ResendCount>() {
                attrs.push(KeyValue::new("http.request.resend_count", i64::from(n.0)));
            }
            let name = span_name(method, None);
            tracer.start(
                SpanKind::Client,
                name,
                ids,
                Some((parent.span_id, false)),
                attrs,
            )
        });
        Self {
            ids: Some(ids),
            record,
        }
    }

    /// The exemplar for `http_client_request_duration_seconds` (sampled calls only).
    pub fn exemplar(&self) -> Option<TraceExemplar> {
        self.record
            .as_ref()
            .and(self.ids.as_ref())
            .map(|ids| ids.exemplar())
    }

    /// End at response headers. Semconv: on CLIENT spans 4xx and 5xx are errors.
    pub fn end_response(mut self, status: http::StatusCode) {
        if let Some(mut span) = self.record.take() {
            span.set(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
            if status.is_client_error() || status.is_server_error() {
                span.set(KeyValue::new("error.type", status.as_str().to_string()));
                span.error();
            }
            span.end();
        }
    }

    /// End with a failure to get a response (connect, reset, TLS...).
    pub fn end_error(mut self, kind: ErrorKind) {
        if let Some(mut span) = self.record.take() {
            span.set(KeyValue::new("error.type", kind.as_str()));
            span.error();
            span.end();
        }
    }
}

impl ClientSpan {
    /// End a call that never completed: the request timeout fired (`timed_out`) or the caller
    /// went away.
    pub fn end_unfinished(self, timed_out: bool) {
        if timed_out {
            self.end_error(ErrorKind::UpstreamTimeout);
        }
        // Otherwise `Drop` records it as cancelled.
    }
}

impl Drop for ClientSpan {
    fn drop(&mut self) {
        if let Some(mut span) = self.record.take() {
            span.set(KeyValue::new("error.type", "cancelled"));
            span.error();
            span.end();
        }
    }
}
