//! The run's event loop: starts the workers, steers their sizes (ramp, fill-to), samples the
//! cgroup every 100 ms, reports OOM kills as the kernel makes them, applies the OOM policy,
//! and ends with a summary.

use std::{
    io::{IsTerminal as _, Write as _},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use tokio::{sync::mpsc, time::sleep_until};

use super::{
    Options, Plan,
    member::{Member, MemberEvent, RESTART_DELAY, Role, split},
};
use crate::{
    target::cgroup::{Cgroup, CgroupError, Counters, Hierarchy},
    explain::record::{self, Record},
    exit,
    explain::{Explainer, Output, Scope},
    target::kube::{self, Identity, RuntimeState},
    probe::{self, Probes},
    output::{Format, KillContext, Reporter, monotonic_ns},
    signals,
    size::Bytes,
    stress::spawn::Exit,
    spec::{Kind, OnOom, Pattern},
    stress::stressor::WorkerArgs,
};

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
    /// The process exit code for this outcome (an interruption: see [`Ended::exit_code`]).
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Completed | Self::Interrupted | Self::AllStressorsKilled => exit::SUCCESS,
            Self::StoppedByOom => exit::OOM_STOP,
            Self::TargetGone => exit::TARGET_GONE,
            Self::TimedOut | Self::Failed => exit::FAILURE,
        }
    }
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

/// How a run ended, with what decides its exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    /// The outcome (the summary's).
    pub outcome: Outcome,
    /// The signal that stopped it, if one did.
    pub signal: Option<signals::Stop>,
    /// Whether what was asked had been done when it stopped: the stressors were full and no
    /// `--hold` was given (an unbounded hold ends only by a signal: that is its normal end).
    pub done: bool,
}

impl Ended {
    /// The process exit code: the outcome's, or 128 + the signal's number for a run
    /// interrupted before it did what was asked (mid-fill, mid-ramp, before `--hold` ended).
    pub fn exit_code(self) -> i32 {
        match (self.outcome, self.signal) {
            (Outcome::Interrupted, Some(stop)) if !self.done => stop.exit_code(),
            (outcome, _) => outcome.exit_code(),
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
    pub signal: Option<signals::Stop>,
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
}

#[derive(Serialize)]
struct SampleLine<'a> {
    t_ms: u64,
    #[serde(flatten)]
    counters: &'a Counters,
    limit_bytes: Option<u64>,
    stressors_held_bytes: u64,
    stressors_charge_bytes: u64,
    stressors_alive: usize,
    /// Limit hits of the target since the run started.
    run_limit_hits: u64,
    /// OOM kills this run reported so far (and counted before its probes attached).
    run_oom_kills: u64,
}

/// What the kernel's peak usage figure covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PeakScope {
    /// This run only.
    Run,
    /// The cgroup's whole life.
    CgroupLifetime,
}

/// `--follow`: how to find a pod/container target again.
#[derive(Clone, Debug)]
pub struct Follow {
    /// The hierarchy it is on.
    pub hierarchy: Hierarchy,
    /// Where the runtimes' state files are.
    pub state: RuntimeState,
    /// Who it was when the run started.
    pub identity: Identity,
}

/// What the engine needs besides the plan.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// The real memory hierarchy (kernel-reported cgroup paths are on it), if known.
    pub real: Option<Hierarchy>,
    /// `--follow`.
    pub follow: Option<Follow>,
}

struct Following {
    cfg: Follow,
    /// Container ids seen in the pod so far (a new one is the replacement).
    known: Vec<String>,
    /// Since when the target is gone (`None`: it is there).
    gone_since: Option<Instant>,
    /// When the tree was last searched.
    searched_at: Option<Instant>,
    follows: u32,
}

struct State {
    members: Vec<Member>,
    /// OOM kills the cgroup counted while the probes were loading, and when they attached.
    unseen_kills: Option<(Instant, u64)>,
    target: Cgroup,
    target_id: u64,
    baseline: u64,
    started: Instant,
    full_at: Option<Instant>,
    charged: Option<u64>,
    peak: u64,
    kills_stressors: u32,
    kills_others: u32,
    kills_outside: u32,
    kills_total: u32,
    last: Counters,
    /// The target's counters when the run started (what is shown counts from there).
    start: Counters,
    /// The run's size (the progress bar's 100 %).
    total: u64,
    /// What the stressors were charged when they were full.
    charged_at_full: Option<u64>,
    status_line: bool,
    limit: Option<u64>,
    /// `fill_to`: the working-set goal.
    goal: Option<u64>,
    /// Settled adjustments below this are not made (`fill_to`).
    deadband: u64,
    /// Ramp length (cleared once the ramp is done).
    ramp: Option<Duration>,
    page: u64,
    /// When the last sample was read.
    sampled_at: Instant,
    /// When a worker last completed a command.
    acked_at: Instant,
    /// `fill_to`: the working set was within the deadband at the last settled sample.
    at_goal: bool,
    /// `--follow`.
    following: Option<Following>,
}

