//! Reconcile, at start and periodically: the state file, the pinned eBPF state and the
//! namespaces that exist are made to agree.
//!
//! * a pod whose namespace file is gone (or names another namespace) is removed — the DEL
//!   that never came, or came while the daemon was down;
//! * an eBPF pod that is not in the kernel's maps (someone ran `ebpf unenroll`, or the
//!   programs were unloaded and the daemon loaded them again) is enrolled again;
//! * a pod pinned without a record (the state file was lost) is adopted, or unenrolled if
//!   its namespace is gone;
//! * at start only: a pod whose policy changed while the daemon was down (MeshConfig or
//!   manifest edits) is re-applied, an iptables pod whose rules differ is repaired; pods
//!   that did not change are left alone (a restart re-enrolls nothing);
//! * every eBPF pod has its route watcher.
use std::{collections::BTreeSet, sync::Arc};

use anyhow::Result;

use super::core::{Daemon, netns_identity};
use crate::{
    api::Mode,
    ebpf::{
        self, PinDir,
        maps::{PinnedMaps, c_str},
    },
};

/// (cookie, netns path, pod name) of every pod enrolled in the pinned maps.
fn pinned_pods(pins: &PinDir) -> Result<Vec<(u64, String, String)>> {
    let maps = PinnedMaps::open(pins)?;
    let cookies: Vec<u64> = maps.pods.keys().filter_map(Result::ok).collect();
    Ok(cookies
        .into_iter()
        .map(|c| {
            let info = maps.pod_info.get(&c, 0).ok();
            (
                c,
                info.map(|i| c_str(&i.netns_path)).unwrap_or_default(),
                info.map(|i| c_str(&i.pod_name)).unwrap_or_default(),
            )
        })
        .collect())
}

pub async fn reconcile(d: &Arc<Daemon>, startup: bool) {
    if !startup {
        d.reload_mesh_config("periodic check").await;
    }
    let alive = |r: &super::state::PodRecord| netns_identity(&r.netns).ok() == Some((r.netns_dev, r.netns_ino));
    for r in d.records() {
        if !alive(&r) {
            d.remove_gone(&r.id).await;
        }
    }

    let has_ebpf = d.cfg.mode == Mode::Ebpf || d.records().iter().any(|r| r.mode == Mode::Ebpf);
    if has_ebpf {
        ebpf_state(d).await;
    }

    if startup {
        for r in d.records() {
            match r.mode {
                // Policy drift only; route drift is checked by each watcher as it starts.
                Mode::Ebpf => {
                    d.reapply(&r.id, "startup", false).await;
                }
                Mode::Iptables => match d.inspect(&r.id).await {
                    Ok((_, problems)) if problems.is_empty() => {
                        // Same rules; the policy may still have changed meanwhile.
                        d.reapply(&r.id, "startup", false).await;
                    }
                    Ok((_, problems)) => {
                        tracing::warn!("pod {}/{}: repairing its rules: {}", r.namespace, r.name, problems.join("; "));
                        d.reapply(&r.id, "repair", true).await;
                    }
                    Err(f) => tracing::warn!("pod {}/{}: {}", r.namespace, r.name, f.message),
                },
            }
        }
    }
    for r in d.records() {
        if r.mode == Mode::Ebpf && alive(&r) {
            d.ensure_watcher(&r.id, &r.netns);
        }
    }
    d.save().await;
}

/// The pinned installation and the eBPF pods agree.
async fn ebpf_state(d: &Arc<Daemon>) {
    let pins = d.cfg.pins.clone();
    if !pins.is_loaded() {
        let Some(load) = d.cfg.load.clone() else {
            tracing::error!("eBPF pods exist but nothing is loaded at {}", pins.path().display());
            return;
        };
        // Someone unloaded the programs under a running daemon: interception is off for
        // every eBPF pod. Install again and re-enroll them all.
        tracing::error!("the eBPF programs at {} are gone; loading them again", pins.path().display());
        match tokio::task::spawn_blocking(move || ebpf::load(&load)).await {
            Ok(Ok(outcome)) => tracing::info!("eBPF mode loaded again: {outcome:?}"),
            Ok(Err(e)) => {
                tracing::error!("cannot load eBPF mode: {e:#}");
                return;
            }
            Err(_) => return,
        }
        d.counters.inc("reloaded_programs");
    }
    let p = pins.clone();
    let pinned = match tokio::task::spawn_blocking(move || pinned_pods(&p)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            tracing::error!("cannot read the pinned pods: {e:#}");
            return;
        }
        Err(_) => return,
    };
    let cookies: BTreeSet<u64> = pinned.iter().map(|(c, _, _)| *c).collect();
    let mut known = BTreeSet::new();
    for r in d.records() {
        if r.mode != Mode::Ebpf {
            continue;
        }
        if let Some(c) = r.netns_cookie {
            known.insert(c);
        }
        let enrolled = r.netns_cookie.is_some_and(|c| cookies.contains(&c));
        if !enrolled && netns_identity(&r.netns).ok() == Some((r.netns_dev, r.netns_ino)) {
            tracing::warn!("pod {}/{} is not enrolled in the kernel; enrolling it again", r.namespace, r.name);
            d.reapply(&r.id, "repair", true).await;
        }
    }
    for (cookie, netns, name) in pinned {
        if !known.contains(&cookie) {
            d.adopt_pinned(cookie, netns, name).await;
        }
    }
}
