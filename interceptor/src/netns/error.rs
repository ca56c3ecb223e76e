//! What can go wrong with a pod's namespaces: a path that is not a network namespace (the
//! operator's to fix), a system call the kernel refused, a user namespace eBPF mode cannot
//! see through.
use std::{io, path::PathBuf};

use super::userns::Extent;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {}", path.display())]
    Open { path: PathBuf, source: io::Error },
    /// The path is a file, a directory, a FIFO…: not a namespace at all.
    #[error("{} is not a network namespace: it is {kind} (expected /var/run/netns/NAME or /proc/PID/ns/net)", path.display())]
    NotANamespace { path: PathBuf, kind: &'static str },
    /// A namespace of another type (mount, user, …).
    #[error("{} is a {kind} namespace, not a network namespace", path.display())]
    WrongType { path: PathBuf, kind: &'static str },
    /// A system call on a namespace failed: `what` says which and on what.
    #[error("{what}")]
    Syscall { what: String, source: io::Error },
    /// SO_NETNS_COOKIE: Linux 5.14+.
    #[error("getsockopt(SO_NETNS_COOKIE) failed: {errno} (needs Linux 5.14 or newer)")]
    NoCookie { errno: io::Error },
    #[error("namespace worker thread panicked")]
    WorkerPanicked,
    #[error("the pod's user namespace is nested in another user namespace, which eBPF mode does not support")]
    NestedUserns,
    #[error("could not read the uid_map of the pod's user namespace")]
    NoUidMap,
    #[error("bad uid_map line {line:?}")]
    BadUidMap { line: String },
    #[error(
        "the proxy UID {uid} is not mapped by the pod's user namespace (uid_map {map:?}): its traffic could not be recognised"
    )]
    UidNotMapped { uid: u32, map: Vec<Extent> },
}

impl NetnsError {
    /// A failed system call, with what it was.
    pub fn syscall(what: impl Into<String>, source: io::Error) -> NetnsError {
        NetnsError::Syscall { what: what.into(), source }
    }

    /// The errno of the call that failed, if one did.
    pub fn os_error(&self) -> Option<i32> {
        match self {
            NetnsError::Open { source, .. } | NetnsError::Syscall { source, .. } => source.raw_os_error(),
            NetnsError::NoCookie { errno } => errno.raw_os_error(),
            _ => None,
        }
    }
}
