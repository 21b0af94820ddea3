//! The node's memory, as the two things that act on it see it: the kubelet's
//! `memory.available` (what its eviction thresholds, `memory.available<100Mi` by default,
//! compare against) and the kernel's `MemAvailable` (roughly what can still be allocated
//! before reclaim fails and the OOM killer runs node-wide).
//!
//! The kubelet computes `memory.available = capacity − workingSet` of the root cgroup, where
//! capacity is MemTotal and the working set is usage − inactive_file (cAdvisor's figure; the
//! Kubernetes docs' "node-pressure eviction" page states it, and explains why it is not
//! `free -m`'s). On cgroup v1 the root memcg has `memory.usage_in_bytes` and `memory.stat`'s
//! `total_inactive_file`. On v2 the root has no `memory.current`: runc's cgroup library
//! (`rootStatsFromMeminfo` in opencontainers/cgroups `fs2/memory.go`), which cAdvisor uses,
//! takes its usage as `anon + file` of the root's `memory.stat`, and cAdvisor subtracts its
//! `inactive_file`; memstress does the same. Where the node's root memcg is not visible (a
//! cgroup namespace), `MemAvailable` stands in, and the figure says so.

use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::target::cgroup::{Cgroup, Hierarchy, Version, parse_flat_keyed};

/// Where `memory.available` was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AvailableFrom {
    /// The kubelet's way: MemTotal − the node's root memcg's working set (v1:
    /// `memory.usage_in_bytes` − `total_inactive_file`; v2: `anon` + `file` −
    /// `inactive_file` of the root's `memory.stat`).
    RootMemcg,
    /// The kernel's `MemAvailable` (the node's root memcg is not visible from here).
    MemAvailable,
}

/// The node's memory now, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeMemory {
    /// MemTotal: the kubelet's capacity.
    pub mem_total: u64,
    /// The kernel's MemAvailable.
    pub mem_available: u64,
    /// SwapTotal.
    pub swap_total: u64,
    /// `memory.available` as the kubelet computes it.
    pub available: u64,
    /// How `available` was computed.
    pub available_from: AvailableFrom,
}

impl NodeMemory {
    /// Reads /proc/meminfo and the node's root memcg (`None`: /proc/meminfo unreadable).
    pub fn read() -> Option<Self> {
        Self::read_at(Self::root().as_ref())
    }

    /// The node's root memcg, when this process sees it (`None`: in a cgroup namespace, or
    /// no memory controller): what [`Self::read_at`] takes, found once.
    pub fn root() -> Option<Cgroup> {
        Hierarchy::discover()
            .ok()
            .map(|h| h.root())
            .filter(Cgroup::is_node_root)
    }

    /// Reads /proc/meminfo and `root`, the node's root memcg (`None`: MemAvailable stands in).
    pub fn read_at(root: Option<&Cgroup>) -> Option<Self> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let working_set = root.and_then(root_working_set);
        Self::from_figures(&meminfo, working_set)
    }

    /// From /proc/meminfo's text and the root memcg's working set (`None`: not readable).
    pub fn from_figures(meminfo: &str, root_working_set: Option<u64>) -> Option<Self> {
        let mem_total = super::meminfo_value(meminfo, "MemTotal:")?;
        let mem_available = super::meminfo_value(meminfo, "MemAvailable:")?;
        let swap_total = super::meminfo_value(meminfo, "SwapTotal:").unwrap_or(0);
        let (available, available_from) = match root_working_set {
            Some(ws) => (mem_total.saturating_sub(ws), AvailableFrom::RootMemcg),
            None => (mem_available, AvailableFrom::MemAvailable),
        };
        Some(Self {
            mem_total,
            mem_available,
            swap_total,
            available,
            available_from,
        })
    }
}

/// The root memcg's working set as cAdvisor computes it for the kubelet.
fn root_working_set(root: &Cgroup) -> Option<u64> {
    let stat = parse_flat_keyed(&std::fs::read_to_string(root.dir.join("memory.stat")).ok()?);
    match root.hierarchy.version {
        Version::V1 => {
            let usage = read_u64(&root.dir.join("memory.usage_in_bytes"))?;
            Some(usage.saturating_sub(stat.get("total_inactive_file").copied()?))
        }
        Version::V2 => {
            let usage = stat.get("anon")?.saturating_add(*stat.get("file")?);
            Some(usage.saturating_sub(stat.get("inactive_file").copied()?))
        }
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::fixture::Tree;

    const MEMINFO: &str = "MemTotal:       24684084 kB\nMemFree:        17760960 kB\n\
                           MemAvailable:   22942820 kB\nSwapTotal:             0 kB\n";

    /// This machine's figures on 2026-12-01: root memcg usage 6 411 620 352, total_inactive_file
    /// 2 912 641 024; the kubelet's memory.available is 20.3 GiB where MemAvailable says 21.9
    /// (active page cache counts as used).
    #[test]
    fn computes_memory_available_as_the_kubelet_does() {
        let ws = 6_411_620_352 - 2_912_641_024;
        let node = NodeMemory::from_figures(MEMINFO, Some(ws)).unwrap();
        assert_eq!(node.mem_total, 24_684_084 * 1024);
        assert_eq!(node.available, 24_684_084 * 1024 - ws);
        assert_eq!(node.available_from, AvailableFrom::RootMemcg);
        assert_eq!(node.mem_available, 22_942_820 * 1024);
        let hidden = NodeMemory::from_figures(MEMINFO, None).unwrap();
        assert_eq!(hidden.available, hidden.mem_available);
        assert_eq!(hidden.available_from, AvailableFrom::MemAvailable);
        assert_eq!(NodeMemory::from_figures("MemTotal: 1 kB\n", None), None);
    }

    #[test]
    fn reads_a_root_memcg_of_either_version() {
        for version in [Version::V1, Version::V2] {
            let tree = Tree::new(version);
            let root = tree.hierarchy().root();
            // The fixture's root holds nothing.
            assert_eq!(root_working_set(&root), Some(0), "{version:?}");
            let stat = match version {
                Version::V1 => "total_inactive_file 300\ntotal_active_file 500\n",
                Version::V2 => "anon 1000\nfile 800\ninactive_file 300\nactive_file 500\n",
            };
            std::fs::write(root.dir.join("memory.stat"), stat).unwrap();
            std::fs::write(root.dir.join("memory.usage_in_bytes"), "1800\n").unwrap();
            assert_eq!(root_working_set(&root), Some(1500), "{version:?}");
        }
    }
}
