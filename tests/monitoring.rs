//! Shipped configuration is code: every file of deploy/ and monitoring/ is checked by the real
//! tool that will read it (promtool, amtool, docker-compose), and the Grafana dashboard is
//! checked for what Grafana cannot tell us at load time (every panel has a query, every query
//! uses only CONTRACT.md metric names or our recording rules). A missing tool fails the test.

mod monitoring_kit;
#[allow(unused_imports)]
mod support;

use std::process::Command;

use monitoring_kit::{dashboard_queries, files, repo, run_ok};
use support::require_tool;

const PROMETHEUS_HINT: &str = "apt-get install prometheus";
const ALERTMANAGER_HINT: &str = "apt-get install prometheus-alertmanager";
const COMPOSE_HINT: &str = "apt-get install docker-compose";

#[test]
fn promtool_check_config_accepts_prometheus_yml() {
    require_tool("promtool", PROMETHEUS_HINT);
    let out = run_ok(
        Command::new("promtool")
            .args(["check", "config"])
            .arg(repo("monitoring/prometheus/prometheus.yml")),
    );
    // The config's rule_files glob finds the shipped rules.
    assert!(out.contains("2 rule files found"), "{out}");
}

#[test]
fn promtool_check_rules_accepts_every_rule_file() {
    require_tool("promtool", PROMETHEUS_HINT);
    run_ok(
        Command::new("promtool")
            .args(["check", "rules"])
            .args(files("monitoring/prometheus/rules", "yml")),
    );
}

#[test]
fn promtool_unit_tests_pass() {
    require_tool("promtool", PROMETHEUS_HINT);
    run_ok(
        Command::new("promtool")
            .args(["test", "rules"])
            .args(files("monitoring/prometheus/tests", "yml")),
    );
}

