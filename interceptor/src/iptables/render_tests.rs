//! Golden tests: the three examples of the reference (osm-edge's own test cases), in the
//! documented and in osm-edge's current chain names, and the cases where we must differ.
//! The constants are osm-edge's shell form verbatim (an unquoted heredoc); ours quotes the
//! heredoc (`osm_shell_quoted`) and, in PodIP mode, prints the one line holding `$POD_IP`
//! separately (`POD_IP_SHELL`): the payload between the markers is the same bytes.
use super::*;
use crate::policy::{Cidr, LocalProxyMode, Policy, error::Origin, validate::parse_cidr};

const NO_EXCLUSIONS: &str = r#"iptables-restore --noflush <<EOF
# OSM sidecar interception rules
*nat
:PROXY_INBOUND - [0:0]
:PROXY_IN_REDIRECT - [0:0]
:PROXY_OUTPUT - [0:0]
:PROXY_REDIRECT - [0:0]
-A PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-port 15003
-A PREROUTING -p tcp -j PROXY_INBOUND
-A PROXY_INBOUND -p tcp --dport 15010 -j RETURN
-A PROXY_INBOUND -p tcp --dport 15901 -j RETURN
-A PROXY_INBOUND -p tcp --dport 15902 -j RETURN
-A PROXY_INBOUND -p tcp --dport 15903 -j RETURN
-A PROXY_INBOUND -p tcp --dport 15904 -j RETURN
-A PROXY_INBOUND -p tcp -j PROXY_IN_REDIRECT
-A PROXY_REDIRECT -p tcp -j REDIRECT --to-port 15001
-A PROXY_REDIRECT -p tcp --dport 15000 -j ACCEPT
-A OUTPUT -p tcp -j PROXY_OUTPUT
-A PROXY_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1500 -j PROXY_IN_REDIRECT
-A PROXY_OUTPUT -o lo -m owner ! --uid-owner 1500 -j RETURN
-A PROXY_OUTPUT -m owner --uid-owner 1500 -j RETURN
-A PROXY_OUTPUT -d 127.0.0.1/32 -j RETURN
-A PROXY_OUTPUT -j PROXY_REDIRECT
COMMIT
EOF
"#;

const WITH_EXCLUSIONS: &str = r#"iptables-restore --noflush <<EOF
# OSM sidecar interception rules
*nat
:PROXY_INBOUND - [0:0]
:PROXY_IN_REDIRECT - [0:0]
:PROXY_OUTPUT - [0:0]
:PROXY_REDIRECT - [0:0]
-A PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-port 15003
-A PREROUTING -p tcp -j PROXY_INBOUND
-A PROXY_INBOUND -p tcp --dport 15010 -j RETURN
-A PROXY_INBOUND -p tcp --dport 15901 -j RETURN
-A PROXY_INBOUND -p tcp --dport 15902 -j RETURN
-A PROXY_INBOUND -p tcp --dport 15903 -j RETURN
-A PROXY_INBOUND -p tcp --dport 15904 -j RETURN
-A PROXY_INBOUND -p tcp -j PROXY_IN_REDIRECT
-I PROXY_INBOUND -i eth0 -j RETURN
-I PROXY_INBOUND -i eth1 -j RETURN
-I PROXY_INBOUND -p tcp --match multiport --dports 30,40 -j RETURN
-A PROXY_REDIRECT -p tcp -j REDIRECT --to-port 15001
-A PROXY_REDIRECT -p tcp --dport 15000 -j ACCEPT
-A OUTPUT -p tcp -j PROXY_OUTPUT
-A PROXY_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1500 -j PROXY_IN_REDIRECT
-A PROXY_OUTPUT -o lo -m owner ! --uid-owner 1500 -j RETURN
-A PROXY_OUTPUT -m owner --uid-owner 1500 -j RETURN
-A PROXY_OUTPUT -d 127.0.0.1/32 -j RETURN
-A PROXY_OUTPUT -o eth0 -j RETURN
-A PROXY_OUTPUT -o eth1 -j RETURN
-A PROXY_OUTPUT -d 1.1.1.1/32 -j RETURN
-A PROXY_OUTPUT -d 2.2.2.2/32 -j RETURN
-A PROXY_OUTPUT -p tcp --match multiport --dports 10,20 -j RETURN
-A PROXY_OUTPUT -d 3.3.3.3/32 -j PROXY_REDIRECT
-A PROXY_OUTPUT -d 4.4.4.4/32 -j PROXY_REDIRECT
-A PROXY_OUTPUT -j RETURN
COMMIT
EOF
"#;

