//! The daemon's event counters by name (API requests by operation and result, applies,
//! MeshConfig reloads, removals of pods whose namespace went). `GET /v1/status` shows
//! them; they are the raw material of the Prometheus metrics.
use std::{collections::BTreeMap, sync::Mutex};

#[derive(Debug, Default)]
pub struct Counters {
    map: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    pub fn inc(&self, name: &str) {
        *self.map.lock().unwrap().entry(name.to_string()).or_default() += 1;
    }

    pub fn get(&self, name: &str) -> u64 {
        self.map.lock().unwrap().get(name).copied().unwrap_or(0)
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.map.lock().unwrap().clone()
    }
}
