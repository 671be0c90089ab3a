//! OTLP span export off the request path. Requests hand finished spans to a bounded queue with
//! `try_send` (never waits); one background task batches them and calls the OTLP exporter
//! (gRPC via tonic or HTTP/protobuf via hyper), one export at a time, each bounded by a timeout.
//! A slow or dead collector therefore only fills the queue: overflow, and batches whose export
//! failed or timed out, are counted in `tracseq_proxy_spans_dropped_total` and never delay a
//! request. This replaces the SDK's `BatchSpanProcessor`, which runs its own thread with a
//! blocking executor (the tonic exporter needs the tokio runtime) and keeps its drop count to
//! itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry_otlp::SpanExporter as OtlpExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Queue capacity: the SDK's default `OTEL_BSP_MAX_QUEUE_SIZE`.
pub const DEFAULT_QUEUE_CAPACITY: usize = 2048;

/// Spans per export request: the SDK's default `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, capped by the
/// queue capacity (like the SDK, so the batch being filled cannot hide a full queue).
const MAX_BATCH: usize = 512;

/// How long a partial batch waits for more spans. Shorter than the SDK's 5s default so traces
/// show up promptly in a dev loop; at 1/s the export requests stay cheap.
const SCHEDULE_DELAY: Duration = Duration::from_secs(1);

/// Bound of one export call (the SDK's default `OTEL_EXPORTER_OTLP_TIMEOUT` is 10s; a batch
/// older than this is worth less than keeping the queue moving).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

static QUEUE_CAPACITY: AtomicUsize = AtomicUsize::new(DEFAULT_QUEUE_CAPACITY);

/// Internal knob (no CLI flag): the queue capacity of exporters started afterwards. Tests use
/// a tiny queue to show overflow without sending thousands of requests.
#[doc(hidden)]
pub fn set_queue_capacity(n: usize) {
    QUEUE_CAPACITY.store(n.max(1), Ordering::Relaxed);
}

/// `tracseq_proxy_spans_dropped_total`, registered at start whether or not export is on.
pub fn register_dropped(registry: &mut Registry) -> Counter {
    let c = Counter::default();
    registry.register(
        "tracseq_proxy_spans_dropped",
        "Finished spans not exported: the export queue was full, or the collector failed or timed out",
        c.clone(),
    );
    c
}

/// The request side of the queue.
#[derive(Debug)]
pub struct SpanSink {
    tx: mpsc::Sender<SpanData>,
    dropped: Counter,
}

impl SpanSink {
    /// Queue a finished span; if the queue is full, count it as dropped.
    pub fn submit(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

/// The background export task.
pub struct ExportTask {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Start the export task on the current runtime.
pub fn spawn(exporter: OtlpExporter, dropped: Counter) -> (SpanSink, ExportTask) {
    let capacity = QUEUE_CAPACITY.load(Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(capacity);
    let (stop, stop_rx) = watch::channel(false);
    let batch = MAX_BATCH.min(capacity);
    let task = tokio::spawn(run(rx, exporter, stop_rx, dropped.clone(), batch));
    (SpanSink { tx, dropped }, ExportTask { stop, task })
}

impl ExportTask {
    /// Export what is queued, then stop; gives up (dropping the rest) after `timeout`, so a
    /// dead collector cannot hold the shutdown.
    pub async fn shutdown(self, timeout: Duration) {
        let _ = self.stop.send(true);
        let abort = self.task.abort_handle();
        if tokio::time::timeout(timeout, self.task).await.is_err() {
            abort.abort();
            tracing::warn!(
                ?timeout,
                "span export did not finish in time; remaining spans dropped"
            );
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<SpanData>,
    exporter: OtlpExporter,
    mut stop: watch::Receiver<bool>,
    dropped: Counter,
    max_batch: usize,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut stopping = false;
    while !stopping {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            n = rx.recv_many(&mut batch, max_batch) => if n == 0 { break },
        }
        let deadline = tokio::time::Instant::now() + SCHEDULE_DELAY;
        while batch.len() < max_batch {
            let room = max_batch - batch.len();
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => { stopping = true; break }
                _ = tokio::time::sleep_until(deadline) => break,
                n = rx.recv_many(&mut batch, room) => if n == 0 { stopping = true; break },
            }
        }
        export(&exporter, &mut batch, &dropped, max_batch).await;
    }
    // Flush: what is already queued, in full batches.
    rx.close();
    loop {
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            break;
        }
        export(&exporter, &mut batch, &dropped, max_batch).await;
    }
    let _ = exporter.shutdown_with_timeout(Duration::from_millis(100));
}

async fn export(
    exporter: &OtlpExporter,
    batch: &mut Vec<SpanData>,
    dropped: &Counter,
    max_batch: usize,
) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len() as u64;
    let spans = std::mem::replace(batch, Vec::with_capacity(max_batch));
    match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(spans)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            dropped.inc_by(n);
            tracing::warn!(target: "tracseq_proxy::telemetry", error = %e, spans = n, "span export failed");
        }
        Err(_) => {
            dropped.inc_by(n);
            tracing::warn!(target: "tracseq_proxy::telemetry", spans = n, "span export timed out");
        }
    }
}
