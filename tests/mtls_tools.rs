//! Third-party judges of our TLS: `openssl s_client` and `curl` talk to the inbound listener,
//! `openssl verify` checks what `certs init`/`certs issue` wrote, and the real binary refuses
//! to start (exit 2, naming the file) with a missing, unreadable or mismatched cert or key.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::pki::*;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_tracseq-proxy");

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("command runs")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

fn openssl_verify(dir: &Path, cert: &str) {
    for purpose in ["sslserver", "sslclient"] {
        let o = run(Command::new("openssl")
            .args(["verify", "-purpose", purpose, "-CAfile"])
            .arg(dir.join("ca.pem"))
            .arg(dir.join(cert)));
        assert!(
            o.status.success(),
            "openssl verify {cert} ({purpose}): {}",
            text(&o)
        );
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(": OK"),
            "{}",
            text(&o)
        );
    }
}

#[test]
fn certs_init_issue_inspect_and_openssl_verify() {
    require_tool("openssl", "apt-get install openssl");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");
    let o = run(Command::new(BIN)
        .args([
            "certs",
            "init",
            "--trust-domain",
            "tracseq.local",
            "--validity",
            "30d",
            "--dir",
        ])
        .arg(&dir)
        .args(["--service", "orders", "billing"]));
    assert!(o.status.success(), "certs init: {}", text(&o));
    for f in [
        "ca.pem",
        "ca-key.pem",
        "orders.pem",
        "orders-key.pem",
        "billing.pem",
        "billing-key.pem",
    ] {
        assert!(dir.join(f).exists(), "{f} written");
    }
    for key in ["ca-key.pem", "orders-key.pem", "billing-key.pem"] {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key} is 0600");
    }
    openssl_verify(&dir, "orders.pem");
    openssl_verify(&dir, "billing.pem");
    // The key really belongs to the certificate (openssl compares the public keys).
    let pubkey = |args: &[&str], f: &str| {
        let o = run(Command::new("openssl").args(args).arg(dir.join(f)));
        assert!(o.status.success(), "{}", text(&o));
        o.stdout
    };
    assert_eq!(
        pubkey(&["x509", "-noout", "-pubkey", "-in"], "orders.pem"),
        pubkey(&["pkey", "-pubout", "-in"], "orders-key.pem")
    );

    // A second init must not overwrite the CA.
    let again = run(Command::new(BIN)
        .args(["certs", "init", "--dir"])
        .arg(&dir)
        .args(["--service", "x"]));
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));

    let o = run(Command::new(BIN)
        .args(["certs", "issue", "--service", "lab", "--dir"])
        .arg(&dir));
    assert!(o.status.success(), "certs issue: {}", text(&o));
    assert_eq!(mode(&dir.join("lab-key.pem")), 0o600);
    openssl_verify(&dir, "lab.pem");

    let o = run(Command::new(BIN)
        .args(["certs", "inspect"])
        .arg(dir.join("orders.pem")));
    assert!(o.status.success(), "certs inspect: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        "subject:",
        "CN=orders",
        "URI:spiffe://tracseq.local/orders",
        "DNS:orders",
        "issuer:",
        "TracSeq dev CA",
        "not after:",
    ] {
        assert!(out.contains(want), "inspect shows {want:?}:\n{out}");
    }
    // 30 days from a moment ago (29 with whole days rounded down; the clock may step).
    assert!(
        out.contains("expires in 29 days") || out.contains("expires in 30 days"),
        "{out}"
    );
}

/// Start a TLS sidecar in-process for the tools to talk to.
async fn tls_proxy(pki: &Pki) -> (Proxy, Upstream) {
    let callee = pki.service("callee");
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    with_tls(&mut cfg, &callee);
    (start(cfg).await, up)
}

async fn blocking(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.stdin(Stdio::null()).output().expect("runs"))
        .await
        .expect("join")
}

