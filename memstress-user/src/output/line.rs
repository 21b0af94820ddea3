//! Every line memstress prints, as types: one variant of [`Line`] per line type, tagged by
//! its `type` field. `-o json` writes them as JSON objects (docs/events.md), text mode
//! renders them ([`super::text`]), `memstress schema` writes the JSON Schema generated from
//! them (docs/events.schema.json), and the lab reads them back.
//!
//! Fields are only ever added, never renamed. A figure the kernel did not give is `null`.

use std::{borrow::Cow, collections::BTreeMap, path::PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    explain::{
        Explained, Reaped,
        kill::{KillReport, KillSender, KilledBy, SignalName},
        predict::Prediction,
        record::CollateralKill,
    },
    forecast::{Forecast, ForecastScore, KillForecast},
    privilege::{Credentials, StressorUser},
    probe::Status,
    replay::{ReplayPlan, reproduce::ReplayResult},
    signals::Stop,
    spec::{Kind, OnOom, Pattern},
    stress::pressure::{Metric, PressureSample, PressureSummary},
    target::{
        cgroup::{Counters, PeakScope},
        kube::Identity,
        node::AvailableFrom,
        psi::Psi,
        workload::ContainerRef,
    },
};

/// One line of output.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line<'a> {
    /// The probes were loaded: which attached, which kernel facts are unknown.
    Attached(Cow<'a, Attached>),
    /// An OOM kill, explained.
    OomKill(Cow<'a, KillLine>),
    /// A task the OOM killer marked as its victim without a kill: it was already exiting.
    OomVictimExiting(Cow<'a, KillLine>),
    /// A process killed with a victim reported earlier (it shared the victim's memory).
    OomCollateral(Cow<'a, CollateralLine>),
    /// A victim exited, or the OOM reaper acted on it.
    OomReaped(Cow<'a, Reaped>),
    /// A SIGKILL that was not the OOM killer's, or a SIGTERM the process exited after: who
    /// sent it (a container runtime, the kubelet, the kernel, a process).
    Kill(Cow<'a, SignalLine>),
    /// The BPF side could not queue records (its ring buffer was full).
    Dropped(Cow<'a, Dropped>),
    /// `watch --metrics`: where the endpoint listens.
    Metrics(Cow<'a, MetricsLine>),
    /// `watch` ended.
    End(Cow<'a, EndLine>),
    /// A line that could not be encoded (never expected).
    Error(Cow<'a, ErrorLine>),
    /// `run`: the resolved plan, before anything starts.
    Plan(Cow<'a, Plan>),
    /// `run`: a stressor or app started.
    Started(Cow<'a, MemberLine>),
    /// `run`: a stressor started again after its OOM kill (`--on-oom restart`).
    Restarted(Cow<'a, MemberLine>),
    /// `run`: a stressor or app exited without an OOM kill memstress saw.
    Exited(Cow<'a, MemberLine>),
    /// `run`: the target's OOM-kill counter rose while the probes were loading.
    OomKillsBeforeProbes(Cow<'a, KillsBeforeProbes>),
    /// `run`: the run got as far as it can.
    Full(Cow<'a, FullLine>),
    /// `run`: the target cgroup was removed.
    TargetGone(Cow<'a, TargetGone>),
    /// `run --follow`: the target's replacement was found.
    TargetFollowed(Cow<'a, TargetFollowed>),
    /// `run`: the target's counters, every 100 ms.
    Sample(Cow<'a, SampleLine>),
    /// `run`: how it ended.
    Summary(Cow<'a, Summary>),
    /// `replay --dry-run`: one OOM report from the kernel's log, its tasks ranked with the
    /// kernel's formula.
    ReplayPlan(Cow<'a, ReplayPlan>),
    /// `replay`: one OOM report reproduced in a sandbox, and whether the kernel chose the
    /// same victim.
    ReplayResult(Cow<'a, ReplayResult>),
}

/// `attached`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Attached {
    /// Every program, in load order, and whether it attached.
    pub probes: Vec<Status>,
    /// Kernel facts this kernel lacks (their figures are `null`).
    pub unknown_kernel_facts: Vec<String>,
    /// The cgroup the kills are filtered to (`null`: the whole node).
    pub cgroup: Option<String>,
}

/// Extra facts about an OOM kill that the caller knows (a `run` knows its own stressors).
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct KillContext {
    /// Whether the victim was one of this run's stressors (absent in `watch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stressor: Option<bool>,
    /// Whether the victim was in the run's target, rather than elsewhere in the OOM domain
    /// that contains it (absent in `watch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_target: Option<bool>,
    /// What the forecast said before the kill (`run`, and `watch` of a cgroup, for kills in
    /// the domain they forecast): the `oom_kill` line's `forecast`.
    #[serde(skip)]
    pub forecast: Option<KillForecast>,
}

/// `oom_kill` and `oom_victim_exiting`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct KillLine {
    /// When, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The kill, explained.
    #[serde(flatten)]
    pub kill: Explained,
    /// What the caller knows of the victim.
    #[serde(flatten)]
    pub context: KillContext,
    /// What the forecast said before the kill (`run`, and `watch` of a cgroup, for kills in
    /// the domain they forecast; absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast: Option<KillForecast>,
}

/// `oom_collateral`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct CollateralLine {
    /// When, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// CLOCK_MONOTONIC ns of the SIGKILL.
    pub ts_ns: u64,
    /// The OOM.
    pub seq: u64,
    /// The victim it died with.
    pub victim_tid: u32,
    /// Who, and why.
    #[serde(flatten)]
    pub task: CollateralKill,
}

/// `kill`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct SignalLine {
    /// When the signal was sent, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The signal, its victim and sender, explained.
    #[serde(flatten)]
    pub kill: KillReport,
    /// What the caller knows of the victim (`run`: whether it is one of its stressors).
    #[serde(flatten)]
    pub context: KillContext,
}

/// `exited`'s `killed_by`: the signal that ended a member, when it was not the OOM killer's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KilledByLine {
    /// `SIGKILL` or `SIGTERM`.
    pub signal: SignalName,
    /// What the sender is.
    pub by: KilledBy,
    /// Who sent it.
    pub sender: KillSender,
}

/// `dropped`: records the BPF side could not queue since the last such line.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Dropped {
    /// Since the last `dropped` line.
    pub records: u64,
    /// Since the start.
    pub total: u64,
}

/// `metrics`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct MetricsLine {
    /// The address the endpoint listens on (the port the kernel picked for port 0).
    pub address: String,
    /// The URL to scrape.
    pub url: String,
}

/// `end`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct EndLine {
    /// OOM kills reported.
    pub oom_kills: u64,
    /// Victims marked while already exiting.
    pub victims_exiting: u64,
    /// `kill` lines: SIGKILLs that were not the OOM killer's, and SIGTERMs followed by an exit
    /// (absent from the lines of a memstress that had no `kill` lines).
    #[serde(default)]
    pub kills: u64,
    /// Records the BPF side could not queue.
    pub dropped_records: u64,
    /// `watch` of a cgroup: how the forecasts of its OOM domain did (`null`: no forecast,
    /// as node-wide or without a limit).
    #[serde(default)]
    pub forecast: Option<ForecastScore>,
}

/// `error`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ErrorLine {
    /// What went wrong.
    pub message: String,
}

/// `size` (a fixed total), `fill_to` (a working-set goal kept as the app moves),
/// `fill_to_available` (the node's `memory.available` held at a goal as the node moves),
/// `throttle` (`--throttle` alone: no stressors), or `pressure` (a PSI goal kept by a closed
/// loop).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `--size`.
    Size,
    /// `--fill-to`.
    FillTo,
    /// `--fill-to available=SIZE`.
    FillToAvailable,
    /// `--throttle` alone: no stressors; the target's `memory.high` is set and held.
    Throttle,
    /// `--pressure`: what the stressors hold follows the target's memory pressure.
    Pressure,
}

/// `run --throttle`: the target's `memory.high` for the run (cgroup v2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ThrottlePlan {
    /// The value set (rounded down to a page).
    pub high_bytes: u64,
    /// How it was resolved (`64Mi`, `50% of the 256 MiB limit of /pod`).
    pub from: String,
    /// `memory.high` before the run (`null`: `max`), written back when the run ends, by the
    /// controller or, after a SIGKILL, by its cleanup guard.
    pub original_bytes: Option<u64>,
}

/// `run --fill-to available=SIZE`: the node's `memory.available` (as the kubelet computes it)
/// that the stressors hold, and the bounds of the loop that holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AvailablePlan {
    /// The goal.
    pub goal_bytes: u64,
    /// How it was resolved (`100Mi`, `5% of the node's MemTotal (463 MiB)`).
    pub from: String,
    /// The loop leaves `memory.available` alone within this of the goal.
    pub deadband_bytes: u64,
    /// The kernel's MemAvailable below which the stressors never hold more (1/64 of MemTotal,
    /// at least 32 MiB): below it they shed memory, whatever the goal.
    pub floor_bytes: u64,
    /// The kubelet's figure less MemAvailable now: kernel memory (slab, page tables, BPF
    /// maps, …) that no cgroup's working set counts. At the goal, MemAvailable is about the
    /// goal less this.
    pub gap_bytes: u64,
    /// The lowest goal that keeps MemAvailable above the floor now (floor + gap); a lower one
    /// is refused.
    pub lowest_goal_bytes: u64,
}

/// `run --fill-to available=SIZE`: what the node's `memory.available` was while it was held
/// (the summary's `available`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AvailableHeld {
    /// The goal.
    pub goal_bytes: u64,
    /// Lowest and highest `memory.available` sampled from when the goal was first reached to
    /// the end (`null`: never reached).
    pub min_bytes: Option<u64>,
    /// See `min_bytes`.
    pub max_bytes: Option<u64>,
    /// The last sample's `memory.available`.
    pub end_bytes: Option<u64>,
    /// The lowest MemAvailable sampled over the run.
    pub min_mem_available_bytes: Option<u64>,
    /// How long the stressors were held back by the MemAvailable floor (`floor_bytes`), in ms.
    pub at_floor_ms: u64,
    /// The floor.
    pub floor_bytes: u64,
}

/// Direct reclaim by the target's own tasks, from the BPF reclaim probes
/// (`mm_vmscan_memcg_reclaim_begin/end`, aggregated in the kernel), since they attached:
/// reclaim at the limit and, on v2, reclaim forced above `memory.high`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReclaimSample {
    /// Direct reclaim runs.
    pub runs: u64,
    /// What they reclaimed.
    pub reclaimed_bytes: u64,
    /// Time spent in them, in µs.
    pub us: u64,
}

/// How long `memory.high` throttling held the target's own tasks since the probes attached,
/// from the BPF throttle probes (fentry/fexit on the kernel's `memory.high` handler,
/// aggregated in the kernel per memcg). An episode is one call of the handler with pages
/// over `memory.high` to pay for: the reclaim the task is made to do and, when that does not
/// bring the cgroup back under `memory.high`, its penalty sleep (at most 2 s a time).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ThrottleSample {
    /// Times a task was held.
    pub episodes: u64,
    /// Time held, in µs, summed over the tasks (two tasks held through the same second count
    /// two seconds).
    pub throttled_us: u64,
    /// The longest single episode, in µs.
    pub max_us: u64,
    /// What the tasks had charged over `memory.high` and were made to pay for.
    pub over_high_bytes: u64,
}

impl ThrottleSample {
    /// The kernel's counters (ns, pages) in the line's units.
    pub fn from_kernel(t: &memstress_ebpf::Throttle, page: u64) -> Self {
        Self {
            episodes: t.episodes,
            throttled_us: t.ns / 1000,
            max_us: t.max_ns / 1000,
            over_high_bytes: t.pages.saturating_mul(page),
        }
    }

    /// `12.3s (513×, longest 210ms)`; `None` when never held.
    pub fn text(&self) -> Option<String> {
        (self.episodes > 0).then(|| {
            format!(
                "{} ({}×, longest {})",
                duration_us(self.throttled_us),
                self.episodes,
                duration_us(self.max_us)
            )
        })
    }
}

/// A duration in µs, short: `850µs`, `12ms`, `3.4s`.
fn duration_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..10_000 => format!("{:.1}ms", us as f64 / 1e3),
        10_000..1_000_000 => format!("{}ms", us / 1_000),
        _ => format!("{:.1}s", us as f64 / 1e6),
    }
}

/// The resolved plan, printed before anything starts (and alone with `--dry-run`).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Plan {
    /// The target.
    pub target: PlanTarget,
    /// `size`, `fill_to`, `fill_to_available` or `throttle`.
    pub mode: Mode,
    /// The amount as given.
    pub size: String,
    /// How it was resolved.
    pub size_from: String,
    /// Total charge across all stressors (for `fill_to`: the first estimate, goal − working
    /// set now; for `fill_to_available`: memory.available now − the goal, at most what keeps
    /// MemAvailable above the floor).
    pub total_bytes: u64,
    /// `fill_to`: the working-set goal.
    pub fill_to_bytes: Option<u64>,
    /// Number of stressors (0 only for `--throttle` alone).
    pub workers: u32,
    /// Charge of each stressor (they add up to `total_bytes`, rounded to pages; empty only
    /// for `--throttle` alone).
    pub bytes_per_worker: Vec<u64>,
    /// What the bytes are: the cgroup's charge, stressors' own footprint included.
    pub bytes_are: String,
    /// A stressor's own charge while it holds nothing (runtime, page tables, kernel stack),
    /// measured on this machine: part of each share, so every share is larger.
    pub stressor_footprint_bytes: u64,
    /// Kernel memory the cgroup is charged per page of a shmem or page-cache payload beside
    /// the page itself (page-cache tree nodes, buffer heads), counted in each stressor's
    /// charge.
    pub kernel_bytes_per_page: u64,
    /// Kind of memory.
    pub kind: Kind,
    /// What stressors do once full.
    pub pattern: Pattern,
    /// Ramp time in seconds.
    pub ramp_s: Option<f64>,
    /// Hold time in seconds (`null`: until interrupted).
    pub hold_s: Option<f64>,
    /// OOM policy.
    pub on_oom: OnOom,
    /// oom_score_adj for the stressors (`null`: inherited).
    pub oom_score_adj: Option<i32>,
    /// Whether the plan pushes the cgroup past its limit.
    pub crosses_limit: bool,
    /// What the domain could still be charged before its limit, apps included (`None`: no
    /// limit).
    #[serde(skip)]
    pub headroom_bytes: Option<u64>,
    /// When it does: who the OOM killer would choose, predicted from /proc now. For a run
    /// whose domain is the node: every process of the node (with `--dry-run`, or when the run
    /// reaches the node's bounds).
    pub predicted_oom: Option<Prediction>,
    /// The run's OOM domain (a memcg, or the node) and which bound it meets first as it fills.
    pub domain: PlanDomain,
    /// Who the stressors run as; they hold no capabilities.
    pub stressor_user: StressorUser,
    /// The credentials to switch to (`None`: keep this process's own).
    #[serde(skip)]
    pub credentials: Option<Credentials>,
    /// `--follow`: a pod/container target that disappears is found again and re-injected.
    pub follow: bool,
    /// The StressChaos the run comes from (`null`: flags only).
    pub stresschaos: Option<StressChaosLine>,
    /// How this run differs from what its source (a StressChaos) would do, one sentence each.
    pub notes: Vec<String>,
    /// `--throttle`: the target's `memory.high` for the run (`null`: not throttled).
    #[serde(default)]
    pub throttle: Option<ThrottlePlan>,
    /// `--fill-to available=SIZE`: the node's `memory.available` to hold (`null` otherwise).
    #[serde(default)]
    pub available: Option<AvailablePlan>,
    /// `--pressure`: the goal and the bounds of the loop that keeps it (`null`: no goal).
    #[serde(default)]
    pub pressure: Option<PressurePlan>,
}

/// `run --pressure`: the PSI goal and the bounds the loop keeps to (cgroup v2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PressurePlan {
    /// The avg10 to hold, percent.
    pub goal_pct: f64,
    /// `some` or `full`.
    pub metric: Metric,
    /// The `memory.max` that applies (the target's, or its nearest limited ancestor's).
    pub limit_bytes: u64,
    /// The cgroup whose limit that is.
    pub limit_from: String,
    /// Where reclaim starts, which the stressors squeeze the rest of the domain against:
    /// the limit, or the `memory.high` `--throttle` sets.
    pub ceiling_bytes: u64,
    /// The margin kept below the limit: an eighth of it, at least 16 MiB.
    pub margin_bytes: u64,
    /// The most the stressors may hold in all now: the limit, less the margin, less the
    /// domain's memory that reclaim cannot free (anon, shmem, kernel). It moves with the
    /// domain during the run.
    pub cap_bytes: u64,
}

/// What bounds a run: a memory cgroup's limit, or nothing short of the node's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DomainKind {
    /// A limit (the target's or an ancestor's) that the run reaches before the node's bounds:
    /// an OOM there kills inside that cgroup.
    Memcg,
    /// No limit on the target or any ancestor, or one beyond what the node can give: an OOM
    /// is global, and its kill can take any process on the node.
    Node,
}

/// The bound a run meets first as it fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FirstBound {
    /// The domain's memory limit: an OOM kill in that cgroup.
    Limit,
    /// The node's `memory.available` falls below the eviction threshold: the kubelet evicts.
    Eviction,
    /// The node's MemAvailable runs out: a global OOM.
    NodeOom,
    /// The run stays within every bound.
    Neither,
}

