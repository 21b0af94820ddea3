//! Resolving the [`KernelLayout`] the BPF programs read kernel structures with.
//!
//! Offsets come from the running kernel's BTF (struct members) and from tracefs (classic
//! tracepoint records). A member this kernel does not have stays [`UNKNOWN`] and is listed in
//! [`Resolved::missing`], so the report can say "unknown" instead of printing a wrong number.

use memstress_ebpf::{KernelLayout, UNKNOWN};

use crate::probe::{
    btf::{Btf, BtfError, Kind},
    tracefs::Format,
};

/// A resolved layout and what could not be resolved.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The offsets.
    pub layout: KernelLayout,
    /// Human-readable names of what is unknown on this kernel (e.g. `mm_struct.rss_stat`).
    pub missing: Vec<String>,
}

struct Resolver<'a> {
    btf: &'a Btf,
    missing: Vec<String>,
}

impl Resolver<'_> {
    /// Offset of `ty.member`, or [`UNKNOWN`] (noted as missing).
    fn offset(&mut self, ty: &str, member: &str) -> u32 {
        self.try_offset(ty, member).unwrap_or(UNKNOWN)
    }

    fn try_offset(&mut self, ty: &str, member: &str) -> Option<u32> {
        match self.btf.struct_member(ty, member) {
            Ok(m) => Some(m.offset),
            Err(_) => {
                self.missing.push(format!("{ty}.{member}"));
                None
            }
        }
    }

    /// Offset of `ty.member` where the member is optional (absent on some kernel builds, and
    /// the programs cope): not listed as missing.
    fn optional(&self, ty: &str, member: &str) -> u32 {
        self.btf
            .struct_member(ty, member)
            .map_or(UNKNOWN, |m| m.offset)
    }

    /// Offset of a `struct page_counter` field inside `struct mem_cgroup`, counted from the
    /// memcg's css (its first member), trying each historical name of the counter.
    fn memcg_counter(&mut self, counters: &[&str], field: &str) -> u32 {
        let found = (|| {
            let css = self.btf.struct_member("mem_cgroup", "css").ok()?;
            let counter = counters
                .iter()
                .find_map(|c| self.btf.struct_member("mem_cgroup", c).ok())?;
            let inner = self.btf.struct_member("page_counter", field).ok()?;
            (counter.offset + inner.offset).checked_sub(css.offset)
        })();
        found.unwrap_or_else(|| {
            self.missing
                .push(format!("mem_cgroup.{}.{field}", counters.join("|")));
            UNKNOWN
        })
    }

    /// Offset of `mem_cgroup.memory_events[event]` (an `atomic_long_t` array indexed by
    /// `enum memcg_memory_event`), counted from the memcg's css; `UNKNOWN` without it.
    fn memcg_event(&self, event: &str) -> u32 {
        self.memcg_event_in("memory_events", event)
    }

    /// The offset of `mem_cgroup.<array>[event]` (an `atomic_long_t` array indexed by
    /// `enum memcg_memory_event`) from the css; unknown where the kernel lacks either.
    fn memcg_event_in(&self, array: &str, event: &str) -> u32 {
        (|| {
            let css = self.btf.struct_member("mem_cgroup", "css").ok()?;
            let events = self.btf.struct_member("mem_cgroup", array).ok()?;
            let index = u32::try_from(self.btf.enum_value(event).ok()?).ok()?;
            (events.offset + index * 8).checked_sub(css.offset)
        })()
        .unwrap_or(UNKNOWN)
    }

    /// [`Self::memcg_counter`] for a field some kernels lack (not listed as missing).
    fn optional_memcg_counter(&self, counter: &str, field: &str) -> u32 {
        (|| {
            let css = self.btf.struct_member("mem_cgroup", "css").ok()?;
            let c = self.btf.struct_member("mem_cgroup", counter).ok()?;
            let inner = self.btf.struct_member("page_counter", field).ok()?;
            (c.offset + inner.offset).checked_sub(css.offset)
        })()
        .unwrap_or(UNKNOWN)
    }

    /// The first of several historical names of a member.
    fn offset_any(&mut self, ty: &str, members: &[&str]) -> u32 {
        for member in members {
            if let Ok(m) = self.btf.struct_member(ty, member) {
                return m.offset;
            }
        }
        self.missing.push(format!("{ty}.{}", members.join("|")));
        UNKNOWN
    }

    fn enum_value(&mut self, name: &str) -> u32 {
        match self.btf.enum_value(name) {
            Ok(v) => u32::try_from(v).unwrap_or(UNKNOWN),
            Err(_) => {
                self.missing.push(name.to_owned());
                UNKNOWN
            }
        }
    }

    /// `mm_struct.rss_stat`: an array of `struct percpu_counter` since 6.2 (the counter value
    /// is its `count`), or `struct mm_rss_stat { atomic_long_t count[NR_MM_COUNTERS]; }`
    /// before. Returns (offset of counter 0's value, stride between counters).
    fn rss_stat(&mut self) -> (u32, u32) {
        match self.try_rss_stat() {
            Ok(found) => found,
            Err(e) => {
                self.missing.push(format!("mm_struct.rss_stat ({e})"));
                (UNKNOWN, UNKNOWN)
            }
        }
    }

    fn try_rss_stat(&self) -> Result<(u32, u32), BtfError> {
        let member = self.btf.struct_member("mm_struct", "rss_stat")?;
        let ty = self.btf.resolve(member.type_id)?;
        match self.btf.kind_of(ty)? {
            Kind::Array => {
                let array = self.btf.array(ty)?;
                let elem = self.btf.resolve(array.elem_type)?;
                let stride = u32::try_from(self.btf.size_of(elem)?)
                    .map_err(|_| BtfError::Corrupt("huge rss_stat element"))?;
                let value = self.btf.member_of(elem, "count")?.ok_or_else(|| {
                    BtfError::Unexpected(self.btf.describe(elem), "no `count` member")
                })?;
                Ok((member.offset + value.offset, stride))
            }
            Kind::Struct => {
                let count = self.btf.member_of(ty, "count")?.ok_or_else(|| {
                    BtfError::Unexpected(self.btf.describe(ty), "no `count` member")
                })?;
                let array = self.btf.array(count.type_id)?;
                let stride = u32::try_from(self.btf.size_of(array.elem_type)?)
                    .map_err(|_| BtfError::Corrupt("huge rss_stat element"))?;
                Ok((member.offset + count.offset, stride))
            }
            _ => Err(BtfError::Unexpected(
                self.btf.describe(ty),
                "neither an array nor a struct",
            )),
        }
    }

    /// `css_set.subsys[memory_cgrp_id]`.
    fn css_set_memory(&mut self) -> u32 {
        let subsys = self.try_offset("css_set", "subsys");
        let index = self.enum_value("memory_cgrp_id");
        match subsys {
            Some(base) if index != UNKNOWN => base + index * 8,
            _ => UNKNOWN,
        }
    }

    /// Whether the tp_btf `mark_victim` passes the task (6.8+) or only a pid.
    fn mark_victim_has_task(&mut self) -> u32 {
        match self.btf.func_proto_params("btf_trace_mark_victim") {
            // (void *__data, struct task_struct *task, uid_t uid)
            Ok(params) => {
                u32::from(params.len() >= 2 && self.btf.kind_of(params[1]).ok() == Some(Kind::Ptr))
            }
            Err(_) => {
                self.missing.push("btf_trace_mark_victim".to_owned());
                0
            }
        }
    }
}

