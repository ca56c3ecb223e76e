//! load / upgrade / unload of the node-wide programs.
use std::{
    fs::{self, File},
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{Ebpf, EbpfLoader, programs::Program};
use interceptor_common::{GenerationChunk, GenerationKey, LAYOUT_VERSION, PodInfo, Settings, capacity, map_names};

use super::{
    PinDir,
    maps::PinnedMaps,
    object::{self, CGROUP_PROGRAMS, SK_LOOKUP_PROGRAM},
    probe, raw,
};

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where to attach; default: the cgroup v2 root (every pod on the node).
    pub cgroup: Option<PathBuf>,
    pub pin_dir: PinDir,
    /// Redirected connections being handed over to a sidecar at once, node-wide (default
    /// `capacity::TRACKED_CONNECTIONS`): from the application's SYN until the kernel has
    /// created the sidecar's end. More connect()s are refused (EPERM) and counted. The
    /// table is preallocated: about 140 bytes per entry.
    pub max_tracked_connections: Option<u32>,
    /// The same limit per pod (default `capacity::TRACKED_CONNECTIONS_PER_POD`), so that
    /// one pod cannot take the node's.
    pub max_tracked_connections_per_pod: Option<u32>,
}

impl LoadOptions {
    fn limits(&self) -> (u64, u64) {
        let node = self.max_tracked_connections.map(u64::from).unwrap_or(capacity::TRACKED_CONNECTIONS as u64);
        let pod =
            self.max_tracked_connections_per_pod.map(u64::from).unwrap_or(capacity::TRACKED_CONNECTIONS_PER_POD as u64);
        (node, pod.min(node))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadOutcome {
    Loaded {
        cgroup: PathBuf,
    },
    /// The same build is already loaded: nothing changed.
    AlreadyLoaded,
    /// Another build was loaded: programs replaced in place, maps and pods kept.
    Upgraded {
        pods: usize,
    },
}

/// The cgroup v2 mount point, from /proc/mounts (/sys/fs/cgroup on most nodes,
/// /sys/fs/cgroup/unified on hybrid hierarchies).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
        .ok_or_else(|| anyhow!("no cgroup v2 filesystem is mounted (eBPF mode needs cgroup v2); use iptables mode"))
}

fn bpffs_mounts() -> Result<Vec<PathBuf>> {
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    Ok(mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "bpf").then(|| PathBuf::from(dir))
        })
        .collect())
}

/// Makes sure the pin directory is on a bpf filesystem, mounting /sys/fs/bpf if needed.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let on_bpffs = |mounts: &[PathBuf]| mounts.iter().any(|m| pin_dir.starts_with(m));
    if on_bpffs(&bpffs_mounts()?) {
        return Ok(());
    }
    let default = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(default) {
        fs::create_dir_all(default).ok();
        nix::mount::mount(Some("bpf"), default, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .context("cannot mount the bpf filesystem at /sys/fs/bpf")?;
        return Ok(());
    }
    bail!(
        "{} is not on a bpf filesystem; mount one (mount -t bpf bpf DIR) or use --pin-dir under /sys/fs/bpf",
        pin_dir.display()
    )
}

/// Loads and attaches everything, or does nothing if this build is already loaded.
pub fn load(opts: &LoadOptions) -> Result<LoadOutcome> {
    let pins = &opts.pin_dir;
    ensure_bpffs(pins.path())?;
    probe::check()?;
    remove_stale_staging(pins);
    if pins.path().exists() {
        // Checked first: an installation of another layout may lack programs this build
        // attaches, and is then not "incomplete" but older.
        let settings = PinnedMaps::open(pins).and_then(|m| m.settings());
        if let Ok(settings) = &settings
            && settings.layout_version != LAYOUT_VERSION
        {
            bail!(
                "the programs pinned at {} use map layout {} and this build uses {}: unload them first (pods must be enrolled again)",
                pins.path().display(),
                settings.layout_version,
                LAYOUT_VERSION
            );
        }
        if !pins.is_loaded() {
            bail!(
                "{} holds an incomplete installation; remove it with `interceptor ebpf unload --pin-dir {}`",
                pins.path().display(),
                pins.path().display()
            );
        }
        let settings = settings?;
        if settings.fingerprint == object::fingerprint() {
            return Ok(LoadOutcome::AlreadyLoaded);
        }
        let pods = upgrade(pins)?;
        return Ok(LoadOutcome::Upgraded { pods });
    }
    let cgroup = match &opts.cgroup {
        Some(c) => c.clone(),
        None => cgroup2_root()?,
    };
    let staging = pins.staging();
    let result = install(&staging, &cgroup, opts.limits()).and_then(|()| {
        if let Some(parent) = pins.path().parent() {
            fs::create_dir_all(parent)?;
        }
        fs::rename(staging.path(), pins.path())
            .with_context(|| format!("cannot move {} into place", staging.path().display()))
    });
    if let Err(e) = result {
        let _ = fs::remove_dir_all(staging.path());
        return Err(e);
    }
    Ok(LoadOutcome::Loaded { cgroup })
}

