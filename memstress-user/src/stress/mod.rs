//! `memstress run`: makes a cgroup's charge grow by exactly the bytes asked, and reports, from
//! the kernel, every OOM kill that follows.
//!
//! The run is planned completely before anything is created (target, limit, bytes per
//! worker); then, in order: the janitor starts, the sandbox cgroup (if any) is created, the
//! probes attach, the workers start inside the target, and the engine samples the cgroup
//! every 100 ms while reporting kills. Every exit path removes what the run created; a
//! SIGKILLed controller is cleaned up by the janitor and the workers' `PR_SET_PDEATHSIG`.

mod engine;
pub mod janitor;
mod member;
pub mod spawn;
pub mod stressor;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
pub use engine::{Ended, Outcome, PeakScope, Summary};
pub use member::split;
use serde::Serialize;

use crate::{
    target::cgroup::{self, Counters, Hierarchy},
    explain::record,
    stress::janitor::{Entry, Janitor},
    target::kube::{Identity, RuntimeState},
    explain::predict::{self, Prediction},
    privilege,
    probe::{self, Probes},
    output::Reporter,
    size::{Bytes, SizeSpec},
    stress::spawn::{Spec, Stdio},
    input::stresschaos::StressChaos,
    spec::{Fill, Kind, OnOom, Pattern},
    target::{self, Target},
};

/// A request that cannot work as given: exit code 2, like a command-line usage error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Fails with a [`UsageError`].
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(UsageError(format!($($arg)*)).into())
    };
}

/// A stressor's own footprint when `run` could not measure one (an idle worker measured
/// 508 KiB on x86-64 with glibc).
pub const DEFAULT_FOOTPRINT: u64 = 512 << 10;

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
    /// The amount as the user wrote it (`64M`), echoed in the plan; `None`: not from a flag.
    pub amount_given: Option<String>,
    /// A stressor's own charge while holding nothing (its runtime, page tables, kernel
    /// stack), measured by [`stressor::idle_footprint`]; `None`: [`DEFAULT_FOOTPRINT`].
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
    /// `--from-stresschaos`: the file the run comes from (its selector may name the target).
    pub stresschaos: Option<StressChaos>,
    /// What differs from what the source (a StressChaos) would do, for the plan.
    pub notes: Vec<String>,
}

