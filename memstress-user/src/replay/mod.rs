//! Replay: an incident, from the kernel's own OOM report.
//!
//! Enters: text holding OOM reports (dmesg, `dmesg -T`, `journalctl -k`, /dev/kmsg, or plain
//! lines), which [`parse`] turns into [`parse::Report`]s, or a [`parse::CutShort`] naming what
//! a report lacks. Leaves: one [`ReplayPlan`] per report: every task of its table scored with
//! the kernel's formula ([`crate::explain::points`]), the ranking, and whether the kernel's
//! victim is the formula's first (and, when not, the likely reason). `replay --dry-run` prints
//! the plans; [`reproduce`] turns a plan into a run (a sandbox at the report's limit,
//! `scale`d, with tasks of the table's sizes) and its outcome into a `replay_result`.
//!
//! What the text says, and what it cannot:
//!
//! * each task's `rss`, `swapents` and page tables (`pgtables_bytes`; up to 4.14 `nr_ptes` +
//!   `nr_pmds` pages) and `oom_score_adj` are printed: the formula's base is exact, as of the
//!   dump (the kernel scored the tasks moments before, in `select_bad_process`);
//! * `totalpages` scales `oom_score_adj`. For a memcg OOM it is `mem_cgroup_get_max()`: the
//!   limit (printed) plus, when the node has swap and the memcg's swappiness is not 0, its
//!   swap allowance. Neither the node's swap nor the swappiness is in a memcg report: the
//!   allowance (v1 `memory+swap` limit − `memory` limit, v2 `swap` limit) is counted only when
//!   the report shows swap in use (a task's `swapents`, or swap usage) and is limited;
//!   otherwise `totalpages` is the limit alone, and `totalpages_from` says so. For a global OOM
//!   it is `totalram_pages() + total_swap_pages`: `N pages RAM` − `N pages reserved` (what
//!   `show_mem` prints; the kernel's count of managed pages can differ by a few pages) plus
//!   `Total swap`;
//! * the page size is not printed: it is the victim's `total-vm` (KiB) over its `total_vm`
//!   (pages) when both are there, else 4096;
//! * tasks already exiting, or an OOM victim still being reaped, are skipped or abort the
//!   kernel's scan: the table does not mark them.

pub mod parse;
pub mod reproduce;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use self::parse::{OOM_SCORE_ADJ_MIN, Report, TaskRow};
use crate::explain::{points, record::RawCounters};

/// What `replay --dry-run` prints for one report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReplayPlan {
    /// The report, as parsed.
    pub report: Report,
    /// The page size the figures are read with, in bytes.
    pub page_size: u64,
    /// `totalpages` (what scales `oom_score_adj`).
    pub totalpages: u64,
    /// How `totalpages` was found, and what it leaves out.
    pub totalpages_from: String,
    /// Every task the kernel could pick, best first: the formula's ranking.
    pub ranking: Vec<Ranked>,
    /// Tasks of the table the kernel never picks (`oom_score_adj` -1000).
    pub skipped: Vec<Ranked>,
    /// Whether the kernel's choice (`Kill process` up to 5.0, else the `Killed process`) is the
    /// ranking's first.
    pub agrees: bool,
    /// When it does not agree, the likely reason; `null` when it does.
    pub reason: Option<String>,
    /// The factor a reproduction on this node would scale the limit (and the tasks' sizes)
    /// by: `--scale`, or 1 unless the limit is over a quarter of the node's available memory.
    pub scale: f64,
}

/// A task and its badness points.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Ranked {
    /// Its pid.
    pub pid: u32,
    /// Its command.
    pub comm: String,
    /// `oom_badness()` from its row.
    pub points: i64,
}

/// The page size of a report: the victim's `total-vm` over its row's `total_vm`, when that
/// is a power of two of at least 4 KiB; else 4096.
pub fn page_size(report: &Report) -> u64 {
    report
        .tasks
        .iter()
        .find(|t| t.pid == report.victim.pid && t.total_vm > 0)
        .map(|t| report.victim.total_vm_kib.saturating_mul(1024) / t.total_vm)
        .filter(|p| p.is_power_of_two() && *p >= 4096)
        .unwrap_or(4096)
}