fn remove_stale_staging(pins: &PinDir) {
    let (Some(parent), Some(name)) = (pins.path().parent(), pins.path().file_name()) else { return };
    let prefix = format!("{}-staging-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = n.strip_prefix(&prefix) {
            let alive = Path::new("/proc").join(pid).exists();
            if !alive {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Loads the object with every map pinned (or reused) under `pins`. `node_limit` sizes the
/// hand-over table of a new installation (the limit plus headroom for connect()s admitted
/// at the same moment on several CPUs).
fn open_object(pins: &PinDir, node_limit: Option<u64>) -> Result<Ebpf> {
    let paths: Vec<(&str, PathBuf)> = map_names::ALL.iter().map(|n| (*n, pins.map(n))).collect();
    let mut loader = EbpfLoader::new();
    // The programs use no CO-RE relocations.
    loader.btf(None);
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    if let Some(n) = node_limit {
        let entries = n.saturating_add(capacity::HANDOFF_HEADROOM as u64).min(u32::MAX as u64) as u32;
        loader.map_max_entries(map_names::HANDOFF, entries);
    }
    loader.load(object::bytes()?).context("cannot load the eBPF object")
}

fn load_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Program> {
    let prog = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} is missing from the eBPF object"))?;
    let result = match prog {
        Program::CgroupSockAddr(p) => p.load(),
        Program::SockOps(p) => p.load(),
        Program::CgroupSockopt(p) => p.load(),
        Program::CgroupSock(p) => p.load(),
        Program::SkLookup(p) => p.load(),
        other => bail!("unexpected program type for {name}: {:?}", other.prog_type()),
    };
    result.with_context(|| format!("the kernel refused program {name}"))?;
    Ok(prog)
}

fn install(staging: &PinDir, cgroup: &Path, (node_limit, pod_limit): (u64, u64)) -> Result<()> {
    for dir in ["maps", "progs", "links", "pods"] {
        fs::create_dir_all(staging.path().join(dir))?;
    }
    let mut ebpf = open_object(staging, Some(node_limit))?;
    // Maps only user space uses: created here, pinned with the rest.
    let info = raw::hash_map_create(map_names::POD_INFO, 8, size_of::<PodInfo>() as u32, capacity::PODS as u32)
        .context("cannot create the POD_INFO map")?;
    raw::obj_pin(info.as_fd(), &staging.map(map_names::POD_INFO))?;
    let generations = raw::hash_map_create(
        map_names::GENERATIONS,
        size_of::<GenerationKey>() as u32,
        size_of::<GenerationChunk>() as u32,
        capacity::GENERATIONS as u32,
    )
    .context("cannot create the GENERATIONS map")?;
    raw::obj_pin(generations.as_fd(), &staging.map(map_names::GENERATIONS))?;

    let cg = File::open(cgroup).with_context(|| format!("cannot open cgroup {}", cgroup.display()))?;
    for (name, attach_type) in CGROUP_PROGRAMS {
        let prog = load_program(&mut ebpf, name)?;
        prog.pin(staging.prog(name)).with_context(|| format!("cannot pin program {name}"))?;
        let link = raw::link_create(prog.fd()?.as_fd(), cg.as_fd(), attach_type)
            .with_context(|| format!("cannot attach {name} to cgroup {}", cgroup.display()))?;
        raw::obj_pin(link.as_fd(), &staging.link(name)).with_context(|| format!("cannot pin the link of {name}"))?;
    }
    // Tail-called by each pod's own sk_lookup program (`trampoline`); loaded now, so that a
    // kernel without it fails here, before anything is installed.
    let prog = load_program(&mut ebpf, SK_LOOKUP_PROGRAM).context(
        "the sk_lookup program was refused (it reads the sk_lookup field ingress_ifindex, Linux 5.17+); use iptables mode on this kernel",
    )?;
    prog.pin(staging.prog(SK_LOOKUP_PROGRAM))?;
    set_steering_program(staging, prog)?;
    let maps = PinnedMaps::open(staging)?;
    let mut settings_map = maps.settings;
    settings_map.set(
        0,
        Settings {
            debug: 0,
            layout_version: LAYOUT_VERSION,
            fingerprint: object::fingerprint(),
            max_in_flight_node: node_limit,
            max_in_flight_pod: pod_limit,
        },
        0,
    )?;
    Ok(())
}

/// Makes `prog` the steering program every pod's sk_lookup program tail-calls: one atomic
/// map update switches every pod.
fn set_steering_program(pins: &PinDir, prog: &Program) -> Result<()> {
    let data = aya::maps::MapData::from_pin(pins.map(map_names::STEER_PROGRAM)).context("open STEER_PROGRAM")?;
    let mut slots: aya::maps::ProgramArray<aya::maps::MapData> =
        aya::maps::ProgramArray::try_from(aya::maps::Map::ProgramArray(data))?;
    slots.set(0, prog.fd()?, 0).context("installing the steering program")?;
    Ok(())
}

/// Replaces every program behind its existing link (BPF_LINK_UPDATE is atomic: no moment
/// without interception), keeping maps and pods.
fn upgrade(pins: &PinDir) -> Result<usize> {
    let mut ebpf = open_object(pins, None)?;
    for (name, _) in CGROUP_PROGRAMS {
        let prog = load_program(&mut ebpf, name)?;
        let link = raw::obj_get(&pins.link(name)).with_context(|| format!("cannot open the link of {name}"))?;
        raw::link_update(link.as_fd(), prog.fd()?.as_fd()).with_context(|| format!("cannot replace {name}"))?;
        let _ = fs::remove_file(pins.prog(name));
        prog.pin(pins.prog(name))?;
    }
    // Every pod's own sk_lookup program tail-calls the steering program: replacing it in
    // the program array switches them all at once.
    let prog = load_program(&mut ebpf, SK_LOOKUP_PROGRAM)?;
    set_steering_program(pins, prog)?;
    let pods = pinned_pods(pins)?.len();
    let _ = fs::remove_file(pins.prog(SK_LOOKUP_PROGRAM));
    prog.pin(pins.prog(SK_LOOKUP_PROGRAM))?;
    let maps = PinnedMaps::open(pins)?;
    let mut settings = maps.settings()?;
    settings.fingerprint = object::fingerprint();
    let mut settings_map = maps.settings;
    settings_map.set(0, settings, 0)?;
    Ok(pods)
}

/// Network namespace cookies that have a pinned sk_lookup link.
pub fn pinned_pods(pins: &PinDir) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(pins.pods()) else { return Ok(out) };
    for e in entries.flatten() {
        if let Ok(c) = e.file_name().to_string_lossy().parse() {
            out.push(c);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Links the pod's own sk_lookup program (see `trampoline`) to its network namespace (no-op
/// if linked).
pub fn attach_sk_lookup(pins: &PinDir, cookie: u64, netns: &File) -> Result<()> {
    if pins.pod_link(cookie).exists() {
        return Ok(());
    }
    let dir = pins.pod(cookie);
    fs::create_dir_all(&dir)?;
    let result = (|| -> Result<()> {
        let steer_netns = raw::obj_get(&pins.map(map_names::STEER_NETNS)).context("open STEER_NETNS")?;
        let steer_program = raw::obj_get(&pins.map(map_names::STEER_PROGRAM)).context("open STEER_PROGRAM")?;
        let prog = super::trampoline::load(cookie, &steer_netns, &steer_program)?;
        let link = raw::link_create(prog.as_fd(), netns.as_fd(), raw::attach_type::SK_LOOKUP)
            .context("cannot attach sk_lookup to the pod's network namespace")?;
        raw::obj_pin(link.as_fd(), &pins.pod_link(cookie))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&dir);
    }
    result
}

/// Removes one pod's sk_lookup link.
pub fn detach_sk_lookup(pins: &PinDir, cookie: u64) -> Result<()> {
    let dir = pins.pod(cookie);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    Ok(())
}

/// Removes every program, link, map and pin. Returns whether anything was loaded.
pub fn unload(pins: &PinDir) -> Result<bool> {
    remove_stale_staging(pins);
    if !pins.path().exists() {
        return Ok(false);
    }
    // Pod links first: they stop steering before the maps they read go away.
    for cookie in pinned_pods(pins)? {
        detach_sk_lookup(pins, cookie)?;
    }
    fs::remove_dir_all(pins.path()).with_context(|| format!("cannot remove {}", pins.path().display()))?;
    Ok(true)
}
