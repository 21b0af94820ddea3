//! `mark_victim`: the OOM killer has chosen (and, normally, just SIGKILLed) a victim.
//!
//! Two programs share the work: the BTF tracepoint reads the victim's `task_struct` (ids,
//! cgroup, counters), and the classic `oom:mark_victim` tracepoint contributes the kernel's
//! own formatted figures (the same numbers dmesg prints). Both run in one
//! `trace_mark_victim()` call on one CPU; whichever runs second submits the joined record.
//! When only one of them is attached, userspace says so in `RUNTIME` and each record is
//! submitted by the one that ran.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_loop,
    },
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use aya_log_ebpf::warn;
use memstress_ebpf::{
    CGROUP_DEPTH, CHAIN_DEPTH, Candidate, OomVictim, ScanStats, UNKNOWN, counters, domain, killed,
    kind, level, skip, source, valid,
};

use crate::{
    kernel::{self, layout},
    maps::{
        self, BADNESS, EVENTS, IN_OOM, IN_PROGRESS, InOom, KILLED, LAST_SIGKILL, OOM_CONTROL,
        PENDING_VICTIM, PRESSURE, RECLAIM_END, SCAN, SCRATCH_CANDIDATE, ScanState, VICTIMS,
    },
};

/// `PF_KTHREAD`: kernel threads are never OOM candidates.
const PF_KTHREAD: u32 = 0x0020_0000;
/// With `memory.oom.group` set on the domain, kills by one trigger closer than this belong to
/// one `out_of_memory()` call (each group member's kill prints to the console in between,
/// which can take milliseconds; a new OOM in that domain cannot follow so soon, as the whole
/// group, trigger included, is being killed).
const SAME_OOM_NS: u64 = 250_000_000;

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
        let Some(tid) = kernel::read::<i32>(task, layout!(task_pid)) else {
            warn!(
                ctx,
                "mark_victim: reading the victim's pid failed (task_struct.pid at offset {})",
                layout!(task_pid)
            );
            return Err(());
        };
        let tid = tid as u32;
        begin(slot, tid, source::BTF);
        kernel::task_facts(task, &mut slot.victim);
        if slot.victim.valid & valid::MEMCG == 0 {
            warn!(
                ctx,
                "mark_victim: reading victim {}'s memory cgroup failed: no domain, no candidates",
                tid
            );
        }
        if let Some(mut kn) = kernel::memcg_kn(task) {
            // SAFETY: bpf_loop calls the step with our stack context; see `path_step`.
            unsafe {
                bpf_loop(
                    CGROUP_DEPTH as u32 + 1,
                    path_step as *mut c_void,
                    (&raw mut kn).cast::<c_void>(),
                    0,
                )
            };
        }
        let mut walk = kernel::ChainWalk::new(kernel::memcg_css(task).unwrap_or(0));
        // SAFETY: as above; see `chain_step`.
        unsafe {
            bpf_loop(
                CHAIN_DEPTH as u32,
                chain_step as *mut c_void,
                (&raw mut walk).cast::<c_void>(),
                0,
            )
        };
        let (mut domain_cgroup, mut domain_level) = kernel::chain_domain(&walk, &mut slot.chain);
        remember(slot, tid, task);
        slot.oc = oom_control(tid);
        // Where fentry loads, the kernel's own `oc->memcg` decides the domain the scan walks:
        // the chain's signs (oom_lock, usage at the limit) can be gone by the time the victim
        // is marked (an earlier victim's memory being freed meanwhile), and a scan without
        // a domain would take the whole node for it.
        if slot.oc.valid != 0
            && let Some((cgroup, level)) = kernel::oc_domain(&walk, &slot.chain, slot.oc.memcg_id)
        {
            domain_cgroup = cgroup;
            domain_level = level;
        }
        // A memory.oom.group kill was not chosen: the first victim's scan explains it.
        if slot.group_kill == 0 {
            // The kill is counted against its domain's OOMs (a group's kills are one OOM).
            let domain_id = if slot.oc.valid != 0 {
                slot.oc.memcg_id
            } else {
                slot.chain
                    .levels
                    .get(slot.chain.domain as usize)
                    .map_or(0, |l| l.id)
            };
            if domain_id != 0 {
                kernel::attribute_kill(&slot.chain, domain_id);
            }
            // SAFETY: helpers without preconditions.
            let start = unsafe { bpf_ktime_get_ns() };
            slot.scan = scan(task, domain_cgroup, domain_level, slot.seq);
            // SAFETY: as above.
            let end = unsafe { bpf_ktime_get_ns() };
            slot.scan.ns = end.saturating_sub(start);
            let trigger = bpf_get_current_pid_tgid() as u32;
            // SAFETY: copying a plain value out of the map.
            slot.scan.since_reclaim_ns = match unsafe { RECLAIM_END.get(trigger) }.copied() {
                Some(at) if at <= start && start - at < 10_000_000_000 => start - at,
                _ => 0,
            };
        }
    }
    finish(slot, source::BTF);
    Ok(())
}

