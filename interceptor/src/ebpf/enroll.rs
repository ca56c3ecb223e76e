//! enroll / unenroll: a pod's policy into the maps, switched atomically.
//!
//! A pod's policy is a `PODS` entry referring to policy objects (`objects`): its own table
//! and lists shared with every pod that has the same. The objects the new policy needs are
//! found (identical content already stored) or written complete while the old policy keeps
//! deciding; replacing the pod's one `PODS` entry switches every new connection at once;
//! after an RCU barrier (no program run can still hold an old id) the objects no pod refers
//! to any more are deleted. Established connections are never touched.
//!
//! Both hold the installation's exclusive lock and keep a journal (`OBJECTS[0]`) open while
//! they change the maps. Killed at any step, they leave other pods untouched, and the pod
//! itself on its old policy (before the switch) or its new one (after it); what is left
//! over — an object not yet or no longer referenced, a link or addresses without an
//! enrollment — is repaired by the next enroll or unenroll (which finds the journal open)
//! or by `gc`. Their cost does not grow with the number of pods beyond a few batch reads:
//! pods whose namespace is gone are unenrolled by `gc`, `load` and the daemon's reconcile
//! (and by an enroll that needs their address), not by every command.
use std::{
    collections::BTreeSet,
    net::IpAddr,
    os::fd::{AsFd, BorrowedFd},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aya::maps::IterableMap;
use interceptor_common::{CounterKey, PodAddrKey, PodConfig, PodInfo, Reason, pod_flags};

use super::{
    EbpfError, PinDir,
    compile::{Compiled, compile},
    crash,
    error::Context,
    gc::{self, GcReport},
    loader::{attach_sk_lookup, detach_sk_lookup},
    lock::lock_installation,
    maps::{PinnedMaps, fill, read_all},
    marker::{require_installation, require_loaded},
    objects,
};
use crate::{netns::Netns, policy::Policy, routes};

type Result<T, E = EbpfError> = std::result::Result<T, E>;

#[derive(Clone, Debug)]
pub struct EnrollOptions {
    pub netns: Netns,
    pub pod_ips: Vec<IpAddr>,
    pub pin_dir: PinDir,
    pub pod_name: Option<String>,
    /// Enroll even the host's own network namespace (that of PID 1): its traffic — the
    /// node's — would be intercepted. Refused unless set.
    pub allow_host_netns: bool,
}

#[derive(Clone, Debug)]
pub struct EnrollReport {
    pub netns_cookie: u64,
    /// Identifies this enroll's policy (fresh at every enroll; `status` shows it).
    pub generation: u32,
    /// The generation it replaced (a re-enroll).
    pub replaced_generation: Option<u32>,
    /// The objects the pod refers to now.
    pub objects: PolicyObjects,
    /// Objects this enroll wrote (the others were stored already, shared with other pods
    /// or from the pod's previous policy).
    pub written: Vec<u32>,
    /// Objects it deleted: the pod's previous ones that no pod refers to any more.
    pub deleted: Vec<u32>,
    /// Entries of the pod's policy (its objects' entries, shared or not).
    pub entries: usize,
    /// Time from the first map write to the switch.
    pub apply_time: Duration,
    /// Time from the start of the call until the new policy is in force for new connections
    /// (the rest is removing the previous generation).
    pub in_force: Duration,
    /// Things the operator should know.
    pub warnings: Vec<String>,
    /// What an interrupted earlier command left, repaired first; pods whose namespace was
    /// gone and that held one of this pod's addresses.
    pub gc: GcReport,
}

/// A pod's objects: ids (0: none) and entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PolicyObjects {
    pub table: (u32, usize),
    pub excluded: (u32, usize),
    pub included: (u32, usize),
    pub ports: (u32, usize),
}

impl PolicyObjects {
    /// `entries`: of the table, excluded, included and ports objects.
    fn of(config: &PodConfig, entries: [usize; 4]) -> PolicyObjects {
        PolicyObjects {
            table: (config.policy_id, entries[0]),
            excluded: (config.excluded_list, entries[1]),
            included: (config.included_list, entries[2]),
            ports: (config.ports_list, entries[3]),
        }
    }
}

impl std::fmt::Display for PolicyObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "table {} ({} entries)", self.table.0, self.table.1)?;
        for (what, (id, n)) in
            [("excluded ranges", self.excluded), ("included ranges", self.included), ("excluded ports", self.ports)]
        {
            if id != 0 {
                write!(f, ", {what} {id} ({n})")?;
            }
        }
        Ok(())
    }
}

