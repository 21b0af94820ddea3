//! The reproduction of one OOM report: what `replay` (without `--dry-run`) runs, and how it
//! reads the outcome.
//!
//! Enters: a [`ReplayPlan`] and the machine's means ([`Means`]: its page size, available
//! memory, whether oom_score_adj may go below 0). Leaves: a [`Setup`] (a `run` of the
//! engine: a sandbox cgroup at the report's limit, scaled, one app per task that matters,
//! each holding the task's badness in bytes with its oom_score_adj, then one allocation that
//! ends in the OOM) and, from how that run ended, a [`ReplayResult`].
//!
//! What is kept, and what cannot be:
//!
//! * **The points.** A task is replayed by a process whose RSS is the row's `rss + swapents`
//!   plus its page tables, in bytes, times the scale: what the kernel's formula counts. The
//!   memory is anonymous whatever the row's split (file pages could be reclaimed mid-replay,
//!   and this machine may have no swap); the victim's anon/file/shmem split from its
//!   `Killed process` line is stated in the notes. Every process also maps memstress's own
//!   executable: its few hundred pages of file RSS are added to every task alike, which keeps
//!   the order.
//! * **The scale.** Sizes and the limit shrink by the same factor, so every task's points
//!   (its size, and `oom_score_adj × totalpages / 1000`) shrink by it too: the ranking is
//!   the report's.
//! * **oom_score_adj.** Values below 0 need `CAP_SYS_RESOURCE`. Without it every task's value
//!   is raised by the same offset (what it adds to each task's points is then the same), and
//!   the result says so. Rows at -1000 are never candidates: they are not replayed as tasks.
//! * **The rest.** Rows that are not replayed, the memcg's memory outside any task (page
//!   cache, kernel memory) and the trigger's allocation are one process writing shmem into a
//!   memfd it never maps: charged to the sandbox, in no process's RSS, so it is no candidate
//!   (and at oom_score_adj -1000 where allowed). It grows until the OOM comes.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    ReplayPlan,
    parse::{OOM_SCORE_ADJ_MIN, TaskRow},
};
use crate::{
    explain::{Explained, points, record::RawCounters},
    probe,
    size::{Bytes, SizeSpec},
    spec::Kind,
    stress::{Amount, App, Options, stressor::KERNEL_OVERHEAD},
    target,
};

/// The most tasks replayed one process each by default; the rest join the filler.
pub const DEFAULT_TASKS: usize = 8;

/// The share of the node's available memory a default scale keeps the replay's limit under.
const DEFAULT_SHARE: f64 = 0.25;

/// The most of the node's available memory a `--scale` may ask for.
const MAX_SHARE: f64 = 0.5;

/// What the machine offers a reproduction.
#[derive(Clone, Copy, Debug)]
pub struct Means {
    /// Its page size.
    pub page: u64,
    /// MemAvailable, in bytes.
    pub available: u64,
    /// Whether oom_score_adj can be set below 0 (`CAP_SYS_RESOURCE`).
    pub can_lower_adj: bool,
    /// What one replay process holds of its own (runtime, page tables, kernel stack).
    pub footprint: u64,
    /// What one replay process maps of memstress's executable: in its RSS (its points), not
    /// in its charge.
    pub file_rss: u64,
}

/// What the user asked of the reproduction.
#[derive(Clone, Debug)]
pub struct Asked {
    /// `--scale`; `None`: what fits comfortably.
    pub scale: Option<f64>,
    /// `--tasks`: the most tasks replayed one process each.
    pub tasks: usize,
    /// `--timeout`.
    pub timeout: Duration,
}

/// A reproduction, ready to run.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The run.
    pub opts: Options,
    /// The replayed tasks, in the order of `opts.apps`.
    pub tasks: Vec<TaskSetup>,
    /// The scale.
    pub scale: f64,
    /// The sandbox's limit.
    pub limit_bytes: u64,
    /// `totalpages` of the sandbox (its limit, in pages: no swap is counted).
    pub totalpages: u64,
    /// What was added to every oom_score_adj (0 when none was needed).
    pub adj_offset: i16,
    /// The kernel's victim in the report.
    pub expected: Who,
    /// What the reproduction changes, and why.
    pub notes: Vec<String>,
}

