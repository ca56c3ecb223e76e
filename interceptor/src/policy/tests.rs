//! The pure model end to end: sources → merge → rules → decision.
use std::net::SocketAddr;

use interceptor_common::Reason;

use super::{
    decide::{Flow, Verdict, decide},
    sources::{FlagValues, PolicyInputs, PortOverrides, build_policy, parse_manifest},
    *,
};

const MESH_CONFIG_YAML: &str = r#"apiVersion: config.openservicemesh.io/v1alpha2
kind: MeshConfig
metadata:
  name: osm-mesh-config
  namespace: osm-system
spec:
  sidecar:
    enablePrivilegedInitContainer: false
    localProxyMode: PodIP
    logLevel: error
  traffic:
    enableEgress: false
    outboundIPRangeExclusionList:
    - 10.96.0.0/16
    - 169.254.169.254/32
    outboundIPRangeInclusionList: []
    outboundPortExclusionList:
    - 6379
    inboundPortExclusionList: [9090]
    networkInterfaceExclusionList:
    - eth9
"#;

const POD_YAML: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: bookstore
  namespace: shop
  annotations:
    openservicemesh.io/outbound-ip-range-exclusion-list: "10.244.0.0/16, 169.254.169.254/32"
    openservicemesh.io/outbound-port-exclusion-list: "7070,6379"
    openservicemesh.io/inbound-port-exclusion-list: "9091"
    unrelated/annotation: "x"
spec:
  containers: []
"#;

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("interceptor-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn texts(c: &[Cidr]) -> Vec<&str> {
    c.iter().map(|c| &*c.text).collect()
}

#[test]
fn sources_merge_in_osm_edge_order() {
    let inputs = PolicyInputs {
        flags: FlagValues {
            outbound_ip_range_exclusion_list: vec!["192.168.0.0/16".into()],
            outbound_port_exclusion_list: vec!["8443".into(), "6379".into()],
            network_interface_exclusion_list: vec!["eth8".into()],
            ..Default::default()
        },
        mesh_config: Some(write("mc.yaml", MESH_CONFIG_YAML)),
        pod: Some(write("pod.yaml", POD_YAML)),
    };
    let (p, warnings) = build_policy(&inputs).unwrap();
    // IP ranges: pod first, then global (MeshConfig, then flags); duplicates dropped.
    assert_eq!(
        texts(&p.outbound_ip_range_exclusions),
        ["10.244.0.0/16", "169.254.169.254/32", "10.96.0.0/16", "192.168.0.0/16"]
    );
    // Ports: global first (MeshConfig, then flags), then pod.
    assert_eq!(p.outbound_port_exclusions, [6379, 8443, 7070]);
    assert_eq!(p.inbound_port_exclusions, [9090, 9091]);
    assert_eq!(p.network_interface_exclusions, ["eth9", "eth8"]);
    assert_eq!(p.local_proxy_mode, LocalProxyMode::PodIp);
    assert_eq!(p.proxy_uid, 1500);
    let dups: Vec<String> = warnings.iter().map(|w| w.to_string()).filter(|w| w.contains("duplicate")).collect();
    assert_eq!(dups.len(), 3, "{dups:?}");
}

#[test]
fn json_manifests_and_flag_overrides() {
    let mc = r#"{"kind":"MeshConfig","spec":{"sidecar":{"localProxyMode":"PodIP"},"traffic":{"outboundPortExclusionList":[1,2]}}}"#;
    let inputs = PolicyInputs {
        flags: FlagValues { local_proxy_mode: Some("Localhost".into()), proxy_uid: Some(1337), ..Default::default() },
        mesh_config: Some(write("mc.json", mc)),
        pod: None,
    };
    let (p, _) = build_policy(&inputs).unwrap();
    assert_eq!(p.local_proxy_mode, LocalProxyMode::Localhost, "the flag wins over the MeshConfig");
    assert_eq!(p.proxy_uid, 1337);
    assert_eq!(p.outbound_port_exclusions, [1, 2]);
}

