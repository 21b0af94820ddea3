//! Explain: why this victim.
//!
//! Enters: ring-buffer records ([`record`] decodes them: victims, candidates, collateral
//! kills, aftermath). Leaves: [`Output`]s: each OOM kill [`Explained`] with its domain,
//! `totalpages`, badness points ([`points`]), the ranked candidates it beat, those the kernel
//! passed over, the processes killed with it, the pressure that led to it, and one sentence
//! that says it; [`predict`] ranks the candidates a plan would meet, before anything runs.
//!
//! Everything marked `"source":"kernel"` was read by a BPF program in the OOM path (at
//! `mark_victim`, right after the kernel chose): the points are the kernel's own formula
//! applied to those numbers. `"source":"predicted"` (the `--dry-run` ranking) is computed
//! from /proc samples. The two are never mixed in one list.

pub mod kill;
pub mod points;
pub mod predict;
pub mod record;

use std::collections::HashMap;

use memstress_ebpf::Pressure;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use self::record::{Aftermath, CollateralReason, FoundBy, RecordSource, SkipReason};
use self::record::{
    Candidate, CollateralKill, Memory, OomKill, Record, Task, Victim, VictimAftermath,
};
use crate::{
    size::{Bytes, group as group_i128},
    target::{
        cgroup::{Cgroup, Hierarchy, Version},
        workload::Workload,
    },
};

/// Where a figure comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Read by a BPF program in the OOM path.
    Kernel,
    /// Computed from /proc samples (`run --dry-run`'s ranking).
    Predicted,
}

/// How badness points were obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PointsFrom {
    /// `oom_badness()`'s own result (fexit).
    OomBadness,
    /// The kernel's `struct oom_control` `chosen_points` (fentry).
    OomControl,
    /// The kernel's formula applied to the counters read at `mark_victim`.
    Formula,
}

/// The OOM's constraint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Constraint {
    /// A memory cgroup's limit (`CONSTRAINT_MEMCG`).
    Memcg,
    /// The node's memory (`CONSTRAINT_NONE`).
    Global,
    /// A cpuset's memory nodes (`CONSTRAINT_CPUSET`).
    Cpuset,
    /// A memory policy (`CONSTRAINT_MEMORY_POLICY`).
    Mempolicy,
    /// Not known (without the BTF program).
    Unknown,
}

/// A ranked candidate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Ranked {
    /// Process id.
    pub pid: Option<u32>,
    /// Command name.
    pub comm: Option<String>,
    /// Badness points.
    pub points: i64,
    /// `oom_score_adj`.
    pub oom_score_adj: Option<i16>,
    /// RSS (anon + file + shmem).
    pub rss_kib: Option<u64>,
    /// Swap.
    pub swap_kib: Option<u64>,
    /// Page tables.
    pub pgtables_kib: Option<u64>,
    /// Its memory cgroup's kernel id.
    pub cgroup_id: Option<u64>,
    /// `kernel` (read in the OOM path) or `predicted` (from samples).
    pub source: Source,
    /// `oom_badness` (the kernel's own result, where fexit loads) or `formula` (the kernel's
    /// formula applied to the counters read at `mark_victim`).
    pub points_from: PointsFrom,
    /// The formula's result on the counters read at `mark_victim`, shown beside the kernel's
    /// own `oom_badness` result so the two can be compared (absent when `points_from` is
    /// already `formula`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub formula_points: Option<i64>,
}

/// A task the kernel passed over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Skipped {
    /// Process id.
    pub pid: Option<u32>,
    /// Command name.
    pub comm: Option<String>,
    /// Why.
    pub reason: SkipReason,
}

/// The cgroup whose limit was hit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Domain {
    /// Its path (`null` if the victim's path was too deep to cut it from).
    pub cgroup: Option<String>,
    /// Its kernel id.
    pub cgroup_id: u64,
    /// Its limit.
    pub limit_bytes: u64,
    /// Its usage when the victim was chosen.
    pub usage_bytes: u64,
    /// `oom_lock` (the kernel locked its subtree for this OOM) or `usage_at_limit`.
    pub found_by: FoundBy,
    /// Always `kernel`.
    pub source: Source,
}

/// What led to the kill, since the previous kill in the same domain (or since memstress
/// started).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PressureReport {
    /// Over this long.
    pub since_ms: u64,
    /// Times a charge hit the domain's limit (v1 `memory.failcnt`, v2 `memory.events` max).
    pub limit_hits: Option<u64>,
    /// Direct reclaim runs by tasks of the trigger's cgroup (BPF, in-kernel aggregated).
    pub reclaim_runs: Option<u64>,
    /// Pages those runs reclaimed, in KiB.
    pub reclaimed_kib: Option<u64>,
    /// Time spent in them.
    pub reclaim_ms: Option<f64>,
    /// Pages they were asked for, in KiB (where fentry loads).
    pub reclaim_asked_kib: Option<u64>,
}

/// The kernel's `struct oom_control` (where fentry loads).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OomControlReport {
    /// The kernel's name for the constraint (`CONSTRAINT_MEMCG`, …).
    pub constraint: String,
    /// `totalpages`.
    pub totalpages: u64,
    /// The chosen task's points.
    pub chosen_points: i64,
    /// The failed allocation's order.
    pub order: i32,
    /// The failed allocation's gfp mask.
    pub gfp_mask: String,
}

/// The victim, with its points.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct VictimReport {
    /// Who, what memory, which cgroup.
    #[serde(flatten)]
    pub victim: Victim,
    /// Its badness points (`null` without the BTF program's counters).
    pub points: Option<i64>,
    /// `kernel`.
    pub source: Source,
    /// `oom_control` (the kernel's `chosen_points`) or `formula`.
    pub points_from: PointsFrom,
    /// Its container and pod (from its cgroup's path and the runtimes' state files).
    #[serde(flatten)]
    pub workload: Workload,
}

/// The task whose allocation started the OOM, and where it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Trigger {
    /// Who.
    #[serde(flatten)]
    pub task: Task,
    /// Its memory cgroup's path (`null`: not known: the task moved or exited before it was
    /// read, or the kernel gave no cgroup id).
    pub cgroup: Option<String>,
    /// Its container and pod.
    #[serde(flatten)]
    pub workload: Workload,
}

