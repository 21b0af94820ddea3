//! `memstress run`: holds exactly sized memory inside a cgroup and reports, from the kernel,
//! every OOM kill that follows.
//!
//! The run is planned completely before anything is created (target, limit, bytes per
//! worker); then, in order: the janitor starts, the sandbox cgroup (if any) is created, the
//! probes attach, the workers start inside the target, and the loop samples the cgroup every
//! 100 ms while reporting kills. Every exit path goes through [`teardown`]; a SIGKILLed
//! controller is cleaned up by the janitor and the workers' `PR_SET_PDEATHSIG`.

use std::{
    io::{IsTerminal as _, Write as _},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    net::unix::pipe,
    sync::mpsc,
    time::sleep_until,
};

use crate::{
    cgroup::{Cgroup, Counters, Hierarchy},
    event::{self, Record},
    exit,
    janitor::{Entry, Janitor},
    probe::{self, Probes},
    report::{KillContext, Reporter},
    signals,
    size::{Bytes, SizeSpec},
    spawn::{self, Exit, Spec, Stdio},
    stressor::{Command, Fill, Report, WorkerArgs},
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
    /// Total size across all workers.
    pub size: SizeSpec,
    /// A percent size refers to the node's memory instead of a limit.
    pub of_node: bool,
    /// Number of stressor processes.
    pub workers: u32,
    /// How long to hold once full; `None`: until interrupted.
    pub hold: Option<Duration>,
    /// OOM policy.
    pub on_oom: OnOom,
    /// oom_score_adj for the stressors.
    pub oom_score_adj: Option<i32>,
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

/// The resolved plan, printed before anything starts (and alone with `--dry-run`).
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// The target.
    pub target: PlanTarget,
    /// The size as given.
    pub size: String,
    /// How the size was resolved.
    pub size_from: String,
    /// Total bytes across all stressors.
    pub total_bytes: u64,
    /// Number of stressors.
    pub workers: u32,
    /// Bytes each stressor holds (they add up to `total_bytes`, rounded to pages).
    pub bytes_per_worker: Vec<u64>,
    /// Hold time in seconds (`null`: until interrupted).
    pub hold_s: Option<f64>,
    /// OOM policy.
    pub on_oom: OnOom,
    /// oom_score_adj for the stressors (`null`: inherited).
    pub oom_score_adj: Option<i32>,
    /// Whether the plan pushes the cgroup past its limit.
    pub crosses_limit: bool,
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

/// Splits `total` bytes into `n` page-multiple shares that add up to `total` rounded up to a
/// page; the first shares get the extra pages.
pub fn split(total: u64, n: u32, page: u64) -> Vec<u64> {
    let n = u64::from(n.max(1));
    let pages = total.div_ceil(page);
    (0..n)
        .map(|i| (pages / n + u64::from(i < pages % n)) * page)
        .collect()
}

/// Resolves the plan without creating anything.
pub fn plan(opts: &Options, hierarchy: &Hierarchy) -> Result<(Plan, Target)> {
    if opts.workers == 0 {
        bail!("--workers 0: give at least 1 worker");
    }
    if opts.workers > 1024 {
        bail!("--workers {}: at most 1024 workers", opts.workers);
    }
    let target = Target::resolve(hierarchy, &opts.target, opts.allow_root)?;
    let limit = target.effective_limit()?;
    let (total_bytes, size_from) = match opts.size {
        SizeSpec::Bytes(b) => (b, "bytes, total across all workers".to_owned()),
        SizeSpec::Percent(p) if opts.of_node => {
            let node = target::node_memory().context("cannot read MemTotal from /proc/meminfo")?;
            (
                opts.size.resolve(node),
                format!("{p}% of the node's MemTotal ({})", Bytes(node)),
            )
        }
        SizeSpec::Percent(p) => match &limit {
            Some((bytes, from)) => (
                opts.size.resolve(*bytes),
                format!("{p}% of the {} limit of {}", Bytes(*bytes), from.path),
            ),
            None => bail!(
                "--size {p}% needs a memory limit, but neither {} nor any ancestor has one; \
                 give an absolute size (e.g. 256Mi) or add --of-node for a percent of the node's memory",
                target.cgroup.path
            ),
        },
    };
    if total_bytes == 0 {
        bail!("--size {} resolves to 0 bytes", opts.size);
    }
    if target.cgroup.is_root()
        && let Some(available) = target::node_available()
        && total_bytes >= available
    {
        bail!(
            "--size {} is not below the node's available memory ({}); refusing in the root cgroup",
            Bytes(total_bytes),
            Bytes(available)
        );
    }
    let counters = if target.create.is_some() {
        Counters::default()
    } else {
        target.cgroup.counters()?
    };
    let page = event::page_size();
    let bytes_per_worker = split(total_bytes, opts.workers, page);
    let app_bytes: u64 = opts.apps.iter().map(|a| a.bytes).sum();
    let crosses_limit = limit.as_ref().is_some_and(|(l, _)| {
        counters.usage_bytes + app_bytes + bytes_per_worker.iter().sum::<u64>() > *l
    });
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
        size: opts.size.to_string(),
        size_from,
        total_bytes,
        workers: opts.workers,
        bytes_per_worker,
        hold_s: opts.hold.map(|d| d.as_secs_f64()),
        on_oom: opts.on_oom,
        oom_score_adj: opts.oom_score_adj,
        crosses_limit,
    };
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
        format!(
            "{} workers of {}",
            plan.workers,
            plan.bytes_per_worker
                .iter()
                .map(|b| Bytes(*b).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let hold = plan
        .hold_s
        .map_or_else(|| "until interrupted".to_owned(), |s| format!("for {s}s"));
    reporter.text(&format!(
        "stress {} = {} total ({}: {}), held {hold}; on OOM: {:?}{}",
        per,
        Bytes(plan.total_bytes),
        plan.size,
        plan.size_from,
        plan.on_oom,
        if plan.crosses_limit {
            "; this crosses the limit: expect OOM kills"
        } else {
            ""
        }
    ));
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Stressor,
    App,
}

#[derive(Debug)]
enum Ctl {
    Kill,
}

#[derive(Debug)]
enum MemberEvent {
    Report(usize, u32, Report),
    Exited(usize, u32, Exit),
}

#[derive(Debug)]
struct Member {
    index: usize,
    role: Role,
    name: String,
    bytes: u64,
    oom_score_adj: Option<i32>,
    pid: Option<u32>,
    generation: u32,
    alive: bool,
    held: u64,
    charge: u64,
    full: bool,
    ctl: Option<mpsc::UnboundedSender<Ctl>>,
    oom_killed: bool,
    restart_at: Option<tokio::time::Instant>,
    exited_at: Option<Instant>,
    restarts: u32,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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

impl Outcome {
    /// The process exit code for this outcome.
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Completed | Self::Interrupted | Self::AllStressorsKilled => exit::SUCCESS,
            Self::StoppedByOom => exit::OOM_STOP,
            Self::TargetGone => exit::TARGET_GONE,
            Self::TimedOut | Self::Failed => exit::FAILURE,
        }
    }
}

/// The end-of-run summary.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// How the run ended.
    pub outcome: Outcome,
    /// Target cgroup.
    pub target: String,
    /// Bytes the stressors were asked to hold.
    pub requested_bytes: u64,
    /// Bytes of memory the stressors held at the end (their payload).
    pub held_bytes: u64,
    /// What the stressors cost the cgroup at the end by their own account: payload plus
    /// their process footprint (runtime, page tables, kernel stack).
    pub stressor_charge_bytes: u64,
    /// Usage increase from before the stressors started to when they were all full
    /// (`null` if they never all got there).
    pub charged_bytes: Option<u64>,
    /// Highest usage sampled (every 100 ms).
    pub peak_usage_bytes: u64,
    /// The kernel's own high-water mark (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`),
    /// over the cgroup's lifetime: exact for a cgroup created for the run.
    pub kernel_peak_usage_bytes: Option<u64>,
    /// The limit that applied.
    pub limit_bytes: Option<u64>,
    /// OOM kills of this run's stressors.
    pub oom_kills_stressors: u32,
    /// OOM kills of other processes in the target.
    pub oom_kills_others: u32,
    /// Stressor restarts (`--on-oom restart`).
    pub restarts: u32,
    /// Records the BPF side could not deliver (0 unless the ring buffer overflowed).
    pub dropped_records: u64,
    /// Time to fill, in ms (`null` if never full).
    pub fill_ms: Option<u64>,
    /// Time held full, in ms.
    pub hold_ms: u64,
    /// Whole run, in ms.
    pub total_ms: u64,
}

