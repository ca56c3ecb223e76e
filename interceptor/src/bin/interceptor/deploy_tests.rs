//! The shipped deployment files say what the binaries accept: every command line in the
//! Kubernetes manifests and the systemd unit parses, and the example MeshConfig is valid.
use clap::Parser;
use serde_json::Value;

use crate::Cli;

const KUBERNETES: &str = include_str!("../../../deploy/kubernetes/interceptor.yaml");
const SYSTEMD: &str = include_str!("../../../deploy/systemd/interceptor.service");

fn documents() -> Vec<Value> {
    KUBERNETES
        .split("\n---\n")
        .map(|d| serde_saphyr::from_str::<Value>(d).expect("each manifest is valid YAML"))
        .collect()
}

#[test]
fn kubernetes_manifests_parse_and_their_commands_are_accepted() {
    let docs = documents();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"]);
    let ds = &docs[3]["spec"]["template"]["spec"];
    assert_eq!(ds["hostNetwork"], true);
    let mut commands = Vec::new();
    for c in ds["initContainers"].as_array().unwrap().iter().chain(ds["containers"].as_array().unwrap()) {
        let argv: Vec<String> =
            c["command"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
        Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        commands.push(argv.join(" "));
    }
    assert!(commands[0].contains("cni install"), "{commands:?}");
    assert!(commands[1].contains("daemon"), "{commands:?}");
    let mounts: Vec<&str> = ds["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for needed in ["/sys/fs/bpf", "/sys/fs/cgroup", "/var/run/netns", "/run/interceptor"] {
        assert!(mounts.contains(&needed), "the daemon needs {needed}: {mounts:?}");
    }
    let mesh = docs[2]["data"]["meshconfig.yaml"].as_str().unwrap();
    interceptor::daemon::mesh::validate(std::path::Path::new("meshconfig.yaml"), mesh, &Default::default())
        .expect("the example MeshConfig is valid");
}

#[test]
fn systemd_unit_commands_are_accepted() {
    let joined = SYSTEMD.replace("\\\n", " ");
    let execs: Vec<&str> = joined
        .lines()
        .filter_map(|l| l.strip_prefix("ExecStart=").or_else(|| l.strip_prefix("ExecStartPre=")))
        .collect();
    assert_eq!(execs.len(), 2);
    for e in execs {
        let argv: Vec<&str> = e.split_whitespace().collect();
        assert_eq!(argv[0], "/usr/local/bin/interceptor");
        Cli::try_parse_from(&argv).unwrap_or_else(|err| panic!("{e}: {err}"));
    }
}
