//! Locking an installation against concurrent commands (as cloudflare/tubular does).
//!
//! The lock is flock(2) on the pin directory itself. bpffs holds no regular files, but any
//! inode can be flocked, and the lock lives with the inode: every process that sees this
//! bpffs — the CLI on the node, a daemon in a container given the host's /sys/fs/bpf —
//! shares it, whatever its mount namespace (a lock file under /run would not be shared with
//! a container). Mutating commands (load, upgrade, enroll, unenroll, unload, debug, gc) take
//! it exclusively, readers (status, log) shared.
//!
//! `load` creates the directory, so there is nothing to lock before it exists: `load`,
//! `unload` and `gc` first lock the *parent* directory (/sys/fs/bpf by default) exclusively,
//! which also covers the staging directories that live there. The order is always parent,
//! then pin directory, so two commands never wait for each other in a cycle.
//!
//! Each acquisition opens a fresh descriptor: flock locks belong to the open file
//! description, so threads of one process (a daemon enrolling pods from several tasks)
//! exclude each other exactly like processes do. After the lock is granted the directory
//! is checked to still be the one at the path (an `unload` may have removed it, and a `load`
//! created a new one, while we waited). A command that waits longer than a second says so
//! on stderr. The library's public functions take the lock themselves: calling one while
//! holding an `InstallLock` on the same installation in the same thread is refused (it
//! would wait for itself forever).
use std::{
    fs::{self, File, OpenOptions},
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::Path,
    sync::{Mutex, mpsc},
    thread::ThreadId,
    time::Duration,
};

use super::{EbpfError, PinDir, error::Context};

type Result<T, E = EbpfError> = std::result::Result<T, E>;

/// How long a command waits silently before saying that it waits.
pub const WAIT_NOTICE: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

/// Held locks (released on drop: closing the descriptor releases the flock).
#[derive(Debug)]
pub struct InstallLock {
    held: Vec<Held>,
    dir_locked: bool,
}

#[derive(Debug)]
struct Held {
    _file: File,
    key: (u64, u64, ThreadId),
}

/// Locks held by this process: (device, inode, thread). Only used to refuse a lock a thread
/// already holds, which would otherwise deadlock.
static HELD: Mutex<Vec<(u64, u64, ThreadId)>> = Mutex::new(Vec::new());

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = held.iter().position(|k| *k == self.key) {
            held.swap_remove(i);
        }
    }
}

impl InstallLock {
    /// Locks the installation directory; `None` if it does not exist.
    pub fn acquire(pins: &PinDir, mode: Mode) -> Result<Option<InstallLock>> {
        Ok(lock_dir(pins.path(), mode)?.map(|h| InstallLock { held: vec![h], dir_locked: true }))
    }

    pub fn exclusive(pins: &PinDir) -> Result<Option<InstallLock>> {
        Self::acquire(pins, Mode::Exclusive)
    }

    pub fn shared(pins: &PinDir) -> Result<Option<InstallLock>> {
        Self::acquire(pins, Mode::Shared)
    }

    /// For commands that create or remove the directory (load, unload, gc): the parent
    /// directory exclusively (it must exist), then the installation directory if it exists.
    pub fn with_parent(pins: &PinDir) -> Result<InstallLock> {
        let parent = pins.path().parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let Some(p) = lock_dir(parent, Mode::Exclusive)? else {
            return Err(EbpfError::NoSuchDirectory { dir: parent.to_path_buf() });
        };
        let mut lock = InstallLock { held: vec![p], dir_locked: false };
        if let Some(d) = lock_dir(pins.path(), Mode::Exclusive)? {
            lock.held.push(d);
            lock.dir_locked = true;
        }
        Ok(lock)
    }

    /// Whether the installation directory itself is locked (it existed).
    pub fn dir_locked(&self) -> bool {
        self.dir_locked
    }
}

/// Takes the installation's lock (waiting for other commands); fails if nothing is loaded.
pub(crate) fn lock_installation(pins: &PinDir, mode: Mode) -> Result<InstallLock> {
    InstallLock::acquire(pins, mode)?.ok_or_else(|| EbpfError::NotLoaded { dir: pins.path().to_path_buf() })
}

