//! Configuration (issue 2): defaults of CONTRACT.md, precedence flag > env > file > default,
//! and start-up errors that exit 2 with one line naming the flag (the real binary). The
//! environment is process-global, so every test here that parses or spawns holds `ENV`.

use std::io::Write as _;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tracseq_proxy::config::{try_from_args, Config, Invocation};

static ENV: Mutex<()> = Mutex::new(());

/// Arguments, environment, and the text stderr must contain.
type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, &'a str);

fn env_lock() -> MutexGuard<'static, ()> {
    ENV.lock().unwrap_or_else(|p| p.into_inner())
}

fn parse(args: &[&str]) -> Result<Config, String> {
    let mut argv = vec!["tracseq-proxy"];
    argv.extend_from_slice(args);
    match try_from_args(argv) {
        Ok(Invocation::Run(cfg)) => Ok(*cfg),
        Ok(other) => panic!("not a run invocation: {other:?}"),
        Err(e) => Err(e.to_string()),
    }
}

fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    f.write_all(text.as_bytes()).expect("write config");
    f
}

#[test]
fn defaults_are_the_contracts() {
    let _env = env_lock();
    let cfg = parse(&["--upstream", "http://127.0.0.1:8080"]).expect("valid");
    assert_eq!(cfg.upstream.expect("upstream").as_str(), "127.0.0.1:8080");
    assert_eq!(cfg.listen, Some("0.0.0.0:8443".parse().expect("addr")));
    assert_eq!(
        cfg.outbound_listen,
        Some("127.0.0.1:15001".parse().expect("addr"))
    );
    assert_eq!(cfg.admin, "0.0.0.0:9901".parse().expect("addr"));
    assert_eq!(cfg.peer_port, 8443);
    assert_eq!(cfg.breaker_failures, 5);
    assert_eq!(cfg.max_concurrent_requests, 10_000);
    assert_eq!(cfg.request_timeout, Duration::from_secs(15));
    assert_eq!(cfg.connect_timeout, Duration::from_secs(1));
    assert_eq!(cfg.header_read_timeout, Duration::from_secs(10));
    assert_eq!(cfg.idle_timeout, Duration::from_secs(60));
    assert_eq!(cfg.drain_timeout, Duration::from_secs(30));
    assert_eq!(cfg.retries, 1);
    assert!(cfg.workers >= 1);
    assert!(!cfg.access_log);

    let cfg = parse(&["--outbound-only", "--outbound-listen", "127.0.0.1:0"]).expect("valid");
    assert!(cfg.upstream.is_none() && cfg.listen.is_none());
    let cfg = parse(&[
        "--upstream",
        "http://127.0.0.1:1",
        "--outbound-listen",
        "off",
    ])
    .expect("valid");
    assert!(cfg.outbound_listen.is_none());
}

