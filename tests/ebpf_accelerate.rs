//! Socket-level acceleration (`ebpf load --accelerate`): the payload of a redirected
//! connection goes from the application's socket straight into the sidecar's (sk_msg
//! redirect) and back. It must be invisible: the same bytes in the same order, whatever the
//! sizes and system calls (partial writes, 16 MiB, sendfile, splice), half-close, the same
//! addresses and SO_ORIGINAL_DST — each case is run with and without acceleration and the
//! answers compared. TCP_INFO's byte count of the sidecar's socket shows which path the
//! bytes took (0 through TCP when accelerated).
use std::time::Duration;

use anyhow::{Result, ensure};
use interceptor::policy::Policy;
use interceptor_tests::{
    Sandbox,
    sandbox::{APP_UID, PROXY_UID},
};
use serde_json::Value;

const DST: &str = "203.0.113.20:80";
const MIB: u64 = 1 << 20;

/// One client run (`netprobe stream`) from the application to the redirected destination.
fn stream(sb: &Sandbox, bytes: u64, how: &str) -> Result<Value> {
    let n = bytes.to_string();
    let out = sb.probe(
        &sb.in_pod(APP_UID),
        &["stream", "--to", DST, "--bytes", &n, "--how", how, "--write-size", "1048576"],
        Duration::from_secs(60),
    )?;
    Ok(serde_json::from_str(out.trim())?)
}

/// The sidecar stand-in on 15001: a stream server reading with read() in small pieces (so
/// that large messages arrive in many parts) or with splice().
fn start_sidecar(sb: &Sandbox, splice: bool) -> Result<()> {
    let mut args = vec!["stream-server", "--listen", "0.0.0.0:15001", "--read-size", "1000"];
    if splice {
        args.push("--splice");
    }
    sb.start(&sb.in_pod(PROXY_UID), &args)
}

fn sandbox(accelerate: bool) -> Result<Sandbox> {
    let sb = Sandbox::new()?;
    if accelerate {
        sb.load_ebpf_accelerated()?;
    } else {
        sb.load_ebpf()?;
    }
    sb.enroll(&Policy::default())?;
    Ok(sb)
}

/// What must hold for every case in both modes; returns the sidecar's TCP byte count.
fn check(case: &str, v: &Value, bytes: u64) -> Result<u64> {
    let s = &v["server"];
    ensure!(v["ok"] == true, "{case}: {v}");
    ensure!(s["bytes"] == bytes && s["pattern_ok"] == true, "{case}: the sidecar did not get the bytes sent: {v}");
    ensure!(v["back_ok"] == true, "{case}: the application did not get the sidecar's bytes back: {v}");
    ensure!(v["peername"] == DST, "{case}: the application's peer is not what it dialled: {v}");
    ensure!(s["orig"] == DST, "{case}: SO_ORIGINAL_DST: {v}");
    ensure!(s["local"] == "127.0.0.1:15001", "{case}: the sidecar's local address: {v}");
    ensure!(s["peer"] == v["sockname"], "{case}: the sidecar's peer is not the application's socket: {v}");
    Ok(s["tcp_bytes_received"].as_u64().unwrap_or(u64::MAX))
}

/// Every size and sending system call, half-close in each (the client shuts down its
/// writing side and then reads the answer and the bytes back), in both modes. Both ends
/// read the way event loops do (non-blocking reads, poll() on EAGAIN): see the tests below
/// for blocking and splice() readers.
#[test]
fn accelerated_connections_deliver_the_same_bytes_addresses_and_original_destination() -> Result<()> {
    interceptor_tests::needs_root!();
    let cases: [(&str, u64, &str); 5] = [
        ("1 byte", 1, "write"),
        ("64 KiB", 64 * 1024, "write"),
        ("16 MiB, non-blocking writes", 16 * MIB, "write"),
        ("16 MiB with sendfile()", 16 * MIB, "sendfile"),
        ("16 MiB with splice() from a pipe", 16 * MIB, "splice"),
    ];
    for accelerate in [false, true] {
        let sb = sandbox(accelerate)?;
        start_sidecar(&sb, false)?;
        for (case, bytes, how) in cases {
            let v = stream(&sb, bytes, how)?;
            let tcp = check(case, &v, bytes)?;
            // TCP counts the FIN as one byte received.
            if accelerate {
                ensure!(tcp == 1, "{case}: accelerated, yet the sidecar received {tcp} bytes through TCP: {v}");
            } else {
                ensure!(tcp == bytes + 1, "{case}: {tcp} bytes through TCP, {bytes} sent: {v}");
            }
        }
    }
    Ok(())
}

