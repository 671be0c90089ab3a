//! OpenTelemetry's exporter variables as the SDKs read them: each `OTEL_EXPORTER_OTLP_TRACES_*`
//! variable wins over its general `OTEL_EXPORTER_OTLP_*` form, and the traces endpoint is the
//! whole URL (OTLP/HTTP appends no `/v1/traces` to it). Its own test binary: the environment
//! is process-wide, and every test here that touches it holds `ENV`.

mod support;

use std::sync::{Mutex, MutexGuard};

use support::collector::*;
use support::*;
use tracseq_proxy::config::{try_from_args, Config, Invocation, OtlpProtocol};

static ENV: Mutex<()> = Mutex::new(());

fn env_lock() -> MutexGuard<'static, ()> {
    ENV.lock().unwrap_or_else(|p| p.into_inner())
}

const VARS: [&str; 10] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
];

/// Parses `--upstream ... args` with exactly `env` of the OTLP variables set.
fn parse_with(args: &[&str], env: &[(&str, &str)]) -> Result<Config, String> {
    for v in VARS {
        std::env::remove_var(v);
    }
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    let mut argv = vec!["tracseq-proxy", "--upstream", "http://127.0.0.1:1"];
    argv.extend_from_slice(args);
    let out = match try_from_args(argv) {
        Ok(Invocation::Run(cfg)) => Ok(*cfg),
        Ok(other) => panic!("not a run invocation: {other:?}"),
        Err(e) => Err(e.to_string()),
    };
    for v in VARS {
        std::env::remove_var(v);
    }
    out
}

#[test]
fn traces_variables_win_over_the_general_ones() {
    let _env = env_lock();
    // The general endpoint is a base URL; the traces one is the whole URL.
    let general =
        parse_with(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318")]).expect("valid");
    assert_eq!(general.otlp_endpoint.as_deref(), Some("http://base:4318"));
    assert!(!general.otlp_traces_url);
    let both = parse_with(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:4318/otlp/spans",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ],
    )
    .expect("valid");
    assert_eq!(
        both.otlp_endpoint.as_deref(),
        Some("http://traces:4318/otlp/spans")
    );
    assert!(both.otlp_traces_url);
    assert_eq!(both.otlp_protocol, OtlpProtocol::Http);
    // An empty traces variable counts as unset, as in the SDKs.
    let empty = parse_with(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
        ],
    )
    .expect("valid");
    assert_eq!(empty.otlp_endpoint.as_deref(), Some("http://base:4318"));
    assert!(!empty.otlp_traces_url);
    // The flag still wins over both, and is a base URL.
    let flag = parse_with(
        &["--otlp-endpoint", "http://flag:4318"],
        &[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://traces:4318/otlp/spans",
        )],
    )
    .expect("valid");
    assert_eq!(flag.otlp_endpoint.as_deref(), Some("http://flag:4318"));
    assert!(!flag.otlp_traces_url);

    // TLS files: each traces variable wins on its own, and errors name the variable used.
    let tls = parse_with(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://traces:4318"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/general/ca.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/traces/ca.pem"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
                "/traces/me.pem",
            ),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/general/me-key.pem"),
        ],
    )
    .expect("valid");
    assert_eq!(
        tls.otlp_tls.ca.as_deref(),
        Some(std::path::Path::new("/traces/ca.pem"))
    );
    assert_eq!(
        tls.otlp_tls.vars.ca,
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE"
    );
    let (cert, key) = tls.otlp_tls.client_identity.expect("identity");
    assert_eq!(cert, std::path::Path::new("/traces/me.pem"));
    assert_eq!(key, std::path::Path::new("/general/me-key.pem"));
    assert_eq!(
        tls.otlp_tls.vars.cert,
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE"
    );
    assert_eq!(tls.otlp_tls.vars.key, "OTEL_EXPORTER_OTLP_CLIENT_KEY");

    let bad = parse_with(
        &[],
        &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "traces:4318")],
    )
    .expect_err("no scheme");
    assert!(
        bad.starts_with("--otlp-endpoint (from OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)"),
        "{bad}"
    );
    let bad = parse_with(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "carrier-pigeon"),
        ],
    )
    .expect_err("bad protocol");
    assert!(
        bad.starts_with("--otlp-protocol (from OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)"),
        "{bad}"
    );
    let half = parse_with(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://base:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "/traces/me-key.pem"),
        ],
    )
    .expect_err("key without certificate");
    assert!(
        half.starts_with("--otlp-endpoint (from OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY)")
            && half.contains("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"),
        "{half}"
    );
}

/// The whole traces URL reaches the collector as it is: with `/v1/traces` appended, the
/// collector's 404 would leave it without spans.
#[tokio::test]
async fn otlp_http_posts_to_the_whole_traces_url_as_it_is() {
    let up = Upstream::start().await;
    let collector = Collector::start(Protocol::Http).await;
    let mut cfg = traced(up.addr, &collector, Protocol::Http, "svc");
    cfg.otlp_endpoint = Some(format!("{}{WHOLE_TRACES_PATH}", collector.endpoint()));
    cfg.otlp_traces_url = true;
    let proxy = start(cfg).await;
    let resp = send(
        &h1_client(),
        get_with(&proxy.inbound_url("/status/200"), &[]),
    )
    .await
    .expect("response");
    assert_eq!(resp.status, 200);
    assert!(proxy.shutdown().await);
    let spans = collector.wait_until("a span", |s| !s.is_empty()).await;
    assert!(spans.iter().any(|s| s.is_server()), "{spans:#?}");
}
