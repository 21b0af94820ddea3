//! `signal_generate`: every SIGKILL, and every SIGTERM, the kernel delivers.
//!
//! Two jobs. It remembers each SIGKILL the kernel itself sends (`SEND_SIG_PRIV`), so that
//! `mark_victim` can tell a victim the OOM killer killed from one it only marked because it
//! was already exiting (`task_will_free_mem()`), which dmesg never reports as a kill, and so
//! that the processes killed with a victim are found (collateral). And it reports who sent a
//! SIGKILL or a SIGTERM to whom (a [`SignalKill`] record): a SIGKILL at once, a SIGTERM once
//! the process exits (`aftermath::victim_exit` sends the record kept in `TERMS`). A thread
//! group signalling itself (`exit_group()`, `exec` killing sibling threads) is left out, and
//! so is a signal the target ignores or already has pending. Telling the OOM killer's
//! SIGKILLs apart is userspace's job: they are the `SEND_SIG_PRIV` ones followed by an OOM
//! record for the same task.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_loop},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use aya_log_ebpf::warn;
use memstress_ebpf::{
    CGROUP_DEPTH, Collateral, SignalKill, collateral, counters, kind, signal as sig,
};

use crate::{
    kernel::{self, layout},
    maps::{self, EVENTS, IN_OOM, KILLED, Killed, LAST_SIGKILL, SCRATCH_KILL, TERMS},
};

/// `__oom_kill_process()` SIGKILLs the processes sharing the victim's mm right after marking
/// the victim and printing its `Killed process` line, which on a slow console takes
/// milliseconds. A kernel SIGKILL from the same task within this window, to another process
/// that shares the victim's mm, is such a collateral kill (the entry is replaced at the
/// task's next kill). The mm decides, as it does in the kernel: the same task's next OOM
/// SIGKILLs its own victim *before* marking it (`do_send_sig_info()` precedes
/// `mark_oom_victim()`), so without the mm that victim would pass for collateral of the last.
const COLLATERAL_WINDOW_NS: u64 = 250_000_000;

const SIGKILL: i32 = sig::SIGKILL as i32;
const SIGTERM: i32 = sig::SIGTERM as i32;
/// `SEND_SIG_PRIV` is `(struct kernel_siginfo *) 1`.
const SEND_SIG_PRIV: u64 = 1;
/// `enum trace_signal_deliver`: the signal was queued.
const TRACE_SIGNAL_DELIVERED: i32 = 0;
/// … queued, without its siginfo (no memory for it): still delivered.
const TRACE_SIGNAL_LOSE_INFO: i32 = 4;

/// `signal_generate(int sig, struct kernel_siginfo *info, struct task_struct *task,
/// int group, int result)`.
#[btf_tracepoint(function = "signal_generate")]
pub fn signal_generate_btf(ctx: BtfTracePointContext) -> i32 {
    let signo: i32 = ctx.arg(0);
    if signo != SIGKILL && signo != SIGTERM {
        return 0;
    }
    let info: u64 = ctx.arg(1);
    let task: u64 = ctx.arg(2);
    let mut oom_collateral = false;
    if signo == SIGKILL && info == SEND_SIG_PRIV {
        oom_collateral = remember_kernel_kill(&ctx, task).unwrap_or(false);
    }
    let result: i32 = ctx.arg(4);
    // A collateral kill is reported as part of its OOM; an ignored signal (the target
    // ignores SIGTERM, or is already dying) or one already pending did nothing.
    if !oom_collateral && (result == TRACE_SIGNAL_DELIVERED || result == TRACE_SIGNAL_LOSE_INFO) {
        let group: i32 = ctx.arg(3);
        let _ = report(&ctx, signo, info, task, group);
    }
    0
}

/// The OOM side of a kernel SIGKILL: the sender's last kill (for `mark_victim`), the target's
/// mm, and a collateral kill. Returns whether it was collateral (and reported as such).
fn remember_kernel_kill(ctx: &BtfTracePointContext, task: u64) -> Result<bool, ()> {
    let Some(target) = kernel::read::<i32>(task, layout!(task_pid)) else {
        warn!(
            ctx,
            "signal_generate: reading a SIGKILL's target pid failed: an OOM kill may go unconfirmed"
        );
        return Err(());
    };
    let target = target as u32;
    let sender = bpf_get_current_pid_tgid() as u32;
    LAST_SIGKILL.insert(sender, target, 0).map_err(|_| ())?;
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let mm = kernel::read::<u64>(task, layout!(task_mm)).unwrap_or(0);
    let _ = KILLED.insert(target, Killed { ts_ns: now, mm }, 0);
    // SAFETY: copying a plain value out of the map.
    let Some(oom) = (unsafe { IN_OOM.get(sender) }).copied() else {
        return Ok(false);
    };
    if oom.victim_tid == target
        || oom.mm == 0
        || mm != oom.mm
        || now.saturating_sub(oom.ts_ns) > COLLATERAL_WINDOW_NS
    {
        return Ok(false);
    }
    let Some(mut entry) = EVENTS.reserve::<Collateral>(0) else {
        maps::count(counters::RINGBUF_DROPS);
        warn!(
            ctx,
            "OOM {}: ring buffer full: the collateral kill of {} dropped", oom.seq, target
        );
        return Ok(true);
    };
    // SAFETY: the reservation is one Collateral; every field is written before submitting.
    let c = unsafe { &mut *entry.as_mut_ptr() };
    c.kind = kind::COLLATERAL;
    c.reason = collateral::SHARES_MM;
    c.seq = oom.seq;
    c.ts_ns = now;
    c.victim_tid = oom.victim_tid;
    c._pad = 0;
    kernel::task_facts(task, &mut c.task);
    entry.submit(0);
    Ok(true)
}

