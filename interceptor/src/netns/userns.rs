//! Pods with their own user namespace (Kubernetes `hostUsers: false`): the proxy's UID 1500
//! inside the pod is another UID for the kernel, which is what the eBPF programs see. The
//! UID is translated through the user namespace that owns the pod's network namespace.
use std::{
    fs::File,
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::fs::MetadataExt,
    },
};

use super::NetnsError;

type Result<T> = std::result::Result<T, NetnsError>;

/// `ioctl(NS_GET_PARENT)`: the parent of a user namespace.
const NS_GET_PARENT: libc::c_ulong = 0xb702;

/// One line of a uid_map: `inside outside count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

pub fn parse_map(text: &str) -> Result<Vec<Extent>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let bad = || NetnsError::BadUidMap { line: l.to_string() };
            let f: Vec<u32> =
                l.split_whitespace().map(str::parse).collect::<std::result::Result<_, _>>().map_err(|_| bad())?;
            match f[..] {
                [inside, outside, count] => Ok(Extent { inside, outside, count }),
                _ => Err(bad()),
            }
        })
        .collect()
}

/// The kernel UID of `uid` inside a namespace with this map.
pub fn translate(map: &[Extent], uid: u32) -> Option<u32> {
    map.iter().find(|e| uid >= e.inside && uid - e.inside < e.count).map(|e| e.outside + (uid - e.inside))
}

/// The kernel UID the programs will see for `uid` of the pod whose network namespace is
/// `netns` (the same UID when the namespace belongs to the caller's user namespace).
pub fn kernel_uid(netns: &crate::netns::Netns, uid: u32) -> Result<u32> {
    let Some(userns) = netns.owning_userns()? else { return Ok(uid) };
    // Only a child of our own user namespace: its map is then relative to the kernel's view.
    // SAFETY: a valid namespace descriptor; the kernel returns a new descriptor.
    let parent = unsafe { libc::ioctl(userns.as_raw_fd(), NS_GET_PARENT) };
    if parent < 0 {
        let e = std::io::Error::last_os_error();
        return Err(NetnsError::syscall("ioctl(NS_GET_PARENT) on the pod's user namespace", e));
    }
    // SAFETY: the kernel just returned this descriptor.
    let parent = unsafe { File::from_raw_fd(parent) };
    let ours =
        std::fs::metadata("/proc/self/ns/user").map_err(|e| NetnsError::syscall("read /proc/self/ns/user", e))?;
    let theirs = parent.metadata().map_err(|e| NetnsError::syscall("stat the parent user namespace", e))?;
    if theirs.ino() != ours.ino() {
        return Err(NetnsError::NestedUserns);
    }
    let map = parse_map(&read_uid_map(&userns)?)?;
    translate(&map, uid).ok_or(NetnsError::UidNotMapped { uid, map })
}

/// The uid_map of a user namespace, read by a child process that joins it (entering a user
/// namespace needs a single-threaded process: a fresh fork is one).
fn read_uid_map(userns: &File) -> Result<String> {
    let mut fds = [0i32; 2];
    // SAFETY: a valid array for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(NetnsError::syscall("pipe2", std::io::Error::last_os_error()));
    }
    // SAFETY: the child only makes async-signal-safe calls (setns, open, read, write, _exit).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(NetnsError::syscall("fork", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        unsafe {
            let mut buf = [0u8; 4096];
            let mut n: isize = -1;
            if libc::setns(userns.as_raw_fd(), libc::CLONE_NEWUSER) == 0 {
                let fd = libc::open(c"/proc/self/uid_map".as_ptr(), libc::O_RDONLY);
                if fd >= 0 {
                    n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                }
            }
            if n > 0 {
                libc::write(fds[1], buf.as_ptr().cast(), n as usize);
            }
            libc::_exit(if n > 0 { 0 } else { 1 });
        }
    }
    // SAFETY: the parent's ends: close the write end, own the read end.
    unsafe { libc::close(fds[1]) };
    let mut reader = unsafe { File::from_raw_fd(fds[0]) };
    let mut text = String::new();
    let read = std::io::Read::read_to_string(&mut reader, &mut text);
    let mut status = 0;
    // SAFETY: our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    read.map_err(|e| NetnsError::syscall("reading the pod's uid_map", e))?;
    if text.is_empty() {
        return Err(NetnsError::NoUidMap);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_through_the_extent_that_holds_the_uid() {
        let map = parse_map("         0     100000      65536\n 70000 500000 10\n").unwrap();
        assert_eq!(translate(&map, 1500), Some(101_500));
        assert_eq!(translate(&map, 70_005), Some(500_005));
        assert_eq!(translate(&map, 65_536), None);
        assert!(parse_map("1 2").is_err());
    }
}