const POD_IP: &str = r#"iptables-restore --noflush <<EOF
# OSM sidecar interception rules
*nat
:PROXY_INBOUND - [0:0]
:PROXY_IN_REDIRECT - [0:0]
:PROXY_OUTPUT - [0:0]
:PROXY_REDIRECT - [0:0]
-A PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-port 15003
-A PREROUTING -p tcp -j PROXY_INBOUND
-A PROXY_INBOUND -p tcp --dport 15010 -j RETURN
-A PROXY_INBOUND -p tcp --dport 15901 -j RETURN
-A PROXY_INBOUND -p tcp --dport 15902 -j RETURN
-A PROXY_INBOUND -p tcp --dport 15903 -j RETURN
-A PROXY_INBOUND -p tcp --dport 15904 -j RETURN
-A PROXY_INBOUND -p tcp -j PROXY_IN_REDIRECT
-A PROXY_REDIRECT -p tcp -j REDIRECT --to-port 15001
-A PROXY_REDIRECT -p tcp --dport 15000 -j ACCEPT
-A OUTPUT -p tcp -j PROXY_OUTPUT
-A PROXY_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1500 -j PROXY_IN_REDIRECT
-A PROXY_OUTPUT -o lo -m owner ! --uid-owner 1500 -j RETURN
-A PROXY_OUTPUT -m owner --uid-owner 1500 -j RETURN
-A PROXY_OUTPUT -d 127.0.0.1/32 -j RETURN
-I OUTPUT -p tcp -o lo -d 127.0.0.1/32 -m owner --uid-owner 1500 -j DNAT --to-destination $POD_IP
-A PROXY_OUTPUT -j PROXY_REDIRECT
COMMIT
EOF
"#;

fn cidrs(list: &[&str]) -> Vec<Cidr> {
    list.iter().map(|t| parse_cidr(&Origin::Flag("test".into()), t).unwrap()).collect()
}

fn with_exclusions() -> Policy {
    Policy {
        outbound_ip_range_exclusions: cidrs(&["1.1.1.1/32", "2.2.2.2/32"]),
        outbound_ip_range_inclusions: cidrs(&["3.3.3.3/32", "4.4.4.4/32"]),
        outbound_port_exclusions: vec![10, 20],
        inbound_port_exclusions: vec![30, 40],
        network_interface_exclusions: vec!["eth0".into(), "eth1".into()],
        ..Policy::default()
    }
}

fn pod_ip() -> Policy {
    Policy { local_proxy_mode: LocalProxyMode::PodIp, ..Policy::default() }
}

/// Our shell form of a reference example without `$POD_IP`: the same, with the heredoc quoted.
fn osm_shell_quoted(text: &str) -> String {
    text.replacen("--noflush <<EOF\n", "--noflush <<'EOF'\n", 1)
}

/// The payload of a reference example: the text between its heredoc markers.
fn reference_payload(text: &str) -> &str {
    text.strip_prefix("iptables-restore --noflush <<EOF\n").and_then(|s| s.strip_suffix("EOF\n")).unwrap()
}

