//! Distributed tracing end to end: spans exported over real OTLP (gRPC and HTTP/protobuf) to an
//! in-test collector, linked across two sidecars, with semconv attributes and statuses, and the
//! exemplars of the duration histograms pointing at exported spans.

mod support;

use support::collector::*;
use support::*;

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
        // The query stays out of spans: it may carry tokens.
        assert!(c
            .attr("url.full")
            .is_some_and(|u| u.ends_with("/api/samples/42")));
        // Its authority is the address connected to, as `server.address`/`server.port` say.
        let full = c.attr("url.full").expect("url.full");
        let port = c.attr("server.port").expect("server.port");
        assert!(full.contains(&format!(":{port}/")), "{full}");
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
