//! Garbage collection: what interrupted commands and departed pods leave behind.
//!
//! The rules (each one safe because every mutating command holds the installation's
//! exclusive lock, so nothing is half-done by a *running* command when gc looks):
//!
//! * a pod whose network namespace is gone (its pinned sk_lookup link reports namespace
//!   inode 0: the kernel detaches a namespace's links when it is destroyed) is unenrolled;
//! * pod state without a `PODS` entry — a pinned link, addresses, info, counters — is what
//!   an enroll killed before its switch or an unenroll killed after it left: removed (the
//!   enroll is rolled back, the unenroll completed);
//! * a policy object no pod refers to (registered in `OBJECTS` or with a record list in
//!   `GENERATIONS`, but named by no `PODS` entry) was written by an enroll killed before its
//!   switch, or dropped by one killed before deleting it: deleted;
//! * `progs/<program>-next` pins are an interrupted upgrade's: removed (the next `load`
//!   completes the upgrade, see `loader`);
//! * (`ebpf gc` only, a full scan) policy entries whose object id is neither referenced nor
//!   recorded, and staging directories of interrupted loads.
//!
//! `ebpf gc` and `load` collect all of it; an enroll or unenroll does when it finds the
//! journal of an interrupted one (`objects::begin`), so that a node with many pods does not
//! pay a scan of every pod's namespace at every command.
use std::{collections::BTreeSet, fs, os::fd::AsFd};

use serde::Serialize;

use super::{
    EbpfError, PinDir,
    enroll::unenroll_locked,
    lock::InstallLock,
    maps::{PinnedMaps, read_all},
    object, objects, raw,
};

type Result<T, E = EbpfError> = std::result::Result<T, E>;

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct GcReport {
    /// Pods whose network namespace is gone, unenrolled (netns cookies).
    pub dead_pods: Vec<u64>,
    /// Pod state without an enrollment (an interrupted enroll or unenroll), removed.
    pub stray_pods: Vec<u64>,
    /// Policy objects no pod referred to, deleted.
    pub orphaned_generations: Vec<u32>,
    /// Policy entries of no object at all, deleted (full gc only).
    pub unrecorded_entries: usize,
    /// Pins of interrupted loads and upgrades, removed.
    pub stale_pins: Vec<String>,
}

impl GcReport {
    pub fn is_empty(&self) -> bool {
        *self == GcReport::default()
    }

    pub fn merge(&mut self, other: GcReport) {
        self.dead_pods.extend(other.dead_pods);
        self.stray_pods.extend(other.stray_pods);
        self.orphaned_generations.extend(other.orphaned_generations);
        self.unrecorded_entries += other.unrecorded_entries;
        self.stale_pins.extend(other.stale_pins);
    }

    /// One line per finding, for the command line.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.dead_pods.is_empty() {
            out.push(format!(
                "unenrolled {} pod(s) whose network namespace is gone (netns cookies {})",
                self.dead_pods.len(),
                join(&self.dead_pods)
            ));
        }
        if !self.stray_pods.is_empty() {
            out.push(format!(
                "removed what interrupted enroll/unenroll commands left for netns cookie(s) {}",
                join(&self.stray_pods)
            ));
        }
        if !self.orphaned_generations.is_empty() {
            out.push(format!(
                "deleted {} policy generation(s) no pod referenced (objects {})",
                self.orphaned_generations.len(),
                join(&self.orphaned_generations)
            ));
        }
        if self.unrecorded_entries > 0 {
            out.push(format!("deleted {} policy entries of no generation", self.unrecorded_entries));
        }
        if !self.stale_pins.is_empty() {
            out.push(format!("removed pins of interrupted commands: {}", self.stale_pins.join(", ")));
        }
        out
    }
}

fn join<T: ToString>(v: &[T]) -> String {
    v.iter().map(T::to_string).collect::<Vec<_>>().join(", ")
}

/// `interceptor ebpf gc`: everything below, with the full scan.
pub fn gc(pins: &PinDir) -> Result<GcReport> {
    super::marker::require_installation(pins)?;
    let _lock = InstallLock::with_parent(pins)?;
    super::marker::require_loaded(pins)?;
    let mut report = GcReport { stale_pins: remove_stale_staging(pins), ..GcReport::default() };
    let mut maps = PinnedMaps::open(pins)?;
    report.merge(collect(pins, &mut maps, true)?);
    // Whatever an interrupted enroll or unenroll left is repaired.
    objects::end(&mut maps);
    Ok(report)
}

