//! enroll / unenroll: a pod's policy into the maps, switched atomically.
//!
//! A new policy generation is written under a fresh policy id while the old one keeps
//! deciding; replacing the pod's one `PODS` entry switches every new connection at once;
//! after an RCU barrier (no program run can still hold the old id) the old generation is
//! deleted. Established connections are never touched.
//!
//! Both hold the installation's exclusive lock. Killed at any step, they leave other pods
//! untouched, and the pod itself on its old policy (before the switch) or its new one
//! (after it); what is left over — a generation not yet or no longer referenced, a link or
//! addresses without an enrollment — is garbage the next command collects (`gc`).
use std::{
    net::IpAddr,
    os::fd::{AsFd, BorrowedFd},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::IterableMap;
use bytemuck::Zeroable;
use interceptor_common::{
    CidrData, CounterKey, GENERATION_CHUNK, GenerationChunk, GenerationKey, GenerationRecord, IfaceKey, PodAddrKey,
    PodInfo, PortKey,
};

use super::{
    PinDir,
    compile::{Compiled, Lpm, compile},
    crash,
    gc::{self, GcReport},
    loader::{attach_sk_lookup, detach_sk_lookup},
    lock::InstallLock,
    maps::{PinnedMaps, fill},
    marker::{Marker, require_installation},
    raw,
};
use crate::{netns::Netns, policy::Policy, routes};

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
    pub policy_id: u32,
    pub replaced_policy: Option<u32>,
    pub entries: usize,
    /// Time from the first map write to the switch.
    pub apply_time: Duration,
    /// Time from the start of the call until the new policy is in force for new connections
    /// (the rest is removing the previous generation).
    pub in_force: Duration,
    /// Things the operator should know (e.g. pod processes outside the attach cgroup).
    pub warnings: Vec<String>,
    /// Garbage collected after the enrollment.
    pub gc: GcReport,
}

/// Checks that a complete installation is pinned at `pins` (the caller holds its lock).
pub(crate) fn require_loaded(pins: &PinDir) -> Result<Marker> {
    let marker = require_installation(pins)?;
    if !pins.is_loaded() {
        bail!(
            "{} holds an incomplete installation (an interrupted unload?): run `interceptor ebpf unload --pin-dir {}`, then load again",
            pins.path().display(),
            pins.path().display()
        );
    }
    Ok(marker)
}

/// Takes the installation's lock (waiting for other commands); fails if nothing is loaded.
pub(crate) fn lock_installation(pins: &PinDir, mode: super::lock::Mode) -> Result<InstallLock> {
    match InstallLock::acquire(pins, mode)? {
        Some(l) => Ok(l),
        None => bail!("eBPF mode is not loaded at {}: run `interceptor ebpf load` first", pins.path().display()),
    }
}

