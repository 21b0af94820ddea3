//! `signal_generate`: remembers each SIGKILL the kernel itself sends (`SEND_SIG_PRIV`), so
//! that `mark_victim` can tell a victim the OOM killer killed from one it only marked because
//! it was already exiting (`task_will_free_mem()`), which dmesg never reports as a kill.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint, programs::BtfTracePointContext,
};

use crate::{
    kernel::{self, layout},
    maps::LAST_SIGKILL,
};

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
    let target = kernel::read::<i32>(task, layout!(task_pid)).ok_or(())? as u32;
    let sender = bpf_get_current_pid_tgid() as u32;
    LAST_SIGKILL.insert(sender, target, 0).map_err(|_| ())
}
