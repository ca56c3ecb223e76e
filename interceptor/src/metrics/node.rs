//! The node's eBPF state as metrics: a `prometheus-client` collector over one
//! [`Status`] read (taken per scrape).
use std::{collections::BTreeMap, sync::OnceLock};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::{Kind, Spec};
use crate::ebpf::status::{Status, UNTRACKED};

type Labels = Vec<(&'static str, String)>;

/// One sample's value.
#[derive(Clone, Copy, Debug)]
enum Value {
    Count(u64),
    Level(i64),
}

/// A pod's `namespace` and `pod` label values.
pub type PodName = (String, String);

#[derive(Debug)]
pub struct NodeCollector {
    status: Status,
    labels: BTreeMap<u64, PodName>,
    iptables_pods: Option<usize>,
}

impl NodeCollector {
    /// `names`: the daemon's names of its eBPF pods by netns cookie (full names; the maps
    /// keep 55 bytes); `iptables_pods`: how many pods the daemon intercepts in iptables mode
    /// (`None` when no daemon serves: the family then only has the eBPF count).
    pub fn new(status: Status, names: BTreeMap<u64, PodName>, iptables_pods: Option<usize>) -> NodeCollector {
        let labels = pod_labels(&status, &names);
        NodeCollector { status, labels, iptables_pods }
    }

    fn pod(&self, cookie: u64) -> Labels {
        let (ns, pod) = self.labels.get(&cookie).cloned().unwrap_or_else(|| (String::new(), format!("netns-{cookie}")));
        vec![("namespace", ns), ("pod", pod)]
    }

    /// Every family's samples, in [`super::FAMILIES`] order (families without samples are left out).
    fn samples(&self) -> Vec<(Spec, Vec<(Labels, Value)>)> {
        let s = &self.status;
        let mut decisions = Vec::new();
        let mut untracked = Vec::new();
        let mut in_flight = Vec::new();
        let mut outside = Vec::new();
        for p in &s.pods {
            let pod = self.pod(p.netns_cookie);
            for (reason, action, n) in p.decisions() {
                let mut l = pod.clone();
                l.push(("direction", if reason.is_inbound() { "inbound" } else { "outbound" }.into()));
                l.push(("action", action.name().into()));
                l.push(("reason", reason.name().into()));
                decisions.push((l, Value::Count(n)));
            }
            for r in UNTRACKED {
                let mut l = pod.clone();
                l.push(("reason", r.name().into()));
                untracked.push((l, Value::Count(p.untracked.get(r.name()).copied().unwrap_or(0))));
            }
            in_flight.push((pod.clone(), Value::Level(p.tracking.in_flight as i64)));
            outside.push((pod, Value::Level(p.processes_outside_cgroup.len() as i64)));
        }
        let one = |v: i64| vec![(Labels::new(), Value::Level(v))];
        let mut out =
            vec![(super::DECISIONS, decisions), (super::UNTRACKED, untracked), (super::POD_IN_FLIGHT, in_flight)];
        if s.loaded {
            out.push((super::POD_LIMIT, one(s.pod_tracking_limit as i64)));
            out.push((super::NODE_IN_FLIGHT, one(s.tracking.in_flight as i64)));
            out.push((super::NODE_LIMIT, one(s.tracking.limit as i64)));
        }
        let mut entries = Vec::new();
        let mut capacity = Vec::new();
        for (name, m) in &s.maps {
            // A ring buffer has no entries (its capacity is in bytes), an array's slots all
            // exist (it cannot fill up), socket storage cannot be counted: left out.
            let Some(n) = m.entries else { continue };
            if m.fixed_size() {
                continue;
            }
            entries.push((vec![("map", name.clone())], Value::Level(n as i64)));
            capacity.push((vec![("map", name.clone())], Value::Level(m.max_entries as i64)));
        }
        out.push((super::MAP_ENTRIES, entries));
        out.push((super::MAP_MAX_ENTRIES, capacity));
        let mut enrolled = vec![(vec![("mode", "ebpf".to_string())], Value::Level(s.pods.len() as i64))];
        if let Some(n) = self.iptables_pods {
            enrolled.push((vec![("mode", "iptables".to_string())], Value::Level(n as i64)));
        }
        out.push((super::ENROLLED_PODS, enrolled));
        out.push((super::OUTSIDE_PROCESSES, outside));
        out.push((super::LOADED, one(s.loaded as i64)));
        if s.loaded {
            out.push((super::GENERATIONS, one(s.generations as i64)));
            out.push((super::ORPHANED_GENERATIONS, one(s.orphaned_generations as i64)));
            out.push((super::DEAD_PODS, one(s.dead_pods as i64)));
            out.push((super::UPGRADE_INTERRUPTED, one(s.upgrade_interrupted as i64)));
        }
        let build = vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("fingerprint", object_fingerprint().to_string()),
            ("loaded_fingerprint", s.fingerprint.clone()),
            ("kernel_release", kernel_release().to_string()),
        ];
        out.push((super::BUILD_INFO, vec![(build, Value::Level(1))]));
        out
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (spec, samples) in self.samples() {
            if samples.is_empty() {
                continue;
            }
            let kind = match spec.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
                Kind::Histogram => unreachable!("the node's families hold no histogram"),
            };
            let help = format!("{}.", spec.help);
            let mut family = encoder.encode_descriptor(spec.name, &help, None, kind)?;
            for (labels, value) in &samples {
                debug_assert_eq!(labels.iter().map(|(k, _)| *k).collect::<Vec<_>>(), spec.labels, "{}", spec.name);
                let sample = family.encode_family(labels)?;
                match value {
                    Value::Count(n) => ConstCounter::new(*n).encode(sample)?,
                    Value::Level(n) => ConstGauge::new(*n).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

/// Each pod's (namespace, pod) labels: the daemon's name, else the name it was enrolled with
/// (`namespace/name` in POD_INFO), else `netns-<cookie>`. Pods sharing a name (an enrollment
/// left over beside a new one) get `@netns-<cookie>` appended, all of them: a series then
/// always counts one pod.
fn pod_labels(status: &Status, names: &BTreeMap<u64, PodName>) -> BTreeMap<u64, PodName> {
    let mut out: BTreeMap<u64, PodName> = BTreeMap::new();
    for p in &status.pods {
        let name = names.get(&p.netns_cookie).cloned().unwrap_or_else(|| match p.pod.split_once('/') {
            Some((ns, n)) => (ns.to_string(), n.to_string()),
            None if !p.pod.is_empty() => (String::new(), p.pod.clone()),
            None => (String::new(), format!("netns-{}", p.netns_cookie)),
        });
        out.insert(p.netns_cookie, name);
    }
    let mut seen: BTreeMap<PodName, usize> = BTreeMap::new();
    for n in out.values() {
        *seen.entry(n.clone()).or_default() += 1;
    }
    for (cookie, n) in out.iter_mut() {
        if seen[n] > 1 {
            n.1 = format!("{}@netns-{cookie}", n.1);
        }
    }
    out
}

/// This build's eBPF object fingerprint (as `ebpf status` prints the loaded one).
fn object_fingerprint() -> &'static str {
    static F: OnceLock<String> = OnceLock::new();
    F.get_or_init(|| format!("{:016x}", crate::ebpf::object::fingerprint()))
}

fn kernel_release() -> &'static str {
    static K: OnceLock<String> = OnceLock::new();
    K.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
    })
}