/// Alert names of the shipped rules (lines `- alert: Name`).
fn alert_names() -> Vec<String> {
    files("monitoring/prometheus/rules", "yml")
        .iter()
        .flat_map(|p| {
            let text = std::fs::read_to_string(p).expect("read rules");
            text.lines()
                .filter_map(|l| {
                    l.trim()
                        .strip_prefix("- alert:")
                        .map(|n| n.trim().to_string())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_unit_test_and_its_labels() {
    let tests: String = files("monitoring/prometheus/tests", "yml")
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read tests"))
        .collect();
    let names = alert_names();
    assert!(
        names.len() >= 8,
        "expected at least 8 alerts, got {names:?}"
    );
    // Split the tests into `alertname:` blocks; a block with `exp_alerts: []` is quiet.
    let blocks: Vec<&str> = tests.split("alertname:").skip(1).collect();
    for name in &names {
        let mine: Vec<&&str> = blocks
            .iter()
            .filter(|b| b.split_whitespace().next() == Some(name.as_str()))
            .collect();
        let quiet = mine.iter().filter(|b| b.contains("exp_alerts: []")).count();
        let firing = mine.iter().filter(|b| b.contains("exp_labels")).count();
        assert!(firing >= 1, "{name}: no unit test that fires it");
        assert!(quiet >= 1, "{name}: no unit test that keeps it quiet");
    }
    // Every alert carries severity, team, summary and description.
    for p in files("monitoring/prometheus/rules", "yml") {
        let text = std::fs::read_to_string(&p).expect("read rules");
        for block in text.split("- alert:").skip(1) {
            let name = block.split_whitespace().next().unwrap_or("?");
            for key in ["severity:", "team:", "summary:", "description:"] {
                assert!(block.contains(key), "{name} has no {key}");
            }
        }
    }
}

#[test]
fn amtool_check_config_accepts_alertmanager_yml() {
    require_tool("amtool", ALERTMANAGER_HINT);
    let cfg = repo("monitoring/alertmanager/alertmanager.yml");
    run_ok(Command::new("amtool").args(["check-config"]).arg(&cfg));
    // No committed secret: credentials come from mounted files.
    let text = std::fs::read_to_string(&cfg).expect("read alertmanager.yml");
    for secret_key in [
        "smtp_auth_password:",
        "slack_api_url:",
        "routing_key:",
        "service_key:",
        "api_url:",
    ] {
        assert!(
            !text.contains(secret_key),
            "alertmanager.yml holds an inline secret ({secret_key})"
        );
    }
}

#[test]
fn alertmanager_routes_by_team_and_severity() {
    require_tool("amtool", ALERTMANAGER_HINT);
    let cfg = repo("monitoring/alertmanager/alertmanager.yml");
    for (labels, want) in [
        (
            &["team=lims", "severity=critical"][..],
            "lims-email,lims-pager,lims-slack",
        ),
        (
            &["team=lims", "severity=warning"][..],
            "lims-email,lims-slack",
        ),
        (
            &["team=platform", "severity=critical"][..],
            "platform-email,platform-pager,platform-slack",
        ),
        (
            &["team=platform", "severity=warning"][..],
            "platform-email,platform-slack",
        ),
        (&["alertname=Unrouted"][..], "platform-email"),
    ] {
        let out = run_ok(
            Command::new("amtool")
                .args(["config", "routes", "test"])
                .arg(format!("--config.file={}", cfg.display()))
                .args(labels),
        );
        assert_eq!(out.trim(), want, "{labels:?}");
    }
}

#[test]
fn docker_compose_config_is_valid() {
    require_tool("docker-compose", COMPOSE_HINT);
    run_ok(
        Command::new("docker-compose")
            .arg("-f")
            .arg(repo("deploy/docker-compose.yml"))
            .args(["config", "-q"]),
    );
    let resolved = run_ok(
        Command::new("docker-compose")
            .arg("-f")
            .arg(repo("deploy/docker-compose.yml"))
            .arg("config"),
    );
    for service in ["samples", "sequencing", "storage"] {
        assert!(
            resolved.contains(&format!("network_mode: service:{service}")),
            "{service}'s sidecar shares its network namespace"
        );
    }
    for needle in [
        "service_completed_successfully",
        "service_healthy",
        "http://127.0.0.1:9901/ready",
        "http://jaeger:4317",
        "certs",
        "prometheus",
        "alertmanager",
        "grafana",
    ] {
        assert!(resolved.contains(needle), "compose stack lacks {needle}");
    }
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_locked() {
    let text = std::fs::read_to_string(repo("deploy/Dockerfile")).expect("read Dockerfile");
    assert!(text.matches("\nFROM ").count() >= 2, "multi-stage build");
    assert!(text.contains("cargo build --release --locked"));
    // The image ships the profile-guided build the benchmarks measure, locked like the
    // plain one (pgo-build passes --locked to both of its builds).
    assert!(text.contains("ARG PGO=1"), "profile-guided by default");
    assert!(text.contains("bin=$(scripts/pgo-build)"));
    assert!(text.contains("COPY scripts ./scripts"));
    let pgo = std::fs::read_to_string(repo("scripts/pgo-build")).expect("read pgo-build");
    assert_eq!(
        pgo.matches("cargo build --release --locked").count(),
        2,
        "both pgo-build builds are --locked"
    );
    assert!(text.contains("USER 10001"), "runs as non-root");
    assert!(text.contains("EXPOSE 8443 15001 9901"));
    assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/tracseq-proxy\"]"));
}

/// `major.minor` of a Rust version string ("1.91", "1.88.0").
fn minor_version(v: &str) -> (u32, u32) {
    let mut parts = v.trim().split('.').map(|p| p.parse::<u32>().expect(v));
    (parts.next().expect(v), parts.next().unwrap_or(0))
}

/// The image's toolchain, Cargo.toml's `rust-version` and the locked dependencies agree: the
/// image was once pinned to a rustc older than Cargo.lock needed and could not be built.
#[test]
fn dockerfile_toolchain_builds_every_locked_dependency() {
    let docker = std::fs::read_to_string(repo("deploy/Dockerfile")).expect("read Dockerfile");
    let image = docker
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .and_then(|rest| rest.split('-').next())
        .expect("the build stage is FROM rust:<version>-...");
    let manifest = std::fs::read_to_string(repo("Cargo.toml")).expect("read Cargo.toml");
    let declared = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"'))
        .expect("Cargo.toml declares rust-version");
    assert!(
        minor_version(image) >= minor_version(declared),
        "the image's rustc {image} is older than rust-version {declared}"
    );
    // Offline and for this platform: what building this very test downloaded.
    let rustc = run_ok(Command::new("rustc").arg("-vV"));
    let host = rustc
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host");
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", host])
        .current_dir(repo(""))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let needs: Vec<String> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| {
            let v = p["rust_version"].as_str()?;
            (minor_version(v) > minor_version(declared))
                .then(|| format!("{} {} needs {v}", p["name"], p["version"]))
        })
        .collect();
    assert!(
        needs.is_empty(),
        "rust-version {declared} is too old for Cargo.lock: {needs:?}"
    );
}

#[test]
fn grafana_dashboard_parses_and_every_panel_has_a_query() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "{} queries", queries.len());
    let all: String = queries
        .iter()
        .map(|(_, q)| q.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    // The RED dashboard covers what issue 6 lists.
    for metric in [
        "http_server_request_duration_seconds_count",
        "http_server_request_duration_seconds_bucket",
        "tracseq_proxy_overhead_seconds_bucket",
        "tracseq_proxy_circuit_breaker_state",
        "tracseq_proxy_rate_limited_total",
        "tracseq_proxy_tls_handshakes_total",
        "tracseq_proxy_tls_cert_expiration_timestamp_seconds",
        "process_resident_memory_bytes",
    ] {
        assert!(all.contains(metric), "dashboard has no panel on {metric}");
    }
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("monitoring/grafana/dashboards/tracseq-proxy-red.json"))
            .expect("read dashboard"),
    )
    .expect("json");
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        vars.contains(&"service") && vars.contains(&"direction"),
        "{vars:?}"
    );
    // Provisioning points at the dashboards' datasource uid.
    let ds = std::fs::read_to_string(repo(
        "monitoring/grafana/provisioning/datasources/prometheus.yml",
    ))
    .expect("datasource");
    assert!(ds.contains("uid: prometheus"));
    assert!(repo("monitoring/grafana/provisioning/dashboards/provider.yml").exists());
}