/// One OOM kill, explained.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Explained {
    /// CLOCK_MONOTONIC ns at `mark_victim`.
    pub ts_ns: u64,
    /// CPU.
    pub cpu: u32,
    /// The OOM's sequence number (kills of one `memory.oom.group` OOM share it).
    pub seq: u64,
    /// The victim.
    pub victim: VictimReport,
    /// The task whose allocation started the OOM.
    pub trigger: Trigger,
    /// What `oom_score_adj` is scaled by (`null`: unknown).
    pub totalpages: Option<u64>,
    /// `memcg` or `global`.
    pub constraint: Constraint,
    /// The cgroup whose limit was hit (`null` for a global OOM).
    pub domain: Option<Domain>,
    /// Eligible tasks in the domain, highest points first.
    pub candidates: Vec<Ranked>,
    /// Tasks in the domain the kernel passed over.
    pub skipped: Vec<Skipped>,
    /// Whether the candidate list is incomplete (scan limit, ring buffer).
    pub candidates_complete: bool,
    /// Tasks the candidate scan visited inside the OOM path: a memcg OOM's walk visits its
    /// domain's threads, a global OOM's every process of the node (`null`: no scan, as for a
    /// `memory.oom.group` kill, or a kernel whose `mark_victim` passes only a pid).
    pub scan_visited: Option<u32>,
    /// How long that scan took inside the OOM path, µs (`null` with no scan).
    pub scan_us: Option<f64>,
    /// The kernel's own OOM path before the kill, µs: from the end of the trigger's last
    /// memcg reclaim (the charge then gave up) to `mark_victim` (`null`: no such reclaim in
    /// the last 10 s, as for a global OOM, or no scan).
    pub oom_path_us: Option<f64>,
    /// Processes SIGKILLed with the victim.
    pub collateral: Vec<CollateralKill>,
    /// A `memory.oom.group` kill that followed the chosen victim.
    pub group_kill: bool,
    /// What led to it.
    pub pressure: Option<PressureReport>,
    /// The kernel's own `struct oom_control`, where fentry loads (`null` elsewhere).
    pub oom_control: Option<OomControlReport>,
    /// One sentence.
    pub why: String,
    /// The sentence without its subject ("highest points … "), for the text line.
    #[serde(skip)]
    pub reason: String,
    /// `true`: SIGKILL seen; `false`: only marked (already exiting); `null`: unknown.
    pub kill_confirmed: Option<bool>,
    /// Which programs filled the record.
    pub sources: Vec<RecordSource>,
    /// With a [`Scope::Domain`]: whether the victim is in the scope's cgroup (or below it),
    /// rather than elsewhere in the OOM domain that contains it.
    #[serde(skip)]
    pub in_target: Option<bool>,
}

/// Which kills an [`Explainer`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Victims in this cgroup or below it (`watch --cgroup`).
    Subtree {
        /// Its kernel id.
        id: u64,
        /// Its path.
        path: String,
    },
    /// Every kill this cgroup's memory takes part in: victims in it or below it, and every
    /// kill whose OOM domain contains it (a limit on an ancestor, shared with siblings; a
    /// global OOM), wherever the victim is. What a run reports: every kill its stressors'
    /// pressure could cause.
    Domain {
        /// Its kernel id.
        id: u64,
        /// Its path.
        path: String,
        /// Kernel ids of it and each ancestor.
        chain: Vec<u64>,
    },
}

impl Scope {
    /// [`Scope::Domain`] of `cgroup`, its ancestors' ids read from the hierarchy.
    pub fn domain_of(cgroup: &Cgroup) -> Result<Self, crate::target::cgroup::CgroupError> {
        // The root's id is never a domain's (a root OOM is global); a cgroup whose id cannot
        // be read (a fixture) is left out.
        let chain = cgroup
            .lineage()
            .filter(|c| !c.is_root())
            .filter_map(|c| c.id().ok())
            .collect();
        Ok(Self::Domain {
            id: cgroup.id()?,
            path: cgroup.path.clone(),
            chain,
        })
    }

    /// Whether `kill` is reported: `None` if not, else whether its victim is in the
    /// scope's cgroup.
    pub fn admits(&self, kill: &OomKill) -> Option<bool> {
        match self {
            Self::Subtree { id, path } => kill.in_cgroup(*id, path).then_some(true),
            Self::Domain { id, path, chain } => {
                if kill.in_cgroup(*id, path) {
                    return Some(true);
                }
                let contains = match kill.domain_id() {
                    Some(Some(domain)) => chain.contains(&domain),
                    // A global OOM: its domain is the node, which holds everything.
                    Some(None) => true,
                    // Unknown (no BTF program): only the victim's place tells.
                    None => false,
                };
                contains.then_some(false)
            }
        }
    }

    fn path(&self) -> &str {
        match self {
            Self::Subtree { path, .. } | Self::Domain { path, .. } => path,
        }
    }

    /// The scope's cgroup: its kernel id and path. A `kill` line is reported for a victim in
    /// it or below it (a signal has no domain).
    pub fn cgroup(&self) -> (u64, &str) {
        match self {
            Self::Subtree { id, path } | Self::Domain { id, path, .. } => (*id, path),
        }
    }
}

/// A victim's aftermath, reported after its kill.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Reaped {
    /// Process id.
    pub pid: Option<u32>,
    /// Thread id.
    pub tid: u32,
    /// Command name.
    pub comm: Option<String>,
    /// `exited`, `reaper_started`, `reaper_finished`, `reaper_skipped`.
    pub what: Aftermath,
    /// Since the kill.
    pub after_ms: f64,
    /// The OOM.
    pub seq: u64,
}

/// What a batch of records amounts to.
#[derive(Clone, Debug)]
pub enum Output {
    /// A kill, explained.
    Kill(Box<Explained>),
    /// A collateral kill whose victim was reported in an earlier batch.
    LateCollateral(Box<CollateralKill>),
    /// A victim exited or was reaped.
    Reaped(Reaped),
    /// A SIGKILL that was not the OOM killer's, or a SIGTERM the process exited after.
    Signalled(Box<kill::KillReport>),
}

#[derive(Clone, Debug)]
struct KillNote {
    seq: u64,
    ts_ns: u64,
    pid: Option<u32>,
    comm: Option<String>,
}

