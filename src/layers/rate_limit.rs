//! Inbound rate limiting with governor's GCRA: a global limit (`--rate-limit`,
//! `--rate-limit-burst`) and a per-client limit (`--rate-limit-per-client`) keyed by mTLS
//! identity, client IP or a header (`--rate-limit-key`). A rejection is a 429 `rate-limited`
//! with `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit` fields
//! (draft-ietf-httpapi-ratelimit-headers-10: `"name";q=<quota>;w=<window s>` and
//! `"name";r=<remaining>;t=<reset s>`); the global policy is named `default`, the per-client one
//! `client`. In shadow mode would-be rejections are only counted.
//!
//! Choices:
//! - Burst: `--rate-limit-burst`, else the per-second rate rounded, at least 1 (`100/s` → 100,
//!   `30/m` → 1): a client may spend one second's worth at once, never less than one request.
//!   The per-client limit uses the same rule on its own rate.
//! - The global check is governor's direct limiter: one atomic compare-and-swap, lock-free.
//! - The per-client check runs first, so a noisy client does not spend the global budget.
//! - The key table is bounded: at most `MAX_CLIENT_KEYS` keys; a key arriving when the table is
//!   full shares one overflow bucket with every other such key (a flood of fresh keys is
//!   throttled as one client instead of growing memory). Idle keys (whose bucket is full
//!   again, so forgetting them changes no decision) are evicted every `HOUSEKEEP_EVERY` by a
//!   background task, and at most once per `FULL_HOUSEKEEP_EVERY` on the request path when
//!   the table is full. Header values are hashed (SipHash, random key) so a key costs a fixed
//!   few bytes whatever the header's length.

use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use dashmap::DashMap;
use futures_util::future::{ready, Either, Ready};
use governor::clock::{Clock as GovClock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::Quota;
use http::header::HeaderName;
use http::{HeaderValue, Request, Response};
use prometheus_client::metrics::counter::Counter;

use super::{LimitMode, ModeLabels, PolicyMetrics};
use crate::config::{Config, Rate, RateLimitKey, RateLimitMode};
use crate::error::{BoxError, ErrorKind, ProxyError};
use crate::proxy::body::Body;
use crate::proxy::Direction;

/// Most per-client keys kept: about 64 bytes each in the table, so a few MB at most.
pub const MAX_CLIENT_KEYS: usize = 50_000;
/// How often idle keys are evicted by the background task.
pub const HOUSEKEEP_EVERY: Duration = Duration::from_secs(10);
/// How often a full table may be swept on the request path (a sweep is O(keys)).
pub const FULL_HOUSEKEEP_EVERY: Duration = Duration::from_secs(1);

pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Who a request is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    Identity(Arc<str>),
    Ip(IpAddr),
    Header(u64),
}

/// The per-client state store: governor's DashMap store with a hard cap and an overflow bucket.
#[derive(Debug, Default)]
pub struct BoundedStore {
    map: DashMap<ClientKey, InMemoryState>,
    cap: usize,
    overflow: InMemoryState,
    /// Set when a key went to the overflow bucket; shared with the core, which sweeps.
    full: Arc<AtomicBool>,
}

impl StateStore for BoundedStore {
    type Key = ClientKey;

    fn measure_and_replace<T, F, E>(&self, key: &ClientKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(v) = self.map.get(key) {
            return v.measure_and_replace(&NotKeyed::NonKey, f);
        }
        // `len` visits every shard: paid only by a key the table has not seen.
        if self.map.len() >= self.cap {
            self.full.store(true, Ordering::Relaxed);
            return self.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let entry = self.map.entry(key.clone()).or_default();
        entry.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl ShrinkableKeyedStateStore<ClientKey> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.map, drop_below);
    }
    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }
    fn len(&self) -> usize {
        self.map.len()
    }
    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

type Direct<C> = governor::RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;
type Keyed<C> = governor::RateLimiter<ClientKey, BoundedStore, C, StateInformationMiddleware>;