pub fn enroll(policy: &Policy, opts: &EnrollOptions) -> Result<EnrollReport> {
    let Some(path) = opts.netns.path().map(|p| p.to_path_buf()) else { return Err(EbpfError::NoNetns) };
    let t0 = Instant::now();
    // Opened and checked once; every later use (cookie, routes, sk_lookup, listeners) goes
    // through that one descriptor.
    if opts.netns.is_host()? && !opts.allow_host_netns {
        return Err(EbpfError::HostNetns { netns: path });
    }
    let cookie = opts.netns.cookie()?;
    let snap = routes::snapshot(&opts.netns)?;
    let mut compiled = compile(policy, &snap, &opts.pod_ips)?;
    // What the programs see is the kernel's UID: a pod with its own user namespace maps the
    // proxy's UID to another one.
    compiled.config.proxy_uid = crate::netns::userns::kernel_uid(&opts.netns, policy.proxy_uid)?;
    let t_compiled = t0.elapsed();
    let _lock = lock_installation(&opts.pin_dir, super::lock::Mode::Exclusive)?;
    require_loaded(&opts.pin_dir)?;
    let mut maps = PinnedMaps::open(&opts.pin_dir)?;
    let mut gc = repair_if_interrupted(&opts.pin_dir, &mut maps)?;
    let old = maps.pods.get(&cookie, 0).ok();
    match check_addresses(&opts.pin_dir, &mut maps, cookie, &path, &compiled) {
        Ok(dead) => gc.dead_pods.extend(dead),
        Err(e) => {
            // Nothing written: the journal closes.
            objects::end(&mut maps);
            return Err(e);
        }
    }
    let t_locked = t0.elapsed();

    let started = Instant::now();
    let mut written = Vec::new();
    let mut ids = [0u32; 4];
    for (i, obj) in compiled.objects().into_iter().enumerate() {
        match objects::store(&mut maps, obj) {
            Ok(stored) => {
                if let objects::Stored::Written(id) = stored {
                    written.push(id);
                }
                ids[i] = stored.id();
            }
            Err(e) => {
                rollback(&mut maps, &written);
                return Err(EbpfError::PolicyNotWritten { source: Box::new(e) });
            }
        }
    }
    crash::point("enroll-generation-written");
    let t_written = t0.elapsed();
    let netns_fd = opts.netns.fd()?.ok_or(EbpfError::NoNetns)?;
    let attached = attach_sk_lookup(&opts.pin_dir, cookie, netns_fd).and_then(|()| {
        crash::point("enroll-sk-lookup-attached");
        set_addresses(&mut maps, cookie, &compiled.addrs)
    });
    if let Err(e) = attached {
        rollback(&mut maps, &written);
        if old.is_none() {
            // Nothing of a first enrollment may stay behind.
            let _ = unenroll_locked(&opts.pin_dir, &mut maps, cookie, false);
        }
        return Err(e);
    }
    crash::point("enroll-addresses-set");
    let t_attached = t0.elapsed();
    let mut config = compiled.config;
    [config.policy_id, config.excluded_list, config.included_list, config.ports_list] = ids;
    config.generation = fresh_generation(old.map(|o| o.generation))?;
    let kept: BTreeSet<u32> = old.iter().flat_map(|o| o.objects()).collect();
    objects::retain(&mut maps, config.objects().filter(|id| !kept.contains(id)))?;
    maps.pods.insert(cookie, config, 0).context("switching the pod to its new policy failed")?;
    let apply_time = started.elapsed();
    let t_switched = t0.elapsed();
    crash::point("enroll-switched");

    // A sidecar that was already listening before this first enroll (or before its inbound
    // port or UID changed) is registered now: the programs only see listen() calls made
    // while the pod is enrolled with that port.
    let listeners_changed =
        old.is_none_or(|o| o.inbound_port != config.inbound_port || o.proxy_uid != config.proxy_uid);
    if listeners_changed {
        match super::listeners::adopt(&opts.netns, &opts.pin_dir, cookie, config.inbound_port, config.proxy_uid) {
            Ok(n) if n > 0 => tracing::info!("adopted {n} existing inbound listener(s)"),
            Ok(_) => {}
            Err(e) => tracing::warn!("could not look for an existing inbound listener: {e:#}"),
        }
    }
    let info = PodInfo {
        netns_path: fill(&path.display().to_string()),
        pod_name: fill(opts.pod_name.as_deref().unwrap_or("")),
        enrolled_at: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        table_inputs: compiled.table_inputs,
        policy_proxy_uid: policy.proxy_uid,
        _pad: 0,
    };
    maps.pod_info.insert(cookie, info, 0)?;
    crash::point("enroll-info-written");

    // The objects the pod no longer refers to go, unless another pod still does.
    let dropped: Vec<u32> = old.iter().flat_map(|o| o.objects()).filter(|id| !ids.contains(id)).collect();
    let deleted = objects::release(&mut maps, dropped, Some("enroll-old-generation-half-deleted"))?;
    objects::end(&mut maps);
    tracing::debug!(
        "enroll timings: compiled {t_compiled:?}, locked {t_locked:?}, written {t_written:?}, sk_lookup {t_attached:?}, switched {t_switched:?}, done {:?}",
        t0.elapsed()
    );
    let objects = PolicyObjects::of(&config, compiled.objects().map(|o| o.entries.len()));
    Ok(EnrollReport {
        netns_cookie: cookie,
        generation: config.generation,
        replaced_generation: old.map(|o| o.generation),
        objects,
        written,
        deleted,
        entries: compiled.entry_count(),
        apply_time,
        in_force: t_switched,
        warnings: vec![],
        gc,
    })
}

