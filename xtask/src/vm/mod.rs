//! `cargo xtask vm-test [--kernel 6.1|6.12|5.10|host|all]…`: the eBPF integration tests on
//! several kernels — Debian's own kernels in qemu guests (TCG, no network: `-nic none`)
//! and the host's kernel natively — with one result table.
//!
//! Per guest kernel: the newest Debian cloud kernel package of its series is downloaded
//! and unpacked under target/vm/ (never installed), the tests are built statically into
//! target/vm/build, an initramfs carries busybox, the host's iproute2 and iptables-nft,
//! the needed modules and the tests, and /init runs them and powers off. The table goes
//! to the terminal and to target/vm/results.md; any failure makes the command fail.
pub mod apt;
mod build;
mod cpio;
mod guest;
mod host;
mod init;
mod initramfs;
mod kernel;
mod modules;
mod qemu;
mod results;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::{require_root, root};
use init::{NeedsIptables, Suite};

/// The test binaries every kernel runs, and which of their tests need iptables.
const SUITE: &[Suite] = &[
    Suite { name: "differential", iptables: NeedsIptables::All },
    Suite { name: "ebpf_outbound", iptables: NeedsIptables::No },
    Suite { name: "ebpf_inbound", iptables: NeedsIptables::No },
    Suite { name: "ebpf_fidelity", iptables: NeedsIptables::All },
    Suite { name: "iptables_mode", iptables: NeedsIptables::All },
    Suite { name: "cli", iptables: NeedsIptables::Only(&["a_bad_policy_leaves_the_tables_untouched"]) },
    Suite { name: "lifecycle", iptables: NeedsIptables::No },
];

/// `all`: the supported guest kernels and the host (5.10 is asked for by name).
const ALL: &[&str] = &["6.1", "6.12", "host"];

struct Options {
    kernels: Vec<String>,
    timeout: Duration,
    /// Only these test binaries of the suite (all when empty): for a quicker look.
    tests: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut kernels = Vec::new();
    let mut timeout = Duration::from_secs(20 * 60);
    let mut tests = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        let mut value =
            || inline.clone().or_else(|| it.next().cloned()).with_context(|| format!("{flag} needs a value"));
        match flag {
            "--kernel" | "-k" => {
                for k in value()?.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                    match k {
                        "all" => kernels.extend(ALL.iter().map(|s| s.to_string())),
                        "host" => kernels.push(k.to_string()),
                        k if kernel::spec(k).is_some() => kernels.push(k.to_string()),
                        k => bail!("unknown kernel {k:?}: choose 6.1, 6.12, 5.10, host or all"),
                    }
                }
            }
            "--test" => {
                let t = value()?;
                if !SUITE.iter().any(|s| s.name == t) {
                    bail!("unknown test binary {t:?}: one of {:?}", SUITE.iter().map(|s| s.name).collect::<Vec<_>>());
                }
                tests.push(t);
            }
            "--timeout-min" => {
                timeout = Duration::from_secs(60 * value()?.parse::<u64>().context("--timeout-min: minutes")?)
            }
            other => bail!(
                "unknown option {other:?}\nusage: cargo xtask vm-test [--kernel 6.1|6.12|5.10|host|all]… [--test BINARY]… [--timeout-min 20]"
            ),
        }
    }
    if kernels.is_empty() {
        kernels = ALL.iter().map(|s| s.to_string()).collect();
    }
    let mut seen = std::collections::BTreeSet::new();
    kernels.retain(|k| seen.insert(k.clone()));
    Ok(Options { kernels, timeout, tests })
}

pub fn vm_test(args: &[String]) -> Result<()> {
    let opts = parse(args)?;
    require_root("vm-test")?;
    let suite: Vec<Suite> =
        SUITE.iter().copied().filter(|s| opts.tests.is_empty() || opts.tests.iter().any(|t| t == s.name)).collect();
    let started = Instant::now();
    let vm_dir = root().join("target/vm");
    std::fs::create_dir_all(&vm_dir)?;
    let guests: Vec<kernel::Spec> = opts.kernels.iter().filter_map(|k| kernel::spec(k)).collect();
    let built = if guests.is_empty() {
        None
    } else {
        apt::ensure_installed(&[
            ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
            ("/bin/busybox", "busybox-static"),
            ("/usr/bin/file", "file"),
            ("/usr/bin/xz", "xz-utils"),
            ("/usr/bin/objcopy", "binutils"),
        ])?;
        let names: Vec<&str> = suite.iter().map(|s| s.name).collect();
        Some(build::build(&vm_dir.join("build"), &names)?)
    };

    let mut rows = Vec::new();
    for k in &opts.kernels {
        let t = Instant::now();
        let row = match (k.as_str(), &built) {
            ("host", _) => host::run_suite(&suite),
            (label, Some(built)) => kernel::spec(label)
                .context("known kernel")
                .and_then(|spec| spec.fetch(&vm_dir))
                .and_then(|kernel| guest::run(&kernel, built, &vm_dir, &suite, opts.timeout)),
            _ => unreachable!("guests are built"),
        };
        let row = row.unwrap_or_else(|e| results::Kernel {
            label: k.clone(),
            release: "?".into(),
            problems: vec![format!("{e:#}")],
            ..Default::default()
        });
        eprintln!(
            "xtask: [{k}] {} passed, {} failed, {} skipped ({:.0?})",
            row.passed(),
            row.failed(),
            row.skipped(),
            t.elapsed()
        );
        rows.push(row);
    }

    let table = results::markdown(&rows);
    let md = vm_dir.join("results.md");
    std::fs::write(
        &md,
        format!(
            "# vm-test results\n\n`cargo xtask vm-test --kernel {}`, {:.0?} in all.\n\n{table}",
            opts.kernels.join(","),
            started.elapsed()
        ),
    )?;
    println!("\n{table}\nxtask: vm-test finished in {:.0?} (table: {})", started.elapsed(), md.display());
    let failed: Vec<&str> = rows.iter().filter(|r| r.failed() > 0).map(|r| r.label.as_str()).collect();
    if !failed.is_empty() {
        bail!("failures on {}", failed.join(", "));
    }
    Ok(())
}
