//! Every map of the object. Names are the constants of `memstress_ebpf::names`.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use memstress_ebpf::{OomVictim, RuntimeConfig, counters};

/// Every record for userspace. 1 MiB holds ~750 `OomVictim` records; userspace drains it as
/// soon as it is readable, and a record that does not fit is counted in
/// [`counters::RINGBUF_DROPS`], never lost silently.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

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
