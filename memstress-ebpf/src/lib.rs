//! The ABI shared by memstress's BPF programs and its userspace controller.
//!
//! Every type here is `#[repr(C)]`, holds only integers and byte arrays, and is written by the
//! BPF side and read by userspace (or, for [`KernelLayout`], the other way round). Changing a
//! layout changes both sides at once because both compile this file.
//!
//! Rust BPF programs get no CO-RE relocations, so the programs never hard-code a kernel struct
//! offset: userspace resolves every offset from the running kernel's BTF at start-up and hands
//! them to the programs as the read-only global [`names::LAYOUT_GLOBAL`]. An offset the kernel
//! does not have is [`UNKNOWN`], and a field that could not be read is reported as unknown
//! (its bit stays clear in the `valid` masks), never as a wrong number.

#![no_std]

/// Map, program and global names, shared so that userspace cannot drift from the object.
pub mod names {
    /// Ring buffer carrying every event to userspace.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU array of counters (see [`crate::counters`]).
    pub const COUNTERS: &str = "COUNTERS";
    /// Array map (one [`crate::RuntimeConfig`]) written by userspace after attaching.
    pub const RUNTIME: &str = "RUNTIME";
    /// Read-only global holding the [`crate::KernelLayout`].
    pub const LAYOUT_GLOBAL: &str = "LAYOUT";

    /// tp_btf program on `mark_victim(struct task_struct *, uid_t)`.
    pub const PROG_MARK_VICTIM_BTF: &str = "mark_victim_btf";
    /// Classic tracepoint program on `oom:mark_victim`.
    pub const PROG_MARK_VICTIM_TP: &str = "mark_victim_tp";
    /// tp_btf program on `signal_generate`.
    pub const PROG_SIGNAL_GENERATE_BTF: &str = "signal_generate_btf";
    /// tp_btf programs on the OOM reaper's tracepoints.
    pub const PROG_START_REAPING: &str = "start_task_reaping";
    /// …
    pub const PROG_FINISH_REAPING: &str = "finish_task_reaping";
    /// …
    pub const PROG_SKIP_REAPING: &str = "skip_task_reaping";
    /// tp_btf program on `sched_process_exit` (OOM victims, and processes that exit after a
    /// SIGTERM).
    pub const PROG_PROCESS_EXIT: &str = "victim_exit";
    /// tp_btf programs on memcg direct reclaim.
    pub const PROG_RECLAIM_BEGIN: &str = "memcg_reclaim_begin";
    /// …
    pub const PROG_RECLAIM_END: &str = "memcg_reclaim_end";
    /// Per-memcg reclaim pressure (LRU hash shared by every CPU: memcg id -> [`crate::Pressure`]).
    pub const PRESSURE: &str = "PRESSURE";
    /// fentry on `out_of_memory()`: an OOM begins in this task.
    pub const PROG_OUT_OF_MEMORY: &str = "out_of_memory_entry";
    /// fentry on `oom_kill_process()`: the kernel's `struct oom_control` after selection.
    pub const PROG_OOM_KILL_PROCESS: &str = "oom_kill_process_entry";
    /// fexit on `oom_badness()`: every candidate's points, as the kernel computed them.
    pub const PROG_OOM_BADNESS: &str = "oom_badness_exit";
    /// fentry on `try_to_free_mem_cgroup_pages()`: the pages direct reclaim was asked for.
    pub const PROG_MEMCG_RECLAIM_ASK: &str = "memcg_reclaim_ask";
    /// fentry on the `memory.high` handler ([`THROTTLE_HOOK`], or [`THROTTLE_HOOK_INNER`]
    /// where the kernel has it): when a task with pages over `memory.high` to pay for enters.
    pub const PROG_THROTTLE_ENTRY: &str = "throttle_entry";
    /// fexit on the same function: how long it held the task (reclaim and penalty sleep).
    pub const PROG_THROTTLE_EXIT: &str = "throttle_exit";
    /// `void mem_cgroup_handle_over_high(gfp_t)` (older kernels pass no argument), which
    /// `resume_user_mode_work()` calls on every return to user mode with
    /// `TIF_NOTIFY_RESUME`, and `try_charge_memcg()` when a task is far over `memory.high`.
    pub const THROTTLE_HOOK: &str = "mem_cgroup_handle_over_high";
    /// `void __mem_cgroup_handle_over_high(gfp_t)`: on recent kernels (6.18 has it) the
    /// function above is an inline wrapper in memcontrol.h that calls this only when the task
    /// has pages over `memory.high` to pay for.
    pub const THROTTLE_HOOK_INNER: &str = "__mem_cgroup_handle_over_high";
    /// `memory.high` throttling of each memcg's tasks (LRU hash shared by every CPU: memcg id
    /// -> [`crate::Throttle`]).
    pub const THROTTLE: &str = "THROTTLE";
}