/// One replayed task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskSetup {
    /// Its pid in the report.
    pub row_pid: u32,
    /// Its name in the report.
    pub comm: String,
    /// Its pid here (`null` before it started).
    pub pid: Option<u32>,
    /// What it holds here (its charge: RSS, page tables, kernel stack).
    pub bytes: u64,
    /// Its oom_score_adj here (the report's plus `adj_offset`).
    pub oom_score_adj: i16,
    /// Its points here as the formula gives them from `bytes` (the report's, scaled).
    pub expected_points: i64,
    /// Its points as the kernel scored them in the reproduction's OOM (`null`: not among the
    /// candidates reported).
    pub kernel_points: Option<i64>,
}

/// A task, by pid and name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Who {
    /// Its pid.
    pub pid: u32,
    /// Its name.
    pub comm: String,
}

/// What the replay's process the kernel chose stood for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChosenRole {
    /// A replayed task (`row_pid` is its row).
    Task,
    /// The filler that makes the allocation.
    Allocation,
    /// A process that is not the replay's.
    Outside,
}

/// The process the kernel chose in the reproduction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Chosen {
    /// Its pid here.
    pub pid: u32,
    /// Its comm.
    pub comm: String,
    /// Its points, as the kernel (or the formula on what it read) scored them.
    pub points: Option<i64>,
    /// The report's row it stands for (`null` unless a task).
    pub row_pid: Option<u32>,
    /// What it was.
    pub role: ChosenRole,
}

/// `replay`: one report reproduced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReplayResult {
    /// The report's number in the input (1-based).
    pub report: usize,
    /// The input line its `invoked oom-killer` is on (1-based).
    pub line: usize,
    /// Whether the kernel chose the process standing for the report's victim.
    pub same_victim: bool,
    /// The report's victim.
    pub expected: Who,
    /// What the kernel chose here (`null`: no OOM kill came).
    pub chosen: Option<Chosen>,
    /// The factor sizes and the limit were scaled by.
    pub scale: f64,
    /// The sandbox's limit.
    pub limit_bytes: u64,
    /// What was added to every oom_score_adj (without `CAP_SYS_RESOURCE`).
    pub adj_offset: i16,
    /// The replayed tasks.
    pub tasks: Vec<TaskSetup>,
    /// When the victim differs (or no kill came), why.
    pub reason: Option<String>,
    /// What the reproduction changed, and why.
    pub notes: Vec<String>,
}

/// Why a report cannot be reproduced.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unreplayable {
    /// No limit and no node memory.
    #[error(
        "report {0} (line {1}) has neither a memcg limit (`memory: usage … limit …`) nor the \
         node's memory (`N pages RAM`): there is no size to replay"
    )]
    NoSize(usize, usize),
    /// A scale that is not a positive number.
    #[error("--scale {0}: give a factor above 0 (e.g. 0.5)")]
    BadScale(f64),
    /// Too big for this node.
    #[error(
        "report {report}: its limit {limit} scaled by {scale} is {scaled}, more than half of \
         this node's available memory ({available}); give a smaller --scale"
    )]
    TooBig {
        /// The report's number.
        report: usize,
        /// Its limit.
        limit: Bytes,
        /// The scale.
        scale: f64,
        /// The limit scaled.
        scaled: Bytes,
        /// MemAvailable.
        available: Bytes,
    },
    /// The only candidates are at -1000.
    #[error("report {0}: every task has oom_score_adj -1000: the kernel could choose none")]
    NoCandidate(usize),
}

/// The badness base of a row (rss, swap, page tables), in the report's pages: its points
/// without oom_score_adj.
fn base_pages(row: &TaskRow, page: u64) -> u64 {
    u64::try_from(points::badness(super::row_counters(row, page), 0, 0, page)).unwrap_or(0)
}

/// The scale that keeps the limit under a quarter of what the node has available, at most
/// 1, rounded down to two significant digits.
pub fn default_scale(limit: u64, available: u64) -> f64 {
    let fit = available as f64 * DEFAULT_SHARE / limit.max(1) as f64;
    if fit >= 1.0 {
        return 1.0;
    }
    let digits = 10f64.powf(fit.log10().floor() - 1.0);
    ((fit / digits).floor() * digits).max(f64::MIN_POSITIVE)
}

fn round_up(bytes: u64, page: u64) -> u64 {
    bytes.div_ceil(page.max(1)) * page.max(1)
}

