//! Text of the rules: the iptables-restore payload, byte-identical to osm-edge's generator,
//! and its shell form (`iptables-restore --noflush <<'EOF' … EOF`).
use crate::policy::{ChainNames, Family, Policy, RuleSet};

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

/// The shell form: what osm-edge puts in the init container's `sh -c`, made safe to run.
///
/// osm-edge writes the payload in an unquoted heredoc so that the shell expands `$POD_IP`
/// in the PodIP DNAT rule — and with it anything else that looks like an expansion, e.g.
/// `$(…)` in an interface name. Here the heredoc is quoted (`<<'EOF'`: the shell passes its
/// text through untouched). In PodIP mode the payload is cut around the one line holding
/// the variable, which is printed with the variable in double quotes (expanded once, its
/// value never re-interpreted) and the rest of the line in single quotes; the pieces are
/// piped to iptables-restore together. Either way iptables-restore receives exactly
/// osm-edge's payload with `$POD_IP` replaced by the pod's address.
pub fn shell(policy: &Policy, family: Family, names: &ChainNames) -> String {
    let text = payload(policy, family, names);
    let restore = family.restore_command();
    let var = family.pod_ip_variable();
    if !text.contains(var) {
        return format!("{restore} --noflush <<'EOF'\n{text}EOF\n");
    }
    let mut out = String::from("{\n");
    let mut quoted = String::new();
    let flush = |out: &mut String, quoted: &mut String| {
        if !quoted.is_empty() {
            out.push_str(&format!("cat <<'EOF'\n{quoted}EOF\n"));
            quoted.clear();
        }
    };
    for line in text.lines() {
        match line.split_once(var) {
            Some((before, after)) => {
                flush(&mut out, &mut quoted);
                let name = var.trim_start_matches('$');
                out.push_str(&format!("printf '%s\\n' {}\"${{{name}}}\"{}\n", sh_quote(before), sh_quote(after)));
            }
            None => {
                quoted.push_str(line);
                quoted.push('\n');
            }
        }
    }
    flush(&mut out, &mut quoted);
    out.push_str(&format!("}} | {restore} --noflush\n"));
    out
}

/// A single-quoted shell word (empty for an empty string: it is glued to a neighbour).
fn sh_quote(s: &str) -> String {
    if s.is_empty() { String::new() } else { format!("'{}'", s.replace('\'', "'\\''")) }
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
