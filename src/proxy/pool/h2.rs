//! HTTP/2 to plaintext destinations (h2c, prior knowledge): one shared connection per
//! address, each request on a stream of it.
//!
//! hyper-util's pooled client did this before, but it takes the connection's address from the
//! request's URI, and that URI also becomes the request's `:authority`. A proxy must forward
//! the caller's authority (RFC 9113 §8.3.1) while connecting to the address it routed to, so
//! here the address is a separate argument: the app behind a peer sidecar sees the service
//! name it was called by, not the sidecar's `host:port`.
//!
//! Each connection has an id. A request that a connection handed back unsent (a GOAWAY, or
//! the connection closed as the request was queued) retries with that id: only the
//! connection that failed it is replaced, so a GOAWAY with many requests queued opens one
//! new connection, not one per request.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
/// Connections one request may be tried on when each hands it back unsent (GOAWAY): enough
/// for a graceful restart of the app, bounded for an app that closes every connection.
const MAX_ATTEMPTS: u32 = 3;

/// A connection open or being opened to one address. While it is being opened, every request
/// for that address waits for the same attempt (and shares its failure): a burst of calls
/// opens one connection, as hyper-util's client does for HTTP/2.
enum Slot {
    Open {
        id: u64,
        sender: http2::SendRequest<Body>,
        last_used: Instant,
    },
    Connecting {
        id: u64,
        attempt: Connecting,
    },
}

type Opened = (u64, http2::SendRequest<Body>);
type Connecting = Shared<BoxFuture<'static, Result<Opened, ConnectFailed>>>;

/// A failed connection attempt, shared by every request that waited for it.
#[derive(Clone, Debug)]
struct ConnectFailed(Arc<SendError>);

impl ConnectFailed {
    /// The error for one waiter: the original for the last one, a reference to it otherwise.
    fn into_send_error(self) -> SendError {
        Arc::try_unwrap(self.0).unwrap_or_else(|shared| SendError::Connect(Self(shared).into()))
    }
}

impl std::fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the shared connection attempt failed")
    }
}

impl std::error::Error for ConnectFailed {
    /// The attempt's own error, so classification (`classify::pool_error`) sees through.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.0 {
            SendError::Connect(e) => Some(e.as_ref()),
            other => Some(other),
        }
    }
}

struct Inner {
    connector: Connector,
    conns: Mutex<foldhash::HashMap<Authority, Slot>>,
    next_id: AtomicU64,
    sweeper_started: AtomicBool,
}

/// Shared HTTP/2 connections opened by one connector, keyed by the address connected to.
#[derive(Clone)]
pub struct H2Pool {
    shared: Arc<Inner>,
}

enum Checkout {
    Open(Opened),
    Wait(Connecting),
}

impl H2Pool {
    pub fn new(connector: Connector) -> Self {
        Self {
            shared: Arc::new(Inner {
                connector,
                conns: Mutex::new(foldhash::HashMap::default()),
                next_id: AtomicU64::new(1),
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
        // The connection that last handed the request back unsent.
        let mut failed = None;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (id, mut sender) = match self.checkout(address, failed) {
                Checkout::Open(opened) => opened,
                Checkout::Wait(attempt) => match attempt.await {
                    Ok(opened) => opened,
                    Err(e) => {
                        return Err(Failure {
                            error: e.into_send_error(),
                            unsent: Some(req),
                        })
                    }
                },
            };
            // Fails only if the connection has closed (hyper queues requests past the
            // peer's stream limit inside the connection).
            if let Err(e) = poll_fn(|cx| sender.poll_ready(cx)).await {
                if attempts < MAX_ATTEMPTS {
                    failed = Some(id);
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
                    // Never sent (a GOAWAY, or the connection closed as the request was
                    // queued): safe on another connection.
                    Some(back) if attempts < MAX_ATTEMPTS => {
                        failed = Some(id);
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

    /// The open connection to `address`, or the attempt to open one to wait for: the one in
    /// progress, else a new one (when there is none, the connection closed, or it is the
    /// connection `failed` that handed a request back).
    fn checkout(&self, address: &Authority, failed: Option<u64>) -> Checkout {
        let Ok(mut map) = self.shared.conns.lock() else {
            return Checkout::Wait(self.attempt(address, 0));
        };
        match map.get_mut(address) {
            Some(Slot::Open {
                id,
                sender,
                last_used,
            }) if Some(*id) != failed && !sender.is_closed() => {
                *last_used = Instant::now();
                return Checkout::Open((*id, sender.clone()));
            }
            Some(Slot::Connecting { attempt, .. }) => return Checkout::Wait(attempt.clone()),
            _ => {}
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let attempt = self.attempt(address, id);
        map.insert(
            address.clone(),
            Slot::Connecting {
                id,
                attempt: attempt.clone(),
            },
        );
        Checkout::Wait(attempt)
    }

    /// Open connection `id` to `address` on a task of its own, so the attempt ends (within
    /// `--connect-timeout`) and files its result even if every request waiting for it gave
    /// up: the open connection in place of the attempt, or no entry after a failure (the
    /// next request tries again).
    fn attempt(&self, address: &Authority, id: u64) -> Connecting {
        let pool = Arc::downgrade(&self.shared);
        let connector = self.shared.connector.clone();
        let address = address.clone();
        let task = tokio::spawn(async move {
            let result = open(connector, &address).await;
            if let Some(pool) = pool.upgrade() {
                pool.file(&address, id, &result);
                H2Pool { shared: pool }.start_sweeper();
            }
            result
                .map(|sender| (id, sender))
                .map_err(|e| ConnectFailed(Arc::new(e)))
        });
        async move {
            task.await.unwrap_or_else(|e| {
                Err(ConnectFailed(Arc::new(SendError::Connect(
                    format!("connection attempt ended: {e}").into(),
                ))))
            })
        }
        .boxed()
        .shared()
    }

    /// Let go of connections unused for [`IDLE_TIMEOUT`] (streams still open on them finish
    /// first) or closed by the peer, every half timeout, for as long as the pool exists.
    fn start_sweeper(&self) {
        super::spawn_sweeper(&self.shared.sweeper_started, &self.shared, Inner::sweep);
    }
}

impl Inner {
    /// The result of attempt `id`, in place of it (and of nothing else).
    fn file(
        &self,
        address: &Authority,
        id: u64,
        result: &Result<http2::SendRequest<Body>, SendError>,
    ) {
        let Ok(mut map) = self.conns.lock() else {
            return;
        };
        if !matches!(map.get(address), Some(Slot::Connecting { id: mine, .. }) if *mine == id) {
            return;
        }
        match result {
            Ok(sender) => {
                map.insert(
                    address.clone(),
                    Slot::Open {
                        id,
                        sender: sender.clone(),
                        last_used: Instant::now(),
                    },
                );
            }
            Err(_) => {
                map.remove(address);
            }
        }
    }

    fn sweep(&self) {
        if let Ok(mut map) = self.conns.lock() {
            map.retain(|_, slot| match slot {
                Slot::Open {
                    sender, last_used, ..
                } => !sender.is_closed() && last_used.elapsed() < IDLE_TIMEOUT,
                // Ends on its own within --connect-timeout, and files its result.
                Slot::Connecting { .. } => true,
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