/// The plan's OOM domain: what bounds the run, the node's memory as the kubelet and the
/// kernel see it, and which bound comes first.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlanDomain {
    /// `memcg` or `node`.
    pub kind: DomainKind,
    /// The cgroup whose limit applies (`null`: none anywhere above the target).
    pub cgroup: Option<String>,
    /// Its limit (`null`: none).
    pub limit_bytes: Option<u64>,
    /// What the domain can still be charged before that limit (`null`: no limit).
    pub headroom_bytes: Option<u64>,
    /// The node's `memory.available` as the kubelet computes it (MemTotal − the root cgroup's
    /// working set).
    pub node_available_bytes: u64,
    /// How `node_available_bytes` was computed: `root_memcg` (the kubelet's way) or
    /// `mem_available` (the root memcg is not visible: the kernel's MemAvailable).
    pub node_available_from: AvailableFrom,
    /// The kernel's MemAvailable: about what can be allocated before a global OOM.
    pub node_mem_available_bytes: u64,
    /// `--eviction-threshold` (the kubelet's `memory.available<100Mi` by default; 0: none).
    pub eviction_threshold_bytes: u64,
    /// What the node can still be charged before its `memory.available` falls below the
    /// threshold (`null`: no threshold).
    pub eviction_after_bytes: Option<u64>,
    /// What the run adds to the node: its stressors' total and any app it starts.
    pub run_bytes: u64,
    /// Which bound the run meets first: `limit`, `eviction`, `node_oom` or `neither`.
    pub first: FirstBound,
    /// `--allow-node-oom`: a run that reaches the node's bounds was allowed.
    pub allow_node_oom: bool,
}

