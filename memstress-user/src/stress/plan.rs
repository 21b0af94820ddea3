//! The plan: what a run will do, resolved completely before anything is created (the
//! target, its limit and usage, the bytes of each stressor, who they run as, its OOM domain
//! and which bound it meets first ([`super::radius`]), and who the OOM killer would choose
//! when the plan crosses the limit).
//!
//! Enters: [`Options`] (from the command line or a StressChaos file, lowered by
//! the input adapters). Leaves: the [`Plan`] line and the resolved [`Target`].

use std::{path::PathBuf, time::Duration};

use super::{
    available,
    member::split,
    pressure::{self, Goal},
    radius, stressor,
};
use crate::{
    Error, Result,
    error::Context as _,
    explain::predict,
    output::line::{
        AvailablePlan, DomainKind, Mode, Plan, PlanDomain, PlanTarget, PressurePlan,
        StressChaosLine, ThrottlePlan,
    },
    privilege, probe,
    size::{Bytes, SizeSpec},
    spec::{Fill, Kind, OnOom, Pattern},
    target::{
        self, Target,
        cgroup::{Cgroup, Counters, Hierarchy},
        kube::RuntimeState,
        node::NodeMemory,
    },
};

/// Fails with [`Error::Usage`].
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(Error::Usage(format!($($arg)*)))
    };
}

/// A stressor's own footprint when `run` could not measure one (an idle worker measured
/// 508 KiB on x86-64 with glibc).
pub const DEFAULT_FOOTPRINT: u64 = 512 << 10;

/// `--eviction-threshold`'s default: the kubelet's own hard threshold, `memory.available<100Mi`.
pub const DEFAULT_EVICTION_THRESHOLD: u64 = 100 << 20;

/// How much to hold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    /// `--size`: this much in total (bytes or a percent of the limit).
    Size(SizeSpec),
    /// `--fill-to`: top the working set up to this (bytes or a percent of the limit) and keep
    /// it there.
    FillTo(SizeSpec),
    /// `--fill-to available=`: hold the node's `memory.available` (as the kubelet computes
    /// it) at this (bytes or a percent of MemTotal).
    Available(SizeSpec),
    /// Nothing: no stressors (`--throttle` alone sets `memory.high` and holds it).
    Nothing,
    /// `--pressure`: as much as holds the target's memory pressure at this goal, moved by a
    /// closed loop.
    Pressure(Goal),
}

/// A process other than a stressor that a run starts in the target (the demo's app).
#[derive(Clone, Debug)]
pub struct App {
    /// Its comm.
    pub name: String,
    /// Bytes it holds.
    pub bytes: u64,
    /// Its oom_score_adj.
    pub oom_score_adj: Option<i32>,
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The target.
    pub target: target::Spec,
    /// Allow the root cgroup.
    pub allow_root: bool,
    /// `--allow-node-oom`: allow a run whose domain is the node to reach its eviction
    /// threshold or a global OOM.
    pub allow_node_oom: bool,
    /// `--eviction-threshold`: the node's `memory.available` below which the kubelet evicts
    /// (0: none).
    pub eviction_threshold: u64,
    /// How much.
    pub amount: Amount,
    /// The amount as the user wrote it (`64M`), echoed in the plan; `None`: not from a flag.
    pub amount_given: Option<String>,
    /// A stressor's own charge while holding nothing (its runtime, page tables, kernel
    /// stack), measured from an idle worker (`member::measure_footprint`); `None`: [`DEFAULT_FOOTPRINT`].
    pub footprint: Option<u64>,
    /// A percent refers to the node's memory instead of a limit.
    pub of_node: bool,
    /// Number of stressor processes.
    pub workers: u32,
    /// Grow linearly to the size over this long.
    pub ramp: Option<Duration>,
    /// How long to hold once full; `None`: until interrupted.
    pub hold: Option<Duration>,
    /// OOM policy.
    pub on_oom: OnOom,
    /// oom_score_adj for the stressors.
    pub oom_score_adj: Option<i32>,
    /// Kind of memory.
    pub kind: Kind,
    /// What stressors do once full.
    pub pattern: Pattern,
    /// Keep-dirty period.
    pub rewrite_every: Duration,
    /// Directory for page-cache stress.
    pub file_dir: Option<PathBuf>,
    /// How pages are faulted in.
    pub fill: Fill,
    /// Ask for transparent huge pages.
    pub thp: bool,
    /// mlock the memory.
    pub mlock: bool,
    /// Shmem stressors write into their memfd without mapping it: charged to the target,
    /// in no process's RSS (replay's allocation, which must not become a candidate).
    pub unmapped: bool,
    /// Stressors grow only once every app holds its size (replay: the tasks first, then
    /// the allocation that ends in the OOM).
    pub apps_first: bool,
    /// Print the plan and exit.
    pub dry_run: bool,
    /// Other processes to start in the target first.
    pub apps: Vec<App>,
    /// End the run once this many OOM kills were reported (the demo).
    pub stop_after_kills: Option<u32>,
    /// Give up after this long (the demo).
    pub deadline: Option<Duration>,
    /// Who stressors run as (`--user`; `None`: nobody where this process can switch).
    pub user: Option<String>,
    /// Probe options.
    pub probe: probe::Options,
    /// `--cgroup-root`: resolve everything under this tree instead of the real mounts.
    pub cgroup_root: Option<PathBuf>,
    /// Where the container runtimes' state files are read (container and pod names).
    pub runtime_state: RuntimeState,
    /// `--follow`: when a pod/container target disappears, find its replacement and go on.
    pub follow: bool,
    /// The StressChaos the run comes from, as its plan echoes it (`None`: flags only).
    pub stresschaos: Option<StressChaosLine>,
    /// What differs from what the source (a StressChaos) would do, for the plan.
    pub notes: Vec<String>,
    /// `--throttle`: the target's `memory.high` for the run (bytes or a percent of the
    /// limit), and the text given.
    pub throttle: Option<(SizeSpec, String)>,
}

impl Options {
    /// Defaults for everything but the target and the amount.
    pub fn new(target: target::Spec, amount: Amount, probe: probe::Options) -> Self {
        Self {
            target,
            allow_root: false,
            allow_node_oom: false,
            eviction_threshold: DEFAULT_EVICTION_THRESHOLD,
            user: None,
            amount,
            amount_given: None,
            footprint: None,
            of_node: false,
            workers: 1,
            ramp: None,
            hold: None,
            on_oom: OnOom::Report,
            oom_score_adj: None,
            kind: Kind::Anon,
            pattern: Pattern::Hold,
            rewrite_every: Duration::from_secs(5),
            file_dir: None,
            fill: Fill::Touch,
            thp: false,
            mlock: false,
            unmapped: false,
            apps_first: false,
            dry_run: false,
            apps: Vec::new(),
            stop_after_kills: None,
            deadline: None,
            probe,
            cgroup_root: None,
            runtime_state: RuntimeState::default(),
            follow: false,
            stresschaos: None,
            notes: Vec::new(),
            throttle: None,
        }
    }
}

fn resolve_amount(
    spec: SizeSpec,
    what: &str,
    of_node: bool,
    limit: Option<&(u64, Cgroup)>,
    target: &Target,
) -> Result<(u64, String)> {
    Ok(match spec {
        SizeSpec::Bytes(b) => (b, what.to_owned()),
        SizeSpec::Percent(p) if of_node => {
            let node = target::node_memory().ok_or_else(|| {
                Error::io(
                    "cannot read MemTotal from /proc/meminfo",
                    std::io::ErrorKind::NotFound.into(),
                )
            })?;
            (
                spec.resolve(node),
                format!("{p}% of the node's MemTotal ({})", Bytes(node)),
            )
        }
        SizeSpec::Percent(p) => match limit {
            Some((bytes, from)) => (
                spec.resolve(*bytes),
                format!("{p}% of the {} limit of {}", Bytes(*bytes), from.path),
            ),
            None => {
                return Err(Error::Refused(format!(
                    "{p}% needs a memory limit, but neither {} nor any ancestor has one; give \
                     an absolute size (e.g. 256Mi) or add --of-node for a percent of the node's \
                     memory",
                    target.cgroup.path
                )));
            }
        },
    })
}

