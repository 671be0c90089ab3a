//! The policy cores with fake clocks: exact and instant (no sockets, no sleeps).

use std::sync::Arc;
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use tracseq_proxy::classify::Outcome;
use tracseq_proxy::config::{Config, RateLimitKey, RateLimitMode};
use tracseq_proxy::error::rescue;
use tracseq_proxy::layers::circuit_breaker::{CircuitBreaker, Permit, State};
use tracseq_proxy::layers::rate_limit::{ClientKey, RateLimiter};
use tracseq_proxy::layers::retry::Budget;
use tracseq_proxy::layers::ManualClock;

fn cfg() -> Config {
    Config::for_upstream(([127, 0, 0, 1], 1).into())
}

fn limiter(cfg: &Config, clock: &FakeRelativeClock, cap: usize) -> RateLimiter<FakeRelativeClock> {
    RateLimiter::with_clock(cfg, clock.clone(), cap).expect("a limit is configured")
}

#[test]
fn gcra_allows_exactly_burst_then_the_rate() {
    let mut c = cfg();
    c.rate_limit = Some("10/s".parse().expect("rate"));
    c.rate_limit_burst = Some(5);
    let clock = FakeRelativeClock::default();
    let l = limiter(&c, &clock, 10);
    for i in 0..5 {
        assert!(l.check(None).is_ok(), "request {i} of the burst");
    }
    let rej = l.check(None).expect_err("burst spent");
    assert_eq!(rej.retry_after, Duration::from_millis(100));
    // One cell comes back every 100ms, and only one.
    clock.advance(Duration::from_millis(99));
    assert!(l.check(None).is_err());
    clock.advance(Duration::from_millis(1));
    assert!(l.check(None).is_ok());
    assert!(l.check(None).is_err());
    // Over a second at the rate: exactly 10 more.
    let mut allowed = 0;
    for _ in 0..100 {
        clock.advance(Duration::from_millis(10));
        allowed += usize::from(l.check(None).is_ok());
    }
    assert_eq!(allowed, 10);
}

#[test]
fn default_burst_is_the_per_second_rate_at_least_one() {
    let clock = FakeRelativeClock::default();
    let mut c = cfg();
    c.rate_limit = Some("20/s".parse().expect("rate"));
    let l = limiter(&c, &clock, 10);
    assert_eq!((0..50).filter(|_| l.check(None).is_ok()).count(), 20);
    c.rate_limit = Some("30/m".parse().expect("rate"));
    let l = limiter(&c, &clock, 10);
    assert_eq!((0..50).filter(|_| l.check(None).is_ok()).count(), 1);
}

#[test]
fn rejection_carries_the_ietf_headers() {
    let mut c = cfg();
    c.rate_limit = Some("10/m".parse().expect("rate"));
    c.rate_limit_burst = Some(1);
    let clock = FakeRelativeClock::default();
    let l = limiter(&c, &clock, 10);
    assert!(l.check(None).is_ok());
    let err = l.check(None).expect_err("limited").into_error();
    let resp = rescue(&err);
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["tracseq-proxy-error"], "rate-limited");
    assert_eq!(resp.headers()["retry-after"], "6");
    assert_eq!(resp.headers()["ratelimit-policy"], "\"default\";q=10;w=60");
    assert_eq!(resp.headers()["ratelimit"], "\"default\";r=0;t=6");
}

#[test]
fn per_client_keys_are_isolated() {
    let mut c = cfg();
    c.rate_limit_per_client = Some("2/s".parse().expect("rate"));
    c.rate_limit_key = RateLimitKey::Header(http::HeaderName::from_static("x-client"));
    let clock = FakeRelativeClock::default();
    let l = limiter(&c, &clock, 100);
    let (a, b) = (ClientKey::Header(1), ClientKey::Header(2));
    assert!(l.check(Some(&a)).is_ok());
    assert!(l.check(Some(&a)).is_ok());
    let rej = l.check(Some(&a)).expect_err("a is over its limit");
    assert_eq!(rej.policy.name, "client");
    assert!(l.check(Some(&b)).is_ok(), "b has its own bucket");
    assert!(l.check(Some(&b)).is_ok());
    assert!(l.check(Some(&b)).is_err());
    assert_eq!(l.keys(), 2);
}

#[test]
fn eviction_and_the_cap_bound_the_key_table() {
    let mut c = cfg();
    c.rate_limit_per_client = Some("1/s".parse().expect("rate"));
    let clock = FakeRelativeClock::default();
    let l = limiter(&c, &clock, 100);
    for i in 0..1000u64 {
        let _ = l.check(Some(&ClientKey::Header(i)));
    }
    assert!(l.keys() <= 100, "{} keys", l.keys());
    // Keys beyond the cap share one overflow bucket: one request, then throttled together.
    assert!(l.check(Some(&ClientKey::Header(5000))).is_err());
    // Once idle (bucket full again) every key is forgotten.
    clock.advance(Duration::from_secs(2));
    l.housekeep();
    assert_eq!(l.keys(), 0);
    assert!(l.check(Some(&ClientKey::Header(5000))).is_ok());
    assert_eq!(l.keys(), 1);
}

