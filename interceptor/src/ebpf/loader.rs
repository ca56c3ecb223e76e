//! load / upgrade / unload of the node-wide programs.
//!
//! All three lock the pin directory's parent, then the installation (see `lock`), and touch
//! only an interceptor installation on a bpf filesystem (see `marker`).
//!
//! Crash safety:
//! * A first load builds everything — cgroup links included — in `<dir>-staging-<pid>` and
//!   renames it into place. Killed before the rename, the staging directory (and with it its
//!   links) is removed by the next load, unload or gc.
//! * An upgrade first sets the fingerprint in SETTINGS to 0 ("upgrade in progress"), pins
//!   every new program as `progs/<name>-next`, replaces the program behind every link
//!   (BPF_LINK_UPDATE, atomic per link: every hook always has a program), renames each
//!   `-next` pin over the old one (an atomic replace on bpffs: the installation never looks
//!   absent or "not loaded"), and writes the new fingerprint last. Killed anywhere, the
//!   fingerprint is 0 or the old one, so the next `load` (of either build) upgrades again to
//!   its own programs. Old and new programs of one layout version share the maps, so a mix
//!   of them keeps intercepting meanwhile.
//! * A pod whose network namespace is gone has a dead sk_lookup link (updating it fails with
//!   ENOLINK): the upgrade unenrolls it and reports it instead of stopping half-way.
use std::{
    fs::{self, File},
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{Program, ProgramInfo},
};
use interceptor_common::{
    GenerationChunk, GenerationKey, LAYOUT_VERSION, ObjectInfo, PodInfo, Settings, capacity, map_names,
};

pub use super::cgroup::cgroup2_root;
use super::{
    EbpfError, PinDir,
    cgroup::{attach_cgroup, cgroup_id},
    crash,
    enroll::unenroll_locked,
    error::Context,
    gc::{self, GcReport, remove_known, remove_stale_staging},
    lock::InstallLock,
    maps::PinnedMaps,
    marker::{Marker, require_installation},
    object::{self, ACCEL_PROGRAM, CGROUP_PROGRAMS, SK_LOOKUP_PROGRAM},
    objects,
    pins::require_bpffs_parent,
    probe, raw,
};

type Result<T, E = EbpfError> = std::result::Result<T, E>;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where to attach; default: the cgroup v2 root (every pod on the node), which must be
    /// the host's (not a private cgroup namespace's).
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
    /// Socket-level acceleration of new redirected connections (sk_msg redirect between the
    /// application's socket and the sidecar's, see `interceptor-ebpf/src/accelerate.rs`);
    /// applied at every load, also to an installation already loaded. Off by default.
    pub accelerate: bool,
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

/// What a load did, with what it collected on the way.
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub outcome: LoadOutcome,
    /// Pods whose namespace was gone (unenrolled), interrupted commands' leftovers removed.
    pub gc: GcReport,
    pub warnings: Vec<String>,
    /// Acceleration of new connections was switched (to this value) on an installation
    /// that was already loaded.
    pub acceleration_switched: Option<bool>,
}

/// Loads and attaches everything, or does nothing if this build is already loaded.
pub fn load(opts: &LoadOptions) -> Result<LoadOutcome> {
    Ok(load_report(opts)?.outcome)
}

