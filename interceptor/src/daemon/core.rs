//! The daemon's pods: add, delete, check, re-apply — each pod's operations serialized by
//! its own lock, the library's blocking calls on tokio's blocking pool, the state file
//! written after every change.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use serde_json::Value;
use tokio::task::JoinHandle;

use super::{counters::Counters, state};
use crate::metrics::daemon::{DaemonMetrics, Operation};
use crate::{
    api::{AddPod, AnnotationSource, CheckResult, Deleted, MeshConfigStatus, Mode, PodList, PodView, codes},
    ebpf::{self, EnrollOptions, PinDir},
    iptables::{self, ApplyOptions, apply::default_families},
    netns::Netns,
    policy::{
        ChainNames, LocalProxyMode, PodIps, Policy,
        sources::{Document, FlagValues, GlobalPolicy, build_policy_from_documents, read_manifest},
    },
    routes,
};

/// What the daemon was started with (the mode already resolved).
#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    pub mode_reason: String,
    pub pins: PinDir,
    /// How to load eBPF mode again if its pins disappear under the daemon (eBPF mode only).
    pub load: Option<ebpf::LoadOptions>,
    pub state_dir: PathBuf,
    pub mesh_config: Option<PathBuf>,
    pub pod_manifest_dir: Option<PathBuf>,
    pub names: ChainNames,
    /// Node-wide policy flags (after the MeshConfig's lists, as on the command line).
    pub flags: FlagValues,
}

/// An API-visible failure: HTTP status, stable code, message.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl Failure {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Failure {
        Failure { status, code, message: message.into() }
    }
}

/// The MeshConfig in force.
#[derive(Default)]
pub struct MeshState {
    pub doc: Option<Document>,
    /// `doc` parsed with the flags, once for every pod ([`GlobalPolicy::policy_for`]);
    /// `None` without a MeshConfig.
    pub global: Option<GlobalPolicy>,
    /// Its text (an edit that leaves it unchanged is no reload).
    pub raw: Option<String>,
    /// Bumped at every reload: a pod added while one happened is re-checked.
    pub generation: u64,
    pub status: MeshConfigStatus,
    /// What every pod's policy is built from besides its own annotations (the MeshConfig,
    /// the flags, this build), hashed: see [`MeshState::inputs_of`].
    pub inputs: [u8; 32],
}

impl MeshState {
    /// The global inputs of every pod's policy, as a hash: the MeshConfig as parsed (an
    /// edit of its layout or comments changes nothing), the daemon's policy flags, and this
    /// build (another version may build other policies from the same inputs).
    pub fn inputs_of(flags: &FlagValues, doc: Option<&Document>) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(this_build());
        h.update(format!("{flags:?}"));
        h.update(serde_json::to_vec(&doc.map(|d| &d.doc)).unwrap_or_default());
        h.finalize().into()
    }
}

pub struct Daemon {
    pub cfg: Config,
    pods: Mutex<BTreeMap<String, state::PodRecord>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Held shared by every add and removal from before it changes the kernel until its
    /// record is written or forgotten, exclusively by the adoption of a pod pinned without
    /// a record: the reconcile never mistakes a pod being added (enrolled, its record not
    /// yet written) or removed (its record forgotten, its enrollment not yet gone from the
    /// reconcile's earlier read) for an orphan.
    membership: tokio::sync::RwLock<()>,
    watchers: Mutex<HashMap<String, JoinHandle<()>>>,
    pub mesh: RwLock<MeshState>,
    save_lock: tokio::sync::Mutex<()>,
    /// Programs attached, state reconciled and the API socket serving.
    pub ready: AtomicBool,
    pub counters: Counters,
    /// The Prometheus families only the daemon knows (`GET /metrics`).
    pub metrics: DaemonMetrics,
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// (device, inode) of a network namespace file: its identity while it exists.
pub fn netns_identity(path: &Path) -> std::io::Result<(u64, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// A stable 64-bit FNV-1a hash (persisted: must not change between builds).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// What a pod's policy is built from, as one number: the global inputs
/// ([`MeshState::inputs`]) and the pod's own document. What the daemon keeps of a pod's
/// applied policy: equal inputs build equal policies, and hashing the inputs costs nothing
/// where the policy repeats a MeshConfig's lists of thousands of ranges.
pub fn policy_digest(global: &[u8; 32], pod: Option<&Document>) -> u64 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(global);
    h.update(serde_json::to_vec(&pod.map(|d| &d.doc)).unwrap_or_default());
    u64::from_le_bytes(h.finalize()[..8].try_into().expect("32 bytes"))
}

/// The routes and addresses of a namespace, as one number.
pub fn routes_fingerprint(netns: &Path) -> Result<u64> {
    let snap = routes::snapshot(&Netns::at(netns))?;
    Ok(fingerprint(format!("{snap:?}").as_bytes()))
}

/// Names become file names under the manifest directory: no separators, no dot files.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What applying a policy produced.
struct Applied {
    cookie: Option<u64>,
    routes_fingerprint: Option<u64>,
}

/// Everything a blocking apply/remove needs, owned (it runs on the blocking pool).
#[derive(Clone)]
struct Target {
    mode: Mode,
    netns: PathBuf,
    ips: Vec<IpAddr>,
    pod_name: String,
    pins: PinDir,
    names: ChainNames,
}

impl Target {
    fn of(d: &Daemon, r: &state::PodRecord) -> Target {
        Target {
            mode: r.mode,
            netns: r.netns.clone(),
            ips: r.ips.clone(),
            pod_name: format!("{}/{}", r.namespace, r.name),
            pins: d.cfg.pins.clone(),
            names: d.cfg.names,
        }
    }

