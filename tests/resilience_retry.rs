//! Retries against real sockets: the real retry layer around the real upstream client, whose
//! first attempt goes to a port that refuses the connection (a real ECONNREFUSED, classified by
//! the real classifier) and whose retry reaches the real upstream. Deterministic: which attempt
//! goes where is decided by a counter, not by timing. Each attempt's `ResendCount` mark (what its
//! CLIENT span records) is seen as `Forward` gets it. Also: policy metrics are exposed once and
//! pass `promtool check metrics`.

mod support;

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use support::*;
use tower::{Layer, ServiceExt};
use tracseq_proxy::error::{kind_of, BoxError, ErrorKind, UpstreamFailure};
use tracseq_proxy::layers::metrics::HttpMetrics;
use tracseq_proxy::layers::retry::{Budget, ResendCount, RetryLayer};
use tracseq_proxy::layers::SystemClock;
use tracseq_proxy::proxy::body::{self, Body};
use tracseq_proxy::proxy::connect::Connector;
use tracseq_proxy::proxy::upstream::{Forward, H2Policy};
use tracseq_proxy::proxy::{Dest, Direction, RequestCtx};

/// The destination a refused attempt had, for the next attempt: a request that was never sent
/// comes back to the retry layer as it was handed down, this rewrite included.
#[derive(Clone)]
struct Original(http::uri::Authority);

/// The attempts that reached `Forward`: the `ResendCount` each one carried.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<Option<u32>>>>);

impl Calls {
    fn count(&self) -> usize {
        self.0.lock().expect("lock").len()
    }

    fn marks(&self) -> Vec<Option<u32>> {
        self.0.lock().expect("lock").clone()
    }
}

/// Sends the first `refuse` attempts to a refusing port, the rest where the request says.
#[derive(Clone)]
struct RefuseFirst {
    inner: Forward,
    refused: http::uri::Authority,
    /// Keeps `refused` bound (not listening) while the service lives: see `refused_addr`.
    _bound: Arc<tokio::net::TcpSocket>,
    refuse: usize,
    calls: Calls,
}

impl tower::Service<Request<Body>> for RefuseFirst {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = <Forward as tower::Service<Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let refuse = {
            let mut calls = self.calls.0.lock().expect("lock");
            calls.push(req.extensions().get::<ResendCount>().map(|n| n.0));
            calls.len() <= self.refuse
        };
        let original = req.extensions().get::<Original>().cloned();
        if let Some(d) = RequestCtx::of_mut(&mut req).dest.as_mut() {
            if refuse {
                let was = std::mem::replace(&mut d.authority, self.refused.clone());
                if original.is_none() {
                    req.extensions_mut().insert(Original(was));
                }
            } else if let Some(Original(a)) = original {
                d.authority = a;
            }
        }
        self.inner.call(req)
    }
}

async fn harness(
    refuse: usize,
    retries: u32,
) -> (
    impl tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone,
    Calls,
) {
    let mut reg = Registry::default();
    let metrics = HttpMetrics::register(&mut reg);
    let forward = Forward::new(
        Direction::Outbound,
        H2Policy::FollowDownstream,
        Connector::new(Duration::from_secs(1)),
        metrics,
    );
    let calls = Calls::default();
    let (refused, bound) = refused_addr();
    let svc = RefuseFirst {
        inner: forward,
        refused: refused.to_string().parse().expect("authority"),
        _bound: Arc::new(bound),
        refuse,
        calls: calls.clone(),
    };
    let budget = Arc::new(Budget::new(Arc::new(SystemClock::default())));
    (RetryLayer::with_budget(retries, budget).layer(svc), calls)
}

fn request(up: &Upstream, method: http::Method, body: Body) -> Request<Body> {
    let mut req = Request::builder()
        .method(method)
        .uri("/retried")
        .header("host", "up")
        .body(body)
        .expect("request");
    RequestCtx::of_mut(&mut req).dest = Some(Dest {
        label: "up",
        authority: up.addr.to_string().parse().expect("authority"),
        port: up.addr.port(),
        identity: None,
    });
    req
}

