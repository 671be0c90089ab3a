//! Certificate rotation under load: a client keeps opening new mTLS connections while the
//! certificate and key are replaced by rename into place (what a secret update does); no
//! request fails and new handshakes present the new certificate. Broken files (mismatched
//! key, garbage) keep the current identity and count `reloads{result="error"}`.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use support::pki::*;
use support::*;

const RELOADS: &str = "tracseq_proxy_tls_cert_reloads_total";

/// Replace `path` atomically: write a sibling temp file, then rename it over the original.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename into place");
}

fn pem_serial(pem: &str) -> String {
    serial(&CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_fails_no_request() {
    let pki = Pki::new();
    let callee = pki.service("callee");
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    with_tls(&mut cfg, &callee);
    let proxy = start(cfg).await;
    let addr = proxy.inbound.expect("inbound");
    let client = pki.ca.issue("orders", DAY).expect("client cert");
    let tls = client_config(&pki.ca_pem(), Some((&client.cert_pem, &client.key_pem)));

    let old_serial = pem_serial(&callee.issued.cert_pem);
    let next = pki.ca.issue("callee", DAY).expect("rotated cert");
    let new_serial = pem_serial(&next.cert_pem);
    assert_ne!(old_serial, new_serial);

    // The load: one request per new connection, bounded by count and time.
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let load = {
        let (done, stop, seen, failures, tls) = (
            done.clone(),
            stop.clone(),
            seen.clone(),
            failures.clone(),
            tls.clone(),
        );
        let old_serial = old_serial.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            let mut new_seen = 0;
            for _ in 0..2000 {
                if tokio::time::Instant::now() > deadline || stop.load(Ordering::Relaxed) {
                    break;
                }
                match tls_request(addr, tls.clone(), "callee", get_req("/load")).await {
                    Ok(r) if r.resp.status == 200 => {
                        let s = serial(&r.server_cert);
                        seen.lock().expect("lock").push(s);
                    }
                    Ok(r) => failures
                        .lock()
                        .expect("lock")
                        .push(format!("status {}", r.resp.status)),
                    Err(e) => failures.lock().expect("lock").push(e),
                }
                done.fetch_add(1, Ordering::Relaxed);
                if seen.lock().expect("lock").last().map(String::as_str)
                    != Some(old_serial.as_str())
                {
                    new_seen += 1;
                    // Enough handshakes with the new certificate: stop early.
                    if new_seen >= 20 {
                        break;
                    }
                }
            }
        })
    };

    // Rotate once some traffic has flowed.
    let deadline = tokio::time::Instant::now() + WAIT;
    while done.load(Ordering::Relaxed) < 10 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    replace(&callee.cert, &next.cert_pem);
    replace(&callee.key, &next.key_pem);
    let ok = wait_metric(proxy.admin, RELOADS, &[("result", "ok")], 1.0).await;
    assert!(ok >= 1.0, "the new files were loaded");
    let _ = tokio::time::timeout(WAIT, load)
        .await
        .expect("load loop ends");
    stop.store(true, Ordering::Relaxed);

    let failures = failures.lock().expect("lock").clone();
    let seen = seen.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "failed requests during rotation: {failures:?}"
    );
    assert!(seen.len() >= 10, "load ran: {} requests", seen.len());
    let first_new = seen
        .iter()
        .position(|s| *s == new_serial)
        .unwrap_or_else(|| {
            panic!(
                "no handshake presented the new certificate ({} requests)",
                seen.len()
            )
        });
    assert!(
        seen[first_new..].iter().all(|s| *s == new_serial),
        "after the first new handshake, every handshake presents the new certificate"
    );
    assert!(seen[..first_new]
        .iter()
        .all(|s| *s == old_serial || *s == new_serial));

    // Broken files keep the current (rotated) identity and count an error.
    let served = || async {
        let r = tls_request(addr, tls.clone(), "callee", get_req("/after"))
            .await
            .expect("request");
        assert_eq!(r.resp.status, 200);
        serial(&r.server_cert)
    };
    // (A reload that ran between the two renames above may have counted an error already.)
    let e0 = proxy.metrics().await.sum(RELOADS, &[("result", "error")]);
    let other = pki.ca.issue("callee", DAY).expect("other key");
    replace(&callee.key, &other.key_pem); // does not match the certificate
    assert_eq!(
        wait_metric(proxy.admin, RELOADS, &[("result", "error")], e0 + 1.0).await,
        e0 + 1.0
    );
    assert_eq!(
        served().await,
        new_serial,
        "a mismatched key keeps the old identity"
    );

    let ok = proxy.metrics().await.sum(RELOADS, &[("result", "ok")]);
    replace(&callee.key, &next.key_pem);
    assert!(wait_metric(proxy.admin, RELOADS, &[("result", "ok")], ok + 1.0).await >= ok + 1.0);
    replace(
        &callee.cert,
        "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
    );
    assert_eq!(
        wait_metric(proxy.admin, RELOADS, &[("result", "error")], e0 + 2.0).await,
        e0 + 2.0
    );
    assert_eq!(
        served().await,
        new_serial,
        "a garbage certificate keeps the old identity"
    );

    let m = proxy.metrics().await;
    let expiry = m.sum(
        "tracseq_proxy_tls_cert_expiration_timestamp_seconds",
        &[("cert", "identity")],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        expiry > now && expiry < now + 2.0 * DAY.as_secs_f64(),
        "expiry of the rotated cert: {expiry}"
    );
    assert!(proxy.shutdown().await);
}

