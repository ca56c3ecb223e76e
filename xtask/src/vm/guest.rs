//! One guest kernel: its initramfs, its boot, and what its console says.
use std::{path::Path, time::Duration};

use anyhow::{Context, Result};

use super::{
    build::Built,
    cpio::Entry,
    init::{self, Suite},
    initramfs,
    kernel::{Expect, Kernel},
    modules, qemu,
    results::{self, Binary, Refusal},
};

/// Boots of one guest at most: the first and two more if it dies before /init.
const MAX_BOOTS: u32 = 3;

/// The documented minimum kernel, as the loader's probe states it (read from its source:
/// xtask must not depend on the interceptor crates).
fn minimum_kernel() -> Option<String> {
    let src = std::fs::read_to_string(crate::util::root().join("interceptor/src/ebpf/probe.rs")).ok()?;
    let line = src.lines().find(|l| l.contains("const MINIMUM_KERNEL: &str"))?;
    Some(line.split('"').nth(1)?.to_string())
}

/// Packs the initramfs for `kernel`, boots it and reads the results from its console.
pub fn run(
    kernel: &Kernel,
    built: &Built,
    vm_dir: &Path,
    suite: &[Suite],
    timeout: Duration,
) -> Result<results::Kernel> {
    let label = kernel.spec.label;
    let dir = vm_dir.join(label);
    let mut row = results::Kernel { label: label.to_string(), release: kernel.release.clone(), ..Default::default() };

    // Per release: a newer package of the series must not be given the older one's modules
    // (insmod refuses them all: another version magic).
    let modules_dir = dir.join("modules").join(&kernel.release);
    let mut mods = modules::resolve(&kernel.modules, &[modules::WANTED, modules::OPTIONAL].concat(), &modules_dir)?;
    mods.not_found.retain(|m| !modules::OPTIONAL.contains(&m.as_str()));
    if !mods.not_found.is_empty() {
        row.notes.push(format!("modules neither shipped nor built in: {}", mods.not_found.join(", ")));
    }
    let mut a = initramfs::skeleton();
    let ip = initramfs::iproute2(&mut a)?;
    initramfs::iptables(&mut a)?;
    initramfs::busybox(&mut a)?;
    let stripped_dir = vm_dir.join("stripped");
    for (name, exe) in built.tests.iter().filter(|(n, _)| suite.iter().any(|s| s.name == n)).chain(&built.helpers) {
        let small = initramfs::stripped(exe, name, &stripped_dir)?;
        a.add(&format!("tests/{name}"), Entry::File { source: small, mode: 0o755 });
    }
    let names: Vec<String> = mods.load_order.iter().map(|(n, _)| n.clone()).collect();
    for (name, ko) in &mods.load_order {
        a.add(&format!("modules/{name}.ko"), Entry::File { source: ko.clone(), mode: 0o644 });
    }
    let script = init::script(&names, suite, &built.target_tmpdir.to_string_lossy(), kernel.spec.expect, &ip);
    a.add("init", Entry::Bytes { data: script.into_bytes(), mode: 0o755 });
    let initrd = dir.join("initramfs.gz");
    let size = a.write_gz(&initrd)?;
    eprintln!(
        "xtask: [{label}] booting {} ({}; initramfs {} MiB unpacked, {} modules), console: {}",
        kernel.release,
        kernel.package,
        size >> 20,
        names.len(),
        dir.join("console.log").display()
    );

    let show = |line: &str| {
        let t = line.find("VMTEST-").map_or(line.trim_start(), |at| &line[at..]);
        if t.starts_with("VMTEST-") || t.starts_with("test ") || t.contains("Kernel panic") {
            eprintln!("[{label}] {t}");
        }
    };
    // A guest that dies before /init (TCG has been seen to oops while booting: an int3 in
    // the kernel's own text patching) is booted again, up to twice, each attempt logged.
    // Once /init has run, nothing is retried: a failing test stays a failure.
    let fresh = row.clone();
    for attempt in 1..=MAX_BOOTS {
        let log = if attempt == 1 { dir.join("console.log") } else { dir.join(format!("console-{attempt}.log")) };
        // Test hook for this retry (never set in CI): the first boot gets an init that does
        // not exist, so it dies before /init.
        let broken = attempt == 1 && std::env::var_os("XTASK_VM_BREAK_FIRST_BOOT").is_some();
        let extra = if broken { "rdinit=/does-not-exist init=/does-not-exist" } else { "" };
        let boot = qemu::boot(&kernel.vmlinuz, &initrd, &log, timeout, extra, show)
            .with_context(|| format!("booting {}", kernel.release))?;
        row = fresh.clone();
        parse(&mut row, &boot, timeout);
        let died_before_init = row.boot.is_none() && !boot.timed_out;
        if !died_before_init || attempt == MAX_BOOTS {
            if attempt > 1 {
                row.notes.push(format!("booted {attempt} times: the earlier guests died before /init"));
            }
            break;
        }
        eprintln!(
            "xtask: [{label}] the guest died before /init (attempt {attempt}, qemu {:?}; see {}): booting again",
            boot.status,
            log.display()
        );
    }
    if kernel.spec.expect == Expect::Refuse {
        row.refusal = Some(refusal(&row));
    }
    Ok(row)
}