/// Joins records into explanations. Candidates arrive before their OOM's victim record;
/// collateral kills and aftermath after it.
#[derive(Debug)]
pub struct Explainer {
    page: u64,
    version: Option<Version>,
    hierarchy: Option<Hierarchy>,
    started_ns: u64,
    pending: HashMap<u64, Vec<Candidate>>,
    kills: HashMap<u32, KillNote>,
    chosen: HashMap<u64, (Option<u32>, Option<String>)>,
    /// Reclaim counters of each trigger memcg (by id) at the last kill it triggered.
    pressure_seen: HashMap<u64, Pressure>,
    /// Limit hits of each domain (by id; 0: global) at its last kill or when seeded, and
    /// when.
    domain_seen: HashMap<u64, (Option<u64>, u64)>,
    /// [`Self::seed_tree`] saw every memcg up to this kernel id: one with a higher id was
    /// created since, its limit hits counted from zero then.
    seeded_upto: Option<u64>,
    /// Which kills are reported (`None`: all).
    filter: Option<Scope>,
    /// Exits seen before their victim record (the SIGKILL races ahead of `mark_victim`).
    early_exits: HashMap<u32, VictimAftermath>,
    /// `enum oom_constraint`: value -> name, from the kernel's BTF.
    constraints: Vec<(u32, String)>,
    /// Signals that were not the OOM killer's.
    signals: kill::Kills,
}

const MAX_REMEMBERED: usize = 16_384;

impl Explainer {
    /// An explainer for kills on `hierarchy` (used to read the domain's limit hits).
    pub fn new(hierarchy: Option<Hierarchy>, started_ns: u64) -> Self {
        Self {
            page: crate::size::page_size(),
            version: hierarchy.as_ref().map(|h| h.version),
            hierarchy,
            started_ns,
            pending: HashMap::new(),
            kills: HashMap::new(),
            chosen: HashMap::new(),
            pressure_seen: HashMap::new(),
            domain_seen: HashMap::new(),
            seeded_upto: None,
            filter: None,
            early_exits: HashMap::new(),
            constraints: Vec::new(),
            signals: kill::Kills::new(Some(std::process::id())),
        }
    }

    /// Names `enum oom_constraint` values as this kernel does.
    pub fn with_constraints(mut self, constraints: Vec<(u32, String)>) -> Self {
        self.constraints = constraints;
        self
    }

    /// [`Self::with_constraints`] on an explainer made before the probes loaded.
    pub fn set_constraints(&mut self, constraints: Vec<(u32, String)>) {
        self.constraints = constraints;
    }

    fn constraint_name(&self, value: u32) -> Option<&str> {
        self.constraints
            .iter()
            .find(|(v, _)| *v == value)
            .map(|(_, n)| n.as_str())
    }

    /// Records `cgroup`'s limit-hit count now, and its ancestors', so that the first kill in
    /// any of them reports how often the limit was hit since this moment.
    pub fn seed(&mut self, cgroup: &Cgroup, now_ns: u64) {
        // The root is seeded only when it is `cgroup` itself.
        for c in cgroup.lineage().take_while(|c| c == cgroup || !c.is_root()) {
            self.seed_one(&c, now_ns);
        }
    }

    /// Seeds what a kill reported with a filter on `cgroup` can have as domain: `cgroup`,
    /// its ancestors and its subtree.
    pub fn seed_scope(&mut self, cgroup: &Cgroup, now_ns: u64) {
        self.seed(cgroup, now_ns);
        self.seed_tree(cgroup, now_ns);
    }

    /// [`Self::seed`] for every memcg in `root`'s subtree (depth-first, bounded), so that a
    /// kill's limit hits since this moment are known wherever it happens: a node-wide watch
    /// tells the same figures as one filtered to the kill's cgroup. A memcg created later
    /// counts from zero.
    pub fn seed_tree(&mut self, root: &Cgroup, now_ns: u64) {
        const MAX_SEEDED: usize = 100_000;
        let mut upto = 0;
        let mut stack = vec![root.clone()];
        let mut seen = 0;
        while let Some(c) = stack.pop() {
            seen += 1;
            if seen > MAX_SEEDED {
                // Not all seen: a higher id may be an old memcg.
                return;
            }
            if !c.is_root() {
                upto = upto.max(self.seed_one(&c, now_ns).unwrap_or(0));
            }
            stack.extend(c.children().unwrap_or_default());
        }
        self.seeded_upto = Some(upto);
    }

    /// Records one memcg's limit hits now; returns its id.
    fn seed_one(&mut self, c: &Cgroup, now_ns: u64) -> Option<u64> {
        let id = c.id().ok()?;
        if let Ok(hits) = c.limit_hits() {
            self.domain_seen.insert(id, (Some(hits), now_ns));
        }
        Some(id)
    }

    /// Reports only the kills `scope` admits (their collateral and aftermath follow them).
    pub fn only_in(mut self, scope: Scope) -> Self {
        self.filter = Some(scope);
        self
    }

    /// Moves the filter to another cgroup (`--follow` found the target's replacement).
    pub fn retarget(&mut self, scope: Scope) {
        if self.filter.is_some() {
            self.filter = Some(scope);
        }
    }

    /// The scope's cgroup path, if any.
    pub fn scope_path(&self) -> Option<&str> {
        self.filter.as_ref().map(Scope::path)
    }

