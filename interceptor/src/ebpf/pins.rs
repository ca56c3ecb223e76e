//! The pinned state, all under one directory (default /sys/fs/bpf/interceptor):
//!
//! ```text
//! <dir>/installation                 the marker: an array map holding a magic value and the
//!                                    attach cgroup (see `marker`), written last at load
//! <dir>/maps/<NAME>                  every map (shared by all programs and pods)
//! <dir>/progs/<program>              the programs (the cgroup ones and steer_inbound)
//! <dir>/progs/<program>-next         an upgrade's new program, before it is renamed over the old
//! <dir>/links/<program>              the cgroup programs' attachments
//! <dir>/pods/<netns-cookie>/link     steer_inbound's link to the pod's network namespace
//! ```
//!
//! A load builds the tree in `<dir>-staging-<pid>` (bpffs forbids dots in names) and renames it into place, so the directory
//! either holds a complete installation or does not exist.
use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
};

use interceptor_common::map_names;
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

use super::{
    EbpfError,
    error::Context,
    object::{CGROUP_PROGRAMS, SK_LOOKUP_PROGRAM, program_names},
};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/interceptor";

/// Suffix of an upgrade's new program pins (bpffs forbids dots).
const NEXT_SUFFIX: &str = "-next";

#[derive(Clone, Debug)]
pub struct PinDir {
    pub root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> PinDir {
        PinDir { root: root.into() }
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }
    pub fn prog(&self, name: &str) -> PathBuf {
        self.root.join("progs").join(name)
    }
    /// Where an upgrade pins a new program before renaming it over `prog(name)`.
    pub fn prog_next(&self, name: &str) -> PathBuf {
        self.root.join("progs").join(format!("{name}{NEXT_SUFFIX}"))
    }
    pub fn link(&self, name: &str) -> PathBuf {
        self.root.join("links").join(name)
    }
    pub fn pods(&self) -> PathBuf {
        self.root.join("pods")
    }
    pub fn pod(&self, cookie: u64) -> PathBuf {
        self.pods().join(cookie.to_string())
    }
    pub fn pod_link(&self, cookie: u64) -> PathBuf {
        self.pod(cookie).join("link")
    }
    /// The installation marker (see `marker`).
    pub fn marker(&self) -> PathBuf {
        self.root.join("installation")
    }

    /// Whether a complete installation is pinned here.
    pub fn is_loaded(&self) -> bool {
        self.marker().exists()
            && self.map(map_names::PODS).exists()
            && self.prog(SK_LOOKUP_PROGRAM).exists()
            && CGROUP_PROGRAMS.iter().all(|(p, _)| self.link(p).exists())
    }

    /// The staging directory of a load.
    pub fn staging(&self) -> PinDir {
        PinDir::new(self.root.with_file_name(format!("{}{}", self.staging_prefix(), std::process::id())))
    }

    /// `<name>-staging-`: the prefix of this directory's staging directories.
    pub fn staging_prefix(&self) -> String {
        let name = self.root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        format!("{name}-staging-")
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Every path an installation may hold, deepest first (pods' links before their
    /// directories, entries before `maps/`, …, the marker last but the root): what `unload`
    /// removes. Anything else found in the directory is not ours and is left alone.
    pub fn known_entries(&self, pods: &[u64]) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for c in pods {
            out.push(self.pod_link(*c));
            out.push(self.pod(*c));
        }
        out.push(self.pods());
        for (name, _) in CGROUP_PROGRAMS {
            out.push(self.link(name));
        }
        out.push(self.root.join("links"));
        for name in program_names() {
            out.push(self.prog(name));
            out.push(self.prog_next(name));
        }
        out.push(self.root.join("progs"));
        for name in map_names::ALL.iter().chain(&map_names::USER) {
            out.push(self.map(name));
        }
        out.push(self.root.join("maps"));
        out.push(self.marker());
        out
    }

    /// An empty directory on bpffs: what an unload killed between removing the marker and
    /// the directory leaves (or a directory made ready for a load). Removing it loses nothing.
    pub fn is_empty_dir_on_bpffs(&self) -> bool {
        on_bpffs(&self.root) && std::fs::read_dir(&self.root).is_ok_and(|mut d| d.next().is_none())
    }

    /// The cookies named by `pods/<cookie>` (decimal names only).
    pub fn pod_dirs(&self) -> Vec<u64> {
        let mut out: Vec<u64> = std::fs::read_dir(self.pods())
            .map(|d| d.flatten().filter_map(|e| decimal(&e.file_name())).collect())
            .unwrap_or_default();
        out.sort_unstable();
        out
    }
}

fn decimal(name: &OsStr) -> Option<u64> {
    let s = name.to_str()?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Whether `path` is on a bpf filesystem.
pub fn on_bpffs(path: &Path) -> bool {
    statfs(path).map(|s| s.filesystem_type() == BPF_FS_MAGIC).unwrap_or(false)
}

/// Makes sure the pin directory's parent exists on a bpf filesystem (creating missing
/// directories on it). interceptor never mounts a bpffs itself: one mounted from inside a
/// container's mount namespace disappears with the container, taking every pin — and so the
/// interception — with it, while the command that mounted it reported success.
pub fn require_bpffs_parent(pins: &PinDir) -> Result<PathBuf, EbpfError> {
    let parent = pins.path().parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let existing = parent.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
    if !on_bpffs(existing) {
        return Err(EbpfError::NoBpffs { dir: pins.path().to_path_buf() });
    }
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    Ok(parent.to_path_buf())
}
