//! Lab scenarios: TOML files declaring cgroups, applications, the stress, and the outcome
//! expected. See xtask/scenarios/README.md for the format.

use std::{
    fs,
    path::{Component, Path, PathBuf},
    time::Duration,
};

use memstress::size::SizeSpec;
use serde::Deserialize;

/// Largest scenario file accepted (a scenario is a few dozen lines).
pub const MAX_FILE: u64 = 64 << 10;

/// What a `replay` step names instead of a file: the kernel messages the scenario has seen so
/// far.
pub const DMESG: &str = "{dmesg}";

/// A guest's memory when its scenario does not say (`memory`), in MiB: qemu's `-m`.
pub const DEFAULT_GUEST_MEMORY_MIB: u64 = 2048;

/// The range a scenario's `memory` may ask for, in MiB.
pub const GUEST_MEMORY_MIB: std::ops::RangeInclusive<u64> = 384..=8192;

fn one() -> u32 {
    1
}

/// A scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name (also the output directory).
    pub name: String,
    /// What it shows.
    pub description: String,
    /// `cgroup-v2`: only where the memory controller is on cgroup v2.
    #[serde(default)]
    pub requires: Option<String>,
    /// Bound on the whole scenario.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// The memory of the guest it runs in (`512Mi`): the lab boots a guest of that size for
    /// it. A scenario that says it drives the node's own memory; it is skipped where the
    /// machine has more than that (this machine's own kernel, a guest of another size).
    #[serde(default)]
    pub memory: Option<String>,
    /// Runs of the whole scenario allowed before it fails (default 1): for a scenario whose
    /// plant the lab cannot pin down from one boot to the next (how much memory pressure an
    /// application's page cache gives per MiB squeezed), each run from scratch, with fresh
    /// cgroups and applications. A failed run's report is kept as `<name>-attempt-N/`, and
    /// the verdict line says which run passed.
    #[serde(default = "one")]
    pub attempts: u32,
    /// Cgroups to create under the lab root.
    #[serde(default, rename = "cgroup")]
    pub cgroups: Vec<CgroupSpec>,
    /// Applications to start first.
    #[serde(default, rename = "app")]
    pub apps: Vec<AppSpec>,
    /// What happens, in order.
    #[serde(default, rename = "step")]
    pub steps: Vec<Step>,
    /// What must be true afterwards.
    #[serde(default, rename = "expect")]
    pub expects: Vec<Expect>,
    /// The directory of the scenario file: the files its steps name are read from there.
    #[serde(skip)]
    pub dir: PathBuf,
}

fn default_timeout() -> Duration {
    Duration::from_secs(120)
}

mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("`{text}` is not a duration ({e})")))
    }
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| {
            humantime::parse_duration(&t)
                .map_err(|e| serde::de::Error::custom(format!("`{t}` is not a duration ({e})")))
        })
        .transpose()
    }
}

/// A cgroup of the scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupSpec {
    /// Path under the lab root (`pod`, `pods/web`).
    pub name: String,
    /// Memory limit.
    #[serde(default)]
    pub limit: Option<String>,
    /// `memory.oom.group` (cgroup v2).
    #[serde(default)]
    pub oom_group: bool,
}

/// What to do when an application fails its liveness check.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Liveness {
    /// Nothing: it stays dead.
    #[default]
    None,
    /// Start the application again.
    Restart,
    /// Restart its container: kill everything in its cgroup, recreate the cgroup, start the
    /// application again (what a kubelet does).
    RestartCgroup,
}

/// An application: a process holding memory that answers a liveness check.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// Its name (and comm).
    pub name: String,
    /// The cgroup it runs in.
    pub cgroup: String,
    /// Memory it holds.
    pub size: String,
    /// Its oom_score_adj.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// Used instead when `oom_score_adj` cannot be set (lowering it needs
    /// CAP_SYS_RESOURCE); the report says so.
    #[serde(default)]
    pub fallback_oom_score_adj: Option<i32>,
    /// What its supervisor does when it fails the liveness check.
    #[serde(default)]
    pub liveness: Liveness,
    /// Besides its memory, re-read a file of this size (on the lab's file directory) at
    /// random, a page at a time, without pause: an app whose page cache is its working set
    /// (`memstress-lab app`). Squeezed below it, the app refaults, and the cgroup's memory
    /// pressure rises.
    #[serde(default)]
    pub reread: Option<String>,
    /// With `reread`: threads reading it (default 1).
    #[serde(default)]
    pub threads: Option<u32>,
    /// With `reread`: bytes per read (default a page).
    #[serde(default)]
    pub block: Option<String>,
    /// With `reread`: read it through a mapping (a hit is a load, a miss a page fault)
    /// instead of `read(2)`.
    #[serde(default)]
    pub mmap: bool,
    /// With `reread`: rounds of work (a xorshift step each) after each read (default 0): the
    /// more, the smaller the share of the app's time a refault costs.
    #[serde(default)]
    pub work: Option<u32>,
    /// With `reread`: how the reads spread over the file (default 1, uniform): the read at
    /// `size · u^skew` for `u` uniform in [0, 1), a hot head and a cold tail, as most data is
    /// read.
    #[serde(default)]
    pub skew: Option<u32>,
}

