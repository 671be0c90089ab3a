//! OpenTelemetry's standard exporter variables, read as the SDKs read them: the traces form of
//! each (`OTEL_EXPORTER_OTLP_TRACES_*`) wins over the general one, and an empty value counts as
//! unset.

use super::ConfigError;

/// One of OpenTelemetry's OTLP exporter variables: its traces-specific form, which wins, and
/// its general form.
type OtelVar = (&'static str, &'static str);
pub(super) const OTEL_ENDPOINT: OtelVar = (
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
);
pub(super) const OTEL_PROTOCOL: OtelVar = (
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
);
const OTEL_CERTIFICATE: OtelVar = (
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
);
const OTEL_CLIENT_CERTIFICATE: OtelVar = (
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
);
const OTEL_CLIENT_KEY: OtelVar = (
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
);

/// The variable as the OpenTelemetry SDKs read it (an empty value counts as unset): the name
/// that was set, with its value.
pub(super) fn otel_var(var: OtelVar) -> Option<(&'static str, String)> {
    [var.0, var.1]
        .into_iter()
        .find_map(|name| match std::env::var(name) {
            Ok(v) if !v.is_empty() => Some((name, v)),
            _ => None,
        })
}

/// As [`otel_var`], for a path (any bytes).
fn otel_path(var: OtelVar) -> Option<(&'static str, std::path::PathBuf)> {
    [var.0, var.1].into_iter().find_map(|name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(|v| (name, v.into()))
    })
}

/// TLS to the OTLP collector, from OpenTelemetry's standard variables (the files are read
/// when the exporter starts).
pub(super) fn otlp_tls() -> Result<super::OtlpTls, ConfigError> {
    let ca = otel_path(OTEL_CERTIFICATE);
    let cert = otel_path(OTEL_CLIENT_CERTIFICATE);
    let key = otel_path(OTEL_CLIENT_KEY);
    let mut vars = super::OtlpTlsVars::default();
    if let Some((name, _)) = &ca {
        vars.ca = name;
    }
    let client_identity = match (cert, key) {
        (Some((cert_var, c)), Some((key_var, k))) => {
            vars.cert = cert_var;
            vars.key = key_var;
            Some((c, k))
        }
        (None, None) => None,
        (Some((cert_var, _)), None) => {
            return Err(ConfigError(format!(
                "--otlp-endpoint (from {cert_var}): a client certificate needs its key in \
                 {} or {}",
                OTEL_CLIENT_KEY.0, OTEL_CLIENT_KEY.1
            )))
        }
        (None, Some((key_var, _))) => {
            return Err(ConfigError(format!(
                "--otlp-endpoint (from {key_var}): a client key needs its certificate in \
                 {} or {}",
                OTEL_CLIENT_CERTIFICATE.0, OTEL_CLIENT_CERTIFICATE.1
            )))
        }
    };
    Ok(super::OtlpTls {
        ca: ca.map(|(_, p)| p),
        client_identity,
        vars,
    })
}