/// A rate policy as advertised in `RateLimit-Policy`.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: &'static str,
    pub quota: Quota,
    pub policy_header: HeaderValue,
}

impl Policy {
    fn new(name: &'static str, rate: Rate, burst: Option<u32>) -> Self {
        let default_burst = (f64::from(rate.count) / rate.per.as_secs_f64()).round();
        // The float is finite, non-negative and at most u32::MAX (count is a u32, per ≥ 1s).
        let default_burst = default_burst.clamp(1.0, f64::from(u32::MAX)) as u32;
        let burst = NonZeroU32::new(burst.unwrap_or(default_burst)).unwrap_or(NonZeroU32::MIN);
        let period = (rate.per / rate.count.max(1)).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .expect("the period is at least 1ns")
            .allow_burst(burst);
        let text = format!("\"{name}\";q={};w={}", rate.count, rate.window_secs());
        Self {
            name,
            quota,
            policy_header: HeaderValue::from_str(&text).expect("digits and a token are valid"),
        }
    }
}

/// Why a request was refused: which policy, and when to come back.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub policy: Policy,
    pub retry_after: Duration,
}

impl Rejection {
    pub fn into_error(self) -> ProxyError {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        let state = format!("\"{}\";r=0;t={}", self.policy.name, secs.max(1));
        ProxyError::new(ErrorKind::RateLimited)
            .with_detail("over the rate limit")
            .with_retry_after(self.retry_after)
            .with_header(RATELIMIT_POLICY, self.policy.policy_header)
            .with_header(
                RATELIMIT,
                HeaderValue::from_str(&state).expect("digits and a token are valid"),
            )
    }
}

/// The limiter core: synchronous, clock injected (governor's `FakeRelativeClock` in tests).
pub struct RateLimiter<C: GovClock = DefaultClock> {
    global: Option<(Direct<C>, Policy)>,
    per_client: Option<(Keyed<C>, Policy)>,
    key: RateLimitKey,
    hasher: std::hash::RandomState,
    pub mode: RateLimitMode,
    clock: C,
    origin: C::Instant,
    last_sweep: AtomicU64,
    full: Arc<AtomicBool>,
}

impl RateLimiter<DefaultClock> {
    /// `None` when neither limit is configured.
    pub fn from_config(cfg: &Config) -> Option<Self> {
        Self::with_clock(cfg, DefaultClock::default(), MAX_CLIENT_KEYS)
    }
}

impl<C: GovClock + Clone> RateLimiter<C> {
    pub fn with_clock(cfg: &Config, clock: C, max_keys: usize) -> Option<Self> {
        if cfg.rate_limit.is_none() && cfg.rate_limit_per_client.is_none() {
            return None;
        }
        let global = cfg.rate_limit.map(|r| {
            let p = Policy::new("default", r, cfg.rate_limit_burst);
            (
                Direct::new(p.quota, InMemoryState::default(), clock.clone()),
                p,
            )
        });
        let full = Arc::new(AtomicBool::new(false));
        let per_client = cfg.rate_limit_per_client.map(|r| {
            let p = Policy::new("client", r, None);
            let store = BoundedStore {
                cap: max_keys,
                full: full.clone(),
                ..BoundedStore::default()
            };
            (Keyed::new(p.quota, store, clock.clone()), p)
        });
        let origin = clock.now();
        Some(Self {
            global,
            per_client,
            key: cfg.rate_limit_key.clone(),
            hasher: std::hash::RandomState::new(),
            mode: cfg.rate_limit_mode,
            clock,
            origin,
            last_sweep: AtomicU64::new(0),
            full,
        })
    }
}

impl<C: GovClock> RateLimiter<C> {
    pub fn has_per_client(&self) -> bool {
        self.per_client.is_some()
    }