struct State {
    members: Vec<Member>,
    target: Cgroup,
    target_id: u64,
    baseline: u64,
    started: Instant,
    full_at: Option<Instant>,
    charged: Option<u64>,
    peak: u64,
    kills_stressors: u32,
    kills_others: u32,
    last_counters: Counters,
    status_line: bool,
    limit: Option<u64>,
}

fn member_args(m: &Member, opts: &Options) -> Vec<String> {
    let stressor = m.role == Role::Stressor;
    let worker = WorkerArgs {
        name: m.name.clone(),
        fill: if stressor { opts.fill } else { Fill::Touch },
        thp: stressor && opts.thp,
        mlock: stressor && opts.mlock,
        initial: Some(Command::Charge(m.bytes)),
    };
    let mut args = vec!["memstress".to_owned()];
    args.extend(worker.to_args());
    args
}

fn start_member(
    m: &mut Member,
    opts: &Options,
    cgroup: &Cgroup,
    events: &mpsc::UnboundedSender<MemberEvent>,
) -> Result<()> {
    let mut spec = Spec::new(Path::new(spawn::SELF_EXE), member_args(m, opts));
    spec.cgroup = Some(cgroup);
    spec.oom_score_adj = m.oom_score_adj;
    spec.stdin = Stdio::Pipe;
    spec.stdout = Stdio::Pipe;
    spec.stderr = Stdio::Inherit;
    let mut child = spawn::spawn(&spec).with_context(|| {
        format!(
            "cannot start {} {} in {}",
            if m.role == Role::Stressor {
                "stressor"
            } else {
                "app"
            },
            m.index,
            cgroup.path
        )
    })?;
    let stdout = child.stdout.take().context("stressor without stdout")?;
    let stdin = child.stdin.take().context("stressor without stdin")?;
    m.generation += 1;
    m.pid = Some(child.pid);
    m.alive = true;
    m.held = 0;
    m.charge = 0;
    m.full = false;
    m.oom_killed = false;
    m.exited_at = None;
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    m.ctl = Some(ctl_tx);
    let stdout = pipe::Receiver::from_file(stdout).context("stressor stdout")?;
    tokio::spawn(supervise(
        m.index,
        m.generation,
        child,
        stdin,
        stdout,
        ctl_rx,
        events.clone(),
    ));
    Ok(())
}

