//! Policies of the tower stacks, one file each, plus the RED metrics layer. Each policy is a
//! plain core with a synchronous `&self` API and an injectable clock, wrapped by a thin tower
//! `Layer` + `Service`. This module assembles the per-direction `Policies` (rate limit → load
//! shed → circuit breaker) and owns their shared metric families.

pub mod authz;
pub mod circuit_breaker;
pub mod handles;
pub mod labels;
pub mod load_shed;
pub mod metrics;
pub mod rate_limit;
pub mod retry;
pub mod trace;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::Config;
use crate::proxy::Direction;
use circuit_breaker::{BreakerLayer, Breakers};
use load_shed::{LoadShed, LoadShedLayer};
use rate_limit::{RateLimitLayer, RateLimiter};

/// A monotonic time source for the policy cores, so their tests can step time exactly.
/// (The rate limiter uses governor's own clocks: `QuantaClock`, `FakeRelativeClock`.)
pub trait Clock: Send + Sync + 'static {
    /// Time elapsed since an arbitrary fixed origin.
    fn now(&self) -> Duration;
}

/// The real clock: time since the process-wide origin taken at construction.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock(Instant);

impl Default for SystemClock {
    fn default() -> Self {
        Self(Instant::now())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock that moves only when told to (tests, benches).
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

/// `mode` of `tracseq_proxy_rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitMode {
    Enforce,
    Shadow,
}

impl EncodeLabelValue for LimitMode {
    fn encode(
        &self,
        e: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> std::fmt::Result {
        use std::fmt::Write;
        e.write_str(match self {
            Self::Enforce => "enforce",
            Self::Shadow => "shadow",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModeLabels {
    pub direction: Direction,
    pub mode: LimitMode,
}

impl EncodeLabelSet for ModeLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
        ("direction", self.direction).encode(encoder.encode_label())?;
        ("mode", self.mode).encode(encoder.encode_label())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamLabels {
    pub direction: Direction,
    pub upstream: &'static str,
}

impl EncodeLabelSet for UpstreamLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
        ("direction", self.direction).encode(encoder.encode_label())?;
        ("upstream", self.upstream).encode(encoder.encode_label())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransitionLabels {
    pub direction: Direction,
    pub upstream: &'static str,
    pub to: &'static str,
}

impl EncodeLabelSet for TransitionLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
        ("direction", self.direction).encode(encoder.encode_label())?;
        ("upstream", self.upstream).encode(encoder.encode_label())?;
        ("to", self.to).encode(encoder.encode_label())
    }
}

/// The policies' own counters and gauges (CONTRACT.md), shared by both directions.
#[derive(Debug, Default)]
pub struct PolicyMetrics {
    pub rate_limited: Family<ModeLabels, Counter>,
    pub load_shed: Family<labels::DirectionLabel, Counter>,
    pub breaker_state: Family<UpstreamLabels, Gauge>,
    pub breaker_transitions: Family<TransitionLabels, Counter>,
}

impl PolicyMetrics {
    pub fn register(reg: &mut Registry) -> Arc<Self> {
        let m = Self::default();
        reg.register(
            "tracseq_proxy_rate_limited",
            "Requests over a rate limit (mode=shadow: counted but let through)",
            m.rate_limited.clone(),
        );
        reg.register(
            "tracseq_proxy_load_shed",
            "Requests refused with 503 because --max-concurrent-requests were in flight",
            m.load_shed.clone(),
        );
        reg.register(
            "tracseq_proxy_circuit_breaker_state",
            "Circuit state per upstream: 0 closed, 1 open, 2 half-open",
            m.breaker_state.clone(),
        );
        reg.register(
            "tracseq_proxy_circuit_breaker_transitions",
            "Circuit state changes per upstream, by the state entered",
            m.breaker_transitions.clone(),
        );
        Arc::new(m)
    }
}

/// The policy layers of one direction, in the order of DESIGN.md: (authz →) rate limit →
/// load shed → circuit breaker. Built once per direction; every clone of the stack shares
/// their state.
#[derive(Clone)]
pub struct Policies {
    rate_limit: RateLimitLayer,
    load_shed: LoadShedLayer,
    breaker: BreakerLayer,
}

impl Policies {
    pub fn new(cfg: &Config, direction: Direction, metrics: Arc<PolicyMetrics>) -> Self {
        // The contract's rate limits are inbound ("global inbound limit"): outbound calls are
        // the local app's own, and the callee's sidecar limits them.
        let limiter = match direction {
            Direction::Inbound => RateLimiter::from_config(cfg),
            Direction::Outbound => None,
        };
        Self {
            rate_limit: RateLimitLayer::new(limiter.map(Arc::new), direction, metrics.clone()),
            load_shed: LoadShedLayer::new(
                Arc::new(LoadShed::new(cfg.max_concurrent_requests)),
                direction,
                metrics.clone(),
            ),
            breaker: BreakerLayer::new((cfg.breaker_failures > 0).then(|| {
                Arc::new(Breakers::new(
                    cfg.breaker_failures,
                    cfg.breaker_backoff,
                    direction,
                    metrics,
                    Arc::new(SystemClock::default()),
                ))
            })),
        }
    }
}

impl<S> tower::Layer<S> for Policies {
    type Service = rate_limit::RateLimit<load_shed::Shed<circuit_breaker::Breaker<S>>>;
    fn layer(&self, inner: S) -> Self::Service {
        self.rate_limit
            .layer(self.load_shed.layer(self.breaker.layer(inner)))
    }
}
