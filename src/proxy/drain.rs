//! Graceful drain: a signal every connection watches, and a way to wait until the last one
//! has finished (every connection holds a clone of `_done`; `recv` returns `None` when all
//! are gone).
//!
//! Each connection's task polls its drain signal next to the connection itself, so on every
//! wake-up: twice per request. A `watch` receiver takes its waiter lock on each of those
//! polls; `Signaled` registers its waker once and afterwards reads one atomic.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::mpsc;

#[derive(Default)]
struct Shared {
    draining: AtomicBool,
    next_key: AtomicU64,
    waiters: Mutex<foldhash::HashMap<u64, Waker>>,
}

impl Shared {
    /// Set the flag, then wake every registered waiter (see `Signaled::poll` for the order).
    fn signal(&self) {
        self.draining.store(true, Ordering::Release);
        let waiters =
            std::mem::take(&mut *self.waiters.lock().unwrap_or_else(PoisonError::into_inner));
        for (_, w) in waiters {
            w.wake();
        }
    }
}

pub struct DrainController {
    shared: Arc<Shared>,
    done_tx: Option<mpsc::Sender<()>>,
    done_rx: mpsc::Receiver<()>,
}

#[derive(Clone)]
pub struct Drain {
    shared: Arc<Shared>,
    _done: mpsc::Sender<()>,
}

impl Drain {
    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// Resolves when draining starts.
    pub fn signaled(&self) -> Signaled<'_> {
        Signaled {
            shared: &self.shared,
            key: None,
            waker: None,
        }
    }
}

/// The future of [`Drain::signaled`].
pub struct Signaled<'a> {
    shared: &'a Shared,
    /// Where this future's waker is registered, once it is.
    key: Option<u64>,
    /// The waker registered, to skip the lock while the task's waker stays the same.
    waker: Option<Waker>,
}

impl Future for Signaled<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.shared.draining.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        let mut waiters = this
            .shared
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Checked again under the lock: `DrainController::drain` sets the flag before it
        // takes the lock to wake the waiters, so a registration either sees the flag or is
        // woken.
        if this.shared.draining.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        let key = *this
            .key
            .get_or_insert_with(|| this.shared.next_key.fetch_add(1, Ordering::Relaxed));
        waiters.insert(key, cx.waker().clone());
        this.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Signaled<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.shared
                .waiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
        }
    }
}

/// A controller dropped without `drain` (an embedder, an early return) still lets every
/// listener and connection wind down rather than serve on unwatched.
impl Drop for DrainController {
    fn drop(&mut self) {
        self.shared.signal();
    }
}

impl Default for DrainController {
    fn default() -> Self {
        Self::new()
    }
}

impl DrainController {
    pub fn new() -> Self {
        let (done_tx, done_rx) = mpsc::channel(1);
        Self {
            shared: Arc::default(),
            done_tx: Some(done_tx),
            done_rx,
        }
    }

    pub fn watcher(&self) -> Drain {
        Drain {
            shared: self.shared.clone(),
            _done: self
                .done_tx
                .clone()
                .expect("watchers are created before draining starts"),
        }
    }

    /// Start draining and wait (up to `timeout`) for every watcher to be dropped. Returns
    /// whether everything finished in time.
    pub async fn drain(mut self, timeout: Duration) -> bool {
        self.shared.signal();
        self.done_tx = None;
        tokio::time::timeout(timeout, self.done_rx.recv())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn signals_every_watcher_and_waits_for_them() {
        let ctl = DrainController::new();
        let a = ctl.watcher();
        let b = ctl.watcher();
        let waiting = tokio::spawn(async move {
            a.signaled().await;
            // A future made after the signal resolves at once.
            a.signaled().await;
        });
        // A watcher whose future was polled and dropped leaves no waker behind.
        {
            let mut f = std::pin::pin!(b.signaled());
            assert!(futures_util::poll!(f.as_mut()).is_pending());
        }
        tokio::task::yield_now().await;
        assert_eq!(ctl.shared.waiters.lock().expect("lock").len(), 1);
        let b_done = tokio::spawn(async move { b.signaled().await });
        let finished = ctl.drain(Duration::from_secs(5));
        assert!(finished.await, "every watcher was dropped");
        waiting.await.expect("first watcher");
        b_done.await.expect("second watcher");
    }

    #[tokio::test]
    async fn dropping_the_controller_signals_too() {
        let ctl = DrainController::new();
        let w = ctl.watcher();
        let waiting = tokio::spawn(async move { w.signaled().await });
        tokio::task::yield_now().await;
        drop(ctl);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("signalled on drop")
            .expect("watcher");
    }

    #[tokio::test]
    async fn drain_times_out_while_a_watcher_lives() {
        let ctl = DrainController::new();
        let held = ctl.watcher();
        assert!(!ctl.drain(Duration::from_millis(50)).await);
        drop(held);
    }
}