/// Fails unless `who` can create files in `dir` (page-cache stressors write there after
/// dropping to their user): by the mode bits, as the kernel's permission check would.
fn check_writable(dir: &std::path::Path, who: privilege::Credentials) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(dir)
        .context(|| format!("--file-dir {}: cannot use it", dir.display()))?;
    if !meta.is_dir() {
        return Err(Error::Refused(format!(
            "--file-dir {}: not a directory",
            dir.display()
        )));
    }
    let mode = meta.mode();
    let writable = who.uid == 0
        || (meta.uid() == who.uid && mode & 0o300 == 0o300)
        || (meta.uid() != who.uid && meta.gid() == who.gid && mode & 0o030 == 0o030)
        || (meta.uid() != who.uid && meta.gid() != who.gid && mode & 0o003 == 0o003);
    if !writable {
        return Err(Error::Refused(format!(
            "--file-dir {}: stressors run as uid {} and cannot write there (mode {:o}, owner \
             {}:{}); give a directory they can write to (e.g. /var/tmp) or choose --user",
            dir.display(),
            who.uid,
            mode & 0o7777,
            meta.uid(),
            meta.gid()
        )));
    }
    Ok(())
}

/// The smallest share that holds anything: a stressor's own footprint, rounded up to a page,
/// and one page more.
pub fn min_share(footprint: u64, page: u64) -> u64 {
    footprint.div_ceil(page) * page + page
}

/// Refuses shares a stressor's own footprint would eat (it would hold nothing and still be
/// charged its footprint: the total would be wrong), and more stressors than the domain can
/// even start (their footprints alone past its limit, before the probes could see a kill).
fn check_shares(
    opts: &Options,
    shares: &[u64],
    fill_to: Option<u64>,
    footprint: u64,
    headroom: Option<(u64, &str)>,
) -> Result<()> {
    let page = crate::size::page_size();
    let least = min_share(footprint, page);
    let workers = u64::from(opts.workers);
    let amount = match &opts.amount_given {
        Some(given) if fill_to.is_some() => format!("--fill-to {given}"),
        Some(given) => format!("--size {given}"),
        None => "the size".to_owned(),
    };
    let total = fill_to.unwrap_or_else(|| shares.iter().sum());
    let smallest = if fill_to.is_some() {
        total / workers.max(1)
    } else {
        shares.iter().copied().min().unwrap_or(0)
    };
    // The footprint measured varies by a few pages from one start to the next: what is
    // suggested keeps a tenth in hand, so that it is accepted next time too.
    let suggest = (least + least / 10).div_ceil(page) * page;
    if smallest < least {
        let most = total / suggest;
        if most == 0 {
            usage!(
                "{amount} is below one stressor's own footprint here ({}: its runtime, page \
                 tables and kernel stack, charged whatever it holds); give at least {}",
                Bytes(footprint),
                Bytes(suggest)
            );
        }
        usage!(
            "--workers {workers}: each stressor's share of {amount} would be {}, and a \
             stressor's own footprint here is {} (its runtime, page tables and kernel stack, \
             charged whatever it holds): a share must be at least {}; give at most {most} \
             workers, or a larger size",
            Bytes(smallest),
            Bytes(footprint),
            Bytes(suggest)
        );
    }
    if let Some((room, domain)) = headroom
        && workers.saturating_mul(footprint) >= room
        && workers > 1
    {
        usage!(
            "--workers {workers}: the stressors' own footprints alone ({} × {} = {}) would \
             take all {} that {domain} can still be charged before its limit, and they would be \
             OOM-killed before holding anything; give at most {} workers",
            workers,
            Bytes(footprint),
            Bytes(workers.saturating_mul(footprint)),
            Bytes(room),
            (room / suggest).max(1)
        );
    }
    Ok(())
}

/// `--fill-to available=`: refuses more stressors than what lies between the node's
/// `memory.available` and the goal can feed (each is charged its own footprint whatever it
/// holds).
fn check_available_shares(
    opts: &Options,
    goal: &available::Goal,
    domain: &PlanDomain,
    total: u64,
    footprint: u64,
) -> Result<()> {
    let least = min_share(footprint, crate::size::page_size());
    let workers = u64::from(opts.workers);
    if total >= workers.saturating_mul(least) {
        return Ok(());
    }
    let given = opts.amount_given.as_deref().unwrap_or("available=");
    if total < least {
        return Err(Error::Refused(format!(
            "--fill-to {given}: the node's memory.available ({}) is only {} above the goal of \
             {}, less than one stressor's own footprint ({}): there is nothing to fill",
            Bytes(domain.node_available_bytes),
            Bytes(total),
            Bytes(goal.bytes),
            Bytes(footprint)
        )));
    }
    usage!(
        "--workers {workers}: the node's memory.available ({}) is {} above the goal of {}, and \
         each stressor is charged its own footprint ({}) whatever it holds; give at most {} \
         workers",
        Bytes(domain.node_available_bytes),
        Bytes(total),
        Bytes(goal.bytes),
        Bytes(footprint),
        total / least
    )
}

/// Refuses options that cannot work together, before anything is resolved.
fn check_options(opts: &Options) -> Result<()> {
    if opts.workers == 0 {
        usage!("--workers 0: give at least 1 worker");
    }
    if opts.workers > crate::spec::MAX_WORKERS {
        usage!(
            "--workers {}: at most {} workers",
            opts.workers,
            crate::spec::MAX_WORKERS
        );
    }
    if matches!(opts.amount, Amount::FillTo(_)) && opts.kind == Kind::File {
        usage!(
            "--fill-to with --kind file cannot work: page cache that is not recently used is \
             not in the working set (usage − inactive_file); use --kind anon or shmem"
        );
    }
    if matches!(opts.amount, Amount::Available(_)) && opts.kind == Kind::File {
        usage!(
            "--fill-to available= with --kind file cannot work: page cache that is not \
             recently used (inactive_file) is not in the root cgroup's working set, so it does \
             not lower memory.available as the kubelet computes it; use --kind anon or shmem"
        );
    }
    if matches!(opts.amount, Amount::Available(_)) && opts.ramp.is_some() {
        usage!(
            "--ramp grows a fixed size over time; --fill-to available= follows the node, which \
             has no ramp: give one of them"
        );
    }
    if let Amount::Pressure(_) = opts.amount {
        let other = [
            (opts.ramp.is_some(), "--ramp grows a fixed --size over time"),
            (
                opts.kind == Kind::File,
                "--kind file holds page cache, which reclaim frees first: it would squeeze \
                 nothing",
            ),
            (
                opts.follow,
                "--follow starts the stressors over in a replacement cgroup, where the loop \
                 would start blind",
            ),
        ];
        if let Some((_, why)) = other.iter().find(|(given, _)| *given) {
            usage!(
                "{why}; --pressure's closed loop decides what the stressors hold: give one of \
                 them"
            );
        }
    }
    if opts.throttle.is_some() && opts.follow {
        usage!(
            "--throttle with --follow: the replacement cgroup's memory.high would be neither \
             set nor restored; give one of them"
        );
    }
    if opts.follow && !opts.target.followable() {
        usage!(
            "--follow re-resolves a --pod/--container target after it disappears; with --new, \
             --cgroup, --pid or --self there is nothing to look for"
        );
    }
    Ok(())
}

/// The domain a run's target is in: the limit that applies (the target's, or an
/// ancestor's) and what the domain holds now.
struct Domain {
    limit: Option<(u64, Cgroup)>,
    /// The target's own counters (zero for a cgroup to be created).
    counters: Counters,
    /// The whole domain's usage (what counts against the limit).
    usage: u64,
    /// The domain's working set: what reclaim cannot free to make room.
    working_set: u64,
    /// The domain's memory that reclaim cannot free at all without swap: usage less the
    /// file LRU lists (anon, shmem, kernel memory).
    unreclaimable: u64,
}

