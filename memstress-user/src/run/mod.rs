//! `memstress run`: makes a cgroup's charge grow by exactly the bytes asked, and reports, from
//! the kernel, every OOM kill that follows.
//!
//! The run is planned completely before anything is created (target, limit, bytes per
//! worker); then, in order: the janitor starts, the sandbox cgroup (if any) is created, the
//! probes attach, the workers start inside the target, and the engine samples the cgroup
//! every 100 ms while reporting kills. Every exit path removes what the run created; a
//! SIGKILLed controller is cleaned up by the janitor and the workers' `PR_SET_PDEATHSIG`.

mod engine;
mod member;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
pub use engine::{Outcome, Summary};
pub use member::split;
use serde::Serialize;

use crate::{
    cgroup::{self, Counters, Hierarchy},
    event,
    janitor::{Entry, Janitor},
    predict::{self, Prediction},
    privilege,
    probe::{self, Probes},
    report::Reporter,
    size::{Bytes, SizeSpec},
    spawn::{self, Spec, Stdio},
    stressor::{self, Fill, Kind, Pattern},
    target::{self, Target},
};

/// What happens when the kernel OOM-kills a stressor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnOom {
    /// Report it and keep holding with the stressors that are left.
    #[default]
    Report,
    /// Report it and start the stressor again.
    Restart,
    /// Report it and end the run (exit code 3).
    Stop,
}

impl std::fmt::Display for OnOom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Report => "report",
            Self::Restart => "restart",
            Self::Stop => "stop",
        })
    }
}

/// How much to hold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    /// `--size`: this much in total (bytes or a percent of the limit).
    Size(SizeSpec),
    /// `--fill-to`: top the working set up to this (bytes or a percent of the limit) and keep
    /// it there.
    FillTo(SizeSpec),
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
    /// How much.
    pub amount: Amount,
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
    /// Print the plan and exit.
    pub dry_run: bool,
    /// Other processes to start in the target first.
    pub apps: Vec<App>,
    /// End the run once this many OOM kills were reported (the demo).
    pub stop_after_kills: Option<u32>,
    /// Give up after this long (the demo).
    pub deadline: Option<Duration>,
    /// Probe options.
    pub probe: probe::Options,
}

impl Options {
    /// Defaults for everything but the target and the amount.
    pub fn new(target: target::Spec, amount: Amount, probe: probe::Options) -> Self {
        Self {
            target,
            allow_root: false,
            amount,
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
            dry_run: false,
            apps: Vec::new(),
            stop_after_kills: None,
            deadline: None,
            probe,
        }
    }
}

/// The resolved plan, printed before anything starts (and alone with `--dry-run`).
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// The target.
    pub target: PlanTarget,
    /// `size` (a fixed total) or `fill_to` (a working-set goal kept as the app moves).
    pub mode: &'static str,
    /// The amount as given.
    pub size: String,
    /// How it was resolved.
    pub size_from: String,
    /// Total charge across all stressors (for `fill_to`: the first estimate, goal − working
    /// set now).
    pub total_bytes: u64,
    /// `fill_to`: the working-set goal.
    pub fill_to_bytes: Option<u64>,
    /// Number of stressors.
    pub workers: u32,
    /// Charge of each stressor (they add up to `total_bytes`, rounded to pages).
    pub bytes_per_worker: Vec<u64>,
    /// What the bytes are: the cgroup's charge, stressors' own footprint included.
    pub bytes_are: &'static str,
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
    /// When it does: who the OOM killer would choose, predicted from /proc now.
    pub predicted_oom: Option<Prediction>,
}

/// The target as planned.
#[derive(Clone, Debug, Serialize)]
pub struct PlanTarget {
    /// Cgroup path.
    pub path: String,
    /// 1 or 2.
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
}

fn resolve_amount(
    spec: SizeSpec,
    what: &str,
    of_node: bool,
    limit: Option<&(u64, cgroup::Cgroup)>,
    target: &Target,
) -> Result<(u64, String)> {
    Ok(match spec {
        SizeSpec::Bytes(b) => (b, what.to_owned()),
        SizeSpec::Percent(p) if of_node => {
            let node = target::node_memory().context("cannot read MemTotal from /proc/meminfo")?;
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
            None => bail!(
                "{p}% needs a memory limit, but neither {} nor any ancestor has one; give an \
                 absolute size (e.g. 256Mi) or add --of-node for a percent of the node's memory",
                target.cgroup.path
            ),
        },
    })
}

