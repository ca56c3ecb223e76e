//! Statically linked test executables and helper binaries for the guests.
//!
//! The guest has no libc of ours, so everything is linked with `+crt-static`. `--target`
//! keeps RUSTFLAGS away from build scripts and proc macros (and from aya-build's eBPF
//! build), and a separate target directory keeps the host's own builds valid.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::util::root;

pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// What the guests run.
pub struct Built {
    /// (test name, executable), e.g. ("differential", …/deps/differential-0123abcd).
    pub tests: Vec<(String, PathBuf)>,
    /// `interceptor`, `interceptor-cni` and `netprobe`, which the harness looks for next to
    /// the tests.
    pub helpers: Vec<(String, PathBuf)>,
    /// CARGO_TARGET_TMPDIR of the tests (compiled in; <target-dir>/<triple>/tmp with --target).
    pub target_tmpdir: PathBuf,
}

/// `cargo SUBCOMMAND… --target … --target-dir …` with static linking.
fn cargo(target_dir: &Path, subcommand: &[&str]) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(subcommand)
        .args(["--target", TARGET, "--target-dir"])
        .arg(target_dir)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    c
}

/// Runs a cargo build and returns (target name, executable) of every artifact of `kind`.
fn artifacts(mut cmd: Command, kind: &str) -> Result<Vec<(String, PathBuf)>> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !line.starts_with("{\"reason\":\"compiler-artifact\"") {
            continue;
        }
        let (Some(name), Some(exe)) = (json_string(line, "name"), json_string(line, "executable")) else { continue };
        if line.contains(&format!("\"kind\":[\"{kind}\"]")) {
            found.push((name, PathBuf::from(exe)));
        }
    }
    Ok(found)
}

/// The first `"key":"value"` string of a line of cargo's JSON messages. Cargo prints them
/// compactly and the target (with its name) comes before anything else named "name";
/// parsing just this keeps xtask free of a JSON dependency.
fn json_string(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let mut out = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

/// Builds the named integration tests and the helpers statically into `target_dir`.
pub fn build(target_dir: &Path, tests: &[&str]) -> Result<Built> {
    eprintln!("xtask: building the tests statically (target dir {})", target_dir.display());
    let mut cmd = cargo(target_dir, &["test", "--no-run", "-p", "interceptor-tests"]);
    for t in tests {
        cmd.args(["--test", t]);
    }
    let tests = artifacts(cmd, "test")?;
    let cmd = cargo(
        target_dir,
        &[
            "build",
            "-p",
            "interceptor",
            "-p",
            "interceptor-tests",
            "--bin",
            "interceptor",
            "--bin",
            "interceptor-cni",
            "--bin",
            "netprobe",
        ],
    );
    let helpers = artifacts(cmd, "bin")?;
    for (_, exe) in tests.iter().chain(&helpers) {
        ensure_static(exe)?;
    }
    Ok(Built { tests, helpers, target_tmpdir: target_dir.join(TARGET).join("tmp") })
}

/// `file` must call it statically linked: the guest has no dynamic loader for it.
fn ensure_static(exe: &Path) -> Result<()> {
    let out = Command::new("file").arg("-b").arg(exe).output().context("run file (apt-get install file)")?;
    let what = String::from_utf8_lossy(&out.stdout);
    if !(what.contains("statically linked") || what.contains("static-pie linked")) {
        bail!("{} is not statically linked: {}", exe.display(), what.trim());
    }
    Ok(())
}
