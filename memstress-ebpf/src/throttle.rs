//! `memory.high` throttling, where fentry/fexit load: how long the kernel held each memcg's
//! tasks in its `memory.high` handler, aggregated in the kernel per memcg.
//!
//! A charge that takes a memcg (or an ancestor) over `memory.high` does not fail: it adds the
//! pages to `current->memcg_nr_pages_over_high` and sets `TIF_NOTIFY_RESUME`, and on its way
//! back to user mode the task calls `mem_cgroup_handle_over_high()`, which zeroes the counter,
//! makes the task reclaim (`reclaim_high()`) and, when that does not bring the memcg back
//! under `memory.high`, puts it to sleep for a penalty (`schedule_timeout_killable()` inside
//! `psi_memstall_enter()`, at most 2 s a time). `try_charge_memcg()` calls it too, in the
//! middle of a charge, once a task is more than a charge batch over. The time from entry to
//! exit is what the task lost to the throttle.
//!
//! The function runs on **every** return to user mode with `TIF_NOTIFY_RESUME`, which rseq
//! sets at every preemption and migration of a task that registered it (glibc's do): the
//! entry program reads the task's `memcg_nr_pages_over_high` and returns at once when it is
//! 0, touching no map; the exit program returns at once while no task anywhere is held
//! ([`THROTTLED_NOW`]). On recent kernels the check is the kernel's own (an inline wrapper
//! calls `__mem_cgroup_handle_over_high()`, which userspace hooks instead), and the programs'
//! checks only confirm it. Before that, the fentry/fexit trampoline itself costs each such
//! return some 325 instructions however early the programs return (docs/benchmarks.md): only
//! `run` loads them.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_task_btf, bpf_ktime_get_ns,
    },
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use memstress_ebpf::{Throttle, UNKNOWN};

use crate::{
    kernel::{self, layout},
    maps::{THROTTLE, THROTTLE_START, ThrottleStart},
    pressure::add,
};

/// Tasks inside the handler with an entry in [`THROTTLE_START`] (a `.bss` global: reading it
/// is a load, no map lookup). Raised at entry, lowered at the exit that finds the entry. It
/// can only be too high (an entry the LRU map evicted), which costs the exit program its
/// early return, never a figure.
#[unsafe(no_mangle)]
static mut THROTTLED_NOW: u64 = 0;

/// Most attempts at raising a memcg's `max_ns` against concurrent exits; past them, the value
/// another CPU just wrote stands (it changed under each attempt: it is at least as recent).
const MAX_TRIES: usize = 4;

/// Entry of `mem_cgroup_handle_over_high(gfp_t)` (or `__mem_cgroup_handle_over_high`).
#[fentry(function = "mem_cgroup_handle_over_high")]
pub fn throttle_entry(_ctx: FEntryContext) -> i32 {
    // The kernel's own first test (`if (likely(!nr_pages)) return;`): nothing to pay for.
    // Read with a plain load, not `bpf_probe_read_kernel` (a helper call, half of this
    // program's time on the common path: 180 instructions against 92 on 6.12, see
    // docs/benchmarks.md). `bpf_get_current_task_btf()` is a pointer the verifier knows the
    // type of, and the offset a constant of the read-only LAYOUT, so it checks the load
    // against task_struct's BTF (an unsigned int there) and makes it fault-tolerant. Verified
    // on 6.1 and 6.12.
    let offset = layout!(task_memcg_nr_pages_over_high);
    if offset == UNKNOWN {
        return 0;
    }
    // SAFETY: `current` is valid for the whole program; the offset is that of an unsigned
    // int inside task_struct, resolved from this kernel's BTF (userspace does not load this
    // program without it), and the verifier checks the access against the same BTF.
    let pages = unsafe {
        let task = bpf_get_current_task_btf().cast::<u8>();
        core::ptr::read_volatile(task.add(offset as usize).cast::<u32>())
    };
    if pages == 0 {
        return 0;
    }
    let start = ThrottleStart {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        pages: u64::from(pages),
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    // A task is in the handler once at a time (it is not reentered: the charges its reclaim
    // makes run under PF_MEMALLOC, which `try_charge_memcg()` does not throttle), so an entry
    // still there is one whose exit was missed: replaced, and not counted twice.
    let fresh = THROTTLE_START.get_ptr_mut(tid).is_none();
    if THROTTLE_START.insert(tid, start, 0).is_ok() && fresh {
        // SAFETY: a static's own, aligned u64; the add is atomic, as every CPU shares it.
        unsafe { add(&raw mut THROTTLED_NOW, 1) };
    }
    0
}

/// Exit of the same function: the time it held the task, added to the task's memcg.
#[fexit(function = "mem_cgroup_handle_over_high")]
pub fn throttle_exit(_ctx: FExitContext) -> i32 {
    // SAFETY: a volatile read of a static's own, aligned u64.
    if unsafe { core::ptr::read_volatile(&raw const THROTTLED_NOW) } == 0 {
        return 0;
    }
    let _ = try_exit();
    0
}

fn try_exit() -> Result<(), ()> {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: copying a plain value out of the map.
    let start = unsafe { THROTTLE_START.get(tid) }.copied().ok_or(())?;
    if THROTTLE_START.remove(tid).is_ok() {
        // SAFETY: as in the entry program; adding all ones lowers it by one.
        unsafe { add(&raw mut THROTTLED_NOW, u64::MAX) };
    }
    // SAFETY: helpers without preconditions; the task pointer is only read through
    // bpf_probe_read_kernel.
    let (now, task) = unsafe { (bpf_ktime_get_ns(), bpf_get_current_task()) };
    let elapsed = now.saturating_sub(start.ts_ns);
    let id = kernel::memcg_kn(task)
        .and_then(|kn| kernel::read::<u64>(kn, layout!(kn_id)))
        .ok_or(())?;
    match THROTTLE.get_ptr_mut(id) {
        Some(t) => {
            // SAFETY: a live map value shared by every CPU: the adds are atomic, and the
            // maximum is raised by compare-and-swap.
            unsafe {
                add(&raw mut (*t).episodes, 1);
                add(&raw mut (*t).ns, elapsed);
                add(&raw mut (*t).pages, start.pages);
                raise(&raw mut (*t).max_ns, elapsed);
            }
        }
        None => {
            let first = Throttle {
                episodes: 1,
                ns: elapsed,
                max_ns: elapsed,
                pages: start.pages,
            };
            let _ = THROTTLE.insert(id, first, 0);
        }
    }
    Ok(())
}

/// Raises the counter at `counter` to `value` if it is lower, by compare-and-swap
/// (`BPF_CMPXCHG`), at most [`MAX_TRIES`] times.
///
/// # Safety
/// `counter` points to a live, aligned `u64` in map memory.
#[inline(always)]
unsafe fn raise(counter: *mut u64, value: u64) {
    use core::intrinsics::{AtomicOrdering, atomic_cxchg};
    // SAFETY: as the caller promises.
    let mut seen = unsafe { core::ptr::read_volatile(counter) };
    for _ in 0..MAX_TRIES {
        if seen >= value {
            return;
        }
        // SAFETY: as the caller promises; map values are 8-byte aligned.
        let (was, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                counter, seen, value,
            )
        };
        if swapped {
            return;
        }
        seen = was;
    }
}
