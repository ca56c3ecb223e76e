//! Adopting the inbound listeners that existed before the pod was enrolled, or before its
//! inbound port changed.
//!
//! The sock_ops program registers the sidecar's 15003 listener when the sidecar calls
//! listen(); a sidecar already listening when its pod is enrolled (e.g. eBPF mode loaded on
//! a running node) would never be registered, and its pod's inbound connections would be
//! refused until it restarts. At enroll, the listener is found over sock_diag (or in
//! /proc/net where sock_diag cannot answer: `sock_diag`), its socket is taken from the
//! owning process with pidfd_getfd(2) (Linux 5.6+) and put in `LISTENERS`, exactly as the
//! program does.
use std::{
    fs,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::fs::MetadataExt,
};

use aya::maps::{Map, MapData, SockHash};
use interceptor_common::{AF_INET, AF_INET6, ListenerKey, capacity::LISTENER_SLOTS, map_names};

use super::{EbpfError, PinDir, error::Context, sock_diag::tcp_listeners};
use crate::netns::Netns;

type Result<T, E = EbpfError> = std::result::Result<T, E>;

/// The listening TCP sockets of the namespace on `port` owned by `uid` (the kernel's UID,
/// as the initial user namespace sees it): (socket inode, family), in the namespace the
/// calling thread has joined ([`tcp_listeners`]: sock_diag, or /proc/net where the kernel's
/// sock_diag cannot answer).
fn listeners_on(port: u16, uid: u32) -> Result<Vec<(u64, u16)>> {
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        for l in tcp_listeners(family)? {
            if l.port == port && l.uid == uid {
                out.push((l.inode, family));
            }
        }
    }
    Ok(out)
}

/// A process of the namespace (device, inode) holding socket `inode`, and its fd number.
fn holder(netns: (u64, u64), inode: u64) -> Option<(i32, i32)> {
    let want = format!("socket:[{inode}]");
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let in_ns = fs::metadata(entry.path().join("ns/net")).map(|m| (m.dev(), m.ino()) == netns).unwrap_or(false);
        if !in_ns {
            continue;
        }
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).map(|l| l.to_string_lossy() == want).unwrap_or(false)
                && let Ok(n) = fd.file_name().to_string_lossy().parse()
            {
                return Some((pid, n));
            }
        }
    }
    None
}

/// A duplicate of another process's file descriptor.
fn take_fd(pid: i32, fd: i32) -> Result<OwnedFd> {
    // SAFETY: plain syscalls; each returned descriptor is new and owned here.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if pidfd < 0 {
            return Err(std::io::Error::last_os_error()).context("pidfd_open");
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let dup = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if dup < 0 {
            return Err(std::io::Error::last_os_error()).context("pidfd_getfd");
        }
        Ok(OwnedFd::from_raw_fd(dup as i32))
    }
}

fn open_listeners(pins: &PinDir) -> Result<SockHash<MapData, ListenerKey>> {
    let data = MapData::from_pin(pins.map(map_names::LISTENERS)).context("open LISTENERS")?;
    SockHash::try_from(Map::SockHash(data)).context("open LISTENERS")
}

/// Forgets every listener registered for the pod (a changed inbound port, or unenroll).
pub fn forget(pins: &PinDir, cookie: u64) -> Result<()> {
    let mut map = open_listeners(pins)?;
    for family in [AF_INET, AF_INET6] {
        for slot in 0..LISTENER_SLOTS {
            let _ = map.remove(&ListenerKey { netns_cookie: cookie, family: family as u32, slot });
        }
    }
    Ok(())
}

/// Registers the namespace's current listeners on `port` owned by the proxy (kernel UID
/// `uid`), replacing what was registered; returns how many.
pub fn adopt(netns: &Netns, pins: &PinDir, cookie: u64, port: u16, uid: u32) -> Result<usize> {
    forget(pins, cookie)?;
    if netns.path().is_none() {
        return Ok(0);
    }
    let netns_id = netns.id()?;
    let found = netns.run(move || listeners_on(port, uid))?;
    if found.is_empty() {
        return Ok(0);
    }
    let mut map = open_listeners(pins)?;
    let mut n = 0;
    for (inode, family) in found {
        let Some((pid, fd)) = holder(netns_id, inode) else { continue };
        let Ok(sock) = take_fd(pid, fd) else { continue };
        // A free slot (BPF_NOEXIST): the program may be registering a new listener as well.
        let registered = (0..LISTENER_SLOTS).any(|slot| {
            let key = ListenerKey { netns_cookie: cookie, family: family as u32, slot };
            map.insert(key, sock.as_raw_fd(), 1).is_ok()
        });
        n += registered as usize;
    }
    Ok(n)
}
