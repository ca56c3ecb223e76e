//! Network namespaces: run code or commands inside one, read its cookie.
//!
//! A namespace given by path is opened once (`O_RDONLY|O_NONBLOCK|O_NOCTTY|O_CLOEXEC`, so a
//! FIFO or a device never blocks), checked to be a network namespace (`fstatfs`: nsfs;
//! `ioctl(NS_GET_NSTYPE)`: `CLONE_NEWNET`), and that one descriptor is used for everything
//! afterwards — the cookie, the routes snapshot, the sk_lookup attachment, listener adoption,
//! iptables — so a `/proc/PID/ns/net` path cannot change meaning between two uses.
mod error;
pub mod userns;

use std::{
    fs::{self, File, OpenOptions},
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, OnceLock},
};

use nix::sched::{CloneFlags, setns, unshare};

pub use error::NetnsError;

type Result<T, E = NetnsError> = std::result::Result<T, E>;

/// `NS_GET_NSTYPE` = `_IO(0xb7, 0x3)` (linux/nsfs.h, Linux 4.11+).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
/// `PF_KTHREAD` (linux/sched.h): the task is a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// (device, inode) of the host's network namespace, by two witnesses: PID 1's namespace,
/// and that of kthreadd (PID 2 when it is a kernel thread: kernel threads live in the
/// initial namespace, and unlike PID 1 they can be inspected without being allowed to
/// ptrace them — e.g. when PID 1 holds capabilities this process lacks). In a container
/// with its own PID namespace only its PID 1 is seen (the host's namespace when the
/// container shares it, hostNetwork).
fn host_netns_ids() -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    if let Ok(m) = fs::metadata("/proc/1/ns/net") {
        out.push((m.dev(), m.ino()));
    }
    let kthread = fs::read_to_string("/proc/2/stat")
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse::<u64>().ok()))
        .is_some_and(|flags| flags & PF_KTHREAD != 0);
    if kthread && let Ok(m) = fs::metadata("/proc/2/ns/net") {
        out.push((m.dev(), m.ino()));
    }
    out
}

/// A network namespace given by a path (`/var/run/netns/NAME`, `/proc/PID/ns/net`), or the
/// caller's own (`Netns::current()`).
///
/// `Netns::open` opens and checks the path at once; `Netns::at` does so at first use. Either
/// way the path is opened once per value (clones share the descriptor).
#[derive(Clone, Debug, Default)]
pub struct Netns {
    path: Option<PathBuf>,
    handle: Arc<OnceLock<Arc<Handle>>>,
}

/// The opened namespace.
#[derive(Debug)]
struct Handle {
    file: File,
    dev: u64,
    ino: u64,
    host: bool,
}

impl Netns {
    pub fn current() -> Netns {
        Netns::default()
    }

    /// Opens `path` now and checks that it is a network namespace.
    pub fn open(path: impl Into<PathBuf>) -> Result<Netns> {
        let ns = Netns::at(path);
        ns.handle()?;
        Ok(ns)
    }

    /// A namespace opened (and checked) at its first use.
    pub fn at(path: impl Into<PathBuf>) -> Netns {
        Netns { path: Some(path.into()), handle: Arc::default() }
    }

