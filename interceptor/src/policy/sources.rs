//! The three sources of a policy: flags (named after osm's keys), a MeshConfig manifest and
//! a Pod manifest (its annotations), in YAML or JSON as kubectl prints them.
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde_json::Value;

use super::{
    Cidr, LocalProxyMode, PodRanges, Policy, Ports,
    error::{Origin, PolicyError, PolicyErrors, Warning},
    merge::{self, GlobalRanges, Sourced},
    validate::{parse_cidr, parse_interface, parse_port, warnings},
};

pub const ANNOTATION_OUTBOUND_IP_EXCLUSION: &str = "openservicemesh.io/outbound-ip-range-exclusion-list";
pub const ANNOTATION_OUTBOUND_IP_INCLUSION: &str = "openservicemesh.io/outbound-ip-range-inclusion-list";
pub const ANNOTATION_OUTBOUND_PORT_EXCLUSION: &str = "openservicemesh.io/outbound-port-exclusion-list";
pub const ANNOTATION_INBOUND_PORT_EXCLUSION: &str = "openservicemesh.io/inbound-port-exclusion-list";

/// Raw values of the policy flags, as given (each list flag is comma separated and may be
/// repeated).
#[derive(Clone, Debug, Default)]
pub struct FlagValues {
    pub outbound_ip_range_exclusion_list: Vec<String>,
    pub outbound_ip_range_inclusion_list: Vec<String>,
    pub outbound_port_exclusion_list: Vec<String>,
    pub inbound_port_exclusion_list: Vec<String>,
    pub network_interface_exclusion_list: Vec<String>,
    pub proxy_uid: Option<u32>,
    pub local_proxy_mode: Option<String>,
    pub local_dns_proxy: bool,
    /// Overrides of the sidecar's reserved ports, raw text.
    pub ports: PortOverrides,
    /// Per-pod limits on the pod's annotation lists.
    pub annotation_limits: AnnotationLimits,
}

/// The reserved ports given on the command line (`--admin-port`, …), raw text: each is
/// validated with the rest of the policy (and named by its flag in errors).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortOverrides {
    pub admin: Option<String>,
    pub outbound: Option<String>,
    pub inbound: Option<String>,
    pub prometheus: Option<String>,
    pub liveness_probe: Option<String>,
    pub readiness_probe: Option<String>,
    pub startup_probe: Option<String>,
    pub healthcheck: Option<String>,
}

/// The most items one pod annotation may list (`--max-annotation-cidrs`,
/// `--max-annotation-ports`): eBPF mode stores a pod's own lists with the pod, so one pod
/// must not be able to fill the node's maps through its annotations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnnotationLimits {
    pub cidrs: usize,
    pub ports: usize,
}

impl Default for AnnotationLimits {
    fn default() -> Self {
        use interceptor_common::annotation_limits;
        AnnotationLimits { cidrs: annotation_limits::CIDRS, ports: annotation_limits::PORTS }
    }
}

/// Everything a policy is built from.
#[derive(Clone, Debug, Default)]
pub struct PolicyInputs {
    pub flags: FlagValues,
    pub mesh_config: Option<PathBuf>,
    pub pod: Option<PathBuf>,
}

/// Lists of one source (before the merge).
#[derive(Default)]
struct Lists {
    ip_exclusions: Vec<Sourced<Cidr>>,
    ip_inclusions: Vec<Sourced<Cidr>>,
    out_port_exclusions: Vec<Sourced<u16>>,
    in_port_exclusions: Vec<Sourced<u16>>,
    interfaces: Vec<Sourced<String>>,
}

impl Lists {
    fn append(&mut self, other: Lists) {
        self.ip_exclusions.extend(other.ip_exclusions);
        self.ip_inclusions.extend(other.ip_inclusions);
        self.out_port_exclusions.extend(other.out_port_exclusions);
        self.in_port_exclusions.extend(other.in_port_exclusions);
        self.interfaces.extend(other.interfaces);
    }
}

