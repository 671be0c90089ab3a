//! The resilience policies end to end through the real proxy: rate limiting (enforce, shadow,
//! per client), circuit breaking, load shedding, retries.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;
use tracseq_proxy::config::{Config, RateLimitKey, RateLimitMode};

fn get_req(url: &str) -> Request<Full<Bytes>> {
    Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

async fn statuses(client: &TestClient, url: &str, n: usize) -> Vec<Collected> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(send(client, get_req(url)).await.expect("response"));
    }
    out
}

fn limited_config(up: &Upstream) -> Config {
    let mut cfg = config(up.addr);
    // One cell every 6 s: nothing refills during the test.
    cfg.rate_limit = Some("10/m".parse().expect("rate"));
    cfg.rate_limit_burst = Some(5);
    cfg
}

#[tokio::test]
async fn a_burst_beyond_the_limit_gets_exactly_the_expected_429s() {
    let up = Upstream::start().await;
    let proxy = start(limited_config(&up)).await;
    let client = h1_client();
    let answers = statuses(&client, &proxy.inbound_url("/echo"), 8).await;
    let codes: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(codes, [200, 200, 200, 200, 200, 429, 429, 429]);
    assert_eq!(up.count(), 5, "rejected requests never reach the app");
    for a in &answers[5..] {
        assert_eq!(a.header("tracseq-proxy-error"), Some("rate-limited"));
        let ra: u64 = a
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("seconds");
        assert!((1..=6).contains(&ra), "Retry-After {ra}");
        assert_eq!(a.header("ratelimit-policy"), Some("\"default\";q=10;w=60"));
        assert_eq!(
            a.header("ratelimit"),
            Some(format!("\"default\";r=0;t={ra}").as_str())
        );
        assert!(a.header("x-request-id").is_some());
    }
    let m = proxy.metrics().await;
    let inbound = [("direction", "inbound")];
    assert_eq!(
        m.sum(
            "tracseq_proxy_rate_limited_total",
            &[("direction", "inbound"), ("mode", "enforce")]
        ),
        3.0
    );
    assert_eq!(
        m.sum("tracseq_proxy_rate_limited_total", &[("mode", "shadow")]),
        0.0
    );
    assert_eq!(
        m.sum(
            "http_server_request_duration_seconds_count",
            &[
                ("direction", "inbound"),
                ("http_response_status_code", "429"),
                ("error_type", "rate-limited")
            ]
        ),
        3.0
    );
    assert_eq!(
        m.sum("http_server_request_duration_seconds_count", &inbound),
        8.0
    );
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn shadow_mode_rejects_none_but_counts() {
    let up = Upstream::start().await;
    let mut cfg = limited_config(&up);
    cfg.rate_limit_mode = RateLimitMode::Shadow;
    let proxy = start(cfg).await;
    let answers = statuses(&h1_client(), &proxy.inbound_url("/echo"), 8).await;
    assert!(answers.iter().all(|a| a.status == 200));
    assert_eq!(up.count(), 8);
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "tracseq_proxy_rate_limited_total",
            &[("direction", "inbound"), ("mode", "shadow")]
        ),
        3.0
    );
    assert_eq!(
        m.sum("tracseq_proxy_rate_limited_total", &[("mode", "enforce")]),
        0.0
    );
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn per_client_limit_by_header_isolates_clients() {
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    cfg.rate_limit_per_client = Some("2/m".parse().expect("rate"));
    cfg.rate_limit_key = RateLimitKey::Header(http::HeaderName::from_static("x-client"));
    let proxy = start(cfg).await;
    let client = h1_client();
    let call = |who: Option<&'static str>| {
        let mut r = Request::get(proxy.inbound_url("/echo"));
        if let Some(w) = who {
            r = r.header("x-client", w);
        }
        send(&client, r.body(Full::new(Bytes::new())).expect("request"))
    };
    // "2/m" → burst 1 (the per-second rate rounds to 0, at least 1).
    assert_eq!(call(Some("a")).await.expect("a").status, 200);
    let rej = call(Some("a")).await.expect("a again");
    assert_eq!(rej.status, 429);
    assert_eq!(rej.header("ratelimit-policy"), Some("\"client\";q=2;w=60"));
    assert_eq!(call(Some("b")).await.expect("b").status, 200);
    // No header: keyed by the client IP, a bucket of its own.
    assert_eq!(call(None).await.expect("no key").status, 200);
    assert_eq!(call(None).await.expect("no key again").status, 429);
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn a_failing_upstream_opens_the_circuit_and_it_closes_after_recovery() {
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    cfg.breaker_failures = 3;
    cfg.breaker_backoff = (Duration::from_millis(100), Duration::from_secs(1));
    let proxy = start(cfg).await;
    let client = h1_client();
    let failing = statuses(&client, &proxy.inbound_url("/status/500"), 3).await;
    assert!(failing
        .iter()
        .all(|a| a.status == 500 && a.header("tracseq-proxy-error").is_none()));
    let seen = up.count();
    let upstream_label = up.addr.ip().to_string();
    let m = proxy.metrics().await;
    let labels = [
        ("direction", "inbound"),
        ("upstream", upstream_label.as_str()),
    ];
    assert_eq!(m.sum("tracseq_proxy_circuit_breaker_state", &labels), 1.0);

    for _ in 0..5 {
        let t = Instant::now();
        let a = send(&client, get_req(&proxy.inbound_url("/status/200")))
            .await
            .expect("answer");
        let took = t.elapsed();
        assert_eq!(a.status, 503);
        assert_eq!(a.header("tracseq-proxy-error"), Some("circuit-open"));
        assert_eq!(a.header("retry-after"), Some("1"));
        // Generous: the strict sub-millisecond figure is measured in benches/policies.rs.
        assert!(
            took < Duration::from_millis(50),
            "open circuit answered in {took:?}"
        );
    }
    assert_eq!(
        up.count(),
        seen,
        "an open circuit does not touch the upstream"
    );

    // After the backoff (100..125ms) a probe goes through and closes the circuit.
    let deadline = Instant::now() + WAIT;
    loop {
        let a = send(&client, get_req(&proxy.inbound_url("/status/200")))
            .await
            .expect("answer");
        if a.status == 200 {
            break;
        }
        assert_eq!(a.header("tracseq-proxy-error"), Some("circuit-open"));
        assert!(Instant::now() < deadline, "circuit did not close");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = proxy.metrics().await;
    assert_eq!(m.sum("tracseq_proxy_circuit_breaker_state", &labels), 0.0);
    let to = |s: &str| {
        let mut l = labels.to_vec();
        l.push(("to", s));
        m.sum("tracseq_proxy_circuit_breaker_transitions_total", &l)
    };
    assert_eq!((to("open"), to("half-open"), to("closed")), (1.0, 1.0, 1.0));
    assert_eq!(
        m.sum(
            "http_server_request_duration_seconds_count",
            &[
                ("direction", "inbound"),
                ("http_response_status_code", "503"),
                ("error_type", "circuit-open")
            ]
        ),
        m.sum(
            "http_server_request_duration_seconds_count",
            &[("error_type", "circuit-open")]
        )
    );
    assert!(
        m.sum(
            "http_server_request_duration_seconds_count",
            &[("error_type", "circuit-open")]
        ) >= 5.0
    );
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn request_timeouts_count_as_failures() {
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    cfg.breaker_failures = 2;
    cfg.request_timeout = Duration::from_millis(100);
    let proxy = start(cfg).await;
    let client = h1_client();
    let slow = statuses(&client, &proxy.inbound_url("/slow/2000"), 2).await;
    assert!(slow.iter().all(|a| a.status == 504));
    let a = send(&client, get_req(&proxy.inbound_url("/echo")))
        .await
        .expect("answer");
    assert_eq!(a.status, 503);
    assert_eq!(a.header("tracseq-proxy-error"), Some("circuit-open"));
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn breaker_failures_zero_disables_it() {
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    cfg.breaker_failures = 0;
    let proxy = start(cfg).await;
    let answers = statuses(&h1_client(), &proxy.inbound_url("/status/500"), 12).await;
    assert!(answers.iter().all(|a| a.status == 500));
    assert_eq!(up.count(), 12);
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn shedding_at_the_concurrency_limit() {
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    cfg.max_concurrent_requests = 2;
    let proxy = start(cfg).await;
    let url = proxy.inbound_url("/slow/1500");
    let held: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { send(&h1_client(), get_req(&url)).await })
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    while up.count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the slow requests did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let shed = send(&h1_client(), get_req(&proxy.inbound_url("/echo")))
        .await
        .expect("answer");
    assert_eq!(shed.status, 503);
    assert_eq!(shed.header("tracseq-proxy-error"), Some("overloaded"));
    assert_eq!(shed.header("retry-after"), Some("1"));
    for h in held {
        assert_eq!(h.await.expect("task").expect("slow answer").status, 200);
    }
    // Capacity is back once the bodies ended.
    let ok = send(&h1_client(), get_req(&proxy.inbound_url("/echo")))
        .await
        .expect("answer");
    assert_eq!(ok.status, 200);
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum("tracseq_proxy_load_shed_total", &[("direction", "inbound")]),
        1.0
    );
    assert_eq!(
        m.sum(
            "http_server_request_duration_seconds_count",
            &[
                ("direction", "inbound"),
                ("http_response_status_code", "503"),
                ("error_type", "overloaded")
            ]
        ),
        1.0
    );
    assert_eq!(up.count(), 3);
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn a_get_to_a_refusing_peer_is_retried_once_a_post_never() {
    let up = Upstream::start().await;
    let (refused, _bound) = refused_addr();
    let port = refused.port();
    let mut cfg = config(up.addr);
    cfg.peers = vec![format!("down=127.0.0.1:{port}").parse().expect("peer")];
    cfg.breaker_failures = 0;
    cfg.retries = 1;
    let proxy = start(cfg).await;
    let out = proxy.outbound_addr();
    let client = h1_client();
    let attempts = |m: &Metrics, method| {
        m.sum(
            "http_client_request_duration_seconds_count",
            &[
                ("direction", "outbound"),
                ("http_request_method", method),
                ("server_address", "down"),
            ],
        )
    };
    let with_host = |method: http::Method, body: &'static str| {
        Request::builder()
            .method(method)
            .uri(format!("http://{out}/x"))
            .header("host", "down")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("request")
    };
    assert_eq!(
        send(&client, with_host(http::Method::GET, ""))
            .await
            .expect("GET")
            .status,
        502
    );
    assert_eq!(
        send(&client, with_host(http::Method::POST, "form=1"))
            .await
            .expect("POST")
            .status,
        502
    );
    assert_eq!(
        send(&client, with_host(http::Method::DELETE, ""))
            .await
            .expect("DELETE")
            .status,
        502
    );
    assert_eq!(
        send(&client, with_host(http::Method::PUT, "data"))
            .await
            .expect("PUT")
            .status,
        502
    );
    let m = proxy.metrics().await;
    assert_eq!(attempts(&m, "GET"), 2.0, "GET: first attempt + one retry");
    assert_eq!(
        attempts(&m, "POST"),
        1.0,
        "a POST with a body is not retried"
    );
    assert_eq!(attempts(&m, "DELETE"), 2.0, "never sent: retried once");
    assert_eq!(
        attempts(&m, "PUT"),
        1.0,
        "a request with a body is not replayed"
    );
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn outbound_circuits_are_per_peer() {
    let up = Upstream::start().await;
    let (refused, _bound) = refused_addr();
    let port = refused.port();
    let mut cfg = config(up.addr);
    cfg.peers = vec![
        format!("down=127.0.0.1:{port}").parse().expect("peer"),
        format!("up=127.0.0.1:{}", up.addr.port())
            .parse()
            .expect("peer"),
    ];
    cfg.breaker_failures = 2;
    cfg.retries = 0;
    let proxy = start(cfg).await;
    let out = proxy.outbound_addr();
    let client = h1_client();
    let to = |peer: &'static str| {
        Request::get(format!("http://{out}/x"))
            .header("host", peer)
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    for _ in 0..2 {
        let a = send(&client, to("down")).await.expect("answer");
        assert_eq!(
            a.header("tracseq-proxy-error"),
            Some("upstream-unavailable")
        );
    }
    let open = send(&client, to("down")).await.expect("answer");
    assert_eq!(open.status, 503);
    assert_eq!(open.header("tracseq-proxy-error"), Some("circuit-open"));
    assert_eq!(send(&client, to("up")).await.expect("answer").status, 200);
    let m = proxy.metrics().await;
    let state = |peer| {
        m.sum(
            "tracseq_proxy_circuit_breaker_state",
            &[("direction", "outbound"), ("upstream", peer)],
        )
    };
    assert_eq!((state("down"), state("up")), (1.0, 0.0));
    assert_eq!(
        m.sum(
            "tracseq_proxy_circuit_breaker_transitions_total",
            &[
                ("direction", "outbound"),
                ("upstream", "down"),
                ("to", "open")
            ]
        ),
        1.0
    );
    assert!(proxy.shutdown().await);
}