impl State {
    fn stressors(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.role == Role::Stressor)
    }

    fn held(&self) -> u64 {
        self.stressors().filter(|m| m.alive).map(|m| m.held).sum()
    }

    fn charge(&self) -> u64 {
        self.stressors().filter(|m| m.alive).map(|m| m.charge).sum()
    }

    fn all_settled(&self) -> bool {
        self.members.iter().all(Member::settled)
    }

    /// Whether the run got as far as it can: `--fill-to`'s goal reached, or every stressor
    /// holding its share, except those the OOM killer took (dead, or waiting to restart):
    /// with a size past the limit the survivors' full shares are the most the run can hold,
    /// and a hold must start from there.
    fn full(&self) -> bool {
        if self.goal.is_some() {
            return self.at_goal;
        }
        let survivors_full = self
            .stressors()
            .all(|m| (m.settled() && m.target == m.share) || (!m.alive && m.oom_killed));
        let apps_settled = self
            .members
            .iter()
            .filter(|m| m.role == Role::App)
            .all(|m| m.settled() || !m.alive);
        self.ramp.is_none()
            && survivors_full
            && apps_settled
            && self.stressors().any(|m| m.alive || m.restart_at.is_some())
    }

    fn clear_status(&mut self) {
        if self.status_line {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }

    /// OOM kills this run knows of: reported, and counted before the probes attached.
    fn run_kills(&self) -> u64 {
        u64::from(self.kills_total) + self.unseen_kills.map_or(0, |(_, n)| n)
    }

    /// How far the stressors are towards what was asked, 0 to 1: their charge of the size,
    /// or the working set of the `--fill-to` goal.
    fn progress(&self, counters: &Counters) -> Option<f64> {
        let (done, whole) = match self.goal {
            Some(goal) => (counters.working_set_bytes, goal),
            None => (self.charge(), self.total),
        };
        (whole > 0).then(|| (done as f64 / whole as f64).clamp(0.0, 1.0))
    }

    fn sample(&mut self, reporter: &Reporter) -> Result<(), CgroupError> {
        let counters = self.target.counters()?;
        self.peak = self.peak.max(counters.usage_bytes);
        let held = self.held();
        let charge = self.charge();
        let alive = self.stressors().filter(|m| m.alive).count();
        let run_limit_hits = counters.limit_hits.saturating_sub(self.start.limit_hits);
        reporter.json(
            "sample",
            &SampleLine {
                t_ms: self.started.elapsed().as_millis() as u64,
                counters: &counters,
                limit_bytes: self.limit,
                stressors_held_bytes: held,
                stressors_charge_bytes: charge,
                stressors_alive: alive,
                run_limit_hits,
                run_oom_kills: self.run_kills(),
            },
        );
        if self.status_line {
            let bar = self.progress(&counters).map_or_else(String::new, |done| {
                let filled = (done * 20.0).round() as usize;
                format!(
                    "[{}{}] {:>3.0}% ",
                    "#".repeat(filled),
                    ".".repeat(20 - filled),
                    done * 100.0
                )
            });
            let limit = self
                .limit
                .map_or_else(String::new, |l| format!(" / {}", Bytes(l)));
            eprint!(
                "\r\x1b[2K{bar}usage {}{limit}, working set {}, {alive} stressor(s) holding {}; since the start: limit hits {run_limit_hits}, OOM kills {}",
                Bytes(counters.usage_bytes),
                Bytes(counters.working_set_bytes),
                Bytes(held),
                self.run_kills()
            );
            let _ = std::io::stderr().flush();
        }
        self.last = counters;
        self.sampled_at = Instant::now();
        Ok(())
    }

    /// Ramp: the charge each stressor should have now.
    fn ramp_step(&mut self) {
        let Some(ramp) = self.ramp else { return };
        let frac = (self.started.elapsed().as_secs_f64() / ramp.as_secs_f64()).min(1.0);
        let page = self.page;
        for m in self.members.iter_mut().filter(|m| m.role == Role::Stressor) {
            let want = ((m.share as f64 * frac) as u64) / page * page;
            // Step at least 1 MiB at a time (or the last step) to keep commands few.
            if frac >= 1.0 || want >= m.target + (1 << 20) {
                m.set_target(if frac >= 1.0 { m.share } else { want });
            }
        }
        if frac >= 1.0 {
            self.ramp = None;
        }
    }

    /// Fill-to: once every stressor has done what it was told, move their total by the
    /// distance between the working set and the goal.
    /// Only a sample read after every worker settled is acted on, so a change is never
    /// applied twice.
    fn fill_to_step(&mut self) {
        let Some(goal) = self.goal else { return };
        if !self.all_settled()
            || self.sampled_at <= self.acked_at
            || self.members.iter().any(|m| m.restart_at.is_some())
        {
            return;
        }
        let ws = self.last.working_set_bytes as i64;
        let deficit = goal as i64 - ws;
        self.at_goal = deficit.unsigned_abs() <= self.deadband;
        if self.at_goal {
            return;
        }
        let alive: Vec<usize> = self
            .members
            .iter()
            .filter(|m| m.role == Role::Stressor && m.alive)
            .map(|m| m.index)
            .collect();
        if alive.is_empty() {
            return;
        }
        let current: u64 = alive.iter().map(|&i| self.members[i].target).sum();
        let total = (current as i64 + deficit).max(0) as u64;
        for (i, share) in alive.iter().zip(split(total, alive.len(), self.page)) {
            self.members[*i].set_target(share);
        }
    }
}