#[test]
fn every_error_is_collected_and_nothing_is_built() {
    let inputs = PolicyInputs {
        flags: FlagValues {
            outbound_ip_range_exclusion_list: vec!["1.2.3.4".into(), "10.0.0.0/8".into()],
            inbound_port_exclusion_list: vec!["0,65536,x".into()],
            network_interface_exclusion_list: vec!["way-too-long-name".into()],
            local_proxy_mode: Some("podip".into()),
            ports: PortOverrides { outbound: Some("99999".into()), ..Default::default() },
            ..Default::default()
        },
        mesh_config: Some(write("bad-kind.yaml", "kind: Pod\nspec: {}\n")),
        pod: Some(write(
            "bad.yaml",
            "metadata: {annotations: {\"openservicemesh.io/outbound-port-exclusion-list\": 80}}\n",
        )),
    };
    let errors = build_policy(&inputs).unwrap_err();
    let lines: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
    assert_eq!(lines.len(), 9, "{lines:#?}");
    assert!(errors.to_string().contains("nothing was applied"));
    assert!(lines.iter().any(|l| l.contains("bad-kind.yaml: key kind: invalid kind \"Pod\": expected MeshConfig")));
    assert!(lines.iter().any(|l| l.contains("flag --outbound-port: invalid port \"99999\"")));
    assert!(lines.iter().any(|l| l.contains("annotation values are strings")));
    assert!(lines.iter().any(|l| l.contains("unknown localProxyMode \"podip\"")));
}