/// The Kubernetes secret layout: `tls.crt -> ..data/tls.crt`, `..data -> ..<timestamp>/`, and
/// an update swaps `..data` atomically by renaming a new symlink over it. Only the directory
/// changes (the files the flags name are untouched symlinks), so only a directory watch sees
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;

    let pki = Pki::new();
    let secret = tempfile::tempdir().expect("secret dir");
    let dir = secret.path();
    let write_version = |name: &str, cert: &str, key: &str| {
        let v = dir.join(name);
        std::fs::create_dir(&v).expect("version dir");
        std::fs::write(v.join("tls.crt"), cert).expect("cert");
        std::fs::write(v.join("tls.key"), key).expect("key");
        std::fs::write(v.join("ca.crt"), pki.ca_pem()).expect("ca");
    };
    let first = pki.ca.issue("callee", DAY).expect("cert");
    write_version("..2026_11_27_a", &first.cert_pem, &first.key_pem);
    symlink("..2026_11_27_a", dir.join("..data")).expect("..data");
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        symlink(format!("..data/{f}"), dir.join(f)).expect("file link");
    }

    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    cfg.tls.cert = Some(dir.join("tls.crt"));
    cfg.tls.key = Some(dir.join("tls.key"));
    cfg.tls.ca = Some(dir.join("ca.crt"));
    cfg.tls.client_auth = tracseq_proxy::config::ClientAuth::Required;
    let proxy = start(cfg).await;
    let addr = proxy.inbound.expect("inbound");
    let client = pki.ca.issue("orders", DAY).expect("client cert");
    let tls = client_config(&pki.ca_pem(), Some((&client.cert_pem, &client.key_pem)));
    let before = tls_request(addr, tls.clone(), "callee", get_req("/x"))
        .await
        .expect("request before the swap");
    assert_eq!(serial(&before.server_cert), pem_serial(&first.cert_pem));

    // The update: a new version directory, then `..data` swapped by rename.
    let second = pki.ca.issue("callee", DAY).expect("rotated cert");
    write_version("..2026_11_27_b", &second.cert_pem, &second.key_pem);
    symlink("..2026_11_27_b", dir.join("..data_tmp")).expect("new link");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");

    let reloads = wait_metric(proxy.admin, RELOADS, &[("result", "ok")], 1.0).await;
    assert_eq!(reloads, 1.0, "the symlink swap was not seen");
    let after = tls_request(addr, tls, "callee", get_req("/x"))
        .await
        .expect("request after the swap");
    assert_eq!(after.resp.status, 200);
    assert_eq!(serial(&after.server_cert), pem_serial(&second.cert_pem));
    assert!(proxy.shutdown().await);
}

