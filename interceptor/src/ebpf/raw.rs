//! The few bpf(2) commands aya 0.14 does not expose the way we need them: links created on
//! any program and pinned (aya cannot pin a CgroupSockopt link), link updates for in-place
//! upgrades, an RCU barrier, link and map information (is a pod's namespace gone, how full
//! is a map).
use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    os::unix::ffi::OsStrExt,
    path::Path,
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// `enum bpf_attach_type` values (UAPI, stable).
pub mod attach_type {
    pub const CGROUP_SOCK_OPS: u32 = 3;
    pub const CGROUP_INET4_CONNECT: u32 = 10;
    pub const CGROUP_INET6_CONNECT: u32 = 11;
    pub const CGROUP_INET4_POST_BIND: u32 = 12;
    pub const CGROUP_INET6_POST_BIND: u32 = 13;
    pub const CGROUP_UDP4_SENDMSG: u32 = 14;
    pub const CGROUP_UDP4_RECVMSG: u32 = 19;
    pub const CGROUP_UDP6_RECVMSG: u32 = 20;
    pub const CGROUP_GETSOCKOPT: u32 = 21;
    pub const CGROUP_INET4_GETPEERNAME: u32 = 29;
    pub const CGROUP_INET6_GETPEERNAME: u32 = 30;
    pub const SK_LOOKUP: u32 = 36;
    pub const SK_MSG_VERDICT: u32 = 7;
}

/// `union bpf_attr` is at most this large for the commands used here; the kernel accepts
/// a shorter or zero-padded attribute.
#[repr(C, align(8))]
struct Attr([u8; 64]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 64])
    }
    fn put_u32(&mut self, offset: usize, v: u32) -> &mut Self {
        self.0[offset..offset + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn put_u64(&mut self, offset: usize, v: u64) -> &mut Self {
        self.0[offset..offset + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn sys_bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: attr is a valid, initialised buffer of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this new descriptor to us.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// BPF_LINK_CREATE: attaches `prog` to `target` (a cgroup or network namespace fd).
/// `flags` must be 0 for cgroups: a link attachment is always multi-program.
pub fn link_create(prog: BorrowedFd<'_>, target: BorrowedFd<'_>, attach_type: u32) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.put_u32(0, prog.as_raw_fd() as u32).put_u32(4, target.as_raw_fd() as u32).put_u32(8, attach_type);
    sys_bpf(BPF_LINK_CREATE, &mut attr).map(owned)
}

/// BPF_PROG_ATTACH: attaches `prog` to `target` the pre-link way; for a sockmap or sockhash
/// (`SK_MSG_VERDICT`) the program replaces the map's previous one atomically, and the
/// attachment lives as long as the map (there is no link to pin before Linux 6.10).
pub fn prog_attach(target: BorrowedFd<'_>, prog: BorrowedFd<'_>, attach_type: u32) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.put_u32(0, target.as_raw_fd() as u32).put_u32(4, prog.as_raw_fd() as u32).put_u32(8, attach_type);
    sys_bpf(BPF_PROG_ATTACH, &mut attr).map(|_| ())
}

/// BPF_PROG_DETACH of `prog` from `target` (the reverse of `prog_attach`).
pub fn prog_detach(target: BorrowedFd<'_>, prog: BorrowedFd<'_>, attach_type: u32) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.put_u32(0, target.as_raw_fd() as u32).put_u32(4, prog.as_raw_fd() as u32).put_u32(8, attach_type);
    sys_bpf(BPF_PROG_DETACH, &mut attr).map(|_| ())
}

/// BPF_LINK_UPDATE: atomically replaces the program behind a link (in-place upgrade).
pub fn link_update(link: BorrowedFd<'_>, new_prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.put_u32(0, link.as_raw_fd() as u32).put_u32(4, new_prog.as_raw_fd() as u32);
    sys_bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// BPF_OBJ_PIN: pins any BPF object (program, map, link) at a bpffs path.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    let mut attr = Attr::new();
    attr.put_u64(0, c.as_ptr() as u64).put_u32(8, fd.as_raw_fd() as u32);
    sys_bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// BPF_OBJ_GET: opens a pinned object.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut attr = Attr::new();
    attr.put_u64(0, c.as_ptr() as u64);
    sys_bpf(BPF_OBJ_GET, &mut attr).map(owned)
}

/// Waits until every BPF program that was running when called has finished: the kernel
/// runs synchronize_rcu() after a syscall update of a map-of-maps. Used between switching
/// a pod to a new policy and deleting the old one, so that no program run can see a
/// half-deleted policy.
pub fn rcu_barrier() -> io::Result<()> {
    let mut inner = Attr::new();
    inner.put_u32(0, BPF_MAP_TYPE_ARRAY).put_u32(4, 4).put_u32(8, 4).put_u32(12, 1);
    let inner = owned(sys_bpf(BPF_MAP_CREATE, &mut inner)?);
    let mut outer = Attr::new();
    outer
        .put_u32(0, BPF_MAP_TYPE_ARRAY_OF_MAPS)
        .put_u32(4, 4)
        .put_u32(8, 4)
        .put_u32(12, 1)
        .put_u32(20, inner.as_raw_fd() as u32);
    let outer = owned(sys_bpf(BPF_MAP_CREATE, &mut outer)?);
    let key: u32 = 0;
    let value: u32 = inner.as_fd().as_raw_fd() as u32;
    let mut update = Attr::new();
    update
        .put_u32(0, outer.as_raw_fd() as u32)
        .put_u64(8, &key as *const u32 as u64)
        .put_u64(16, &value as *const u32 as u64)
        .put_u64(24, 0);
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut update).map(|_| ())
}

