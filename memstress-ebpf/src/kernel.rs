//! Reading kernel structures through offsets resolved from BTF by userspace.
//!
//! Every read goes through `bpf_probe_read_kernel`, so a bad pointer yields an error instead
//! of a fault; an [`UNKNOWN`] offset is never dereferenced.

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes};
use memstress_ebpf::{
    CGROUP_DEPTH, CHAIN_DEPTH, CgroupPath, Chain, KernelLayout, RSS_ANON, RSS_FILE, RSS_SHMEM,
    RSS_SWAP, TaskFacts, UNKNOWN, domain, level, valid,
};

// Loops over kernel structures run as `bpf_loop` callbacks: the verifier checks a callback
// once, where an unrolled loop with a few branches per level exceeds its complexity limit.

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

/// The task's memory css (which is its `struct mem_cgroup`): `task->cgroups->subsys[memory]`.
#[inline(always)]
pub fn memcg_css(task: u64) -> Option<u64> {
    let css_set = read::<u64>(task, layout!(task_cgroups))?;
    let css = read::<u64>(css_set, layout!(css_set_memory))?;
    (css != 0).then_some(css)
}

/// The kernfs node of the task's memory cgroup: `task->cgroups->subsys[memory]->cgroup->kn`.
#[inline(always)]
pub fn memcg_kn(task: u64) -> Option<u64> {
    let cgroup = read::<u64>(memcg_css(task)?, layout!(css_cgroup))?;
    let kn = read::<u64>(cgroup, layout!(cgroup_kn))?;
    (kn != 0).then_some(kn)
}

/// `PAGE_COUNTER_MAX` is `LONG_MAX / PAGE_SIZE`; anything this large is "no limit".
const UNLIMITED_PAGES: u64 = 1 << 50;

/// State of the walk up a victim's memcg chain (one level per `bpf_loop` step).
#[repr(C)]
pub struct ChainWalk {
    /// The next memcg's css (0: done).
    pub css: u64,
    /// `struct cgroup *` of each level recorded.
    pub cgroups: [u64; CHAIN_DEPTH],
    /// Topmost level with `oom_lock` set so far (`CHAIN_DEPTH`: none).
    pub locked: u32,
    /// Lowest level at its limit (`CHAIN_DEPTH`: none).
    pub near: u32,
    /// Lowest level with more OOMs invoked for it than kills attributed to it
    /// (`CHAIN_DEPTH`: none). Each level's count is in `CHAIN_OOM_EVENTS`.
    pub behind: u32,
    /// Padding.
    pub _pad: u32,
}

impl ChainWalk {
    /// A walk starting at `css`.
    pub fn new(css: u64) -> Self {
        Self {
            css,
            cgroups: [0; CHAIN_DEPTH],
            locked: CHAIN_DEPTH as u32,
            near: CHAIN_DEPTH as u32,
            behind: CHAIN_DEPTH as u32,
            _pad: 0,
        }
    }
}