impl Domain {
    fn of(target: &Target) -> Result<Self> {
        let limit = target.effective_limit()?;
        let counters = if target.create.is_some() {
            Counters::default()
        } else {
            target.cgroup.counters()?
        };
        let domain = match (&limit, target.create) {
            (Some((_, domain)), None) => domain.counters().ok(),
            _ => None,
        };
        let of = |c: &Counters| c.usage_bytes.saturating_sub(c.file_bytes);
        Ok(Self {
            unreclaimable: domain.as_ref().map_or_else(|| of(&counters), of),
            usage: domain
                .as_ref()
                .map_or(counters.usage_bytes, |d| d.usage_bytes),
            working_set: domain
                .as_ref()
                .map_or(counters.working_set_bytes, |d| d.working_set_bytes),
            limit,
            counters,
        })
    }

    /// What the domain could still be charged before its limit, besides `apps`.
    fn headroom(&self, apps: u64) -> Option<u64> {
        self.limit
            .as_ref()
            .map(|(l, _)| l.saturating_sub(self.usage + apps))
    }
}

/// The amount, resolved: the total the stressors hold (for `--fill-to`, the first estimate)
/// and the working-set goal, or the node's `memory.available` goal.
struct Resolved {
    mode: Mode,
    total: u64,
    fill_to: Option<u64>,
    from: String,
    available: Option<available::Goal>,
}

/// `--fill-to available=`: the goal, refused where the node cannot get there safely (beyond
/// MemTotal; MemAvailable under the floor at the goal; already at or below it).
fn resolve_available(
    opts: &Options,
    spec: SizeSpec,
    node: &NodeMemory,
) -> Result<(available::Goal, String)> {
    let given = opts
        .amount_given
        .clone()
        .unwrap_or_else(|| format!("available={spec}"));
    let (bytes, from) = match spec {
        SizeSpec::Bytes(b) => (
            b,
            given
                .strip_prefix("available=")
                .unwrap_or(&given)
                .trim()
                .to_owned(),
        ),
        SizeSpec::Percent(p) => (
            spec.resolve(node.mem_total),
            format!(
                "{p}% of the node's MemTotal ({}), as its memory.available",
                Bytes(node.mem_total)
            ),
        ),
    };
    if bytes >= node.mem_total {
        usage!(
            "--fill-to {given}: {} is not below the node's MemTotal ({}); memory.available is \
             MemTotal less what the node uses, so it is always less",
            Bytes(bytes),
            Bytes(node.mem_total)
        );
    }
    let goal = available::Goal::new(bytes, node.mem_total);
    let lowest = goal.lowest(node);
    if bytes < lowest {
        let gap = available::gap(node);
        let why = if gap > 0 {
            format!(
                "the kubelet's figure ({}) is {} above it: kernel memory no cgroup's working \
                 set counts",
                Bytes(node.available),
                Bytes(gap)
            )
        } else {
            format!(
                "the kubelet's figure ({}) is not above it here, but it will be once page \
                 cache is reclaimed",
                Bytes(node.available)
            )
        };
        return Err(Error::Refused(format!(
            "refusing --fill-to {given}: held there (± {}), the node's MemAvailable (now {}; \
             {why}) would be about {}, under the floor of {} that memstress never takes it \
             below (a global OOM would be near); the lowest goal here is available={}",
            Bytes(goal.deadband),
            Bytes(node.mem_available),
            Bytes(bytes.saturating_sub(gap + goal.deadband)),
            Bytes(goal.floor),
            available::flag_value(lowest)
        )));
    }
    if node.available <= bytes + goal.deadband {
        return Err(Error::Refused(format!(
            "--fill-to {given}: the node's memory.available is already {}, at or below the \
             goal of {} (± {}): there is nothing to fill",
            Bytes(node.available),
            Bytes(bytes),
            Bytes(goal.deadband)
        )));
    }
    Ok((goal, from))
}

fn resolve(
    opts: &Options,
    target: &Target,
    domain: &Domain,
    node: &NodeMemory,
) -> Result<Resolved> {
    let resolved = match opts.amount {
        Amount::Size(spec) => {
            let what = "total across all workers";
            let (total, from) =
                resolve_amount(spec, what, opts.of_node, domain.limit.as_ref(), target)?;
            if total == 0 {
                usage!("--size {spec} resolves to 0 bytes");
            }
            Resolved {
                mode: Mode::Size,
                total,
                fill_to: None,
                from,
                available: None,
            }
        }
        Amount::Nothing => Resolved {
            mode: Mode::Throttle,
            total: 0,
            fill_to: None,
            from: "no stressors: --throttle alone".to_owned(),
            available: None,
        },
        Amount::Available(spec) => {
            let (goal, from) = resolve_available(opts, spec, node)?;
            Resolved {
                mode: Mode::FillToAvailable,
                total: goal.first_estimate(node),
                fill_to: None,
                from,
                available: Some(goal),
            }
        }
        Amount::Pressure(goal) => Resolved {
            mode: Mode::Pressure,
            total: 0,
            fill_to: None,
            from: format!(
                "a closed loop on memory.pressure {} avg10: the stressors start empty",
                goal.metric.name()
            ),
            available: None,
        },
        Amount::FillTo(spec) => {
            let what = "working-set goal";
            let (goal, from) =
                resolve_amount(spec, what, opts.of_node, domain.limit.as_ref(), target)?;
            let apps: u64 = opts.apps.iter().map(|a| a.bytes).sum();
            Resolved {
                mode: Mode::FillTo,
                total: goal.saturating_sub(domain.counters.working_set_bytes + apps),
                fill_to: Some(goal),
                from,
                available: None,
            }
        }
    };
    Ok(resolved)
}

/// The run's OOM domain and the bound it meets first; refuses a run that reaches the node's
/// eviction threshold or a global OOM without `--allow-node-oom` (the root cgroup's too: it
/// has no limit).
fn domain_of(
    opts: &Options,
    target: &Target,
    domain: &Domain,
    resolved: &Resolved,
    node: &NodeMemory,
) -> Result<PlanDomain> {
    let app_bytes: u64 = opts.apps.iter().map(|a| a.bytes).sum();
    let limit = domain.limit.as_ref().map(|(bytes, cgroup)| radius::Limit {
        cgroup: &cgroup.path,
        bytes: *bytes,
        headroom: domain.headroom(0).unwrap_or(0),
    });
    // `--fill-to available=` takes the node's memory.available down to the goal, and the
    // loop lets it move a deadband under that: what the run takes from the node is judged
    // there, so that a goal at the eviction threshold counts as reaching it.
    let run_bytes = match &resolved.available {
        Some(goal) => node
            .available
            .saturating_sub(goal.bytes.saturating_sub(goal.deadband)),
        None => resolved.total,
    };
    let planned = radius::assess(
        limit,
        run_bytes.saturating_add(app_bytes),
        node,
        opts.eviction_threshold,
        opts.allow_node_oom,
    );
    let refused = match &resolved.available {
        Some(goal) => radius::refusal_available(
            &planned,
            &target.cgroup.path,
            opts.amount_given.as_deref().unwrap_or("available="),
            goal,
        ),
        None => radius::refusal(&planned, &target.cgroup.path),
    };
    match refused {
        Some(line) => Err(Error::Refused(line)),
        None => Ok(planned),
    }
}

/// Refuses a run whose domain is the node and that would reach its eviction threshold or a
/// global OOM (without `--allow-node-oom`), before anything runs: `run` checks this before
/// it starts a worker to measure a stressor's footprint. [`plan`] checks it again.
pub fn check_node_bounds(opts: &Options, hierarchy: &Hierarchy) -> Result<()> {
    check_options(opts)?;
    check_version(opts, hierarchy)?;
    bounds(opts, hierarchy).map(drop)
}

/// Refuses what cgroup v1 cannot do before anything else is resolved (the target need not
/// even exist): a `--pressure` goal (no per-cgroup PSI).
fn check_version(opts: &Options, hierarchy: &Hierarchy) -> Result<()> {
    if matches!(opts.amount, Amount::Pressure(_))
        && hierarchy.version == target::cgroup::Version::V1
    {
        return Err(Error::Refused(format!(
            "--pressure holds the target's memory.pressure, which needs cgroup v2: the memory \
             controller here is on cgroup v1 ({}), which has no per-cgroup PSI; nothing was \
             changed",
            hierarchy.mount.display()
        )));
    }
    Ok(())
}

