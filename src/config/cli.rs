//! The command line as clap sees it. Every run flag is kept as raw text (`Option<String>` /
//! `Vec<String>`) so that flags, `TRACSEQ_PROXY_*` variables and `--config` TOML keys go through
//! one validator (`super::resolve`) and every error names the flag the same way.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Sidecar proxy for TracSeq services: mTLS, rate limiting, circuit breaking, RED metrics, traces.
#[derive(Debug, Parser)]
#[command(
    name = "tracseq-proxy",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Development PKI: a CA and per-service certificates.
    Certs(CertsArgs),
    /// A self-contained mesh with traffic, in one process.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a CA and a key pair per service in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "tracseq.local")]
        trust_domain: String,
        /// Service names (repeatable, or space separated).
        #[arg(long = "service", num_args = 1..)]
        services: Vec<String>,
        /// Validity of the service certificates.
        #[arg(long, default_value = "90d")]
        validity: String,
        /// Validity of the CA certificate.
        #[arg(long, default_value = "3650d")]
        ca_validity: String,
    },
    /// Issue a certificate for one more service from the CA in DIR.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "tracseq.local")]
        trust_domain: String,
        #[arg(long)]
        service: String,
        #[arg(long, default_value = "90d")]
        validity: String,
    },
    /// Print subject, SANs, issuer and expiry of a PEM certificate.
    Inspect { file: PathBuf },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How long the traffic generator runs.
    #[arg(long, default_value = "20s")]
    pub duration: String,
    /// Requests per second the generator aims at.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Keep the mesh (and its admin endpoints) running after the traffic ends.
    #[arg(long)]
    pub keep_running: bool,
    /// Print nothing while running; only the summary.
    #[arg(long)]
    pub quiet: bool,
}