/// Collects errors instead of stopping at the first one.
#[derive(Default)]
struct Collect {
    errors: Vec<PolicyError>,
}

impl Collect {
    fn ok<T>(&mut self, r: Result<T, PolicyError>) -> Option<T> {
        r.map_err(|e| self.errors.push(e)).ok()
    }
}

/// A manifest already in memory (the daemon's MeshConfig as last read, a pod's annotations
/// as the container runtime passed them): `shown` names it in errors, like a file path.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub shown: String,
    pub doc: Value,
}

impl Document {
    /// A Pod document holding only `annotations` (from the runtime, not from a file).
    pub fn pod_annotations(shown: impl Into<String>, annotations: &std::collections::BTreeMap<String, String>) -> Self {
        let map: serde_json::Map<String, Value> =
            annotations.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        Document { shown: shown.into(), doc: serde_json::json!({"kind": "Pod", "metadata": {"annotations": map}}) }
    }
}

/// Where a manifest comes from: a file (read now) or memory.
enum Source<'a> {
    File(&'a Path),
    Memory(&'a Document),
}

impl Source<'_> {
    fn read(&self, c: &mut Collect) -> Option<(String, std::borrow::Cow<'_, Value>)> {
        match self {
            Source::File(path) => {
                c.ok(read_manifest(path)).map(|d| (path.display().to_string(), std::borrow::Cow::Owned(d)))
            }
            Source::Memory(d) => Some((d.shown.clone(), std::borrow::Cow::Borrowed(&d.doc))),
        }
    }
}

/// Builds the merged policy, or every error found. Global lists are the MeshConfig's
/// followed by the flags'; the pod's annotations are merged with them as osm-edge does.
pub fn build_policy(inputs: &PolicyInputs) -> Result<(Policy, Vec<Warning>), PolicyErrors> {
    build_named_policy(inputs).map(|b| (b.policy, b.warnings))
}

/// A policy, with what the pod manifest it was built from says of the pod.
#[derive(Clone, Debug)]
pub struct NamedPolicy {
    pub policy: Policy,
    pub warnings: Vec<Warning>,
    /// `namespace/name` of the pod manifest (`metadata`), if one was given and names it.
    pub pod_name: Option<String>,
}

/// [`build_policy`], with the pod's name from its manifest (read once, with the rest).
pub fn build_named_policy(inputs: &PolicyInputs) -> Result<NamedPolicy, PolicyErrors> {
    build(&inputs.flags, inputs.mesh_config.as_deref().map(Source::File), inputs.pod.as_deref().map(Source::File))
}

/// [`build_policy`] from documents already in memory (the node daemon: one MeshConfig read
/// for every pod, annotations from the runtime).
pub fn build_policy_from_documents(
    flags: &FlagValues,
    mesh_config: Option<&Document>,
    pod: Option<&Document>,
) -> Result<(Policy, Vec<Warning>), PolicyErrors> {
    build(flags, mesh_config.map(Source::Memory), pod.map(Source::Memory)).map(|b| (b.policy, b.warnings))
}

fn build(
    flags: &FlagValues,
    mesh_source: Option<Source<'_>>,
    pod_source: Option<Source<'_>>,
) -> Result<NamedPolicy, PolicyErrors> {
    let mut c = Collect::default();
    let global = global_part(&mut c, flags, mesh_source);
    finish(c, flags, &global, pod_source)
}

/// The part of every pod's policy that the MeshConfig and the flags give, parsed and
/// validated once ([`GlobalPolicy::prepare`]): the node daemon builds each pod's policy from
/// it ([`GlobalPolicy::policy_for`]), where parsing a MeshConfig of thousands of ranges
/// again for every pod would dominate a MeshConfig change.
pub struct GlobalPolicy {
    /// The global lists but the ranges (`ip_exclusions`, `ip_inclusions` are empty).
    lists: Lists,
    excluded: GlobalRanges,
    included: GlobalRanges,
    mode: Option<LocalProxyMode>,
    dns: bool,
}

