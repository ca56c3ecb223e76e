//! apply / cleanup / verify: one atomic iptables-restore per family, idempotent, removing
//! exactly what it added. Works with whichever `iptables` is on PATH (nft or legacy).
use std::net::IpAddr;

pub use super::command::save;
use super::{
    IptablesError,
    command::{on_path, restore, restore_table},
    render::{payload, substitute_pod_ip},
    saved::SavedNat,
};
use crate::{
    netns::{Netns, in_scratch_netns},
    policy::{ChainNames, Family, PodIps, Policy},
};

type Result<T> = std::result::Result<T, IptablesError>;

#[derive(Clone, Debug)]
pub struct ApplyOptions {
    pub netns: Netns,
    pub pod_ips: Vec<IpAddr>,
    pub families: Vec<Family>,
    /// False when `families` is the default: then PodIP mode without an IPv6 pod address
    /// programs IPv4 only instead of failing.
    pub families_explicit: bool,
    pub names: ChainNames,
}

/// What apply will send to iptables-restore for one family.
#[derive(Clone, Debug)]
pub struct Plan {
    pub family: Family,
    pub payload: String,
    /// The nat table before the change, for rolling back.
    pub before: String,
}

/// The families to program by default: IPv4, and IPv6 when the kernel and ip6tables have it.
pub fn default_families() -> Vec<Family> {
    let mut out = vec![Family::Ipv4];
    if std::path::Path::new("/proc/sys/net/ipv6").exists() && on_path(Family::Ipv6.restore_command()) {
        out.push(Family::Ipv6);
    }
    out
}

/// The families to program: PodIP mode needs the pod's address of each family; a family
/// that was not asked for explicitly and has none is left out (with a warning).
fn families(policy: &Policy, opts: &ApplyOptions) -> Vec<Family> {
    let pod_ips = PodIps::given(&opts.pod_ips);
    opts.families
        .iter()
        .copied()
        .filter(|f| {
            let skip = !opts.families_explicit && pod_ips.require(policy, *f).is_err();
            if skip {
                tracing::warn!(
                    "localProxyMode PodIP without an {f} pod address: {f} rules not programmed (pass --pod-ip)"
                );
            }
            !skip
        })
        .collect()
}

fn pod_ip_for(policy: &Policy, pod_ips: &[IpAddr], family: Family) -> Result<Option<String>> {
    Ok(PodIps::given(pod_ips).require(policy, family)?.map(|ip| ip.to_string()))
}

/// The payloads apply would send: osm-edge's rules, preceded by deletions of the hooks a
/// previous apply left in the built-in chains (the chain declarations flush our own chains),
/// so applying twice leaves one copy of everything.
pub fn plan(policy: &Policy, opts: &ApplyOptions) -> Result<Vec<Plan>> {
    let mut plans = Vec::new();
    for family in families(policy, opts) {
        let pod_ip = pod_ip_for(policy, &opts.pod_ips, family)?;
        let before = save(&opts.netns, family)?;
        let saved = SavedNat::parse(&before);
        let rendered = substitute_pod_ip(&payload(policy, family, &opts.names), family, pod_ip.as_deref());
        let mut lines: Vec<String> = rendered.lines().map(str::to_string).collect();
        // After "# ...", "*nat" and the four chain declarations.
        let at = 2 + opts.names.ours().len();
        let deletions = saved.our_hooks(&opts.names, family).into_iter().map(|r| format!("-D {} {}", r.chain, r.spec));
        lines.splice(at..at, deletions);
        plans.push(Plan { family, payload: lines.join("\n") + "\n", before });
    }
    Ok(plans)
}

/// Applies the policy: every family is tested first, then committed; if a later family
/// fails, the earlier ones are rolled back to their previous nat table.
pub fn apply(policy: &Policy, opts: &ApplyOptions) -> Result<Vec<Plan>> {
    let plans = plan(policy, opts)?;
    for p in &plans {
        restore(&opts.netns, p.family, &p.payload, true)
            .map_err(|e| IptablesError::Rejected { family: p.family, source: Box::new(e) })?;
    }
    for (i, p) in plans.iter().enumerate() {
        if let Err(e) = restore(&opts.netns, p.family, &p.payload, false) {
            for done in &plans[..i] {
                rollback(&opts.netns, done);
            }
            return Err(IptablesError::NotApplied { family: p.family, source: Box::new(e) });
        }
    }
    Ok(plans)
}

fn rollback(netns: &Netns, plan: &Plan) {
    let result = if plan.before.trim().is_empty() {
        // The table did not exist: remove what we added.
        cleanup_family(netns, plan.family, &ChainNames::DOCUMENTED)
            .and(cleanup_family(netns, plan.family, &ChainNames::OSM))
            .map(|_| ())
    } else {
        restore_table(netns, plan.family, &plan.before)
    };
    if let Err(e) = result {
        tracing::error!("rolling back the {} rules failed: {e:#}", plan.family);
    }
}