    /// The path it was given by (`None`: the caller's own namespace).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn describe(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "the current network namespace".to_string(),
        }
    }

    fn handle(&self) -> Result<Option<Arc<Handle>>> {
        let Some(path) = &self.path else { return Ok(None) };
        if let Some(h) = self.handle.get() {
            return Ok(Some(h.clone()));
        }
        let opened = Arc::new(open_checked(path)?);
        // Two threads racing here both opened the same path; the first one stored wins.
        let _ = self.handle.set(opened);
        Ok(self.handle.get().cloned())
    }

    /// The opened namespace's descriptor (`None` for the current namespace).
    pub fn fd(&self) -> Result<Option<BorrowedFd<'_>>> {
        self.handle()?;
        Ok(self.handle.get().map(|h| h.file.as_fd()))
    }

    /// (device, inode) of the namespace: what `/proc/PID/ns/net` of its processes stat to.
    pub fn id(&self) -> Result<(u64, u64)> {
        match self.handle()? {
            Some(h) => Ok((h.dev, h.ino)),
            None => {
                let m = fs::metadata("/proc/thread-self/ns/net")
                    .map_err(|e| NetnsError::syscall("cannot stat the current network namespace", e))?;
                Ok((m.dev(), m.ino()))
            }
        }
    }

    /// Whether this is the host's network namespace (that of PID 1 and of the kernel's
    /// threads).
    pub fn is_host(&self) -> Result<bool> {
        match self.handle()? {
            Some(h) => Ok(h.host),
            None => Ok(host_netns_ids().contains(&self.id()?)),
        }
    }

    /// Runs `f` on a thread that has joined this namespace (threads switch namespaces
    /// independently, so the caller's own stays untouched).
    pub fn run<T, E>(&self, f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<NetnsError> + Send + 'static,
    {
        let handle = self.handle()?;
        let shown = self.describe();
        std::thread::spawn(move || {
            if let Some(h) = handle {
                setns(h.file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetnsError::syscall(format!("cannot enter network namespace {shown}"), e.into()))?;
            }
            f()
        })
        .join()
        .map_err(|_| NetnsError::WorkerPanicked)?
    }

    /// A command that will run inside this namespace.
    ///
    /// A namespace owned by another user namespace (a pod with `hostUsers: false`) is
    /// entered through it, as the pod's own init container would run: netfilter only accepts
    /// owner-match rules written from the user namespace that owns the network namespace.
    pub fn command(&self, program: &str) -> Result<Command> {
        let mut cmd = Command::new(program);
        if let Some(h) = self.handle()? {
            use std::os::unix::process::CommandExt;
            let userns = owning_userns(&h.file)?;
            // SAFETY: setns is async-signal-safe; the descriptors outlive the fork because
            // the closure owns them; the forked child is single-threaded, as entering a user
            // namespace requires.
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
                    if libc::setns(h.file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        Ok(cmd)
    }

    /// The user namespace owning this network namespace, if it is not the caller's own.
    pub fn owning_userns(&self) -> Result<Option<File>> {
        match self.handle()? {
            Some(h) => owning_userns(&h.file),
            None => Ok(None),
        }
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
    use std::os::fd::FromRawFd;
    // SAFETY: a valid namespace descriptor; the kernel returns a new descriptor.
    let fd = unsafe { libc::ioctl(netns.as_raw_fd(), NS_GET_USERNS) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(NetnsError::syscall("ioctl(NS_GET_USERNS) on the network namespace", e));
    }
    // SAFETY: the kernel just returned this descriptor to us.
    let owner = unsafe { File::from_raw_fd(fd) };
    let ours = fs::metadata("/proc/self/ns/user").map_err(|e| NetnsError::syscall("read /proc/self/ns/user", e))?;
    let theirs = owner.metadata().map_err(|e| NetnsError::syscall("stat the pod's user namespace", e))?;
    Ok((theirs.ino() != ours.ino() || theirs.dev() != ours.dev()).then_some(owner))
}

/// What a path that is not a namespace is, for the error message.
fn kind(m: &fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "not a namespace file"
    }
}

fn ns_type_name(t: libc::c_int) -> &'static str {
    match t {
        libc::CLONE_NEWNS => "mount",
        libc::CLONE_NEWUTS => "UTS",
        libc::CLONE_NEWIPC => "IPC",
        libc::CLONE_NEWUSER => "user",
        libc::CLONE_NEWPID => "PID",
        libc::CLONE_NEWCGROUP => "cgroup",
        0x80 => "time",
        _ => "non-network",
    }
}

fn open_checked(path: &Path) -> Result<Handle> {
    let shown = path.display();
    // O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever. (std adds O_CLOEXEC.)
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| NetnsError::Open { path: path.to_path_buf(), source })?;
    let meta = file.metadata().map_err(|e| NetnsError::syscall(format!("cannot stat {shown}"), e))?;
    let fs = nix::sys::statfs::fstatfs(file.as_fd())
        .map_err(|e| NetnsError::syscall(format!("cannot statfs {shown}"), e.into()))?;
    // nsfs: the filesystem of /proc/PID/ns/* and of their bind mounts.
    if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        return Err(NetnsError::NotANamespace { path: path.to_path_buf(), kind: kind(&meta) });
    }
    // SAFETY: an ioctl without argument on a descriptor we own.
    let t = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if t < 0 {
        let e = std::io::Error::last_os_error();
        return Err(NetnsError::syscall(format!("{shown}: cannot tell the namespace's type"), e));
    }
    if t != libc::CLONE_NEWNET {
        return Err(NetnsError::WrongType { path: path.to_path_buf(), kind: ns_type_name(t) });
    }
    let host = host_netns_ids().contains(&(meta.dev(), meta.ino()));
    Ok(Handle { dev: meta.dev(), ino: meta.ino(), host, file })
}

