//! Text mode: each [`Line`] as the sentences a person reads (some lines have none: their
//! news goes to stderr as diagnostics, or only matters to programs). Every text line is
//! rendered here from the same typed line JSON mode prints.

use std::time::Duration;

use super::{
    Clock,
    line::{
        AvailableHeld, AvailablePlan, CollateralLine, DomainKind, FirstBound, FullLine, KillLine,
        Line, MemberLine, Mode, Outcome, Plan, PlanDomain, SignalLine, Summary, ThrottleSample,
    },
    time_of_day,
};
use crate::{
    abi::names,
    explain::{Aftermath, Reaped, describe_pressure, who},
    probe::Status,
    size::{Bytes, SizeSpec, group, mib},
    spec::{Kind, Pattern},
    stress::{pressure::PressureSummary, radius},
    target::{cgroup::PeakScope, kube::Driver, workload::Workload},
};

/// The text lines of `line` (none for lines only programs read).
pub fn render(line: &Line<'_>, clock: &Clock) -> Vec<String> {
    match line {
        Line::OomKill(k) | Line::OomVictimExiting(k) => vec![kill(k, clock)],
        Line::OomCollateral(c) => vec![collateral(c, clock)],
        Line::OomReaped(r) => reaped(r).into_iter().collect(),
        Line::Kill(k) => vec![signal_kill(k, clock)],
        Line::Plan(p) => plan(p),
        Line::Restarted(m) => vec![restarted(m)],
        Line::Full(f) => vec![full(f)],
        Line::Summary(s) => summary(s),
        Line::ReplayPlan(p) => replay_plan(p),
        Line::ReplayResult(r) => replay_result(r),
        Line::Attached(_)
        | Line::Dropped(_)
        | Line::Metrics(_)
        | Line::End(_)
        | Line::Error(_)
        | Line::Started(_)
        | Line::Exited(_)
        | Line::OomKillsBeforeProbes(_)
        | Line::TargetGone(_)
        | Line::TargetFollowed(_)
        | Line::Sample(_) => Vec::new(),
    }
}

fn kib(value: Option<u64>) -> String {
    value.map_or_else(|| "?".to_owned(), |k| Bytes(k * 1024).to_string())
}

/// `12:00:00.123 OOM KILL …`: one line per kill.
fn kill(k: &KillLine, clock: &Clock) -> String {
    format!(
        "{} {}",
        time_of_day(clock.unix_ns(k.kill.ts_ns)),
        describe_kill(k)
    )
}

/// One line describing an OOM kill: who, where, what memory, then why.
pub fn describe_kill(k: &KillLine) -> String {
    let kill = &k.kill;
    let v = &kill.victim.victim;
    let what = match kill.kill_confirmed {
        Some(false) => "OOM VICTIM",
        _ => "OOM KILL",
    };
    let mine = match k.context.stressor {
        Some(true) => " [memstress stressor]",
        _ => "",
    };
    let mut line = format!(
        "{what} {}{mine} in {} [anon {}, file {}, shmem {}, oom_score_adj {}]: {}",
        named(
            &kill.victim.workload,
            v.task.pid.or(v.task.tid),
            v.task.comm.as_deref()
        ),
        v.cgroup.as_deref().unwrap_or("an unknown cgroup"),
        kib(v.memory.anon_rss_kib),
        kib(v.memory.file_rss_kib),
        kib(v.memory.shmem_rss_kib),
        v.task
            .oom_score_adj
            .map_or_else(|| "?".to_owned(), |a| a.to_string()),
        kill.reason,
    );
    if !kill.collateral.is_empty() {
        let names: Vec<String> = kill
            .collateral
            .iter()
            .map(|c| named(&c.workload, c.task.pid, c.task.comm.as_deref()))
            .collect();
        line.push_str(&format!(
            "; also killed, sharing its memory: {}",
            names.join(", ")
        ));
    }
    if let Some(pressure) = kill.pressure.as_ref().and_then(describe_pressure) {
        line.push_str(&format!(
            ". {}{}",
            pressure[..1].to_uppercase(),
            &pressure[1..]
        ));
    }
    if let Some(forecast) = &k.forecast {
        line.push_str(&format!(" [{}]", forecast.text()));
    }
    line
}

