//! Span export to an `https://` collector (gRPC and HTTP/protobuf): the CA comes from
//! `OTEL_EXPORTER_OTLP_CERTIFICATE` (here `Config::otlp_tls`), a client identity is presented
//! when the collector asks for one, and a collector the proxy cannot trust gets no spans,
//! which are counted as dropped while requests go on unharmed.

mod support;

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::collector::*;
use support::pki::*;
use support::*;

/// A TLS server config for the collector: `localhost`'s certificate from `pki`, ALPN h2 and
/// HTTP/1.1, and optionally client certificates required (issued by `pki`'s CA).
fn collector_tls(pki: &Pki, require_client: bool) -> Arc<rustls::ServerConfig> {
    let files = pki.service("localhost");
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .expect("cert file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(&files.key).expect("key");
    let builder = rustls::ServerConfig::builder();
    let builder = if require_client {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&files.ca).expect("ca file") {
            roots.add(c.expect("ca")).expect("add ca");
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .expect("verifier");
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut cfg = builder.with_single_cert(chain, key).expect("server config");
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

async fn one_traced_request(
    protocol: Protocol,
    collector: &Collector,
    tls: tracseq_proxy::config::OtlpTls,
    upper_case_scheme: bool,
) -> Proxy {
    let up = Upstream::start().await;
    let mut cfg = traced(up.addr, collector, protocol, "secure");
    let endpoint = collector.https_endpoint();
    cfg.otlp_endpoint = Some(if upper_case_scheme {
        endpoint.replacen("https", "HTTPS", 1)
    } else {
        endpoint
    });
    cfg.otlp_tls = tls;
    let proxy = start(cfg).await;
    let resp = send(
        &h1_client(),
        get_with(&proxy.inbound_url("/api/samples/7"), &[]),
    )
    .await
    .expect("response");
    assert_eq!(resp.status, 200, "requests are served whatever export does");
    proxy
}

#[tokio::test]
async fn spans_reach_an_https_collector_over_grpc_and_http() {
    for protocol in [Protocol::Grpc, Protocol::Http] {
        let pki = Pki::new();
        let collector = Collector::start_tls(protocol, collector_tls(&pki, false)).await;
        let ca = pki.service("localhost").ca;
        let tls = tracseq_proxy::config::OtlpTls {
            ca: Some(ca),
            client_identity: None,
            ..Default::default()
        };
        let proxy = one_traced_request(protocol, &collector, tls, false).await;
        assert!(proxy.shutdown().await);
        let spans = collector
            .wait_until(&format!("{protocol:?}: spans over TLS"), |s| s.len() >= 2)
            .await;
        assert!(
            spans.iter().all(|s| s.service == "secure"),
            "{protocol:?}: {spans:#?}"
        );
    }
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_the_collector_asks() {
    for protocol in [Protocol::Grpc, Protocol::Http] {
        let pki = Pki::new();
        let collector = Collector::start_tls(protocol, collector_tls(&pki, true)).await;
        let me = pki.service("secure");
        let tls = tracseq_proxy::config::OtlpTls {
            ca: Some(me.ca.clone()),
            client_identity: Some((me.cert.clone(), me.key.clone())),
            ..Default::default()
        };
        // `HTTPS://` is the same scheme (URL schemes are case-insensitive).
        let proxy = one_traced_request(protocol, &collector, tls, true).await;
        assert!(proxy.shutdown().await);
        collector
            .wait_until(&format!("{protocol:?}: spans over mTLS"), |s| s.len() >= 2)
            .await;
    }
}

#[tokio::test]
async fn an_untrusted_collector_gets_no_spans_and_they_are_counted_dropped() {
    for protocol in [Protocol::Grpc, Protocol::Http] {
        let pki = Pki::new();
        let collector = Collector::start_tls(protocol, collector_tls(&pki, false)).await;
        // Trust another CA than the one that issued the collector's certificate.
        let other = Pki::new();
        let tls = tracseq_proxy::config::OtlpTls {
            ca: Some(other.service("x").ca),
            client_identity: None,
            ..Default::default()
        };
        let proxy = one_traced_request(protocol, &collector, tls, false).await;
        // The request's two spans fail to export (the handshake is refused) and are counted.
        let dropped = wait_metric(proxy.admin, "tracseq_proxy_spans_dropped_total", &[], 2.0).await;
        assert!(dropped >= 2.0, "{protocol:?}: dropped {dropped}");
        assert!(proxy.shutdown().await);
        assert!(
            collector.spans().is_empty(),
            "{protocol:?}: spans reached a collector whose certificate was not trusted"
        );
    }
}

#[tokio::test]
async fn bad_otlp_tls_files_stop_start_up_with_a_clear_error() {
    let up = Upstream::start().await;
    let collector = Collector::start(Protocol::Grpc).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate").expect("write");
    for protocol in [Protocol::Grpc, Protocol::Http] {
        for (tls, needle) in [
            (
                tracseq_proxy::config::OtlpTls {
                    ca: Some(dir.path().join("missing.pem")),
                    client_identity: None,
                    ..Default::default()
                },
                "missing.pem",
            ),
            (
                tracseq_proxy::config::OtlpTls {
                    ca: Some(not_pem.clone()),
                    client_identity: None,
                    ..Default::default()
                },
                "no certificate",
            ),
            (
                // Named by the traces-specific variable: the error names that one.
                tracseq_proxy::config::OtlpTls {
                    ca: Some(not_pem.clone()),
                    client_identity: None,
                    vars: tracseq_proxy::config::OtlpTlsVars {
                        ca: "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                        ..Default::default()
                    },
                },
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            ),
        ] {
            let mut cfg = traced(up.addr, &collector, protocol, "bad");
            cfg.otlp_endpoint = Some(collector.https_endpoint());
            cfg.otlp_tls = tls;
            let err = match tracseq_proxy::app::start(cfg).await {
                Ok(_) => panic!("{protocol:?}: started with a bad OTLP CA file"),
                Err(e) => e.to_string(),
            };
            assert!(
                err.contains("--otlp-endpoint") && err.contains(needle),
                "{protocol:?}: {err}"
            );
        }
    }
}
