//! A node with a real container runtime: podman 4.3 (CNI backend) + runc + Debian's CNI
//! plugins, run inside a "node" network namespace of our own, with everything podman keeps
//! in a temporary directory (`--root`, `--runroot`, `--tmpdir`, a private containers.conf
//! through CONTAINERS_CONF), containers under a test cgroup (`--cgroup-parent`) that the
//! daemon attaches its programs to, and the interceptor daemon started by the test.
//!
//! ```text
//!   node netns <id>n                                   pod netns (podman's, netns-UUID)
//!   br0 198.51.100.1/25 ─── veth (bridge plugin) ─── eth0 198.51.100.x/25, default via .1
//!   lo  203.0.113.10, 203.0.113.20                     sidecar (UID 1500): 15001, 15003
//!   world server: 80, 443, 7070                        app (UID 1000): 8080, 9090
//!   br1 198.51.100.129/25: the "exempt" network (its plugin entry names kube-system)
//! ```
//!
//! Everything is removed on drop, also when a test fails: containers (`podman rm -f`), the
//! daemon, the pins, the node namespace, the cgroups (v2 and the v1 hierarchies podman
//! populates on hybrid hosts), the CNI cache files of our networks, the temporary
//! directory.
use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use interceptor::{api::client::Client, ebpf::PinDir};

use crate::{
    flows::Landing,
    procs::{Identity, command, netprobe, sibling_binary},
    sandbox::{next_id, require_root},
};

pub const PODMAN: &str = "/usr/bin/podman";
pub const CNI_PLUGINS: &str = "/usr/lib/cni";
pub const NODE_IP: &str = "198.51.100.1";
/// On the node's loopback: one excluded by the pod's manifest, one not.
pub const NODE_EXTRA: [&str; 2] = ["203.0.113.10", "203.0.113.20"];
pub const WORLD_PORTS: [u16; 3] = [80, 443, 7070];

/// Why the podman tests cannot run here (None: they can). Only a missing runtime is a
/// reason; `cargo xtask setup` installs podman, runc and the CNI plugins.
pub fn unavailable() -> Option<String> {
    for (path, pkg) in
        [(PODMAN, "podman"), ("/usr/sbin/runc", "runc"), ("/usr/lib/cni/bridge", "containernetworking-plugins")]
    {
        if !Path::new(path).exists() {
            return Some(format!("{path} is missing (Debian package {pkg}; `cargo xtask setup` installs it)"));
        }
    }
    None
}

pub struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
}

pub struct Node {
    pub id: String,
    /// The node namespace's name under /var/run/netns.
    pub netns: String,
    /// The test cgroup (v2), parent of every container's.
    pub cgroup: PathBuf,
    pub dir: PathBuf,
    /// The meshed network and the exempt one.
    pub network: String,
    pub exempt_network: String,
    pub pins: PinDir,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub mesh_config: PathBuf,
    pub manifests: PathBuf,
    /// The daemon's /healthz and /readyz (inside the node namespace).
    pub metrics_addr: String,
    containers: Mutex<Vec<String>>,
    /// The network namespace files podman created for our containers (removed on drop if
    /// podman could not).
    netns_files: Mutex<Vec<PathBuf>>,
    servers: Mutex<Vec<Child>>,
    daemon: Mutex<Option<Daemon>>,
    /// Everything the daemon printed (for failures and the report).
    pub daemon_log: Mutex<Vec<String>>,
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

impl Node {
    pub fn new() -> Result<Node> {
        require_root();
        let id = next_id();
        let cgroup = interceptor::ebpf::loader::cgroup2_root()?.join(format!("interceptor-test-{id}"));
        let dir = PathBuf::from(format!("/tmp/interceptor-test-{id}"));
        let node = Node {
            netns: format!("{id}n"),
            network: format!("{id}m"),
            exempt_network: format!("{id}e"),
            pins: PinDir::new(format!("/sys/fs/bpf/interceptor-test-{id}")),
            socket: dir.join("api.sock"),
            state_dir: dir.join("state"),
            mesh_config: dir.join("mesh/meshconfig.yaml"),
            manifests: dir.join("manifests"),
            metrics_addr: "127.0.0.1:9464".into(),
            cgroup,
            dir,
            id,
            containers: Mutex::new(Vec::new()),
            netns_files: Mutex::new(Vec::new()),
            servers: Mutex::new(Vec::new()),
            daemon: Mutex::new(None),
            daemon_log: Mutex::new(Vec::new()),
        };
        node.build().with_context(|| format!("building podman node {}", node.id))?;
        Ok(node)
    }

