//! Text of the rules: the iptables-restore payload, byte-identical to osm-edge's generator,
//! and its shell form (`iptables-restore --noflush <<EOF … EOF`).
use crate::policy::{ChainNames, Family, Policy, RuleSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The iptables-restore payload.
    Restore,
    /// The shell command of osm-edge's init container.
    Shell,
}

/// The iptables-restore payload for one family: header, the four chains, the rules in
/// emission order, COMMIT.
pub fn payload(policy: &Policy, family: Family, names: &ChainNames) -> String {
    let rules = RuleSet::build(policy, family);
    let mut out = String::from("# OSM sidecar interception rules\n*nat\n");
    for chain in names.ours() {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for rule in &rules.rules {
        out.push_str(&rule.render(names));
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

/// The shell form: what osm-edge puts in the init container's `sh -c`.
pub fn shell(policy: &Policy, family: Family, names: &ChainNames) -> String {
    format!("{} --noflush <<EOF\n{}EOF\n", family.restore_command(), payload(policy, family, names))
}

/// Replaces the `$POD_IP` / `$POD_IPV6` placeholder of the PodIP DNAT rule.
pub fn substitute_pod_ip(payload: &str, family: Family, pod_ip: Option<&str>) -> String {
    match pod_ip {
        Some(ip) => payload.replace(family.pod_ip_variable(), ip),
        None => payload.to_string(),
    }
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