/// Runs the workers until the run ends; then stops them and summarises.
///
/// The stressors start while `loading` (the probes) is still running: loading takes a few
/// hundred milliseconds (most of it the kernel's verifier), and filling meanwhile is how
/// memstress reaches its pressure as fast as a bare `mmap(MAP_POPULATE)` does. Until the
/// probes are attached the stressors together fill only what keeps the domain clearly below
/// its limit ([`pre_probe_cap`]), so no OOM kill they cause can go unseen; an OOM kill in
/// the target in that window (by the application's own growth) is still counted from the
/// cgroup's own counter and reported as `oom_kills_before_probes`.
pub(super) async fn engine(
    opts: &Options,
    plan: &Plan,
    cgroup: &Cgroup,
    join: bool,
    loading: tokio::task::JoinHandle<Result<Probes, probe::ProbeError>>,
    reporter: &Reporter,
    context: Context,
) -> Result<Ended> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut members = Vec::new();
    for app in &opts.apps {
        let worker = WorkerArgs {
            name: app.name.clone(),
            ..WorkerArgs::default()
        };
        members.push(Member::new(
            members.len(),
            Role::App,
            worker,
            app.bytes,
            app.oom_score_adj,
        ));
    }
    for &share in &plan.bytes_per_worker {
        let worker = WorkerArgs {
            name: crate::stress::stressor::STRESSOR_COMM.to_owned(),
            kind: opts.kind,
            fill: opts.fill,
            pattern: opts.pattern,
            rewrite_every: opts.rewrite_every,
            thp: opts.thp,
            mlock: opts.mlock,
            file_dir: opts.file_dir.clone(),
            kernel_per_page: plan.kernel_bytes_per_page,
            initial: None,
        };
        members.push(Member::new(
            members.len(),
            Role::Stressor,
            worker,
            share,
            opts.oom_score_adj,
        ));
    }
    for m in &mut members {
        m.join = join;
        m.credentials = plan.credentials;
    }
    let baseline = cgroup.usage()?;
    let start = cgroup.counters()?;
    // Made before anything starts, so that a kill's pressure counts from the run's start.
    let mut explainer =
        Explainer::new(context.real, monotonic_ns()).only_in(Scope::domain_of(cgroup)?);
    explainer.seed_scope(cgroup, monotonic_ns());
    let page = record::page_size();
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
        kills_outside: 0,
        kills_total: 0,
        last: start.clone(),
        start,
        total: plan.total_bytes,
        charged_at_full: None,
        status_line: reporter.format() == Format::Text && std::io::stderr().is_terminal(),
        limit: plan.target.limit_bytes,
        goal: plan.fill_to_bytes,
        deadband: plan.fill_to_bytes.map_or(0, |g| (g / 200).max(1 << 20)),
        ramp: opts.ramp,
        page,
        sampled_at: Instant::now(),
        acked_at: Instant::now(),
        at_goal: false,
        unseen_kills: None,
        following: context.follow.map(|cfg| Following {
            known: kube::container_ids(&cfg.hierarchy, &cfg.identity.pod_uid),
            cfg,
            gone_since: None,
            searched_at: None,
            follows: 0,
        }),
    };
    let kills_before = cgroup.counters().map(|c| c.oom_kills).ok();
    let caps = pre_probe_cap(
        plan.target.limit_bytes.and(plan.headroom_bytes),
        crate::target::node_available(),
        &plan.bytes_per_worker,
        record::page_size(),
    );
    let least = super::min_share(plan.stressor_footprint_bytes, page);
    let mut deferred = Vec::new();
    let mut stressor = 0;
    for i in 0..state.members.len() {
        let m = &mut state.members[i];
        let mut initial = if m.role == Role::Stressor && opts.ramp.is_some() {
            0
        } else {
            m.share
        };
        if m.role == Role::Stressor {
            let cap = caps.as_ref().map(|c| c[stressor]);
            stressor += 1;
            // A stressor costs its footprint whatever it is told to hold: one whose cap
            // cannot even cover that starts once the probes are attached.
            if cap.is_some_and(|cap| cap < least) {
                deferred.push(i);
                continue;
            }
            initial = initial.min(cap.unwrap_or(u64::MAX));
        }
        m.start(&state.target, initial, &tx)?;
        reporter.json("started", &state.members[i].line(None));
    }
    let loaded = match loading.await {
        Ok(r) => r.map_err(anyhow::Error::from),
        Err(e) => Err(anyhow::anyhow!("loading the probes failed: {e}")),
    };
    let mut probes = match loaded {
        Ok(p) => p,
        Err(e) => {
            stop_members(&mut state, &mut rx).await;
            return Err(e);
        }
    };
    probes.announce(reporter, Some(&cgroup.path));
    if let Some(before) = kills_before
        && let Ok(now) = cgroup.counters()
        && now.oom_kills > before
    {
        let n = now.oom_kills - before;
        state.unseen_kills = Some((Instant::now(), n));
        state.clear_status();
        tracing::warn!(
            "{n} OOM kill(s) in {} happened while the probes were loading; the cgroup counted \
             them, but their details are unknown",
            cgroup.path
        );
        reporter.json(
            "oom_kills_before_probes",
            &serde_json::json!({"cgroup": cgroup.path, "count": n}),
        );
    }
    // Probes attached: every stressor may now go to its full share.
    if opts.ramp.is_none() {
        for m in state
            .members
            .iter_mut()
            .filter(|m| m.role == Role::Stressor)
        {
            m.set_target(m.share);
        }
    }
    for i in deferred {
        let m = &mut state.members[i];
        let initial = if opts.ramp.is_some() { 0 } else { m.share };
        m.start(&state.target, initial, &tx)?;
        reporter.json("started", &state.members[i].line(None));
    }
    let peak = cgroup.peak_reader(plan.target.created);
    let probes = &mut probes;
    let mut ring = probes.events()?;
    explainer.set_constraints(probes.constraints.clone());
    let outcome = drive(
        opts,
        &mut state,
        &mut explainer,
        &mut ring,
        probes,
        &tx,
        &mut rx,
        reporter,
    )
    .await;
    state.clear_status();
    // What the stressors still running hold now: the OOM-killed ones hold nothing.
    let (held, charge) = (state.held(), state.charge());
    stop_members(&mut state, &mut rx).await;
    // Kills that happened while stopping are still reported.
    let mut late = Vec::new();
    ring.drain_now(|bytes| late.push(record::decode(bytes)));
    handle_records(&mut state, &mut explainer, probes, late, reporter);
    let (outcome, signal) = outcome?;
    let now = Instant::now();
    let (kernel_peak, peak_scope) = match peak.as_ref().map(|p| (p.read(), p.scope())) {
        Some((Ok(bytes), scope)) => (Some(bytes), Some(scope)),
        _ => (None, None),
    };
    let follows = state.following.as_ref().map_or(0, |f| f.follows);
    let summary = Summary {
        outcome,
        target: state.target.path.clone(),
        requested_bytes: if plan.fill_to_bytes.is_some() {
            charge
        } else {
            plan.total_bytes
        },
        fill_to_bytes: plan.fill_to_bytes,
        held_bytes: held,
        stressor_charge_bytes: charge,
        stressors_charged_bytes: state.charged_at_full,
        charged_bytes: state.charged,
        // Sampling every 100 ms can miss a peak an OOM kill cut short: the kernel's
        // high-water mark is used where it covers this run only.
        peak_usage_bytes: match (kernel_peak, peak_scope) {
            (Some(bytes), Some(PeakScope::Run)) => state.peak.max(bytes),
            _ => state.peak,
        },
        kernel_peak_usage_bytes: kernel_peak,
        kernel_peak_scope: peak_scope,
        limit_bytes: plan.target.limit_bytes,
        oom_kills_stressors: state.kills_stressors,
        oom_kills_others: state.kills_others,
        oom_kills_outside_target: state.kills_outside,
        signal,
        restarts: state.members.iter().map(|m| m.restarts).sum(),
        dropped_records: probes.drops(),
        follows,
        fill_ms: state
            .full_at
            .map(|t| t.duration_since(state.started).as_millis() as u64),
        hold_ms: state
            .full_at
            .map_or(0, |t| now.duration_since(t).as_millis() as u64),
        total_ms: now.duration_since(state.started).as_millis() as u64,
    };
    print_summary(&summary, reporter);
    if let Some(sc) = &plan.stresschaos
        && plan.fill_to_bytes.is_none()
        && plan.size == sc.size.to_string()
    {
        let per = plan.bytes_per_worker.first().copied().unwrap_or(0);
        reporter.text(&format!(
            "{}: size {} = {} bytes ({}) held in total by {} workers ({} each), not {} × {}; {}",
            sc.label(),
            sc.size_text,
            crate::input::stresschaos::spaced(plan.total_bytes),
            Bytes(plan.total_bytes),
            plan.workers,
            Bytes(per),
            plan.workers,
            sc.size_text,
            summary.stressors_charged_bytes.map_or_else(
                || "the stressors were never full".to_owned(),
                |c| format!("the stressors were charged {}", Bytes(c))
            )
        ));
    }
    Ok(Ended {
        outcome,
        signal,
        // An unbounded hold (no --hold, no deadline) has done what was asked once full: a
        // signal is how it ends.
        done: state.full_at.is_some() && opts.hold.is_none() && opts.stop_after_kills.is_none(),
    })
}