/// The processes of the pod's network namespace that are not under the cgroup eBPF mode is
/// attached to (their connections are not intercepted), as a warning; none when attached
/// at the root. A scan of every process of the node (/proc): `ebpf enroll` runs it after a
/// first enroll, not every enroll (a node daemon enrolling a thousand pods would pay it a
/// thousand times, and at a CNI ADD the pod's containers have not started yet).
pub fn cgroup_warnings(netns: &Netns, pins: &PinDir) -> Vec<String> {
    let Some(path) = netns.path() else { return vec![] };
    let Ok(marker) = require_installation(pins) else { return vec![] };
    match super::cgroup::processes_outside(netns, marker.cgroup_id) {
        Ok(outside) if !outside.is_empty() => {
            let pids: Vec<String> = outside.iter().take(8).map(|(p, c)| format!("{p} in {c}")).collect();
            vec![format!(
                "{} process(es) of {} are not under the cgroup eBPF mode is attached to ({}): their connections are \
                 not intercepted (pids {}{})",
                outside.len(),
                path.display(),
                marker.cgroup_path(),
                pids.join(", "),
                if outside.len() > 8 { ", …" } else { "" }
            )]
        }
        Ok(_) => vec![],
        Err(e) => {
            tracing::debug!("cannot check the pod's cgroups: {e:#}");
            vec![]
        }
    }
}

