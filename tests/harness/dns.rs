//! The local DNS proxy tests' pieces: dnsmasq as the sidecar's DNS proxy stand-in on
//! 127.0.0.153:5300 (and as a server on 127.0.0.153:53 that answers differently, to show
//! where a query went), a per-pod resolv.conf naming 127.0.0.153, and the resolvers (glibc
//! through `getent`, `dig`, `netprobe dns`) run as the pod's processes.
//!
//! dnsmasq binds only 127.0.0.153 inside the pod's network namespace, has no upstream
//! (`--no-resolv`), reads neither /etc/hosts nor a configuration file, and keeps its pid,
//! lease and log files in a directory of its own that is removed with it.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    procs::{Identity, command, command_with_resolv_conf, netprobe},
    sandbox::Sandbox,
};

/// The pod's nameserver (osm-edge's constant).
pub const NAMESERVER: &str = "127.0.0.153";
/// The names both servers answer, and what each answers for them.
pub const NAMES: [&str; 2] = ["app.mesh.test", "db.mesh.test"];
pub const PROXY_ANSWERS: [&str; 2] = ["203.0.113.100", "203.0.113.101"];
pub const PLAIN_ANSWERS: [&str; 2] = ["203.0.113.53", "203.0.113.54"];

/// A dnsmasq of the pod, stopped and its directory removed on drop.
pub struct Dnsmasq {
    child: Child,
    dir: PathBuf,
}

impl Dnsmasq {
    /// The sidecar's DNS proxy stand-in: 127.0.0.153:5300, answering `PROXY_ANSWERS`.
    pub fn proxy(sb: &Sandbox) -> Result<Dnsmasq> {
        Self::start(sb, 5300, &PROXY_ANSWERS)
    }

    /// A server on the nameserver's own port 53, answering `PLAIN_ANSWERS`: where queries
    /// go when nothing redirects them.
    pub fn plain(sb: &Sandbox) -> Result<Dnsmasq> {
        Self::start(sb, 53, &PLAIN_ANSWERS)
    }

    fn start(sb: &Sandbox, port: u16, answers: &[&str; 2]) -> Result<Dnsmasq> {
        let dir = std::env::temp_dir().join(format!("interceptor-test-{}-dnsmasq{port}", sb.id));
        fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        let log = dir.join("log");
        // A process of the pod (its cgroup and network namespace), as root: dnsmasq keeps
        // root (`--user=root`) so that it needs no account of its own.
        let mut cmd = match command(Path::new("/usr/sbin/dnsmasq"), &sb.in_pod(0)) {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        cmd.arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--bind-interfaces")
            .arg(format!("--listen-address={NAMESERVER}"))
            .arg(format!("--port={port}"))
            .arg("--user=root")
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
            .arg(format!("--log-facility={}", log.display()))
            .arg("--log-queries");
        for (name, ip) in NAMES.iter().zip(answers) {
            cmd.arg(format!("--host-record={name},{ip}"));
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e).context("spawn dnsmasq (cargo xtask setup installs dnsmasq-base)");
            }
        };
        let mut d = Dnsmasq { child, dir };
        d.wait_started(&log, port)?;
        Ok(d)
    }

    /// dnsmasq logs "started" once its sockets are bound.
    fn wait_started(&mut self, log: &Path, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if fs::read_to_string(log).is_ok_and(|l| l.contains("started, version")) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                bail!("dnsmasq on {NAMESERVER}:{port} exited ({status}): {err} {}", self.log());
            }
            if Instant::now() > deadline {
                bail!("dnsmasq on {NAMESERVER}:{port} did not start: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What dnsmasq logged (its queries, with --log-queries).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The pod's resolver configuration: a resolv.conf naming 127.0.0.153 (one try, one second:
/// a failure is quick), removed on drop.
pub struct PodResolver {
    dir: PathBuf,
}

impl PodResolver {
    pub fn new(sb: &Sandbox) -> Result<PodResolver> {
        let dir = std::env::temp_dir().join(format!("interceptor-test-{}-resolver", sb.id));
        fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        let r = PodResolver { dir };
        fs::write(r.resolv_conf(), format!("nameserver {NAMESERVER}\noptions timeout:1 attempts:1\n"))?;
        Ok(r)
    }

    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }

    /// `getent hosts NAME`: the glibc resolver, as `who`. Its first address, or
    /// `error: exit N` when it resolved nothing.
    pub fn getent(&self, who: &Identity, name: &str) -> Result<String> {
        let mut cmd = command_with_resolv_conf(Path::new("/usr/bin/getent"), who, &self.resolv_conf())?;
        cmd.args(["hosts", name]);
        let (code, out) = run(cmd, Duration::from_secs(20))?;
        Ok(match (code, out.split_whitespace().next()) {
            (0, Some(ip)) => ip.to_string(),
            _ => format!("error: exit {code}"),
        })
    }

    /// `dig @127.0.0.153 NAME A` (over TCP with `tcp`), as `who`: its A records, or
    /// `error: exit N`.
    pub fn dig(&self, who: &Identity, name: &str, tcp: bool) -> Result<String> {
        let mut cmd = command_with_resolv_conf(Path::new("/usr/bin/dig"), who, &self.resolv_conf())?;
        cmd.args([&format!("@{NAMESERVER}"), name, "A", "+short", "+tries=1", "+time=1"]);
        if tcp {
            cmd.arg("+tcp");
        }
        let (code, out) = run(cmd, Duration::from_secs(20))?;
        let answers: Vec<&str> = out.lines().filter(|l| l.parse::<std::net::Ipv4Addr>().is_ok()).collect();
        Ok(if code == 0 && !answers.is_empty() { answers.join(",") } else { format!("error: exit {code}") })
    }
}

impl Drop for PodResolver {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `netprobe dns` as `who`, waiting one second for the reply: the parsed JSON line.
pub fn query(who: &Identity, to: &str, name: &str, sendto: bool) -> Result<Value> {
    query_waiting(who, to, name, sendto, Duration::from_secs(1))
}

/// `query` with its own timeout. `to` may name several destinations (`A --to B`): one
/// query to each over the same socket, the later results under `then`.
pub fn query_waiting(who: &Identity, to: &str, name: &str, sendto: bool, timeout: Duration) -> Result<Value> {
    let mut cmd = command(&netprobe(), who)?;
    let ms = timeout.as_millis().to_string();
    cmd.args(["dns", "--to"]).args(to.split_whitespace()).args(["--name", name, "--timeout-ms", &ms]);
    if sendto {
        cmd.arg("--sendto");
    }
    let (code, out) = run(cmd, Duration::from_secs(10))?;
    if code != 0 {
        bail!("netprobe dns --to {to} failed (exit {code}): {out}");
    }
    serde_json::from_str(out.trim()).with_context(|| format!("bad netprobe output {out:?}"))
}

/// Runs a command to completion: (exit code, stdout). Killed after `timeout`.
fn run(mut cmd: Command, timeout: Duration) -> Result<(i32, String)> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().context("spawn")?;
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
            bail!("{cmd:?} timed out after {timeout:?}");
        }
    };
    Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned()))
}
