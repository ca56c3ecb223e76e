//! The listening TCP sockets of the calling thread's network namespace, asked over
//! `NETLINK_SOCK_DIAG` (listening sockets only: the kernel walks its listening sockets, where
//! reading /proc/net/tcp walks the whole established-connection table of the host,
//! milliseconds on a busy node at every first enroll). The messages are the kernel's
//! structures (`linux/netlink.h`, `linux/inet_diag.h`), by name.
//!
//! sock_diag needs the kernel's `inet_diag`/`tcp_diag` modules; where they are modules that
//! cannot be loaded (no modprobe, as in a minimal guest) the kernel answers ENOENT, and the
//! listeners are read from the namespace's /proc/net/tcp{,6} instead: slower, same answer.
use std::{
    fs,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use bytemuck::{Pod, Zeroable};
use interceptor_common::AF_INET;

use super::{EbpfError, error::Context};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_LISTEN: u32 = 10;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// `struct nlmsghdr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// `struct inet_diag_sockid` (ports and addresses in network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct InetDiagSockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

/// `struct inet_diag_msg`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// A request message: the header and the request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Request {
    header: NlMsgHdr,
    req: InetDiagReqV2,
}

/// A listening socket: its local port, owner (the kernel's UID) and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    pub port: u16,
    pub uid: u32,
    pub inode: u64,
}

/// Every listening TCP socket of `family` (AF_INET or AF_INET6): over sock_diag, or from
/// /proc/net where sock_diag cannot answer.
pub fn tcp_listeners(family: u16) -> Result<Vec<Listener>, EbpfError> {
    match diag_listeners(family) {
        Ok(found) => Ok(found),
        Err(e) => {
            tracing::debug!("sock_diag unavailable ({e:#}): reading /proc/net instead");
            proc_net_listeners(family)
        }
    }
}

/// Every listening TCP socket of `family`, over sock_diag.
fn diag_listeners(family: u16) -> Result<Vec<Listener>, EbpfError> {
    // SAFETY: plain socket call; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(NETLINK_SOCK_DIAG)");
    }
    // SAFETY: the kernel just returned this descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let request = Request {
        header: NlMsgHdr {
            len: size_of::<Request>() as u32,
            kind: SOCK_DIAG_BY_FAMILY,
            flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            seq: 1,
            pid: 0,
        },
        req: InetDiagReqV2 {
            family: family as u8,
            protocol: libc::IPPROTO_TCP as u8,
            states: 1 << TCP_LISTEN,
            ..Zeroable::zeroed()
        },
    };
    let bytes = bytemuck::bytes_of(&request);
    // SAFETY: a valid buffer of the length passed.
    if unsafe { libc::send(sock.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) } < 0 {
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
        while msgs.len() >= size_of::<NlMsgHdr>() {
            let header: NlMsgHdr = bytemuck::pod_read_unaligned(&msgs[..size_of::<NlMsgHdr>()]);
            let len = header.len as usize;
            if len < size_of::<NlMsgHdr>() || len > msgs.len() {
                let malformed = std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed answer");
                return Err(malformed).context("sock_diag");
            }
            let body = &msgs[size_of::<NlMsgHdr>()..len];
            match header.kind {
                NLMSG_DONE => return Ok(out),
                // `struct nlmsgerr`: an errno (negative) first.
                NLMSG_ERROR => {
                    let errno = body.get(..4).map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes"))).unwrap_or(0);
                    if errno != 0 {
                        return Err(std::io::Error::from_raw_os_error(-errno)).context("sock_diag");
                    }
                    return Ok(out);
                }
                _ if body.len() >= size_of::<InetDiagMsg>() => {
                    let m: InetDiagMsg = bytemuck::pod_read_unaligned(&body[..size_of::<InetDiagMsg>()]);
                    out.push(Listener { port: u16::from_be_bytes(m.id.sport), uid: m.uid, inode: m.inode as u64 });
                }
                _ => {}
            }
            msgs = &msgs[len.next_multiple_of(4).min(msgs.len())..];
        }
    }
}

/// Every listening TCP socket of `family`, from /proc/thread-self/net/tcp{,6}: the
/// namespace this thread has joined, not the process's.
fn proc_net_listeners(family: u16) -> Result<Vec<Listener>, EbpfError> {
    let file = if family == AF_INET { "tcp" } else { "tcp6" };
    let path = Path::new("/proc/thread-self/net").join(file);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(parse_proc_net_listeners(&text)),
        // No IPv6 in this kernel: no IPv6 listeners.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The listening sockets of a /proc/net/tcp{,6} table: after a header line, each line is
/// `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout
/// inode ...`, addresses as hex `ADDR:PORT`, state 0A = TCP_LISTEN.
fn parse_proc_net_listeners(text: &str) -> Vec<Listener> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state), Some(uid), Some(inode)) = (f.get(1), f.get(3), f.get(7), f.get(9)) else {
            continue;
        };
        let port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
        if let (true, Some(port), Ok(uid), Ok(inode)) = (*state == "0A", port, uid.parse(), inode.parse()) {
            out.push(Listener { port, uid, inode });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, os::fd::AsFd};

    use interceptor_common::AF_INET6;

    use super::*;

    #[test]
    fn the_structures_have_the_kernels_sizes() {
        assert_eq!(size_of::<NlMsgHdr>(), 16);
        assert_eq!(size_of::<InetDiagReqV2>(), 56);
        assert_eq!(size_of::<InetDiagMsg>(), 72);
        assert_eq!(std::mem::offset_of!(InetDiagMsg, uid), 64);
    }

    /// A listener of this process, found by both readers with its port, UID and inode.
    fn finds(read: fn(u16) -> Result<Vec<Listener>, EbpfError>, family: u16, addr: &str) {
        let l = TcpListener::bind(addr).expect("bind");
        let port = l.local_addr().expect("addr").port();
        let inode = nix::sys::stat::fstat(l.as_fd()).expect("fstat").st_ino;
        let uid = nix::unistd::geteuid().as_raw();
        let found = match read(family) {
            Ok(found) => found,
            // sock_diag without tcp_diag (a module not loaded): what the fallback is for.
            Err(e) if e.to_string().contains("sock_diag") => return eprintln!("skipped: {e:#}"),
            Err(e) => panic!("{e:#}"),
        };
        let want = Listener { port, uid, inode };
        assert!(found.contains(&want), "{addr} port {port} inode {inode} not in {found:?}");
    }

    #[test]
    fn proc_net_tcp_lists_this_processs_listeners() {
        finds(proc_net_listeners, AF_INET, "127.0.0.1:0");
        finds(proc_net_listeners, AF_INET6, "[::1]:0");
    }

    #[test]
    fn sock_diag_lists_this_processs_listeners() {
        finds(diag_listeners, AF_INET, "127.0.0.1:0");
        finds(diag_listeners, AF_INET6, "[::1]:0");
    }

    #[test]
    fn proc_net_tcp_lines_are_parsed_listening_only() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:3A9B 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1500        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:3A99 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0000000000000000 20 4 30 10 -1
";
        assert_eq!(parse_proc_net_listeners(text), vec![Listener { port: 15003, uid: 1500, inode: 4242 }]);
    }
}
