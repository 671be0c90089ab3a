//! Label values of the RED metrics. All are enums, numbers or `&'static str` drawn from the
//! config, so building a label set never allocates and no label carries a raw path, IP or any
//! other unbounded request value.

use std::fmt::Write;

use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};

use crate::error::ErrorKind;
use crate::proxy::Direction;

impl EncodeLabelValue for Direction {
    fn encode(&self, e: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        e.write_str(self.as_str())
    }
}

/// `http.request.method` per OpenTelemetry: the known methods, everything else `_OTHER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    Other,
}

impl Method {
    pub fn from_http(m: &http::Method) -> Self {
        match *m {
            http::Method::GET => Self::Get,
            http::Method::HEAD => Self::Head,
            http::Method::POST => Self::Post,
            http::Method::PUT => Self::Put,
            http::Method::DELETE => Self::Delete,
            http::Method::CONNECT => Self::Connect,
            http::Method::OPTIONS => Self::Options,
            http::Method::TRACE => Self::Trace,
            http::Method::PATCH => Self::Patch,
            _ => Self::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Options => "OPTIONS",
            Self::Trace => "TRACE",
            Self::Patch => "PATCH",
            Self::Other => "_OTHER",
        }
    }
}

impl EncodeLabelValue for Method {
    fn encode(&self, e: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        e.write_str(self.as_str())
    }
}

/// `network.protocol.version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http10,
    Http11,
    Http2,
}

impl Protocol {
    pub fn from_version(v: http::Version) -> Self {
        match v {
            http::Version::HTTP_10 | http::Version::HTTP_09 => Self::Http10,
            http::Version::HTTP_2 | http::Version::HTTP_3 => Self::Http2,
            _ => Self::Http11,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http10 => "1.0",
            Self::Http11 => "1.1",
            Self::Http2 => "2",
        }
    }
}

impl EncodeLabelValue for Protocol {
    fn encode(&self, e: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        e.write_str(self.as_str())
    }
}

/// `error.type`: the proxy's error kind, or the status code of an upstream 5xx (as the
/// OpenTelemetry HTTP conventions ask), or a body that failed after the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    Proxy(ErrorKind),
    Status(u16),
    /// The response started but its body was cut by the upstream.
    BodyAborted,
    /// The caller went away before the upstream answered.
    Cancelled,
}

impl ErrorType {
    pub fn write(&self, w: &mut impl Write) -> std::fmt::Result {
        match self {
            Self::Proxy(k) => w.write_str(k.as_str()),
            Self::Status(s) => write!(w, "{s}"),
            Self::BodyAborted => w.write_str("response-aborted"),
            Self::Cancelled => w.write_str("cancelled"),
        }
    }
}

impl EncodeLabelValue for ErrorType {
    fn encode(&self, e: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        self.write(e)
    }
}

/// Encode `(key, value)` pairs, skipping absent optional labels entirely (an empty-valued label
/// would be noise on every series).
pub(crate) struct Labels<'a, const N: usize>(pub [(&'static str, Option<&'a dyn Value>); N]);

pub(crate) trait Value {
    fn enc(&self, e: &mut LabelValueEncoder<'_>) -> std::fmt::Result;
}

impl<T: EncodeLabelValue> Value for T {
    fn enc(&self, e: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        EncodeLabelValue::encode(self, e)
    }
}

struct DynValue<'a>(&'a dyn Value);

impl EncodeLabelValue for DynValue<'_> {
    fn encode(&self, e: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        self.0.enc(e)
    }
}

impl<const N: usize> Labels<'_, N> {
    pub fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
        for (key, value) in &self.0 {
            if let Some(v) = value {
                (*key, DynValue(*v)).encode(encoder.encode_label())?;
            }
        }
        Ok(())
    }
}

/// `http_server_request_duration_seconds` labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerLabels {
    pub direction: Direction,
    pub method: Method,
    pub status: u16,
    pub scheme: &'static str,
    pub protocol: Protocol,
    pub route: Option<&'static str>,
    pub error_type: Option<ErrorType>,
}

impl EncodeLabelSet for ServerLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
        Labels([
            ("direction", Some(&self.direction as &dyn Value)),
            ("http_request_method", Some(&self.method)),
            ("http_response_status_code", Some(&self.status)),
            ("url_scheme", Some(&self.scheme)),
            ("network_protocol_version", Some(&self.protocol)),
            ("http_route", self.route.as_ref().map(|r| r as &dyn Value)),
            (
                "error_type",
                self.error_type.as_ref().map(|e| e as &dyn Value),
            ),
        ])
        .encode(encoder)
    }
}

/// `http_client_request_duration_seconds` labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientLabels {
    pub direction: Direction,
    pub method: Method,
    /// Absent when no response arrived.
    pub status: Option<u16>,
    pub server_address: &'static str,
    pub server_port: u16,
    pub error_type: Option<ErrorType>,
}

impl EncodeLabelSet for ClientLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
        Labels([
            ("direction", Some(&self.direction as &dyn Value)),
            ("http_request_method", Some(&self.method)),
            (
                "http_response_status_code",
                self.status.as_ref().map(|s| s as &dyn Value),
            ),
            ("server_address", Some(&self.server_address)),
            ("server_port", Some(&self.server_port)),
            (
                "error_type",
                self.error_type.as_ref().map(|e| e as &dyn Value),
            ),
        ])
        .encode(encoder)
    }
}

/// `direction` alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DirectionLabel {
    pub direction: Direction,
}

impl EncodeLabelSet for DirectionLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
        ("direction", self.direction).encode(encoder.encode_label())
    }
}

/// `direction` and `http_request_method`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ActiveLabels {
    pub direction: Direction,
    pub method: Method,
}

impl EncodeLabelSet for ActiveLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
        ("direction", self.direction).encode(encoder.encode_label())?;
        ("http_request_method", self.method).encode(encoder.encode_label())
    }
}

/// `direction` and `kind` of `tracseq_proxy_upstream_errors_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamErrorLabels {
    pub direction: Direction,
    pub kind: &'static str,
}

impl EncodeLabelSet for UpstreamErrorLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
        ("direction", self.direction).encode(encoder.encode_label())?;
        ("kind", self.kind).encode(encoder.encode_label())
    }
}

/// Exemplar labels: the trace behind an observation (OpenMetrics output only).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraceExemplar {
    pub trace_id: String,
    pub span_id: String,
}

impl EncodeLabelSet for TraceExemplar {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
        ("trace_id", self.trace_id.as_str()).encode(encoder.encode_label())?;
        ("span_id", self.span_id.as_str()).encode(encoder.encode_label())
    }
}
