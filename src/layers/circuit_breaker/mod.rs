//! Circuit breaking per upstream (the local app inbound, each peer outbound, keyed by
//! `Dest.authority`, exported by `Dest.label`). After `--breaker-failures` consecutive failures, as `classify` decides them
//! (5xx, upstream errors, timeouts), the circuit opens: requests get 503 `circuit-open` with
//! `Retry-After` and never touch the upstream. After the backoff (`--breaker-backoff MIN..MAX`,
//! doubling per re-open, plus up to 25% jitter so a fleet of sidecars does not probe in step)
//! one probe goes through (half-open; others are refused meanwhile); its success closes the
//! circuit, its failure re-opens it for longer. `--breaker-failures 0` disables it.
//!
//! The closed state, the common case, costs two atomic operations per request; the mutex is
//! taken only while the circuit is not closed or when a failure may open it, never across an
//! await.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::{Clock, PolicyMetrics, TransitionLabels, UpstreamLabels};
use crate::classify::Outcome;
use crate::proxy::Direction;

mod layer;
pub use layer::{Breaker, BreakerFuture, BreakerLayer, Settle};

/// Upstream addresses with their own circuit; later ones share one `_other` circuit, so the
/// map stays bounded whatever names the app calls.
pub const MAX_UPSTREAMS: usize = 1024;

/// Share of the backoff added as random jitter (0..25%).
const JITTER: f64 = 0.25;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open { until: Duration },
    HalfOpen { probing: bool },
}

impl State {
    fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open { .. } => 1,
            Self::HalfOpen { .. } => 2,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen { .. } => "half-open",
        }
    }
}

/// Permission to send one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Normal,
    /// The single half-open probe: its outcome decides the circuit.
    Probe,
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Re-opens since the circuit last closed: the backoff is `min * 2^reopens`.
    reopens: u32,
    last_backoff: Duration,
}

/// The breaker of one upstream.
pub struct CircuitBreaker {
    threshold: u32,
    min: Duration,
    max: Duration,
    clock: Arc<dyn Clock>,
    /// Fast path: `true` while closed.
    closed: AtomicBool,
    failures: AtomicU32,
    inner: Mutex<Inner>,
    jitter: fn() -> f64,
    gauge: Gauge,
    /// Transition counters by target state: closed, open, half-open.
    to: [Counter; 3],
    /// For logs: which circuit this is.
    name: (&'static str, &'static str),
}

impl CircuitBreaker {
    pub fn new(threshold: u32, backoff: (Duration, Duration), clock: Arc<dyn Clock>) -> Self {
        Self {
            threshold: threshold.max(1),
            min: backoff.0,
            max: backoff.1.max(backoff.0),
            clock,
            closed: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            inner: Mutex::new(Inner {
                state: State::Closed,
                reopens: 0,
                last_backoff: Duration::ZERO,
            }),
            jitter: rand::random::<f64>,
            gauge: Gauge::default(),
            to: Default::default(),
            name: ("", ""),
        }
    }

    /// Replace the jitter source (a value in `0.0..1.0`), for exact tests.
    pub fn with_jitter(mut self, jitter: fn() -> f64) -> Self {
        self.jitter = jitter;
        self
    }

