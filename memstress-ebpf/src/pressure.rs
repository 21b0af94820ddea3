//! The charge path: direct memcg reclaim (`vmscan:mm_vmscan_memcg_reclaim_begin/end`), which
//! `try_charge_memcg()` runs each time a charge hits a limit, aggregated in the kernel per
//! memcg of the reclaiming task (the tracepoints carry no memcg: the task charging is the one
//! reclaiming). Never one ring-buffer record per event.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use memstress_ebpf::Pressure;

use crate::{
    kernel::{self, layout},
    maps::{PRESSURE, RECLAIM_START},
};

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
    let elapsed = now.saturating_sub(start);
    match PRESSURE.get_ptr_mut(id) {
        Some(p) => {
            // SAFETY: this CPU's value in a per-CPU map; nothing else writes it meanwhile.
            let p = unsafe { &mut *p };
            p.runs += 1;
            p.reclaimed += reclaimed;
            p.ns += elapsed;
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
