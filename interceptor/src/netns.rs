//! Network namespaces: run code or commands inside one, read its cookie.
use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns, unshare};

/// A network namespace given by a path (`/var/run/netns/NAME`, `/proc/PID/ns/net`), or the
/// caller's own when `None`.
#[derive(Clone, Debug, Default)]
pub struct Netns {
    pub path: Option<PathBuf>,
}

impl Netns {
    pub fn current() -> Netns {
        Netns { path: None }
    }

    pub fn at(path: impl Into<PathBuf>) -> Netns {
        Netns { path: Some(path.into()) }
    }

    pub fn describe(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "the current network namespace".to_string(),
        }
    }

    fn open(&self) -> Result<Option<File>> {
        match &self.path {
            None => Ok(None),
            Some(p) => {
                let f = File::open(p).with_context(|| format!("cannot open network namespace {}", p.display()))?;
                Ok(Some(f))
            }
        }
    }

    /// Runs `f` on a thread that has joined this namespace (threads switch namespaces
    /// independently, so the caller's own stays untouched).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        let file = self.open()?;
        let shown = self.describe();
        std::thread::spawn(move || {
            if let Some(file) = file {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("cannot enter network namespace {shown}"))?;
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace worker thread panicked"))?
    }

    /// A command that will run inside this namespace.
    ///
    /// A namespace owned by another user namespace (a pod with `hostUsers: false`) is
    /// entered through it, as the pod's own init container would run: netfilter only accepts
    /// owner-match rules written from the user namespace that owns the network namespace.
    pub fn command(&self, program: &str) -> Result<Command> {
        let mut cmd = Command::new(program);
        if let Some(file) = self.open()? {
            use std::os::unix::process::CommandExt;
            let userns = owning_userns(&file)?;
            // SAFETY: setns is async-signal-safe; the fds outlive the fork because the
            // closure owns the Files; the forked child is single-threaded, as entering a
            // user namespace requires.
            unsafe {
                cmd.pre_exec(move || {
                    // Root inside it (as the init container is): exec keeps the capabilities
                    // only for UID 0 of the namespace.
                    if let Some(u) = &userns
                        && (libc::setns(u.as_raw_fd(), libc::CLONE_NEWUSER) != 0
                            || libc::setresgid(0, 0, 0) != 0
                            || libc::setresuid(0, 0, 0) != 0)
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        Ok(cmd)
    }

    /// The namespace's cookie (SO_NETNS_COOKIE, Linux 5.14+): the key the eBPF programs use.
    pub fn cookie(&self) -> Result<u64> {
        self.run(current_cookie)
    }
}

/// `ioctl(NS_GET_USERNS)`: the user namespace that owns a namespace.
const NS_GET_USERNS: libc::c_ulong = 0xb701;

/// The user namespace owning `netns`, if it is not the caller's own.
pub fn owning_userns(netns: &File) -> Result<Option<File>> {
    use std::os::{fd::FromRawFd, unix::fs::MetadataExt};
    // SAFETY: a valid namespace descriptor; the kernel returns a new descriptor.
    let fd = unsafe { libc::ioctl(netns.as_raw_fd(), NS_GET_USERNS) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("ioctl(NS_GET_USERNS) on the network namespace");
    }
    // SAFETY: the kernel just returned this descriptor to us.
    let owner = unsafe { File::from_raw_fd(fd) };
    let ours = std::fs::metadata("/proc/self/ns/user").context("read /proc/self/ns/user")?;
    let theirs = owner.metadata()?;
    Ok((theirs.ino() != ours.ino() || theirs.dev() != ours.dev()).then_some(owner))
}

/// The cookie of the calling thread's network namespace.
pub fn current_cookie() -> Result<u64> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .or_else(|_| socket(AddressFamily::Inet6, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None))
        .context("cannot create a socket to read the network namespace cookie")?;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid socket, buffer and length.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!("getsockopt(SO_NETNS_COOKIE) failed: {err} (needs Linux 5.14 or newer)");
    }
    Ok(cookie)
}

/// Runs `f` on a thread inside a new, empty network namespace that disappears afterwards.
pub fn in_scratch_netns<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).context("cannot create a scratch network namespace")?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("scratch namespace thread panicked"))?
}

/// Resolves a `--netns` argument: a path, or a name under /var/run/netns.
pub fn resolve(arg: &str) -> PathBuf {
    let p = Path::new(arg);
    if arg.contains('/') { p.to_path_buf() } else { Path::new("/var/run/netns").join(arg) }
}
