//! `mark_victim`: the OOM killer has chosen (and, normally, just SIGKILLed) a victim.
//!
//! Two programs share the work: the BTF tracepoint reads the victim's `task_struct` (ids,
//! cgroup, counters), and the classic `oom:mark_victim` tracepoint contributes the kernel's
//! own formatted figures (the same numbers dmesg prints). Both run in one
//! `trace_mark_victim()` call on one CPU; whichever runs second submits the joined record.
//! When only one of them is attached, userspace says so in `RUNTIME` and each record is
//! submitted by the one that ran.

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use memstress_ebpf::{OomVictim, UNKNOWN, counters, killed, kind, source, valid};

use crate::{
    kernel::{self, layout},
    maps::{self, EVENTS, LAST_SIGKILL, PENDING_VICTIM},
};

#[btf_tracepoint(function = "mark_victim")]
pub fn mark_victim_btf(ctx: BtfTracePointContext) -> i32 {
    let _ = try_mark_victim_btf(&ctx);
    0
}

fn try_mark_victim_btf(ctx: &BtfTracePointContext) -> Result<(), ()> {
    let slot = pending()?;
    if layout!(mark_victim_has_task) == 0 {
        // Kernels before 6.8 pass only `int pid`.
        let pid: i32 = ctx.arg(0);
        begin(slot, pid as u32, source::BTF);
        slot.victim.pid = pid as u32;
        slot.victim.tgid = pid as u32;
        slot.victim.valid = valid::IDS;
    } else {
        let task: u64 = ctx.arg(0);
        let tid = kernel::read::<i32>(task, layout!(task_pid)).ok_or(())? as u32;
        begin(slot, tid, source::BTF);
        kernel::task_facts(task, &mut slot.victim);
        if let Some(kn) = kernel::memcg_kn(task) {
            kernel::cgroup_path(kn, &mut slot.victim_cgroup);
        }
    }
    finish(slot, source::BTF);
    Ok(())
}

#[tracepoint]
pub fn mark_victim_tp(ctx: TracePointContext) -> u32 {
    let _ = try_mark_victim_tp(&ctx);
    0
}

fn try_mark_victim_tp(ctx: &TracePointContext) -> Result<(), ()> {
    let slot = pending()?;
    let pid: i32 = field(ctx, layout!(tp_victim_pid)).ok_or(())?;
    begin(slot, pid as u32, source::TRACEPOINT);
    let tp = &mut slot.tp;
    tp.pid = pid;
    tp.uid = field(ctx, layout!(tp_victim_uid)).unwrap_or(u32::MAX);
    tp.total_vm_kb = field(ctx, layout!(tp_victim_total_vm)).unwrap_or(u64::MAX);
    tp.anon_rss_kb = field(ctx, layout!(tp_victim_anon_rss)).unwrap_or(u64::MAX);
    tp.file_rss_kb = field(ctx, layout!(tp_victim_file_rss)).unwrap_or(u64::MAX);
    tp.shmem_rss_kb = field(ctx, layout!(tp_victim_shmem_rss)).unwrap_or(u64::MAX);
    tp.pgtables_kb = field(ctx, layout!(tp_victim_pgtables)).unwrap_or(u64::MAX);
    tp.oom_score_adj = field(ctx, layout!(tp_victim_oom_score_adj)).unwrap_or(i16::MIN);
    finish(slot, source::TRACEPOINT);
    Ok(())
}

/// Reads a field of a classic tracepoint record at an offset taken from tracefs.
#[inline(always)]
fn field<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    if offset == UNKNOWN {
        return None;
    }
    // SAFETY: the offset comes from the event's tracefs format, so it lies inside the record;
    // the read goes through bpf_probe_read_kernel anyway.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

#[inline(always)]
fn pending() -> Result<&'static mut OomVictim, ()> {
    let ptr = PENDING_VICTIM.get_ptr_mut(0).ok_or(())?;
    // SAFETY: this CPU's slot of a live per-CPU map; the two `mark_victim` programs run one
    // after the other on this CPU and nothing else touches the slot.
    Ok(unsafe { &mut *ptr })
}

/// The victim thread id already recorded in a half-filled slot.
#[inline(always)]
fn pending_tid(slot: &OomVictim) -> u32 {
    if slot.sources & source::BTF != 0 {
        slot.victim.pid
    } else {
        slot.tp.pid as u32
    }
}

/// Starts a record for victim `tid`, unless the other half already started it.
#[inline(always)]
fn begin(slot: &mut OomVictim, tid: u32, me: u32) {
    if slot.sources != 0 && (pending_tid(slot) != tid || slot.sources & me != 0) {
        // A half whose partner never ran (it detached, or failed mid-way): send what we have
        // rather than lose the kill, and count it.
        maps::count(counters::VICTIM_HALVES_UNMATCHED);
        submit(slot);
    }
    if slot.sources != 0 {
        return;
    }
    maps::count(counters::VICTIMS_SEEN);
    slot.kind = kind::OOM_VICTIM;
    // SAFETY: helpers without preconditions.
    slot.cpu = unsafe { bpf_get_smp_processor_id() };
    // SAFETY: as above.
    slot.ts_ns = unsafe { bpf_ktime_get_ns() };
    slot.victim.valid = 0;
    slot.victim_cgroup.depth = 0;
    slot.victim_cgroup.truncated = 0;
    // SAFETY: as above; the returned pointer is only used through bpf_probe_read_kernel.
    let current = unsafe { bpf_get_current_task() };
    kernel::task_facts(current, &mut slot.trigger);
    slot.killed = kill_state(slot.trigger.pid, tid);
}

/// Whether the task running the OOM killer just SIGKILLed the victim.
#[inline(always)]
fn kill_state(current_tid: u32, victim_tid: u32) -> u32 {
    if maps::runtime().signal_attached == 0 {
        return killed::UNCONFIRMED;
    }
    // SAFETY: a copy of a u32 value is taken before the entry can be removed.
    match unsafe { LAST_SIGKILL.get(current_tid) }.copied() {
        Some(target) if target == victim_tid => {
            let _ = LAST_SIGKILL.remove(current_tid);
            killed::YES
        }
        _ => killed::NO,
    }
}

/// Adds this program's half and submits the record once every expected half is in.
#[inline(always)]
fn finish(slot: &mut OomVictim, me: u32) {
    slot.sources |= me;
    let expected = maps::runtime().victim_sources;
    if expected == 0 || slot.sources & expected == expected {
        submit(slot);
    }
}

#[inline(always)]
fn submit(slot: &mut OomVictim) {
    if EVENTS.output::<OomVictim>(&*slot, 0).is_err() {
        maps::count(counters::RINGBUF_DROPS);
    }
    slot.sources = 0;
}
