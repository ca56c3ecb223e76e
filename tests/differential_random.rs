//! The randomised differential test: seeded random policies (CIDR lists, port lists,
//! interface exclusions, Localhost/PodIP, IPv4/IPv6) × random flows (outbound, inbound, the
//! pod's own addresses, loopback, unspecified and v4-mapped destinations, direct dials of
//! the sidecar's listeners), run on the real kernel in iptables mode and in eBPF mode, each
//! compared with the other and with the decision function.
//!
//! ```text
//! cargo test -p interceptor-tests --test differential_random                 # a random seed
//! cargo test -p interceptor-tests --test differential_random -- --seed 42    # reproduce
//! cargo test -p interceptor-tests --test differential_random -- --policies 40
//! ```
//! (Its own `main`: `--seed` is an argument of this test, not of libtest.)
use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use interceptor::policy::Policy;
use interceptor_tests::{
    Actor, FlowCase, Mode, Sandbox,
    flows::{Landing, policy_from_pod, same_endpoint},
    sandbox::{APP_UID, PROXY_UID},
};

/// A small, seedable generator (xorshift64*): the same seed, the same test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
    fn subset<T: Clone>(&mut self, v: &[T], percent: u64) -> Vec<T> {
        v.iter().filter(|_| self.chance(percent)).cloned().collect()
    }
}

const EXCLUDE: &[&str] = &[
    "203.0.113.10/32",
    "203.0.113.0/25",
    "203.0.113.128/25",
    "198.51.100.0/25",
    "198.51.100.1/32",
    "10.0.0.0/8",
    "2001:db8:2::20/128",
    "2001:db8:2::/64",
    "2001:db8:1::/64",
];
const INCLUDE: &[&str] =
    &["203.0.113.0/25", "203.0.113.20/32", "198.51.100.0/24", "2001:db8:2::/64", "2001:db8:2::10/128"];
const OUT_PORTS: &[&str] = &["80", "443", "6379", "7070", "15001"];
const IN_PORTS: &[&str] = &["8080", "9090", "6379", "15010"];

/// A random policy, as an operator's flags.
fn random_policy(rng: &mut Rng) -> Vec<(&'static str, String)> {
    let mut flags = Vec::new();
    let mut add = |key: &'static str, items: Vec<&str>| {
        if !items.is_empty() {
            flags.push((key, items.join(",")));
        }
    };
    add("outbound-ip-range-exclusion-list", rng.subset(EXCLUDE, 20));
    if rng.chance(30) {
        add("outbound-ip-range-inclusion-list", rng.subset(INCLUDE, 40));
    }
    add("outbound-port-exclusion-list", rng.subset(OUT_PORTS, 20));
    add("inbound-port-exclusion-list", rng.subset(IN_PORTS, 25));
    if rng.chance(30) {
        add("network-interface-exclusion-list", vec![*rng.pick(&["eth1", "eth1", "eth+", "eth0"])]);
    }
    if rng.chance(20) {
        flags.push(("local-proxy-mode", "PodIP".to_string()));
    }
    flags
}

