//! Adopting the inbound listeners that existed before the pod was enrolled, or before its
//! inbound port changed.
//!
//! The sock_ops program registers the sidecar's 15003 listener when the sidecar calls
//! listen(); a sidecar already listening when its pod is enrolled (e.g. eBPF mode loaded on
//! a running node) would never be registered, and its pod's inbound connections would be
//! refused until it restarts. At enroll, the listener is found in the namespace's
//! /proc/net/tcp{,6}, its socket is taken from the owning process with pidfd_getfd(2)
//! (Linux 5.6+) and put in `LISTENERS`, exactly as the program does.
use std::{
    fs,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::fs::MetadataExt,
};

use aya::maps::{Map, MapData, SockHash};
use interceptor_common::{AF_INET, AF_INET6, ListenerKey, capacity::LISTENER_SLOTS, map_names};

use super::{EbpfError, PinDir, error::Context};
use crate::netns::Netns;

type Result<T, E = EbpfError> = std::result::Result<T, E>;

/// The listening TCP sockets of the namespace on `port` owned by `uid` (the kernel's UID,
/// as the initial user namespace sees it): (socket inode, family). Asked over sock_diag
/// (`NETLINK_SOCK_DIAG`, listening sockets only) in the namespace the calling thread has
/// joined: the kernel walks its listening sockets only, where reading /proc/net/tcp walks
/// the whole established-connection table of the host (milliseconds on a busy node, at
/// every first enroll).
fn listeners_on(port: u16, uid: u32) -> Result<Vec<(u64, u16)>> {
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        for (sport, owner, inode) in diag_listeners(family)? {
            if sport == port && owner == uid {
                out.push((inode, family));
            }
        }
    }
    Ok(out)
}

/// (local port, UID, socket inode) of every listening TCP socket of `family`.
fn diag_listeners(family: u16) -> Result<Vec<(u16, u32, u64)>> {
    const NETLINK_SOCK_DIAG: i32 = 4;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const TCP_LISTEN: u32 = 10;
    // SAFETY: plain socket call; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(NETLINK_SOCK_DIAG)");
    }
    // SAFETY: the kernel just returned this descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // nlmsghdr (16) + inet_diag_req_v2 (56): family, protocol, ext, pad, states, sockid.
    let mut req = [0u8; 72];
    req[0..4].copy_from_slice(&72u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = family as u8;
    req[17] = libc::IPPROTO_TCP as u8;
    req[20..24].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    // SAFETY: a valid buffer of the length passed.
    if unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error()).context("sending the sock_diag request");
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: a valid buffer of the length passed.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("reading the sock_diag answer");
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= 16 {
            let len = u32::from_ne_bytes(msgs[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(msgs[4..6].try_into().expect("2 bytes"));
            if len < 16 || len > msgs.len() {
                let malformed = std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed answer");
                return Err(malformed).context("sock_diag");
            }
            match kind {
                // NLMSG_DONE
                3 => return Ok(out),
                // NLMSG_ERROR: an errno (negative) after the header.
                2 => {
                    let errno = i32::from_ne_bytes(msgs[16..20].try_into().expect("4 bytes"));
                    if errno != 0 {
                        return Err(std::io::Error::from_raw_os_error(-errno)).context("sock_diag");
                    }
                    return Ok(out);
                }
                _ if len >= 16 + 72 => {
                    // inet_diag_msg: family, state, timer, retrans, sockid (sport big-endian
                    // first), expires, rqueue, wqueue, uid, inode.
                    let m = &msgs[16..16 + 72];
                    let sport = u16::from_be_bytes([m[4], m[5]]);
                    let uid = u32::from_ne_bytes(m[64..68].try_into().expect("4 bytes"));
                    let inode = u32::from_ne_bytes(m[68..72].try_into().expect("4 bytes"));
                    out.push((sport, uid, inode as u64));
                }
                _ => {}
            }
            msgs = &msgs[len.next_multiple_of(4).min(msgs.len())..];
        }
    }
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