/// `totalpages` of a report, and how it was found.
pub fn totalpages(report: &Report, page: u64) -> (u64, String) {
    let pages = |bytes: u64| bytes / page.max(1);
    if let Some(limit) = report.limit_bytes {
        let limit_pages = pages(limit);
        let swapping = report.tasks.iter().any(|t| t.swapents > 0)
            || report
                .swap
                .as_ref()
                .is_some_and(|s| match s.counter.as_str() {
                    "swap" => s.usage_bytes > 0,
                    _ => s.usage_bytes > report.usage_bytes.unwrap_or(0),
                });
        // The kernel prints PAGE_COUNTER_MAX (no limit) as 9007199254740988kB.
        let limited = |bytes: u64| bytes < (1u64 << 52);
        if let Some(swap) = &report.swap
            && swapping
            && limited(swap.limit_bytes)
        {
            let allowance = match swap.counter.as_str() {
                "swap" => pages(swap.limit_bytes),
                _ => pages(swap.limit_bytes).saturating_sub(limit_pages),
            };
            return (
                limit_pages.saturating_add(allowance),
                format!(
                    "the memcg's limit ({limit_pages} pages) plus its swap allowance \
                     ({allowance} pages, from its `{}` limit; the report shows swap in use, \
                     and the node's swap, which caps it, is not in a memcg report)",
                    swap.counter
                ),
            );
        }
        let why = if swapping {
            "the report shows swap in use, but the swap allowance is unlimited and the node's \
             swap, which then bounds it, is not in a memcg report: oom_score_adj points may \
             be low by adj × swap pages / 1000"
        } else {
            "no swap in use in the report: none is counted (the kernel adds the memcg's swap \
             allowance when the node has swap and its swappiness is not 0; neither is printed)"
        };
        return (
            limit_pages,
            format!("the memcg's limit ({limit_pages} pages); {why}"),
        );
    }
    let node = report.node.as_ref();
    let ram = node.map_or(0, |n| n.ram_pages);
    let reserved = node.and_then(|n| n.reserved_pages).unwrap_or(0);
    let swap = node.and_then(|n| n.swap_total_bytes);
    let swap_pages = swap.map_or(0, pages);
    (
        points::totalpages_global(ram.saturating_sub(reserved), swap_pages),
        format!(
            "the node's RAM ({ram} pages RAM − {reserved} reserved) plus its swap ({}): \
             totalram_pages() + total_swap_pages",
            match swap {
                Some(_) => format!("{swap_pages} pages"),
                None => "no `Total swap` line: 0".to_owned(),
            }
        ),
    )
}

/// The badness of one row.
pub fn row_points(row: &TaskRow, totalpages: u64, page: u64) -> i64 {
    points::badness(row_counters(row, page), row.oom_score_adj, totalpages, page)
}

/// What the formula counts of a row: its rss, swap entries and page tables (4.14's
/// `nr_ptes + nr_pmds` pages where `pgtables_bytes` is not printed).
pub fn row_counters(row: &TaskRow, page: u64) -> RawCounters {
    let pgtables_bytes = row.pgtables_bytes.unwrap_or_else(|| {
        (row.nr_ptes
            .unwrap_or(0)
            .saturating_add(row.nr_pmds.unwrap_or(0)))
        .saturating_mul(page)
    });
    RawCounters {
        rss_pages: row.rss,
        swap_pages: row.swapents,
        pgtables_bytes,
    }
}

/// The plans of every report in `text`; the first report cut short, if any.
pub fn plans(text: &str) -> Result<Vec<ReplayPlan>, parse::CutShort> {
    parse::parse(text)
        .into_iter()
        .map(|r| r.map(plan))
        .collect()
}