/// The target, its limit's domain, the size resolved against them, and the OOM domain the
/// run meets (refused here when it is the node's bounds without `--allow-node-oom`).
fn bounds(opts: &Options, hierarchy: &Hierarchy) -> Result<(Target, Domain, Resolved, PlanDomain)> {
    let target = Target::resolve(
        hierarchy,
        &opts.target,
        opts.allow_root,
        &opts.runtime_state,
    )?;
    let domain = Domain::of(&target)?;
    let node = NodeMemory::read().ok_or_else(|| {
        Error::io(
            "cannot read MemTotal and MemAvailable from /proc/meminfo",
            std::io::ErrorKind::NotFound.into(),
        )
    })?;
    let resolved = resolve(opts, &target, &domain, &node)?;
    let planned = domain_of(opts, &target, &domain, &resolved, &node)?;
    Ok((target, domain, resolved, planned))
}

/// Resolves the plan without creating anything.
pub fn plan(opts: &Options, hierarchy: &Hierarchy) -> Result<(Plan, Target)> {
    check_options(opts)?;
    check_version(opts, hierarchy)?;
    let (credentials, stressor_user) =
        match privilege::stressor_user(opts.user.as_deref(), opts.mlock) {
            Ok(found) => found,
            Err(e) if e.is_usage() => usage!("{e}"),
            Err(e) => return Err(e.into()),
        };
    let file_dir = opts
        .file_dir
        .clone()
        .unwrap_or_else(stressor::default_file_dir);
    if opts.kind == Kind::File {
        check_writable(&file_dir, credentials.unwrap_or_else(privilege::own))?;
    }
    let (target, domain, resolved, planned_domain) = bounds(opts, hierarchy)?;
    let throttle = plan_throttle(opts, hierarchy, &target, &domain)?;
    let pressure = plan_pressure(opts, &target, &domain, throttle.as_ref())?;
    let stressors = opts.amount != Amount::Nothing;
    let bytes_per_worker = if pressure.is_some() {
        vec![0; opts.workers as usize]
    } else if stressors {
        split(
            resolved.total,
            opts.workers as usize,
            crate::size::page_size(),
        )
    } else {
        Vec::new()
    };
    let app_bytes: u64 = opts.apps.iter().map(|a| a.bytes).sum();
    let footprint = opts.footprint.unwrap_or(DEFAULT_FOOTPRINT);
    // Room for the stressors' footprints: page cache in the domain would be reclaimed to
    // make it, so what cannot be reclaimed (the working set) is what counts.
    let room = domain.limit.as_ref().map(|(l, d)| {
        (
            l.saturating_sub(domain.working_set + app_bytes),
            d.path.as_str(),
        )
    });
    if let Some(goal) = &resolved.available {
        check_available_shares(opts, goal, &planned_domain, resolved.total, footprint)?;
    }
    if let Some(p) = &pressure {
        let footprints = u64::from(opts.workers).saturating_mul(footprint);
        if footprints >= p.cap_bytes {
            usage!(
                "--workers {}: the stressors' own footprints ({} × {}) would take all the {} \
                 they may hold below the limit's margin; give fewer workers",
                opts.workers,
                opts.workers,
                Bytes(footprint),
                Bytes(p.cap_bytes)
            );
        }
    } else if stressors {
        check_shares(opts, &bytes_per_worker, resolved.fill_to, footprint, room)?;
    }
    let crosses_limit = domain
        .limit
        .as_ref()
        .is_some_and(|(l, _)| domain.usage + app_bytes + resolved.total > *l);
    let available = resolved.available.map(|goal| {
        let gap = planned_domain
            .node_available_bytes
            .saturating_sub(planned_domain.node_mem_available_bytes);
        AvailablePlan {
            goal_bytes: goal.bytes,
            from: resolved.from.clone(),
            deadband_bytes: goal.deadband,
            floor_bytes: goal.floor,
            gap_bytes: gap,
            lowest_goal_bytes: goal.floor + gap + goal.deadband,
        }
    });
    let mut plan = Plan {
        target: PlanTarget {
            path: target.cgroup.path.clone(),
            dir: target.cgroup.dir.display().to_string(),
            version: hierarchy.version.number(),
            created: target.create.is_some(),
            limit_bytes: domain.limit.as_ref().map(|(l, _)| *l),
            limit_from: domain.limit.as_ref().map(|(_, c)| c.path.clone()),
            usage_bytes: domain.counters.usage_bytes,
            working_set_bytes: domain.counters.working_set_bytes,
            kubernetes: target.kube.clone(),
            container: target.container.clone(),
        },
        mode: resolved.mode,
        size: opts
            .amount_given
            .clone()
            .unwrap_or_else(|| match opts.amount {
                Amount::Size(s) | Amount::FillTo(s) => s.to_string(),
                Amount::Available(s) => format!("available={s}"),
                Amount::Pressure(goal) => goal.to_string(),
                Amount::Nothing => String::new(),
            }),
        size_from: resolved.from,
        total_bytes: resolved.total,
        fill_to_bytes: resolved.fill_to,
        workers: if stressors { opts.workers } else { 0 },
        bytes_per_worker,
        bytes_are: "cgroup charge, including each stressor's own process footprint".to_owned(),
        stressor_footprint_bytes: footprint,
        kernel_bytes_per_page: stressor::kernel_bytes_per_page(opts.kind, &file_dir),
        kind: opts.kind,
        pattern: opts.pattern,
        ramp_s: opts.ramp.map(|d| d.as_secs_f64()),
        hold_s: opts.hold.map(|d| d.as_secs_f64()),
        on_oom: opts.on_oom,
        oom_score_adj: opts.oom_score_adj,
        crosses_limit,
        headroom_bytes: domain.headroom(app_bytes),
        predicted_oom: None,
        domain: planned_domain,
        stressor_user,
        credentials,
        follow: opts.follow,
        stresschaos: opts.stresschaos.clone(),
        notes: opts.notes.clone(),
        throttle,
        available,
        pressure,
    };
    if plan.domain.kind == DomainKind::Node {
        // Every process of the node is a candidate of a global OOM, the stressors among them
        // as long as they hold their memory: ranked for a look beforehand, and for a run that
        // goes there.
        if opts.dry_run || radius::reaches_node(&plan.domain) {
            plan.predicted_oom = Some(predict_node_oom(opts, &plan));
        }
    } else if crosses_limit && let Some((limit, cgroup)) = &domain.limit {
        plan.predicted_oom = Some(predict_oom(opts, &plan, *limit, cgroup, &domain, &target));
    }
    Ok((plan, target))
}

/// Who a global OOM would choose once the plan reaches the node's bounds: every process on
/// the node from /proc now, and the stressors and apps, each holding at most an even share
/// of what the node had available (they grow together until it runs out).
fn predict_node_oom(opts: &Options, plan: &Plan) -> predict::Prediction {
    let own_adj = own_oom_score_adj();
    let stressor_adj = opts.oom_score_adj.map_or(own_adj, |a| a as i16);
    let holders = (opts.apps.len() + plan.bytes_per_worker.len()).max(1) as u64;
    let at_oom = plan.domain.node_mem_available_bytes / holders;
    let mut planned: Vec<(String, u64, i16)> = opts
        .apps
        .iter()
        .map(|a| {
            (
                a.name.clone(),
                a.bytes.min(at_oom),
                a.oom_score_adj.map_or(own_adj, |x| x as i16),
            )
        })
        .collect();
    planned.extend(plan.bytes_per_worker.iter().map(|&b| {
        (
            crate::spec::STRESSOR_COMM.to_owned(),
            b.min(at_oom),
            stressor_adj,
        )
    }));
    predict::predict_node(&planned)
}

/// This process's oom_score_adj, which stressors inherit (0 when unreadable).
fn own_oom_score_adj() -> i16 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or(0)
}