/// Resolves the plan without creating anything.
pub fn plan(opts: &Options, hierarchy: &Hierarchy) -> Result<(Plan, Target)> {
    if opts.workers == 0 {
        bail!("--workers 0: give at least 1 worker");
    }
    if opts.workers > 1024 {
        bail!("--workers {}: at most 1024 workers", opts.workers);
    }
    if matches!(opts.amount, Amount::FillTo(_)) && opts.kind == Kind::File {
        bail!(
            "--fill-to with --kind file cannot work: page cache that is not recently used is \
             not in the working set (usage − inactive_file); use --kind anon or shmem"
        );
    }
    let target = Target::resolve(hierarchy, &opts.target, opts.allow_root)?;
    let limit = target.effective_limit()?;
    let counters = if target.create.is_some() {
        Counters::default()
    } else {
        target.cgroup.counters()?
    };
    let (mode, spec, total_bytes, fill_to_bytes, size_from) = match opts.amount {
        Amount::Size(spec) => {
            let (bytes, from) = resolve_amount(
                spec,
                "total across all workers",
                opts.of_node,
                limit.as_ref(),
                &target,
            )?;
            ("size", spec, bytes, None, from)
        }
        Amount::FillTo(spec) => {
            let (goal, from) = resolve_amount(
                spec,
                "working-set goal",
                opts.of_node,
                limit.as_ref(),
                &target,
            )?;
            let apps: u64 = opts.apps.iter().map(|a| a.bytes).sum();
            let first = goal.saturating_sub(counters.working_set_bytes + apps);
            ("fill_to", spec, first, Some(goal), from)
        }
    };
    if total_bytes == 0 && fill_to_bytes.is_none() {
        bail!("--size {spec} resolves to 0 bytes");
    }
    if target.cgroup.is_root()
        && let Some(available) = target::node_available()
        && total_bytes >= available
    {
        bail!(
            "{} is not below the node's available memory ({}); refusing in the root cgroup",
            Bytes(total_bytes),
            Bytes(available)
        );
    }
    let page = event::page_size();
    let bytes_per_worker = split(total_bytes, opts.workers as usize, page);
    let app_bytes: u64 = opts.apps.iter().map(|a| a.bytes).sum();
    // The limit may be an ancestor's: what counts against it is the whole domain's usage.
    let domain_usage = match (&limit, target.create) {
        (Some((_, domain)), None) => domain.usage().unwrap_or(counters.usage_bytes),
        _ => counters.usage_bytes,
    };
    let crosses_limit = limit
        .as_ref()
        .is_some_and(|(l, _)| domain_usage + app_bytes + total_bytes > *l);
    let plan = Plan {
        target: PlanTarget {
            path: target.cgroup.path.clone(),
            version: hierarchy.version.number(),
            created: target.create.is_some(),
            limit_bytes: limit.as_ref().map(|(l, _)| *l),
            limit_from: limit.as_ref().map(|(_, c)| c.path.clone()),
            usage_bytes: counters.usage_bytes,
            working_set_bytes: counters.working_set_bytes,
        },
        mode,
        size: spec.to_string(),
        size_from,
        total_bytes,
        fill_to_bytes,
        workers: opts.workers,
        bytes_per_worker,
        bytes_are: "cgroup charge, including each stressor's own process footprint",
        kind: opts.kind,
        pattern: opts.pattern,
        ramp_s: opts.ramp.map(|d| d.as_secs_f64()),
        hold_s: opts.hold.map(|d| d.as_secs_f64()),
        on_oom: opts.on_oom,
        oom_score_adj: opts.oom_score_adj,
        crosses_limit,
        headroom_bytes: limit
            .as_ref()
            .map(|(l, _)| l.saturating_sub(domain_usage + app_bytes)),
        predicted_oom: None,
    };
    let mut plan = plan;
    if crosses_limit && let Some((limit, domain)) = &limit {
        let own_adj = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or(0);
        let stressor_adj = opts.oom_score_adj.map_or(own_adj, |a| a as i16);
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
        // The limit is hit before the stressors are full: they grow together, so at the
        // OOM each holds about an even share of what the domain had left.
        let left = limit.saturating_sub(domain_usage + app_bytes);
        let at_oom = left / plan.bytes_per_worker.len().max(1) as u64;
        workers.extend(
            plan.bytes_per_worker
                .iter()
                .map(|&b| ("memstress-vm".to_owned(), b.min(at_oom), stressor_adj)),
        );
        plan.predicted_oom = Some(predict::predict(
            domain,
            *limit,
            &workers,
            target.create.is_none(),
        ));
    }
    Ok((plan, target))
}

