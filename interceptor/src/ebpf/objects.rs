//! Policy objects: the immutable sets of policy map entries that pods refer to by id (see
//! `interceptor_common::PodConfig`), each stored once however many pods refer to it.
//!
//! An object's id is derived from its content (SHA-256 of its kind and entries, see
//! `compile::Object::digest`): an enroll whose lists equal a stored object's finds it in
//! `OBJECTS` and refers to it instead of writing a copy. Two different contents never share
//! an id: the full digest is compared, and a taken id moves the new object to the next free
//! one.
//!
//! Order of writes, so that a command killed anywhere leaves nothing a pod could see half
//! made and nothing the next command cannot find:
//! * writing: the record list (`GENERATIONS`: which keys the object owns) first, then the
//!   entries, then its `OBJECTS` entry — a registered object is complete;
//! * deleting (only once no `PODS` entry refers to it, after an RCU grace period): its
//!   `OBJECTS` entry first — a half-deleted object is never reused — then the entries, then
//!   the record list, which names what is left until the end.
//!
//! Reference counts (`ObjectInfo::refs`) are kept under the installation's exclusive lock:
//! raised before a pod switches to an object, lowered after it switched away. A command
//! killed in between leaves a count too high (the object waits for gc, which recounts from
//! `PODS`), never too low; and a count reaching 0 is only a candidate: the object is
//! deleted once the `PODS` entries themselves show that no pod refers to it. So a pod
//! switching from one shared list to another costs two counter updates, not a scan of
//! every pod — except for the last pod of a list.
use std::{collections::BTreeSet, os::fd::BorrowedFd};

use bytemuck::Zeroable;
use interceptor_common::{
    GENERATION_CHUNK, GenerationChunk, GenerationKey, GenerationRecord, ObjectInfo, PodConfig, object_kind,
};

use super::{
    EbpfError,
    compile::Object,
    crash,
    enroll::map_fd,
    error::Context,
    maps::{PinnedMaps, read_all},
    raw,
};

type Result<T, E = EbpfError> = std::result::Result<T, E>;

/// The map a record kind's entries live in.
fn target<'a>(maps: &'a PinnedMaps, kind: u32) -> Option<BorrowedFd<'a>> {
    Some(match kind {
        GenerationRecord::KIND_EXCLUDED => map_fd(&maps.excluded),
        GenerationRecord::KIND_INCLUDED => map_fd(&maps.included),
        GenerationRecord::KIND_ROUTE => map_fd(&maps.routes),
        GenerationRecord::KIND_PORT => map_fd(&maps.ports),
        GenerationRecord::KIND_IFACE => map_fd(&maps.ifaces),
        _ => return None,
    })
}

/// A human name of an object kind (status, reports).
pub fn kind_name(kind: u32) -> &'static str {
    match kind {
        object_kind::POD_TABLE => "pod_table",
        object_kind::EXCLUDED => "excluded_ranges",
        object_kind::INCLUDED => "included_ranges",
        object_kind::PORTS => "excluded_ports",
        _ => "unknown",
    }
}

/// What storing an object did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// An empty list: nothing to store or look up (id 0).
    Empty,
    /// An identical object was already stored.
    Reused(u32),
    /// Written now.
    Written(u32),
}

impl Stored {
    pub fn id(self) -> u32 {
        match self {
            Stored::Empty => 0,
            Stored::Reused(id) | Stored::Written(id) => id,
        }
    }
}

/// The id an object's digest starts probing at (never 0: the journal's key).
fn first_id(digest: &[u8; 32]) -> u32 {
    u32::from_be_bytes(digest[..4].try_into().expect("4 bytes")).max(1)
}

/// Finds the stored object with `obj`'s content, or writes it under a free id. An empty
/// list is not stored (id 0: the programs skip the lookup); a pod table always is.
pub fn store(maps: &mut PinnedMaps, obj: &Object) -> Result<Stored> {
    if obj.is_empty() && obj.kind != object_kind::POD_TABLE {
        return Ok(Stored::Empty);
    }
    let digest = obj.digest();
    let mut id = first_id(&digest);
    for _ in 0..1024 {
        match maps.objects.get(&id, 0) {
            Ok(info) if info.digest == digest && info.kind == obj.kind => return Ok(Stored::Reused(id)),
            Ok(_) => {}
            // Not registered: free, unless a record list (an object being written or deleted
            // by a killed command, for gc) holds it.
            Err(_) if maps.generations.get(&GenerationKey { policy_id: id, chunk: 0 }, 0).is_err() => {
                if let Err(e) = write(maps, id, obj, &digest) {
                    delete(maps, id, None);
                    return Err(e);
                }
                return Ok(Stored::Written(id));
            }
            Err(_) => {}
        }
        id = id.wrapping_add(1).max(1);
    }
    Err(EbpfError::NoObjectId { near: first_id(&digest) })
}