    /// Turns a batch of records (in ring-buffer order) into outputs. `pressure` reads the
    /// in-kernel reclaim counters of a memcg id.
    pub fn batch(
        &mut self,
        records: Vec<Record>,
        pressure: &dyn Fn(u64) -> Option<Pressure>,
    ) -> Vec<Output> {
        let mut victims = Vec::new();
        let mut collateral = Vec::new();
        let mut aftermath = Vec::new();
        let mut signals = Vec::new();
        for record in records {
            match record {
                Record::Candidate(c) => self.pending.entry(c.seq).or_default().push(c),
                Record::Victim(v) => victims.push(v),
                Record::Collateral(c) => collateral.push(c),
                Record::Aftermath(a) => aftermath.push(a),
                Record::Signal(s) => signals.push(s),
            }
        }
        // Every task the OOM killer took, in scope or not, claims its SIGKILL: an OOM kill
        // is never reported as a `kill` line.
        for v in &victims {
            if v.kill_confirmed != Some(false) {
                self.signals.note_oom(&v.victim.task, v.ts_ns);
            }
        }
        for c in &collateral {
            self.signals.note_oom(&c.task, c.ts_ns);
        }
        let signalled: Vec<Output> = signals
            .into_iter()
            .filter_map(|s| self.signals.admit(*s, self.filter.as_ref()))
            .map(|r| Output::Signalled(Box::new(r)))
            .collect();
        // Exits without an OOM sequence raced ahead of their victim record: hold them until it
        // arrives (this batch or a later one).
        let (early, aftermath): (Vec<_>, Vec<_>) = aftermath
            .into_iter()
            .partition(|a| a.seq == 0 && !self.kills.contains_key(&a.tid));
        if self.early_exits.len() > MAX_REMEMBERED {
            self.early_exits.clear();
        }
        self.early_exits
            .extend(early.into_iter().map(|a| (a.tid, a)));
        // A "collateral" SIGKILL of a task that is itself marked as a victim is a
        // memory.oom.group kill; it is reported as a victim, not twice.
        let victim_tids: Vec<u32> = victims.iter().filter_map(|v| v.victim.task.tid).collect();
        collateral.retain(|c| !c.task.tid.is_some_and(|t| victim_tids.contains(&t)));
        let mut out = Vec::new();
        for kill in victims {
            let in_target = match &self.filter {
                Some(scope) => match scope.admits(&kill) {
                    Some(inside) => Some(inside),
                    None => {
                        self.pending.remove(&kill.seq);
                        collateral.retain(|c| Some(c.victim_tid) != kill.victim.task.tid);
                        self.pass_over(&kill, pressure);
                        continue;
                    }
                },
                None => None,
            };
            let mine: Vec<CollateralKill> = collateral
                .iter()
                .filter(|c| Some(c.victim_tid) == kill.victim.task.tid)
                .cloned()
                .collect();
            collateral.retain(|c| Some(c.victim_tid) != kill.victim.task.tid);
            let early = kill
                .victim
                .task
                .tid
                .and_then(|t| self.early_exits.remove(&t));
            let mut explained = self.explain(*kill, mine, pressure);
            if matches!(self.filter, Some(Scope::Domain { .. })) {
                explained.in_target = in_target;
            }
            out.push(Output::Kill(Box::new(explained)));
            if let Some(exit) = early
                && let Some(reaped) = self.aftermath(&exit)
            {
                out.push(Output::Reaped(reaped));
            }
        }
        // Late collateral and aftermath are reported for victims this explainer reported.
        out.extend(
            collateral
                .into_iter()
                .filter(|c| self.kills.contains_key(&c.victim_tid))
                .map(|c| Output::LateCollateral(Box::new(c))),
        );
        for a in aftermath {
            if let Some(reaped) = self.aftermath(&a) {
                out.push(Output::Reaped(reaped));
            }
        }
        out.extend(signalled);
        if self.pending.len() > 64 {
            // Candidates whose victim never came (a dropped record): keep the newest few.
            let mut seqs: Vec<u64> = self.pending.keys().copied().collect();
            seqs.sort_unstable();
            for seq in &seqs[..seqs.len() - 16] {
                self.pending.remove(seq);
            }
        }
        out
    }

    /// When the next kernel SIGKILL held back (it may be an OOM kill) is due for
    /// [`Self::release_kills`], in CLOCK_MONOTONIC ns.
    pub fn kills_deadline(&self) -> Option<u64> {
        self.signals.deadline()
    }

    /// The kernel SIGKILLs held back whose wait ended at `now_ns` (CLOCK_MONOTONIC) and that
    /// no OOM record claimed: `kill` lines. Call it after the records up to `now_ns` went
    /// through [`Self::batch`].
    pub fn release_kills(&mut self, now_ns: u64) -> Vec<Output> {
        self.signals
            .release(now_ns)
            .into_iter()
            .map(|r| Output::Signalled(Box::new(r)))
            .collect()
    }

    fn aftermath(&mut self, a: &VictimAftermath) -> Option<Reaped> {
        let note = self.kills.get(&a.tid).cloned()?;
        if matches!(a.what, Aftermath::ReaperFinished | Aftermath::ReaperSkipped) {
            self.kills.remove(&a.tid);
        }
        Some(Reaped {
            pid: note.pid,
            tid: a.tid,
            comm: note.comm,
            what: a.what,
            // An exit can start a few microseconds before the victim is marked (it was
            // SIGKILLed first): that reads as 0.
            after_ms: a.ts_ns.saturating_sub(note.ts_ns) as f64 / 1e6,
            seq: if a.seq == 0 {
                self.kill_seq(a.tid)
            } else {
                a.seq
            },
        })
    }

    fn kill_seq(&self, tid: u32) -> u64 {
        self.kills.get(&tid).map_or(0, |n| n.seq)
    }

    fn totalpages(&self, kill: &OomKill) -> Option<u64> {
        if let Some(oc) = &kill.oc {
            return Some(oc.totalpages);
        }
        let (mem_total, swap_total) = points::node_pages(self.page);
        match kill.domain {
            Some(i) => {
                let level = kill.chain.get(i)?;
                Some(points::totalpages_memcg(
                    self.version.unwrap_or(Version::V2),
                    level.max_pages,
                    level.swap_max_pages,
                    swap_total,
                    60,
                ))
            }
            None if mem_total > 0 => Some(points::totalpages_global(mem_total, swap_total)),
            None => None,
        }
    }

