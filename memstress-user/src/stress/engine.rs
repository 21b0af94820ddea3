//! The run's event loop: starts the workers, steers their sizes (ramp, fill-to), samples the
//! cgroup every 100 ms, reports OOM kills as the kernel makes them (through the
//! [`Observer`]), applies the OOM policy, and ends with a summary.

use std::{
    borrow::Cow,
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, time::sleep_until};

use super::{
    Options,
    available::{self, Held},
    member::{Member, MemberEvent, RESTART_DELAY, split},
    pressure::{self, Loop, Reading},
};
use crate::{
    Error, Result, exit,
    explain::{Explained, Explainer, Output, Scope, kill::KillReport, who},
    forecast::{Forecaster, Planned},
    observer::{Batch, Observer},
    output::{
        Reporter,
        line::{
            FullLine, GoneCause, KillContext, KilledByLine, KillsBeforeProbes, Line, Outcome, Plan,
            ReclaimSample, Role, SampleLine, Summary, TargetFollowed, TargetGone, ThrottleSample,
        },
        monotonic_ns,
    },
    probe::{ProbeError, Probes},
    signals,
    size::Bytes,
    spec::OnOom,
    stress::{
        spawn::{self, Exit},
        stressor::WorkerArgs,
    },
    target::{
        cgroup::{self, Cgroup, CgroupError, Counters, Hierarchy, PeakScope},
        init::{self, Init},
        kube::{self, Identity, RuntimeState},
        node::NodeMemory,
        psi::Psi,
        workload::Names,
    },
};

/// How a run ended, with what decides its exit code.
#[derive(Clone, Debug)]
pub struct Ended {
    /// The outcome (the summary's).
    pub outcome: Outcome,
    /// The signal that stopped it, if one did.
    pub signal: Option<signals::Stop>,
    /// Whether what was asked had been done when it stopped: the stressors were full and no
    /// `--hold` was given (an unbounded hold ends only by a signal: that is its normal end).
    pub done: bool,
    /// The summary it printed (`None` for a plan only: `--dry-run`).
    pub summary: Option<Summary>,
    /// The plan it printed.
    pub plan: Box<Plan>,
    /// The run's first confirmed OOM kill, and the member it took (by index: apps first, in
    /// the order given, then the stressors), if a member.
    pub first_kill: Option<(Option<usize>, Box<Explained>)>,
    /// The pid of every member, by index (the last one it had).
    pub pids: Vec<Option<u32>>,
}

impl Ended {
    /// The process exit code: the outcome's, or 128 + the signal's number for a run
    /// interrupted before it did what was asked (mid-fill, mid-ramp, before `--hold` ended).
    pub fn exit_code(&self) -> i32 {
        match (self.outcome, self.signal) {
            (Outcome::Interrupted, Some(stop)) if !self.done => stop.exit_code(),
            (Outcome::Completed | Outcome::Interrupted | Outcome::AllStressorsKilled, _) => {
                exit::SUCCESS
            }
            (Outcome::StoppedByOom, _) => exit::OOM_STOP,
            (Outcome::TargetGone, _) => exit::TARGET_GONE,
            (Outcome::TimedOut | Outcome::Failed, _) => exit::FAILURE,
        }
    }
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
    /// A container target: its end is its init's.
    pub container: Option<ContainerTarget>,
}

/// A container target: how to find its init process.
#[derive(Clone, Debug)]
pub struct ContainerTarget {
    /// Its id, when known (the runtime's state files record its init).
    pub id: Option<String>,
    /// Where the runtimes' state files are.
    pub state: RuntimeState,
}

