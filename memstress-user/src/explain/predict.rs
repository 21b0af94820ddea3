//! The OOM ranking predicted before a run (`--dry-run`): the points `oom_badness()` would give
//! every process in the OOM domain and each planned stressor, from /proc as it is now. Marked
//! `"source":"predicted"`: the kernel's own figures come only from the OOM path. The domain is
//! a memcg ([`predict`]) or, for a run nothing but the node's memory bounds, the node
//! ([`predict_node`]: every process, `totalpages` = RAM + swap, as in a global OOM).

use std::fs;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    explain::{PointsFrom, Ranked, Source, points, record::RawCounters},
    target::cgroup::Cgroup,
};

/// A prediction of who the OOM killer would choose, highest points first.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Prediction {
    /// The cgroup whose limit would be hit (`/` for a global OOM: the node).
    pub domain: String,
    /// What `oom_score_adj` is scaled by there.
    pub totalpages: u64,
    /// Processes and planned stressors, highest points first.
    pub ranking: Vec<Ranked>,
    /// Processes the kernel would pass over (oom_score_adj -1000; in a global OOM also the
    /// init process, pid 1).
    pub exempt: Vec<String>,
}

/// One process's counters from /proc/PID/status (as `oom_badness()` adds them up), its
/// oom_score_adj and comm.
pub(crate) fn process(pid: u32, page: u64) -> Option<(RawCounters, i16, String)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    // Kernel threads and zombies have no mm: no VmRSS line.
    if !status.lines().any(|l| l.starts_with("VmRSS:")) {
        return None;
    }
    let pages = |k: u64| k.saturating_mul(1024) / page;
    let raw = RawCounters {
        rss_pages: pages(
            kib("RssAnon:")
                .saturating_add(kib("RssFile:"))
                .saturating_add(kib("RssShmem:")),
        ),
        swap_pages: pages(kib("VmSwap:")),
        pgtables_bytes: kib("VmPTE:").saturating_mul(1024),
    };
    let adj = fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    Some((raw, adj, comm))
}

pub(crate) fn procs_below(cgroup: &Cgroup, out: &mut Vec<u32>) {
    out.extend(cgroup.procs().unwrap_or_default());
    for child in cgroup.children().unwrap_or_default() {
        procs_below(&child, out);
    }
}

/// Predicts the ranking in `domain` (limit `limit` bytes) once the planned stressors (bytes
/// each, and their oom_score_adj) hold their memory.
pub fn predict(
    domain: &Cgroup,
    limit: u64,
    stressors: &[(String, u64, i16)],
    exists: bool,
) -> Prediction {
    let page = crate::size::page_size();
    let (_, swap_total) = points::node_pages(page);
    let swap_limit = domain.swap_limit().ok().flatten().unwrap_or(u64::MAX);
    let totalpages = points::totalpages_memcg(
        domain.hierarchy.version,
        limit / page,
        swap_limit / page,
        swap_total,
        60,
    );
    let mut pids = Vec::new();
    if exists {
        procs_below(domain, &mut pids);
    }
    let (ranking, exempt) = rank(&pids, stressors, totalpages, page, false);
    Prediction {
        domain: domain.path.clone(),
        totalpages,
        ranking,
        exempt,
    }
}

/// Predicts the ranking of a global OOM once the planned stressors hold their memory: every
/// process of the node (`/proc`), `totalpages` = RAM + swap (`totalram_pages() +
/// total_swap_pages`), the init process passed over as `oom_unkillable_task()` does.
pub fn predict_node(stressors: &[(String, u64, i16)]) -> Prediction {
    let page = crate::size::page_size();
    let (ram, swap) = points::node_pages(page);
    let totalpages = points::totalpages_global(ram, swap);
    let pids: Vec<u32> = fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let (ranking, exempt) = rank(&pids, stressors, totalpages, page, true);
    Prediction {
        domain: "/".to_owned(),
        totalpages,
        ranking,
        exempt,
    }
}