extern "C" fn path_step(index: u32, ctx: *mut c_void) -> i64 {
    let Ok(slot) = pending() else { return 1 };
    // SAFETY: `ctx` is the kernfs node pointer on the caller's stack, alive for the loop.
    let kn = unsafe { &mut *ctx.cast::<u64>() };
    // The mask gives the verifier a bound for the index (bpf_loop passes an unbounded
    // scalar); path_step checks the real one.
    i64::from(!kernel::path_step(
        kn,
        (index & 15) as usize,
        &mut slot.victim_cgroup,
    ))
}

extern "C" fn chain_step(index: u32, ctx: *mut c_void) -> i64 {
    let Ok(slot) = pending() else { return 1 };
    // SAFETY: `ctx` is the ChainWalk on the caller's stack, alive for the loop.
    let walk = unsafe { &mut *ctx.cast::<kernel::ChainWalk>() };
    i64::from(!kernel::chain_step(
        walk,
        (index & 15) as usize,
        &mut slot.chain,
    ))
}

/// Notes this kill for what follows it: a second kill by the same trigger within the same
/// OOM is a `memory.oom.group` kill; SIGKILLs the trigger sends next are collateral; the
/// victim's exit and reaping are reported.
#[inline(always)]
fn remember(slot: &mut OomVictim, tid: u32, task: u64) {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let trigger = slot.trigger.pid;
    let oom_group = slot.chain.domain != domain::GLOBAL
        && (slot.chain.domain as usize) < slot.chain.levels.len()
        && slot.chain.levels[slot.chain.domain as usize].flags & level::OOM_GROUP != 0;
    // SAFETY: copying a plain value out of the map.
    if let Some(previous) = unsafe { IN_OOM.get(trigger) }.copied()
        && previous.oom_group != 0
        && previous.victim_tid != tid
        && now.saturating_sub(previous.ts_ns) < SAME_OOM_NS
    {
        slot.group_kill = 1;
        slot.seq = previous.seq;
    }
    // The victim's mm as it is now, or (should the victim have begun exiting since its
    // SIGKILL) as it was when the SIGKILL was sent.
    let mut mm = kernel::read::<u64>(task, layout!(task_mm)).unwrap_or(0);
    if mm == 0 {
        // SAFETY: copying a plain value out of the map.
        mm = unsafe { KILLED.get(tid) }.map_or(0, |k| k.mm);
    }
    let entry = InOom {
        seq: slot.seq,
        ts_ns: now,
        victim_tid: tid,
        oom_group: u32::from(oom_group),
        mm,
    };
    let _ = IN_OOM.insert(trigger, entry, 0);
    let _ = VICTIMS.insert(tid, slot.seq, 0);
}

/// The `struct oom_control` that `fentry:oom_kill_process` read for this victim, if any.
#[inline(always)]
fn oom_control(victim_tid: u32) -> memstress_ebpf::OomControlFacts {
    let current = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    // SAFETY: copying plain values out of the maps.
    let (facts, began) = unsafe {
        (
            OOM_CONTROL.get(current).copied(),
            IN_PROGRESS.get(current).copied(),
        )
    };
    match (facts, began) {
        (Some(f), Some(began)) if f.ts_ns >= began && f.chosen_tid == victim_tid => f,
        _ => memstress_ebpf::OomControlFacts::default(),
    }
}

