//! `interceptor daemon`: the node daemon. One per node, long-running (tokio):
//!
//! * at start, loads eBPF mode or adopts the pinned installation (`ebpf::load` is
//!   idempotent) — or, in iptables mode (forced, or `auto` on a kernel the probe refuses),
//!   programs osm-edge's chains inside each pod's namespace;
//! * serves the local API ([`crate::api`]) on a unix socket, which the CNI plugin calls on
//!   ADD/DEL/CHECK;
//! * reconciles at start and periodically ([`reconcile`]), watches each eBPF pod's routes
//!   ([`netwatch`]) and the MeshConfig and pod manifest files ([`watch`]);
//! * serves `/healthz`, `/readyz` and `/metrics` on `--metrics-addr` ([`http`]).
//!
//! Stopping it (SIGTERM, SIGINT) never detaches anything: interception stays in force and a
//! restarted daemon adopts it without re-enrolling. Only `interceptor ebpf unload` or
//! `interceptor daemon --uninstall` removes it.
pub mod core;
pub mod counters;
pub mod http;
pub mod mesh;
pub mod netwatch;
pub mod reconcile;
pub mod state;
pub mod watch;

use std::{
    net::SocketAddr,
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use self::core::{Config, Daemon};
use crate::{
    api::Mode,
    ebpf::{self, LoadOptions, PinDir, probe},
    policy::{
        ChainNames,
        sources::{AnnotationLimits, FlagValues},
    },
};

pub const DEFAULT_STATE_DIR: &str = "/run/interceptor";

/// How the daemon intercepts pods (`--mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeChoice {
    /// eBPF when this kernel has every feature it needs (`ebpf probe`), else iptables.
    Auto,
    /// eBPF programs (refuses to start on a kernel without what they need).
    Ebpf,
    /// osm-edge's nat chains inside each pod's network namespace.
    Iptables,
}

/// What the daemon runs with (`interceptor daemon`'s flags).
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub mode: ModeChoice,
    /// Directory (on a bpf filesystem) holding the pinned eBPF state.
    pub pin_dir: PathBuf,
    /// Cgroup (v2) to attach the eBPF programs at (default: the cgroup v2 root, every pod).
    pub cgroup: Option<PathBuf>,
    /// The API's unix socket (created with mode 0600).
    pub socket: PathBuf,
    /// Where the daemon keeps what must survive a restart (pods.json, the last valid
    /// MeshConfig) and its lock.
    pub state_dir: PathBuf,
    /// The MeshConfig (YAML or JSON), watched: valid edits apply live to every pod.
    pub mesh_config: Option<PathBuf>,
    /// Pod manifests `<DIR>/<namespace>/<name>.yaml|yml|json`, for pods whose runtime passes
    /// no annotations (watched).
    pub pod_manifest_dir: Option<PathBuf>,
    /// Serve GET /healthz, /readyz and /metrics (Prometheus) on this TCP address.
    pub metrics_addr: Option<SocketAddr>,
    pub reconcile_interval: Duration,
    /// eBPF mode: the limits and acceleration of `ebpf load`.
    pub max_tracked_connections: Option<u32>,
    pub max_tracked_connections_per_pod: Option<u32>,
    pub accelerate: bool,
    /// The most items one annotation of a pod may list.
    pub annotation_limits: AnnotationLimits,
    pub names: ChainNames,
    /// Remove everything the daemon installed (every pod's interception, the pinned eBPF
    /// state, the state file) and exit.
    pub uninstall: bool,
}

/// The mode, and why.
fn resolve_mode(opts: &DaemonOptions) -> Result<(Mode, String)> {
    match opts.mode {
        ModeChoice::Iptables => Ok((Mode::Iptables, "forced (--mode iptables)".into())),
        ModeChoice::Ebpf => {
            probe::check()?;
            Ok((Mode::Ebpf, "forced (--mode ebpf)".into()))
        }
        ModeChoice::Auto => {
            let missing = probe::missing_features();
            if !missing.is_empty() {
                let list: Vec<String> = missing.iter().map(|m| format!("{} (Linux {}+)", m.feature, m.since)).collect();
                return Ok((Mode::Iptables, format!("auto: this kernel lacks {}", list.join(", "))));
            }
            if opts.cgroup.is_none()
                && let Err(e) = ebpf::loader::cgroup2_root()
            {
                return Ok((Mode::Iptables, format!("auto: {e}")));
            }
            Ok((Mode::Ebpf, "auto: this kernel has every feature eBPF mode needs".into()))
        }
    }
}

/// One daemon per state directory.
fn lock_state_dir(dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    let path = dir.join("daemon.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: a valid descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("another interceptor daemon runs with the state directory {}", dir.display());
    }
    Ok(f)
}

