//! `interceptor-cni`: CNI spec 1.0.0 (also 0.3.x, 0.4.0) ADD, DEL, CHECK, VERSION.
//!
//! * ADD: the pod's identity (CNI_CONTAINERID, CNI_NETNS, CNI_ARGS `K8S_POD_NAMESPACE` and
//!   `K8S_POD_NAME`, the runtime's pod annotations from
//!   `runtimeConfig["io.kubernetes.cri.pod-annotations"]`) goes to the daemon
//!   (`POST /v1/pods`); on success the previous plugin's result is printed byte for byte.
//!   **Fails closed**: daemon unreachable (code 11, "try again later") or refusing (codes
//!   100+) is a CNI error and the pod does not start — unless its namespace is in
//!   `excludeNamespaces` (default `["kube-system"]`), which never asks the daemon.
//! * DEL: idempotent; a pod the daemon does not know is a success. When the daemon is
//!   unreachable DEL succeeds too (with a warning on stderr): pod deletion must never hang
//!   on the daemon, and the daemon's reconcile removes a pod whose namespace is gone.
//! * CHECK: the daemon confirms the pod's policy is in force; anything else is an error.
//!
//! Runtimes that pass no `K8S_POD_NAMESPACE` (podman passes only `K8S_POD_NAME`, the
//! container's name) get `defaultNamespace` from the netconf (default `"default"`); with no
//! `K8S_POD_NAME` the container ID names the pod.
use std::{collections::BTreeMap, io::Read, net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use serde::Deserialize;
use serde_json::{Value, json, value::RawValue};

use super::{ANNOTATIONS_CAPABILITY, DEFAULT_EXCLUDED_NAMESPACES, SUPPORTED_VERSIONS};
use crate::api::{
    AddPod, CheckResult, DEFAULT_SOCKET, Deleted, PodView,
    client::{Client, ClientError},
    codes,
};

/// CNI error codes (spec: well-known 1-11; 100+ plugin-specific).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENV: u32 = 4;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The daemon refused (the message says why).
    pub const REFUSED: u32 = 100;
    /// The pod's policy is invalid (annotations or MeshConfig).
    pub const INVALID_POLICY: u32 = 101;
    /// The policy could not be programmed.
    pub const APPLY_FAILED: u32 = 102;
    /// CHECK: the pod is unknown or its policy is not in force.
    pub const NOT_ENFORCED: u32 = 103;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: details.into() }
    }
}

/// The plugin's network configuration (its conflist entry, as the runtime passes it).
#[derive(Debug, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Box<RawValue>>,
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: Option<Value>,
    /// The daemon's API socket.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Namespaces whose pods start without asking the daemon (default ["kube-system"]).
    #[serde(rename = "excludeNamespaces", default)]
    pub exclude_namespaces: Option<Vec<String>>,
    /// The namespace of pods whose runtime passes no K8S_POD_NAMESPACE (default "default").
    #[serde(rename = "defaultNamespace", default)]
    pub default_namespace: Option<String>,
    /// How long to wait for the daemon (default 20).
    #[serde(rename = "timeoutSeconds", default)]
    pub timeout_seconds: Option<f64>,
}

impl NetConf {
    pub fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_seconds.filter(|t| *t > 0.0).unwrap_or(20.0))
    }

    pub fn excluded(&self, namespace: &str) -> bool {
        match &self.exclude_namespaces {
            Some(list) => list.iter().any(|n| n == namespace),
            None => DEFAULT_EXCLUDED_NAMESPACES.contains(&namespace),
        }
    }

    /// The runtime's pod annotations, when it offered them.
    pub fn annotations(&self) -> Result<Option<BTreeMap<String, String>>, CniError> {
        let Some(v) = self.runtime_config.as_ref().and_then(|r| r.get(ANNOTATIONS_CAPABILITY)) else {
            return Ok(None);
        };
        match v {
            Value::Null => Ok(None),
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    other => Ok((k.clone(), other.to_string())),
                })
                .collect::<Result<_, CniError>>()
                .map(Some),
            other => Err(CniError::new(
                code::DECODE,
                format!("runtimeConfig[{ANNOTATIONS_CAPABILITY:?}] is not a mapping"),
                other.to_string(),
            )),
        }
    }

    /// The pod's addresses from the previous result (`ips[].address`, "IP/len").
    pub fn prev_ips(&self) -> Vec<IpAddr> {
        let Some(raw) = &self.prev_result else { return vec![] };
        let Ok(v) = serde_json::from_str::<Value>(raw.get()) else { return vec![] };
        v.get("ips")
            .and_then(Value::as_array)
            .map(|ips| {
                ips.iter().filter_map(|ip| ip.get("address")?.as_str()?.split('/').next()?.parse().ok()).collect()
            })
            .unwrap_or_default()
    }
}

/// `K=V;K=V` (CNI_ARGS).
pub fn parse_cni_args(s: &str) -> BTreeMap<String, String> {
    s.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// What the runtime passed in the environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: BTreeMap<String, String>,
}