/// `shop/cart-7d9f/app (10205 java)` in a pod, `docker/web (10205 java)` in a container,
/// `10205 (java)` elsewhere.
pub fn named(workload: &Workload, pid: Option<u32>, comm: Option<&str>) -> String {
    match workload.label() {
        Some(label) => match (pid, comm) {
            (Some(pid), Some(comm)) => format!("{label} ({pid} {comm})"),
            _ => format!("{label} ({})", who(pid, comm)),
        },
        None => who(pid, comm),
    }
}

/// `12:00:00.123 KILL in /pod/ctr: killed 40 (sleep): SIGKILL from runc (pid 30) …`.
fn signal_kill(k: &SignalLine, clock: &Clock) -> String {
    let what = match k.kill.signal {
        crate::explain::kill::SignalName::Sigkill => "KILL",
        crate::explain::kill::SignalName::Sigterm => "TERM",
    };
    let mine = match k.context.stressor {
        Some(true) => " [memstress stressor]",
        _ => "",
    };
    let label = k
        .kill
        .victim
        .workload
        .label()
        .map_or_else(String::new, |l| format!(" {l}"));
    format!(
        "{} {what}{label}{mine} in {}: {}",
        time_of_day(clock.unix_ns(k.kill.ts_ns)),
        k.kill
            .victim
            .cgroup
            .as_deref()
            .unwrap_or("an unknown cgroup"),
        k.kill.why
    )
}

fn collateral(c: &CollateralLine, clock: &Clock) -> String {
    format!(
        "{} OOM KILL {} with victim {}: {}",
        time_of_day(clock.unix_ns(c.ts_ns)),
        named(
            &c.task.workload,
            c.task.task.pid,
            c.task.task.comm.as_deref()
        ),
        c.victim_tid,
        c.task.reason.text()
    )
}

/// A victim that simply exits is the normal case; the reaper stepping in is news.
fn reaped(r: &Reaped) -> Option<String> {
    let what = match r.what {
        Aftermath::Exited => return None,
        Aftermath::ReaperStarted => "the OOM reaper started on",
        Aftermath::ReaperFinished => "the OOM reaper freed the memory of",
        Aftermath::ReaperSkipped | Aftermath::Unknown => "the OOM reaper skipped",
    };
    Some(format!(
        "             {what} {} {:.0} ms after the kill",
        who(r.pid, r.comm.as_deref()),
        r.after_ms
    ))
}

fn restarted(m: &MemberLine) -> String {
    format!(
        "restarted {} {} as pid {} after its OOM kill (restart {})",
        m.name,
        m.index,
        m.pid.unwrap_or(0),
        m.restarts.unwrap_or(0)
    )
}

fn kind_text(kind: Kind) -> &'static str {
    match kind {
        Kind::Anon => "anonymous memory",
        Kind::Shmem => "shared memory",
        Kind::File => "page cache",
    }
}

fn full(f: &FullLine) -> String {
    let who = if f.stressors_oom_killed == 0 {
        "stressors hold".to_owned()
    } else {
        format!(
            "as full as the limit allows ({} stressor(s) OOM-killed): the survivors hold",
            f.stressors_oom_killed
        )
    };
    let pattern = match f.pattern {
        Pattern::Hold => "",
        Pattern::KeepDirty => ", rewriting it continuously",
    };
    format!(
        "full: {who} {} of {}{pattern}; the stressors were charged {}{}",
        Bytes(f.held_bytes),
        kind_text(f.kind),
        Bytes(f.stressors_charge_bytes),
        match f.charged_bytes {
            Some(c) if !close(c, f.stressors_charge_bytes) =>
                format!(" (the cgroup's usage rose by {})", Bytes(c)),
            _ => String::new(),
        }
    )
}