/// Fills the row from the console: markers and libtest's lines between them.
fn parse(row: &mut results::Kernel, boot: &qemu::Boot, timeout: Duration) {
    let mut current: Option<Binary> = None;
    let mut booted_at = None;
    let mut done_at = None;
    for line in &boot.lines {
        // A marker may follow the firmware's terminal escapes on the same line.
        let t = line.text.find("VMTEST-").map_or(line.text.trim(), |at| line.text[at..].trim());
        let mut words = t.split_whitespace();
        match words.next().unwrap_or_default() {
            "VMTEST-BOOTED" => {
                booted_at = Some(line.at);
                if let Some(r) = words.next() {
                    row.release = r.to_string();
                }
            }
            "VMTEST-START" => current = Some(Binary::new(words.next().unwrap_or_default())),
            "VMTEST-RESULT" => {
                if let Some(mut b) = current.take() {
                    b.exit = words.nth(1).and_then(|c| c.parse().ok());
                    row.binaries.push(b);
                }
            }
            "VMTEST-SKIPPED" => {
                let bin = words.next().unwrap_or_default();
                let test = words.next().unwrap_or_default();
                row.skipped.push(format!("{bin}::{test}"));
            }
            "VMTEST-IPTABLES" if words.next() != Some("ok") => {
                row.notes.push("iptables-nft cannot program nat rules in this guest: its tests are skipped".into());
            }
            "VMTEST-MODULE-FAILED" => row.notes.push(format!("insmod {} failed", words.next().unwrap_or_default())),
            "VMTEST-PINS" => {
                if let Some(b) = row.binaries.last_mut() {
                    b.output.push(t.to_string());
                }
            }
            "VMTEST-DONE" => done_at = Some(line.at),
            _ => {
                if let Some(b) = current.as_mut() {
                    b.line(&line.text);
                }
            }
        }
    }
    if let Some(b) = current.take() {
        row.problems.push(format!("{} did not finish", b.name));
        row.binaries.push(b);
    }
    row.boot = booted_at;
    let end = done_at.unwrap_or(boot.elapsed);
    row.run = booted_at.map(|b| end.saturating_sub(b));
    if done_at.is_none() {
        let why = if boot.timed_out {
            format!("timed out after {} min: qemu killed", timeout.as_secs() / 60)
        } else if booted_at.is_none() {
            format!("the guest never reached /init (qemu {:?}; see console.log)", boot.status)
        } else {
            format!("the guest stopped before the end (qemu {:?}; see console.log)", boot.status)
        };
        row.problems.push(why);
    }
}

/// Below the minimum kernel: probe and load must both fail with one clear message naming
/// what is missing (lines ending in "(Linux N+)"), the load naming the minimum too, a
/// refused load must leave nothing pinned, and the daemon in auto mode must work in
/// iptables mode (CNI ADD programs the chains, DEL removes them).
fn refusal(row: &results::Kernel) -> Refusal {
    let minimum = minimum_kernel().unwrap_or_else(|| "?".into());
    let mut r = Refusal { checks_passed: 0, checks_failed: vec![], message: String::new() };
    for name in ["probe", "load"] {
        let Some(b) = row.binaries.iter().find(|b| b.name == name) else {
            r.checks_failed.push(format!("`interceptor ebpf {name}` did not run"));
            continue;
        };
        let text = b.output.iter().filter(|l| !l.starts_with("VMTEST-")).cloned().collect::<Vec<_>>().join("\n");
        let names_feature = text.lines().any(|l| l.trim_end().ends_with("+)") && l.contains("(Linux "));
        let names_minimum = name == "probe" || text.contains(&format!("minimum Linux {minimum}"));
        if name == "load" {
            r.message = text.clone();
        }
        if b.exit.is_some_and(|c| c != 0) && names_feature && names_minimum {
            r.checks_passed += 1;
        } else {
            r.checks_failed.push(format!(
                "`interceptor ebpf {name}` (exit {:?}) must refuse, naming the missing feature{}: {text}",
                b.exit,
                if name == "load" { format!(" and the minimum Linux {minimum}") } else { String::new() }
            ));
        }
        if name == "load" {
            let pins = b.output.iter().find_map(|l| l.strip_prefix("VMTEST-PINS ")).map(str::trim);
            if pins == Some("0") {
                r.checks_passed += 1;
            } else {
                r.checks_failed.push(format!("a refused load left pins in /sys/fs/bpf ({pins:?})"));
            }
        }
    }
    match row.binaries.iter().find(|b| b.name == "daemon-auto") {
        None => r.checks_failed.push("`interceptor daemon --mode auto` with the CNI plugin did not run".into()),
        Some(b) if b.exit == Some(0) && b.output.iter().any(|l| l.contains("VMTEST-CHECK ok")) => r.checks_passed += 1,
        Some(b) => r.checks_failed.push(format!(
            "`interceptor daemon --mode auto` must fall back to iptables mode and the CNI plugin must program and remove the chains (exit {:?}): {}",
            b.exit,
            b.output.join("\n")
        )),
    }
    r
}