/// Moves about half of the IP range items to the pod's annotations (same lists).
#[allow(clippy::type_complexity)]
fn split_annotations(
    flags: Vec<(&'static str, String)>,
    rng: &mut Rng,
) -> (Vec<(&'static str, String)>, Vec<(&'static str, String)>) {
    let mut global = Vec::new();
    let mut pod = Vec::new();
    for (key, value) in flags {
        if !key.starts_with("outbound-ip-range-") {
            global.push((key, value));
            continue;
        }
        let (mut g, mut p) = (Vec::new(), Vec::new());
        for item in value.split(',') {
            if rng.chance(50) { p.push(item) } else { g.push(item) }
        }
        if !g.is_empty() {
            global.push((key, g.join(",")));
        }
        if !p.is_empty() {
            pod.push((key, p.join(",")));
        }
    }
    (global, pod)
}

/// A random flow with a listener behind it in the sandbox (so that "where did it land" is
/// always a question with an answer), including the edges.
fn random_flow(rng: &mut Rng) -> FlowCase {
    const WORLD: &[&str] = &[
        "198.51.100.1",
        "203.0.113.10",
        "203.0.113.20",
        "203.0.113.200",
        "[2001:db8:2::10]",
        "[2001:db8:2::20]",
        "[2001:db8:1::1]",
        "[::ffff:198.51.100.1]",
        "[::ffff:203.0.113.10]",
    ];
    const WORLD_PORTS: &[u16] = &[80, 443, 6379, 7070];
    const POD: &[&str] = &[
        "198.51.100.2",
        "127.0.0.1",
        "[::1]",
        "[2001:db8:1::2]",
        "0.0.0.0",
        "[::]",
        "[::ffff:0.0.0.0]",
        "198.51.100.130",
    ];
    const POD_PORTS: &[u16] = &[8080, 9090, 15010, 15901, 6379, 15001, 15003];
    const INBOUND: &[&str] = &["198.51.100.2", "198.51.100.130", "[2001:db8:1::2]"];
    const INBOUND_PORTS: &[u16] = &[8080, 9090, 15010, 15904, 6379];
    let (actor, dst) = match rng.below(10) {
        0..=3 => (Actor::App, format!("{}:{}", rng.pick(WORLD), rng.pick(WORLD_PORTS))),
        4 => (Actor::Proxy, format!("{}:{}", rng.pick(WORLD), rng.pick(WORLD_PORTS))),
        5 => (Actor::App, format!("{}:{}", rng.pick(POD), rng.pick(POD_PORTS))),
        6 => (Actor::Proxy, format!("{}:{}", rng.pick(POD), rng.pick(POD_PORTS))),
        _ => (Actor::Peer, format!("{}:{}", rng.pick(INBOUND), rng.pick(INBOUND_PORTS))),
    };
    FlowCase { name: "random", actor, dst: dst.parse().expect("flow address"), udp: false }
}

/// Opens every flow at once per actor (one `connect-many` each); landings in flow order.
fn run_all(sb: &Sandbox, flows: &[FlowCase]) -> Result<Vec<Landing>> {
    let mut out: Vec<Option<Landing>> = vec![None; flows.len()];
    for actor in [Actor::App, Actor::Proxy, Actor::Peer] {
        let idx: Vec<usize> = (0..flows.len()).filter(|i| flows[*i].actor == actor).collect();
        if idx.is_empty() {
            continue;
        }
        let who = match actor {
            Actor::App => sb.in_pod(APP_UID),
            Actor::Proxy => sb.in_pod(PROXY_UID),
            Actor::Peer => sb.in_world(),
        };
        let dsts: Vec<String> = idx.iter().map(|i| flows[*i].dst.to_string()).collect();
        let results = sb.connect_many(&who, &dsts)?;
        if results.len() != idx.len() {
            bail!("connect-many answered {} of {} connections", results.len(), idx.len());
        }
        for (i, (_, v)) in idx.iter().zip(results) {
            out[*i] = Some(Landing::from_json(&v));
        }
    }
    Ok(out.into_iter().map(|l| l.expect("every flow ran")).collect())
}

struct Args {
    seed: u64,
    policies: usize,
    flows: usize,
}

fn args() -> Result<Args> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| argv.iter().position(|a| a == flag).and_then(|i| argv.get(i + 1)).cloned();
    let seed = match value("--seed") {
        Some(s) => s.parse().context("--seed")?,
        None => {
            let mut b = [0u8; 8];
            // SAFETY: a valid buffer of that length.
            unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
            u64::from_ne_bytes(b) | 1
        }
    };
    let policies = value("--policies").map(|s| s.parse()).transpose()?.unwrap_or(10);
    let flows = value("--flows").map(|s| s.parse()).transpose()?.unwrap_or(24);
    Ok(Args { seed, policies, flows })
}