fn write(maps: &mut PinnedMaps, id: u32, obj: &Object, digest: &[u8; 32]) -> Result<()> {
    let records: Vec<GenerationRecord> = obj.entries.iter().map(|e| e.record.with_object_id(id)).collect();
    let chunks: Vec<GenerationChunk> = records
        .chunks(GENERATION_CHUNK)
        .map(|part| {
            let mut chunk = GenerationChunk::zeroed();
            chunk.records[..part.len()].copy_from_slice(part);
            chunk
        })
        .collect();
    let chunk_keys: Vec<u8> = (0..chunks.len() as u32)
        .flat_map(|chunk| bytemuck::bytes_of(&GenerationKey { policy_id: id, chunk }).to_vec())
        .collect();
    let chunk_values: Vec<u8> = chunks.iter().flat_map(|c| bytemuck::bytes_of(c).to_vec()).collect();
    raw::update_batch(map_fd(&maps.generations), &chunk_keys, &chunk_values, chunks.len())
        .context("writing GENERATIONS (full?)")?;
    for kind in GenerationRecord::KINDS {
        let mine: Vec<(&GenerationRecord, &[u8])> = records
            .iter()
            .zip(&obj.entries)
            .filter(|(r, _)| r.kind == kind)
            .map(|(r, e)| (r, e.value_bytes()))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let keys: Vec<u8> = mine.iter().flat_map(|(r, _)| r.key_bytes().to_vec()).collect();
        let values: Vec<u8> = mine.iter().flat_map(|(_, v)| v.to_vec()).collect();
        let fd = target(maps, kind).expect("a record kind");
        raw::update_batch(fd, &keys, &values, mine.len())
            .with_context(|| format!("writing {} entries of a {} (map full?)", mine.len(), kind_name(obj.kind)))?;
    }
    let info = ObjectInfo { digest: *digest, kind: obj.kind, entries: obj.entries.len() as u32, refs: 0, _pad: 0 };
    maps.objects.insert(id, info, 0).context("registering a policy object in OBJECTS (full?)")?;
    Ok(())
}

/// Deletes an object no pod refers to (the caller has checked, and waited for an RCU grace
/// period since the last reference went): its registration, its entries (found from its own
/// record list: the cost is its own size), then the record list. Best effort: a missing
/// entry is fine. `crash_step`: the test hook between the entries and the record list.
pub fn delete(maps: &mut PinnedMaps, id: u32, crash_step: Option<&str>) {
    let _ = maps.objects.remove(&id);
    let mut keys: [Vec<u8>; 6] = Default::default();
    let mut chunk_keys = Vec::new();
    for chunk in 0u32.. {
        let key = GenerationKey { policy_id: id, chunk };
        let Ok(c) = maps.generations.get(&key, 0) else { break };
        chunk_keys.extend_from_slice(bytemuck::bytes_of(&key));
        for r in c.records.iter().filter(|r| r.kind != GenerationRecord::KIND_UNUSED) {
            // A record names its object: never delete another object's entry.
            if let Some(v) = keys.get_mut(r.kind as usize)
                && r.object_id() == id
            {
                v.extend_from_slice(r.key_bytes());
            }
        }
    }
    for kind in GenerationRecord::KINDS {
        let Some(map) = target(maps, kind) else { continue };
        let size = GenerationRecord::key_len(kind);
        let mine = &keys[kind as usize];
        if raw::delete_batch(map, mine, mine.len() / size).is_err() {
            for k in mine.chunks(size) {
                let _ = raw::delete_batch(map, k, 1);
            }
        }
    }
    if let Some(step) = crash_step {
        crash::point(step);
    }
    let n = chunk_keys.len() / size_of::<GenerationKey>();
    let _ = raw::delete_batch(map_fd(&maps.generations), &chunk_keys, n);
}

/// Counts a pod more for each of `ids` (before it switches to them).
pub fn retain(maps: &mut PinnedMaps, ids: impl IntoIterator<Item = u32>) -> Result<()> {
    for id in ids {
        let mut info = maps.objects.get(&id, 0).with_context(|| format!("policy object {id} is not registered"))?;
        info.refs = info.refs.saturating_add(1);
        maps.objects.insert(id, info, 0)?;
    }
    Ok(())
}

