//! The guest kernels: Debian's own cloud kernel packages, downloaded with `apt-get download`
//! and unpacked with `dpkg -x` under target/vm/ (cached between runs). Nothing is ever
//! installed on the host: its kernel, /boot and /lib/modules stay untouched.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::apt::{self, Sources};
use crate::util::run;

/// What a guest is expected to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Run the test suite; every test must pass.
    Pass,
    /// Older than the documented minimum: `interceptor ebpf probe` and `ebpf load` must
    /// refuse with one clear message naming the missing feature.
    Refuse,
}

/// One kernel series and how to find its newest package.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub label: &'static str,
    /// Package names are `prefix` N `suffix`; the largest N is the newest build.
    prefix: &'static str,
    suffix: &'static str,
    /// A private apt source (for a release other than the host's), or None for the host's.
    private_source: Option<&'static str>,
    pub expect: Expect,
}

pub const SPECS: [Spec; 3] = [
    Spec {
        label: "6.1",
        prefix: "linux-image-6.1.0-",
        suffix: "-cloud-amd64-unsigned",
        private_source: None,
        expect: Expect::Pass,
    },
    Spec {
        label: "6.12",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-cloud-amd64-unsigned",
        private_source: None,
        expect: Expect::Pass,
    },
    // Debian 11's kernel (bullseye and its security archive): below the minimum (5.15).
    Spec {
        label: "5.10",
        prefix: "linux-image-5.10.0-",
        suffix: "-cloud-amd64-unsigned",
        private_source: Some(concat!(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main\n",
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main\n",
        )),
        expect: Expect::Refuse,
    },
];

pub fn spec(label: &str) -> Option<Spec> {
    SPECS.iter().copied().find(|s| s.label == label)
}

/// A kernel unpacked on the host, ready to boot.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub spec: Spec,
    pub package: String,
    /// `uname -r` of the guest, e.g. 6.1.0-56-cloud-amd64.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// lib/modules/<release> inside the unpacked package.
    pub modules: PathBuf,
}

impl Spec {
    /// The build number N of a package name of this series, if it is one.
    fn build_number(&self, package: &str) -> Option<u64> {
        package.strip_prefix(self.prefix)?.strip_suffix(self.suffix)?.parse().ok()
    }

    /// The packages of this series among `names`, newest first.
    fn newest_first(&self, names: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut v: Vec<(u64, String)> =
            names.into_iter().filter_map(|n| self.build_number(&n).map(|b| (b, n))).collect();
        v.sort();
        v.dedup();
        v.into_iter().rev().map(|(_, n)| n).collect()
    }

    fn sources(&self, vm_dir: &Path) -> Result<Sources> {
        match self.private_source {
            None => Ok(Sources::default()),
            Some(lines) => {
                let s = Sources::private(&vm_dir.join(format!("apt-{}", self.label)), lines)?;
                if s.needs_update() {
                    eprintln!(
                        "xtask: fetching the package lists of the {} kernel's archive (private apt state under target/vm)",
                        self.label
                    );
                    s.update_once()?;
                }
                Ok(s)
            }
        }
    }

    /// The packages of this series apt knows, newest first (or, offline, those cached).
    fn candidates(&self, debs: &Path, sources: &Sources) -> Result<Vec<String>> {
        let regex = format!(
            "^{}[0-9]+{}$",
            self.prefix.replace('.', "\\."),
            self.suffix.replace('.', "\\.").replace('+', "\\+")
        );
        let found = self.newest_first(apt::search(&regex, sources).unwrap_or_default());
        if !found.is_empty() {
            return Ok(found);
        }
        let cached = self.newest_first(apt::cached_packages(debs));
        if !cached.is_empty() {
            return Ok(cached);
        }
        // apt's lists may be missing (a fresh machine): refresh them once.
        sources.update_once()?;
        let found = self.newest_first(apt::search(&regex, sources)?);
        if found.is_empty() {
            bail!("no package matches {regex} (apt-cache search)");
        }
        Ok(found)
    }

    /// The newest package that can be had: a mirror may list builds it does not serve
    /// (404; seen for bullseye-security's newest), so up to five are tried, newest first.
    /// A build that could not be had is not asked for again for a day (debs/.unavailable).
    fn download(&self, debs: &Path, sources: &Sources) -> Result<(String, PathBuf)> {
        let memo = Unavailable::load(debs);
        let mut errors = Vec::new();
        for package in self.candidates(debs, sources)?.into_iter().filter(|p| !memo.recent(p)).take(5) {
            match apt::download(&package, debs, sources) {
                Ok(deb) => return Ok((package, deb)),
                Err(e) => {
                    eprintln!("xtask: [{}] cannot download {package} (not retried for a day): {e:#}", self.label);
                    memo.record(&package);
                    errors.push(format!("{package}: {e:#}"));
                }
            }
        }
        bail!(
            "no {} kernel package could be downloaded (retry now: delete {}):\n{}",
            self.label,
            memo.path.display(),
            errors.join("\n")
        )
    }

    /// Downloads (once) and unpacks (once) this series' newest kernel package.
    pub fn fetch(&self, vm_dir: &Path) -> Result<Kernel> {
        let debs = vm_dir.join("debs");
        let sources = self.sources(vm_dir)?;
        let (package, deb) = self.download(&debs, &sources)?;
        let root = vm_dir.join(self.label).join("root");
        let marker = root.join(".unpacked-from");
        let deb_name = deb.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if fs::read_to_string(&marker).ok().as_deref() != Some(deb_name.as_str()) {
            if root.exists() {
                fs::remove_dir_all(&root)?;
            }
            fs::create_dir_all(&root)?;
            run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
            fs::write(&marker, &deb_name)?;
        }
        let boot = root.join("boot");
        let vmlinuz = fs::read_dir(&boot)
            .with_context(|| format!("{} has no boot/", deb.display()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
            .with_context(|| format!("no vmlinuz in {}", boot.display()))?;
        let release =
            vmlinuz.file_name().unwrap_or_default().to_string_lossy().trim_start_matches("vmlinuz-").to_string();
        let modules = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|d| root.join(d).join(&release))
            .find(|p| p.is_dir())
            .with_context(|| format!("no lib/modules/{release} in {}", deb.display()))?;
        if release.is_empty() {
            bail!("cannot tell the kernel release from {}", vmlinuz.display());
        }
        Ok(Kernel { spec: *self, package, release, vmlinuz, modules })
    }
}

/// Packages that could not be downloaded, with when (seconds since the epoch).
struct Unavailable {
    path: PathBuf,
    entries: Vec<(String, u64)>,
}

impl Unavailable {
    const DAY: u64 = 24 * 3600;

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    fn load(debs: &Path) -> Unavailable {
        let path = debs.join(".unavailable");
        let entries = fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (p, t) = l.split_once(' ')?;
                Some((p.to_string(), t.trim().parse().ok()?))
            })
            .collect();
        Unavailable { path, entries }
    }

    fn recent(&self, package: &str) -> bool {
        self.entries.iter().any(|(p, t)| p == package && Self::now().saturating_sub(*t) < Self::DAY)
    }

    fn record(&self, package: &str) {
        use std::io::Write;
        let _ = fs::create_dir_all(self.path.parent().unwrap_or(Path::new(".")));
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(&self.path) {
            let _ = writeln!(f, "{package} {}", Self::now());
        }
    }
}
