//! A real `prometheus` for tests: a config rendered from the shipped one (targets pointed at
//! the test's sidecars, 1s intervals, the shipped rules by absolute path, no Alertmanager),
//! storage in a temp dir, a loopback port, killed on drop; and a small client for its HTTP API.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::get;

/// Upper bound of every wait on Prometheus (start, first scrapes, data).
pub const PROM_WAIT: Duration = Duration::from_secs(30);

/// Render the shipped prometheus.yml for a test: same jobs and settings, but `static_configs`
/// replaced by `targets` (address, service label), intervals at 1s, `rule_files` pointing at
/// `rules_dir`, and no `alerting` section (no Alertmanager here).
pub fn render_config(shipped: &str, targets: &[(SocketAddr, &str)], rules_dir: &Path) -> String {
    let mut out = String::new();
    let mut skip_deeper_than: Option<usize> = None;
    for line in shipped.lines() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        if let Some(level) = skip_deeper_than {
            if t.is_empty() || indent > level || (indent == level && t.starts_with("- ")) {
                continue;
            }
            skip_deeper_than = None;
        }
        let pad = " ".repeat(indent);
        if indent == 0 && t.starts_with("alerting:") {
            skip_deeper_than = Some(0);
        } else if indent == 0 && t.starts_with("rule_files:") {
            out += &format!("rule_files:\n  - {}/*.yml\n", rules_dir.display());
            skip_deeper_than = Some(0);
        } else if t.starts_with("static_configs:") {
            out += &format!("{pad}static_configs:\n");
            for (addr, service) in targets {
                out += &format!(
                    "{pad}  - targets: [\"{addr}\"]\n{pad}    labels:\n{pad}      service: {service}\n"
                );
            }
            skip_deeper_than = Some(indent);
        } else if let Some(key) = ["scrape_interval:", "evaluation_interval:"]
            .into_iter()
            .find(|k| t.starts_with(k))
        {
            out += &format!("{pad}{key} 1s\n");
        } else {
            out += line;
            out.push('\n');
        }
    }
    out
}

pub struct Prometheus {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts before giving up when another process takes the port first (see `start`).
const PROM_STARTS: usize = 3;

impl Prometheus {
    /// Start `prometheus` with this config and wait (bounded) until it is ready.
    ///
    /// Prometheus binds its listen address itself, so the port is found free (bound on port
    /// 0 and released) and handed over: another process may take it in between. Prometheus
    /// then exits saying the address is in use, and it is started again, in a fresh directory
    /// on another port, up to `PROM_STARTS` times; any other exit fails the test with its log.
    pub async fn start(config: &str) -> Prometheus {
        Self::start_trying(config, None).await
    }

    /// `start`, with the first start on `first` (taken, for the test of the retry).
    pub async fn start_trying(config: &str, mut first: Option<SocketAddr>) -> Prometheus {
        for attempt in 1..=PROM_STARTS {
            let dir = tempfile::tempdir().expect("temp dir");
            let cfg_path = dir.path().join("prometheus.yml");
            std::fs::write(&cfg_path, config).expect("write config");
            let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
            let addr = match first.take() {
                Some(addr) => addr,
                None => std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("free port"),
            };
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", cfg_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--storage.tsdb.retention.time=1h")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn prometheus");
            let mut p = Prometheus {
                addr,
                child,
                _dir: dir,
            };
            let deadline = tokio::time::Instant::now() + PROM_WAIT;
            loop {
                if let Ok(resp) = get(&format!("http://{addr}/-/ready")).await {
                    if resp.status == 200 {
                        return p;
                    }
                }
                if let Ok(Some(status)) = p.child.try_wait() {
                    let log = p.log();
                    if attempt < PROM_STARTS && log.contains("address already in use") {
                        eprintln!(
                            "prometheus: {addr} was taken before it bound it; starting again"
                        );
                        break;
                    }
                    panic!("prometheus exited with {status}:\n{log}");
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "prometheus not ready within {PROM_WAIT:?}:\n{}",
                    p.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        unreachable!("the last start returns or panics")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET an API path, expect `"status": "success"`, return `data`.
    pub async fn api(&self, path_and_query: &str) -> Result<serde_json::Value, String> {
        let resp = get(&format!("http://{}{path_and_query}", self.addr)).await?;
        let v: serde_json::Value = serde_json::from_slice(&resp.body)
            .map_err(|e| format!("{path_and_query}: not JSON ({e}): {}", resp.text()))?;
        if v["status"] != "success" {
            return Err(format!("{path_and_query}: {} {}", resp.status, resp.text()));
        }
        Ok(v["data"].clone())
    }

    /// Evaluate an instant query; the vector (or scalar) result.
    pub async fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(promql)))
            .await
            .map_err(|e| format!("query `{promql}`: {e}"))?;
        match &data["result"] {
            serde_json::Value::Array(v) if data["resultType"] != "scalar" => Ok(v.clone()),
            other => Ok(vec![serde_json::json!({"metric": {}, "value": other})]),
        }
    }

    /// Poll `promql` until `done` accepts its result or `PROM_WAIT` elapses.
    pub async fn wait_for(
        &self,
        promql: &str,
        what: &str,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + PROM_WAIT;
        loop {
            let r = self.query(promql).await.unwrap_or_else(|e| panic!("{e}"));
            if done(&r) {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {PROM_WAIT:?}; last result of `{promql}`: {r:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The value of a vector sample as f64.
pub fn value(sample: &serde_json::Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A label of a vector sample.
pub fn label<'a>(sample: &'a serde_json::Value, name: &str) -> &'a str {
    sample["metric"][name].as_str().unwrap_or("")
}

/// Percent-encode a query parameter (everything but RFC 3986 unreserved characters).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
