//! Booting a guest under qemu's TCG (no KVM here) with no network at all (`-nic none`),
//! keeping its whole console in a log and killing it when it overruns its time.
use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// One console line and when it arrived (since qemu started).
pub struct Line {
    pub at: Duration,
    pub text: String,
}

pub struct Boot {
    pub lines: Vec<Line>,
    pub timed_out: bool,
    pub elapsed: Duration,
    pub status: Option<std::process::ExitStatus>,
}

/// Boots `vmlinuz` with `initrd`; every console line goes to `log` and through `show`
/// (which decides what to echo on the terminal).
pub fn boot(
    vmlinuz: &Path,
    initrd: &Path,
    log: &Path,
    timeout: Duration,
    extra_append: &str,
    show: impl Fn(&str),
) -> Result<Boot> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "q35", "-cpu", "max", "-m", "2048", "-smp", "2", "-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 quiet {extra_append}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut log = File::create(log).with_context(|| format!("create {}", log.display()))?;
    let started = Instant::now();
    let mut child = cmd.spawn().context("run qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let (tx, rx) = mpsc::channel::<Line>();
    for stream in [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let text = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_string();
                if tx.send(Line { at: started.elapsed(), text }).is_err() {
                    break;
                }
                buf.clear();
            }
        });
    }
    drop(tx);
    let deadline = started + timeout;
    let mut lines = Vec::new();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let _ = writeln!(log, "{}", line.text);
                show(&line.text);
                lines.push(line);
            }
            // Both pipes closed: qemu exited (power off, or a panic with -no-reboot).
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = writeln!(log, "xtask: timed out after {timeout:?}: killing qemu");
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait().ok();
    Ok(Boot { lines, timed_out, elapsed: started.elapsed(), status })
}