impl Env {
    pub fn from_process() -> Env {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        Env {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: parse_cni_args(&var("CNI_ARGS")),
        }
    }

    fn require(&self, name: &str, value: &str) -> Result<(), CniError> {
        if value.is_empty() {
            return Err(CniError::new(code::INVALID_ENV, format!("{name} is not set"), ""));
        }
        Ok(())
    }

    /// (namespace, name) of the pod.
    pub fn pod(&self, conf: &NetConf) -> (String, String) {
        let ns = self
            .args
            .get("K8S_POD_NAMESPACE")
            .filter(|s| !s.is_empty())
            .cloned()
            .or_else(|| conf.default_namespace.clone())
            .unwrap_or_else(|| "default".into());
        let name = self
            .args
            .get("K8S_POD_NAME")
            .filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| self.container_id.clone());
        (ns, name)
    }
}

/// The plugin's entry point: stdout gets the result or the error, the exit code says which.
pub fn main() -> ExitCode {
    let env = Env::from_process();
    let mut stdin = String::new();
    let _ = std::io::stdin().read_to_string(&mut stdin);
    let version = serde_json::from_str::<Value>(&stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| "1.0.0".to_string());
    match run(&env, &stdin) {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("interceptor-cni {}: {} ({})", env.command, e.msg, e.details);
            println!("{}", json!({"cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details}));
            ExitCode::from(1)
        }
    }
}

/// One invocation; returns what to print on stdout.
pub fn run(env: &Env, stdin: &str) -> Result<String, CniError> {
    if env.command == "VERSION" {
        return Ok(json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS}).to_string());
    }
    let conf: NetConf = serde_json::from_str(stdin)
        .map_err(|e| CniError::new(code::DECODE, "cannot decode the network configuration", e.to_string()))?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CNI version {} is not supported", conf.cni_version),
            format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    env.require("CNI_CONTAINERID", &env.container_id)?;
    match env.command.as_str() {
        "ADD" => add(env, &conf),
        "DEL" => del(env, &conf),
        "CHECK" => check(env, &conf),
        "" => Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set", "")),
        other => Err(CniError::new(code::INVALID_ENV, format!("unknown CNI_COMMAND {other}"), "")),
    }
}

fn client(conf: &NetConf) -> Client {
    Client::new(conf.socket(), conf.timeout())
}

fn refused(e: ClientError, pod: &str) -> CniError {
    match &e {
        ClientError::Unreachable { .. } | ClientError::Timeout { .. } => CniError::new(
            code::TRY_AGAIN_LATER,
            format!("the interceptor daemon is unavailable: pod {pod} cannot start without interception"),
            e.to_string(),
        ),
        ClientError::Refused { code: c, message, .. } => {
            let n = match c.as_str() {
                codes::INVALID_POLICY => code::INVALID_POLICY,
                codes::APPLY_FAILED => code::APPLY_FAILED,
                _ => code::REFUSED,
            };
            CniError::new(n, format!("the interceptor daemon refused pod {pod}: {message}"), c.clone())
        }
        ClientError::Protocol { .. } => CniError::new(code::REFUSED, format!("pod {pod}: {e}"), ""),
    }
}

fn add(env: &Env, conf: &NetConf) -> Result<String, CniError> {
    let Some(prev) = &conf.prev_result else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "interceptor-cni must be chained after the plugin that creates the pod's interface (no prevResult)",
            "",
        ));
    };
    let (namespace, name) = env.pod(conf);
    if conf.excluded(&namespace) {
        return Ok(prev.get().to_string());
    }
    env.require("CNI_NETNS", &env.netns)?;
    let pod = format!("{namespace}/{name}");
    let req = AddPod {
        container_id: env.container_id.clone(),
        netns: env.netns.clone(),
        namespace: Some(namespace),
        name: Some(name),
        annotations: conf.annotations()?,
        ips: conf.prev_ips(),
    };
    let _: PodView = client(conf).post("/v1/pods", &req).map_err(|e| refused(e, &pod))?;
    Ok(prev.get().to_string())
}

fn del(env: &Env, conf: &NetConf) -> Result<String, CniError> {
    let (namespace, name) = env.pod(conf);
    if conf.excluded(&namespace) {
        return Ok(String::new());
    }
    match client(conf).delete::<Deleted>(&format!("/v1/pods/{}", env.container_id)) {
        Ok(_) => Ok(String::new()),
        Err(e) if e.code() == Some(codes::POD_NOT_FOUND) => Ok(String::new()),
        Err(e) if e.is_unavailable() => {
            eprintln!(
                "interceptor-cni DEL: {e}; pod {namespace}/{name} is removed by the daemon's reconcile once its network namespace is gone"
            );
            Ok(String::new())
        }
        Err(e) => Err(refused(e, &format!("{namespace}/{name}"))),
    }
}

