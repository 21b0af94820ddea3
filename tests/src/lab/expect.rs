//! Checking a scenario's expectations against what was recorded.

use memstress::{
    explain::{PointsFrom, Ranked, Source, who},
    output::line::{KillLine, Line},
    size::{Bytes, SizeSpec},
    stress::pressure::Metric,
};
use serde_json::Value;

use super::{
    lines::{ScoredKill, forecast_scores, replay_results, said, scored_kills, watch_kills},
    scenario::{Expect, Scenario},
};

/// (start, end) of step `index` in ms; end is the scenario's last event when it never ended.
fn step_window(events: &[Value], index: usize) -> Option<(u64, u64)> {
    let of = |phase: &str| {
        events
            .iter()
            .find(|e| e["type"] == "step" && e["index"] == index && e["phase"] == phase)
            .and_then(|e| e["t_ms"].as_u64())
    };
    let last = events.iter().filter_map(|e| e["t_ms"].as_u64()).max()?;
    Some((of("start")?, of("end").unwrap_or(last)))
}

fn samples<'a>(events: &'a [Value], cgroup: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    events
        .iter()
        .filter(move |e| e["type"] == "sample" && e["cgroup"] == cgroup)
}

fn comm(kill: &KillLine) -> String {
    kill.kill
        .victim
        .victim
        .task
        .comm
        .clone()
        .unwrap_or_else(|| "?".to_owned())
}

/// Whether the first occurrences of `wanted` (items of `seen` that are in `wanted`) come in
/// the order of `wanted`, all of them present.
fn in_order(seen: &[String], wanted: &[String]) -> bool {
    let mut firsts: Vec<&String> = Vec::new();
    for s in seen {
        if wanted.contains(s) && !firsts.contains(&s) {
            firsts.push(s);
        }
    }
    firsts.len() == wanted.len() && firsts.iter().zip(wanted).all(|(a, b)| *a == b)
}