/// The target as planned.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlanTarget {
    /// Cgroup path (from the hierarchy's root: /proc/PID/cgroup's form).
    pub path: String,
    /// Its directory (under `--cgroup-root` when given).
    pub dir: String,
    /// 1 or 2.
    #[schemars(range(min = 1, max = 2))]
    pub version: u8,
    /// Created for this run (and removed after it).
    pub created: bool,
    /// The limit that applies (`null`: none).
    pub limit_bytes: Option<u64>,
    /// The cgroup whose limit that is (the target or an ancestor).
    pub limit_from: Option<String>,
    /// Usage now.
    pub usage_bytes: u64,
    /// Working set now (usage − inactive_file).
    pub working_set_bytes: u64,
    /// The Kubernetes pod or container it is (`--pod`, `--container`; `null` otherwise).
    pub kubernetes: Option<Identity>,
    /// The container it is (`--container`, in a pod or one of Docker's or containerd's
    /// own; `null` otherwise).
    #[serde(default)]
    pub container: Option<ContainerRef>,
}

/// A Chaos Mesh StressChaos's memory stressor, as read from its file (the plan's
/// `stresschaos`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StressChaosLine {
    /// The file.
    pub file: PathBuf,
    /// `metadata.name`.
    pub name: Option<String>,
    /// `metadata.namespace`.
    pub namespace: Option<String>,
    /// `workers`.
    pub workers: u32,
    /// `size` as written.
    pub size_text: String,
    /// `time` (the ramp).
    pub time: Option<String>,
    /// `oomScoreAdj`.
    pub oom_score_adj: Option<i32>,
    /// `options` (memStress flags).
    pub options: Vec<String>,
    /// `spec.duration`.
    pub duration: Option<String>,
    /// What can be applied of the selector.
    pub selector: SelectorLine,
}

