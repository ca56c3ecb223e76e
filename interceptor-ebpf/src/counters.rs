//! Per-pod decision counters (`ebpf status`).
use interceptor_common::{CounterKey, Reason};

use crate::maps::COUNTERS;

#[inline(always)]
pub fn count(netns_cookie: u64, reason: Reason) {
    let key = CounterKey { netns_cookie, reason: reason as u32, _pad: 0 };
    match COUNTERS.get_ptr_mut(&key) {
        // Per-CPU value: no other CPU writes it.
        Some(v) => unsafe { *v += 1 },
        None => {
            let _ = COUNTERS.insert(&key, &1u64, 0);
        }
    }
}