/// Stops every worker and waits for it (up to 5 s), so that the cgroup can be emptied and
/// removed.
async fn stop_members(state: &mut State, rx: &mut mpsc::UnboundedReceiver<MemberEvent>) {
    for m in state.members.iter().filter(|m| m.alive) {
        m.kill();
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
}

/// What each stressor may hold before the probes are attached, or `None` for no cap: all
/// of them together at most the domain's `headroom` below its limit less a tenth of it (at
/// least 16 MiB), and at most the node's available memory less a tenth of it (at least
/// 64 MiB), shared in proportion to their `shares`. Staying that far below the limit and the
/// node's memory, the stressors cannot make the kernel OOM-kill anything while nothing
/// watches; the rest follows once the probes are attached.
pub(super) fn pre_probe_cap(
    headroom: Option<u64>,
    node_available: Option<u64>,
    shares: &[u64],
    page: u64,
) -> Option<Vec<u64>> {
    const MIB: u64 = 1 << 20;
    let memcg = headroom.map(|h| h.saturating_sub((h / 10).max(16 * MIB)));
    let node = node_available.map(|a| a.saturating_sub((a / 10).max(64 * MIB)));
    let room = match (memcg, node) {
        (Some(m), Some(n)) => m.min(n),
        (Some(r), None) | (None, Some(r)) => r,
        (None, None) => return None,
    };
    let total: u64 = shares.iter().sum();
    if room >= total {
        return None;
    }
    Some(
        shares
            .iter()
            .map(|&share| {
                (u128::from(room) * u128::from(share) / u128::from(total.max(1))) as u64 / page
                    * page
            })
            .collect(),
    )
}

fn print_summary(s: &Summary, reporter: &Reporter) {
    reporter.json("summary", s);
    reporter.text(&summary_text(s));
    if s.follows > 0 {
        reporter.text(&format!(
            "followed the target {} time(s) after it disappeared; it ended in {}",
            s.follows, s.target
        ));
    }
}

/// The summary as one line of text.
fn summary_text(s: &Summary) -> String {
    let secs = |ms: u64| format!("{:.1}s", ms as f64 / 1000.0);
    // What the stressors were charged, by their own account; the cgroup's change beside it
    // where other processes moved it too (an app that grew or freed, the controller itself
    // with --self).
    let charged = match (s.stressors_charged_bytes, s.charged_bytes) {
        (None, _) => "the stressors were never full".to_owned(),
        (Some(stressors), Some(cgroup)) if !close(stressors, cgroup) => format!(
            "the stressors were charged {} (the cgroup's usage rose by {}: other processes in \
             it allocated or freed meanwhile)",
            Bytes(stressors),
            Bytes(cgroup)
        ),
        (Some(stressors), _) => format!("the stressors were charged {}", Bytes(stressors)),
    };
    let limit = s
        .limit_bytes
        .map_or_else(String::new, |l| format!(" of {}", Bytes(l)));
    let kernel_peak = match (s.kernel_peak_usage_bytes, s.kernel_peak_scope) {
        (Some(p), Some(PeakScope::CgroupLifetime)) => format!(
            " (the cgroup's lifetime peak, earlier runs included: {})",
            Bytes(p)
        ),
        (Some(p), _) => format!(" (the kernel's peak over this run: {})", Bytes(p)),
        (None, _) => String::new(),
    };
    let what = match s.fill_to_bytes {
        Some(goal) => format!("working set kept at {}", Bytes(goal)),
        None => format!("requested {}", Bytes(s.requested_bytes)),
    };
    let outcome = match s.signal {
        Some(stop) if s.outcome == Outcome::Interrupted => {
            format!("{} by {}", s.outcome, stop.name())
        }
        _ => s.outcome.to_string(),
    };
    let outside = if s.oom_kills_outside_target > 0 {
        format!(
            " ({} outside the target, in its OOM domain)",
            s.oom_kills_outside_target
        )
    } else {
        String::new()
    };
    format!(
        "summary ({outcome}): {what}, {charged}; peak usage {}{limit}{kernel_peak}; OOM kills: {} \
         of stressors, {} of others{outside}; restarts {}; fill {}, hold {}, total {}{}",
        Bytes(s.peak_usage_bytes),
        s.oom_kills_stressors,
        s.oom_kills_others,
        s.restarts,
        s.fill_ms.map_or_else(|| "-".to_owned(), secs),
        secs(s.hold_ms),
        secs(s.total_ms),
        if s.dropped_records > 0 {
            format!("; {} records DROPPED", s.dropped_records)
        } else {
            String::new()
        }
    )
}

/// Whether two charges agree within what a run is exact to: 2 %, or one per-CPU charge
/// batch per CPU (the kernel charges ahead in 64-page batches) for small ones.
fn close(a: u64, b: u64) -> bool {
    let slack = (a.max(b) / 50).max(crate::explain::record::page_size() * 64 * nr_cpus());
    a.abs_diff(b) <= slack
}

/// Online CPUs (each keeps its own charge stock).
fn nr_cpus() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).map_or(1, |n| n.max(1))
}

