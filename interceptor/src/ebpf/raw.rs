//! The few bpf(2) commands aya 0.14 does not expose the way we need them: links created on
//! any program and pinned (aya cannot pin a CgroupSockopt link), link updates for in-place
//! upgrades, an RCU barrier, link and map information (is a pod's namespace gone, how full
//! is a map), batch reads and writes of whole maps.
//!
//! Every attribute is the kernel's own `union bpf_attr` (aya-obj's generated bindings),
//! filled by field name; every error names the command that failed
//! ([`EbpfError::Syscall`]).
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    os::unix::ffi::OsStrExt,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use aya_obj::generated::{
    BPF_F_NO_PREALLOC, bpf_attach_type, bpf_attr, bpf_cmd, bpf_link_info, bpf_link_type, bpf_map_info, bpf_map_type,
    bpf_prog_type,
};

use super::{EbpfError, insn};

/// `enum bpf_attach_type` (UAPI, from aya-obj's bindings): the hooks used here.
pub mod attach_type {
    pub use aya_obj::generated::bpf_attach_type::{
        BPF_CGROUP_GETSOCKOPT as CGROUP_GETSOCKOPT, BPF_CGROUP_INET4_CONNECT as CGROUP_INET4_CONNECT,
        BPF_CGROUP_INET4_GETPEERNAME as CGROUP_INET4_GETPEERNAME, BPF_CGROUP_INET4_POST_BIND as CGROUP_INET4_POST_BIND,
        BPF_CGROUP_INET6_CONNECT as CGROUP_INET6_CONNECT, BPF_CGROUP_INET6_GETPEERNAME as CGROUP_INET6_GETPEERNAME,
        BPF_CGROUP_INET6_POST_BIND as CGROUP_INET6_POST_BIND, BPF_CGROUP_SOCK_OPS as CGROUP_SOCK_OPS,
        BPF_CGROUP_UDP4_RECVMSG as CGROUP_UDP4_RECVMSG, BPF_CGROUP_UDP4_SENDMSG as CGROUP_UDP4_SENDMSG,
        BPF_CGROUP_UDP6_RECVMSG as CGROUP_UDP6_RECVMSG, BPF_SK_LOOKUP as SK_LOOKUP,
        BPF_SK_MSG_VERDICT as SK_MSG_VERDICT,
    };
}

/// `enum bpf_prog_type` (UAPI, from aya-obj's bindings): the program types used here.
pub mod prog_type {
    pub use aya_obj::generated::bpf_prog_type::{
        BPF_PROG_TYPE_CGROUP_SOCK_ADDR as CGROUP_SOCK_ADDR, BPF_PROG_TYPE_CGROUP_SOCKOPT as CGROUP_SOCKOPT,
        BPF_PROG_TYPE_SK_LOOKUP as SK_LOOKUP, BPF_PROG_TYPE_SOCK_OPS as SOCK_OPS,
    };
}

/// An attach type as the kernel numbers it: one of the bindings' (`bpf_attach_type`), or a
/// bare number (a probe may ask about a hook newer than the bindings).
pub trait AttachTypeNumber {
    fn number(self) -> u32;
}

impl AttachTypeNumber for bpf_attach_type {
    fn number(self) -> u32 {
        self as u32
    }
}

impl AttachTypeNumber for u32 {
    fn number(self) -> u32 {
        self
    }
}

type Result<T, E = EbpfError> = std::result::Result<T, E>;

/// An all-zero attribute: what the kernel requires of every field a command does not use.
fn zeroed_attr() -> bpf_attr {
    // SAFETY: `bpf_attr` is a union of plain integers and arrays: all-zero is valid.
    unsafe { std::mem::zeroed() }
}

/// How many times a BPF_PROG_LOAD the verifier gave up on with EAGAIN is tried again.
pub const PROG_LOAD_ATTEMPTS: u32 = 10;

/// BPF_PROG_LOADs tried again after EAGAIN in this process (raw and aya loads): a signal
/// storm shows here, in `debug` logs, and in the tests that prove the retry.
pub static PROG_LOADS_RETRIED: AtomicU64 = AtomicU64::new(0);

