//! The resolver that turns raw sources into a validated `Config` (the text of each value is
//! parsed by `text`).

use std::path::PathBuf;
use std::time::Duration;

use super::otel::{otel_var, otlp_tls, OTEL_ENDPOINT, OTEL_PROTOCOL};
use super::source::{Raw, Sources};
use super::text::{backoff, boolean, duration, number, socket_addr, upstream};
use super::*;

fn get<T>(
    src: &Sources<'_>,
    key: &'static str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<(T, Raw)>, ConfigError> {
    match src.one(key)? {
        None => Ok(None),
        Some((text, raw)) => match parse(&text) {
            Ok(v) => Ok(Some((v, raw))),
            Err(msg) => Err(raw.err(msg)),
        },
    }
}

fn val<T>(
    src: &Sources<'_>,
    key: &'static str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, ConfigError> {
    Ok(get(src, key, parse)?.map(|(v, _)| v))
}

fn positive(d: Duration, raw: &Raw) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        Err(raw.err("must be greater than zero"))
    } else {
        Ok(d)
    }
}

fn timeout(
    src: &Sources<'_>,
    key: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match get(src, key, duration)? {
        None => Ok(default),
        Some((d, raw)) => positive(d, &raw),
    }
}

pub(super) fn resolve(src: &Sources<'_>) -> Result<Config, ConfigError> {
    let d = Config::defaults();
    let outbound_only = val(src, "outbound_only", boolean)?.unwrap_or(false);
    let upstream = get(src, "upstream", upstream)?;
    let upstream = match (upstream, outbound_only) {
        (Some((_, raw)), true) => return Err(raw.err("cannot be used with --outbound-only")),
        (Some((u, _)), false) => Some(u),
        (None, true) => None,
        (None, false) => {
            return Err(ConfigError(
                "--upstream: required (the local service, e.g. --upstream http://127.0.0.1:8080), unless --outbound-only".into(),
            ))
        }
    };
    let listen = if outbound_only {
        None
    } else {
        Some(val(src, "listen", socket_addr)?.unwrap_or(([0, 0, 0, 0], 8443).into()))
    };
    let outbound_listen = match val(src, "outbound_listen", |s| {
        if s.eq_ignore_ascii_case("off") {
            Ok(None)
        } else {
            socket_addr(s).map(Some)
        }
    })? {
        Some(v) => v,
        None => Some(([127, 0, 0, 1], 15001).into()),
    };
    if outbound_only && outbound_listen.is_none() {
        return Err(ConfigError(
            "--outbound-listen: cannot be off with --outbound-only (nothing would listen)".into(),
        ));
    }
    let admin = val(src, "admin", socket_addr)?.unwrap_or(([0, 0, 0, 0], 9901).into());

    let workers = match get(src, "workers", number::<usize>("thread count"))? {
        None => d.workers,
        Some((0, raw)) => return Err(raw.err("must be at least 1")),
        Some((n, raw)) if n > 1024 => return Err(raw.err("must be at most 1024")),
        Some((n, _)) => n,
    };

    let path = |s: &str| -> Result<PathBuf, String> {
        if s.is_empty() {
            Err("empty path".into())
        } else {
            Ok(PathBuf::from(s))
        }
    };
    let cert = get(src, "tls_cert", path)?;
    let key = get(src, "tls_key", path)?;
    match (&cert, &key) {
        (Some(_), None) => return Err(ConfigError("--tls-key: required with --tls-cert".into())),
        (None, Some(_)) => return Err(ConfigError("--tls-cert: required with --tls-key".into())),
        _ => {}
    }
    let ca = val(src, "tls_ca", path)?;
    let client_auth = match get(src, "client_auth", |s| match s {
        "required" => Ok(ClientAuth::Required),
        "optional" => Ok(ClientAuth::Optional),
        "none" => Ok(ClientAuth::None),
        _ => Err(format!(
            "invalid value \"{s}\" (expected required, optional or none)"
        )),
    })? {
        Some((ClientAuth::None, _)) => ClientAuth::None,
        Some((mode, raw)) if ca.is_none() => {
            let _ = mode;
            return Err(
                raw.err("needs --tls-ca (the CA that client certificates are checked against)")
            );
        }
        Some((mode, _)) => mode,
        None if ca.is_some() => ClientAuth::Required,
        None => ClientAuth::None,
    };
    if ca.is_some() && cert.is_none() {
        // A trust bundle with no identity would be silently unused: inbound needs a server
        // certificate to check clients, outbound mTLS needs a client certificate to present.
        return Err(ConfigError(
            "--tls-ca: needs this sidecar's identity (--tls-cert and --tls-key) to be used".into(),
        ));
    }
    let min_version = val(src, "tls_min_version", |s| match s {
        "1.2" => Ok(TlsVersion::V1_2),
        "1.3" => Ok(TlsVersion::V1_3),
        _ => Err(format!("invalid TLS version \"{s}\" (expected 1.2 or 1.3)")),
    })?
    .unwrap_or(TlsVersion::V1_3);
    let (ids, ids_raw) = src.many("allow_identity")?;
    let allow_identity = ids
        .iter()
        .map(|s| s.parse().map_err(|e| ids_raw.err(e)))
        .collect::<Result<Vec<IdentityPattern>, _>>()?;

    let (peers_raw, peers_src) = src.many("peer")?;
    let mut peers: Vec<Peer> = Vec::with_capacity(peers_raw.len());
    for p in &peers_raw {
        let peer: Peer = p.parse().map_err(|e| peers_src.err(e))?;
        if peers.iter().any(|q| q.name == peer.name) {
            return Err(peers_src.err(format!("peer \"{}\" is given twice", peer.name)));
        }
        if peer.identity.is_some() && ca.is_none() {
            // An expected identity that nothing verifies would be a silent plaintext call.
            return Err(peers_src.err(format!(
                "peer \"{}\" expects identity {} but there is no --tls-ca to verify it",
                peer.name,
                peer.identity.as_deref().unwrap_or("")
            )));
        }
        peers.push(peer);
    }
    let peer_port = match get(src, "peer_port", number::<u16>("port"))? {
        Some((0, raw)) => return Err(raw.err("must be 1..65535")),
        Some((p, _)) => p,
        None => 8443,
    };

    let rate_limit = val(src, "rate_limit", str::parse::<Rate>)?;
    let rate_limit_burst = match get(src, "rate_limit_burst", number::<u32>("burst"))? {
        Some((0, raw)) => return Err(raw.err("must be at least 1")),
        Some((b, _)) => Some(b),
        None => None,
    };
    let rate_limit_per_client = val(src, "rate_limit_per_client", str::parse::<Rate>)?;
    let rate_limit_key = val(src, "rate_limit_key", |s| match s {
        "identity" => Ok(RateLimitKey::Identity),
        "ip" => Ok(RateLimitKey::Ip),
        _ => match s.strip_prefix("header:") {
            Some(name) => http::HeaderName::from_bytes(name.trim().as_bytes())
                .map(RateLimitKey::Header)
                .map_err(|_| format!("invalid header name \"{name}\"")),
            None => Err(format!(
                "invalid key \"{s}\" (expected identity, ip or header:NAME)"
            )),
        },
    })?
    .unwrap_or(RateLimitKey::Identity);
    let rate_limit_mode = val(src, "rate_limit_mode", |s| match s {
        "enforce" => Ok(RateLimitMode::Enforce),
        "shadow" => Ok(RateLimitMode::Shadow),
        _ => Err(format!("invalid mode \"{s}\" (expected enforce or shadow)")),
    })?
    .unwrap_or(RateLimitMode::Enforce);

    let breaker_failures = val(src, "breaker_failures", number::<u32>("count"))?.unwrap_or(5);
    let breaker_backoff = val(src, "breaker_backoff", backoff)?.unwrap_or(d.breaker_backoff);
    let max_concurrent_requests =
        match get(src, "max_concurrent_requests", number::<usize>("count"))? {
            Some((0, raw)) => return Err(raw.err("must be at least 1")),
            Some((n, _)) => n,
            None => d.max_concurrent_requests,
        };
    let request_timeout = timeout(src, "request_timeout", d.request_timeout)?;
    let connect_timeout = timeout(src, "connect_timeout", d.connect_timeout)?;
    let header_read_timeout = timeout(src, "header_read_timeout", d.header_read_timeout)?;
    let idle_timeout = timeout(src, "idle_timeout", d.idle_timeout)?;
    let retries = match get(src, "retries", number::<u32>("count"))? {
        Some((n, raw)) if n > 10 => return Err(raw.err("must be at most 10")),
        Some((n, _)) => n,
        None => 1,
    };
    let drain_timeout = val(src, "drain_timeout", duration)?.unwrap_or(d.drain_timeout);

    let (routes_raw, routes_src) = src.many("route")?;
    let routes = routes_raw
        .iter()
        .map(|s| s.parse::<RouteTemplate>().map_err(|e| routes_src.err(e)))
        .collect::<Result<Vec<_>, _>>()?;

    let endpoint = |s: &str| {
        let uri: http::Uri = s.parse().map_err(|e| format!("invalid URL \"{s}\": {e}"))?;
        match uri.scheme_str() {
            Some("http" | "https") if uri.authority().is_some() => Ok(s.to_string()),
            _ => Err(format!(
                "invalid URL \"{s}\" (expected http://host:port or https://host:port)"
            )),
        }
    };
    let (otlp_endpoint, otlp_traces_url) = match val(src, "otlp_endpoint", endpoint)? {
        Some(e) => (Some(e), false),
        // The OpenTelemetry standard variables, checked the same way.
        None => match otel_var(OTEL_ENDPOINT) {
            Some((name, v)) => {
                let e = endpoint(&v)
                    .map_err(|e| ConfigError(format!("--otlp-endpoint (from {name}): {e}")))?;
                (Some(e), name == OTEL_ENDPOINT.0)
            }
            None => (None, false),
        },
    };
    let protocol = |s: &str| match s {
        "grpc" => Ok(OtlpProtocol::Grpc),
        "http" | "http/protobuf" => Ok(OtlpProtocol::Http),
        _ => Err(format!("invalid protocol \"{s}\" (expected grpc or http)")),
    };
    let otlp_protocol = match val(src, "otlp_protocol", protocol)? {
        Some(p) => p,
        // The OpenTelemetry standard variable, as for the endpoint.
        None => match otel_var(OTEL_PROTOCOL) {
            Some((name, v)) => protocol(&v)
                .map_err(|e| ConfigError(format!("--otlp-protocol (from {name}): {e}")))?,
            None => OtlpProtocol::Grpc,
        },
    };
    // Only an https:// endpoint reads (and checks) the TLS variables.
    let https = otlp_endpoint.as_deref().is_some_and(|e| {
        e.get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
    });
    let otlp_tls = if https {
        otlp_tls()?
    } else {
        super::OtlpTls::default()
    };
    let trace_sample_ratio = val(src, "trace_sample_ratio", |s| {
        let f: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("invalid ratio \"{s}\""))?;
        if (0.0..=1.0).contains(&f) {
            Ok(f)
        } else {
            Err(format!("invalid ratio \"{s}\" (expected 0.0 to 1.0)"))
        }
    })?
    .unwrap_or(1.0);
    let propagation_b3 = val(src, "propagation", |s| {
        let mut b3 = false;
        for p in s.split(',').map(str::trim) {
            match p {
                "w3c" | "tracecontext" => {}
                "b3" => b3 = true,
                _ => return Err(format!("unknown propagation \"{p}\" (expected w3c, b3)")),
            }
        }
        Ok(b3)
    })?
    .unwrap_or(false);
    let log_format = val(src, "log_format", |s| match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("invalid format \"{s}\" (expected text or json)")),
    })?
    .unwrap_or(LogFormat::Text);
    let log_level = val(src, "log_level", |s| {
        tracing_subscriber::EnvFilter::try_new(s)
            .map(|_| s.to_string())
            .map_err(|e| format!("invalid level \"{s}\": {e}"))
    })?
    .unwrap_or_else(|| "info".into());
    let access_log = val(src, "access_log", boolean)?.unwrap_or(false);
    let service_name = val(src, "service_name", |s| {
        if s.is_empty() {
            Err("empty name".to_string())
        } else {
            Ok(s.to_string())
        }
    })?;

    Ok(Config {
        upstream,
        listen,
        outbound_listen,
        admin,
        service_name,
        workers,
        tls: TlsConfig {
            cert: cert.map(|(c, _)| c),
            key: key.map(|(k, _)| k),
            ca,
            client_auth,
            min_version,
            allow_identity,
        },
        peers,
        peer_port,
        rate_limit,
        rate_limit_burst,
        rate_limit_per_client,
        rate_limit_key,
        rate_limit_mode,
        breaker_failures,
        breaker_backoff,
        max_concurrent_requests,
        request_timeout,
        connect_timeout,
        header_read_timeout,
        idle_timeout,
        retries,
        drain_timeout,
        routes,
        otlp_endpoint,
        otlp_traces_url,
        otlp_protocol,
        otlp_tls,
        trace_sample_ratio,
        propagation_b3,
        log_format,
        log_level,
        access_log,
    })
}
