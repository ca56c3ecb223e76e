//! One pod and its world, in fresh namespaces; everything removed on drop.
//!
//! ```text
//!   pod netns                                  world netns
//!   eth0 198.51.100.2/25   2001:db8:1::2/64 ── eth0 198.51.100.1/25   2001:db8:1::1/64
//!   eth1 198.51.100.130/25                  ── eth1 198.51.100.129/25
//!   default via 198.51.100.1 (eth0)            lo: 203.0.113.10, .20, .200, 2001:db8:2::10, ::20
//!   203.0.113.128/25 via 198.51.100.129 (eth1)
//! ```
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use interceptor::ebpf::{LoadOptions, PinDir};

use crate::procs::{Identity, command, ip, netprobe, output, spawn_ready};

pub const POD_IP: &str = "198.51.100.2";
pub const POD_IP6: &str = "2001:db8:1::2";
pub const WORLD_IP: &str = "198.51.100.1";
pub const APP_UID: u32 = 1000;
pub const PROXY_UID: u32 = 1500;
/// Where a user-namespaced pod's UIDs start outside (inside 0 = outside this).
pub const USERNS_BASE: u32 = 100_000;
/// Ports the application listens on in the pod.
pub const APP_PORTS: [u16; 8] = [8080, 9090, 15010, 15901, 15902, 15903, 15904, 6379];
/// Ports the world listens on.
pub const WORLD_PORTS: [u16; 4] = [80, 443, 6379, 7070];

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh sandbox name, `ict<PID>x<N>`: unique on the machine while this process lives
/// (the stale cleanup of `cargo xtask test` spares names whose process is alive).
pub fn next_id() -> String {
    format!("ict{}x{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst))
}

/// Why the kernel tests need root, for the message of a test that cannot run.
const NEEDS_ROOT: &str =
    "these tests program the kernel (namespaces, cgroups, iptables, eBPF): run them as root (`cargo xtask test`)";

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails the test with a clear message when not run as root (a test that forgot
/// [`needs_root!`](crate::needs_root) fails here rather than half-way through its setup).
pub fn require_root() {
    assert!(is_root(), "{NEEDS_ROOT}");
}

/// Says on stderr, in one line, that the running test is skipped because it is not root.
/// Written to the process's stderr itself: libtest captures `eprintln!` of passing tests.
pub fn report_skipped() {
    use std::io::Write;
    // libtest names each test's thread after the test; a harness-less test is its program.
    let test = match std::thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        _ => std::env::args().next().map(|a| a.rsplit('/').next().unwrap_or_default().to_string()).unwrap_or_default(),
    };
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: not root; {NEEDS_ROOT}");
}

/// What a skipped test returns: `()` or `Ok(())`.
pub trait Skipped {
    fn skipped() -> Self;
}

impl Skipped for () {
    fn skipped() {}
}

impl<E> Skipped for std::result::Result<(), E> {
    fn skipped() -> Self {
        Ok(())
    }
}

/// The first line of every test that programs the kernel: when not run as root, the test
/// returns at once (it passes) with one line on stderr, instead of failing in its setup.
#[macro_export]
macro_rules! needs_root {
    () => {
        if !$crate::sandbox::is_root() {
            $crate::sandbox::report_skipped();
            return $crate::sandbox::Skipped::skipped();
        }
    };
}

pub struct Sandbox {
    pub id: String,
    /// The pod's host number: its addresses are 198.51.100.<host>, 198.51.100.<128+host>
    /// and 2001:db8:1::<host> (2 by default; pods sharing a node need distinct addresses).
    pub host: u8,
    pub pod: String,
    pub world: String,
    pub cgroup: PathBuf,
    pub pins: PinDir,
    /// The cgroup the pod's processes join (this sandbox's own unless it shares another's).
    pod_cgroup: Mutex<PathBuf>,
    /// A pod with its own user namespace (Kubernetes `hostUsers: false`): the process that
    /// holds it, and the UID range it maps (inside 0 = outside `USERNS_BASE`).
    userns: Option<Mutex<Child>>,
    procs: Mutex<Vec<(String, Child)>>,
}

impl Sandbox {
    /// A pod and world joined by two veth pairs, with addresses and routes.
    pub fn new() -> Result<Sandbox> {
        Self::with_host(2)
    }

    /// A sandbox whose pod has host number `host` (2..=126).
    pub fn with_host(host: u8) -> Result<Sandbox> {
        Self::create(host, false)
    }

    /// A pod whose network namespace is owned by its own user namespace, which maps UIDs
    /// and GIDs 0..65536 inside to `USERNS_BASE`.. outside (as `hostUsers: false` does).
    pub fn with_userns() -> Result<Sandbox> {
        Self::create(2, true)
    }

    fn create(host: u8, with_userns: bool) -> Result<Sandbox> {
        require_root();
        assert!((2..=126).contains(&host), "host number {host} outside 2..=126");
        let id = next_id();
        let cgroot = interceptor::ebpf::loader::cgroup2_root()?;
        let cgroup = cgroot.join(format!("interceptor-test-{id}"));
        let sb = Sandbox {
            pod: format!("{id}p"),
            world: format!("{id}w"),
            pod_cgroup: Mutex::new(cgroup.clone()),
            cgroup,
            host,
            pins: PinDir::new(format!("/sys/fs/bpf/interceptor-test-{id}")),
            id,
            procs: Mutex::new(Vec::new()),
            userns: None,
        };
        let mut sb = sb;
        if with_userns {
            sb.userns = Some(Mutex::new(sb.make_userns_pod()?));
        }
        sb.build().with_context(|| format!("building sandbox {}", sb.id))?;
        Ok(sb)
    }

    pub fn pod_ip(&self) -> String {
        format!("198.51.100.{}", self.host)
    }

    pub fn pod_ip6(&self) -> String {
        format!("2001:db8:1::{:x}", self.host)
    }

    /// Creates the pod's network namespace inside a new user namespace, held by a process
    /// that lives as long as the sandbox (`ip netns attach` pins the network namespace).
    fn make_userns_pod(&self) -> Result<Child> {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("infinity").stdin(std::process::Stdio::null());
        // SAFETY: unshare is async-signal-safe; the forked child is single-threaded, as a new
        // user namespace requires. (Not util-linux's unshare: busybox's, in the kernel
        // matrix's guests, has no way to write the maps.)
        unsafe {
            cmd.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // spawn() returns once the child has exec'd: its namespaces exist.
        let mut child = cmd.spawn().context("spawn a process in a new user and network namespace")?;
        let pid = child.id();
        let result = (|| -> Result<()> {
            // Written from the parent user namespace, as a container runtime does.
            let map = format!("0 {USERNS_BASE} 65536\n");
            fs::write(format!("/proc/{pid}/uid_map"), &map).context("write uid_map")?;
            fs::write(format!("/proc/{pid}/gid_map"), &map).context("write gid_map")?;
            ip(&["netns", "attach", &self.pod, &pid.to_string()])
        })();
        if let Err(e) = result {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(child)
    }

    /// The pod's user namespace, if it has its own.
    pub fn pod_userns(&self) -> Option<PathBuf> {
        self.userns.as_ref().map(|c| PathBuf::from(format!("/proc/{}/ns/user", c.lock().unwrap().id())))
    }

    fn build(&self) -> Result<()> {
        let (p, w) = (self.pod.as_str(), self.world.as_str());
        let eth0 = format!("{}/25", self.pod_ip());
        let eth1 = format!("198.51.100.{}/25", 128 + self.host as u16);
        let eth0_6 = format!("{}/64", self.pod_ip6());
        if self.userns.is_none() {
            ip(&["netns", "add", p])?;
        }
        ip(&["netns", "add", w])?;
        // Created directly inside the namespaces: nothing ever exists in the root one.
        ip(&["-n", p, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", w])?;
        ip(&["-n", p, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1", "netns", w])?;
        for (ns, dev, addr) in [
            (p, "eth0", eth0.as_str()),
            (p, "eth1", eth1.as_str()),
            (w, "eth0", "198.51.100.1/25"),
            (w, "eth1", "198.51.100.129/25"),
            (w, "lo", "203.0.113.10/32"),
            (w, "lo", "203.0.113.20/32"),
            (w, "lo", "203.0.113.200/32"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
        }
        for (ns, dev, addr) in [
            (p, "eth0", eth0_6.as_str()),
            (w, "eth0", "2001:db8:1::1/64"),
            (w, "lo", "2001:db8:2::10/128"),
            (w, "lo", "2001:db8:2::20/128"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev, "nodad"])?;
        }
        // No duplicate address detection (nothing else can hold a sandbox's addresses): the
        // link-local addresses and their routes then exist as soon as the links are up, so
        // a pod's routing table is final before a test enrolls it. With DAD they arrive a
        // second or more later (more in a TCG guest), and a test comparing the tables of two
        // enrolls saw the table change in between.
        for ns in [p, w] {
            no_dad(&self.netns_path(ns))?;
        }
        for ns in [p, w] {
            for dev in ["lo", "eth0", "eth1"] {
                ip(&["-n", ns, "link", "set", dev, "up"])?;
            }
        }
        wait_for_link_local(p)?;
        ip(&["-n", p, "route", "add", "default", "via", WORLD_IP, "dev", "eth0"])?;
        ip(&["-n", p, "route", "add", "203.0.113.128/25", "via", "198.51.100.129", "dev", "eth1"])?;
        ip(&["-n", p, "-6", "route", "add", "default", "via", "2001:db8:1::1", "dev", "eth0"])?;
        fs::create_dir(&self.cgroup).with_context(|| format!("create cgroup {}", self.cgroup.display()))?;
        Ok(())
    }

    pub fn netns_path(&self, name: &str) -> PathBuf {
        Path::new("/var/run/netns").join(name)
    }

    pub fn pod_netns(&self) -> PathBuf {
        self.netns_path(&self.pod)
    }

    /// A process of the pod (in its cgroup), as `uid`.
    pub fn in_pod(&self, uid: u32) -> Identity {
        let cg = self.pod_cgroup.lock().unwrap().join("cgroup.procs");
        Identity { netns: self.pod_netns(), cgroup_procs: Some(cg), userns: self.pod_userns(), uid }
    }

    /// From now on this pod's processes run in `other`'s cgroup: a second pod on the same
    /// node, under the programs attached there.
    pub fn share_cgroup_of(&self, other: &Sandbox) {
        *self.pod_cgroup.lock().unwrap() = other.cgroup.clone();
    }

    /// A process of the world (outside the pod's cgroup), as root.
    pub fn in_world(&self) -> Identity {
        Identity { netns: self.netns_path(&self.world), cgroup_procs: None, userns: None, uid: 0 }
    }

    /// Starts a netprobe server and keeps it until the sandbox is dropped.
    pub fn serve(&self, who: &Identity, name: &str, tcp: &[String], udp: &[String]) -> Result<()> {
        let mut cmd = command(&netprobe(), who)?;
        cmd.arg("serve").arg("--name").arg(name);
        for a in tcp {
            cmd.arg("--listen").arg(a);
        }
        for a in udp {
            cmd.arg("--udp").arg(a);
        }
        let child = spawn_ready(cmd, &format!("server {name}"))?;
        self.procs.lock().unwrap().push((name.to_string(), child));
        Ok(())
    }

    /// Starts a long-running netprobe with arbitrary arguments (e.g. `sink`).
    pub fn start(&self, who: &Identity, args: &[&str]) -> Result<()> {
        let mut cmd = command(&netprobe(), who)?;
        cmd.args(args);
        let child = spawn_ready(cmd, &format!("netprobe {}", args.join(" ")))?;
        self.procs.lock().unwrap().push((args.join(" "), child));
        Ok(())
    }

    /// The sidecar stand-in (UID 1500: outbound 15001, inbound 15003), the application
    /// (UID 1000) and the world's servers.
    pub fn start_servers(&self) -> Result<()> {
        self.start_sidecar()?;
        let app: Vec<String> = APP_PORTS.iter().flat_map(|p| [format!("0.0.0.0:{p}"), format!("[::]:{p}")]).collect();
        self.serve(&self.in_pod(APP_UID), "app", &app, &[])?;
        let world: Vec<String> =
            WORLD_PORTS.iter().flat_map(|p| [format!("0.0.0.0:{p}"), format!("[::]:{p}")]).collect();
        self.serve(&self.in_world(), "world", &world, &["0.0.0.0:53".into(), "[::]:53".into()])?;
        Ok(())
    }

    pub fn start_sidecar(&self) -> Result<()> {
        self.serve(&self.in_pod(PROXY_UID), "sidecar-out", &["0.0.0.0:15001".into(), "[::]:15001".into()], &[])?;
        self.serve(&self.in_pod(PROXY_UID), "sidecar-in", &["0.0.0.0:15003".into(), "[::]:15003".into()], &[])?;
        Ok(())
    }

    /// Stops every process started so far.
    pub fn kill_all(&self) {
        self.kill_where(|_| true);
    }

    /// Stops the servers of one name (e.g. the sidecar's, to restart it).
    pub fn kill_named(&self, name: &str) -> usize {
        self.kill_where(|n| n == name)
    }

    fn kill_where(&self, pick: impl Fn(&str) -> bool) -> usize {
        let mut procs = self.procs.lock().unwrap();
        let (gone, keep): (Vec<_>, Vec<_>) = procs.drain(..).partition(|(n, _)| pick(n));
        *procs = keep;
        let n = gone.len();
        for (_, mut c) in gone {
            let _ = c.kill();
            let _ = c.wait();
        }
        n
    }

    /// Runs `netprobe ARGS` to completion as `who` and returns its stdout.
    pub fn probe(&self, who: &Identity, args: &[&str], timeout: Duration) -> Result<String> {
        let mut cmd = command(&netprobe(), who)?;
        cmd.args(args);
        output(cmd, &format!("netprobe {}", args.join(" ")), timeout)
    }

    /// Opens a connection to every destination at once (`netprobe connect-many`) as `who`;
    /// returns (destination, the client's JSON report) pairs.
    pub fn connect_many(&self, who: &Identity, dsts: &[String]) -> Result<Vec<(String, serde_json::Value)>> {
        let mut args = vec!["connect-many"];
        for d in dsts {
            args.push("--to");
            args.push(d);
        }
        let out = self.probe(who, &args, Duration::from_secs(120))?;
        out.lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("bad line {line:?}"))?;
                Ok((v["to"].as_str().unwrap_or_default().to_string(), v))
            })
            .collect()
    }

    /// Loads eBPF mode attached to this sandbox's cgroup, pinned in its own directory.
    pub fn load_ebpf(&self) -> Result<()> {
        self.load_ebpf_with(None, None)
    }

    /// Loads eBPF mode with tracking limits (node, per pod).
    pub fn load_ebpf_with(&self, node: Option<u32>, per_pod: Option<u32>) -> Result<()> {
        self.load_ebpf_options(node, per_pod, false)
    }

    /// Loads eBPF mode with socket-level acceleration (`ebpf load --accelerate`).
    pub fn load_ebpf_accelerated(&self) -> Result<()> {
        self.load_ebpf_options(None, None, true)
    }

    fn load_ebpf_options(&self, node: Option<u32>, per_pod: Option<u32>, accelerate: bool) -> Result<()> {
        interceptor::ebpf::load(&LoadOptions {
            cgroup: Some(self.cgroup.clone()),
            pin_dir: self.pins.clone(),
            max_tracked_connections: node,
            max_tracked_connections_per_pod: per_pod,
            accelerate,
        })?;
        Ok(())
    }

    /// Enrolls this pod (eBPF mode must be loaded in `pins`).
    pub fn enroll_in(
        &self,
        pins: &PinDir,
        policy: &interceptor::policy::Policy,
    ) -> Result<interceptor::ebpf::enroll::EnrollReport> {
        Ok(interceptor::ebpf::enroll(
            policy,
            &interceptor::ebpf::EnrollOptions {
                netns: interceptor::netns::Netns::at(self.pod_netns()),
                pod_ips: vec![],
                pin_dir: pins.clone(),
                pod_name: Some(format!("test/{}", self.id)),
                allow_host_netns: false,
            },
        )?)
    }

    pub fn enroll(&self, policy: &interceptor::policy::Policy) -> Result<interceptor::ebpf::enroll::EnrollReport> {
        self.enroll_in(&self.pins, policy)
    }

    /// This pod's eBPF decision counters (reason → count) in `pins`.
    pub fn counters_in(&self, pins: &PinDir) -> Result<std::collections::BTreeMap<u32, u64>> {
        let cookie = interceptor::netns::Netns::at(self.pod_netns()).cookie()?;
        let maps = interceptor::ebpf::maps::PinnedMaps::open(pins)?;
        let mut out = std::collections::BTreeMap::new();
        for (k, v) in maps.counters.iter().filter_map(Result::ok) {
            if k.netns_cookie == cookie {
                *out.entry(k.reason).or_default() += v.iter().sum::<u64>();
            }
        }
        Ok(out)
    }

    pub fn counters(&self) -> Result<std::collections::BTreeMap<u32, u64>> {
        self.counters_in(&self.pins)
    }

    /// The local (address, port) of every TCP socket in the pod's namespace, in any state
    /// (/proc/net/tcp and tcp6, read from inside it: no `ss` needed in the kernel matrix).
    pub fn pod_sockets(&self) -> Result<Vec<(std::net::IpAddr, u16)>> {
        interceptor::netns::Netns::at(self.pod_netns()).run(|| {
            let mut out = Vec::new();
            for file in ["tcp", "tcp6"] {
                let text = fs::read_to_string(Path::new("/proc/thread-self/net").join(file))?;
                for line in text.lines().skip(1) {
                    let Some(local) = line.split_whitespace().nth(1) else { continue };
                    let Some((addr, port)) = local.split_once(':') else { continue };
                    // The address is the kernel's u32 words printed in hex (host order).
                    let words: Vec<u32> = (0..addr.len() / 8)
                        .filter_map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok())
                        .collect();
                    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
                    let ip = match bytes.len() {
                        4 => std::net::IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]]),
                        16 => {
                            let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[..]).expect("16 bytes"));
                            v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(std::net::IpAddr::V6(v6))
                        }
                        _ => continue,
                    };
                    if let Ok(port) = u16::from_str_radix(port, 16) {
                        out.push((ip, port));
                    }
                }
            }
            Ok(out)
        })
    }

    /// The pod's route to `ip`, as the kernel answers `ip route get`: (device, is local).
    pub fn pod_route(&self, ip: &str) -> Result<(String, bool)> {
        let out = std::process::Command::new("ip").args(["-n", &self.pod, "-j", "route", "get", ip]).output()?;
        if !out.status.success() {
            bail!("ip route get {ip}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let r = &v[0];
        let dev = r["dev"].as_str().unwrap_or_default().to_string();
        let local = r["type"].as_str() == Some("local") || dev == "lo";
        Ok((dev, local))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kill_all();
        let _ = interceptor::ebpf::unload(&self.pins);
        for ns in [&self.pod, &self.world] {
            let _ = ip(&["netns", "del", ns]);
        }
        if let Some(holder) = &self.userns {
            let mut c = holder.lock().unwrap();
            let _ = c.kill();
            let _ = c.wait();
        }
        // The cgroup can only go once its processes are gone.
        for _ in 0..50 {
            if !self.cgroup.exists() || fs::remove_dir(&self.cgroup).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Turns IPv6 duplicate address detection off in a namespace (its interfaces, and any made
/// later), before its links come up.
fn no_dad(netns: &Path) -> Result<()> {
    interceptor::netns::Netns::at(netns).run(|| -> Result<()> {
        // /proc/sys/net is the namespace of the thread that opens it: this one.
        for conf in ["all", "default", "lo", "eth0", "eth1"] {
            let path = format!("/proc/sys/net/ipv6/conf/{conf}/accept_dad");
            fs::write(&path, "0").with_context(|| format!("write {path}"))?;
        }
        Ok(())
    })
}

/// Waits until the pod's two links have their (final, not tentative) link-local addresses:
/// the kernel adds them, and their routes, from a work queue just after the links come up.
fn wait_for_link_local(netns: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("ip").args(["-n", netns, "-6", "-o", "addr", "show", "scope", "link"]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let ready =
            |dev: &str| text.lines().any(|l| l.split_whitespace().nth(1) == Some(dev) && !l.contains("tentative"));
        if ready("eth0") && ready("eth1") {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("the links of {netns} have no link-local address after 10 s: {text}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