/// Marks an offset the running kernel does not have.
pub const UNKNOWN: u32 = u32::MAX;

/// Length of `task_struct.comm`.
pub const COMM_LEN: usize = 16;
/// Cgroup path components recorded per event (leaf first); deeper paths are marked truncated.
pub const CGROUP_DEPTH: usize = 10;
/// Bytes recorded per cgroup path component (including the NUL).
pub const CGROUP_NAME_LEN: usize = 96;

/// Offsets into kernel structures, resolved from BTF by userspace.
///
/// Every field is a byte offset, or [`UNKNOWN`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    /// `task_struct.pid`
    pub task_pid: u32,
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `task_struct.comm`
    pub task_comm: u32,
    /// `task_struct.flags`
    pub task_flags: u32,
    /// `task_struct.exit_code`
    pub task_exit_code: u32,
    /// `task_struct.mm`
    pub task_mm: u32,
    /// `task_struct.signal`
    pub task_signal: u32,
    /// `task_struct.real_cred`
    pub task_real_cred: u32,
    /// `task_struct.cgroups`
    pub task_cgroups: u32,
    /// `cred.uid` (a `kuid_t`, whose `val` is at offset 0)
    pub cred_uid: u32,
    /// `signal_struct.oom_score_adj`
    pub signal_oom_score_adj: u32,
    /// `mm_struct.rss_stat[0]`'s counter value (`percpu_counter.count`, or `atomic_long_t`)
    pub mm_rss_stat: u32,
    /// Bytes between two `rss_stat` counters.
    pub mm_rss_stride: u32,
    /// `mm_struct.pgtables_bytes`
    pub mm_pgtables_bytes: u32,
    /// `mm_struct.total_vm`
    pub mm_total_vm: u32,
    /// Index of `MM_FILEPAGES` in `rss_stat`.
    pub mm_filepages: u32,
    /// Index of `MM_ANONPAGES` in `rss_stat`.
    pub mm_anonpages: u32,
    /// Index of `MM_SWAPENTS` in `rss_stat`.
    pub mm_swapents: u32,
    /// Index of `MM_SHMEMPAGES` in `rss_stat`.
    pub mm_shmempages: u32,
    /// `css_set.subsys[memory_cgrp_id]`
    pub css_set_memory: u32,
    /// `cgroup_subsys_state.cgroup`
    pub css_cgroup: u32,
    /// `cgroup.kn`
    pub cgroup_kn: u32,
    /// `kernfs_node.name`
    pub kn_name: u32,
    /// `kernfs_node.parent` (`__parent` since 6.15)
    pub kn_parent: u32,
    /// `kernfs_node.id`
    pub kn_id: u32,
    /// `cgroup_subsys_state.parent`
    pub css_parent: u32,
    /// `cgroup.level`
    pub cgroup_level: u32,
    /// `cgroup.ancestors` (flexible array of `struct cgroup *`)
    pub cgroup_ancestors: u32,
    /// `mem_cgroup.memory.usage`, from the css pointer (the css is the memcg's first member)
    pub memcg_usage: u32,
    /// `mem_cgroup.memory.max`, from the css pointer
    pub memcg_max: u32,
    /// `mem_cgroup.memsw.max` (v1) / `mem_cgroup.swap.max` (v2): they share a union
    pub memcg_swap_max: u32,
    /// `mem_cgroup.oom_lock` (cgroup v1 code; set on the OOM domain's whole subtree)
    pub memcg_oom_lock: u32,
    /// `mem_cgroup.oom_group` (cgroup v2 `memory.oom.group`)
    pub memcg_oom_group: u32,
    /// `mem_cgroup.memory.failcnt`, from the css pointer: v1's `memory.failcnt`
    pub memcg_failcnt: u32,
    /// `mem_cgroup.memory_events[MEMCG_MAX]`, from the css pointer: v2's `memory.events`
    /// `max`
    pub memcg_events_max: u32,
    /// `mem_cgroup.memory_events_local[MEMCG_OOM]`, from the css pointer: the OOMs invoked
    /// with this memcg as their domain (`memory.events.local` `oom`)
    pub memcg_events_local_oom: u32,
    /// `task_struct.tasks` (the list of thread-group leaders)
    pub task_tasks: u32,
    /// `task_struct.cg_list` (its node in its `css_set`'s task list)
    pub task_cg_list: u32,
    /// `cgroup_subsys_state.children` (list head of the children's `sibling`)
    pub css_children: u32,
    /// `cgroup_subsys_state.sibling`
    pub css_sibling: u32,
    /// `cgroup.self` (the cgroup's own css, whose children are its child cgroups)
    pub cgroup_self: u32,
    /// `cgroup.cset_links` (list head of `cgrp_cset_link.cset_link`)
    pub cgroup_cset_links: u32,
    /// `cgrp_cset_link.cset_link`
    pub link_cset_link: u32,
    /// `cgrp_cset_link.cset`
    pub link_cset: u32,
    /// `css_set.tasks`
    pub cset_tasks: u32,
    /// `css_set.mg_tasks` (tasks being migrated, still counted as the cset's)
    pub cset_mg_tasks: u32,
    /// `signal_struct.oom_mm` (set on every OOM victim)
    pub signal_oom_mm: u32,
    /// `oom_control.memcg`
    pub oc_memcg: u32,
    /// `oom_control.totalpages`
    pub oc_totalpages: u32,
    /// `oom_control.chosen`
    pub oc_chosen: u32,
    /// `oom_control.chosen_points`
    pub oc_chosen_points: u32,
    /// `oom_control.constraint`
    pub oc_constraint: u32,
    /// `oom_control.gfp_mask`
    pub oc_gfp_mask: u32,
    /// `oom_control.order`
    pub oc_order: u32,
    /// Most tasks visited per OOM when listing candidates (0: do not list).
    pub scan_limit: u32,
    /// Most candidate records per OOM.
    pub candidate_limit: u32,

    /// `oom:mark_victim` record: offset of `pid` (classic tracepoint format, from tracefs).
    pub tp_victim_pid: u32,
    /// … of `total_vm` (kB)
    pub tp_victim_total_vm: u32,
    /// … of `anon_rss` (kB)
    pub tp_victim_anon_rss: u32,
    /// … of `file_rss` (kB)
    pub tp_victim_file_rss: u32,
    /// … of `shmem_rss` (kB)
    pub tp_victim_shmem_rss: u32,
    /// … of `uid`
    pub tp_victim_uid: u32,
    /// … of `pgtables` (kB)
    pub tp_victim_pgtables: u32,
    /// … of `oom_score_adj`
    pub tp_victim_oom_score_adj: u32,

    /// 1 when the tp_btf `mark_victim` passes `(struct task_struct *, uid_t)`; 0 when it passes
    /// only `(int pid)` (kernels before 6.8).
    pub mark_victim_has_task: u32,

    /// `task_struct.memcg_nr_pages_over_high` (an `unsigned int`; `CONFIG_MEMCG`): the pages
    /// the task charged over `memory.high` that it has yet to pay for in reclaim or sleep.
    pub task_memcg_nr_pages_over_high: u32,
}