/// One step.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// `memstress run` arguments; `{cgroup-name}` becomes that cgroup's path.
    #[serde(default)]
    pub run: Option<String>,
    /// Do not wait for the run to end (it is interrupted when the scenario ends).
    #[serde(default)]
    pub background: bool,
    /// Wait this long.
    #[serde(default, with = "opt_duration")]
    pub sleep: Option<Duration>,
    /// Tell application `resize` to hold `size`.
    #[serde(default)]
    pub resize: Option<String>,
    /// With `resize`.
    #[serde(default)]
    pub size: Option<String>,
    /// Wait until this many OOM kills were reported in total (bounded by the timeout).
    #[serde(default)]
    pub wait_kills: Option<u32>,
    /// Wait until the background run of this step printed its `full` line (what it was asked
    /// to hold is held, or its `--fill-to` goal reached), bounded by the timeout: under qemu
    /// the probes' loading and the fill take seconds, more on a busy machine.
    #[serde(default)]
    pub wait_full: Option<usize>,
    /// `memstress replay -o json` of a kernel log: a file (relative to the scenario file's
    /// directory), or `{dmesg}`, the kernel messages this scenario has seen so far.
    #[serde(default)]
    pub replay: Option<String>,
    /// Send `signal` to the background run of step `stop` and wait (up to 15 s) for it to
    /// end: `SIGINT` (the default: a normal end), `SIGTERM` or `SIGKILL` (nothing of the
    /// controller's own cleanup runs; what a SIGKILL leaves is its cleanup guard's to undo).
    #[serde(default)]
    pub stop: Option<usize>,
    /// With `stop`.
    #[serde(default)]
    pub signal: Option<String>,
}

/// The signals a `stop` step may send, by name.
pub const SIGNALS: [(&str, i32); 3] = [
    ("SIGINT", libc::SIGINT),
    ("SIGTERM", libc::SIGTERM),
    ("SIGKILL", libc::SIGKILL),
];

