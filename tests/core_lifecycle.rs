//! Graceful lifecycle (issue 2): during a drain, in-flight requests (HTTP/1.1 and h2c) finish,
//! `/ready` turns 503 and new connections are refused; the real binary exits 0 on SIGTERM and
//! on `POST /shutdown`. The binary listens on port 0 and the tests read the ports it bound from
//! its `tracseq-proxy ready` log line, so no port is ever picked, released and raced for.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

async fn post_shutdown(admin: SocketAddr) -> u16 {
    send(
        &h1_client(),
        Request::post(format!("http://{admin}/shutdown"))
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await
    .expect("shutdown answered")
    .status
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_requests_and_refuses_new_ones() {
    let up = Upstream::start().await;
    let mut proxy = start(config(up.addr)).await;
    let inbound = proxy.inbound.expect("inbound");
    let url = proxy.inbound_url("/slow/2500");
    let slow = |client: TestClient| {
        let url = url.clone();
        tokio::spawn(async move {
            send(
                &client,
                Request::get(url)
                    .body(Full::new(Bytes::new()))
                    .expect("request"),
            )
            .await
        })
    };
    let h1 = slow(h1_client());
    let h2 = slow(h2_client());
    wait_until("both slow requests reach the upstream", async || {
        up.count() == 2
    })
    .await;

    let running = proxy.running.take().expect("running");
    let waiter = tokio::spawn(running.wait());
    assert_eq!(post_shutdown(proxy.admin).await, 200);

    let admin = proxy.admin;
    wait_until("/ready turns 503", async || {
        get(&format!("http://{admin}/ready"))
            .await
            .is_ok_and(|r| r.status == 503 && r.text().contains("draining"))
    })
    .await;
    wait_until("new connections are refused", async || {
        tokio::net::TcpStream::connect(inbound).await.is_err()
    })
    .await;
    assert!(
        !h1.is_finished() && !h2.is_finished(),
        "in-flight requests still running"
    );

    for (name, task) in [("h1", h1), ("h2", h2)] {
        let r = tokio::time::timeout(WAIT, task)
            .await
            .expect("finished in time")
            .expect("task")
            .unwrap_or_else(|e| panic!("{name} in-flight request failed during drain: {e}"));
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.body, "slow done\n", "{name}");
    }
    let clean = tokio::time::timeout(WAIT, waiter)
        .await
        .expect("drain ended")
        .expect("task")
        .expect("drain ok");
    assert!(clean, "drain finished before --drain-timeout");
}

#[tokio::test]
async fn drain_timeout_bounds_the_wait() {
    let up = Upstream::start().await;
    let mut cfg = config(up.addr);
    cfg.drain_timeout = Duration::from_millis(300);
    let mut proxy = start(cfg).await;
    let url = proxy.inbound_url("/slow/5000");
    let _stuck = tokio::spawn(async move { get(&url).await });
    wait_until("the slow request reaches the upstream", async || {
        up.count() == 1
    })
    .await;
    let running = proxy.running.take().expect("running");
    running.shutdown();
    let started = Instant::now();
    let clean = tokio::time::timeout(WAIT, running.wait())
        .await
        .expect("drain bounded")
        .expect("drain ok");
    assert!(!clean, "a request was still in flight");
    assert!(started.elapsed() < Duration::from_secs(4));
}

/// The address in a field of the start-up log line: `"127.0.0.1:1234"` or `"Some(127.0.0.1:1234)"`.
fn logged_addr(line: &serde_json::Value, field: &str) -> SocketAddr {
    let text = line[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in the ready line: {line}"));
    let text = text
        .strip_prefix("Some(")
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(text);
    text.parse()
        .unwrap_or_else(|e| panic!("{field} {text:?} is not an address: {e}"))
}

struct Bin {
    child: Child,
    inbound: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Bin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bin {
    async fn start(upstream: SocketAddr) -> Bin {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tracseq-proxy"))
            .args(["--upstream", &format!("http://{upstream}")])
            .args(["--listen", "127.0.0.1:0"])
            .args(["--outbound-listen", "127.0.0.1:0"])
            .args(["--admin", "127.0.0.1:0"])
            .args(["--workers", "1", "--drain-timeout", "10s"])
            .args(["--log-format", "json", "--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("binary starts");
        // Read the log on a thread until the ready line, then keep draining it so the child
        // never blocks on a full pipe.
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if v["message"] == "tracseq-proxy ready" {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(v);
                    }
                }
            }
        });
        // Owned by the guard from here on: a failed start below still kills the child.
        let unbound: SocketAddr = ([127, 0, 0, 1], 0).into();
        let mut bin = Bin {
            child,
            inbound: unbound,
            admin: unbound,
        };
        let ready = tokio::task::spawn_blocking(move || rx.recv_timeout(WAIT))
            .await
            .expect("reader joins")
            .unwrap_or_else(|e| {
                panic!("no `tracseq-proxy ready` log line (the binary exited, or {WAIT:?} passed): {e}")
            });
        bin.admin = logged_addr(&ready, "admin");
        bin.inbound = logged_addr(&ready, "inbound");
        wait_ready(bin.admin).await;
        bin
    }

    /// SIGTERM through the `kill` command, keeping the tests free of `unsafe`.
    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
    }

    async fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "binary did not exit within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_drains_and_exits_0_on_sigterm() {
    let up = Upstream::start().await;
    let mut bin = Bin::start(up.addr).await;
    let url = format!("http://{}/slow/1000", bin.inbound);
    let inflight = tokio::spawn(async move { get(&url).await });
    wait_until("the slow request reaches the upstream", async || {
        up.count() == 1
    })
    .await;
    bin.sigterm();
    let r = tokio::time::timeout(WAIT, inflight)
        .await
        .expect("in time")
        .expect("task")
        .expect("in-flight request finished during the drain");
    assert_eq!(r.status, 200);
    assert_eq!(bin.exit_code().await, Some(0));
}

#[tokio::test]
async fn binary_exits_0_on_post_shutdown() {
    let up = Upstream::start().await;
    let mut bin = Bin::start(up.addr).await;
    assert_eq!(
        get(&format!("http://{}/hello", bin.inbound))
            .await
            .expect("proxied")
            .status,
        200
    );
    assert_eq!(post_shutdown(bin.admin).await, 200);
    assert_eq!(bin.exit_code().await, Some(0));
}