/// Runs `load` (a BPF_PROG_LOAD of `what`, raw or aya's) again while it fails with EAGAIN,
/// at most [`PROG_LOAD_ATTEMPTS`] more times: the verifier gives up with EAGAIN when a
/// signal arrives while it works (Linux 4.20+), and libbpf and cilium/ebpf try again (aya
/// does not). Each retry is counted in [`PROG_LOADS_RETRIED`].
pub fn retry_interrupted_load<T>(what: &str, mut load: impl FnMut() -> Result<T>) -> Result<T> {
    let mut retries = 0;
    loop {
        match load() {
            Err(e) if e.os_error() == Some(libc::EAGAIN) && retries < PROG_LOAD_ATTEMPTS => {
                retries += 1;
                PROG_LOADS_RETRIED.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    "BPF_PROG_LOAD of {what} interrupted by a signal (EAGAIN): retry {retries} of {PROG_LOAD_ATTEMPTS}"
                );
            }
            done => return done,
        }
    }
}

/// bpf(2). The whole union is passed: the kernel accepts a larger attribute whose tail
/// (what an older kernel does not know) is zero.
fn sys_bpf(call: bpf_cmd, attr: &mut bpf_attr) -> Result<i64> {
    let mut once = || {
        // SAFETY: a valid, initialised attribute of the size passed; the pointers it holds
        // point to buffers that outlive the call.
        let rc = unsafe {
            libc::syscall(libc::SYS_bpf, call as libc::c_long, &mut *attr as *mut bpf_attr, size_of::<bpf_attr>())
        };
        if rc < 0 { Err(EbpfError::Syscall { call, errno: io::Error::last_os_error() }) } else { Ok(rc) }
    };
    if call == bpf_cmd::BPF_PROG_LOAD { retry_interrupted_load("a program", once) } else { once() }
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this new descriptor to us.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    fd.as_raw_fd() as u32
}

fn ptr<T>(p: *const T) -> u64 {
    p as u64
}

/// BPF_LINK_CREATE: attaches `prog` to `target` (a cgroup or network namespace fd).
/// `flags` stay 0 for cgroups: a link attachment is always multi-program.
pub fn link_create(prog: BorrowedFd<'_>, target: BorrowedFd<'_>, attach_type: bpf_attach_type) -> Result<OwnedFd> {
    let mut attr = zeroed_attr();
    // SAFETY: the BPF_LINK_CREATE member of the zeroed union; plain integer fields.
    let a = unsafe { &mut attr.link_create };
    a.__bindgen_anon_1.prog_fd = fd_u32(prog);
    a.__bindgen_anon_2.target_fd = fd_u32(target);
    a.attach_type = attach_type as u32;
    sys_bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).map(owned)
}

/// BPF_PROG_ATTACH: attaches `prog` to `target` the pre-link way; for a sockmap or sockhash
/// (`SK_MSG_VERDICT`) the program replaces the map's previous one atomically, and the
/// attachment lives as long as the map (there is no link to pin before Linux 6.10).
pub fn prog_attach(target: BorrowedFd<'_>, prog: BorrowedFd<'_>, attach_type: bpf_attach_type) -> Result<()> {
    let mut attr = zeroed_attr();
    // SAFETY: the BPF_PROG_ATTACH member of the zeroed union; plain integer fields.
    let a = unsafe { &mut attr.__bindgen_anon_5 };
    a.__bindgen_anon_1.target_fd = fd_u32(target);
    a.attach_bpf_fd = fd_u32(prog);
    a.attach_type = attach_type as u32;
    sys_bpf(bpf_cmd::BPF_PROG_ATTACH, &mut attr).map(drop)
}

/// BPF_LINK_UPDATE: atomically replaces the program behind a link (in-place upgrade).
pub fn link_update(link: BorrowedFd<'_>, new_prog: BorrowedFd<'_>) -> Result<()> {
    let mut attr = zeroed_attr();
    // SAFETY: the BPF_LINK_UPDATE member of the zeroed union; plain integer fields.
    let a = unsafe { &mut attr.link_update };
    a.link_fd = fd_u32(link);
    a.__bindgen_anon_1.new_prog_fd = fd_u32(new_prog);
    sys_bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr).map(drop)
}

