//! Distributed tracing end to end: spans exported over real OTLP (gRPC and HTTP/protobuf) to an
//! in-test collector, W3C/B3 propagation as the upstream sees it, and exemplars.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::collector::{Collector, Exported, Protocol};
use support::*;
use tracseq_proxy::config::Config;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn traced(up: std::net::SocketAddr, c: &Collector, protocol: Protocol, name: &str) -> Config {
    let mut cfg = config(up);
    cfg.otlp_endpoint = Some(c.endpoint());
    cfg.otlp_protocol = match protocol {
        Protocol::Grpc => tracseq_proxy::config::OtlpProtocol::Grpc,
        Protocol::Http => tracseq_proxy::config::OtlpProtocol::Http,
    };
    cfg.service_name = Some(name.to_string());
    cfg.routes = vec!["/api/samples/{id}".parse().expect("route")];
    cfg
}

fn get_with(url: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).expect("request")
}

fn traceparent_of(r: &upstream::Recorded) -> (String, String, String) {
    let tp = r
        .headers
        .get("traceparent")
        .expect("upstream got a traceparent")
        .to_str()
        .expect("ascii");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn one<'a>(spans: &'a [Exported], service: &str, server: bool) -> &'a Exported {
    let found: Vec<&Exported> = spans
        .iter()
        .filter(|s| s.service == service && s.is_server() == server)
        .collect();
    assert_eq!(found.len(), 1, "{service} server={server}: {spans:#?}");
    found[0]
}