/// Our shell form of the PodIP example: osm-edge's payload, with the `$POD_IP` line printed
/// apart (the variable in double quotes, the rest in single quotes).
const POD_IP_SHELL: &str = r#"{
cat <<'EOF'
# OSM sidecar interception rules
*nat
:PROXY_INBOUND - [0:0]
:PROXY_IN_REDIRECT - [0:0]
:PROXY_OUTPUT - [0:0]
:PROXY_REDIRECT - [0:0]
-A PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-port 15003
-A PREROUTING -p tcp -j PROXY_INBOUND
-A PROXY_INBOUND -p tcp --dport 15010 -j RETURN
-A PROXY_INBOUND -p tcp --dport 15901 -j RETURN
-A PROXY_INBOUND -p tcp --dport 15902 -j RETURN
-A PROXY_INBOUND -p tcp --dport 15903 -j RETURN
-A PROXY_INBOUND -p tcp --dport 15904 -j RETURN
-A PROXY_INBOUND -p tcp -j PROXY_IN_REDIRECT
-A PROXY_REDIRECT -p tcp -j REDIRECT --to-port 15001
-A PROXY_REDIRECT -p tcp --dport 15000 -j ACCEPT
-A OUTPUT -p tcp -j PROXY_OUTPUT
-A PROXY_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1500 -j PROXY_IN_REDIRECT
-A PROXY_OUTPUT -o lo -m owner ! --uid-owner 1500 -j RETURN
-A PROXY_OUTPUT -m owner --uid-owner 1500 -j RETURN
-A PROXY_OUTPUT -d 127.0.0.1/32 -j RETURN
EOF
printf '%s\n' '-I OUTPUT -p tcp -o lo -d 127.0.0.1/32 -m owner --uid-owner 1500 -j DNAT --to-destination '"${POD_IP}"
cat <<'EOF'
-A PROXY_OUTPUT -j PROXY_REDIRECT
COMMIT
EOF
} | iptables-restore --noflush
"#;

/// osm-edge's current names, as its own tests expect them.
fn osm_names(text: &str) -> String {
    text.replace("PROXY_INBOUND", "OSM_PROXY_INBOUND")
        .replace("PROXY_IN_REDIRECT", "OSM_PROXY_IN_REDIRECT")
        .replace("PROXY_OUTPUT", "OSM_PROXY_OUTBOUND")
        .replace("PROXY_REDIRECT", "OSM_PROXY_OUT_REDIRECT")
}

#[test]
fn golden_examples_documented_names() {
    let names = ChainNames::DOCUMENTED;
    assert_eq!(shell(&Policy::default(), Family::Ipv4, &names), osm_shell_quoted(NO_EXCLUSIONS));
    assert_eq!(shell(&with_exclusions(), Family::Ipv4, &names), osm_shell_quoted(WITH_EXCLUSIONS));
    assert_eq!(shell(&pod_ip(), Family::Ipv4, &names), POD_IP_SHELL);
    for (policy, reference) in
        [(Policy::default(), NO_EXCLUSIONS), (with_exclusions(), WITH_EXCLUSIONS), (pod_ip(), POD_IP)]
    {
        assert_eq!(payload(&policy, Family::Ipv4, &names), reference_payload(reference));
    }
}

#[test]
fn golden_examples_osm_names() {
    let names = ChainNames::OSM;
    assert_eq!(shell(&Policy::default(), Family::Ipv4, &names), osm_shell_quoted(&osm_names(NO_EXCLUSIONS)));
    assert_eq!(shell(&with_exclusions(), Family::Ipv4, &names), osm_shell_quoted(&osm_names(WITH_EXCLUSIONS)));
    assert_eq!(shell(&pod_ip(), Family::Ipv4, &names), osm_names(POD_IP_SHELL));
    assert_eq!(payload(&pod_ip(), Family::Ipv4, &names), reference_payload(&osm_names(POD_IP)));
    assert!(osm_names(WITH_EXCLUSIONS).contains("-A OSM_PROXY_OUTBOUND -d 3.3.3.3/32 -j OSM_PROXY_OUT_REDIRECT"));
}

#[test]
fn payload_is_the_text_between_the_heredoc_markers() {
    let text = payload(&with_exclusions(), Family::Ipv4, &ChainNames::DOCUMENTED);
    let ours = shell(&with_exclusions(), Family::Ipv4, &ChainNames::DOCUMENTED);
    let inner =
        ours.strip_prefix("iptables-restore --noflush <<'EOF'\n").and_then(|s| s.strip_suffix("EOF\n")).unwrap();
    assert_eq!(text, inner);
}

