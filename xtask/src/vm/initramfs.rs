//! The guest's whole root filesystem, as an initramfs: busybox (from Debian's
//! busybox-static) for the shell and mounts, the host's iproute2 and iptables-nft with the
//! shared libraries they load (busybox's `ip` has no `ip netns`, and the harness needs
//! `ip netns`, `ip -n`, `ip -j route get`), the kernel modules, the static test binaries
//! and /init.
//!
//! The layout is Debian's merged /usr (/bin, /sbin, /lib, /lib64 are links into /usr), so
//! the host's programs find their libraries and extensions at the paths they were built
//! for, and every host file goes to its canonical path.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::cpio::{Archive, Entry};

pub const BUSYBOX: &str = "/bin/busybox";
/// iptables-nft: one multi-call binary, dispatched on its name.
pub const XTABLES: &str = "/usr/sbin/xtables-nft-multi";
pub const XTABLES_LINKS: &[&str] = &[
    "iptables",
    "ip6tables",
    "iptables-save",
    "ip6tables-save",
    "iptables-restore",
    "ip6tables-restore",
    "iptables-nft",
    "ip6tables-nft",
];
/// Where iptables dlopen()s its match and target extensions (not reported by ldd).
pub const XTABLES_EXTENSIONS: &str = "/usr/lib/x86_64-linux-gnu/xtables";

pub fn skeleton() -> Archive {
    let mut a = Archive::default();
    for (link, target) in
        [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("var/run", "../run")]
    {
        a.add(link, Entry::Symlink { target: target.into() });
    }
    for d in ["usr/bin", "usr/sbin", "usr/lib64", "proc", "sys", "dev", "run", "root", "etc", "tests", "modules"] {
        a.add(d, Entry::Dir { mode: 0o755 });
    }
    a.add("tmp", Entry::Dir { mode: 0o1777 });
    // The kernel opens /dev/console for init before anything is mounted.
    a.add("dev/console", Entry::CharDev { major: 5, minor: 1, mode: 0o600 });
    a.add("dev/null", Entry::CharDev { major: 1, minor: 3, mode: 0o666 });
    a.add("etc/passwd", Entry::Bytes { data: b"root:x:0:0:root:/root:/bin/sh\n".to_vec(), mode: 0o644 });
    a.add("etc/group", Entry::Bytes { data: b"root:x:0:\n".to_vec(), mode: 0o644 });
    for f in ["/etc/protocols", "/etc/services"] {
        if Path::new(f).is_file() {
            a.add(f, Entry::File { source: f.into(), mode: 0o644 });
        }
    }
    a
}

/// The guest path of a host file: its directory resolved (/lib → /usr/lib), its own name
/// kept (a library's SONAME link), its contents those of the final target.
fn host_file(a: &mut Archive, path: &Path) -> Result<String> {
    let dir = path.parent().context("a file has a directory")?;
    let dir = fs::canonicalize(dir).with_context(|| format!("resolve {}", dir.display()))?;
    let guest = dir.join(path.file_name().context("a file name")?);
    let source = fs::canonicalize(path).with_context(|| format!("resolve {}", path.display()))?;
    let guest = guest.to_string_lossy().into_owned();
    a.add(&guest, Entry::File { source, mode: 0o755 });
    Ok(guest)
}

/// The shared libraries `ldd` reports for a program or library (with the loader).
fn ldd(path: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(path).output().context("run ldd")?;
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    if said.contains("not a dynamic executable") || said.contains("statically linked") {
        return Ok(vec![]);
    }
    if !out.status.success() {
        bail!("ldd {}: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        let candidate = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = candidate.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// A host program and everything ldd says it loads.
pub fn host_program(a: &mut Archive, path: &Path) -> Result<String> {
    let guest = host_file(a, path)?;
    for lib in ldd(path)? {
        host_file(a, &lib)?;
    }
    Ok(guest)
}

/// The host's `ip` (iproute2); returns its path in the guest.
pub fn iproute2(a: &mut Archive) -> Result<String> {
    let ip = ["/usr/sbin/ip", "/usr/bin/ip", "/sbin/ip", "/bin/ip"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("no `ip` on the host (apt-get install iproute2)")?;
    host_program(a, ip)
}

/// iptables-nft, its command names and its extensions (with their libraries).
pub fn iptables(a: &mut Archive) -> Result<()> {
    let guest = host_program(a, Path::new(XTABLES)).context("iptables-nft (apt-get install iptables)")?;
    let dir = Path::new(&guest).parent().context("dir")?.to_string_lossy().into_owned();
    let name = Path::new(&guest).file_name().context("name")?.to_string_lossy().into_owned();
    for link in XTABLES_LINKS {
        a.add(&format!("{dir}/{link}"), Entry::Symlink { target: name.clone() });
    }
    for e in fs::read_dir(XTABLES_EXTENSIONS).with_context(|| format!("read {XTABLES_EXTENSIONS}"))?.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "so") {
            host_program(a, &p)?;
        }
    }
    Ok(())
}

/// busybox and a link per applet, except where a real program (ip) is already in place.
pub fn busybox(a: &mut Archive) -> Result<()> {
    let guest = host_program(a, Path::new(BUSYBOX))?;
    let out = Command::new(BUSYBOX).arg("--list-full").output().context("run busybox --list-full")?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let name = applet.rsplit('/').next().unwrap_or_default();
        if name.is_empty() || name == "busybox" {
            continue;
        }
        let sbin = applet.contains("sbin/");
        let path = format!("usr/{}/{name}", if sbin { "sbin" } else { "bin" });
        let taken = ["usr/bin", "usr/sbin"].iter().any(|d| a.contains(&format!("{d}/{name}")));
        if !taken {
            a.add(&path, Entry::Symlink { target: guest.clone() });
        }
    }
    Ok(())
}

/// A copy of `exe` without debug info (the tests are debug builds of ~100 MB each; the
/// guest keeps the whole initramfs in its 2 GiB), redone only when `exe` changed.
pub fn stripped(exe: &Path, name: &str, dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let out = dir.join(name);
    let stale = match (fs::metadata(exe)?.modified(), fs::metadata(&out).and_then(|m| m.modified())) {
        (Ok(src), Ok(dst)) => src > dst,
        _ => true,
    };
    if stale {
        crate::util::run(Command::new("objcopy").arg("--strip-debug").arg(exe).arg(&out))?;
    }
    Ok(out)
}