/// Lists the tasks the OOM killer chose among: every thread-group leader in the domain.
/// A memcg domain's tasks are visited the way `mem_cgroup_scan_tasks()` visits them: its
/// cgroups in pre-order, each cgroup's `css_set`s, each `css_set`'s tasks (thread-group
/// leaders only), so that the cost is the domain's size, not the node's. A global OOM (or a
/// kernel whose BTF lacks those links) walks `task->tasks`, the list `for_each_process()`
/// walks, from the victim round to it. Kernel threads are left out; tasks the kernel would
/// skip are sent with the reason.
#[inline(always)]
fn scan(victim: u64, domain: u64, level: i32, seq: u64) -> ScanStats {
    let limit = layout!(scan_limit);
    let Some(state) = SCAN.get_ptr_mut(0) else {
        return ScanStats::default();
    };
    // SAFETY: this CPU's slot; only this program (and its callback) uses it.
    let state = unsafe { &mut *state };
    state.start = victim;
    state.cur = victim;
    state.domain = domain;
    state.level = level;
    state.seq = seq;
    state.stats = ScanStats::default();
    state.budget = layout!(candidate_limit);
    state.done = 0;
    state.ring_full = 0;
    state.cgroup = domain;
    state.link = 0;
    state.cset = 0;
    state.list = 0;
    state.pos = 0;
    state.migrating = 0;
    state.by_cgroup = u32::from(domain != 0 && cgroup_walk_known());
    if limit == 0 || (state.by_cgroup == 0 && layout!(task_tasks) == UNKNOWN) {
        return state.stats;
    }
    consider(state, victim);
    // SAFETY: bpf_loop calls `scan_step` at most `limit` times; the callback keeps its state
    // in the SCAN map (state on the stack would change at every step and keep the verifier
    // from converging) and reads kernel memory only through bpf_probe_read_kernel.
    unsafe { bpf_loop(limit, scan_step as *mut c_void, core::ptr::null_mut(), 0) };
    let Some(state) = SCAN.get_ptr_mut(0) else {
        return ScanStats::default();
    };
    // SAFETY: as above.
    let state = unsafe { &mut *state };
    if state.done == 0 {
        state.stats.truncated = 1;
        warn!(
            &(),
            "OOM {}: candidate scan cut short after {} tasks (scan limit {})",
            seq,
            state.stats.visited,
            limit
        );
    }
    if state.ring_full != 0 {
        warn!(
            &(),
            "OOM {}: ring buffer full: {} candidate records dropped", seq, state.ring_full
        );
    }
    state.stats
}

/// Whether the BTF gave every offset the walk of a memcg domain's own tasks needs.
#[inline(always)]
fn cgroup_walk_known() -> bool {
    layout!(task_cg_list) != UNKNOWN
        && layout!(css_children) != UNKNOWN
        && layout!(css_sibling) != UNKNOWN
        && layout!(css_parent) != UNKNOWN
        && layout!(cgroup_self) != UNKNOWN
        && layout!(cgroup_cset_links) != UNKNOWN
        && layout!(link_cset_link) != UNKNOWN
        && layout!(link_cset) != UNKNOWN
        && layout!(cset_tasks) != UNKNOWN
        && layout!(cset_mg_tasks) != UNKNOWN
}

/// `migrating` while climbing back up the domain's subtree to the next cgroup.
const CLIMBING: u32 = 2;

extern "C" fn scan_step(_index: u32, _ctx: *mut c_void) -> i64 {
    let Some(state) = SCAN.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's slot of the SCAN map, used only by this program.
    let state = unsafe { &mut *state };
    if state.by_cgroup != 0 {
        return domain_step(state);
    }
    let off = layout!(task_tasks);
    let Some(next) = kernel::read::<u64>(state.cur, off) else {
        state.done = 1;
        return 1;
    };
    let task = next.wrapping_sub(u64::from(off));
    if task == state.start || next == 0 {
        state.done = 1;
        return 1;
    }
    state.cur = task;
    state.stats.visited += 1;
    consider(state, task);
    0
}