/// The cookie of the calling thread's network namespace.
pub fn current_cookie() -> Result<u64> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .or_else(|_| socket(AddressFamily::Inet6, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None))
        .map_err(|e| NetnsError::syscall("cannot create a socket to read the network namespace cookie", e.into()))?;
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
        return Err(NetnsError::NoCookie { errno: std::io::Error::last_os_error() });
    }
    Ok(cookie)
}

/// Runs `f` on a thread inside a new, empty network namespace that disappears afterwards.
pub fn in_scratch_netns<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<NetnsError> + Send + 'static,
{
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetnsError::syscall("cannot create a scratch network namespace", e.into()))?;
        f()
    })
    .join()
    .map_err(|_| NetnsError::WorkerPanicked)?
}

/// Resolves a `--netns` argument: a path, or a name under /var/run/netns.
pub fn resolve(arg: &str) -> PathBuf {
    let p = Path::new(arg);
    if arg.contains('/') { p.to_path_buf() } else { Path::new("/var/run/netns").join(arg) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_network_namespace_without_blocking() {
        let dir = std::env::temp_dir().join(format!("interceptor-netns-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let file = dir.join("file");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        fs::write(&file, "x").unwrap();
        for (path, want) in [
            (fifo.as_path(), "is not a network namespace: it is a FIFO"),
            (file.as_path(), "it is a regular file"),
            (dir.as_path(), "it is a directory"),
            (Path::new("/proc/self/ns/mnt"), "is a mount namespace, not a network namespace"),
        ] {
            let e = format!("{:#}", Netns::open(path).unwrap_err());
            assert!(e.contains(want), "{}: {e}", path.display());
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_descriptor_per_value() {
        let ns = Netns::at("/proc/self/ns/net");
        let a = ns.fd().unwrap().unwrap().as_raw_fd();
        let b = ns.clone().fd().unwrap().unwrap().as_raw_fd();
        assert_eq!(a, b, "clones share the descriptor opened once");
        assert_eq!(ns.id().unwrap(), Netns::current().id().unwrap());
    }

    #[test]
    fn the_host_namespace_is_recognised_and_a_scratch_one_is_not() {
        // Creating a namespace needs CAP_SYS_ADMIN (`cargo test` as a user skips it).
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: creating a network namespace needs root");
            return;
        }
        // The tests run in the host's network namespace.
        assert!(Netns::open("/proc/self/ns/net").unwrap().is_host().unwrap());
        assert!(Netns::current().is_host().unwrap());
        let scratch = in_scratch_netns(|| Netns::open("/proc/thread-self/ns/net")?.is_host()).unwrap();
        assert!(!scratch);
    }
}
