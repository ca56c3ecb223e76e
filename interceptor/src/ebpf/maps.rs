//! Typed handles on the pinned maps, for the loader, enroll and status.
use std::path::Path;

use std::os::fd::{AsFd, BorrowedFd};

use aya::maps::{Array, HashMap, IterableMap, LpmTrie, Map, MapData, PerCpuHashMap};
use interceptor_common::{
    CidrData, CidrKey, ConnKey, CounterKey, GenerationChunk, GenerationKey, IfaceKey, ObjectInfo, OrigDst, PodAddrKey,
    PodConfig, PodInfo, PortKey, RouteValue, Settings, Tracking, map_names,
};

use super::{EbpfError, PinDir, error::Context};

type Result<T, E = EbpfError> = std::result::Result<T, E>;

pub struct PinnedMaps {
    pub pods: HashMap<MapData, u64, PodConfig>,
    pub pod_addrs: HashMap<MapData, PodAddrKey, u64>,
    pub generations: HashMap<MapData, GenerationKey, GenerationChunk>,
    pub objects: HashMap<MapData, u32, ObjectInfo>,
    pub excluded: LpmTrie<MapData, CidrData, u8>,
    pub included: LpmTrie<MapData, CidrData, u8>,
    pub routes: LpmTrie<MapData, CidrData, RouteValue>,
    pub ports: HashMap<MapData, PortKey, u8>,
    pub ifaces: HashMap<MapData, IfaceKey, u8>,
    pub counters: PerCpuHashMap<MapData, CounterKey, u64>,
    pub settings: Array<MapData, Settings>,
    pub pod_info: HashMap<MapData, u64, PodInfo>,
    pub handoff: HashMap<MapData, ConnKey, OrigDst>,
    pub node_tracking: Array<MapData, Tracking>,
    pub pod_tracking: HashMap<MapData, u64, Tracking>,
}

fn open(path: &Path) -> Result<MapData> {
    MapData::from_pin(path).with_context(|| format!("cannot open pinned map {}", path.display()))
}

impl PinnedMaps {
    pub fn open(pins: &PinDir) -> Result<PinnedMaps> {
        use map_names::*;
        let m = |name: &str| open(&pins.map(name));
        Ok(PinnedMaps {
            pods: HashMap::try_from(Map::HashMap(m(PODS)?))?,
            pod_addrs: HashMap::try_from(Map::HashMap(m(POD_ADDRS)?))?,
            generations: HashMap::try_from(Map::HashMap(m(GENERATIONS)?))?,
            objects: HashMap::try_from(Map::HashMap(m(OBJECTS)?))?,
            excluded: LpmTrie::try_from(Map::LpmTrie(m(EXCLUDED_CIDRS)?))?,
            included: LpmTrie::try_from(Map::LpmTrie(m(INCLUDED_CIDRS)?))?,
            routes: LpmTrie::try_from(Map::LpmTrie(m(ROUTES)?))?,
            ports: HashMap::try_from(Map::HashMap(m(PORTS)?))?,
            ifaces: HashMap::try_from(Map::HashMap(m(IFACES)?))?,
            counters: PerCpuHashMap::try_from(Map::PerCpuHashMap(m(COUNTERS)?))?,
            settings: Array::try_from(Map::Array(m(SETTINGS)?))?,
            pod_info: HashMap::try_from(Map::HashMap(m(POD_INFO)?))?,
            handoff: HashMap::try_from(Map::HashMap(m(HANDOFF)?))?,
            node_tracking: Array::try_from(Map::Array(m(NODE_TRACKING)?))?,
            pod_tracking: HashMap::try_from(Map::HashMap(m(POD_TRACKING)?))?,
        })
    }

    pub fn settings(&self) -> Result<Settings> {
        Ok(self.settings.get(&0, 0)?)
    }
}

/// Every entry of a (not per-CPU) map, read in a few batch calls.
pub fn read_all<M, K, V>(map: &M) -> Result<Vec<(K, V)>>
where
    M: IterableMap<K, V>,
    K: aya::Pod + bytemuck::Pod,
    V: aya::Pod + bytemuck::Pod,
{
    read_batch(map.map().fd().as_fd())
}

/// Every entry of an LPM trie (`EXCLUDED_CIDRS`, `INCLUDED_CIDRS`, `ROUTES`), read in a few
/// batch calls.
pub fn read_trie<V>(trie: &LpmTrie<MapData, CidrData, V>) -> Result<Vec<(CidrKey, V)>>
where
    V: aya::Pod + bytemuck::Pod,
{
    read_batch(trie.map().fd().as_fd())
}

/// Every entry of the map behind `fd`, keys and values decoded as `K` and `V`.
fn read_batch<K: bytemuck::Pod, V: bytemuck::Pod>(fd: BorrowedFd<'_>) -> Result<Vec<(K, V)>> {
    let (keys, values, n) =
        super::raw::lookup_batch(fd, size_of::<K>(), size_of::<V>()).context("reading a map (BPF_MAP_LOOKUP_BATCH)")?;
    Ok((0..n)
        .map(|i| {
            let k = bytemuck::pod_read_unaligned(&keys[i * size_of::<K>()..(i + 1) * size_of::<K>()]);
            let v = bytemuck::pod_read_unaligned(&values[i * size_of::<V>()..(i + 1) * size_of::<V>()]);
            (k, v)
        })
        .collect())
}

/// Decodes a NUL-padded byte field.
pub fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Encodes a string into a NUL-padded byte field (truncated to fit).
pub fn fill<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let b = s.as_bytes();
    let n = b.len().min(N - 1);
    out[..n].copy_from_slice(&b[..n]);
    out
}