    /// What led to `kill`: since the previous kill in its domain (or since memstress
    /// started), the domain's limit hits and the direct reclaim of the trigger's memcg, from
    /// the counters as the kernel held them at the kill. Every reader of the same kills
    /// reports the same figures, whenever it reads them and whatever else it filters out.
    fn pressure_report(
        &mut self,
        kill: &OomKill,
        domain_index: Option<usize>,
        domain_path: Option<&str>,
        pressure: &dyn Fn(u64) -> Option<Pressure>,
    ) -> PressureReport {
        let mut report = PressureReport::default();
        let level = domain_index.and_then(|i| kill.chain.get(i));
        let key = level.map_or(0, |l| l.id);
        let now = kill.ts_ns;
        let previous = self.domain_seen.get(&key).copied();
        report.since_ms = now.saturating_sub(previous.map_or(self.started_ns, |p| p.1)) / 1_000_000;
        // The count the kernel held at the kill; else its file, read now.
        let at_kill = level.and_then(|l| match self.version {
            Some(Version::V1) => l.failcnt,
            Some(Version::V2) => l.events_max,
            None => None,
        });
        let hits = at_kill.or_else(|| {
            let (hierarchy, path) = (self.hierarchy.as_ref()?, domain_path?);
            Cgroup::locate(hierarchy, path).ok()?.limit_hits().ok()
        });
        if key != 0 {
            let before = match previous {
                Some((before, _)) => before,
                // Created after the whole tree was seeded: it started from zero.
                None if self.seeded_upto.is_some_and(|upto| key > upto) => Some(0),
                None => None,
            };
            report.limit_hits = before.zip(hits).map(|(b, h)| h.saturating_sub(b));
        }
        self.domain_seen.insert(key, (hits, now));
        let id = kill.trigger.cgroup_id;
        if let Some(p) = kill.pressure.or_else(|| id.and_then(pressure))
            && let Some(id) = id
        {
            let before = self.pressure_seen.get(&id).copied().unwrap_or_default();
            report.reclaim_runs = Some(p.runs.saturating_sub(before.runs));
            report.reclaimed_kib =
                Some(p.reclaimed.saturating_sub(before.reclaimed) * self.page / 1024);
            report.reclaim_ms = Some(p.ns.saturating_sub(before.ns) as f64 / 1e6);
            report.reclaim_asked_kib = (kill.oc.is_some() || p.asked > 0)
                .then(|| p.asked.saturating_sub(before.asked) * self.page / 1024);
            self.pressure_seen.insert(id, p);
        }
        report
    }

    /// Moves the pressure bookkeeping past a kill that is not reported (outside the
    /// filter), so that the next reported kill counts from it, as an unfiltered reader does.
    fn pass_over(&mut self, kill: &OomKill, pressure: &dyn Fn(u64) -> Option<Pressure>) {
        if kill.group_kill {
            return;
        }
        let (domain_index, _) = domain_of(kill);
        let path = domain_index.and_then(|i| kill.path_of_level(i));
        self.pressure_report(kill, domain_index, path.as_deref(), pressure);
    }

    /// The badness points of a task's counters, with this kill's `totalpages`.
    fn points_of(&self, memory: &Memory, adj: Option<i16>, totalpages: Option<u64>) -> Option<i64> {
        Some(points::badness(memory.raw?, adj?, totalpages?, self.page))
    }

    /// The victim's points: the kernel's `chosen_points` where fentry loaded; else its
    /// formula applied to what mark_victim read.
    fn victim_points(&self, kill: &OomKill, totalpages: Option<u64>) -> (Option<i64>, PointsFrom) {
        let chosen = kill
            .oc
            .as_ref()
            .filter(|oc| Some(oc.chosen_tid) == kill.victim.task.tid)
            .map(|oc| oc.chosen_points);
        match chosen {
            Some(p) => (Some(p), PointsFrom::OomControl),
            None => (
                self.points_of(
                    &kill.victim.memory,
                    kill.victim.task.oom_score_adj,
                    totalpages,
                ),
                PointsFrom::Formula,
            ),
        }
    }

    /// The candidates of `kill`, ranked as the kernel ranks them (highest first; among
    /// equals the victim first: the kernel took the later task in its own scan order, which
    /// was this one), and those it passed over.
    fn rank(&mut self, kill: &OomKill, totalpages: Option<u64>) -> (Vec<Ranked>, Vec<Skipped>) {
        let candidates = self.pending.remove(&kill.seq).unwrap_or_default();
        let mut ranked = Vec::new();
        let mut skipped = Vec::new();
        for c in &candidates {
            if let Some(reason) = c.skip_reason() {
                skipped.push(Skipped {
                    pid: c.task.pid,
                    comm: c.task.comm.clone(),
                    reason,
                });
                continue;
            }
            let formula = self.points_of(&c.memory, c.task.oom_score_adj, totalpages);
            let (points, points_from, formula_points) = match (c.kernel_points, formula) {
                (Some(p), f) => (p, PointsFrom::OomBadness, f),
                (None, Some(f)) => (f, PointsFrom::Formula, None),
                (None, None) => continue,
            };
            ranked.push(Ranked {
                pid: c.task.pid,
                comm: c.task.comm.clone(),
                points,
                oom_score_adj: c.task.oom_score_adj,
                rss_kib: c
                    .memory
                    .raw
                    .map(|r| r.rss_pages.saturating_mul(self.page) / 1024),
                swap_kib: c.memory.swap_kib,
                pgtables_kib: c.memory.pgtables_kib,
                cgroup_id: c.task.cgroup_id,
                source: Source::Kernel,
                points_from,
                formula_points,
            });
        }
        let victim_pid = kill.victim.task.pid;
        ranked.sort_by(|a, b| {
            b.points
                .cmp(&a.points)
                .then_with(|| (b.pid == victim_pid).cmp(&(a.pid == victim_pid)))
        });
        (ranked, skipped)
    }

    /// The OOM's constraint: the kernel's `struct oom_control` where fentry loaded; else
    /// what the victim's chain shows (a domain on it is a memcg OOM; without the BTF
    /// program there is no chain, and the constraint is unknown).
    fn constraint(&self, kill: &OomKill, domain_index: Option<usize>) -> Constraint {
        match &kill.oc {
            Some(oc) => match self.constraint_name(oc.constraint) {
                Some("CONSTRAINT_MEMCG") => Constraint::Memcg,
                Some("CONSTRAINT_NONE") => Constraint::Global,
                Some("CONSTRAINT_CPUSET") => Constraint::Cpuset,
                Some("CONSTRAINT_MEMORY_POLICY") => Constraint::Mempolicy,
                _ => Constraint::Unknown,
            },
            None => match (kill.chain.is_empty(), domain_index) {
                (true, _) => Constraint::Unknown,
                (false, Some(_)) => Constraint::Memcg,
                (false, None) => Constraint::Global,
            },
        }
    }

    /// The kernel's `struct oom_control`, as reported.
    fn oom_control(&self, kill: &OomKill) -> Option<OomControlReport> {
        kill.oc.as_ref().map(|oc| OomControlReport {
            constraint: self
                .constraint_name(oc.constraint)
                .map_or_else(|| oc.constraint.to_string(), str::to_owned),
            totalpages: oc.totalpages,
            chosen_points: oc.chosen_points,
            order: oc.order,
            gfp_mask: format!("{:#x}", oc.gfp_mask),
        })
    }