/// Checks one expectation: (what, expected, actual, passed).
pub fn check(
    expect: &Expect,
    events: &[Value],
    scenario: &Scenario,
) -> (String, String, String, bool) {
    let said = watch_kills(events);
    let kills: Vec<&KillLine> = said.iter().map(|(_, k)| k).collect();
    match expect {
        Expect::UsageRise {
            cgroup,
            step,
            size,
            tolerance_pct,
        } => {
            let want = SizeSpec::parse_bytes(size).unwrap_or(0);
            let name = format!("{cgroup}'s usage rises by {size} during step {step}");
            let expected = format!("{} ± {tolerance_pct}%", Bytes(want));
            let Some((start, end)) = step_window(events, *step) else {
                return (name, expected, "step did not run".into(), false);
            };
            let all: Vec<&Value> = samples(events, cgroup).collect();
            let base = all
                .iter()
                .rfind(|s| s["t_ms"].as_u64() <= Some(start))
                .or(all.first())
                .and_then(|s| s["usage_bytes"].as_u64());
            let peak = all
                .iter()
                .filter(|s| s["t_ms"].as_u64().is_some_and(|t| t >= start && t <= end))
                .filter_map(|s| s["usage_bytes"].as_u64())
                .max();
            match (base, peak) {
                (Some(base), Some(peak)) => {
                    let rise = peak.saturating_sub(base);
                    let ok =
                        (rise as f64 - want as f64).abs() <= want as f64 * tolerance_pct / 100.0;
                    let actual = format!(
                        "{} ({:+.2}%)",
                        Bytes(rise),
                        (rise as f64 / want.max(1) as f64 - 1.0) * 100.0
                    );
                    (name, expected, actual, ok)
                }
                _ => (name, expected, "no samples".into(), false),
            }
        }
        Expect::Kills { min, max, step } => {
            let times: Vec<u64> = said.iter().filter_map(|(t, _)| *t).collect();
            let (n, name) = match step {
                Some(s) => {
                    let window = step_window(events, *s);
                    let n = times
                        .iter()
                        .filter(|t| window.is_some_and(|(a, b)| **t >= a && **t <= b))
                        .count();
                    (n, format!("OOM kills during step {s}"))
                }
                None => (kills.len(), "OOM kills".to_owned()),
            };
            let expected = match (min, max) {
                (Some(a), Some(b)) if a == b => format!("{a}"),
                (Some(a), Some(b)) => format!("{a} to {b}"),
                (Some(a), None) => format!("at least {a}"),
                (None, Some(b)) => format!("at most {b}"),
                (None, None) => "any".into(),
            };
            let ok = min.is_none_or(|m| n >= m as usize) && max.is_none_or(|m| n <= m as usize);
            (name, expected, n.to_string(), ok)
        }
        Expect::Victims { comms } => {
            let seen: Vec<String> = kills.iter().map(|k| comm(k)).collect();
            let ok = !seen.is_empty() && seen.iter().all(|c| comms.contains(c));
            (
                "every victim is one of".into(),
                comms.join(", "),
                dedup(&seen).join(", "),
                ok,
            )
        }
        Expect::KillOrder { comms } => {
            let seen: Vec<String> = kills.iter().map(|k| comm(k)).collect();
            (
                "victims die in this order".into(),
                comms.join(" → "),
                dedup(&seen).join(" → "),
                in_order(&seen, comms),
            )
        }
        Expect::NeverKilled { comms } => {
            let hit: Vec<String> = kills
                .iter()
                .map(|k| comm(k))
                .filter(|c| comms.contains(c))
                .collect();
            (
                "never killed".into(),
                comms.join(", "),
                if hit.is_empty() {
                    "none of them killed".into()
                } else {
                    format!("killed: {}", dedup(&hit).join(", "))
                },
                hit.is_empty(),
            )
        }
        Expect::PredictedOrder { step, comms } => {
            let ranking: Vec<String> = said_in(events, *step)
                .filter_map(|line| match line {
                    Line::Plan(plan) => plan.into_owned().predicted_oom,
                    _ => None,
                })
                .flat_map(|prediction| prediction.ranking)
                .map(|r| r.comm.unwrap_or_else(|| "?".to_owned()))
                .collect();
            (
                format!("step {step}'s plan predicts this order"),
                comms.join(" → "),
                if ranking.is_empty() {
                    "no prediction".into()
                } else {
                    ranking.join(" → ")
                },
                in_order(&ranking, comms),
            )
        }
        Expect::ExplainedKills => {
            // A replay's reproductions happen outside the lab's cgroups, where the watch does
            // not look.
            let dmesg: Vec<(u64, String)> = events
                .iter()
                .filter(|e| e["type"] == "dmesg_kill" && e["replay_step"].is_null())
                .map(|e| {
                    (
                        e["pid"].as_u64().unwrap_or(0),
                        e["comm"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect();
            let mut problems = Vec::new();
            for k in &kills {
                let tid = k.kill.victim.victim.task.tid.map_or(0, u64::from);
                if !dmesg.iter().any(|(p, c)| *p == tid && *c == comm(k)) {
                    problems.push(format!("{tid} not in dmesg"));
                }
                if k.kill.why.is_empty() {
                    problems.push(format!("{tid} has no why"));
                }
                let kernel_ranked = k.kill.candidates.iter().any(|c| c.source == Source::Kernel);
                if !k.kill.group_kill && !kernel_ranked {
                    problems.push(format!("{tid} has no kernel-sourced candidates"));
                }
            }
            if dmesg.len() != kills.len() {
                problems.push(format!(
                    "{} dmesg kills, {} reported",
                    dmesg.len(),
                    kills.len()
                ));
            }
            (
                "every kill is in dmesg, and explained".into(),
                format!(
                    "{} kill(s), each with a why and kernel-read candidates",
                    dmesg.len()
                ),
                if problems.is_empty() {
                    "yes".into()
                } else {
                    problems.join("; ")
                },
                problems.is_empty() && !kills.is_empty(),
            )
        }
        Expect::AppRestarts { app, min } => {
            let n = events
                .iter()
                .filter(|e| {
                    e["type"] == "app" && e["name"] == app.as_str() && e["event"] == "restarted"
                })
                .count();
            (
                format!("{app} is restarted"),
                format!("at least {min} time(s)"),
                n.to_string(),
                n >= *min as usize,
            )
        }
        Expect::StepOutcome { step, outcome } => {
            let outcome_word = said_in(events, *step).find_map(|line| match line {
                Line::Summary(summary) => serde_json::to_value(summary.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned)),
                _ => None,
            });
            let exit = events
                .iter()
                .find(|e| e["type"] == "step" && e["index"] == *step && e["phase"] == "end")
                .map(|e| e["exit_code"].to_string());
            let actual = outcome_word.or(exit).unwrap_or_else(|| "no outcome".into());
            (
                format!("step {step}'s run ends"),
                outcome.clone(),
                actual.clone(),
                actual == *outcome,
            )
        }
        Expect::WorkingSetFraction { cgroup, step, max } => {
            let name = format!("{cgroup}'s working set at the end of step {step}");
            let Some((_, end)) = step_window(events, *step) else {
                return (
                    name,
                    format!("≤ {max} of usage"),
                    "step did not run".into(),
                    false,
                );
            };
            let last = samples(events, cgroup)
                .filter(|s| s["t_ms"].as_u64() <= Some(end))
                .last();
            match last {
                Some(s) => {
                    let usage = s["usage_bytes"].as_u64().unwrap_or(0);
                    let ws = s["working_set_bytes"].as_u64().unwrap_or(0);
                    let frac = ws as f64 / usage.max(1) as f64;
                    (
                        name,
                        format!("≤ {:.0}% of usage", max * 100.0),
                        format!("{} of {} ({:.0}%)", Bytes(ws), Bytes(usage), frac * 100.0),
                        frac <= *max,
                    )
                }
                None => (name, format!("≤ {max}"), "no samples".into(), false),
            }
        }
        Expect::KernelPoints { tolerance_pct } => kernel_points(events, &kills, *tolerance_pct),
        Expect::HighEvents { cgroup, step, min } => high_events(events, cgroup, *step, *min),
        Expect::MemoryHighRestored {
            cgroup,
            step,
            size,
            within,
        } => memory_high_restored(
            events,
            cgroup,
            *step,
            SizeSpec::parse_bytes(size).unwrap_or(0),
            within.unwrap_or(std::time::Duration::from_secs(2)),
        ),
        Expect::UsageAtMost { cgroup, step, max } => {
            let max_bytes = SizeSpec::parse_bytes(max).unwrap_or(0);
            let name = format!("{cgroup}'s usage during step {step}");
            let expected = format!("at most {}", Bytes(max_bytes));
            let peak = step_window(events, *step).and_then(|(start, end)| {
                samples(events, cgroup)
                    .filter(|s| s["t_ms"].as_u64().is_some_and(|t| t >= start && t <= end))
                    .filter_map(|s| s["usage_bytes"].as_u64())
                    .max()
            });
            match peak {
                Some(peak) => (
                    name,
                    expected,
                    format!("peak {}", Bytes(peak)),
                    peak <= max_bytes,
                ),
                None => (name, expected, "no samples".into(), false),
            }
        }
        Expect::PsiSome {
            cgroup,
            step,
            min_avg10,
        } => {
            let name = format!("{cgroup}'s memory.pressure some avg10 during step {step}");
            let expected = format!("reaches {min_avg10}%");
            let peak = step_window(events, *step).and_then(|(start, end)| {
                samples(events, cgroup)
                    .filter(|s| s["t_ms"].as_u64().is_some_and(|t| t >= start && t <= end))
                    .filter_map(|s| s["psi_some_avg10"].as_f64())
                    .reduce(f64::max)
            });
            match peak {
                Some(peak) => (
                    name,
                    expected,
                    format!("peak {peak:.2}%"),
                    peak >= *min_avg10,
                ),
                None => (name, expected, "no memory.pressure readings".into(), false),
            }
        }
        Expect::ThrottledTime {
            run,
            step,
            min_psi_share,
        } => throttled_time(events, *run, *step, *min_psi_share),
        Expect::PsiHeld {
            cgroup,
            step,
            metric,
            goal,
            tolerance,
            for_,
        } => psi_held(
            events,
            cgroup,
            *step,
            *metric,
            (*goal, *tolerance),
            for_.as_millis() as u64,
        ),
        Expect::ReplaySameVictim { step } => replay_same_victim(events, *step),
        Expect::PlanFirst { step, first } => {
            let said: Vec<String> = said_in(events, *step)
                .filter_map(|line| match line {
                    Line::Plan(plan) => Some(
                        serde_json::to_value(plan.domain.first)
                            .ok()?
                            .as_str()?
                            .to_owned(),
                    ),
                    _ => None,
                })
                .collect();
            (
                format!("step {step}'s plan says what comes first"),
                first.clone(),
                if said.is_empty() {
                    "no plan".into()
                } else {
                    said.join(", ")
                },
                said.len() == 1 && said[0] == *first,
            )
        }
        Expect::NodeAvailableAtMost { step, max } => node_available_bound(events, *step, max, true),
        Expect::NodeAvailableAtLeast { step, min } => {
            node_available_bound(events, *step, min, false)
        }
        Expect::NodeAvailableHeld {
            step,
            size,
            within,
            duration,
        } => node_available_held(events, *step, size, within, *duration),
        Expect::NodeAvailableAgrees { step, tolerance } => {
            node_available_agrees(events, *step, tolerance)
        }
        Expect::Forecast {
            step,
            min_hit_pct,
            min_median_lead_ms,
            max_eta_error_pct,
        } => forecast(
            events,
            *step,
            *min_hit_pct,
            *min_median_lead_ms,
            *max_eta_error_pct,
        ),
        Expect::GroupKilled { cgroup } => {
            let apps: Vec<u64> = events
                .iter()
                .filter(|e| {
                    e["type"] == "app" && e["event"] == "started" && e["cgroup"] == cgroup.as_str()
                })
                .filter_map(|e| e["pid"].as_u64())
                .collect();
            let killed: Vec<u64> = kills
                .iter()
                .filter_map(|k| k.kill.victim.victim.task.pid.map(u64::from))
                .collect();
            let missing: Vec<u64> = apps
                .iter()
                .copied()
                .filter(|p| !killed.contains(p))
                .collect();
            let group = kills.iter().filter(|k| k.kill.group_kill).count();
            let members = scenario.apps.iter().filter(|a| &a.cgroup == cgroup).count();
            (
                format!("one OOM kills everything in {cgroup} (memory.oom.group)"),
                format!("all {members} app(s) killed and reported, group kills reported"),
                format!(
                    "{} of {} apps reported killed; {group} group kill(s)",
                    apps.len() - missing.len(),
                    apps.len()
                ),
                missing.is_empty() && !apps.is_empty() && group >= 1,
            )
        }
    }
}

/// `high_events`: the lab's readings of `memory.events` `high` over the step, and the run's
/// own account (`run_high_events` of its last `sample` line) when the step is a run.
fn high_events(
    events: &[Value],
    cgroup: &str,
    step: usize,
    min: u64,
) -> (String, String, String, bool) {
    let name = format!("{cgroup}'s memory.events high rises during step {step}");
    let expected = format!("by at least {min}");
    let Some((start, end)) = step_window(events, step) else {
        return (name, expected, "step did not run".into(), false);
    };
    let all: Vec<&Value> = samples(events, cgroup)
        .filter(|s| s["high_events"].is_u64())
        .collect();
    let base = all
        .iter()
        .rfind(|s| s["t_ms"].as_u64() <= Some(start))
        .or(all.first())
        .and_then(|s| s["high_events"].as_u64());
    let last = all
        .iter()
        .rfind(|s| s["t_ms"].as_u64() <= Some(end))
        .and_then(|s| s["high_events"].as_u64());
    let Some(rise) = base.zip(last).map(|(b, l)| l.saturating_sub(b)) else {
        return (name, expected, "no memory.events readings".into(), false);
    };
    let reported = said_in(events, step)
        .filter_map(|line| match line {
            Line::Sample(s) => s.run_high_events,
            _ => None,
        })
        .last();
    let ran = said_in(events, step).next().is_some();
    let ok = rise >= min && (!ran || reported.is_some_and(|r| r >= min));
    let actual = match (ran, reported) {
        (true, Some(r)) => format!("{rise} (the run's samples: {r})"),
        (true, None) => format!("{rise} (the run's samples report none)"),
        (false, _) => rise.to_string(),
    };
    (name, expected, actual, ok)
}

/// The longest stretch of `readings` ((ms, avg10), in time order; `None`: no reading, which
/// breaks a stretch) within `tolerance` of `goal`, as (from, to) in ms.
fn longest_within(
    readings: &[(u64, Option<f64>)],
    goal: f64,
    tolerance: f64,
) -> Option<(u64, u64)> {
    let mut best: Option<(u64, u64)> = None;
    let mut start = None;
    for &(t, value) in readings {
        match value {
            Some(v) if (v - goal).abs() <= tolerance => {
                let from = *start.get_or_insert(t);
                if best.is_none_or(|(a, b)| t - from > b - a) {
                    best = Some((from, t));
                }
            }
            _ => start = None,
        }
    }
    best
}

/// `psi_held`: the longest stretch the run's own `sample` lines, and the lab's own readings
/// of the cgroup's `memory.pressure` during the step, kept avg10 within the tolerance.
fn psi_held(
    events: &[Value],
    cgroup: &str,
    step: usize,
    metric: Metric,
    (goal, tolerance): (f64, f64),
    for_ms: u64,
) -> (String, String, String, bool) {
    let name = format!(
        "{cgroup}'s memory.pressure {} avg10 during step {step}",
        metric.name()
    );
    let expected = format!(
        "within {tolerance} points of {goal}% for at least {}, in the run's samples and the \
         lab's readings",
        seconds(for_ms)
    );
    let Some((start, end)) = step_window(events, step) else {
        return (name, expected, "step did not run".into(), false);
    };
    let run: Vec<(u64, Option<f64>)> = said(events)
        .filter(|s| s.source == Some("run") && s.step == Some(step as u64))
        .filter_map(|s| match s.line {
            Line::Sample(sample) => Some((s.t_ms?, sample.psi.map(|p| metric.of(&p).0))),
            _ => None,
        })
        .collect();
    let key = format!("psi_{}_avg10", metric.name());
    let lab: Vec<(u64, Option<f64>)> = samples(events, cgroup)
        .filter_map(|s| Some((s["t_ms"].as_u64()?, s[&key].as_f64())))
        .filter(|(t, _)| (start..=end).contains(t))
        .collect();
    let said = |readings: &[(u64, Option<f64>)]| {
        if readings.iter().all(|(_, v)| v.is_none()) {
            return ("no readings".to_owned(), 0);
        }
        match longest_within(readings, goal, tolerance) {
            Some((a, b)) => (
                format!(
                    "{} ({}-{} after the step started)",
                    seconds(b - a),
                    seconds(a.saturating_sub(start)),
                    seconds(b.saturating_sub(start))
                ),
                b - a,
            ),
            None => ("never".to_owned(), 0),
        }
    };
    let (run_said, run_ms) = said(&run);
    let (lab_said, lab_ms) = said(&lab);
    (
        name,
        expected,
        format!("the run's samples: {run_said}; the lab's readings: {lab_said}"),
        run_ms >= for_ms && lab_ms >= for_ms,
    )
}

/// `memory_high_restored`: the value before the step, the value while its run was on, and
/// the first reading back at the original after the run ended.
fn memory_high_restored(
    events: &[Value],
    cgroup: &str,
    step: usize,
    set: u64,
    within: std::time::Duration,
) -> (String, String, String, bool) {
    let name = format!("{cgroup}'s memory.high is set by step {step}'s run and restored after it");
    let Some((start, end)) = step_window(events, step) else {
        return (name, "a run".into(), "step did not run".into(), false);
    };
    let readings: Vec<(u64, &Value)> = samples(events, cgroup)
        .filter_map(|s| Some((s["t_ms"].as_u64()?, &s["memory_high"])))
        .filter(|(_, h)| !h.is_null())
        .collect();
    let show = |v: &Value| match v.as_u64() {
        Some(b) => Bytes(b).to_string(),
        None => v.as_str().unwrap_or("?").to_owned(),
    };
    let Some(original) = readings.iter().rfind(|(t, _)| *t <= start).map(|(_, h)| *h) else {
        return (
            name,
            "a reading before the step".into(),
            "no memory.high readings".into(),
            false,
        );
    };
    let expected = format!(
        "{} while it ran, {} again within {}",
        Bytes(set),
        show(original),
        humantime::format_duration(within)
    );
    let during = readings
        .iter()
        .any(|(t, h)| *t >= start && *t <= end && h.as_u64() == Some(set));
    let back = readings
        .iter()
        .filter(|(t, _)| *t >= end)
        .find(|(_, h)| *h == original)
        .map(|(t, _)| *t);
    // Until another run starts (it may set memory.high again).
    let next_run = events
        .iter()
        .filter(|e| {
            e["type"] == "step"
                && e["phase"] == "start"
                && e["what"]
                    .as_str()
                    .is_some_and(|w| w.starts_with("memstress run"))
                && e["index"].as_u64().is_some_and(|i| i > step as u64)
        })
        .filter_map(|e| e["t_ms"].as_u64())
        .min()
        .unwrap_or(u64::MAX);
    let stays = back.is_some_and(|b| {
        readings
            .iter()
            .filter(|(t, _)| *t >= b && *t < next_run)
            .all(|(_, h)| *h == original)
    });
    let last = readings
        .last()
        .map_or_else(|| "?".to_owned(), |(_, h)| show(h));
    let actual = match back {
        Some(b) => format!(
            "{}; {} again {} ms after the run ended{}",
            if during {
                format!("{} while it ran", Bytes(set))
            } else {
                "never set while it ran".to_owned()
            },
            show(original),
            b - end,
            if stays { "" } else { ", then changed" }
        ),
        None => format!(
            "{}; still {last} at the last reading",
            if during {
                format!("{} while it ran", Bytes(set))
            } else {
                "never set while it ran".to_owned()
            }
        ),
    };
    let ok = during && stays && back.is_some_and(|b| b - end <= within.as_millis() as u64);
    (name, expected, actual, ok)
}

/// `throttled_time`: the run's own `attached` line says whether its throttle probes are on;
/// its `sample` lines recorded before and during the step give the time held and PSI's.
fn throttled_time(
    events: &[Value],
    run: usize,
    step: usize,
    min_share: f64,
) -> (String, String, String, bool) {
    use memstress::abi::names::{PROG_THROTTLE_ENTRY, PROG_THROTTLE_EXIT};
    let name = format!("step {run}'s run reports tasks held by memory.high during step {step}");
    let in_run = || said(events).filter(move |s| s.step == Some(run as u64));
    let Some(probes) = in_run().find_map(|s| match s.line {
        Line::Attached(a) => Some(a.into_owned().probes),
        _ => None,
    }) else {
        return (
            name,
            "an `attached` line".into(),
            "the run never reported its probes".into(),
            false,
        );
    };
    let throttle: Vec<_> = probes
        .iter()
        .filter(|p| [PROG_THROTTLE_ENTRY, PROG_THROTTLE_EXIT].contains(&p.program.as_str()))
        .collect();
    let attached = throttle.len() == 2 && throttle.iter().all(|p| p.attached);
    let samples: Vec<(u64, memstress::output::line::SampleLine)> = in_run()
        .filter_map(|s| match s.line {
            Line::Sample(sample) => Some((s.t_ms?, sample.into_owned())),
            _ => None,
        })
        .collect();
    if !attached {
        let why = throttle
            .iter()
            .find_map(|p| p.error.clone())
            .unwrap_or_else(|| "not in the object".into());
        let faked = samples
            .iter()
            .filter(|(_, s)| s.run_throttle.is_some())
            .count();
        return (
            name,
            "probes not attached here: run_throttle null in every sample".into(),
            format!(
                "not attached ({why}); {faked} of {} sample(s) carry figures",
                samples.len()
            ),
            faked == 0 && !samples.is_empty(),
        );
    }
    let expected = format!(
        "time held > 0; PSI some total rises by ≥ {:.0}% of it, less the longest episode",
        min_share * 100.0
    );
    let Some((start, end)) = step_window(events, step) else {
        return (name, expected, "step did not run".into(), false);
    };
    let nulls = samples
        .iter()
        .filter(|(_, s)| s.run_throttle.is_none())
        .count();
    let base = samples
        .iter()
        .rfind(|(t, _)| *t <= start)
        .or(samples.iter().find(|(t, _)| *t >= start));
    let last = samples.iter().rfind(|(t, _)| *t <= end);
    let (Some((_, base)), Some((_, last))) = (base, last) else {
        return (name, expected, "no samples in the step".into(), false);
    };
    let (Some(t0), Some(t1)) = (&base.run_throttle, &last.run_throttle) else {
        return (
            name,
            expected,
            format!("run_throttle null in {nulls} sample(s) though attached"),
            false,
        );
    };
    let episodes = t1.episodes.saturating_sub(t0.episodes);
    let held_us = t1.throttled_us.saturating_sub(t0.throttled_us);
    let psi_us = match (&base.psi, &last.psi) {
        (Some(p0), Some(p1)) => Some(p1.some_total_us.saturating_sub(p0.some_total_us)),
        _ => None,
    };
    let secs = |us: u64| format!("{:.2} s", us as f64 / 1e6);
    let Some(psi_us) = psi_us else {
        return (
            name,
            expected,
            format!(
                "held {} in {episodes} episode(s); no PSI in the samples",
                secs(held_us)
            ),
            false,
        );
    };
    let floor = (min_share * held_us as f64) as u64;
    let floor = floor.saturating_sub(t1.max_us);
    let ok = nulls == 0 && episodes > 0 && held_us > 0 && psi_us >= floor;
    let actual = format!(
        "held {} in {episodes} episode(s) (longest {}); PSI some rose {} ({:.0}% of it){}",
        secs(held_us),
        secs(t1.max_us),
        secs(psi_us),
        100.0 * psi_us as f64 / held_us.max(1) as f64,
        if nulls > 0 {
            format!("; run_throttle null in {nulls} sample(s) though attached")
        } else {
            String::new()
        }
    );
    (name, expected, actual, ok)
}

/// Whether the watcher reported `program` as attached.
fn probe_attached(events: &[Value], program: &str) -> Option<bool> {
    said(events)
        .filter(|s| s.source == Some("watch"))
        .find_map(|s| match s.line {
            Line::Attached(a) => Some(a.probes.iter().any(|p| p.program == program && p.attached)),
            _ => None,
        })
}

/// The lines of the run that scenario step `step` started.
fn said_in(events: &[Value], step: usize) -> impl Iterator<Item = Line<'static>> + '_ {
    said(events)
        .filter(move |s| s.step == Some(step as u64))
        .map(|s| s.line)
}

fn kernel_points(
    events: &[Value],
    kills: &[&KillLine],
    tolerance_pct: f64,
) -> (String, String, String, bool) {
    let what = "candidates' points are the kernel's own (oom_badness), and the formula agrees";
    let Some(fexit) = probe_attached(events, memstress::abi::names::PROG_OOM_BADNESS) else {
        return (
            what.into(),
            "an `attached` report".into(),
            "the watcher never reported its probes".into(),
            false,
        );
    };
    let mut problems = Vec::new();
    let (mut read, mut compared, mut worst) = (0usize, 0usize, 0f64);
    for k in kills.iter().filter(|k| !k.kill.group_kill) {
        let tid = k.kill.victim.victim.task.tid.unwrap_or(0);
        let want = if fexit {
            PointsFrom::OomBadness
        } else {
            PointsFrom::Formula
        };
        let pid = |c: &Ranked| c.pid.map_or("?".to_owned(), |p| p.to_string());
        for c in k
            .kill
            .candidates
            .iter()
            .filter(|c| c.source == Source::Kernel)
        {
            if c.points_from != want {
                problems.push(format!(
                    "kill of {tid}: candidate {} points_from {:?}",
                    pid(c),
                    c.points_from
                ));
                continue;
            }
            read += 1;
            if let Some(formula) = c.formula_points {
                let kernel = c.points;
                compared += 1;
                let off = (kernel - formula).unsigned_abs() as f64;
                let pct = 100.0 * off / kernel.unsigned_abs().max(1) as f64;
                // A few pages of slack: the counters are read a moment after oom_badness.
                if pct > tolerance_pct && off > 16.0 {
                    problems.push(format!("{}: kernel {kernel} vs formula {formula}", pid(c)));
                }
                worst = worst.max(pct);
            }
        }
        if fexit && k.kill.victim.points_from != PointsFrom::OomControl {
            problems.push(format!(
                "victim {tid} points_from {:?}",
                k.kill.victim.points_from
            ));
        }
    }
    if fexit && compared == 0 {
        problems.push("no candidate carried both the kernel's and the formula's points".into());
    }
    let expected = if fexit {
        format!(
            "fexit oom_badness attached: kernel points on every candidate, formula within {tolerance_pct}%"
        )
    } else {
        "fexit refused here: every candidate's points from the formula".into()
    };
    let actual = if problems.is_empty() {
        format!("{read} candidate(s); {compared} compared, worst {worst:.2}% apart")
    } else {
        problems.join("; ")
    };
    (
        what.into(),
        expected,
        actual,
        problems.is_empty() && read > 0,
    )
}

fn replay_same_victim(events: &[Value], step: Option<usize>) -> (String, String, String, bool) {
    let name = match step {
        Some(s) => format!("step {s}'s replay chooses each report's victim again"),
        None => "each replayed report's victim is chosen again".to_owned(),
    };
    let expected = "every report reproduced: same victim".to_owned();
    let results: Vec<_> = replay_results(events)
        .filter(|r| step.is_none_or(|s| r.step == Some(s as u64)))
        .collect();
    if results.is_empty() {
        // What the replay steps ended with says why.
        let exits: Vec<String> = events
            .iter()
            .filter(|e| e["type"] == "step" && e["phase"] == "end")
            .filter(|e| {
                let i = e["index"].as_u64();
                step.map_or(!e["replay"].is_null(), |s| i == Some(s as u64))
            })
            .map(|e| format!("step {} exited {}", e["index"], e["exit_code"]))
            .collect();
        let actual = if exits.is_empty() {
            "no replay_result line".to_owned()
        } else {
            format!("no replay_result line ({})", exits.join(", "))
        };
        return (name, expected, actual, false);
    }
    let party = |v: &Value| {
        let pid = v["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
        if v.is_object() {
            who(pid, v["comm"].as_str())
        } else {
            "nothing".to_owned()
        }
    };
    let differ: Vec<String> = results
        .iter()
        .filter(|r| !r.same_victim())
        .map(|r| {
            let report = r.line["report"]
                .as_u64()
                .map_or("?".to_owned(), |n| n.to_string());
            let reason = r.line["reason"].as_str().unwrap_or("no reason given");
            format!(
                "report {report}: chose {} not {}: {reason}",
                party(&r.line["chosen"]),
                party(&r.line["expected"])
            )
        })
        .collect();
    let actual = if differ.is_empty() {
        format!("{0} of {0} reports: same victim", results.len())
    } else {
        differ.join("; ")
    };
    (name, expected, actual, differ.is_empty())
}

/// How far the lab's own reading of a hit's lead (from the run's `sample` lines and the
/// kill's time) may differ from memstress's: a sample's forecast is recorded a moment after
/// it was made, and samples are 100 ms apart.
const LEAD_SLACK_MS: u64 = 1000;

/// Readings of the node's `memory.available` in time order: (t_ms, bytes).
type Readings = Vec<(u64, u64)>;

/// The node's `memory.available` during step `step`: the lab's own readings (`node_sample`),
/// and the `sample` lines of the runs going on then.
fn node_available(events: &[Value], step: usize) -> Option<(Readings, Readings)> {
    let (start, end) = step_window(events, step)?;
    let within = |e: &&Value| e["t_ms"].as_u64().is_some_and(|t| t >= start && t <= end);
    let lab = events
        .iter()
        .filter(|e| e["type"] == "node_sample")
        .filter(within)
        .filter_map(|e| Some((e["t_ms"].as_u64()?, e["available_bytes"].as_u64()?)))
        .collect();
    let runs = events
        .iter()
        .filter(|e| e["type"] == "memstress" && e["source"] == "run")
        .filter(|e| e["event"]["type"] == "sample")
        .filter(within)
        .filter_map(|e| {
            Some((
                e["t_ms"].as_u64()?,
                e["event"]["node_available_bytes"].as_u64()?,
            ))
        })
        .collect();
    Some((lab, runs))
}

/// `node_available_at_most` (`at_most`: the lowest reading is at most `size`) and
/// `node_available_at_least` (the lowest is at least `size`): both the lab's readings and the
/// runs' samples, and at least one of each.
fn node_available_bound(
    events: &[Value],
    step: usize,
    size: &str,
    at_most: bool,
) -> (String, String, String, bool) {
    let bound = SizeSpec::parse_bytes(size).unwrap_or(0);
    let (name, expected) = if at_most {
        (
            format!("the node's memory.available falls to {size} during step {step}"),
            format!("lowest ≤ {}", Bytes(bound)),
        )
    } else {
        (
            format!("the node's memory.available stays at or above {size} during step {step}"),
            format!("lowest ≥ {}", Bytes(bound)),
        )
    };
    let Some((lab, runs)) = node_available(events, step) else {
        return (name, expected, "step did not run".into(), false);
    };
    let lowest = |v: &[(u64, u64)]| v.iter().map(|(_, b)| *b).min();
    match (lowest(&lab), lowest(&runs)) {
        (Some(l), Some(r)) => {
            let ok = if at_most {
                l <= bound && r <= bound
            } else {
                l >= bound && r >= bound
            };
            let actual = format!(
                "lowest {} in the lab's {} readings, {} in the runs' {} samples",
                memstress::size::mib(l),
                lab.len(),
                memstress::size::mib(r),
                runs.len()
            );
            (name, expected, actual, ok)
        }
        (l, r) => (
            name,
            expected,
            format!(
                "{} lab readings, {} run samples with node_available_bytes",
                if l.is_some() { "some" } else { "no" },
                if r.is_some() { "some" } else { "no" }
            ),
            false,
        ),
    }
}

/// `node_available_held`: the longest run of consecutive samples within `size` ± `within`.
fn node_available_held(
    events: &[Value],
    step: usize,
    size: &str,
    within: &str,
    duration: std::time::Duration,
) -> (String, String, String, bool) {
    let goal = SizeSpec::parse_bytes(size).unwrap_or(0);
    let band = SizeSpec::parse_bytes(within).unwrap_or(0);
    let name = format!(
        "the runs hold the node's memory.available at {size} ± {within} during step {step}"
    );
    let expected = format!(
        "for at least {:.1} s without a break",
        duration.as_secs_f64()
    );
    let Some((_, runs)) = node_available(events, step) else {
        return (name, expected, "step did not run".into(), false);
    };
    let (mut longest, mut since): (u64, Option<u64>) = (0, None);
    for (t, bytes) in &runs {
        if bytes.abs_diff(goal) <= band {
            let from = *since.get_or_insert(*t);
            longest = longest.max(t - from);
        } else {
            since = None;
        }
    }
    let (lo, hi) = runs
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), (_, b)| (lo.min(*b), hi.max(*b)));
    let actual = if runs.is_empty() {
        "no run samples".to_owned()
    } else {
        format!(
            "{:.1} s (samples from {} to {})",
            longest as f64 / 1000.0,
            memstress::size::mib(lo),
            memstress::size::mib(hi)
        )
    };
    (
        name,
        expected,
        actual,
        longest as u128 >= duration.as_millis(),
    )
}

/// `node_available_agrees`: each run sample against the lab's reading closest in time.
fn node_available_agrees(
    events: &[Value],
    step: usize,
    tolerance: &str,
) -> (String, String, String, bool) {
    const NEAR_MS: u64 = 100;
    let tolerance = SizeSpec::parse_bytes(tolerance).unwrap_or(0);
    let name = format!(
        "memstress's node_available_bytes agrees with the lab's own reading during step {step}"
    );
    let expected = format!(
        "median difference ≤ {} over at least 10 samples",
        Bytes(tolerance)
    );
    let Some((lab, runs)) = node_available(events, step) else {
        return (name, expected, "step did not run".into(), false);
    };
    let mut diffs: Vec<u64> = runs
        .iter()
        .filter_map(|(t, bytes)| {
            let (lt, lb) = lab.iter().min_by_key(|(lt, _)| lt.abs_diff(*t))?;
            (lt.abs_diff(*t) <= NEAR_MS).then(|| lb.abs_diff(*bytes))
        })
        .collect();
    diffs.sort_unstable();
    let Some(mid) = median(&diffs) else {
        return (name, expected, "no samples to compare".into(), false);
    };
    let actual = format!(
        "median {}, largest {} over {} samples",
        Bytes(mid),
        Bytes(*diffs.last().unwrap_or(&0)),
        diffs.len()
    );
    (
        name,
        expected,
        actual,
        diffs.len() >= 10 && mid <= tolerance,
    )
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// The median, as memstress computes it (the mean of the middle two of an even count).
fn median(values: &[u64]) -> Option<u64> {
    memstress::forecast::median_u64(values)
}

fn forecast(
    events: &[Value],
    step: Option<usize>,
    min_hit_pct: f64,
    min_median_lead_ms: u64,
    max_eta_error_pct: f64,
) -> (String, String, String, bool) {
    let name = match step {
        Some(s) => format!("step {s}'s OOM forecast names each victim ahead and times the OOM"),
        None => "each run's OOM forecast names each victim ahead and times the OOM".to_owned(),
    };
    let expected = format!(
        "victim named for ≥ {min_hit_pct}% of kills, median lead ≥ {}, time to OOM forecast \
         5 s ahead within ±{max_eta_error_pct}%",
        seconds(min_median_lead_ms)
    );
    let in_step = |s: Option<u64>| step.is_none_or(|want| s == Some(want as u64));
    let kills: Vec<ScoredKill> = scored_kills(events)
        .into_iter()
        .filter(|k| in_step(k.step))
        .collect();
    if kills.is_empty() {
        return (
            name,
            expected,
            "no kill was scored (no oom_kill line of the run carries a forecast)".into(),
            false,
        );
    }
    let victim = |k: &ScoredKill| {
        let at = k
            .t_ms
            .map_or_else(String::new, |t| format!(" at {}", seconds(t)));
        format!("kill of {}{at}", who(k.pid, k.comm.as_deref()))
    };
    let mut problems = Vec::new();
    let n = kills.len();
    let hits: Vec<&ScoredKill> = kills.iter().filter(|k| k.forecast.hit).collect();
    let hit_pct = 100.0 * hits.len() as f64 / n as f64;
    if hit_pct < min_hit_pct {
        for k in kills.iter().filter(|k| !k.forecast.hit) {
            problems.push(format!("{}: {}", victim(k), k.forecast.text()));
        }
    }
    let leads: Vec<u64> = hits.iter().filter_map(|k| k.forecast.lead_ms).collect();
    let median_lead = median(&leads);
    if median_lead.is_none_or(|l| l < min_median_lead_ms) {
        problems.push(format!(
            "median lead {}",
            median_lead.map_or("none (no hit)".to_owned(), seconds)
        ));
    }
    // The time-to-OOM forecasts made about 5 s before the kills.
    let (mut checked, mut worst, mut unchecked) = (0usize, None::<f64>, 0usize);
    for k in &kills {
        let Some(eta) = &k.forecast.eta else {
            unchecked += 1;
            continue;
        };
        checked += 1;
        match (eta.forecast_ms, eta.error_pct) {
            (Some(said), Some(error)) => {
                if worst.is_none_or(|w| error.abs() > w.abs()) {
                    worst = Some(error);
                }
                if error.abs() > max_eta_error_pct {
                    problems.push(format!(
                        "{}: {} before it, the forecast said {} ({error:+.1}%)",
                        victim(k),
                        seconds(eta.ahead_ms),
                        seconds(said)
                    ));
                }
            }
            _ => problems.push(format!(
                "{}: {} before it, the forecast said no OOM was coming",
                victim(k),
                seconds(eta.ahead_ms)
            )),
        }
    }
    if checked == 0 {
        problems.push("no time-to-OOM forecast was made 4-6 s before any kill".into());
    }
    // The run's samples must bear out each verdict, and its summary count the same. A stretch
    // shorter than the slack may have begun with a sample recorded after the kill (it is
    // recorded a moment after it is made, to the ms): then the samples cannot tell.
    for k in &kills {
        match (k.forecast.hit, k.forecast.lead_ms, k.samples_lead_ms()) {
            (true, Some(said), None) if said <= LEAD_SLACK_MS => {}
            (false, _, Some(seen)) if seen <= LEAD_SLACK_MS => {}
            (true, _, None) => problems.push(format!(
                "{}: scored a hit, but the last of the {} samples before it did not name it",
                victim(k),
                k.samples_before
            )),
            (true, Some(said), Some(seen)) if said.abs_diff(seen) > LEAD_SLACK_MS => {
                problems.push(format!(
                    "{}: lead {} scored, the samples named it for {}",
                    victim(k),
                    seconds(said),
                    seconds(seen)
                ));
            }
            (false, _, Some(seen)) => problems.push(format!(
                "{}: scored a miss, but the samples named it for {} before it",
                victim(k),
                seconds(seen)
            )),
            _ => {}
        }
    }
    let mut steps: Vec<Option<u64>> = kills.iter().map(|k| k.step).collect();
    steps.dedup();
    let scores = forecast_scores(events);
    for s in steps {
        let of_step: Vec<&ScoredKill> = kills.iter().filter(|k| k.step == s).collect();
        let step_hits = of_step.iter().filter(|k| k.forecast.hit).count() as u64;
        let label = s.map_or("a run".to_owned(), |s| format!("step {s}"));
        match scores.iter().find(|(at, _)| *at == s) {
            None => problems.push(format!("{label}: no summary with a forecast score")),
            Some((_, score)) if score.kills != of_step.len() as u64 || score.hits != step_hits => {
                problems.push(format!(
                    "{label}: the summary counts {} of {} named, the kills {step_hits} of {}",
                    score.hits,
                    score.kills,
                    of_step.len()
                ));
            }
            Some(_) => {}
        }
    }
    let mut actual = format!(
        "{} of {n} victims named ({hit_pct:.0}%), median lead {}",
        hits.len(),
        median_lead.map_or("none".to_owned(), seconds)
    );
    match worst {
        Some(w) => put_eta(&mut actual, checked, w),
        None => actual.push_str("; no time-to-OOM forecast checked"),
    }
    if unchecked > 0 {
        actual.push_str(&format!(
            "; {unchecked} kill(s) had no forecast 4-6 s before them"
        ));
    }
    if !problems.is_empty() {
        actual.push_str(&format!(". Problems: {}", problems.join("; ")));
    }
    (name, expected, actual, problems.is_empty())
}

fn put_eta(actual: &mut String, checked: usize, worst: f64) {
    if checked == 1 {
        actual.push_str(&format!("; time to OOM 5 s ahead off by {worst:+.1}%"));
    } else {
        actual.push_str(&format!(
            "; time to OOM 5 s ahead: {checked} checked, worst off by {worst:+.1}%"
        ));
    }
}

fn dedup(items: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in items {
        if out.last() != Some(i) {
            out.push(i.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::lab::lines::fixture;

    #[test]
    fn order_ignores_others_and_repeats() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert!(in_order(
            &s(&["vm", "be", "vm", "bu", "vm"]),
            &s(&["be", "bu"])
        ));
        assert!(!in_order(&s(&["bu", "be"]), &s(&["be", "bu"])));
        assert!(!in_order(&s(&["be"]), &s(&["be", "bu"])));
        assert_eq!(dedup(&s(&["a", "a", "b", "a"])), s(&["a", "b", "a"]));
    }

    /// The node's memory.available expectations read the lab's `node_sample`s and the
    /// runs' `sample` lines in the step's window; `plan_first` the run's plan.
    #[test]
    fn checks_the_node_and_what_the_plan_said_first() {
        const M: u64 = 1 << 20;
        let mut events = vec![
            json!({"type":"step","t_ms":0,"index":0,"phase":"start"}),
            json!({"type":"memstress","t_ms":5,"source":"run","step":0,
                "event": fixture::plan(Vec::new())}),
        ];
        // The run fills from 300 MiB to 150 MiB over 1.5 s, holds it 4 s, with one dip.
        for i in 0..60u64 {
            let t = 100 + i * 100;
            let available = if i < 15 {
                300 - i * 10
            } else if i == 40 {
                140
            } else {
                150 + i % 3
            } * M;
            events.push(
                json!({"type":"node_sample","t_ms":t,"available_bytes":available,
                "mem_available_bytes":available - 50 * M,"mem_total_bytes":463 * M}),
            );
            events.push(
                json!({"type":"memstress","t_ms":t + 3,"source":"run","step":0,
                "event":{"type":"sample","node_available_bytes":available + (i % 2) * M}}),
            );
        }
        events.push(json!({"type":"step","t_ms":6100,"index":0,"phase":"end"}));
        let scenario: Scenario = toml::from_str("name = \"t\"\ndescription = \"\"").unwrap();
        let run = |e: Expect| check(&e, &events, &scenario);
        let (_, _, actual, ok) = run(Expect::NodeAvailableAtMost {
            step: 0,
            max: "150Mi".into(),
        });
        assert!(ok, "{actual}");
        assert!(actual.contains("lowest 140 MiB"), "{actual}");
        let (_, _, actual, ok) = run(Expect::NodeAvailableAtMost {
            step: 0,
            max: "100Mi".into(),
        });
        assert!(!ok, "{actual}");
        let (_, _, actual, ok) = run(Expect::NodeAvailableAtLeast {
            step: 0,
            min: "140Mi".into(),
        });
        assert!(ok, "{actual}");
        let (_, _, _, ok) = run(Expect::NodeAvailableAtLeast {
            step: 0,
            min: "145Mi".into(),
        });
        assert!(!ok);
        // Held within 150 ± 4 from 1.6 s to 4.0 s (2.4 s), broken by the dip, then again.
        let held = |within: &str, secs: u64| {
            run(Expect::NodeAvailableHeld {
                step: 0,
                size: "150Mi".into(),
                within: within.into(),
                duration: std::time::Duration::from_secs(secs),
            })
        };
        let (_, _, actual, ok) = held("4Mi", 2);
        assert!(ok, "{actual}");
        assert!(actual.starts_with("2.4 s"), "{actual}");
        assert!(!held("4Mi", 3).3);
        assert!(held("10Mi", 4).3);
        let agrees = |tolerance: &str| {
            run(Expect::NodeAvailableAgrees {
                step: 0,
                tolerance: tolerance.into(),
            })
        };
        let (_, _, actual, ok) = agrees("1Mi");
        assert!(ok, "{actual}");
        assert!(actual.contains("over 60 samples"), "{actual}");
        assert!(!agrees("0").3);
        // No node readings at all: failed, not passed by default.
        let bare: Vec<Value> = events
            .iter()
            .filter(|e| e["type"] != "node_sample")
            .cloned()
            .collect();
        let e = Expect::NodeAvailableAtMost {
            step: 0,
            max: "1Gi".into(),
        };
        assert!(!check(&e, &bare, &scenario).3);
        let first = |first: &str| {
            run(Expect::PlanFirst {
                step: 0,
                first: first.into(),
            })
        };
        // The fixture's plan: its limit comes first.
        let (_, _, actual, ok) = first("limit");
        assert!(ok, "{actual}");
        let (_, _, actual, ok) = first("eviction");
        assert!(!ok && actual == "limit", "{actual}");
    }

    #[test]
    fn checks_usage_rise_against_samples() {
        let events = vec![
            json!({"type":"sample","t_ms":0,"cgroup":"pod","usage_bytes":1_000_000u64}),
            json!({"type":"step","t_ms":10,"index":0,"phase":"start"}),
            json!({"type":"sample","t_ms":100,"cgroup":"pod","usage_bytes":1_000_000u64 + 52_428_800}),
            json!({"type":"step","t_ms":200,"index":0,"phase":"end"}),
        ];
        let scenario: Scenario = toml::from_str("name = \"t\"\ndescription = \"\"").unwrap();
        let e = Expect::UsageRise {
            cgroup: "pod".into(),
            step: 0,
            size: "50Mi".into(),
            tolerance_pct: 2.0,
        };
        let (_, _, actual, ok) = check(&e, &events, &scenario);
        assert!(ok, "{actual}");
        let e = Expect::UsageRise {
            cgroup: "pod".into(),
            step: 0,
            size: "200Mi".into(),
            tolerance_pct: 2.0,
        };
        assert!(!check(&e, &events, &scenario).3);
    }

    #[test]
    fn kernel_points_follow_what_attached() {
        let record = |event: Value| json!({"type":"memstress","source":"watch","event":event});
        let attached = |on: bool| record(fixture::attached("oom_badness_exit", on));
        let kill = |from: &str, points: i64, formula: Option<i64>, victim_from: &str| {
            let mut c = fixture::ranked(Some(7), "c", points, 0, "kernel");
            c["points_from"] = json!(from);
            if let Some(f) = formula {
                c["formula_points"] = json!(f);
            }
            let mut k = fixture::kill(7, "v", points, "why", vec![c]);
            k["victim"]["points_from"] = json!(victim_from);
            record(k)
        };
        let e = Expect::KernelPoints { tolerance_pct: 2.0 };
        let scenario: Scenario = toml::from_str("name = \"t\"\ndescription = \"\"").unwrap();
        let ok = |events: Vec<Value>| check(&e, &events, &scenario).3;
        assert!(ok(vec![
            attached(true),
            kill("oom_badness", 10_000, Some(10_010), "oom_control")
        ]));
        assert!(!ok(vec![
            attached(true),
            kill("oom_badness", 10_000, Some(12_000), "oom_control")
        ]));
        assert!(!ok(vec![
            attached(true),
            kill("formula", 10_000, None, "formula")
        ]));
        assert!(ok(vec![
            attached(false),
            kill("formula", 10_000, None, "formula")
        ]));
        assert!(!ok(vec![kill("formula", 10_000, None, "formula")]));
    }

    #[test]
    fn forecast_scores_hits_leads_and_the_time_to_oom() {
        let scenario: Scenario = toml::from_str("name = \"t\"\ndescription = \"\"").unwrap();
        let expect = Expect::Forecast {
            step: Some(0),
            min_hit_pct: 90.0,
            min_median_lead_ms: 2000,
            max_eta_error_pct: 20.0,
        };
        let run = |kill: Value, score: Value| {
            let events = fixture::forecast_scenario(kill, score);
            let (_, _, actual, ok) = check(&expect, &events, &scenario);
            (actual, ok)
        };
        let stressor = (500, "memstress-vm");
        let good = fixture::score(1, 1, Some(9000), Some(4.0));
        let (actual, ok) = run(
            fixture::kill_forecast(stressor, true, Some(9000), Some((5000, Some(4800)))),
            good.clone(),
        );
        assert!(ok, "{actual}");
        assert_eq!(
            actual,
            "1 of 1 victims named (100%), median lead 9.0 s; time to OOM 5 s ahead off by -4.0%"
        );

        // The time to OOM 5 s ahead, 30% off.
        let (actual, ok) = run(
            fixture::kill_forecast(stressor, true, Some(9000), Some((5000, Some(6500)))),
            good.clone(),
        );
        assert!(!ok);
        assert!(
            actual.contains(
                "kill of 500 (memstress-vm) at 12.0 s: 5.0 s before it, the forecast said 6.5 s \
                 (+30.0%)"
            ),
            "{actual}"
        );
        // None coming, or none made then.
        let (actual, ok) = run(
            fixture::kill_forecast(stressor, true, Some(9000), Some((5000, None))),
            good.clone(),
        );
        assert!(!ok && actual.contains("said no OOM was coming"), "{actual}");
        let (actual, ok) = run(
            fixture::kill_forecast(stressor, true, Some(9000), None),
            good.clone(),
        );
        assert!(
            !ok && actual.contains("no time-to-OOM forecast was made 4-6 s before any kill"),
            "{actual}"
        );

        // A short lead fails, and one the samples do not bear out too.
        let (actual, ok) = run(
            fixture::kill_forecast(stressor, true, Some(1500), Some((5000, Some(4800)))),
            fixture::score(1, 1, Some(1500), Some(4.0)),
        );
        assert!(!ok);
        assert!(actual.contains("median lead 1.5 s"), "{actual}");
        assert!(
            actual.contains("lead 1.5 s scored, the samples named it for 9.0 s"),
            "{actual}"
        );

        // A miss: the hit rate fails, and the samples (which named it) contradict it.
        let (actual, ok) = run(
            fixture::kill_forecast((300, "batch"), false, None, Some((5000, Some(4800)))),
            fixture::score(1, 0, None, Some(4.0)),
        );
        assert!(!ok);
        assert!(actual.starts_with("0 of 1 victims named (0%)"), "{actual}");
        assert!(
            actual.contains("forecast had named batch (pid 300): the victim jumped"),
            "{actual}"
        );
        assert!(
            actual.contains("scored a miss, but the samples named it for 9.0 s"),
            "{actual}"
        );

        // The summary must count what the kills say.
        let (actual, ok) = run(
            fixture::kill_forecast(stressor, true, Some(9000), Some((5000, Some(4800)))),
            fixture::score(2, 1, Some(9000), Some(4.0)),
        );
        assert!(
            !ok && actual.contains("step 0: the summary counts 1 of 2 named, the kills 1 of 1"),
            "{actual}"
        );

        // No kill scored at all (a kill line without a forecast), or another step's.
        let mut events = fixture::forecast_scenario(json!(null), good);
        let (_, _, actual, ok) = check(&expect, &events, &scenario);
        assert!(!ok && actual.starts_with("no kill was scored"), "{actual}");
        for e in &mut events {
            if e["source"] == "run" {
                e["step"] = json!(1);
            }
        }
        assert!(!check(&expect, &events, &scenario).3);
    }

    #[test]
    fn replay_same_victim_reads_the_replay_results() {
        let scenario: Scenario = toml::from_str("name = \"t\"\ndescription = \"\"").unwrap();
        let result = |step: u64, line: Value| {
            json!({"type": "memstress", "source": "replay", "step": step, "t_ms": 900,
                "event": line})
        };
        let end = |step: u64, code: i32| {
            json!({"type": "step", "t_ms": 1000, "index": step, "phase": "end",
                "replay": "{dmesg}", "exit_code": code})
        };
        let check_all = |events: &[Value], step: Option<usize>| {
            let (_, _, actual, ok) = check(&Expect::ReplaySameVictim { step }, events, &scenario);
            (actual, ok)
        };
        let same = vec![
            result(
                2,
                fixture::replay_result(1, (1234, "tail"), (555, "tail"), None),
            ),
            result(
                2,
                fixture::replay_result(2, (88, "java"), (601, "java"), None),
            ),
            end(2, 0),
        ];
        assert_eq!(
            check_all(&same, None),
            ("2 of 2 reports: same victim".to_owned(), true)
        );
        assert!(check_all(&same, Some(2)).1);
        let (actual, ok) = check_all(&same, Some(1));
        assert!(!ok && actual == "no replay_result line", "{actual}");

        let differ = vec![
            result(
                2,
                fixture::replay_result(1, (1234, "tail"), (555, "tail"), None),
            ),
            result(
                2,
                fixture::replay_result(2, (1234, "tail"), (556, "sh"), Some("sh grew first")),
            ),
            end(2, 1),
        ];
        assert_eq!(
            check_all(&differ, None),
            (
                "report 2: chose 556 (sh) not 1234 (tail): sh grew first".to_owned(),
                false
            )
        );

        // A replay that printed nothing (memstress without the subcommand, say): its exit says
        // why.
        let (actual, ok) = check_all(&[end(2, 2)], None);
        assert!(!ok);
        assert_eq!(actual, "no replay_result line (step 2 exited 2)");
        // A line the types would reject still counts: it is read as raw JSON.
        let mut odd = fixture::replay_result(1, (1, "a"), (2, "a"), None);
        odd["unknown_field"] = json!(true);
        assert!(check_all(&[result(0, odd)], None).1);
    }

    /// `throttled_time`: the time held and PSI from the run's own samples, over the step.
    #[test]
    fn throttled_time_reads_the_runs_samples() {
        use memstress::abi::names::{PROG_THROTTLE_ENTRY, PROG_THROTTLE_EXIT};
        let scenario: Scenario = toml::from_str("name = \"t\"\ndescription = \"\"").unwrap();
        let record = |t: u64, event: Value| json!({"type": "memstress", "source": "run", "step": 0, "t_ms": t, "event": event});
        let attached = |on: bool| {
            let mut a = fixture::attached(PROG_THROTTLE_EXIT, on);
            let mut entry = a["probes"][0].clone();
            entry["program"] = json!(PROG_THROTTLE_ENTRY);
            a["probes"].as_array_mut().unwrap().push(entry);
            record(50, a)
        };
        // A sample: time held and PSI some total so far, in ms (`None`: not attached).
        let sample = |t: u64, held_ms: Option<u64>, psi_ms: u64| {
            let throttle = held_ms.map(|ms| {
                json!({"episodes": ms / 100, "throttled_us": ms * 1000, "max_us": 100_000,
                       "over_high_bytes": 0})
            });
            record(
                t,
                json!({"type": "sample", "t_ms": t, "usage_bytes": 0, "working_set_bytes": 0,
                    "inactive_file_bytes": 0, "limit_hits": 0, "oom_kills": 0,
                    "under_oom": false, "limit_bytes": null, "stressors_held_bytes": 0,
                    "stressors_charge_bytes": 0, "stressors_alive": 0, "run_limit_hits": 0,
                    "run_oom_kills": 0, "run_throttle": throttle,
                    "psi": {"some_avg10": 0.0, "some_avg60": 0.0, "full_avg10": 0.0,
                        "full_avg60": 0.0, "some_total_us": psi_ms * 1000, "full_total_us": 0}}),
            )
        };
        let step = |i: u64, phase: &str, t: u64| json!({"type": "step", "index": i, "phase": phase, "t_ms": t});
        let expect = Expect::ThrottledTime {
            run: 0,
            step: 1,
            min_psi_share: 0.8,
        };
        let run = |on: bool, samples: &[(u64, Option<u64>, u64)]| {
            let mut events = vec![step(0, "start", 0), attached(on), step(1, "start", 1000)];
            events.extend(samples.iter().map(|(t, h, p)| sample(*t, *h, *p)));
            events.push(step(1, "end", 5000));
            let (_, _, actual, ok) = check(&expect, &events, &scenario);
            (actual, ok)
        };
        // Held 3 s during the step, PSI 2.9 s: passes.
        let (actual, ok) = run(true, &[(900, Some(0), 0), (4900, Some(3000), 2900)]);
        assert!(ok, "{actual}");
        assert!(
            actual.starts_with("held 3.00 s in 30 episode(s)"),
            "{actual}"
        );
        // PSI far below the time held (less the longest episode, 0.1 s): fails.
        let (actual, ok) = run(true, &[(900, Some(0), 0), (4900, Some(3000), 2000)]);
        assert!(!ok, "{actual}");
        // Nothing held: fails.
        assert!(!run(true, &[(900, Some(0), 0), (4900, Some(0), 500)]).1);
        // Attached, yet a sample without figures: fails.
        assert!(!run(true, &[(900, None, 0), (4900, Some(3000), 3000)]).1);
        // Not attached: every sample null passes; a figure without its probes fails.
        assert!(run(false, &[(900, None, 0), (4900, None, 3000)]).1);
        assert!(!run(false, &[(900, None, 0), (4900, Some(0), 3000)]).1);
    }

    /// A throttled run's `memory.high`: what the readings must show for it to pass, so that
    /// a guard that does not restore it fails.
    #[test]
    fn memory_high_restored_needs_the_original_back_in_time() {
        const HIGH: u64 = 64 << 20;
        let step = |i: u64, phase: &str, t: u64| {
            json!({"type": "step", "index": i, "phase": phase, "t_ms": t,
                   "what": if phase == "start" { "memstress run -o json --throttle 64Mi" } else { "" }})
        };
        let reading = |t: u64, high: Value| json!({"type": "sample", "cgroup": "pod", "t_ms": t, "memory_high": high});
        let check = |after: &[(u64, Value)]| {
            let mut events = vec![
                reading(0, json!("max")),
                step(0, "start", 100),
                reading(200, json!(HIGH)),
                reading(1000, json!(HIGH)),
                step(0, "end", 1100),
            ];
            events.extend(after.iter().map(|(t, h)| reading(*t, h.clone())));
            memory_high_restored(&events, "pod", 0, HIGH, std::time::Duration::from_secs(2))
        };
        // Back at once: passes.
        let (_, _, actual, ok) = check(&[(1150, json!("max")), (1250, json!("max"))]);
        assert!(ok, "{actual}");
        // Never restored (a guard that did nothing): fails.
        let (_, _, actual, ok) = check(&[(1150, json!(HIGH)), (4000, json!(HIGH))]);
        assert!(!ok && actual.contains("still 64 MiB"), "{actual}");
        // Restored too late: fails.
        let (_, _, actual, ok) = check(&[(2000, json!(HIGH)), (3500, json!("max"))]);
        assert!(!ok, "{actual}");
        // Restored, then changed again before any other run: fails.
        let (_, _, actual, ok) = check(&[(1150, json!("max")), (1300, json!(HIGH))]);
        assert!(!ok && actual.contains("then changed"), "{actual}");
    }

    #[test]
    fn longest_within_breaks_on_a_miss_or_a_gap() {
        let r = |t: u64, v: Option<f64>| (t, v);
        let readings = [
            r(0, Some(10.0)),
            r(100, Some(18.0)),
            r(200, Some(24.0)),
            r(300, Some(26.0)),
            r(400, Some(21.0)),
            r(500, None),
            r(600, Some(20.0)),
            r(1000, Some(20.0)),
        ];
        assert_eq!(longest_within(&readings, 20.0, 5.0), Some((600, 1000)));
        assert_eq!(longest_within(&readings[..5], 20.0, 5.0), Some((100, 200)));
        assert_eq!(longest_within(&readings[..1], 20.0, 5.0), None);
    }

    /// `psi_held` reads the run's samples and the lab's own readings of the step; both must
    /// hold the stretch.
    #[test]
    fn psi_held_needs_the_run_and_the_lab_to_agree() {
        let scenario: Scenario = toml::from_str("name = \"t\"\ndescription = \"\"").unwrap();
        let events = |run_avg10: &dyn Fn(u64) -> f64, lab_avg10: &dyn Fn(u64) -> f64| {
            let mut ev = vec![
                json!({"type": "step", "t_ms": 0, "index": 0, "phase": "start",
                "what": "memstress run -o json --cgroup /lab/pod --pressure some=20%"}),
            ];
            for t in (100..40_000).step_by(100) {
                let mut sample = fixture::sample(t, Value::Null);
                sample["psi"] = json!({"some_avg10": run_avg10(t), "some_avg60": 0.0,
                    "full_avg10": 0.0, "full_avg60": 0.0, "some_total_us": 0,
                    "full_total_us": 0});
                ev.push(
                    json!({"type": "memstress", "source": "run", "step": 0, "t_ms": t,
                    "event": sample}),
                );
                ev.push(json!({"type": "sample", "cgroup": "pod", "t_ms": t,
                    "psi_some_avg10": lab_avg10(t)}));
            }
            ev.push(json!({"type": "step", "t_ms": 40_000, "index": 0, "phase": "end"}));
            ev
        };
        let e: Expect = toml::from_str(
            "kind = \"psi_held\"\ncgroup = \"pod\"\nstep = 0\nmetric = \"some\"\n\
             goal = 20.0\ntolerance = 5.0\nfor = \"20s\"",
        )
        .unwrap();
        // Rising to 20 % by 10 s, held after.
        let held = |t: u64| (t as f64 / 500.0).min(20.0);
        let (_, _, actual, ok) = check(&e, &events(&held, &held), &scenario);
        assert!(ok, "{actual}");
        assert!(actual.contains("the run's samples: 32.4 s"), "{actual}");
        // The lab's readings disagree (a run that made its numbers up): fails.
        let (_, _, actual, ok) = check(&e, &events(&held, &|_| 40.0), &scenario);
        assert!(
            !ok && actual.contains("the lab's readings: never"),
            "{actual}"
        );
        // Swinging 20 ± 10 every 8 s: no 20 s stretch.
        let swing = |t: u64| {
            if (t / 8000).is_multiple_of(2) {
                12.0
            } else {
                28.0
            }
        };
        assert!(!check(&e, &events(&swing, &swing), &scenario).3);
    }
}