/// `load`, reporting what it collected (dead pods, leftovers of interrupted commands).
pub fn load_report(opts: &LoadOptions) -> Result<LoadReport> {
    let pins = &opts.pin_dir;
    require_bpffs_parent(pins)?;
    probe::check()?;
    let lock = InstallLock::with_parent(pins)?;
    let mut report = LoadReport {
        outcome: LoadOutcome::AlreadyLoaded,
        gc: GcReport::default(),
        warnings: vec![],
        acceleration_switched: None,
    };
    if lock.dir_locked() && pins.is_empty_dir_on_bpffs() {
        fs::remove_dir(pins.path()).with_context(|| format!("cannot remove {}", pins.path().display()))?;
    }
    if fs::symlink_metadata(pins.path()).is_ok() {
        let marker = require_installation(pins).map_err(|e| EbpfError::RefusedToLoad { refused: Box::new(e) })?;
        report.gc.stale_pins = remove_stale_staging(pins);
        // Checked first: an installation of another layout may lack programs this build
        // attaches, and is then not "incomplete" but older.
        if let Ok(settings) = PinnedMaps::open(pins).and_then(|m| m.settings())
            && settings.layout_version != LAYOUT_VERSION
        {
            return Err(EbpfError::LayoutMismatch {
                dir: pins.path().to_path_buf(),
                pinned: settings.layout_version,
                ours: LAYOUT_VERSION,
            });
        }
        if !pins.is_loaded() {
            return Err(EbpfError::Incomplete { dir: pins.path().to_path_buf() });
        }
        let mut maps = PinnedMaps::open(pins)?;
        let settings = maps.settings()?;
        if let Some(c) = &opts.cgroup
            && cgroup_id(c).ok() != Some(marker.cgroup_id)
        {
            report.warnings.push(format!(
                "already attached at cgroup {}; --cgroup {} is ignored (unload first to move the attach point)",
                marker.cgroup_path(),
                c.display()
            ));
        }
        if settings.fingerprint == object::fingerprint() && links_consistent(pins) {
            report.acceleration_switched = set_acceleration(pins, opts.accelerate)?;
            report.gc.merge(gc::collect(pins, &mut maps, false)?);
            objects::end(&mut maps);
            return Ok(report);
        }
        let (pods, dead) = upgrade(pins, &mut maps)?;
        report.outcome = LoadOutcome::Upgraded { pods };
        report.acceleration_switched = set_acceleration(pins, opts.accelerate)?;
        report.gc.dead_pods.extend(dead);
        report.gc.merge(gc::collect(pins, &mut maps, false)?);
        objects::end(&mut maps);
        return Ok(report);
    }
    report.gc.stale_pins = remove_stale_staging(pins);
    let cgroup = attach_cgroup(opts.cgroup.as_deref())?;
    let staging = pins.staging();
    let result = install(&staging, &cgroup, opts.limits(), opts.accelerate).and_then(|()| {
        crash::point("load-staging-complete");
        fs::rename(staging.path(), pins.path())
            .with_context(|| format!("cannot move {} into place", staging.path().display()))
    });
    if let Err(e) = result {
        remove_known(&staging, &staging.pod_dirs());
        let _ = fs::remove_dir(staging.path());
        return Err(e);
    }
    report.outcome = LoadOutcome::Loaded { cgroup };
    Ok(report)
}

/// Whether every link runs the program pinned under its name (false after an interrupted
/// upgrade: some links may run another build's program).
fn links_consistent(pins: &PinDir) -> bool {
    let pinned_id = |name: &str| ProgramInfo::from_pin(pins.prog(name)).map(|i| i.id()).ok();
    let linked_id =
        |path: &Path| raw::obj_get(path).ok().and_then(|l| raw::link_info(l.as_fd()).ok()).map(|i| i.prog_id);
    for (name, _) in CGROUP_PROGRAMS {
        if pinned_id(name).is_none() || pinned_id(name) != linked_id(&pins.link(name)) {
            return false;
        }
    }
    if !pins.prog(ACCEL_PROGRAM).exists() {
        return false;
    }
    // Every pod's own program tail-calls the steering program in STEER_PROGRAM[0].
    let steering =
        raw::obj_get(&pins.map(map_names::STEER_PROGRAM)).ok().and_then(|m| raw::prog_array_get(m.as_fd(), 0).ok());
    pinned_id(SK_LOOKUP_PROGRAM).is_some() && steering == pinned_id(SK_LOOKUP_PROGRAM)
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
    loader.load(object::bytes()?).map_err(|e| EbpfError::Object { source: Box::new(e) })
}

fn load_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Program> {
    let prog = ebpf.program_mut(name).ok_or_else(|| EbpfError::MissingProgram { name: name.into() })?;
    raw::retry_interrupted_load(name, || {
        let result = match &mut *prog {
            Program::CgroupSockAddr(p) => p.load(),
            Program::SockOps(p) => p.load(),
            Program::CgroupSockopt(p) => p.load(),
            Program::CgroupSock(p) => p.load(),
            Program::SkLookup(p) => p.load(),
            Program::SkMsg(p) => p.load(),
            other => {
                return Err(EbpfError::UnexpectedProgram {
                    name: name.into(),
                    kind: format!("{:?}", other.prog_type()),
                });
            }
        };
        result.map_err(|source| EbpfError::ProgramRefused { name: name.into(), source })
    })?;
    Ok(prog)
}