    /// Notes the victim for what follows it: a group kill names the chosen one; aftermath
    /// and collateral records are joined to it.
    fn remember(&mut self, kill: &OomKill) {
        if !kill.group_kill {
            self.chosen.insert(
                kill.seq,
                (kill.victim.task.pid, kill.victim.task.comm.clone()),
            );
        }
        if self.kills.len() > MAX_REMEMBERED {
            self.kills.clear();
        }
        if self.chosen.len() > MAX_REMEMBERED {
            self.chosen.clear();
        }
        if let Some(tid) = kill.victim.task.tid {
            let note = KillNote {
                seq: kill.seq,
                ts_ns: kill.ts_ns,
                pid: kill.victim.task.pid,
                comm: kill.victim.task.comm.clone(),
            };
            self.kills.insert(tid, note);
        }
    }

    /// One kill, explained: its points and candidates, its domain and constraint, the
    /// pressure that led to it, and the sentence that says it.
    fn explain(
        &mut self,
        kill: OomKill,
        collateral: Vec<CollateralKill>,
        pressure: &dyn Fn(u64) -> Option<Pressure>,
    ) -> Explained {
        let totalpages = self.totalpages(&kill);
        let (victim_points, victim_points_from) = self.victim_points(&kill, totalpages);
        let (ranked, skipped) = self.rank(&kill, totalpages);
        let (domain_index, found_by) = domain_of(&kill);
        let domain_path = domain_index.and_then(|i| kill.path_of_level(i));
        let domain = domain_index.and_then(|i| {
            let l = kill.chain.get(i)?;
            Some(Domain {
                cgroup: domain_path.clone(),
                cgroup_id: l.id,
                limit_bytes: l.max_pages * self.page,
                usage_bytes: l.usage_pages * self.page,
                found_by,
                source: Source::Kernel,
            })
        });
        let (visited, _sent, dropped, truncated) = kill.scan;
        let pressure_report = (!kill.group_kill)
            .then(|| self.pressure_report(&kill, domain_index, domain_path.as_deref(), pressure));
        self.remember(&kill);
        let mut explained = Explained {
            ts_ns: kill.ts_ns,
            cpu: kill.cpu,
            seq: kill.seq,
            victim: VictimReport {
                victim: kill.victim.clone(),
                points: victim_points,
                source: Source::Kernel,
                points_from: victim_points_from,
                workload: Workload::default(),
            },
            trigger: Trigger {
                task: kill.trigger.clone(),
                ..Trigger::default()
            },
            totalpages,
            constraint: self.constraint(&kill, domain_index),
            domain,
            candidates_complete: !kill.group_kill
                && dropped == 0
                && !truncated
                && !ranked.is_empty(),
            scan_visited: (!kill.group_kill && !kill.chain.is_empty()).then_some(visited),
            scan_us: (!kill.group_kill && !kill.chain.is_empty() && kill.scan_ns > 0)
                .then(|| (kill.scan_ns as f64 / 100.0).round() / 10.0),
            oom_path_us: (!kill.group_kill && kill.since_reclaim_ns > 0)
                .then(|| (kill.since_reclaim_ns as f64 / 100.0).round() / 10.0),
            candidates: ranked,
            skipped,
            collateral,
            group_kill: kill.group_kill,
            pressure: pressure_report,
            oom_control: self.oom_control(&kill),
            why: String::new(),
            reason: String::new(),
            kill_confirmed: kill.kill_confirmed,
            sources: kill.sources.clone(),
            in_target: None,
        };
        let (why, reason) = self.why(&explained);
        explained.why = why;
        explained.reason = reason;
        explained
    }

    /// The sentence, and the part of it after "killed WHO: ".
    fn why(&self, e: &Explained) -> (String, String) {
        let v = &e.victim.victim.task;
        let subject = who(v.pid.or(v.tid), v.comm.as_deref());
        if e.kill_confirmed == Some(false) {
            let reason = "marked as the OOM victim without a kill: it was already exiting";
            return (format!("{subject} was {reason}"), reason.to_owned());
        }
        let place = match &e.domain {
            Some(d) => format!(
                "in {} (limit {} hit by {})",
                d.cgroup.as_deref().unwrap_or("its cgroup"),
                Bytes(d.limit_bytes),
                who(e.trigger.task.pid, e.trigger.task.comm.as_deref())
            ),
            None if e.constraint == Constraint::Global => format!(
                "on the node (global OOM, allocation by {})",
                who(e.trigger.task.pid, e.trigger.task.comm.as_deref())
            ),
            None => format!(
                "(allocation by {})",
                who(e.trigger.task.pid, e.trigger.task.comm.as_deref())
            ),
        };
        let reason = if e.group_kill {
            let chosen = self
                .chosen
                .get(&e.seq)
                .map(|(pid, comm)| who(*pid, comm.as_deref()))
                .unwrap_or_else(|| "the chosen victim".to_owned());
            format!(
                "killed with {chosen}: memory.oom.group is set {place}, so the OOM killer kills \
                 the whole group"
            )
        } else if let Some(points) = e.victim.points {
            self.ranking(e, points, &place)
        } else {
            format!("chosen {place}")
        };
        let full = if e.group_kill {
            format!("killed {subject} {}", reason.trim_start_matches("killed "))
        } else {
            format!("killed {subject}: {reason}")
        };
        (full, reason)
    }

    fn ranking(&self, e: &Explained, points: i64, place: &str) -> String {
        let v = &e.victim.victim.task;
        let mut text = if e.candidates.is_empty() {
            format!("{} points {place}", group(points))
        } else {
            let n = e.candidates.len();
            let top = e.candidates[0].points;
            format!(
                "{} {} of {n} candidate{} {place}",
                if points >= top {
                    "highest points"
                } else {
                    "points"
                },
                group(points),
                if n == 1 { "" } else { "s" }
            )
        };
        if let (Some(adj), Some(totalpages)) = (v.oom_score_adj, e.totalpages)
            && adj != 0
        {
            let added = points::adj_points(adj, totalpages);
            let verb = if added >= 0 { "added" } else { "took away" };
            text.push_str(&format!(
                "; oom_score_adj {adj} {verb} {}",
                group(added.abs())
            ));
        }
        if let Some(next) = e.candidates.iter().find(|c| c.pid != v.pid) {
            text.push_str(&format!(
                "; next: {} with {}",
                who(next.pid, next.comm.as_deref()),
                group(next.points)
            ));
        }
        if let Some(top) = e.candidates.first()
            && top.pid != v.pid
            && top.points > points
        {
            text.push_str(&format!(
                " (the counters moved between the kernel's choice and mark_victim: {} ranks \
                 higher now)",
                who(top.pid, top.comm.as_deref())
            ));
        }
        text
    }
}