impl KernelLayout {
    /// A layout with every offset unknown.
    pub const UNSET: Self = Self {
        task_pid: UNKNOWN,
        task_tgid: UNKNOWN,
        task_comm: UNKNOWN,
        task_flags: UNKNOWN,
        task_exit_code: UNKNOWN,
        task_mm: UNKNOWN,
        task_signal: UNKNOWN,
        task_real_cred: UNKNOWN,
        task_cgroups: UNKNOWN,
        cred_uid: UNKNOWN,
        signal_oom_score_adj: UNKNOWN,
        mm_rss_stat: UNKNOWN,
        mm_rss_stride: UNKNOWN,
        mm_pgtables_bytes: UNKNOWN,
        mm_total_vm: UNKNOWN,
        mm_filepages: UNKNOWN,
        mm_anonpages: UNKNOWN,
        mm_swapents: UNKNOWN,
        mm_shmempages: UNKNOWN,
        css_set_memory: UNKNOWN,
        css_cgroup: UNKNOWN,
        cgroup_kn: UNKNOWN,
        kn_name: UNKNOWN,
        kn_parent: UNKNOWN,
        kn_id: UNKNOWN,
        css_parent: UNKNOWN,
        cgroup_level: UNKNOWN,
        cgroup_ancestors: UNKNOWN,
        memcg_usage: UNKNOWN,
        memcg_max: UNKNOWN,
        memcg_swap_max: UNKNOWN,
        memcg_oom_lock: UNKNOWN,
        memcg_oom_group: UNKNOWN,
        memcg_failcnt: UNKNOWN,
        memcg_events_max: UNKNOWN,
        memcg_events_local_oom: UNKNOWN,
        task_tasks: UNKNOWN,
        task_cg_list: UNKNOWN,
        css_children: UNKNOWN,
        css_sibling: UNKNOWN,
        cgroup_self: UNKNOWN,
        cgroup_cset_links: UNKNOWN,
        link_cset_link: UNKNOWN,
        link_cset: UNKNOWN,
        cset_tasks: UNKNOWN,
        cset_mg_tasks: UNKNOWN,
        signal_oom_mm: UNKNOWN,
        oc_memcg: UNKNOWN,
        oc_totalpages: UNKNOWN,
        oc_chosen: UNKNOWN,
        oc_chosen_points: UNKNOWN,
        oc_constraint: UNKNOWN,
        oc_gfp_mask: UNKNOWN,
        oc_order: UNKNOWN,
        scan_limit: 0,
        candidate_limit: 0,
        tp_victim_pid: UNKNOWN,
        tp_victim_total_vm: UNKNOWN,
        tp_victim_anon_rss: UNKNOWN,
        tp_victim_file_rss: UNKNOWN,
        tp_victim_shmem_rss: UNKNOWN,
        tp_victim_uid: UNKNOWN,
        tp_victim_pgtables: UNKNOWN,
        tp_victim_oom_score_adj: UNKNOWN,
        mark_victim_has_task: 0,
        task_memcg_nr_pages_over_high: UNKNOWN,
    };
}