impl Options {
    /// Defaults for everything but the target and the amount.
    pub fn new(target: target::Spec, amount: Amount, probe: probe::Options) -> Self {
        Self {
            target,
            allow_root: false,
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
    /// When it does: who the OOM killer would choose, predicted from /proc now.
    pub predicted_oom: Option<Prediction>,
    /// Who the stressors run as; they hold no capabilities.
    pub stressor_user: privilege::StressorUser,
    /// The credentials to switch to (`None`: keep this process's own).
    #[serde(skip)]
    pub credentials: Option<privilege::Credentials>,
    /// `--follow`: a pod/container target that disappears is found again and re-injected.
    pub follow: bool,
    /// The StressChaos the run comes from (`null`: flags only).
    pub stresschaos: Option<StressChaos>,
    /// How this run differs from what its source (a StressChaos) would do, one sentence each.
    pub notes: Vec<String>,
}

/// The target as planned.
#[derive(Clone, Debug, Serialize)]
pub struct PlanTarget {
    /// Cgroup path (from the hierarchy's root: /proc/PID/cgroup's form).
    pub path: String,
    /// Its directory (under `--cgroup-root` when given).
    pub dir: String,
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
    /// The Kubernetes pod or container it is (`--pod`, `--container`; `null` otherwise).
    pub kubernetes: Option<Identity>,
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

/// Fails unless `who` can create files in `dir` (page-cache stressors write there after
/// dropping to their user): by the mode bits, as the kernel's permission check would.
fn check_writable(dir: &std::path::Path, who: privilege::Credentials) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("--file-dir {}: cannot use it", dir.display()))?;
    if !meta.is_dir() {
        bail!("--file-dir {}: not a directory", dir.display());
    }
    let mode = meta.mode();
    let writable = who.uid == 0
        || (meta.uid() == who.uid && mode & 0o300 == 0o300)
        || (meta.uid() != who.uid && meta.gid() == who.gid && mode & 0o030 == 0o030)
        || (meta.uid() != who.uid && meta.gid() != who.gid && mode & 0o003 == 0o003);
    if !writable {
        bail!(
            "--file-dir {}: stressors run as uid {} and cannot write there (mode {:o}, owner \
             {}:{}); give a directory they can write to (e.g. /var/tmp) or choose --user",
            dir.display(),
            who.uid,
            mode & 0o7777,
            meta.uid(),
            meta.gid()
        );
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
    let page = record::page_size();
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

/// Resolves the plan without creating anything.
pub fn plan(opts: &Options, hierarchy: &Hierarchy) -> Result<(Plan, Target)> {
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
    if opts.follow && !opts.target.followable() && opts.stresschaos.is_none() {
        usage!(
            "--follow re-resolves a --pod/--container target after it disappears; with --new, --cgroup, --pid or --self there is nothing to look for"
        );
    }
    let mut notes = opts.notes.clone();
    let spec = match &opts.stresschaos {
        Some(sc) => {
            let (spec, more) = sc.target(&opts.target, hierarchy, &opts.runtime_state)?;
            notes.extend(more);
            spec
        }
        None => opts.target.clone(),
    };
    if opts.follow && !spec.followable() {
        usage!(
            "--follow re-resolves a --pod/--container target after it disappears; with --new, --cgroup, --pid or --self there is nothing to look for"
        );
    }
    let (credentials, stressor_user) =
        match privilege::stressor_user(opts.user.as_deref(), opts.mlock) {
            Ok(found) => found,
            Err(e) if e.is_usage() => usage!("{e}"),
            Err(e) => return Err(e.into()),
        };
    if opts.kind == Kind::File {
        let dir = opts
            .file_dir
            .clone()
            .unwrap_or_else(stressor::default_file_dir);
        check_writable(&dir, credentials.unwrap_or_else(privilege::own))?;
    }
    let target = Target::resolve(hierarchy, &spec, opts.allow_root, &opts.runtime_state)?;
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
        usage!("--size {spec} resolves to 0 bytes");
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
    let page = record::page_size();
    let bytes_per_worker = split(total_bytes, opts.workers as usize, page);
    let app_bytes: u64 = opts.apps.iter().map(|a| a.bytes).sum();
    // The limit may be an ancestor's: what counts against it is the whole domain's usage.
    let domain_usage = match (&limit, target.create) {
        (Some((_, domain)), None) => domain.usage().unwrap_or(counters.usage_bytes),
        _ => counters.usage_bytes,
    };
    let footprint = opts.footprint.unwrap_or(DEFAULT_FOOTPRINT);
    // Room for the stressors' footprints: page cache in the domain would be reclaimed to
    // make it, so what cannot be reclaimed (the working set) is what counts.
    let domain_working_set = match (&limit, target.create) {
        (Some((_, domain)), None) => domain
            .counters()
            .map_or(domain_usage, |c| c.working_set_bytes),
        _ => counters.working_set_bytes,
    };
    check_shares(
        opts,
        &bytes_per_worker,
        fill_to_bytes,
        footprint,
        limit.as_ref().map(|(l, d)| {
            (
                l.saturating_sub(domain_working_set + app_bytes),
                d.path.as_str(),
            )
        }),
    )?;
    let crosses_limit = limit
        .as_ref()
        .is_some_and(|(l, _)| domain_usage + app_bytes + total_bytes > *l);
    let plan = Plan {
        target: PlanTarget {
            path: target.cgroup.path.clone(),
            dir: target.cgroup.dir.display().to_string(),
            version: hierarchy.version.number(),
            created: target.create.is_some(),
            limit_bytes: limit.as_ref().map(|(l, _)| *l),
            limit_from: limit.as_ref().map(|(_, c)| c.path.clone()),
            usage_bytes: counters.usage_bytes,
            working_set_bytes: counters.working_set_bytes,
            kubernetes: target.kube.clone(),
        },
        mode,
        size: opts
            .amount_given
            .clone()
            .unwrap_or_else(|| spec.to_string()),
        size_from,
        total_bytes,
        fill_to_bytes,
        workers: opts.workers,
        bytes_per_worker,
        bytes_are: "cgroup charge, including each stressor's own process footprint",
        stressor_footprint_bytes: footprint,
        kernel_bytes_per_page: stressor::kernel_bytes_per_page(
            opts.kind,
            &opts
                .file_dir
                .clone()
                .unwrap_or_else(stressor::default_file_dir),
        ),
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
        stressor_user,
        credentials,
        follow: opts.follow,
        stresschaos: opts.stresschaos.clone(),
        notes,
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
        workers.extend(plan.bytes_per_worker.iter().map(|&b| {
            (
                stressor::STRESSOR_COMM.to_owned(),
                b.min(at_oom),
                stressor_adj,
            )
        }));
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
    let who = t.kubernetes.as_ref().map_or_else(String::new, |k| {
        let pod = match (&k.namespace, &k.pod_name) {
            (Some(ns), Some(name)) => format!("pod {ns}/{name} ({})", k.pod_uid),
            _ => format!("pod {}", k.pod_uid),
        };
        let container = match (&k.container_id, &k.container_name) {
            (Some(id), Some(name)) => format!(", container {name} ({})", &id[..id.len().min(12)]),
            (Some(id), None) => format!(", container {}", &id[..id.len().min(12)]),
            _ => String::new(),
        };
        format!(
            "{pod}{container}, {:?}, {} driver: ",
            k.qos,
            match k.driver {
                crate::target::kube::Driver::Systemd => "systemd",
                crate::target::kube::Driver::Cgroupfs => "cgroupfs",
            }
        )
    });
    reporter.text(&format!(
        "target {who}{} (cgroup v{}, {limit}{created}); usage {}, working set {}",
        t.path,
        t.version,
        Bytes(t.usage_bytes),
        Bytes(t.working_set_bytes)
    ));
    if let Some(sc) = &plan.stresschaos {
        reporter.text(&format!(
            "from {} ({}): memory stressor, {} workers, size {}",
            sc.label(),
            sc.file.display(),
            sc.workers,
            sc.size_text
        ));
    }
    for note in &plan.notes {
        reporter.text(&format!("note: {note}"));
    }
    let per = shares_text(&plan.bytes_per_worker);
    let hold = plan.hold_s.map_or_else(
        || "until interrupted".to_owned(),
        |s| format!("for {}", duration_text(s)),
    );
    let ramp = plan.ramp_s.map_or_else(String::new, |s| {
        format!(", ramped over {}", duration_text(s))
    });
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
            "stress {per} = {} of {kind} ({}: {}; it is the cgroup's charge, each stressor's \
             own footprint of {} included)",
            Bytes(plan.total_bytes),
            match &plan.stresschaos {
                Some(sc) if plan.size == sc.size.to_string() =>
                    format!("size {} of the StressChaos", sc.size_text),
                _ if plan.size != SizeSpec::Bytes(plan.total_bytes).to_string()
                    && !plan.size.ends_with('%') =>
                {
                    format!("--size {} = {}", plan.size, Bytes(plan.total_bytes))
                }
                _ => format!("--size {}", plan.size),
            },
            plan.size_from,
            Bytes(plan.stressor_footprint_bytes)
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
    let u = &plan.stressor_user;
    reporter.text(&format!(
        "stressors run as uid {} gid {} ({}), with {}, oom_score_adj {}",
        u.uid,
        u.gid,
        u.from,
        if u.capabilities == "none" {
            "no capabilities".to_owned()
        } else {
            format!("only {}", u.capabilities)
        },
        match plan.oom_score_adj {
            Some(adj) => format!("{adj} (--oom-score-adj)"),
            None => "inherited".to_owned(),
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
                    crate::explain::points::group(r.points)
                )
            })
            .collect();
        reporter.text(&format!(
            "predicted OOM ranking in {} (totalpages {}, from /proc now): {}{}",
            p.domain,
            crate::explain::points::group(p.totalpages as i64),
            top.join("; "),
            if p.exempt.is_empty() {
                String::new()
            } else {
                format!("; exempt (oom_score_adj -1000): {}", p.exempt.join(", "))
            }
        ));
    }
}

/// "3 × 4 MiB", or "20 × 208 KiB + 80 × 204 KiB": equal neighbours grouped, so that the line
/// stays short whatever the number of workers.
fn shares_text(shares: &[u64]) -> String {
    let mut groups: Vec<(usize, u64)> = Vec::new();
    for &share in shares {
        match groups.last_mut() {
            Some((n, s)) if *s == share => *n += 1,
            _ => groups.push((1, share)),
        }
    }
    // Shares differ by a page at most, which a rounded size hides: then exact KiB.
    let rounded: Vec<String> = groups.iter().map(|(_, s)| Bytes(*s).to_string()).collect();
    let exact = rounded.windows(2).any(|w| w[0] == w[1]);
    groups
        .iter()
        .zip(rounded)
        .map(|((n, s), r)| {
            if exact {
                format!("{n} × {} KiB", s / 1024)
            } else {
                format!("{n} × {r}")
            }
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

/// A duration as a person writes it: `1h 30m`, `45s`, `500ms`.
fn duration_text(seconds: f64) -> String {
    humantime::format_duration(Duration::from_secs_f64(seconds)).to_string()
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

/// `--thp` asks; the kernel's THP settings decide. Says so when they refuse.
fn warn_thp(opts: &Options) {
    if !opts.thp {
        return;
    }
    let (file, what) = match opts.kind {
        Kind::Shmem => ("shmem_enabled", "shared memory"),
        _ => ("enabled", "anonymous memory"),
    };
    let path = format!("/sys/kernel/mm/transparent_hugepage/{file}");
    if let Some(mode) = std::fs::read_to_string(&path)
        .ok()
        .as_deref()
        .and_then(thp_mode)
        && matches!(mode, "never" | "deny")
    {
        tracing::warn!(
            "--thp: {path} is `{mode}`: the kernel gives {what} no huge pages, whatever \
             memstress asks"
        );
    }
}

/// The selected mode of a THP sysfs file: `always [madvise] never` → `madvise`.
fn thp_mode(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
}

/// In `--self` mode the controller shares the target: it tries to keep the OOM killer off
/// itself, and says what it could not do.
/// Sets the controller's own oom_score_adj to -1000; returns the value it had (`None` when it
/// could not be changed).
fn protect_controller() -> Option<i32> {
    let previous = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|a| a.trim().parse().ok())?;
    match std::fs::write("/proc/self/oom_score_adj", "-1000") {
        Ok(()) => {
            tracing::info!("controller protected from the OOM killer (oom_score_adj -1000)");
            Some(previous)
        }
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
            None
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
pub async fn run(opts: Options, reporter: &Reporter) -> Result<Ended> {
    let hierarchy = Hierarchy::locate(opts.cgroup_root.as_deref())?;
    let mut opts = opts;
    if opts.footprint.is_none() {
        opts.footprint = member::measure_footprint()
            .map_err(|e| tracing::debug!("cannot measure a stressor's footprint: {e}"))
            .ok();
    }
    let (mut plan, target) = plan(&opts, &hierarchy)?;
    warn_thp(&opts);
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
        return Ok(Ended {
            outcome: Outcome::Completed,
            signal: None,
            done: true,
        });
    }
    // A tree under --cgroup-root may be a copy: processes could not join it.
    if target.create.is_none() {
        target.cgroup.check_cgroupfs()?;
    } else if let Some(parent) = target.cgroup.parent() {
        parent.check_cgroupfs()?;
    }
    // Fail on missing privileges, kernel support or permissions before creating anything.
    let checked = probe::check_access(&opts.probe)?;
    if let Some(adj) = opts.oom_score_adj {
        check_oom_score_adj(adj)?;
    }
    // One run per target: refuse before anything is created (exit code 5).
    let mut _lock = match target.create {
        None => Some(crate::target::lock::lock(&target.cgroup.dir, &target.cgroup.path)?),
        Some(_) => None,
    };
    let own = cgroup::own_cgroup(&hierarchy).ok();
    let in_own = own.as_ref().is_some_and(|o| *o == target.cgroup);
    // While the probes load, the controller itself grows by tens of MiB (the kernel's BTF):
    // when its cgroup is inside the domain, no cap on the stressors can foresee that charge,
    // so they hold nothing until the probes are attached (an OOM then is always seen).
    if let (Some(own), Ok(Some((_, domain)))) = (&own, target.effective_limit())
        && own.is_within(&domain)
    {
        plan.headroom_bytes = Some(0);
    }
    // The controller protects itself in its own cgroup; its children would inherit that
    // -1000 and be exempt from the OOM killer, so they get the value it had before.
    if in_own && let Some(previous) = protect_controller() {
        opts.oom_score_adj.get_or_insert(previous);
        for app in &mut opts.apps {
            app.oom_score_adj.get_or_insert(previous);
        }
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
            _lock = Some(crate::target::lock::lock(&cgroup.dir, &cgroup.path)?);
            cgroup.set_limit(limit)?;
        }
        let follow = match (&target.kube, opts.follow) {
            (Some(identity), true) => Some(engine::Follow {
                hierarchy: hierarchy.clone(),
                state: opts.runtime_state.clone(),
                identity: identity.clone(),
            }),
            _ => None,
        };
        // Kernel-reported paths are on the real hierarchy, whatever --cgroup-root says.
        let real = if opts.cgroup_root.is_some() {
            Hierarchy::discover().ok()
        } else {
            Some(hierarchy.clone())
        };
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
        engine::engine(
            &opts,
            &plan,
            &target.cgroup,
            !in_own,
            loading,
            reporter,
            engine::Context { real, follow },
        )
        .await
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

/// Plans against fixture trees (`--cgroup-root`): what `run --dry-run -o json` prints.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        target::cgroup::Version,
        target::fixture::{Tree, container_id},
        target::kube::{Driver, Qos, Runtime},
        input::stresschaos,
    };

    const MIB: u64 = 1 << 20;
    const UID: &str = "5b1d4c7e-1f2a-4b3c-9d8e-7f6a5b4c3d2e";

    fn options(tree: &Tree, target: target::Spec, amount: Amount) -> Options {
        let mut opts = Options::new(target, amount, probe::Options::default());
        opts.cgroup_root = Some(tree.root().to_owned());
        opts.runtime_state = RuntimeState::new(tree.state_root());
        opts
    }

    fn pod_tree(version: Version, driver: Driver) -> (Tree, String, String) {
        let tree = Tree::new(version);
        let pod = tree.pod(driver, Qos::Burstable, UID, Some(512 * MIB));
        let id = container_id(1);
        let ctr = tree.container(
            &pod,
            driver,
            Runtime::Containerd,
            &id,
            Some(256 * MIB),
            40 * MIB,
        );
        tree.state(Runtime::Containerd, &id, UID, "shop", "web-0", Some("app"));
        (tree, ctr, id)
    }

    #[test]
    fn plans_pod_and_container_targets() {
        for version in [Version::V1, Version::V2] {
            for driver in [Driver::Systemd, Driver::Cgroupfs] {
                let (tree, ctr, id) = pod_tree(version, driver);
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
    fn plans_the_docs_stresschaos_with_its_real_total() {
        let (tree, ctr, _) = pod_tree(Version::V1, Driver::Systemd);
        let hierarchy = tree.hierarchy();
        let sc = stresschaos::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/memory-stress.yaml"
        )))
        .unwrap();
        let settings = sc.settings(&stresschaos::Overrides::default(), OnOom::Report);
        let mut opts = options(
            &tree,
            target::Spec::Kube {
                pod: Some(UID.to_owned()),
                container: Some("app".to_owned()),
            },
            Amount::Size(settings.size.unwrap()),
        );
        opts.workers = settings.workers;
        opts.notes = settings.notes;
        opts.stresschaos = Some(sc);
        let (planned, _) = super::plan(&opts, &hierarchy).unwrap();
        let json = serde_json::to_value(&planned).unwrap();
        assert_eq!(json["total_bytes"], 256_000_000);
        assert_eq!(json["workers"], 4);
        assert_eq!(json["target"]["path"], ctr.as_str());
        assert_eq!(json["stresschaos"]["name"], "memory-stress-example");
        assert_eq!(json["stresschaos"]["size_text"], "256MB");
        let notes: Vec<&str> = json["notes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert!(notes[0].contains("total across 4 workers"), "{notes:?}");
        assert!(
            notes
                .iter()
                .any(|n| n.contains("labelSelectors") && n.contains("not used")),
            "{notes:?}"
        );
        // Without a target flag, its labelSelectors need the cluster API.
        opts.target = target::Spec::FromSelector;
        let e = plan_err(&opts, &hierarchy);
        assert!(
            e.contains("labelSelectors") && e.contains("cluster API") && e.contains("--pod"),
            "{e}"
        );
    }

    #[test]
    fn a_selector_by_pod_name_is_found_on_the_node() {
        let (tree, ctr, _) = pod_tree(Version::V2, Driver::Systemd);
        let file = tree.root().join("sc.yaml");
        std::fs::write(
            &file,
            "apiVersion: chaos-mesh.org/v1alpha1\nkind: StressChaos\nmetadata: {name: s}\nspec:\n  mode: one\n  selector:\n    pods:\n      shop: [web-0]\n  containerNames: [app]\n  stressors:\n    memory: {workers: 2, size: 10%}\n",
        )
        .unwrap();
        let sc = stresschaos::load(&file).unwrap();
        let settings = sc.settings(&stresschaos::Overrides::default(), OnOom::Report);
        let mut opts = options(
            &tree,
            target::Spec::FromSelector,
            Amount::Size(settings.size.unwrap()),
        );
        opts.stresschaos = Some(sc);
        let (plan, _) = super::plan(&opts, &tree.hierarchy()).unwrap();
        assert_eq!(plan.target.path, ctr);
        assert_eq!(plan.total_bytes, (256 * MIB) / 10 + 1);
        assert!(
            plan.notes.iter().any(|n| n.contains("pod shop/web-0")),
            "{:?}",
            plan.notes
        );
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

    fn plan_err(opts: &Options, hierarchy: &Hierarchy) -> String {
        super::plan(opts, hierarchy)
            .map(|_| ())
            .unwrap_err()
            .to_string()
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

    use std::path::Path;

    use crate::target::cgroup::Cgroup;
}