    fn with_metrics(mut self, labels: &UpstreamLabels, gauge: Gauge, to: [Counter; 3]) -> Self {
        self.name = (labels.direction.as_str(), labels.upstream);
        self.gauge = gauge;
        self.to = to;
        self
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    /// The open time chosen at the last opening.
    pub fn last_backoff(&self) -> Duration {
        self.lock().last_backoff
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the state half-written (each update
        // is a single assignment), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a request go to the upstream? `Err` carries how long until it is worth retrying.
    pub fn acquire(&self) -> Result<Permit, Duration> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(Permit::Normal);
        }
        let mut inner = self.lock();
        match inner.state {
            State::Closed => Ok(Permit::Normal),
            State::Open { until } => {
                let now = self.clock.now();
                if now >= until {
                    self.set(&mut inner, State::HalfOpen { probing: true });
                    Ok(Permit::Probe)
                } else {
                    Err(until - now)
                }
            }
            State::HalfOpen { probing: true } => Err(self.min),
            State::HalfOpen { probing: false } => {
                inner.state = State::HalfOpen { probing: true };
                Ok(Permit::Probe)
            }
        }
    }

    /// The outcome of a permitted request.
    pub fn record(&self, permit: Permit, outcome: Outcome) {
        match (permit, outcome) {
            (Permit::Normal, Outcome::Success) => {
                if self.failures.load(Ordering::Relaxed) != 0 {
                    self.failures.store(0, Ordering::Relaxed);
                }
            }
            (Permit::Normal, Outcome::Failure) => {
                let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
                if n >= self.threshold {
                    let mut inner = self.lock();
                    // Requests admitted before the circuit opened may still be finishing.
                    if inner.state == State::Closed {
                        inner.reopens = 0;
                        self.open(&mut inner);
                    }
                }
            }
            (Permit::Probe, Outcome::Success) => {
                let mut inner = self.lock();
                self.failures.store(0, Ordering::Relaxed);
                inner.reopens = 0;
                self.set(&mut inner, State::Closed);
            }
            (Permit::Probe, Outcome::Failure) => {
                let mut inner = self.lock();
                inner.reopens = inner.reopens.saturating_add(1);
                self.open(&mut inner);
            }
        }
    }

    /// A permitted request ended without a verdict (abandoned, or refused by the proxy
    /// itself): a probe slot is handed to the next request.
    pub fn release(&self, permit: Permit) {
        if permit == Permit::Probe {
            let mut inner = self.lock();
            if inner.state == (State::HalfOpen { probing: true }) {
                inner.state = State::HalfOpen { probing: false };
            }
        }
    }

    fn open(&self, inner: &mut Inner) {
        let base = self
            .min
            .saturating_mul(1u32.checked_shl(inner.reopens).unwrap_or(u32::MAX))
            .min(self.max);
        let jitter = (self.jitter)().clamp(0.0, 1.0) * JITTER;
        let backoff = base.mul_f64(1.0 + jitter).min(self.max);
        inner.last_backoff = backoff;
        self.failures.store(0, Ordering::Relaxed);
        self.set(
            inner,
            State::Open {
                until: self.clock.now() + backoff,
            },
        );
    }

    fn set(&self, inner: &mut Inner, state: State) {
        let changed = std::mem::discriminant(&inner.state) != std::mem::discriminant(&state);
        inner.state = state;
        self.closed.store(state == State::Closed, Ordering::Release);
        if changed {
            self.gauge.set(state.gauge());
            let i = match state {
                State::Closed => 0,
                State::Open { .. } => 1,
                State::HalfOpen { .. } => 2,
            };
            self.to[i].inc();
            let (direction, upstream) = self.name;
            tracing::info!(
                direction,
                upstream,
                to = state.name(),
                "circuit breaker transition"
            );
        }
    }
}

/// The breakers of one direction, one per upstream address (`Dest.authority`): destinations
/// whose metric label collapsed to `_other` still get circuits of their own, so failures of
/// one cannot open the circuit of another. Metric series stay per label (bounded).
pub struct Breakers {
    threshold: u32,
    backoff: (Duration, Duration),
    direction: Direction,
    metrics: Arc<PolicyMetrics>,
    clock: Arc<dyn Clock>,
    map: DashMap<String, Arc<CircuitBreaker>, foldhash::fast::RandomState>,
}

impl Breakers {
    pub fn new(
        threshold: u32,
        backoff: (Duration, Duration),
        direction: Direction,
        metrics: Arc<PolicyMetrics>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            threshold,
            backoff,
            direction,
            metrics,
            clock,
            map: DashMap::with_hasher(Default::default()),
        }
    }

    /// The circuit of the upstream at `key` (its address), exported under `label`.
    pub fn get(&self, key: &str, label: &'static str) -> Arc<CircuitBreaker> {
        if let Some(b) = self.map.get(key) {
            return b.clone();
        }
        let (key, label) = if self.map.len() >= MAX_UPSTREAMS {
            ("_other", "_other")
        } else {
            (key, label)
        };
        self.map
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(self.build(label)))
            .clone()
    }

    fn build(&self, upstream: &'static str) -> CircuitBreaker {
        let (direction, m) = (self.direction, &self.metrics);
        let labels = UpstreamLabels {
            direction,
            upstream,
        };
        let gauge = m.breaker_state.get_or_create(&labels).clone();
        let to = ["closed", "open", "half-open"].map(|to| {
            m.breaker_transitions
                .get_or_create(&TransitionLabels {
                    direction,
                    upstream,
                    to,
                })
                .clone()
        });
        CircuitBreaker::new(self.threshold, self.backoff, self.clock.clone())
            .with_metrics(&labels, gauge, to)
    }
}