/// An expectation, checked against what was recorded.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum Expect {
    /// During step `step`, the cgroup's usage rose by `size` ± `tolerance_pct` (from the
    /// step's start to the highest sample).
    UsageRise {
        /// Cgroup name.
        cgroup: String,
        /// Step index.
        step: usize,
        /// Expected rise.
        size: String,
        /// Tolerance in percent.
        tolerance_pct: f64,
    },
    /// OOM kills reported by memstress, within `[min, max]` (during `step`, if given).
    Kills {
        /// At least.
        #[serde(default)]
        min: Option<u32>,
        /// At most.
        #[serde(default)]
        max: Option<u32>,
        /// Only during this step.
        #[serde(default)]
        step: Option<usize>,
    },
    /// Every victim's comm is one of these.
    Victims {
        /// Allowed comms.
        comms: Vec<String>,
    },
    /// The first victims, in order, are these (comms).
    KillOrder {
        /// Expected order.
        comms: Vec<String>,
    },
    /// These were never killed.
    NeverKilled {
        /// Comms.
        comms: Vec<String>,
    },
    /// The `--dry-run` prediction ranked these (comms) in this order.
    PredictedOrder {
        /// Step whose plan holds the prediction.
        step: usize,
        /// Expected order (others may come between).
        comms: Vec<String>,
    },
    /// Every kill memstress reported matches a dmesg `Killed process` line and vice versa,
    /// and each is explained (a why, kernel-sourced candidates).
    ExplainedKills,
    /// Application `app` was restarted at least `min` times.
    AppRestarts {
        /// App name.
        app: String,
        /// At least.
        min: u32,
    },
    /// The run of step `step` ended with this outcome (its summary, or its exit code).
    StepOutcome {
        /// Step index.
        step: usize,
        /// `completed`, `target_gone`, `stopped_by_oom`, … or an exit code.
        outcome: String,
    },
    /// At the end of step `step`, the cgroup's working set was at most `max` of its usage.
    WorkingSetFraction {
        /// Cgroup name.
        cgroup: String,
        /// Step index.
        step: usize,
        /// Largest working set / usage.
        max: f64,
    },
    /// Every process in the cgroup was killed by one OOM (`memory.oom.group`), and each
    /// kill was reported.
    GroupKilled {
        /// Cgroup name.
        cgroup: String,
    },
    /// Where the kernel's own `oom_badness` result could be read (fexit attached), every
    /// ranked candidate carries it (`points_from = "oom_badness"`), the victim's points are
    /// the kernel's `chosen_points`, and memstress's formula agrees with the kernel within
    /// `tolerance_pct`. Where fexit is refused, every candidate is marked `formula`.
    KernelPoints {
        /// Largest disagreement between the formula and the kernel, in percent.
        tolerance_pct: f64,
    },
    /// v2: the cgroup's `memory.events` `high` rose by at least `min` during step `step`
    /// (the lab's own readings), and, when that step is a run, its last `sample` line's
    /// `run_high_events` says so too.
    HighEvents {
        /// Cgroup name.
        cgroup: String,
        /// Step index.
        step: usize,
        /// At least.
        min: u64,
    },
    /// v2: while the run of step `step` was on, the cgroup's `memory.high` was `size` (at
    /// least one reading), and within `within` (default 2 s) of the run's end it was back to
    /// what it was before the step started, and stayed so until the next run step
    /// started (or to the scenario's end).
    MemoryHighRestored {
        /// Cgroup name.
        cgroup: String,
        /// A `run` step.
        step: usize,
        /// The `memory.high` the run set.
        size: String,
        /// How soon after the run ended.
        #[serde(default, with = "opt_duration")]
        within: Option<Duration>,
    },
    /// During step `step`, the cgroup's usage never went above `max`.
    UsageAtMost {
        /// Cgroup name.
        cgroup: String,
        /// Step index.
        step: usize,
        /// At most.
        max: String,
    },
    /// v2: during step `step`, the cgroup's `memory.pressure` `some` avg10 reached `min`
    /// (percent) at least once.
    PsiSome {
        /// Cgroup name.
        cgroup: String,
        /// Step index.
        step: usize,
        /// At least, in percent.
        min_avg10: f64,
    },
    /// The plan of the run of step `step` said this bound comes first (its `domain.first`):
    /// `limit`, `eviction`, `node_oom` or `neither`.
    PlanFirst {
        /// A `run` step.
        step: usize,
        /// The bound.
        first: String,
    },
    /// During step `step`, the node's `memory.available` (as the kubelet computes it: MemTotal
    /// − the root cgroup's working set) fell to `max` or below, in the lab's own readings and
    /// in the `sample` lines of the runs going on then.
    NodeAvailableAtMost {
        /// Step index.
        step: usize,
        /// At most.
        max: String,
    },
    /// During step `step`, the node's `memory.available` never fell below `min`: not in the
    /// lab's own readings, not in the runs' `sample` lines.
    NodeAvailableAtLeast {
        /// Step index.
        step: usize,
        /// At least.
        min: String,
    },
    /// During step `step`, the runs' `sample` lines held the node's `memory.available`
    /// within `size` ± `within` for at least `for` without a break.
    NodeAvailableHeld {
        /// Step index.
        step: usize,
        /// The goal.
        size: String,
        /// How far from it.
        within: String,
        /// For how long.
        #[serde(rename = "for", with = "duration")]
        duration: Duration,
    },
    /// During step `step`, the `node_available_bytes` of the runs' `sample` lines agrees with
    /// the lab's own reading of the node taken closest to each (within 100 ms): the median
    /// difference is at most `tolerance`, and at least 10 samples were compared.
    NodeAvailableAgrees {
        /// Step index.
        step: usize,
        /// Largest median difference.
        tolerance: String,
    },
    /// v2, where the run of step `run` attached its throttle probes (fentry/fexit on the
    /// kernel's `memory.high` handler): its `sample` lines report tasks held by throttling
    /// during step `step` (`run_throttle`: episodes and time rose), and the target's PSI
    /// (`memory.pressure` `some` total, in the same lines) rose by at least `min_psi_share`
    /// of that time, less the longest episode (one under way when the step started counts
    /// in full in the time held, in PSI only from the step's start). Sound for one task
    /// held at a time: PSI's `some` counts time in which any task stalled, so two tasks held
    /// at once count twice in the time held and once in PSI. Where the probes are not
    /// attached, every sample's `run_throttle` is `null`, never zero.
    ThrottledTime {
        /// The `run` step whose samples are read.
        run: usize,
        /// The step during which the throttling is expected.
        step: usize,
        /// Least rise of PSI `some` total, as a share (0 to 1) of the time held.
        min_psi_share: f64,
    },
    /// v2: while the run of step `step` (a `--pressure` run) was on, `memory.pressure`'s
    /// `metric` avg10 stayed within `tolerance` points of `goal` (percent) for at least
    /// `for` without a break, both in the run's own `sample` lines (`psi`) and in the lab's
    /// own readings of the cgroup's `memory.pressure` (every 100 ms).
    PsiHeld {
        /// Cgroup name (the run's target).
        cgroup: String,
        /// A `run` step.
        step: usize,
        /// `some` or `full`.
        metric: memstress::stress::pressure::Metric,
        /// The avg10 to hold, percent.
        goal: f64,
        /// How far from it counts as held, in points.
        tolerance: f64,
        /// The stretch needed.
        #[serde(rename = "for", with = "duration")]
        for_: Duration,
    },
    /// The replay (of step `step`, else of every `replay` step) printed at least one
    /// `replay_result`, and every one reproduced the report's victim (`same_victim`).
    ReplaySameVictim {
        /// Only this step's replay.
        #[serde(default)]
        step: Option<usize>,
    },
    /// The OOM forecast of the run of `step` (of every `run` step when not given), scored
    /// by memstress against each kill in its domain (the `oom_kill` lines' `forecast`):
    /// at least one kill was scored; at least `min_hit_pct` of them had their victim named
    /// by the last forecast before them; the median lead of those (how long the forecasts
    /// had named the victim without interruption) is at least `min_median_lead_ms`; every
    /// time-to-OOM forecast made about 5 s before a kill (`eta`) is within
    /// `max_eta_error_pct` of the truth, and at least one was checked. The run's own
    /// `sample` lines must bear each verdict out (a hit's victim named by the samples right
    /// before the kill, for about its lead; a miss's not), and its `summary` must count the
    /// same kills and hits.
    Forecast {
        /// Only this step's run.
        #[serde(default)]
        step: Option<usize>,
        /// Least share of the kills whose victim was forecast, in percent.
        #[serde(default = "default_min_hit_pct")]
        min_hit_pct: f64,
        /// Least median lead of the hits, in ms.
        #[serde(default = "default_min_median_lead_ms")]
        min_median_lead_ms: u64,
        /// Largest error of a time-to-OOM forecast made about 5 s before a kill, in percent.
        #[serde(default = "default_max_eta_error_pct")]
        max_eta_error_pct: f64,
    },
}

fn default_min_hit_pct() -> f64 {
    90.0
}

fn default_min_median_lead_ms() -> u64 {
    2000
}

fn default_max_eta_error_pct() -> f64 {
    20.0
}

