//! `tracseq-proxy demo` runs to completion with a short duration, and its RED summary (read
//! from the sidecars' own /metrics) agrees with the traffic its generator sent. Ctrl-C (SIGINT)
//! stops the binary's demo at any point and leaves none of its keys behind.

use tracseq_proxy::config::cli::DemoArgs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_and_its_summary_matches_its_traffic() {
    let args = DemoArgs {
        duration: "2s".into(),
        rate: 100,
        keep_running: false,
        quiet: true,
    };
    let summary = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tracseq_proxy::demo::run(args),
    )
    .await
    .expect("demo finished within 60s")
    .expect("demo ran");
    println!("{summary}");
    assert_eq!(
        summary.sent.transport_failures, 0,
        "every demo request got an answer"
    );
    let total = summary.sent.total();
    // Generous: a shared, noisy machine may reach a fraction of the asked rate.
    assert!(total.requests >= 20, "too little traffic: {total:?}");
    // Every request crosses two sidecars: the caller's outbound and the callee's inbound.
    for dir in ["inbound", "outbound"] {
        let measured: u64 = summary
            .rows
            .iter()
            .filter(|r| r.direction == dir)
            .map(|r| r.requests)
            .sum();
        assert_eq!(measured, total.requests, "{dir} requests across the mesh");
    }
    for ((service, direction), sent) in &summary.sent.by_service {
        let row = summary
            .row(service, direction)
            .unwrap_or_else(|| panic!("no summary row for {service} {direction}"));
        assert_eq!(
            row.requests, sent.requests,
            "{service} {direction} requests"
        );
        assert_eq!(row.errors, sent.errors, "{service} {direction} 5xx");
        let (p50, p99) = (row.p50.expect("p50"), row.p99.expect("p99"));
        assert!(
            p50 > 0.0 && p50 <= p99,
            "{service} {direction}: p50 {p50} p99 {p99}"
        );
    }
    assert!(summary.agrees_with_traffic());
    // The hops between sidecars really were mTLS: the callees counted successful handshakes.
    assert!(summary.mtls);
    assert!(
        summary.tls_handshakes_ok > 0,
        "no inbound TLS handshake was counted: the mesh ran in plaintext"
    );
    // All five (service, direction) pairs of the demo's call graph carried traffic.
    for (svc, dir) in [
        ("frontend", "outbound"),
        ("samples", "inbound"),
        ("samples", "outbound"),
        ("sequencing", "inbound"),
        ("storage", "inbound"),
    ] {
        assert!(
            summary.row(svc, dir).is_some_and(|r| r.requests > 0),
            "{svc} {dir} saw traffic"
        );
    }
}

#[tokio::test]
async fn demo_rejects_a_bad_duration() {
    let args = DemoArgs {
        duration: "soon".into(),
        rate: 10,
        keep_running: false,
        quiet: true,
    };
    let err = tracseq_proxy::demo::run(args)
        .await
        .expect_err("bad duration");
    assert!(err.to_string().contains("--duration"), "{err}");
}

/// The `demo` binary in a private `TMPDIR` (where it writes its CA and keys), with stdout read
/// line by line on a thread.
struct DemoBin {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// stderr, drained as it comes so a chatty child never blocks on a full pipe.
    stderr: std::thread::JoinHandle<String>,
    tmp: tempfile::TempDir,
}

impl DemoBin {
    fn start(args: &[&str]) -> Self {
        use std::io::BufRead;
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tracseq-proxy"))
            .arg("demo")
            .args(args)
            .env("TMPDIR", tmp.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let mut err = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            use std::io::Read;
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            stderr,
            tmp,
        }
    }

    /// Wait (bounded) for a stdout line containing `needle`.
    fn wait_for(&self, needle: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(e) => panic!("no stdout line with {needle:?} from the demo: {e}"),
            }
        }
    }

    /// The demo's key directories still on disk.
    fn key_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.tmp.path())
            .expect("read TMPDIR")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("tracseq-proxy-demo-"))
            .collect()
    }

    /// SIGINT (Ctrl-C) through the `kill` command; returns the exit code, stderr and the key
    /// directories left behind.
    fn interrupt(mut self) -> (Option<i32>, String, Vec<String>) {
        assert_eq!(
            self.key_dirs().len(),
            1,
            "the demo wrote its keys to TMPDIR"
        );
        let status = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -INT failed");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let code = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the demo did not exit within 30s of SIGINT");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let left = self.key_dirs();
        let err = self.stderr.join().expect("stderr reader");
        (code, err, left)
    }
}

#[test]
fn ctrl_c_during_the_traffic_stops_the_demo_and_removes_its_keys() {
    let demo = DemoBin::start(&["--duration", "120s", "--rate", "20"]);
    demo.wait_for("demo: sending");
    let (code, stderr, left) = demo.interrupt();
    assert_eq!(code, Some(1), "an interrupted demo fails; stderr: {stderr}");
    assert!(stderr.contains("interrupted"), "stderr: {stderr}");
    assert!(left.is_empty(), "keys left behind: {left:?}");
}

#[test]
fn ctrl_c_ends_keep_running_cleanly_and_removes_the_keys() {
    let demo = DemoBin::start(&["--duration", "1s", "--rate", "20", "--keep-running"]);
    demo.wait_for("--keep-running");
    let (code, stderr, left) = demo.interrupt();
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(left.is_empty(), "keys left behind: {left:?}");
}