/// What the engine watches of a container target's init, and where it starts the stressors.
struct Watching {
    target: ContainerTarget,
    /// The current container's init (`None`: not found; its cgroup's removal ends it).
    init: Option<Init>,
    /// Whether the stressors may start in the container's PID namespace (no: memstress
    /// cannot enter it, said once).
    enter: bool,
    /// An init was found for the target once: a replacement is a container with one too.
    seen_init: bool,
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

/// Kills the run reported, by whom they took.
#[derive(Clone, Copy, Debug, Default)]
struct Kills {
    stressors: u32,
    others: u32,
    /// Of `others`, outside the target (elsewhere in its domain).
    outside: u32,
}

impl Kills {
    fn total(self) -> u32 {
        self.stressors + self.others
    }
}

struct State {
    members: Vec<Member>,
    /// OOM kills the cgroup counted while the probes were loading, and when they attached.
    unseen_kills: Option<(Instant, u64)>,
    target: Cgroup,
    target_id: u64,
    baseline: u64,
    /// The controller is charged to the target (`--self`, or a target containing its own
    /// cgroup): the stressors wait for the probes, and the baseline is read again then.
    controller_in_target: bool,
    /// What the target's usage rose while the controller loaded its probes.
    controller_bytes: Option<u64>,
    started: Instant,
    full_at: Option<Instant>,
    charged: Option<u64>,
    peak: u64,
    kills: Kills,
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
    /// When the ramp began: once the probes were attached, when the stressors may grow (a
    /// ramp timed from the run's start would jump by the probes' loading time, seconds on a
    /// slow machine).
    ramp_from: Instant,
    page: u64,
    /// When the last sample was read.
    sampled_at: Instant,
    /// When a worker last completed a command.
    acked_at: Instant,
    /// `fill_to`: the working set was within the deadband at the last settled sample
    /// (`fill_to_available`: the node's memory.available was, or the floor held it).
    at_goal: bool,
    /// `fill_to_available`: the node's memory.available goal, and what it was while held.
    available: Option<(available::Goal, Held)>,
    /// The node's memory at the last sample.
    node: Option<NodeMemory>,
    /// The node's memory.available when the run was planned (the progress bar's 0 %).
    node_available_at_start: u64,
    /// `--follow`.
    following: Option<Following>,
    /// A container target's init.
    watching: Option<Watching>,
    /// The target is gone (its stressors' exits are its doing, not failures).
    gone: bool,
    /// The first confirmed OOM kill, and the member it took.
    first_kill: Option<(Option<usize>, Box<Explained>)>,
    /// The target's OOM domain's next kill, forecast (`None`: no limit applies).
    forecaster: Option<Forecaster>,
    /// The node's root memcg (its working set gives the kubelet's `memory.available`).
    node_root: Option<Cgroup>,
    /// v2: the target's `memory.events` `high` when the run started (`None` on v1).
    start_high_events: Option<u64>,
    /// Direct reclaim by the target's tasks, as the probes last counted it.
    reclaim: Option<ReclaimSample>,
    /// `memory.high` throttling of the target's tasks, as the probes last counted it (`None`:
    /// the throttle probes are not attached).
    throttle: Option<ThrottleSample>,
    /// `--pressure`: the closed loop.
    pressure: Option<Pressure>,
}

/// `--pressure`: the loop, the domain it keeps below its limit, and its last reading.
struct Pressure {
    looped: Loop,
    /// The cgroup whose `memory.max` applies, when it is not the target.
    domain: Option<Cgroup>,
    /// That limit, as last read.
    limit: u64,
    /// The reading of the last sample, for the next step.
    reading: Option<Reading>,
}

impl Pressure {
    /// The loop for `plan`'s goal in `cgroup`'s domain.
    fn new(plan: &Plan, cgroup: &Cgroup) -> Result<Option<Self>> {
        let Some(p) = &plan.pressure else {
            return Ok(None);
        };
        let (limit, domain) = cgroup
            .effective_limit()?
            .unwrap_or((p.limit_bytes, cgroup.clone()));
        let counters = domain.counters()?;
        let goal = pressure::Goal {
            metric: p.metric,
            pct: p.goal_pct,
        };
        Ok(Some(Self {
            looped: Loop::new(
                goal,
                limit,
                counters.usage_bytes.saturating_sub(counters.file_bytes),
            ),
            domain: (domain != *cgroup).then_some(domain),
            limit,
            reading: None,
        }))
    }
}

impl State {
    /// The run's members (apps first, then stressors), not started yet.
    fn new(
        opts: &Options,
        plan: &Plan,
        cgroup: &Cgroup,
        join: bool,
        follow: Option<Follow>,
        status_line: bool,
    ) -> Result<Self> {
        let mut members = Vec::new();
        for app in &opts.apps {
            let worker = WorkerArgs {
                name: app.name.clone(),
                ..WorkerArgs::default()
            };
            let m = Member::new(
                members.len(),
                Role::App,
                worker,
                app.bytes,
                app.oom_score_adj,
            );
            members.push(m);
        }
        for &share in &plan.bytes_per_worker {
            let worker = WorkerArgs {
                name: crate::spec::STRESSOR_COMM.to_owned(),
                kind: opts.kind,
                fill: opts.fill,
                pattern: opts.pattern,
                rewrite_every: opts.rewrite_every,
                thp: opts.thp,
                mlock: opts.mlock,
                unmapped: opts.unmapped,
                file_dir: opts.file_dir.clone(),
                kernel_per_page: plan.kernel_bytes_per_page,
                initial: None,
            };
            let index = members.len();
            members.push(Member::new(
                index,
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
        let controller_in_target =
            cgroup::own_cgroup(&cgroup.hierarchy).is_ok_and(|own| own.is_within(cgroup));
        Ok(Self {
            members,
            target: cgroup.clone(),
            target_id: cgroup.id()?,
            baseline,
            controller_in_target,
            controller_bytes: None,
            started: Instant::now(),
            full_at: None,
            charged: None,
            peak: baseline,
            kills: Kills::default(),
            last: start.clone(),
            start,
            total: plan.total_bytes,
            charged_at_full: None,
            status_line,
            limit: plan.target.limit_bytes,
            goal: plan.fill_to_bytes,
            deadband: plan.fill_to_bytes.map_or(0, |g| (g / 200).max(1 << 20)),
            ramp: opts.ramp,
            ramp_from: Instant::now(),
            page: crate::size::page_size(),
            sampled_at: Instant::now(),
            acked_at: Instant::now(),
            at_goal: false,
            available: plan.available.as_ref().map(|p| {
                let goal = available::Goal::from(p);
                (goal, Held::new(&goal))
            }),
            node: None,
            node_available_at_start: plan.domain.node_available_bytes,
            unseen_kills: None,
            watching: None,
            gone: false,
            first_kill: None,
            forecaster: Forecaster::new(cgroup),
            node_root: NodeMemory::root(),
            start_high_events: high_events(cgroup),
            reclaim: None,
            throttle: None,
            pressure: Pressure::new(plan, cgroup)?,
            following: follow.map(|cfg| Following {
                known: kube::container_ids(&cfg.hierarchy, &cfg.identity.pod_uid),
                cfg,
                gone_since: None,
                searched_at: None,
                follows: 0,
            }),
        })
    }

    /// Whether the run has stressors (`--throttle` alone has none).
    fn has_stressors(&self) -> bool {
        self.members.iter().any(|m| m.role == Role::Stressor)
    }

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

    fn t_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether the run got as far as it can: `--fill-to`'s goal reached, or every stressor
    /// holding its share, except those the OOM killer took (dead, or waiting to restart):
    /// with a size past the limit the survivors' full shares are the most the run can hold,
    /// and a hold must start from there.
    fn full(&self) -> bool {
        if let Some(p) = &self.pressure {
            return p.looped.done();
        }
        if self.goal.is_some() || self.available.is_some() {
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
            && (!self.has_stressors()
                || self.stressors().any(|m| m.alive || m.restart_at.is_some()))
    }

    /// OOM kills this run knows of: reported, and counted before the probes attached.
    fn run_kills(&self) -> u64 {
        u64::from(self.kills.total()) + self.unseen_kills.map_or(0, |(_, n)| n)
    }

    /// How far the stressors are towards what was asked, 0 to 1: their charge of the size,
    /// or the working set of the `--fill-to` goal.
    fn progress(&self, counters: &Counters) -> Option<f64> {
        let (done, whole) = match (self.goal, &self.available, &self.node) {
            (Some(goal), _, _) => (counters.working_set_bytes, goal),
            (None, Some((goal, _)), Some(node)) => (
                self.node_available_at_start.saturating_sub(node.available),
                self.node_available_at_start.saturating_sub(goal.bytes),
            ),
            (None, Some(_), None) => (0, 0),
            (None, None, _) => (self.charge(), self.total),
        };
        (whole > 0).then(|| (done as f64 / whole as f64).clamp(0.0, 1.0))
    }

    /// `--pressure`: what the loop needs of this sample (`None`: the pressure file or the
    /// domain could not be read, and the loop waits).
    fn pressure_reading(&mut self, counters: &Counters, psi: Option<&Psi>) -> Option<Reading> {
        // Nothing is read for a run without a goal.
        self.pressure.as_ref()?;
        let settled = self.all_settled() && self.members.iter().all(|m| m.restart_at.is_none());
        let stressors = self.charge();
        let kills = self.run_kills();
        let at = self.started.elapsed();
        let high = self.target.high().ok().flatten();
        let p = self.pressure.as_mut()?;
        let psi = *psi?;
        let (domain, limit) = match &p.domain {
            Some(d) => (d.counters().ok()?, d.limit().ok().flatten()),
            None => (counters.clone(), self.target.limit().ok().flatten()),
        };
        // The limit can be changed during the run: the loop keeps its margin below it.
        p.limit = limit.unwrap_or(p.limit);
        let below_high = high.map_or(u64::MAX, |h| h.saturating_sub(counters.usage_bytes));
        Some(Reading {
            at,
            psi,
            unreclaimable: domain.usage_bytes.saturating_sub(domain.file_bytes),
            limit: p.limit,
            ceiling: high.map_or(p.limit, |h| h.min(p.limit)),
            free: p.limit.saturating_sub(domain.usage_bytes).min(below_high),
            stressors,
            settled,
            kills,
        })
    }

    /// `--pressure`: one step of the loop on the last sample's reading; what it says goes to
    /// stderr (`backing off: …`).
    fn pressure_step(&mut self, reporter: &Reporter) {
        let Some(p) = &mut self.pressure else { return };
        let Some(reading) = p.reading.take() else {
            return;
        };
        let to = p.looped.step(&reading);
        let said = p.looped.said();
        if !said.is_empty() {
            reporter.clear_status();
            for line in said {
                tracing::warn!("{}: {line}", self.target.path);
            }
        }
        let Some(total) = to else { return };
        let alive: Vec<usize> = self
            .stressors()
            .filter(|m| m.alive && m.restart_at.is_none())
            .map(|m| m.index)
            .collect();
        for (i, share) in alive.iter().zip(split(total, alive.len(), self.page)) {
            self.members[*i].set_target(share);
        }
    }

    /// Reads the target's counters: a `sample` line, and the status line on a terminal.
    fn sample(&mut self, reporter: &Reporter) -> Result<(), CgroupError> {
        let counters = self.target.counters()?;
        let psi = Psi::of(&self.target);
        let reading = self.pressure_reading(&counters, psi.as_ref());
        let pressure = self.pressure.as_mut().map(|p| {
            p.reading = reading;
            p.looped.sample(psi.as_ref())
        });
        self.peak = self.peak.max(counters.usage_bytes);
        let planned = self.planned();
        let forecast = self.forecaster.as_mut().and_then(|f| {
            f.set_planned(planned);
            let forecast = f.sample(monotonic_ns(), self.target_id, &counters)?;
            if f.is_news(&forecast) {
                reporter.forecast(&forecast);
            }
            Some(forecast)
        });
        let node = NodeMemory::read_at(self.node_root.as_ref());
        if let (Some((_, held)), Some(n)) = (&mut self.available, &node) {
            held.sample(n, self.full_at.is_some());
        }
        self.node = node;
        let line = SampleLine {
            t_ms: self.t_ms(),
            counters: counters.clone(),
            limit_bytes: self.limit,
            stressors_held_bytes: self.held(),
            stressors_charge_bytes: self.charge(),
            stressors_alive: self.stressors().filter(|m| m.alive).count(),
            run_limit_hits: counters.limit_hits.saturating_sub(self.start.limit_hits),
            run_oom_kills: self.run_kills(),
            forecast,
            psi,
            node_psi: Psi::node(),
            node_available_bytes: node.map(|n| n.available),
            node_mem_available_bytes: node.map(|n| n.mem_available),
            memory_high_bytes: (self.target.hierarchy.version == cgroup::Version::V2)
                .then(|| self.target.high().ok().flatten())
                .flatten(),
            run_high_events: self
                .start_high_events
                .and_then(|start| Some(high_events(&self.target)?.saturating_sub(start))),
            run_reclaim: self.reclaim.clone(),
            run_throttle: self.throttle.clone(),
            pressure,
        };
        if self.status_line {
            let goal = self.available.as_ref().map(|(g, _)| g.bytes);
            let progress = match &line.pressure {
                Some(p) => Some((p.avg10 / p.goal_pct).clamp(0.0, 1.0)),
                None => self.progress(&counters),
            };
            reporter.status(&status_text(&line, progress, goal));
        }
        reporter.emit(&Line::Sample(Cow::Owned(line)));
        self.last = counters;
        self.sampled_at = Instant::now();
        Ok(())
    }

    /// What the stressors will still add to the domain's unreclaimable memory, for the
    /// forecast: with a size (at once or ramped) they stop at their shares. `None` where the
    /// run cannot say: no stressors, `--fill-to` (they follow the working set), or page cache
    /// (not unreclaimable memory at all, so nothing of the domain's growth is theirs).
    /// `--fill-to available=` follows the node and `--pressure` the target's PSI, so they
    /// cannot say either.
    fn planned(&self) -> Option<Planned> {
        let first = self.stressors().next()?;
        if self.goal.is_some()
            || self.available.is_some()
            || self.pressure.is_some()
            || first.worker.kind == crate::spec::Kind::File
        {
            return None;
        }
        let remaining_bytes = self
            .stressors()
            .map(|m| match (m.alive, m.restart_at.is_some()) {
                (true, _) => m.share.saturating_sub(m.charge),
                (false, true) => m.share,
                (false, false) => 0,
            })
            .sum();
        let shares: u64 = self.stressors().map(|m| m.share).sum();
        Some(Planned {
            remaining_bytes,
            rate_bytes_per_s: self.ramp.map(|r| shares as f64 / r.as_secs_f64().max(1e-3)),
        })
    }

    /// Ramp: the charge each stressor should have now.
    fn ramp_step(&mut self) {
        let Some(ramp) = self.ramp else { return };
        let frac = (self.ramp_from.elapsed().as_secs_f64() / ramp.as_secs_f64()).min(1.0);
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

    /// Whether a closed loop may act now: every stressor has done what it was told, the last
    /// sample was read after that, and no restart is pending. Only such a sample is acted
    /// on, so a change is never applied twice.
    fn may_steer(&self) -> bool {
        self.all_settled()
            && self.sampled_at > self.acked_at
            && !self.members.iter().any(|m| m.restart_at.is_some())
    }

    /// The stressors that are alive, by index.
    fn alive_stressors(&self) -> Vec<usize> {
        self.stressors()
            .filter(|m| m.alive)
            .map(|m| m.index)
            .collect()
    }

    /// Tells the alive stressors `alive` to hold `total` together.
    fn set_total(&mut self, alive: &[usize], total: u64) {
        for (i, share) in alive.iter().zip(split(total, alive.len(), self.page)) {
            self.members[*i].set_target(share);
        }
    }

    /// Fill-to: once every stressor has done what it was told, move their total by the
    /// distance between the working set and the goal.
    fn fill_to_step(&mut self) {
        let Some(goal) = self.goal else { return };
        if !self.may_steer() {
            return;
        }
        let deficit = goal as i64 - self.last.working_set_bytes as i64;
        self.at_goal = deficit.unsigned_abs() <= self.deadband;
        if self.at_goal {
            return;
        }
        let alive = self.alive_stressors();
        if alive.is_empty() {
            return;
        }
        let current: u64 = alive.iter().map(|&i| self.members[i].target).sum();
        let total = (current as i64 + deficit).max(0) as u64;
        self.set_total(&alive, total);
    }

    /// Fill-to available: once every stressor has done what it was told, move their total
    /// towards the node's memory.available goal ([`available::step`]: a deadband, damped
    /// growth, shrinking at once, and never MemAvailable under the floor).
    fn available_step(&mut self, reporter: &Reporter) {
        let (Some((goal, _)), Some(node)) = (&self.available, self.node) else {
            return;
        };
        let goal = *goal;
        if !self.may_steer() {
            return;
        }
        let alive = self.alive_stressors();
        if alive.is_empty() {
            return;
        }
        let current: u64 = alive.iter().map(|&i| self.members[i].target).sum();
        let at_floor = match available::step(&goal, current, &node) {
            available::Step::Hold { at_goal, at_floor } => {
                // Held back by the floor is as far as the run can safely go: its hold begins.
                self.at_goal = at_goal || at_floor;
                at_floor
            }
            available::Step::Set { total, at_floor } => {
                self.set_total(&alive, total);
                at_floor
            }
        };
        let Some((_, held)) = &mut self.available else {
            return;
        };
        if held.at_floor(at_floor, Instant::now()) {
            reporter.clear_status();
            tracing::warn!(
                "the node's MemAvailable is at memstress's floor ({}; now {}): the stressors \
                 hold no more, and shed what takes it lower; memory.available is {} (goal {})",
                Bytes(goal.floor),
                Bytes(node.mem_available),
                Bytes(node.available),
                Bytes(goal.bytes)
            );
        }
    }

    /// Starts every member before the probes are attached, each stressor below its
    /// pre-probe cap; returns the stressors whose cap cannot even cover their own footprint
    /// (they start once the probes are attached).
    fn start_before_probes(
        &mut self,
        opts: &Options,
        plan: &Plan,
        tx: &mpsc::UnboundedSender<MemberEvent>,
        reporter: &Reporter,
    ) -> Result<Vec<usize>> {
        let caps = pre_probe_cap(
            plan.target.limit_bytes.and(plan.headroom_bytes),
            crate::target::node_available(),
            &plan.bytes_per_worker,
            self.page,
        );
        let least = super::min_share(plan.stressor_footprint_bytes, self.page);
        let mut deferred = Vec::new();
        let mut stressor = 0;
        for i in 0..self.members.len() {
            let m = &mut self.members[i];
            let mut initial = if m.role == Role::Stressor && opts.ramp.is_some() {
                0
            } else if m.role == Role::Stressor && plan.available.is_some() {
                // The node moves while the probes load (the controller's own memory, their
                // maps): half the estimate now, the loop steers the rest from samples.
                m.share / 2 / self.page * self.page
            } else {
                m.share
            };
            if m.role == Role::Stressor {
                let cap = caps.as_ref().map(|c| c[stressor]);
                stressor += 1;
                // The controller's own growth while it loads the probes is not foreseeable:
                // in its own target, the stressors start once it has settled.
                if self.controller_in_target
                    || opts.apps_first
                    || cap.is_some_and(|cap| cap < least)
                {
                    deferred.push(i);
                    continue;
                }
                initial = initial.min(cap.unwrap_or(u64::MAX));
            }
            m.start(&self.target, initial, tx)?;
            reporter.emit(&Line::Started(Cow::Owned(self.members[i].line(None))));
        }
        Ok(deferred)
    }

    /// The probes are attached: every stressor may now go to its full share, and the
    /// deferred ones start.
    fn after_attach(
        &mut self,
        opts: &Options,
        deferred: Vec<usize>,
        tx: &mpsc::UnboundedSender<MemberEvent>,
        reporter: &Reporter,
    ) -> Result<()> {
        self.ramp_from = Instant::now();
        if opts.ramp.is_none() && self.available.is_none() {
            for m in self.members.iter_mut().filter(|m| m.role == Role::Stressor) {
                m.set_target(m.share);
            }
        }
        for i in deferred {
            let m = &mut self.members[i];
            let initial = if opts.ramp.is_some() {
                0
            } else if self.available.is_some() {
                m.share / 2 / self.page * self.page
            } else {
                m.share
            };
            m.start(&self.target, initial, tx)?;
            reporter.emit(&Line::Started(Cow::Owned(self.members[i].line(None))));
        }
        Ok(())
    }

    /// When the controller is charged to the target: waits (2 s at most) until the target's
    /// usage stops moving (less than 512 KiB over 100 ms: the kernel's per-CPU charge
    /// batches), then takes it as the run's baseline, so that what the stressors add to it is
    /// the size asked for; what the controller added since the first reading is its own
    /// share (`controller_bytes`). Nothing of the run's stressors is in the target yet.
    async fn settle_controller(&mut self) -> Result<()> {
        if !self.controller_in_target {
            return Ok(());
        }
        const STEP: Duration = Duration::from_millis(25);
        const QUIET: u64 = 512 << 10;
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut window = std::collections::VecDeque::with_capacity(5);
        loop {
            let usage = self.target.usage()?;
            if window.len() == 5 {
                window.pop_front();
            }
            window.push_back(usage);
            let (lo, hi) = window
                .iter()
                .fold((u64::MAX, 0), |(lo, hi), &u| (lo.min(u), hi.max(u)));
            if (window.len() == 5 && hi - lo < QUIET) || Instant::now() >= deadline {
                self.controller_bytes = Some(usage.saturating_sub(self.baseline));
                tracing::info!(
                    "the controller is charged to {}: its own {} (probes loaded) is in the \
                     baseline ({}); the stressors add the size to that",
                    self.target.path,
                    Bytes(usage.saturating_sub(self.baseline)),
                    Bytes(usage)
                );
                self.baseline = usage;
                self.peak = self.peak.max(usage);
                return Ok(());
            }
            tokio::time::sleep(STEP).await;
        }
    }

    /// OOM kills the target counted while the probes were loading, which no probe saw.
    fn count_unseen_kills(&mut self, before: Option<u64>, reporter: &Reporter) {
        let Some(before) = before else { return };
        let Ok(now) = self.target.counters() else {
            return;
        };
        if now.oom_kills <= before {
            return;
        }
        let n = now.oom_kills - before;
        self.unseen_kills = Some((Instant::now(), n));
        reporter.clear_status();
        tracing::warn!(
            "{n} OOM kill(s) in {} happened while the probes were loading; the cgroup counted \
             them, but their details are unknown",
            self.target.path
        );
        reporter.emit(&Line::OomKillsBeforeProbes(Cow::Owned(KillsBeforeProbes {
            cgroup: self.target.path.clone(),
            count: n,
        })));
    }

    /// Reports what the explainer made of a batch; returns the indexes of the stressors the
    /// kernel OOM-killed in it.
    fn on_batch(&mut self, batch: Batch, reporter: &Reporter) -> Vec<usize> {
        let mut killed = Vec::new();
        for output in batch.outputs {
            if let Output::Signalled(kill) = &output {
                self.on_signal(kill, &output, reporter);
                continue;
            }
            let Output::Kill(kill) = &output else {
                reporter.output(&output, &KillContext::default());
                continue;
            };
            let task = &kill.victim.victim.task;
            let member = task.pid.or(task.tid).and_then(|pid| {
                self.members
                    .iter()
                    .position(|m| m.pid == Some(pid) && (m.alive || m.exited_at.is_some()))
            });
            let is_stressor = member.is_some_and(|i| self.members[i].role == Role::Stressor);
            let context = KillContext {
                stressor: Some(is_stressor),
                in_target: kill.in_target,
                forecast: self.forecaster.as_mut().and_then(|f| f.score(kill)),
            };
            reporter.output(&output, &context);
            if kill.kill_confirmed == Some(false) {
                continue;
            }
            if is_stressor {
                self.kills.stressors += 1;
            } else {
                self.kills.others += 1;
                if kill.in_target == Some(false) {
                    self.kills.outside += 1;
                }
            }
            if self.first_kill.is_none() {
                self.first_kill = Some((member, kill.clone()));
            }
            if let Some(i) = member {
                self.members[i].oom_killed = true;
                if is_stressor {
                    killed.push(i);
                }
            }
        }
        if let Some((new, total)) = batch.dropped {
            reporter.dropped(new, total);
        }
        killed
    }

    /// A kill that was not the OOM killer's, of something in the target: reported, and
    /// remembered for a member's `exited` line. Such a member is not restarted: whoever sent
    /// it meant it to stop (`--on-oom restart` restarts only what the OOM killer took).
    fn on_signal(&mut self, kill: &KillReport, output: &Output, reporter: &Reporter) {
        let task = &kill.victim.task;
        let member = task.pid.or(task.tid).and_then(|pid| {
            self.members
                .iter()
                .position(|m| m.pid == Some(pid) && (m.alive || m.exited_at.is_some()))
        });
        let context = KillContext {
            stressor: Some(member.is_some_and(|i| self.members[i].role == Role::Stressor)),
            in_target: None,
            forecast: None,
        };
        reporter.output(output, &context);
        if let Some(i) = member {
            self.members[i].killed_by = Some(KilledByLine {
                signal: kill.signal,
                by: kill.by,
                sender: kill.sender.clone(),
            });
        }
    }

    /// A worker's report or exit. `Some` ends the run.
    fn on_member_event(
        &mut self,
        ev: MemberEvent,
        opts: &Options,
        reporter: &Reporter,
    ) -> Option<Outcome> {
        match ev {
            MemberEvent::Report(i, g, report) if self.members[i].generation == g => {
                if let crate::stress::stressor::Report::Error(e) = &report {
                    reporter.clear_status();
                    tracing::error!("{} {i}: {e}", self.members[i].worker.name);
                }
                if matches!(report, crate::stress::stressor::Report::Held { .. }) {
                    self.acked_at = Instant::now();
                }
                self.members[i].on_report(&report);
            }
            MemberEvent::Exited(i, g, exit) if self.members[i].generation == g => {
                let m = &mut self.members[i];
                m.alive = false;
                if self.gone {
                    // Stopped with its target (or killed by the kernel with the container).
                    return None;
                }
                m.exited_at = Some(Instant::now());
                // The kernel marks the victim before it can exit, so an OOM kill's record
                // normally arrives first; an unexplained SIGKILL is rechecked on the next
                // ticks.
                if m.oom_killed {
                    schedule_restart(opts, m);
                } else if exit != Exit::Signal(libc::SIGKILL) {
                    let text = m.describe_exit(exit);
                    reporter.emit(&Line::Exited(Cow::Owned(m.line(Some(exit.to_string())))));
                    reporter.clear_status();
                    tracing::error!("{text}");
                    return Some(Outcome::Failed);
                }
            }
            _ => {}
        }
        None
    }

    /// A SIGKILL nobody explained within a second was not the OOM killer's, unless it came
    /// while the probes were loading and the cgroup counted OOM kills then.
    fn explain_sigkills(&mut self, reporter: &Reporter) {
        for m in self.members.iter_mut() {
            let Some(t) = m.exited_at.filter(|t| t.elapsed() > Duration::from_secs(1)) else {
                continue;
            };
            if m.alive || m.oom_killed {
                continue;
            }
            m.exited_at = None;
            let why = match self.unseen_kills {
                Some((attached, n)) if t <= attached => format!(
                    "SIGKILL before the probes attached (the cgroup counted {n} OOM kill(s) then)"
                ),
                _ => match &m.killed_by {
                    Some(k) => format!(
                        "SIGKILL (not by the OOM killer) from {}",
                        who(k.sender.pid, k.sender.comm.as_deref())
                    ),
                    None => "SIGKILL (not by the OOM killer)".to_owned(),
                },
            };
            tracing::warn!("{} pid {}: {why}", m.worker.name, m.pid.unwrap_or(0));
            reporter.emit(&Line::Exited(Cow::Owned(m.line(Some(why)))));
        }
    }

    /// Starts the stressors whose restart is due (`--on-oom restart`).
    fn restart_due(
        &mut self,
        tx: &mpsc::UnboundedSender<MemberEvent>,
        reporter: &Reporter,
    ) -> Result<()> {
        let now = tokio::time::Instant::now();
        for i in 0..self.members.len() {
            if self.members[i].restart_at.is_none_or(|t| t > now) {
                continue;
            }
            let m = &mut self.members[i];
            m.restart_at = None;
            m.restarts += 1;
            let target = m.target;
            m.start(&self.target, target, tx)?;
            reporter.emit(&Line::Restarted(Cow::Owned(self.members[i].line(None))));
        }
        Ok(())
    }

    /// Finds and watches a container target's init; the stressors start in its PID
    /// namespace when memstress may enter it (else it says so, once).
    fn start_watching(&mut self, target: ContainerTarget) {
        let init = find_init(&target, &self.target);
        self.watching = Some(Watching {
            target,
            seen_init: init.is_some(),
            init,
            enter: true,
        });
        self.describe_watch();
        self.share_pid_ns();
    }

    /// Says how the container's end will be seen; gives up its PID namespace when memstress
    /// cannot enter it (and then does not try again).
    fn describe_watch(&mut self) {
        let Some(w) = &mut self.watching else { return };
        let Some(init) = &mut w.init else {
            tracing::warn!(
                "cannot find the init process of the container in {}: its end is seen only \
                 when its cgroup is removed (a runtime cannot remove it while the stressors \
                 are in it)",
                self.target.path
            );
            return;
        };
        let who = format!(
            "the container's init is pid {}{} (from {})",
            init.pid,
            init::comm(init.pid).map_or_else(String::new, |c| format!(" `{c}`")),
            init.source
        );
        if let Some(e) = init.pid_ns_error.take() {
            if w.enter {
                w.enter = false;
                tracing::warn!(
                    "cannot start the stressors in the container's PID namespace ({e}; that \
                     needs CAP_SYS_PTRACE and CAP_SYS_ADMIN): {who}, watched instead; the \
                     stressors are stopped as soon as it exits"
                );
            }
            return;
        }
        let Some(ns) = init.pid_ns() else {
            tracing::info!(
                "{who}, in memstress's own PID namespace: its exit ends the container, and \
                 stops the stressors"
            );
            return;
        };
        if !w.enter {
            init.forget_pid_ns();
            return;
        }
        match spawn::can_enter_pid_ns(ns) {
            Ok(()) => tracing::info!(
                "{who}; the stressors start in its PID namespace: the kernel ends them with \
                 the container"
            ),
            Err(e) => {
                w.enter = false;
                init.forget_pid_ns();
                tracing::warn!(
                    "cannot start the stressors in the container's PID namespace ({e}; that \
                     needs CAP_SYS_ADMIN): {who}, watched instead; the stressors are stopped \
                     as soon as it exits"
                );
            }
        }
    }

    /// Gives the members the PID namespace to start in (the container's, or none).
    fn share_pid_ns(&mut self) {
        let ns = self
            .watching
            .as_ref()
            .filter(|w| w.enter)
            .and_then(|w| w.init.as_ref())
            .and_then(|i| i.share_pid_ns().ok().flatten())
            .map(std::sync::Arc::new);
        for m in &mut self.members {
            m.pid_ns = ns.clone();
        }
    }

    /// The target is gone, because its cgroup went (`init`: `None`) or the container's init
    /// exited: stops what is left of the stressors; without `--follow` the run ends there.
    fn on_target_gone(&mut self, reporter: &Reporter, init: Option<u32>) -> Option<Outcome> {
        reporter.clear_status();
        self.gone = true;
        if let Some(w) = &mut self.watching {
            w.init = None;
        }
        self.share_pid_ns();
        let recreated = init.is_none() && self.target.dir.exists();
        let how = match init {
            Some(pid) => format!(
                "ended: its container's init process (pid {pid}) exited{}",
                if self.target.dir.exists() {
                    ""
                } else {
                    " and its cgroup is gone"
                }
            ),
            None if recreated => "was removed and created again (a container restart?)".to_owned(),
            None => "was removed (a container restart?)".to_owned(),
        };
        reporter.emit(&Line::TargetGone(Cow::Owned(TargetGone {
            cgroup: self.target.path.clone(),
            recreated,
            following: self.following.is_some(),
            t_ms: self.t_ms(),
            cause: if init.is_some() {
                GoneCause::InitExited
            } else {
                GoneCause::CgroupRemoved
            },
            reason: format!("the target {how}"),
            init_pid: init,
        })));
        // Whatever the runtime (or the kernel, in the container's PID namespace) left of the
        // stressors goes now, so that the runtime can remove the cgroup; their SIGKILLs are
        // the target's end, not unexplained.
        for m in self.members.iter_mut() {
            if m.alive {
                m.kill();
            }
            m.exited_at = None;
        }
        let Some(f) = &mut self.following else {
            tracing::error!(
                "the target cgroup {} {how}; its stressors are stopped",
                self.target.path
            );
            return Some(Outcome::TargetGone);
        };
        let id = &f.cfg.identity;
        let what = match (&id.container_name, &id.container_id) {
            (Some(name), _) => format!("container {name} of pod {}", id.pod_uid),
            (None, Some(_)) => format!("a new container in pod {}", id.pod_uid),
            (None, None) => format!("pod {}", id.pod_uid),
        };
        tracing::warn!(
            "the target cgroup {} {how}; its stressors are stopped; --follow: waiting for {what}",
            self.target.path
        );
        f.gone_since = Some(Instant::now());
        f.searched_at = None;
        None
    }

    /// The target became full: notes the charge, starts the hold, and says so.
    fn on_full(&mut self, opts: &Options, reporter: &Reporter) -> Result<()> {
        self.full_at = Some(Instant::now());
        let usage = self.target.usage()?;
        self.charged = Some(usage.saturating_sub(self.baseline));
        self.charged_at_full = Some(self.charge());
        self.peak = self.peak.max(usage);
        let killed = self
            .stressors()
            .filter(|m| !m.alive || m.oom_killed)
            .count();
        reporter.emit(&Line::Full(Cow::Owned(FullLine {
            held_bytes: self.held(),
            stressors_charge_bytes: self.charge(),
            charged_bytes: self.charged,
            usage_bytes: usage,
            stressors_oom_killed: killed,
            kind: opts.kind,
            pattern: opts.pattern,
            t_ms: self.t_ms(),
        })));
        Ok(())
    }

    /// The summary, from what the run saw; `held` and `charge` are the stressors' at the end
    /// (before they were stopped).
    fn summary(
        &self,
        plan: &Plan,
        (outcome, signal): (Outcome, Option<signals::Stop>),
        (held, charge): (u64, u64),
        kernel_peak: Option<(u64, PeakScope)>,
        dropped_records: u64,
    ) -> Summary {
        let now = Instant::now();
        Summary {
            outcome,
            target: self.target.path.clone(),
            requested_bytes: if plan.fill_to_bytes.is_some()
                || plan.available.is_some()
                || plan.pressure.is_some()
            {
                charge
            } else {
                plan.total_bytes
            },
            fill_to_bytes: plan.fill_to_bytes,
            held_bytes: held,
            stressor_charge_bytes: charge,
            stressors_charged_bytes: self.charged_at_full,
            charged_bytes: self.charged,
            baseline_usage_bytes: self.baseline,
            controller_bytes: self.controller_bytes,
            // Sampling every 100 ms can miss a peak an OOM kill cut short: the kernel's
            // high-water mark is used where it covers this run only.
            peak_usage_bytes: match kernel_peak {
                Some((bytes, PeakScope::Run)) => self.peak.max(bytes),
                _ => self.peak,
            },
            kernel_peak_usage_bytes: kernel_peak.map(|(bytes, _)| bytes),
            kernel_peak_scope: kernel_peak.map(|(_, scope)| scope),
            limit_bytes: plan.target.limit_bytes,
            oom_kills_stressors: self.kills.stressors,
            oom_kills_others: self.kills.others,
            oom_kills_outside_target: self.kills.outside,
            signal,
            restarts: self.members.iter().map(|m| m.restarts).sum(),
            dropped_records,
            follows: self.following.as_ref().map_or(0, |f| f.follows),
            fill_ms: self
                .full_at
                .map(|t| t.duration_since(self.started).as_millis() as u64),
            hold_ms: self
                .full_at
                .map_or(0, |t| now.duration_since(t).as_millis() as u64),
            total_ms: now.duration_since(self.started).as_millis() as u64,
            forecast: self.forecaster.as_ref().map(Forecaster::score_so_far),
            available: self.available.as_ref().map(|(_, held)| held.line(now)),
            throttled: self.throttle.clone(),
            pressure: self.pressure.as_ref().map(|p| p.looped.summary()),
        }
    }
}

/// The status line: progress towards the size, the target's usage, and what the run caused
/// since its start; with `available_goal`, the node's memory.available against it.
fn status_text(s: &SampleLine, progress: Option<f64>, available_goal: Option<u64>) -> String {
    let bar = progress.map_or_else(String::new, |done| {
        let filled = (done * 20.0).round() as usize;
        format!(
            "[{}{}] {:>3.0}% ",
            "#".repeat(filled),
            ".".repeat(20 - filled),
            done * 100.0
        )
    });
    let limit = s
        .limit_bytes
        .map_or_else(String::new, |l| format!(" / {}", Bytes(l)));
    let forecast = match &s.forecast {
        Some(f) => match (f.oom_in_ms, &f.victim) {
            (Some(ms), Some(v)) => format!(
                "; OOM in ~{:.1}s, victim {} ({})",
                ms as f64 / 1000.0,
                v.comm,
                v.pid
            ),
            (Some(ms), None) => format!("; OOM in ~{:.1}s", ms as f64 / 1000.0),
            (None, _) => String::new(),
        },
        None => String::new(),
    };
    let psi = match (&s.psi, &s.node_psi) {
        (Some(p), _) => format!("; pressure {}", p.text()),
        (None, Some(p)) => format!("; node pressure {}", p.text()),
        (None, None) => String::new(),
    };
    let held = s
        .run_throttle
        .as_ref()
        .and_then(ThrottleSample::text)
        .map_or_else(String::new, |t| format!(", tasks held {t}"));
    let high = match (s.memory_high_bytes, s.run_high_events) {
        (Some(high), Some(n)) => format!(", memory.high {} (over it {n}×{held})", Bytes(high)),
        _ => String::new(),
    };
    let node = match (
        available_goal,
        s.node_available_bytes,
        s.node_mem_available_bytes,
    ) {
        (Some(goal), Some(available), Some(mem_available)) => format!(
            "node memory.available {} (goal {}), MemAvailable {}; ",
            crate::size::mib(available),
            crate::size::mib(goal),
            crate::size::mib(mem_available)
        ),
        _ => String::new(),
    };
    let goal = s.pressure.as_ref().map_or_else(String::new, |p| {
        format!(
            "; goal {} {}%: stressors at {} of {} allowed, {}",
            p.metric.name(),
            p.goal_pct,
            Bytes(p.holding_bytes),
            Bytes(p.cap_bytes),
            p.state.text()
        )
    });
    format!(
        "{bar}{node}usage {}{limit}{high}, working set {}, {} stressor(s) holding {}; since the \
         start: limit hits {}, OOM kills {}{psi}{goal}{forecast}",
        Bytes(s.counters.usage_bytes),
        Bytes(s.counters.working_set_bytes),
        s.stressors_alive,
        Bytes(s.stressors_held_bytes),
        s.run_limit_hits,
        s.run_oom_kills
    )
}

/// v2 `memory.events` `high` of `cgroup` (`None` on v1, or unreadable).
fn high_events(cgroup: &Cgroup) -> Option<u64> {
    (cgroup.hierarchy.version == cgroup::Version::V2)
        .then(|| cgroup.high_events().ok())
        .flatten()
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
    loading: tokio::task::JoinHandle<Result<Probes, ProbeError>>,
    reporter: &Reporter,
    context: Context,
) -> Result<Ended> {
    // Ctrl-C and SIGTERM end the run cleanly from the first moment.
    let shutdown = signals::Shutdown::new().map_err(|e| Error::io("cannot handle signals", e))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let status_line = reporter.status_wanted();
    let mut state = State::new(opts, plan, cgroup, join, context.follow, status_line)?;
    if let Some(container) = context.container {
        state.start_watching(container);
    }
    // Made before anything starts, so that a kill's pressure counts from the run's start.
    let mut explainer =
        Explainer::new(context.real.clone(), monotonic_ns()).only_in(Scope::domain_of(cgroup)?);
    explainer.seed_scope(cgroup, monotonic_ns());
    let kills_before = cgroup.counters().map(|c| c.oom_kills).ok();
    let deferred = state.start_before_probes(opts, plan, &tx, reporter)?;
    let probes = match loading.await {
        Ok(loaded) => loaded.map_err(Error::from),
        Err(e) => Err(Error::io(
            "loading the probes failed",
            std::io::Error::other(e.to_string()),
        )),
    };
    let mut observer = match probes.and_then(|p| {
        let names = Names::new(opts.runtime_state.clone(), context.real.clone());
        Observer::new(p, explainer, names).map_err(|e| Error::io("reading the BPF ring buffer", e))
    }) {
        Ok(observer) => observer,
        Err(e) => {
            stop_members(&mut state, &mut rx).await;
            return Err(e);
        }
    };
    reporter.attached(observer.probes(), Some(&cgroup.path));
    state.count_unseen_kills(kills_before, reporter);
    if let Err(e) = state.settle_controller().await {
        stop_members(&mut state, &mut rx).await;
        return Err(e);
    }
    if opts.apps_first
        && let Err(e) = wait_for_apps(opts, &mut state, &mut rx, reporter).await
    {
        stop_members(&mut state, &mut rx).await;
        return Err(e);
    }
    state.after_attach(opts, deferred, &tx, reporter)?;
    let peak = cgroup.peak_reader(plan.target.created);
    let outcome = drive(
        opts,
        &mut state,
        &mut observer,
        shutdown,
        (&tx, &mut rx),
        reporter,
    )
    .await;
    reporter.clear_status();
    // What the stressors still running hold now: the OOM-killed ones hold nothing.
    let end = (state.held(), state.charge());
    stop_members(&mut state, &mut rx).await;
    // Kills that happened while stopping are still reported.
    let late = observer.drain_now();
    state.on_batch(late, reporter);
    let outcome = outcome?;
    let kernel_peak = peak.and_then(|p| Some((p.read().ok()?, p.scope())));
    let summary = state.summary(plan, outcome, end, kernel_peak, observer.probes().drops());
    reporter.emit(&Line::Summary(Cow::Borrowed(&summary)));
    Ok(Ended {
        outcome: outcome.0,
        signal: outcome.1,
        // An unbounded hold (no --hold, no deadline) has done what was asked once full: a
        // signal is how it ends.
        done: state.full_at.is_some() && opts.hold.is_none() && opts.stop_after_kills.is_none(),
        summary: Some(summary),
        plan: Box::new(plan.clone()),
        first_kill: state.first_kill.take(),
        pids: state.members.iter().map(|m| m.pid).collect(),
    })
}

/// `apps_first`: waits until every app holds its size (or is gone), handling their reports;
/// the stressors start after.
async fn wait_for_apps(
    opts: &Options,
    state: &mut State,
    rx: &mut mpsc::UnboundedReceiver<MemberEvent>,
    reporter: &Reporter,
) -> Result<()> {
    const BOUND: Duration = Duration::from_secs(120);
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        if state
            .members
            .iter()
            .filter(|m| m.role == Role::App)
            .all(|m| m.settled() || !m.alive)
        {
            return Ok(());
        }
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => {
                    let _ = state.on_member_event(ev, opts, reporter);
                }
                None => return Ok(()),
            },
            _ = sleep_until(deadline) => {
                return Err(Error::Refused(format!(
                    "the apps did not reach their sizes within {}s",
                    BOUND.as_secs()
                )));
            }
        }
    }
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

/// While a followed target is gone: looks for its replacement (every 250 ms) and, once found,
/// moves the run there. `Some(outcome)` ends the run.
fn seek(
    state: &mut State,
    observer: &mut Observer,
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
    // A container target: the replacement's init, watched from the start (a container whose
    // cgroup holds no process yet has not started: looked for again).
    let new_init = match &state.watching {
        Some(w) => {
            let target = ContainerTarget {
                id: found.identity.container_id.clone(),
                state: w.target.state.clone(),
            };
            match find_init(&target, &found.cgroup) {
                None if w.seen_init && init::is_empty(&found.cgroup) => return Ok(None),
                init => Some((target, init)),
            }
        }
        None => None,
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
    state.gone = false;
    if let (Some(w), Some((target, init))) = (&mut state.watching, new_init) {
        w.target = target;
        w.seen_init |= init.is_some();
        w.init = init;
        state.describe_watch();
        state.share_pid_ns();
    }
    let init_pid = state
        .watching
        .as_ref()
        .and_then(|w| w.init.as_ref())
        .map(|i| i.pid);
    let in_pid_namespace = state.members.iter().any(|m| m.pid_ns.is_some());
    observer
        .explainer_mut()
        .retarget(Scope::domain_of(&state.target)?);
    // A new cgroup, perhaps a new domain: its forecasts start afresh; the score so far is
    // the old domain's, and is kept in the summary only when the domain is the same.
    if state
        .forecaster
        .as_ref()
        .is_none_or(|f| !state.target.is_within(f.domain()))
    {
        state.forecaster = Forecaster::new(&state.target);
    }
    let id = &found.identity;
    reporter.emit(&Line::TargetFollowed(Cow::Owned(TargetFollowed {
        previous: previous.path,
        previous_container_id: previous_id,
        cgroup: state.target.path.clone(),
        container_id: id.container_id.clone(),
        container_name: id.container_name.clone(),
        pod_uid: id.pod_uid.clone(),
        gone_ms,
        t_ms: state.t_ms(),
        init_pid,
        in_pid_namespace,
    })));
    let who = match (&id.container_name, &id.container_id) {
        (Some(name), Some(cid)) => format!("container {name} ({})", &cid[..cid.len().min(12)]),
        (None, Some(cid)) => format!("container {}", &cid[..cid.len().min(12)]),
        _ => format!("pod {}", id.pod_uid),
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
        reporter.emit(&Line::Started(Cow::Owned(state.members[i].line(None))));
    }
    Ok(None)
}

/// A container target's init and how to find it: the runtime's record, else the cgroup's
/// PID 1 of a namespace of its own; `None`: not found.
fn find_init(target: &ContainerTarget, cgroup: &Cgroup) -> Option<Init> {
    let (pid, source) = init::find(&target.state, target.id.as_deref(), cgroup)?;
    Init::watch(pid, source, cgroup)
        .map_err(|e| tracing::debug!("cannot watch pid {pid}: {e}"))
        .ok()
        .flatten()
}

/// Resolves with its pid when the watched init exits; never without one.
async fn init_exit(watching: Option<&Watching>) -> u32 {
    match watching.and_then(|w| w.init.as_ref()) {
        Some(init) => {
            init.exited().await;
            init.pid
        }
        None => std::future::pending().await,
    }
}

fn schedule_restart(opts: &Options, m: &mut Member) {
    if opts.on_oom == OnOom::Restart && m.role == Role::Stressor && !m.alive && m.oom_killed {
        m.restart_at = Some(tokio::time::Instant::now() + RESTART_DELAY);
    }
}

/// Every 100 ms: the target's counters (or its disappearance), unexplained exits, and the
/// next ramp or fill-to step. `Some` ends the run.
fn on_tick(
    state: &mut State,
    observer: &mut Observer,
    tx: &mpsc::UnboundedSender<MemberEvent>,
    reporter: &Reporter,
) -> Result<Option<Outcome>> {
    if state
        .following
        .as_ref()
        .is_some_and(|f| f.gone_since.is_some())
    {
        return seek(state, observer, tx, reporter);
    }
    // The target can vanish (a container restart removes its cgroup), and come back at the
    // same path as a new cgroup: the inode tells them apart.
    let same = state.target.id().is_ok_and(|id| id == state.target_id);
    state.reclaim = observer
        .probes()
        .pressure(state.target_id)
        .map(|p| ReclaimSample {
            runs: p.runs,
            reclaimed_bytes: p.reclaimed.saturating_mul(state.page),
            us: p.ns / 1000,
        });
    state.throttle = observer
        .probes()
        .throttle(state.target_id)
        .map(|t| ThrottleSample::from_kernel(&t, state.page));
    match state.sample(reporter) {
        Ok(()) if same => {}
        Err(e) if same && state.target.dir.exists() => return Err(e.into()),
        _ => return Ok(state.on_target_gone(reporter, None)),
    }
    state.explain_sigkills(reporter);
    state.ramp_step();
    state.fill_to_step();
    state.available_step(reporter);
    state.pressure_step(reporter);
    Ok(None)
}

/// The run's loop: worker events, records from the probes, the sampling tick, restarts and
/// the timers that end it. Returns how it ended and the signal that ended it, if one did.
async fn drive(
    opts: &Options,
    state: &mut State,
    observer: &mut Observer,
    mut shutdown: signals::Shutdown,
    (tx, rx): (
        &mpsc::UnboundedSender<MemberEvent>,
        &mut mpsc::UnboundedReceiver<MemberEvent>,
    ),
    reporter: &Reporter,
) -> Result<(Outcome, Option<signals::Stop>)> {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    let mut hold_until: Option<tokio::time::Instant> = None;
    let give_up = opts.deadline.map(|d| tokio::time::Instant::now() + d);
    loop {
        let next_restart = state.members.iter().filter_map(|m| m.restart_at).min();
        let mut ended = None;
        tokio::select! {
            biased;
            stop = shutdown.recv() => return Ok((Outcome::Interrupted, Some(stop))),
            pid = init_exit(state.watching.as_ref()) => {
                ended = state.on_target_gone(reporter, Some(pid));
            }
            batch = observer.next() => {
                let batch = batch.map_err(|e| Error::io("reading the BPF ring buffer", e))?;
                for i in state.on_batch(batch, reporter) {
                    if opts.on_oom == OnOom::Stop {
                        return Ok((Outcome::StoppedByOom, None));
                    }
                    schedule_restart(opts, &mut state.members[i]);
                }
            }
            ev = rx.recv() => {
                let ev = ev.ok_or_else(|| {
                    Error::io("the workers' channel", std::io::ErrorKind::BrokenPipe.into())
                })?;
                ended = state.on_member_event(ev, opts, reporter);
            }
            _ = tick.tick() => ended = on_tick(state, observer, tx, reporter)?,
            _ = sleep_until(next_restart.unwrap_or(far)), if next_restart.is_some() => {
                state.restart_due(tx, reporter)?;
            }
            _ = sleep_until(hold_until.unwrap_or(far)), if hold_until.is_some() => {
                ended = Some(Outcome::Completed);
            }
            _ = sleep_until(give_up.unwrap_or(far)), if give_up.is_some() => {
                ended = Some(Outcome::TimedOut);
            }
        }
        if let Some(outcome) = ended {
            return Ok((outcome, None));
        }
        if opts
            .stop_after_kills
            .is_some_and(|n| state.kills.total() >= n)
        {
            return Ok((Outcome::Completed, None));
        }
        let any_left = state.stressors().any(|m| m.alive || m.restart_at.is_some());
        if state.has_stressors() && !any_left && state.stressors().all(|m| m.oom_killed) {
            return Ok((Outcome::AllStressorsKilled, None));
        }
        if state.full_at.is_none() && state.full() {
            state.on_full(opts, reporter)?;
            hold_until = opts.hold.map(|hold| tokio::time::Instant::now() + hold);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Psi, SampleLine, ThrottleSample, pre_probe_cap, status_text};
    use crate::{
        stress::pressure::{LoopState, Metric, PressureSample},
        target::cgroup::Counters,
    };

    const MIB: u64 = 1 << 20;

    /// With `--pressure`, the status line says the goal and what the loop does, after the
    /// target's pressure.
    #[test]
    fn the_status_line_shows_the_pressure_goal() {
        let line = SampleLine {
            limit_bytes: Some(192 * MIB),
            stressors_held_bytes: 84 * MIB,
            stressors_charge_bytes: 84 * MIB,
            stressors_alive: 1,
            psi: Some(Psi {
                some_avg10: 19.4,
                full_avg10: 18.0,
                ..Psi::default()
            }),
            pressure: Some(PressureSample {
                goal_pct: 20.0,
                metric: Metric::Some,
                avg10: 19.4,
                recent_pct: Some(21.0),
                holding_bytes: 84 * MIB,
                cap_bytes: 150 * MIB,
                state: LoopState::Holding,
            }),
            ..SampleLine::empty(0)
        };
        let text = status_text(&line, Some(0.97), None);
        assert!(
            text.ends_with(
                "; pressure some 19.4% full 18.0%; goal some 20%: stressors at 84 MiB of 150 MiB \
                 allowed, holding"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_status_line_says_how_long_memory_high_held_the_tasks() {
        let line = |run_throttle: Option<ThrottleSample>| SampleLine {
            counters: Counters {
                usage_bytes: 64 * MIB,
                ..Counters::default()
            },
            limit_bytes: Some(256 * MIB),
            memory_high_bytes: Some(64 * MIB),
            run_high_events: Some(513),
            run_throttle,
            ..SampleLine::empty(100)
        };
        let held = ThrottleSample {
            episodes: 480,
            throttled_us: 12_345_678,
            max_us: 210_000,
            over_high_bytes: 0,
        };
        let text = status_text(&line(Some(held)), None, None);
        assert!(
            text.contains(
                ", memory.high 64 MiB (over it 513×, tasks held 12.3s (480×, longest 210ms)),"
            ),
            "{text}"
        );
        // Never held, or not known: the memory.high figures alone.
        for quiet in [None, Some(ThrottleSample::default())] {
            let text = status_text(&line(quiet), None, None);
            assert!(
                text.contains(", memory.high 64 MiB (over it 513×),"),
                "{text}"
            );
        }
    }

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