/// The limit a reproduction of `plan` scales: the memcg's, or for a global OOM the node's
/// memory (RAM − reserved).
pub fn limit_of(plan: &ReplayPlan) -> Option<u64> {
    let report = &plan.report;
    match (report.limit_bytes, &report.node) {
        (Some(limit), _) => Some(limit),
        (None, Some(node)) => Some(
            node.ram_pages
                .saturating_sub(node.reserved_pages.unwrap_or(0))
                .saturating_mul(plan.page_size),
        ),
        (None, None) => None,
    }
}

/// The rows replayed one process each, best first: the formula's first `most` that the
/// kernel could pick (not at -1000), and the kernel's choice wherever it ranks; `None`
/// when no row could be picked.
fn pick(plan: &ReplayPlan, most: usize, chosen_pid: u32) -> Option<Vec<&TaskRow>> {
    let rows: Vec<&TaskRow> = plan
        .report
        .tasks
        .iter()
        .filter(|r| r.oom_score_adj != OOM_SCORE_ADJ_MIN)
        .collect();
    if rows.is_empty() {
        return None;
    }
    let mut picked: Vec<&TaskRow> = Vec::new();
    for ranked in &plan.ranking {
        let in_top = picked.len() < most;
        if (in_top || ranked.pid == chosen_pid)
            && let Some(row) = rows.iter().find(|r| r.pid == ranked.pid)
            && !picked.iter().any(|p| p.pid == row.pid)
        {
            picked.push(row);
        }
    }
    Some(picked)
}

/// What every replayed task's oom_score_adj is raised by: without `CAP_SYS_RESOURCE` none
/// can go below 0, and a common offset keeps their order (notes say so, and name any raised
/// past 1000, where the kernel's range ends).
fn adj_offset(picked: &[&TaskRow], can_lower: bool, notes: &mut Vec<String>) -> i16 {
    let min_adj = picked.iter().map(|r| r.oom_score_adj).min().unwrap_or(0);
    let offset = if min_adj < 0 && !can_lower {
        -min_adj
    } else {
        0
    };
    if offset > 0 {
        notes.push(format!(
            "oom_score_adj below 0 needs CAP_SYS_RESOURCE, which this process lacks: every \
             task's oom_score_adj is raised by {offset}, which adds the same points to each \
             and keeps their order"
        ));
    }
    let clamped: Vec<String> = picked
        .iter()
        .filter(|r| r.oom_score_adj.saturating_add(offset) > 1000)
        .map(|r| format!("{} ({})", r.pid, r.name))
        .collect();
    if !clamped.is_empty() {
        notes.push(format!(
            "raised past 1000, the oom_score_adj of {} is 1000: their order among themselves \
             may change",
            clamped.join(", ")
        ));
    }
    offset
}

/// The run: a sandbox at `limit_bytes`, the tasks as its apps (first, each at its size),
/// then the filler: shmem written into a memfd it never maps, so that it is in no RSS and
/// no candidate, growing until the OOM; the first kill ends it.
fn run_options(
    n: usize,
    limit_bytes: u64,
    tasks: &[TaskSetup],
    means: Means,
    asked: &Asked,
    probe: probe::Options,
) -> Options {
    let target = target::Spec::New {
        name: format!("memstress-replay-{}-{n}", std::process::id()),
        limit: limit_bytes,
    };
    let mut opts = Options::new(
        target,
        Amount::Size(SizeSpec::Bytes(limit_bytes.saturating_mul(2))),
        probe,
    );
    opts.amount_given = Some(format!("the limit twice over ({})", Bytes(limit_bytes * 2)));
    opts.kind = Kind::Shmem;
    opts.unmapped = true;
    opts.apps_first = true;
    opts.oom_score_adj = Some(if means.can_lower_adj {
        i32::from(OOM_SCORE_ADJ_MIN)
    } else {
        0
    });
    opts.apps = tasks
        .iter()
        .map(|t| App {
            name: t.comm.clone(),
            bytes: t.bytes,
            oom_score_adj: Some(i32::from(t.oom_score_adj)),
        })
        .collect();
    opts.stop_after_kills = Some(1);
    opts.deadline = Some(asked.timeout);
    opts.footprint = Some(means.footprint);
    opts
}