/// BPF_MAP_CREATE of a hash map allocated on demand (for maps only user space uses).
pub fn hash_map_create(name: &str, key_size: u32, value_size: u32, max_entries: u32) -> io::Result<OwnedFd> {
    const BPF_MAP_TYPE_HASH: u32 = 1;
    const BPF_F_NO_PREALLOC: u32 = 1;
    map_create(BPF_MAP_TYPE_HASH, name, key_size, value_size, max_entries, BPF_F_NO_PREALLOC)
}

/// BPF_MAP_CREATE of an array map (u32 keys).
pub fn array_map_create(name: &str, value_size: u32, max_entries: u32) -> io::Result<OwnedFd> {
    map_create(BPF_MAP_TYPE_ARRAY, name, 4, value_size, max_entries, 0)
}

fn map_create(
    map_type: u32,
    name: &str,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.put_u32(0, map_type).put_u32(4, key_size).put_u32(8, value_size).put_u32(12, max_entries).put_u32(16, flags);
    let bytes = name.as_bytes();
    let n = bytes.len().min(15);
    attr.0[28..28 + n].copy_from_slice(&bytes[..n]);
    sys_bpf(BPF_MAP_CREATE, &mut attr).map(owned)
}

/// BPF_OBJ_GET_INFO_BY_FD into a zeroed buffer (the kernel fills what it knows).
fn obj_info(fd: BorrowedFd<'_>) -> io::Result<[u8; 256]> {
    let mut info = [0u64; 32];
    let mut attr = Attr::new();
    attr.put_u32(0, fd.as_raw_fd() as u32).put_u32(4, 256).put_u64(8, info.as_mut_ptr() as u64);
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(bytemuck::cast(info))
}