impl StressChaosLine {
    /// `StressChaos namespace/name`, or the file.
    pub fn label(&self) -> String {
        match (&self.namespace, &self.name) {
            (Some(ns), Some(n)) => format!("StressChaos {ns}/{n}"),
            (None, Some(n)) => format!("StressChaos {n}"),
            _ => format!("StressChaos {}", self.file.display()),
        }
    }
}

/// A StressChaos's selector, as far as a node can apply it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SelectorLine {
    /// `selector.pods`: namespace -> pod names.
    pub pods: BTreeMap<String, Vec<String>>,
    /// `containerNames`.
    pub container_names: Vec<String>,
    /// Selector keys that only the cluster API can evaluate (`labelSelectors`, …).
    pub cluster_only: Vec<String>,
    /// `mode` (`one`, `all`, `fixed`, …).
    pub mode: Option<String>,
    /// `mode`'s `value`.
    pub value: Option<String>,
}

/// A stressor, or a process standing in for an application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Holds memory for the stress.
    Stressor,
    /// Stands in for an application (the demo's app).
    App,
}

impl Role {
    /// `stressor` or `app`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stressor => "stressor",
            Self::App => "app",
        }
    }
}

/// `started`, `restarted`, `exited`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct MemberLine {
    /// Position in the run.
    pub index: usize,
    /// Stressor or app.
    pub role: Role,
    /// Its comm.
    pub name: String,
    /// Its pid.
    pub pid: Option<u32>,
    /// Its share (the charge it holds when full).
    pub bytes: u64,
    /// `exited`: how (`exit code N`, `signal N`, `SIGKILL (not by the OOM killer)`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<String>,
    /// `restarted`: how many times so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u32>,
    /// `exited`: the signal that ended it and its sender, when memstress saw one that was not
    /// the OOM killer's (the matching `kill` line has the details).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killed_by: Option<KilledByLine>,
}