/// Which programs userspace managed to attach; the BPF side uses it to know when an OOM
/// record is complete (both `mark_victim` halves seen) and whether kills can be confirmed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Bit set of [`source`] flags: the halves an `oom_victim` record waits for.
    pub victim_sources: u32,
    /// 1 when the `signal_generate` program is attached (kills can be confirmed).
    pub signal_attached: u32,
}

/// Which program filled part of a record.
pub mod source {
    /// The tp_btf `mark_victim` program (task_struct read through BTF offsets).
    pub const BTF: u32 = 1 << 0;
    /// The classic `oom:mark_victim` tracepoint (the kernel's own formatted figures).
    pub const TRACEPOINT: u32 = 1 << 1;
}

/// Indices into the per-CPU [`names::COUNTERS`] array.
pub mod counters {
    /// Records dropped because the ring buffer was full.
    pub const RINGBUF_DROPS: u32 = 0;
    /// `mark_victim` records begun.
    pub const VICTIMS_SEEN: u32 = 1;
    /// `mark_victim` records whose halves did not match (a half was missing).
    pub const VICTIM_HALVES_UNMATCHED: u32 = 2;
    /// OOM sequence numbers handed out on this CPU.
    pub const OOM_SEQ: u32 = 3;
    /// Candidate records not sent because of `candidate_limit`.
    pub const CANDIDATES_CAPPED: u32 = 4;
    /// Number of counters.
    pub const LEN: u32 = 8;
}

/// Event kinds (the first field of every record).
pub mod kind {
    /// An [`crate::OomVictim`].
    pub const OOM_VICTIM: u32 = 1;
    /// A [`crate::Candidate`] (sent before the victim record of its OOM).
    pub const CANDIDATE: u32 = 2;
    /// A [`crate::Collateral`] kill.
    pub const COLLATERAL: u32 = 3;
    /// A [`crate::Aftermath`] of a kill (reaper, exit).
    pub const AFTERMATH: u32 = 4;
    /// A [`crate::SignalKill`]: a SIGKILL, or a SIGTERM followed by the process's exit.
    pub const SIGNAL: u32 = 5;
}

/// Bits of [`TaskFacts::valid`]: which fields were read from the kernel.
pub mod valid {
    /// `pid` and `tgid`
    pub const IDS: u32 = 1 << 0;
    /// `comm`
    pub const COMM: u32 = 1 << 1;
    /// `uid`
    pub const UID: u32 = 1 << 2;
    /// `oom_score_adj`
    pub const OOM_SCORE_ADJ: u32 = 1 << 3;
    /// `rss`
    pub const RSS: u32 = 1 << 4;
    /// `pgtables_bytes`
    pub const PGTABLES: u32 = 1 << 5;
    /// `total_vm`
    pub const TOTAL_VM: u32 = 1 << 6;
    /// `memcg_id`
    pub const MEMCG: u32 = 1 << 7;
    /// `flags`
    pub const FLAGS: u32 = 1 << 8;
    /// `kernel_points`: `oom_badness()`'s own result for this OOM (fexit).
    pub const KERNEL_POINTS: u32 = 1 << 9;
}

