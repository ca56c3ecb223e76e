//! What can go wrong in eBPF mode, by what an operator or a caller can do about it: the pin
//! directory is not (or not completely, or not this layout's) an installation; the kernel
//! lacks a feature or refused a program or a call (naming the bpf command); the build has no
//! programs; the attach cgroup is wrong; a pod cannot be enrolled. A lower-level failure is
//! wrapped with what was being done (`Io`, `Map`, `Step`, …, built with [`Context`]).
use std::{io, net::IpAddr, path::PathBuf};

use aya::{maps::MapError, pin::PinError, programs::ProgramError};
use aya_obj::generated::bpf_cmd;

use super::probe::{MINIMUM_KERNEL, Missing};
use crate::{netns::NetnsError, policy::PodIpError, routes::RoutesError};

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// Nothing is installed at the pin directory.
    #[error("eBPF mode is not loaded at {}: run `interceptor ebpf load` first", dir.display())]
    NotLoaded { dir: PathBuf },
    /// The directory is not one interceptor made: no command touches it.
    #[error("{}", why.explain(dir))]
    NotAnInstallation { dir: PathBuf, why: NotInstallation },
    /// A marked installation with parts missing (an interrupted unload).
    #[error(
        "{d} holds an incomplete installation (an interrupted unload?): run `interceptor ebpf unload --pin-dir {d}`, then load again",
        d = dir.display()
    )]
    Incomplete { dir: PathBuf },
    /// Pinned by a build with another map layout: its pods must be enrolled again.
    #[error(
        "the programs pinned at {} use map layout {pinned} and this build uses {ours}: unload them first (pods must be enrolled again)",
        dir.display()
    )]
    LayoutMismatch { dir: PathBuf, pinned: u32, ours: u32 },
    #[error("{refused}; refusing to load there (nothing was changed): choose another --pin-dir")]
    RefusedToLoad { refused: Box<EbpfError> },
    #[error("refusing to unload {}: {refused}; nothing was removed", dir.display())]
    RefusedToUnload { dir: PathBuf, refused: Box<EbpfError> },
    /// The pin directory would not be on the host's bpffs.
    #[error(
        "{} is not on a bpf filesystem: eBPF mode pins its state on the host's bpffs. Mount it on the host \
         (`mount -t bpf bpf /sys/fs/bpf`), or give this container the host's /sys/fs/bpf (a bpffs mounted \
         inside a container vanishes with it, and so would the interception); or choose --pin-dir on a bpffs",
        dir.display()
    )]
    NoBpffs { dir: PathBuf },
    #[error("{} does not exist", dir.display())]
    NoSuchDirectory { dir: PathBuf },
    #[error("{} is not a directory", dir.display())]
    NotADirectory { dir: PathBuf },
    /// A library function that locks, called by a thread that holds the lock.
    #[error(
        "this thread already holds the lock on {}: a library function that locks was called while holding an InstallLock (it would wait for itself)",
        dir.display()
    )]
    LockedByThisThread { dir: PathBuf },

    /// This kernel cannot run eBPF mode (iptables mode can).
    #[error("{}", kernel_lacks(.0))]
    KernelLacks(Vec<Missing>),
    /// A bpf(2) command failed.
    #[error("bpf({call:?}): {errno}")]
    Syscall { call: bpf_cmd, errno: io::Error },
    /// The verifier refused a program; `log` says why.
    #[error("bpf({call:?}): {errno}; verifier: {log}")]
    Verifier { call: bpf_cmd, errno: io::Error, log: String },
    #[error("the kernel refused program {name}")]
    ProgramRefused { name: String, source: ProgramError },
    #[error(
        "the sk_lookup program was refused (it reads the sk_lookup field ingress_ifindex, Linux 5.17+); use iptables mode on this kernel"
    )]
    SkLookupRefused { source: Box<EbpfError> },

    #[error("this binary was built without its eBPF programs (AYA_BUILD_SKIP); rebuild with `cargo xtask build`")]
    NoPrograms,
    #[error("cannot load the eBPF object")]
    Object { source: Box<aya::EbpfError> },
    #[error("program {name} is missing from the eBPF object")]
    MissingProgram { name: String },
    #[error("unexpected program type for {name}: {kind}")]
    UnexpectedProgram { name: String, kind: String },

    #[error("no cgroup v2 filesystem is mounted (eBPF mode needs cgroup v2); use iptables mode")]
    NoCgroup2,
    /// The default attach point is a private cgroup namespace's root, not the host's.
    #[error(
        "the cgroup v2 filesystem at {} is not the host's root cgroup (this process runs in a private cgroup \
         namespace, or a subtree is mounted there): programs attached there would intercept only that subtree \
         while every pod outside it goes untouched. Run in the host's cgroup namespace (e.g. a daemon with \
         hostPID/--cgroupns=host), or pass --cgroup to choose the attach point explicitly",
        root.display()
    )]
    NotHostCgroupRoot { root: PathBuf },
    #[error("{} is not a cgroup v2 directory (eBPF mode attaches to cgroup v2)", dir.display())]
    NotCgroup2 { dir: PathBuf },

    /// Enrolling the node's own namespace was not asked for.
    #[error(
        "{} is the host's own network namespace (that of PID 1): enrolling it would intercept the node's traffic. \
         Pass --allow-host-netns if that is really what you want",
        netns.display()
    )]
    HostNetns { netns: PathBuf },
    #[error("enroll needs --netns")]
    NoNetns,
    /// Another enrolled pod holds one of the pod's addresses.
    #[error(
        "address {addr} of {} is already enrolled for the pod of network namespace {other_netns} (cookie {other_cookie}): pod addresses must be unique on a node; unenroll that pod first",
        netns.display()
    )]
    AddressInUse { addr: IpAddr, netns: PathBuf, other_netns: String, other_cookie: u64 },
    /// Nothing was switched: the pod keeps its previous policy (or stays unenrolled).
    #[error("writing the policy failed; the pod keeps its previous policy")]
    PolicyNotWritten { source: Box<EbpfError> },
    #[error("no free policy object id near {near:08x} (OBJECTS full?)")]
    NoObjectId { near: u32 },
    /// An upgrade stopped half-way: the next `load` completes it.
    #[error("cannot replace {name} (upgrade interrupted: run `interceptor ebpf load` again to complete it)")]
    UpgradeInterrupted { name: String, source: Box<EbpfError> },

    /// What was being done when a file operation failed.
    #[error("{what}")]
    Io { what: String, source: io::Error },
    /// What was being done when a map operation failed.
    #[error("{what}")]
    Map { what: String, source: MapError },
    #[error("{what}")]
    Program { what: String, source: ProgramError },
    #[error("{what}")]
    Pin { what: String, source: PinError },
    #[error("{what}")]
    Log { what: String, source: aya_log::Error },
    /// What was being done when another step failed.
    #[error("{what}")]
    Step { what: String, source: Box<EbpfError> },
    #[error(transparent)]
    MapAccess(#[from] MapError),
    #[error(transparent)]
    ProgramAccess(#[from] ProgramError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Routes(#[from] RoutesError),
    #[error(transparent)]
    PodIp(#[from] PodIpError),
}

/// Why a directory is not an interceptor installation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotInstallation {
    NotADirectory,
    NotOnBpffs,
    /// No installation marker (or something else pinned under its name).
    NoMarker,
    /// A marker of another format.
    MarkerFormat {
        format: u32,
        known: u32,
    },
}

impl NotInstallation {
    fn explain(&self, dir: &std::path::Path) -> String {
        let d = dir.display();
        match self {
            NotInstallation::NotADirectory => format!("{d} is not a directory, so not an interceptor installation"),
            NotInstallation::NotOnBpffs => {
                format!("{d} is not on a bpf filesystem, so not an interceptor installation")
            }
            NotInstallation::NoMarker => format!(
                "{d} is not an interceptor installation (no installation marker, {}): it may belong to another tool",
                super::PinDir::new(dir).marker().display()
            ),
            NotInstallation::MarkerFormat { format, known } => {
                format!("{d} is an interceptor installation of marker format {format} (this build knows {known})")
            }
        }
    }
}

fn kernel_lacks(missing: &[Missing]) -> String {
    let list: Vec<String> = missing.iter().map(|m| format!("  - {} (Linux {}+)", m.feature, m.since)).collect();
    format!(
        "this kernel lacks what eBPF mode needs (minimum Linux {MINIMUM_KERNEL}):\n{}\nuse iptables mode instead: `interceptor iptables apply`",
        list.join("\n")
    )
}

impl EbpfError {
    /// The errno of the system call at the bottom of it, if one failed.
    pub fn os_error(&self) -> Option<i32> {
        match self {
            EbpfError::Syscall { errno, .. } | EbpfError::Verifier { errno, .. } => errno.raw_os_error(),
            EbpfError::Io { source, .. } => source.raw_os_error(),
            EbpfError::Step { source, .. }
            | EbpfError::PolicyNotWritten { source }
            | EbpfError::SkLookupRefused { source }
            | EbpfError::UpgradeInterrupted { source, .. } => source.os_error(),
            EbpfError::Netns(e) => e.os_error(),
            EbpfError::ProgramRefused { source: ProgramError::LoadError { io_error, .. }, .. } => {
                io_error.raw_os_error()
            }
            _ => None,
        }
    }
}

/// Says what was being done when an operation failed (as anyhow's `context`, into a typed
/// variant).
pub trait Context<T>: Sized {
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, EbpfError>;

    fn context(self, what: impl Into<String>) -> Result<T, EbpfError> {
        self.with_context(|| what.into())
    }
}

impl<T> Context<T> for Result<T, io::Error> {
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, EbpfError> {
        self.map_err(|source| EbpfError::Io { what: what(), source })
    }
}

impl<T> Context<T> for Result<T, nix::Error> {
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, EbpfError> {
        self.map_err(|e| EbpfError::Io { what: what(), source: e.into() })
    }
}

impl<T> Context<T> for Result<T, MapError> {
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, EbpfError> {
        self.map_err(|source| EbpfError::Map { what: what(), source })
    }
}

impl<T> Context<T> for Result<T, ProgramError> {
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, EbpfError> {
        self.map_err(|source| EbpfError::Program { what: what(), source })
    }
}

impl<T> Context<T> for Result<T, PinError> {
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, EbpfError> {
        self.map_err(|source| EbpfError::Pin { what: what(), source })
    }
}

impl<T> Context<T> for Result<T, EbpfError> {
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, EbpfError> {
        self.map_err(|e| EbpfError::Step { what: what(), source: Box::new(e) })
    }
}