#[test]
fn malformed_manifests_name_the_file_and_format() {
    let e = parse_manifest("x.json", "{\"kind\": ").unwrap_err().to_string();
    assert!(e.starts_with("x.json: malformed JSON"), "{e}");
    let e = parse_manifest("x.yaml", "a: [1, 2").unwrap_err().to_string();
    assert!(e.starts_with("x.yaml: malformed YAML"), "{e}");
    let e = parse_manifest("x.yaml", "- just\n- a list\n").unwrap_err().to_string();
    assert!(e.contains("expected a mapping"), "{e}");
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Every rule of PROXY_OUTPUT and PROXY_INBOUND decides at least one flow of this table.
#[test]
fn decision_table() {
    let policy = Policy {
        outbound_ip_range_exclusions: vec![
            validate::parse_cidr(&error::Origin::Flag("t".into()), "10.0.0.0/8").unwrap(),
        ],
        outbound_port_exclusions: vec![6379],
        inbound_port_exclusions: vec![9090],
        network_interface_exclusions: vec!["veth+".into()],
        ..Policy::default()
    };
    let out = |dst: &str, uid: u32| Flow::outbound(sa(dst), uid).via("eth0");
    let inb = |dst: &str| Flow::inbound(sa(dst)).via("eth0");
    use Reason::*;
    let table: Vec<(Flow, Verdict, Option<Reason>)> = vec![
        (out("1.1.1.1:80", 1000), Verdict::RedirectOutbound { port: 15001 }, Some(OutDefault)),
        (out("10.1.2.3:80", 1000), Verdict::Pass, Some(OutExcludedCidr)),
        (out("1.1.1.1:6379", 1000), Verdict::Pass, Some(OutExcludedPort)),
        (Flow::outbound(sa("1.1.1.1:80"), 1000).via("veth12"), Verdict::Pass, Some(OutExcludedInterface)),
        (out("1.1.1.1:80", 1500), Verdict::Pass, Some(OutProxyUid)),
        (
            Flow::outbound(sa("10.9.9.9:8080"), 1500).local(),
            Verdict::RedirectInbound { port: 15003 },
            Some(OutProxyToLocal),
        ),
        (Flow::outbound(sa("127.0.0.1:8080"), 1500).local(), Verdict::Pass, Some(OutProxyUid)),
        (
            Flow::outbound(sa("127.0.0.5:8080"), 1500).local(),
            Verdict::RedirectInbound { port: 15003 },
            Some(OutProxyToLocal),
        ),
        (Flow::outbound(sa("10.9.9.9:8080"), 1000).local(), Verdict::Pass, Some(OutLocalNotProxy)),
        // The unspecified address is the loopback one: the kernel connects there.
        (Flow::outbound(sa("0.0.0.0:8080"), 1000), Verdict::Pass, Some(OutLocalNotProxy)),
        (Flow::outbound(sa("[::ffff:0.0.0.0]:8080"), 1000), Verdict::Pass, Some(OutLocalNotProxy)),
        (Flow::outbound(sa("[::]:8080"), 1500), Verdict::Pass, Some(OutProxyUid)),
        // Rule 4 only decides when 127.0.0.1 is not routed through lo.
        (out("127.0.0.1:80", 1000), Verdict::Pass, Some(OutLoopback)),
        (out("1.1.1.1:53", 1000).udp(), Verdict::Pass, None),
        (out("[2001:db8::1]:80", 1000), Verdict::RedirectOutbound { port: 15001 }, Some(OutDefault)),
        (inb("10.9.9.9:8080"), Verdict::RedirectInbound { port: 15003 }, Some(InRedirect)),
        (inb("10.9.9.9:15010"), Verdict::Pass, Some(InReservedPort)),
        (inb("10.9.9.9:15904"), Verdict::Pass, Some(InReservedPort)),
        (inb("10.9.9.9:9090"), Verdict::Pass, Some(InExcludedPort)),
        (Flow::inbound(sa("10.9.9.9:8080")).via("veth0"), Verdict::Pass, Some(InExcludedInterface)),
        (inb("10.9.9.9:8080").from_pod(), Verdict::Pass, Some(InFromPod)),
        (inb("[2001:db8::2]:8080"), Verdict::RedirectInbound { port: 15003 }, Some(InRedirect)),
    ];
    for (flow, verdict, reason) in table {
        let d = decide(&policy, &flow);
        assert_eq!((d.verdict, d.reason), (verdict, reason), "{flow:?} → {d:?}");
    }
}

#[test]
fn the_deciding_rule_is_the_rendered_rule_and_path_follows_the_chains() {
    let policy = Policy { local_proxy_mode: LocalProxyMode::PodIp, ..Policy::default() };
    let d = decide(&policy, &Flow::outbound(sa("127.0.0.1:8080"), 1500).local());
    assert_eq!(d.verdict, Verdict::DnatPodIp { port: 8080 });
    assert_eq!(
        d.rule.as_deref(),
        Some("-I OUTPUT -p tcp -o lo -d 127.0.0.1/32 -m owner --uid-owner 1500 -j DNAT --to-destination $POD_IP")
    );
    let d = decide(&Policy::default(), &Flow::outbound(sa("1.1.1.1:80"), 1000));
    assert_eq!(
        d.path,
        [
            "-A OUTPUT -p tcp -j PROXY_OUTPUT",
            "-A PROXY_OUTPUT -j PROXY_REDIRECT",
            "-A PROXY_REDIRECT -p tcp -j REDIRECT --to-port 15001"
        ]
    );
    assert_eq!(d.rule.as_deref(), Some("-A PROXY_OUTPUT -j PROXY_REDIRECT"));
    // Inserted rules are evaluated first, the last inserted first.
    let p = Policy {
        inbound_port_exclusions: vec![15010],
        network_interface_exclusions: vec!["eth1".into()],
        ..Policy::default()
    };
    let d = decide(&p, &Flow::inbound(sa("10.0.0.1:15010")).via("eth1"));
    assert_eq!(d.rule.as_deref(), Some("-I PROXY_INBOUND -p tcp --match multiport --dports 15010 -j RETURN"));
}

#[test]
fn inclusions_apply_per_family() {
    let incl = |t: &str| validate::parse_cidr(&error::Origin::Flag("t".into()), t).unwrap();
    let p = Policy { outbound_ip_range_inclusions: vec![incl("2001:db8::/32")], ..Policy::default() };
    assert_eq!(decide(&p, &Flow::outbound(sa("[2001:db8::1]:80"), 1000)).reason, Some(Reason::OutIncluded));
    assert_eq!(decide(&p, &Flow::outbound(sa("[2001:db9::1]:80"), 1000)).reason, Some(Reason::OutNotIncluded));
    // No IPv4 inclusion: IPv4 keeps the default.
    assert_eq!(decide(&p, &Flow::outbound(sa("1.1.1.1:80"), 1000)).reason, Some(Reason::OutDefault));
}

#[test]
fn documents_in_memory_merge_like_files() {
    use super::sources::{Document, build_policy_from_documents};
    let files = PolicyInputs {
        flags: FlagValues::default(),
        mesh_config: Some(write("mem-mc.yaml", MESH_CONFIG_YAML)),
        pod: Some(write("mem-pod.yaml", POD_YAML)),
    };
    let (from_files, _) = build_policy(&files).unwrap();
    let mesh = Document { shown: "mc".into(), doc: parse_manifest("mc", MESH_CONFIG_YAML).unwrap() };
    let pod_doc = parse_manifest("pod", POD_YAML).unwrap();
    let annotations: std::collections::BTreeMap<String, String> = pod_doc["metadata"]["annotations"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let runtime = Document::pod_annotations("pod shop/bookstore (annotations from the runtime)", &annotations);
    let (from_memory, _) = build_policy_from_documents(&FlagValues::default(), Some(&mesh), Some(&runtime)).unwrap();
    assert_eq!(from_memory, from_files, "annotations from the runtime merge exactly like a Pod manifest's");
    let bad: std::collections::BTreeMap<String, String> =
        [("openservicemesh.io/outbound-port-exclusion-list".to_string(), "http".to_string())].into();
    let err = build_policy_from_documents(
        &FlagValues::default(),
        Some(&mesh),
        Some(&Document::pod_annotations("pod shop/web (annotations from the runtime)", &bad)),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains(
            "pod shop/web (annotations from the runtime): annotation openservicemesh.io/outbound-port-exclusion-list: invalid port \"http\""
        ),
        "{err}"
    );
}

#[test]
fn a_prepared_global_policy_builds_what_the_documents_build() {
    use super::sources::{Document, GlobalPolicy, build_policy_from_documents};
    let mesh = Document { shown: "mc".into(), doc: parse_manifest("mc", MESH_CONFIG_YAML).unwrap() };
    let flags = FlagValues {
        outbound_ip_range_exclusion_list: vec!["10.244.0.0/16,192.168.7.0/24".into()],
        outbound_port_exclusion_list: vec!["7070".into()],
        ports: PortOverrides { admin: Some("15100".into()), ..Default::default() },
        ..Default::default()
    };
    let annotations = |pairs: &[(&str, &str)]| -> Document {
        let map: std::collections::BTreeMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Document::pod_annotations("pod shop/web", &map)
    };
    let pods = [
        None,
        Some(parse_manifest("pod", POD_YAML).map(|doc| Document { shown: "pod".into(), doc }).unwrap()),
        Some(annotations(&[("openservicemesh.io/outbound-ip-range-inclusion-list", "203.0.113.0/24")])),
        Some(annotations(&[("openservicemesh.io/outbound-port-exclusion-list", "http")])),
    ];
    for mesh in [None, Some(&mesh)] {
        let global = GlobalPolicy::prepare(&flags, mesh).unwrap();
        for pod in &pods {
            let prepared = global.policy_for(&flags, pod.as_ref()).map_err(|e| e.to_string());
            let direct = build_policy_from_documents(&flags, mesh, pod.as_ref()).map_err(|e| e.to_string());
            assert_eq!(prepared, direct, "mesh {:?}, pod {:?}", mesh.is_some(), pod.as_ref().map(|d| &d.doc));
        }
    }
    let bad = Document {
        shown: "bad".into(),
        doc: serde_json::json!({"kind": "MeshConfig",
        "spec": {"traffic": {"outboundIPRangeExclusionList": ["10.0.0.0/33"]}}}),
    };
    let err = GlobalPolicy::prepare(&flags, Some(&bad)).err().expect("an invalid MeshConfig is refused");
    assert!(err.to_string().contains("10.0.0.0/33"), "{err}");
}

#[test]
fn the_local_dns_proxy_rule_decides_udp_to_127_0_0_153_port_53_only() {
    let on = Policy { local_dns_proxy: true, ..Policy::default() };
    let udp = |dst: &str, uid: u32| Flow::outbound(sa(dst), uid).local().udp();
    let proxy = Verdict::DnatDnsProxy { to: sa("127.0.0.153:5300") };
    // Every UID: the rule is in OUTPUT, before any owner match.
    for uid in [0, 1000, 1500] {
        let d = decide(&on, &udp("127.0.0.153:53", uid));
        assert_eq!((d.verdict, d.reason), (proxy, Some(Reason::OutDnsProxy)), "uid {uid}");
        assert_eq!(
            d.rule.as_deref(),
            Some("-A OUTPUT -p udp -d 127.0.0.153 --dport 53 -j DNAT --to-destination 127.0.0.153:5300")
        );
    }
    // Nothing else: another port, another address, the proxy's own port, TCP, IPv6, the world.
    for flow in [
        udp("127.0.0.153:5353", 1000),
        udp("127.0.0.1:53", 1000),
        udp("127.0.0.153:5300", 1000),
        Flow::outbound(sa("198.51.100.1:53"), 1000).udp(),
        Flow::outbound(sa("[::1]:53"), 1000).local().udp(),
    ] {
        let d = decide(&on, &flow);
        assert_eq!((d.verdict, d.reason), (Verdict::Pass, None), "{flow:?}");
    }
    // TCP to 127.0.0.153:53 follows PROXY_OUTPUT (a local destination of the application).
    let tcp = decide(&on, &Flow::outbound(sa("127.0.0.153:53"), 1000).local());
    assert_eq!((tcp.verdict, tcp.reason), (Verdict::Pass, Some(Reason::OutLocalNotProxy)));
    // Without the option, the query goes where it was sent.
    let off = decide(&Policy::default(), &udp("127.0.0.153:53", 1000));
    assert_eq!((off.verdict, off.reason), (Verdict::Pass, None));
}

#[test]
fn reasons_are_numbered_once_and_directions_do_not_depend_on_numbers() {
    for (i, r) in Reason::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i, "{r:?}");
        assert_eq!(Reason::from_u32(i as u32), Some(*r));
    }
    assert!(!Reason::OutDnsProxy.is_inbound());
    assert!(!Reason::OutDnsProxyRefused.is_inbound());
    assert!(Reason::InNoListener.is_inbound());
    assert!(!Reason::OutPodIpDnat.is_inbound());
}

