//! The proxy's tracer: sampling, ids and span records, handed finished to the OTLP export
//! queue (`telemetry::export`). Spans are built as OpenTelemetry SDK `SpanData` directly
//! instead of going through the SDK's `Tracer`/`Context` machinery: a request's span is
//! opened and closed by one layer, so nothing needs a current-span context, and an unsampled
//! request then costs two random ids and no allocation at all.
//!
//! Sampling is the SDK's `ParentBased(TraceIdRatioBased(ratio))`, re-implemented here with the
//! same arithmetic (so a trace id is sampled by us iff the SDK would sample it): a caller's
//! decision is honoured, a trace that starts here is sampled when the low 63 bits of its
//! trace id fall under `ratio * 2^63`.

pub mod client;
pub mod propagation;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use crate::telemetry::export::SpanSink;

/// The ids of one request's span on one side of the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceIds {
    pub fn exemplar(&self) -> crate::layers::metrics::TraceExemplar {
        crate::layers::metrics::TraceExemplar {
            trace_id: propagation::hex(&self.trace_id),
            span_id: propagation::hex(&self.span_id),
        }
    }
}

/// Shared by every clone of both stacks.
pub struct Tracer {
    /// `None` when export is off: the proxy then passes trace headers through untouched.
    sink: Option<SpanSink>,
    /// `ratio * 2^63`, compared with the low 63 bits of a new trace id.
    ratio_bound: u64,
    always: bool,
    accept_b3: bool,
    scope: InstrumentationScope,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("export", &self.sink.is_some())
            .field("accept_b3", &self.accept_b3)
            .finish()
    }
}

impl Tracer {
    pub fn new(sink: Option<SpanSink>, ratio: f64, accept_b3: bool) -> Arc<Self> {
        Arc::new(Self {
            sink,
            ratio_bound: (ratio.max(0.0) * (1u64 << 63) as f64) as u64,
            always: ratio >= 1.0,
            accept_b3,
            scope: InstrumentationScope::builder("tracseq-proxy")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        })
    }

    /// A tracer that records nothing (export off).
    pub fn disabled() -> Arc<Self> {
        Self::new(None, 0.0, false)
    }

    pub fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    pub fn accept_b3(&self) -> bool {
        self.accept_b3
    }

    /// The root sampling decision for a trace that starts here (`TraceIdRatioBased`).
    pub fn sample_root(&self, trace_id: &[u8; 16]) -> bool {
        if self.always {
            return true;
        }
        let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"));
        (low >> 1) < self.ratio_bound
    }

    pub fn new_trace_id() -> [u8; 16] {
        loop {
            let id: u128 = rand::random();
            if id != 0 {
                return id.to_be_bytes();
            }
        }
    }

    pub fn new_span_id() -> [u8; 8] {
        loop {
            let id: u64 = rand::random();
            if id != 0 {
                return id.to_be_bytes();
            }
        }
    }

    /// Open a span record (call only for sampled spans).
    pub fn start(
        self: &Arc<Self>,
        kind: SpanKind,
        name: Cow<'static, str>,
        ids: TraceIds,
        parent: Option<([u8; 8], bool)>,
        attributes: Vec<KeyValue>,
    ) -> SpanRecord {
        let (parent_span_id, parent_span_is_remote) = match parent {
            Some((p, remote)) => (SpanId::from_bytes(p), remote),
            None => (SpanId::INVALID, false),
        };
        let now = SystemTime::now();
        SpanRecord {
            tracer: self.clone(),
            data: Box::new(SpanData {
                span_context: SpanContext::new(
                    TraceId::from_bytes(ids.trace_id),
                    SpanId::from_bytes(ids.span_id),
                    TraceFlags::SAMPLED,
                    false,
                    TraceState::NONE,
                ),
                parent_span_id,
                parent_span_is_remote,
                span_kind: kind,
                name,
                start_time: now,
                end_time: now,
                attributes,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: Status::Unset,
                instrumentation_scope: self.scope.clone(),
            }),
        }
    }
}

/// A sampled span in progress; `end` queues it for export (never blocks, never fails).
///
/// The span data is boxed: request futures carry an `Option<SpanRecord>` (SERVER and CLIENT
/// span) whether or not the request is sampled, and an inline `SpanData` (~390 bytes) made
/// each of them that much larger for every request, sampled or not.
pub struct SpanRecord {
    tracer: Arc<Tracer>,
    data: Box<SpanData>,
}

impl SpanRecord {
    pub fn set(&mut self, kv: KeyValue) {
        self.data.attributes.push(kv);
    }

    pub fn has(&self, key: &str) -> bool {
        self.data.attributes.iter().any(|kv| kv.key.as_str() == key)
    }

    pub fn error(&mut self) {
        self.data.status = Status::error("");
    }

    pub fn end(mut self) {
        self.data.end_time = SystemTime::now();
        if let Some(sink) = &self.tracer.sink {
            sink.submit(*self.data);
        }
    }
}

/// What a SERVER span leaves in the request's `RequestCtx` for the CLIENT span of the same request
/// (the call to the upstream or peer).
#[derive(Clone)]
pub struct ServerContext {
    pub tracer: Arc<Tracer>,
    pub ids: TraceIds,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(low: u64) -> [u8; 16] {
        let mut t = [0xabu8; 16];
        t[8..].copy_from_slice(&low.to_be_bytes());
        t
    }

    #[test]
    fn ratio_sampling_matches_the_sdk_arithmetic() {
        let half = Tracer::new(None, 0.5, false);
        // Low 63 bits of the trace id against ratio * 2^63.
        assert!(half.sample_root(&id(0)));
        assert!(half.sample_root(&id((1u64 << 63) - 1)));
        assert!(!half.sample_root(&id(1u64 << 63)));
        assert!(!half.sample_root(&id(u64::MAX)));
        let none = Tracer::new(None, 0.0, false);
        assert!(!none.sample_root(&id(0)));
        let all = Tracer::new(None, 1.0, false);
        assert!(all.sample_root(&id(u64::MAX)));
        // About the ratio over random ids.
        let quarter = Tracer::new(None, 0.25, false);
        let n = (0..4000)
            .filter(|_| quarter.sample_root(&Tracer::new_trace_id()))
            .count();
        assert!((700..1300).contains(&n), "{n} of 4000 at 0.25");
    }
}
