//! `tracseq-proxy demo`: the embedded default, a small TracSeq mesh in one process. Three demo
//! services (samples, sequencing, storage; each with its own latency and error rate) get a
//! sidecar each, a `frontend` outbound-only sidecar is the traffic's way in, sidecars reach
//! each other through `--peer` entries (mTLS from a fresh CA once `tls::certs` is merged), and
//! a generator sends traffic through the callers' outbound listeners so every request crosses
//! two sidecars. It ends with a RED table computed from the sidecars' own `/metrics`, and
//! returns it as a [`Summary`] (tests assert that it agrees with what was sent).

mod app;
mod summary;
mod traffic;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

pub use app::{DemoApp, Profile};
pub use summary::{histogram_quantile, parse_line as parse_sample, Row, Sample, Summary};
pub use traffic::{Counts, Flow, Sent};

use crate::app::Running;
use crate::config::{cli::DemoArgs, parse_duration, Config, Peer};

/// The services, started callees first so each caller's `--peer` table can name the bound
/// inbound port of the services it calls.
const SERVICES: [(Profile, &[&str]); 3] = [
    (
        Profile {
            name: "storage",
            error_percent: 1,
            latency_us: (300, 2_000),
        },
        &[],
    ),
    (
        Profile {
            name: "sequencing",
            error_percent: 8,
            latency_us: (2_000, 15_000),
        },
        &["storage"],
    ),
    (
        Profile {
            name: "samples",
            error_percent: 3,
            latency_us: (500, 5_000),
        },
        &["sequencing", "storage"],
    ),
];

/// The outbound-only sidecar standing for the mesh's clients (a web UI, an API gateway).
const FRONTEND: &str = "frontend";
const FRONTEND_PEERS: &[&str] = &["samples", "sequencing"];

/// Who calls whom, and how much.
const FLOWS: [Flow; 5] = [
    Flow {
        caller: FRONTEND,
        callee: "samples",
        path: "/api/samples",
        weight: 4,
    },
    Flow {
        caller: FRONTEND,
        callee: "sequencing",
        path: "/api/runs",
        weight: 2,
    },
    Flow {
        caller: "samples",
        callee: "sequencing",
        path: "/api/runs",
        weight: 1,
    },
    Flow {
        caller: "samples",
        callee: "storage",
        path: "/api/locations",
        weight: 2,
    },
    Flow {
        caller: "sequencing",
        callee: "storage",
        path: "/api/locations",
        weight: 2,
    },
];

/// How long the summary waits for the sidecars' counts to settle after the last response.
const SETTLE: Duration = Duration::from_secs(3);
/// Trust domain of the demo's CA: identities are `spiffe://tracseq.local/<service>`.
const TRUST_DOMAIN: &str = "tracseq.local";
/// Drain bound of the demo's sidecars: the demo's connections are idle at the end.
const DRAIN: Duration = Duration::from_secs(2);