/// The OOM domain's index in the victim's chain (`None`: global or unknown), and how it was
/// found: `oom_control`'s memcg where fentry loaded; else what the chain shows.
fn domain_of(kill: &OomKill) -> (Option<usize>, FoundBy) {
    match &kill.oc {
        Some(oc) if oc.memcg_id != 0 => (
            kill.chain.iter().position(|l| l.id == oc.memcg_id),
            FoundBy::OomControl,
        ),
        Some(_) => (None, FoundBy::OomControl),
        None => (kill.domain, kill.domain_by.unwrap_or(FoundBy::UsageAtLimit)),
    }
}

/// [`crate::size::group`] for points.
fn group(n: i64) -> String {
    group_i128(n.into())
}

/// "4211 (stress-ng-vm)", or what is known of it.
pub fn who(pid: Option<u32>, comm: Option<&str>) -> String {
    match (pid, comm) {
        (Some(pid), Some(comm)) => format!("{pid} ({comm})"),
        (Some(pid), None) => pid.to_string(),
        (None, Some(comm)) => format!("({comm})"),
        (None, None) => "an unknown task".to_owned(),
    }
}

/// "limit hit 312× in 1.4 s, direct reclaim ran 40× (12 ms) and freed 2 MiB, then OOM".
pub fn describe_pressure(p: &PressureReport) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(hits) = p.limit_hits {
        parts.push(format!(
            "limit hit {hits}× in {:.1} s",
            p.since_ms as f64 / 1000.0
        ));
    }
    if let (Some(runs), Some(kib), Some(ms)) = (p.reclaim_runs, p.reclaimed_kib, p.reclaim_ms)
        && runs > 0
    {
        parts.push(format!(
            "direct reclaim ran {runs}× ({ms:.1} ms) and freed {}",
            Bytes(kib * 1024)
        ));
    }
    (!parts.is_empty()).then(|| format!("{}, then OOM", parts.join(", ")))
}

#[cfg(test)]
mod tests {
    use memstress_ebpf::{kind, skip};

    use super::*;
    use crate::explain::record::{
        self, OomKill,
        tests::{facts, sample_raw},
    };

