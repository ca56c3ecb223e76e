//! enroll / unenroll: a pod's policy into the maps, switched atomically.
//!
//! A new policy generation is written under a fresh policy id while the old one keeps
//! deciding; replacing the pod's one `PODS` entry switches every new connection at once;
//! after an RCU barrier (no program run can still hold the old id) the old generation is
//! deleted. Established connections are never touched.
use std::{
    fs::File,
    net::IpAddr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::lpm_trie::Key;
use interceptor_common::{CounterKey, IfaceKey, PodInfo, PortKey};

use super::{
    PinDir,
    compile::{Compiled, compile},
    loader::{attach_sk_lookup, detach_sk_lookup},
    maps::{PinnedMaps, fill},
    raw,
};
use crate::{netns::Netns, policy::Policy, routes};

#[derive(Clone, Debug)]
pub struct EnrollOptions {
    pub netns: Netns,
    pub pod_ips: Vec<IpAddr>,
    pub pin_dir: PinDir,
    pub pod_name: Option<String>,
}

#[derive(Clone, Debug)]
pub struct EnrollReport {
    pub netns_cookie: u64,
    pub policy_id: u32,
    pub replaced_policy: Option<u32>,
    pub entries: usize,
    /// Time from the first map write to the switch (what a live change costs).
    pub apply_time: Duration,
}

fn require_loaded(pins: &PinDir) -> Result<()> {
    if !pins.is_loaded() {
        bail!("eBPF mode is not loaded at {}: run `interceptor ebpf load` first", pins.path().display());
    }
    Ok(())
}

pub fn enroll(policy: &Policy, opts: &EnrollOptions) -> Result<EnrollReport> {
    require_loaded(&opts.pin_dir)?;
    let Some(path) = &opts.netns.path else { bail!("enroll needs --netns") };
    let netns_file = File::open(path).with_context(|| format!("cannot open network namespace {}", path.display()))?;
    let cookie = opts.netns.cookie()?;
    let snap = routes::snapshot(&opts.netns)?;
    let mut maps = PinnedMaps::open(&opts.pin_dir)?;
    let old = maps.pods.get(&cookie, 0).ok();
    let policy_id = fresh_policy_id(&maps)?;
    let compiled = compile(policy, &snap, policy_id, &opts.pod_ips)?;

    let started = Instant::now();
    if let Err(e) = write_generation(&mut maps, &compiled) {
        delete_generation(&mut maps, policy_id);
        return Err(e.context("writing the policy failed; the pod keeps its previous policy"));
    }
    if let Err(e) = attach_sk_lookup(&opts.pin_dir, cookie, &netns_file) {
        delete_generation(&mut maps, policy_id);
        return Err(e);
    }
    let config = compiled.config.expect("compile sets the config");
    maps.pods.insert(cookie, config, 0).context("switching the pod to its new policy failed")?;
    let apply_time = started.elapsed();

    let info = PodInfo {
        netns_path: fill(&path.display().to_string()),
        pod_name: fill(opts.pod_name.as_deref().unwrap_or("")),
        enrolled_at: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    };
    maps.pod_info.insert(cookie, info, 0)?;

    if let Some(old) = old {
        raw::rcu_barrier().context("waiting for running programs")?;
        delete_generation(&mut maps, old.policy_id);
    }
    Ok(EnrollReport {
        netns_cookie: cookie,
        policy_id,
        replaced_policy: old.map(|o| o.policy_id),
        entries: compiled.entry_count(),
        apply_time,
    })
}

/// Stops intercepting a pod: its sockets behave as if eBPF mode were not loaded.
pub fn unenroll(netns: &Netns, pins: &PinDir) -> Result<bool> {
    require_loaded(pins)?;
    let cookie = netns.cookie()?;
    unenroll_cookie(pins, cookie)
}

pub fn unenroll_cookie(pins: &PinDir, cookie: u64) -> Result<bool> {
    let mut maps = PinnedMaps::open(pins)?;
    let old = maps.pods.get(&cookie, 0).ok();
    if old.is_some() {
        maps.pods.remove(&cookie)?;
    }
    detach_sk_lookup(pins, cookie)?;
    let _ = maps.pod_info.remove(&cookie);
    if let Some(old) = old {
        raw::rcu_barrier()?;
        delete_generation(&mut maps, old.policy_id);
        let keys: Vec<CounterKey> = maps.counters.keys().filter_map(Result::ok).filter(|k| k.netns_cookie == cookie).collect();
        for k in keys {
            let _ = maps.counters.remove(&k);
        }
    }
    Ok(old.is_some())
}

/// A random policy id no pod uses (ids are never 0).
fn fresh_policy_id(maps: &PinnedMaps) -> Result<u32> {
    let used: Vec<u32> = maps.pods.iter().filter_map(Result::ok).map(|(_, c)| c.policy_id).collect();
    for _ in 0..64 {
        let mut b = [0u8; 4];
        getrandom(&mut b)?;
        let id = u32::from_ne_bytes(b);
        if id != 0 && !used.contains(&id) {
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

fn write_generation(maps: &mut PinnedMaps, c: &Compiled) -> Result<()> {
    for (len, data) in &c.excluded {
        maps.excluded.insert(&Key::new(*len, *data), 1, 0).context("EXCLUDED_CIDRS is full")?;
    }
    for (len, data) in &c.included {
        maps.included.insert(&Key::new(*len, *data), 1, 0).context("INCLUDED_CIDRS is full")?;
    }
    for ((len, data), value) in &c.routes {
        maps.routes.insert(&Key::new(*len, *data), *value, 0).context("ROUTES is full")?;
    }
    for (key, flags) in &c.ports {
        maps.ports.insert(*key, *flags, 0).context("PORTS is full")?;
    }
    for key in &c.ifaces {
        maps.ifaces.insert(*key, 1, 0).context("IFACES is full")?;
    }
    Ok(())
}

/// Deletes every entry of one policy generation (best effort: a missing entry is fine).
fn delete_generation(maps: &mut PinnedMaps, policy_id: u32) {
    let id = policy_id.to_be_bytes();
    for trie in [&mut maps.excluded, &mut maps.included] {
        let keys: Vec<_> = trie.keys().filter_map(Result::ok).filter(|k| k.data().policy_id_be == id).collect();
        for k in keys {
            let _ = trie.remove(&k);
        }
    }
    let keys: Vec<_> = maps.routes.keys().filter_map(Result::ok).filter(|k| k.data().policy_id_be == id).collect();
    for k in keys {
        let _ = maps.routes.remove(&k);
    }
    let keys: Vec<PortKey> = maps.ports.keys().filter_map(Result::ok).filter(|k| k.policy_id == policy_id).collect();
    for k in keys {
        let _ = maps.ports.remove(&k);
    }
    let keys: Vec<IfaceKey> = maps.ifaces.keys().filter_map(Result::ok).filter(|k| k.policy_id == policy_id).collect();
    for k in keys {
        let _ = maps.ifaces.remove(&k);
    }
}