/// `oom_kills_before_probes`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct KillsBeforeProbes {
    /// The target.
    pub cgroup: String,
    /// OOM kills its counter rose by while the probes were loading.
    pub count: u64,
}

/// `full`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct FullLine {
    /// Payload the surviving stressors hold.
    pub held_bytes: u64,
    /// What they cost the cgroup by their own account (payload + footprint).
    pub stressors_charge_bytes: u64,
    /// The cgroup's usage increase since the stressors started.
    pub charged_bytes: Option<u64>,
    /// The cgroup's usage.
    pub usage_bytes: u64,
    /// Stressors the OOM killer took before the run was full (their shares are not held).
    pub stressors_oom_killed: usize,
    /// Kind of memory held.
    pub kind: Kind,
    /// What the stressors do with it.
    pub pattern: Pattern,
    /// Since the run started.
    pub t_ms: u64,
}

/// `target_gone`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct TargetGone {
    /// The cgroup that was removed (or, with `cause` `init_exited`, whose container ended).
    pub cgroup: String,
    /// Made again at the same path (a container restart).
    pub recreated: bool,
    /// `--follow`: memstress looks for the replacement.
    pub following: bool,
    /// Since the run started.
    pub t_ms: u64,
    /// What showed it: the container's init exited, or the cgroup was removed.
    #[serde(default)]
    pub cause: GoneCause,
    /// The same, in words.
    #[serde(default)]
    pub reason: String,
    /// The container's init process that exited (`cause` `init_exited`), else `null`.
    #[serde(default)]
    pub init_pid: Option<u32>,
}

/// What showed that a target was gone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GoneCause {
    /// The target cgroup disappeared (or was made again at its path).
    #[default]
    CgroupRemoved,
    /// The container's init process exited: the container ended, as its runtime sees it.
    InitExited,
}