/// `(indent, trimmed line)` of the resolved compose file's block for one service.
fn compose_service_block(resolved: &str, service: &str) -> Vec<(usize, String)> {
    let header = format!("  {service}:");
    resolved
        .lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| l.starts_with("   ") || l.trim().is_empty())
        .map(|l| (l.len() - l.trim_start().len(), l.trim().to_string()))
        .collect()
}

fn unquote(v: &str) -> String {
    v.trim().trim_matches(|c| c == '"' || c == '\'').to_string()
}

#[test]
fn compose_sidecar_settings_and_certs_command_parse_as_the_cli_would() {
    use tracseq_proxy::config::{try_from_args, Invocation};
    require_tool("docker-compose", COMPOSE_HINT);
    let resolved = run_ok(
        Command::new("docker-compose")
            .arg("-f")
            .arg(repo("deploy/docker-compose.yml"))
            .arg("config"),
    );
    for (service, peers) in [("samples", 2), ("sequencing", 1), ("storage", 0)] {
        let block = compose_service_block(&resolved, &format!("{service}-proxy"));
        // Every TRACSEQ_PROXY_* variable as the flag it stands for (CONTRACT.md: dashes become
        // underscores); a misspelt variable becomes an unknown flag and fails here.
        let mut args = vec!["tracseq-proxy".to_string()];
        let mut in_env = false;
        for (indent, line) in &block {
            if *indent == 4 {
                in_env = line == "environment:";
                continue;
            }
            let Some((key, value)) = line.split_once(": ").filter(|_| in_env) else {
                continue;
            };
            let flag = key.strip_prefix("TRACSEQ_PROXY_").unwrap_or_else(|| {
                panic!("{service}: sidecar variable {key} is not TRACSEQ_PROXY_*")
            });
            args.push(format!("--{}", flag.to_lowercase().replace('_', "-")));
            args.push(unquote(value));
        }
        assert!(
            args.len() > 20,
            "{service}: sidecar environment not found: {args:?}"
        );
        match try_from_args(&args) {
            Ok(Invocation::Run(cfg)) => {
                assert_eq!(cfg.peers.len(), peers, "{service} peers");
                assert!(cfg.tls.cert.is_some() && cfg.tls.key.is_some() && cfg.tls.ca.is_some());
                assert_eq!(cfg.otlp_endpoint.as_deref(), Some("http://jaeger:4317"));
                assert_eq!(cfg.admin.port(), 9901);
            }
            Ok(_) => panic!("{service}: not a sidecar invocation"),
            Err(e) => panic!("{service}: compose settings rejected: {e}\n{args:?}"),
        }
    }
    let certs = compose_service_block(&resolved, "certs");
    let mut args = vec!["tracseq-proxy".to_string()];
    args.extend(
        certs
            .iter()
            .skip_while(|(_, l)| l != "command:")
            .skip(1)
            .take_while(|(_, l)| l.starts_with("- "))
            .map(|(_, l)| unquote(&l[2..])),
    );
    assert!(
        matches!(try_from_args(&args), Ok(Invocation::Certs(_))),
        "certs job command does not parse: {args:?}"
    );
    for service in ["samples", "sequencing", "storage"] {
        assert!(
            args.contains(&service.to_string()),
            "certs job issues {service}"
        );
    }
}
