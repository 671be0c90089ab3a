//! `http.request.resend_count` end to end: the real proxy, a real OTLP collector and an
//! upstream whose first connect is refused. The retry layer resends the request; the CLIENT
//! span of the refused attempt has no resend count, the one of the resend has 1, and so does
//! the SERVER span; a request that is not resent has none anywhere.
//!
//! Deterministic, with no timing: the upstream's socket is bound but not listening, so the
//! kernel refuses the first connect (ECONNREFUSED). The retry layer logs its decision to resend
//! (a debug event of `tracseq_proxy::layers::retry`, carrying `attempt`) before it sends again;
//! a log layer installed for this test's thread turns that event into `listen()`, so the resend
//! connects. `#[tokio::test]` runs everything (proxy tasks included) on that one thread.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use support::collector::*;
use support::*;
use tokio::sync::oneshot;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// Starts listening on `socket` when the retry layer decides to resend, and hands the
/// listener over; counts the resends it saw.
struct ListenOnResend {
    socket: Mutex<Option<(socket2::Socket, oneshot::Sender<std::net::TcpListener>)>>,
    resends: Arc<AtomicUsize>,
}

impl<S: tracing::Subscriber> Layer<S> for ListenOnResend {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() != "tracseq_proxy::layers::retry"
            || meta.fields().field("attempt").is_none()
        {
            return;
        }
        self.resends.fetch_add(1, Ordering::SeqCst);
        if let Some((socket, tx)) = self.socket.lock().expect("lock").take() {
            socket.listen(128).expect("listen");
            socket.set_nonblocking(true).expect("nonblocking");
            let _ = tx.send(socket.into());
        }
    }
}

/// A loopback socket bound to port 0 and not listening: connects to it are refused.
fn refusing_socket() -> (std::net::SocketAddr, socket2::Socket) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    sock.bind(&addr.into()).expect("bind");
    let addr = sock.local_addr().expect("addr").as_socket().expect("inet");
    (addr, sock)
}

const RESENT: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PLAIN: &str = "0af7651916cd43dd8448eb211c80319c";

/// `http.request.resend_count` as the collector got it: it must be an OTLP int.
fn resend_count(s: &Exported) -> Option<i64> {
    let kv = s
        .span
        .attributes
        .iter()
        .find(|kv| kv.key == "http.request.resend_count")?;
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::IntValue(n)) => Some(*n),
        other => panic!("http.request.resend_count is not an int: {other:?}"),
    }
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Inbound,
    Outbound,
}

/// One GET whose first connect is refused and resent, then one plain GET, through `via`.
async fn resend_count_on_spans(via: Via) {
    let (addr, socket) = refusing_socket();
    let (tx, rx) = oneshot::channel();
    let resends = Arc::new(AtomicUsize::new(0));
    let hook = ListenOnResend {
        socket: Mutex::new(Some((socket, tx))),
        resends: resends.clone(),
    };
    let _log = tracing::subscriber::set_default(tracing_subscriber::registry().with(hook));
    // Serves once the hook made the socket listen; the resend's connection waits in the
    // accept queue meanwhile.
    let upstream = tokio::spawn(async move {
        let l = rx.await.expect("the retry layer resent the request");
        Upstream::serve(tokio::net::TcpListener::from_std(l).expect("tokio listener"))
    });

    let collector = Collector::start(Protocol::Grpc).await;
    let mut cfg = traced(addr, &collector, Protocol::Grpc, "svc");
    cfg.retries = 1;
    cfg.peers = vec![format!("up=127.0.0.1:{}", addr.port())
        .parse()
        .expect("peer")];
    let proxy = start(cfg).await;
    let url = |path: &str| match via {
        Via::Inbound => proxy.inbound_url(path),
        Via::Outbound => format!("http://{}{path}", proxy.outbound_addr()),
    };
    let client = h1_client();
    for (trace, path) in [(RESENT, "/resent"), (PLAIN, "/plain")] {
        let tp = format!("00-{trace}-{CALLER_SPAN}-01");
        let resp = send(
            &client,
            get_with(&url(path), &[("host", "up"), ("traceparent", &tp)]),
        )
        .await
        .expect("response");
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
    }
    let up = tokio::time::timeout(WAIT, upstream)
        .await
        .expect("upstream started")
        .expect("upstream task");
    assert_eq!(resends.load(Ordering::SeqCst), 1, "one resend, of /resent");
    let seen = up.requests();
    assert_eq!(
        seen.iter().map(|r| r.uri.path()).collect::<Vec<_>>(),
        ["/resent", "/plain"],
        "the refused attempt never reached the upstream"
    );

    assert!(proxy.shutdown().await);
    let spans = collector.wait_until("five spans", |s| s.len() >= 5).await;
    assert_eq!(spans.len(), 5, "{spans:#?}");

    // The resent request: one SERVER span, the refused attempt's CLIENT span and the resend's.
    let resent = collector.trace(RESENT);
    let server = resent
        .iter()
        .find(|s| s.is_server())
        .unwrap_or_else(|| panic!("SERVER span: {resent:#?}"));
    let clients: Vec<&Exported> = resent.iter().filter(|s| s.is_client()).collect();
    assert_eq!(clients.len(), 2, "one CLIENT span per attempt: {resent:#?}");
    let refused = clients
        .iter()
        .find(|s| s.attr("error.type").is_some())
        .unwrap_or_else(|| panic!("the refused attempt: {clients:#?}"));
    let again = clients
        .iter()
        .find(|s| s.attr("http.response.status_code").as_deref() == Some("200"))
        .unwrap_or_else(|| panic!("the resend: {clients:#?}"));
    assert_eq!(
        refused.attr("error.type").as_deref(),
        Some("upstream-unavailable")
    );
    assert_eq!(refused.status_code(), 2);
    assert_eq!(
        resend_count(refused),
        None,
        "the first attempt is not a resend: {refused:#?}"
    );
    assert_eq!(resend_count(again), Some(1), "the first resend: {again:#?}");
    assert_eq!(again.attr("error.type"), None);
    for c in [refused, again] {
        assert_eq!(c.parent_id(), server.span_id());
    }
    assert_ne!(refused.span_id(), again.span_id());
    let (_, parent, _) = traceparent_of(&seen[0]);
    assert_eq!(
        parent,
        again.span_id(),
        "the resend names its own CLIENT span"
    );
    assert_eq!(
        resend_count(server),
        Some(1),
        "the SERVER span sums up the resends: {server:#?}"
    );
    assert_eq!(
        server.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(server.status_code(), 0);

    // The plain request: no resend count anywhere.
    let plain = collector.trace(PLAIN);
    assert_eq!(plain.len(), 2, "{plain:#?}");
    for s in &plain {
        assert_eq!(resend_count(s), None, "{s:#?}");
    }
    let (_, parent, _) = traceparent_of(&seen[1]);
    assert!(plain.iter().any(|s| s.is_client() && s.span_id() == parent));
}

#[tokio::test]
async fn a_resent_request_counts_its_resend_on_its_spans_inbound() {
    resend_count_on_spans(Via::Inbound).await;
}

#[tokio::test]
async fn a_resent_request_counts_its_resend_on_its_spans_outbound() {
    resend_count_on_spans(Via::Outbound).await;
}