/// Records chain level `i` (the memcg at `walk.css`) and moves to its parent. Returns false
/// when the root was passed or `i` is out of range.
#[inline(always)]
pub fn chain_step(walk: &mut ChainWalk, i: usize, out: &mut Chain) -> bool {
    let css = walk.css;
    let (Some(l), Some(slot)) = (out.levels.get_mut(i), walk.cgroups.get_mut(i)) else {
        return false;
    };
    if css == 0 {
        return false;
    }
    l.flags = 0;
    let cgroup = read::<u64>(css, layout!(css_cgroup)).unwrap_or(0);
    *slot = cgroup;
    l.id = read::<u64>(cgroup, layout!(cgroup_kn))
        .and_then(|kn| read::<u64>(kn, layout!(kn_id)))
        .unwrap_or(0);
    l.level = read::<i32>(cgroup, layout!(cgroup_level)).unwrap_or(-1) as u32;
    let usage = read::<u64>(css, layout!(memcg_usage));
    let max = read::<u64>(css, layout!(memcg_max));
    if let (Some(usage), Some(max)) = (usage, max) {
        l.usage = usage;
        l.max = max;
        l.flags |= level::VALID;
        if walk.near == CHAIN_DEPTH as u32
            && max < UNLIMITED_PAGES
            && usage + domain::NEAR_LIMIT_PAGES >= max
        {
            walk.near = i as u32;
        }
    }
    l.swap_max = read::<u64>(css, layout!(memcg_swap_max)).unwrap_or(0);
    // The limit hits as they stand at the kill: a reader that reads the cgroup's file later
    // would count hits after it.
    if let Some(failcnt) = read::<u64>(css, layout!(memcg_failcnt)) {
        l.failcnt = failcnt;
        l.flags |= level::FAILCNT;
    }
    if let Some(max) = read::<u64>(css, layout!(memcg_events_max)) {
        l.events_max = max;
        l.flags |= level::EVENTS_MAX;
    }
    if read::<u8>(css, layout!(memcg_oom_lock)).unwrap_or(0) != 0 {
        l.flags |= level::OOM_LOCK;
        walk.locked = i as u32;
    }
    if read::<u8>(css, layout!(memcg_oom_group)).unwrap_or(0) != 0 {
        l.flags |= level::OOM_GROUP;
    }
    // Read straight into map memory, initialised first: a value returned through an
    // `Option` is undefined on its error path, and the verifier refuses to see it compared.
    let mut invoked = u64::MAX;
    let offset = layout!(memcg_events_local_oom);
    if let Some(events) = crate::maps::CHAIN_OOM_EVENTS.get_ptr_mut(0)
        // SAFETY: this CPU's scratch slot; nothing else uses it during this program.
        && let Some(slot) = unsafe { (*events).get_mut(i) }
    {
        *slot = u64::MAX;
        if offset != UNKNOWN {
            // SAFETY: as in `read`; the destination is 8 bytes of map memory.
            let bytes =
                unsafe { core::slice::from_raw_parts_mut((slot as *mut u64).cast::<u8>(), 8) };
            // SAFETY: as in `read`.
            let read = unsafe {
                aya_ebpf::helpers::bpf_probe_read_kernel_buf(
                    (css + offset as u64) as *const u8,
                    bytes,
                )
            };
            if read.is_err() {
                *slot = u64::MAX;
            }
        }
        invoked = *slot;
    }
    if invoked != u64::MAX
        && walk.behind == CHAIN_DEPTH as u32
        // SAFETY: copying a plain value out of the map.
        && let Some(&killed) = unsafe { crate::maps::OOM_EVENTS.get(l.id) }
        && invoked > killed
    {
        walk.behind = i as u32;
    }
    out.depth = i as u32 + 1;
    walk.css = read::<u64>(css, layout!(css_parent)).unwrap_or(0);
    if walk.css == 0 {
        l.flags |= level::ROOT;
    }
    walk.css != 0
}

/// After the walk: the OOM domain is the topmost memcg whose `oom_lock` is set (the cgroup
/// v1 code locks the domain's whole subtree while it handles the OOM), else the lowest
/// memcg within [`domain::NEAR_LIMIT_PAGES`] of its limit (the first counter
/// `page_counter_try_charge()` fails on, walking up from the leaf), else none: a global OOM.
/// Returns the domain's `struct cgroup *` (0 for global) and its level.
#[inline(always)]
pub fn chain_domain(walk: &ChainWalk, out: &mut Chain) -> (u64, i32) {
    out.domain = domain::GLOBAL;
    out.domain_by = 0;
    let (found, by) = if walk.locked < CHAIN_DEPTH as u32 {
        (walk.locked as usize, domain::BY_OOM_LOCK)
    } else if walk.near < CHAIN_DEPTH as u32 {
        (walk.near as usize, domain::BY_USAGE)
    } else if walk.behind < CHAIN_DEPTH as u32 {
        (walk.behind as usize, domain::BY_OOM_EVENTS)
    } else {
        return (0, 0);
    };
    let (Some(l), Some(&cgroup)) = (out.levels.get(found), walk.cgroups.get(found)) else {
        return (0, 0);
    };
    // The root memcg has no limit: a "domain" there is a global OOM.
    if l.flags & level::ROOT != 0 {
        return (0, 0);
    }
    let level = l.level as i32;
    out.domain = found as u32;
    out.domain_by = by;
    (cgroup, level)
}