fn main() {
    // libtest's listing (cargo test -- --list) expects nothing from a harness-less test.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !interceptor_tests::sandbox::is_root() {
        interceptor_tests::sandbox::report_skipped();
        return;
    }
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("differential_random: {e:#}");
            std::process::exit(2);
        }
    };
    println!("differential_random: seed {} ({} policies × {} flows)", a.seed, a.policies, a.flows);
    match run(&a) {
        Ok(pairs) => {
            println!("differential_random: {pairs} (policy, flow) pairs agree in both modes and with the oracle")
        }
        Err(e) => {
            eprintln!("differential_random: FAILED with seed {}: {e:#}", a.seed);
            eprintln!("reproduce: cargo test -p interceptor-tests --test differential_random -- --seed {}", a.seed);
            std::process::exit(1);
        }
    }
}

fn run(a: &Args) -> Result<usize> {
    let mut rng = Rng(a.seed);
    let mut split = Rng((a.seed ^ 0x5eed_a11e_d0d0_cafe) | 1);
    let sandboxes: BTreeMap<&str, Sandbox> = [("iptables", Sandbox::new()?), ("ebpf", Sandbox::new()?)].into();
    sandboxes["ebpf"].load_ebpf()?;
    for sb in sandboxes.values() {
        sb.start_servers()?;
    }
    let mut pairs = 0;
    let mut failures = Vec::new();
    for round in 0..a.policies {
        let flags = random_policy(&mut rng);
        // Some ranges come from the pod's annotations instead (eBPF mode folds a pod's own
        // ranges into its route table, the global ones are a shared list): drawn from a
        // generator of their own, so that a seed gives the same flags and flows as before.
        let (flags, annotations) = split_annotations(flags, &mut split);
        let borrowed: Vec<(&str, &str)> = flags.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let own: Vec<(&str, &str)> = annotations.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let policy: Policy = policy_from_pod(&borrowed, &own);
        sandboxes["iptables"].intercept(Mode::Iptables, &policy)?;
        sandboxes["ebpf"].enroll(&policy)?;
        let flows: Vec<FlowCase> = (0..a.flows).map(|_| random_flow(&mut rng)).collect();
        let ipt = run_all(&sandboxes["iptables"], &flows)?;
        let ebpf = run_all(&sandboxes["ebpf"], &flows)?;
        for (i, c) in flows.iter().enumerate() {
            pairs += 1;
            let (x, y) = (&ipt[i], &ebpf[i]);
            let what = format!("round {round} policy {flags:?} pod {annotations:?}: {:?} → {}", c.actor, c.dst);
            if (&x.server, &x.orig, &x.peer_ip) != (&y.server, &y.orig, &y.peer_ip) {
                failures.push(format!("{what}: iptables {x:?} ≠ eBPF {y:?}"));
                continue;
            }
            let want = sandboxes["iptables"].expected(&policy, c)?;
            if x.server.as_deref() != Some(want.server.as_str()) {
                failures.push(format!(
                    "{what}: both landed on {:?}, the oracle says {} ({:?})",
                    x.server, want.server, want.decision.reason
                ));
            } else if want.orig.is_some()
                && !x.orig.as_deref().zip(want.orig.as_deref()).is_some_and(|(g, w)| same_endpoint(g, w))
            {
                failures.push(format!("{what}: SO_ORIGINAL_DST {:?}, the oracle says {:?}", x.orig, want.orig));
            } else if c.actor != Actor::Peer
                && !y.peername.as_deref().is_some_and(|p| same_endpoint(p, &want.dst.to_string()))
            {
                failures.push(format!("{what}: eBPF getpeername() {:?}, expected {}", y.peername, want.dst));
            }
        }
    }
    if !failures.is_empty() {
        bail!("{} of {pairs} (policy, flow) pairs disagree:\n{}", failures.len(), failures.join("\n"));
    }
    Ok(pairs)
}
