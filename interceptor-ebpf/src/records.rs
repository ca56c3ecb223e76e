//! Connection records. A socket of an enrolled pod that SO_ORIGINAL_DST or getpeername()
//! must answer for carries a `SockRecord` in socket-local storage: it lives exactly as long
//! as the socket. A redirected connection's original destination travels from the
//! application's socket to the sidecar's through `HANDOFF`, keyed by the tuple, only for the
//! moment between the SYN and the kernel creating the sidecar's end.
use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr,
};

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    helpers::generated::{bpf_sk_storage_delete, bpf_sk_storage_get},
};
use interceptor_common::{ConnKey, OrigDst, SockRecord, Tracking};

use crate::maps::{HANDOFF, NODE_TRACKING, POD_TRACKING, SETTINGS, SOCKETS};

/// BPF_NOEXIST: insert only if absent.
const NOEXIST: u64 = 1;

/// The record of a socket, if it has one. `sk` is a full socket the program may pass to
/// the socket-storage helpers (checked non-null by the caller).
#[inline(always)]
pub fn record(sk: *mut c_void) -> Option<&'static mut SockRecord> {
    let p = unsafe { bpf_sk_storage_get(ptr::addr_of!(SOCKETS) as *mut c_void, sk, ptr::null_mut(), 0) };
    unsafe { p.cast::<SockRecord>().as_mut() }
}

/// The record of a socket, created (zeroed) if it has none; `None` only when the kernel
/// has no memory for it.
#[inline(always)]
pub fn record_or_create(sk: *mut c_void) -> Option<&'static mut SockRecord> {
    let p = unsafe {
        bpf_sk_storage_get(
            ptr::addr_of!(SOCKETS) as *mut c_void,
            sk,
            ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
    };
    unsafe { p.cast::<SockRecord>().as_mut() }
}

/// Forgets a socket's record (it connects elsewhere, unredirected).
#[inline(always)]
pub fn forget(sk: *mut c_void) {
    unsafe { bpf_sk_storage_delete(ptr::addr_of!(SOCKETS) as *mut c_void, sk) };
}

/// Whether one more connection of the pod may be handed over, within the pod's and the
/// node's limits. `Err(true)`: the pod's limit, `Err(false)`: the node's.
#[inline(always)]
pub fn admit(netns_cookie: u64) -> Result<(), bool> {
    let Some(settings) = SETTINGS.get(0) else { return Err(false) };
    if let Some(pod) = unsafe { POD_TRACKING.get(&netns_cookie) }
        && pod.in_flight >= settings.max_in_flight_pod
    {
        return Err(true);
    }
    if let Some(node) = NODE_TRACKING.get(0)
        && node.in_flight >= settings.max_in_flight_node
    {
        return Err(false);
    }
    Ok(())
}

#[inline(always)]
fn add(counter: *mut Tracking, delta: u64) {
    // SAFETY: a map value pointer; the atomic add is a single BPF instruction. (The BPF
    // target has no atomic types in core, only the intrinsic.)
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(ptr::addr_of_mut!((*counter).in_flight), delta) };
}

#[inline(always)]
fn count_in_flight(netns_cookie: u64, delta: u64) {
    if let Some(node) = NODE_TRACKING.get_ptr_mut(0) {
        add(node, delta);
    }
    match POD_TRACKING.get_ptr_mut(&netns_cookie) {
        Some(pod) => add(pod, delta),
        // The pod's first: created here. A racing creator wins with BPF_NOEXIST; then add to
        // its entry. (A decrement never meets a missing entry: unenroll only removes an
        // entry at zero, after which the pod makes no new ones.)
        None if delta == 1 => {
            let one = Tracking { in_flight: 1 };
            if POD_TRACKING.insert(&netns_cookie, &one, NOEXIST).is_err()
                && let Some(pod) = POD_TRACKING.get_ptr_mut(&netns_cookie)
            {
                add(pod, delta);
            }
        }
        None => {}
    }
}

/// Starts handing a connection over: its original destination under the tuple the
/// listener's end will see. Err: the table is full (beyond the admitted headroom).
#[inline(always)]
pub fn hand_over(key: &ConnKey, orig: &OrigDst) -> Result<(), ()> {
    match HANDOFF.insert(key, orig, NOEXIST) {
        Ok(()) => {
            count_in_flight(orig.netns_cookie, 1);
            Ok(())
        }
        // The tuple is already handed over (a stale entry cannot exist: a socket's close
        // removes its own): update it in place, counted once.
        Err(_) => HANDOFF.insert(key, orig, 0).map_err(|_| ()),
    }
}

/// Ends a connection's hand-over (the sidecar's end took it, or the application's end closed
/// first): the entry is removed, and the counters decremented, exactly once. `netns_cookie`
/// is the entry's (the application's record's).
#[inline(always)]
pub fn withdraw(key: &ConnKey, netns_cookie: u64) {
    // Only the deleter that succeeds counts down: a racing close and accept cannot both.
    if HANDOFF.remove(key).is_ok() {
        count_in_flight(netns_cookie, u64::MAX);
    }
}

/// A connection's original destination while it is being handed over, without taking it.
#[inline(always)]
pub fn handed_over(key: &ConnKey) -> Option<OrigDst> {
    unsafe { HANDOFF.get(key) }.copied()
}
