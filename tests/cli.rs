//! The `interceptor` command as an operator uses it: output, errors, exit codes.
use std::process::{Command, Output};

use anyhow::Result;
use interceptor_tests::{Sandbox, procs::sibling_binary};

fn interceptor(args: &[&str]) -> Output {
    Command::new(sibling_binary("interceptor")).args(args).output().expect("run interceptor")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn render_prints_the_golden_payload() {
    let o = interceptor(&["iptables", "render", "--format", "shell", "--chain-names", "osm"]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    assert!(out.starts_with(
        "iptables-restore --noflush <<'EOF'\n# OSM sidecar interception rules\n*nat\n:OSM_PROXY_INBOUND - [0:0]\n"
    ));
    assert!(out.ends_with("-A OSM_PROXY_OUTBOUND -j OSM_PROXY_OUT_REDIRECT\nCOMMIT\nEOF\n"), "{out}");
}

#[test]
fn every_bad_input_is_reported_with_its_source_and_exit_code_2() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("interceptor-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mesh = dir.join("meshconfig.yaml");
    std::fs::write(
        &mesh,
        "apiVersion: config.openservicemesh.io/v1alpha2\nkind: MeshConfig\nspec:\n  sidecar:\n    localProxyMode: Sidecar\n  traffic:\n    outboundPortExclusionList: [6379, 0]\n    outboundIPRangeExclusionList: [\"10.0.0.0/33\"]\n    networkInterfaceExclusionList: [\"eth/0\"]\n",
    )?;
    let pod = dir.join("pod.json");
    std::fs::write(
        &pod,
        r#"{"kind":"Pod","metadata":{"name":"p","annotations":{"openservicemesh.io/inbound-port-exclusion-list":"8080, http","openservicemesh.io/outbound-ip-range-inclusion-list":"1.2.3.4"}}}"#,
    )?;
    let o = interceptor(&[
        "iptables",
        "render",
        "--mesh-config",
        mesh.to_str().unwrap(),
        "--pod",
        pod.to_str().unwrap(),
        "--outbound-port-exclusion-list",
        "70000",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(out.is_empty(), "nothing is printed on error: {out}");
    for needle in [
        "meshconfig.yaml: key spec.sidecar.localProxyMode: unknown localProxyMode \"Sidecar\"",
        "meshconfig.yaml: key spec.traffic.outboundPortExclusionList[1]: invalid port \"0\"",
        "meshconfig.yaml: key spec.traffic.outboundIPRangeExclusionList[0]: invalid CIDR \"10.0.0.0/33\"",
        "meshconfig.yaml: key spec.traffic.networkInterfaceExclusionList[0]: invalid interface name \"eth/0\"",
        "pod.json: annotation openservicemesh.io/inbound-port-exclusion-list: invalid port \"http\": not a number",
        "pod.json: annotation openservicemesh.io/outbound-ip-range-inclusion-list: invalid CIDR \"1.2.3.4\"",
        "flag --outbound-port-exclusion-list: invalid port \"70000\": greater than 65535",
        "7 errors",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    std::fs::write(&mesh, "spec: [unclosed")?;
    let o = interceptor(&["iptables", "render", "--mesh-config", mesh.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("meshconfig.yaml: malformed YAML"), "{}", text(&o).1);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn suspicious_inputs_are_accepted_with_warnings() {
    let o = interceptor(&[
        "iptables",
        "render",
        "--outbound-ip-range-exclusion-list",
        "0.0.0.0/0,10.0.0.0/8,10.0.0.0/8",
        "--inbound-port-exclusion-list",
        "15003",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning: flag --outbound-ip-range-exclusion-list: duplicate range 10.0.0.0/8 ignored"),
        "{err}"
    );
    assert!(err.contains("0.0.0.0/0 excludes every IPv4 destination"), "{err}");
    assert!(err.contains("port 15003 is the sidecar's reserved inbound listener port"), "{err}");
    assert_eq!(out.matches("-d 10.0.0.0/8 -j RETURN").count(), 1);
}

#[test]
fn explain_names_the_deciding_rule() {
    let o = interceptor(&["explain", "outbound", "--dst", "10.1.2.3:6379", "--outbound-port-exclusion-list", "6379"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("decision: PASS"), "{out}");
    assert!(out.contains("rule:     -A PROXY_OUTPUT -p tcp --match multiport --dports 6379 -j RETURN"), "{out}");
    let o = interceptor(&["explain", "outbound", "--dst", "198.51.100.2:8080", "--uid", "1500", "--local"]);
    assert!(text(&o).0.contains("REDIRECT to the inbound listener :15003"), "{}", text(&o).0);
    let o = interceptor(&["explain", "inbound", "--dst-port", "15010"]);
    assert!(text(&o).0.contains("rule:     -A PROXY_INBOUND -p tcp --dport 15010 -j RETURN"), "{}", text(&o).0);
    let o = interceptor(&[
        "explain",
        "inbound",
        "--dst-port",
        "8080",
        "--iif",
        "eth1",
        "--network-interface-exclusion-list",
        "eth1",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["decision"]["verdict"]["verdict"], "pass");
    assert_eq!(v["decision"]["reason"], "excluded_interface");
}

#[test]
fn explain_shows_the_local_dns_proxy_rule_for_udp_only() {
    let dns = ["explain", "outbound", "--udp", "--dst", "127.0.0.153:53"];
    let o = interceptor(&[&dns[..], &["--enable-local-dns-proxy"]].concat());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("decision: DNAT to the sidecar's local DNS proxy 127.0.0.153:5300"), "{out}");
    assert!(out.contains("reason:   dns_proxy"), "{out}");
    assert!(
        out.contains("rule:     -A OUTPUT -p udp -d 127.0.0.153 --dport 53 -j DNAT --to-destination 127.0.0.153:5300"),
        "{out}"
    );
    let o = interceptor(&[&dns[..], &["--enable-local-dns-proxy", "--json"]].concat());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["decision"]["verdict"]["verdict"], "dnat_dns_proxy");
    assert_eq!(v["decision"]["verdict"]["to"], "127.0.0.153:5300");
    assert_eq!(v["decision"]["reason"], "dns_proxy");
    // A dual-stack socket's v4-mapped destination is IPv4 on the wire.
    let o =
        interceptor(&["explain", "outbound", "--udp", "--dst", "[::ffff:127.0.0.153]:53", "--enable-local-dns-proxy"]);
    assert!(text(&o).0.contains("reason:   dns_proxy"), "{}", text(&o).0);
    // Without the option, or to another port, UDP is not touched.
    for args in [&dns[..], &["explain", "outbound", "--udp", "--dst", "127.0.0.153:54", "--enable-local-dns-proxy"]] {
        let o = interceptor(args);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{err}");
        assert!(out.contains("decision: PASS"), "{args:?}: {out}");
    }
}

#[test]
fn a_bad_policy_leaves_the_tables_untouched() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    let netns = sb.pod_netns();
    let ns = netns.to_str().unwrap();
    let save = || {
        let o = Command::new("ip").args(["netns", "exec", &sb.pod, "iptables-save", "-t", "nat"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n")
    };
    let o = interceptor(&[
        "iptables",
        "apply",
        "--netns",
        ns,
        "--family",
        "ipv4",
        "--outbound-port-exclusion-list",
        "6379",
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    let good = save();
    assert!(good.contains("--dports 6379"), "{good}");
    let o = interceptor(&[
        "iptables",
        "apply",
        "--netns",
        ns,
        "--family",
        "ipv4",
        "--outbound-port-exclusion-list",
        "6380,0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("nothing was applied"), "{}", text(&o).1);
    assert_eq!(save(), good);
    // PodIP mode without the pod's address is refused before anything is applied.
    let o = Command::new(sibling_binary("interceptor"))
        .args(["iptables", "apply", "--netns", ns, "--family", "ipv4", "--local-proxy-mode", "PodIP"])
        .env_remove("POD_IP")
        .output()?;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("PodIP needs the pod's IPv4 address"), "{}", text(&o).1);
    assert_eq!(save(), good);
    let o = interceptor(&[
        "iptables",
        "verify",
        "--netns",
        ns,
        "--family",
        "ipv4",
        "--outbound-port-exclusion-list",
        "6380",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).0.contains("missing"), "{}", text(&o).0);
    Ok(())
}

#[test]
fn an_interface_name_with_shell_metacharacters_is_rejected_with_its_source() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("interceptor-cli-ifaces-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mesh = dir.join("meshconfig.yaml");
    let pwned = dir.join("pwned");
    std::fs::write(
        &mesh,
        format!(
            "spec:\n  traffic:\n    networkInterfaceExclusionList: [\"eth0\", \"eth1$(touch {})\", \"e`id`\", \"veth;x\", \"sixteen-chars-xy\", \"br-1.100@x+\"]\n",
            pwned.display()
        ),
    )?;
    for format in ["shell", "restore"] {
        let o = interceptor(&["iptables", "render", "--format", format, "--mesh-config", mesh.to_str().unwrap()]);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(out.is_empty(), "nothing is printed on error: {out}");
        for needle in [
            "key spec.traffic.networkInterfaceExclusionList[1]: invalid interface name \"eth1$(touch",
            "contains '$'",
            "key spec.traffic.networkInterfaceExclusionList[2]: invalid interface name \"e`id`\"",
            "key spec.traffic.networkInterfaceExclusionList[3]: invalid interface name \"veth;x\"",
            "key spec.traffic.networkInterfaceExclusionList[4]: invalid interface name \"sixteen-chars-xy\": longer than 15",
            "4 errors",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
    }
    let o = interceptor(&["iptables", "render", "--network-interface-exclusion-list", "eth0,$(reboot)"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("flag --network-interface-exclusion-list: invalid interface name \"$(reboot)\""));
    assert!(!pwned.exists());
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Runs a rendered shell form with `sh`, fake iptables-restore/ip6tables-restore on PATH
/// recording their arguments and input; returns (arguments, input).
fn run_shell_form(script: &str, env: &[(&str, &str)], tag: &str) -> Result<(String, String)> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("interceptor-cli-shell-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for cmd in ["iptables-restore", "ip6tables-restore"] {
        let fake = dir.join(cmd);
        std::fs::write(&fake, "#!/bin/sh\necho \"$0 $*\" > \"$CAPTURE.args\"\ncat > \"$CAPTURE\"\n")?;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755))?;
    }
    let capture = dir.join("stdin");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .env("PATH", format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default()))
        .env("CAPTURE", &capture);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output()?;
    assert!(o.status.success(), "sh: {}", String::from_utf8_lossy(&o.stderr));
    let args = std::fs::read_to_string(dir.join("stdin.args"))?;
    let input = std::fs::read_to_string(&capture)?;
    std::fs::remove_dir_all(&dir)?;
    Ok((args.trim().rsplit('/').next().unwrap_or_default().to_string(), input))
}

#[test]
fn the_shell_form_round_trips_through_sh_to_the_exact_restore_payload() -> Result<()> {
    let policy = [
        "--outbound-ip-range-exclusion-list",
        "198.51.100.0/24,2001:db8:1::/48",
        "--outbound-port-exclusion-list",
        "6379",
        "--inbound-port-exclusion-list",
        "8080",
        "--network-interface-exclusion-list",
        "eth1,br-x.100@y,veth+",
    ];
    for (mode, family, var) in
        [("Localhost", "ipv4", "POD_IP"), ("PodIP", "ipv4", "POD_IP"), ("PodIP", "ipv6", "POD_IPV6")]
    {
        let render = |format: &str| {
            let mut args =
                vec!["iptables", "render", "--format", format, "--family", family, "--local-proxy-mode", mode];
            args.extend(policy);
            let o = interceptor(&args);
            assert!(o.status.success(), "{}", text(&o).1);
            text(&o).0
        };
        let (shell, restore) = (render("shell"), render("restore"));
        let ip = if family == "ipv4" { "198.51.100.2" } else { "2001:db8:1::2" };
        let (args, input) = run_shell_form(&shell, &[(var, ip)], &format!("{mode}-{family}"))?;
        let restore_cmd = if family == "ipv4" { "iptables-restore" } else { "ip6tables-restore" };
        assert_eq!(args, format!("{restore_cmd} --noflush"), "{mode} {family}");
        let want = restore.replace(&format!("${var}"), ip);
        assert_eq!(input, want, "{mode} {family}: the shell must hand iptables-restore exactly the payload");
        assert_eq!(input.contains(ip), mode == "PodIP");
    }
    Ok(())
}