/// A task's facts as the kernel holds them, read in the OOM path.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TaskFacts {
    /// Thread id (`task_struct.pid`).
    pub pid: u32,
    /// Process id (`task_struct.tgid`).
    pub tgid: u32,
    /// `task_struct.comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// Real uid.
    pub uid: u32,
    /// `signal->oom_score_adj`.
    pub oom_score_adj: i16,
    /// Padding.
    pub _pad: u16,
    /// `task_struct.flags` (PF_*).
    pub flags: u32,
    /// Bit set of [`valid`] flags.
    pub valid: u32,
    /// `mm->rss_stat` in pages: file, anon, swap entries, shmem.
    pub rss: [i64; 4],
    /// `mm->pgtables_bytes`.
    pub pgtables_bytes: u64,
    /// `mm->total_vm` in pages.
    pub total_vm: u64,
    /// Kernfs id (= inode number) of the task's memory cgroup.
    pub memcg_id: u64,
    /// `oom_badness()`'s result for this task in this OOM, when the fexit probe saw it.
    pub kernel_points: i64,
}

/// Index of the file pages in [`TaskFacts::rss`].
pub const RSS_FILE: usize = 0;
/// Index of the anon pages in [`TaskFacts::rss`].
pub const RSS_ANON: usize = 1;
/// Index of the swap entries in [`TaskFacts::rss`].
pub const RSS_SWAP: usize = 2;
/// Index of the shmem pages in [`TaskFacts::rss`].
pub const RSS_SHMEM: usize = 3;

/// A cgroup's path, read from its kernfs nodes, leaf first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CgroupPath {
    /// Components recorded in `names`.
    pub depth: u32,
    /// 1 when the path had more than [`CGROUP_DEPTH`] components below the root.
    pub truncated: u32,
    /// Kernfs ids (= directory inode numbers) of the recorded components, leaf first.
    pub ids: [u64; CGROUP_DEPTH],
    /// NUL-terminated names, `names[0]` is the leaf.
    pub names: [[u8; CGROUP_NAME_LEN]; CGROUP_DEPTH],
}

/// The `oom:mark_victim` tracepoint's own figures (kB, as the kernel formats them).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TracepointVictim {
    /// Victim thread id.
    pub pid: i32,
    /// Victim uid.
    pub uid: u32,
    /// `total_vm` in kB.
    pub total_vm_kb: u64,
    /// `anon_rss` in kB.
    pub anon_rss_kb: u64,
    /// `file_rss` in kB.
    pub file_rss_kb: u64,
    /// `shmem_rss` in kB.
    pub shmem_rss_kb: u64,
    /// `pgtables` in kB.
    pub pgtables_kb: u64,
    /// `oom_score_adj`.
    pub oom_score_adj: i16,
    /// Padding.
    pub _pad: [u8; 6],
}

/// Chain entries recorded per OOM (the victim's memcg and its ancestors, root included).
pub const CHAIN_DEPTH: usize = 12;

/// Bits of [`MemcgLevel::flags`].
pub mod level {
    /// The figures were read.
    pub const VALID: u32 = 1 << 0;
    /// `oom_lock` is set: this memcg is under an OOM being handled (cgroup v1 code).
    pub const OOM_LOCK: u32 = 1 << 1;
    /// `memory.oom.group` is set.
    pub const OOM_GROUP: u32 = 1 << 2;
    /// The hierarchy's root.
    pub const ROOT: u32 = 1 << 3;
    /// `failcnt` was read.
    pub const FAILCNT: u32 = 1 << 4;
    /// `events_max` was read.
    pub const EVENTS_MAX: u32 = 1 << 5;
}

/// One memory cgroup's counters, read in the OOM path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MemcgLevel {
    /// Kernfs id (directory inode number).
    pub id: u64,
    /// `memory.usage` in pages.
    pub usage: u64,
    /// `memory.max` in pages.
    pub max: u64,
    /// `memsw.max` (v1) or `swap.max` (v2) in pages.
    pub swap_max: u64,
    /// Times a charge hit this memcg's limit, as the kernel counted them at the kill: v1
    /// `memory.failcnt` ([`level::FAILCNT`] set when read).
    pub failcnt: u64,
    /// … v2 `memory.events` `max` ([`level::EVENTS_MAX`] set when read).
    pub events_max: u64,
    /// Bits of [`level`].
    pub flags: u32,
    /// The cgroup's depth below the root.
    pub level: u32,
}

