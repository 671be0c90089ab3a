//! Wires the process together: metrics registry, listeners, stacks, admin, readiness and
//! drain. `start` binds everything (port 0 works: tests read the bound addresses back) and
//! returns a handle; nothing is served until every listener is bound, and any failure before
//! that returns an error naming the flag, so the process never starts half-way.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, Admin, Readiness};
use crate::config::{Config, ConfigError};
use crate::layers::metrics::HttpMetrics;
use crate::layers::PolicyMetrics;
use crate::proxy::server::{ConnMetrics, DrainController, Listener};
use crate::proxy::{inbound, outbound, Direction};
use crate::tls::identity::{self, Paths};
use crate::tls::reload::Reloader;
use crate::tls::{ClientTls, ServerTls};

/// A running proxy.
pub struct Running {
    pub inbound: Option<SocketAddr>,
    pub outbound: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub readiness: Arc<Readiness>,
    shutdown_tx: watch::Sender<bool>,
    shutdown_rx: watch::Receiver<bool>,
    admin_stop: watch::Sender<bool>,
    drain: DrainController,
    drain_timeout: std::time::Duration,
    tracing: crate::telemetry::Tracing,
    tasks: Vec<JoinHandle<()>>,
}

async fn bind(addr: SocketAddr, flag: &str) -> Result<TcpListener, ConfigError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ConfigError(format!("{flag}: cannot listen on {addr}: {e}")))
}

