//! Logging (tracing-subscriber on stderr, text or JSON lines) and, when configured, OTLP span
//! export (`export`). Logs are correlated with traces without a tracing→OpenTelemetry bridge:
//! the access log line carries `trace_id`/`span_id` fields, and with debug logging each request
//! runs in a `request` span holding them (JSON lines show it under `span`). The exporter's own
//! HTTP/gRPC traffic goes nowhere near the proxy's stacks, so it is never traced.

pub mod export;
mod otlp_tls;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_otlp::{
    Protocol, SpanExporter, WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _,
};
use opentelemetry_sdk::trace::SpanExporter as _;
use opentelemetry_sdk::Resource;
use prometheus_client::registry::Registry;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{Config, ConfigError, LogFormat, OtlpProtocol};
use crate::trace::Tracer;

/// Flushes telemetry when dropped at the end of `main`.
pub struct Guard;

pub fn init(cfg: &Config) -> Guard {
    init_with_writer(cfg, std::io::stderr)
}

/// `init` with another destination than stderr (tests read the lines back).
pub fn init_with_writer<W>(cfg: &Config, writer: W) -> Guard
where
    W: for<'a> fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(&cfg.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match cfg.log_format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_writer(writer)
                    .with_current_span(true)
                    .flatten_event(true),
            )
            .try_init(),
        LogFormat::Text => registry.with(fmt::layer().with_writer(writer)).try_init(),
    };
    Guard
}

/// Span export and the tracer, started with the app (the export task needs its runtime).
pub struct Tracing {
    pub tracer: Arc<Tracer>,
    export: Option<export::ExportTask>,
}

impl Tracing {
    /// Register `tracseq_proxy_spans_dropped_total` and, when an OTLP endpoint is configured,
    /// start the exporter. With export off the tracer is disabled: the proxy then records no
    /// spans and passes `traceparent`/`tracestate` (and B3) through unchanged, so traces of
    /// instrumented apps stay connected through an untraced sidecar.
    pub fn start(cfg: &Config, registry: &mut Registry) -> Result<Self, ConfigError> {
        let dropped = export::register_dropped(registry);
        let Some(endpoint) = cfg.otlp_endpoint.as_deref() else {
            return Ok(Self {
                tracer: Tracer::disabled(),
                export: None,
            });
        };
        let err = |e: &dyn std::fmt::Display| ConfigError(format!("--otlp-endpoint: {e}"));
        // The scheme as config validation read it (case-insensitive, as URLs are).
        let https = endpoint.parse::<http::Uri>().ok().is_some_and(|u| {
            u.scheme_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("https"))
        });
        let mut exporter = match cfg.otlp_protocol {
            OtlpProtocol::Grpc => {
                let b = SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .with_timeout(export::EXPORT_TIMEOUT);
                if https {
                    b.with_tls_config(otlp_tls::grpc(&cfg.otlp_tls).map_err(|e| err(&e))?)
                        .build()
                } else {
                    b.build()
                }
            }
            OtlpProtocol::Http => {
                let b = SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(if cfg.otlp_traces_url {
                        endpoint.to_string()
                    } else {
                        http_traces_url(endpoint)
                    })
                    .with_timeout(export::EXPORT_TIMEOUT);
                if https {
                    let client = otlp_tls::http(&cfg.otlp_tls, export::EXPORT_TIMEOUT)
                        .map_err(|e| err(&e))?;
                    b.with_http_client(client).build()
                } else {
                    b.build()
                }
            }
        }
        .map_err(|e| err(&e))?;
        exporter.set_resource(&resource(cfg));
        let (sink, task) = export::spawn(exporter, dropped);
        Ok(Self {
            tracer: Tracer::new(Some(sink), cfg.trace_sample_ratio, cfg.propagation_b3),
            export: Some(task),
        })
    }

    /// Flush queued spans, giving up after `timeout`.
    pub async fn shutdown(&mut self, timeout: Duration) {
        if let Some(task) = self.export.take() {
            task.shutdown(timeout).await;
        }
    }
}

/// OTLP/HTTP wants the signal path; like `OTEL_EXPORTER_OTLP_ENDPOINT`, a base URL gets
/// `/v1/traces` appended (a URL that already names it is kept). The URL of
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is the whole URL and does not come here.
fn http_traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// `service.name`: `--service-name`, else `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`
/// (read by the SDK's detectors, which also add the other resource attributes), else the
/// service named by the certificate's identity (the last segment of its SPIFFE URI, or its
/// DNS name), else `unknown_service` (CONTRACT.md; the SDK would say
/// `unknown_service:<exe>`).
fn resource(cfg: &Config) -> Resource {
    let key = opentelemetry::Key::from_static_str("service.name");
    let mut builder = Resource::builder();
    if let Some(name) = &cfg.service_name {
        builder = builder.with_service_name(name.clone());
    } else {
        let detected = Resource::builder().build();
        let unknown = detected
            .get(&key)
            .is_none_or(|v| v.as_str().starts_with("unknown_service"));
        if unknown {
            let from_cert = cfg
                .tls
                .cert
                .as_deref()
                .and_then(crate::tls::identity::identity_of_file)
                .map(|id| service_of_identity(&id));
            builder =
                builder.with_service_name(from_cert.unwrap_or_else(|| "unknown_service".into()));
        }
    }
    builder.build()
}

/// `spiffe://tracseq.local/orders` → `orders`; a DNS identity stays as it is.
fn service_of_identity(id: &str) -> String {
    match id.strip_prefix("spiffe://") {
        Some(rest) => rest.rsplit('/').next().unwrap_or(rest).to_string(),
        None => id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn service_name_from_identity() {
        assert_eq!(
            super::service_of_identity("spiffe://tracseq.local/orders"),
            "orders"
        );
        assert_eq!(
            super::service_of_identity("spiffe://td/ns/prod/sa/orders"),
            "orders"
        );
        assert_eq!(super::service_of_identity("orders.svc"), "orders.svc");
    }

    #[test]
    fn http_endpoint_gets_the_traces_path() {
        assert_eq!(
            super::http_traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            super::http_traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