/// Where the OOM domain was found on the victim's chain.
pub mod domain {
    /// No memcg on the chain is at its limit: a global (or cpuset/mempolicy) OOM.
    pub const GLOBAL: u32 = u32::MAX;
    /// How the domain was recognised: the v1 `oom_lock` on its subtree.
    pub const BY_OOM_LOCK: u32 = 1;
    /// … the lowest memcg whose usage is within [`NEAR_LIMIT_PAGES`] of its max.
    pub const BY_USAGE: u32 = 2;
    /// … the lowest memcg whose own count of OOMs invoked for it (`memory_events_local`
    /// `MEMCG_OOM`, raised before each) is ahead of the kills attributed to it: an OOM whose
    /// other signs were gone by the kill (a concurrent one held the v1 lock; an earlier
    /// victim's memory was being freed).
    pub const BY_OOM_EVENTS: u32 = 3;
    /// Pages of headroom under which a memcg counts as at its limit when the OOM killer
    /// runs (the failed charge was at most 8 pages; the charge stock was drained).
    pub const NEAR_LIMIT_PAGES: u64 = 64;
}

/// The victim's memory cgroup and its ancestors, leaf first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Chain {
    /// Levels recorded.
    pub depth: u32,
    /// Index of the OOM domain in `levels`, or [`domain::GLOBAL`].
    pub domain: u32,
    /// How it was recognised ([`domain::BY_OOM_LOCK`], [`domain::BY_USAGE`]).
    pub domain_by: u32,
    /// Padding.
    pub _pad: u32,
    /// Leaf first.
    pub levels: [MemcgLevel; CHAIN_DEPTH],
}

/// What the candidate scan saw.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ScanStats {
    /// Tasks visited: thread-group leaders on the node (a global OOM), or every thread of
    /// the domain's cgroups (a memcg OOM).
    pub visited: u32,
    /// Candidate records sent (eligible or skipped).
    pub sent: u32,
    /// Candidates not sent (limit reached or ring buffer full).
    pub dropped: u32,
    /// 1 when the scan stopped at `scan_limit` before coming round to the victim.
    pub truncated: u32,
    /// How long the scan took (ns), inside the OOM path.
    pub ns: u64,
    /// From the end of the trigger's last memcg reclaim (the charge then gave up) to
    /// `mark_victim` (ns): the kernel's own OOM path up to the kill, the victim's selection
    /// and the report it prints; 0 when the trigger reclaimed nothing in the last 10 s.
    pub since_reclaim_ns: u64,
}

/// Why a task in the domain could not be chosen (`Candidate::skip`).
pub mod skip {
    /// Eligible: it was ranked.
    pub const ELIGIBLE: u32 = 0;
    /// The init process.
    pub const INIT: u32 = 1;
    /// No memory: it has already released its mm (exiting).
    pub const NO_MM: u32 = 2;
    /// `oom_score_adj` -1000.
    pub const ADJ_MIN: u32 = 3;
    /// An earlier OOM victim, already reaped (`MMF_OOM_SKIP`).
    pub const EARLIER_VICTIM: u32 = 4;
}

/// A task the OOM killer considered (kind [`kind::CANDIDATE`]): every thread-group leader in
/// the OOM domain, read by the `mark_victim` program right after the kernel chose.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    /// [`kind::CANDIDATE`].
    pub kind: u32,
    /// Bits of [`skip`] (0: eligible).
    pub skip: u32,
    /// The OOM it belongs to ([`OomVictim::seq`]).
    pub seq: u64,
    /// Its facts.
    pub task: TaskFacts,
}

/// Why a process died with the victim (`Collateral::reason`).
pub mod collateral {
    /// It shares the victim's mm (`CLONE_VM` without `CLONE_THREAD`).
    pub const SHARES_MM: u32 = 1;
}

/// A process the OOM killer SIGKILLed along with the victim (kind [`kind::COLLATERAL`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Collateral {
    /// [`kind::COLLATERAL`].
    pub kind: u32,
    /// Bits of [`collateral`].
    pub reason: u32,
    /// The OOM it belongs to.
    pub seq: u64,
    /// `bpf_ktime_get_ns()`.
    pub ts_ns: u64,
    /// The victim's thread id.
    pub victim_tid: u32,
    /// Padding.
    pub _pad: u32,
    /// The process killed with it.
    pub task: TaskFacts,
}

/// What happened to a victim after the kill (`Aftermath::what`).
pub mod aftermath {
    /// It exited (`sched_process_exit`): its memory is being freed.
    pub const EXITED: u32 = 1;
    /// The OOM reaper started on it (it did not exit within ~2 s).
    pub const REAP_START: u32 = 2;
    /// The OOM reaper finished: its anonymous memory is freed.
    pub const REAP_FINISH: u32 = 3;
    /// The OOM reaper skipped it (nothing to reap, or it could not).
    pub const REAP_SKIP: u32 = 4;
}