/// Counts a pod less for each of `ids` (after it switched away from them), then deletes
/// those no pod refers to any more (see [`delete_unreferenced`]). Returns the ids deleted.
pub fn release(
    maps: &mut PinnedMaps,
    ids: impl IntoIterator<Item = u32>,
    crash_step: Option<&str>,
) -> Result<Vec<u32>> {
    let mut candidates = BTreeSet::new();
    for id in ids {
        match maps.objects.get(&id, 0) {
            Ok(mut info) => {
                info.refs = info.refs.saturating_sub(1);
                if info.refs == 0 {
                    candidates.insert(id);
                } else {
                    maps.objects.insert(id, info, 0)?;
                }
            }
            // Half deleted by a killed command: for gc, or now if no pod refers to it.
            Err(_) => {
                candidates.insert(id);
            }
        }
    }
    delete_unreferenced(maps, &candidates, crash_step)
}

/// Recounts every registered object's pods from `PODS` (gc: after a killed command).
pub fn recount(maps: &mut PinnedMaps) -> Result<usize> {
    let mut counts: std::collections::BTreeMap<u32, u32> = Default::default();
    for (_, c) in pods(maps)? {
        for id in c.objects() {
            *counts.entry(id).or_default() += 1;
        }
    }
    let mut fixed = 0;
    for (id, mut info) in registered(maps)? {
        let n = counts.get(&id).copied().unwrap_or(0);
        if info.refs != n {
            info.refs = n;
            maps.objects.insert(id, info, 0)?;
            fixed += 1;
        }
    }
    Ok(fixed)
}

/// Every `PODS` entry (one batch read).
pub fn pods(maps: &PinnedMaps) -> Result<Vec<(u64, PodConfig)>> {
    read_all(&maps.pods)
}

/// The objects some pod refers to.
pub fn referenced(maps: &PinnedMaps) -> Result<BTreeSet<u32>> {
    Ok(pods(maps)?.iter().flat_map(|(_, c)| c.objects()).collect())
}

/// Deletes those of `ids` that no pod refers to any more, after one RCU grace period (no
/// program run can still be reading them). Returns the ids deleted. `crash_step`: the test
/// hook in the first deletion.
pub fn delete_unreferenced(maps: &mut PinnedMaps, ids: &BTreeSet<u32>, crash_step: Option<&str>) -> Result<Vec<u32>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let mut gone: Vec<u32> = ids.iter().copied().collect();
    for (_, c) in pods(maps)? {
        gone.retain(|id| !c.objects().any(|o| o == *id));
    }
    if gone.is_empty() {
        return Ok(gone);
    }
    raw::rcu_barrier().context("waiting for running programs")?;
    for (i, id) in gone.iter().enumerate() {
        delete(maps, *id, if i == 0 { crash_step } else { None });
    }
    Ok(gone)
}

/// Objects registered in `OBJECTS` or with a record list in `GENERATIONS` (complete or not).
pub fn recorded(maps: &PinnedMaps) -> Result<BTreeSet<u32>> {
    let mut ids: BTreeSet<u32> = maps.objects.keys().filter_map(Result::ok).filter(|id| *id != 0).collect();
    ids.extend(maps.generations.keys().filter_map(Result::ok).map(|k: GenerationKey| k.policy_id));
    Ok(ids)
}

/// The registered objects (not the journal).
pub fn registered(maps: &PinnedMaps) -> Result<Vec<(u32, ObjectInfo)>> {
    Ok(read_all(&maps.objects)?.into_iter().filter(|(id, _)| *id != ObjectInfo::JOURNAL).collect())
}

/// The journal: `OBJECTS[0]` exists while an enroll or unenroll is changing the maps.
/// Returns whether an earlier command left it (it was killed: its leftovers need a repair).
pub fn begin(maps: &mut PinnedMaps) -> Result<bool> {
    let interrupted = maps.objects.get(&ObjectInfo::JOURNAL, 0).is_ok();
    if !interrupted {
        let mark = ObjectInfo { digest: [0; 32], kind: 0, entries: std::process::id(), refs: 0, _pad: 0 };
        maps.objects.insert(ObjectInfo::JOURNAL, mark, 0).context("writing the journal entry of OBJECTS")?;
    }
    Ok(interrupted)
}

/// The command completed: clears the journal.
pub fn end(maps: &mut PinnedMaps) {
    let _ = maps.objects.remove(&ObjectInfo::JOURNAL);
}

/// Deletes policy entries whose id is not in `keep` (full gc); returns how many.
pub fn delete_unrecorded(maps: &PinnedMaps, keep: &BTreeSet<u32>) -> Result<usize> {
    let mut n = 0;
    for kind in GenerationRecord::KINDS {
        let fd = target(maps, kind).expect("a record kind");
        let size = GenerationRecord::key_len(kind);
        let (keys, _, count) = raw::lookup_batch(fd, size, GenerationRecord::value_len(kind))?;
        for k in keys.chunks(size).take(count) {
            let id = GenerationRecord::from_key_bytes(kind, k).object_id();
            if !keep.contains(&id) && raw::delete_batch(fd, k, 1).is_ok() {
                n += 1;
            }
        }
    }
    Ok(n)
}