    pub fn netns_path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.netns)
    }

    /// Where the node's own processes run (root, no pod cgroup).
    pub fn in_node(&self) -> Identity {
        Identity { netns: self.netns_path(), cgroup_procs: None, userns: None, uid: 0 }
    }

    fn build(&self) -> Result<()> {
        crate::procs::ip(&["netns", "add", &self.netns])?;
        crate::procs::ip(&["-n", &self.netns, "link", "set", "lo", "up"])?;
        for a in NODE_EXTRA {
            crate::procs::ip(&["-n", &self.netns, "addr", "add", &format!("{a}/32"), "dev", "lo"])?;
        }
        fs::create_dir(&self.cgroup).with_context(|| format!("create cgroup {}", self.cgroup.display()))?;
        let d = &self.dir;
        for sub in ["root", "runroot", "tmp", "net.d", "cnibin", "ipam", "rootfs", "state", "mesh", "manifests/default"]
        {
            fs::create_dir_all(d.join(sub))?;
        }
        // CNI plugins: Debian's, and the freshly built interceptor-cni.
        for e in fs::read_dir(CNI_PLUGINS)?.flatten() {
            symlink(e.path(), d.join("cnibin").join(e.file_name()))?;
        }
        symlink(sibling_binary("interceptor-cni"), d.join("cnibin/interceptor-cni"))?;
        for (file, net, bridge, subnet, extra) in [
            ("10-meshed.conflist", &self.network, "br0", "198.51.100.0/25", ""),
            (
                "20-exempt.conflist",
                &self.exempt_network,
                "br1",
                "198.51.100.128/25",
                r#", "defaultNamespace": "kube-system""#,
            ),
        ] {
            write(
                &d.join("net.d").join(file),
                &format!(
                    r#"{{
  "cniVersion": "1.0.0",
  "name": "{net}",
  "plugins": [
    {{"type": "bridge", "bridge": "{bridge}", "isGateway": true, "ipMasq": false,
      "ipam": {{"type": "host-local", "dataDir": "{ipam}", "ranges": [[{{"subnet": "{subnet}"}}]], "routes": [{{"dst": "0.0.0.0/0"}}]}}}},
    {{"type": "interceptor-cni", "socket": "{socket}", "timeoutSeconds": 5{extra},
      "capabilities": {{"io.kubernetes.cri.pod-annotations": true}}}}
  ]
}}
"#,
                    ipam = d.join("ipam").display(),
                    socket = self.socket.display(),
                ),
            )?;
        }
        write(
            &d.join("containers.conf"),
            &format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\n",
                d.join("cnibin").display(),
                d.join("net.d").display()
            ),
        )?;
        // A minimal root filesystem: /usr comes from the host (read-only bind mount).
        let rootfs = d.join("rootfs");
        for dir in ["usr", "etc", "tmp", "proc", "sys", "dev", "itest"] {
            fs::create_dir_all(rootfs.join(dir))?;
        }
        fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777))?;
        for (link, target) in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")] {
            symlink(target, rootfs.join(link))?;
        }
        write(
            &rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nproxy:x:1500:1500:sidecar:/tmp:/bin/sh\napp:x:1000:1000:app:/tmp:/bin/sh\n",
        )?;
        write(&rootfs.join("etc/group"), "root:x:0:\nproxy:x:1500:\napp:x:1000:\n")?;
        write(&self.mesh_config, MESH_CONFIG)?;
        Ok(())
    }

    /// `podman …` with our storage and configuration, inside the node namespace.
    pub fn podman(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = command(Path::new(PODMAN), &self.in_node())?;
        let d = &self.dir;
        cmd.env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .arg("--network-config-dir")
            .arg(d.join("net.d"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", "runc"])
            .args(args);
        Ok(cmd)
    }

    /// Runs podman; Ok(stdout) or Err with its stderr.
    pub fn podman_output(&self, args: &[&str]) -> Result<String> {
        let out = self.podman(args)?.stdin(Stdio::null()).output().context("run podman")?;
        if !out.status.success() {
            bail!("podman {} failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `podman run -d` of a container from our rootfs, under the test cgroup, with the test
    /// binaries at /itest. Returns the container ID, or podman's error.
    pub fn run(&self, name: &str, network: &str, user: u32, argv: &[&str]) -> Result<String> {
        self.containers.lock().unwrap().push(name.to_string());
        let itest = netprobe().parent().expect("netprobe's directory").display().to_string();
        let cgroup_parent = format!("/interceptor-test-{}", self.id);
        let user = format!("{user}:{user}");
        let volume = format!("{itest}:/itest:ro");
        let rootfs = self.dir.join("rootfs").display().to_string();
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--user",
            &user,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--cgroup-parent",
            &cgroup_parent,
            "-v",
            "/usr:/usr:ro",
            "-v",
            &volume,
            "--rootfs",
            &rootfs,
        ];
        args.extend_from_slice(argv);
        let id = self.podman_output(&args)?;
        if let Ok(key) = self.podman_output(&["inspect", "--format", "{{.NetworkSettings.SandboxKey}}", name])
            && key.starts_with("/run/netns/")
        {
            self.netns_files.lock().unwrap().push(PathBuf::from(key));
        }
        Ok(id)
    }

    /// The sidecar stand-in (UID 1500: 15001 outbound, 15003 inbound) in its own pod
    /// network, and the application (UID 1000: 8080, 9090) sharing its namespace.
    pub fn start_pod(&self, name: &str, network: &str) -> Result<(String, String)> {
        let sidecar = self.run(
            name,
            network,
            1500,
            &[
                "/bin/sh",
                "-c",
                "/itest/netprobe serve --name sidecar-out --listen 0.0.0.0:15001 & exec /itest/netprobe serve --name sidecar-in --listen 0.0.0.0:15003",
            ],
        )?;
        let app_name = format!("{name}-app");
        let app = self.run(
            &app_name,
            &format!("container:{name}"),
            1000,
            &["/itest/netprobe", "serve", "--name", "app", "--listen", "0.0.0.0:8080", "--listen", "0.0.0.0:9090"],
        )?;
        self.wait_logs(name, 2)?;
        self.wait_logs(&app_name, 1)?;
        Ok((sidecar, app))
    }

    /// Waits until a container printed `ready` n times (its servers listen).
    pub fn wait_logs(&self, name: &str, n: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let logs = self.podman_output(&["logs", name]).unwrap_or_default();
            if logs.lines().filter(|l| l.trim() == "ready").count() >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("container {name} did not start its servers: {logs:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `podman rm -f`, one container at a time in the order given (dependents first).
    pub fn remove(&self, names: &[&str]) -> Result<()> {
        for n in names {
            self.podman_output(&["rm", "-f", "-t", "0", n])?;
        }
        Ok(())
    }

    /// A connection from inside a container (`podman exec`, as the container's user).
    pub fn connect_from(&self, container: &str, dst: &str) -> Result<Landing> {
        let out = self.podman_output(&[
            "exec",
            container,
            "/itest/netprobe",
            "connect",
            "--to",
            dst,
            "--timeout-ms",
            "2000",
        ])?;
        let v: serde_json::Value = serde_json::from_str(out.trim()).with_context(|| format!("bad output {out:?}"))?;
        Ok(Landing::from_json(&v))
    }

    /// A connection from the node namespace (root, outside the pods' cgroup).
    pub fn connect_from_node(&self, dst: &str) -> Result<Landing> {
        let mut cmd = command(&netprobe(), &self.in_node())?;
        cmd.args(["connect", "--to", dst, "--timeout-ms", "2000"]);
        let out = crate::procs::output(cmd, &format!("netprobe connect {dst}"), Duration::from_secs(10))?;
        Ok(Landing::from_json(&serde_json::from_str(out.trim())?))
    }

    /// The world's servers in the node namespace.
    pub fn start_world(&self) -> Result<()> {
        let mut cmd = command(&netprobe(), &self.in_node())?;
        cmd.args(["serve", "--name", "world"]);
        for p in WORLD_PORTS {
            cmd.arg("--listen").arg(format!("0.0.0.0:{p}"));
        }
        let child = crate::procs::spawn_ready(cmd, "world server")?;
        self.servers.lock().unwrap().push(child);
        Ok(())
    }

    pub fn write_manifest(&self, namespace: &str, name: &str, annotations: &[(&str, &str)]) -> Result<()> {
        let dir = self.manifests.join(namespace);
        fs::create_dir_all(&dir)?;
        let ann: Vec<String> = annotations.iter().map(|(k, v)| format!("    {k}: \"{v}\"")).collect();
        write(
            &dir.join(format!("{name}.yaml")),
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  annotations:\n{}\n",
                ann.join("\n")
            ),
        )
    }

    /// Starts the daemon in the node namespace and waits until it says it is ready.
    pub fn start_daemon(&self, mode: &str) -> Result<Duration> {
        let started = Instant::now();
        let mut cmd = command(&sibling_binary("interceptor"), &self.in_node())?;
        cmd.args(["-v", "daemon", "--mode", mode])
            .arg("--pin-dir")
            .arg(self.pins.path())
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--mesh-config")
            .arg(&self.mesh_config)
            .arg("--pod-manifest-dir")
            .arg(&self.manifests)
            .args(["--metrics-addr", &self.metrics_addr, "--reconcile-interval", "500ms"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawn the daemon")?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        *self.daemon.lock().unwrap() = Some(Daemon { child, lines: rx });
        self.wait_daemon_line("interceptor daemon ready", Duration::from_secs(30))?;
        Ok(started.elapsed())
    }

    /// Reads the daemon's output until a line contains `needle`.
    pub fn wait_daemon_line(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let line = {
                let guard = self.daemon.lock().unwrap();
                let d = guard.as_ref().context("no daemon running")?;
                d.lines.recv_timeout(Duration::from_millis(50))
            };
            match line {
                Ok(l) => {
                    self.daemon_log.lock().unwrap().push(l.clone());
                    if l.contains(needle) {
                        return Ok(l);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!(
                        "the daemon exited before printing {needle:?}:\n{}",
                        self.daemon_log.lock().unwrap().join("\n")
                    )
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the daemon did not print {needle:?} in {timeout:?}:\n{}",
                    self.daemon_log.lock().unwrap().join("\n")
                );
            }
        }
    }

    /// Collects what the daemon printed so far.
    pub fn drain_daemon_log(&self) {
        let guard = self.daemon.lock().unwrap();
        if let Some(d) = guard.as_ref() {
            while let Ok(l) = d.lines.try_recv() {
                self.daemon_log.lock().unwrap().push(l);
            }
        }
    }

    /// Stops the daemon with a signal and waits for it; returns its exit status.
    pub fn stop_daemon(&self, signal: i32) -> Result<std::process::ExitStatus> {
        self.drain_daemon_log();
        let Some(mut d) = self.daemon.lock().unwrap().take() else { bail!("no daemon running") };
        // SAFETY: our own child, not yet reaped.
        unsafe { libc::kill(d.child.id() as i32, signal) };
        let status = d.child.wait()?;
        while let Ok(l) = d.lines.recv_timeout(Duration::from_millis(200)) {
            self.daemon_log.lock().unwrap().push(l);
        }
        Ok(status)
    }

    /// `interceptor daemon --uninstall` with this node's pins, state and socket.
    pub fn uninstall(&self) -> Result<()> {
        let o = Command::new(sibling_binary("interceptor"))
            .args(["daemon", "--uninstall", "--pin-dir"])
            .arg(self.pins.path())
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--socket")
            .arg(&self.socket)
            .output()?;
        if !o.status.success() {
            bail!("daemon --uninstall failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(())
    }

    pub fn api(&self) -> Client {
        Client::new(&self.socket, Duration::from_secs(10))
    }

    /// `GET path` on the daemon's health endpoint, from inside the node namespace.
    pub fn http_get(&self, path: &str) -> Result<(u16, String)> {
        let addr = self.metrics_addr.clone();
        let path = path.to_string();
        interceptor::netns::Netns::at(self.netns_path()).run(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(&addr)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
            Ok((code, body))
        })
    }

    /// `iptables-save -t nat` inside a namespace, without comments and counters.
    pub fn nat_table(netns: &Path) -> Result<String> {
        let out = interceptor::netns::Netns::at(netns).command("iptables-save")?.args(["-t", "nat"]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.find(" [") {
                Some(i) if l.starts_with(':') => l[..i].to_string(),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// Runs the freshly built CNI plugin directly, as a runtime would.
    pub fn cni(
        &self,
        command_name: &str,
        container_id: &str,
        netns: &str,
        args: &str,
        conf: &str,
    ) -> Result<(i32, String)> {
        let mut child = Command::new(sibling_binary("interceptor-cni"))
            .env("CNI_COMMAND", command_name)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", self.dir.join("cnibin"))
            .env("CNI_ARGS", args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        use std::io::Write;
        child.stdin.take().expect("piped").write_all(conf.as_bytes())?;
        let out = child.wait_with_output()?;
        Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned()))
    }
}

pub const MESH_CONFIG: &str = "apiVersion: config.openservicemesh.io/v1alpha2
kind: MeshConfig
metadata:
  name: osm-mesh-config
spec:
  traffic:
    outboundPortExclusionList: []
";

/// Every mount point under `dir` (deepest first).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

/// Removes a cgroup directory and its children (deepest first); cgroupfs only removes
/// empty cgroups with rmdir.
pub fn remove_cgroup_tree(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path());
        }
    }
    for _ in 0..50 {
        if !dir.exists() || fs::remove_dir(dir).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.lock().unwrap().take() {
            let _ = d.child.kill();
            let _ = d.child.wait();
        }
        let names: Vec<String> = self.containers.lock().unwrap().drain(..).rev().collect();
        for n in &names {
            if let Ok(mut c) = self.podman(&["rm", "-f", "-t", "0", "--ignore", n]) {
                let _ = c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
            }
        }
        // Whatever podman could not stop: every process of the test cgroup's subtree.
        let _ = fs::write(self.cgroup.join("cgroup.kill"), "1");
        for f in self.netns_files.lock().unwrap().drain(..) {
            if f.exists() {
                if let Ok(c) = std::ffi::CString::new(f.as_os_str().as_encoded_bytes()) {
                    // SAFETY: a valid C string.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
                let _ = fs::remove_file(&f);
            }
        }
        for mut c in self.servers.lock().unwrap().drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The daemon is gone: nothing can load the programs again.
        let _ = interceptor::ebpf::unload(&self.pins);
        let _ = crate::procs::ip(&["netns", "del", &self.netns]);
        // cgroup v2 and, on hybrid hosts, the v1 hierarchies podman created the same path in.
        let rel = format!("interceptor-test-{}", self.id);
        for kind in ["cgroup2", "cgroup"] {
            for mount in interceptor::ebpf::cgroup::mount_points(kind).unwrap_or_default() {
                remove_cgroup_tree(&mount.join(&rel));
            }
        }
        // libcni's result cache (its default directory) for our networks.
        if let Ok(entries) = fs::read_dir("/var/lib/cni/results") {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&format!("{}-", self.network)) || n.starts_with(&format!("{}-", self.exempt_network)) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        for m in mounts_under(&self.dir) {
            if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
                // SAFETY: a valid C string.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        if mounts_under(&self.dir).is_empty() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
