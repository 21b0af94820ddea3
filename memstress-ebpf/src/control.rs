//! Where fentry/fexit load (most production kernels, the lab's qemu kernels; not this
//! project's CI machine): the OOM killer's own state, exact.
//!
//! * `fentry:out_of_memory` marks the task running an OOM, so that `oom_badness()` calls
//!   from `/proc/PID/oom_score` reads are not mistaken for candidates.
//! * `fexit:oom_badness` records every candidate's points as the kernel computed them.
//! * `fentry:oom_kill_process` reads `struct oom_control` after selection: constraint,
//!   totalpages, the domain memcg, the chosen task and its points.
//! * `fentry:try_to_free_mem_cgroup_pages` adds the pages direct reclaim was asked for.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns},
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use memstress_ebpf::{OomControlFacts, Pressure};

use crate::{
    kernel::{self, layout},
    maps::{BADNESS, Badness, IN_PROGRESS, OOM_CONTROL, PRESSURE},
};

fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// `bool out_of_memory(struct oom_control *oc)`.
#[fentry(function = "out_of_memory")]
pub fn out_of_memory_entry(_ctx: FEntryContext) -> i32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = IN_PROGRESS.insert(tid, now(), 0);
    0
}

/// `long oom_badness(struct task_struct *p, unsigned long totalpages)`: fexit sees the
/// arguments, then the return value.
#[fexit(function = "oom_badness")]
pub fn oom_badness_exit(ctx: FExitContext) -> i32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: copying a plain value out of the map.
    if unsafe { IN_PROGRESS.get(tid) }.is_none() {
        return 0;
    }
    let task: u64 = ctx.arg(0);
    let points: i64 = ctx.arg(2);
    if let Some(tgid) = kernel::read::<i32>(task, layout!(task_tgid)) {
        let entry = Badness {
            points,
            ts_ns: now(),
        };
        let _ = BADNESS.insert(tgid as u32, entry, 0);
    }
    0
}

/// `static void oom_kill_process(struct oom_control *oc, const char *message)`.
#[fentry(function = "oom_kill_process")]
pub fn oom_kill_process_entry(ctx: FEntryContext) -> i32 {
    let oc: u64 = ctx.arg(0);
    let memcg = kernel::read::<u64>(oc, layout!(oc_memcg)).unwrap_or(0);
    // The memcg is its css: cgroup -> kn -> id.
    let memcg_id = kernel::read::<u64>(memcg, layout!(css_cgroup))
        .and_then(|cgroup| kernel::read::<u64>(cgroup, layout!(cgroup_kn)))
        .and_then(|kn| kernel::read::<u64>(kn, layout!(kn_id)))
        .unwrap_or(0);
    let chosen = kernel::read::<u64>(oc, layout!(oc_chosen)).unwrap_or(0);
    let facts = OomControlFacts {
        valid: 1,
        constraint: kernel::read::<u32>(oc, layout!(oc_constraint)).unwrap_or(u32::MAX),
        totalpages: kernel::read::<u64>(oc, layout!(oc_totalpages)).unwrap_or(0),
        chosen_points: kernel::read::<i64>(oc, layout!(oc_chosen_points)).unwrap_or(i64::MIN),
        chosen_tid: kernel::read::<i32>(chosen, layout!(task_pid)).unwrap_or(0) as u32,
        order: kernel::read::<i32>(oc, layout!(oc_order)).unwrap_or(-1),
        gfp_mask: kernel::read::<u32>(oc, layout!(oc_gfp_mask)).unwrap_or(0),
        _pad: 0,
        memcg_id,
        ts_ns: now(),
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = OOM_CONTROL.insert(tid, facts, 0);
    0
}

/// `unsigned long try_to_free_mem_cgroup_pages(struct mem_cgroup *memcg,
/// unsigned long nr_pages, gfp_t gfp_mask, unsigned int reclaim_options, ...)`.
#[fentry(function = "try_to_free_mem_cgroup_pages")]
pub fn memcg_reclaim_ask(ctx: FEntryContext) -> i32 {
    let asked: u64 = ctx.arg(1);
    // SAFETY: helper without preconditions; the pointer is only read through
    // bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    let Some(id) = kernel::memcg_kn(task).and_then(|kn| kernel::read::<u64>(kn, layout!(kn_id)))
    else {
        return 0;
    };
    match PRESSURE.get_ptr_mut(id) {
        // SAFETY: a live map value, shared by every CPU: added to atomically.
        Some(p) => unsafe { crate::pressure::add(&raw mut (*p).asked, asked) },
        None => {
            let first = Pressure {
                asked,
                ..Pressure::default()
            };
            let _ = PRESSURE.insert(id, first, 0);
        }
    }
    0
}