impl GlobalPolicy {
    /// The MeshConfig (if any) and the flags' global part, or every error found in them.
    pub fn prepare(flags: &FlagValues, mesh_config: Option<&Document>) -> Result<GlobalPolicy, PolicyErrors> {
        let mut c = Collect::default();
        let global = global_part(&mut c, flags, mesh_config.map(Source::Memory));
        if c.errors.is_empty() { Ok(global) } else { Err(PolicyErrors(c.errors)) }
    }

    /// One pod's merged policy: this global part with the pod's annotations (same result
    /// as [`build_policy_from_documents`] with the same MeshConfig and flags).
    pub fn policy_for(
        &self,
        flags: &FlagValues,
        pod: Option<&Document>,
    ) -> Result<(Policy, Vec<Warning>), PolicyErrors> {
        finish(Collect::default(), flags, self, pod.map(Source::Memory)).map(|b| (b.policy, b.warnings))
    }
}

fn global_part(c: &mut Collect, flags: &FlagValues, mesh_source: Option<Source<'_>>) -> GlobalPolicy {
    let mut global = Lists::default();
    let mut mode: Option<LocalProxyMode> = None;
    let mut dns = flags.local_dns_proxy;

    if let Some(source) = &mesh_source
        && let Some((shown, doc)) = source.read(c)
    {
        let (lists, m, d) = mesh_config(c, &shown, &doc);
        global.append(lists);
        mode = m;
        dns |= d;
    }
    global.append(flag_lists(c, flags));
    if let Some(raw) = &flags.local_proxy_mode {
        let origin = Origin::Flag("local-proxy-mode".into());
        mode = c
            .ok(LocalProxyMode::parse(raw.trim())
                .ok_or(PolicyError::UnknownLocalProxyMode { origin, item: raw.clone() }));
    }
    GlobalPolicy {
        excluded: GlobalRanges::new(std::mem::take(&mut global.ip_exclusions)),
        included: GlobalRanges::new(std::mem::take(&mut global.ip_inclusions)),
        lists: global,
        mode,
        dns,
    }
}

/// Merges the pod's annotations into the global part (errors: everything found so far
/// in `c`, then the pod's and the port flags').
fn finish(
    mut c: Collect,
    flags: &FlagValues,
    global_policy: &GlobalPolicy,
    pod_source: Option<Source<'_>>,
) -> Result<NamedPolicy, PolicyErrors> {
    let GlobalPolicy { lists: global, excluded, included, mode, dns } = global_policy;
    let (mode, dns) = (*mode, *dns);
    let mut pod = Lists::default();
    let mut pod_name = None;
    if let Some(source) = &pod_source
        && let Some((shown, doc)) = source.read(&mut c)
    {
        pod = pod_annotations(&mut c, &shown, &doc, flags.annotation_limits);
        pod_name = manifest_name(&doc);
    }
    let ports = port_overrides(&mut c, &flags.ports);
    if !c.errors.is_empty() {
        return Err(PolicyErrors(c.errors));
    }

    let mut warns = Vec::new();
    let policy = Policy {
        proxy_uid: flags.proxy_uid.unwrap_or(1500),
        ports,
        outbound_ip_range_exclusions: excluded.merge(&pod.ip_exclusions, &mut warns),
        outbound_ip_range_inclusions: included.merge(&pod.ip_inclusions, &mut warns),
        outbound_port_exclusions: merge::ports(&global.out_port_exclusions, &pod.out_port_exclusions, &mut warns),
        inbound_port_exclusions: merge::ports(&global.in_port_exclusions, &pod.in_port_exclusions, &mut warns),
        network_interface_exclusions: merge::merge_dedup(
            &global.interfaces,
            &[],
            String::clone,
            |s| format!("interface {s}"),
            &mut warns,
        ),
        local_proxy_mode: mode.unwrap_or_default(),
        local_dns_proxy: dns,
        pod_ranges: PodRanges {
            exclusions: pod_only(&excluded.nets, &pod.ip_exclusions),
            inclusions: pod_only(&included.nets, &pod.ip_inclusions),
        },
    };
    warns.extend(warnings(&policy));
    Ok(NamedPolicy { policy, warnings: warns, pod_name })
}