/// `--throttle`: the `memory.high` to set, resolved (a percent is of the limit that applies:
/// the target's, or the nearest limited ancestor's), and what the target has now. Refused on
/// cgroup v1 (no `memory.high`), and where the value would never throttle anything.
fn plan_throttle(
    opts: &Options,
    hierarchy: &Hierarchy,
    target: &Target,
    domain: &Domain,
) -> Result<Option<ThrottlePlan>> {
    let Some((spec, given)) = &opts.throttle else {
        return Ok(None);
    };
    if hierarchy.version == target::cgroup::Version::V1 {
        return Err(Error::Refused(format!(
            "--throttle sets memory.high, which needs cgroup v2: the memory controller here is \
             on cgroup v1 ({}), which has no memory.high; nothing was changed",
            hierarchy.mount.display()
        )));
    }
    let page = crate::size::page_size();
    let (bytes, from) = match (spec, target.create, &domain.limit) {
        (SizeSpec::Bytes(b), _, _) => (*b, given.clone()),
        (SizeSpec::Percent(p), Some(limit), _) => (
            spec.resolve(limit),
            format!("{p}% of the {} limit of the new cgroup", Bytes(limit)),
        ),
        (SizeSpec::Percent(p), None, Some((limit, from))) => (
            spec.resolve(*limit),
            format!("{p}% of the {} limit of {}", Bytes(*limit), from.path),
        ),
        (SizeSpec::Percent(p), None, None) => {
            return Err(Error::Refused(format!(
                "--throttle {p}% needs a memory limit, but neither {} nor any ancestor has one; \
                 give an absolute size (e.g. 64Mi)",
                target.cgroup.path
            )));
        }
    };
    let high_bytes = bytes / page * page;
    if high_bytes == 0 {
        usage!("--throttle {given} resolves to less than a page: give at least 4Ki");
    }
    let limit = target.create.or(domain.limit.as_ref().map(|(l, _)| *l));
    if let Some(limit) = limit
        && high_bytes >= limit
    {
        usage!(
            "--throttle {given} ({}) is not below the limit that applies ({}): the limit is \
             reached first, so memory.high would throttle nothing; give less",
            Bytes(high_bytes),
            Bytes(limit)
        );
    }
    let original_bytes = if target.create.is_some() {
        None
    } else {
        target.cgroup.high().map_err(|e| {
            Error::Refused(format!(
                "--throttle: cannot read the memory.high of {} ({e}); nothing was changed",
                target.cgroup.path
            ))
        })?
    };
    Ok(Some(ThrottlePlan {
        high_bytes,
        from,
        original_bytes,
    }))
}

/// `--pressure`: the goal and the bounds of its loop. Refused on cgroup v1 (no per-cgroup
/// PSI), where the target's `memory.pressure` cannot be read (a kernel without PSI, or booted
/// with `psi=0`), without a limit to keep a margin below, and where the domain is already
/// within that margin.
fn plan_pressure(
    opts: &Options,
    target: &Target,
    domain: &Domain,
    throttle: Option<&ThrottlePlan>,
) -> Result<Option<PressurePlan>> {
    let Amount::Pressure(goal) = opts.amount else {
        return Ok(None);
    };
    check_pressure_support(&target.cgroup)?;
    let Some((limit, from)) = &domain.limit else {
        return Err(Error::Refused(format!(
            "--pressure keeps the stressors a margin below a memory limit, but neither {} nor \
             any ancestor has one (memory.max): give a target with a limit",
            target.cgroup.path
        )));
    };
    let margin = pressure::margin(*limit);
    let unreclaimable = if target.create.is_some() {
        0
    } else {
        domain.unreclaimable
    };
    let cap_bytes = pressure::cap(*limit, unreclaimable, 0);
    if cap_bytes == 0 {
        return Err(Error::Refused(format!(
            "--pressure: the memory of {} that reclaim cannot free ({}) is already within the \
             {} margin the loop keeps below its {} limit: the stressors could hold nothing; \
             nothing was changed",
            from.path,
            Bytes(unreclaimable),
            Bytes(margin),
            Bytes(*limit)
        )));
    }
    Ok(Some(PressurePlan {
        goal_pct: goal.pct,
        metric: goal.metric,
        limit_bytes: *limit,
        limit_from: from.path.clone(),
        ceiling_bytes: throttle.map_or(*limit, |t| t.high_bytes.min(*limit)),
        margin_bytes: margin,
        cap_bytes,
    }))
}

/// `--pressure` reads the target's own `memory.pressure` (cgroup v2, [`check_version`]):
/// refused where the file cannot be read (the target's, or its parent's for a cgroup to be
/// created): a kernel built without PSI, booted with `psi=0`, or `cgroup.pressure` set to 0.
fn check_pressure_support(cgroup: &Cgroup) -> Result<()> {
    let dir = if cgroup.dir.exists() {
        cgroup.dir.clone()
    } else {
        cgroup
            .parent()
            .map_or_else(|| cgroup.dir.clone(), |p| p.dir)
    };
    let file = dir.join("memory.pressure");
    match std::fs::read_to_string(&file) {
        Ok(text) if crate::target::psi::Psi::parse(&text).is_some() => Ok(()),
        Ok(_) => Err(Error::Refused(format!(
            "--pressure: {} is not a pressure file; nothing was changed",
            file.display()
        ))),
        Err(e) => Err(Error::Refused(format!(
            "--pressure needs the target's memory.pressure, and {} cannot be read ({e}): this \
             kernel has no PSI (built without CONFIG_PSI, booted with psi=0, or cgroup.pressure \
             is 0 there); nothing was changed",
            file.display()
        ))),
    }
}

/// Who the OOM killer would choose when the plan crosses the limit, from /proc now. The
/// limit is hit before the stressors are full: they grow together, so at the OOM each holds
/// about an even share of what the domain had left.
fn predict_oom(
    opts: &Options,
    plan: &Plan,
    limit: u64,
    cgroup: &Cgroup,
    domain: &Domain,
    target: &Target,
) -> predict::Prediction {
    let own_adj = own_oom_score_adj();
    let stressor_adj = opts.oom_score_adj.map_or(own_adj, |a| a as i16);
    let app_bytes: u64 = opts.apps.iter().map(|a| a.bytes).sum();
    let mut workers: Vec<(String, u64, i16)> = opts
        .apps
        .iter()
        .map(|a| {
            (
                a.name.clone(),
                a.bytes,
                a.oom_score_adj.map_or(own_adj, |x| x as i16),
            )
        })
        .collect();
    let left = limit.saturating_sub(domain.usage + app_bytes);
    let at_oom = left / plan.bytes_per_worker.len().max(1) as u64;
    workers.extend(plan.bytes_per_worker.iter().map(|&b| {
        (
            crate::spec::STRESSOR_COMM.to_owned(),
            b.min(at_oom),
            stressor_adj,
        )
    }));
    predict::predict(cgroup, limit, &workers, target.create.is_none())
}