/// Why a scenario file was refused: one line naming the file and the problem.
#[derive(Debug)]
pub struct ScenarioError(pub String);

impl std::fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScenarioError {}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let err = |what: String| ScenarioError(format!("{}: {what}", path.display()));
        let meta = fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.len() > MAX_FILE {
            return Err(err(format!(
                "{} bytes is too large for a scenario (at most {MAX_FILE})",
                meta.len()
            )));
        }
        let text = fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut scenario: Self = toml::from_str(&text).map_err(|e| err(e.message().to_owned()))?;
        scenario.check().map_err(err)?;
        scenario.dir = path.parent().map(Path::to_owned).unwrap_or_default();
        for file in scenario.files() {
            let at = scenario.dir.join(file);
            if !at.is_file() {
                return Err(err(format!(
                    "replay `{file}`: no such file beside the scenario ({})",
                    at.display()
                )));
            }
        }
        Ok(scenario)
    }

    /// The files the steps read (relative to [`Self::dir`]), in step order, each once: what
    /// must travel with the scenario file.
    pub fn files(&self) -> Vec<&str> {
        let mut files: Vec<&str> = Vec::new();
        for file in self.steps.iter().filter_map(|s| s.replay.as_deref()) {
            if file != DMESG && !files.contains(&file) {
                files.push(file);
            }
        }
        files
    }

    /// Whether an expectation is about the node's memory: the lab then reads it every 100 ms
    /// (`node_sample` events).
    pub fn watches_node(&self) -> bool {
        self.expects.iter().any(|e| {
            matches!(
                e,
                Expect::NodeAvailableAtMost { .. }
                    | Expect::NodeAvailableAtLeast { .. }
                    | Expect::NodeAvailableHeld { .. }
                    | Expect::NodeAvailableAgrees { .. }
            )
        })
    }

    /// The guest memory it runs in, in MiB ([`DEFAULT_GUEST_MEMORY_MIB`] unless `memory`
    /// says).
    pub fn guest_memory_mib(&self) -> u64 {
        self.memory
            .as_deref()
            .and_then(|m| SizeSpec::parse_bytes(m).ok())
            .map_or(DEFAULT_GUEST_MEMORY_MIB, |b| b >> 20)
    }

    /// Why this scenario does not run on a machine of `mem_total` bytes (MemTotal), if it
    /// does not: one with `memory` drives the node's own memory, and runs only in a guest of
    /// that size (a guest's MemTotal is a little under its `-m`: the kernel keeps some).
    pub fn skip_for_memory(&self, mem_total: u64) -> Option<String> {
        let memory = self.memory.as_deref()?;
        let asked = self.guest_memory_mib() << 20;
        (mem_total > asked).then(|| {
            format!(
                "drives the node's own memory, so it runs only in a guest of {memory} (`memory`); \
                 this machine has MemTotal {} MiB",
                mem_total >> 20
            )
        })
    }

    /// Checks references and sizes.
    pub fn check(&self) -> Result<(), String> {
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !valid_name(&self.name) {
            return Err(format!(
                "name `{}` must be 1-64 of [A-Za-z0-9_-]",
                self.name
            ));
        }
        if let Some(r) = &self.requires
            && r != "cgroup-v2"
        {
            return Err(format!("requires `{r}`: only `cgroup-v2` is known"));
        }
        if let Some(memory) = &self.memory {
            let bytes = SizeSpec::parse_bytes(memory).map_err(|e| format!("memory: {e}"))?;
            if bytes % (1 << 20) != 0 || !GUEST_MEMORY_MIB.contains(&(bytes >> 20)) {
                return Err(format!(
                    "memory `{memory}`: give whole MiB from {}Mi to {}Mi",
                    GUEST_MEMORY_MIB.start(),
                    GUEST_MEMORY_MIB.end()
                ));
            }
        }
        for c in &self.cgroups {
            if c.name.split('/').any(|p| !valid_name(p)) {
                return Err(format!(
                    "cgroup `{}`: path parts must be [A-Za-z0-9_-]",
                    c.name
                ));
            }
            if let Some(limit) = &c.limit {
                SizeSpec::parse_bytes(limit).map_err(|e| format!("cgroup `{}`: {e}", c.name))?;
            }
        }
        let cgroup = |name: &str| self.cgroups.iter().any(|c| c.name == name);
        for a in &self.apps {
            if !valid_name(&a.name) || a.name.len() > 15 {
                return Err(format!(
                    "app `{}`: name must be 1-15 of [A-Za-z0-9_-]",
                    a.name
                ));
            }
            if !cgroup(&a.cgroup) {
                return Err(format!("app `{}`: no cgroup `{}`", a.name, a.cgroup));
            }
            SizeSpec::parse_bytes(&a.size).map_err(|e| format!("app `{}`: {e}", a.name))?;
            if let Some(reread) = &a.reread {
                SizeSpec::parse_bytes(reread)
                    .map_err(|e| format!("app `{}`: reread: {e}", a.name))?;
            }
            if (a.work.is_some()
                || a.threads.is_some()
                || a.block.is_some()
                || a.mmap
                || a.skew.is_some())
                && a.reread.is_none()
            {
                return Err(format!(
                    "app `{}`: threads, block, mmap, work and skew go with reread",
                    a.name
                ));
            }
            if let Some(block) = &a.block {
                SizeSpec::parse_bytes(block)
                    .map_err(|e| format!("app `{}`: block: {e}", a.name))?;
            }
            if a.threads.is_some_and(|n| !(1..=64).contains(&n)) {
                return Err(format!("app `{}`: threads: 1 to 64", a.name));
            }
            if a.skew.is_some_and(|n| !(1..=8).contains(&n)) {
                return Err(format!("app `{}`: skew: 1 to 8", a.name));
            }
            for adj in [a.oom_score_adj, a.fallback_oom_score_adj]
                .into_iter()
                .flatten()
            {
                if !(-1000..=1000).contains(&adj) {
                    return Err(format!(
                        "app `{}`: oom_score_adj {adj} out of -1000..1000",
                        a.name
                    ));
                }
            }
        }
        for (i, s) in self.steps.iter().enumerate() {
            let kinds = usize::from(s.run.is_some())
                + usize::from(s.sleep.is_some())
                + usize::from(s.resize.is_some())
                + usize::from(s.wait_kills.is_some())
                + usize::from(s.wait_full.is_some())
                + usize::from(s.replay.is_some())
                + usize::from(s.stop.is_some());
            if kinds != 1 {
                return Err(format!(
                    "step {i}: give exactly one of run, sleep, resize, wait_kills, wait_full, \
                     replay, stop"
                ));
            }
            if let Some(signal) = &s.signal {
                if s.stop.is_none() {
                    return Err(format!("step {i}: signal goes with stop"));
                }
                if !SIGNALS.iter().any(|(name, _)| name == signal) {
                    return Err(format!(
                        "step {i}: signal `{signal}`: give SIGINT, SIGTERM or SIGKILL"
                    ));
                }
            }
            if let Some(target) = s.wait_full {
                let background_run =
                    target < i && self.steps[target].run.is_some() && self.steps[target].background;
                if !background_run {
                    return Err(format!(
                        "step {i}: wait_full {target}: not an earlier background run step"
                    ));
                }
            }
            if let Some(target) = s.stop {
                let background_run =
                    target < i && self.steps[target].run.is_some() && self.steps[target].background;
                if !background_run {
                    return Err(format!(
                        "step {i}: stop {target}: not an earlier background run step"
                    ));
                }
                if self.steps[..i].iter().any(|o| o.stop == Some(target)) {
                    return Err(format!("step {i}: step {target} is stopped twice"));
                }
            }
            if let Some(file) = &s.replay {
                if s.background {
                    return Err(format!("step {i}: a replay runs in the foreground"));
                }
                check_replay_file(file).map_err(|e| format!("step {i}: replay `{file}`: {e}"))?;
            }
            if let Some(app) = &s.resize {
                if !self.apps.iter().any(|a| &a.name == app) {
                    return Err(format!("step {i}: no app `{app}`"));
                }
                let size = s
                    .size
                    .as_deref()
                    .ok_or(format!("step {i}: resize needs size"))?;
                SizeSpec::parse_bytes(size).map_err(|e| format!("step {i}: {e}"))?;
            }
            if let Some(run) = &s.run {
                for word in run.split_whitespace() {
                    if let Some(name) = word.strip_prefix('{').and_then(|w| w.strip_suffix('}'))
                        && name != "filedir"
                        && !cgroup(name)
                    {
                        return Err(format!("step {i}: no cgroup `{name}`"));
                    }
                }
            }
        }
        let step = |i: usize| -> Result<(), String> {
            (i < self.steps.len())
                .then_some(())
                .ok_or(format!("expect: no step {i}"))
        };
        for e in &self.expects {
            match e {
                Expect::UsageRise {
                    cgroup: c,
                    step: s,
                    size,
                    ..
                } => {
                    step(*s)?;
                    if !cgroup(c) {
                        return Err(format!("expect: no cgroup `{c}`"));
                    }
                    SizeSpec::parse_bytes(size).map_err(|e| format!("expect: {e}"))?;
                }
                Expect::Kills { step: Some(s), .. }
                | Expect::PredictedOrder { step: s, .. }
                | Expect::StepOutcome { step: s, .. } => step(*s)?,
                Expect::PlanFirst { step: s, first } => {
                    step(*s)?;
                    if self.steps[*s].run.is_none() {
                        return Err(format!("expect: step {s} is not a run step"));
                    }
                    if !["limit", "eviction", "node_oom", "neither"].contains(&first.as_str()) {
                        return Err(format!(
                            "expect: plan_first `{first}`: give limit, eviction, node_oom or neither"
                        ));
                    }
                }
                Expect::NodeAvailableAtMost { step: s, max: size }
                | Expect::NodeAvailableAtLeast { step: s, min: size }
                | Expect::NodeAvailableAgrees {
                    step: s,
                    tolerance: size,
                } => {
                    step(*s)?;
                    SizeSpec::parse_bytes(size).map_err(|e| format!("expect: {e}"))?;
                }
                Expect::NodeAvailableHeld {
                    step: s,
                    size,
                    within,
                    ..
                } => {
                    step(*s)?;
                    for v in [size, within] {
                        SizeSpec::parse_bytes(v).map_err(|e| format!("expect: {e}"))?;
                    }
                }
                Expect::MemoryHighRestored {
                    cgroup: c,
                    step: s,
                    size,
                    ..
                } => {
                    step(*s)?;
                    if !cgroup(c) {
                        return Err(format!("expect: no cgroup `{c}`"));
                    }
                    if self.steps[*s].run.is_none() {
                        return Err(format!("expect: step {s} is not a run step"));
                    }
                    SizeSpec::parse_bytes(size).map_err(|e| format!("expect: {e}"))?;
                }
                Expect::UsageAtMost {
                    cgroup: c,
                    step: s,
                    max,
                } => {
                    step(*s)?;
                    if !cgroup(c) {
                        return Err(format!("expect: no cgroup `{c}`"));
                    }
                    SizeSpec::parse_bytes(max).map_err(|e| format!("expect: {e}"))?;
                }
                Expect::WorkingSetFraction {
                    cgroup: c, step: s, ..
                }
                | Expect::HighEvents {
                    cgroup: c, step: s, ..
                }
                | Expect::PsiSome {
                    cgroup: c, step: s, ..
                } => {
                    step(*s)?;
                    if !cgroup(c) {
                        return Err(format!("expect: no cgroup `{c}`"));
                    }
                }
                Expect::ThrottledTime {
                    run,
                    step: s,
                    min_psi_share,
                } => {
                    step(*s)?;
                    step(*run)?;
                    if self.steps[*run].run.is_none() {
                        return Err(format!("expect: step {run} is not a run step"));
                    }
                    if !(0.0..=1.0).contains(min_psi_share) {
                        return Err(format!(
                            "expect: throttled_time min_psi_share {min_psi_share} out of 0..1"
                        ));
                    }
                }
                Expect::PsiHeld {
                    cgroup: c,
                    step: s,
                    goal,
                    tolerance,
                    ..
                } => {
                    step(*s)?;
                    if !cgroup(c) {
                        return Err(format!("expect: no cgroup `{c}`"));
                    }
                    if self.steps[*s].run.is_none() {
                        return Err(format!("expect: step {s} is not a run step"));
                    }
                    let valid = *goal > 0.0 && *goal < 100.0 && *tolerance >= 0.0;
                    if !valid {
                        return Err(format!(
                            "expect: psi_held goal {goal} must be above 0 and below 100, \
                             tolerance {tolerance} 0 or more"
                        ));
                    }
                }
                Expect::GroupKilled { cgroup: c } if !cgroup(c) => {
                    return Err(format!("expect: no cgroup `{c}`"));
                }
                Expect::AppRestarts { app, .. } if !self.apps.iter().any(|a| &a.name == app) => {
                    return Err(format!("expect: no app `{app}`"));
                }
                Expect::ReplaySameVictim { step: Some(s) } => {
                    step(*s)?;
                    if self.steps[*s].replay.is_none() {
                        return Err(format!("expect: step {s} is not a replay step"));
                    }
                }
                Expect::ReplaySameVictim { step: None }
                    if !self.steps.iter().any(|s| s.replay.is_some()) =>
                {
                    return Err("expect: replay_same_victim, but no step is a replay".into());
                }
                Expect::Forecast {
                    step: s,
                    min_hit_pct,
                    max_eta_error_pct,
                    ..
                } => {
                    match s {
                        Some(s) => {
                            step(*s)?;
                            if self.steps[*s].run.is_none() {
                                return Err(format!("expect: step {s} is not a run step"));
                            }
                        }
                        None if !self.steps.iter().any(|s| s.run.is_some()) => {
                            return Err("expect: forecast, but no step is a run".into());
                        }
                        None => {}
                    }
                    if !(0.0..=100.0).contains(min_hit_pct) {
                        return Err(format!(
                            "expect: forecast min_hit_pct {min_hit_pct} out of 0..100"
                        ));
                    }
                    if max_eta_error_pct.is_nan() || *max_eta_error_pct < 0.0 {
                        return Err(format!(
                            "expect: forecast max_eta_error_pct {max_eta_error_pct} must be 0 or more"
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A `replay` step's file: `{dmesg}`, or a path inside the scenario's directory (it is
/// copied beside the scenario into a guest, so it cannot reach outside).
fn check_replay_file(file: &str) -> Result<(), String> {
    if file == DMESG {
        return Ok(());
    }
    if file.starts_with('{') {
        return Err(format!("the only placeholder is {DMESG}"));
    }
    let path = Path::new(file);
    if file.is_empty()
        || !path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(
            "must be a file in the scenario's directory or below (no `..`, not absolute)".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, String> {
        let s: Scenario = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        s.check()?;
        Ok(s)
    }

    #[test]
    fn parses_a_scenario() {
        let s = parse(
            r#"
name = "t"
description = "d"
timeout = "30s"
[[cgroup]]
name = "pod"
limit = "64Mi"
[[app]]
name = "web"
cgroup = "pod"
size = "8Mi"
liveness = "restart-cgroup"
[[step]]
run = "--cgroup {pod} --size 10Mi"
[[step]]
sleep = "1s"
[[expect]]
kind = "kills"
min = 1
"#,
        )
        .unwrap();
        assert_eq!(s.timeout, Duration::from_secs(30));
        assert_eq!(s.apps[0].liveness, Liveness::RestartCgroup);
        assert!(matches!(s.expects[0], Expect::Kills { min: Some(1), .. }));
    }

    #[test]
    fn refuses_bad_scenarios_with_the_reason() {
        for (text, needle) in [
            ("name = \"a b\"\ndescription = \"\"", "name"),
            (
                "name = \"a\"\ndescription = \"\"\nbogus = 1",
                "unknown field",
            ),
            (
                "name = \"a\"\ndescription = \"\"\n[[cgroup]]\nname = \"../x\"",
                "path parts",
            ),
            (
                "name = \"a\"\ndescription = \"\"\n[[cgroup]]\nname = \"x\"\nlimit = \"12Qi\"",
                "12Qi",
            ),
            (
                "name = \"a\"\ndescription = \"\"\n[[step]]\nrun = \"--cgroup {nope}\"",
                "no cgroup",
            ),
            (
                "name = \"a\"\ndescription = \"\"\n[[step]]\nsleep = \"1s\"\nrun = \"x\"",
                "exactly one",
            ),
            (
                "name = \"a\"\ndescription = \"\"\n[[step]]\nrun = \"--size 1Mi\"\n[[step]]\nwait_full = 0",
                "not an earlier background run step",
            ),
            (
                "name = \"a\"\ndescription = \"\"\n[[step]]\nwait_full = 0",
                "not an earlier background run step",
            ),
            (
                "name = \"a\"\ndescription = \"\"\n[[expect]]\nkind = \"kills\"\nstep = 3",
                "no step 3",
            ),
            (
                "name = \"a\"\ndescription = \"\"\n[[expect]]\nkind = \"telepathy\"",
                "unknown variant",
            ),
            (
                "name = \"a\"\ndescription = \"\"\ntimeout = \"soon\"",
                "soon",
            ),
            (
                "name = \"a\"\ndescription = \"\"\n[[step]]\nreplay = \"../x.log\"",
                "no `..`",
            ),
            (
                "name = \"a\"\ndescription = \"\"\n[[step]]\nreplay = \"/var/log/kern.log\"",
                "not absolute",
            ),
            (
                "name = \"a\"\ndescription = \"\"\n[[step]]\nreplay = \"{journal}\"",
                "only placeholder",
            ),
            (
                "name = \"a\"\ndescription = \"\"\n[[step]]\nreplay = \"{dmesg}\"\nbackground = true",
                "foreground",
            ),
            (
                "name = \"a\"\ndescription = \"\"\n[[step]]\nreplay = \"{dmesg}\"\nsleep = \"1s\"",
                "exactly one",
            ),
            (
                "name = \"a\"\ndescription = \"\"\n[[step]]\nsleep = \"1s\"\n[[expect]]\nkind = \"replay_same_victim\"\nstep = 0",
                "not a replay step",
            ),
            (
                "name = \"a\"\ndescription = \"\"\n[[expect]]\nkind = \"replay_same_victim\"",
                "no step is a replay",
            ),
            (
                "name = \"a\"\ndescription = \"\"\n[[step]]\nsleep = \"1s\"\n[[expect]]\nkind = \"forecast\"\nstep = 0",
                "not a run step",
            ),
            (
                "name = \"a\"\ndescription = \"\"\n[[expect]]\nkind = \"forecast\"",
                "no step is a run",
            ),
            (
                "name = \"a\"\ndescription = \"\"\n[[step]]\nrun = \"--size 1Mi\"\n[[expect]]\nkind = \"forecast\"\nmin_hit_pct = 120",
                "out of 0..100",
            ),
            (
                "name = \"a\"\ndescription = \"\"\n[[step]]\nrun = \"--size 1Mi\"\n[[expect]]\nkind = \"forecast\"\nmax_eta_error_pct = -1",
                "0 or more",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(needle), "`{text}` gave `{e}`");
        }
    }

    /// `memory`: a guest of that size, and only there.
    #[test]
    fn a_scenario_asks_for_its_guest_memory() {
        let s = parse(
            r#"
name = "e"
description = "d"
memory = "512Mi"
[[step]]
run = "--cgroup / --fill-to available=150Mi"
[[expect]]
kind = "plan_first"
step = 0
first = "eviction"
[[expect]]
kind = "node_available_at_most"
step = 0
max = "160Mi"
[[expect]]
kind = "node_available_held"
step = 0
size = "150Mi"
within = "6Mi"
for = "3s"
"#,
        )
        .unwrap();
        assert_eq!(s.guest_memory_mib(), 512);
        assert!(s.watches_node());
        assert!(matches!(
            &s.expects[2],
            Expect::NodeAvailableHeld { duration, .. } if *duration == Duration::from_secs(3)
        ));
        // A 512 MiB guest's MemTotal is under 512 MiB: it runs there; not on a larger machine.
        assert_eq!(s.skip_for_memory(463 << 20), None);
        let skip = s.skip_for_memory(24 << 30).unwrap();
        assert!(
            skip.contains("512Mi") && skip.contains("24576 MiB"),
            "{skip}"
        );
        let plain = parse("name = \"p\"\ndescription = \"\"").unwrap();
        assert_eq!(plain.guest_memory_mib(), DEFAULT_GUEST_MEMORY_MIB);
        assert_eq!(plain.skip_for_memory(24 << 30), None);
        assert!(!plain.watches_node());
        for (text, needle) in [
            ("memory = \"64Mi\"", "from 384Mi"),
            ("memory = \"100Gi\"", "to 8192Mi"),
            ("memory = \"600000000\"", "whole MiB"),
            ("memory = \"50%\"", "percent"),
            (
                "[[step]]\nsleep = \"1s\"\n[[expect]]\nkind = \"plan_first\"\nstep = 0\nfirst = \"limit\"",
                "not a run step",
            ),
            (
                "[[step]]\nrun = \"--size 1Mi\"\n[[expect]]\nkind = \"plan_first\"\nstep = 0\nfirst = \"later\"",
                "give limit, eviction",
            ),
            (
                "[[step]]\nsleep = \"1s\"\n[[expect]]\nkind = \"node_available_at_least\"\nstep = 0\nmin = \"lots\"",
                "lots",
            ),
        ] {
            let e = parse(&format!("name = \"a\"\ndescription = \"\"\n{text}")).unwrap_err();
            assert!(e.contains(needle), "`{text}` gave `{e}`");
        }
    }

    #[test]
    fn parses_replay_steps_and_their_expectation() {
        let s = parse(
            r#"
name = "r"
description = "d"
[[cgroup]]
name = "replay"
limit = "48Mi"
[[step]]
run = "--cgroup {replay} --size 18Mi --on-oom stop"
[[step]]
replay = "{dmesg}"
[[step]]
replay = "reports/v2-6.12.txt"
[[step]]
replay = "reports/v2-6.12.txt"
[[expect]]
kind = "replay_same_victim"
step = 1
[[expect]]
kind = "replay_same_victim"
"#,
        )
        .unwrap();
        assert_eq!(s.steps[1].replay.as_deref(), Some(DMESG));
        assert!(matches!(
            s.expects[0],
            Expect::ReplaySameVictim { step: Some(1) }
        ));
        assert!(matches!(
            s.expects[1],
            Expect::ReplaySameVictim { step: None }
        ));
        // `{dmesg}` is no file, and a file named twice travels once.
        assert_eq!(s.files(), vec!["reports/v2-6.12.txt"]);
    }

    #[test]
    fn parses_the_forecast_expectation_with_its_defaults() {
        let s = parse(
            r#"
name = "f"
description = "d"
[[step]]
run = "--size 10Mi --ramp 20s"
[[expect]]
kind = "forecast"
[[expect]]
kind = "forecast"
step = 0
min_hit_pct = 100
min_median_lead_ms = 5000
max_eta_error_pct = 10
"#,
        )
        .unwrap();
        assert!(matches!(
            s.expects[0],
            Expect::Forecast {
                step: None,
                min_hit_pct: 90.0,
                min_median_lead_ms: 2000,
                max_eta_error_pct: 20.0,
            }
        ));
        assert!(matches!(
            s.expects[1],
            Expect::Forecast {
                step: Some(0),
                min_hit_pct: 100.0,
                min_median_lead_ms: 5000,
                max_eta_error_pct: 10.0,
            }
        ));
    }

    #[test]
    fn parses_psi_held_and_a_rereading_app() {
        let s = parse(
            r#"
name = "p"
description = "d"
requires = "cgroup-v2"
[[cgroup]]
name = "pod"
limit = "192Mi"
[[app]]
name = "db"
cgroup = "pod"
size = "16Mi"
reread = "96Mi"
mmap = true
threads = 2
work = 100
[[step]]
run = "--cgroup {pod} --pressure some=20%"
background = true
[[expect]]
kind = "psi_held"
cgroup = "pod"
step = 0
metric = "full"
goal = 20.0
tolerance = 5.0
for = "20s"
"#,
        )
        .unwrap();
        assert_eq!(s.apps[0].reread.as_deref(), Some("96Mi"));
        assert!(s.apps[0].mmap);
        assert!(matches!(
            s.expects[0],
            Expect::PsiHeld {
                metric: memstress::stress::pressure::Metric::Full,
                for_,
                ..
            } if for_ == Duration::from_secs(20)
        ));
        for (text, needle) in [
            (
                "[[app]]\nname = \"a\"\ncgroup = \"pod\"\nsize = \"1Mi\"\nwork = 3",
                "go with reread",
            ),
            (
                "[[app]]\nname = \"a\"\ncgroup = \"pod\"\nsize = \"1Mi\"\nreread = \"x\"",
                "reread",
            ),
            (
                "[[step]]\nsleep = \"1s\"\n[[expect]]\nkind = \"psi_held\"\ncgroup = \"pod\"\nstep = 0\nmetric = \"some\"\ngoal = 20.0\ntolerance = 5.0\nfor = \"20s\"",
                "not a run step",
            ),
            (
                "[[step]]\nrun = \"x\"\n[[expect]]\nkind = \"psi_held\"\ncgroup = \"pod\"\nstep = 0\nmetric = \"some\"\ngoal = 120.0\ntolerance = 5.0\nfor = \"20s\"",
                "below 100",
            ),
            (
                "[[step]]\nrun = \"x\"\n[[expect]]\nkind = \"psi_held\"\ncgroup = \"pod\"\nstep = 0\nmetric = \"most\"\ngoal = 20.0\ntolerance = 5.0\nfor = \"20s\"",
                "unknown variant",
            ),
        ] {
            let text =
                format!("name = \"a\"\ndescription = \"\"\n[[cgroup]]\nname = \"pod\"\n{text}");
            let e = parse(&text).unwrap_err();
            assert!(e.contains(needle), "`{text}` gave `{e}`");
        }
    }

    #[test]
    fn a_replay_file_must_be_beside_the_scenario() {
        let dir = std::env::temp_dir().join(format!("memstress-scenario-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("r.toml");
        fs::write(
            &file,
            "name = \"r\"\ndescription = \"\"\n[[step]]\nreplay = \"oom.log\"\n",
        )
        .unwrap();
        let missing = Scenario::load(&file).unwrap_err().to_string();
        fs::write(dir.join("oom.log"), "Killed process 1 (x)\n").unwrap();
        let loaded = Scenario::load(&file);
        let _ = fs::remove_dir_all(&dir);
        assert!(
            missing.contains("replay `oom.log`: no such file"),
            "{missing}"
        );
        let loaded = loaded.unwrap();
        assert_eq!(loaded.dir, dir);
        assert_eq!(loaded.files(), vec!["oom.log"]);
    }
}
