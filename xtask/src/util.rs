//! Running commands, building, testing, and the demo.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// The workspace root (xtask's parent).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc_geteuid() == 0 }
}

pub fn require_root(task: &str) -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask {task}` programs the kernel (namespaces, cgroups, iptables, eBPF): run it as root");
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

pub fn build() -> Result<()> {
    run(cargo().args(["build", "--workspace", "--exclude", "interceptor-ebpf", "--all-targets"]))
}

pub fn build_release() -> Result<()> {
    run(cargo().args(["build", "--release", "--workspace", "--exclude", "interceptor-ebpf", "--bins"]))
}

/// Whether a sandbox name (`ict<PID>x<N>…`, `interceptor-test-ict<PID>x<N>`) belongs to a
/// process that is still running: another test run, demo or benchmark on this machine
/// (e.g. in another checkout) must never lose its namespaces, cgroups or pins to us.
fn owner_alive(name: &str) -> bool {
    let Some(at) = name.find("ict") else { return false };
    let digits: String = name[at + 3..].chars().take_while(char::is_ascii_digit).collect();
    match digits.parse::<u32>() {
        Ok(pid) => Path::new("/proc").join(pid.to_string()).exists(),
        Err(_) => false,
    }
}

/// Where filesystems of type `kind` (`cgroup2`, `bpf`, …) are mounted, from /proc/mounts.
pub fn mount_points(kind: &str) -> std::io::Result<Vec<PathBuf>> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    Ok(mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&kind)).then(|| PathBuf::from(f[1]))
        })
        .collect())
}

/// Removes what a crashed earlier run of the tests may have left (only our own names, and
/// only those whose creating process is gone).
pub fn cleanup_stale() {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if name.starts_with("ict") && !owner_alive(name) {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
    let cgroup_mounts = |kind: &str| mount_points(kind).unwrap_or_default();
    let prefixes = ["interceptor-test-", "interceptor-demo-", "interceptor-bench-"];
    let stale = |dir: &Path| -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
        entries
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                prefixes.iter().any(|p| n.starts_with(p)) && !owner_alive(&n)
            })
            .map(|e| e.path())
            .collect()
    };
    // cgroup v2 first (cgroup.kill stops whatever still runs there, containers included),
    // then the v1 hierarchies podman mirrors the same paths into on hybrid hosts.
    for dir in cgroup_mounts("cgroup2").iter().chain(cgroup_mounts("cgroup").iter()) {
        for cg in stale(dir) {
            let _ = std::fs::write(cg.join("cgroup.kill"), "1");
            std::thread::sleep(std::time::Duration::from_millis(50));
            remove_cgroup_tree(&cg);
        }
    }
    for pins in stale(Path::new("/sys/fs/bpf")) {
        let _ = std::fs::remove_dir_all(pins);
    }
    // The podman tests' temporary directories (never across a mount).
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for dir in stale(Path::new("/tmp")) {
        let busy =
            mountinfo.lines().filter_map(|l| l.split_whitespace().nth(4)).any(|m| Path::new(m).starts_with(&dir));
        if !busy {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// rmdir of a cgroup and its children, deepest first (cgroupfs refuses anything else).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// `cargo fmt --check` and `cargo clippy -D warnings`: the shape of the code is checked
/// with the tests. Clippy skips the eBPF build (it only lints host code).
pub fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"])).context("code is not formatted: run `cargo fmt --all`")?;
    run(cargo()
        .args(["clippy", "--workspace", "--exclude", "interceptor-ebpf", "--all-targets", "--", "-D", "warnings"])
        .env("AYA_BUILD_SKIP", "1"))
    .context("clippy found problems")
}

pub fn test(args: &[String]) -> Result<()> {
    require_root("test")?;
    cleanup_stale();
    let started = Instant::now();
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--exclude", "interceptor-ebpf"]).args(args);
    let result = run(&mut cmd);
    cleanup_stale();
    eprintln!("xtask: tests finished in {:.0?}", started.elapsed());
    result
}

pub fn demo(args: &[String]) -> Result<()> {
    require_root("demo")?;
    cleanup_stale();
    run(cargo().args(["run", "--quiet", "--package", "interceptor-tests", "--bin", "demo", "--"]).args(args))
}
