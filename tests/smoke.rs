//! The first end-to-end check: a request through the inbound listener reaches the upstream
//! and comes back, and the metrics count it.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

#[tokio::test]
async fn inbound_h1_round_trip_is_counted() {
    let up = Upstream::start().await;
    let proxy = start(config(up.addr)).await;
    let resp = send(
        &h1_client(),
        Request::post(proxy.inbound_url("/echo"))
            .body(Full::new(Bytes::from_static(b"hello")))
            .expect("request"),
    )
    .await
    .expect("response");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "hello");
    assert!(resp.header("x-request-id").is_some());
    let seen = up.last();
    assert!(seen.headers.contains_key("x-forwarded-for"));
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "http_server_request_duration_seconds_count",
            &[
                ("direction", "inbound"),
                ("http_response_status_code", "200"),
                ("http_request_method", "POST")
            ]
        ),
        1.0
    );
    assert!(proxy.shutdown().await);
}