    fn iptables_options(&self, policy: Option<&Policy>) -> Result<ApplyOptions> {
        let mut pod_ips = PodIps::given(&self.ips);
        if self.ips.is_empty() && policy.is_some_and(|p| p.local_proxy_mode == LocalProxyMode::PodIp) {
            pod_ips = pod_ips.or_from(routes::snapshot(&Netns::at(&self.netns))?.global_addrs());
        }
        let pod_ips = pod_ips.to_vec();
        Ok(ApplyOptions {
            netns: Netns::at(&self.netns),
            pod_ips,
            families: default_families(),
            families_explicit: false,
            names: self.names,
        })
    }

    /// Programs the policy (eBPF: enroll, an atomic switch when re-enrolling; iptables:
    /// one atomic iptables-restore per family).
    fn apply(&self, policy: &Policy) -> Result<Applied> {
        match self.mode {
            Mode::Ebpf => {
                let fp = routes_fingerprint(&self.netns)?;
                let report = ebpf::enroll(
                    policy,
                    &EnrollOptions {
                        netns: Netns::at(&self.netns),
                        pod_ips: vec![],
                        pin_dir: self.pins.clone(),
                        pod_name: Some(self.pod_name.clone()),
                        // A pod's namespace, never the node's: the check stays on.
                        allow_host_netns: false,
                    },
                )?;
                Ok(Applied { cookie: Some(report.netns_cookie), routes_fingerprint: Some(fp) })
            }
            Mode::Iptables => {
                iptables::apply(policy, &self.iptables_options(Some(policy))?)?;
                // SO_NETNS_COOKIE needs Linux 5.14: informative only in iptables mode.
                Ok(Applied { cookie: Netns::at(&self.netns).cookie().ok(), routes_fingerprint: None })
            }
        }
    }

    /// eBPF: switches an enrolled pod's lists to `policy` without re-reading its routes
    /// (`None`: the policy changes its table or listeners, a full apply is needed).
    fn update(&self, policy: &Policy, cookie: u64, routes_fingerprint: Option<u64>) -> Result<Option<Applied>> {
        if self.mode != Mode::Ebpf || !self.pins.is_loaded() {
            return Ok(None);
        }
        let report = ebpf::enroll::update_policy(&self.pins, cookie, policy)?;
        Ok(report.map(|r| Applied { cookie: Some(r.netns_cookie), routes_fingerprint }))
    }

    /// Removes the interception. `alive`: the namespace at the path is still the pod's.
    fn remove(&self, alive: bool, cookie: Option<u64>) -> Result<()> {
        match self.mode {
            // Nothing loaded: nothing of the pod's is enforced or pinned.
            Mode::Ebpf if !self.pins.is_loaded() => {}
            Mode::Ebpf => {
                if alive {
                    ebpf::unenroll(&Netns::at(&self.netns), &self.pins)?;
                } else if let Some(c) = cookie {
                    ebpf::enroll::unenroll_cookie(&self.pins, c)?;
                }
            }
            // Rules live in the pod's namespace: they die with it.
            Mode::Iptables if alive => {
                iptables::cleanup(&self.iptables_options(None)?)?;
            }
            Mode::Iptables => {}
        }
        Ok(())
    }