/// A victim's aftermath (kind [`kind::AFTERMATH`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Aftermath {
    /// [`kind::AFTERMATH`].
    pub kind: u32,
    /// Bits of [`aftermath`].
    pub what: u32,
    /// `bpf_ktime_get_ns()`.
    pub ts_ns: u64,
    /// The victim's thread id.
    pub tid: u32,
    /// Padding.
    pub _pad: u32,
    /// The OOM that killed it.
    pub seq: u64,
}

/// Bits of [`SignalKill::flags`].
pub mod signal {
    /// `SIGKILL`.
    pub const SIGKILL: u32 = 9;
    /// `SIGTERM`.
    pub const SIGTERM: u32 = 15;
    /// The signal came with `SEND_SIG_PRIV`: sent by the kernel itself (the OOM killer, the
    /// teardown of a PID namespace, …), never by `kill(2)` and its kin.
    pub const PRIV: u32 = 1 << 0;
    /// Sent to the whole thread group (`group` of `signal_generate`).
    pub const GROUP: u32 = 1 << 1;
    /// SIGTERM: the process exited (`exit_ns` is when).
    pub const EXITED: u32 = 1 << 2;
    /// SIGKILL: a SIGTERM reached the process before (`term_ns` is when).
    pub const AFTER_TERM: u32 = 1 << 3;
    /// `victim_cgroup` was read (depth 0: the hierarchy's root).
    pub const VICTIM_CGROUP: u32 = 1 << 4;
    /// `sender_cgroup` was read.
    pub const SENDER_CGROUP: u32 = 1 << 5;
    /// `exit_code` was read.
    pub const EXIT_CODE: u32 = 1 << 6;
}

/// A SIGKILL delivered to a process, or a SIGTERM delivered to a process that then exited
/// (kind [`kind::SIGNAL`]); never one a thread group sent itself. Userspace tells the OOM
/// killer's SIGKILLs apart (they come with [`signal::PRIV`] and are followed by an OOM
/// record for the same task).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SignalKill {
    /// [`kind::SIGNAL`].
    pub kind: u32,
    /// [`signal::SIGKILL`] or [`signal::SIGTERM`].
    pub signal: u32,
    /// `bpf_ktime_get_ns()` at `signal_generate`.
    pub ts_ns: u64,
    /// SIGTERM: when the process exited (with [`signal::EXITED`]).
    pub exit_ns: u64,
    /// SIGKILL: when a SIGTERM reached it before (with [`signal::AFTER_TERM`]).
    pub term_ns: u64,
    /// Bits of [`signal`].
    pub flags: u32,
    /// SIGTERM: `task_struct.exit_code` at the exit (with [`signal::EXIT_CODE`]).
    pub exit_code: u32,
    /// The task in whose context the signal was generated (`flags` says whether it is a
    /// kernel thread, or exiting).
    pub sender: TaskFacts,
    /// The task the signal was sent to.
    pub victim: TaskFacts,
    /// The sender's memory cgroup.
    pub sender_cgroup: CgroupPath,
    /// The victim's memory cgroup.
    pub victim_cgroup: CgroupPath,
}

/// `task_struct.flags` bits the userspace side reads.
pub mod pf {
    /// `PF_EXITING`: the task is in `do_exit()`.
    pub const EXITING: u32 = 0x0000_0004;
    /// `PF_KTHREAD`: a kernel thread.
    pub const KTHREAD: u32 = 0x0020_0000;
}

/// Direct reclaim done by the tasks of one memcg (value of [`names::PRESSURE`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pressure {
    /// `mm_vmscan_memcg_reclaim_begin` count.
    pub runs: u64,
    /// Pages `mm_vmscan_memcg_reclaim_end` reported reclaimed.
    pub reclaimed: u64,
    /// Time spent between begin and end, in ns.
    pub ns: u64,
    /// Pages direct reclaim was asked for (`try_to_free_mem_cgroup_pages()`'s `nr_pages`;
    /// needs fentry).
    pub asked: u64,
}

/// `memory.high` throttling of the tasks of one memcg (value of [`names::THROTTLE`]): each
/// time one of them entered the kernel's `memory.high` handler with pages over `memory.high`
/// to pay for, and how long it stayed there: the reclaim it was made to do and, when that did
/// not bring the memcg back under `memory.high`, the penalty sleep (`schedule_timeout_killable`
/// under `psi_memstall_enter()`, up to 2 s a time).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Throttle {
    /// Times a task was held (calls with pages over `memory.high`).
    pub episodes: u64,
    /// Time they took in all, in ns.
    pub ns: u64,
    /// The longest one, in ns.
    pub max_ns: u64,
    /// Pages over `memory.high` they were made to pay for (`memcg_nr_pages_over_high` at
    /// each entry).
    pub pages: u64,
}