fn open_dir(path: &Path) -> Result<Option<File>> {
    match OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Err(EbpfError::NotADirectory { dir: path.to_path_buf() }),
        Err(e) => Err(e).with_context(|| format!("cannot open {} to lock it", path.display())),
    }
}

/// Locks the directory at `path`, making sure it is still the one at `path` once locked.
fn lock_dir(path: &Path, mode: Mode) -> Result<Option<Held>> {
    loop {
        let Some(file) = open_dir(path)? else { return Ok(None) };
        let meta = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?;
        let key = (meta.dev(), meta.ino(), std::thread::current().id());
        {
            let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
            if held.contains(&key) {
                return Err(EbpfError::LockedByThisThread { dir: path.to_path_buf() });
            }
            held.push(key);
        }
        let held = Held { _file: file, key };
        flock_waiting(&held._file, mode, path)?;
        match fs::metadata(path) {
            Ok(now) if (now.dev(), now.ino()) == (meta.dev(), meta.ino()) => return Ok(Some(held)),
            // Replaced while we waited: lock the new one.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
        }
    }
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn flock_waiting(file: &File, mode: Mode, path: &Path) -> Result<()> {
    let op = match mode {
        Mode::Shared => libc::LOCK_SH,
        Mode::Exclusive => libc::LOCK_EX,
    };
    match flock(file, op | libc::LOCK_NB) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
    let (done, waiting) = mpsc::channel::<()>();
    let shown = path.display().to_string();
    let notice = std::thread::spawn(move || {
        if waiting.recv_timeout(WAIT_NOTICE) == Err(mpsc::RecvTimeoutError::Timeout) {
            eprintln!("waiting for another interceptor command to finish (it holds the lock on {shown})…");
        }
    });
    let result = flock(file, op).with_context(|| format!("cannot lock {}", path.display()));
    drop(done);
    let _ = notice.join();
    result
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Barrier},
        time::Instant,
    };

    use super::*;

    fn scratch(name: &str) -> PinDir {
        let dir = std::env::temp_dir().join(format!("interceptor-lock-unit-{}-{name}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        PinDir::new(dir)
    }

    #[test]
    fn threads_of_one_process_exclude_each_other() {
        let pins = scratch("threads");
        let first = InstallLock::exclusive(&pins).unwrap().unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let (p, b) = (pins.clone(), barrier.clone());
        let other = std::thread::spawn(move || {
            b.wait();
            let t = Instant::now();
            let _l = InstallLock::shared(&p).unwrap().unwrap();
            t.elapsed()
        });
        barrier.wait();
        std::thread::sleep(Duration::from_millis(300));
        drop(first);
        let waited = other.join().unwrap();
        assert!(waited >= Duration::from_millis(250), "the second thread got the lock after {waited:?}");
        // Shared locks coexist.
        let a = InstallLock::shared(&pins).unwrap().unwrap();
        let p = pins.clone();
        std::thread::spawn(move || InstallLock::shared(&p).unwrap().unwrap()).join().unwrap();
        drop(a);
        fs::remove_dir_all(pins.path()).unwrap();
    }

    #[test]
    fn the_same_thread_locking_twice_is_refused_not_deadlocked() {
        let pins = scratch("twice");
        let _l = InstallLock::exclusive(&pins).unwrap().unwrap();
        let e = InstallLock::shared(&pins).unwrap_err().to_string();
        assert!(e.contains("already holds the lock"), "{e}");
        drop(_l);
        assert!(InstallLock::shared(&pins).unwrap().is_some(), "released on drop");
        fs::remove_dir_all(pins.path()).unwrap();
    }

    #[test]
    fn a_missing_directory_is_not_locked() {
        let pins = PinDir::new(std::env::temp_dir().join(format!("interceptor-lock-unit-{}-none", std::process::id())));
        assert!(InstallLock::exclusive(&pins).unwrap().is_none());
        let l = InstallLock::with_parent(&pins).unwrap();
        assert!(!l.dir_locked());
    }
}
