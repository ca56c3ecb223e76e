//! The cgroup the programs attach to, and whether a pod's processes are under it.
//!
//! By default eBPF mode attaches at the cgroup v2 root, so that every pod of the node is
//! under the programs. Inside a container with a private cgroup namespace (or with a
//! subtree bind-mounted as its cgroup2 filesystem) the "root" it sees is its own cgroup:
//! attaching there would intercept nothing of the pods while `load` reported success. The
//! real root cgroup is the only one without a `cgroup.type` file, so a default attach point
//! that has one is refused; `--cgroup` chooses another attach point explicitly.
use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::{EbpfError, error::Context};
use crate::netns::Netns;

type Result<T, E = EbpfError> = std::result::Result<T, E>;

/// The cgroup v2 mount point, from /proc/mounts (/sys/fs/cgroup on most nodes,
/// /sys/fs/cgroup/unified on hybrid hierarchies).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = mount_points("cgroup2").context("cannot read /proc/mounts")?;
    mounts.into_iter().next().ok_or(EbpfError::NoCgroup2)
}

/// Where filesystems of `fstype` (`cgroup2`, `cgroup`, `bpf`, …) are mounted, in
/// /proc/mounts' order.
pub fn mount_points(fstype: &str) -> std::io::Result<Vec<PathBuf>> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    Ok(mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, dir, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == fstype).then(|| PathBuf::from(dir))
        })
        .collect())
}

/// Whether a cgroup2 directory is the root cgroup of the whole hierarchy (the kernel gives
/// every other cgroup a `cgroup.type` file).
pub fn is_root_cgroup(dir: &Path) -> bool {
    !dir.join("cgroup.type").exists()
}

/// The cgroup id (the inode of its cgroup2 directory).
pub fn cgroup_id(dir: &Path) -> Result<u64> {
    Ok(fs::metadata(dir).with_context(|| format!("cannot stat cgroup {}", dir.display()))?.ino())
}

/// The attach point: `--cgroup` as given (it must be a cgroup v2 directory), else the cgroup
/// v2 root, which must be the host's.
pub fn attach_cgroup(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(c) = explicit {
        let fs = nix::sys::statfs::statfs(c).with_context(|| format!("cannot open cgroup {}", c.display()))?;
        if fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
            return Err(EbpfError::NotCgroup2 { dir: c.to_path_buf() });
        }
        return fs::canonicalize(c).with_context(|| format!("cannot resolve cgroup {}", c.display()));
    }
    let root = cgroup2_root()?;
    if !is_root_cgroup(&root) {
        return Err(EbpfError::NotHostCgroupRoot { root });
    }
    Ok(root)
}

/// The processes in `netns` whose cgroup is not `attach_id` or below it: (pid, cgroup path).
pub fn processes_outside(netns: &Netns, attach_id: u64) -> Result<Vec<(u32, String)>> {
    let want = netns.id()?;
    Ok(processes_outside_of(&HashSet::from([want]), attach_id)?.remove(&want).unwrap_or_default())
}

/// A network namespace's identity: (device, inode) of its nsfs file.
pub type NetnsId = (u64, u64);

/// [`processes_outside`] for several network namespaces in one walk of /proc: (pid, cgroup
/// path) by namespace, only for the namespaces with such processes.
pub fn processes_outside_of(
    netns_ids: &HashSet<NetnsId>,
    attach_id: u64,
) -> Result<HashMap<NetnsId, Vec<(u32, String)>>> {
    let mut out: HashMap<NetnsId, Vec<(u32, String)>> = HashMap::new();
    let root = cgroup2_root()?;
    if cgroup_id(&root)? == attach_id || netns_ids.is_empty() {
        return Ok(out);
    }
    for entry in fs::read_dir("/proc").context("cannot list /proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(m) = fs::metadata(entry.path().join("ns/net")) else { continue };
        let id = (m.dev(), m.ino());
        if !netns_ids.contains(&id) {
            continue;
        }
        let Ok(text) = fs::read_to_string(entry.path().join("cgroup")) else { continue };
        let Some(rel) = text.lines().find_map(|l| l.strip_prefix("0::")) else { continue };
        let dir = root.join(rel.trim_start_matches('/'));
        let under = dir.ancestors().take_while(|a| a.starts_with(&root)).any(|a| cgroup_id(a).ok() == Some(attach_id));
        if !under {
            out.entry(id).or_default().push((pid, rel.to_string()));
        }
    }
    Ok(out)
}