    /// What the kernel enforces compared with the policy: problems (empty = in force) and
    /// details for `pods show`.
    fn inspect(&self, policy: &Policy, cookie: Option<u64>) -> Result<(Vec<String>, Value)> {
        match self.mode {
            Mode::Ebpf => {
                let mut problems = Vec::new();
                if !self.pins.is_loaded() {
                    problems.push(format!("eBPF mode is not loaded at {}", self.pins.path().display()));
                }
                let live = Netns::at(&self.netns).cookie().ok();
                if live.is_some() && live != cookie {
                    problems.push("the network namespace is not the one that was enrolled".into());
                }
                let pod = match cookie {
                    Some(c) if self.pins.is_loaded() => ebpf::status::pod_status(&self.pins, c)?,
                    _ => None,
                };
                match &pod {
                    None => problems.push("the pod is not enrolled in the eBPF maps".into()),
                    Some(p) => {
                        if !p.inbound_steering {
                            problems.push("inbound steering (sk_lookup) is not linked to the pod's namespace".into());
                        }
                        if p.proxy_uid != policy.proxy_uid {
                            problems.push(format!("proxy UID {} in force, {} wanted", p.proxy_uid, policy.proxy_uid));
                        }
                        compare(&mut problems, "outbound port exclusions", &p.outbound_port_exclusions, {
                            policy.outbound_port_exclusions.clone()
                        });
                        compare(&mut problems, "inbound port exclusions", &p.inbound_port_exclusions, {
                            policy.inbound_port_exclusions.clone()
                        });
                        let nets = |v: &[crate::policy::Cidr]| -> Vec<String> {
                            v.iter().map(|c| c.net.trunc().to_string()).collect()
                        };
                        compare(
                            &mut problems,
                            "outbound IP range exclusions",
                            p.outbound_ip_range_exclusions.as_deref().unwrap_or_default(),
                            nets(&policy.outbound_ip_range_exclusions),
                        );
                        compare(
                            &mut problems,
                            "outbound IP range inclusions",
                            p.outbound_ip_range_inclusions.as_deref().unwrap_or_default(),
                            nets(&policy.outbound_ip_range_inclusions),
                        );
                    }
                }
                Ok((problems, serde_json::to_value(&pod)?))
            }
            Mode::Iptables => {
                let problems = iptables::verify(policy, &self.iptables_options(Some(policy))?)?;
                Ok((problems.clone(), serde_json::json!({ "iptables_verify": problems })))
            }
        }
    }
}

/// Adds a problem when the sets differ (order and duplicates do not matter).
fn compare<T: Ord + Clone + std::fmt::Debug>(problems: &mut Vec<String>, what: &str, live: &[T], mut want: Vec<T>) {
    let mut live = live.to_vec();
    live.sort();
    live.dedup();
    want.sort();
    want.dedup();
    if live != want {
        problems.push(format!("{what}: {live:?} in force, {want:?} wanted"));
    }
}

/// This executable, hashed once (its version, if it cannot be read): a daemon upgraded in
/// place re-applies every pod once, in case the new build makes other policies.
fn this_build() -> &'static [u8] {
    static BUILD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BUILD.get_or_init(|| {
        use sha2::Digest;
        match std::fs::read("/proc/self/exe") {
            Ok(bytes) => sha2::Sha256::digest(&bytes).to_vec(),
            Err(_) => env!("CARGO_PKG_VERSION").as_bytes().to_vec(),
        }
    })
}

/// A pod's policy as the daemon builds it.
struct PodPolicy<P = Policy> {
    policy: P,
    source: AnnotationSource,
    /// The MeshConfig generation it was built under.
    generation: u64,
    digest: u64,
}

async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T>
where
    T: Send + 'static,
    E: Into<anyhow::Error> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.context("blocking task failed")?.map_err(Into::into)
}

