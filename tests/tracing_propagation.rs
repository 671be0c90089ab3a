//! Trace context propagation as the upstream sees it: W3C edge cases start new traces,
//! `tracestate` passes unchanged (or is dropped with a discarded parent), B3 in / W3C out, the
//! caller's sampled flag is honoured, and with export off headers pass through untouched.

mod support;

use support::collector::*;
use support::*;

#[tokio::test]
async fn invalid_traceparent_starts_a_new_trace() {
    let up = Upstream::start().await;
    let collector = Collector::start(Protocol::Grpc).await;
    let proxy = start(traced(up.addr, &collector, Protocol::Grpc, "svc")).await;
    let bad = [
        format!("00-{}-{CALLER_SPAN}-01", TRACE.to_uppercase()),
        format!("ff-{TRACE}-{CALLER_SPAN}-01"),
        format!("00-{TRACE}-0000000000000000-01"),
        format!("00-00000000000000000000000000000000-{CALLER_SPAN}-01"),
        format!("00-{TRACE}-{CALLER_SPAN}-1"),
        format!("00-{TRACE}-{CALLER_SPAN}-01-"),
    ];
    let client = h1_client();
    let mut new_traces = Vec::new();
    for tp in &bad {
        let resp = send(
            &client,
            get_with(
                &proxy.inbound_url("/x"),
                &[("traceparent", tp), ("tracestate", "vendor=abc")],
            ),
        )
        .await
        .expect("response");
        assert_eq!(resp.status, 200);
        let seen = up.last();
        let (trace, _, flags) = traceparent_of(&seen);
        assert_ne!(trace, TRACE, "{tp} must not be continued");
        assert_ne!(trace, "0".repeat(32));
        assert_eq!(flags, "01", "a new trace is sampled at ratio 1.0");
        assert!(
            seen.headers.get("tracestate").is_none(),
            "tracestate of a discarded parent is dropped"
        );
        new_traces.push(trace);
    }
    assert!(proxy.shutdown().await);
    let spans = collector
        .wait_until("all spans", |s| s.len() >= 2 * bad.len())
        .await;
    for t in &new_traces {
        let server = spans
            .iter()
            .find(|s| &s.trace_id() == t && s.is_server())
            .expect("server span of the new trace");
        assert!(
            server.span.parent_span_id.is_empty(),
            "a new trace has a root span"
        );
    }
}

#[tokio::test]
async fn b3_in_w3c_out() {
    let up = Upstream::start().await;
    let collector = Collector::start(Protocol::Grpc).await;
    let mut cfg = traced(up.addr, &collector, Protocol::Grpc, "svc");
    cfg.propagation_b3 = true;
    let proxy = start(cfg).await;
    let client = h1_client();

    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let b3 = format!("{b3_trace}-e457b5a2e4d86bd1-1");
    send(
        &client,
        get_with(
            &proxy.inbound_url("/single"),
            &[("b3", &b3), ("tracestate", "vendor=orphan")],
        ),
    )
    .await
    .expect("response");
    let seen = up.last();
    let (trace, _, flags) = traceparent_of(&seen);
    assert_eq!((trace.as_str(), flags.as_str()), (b3_trace, "01"));
    assert!(seen.headers.get("b3").is_none(), "W3C is what goes out");
    assert!(
        seen.headers.get("tracestate").is_none(),
        "a tracestate without a valid traceparent does not travel on"
    );

    send(
        &client,
        get_with(
            &proxy.inbound_url("/multi"),
            &[
                ("x-b3-traceid", "64fe8b2a57d3eff7"),
                ("x-b3-spanid", "e457b5a2e4d86bd1"),
                ("x-b3-sampled", "0"),
            ],
        ),
    )
    .await
    .expect("response");
    let seen = up.last();
    let (trace, _, flags) = traceparent_of(&seen);
    assert_eq!(trace, "000000000000000064fe8b2a57d3eff7");
    assert_eq!(
        flags, "00",
        "the caller's decision not to sample is honoured"
    );
    assert!(seen.headers.get("x-b3-traceid").is_none());

    assert!(proxy.shutdown().await);
    let spans = collector.wait_until("b3 spans", |s| s.len() >= 2).await;
    assert!(
        spans.iter().all(|s| s.trace_id() == b3_trace),
        "unsampled trace not exported: {spans:#?}"
    );
    let server = spans.iter().find(|s| s.is_server()).expect("server span");
    assert_eq!(server.parent_id(), "e457b5a2e4d86bd1");
}

#[tokio::test]
async fn unsampled_caller_is_honoured_and_ratio_zero_samples_nothing() {
    let up = Upstream::start().await;
    let collector = Collector::start(Protocol::Grpc).await;
    let mut cfg = traced(up.addr, &collector, Protocol::Grpc, "svc");
    cfg.trace_sample_ratio = 0.0;
    let proxy = start(cfg).await;
    let client = h1_client();
    // Caller says "not sampled" → not recorded, flag passed on, our span id as parent.
    let tp = format!("00-{TRACE}-{CALLER_SPAN}-00");
    send(
        &client,
        get_with(&proxy.inbound_url("/a"), &[("traceparent", &tp)]),
    )
    .await
    .expect("response");
    let (trace, parent, flags) = traceparent_of(&up.last());
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "00"));
    assert_ne!(
        parent, CALLER_SPAN,
        "the parent-id is replaced by the proxy's span"
    );
    // Caller says "sampled" → recorded even at ratio 0 (parent-based).
    let tp = format!("00-{TRACE}-{CALLER_SPAN}-01");
    send(
        &client,
        get_with(&proxy.inbound_url("/b"), &[("traceparent", &tp)]),
    )
    .await
    .expect("response");
    // No caller context at ratio 0 → a new, unsampled trace.
    send(&client, get_with(&proxy.inbound_url("/c"), &[]))
        .await
        .expect("response");
    let (trace_c, _, flags_c) = traceparent_of(&up.last());
    assert_ne!(trace_c, TRACE);
    assert_eq!(flags_c, "00");
    assert!(proxy.shutdown().await);
    let spans = collector
        .wait_until("sampled spans", |s| s.len() >= 2)
        .await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert!(spans
        .iter()
        .all(|s| s.attr("url.path").as_deref().unwrap_or("/b") == "/b"));
}

#[tokio::test]
async fn export_off_passes_trace_headers_unchanged() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    let tp = format!("00-{TRACE}-{CALLER_SPAN}-01");
    send(
        &h1_client(),
        get_with(
            &proxy.inbound_url("/x"),
            &[("traceparent", &tp), ("tracestate", "a=b")],
        ),
    )
    .await
    .expect("response");
    let seen = up.last();
    assert_eq!(
        seen.headers
            .get("traceparent")
            .map(|v| v.to_str().expect("ascii")),
        Some(tp.as_str())
    );
    assert_eq!(
        seen.headers
            .get("tracestate")
            .map(|v| v.to_str().expect("ascii")),
        Some("a=b")
    );
    let m = proxy.metrics().await;
    assert_eq!(m.sum("tracseq_proxy_spans_dropped_total", &[]), 0.0);
    assert!(proxy.shutdown().await);
}
