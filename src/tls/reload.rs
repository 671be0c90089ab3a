//! Certificate rotation without restart. The parent directories of the cert, key and CA are
//! watched (not the files: Kubernetes updates a secret by swapping a `..data` symlink, and a
//! rename-into-place replaces the inode a file watch would follow). After a short quiet
//! period the files are read again; if they load and match, the server and client configs are
//! swapped (new handshakes use them; connections to peers opened before are not reused, see
//! `ClientTls::generation`; connections peers opened to us keep theirs); if not, the old identity
//! stays, an error is logged and counted. Unchanged contents are skipped silently.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeSet;
use std::hash::{Hash as _, Hasher as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::identity::{self, Loaded, Paths};
use super::{ClientTls, ServerTls, TlsMetrics};

/// Quiet period after a change: a rotation writes cert and key (and maybe CA) one after the
/// other; reading in between would see a mismatched pair.
const SETTLE: Duration = Duration::from_millis(150);

pub struct Reloader {
    paths: Paths,
    server: Option<Arc<ServerTls>>,
    client: Option<Arc<ClientTls>>,
    metrics: TlsMetrics,
    last: Mutex<u64>,
}

impl Reloader {
    /// `loaded_fingerprint` is `fingerprint(&paths)` taken BEFORE the files were loaded: if
    /// they changed in between, the next event sees a difference and reloads (taken after,
    /// it would describe files never loaded and the change would be skipped).
    pub fn new(
        paths: Paths,
        server: Option<Arc<ServerTls>>,
        client: Option<Arc<ClientTls>>,
        metrics: TlsMetrics,
        loaded_fingerprint: u64,
    ) -> Self {
        Self {
            last: Mutex::new(loaded_fingerprint),
            paths,
            server,
            client,
            metrics,
        }
    }

    /// Export the expiry of what was loaded at start-up.
    pub fn loaded(&self, loaded: &Loaded) {
        self.metrics.set_expiry("identity", loaded.cert_not_after);
        if let Some(ca) = loaded.ca_not_after {
            self.metrics.set_expiry("ca", ca);
        }
    }

    /// Read the files again and swap them in if they are good. Returns whether anything was
    /// swapped; `Err` (old identity kept) is logged and counted.
    pub fn reload(&self) -> Result<bool, String> {
        let fp = fingerprint(&self.paths);
        if self.last.lock().map(|l| *l == fp).unwrap_or(false) {
            return Ok(false);
        }
        let result = identity::load(&self.paths)
            .map_err(|e| e.to_string())
            .and_then(|loaded| {
                if let Some(s) = &self.server {
                    s.update(&loaded)?;
                }
                if let Some(c) = &self.client {
                    c.update(&loaded)?;
                }
                Ok(loaded)
            });
        match result {
            Ok(loaded) => {
                if let Ok(mut l) = self.last.lock() {
                    *l = fp;
                }
                self.loaded(&loaded);
                self.metrics.reload(true);
                tracing::info!(identity = ?loaded.identity, "TLS certificate reloaded");
                Ok(true)
            }
            Err(e) => {
                // Remember the bad contents so the same broken files are counted once.
                if let Ok(mut l) = self.last.lock() {
                    *l = fp;
                }
                self.metrics.reload(false);
                tracing::error!(error = %e, "TLS reload failed; keeping the current certificate");
                Err(e)
            }
        }
    }

    /// Watch the files' directories and reload on change, until the task is aborted.
    pub fn watch(self: Arc<Self>) -> notify::Result<JoinHandle<()>> {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            // Our own reads show up as access events; only changes matter.
            if let Ok(ev) = ev {
                if !matches!(ev.kind, EventKind::Access(_)) {
                    let _ = tx.send(());
                }
            }
        })?;
        let dirs: BTreeSet<PathBuf> = [
            Some(&self.paths.cert),
            Some(&self.paths.key),
            self.paths.ca.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|p| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect();
        for d in &dirs {
            watcher.watch(d, RecursiveMode::NonRecursive)?;
        }
        Ok(tokio::spawn(async move {
            let _watcher = watcher;
            while rx.recv().await.is_some() {
                // Let the writer finish: reload once the files have been quiet for SETTLE
                // (trailing edge), so a cert and a key written apart are read together.
                loop {
                    match tokio::time::timeout(SETTLE, rx.recv()).await {
                        Ok(Some(_)) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                let this = self.clone();
                let _ = tokio::task::spawn_blocking(move || this.reload()).await;
            }
        }))
    }
}

/// A hash of the three files' contents (missing files hash as empty).
pub fn fingerprint(paths: &Paths) -> u64 {
    let mut h = DefaultHasher::new();
    for p in [Some(&paths.cert), Some(&paths.key), paths.ca.as_ref()]
        .into_iter()
        .flatten()
    {
        std::fs::read(p).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}