/// The kernel's `struct oom_control` for an OOM, read by an fentry program on
/// `oom_kill_process()` (after the victim was selected, before it is killed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OomControlFacts {
    /// 1 when read (the fentry program is attached and saw this OOM).
    pub valid: u32,
    /// `enum oom_constraint` (values resolved from BTF by userspace).
    pub constraint: u32,
    /// `totalpages`: what `oom_score_adj` is scaled by.
    pub totalpages: u64,
    /// `chosen_points`: the victim's points.
    pub chosen_points: i64,
    /// The chosen task's tid.
    pub chosen_tid: u32,
    /// `order` of the failed allocation.
    pub order: i32,
    /// `gfp_mask` of the failed allocation.
    pub gfp_mask: u32,
    /// Padding.
    pub _pad: u32,
    /// Kernfs id of `memcg` (0: not a memcg OOM).
    pub memcg_id: u64,
    /// When it was read.
    pub ts_ns: u64,
}

/// One OOM victim, as `mark_victim` saw it (kind [`kind::OOM_VICTIM`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OomVictim {
    /// [`kind::OOM_VICTIM`].
    pub kind: u32,
    /// CPU the OOM killer ran on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()` at `mark_victim` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Bit set of [`source`] flags: which programs filled this record.
    pub sources: u32,
    /// 1 when the OOM killer sent this victim SIGKILL just before marking it; 0 when it was
    /// marked without a kill (it was already exiting); 2 when kills cannot be confirmed
    /// (the `signal_generate` probe is not attached).
    pub killed: u32,
    /// The victim (from the tp_btf program).
    pub victim: TaskFacts,
    /// The task in whose context the OOM killer ran: the one whose allocation (or limit
    /// write) failed.
    pub trigger: TaskFacts,
    /// The victim's memory cgroup.
    pub victim_cgroup: CgroupPath,
    /// The tracepoint's figures (valid when `sources` has [`source::TRACEPOINT`]).
    pub tp: TracepointVictim,
    /// Sequence number of this OOM (candidates and collateral carry it).
    pub seq: u64,
    /// 1 when an earlier kill of the same OOM (same trigger, just before, `memory.oom.group`
    /// set on the domain) preceded this one: a group kill.
    pub group_kill: u32,
    /// 1 when `pressure` holds the trigger's memcg counters at the kill.
    pub pressure_valid: u32,
    /// The victim's memcg and ancestors, with the OOM domain.
    pub chain: Chain,
    /// The candidate scan.
    pub scan: ScanStats,
    /// The kernel's `struct oom_control` (where fentry loads).
    pub oc: OomControlFacts,
    /// Direct reclaim by the trigger's memcg so far, as [`names::PRESSURE`] held it at the
    /// kill: every reader sees the same figures, however late it reads the record.
    pub pressure: Pressure,
}

/// Kill confirmation states of [`OomVictim::killed`].
pub mod killed {
    /// Marked without a SIGKILL: the victim was already exiting.
    pub const NO: u32 = 0;
    /// SIGKILL seen from the OOM killer's context to the victim.
    pub const YES: u32 = 1;
    /// No `signal_generate` probe: cannot tell.
    pub const UNCONFIRMED: u32 = 2;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and arrays of integers,
    // and every bit pattern is a valid value, which is what `aya::Pod` requires.
    unsafe impl aya::Pod for super::KernelLayout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RuntimeConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OomVictim {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Candidate {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Collateral {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Aftermath {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Pressure {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Throttle {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SignalKill {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, size_of};

    use super::*;

    // The BPF side and userspace must agree on sizes; a field added without its padding
    // shows up here first.
    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<TaskFacts>() % 8, 0);
        assert_eq!(size_of::<OomControlFacts>(), 56);
        assert_eq!(size_of::<Throttle>(), 32);
        assert_eq!(size_of::<TracepointVictim>(), 56);
        assert_eq!(
            size_of::<CgroupPath>(),
            8 + CGROUP_DEPTH * (8 + CGROUP_NAME_LEN)
        );
        assert_eq!(align_of::<OomVictim>(), 8);
        assert_eq!(size_of::<MemcgLevel>(), 56);
        assert_eq!(size_of::<Chain>(), 16 + CHAIN_DEPTH * 56);
        assert_eq!(size_of::<OomVictim>() % 8, 0);
        assert_eq!(size_of::<Candidate>(), 16 + size_of::<TaskFacts>());
        assert_eq!(
            size_of::<SignalKill>(),
            40 + 2 * size_of::<TaskFacts>() + 2 * size_of::<CgroupPath>()
        );
    }
}