/// caller app → caller's outbound → caller CLIENT → callee's inbound → callee CLIENT → app.
async fn two_sidecars_one_trace(protocol: Protocol) {
    let up = Upstream::start().await;
    let collector = Collector::start(protocol).await;
    let callee = start(traced(up.addr, &collector, protocol, "callee")).await;
    let mut caller_cfg = traced(up.addr, &collector, protocol, "caller");
    let callee_port = callee.inbound.expect("inbound").port();
    caller_cfg.peers = vec![format!("callee=127.0.0.1:{callee_port}")
        .parse()
        .expect("peer")];
    let caller = start(caller_cfg).await;

    let url = format!("http://{}/api/samples/42?x=1", caller.outbound_addr());
    let tp = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let resp = send(
        &h1_client(),
        get_with(
            &url,
            &[
                ("host", "callee"),
                ("traceparent", &tp),
                ("tracestate", "vendor=abc,other=1"),
            ],
        ),
    )
    .await
    .expect("response");
    assert_eq!(resp.status, 200);

    let seen = up.last();
    let (trace, parent, flags) = traceparent_of(&seen);
    assert_eq!(trace, TRACE, "the upstream continues the caller's trace");
    assert_eq!(flags, "01");
    assert_eq!(
        seen.headers
            .get("tracestate")
            .map(|v| v.to_str().expect("ascii")),
        Some("vendor=abc,other=1"),
        "tracestate passes unchanged"
    );

    assert!(caller.shutdown().await);
    assert!(callee.shutdown().await);
    let spans = collector.wait_until("four spans", |s| s.len() >= 4).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert!(
        spans.iter().all(|s| s.trace_id() == TRACE),
        "one trace: {spans:#?}"
    );

    let caller_server = one(&spans, "caller", true);
    let caller_client = one(&spans, "caller", false);
    let callee_server = one(&spans, "callee", true);
    let callee_client = one(&spans, "callee", false);
    assert_eq!(caller_server.parent_id(), CALLER_SPAN);
    assert_eq!(caller_client.parent_id(), caller_server.span_id());
    assert_eq!(callee_server.parent_id(), caller_client.span_id());
    assert_eq!(callee_client.parent_id(), callee_server.span_id());
    assert_eq!(
        parent,
        callee_client.span_id(),
        "upstream's parent is the callee's CLIENT span"
    );
    assert!(caller_client.is_client() && callee_client.is_client());

    // SERVER span attributes (semconv).
    for (s, dir) in [(caller_server, "outbound"), (callee_server, "inbound")] {
        assert_eq!(s.span.name, "GET /api/samples/{id}");
        assert_eq!(s.attr("http.request.method").as_deref(), Some("GET"));
        assert_eq!(s.attr("http.response.status_code").as_deref(), Some("200"));
        assert_eq!(s.attr("url.path").as_deref(), Some("/api/samples/42"));
        assert_eq!(s.attr("url.scheme").as_deref(), Some("http"));
        assert_eq!(s.attr("http.route").as_deref(), Some("/api/samples/{id}"));
        assert_eq!(s.attr("network.protocol.version").as_deref(), Some("1.1"));
        assert_eq!(s.attr("client.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(s.attr("tracseq.direction").as_deref(), Some(dir));
        assert!(s.attr("server.address").is_some() && s.attr("server.port").is_some());
        assert_eq!(s.attr("error.type"), None);
        assert_eq!(s.status_code(), 0);
        assert!(s.span.end_time_unix_nano >= s.span.start_time_unix_nano);
    }
    assert_eq!(
        caller_server.attr("server.address").as_deref(),
        Some("callee")
    );
    // CLIENT span attributes.
    assert_eq!(
        caller_client.attr("server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        caller_client.attr("server.port"),
        Some(callee_port.to_string())
    );
    assert_eq!(
        caller_client.attr("tracseq.destination").as_deref(),
        Some("callee")
    );
    assert_eq!(
        callee_client.attr("server.port"),
        Some(up.addr.port().to_string())
    );
    for c in [caller_client, callee_client] {
        assert_eq!(c.span.name, "GET");
        assert_eq!(c.attr("http.request.method").as_deref(), Some("GET"));
        assert_eq!(c.attr("http.response.status_code").as_deref(), Some("200"));
        assert!(c
            .attr("url.full")
            .is_some_and(|u| u.ends_with("/api/samples/42?x=1")));
    }
}

#[tokio::test]
async fn two_sidecars_give_one_trace_over_grpc() {
    two_sidecars_one_trace(Protocol::Grpc).await;
}

#[tokio::test]
async fn two_sidecars_give_one_trace_over_http_protobuf() {
    two_sidecars_one_trace(Protocol::Http).await;
}

#[tokio::test]
async fn span_status_follows_semconv() {
    let up = Upstream::start().await;
    let collector = Collector::start(Protocol::Http).await;
    let proxy = start(traced(up.addr, &collector, Protocol::Http, "svc")).await;
    let client = h1_client();
    for code in [404, 503] {
        let resp = send(
            &client,
            get_with(&proxy.inbound_url(&format!("/status/{code}")), &[]),
        )
        .await
        .expect("response");
        assert_eq!(resp.status, code);
    }
    assert!(proxy.shutdown().await);
    let spans = collector.wait_until("four spans", |s| s.len() >= 4).await;
    let by = |code: &str, server: bool| {
        spans
            .iter()
            .find(|s| {
                s.attr("http.response.status_code").as_deref() == Some(code)
                    && s.is_server() == server
            })
            .unwrap_or_else(|| panic!("{code} server={server}: {spans:#?}"))
    };
    assert_eq!(
        by("404", true).status_code(),
        0,
        "4xx is not an error on SERVER spans"
    );
    assert_eq!(
        by("404", false).status_code(),
        2,
        "4xx is an error on CLIENT spans"
    );
    assert_eq!(by("404", false).attr("error.type").as_deref(), Some("404"));
    assert_eq!(by("503", true).status_code(), 2);
    assert_eq!(by("503", true).attr("error.type").as_deref(), Some("503"));
    assert_eq!(by("503", false).status_code(), 2);
}

#[tokio::test]
async fn upstream_failure_is_an_error_on_both_spans() {
    // A port nobody listens on: connect refused.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let collector = Collector::start(Protocol::Grpc).await;
    let proxy = start(traced(dead_addr, &collector, Protocol::Grpc, "svc")).await;
    let resp = send(&h1_client(), get_with(&proxy.inbound_url("/x"), &[]))
        .await
        .expect("response");
    assert_eq!(resp.status, 502);
    assert!(proxy.shutdown().await);
    let spans = collector.wait_until("two spans", |s| s.len() >= 2).await;
    let server = spans.iter().find(|s| s.is_server()).expect("server span");
    let client = spans.iter().find(|s| s.is_client()).expect("client span");
    assert_eq!(
        server.attr("error.type").as_deref(),
        Some("upstream-unavailable")
    );
    assert_eq!(
        server.attr("http.response.status_code").as_deref(),
        Some("502")
    );
    assert_eq!(server.status_code(), 2);
    assert_eq!(
        client.attr("error.type").as_deref(),
        Some("upstream-unavailable")
    );
    assert_eq!(client.status_code(), 2);
    assert_eq!(client.parent_id(), server.span_id());
}

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
        get_with(&proxy.inbound_url("/single"), &[("b3", &b3)]),
    )
    .await
    .expect("response");
    let seen = up.last();
    let (trace, _, flags) = traceparent_of(&seen);
    assert_eq!((trace.as_str(), flags.as_str()), (b3_trace, "01"));
    assert!(seen.headers.get("b3").is_none(), "W3C is what goes out");

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

/// `(trace_id, span_id)` of the exemplars on `metric`'s bucket lines.
fn exemplars(text: &str, metric: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}_bucket{{")))
    {
        let Some((_, ex)) = line.split_once(" # {") else {
            continue;
        };
        let field = |k: &str| {
            let start = ex.find(&format!("{k}=\""))? + k.len() + 2;
            Some(ex[start..start + ex[start..].find('"')?].to_string())
        };
        if let (Some(t), Some(s)) = (field("trace_id"), field("span_id")) {
            out.push((t, s));
        }
    }
    out
}

#[tokio::test]
async fn exemplars_match_exported_spans() {
    let up = Upstream::start().await;
    let collector = Collector::start(Protocol::Grpc).await;
    let proxy = start(traced(up.addr, &collector, Protocol::Grpc, "svc")).await;
    let client = h1_client();
    for _ in 0..3 {
        send(&client, get_with(&proxy.inbound_url("/api/samples/7"), &[]))
            .await
            .expect("response");
    }
    let scrape = send(
        &client,
        get_with(
            &format!("http://{}/metrics", proxy.admin),
            &[("accept", "application/openmetrics-text; version=1.0.0")],
        ),
    )
    .await
    .expect("scrape");
    assert!(scrape
        .header("content-type")
        .is_some_and(|c| c.contains("openmetrics")));
    let text = scrape.text();
    let server = exemplars(&text, "http_server_request_duration_seconds");
    let client_ex = exemplars(&text, "http_client_request_duration_seconds");
    assert!(
        !server.is_empty() && !client_ex.is_empty(),
        "exemplars in OpenMetrics:\n{text}"
    );
    // The classic format carries none.
    let classic = proxy.metrics().await;
    assert!(!classic.text.contains("trace_id"));

    assert!(proxy.shutdown().await);
    let spans = collector.wait_until("six spans", |s| s.len() >= 6).await;
    for (t, s) in &server {
        assert!(
            spans
                .iter()
                .any(|x| &x.trace_id() == t && &x.span_id() == s && x.is_server()),
            "server exemplar {t}/{s} is an exported SERVER span"
        );
    }
    for (t, s) in &client_ex {
        assert!(
            spans
                .iter()
                .any(|x| &x.trace_id() == t && &x.span_id() == s && x.is_client()),
            "client exemplar {t}/{s} is an exported CLIENT span"
        );
    }
}