/// The plan for one report.
pub fn plan(report: Report) -> ReplayPlan {
    let page = page_size(&report);
    let (totalpages, totalpages_from) = totalpages(&report, page);
    let mut ranking = Vec::new();
    let mut skipped = Vec::new();
    // The table's order is the kernel's scan order; on equal points the kernel keeps the task
    // it met last (`points < chosen_points` skips, equal replaces).
    for row in report.tasks.iter().rev() {
        let ranked = Ranked {
            pid: row.pid,
            comm: row.name.clone(),
            points: row_points(row, totalpages, page),
        };
        if row.oom_score_adj == OOM_SCORE_ADJ_MIN {
            skipped.push(ranked);
        } else {
            ranking.push(ranked);
        }
    }
    ranking.sort_by_key(|r| std::cmp::Reverse(r.points));
    skipped.reverse();
    let chosen = report.chosen.as_ref().map_or(report.victim.pid, |c| c.pid);
    let agrees = ranking.first().is_some_and(|r| r.pid == chosen);
    let reason = (!agrees).then(|| {
        if report.victim.message.contains("oom_kill_allocating_task") {
            "vm.oom_kill_allocating_task is set: the kernel killed the task whose allocation \
             failed, without ranking"
                .to_owned()
        } else {
            disagreement(&ranking, &skipped, chosen, totalpages)
        }
    });
    ReplayPlan {
        report,
        page_size: page,
        totalpages,
        totalpages_from,
        ranking,
        skipped,
        agrees,
        reason,
        scale: 1.0,
    }
}