/// The OOM domain as the kernel's own `oc->memcg` names it (its cgroup id, `memcg_id`; 0 for
/// a global OOM), found in the victim's chain: `(struct cgroup *, level)`, `(0, 0)` for a
/// global OOM, `None` when the chain does not hold it.
#[inline(always)]
pub fn oc_domain(walk: &ChainWalk, chain: &Chain, memcg_id: u64) -> Option<(u64, i32)> {
    if memcg_id == 0 {
        return Some((0, 0));
    }
    for i in 0..CHAIN_DEPTH {
        if i as u32 >= chain.depth {
            break;
        }
        if let (Some(l), Some(&cgroup)) = (chain.levels.get(i), walk.cgroups.get(i))
            && l.id == memcg_id
            && cgroup != 0
        {
            return Some((cgroup, l.level as i32));
        }
    }
    None
}

/// Attributes this kill to its domain, the memcg `id` on the chain: one more kill against the
/// OOMs invoked for it. Seen for the first time, all of its OOMs but one are taken as
/// resolved (another may be waiting behind this one, as in a storm).
#[inline(always)]
pub fn attribute_kill(chain: &Chain, id: u64) {
    let Some(events) = crate::maps::CHAIN_OOM_EVENTS.get_ptr(0) else {
        return;
    };
    for i in 0..CHAIN_DEPTH {
        if i as u32 >= chain.depth {
            break;
        }
        // SAFETY: this CPU's scratch slot, filled by this program's chain walk.
        let (Some(l), Some(&invoked)) = (chain.levels.get(i), unsafe { (*events).get(i) }) else {
            break;
        };
        if l.id != id {
            continue;
        }
        if invoked == u64::MAX {
            return;
        }
        // SAFETY: copying a plain value out of the map.
        let killed = match unsafe { crate::maps::OOM_EVENTS.get(id) } {
            Some(&k) => (k + 1).min(invoked),
            None => invoked.saturating_sub(1),
        };
        let _ = crate::maps::OOM_EVENTS.insert(id, killed, 0);
        return;
    }
}

/// Whether the task's memory cgroup is `domain` (at `level`) or below it, the way
/// `cgroup_is_descendant()` tells: `cgrp->ancestors[ancestor->level] == ancestor`.
#[inline(always)]
pub fn in_domain(task: u64, domain: u64, domain_level: i32) -> bool {
    if domain == 0 {
        return true;
    }
    let Some(cgroup) = memcg_css(task).and_then(|css| read::<u64>(css, layout!(css_cgroup))) else {
        return false;
    };
    let Some(task_level) = read::<i32>(cgroup, layout!(cgroup_level)) else {
        return false;
    };
    if task_level < domain_level || !(0..64).contains(&domain_level) {
        return false;
    }
    let ancestors = layout!(cgroup_ancestors);
    if ancestors == UNKNOWN {
        return false;
    }
    read::<u64>(cgroup, ancestors + domain_level as u32 * 8) == Some(domain)
}

/// Records path component `i` (the name of the kernfs node `*kn`) and moves `*kn` to its
/// parent; the hierarchy root's own name is not part of the path. Returns false when done.
#[inline(always)]
pub fn path_step(kn: &mut u64, i: usize, out: &mut CgroupPath) -> bool {
    let parent_off = layout!(kn_parent);
    let Some(parent) = read::<u64>(*kn, parent_off) else {
        return false;
    };
    if parent == 0 {
        return false;
    }
    if i >= CGROUP_DEPTH {
        // Deeper than we record.
        out.truncated = 1;
        return false;
    }
    let (Some(name), Some(id)) = (out.names.get_mut(i), out.ids.get_mut(i)) else {
        return false;
    };
    let Some(ptr) = read::<u64>(*kn, layout!(kn_name)) else {
        return false;
    };
    *id = read::<u64>(*kn, layout!(kn_id)).unwrap_or(0);
    // SAFETY: reads a NUL-terminated kernel string into a fixed-size array, truncating.
    if unsafe { bpf_probe_read_kernel_str_bytes(ptr as *const u8, name) }.is_err() {
        return false;
    }
    out.depth = i as u32 + 1;
    *kn = parent;
    true
}
