//! Every map of the object. Names are the constants of `memstress_ebpf::names`.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use memstress_ebpf::{
    Candidate, OomControlFacts, OomVictim, Pressure, RuntimeConfig, ScanStats, SignalKill,
    Throttle, counters,
};

/// Every record for userspace. 4 MiB hold ~2000 `OomVictim` records, or an OOM with
/// ~30 000 candidates; userspace drains it as soon as it is readable, and a record that does
/// not fit is counted in [`counters::RINGBUF_DROPS`], never lost silently.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Per-CPU counters, indexed by `memstress_ebpf::counters`.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::LEN, 0);

/// Written by userspace once it knows which programs attached.
#[map(name = "RUNTIME")]
pub static RUNTIME: Array<RuntimeConfig> = Array::with_max_entries(1, 0);

/// The `OomVictim` record being assembled on this CPU. Both `mark_victim` programs run in the
/// same `trace_mark_victim()` call, one after the other on one CPU with preemption disabled,
/// so a per-CPU slot is enough to join their halves. Too big for the 512-byte BPF stack.
#[map(name = "PENDING_VICTIM")]
pub static PENDING_VICTIM: PerCpuArray<OomVictim> = PerCpuArray::with_max_entries(1, 0);

/// Last SIGKILL a task sent from kernel context (`SEND_SIG_PRIV`): sender tid -> target tid.
/// `__oom_kill_process()` sends the victim SIGKILL and then marks it, in the same task.
#[map(name = "LAST_SIGKILL")]
pub static LAST_SIGKILL: LruHashMap<u32, u32> = LruHashMap::with_max_entries(4096, 0);

/// An OOM in progress, by the tid of the task running the OOM killer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InOom {
    /// The OOM's sequence number.
    pub seq: u64,
    /// When its (latest) victim was marked.
    pub ts_ns: u64,
    /// The (latest) victim.
    pub victim_tid: u32,
    /// `memory.oom.group` on the domain.
    pub oom_group: u32,
    /// The victim's `mm` (0: unknown): the processes killed with it share it.
    pub mm: u64,
}

/// A SIGKILL the kernel itself sent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Killed {
    /// When.
    pub ts_ns: u64,
    /// Its target's `mm` then (0: unknown).
    pub mm: u64,
}

/// A candidate record being filled: filled here and copied into the ring buffer, so that
/// no ring-buffer reservation is held across the many branches of reading a task (the
/// verifier's jump-history limit would reject that).
#[map(name = "SCRATCH_CANDIDATE")]
pub static SCRATCH_CANDIDATE: PerCpuArray<Candidate> = PerCpuArray::with_max_entries(1, 0);

/// State of the candidate scan of the OOM being handled on this CPU.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ScanState {
    /// The victim: where the walk starts and ends.
    pub start: u64,
    /// The last task visited.
    pub cur: u64,
    /// The domain's `struct cgroup *` (0: global).
    pub domain: u64,
    /// The domain's level.
    pub level: i32,
    /// Candidate records still allowed.
    pub budget: u32,
    /// The OOM's sequence number.
    pub seq: u64,
    /// What was seen.
    pub stats: ScanStats,
    /// 1 once the walk came round to the victim.
    pub done: u32,
    /// Candidate records the ring buffer refused (a diagnostic at the scan's end).
    pub ring_full: u32,
    /// A memcg domain's walk: the cgroup whose tasks are being visited (pre-order over the
    /// domain's subtree).
    pub cgroup: u64,
    /// … its `cgrp_cset_link` being visited (0: none yet).
    pub link: u64,
    /// … that link's `css_set`.
    pub cset: u64,
    /// … the head of the task list being visited (`cset->tasks` or `cset->mg_tasks`).
    pub list: u64,
    /// … the last node visited in it (`&task->cg_list`, or the head).
    pub pos: u64,
    /// 1 while in `mg_tasks`.
    pub migrating: u32,
    /// 1 for a memcg domain's walk, 0 for the node's task list.
    pub by_cgroup: u32,
}

/// The candidate scan's state (per CPU: one OOM is handled at a time on a CPU).
#[map(name = "SCAN")]
pub static SCAN: PerCpuArray<ScanState> = PerCpuArray::with_max_entries(1, 0);

/// OOMs in progress: trigger tid -> the latest victim it marked.
#[map(name = "IN_OOM")]
pub static IN_OOM: LruHashMap<u32, InOom> = LruHashMap::with_max_entries(1024, 0);

/// Tasks the kernel just SIGKILLed (`SEND_SIG_PRIV`): tid -> when, and their `mm`. The OOM
/// killer sends the SIGKILL before it marks the victim, and the victim can reach
/// `sched_process_exit` in between; its exit is then reported without an OOM sequence and
/// joined in userspace.
#[map(name = "KILLED")]
pub static KILLED: LruHashMap<u32, Killed> = LruHashMap::with_max_entries(4096, 0);

