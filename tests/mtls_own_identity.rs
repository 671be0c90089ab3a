//! This sidecar's own identity is checked before it is used: a certificate peers would refuse
//! (expired, not yet valid, from another CA) stops start-up naming the file, and TLS settings
//! that would silently do nothing are refused at parse time.

mod support;

use support::pki::{with_tls, Pki};
use support::*;
use time::OffsetDateTime;
use tracseq_proxy::config::try_from_args;
use tracseq_proxy::tls::certs::{leaf_params, write_service};

/// Start-up fails before any upstream is contacted, so none is started.
const UPSTREAM: &str = "127.0.0.1:9";

fn start_error(cfg: tracseq_proxy::config::Config) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(tracseq_proxy::app::start(cfg)) {
        Ok(_) => panic!("start-up must fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn an_expired_or_not_yet_valid_own_certificate_stops_start_up() {
    let pki = Pki::new();
    let now = OffsetDateTime::now_utc();
    let cases = [
        (
            "expired",
            now - time::Duration::days(10),
            now - time::Duration::days(1),
            "expired",
        ),
        (
            "future",
            now + time::Duration::days(1),
            now + time::Duration::days(10),
            "not valid before",
        ),
    ];
    for (name, from, to, want) in cases {
        let params = leaf_params("tracseq.local", name, from, to).expect("params");
        let issued = pki.ca.sign(&params).expect("sign");
        write_service(pki.dir.path(), &pki.ca, name, &issued).expect("write");
        let files = pki.files(name, issued);
        let mut cfg = config(UPSTREAM.parse().expect("addr"));
        with_tls(&mut cfg, &files);
        let err = start_error(cfg);
        assert!(
            err.contains("--tls-cert") && err.contains(want),
            "{name}: {err}"
        );
    }
}

#[test]
fn a_certificate_from_another_ca_stops_start_up() {
    let ours = Pki::new();
    let theirs = Pki::new();
    let files = theirs.service("stranger");
    let mut cfg = config(UPSTREAM.parse().expect("addr"));
    with_tls(&mut cfg, &files);
    ours.service("anchor");
    cfg.tls.ca = Some(ours.dir.path().join("ca.pem"));
    let err = start_error(cfg);
    assert!(
        err.contains("--tls-cert") && err.contains("not accepted by the CA"),
        "{err}"
    );
}

#[test]
fn tls_settings_that_would_do_nothing_are_refused() {
    let ca_only = try_from_args([
        "tracseq-proxy",
        "--outbound-only",
        "--tls-ca",
        "/tmp/ca.pem",
    ])
    .expect_err("a trust bundle without an identity");
    assert!(ca_only.to_string().starts_with("--tls-ca"), "{ca_only}");
    let unverified = try_from_args([
        "tracseq-proxy",
        "--upstream",
        "http://127.0.0.1:8080",
        "--peer",
        "orders=orders:8443#spiffe://tracseq.local/orders",
    ])
    .expect_err("an expected identity with nothing to verify it");
    let msg = unverified.to_string();
    assert!(
        msg.starts_with("--peer") && msg.contains("--tls-ca"),
        "{msg}"
    );
}