/// The reproduction of `plan`, report number `n`.
pub fn setup(
    n: usize,
    plan: &ReplayPlan,
    asked: &Asked,
    means: Means,
    probe: probe::Options,
) -> Result<Setup, Unreplayable> {
    let report = &plan.report;
    let rpage = plan.page_size;
    let global = report.limit_bytes.is_none();
    let limit = limit_of(plan).ok_or(Unreplayable::NoSize(n, report.line))?;
    let scale = match asked.scale {
        Some(s) if !(s > 0.0 && s.is_finite()) => return Err(Unreplayable::BadScale(s)),
        Some(s) => s,
        None => default_scale(limit, means.available),
    };
    let scaled = |bytes: u64| round_up((bytes as f64 * scale).round() as u64, means.page);
    let mut limit_bytes = scaled(limit).max(target::MIN_LIMIT);
    if limit_bytes as f64 > means.available as f64 * MAX_SHARE {
        return Err(Unreplayable::TooBig {
            report: n,
            limit: Bytes(limit),
            scale,
            scaled: Bytes(limit_bytes),
            available: Bytes(means.available),
        });
    }
    let mut notes = Vec::new();
    if global {
        notes.push(format!(
            "a global OOM, replayed in a memcg the size of that node's memory ({}) scaled",
            Bytes(limit)
        ));
    }
    if let Some(c) = report
        .constraint
        .as_deref()
        .filter(|c| *c == "CONSTRAINT_CPUSET" || *c == "CONSTRAINT_MEMORY_POLICY")
    {
        notes.push(format!(
            "the report's constraint is {c}: the replay is a memcg OOM among the same tasks"
        ));
    }
    // The tasks that matter: the formula's first `tasks`, and the kernel's choice.
    let chosen_pid = report.chosen.as_ref().map_or(report.victim.pid, |c| c.pid);
    let picked = pick(plan, asked.tasks.max(1), chosen_pid).ok_or(Unreplayable::NoCandidate(n))?;
    let left = report.tasks.len() - picked.len();
    if left > 0 {
        notes.push(format!(
            "{left} task(s) of the table are not replayed one by one (below the first {} by \
             points, or at oom_score_adj -1000): their memory is in the filler, which is no \
             candidate",
            asked.tasks.max(1)
        ));
    }
    let adj_offset = adj_offset(&picked, means.can_lower_adj, &mut notes);
    // A process cannot hold less than its own footprint. What it holds is its charge
    // (anonymous RSS, page tables, kernel stack); its points also count the executable's
    // pages it maps, which are charged elsewhere: the charge is the row's size less those.
    let least = round_up(means.footprint, means.page) + means.page;
    let charge_for = |row: &TaskRow| {
        let points_bytes = scaled(base_pages(row, rpage).saturating_mul(rpage));
        round_up(
            (points_bytes + KERNEL_OVERHEAD).saturating_sub(means.file_rss),
            means.page,
        )
    };
    let mut tasks: Vec<TaskSetup> = picked
        .iter()
        .map(|row| TaskSetup {
            row_pid: row.pid,
            comm: comm_of(&row.name),
            pid: None,
            bytes: charge_for(row).max(least),
            oom_score_adj: row.oom_score_adj.saturating_add(adj_offset).min(1000),
            expected_points: 0,
            kernel_points: None,
        })
        .collect();
    let floored: Vec<String> = picked
        .iter()
        .filter(|row| charge_for(row) < least)
        .map(|row| format!("{} ({})", row.pid, row.name))
        .collect();
    if !floored.is_empty() {
        notes.push(format!(
            "{} hold(s) {} here (and map {} of memstress), a process's smallest size, which \
             is more than the report's size scaled: a larger --scale keeps them apart",
            floored.join(", "),
            Bytes(least),
            Bytes(means.file_rss)
        ));
    }
    // The tasks must fit below the limit with room for the filler's own footprint.
    let held: u64 = tasks.iter().map(|t| t.bytes).sum();
    let room = held + least + (1 << 20);
    if room > limit_bytes {
        notes.push(format!(
            "the replayed tasks hold {}, which with a filler does not fit under the limit \
             scaled ({}): the rows' RSS counts pages charged to other cgroups (executables, \
             shared files) and their swap, both held here as the tasks' own memory; the \
             limit is raised to {}, which raises what oom_score_adj adds alike for all",
            Bytes(held),
            Bytes(limit_bytes),
            Bytes(round_up(room, means.page))
        ));
        limit_bytes = round_up(room, means.page);
    }
    let totalpages = limit_bytes / means.page.max(1);
    for t in &mut tasks {
        let raw = RawCounters {
            rss_pages: (t.bytes + means.file_rss).saturating_sub(KERNEL_OVERHEAD)
                / means.page.max(1),
            swap_pages: 0,
            pgtables_bytes: 0,
        };
        t.expected_points = points::badness(raw, t.oom_score_adj, totalpages, means.page);
    }
    let victim = &report.victim;
    if victim.file_rss_kib > 0 || victim.shmem_rss_kib > 0 {
        notes.push(format!(
            "the victim's rss was anon {} KiB, file {} KiB, shmem {} KiB; it is held as \
             anonymous memory (the points count all three alike, and page cache could be \
             reclaimed mid-replay)",
            victim.anon_rss_kib, victim.file_rss_kib, victim.shmem_rss_kib
        ));
    }
    if report.trigger.order > 0 {
        notes.push(format!(
            "the trigger asked for order {} pages; the replay's allocation is of single pages",
            report.trigger.order
        ));
    }
    let opts = run_options(n, limit_bytes, &tasks, means, asked, probe);
    Ok(Setup {
        opts,
        tasks,
        scale,
        limit_bytes,
        totalpages,
        adj_offset,
        expected: Who {
            pid: chosen_pid,
            comm: report
                .chosen
                .as_ref()
                .map_or_else(|| victim.comm.clone(), |c| c.comm.clone()),
        },
        notes,
    })
}