/// The plan, before anything starts: the target, what will be held, who holds it, and the
/// predicted OOM ranking when it crosses the limit.
fn plan(plan: &Plan) -> Vec<String> {
    let mut out = vec![plan_target(plan)];
    if let Some(sc) = &plan.stresschaos {
        out.push(format!(
            "from {} ({}): memory stressor, {} workers, size {}",
            sc.label(),
            sc.file.display(),
            sc.workers,
            sc.size_text
        ));
    }
    out.extend(plan.notes.iter().map(|note| format!("note: {note}")));
    out.push(plan_amount(plan));
    out.push(plan_domain(
        &plan.domain,
        &plan.target.path,
        plan.available.as_ref(),
    ));
    if let Some(t) = &plan.throttle {
        out.push(format!(
            "throttle: memory.high {} ({}), was {}; written back when the run ends, a \
             SIGKILL of memstress included",
            Bytes(t.high_bytes),
            t.from,
            t.original_bytes
                .map_or_else(|| "max".to_owned(), |b| Bytes(b).to_string())
        ));
    }
    if let Some(p) = &plan.pressure
        && p.ceiling_bytes < p.limit_bytes
    {
        out.push(format!(
            "pressure: the stressors squeeze the rest of the target under memory.high ({}), \
             where reclaim and throttling begin, and keep clear of memory.max",
            Bytes(p.ceiling_bytes)
        ));
    }
    if plan.mode == Mode::Throttle {
        return out;
    }
    let u = &plan.stressor_user;
    out.push(format!(
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
                format!("{}. {who}: {} points", i + 1, group(r.points.into()))
            })
            .collect();
        let domain = if plan.domain.kind == DomainKind::Node {
            format!("of a global OOM ({} processes)", p.ranking.len())
        } else {
            format!("in {}", p.domain)
        };
        out.push(format!(
            "predicted OOM ranking {domain} (totalpages {}, from /proc now): {}{}",
            group(p.totalpages.into()),
            top.join("; "),
            if p.exempt.is_empty() {
                String::new()
            } else {
                format!(
                    "; exempt ({}): {}",
                    if plan.domain.kind == DomainKind::Node {
                        "oom_score_adj -1000, or init"
                    } else {
                        "oom_score_adj -1000"
                    },
                    p.exempt.join(", ")
                )
            }
        ));
    }
    out
}

/// The plan's domain line: `OOM domain: …; first: …` (`available`: a `--fill-to available=`
/// run, which holds the node at its goal rather than going on).
fn plan_domain(domain: &PlanDomain, target: &str, available: Option<&AvailablePlan>) -> String {
    let node = format!(
        "memory.available {}{}, MemAvailable {}",
        Bytes(domain.node_available_bytes),
        match domain.eviction_after_bytes {
            Some(_) => format!(
                " (eviction below {})",
                Bytes(domain.eviction_threshold_bytes)
            ),
            None => " (no eviction threshold)".to_owned(),
        },
        Bytes(domain.node_mem_available_bytes)
    );
    let what = match (domain.kind, &domain.cgroup) {
        (DomainKind::Memcg, Some(cgroup)) => format!(
            "memcg {cgroup} (limit {}, {} left); the node: {node}",
            Bytes(domain.limit_bytes.unwrap_or(0)),
            Bytes(domain.headroom_bytes.unwrap_or(0))
        ),
        _ => format!("the node ({}): {node}", radius::why_node(domain, target)),
    };
    let first = match (domain.first, available) {
        (FirstBound::Limit, Some(a)) => format!(
            "the limit comes first: an OOM kill in {} before the node's memory.available gets \
             to {}",
            domain.cgroup.as_deref().unwrap_or("the domain"),
            mib(a.goal_bytes)
        ),
        (FirstBound::Eviction, Some(a)) => format!(
            "the eviction threshold comes first: held at {} ± {}, memory.available is at or \
             below {} (the kubelet evicts); no global OOM: MemAvailable is kept above {}",
            mib(a.goal_bytes),
            mib(a.deadband_bytes),
            mib(domain.eviction_threshold_bytes),
            Bytes(a.floor_bytes)
        ),
        (_, Some(a)) => format!(
            "held at {} ± {}, memory.available stays above the eviction threshold ({}) and \
             within every bound",
            mib(a.goal_bytes),
            mib(a.deadband_bytes),
            mib(domain.eviction_threshold_bytes)
        ),
        (FirstBound::Limit, None) => format!(
            "the limit comes first (an OOM kill in {})",
            domain.cgroup.as_deref().unwrap_or("the domain")
        ),
        (FirstBound::Eviction, None) => format!(
            "the eviction threshold comes first (after {}: the kubelet evicts), then a global OOM",
            Bytes(domain.eviction_after_bytes.unwrap_or(0))
        ),
        (FirstBound::NodeOom, None) => "a global OOM comes first".to_owned(),
        (FirstBound::Neither, None) => {
            format!("{} stays within every bound", Bytes(domain.run_bytes))
        }
    };
    let allowed = if domain.allow_node_oom && radius::reaches_node(domain) {
        "; --allow-node-oom: the kill may take any process on the node"
    } else {
        ""
    };
    format!("OOM domain: {what}; {first}{allowed}")
}