/// One refused connect, then success on the retry, for a GET of `version`; HTTP/1.1 requests
/// come back from the pool inside the error, HTTP/2 ones are resent from a copy of the head.
async fn survives_one_connect_failure(version: http::Version, seen_as: &str) {
    let up = Upstream::start().await;
    let (svc, calls) = harness(1, 1).await;
    let mut req = request(&up, http::Method::GET, body::empty());
    *req.version_mut() = version;
    let mut resp = svc
        .oneshot(req)
        .await
        .expect("the retry reached the upstream");
    // An HTTP/1.1 answer keeps the upstream's fields as bytes until an encoder needs a map.
    tracseq_proxy::proxy::raw_fields::materialize(&mut resp);
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.extensions().get::<ResendCount>(),
        Some(&ResendCount(1))
    );
    assert_eq!(resp.headers()["x-upstream-path"], "/retried");
    assert_eq!(resp.headers()["x-upstream-version"], seen_as);
    let _ = resp.into_body().collect().await;
    assert_eq!(calls.count(), 2);
    assert_eq!(
        calls.marks(),
        [None, Some(1)],
        "the first attempt is unmarked, the resend is resend 1"
    );
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn a_get_survives_one_connect_failure_by_retry() {
    survives_one_connect_failure(http::Version::HTTP_11, "HTTP/1.1").await;
}

/// HTTP/2 requests may leave over hyper-util's client, which cannot hand a request back: the
/// retry layer keeps a copy of their head instead.
#[tokio::test]
async fn an_h2_get_survives_one_connect_failure_by_retry() {
    survives_one_connect_failure(http::Version::HTTP_2, "HTTP/2.0").await;
}

#[tokio::test]
async fn a_first_attempt_success_has_no_resend_count() {
    let up = Upstream::start().await;
    let (svc, calls) = harness(0, 1).await;
    let resp = svc
        .oneshot(request(&up, http::Method::GET, body::empty()))
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    assert!(resp.extensions().get::<ResendCount>().is_none());
    assert_eq!(calls.marks(), [None]);
}

/// Two refused connects: each resend carries its own ordinal (a request handed back by the
/// pool still has the mark of the previous resend), and the response the number of resends.
async fn marks_each_resend(version: http::Version) {
    let up = Upstream::start().await;
    let (svc, calls) = harness(2, 2).await;
    let mut req = request(&up, http::Method::GET, body::empty());
    *req.version_mut() = version;
    let resp = svc
        .oneshot(req)
        .await
        .expect("the second retry reached the upstream");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.extensions().get::<ResendCount>(),
        Some(&ResendCount(2))
    );
    let _ = resp.into_body().collect().await;
    assert_eq!(calls.marks(), [None, Some(1), Some(2)]);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn each_resend_is_marked_with_its_ordinal() {
    marks_each_resend(http::Version::HTTP_11).await;
}

#[tokio::test]
async fn each_h2_resend_is_marked_with_its_ordinal() {
    marks_each_resend(http::Version::HTTP_2).await;
}