/// `target_followed`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct TargetFollowed {
    /// The cgroup that disappeared.
    pub previous: String,
    /// Its container id.
    pub previous_container_id: Option<String>,
    /// The replacement.
    pub cgroup: String,
    /// The replacement's container id.
    pub container_id: Option<String>,
    /// The replacement's container name.
    pub container_name: Option<String>,
    /// The pod.
    pub pod_uid: String,
    /// How long the target was gone.
    pub gone_ms: u64,
    /// Since the run started.
    pub t_ms: u64,
    /// The replacement's init process, watched for its end (`null`: not found; its cgroup's
    /// removal is then what ends it).
    #[serde(default)]
    pub init_pid: Option<u32>,
    /// The stressors run in the replacement's PID namespace (the kernel kills them with it).
    #[serde(default)]
    pub in_pid_namespace: bool,
}

/// `sample`: the target's counters.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct SampleLine {
    /// Since the run started.
    pub t_ms: u64,
    /// The cgroup's own counters (over its lifetime, as the kernel keeps them).
    #[serde(flatten)]
    pub counters: Counters,
    /// The limit that applies.
    pub limit_bytes: Option<u64>,
    /// Payload the stressors hold.
    pub stressors_held_bytes: u64,
    /// What they cost the cgroup by their own account.
    pub stressors_charge_bytes: u64,
    /// Stressors running.
    pub stressors_alive: usize,
    /// Limit hits of the target since the run started.
    pub run_limit_hits: u64,
    /// OOM kills this run reported so far (and counted before its probes attached).
    pub run_oom_kills: u64,
    /// The next OOM kill of the target's OOM domain, forecast (`null`: no limit applies, or
    /// the domain cannot be read).
    #[serde(default)]
    pub forecast: Option<Forecast>,
    /// The target's own memory pressure (v2 `memory.pressure`; `null` on v1).
    #[serde(default)]
    pub psi: Option<Psi>,
    /// The node's memory pressure (`/proc/pressure/memory`; `null` on a kernel without PSI).
    #[serde(default)]
    pub node_psi: Option<Psi>,
    /// The node's `memory.available` as the kubelet computes it (MemTotal − the root memcg's
    /// working set; MemAvailable where the root memcg is not visible): what its eviction
    /// thresholds compare against.
    #[serde(default)]
    pub node_available_bytes: Option<u64>,
    /// The kernel's MemAvailable (`/proc/meminfo`): what `--fill-to available=` keeps above
    /// its floor.
    #[serde(default)]
    pub node_mem_available_bytes: Option<u64>,
    /// v2 `memory.high` of the target now (`null`: `max`, or cgroup v1).
    #[serde(default)]
    pub memory_high_bytes: Option<u64>,
    /// v2 `memory.events` `high` of the target since the run started: charges that took it
    /// over `memory.high` (`null` on cgroup v1).
    #[serde(default)]
    pub run_high_events: Option<u64>,
    /// Direct reclaim by the target's tasks since the probes attached (`null`: none counted
    /// yet, or the reclaim probes are not attached).
    #[serde(default)]
    pub run_reclaim: Option<ReclaimSample>,
    /// How long `memory.high` throttling held the target's tasks since the probes attached
    /// (`null`: the throttle probes are not attached, as where fentry/fexit do not load:
    /// unknown, not zero).
    #[serde(default)]
    pub run_throttle: Option<ThrottleSample>,
    /// `run --pressure`: the goal and what the loop is doing (`null` otherwise).
    #[serde(default)]
    pub pressure: Option<PressureSample>,
}

#[cfg(test)]
impl SampleLine {
    /// A sample at `t_ms` with nothing in it (no stressors, no limit, nothing known), for
    /// tests to fill in the fields they are about.
    pub(crate) fn empty(t_ms: u64) -> Self {
        Self {
            t_ms,
            counters: Counters::default(),
            limit_bytes: None,
            stressors_held_bytes: 0,
            stressors_charge_bytes: 0,
            stressors_alive: 0,
            run_limit_hits: 0,
            run_oom_kills: 0,
            forecast: None,
            psi: None,
            node_psi: None,
            node_available_bytes: None,
            node_mem_available_bytes: None,
            memory_high_bytes: None,
            run_high_events: None,
            run_reclaim: None,
            run_throttle: None,
            pressure: None,
        }
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The hold time passed (or the demo saw its kill).
    Completed,
    /// Ctrl-C or SIGTERM.
    Interrupted,
    /// A stressor was OOM-killed and `--on-oom stop` ended the run.
    StoppedByOom,
    /// Every stressor was OOM-killed (`--on-oom report`); nothing left to hold.
    AllStressorsKilled,
    /// The target cgroup disappeared.
    TargetGone,
    /// The demo's deadline passed without the expected kill.
    TimedOut,
    /// A stressor failed.
    Failed,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Completed => "completed",
            Self::Interrupted => "interrupted",
            Self::StoppedByOom => "stopped by an OOM kill (--on-oom stop)",
            Self::AllStressorsKilled => "every stressor OOM-killed",
            Self::TargetGone => "the target cgroup is gone",
            Self::TimedOut => "timed out",
            Self::Failed => "failed",
        })
    }
}

