//! What happens to a victim after the kill: it exits (`sched_process_exit`), or the OOM
//! reaper frees its memory (`oom:start_task_reaping`, `finish_task_reaping`,
//! `skip_task_reaping`). Only tasks `mark_victim` recorded are reported; and a process that
//! exits after a SIGTERM gets the SIGTERM's record (`signal::report` kept it in `TERMS`).

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};
use aya_log_ebpf::warn;
use memstress_ebpf::{Aftermath, SignalKill, aftermath, counters, kind, signal as sig};

use crate::{
    kernel::{self, layout},
    maps::{self, EVENTS, KILLED, TERMS, VICTIMS},
};

/// A SIGTERM is reported with the exit that follows it within this long (grace periods:
/// docker 10 s, kubelet 30 s by default, systemd 90 s); a process that exits later handled
/// the SIGTERM and went on, and its exit is not the SIGTERM's.
const TERM_EXIT_WINDOW_NS: u64 = 300_000_000_000;

/// Exits within this long of a kernel SIGKILL are reported even before the victim is
/// marked.
const EARLY_EXIT_NS: u64 = 50_000_000;

fn report(tid: u32, what: u32, forget: bool) -> Result<(), ()> {
    // SAFETY: copying a plain value out of the map.
    let seq = match unsafe { VICTIMS.get(tid) }.copied() {
        Some(seq) => seq,
        // An exit that raced ahead of mark_victim: sequence 0, joined in userspace.
        None if what == aftermath::EXITED => {
            // SAFETY: as above.
            let killed = unsafe { KILLED.get(tid) }.copied().ok_or(())?;
            // SAFETY: helper without preconditions.
            if unsafe { bpf_ktime_get_ns() }.saturating_sub(killed.ts_ns) > EARLY_EXIT_NS {
                return Err(());
            }
            let _ = KILLED.remove(tid);
            0
        }
        None => return Err(()),
    };
    if forget {
        let _ = VICTIMS.remove(tid);
    }
    let Some(mut entry) = EVENTS.reserve::<Aftermath>(0) else {
        maps::count(counters::RINGBUF_DROPS);
        warn!(
            &(),
            "OOM {}: ring buffer full: what became of victim {} dropped", seq, tid
        );
        return Err(());
    };
    // SAFETY: the reservation is one Aftermath; every field is written before submitting.
    let a = unsafe { &mut *entry.as_mut_ptr() };
    a.kind = kind::AFTERMATH;
    a.what = what;
    // SAFETY: helper without preconditions.
    a.ts_ns = unsafe { bpf_ktime_get_ns() };
    a.tid = tid;
    a._pad = 0;
    a.seq = seq;
    entry.submit(0);
    Ok(())
}

/// `sched_process_exit(struct task_struct *p, bool group_dead)`: most exits are not OOM
/// victims and cost one hash lookup, and a process's main thread one more (a SIGTERM).
#[btf_tracepoint(function = "sched_process_exit")]
pub fn victim_exit(ctx: BtfTracePointContext) -> i32 {
    let task: u64 = ctx.arg(0);
    if let Some(tid) = kernel::read::<i32>(task, layout!(task_pid)) {
        let _ = report(tid as u32, aftermath::EXITED, false);
        if kernel::read::<i32>(task, layout!(task_tgid)) == Some(tid) {
            term_exit(task, tid as u32);
        }
    }
    0
}

/// The process `tgid` exits: if a SIGTERM reached it, its record is completed and sent.
#[inline(always)]
fn term_exit(task: u64, tgid: u32) {
    let Some(ptr) = TERMS.get_ptr_mut(tgid) else {
        return;
    };
    // SAFETY: a live map value; the entry is removed only below, after its last use.
    let record = unsafe { &mut *ptr };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.saturating_sub(record.ts_ns) <= TERM_EXIT_WINDOW_NS {
        record.exit_ns = now;
        record.flags |= sig::EXITED;
        if let Some(code) = kernel::read::<i32>(task, layout!(task_exit_code)) {
            record.exit_code = code as u32;
            record.flags |= sig::EXIT_CODE;
        }
        if EVENTS.output::<SignalKill>(&*record, 0).is_err() {
            maps::count(counters::RINGBUF_DROPS);
            warn!(
                &(),
                "ring buffer full: the exit of {} after a SIGTERM dropped", tgid
            );
        }
    }
    let _ = TERMS.remove(tgid);
}

#[btf_tracepoint(function = "start_task_reaping")]
pub fn start_task_reaping(ctx: BtfTracePointContext) -> i32 {
    let pid: i32 = ctx.arg(0);
    let _ = report(pid as u32, aftermath::REAP_START, false);
    0
}

#[btf_tracepoint(function = "finish_task_reaping")]
pub fn finish_task_reaping(ctx: BtfTracePointContext) -> i32 {
    let pid: i32 = ctx.arg(0);
    let _ = report(pid as u32, aftermath::REAP_FINISH, true);
    0
}

#[btf_tracepoint(function = "skip_task_reaping")]
pub fn skip_task_reaping(ctx: BtfTracePointContext) -> i32 {
    let pid: i32 = ctx.arg(0);
    let _ = report(pid as u32, aftermath::REAP_SKIP, true);
    0
}