fn check(env: &Env, conf: &NetConf) -> Result<String, CniError> {
    let (namespace, name) = env.pod(conf);
    if conf.excluded(&namespace) {
        return Ok(String::new());
    }
    let pod = format!("{namespace}/{name}");
    match client(conf).get::<CheckResult>(&format!("/v1/pods/{}/check", env.container_id)) {
        Ok(_) => Ok(String::new()),
        Err(ClientError::Refused { code: c, message, .. }) if c == codes::NOT_ENFORCED || c == codes::POD_NOT_FOUND => {
            Err(CniError::new(code::NOT_ENFORCED, format!("pod {pod} is not intercepted: {message}"), c))
        }
        Err(e) => Err(refused(e, &pod)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(command: &str, args: &str) -> Env {
        Env {
            command: command.into(),
            container_id: "abc123".into(),
            netns: "/var/run/netns/none".into(),
            ifname: "eth0".into(),
            args: parse_cni_args(args),
        }
    }

    const PREV: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"198.51.100.2/25","interface":0},{"address":"2001:db8:1::2/64","interface":0}]}"#;

    fn conf(extra: &str) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"n","type":"interceptor-cni","socket":"/nonexistent/interceptor-test.sock","timeoutSeconds":1,"prevResult":{PREV}{extra}}}"#
        )
    }

    #[test]
    fn cni_args_and_pod_identity() {
        let a =
            parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=x");
        assert_eq!(a["K8S_POD_NAMESPACE"], "shop");
        let c: NetConf = serde_json::from_str(&conf("")).unwrap();
        assert_eq!(env("ADD", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0").pod(&c), ("shop".into(), "web-0".into()));
        // podman passes only K8S_POD_NAME.
        assert_eq!(env("ADD", "IgnoreUnknown=1;K8S_POD_NAME=side").pod(&c), ("default".into(), "side".into()));
        let c: NetConf = serde_json::from_str(&conf(r#","defaultNamespace":"edge""#)).unwrap();
        assert_eq!(env("ADD", "").pod(&c), ("edge".into(), "abc123".into()));
    }

    #[test]
    fn version_lists_what_is_supported() {
        let out: Value = serde_json::from_str(&run(&env("VERSION", ""), "").unwrap()).unwrap();
        assert_eq!(out["cniVersion"], "1.0.0");
        assert!(out["supportedVersions"].as_array().unwrap().iter().any(|v| v == "0.4.0"));
    }

    #[test]
    fn add_fails_closed_when_the_daemon_is_unreachable() {
        let e = run(&env("ADD", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web"), &conf("")).unwrap_err();
        assert_eq!(e.code, code::TRY_AGAIN_LATER);
        assert!(e.msg.contains("shop/web cannot start without interception"), "{}", e.msg);
    }

    #[test]
    fn exempt_namespaces_pass_the_previous_result_through_byte_for_byte() {
        let out = run(&env("ADD", "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns"), &conf("")).unwrap();
        assert_eq!(out, PREV);
        let c = conf(r#","excludeNamespaces":["infra"]"#);
        assert_eq!(run(&env("ADD", "K8S_POD_NAMESPACE=infra"), &c).unwrap(), PREV);
        // An explicit list replaces the default.
        assert_eq!(run(&env("ADD", "K8S_POD_NAMESPACE=kube-system"), &c).unwrap_err().code, code::TRY_AGAIN_LATER);
    }

    #[test]
    fn del_succeeds_without_a_daemon_and_check_does_not() {
        assert_eq!(run(&env("DEL", "K8S_POD_NAME=web"), &conf("")).unwrap(), "");
        assert_eq!(run(&env("CHECK", "K8S_POD_NAME=web"), &conf("")).unwrap_err().code, code::TRY_AGAIN_LATER);
    }

    #[test]
    fn bad_inputs_are_cni_errors() {
        assert_eq!(run(&env("ADD", ""), "{").unwrap_err().code, code::DECODE);
        let old = conf("").replace("\"1.0.0\",\"name\"", "\"0.2.0\",\"name\"");
        assert_eq!(run(&env("ADD", ""), &old).unwrap_err().code, code::INCOMPATIBLE_VERSION);
        let mut e = env("ADD", "");
        e.container_id.clear();
        assert_eq!(run(&e, &conf("")).unwrap_err().code, code::INVALID_ENV);
        let unchained = r#"{"cniVersion":"1.0.0","name":"n","type":"interceptor-cni"}"#;
        assert_eq!(run(&env("ADD", ""), unchained).unwrap_err().code, code::INVALID_CONFIG);
    }

    #[test]
    fn annotations_and_addresses_from_the_runtime() {
        let c: NetConf = serde_json::from_str(&conf(
            r#","runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"openservicemesh.io/outbound-port-exclusion-list":"6379"}}"#,
        ))
        .unwrap();
        let a = c.annotations().unwrap().unwrap();
        assert_eq!(a["openservicemesh.io/outbound-port-exclusion-list"], "6379");
        assert_eq!(c.prev_ips(), vec!["198.51.100.2".parse::<IpAddr>().unwrap(), "2001:db8:1::2".parse().unwrap()]);
        let none: NetConf = serde_json::from_str(&conf("")).unwrap();
        assert_eq!(none.annotations().unwrap(), None, "no capability offered: the manifest directory decides");
    }
}
