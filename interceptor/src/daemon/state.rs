//! What the daemon must remember across restarts that the kernel does not hold: which pods
//! it added (their IDs, names, annotations, network namespaces, mode) and the last valid
//! MeshConfig. eBPF state itself stays pinned (the maps are the truth for what is
//! enforced); this file is written atomically (temporary file, fsync, rename) after every
//! change, so a crash leaves either the previous or the new version.
use std::{
    collections::BTreeMap,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    api::{AnnotationSource, Mode},
    files::write_atomically,
};

pub const STATE_FILE: &str = "pods.json";
/// 2: a pod's applied policy is kept as a digest (format 1 kept the whole policy, every
/// global list copied into every pod: hundreds of MB at a thousand pods).
const FORMAT: u32 = 2;
/// Format 1 is still read: its records have no digest, and are re-applied once at start.
const OLDEST_READABLE: u32 = 1;

/// One pod the daemon intercepts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PodRecord {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub netns: PathBuf,
    /// The namespace's identity when it was added (device and inode of its nsfs file): a
    /// path that now names another namespace (or none) means the pod is gone.
    pub netns_dev: u64,
    pub netns_ino: u64,
    pub mode: Mode,
    #[serde(default)]
    pub netns_cookie: Option<u64>,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// Annotations as the runtime passed them (None: read from the manifest directory).
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    pub annotations_from: AnnotationSource,
    /// The digest of the policy last applied ([`super::core::policy_digest`]), to tell
    /// whether a change needs a re-apply. `None`: not known (adopted, or written by format
    /// 1): the next re-apply does not skip.
    #[serde(default)]
    pub policy_digest: Option<u64>,
    /// A fingerprint of the routes and addresses the eBPF policy was compiled with.
    #[serde(default)]
    pub routes_fingerprint: Option<u64>,
    pub added_at: u64,
    pub applied_at: u64,
    pub applies: u64,
    pub last_reason: String,
    #[serde(default)]
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    pub pods: Vec<PodRecord>,
    /// The text of the last MeshConfig that was valid (kept in force when an edit is not).
    #[serde(default)]
    pub mesh_config_last_good: Option<String>,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Reads the state (empty when there is none yet).
pub fn load(dir: &Path) -> Result<State> {
    let p = path(dir);
    match fs::read(&p) {
        Ok(bytes) => {
            let s: State = serde_json::from_slice(&bytes).with_context(|| format!("{} is corrupt", p.display()))?;
            anyhow::ensure!(
                (OLDEST_READABLE..=FORMAT).contains(&s.format),
                "{} has format {} (this build reads {OLDEST_READABLE} to {FORMAT})",
                p.display(),
                s.format
            );
            Ok(s)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State { format: FORMAT, ..Default::default() }),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
    }
}

/// Writes the state atomically.
pub fn save(dir: &Path, state: &State) -> Result<()> {
    let mut state = state.clone();
    state.format = FORMAT;
    let bytes = serde_json::to_vec_pretty(&state)?;
    Ok(write_atomically(&path(dir), &bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_writes_are_atomic() {
        let dir = std::env::temp_dir().join(format!("interceptor-state-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        assert!(load(&dir).unwrap().pods.is_empty(), "no file yet: empty state");
        let rec = PodRecord {
            id: "c1".into(),
            namespace: "default".into(),
            name: "web".into(),
            netns: "/var/run/netns/x".into(),
            netns_dev: 4,
            netns_ino: 4026532000,
            mode: Mode::Iptables,
            netns_cookie: None,
            ips: vec!["198.51.100.2".parse().unwrap()],
            annotations: Some(BTreeMap::from([("a".into(), "b".into())])),
            annotations_from: AnnotationSource::Runtime,
            policy_digest: Some(0x1234_5678_9abc_def0),
            routes_fingerprint: Some(7),
            added_at: 1,
            applied_at: 2,
            applies: 1,
            last_reason: "add".into(),
            last_error: None,
        };
        let state =
            State { format: FORMAT, pods: vec![rec.clone()], mesh_config_last_good: Some("kind: MeshConfig".into()) };
        save(&dir, &state).unwrap();
        let back = load(&dir).unwrap();
        assert_eq!(back.pods, vec![rec]);
        assert_eq!(back.mesh_config_last_good.as_deref(), Some("kind: MeshConfig"));
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from(STATE_FILE)], "no temporary file is left behind");
        fs::write(path(&dir), b"{not json").unwrap();
        assert!(load(&dir).unwrap_err().to_string().contains("corrupt"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_format_1_state_is_read_without_digests_and_a_newer_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("interceptor-state-v1-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // As format 1 wrote it: the whole policy with every pod.
        let v1 = serde_json::json!({"format": 1, "pods": [{
            "id": "c1", "namespace": "default", "name": "web", "netns": "/var/run/netns/x",
            "netns_dev": 4, "netns_ino": 5, "mode": "ebpf", "netns_cookie": 9,
            "annotations_from": {"kind": "none"},
            "policy": {"proxy_uid": 1500, "outbound_ip_range_exclusions": [{"text": "10.0.0.0/8"}]},
            "added_at": 1, "applied_at": 2, "applies": 1, "last_reason": "add"}]});
        fs::write(path(&dir), serde_json::to_vec(&v1).unwrap()).unwrap();
        let st = load(&dir).unwrap();
        assert_eq!(st.pods.len(), 1);
        assert_eq!(st.pods[0].netns_cookie, Some(9));
        assert_eq!(st.pods[0].policy_digest, None, "unknown: the next re-apply does not skip the pod");
        save(&dir, &st).unwrap();
        let written: serde_json::Value = serde_json::from_slice(&fs::read(path(&dir)).unwrap()).unwrap();
        assert_eq!(written["format"], FORMAT);
        assert!(written["pods"][0].get("policy").is_none(), "the policy itself is no longer kept: {written}");
        fs::write(path(&dir), br#"{"format": 99, "pods": []}"#).unwrap();
        assert!(load(&dir).unwrap_err().to_string().contains("has format 99"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