/// Victims whose aftermath (exit, reaper) is still to be reported: tid -> OOM sequence.
#[map(name = "VICTIMS")]
pub static VICTIMS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// Direct memcg reclaim by the tasks of each memcg: memcg id -> counters, shared by every
/// CPU and added to atomically (`mark_victim` copies a memcg's totals into its record).
#[map(name = "PRESSURE")]
pub static PRESSURE: LruHashMap<u64, Pressure> = LruHashMap::with_max_entries(4096, 0);

/// Each chain level's `memory_events_local[MEMCG_OOM]` during one `mark_victim` (`u64::MAX`:
/// not read): kept here, not on the program's stack, which the chain walk and the scan
/// already fill to the verifier's 512 bytes on 6.1.
#[map(name = "CHAIN_OOM_EVENTS")]
pub static CHAIN_OOM_EVENTS: PerCpuArray<[u64; memstress_ebpf::CHAIN_DEPTH]> =
    PerCpuArray::with_max_entries(1, 0);

/// OOM kills attributed to each memcg as their domain, as compared with its own count of OOMs
/// invoked (`memory_events_local[MEMCG_OOM]`): memcg id -> count.
#[map(name = "OOM_EVENTS")]
pub static OOM_EVENTS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// Start of the direct reclaim a task is in: tid -> ns.
#[map(name = "RECLAIM_START")]
pub static RECLAIM_START: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

/// When each task's last memcg direct reclaim ended (tid -> ns): the OOM path's start, for
/// the time the kernel took to choose (`ScanStats::since_reclaim_ns`).
#[map(name = "RECLAIM_END")]
pub static RECLAIM_END: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

/// `memory.high` throttling of each memcg's tasks: memcg id -> counters, shared by every CPU
/// and added to atomically.
#[map(name = "THROTTLE")]
pub static THROTTLE: LruHashMap<u64, Throttle> = LruHashMap::with_max_entries(4096, 0);

/// A task's entry into the `memory.high` handler with pages to pay for.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ThrottleStart {
    /// When it entered.
    pub ts_ns: u64,
    /// `memcg_nr_pages_over_high` then.
    pub pages: u64,
}

/// Tasks in the `memory.high` handler with pages to pay for: tid -> when they entered.
#[map(name = "THROTTLE_START")]
pub static THROTTLE_START: LruHashMap<u32, ThrottleStart> = LruHashMap::with_max_entries(4096, 0);

/// OOMs in progress (fentry on `out_of_memory()`): tid -> when it began.
#[map(name = "IN_PROGRESS")]
pub static IN_PROGRESS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(1024, 0);

/// `oom_badness()` results during an OOM.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Badness {
    /// Its return value.
    pub points: i64,
    /// When.
    pub ts_ns: u64,
}

/// Points per tgid, from `fexit:oom_badness`.
#[map(name = "BADNESS")]
pub static BADNESS: LruHashMap<u32, Badness> = LruHashMap::with_max_entries(32768, 0);

/// The kernel's `struct oom_control` of each task's latest OOM (fentry on
/// `oom_kill_process()`): tid -> facts.
#[map(name = "OOM_CONTROL")]
pub static OOM_CONTROL: LruHashMap<u32, OomControlFacts> = LruHashMap::with_max_entries(1024, 0);

/// The [`SignalKill`] record being filled on this CPU (too big for the stack; filled here and
/// copied into the ring buffer or [`TERMS`], so that no reservation is held across the many
/// branches of reading two tasks).
#[map(name = "SCRATCH_KILL")]
pub static SCRATCH_KILL: PerCpuArray<SignalKill> = PerCpuArray::with_max_entries(1, 0);

/// SIGTERMs delivered and not yet followed by an exit: target tgid -> the record (sender,
/// victim, when), completed and sent when the process exits. The oldest are forgotten past
/// 1024 outstanding ones (a SIGTERM the process handled and survived stays until then).
#[map(name = "TERMS")]
pub static TERMS: LruHashMap<u32, SignalKill> = LruHashMap::with_max_entries(1024, 0);

/// Adds one to a counter and returns the new value.
#[inline(always)]
pub fn bump(index: u32) -> u64 {
    match COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's slot of a live map value.
        Some(counter) => unsafe {
            *counter += 1;
            *counter
        },
        None => 0,
    }
}

/// Adds one to a counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer is to this CPU's slot of a live map value; BPF programs on one
        // CPU do not run concurrently with each other for these tracepoints.
        unsafe { *counter += 1 };
    }
}

/// The runtime configuration, or all-zero before userspace wrote it.
#[inline(always)]
pub fn runtime() -> RuntimeConfig {
    RUNTIME.get(0).copied().unwrap_or_default()
}
