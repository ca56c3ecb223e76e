//! eBPF mode's lifecycle under stress: concurrent commands (locking), directories that are
//! not installations (scope), commands killed at every step (crash safety), pods whose
//! namespace disappears (garbage collection), and `--netns` inputs that are not a pod's
//! network namespace. Commands run as separate `interceptor` processes, as operators and
//! the CNI plugin run them.
use std::{
    collections::BTreeMap,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use interceptor::ebpf::{self, InstallLock, PinDir, crash, maps::PinnedMaps, raw};
use interceptor_common::map_names;
use interceptor_tests::{
    Actor, FlowCase, Sandbox,
    flows::policy_from,
    procs::{Held, ip, netprobe, sibling_binary},
    require_root,
    sandbox::APP_UID,
};

/// Runs `interceptor ARGS` (with extra environment) to completion; fails only on timeout.
fn run_env(args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
    let mut cmd = Command::new(sibling_binary("interceptor"));
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(o) => Ok(o?),
        Err(_) => {
            // SAFETY: our own child, reaped by the waiting thread.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            bail!("interceptor {args:?} hung (killed after 60 s)")
        }
    }
}

fn run(args: &[&str]) -> Result<Output> {
    run_env(args, &[])
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `interceptor ARGS` and requires success; returns stderr.
fn ok(args: &[&str]) -> Result<String> {
    let o = run(args)?;
    if !o.status.success() {
        bail!("interceptor {args:?} failed ({}): {}", o.status, stderr(&o));
    }
    Ok(stderr(&o))
}

fn pin_arg(sb: &Sandbox) -> String {
    sb.pins.path().to_str().unwrap().to_string()
}

fn netns_arg(sb: &Sandbox) -> String {
    sb.pod_netns().to_str().unwrap().to_string()
}

fn flow(actor: Actor, dst: &str) -> FlowCase {
    FlowCase { name: "check", actor, dst: dst.parse().unwrap(), udp: false }
}

/// The pod's application connection to 203.0.113.20:443 reaches the sidecar with the right
/// original destination.
fn assert_intercepted(sb: &Sandbox, when: &str) -> Result<()> {
    let l = sb.run_flow(&flow(Actor::App, "203.0.113.20:443"))?;
    assert_eq!(
        (l.server.as_deref(), l.orig.as_deref()),
        (Some("sidecar-out"), Some("203.0.113.20:443")),
        "{when}: pod {} is not intercepted",
        sb.id
    );
    Ok(())
}

fn landed(sb: &Sandbox, dst: &str) -> Result<Option<String>> {
    Ok(sb.run_flow(&flow(Actor::App, dst))?.server)
}

/// The maps that hold pods and policies (the connection-tracking ones vary with traffic).
const STATE_MAPS: [&str; 10] = [
    map_names::PODS,
    map_names::POD_ADDRS,
    map_names::POD_INFO,
    map_names::GENERATIONS,
    map_names::OBJECTS,
    map_names::EXCLUDED_CIDRS,
    map_names::INCLUDED_CIDRS,
    map_names::ROUTES,
    map_names::PORTS,
    map_names::IFACES,
];

/// Everything a command may leak: map entries, generations (policy objects), pins.
#[derive(Debug, PartialEq, Eq)]
struct Footprint {
    maps: BTreeMap<String, Option<u64>>,
    generations: usize,
    orphaned_generations: usize,
    pods: usize,
    pod_dirs: usize,
    next_pins: Vec<PathBuf>,
    staging: usize,
}

fn footprint(pins: &PinDir) -> Result<Footprint> {
    let s = ebpf::status(pins)?;
    assert!(s.loaded, "{} must look loaded at every moment", pins.path().display());
    let next_pins = std::fs::read_dir(pins.path().join("progs"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with("-next"))
        .collect();
    let prefix = pins.staging_prefix();
    let staging = std::fs::read_dir(pins.path().parent().unwrap())?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .count();
    Ok(Footprint {
        maps: STATE_MAPS.iter().map(|m| (m.to_string(), s.maps.get(*m).and_then(|u| u.entries))).collect(),
        generations: s.generations,
        orphaned_generations: s.orphaned_generations,
        pods: s.pods.len(),
        pod_dirs: pins.pod_dirs().len(),
        next_pins,
        staging,
    })
}

fn set_fingerprint(pins: &PinDir, f: impl FnOnce(u64) -> u64) -> Result<()> {
    let maps = PinnedMaps::open(pins)?;
    let mut settings = maps.settings()?;
    settings.fingerprint = f(settings.fingerprint);
    let mut m = maps.settings;
    m.set(0, settings, 0)?;
    Ok(())
}

/// Waits until the pod's IPv6 link-local addresses have passed duplicate address detection:
/// their local routes appear then, and a generation written before would differ from one
/// written after by those routes.
fn settle(sb: &Sandbox) -> Result<()> {
    let t = Instant::now();
    loop {
        let o = Command::new("ip").args(["-n", &sb.pod, "-6", "addr", "show", "tentative"]).output()?;
        if o.stdout.is_empty() {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(10) {
            bail!("addresses of {} still tentative after 10 s", sb.id);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two pods on one node (one installation, attached at `a`'s cgroup), both enrolled, their
/// servers running.
fn two_pods() -> Result<(Sandbox, Sandbox, u64)> {
    let a = Sandbox::new()?;
    a.load_ebpf()?;
    let b = Sandbox::with_host(3)?;
    b.share_cgroup_of(&a);
    settle(&a)?;
    settle(&b)?;
    a.start_servers()?;
    b.start_servers()?;
    a.enroll(&policy_from(&[
        ("outbound-ip-range-exclusion-list", "203.0.113.10/32"),
        ("outbound-port-exclusion-list", "6379"),
    ]))?;
    let r = b.enroll_in(&a.pins, &policy_from(&[("outbound-port-exclusion-list", "80")]))?;
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    Ok((a, b, r.netns_cookie))
}

fn killed(o: &Output) -> bool {
    o.status.signal() == Some(libc::SIGKILL)
}

#[test]
fn unload_refuses_what_is_not_an_installation_and_deletes_nothing() -> Result<()> {
    interceptor_tests::needs_root!();
    require_root();
    let base = std::env::temp_dir().join(format!("interceptor-test-ict{}xunload", std::process::id()));
    // A plain directory with someone's file.
    let plain = base.join("plain");
    std::fs::create_dir_all(&plain)?;
    std::fs::write(plain.join("precious"), "data")?;
    let o = run(&["ebpf", "unload", "--pin-dir", plain.to_str().unwrap()])?;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("not on a bpf filesystem, so not an interceptor installation"), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing was removed"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(plain.join("precious"))?, "data");

    // A separate bpffs instance holding another tool's pins.
    let fs = base.join("bpffs");
    std::fs::create_dir_all(&fs)?;
    nix::mount::mount(Some("bpf"), &fs, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)?;
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
        }
    }
    let _guard = Unmount(fs.clone());
    std::fs::create_dir(fs.join("othertool"))?;
    let map = raw::hash_map_create("OTHER_TOOL", 4, 4, 16)?;
    for p in [fs.join("othertool/state"), fs.join("top")] {
        raw::obj_pin(std::os::fd::AsFd::as_fd(&map), &p)?;
    }
    for dir in [fs.clone(), fs.join("othertool")] {
        let o = run(&["ebpf", "unload", "--pin-dir", dir.to_str().unwrap()])?;
        assert_eq!(o.status.code(), Some(1), "{}: {}", dir.display(), stderr(&o));
        assert!(stderr(&o).contains("is not an interceptor installation (no installation marker"), "{}", stderr(&o));
        let o = run(&["ebpf", "load", "--pin-dir", dir.to_str().unwrap(), "--cgroup", "/nonexistent"])?;
        assert_eq!(o.status.code(), Some(1));
        // The mount's root has a parent outside bpffs; a directory inside it is no installation.
        assert!(
            stderr(&o).contains("refusing to load there") || stderr(&o).contains("is not on a bpf filesystem"),
            "{}",
            stderr(&o)
        );
    }
    for p in [fs.join("othertool/state"), fs.join("top")] {
        raw::obj_get(&p).with_context(|| format!("{} was removed", p.display()))?;
    }
    // A real installation holding an entry interceptor did not create: everything of ours
    // goes, that entry stays (and is reported).
    let sb = Sandbox::new()?;
    sb.load_ebpf()?;
    sb.enroll(&policy_from(&[]))?;
    let foreign = sb.pins.path().join("maps").join("FOREIGN");
    raw::obj_pin(std::os::fd::AsFd::as_fd(&map), &foreign)?;
    let o = run(&["ebpf", "unload", "--pin-dir", &pin_arg(&sb)])?;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 entries interceptor did not create are left"), "{}", stderr(&o));
    raw::obj_get(&foreign).context("the foreign pin was removed")?;
    let mut left: Vec<String> = Vec::new();
    for e in walk(sb.pins.path()) {
        left.push(e.strip_prefix(sb.pins.path())?.display().to_string());
    }
    assert_eq!(left, ["maps", "maps/FOREIGN"], "only the foreign entry (and its directory) is left");
    sb.start_servers()?;
    assert_eq!(landed(&sb, "198.51.100.1:80")?.as_deref(), Some("world"), "nothing is intercepted any more");
    std::fs::remove_file(&foreign)?;
    std::fs::remove_dir(sb.pins.path().join("maps"))?;
    std::fs::remove_dir(sb.pins.path())?;
    Ok(())
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        out.push(e.path());
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out.sort();
    out
}

/// (generation, replaced generation) from an enroll's output.
fn enrolled_policy(text: &str) -> Option<(u32, Option<u32>)> {
    let line = text.lines().find(|l| l.starts_with("enrolled ") || l.starts_with("re-enrolled "))?;
    let number = |after: &str| -> Option<u32> {
        let rest = &line[line.find(after)? + after.len()..];
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    Some((number(": generation ")?, number(" replaced ")))
}

/// The excluded port of each policy variant (the world listens on all four).
const VARIANTS: [&str; 4] = ["80", "443", "6379", "7070"];

/// Traffic follows variant `v`: its port goes to the world, the others to the sidecar.
fn assert_follows_variant(sb: &Sandbox, v: usize) -> Result<()> {
    for (i, port) in VARIANTS.iter().enumerate() {
        let want = if i == v { "world" } else { "sidecar-out" };
        assert_eq!(landed(sb, &format!("203.0.113.20:{port}"))?.as_deref(), Some(want), "port {port}, variant {v}");
    }
    Ok(())
}

/// Spawns every command at once; returns their outputs in order.
fn all_at_once(commands: Vec<Vec<String>>) -> Result<Vec<Output>> {
    let children: Vec<_> = commands
        .iter()
        .map(|args| {
            Command::new(sibling_binary("interceptor"))
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    children.into_iter().map(|c| Ok(c.wait_with_output()?)).collect()
}

/// Checks the chain of (variant, (policy, replaced)) of one pod's enrolls: every enroll
/// replaced a different generation (the bug: two replacing the same one orphan a
/// generation), each replaced generation was written by one of them (or is `prev`, the
/// policy before them), and `current` ends the chain. Returns the variant of the enroll
/// whose policy is in force.
fn check_chain(outs: &[(usize, (u32, Option<u32>))], prev: Option<u32>, current: u32) -> usize {
    let replaced: Vec<u32> = outs.iter().filter_map(|(_, (_, r))| *r).collect();
    let mut unique = replaced.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), replaced.len(), "two enrolls replaced the same generation: {outs:?}");
    let new: Vec<u32> = outs.iter().map(|(_, (p, _))| *p).collect();
    for r in &replaced {
        assert!(new.contains(r) || Some(*r) == prev, "replaced {r}, which no enroll wrote: {outs:?}");
    }
    assert!(!replaced.contains(&current), "the policy in force {current} was replaced: {outs:?}");
    outs.iter()
        .find(|(_, (p, _))| *p == current)
        .unwrap_or_else(|| panic!("policy {current} in force comes from no enroll: {outs:?}"))
        .0
}

#[test]
fn concurrent_enrolls_and_unenrolls_are_serialized() -> Result<()> {
    interceptor_tests::needs_root!();
    let a = Sandbox::new()?;
    a.load_ebpf()?;
    let b = Sandbox::with_host(3)?;
    b.share_cgroup_of(&a);
    a.start_servers()?;
    b.start_servers()?;
    let pin = pin_arg(&a);
    let enroll_cmd = |sb: &Sandbox, v: usize| -> Vec<String> {
        ["ebpf", "enroll", "--netns", &netns_arg(sb), "--pin-dir", &pin, "--outbound-port-exclusion-list", VARIANTS[v]]
            .map(String::from)
            .to_vec()
    };
    let unenroll_cmd = |sb: &Sandbox| -> Vec<String> {
        ["ebpf", "unenroll", "--netns", &netns_arg(sb), "--pin-dir", &pin].map(String::from).to_vec()
    };

    // Round 1: eight enrolls of one pod at once. Round 2: eight more of it, while a second
    // pod is enrolled and unenrolled four times each, all at once.
    let mut prev_a = None;
    for round in 0..2 {
        let mut commands: Vec<(char, usize, Vec<String>)> =
            (0..8).map(|i| ('a', i % 4, enroll_cmd(&a, i % 4))).collect();
        if round == 1 {
            for i in 0..8 {
                commands.push(if i % 2 == 0 {
                    ('b', i % 4, enroll_cmd(&b, i % 4))
                } else {
                    ('u', 0, unenroll_cmd(&b))
                });
            }
        }
        let outputs = all_at_once(commands.iter().map(|(_, _, c)| c.clone()).collect())?;
        let mut a_outs = Vec::new();
        let mut b_outs = Vec::new();
        for ((who, v, cmd), o) in commands.iter().zip(&outputs) {
            assert!(o.status.success(), "{cmd:?}: {}", stderr(o));
            let text = stderr(o);
            assert!(!text.contains("warning"), "{cmd:?}: {text}");
            match who {
                'a' => a_outs.push((*v, enrolled_policy(&text).expect("enroll output"))),
                'b' => b_outs.push((*v, enrolled_policy(&text).expect("enroll output"))),
                _ => {}
            }
        }
        let status = ebpf::status(&a.pins)?;
        let a_cookie = interceptor::netns::Netns::at(a.pod_netns()).cookie()?;
        let b_cookie = interceptor::netns::Netns::at(b.pod_netns()).cookie()?;
        let policy_of = |c: u64| status.pods.iter().find(|p| p.netns_cookie == c).map(|p| p.generation);
        // Every object present is one a pod refers to: each pod's table and its ports list
        // (pods with the same ports share one).
        let referenced: std::collections::BTreeSet<u32> = status
            .pods
            .iter()
            .flat_map(|p| [Some(p.table), p.excluded_list.map(|l| l.id), p.ports_list.map(|l| l.id)])
            .flatten()
            .collect();
        assert_eq!(status.generations, referenced.len(), "round {round}: only the objects pods refer to: {status}");
        assert_eq!(status.orphaned_generations, 0, "round {round}");
        assert!(status.objects.iter().all(|o| o.pods > 0), "round {round}: {:?}", status.objects);
        assert_eq!(status.maps[map_names::PODS].entries, Some(status.pods.len() as u64));
        assert_eq!(status.maps[map_names::POD_INFO].entries, Some(status.pods.len() as u64));
        assert_eq!(status.maps[map_names::PODS].max_entries, interceptor_common::capacity::PODS as u32);
        assert_eq!(a.pins.pod_dirs().len(), status.pods.len());

        // Pod a: its enrolls form one chain (a first enroll only in round 0), ending at the
        // policy in force; traffic follows that enroll's policy.
        let firsts = a_outs.iter().filter(|(_, (_, r))| r.is_none()).count();
        assert_eq!(firsts, if round == 0 { 1 } else { 0 }, "{a_outs:?}");
        let current = policy_of(a_cookie).expect("a is enrolled");
        let v = check_chain(&a_outs, prev_a, current);
        assert_follows_variant(&a, v)?;
        prev_a = Some(current);

        // Pod b: enrolled or not, depending on which command came last.
        if round == 1 {
            // Each run of enrolls between two unenrolls is a chain starting with a first enroll.
            let replaced: Vec<u32> = b_outs.iter().filter_map(|(_, (_, r))| *r).collect();
            let mut unique = replaced.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), replaced.len(), "two enrolls of b replaced the same generation: {b_outs:?}");
            match policy_of(b_cookie) {
                Some(cur) => {
                    let v = b_outs.iter().find(|(_, (p, _))| *p == cur).expect("b's policy comes from an enroll").0;
                    assert_follows_variant(&b, v)?;
                }
                None => {
                    for port in VARIANTS {
                        assert_eq!(landed(&b, &format!("203.0.113.20:{port}"))?.as_deref(), Some("world"));
                    }
                }
            }
        }
    }
    let json: serde_json::Value =
        serde_json::from_slice(&run(&["ebpf", "status", "--json", "--pin-dir", &pin])?.stdout)?;
    for key in ["generations", "orphaned_generations"] {
        assert!(json[key].is_u64(), "status --json lacks {key}: {json}");
    }
    assert!(json["maps"]["ROUTES"]["entries"].as_u64().unwrap() > 0, "{json}");
    assert!(json["maps"]["ROUTES"]["max_entries"].as_u64().unwrap() > 0, "{json}");
    Ok(())
}

#[test]
fn a_command_waiting_for_the_lock_says_so() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    sb.load_ebpf()?;
    let lock = InstallLock::exclusive(&sb.pins)?.expect("loaded");
    let started = Instant::now();
    let mut child = Command::new(sibling_binary("interceptor"))
        .args(["ebpf", "status", "--pin-dir", &pin_arg(&sb)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // The notice comes while it waits (however slowly the machine starts the process).
    let err = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let notice = rx.recv_timeout(Duration::from_secs(60)).context("no notice while waiting for the lock")?;
    assert!(notice.contains("waiting for another interceptor command to finish"), "{notice}");
    assert!(started.elapsed() >= Duration::from_secs(1), "the notice comes after a second, not at once");
    std::thread::sleep(Duration::from_millis(200));
    assert!(child.try_wait()?.is_none(), "status must wait while an exclusive lock is held");
    drop(lock);
    let o = child.wait_with_output()?;
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("eBPF mode: loaded"));
    // Readers share the lock: a status does not wait for another reader.
    let shared = InstallLock::shared(&sb.pins)?.expect("loaded");
    let t = Instant::now();
    let o = run(&["ebpf", "status", "--pin-dir", &pin_arg(&sb)])?;
    assert!(o.status.success() && !stderr(&o).contains("waiting"), "{}", stderr(&o));
    assert!(t.elapsed() < Duration::from_secs(5));
    drop(shared);
    Ok(())
}

#[test]
fn sigkill_at_each_step_of_enroll_leaves_other_pods_intercepted_and_the_next_command_repairs() -> Result<()> {
    interceptor_tests::needs_root!();
    let (a, b, _) = two_pods()?;
    let before = footprint(&a.pins)?;
    // a: its table, its excluded list, its ports; b: its table, its ports.
    assert_eq!((before.generations, before.orphaned_generations), (5, 0));
    let mut held = Held::open(&netprobe(), &a.in_pod(APP_UID), "203.0.113.20:443")?;
    let (pin, ns_b) = (pin_arg(&a), netns_arg(&b));
    // Re-enrolls of b alternate between two policies of the same size (one excluded port):
    // each one needs a ports list that is not stored (the other one is b's).
    let enroll_b = |port: &str, env: &[(&str, &str)]| {
        run_env(&["ebpf", "enroll", "--netns", &ns_b, "--pin-dir", &pin, "--outbound-port-exclusion-list", port], env)
    };
    let b_cookie = interceptor::netns::Netns::at(b.pod_netns()).cookie()?;
    let b_ports = || -> Result<Vec<u16>> {
        let s = ebpf::status(&a.pins)?;
        Ok(s.pods.iter().find(|p| p.netns_cookie == b_cookie).expect("b enrolled").outbound_port_exclusions.clone())
    };
    for (i, step) in crash::ENROLL_STEPS.iter().enumerate() {
        let port = if b_ports()? == [80] { "7070" } else { "80" };
        let o = enroll_b(port, &[(crash::ENV, step)])?;
        assert!(killed(&o), "{step}: the enroll was not killed there: {} {}", o.status, stderr(&o));
        assert_intercepted(&a, step)?;
        assert_eq!(held.exchange()?.server.as_deref(), Some("sidecar-out"), "{step}: a's established connection");
        // b itself keeps its old policy or has its new one: intercepted either way.
        assert_intercepted(&b, step)?;
        let left = footprint(&a.pins)?;
        // Before the switch the new ports list, after it the old one.
        assert_eq!(left.orphaned_generations, 1, "{step}: the killed enroll leaves one object behind: {left:?}");
        // The next command repairs: gc, or simply the next enroll.
        if i % 2 == 0 {
            let out = ok(&["ebpf", "gc", "--pin-dir", &pin])?;
            assert!(out.contains("deleted 1 policy generation(s) no pod referenced"), "{step}: {out}");
        } else {
            let out = stderr(&enroll_b(port, &[])?);
            assert!(out.contains("deleted 1 policy generation(s)"), "{step}: {out}");
        }
        assert_eq!(footprint(&a.pins)?, before, "{step}: something leaked");
        assert_intercepted(&a, step)?;
        assert_intercepted(&b, step)?;
    }
    Ok(())
}

#[test]
fn sigkill_at_each_step_of_a_policy_only_switch_leaves_other_pods_intercepted_and_the_next_command_repairs()
-> Result<()> {
    interceptor_tests::needs_root!();
    let (a, b, b_cookie) = two_pods()?;
    let before = footprint(&a.pins)?;
    let mut held = Held::open(&netprobe(), &a.in_pod(APP_UID), "203.0.113.20:443")?;
    let (pin, ns_b) = (pin_arg(&a), netns_arg(&b));
    // What the daemon does on a MeshConfig change: b's lists switch, its table is kept.
    let switch_b = |port: &str, env: &[(&str, &str)]| {
        let args = [
            "ebpf",
            "enroll",
            "--policy-only",
            "--netns",
            &ns_b,
            "--pin-dir",
            &pin,
            "--outbound-port-exclusion-list",
            port,
        ];
        run_env(&args, env)
    };
    let b_state = || -> Result<(Vec<u16>, u32)> {
        let s = ebpf::status(&a.pins)?;
        let p = s.pods.iter().find(|p| p.netns_cookie == b_cookie).expect("b enrolled");
        Ok((p.outbound_port_exclusions.clone(), p.table))
    };
    let (_, table) = b_state()?;
    for (i, step) in crash::UPDATE_STEPS.iter().enumerate() {
        let port = if b_state()?.0 == [80] { "7070" } else { "80" };
        let o = switch_b(port, &[(crash::ENV, step)])?;
        assert!(killed(&o), "{step}: the switch was not killed there: {} {}", o.status, stderr(&o));
        assert_intercepted(&a, step)?;
        assert_eq!(held.exchange()?.server.as_deref(), Some("sidecar-out"), "{step}: a's established connection");
        assert_intercepted(&b, step)?;
        let left = footprint(&a.pins)?;
        assert_eq!(left.orphaned_generations, 1, "{step}: one ports list left behind: {left:?}");
        if i % 2 == 0 {
            let out = ok(&["ebpf", "gc", "--pin-dir", &pin])?;
            assert!(out.contains("deleted 1 policy generation(s) no pod referenced"), "{step}: {out}");
        } else {
            let out = stderr(&switch_b(port, &[])?);
            assert!(out.contains("deleted 1 policy generation(s)") && out.contains("routes kept"), "{step}: {out}");
        }
        assert_eq!(footprint(&a.pins)?, before, "{step}: something leaked");
        assert_eq!(b_state()?.1, table, "{step}: b's table is kept");
        assert_intercepted(&a, step)?;
        assert_intercepted(&b, step)?;
    }
    // A switch that would change b's table is a full enroll.
    let out = stderr(&run(&[
        "ebpf",
        "enroll",
        "--policy-only",
        "--netns",
        &ns_b,
        "--pin-dir",
        &pin,
        "--network-interface-exclusion-list",
        "eth1",
    ])?);
    assert!(out.contains("enrolling in full") && out.contains("re-enrolled"), "{out}");
    assert_ne!(b_state()?.1, table, "a new table (eth1 excluded)");
    Ok(())
}

#[test]
fn sigkill_at_each_step_of_unenroll_leaves_other_pods_intercepted_and_the_next_command_completes_it() -> Result<()> {
    interceptor_tests::needs_root!();
    let (a, b, _) = two_pods()?;
    let with_b = footprint(&a.pins)?;
    let (pin, ns_b) = (pin_arg(&a), netns_arg(&b));
    ok(&["ebpf", "unenroll", "--netns", &ns_b, "--pin-dir", &pin])?;
    let without_b = footprint(&a.pins)?;
    // a's table, excluded list and ports.
    assert_eq!((without_b.pods, without_b.generations), (1, 3));
    let enroll_b =
        || ok(&["ebpf", "enroll", "--netns", &ns_b, "--pin-dir", &pin, "--outbound-port-exclusion-list", "80"]);
    for (i, step) in crash::UNENROLL_STEPS.iter().enumerate() {
        enroll_b()?;
        assert_eq!(footprint(&a.pins)?, with_b);
        let o = run_env(&["ebpf", "unenroll", "--netns", &ns_b, "--pin-dir", &pin], &[(crash::ENV, step)])?;
        assert!(killed(&o), "{step}: the unenroll was not killed there: {}", stderr(&o));
        assert_intercepted(&a, step)?;
        assert_eq!(landed(&b, "203.0.113.20:443")?.as_deref(), Some("world"), "{step}: b is already switched off");
        // b's table and its ports list: no other pod refers to them.
        assert_eq!(footprint(&a.pins)?.orphaned_generations, 2, "{step}");
        if i % 2 == 0 {
            ok(&["ebpf", "gc", "--pin-dir", &pin])?;
        } else {
            let out = ok(&["ebpf", "unenroll", "--netns", &ns_b, "--pin-dir", &pin])?;
            assert!(out.contains("was not enrolled"), "{out}");
        }
        assert_eq!(footprint(&a.pins)?, without_b, "{step}: the interrupted unenroll was not completed");
        assert_intercepted(&a, step)?;
    }
    Ok(())
}

/// Every cgroup link runs the program pinned under its name, and the pods' programs reach
/// the pinned steering program.
fn assert_links_consistent(pins: &PinDir, when: &str) -> Result<()> {
    use std::os::fd::AsFd;
    let pinned = |name: &str| aya::programs::ProgramInfo::from_pin(pins.prog(name)).map(|i| i.id()).unwrap();
    for (name, _) in ebpf::object::CGROUP_PROGRAMS {
        let link = raw::obj_get(&pins.link(name))?;
        assert_eq!(raw::link_info(link.as_fd())?.prog_id, pinned(name), "{when}: link {name}");
    }
    // Each pod's own sk_lookup program tail-calls the steering program of STEER_PROGRAM[0].
    let slots = raw::obj_get(&pins.map(interceptor_common::map_names::STEER_PROGRAM))?;
    let steering = raw::prog_array_get(slots.as_fd(), 0)?;
    assert_eq!(steering, pinned(ebpf::object::SK_LOOKUP_PROGRAM), "{when}: the steering program");
    for c in pins.pod_dirs() {
        let link = raw::obj_get(&pins.pod_link(c))?;
        assert_ne!(raw::link_info(link.as_fd())?.prog_id, 0, "{when}: pod {c} has its program");
    }
    Ok(())
}

#[test]
fn sigkill_at_each_step_of_an_upgrade_never_stops_interception_and_the_next_load_completes_it() -> Result<()> {
    interceptor_tests::needs_root!();
    let (a, b, _) = two_pods()?;
    let before = footprint(&a.pins)?;
    let mut held = Held::open(&netprobe(), &a.in_pod(APP_UID), "203.0.113.20:443")?;
    let (pin, cg) = (pin_arg(&a), a.cgroup.to_str().unwrap().to_string());
    let build = ebpf::status(&a.pins)?.fingerprint;
    let inbound = |sb: &Sandbox| -> Result<Option<String>> {
        Ok(sb.run_flow(&flow(Actor::Peer, &format!("{}:8080", sb.pod_ip())))?.server)
    };
    for step in crash::UPGRADE_STEPS {
        // Another build is loaded (simulated by another fingerprint).
        set_fingerprint(&a.pins, |f| f ^ 1)?;
        let o = run_env(&["ebpf", "load", "--cgroup", &cg, "--pin-dir", &pin], &[(crash::ENV, step)])?;
        assert!(killed(&o), "{step}: the upgrade was not killed there: {}", stderr(&o));
        let s = ebpf::status(&a.pins)?;
        assert!(s.loaded && s.upgrade_interrupted, "{step}: {s}");
        for sb in [&a, &b] {
            assert_intercepted(sb, step)?;
            assert_eq!(inbound(sb)?.as_deref(), Some("sidecar-in"), "{step}: inbound steering of {}", sb.id);
        }
        assert_eq!(held.exchange()?.server.as_deref(), Some("sidecar-out"), "{step}: a's established connection");
        let out = ok(&["ebpf", "load", "--cgroup", &cg, "--pin-dir", &pin])?;
        assert!(out.contains("upgraded in place (2 pods kept)"), "{step}: {out}");
        let s = ebpf::status(&a.pins)?;
        assert!(!s.upgrade_interrupted && s.fingerprint == build, "{step}: {s}");
        assert_links_consistent(&a.pins, step)?;
        assert_eq!(footprint(&a.pins)?, before, "{step}: something leaked");
        assert!(ok(&["ebpf", "load", "--cgroup", &cg, "--pin-dir", &pin])?.contains("already loaded"));
        for sb in [&a, &b] {
            assert_intercepted(sb, step)?;
            assert_eq!(inbound(sb)?.as_deref(), Some("sidecar-in"), "{step}");
        }
    }
    Ok(())
}

#[test]
fn sigkill_during_a_first_load_leaves_nothing_the_next_load_does_not_remove() -> Result<()> {
    interceptor_tests::needs_root!();
    let (a, _b, _) = two_pods()?;
    for step in crash::LOAD_STEPS {
        let c = Sandbox::with_host(5)?;
        let (pin, cg) = (pin_arg(&c), c.cgroup.to_str().unwrap().to_string());
        let o = run_env(&["ebpf", "load", "--cgroup", &cg, "--pin-dir", &pin], &[(crash::ENV, step)])?;
        assert!(killed(&o), "{step}: {}", stderr(&o));
        assert!(!c.pins.path().exists(), "{step}: a killed load must not leave a half installation in place");
        let prefix = c.pins.staging_prefix();
        let staged = || {
            std::fs::read_dir("/sys/fs/bpf")
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .count()
        };
        assert_eq!(staged(), 1, "{step}");
        assert!(!ebpf::status(&c.pins)?.loaded);
        assert_intercepted(&a, step)?;
        let out = ok(&["ebpf", "load", "--cgroup", &cg, "--pin-dir", &pin])?;
        assert!(out.contains("removed pins of interrupted commands") && out.contains("loaded and attached"), "{out}");
        assert_eq!(staged(), 0, "{step}");
        c.enroll(&policy_from(&[]))?;
        c.start_servers()?;
        assert_intercepted(&c, step)?;
    }
    Ok(())
}

/// Deletes a pod's network namespace (its processes first) and waits until the kernel has
/// destroyed it (its sk_lookup link then reports no namespace).
fn delete_pod_netns(sb: &Sandbox, pins: &PinDir, cookie: u64) -> Result<()> {
    sb.kill_all();
    ip(&["netns", "del", &sb.pod])?;
    let t = Instant::now();
    while !ebpf::gc::netns_gone(pins, cookie) {
        if t.elapsed() > Duration::from_secs(10) {
            bail!("the namespace of {} is still alive 10 s after deletion", sb.id);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn an_upgrade_with_a_pod_whose_namespace_is_gone_succeeds_and_reports_it() -> Result<()> {
    interceptor_tests::needs_root!();
    let (a, b, b_cookie) = two_pods()?;
    delete_pod_netns(&b, &a.pins, b_cookie)?;
    let s = ebpf::status(&a.pins)?;
    assert_eq!((s.pods.len(), s.dead_pods), (2, 1), "status shows the dead pod");
    set_fingerprint(&a.pins, |f| f ^ 1)?;
    let out = ok(&["ebpf", "load", "--cgroup", a.cgroup.to_str().unwrap(), "--pin-dir", &pin_arg(&a)])?;
    assert!(out.contains("upgraded in place (1 pods kept)"), "{out}");
    assert!(
        out.contains(&format!("unenrolled 1 pod(s) whose network namespace is gone (netns cookies {b_cookie})")),
        "{out}"
    );
    let f = footprint(&a.pins)?;
    assert_eq!((f.pods, f.pod_dirs, f.generations, f.orphaned_generations), (1, 1, 3, 0), "{f:?}");
    assert!(!ebpf::status(&a.pins)?.upgrade_interrupted);
    assert_links_consistent(&a.pins, "after the upgrade")?;
    assert_intercepted(&a, "after the upgrade")?;
    Ok(())
}

#[test]
fn gc_unenrolls_a_pod_whose_namespace_is_gone() -> Result<()> {
    interceptor_tests::needs_root!();
    let (a, b, b_cookie) = two_pods()?;
    let pin = pin_arg(&a);
    let v: serde_json::Value = serde_json::from_slice(&run(&["ebpf", "gc", "--json", "--pin-dir", &pin])?.stdout)?;
    assert_eq!(v["dead_pods"], serde_json::json!([]), "nothing to collect while both pods live: {v}");
    delete_pod_netns(&b, &a.pins, b_cookie)?;
    let o = run(&["ebpf", "gc", "--json", "--pin-dir", &pin])?;
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(v["dead_pods"], serde_json::json!([b_cookie]), "{v}");
    let f = footprint(&a.pins)?;
    assert_eq!((f.pods, f.pod_dirs, f.generations, f.orphaned_generations), (1, 1, 3, 0), "{f:?}");
    let maps = PinnedMaps::open(&a.pins)?;
    assert!(maps.pod_addrs.iter().filter_map(Result::ok).all(|(_, c)| c != b_cookie), "b's addresses are gone");
    assert_intercepted(&a, "after gc")?;
    Ok(())
}

#[test]
fn a_new_pod_with_the_address_of_a_pod_whose_namespace_is_gone_takes_it_over() -> Result<()> {
    interceptor_tests::needs_root!();
    let (a, b, b_cookie) = two_pods()?;
    // b is deleted without an unenroll (its DEL never came); a new pod gets its address.
    delete_pod_netns(&b, &a.pins, b_cookie)?;
    drop(b);
    let c = Sandbox::with_host(3)?;
    c.share_cgroup_of(&a);
    c.start_servers()?;
    let r = c.enroll_in(&a.pins, &policy_from(&[]))?;
    assert_eq!(r.gc.dead_pods, vec![b_cookie], "the dead pod holding the address is unenrolled: {r:?}");
    let f = footprint(&a.pins)?;
    // a's three objects, c's table (c has no lists).
    assert_eq!((f.pods, f.pod_dirs, f.generations, f.orphaned_generations), (2, 2, 4, 0), "{f:?}");
    assert_intercepted(&c, "the new pod")?;
    assert_intercepted(&a, "the other pod")?;
    // A live pod's address is still refused.
    let d = Sandbox::with_host(3)?;
    let e = d.enroll_in(&a.pins, &policy_from(&[])).unwrap_err();
    assert!(e.to_string().contains("pod addresses must be unique on a node"), "{e:#}");
    Ok(())
}

#[test]
fn enroll_warns_when_the_pods_processes_are_outside_the_attach_cgroup() -> Result<()> {
    interceptor_tests::needs_root!();
    let a = Sandbox::new()?;
    a.load_ebpf()?;
    // c's processes stay in c's own cgroup, not under a's, where the programs are attached.
    let c = Sandbox::with_host(4)?;
    c.start_servers()?;
    let out = ok(&["ebpf", "enroll", "--netns", &netns_arg(&c), "--pin-dir", &pin_arg(&a)])?;
    assert!(out.contains("are not under the cgroup eBPF mode is attached to"), "{out}");
    assert!(out.contains(&c.cgroup.file_name().unwrap().to_string_lossy().to_string()), "{out}");
    assert_eq!(landed(&c, "203.0.113.20:443")?.as_deref(), Some("world"), "indeed not intercepted");
    Ok(())
}

#[test]
fn load_refuses_a_private_cgroup_namespace_instead_of_attaching_to_its_subtree() -> Result<()> {
    interceptor_tests::needs_root!();
    use std::{ffi::CString, os::unix::process::CommandExt};
    let c = Sandbox::new()?;
    let root = ebpf::loader::cgroup2_root()?;
    // The load runs as a container with a private cgroup namespace sees the world: it joins
    // c's cgroup, makes it the root of a new cgroup namespace, and mounts cgroup2 anew (in
    // its own mount namespace) where the node's was.
    let procs = CString::new(c.cgroup.join("cgroup.procs").to_str().unwrap())?;
    let (mnt, none, cgroup2, slash) = (CString::new(root.to_str().unwrap())?, c"none", c"cgroup2", c"/");
    let mut cmd = Command::new(sibling_binary("interceptor"));
    cmd.args(["ebpf", "load", "--pin-dir", &pin_arg(&c)]);
    // SAFETY: only async-signal-safe calls (open, write, close, unshare, mount, umount2).
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return fail();
            }
            libc::close(fd);
            if libc::unshare(libc::CLONE_NEWCGROUP | libc::CLONE_NEWNS) != 0
                || libc::mount(
                    none.as_ptr(),
                    slash.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                || libc::umount2(mnt.as_ptr(), libc::MNT_DETACH) != 0
                || libc::mount(none.as_ptr(), mnt.as_ptr(), cgroup2.as_ptr(), 0, std::ptr::null()) != 0
            {
                return fail();
            }
            Ok(())
        });
    }
    let o = cmd.output()?;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("is not the host's root cgroup"), "{}", stderr(&o));
    assert!(!c.pins.path().exists(), "nothing was installed");
    Ok(())
}

#[test]
fn netns_that_is_not_a_pods_network_namespace_is_refused_clearly_and_at_once() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    sb.load_ebpf()?;
    let dir = std::env::temp_dir().join(format!("interceptor-test-ict{}xnetns", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let fifo = dir.join("fifo");
    let file = dir.join("file");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    std::fs::write(&file, "not a namespace")?;
    let pin = pin_arg(&sb);
    let cases = [
        (fifo.to_str().unwrap(), "is not a network namespace: it is a FIFO"),
        (file.to_str().unwrap(), "is not a network namespace: it is a regular file"),
        (dir.to_str().unwrap(), "is not a network namespace: it is a directory"),
        ("/proc/self/ns/mnt", "is a mount namespace, not a network namespace"),
    ];
    for (path, want) in cases {
        for args in [
            vec!["ebpf", "enroll", "--netns", path, "--pin-dir", &pin],
            vec!["ebpf", "unenroll", "--netns", path, "--pin-dir", &pin],
            vec!["iptables", "apply", "--netns", path, "--family", "ipv4"],
        ] {
            let t = Instant::now();
            let o = run(&args)?;
            assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
            assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
            assert!(t.elapsed() < Duration::from_secs(10), "{args:?} took {:?}", t.elapsed());
        }
    }
    // The host's own namespace: refused before anything else happens (against a pin
    // directory where nothing is loaded, so a regression could not touch the host).
    let nowhere = format!("/sys/fs/bpf/interceptor-test-ict{}xnowhere", std::process::id());
    let mut host = vec!["/proc/self/ns/net", "/proc/2/ns/net"];
    // PID 1 cannot always be inspected (here it holds a capability the tests lack).
    if std::fs::File::open("/proc/1/ns/net").is_ok() {
        host.push("/proc/1/ns/net");
    }
    for ns in host {
        let o = run(&["ebpf", "enroll", "--netns", ns, "--pin-dir", &nowhere])?;
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains("is the host's own network namespace"), "{}", stderr(&o));
        assert!(stderr(&o).contains("--allow-host-netns"), "{}", stderr(&o));
    }
    let e = ebpf::enroll(
        &policy_from(&[]),
        &ebpf::EnrollOptions {
            netns: interceptor::netns::Netns::open("/proc/self/ns/net")?,
            pod_ips: vec![],
            pin_dir: PinDir::new(&nowhere),
            pod_name: None,
            allow_host_netns: false,
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("host's own network namespace"), "the library refuses it too: {e:#}");
    assert!(!Path::new(&nowhere).exists());
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