/// Explains and reports a batch of ring-buffer records; returns the indexes of the
/// stressors the kernel OOM-killed in it.
fn handle_records(
    state: &mut State,
    explainer: &mut Explainer,
    probes: &Probes,
    records: Vec<Result<Record, record::DecodeError>>,
    reporter: &Reporter,
) -> Vec<usize> {
    let records: Vec<Record> = records
        .into_iter()
        .filter_map(|r| {
            r.map_err(|e| tracing::warn!("undecodable record: {e}"))
                .ok()
        })
        .collect();
    let mut killed = Vec::new();
    for output in explainer.batch(records, &|id| probes.pressure(id)) {
        let Output::Kill(kill) = &output else {
            state.clear_status();
            reporter.output(&output, &KillContext::default());
            continue;
        };
        let task = &kill.victim.victim.task;
        let member = task.pid.or(task.tid).and_then(|pid| {
            state
                .members
                .iter()
                .position(|m| m.pid == Some(pid) && (m.alive || m.exited_at.is_some()))
        });
        let is_stressor = member.is_some_and(|i| state.members[i].role == Role::Stressor);
        state.clear_status();
        reporter.output(
            &output,
            &KillContext {
                stressor: Some(is_stressor),
                in_target: kill.in_target,
            },
        );
        if kill.kill_confirmed == Some(false) {
            continue;
        }
        state.kills_total += 1;
        if is_stressor {
            state.kills_stressors += 1;
        } else {
            state.kills_others += 1;
            if kill.in_target == Some(false) {
                state.kills_outside += 1;
            }
        }
        if let Some(i) = member {
            state.members[i].oom_killed = true;
            if is_stressor {
                killed.push(i);
            }
        }
    }
    probes.report_new_drops(reporter);
    killed
}