/// Switches an enrolled pod to `policy` without re-reading its routes: what a MeshConfig
/// change needs (the node daemon's), in a fraction of an enroll's time — the pod's table is
/// kept, only its lists and switches change. Returns `None` (nothing changed) when that is
/// not enough: the pod is not enrolled, or the policy changes what its table or listeners
/// were made from (its own ranges, the interface exclusions, the proxy UID, the inbound
/// port): a full [`enroll`] is needed. Atomic and crash-safe like an enroll.
pub fn update_policy(pins: &PinDir, cookie: u64, policy: &Policy) -> Result<Option<EnrollReport>> {
    let t0 = Instant::now();
    let lists = super::compile::lists(policy);
    let inputs = super::compile::table_inputs(policy);
    let _lock = lock_installation(pins, super::lock::Mode::Exclusive)?;
    require_loaded(pins)?;
    let mut maps = PinnedMaps::open(pins)?;
    let gc = repair_if_interrupted(pins, &mut maps)?;
    let (Ok(old), Ok(info)) = (maps.pods.get(&cookie, 0), maps.pod_info.get(&cookie, 0)) else {
        objects::end(&mut maps);
        return Ok(None);
    };
    let mut flags = super::compile::policy_flags(policy);
    flags |= old.flags & (pod_flags::HAS_POD_IP4 | pod_flags::HAS_POD_IP6 | pod_flags::HAS_IFACE_EXCLUSIONS);
    let no_address =
        flags & pod_flags::POD_IP_MODE != 0 && flags & (pod_flags::HAS_POD_IP4 | pod_flags::HAS_POD_IP6) == 0;
    if info.table_inputs != inputs
        || info.policy_proxy_uid != policy.proxy_uid
        || old.inbound_port != policy.ports.inbound
        || no_address
    {
        objects::end(&mut maps);
        return Ok(None);
    }
    let started = Instant::now();
    let mut written = Vec::new();
    let mut ids = [old.policy_id, 0, 0, 0];
    for (i, obj) in [&lists.excluded, &lists.included, &lists.ports].into_iter().enumerate() {
        match objects::store(&mut maps, obj) {
            Ok(stored) => {
                if let objects::Stored::Written(id) = stored {
                    written.push(id);
                }
                ids[i + 1] = stored.id();
            }
            Err(e) => {
                rollback(&mut maps, &written);
                return Err(EbpfError::PolicyNotWritten { source: Box::new(e) });
            }
        }
    }
    let config = PodConfig {
        flags,
        outbound_port: policy.ports.outbound,
        reserved_inbound_ports: super::compile::reserved_ports(policy),
        excluded_list: ids[1],
        included_list: ids[2],
        ports_list: ids[3],
        generation: fresh_generation(Some(old.generation))?,
        ..old
    };
    objects::retain(&mut maps, config.objects().filter(|id| !old.objects().any(|o| o == *id)))?;
    crash::point("update-objects-written");
    maps.pods.insert(cookie, config, 0).context("switching the pod to its new policy failed")?;
    let apply_time = started.elapsed();
    let in_force = t0.elapsed();
    crash::point("update-switched");
    let dropped: Vec<u32> = old.objects().filter(|id| !ids.contains(id)).collect();
    let deleted = objects::release(&mut maps, dropped, Some("update-old-generation-half-deleted"))?;
    objects::end(&mut maps);
    let table_entries = maps.objects.get(&old.policy_id, 0).map(|i| i.entries as usize).unwrap_or_default();
    let entries =
        [table_entries, lists.excluded.entries.len(), lists.included.entries.len(), lists.ports.entries.len()];
    Ok(Some(EnrollReport {
        netns_cookie: cookie,
        generation: config.generation,
        replaced_generation: Some(old.generation),
        objects: PolicyObjects::of(&config, entries),
        written,
        deleted,
        entries: entries.iter().sum(),
        apply_time,
        in_force,
        warnings: vec![],
        gc,
    }))
}

/// Removes the objects a failed enroll wrote (none of them is referenced: the pod still
/// has its previous policy, or none). The journal stays open: whatever else the failure
/// left is repaired by the next command.
fn rollback(maps: &mut PinnedMaps, written: &[u32]) {
    for id in written {
        objects::delete(maps, *id, None);
    }
}

/// Opens the journal; if an earlier enroll or unenroll was killed (it left the journal
/// open), first repairs what it left: stray pod state, unreferenced objects (see `gc`).
fn repair_if_interrupted(pins: &PinDir, maps: &mut PinnedMaps) -> Result<GcReport> {
    if !objects::begin(maps)? {
        return Ok(GcReport::default());
    }
    tracing::info!("an earlier enroll or unenroll was interrupted: repairing first");
    gc::collect(pins, maps, false)
}

/// Stops intercepting a pod: its sockets behave as if eBPF mode were not loaded.
pub fn unenroll(netns: &Netns, pins: &PinDir) -> Result<bool> {
    let cookie = netns.cookie()?;
    unenroll_cookie(pins, cookie)
}

/// Stops intercepting the pod of a network namespace cookie (also when the namespace is gone).
pub fn unenroll_cookie(pins: &PinDir, cookie: u64) -> Result<bool> {
    Ok(unenroll_report(pins, cookie)?.0)
}

/// [`unenroll_cookie`], with what garbage it collected.
pub fn unenroll_report(pins: &PinDir, cookie: u64) -> Result<(bool, GcReport)> {
    let _lock = lock_installation(pins, super::lock::Mode::Exclusive)?;
    require_loaded(pins)?;
    let mut maps = PinnedMaps::open(pins)?;
    let gc = repair_if_interrupted(pins, &mut maps)?;
    let done = unenroll_locked(pins, &mut maps, cookie, true)?;
    objects::end(&mut maps);
    Ok((done, gc))
}