/// One move of a memcg domain's walk: to the next task of the current task list, to the
/// next list (`mg_tasks` after `tasks`), `css_set` or cgroup. Returns 1 when done.
#[inline(always)]
fn domain_step(state: &mut ScanState) -> i64 {
    if state.migrating == CLIMBING {
        return climb(state);
    }
    if state.link == 0 {
        // The current cgroup's first css_set, or on to the next cgroup.
        let head = state
            .cgroup
            .wrapping_add(u64::from(layout!(cgroup_cset_links)));
        let Some(first) = kernel::read::<u64>(head, 0) else {
            return stop(state);
        };
        if first == head || first == 0 {
            return next_cgroup(state);
        }
        return enter_link(state, first);
    }
    let Some(next) = kernel::read::<u64>(state.pos, 0) else {
        return stop(state);
    };
    if next == state.list || next == 0 {
        return end_list(state);
    }
    let task = next.wrapping_sub(u64::from(layout!(task_cg_list)));
    // The lists change under the walk (it does not hold css_set_lock): an exiting task
    // moves to its css_set's `dying_tasks`, a migrating one to another css_set. A node whose
    // task is not of this css_set (or a list head read as a task) ends this list.
    if kernel::read::<u64>(task, layout!(task_cgroups)) != Some(state.cset) {
        return end_list(state);
    }
    state.pos = next;
    state.stats.visited += 1;
    // `CSS_TASK_ITER_PROCS`: thread-group leaders only; the victim was considered first.
    if task != state.start
        && kernel::read::<i32>(task, layout!(task_pid))
            == kernel::read::<i32>(task, layout!(task_tgid))
    {
        consider(state, task);
    }
    0
}

/// The current task list is done: `mg_tasks` after `tasks`, then the next css_set of the
/// cgroup, then the next cgroup.
#[inline(always)]
fn end_list(state: &mut ScanState) -> i64 {
    if state.migrating == 0 {
        state.migrating = 1;
        state.list = state.cset.wrapping_add(u64::from(layout!(cset_mg_tasks)));
        state.pos = state.list;
        return 0;
    }
    let head = state
        .cgroup
        .wrapping_add(u64::from(layout!(cgroup_cset_links)));
    let node = state.link.wrapping_add(u64::from(layout!(link_cset_link)));
    let Some(node) = kernel::read::<u64>(node, 0) else {
        return stop(state);
    };
    if node == head || node == 0 {
        return next_cgroup(state);
    }
    enter_link(state, node)
}

#[inline(always)]
fn stop(state: &mut ScanState) -> i64 {
    state.done = 1;
    1
}

/// Starts on the `css_set` of the `cgrp_cset_link` whose `cset_link` node is `node`.
#[inline(always)]
fn enter_link(state: &mut ScanState, node: u64) -> i64 {
    let link = node.wrapping_sub(u64::from(layout!(link_cset_link)));
    let Some(cset) = kernel::read::<u64>(link, layout!(link_cset)) else {
        return stop(state);
    };
    state.link = link;
    state.cset = cset;
    state.migrating = 0;
    state.list = cset.wrapping_add(u64::from(layout!(cset_tasks)));
    state.pos = state.list;
    0
}

/// Pre-order: the current cgroup's first child, else climb to the next sibling.
#[inline(always)]
fn next_cgroup(state: &mut ScanState) -> i64 {
    state.link = 0;
    let own = u64::from(layout!(cgroup_self));
    let head = state
        .cgroup
        .wrapping_add(own)
        .wrapping_add(u64::from(layout!(css_children)));
    match kernel::read::<u64>(head, 0) {
        Some(first) if first != head && first != 0 => {
            state.cgroup = first
                .wrapping_sub(u64::from(layout!(css_sibling)))
                .wrapping_sub(own);
            0
        }
        Some(_) => {
            state.migrating = CLIMBING;
            0
        }
        None => stop(state),
    }
}

/// One level of the climb: the current cgroup's next sibling if it has one (the walk goes on
/// there), else its parent; done at the domain.
#[inline(always)]
fn climb(state: &mut ScanState) -> i64 {
    if state.cgroup == state.domain {
        return stop(state);
    }
    let own = u64::from(layout!(cgroup_self));
    let css = state.cgroup.wrapping_add(own);
    let (Some(parent), Some(next)) = (
        kernel::read::<u64>(css, layout!(css_parent)),
        kernel::read::<u64>(css, layout!(css_sibling)),
    ) else {
        return stop(state);
    };
    if parent == 0 {
        return stop(state);
    }
    if next != parent.wrapping_add(u64::from(layout!(css_children))) {
        state.cgroup = next
            .wrapping_sub(u64::from(layout!(css_sibling)))
            .wrapping_sub(own);
        state.migrating = 0;
        state.link = 0;
    } else {
        state.cgroup = parent.wrapping_sub(own);
    }
    0
}