/// A task's name as a comm: at most 15 bytes, cut on a character boundary.
fn comm_of(name: &str) -> String {
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

/// How the reproduction `setup` (report `n`, on input line `line`) ended: `first_kill` is the
/// run's first OOM kill and the member it took (apps first, then the filler), `pids` every
/// member's pid.
pub fn result(
    n: usize,
    line: usize,
    setup: &Setup,
    first_kill: Option<&(Option<usize>, Box<Explained>)>,
    pids: &[Option<u32>],
) -> ReplayResult {
    let mut tasks = setup.tasks.clone();
    for (t, pid) in tasks.iter_mut().zip(pids) {
        t.pid = *pid;
    }
    let mut chosen = None;
    if let Some((member, kill)) = first_kill {
        for t in &mut tasks {
            t.kernel_points = kill
                .candidates
                .iter()
                .find(|c| c.pid.is_some() && c.pid == t.pid)
                .map(|c| c.points);
        }
        let victim = &kill.victim.victim.task;
        let role = match member {
            Some(i) if *i < tasks.len() => ChosenRole::Task,
            Some(_) => ChosenRole::Allocation,
            None => ChosenRole::Outside,
        };
        chosen = Some(Chosen {
            pid: victim.pid.or(victim.tid).unwrap_or(0),
            comm: victim.comm.clone().unwrap_or_default(),
            points: kill.victim.points,
            row_pid: member.and_then(|i| tasks.get(i)).map(|t| t.row_pid),
            role,
        });
    }
    let same_victim = chosen
        .as_ref()
        .is_some_and(|c| c.role == ChosenRole::Task && c.row_pid == Some(setup.expected.pid));
    let reason = (!same_victim).then(|| why_not(setup, &tasks, chosen.as_ref()));
    ReplayResult {
        report: n,
        line,
        same_victim,
        expected: setup.expected.clone(),
        chosen,
        scale: setup.scale,
        limit_bytes: setup.limit_bytes,
        adj_offset: setup.adj_offset,
        tasks,
        reason,
        notes: setup.notes.clone(),
    }
}

/// Why the kernel chose another process than the report's victim.
fn why_not(setup: &Setup, tasks: &[TaskSetup], chosen: Option<&Chosen>) -> String {
    let Some(chosen) = chosen else {
        return "no OOM kill came before the run ended".to_owned();
    };
    let expected = tasks.iter().find(|t| t.row_pid == setup.expected.pid);
    match chosen.role {
        ChosenRole::Allocation => format!(
            "the kernel chose the replay's own filler ({} {}), not a task: the tasks are \
             smaller than a process's footprint at scale {}; try a larger --scale",
            chosen.pid, chosen.comm, setup.scale
        ),
        ChosenRole::Outside => format!(
            "the kernel chose {} ({}), which is not the replay's: something else ran in the \
             sandbox or its OOM domain",
            chosen.pid, chosen.comm
        ),
        ChosenRole::Task => {
            let Some(mine) = tasks.iter().find(|t| Some(t.row_pid) == chosen.row_pid) else {
                return "the chosen task is not one the replay started".to_owned();
            };
            let Some(expected) = expected else {
                return format!(
                    "the report's victim {} ({}) is not among the replayed tasks",
                    setup.expected.pid, setup.expected.comm
                );
            };
            let here = |t: &TaskSetup| {
                t.kernel_points
                    .map_or_else(|| "not scored".to_owned(), |p| format!("{p} points"))
            };
            format!(
                "row {} ({}) scored {} here against the victim row {} ({}) at {}; from the \
                 report's rows, scaled, they were {} and {}: {}",
                mine.row_pid,
                mine.comm,
                here(mine),
                expected.row_pid,
                expected.comm,
                here(expected),
                mine.expected_points,
                expected.expected_points,
                if mine.expected_points >= expected.expected_points {
                    "the formula ranks them this way too, so the report's kernel must have \
                     skipped the task (exiting, or already a victim being reaped)"
                } else if expected.kernel_points.is_none() {
                    "the victim's process was not a candidate here (it had exited?)"
                } else {
                    "the sizes held here differ from the rows by more than their margin \
                     (a larger --scale keeps small tasks apart)"
                }
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::{parse::parse, plan};

    const MIB: u64 = 1 << 20;

    fn means() -> Means {
        Means {
            page: 4096,
            available: 16 << 30,
            can_lower_adj: true,
            footprint: 512 << 10,
            file_rss: 0,
        }
    }

    fn asked() -> Asked {
        Asked {
            scale: None,
            tasks: DEFAULT_TASKS,
            timeout: Duration::from_secs(60),
        }
    }

    fn report(rows: &str, limit_kib: u64, victim: (u32, &str)) -> ReplayPlan {
        let text = format!(
            "[ 1.000000] app invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, \
             oom_score_adj=0\n\
             [ 1.000001] memory: usage {limit_kib}kB, limit {limit_kib}kB, failcnt 10\n\
             [ 1.000002] Tasks state (memory values in pages):\n\
             [ 1.000003] [  pid  ]   uid  tgid total_vm      rss pgtables_bytes swapents \
             oom_score_adj name\n\
             {rows}\
             [ 1.000009] oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,\
             mems_allowed=0,oom_memcg=/x,task_memcg=/x,task={comm},pid={pid},uid=0\n\
             [ 1.000010] Memory cgroup out of memory: Killed process {pid} ({comm}) \
             total-vm:1000kB, anon-rss:100kB, file-rss:0kB, shmem-rss:0kB, UID:0 \
             pgtables:44kB oom_score_adj:0\n",
            pid = victim.0,
            comm = victim.1,
        );
        let mut reports = parse(&text);
        assert_eq!(reports.len(), 1, "{text}");
        plan(reports.remove(0).expect("a whole report"))
    }

    fn row(pid: u32, rss: u64, adj: i16, name: &str) -> String {
        format!(
            "[ 1.000004] [{pid:>7}]     0 {pid:>5}    10000 {rss:>8}        65536        0 \
             {adj:>13} {name}\n"
        )
    }

    #[test]
    fn tasks_hold_their_points_and_the_filler_is_no_candidate() {
        let rows = row(10, 5000, 0, "big") + &row(11, 3000, 800, "small") + &row(12, 100, 0, "x");
        let plan = report(&rows, 64 * 1024, (11, "small"));
        let s = setup(1, &plan, &asked(), means(), probe::Options::default()).unwrap();
        assert_eq!(s.scale, 1.0);
        assert_eq!(s.limit_bytes, 64 * MIB);
        assert_eq!(s.adj_offset, 0);
        assert_eq!(s.expected.pid, 11);
        // Ranked by the formula: small (3000 + 16 + 800 × 16) first.
        let names: Vec<&str> = s.tasks.iter().map(|t| t.comm.as_str()).collect();
        assert_eq!(names, ["small", "big", "x"]);
        // rss + pgtables (65536 / 4096 = 16 pages), in bytes, plus the kernel stack and
        // objects a process is charged beside its RSS; "x" is floored to a process.
        assert_eq!(s.tasks[0].bytes, (3000 + 16) * 4096 + KERNEL_OVERHEAD);
        assert_eq!(s.tasks[1].bytes, (5000 + 16) * 4096 + KERNEL_OVERHEAD);
        assert_eq!(s.tasks[2].bytes, (512 << 10) + 4096);
        assert_eq!(s.tasks[0].expected_points, 3016 + 800 * 16);
        assert_eq!(s.opts.apps.len(), 3);
        assert_eq!(s.opts.apps[0].oom_score_adj, Some(800));
        assert_eq!(s.opts.oom_score_adj, Some(-1000));
        assert!(s.opts.unmapped && s.opts.apps_first);
        assert_eq!(s.opts.kind, Kind::Shmem);
        assert_eq!(s.opts.stop_after_kills, Some(1));
        assert!(
            s.notes.iter().any(|n| n.contains("smallest size")),
            "{:?}",
            s.notes
        );
    }

    #[test]
    fn negative_adj_without_the_capability_is_offset() {
        let rows = row(10, 5000, -500, "guaranteed") + &row(11, 3000, 500, "burstable");
        let plan = report(&rows, 64 * 1024, (11, "burstable"));
        let m = Means {
            can_lower_adj: false,
            ..means()
        };
        let s = setup(1, &plan, &asked(), m, probe::Options::default()).unwrap();
        assert_eq!(s.adj_offset, 500);
        let adj: Vec<i16> = s.tasks.iter().map(|t| t.oom_score_adj).collect();
        assert_eq!(adj, [1000, 0]);
        assert_eq!(s.opts.oom_score_adj, Some(0));
        assert!(s.notes.iter().any(|n| n.contains("CAP_SYS_RESOURCE")));
        // The offset adds the same to both: burstable still leads, by as much.
        let gap = s.tasks[0].expected_points - s.tasks[1].expected_points;
        assert_eq!(gap, plan.ranking[0].points - plan.ranking[1].points);
    }

    #[test]
    fn only_the_top_tasks_and_the_victim_are_replayed() {
        let mut rows = String::new();
        for i in 0..20u32 {
            rows += &row(100 + i, 1000 + u64::from(i) * 10, 0, &format!("t{i}"));
        }
        // The victim is the smallest: the table changed, or it was exiting; it is replayed.
        let plan = report(&rows, 128 * 1024, (100, "t0"));
        let a = Asked {
            tasks: 3,
            ..asked()
        };
        let s = setup(1, &plan, &a, means(), probe::Options::default()).unwrap();
        let pids: Vec<u32> = s.tasks.iter().map(|t| t.row_pid).collect();
        assert_eq!(pids, [119, 118, 117, 100]);
        assert!(
            s.notes.iter().any(|n| n.starts_with("16 task(s)")),
            "{:?}",
            s.notes
        );
    }

    #[test]
    fn big_reports_are_scaled_to_fit() {
        let rows = row(10, 4 << 20, 0, "java") + &row(11, 1 << 20, 0, "sidecar");
        // A 32 GiB limit on a node with 16 GiB available: a quarter of it, 4 GiB, is 1/8.
        let plan = report(&rows, 32 << 20, (10, "java"));
        let s = setup(1, &plan, &asked(), means(), probe::Options::default()).unwrap();
        assert_eq!(s.scale, 0.12);
        assert_eq!(s.limit_bytes, round_up((32u64 << 30) * 12 / 100, 4096));
        assert_eq!(default_scale(100, 1000), 1.0);
        assert_eq!(default_scale(1000, 1000), 0.25);
        assert_eq!(default_scale(3000, 1000), 0.083);
        // Asked for more than half the node: refused.
        let a = Asked {
            scale: Some(1.0),
            ..asked()
        };
        let e = setup(1, &plan, &a, means(), probe::Options::default()).unwrap_err();
        assert!(e.to_string().contains("give a smaller --scale"), "{e}");
        let a = Asked {
            scale: Some(0.0),
            ..asked()
        };
        assert_eq!(
            setup(1, &plan, &a, means(), probe::Options::default()).unwrap_err(),
            Unreplayable::BadScale(0.0)
        );
    }

    #[test]
    fn long_names_become_comms() {
        assert_eq!(comm_of("kube-controller-manager"), "kube-controller");
        assert_eq!(comm_of("tail"), "tail");
        assert_eq!(comm_of("ééééééééé"), "ééééééé");
    }
}