#[test]
fn shadow_mode_is_reported_by_the_core_config() {
    let mut c = cfg();
    c.rate_limit = Some("1/s".parse().expect("rate"));
    c.rate_limit_mode = RateLimitMode::Shadow;
    let l = limiter(&c, &FakeRelativeClock::default(), 10);
    assert_eq!(l.mode, RateLimitMode::Shadow);
}

fn breaker(clock: &ManualClock) -> CircuitBreaker {
    CircuitBreaker::new(
        3,
        (Duration::from_millis(100), Duration::from_secs(1)),
        Arc::new(clock.clone()),
    )
    .with_jitter(|| 0.0)
}

fn fail(b: &CircuitBreaker, n: usize) {
    for _ in 0..n {
        let p = b.acquire().expect("permitted");
        b.record(p, Outcome::Failure);
    }
}

#[test]
fn breaker_closed_open_half_open_closed() {
    let clock = ManualClock::default();
    let b = breaker(&clock);
    fail(&b, 2);
    // A success resets the consecutive count.
    b.record(b.acquire().expect("closed"), Outcome::Success);
    fail(&b, 2);
    assert_eq!(b.state(), State::Closed);
    fail(&b, 1);
    assert!(matches!(b.state(), State::Open { .. }));
    assert_eq!(b.acquire(), Err(Duration::from_millis(100)));
    clock.advance(Duration::from_millis(99));
    assert_eq!(b.acquire(), Err(Duration::from_millis(1)));
    clock.advance(Duration::from_millis(1));
    assert_eq!(b.acquire(), Ok(Permit::Probe));
    assert_eq!(b.state(), State::HalfOpen { probing: true });
    assert!(b.acquire().is_err(), "one probe at a time");
    b.record(Permit::Probe, Outcome::Success);
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.acquire(), Ok(Permit::Normal));
}

#[test]
fn breaker_reopens_with_longer_backoff_capped_at_max() {
    let clock = ManualClock::default();
    let b = breaker(&clock);
    fail(&b, 3);
    let mut expected = Duration::from_millis(100);
    for _ in 0..6 {
        assert_eq!(b.last_backoff(), expected);
        clock.advance(expected);
        assert_eq!(b.acquire(), Ok(Permit::Probe));
        b.record(Permit::Probe, Outcome::Failure);
        expected = (expected * 2).min(Duration::from_secs(1));
    }
    assert_eq!(b.last_backoff(), Duration::from_secs(1));
    // An abandoned probe hands its slot to the next request.
    clock.advance(Duration::from_secs(1));
    let p = b.acquire().expect("probe");
    b.release(p);
    assert_eq!(b.acquire(), Ok(Permit::Probe));
    // Closing resets the backoff.
    b.record(Permit::Probe, Outcome::Success);
    fail(&b, 3);
    assert_eq!(b.last_backoff(), Duration::from_millis(100));
}

#[test]
fn breaker_jitter_stays_within_a_quarter() {
    let clock = ManualClock::default();
    let b = CircuitBreaker::new(
        1,
        (Duration::from_secs(1), Duration::from_secs(60)),
        Arc::new(clock.clone()),
    )
    .with_jitter(|| 0.999);
    fail(&b, 1);
    let d = b.last_backoff();
    assert!(
        d > Duration::from_millis(1240) && d <= Duration::from_millis(1250),
        "{d:?}"
    );
}

#[test]
fn retry_budget_has_a_floor_and_a_ratio() {
    let clock = ManualClock::default();
    let budget = Budget::new(Arc::new(clock.clone()));
    // No traffic: the floor (10/s over the 10 s window) still allows 100 retries.
    assert_eq!((0..150).filter(|_| budget.try_withdraw()).count(), 100);
    // 1000 requests in the window allow 20% of them: 200 retries in all.
    clock.advance(Duration::from_secs(1));
    for _ in 0..1000 {
        budget.deposit();
    }
    assert_eq!((0..300).filter(|_| budget.try_withdraw()).count(), 100);
    // Once the window has passed, the old requests and retries no longer count.
    clock.advance(Duration::from_secs(11));
    assert_eq!((0..300).filter(|_| budget.try_withdraw()).count(), 100);
}

#[test]
fn destinations_sharing_a_metric_label_have_circuits_of_their_own() {
    use tracseq_proxy::layers::circuit_breaker::Breakers;
    use tracseq_proxy::layers::PolicyMetrics;
    use tracseq_proxy::proxy::Direction;
    let clock = ManualClock::default();
    let metrics = PolicyMetrics::register(&mut prometheus_client::registry::Registry::default());
    let breakers = Breakers::new(
        3,
        (Duration::from_millis(100), Duration::from_secs(1)),
        Direction::Outbound,
        metrics,
        Arc::new(clock),
    );
    // Two unnamed destinations beyond the label cap: both are exported as `_other`.
    let a = breakers.get("billing:8443", "_other");
    let b = breakers.get("reports:8443", "_other");
    fail(&a, 3);
    assert!(a.acquire().is_err(), "billing's circuit is open");
    assert!(
        b.acquire().is_ok(),
        "reports is not punished for billing's failures"
    );
    assert!(Arc::ptr_eq(&a, &breakers.get("billing:8443", "_other")));
}