#[inline(always)]
fn consider(state: &mut ScanState, task: u64) {
    let flags = kernel::read::<u32>(task, layout!(task_flags)).unwrap_or(0);
    // Checked in a domain's own walk too: its lists can change under it.
    if flags & PF_KTHREAD != 0 || !kernel::in_domain(task, state.domain, state.level) {
        return;
    }
    if state.budget == 0 {
        state.stats.dropped += 1;
        maps::count(counters::CANDIDATES_CAPPED);
        return;
    }
    let Some(ptr) = SCRATCH_CANDIDATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot; nothing else uses it during this program.
    let c = unsafe { &mut *ptr };
    c.kind = kind::CANDIDATE;
    c.seq = state.seq;
    kernel::task_facts(task, &mut c.task);
    c.task.kernel_points = 0;
    // The kernel's own points for this task in this OOM (fexit:oom_badness), if seen.
    let current = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    // SAFETY: copying plain values out of the maps.
    if let (Some(b), Some(began)) = unsafe {
        (
            BADNESS.get(c.task.tgid).copied(),
            IN_PROGRESS.get(current).copied(),
        )
    } && b.ts_ns >= began
    {
        c.task.kernel_points = b.points;
        c.task.valid |= valid::KERNEL_POINTS;
    }
    c.skip = candidate_skip(task, state.start, c);
    if EVENTS.output::<Candidate>(&*c, 0).is_err() {
        state.stats.dropped += 1;
        state.ring_full += 1;
        maps::count(counters::RINGBUF_DROPS);
        return;
    }
    state.budget -= 1;
    state.stats.sent += 1;
}

/// Why `oom_evaluate_task()` / `oom_badness()` would pass over this task, or 0.
#[inline(always)]
fn candidate_skip(task: u64, victim: u64, c: &Candidate) -> u32 {
    if c.task.valid & valid::IDS != 0 && c.task.tgid == 1 {
        return skip::INIT;
    }
    if kernel::read::<u64>(task, layout!(task_mm)).unwrap_or(0) == 0 {
        return skip::NO_MM;
    }
    if c.task.valid & valid::OOM_SCORE_ADJ != 0 && c.task.oom_score_adj == -1000 {
        return skip::ADJ_MIN;
    }
    if task != victim
        && let Some(signal) = kernel::read::<u64>(task, layout!(task_signal))
        && kernel::read::<u64>(signal, layout!(signal_oom_mm)).unwrap_or(0) != 0
    {
        // A marked victim that is not reaped would have aborted this OOM; this one is.
        return skip::EARLIER_VICTIM;
    }
    skip::ELIGIBLE
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
    // Unique across CPUs: this CPU's count, and the CPU.
    slot.seq = (maps::bump(counters::OOM_SEQ) << 10) | u64::from(slot.cpu & 0x3ff);
    slot.group_kill = 0;
    slot.oc.valid = 0;
    slot.chain.depth = 0;
    slot.chain.domain = domain::GLOBAL;
    slot.scan = ScanStats::default();
    // SAFETY: as above.
    slot.ts_ns = unsafe { bpf_ktime_get_ns() };
    slot.victim.valid = 0;
    slot.victim_cgroup.depth = 0;
    slot.victim_cgroup.truncated = 0;
    // SAFETY: as above; the returned pointer is only used through bpf_probe_read_kernel.
    let current = unsafe { bpf_get_current_task() };
    kernel::task_facts(current, &mut slot.trigger);
    slot.killed = kill_state(slot.trigger.pid, tid);
    // The reclaim that led here, as it stands at the kill.
    slot.pressure_valid = 0;
    if slot.trigger.valid & valid::MEMCG != 0
        // SAFETY: copying a plain value out of the map.
        && let Some(p) = unsafe { PRESSURE.get(slot.trigger.memcg_id) }.copied()
    {
        slot.pressure = p;
        slot.pressure_valid = 1;
    }
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
        warn!(
            &(),
            "OOM {}: ring buffer full: the victim record of {} dropped",
            slot.seq,
            pending_tid(slot)
        );
    }
    slot.sources = 0;
}