/// `summary`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Summary {
    /// How the run ended.
    pub outcome: Outcome,
    /// Target cgroup.
    pub target: String,
    /// Bytes asked for (for `fill_to`: the stressors' charge at the end).
    pub requested_bytes: u64,
    /// `fill_to`: the working-set goal.
    pub fill_to_bytes: Option<u64>,
    /// Payload the stressors still running held at the end (OOM-killed ones hold nothing).
    pub held_bytes: u64,
    /// What the stressors still running cost the cgroup at the end by their own account:
    /// payload plus their process footprint (runtime, page tables, kernel stack).
    pub stressor_charge_bytes: u64,
    /// What the stressors were charged, by their own account, when they were full (`null`
    /// if they never were).
    pub stressors_charged_bytes: Option<u64>,
    /// Usage increase from before the stressors started to when they were full (`null` if
    /// they never got there). It differs from `stressors_charged_bytes` when other processes
    /// in the cgroup allocated or freed meanwhile.
    pub charged_bytes: Option<u64>,
    /// The target's usage `charged_bytes` counts from: read before the stressors started,
    /// and, when the controller itself is charged to the target (`--self`, or a target that
    /// contains memstress's own cgroup), once its probes were attached and its own usage had
    /// settled.
    pub baseline_usage_bytes: u64,
    /// When the controller is charged to the target: how much the target's usage rose from
    /// the run's first reading to its baseline, while the controller loaded its probes (BTF,
    /// programs, maps) before any stressor started. Its own share: in the target's usage, not
    /// in `charged_bytes` nor in `--size`. `null` when the controller is not in the target.
    pub controller_bytes: Option<u64>,
    /// Highest usage sampled (every 100 ms), or the kernel's peak when it covers this run.
    pub peak_usage_bytes: u64,
    /// The kernel's own high-water mark (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`),
    /// over `kernel_peak_scope`.
    pub kernel_peak_usage_bytes: Option<u64>,
    /// `run`: the kernel's peak covers this run only (a cgroup created for it, or v2's
    /// per-reader reset of `memory.peak`); `cgroup_lifetime`: since the cgroup was created,
    /// earlier runs and processes included (v1's `memory.max_usage_in_bytes` of an existing
    /// cgroup, which memstress does not reset).
    pub kernel_peak_scope: Option<PeakScope>,
    /// The limit that applied.
    pub limit_bytes: Option<u64>,
    /// OOM kills of this run's stressors.
    pub oom_kills_stressors: u32,
    /// OOM kills of other processes its stressors' pressure caused: in the target, or
    /// elsewhere in the OOM domain that contains it.
    pub oom_kills_others: u32,
    /// Of those, kills outside the target (a sibling cgroup under the same limit).
    pub oom_kills_outside_target: u32,
    /// The signal that ended the run (`null`: it ended by itself).
    pub signal: Option<Stop>,
    /// Stressor restarts (`--on-oom restart`).
    pub restarts: u32,
    /// Records the BPF side could not deliver (0 unless the ring buffer overflowed).
    pub dropped_records: u64,
    /// Times `--follow` found the target again after it disappeared and re-injected.
    pub follows: u32,
    /// Time to fill, in ms (`null` if never full).
    pub fill_ms: Option<u64>,
    /// Time held full, in ms.
    pub hold_ms: u64,
    /// Whole run, in ms.
    pub total_ms: u64,
    /// How the forecasts of the target's OOM domain did (`null`: no limit applies).
    #[serde(default)]
    pub forecast: Option<ForecastScore>,
    /// `--fill-to available=`: what the node's `memory.available` was while it was held
    /// (`null` otherwise).
    #[serde(default)]
    pub available: Option<AvailableHeld>,
    /// How long `memory.high` throttling held the target's tasks over the run, as the last
    /// sample read it (`null`: the throttle probes are not attached).
    #[serde(default)]
    pub throttled: Option<ThrottleSample>,
    /// `run --pressure`: how the goal was kept (`null` otherwise).
    #[serde(default)]
    pub pressure: Option<PressureSummary>,
}

