//! The mesh hop: caller → outbound sidecar → mTLS (HTTP/1.1 like the caller, pooled) →
//! inbound sidecar → upstream, over keep-alive connections, against the same request sent
//! straight to the upstream. The difference is what two sidecars and one mTLS hop add to a
//! request; the handshake is paid once and amortised by connection reuse, as in production.
//! Run: `cargo bench --bench mesh`.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use http_body_util::Full;
use support::pki::{with_tls, Pki};
use support::{config, h1_client, send, start, Upstream};
use tracseq_proxy::config::Peer;

fn mesh(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (pki, up, callee, caller) = rt.block_on(async {
        let pki = Pki::new();
        let caller_files = pki.service("caller");
        let callee_files = pki.service("callee");
        let up = Upstream::start().await;
        let mut cfg = config(up.addr);
        with_tls(&mut cfg, &callee_files);
        let callee = start(cfg).await;
        let mut cfg = config(up.addr);
        with_tls(&mut cfg, &caller_files);
        cfg.peers = vec![Peer {
            name: "callee".into(),
            host: "127.0.0.1".into(),
            port: callee.inbound.expect("inbound").port(),
            identity: Some("spiffe://tracseq.local/callee".into()),
        }];
        let caller = start(cfg).await;
        (pki, up, callee, caller)
    });
    let client = h1_client();
    let direct = format!("http://{}/bench", up.addr);
    let via_mesh = format!("http://{}/bench", caller.outbound_addr());
    let req = |url: &str| {
        Request::get(url)
            .header("host", "callee")
            .body(Full::new(Bytes::new()))
            .expect("request")
    };

    let mut g = c.benchmark_group("mesh_hop");
    g.bench_function("direct", |b| {
        b.to_async(&rt).iter(|| async {
            let r = send(&client, req(&direct)).await.expect("direct");
            assert_eq!(r.status, 200);
        })
    });
    g.bench_function("two_sidecars_mtls", |b| {
        b.to_async(&rt).iter(|| async {
            let r = send(&client, req(&via_mesh)).await.expect("mesh");
            assert_eq!(r.status, 200);
        })
    });
    g.finish();
    rt.block_on(async {
        caller.shutdown().await;
        callee.shutdown().await;
    });
    drop(pki);
}

criterion_group!(benches, mesh);
criterion_main!(benches);