impl Daemon {
    pub fn new(cfg: Config, records: Vec<state::PodRecord>, mut mesh: MeshState) -> Daemon {
        mesh.inputs = MeshState::inputs_of(&cfg.flags, mesh.doc.as_ref());
        Daemon {
            metrics: DaemonMetrics::new(cfg.mode),
            cfg,
            pods: Mutex::new(records.into_iter().map(|r| (r.id.clone(), r)).collect()),
            locks: Mutex::new(HashMap::new()),
            membership: tokio::sync::RwLock::new(()),
            watchers: Mutex::new(HashMap::new()),
            mesh: RwLock::new(mesh),
            save_lock: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
            counters: Counters::default(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn lock_of(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().unwrap().entry(id.to_string()).or_default().clone()
    }

    pub fn record(&self, id: &str) -> Option<state::PodRecord> {
        self.pods.lock().unwrap().get(id).cloned()
    }

    pub fn records(&self) -> Vec<state::PodRecord> {
        self.pods.lock().unwrap().values().cloned().collect()
    }

    pub fn ids(&self) -> Vec<String> {
        self.pods.lock().unwrap().keys().cloned().collect()
    }

    fn put(&self, r: state::PodRecord) {
        self.pods.lock().unwrap().insert(r.id.clone(), r);
    }

    fn forget(&self, id: &str) {
        self.pods.lock().unwrap().remove(id);
        self.stop_watcher(id);
    }

    /// Writes the state file (serialized: the last snapshot taken is the last written).
    pub async fn save(&self) {
        let _guard = self.save_lock.lock().await;
        let st = state::State {
            format: 0,
            pods: self.records(),
            mesh_config_last_good: self.mesh.read().unwrap().raw.clone(),
        };
        let dir = self.cfg.state_dir.clone();
        if let Err(e) = blocking(move || state::save(&dir, &st)).await {
            self.counters.inc("state_save_failed");
            tracing::error!("cannot save the daemon state: {e:#}");
        }
    }

    /// The pod's annotations document and where it came from.
    fn pod_document(
        &self,
        namespace: &str,
        name: &str,
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Result<(Option<Document>, AnnotationSource), Failure> {
        if let Some(a) = annotations {
            let shown = format!("pod {namespace}/{name} (annotations from the runtime)");
            return Ok((Some(Document::pod_annotations(shown, a)), AnnotationSource::Runtime));
        }
        let Some(dir) = &self.cfg.pod_manifest_dir else { return Ok((None, AnnotationSource::None)) };
        for ext in ["yaml", "yml", "json"] {
            let path = dir.join(namespace).join(format!("{name}.{ext}"));
            if path.is_file() {
                let doc = read_manifest(&path).map_err(|e| {
                    Failure::new(422, codes::INVALID_POLICY, format!("invalid policy; nothing was applied: {e}"))
                })?;
                let shown = path.display().to_string();
                return Ok((Some(Document { shown: shown.clone(), doc }), AnnotationSource::Manifest { path: shown }));
            }
        }
        Ok((None, AnnotationSource::None))
    }

    /// The pod's merged policy under the MeshConfig in force, where its annotations came
    /// from, that MeshConfig's generation and the policy's digest ([`policy_digest`]).
    fn pod_policy(
        &self,
        namespace: &str,
        name: &str,
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Result<PodPolicy, Failure> {
        let PodPolicy { policy, source, generation, digest } =
            self.pod_policy_unless(namespace, name, annotations, None)?;
        Ok(PodPolicy { policy: policy.expect("built when no digest is given"), source, generation, digest })
    }

    /// [`Self::pod_policy`], without building the policy (`policy: None`) when its digest is
    /// `unchanged`.
    fn pod_policy_unless(
        &self,
        namespace: &str,
        name: &str,
        annotations: Option<&BTreeMap<String, String>>,
        unchanged: Option<u64>,
    ) -> Result<PodPolicy<Option<Policy>>, Failure> {
        let (doc, source) = self.pod_document(namespace, name, annotations)?;
        let mesh = self.mesh.read().unwrap();
        let digest = policy_digest(&mesh.inputs, doc.as_ref());
        if unchanged == Some(digest) {
            return Ok(PodPolicy { policy: None, source, generation: mesh.generation, digest });
        }
        let built = match &mesh.global {
            Some(global) => global.policy_for(&self.cfg.flags, doc.as_ref()),
            None => build_policy_from_documents(&self.cfg.flags, mesh.doc.as_ref(), doc.as_ref()),
        };
        let (policy, warnings) = built.map_err(|e| Failure::new(422, codes::INVALID_POLICY, e.to_string()))?;
        for w in warnings {
            tracing::warn!("pod {namespace}/{name}: {w}");
        }
        Ok(PodPolicy { policy: Some(policy), source, generation: mesh.generation, digest })
    }

    pub fn view(&self, r: &state::PodRecord) -> PodView {
        PodView {
            id: r.id.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            netns: r.netns.display().to_string(),
            mode: r.mode,
            netns_cookie: r.netns_cookie,
            ips: r.ips.clone(),
            annotations_from: r.annotations_from.clone(),
            policy: None,
            policy_digest: r.policy_digest.map(|d| format!("{d:016x}")),
            added_at: r.added_at,
            applied_at: r.applied_at,
            applies: r.applies,
            last_reason: r.last_reason.clone(),
            last_error: r.last_error.clone(),
            enforcement: None,
            problems: Vec::new(),
            observed_problems: Vec::new(),
        }
    }

    /// `POST /v1/pods`. Returns the pod and whether it is new.
    pub async fn add(self: &Arc<Self>, req: AddPod) -> Result<(PodView, bool), Failure> {
        let bad = |m: String| Failure::new(400, codes::BAD_REQUEST, m);
        if req.container_id.is_empty() || !valid_name(&req.container_id) {
            return Err(bad(format!("invalid container_id {:?}", req.container_id)));
        }
        let namespace = req.namespace.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "default".into());
        let name = req.name.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| req.container_id.clone());
        for (what, v) in [("namespace", &namespace), ("name", &name)] {
            if !valid_name(v) {
                return Err(bad(format!("invalid pod {what} {v:?}")));
            }
        }
        let netns = PathBuf::from(&req.netns);
        if !netns.is_absolute() {
            return Err(bad(format!("netns must be an absolute path, got {:?}", req.netns)));
        }
        let _member = self.membership.read().await;
        let lock = self.lock_of(&req.container_id);
        let _guard = lock.lock().await;
        let t0 = Instant::now();
        let (dev, ino) = netns_identity(&netns).map_err(|e| {
            Failure::new(422, codes::NETNS_NOT_FOUND, format!("network namespace {}: {e}", netns.display()))
        })?;
        if let Some(other) =
            self.records().into_iter().find(|r| r.id != req.container_id && r.netns_dev == dev && r.netns_ino == ino)
        {
            return Err(Failure::new(
                409,
                codes::NETNS_IN_USE,
                format!(
                    "network namespace {} already belongs to pod {} (id {})",
                    netns.display(),
                    other.name,
                    other.id
                ),
            ));
        }
        let previous = self.record(&req.container_id);
        // A container ID seen again with another namespace: the old one's interception goes first.
        if let Some(old) = previous.as_ref().filter(|o| (o.netns_dev, o.netns_ino) != (dev, ino)) {
            let t = Target::of(self, old);
            let alive = netns_identity(&old.netns).ok() == Some((old.netns_dev, old.netns_ino));
            let cookie = old.netns_cookie;
            let started = Instant::now();
            let removed = blocking(move || t.remove(alive, cookie)).await;
            self.metrics.operation(Operation::Unenroll, old.mode, removed.is_ok(), Some(started.elapsed()));
            removed.map_err(|e| Failure::new(500, codes::REMOVE_FAILED, format!("{e:#}")))?;
            self.forget(&old.id);
        }
        let previous = previous.filter(|o| (o.netns_dev, o.netns_ino) == (dev, ino));
        let PodPolicy { policy, source, generation, digest } =
            self.pod_policy(&namespace, &name, req.annotations.as_ref())?;
        let mode = previous.as_ref().map(|p| p.mode).unwrap_or(self.cfg.mode);
        let mut record = state::PodRecord {
            id: req.container_id.clone(),
            namespace,
            name,
            netns: netns.clone(),
            netns_dev: dev,
            netns_ino: ino,
            mode,
            netns_cookie: None,
            ips: req.ips.clone(),
            annotations: req.annotations.clone(),
            annotations_from: source,
            policy_digest: Some(digest),
            routes_fingerprint: None,
            added_at: previous.as_ref().map(|p| p.added_at).unwrap_or_else(now),
            applied_at: now(),
            applies: previous.as_ref().map(|p| p.applies).unwrap_or(0) + 1,
            last_reason: "add".into(),
            last_error: None,
        };
        let target = Target::of(self, &record);
        let op = if previous.is_some() { Operation::Reenroll } else { Operation::Enroll };
        let started = Instant::now();
        let applied = blocking(move || target.apply(&policy)).await;
        self.metrics.operation(op, mode, applied.is_ok(), Some(started.elapsed()));
        let applied = applied.map_err(|e| {
            self.counters.inc("apply_failed");
            Failure::new(500, codes::APPLY_FAILED, format!("{e:#}"))
        })?;
        record.netns_cookie = applied.cookie;
        record.routes_fingerprint = applied.routes_fingerprint;
        self.counters.inc("apply_ok");
        tracing::info!(
            "pod {}/{} ({}) added in {} mode: {} in {:?}",
            record.namespace,
            record.name,
            record.id,
            record.mode,
            record.netns.display(),
            t0.elapsed()
        );
        let id = record.id.clone();
        let ebpf = record.mode == Mode::Ebpf;
        self.put(record);
        if ebpf {
            self.ensure_watcher(&id, &netns);
        }
        self.save().await;
        // A MeshConfig reload that happened meanwhile may have missed this pod.
        if self.mesh.read().unwrap().generation != generation {
            self.reapply_locked(&id, "mesh-config", false).await;
            self.save().await;
        }
        let view = self.view(&self.record(&id).expect("just added"));
        Ok((view, previous.is_none()))
    }

    /// `DELETE /v1/pods/{id}`.
    pub async fn delete(self: &Arc<Self>, id: &str) -> Result<Deleted, Failure> {
        let _member = self.membership.read().await;
        let lock = self.lock_of(id);
        let guard = lock.lock().await;
        let Some(r) = self.record(id) else {
            return Err(Failure::new(404, codes::POD_NOT_FOUND, format!("no pod with id {id}")));
        };
        self.stop_watcher(id);
        let alive = netns_identity(&r.netns).ok() == Some((r.netns_dev, r.netns_ino));
        let t = Target::of(self, &r);
        let cookie = r.netns_cookie;
        let started = Instant::now();
        let removed = blocking(move || t.remove(alive, cookie)).await;
        self.metrics.operation(Operation::Unenroll, r.mode, removed.is_ok(), Some(started.elapsed()));
        if let Err(e) = removed {
            self.counters.inc("remove_failed");
            if r.mode == Mode::Ebpf && alive {
                self.ensure_watcher(id, &r.netns);
            }
            return Err(Failure::new(500, codes::REMOVE_FAILED, format!("{e:#}")));
        }
        self.forget(id);
        drop(guard);
        self.locks.lock().unwrap().remove(id);
        self.save().await;
        tracing::info!("pod {}/{} ({id}) removed", r.namespace, r.name);
        Ok(Deleted { id: id.to_string(), mode: r.mode })
    }

    /// `GET /v1/pods/{id}/check`, and `show`'s enforcement details.
    pub async fn inspect(self: &Arc<Self>, id: &str) -> Result<(PodView, Vec<String>), Failure> {
        let lock = self.lock_of(id);
        let _guard = lock.lock().await;
        let Some(r) = self.record(id) else {
            return Err(Failure::new(404, codes::POD_NOT_FOUND, format!("no pod with id {id}")));
        };
        let mut problems = Vec::new();
        if netns_identity(&r.netns).ok() != Some((r.netns_dev, r.netns_ino)) {
            problems.push(format!("network namespace {} is gone", r.netns.display()));
        }
        if let Some(e) = &r.last_error {
            problems.push(format!("the last re-apply failed (the previous policy stays in force): {e}"));
        }
        let policy = self.pod_policy(&r.namespace, &r.name, r.annotations.as_ref())?.policy;
        let mut view = self.view(&r);
        view.policy = Some(serde_json::to_value(&policy).unwrap_or_default());
        if problems.is_empty() {
            let t = Target::of(self, &r);
            let cookie = r.netns_cookie;
            match blocking(move || t.inspect(&policy, cookie)).await {
                Ok((p, details)) => {
                    problems.extend(p);
                    if let Some(serde_json::Value::Array(observed)) = details.get("problems") {
                        view.observed_problems =
                            observed.iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
                    }
                    view.enforcement = Some(details);
                }
                Err(e) => problems.push(format!("cannot inspect: {e:#}")),
            }
        }
        Ok((view, problems))
    }

    pub async fn check(self: &Arc<Self>, id: &str) -> Result<CheckResult, Failure> {
        let (view, problems) = self.inspect(id).await?;
        Ok(CheckResult { id: view.id, mode: view.mode, problems })
    }

    pub fn list(&self) -> PodList {
        PodList { pods: self.records().iter().map(|r| self.view(r)).collect() }
    }

    /// Re-applies one pod's policy (under its lock). `force`: even if the policy is the
    /// same (routes changed, repair). Failures keep the previous policy in force and are
    /// recorded on the pod.
    pub async fn reapply(self: &Arc<Self>, id: &str, reason: &str, force: bool) -> bool {
        let lock = self.lock_of(id);
        let _guard = lock.lock().await;
        self.reapply_locked(id, reason, force).await
    }

    async fn reapply_locked(self: &Arc<Self>, id: &str, reason: &str, force: bool) -> bool {
        let Some(mut r) = self.record(id) else { return false };
        if netns_identity(&r.netns).ok() != Some((r.netns_dev, r.netns_ino)) {
            return false; // gone: the reconcile removes it
        }
        // Unchanged inputs need no policy built (unless forced, or the last apply failed).
        let unchanged = if force || r.last_error.is_some() { None } else { r.policy_digest };
        let (policy, digest) = match self.pod_policy_unless(&r.namespace, &r.name, r.annotations.as_ref(), unchanged) {
            Ok(PodPolicy { policy: None, .. }) => return false,
            Ok(PodPolicy { policy: Some(p), source, digest, .. }) => {
                r.annotations_from = source;
                (p, digest)
            }
            Err(f) => {
                tracing::error!("pod {}/{}: {} (the previous policy stays in force)", r.namespace, r.name, f.message);
                self.counters.inc("apply_failed");
                self.metrics.operation(Operation::Reenroll, r.mode, false, None);
                r.last_error = Some(f.message);
                self.put(r);
                return false;
            }
        };
        let t = Target::of(self, &r);
        // A policy change alone (MeshConfig, manifest) keeps an eBPF pod's table (its routes
        // are watched apart): only its lists switch, without re-reading its routes.
        let policy_only = !force && r.mode == Mode::Ebpf && r.last_error.is_none();
        let (cookie, fingerprint) = (r.netns_cookie, r.routes_fingerprint);
        let apply = move || {
            if let (true, Some(c)) = (policy_only, cookie)
                && let Some(applied) = t.update(&policy, c, fingerprint)?
            {
                return Ok(applied);
            }
            t.apply(&policy)
        };
        let applying = Instant::now();
        let result = blocking(apply).await;
        self.metrics.operation(Operation::Reenroll, r.mode, result.is_ok(), Some(applying.elapsed()));
        match result {
            Ok(applied) => {
                self.counters.inc("apply_ok");
                self.counters.inc(&format!("reapply_{}", reason.replace('-', "_")));
                tracing::info!(
                    "pod {}/{}: policy re-applied ({reason}) in {:?}",
                    r.namespace,
                    r.name,
                    applying.elapsed()
                );
                r.policy_digest = Some(digest);
                r.netns_cookie = applied.cookie.or(r.netns_cookie);
                r.routes_fingerprint = applied.routes_fingerprint;
                r.applied_at = now();
                r.applies += 1;
                r.last_reason = reason.to_string();
                r.last_error = None;
                self.put(r);
                true
            }
            Err(e) => {
                self.counters.inc("apply_failed");
                tracing::error!(
                    "pod {}/{}: re-applying ({reason}) failed, the previous policy stays in force: {e:#}",
                    r.namespace,
                    r.name
                );
                r.last_error = Some(format!("{e:#}"));
                self.put(r);
                false
            }
        }
    }

    /// Re-applies every pod whose policy changed (after a MeshConfig or manifest edit).
    pub async fn reapply_all(self: &Arc<Self>, reason: &str, filter: impl Fn(&state::PodRecord) -> bool) {
        let ids: Vec<String> = self.records().into_iter().filter(|r| filter(r)).map(|r| r.id).collect();
        let started = Instant::now();
        // Pods are independent (each under its own lock; the kernel's maps under the
        // installation's lock): as many at once as there are CPUs, so that building one
        // pod's policy overlaps another's switch.
        let width = std::thread::available_parallelism().map_or(1, |n| n.get());
        let slots = Arc::new(tokio::sync::Semaphore::new(width));
        let mut running = tokio::task::JoinSet::new();
        let total = ids.len();
        for id in ids {
            let slot = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
            let (d, reason) = (self.clone(), reason.to_string());
            running.spawn(async move {
                let _slot = slot;
                d.reapply(&id, &reason, false).await
            });
        }
        let mut changed = 0;
        while let Some(done) = running.join_next().await {
            match done {
                Ok(true) => changed += 1,
                Ok(false) => {}
                Err(e) => tracing::error!("{reason}: a re-apply task failed: {e}"),
            }
        }
        if total > 0 {
            tracing::info!("{reason}: {changed} of {total} pod(s) re-applied in {:?}", started.elapsed());
            self.save().await;
        }
    }

    /// eBPF pods: re-enrolls when the routes or addresses differ from those compiled.
    pub async fn reapply_if_routes_changed(self: &Arc<Self>, id: &str) {
        let lock = self.lock_of(id);
        let _guard = lock.lock().await;
        let Some(r) = self.record(id) else { return };
        if r.mode != Mode::Ebpf || netns_identity(&r.netns).ok() != Some((r.netns_dev, r.netns_ino)) {
            return;
        }
        let path = r.netns.clone();
        match blocking(move || routes_fingerprint(&path)).await {
            Ok(fp) if Some(fp) == r.routes_fingerprint => {}
            Ok(_) => {
                if self.reapply_locked(id, "routes", true).await {
                    self.save().await;
                }
            }
            Err(e) => tracing::warn!("pod {}/{}: cannot read its routes: {e:#}", r.namespace, r.name),
        }
    }

    /// Removes a pod whose namespace is gone (no DEL came, or it came while we were down).
    pub async fn remove_gone(self: &Arc<Self>, id: &str) {
        let _member = self.membership.read().await;
        let lock = self.lock_of(id);
        let _guard = lock.lock().await;
        let Some(r) = self.record(id) else { return };
        if netns_identity(&r.netns).ok() == Some((r.netns_dev, r.netns_ino)) {
            return;
        }
        self.stop_watcher(id);
        let t = Target::of(self, &r);
        let cookie = r.netns_cookie;
        let started = Instant::now();
        let removed = blocking(move || t.remove(false, cookie)).await;
        self.metrics.operation(Operation::Unenroll, r.mode, removed.is_ok(), Some(started.elapsed()));
        match removed {
            Ok(()) => {
                tracing::info!(
                    "pod {}/{} ({id}): network namespace {} is gone; removed",
                    r.namespace,
                    r.name,
                    r.netns.display()
                );
                self.counters.inc("removed_gone");
                self.forget(id);
            }
            Err(e) => {
                tracing::error!("pod {}/{}: cannot remove it after its namespace went: {e:#}", r.namespace, r.name)
            }
        }
    }

    /// Adds a record for an eBPF pod found pinned without one (state file lost), or
    /// unenrolls it if its namespace is gone.
    pub async fn adopt_pinned(self: &Arc<Self>, cookie: u64, netns: String, pod_name: String) {
        let member = self.membership.write().await;
        // What the caller read may be stale: an add or a removal may have finished since.
        let pins = self.cfg.pins.clone();
        let still_pinned = blocking(move || {
            Ok::<_, ebpf::EbpfError>(ebpf::maps::PinnedMaps::open(&pins)?.pods.get(&cookie, 0).is_ok())
        })
        .await
        .unwrap_or(false);
        if !still_pinned || self.records().iter().any(|r| r.netns_cookie == Some(cookie)) {
            return;
        }
        let path = PathBuf::from(&netns);
        let live = {
            let p = path.clone();
            blocking(move || Netns::at(&p).cookie()).await.ok()
        };
        if live != Some(cookie) {
            let pins = self.cfg.pins.clone();
            let started = Instant::now();
            let removed = blocking(move || ebpf::enroll::unenroll_cookie(&pins, cookie)).await;
            self.metrics.operation(Operation::Unenroll, Mode::Ebpf, removed.is_ok(), Some(started.elapsed()));
            match removed {
                Ok(_) => {
                    tracing::info!("unenrolled orphaned pod {pod_name:?} (netns cookie {cookie}): {netns} is gone")
                }
                Err(e) => tracing::error!("cannot unenroll orphaned netns cookie {cookie}: {e:#}"),
            }
            self.counters.inc("removed_gone");
            return;
        }
        let Ok((dev, ino)) = netns_identity(&path) else { return };
        let (namespace, name) = match pod_name.split_once('/') {
            Some((ns, n)) if valid_name(ns) && valid_name(n) => (ns.to_string(), n.to_string()),
            _ => ("default".to_string(), format!("netns-{cookie}")),
        };
        let id = format!("netns-{cookie}");
        tracing::warn!("adopting pod {namespace}/{name} (netns cookie {cookie}, {netns}) enrolled without a record");
        self.put(state::PodRecord {
            id: id.clone(),
            namespace,
            name,
            netns: path.clone(),
            netns_dev: dev,
            netns_ino: ino,
            mode: Mode::Ebpf,
            netns_cookie: Some(cookie),
            ips: vec![],
            annotations: None,
            annotations_from: AnnotationSource::None,
            policy_digest: None,
            routes_fingerprint: None,
            added_at: now(),
            applied_at: now(),
            applies: 0,
            last_reason: "adopted".into(),
            last_error: None,
        });
        drop(member);
        self.reapply(&id, "adopted", true).await;
        self.ensure_watcher(&id, &path);
    }

    /// Starts the pod's route watcher unless one runs.
    pub fn ensure_watcher(self: &Arc<Self>, id: &str, netns: &Path) {
        let mut w = self.watchers.lock().unwrap();
        if w.get(id).is_some_and(|h| !h.is_finished()) {
            return;
        }
        let handle = super::netwatch::spawn(self.clone(), id.to_string(), netns.to_path_buf());
        w.insert(id.to_string(), handle);
    }

    pub fn stop_watcher(&self, id: &str) {
        if let Some(h) = self.watchers.lock().unwrap().remove(id) {
            h.abort();
        }
    }

    pub fn stop_all_watchers(&self) {
        for (_, h) in self.watchers.lock().unwrap().drain() {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Document {
        Document { shown: "test".into(), doc: serde_json::from_str(text).expect("json") }
    }

    /// A pod's digest changes with what its policy is built from, and only with that: a
    /// re-apply skips a pod only when its policy would be the same.
    #[test]
    fn a_pods_digest_follows_its_policys_inputs() {
        let flags = FlagValues::default();
        let mesh = doc(r#"{"spec":{"traffic":{"outboundIPRangeExclusionList":["10.0.0.0/8"]}}}"#);
        let same_mesh = doc(r#"{ "spec": { "traffic": { "outboundIPRangeExclusionList": [ "10.0.0.0/8" ] } } }"#);
        let other_mesh = doc(r#"{"spec":{"traffic":{"outboundIPRangeExclusionList":["10.0.0.0/16"]}}}"#);
        let inputs = MeshState::inputs_of(&flags, Some(&mesh));
        assert_eq!(inputs, MeshState::inputs_of(&flags, Some(&same_mesh)), "layout alone changes nothing");
        assert_ne!(inputs, MeshState::inputs_of(&flags, Some(&other_mesh)));
        assert_ne!(inputs, MeshState::inputs_of(&flags, None));
        let other_flags = FlagValues { outbound_port_exclusion_list: vec!["6379".into()], ..Default::default() };
        assert_ne!(inputs, MeshState::inputs_of(&other_flags, Some(&mesh)));

        let pod = doc(r#"{"metadata":{"annotations":{"openservicemesh.io/outbound-port-exclusion-list":"80"}}}"#);
        let other_pod = doc(r#"{"metadata":{"annotations":{"openservicemesh.io/outbound-port-exclusion-list":"81"}}}"#);
        let d = policy_digest(&inputs, Some(&pod));
        assert_eq!(d, policy_digest(&inputs, Some(&pod)));
        assert_ne!(d, policy_digest(&inputs, Some(&other_pod)));
        assert_ne!(d, policy_digest(&inputs, None));
        assert_ne!(d, policy_digest(&MeshState::inputs_of(&flags, Some(&other_mesh)), Some(&pod)));
    }
}
