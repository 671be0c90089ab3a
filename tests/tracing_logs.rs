//! Log correlation: JSON access-log lines carry the SERVER span's `trace_id`/`span_id`, and
//! with debug logging the events inside a request carry them under `span`. Its own test binary
//! because it installs the process-wide log subscriber.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::collector::{Collector, Protocol};
use support::*;
use tracseq_proxy::config::{LogFormat, OtlpProtocol};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn lines(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf-8");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

#[tokio::test]
async fn json_logs_carry_trace_and_span_ids() {
    let up = Upstream::start().await;
    let collector = Collector::start(Protocol::Grpc).await;
    let mut cfg = config(up.addr);
    cfg.otlp_endpoint = Some(collector.endpoint());
    cfg.otlp_protocol = OtlpProtocol::Grpc;
    cfg.log_format = LogFormat::Json;
    cfg.log_level = "info,tracseq_proxy=debug".into();
    cfg.access_log = true;
    let buf = Buf::default();
    let b = buf.clone();
    let _guard = tracseq_proxy::telemetry::init_with_writer(&cfg, move || b.clone());
    let proxy = start(cfg.clone()).await;
    // A second sidecar whose upstream is down: Forward logs the failure at debug level.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut dead_cfg = cfg.clone();
    dead_cfg.upstream = Some(
        dead.local_addr()
            .expect("addr")
            .to_string()
            .parse()
            .expect("authority"),
    );
    drop(dead);
    let broken = start(dead_cfg).await;
    let tp = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let resp = send(
        &h1_client(),
        Request::get(proxy.inbound_url("/logged"))
            .header("traceparent", &tp)
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await
    .expect("response");
    assert_eq!(resp.status, 200);
    let other = "0af7651916cd43dd8448eb211c80319c";
    let resp = send(
        &h1_client(),
        Request::get(broken.inbound_url("/fails"))
            .header("traceparent", format!("00-{other}-b7ad6b7169203331-01"))
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await
    .expect("response");
    assert_eq!(resp.status, 502);
    assert!(broken.shutdown().await);
    assert!(proxy.shutdown().await);
    let spans = collector.wait_until("four spans", |s| s.len() >= 4).await;
    let server = spans
        .iter()
        .find(|s| s.is_server() && s.trace_id() == TRACE)
        .expect("server span");

    let lines = buf.lines();
    let access = lines
        .iter()
        .find(|l| l["target"] == "access")
        .unwrap_or_else(|| panic!("an access line: {lines:#?}"));
    assert_eq!(access["trace_id"], TRACE, "{access}");
    assert_eq!(access["span_id"], server.span_id().as_str(), "{access}");
    assert_eq!(access["path"], "/logged");
    let failed = lines
        .iter()
        .find(|l| l["message"] == "upstream request failed")
        .unwrap_or_else(|| panic!("the debug line: {lines:#?}"));
    assert_eq!(failed["span"]["trace_id"], other, "{failed}");
    assert_eq!(failed["span"]["name"], "request");
}