#[test]
fn more_than_15_ports_are_split_in_order() {
    let ports: Vec<u16> = (1..=32).collect();
    let policy =
        Policy { outbound_port_exclusions: ports.clone(), inbound_port_exclusions: ports, ..Policy::default() };
    let text = payload(&policy, Family::Ipv4, &ChainNames::DOCUMENTED);
    let out: Vec<&str> = text.lines().filter(|l| l.starts_with("-A PROXY_OUTPUT -p tcp --match multiport")).collect();
    assert_eq!(
        out,
        [
            "-A PROXY_OUTPUT -p tcp --match multiport --dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15 -j RETURN",
            "-A PROXY_OUTPUT -p tcp --match multiport --dports 16,17,18,19,20,21,22,23,24,25,26,27,28,29,30 -j RETURN",
            "-A PROXY_OUTPUT -p tcp --match multiport --dports 31,32 -j RETURN",
        ]
    );
    let inb: Vec<&str> = text.lines().filter(|l| l.starts_with("-I PROXY_INBOUND -p tcp --match multiport")).collect();
    assert_eq!(inb.len(), 3);
    assert!(inb[2].ends_with("--dports 31,32 -j RETURN"));
    // Exactly 15 ports stay one rule, as osm-edge writes it.
    let fifteen = Policy { outbound_port_exclusions: (1..=15).collect(), ..Policy::default() };
    let text = payload(&fifteen, Family::Ipv4, &ChainNames::DOCUMENTED);
    assert_eq!(text.matches("--match multiport").count(), 1);
}

#[test]
fn ipv6_ranges_go_to_the_ipv6_payload_only() {
    let policy = Policy {
        outbound_ip_range_exclusions: cidrs(&["2001:db8:1::/48", "198.51.100.0/24"]),
        outbound_ip_range_inclusions: cidrs(&["2001:db8::/32"]),
        local_proxy_mode: LocalProxyMode::PodIp,
        ..Policy::default()
    };
    let v4 = payload(&policy, Family::Ipv4, &ChainNames::DOCUMENTED);
    let v6 = payload(&policy, Family::Ipv6, &ChainNames::DOCUMENTED);
    assert!(!v4.contains("2001:db8"), "{v4}");
    assert!(v4.contains("-A PROXY_OUTPUT -d 198.51.100.0/24 -j RETURN"));
    // No IPv4 inclusion: every other IPv4 destination is redirected.
    assert!(v4.contains("-A PROXY_OUTPUT -j PROXY_REDIRECT\n"));
    assert!(!v6.contains("198.51.100"), "{v6}");
    for line in [
        "-A PROXY_OUTPUT -o lo ! -d ::1/128 -m owner --uid-owner 1500 -j PROXY_IN_REDIRECT",
        "-A PROXY_OUTPUT -d ::1/128 -j RETURN",
        "-I OUTPUT -p tcp -o lo -d ::1/128 -m owner --uid-owner 1500 -j DNAT --to-destination $POD_IPV6",
        "-A PROXY_OUTPUT -d 2001:db8:1::/48 -j RETURN",
        "-A PROXY_OUTPUT -d 2001:db8::/32 -j PROXY_REDIRECT",
        "-A PROXY_OUTPUT -j RETURN",
    ] {
        assert!(v6.lines().any(|l| l == line), "missing {line:?} in\n{v6}");
    }
    let sh = shell(&policy, Family::Ipv6, &ChainNames::DOCUMENTED);
    assert!(sh.ends_with("} | ip6tables-restore --noflush\n"), "{sh}");
    assert!(sh.contains("--to-destination '\"${POD_IPV6}\"\n"), "{sh}");
    let plain = Policy { local_proxy_mode: LocalProxyMode::Localhost, ..policy };
    assert!(shell(&plain, Family::Ipv6, &ChainNames::DOCUMENTED).starts_with("ip6tables-restore --noflush <<'EOF'\n"));
}

#[test]
fn pod_ip_is_substituted() {
    let text = payload(&pod_ip(), Family::Ipv4, &ChainNames::DOCUMENTED);
    let done = substitute_pod_ip(&text, Family::Ipv4, Some("198.51.100.2"));
    assert!(done.contains("-j DNAT --to-destination 198.51.100.2\n"));
    assert!(!done.contains('$'));
}