pub fn enroll(policy: &Policy, opts: &EnrollOptions) -> Result<EnrollReport> {
    let Some(path) = opts.netns.path().map(|p| p.to_path_buf()) else { bail!("enroll needs --netns") };
    let t0 = Instant::now();
    // Opened and checked once; every later use (cookie, routes, sk_lookup, listeners) goes
    // through that one descriptor.
    if opts.netns.is_host()? && !opts.allow_host_netns {
        bail!(
            "{} is the host's own network namespace (that of PID 1): enrolling it would intercept the node's traffic. \
             Pass --allow-host-netns if that is really what you want",
            path.display()
        );
    }
    let cookie = opts.netns.cookie()?;
    let snap = routes::snapshot(&opts.netns)?;
    let t_snapshot = t0.elapsed();
    let _lock = lock_installation(&opts.pin_dir, super::lock::Mode::Exclusive)?;
    let marker = require_loaded(&opts.pin_dir)?;
    let mut maps = PinnedMaps::open(&opts.pin_dir)?;
    let old = maps.pods.get(&cookie, 0).ok();
    let policy_id = fresh_policy_id(&maps)?;
    let mut compiled = compile(policy, &snap, policy_id, &opts.pod_ips)?;
    if let Some(config) = compiled.config.as_mut() {
        // What the programs see is the kernel's UID: a pod with its own user namespace maps
        // the proxy's UID to another one.
        config.proxy_uid = crate::userns::kernel_uid(&opts.netns, policy.proxy_uid)?;
    }
    check_addresses(&maps, cookie, &path, &compiled)?;
    let t_compiled = t0.elapsed();

    let started = Instant::now();
    let records = compiled.records();
    if let Err(e) = write_generation(&mut maps, &compiled, &records) {
        delete_generation(&mut maps, policy_id, None);
        return Err(e.context("writing the policy failed; the pod keeps its previous policy"));
    }
    crash::point("enroll-generation-written");
    let t_written = t0.elapsed();
    let netns_fd = opts.netns.fd()?.ok_or_else(|| anyhow!("enroll needs --netns"))?;
    let attached = attach_sk_lookup(&opts.pin_dir, cookie, netns_fd).and_then(|()| {
        crash::point("enroll-sk-lookup-attached");
        set_addresses(&mut maps, cookie, &compiled)
    });
    if let Err(e) = attached {
        delete_generation(&mut maps, policy_id, None);
        if old.is_none() {
            // Nothing of a first enrollment may stay behind.
            let _ = unenroll_locked(&opts.pin_dir, &mut maps, cookie, false);
        }
        return Err(e);
    }
    crash::point("enroll-addresses-set");
    let t_attached = t0.elapsed();
    let config = compiled.config.expect("compile sets the config");
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
    };
    maps.pod_info.insert(cookie, info, 0)?;
    crash::point("enroll-info-written");

    let mut t_barrier = t0.elapsed();
    if let Some(old) = old {
        raw::rcu_barrier().context("waiting for running programs")?;
        t_barrier = t0.elapsed();
        delete_generation(&mut maps, old.policy_id, Some("enroll-old-generation-half-deleted"));
    }
    tracing::debug!(
        "enroll timings: snapshot {t_snapshot:?}, compiled {t_compiled:?}, written {t_written:?}, sk_lookup {t_attached:?}, switched {t_switched:?}, rcu {t_barrier:?}, done {:?}",
        t0.elapsed()
    );
    let gc = gc::collect(&opts.pin_dir, &mut maps, false).unwrap_or_else(|e| {
        tracing::warn!("garbage collection after enroll failed: {e:#}");
        GcReport::default()
    });
    let mut warnings = Vec::new();
    match super::cgroup::processes_outside(&opts.netns, marker.cgroup_id) {
        Ok(outside) if !outside.is_empty() => {
            let pids: Vec<String> = outside.iter().take(8).map(|(p, c)| format!("{p} in {c}")).collect();
            warnings.push(format!(
                "{} process(es) of {} are not under the cgroup eBPF mode is attached to ({}): their connections are \
                 not intercepted (pids {}{})",
                outside.len(),
                path.display(),
                marker.cgroup_path(),
                pids.join(", "),
                if outside.len() > 8 { ", …" } else { "" }
            ));
        }
        Ok(_) => {}
        Err(e) => tracing::debug!("cannot check the pod's cgroups: {e:#}"),
    }
    Ok(EnrollReport {
        netns_cookie: cookie,
        policy_id,
        replaced_policy: old.map(|o| o.policy_id),
        entries: compiled.entry_count(),
        apply_time,
        in_force: t_switched,
        warnings,
        gc,
    })
}

/// Stops intercepting a pod: its sockets behave as if eBPF mode were not loaded.
pub fn unenroll(netns: &Netns, pins: &PinDir) -> Result<bool> {
    let cookie = netns.cookie()?;
    unenroll_cookie(pins, cookie)
}

/// Stops intercepting the pod of a network namespace cookie (also when the namespace is gone).
pub fn unenroll_cookie(pins: &PinDir, cookie: u64) -> Result<bool> {
    let _lock = lock_installation(pins, super::lock::Mode::Exclusive)?;
    require_loaded(pins)?;
    let mut maps = PinnedMaps::open(pins)?;
    let done = unenroll_locked(pins, &mut maps, cookie, true)?;
    if let Err(e) = gc::collect(pins, &mut maps, false) {
        tracing::warn!("garbage collection after unenroll failed: {e:#}");
    }
    Ok(done)
}

