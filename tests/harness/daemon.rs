//! The node daemon started on a [`Sandbox`] without a container runtime, fed by the real CNI
//! plugin binary as a runtime calls it; and a real Prometheus server scraping it. Both run
//! in the sandbox's world network namespace and listen on its loopback only; their files
//! live in `/tmp/interceptor-test-<sandbox id>/` (removed on drop, like the processes).
use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    procs::{Identity, command, sibling_binary},
    sandbox::Sandbox,
};

/// `GET path` over HTTP/1.0 (no chunked answers) to `addr` from inside `netns`.
pub fn http_get(netns: &Path, addr: &str, path: &str) -> Result<(u16, String)> {
    let (addr, path) = (addr.to_string(), path.to_string());
    interceptor::netns::Netns::at(netns).run(move || {
        let mut s = std::net::TcpStream::connect(&addr).with_context(|| format!("connect {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n")?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((code, body))
    })
}

/// Percent-encodes a query parameter.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub struct TestDaemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub mesh_config: PathBuf,
    /// Where /metrics is served, in `netns`.
    pub metrics_addr: String,
    pub netns: PathBuf,
    pub pin_dir: PathBuf,
    child: Mutex<Option<Child>>,
    lines: Mutex<Option<mpsc::Receiver<String>>>,
    pub log: Mutex<Vec<String>>,
}

impl TestDaemon {
    /// `interceptor daemon --mode ebpf` on the sandbox's pins and cgroup, in its world
    /// namespace, with `mesh_config` as its MeshConfig file and `extra` arguments; returns
    /// once it says it is ready.
    pub fn start(sb: &Sandbox, mesh_config: &str, extra: &[&str]) -> Result<TestDaemon> {
        let dir = PathBuf::from(format!("/tmp/interceptor-test-{}", sb.id));
        fs::create_dir_all(dir.join("mesh"))?;
        let d = TestDaemon {
            socket: dir.join("api.sock"),
            state_dir: dir.join("state"),
            mesh_config: dir.join("mesh/meshconfig.yaml"),
            metrics_addr: "127.0.0.1:9464".into(),
            netns: sb.netns_path(&sb.world),
            pin_dir: sb.pins.path().to_path_buf(),
            dir,
            child: Mutex::new(None),
            lines: Mutex::new(None),
            log: Mutex::new(Vec::new()),
        };
        fs::write(&d.mesh_config, mesh_config)?;
        let who = Identity { netns: d.netns.clone(), cgroup_procs: None, userns: None, uid: 0 };
        let mut cmd = command(&sibling_binary("interceptor"), &who)?;
        cmd.args(["-v", "daemon", "--mode", "ebpf", "--pin-dir"])
            .arg(&d.pin_dir)
            .arg("--cgroup")
            .arg(&sb.cgroup)
            .arg("--socket")
            .arg(&d.socket)
            .arg("--state-dir")
            .arg(&d.state_dir)
            .arg("--mesh-config")
            .arg(&d.mesh_config)
            .args(["--metrics-addr", &d.metrics_addr, "--reconcile-interval", "1s"])
            .args(extra)
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
        *d.child.lock().unwrap() = Some(child);
        *d.lines.lock().unwrap() = Some(rx);
        d.wait_line("interceptor daemon ready", Duration::from_secs(30))?;
        Ok(d)
    }