#[test]
fn precedence_flag_over_env_over_file_over_default() {
    let _env = env_lock();
    let file = toml_file(
        "upstream = \"http://127.0.0.1:7000\"\nrequest-timeout = \"500ms\"\nidle-timeout = \"5s\"\npeer = [\"orders=127.0.0.1:9000\", \"samples=127.0.0.1:9001#spiffe://t/samples\"]\naccess-log = true\nworkers = 3\n# An expected peer identity needs a trust bundle (and a trust bundle an identity).\ntls-cert = \"/etc/tracseq/me.pem\"\ntls-key = \"/etc/tracseq/me-key.pem\"\ntls-ca = \"/etc/tracseq/ca.pem\"\n",
    );
    let path = file.path().to_str().expect("utf-8 path");

    // File over default.
    let cfg = parse(&["--config", path]).expect("valid");
    assert_eq!(
        cfg.upstream.as_ref().expect("upstream").as_str(),
        "127.0.0.1:7000"
    );
    assert_eq!(cfg.request_timeout, Duration::from_millis(500));
    assert_eq!(cfg.idle_timeout, Duration::from_secs(5));
    assert_eq!(cfg.peers.len(), 2);
    assert_eq!(cfg.peers[1].identity.as_deref(), Some("spiffe://t/samples"));
    assert!(cfg.access_log);
    assert_eq!(cfg.workers, 3);
    assert_eq!(
        cfg.connect_timeout,
        Duration::from_secs(1),
        "default where nothing is set"
    );

    // Env over file; flag over env.
    std::env::set_var("TRACSEQ_PROXY_REQUEST_TIMEOUT", "2s");
    std::env::set_var("TRACSEQ_PROXY_PEER", "billing=127.0.0.1:9100");
    let env = parse(&["--config", path]);
    let flag = parse(&[
        "--config",
        path,
        "--request-timeout",
        "3s",
        "--peer",
        "x=127.0.0.1:1",
    ]);
    std::env::remove_var("TRACSEQ_PROXY_REQUEST_TIMEOUT");
    std::env::remove_var("TRACSEQ_PROXY_PEER");
    std::env::set_var("TRACSEQ_PROXY_CONFIG", path);
    let config_from_env = parse(&[]);
    std::env::remove_var("TRACSEQ_PROXY_CONFIG");

    let env = env.expect("valid");
    assert_eq!(env.request_timeout, Duration::from_secs(2));
    assert_eq!(env.peers.len(), 1);
    assert_eq!(env.peers[0].name, "billing");
    assert_eq!(
        env.idle_timeout,
        Duration::from_secs(5),
        "the file still fills the rest"
    );
    let flag = flag.expect("valid");
    assert_eq!(flag.request_timeout, Duration::from_secs(3));
    assert_eq!(flag.peers[0].name, "x");
    assert_eq!(
        config_from_env.expect("valid").request_timeout,
        Duration::from_millis(500),
        "--config itself can come from the environment"
    );
}