/// Unenrolls with the lock held: the switch first (`PODS`), then the link, the pod's
/// addresses and info, and (after an RCU barrier) its generation and counters. Also removes
/// the leftovers of a pod that has no `PODS` entry. `crash_points`: the test hooks of the
/// `unenroll` command (not of gc's use of it).
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
    set_addresses(maps, cookie, &Compiled::default())?;
    point("unenroll-addresses-cleared");
    super::listeners::forget(pins, cookie)?;
    // Connections still being handed over count down this entry when they complete; it
    // goes once nothing is in flight (the pod makes no new ones).
    if maps.pod_tracking.get(&cookie, 0).is_ok_and(|t| t.in_flight == 0) {
        let _ = maps.pod_tracking.remove(&cookie);
    }
    if let Some(old) = old {
        raw::rcu_barrier()?;
        delete_generation(maps, old.policy_id, crash_points.then_some("unenroll-generation-half-deleted"));
    }
    let keys: Vec<CounterKey> =
        maps.counters.keys().filter_map(Result::ok).filter(|k| k.netns_cookie == cookie).collect();
    for k in keys {
        let _ = maps.counters.remove(&k);
    }
    Ok(old.is_some())
}

/// A random policy id no pod uses and no generation holds (ids are never 0).
fn fresh_policy_id(maps: &PinnedMaps) -> Result<u32> {
    let used: Vec<u32> = maps.pods.iter().filter_map(Result::ok).map(|(_, c)| c.policy_id).collect();
    for _ in 0..64 {
        let mut b = [0u8; 4];
        getrandom(&mut b)?;
        let id = u32::from_ne_bytes(b);
        let recorded = maps.generations.get(&GenerationKey { policy_id: id, chunk: 0 }, 0).is_ok();
        if id != 0 && !used.contains(&id) && !recorded {
            return Ok(id);
        }
    }
    Err(anyhow!("cannot find a free policy id"))
}

fn getrandom(buf: &mut [u8]) -> Result<()> {
    // SAFETY: valid buffer and length.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n as usize != buf.len() {
        bail!("getrandom failed: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn map_fd<M: IterableMap<K, V>, K: aya::Pod, V>(m: &M) -> BorrowedFd<'_> {
    m.map().fd().as_fd()
}

/// Packs LPM keys as the kernel reads them: prefix length, then the data.
fn lpm_keys<'a>(keys: impl Iterator<Item = &'a Lpm>) -> Vec<u8> {
    let mut out = Vec::new();
    for (len, data) in keys {
        out.extend_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(bytemuck::bytes_of(data));
    }
    out
}

/// Refuses a pod holding an address that is enrolled for another pod: inbound steering and
/// status must never confuse two pods. (An address left by a pod that is no longer enrolled
/// is taken over.)
fn check_addresses(maps: &PinnedMaps, cookie: u64, netns: &std::path::Path, c: &Compiled) -> Result<()> {
    for k in &c.addrs {
        let Ok(other) = maps.pod_addrs.get(k, 0) else { continue };
        if other == cookie || maps.pods.get(&other, 0).is_err() {
            continue;
        }
        let other_netns =
            maps.pod_info.get(&other, 0).map(|i| super::maps::c_str(&i.netns_path)).unwrap_or_else(|_| "?".into());
        bail!(
            "address {} of {} is already enrolled for the pod of network namespace {other_netns} (cookie {other}): pod addresses must be unique on a node; unenroll that pod first",
            crate::ebpf::status::addr_text(k),
            netns.display(),
        );
    }
    Ok(())
}

/// Points the pod's current addresses at it (and drops addresses it no longer has).
fn set_addresses(maps: &mut PinnedMaps, cookie: u64, c: &Compiled) -> Result<()> {
    let stale: Vec<PodAddrKey> = maps
        .pod_addrs
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| *v == cookie && !c.addrs.contains(k))
        .map(|(k, _)| k)
        .collect();
    for k in &c.addrs {
        maps.pod_addrs.insert(*k, cookie, 0).context("POD_ADDRS is full")?;
    }
    for k in stale {
        let _ = maps.pod_addrs.remove(&k);
    }
    Ok(())
}