/// Whether /proc is the initial PID namespace's, where pid 1 is the node's init: its
/// namespace inode is `PROC_PID_INIT_INO` (include/linux/proc_ns.h).
fn in_initial_pid_ns() -> bool {
    fs::read_link("/proc/self/ns/pid")
        .is_ok_and(|l| l.to_str() == Some(&format!("pid:[{}]", 0xEFFF_FFFCu32)))
}

/// The processes `pids` and the planned `stressors`, ranked highest points first; and the
/// processes passed over (oom_score_adj -1000, and with `global` the init process).
fn rank(
    pids: &[u32],
    stressors: &[(String, u64, i16)],
    totalpages: u64,
    page: u64,
    global: bool,
) -> (Vec<Ranked>, Vec<String>) {
    let mut ranking = Vec::new();
    let mut exempt = Vec::new();
    for &pid in pids {
        let Some((raw, adj, comm)) = process(pid, page) else {
            continue;
        };
        // is_global_init(): a global OOM never chooses the initial PID namespace's init.
        if adj == -1000 || (global && pid == 1 && in_initial_pid_ns()) {
            exempt.push(format!("{pid} ({comm})"));
            continue;
        }
        ranking.push(Ranked {
            pid: Some(pid),
            comm: Some(comm),
            points: points::badness(raw, adj, totalpages, page),
            oom_score_adj: Some(adj),
            rss_kib: Some(raw.rss_pages.saturating_mul(page) / 1024),
            swap_kib: Some(raw.swap_pages.saturating_mul(page) / 1024),
            pgtables_kib: Some(raw.pgtables_bytes / 1024),
            cgroup_id: None,
            source: Source::Predicted,
            points_from: PointsFrom::Formula,
            formula_points: None,
        });
    }
    for (name, bytes, adj) in stressors {
        // A worker's charge is nearly all resident anonymous memory.
        let raw = RawCounters {
            rss_pages: bytes / page,
            swap_pages: 0,
            pgtables_bytes: 0,
        };
        ranking.push(Ranked {
            pid: None,
            comm: Some(name.clone()),
            points: points::badness(raw, *adj, totalpages, page),
            oom_score_adj: Some(*adj),
            rss_kib: Some(bytes / 1024),
            swap_kib: Some(0),
            pgtables_kib: None,
            cgroup_id: None,
            source: Source::Predicted,
            points_from: PointsFrom::Formula,
            formula_points: None,
        });
    }
    ranking.sort_by_key(|r| std::cmp::Reverse(r.points));
    (ranking, exempt)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A global OOM's candidates are every process of the node: this test's own among them,
    /// the planned stressor too, init never; `totalpages` is RAM + swap.
    #[test]
    fn ranks_every_process_of_the_node() {
        let page = crate::size::page_size();
        let planned = [("memstress-vm".to_owned(), 64 << 20, 0)];
        let p = predict_node(&planned);
        assert_eq!(p.domain, "/");
        let (ram, swap) = points::node_pages(page);
        assert_eq!(p.totalpages, ram + swap);
        let own = std::process::id();
        assert!(
            p.ranking.iter().any(|r| r.pid == Some(own)),
            "this process is no candidate: {:?}",
            p.ranking
        );
        let stressor = p
            .ranking
            .iter()
            .find(|r| r.pid.is_none())
            .expect("the planned stressor");
        assert_eq!(stressor.points, (64 << 20) / page as i64);
        assert_eq!(stressor.source, Source::Predicted);
        assert!(p.ranking.windows(2).all(|w| w[0].points >= w[1].points));
        if in_initial_pid_ns() {
            assert!(p.ranking.iter().all(|r| r.pid != Some(1)));
            assert!(
                p.exempt.iter().any(|e| e.starts_with("1 (")),
                "{:?}",
                p.exempt
            );
        }
    }
}
