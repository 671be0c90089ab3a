//! Inbound mTLS refusals: every client that must not get in is refused at the handshake and
//! counted under its own reason; a client the CA signed but `--allow-identity` does not list
//! gets 403 `forbidden`, counted in `tracseq_proxy_authz_denied_total`.

mod support;

use std::time::Duration;

use support::pki::*;
use support::*;
use time::OffsetDateTime;
use tracseq_proxy::tls::certs::{leaf_params, DevCa, IssuedCert};

const HANDSHAKES: &str = "tracseq_proxy_tls_handshakes_total";

fn self_signed(service: &str) -> IssuedCert {
    let now = OffsetDateTime::now_utc();
    let p = leaf_params(
        "tracseq.local",
        service,
        now - Duration::from_secs(60),
        now + DAY,
    )
    .expect("params");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = p.self_signed(&key).expect("self-signed");
    IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

#[tokio::test]
async fn refused_clients_are_counted_by_reason() {
    let pki = Pki::new();
    let callee = pki.service("callee");
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    with_tls(&mut cfg, &callee);
    let proxy = start(cfg).await;
    let addr = proxy.inbound.expect("inbound");
    let ca = pki.ca_pem();
    let now = OffsetDateTime::now_utc();

    let other_ca = DevCa::new("elsewhere.local", DAY).expect("other CA");
    // Same name as ours, different key: the chain resolves to our CA and the signature fails.
    let impostor_ca = DevCa::new("tracseq.local", DAY).expect("impostor CA");
    let expired = pki
        .ca
        .sign(&leaf_params("tracseq.local", "orders", now - 10 * DAY, now - DAY).expect("p"))
        .expect("expired");
    let not_yet = pki
        .ca
        .sign(&leaf_params("tracseq.local", "orders", now + DAY, now + 10 * DAY).expect("p"))
        .expect("not yet valid");
    let ca_as_leaf = IssuedCert {
        cert_pem: pki.ca.ca_pem(),
        key_pem: pki.ca.ca_key_pem(),
    };
    let cases: Vec<(&str, Option<IssuedCert>, &str)> = vec![
        ("no client certificate", None, "no_client_cert"),
        (
            "certificate from another CA",
            Some(other_ca.issue("orders", DAY).expect("issue")),
            "unknown_ca",
        ),
        (
            "certificate from a CA impersonating ours",
            Some(impostor_ca.issue("orders", DAY).expect("issue")),
            "bad_signature",
        ),
        ("expired", Some(expired), "expired"),
        ("not yet valid", Some(not_yet), "not_yet_valid"),
        ("self-signed", Some(self_signed("orders")), "self_signed"),
        (
            "CA certificate used as a leaf",
            Some(ca_as_leaf),
            "ca_as_leaf",
        ),
    ];
    for (what, client, reason) in &cases {
        let cfg = client_config(
            &ca,
            client
                .as_ref()
                .map(|c| (c.cert_pem.as_str(), c.key_pem.as_str())),
        );
        let r = tls_request(addr, cfg, "callee", get_req("/refused")).await;
        assert!(
            r.is_err(),
            "{what}: expected a refusal, got {}",
            r.map(|r| r.resp.status).unwrap_or(0)
        );
        let n = wait_metric(
            proxy.admin,
            HANDSHAKES,
            &[("direction", "inbound"), ("result", reason)],
            1.0,
        )
        .await;
        if n != 1.0 {
            let m = proxy.metrics().await;
            let seen: Vec<_> = m
                .select(HANDSHAKES, &[])
                .map(|s| (s.labels.clone(), s.value))
                .collect();
            panic!("{what}: expected one result=\"{reason}\", saw {seen:?}");
        }
    }
    assert_eq!(up.count(), 0, "no refused client reached the upstream");

    // And the one that belongs: admitted, identity forwarded.
    let good = pki.ca.issue("orders", DAY).expect("issue");
    let cfg = client_config(&ca, Some((&good.cert_pem, &good.key_pem)));
    let ok = tls_request(addr, cfg, "callee", get_req("/ok"))
        .await
        .expect("admitted");
    assert_eq!(ok.resp.status, 200);
    let xfcc = up.last().headers["x-forwarded-client-cert"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(xfcc.contains("URI=spiffe://tracseq.local/orders"), "{xfcc}");
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(HANDSHAKES, &[("direction", "inbound"), ("result", "ok")]),
        1.0
    );
    assert_eq!(
        m.sum(HANDSHAKES, &[("direction", "inbound")]),
        cases.len() as f64 + 1.0
    );
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn allow_identity_answers_other_identities_403() {
    let pki = Pki::new();
    let callee = pki.service("callee");
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    with_tls(&mut cfg, &callee);
    cfg.tls.allow_identity = vec![
        "spiffe://tracseq.local/orders".parse().expect("pattern"),
        "spiffe://tracseq.local/lab-*".parse().expect("pattern"),
    ];
    let proxy = start(cfg).await;
    let addr = proxy.inbound.expect("inbound");
    let ca = pki.ca_pem();
    let call = |service: &str| {
        let c = pki.ca.issue(service, DAY).expect("issue");
        let cfg = client_config(&ca, Some((&c.cert_pem, &c.key_pem)));
        async move {
            tls_request(addr, cfg, "callee", get_req("/x"))
                .await
                .expect("response")
                .resp
        }
    };

    let denied = call("billing").await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.header("tracseq-proxy-error"), Some("forbidden"));
    assert_eq!(call("orders").await.status, 200);
    assert_eq!(call("lab-sequencer").await.status, 200);
    assert_eq!(
        up.count(),
        2,
        "the denied request never reached the upstream"
    );

    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "tracseq_proxy_authz_denied_total",
            &[("direction", "inbound")]
        ),
        1.0
    );
    // The handshake itself was fine: refusal by identity is not a TLS failure.
    assert_eq!(
        m.sum(HANDSHAKES, &[("direction", "inbound"), ("result", "ok")]),
        3.0
    );
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn optional_client_auth_and_tls12_by_flag() {
    use tracseq_proxy::config::{ClientAuth, TlsVersion};
    let pki = Pki::new();
    let callee = pki.service("callee");
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    with_tls(&mut cfg, &callee);
    cfg.tls.client_auth = ClientAuth::Optional;
    cfg.tls.min_version = TlsVersion::V1_2;
    let proxy = start(cfg).await;
    let addr = proxy.inbound.expect("inbound");

    // A TLS 1.2-only client without a certificate: admitted, but nobody's identity forwarded
    // (and a spoofed XFCC is still removed).
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(pki.ca_pem().as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let tls12 = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .with_root_certificates(roots)
        .with_no_client_auth();
    let req = http::Request::get("/anon")
        .header("host", "callee")
        .header(
            "x-forwarded-client-cert",
            "URI=spiffe://tracseq.local/admin",
        )
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let r = tls_request(addr, std::sync::Arc::new(tls12), "callee", req)
        .await
        .expect("admitted without a certificate");
    assert_eq!(r.resp.status, 200);
    assert!(up.last().headers.get("x-forwarded-client-cert").is_none());

    // With a certificate, the identity is forwarded as usual.
    let c = pki.ca.issue("orders", DAY).expect("issue");
    let cfg = client_config(&pki.ca_pem(), Some((&c.cert_pem, &c.key_pem)));
    let r = tls_request(addr, cfg, "callee", get_req("/known"))
        .await
        .expect("admitted");
    assert_eq!(r.resp.status, 200);
    let xfcc = up.last().headers["x-forwarded-client-cert"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(xfcc.contains("URI=spiffe://tracseq.local/orders"), "{xfcc}");
    assert!(proxy.shutdown().await);
}

/// A client that negotiates `h2` by ALPN and then speaks HTTP/1.1 meets the same 64 KiB head
/// limit as any other: hyper-util's auto builder, which used to take ALPN-h2 connections
/// directly, falls back to HTTP/1 without one, so a pipelined 100 KiB head reached the app.
#[tokio::test]
async fn alpn_h2_client_speaking_http1_meets_the_head_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let callee = pki.service("callee");
    let caller = pki.service("caller");
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    with_tls(&mut cfg, &callee);
    let proxy = start(cfg).await;
    let addr = proxy.inbound.expect("inbound");
    let mut conf = (*client_config(
        &pki.ca_pem(),
        Some((&caller.issued.cert_pem, &caller.issued.key_pem)),
    ))
    .clone();
    conf.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("callee".to_string()).expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(conf))
        .connect(name, tcp)
        .await
        .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // A request with a body (hyper's, not the proxy's own loop), then a pipelined head over
    // the limit.
    let first = "POST /first HTTP/1.1\r\nHost: callee\r\nContent-Length: 5\r\n\r\nhello";
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: callee\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let before = up.count();
    tls.write_all(format!("{first}{big}").as_bytes())
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "431"], "{text}");
    assert_eq!(up.count() - before, 1, "the oversized head reached the app");
    assert!(proxy.shutdown().await);
}