/// Which path of the scratch record a walk fills.
const VICTIM: u32 = 0;
const SENDER: u32 = 1;

/// State of one walk up a cgroup's kernfs nodes (one component per `bpf_loop` step).
#[repr(C)]
struct PathWalk {
    kn: u64,
    which: u32,
    _pad: u32,
}

extern "C" fn path_step(index: u32, ctx: *mut c_void) -> i64 {
    let Some(ptr) = SCRATCH_KILL.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch slot, used only by this program (which does not nest).
    let record = unsafe { &mut *ptr };
    // SAFETY: `ctx` is the PathWalk on the caller's stack, alive for the loop.
    let walk = unsafe { &mut *ctx.cast::<PathWalk>() };
    let out = if walk.which == SENDER {
        &mut record.sender_cgroup
    } else {
        &mut record.victim_cgroup
    };
    // The mask bounds the index for the verifier; path_step checks the real one.
    i64::from(!kernel::path_step(&mut walk.kn, (index & 15) as usize, out))
}

/// Records the memory cgroup path of `task` into the scratch record's victim or sender path;
/// returns whether the task's cgroup was found.
#[inline(always)]
fn cgroup_of(task: u64, which: u32) -> bool {
    let Some(kn) = kernel::memcg_kn(task) else {
        return false;
    };
    let mut walk = PathWalk { kn, which, _pad: 0 };
    // SAFETY: bpf_loop calls the step with our stack context; see `path_step`.
    unsafe {
        bpf_loop(
            CGROUP_DEPTH as u32 + 1,
            path_step as *mut c_void,
            (&raw mut walk).cast::<c_void>(),
            0,
        )
    };
    true
}

/// Fills the scratch record with the sender (the current task) and the target, then sends a
/// SIGKILL's at once, or keeps a SIGTERM's in `TERMS` until the process exits.
fn report(
    ctx: &BtfTracePointContext,
    signo: i32,
    info: u64,
    task: u64,
    group: i32,
) -> Result<(), ()> {
    let target_tgid = kernel::read::<i32>(task, layout!(task_tgid)).ok_or(())? as u32;
    let sender_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if sender_tgid == target_tgid {
        // exit_group(), exec, or a process signalling one of its own threads.
        return Ok(());
    }
    let ptr = SCRATCH_KILL.get_ptr_mut(0).ok_or(())?;
    // SAFETY: this CPU's scratch slot; this program does not nest on one CPU.
    let record = unsafe { &mut *ptr };
    record.kind = kind::SIGNAL;
    record.signal = signo as u32;
    // SAFETY: helper without preconditions.
    record.ts_ns = unsafe { bpf_ktime_get_ns() };
    record.exit_ns = 0;
    record.term_ns = 0;
    record.exit_code = 0;
    record.flags = 0;
    if info == SEND_SIG_PRIV {
        record.flags |= sig::PRIV;
    }
    if group != 0 {
        record.flags |= sig::GROUP;
    }
    // SAFETY: helper without preconditions; the pointer is only read through
    // bpf_probe_read_kernel.
    let current = unsafe { bpf_get_current_task() };
    kernel::task_facts(current, &mut record.sender);
    kernel::task_facts(task, &mut record.victim);
    record.sender_cgroup.depth = 0;
    record.sender_cgroup.truncated = 0;
    record.victim_cgroup.depth = 0;
    record.victim_cgroup.truncated = 0;
    if cgroup_of(task, VICTIM) {
        record.flags |= sig::VICTIM_CGROUP;
    }
    if cgroup_of(current, SENDER) {
        record.flags |= sig::SENDER_CGROUP;
    }
    // The walks went through the map: take the slot again.
    let ptr = SCRATCH_KILL.get_ptr_mut(0).ok_or(())?;
    // SAFETY: as above.
    let record = unsafe { &mut *ptr };
    if signo == SIGTERM {
        // Sent when the process exits (aftermath::victim_exit); a later SIGTERM replaces it.
        // By reference: the record is far too big to be copied onto the BPF stack.
        let value: &SignalKill = record;
        if TERMS.insert(target_tgid, value, 0).is_err() {
            warn!(
                ctx,
                "signal_generate: cannot remember the SIGTERM to {}: its exit will not be reported",
                target_tgid
            );
        }
        return Ok(());
    }
    // A SIGKILL after a SIGTERM (a stop's grace period ran out): the exit is the SIGKILL's.
    // SAFETY: copying a plain value out of the map.
    if let Some(term_ns) = unsafe { TERMS.get(target_tgid) }.map(|t| t.ts_ns) {
        record.term_ns = term_ns;
        record.flags |= sig::AFTER_TERM;
        let _ = TERMS.remove(target_tgid);
    }
    if EVENTS.output::<SignalKill>(&*record, 0).is_err() {
        maps::count(counters::RINGBUF_DROPS);
        warn!(
            ctx,
            "ring buffer full: the SIGKILL of {} by {} dropped", target_tgid, sender_tgid
        );
    }
    Ok(())
}