#[test]
fn overridden_ports_and_uid_are_rendered() {
    let mut policy = Policy { proxy_uid: 2000, ..Policy::default() };
    policy.ports.outbound = 16001;
    policy.ports.inbound = 16003;
    policy.ports.admin = 16000;
    let text = payload(&policy, Family::Ipv4, &ChainNames::DOCUMENTED);
    assert!(text.contains("-A PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-port 16003\n"));
    assert!(text.contains("-A PROXY_REDIRECT -p tcp -j REDIRECT --to-port 16001\n"));
    assert!(text.contains("-A PROXY_REDIRECT -p tcp --dport 16000 -j ACCEPT\n"));
    assert!(text.contains("--uid-owner 2000 -j RETURN\n"));
}

#[test]
fn dns_proxy_rule_follows_the_outbound_static_rules() {
    let policy = Policy { local_dns_proxy: true, local_proxy_mode: LocalProxyMode::PodIp, ..Policy::default() };
    let text = payload(&policy, Family::Ipv4, &ChainNames::DOCUMENTED);
    let lines: Vec<&str> = text.lines().collect();
    let dns = lines
        .iter()
        .position(|l| *l == "-A OUTPUT -p udp -d 127.0.0.153 --dport 53 -j DNAT --to-destination 127.0.0.153:5300")
        .unwrap();
    assert_eq!(lines[dns - 1], "-A PROXY_OUTPUT -d 127.0.0.1/32 -j RETURN");
    assert!(lines[dns + 1].starts_with("-I OUTPUT -p tcp -o lo"));
    assert!(!payload(&policy, Family::Ipv6, &ChainNames::DOCUMENTED).contains("127.0.0.153"));
}

/// Runs a shell form with `sh`, a fake iptables-restore on PATH capturing its input.
fn run_shell(script: &str, pod_ip: &str, tag: &str) -> (String, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("interceptor-render-unit-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for cmd in ["iptables-restore", "ip6tables-restore"] {
        let fake = dir.join(cmd);
        std::fs::write(&fake, "#!/bin/sh\ncat > \"$CAPTURE\"\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let capture = dir.join("stdin");
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(&dir)
        .env("PATH", path)
        .env("CAPTURE", &capture)
        .env("POD_IP", pod_ip)
        .status()
        .unwrap();
    assert!(st.success());
    (std::fs::read_to_string(&capture).unwrap(), dir)
}

#[test]
fn the_shell_form_never_expands_what_the_payload_holds() {
    // Validation rejects such a name; the renderer must be safe even without it.
    let evil = "e$(touch pwned)`touch pwned2`";
    let policy = Policy {
        network_interface_exclusions: vec![evil.into()],
        local_proxy_mode: LocalProxyMode::PodIp,
        ..Policy::default()
    };
    let script = shell(&policy, Family::Ipv4, &ChainNames::DOCUMENTED);
    let (got, dir) = run_shell(&script, "198.51.100.2", "a");
    let want =
        substitute_pod_ip(&payload(&policy, Family::Ipv4, &ChainNames::DOCUMENTED), Family::Ipv4, Some("198.51.100.2"));
    assert_eq!(got, want);
    assert!(got.contains(&format!("-o {evil} -j RETURN")), "{got}");
    assert!(!dir.join("pwned").exists() && !dir.join("pwned2").exists(), "the shell ran a command from the payload");
    // A hostile pod address is one argument, never code.
    let (got, dir2) = run_shell(&script, "$(touch pwned3)", "b");
    assert!(got.contains("--to-destination $(touch pwned3)\n"), "{got}");
    assert!(!dir2.join("pwned3").exists());
    // Without PodIP: one quoted heredoc.
    let plain = Policy { local_proxy_mode: LocalProxyMode::Localhost, ..policy };
    let (got, dir3) = run_shell(&shell(&plain, Family::Ipv4, &ChainNames::DOCUMENTED), "", "c");
    assert_eq!(got, payload(&plain, Family::Ipv4, &ChainNames::DOCUMENTED));
    assert!(!dir3.join("pwned").exists());
    for d in [dir, dir2, dir3] {
        std::fs::remove_dir_all(&d).unwrap();
    }
}