#[tokio::test]
async fn openssl_s_client_with_and_without_a_client_cert() {
    require_tool("openssl", "apt-get install openssl");
    let pki = Pki::new();
    pki.service("orders");
    let (proxy, up) = tls_proxy(&pki).await;
    let port = proxy.inbound.expect("inbound").port();
    let d = pki.dir.path();
    let s_client = |with_cert: bool| {
        let mut c = Command::new("openssl");
        c.args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "callee",
        ])
        .args([
            "-verify_return_error",
            "-alpn",
            "http/1.1",
            "-ign_eof",
            "-CAfile",
        ])
        .arg(d.join("ca.pem"));
        if with_cert {
            c.arg("-cert")
                .arg(d.join("orders.pem"))
                .arg("-key")
                .arg(d.join("orders-key.pem"));
        }
        c
    };
    let request = "GET /via-openssl HTTP/1.1\r\nHost: callee\r\nConnection: close\r\n\r\n";
    let o = tokio::task::spawn_blocking({
        let mut c = s_client(true);
        move || {
            use std::io::Write as _;
            let mut child = c
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(request.as_bytes())
                .expect("write");
            child.wait_with_output().expect("output")
        }
    })
    .await
    .expect("join");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("Verify return code: 0 (ok)"),
        "server verified by openssl: {}",
        text(&o)
    );
    assert!(
        out.contains("HTTP/1.1 200"),
        "request answered: {}",
        text(&o)
    );
    assert!(out.contains("TLSv1.3"), "TLS 1.3 by default: {}", text(&o));
    assert_eq!(up.last().uri.path(), "/via-openssl");
    let xfcc = up.last().headers["x-forwarded-client-cert"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(xfcc.contains("URI=spiffe://tracseq.local/orders"), "{xfcc}");

    let o = blocking(s_client(false)).await;
    let all = text(&o);
    assert!(
        !all.contains("HTTP/1.1 200"),
        "no answer without a client cert: {all}"
    );
    let n = wait_metric(
        proxy.admin,
        "tracseq_proxy_tls_handshakes_total",
        &[("direction", "inbound"), ("result", "no_client_cert")],
        1.0,
    )
    .await;
    assert_eq!(n, 1.0, "{all}");

    // TLS 1.2 is refused unless --tls-min-version 1.2.
    let mut c = s_client(true);
    c.arg("-tls1_2");
    let o = blocking(c).await;
    assert!(!o.status.success(), "TLS 1.2 refused: {}", text(&o));
    assert!(proxy.shutdown().await);
}

#[tokio::test]
async fn curl_with_a_client_cert_and_http2() {
    require_tool("curl", "apt-get install curl");
    let pki = Pki::new();
    pki.service("orders");
    let (proxy, up) = tls_proxy(&pki).await;
    let port = proxy.inbound.expect("inbound").port();
    let d = pki.dir.path();
    let curl = |extra: &[&str]| {
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "--max-time",
            "10",
            "--resolve",
            &format!("callee:{port}:127.0.0.1"),
        ])
        .arg("--cacert")
        .arg(d.join("ca.pem"))
        .args(extra)
        .args([
            "-H",
            "x-forwarded-client-cert: Hash=00;URI=spiffe://tracseq.local/admin",
        ])
        .args([
            "-w",
            "\n%{http_code} %{http_version}",
            &format!("https://callee:{port}/via-curl"),
        ]);
        c
    };
    let cert = d.join("orders.pem");
    let key = d.join("orders-key.pem");
    let (cert, key) = (cert.to_str().expect("utf8"), key.to_str().expect("utf8"));
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let o = blocking(curl(&["--cert", cert, "--key", key, flag])).await;
        assert!(o.status.success(), "curl {flag}: {}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.ends_with(&format!("200 {version}")),
            "curl {flag}: {out}"
        );
        let xfcc = up.last().headers["x-forwarded-client-cert"]
            .to_str()
            .expect("ascii")
            .to_string();
        assert!(
            xfcc.contains("URI=spiffe://tracseq.local/orders") && !xfcc.contains("admin"),
            "{xfcc}"
        );
    }
    let o = blocking(curl(&[])).await;
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("200"),
        "no client cert, no answer: {}",
        text(&o)
    );
    assert_eq!(up.count(), 2);
    assert!(proxy.shutdown().await);
}

#[test]
fn startup_with_a_bad_cert_or_key_exits_2_naming_the_file() {
    let pki = Pki::new();
    let good = pki.service("callee");
    let other = pki.service("other");
    let d = pki.dir.path();
    let garbage = d.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let a_dir = d.join("a-directory.pem");
    std::fs::create_dir(&a_dir).expect("mkdir");
    let missing = d.join("missing.pem");
    let cases = [
        ("missing cert", &missing, &good.key, "missing.pem"),
        ("unreadable key", &good.cert, &a_dir, "a-directory.pem"),
        ("garbage cert", &garbage, &good.key, "garbage.pem"),
        (
            "key of another cert",
            &good.cert,
            &other.key,
            "other-key.pem",
        ),
    ];
    for (what, cert, key, named) in cases {
        let o = run(Command::new(BIN)
            .args([
                "--upstream",
                "http://127.0.0.1:9",
                "--listen",
                "127.0.0.1:0",
            ])
            .args([
                "--outbound-listen",
                "off",
                "--admin",
                "127.0.0.1:0",
                "--tls-cert",
            ])
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .arg("--tls-ca")
            .arg(&good.ca));
        assert_eq!(o.status.code(), Some(2), "{what}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(named), "{what}: names {named}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{what}: one line: {err}");
    }
}