    fn candidate(seq: u64, pid: u32, name: &str, adj: i16, anon: i64, why: u32) -> Record {
        let raw = memstress_ebpf::Candidate {
            kind: kind::CANDIDATE,
            skip: why,
            seq,
            task: facts(pid, name, adj, anon),
        };
        // SAFETY: viewing a plain-old-data struct as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw as *const memstress_ebpf::Candidate).cast::<u8>(),
                size_of::<memstress_ebpf::Candidate>(),
            )
        };
        record::decode(bytes).unwrap()
    }

    /// The example: three tasks in /pod, whose 64 MiB limit was hit by `node`.
    #[test]
    fn explains_a_memcg_kill() {
        let raw = sample_raw();
        let seq = raw.seq;
        let kill = OomKill::from_raw(&raw, 4096);
        let mut ex = Explainer::new(None, 0);
        let records = vec![
            candidate(seq, 4190, "node", 0, 8_000, skip::ELIGIBLE),
            candidate(seq, 4211, "stress-ng-vm", 1000, 15_000, skip::ELIGIBLE),
            candidate(seq, 4300, "db", -1000, 30_000, skip::ADJ_MIN),
            Record::Victim(Box::new(kill)),
        ];
        let out = ex.batch(records, &|_| None);
        let [Output::Kill(e)] = out.as_slice() else {
            panic!("{out:?}");
        };
        // totalpages: the domain /pod's limit, 16384 pages (no swap on this test's node or
        // swap does not matter for it); adj 1000 adds 1000 × 16 = 16000.
        assert_eq!(e.constraint, Constraint::Memcg);
        let d = e.domain.as_ref().unwrap();
        assert_eq!(d.cgroup.as_deref(), Some("/pod"));
        assert_eq!(d.limit_bytes, 64 << 20);
        assert_eq!(d.found_by, FoundBy::OomLock);
        let tp = e.totalpages.unwrap();
        assert!(tp >= 16_384);
        let expected = (10 + 15_000 + 2) + 65536 / 4096 + 1000 * (tp / 1000) as i64;
        assert_eq!(e.victim.points, Some(expected));
        assert_eq!(e.candidates.len(), 2);
        assert_eq!(e.candidates[0].pid, Some(4211));
        assert_eq!(e.candidates[0].points, expected);
        assert_eq!(e.candidates[1].pid, Some(4190));
        assert_eq!(e.skipped.len(), 1);
        assert_eq!(e.skipped[0].reason, SkipReason::AdjMin);
        assert!(
            e.why.starts_with(&format!(
                "killed 4211 (stress-ng-vm): highest points {} of 2 candidates in /pod (limit 64 MiB hit by 4190 (node)); oom_score_adj 1000 added {}",
                group(expected),
                group(1000 * (tp / 1000) as i64)
            )),
            "{}",
            e.why
        );
        assert!(e.why.contains("next: 4190 (node)"), "{}", e.why);
    }

    #[test]
    fn an_oom_kills_sigkill_is_reported_once_as_oom_kill() {
        use memstress_ebpf::{CGROUP_DEPTH, CGROUP_NAME_LEN, CgroupPath, SignalKill, signal};
        let raw = sample_raw();
        let path = CgroupPath {
            depth: 0,
            truncated: 0,
            ids: [0; CGROUP_DEPTH],
            names: [[0; CGROUP_NAME_LEN]; CGROUP_DEPTH],
        };
        // The OOM killer's SIGKILL of the victim: SEND_SIG_PRIV, from the trigger.
        let sigkill = |victim: u32, ts_ns: u64| SignalKill {
            kind: kind::SIGNAL,
            signal: signal::SIGKILL,
            ts_ns,
            exit_ns: 0,
            term_ns: 0,
            flags: signal::PRIV | signal::VICTIM_CGROUP,
            exit_code: 0,
            sender: raw.trigger,
            victim: facts(victim, "stress-ng-vm", 1000, 1),
            sender_cgroup: path,
            victim_cgroup: path,
        };
        let decoded = |s: &SignalKill| {
            // SAFETY: viewing a plain-old-data struct as bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (s as *const SignalKill).cast::<u8>(),
                    std::mem::size_of::<SignalKill>(),
                )
            };
            record::decode(bytes).unwrap()
        };
        let Record::Signal(s) = decoded(&sigkill(4211, 100)) else {
            panic!("not a signal record")
        };
        assert!(s.privileged);
        assert_eq!(s.victim_cgroup.as_deref(), Some("/"));
        assert_eq!(s.sender.comm.as_deref(), Some("node"));
        let mut ex = Explainer::new(None, 0);
        let kill = OomKill::from_raw(&raw, 4096);
        let out = ex.batch(
            vec![
                decoded(&sigkill(4211, 100)),
                Record::Victim(Box::new(kill)),
                decoded(&sigkill(4300, 110)),
            ],
            &|_| None,
        );
        assert_eq!(out.len(), 1);
        assert!(matches!(out[0], Output::Kill(_)));
        assert_eq!(ex.kills_deadline(), Some(110 + kill::PRIV_HOLD_NS));
        // The other kernel SIGKILL had no OOM record: it is a kill line once its wait ends.
        let out = ex.release_kills(110 + kill::PRIV_HOLD_NS);
        let [Output::Signalled(k)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(k.victim.task.pid, Some(4300));
        assert_eq!(k.by, kill::KilledBy::Kernel);
    }

    #[test]
    fn explains_global_and_group_kills() {
        let mut raw = sample_raw();
        raw.chain.domain = memstress_ebpf::domain::GLOBAL;
        let kill = OomKill::from_raw(&raw, 4096);
        let mut ex = Explainer::new(None, 0);
        let out = ex.batch(vec![Record::Victim(Box::new(kill))], &|_| None);
        let Output::Kill(e) = &out[0] else { panic!() };
        assert_eq!(e.constraint, Constraint::Global);
        assert!(e.domain.is_none());
        assert!(e.why.contains("on the node (global OOM"), "{}", e.why);

        let raw = sample_raw();
        let first = OomKill::from_raw(&raw, 4096);
        let mut second = raw;
        second.victim = facts(4212, "sidecar", 0, 10);
        second.tp.pid = 4212;
        second.group_kill = 1;
        let second = OomKill::from_raw(&second, 4096);
        let mut ex = Explainer::new(None, 0);
        let out = ex.batch(
            vec![
                Record::Victim(Box::new(first)),
                Record::Victim(Box::new(second)),
            ],
            &|_| None,
        );
        let Output::Kill(e) = &out[1] else { panic!() };
        assert!(e.group_kill);
        assert!(
            e.why
                .starts_with("killed 4212 (sidecar) with 4211 (stress-ng-vm): memory.oom.group"),
            "{}",
            e.why
        );
    }

    /// What led to a kill is the counters as the kernel held them at each kill: a reader
    /// that reads late, or one that filtered the previous kill out, reports the same figures.
    #[test]
    fn pressure_does_not_depend_on_the_reader() {
        let kill = |seq: u64, victim_cgroup: u64, runs: u64, failcnt: u64| {
            let mut raw = sample_raw();
            raw.seq = seq;
            raw.ts_ns = seq * 1_000_000;
            raw.victim_cgroup.ids[0] = victim_cgroup;
            if victim_cgroup != 77 {
                raw.victim_cgroup.names[0] = [0; memstress_ebpf::CGROUP_NAME_LEN];
                raw.victim_cgroup.names[0][..5].copy_from_slice(b"other");
                raw.chain.levels[0].id = victim_cgroup;
            }
            raw.chain.levels[1].failcnt = failcnt;
            raw.pressure.runs = runs;
            raw.pressure.reclaimed = runs * 10;
            Record::Victim(Box::new(OomKill::from_raw(&raw, 4096)))
        };
        let pressures = |ex: &mut Explainer, late_runs: u64| -> Vec<(Option<u64>, Option<u64>)> {
            ex.version = Some(Version::V1);
            // The live map has moved on since: a reader that read it now would see this.
            let late = |_id| {
                Some(Pressure {
                    runs: late_runs,
                    ..Pressure::default()
                })
            };
            let mut out = Vec::new();
            for (seq, cgroup, runs, hits) in [(1, 77, 40, 300), (2, 78, 55, 310), (3, 77, 90, 330)]
            {
                for o in ex.batch(vec![kill(seq, cgroup, runs, hits)], &late) {
                    if let Output::Kill(e) = o {
                        let p = e.pressure.unwrap();
                        out.push((p.reclaim_runs, p.limit_hits));
                    }
                }
            }
            out
        };
        let mut everything = Explainer::new(None, 0);
        everything.domain_seen.insert(70, (Some(250), 0));
        let all = pressures(&mut everything, 1000);
        assert_eq!(
            all,
            vec![
                (Some(40), Some(50)),
                (Some(15), Some(10)),
                (Some(35), Some(20))
            ]
        );
        // Filtered to /pod/ctr (id 77): the second kill (in /pod/other) is not reported, and
        // the third still counts from it, as the unfiltered reader does.
        let mut filtered = Explainer::new(None, 0).only_in(Scope::Subtree {
            id: 77,
            path: "/pod/ctr".to_owned(),
        });
        filtered.domain_seen.insert(70, (Some(250), 0));
        let some = pressures(&mut filtered, 5000);
        assert_eq!(some, vec![all[0], all[2]]);
    }

    #[test]
    fn describes_pressure() {
        let p = PressureReport {
            since_ms: 1_400,
            limit_hits: Some(312),
            reclaim_runs: Some(40),
            reclaimed_kib: Some(2048),
            reclaim_ms: Some(12.0),
            reclaim_asked_kib: None,
        };
        assert_eq!(
            describe_pressure(&p).unwrap(),
            "limit hit 312× in 1.4 s, direct reclaim ran 40× (12.0 ms) and freed 2 MiB, then OOM"
        );
        assert_eq!(describe_pressure(&PressureReport::default()), None);
    }
}
