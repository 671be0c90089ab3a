//! The monitoring kit against reality: two sidecars with upstreams on loopback carry known
//! traffic (200s and 500s, inbound and sidecar-to-sidecar), a real `prometheus` scrapes them
//! with a config rendered from the shipped one and loads the shipped rules, and then every
//! recording rule, every alert expression and every Grafana panel query is evaluated through
//! the Prometheus HTTP API: none may fail, and the RED queries agree with the traffic sent.

mod monitoring_kit;
mod support;

use std::collections::BTreeMap;

use bytes::Bytes;
use http::header::HOST;
use http::Request;
use http_body_util::Full;
use monitoring_kit::prometheus::{label, render_config, value, Prometheus};
use monitoring_kit::{dashboard_queries, repo};
use support::*;
use tracseq_proxy::config::Peer;

/// Main traffic, sent after Prometheus' first scrape.
const IN_OK: usize = 30;
const IN_ERR: usize = 6;
const OUT_OK: usize = 12;
const OUT_ERR: usize = 3;
/// Warm-up traffic, sent before it, in the same proportions as the main traffic: `rate()`
/// limits its extrapolation by each series' first value relative to its increase, so equal
/// proportions keep the ratio of two rates exactly the ratio of what was sent.
const WARM_UP: [usize; 4] = [IN_OK / 6, IN_ERR / 6, OUT_OK / 3, OUT_ERR / 3];

async fn inbound(client: &TestClient, proxy: &Proxy, path: &str) -> u16 {
    let req = Request::get(proxy.inbound_url(path))
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(client, req).await.expect("inbound answer").status
}

async fn outbound(client: &TestClient, proxy: &Proxy, callee: &str, path: &str) -> u16 {
    let req = Request::get(format!("http://{}{path}", proxy.outbound_addr()))
        .header(HOST, callee)
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(client, req).await.expect("outbound answer").status
}

/// `n_ok` 200s and `n_err` 500s into samples, and the same through samples to storage.
async fn traffic(client: &TestClient, samples: &Proxy, n: [usize; 4]) {
    for (count, path, want) in [(n[0], "/api/samples/1", 200), (n[1], "/status/500", 500)] {
        for _ in 0..count {
            assert_eq!(inbound(client, samples, path).await, want);
        }
    }
    for (count, path, want) in [(n[2], "/api/locations/1", 200), (n[3], "/status/500", 500)] {
        for _ in 0..count {
            assert_eq!(outbound(client, samples, "storage", path).await, want);
        }
    }
}