/// A reload retires the sidecar's pooled connections to peers: they were authenticated with
/// the identity and trust bundle just replaced (a CA removed, a certificate rotated out).
/// The request after the reload opens a new mTLS connection, which presents the new
/// certificate; requests before it share one connection, and so do those after it: for
/// HTTP/1 callers (our pool) and HTTP/2 callers (hyper-util's client, h2 to the peer).
#[tokio::test]
async fn reload_retires_pooled_peer_connections() {
    use bytes::Bytes;
    use http::Request;
    use http_body_util::Full;

    let pki = Pki::new();
    let caller_files = pki.service("caller");
    let callee_files = pki.service("callee");
    let callee_app = Upstream::start().await;
    let mut cfg = config(callee_app.addr);
    with_tls(&mut cfg, &callee_files);
    let callee = start(cfg).await;
    let callee_port = callee.inbound.expect("inbound").port();
    let caller_app = Upstream::start().await;
    let mut cfg = config(caller_app.addr);
    with_tls(&mut cfg, &caller_files);
    cfg.peers = vec![
        format!("callee=127.0.0.1:{callee_port}#spiffe://tracseq.local/callee")
            .parse()
            .expect("peer"),
    ];
    let caller = start(cfg).await;
    let out = caller.outbound_addr();

    // HTTP/1 callers (bodiless and with a body: the pool's two clients share connections)
    // and an HTTP/2 caller (h2c with `:authority` naming the service; hyper-util's client
    // takes it on, h2 by ALPN to the peer).
    let h1 = h1_client();
    let tcp = tokio::net::TcpStream::connect(out).await.expect("connect");
    let (h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let call = |i: usize, http2: bool| {
        let (h1, mut h2) = (h1.clone(), h2.clone());
        async move {
            let body = if i.is_multiple_of(2) { "" } else { "sample" };
            let method = if i.is_multiple_of(2) { "GET" } else { "POST" };
            let resp = if http2 {
                let req = Request::builder()
                    .method(method)
                    .uri(format!("http://callee/r/{i}"))
                    .body(Full::new(Bytes::from_static(body.as_bytes())))
                    .expect("request");
                let resp = tokio::time::timeout(WAIT, h2.send_request(req))
                    .await
                    .expect("in time")
                    .expect("response");
                collect(resp).await.expect("body")
            } else {
                let req = Request::builder()
                    .method(method)
                    .uri(format!("http://{out}/r/{i}"))
                    .header("host", "callee")
                    .body(Full::new(Bytes::from_static(body.as_bytes())))
                    .expect("request");
                send(&h1, req).await.expect("response")
            };
            assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        }
    };
    let handshakes = || async {
        callee.metrics().await.sum(
            "tracseq_proxy_tls_handshakes_total",
            &[("direction", "inbound"), ("result", "ok")],
        )
    };
    let client_cert_hash = || {
        let seen = callee_app.last();
        let xfcc = seen.headers["x-forwarded-client-cert"]
            .to_str()
            .expect("ascii")
            .to_string();
        xfcc.split(';')
            .find(|p| p.starts_with("Hash="))
            .expect("hash in XFCC")
            .to_string()
    };
    for i in 0..3 {
        call(i, false).await;
        call(i, true).await;
    }
    assert_eq!(
        handshakes().await,
        2.0,
        "one HTTP/1.1 and one h2 connection before the reload"
    );
    let old_hash = client_cert_hash();

    let next = pki.ca.issue("caller", DAY).expect("rotated cert");
    replace(&caller_files.cert, &next.cert_pem);
    replace(&caller_files.key, &next.key_pem);
    let ok = wait_metric(caller.admin, RELOADS, &[("result", "ok")], 1.0).await;
    assert!(ok >= 1.0, "the caller loaded its new files");

    for i in 3..6 {
        call(i, false).await;
        call(i, true).await;
    }
    assert_eq!(
        handshakes().await,
        4.0,
        "both connections were retired; their successors are reused"
    );
    assert_ne!(
        client_cert_hash(),
        old_hash,
        "the callee sees the caller's new certificate"
    );
    assert_eq!(callee_app.count(), 12);
    assert!(caller.shutdown().await);
    assert!(callee.shutdown().await);
}
