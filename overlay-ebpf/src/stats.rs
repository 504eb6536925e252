//! Per-CPU counters: no atomics, no contention; the agent sums the CPUs.

use overlay_common::stats::{DropReason, FwdCounter};

use crate::maps::{OV_DROPS, OV_FWD};

#[inline(always)]
pub fn drop(reason: DropReason) {
    if let Some(c) = OV_DROPS.get_ptr_mut(reason as u32) {
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn fwd(counter: FwdCounter) {
    fwd_index(counter as u32)
}

/// `fwd` by index, for out-of-line functions that take the counter as a plain register.
#[inline(always)]
pub fn fwd_index(counter: u32) {
    if let Some(c) = OV_FWD.get_ptr_mut(counter) {
        unsafe { *c += 1 };
    }
}