/// The networks of `pod` that no range of the global lists has (first occurrence kept).
fn pod_only(global: &HashSet<IpNet>, pod: &[Sourced<Cidr>]) -> Vec<IpNet> {
    let mut seen = HashSet::new();
    pod.iter().map(|c| c.value.net.trunc()).filter(|n| !global.contains(n) && seen.insert(*n)).collect()
}

fn port_overrides(c: &mut Collect, overrides: &PortOverrides) -> Ports {
    let mut ports = Ports::default();
    let PortOverrides {
        admin,
        outbound,
        inbound,
        prometheus,
        liveness_probe,
        readiness_probe,
        startup_probe,
        healthcheck,
    } = overrides;
    for (flag, raw, port) in [
        ("admin-port", admin, &mut ports.admin),
        ("outbound-port", outbound, &mut ports.outbound),
        ("inbound-port", inbound, &mut ports.inbound),
        ("prometheus-port", prometheus, &mut ports.prometheus),
        ("liveness-probe-port", liveness_probe, &mut ports.liveness_probe),
        ("readiness-probe-port", readiness_probe, &mut ports.readiness_probe),
        ("startup-probe-port", startup_probe, &mut ports.startup_probe),
        ("healthcheck-port", healthcheck, &mut ports.healthcheck),
    ] {
        if let Some(raw) = raw
            && let Some(p) = c.ok(parse_port(&Origin::Flag(flag.into()), raw))
        {
            *port = p;
        }
    }
    ports
}

/// Splits comma-separated values; an entirely empty value means "no items".
fn split_items(values: &[String]) -> impl Iterator<Item = &str> {
    values.iter().filter(|v| !v.trim().is_empty()).flat_map(|v| v.split(','))
}

fn flag_lists(c: &mut Collect, f: &FlagValues) -> Lists {
    let origin = |name: &str| Origin::Flag(name.to_string());
    let cidrs = |c: &mut Collect, name: &str, values: &[String]| -> Vec<Sourced<Cidr>> {
        split_items(values)
            .filter_map(|item| c.ok(parse_cidr(&origin(name), item)))
            .map(|value| Sourced { value, origin: origin(name) })
            .collect()
    };
    let ports = |c: &mut Collect, name: &str, values: &[String]| -> Vec<Sourced<u16>> {
        split_items(values)
            .filter_map(|item| c.ok(parse_port(&origin(name), item)))
            .map(|value| Sourced { value, origin: origin(name) })
            .collect()
    };
    Lists {
        ip_exclusions: cidrs(c, "outbound-ip-range-exclusion-list", &f.outbound_ip_range_exclusion_list),
        ip_inclusions: cidrs(c, "outbound-ip-range-inclusion-list", &f.outbound_ip_range_inclusion_list),
        out_port_exclusions: ports(c, "outbound-port-exclusion-list", &f.outbound_port_exclusion_list),
        in_port_exclusions: ports(c, "inbound-port-exclusion-list", &f.inbound_port_exclusion_list),
        interfaces: split_items(&f.network_interface_exclusion_list)
            .filter_map(|item| c.ok(parse_interface(&origin("network-interface-exclusion-list"), item)))
            .map(|value| Sourced { value, origin: origin("network-interface-exclusion-list") })
            .collect(),
    }
}

/// Reads a YAML or JSON manifest (JSON when it starts with `{`).
pub fn read_manifest(path: &Path) -> Result<Value, PolicyError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| PolicyError::Unreadable { path: shown.clone(), message: e.to_string() })?;
    parse_manifest(&shown, &text)
}