/// Writes a generation with one batch update per map, and the list of what it wrote.
fn write_generation(maps: &mut PinnedMaps, c: &Compiled, records: &[GenerationRecord]) -> Result<()> {
    let Some(config) = c.config else { bail!("nothing compiled") };
    let chunks = generation_chunks(records);
    let chunk_keys: Vec<u8> = (0..chunks.len() as u32)
        .flat_map(|chunk| bytemuck::bytes_of(&GenerationKey { policy_id: config.policy_id, chunk }).to_vec())
        .collect();
    let chunk_values: Vec<u8> = chunks.iter().flat_map(|c| bytemuck::bytes_of(c).to_vec()).collect();
    raw::update_batch(map_fd(&maps.generations), &chunk_keys, &chunk_values, chunks.len())
        .context("writing GENERATIONS (full?)")?;
    let ones = |n: usize| vec![1u8; n];
    raw::update_batch(map_fd(&maps.excluded), &lpm_keys(c.excluded.iter()), &ones(c.excluded.len()), c.excluded.len())
        .context("writing EXCLUDED_CIDRS (full?)")?;
    raw::update_batch(map_fd(&maps.included), &lpm_keys(c.included.iter()), &ones(c.included.len()), c.included.len())
        .context("writing INCLUDED_CIDRS (full?)")?;
    let route_values: Vec<u8> = c.routes.iter().flat_map(|(_, v)| bytemuck::bytes_of(v).to_vec()).collect();
    raw::update_batch(map_fd(&maps.routes), &lpm_keys(c.routes.iter().map(|(k, _)| k)), &route_values, c.routes.len())
        .context("writing ROUTES (full?)")?;
    let port_keys: Vec<u8> = c.ports.iter().flat_map(|(k, _)| bytemuck::bytes_of(k).to_vec()).collect();
    let port_values: Vec<u8> = c.ports.iter().map(|(_, f)| *f).collect();
    raw::update_batch(map_fd(&maps.ports), &port_keys, &port_values, c.ports.len()).context("writing PORTS (full?)")?;
    let iface_keys: Vec<u8> = c.ifaces.iter().flat_map(|k| bytemuck::bytes_of(k).to_vec()).collect();
    raw::update_batch(map_fd(&maps.ifaces), &iface_keys, &ones(c.ifaces.len()), c.ifaces.len())
        .context("writing IFACES (full?)")?;
    Ok(())
}

fn generation_chunks(records: &[GenerationRecord]) -> Vec<GenerationChunk> {
    records
        .chunks(GENERATION_CHUNK)
        .map(|part| {
            let mut chunk = GenerationChunk::zeroed();
            chunk.records[..part.len()].copy_from_slice(part);
            chunk
        })
        .collect()
}

/// The length of the map key a generation record of `kind` holds (the rest is padding).
fn record_key_len(kind: u32) -> usize {
    match kind {
        GenerationRecord::KIND_PORT => size_of::<PortKey>(),
        GenerationRecord::KIND_IFACE => size_of::<IfaceKey>(),
        _ => 4 + size_of::<CidrData>(),
    }
}

/// Deletes every entry of one policy generation, found from its own record list (so the
/// cost is its own size, however many other pods there are), then the list itself: killed
/// in between, the list still names what is left, for gc. Best effort: a missing entry is
/// fine. `crash_step`: the test hook between the two.
pub(crate) fn delete_generation(maps: &mut PinnedMaps, policy_id: u32, crash_step: Option<&str>) {
    let mut keys: [Vec<u8>; 6] = Default::default();
    let mut chunk_keys = Vec::new();
    for chunk in 0u32.. {
        let key = GenerationKey { policy_id, chunk };
        let Ok(c) = maps.generations.get(&key, 0) else { break };
        chunk_keys.extend_from_slice(bytemuck::bytes_of(&key));
        for r in c.records.iter().filter(|r| r.kind != GenerationRecord::KIND_UNUSED) {
            if let Some(v) = keys.get_mut(r.kind as usize) {
                v.extend_from_slice(&r.key[..record_key_len(r.kind)]);
            }
        }
    }
    let targets: [(u32, BorrowedFd<'_>); 5] = [
        (GenerationRecord::KIND_EXCLUDED, map_fd(&maps.excluded)),
        (GenerationRecord::KIND_INCLUDED, map_fd(&maps.included)),
        (GenerationRecord::KIND_ROUTE, map_fd(&maps.routes)),
        (GenerationRecord::KIND_PORT, map_fd(&maps.ports)),
        (GenerationRecord::KIND_IFACE, map_fd(&maps.ifaces)),
    ];
    for (kind, map) in targets {
        let key_size = record_key_len(kind);
        let mine = &keys[kind as usize];
        if raw::delete_batch(map, mine, mine.len() / key_size).is_err() {
            for k in mine.chunks(key_size) {
                let _ = raw::delete_batch(map, k, 1);
            }
        }
    }
    if let Some(step) = crash_step {
        crash::point(step);
    }
    let n = chunk_keys.len() / size_of::<GenerationKey>();
    let _ = raw::delete_batch(map_fd(&maps.generations), &chunk_keys, n);
}