/// Unenrolls with the lock held: the switch first (`PODS`), then the link, the pod's
/// addresses and info, and (after an RCU barrier) the objects no other pod refers to, and
/// its counters. Also removes the leftovers of a pod that has no `PODS` entry.
/// `crash_points`: the test hooks of the `unenroll` command (not of gc's use of it).
pub(crate) fn unenroll_locked(pins: &PinDir, maps: &mut PinnedMaps, cookie: u64, crash_points: bool) -> Result<bool> {
    let point = |step: &str| {
        if crash_points {
            crash::point(step)
        }
    };
    let old = maps.pods.get(&cookie, 0).ok();
    if old.is_some() {
        maps.pods.remove(&cookie)?;
    }
    point("unenroll-switched");
    detach_sk_lookup(pins, cookie)?;
    point("unenroll-detached");
    let _ = maps.pod_info.remove(&cookie);
    set_addresses(maps, cookie, &[])?;
    point("unenroll-addresses-cleared");
    super::listeners::forget(pins, cookie)?;
    // Connections still being handed over count down this entry when they complete; it
    // goes once nothing is in flight (the pod makes no new ones).
    if maps.pod_tracking.get(&cookie, 0).is_ok_and(|t| t.in_flight == 0) {
        let _ = maps.pod_tracking.remove(&cookie);
    }
    if let Some(old) = old {
        objects::release(maps, old.objects(), crash_points.then_some("unenroll-generation-half-deleted"))?;
    }
    for reason in Reason::ALL {
        let _ = maps.counters.remove(&CounterKey { netns_cookie: cookie, reason: reason as u32, _pad: 0 });
    }
    Ok(old.is_some())
}

/// A random generation number, never 0 and never the previous one.
fn fresh_generation(previous: Option<u32>) -> Result<u32> {
    loop {
        let mut b = [0u8; 4];
        getrandom(&mut b)?;
        let g = u32::from_ne_bytes(b);
        if g != 0 && Some(g) != previous {
            return Ok(g);
        }
    }
}

fn getrandom(buf: &mut [u8]) -> Result<()> {
    // SAFETY: valid buffer and length.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n as usize != buf.len() {
        return Err(std::io::Error::last_os_error()).context("getrandom failed");
    }
    Ok(())
}

pub(crate) fn map_fd<M: IterableMap<K, V>, K: aya::Pod, V>(m: &M) -> BorrowedFd<'_> {
    m.map().fd().as_fd()
}

/// Refuses a pod holding an address that is enrolled for another pod: inbound steering and
/// status must never confuse two pods. An address left by a pod that is no longer enrolled
/// is taken over; one held by a pod whose network namespace is gone (an address reused after
/// the pod was deleted without an unenroll) is freed by unenrolling that pod, which is
/// returned.
fn check_addresses(
    pins: &PinDir,
    maps: &mut PinnedMaps,
    cookie: u64,
    netns: &std::path::Path,
    c: &Compiled,
) -> Result<Vec<u64>> {
    let mut dead = Vec::new();
    for k in &c.addrs {
        let Ok(other) = maps.pod_addrs.get(k, 0) else { continue };
        if other == cookie || maps.pods.get(&other, 0).is_err() || dead.contains(&other) {
            continue;
        }
        if gc::netns_gone(pins, other) {
            tracing::info!("unenrolling netns cookie {other}: its namespace is gone and a new pod has its address");
            unenroll_locked(pins, maps, other, false)?;
            dead.push(other);
            continue;
        }
        let other_netns =
            maps.pod_info.get(&other, 0).map(|i| super::maps::c_str(&i.netns_path)).unwrap_or_else(|_| "?".into());
        return Err(EbpfError::AddressInUse {
            addr: k.ip(),
            netns: netns.to_path_buf(),
            other_netns,
            other_cookie: other,
        });
    }
    Ok(dead)
}

/// Points the pod's current addresses at it (and drops addresses it no longer has).
fn set_addresses(maps: &mut PinnedMaps, cookie: u64, addrs: &[PodAddrKey]) -> Result<()> {
    let stale: Vec<PodAddrKey> = read_all(&maps.pod_addrs)?
        .into_iter()
        .filter(|(k, v)| *v == cookie && !addrs.contains(k))
        .map(|(k, _)| k)
        .collect();
    for k in addrs {
        maps.pod_addrs.insert(*k, cookie, 0).context("POD_ADDRS is full")?;
    }
    for k in stale {
        let _ = maps.pod_addrs.remove(&k);
    }
    Ok(())
}