    /// The daemon's process ID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    /// Reads the daemon's output until a line contains `needle`.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let line = {
                let guard = self.lines.lock().unwrap();
                guard.as_ref().context("no daemon")?.recv_timeout(Duration::from_millis(50))
            };
            match line {
                Ok(l) => {
                    self.log.lock().unwrap().push(l.clone());
                    if l.contains(needle) {
                        return Ok(l);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the daemon exited before printing {needle:?}:\n{}", self.log.lock().unwrap().join("\n"))
                }
            }
            if Instant::now() > deadline {
                bail!("the daemon did not print {needle:?} in {timeout:?}:\n{}", self.log.lock().unwrap().join("\n"));
            }
        }
    }

    /// Runs the CNI plugin binary as a runtime would (chained after a plugin whose result
    /// is `prevResult`); returns its exit code and stdout.
    pub fn cni(&self, command_name: &str, container_id: &str, netns: &Path, args: &str) -> Result<(i32, String)> {
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"metrics","type":"interceptor-cni","socket":"{}","excludeNamespaces":[],"prevResult":{{"cniVersion":"1.0.0","ips":[]}}}}"#,
            self.socket.display()
        );
        let mut child = Command::new(sibling_binary("interceptor-cni"))
            .env("CNI_COMMAND", command_name)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/nonexistent")
            .env("CNI_ARGS", args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().expect("piped").write_all(conf.as_bytes())?;
        let out = child.wait_with_output()?;
        Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    /// The plugin's command must succeed.
    pub fn cni_ok(&self, command_name: &str, container_id: &str, netns: &Path, args: &str) -> Result<()> {
        let (code, out) = self.cni(command_name, container_id, netns, args)?;
        if code != 0 {
            bail!("CNI {command_name} {container_id}: exit {code}: {out}");
        }
        Ok(())
    }

    /// `GET /metrics`, which must answer 200.
    pub fn scrape(&self) -> Result<String> {
        let (code, body) = http_get(&self.netns, &self.metrics_addr, "/metrics")?;
        if code != 200 {
            bail!("GET /metrics answered {code}: {body}");
        }
        Ok(body)
    }

    /// `interceptor ARGS` (the CLI, from the root namespace: it only reads pins and talks to
    /// the socket).
    pub fn cli(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(Command::new(sibling_binary("interceptor")).args(args).output()?)
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A Prometheus server (Debian's `prometheus`) scraping one target every second, loopback
/// only, with a temporary data directory; killed and removed on drop.
pub struct Prometheus {
    pub addr: String,
    pub netns: PathBuf,
    dir: PathBuf,
    child: Child,
}

pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const PROMTOOL: &str = "/usr/bin/promtool";

impl Prometheus {
    /// Starts it in `netns`, scraping `target` (host:port in the same namespace) as job
    /// "interceptor", with `rule_files` loaded; waits until it is ready.
    pub fn start(netns: &Path, dir: &Path, target: &str, rule_files: &[&Path]) -> Result<Prometheus> {
        fs::create_dir_all(dir.join("data"))?;
        let rules: Vec<String> = rule_files.iter().map(|p| format!("  - {}", p.display())).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files:\n{}\nscrape_configs:\n  - job_name: interceptor\n    static_configs:\n      - targets: ['{target}']\n",
            if rules.is_empty() { "  []".to_string() } else { rules.join("\n") }
        );
        let config_path = dir.join("prometheus.yml");
        fs::write(&config_path, config)?;
        let addr = "127.0.0.1:9090".to_string();
        let who = Identity { netns: netns.to_path_buf(), cgroup_procs: None, userns: None, uid: 0 };
        let mut cmd = command(Path::new(PROMETHEUS), &who)?;
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("prometheus.log"))?);
        let child = cmd.spawn().context("spawn prometheus")?;
        let p = Prometheus { addr, netns: netns.to_path_buf(), dir: dir.to_path_buf(), child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(&p.netns, &p.addr, "/-/ready") {
                return Ok(p);
            }
            if Instant::now() > deadline {
                bail!("prometheus did not become ready:\n{}", p.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/query`: the instant vector's samples as (labels, value).
    pub fn query(&self, expr: &str) -> Result<Vec<(serde_json::Value, f64)>> {
        let (code, body) = http_get(&self.netns, &self.addr, &format!("/api/v1/query?query={}", url_encode(expr)))?;
        if code != 200 {
            bail!("query {expr:?}: HTTP {code}: {body}");
        }
        let v: serde_json::Value = serde_json::from_str(&body).with_context(|| format!("query answer {body}"))?;
        let mut out = Vec::new();
        for r in v["data"]["result"].as_array().into_iter().flatten() {
            let value = r["value"][1].as_str().unwrap_or("NaN").parse().unwrap_or(f64::NAN);
            out.push((r["metric"].clone(), value));
        }
        Ok(out)
    }

    /// Waits until `expr` has exactly one sample equal to `want`; returns what it last saw.
    pub fn wait_for(&self, expr: &str, want: f64, timeout: Duration) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        let mut last = Vec::new();
        loop {
            last = self.query(expr).unwrap_or(last);
            if let [(_, v)] = last.as_slice()
                && *v == want
            {
                return Ok(*v);
            }
            if Instant::now() > deadline {
                bail!("{expr}: wanted {want}, Prometheus answers {last:?}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `GET path` on its HTTP API, as JSON.
    pub fn api(&self, path: &str) -> Result<serde_json::Value> {
        let (code, body) = http_get(&self.netns, &self.addr, path)?;
        if code != 200 {
            bail!("{path}: HTTP {code}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
