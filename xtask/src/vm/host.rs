//! The host kernel's row of the matrix: the same test binaries, run natively with the
//! normal host build (`cargo test`), their summaries parsed like the guests'.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result};

use super::{init::Suite, results};
use crate::util::{cleanup_stale, root, run};

pub fn run_suite(suite: &[Suite]) -> Result<results::Kernel> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut row = results::Kernel {
        label: "host".into(),
        release: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        ..Default::default()
    };
    // The helpers the harness looks for next to the tests (cargo test builds only the
    // tested package's binaries; `interceptor` is another package's).
    run(Command::new(&cargo).current_dir(root()).args(["build", "-p", "interceptor", "--bin", "interceptor"]))?;
    let mut args = vec!["test", "--no-fail-fast", "-p", "interceptor-tests"];
    for s in suite {
        args.extend(["--test", s.name]);
    }
    // Build first, so that the run time is the tests' alone.
    run(Command::new(&cargo).current_dir(root()).args(&args).arg("--no-run"))?;
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(root()).args(&args);
    cleanup_stale();
    // libtest writes to stdout, cargo's "Running …" lines go to stderr: one pipe for both
    // keeps their order.
    let (reader, writer) = std::io::pipe().context("pipe")?;
    cmd.stdout(writer.try_clone()?).stderr(writer).stdin(Stdio::null());
    let started = Instant::now();
    let mut child = cmd.spawn().context("run cargo test")?;
    drop(cmd);
    let mut current: Option<results::Binary> = None;
    let mut in_failures = false;
    for line in BufReader::new(reader).lines() {
        let line = line?;
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("Running ") {
            // "Running tests/differential.rs (target/debug/deps/differential-0123abcd)"
            let name = rest.split('(').nth(1).and_then(|p| p.trim_end_matches(')').rsplit('/').next()).unwrap_or(rest);
            let name = name.rsplit_once('-').map_or(name, |(n, _)| n);
            row.binaries.extend(current.take());
            current = Some(results::Binary::new(name));
            in_failures = false;
            eprintln!("[host] {t}");
        } else if let Some(b) = current.as_mut() {
            b.line(&line);
            // A failing test's own output (libtest prints it after "failures:"), so the
            // log says why, as the guests' consoles do.
            if t == "failures:" {
                in_failures = true;
            } else if t.starts_with("test result:") {
                in_failures = false;
            }
            if t.starts_with("test ") || in_failures {
                eprintln!("[host] {line}");
            }
        }
    }
    row.binaries.extend(current.take());
    let status = child.wait()?;
    row.run = Some(started.elapsed());
    cleanup_stale();
    for b in &mut row.binaries {
        // cargo does not tell each binary's exit code: libtest's summary does.
        b.exit = Some(if b.summary && b.failed == 0 { 0 } else { 101 });
    }
    if !status.success() && row.binaries.iter().all(|b| b.failures() == 0) {
        row.problems.push(format!("cargo test failed ({status}) without a failing test"));
    }
    for s in suite {
        if !row.binaries.iter().any(|b| b.name == s.name) {
            row.problems.push(format!("{} did not run", s.name));
        }
    }
    Ok(row)
}
