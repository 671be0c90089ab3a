//! One typed, validated `Config` from flags, `TRACSEQ_PROXY_*` variables and the `--config`
//! TOML file (precedence flag > env > file > default). Validation happens once at start-up; an
//! error is one line naming the flag (and where its value came from) and the process exits 2.

pub mod cli;
mod otel;
mod parse;
mod source;
mod text;
mod values;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgMatches, CommandFactory, FromArgMatches};

pub use cli::{Cli, Command};
use source::Sources;
pub use text::duration as parse_duration;
pub use values::{IdentityPattern, Peer, Rate, RouteTemplate};

/// A start-up error: printed as one line, exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Required,
    Optional,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    Identity,
    Ip,
    Header(http::HeaderName),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitMode {
    Enforce,
    Shadow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    Http,
}

/// TLS settings for an `https://` OTLP endpoint. Not flags: OpenTelemetry's standard
/// variables `OTEL_EXPORTER_OTLP_CERTIFICATE` (the CAs to trust, PEM; else the system's) and
/// `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` + `OTEL_EXPORTER_OTLP_CLIENT_KEY` (an identity to
/// present, for a collector that asks for one), each overridden by its traces-specific form
/// (`OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OtlpTls {
    pub ca: Option<std::path::PathBuf>,
    pub client_identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The variables the files were named by, for error messages.
    pub vars: OtlpTlsVars,
}

/// Which variable named each TLS file: the general or the traces-specific one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtlpTlsVars {
    pub ca: &'static str,
    pub cert: &'static str,
    pub key: &'static str,
}

impl Default for OtlpTlsVars {
    fn default() -> Self {
        Self {
            ca: "OTEL_EXPORTER_OTLP_CERTIFICATE",
            cert: "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            key: "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub min_version: TlsVersion,
    pub allow_identity: Vec<IdentityPattern>,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port` of the local service; `None` with `--outbound-only`.
    pub upstream: Option<http::uri::Authority>,
    pub listen: Option<SocketAddr>,
    pub outbound_listen: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub service_name: Option<String>,
    pub workers: usize,
    pub tls: TlsConfig,
    pub peers: Vec<Peer>,
    pub peer_port: u16,
    pub rate_limit: Option<Rate>,
    pub rate_limit_burst: Option<u32>,
    pub rate_limit_per_client: Option<Rate>,
    pub rate_limit_key: RateLimitKey,
    pub rate_limit_mode: RateLimitMode,
    pub breaker_failures: u32,
    pub breaker_backoff: (Duration, Duration),
    pub max_concurrent_requests: usize,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub retries: u32,
    pub drain_timeout: Duration,
    pub routes: Vec<RouteTemplate>,
    pub otlp_endpoint: Option<String>,
    /// `otlp_endpoint` is the whole URL of the traces endpoint
    /// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`): OTLP/HTTP uses it as it is, with no
    /// `/v1/traces` appended.
    pub otlp_traces_url: bool,
    pub otlp_protocol: OtlpProtocol,
    /// TLS to an `https://` endpoint, from OpenTelemetry's standard variables.
    pub otlp_tls: OtlpTls,
    pub trace_sample_ratio: f64,
    pub propagation_b3: bool,
    pub log_format: LogFormat,
    pub log_level: String,
    pub access_log: bool,
}

impl Config {
    /// A config for tests and the demo: everything at its default, listeners on loopback port 0.
    pub fn for_upstream(upstream: SocketAddr) -> Self {
        let mut cfg = Self::defaults();
        cfg.upstream = Some(authority(upstream));
        cfg
    }

    /// Defaults of CONTRACT.md, except that every listener is on loopback port 0 (tests, demo).
    pub fn defaults() -> Self {
        let lo: SocketAddr = ([127, 0, 0, 1], 0).into();
        Self {
            upstream: None,
            listen: Some(lo),
            outbound_listen: Some(lo),
            admin: lo,
            service_name: None,
            workers: default_workers(),
            tls: TlsConfig {
                cert: None,
                key: None,
                ca: None,
                client_auth: ClientAuth::None,
                min_version: TlsVersion::V1_3,
                allow_identity: Vec::new(),
            },
            peers: Vec::new(),
            peer_port: 8443,
            rate_limit: None,
            rate_limit_burst: None,
            rate_limit_per_client: None,
            rate_limit_key: RateLimitKey::Identity,
            rate_limit_mode: RateLimitMode::Enforce,
            breaker_failures: 5,
            breaker_backoff: (Duration::from_secs(1), Duration::from_secs(60)),
            max_concurrent_requests: 10_000,
            request_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            retries: 1,
            drain_timeout: Duration::from_secs(30),
            routes: Vec::new(),
            otlp_endpoint: None,
            otlp_traces_url: false,
            otlp_protocol: OtlpProtocol::Grpc,
            otlp_tls: OtlpTls::default(),
            trace_sample_ratio: 1.0,
            propagation_b3: false,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            access_log: false,
        }
    }
}

pub fn authority(addr: SocketAddr) -> http::uri::Authority {
    addr.to_string()
        .parse()
        .expect("a socket address is a valid authority")
}

/// The CPU count as the cgroup allows (std reads cgroup quotas), at least 1.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What `main` should do.
#[derive(Debug)]
pub enum Invocation {
    Run(Box<Config>),
    Certs(cli::CertsArgs),
    Demo(cli::DemoArgs),
}

/// Parse the process arguments. `--help` and `--version` print and exit 0 inside clap; every
/// other clap error (unknown flag, missing value) becomes the same one-line `ConfigError` as a
/// bad value, so every start-up error looks alike and exits 2.
pub fn from_args<I, T>(args: I) -> Result<Invocation, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::error::ErrorKind;
    match Cli::command().try_get_matches_from(args) {
        Ok(matches) => from_matches(&matches),
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
            _ => Err(clap_error(&e)),
        },
    }
}

/// Like [`from_args`] but never exits, not even for `--help` (tests).
pub fn try_from_args<I, T>(args: I) -> Result<Invocation, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = Cli::command()
        .try_get_matches_from(args)
        .map_err(|e| clap_error(&e))?;
    from_matches(&matches)
}

/// The first line of clap's message, without its `error: ` prefix (the binary adds its name).
fn clap_error(e: &clap::Error) -> ConfigError {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or("invalid command line");
    ConfigError(line.strip_prefix("error: ").unwrap_or(line).to_string())
}

fn from_matches(matches: &ArgMatches) -> Result<Invocation, ConfigError> {
    let cli = Cli::from_arg_matches(matches).map_err(|e| ConfigError(e.to_string()))?;
    match cli.command {
        Some(Command::Certs(c)) => Ok(Invocation::Certs(c)),
        Some(Command::Demo(d)) => Ok(Invocation::Demo(d)),
        None => {
            let sources = Sources::new(matches, cli.run.config.as_deref())?;
            Ok(Invocation::Run(Box::new(parse::resolve(&sources)?)))
        }
    }
}
