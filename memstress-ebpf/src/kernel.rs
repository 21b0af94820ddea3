//! Reading kernel structures through offsets resolved from BTF by userspace.
//!
//! Every read goes through `bpf_probe_read_kernel`, so a bad pointer yields an error instead
//! of a fault; an [`UNKNOWN`] offset is never dereferenced.

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes};
use memstress_ebpf::{
    CGROUP_DEPTH, CgroupPath, KernelLayout, RSS_ANON, RSS_FILE, RSS_SHMEM, RSS_SWAP, TaskFacts,
    UNKNOWN, valid,
};

/// Offsets for the running kernel, written by userspace through `EbpfLoader::set_global`
/// before the object is loaded. It lives in `.rodata`, so the verifier sees the constants.
#[unsafe(no_mangle)]
pub static LAYOUT: KernelLayout = KernelLayout::UNSET;

/// Reads one field of [`LAYOUT`]. The volatile read keeps the compiler from folding the
/// placeholder value in; the verifier still sees the frozen constant.
macro_rules! layout {
    ($field:ident) => {
        // SAFETY: reading a field of a static; `read_volatile` of a valid, aligned place.
        unsafe { core::ptr::read_volatile(&raw const $crate::kernel::LAYOUT.$field) }
    };
}
pub(crate) use layout;

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 || offset == UNKNOWN {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copies from any kernel address and reports a failure
    // instead of faulting; the result is a plain value of an integer type.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}

/// Fills `out` with what the kernel holds for the task at `task`.
#[inline(always)]
pub fn task_facts(task: u64, out: &mut TaskFacts) {
    out.valid = 0;
    if let (Some(pid), Some(tgid)) = (
        read::<i32>(task, layout!(task_pid)),
        read::<i32>(task, layout!(task_tgid)),
    ) {
        out.pid = pid as u32;
        out.tgid = tgid as u32;
        out.valid |= valid::IDS;
    }
    let comm = layout!(task_comm);
    if comm != UNKNOWN {
        // SAFETY: as in `read`; the destination is a fixed-size array in map memory.
        let ok = unsafe {
            aya_ebpf::helpers::bpf_probe_read_kernel_buf(
                (task + comm as u64) as *const u8,
                &mut out.comm,
            )
        }
        .is_ok();
        if ok {
            out.valid |= valid::COMM;
        }
    }
    if let Some(flags) = read::<u32>(task, layout!(task_flags)) {
        out.flags = flags;
        out.valid |= valid::FLAGS;
    }
    if let Some(signal) = read::<u64>(task, layout!(task_signal))
        && let Some(adj) = read::<i16>(signal, layout!(signal_oom_score_adj))
    {
        out.oom_score_adj = adj;
        out.valid |= valid::OOM_SCORE_ADJ;
    }
    if let Some(cred) = read::<u64>(task, layout!(task_real_cred))
        && let Some(uid) = read::<u32>(cred, layout!(cred_uid))
    {
        out.uid = uid;
        out.valid |= valid::UID;
    }
    if let Some(mm) = read::<u64>(task, layout!(task_mm))
        && mm != 0
    {
        mm_facts(mm, out);
    }
    if let Some(id) = memcg_kn(task).and_then(|kn| read::<u64>(kn, layout!(kn_id))) {
        out.memcg_id = id;
        out.valid |= valid::MEMCG;
    }
}

/// RSS counters, page tables and VM size of an `mm_struct`, as `oom_badness()` reads them
/// (`get_mm_counter()` reads `percpu_counter.count`, not the per-CPU sum).
#[inline(always)]
fn mm_facts(mm: u64, out: &mut TaskFacts) {
    let base = layout!(mm_rss_stat);
    let stride = layout!(mm_rss_stride);
    if base != UNKNOWN && stride != UNKNOWN {
        let counter = |index: u32| -> Option<i64> {
            if index == UNKNOWN {
                return None;
            }
            read::<i64>(mm, base + index * stride)
        };
        if let (Some(file), Some(anon), Some(swap), Some(shmem)) = (
            counter(layout!(mm_filepages)),
            counter(layout!(mm_anonpages)),
            counter(layout!(mm_swapents)),
            counter(layout!(mm_shmempages)),
        ) {
            out.rss[RSS_FILE] = file;
            out.rss[RSS_ANON] = anon;
            out.rss[RSS_SWAP] = swap;
            out.rss[RSS_SHMEM] = shmem;
            out.valid |= valid::RSS;
        }
    }
    if let Some(bytes) = read::<i64>(mm, layout!(mm_pgtables_bytes)) {
        out.pgtables_bytes = bytes as u64;
        out.valid |= valid::PGTABLES;
    }
    if let Some(pages) = read::<u64>(mm, layout!(mm_total_vm)) {
        out.total_vm = pages;
        out.valid |= valid::TOTAL_VM;
    }
}

/// The kernfs node of the task's memory cgroup: `task->cgroups->subsys[memory]->cgroup->kn`.
#[inline(always)]
pub fn memcg_kn(task: u64) -> Option<u64> {
    let css_set = read::<u64>(task, layout!(task_cgroups))?;
    let css = read::<u64>(css_set, layout!(css_set_memory))?;
    let cgroup = read::<u64>(css, layout!(css_cgroup))?;
    let kn = read::<u64>(cgroup, layout!(cgroup_kn))?;
    (kn != 0).then_some(kn)
}

/// Records the path of the cgroup whose kernfs node is `kn`, leaf first, stopping below the
/// hierarchy root (the root's own name is not part of the path).
#[inline(always)]
pub fn cgroup_path(mut kn: u64, out: &mut CgroupPath) {
    out.depth = 0;
    out.truncated = 0;
    let name_off = layout!(kn_name);
    let parent_off = layout!(kn_parent);
    for i in 0..CGROUP_DEPTH {
        let Some(parent) = read::<u64>(kn, parent_off) else {
            return;
        };
        if parent == 0 {
            return;
        }
        let Some(name) = read::<u64>(kn, name_off) else {
            return;
        };
        out.ids[i] = read::<u64>(kn, layout!(kn_id)).unwrap_or(0);
        // SAFETY: reads a NUL-terminated kernel string into a fixed-size array, truncating.
        if unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut out.names[i]) }.is_err()
        {
            return;
        }
        out.depth = i as u32 + 1;
        kn = parent;
    }
    if let Some(parent) = read::<u64>(kn, parent_off)
        && parent != 0
    {
        out.truncated = 1;
    }
}