/// Prints the plan.
pub fn print_plan(plan: &Plan, reporter: &Reporter) {
    reporter.json("plan", plan);
    let t = &plan.target;
    let limit = match (&t.limit_bytes, &t.limit_from) {
        (Some(l), Some(from)) if *from == t.path => format!("limit {}", Bytes(*l)),
        (Some(l), Some(from)) => format!("limit {} (set on {from})", Bytes(*l)),
        _ => "no limit".to_owned(),
    };
    let created = if t.created {
        ", created for this run"
    } else {
        ""
    };
    reporter.text(&format!(
        "target {} (cgroup v{}, {limit}{created}); usage {}, working set {}",
        t.path,
        t.version,
        Bytes(t.usage_bytes),
        Bytes(t.working_set_bytes)
    ));
    let per = if plan.bytes_per_worker.windows(2).all(|w| w[0] == w[1]) {
        format!("{} × {}", plan.workers, Bytes(plan.bytes_per_worker[0]))
    } else {
        plan.bytes_per_worker
            .iter()
            .map(|b| Bytes(*b).to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let hold = plan
        .hold_s
        .map_or_else(|| "until interrupted".to_owned(), |s| format!("for {s}s"));
    let ramp = plan
        .ramp_s
        .map_or_else(String::new, |s| format!(", ramped over {s}s"));
    let kind = match plan.kind {
        Kind::Anon => "anonymous memory",
        Kind::Shmem => "shared memory",
        Kind::File => "page cache",
    };
    let what = match plan.fill_to_bytes {
        Some(goal) => format!(
            "keep the working set at {} ({}) with {}: {} to start",
            Bytes(goal),
            plan.size_from,
            kind,
            Bytes(plan.total_bytes),
        ),
        None => format!(
            "stress {per} = {} of {kind} (--size {}: {}; it is the cgroup's charge, stressors' \
             own footprint included)",
            Bytes(plan.total_bytes),
            plan.size,
            plan.size_from
        ),
    };
    reporter.text(&format!(
        "{what}{ramp}, held {hold}; on OOM: {}{}",
        plan.on_oom,
        if plan.crosses_limit {
            "; this crosses the limit: expect OOM kills"
        } else {
            ""
        }
    ));
    if let Some(p) = &plan.predicted_oom {
        let top: Vec<String> = p
            .ranking
            .iter()
            .take(5)
            .enumerate()
            .map(|(i, r)| {
                let who = match r.pid {
                    Some(pid) => format!("{pid} ({})", r.comm.as_deref().unwrap_or("?")),
                    None => format!("a planned {}", r.comm.as_deref().unwrap_or("worker")),
                };
                format!(
                    "{}. {who}: {} points",
                    i + 1,
                    crate::points::group(r.points)
                )
            })
            .collect();
        reporter.text(&format!(
            "predicted OOM ranking in {} (totalpages {}, from /proc now): {}{}",
            p.domain,
            crate::points::group(p.totalpages as i64),
            top.join("; "),
            if p.exempt.is_empty() {
                String::new()
            } else {
                format!("; exempt (oom_score_adj -1000): {}", p.exempt.join(", "))
            }
        ));
    }
}

/// Fails before the run if the stressors cannot be given `adj`: lowering oom_score_adj below
/// what this process may set needs CAP_SYS_RESOURCE. Tried for real, in a throwaway child,
/// because the kernel's rule (`oom_score_adj_min`) is not visible from userspace.
pub fn check_oom_score_adj(adj: i32) -> Result<()> {
    let mut spec = Spec::new(
        std::path::Path::new(spawn::SELF_EXE),
        vec!["memstress".to_owned(), "__stressor".to_owned()],
    );
    spec.oom_score_adj = Some(adj);
    spec.stdin = Stdio::Null;
    spec.stdout = Stdio::Null;
    spec.stderr = Stdio::Null;
    match spawn::spawn(&spec) {
        Ok(child) => {
            // The worker reads EOF on stdin and exits at once; Drop reaps it.
            drop(child);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let own = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap_or_default();
            let has = privilege::has(privilege::effective(), privilege::CAP_SYS_RESOURCE);
            bail!(
                "--oom-score-adj {adj} is not allowed: it is below this process's oom_score_adj \
                 ({}) and lowering it needs CAP_SYS_RESOURCE{}",
                own.trim(),
                if has {
                    ""
                } else {
                    ", which memstress does not have"
                }
            )
        }
        Err(e) => Err(e).context("cannot check --oom-score-adj"),
    }
}

/// In `--self` mode the controller shares the target: it tries to keep the OOM killer off
/// itself, and says what it could not do.
fn protect_controller() {
    match std::fs::write("/proc/self/oom_score_adj", "-1000") {
        Ok(()) => tracing::info!("controller protected from the OOM killer (oom_score_adj -1000)"),
        Err(_) => {
            let rss = std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .map(|v| v.trim().to_owned())
                })
                .unwrap_or_default();
            tracing::warn!(
                "cannot protect the controller (pid {}, {rss}) from the OOM killer in its own \
                 cgroup (lowering oom_score_adj needs CAP_SYS_RESOURCE): it may be chosen \
                 instead of a stressor",
                std::process::id()
            );
        }
    }
}