/// Bind the listeners and start serving.
pub async fn start(cfg: Config) -> Result<Running, ConfigError> {
    crate::tls::install_crypto_provider();
    let cfg = Arc::new(cfg);
    let mut registry = Registry::default();
    let http_metrics = HttpMetrics::register(&mut registry);
    let conn_metrics = ConnMetrics::register(&mut registry);
    let policy_metrics = PolicyMetrics::register(&mut registry);
    let tracing = crate::telemetry::Tracing::start(&cfg, &mut registry)?;
    admin::register_build_and_process(&mut registry);
    let tls_metrics = crate::tls::TlsMetrics::register(&mut registry);
    let readiness = Readiness::new(&[admin::NOT_BOUND]);
    // The identity is loaded before anything binds: a bad cert or key stops start-up.
    let tls = load_tls(&cfg, &tls_metrics, &readiness)?;
    let (server_tls, client_tls) = match &tls {
        Some(t) => (t.server.clone(), t.client.clone()),
        None => (None, None),
    };

    // Bind everything first: a port in use fails start-up before anything serves.
    let inbound_l = match cfg.listen {
        Some(a) if cfg.upstream.is_some() => Some(bind(a, "--listen").await?),
        _ => None,
    };
    let outbound_l = match cfg.outbound_listen {
        Some(a) => Some(bind(a, "--outbound-listen").await?),
        None => None,
    };
    let admin_l = bind(cfg.admin, "--admin").await?;
    let local = |l: &TcpListener| {
        l.local_addr()
            .map_err(|e| ConfigError(format!("listener address: {e}")))
    };
    let inbound_addr = inbound_l.as_ref().map(local).transpose()?;
    let outbound_addr = outbound_l.as_ref().map(local).transpose()?;
    let admin_addr = local(&admin_l)?;

    let drain = DrainController::new();
    let mut tasks = Vec::new();
    let listener = |direction| Listener {
        direction,
        header_read_timeout: cfg.header_read_timeout,
        idle_timeout: cfg.idle_timeout,
        metrics: http_metrics.clone(),
        conns: conn_metrics.clone(),
        tls: match direction {
            Direction::Inbound => server_tls.clone(),
            Direction::Outbound => None,
        },
    };
    if let Some(t) = tls {
        let watch = t.reloader.watch().map_err(|e| {
            ConfigError(format!(
                "--tls-cert: cannot watch the certificate directory: {e}"
            ))
        })?;
        tasks.push(watch);
    }
    if let Some(l) = inbound_l {
        let stack = inbound::stack(
            &cfg,
            http_metrics.clone(),
            tracing.tracer.clone(),
            policy_metrics.clone(),
            &mut registry,
        );
        tasks.push(tokio::spawn(listener(Direction::Inbound).serve(
            l,
            stack,
            drain.watcher(),
        )));
    }
    if let Some(l) = outbound_l {
        let stack = outbound::stack(
            &cfg,
            http_metrics.clone(),
            tracing.tracer.clone(),
            policy_metrics.clone(),
            &mut registry,
            client_tls.clone(),
        );
        tasks.push(tokio::spawn(listener(Direction::Outbound).serve(
            l,
            stack,
            drain.watcher(),
        )));
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (admin_stop, admin_stop_rx) = watch::channel(false);
    let admin = Admin {
        registry: Arc::new(registry),
        readiness: readiness.clone(),
        shutdown: shutdown_tx.clone(),
    };
    tasks.push(tokio::spawn(admin.serve(admin_l, admin_stop_rx)));
    readiness.clear(admin::NOT_BOUND);
    tracing::info!(
        inbound = ?inbound_addr,
        outbound = ?outbound_addr,
        admin = %admin_addr,
        upstream = ?cfg.upstream.as_ref().map(|u| u.to_string()),
        "tracseq-proxy ready"
    );
    Ok(Running {
        inbound: inbound_addr,
        outbound: outbound_addr,
        admin: admin_addr,
        readiness,
        shutdown_tx,
        shutdown_rx,
        admin_stop,
        drain,
        drain_timeout: cfg.drain_timeout,
        tracing,
        tasks,
    })
}

struct Tls {
    server: Option<Arc<ServerTls>>,
    client: Option<Arc<ClientTls>>,
    reloader: Arc<Reloader>,
}

/// Load this sidecar's identity (exit 2 naming the file on failure) and build the TLS sides:
/// the inbound listener's server config and the client config for peers (with a trust
/// bundle only: without one, peers cannot be verified and calls stay plaintext).
fn load_tls(
    cfg: &Config,
    metrics: &crate::tls::TlsMetrics,
    readiness: &Readiness,
) -> Result<Option<Tls>, ConfigError> {
    let (Some(cert), Some(key)) = (&cfg.tls.cert, &cfg.tls.key) else {
        return Ok(None);
    };
    readiness.set(admin::NO_IDENTITY);
    let paths = Paths {
        cert: cert.clone(),
        key: key.clone(),
        ca: cfg.tls.ca.clone(),
    };
    let fingerprint = crate::tls::reload::fingerprint(&paths);
    let loaded = identity::load(&paths).map_err(|e| ConfigError(e.to_string()))?;
    let server = match cfg.listen {
        Some(_) if cfg.upstream.is_some() => Some(Arc::new(
            ServerTls::new(
                &loaded,
                cfg.tls.client_auth,
                cfg.tls.min_version,
                metrics.clone(),
            )
            .map_err(|e| ConfigError(format!("--tls-ca: {e}")))?,
        )),
        _ => None,
    };
    let client = ClientTls::new(&loaded, cfg.tls.min_version, metrics.clone()).map(Arc::new);
    if client.is_none() {
        tracing::warn!("no --tls-ca: calls to peers are not encrypted (peers cannot be verified)");
    }
    let reloader = Arc::new(Reloader::new(
        paths,
        server.clone(),
        client.clone(),
        metrics.clone(),
        fingerprint,
    ));
    reloader.loaded(&loaded);
    tracing::info!(identity = ?loaded.identity, "TLS identity loaded");
    readiness.clear(admin::NO_IDENTITY);
    Ok(Some(Tls {
        server,
        client,
        reloader,
    }))
}

impl Running {
    /// Ask for a graceful shutdown (what SIGTERM and `POST /shutdown` do).
    pub fn shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
    }

    /// A sender that triggers shutdown, for signal handlers.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown_tx.clone()
    }

    /// Wait for a shutdown request, then drain: `/ready` turns 503, listeners close, in-flight
    /// requests get up to `--drain-timeout`. Returns whether the drain finished in time.
    pub async fn wait(mut self) -> anyhow::Result<bool> {
        let _ = self.shutdown_rx.wait_for(|s| *s).await;
        self.readiness.set(admin::DRAINING);
        tracing::info!(timeout = ?self.drain_timeout, "draining");
        let drain_start = std::time::Instant::now();
        let clean = self.drain.drain(self.drain_timeout).await;
        if !clean {
            tracing::warn!("drain timeout reached with requests still in flight");
        }
        let _ = self.admin_stop.send(true);
        for t in self.tasks.drain(..) {
            t.abort();
        }
        // Export the drained requests' spans within what is left of --drain-timeout, so a dead
        // collector cannot hold the exit.
        let left = self.drain_timeout.saturating_sub(drain_start.elapsed());
        self.tracing
            .shutdown(left.max(std::time::Duration::from_millis(100)))
            .await;
        Ok(clean)
    }
}

/// Run until SIGTERM/SIGINT or `POST /shutdown`, then drain and return.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let running = start(cfg).await.map_err(anyhow::Error::from)?;
    let trigger = running.shutdown_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = trigger.send(true);
    });
    running.wait().await.context("drain")?;
    Ok(())
}

pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