/// Why the kernel's choice is not the formula's first.
fn disagreement(ranking: &[Ranked], skipped: &[Ranked], chosen: u32, totalpages: u64) -> String {
    let Some(first) = ranking.first() else {
        return "every task of the table has oom_score_adj -1000, which the kernel never \
                picks: the table was taken after the choice changed"
            .to_owned();
    };
    if skipped.iter().any(|s| s.pid == chosen) {
        return format!(
            "the kernel's choice ({chosen}) has oom_score_adj -1000 in the table: its \
             oom_score_adj changed between the kernel's scan and the dump"
        );
    }
    let Some(mine) = ranking.iter().find(|r| r.pid == chosen) else {
        return format!(
            "the kernel's choice ({chosen}) is not in the task table: it was no longer in the \
             OOM domain's tasks when they were dumped (exiting, or moved), or the table is \
             the 4.14 one of a child it sacrificed"
        );
    };
    if mine.points == first.points {
        return format!(
            "a tie: {} and {} both score {} points, and the kernel breaks ties by its scan \
             order (the table's order; this ranking keeps the later task, as current kernels \
             do)",
            first.pid, chosen, first.points
        );
    }
    let gap = first.points.saturating_sub(mine.points);
    if (gap as u64).saturating_mul(100) <= totalpages {
        return format!(
            "{} scores {gap} points (under 1% of totalpages) above the kernel's choice: the \
             rows changed between the kernel's scan and the dump",
            first.pid
        );
    }
    let above: Vec<String> = ranking
        .iter()
        .take_while(|r| r.pid != chosen)
        .map(|r| format!("{} ({})", r.pid, r.comm))
        .collect();
    format!(
        "the tasks ranked above the kernel's choice ({}) were likely already exiting or \
         being reaped as OOM victims, which the kernel skips and the table does not mark",
        above.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::{parse::*, *};

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../tests/data/oom-reports/", $name))
        };
    }

    const REAL: &str = fixture!("v1-6.18-real-dmesg.txt");

    fn one(text: &str) -> Report {
        let mut reports = parse(text);
        assert_eq!(reports.len(), 1, "{reports:?}");
        reports.remove(0).unwrap_or_else(|e| panic!("{e}"))
    }

    fn cut(text: &str) -> CutShort {
        let mut reports = parse(text);
        assert_eq!(reports.len(), 1, "{reports:?}");
        reports.remove(0).expect_err("a report cut short")
    }

    /// (pid, uid, tgid, total_vm, rss, pgtables_bytes, swapents, oom_score_adj, name)
    type Row = (u32, i64, Option<u32>, u64, u64, u64, u64, i16, &'static str);

    fn rows(report: &Report) -> Vec<Row> {
        report
            .tasks
            .iter()
            .map(|t| {
                (
                    t.pid,
                    t.uid,
                    t.tgid,
                    t.total_vm,
                    t.rss,
                    t.pgtables_bytes.unwrap_or(u64::MAX),
                    t.swapents,
                    t.oom_score_adj,
                    &*t.name.clone().leak(),
                )
            })
            .collect()
    }

    fn ranking(plan: &ReplayPlan) -> Vec<(u32, i64)> {
        plan.ranking.iter().map(|r| (r.pid, r.points)).collect()
    }

    /// The report this VM's 6.18 kernel printed (a 32 MiB v1 memcg, `tail /dev/zero`), in
    /// three log formats: the same report each time, and the ranking agrees with the kill.
    #[test]
    fn the_real_sample_in_every_log_format() {
        let dmesg = one(REAL);
        for text in [
            fixture!("v1-6.18-real-dmesg-T.txt"),
            fixture!("v1-6.18-real-journal.txt"),
        ] {
            let other = one(text);
            assert_eq!(
                Report {
                    time: dmesg.time.clone(),
                    ..other
                },
                dmesg
            );
        }
        assert_eq!(dmesg.time.as_deref(), Some("15856.390909"));
        assert_eq!(dmesg.kernel.as_deref(), Some("6.18.44-fc-v669"));
        assert_eq!(dmesg.constraint.as_deref(), Some("CONSTRAINT_MEMCG"));
        assert_eq!(dmesg.oom_memcg.as_deref(), Some("/replay-sample"));
        assert_eq!(dmesg.task_memcg.as_deref(), Some("/replay-sample"));
        assert_eq!(dmesg.limit_bytes, Some(32 << 20));
        assert_eq!(dmesg.usage_bytes, Some(32 << 20));
        assert_eq!(
            dmesg.swap,
            Some(SwapCounter {
                counter: "memory+swap".to_owned(),
                usage_bytes: 32 << 20,
                limit_bytes: 9_007_199_254_740_988 * 1024,
            })
        );
        assert_eq!(
            dmesg.trigger,
            Trigger {
                comm: "tail".to_owned(),
                pid: Some(3910),
                gfp_mask: "0xcc0(GFP_KERNEL)".to_owned(),
                order: 0,
                oom_score_adj: 0,
            }
        );
        assert_eq!(
            rows(&dmesg),
            [
                (3909, 0, Some(3909), 732, 383, 45056, 0, 0, "timeout"),
                (3910, 0, Some(3910), 8801, 8464, 106_496, 0, 0, "tail"),
            ]
        );
        let tail = &dmesg.tasks[1];
        assert_eq!(
            (tail.rss_anon, tail.rss_file, tail.rss_shmem),
            (Some(8096), Some(368), Some(0))
        );
        assert_eq!(
            dmesg.victim,
            Victim {
                pid: 3910,
                comm: "tail".to_owned(),
                message: "Memory cgroup out of memory".to_owned(),
                total_vm_kib: 35204,
                anon_rss_kib: 32384,
                file_rss_kib: 1472,
                shmem_rss_kib: 0,
                uid: Some(0),
                pgtables_kib: Some(104),
                oom_score_adj: Some(0),
            }
        );
        let plan = plan(dmesg);
        assert_eq!(plan.page_size, 4096);
        assert_eq!(plan.totalpages, 8192);
        // tail: 8464 rss + 106496 / 4096 page-table pages.
        assert_eq!(ranking(&plan), [(3910, 8464 + 26), (3909, 383 + 11)]);
        assert!(plan.agrees);
        assert_eq!(plan.reason, None);
        assert_eq!(plan.scale, 1.0);
    }

    #[test]
    fn a_v2_report_with_printk_caller_ids() {
        let r = one(fixture!("v2-6.6-caller.txt"));
        let pod = "/kubepods.slice/kubepods-burstable.slice/\
                   kubepods-burstable-pod7c9e6679_7425_40de_944b_e07fc1f90ae7.slice/\
                   cri-containerd-4f1c2a7b.scope";
        assert_eq!(r.oom_memcg.as_deref(), Some(pod));
        assert_eq!(r.task_memcg.as_deref(), Some(pod));
        assert_eq!(r.limit_bytes, Some(256 << 20));
        assert_eq!(r.swap.as_ref().map(|s| s.counter.as_str()), Some("swap"));
        assert_eq!(r.trigger.oom_score_adj, 936);
        assert_eq!(
            rows(&r),
            [
                (2190, 65535, Some(2190), 255, 1, 28672, 0, -998, "pause"),
                (
                    2217,
                    1000,
                    Some(2217),
                    900_000,
                    64000,
                    819_200,
                    0,
                    936,
                    "java"
                ),
                (2301, 1000, Some(2301), 4000, 500, 57344, 0, 936, "sh"),
            ]
        );
        let plan = plan(r);
        assert_eq!(plan.totalpages, 65536);
        // 936 × (65536 / 1000) = 936 × 65 = 60840.
        assert_eq!(
            ranking(&plan),
            [
                (2217, 64200 + 60840),
                (2301, 514 + 60840),
                (2190, 8 - 998 * 65)
            ]
        );
        assert!(plan.agrees);
    }

    /// Swap in use and a limited swap.max: the allowance counts in totalpages; a comm with
    /// a space is read whole.
    #[test]
    fn real_v2_reports_of_the_lab_kernels() {
        // 6.12: rss split into rss_anon/rss_file/rss_shmem (the lab's executables are on
        // its initramfs, so their pages are shmem).
        let r = one(fixture!("v2-6.12-real-lab-dmesg.txt"));
        assert_eq!(r.kernel.as_deref(), Some("6.12.117+deb12-cloud-amd64"));
        assert_eq!(r.constraint.as_deref(), Some("CONSTRAINT_MEMCG"));
        assert_eq!(r.oom_memcg.as_deref(), Some("/lab/replay"));
        assert_eq!(r.limit_bytes, Some(48 << 20));
        assert_eq!(r.usage_bytes, Some(48 << 20));
        assert_eq!(r.trigger.comm, "memstress-vm");
        assert_eq!(r.trigger.pid, Some(181));
        assert_eq!(
            rows(&r),
            [
                (167, 0, Some(167), 9062, 6994, 102_400, 0, 0, "hog"),
                (170, 0, Some(170), 5990, 3900, 77824, 0, 800, "batch"),
                (173, 0, Some(173), 3942, 1889, 69632, 0, 300, "side"),
                (
                    181,
                    65534,
                    Some(181),
                    6364,
                    2290,
                    77824,
                    0,
                    0,
                    "memstress-vm"
                ),
            ]
        );
        assert_eq!(r.tasks[1].rss_shmem, Some(732));
        assert_eq!((r.victim.pid, r.victim.shmem_rss_kib), (170, 2928));
        let p = plan(r);
        assert!(p.agrees);
        // batch: 3900 + 77824 / 4096 + 800 × 12 (totalpages 12288 / 1000, rounded down).
        assert_eq!(ranking(&p)[0], (170, 3900 + 19 + 800 * 12));
        // 6.1: no split columns; memory.stat is one multi-line message.
        let r = one(fixture!("v2-6.1-real-lab-dmesg.txt"));
        assert_eq!(r.kernel.as_deref(), Some("6.1.0-57-cloud-amd64"));
        assert_eq!(r.limit_bytes, Some(48 << 20));
        assert_eq!(
            rows(&r),
            [
                (111, 0, Some(111), 9062, 6922, 110_592, 0, 0, "hog"),
                (114, 0, Some(114), 5990, 3797, 86016, 0, 800, "batch"),
                (117, 0, Some(117), 3942, 1766, 61440, 0, 300, "side"),
                (
                    125,
                    65534,
                    Some(125),
                    6369,
                    2270,
                    73728,
                    0,
                    0,
                    "memstress-vm"
                ),
            ]
        );
        assert_eq!(r.tasks[0].rss_anon, None);
        let p = plan(r);
        assert!(p.agrees);
        assert_eq!(ranking(&p)[0], (114, 3797 + 21 + 800 * 12));
    }

    #[test]
    fn a_v2_report_with_swap() {
        let r = one(fixture!("v2-5.10-swap-dmesg.txt"));
        assert_eq!(r.kernel.as_deref(), Some("5.10.0-23-amd64"));
        assert_eq!(r.limit_bytes, Some(128 << 20));
        assert_eq!(
            rows(&r),
            [
                (4300, 0, Some(4300), 5000, 900, 69632, 0, 0, "batch-runner"),
                (
                    4321,
                    0,
                    Some(4321),
                    60000,
                    31500,
                    344_064,
                    16384,
                    500,
                    "python3"
                ),
                (
                    4322,
                    0,
                    Some(4322),
                    60000,
                    40000,
                    344_064,
                    0,
                    0,
                    "python3 worker"
                ),
            ]
        );
        let plan = plan(r);
        assert_eq!(plan.totalpages, 32768 + 16384);
        assert!(
            plan.totalpages_from.contains("swap allowance"),
            "{}",
            plan.totalpages_from
        );
        assert_eq!(
            ranking(&plan),
            [
                (4321, 31500 + 16384 + 84 + 500 * 49),
                (4322, 40084),
                (4300, 917)
            ]
        );
        assert!(plan.agrees);
    }

    /// A 5.4 report in kern.log (syslog prefix, then dmesg's timestamp) whose victim is not
    /// the formula's first: the reason is named.
    #[test]
    fn a_victim_the_formula_does_not_rank_first() {
        let r = one(fixture!("v1-5.4-syslog.txt"));
        assert_eq!(r.kernel.as_deref(), Some("5.4.0-150-generic"));
        assert_eq!(r.oom_memcg.as_deref(), Some("/workers"));
        assert_eq!(r.limit_bytes, Some(200 << 20));
        assert_eq!(
            rows(&r),
            [
                (5100, 0, Some(5100), 4000, 700, 57344, 0, 0, "supervisor"),
                (5101, 0, Some(5101), 40000, 30000, 282_624, 0, 0, "worker"),
                (5102, 0, Some(5102), 30000, 20000, 208_896, 0, 0, "worker"),
            ]
        );
        let plan = plan(r);
        assert_eq!(ranking(&plan), [(5101, 30069), (5102, 20051), (5100, 714)]);
        assert!(!plan.agrees);
        let reason = plan.reason.unwrap();
        assert!(
            reason.contains("5101 (worker)") && reason.contains("exiting"),
            "{reason}"
        );
        // The same kill under vm.oom_kill_allocating_task: no ranking at all.
        let allocating = fixture!("v1-5.4-syslog.txt").replace(
            "Memory cgroup out of memory: Killed",
            "Out of memory (oom_kill_allocating_task): Killed",
        );
        let plan = super::plan(one(&allocating));
        assert!(
            plan.reason
                .unwrap()
                .starts_with("vm.oom_kill_allocating_task")
        );
    }

    /// 4.19: `Kill process … or sacrifice child` names the choice; `oom-kill:` the domain.
    #[test]
    fn a_4_19_report() {
        let r = one(fixture!("v1-4.19-dmesg-T.txt"));
        assert_eq!(r.time.as_deref(), Some("Tue Mar  5 10:12:01 2024"));
        assert_eq!(
            r.oom_memcg.as_deref(),
            Some("/kubepods/burstable/pod7c9e6679-7425-40de-944b-e07fc1f90ae7")
        );
        assert_eq!(
            r.task_memcg.as_deref(),
            Some("/kubepods/burstable/pod7c9e6679-7425-40de-944b-e07fc1f90ae7/4f1c2a7b")
        );
        assert_eq!(
            r.chosen,
            Some(Chosen {
                pid: 30112,
                comm: "java".to_owned(),
                score: 1952
            })
        );
        assert_eq!(r.victim.message, "");
        assert_eq!(r.victim.uid, None);
        assert_eq!(
            rows(&r),
            [
                (29870, 0, Some(29870), 256, 1, 28672, 0, -998, "pause"),
                (30101, 1000, Some(30101), 1100, 180, 45056, 0, 968, "sh"),
                (
                    30112,
                    1000,
                    Some(30112),
                    950_000,
                    128_700,
                    1_515_520,
                    0,
                    968,
                    "java"
                ),
            ]
        );
        let plan = plan(r);
        assert_eq!(plan.totalpages, 131_072);
        assert_eq!(plan.ranking[0].points, 128_700 + 370 + 968 * 131);
        // The kernel's own score of those kernels: points × 1000 / totalpages.
        assert_eq!(plan.ranking[0].points * 1000 / 131_072, 1952);
        assert!(plan.agrees);
    }

    /// 4.14: `nr_ptes nr_pmds` (pages), no `oom-kill:` line, `Task in … limit of …`.
    #[test]
    fn a_4_14_report() {
        let r = one(fixture!("v1-4.14-dmesg.txt"));
        assert_eq!(r.constraint, None);
        assert_eq!(r.oom_memcg.as_deref(), Some("/memory-limit"));
        assert_eq!(r.task_memcg.as_deref(), Some("/memory-limit"));
        assert_eq!(r.limit_bytes, Some(100 << 20));
        assert_eq!(r.trigger.gfp_mask, "0x14000c0(GFP_KERNEL)");
        let t: Vec<_> = r
            .tasks
            .iter()
            .map(|t| {
                (
                    t.pid,
                    t.total_vm,
                    t.rss,
                    t.nr_ptes,
                    t.nr_pmds,
                    t.pgtables_bytes,
                    &*t.name,
                )
            })
            .collect();
        assert_eq!(
            t,
            [
                (24386, 1870, 210, Some(9), Some(3), None, "stress"),
                (24387, 129_871, 25609, Some(59), Some(3), None, "stress"),
            ]
        );
        let plan = plan(r);
        assert_eq!(plan.totalpages, 25600);
        assert_eq!(ranking(&plan), [(24387, 25609 + 62), (24386, 222)]);
        assert!(plan.agrees);
    }

    #[test]
    fn a_global_oom() {
        let r = one(fixture!("global-5.10-journal.txt"));
        assert_eq!(r.constraint.as_deref(), Some("CONSTRAINT_NONE"));
        assert_eq!(r.oom_memcg, None);
        assert_eq!(r.task_memcg.as_deref(), Some("/system.slice/nginx.service"));
        assert_eq!((r.limit_bytes, r.usage_bytes), (None, None));
        assert_eq!(
            r.node,
            Some(NodeMemory {
                ram_pages: 524_158,
                reserved_pages: Some(14158),
                swap_total_bytes: Some(0),
            })
        );
        assert_eq!(r.victim.message, "Out of memory");
        let plan = plan(r);
        assert_eq!(plan.totalpages, 510_000);
        assert_eq!(
            ranking(&plan),
            [(812, 400_920), (640, 80220), (245, 627 - 250 * 510)]
        );
        assert_eq!(plan.skipped.len(), 1);
        assert_eq!(plan.skipped[0].pid, 270);
        assert!(plan.agrees);
    }

    /// Every way a report can be cut short is refused, with the part named.
    #[test]
    fn truncated_reports_name_what_is_missing() {
        let lines: Vec<&str> = REAL.lines().collect();
        let upto = |needle: &str| -> String {
            let n = lines.iter().position(|l| l.contains(needle)).unwrap();
            lines[..n].join("\n")
        };
        let without = |needle: &str| -> String {
            lines
                .iter()
                .filter(|l| !l.contains(needle))
                .copied()
                .collect::<Vec<_>>()
                .join("\n")
        };
        let e = cut(&upto("Tasks state"));
        assert!(e.missing.starts_with("no task table"), "{e}");
        assert_eq!(e.line, 1);
        assert!(e.to_string().contains("`tail invoked oom-killer`"), "{e}");
        let e = cut(&upto("] oom-kill:"));
        assert!(e.missing.starts_with("no `Killed process` line"), "{e}");
        let e = cut(&upto("[   3909]"));
        assert_eq!(e.missing, "its task table has no rows");
        let e = cut(&without("memory: usage"));
        assert!(e.missing.contains("limit"), "{e}");
        // A row cut mid-way, and a Killed process line cut mid-way.
        let row = REAL.replace(
            "[   3910]     0  3910     8801     8464     8096      368         0   106496        0             0 tail",
            "[   3910]     0  3910     8801     8464",
        );
        let e = cut(&row);
        assert!(
            e.missing
                .starts_with("row 2 of its task table is truncated"),
            "{e}"
        );
        let killed = REAL.replace(
            ", shmem-rss:0kB, UID:0 pgtables:104kB oom_score_adj:0",
            ", shm",
        );
        let e = cut(&killed);
        assert!(
            e.missing.contains("`Killed process` line is truncated"),
            "{e}"
        );
        let header = REAL.replace("swapents oom_score_adj name", "swapents oom_sc");
        // A header cut before `name` is no header: the table is missing.
        assert!(cut(&header).missing.starts_with("no task table"));
        let header = REAL.replace(" swapents oom_score_adj name", " name");
        assert!(cut(&header).missing.contains("no `swapents` column"));
        let trigger = REAL.replace(", order=0, oom_score_adj=0", ", ord");
        let e = cut(&trigger);
        assert!(e.missing.contains("no order="), "{e}");
        // The kernel found nothing to kill.
        let none = REAL.replace(
            "[15856.391087] oom-kill:",
            "[15856.391087] Out of memory and no killable processes...\n[15856.391088] oom-kill:",
        );
        assert!(cut(&none).missing.contains("no killable process"));
        // A global report without the node's RAM.
        let global = fixture!("global-5.10-journal.txt").replace("524158 pages RAM", "");
        let e = cut(&global);
        assert!(e.missing.contains("pages RAM"), "{e}");
    }

    /// Two reports in one log, and text around them: each is found; a second trigger before
    /// the first's kill cuts the first short.
    #[test]
    fn finds_every_report() {
        let text = format!(
            "unrelated line\n{REAL}\nsomething else\n{}",
            fixture!("global-5.10-journal.txt")
        );
        let reports = parse(&text);
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[0].as_ref().unwrap().line, 2);
        assert_eq!(reports[1].as_ref().unwrap().victim.pid, 812);
        let interrupted = format!(
            "{}\n{REAL}",
            REAL.lines().take(70).collect::<Vec<_>>().join("\n")
        );
        let reports = parse(&interrupted);
        assert!(reports[0].is_err() && reports[1].is_ok(), "{reports:?}");
        assert!(plans(&interrupted).is_err());
        assert!(parse("no report here\n").is_empty());
    }

    #[test]
    fn strips_every_log_prefix() {
        for (line, time) in [
            ("[15856.390909] x", Some("15856.390909")),
            (
                "[Mon Nov 30 03:57:24 2026] x",
                Some("Mon Nov 30 03:57:24 2026"),
            ),
            ("Nov 30 03:02:48 host kernel: x", Some("Nov 30 03:02:48")),
            (
                "2026-11-30T03:02:48+0000 host kernel: x",
                Some("2026-11-30T03:02:48+0000"),
            ),
            ("[  931.112233][ T2217] x", Some("931.112233")),
            ("6,1234,15856390909,-;x", Some("15856390909")),
            ("x", None),
        ] {
            assert_eq!(strip_prefix(line), (time, "x"), "{line}");
        }
        // A table row keeps its pid.
        assert_eq!(strip_prefix("[   3909]  0").1, "[   3909]  0");
    }

    /// Equal points: the later row of the table first, as the kernel's scan keeps it.
    #[test]
    fn ties_follow_the_scan_order() {
        let tie = REAL.replace(
            "[   3909]     0  3909      732      383        0      383         0    45056",
            "[   3909]     0  3909     8801     8464     8096      368         0   106496",
        );
        let plan = plan(one(&tie));
        assert_eq!(ranking(&plan), [(3910, 8490), (3909, 8490)]);
        assert!(plan.agrees);
        let swapped = tie.replace("pid=3910", "pid=3909").replace(
            "Killed process 3910 (tail)",
            "Killed process 3909 (timeout)",
        );
        let plan = super::plan(one(&swapped));
        assert!(!plan.agrees);
        assert!(plan.reason.unwrap().starts_with("a tie"));
    }
}

