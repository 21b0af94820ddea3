//! The charge path: direct memcg reclaim (`vmscan:mm_vmscan_memcg_reclaim_begin/end`), which
//! `try_charge_memcg()` runs each time a charge hits a limit, aggregated in the kernel per
//! memcg of the reclaiming task (the tracepoints carry no memcg: the task charging is the one
//! reclaiming). Never one ring-buffer record per event.
//!
//! The counters are shared by every CPU (not per CPU) and added to atomically, so that
//! `mark_victim` can copy one memcg's totals into its record: what led to a kill is then
//! read at the kill, the same for every reader.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use memstress_ebpf::Pressure;

use crate::{
    kernel::{self, layout},
    maps::{PRESSURE, RECLAIM_END, RECLAIM_START},
};

/// Adds `value` to the counter at `counter` atomically: a BPF atomic add (`lock *(u64 *)`),
/// which every BPF CPU version has as long as its result is unused. `core`'s atomic types
/// have no `fetch_add` on this target (it has no compare-and-swap), hence the intrinsic.
///
/// # Safety
/// `counter` points to a live, aligned `u64` in map memory.
#[inline(always)]
pub unsafe fn add(counter: *mut u64, value: u64) {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    // SAFETY: as the caller promises; map values are 8-byte aligned.
    let _ = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, value) };
}

/// `mm_vmscan_memcg_reclaim_begin(int order, gfp_t gfp_flags)`.
#[btf_tracepoint(function = "mm_vmscan_memcg_reclaim_begin")]
pub fn memcg_reclaim_begin(_ctx: BtfTracePointContext) -> i32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = RECLAIM_START.insert(tid, now, 0);
    0
}

/// `mm_vmscan_memcg_reclaim_end(unsigned long nr_reclaimed)`.
#[btf_tracepoint(function = "mm_vmscan_memcg_reclaim_end")]
pub fn memcg_reclaim_end(ctx: BtfTracePointContext) -> i32 {
    let _ = try_reclaim_end(&ctx);
    0
}

fn try_reclaim_end(ctx: &BtfTracePointContext) -> Result<(), ()> {
    let reclaimed: u64 = ctx.arg(0);
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: copying a plain value out of the map.
    let start = unsafe { RECLAIM_START.get(tid) }.copied().ok_or(())?;
    let _ = RECLAIM_START.remove(tid);
    // SAFETY: helpers without preconditions; the task pointer is only read through
    // bpf_probe_read_kernel.
    let (now, task) = unsafe { (bpf_ktime_get_ns(), bpf_get_current_task()) };
    let id = kernel::memcg_kn(task)
        .and_then(|kn| kernel::read::<u64>(kn, layout!(kn_id)))
        .ok_or(())?;
    let _ = RECLAIM_END.insert(tid, now, 0);
    let elapsed = now.saturating_sub(start);
    match PRESSURE.get_ptr_mut(id) {
        Some(p) => {
            // SAFETY: a live map value; the adds are atomic, as every CPU shares it.
            unsafe {
                add(&raw mut (*p).runs, 1);
                add(&raw mut (*p).reclaimed, reclaimed);
                add(&raw mut (*p).ns, elapsed);
            }
        }
        None => {
            let first = Pressure {
                runs: 1,
                reclaimed,
                ns: elapsed,
                asked: 0,
            };
            let _ = PRESSURE.insert(id, first, 0);
        }
    }
    Ok(())
}