#[test]
fn bad_values_name_the_flag_and_where_it_came_from() {
    let _env = env_lock();
    let up = ["--upstream", "http://127.0.0.1:1"];
    for (args, flag) in [
        (&["--request-timeout", "abc"][..], "--request-timeout"),
        (&["--idle-timeout", "5 parsecs"], "--idle-timeout"),
        (&["--listen", "nowhere"], "--listen"),
        (&["--peer", "no-equals-sign"], "--peer"),
        (&["--rate-limit", "5/x"], "--rate-limit"),
        (&["--workers", "0"], "--workers"),
        (&["--log-format", "xml"], "--log-format"),
        (
            &["--otlp-endpoint", "ftp://collector:4317"],
            "--otlp-endpoint",
        ),
        (&["--otlp-endpoint", "collector:4317"], "--otlp-endpoint"),
    ] {
        let mut all = up.to_vec();
        all.extend_from_slice(args);
        let err = parse(&all).expect_err("invalid");
        assert!(err.starts_with(flag), "{args:?}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
    let err = parse(&[]).expect_err("no upstream");
    assert!(err.starts_with("--upstream"), "{err}");

    let file = toml_file("upstream = \"http://127.0.0.1:1\"\nconnect-timeout = \"soon\"\n");
    let err = parse(&["--config", file.path().to_str().expect("path")]).expect_err("invalid");
    assert!(
        err.starts_with("--connect-timeout (key `connect-timeout` in "),
        "{err}"
    );

    std::env::set_var("TRACSEQ_PROXY_DRAIN_TIMEOUT", "forever");
    let err = parse(&up);
    std::env::remove_var("TRACSEQ_PROXY_DRAIN_TIMEOUT");
    let err = err.expect_err("invalid");
    assert!(
        err.starts_with("--drain-timeout (from TRACSEQ_PROXY_DRAIN_TIMEOUT)"),
        "{err}"
    );
    // The OpenTelemetry standard variables fill in for --otlp-endpoint / --otlp-protocol.
    std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    let cfg = parse(&up);
    std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon");
    let bad = parse(&up);
    std::env::remove_var("OTEL_EXPORTER_OTLP_PROTOCOL");
    assert_eq!(
        cfg.expect("valid").otlp_protocol,
        tracseq_proxy::config::OtlpProtocol::Http
    );
    let bad = bad.expect_err("invalid");
    assert!(
        bad.starts_with("--otlp-protocol (from OTEL_EXPORTER_OTLP_PROTOCOL)"),
        "{bad}"
    );
    // The endpoint from the environment is checked like the flag.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318");
    let bad = parse(&up);
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318");
    std::env::set_var("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/collector/ca.pem");
    let good = parse(&up);
    // A client certificate without its key is refused, naming the variable.
    std::env::set_var("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/etc/me.pem");
    let half = parse(&up);
    for v in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    ] {
        std::env::remove_var(v);
    }
    let bad = bad.expect_err("no scheme");
    assert!(
        bad.starts_with("--otlp-endpoint (from OTEL_EXPORTER_OTLP_ENDPOINT)"),
        "{bad}"
    );
    let good = good.expect("valid");
    assert_eq!(
        good.otlp_endpoint.as_deref(),
        Some("https://collector:4318")
    );
    assert_eq!(
        good.otlp_tls.ca.as_deref(),
        Some(std::path::Path::new("/etc/collector/ca.pem"))
    );
    let half = half.expect_err("certificate without key");
    assert!(
        half.contains("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")
            && half.contains("OTEL_EXPORTER_OTLP_CLIENT_KEY"),
        "{half}"
    );
}

/// Run the binary; returns (exit code, stderr).
fn run_bin(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tracseq-proxy"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn binary_start_up_errors_exit_2_with_one_line() {
    let _env = env_lock();
    let bad_key = toml_file("upstream = \"http://127.0.0.1:1\"\nrequest-timout = \"1s\"\n");
    let bad_toml = toml_file("upstream = \n");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    let bad_key_path = bad_key.path().to_str().expect("path").to_string();
    let bad_toml_path = bad_toml.path().to_str().expect("path").to_string();
    let up = ["--upstream", "http://127.0.0.1:1"];
    let with_up = |rest: &[&'static str]| -> Vec<String> {
        up.iter().chain(rest).map(|s| s.to_string()).collect()
    };
    let cases: Vec<Case> = vec![
        (
            with_up(&["--request-timeout", "abc"]),
            vec![],
            "--request-timeout",
        ),
        (with_up(&["--bogus-flag"]), vec![], "--bogus-flag"),
        (vec![], vec![], "--upstream"),
        (
            vec!["--config".into(), bad_key_path.clone()],
            vec![],
            "request-timout",
        ),
        (
            vec!["--config".into(), bad_toml_path.clone()],
            vec![],
            "--config",
        ),
        (
            vec!["--config".into(), "/nonexistent/tracseq.toml".into()],
            vec![],
            "--config",
        ),
        (
            with_up(&[]),
            vec![("TRACSEQ_PROXY_REQUEST_TIMEOUT", "abc")],
            "TRACSEQ_PROXY_REQUEST_TIMEOUT",
        ),
        (
            with_up(&[
                "--outbound-listen",
                "off",
                "--admin",
                "127.0.0.1:0",
                "--listen",
            ])
            .into_iter()
            .chain([taken_addr.clone()])
            .collect(),
            vec![],
            "--listen",
        ),
    ];
    for (args, env, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stderr) = run_bin(&args, &env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?}: one line, got {stderr:?}"
        );
        assert!(
            stderr.contains(needle),
            "{args:?}: {stderr:?} should name {needle}"
        );
    }
    drop(taken);

    let (code, stdout_is_help) = {
        let out = Command::new(env!("CARGO_BIN_EXE_tracseq-proxy"))
            .arg("--help")
            .output()
            .expect("binary runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).contains("--request-timeout"),
        )
    };
    assert_eq!(code, Some(0));
    assert!(stdout_is_help);
}