/// While a followed target is gone: looks for its replacement (every 250 ms) and, once found,
/// moves the run there. `Some(outcome)` ends the run.
fn seek(
    state: &mut State,
    explainer: &mut Explainer,
    tx: &mpsc::UnboundedSender<MemberEvent>,
    reporter: &Reporter,
) -> Result<Option<Outcome>> {
    let Some(f) = &mut state.following else {
        return Ok(None);
    };
    if f.searched_at
        .is_some_and(|t| t.elapsed() < Duration::from_millis(250))
    {
        return Ok(None);
    }
    f.searched_at = Some(Instant::now());
    let found = match kube::follow(&f.cfg.hierarchy, &f.cfg.state, &f.cfg.identity, &f.known) {
        Ok(Some(found)) => found,
        Ok(None) => return Ok(None),
        Err(e) => {
            tracing::error!("--follow: {}; stopping", crate::error_chain(&e));
            return Ok(Some(Outcome::TargetGone));
        }
    };
    let gone_ms = f.gone_since.map_or(0, |t| t.elapsed().as_millis() as u64);
    let previous = std::mem::replace(&mut state.target, found.cgroup.clone());
    let previous_id = f.cfg.identity.container_id.clone();
    f.known.extend(found.identity.container_id.clone());
    f.cfg.identity = found.identity.clone();
    f.gone_since = None;
    f.follows += 1;
    state.target_id = state.target.id()?;
    state.baseline = state.target.usage()?;
    state.last = state.target.counters()?;
    state.limit = state
        .target
        .effective_limit()
        .ok()
        .flatten()
        .map(|(l, _)| l)
        .or(state.limit);
    state.full_at = None;
    state.charged = None;
    state.at_goal = false;
    explainer.retarget(Scope::domain_of(&state.target)?);
    reporter.json(
        "target_followed",
        &serde_json::json!({
            "previous": previous.path,
            "previous_container_id": previous_id,
            "cgroup": state.target.path,
            "container_id": found.identity.container_id,
            "container_name": found.identity.container_name,
            "pod_uid": found.identity.pod_uid,
            "gone_ms": gone_ms,
            "t_ms": state.started.elapsed().as_millis() as u64,
        }),
    );
    let who = match (&found.identity.container_name, &found.identity.container_id) {
        (Some(name), Some(id)) => format!("container {name} ({})", &id[..id.len().min(12)]),
        (None, Some(id)) => format!("container {}", &id[..id.len().min(12)]),
        _ => format!("pod {}", found.identity.pod_uid),
    };
    tracing::warn!(
        "--follow: {who} is back as {} after {:.1}s; re-injecting {} stressor(s)",
        state.target.path,
        gone_ms as f64 / 1000.0,
        state.stressors().count()
    );
    let ramping = state.ramp.is_some();
    for i in 0..state.members.len() {
        let m = &mut state.members[i];
        m.restart_at = None;
        let initial = if m.role == Role::Stressor && ramping {
            0
        } else {
            m.share
        };
        m.start(&state.target, initial, tx)?;
        reporter.json("started", &state.members[i].line(None));
    }
    Ok(None)
}

