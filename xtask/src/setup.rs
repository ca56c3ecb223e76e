//! `cargo xtask setup`: everything building and testing need, installed only if missing.
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::util::{have, run};

/// Where the LLVM prefix bpf-linker was built against lives; bpf-linker's rpath points
/// into it, so it must survive (it is a few symlinks).
fn llvm_prefix() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".local/share/interceptor/llvm")
}

pub fn setup() -> Result<()> {
    host_bpffs()?;
    apt_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    Ok(())
}

/// Where a node has its bpf filesystem (systemd mounts it at boot; Kubernetes nodes and
/// every eBPF networking tool expect it there).
const HOST_BPFFS: &str = "/sys/fs/bpf";

/// The host's bpffs at /sys/fs/bpf, mounted if this machine booted without one (a node
/// without systemd). interceptor itself never mounts one (a bpffs mounted from inside a
/// container would vanish with it, and the interception with it): like a node's boot, the
/// machine's setup does.
fn host_bpffs() -> Result<()> {
    if !crate::util::is_root() {
        return Ok(());
    }
    let bpffs = crate::util::mount_points("bpf").context("cannot read /proc/mounts")?;
    if bpffs.iter().any(|m| m == Path::new(HOST_BPFFS)) {
        return Ok(());
    }
    eprintln!("xtask: mounting the host's bpf filesystem at {HOST_BPFFS} (this machine booted without one)");
    fs::create_dir_all(HOST_BPFFS).with_context(|| format!("cannot create {HOST_BPFFS}"))?;
    run(Command::new("mount").args(["-t", "bpf", "bpf", HOST_BPFFS]))
}

/// Debian packages, each with a file that shows it is installed.
fn apt_packages() -> Result<()> {
    crate::vm::apt::ensure_installed(&[
        ("/usr/sbin/iptables-restore", "iptables"),
        ("/usr/sbin/ip6tables-restore", "iptables"),
        ("/usr/sbin/ip", "iproute2"),
        // The DNS proxy tests: dnsmasq as the sidecar's DNS proxy stand-in (the -base package:
        // the daemon without the service that `dnsmasq` would start on the node), dig as a client.
        ("/usr/sbin/dnsmasq", "dnsmasq-base"),
        ("/usr/bin/dig", "bind9-dnsutils"),
        // The podman tests' real container runtime (root: no uidmap/slirp4netns needed; runc
        // named so apt does not pick crun, which refuses hybrid cgroup hierarchies).
        ("/usr/bin/podman", "podman"),
        ("/usr/sbin/runc", "runc"),
        ("/usr/lib/cni/bridge", "containernetworking-plugins"),
        // The metrics tests: a real Prometheus server scraping the daemon, and promtool
        // (check metrics, check and test rules). Installing it starts no service where
        // invoke-rc.d's policy forbids it; the tests run their own server on a test
        // namespace's loopback.
        ("/usr/bin/prometheus", "prometheus"),
        ("/usr/bin/promtool", "prometheus"),
        // The benchmark chart's labels.
        ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "fonts-dejavu-core"),
    ])
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc").args(["+nightly", "--print", "sysroot"]).output().context("run rustup/rustc")?;
    if !out.status.success() {
        bail!(
            "the nightly toolchain is missing (`rustup toolchain install nightly`): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

fn nightly_rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src for nightly");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> Result<()> {
    if Command::new("bpf-linker").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    // bpf-linker links against LLVM; nightly ships its own libLLVM, so point an LLVM prefix
    // at it: lib/libLLVM.so and the SONAME file, both symlinks to the sysroot's library.
    let sysroot = nightly_sysroot()?;
    let lib = sysroot.join("lib");
    let llvm = fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    // libLLVM.so.22.1-rust-1.97.0-nightly → llvm-22
    let major = llvm.trim_start_matches("libLLVM.so.").split('.').next().unwrap_or_default().to_string();
    let prefix = llvm_prefix();
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", llvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(lib.join(&llvm), &link).with_context(|| format!("symlink {}", link.display()))?;
    }
    eprintln!("xtask: building bpf-linker against nightly's LLVM {major} (a few minutes, once)");
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--version", "0.13.0", "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix)
        .current_dir(Path::new("/")))?;
    if !have("bpf-linker") {
        bail!("bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH");
    }
    Ok(())
}
