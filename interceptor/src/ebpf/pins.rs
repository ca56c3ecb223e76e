//! The pinned state, all under one directory (default /sys/fs/bpf/interceptor):
//!
//! ```text
//! <dir>/maps/<NAME>                  every map (shared by all programs and pods)
//! <dir>/progs/<program>              the programs (the cgroup ones and steer_inbound)
//! <dir>/links/<program>              the cgroup programs' attachments
//! <dir>/pods/<netns-cookie>/link     steer_inbound's link to the pod's network namespace
//! ```
//!
//! A load builds the tree in `<dir>-staging-<pid>` (bpffs forbids dots in names) and renames it into place, so the directory
//! either holds a complete installation or does not exist.
use std::path::{Path, PathBuf};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/interceptor";

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

    /// Whether a complete installation is pinned here.
    pub fn is_loaded(&self) -> bool {
        self.map(interceptor_common::map_names::PODS).exists()
            && self.prog(super::object::SK_LOOKUP_PROGRAM).exists()
            && super::object::CGROUP_PROGRAMS.iter().all(|(p, _)| self.link(p).exists())
    }

    /// The staging directory of a load.
    pub fn staging(&self) -> PinDir {
        let name = self.root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        PinDir::new(self.root.with_file_name(format!("{name}-staging-{}", std::process::id())))
    }

    pub fn path(&self) -> &Path {
        &self.root
    }
}