fn c_path(call: bpf_cmd, path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| EbpfError::Syscall {
        call,
        errno: io::Error::new(io::ErrorKind::InvalidInput, format!("NUL in path {}", path.display())),
    })
}

/// BPF_OBJ_PIN: pins any BPF object (program, map, link) at a bpffs path.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let c = c_path(bpf_cmd::BPF_OBJ_PIN, path)?;
    let mut attr = zeroed_attr();
    // SAFETY: the BPF_OBJ_* member of the zeroed union; plain integer fields.
    let a = unsafe { &mut attr.__bindgen_anon_4 };
    a.pathname = ptr(c.as_ptr());
    a.bpf_fd = fd_u32(fd);
    sys_bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(drop)
}

/// BPF_OBJ_GET: opens a pinned object.
pub fn obj_get(path: &Path) -> Result<OwnedFd> {
    let c = c_path(bpf_cmd::BPF_OBJ_GET, path)?;
    let mut attr = zeroed_attr();
    // SAFETY: the BPF_OBJ_* member of the zeroed union; plain integer fields.
    let a = unsafe { &mut attr.__bindgen_anon_4 };
    a.pathname = ptr(c.as_ptr());
    sys_bpf(bpf_cmd::BPF_OBJ_GET, &mut attr).map(owned)
}

/// BPF_MAP_CREATE; `inner` is the template map of a map of maps.
fn map_create(
    map_type: bpf_map_type,
    name: &str,
    (key_size, value_size, max_entries): (u32, u32, u32),
    flags: u32,
    inner: Option<BorrowedFd<'_>>,
) -> Result<OwnedFd> {
    let mut attr = zeroed_attr();
    // SAFETY: the BPF_MAP_CREATE member of the zeroed union; plain integer fields.
    let a = unsafe { &mut attr.__bindgen_anon_1 };
    a.map_type = map_type as u32;
    a.key_size = key_size;
    a.value_size = value_size;
    a.max_entries = max_entries;
    a.map_flags = flags;
    a.inner_map_fd = inner.map(fd_u32).unwrap_or(0);
    // At most 15 bytes and a NUL (the kernel's BPF_OBJ_NAME_LEN).
    for (d, s) in a.map_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s as std::ffi::c_char;
    }
    sys_bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr).map(owned)
}

/// BPF_MAP_CREATE of a hash map allocated on demand (for maps only user space uses).
pub fn hash_map_create(name: &str, key_size: u32, value_size: u32, max_entries: u32) -> Result<OwnedFd> {
    map_create(bpf_map_type::BPF_MAP_TYPE_HASH, name, (key_size, value_size, max_entries), BPF_F_NO_PREALLOC, None)
}

/// BPF_MAP_CREATE of an array map (u32 keys).
pub fn array_map_create(name: &str, value_size: u32, max_entries: u32) -> Result<OwnedFd> {
    map_create(bpf_map_type::BPF_MAP_TYPE_ARRAY, name, (4, value_size, max_entries), 0, None)
}

/// BPF_MAP_UPDATE_ELEM / BPF_MAP_LOOKUP_ELEM of one element (`key`, `value`: addresses).
fn map_elem(call: bpf_cmd, map: BorrowedFd<'_>, key: u64, value: u64) -> Result<()> {
    let mut attr = zeroed_attr();
    // SAFETY: the map element member of the zeroed union; plain integer fields.
    let a = unsafe { &mut attr.__bindgen_anon_2 };
    a.map_fd = fd_u32(map);
    a.key = key;
    a.__bindgen_anon_1.value = value;
    sys_bpf(call, &mut attr).map(drop)
}