/// A known kernel limitation (Linux 6.18), documented in README: a reader using splice()
/// (socket → pipe) reads only the TCP receive queue, so bytes redirected into the socket
/// are not seen — the reader gets the FIN, an empty stream. Without acceleration every
/// byte arrives. (If a kernel lifts the limitation, this test fails: update README.)
#[test]
fn a_sidecar_reading_with_splice_gets_every_byte_only_without_acceleration() -> Result<()> {
    interceptor_tests::needs_root!();
    for accelerate in [false, true] {
        let sb = sandbox(accelerate)?;
        start_sidecar(&sb, true)?;
        for bytes in [1, MIB] {
            let v = stream(&sb, bytes, "write")?;
            if accelerate {
                ensure!(
                    v["ok"] == true && v["server"]["bytes"] == 0 && v["server"]["tcp_bytes_received"] == 1,
                    "splice() reader with acceleration: expected the documented limitation (no bytes, then EOF): {v}"
                );
            } else {
                check("splice() reader", &v, bytes)?;
            }
        }
    }
    Ok(())
}

/// A known kernel limitation (Linux 6.18), documented in README: a reader blocked in read()
/// on an accelerated socket when its peer closes may get EAGAIN instead of the end of the
/// stream (the sidecar here closes 200 ms after its last byte, while the application
/// waits). Without acceleration it always reads the end.
#[test]
fn a_blocking_reader_sees_the_end_of_stream_only_without_acceleration() -> Result<()> {
    interceptor_tests::needs_root!();
    for accelerate in [false, true] {
        let sb = sandbox(accelerate)?;
        let args = ["stream-server", "--listen", "0.0.0.0:15001", "--close-delay-ms", "200"];
        sb.start(&sb.in_pod(PROXY_UID), &args)?;
        let mut eagain = 0;
        for _ in 0..5 {
            let out = sb.probe(
                &sb.in_pod(APP_UID),
                &["stream", "--to", DST, "--bytes", "1000", "--blocking"],
                Duration::from_secs(60),
            )?;
            let v: Value = serde_json::from_str(out.trim())?;
            if v["ok"] == true {
                check("blocking reader", &v, 1000)?;
            } else {
                ensure!(v["error"].as_str().unwrap_or_default().contains("temporarily unavailable"), "{v}");
                eagain += 1;
            }
        }
        if accelerate {
            ensure!(eagain > 0, "no EAGAIN in 5 runs with acceleration: the documented limitation is gone?");
        } else {
            ensure!(eagain == 0, "{eagain} of 5 blocking reads failed with EAGAIN without acceleration");
        }
    }
    Ok(())
}

/// Off by default, switched at load: a load without `--accelerate` turns it off for new
/// connections.
#[test]
fn acceleration_is_switched_at_load_for_new_connections() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = sandbox(true)?;
    start_sidecar(&sb, false)?;
    let v = stream(&sb, 1000, "write")?;
    ensure!(check("accelerated", &v, 1000)? == 1, "not accelerated: {v}");
    let report = interceptor::ebpf::load_report(&interceptor::ebpf::LoadOptions {
        cgroup: Some(sb.cgroup.clone()),
        pin_dir: sb.pins.clone(),
        max_tracked_connections: None,
        max_tracked_connections_per_pod: None,
        accelerate: false,
    })?;
    ensure!(report.acceleration_switched == Some(false), "{:?}", report.acceleration_switched);
    let v = stream(&sb, 1000, "write")?;
    ensure!(check("switched off", &v, 1000)? == 1001, "still accelerated: {v}");
    Ok(())
}