/// Most tasks the `mark_victim` program visits to list an OOM's candidates.
pub const SCAN_LIMIT: u32 = 32_768;
/// Most candidates it reports per OOM.
pub const CANDIDATE_LIMIT: u32 = 4_096;

/// `enum oom_constraint` as this kernel defines it: value -> name.
pub fn oom_constraints(btf: &Btf) -> Vec<(u32, String)> {
    [
        "CONSTRAINT_NONE",
        "CONSTRAINT_CPUSET",
        "CONSTRAINT_MEMORY_POLICY",
        "CONSTRAINT_MEMCG",
    ]
    .iter()
    .filter_map(|name| {
        let value = u32::try_from(btf.enum_value(name).ok()?).ok()?;
        Some((value, (*name).to_owned()))
    })
    .collect()
}

/// Resolves every offset the programs use from `btf`, and the classic `oom:mark_victim`
/// record layout from `mark_victim` when tracefs is available.
pub fn resolve(btf: &Btf, mark_victim: Option<&Format>) -> Resolved {
    let mut r = Resolver {
        btf,
        missing: Vec::new(),
    };
    let (mm_rss_stat, mm_rss_stride) = r.rss_stat();
    let mut layout = KernelLayout {
        task_pid: r.offset("task_struct", "pid"),
        task_tgid: r.offset("task_struct", "tgid"),
        task_comm: r.offset("task_struct", "comm"),
        task_flags: r.offset("task_struct", "flags"),
        task_exit_code: r.offset("task_struct", "exit_code"),
        task_mm: r.offset("task_struct", "mm"),
        task_signal: r.offset("task_struct", "signal"),
        task_real_cred: r.offset("task_struct", "real_cred"),
        task_cgroups: r.offset("task_struct", "cgroups"),
        // kuid_t is `struct { uid_t val; }`: the value is at the member's offset.
        cred_uid: r.offset("cred", "uid"),
        signal_oom_score_adj: r.offset("signal_struct", "oom_score_adj"),
        mm_rss_stat,
        mm_rss_stride,
        mm_pgtables_bytes: r.offset("mm_struct", "pgtables_bytes"),
        mm_total_vm: r.offset("mm_struct", "total_vm"),
        mm_filepages: r.enum_value("MM_FILEPAGES"),
        mm_anonpages: r.enum_value("MM_ANONPAGES"),
        mm_swapents: r.enum_value("MM_SWAPENTS"),
        mm_shmempages: r.enum_value("MM_SHMEMPAGES"),
        css_set_memory: r.css_set_memory(),
        css_cgroup: r.offset("cgroup_subsys_state", "cgroup"),
        cgroup_kn: r.offset("cgroup", "kn"),
        kn_name: r.offset("kernfs_node", "name"),
        // Renamed to `__parent` in 6.15 when it became RCU-protected.
        kn_parent: r.offset_any("kernfs_node", &["__parent", "parent"]),
        kn_id: r.offset("kernfs_node", "id"),
        css_parent: r.offset("cgroup_subsys_state", "parent"),
        cgroup_level: r.offset("cgroup", "level"),
        cgroup_ancestors: r.offset("cgroup", "ancestors"),
        memcg_usage: r.memcg_counter(&["memory"], "usage"),
        memcg_max: r.memcg_counter(&["memory"], "max"),
        memcg_swap_max: r.memcg_counter(&["memsw", "swap"], "max"),
        // cgroup v1 code (CONFIG_MEMCG_V1) and v2's memory.oom.group: the programs work
        // without them.
        memcg_oom_lock: r.optional("mem_cgroup", "oom_lock"),
        memcg_oom_group: r.optional("mem_cgroup", "oom_group"),
        // Limit hits, read at the kill: v1 shows `memory.failcnt`, v2 `memory.events` max;
        // the explainer takes the one of the hierarchy in use.
        memcg_failcnt: r.optional_memcg_counter("memory", "failcnt"),
        memcg_events_max: r.memcg_event("MEMCG_MAX"),
        // How many OOMs were invoked for each memcg itself: where a kill's other signs of its
        // domain are gone, the memcg that has more of them than kills attributed to it.
        memcg_events_local_oom: r.memcg_event_in("memory_events_local", "MEMCG_OOM"),
        task_tasks: r.offset("task_struct", "tasks"),
        // The walk of a memcg domain's own tasks; without these, the scan walks every task
        // of the node and keeps the domain's.
        task_cg_list: r.optional("task_struct", "cg_list"),
        css_children: r.optional("cgroup_subsys_state", "children"),
        css_sibling: r.optional("cgroup_subsys_state", "sibling"),
        cgroup_self: r.optional("cgroup", "self"),
        cgroup_cset_links: r.optional("cgroup", "cset_links"),
        link_cset_link: r.optional("cgrp_cset_link", "cset_link"),
        link_cset: r.optional("cgrp_cset_link", "cset"),
        cset_tasks: r.optional("css_set", "tasks"),
        cset_mg_tasks: r.optional("css_set", "mg_tasks"),
        signal_oom_mm: r.offset("signal_struct", "oom_mm"),
        oc_memcg: r.offset("oom_control", "memcg"),
        oc_totalpages: r.offset("oom_control", "totalpages"),
        oc_chosen: r.offset("oom_control", "chosen"),
        oc_chosen_points: r.offset("oom_control", "chosen_points"),
        oc_constraint: r.offset("oom_control", "constraint"),
        oc_gfp_mask: r.offset("oom_control", "gfp_mask"),
        oc_order: r.offset("oom_control", "order"),
        scan_limit: SCAN_LIMIT,
        candidate_limit: CANDIDATE_LIMIT,
        mark_victim_has_task: r.mark_victim_has_task(),
        // The throttle probes' early return; without it (no CONFIG_MEMCG) they are not
        // loaded, and their status says why.
        task_memcg_nr_pages_over_high: r.optional("task_struct", "memcg_nr_pages_over_high"),
        ..KernelLayout::UNSET
    };
    if let Some(format) = mark_victim {
        let mut tp = |name: &str| match format.field(name) {
            Some(field) => field.offset,
            None => {
                r.missing.push(format!("oom:mark_victim.{name}"));
                UNKNOWN
            }
        };
        layout.tp_victim_pid = tp("pid");
        layout.tp_victim_total_vm = tp("total_vm");
        layout.tp_victim_anon_rss = tp("anon_rss");
        layout.tp_victim_file_rss = tp("file_rss");
        layout.tp_victim_shmem_rss = tp("shmem_rss");
        layout.tp_victim_uid = tp("uid");
        layout.tp_victim_pgtables = tp("pgtables");
        layout.tp_victim_oom_score_adj = tp("oom_score_adj");
    }
    Resolved {
        layout,
        missing: r.missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::btf::VMLINUX;

    /// The resolver on this machine's own kernel BTF. Every test machine of this project
    /// exposes /sys/kernel/btf/vmlinux; the test fails loudly where it does not.
    #[test]
    fn resolves_every_offset_on_this_kernel() {
        let btf = Btf::from_file(VMLINUX).unwrap_or_else(|e| {
            panic!("this test needs the running kernel's BTF at {VMLINUX}: {e}")
        });
        let resolved = resolve(&btf, None);
        assert!(
            resolved.missing.is_empty(),
            "unresolved on this kernel: {:?}",
            resolved.missing
        );
        let l = resolved.layout;
        // pid and tgid are adjacent pid_t members of task_struct.
        assert_eq!(l.task_tgid, l.task_pid + 4);
        // rss_stat sits inside mm_struct's anonymous struct: a nonzero offset, and the
        // counters are at least 8 bytes apart.
        assert!(l.mm_rss_stat > 0 && l.mm_rss_stat != UNKNOWN);
        assert!(l.mm_rss_stride >= 8);
        assert_eq!(
            (
                l.mm_filepages,
                l.mm_anonpages,
                l.mm_swapents,
                l.mm_shmempages
            ),
            (0, 1, 2, 3)
        );
        // kernfs_node.id is a u64 and `name` a pointer: both 8-byte aligned.
        assert_eq!(l.kn_id % 8, 0);
        assert_eq!(l.kn_name % 8, 0);
        // The page counters sit after the css, with max after usage; this kernel has the
        // cgroup v1 code (its memory controller is on v1), so oom_lock is known.
        assert!(l.memcg_usage > 0 && l.memcg_max > l.memcg_usage);
        assert_ne!(l.memcg_swap_max, UNKNOWN);
        assert_ne!(l.memcg_oom_lock, UNKNOWN);
        assert_ne!(l.memcg_oom_group, UNKNOWN);
        assert_ne!(l.memcg_failcnt, UNKNOWN);
        assert_ne!(l.memcg_events_max, UNKNOWN);
        assert_ne!(l.memcg_events_local_oom, UNKNOWN);
        assert!(l.memcg_events_local_oom != l.memcg_events_max);
        // An unsigned int, with the memcg fields of task_struct.
        assert_ne!(l.task_memcg_nr_pages_over_high, UNKNOWN);
        assert_eq!(l.task_memcg_nr_pages_over_high % 4, 0);
    }

    /// `mm_struct` wraps its members in an anonymous struct (with `__randomize_layout`), so
    /// finding `pgtables_bytes` at all proves the anonymous-member search; cross-check the
    /// offset against the enclosing anonymous struct's own members.
    #[test]
    fn anonymous_members_on_this_kernel() {
        let btf = Btf::from_file(VMLINUX).expect("kernel BTF");
        let mm = btf.find(Kind::Struct, "mm_struct").unwrap();
        let direct = btf.members(mm).unwrap();
        assert!(
            direct.iter().all(|(name, _)| *name != "pgtables_bytes"),
            "pgtables_bytes is expected inside an anonymous struct on this kernel"
        );
        let (_, anon) = direct
            .iter()
            .find(|(name, _)| name.is_empty())
            .expect("mm_struct has an anonymous member");
        let inner = btf
            .member_of(anon.type_id, "pgtables_bytes")
            .unwrap()
            .unwrap();
        let outer = btf.struct_member("mm_struct", "pgtables_bytes").unwrap();
        assert_eq!(outer.offset, anon.offset + inner.offset);
        assert_eq!(btf.size_of(outer.type_id).unwrap(), 8);
        // kernfs_node's anonymous union (dir/symlink/attr) is skipped over correctly: `id`
        // comes after it.
        let kn_id = btf.struct_member("kernfs_node", "id").unwrap();
        let kn_name = btf.struct_member("kernfs_node", "name").unwrap();
        assert!(kn_id.offset > kn_name.offset);
    }

    #[test]
    fn mark_victim_signature_on_this_kernel() {
        let btf = Btf::from_file(VMLINUX).expect("kernel BTF");
        let params = btf.func_proto_params("btf_trace_mark_victim").unwrap();
        assert_eq!(btf.describe(params[1]), "struct task_struct *");
        assert_eq!(resolve(&btf, None).layout.mark_victim_has_task, 1);
    }
}