#[test]
fn the_pods_own_ranges_are_those_no_global_list_holds() {
    let inputs = PolicyInputs {
        flags: FlagValues::default(),
        mesh_config: Some(write("own-mc.yaml", MESH_CONFIG_YAML)),
        pod: Some(write("own-pod.yaml", POD_YAML)),
    };
    let (p, _) = build_policy(&inputs).unwrap();
    // 169.254.169.254/32 is in the MeshConfig too: shared, not the pod's own.
    assert_eq!(p.pod_ranges.exclusions, vec!["10.244.0.0/16".parse::<ipnet::IpNet>().unwrap()]);
    assert!(p.pod_ranges.inclusions.is_empty());
    // The merged list (what the rules and the oracle use) is unchanged.
    assert_eq!(texts(&p.outbound_ip_range_exclusions), ["10.244.0.0/16", "169.254.169.254/32", "10.96.0.0/16"]);
}

#[test]
fn an_annotation_longer_than_the_per_pod_limit_is_refused_naming_it() {
    use super::sources::{AnnotationLimits, Document, build_policy_from_documents};
    let many: Vec<String> = (0..300).map(|i| format!("10.{}.{}.0/24", i / 256, i % 256)).collect();
    let ports: Vec<String> = (1000..1300).map(|p| p.to_string()).collect();
    let annotations: std::collections::BTreeMap<String, String> = [
        ("openservicemesh.io/outbound-ip-range-exclusion-list".to_string(), many.join(",")),
        ("openservicemesh.io/inbound-port-exclusion-list".to_string(), ports.join(",")),
    ]
    .into();
    let pod = Document::pod_annotations("pod shop/big", &annotations);
    let err = build_policy_from_documents(&FlagValues::default(), None, Some(&pod)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(
            "pod shop/big: annotation openservicemesh.io/outbound-ip-range-exclusion-list: 300 ranges, more than the per-pod limit of 256 (--max-annotation-cidrs)"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "annotation openservicemesh.io/inbound-port-exclusion-list: 300 ports, more than the per-pod limit of 256 (--max-annotation-ports)"
        ),
        "{text}"
    );
    // The limits are the operator's; the MeshConfig's lists have none.
    let raised = FlagValues { annotation_limits: AnnotationLimits { cidrs: 300, ports: 300 }, ..FlagValues::default() };
    let (p, _) = build_policy_from_documents(&raised, None, Some(&pod)).unwrap();
    assert_eq!(p.pod_ranges.exclusions.len(), 300);
    let mesh = serde_json::json!({"kind": "MeshConfig", "spec": {"traffic": {"outboundIPRangeExclusionList": many}}});
    let mesh = Document { shown: "mc".into(), doc: mesh };
    let (p, _) = build_policy_from_documents(&FlagValues::default(), Some(&mesh), None).unwrap();
    assert_eq!(p.outbound_ip_range_exclusions.len(), 300);
    assert!(p.pod_ranges.exclusions.is_empty());
}