/// Waits until every BPF program that was running when called has finished: the kernel
/// runs synchronize_rcu() after a syscall update of a map-of-maps. Used between switching
/// a pod to a new policy and deleting the old one, so that no program run can see a
/// half-deleted policy.
pub fn rcu_barrier() -> Result<()> {
    let inner = map_create(bpf_map_type::BPF_MAP_TYPE_ARRAY, "", (4, 4, 1), 0, None)?;
    let outer = map_create(bpf_map_type::BPF_MAP_TYPE_ARRAY_OF_MAPS, "", (4, 4, 1), 0, Some(fd_of(&inner)))?;
    let key: u32 = 0;
    let value: u32 = inner.as_raw_fd() as u32;
    map_elem(bpf_cmd::BPF_MAP_UPDATE_ELEM, fd_of(&outer), ptr(&key), ptr(&value))
}

fn fd_of(fd: &OwnedFd) -> BorrowedFd<'_> {
    std::os::fd::AsFd::as_fd(fd)
}

/// BPF_OBJ_GET_INFO_BY_FD into `info` (zeroed: the kernel fills what it knows).
fn obj_info<T>(fd: BorrowedFd<'_>, info: &mut T) -> Result<()> {
    let mut attr = zeroed_attr();
    // SAFETY: the BPF_OBJ_GET_INFO_BY_FD member of the zeroed union; plain integer fields.
    let a = unsafe { &mut attr.info };
    a.bpf_fd = fd_u32(fd);
    a.info_len = size_of::<T>() as u32;
    a.info = ptr(info as *mut T);
    sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(drop)
}

/// What the kernel says about a link (`struct bpf_link_info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    /// Netns links: the inode of the namespace, 0 once it is gone (the kernel detaches a
    /// namespace's links when it is destroyed; updating them then fails with ENOLINK).
    pub netns_ino: u32,
}

impl LinkInfo {
    /// A network namespace link (sk_lookup) whose namespace is gone.
    pub fn netns_gone(&self) -> bool {
        self.link_type == bpf_link_type::BPF_LINK_TYPE_NETNS as u32 && self.netns_ino == 0
    }
}

pub fn link_info(link: BorrowedFd<'_>) -> Result<LinkInfo> {
    // SAFETY: plain integers and unions of them: all-zero is valid.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    obj_info(link, &mut info)?;
    // SAFETY: the netns member is read as integers whatever the link type (a link of another
    // type is told apart by `link_type`).
    let netns_ino = unsafe { info.__bindgen_anon_1.netns.netns_ino };
    Ok(LinkInfo { link_type: info.type_, id: info.id, prog_id: info.prog_id, netns_ino })
}

/// What the kernel says about a map (`struct bpf_map_info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapInfo {
    pub map_type: u32,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl MapInfo {
    pub fn is(&self, map_type: bpf_map_type) -> bool {
        self.map_type == map_type as u32
    }
}

pub fn map_info(map: BorrowedFd<'_>) -> Result<MapInfo> {
    // SAFETY: plain integers and arrays: all-zero is valid.
    let mut info: bpf_map_info = unsafe { std::mem::zeroed() };
    obj_info(map, &mut info)?;
    Ok(MapInfo {
        map_type: info.type_,
        id: info.id,
        key_size: info.key_size,
        value_size: info.value_size,
        max_entries: info.max_entries,
    })
}

