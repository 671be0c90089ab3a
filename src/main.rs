//! The binary: parse config → telemetry → runtime → run → exit code. Start-up errors are one
//! line on stderr and exit status 2; a clean drain exits 0.

use std::process::ExitCode;

use tracseq_proxy::config::{self, Invocation};

fn main() -> ExitCode {
    let invocation = match config::from_args(std::env::args_os()) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("tracseq-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    match invocation {
        Invocation::Run(cfg) => run(*cfg),
        Invocation::Certs(args) => match tracseq_proxy::tls::certs::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tracseq-proxy certs: {e}");
                ExitCode::from(2)
            }
        },
        Invocation::Demo(args) => {
            let rt = match runtime(config::default_workers()) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(tracseq_proxy::demo::run(args)) {
                Ok(_summary) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tracseq-proxy demo: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn run(cfg: config::Config) -> ExitCode {
    let _telemetry = tracseq_proxy::telemetry::init(&cfg);
    let rt = match runtime(cfg.workers) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(async {
        let running = match tracseq_proxy::app::start(cfg).await {
            Ok(r) => r,
            Err(e) => return Err((2, anyhow::Error::from(e))),
        };
        // Start-up code is done: keep only the code that serves requests resident.
        if let Err(e) = tracseq_proxy::memory::release_startup_text() {
            tracing::debug!(error = %e, "start-up code stays resident");
        }
        let trigger = running.shutdown_handle();
        tokio::spawn(async move {
            tracseq_proxy::app::wait_for_signal().await;
            let _ = trigger.send(true);
        });
        running.wait().await.map_err(|e| (1, e))
    });
    // Do not wait for tasks stuck past the drain timeout (e.g. tunnels).
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err((code, e)) => {
            eprintln!("tracseq-proxy: {e:#}");
            ExitCode::from(code)
        }
    }
}

/// `--workers 1` gets the current-thread scheduler: no work-stealing queues, no cross-thread
/// wake-ups, no idle worker parking — measured cheaper per request than a one-worker
/// multi-thread runtime (docs/BENCHMARKS.md). More workers get the multi-thread scheduler.
fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder
        .enable_all()
        .thread_name("tracseq-proxy")
        .build()
        .map_err(|e| {
            eprintln!("tracseq-proxy: cannot start the runtime: {e}");
            ExitCode::from(1)
        })
}