/// Run the demo mesh; prints progress (unless `--quiet`) and the summary, and returns it.
pub async fn run(args: DemoArgs) -> anyhow::Result<Summary> {
    let duration =
        parse_duration(&args.duration).map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
    let tls_dir = std::env::temp_dir().join(format!(
        "tracseq-proxy-demo-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    // SIGINT and SIGTERM are caught from here on (the first poll installs the handlers), so
    // no signal ends the process between writing the keys and removing them.
    let stop = crate::app::wait_for_signal();
    tokio::pin!(stop);
    std::future::poll_fn(|cx| {
        let _ = std::future::Future::poll(stop.as_mut(), cx);
        std::task::Poll::Ready(())
    })
    .await;
    let mut names: Vec<&str> = SERVICES.iter().map(|(p, _)| p.name).collect();
    names.push(FRONTEND);
    let result = match mesh_tls(&tls_dir, &names).context("creating the demo CA") {
        Ok(tls) => run_mesh(&args, duration, tls.as_ref(), stop.as_mut()).await,
        Err(e) => Err(e),
    };
    // Whatever happened (keys half written included), nothing is left behind.
    if tls_dir.exists() {
        let _ = std::fs::remove_dir_all(&tls_dir);
    }
    result
}

/// The demo's apps and sidecars, so that whatever ends the run (the end of the traffic, an
/// error, a signal) stops all that was started.
#[derive(Default)]
struct Mesh {
    apps: Vec<DemoApp>,
    sidecars: Vec<Running>,
}

/// Start the mesh, send the traffic and print the summary. A signal (`stop`) at any point
/// stops what was started and returns an error, so [`run`] still removes the demo's keys (a
/// signal's default action would end the process and leave them behind). A sidecar caught
/// half-started is dropped without a drain.
async fn run_mesh(
    args: &DemoArgs,
    duration: Duration,
    tls: Option<&MeshTls>,
    mut stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<Summary> {
    let mut mesh = Mesh::default();
    let result = tokio::select! {
        r = start_and_send(args, duration, tls, &mut mesh) => r,
        () = stop.as_mut() => Err(anyhow::anyhow!("demo: interrupted by a signal; the mesh is stopped")),
    };
    if result.is_ok() && args.keep_running {
        stop.await;
    }
    for s in &mesh.sidecars {
        s.shutdown();
    }
    for s in mesh.sidecars {
        let _ = tokio::time::timeout(DRAIN * 2, s.wait()).await;
    }
    drop(mesh.apps);
    result
}

async fn start_and_send(
    args: &DemoArgs,
    duration: Duration,
    tls: Option<&MeshTls>,
    mesh: &mut Mesh,
) -> anyhow::Result<Summary> {
    let Mesh { apps, sidecars } = mesh;
    let mut inbound: BTreeMap<&'static str, SocketAddr> = BTreeMap::new();
    let mut outbound = BTreeMap::new();
    let mut admins = BTreeMap::new();
    for (profile, callees) in SERVICES {
        let app = DemoApp::start(profile).await?;
        let mut cfg = Config::for_upstream(app.addr);
        configure(&mut cfg, profile.name, callees, &inbound, tls)?;
        let running = crate::app::start(cfg)
            .await
            .with_context(|| format!("starting the {} sidecar", profile.name))?;
        inbound.insert(
            profile.name,
            running.inbound.context("no inbound listener")?,
        );
        outbound.insert(
            profile.name,
            running.outbound.context("no outbound listener")?,
        );
        admins.insert(profile.name, running.admin);
        if !args.quiet {
            println!(
                "demo: {:<10} app {}  sidecar inbound {}  outbound {}  admin http://{}/metrics",
                profile.name,
                app.addr,
                inbound[profile.name],
                outbound[profile.name],
                running.admin
            );
        }
        apps.push(app);
        sidecars.push(running);
    }
    let mut cfg = Config::defaults();
    cfg.listen = None;
    configure(&mut cfg, FRONTEND, FRONTEND_PEERS, &inbound, tls)?;
    let frontend = crate::app::start(cfg)
        .await
        .context("starting the frontend sidecar")?;
    outbound.insert(FRONTEND, frontend.outbound.context("no outbound listener")?);
    admins.insert(FRONTEND, frontend.admin);
    sidecars.push(frontend);
    if !args.quiet {
        println!(
            "demo: {:<10} outbound-only sidecar {}  admin http://{}/metrics",
            FRONTEND, outbound[FRONTEND], admins[FRONTEND]
        );
        println!(
            "demo: sending {} req/s for {:?} ({})",
            args.rate,
            duration,
            if tls.is_some() {
                "mTLS between sidecars"
            } else {
                "plain HTTP between sidecars"
            }
        );
    }

    let quiet = args.quiet;
    let sent = traffic::generate(&FLOWS, &outbound, args.rate, duration, |elapsed, sent| {
        if !quiet {
            let t = sent.total();
            println!(
                "demo: {:>5.1}s  {} requests answered, {} with 5xx",
                elapsed.as_secs_f64(),
                t.requests,
                t.errors
            );
        }
    })
    .await?;
    let summary = summary::collect(&admins, sent, duration, tls.is_some(), SETTLE).await?;
    println!("{summary}");

    if args.keep_running {
        println!("demo: --keep-running: admin endpoints stay up for scraping; Ctrl-C to stop");
        for (name, admin) in &admins {
            println!("demo:   {name:<10} http://{admin}/metrics");
        }
    }
    Ok(summary)
}

/// A demo sidecar's settings: its name, its peers (by their bound inbound ports), mTLS.
fn configure(
    cfg: &mut Config,
    name: &str,
    callees: &[&str],
    inbound: &BTreeMap<&'static str, SocketAddr>,
    tls: Option<&MeshTls>,
) -> anyhow::Result<()> {
    cfg.service_name = Some(name.to_string());
    cfg.drain_timeout = DRAIN;
    // The demo apps fail at random (up to 8%); 10 consecutive failures (about 1e-11) keep the
    // breaker a real policy without it opening by chance and skewing the summary, whose
    // per-service rows must agree with the traffic sent.
    cfg.breaker_failures = 10;
    for callee in callees {
        let addr = inbound.get(callee).context("callee started first")?;
        // With mTLS the peer must present the callee's SPIFFE identity (the address is
        // loopback, so there is no DNS name to check instead).
        let identity = tls
            .map(|_| format!("#{}", MeshTls::identity(callee)))
            .unwrap_or_default();
        let peer: Peer = format!("{callee}=127.0.0.1:{}{identity}", addr.port())
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?;
        cfg.peers.push(peer);
    }
    if let Some(tls) = tls {
        tls.apply(cfg, name);
    }
    Ok(())
}

/// The demo's PKI on disk: `ca.pem`, `<service>.pem`, `<service>-key.pem` (the layout of
/// `tracseq-proxy certs init`), removed when the demo ends.
#[derive(Debug)]
struct MeshTls {
    dir: PathBuf,
}

impl MeshTls {
    /// The SPIFFE identity `DevCa::issue` puts in a service's certificate.
    fn identity(service: &str) -> String {
        format!("spiffe://{TRUST_DOMAIN}/{service}")
    }

    fn apply(&self, cfg: &mut Config, service: &str) {
        cfg.tls.cert = Some(self.dir.join(format!("{service}.pem")));
        cfg.tls.key = Some(self.dir.join(format!("{service}-key.pem")));
        cfg.tls.ca = Some(self.dir.join("ca.pem"));
        cfg.tls.client_auth = crate::config::ClientAuth::Required;
    }
}

/// A fresh CA (valid for a day: the demo is short-lived) and one certificate per service.
/// `None` means the mesh runs plain HTTP.
fn mesh_tls(dir: &Path, services: &[&str]) -> anyhow::Result<Option<MeshTls>> {
    use crate::tls::certs::{write_service, DevCa};
    const DAY: Duration = Duration::from_secs(86_400);
    let ca = DevCa::new(TRUST_DOMAIN, DAY)?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    for service in services {
        let cert = ca.issue(service, DAY)?;
        write_service(dir, &ca, service, &cert)?;
    }
    Ok(Some(MeshTls {
        dir: dir.to_path_buf(),
    }))
}
