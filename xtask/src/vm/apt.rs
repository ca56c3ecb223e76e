//! Debian packages: the host tools vm-test needs (installed if missing, like setup.rs does)
//! and the kernel packages, which are only downloaded and unpacked — never installed.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::util::{have, run};

/// Installs each package whose witness file is missing (idempotent: nothing happens when
/// all are there). `apt-get update` only if the first install attempt fails, as in setup.
pub fn ensure_installed(wanted: &[(&str, &str)]) -> Result<()> {
    let mut missing: Vec<&str> = wanted.iter().filter(|(file, _)| !Path::new(file).exists()).map(|(_, p)| *p).collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !have("apt-get") {
        bail!("missing {missing:?} and no apt-get to install them: install them by hand");
    }
    eprintln!("xtask: installing {missing:?}");
    let install = |pkgs: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "--no-install-recommends"]).args(pkgs).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut cmd)
    };
    if install(&missing).is_err() {
        update(&[])?;
        install(&missing)?;
    }
    Ok(())
}

/// Extra `-o` options for apt: empty for the host's own sources, or a private sources list
/// with its own state and cache directories (so the host's apt setup is never changed).
#[derive(Debug, Default)]
pub struct Sources {
    pub options: Vec<String>,
    /// `apt-get update` ran for these sources in this run (once is enough).
    updated: std::cell::Cell<bool>,
}

impl Sources {
    /// A private apt configuration under `dir` with `lines` as its sources.list.
    pub fn private(dir: &Path, lines: &str) -> Result<Sources> {
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let list = dir.join("sources.list");
        if fs::read_to_string(&list).ok().as_deref() != Some(lines) {
            fs::write(&list, lines)?;
        }
        let d = |p: &str| dir.join(p).display().to_string();
        Ok(Sources {
            options: vec![
                format!("Dir::Etc::sourcelist={}", list.display()),
                "Dir::Etc::sourceparts=-".into(),
                format!("Dir::State::Lists={}", d("lists")),
                format!("Dir::Cache={}", d("cache")),
            ],
            updated: Default::default(),
        })
    }

    fn apply(&self, cmd: &mut Command) {
        for o in &self.options {
            cmd.arg("-o").arg(o);
        }
    }

    /// `apt-get update` for these sources, at most once per run.
    pub fn update_once(&self) -> Result<()> {
        if !self.updated.replace(true) {
            update(&self.options)?;
        }
        Ok(())
    }

    /// True when this private configuration has never been updated (no package lists).
    pub fn needs_update(&self) -> bool {
        self.options.iter().find_map(|o| o.strip_prefix("Dir::State::Lists=")).is_some_and(|lists| {
            fs::read_dir(lists)
                .map(|d| !d.flatten().any(|e| e.file_name().to_string_lossy().ends_with("_Packages")))
                .unwrap_or(true)
        })
    }
}

pub fn update(extra: &[String]) -> Result<()> {
    let mut cmd = Command::new("apt-get");
    cmd.arg("update").env("DEBIAN_FRONTEND", "noninteractive");
    for o in extra {
        cmd.arg("-o").arg(o);
    }
    run(&mut cmd)
}

/// Names of the packages `apt-cache search --names-only REGEX` finds.
pub fn search(regex: &str, sources: &Sources) -> Result<Vec<String>> {
    let mut cmd = Command::new("apt-cache");
    sources.apply(&mut cmd);
    let out = cmd.args(["search", "--names-only", regex]).output().context("run apt-cache")?;
    if !out.status.success() {
        bail!("apt-cache search {regex}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// The `.deb` of `package` in `dir`, downloaded there unless an earlier run left it
/// (`apt-get update` first only if the download fails).
pub fn download(package: &str, dir: &Path, sources: &Sources) -> Result<PathBuf> {
    fs::create_dir_all(dir)?;
    if let Some(deb) = cached(package, dir) {
        return Ok(deb);
    }
    let get = || {
        let mut cmd = Command::new("apt-get");
        sources.apply(&mut cmd);
        // The download runs as root into our own directory: apt's _apt sandbox user may
        // not be able to write there, so don't ask it to.
        cmd.args(["-o", "APT::Sandbox::User=root", "download", package]).current_dir(dir);
        run(&mut cmd)
    };
    if get().is_err() {
        sources.update_once()?;
        get()?;
    }
    cached(package, dir).with_context(|| format!("apt-get download {package} left no .deb in {}", dir.display()))
}

/// A `.deb` of `package` already in `dir`.
pub fn cached(package: &str, dir: &Path) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    let mut debs: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
                && p.extension().is_some_and(|e| e == "deb")
        })
        .collect();
    debs.sort();
    debs.pop()
}

/// Package names of the `.deb` files in `dir` (used when apt's lists know nothing).
pub fn cached_packages(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else { return vec![] };
    entries
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.ends_with(".deb").then(|| n.split('_').next().unwrap_or_default().to_string())
        })
        .collect()
}