/// The API socket: refuses to take over a socket another process serves.
fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another process serves the API socket {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener =
        tokio::net::UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub fn run(opts: DaemonOptions) -> Result<ExitCode> {
    // The CLI lets SIGPIPE kill it (`| head`); a daemon must not die because a client or
    // the reader of its log went away.
    // SAFETY: setting a signal disposition before the runtime's threads exist.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("interceptor-daemon")
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: DaemonOptions) -> Result<ExitCode> {
    let _lock = lock_state_dir(&opts.state_dir)?;
    let st = state::load(&opts.state_dir)?;
    let pins = PinDir::new(&opts.pin_dir);
    if opts.uninstall {
        return uninstall(&opts, st).await;
    }
    let (mode, mode_reason) = resolve_mode(&opts)?;
    tracing::info!("mode {mode}: {mode_reason}");
    let flags = FlagValues { annotation_limits: opts.annotation_limits, ..FlagValues::default() };
    let mesh = mesh::initial(opts.mesh_config.as_deref(), st.mesh_config_last_good.as_deref(), &flags)?;
    let load = (mode == Mode::Ebpf).then(|| LoadOptions {
        cgroup: opts.cgroup.clone(),
        pin_dir: pins.clone(),
        max_tracked_connections: opts.max_tracked_connections,
        max_tracked_connections_per_pod: opts.max_tracked_connections_per_pod,
        accelerate: opts.accelerate,
    });
    if let Some(load) = load.clone() {
        let outcome = tokio::task::spawn_blocking(move || ebpf::load(&load)).await??;
        match outcome {
            ebpf::LoadOutcome::Loaded { cgroup } => {
                tracing::info!("eBPF mode loaded and attached at {}", cgroup.display())
            }
            ebpf::LoadOutcome::AlreadyLoaded => tracing::info!("eBPF mode already loaded: adopted"),
            ebpf::LoadOutcome::Upgraded { pods } => tracing::info!("eBPF mode upgraded in place ({pods} pods kept)"),
        }
    }
    let cfg = Config {
        mode,
        mode_reason,
        pins,
        load,
        state_dir: opts.state_dir.clone(),
        mesh_config: opts.mesh_config.clone(),
        pod_manifest_dir: opts.pod_manifest_dir.clone(),
        names: opts.names,
        flags,
    };
    let d = Arc::new(Daemon::new(cfg, st.pods, mesh));

    // Health first (alive while starting, not ready until everything below is done).
    if let Some(addr) = opts.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let app = http::router(d.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("the health endpoint stopped: {e}");
            }
        });
    }
    reconcile::reconcile(&d, true).await;
    let _watcher = watch::start(d.clone())?;
    let listener = bind_socket(&opts.socket)?;
    let periodic = {
        let d = d.clone();
        let every = opts.reconcile_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                reconcile::reconcile(&d, false).await;
            }
        })
    };
    d.ready.store(true, Ordering::SeqCst);
    tracing::info!("ready: {} mode, {} pod(s), API on {}", d.cfg.mode, d.ids().len(), opts.socket.display());
    // A line a supervisor (or a test) can wait for.
    eprintln!("interceptor daemon ready ({} mode, {} pods)", d.cfg.mode, d.ids().len());

    let api = crate::api::server::router(d.clone());
    axum::serve(listener, api).with_graceful_shutdown(stop_signal()).await.context("the API server failed")?;

    d.ready.store(false, Ordering::SeqCst);
    periodic.abort();
    d.stop_all_watchers();
    d.save().await;
    let _ = std::fs::remove_file(&opts.socket);
    tracing::info!("stopped; interception stays in force ({} pod(s))", d.ids().len());
    eprintln!("interceptor daemon stopped; interception stays in force");
    Ok(ExitCode::SUCCESS)
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
}

/// `--uninstall`: every pod's interception, the pinned state, the state file.
async fn uninstall(opts: &DaemonOptions, st: state::State) -> Result<ExitCode> {
    if opts.socket.exists() && std::os::unix::net::UnixStream::connect(&opts.socket).is_ok() {
        bail!("a daemon still serves {}: stop it first", opts.socket.display());
    }
    let pins = PinDir::new(&opts.pin_dir);
    let cfg = Config {
        mode: Mode::Iptables,
        mode_reason: "uninstall".into(),
        pins: pins.clone(),
        load: None,
        state_dir: opts.state_dir.clone(),
        mesh_config: None,
        pod_manifest_dir: None,
        names: opts.names,
        flags: FlagValues::default(),
    };
    let n = st.pods.len();
    let d = Arc::new(Daemon::new(cfg, st.pods, core::MeshState::default()));
    let mut failed = 0;
    for id in d.ids() {
        if let Err(f) = d.delete(&id).await {
            eprintln!("pod {id}: {}", f.message);
            failed += 1;
        }
    }
    let unloaded = tokio::task::spawn_blocking(move || ebpf::unload(&pins)).await??;
    if failed > 0 {
        bail!("{failed} of {n} pod(s) could not be cleaned up; the state file is kept (run --uninstall again)");
    }
    let _ = std::fs::remove_file(state::path(&opts.state_dir));
    let _ = std::fs::remove_file(&opts.socket);
    eprintln!("uninstalled: {n} pod(s) removed{}", if unloaded { ", eBPF programs and pins removed" } else { "" });
    Ok(ExitCode::SUCCESS)
}