/// The JSON Schema of every line, generated from [`Line`]: what `memstress schema` prints and
/// docs/events.schema.json holds, pretty-printed, with a trailing newline. Objects admit no
/// other properties than their types have (a line type's root by `unevaluatedProperties`,
/// which sees its `type` beside the referenced definition; every other object by
/// `additionalProperties`), so a consumer's schema check catches a field it does not know.
pub fn schema_text() -> String {
    let mut schema = schemars::schema_for!(Line<'static>);
    schema.insert(
        "$id".to_owned(),
        "https://github.com/memstress/memstress/docs/events.schema.json".into(),
    );
    schema.insert("title".to_owned(), "memstress JSON lines".into());
    schema.insert(
        "description".to_owned(),
        "One object per line on stdout with -o json (docs/events.md); `type` says which. \
         Generated from memstress's own types by `memstress schema` (`cargo xtask schema`); \
         fields are only ever added."
            .into(),
    );
    let mut value = schema.to_value();
    close_objects(&mut value);
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

/// One dispatch rule of the schema: lines of this `type` are checked against that
/// definition, and nothing it does not define.
#[derive(Serialize)]
struct Rule {
    #[serde(rename = "if")]
    when: Dispatch,
    #[serde(rename = "then")]
    check: Checked,
}

#[derive(Serialize)]
struct Dispatch {
    properties: TypeIs,
    required: [&'static str; 1],
}

#[derive(Serialize)]
struct TypeIs {
    #[serde(rename = "type")]
    type_: Const,
}

#[derive(Serialize)]
struct Const {
    #[serde(rename = "const")]
    value: String,
}

#[derive(Serialize)]
struct Checked {
    description: serde_json::Value,
    #[serde(rename = "$ref")]
    target: String,
    properties: TypeIs,
    #[serde(rename = "unevaluatedProperties")]
    unevaluated_properties: bool,
}

/// See [`schema_text`]: schemars describes [`Line`] as a `oneOf` of its variants, each
/// `{"properties": {"type": {"const": …}}, "$ref": …}`. A validator then reports a bad line
/// as matching none of them; dispatching on `type` instead (`allOf` of `if`/`then`) reports
/// the field that is wrong.
fn close_objects(schema: &mut serde_json::Value) {
    use serde_json::Value;
    let type_is = |t: &str| TypeIs {
        type_: Const {
            value: t.to_owned(),
        },
    };
    let mut roots = Vec::new();
    let mut types = Vec::new();
    let mut rules = Vec::new();
    if let Some(Value::Array(variants)) = schema.as_object_mut().and_then(|s| s.remove("oneOf")) {
        for variant in variants {
            let (Some(t), Some(target)) = (
                variant["properties"]["type"]["const"].as_str(),
                variant["$ref"].as_str(),
            ) else {
                continue;
            };
            roots.push(target.trim_start_matches("#/$defs/").to_owned());
            types.push(Value::from(t));
            rules.push(Rule {
                when: Dispatch {
                    properties: type_is(t),
                    required: ["type"],
                },
                check: Checked {
                    description: variant["description"].clone(),
                    target: target.to_owned(),
                    properties: type_is(t),
                    unevaluated_properties: false,
                },
            });
        }
    }
    if let Value::Object(top) = schema {
        let mut enumerated = serde_json::Map::new();
        enumerated.insert("enum".to_owned(), Value::Array(types));
        let mut properties = serde_json::Map::new();
        properties.insert("type".to_owned(), Value::Object(enumerated));
        top.insert("type".to_owned(), Value::from("object"));
        top.insert("required".to_owned(), Value::from(vec!["type"]));
        top.insert("properties".to_owned(), Value::Object(properties));
        top.insert(
            "allOf".to_owned(),
            serde_json::to_value(rules).unwrap_or_default(),
        );
    }
    if let Some(Value::Object(defs)) = schema.get_mut("$defs") {
        for (name, def) in defs.iter_mut() {
            if let Value::Object(def) = def
                && def.contains_key("properties")
                && !roots.contains(name)
            {
                def.insert("additionalProperties".to_owned(), Value::Bool(false));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_figures_in_the_lines_units() {
        let kernel = memstress_ebpf::Throttle {
            episodes: 3,
            ns: 1_234_567_890,
            max_ns: 999_999,
            pages: 96,
        };
        let t = ThrottleSample::from_kernel(&kernel, 4096);
        assert_eq!(
            t,
            ThrottleSample {
                episodes: 3,
                throttled_us: 1_234_567,
                max_us: 999,
                over_high_bytes: 96 * 4096,
            }
        );
        assert_eq!(t.text().as_deref(), Some("1.2s (3×, longest 999µs)"));
        // Never held: nothing to say (the probes are attached, the figures are zero).
        assert_eq!(ThrottleSample::default().text(), None);
    }

    #[test]
    fn short_durations() {
        assert_eq!(duration_us(0), "0µs");
        assert_eq!(duration_us(999), "999µs");
        assert_eq!(duration_us(1_000), "1.0ms");
        assert_eq!(duration_us(9_949), "9.9ms");
        assert_eq!(duration_us(10_000), "10ms");
        assert_eq!(duration_us(999_999), "999ms");
        assert_eq!(duration_us(1_000_000), "1.0s");
        assert_eq!(duration_us(12_345_678), "12.3s");
    }

    /// Unknown (the probes are not attached) is `null`, never zeros; a line from before the
    /// field existed reads back as unknown.
    #[test]
    fn throttle_unknown_is_null() {
        let json = |run_throttle: Option<ThrottleSample>| {
            let line = SampleLine {
                run_throttle,
                ..SampleLine::empty(100)
            };
            serde_json::to_value(Line::Sample(Cow::Owned(line))).unwrap()
        };
        let unknown = json(None);
        assert!(unknown["run_throttle"].is_null(), "{unknown}");
        let none_yet = json(Some(ThrottleSample::default()));
        assert_eq!(none_yet["run_throttle"]["episodes"], 0);
        assert_eq!(none_yet["run_throttle"]["throttled_us"], 0);
        let mut old = unknown.clone();
        old.as_object_mut().unwrap().remove("run_throttle");
        let Line::Sample(back) = serde_json::from_value::<Line<'static>>(old).unwrap() else {
            panic!("not a sample");
        };
        assert_eq!(back.run_throttle, None);
    }
}