/// The number of entries of a map, by walking its keys (BPF_MAP_GET_NEXT_KEY).
pub fn count_entries(map: BorrowedFd<'_>, key_size: u32) -> Result<u64> {
    let mut key = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut n = 0u64;
    let mut first = true;
    loop {
        let mut attr = zeroed_attr();
        // SAFETY: the map element member of the zeroed union; plain integer fields.
        let a = unsafe { &mut attr.__bindgen_anon_2 };
        a.map_fd = fd_u32(map);
        a.key = if first { 0 } else { ptr(key.as_ptr()) };
        a.__bindgen_anon_1.next_key = ptr(next.as_mut_ptr());
        match sys_bpf(bpf_cmd::BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {}
            Err(e) if e.os_error() == Some(libc::ENOENT) => return Ok(n),
            Err(e) => return Err(e),
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
}

/// The attribute of the batch commands.
fn batch_attr(map: BorrowedFd<'_>, keys: u64, values: u64, count: u32) -> bpf_attr {
    let mut attr = zeroed_attr();
    // SAFETY: the batch member of the zeroed union; plain integer fields.
    let a = unsafe { &mut attr.batch };
    a.map_fd = fd_u32(map);
    a.keys = keys;
    a.values = values;
    a.count = count;
    attr
}

/// How many elements a batch command processed (the kernel writes it back).
fn batch_count(attr: &bpf_attr) -> usize {
    // SAFETY: the batch member, which the command used.
    unsafe { attr.batch.count as usize }
}

/// BPF_MAP_UPDATE_BATCH: inserts `count` packed keys and values in one call (one syscall
/// instead of one per entry: a 10 000-range policy is written in a few milliseconds).
pub fn update_batch(map: BorrowedFd<'_>, keys: &[u8], values: &[u8], count: usize) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    let mut done = 0;
    let key_size = keys.len() / count;
    let value_size = values.len() / count;
    while done < count {
        let mut attr = batch_attr(
            map,
            ptr(keys[done * key_size..].as_ptr()),
            ptr(values[done * value_size..].as_ptr()),
            (count - done) as u32,
        );
        let r = sys_bpf(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr);
        let processed = batch_count(&attr);
        r?;
        if processed == 0 {
            return Err(EbpfError::Syscall {
                call: bpf_cmd::BPF_MAP_UPDATE_BATCH,
                errno: io::Error::other("no progress (no element written)"),
            });
        }
        done += processed;
    }
    Ok(())
}

/// BPF_MAP_LOOKUP_BATCH over the whole map: every key and value, packed, in a few calls
/// instead of two per entry (a status of a node with a thousand pods reads each map at once).
/// `value_size` is what the kernel copies per entry (for a per-CPU map: the value rounded up
/// to 8 bytes, times the possible CPUs). Returns (keys, values, count).
pub fn lookup_batch(map: BorrowedFd<'_>, key_size: usize, value_size: usize) -> Result<(Vec<u8>, Vec<u8>, usize)> {
    const PER_CALL: usize = 4096;
    let mut keys = Vec::new();
    let mut values = Vec::new();
    let mut total = 0;
    // The position between calls: a bucket index (hash maps) or a key (others).
    let token_size = key_size.max(8);
    let mut in_token = vec![0u8; token_size];
    let mut out_token = vec![0u8; token_size];
    let mut first = true;
    loop {
        keys.resize((total + PER_CALL) * key_size, 0);
        values.resize((total + PER_CALL) * value_size, 0);
        let mut attr = batch_attr(
            map,
            ptr(keys[total * key_size..].as_mut_ptr()),
            ptr(values[total * value_size..].as_mut_ptr()),
            PER_CALL as u32,
        );
        // SAFETY: the batch member of the attribute just built; plain integer fields.
        let a = unsafe { &mut attr.batch };
        a.in_batch = if first { 0 } else { ptr(in_token.as_ptr()) };
        a.out_batch = ptr(out_token.as_mut_ptr());
        let r = sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
        total += batch_count(&attr);
        match r {
            Ok(_) => {}
            // The end of the map (the last call may still have returned entries).
            Err(e) if e.os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
        std::mem::swap(&mut in_token, &mut out_token);
        first = false;
    }
    keys.truncate(total * key_size);
    values.truncate(total * value_size);
    Ok((keys, values, total))
}

/// BPF_MAP_DELETE_BATCH of packed keys.
pub fn delete_batch(map: BorrowedFd<'_>, keys: &[u8], count: usize) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    let mut attr = batch_attr(map, ptr(keys.as_ptr()), 0, count as u32);
    sys_bpf(bpf_cmd::BPF_MAP_DELETE_BATCH, &mut attr).map(drop)
}

/// Program types the loader writes itself (UAPI `enum bpf_prog_type`).
#[derive(Clone, Copy, Debug)]
pub enum ProgType {
    SockOps,
    SkLookup,
}

/// BPF_PROG_LOAD of hand-written instructions (`insn`). On a verifier refusal the error
/// carries the verifier's log.
pub fn prog_load(prog_type: ProgType, insns: &[insn::Insn], name: &str) -> Result<OwnedFd> {
    let (ty, attach) = match prog_type {
        ProgType::SockOps => (bpf_prog_type::BPF_PROG_TYPE_SOCK_OPS, bpf_attach_type::BPF_CGROUP_SOCK_OPS),
        ProgType::SkLookup => (bpf_prog_type::BPF_PROG_TYPE_SK_LOOKUP, bpf_attach_type::BPF_SK_LOOKUP),
    };
    prog_load_raw(ty as u32, attach as u32, insns, name)
}

/// Whether the kernel accepts a program of `prog_type` for `expected_attach_type`: loads
/// `r0 = 1; exit` (a valid return for every cgroup sock_addr hook) and closes it. A kernel
/// that does not know the attach type refuses the load (EINVAL), so this tells which hooks
/// exist without attaching anything.
pub fn prog_load_probe(prog_type: u32, expected_attach_type: impl AttachTypeNumber) -> bool {
    prog_load_returning(prog_type, expected_attach_type, 1, "probe").is_ok()
}

/// Loads `r0 = verdict; exit` for a hook: a program that does nothing. The benchmark
/// attaches such programs to measure what the kernel charges for running a program at a
/// hook at all, apart from anything a program does.
pub fn prog_load_returning(
    prog_type: u32,
    expected_attach_type: impl AttachTypeNumber,
    verdict: i32,
    name: &str,
) -> Result<OwnedFd> {
    use insn::{R0, exit, mov_imm};
    prog_load_raw(prog_type, expected_attach_type.number(), &[mov_imm(R0, verdict), exit()], name)
}

/// BPF_PROG_LOAD with the UAPI numbers of the program type and attach type.
fn prog_load_raw(ty: u32, attach: u32, insns: &[insn::Insn], name: &str) -> Result<OwnedFd> {
    let code = insn::bytes(insns);
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut load = |log_level: u32| {
        let mut attr = zeroed_attr();
        // SAFETY: the BPF_PROG_LOAD member of the zeroed union; plain integer fields.
        let a = unsafe { &mut attr.__bindgen_anon_3 };
        a.prog_type = ty;
        a.expected_attach_type = attach;
        a.insn_cnt = insns.len() as u32;
        a.insns = ptr(code.as_ptr());
        a.license = ptr(license.as_ptr());
        if log_level > 0 {
            a.log_level = log_level;
            a.log_buf = ptr(log.as_mut_ptr());
            a.log_size = log.len() as u32;
        }
        for (d, s) in a.prog_name.iter_mut().zip(name.bytes().take(15)) {
            *d = s as std::ffi::c_char;
        }
        sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr).map(owned)
    };
    match load(0) {
        Ok(fd) => Ok(fd),
        Err(e) if matches!(e.os_error(), Some(libc::EACCES | libc::EINVAL)) => {
            // Again with the verifier's log, to say why.
            load(1).map_err(|e| match e {
                EbpfError::Syscall { call, errno } => {
                    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                    let log = String::from_utf8_lossy(&log[..end]).trim().to_string();
                    EbpfError::Verifier { call, errno, log }
                }
                other => other,
            })
        }
        Err(e) => Err(e),
    }
}

/// BPF_MAP_UPDATE_ELEM of a program array: slot `index` runs `prog` (atomically replacing
/// what was there).
pub fn prog_array_set(map: BorrowedFd<'_>, index: u32, prog: BorrowedFd<'_>) -> Result<()> {
    u32_array_set(map, index, fd_u32(prog))
}

/// BPF_MAP_UPDATE_ELEM of a map with u32 keys and values (an array, a program array).
pub fn u32_array_set(map: BorrowedFd<'_>, index: u32, value: u32) -> Result<()> {
    map_elem(bpf_cmd::BPF_MAP_UPDATE_ELEM, map, ptr(&index), ptr(&value))
}

/// BPF_MAP_LOOKUP_ELEM of a program array: the id of the program in slot `index`.
pub fn prog_array_get(map: BorrowedFd<'_>, index: u32) -> Result<u32> {
    u32_array_get(map, index)
}

/// BPF_MAP_LOOKUP_ELEM of a map with u32 keys and values.
pub fn u32_array_get(map: BorrowedFd<'_>, index: u32) -> Result<u32> {
    let mut value: u32 = 0;
    map_elem(bpf_cmd::BPF_MAP_LOOKUP_ELEM, map, ptr(&index), ptr(&mut value as *mut u32))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicI32};

    use super::*;

    extern "C" fn ignore(_: libc::c_int) {}

    /// A load the verifier gives up on because a signal arrived (EAGAIN) is tried again.
    /// A long program (the verifier walks every instruction) is loaded again and again
    /// while another thread signals the loading thread: at most `SIGNALS_PER_LOAD` signals
    /// per load (one more may arrive late from the previous one), fewer than the attempts,
    /// so every load must succeed however slow the machine is; and the loads that were
    /// interrupted show in the retry counter, so the test cannot pass without signals
    /// landing in the verifier.
    #[test]
    fn a_load_interrupted_by_signals_is_tried_again() {
        if !nix::unistd::geteuid().is_root() {
            return eprintln!("SKIPPED a_load_interrupted_by_signals_is_tried_again: not root");
        }
        const LOADS: usize = 100;
        const SIGNALS_PER_LOAD: i32 = 3;
        const _: () = assert!((SIGNALS_PER_LOAD + 1) < PROG_LOAD_ATTEMPTS as i32);
        use insn::{R0, exit, mov_imm};
        // SAFETY: a handler that does nothing; SIGUSR2 is used by nothing else in the tests.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = ignore as extern "C" fn(libc::c_int) as usize;
            libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut());
        }
        let mut prog = vec![mov_imm(R0, 1); 20_000];
        prog.push(exit());
        // Signals spread over a load's length, so some land while the verifier works.
        let started = std::time::Instant::now();
        prog_load(ProgType::SkLookup, &prog, "interrupted").expect("a load without signals");
        let spacing = started.elapsed() / (SIGNALS_PER_LOAD as u32 + 1);
        let tid = AtomicI32::new(0);
        let budget = AtomicI32::new(0);
        let done = AtomicBool::new(false);
        let retried_before = PROG_LOADS_RETRIED.load(Ordering::SeqCst);
        let loads = std::thread::scope(|s| {
            let loader = s.spawn(|| {
                // SAFETY: plain syscall.
                tid.store(unsafe { libc::gettid() }, Ordering::SeqCst);
                let results: Vec<_> = (0..LOADS)
                    .map(|_| {
                        budget.store(SIGNALS_PER_LOAD, Ordering::SeqCst);
                        let r = prog_load(ProgType::SkLookup, &prog, "interrupted").map(drop);
                        budget.store(0, Ordering::SeqCst);
                        r
                    })
                    .collect();
                done.store(true, Ordering::SeqCst);
                results
            });
            while !done.load(Ordering::SeqCst) {
                let t = tid.load(Ordering::SeqCst);
                let granted = budget.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| (b > 0).then_some(b - 1));
                if t != 0 && granted.is_ok() {
                    // SAFETY: a thread of this process, alive until `done`.
                    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), t, libc::SIGUSR2) };
                }
                std::thread::sleep(spacing);
            }
            loader.join().expect("loader")
        });
        let retried = PROG_LOADS_RETRIED.load(Ordering::SeqCst) - retried_before;
        let failed: Vec<String> = loads.iter().filter_map(|r| r.as_ref().err().map(|e| e.to_string())).collect();
        assert!(failed.is_empty(), "{} of {LOADS} loads failed ({retried} retried): {failed:?}", failed.len());
        assert!(retried > 0, "no load of {LOADS} was interrupted by a signal: the test proved nothing");
        eprintln!("{LOADS} loads, {retried} interrupted by a signal and tried again, all loaded");
    }
}