#[cfg(test)]
mod robustness {
    use super::parse::parse;

    /// Every prefix of every fixture (a log cut anywhere, mid-line included) parses and plans
    /// without a panic: a report is whole or names what it lacks.
    #[test]
    fn any_cut_of_any_fixture() {
        for text in [
            include_str!("../../tests/data/oom-reports/v1-6.18-real-dmesg.txt"),
            include_str!("../../tests/data/oom-reports/v1-4.14-dmesg.txt"),
            include_str!("../../tests/data/oom-reports/v1-4.19-dmesg-T.txt"),
            include_str!("../../tests/data/oom-reports/global-5.10-journal.txt"),
            include_str!("../../tests/data/oom-reports/v2-6.6-caller.txt"),
        ] {
            // The end of the `Killed process` line: only a cut in its last figure (the
            // victim's oom_score_adj, 3 digits at most here) can pass for a whole report.
            let killed = text.find("Killed process ").unwrap();
            let whole = killed + text[killed..].find('\n').unwrap() - 3;
            for end in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
                for report in parse(&text[..end]) {
                    match report {
                        Ok(r) => {
                            assert!(
                                end >= whole,
                                "whole at {end}, before {whole}: {:?}",
                                &text[..end]
                            );
                            let plan = super::plan(r);
                            assert_eq!(plan.agrees, plan.reason.is_none());
                        }
                        Err(e) => assert!(!e.missing.is_empty()),
                    }
                }
            }
        }
    }
}