/// Owns one worker process: forwards its reports and exit, and kills it on request.
async fn supervise(
    index: usize,
    generation: u32,
    child: spawn::Child,
    stdin: std::fs::File,
    stdout: pipe::Receiver,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
    events: mpsc::UnboundedSender<MemberEvent>,
) {
    // Holding stdin open keeps the worker alive; it exits when stdin closes.
    let _stdin = stdin;
    let mut lines = BufReader::new(stdout).lines();
    let mut reading = true;
    let mut listening = true;
    loop {
        tokio::select! {
            exit = child.wait() => {
                let exit = exit.unwrap_or(Exit::Code(-1));
                let _ = events.send(MemberEvent::Exited(index, generation, exit));
                return;
            }
            line = lines.next_line(), if reading => match line {
                Ok(Some(line)) => {
                    if let Some(report) = Report::parse(&line) {
                        let _ = events.send(MemberEvent::Report(index, generation, report));
                    }
                }
                _ => reading = false,
            },
            msg = ctl.recv(), if listening => match msg {
                Some(Ctl::Kill) => { let _ = child.kill(); }
                None => { listening = false; let _ = child.kill(); }
            },
        }
    }
}

fn describe_exit(m: &Member, exit: Exit) -> String {
    format!(
        "{} {} (pid {}) exited: {exit}",
        if m.role == Role::Stressor {
            "stressor"
        } else {
            "app"
        },
        m.index,
        m.pid.unwrap_or(0)
    )
}