/// Unload never corrupts a live accelerated connection: bytes already redirected into the
/// sidecar's socket and not yet read are delivered after the unload, and the program and
/// map the kernel keeps for that connection are freed once it closes — nothing stays
/// loaded, attached or pinned.
#[test]
fn unload_keeps_live_accelerated_connections_whole_and_frees_everything_after_them() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = sandbox(true)?;
    // The sidecar reads only after 1.5 s: the client's bytes wait in its socket meanwhile.
    let args = ["stream-server", "--listen", "0.0.0.0:15001", "--delay-ms", "1500"];
    sb.start(&sb.in_pod(PROXY_UID), &args)?;
    let prog_id = aya::programs::ProgramInfo::from_pin(sb.pins.prog("accelerate"))?.id();
    let map_id = aya::maps::MapInfo::from_pin(sb.pins.map("ACCEL_SOCKETS"))?.id();
    let client = std::thread::scope(|scope| -> Result<Value> {
        let client = scope.spawn(|| stream(&sb, 4 * MIB, "write"));
        std::thread::sleep(Duration::from_millis(500));
        ensure!(interceptor::ebpf::unload(&sb.pins)?, "nothing was unloaded");
        client.join().map_err(|_| anyhow::anyhow!("client thread panicked"))?
    })?;
    // The bytes and the addresses; not SO_ORIGINAL_DST, which the sidecar asks after the
    // unload, when no program answers it any more (with or without acceleration).
    let s = &client["server"];
    ensure!(
        client["ok"] == true && s["bytes"] == 4 * MIB && s["pattern_ok"] == true && client["back_ok"] == true,
        "bytes lost or changed across the unload: {client}"
    );
    ensure!(s["peer"] == client["sockname"] && client["peername"] == DST, "{client}");
    ensure!(s["tcp_bytes_received"] == 1, "not accelerated before the unload: {client}");
    ensure!(!sb.pins.path().exists(), "pins left after unload");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let prog_alive = aya::programs::loaded_programs().filter_map(Result::ok).any(|p| p.id() == prog_id);
        let map_alive = aya::maps::loaded_maps().filter_map(Result::ok).any(|m| m.id() == map_id);
        if !prog_alive && !map_alive {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "after unload and the connection's close: program alive {prog_alive}, map alive {map_alive}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Issue 9's edge with acceleration: the application connects, sends a line and closes
/// (FIN, or a reset with SO_LINGER 0) before the sidecar accepts; the sidecar still reads
/// the line and the original destination, in both modes.
#[test]
fn bytes_sent_before_a_close_or_reset_reach_a_sidecar_that_accepts_late() -> Result<()> {
    interceptor_tests::needs_root!();
    use interceptor_tests::procs::{Collecting, command, netprobe};
    for accelerate in [false, true] {
        let sb = sandbox(accelerate)?;
        let mut cmd = command(&netprobe(), &sb.in_pod(PROXY_UID))?;
        cmd.args(["hold-accept", "--listen", "0.0.0.0:15001", "--wait-ms", "1000", "--idle-ms", "1500"]);
        let held = Collecting::start(cmd, "slow sidecar")?;
        let mut sent = Vec::new();
        for linger0 in [false, true] {
            let mut args = vec!["send-close", "--to", DST, "--count", "3"];
            if linger0 {
                args.push("--linger0");
            }
            let out = sb.probe(&sb.in_pod(APP_UID), &args, Duration::from_secs(20))?;
            for line in out.lines() {
                let v: Value = serde_json::from_str(line)?;
                ensure!(v["ok"] == true, "accelerate {accelerate}: {v}");
                sent.push(v["sockname"].as_str().unwrap_or_default().to_string());
            }
        }
        let got: Vec<Value> =
            held.finish(Duration::from_secs(20))?.iter().map(|l| serde_json::from_str(l)).collect::<Result<_, _>>()?;
        ensure!(
            got.len() == sent.len(),
            "accelerate {accelerate}: {} accepted, {} sent: {got:?}",
            got.len(),
            sent.len()
        );
        for v in &got {
            let data = v["data"].as_str().unwrap_or_default();
            ensure!(
                sent.iter().any(|s| data.ends_with(s.as_str())) && v["orig"] == DST,
                "accelerate {accelerate}: the sidecar read {v}"
            );
        }
    }
    Ok(())
}