/// Removes our hooks from the built-in chains and our four chains; leaves everything else.
/// Returns how many rules and chains were removed.
pub fn cleanup(opts: &ApplyOptions) -> Result<usize> {
    let mut removed = 0;
    for &family in &opts.families {
        removed += cleanup_family(&opts.netns, family, &opts.names)?;
    }
    Ok(removed)
}

fn cleanup_family(netns: &Netns, family: Family, names: &ChainNames) -> Result<usize> {
    let saved = SavedNat::parse(&save(netns, family)?);
    let hooks = saved.our_hooks(names, family);
    let chains: Vec<&str> = names.ours().into_iter().filter(|c| saved.has_chain(c)).collect();
    if hooks.is_empty() && chains.is_empty() {
        return Ok(0);
    }
    let mut text = String::from("*nat\n");
    for h in &hooks {
        text.push_str(&format!("-D {} {}\n", h.chain, h.spec));
    }
    for c in &chains {
        text.push_str(&format!("-F {c}\n"));
    }
    for c in &chains {
        text.push_str(&format!("-X {c}\n"));
    }
    text.push_str("COMMIT\n");
    restore(netns, family, &text, false).map_err(|e| IptablesError::NotRemoved { family, source: Box::new(e) })?;
    Ok(hooks.len() + chains.len())
}

/// The difference between the live tables and the policy, one line per problem; empty
/// when they agree. The expected rules are normalised by the kernel itself: the policy is
/// applied in a scratch namespace and read back with iptables-save.
pub fn verify(policy: &Policy, opts: &ApplyOptions) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for family in families(policy, opts) {
        let pod_ip = pod_ip_for(policy, &opts.pod_ips, family)?;
        let wanted = substitute_pod_ip(&payload(policy, family, &opts.names), family, pod_ip.as_deref());
        let expected_text = in_scratch_netns(move || {
            restore(&Netns::current(), family, &wanted, false)?;
            save(&Netns::current(), family)
        })?;
        let expected = SavedNat::parse(&expected_text);
        let live = SavedNat::parse(&save(&opts.netns, family)?);
        for chain in opts.names.ours() {
            if !live.has_chain(chain) {
                problems.push(format!("{family}: chain {chain} is missing"));
            }
        }
        let lines = |nat: &SavedNat| -> (Vec<String>, Vec<String>) {
            let hooks =
                nat.our_hooks(&opts.names, family).iter().map(|r| format!("-A {} {}", r.chain, r.spec)).collect();
            let rules = nat.our_chain_rules(&opts.names).iter().map(|r| format!("-A {} {}", r.chain, r.spec)).collect();
            (hooks, rules)
        };
        let (eh, er) = lines(&expected);
        let (lh, lr) = lines(&live);
        compare(&format!("{family} hooks in PREROUTING/OUTPUT"), &eh, &lh, &mut problems);
        compare(&format!("{family} rules"), &er, &lr, &mut problems);
    }
    Ok(problems)
}

/// Missing and unexpected lines (counting duplicates), then order.
fn compare(what: &str, expected: &[String], live: &[String], problems: &mut Vec<String>) {
    let mut remaining: Vec<&String> = live.iter().collect();
    let mut missing = Vec::new();
    for e in expected {
        match remaining.iter().position(|l| *l == e) {
            Some(i) => {
                remaining.remove(i);
            }
            None => missing.push(e),
        }
    }
    for m in &missing {
        problems.push(format!("{what}: missing   {m}"));
    }
    for u in &remaining {
        problems.push(format!("{what}: unexpected {u}"));
    }
    if missing.is_empty() && remaining.is_empty() && expected != live {
        let at = expected.iter().zip(live).position(|(a, b)| a != b).unwrap_or(0);
        problems.push(format!(
            "{what}: order differs at rule {}: expected {}, found {}",
            at + 1,
            expected[at],
            live[at]
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::compare;

    #[test]
    fn compare_reports_missing_unexpected_duplicates_and_order() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let mut p = Vec::new();
        compare("x", &s(&["a", "b"]), &s(&["a", "b"]), &mut p);
        assert!(p.is_empty());
        compare("x", &s(&["a", "b"]), &s(&["a", "a", "c"]), &mut p);
        assert_eq!(p, ["x: missing   b", "x: unexpected a", "x: unexpected c"]);
        p.clear();
        compare("x", &s(&["a", "b"]), &s(&["b", "a"]), &mut p);
        assert_eq!(p, ["x: order differs at rule 1: expected a, found b"]);
    }
}
