//! `/metrics` after known traffic (issue 2): per-status counts equal what was sent, the
//! duration buckets are exactly CONTRACT.md's, every core family is present, the classic text
//! passes `promtool check metrics`, and OpenMetrics is served when asked for.

mod support;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::{Command, Stdio};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

const CONTRACT_BUCKETS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    7.5, 10.0,
];

/// The `le` values of one histogram family, as numbers (`+Inf` included).
fn buckets(m: &Metrics, family: &str) -> BTreeSet<u64> {
    m.select(&format!("{family}_bucket"), &[])
        .map(|s| {
            s.labels["le"]
                .parse::<f64>()
                .expect("le is a number")
                .to_bits()
        })
        .collect()
}

async fn scrape_text(admin: std::net::SocketAddr, accept: Option<&str>) -> Collected {
    let mut req = Request::get(format!("http://{admin}/metrics"));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    send(
        &h1_client(),
        req.body(Full::new(Bytes::new())).expect("request"),
    )
    .await
    .expect("scrape")
}

#[tokio::test]
async fn metrics_after_known_traffic() {
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    cfg.peers = vec![format!("app=127.0.0.1:{}", up.addr.port())
        .parse()
        .expect("peer")];
    let proxy = start(cfg).await;
    let h1 = h1_client();
    let h2 = h2_client();
    let sent = [("200", 5), ("404", 2), ("503", 3)];
    for (status, n) in sent {
        for i in 0..n {
            let client = if i % 2 == 0 { &h1 } else { &h2 };
            let r = send(
                client,
                Request::get(proxy.inbound_url(&format!("/status/{status}")))
                    .body(Full::new(Bytes::new()))
                    .expect("request"),
            )
            .await
            .expect("response");
            assert_eq!(r.status.to_string(), status);
        }
    }
    for _ in 0..4 {
        let r = send(
            &h1,
            Request::get(format!("http://{}/out", proxy.outbound_addr()))
                .header("host", "app")
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("response");
        assert_eq!(r.status, 200);
    }

    let m = proxy.metrics().await;
    let count = "http_server_request_duration_seconds_count";
    for (status, n) in sent {
        assert_eq!(
            m.sum(
                count,
                &[
                    ("direction", "inbound"),
                    ("http_response_status_code", status)
                ]
            ),
            n as f64,
            "inbound {status}"
        );
    }
    assert_eq!(m.sum(count, &[("direction", "inbound")]), 10.0);
    assert_eq!(
        m.sum(count, &[("direction", "inbound"), ("error_type", "503")]),
        3.0,
        "upstream 5xx carry error_type"
    );
    assert_eq!(
        m.sum(
            count,
            &[("direction", "inbound"), ("network_protocol_version", "2")]
        ),
        4.0
    );
    assert_eq!(
        m.sum(
            count,
            &[
                ("direction", "outbound"),
                ("http_response_status_code", "200")
            ]
        ),
        4.0
    );
    // Labels never carry raw paths.
    assert!(
        !m.text.contains("/status/"),
        "a raw path leaked into a label"
    );

    let expected: BTreeSet<u64> = CONTRACT_BUCKETS
        .iter()
        .chain(&[f64::INFINITY])
        .map(|b| b.to_bits())
        .collect();
    assert_eq!(
        buckets(&m, "http_server_request_duration_seconds"),
        expected
    );
    assert_eq!(
        buckets(&m, "http_client_request_duration_seconds"),
        expected
    );
    let overhead = buckets(&m, "tracseq_proxy_overhead_seconds");
    assert_eq!(
        overhead
            .iter()
            .map(|b| f64::from_bits(*b))
            .fold(f64::INFINITY, f64::min),
        0.00001,
        "overhead buckets start at 10µs"
    );

    let client = "http_client_request_duration_seconds_count";
    assert_eq!(
        m.sum(
            client,
            &[
                ("direction", "inbound"),
                ("http_response_status_code", "503")
            ]
        ),
        3.0
    );
    assert_eq!(
        m.sum(
            client,
            &[("direction", "outbound"), ("server_address", "app")]
        ),
        4.0
    );
    assert_eq!(
        m.sum(
            client,
            &[
                ("direction", "outbound"),
                ("server_port", &up.addr.port().to_string())
            ]
        ),
        4.0
    );
    assert_eq!(
        m.sum(
            "tracseq_proxy_overhead_seconds_count",
            &[("direction", "inbound")]
        ),
        10.0
    );
    assert_eq!(m.sum("http_server_active_requests", &[]), 0.0);
    assert!(
        m.sum(
            "tracseq_proxy_tcp_connections_total",
            &[("direction", "inbound")]
        ) >= 2.0
    );
    assert!(
        m.sum(
            "tracseq_proxy_tcp_connections_total",
            &[("direction", "outbound")]
        ) >= 1.0
    );
    assert!(
        m.select(
            "tracseq_proxy_tcp_connections_open",
            &[("direction", "inbound")]
        )
        .count()
            == 1
    );
    assert_eq!(
        m.select(
            "tracseq_proxy_upstream_errors_total",
            &[("direction", "inbound")]
        )
        .count(),
        5,
        "one series per kind"
    );
    assert_eq!(
        m.sum(
            "tracseq_proxy_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(m.sum("process_resident_memory_bytes", &[]) > 1e6);
    assert!(m.sum("process_open_fds", &[]) > 0.0);
    assert!(m.select("process_cpu_seconds_total", &[]).count() == 1);
    for family in [
        "http_server_request_duration_seconds",
        "http_client_request_duration_seconds",
        "tracseq_proxy_overhead_seconds",
    ] {
        assert!(m.has_family(family), "{family}");
    }
    for family in [
        "tracseq_proxy_tcp_connections_total",
        "tracseq_proxy_upstream_errors_total",
        "process_cpu_seconds_total",
    ] {
        assert!(
            m.text.contains(&format!("# TYPE {family} counter")),
            "{family} is a counter named with _total"
        );
    }
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn exposition_passes_promtool_and_openmetrics_is_negotiated() {
    require_tool("promtool", "apt-get install prometheus");
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    for path in ["/a", "/status/500", "/status/404"] {
        let _ = get(&proxy.inbound_url(path)).await.expect("traffic");
    }
    let dead = start(config({
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr")
    }))
    .await;
    assert_eq!(get(&dead.inbound_url("/x")).await.expect("502").status, 502);

    for p in [&proxy, &dead] {
        let plain = scrape_text(p.admin, None).await;
        assert_eq!(plain.status, 200);
        let ctype = plain.header("content-type").expect("content type");
        assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
        assert!(!plain.text().contains("# EOF"));
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&plain.body)
            .expect("feed promtool");
        let out = child.wait_with_output().expect("promtool ends");
        assert!(
            out.status.success(),
            "promtool check metrics failed:\n{}{}\n--- exposition ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            plain.text()
        );
    }

    let om = scrape_text(
        proxy.admin,
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    )
    .await;
    assert_eq!(om.status, 200);
    let ctype = om.header("content-type").expect("content type");
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(
        om.text().ends_with("# EOF\n"),
        "OpenMetrics ends with # EOF"
    );
    assert!(om
        .text()
        .contains("# TYPE tracseq_proxy_upstream_errors counter"));
    assert!(dead.shutdown().await);
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn admin_routes() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    let admin = proxy.admin;
    assert_eq!(
        get(&format!("http://{admin}/live"))
            .await
            .expect("live")
            .status,
        200
    );
    assert_eq!(
        get(&format!("http://{admin}/ready"))
            .await
            .expect("ready")
            .status,
        200
    );
    assert_eq!(
        get(&format!("http://{admin}/nope"))
            .await
            .expect("404")
            .status,
        404
    );
    assert_eq!(
        get(&format!("http://{admin}/shutdown"))
            .await
            .expect("405")
            .status,
        405
    );
    assert!(proxy.shutdown().await);
}
