//! `signal_generate`: remembers each SIGKILL the kernel itself sends (`SEND_SIG_PRIV`), so
//! that `mark_victim` can tell a victim the OOM killer killed from one it only marked because
//! it was already exiting (`task_will_free_mem()`), which dmesg never reports as a kill.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use aya_log_ebpf::warn;
use memstress_ebpf::{Collateral, collateral, counters, kind};

use crate::{
    kernel::{self, layout},
    maps::{self, EVENTS, IN_OOM, KILLED, Killed, LAST_SIGKILL},
};

/// `__oom_kill_process()` SIGKILLs the processes sharing the victim's mm right after marking
/// the victim and printing its `Killed process` line, which on a slow console takes
/// milliseconds. A kernel SIGKILL from the same task within this window, to another process
/// that shares the victim's mm, is such a collateral kill (the entry is replaced at the
/// task's next kill). The mm decides, as it does in the kernel: the same task's next OOM
/// SIGKILLs its own victim *before* marking it (`do_send_sig_info()` precedes
/// `mark_oom_victim()`), so without the mm that victim would pass for collateral of the last.
const COLLATERAL_WINDOW_NS: u64 = 250_000_000;

const SIGKILL: i32 = 9;
/// `SEND_SIG_PRIV` is `(struct kernel_siginfo *) 1`.
const SEND_SIG_PRIV: u64 = 1;

/// `signal_generate(int sig, struct kernel_siginfo *info, struct task_struct *task,
/// int group, int result)`.
#[btf_tracepoint(function = "signal_generate")]
pub fn signal_generate_btf(ctx: BtfTracePointContext) -> i32 {
    let _ = try_signal_generate(&ctx);
    0
}

fn try_signal_generate(ctx: &BtfTracePointContext) -> Result<(), ()> {
    let sig: i32 = ctx.arg(0);
    if sig != SIGKILL {
        return Ok(());
    }
    let info: u64 = ctx.arg(1);
    if info != SEND_SIG_PRIV {
        return Ok(());
    }
    let task: u64 = ctx.arg(2);
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
        return Ok(());
    };
    if oom.victim_tid == target
        || oom.mm == 0
        || mm != oom.mm
        || now.saturating_sub(oom.ts_ns) > COLLATERAL_WINDOW_NS
    {
        return Ok(());
    }
    let Some(mut entry) = EVENTS.reserve::<Collateral>(0) else {
        maps::count(counters::RINGBUF_DROPS);
        warn!(
            ctx,
            "OOM {}: ring buffer full: the collateral kill of {} dropped", oom.seq, target
        );
        return Ok(());
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
    Ok(())
}