pub fn parse_manifest(shown: &str, text: &str) -> Result<Value, PolicyError> {
    let value = if text.trim_start().starts_with('{') {
        serde_json::from_str::<Value>(text).map_err(|e| PolicyError::Malformed {
            path: shown.to_string(),
            format: "JSON",
            message: e.to_string(),
        })?
    } else {
        serde_saphyr::from_str::<Value>(text).map_err(|e| PolicyError::Malformed {
            path: shown.to_string(),
            format: "YAML",
            message: e.to_string().lines().next().unwrap_or_default().to_string(),
        })?
    };
    if !value.is_object() {
        return Err(PolicyError::Malformed {
            path: shown.to_string(),
            format: "manifest",
            message: "expected a mapping at the top level".to_string(),
        });
    }
    Ok(value)
}

fn check_kind(c: &mut Collect, path: &str, doc: &Value, expected: &str) -> bool {
    match doc.get("kind") {
        None => true,
        Some(Value::String(k)) if k == expected => true,
        Some(other) => {
            c.errors.push(PolicyError::InvalidValue {
                origin: Origin::File { path: path.to_string(), key: "kind".into() },
                what: "kind",
                item: other.as_str().map(str::to_string).unwrap_or_else(|| other.to_string()),
                reason: format!("expected {expected}"),
            });
            false
        }
    }
}

/// `spec.traffic.*` lists, `spec.sidecar.localProxyMode`, `spec.sidecar.localDNSProxy.enable`.
fn mesh_config(c: &mut Collect, path: &str, doc: &Value) -> (Lists, Option<LocalProxyMode>, bool) {
    let mut lists = Lists::default();
    if !check_kind(c, path, doc, "MeshConfig") {
        return (lists, None, false);
    }
    let origin = |key: String| Origin::File { path: path.to_string(), key };
    let list = |c: &mut Collect, key: &str| -> Vec<(Origin, Value)> {
        let full = format!("spec.traffic.{key}");
        match doc.pointer(&format!("/spec/traffic/{key}")) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                items.iter().enumerate().map(|(i, v)| (origin(format!("{full}[{i}]")), v.clone())).collect()
            }
            Some(other) => {
                c.errors.push(PolicyError::InvalidValue {
                    origin: origin(full),
                    what: "list",
                    item: other.to_string(),
                    reason: "expected a list".into(),
                });
                Vec::new()
            }
        }
    };
    let string_items = |c: &mut Collect, items: Vec<(Origin, Value)>, what: &'static str| {
        items
            .into_iter()
            .filter_map(|(o, v)| match v {
                Value::String(s) => Some((o, s)),
                other => {
                    c.errors.push(PolicyError::InvalidValue {
                        origin: o,
                        what,
                        item: other.to_string(),
                        reason: "expected a string".into(),
                    });
                    None
                }
            })
            .collect::<Vec<_>>()
    };
    for (key, target) in [
        ("outboundIPRangeExclusionList", &mut lists.ip_exclusions),
        ("outboundIPRangeInclusionList", &mut lists.ip_inclusions),
    ] {
        let items = list(c, key);
        for (o, s) in string_items(c, items, "CIDR") {
            if let Some(value) = c.ok(parse_cidr(&o, &s)) {
                target.push(Sourced { value, origin: o });
            }
        }
    }
    for (key, target) in [
        ("outboundPortExclusionList", &mut lists.out_port_exclusions),
        ("inboundPortExclusionList", &mut lists.in_port_exclusions),
    ] {
        for (o, v) in list(c, key) {
            let port = match &v {
                Value::Number(n) => c.ok(parse_port(&o, &n.to_string())),
                other => {
                    c.errors.push(PolicyError::InvalidPort {
                        origin: o.clone(),
                        item: other.as_str().map(str::to_string).unwrap_or_else(|| other.to_string()),
                        reason: "expected an integer".into(),
                    });
                    None
                }
            };
            if let Some(value) = port {
                target.push(Sourced { value, origin: o });
            }
        }
    }
    let items = list(c, "networkInterfaceExclusionList");
    for (o, s) in string_items(c, items, "interface name") {
        if let Some(value) = c.ok(parse_interface(&o, &s)) {
            lists.interfaces.push(Sourced { value, origin: o });
        }
    }
    let mode = match doc.pointer("/spec/sidecar/localProxyMode") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let item = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
            c.ok(LocalProxyMode::parse(&item).ok_or(PolicyError::UnknownLocalProxyMode {
                origin: origin("spec.sidecar.localProxyMode".into()),
                item,
            }))
        }
    };
    let dns = match doc.pointer("/spec/sidecar/localDNSProxy/enable") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            c.errors.push(PolicyError::InvalidValue {
                origin: origin("spec.sidecar.localDNSProxy.enable".into()),
                what: "boolean",
                item: other.to_string(),
                reason: "expected true or false".into(),
            });
            false
        }
    };
    (lists, mode, dns)
}