#[derive(Serialize)]
struct MemberLine<'a> {
    index: usize,
    role: &'a str,
    name: &'a str,
    pid: Option<u32>,
    bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restarts: Option<u32>,
}

fn member_line<'a>(m: &'a Member, exit: Option<String>) -> MemberLine<'a> {
    MemberLine {
        index: m.index,
        role: if m.role == Role::Stressor {
            "stressor"
        } else {
            "app"
        },
        name: &m.name,
        pid: m.pid,
        bytes: m.bytes,
        exit,
        restarts: (m.restarts > 0).then_some(m.restarts),
    }
}

#[derive(Serialize)]
struct SampleLine<'a> {
    t_ms: u64,
    #[serde(flatten)]
    counters: &'a Counters,
    limit_bytes: Option<u64>,
    stressors_held_bytes: u64,
    stressors_alive: usize,
}

impl State {
    fn stressors(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.role == Role::Stressor)
    }

    fn held(&self) -> u64 {
        self.stressors().filter(|m| m.alive).map(|m| m.held).sum()
    }

    fn all_full(&self) -> bool {
        self.members.iter().all(|m| m.alive && m.full)
    }

    fn clear_status(&mut self) {
        if self.status_line {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }

    fn sample(&mut self, reporter: &Reporter) -> Result<(), crate::cgroup::CgroupError> {
        let counters = self.target.counters()?;
        self.peak = self.peak.max(counters.usage_bytes);
        let held = self.held();
        let alive = self.stressors().filter(|m| m.alive).count();
        reporter.json(
            "sample",
            &SampleLine {
                t_ms: self.started.elapsed().as_millis() as u64,
                counters: &counters,
                limit_bytes: self.limit,
                stressors_held_bytes: held,
                stressors_alive: alive,
            },
        );
        if self.status_line {
            let bar = match self.limit {
                Some(limit) if limit > 0 => {
                    let filled = ((counters.usage_bytes as f64 / limit as f64) * 20.0)
                        .round()
                        .clamp(0.0, 20.0) as usize;
                    format!("[{}{}] ", "#".repeat(filled), ".".repeat(20 - filled))
                }
                _ => String::new(),
            };
            let limit = self
                .limit
                .map_or_else(String::new, |l| format!(" / {}", Bytes(l)));
            eprint!(
                "\r\x1b[2K{bar}usage {}{limit}, working set {}, stressors {} alive holding {}, OOM kills {}",
                Bytes(counters.usage_bytes),
                Bytes(counters.working_set_bytes),
                alive,
                Bytes(held),
                counters.oom_kills
            );
            let _ = std::io::stderr().flush();
        }
        self.last_counters = counters;
        Ok(())
    }
}

/// Runs the whole thing. Returns the outcome; every path cleans up.
pub async fn run(opts: Options, reporter: &Reporter) -> Result<Outcome> {
    let hierarchy = Hierarchy::discover()?;
    let (plan, target) = plan(&opts, &hierarchy)?;
    print_plan(&plan, reporter);
    if opts.dry_run {
        return Ok(Outcome::Completed);
    }
    // Fail on missing privileges or kernel support before creating anything.
    probe::preflight(&opts.probe)?;

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
        let mut probes = Probes::load(&opts.probe)?;
        probes.announce(reporter, Some(&target.cgroup.path));
        engine(&opts, &plan, &target.cgroup, &mut probes, reporter).await
    }
    .await;
    if let Some(cgroup) = created
        && let Err(e) = cgroup.remove(Duration::from_secs(10))
    {
        tracing::error!("{e}");
    }
    if let Some(j) = janitor {
        j.dismiss();
    }
    result
}

