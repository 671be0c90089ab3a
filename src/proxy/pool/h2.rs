//! HTTP/2 to plaintext destinations (h2c, prior knowledge): one shared connection per
//! address, each request on a stream of it.
//!
//! hyper-util's pooled client did this before, but it takes the connection's address from the
//! request's URI, and that URI also becomes the request's `:authority`. A proxy must forward
//! the caller's authority (RFC 9113 §8.3.1) while connecting to the address it routed to, so
//! here the address is a separate argument: the app behind a peer sidecar sees the service
//! name it was called by, not the sidecar's `host:port`.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{Failure, SendError, IDLE_TIMEOUT};
use crate::proxy::body::Body;
use crate::proxy::connect::Connector;

/// HTTP/2 PING interval on a connection with streams open: finds a dead peer under a
/// long-running stream (gRPC streaming) without waiting for TCP.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// A connection open or being opened to one address. While it is being opened, every request
/// for that address waits for the same attempt (and shares its failure): a burst of calls
/// opens one connection, as hyper-util's client does for HTTP/2.
enum Slot {
    Open {
        sender: http2::SendRequest<Body>,
        last_used: Instant,
    },
    Connecting(Connecting),
}

type Connecting = Shared<BoxFuture<'static, Result<http2::SendRequest<Body>, ConnectFailed>>>;

/// A failed connection attempt, shared by every request that waited for it.
#[derive(Clone, Debug)]
struct ConnectFailed(Arc<SendError>);

impl ConnectFailed {
    /// The error itself, without `SendError`'s wording (the waiter wraps it again).
    fn cause(&self) -> &(dyn std::error::Error + 'static) {
        match &*self.0 {
            SendError::Connect(e) => e.as_ref(),
            other => other,
        }
    }
}

impl std::fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self.cause(), f)
    }
}

impl std::error::Error for ConnectFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.cause())
    }
}

struct Inner {
    connector: Connector,
    conns: Mutex<foldhash::HashMap<Authority, Slot>>,
    sweeper_started: AtomicBool,
}

/// Shared HTTP/2 connections opened by one connector, keyed by the address connected to.
#[derive(Clone)]
pub struct H2Pool {
    shared: Arc<Inner>,
}

impl H2Pool {
    pub fn new(connector: Connector) -> Self {
        Self {
            shared: Arc::new(Inner {
                connector,
                conns: Mutex::new(foldhash::HashMap::default()),
                sweeper_started: AtomicBool::new(false),
            }),
        }
    }

    /// Send `req` (absolute URI: its authority is the request's, sent as `:authority`) over a
    /// connection to `address`, and return the response head.
    pub async fn send(
        &self,
        address: &Authority,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, Failure> {
        // After a pooled connection failed a request it never sent, the retry connects anew.
        let mut fresh = false;
        loop {
            let (mut sender, reused) = match self.checkout(address, fresh) {
                Ok(sender) => (sender, true),
                Err(connecting) => match connecting.await {
                    Ok(sender) => (sender, false),
                    Err(ConnectFailed(error)) => {
                        let error = Arc::try_unwrap(error).unwrap_or_else(|shared| {
                            SendError::Connect(ConnectFailed(shared).into())
                        });
                        return Err(Failure {
                            error,
                            unsent: Some(req),
                        });
                    }
                },
            };
            // Waits while the peer's stream limit is reached; fails if the connection closed.
            if let Err(e) = poll_fn(|cx| sender.poll_ready(cx)).await {
                self.forget_closed(address);
                if reused {
                    fresh = true;
                    continue;
                }
                return Err(Failure {
                    error: SendError::Http(e),
                    unsent: Some(req),
                });
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    // Never sent (the connection went away, e.g. a GOAWAY, as the request
                    // was queued): safe on a new connection.
                    Some(back) if reused => {
                        self.forget_closed(address);
                        fresh = true;
                        req = back;
                    }
                    back => {
                        return Err(Failure {
                            error: SendError::Http(e.into_error()),
                            unsent: back,
                        })
                    }
                },
            }
        }
    }

    /// The open connection to `address`, or the attempt to open one to wait for (started
    /// here if there is none, or if `fresh`).
    fn checkout(
        &self,
        address: &Authority,
        fresh: bool,
    ) -> Result<http2::SendRequest<Body>, Connecting> {
        let Ok(mut map) = self.shared.conns.lock() else {
            return Err(self.connecting(address));
        };
        match map.get_mut(address) {
            Some(Slot::Open { sender, last_used }) if !fresh && !sender.is_closed() => {
                *last_used = Instant::now();
                return Ok(sender.clone());
            }
            Some(Slot::Connecting(c)) if !fresh => return Err(c.clone()),
            _ => {}
        }
        let c = self.connecting(address);
        map.insert(address.clone(), Slot::Connecting(c.clone()));
        Err(c)
    }

    /// Drop the connection to `address` if it has closed (a newer one stays).
    fn forget_closed(&self, address: &Authority) {
        if let Ok(mut map) = self.shared.conns.lock() {
            if matches!(map.get(address), Some(Slot::Open { sender, .. }) if sender.is_closed()) {
                map.remove(address);
            }
        }
    }

    /// An attempt to open a connection to `address`, which files its own result: the open
    /// connection in place of the attempt, or no entry after a failure (the next request
    /// tries again).
    fn connecting(&self, address: &Authority) -> Connecting {
        let pool = Arc::downgrade(&self.shared);
        let connector = self.shared.connector.clone();
        let address = address.clone();
        async move {
            let result = open(connector, &address).await;
            if let Some(pool) = pool.upgrade() {
                if let Ok(mut map) = pool.conns.lock() {
                    match &result {
                        Ok(sender) => {
                            map.insert(
                                address,
                                Slot::Open {
                                    sender: sender.clone(),
                                    last_used: Instant::now(),
                                },
                            );
                        }
                        Err(_) => {
                            if matches!(map.get(&address), Some(Slot::Connecting(_))) {
                                map.remove(&address);
                            }
                        }
                    }
                }
                H2Pool { shared: pool }.start_sweeper();
            }
            result.map_err(|e| ConnectFailed(Arc::new(e)))
        }
        .boxed()
        .shared()
    }

    /// Let go of connections unused for [`IDLE_TIMEOUT`] (streams still open on them finish
    /// first) or closed by the peer, every half timeout, for as long as the pool exists.
    fn start_sweeper(&self) {
        if self.shared.sweeper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(IDLE_TIMEOUT / 2);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                shared.sweep();
            }
        });
    }
}

impl Inner {
    fn sweep(&self) {
        if let Ok(mut map) = self.conns.lock() {
            map.retain(|_, slot| match slot {
                Slot::Open { sender, last_used } => {
                    !sender.is_closed() && last_used.elapsed() < IDLE_TIMEOUT
                }
                Slot::Connecting(_) => true,
            });
        }
    }
}

/// Open an h2c connection to `address`; its I/O runs on a task of its own (its streams belong
/// to many requests) until the peer closes it, or the pool and every request let go of it.
async fn open(
    mut connector: Connector,
    address: &Authority,
) -> Result<http2::SendRequest<Body>, SendError> {
    let uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(address.clone())
        .path_and_query("/")
        .build()
        .map_err(|e| SendError::Connect(e.into()))?;
    let io = tower::Service::call(&mut connector, uri)
        .await
        .map_err(SendError::Connect)?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_while_idle(false)
        .adaptive_window(true)
        .handshake(io)
        .await
        .map_err(|e| SendError::Connect(e.into()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
        }
    });
    Ok(sender)
}