fn u32_at(b: &[u8], offset: usize) -> u32 {
    u32::from_ne_bytes(b[offset..offset + 4].try_into().expect("4 bytes"))
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

pub const BPF_LINK_TYPE_NETNS: u32 = 5;

pub fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let b = obj_info(link)?;
    // type, id, prog_id, then the union (8-byte aligned) at 16; netns: { netns_ino, attach_type }.
    Ok(LinkInfo { link_type: u32_at(&b, 0), id: u32_at(&b, 4), prog_id: u32_at(&b, 8), netns_ino: u32_at(&b, 16) })
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

pub const BPF_MAP_TYPE_RINGBUF: u32 = 27;

pub fn map_info(map: BorrowedFd<'_>) -> io::Result<MapInfo> {
    let b = obj_info(map)?;
    Ok(MapInfo {
        map_type: u32_at(&b, 0),
        id: u32_at(&b, 4),
        key_size: u32_at(&b, 8),
        value_size: u32_at(&b, 12),
        max_entries: u32_at(&b, 16),
    })
}

/// The number of entries of a map, by walking its keys (BPF_MAP_GET_NEXT_KEY).
pub fn count_entries(map: BorrowedFd<'_>, key_size: u32) -> io::Result<u64> {
    let mut key = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut n = 0u64;
    let mut first = true;
    loop {
        let mut attr = Attr::new();
        attr.put_u32(0, map.as_raw_fd() as u32)
            .put_u64(8, if first { 0 } else { key.as_ptr() as u64 })
            .put_u64(16, next.as_mut_ptr() as u64);
        match sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(n),
            Err(e) => return Err(e),
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// `union bpf_attr` for the batch commands.
fn batch_attr(map: BorrowedFd<'_>, keys: u64, values: u64, count: u32) -> Attr {
    let mut attr = Attr::new();
    attr.put_u64(16, keys).put_u64(24, values).put_u32(32, count).put_u32(36, map.as_raw_fd() as u32);
    attr
}

/// BPF_MAP_UPDATE_BATCH: inserts `count` packed keys and values in one call (one syscall
/// instead of one per entry: a 10 000-range policy is written in a few milliseconds).
pub fn update_batch(map: BorrowedFd<'_>, keys: &[u8], values: &[u8], count: usize) -> io::Result<()> {
    if count == 0 {
        return Ok(());
    }
    let mut done = 0;
    let key_size = keys.len() / count;
    let value_size = values.len() / count;
    while done < count {
        let mut attr = batch_attr(
            map,
            keys[done * key_size..].as_ptr() as u64,
            values[done * value_size..].as_ptr() as u64,
            (count - done) as u32,
        );
        let r = sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr);
        let processed = u32::from_ne_bytes(attr.0[32..36].try_into().expect("4 bytes")) as usize;
        r?;
        if processed == 0 {
            return Err(io::Error::other("BPF_MAP_UPDATE_BATCH made no progress"));
        }
        done += processed;
    }
    Ok(())
}

/// BPF_MAP_DELETE_BATCH of packed keys.
pub fn delete_batch(map: BorrowedFd<'_>, keys: &[u8], count: usize) -> io::Result<()> {
    if count == 0 {
        return Ok(());
    }
    let mut attr = batch_attr(map, keys.as_ptr() as u64, 0, count as u32);
    sys_bpf(BPF_MAP_DELETE_BATCH, &mut attr).map(|_| ())
}

/// Program types the loader writes itself (UAPI `enum bpf_prog_type`).
#[derive(Clone, Copy, Debug)]
pub enum ProgType {
    SockOps,
    SkLookup,
}

/// BPF_PROG_LOAD of hand-written instructions (`insn`). On a verifier refusal the error
/// carries the verifier's log.
pub fn prog_load(prog_type: ProgType, insns: &[super::insn::Insn], name: &str) -> io::Result<OwnedFd> {
    use aya_obj::generated::{bpf_attach_type, bpf_prog_type};
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
pub fn prog_load_probe(prog_type: u32, expected_attach_type: u32) -> bool {
    use super::insn::{R0, exit, mov_imm};
    prog_load_raw(prog_type, expected_attach_type, &[mov_imm(R0, 1), exit()], "probe").is_ok()
}

/// BPF_PROG_LOAD with the UAPI numbers of the program type and attach type.
fn prog_load_raw(ty: u32, attach: u32, insns: &[super::insn::Insn], name: &str) -> io::Result<OwnedFd> {
    use aya_obj::generated::{bpf_attr, bpf_cmd};
    let code = super::insn::bytes(insns);
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut load = |log_level: u32| {
        // SAFETY: an all-zero bpf_attr is valid; only the fields set here are read.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing the fields of the BPF_PROG_LOAD member of the union.
        let u = unsafe { &mut attr.__bindgen_anon_3 };
        u.prog_type = ty;
        u.expected_attach_type = attach;
        u.insn_cnt = insns.len() as u32;
        u.insns = code.as_ptr() as u64;
        u.license = license.as_ptr() as u64;
        if log_level > 0 {
            u.log_level = log_level;
            u.log_buf = log.as_mut_ptr() as u64;
            u.log_size = log.len() as u32;
        }
        for (d, s) in u.prog_name.iter_mut().zip(name.bytes().take(15)) {
            *d = s as std::ffi::c_char;
        }
        // SAFETY: a valid attribute of the size passed; the buffers outlive the call.
        let rc = unsafe {
            libc::syscall(libc::SYS_bpf, bpf_cmd::BPF_PROG_LOAD as libc::c_long, &mut attr, size_of::<bpf_attr>())
        };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(owned(rc)) }
    };
    match load(0) {
        Ok(fd) => Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EINVAL) => {
            // Again with the verifier's log, to say why.
            match load(1) {
                Ok(fd) => Ok(fd),
                Err(e) => {
                    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                    Err(io::Error::new(
                        e.kind(),
                        format!("{e}; verifier: {}", String::from_utf8_lossy(&log[..end]).trim()),
                    ))
                }
            }
        }
        Err(e) => Err(e),
    }
}

/// BPF_MAP_UPDATE_ELEM of a program array: slot `index` runs `prog` (atomically replacing
/// what was there).
pub fn prog_array_set(map: BorrowedFd<'_>, index: u32, prog: BorrowedFd<'_>) -> io::Result<()> {
    u32_array_set(map, index, prog.as_raw_fd() as u32)
}

/// BPF_MAP_UPDATE_ELEM of a map with u32 keys and values (an array, a program array).
pub fn u32_array_set(map: BorrowedFd<'_>, index: u32, value: u32) -> io::Result<()> {
    use aya_obj::generated::{bpf_attr, bpf_cmd};
    // SAFETY: an all-zero bpf_attr is valid; only the fields set here are read.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the fields of the map element member of the union.
    let u = unsafe { &mut attr.__bindgen_anon_2 };
    u.map_fd = map.as_raw_fd() as u32;
    u.key = &index as *const u32 as u64;
    u.__bindgen_anon_1.value = &value as *const u32 as u64;
    // SAFETY: a valid attribute of the size passed; key and value outlive the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, bpf_cmd::BPF_MAP_UPDATE_ELEM as libc::c_long, &mut attr, size_of::<bpf_attr>())
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// BPF_MAP_LOOKUP_ELEM of a program array: the id of the program in slot `index`.
pub fn prog_array_get(map: BorrowedFd<'_>, index: u32) -> io::Result<u32> {
    u32_array_get(map, index)
}

/// BPF_MAP_LOOKUP_ELEM of a map with u32 keys and values.
pub fn u32_array_get(map: BorrowedFd<'_>, index: u32) -> io::Result<u32> {
    use aya_obj::generated::{bpf_attr, bpf_cmd};
    let mut value: u32 = 0;
    // SAFETY: an all-zero bpf_attr is valid; only the fields set here are read.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the fields of the map element member of the union.
    let u = unsafe { &mut attr.__bindgen_anon_2 };
    u.map_fd = map.as_raw_fd() as u32;
    u.key = &index as *const u32 as u64;
    u.__bindgen_anon_1.value = &mut value as *mut u32 as u64;
    // SAFETY: a valid attribute of the size passed; key and value outlive the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, bpf_cmd::BPF_MAP_LOOKUP_ELEM as libc::c_long, &mut attr, size_of::<bpf_attr>())
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(value) }
}