async fn engine(
    opts: &Options,
    plan: &Plan,
    cgroup: &Cgroup,
    probes: &mut Probes,
    reporter: &Reporter,
) -> Result<Outcome> {
    let mut ring = probes.events()?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut members = Vec::new();
    for app in &opts.apps {
        members.push(Member {
            index: members.len(),
            role: Role::App,
            name: app.name.clone(),
            bytes: app.bytes,
            oom_score_adj: app.oom_score_adj,
            pid: None,
            generation: 0,
            alive: false,
            held: 0,
            charge: 0,
            full: false,
            ctl: None,
            oom_killed: false,
            restart_at: None,
            exited_at: None,
            restarts: 0,
        });
    }
    for &bytes in &plan.bytes_per_worker {
        members.push(Member {
            index: members.len(),
            role: Role::Stressor,
            name: "memstress-vm".to_owned(),
            bytes,
            oom_score_adj: opts.oom_score_adj,
            pid: None,
            generation: 0,
            alive: false,
            held: 0,
            charge: 0,
            full: false,
            ctl: None,
            oom_killed: false,
            restart_at: None,
            exited_at: None,
            restarts: 0,
        });
    }
    let baseline = cgroup.usage()?;
    let mut state = State {
        members,
        target: cgroup.clone(),
        target_id: cgroup.id()?,
        baseline,
        started: Instant::now(),
        full_at: None,
        charged: None,
        peak: baseline,
        kills_stressors: 0,
        kills_others: 0,
        last_counters: Counters::default(),
        status_line: reporter.format() == crate::report::Format::Text
            && std::io::stderr().is_terminal(),
        limit: plan.target.limit_bytes,
    };
    let outcome = drive(opts, &mut state, &mut ring, &tx, &mut rx, reporter).await;
    state.clear_status();

    // Stop every worker and wait for it, so the cgroup can be removed.
    for m in state.members.iter().filter(|m| m.alive) {
        if let Some(ctl) = &m.ctl {
            let _ = ctl.send(Ctl::Kill);
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while state.members.iter().any(|m| m.alive) {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(MemberEvent::Exited(i, g, _)) if state.members[i].generation == g => {
                    state.members[i].alive = false;
                }
                Some(_) => {}
                None => break,
            },
            _ = sleep_until(deadline) => break,
        }
    }
    // Kills that happened during shutdown are still reported.
    let mut late = Vec::new();
    ring.drain_now(|bytes| late.push(event::decode(bytes)));
    for record in late.into_iter().flatten() {
        handle_record(&mut state, record, reporter);
    }
    let outcome = outcome?;
    let now = Instant::now();
    let summary = Summary {
        outcome,
        target: cgroup.path.clone(),
        requested_bytes: plan.total_bytes,
        held_bytes: state.stressors().map(|m| m.held).sum(),
        stressor_charge_bytes: state.stressors().map(|m| m.charge).sum(),
        charged_bytes: state.charged,
        peak_usage_bytes: state.peak,
        kernel_peak_usage_bytes: cgroup.kernel_peak().ok().flatten(),
        limit_bytes: plan.target.limit_bytes,
        oom_kills_stressors: state.kills_stressors,
        oom_kills_others: state.kills_others,
        restarts: state.members.iter().map(|m| m.restarts).sum(),
        dropped_records: probes.drops(),
        fill_ms: state
            .full_at
            .map(|t| t.duration_since(state.started).as_millis() as u64),
        hold_ms: state
            .full_at
            .map_or(0, |t| now.duration_since(t).as_millis() as u64),
        total_ms: now.duration_since(state.started).as_millis() as u64,
    };
    print_summary(&summary, reporter);
    Ok(outcome)
}