/// `sum by (http_response_status_code)` of a query result, as a map.
fn by_status(result: &[serde_json::Value]) -> BTreeMap<String, f64> {
    result
        .iter()
        .map(|s| (label(s, "http_response_status_code").to_string(), value(s)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_sidecars_and_every_shipped_query_agrees_with_the_traffic() {
    require_tool("prometheus", "apt-get install prometheus");
    let (up_samples, up_storage) = (Upstream::start().await, Upstream::start().await);
    let storage = start(config(up_storage.addr)).await;
    let mut cfg = config(up_samples.addr);
    // The traffic has runs of 5xx on purpose; the breaker would turn them into 503s.
    cfg.breaker_failures = 0;
    let peer: Peer = format!(
        "storage=127.0.0.1:{}",
        storage.inbound.expect("inbound").port()
    )
    .parse()
    .expect("peer");
    cfg.peers.push(peer);
    let samples = start(cfg).await;
    let client = h1_client();

    // Warm-up: requests of every kind, so every series exists before Prometheus' first
    // scrape and `rate()` over the main traffic sees all of it (a counter's first sample is
    // its baseline).
    traffic(&client, &samples, WARM_UP).await;

    let shipped = std::fs::read_to_string(repo("monitoring/prometheus/prometheus.yml"))
        .expect("shipped config");
    let rendered = render_config(
        &shipped,
        &[(samples.admin, "samples"), (storage.admin, "storage")],
        &repo("monitoring/prometheus/rules"),
    );
    assert!(
        rendered.contains("job_name: tracseq-proxy") && !rendered.contains("alertmanager"),
        "{rendered}"
    );
    let prom = Prometheus::start(&rendered).await;

    prom.wait_for(
        r#"up{job="tracseq-proxy"} == 1"#,
        "up == 1 on both sidecars",
        |r| {
            let mut services: Vec<&str> = r.iter().map(|s| label(s, "service")).collect();
            services.sort();
            services == ["samples", "storage"]
        },
    )
    .await;

    traffic(&client, &samples, [IN_OK, IN_ERR, OUT_OK, OUT_ERR]).await;

    // Prometheus has the totals (warm-up included) once it scraped after the traffic.
    let counts = |svc: &str, dir: &str| {
        format!(
            r#"sum by (http_response_status_code) (http_server_request_duration_seconds_count{{job="tracseq-proxy", service="{svc}", direction="{dir}"}})"#
        )
    };
    let [w_in_ok, w_in_err, w_out_ok, w_out_err] = WARM_UP;
    for (svc, dir, ok, err) in [
        ("samples", "inbound", IN_OK + w_in_ok, IN_ERR + w_in_err),
        (
            "samples",
            "outbound",
            OUT_OK + w_out_ok,
            OUT_ERR + w_out_err,
        ),
        ("storage", "inbound", OUT_OK + w_out_ok, OUT_ERR + w_out_err),
    ] {
        let want = BTreeMap::from([
            ("200".to_string(), ok as f64),
            ("500".to_string(), err as f64),
        ]);
        prom.wait_for(&counts(svc, dir), &format!("{svc} {dir} totals"), |r| {
            by_status(r) == want
        })
        .await;
    }
    // One more scrape interval so the latest sample is in every 1m window below.
    prom.wait_for(
        r#"count_over_time(up{job="tracseq-proxy", service="samples"}[1m]) >= 4"#,
        "a few scrapes",
        |r| !r.is_empty(),
    )
    .await;

    // Every loaded rule is healthy and its expression evaluates.
    let groups = prom.api("/api/v1/rules").await.expect("rules API");
    let mut rules = Vec::new();
    for g in groups["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            rules.push(r.clone());
        }
    }
    let alerts = rules.iter().filter(|r| r["type"] == "alerting").count();
    let records = rules.iter().filter(|r| r["type"] == "recording").count();
    assert!(
        alerts >= 8 && records >= 8,
        "{alerts} alerts, {records} recording rules loaded"
    );
    for r in &rules {
        assert_ne!(
            r["health"], "err",
            "rule {} unhealthy: {}",
            r["name"], r["lastError"]
        );
        let q = r["query"].as_str().expect("rule query");
        prom.query(q)
            .await
            .unwrap_or_else(|e| panic!("rule {}: {e}", r["name"]));
    }

    // The fast-burn alert's expression sees samples' inbound errors (1 in 6 is far above the
    // 1.44% threshold) once the recording rules have been evaluated.
    let burn = rules
        .iter()
        .find(|r| r["name"] == "TracseqProxyErrorBudgetBurnFast")
        .and_then(|r| r["query"].as_str())
        .expect("fast burn alert");
    prom.wait_for(burn, "fast-burn expression on samples inbound", |r| {
        r.iter()
            .any(|s| label(s, "service") == "samples" && label(s, "direction") == "inbound")
    })
    .await;
    // And no sidecar is down.
    assert!(prom
        .query(r#"ALERTS{alertname="TracseqProxyDown"}"#)
        .await
        .expect("ALERTS")
        .is_empty());

    // The dashboard's template variable finds both services.
    let services = prom
        .api(&format!(
            "/api/v1/label/service/values?match[]={}",
            monitoring_kit::prometheus::encode(r#"up{job="tracseq-proxy"}"#)
        ))
        .await
        .expect("label values");
    assert_eq!(services, serde_json::json!(["samples", "storage"]));

    // Every Grafana panel query evaluates, as Grafana would send it for service=samples and
    // all directions.
    let mut panels: BTreeMap<String, Vec<Vec<serde_json::Value>>> = BTreeMap::new();
    for (title, expr) in dashboard_queries() {
        let q = expr
            .replace("$__rate_interval", "1m")
            .replace("$service", "samples")
            .replace("$direction", ".+");
        assert!(!q.contains('$'), "unsubstituted variable in {title}: {q}");
        let r = prom
            .query(&q)
            .await
            .unwrap_or_else(|e| panic!("panel {title}: {e}"));
        panels.entry(title).or_default().push(r);
    }

    // RED panels agree with the traffic.
    let by_dir = |r: &[serde_json::Value], dir: &str| -> Vec<serde_json::Value> {
        r.iter()
            .filter(|s| label(s, "direction") == dir)
            .cloned()
            .collect()
    };
    let status = &panels["Requests by status"][0];
    for (dir, ok, err) in [("inbound", IN_OK, IN_ERR), ("outbound", OUT_OK, OUT_ERR)] {
        // Rates over one window share their extrapolation, so their ratio is exact.
        let r = by_status(&by_dir(status, dir));
        let ratio = r["500"] / r["200"];
        let want = err as f64 / ok as f64;
        assert!(
            (ratio - want).abs() < 1e-6,
            "{dir}: 500/200 rate ratio {ratio}, sent {want}: {r:?}"
        );
        let errors = by_dir(&panels["Error ratio (5xx)"][0], dir);
        assert_eq!(errors.len(), 1, "{dir} error ratio series: {errors:?}");
        let want = err as f64 / (ok + err) as f64;
        assert!(
            (value(&errors[0]) - want).abs() < 1e-6,
            "{dir}: error ratio {} != {want}",
            value(&errors[0])
        );
        let rate = by_dir(&panels["Request rate"][0], dir);
        assert!(
            rate.len() == 1 && value(&rate[0]) > 0.0,
            "{dir} request rate: {rate:?}"
        );
    }
    // Latency percentiles: three series per direction, ordered p50 <= p95 <= p99.
    let pct = &panels["Duration p50 / p95 / p99"];
    assert_eq!(pct.len(), 3);
    for dir in ["inbound", "outbound"] {
        let v: Vec<f64> = pct
            .iter()
            .map(|r| by_dir(r, dir).first().map(value).unwrap_or(f64::NAN))
            .collect();
        assert!(
            v.iter().all(|x| x.is_finite() && *x > 0.0),
            "{dir} percentiles {v:?}"
        );
        assert!(
            v[0] <= v[1] && v[1] <= v[2],
            "{dir} percentiles out of order {v:?}"
        );
    }
    let up = &panels["Sidecars up"][0];
    assert!(up.len() == 1 && value(&up[0]) == 1.0, "{up:?}");
    assert!(value(&panels["Memory (RSS)"][0][0]) > 0.0);
    // Only the samples series: the service variable filters.
    for results in panels.values().flatten() {
        for s in results {
            let svc = label(s, "service");
            assert!(
                svc.is_empty() || svc == "samples",
                "service filter leaked {s}"
            );
        }
    }

    drop(prom);
    assert!(samples.shutdown().await);
    assert!(storage.shutdown().await);
}

/// The kit hands Prometheus a port it found free and released; when another process takes it
/// first, Prometheus exits ("address already in use") and the kit starts it again on another
/// port instead of failing the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kit_starts_prometheus_again_when_its_port_was_taken() {
    require_tool("prometheus", "apt-get install prometheus");
    // Bound, not listening: Prometheus cannot bind it, and the kit's readiness checks on it
    // are refused at once rather than left waiting in a listener's backlog.
    let (addr, taken) = refused_addr();
    let prom = Prometheus::start_trying("global:\n  scrape_interval: 1s\n", Some(addr)).await;
    assert_ne!(prom.addr, addr, "started on the taken port");
    let build = prom
        .api("/api/v1/status/buildinfo")
        .await
        .expect("the second Prometheus answers");
    assert!(build["version"].is_string(), "{build}");
    drop(taken);
}
