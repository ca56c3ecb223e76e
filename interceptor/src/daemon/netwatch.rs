//! Each eBPF pod's routes and addresses, watched: a netlink socket created inside the
//! pod's network namespace (on a thread that joined it) subscribes to the link, address
//! and route multicast groups; any event (after a short quiet period) makes the daemon
//! re-read the routes and re-enroll the pod if they differ from those it compiled. So a
//! pod enrolled before its routes were final is corrected.
//!
//! The socket holds a reference on the namespace: the watcher is stopped when the pod is
//! deleted or its namespace file disappears (the reconcile), never left behind.
use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{Result, bail};
use tokio::{io::unix::AsyncFd, task::JoinHandle};

use super::core::Daemon;
use crate::netns::Netns;

/// Events closer together than this are handled once.
const QUIET: Duration = Duration::from_millis(200);

const GROUPS: u32 = (libc::RTMGRP_LINK
    | libc::RTMGRP_IPV4_IFADDR
    | libc::RTMGRP_IPV4_ROUTE
    | libc::RTMGRP_IPV6_IFADDR
    | libc::RTMGRP_IPV6_ROUTE) as u32;

/// A non-blocking rtnetlink socket subscribed to the groups, created inside `netns`.
pub fn open(netns: &PathBuf) -> Result<OwnedFd> {
    Netns::at(netns).run(|| {
        // SAFETY: plain socket calls with a valid address structure.
        unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            );
            if fd < 0 {
                bail!("cannot open a netlink socket: {}", std::io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            addr.nl_groups = GROUPS;
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            );
            if rc != 0 {
                bail!("cannot subscribe to route events: {}", std::io::Error::last_os_error());
            }
            Ok(fd)
        }
    })
}

/// Reads everything queued; true if anything (or an overflow) was there.
fn drain(fd: &OwnedFd) -> std::io::Result<bool> {
    let mut buf = [0u8; 16384];
    let mut any = false;
    loop {
        // SAFETY: valid buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n > 0 {
            any = true;
            continue;
        }
        if n == 0 {
            return Ok(any);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(any),
            // Events were lost: something changed.
            Some(libc::ENOBUFS) => any = true,
            Some(libc::EINTR) => {}
            _ => return Err(e),
        }
    }
}

pub fn spawn(daemon: Arc<Daemon>, id: String, netns: PathBuf) -> JoinHandle<()> {
    tokio::spawn(async move {
        let path = netns.clone();
        let fd = match tokio::task::spawn_blocking(move || open(&path)).await {
            Ok(Ok(fd)) => fd,
            Ok(Err(e)) => {
                tracing::warn!("pod {id}: cannot watch its routes ({e:#}); the reconcile retries");
                return;
            }
            Err(_) => return,
        };
        // SAFETY: an OwnedFd stays open and is the same descriptor until the AsyncFd drops.
        let afd = match unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("pod {id}: cannot watch its routes: {e}");
                return;
            }
        };
        // Anything that changed before the socket existed.
        daemon.reapply_if_routes_changed(&id).await;
        loop {
            let Ok(mut guard) = afd.readable().await else { return };
            match drain(afd.get_ref()) {
                Ok(false) => {
                    guard.clear_ready();
                    continue;
                }
                Ok(true) => guard.clear_ready(),
                Err(e) => {
                    tracing::warn!("pod {id}: route watch failed ({e}); the reconcile restarts it");
                    return;
                }
            }
            tokio::time::sleep(QUIET).await;
            let _ = drain(afd.get_ref());
            tracing::debug!("pod {id}: links, addresses or routes changed");
            daemon.reapply_if_routes_changed(&id).await;
        }
    })
}