/// Finds and removes garbage; the caller holds the installation's exclusive lock. `full`
/// also scans every policy entry (its cost is the size of the maps, not of one pod).
pub(crate) fn collect(pins: &PinDir, maps: &mut PinnedMaps, full: bool) -> Result<GcReport> {
    let mut report = GcReport::default();
    for name in object::program_names() {
        let next = pins.prog_next(name);
        if next.exists() && fs::remove_file(&next).is_ok() {
            report.stale_pins.push(next.display().to_string());
        }
    }
    let enrolled: BTreeSet<u64> = objects::pods(maps)?.into_iter().map(|(c, _)| c).collect();

    for cookie in pins.pod_dirs() {
        if enrolled.contains(&cookie) && netns_gone(pins, cookie) {
            unenroll_locked(pins, maps, cookie, false)?;
            report.dead_pods.push(cookie);
        }
    }

    let mut others: BTreeSet<u64> = pins.pod_dirs().into_iter().collect();
    others.extend(read_all(&maps.pod_addrs)?.into_iter().map(|(_, c)| c));
    others.extend(maps.pod_info.keys().filter_map(Result::ok));
    others.extend(maps.counters.keys().filter_map(Result::ok).map(|k| k.netns_cookie));
    for cookie in others {
        if !enrolled.contains(&cookie) && !report.dead_pods.contains(&cookie) {
            unenroll_locked(pins, maps, cookie, false)?;
            report.stray_pods.push(cookie);
        }
    }

    // Counts a killed command left too high.
    objects::recount(maps)?;
    let referenced = objects::referenced(maps)?;
    let recorded = objects::recorded(maps)?;
    let orphans: Vec<u32> = recorded.difference(&referenced).copied().collect();
    if !orphans.is_empty() {
        // An interrupted unenroll may have removed the pod's entry a moment ago: let every
        // program run that could still hold the id finish first.
        raw::rcu_barrier()?;
        for id in &orphans {
            objects::delete(maps, *id, None);
        }
        report.orphaned_generations = orphans;
    }

    if full {
        let keep: BTreeSet<u32> = referenced.union(&objects::recorded(maps)?).copied().collect();
        report.unrecorded_entries = objects::delete_unrecorded(maps, &keep)?;
    }
    Ok(report)
}

/// Whether the pod's network namespace is gone: its pinned sk_lookup link reports namespace
/// inode 0 (the kernel detached it when the namespace was destroyed).
pub fn netns_gone(pins: &PinDir, cookie: u64) -> bool {
    let Ok(link) = raw::obj_get(&pins.pod_link(cookie)) else { return false };
    raw::link_info(link.as_fd()).is_ok_and(|i| i.netns_gone())
}

/// Removes the staging directories of interrupted loads of this installation (the caller
/// holds the parent directory's lock, which every load holds while it stages). Only the
/// entries an installation holds are removed; a staging directory holding anything else
/// is left.
pub(crate) fn remove_stale_staging(pins: &PinDir) -> Vec<String> {
    let mut out = Vec::new();
    let (Some(parent), prefix) = (pins.path().parent(), pins.staging_prefix()) else { return out };
    let Ok(entries) = fs::read_dir(parent) else { return out };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix) else { continue };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let staging = PinDir::new(e.path());
        remove_known(&staging, &staging.pod_dirs());
        if fs::remove_dir(staging.path()).is_ok() {
            out.push(staging.path().display().to_string());
        }
    }
    out
}

/// Removes the known entries of an installation (deepest first); returns what was removed.
pub(crate) fn remove_known(pins: &PinDir, pods: &[u64]) -> usize {
    let mut n = 0;
    for p in pins.known_entries(pods) {
        let Ok(m) = fs::symlink_metadata(&p) else { continue };
        let removed = if m.is_dir() { fs::remove_dir(&p) } else { fs::remove_file(&p) };
        if removed.is_ok() {
            n += 1;
        }
    }
    n
}