/// `target pod shop/web-0 (…), container app (…), Burstable, systemd driver: /kubepods…
/// (cgroup v2, limit 256 MiB); usage …, working set …`.
fn plan_target(plan: &Plan) -> String {
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
                Driver::Systemd => "systemd",
                Driver::Cgroupfs => "cgroupfs",
            }
        )
    });
    format!(
        "target {who}{} (cgroup v{}, {limit}{created}); usage {}, working set {}",
        t.path,
        t.version,
        Bytes(t.usage_bytes),
        Bytes(t.working_set_bytes)
    )
}

/// `stress 2 × 96 MiB = 192 MiB of anonymous memory (…), held for 10m; on OOM: report`.
fn plan_amount(plan: &Plan) -> String {
    let per = shares_text(&plan.bytes_per_worker);
    let hold = plan.hold_s.map_or_else(
        || "until interrupted".to_owned(),
        |s| format!("for {}", duration_text(s)),
    );
    let ramp = plan.ramp_s.map_or_else(String::new, |s| {
        format!(", ramped over {}", duration_text(s))
    });
    let kind = kind_text(plan.kind);
    if plan.mode == Mode::Throttle {
        return format!("no stressors (--throttle alone): held {hold}");
    }
    if let Some(p) = &plan.pressure {
        let hold = plan.hold_s.map_or_else(
            || "until interrupted".to_owned(),
            |s| format!("for {} once reached", duration_text(s)),
        );
        return format!(
            "hold memory.pressure {} avg10 at {}% with {} stressor(s) of {kind}, moved by a \
             closed loop between nothing and {} (now: the {} limit of {}, less a {} margin, \
             less what the domain cannot reclaim), {hold}; on OOM: {}",
            p.metric.name(),
            p.goal_pct,
            plan.workers,
            Bytes(p.cap_bytes),
            Bytes(p.limit_bytes),
            p.limit_from,
            Bytes(p.margin_bytes),
            plan.on_oom
        );
    }
    let what = match (plan.fill_to_bytes, &plan.available) {
        (_, Some(a)) => format!(
            "keep the node's memory.available (as the kubelet computes it: MemTotal − the root \
             cgroup's working set; now {}) at {} ± {} ({}) with {} {kind}: {} to start, never \
             taking the kernel's MemAvailable (now {}{}) below {}",
            mib(plan.domain.node_available_bytes),
            mib(a.goal_bytes),
            mib(a.deadband_bytes),
            a.from,
            match plan.workers {
                1 => "1 stressor of".to_owned(),
                n => format!("{n} stressors of"),
            },
            Bytes(plan.total_bytes),
            mib(plan.domain.node_mem_available_bytes),
            if a.gap_bytes > 0 {
                format!(
                    "; the kubelet's figure is {} above it: kernel memory",
                    Bytes(a.gap_bytes)
                )
            } else {
                String::new()
            },
            Bytes(a.floor_bytes)
        ),
        (Some(goal), None) => format!(
            "keep the working set at {} ({}) with {}: {} to start",
            Bytes(goal),
            plan.size_from,
            kind,
            Bytes(plan.total_bytes),
        ),
        (None, None) => format!(
            "stress {per} = {} of {kind} ({}: {}; it is the cgroup's charge, each stressor's \
             own footprint of {} included)",
            Bytes(plan.total_bytes),
            match &plan.stresschaos {
                Some(sc) if plan.size == sc.size_text =>
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
    let held = if plan.available.is_some() { ";" } else { "," };
    format!(
        "{what}{ramp}{held} held {hold}; on OOM: {}{}",
        plan.on_oom,
        if plan.crosses_limit {
            "; this crosses the limit: expect OOM kills"
        } else {
            ""
        }
    )
}

/// `pressure some avg10 kept at 19.8% (17.2-23.1%) from 12.3s, goal 20%`; at the end of
/// the summary's first line.
fn pressure_kept(p: &PressureSummary) -> String {
    let what = format!("pressure {} avg10", p.metric.name());
    let mut text = match (p.reached_ms, p.avg10_mean, p.avg10_min, p.avg10_max) {
        (Some(ms), Some(mean), Some(lo), Some(hi)) => format!(
            "{what} kept at {mean:.1}% ({lo:.1}-{hi:.1}%) from {:.1}s, goal {}%",
            ms as f64 / 1000.0,
            p.goal_pct
        ),
        _ => format!("{what} never reached the goal of {}%", p.goal_pct),
    };
    if p.out_of_reach {
        text.push_str(" (out of reach at the stressors' cap)");
    }
    if p.back_offs > 0 {
        text.push_str(&format!(", backed off {}×", p.back_offs));
    }
    text
}

/// "3 × 4 MiB", or "20 × 208 KiB + 80 × 204 KiB": equal neighbours grouped, so that the line
/// stays short whatever the number of workers.
pub fn shares_text(shares: &[u64]) -> String {
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

fn summary(s: &Summary) -> Vec<String> {
    let mut out = vec![summary_text(s)];
    if let Some(f) = s.forecast.as_ref().filter(|f| f.kills > 0) {
        out.push(f.text());
    }
    if s.follows > 0 {
        out.push(format!(
            "followed the target {} time(s) after it disappeared; it ended in {}",
            s.follows, s.target
        ));
    }
    out
}

/// `node memory.available held at 120 MiB (goal; 118 MiB to 122 MiB once there, 121 MiB at the
/// end; MemAvailable at least 70 MiB)`.
fn available_held_text(a: &AvailableHeld) -> String {
    let held = match (a.min_bytes, a.max_bytes) {
        (Some(lo), Some(hi)) => format!("{} to {} once there", mib(lo), mib(hi)),
        _ => "never reached".to_owned(),
    };
    let end = a
        .end_bytes
        .map_or_else(String::new, |e| format!(", {} at the end", mib(e)));
    let floor = if a.at_floor_ms > 0 {
        format!(
            "; held back {:.1}s by the MemAvailable floor of {}",
            a.at_floor_ms as f64 / 1000.0,
            Bytes(a.floor_bytes)
        )
    } else {
        String::new()
    };
    let mem_available = a.min_mem_available_bytes.map_or_else(String::new, |m| {
        format!("; MemAvailable at least {}", mib(m))
    });
    format!(
        "node memory.available held at {} (goal; {held}{end}{mem_available}{floor})",
        mib(a.goal_bytes)
    )
}

/// The summary as one line of text.
pub fn summary_text(s: &Summary) -> String {
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
    let what = match (&s.pressure, s.fill_to_bytes, &s.available) {
        (Some(p), _, _) => pressure_kept(p),
        (None, _, Some(a)) => available_held_text(a),
        (None, Some(goal), None) => format!("working set kept at {}", Bytes(goal)),
        (None, None, None) => format!("requested {}", Bytes(s.requested_bytes)),
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
    let throttled = s
        .throttled
        .as_ref()
        .and_then(ThrottleSample::text)
        .map_or_else(String::new, |t| format!("; tasks held by memory.high {t}"));
    format!(
        "summary ({outcome}): {what}, {charged}; peak usage {}{limit}{kernel_peak}{throttled}; OOM \
         kills: {} of stressors, {} of others{outside}; restarts {}; fill {}, hold {}, total {}{}",
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
pub fn close(a: u64, b: u64) -> bool {
    let slack = (a.max(b) / 50).max(crate::size::page_size() * 64 * nr_cpus());
    a.abs_diff(b) <= slack
}

/// Online CPUs (each keeps its own charge stock).
fn nr_cpus() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).map_or(1, |n| n.max(1))
}

/// What attached, for the line that says a watch started: `tp_btf mark_victim, …`.
pub fn attached(status: &[Status]) -> String {
    status
        .iter()
        .filter(|s| s.attached)
        .map(|s| format!("{} {}", s.kind, s.hook))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line per probe, in columns as wide as their widest entry: kind, hook, state, and
/// what it contributes (with why it did not attach). `watch --explain-probes`.
pub fn explain_probes(status: &[Status]) -> Vec<String> {
    let state = |s: &Status| {
        if s.attached {
            "attached"
        } else {
            "NOT attached"
        }
    };
    let kind_w = status
        .iter()
        .map(|s| s.kind.name().len())
        .max()
        .unwrap_or(0);
    let hook_w = status.iter().map(|s| s.hook.len()).max().unwrap_or(0);
    let state_w = status.iter().map(|s| state(s).len()).max().unwrap_or(0);
    status
        .iter()
        .map(|s| {
            let why = s
                .error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            format!(
                "{:<kind_w$}  {:<hook_w$}  {:<state_w$}  {}{why}",
                s.kind.name(),
                s.hook,
                state(s),
                s.purpose
            )
        })
        .collect()
}

/// Warns once on stderr for each program that did not attach and each kernel fact this
/// kernel lacks; a kernel without trampolines refuses fentry/fexit for one reason, said once.
pub fn warn_degraded(status: &[Status], missing: &[String]) {
    for s in status
        .iter()
        .filter(|s| !s.attached && !s.kind.is_trampoline())
    {
        tracing::warn!(
            "probe {} {} not attached ({}); without it: {}",
            s.kind,
            s.hook,
            s.error.as_deref().unwrap_or("unknown error"),
            s.purpose
        );
    }
    let refused: Vec<&Status> = status
        .iter()
        .filter(|s| !s.attached && s.kind.is_trampoline())
        .collect();
    if let Some(first) = refused.first() {
        let hooks: Vec<String> = refused
            .iter()
            .map(|s| format!("{} {}", s.kind, s.hook))
            .collect();
        let throttle = [names::PROG_THROTTLE_ENTRY, names::PROG_THROTTLE_EXIT];
        let (throttle, oom): (Vec<&Status>, Vec<&Status>) = refused
            .iter()
            .partition(|s| throttle.contains(&s.program.as_str()));
        let mut without = Vec::new();
        if !oom.is_empty() {
            without.push(
                "points come from the kernel's formula applied to what mark_victim reads, and \
                 the domain from the memcg counters",
            );
        }
        if !throttle.is_empty() {
            without.push(
                "how long memory.high throttling held tasks is unknown (run_throttle is null)",
            );
        }
        tracing::info!(
            "{} not available on this kernel ({}): {}",
            hooks.join(", "),
            first.error.as_deref().unwrap_or("unknown error"),
            without.join("; ")
        );
    }
    if !missing.is_empty() {
        tracing::warn!(
            "this kernel lacks {}; those figures are reported as unknown (null)",
            missing.join(", ")
        );
    }
}

/// `replay`: the verdict in one line, the tasks, the notes.
fn replay_result(r: &crate::replay::reproduce::ReplayResult) -> Vec<String> {
    use crate::replay::reproduce::ChosenRole;
    let mut lines = Vec::new();
    let chosen = match &r.chosen {
        None => "no OOM kill came".to_owned(),
        Some(c) => format!(
            "the kernel chose {} ({}){}{}",
            c.pid,
            c.comm,
            c.points
                .map(|p| format!(", {p} points"))
                .unwrap_or_default(),
            match (c.role, c.row_pid) {
                (ChosenRole::Task, Some(row)) => format!(", standing for row {row}"),
                (ChosenRole::Allocation, _) => ", the replay's filler".to_owned(),
                _ => ", not one of the replay's".to_owned(),
            }
        ),
    };
    lines.push(format!(
        "replay of report {} (line {}): {}: {chosen}; the report's victim was {} ({}). \
         Scale {}, limit {}.",
        r.report,
        r.line,
        if r.same_victim {
            "SAME VICTIM"
        } else {
            "DIFFERENT VICTIM"
        },
        r.expected.pid,
        r.expected.comm,
        r.scale,
        Bytes(r.limit_bytes),
    ));
    lines.push(format!(
        "  {:>8}  {:<15}  {:>8}  {:>10}  {:>5}  {:>9}  {:>9}",
        "row pid", "comm", "pid", "holds", "adj", "expected", "kernel"
    ));
    for t in &r.tasks {
        lines.push(format!(
            "  {:>8}  {:<15}  {:>8}  {:>10}  {:>5}  {:>9}  {:>9}",
            t.row_pid,
            t.comm,
            t.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            Bytes(t.bytes).to_string(),
            t.oom_score_adj,
            t.expected_points,
            t.kernel_points
                .map_or_else(|| "-".to_owned(), |p| p.to_string()),
        ));
    }
    if let Some(reason) = &r.reason {
        lines.push(format!("  Why: {reason}."));
    }
    for note in &r.notes {
        lines.push(format!("  Note: {note}."));
    }
    lines
}

/// `replay --dry-run`: the report in a few lines, then the ranking.
fn replay_plan(p: &crate::replay::ReplayPlan) -> Vec<String> {
    let r = &p.report;
    let mut lines = Vec::new();
    let domain = match (&r.oom_memcg, r.limit_bytes) {
        (Some(cg), Some(limit)) => format!("memcg {cg} (limit {})", Bytes(limit)),
        (None, Some(limit)) => format!("a memcg (limit {})", Bytes(limit)),
        _ => "the node (global OOM)".to_owned(),
    };
    lines.push(format!(
        "OOM report at line {}{}{}: {} (pid {}) invoked the OOM killer in {}, gfp_mask={} \
         order={}; the kernel killed {} ({}).",
        r.line,
        r.time
            .as_deref()
            .map(|t| format!(" [{t}]"))
            .unwrap_or_default(),
        r.kernel
            .as_deref()
            .map(|k| format!(", kernel {k}"))
            .unwrap_or_default(),
        r.trigger.comm,
        r.trigger
            .pid
            .map_or_else(|| "?".to_owned(), |p| p.to_string()),
        domain,
        r.trigger.gfp_mask,
        r.trigger.order,
        r.victim.pid,
        r.victim.comm,
    ));
    lines.push(format!(
        "  totalpages {} ({}); page size {}",
        p.totalpages, p.totalpages_from, p.page_size
    ));
    lines.push(format!("  {:>10}  {:>12}  comm", "pid", "points"));
    for (i, t) in p.ranking.iter().enumerate() {
        let mark = if t.pid == r.victim.pid {
            "  <- killed"
        } else {
            ""
        };
        lines.push(format!(
            "  {:>10}  {:>12}  {}{mark}{}",
            t.pid,
            t.points,
            t.comm,
            if i == 0 { "  (formula's first)" } else { "" }
        ));
    }
    for t in &p.skipped {
        lines.push(format!(
            "  {:>10}  {:>12}  {}  (oom_score_adj -1000: never picked)",
            t.pid, "-", t.comm
        ));
    }
    lines.push(match (&p.reason, p.agrees) {
        (_, true) => "  The kernel's choice is the formula's first.".to_owned(),
        (Some(reason), false) => {
            format!("  The kernel's choice is not the formula's first: {reason}.")
        }
        (None, false) => "  The kernel's choice is not the formula's first.".to_owned(),
    });
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stress::pressure::Metric;

    #[test]
    fn says_how_a_pressure_goal_was_kept() {
        let mut p = PressureSummary {
            goal_pct: 20.0,
            metric: Metric::Some,
            reached_ms: Some(12_300),
            avg10_min: Some(17.2),
            avg10_max: Some(23.1),
            avg10_mean: Some(19.8),
            out_of_reach: false,
            back_offs: 0,
        };
        assert_eq!(
            pressure_kept(&p),
            "pressure some avg10 kept at 19.8% (17.2-23.1%) from 12.3s, goal 20%"
        );
        p.back_offs = 2;
        assert!(pressure_kept(&p).ends_with(", backed off 2×"));
        let never = PressureSummary {
            reached_ms: None,
            avg10_min: None,
            avg10_max: None,
            avg10_mean: None,
            out_of_reach: true,
            back_offs: 0,
            ..p
        };
        assert_eq!(
            pressure_kept(&never),
            "pressure some avg10 never reached the goal of 20% (out of reach at the stressors' \
             cap)"
        );
    }
}
