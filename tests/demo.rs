//! `tracseq-proxy demo` runs to completion with a short duration, and its RED summary (read
//! from the sidecars' own /metrics) agrees with the traffic its generator sent.

use tracseq_proxy::config::cli::DemoArgs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_and_its_summary_matches_its_traffic() {
    let args = DemoArgs {
        duration: "2s".into(),
        rate: 100,
        keep_running: false,
        quiet: true,
    };
    let summary = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tracseq_proxy::demo::run(args),
    )
    .await
    .expect("demo finished within 60s")
    .expect("demo ran");
    println!("{summary}");
    assert_eq!(
        summary.sent.transport_failures, 0,
        "every demo request got an answer"
    );
    let total = summary.sent.total();
    // Generous: a shared, noisy machine may reach a fraction of the asked rate.
    assert!(total.requests >= 20, "too little traffic: {total:?}");
    // Every request crosses two sidecars: the caller's outbound and the callee's inbound.
    for dir in ["inbound", "outbound"] {
        let measured: u64 = summary
            .rows
            .iter()
            .filter(|r| r.direction == dir)
            .map(|r| r.requests)
            .sum();
        assert_eq!(measured, total.requests, "{dir} requests across the mesh");
    }
    for ((service, direction), sent) in &summary.sent.by_service {
        let row = summary
            .row(service, direction)
            .unwrap_or_else(|| panic!("no summary row for {service} {direction}"));
        assert_eq!(
            row.requests, sent.requests,
            "{service} {direction} requests"
        );
        assert_eq!(row.errors, sent.errors, "{service} {direction} 5xx");
        let (p50, p99) = (row.p50.expect("p50"), row.p99.expect("p99"));
        assert!(
            p50 > 0.0 && p50 <= p99,
            "{service} {direction}: p50 {p50} p99 {p99}"
        );
    }
    assert!(summary.agrees_with_traffic());
    // The hops between sidecars really were mTLS: the callees counted successful handshakes.
    assert!(summary.mtls);
    assert!(
        summary.tls_handshakes_ok > 0,
        "no inbound TLS handshake was counted: the mesh ran in plaintext"
    );
    // All five (service, direction) pairs of the demo's call graph carried traffic.
    for (svc, dir) in [
        ("frontend", "outbound"),
        ("samples", "inbound"),
        ("samples", "outbound"),
        ("sequencing", "inbound"),
        ("storage", "inbound"),
    ] {
        assert!(
            summary.row(svc, dir).is_some_and(|r| r.requests > 0),
            "{svc} {dir} saw traffic"
        );
    }
}

#[tokio::test]
async fn demo_rejects_a_bad_duration() {
    let args = DemoArgs {
        duration: "soon".into(),
        rate: 10,
        keep_running: false,
        quiet: true,
    };
    let err = tracseq_proxy::demo::run(args)
        .await
        .expect_err("bad duration");
    assert!(err.to_string().contains("--duration"), "{err}");
}