/// The pod's `metadata.annotations`: comma-separated, items trimmed (osm-edge); at most
/// `limits` items per list.
fn pod_annotations(c: &mut Collect, path: &str, doc: &Value, limits: AnnotationLimits) -> Lists {
    let mut lists = Lists::default();
    if !check_kind(c, path, doc, "Pod") {
        return lists;
    }
    let annotations = match doc.pointer("/metadata/annotations") {
        None | Some(Value::Null) => return lists,
        Some(Value::Object(map)) => map,
        Some(other) => {
            c.errors.push(PolicyError::InvalidValue {
                origin: Origin::File { path: path.into(), key: "metadata.annotations".into() },
                what: "annotations",
                item: other.to_string(),
                reason: "expected a mapping of strings".into(),
            });
            return lists;
        }
    };
    let value = |c: &mut Collect, name: &str| -> Option<(Origin, String)> {
        let origin = Origin::Annotation { path: path.into(), name: name.into() };
        match annotations.get(name)? {
            Value::String(s) => Some((origin, s.clone())),
            other => {
                c.errors.push(PolicyError::InvalidValue {
                    origin,
                    what: "annotation value",
                    item: other.to_string(),
                    reason: "annotation values are strings (quote the list)".into(),
                });
                None
            }
        }
    };
    let cidrs = ("ranges", limits.cidrs, "--max-annotation-cidrs");
    for (name, target) in [
        (ANNOTATION_OUTBOUND_IP_EXCLUSION, &mut lists.ip_exclusions),
        (ANNOTATION_OUTBOUND_IP_INCLUSION, &mut lists.ip_inclusions),
    ] {
        if let Some(annotation) = value(c, name) {
            target.extend(annotation_items(c, annotation, cidrs, parse_cidr));
        }
    }
    let ports = ("ports", limits.ports, "--max-annotation-ports");
    for (name, target) in [
        (ANNOTATION_OUTBOUND_PORT_EXCLUSION, &mut lists.out_port_exclusions),
        (ANNOTATION_INBOUND_PORT_EXCLUSION, &mut lists.in_port_exclusions),
    ] {
        if let Some(annotation) = value(c, name) {
            target.extend(annotation_items(c, annotation, ports, parse_port));
        }
    }
    lists
}

/// The items of one annotation (comma separated), parsed. A list of more than `limit` items
/// is refused whatever its items: counted before parsing.
fn annotation_items<T>(
    c: &mut Collect,
    (origin, text): (Origin, String),
    (what, limit, flag): (&'static str, usize, &'static str),
    parse: fn(&Origin, &str) -> Result<T, PolicyError>,
) -> Vec<Sourced<T>> {
    let count = text.split(',').count();
    if count > limit {
        c.errors.push(PolicyError::TooManyItems { origin, what, count, limit, flag });
        return Vec::new();
    }
    let parsed: Vec<T> = text.split(',').filter_map(|item| c.ok(parse(&origin, item))).collect();
    parsed.into_iter().map(|value| Sourced { value, origin: origin.clone() }).collect()
}

/// `metadata.namespace/metadata.name` of a manifest, for display.
pub fn manifest_name(doc: &Value) -> Option<String> {
    let name = doc.pointer("/metadata/name")?.as_str()?;
    Some(match doc.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    })
}