    /// Take one request from the client's bucket (if any), then from the global one.
    pub fn check(&self, key: Option<&ClientKey>) -> Result<(), Rejection> {
        if let (Some((limiter, policy)), Some(key)) = (&self.per_client, key) {
            let res = limiter.check_key(key);
            if self.full.load(Ordering::Relaxed) {
                self.sweep_if_due();
            }
            if let Err(not_until) = res {
                return Err(Rejection {
                    policy: policy.clone(),
                    retry_after: not_until.wait_time_from(self.clock.now()),
                });
            }
        }
        if let Some((limiter, policy)) = &self.global {
            if let Err(not_until) = limiter.check() {
                return Err(Rejection {
                    policy: policy.clone(),
                    retry_after: not_until.wait_time_from(self.clock.now()),
                });
            }
        }
        Ok(())
    }

    /// Evict idle per-client keys (those whose bucket is full again).
    pub fn housekeep(&self) {
        if let Some((limiter, _)) = &self.per_client {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Keys in the per-client table.
    pub fn keys(&self) -> usize {
        self.per_client.as_ref().map_or(0, |(l, _)| l.len())
    }

    fn sweep_if_due(&self) {
        let now = u64::from(self.clock.now().duration_since(self.origin));
        let last = self.last_sweep.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= FULL_HOUSEKEEP_EVERY.as_nanos() as u64;
        if due
            && self
                .last_sweep
                .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.full.store(false, Ordering::Relaxed);
            if let Some((limiter, _)) = &self.per_client {
                limiter.retain_recent();
            }
        }
    }

    /// The key of a request under `--rate-limit-key`: identity or header when present, else
    /// the client's IP.
    pub fn key_of<B>(&self, req: &Request<B>) -> ClientKey {
        let meta = crate::proxy::RequestCtx::meta(req);
        let ip = || {
            ClientKey::Ip(meta.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |m| m.client_addr.ip()))
        };
        match &self.key {
            RateLimitKey::Identity => meta
                .and_then(|m| m.identity())
                .map_or_else(ip, |id| ClientKey::Identity(id.clone())),
            RateLimitKey::Ip => ip(),
            RateLimitKey::Header(name) => req.headers().get(name).map_or_else(ip, |v| {
                let mut h = self.hasher.build_hasher();
                v.as_bytes().hash(&mut h);
                ClientKey::Header(std::hash::Hasher::finish(&h))
            }),
        }
    }
}

#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Option<Arc<RateLimiter>>,
    enforce: Counter,
    shadow: Counter,
}

impl RateLimitLayer {
    pub fn new(
        limiter: Option<Arc<RateLimiter>>,
        direction: Direction,
        metrics: Arc<PolicyMetrics>,
    ) -> Self {
        let counter = |mode| {
            metrics
                .rate_limited
                .get_or_create(&ModeLabels { direction, mode })
                .clone()
        };
        if let Some(l) = limiter.as_ref().filter(|l| l.has_per_client()) {
            spawn_housekeeping(Arc::downgrade(l));
        }
        Self {
            enforce: counter(LimitMode::Enforce),
            shadow: counter(LimitMode::Shadow),
            limiter,
        }
    }
}

/// Sweep idle keys every `HOUSEKEEP_EVERY` while the limiter lives (no runtime: no task; the
/// request-path sweep of a full table still bounds it).
fn spawn_housekeeping(limiter: Weak<RateLimiter>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let mut tick = tokio::time::interval(HOUSEKEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(l) = limiter.upgrade() else { return };
            l.housekeep();
        }
    });
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    layer: RateLimitLayer,
}

impl<S> tower::Service<Request<Body>> for RateLimit<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Either<Ready<Result<Response<Body>, BoxError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if let Some(limiter) = &self.layer.limiter {
            let key = limiter.has_per_client().then(|| limiter.key_of(&req));
            if let Err(rejection) = limiter.check(key.as_ref()) {
                match limiter.mode {
                    RateLimitMode::Shadow => self.layer.shadow.inc(),
                    RateLimitMode::Enforce => {
                        self.layer.enforce.inc();
                        return Either::Left(ready(Err(rejection.into_error().into())));
                    }
                };
            }
        }
        Either::Right(self.inner.call(req))
    }
}
