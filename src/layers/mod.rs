//! Policies of the tower stacks, one file each, plus the RED metrics layer. Each policy is a
//! plain core with a synchronous `&self` API and an injectable clock, wrapped by a thin tower
//! `Layer` + `Service`.

pub mod labels;
pub mod metrics;
pub mod trace;

use prometheus_client::registry::Registry;

use crate::config::Config;
use crate::proxy::Direction;

/// The policy layers of one direction, in the order of DESIGN.md: authz → rate limit →
/// load shed → circuit breaker. Built once per direction; every clone of the stack shares
/// their state.
#[derive(Clone)]
pub struct Policies {
    _direction: Direction,
}

impl Policies {
    pub fn new(_cfg: &Config, direction: Direction, _registry: &mut Registry) -> Self {
        Self {
            _direction: direction,
        }
    }
}

impl<S> tower::Layer<S> for Policies {
    type Service = S;
    fn layer(&self, inner: S) -> S {
        inner
    }
}
