//! Processes in the sandbox: in a namespace, optionally in the pod's cgroup and as a UID.
use std::{
    fs::File,
    io::{BufRead, BufReader},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// Where a sandbox process runs.
#[derive(Clone, Debug)]
pub struct Identity {
    pub netns: PathBuf,
    /// `cgroup.procs` of the cgroup to join (the pod's), if any.
    pub cgroup_procs: Option<PathBuf>,
    /// The user namespace to join before the network namespace (a pod with `hostUsers:
    /// false`); `uid` is then a UID inside it.
    pub userns: Option<PathBuf>,
    pub uid: u32,
}

/// A helper binary built next to the test executables (target/<profile>/NAME).
pub fn sibling_binary(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!("{}_BIN", name.to_uppercase())) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("cannot find the {name} binary next to {} (run `cargo build --workspace` first)", exe.display());
}

pub fn netprobe() -> PathBuf {
    sibling_binary("netprobe")
}

/// A command that enters the identity before exec: cgroup first (a socket's cgroup is
/// fixed when it is created), then the namespace, then the UID.
pub fn command(program: &Path, who: &Identity) -> Result<Command> {
    command_in(program, who, None)
}

/// `command`, and the process sees `resolv_conf` as /etc/resolv.conf: a per-pod resolver
/// configuration, as a container has. It gets a mount namespace of its own (private, so the
/// bind mount never reaches the node) before the UID changes. (`ip netns exec` would do the
/// same for /etc/netns/NAME/resolv.conf, but it remounts /sys and hides the cgroups.)
pub fn command_with_resolv_conf(program: &Path, who: &Identity, resolv_conf: &Path) -> Result<Command> {
    command_in(program, who, Some(resolv_conf))
}

fn command_in(program: &Path, who: &Identity, resolv_conf: Option<&Path>) -> Result<Command> {
    let ns = File::open(&who.netns).with_context(|| format!("open {}", who.netns.display()))?;
    let cg = match &who.cgroup_procs {
        Some(p) => Some(File::options().write(true).open(p).with_context(|| format!("open {}", p.display()))?),
        None => None,
    };
    let userns = match &who.userns {
        Some(p) => Some(File::open(p).with_context(|| format!("open {}", p.display()))?),
        None => None,
    };
    let uid = who.uid;
    let bind = match resolv_conf {
        Some(p) => Some((
            std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).context("resolv.conf path")?,
            c"/etc/resolv.conf",
        )),
        None => None,
    };
    let mut cmd = Command::new(program);
    // SAFETY: only async-signal-safe calls (write, setns, unshare, mount, setgroups, setgid,
    // setuid) on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(cg) = &cg {
                let mut buf = [0u8; 16];
                let mut pid = libc::getpid() as u32;
                let mut i = buf.len();
                loop {
                    i -= 1;
                    buf[i] = b'0' + (pid % 10) as u8;
                    pid /= 10;
                    if pid == 0 {
                        break;
                    }
                }
                if libc::write(cg.as_raw_fd(), buf[i..].as_ptr().cast(), buf.len() - i) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // The user namespace first: it owns the network namespace, and inside it UIDs
            // are its own (the forked child is single-threaded, as setns requires).
            if let Some(u) = &userns
                && libc::setns(u.as_raw_fd(), libc::CLONE_NEWUSER) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some((src, dst)) = &bind
                && (libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0
                    || libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            if (uid != 0 || userns.is_some())
                && (libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(uid) != 0 || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Starts a long-running process and waits for it to print `ready`.
pub fn spawn_ready(mut cmd: Command, what: &str) -> Result<Child> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).stdin(Stdio::null());
    let what = short(what);
    let mut child = cmd.spawn().with_context(|| format!("spawn {what}"))?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(line) if line.trim() == "ready" => Ok(child),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not start: {other:?}")
        }
    }
}

/// Runs a command to completion and returns its stdout (read while it runs: a child that
/// fills the pipe would otherwise never exit).
pub fn output(mut cmd: Command, what: &str, timeout: Duration) -> Result<String> {
    let what = short(what);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
    let child = cmd.spawn().with_context(|| format!("spawn {what}"))?;
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(out) => out?,
        Err(_) => {
            // SAFETY: our own child, not yet reaped (the waiting thread reaps it).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            bail!("{what} timed out after {timeout:?}");
        }
    };
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command line shortened for messages.
pub fn short(what: &str) -> String {
    if what.len() <= 120 {
        what.to_string()
    } else {
        format!("{}… ({} bytes)", &what[..what.floor_char_boundary(120)], what.len())
    }
}

/// Runs `ip ARGS` and fails loudly.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip (install iproute2)")?;
    if !out.status.success() {
        bail!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A connection held open by `netprobe connect-hold`: each `exchange` sends a request over
/// the same connection and returns the server's answer.
pub struct Held {
    child: Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    pub first: crate::flows::Landing,
}

impl Held {
    pub fn open(program: &Path, who: &Identity, to: &str) -> Result<Held> {
        let mut cmd = command(program, who)?;
        cmd.args(["connect-hold", "--to", to]).stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut held =
            Held { child, stdin, lines: rx, first: crate::flows::Landing::from_json(&serde_json::Value::Null) };
        held.first = held.read()?;
        Ok(held)
    }

    fn read(&mut self) -> Result<crate::flows::Landing> {
        let line = self.lines.recv_timeout(Duration::from_secs(10)).context("held connection: no answer")?;
        Ok(crate::flows::Landing::from_json(&serde_json::from_str(&line)?))
    }

    pub fn exchange(&mut self) -> Result<crate::flows::Landing> {
        use std::io::Write;
        writeln!(self.stdin, "again")?;
        self.read()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A long-running process whose whole output is collected: started after it prints
/// `ready`, finished with [`Collecting::finish`].
pub struct Collecting {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Collecting {
    pub fn start(mut cmd: Command, what: &str) -> Result<Collecting> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).stdin(Stdio::null());
        let what = short(what);
        let mut child = cmd.spawn().with_context(|| format!("spawn {what}"))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.trim() == "ready" => Ok(Collecting { child, lines: rx }),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{what} did not start: {other:?}")
            }
        }
    }

    /// Waits (at most `timeout`) for the process to exit and returns the lines it printed.
    pub fn finish(mut self, timeout: Duration) -> Result<Vec<String>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(l) => out.push(l),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if std::time::Instant::now() > deadline {
                        bail!("process did not finish within {timeout:?}");
                    }
                }
            }
        }
        let _ = self.child.wait();
        Ok(out)
    }
}

impl Drop for Collecting {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