/// How much nicer than the controller the probe-loading thread runs.
const LOADER_NICE: i32 = 5;

/// Makes the calling thread `by` nicer (negative: less nice), within what this process may
/// set; returns the change made, to undo it. Linux keeps a nice value per thread.
fn nice_this_thread(by: i32) -> i32 {
    // SAFETY: gettid and getpriority/setpriority on this thread have no preconditions;
    // getpriority can return -1 legitimately, so errno is cleared first.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        if now == -1 && *libc::__errno_location() != 0 {
            return 0;
        }
        let want = (now + by).clamp(-20, 19);
        if libc::setpriority(libc::PRIO_PROCESS, tid, want) == 0 {
            want - now
        } else {
            0
        }
    }
}

/// Runs the whole thing. Returns the outcome; every path cleans up.
pub async fn run(opts: Options, reporter: &Reporter) -> Result<Outcome> {
    let hierarchy = Hierarchy::discover()?;
    let (plan, target) = plan(&opts, &hierarchy)?;
    if opts.kind == Kind::File {
        let dir = opts
            .file_dir
            .clone()
            .unwrap_or_else(stressor::default_file_dir);
        if stressor::is_tmpfs(&dir) {
            tracing::warn!(
                "{} is on tmpfs: its pages are shmem (in the working set, not reclaimable page \
                 cache); give --file-dir on a disk for page cache",
                dir.display()
            );
        }
    }
    print_plan(&plan, reporter);
    if opts.dry_run {
        return Ok(Outcome::Completed);
    }
    // Fail on missing privileges, kernel support or permissions before creating anything.
    let checked = probe::check_access(&opts.probe)?;
    if let Some(adj) = opts.oom_score_adj {
        check_oom_score_adj(adj)?;
    }
    let own = cgroup::own_cgroup(&hierarchy).ok();
    let in_own = own.as_ref().is_some_and(|o| *o == target.cgroup);
    if in_own {
        protect_controller();
    }

    let mut janitor = None;
    let mut created = None;
    let result = async {
        if let Some(limit) = target.create {
            let mut j = Janitor::start().context("cannot start the cleanup guard")?;
            j.record(&Entry::Cgroup(hierarchy.version, target.cgroup.dir.clone()))?;
            janitor = Some(j);
            let parent = target
                .cgroup
                .parent()
                .context("a new cgroup needs a parent")?;
            let name = target
                .cgroup
                .path
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            let cgroup = parent.create_child(&name)?;
            created = Some(cgroup.clone());
            cgroup.set_limit(limit)?;
        }
        // The probes load on a thread of their own while the engine starts the stressors,
        // yielding the CPU to them: until the probes are attached the stressors stay below
        // the limit (see engine::pre_probe_cap), so loading a little later costs nothing,
        // while a stressor that waits for the CPU is pressure that arrives late.
        let probe_opts = opts.probe.clone();
        let loading = tokio::task::spawn_blocking(move || {
            let niced = nice_this_thread(LOADER_NICE);
            let probes = Probes::load_checked(&probe_opts, checked);
            nice_this_thread(-niced);
            probes
        });
        engine::engine(&opts, &plan, &target.cgroup, !in_own, loading, reporter).await
    }
    .await;
    if let Some(cgroup) = created
        && let Err(e) = cgroup.remove(Duration::from_secs(10))
    {
        tracing::error!("{}", crate::error_chain(&e));
    }
    if let Some(j) = janitor {
        j.dismiss();
    }
    result
}