fn schedule_restart(opts: &Options, m: &mut Member) {
    if opts.on_oom == OnOom::Restart && m.role == Role::Stressor && !m.alive && m.oom_killed {
        m.restart_at = Some(tokio::time::Instant::now() + RESTART_DELAY);
    }
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    opts: &Options,
    state: &mut State,
    explainer: &mut Explainer,
    ring: &mut probe::EventStream,
    probes: &Probes,
    tx: &mpsc::UnboundedSender<MemberEvent>,
    rx: &mut mpsc::UnboundedReceiver<MemberEvent>,
    reporter: &Reporter,
) -> Result<(Outcome, Option<signals::Stop>)> {
    let outcome = |o| Ok((o, None));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut shutdown = signals::Shutdown::new()?;
    let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    let mut hold_until: Option<tokio::time::Instant> = None;
    let give_up = opts.deadline.map(|d| tokio::time::Instant::now() + d);
    loop {
        let next_restart = state.members.iter().filter_map(|m| m.restart_at).min();
        let mut records = Vec::new();
        tokio::select! {
            biased;
            stop = shutdown.recv() => return Ok((Outcome::Interrupted, Some(stop))),
            res = ring.drain(|bytes| records.push(record::decode(bytes))) => {
                res.context("reading the BPF ring buffer")?;
            }
            ev = rx.recv() => {
                let Some(ev) = ev else { bail!("worker channel closed") };
                match ev {
                    MemberEvent::Report(i, g, report) if state.members[i].generation == g => {
                        if let crate::stress::stressor::Report::Error(e) = &report {
                            state.clear_status();
                            tracing::error!("{} {i}: {e}", state.members[i].worker.name);
                        }
                        if matches!(report, crate::stress::stressor::Report::Held { .. }) {
                            state.acked_at = Instant::now();
                        }
                        state.members[i].on_report(&report);
                    }
                    MemberEvent::Exited(i, g, exit) if state.members[i].generation == g => {
                        let m = &mut state.members[i];
                        m.alive = false;
                        m.exited_at = Some(Instant::now());
                        // The kernel marks the victim before it can exit, so an OOM kill's
                        // record normally arrives first; an unexplained SIGKILL is rechecked
                        // on the next ticks.
                        if m.oom_killed {
                            schedule_restart(opts, m);
                        } else if exit != Exit::Signal(libc::SIGKILL) {
                            let text = m.describe_exit(exit);
                            reporter.json("exited", &m.line(Some(exit.to_string())));
                            state.clear_status();
                            tracing::error!("{text}");
                            return outcome(Outcome::Failed);
                        }
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                if state.following.as_ref().is_some_and(|f| f.gone_since.is_some()) {
                    if let Some(o) = seek(state, explainer, tx, reporter)? {
                        return outcome(o);
                    }
                    continue;
                }
                // The target can vanish (a container restart removes its cgroup), and come
                // back at the same path as a new cgroup: the inode tells them apart.
                let same = state.target.id().is_ok_and(|id| id == state.target_id);
                match state.sample(reporter) {
                    Ok(()) if same => {}
                    Err(e) if same && state.target.dir.exists() => return Err(e.into()),
                    _ => {
                        state.clear_status();
                        let recreated = state.target.dir.exists();
                        let how = if recreated {
                            "was removed and created again (a container restart?)"
                        } else {
                            "was removed (a container restart?)"
                        };
                        let following = state.following.is_some();
                        reporter.json(
                            "target_gone",
                            &serde_json::json!({
                                "cgroup": state.target.path,
                                "recreated": recreated,
                                "following": following,
                                "t_ms": state.started.elapsed().as_millis() as u64,
                            }),
                        );
                        // Whatever the runtime left of the stressors goes now.
                        for m in state.members.iter().filter(|m| m.alive) {
                            m.kill();
                        }
                        let Some(f) = &mut state.following else {
                            tracing::error!(
                                "the target cgroup {} {how}; its stressors are stopped",
                                state.target.path
                            );
                            return outcome(Outcome::TargetGone);
                        };
                        let what = match (&f.cfg.identity.container_name, &f.cfg.identity.container_id) {
                            (Some(name), _) => format!("container {name} of pod {}", f.cfg.identity.pod_uid),
                            (None, Some(_)) => format!("a new container in pod {}", f.cfg.identity.pod_uid),
                            (None, None) => format!("pod {}", f.cfg.identity.pod_uid),
                        };
                        tracing::warn!(
                            "the target cgroup {} {how}; its stressors are stopped; --follow: waiting for {what}",
                            state.target.path
                        );
                        f.gone_since = Some(Instant::now());
                        f.searched_at = None;
                        continue;
                    }
                }
                // A SIGKILL nobody explained within a second was not the OOM killer's, unless
                // it came while the probes were loading and the cgroup counted OOM kills then.
                for m in state.members.iter_mut() {
                    if !m.alive && !m.oom_killed && let Some(t) = m.exited_at
                        && t.elapsed() > Duration::from_secs(1) {
                        m.exited_at = None;
                        let why = match state.unseen_kills {
                            Some((attached, n)) if t <= attached => format!(
                                "SIGKILL before the probes attached (the cgroup counted {n} OOM kill(s) then)"
                            ),
                            _ => "SIGKILL (not by the OOM killer)".to_owned(),
                        };
                        tracing::warn!("{} pid {}: {why}", m.worker.name, m.pid.unwrap_or(0));
                        reporter.json("exited", &m.line(Some(why)));
                    }
                }
                state.ramp_step();
                state.fill_to_step();
            }
            _ = sleep_until(next_restart.unwrap_or(far)), if next_restart.is_some() => {
                let now = tokio::time::Instant::now();
                for i in 0..state.members.len() {
                    if state.members[i].restart_at.is_some_and(|t| t <= now) {
                        let m = &mut state.members[i];
                        m.restart_at = None;
                        m.restarts += 1;
                        let target = m.target;
                        m.start(&state.target, target, tx)?;
                        reporter.json("restarted", &state.members[i].line(None));
                        state.clear_status();
                        let m = &state.members[i];
                        reporter.text(&format!(
                            "restarted {} {i} as pid {} after its OOM kill (restart {})",
                            m.worker.name,
                            m.pid.unwrap_or(0),
                            m.restarts
                        ));
                    }
                }
            }
            _ = sleep_until(hold_until.unwrap_or(far)), if hold_until.is_some() => {
                return outcome(Outcome::Completed);
            }
            _ = sleep_until(give_up.unwrap_or(far)), if give_up.is_some() => {
                return outcome(Outcome::TimedOut);
            }
        }
        for i in handle_records(state, explainer, probes, records, reporter) {
            if opts.on_oom == OnOom::Stop {
                return outcome(Outcome::StoppedByOom);
            }
            schedule_restart(opts, &mut state.members[i]);
        }
        if let Some(n) = opts.stop_after_kills
            && state.kills_total >= n
        {
            return outcome(Outcome::Completed);
        }
        let any_left = state.stressors().any(|m| m.alive || m.restart_at.is_some());
        if !any_left && state.stressors().all(|m| m.oom_killed) {
            return outcome(Outcome::AllStressorsKilled);
        }
        if state.full_at.is_none() && state.full() {
            state.full_at = Some(Instant::now());
            let usage = state.target.usage()?;
            state.charged = Some(usage.saturating_sub(state.baseline));
            state.charged_at_full = Some(state.charge());
            state.peak = state.peak.max(usage);
            if let Some(hold) = opts.hold {
                hold_until = Some(tokio::time::Instant::now() + hold);
            }
            let killed = state
                .stressors()
                .filter(|m| !m.alive || m.oom_killed)
                .count();
            reporter.json(
                "full",
                &serde_json::json!({
                    "held_bytes": state.held(),
                    "stressors_charge_bytes": state.charge(),
                    "charged_bytes": state.charged,
                    "usage_bytes": usage,
                    "stressors_oom_killed": killed,
                    "t_ms": state.started.elapsed().as_millis() as u64,
                }),
            );
            let kind = match opts.kind {
                Kind::Anon => "anonymous memory",
                Kind::Shmem => "shared memory",
                Kind::File => "page cache",
            };
            let pattern = match opts.pattern {
                Pattern::Hold => "",
                Pattern::KeepDirty => ", rewriting it continuously",
            };
            state.clear_status();
            let who = if killed == 0 {
                "stressors hold".to_owned()
            } else {
                format!(
                    "as full as the limit allows ({killed} stressor(s) OOM-killed): the \
                     survivors hold"
                )
            };
            reporter.text(&format!(
                "full: {who} {} of {kind}{pattern}; the stressors were charged {}{}",
                Bytes(state.held()),
                Bytes(state.charge()),
                match state.charged {
                    Some(c) if !close(c, state.charge()) =>
                        format!(" (the cgroup's usage rose by {})", Bytes(c)),
                    _ => String::new(),
                }
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pre_probe_cap;

    const MIB: u64 = 1 << 20;

    #[test]
    fn stressors_stay_below_the_limit_until_the_probes_are_attached() {
        let node = Some(16 << 30);
        // Plenty of room: no cap.
        assert_eq!(
            pre_probe_cap(Some(2304 * MIB), node, &[2048 * MIB], 4096),
            None
        );
        assert_eq!(pre_probe_cap(None, node, &[2048 * MIB], 4096), None);
        assert_eq!(pre_probe_cap(None, None, &[2048 * MIB], 4096), None);
        // Past the limit (an OOM on purpose): the headroom less a tenth, split by share.
        let caps = pre_probe_cap(Some(100 * MIB), node, &[100 * MIB, 50 * MIB], 4096).unwrap();
        assert_eq!(caps, vec![56 * MIB, 28 * MIB]);
        let caps = pre_probe_cap(Some(1000 * MIB), node, &[1000 * MIB, 500 * MIB], 4096).unwrap();
        assert!(caps.iter().sum::<u64>() <= 900 * MIB && caps.iter().all(|c| c % 4096 == 0));
        // A small limit keeps 16 MiB free; no headroom at all holds nothing.
        assert_eq!(
            pre_probe_cap(Some(64 * MIB), node, &[128 * MIB], 4096),
            Some(vec![48 * MIB])
        );
        assert_eq!(
            pre_probe_cap(Some(0), node, &[128 * MIB], 4096),
            Some(vec![0])
        );
        // No limit anywhere: the node's available memory bounds it.
        let caps = pre_probe_cap(None, Some(1 << 30), &[2 << 30], 4096).unwrap();
        assert!(caps[0] <= (1 << 30) / 10 * 9 && caps[0] > 900 * MIB);
    }
}