/// Plans against fixture trees (`--cgroup-root`): what `run --dry-run -o json` prints.
#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        output::line::FirstBound,
        target::{
            cgroup::{self, Version},
            fixture::{SAMPLE_POD_UID, Tree},
            kube::Driver,
        },
    };

    const MIB: u64 = 1 << 20;
    const UID: &str = SAMPLE_POD_UID;

    fn options(tree: &Tree, target: target::Spec, amount: Amount) -> Options {
        let mut opts = Options::new(target, amount, probe::Options::default());
        opts.cgroup_root = Some(tree.root().to_owned());
        opts.runtime_state = RuntimeState::new(tree.state_root());
        opts
    }

    #[test]
    fn plans_pod_and_container_targets() {
        for version in [Version::V1, Version::V2] {
            for driver in [Driver::Systemd, Driver::Cgroupfs] {
                let (tree, ctr, id) = Tree::sample_pod(version, driver);
                let hierarchy = Hierarchy::locate(Some(tree.root())).unwrap();
                let opts = options(
                    &tree,
                    target::Spec::Kube {
                        pod: Some(UID.to_owned()),
                        container: Some("app".to_owned()),
                    },
                    Amount::Size(SizeSpec::Percent(50.0)),
                );
                let (planned, target) = super::plan(&opts, &hierarchy).unwrap();
                assert_eq!(target.cgroup.path, ctr);
                let json = serde_json::to_value(&planned).unwrap();
                let t = &json["target"];
                assert_eq!(t["path"], ctr.as_str());
                assert_eq!(t["dir"], tree.dir(&ctr).display().to_string());
                assert_eq!(t["version"], version.number());
                assert_eq!(t["limit_bytes"], 256 * MIB);
                assert_eq!(t["limit_from"], ctr.as_str());
                assert_eq!(t["usage_bytes"], 40 * MIB);
                assert_eq!(t["working_set_bytes"], 35 * MIB);
                let k = &t["kubernetes"];
                assert_eq!(k["pod_uid"], UID);
                assert_eq!(k["qos"], "Burstable");
                assert_eq!(k["driver"], serde_json::to_value(driver).unwrap());
                assert_eq!(k["container_id"], id.as_str());
                assert_eq!(k["container_name"], "app");
                assert_eq!(k["pod_name"], "web-0");
                assert_eq!(k["namespace"], "shop");
                assert_eq!(k["runtime"], "containerd");
                assert_eq!(json["total_bytes"], 128 * MIB);
                assert_eq!(json["notes"], serde_json::json!([]));
                // The pod's own cgroup: its limit on v1; refused on v2.
                let pod_only = options(
                    &tree,
                    target::Spec::Kube {
                        pod: Some(UID[..6].to_owned()),
                        container: None,
                    },
                    Amount::Size(SizeSpec::Percent(50.0)),
                );
                match (version, super::plan(&pod_only, &hierarchy)) {
                    (Version::V1, Ok((p, _))) => {
                        assert_eq!(p.target.limit_bytes, Some(512 * MIB));
                        assert_eq!(p.total_bytes, 256 * MIB);
                        assert_eq!(p.target.kubernetes.unwrap().container_id, None);
                    }
                    (Version::V2, Err(e)) => assert!(e.to_string().contains("add --container")),
                    (_, other) => panic!("{version:?} --pod alone: {:?}", other.map(|p| p.0)),
                }
            }
        }
    }

    #[test]
    fn every_other_target_resolves_under_the_root() {
        let tree = Tree::new(Version::V1);
        let hierarchy = tree.hierarchy();
        // --cgroup, by cgroup path and by directory.
        tree.cgroup("/sandbox/app", Some(64 * MIB), 8 * MIB);
        for given in [
            "/sandbox/app".to_owned(),
            tree.dir("/sandbox/app").display().to_string(),
        ] {
            let opts = options(
                &tree,
                target::Spec::Cgroup(given),
                Amount::Size(SizeSpec::Percent(25.0)),
            );
            let (plan, _) = super::plan(&opts, &hierarchy).unwrap();
            assert_eq!(plan.target.path, "/sandbox/app");
            assert_eq!(plan.total_bytes, 16 * MIB);
        }
        // --pid and --self: /proc/PID/cgroup's path, mapped under the root.
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = cgroup::memcg_path_from_proc(&own, Version::V1).unwrap_or_else(|| "/".to_owned());
        if own != "/" {
            tree.cgroup(&own, Some(32 * MIB), 0);
            for spec in [
                target::Spec::SelfCgroup,
                target::Spec::Pid(std::process::id()),
            ] {
                let opts = options(&tree, spec, Amount::Size(SizeSpec::Percent(50.0)));
                let (plan, _) = super::plan(&opts, &hierarchy).unwrap();
                assert_eq!(plan.target.path, own);
                assert_eq!(plan.target.limit_bytes, Some(32 * MIB));
            }
        }
        // --new: planned under the root, created nowhere.
        let opts = options(
            &tree,
            target::Spec::New {
                name: "/sandbox/new".to_owned(),
                limit: 64 * MIB,
            },
            Amount::Size(SizeSpec::Bytes(MIB)),
        );
        let (plan, _) = super::plan(&opts, &hierarchy).unwrap();
        assert_eq!(
            plan.target.dir,
            tree.dir("/sandbox/new").display().to_string()
        );
        assert!(plan.target.created);
        assert!(!tree.dir("/sandbox/new").exists());
        // --follow only for pods and containers.
        let mut opts = options(
            &tree,
            target::Spec::Cgroup("/sandbox".into()),
            Amount::Size(SizeSpec::Bytes(MIB)),
        );
        opts.follow = true;
        assert!(plan_err(&opts, &hierarchy).contains("--follow"));
        // A fixture is no cgroup filesystem: nothing can join it.
        let e = Cgroup::resolve(&hierarchy, "/sandbox")
            .unwrap()
            .check_cgroupfs()
            .unwrap_err();
        assert!(e.to_string().contains("--dry-run"), "{e}");
    }

    #[test]
    fn throttle_resolves_against_the_limit_and_needs_v2() {
        let tree = Tree::new(Version::V2);
        let hierarchy = tree.hierarchy();
        tree.cgroup("/pod", Some(256 * MIB), 16 * MIB);
        tree.cgroup("/pod/ctr", None, 16 * MIB);
        tree.cgroup("/free", None, 0);
        let throttle = |target: &str, spec: SizeSpec, amount: Amount| {
            let mut opts = options(&tree, target::Spec::Cgroup(target.into()), amount);
            opts.throttle = Some((spec, spec.to_string()));
            opts
        };
        // A percent is of the nearest limit; alone, no stressors.
        let opts = throttle("/pod/ctr", SizeSpec::Percent(25.0), Amount::Nothing);
        let (plan, _) = super::plan(&opts, &hierarchy).unwrap();
        let t = plan.throttle.unwrap();
        assert_eq!(t.high_bytes, 64 * MIB);
        assert_eq!(t.original_bytes, None);
        assert!(t.from.contains("of /pod"), "{}", t.from);
        assert_eq!(plan.mode, Mode::Throttle);
        assert_eq!((plan.workers, plan.total_bytes), (0, 0));
        assert!(plan.bytes_per_worker.is_empty());
        // With a size, and rounded down to a page.
        let opts = throttle(
            "/pod",
            SizeSpec::Bytes(64 * MIB + 1),
            Amount::Size(SizeSpec::Bytes(8 * MIB)),
        );
        let (plan, _) = super::plan(&opts, &hierarchy).unwrap();
        assert_eq!(plan.throttle.unwrap().high_bytes, 64 * MIB);
        assert_eq!(plan.workers, 1);
        // The original is what the file says.
        std::fs::write(tree.dir("/pod").join("memory.high"), "134217728\n").unwrap();
        let (plan, _) = super::plan(&opts, &hierarchy).unwrap();
        assert_eq!(plan.throttle.unwrap().original_bytes, Some(128 * MIB));
        // Refused: a percent without a limit, not below the limit, with --follow.
        let e = plan_err(
            &throttle("/free", SizeSpec::Percent(50.0), Amount::Nothing),
            &hierarchy,
        );
        assert!(e.contains("needs a memory limit"), "{e}");
        let e = plan_err(
            &throttle("/pod", SizeSpec::Bytes(256 * MIB), Amount::Nothing),
            &hierarchy,
        );
        assert!(e.contains("not below the limit"), "{e}");
        // cgroup v1 has no memory.high.
        let v1 = Tree::new(Version::V1);
        v1.cgroup("/pod", Some(256 * MIB), 0);
        let mut opts = options(&v1, target::Spec::Cgroup("/pod".into()), Amount::Nothing);
        opts.throttle = Some((SizeSpec::Bytes(64 * MIB), "64Mi".into()));
        let e = plan_err(&opts, &v1.hierarchy());
        assert!(
            e.contains("needs cgroup v2") && e.contains("nothing was changed"),
            "{e}"
        );
    }

    #[test]
    fn pressure_needs_psi_on_v2_and_a_limit() {
        let tree = Tree::new(Version::V2);
        let hierarchy = tree.hierarchy();
        tree.cgroup("/pod", Some(256 * MIB), 16 * MIB);
        tree.cgroup("/pod/ctr", None, 16 * MIB);
        tree.cgroup("/free", None, 0);
        tree.cgroup("/full", Some(64 * MIB), 60 * MIB);
        let goal = Goal::parse("some=20%").unwrap();
        let of = |path: &str| {
            options(
                &tree,
                target::Spec::Cgroup(path.into()),
                Amount::Pressure(goal),
            )
        };
        // The limit is the pod's; the stressors start empty, and may hold the limit less an
        // eighth, less what the pod cannot reclaim (16 MiB used, 2 MiB of it page cache).
        let (plan, _) = super::plan(&of("/pod/ctr"), &hierarchy).unwrap();
        assert_eq!(plan.mode, Mode::Pressure);
        assert_eq!(plan.size, "some=20%");
        assert_eq!((plan.workers, plan.total_bytes), (1, 0));
        assert_eq!(plan.bytes_per_worker, vec![0]);
        assert!(!plan.crosses_limit);
        let p = plan.pressure.clone().unwrap();
        assert_eq!((p.goal_pct, p.metric), (20.0, pressure::Metric::Some));
        assert_eq!((p.limit_bytes, p.limit_from.as_str()), (256 * MIB, "/pod"));
        assert_eq!((p.margin_bytes, p.ceiling_bytes), (32 * MIB, 256 * MIB));
        assert_eq!(p.cap_bytes, 256 * MIB - 32 * MIB - 14 * MIB);
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(json["mode"], "pressure");
        assert_eq!(json["pressure"]["metric"], "some");
        // With --throttle, memory.high is the ceiling.
        let mut throttled = of("/pod/ctr");
        throttled.throttle = Some((SizeSpec::Bytes(64 * MIB), "64Mi".into()));
        let (plan, _) = super::plan(&throttled, &hierarchy).unwrap();
        assert_eq!(plan.pressure.unwrap().ceiling_bytes, 64 * MIB);
        // A sandbox to be created: its own limit, nothing in it yet, its parent's PSI.
        let sandbox = options(
            &tree,
            target::Spec::New {
                name: "/pod/new".into(),
                limit: 128 * MIB,
            },
            Amount::Pressure(goal),
        );
        let (plan, _) = super::plan(&sandbox, &hierarchy).unwrap();
        assert_eq!(plan.pressure.unwrap().cap_bytes, 112 * MIB);
        // Refused: no limit anywhere, a domain already within the margin.
        let e = plan_err(&of("/free"), &hierarchy);
        assert!(e.contains("nor any ancestor has one (memory.max)"), "{e}");
        let e = plan_err(&of("/full"), &hierarchy);
        assert!(e.contains("already within the 16 MiB margin"), "{e}");
        // With what cannot work together.
        for (change, needle) in [
            (
                (|o: &mut Options| o.ramp = Some(Duration::from_secs(5))) as fn(&mut Options),
                "--ramp",
            ),
            (|o: &mut Options| o.kind = Kind::File, "--kind file"),
            (|o: &mut Options| o.follow = true, "--follow"),
        ] {
            let mut opts = of("/pod/ctr");
            change(&mut opts);
            let e = super::plan(&opts, &hierarchy).map(drop).unwrap_err();
            assert_eq!(e.exit_code(), crate::exit::USAGE, "{e}");
            assert!(e.to_string().contains(needle), "{e}");
        }
        // No pressure file: a kernel without PSI, or booted with psi=0.
        std::fs::remove_file(tree.dir("/pod/ctr").join("memory.pressure")).unwrap();
        let e = plan_err(&of("/pod/ctr"), &hierarchy);
        assert!(
            e.contains("has no PSI") && e.contains("nothing was changed"),
            "{e}"
        );
        // cgroup v1: one line, before anything is resolved.
        let v1 = Tree::new(Version::V1);
        v1.cgroup("/pod", Some(256 * MIB), 0);
        let mut opts = options(
            &v1,
            target::Spec::Cgroup("/nonexistent".into()),
            Amount::Pressure(goal),
        );
        opts.dry_run = true;
        for e in [
            plan_err(&opts, &v1.hierarchy()),
            super::check_node_bounds(&opts, &v1.hierarchy())
                .unwrap_err()
                .to_string(),
        ] {
            assert!(
                e.contains("needs cgroup v2") && e.contains("nothing was changed"),
                "{e}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
    }

    fn plan_err(opts: &Options, hierarchy: &Hierarchy) -> String {
        super::plan(opts, hierarchy)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    }

    /// The blast radius (no host has a pebibyte to give): an unlimited target is the node's,
    /// refused past its bounds, planned with --allow-node-oom and ranked node-wide; a limited
    /// one meets its limit first; a limit beyond the node is the node's; and the root too.
    #[test]
    fn names_the_domain_and_refuses_a_node_wide_run() {
        const PIB: u64 = 1 << 50;
        let tree = Tree::new(Version::V1);
        let hierarchy = tree.hierarchy();
        tree.cgroup("/free", None, 8 * MIB);
        tree.cgroup("/boxed/app", None, 8 * MIB);
        tree.cgroup("/boxed", Some(64 * MIB), 8 * MIB);
        tree.cgroup("/huge", Some(2 * PIB), 0);
        let of = |path: &str, size: u64| {
            options(
                &tree,
                target::Spec::Cgroup(path.to_owned()),
                Amount::Size(SizeSpec::Bytes(size)),
            )
        };
        // Unlimited, far from the node's bounds: planned, the node named, nothing ranked
        // unless asked.
        let (small, _) = super::plan(&of("/free", 16 * MIB), &hierarchy).unwrap();
        assert_eq!(small.domain.kind, DomainKind::Node);
        assert_eq!(small.domain.first, FirstBound::Neither);
        assert_eq!(small.domain.cgroup, None);
        assert_eq!(small.domain.run_bytes, 16 * MIB);
        assert_eq!(small.domain.eviction_threshold_bytes, 100 * MIB);
        assert!(small.predicted_oom.is_none());
        let mut dry = of("/free", 16 * MIB);
        dry.dry_run = true;
        let (ranked, _) = super::plan(&dry, &hierarchy).unwrap();
        assert_eq!(ranked.predicted_oom.unwrap().domain, "/");
        // Past the node: refused with one line, unless --allow-node-oom.
        let e = plan_err(&of("/free", PIB), &hierarchy);
        assert!(!e.contains('\n'), "{e}");
        for needle in ["OOM domain is the node", "/free", "--allow-node-oom"] {
            assert!(e.contains(needle), "`{e}` lacks {needle}");
        }
        let mut allowed = of("/free", PIB);
        allowed.allow_node_oom = true;
        let (big, _) = super::plan(&allowed, &hierarchy).unwrap();
        assert!(matches!(
            big.domain.first,
            FirstBound::Eviction | FirstBound::NodeOom
        ));
        assert!(big.domain.allow_node_oom);
        let p = big.predicted_oom.expect("a node-wide ranking");
        assert!(p.ranking.iter().any(|r| r.pid == Some(std::process::id())));
        // A limit: it comes first, the ranking is the memcg's.
        let (boxed, _) = super::plan(&of("/boxed/app", 128 * MIB), &hierarchy).unwrap();
        assert_eq!(boxed.domain.kind, DomainKind::Memcg);
        assert_eq!(boxed.domain.first, FirstBound::Limit);
        assert_eq!(boxed.domain.cgroup.as_deref(), Some("/boxed"));
        assert_eq!(boxed.domain.headroom_bytes, Some(56 * MIB));
        assert_eq!(boxed.predicted_oom.as_ref().unwrap().domain, "/boxed");
        let json = serde_json::to_value(&boxed).unwrap();
        assert_eq!(json["domain"]["kind"], "memcg");
        assert_eq!(json["domain"]["first"], "limit");
        // A limit the node cannot give is no bound: the node is the domain.
        let e = plan_err(&of("/huge", PIB), &hierarchy);
        assert!(e.contains("the limit of 2 PiB on /huge"), "{e}");
        let (huge, _) = super::plan(&of("/huge", MIB), &hierarchy).unwrap();
        assert_eq!(huge.domain.kind, DomainKind::Node);
        assert_eq!(huge.domain.limit_bytes, Some(2 * PIB));
        // The root, allowed as a target, is refused past the node as any unlimited target.
        let mut root = of("/", PIB);
        root.allow_root = true;
        let e = plan_err(&root, &hierarchy);
        assert!(
            e.contains("the root cgroup") && e.contains("available memory"),
            "{e}"
        );
        // --eviction-threshold 0: no eviction, only a global OOM.
        let mut none = of("/free", 16 * MIB);
        none.eviction_threshold = 0;
        let (planned, _) = super::plan(&none, &hierarchy).unwrap();
        assert_eq!(planned.domain.eviction_after_bytes, None);
    }

    /// `--fill-to available=`: goals relative to this machine's own memory.available (read
    /// again by each plan: they keep a margin of hundreds of MiB for what the machine does
    /// meanwhile). Plans only: nothing is created or started.
    #[test]
    fn plans_a_memory_available_goal_and_guards_it() {
        const GIB: u64 = 1 << 30;
        let node = NodeMemory::read().unwrap();
        if node.available < 4 * GIB {
            eprintln!("skipped: this machine's memory.available is under 4 GiB");
            return;
        }
        let tree = Tree::new(Version::V1);
        let hierarchy = tree.hierarchy();
        tree.cgroup("/free", None, 8 * MIB);
        tree.cgroup("/boxed", Some(64 * MIB), 8 * MIB);
        tree.cgroup("/boxed/app", None, 8 * MIB);
        let of = |path: &str, spec: SizeSpec| {
            let mut opts = options(
                &tree,
                target::Spec::Cgroup(path.to_owned()),
                Amount::Available(spec),
            );
            opts.amount_given = Some(format!("available={spec}"));
            opts
        };
        let goal = node.available - GIB;
        // Above the eviction threshold, in an unlimited cgroup: planned, nothing refused.
        let (plan, _) = super::plan(&of("/free", SizeSpec::Bytes(goal)), &hierarchy).unwrap();
        assert_eq!(plan.mode, Mode::FillToAvailable);
        assert_eq!(plan.fill_to_bytes, None);
        let a = plan.available.clone().unwrap();
        assert_eq!(a.goal_bytes, goal);
        assert_eq!(a.deadband_bytes, available::deadband(node.mem_total));
        assert_eq!(a.floor_bytes, available::floor(node.mem_total));
        assert_eq!(
            a.lowest_goal_bytes,
            a.floor_bytes + a.gap_bytes + a.deadband_bytes
        );
        // The first estimate is what takes the node from now to the goal.
        assert!(
            plan.total_bytes.abs_diff(GIB) < 256 * MIB,
            "{}",
            plan.total_bytes
        );
        assert_eq!(plan.domain.kind, DomainKind::Node);
        assert_eq!(plan.domain.first, FirstBound::Neither);
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(json["mode"], "fill_to_available");
        assert_eq!(json["available"]["goal_bytes"], goal);
        // A percent is of MemTotal.
        let pct = (goal as f64 / node.mem_total as f64 * 100.0).floor();
        let (plan, _) = super::plan(&of("/free", SizeSpec::Percent(pct)), &hierarchy).unwrap();
        let a = plan.available.unwrap();
        assert_eq!(a.goal_bytes, SizeSpec::Percent(pct).resolve(node.mem_total));
        assert!(a.from.contains("of the node's MemTotal"), "{}", a.from);
        // At the eviction threshold (within the deadband of it), or below it: eviction,
        // refused without --allow-node-oom.
        // (Exactly at the bottom of the deadband is not below the threshold.)
        let band = available::deadband(node.mem_total);
        for threshold in [goal, goal + 64 * MIB, goal - band + MIB] {
            let mut at = of("/free", SizeSpec::Bytes(goal));
            at.eviction_threshold = threshold;
            let e = plan_err(&at, &hierarchy);
            assert!(!e.contains('\n'), "{e}");
            for needle in [
                "OOM domain is the node",
                "no memory limit on /free",
                "--allow-node-oom",
                "eviction threshold",
                "memory.available",
            ] {
                assert!(e.contains(needle), "`{e}` lacks {needle}");
            }
            at.allow_node_oom = true;
            let (plan, _) = super::plan(&at, &hierarchy).unwrap();
            assert_eq!(
                plan.domain.first,
                FirstBound::Eviction,
                "threshold {threshold}"
            );
            assert!(plan.domain.allow_node_oom);
        }
        // A deadband and more above it: no eviction.
        let mut above = of("/free", SizeSpec::Bytes(goal));
        above.eviction_threshold = goal - band;
        let (plan, _) = super::plan(&above, &hierarchy).unwrap();
        assert_eq!(plan.domain.first, FirstBound::Neither);
        // A limit that comes before the goal: an OOM kill in the memcg, no flag needed even
        // with the goal under the threshold.
        let mut boxed = of("/boxed/app", SizeSpec::Bytes(goal));
        boxed.eviction_threshold = goal + 64 * MIB;
        let (plan, _) = super::plan(&boxed, &hierarchy).unwrap();
        assert_eq!(plan.domain.kind, DomainKind::Memcg);
        assert_eq!(plan.domain.first, FirstBound::Limit);
        assert!(plan.crosses_limit);
        assert_eq!(plan.predicted_oom.unwrap().domain, "/boxed");
        // Beyond MemTotal: a usage error; under the floor: refused with the lowest goal; at
        // or below memory.available now: nothing to fill.
        let e = super::plan(&of("/free", SizeSpec::Bytes(node.mem_total)), &hierarchy)
            .map(drop)
            .unwrap_err();
        assert!(
            matches!(&e, Error::Usage(m) if m.contains("MemTotal")),
            "{e}"
        );
        let e = plan_err(&of("/free", SizeSpec::Bytes(MIB)), &hierarchy);
        for needle in [
            "MemAvailable",
            "floor",
            "the lowest goal here is available=",
        ] {
            assert!(e.contains(needle), "`{e}` lacks {needle}");
        }
        // Above memory.available and below MemTotal (however little the node uses: a quiet
        // machine's memory.available can be within a GiB of MemTotal).
        let reached = node.available + (node.mem_total - node.available) / 2;
        let e = plan_err(&of("/free", SizeSpec::Bytes(reached)), &hierarchy);
        assert!(e.contains("nothing to fill"), "{e}");
        // Page cache does not lower memory.available; no ramp; not more workers than the
        // distance feeds.
        let mut file = of("/free", SizeSpec::Bytes(goal));
        file.kind = Kind::File;
        assert!(plan_err(&file, &hierarchy).contains("--kind file"));
        let mut ramp = of("/free", SizeSpec::Bytes(goal));
        ramp.ramp = Some(Duration::from_secs(5));
        assert!(plan_err(&ramp, &hierarchy).contains("no ramp"));
        let mut many = of("/free", SizeSpec::Bytes(node.available - 200 * MIB));
        many.workers = 1000;
        let e = plan_err(&many, &hierarchy);
        assert!(e.contains("give at most"), "{e}");
    }

    #[test]
    fn roots_are_recognised_by_their_shape() {
        assert_eq!(
            Hierarchy::at_root(Tree::new(Version::V1).root())
                .unwrap()
                .version,
            Version::V1
        );
        assert_eq!(
            Hierarchy::at_root(Tree::new(Version::V2).root())
                .unwrap()
                .version,
            Version::V2
        );
        let empty = crate::target::fixture::temp_dir("empty");
        let e = Hierarchy::at_root(&empty).unwrap_err().to_string();
        std::fs::remove_dir_all(&empty).unwrap();
        assert!(e.contains("not shaped like /sys/fs/cgroup"), "{e}");
        // This machine's own hierarchy: --cgroup-root /sys/fs/cgroup finds what the mounts say.
        if let Ok(real) = Hierarchy::discover()
            && real.mount_root == "/"
            && real.mount.starts_with("/sys/fs/cgroup")
        {
            let at = Hierarchy::at_root(Path::new("/sys/fs/cgroup")).unwrap();
            assert_eq!((at.version, at.mount), (real.version, real.mount));
        }
    }
}