#[tokio::test]
async fn retries_stop_at_the_configured_count() {
    let up = Upstream::start().await;
    let (svc, calls) = harness(10, 2).await;
    let err = svc
        .oneshot(request(&up, http::Method::DELETE, body::empty()))
        .await
        .expect_err("every attempt refused");
    assert_eq!(
        kind_of(err.as_ref()),
        ErrorKind::UpstreamUnavailable(UpstreamFailure::Connect)
    );
    assert_eq!(calls.marks(), [None, Some(1), Some(2)]);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_post_with_a_body_is_not_retried_an_empty_one_is() {
    let up = Upstream::start().await;
    let (svc, calls) = harness(1, 1).await;
    let err = svc
        .clone()
        .oneshot(request(&up, http::Method::POST, body::full("form=1")))
        .await
        .expect_err("a POST with a body is not retried");
    assert_eq!(
        kind_of(err.as_ref()),
        ErrorKind::UpstreamUnavailable(UpstreamFailure::Connect)
    );
    assert_eq!(calls.count(), 1);
    // Never sent and nothing to replay: CONTRACT.md retries it whatever the method.
    let (svc, calls) = harness(1, 1).await;
    let resp = svc
        .oneshot(request(&up, http::Method::POST, body::empty()))
        .await
        .expect("an empty POST that was never sent is retried");
    assert_eq!(resp.status(), 200);
    assert_eq!(calls.count(), 2);
    let (svc, calls) = harness(1, 1).await;
    let _ = svc
        .oneshot(request(&up, http::Method::PUT, body::full("payload")))
        .await
        .expect_err("a body cannot be replayed");
    assert_eq!(calls.count(), 1);
}

#[tokio::test]
async fn policy_metrics_are_exposed_once_and_pass_promtool() {
    require_tool("promtool", "apt-get install prometheus (promtool)");
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    cfg.rate_limit = Some("100/s".parse().expect("rate"));
    let proxy = start(cfg).await;
    let _ = get(&proxy.inbound_url("/echo")).await.expect("answer");
    let m = proxy.metrics().await;
    for family in [
        "tracseq_proxy_rate_limited_total",
        "tracseq_proxy_load_shed_total",
        "tracseq_proxy_circuit_breaker_state",
        "tracseq_proxy_circuit_breaker_transitions_total",
    ] {
        let types = m
            .text
            .lines()
            .filter(|l| l.starts_with(&format!("# TYPE {family} ")))
            .count();
        assert_eq!(types, 1, "{family} declared {types} times");
    }
    assert!(m.has_family("tracseq_proxy_circuit_breaker_state"));
    assert_eq!(
        m.sum(
            "tracseq_proxy_load_shed_total",
            &[("direction", "outbound")]
        ),
        0.0
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("metrics.txt");
    std::fs::write(&path, &m.text).expect("write");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", path.display()))
        .output()
        .expect("promtool runs");
    let report =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    // A parse failure names no family, so check for it first: the text must parse at all.
    assert!(
        !report.contains("error while linting") && !report.contains("parsing error"),
        "promtool cannot parse the exposition:\n{report}"
    );
    assert!(
        !report.contains("tracseq_proxy_rate_limited")
            && !report.contains("tracseq_proxy_load_shed")
            && !report.contains("tracseq_proxy_circuit_breaker"),
        "promtool complains about policy metrics:\n{report}"
    );
    assert!(proxy.shutdown().await);
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so a connect to it
/// hangs until the client's connect timeout (Linux). The returned sockets must stay alive.
fn blackhole() -> (
    std::net::SocketAddr,
    Vec<std::net::TcpStream>,
    socket2::Socket,
) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    sock.bind(&addr.into()).expect("bind");
    sock.listen(0).expect("listen");
    let addr = sock.local_addr().expect("addr").as_socket().expect("inet");
    // Fill the queue (backlog 0 holds one or two); a connect that does not finish within
    // 100ms means the queue is full.
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    (addr, fillers, sock)
}

#[tokio::test]
async fn a_connect_timeout_is_a_retried_connect_failure() {
    let (addr, _fillers, _sock) = blackhole();
    let mut cfg = config(addr);
    cfg.connect_timeout = Duration::from_millis(150);
    cfg.request_timeout = Duration::from_secs(5);
    cfg.retries = 1;
    let proxy = start(cfg).await;
    let t = std::time::Instant::now();
    let a = get(&proxy.inbound_url("/x")).await.expect("answer");
    let took = t.elapsed();
    assert_eq!(a.status, 502);
    assert_eq!(
        a.header("tracseq-proxy-error"),
        Some("upstream-unavailable")
    );
    // Two attempts of 150ms each, far below the 5 s request timeout (generous bound).
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "tracseq_proxy_upstream_errors_total",
            &[("direction", "inbound"), ("kind", "connect")]
        ),
        2.0,
        "first attempt and one retry"
    );
    assert!(proxy.shutdown().await);
}