/// Flags of the sidecar itself. Defaults live in `super::resolve`, not here, so a TOML file can
/// sit between the environment and the default (precedence flag > env > file > default).
#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// TOML file with any of these flags as keys (`request-timeout = "500ms"`).
    #[arg(long, env = "TRACSEQ_PROXY_CONFIG")]
    pub config: Option<PathBuf>,
    /// The local service, `http://host:port`.
    #[arg(long, env = "TRACSEQ_PROXY_UPSTREAM")]
    pub upstream: Option<String>,
    /// Inbound listener [default: 0.0.0.0:8443].
    #[arg(long, env = "TRACSEQ_PROXY_LISTEN")]
    pub listen: Option<String>,
    /// Outbound listener, or `off` [default: 127.0.0.1:15001].
    #[arg(long, env = "TRACSEQ_PROXY_OUTBOUND_LISTEN")]
    pub outbound_listen: Option<String>,
    /// No inbound listener and no --upstream.
    #[arg(long, env = "TRACSEQ_PROXY_OUTBOUND_ONLY", num_args = 0..=1, default_missing_value = "true")]
    pub outbound_only: Option<String>,
    /// Admin server (metrics, health) [default: 0.0.0.0:9901].
    #[arg(long, env = "TRACSEQ_PROXY_ADMIN")]
    pub admin: Option<String>,
    /// OpenTelemetry service.name [default: the certificate's identity, else unknown_service].
    #[arg(long, env = "TRACSEQ_PROXY_SERVICE_NAME")]
    pub service_name: Option<String>,
    /// Runtime worker threads [default: cgroup-aware CPU count].
    #[arg(long, env = "TRACSEQ_PROXY_WORKERS")]
    pub workers: Option<String>,
    /// This sidecar's certificate chain (PEM).
    #[arg(long, env = "TRACSEQ_PROXY_TLS_CERT")]
    pub tls_cert: Option<String>,
    /// This sidecar's private key (PEM).
    #[arg(long, env = "TRACSEQ_PROXY_TLS_KEY")]
    pub tls_key: Option<String>,
    /// Trust bundle (PEM).
    #[arg(long, env = "TRACSEQ_PROXY_TLS_CA")]
    pub tls_ca: Option<String>,
    /// Inbound client-certificate policy: required, optional, none.
    #[arg(long, env = "TRACSEQ_PROXY_CLIENT_AUTH")]
    pub client_auth: Option<String>,
    /// Lowest TLS version: 1.2 or 1.3 [default: 1.3].
    #[arg(long, env = "TRACSEQ_PROXY_TLS_MIN_VERSION")]
    pub tls_min_version: Option<String>,
    /// Allowed client identity, exact or with a trailing `*` (repeatable).
    #[arg(long, env = "TRACSEQ_PROXY_ALLOW_IDENTITY", value_delimiter = ',')]
    pub allow_identity: Vec<String>,
    /// Outbound destination `NAME=HOST:PORT[#IDENTITY]` (repeatable).
    #[arg(long, env = "TRACSEQ_PROXY_PEER", value_delimiter = ',')]
    pub peer: Vec<String>,
    /// Default port of other sidecars' inbound listeners [default: 8443].
    #[arg(long, env = "TRACSEQ_PROXY_PEER_PORT")]
    pub peer_port: Option<String>,
    /// Global inbound rate limit, `N/s`, `N/m` or `N/h`.
    #[arg(long, env = "TRACSEQ_PROXY_RATE_LIMIT")]
    pub rate_limit: Option<String>,
    /// Burst of the rate limits [default: the per-second rate, at least 1].
    #[arg(long, env = "TRACSEQ_PROXY_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<String>,
    /// Per-client rate limit, `N/s`, `N/m` or `N/h`.
    #[arg(long, env = "TRACSEQ_PROXY_RATE_LIMIT_PER_CLIENT")]
    pub rate_limit_per_client: Option<String>,
    /// Per-client key: identity, ip or header:NAME [default: identity].
    #[arg(long, env = "TRACSEQ_PROXY_RATE_LIMIT_KEY")]
    pub rate_limit_key: Option<String>,
    /// enforce or shadow [default: enforce].
    #[arg(long, env = "TRACSEQ_PROXY_RATE_LIMIT_MODE")]
    pub rate_limit_mode: Option<String>,
    /// Consecutive failures that open a circuit, 0 disables [default: 5].
    #[arg(long, env = "TRACSEQ_PROXY_BREAKER_FAILURES")]
    pub breaker_failures: Option<String>,
    /// Open time `MIN..MAX`, doubling with jitter [default: 1s..60s].
    #[arg(long, env = "TRACSEQ_PROXY_BREAKER_BACKOFF")]
    pub breaker_backoff: Option<String>,
    /// In-flight requests beyond which requests are shed with 503 [default: 10000].
    #[arg(long, env = "TRACSEQ_PROXY_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<String>,
    /// Whole-request deadline up to response headers [default: 15s].
    #[arg(long, env = "TRACSEQ_PROXY_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,
    /// Upstream connect deadline [default: 1s].
    #[arg(long, env = "TRACSEQ_PROXY_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<String>,
    /// Deadline for a request head [default: 10s].
    #[arg(long, env = "TRACSEQ_PROXY_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<String>,
    /// Idle connection timeout [default: 60s].
    #[arg(long, env = "TRACSEQ_PROXY_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// Retries of idempotent or never-sent requests, within a 20% budget [default: 1].
    #[arg(long, env = "TRACSEQ_PROXY_RETRIES")]
    pub retries: Option<String>,
    /// Graceful shutdown bound [default: 30s].
    #[arg(long, env = "TRACSEQ_PROXY_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<String>,
    /// Route template for the http_route label, e.g. `/api/samples/{id}` (repeatable).
    #[arg(long, env = "TRACSEQ_PROXY_ROUTE", value_delimiter = ',')]
    pub route: Vec<String>,
    /// OTLP endpoint for spans [default: OTEL_EXPORTER_OTLP_ENDPOINT, else off].
    #[arg(long, env = "TRACSEQ_PROXY_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// grpc or http [default: grpc].
    #[arg(long, env = "TRACSEQ_PROXY_OTLP_PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// Sampling ratio for traces that start here [default: 1.0].
    #[arg(long, env = "TRACSEQ_PROXY_TRACE_SAMPLE_RATIO")]
    pub trace_sample_ratio: Option<String>,
    /// Accepted trace headers: w3c, b3 [default: w3c].
    #[arg(long, env = "TRACSEQ_PROXY_PROPAGATION")]
    pub propagation: Option<String>,
    /// text or json [default: text].
    #[arg(long, env = "TRACSEQ_PROXY_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log level or tracing filter [default: info].
    #[arg(long, env = "TRACSEQ_PROXY_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// One structured log line per request.
    #[arg(long, env = "TRACSEQ_PROXY_ACCESS_LOG", num_args = 0..=1, default_missing_value = "true")]
    pub access_log: Option<String>,
}

/// Every run flag's id (clap's field name), in the order of CONTRACT.md. The TOML key and the
/// flag are the id with `_` turned into `-`.
pub const RUN_KEYS: &[&str] = &[
    "upstream",
    "listen",
    "outbound_listen",
    "outbound_only",
    "admin",
    "service_name",
    "workers",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "client_auth",
    "tls_min_version",
    "allow_identity",
    "peer",
    "peer_port",
    "rate_limit",
    "rate_limit_burst",
    "rate_limit_per_client",
    "rate_limit_key",
    "rate_limit_mode",
    "breaker_failures",
    "breaker_backoff",
    "max_concurrent_requests",
    "request_timeout",
    "connect_timeout",
    "header_read_timeout",
    "idle_timeout",
    "retries",
    "drain_timeout",
    "route",
    "otlp_endpoint",
    "otlp_protocol",
    "trace_sample_ratio",
    "propagation",
    "log_format",
    "log_level",
    "access_log",
];