fn program_fd<'a>(ebpf: &'a Ebpf, name: &str) -> Result<BorrowedFd<'a>> {
    let prog = ebpf.program(name).ok_or_else(|| EbpfError::MissingProgram { name: name.into() })?;
    Ok(prog.fd()?.as_fd())
}

fn install(staging: &PinDir, cgroup: &Path, (node_limit, pod_limit): (u64, u64), accelerate: bool) -> Result<()> {
    for dir in ["maps", "progs", "links", "pods"] {
        let dir = staging.path().join(dir);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut ebpf = open_object(staging, Some(node_limit))?;
    // Maps only user space uses: created here, pinned with the rest.
    for (name, key_size, value_size, max_entries) in [
        (map_names::POD_INFO, size_of::<u64>(), size_of::<PodInfo>(), capacity::PODS),
        (map_names::GENERATIONS, size_of::<GenerationKey>(), size_of::<GenerationChunk>(), capacity::GENERATIONS),
        (map_names::OBJECTS, size_of::<u32>(), size_of::<ObjectInfo>(), capacity::OBJECTS),
    ] {
        let map = raw::hash_map_create(name, key_size as u32, value_size as u32, max_entries as u32)
            .with_context(|| format!("cannot create the {name} map"))?;
        raw::obj_pin(map.as_fd(), &staging.map(name)).with_context(|| format!("cannot pin the {name} map"))?;
    }

    let cg = File::open(cgroup).with_context(|| format!("cannot open cgroup {}", cgroup.display()))?;
    for (i, (name, attach_type)) in CGROUP_PROGRAMS.iter().enumerate() {
        let prog = load_program(&mut ebpf, name)?;
        prog.pin(staging.prog(name)).with_context(|| format!("cannot pin program {name}"))?;
        let link = raw::link_create(prog.fd()?.as_fd(), cg.as_fd(), *attach_type)
            .with_context(|| format!("cannot attach {name} to cgroup {}", cgroup.display()))?;
        raw::obj_pin(link.as_fd(), &staging.link(name)).with_context(|| format!("cannot pin the link of {name}"))?;
        if i == 0 {
            crash::point("load-first-link-attached");
        }
    }
    // Tail-called by each pod's own sk_lookup program (`trampoline`); loaded now, so that a
    // kernel without it fails here, before anything is installed.
    let prog =
        load_program(&mut ebpf, SK_LOOKUP_PROGRAM).map_err(|e| EbpfError::SkLookupRefused { source: Box::new(e) })?;
    prog.pin(staging.prog(SK_LOOKUP_PROGRAM)).with_context(|| format!("cannot pin program {SK_LOOKUP_PROGRAM}"))?;
    set_steering_program(staging, prog.fd()?.as_fd())?;
    let prog = load_program(&mut ebpf, ACCEL_PROGRAM)?;
    prog.pin(staging.prog(ACCEL_PROGRAM)).with_context(|| format!("cannot pin program {ACCEL_PROGRAM}"))?;
    attach_accelerator(staging, prog.fd()?.as_fd())?;
    set_acceleration(staging, accelerate)?;
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
    // Last: a directory with a marker is complete.
    Marker::new(cgroup, cgroup_id(cgroup)?).pin(staging)?;
    Ok(())
}

/// Makes `prog` the steering program every pod's sk_lookup program tail-calls: one atomic
/// map update switches every pod.
fn set_steering_program(pins: &PinDir, prog: BorrowedFd<'_>) -> Result<()> {
    let slots = raw::obj_get(&pins.map(map_names::STEER_PROGRAM)).context("open STEER_PROGRAM")?;
    raw::prog_array_set(slots.as_fd(), 0, prog).context("installing the steering program")?;
    Ok(())
}

/// Attaches the acceleration program to `ACCEL_SOCKETS` (replacing the map's previous one:
/// sockets already in the map keep the program they joined with until they close). The
/// attachment belongs to the map: it goes when the map does, at unload.
fn attach_accelerator(pins: &PinDir, prog: BorrowedFd<'_>) -> Result<()> {
    let map = raw::obj_get(&pins.map(map_names::ACCEL_SOCKETS)).context("open ACCEL_SOCKETS")?;
    raw::prog_attach(map.as_fd(), prog, raw::attach_type::SK_MSG_VERDICT)
        .context("cannot attach the acceleration program to ACCEL_SOCKETS")
}

/// Switches acceleration of new redirected connections on or off (connections already
/// accelerated stay so until they close). Returns the new value if it changed.
pub fn set_acceleration(pins: &PinDir, on: bool) -> Result<Option<bool>> {
    let map = raw::obj_get(&pins.map(map_names::ACCELERATION)).context("open ACCELERATION")?;
    let was = raw::u32_array_get(map.as_fd(), 0).context("read ACCELERATION")? != 0;
    if was == on {
        return Ok(None);
    }
    raw::u32_array_set(map.as_fd(), 0, on as u32).context("write ACCELERATION")?;
    Ok(Some(on))
}

/// Whether new redirected connections are accelerated (false for an installation without
/// the switch, made by an older build).
pub fn acceleration(pins: &PinDir) -> bool {
    raw::obj_get(&pins.map(map_names::ACCELERATION))
        .ok()
        .and_then(|m| raw::u32_array_get(m.as_fd(), 0).ok())
        .is_some_and(|v| v != 0)
}

/// Replaces every program behind its existing link (see the module's comment), keeping maps
/// and pods. Returns the number of pods kept and the pods found dead.
fn upgrade(pins: &PinDir, maps: &mut PinnedMaps) -> Result<(usize, Vec<u64>)> {
    let mut settings = maps.settings()?;
    settings.fingerprint = 0;
    maps.settings.set(0, settings, 0)?;
    crash::point("upgrade-started");

    let mut ebpf = open_object(pins, None)?;
    let names: Vec<&str> = object::program_names().collect();
    for name in &names {
        let next = pins.prog_next(name);
        let _ = fs::remove_file(&next);
        load_program(&mut ebpf, name)?.pin(&next).with_context(|| format!("cannot pin {}", next.display()))?;
    }
    crash::point("upgrade-programs-pinned");

    for (i, (name, _)) in CGROUP_PROGRAMS.iter().enumerate() {
        let link = raw::obj_get(&pins.link(name)).with_context(|| format!("cannot open the link of {name}"))?;
        raw::link_update(link.as_fd(), program_fd(&ebpf, name)?)
            .map_err(|e| EbpfError::UpgradeInterrupted { name: name.to_string(), source: Box::new(e) })?;
        if i == 0 {
            crash::point("upgrade-first-cgroup-link-updated");
        }
    }
    crash::point("upgrade-cgroup-links-updated");

    // Every pod's own sk_lookup program tail-calls the steering program: replacing it in the
    // program array switches every pod at once (pods' links stay as they are).
    set_steering_program(pins, program_fd(&ebpf, SK_LOOKUP_PROGRAM)?)?;
    attach_accelerator(pins, program_fd(&ebpf, ACCEL_PROGRAM)?)?;
    let mut pods = 0;
    let mut dead = Vec::new();
    for cookie in pinned_pods(pins)? {
        if super::gc::netns_gone(pins, cookie) {
            dead.push(cookie);
        } else {
            pods += 1;
        }
    }
    crash::point("upgrade-pod-links-updated");
    for cookie in &dead {
        tracing::warn!("pod with netns cookie {cookie}: its network namespace is gone; unenrolling it");
        unenroll_locked(pins, maps, *cookie, false)?;
    }

    for (i, name) in names.iter().enumerate() {
        fs::rename(pins.prog_next(name), pins.prog(name))
            .with_context(|| format!("cannot rename the new {name} into place"))?;
        if i == 0 {
            crash::point("upgrade-first-program-renamed");
        }
    }
    crash::point("upgrade-programs-renamed");
    settings.fingerprint = object::fingerprint();
    maps.settings.set(0, settings, 0)?;
    Ok((pods, dead))
}

/// Network namespace cookies that have a pinned sk_lookup link.
pub fn pinned_pods(pins: &PinDir) -> Result<Vec<u64>> {
    Ok(pins.pod_dirs().into_iter().filter(|c| pins.pod_link(*c).exists()).collect())
}

/// Links the pod's own sk_lookup program (see `trampoline`) to its network namespace (no-op
/// if linked).
pub fn attach_sk_lookup(pins: &PinDir, cookie: u64, netns: BorrowedFd<'_>) -> Result<()> {
    if pins.pod_link(cookie).exists() {
        return Ok(());
    }
    let dir = pins.pod(cookie);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = (|| -> Result<()> {
        let steer_netns = raw::obj_get(&pins.map(map_names::STEER_NETNS)).context("open STEER_NETNS")?;
        let steer_program = raw::obj_get(&pins.map(map_names::STEER_PROGRAM)).context("open STEER_PROGRAM")?;
        let prog = super::trampoline::load(cookie, &steer_netns, &steer_program)?;
        let link = raw::link_create(prog.as_fd(), netns, raw::attach_type::SK_LOOKUP)
            .context("cannot attach sk_lookup to the pod's network namespace")?;
        raw::obj_pin(link.as_fd(), &pins.pod_link(cookie))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir(&dir);
    }
    result
}

/// Removes one pod's sk_lookup link (and its directory, unless something else is in it).
pub fn detach_sk_lookup(pins: &PinDir, cookie: u64) -> Result<()> {
    let link = pins.pod_link(cookie);
    if fs::symlink_metadata(&link).is_ok() {
        fs::remove_file(&link).with_context(|| format!("cannot remove {}", link.display()))?;
    }
    let dir = pins.pod(cookie);
    if dir.exists()
        && let Err(e) = fs::remove_dir(&dir)
    {
        tracing::warn!("{} is left: {e} (it holds something interceptor did not put there)", dir.display());
    }
    Ok(())
}

/// What `unload` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unloaded {
    /// Nothing was loaded there.
    Nothing,
    /// Every program, link, map and pin of the installation removed; `left`: entries
    /// interceptor did not create, left in place (and with them the directory).
    Removed { left: Vec<PathBuf> },
}

/// Removes every program, link, map and pin. Returns whether anything was loaded.
pub fn unload(pins: &PinDir) -> Result<bool> {
    Ok(matches!(unload_report(pins)?, Unloaded::Removed { .. }))
}

/// `unload`, reporting what it left. Refuses (removing nothing) a directory that is not an
/// interceptor installation on a bpf filesystem.
pub fn unload_report(pins: &PinDir) -> Result<Unloaded> {
    let refuse = |e: EbpfError| EbpfError::RefusedToUnload { dir: pins.path().to_path_buf(), refused: Box::new(e) };
    let parent_on_bpffs = pins.path().parent().is_some_and(super::pins::on_bpffs);
    if fs::symlink_metadata(pins.path()).is_err() {
        if parent_on_bpffs {
            let _lock = InstallLock::with_parent(pins)?;
            remove_stale_staging(pins);
        }
        return Ok(Unloaded::Nothing);
    }
    // Checked before taking any lock or touching anything, and again once locked.
    if !pins.is_empty_dir_on_bpffs() {
        require_installation(pins).map_err(refuse)?;
    }
    let lock = InstallLock::with_parent(pins)?;
    if !lock.dir_locked() {
        // Removed by another unload while we waited.
        return Ok(Unloaded::Nothing);
    }
    if pins.is_empty_dir_on_bpffs() {
        fs::remove_dir(pins.path()).with_context(|| format!("cannot remove {}", pins.path().display()))?;
        remove_stale_staging(pins);
        return Ok(Unloaded::Nothing);
    }
    require_installation(pins).map_err(refuse)?;
    remove_stale_staging(pins);
    // Pod links first: they stop steering before anything they read goes away; then the
    // cgroup links, programs, maps, and the marker last.
    let pods = pins.pod_dirs();
    for c in &pods {
        detach_sk_lookup(pins, *c)?;
    }
    remove_known(pins, &pods);
    let left = remaining(pins.path());
    if left.is_empty() {
        fs::remove_dir(pins.path()).with_context(|| format!("cannot remove {}", pins.path().display()))?;
    }
    // Our own directories stay only because of what is in them: report the foreign entries.
    let ours = pins.known_entries(&pods);
    let left = left.into_iter().filter(|p| !ours.contains(p)).collect();
    Ok(Unloaded::Removed { left })
}

/// Every path still under `dir` (depth first).
fn remaining(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(remaining(&p));
        }
        out.push(p);
    }
    out.sort();
    out
}