fn print_summary(s: &Summary, reporter: &Reporter) {
    reporter.json("summary", s);
    let charged = s.charged_bytes.map_or_else(
        || "never all full".to_owned(),
        |c| format!("charged {}", Bytes(c)),
    );
    let limit = s
        .limit_bytes
        .map_or_else(String::new, |l| format!(" of {}", Bytes(l)));
    reporter.text(&format!(
        "summary ({:?}): requested {}, {charged}, peak usage {}{limit}{}; OOM kills: {} stressor(s), {} other(s); restarts {}; fill {}, hold {}, total {}{}",
        s.outcome,
        Bytes(s.requested_bytes),
        Bytes(s.peak_usage_bytes),
        s.kernel_peak_usage_bytes
            .map_or_else(String::new, |p| format!(" (kernel high-water mark {})", Bytes(p))),
        s.oom_kills_stressors,
        s.oom_kills_others,
        s.restarts,
        s.fill_ms.map_or_else(|| "-".to_owned(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
        format_args!("{:.1}s", s.hold_ms as f64 / 1000.0),
        format_args!("{:.1}s", s.total_ms as f64 / 1000.0),
        if s.dropped_records > 0 {
            format!("; {} records DROPPED", s.dropped_records)
        } else {
            String::new()
        }
    ));
}

/// Handles one ring-buffer record; returns whether it was an OOM kill of a stressor.
fn handle_record(state: &mut State, record: Record, reporter: &Reporter) -> Option<usize> {
    let Record::Victim(kill) = record;
    if !kill.in_cgroup(state.target_id, &state.target.path) {
        return None;
    }
    let member = kill.victim.task.pid.and_then(|pid| {
        state
            .members
            .iter()
            .position(|m| m.pid == Some(pid) && m.alive)
    });
    let is_stressor = member.is_some_and(|i| state.members[i].role == Role::Stressor);
    let context = KillContext {
        stressor: Some(is_stressor),
    };
    state.clear_status();
    reporter.oom_kill(&kill, &context);
    if kill.kill_confirmed == Some(false) {
        return None;
    }
    if is_stressor {
        state.kills_stressors += 1;
    } else {
        state.kills_others += 1;
    }
    let i = member?;
    state.members[i].oom_killed = true;
    is_stressor.then_some(i)
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    opts: &Options,
    state: &mut State,
    ring: &mut probe::EventStream,
    tx: &mpsc::UnboundedSender<MemberEvent>,
    rx: &mut mpsc::UnboundedReceiver<MemberEvent>,
    reporter: &Reporter,
) -> Result<Outcome> {
    for i in 0..state.members.len() {
        let m = &mut state.members[i];
        start_member(m, opts, &state.target, tx)?;
        let line = member_line(&state.members[i], None);
        reporter.json("started", &line);
    }
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut shutdown = signals::Shutdown::new()?;
    let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    let mut hold_until: Option<tokio::time::Instant> = None;
    let give_up = opts.deadline.map(|d| tokio::time::Instant::now() + d);
    let mut total_kills = 0u32;
    loop {
        let next_restart = state.members.iter().filter_map(|m| m.restart_at).min();
        let mut records = Vec::new();
        tokio::select! {
            biased;
            _ = shutdown.recv() => return Ok(Outcome::Interrupted),
            res = ring.drain(|bytes| records.push(event::decode(bytes))) => {
                res.context("reading the BPF ring buffer")?;
            }
            ev = rx.recv() => {
                let Some(ev) = ev else { bail!("worker channel closed") };
                match ev {
                    MemberEvent::Report(i, g, report) if state.members[i].generation == g => match report {
                        Report::Filling { payload, charge } => {
                            state.members[i].held = payload;
                            state.members[i].charge = charge;
                        }
                        Report::Held { payload, charge } => {
                            let m = &mut state.members[i];
                            m.held = payload;
                            m.charge = charge;
                            m.full = true;
                        }
                        Report::Error(e) => {
                            state.clear_status();
                            tracing::error!("stressor {i}: {e}");
                        }
                    },
                    MemberEvent::Exited(i, g, exit) if state.members[i].generation == g => {
                        let m = &mut state.members[i];
                        m.alive = false;
                        m.exited_at = Some(Instant::now());
                        // The OOM kill's record normally arrives first (the kernel marks the
                        // victim before it exits); an unexplained SIGKILL is rechecked below.
                        if m.oom_killed {
                            if opts.on_oom == OnOom::Restart && m.role == Role::Stressor {
                                m.restart_at = Some(tokio::time::Instant::now() + Duration::from_millis(200));
                            }
                        } else if exit != Exit::Signal(libc::SIGKILL) {
                            let text = describe_exit(m, exit);
                            reporter.json("exited", &member_line(m, Some(exit.to_string())));
                            state.clear_status();
                            tracing::error!("{text}");
                            return Ok(Outcome::Failed);
                        }
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                match state.sample(reporter) {
                    Ok(()) => {}
                    Err(_) if !state.target.dir.exists() => {
                        state.clear_status();
                        tracing::error!("target cgroup {} disappeared", state.target.path);
                        return Ok(Outcome::TargetGone);
                    }
                    Err(e) => return Err(e.into()),
                }
                // A SIGKILL nobody explained within a second was not the OOM killer's.
                for m in state.members.iter_mut() {
                    if !m.alive && !m.oom_killed && let Some(t) = m.exited_at
                        && t.elapsed() > Duration::from_secs(1) {
                        m.exited_at = None;
                        reporter.json("exited", &member_line(m, Some("SIGKILL (not by the OOM killer)".to_owned())));
                        tracing::warn!("{} pid {} was SIGKILLed, not by the OOM killer", m.name, m.pid.unwrap_or(0));
                    }
                }
            }
            _ = sleep_until(next_restart.unwrap_or(far)), if next_restart.is_some() => {
                for i in 0..state.members.len() {
                    if state.members[i].restart_at.is_some_and(|t| t <= tokio::time::Instant::now()) {
                        let m = &mut state.members[i];
                        m.restart_at = None;
                        m.restarts += 1;
                        start_member(m, opts, &state.target, tx)?;
                        reporter.json("restarted", &member_line(&state.members[i], None));
                    }
                }
            }
            _ = sleep_until(hold_until.unwrap_or(far)), if hold_until.is_some() => {
                return Ok(Outcome::Completed);
            }
            _ = sleep_until(give_up.unwrap_or(far)), if give_up.is_some() => {
                return Ok(Outcome::TimedOut);
            }
        }
        for record in records {
            match record {
                Ok(record) => {
                    let was_victim = matches!(&record, Record::Victim(k) if k.kill_confirmed != Some(false) && k.in_cgroup(state.target_id, &state.target.path));
                    let stressor = handle_record(state, record, reporter);
                    if was_victim {
                        total_kills += 1;
                    }
                    if stressor.is_some() && opts.on_oom == OnOom::Stop {
                        return Ok(Outcome::StoppedByOom);
                    }
                }
                Err(e) => tracing::warn!("undecodable record: {e}"),
            }
        }
        if let Some(n) = opts.stop_after_kills
            && total_kills >= n
        {
            return Ok(Outcome::Completed);
        }
        if state.full_at.is_none() && state.all_full() {
            state.full_at = Some(Instant::now());
            let usage = state.target.usage()?;
            state.charged = Some(usage.saturating_sub(state.baseline));
            state.peak = state.peak.max(usage);
            if let Some(hold) = opts.hold {
                hold_until = Some(tokio::time::Instant::now() + hold);
            }
            reporter.json(
                "full",
                &serde_json::json!({
                    "held_bytes": state.held(),
                    "charged_bytes": state.charged,
                    "usage_bytes": usage,
                    "t_ms": state.started.elapsed().as_millis() as u64,
                }),
            );
        }
        let stressors_alive = state.stressors().any(|m| m.alive || m.restart_at.is_some());
        if !stressors_alive && state.stressors().all(|m| m.oom_killed) {
            return Ok(Outcome::AllStressorsKilled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_exactly_into_pages() {
        let page = 4096;
        let shares = split(50 << 20, 4, page);
        assert_eq!(shares.iter().sum::<u64>(), 50 << 20);
        assert!(shares.iter().all(|s| s % page == 0));
        let odd = split(10 * page + 1, 3, page);
        assert_eq!(odd, vec![4 * page, 4 * page, 3 * page]);
        assert_eq!(split(1, 1, page), vec![page]);
    }
}
