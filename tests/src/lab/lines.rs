//! memstress's own lines in a lab recording (`{"type": "memstress", "source", "step", "event"}`),
//! read through the library's line types rather than JSON paths: a field the library renames
//! or retypes breaks the lab at compile time, not silently in a report.

use memstress::{
    forecast::{Forecast, ForecastScore, KillForecast},
    output::line::{KillLine, Line},
};
use serde::Deserialize as _;
use serde_json::Value;

/// One memstress line the lab recorded.
pub struct Said<'e> {
    /// When the lab recorded it (ms since the scenario started).
    pub t_ms: Option<u64>,
    /// `watch` or `run`.
    pub source: Option<&'e str>,
    /// The scenario step that ran the command (`run`).
    pub step: Option<u64>,
    /// The line.
    pub line: Line<'static>,
}

/// The memstress line a lab record carries, if it is one and the library's types accept it.
pub fn line(record: &Value) -> Option<Line<'static>> {
    if record.get("type").and_then(Value::as_str) != Some("memstress") {
        return None;
    }
    Line::deserialize(record.get("event")?).ok()
}

/// Every memstress line recorded, in order (records the types do not accept are left out;
/// the lab's schema check reports those).
pub fn said(events: &[Value]) -> impl Iterator<Item = Said<'_>> {
    events.iter().filter_map(|record| {
        Some(Said {
            line: line(record)?,
            t_ms: record.get("t_ms").and_then(Value::as_u64),
            source: record.get("source").and_then(Value::as_str),
            step: record.get("step").and_then(Value::as_u64),
        })
    })
}

/// The OOM kills `memstress watch` reported, in order, with their times.
pub fn watch_kills(events: &[Value]) -> Vec<(Option<u64>, KillLine)> {
    said(events)
        .filter(|s| s.source == Some("watch"))
        .filter_map(|s| match s.line {
            Line::OomKill(kill) => Some((s.t_ms, kill.into_owned())),
            _ => None,
        })
        .collect()
}

/// A `sample` line of a `memstress run` that carried a forecast.
pub struct ForecastSample {
    /// When the lab recorded it (ms since the scenario started).
    pub t_ms: u64,
    /// The scenario step that ran the command.
    pub step: Option<u64>,
    /// What it forecast.
    pub forecast: Forecast,
}

/// Every forecast the runs' `sample` lines carried, in order. A sample without one (the domain
/// could not be read) is left out: memstress's forecaster made no forecast then either, so it
/// does not interrupt a stretch of forecasts naming one victim.
pub fn forecast_samples(events: &[Value]) -> Vec<ForecastSample> {
    said(events)
        .filter(|s| s.source == Some("run"))
        .filter_map(|s| match s.line {
            Line::Sample(sample) => Some(ForecastSample {
                t_ms: s.t_ms?,
                step: s.step,
                forecast: sample.into_owned().forecast?,
            }),
            _ => None,
        })
        .collect()
}

/// An OOM kill a run's forecast scored (its `oom_kill` line's `forecast`), with what that
/// run's `sample` lines said before it.
pub struct ScoredKill {
    /// The scenario step that ran the command.
    pub step: Option<u64>,
    /// When the kernel chose the victim, in ms since the scenario started: the kill's own
    /// `ts_ns` on the scenario's clock (its `monotonic_start_us`), else the time of the
    /// kernel's `Killed process` line for the victim, else when the lab recorded the line
    /// (which can come after samples taken once the victim was gone).
    pub t_ms: Option<u64>,
    /// The kernel's victim.
    pub pid: Option<u32>,
    /// Its comm.
    pub comm: Option<String>,
    /// What memstress said of the forecast.
    pub forecast: KillForecast,
    /// Since when (ms since the scenario started) the samples before the kill named the
    /// victim without interruption (`None`: the last sample before it did not name it).
    pub named_since_ms: Option<u64>,
    /// How many samples with a forecast came before it (in its run).
    pub samples_before: usize,
}

impl ScoredKill {
    /// How long the samples named the victim before the kill (ms), as the lab saw them.
    pub fn samples_lead_ms(&self) -> Option<u64> {
        Some(self.t_ms?.saturating_sub(self.named_since_ms?))
    }
}

/// The scenario's start on CLOCK_MONOTONIC (µs), as its `scenario` line recorded it.
fn monotonic_start_us(events: &[Value]) -> Option<u64> {
    events
        .iter()
        .find(|e| e.get("type").and_then(Value::as_str) == Some("scenario"))?
        .get("monotonic_start_us")?
        .as_u64()
}

/// The kernel's `Killed process` times (ms) of `pid`, as the lab recorded them.
fn dmesg_kill_ms(events: &[Value], pid: u32) -> Option<u64> {
    events
        .iter()
        .filter(|e| e.get("type").and_then(Value::as_str) == Some("dmesg_kill"))
        .filter(|e| e.get("replay_step").is_none_or(Value::is_null))
        .find(|e| e.get("pid").and_then(Value::as_u64) == Some(u64::from(pid)))?
        .get("t_ms")?
        .as_u64()
}

/// Every kill a run's forecast scored, in order, each with the stretch of its run's samples
/// that named its victim right before it.
pub fn scored_kills(events: &[Value]) -> Vec<ScoredKill> {
    let start_us = monotonic_start_us(events);
    let samples = forecast_samples(events);
    said(events)
        .filter(|s| s.source == Some("run"))
        .filter_map(|s| {
            let Line::OomKill(kill) = s.line else {
                return None;
            };
            let forecast = kill.forecast.clone()?;
            let task = &kill.kill.victim.victim.task;
            let pid = task.pid;
            let t_ms = start_us
                .filter(|start| kill.kill.ts_ns / 1000 >= *start)
                .map(|start| (kill.kill.ts_ns / 1000 - start) / 1000)
                .or_else(|| pid.and_then(|p| dmesg_kill_ms(events, p)))
                .or(s.t_ms);
            let before: Vec<&ForecastSample> = samples
                .iter()
                .filter(|f| f.step == s.step && t_ms.is_some_and(|t| f.t_ms < t))
                .collect();
            let named = |f: &&&ForecastSample| {
                pid.is_some() && f.forecast.victim.as_ref().map(|v| v.pid) == pid
            };
            let stretch: Vec<&&ForecastSample> = before.iter().rev().take_while(named).collect();
            Some(ScoredKill {
                step: s.step,
                t_ms,
                pid,
                comm: task.comm.clone(),
                forecast,
                named_since_ms: stretch.last().map(|f| f.t_ms),
                samples_before: before.len(),
            })
        })
        .collect()
}

/// The forecast scores the runs' `summary` lines carried: (step, score).
pub fn forecast_scores(events: &[Value]) -> Vec<(Option<u64>, ForecastScore)> {
    said(events)
        .filter(|s| s.source == Some("run"))
        .filter_map(|s| match s.line {
            Line::Summary(summary) => Some((s.step, summary.into_owned().forecast?)),
            _ => None,
        })
        .collect()
}

/// A `replay_result` line `memstress replay` printed (one per OOM report it reproduced), as
/// raw JSON: memstress's [`Line`] does not know the type yet, so [`said`] leaves these lines
/// out, and they are read from the recorded `event` instead.
pub struct ReplayResult<'e> {
    /// When the lab recorded it.
    pub t_ms: Option<u64>,
    /// The scenario step that ran the replay.
    pub step: Option<u64>,
    /// The line.
    pub line: &'e Value,
}

impl ReplayResult<'_> {
    /// Whether the reproduction chose the report's victim (`false` unless it says so).
    pub fn same_victim(&self) -> bool {
        self.line.get("same_victim").and_then(Value::as_bool) == Some(true)
    }
}

/// Every `replay_result` line recorded, in order.
pub fn replay_results(events: &[Value]) -> impl Iterator<Item = ReplayResult<'_>> {
    events.iter().filter_map(|record| {
        if record.get("type").and_then(Value::as_str) != Some("memstress") {
            return None;
        }
        let line = record.get("event")?;
        (line.get("type").and_then(Value::as_str) == Some("replay_result")).then(|| ReplayResult {
            t_ms: record.get("t_ms").and_then(Value::as_u64),
            step: record.get("step").and_then(Value::as_u64),
            line,
        })
    })
}

/// Whole memstress lines for the lab's own tests, shaped as memstress prints them (the
/// library's types take nothing less).
#[cfg(test)]
pub mod fixture {
    use serde_json::{Value, json};

    const MIB: u64 = 1024 * 1024;

    /// A candidate as a kill or a plan ranks it.
    pub fn ranked(pid: Option<u64>, comm: &str, points: i64, adj: i64, source: &str) -> Value {
        json!({"cgroup_id": null, "comm": comm, "oom_score_adj": adj, "pgtables_kib": 96,
            "pid": pid, "points": points, "points_from": "formula", "rss_kib": 24164,
            "source": source, "swap_kib": 0})
    }

    /// A `plan` line predicting `ranking`.
    pub fn plan(ranking: Vec<Value>) -> Value {
        json!({"type": "plan",
            "bytes_are": "cgroup charge, including each stressor's own process footprint",
            "bytes_per_worker": [300 * MIB], "crosses_limit": true, "fill_to_bytes": null,
            "follow": false, "hold_s": null, "kernel_bytes_per_page": 0, "kind": "anon",
            "mode": "size", "notes": [], "on_oom": "report", "oom_score_adj": null,
            "pattern": "hold", "ramp_s": 3.0, "size": "300Mi",
            "size_from": "total across all workers", "stresschaos": null,
            "stressor_footprint_bytes": 536_576,
            "stressor_user": {"capabilities": "none", "from": "default: nobody",
                "gid": 65534, "uid": 65534},
            "target": {"created": false, "dir": "/sys/fs/cgroup/lab/pod", "kubernetes": null,
                "limit_bytes": 256 * MIB, "limit_from": "/lab/pod", "path": "/lab/pod",
                "usage_bytes": 0, "version": 2, "working_set_bytes": 0},
            "total_bytes": 300 * MIB, "workers": 1,
            "domain": {"kind": "memcg", "cgroup": "/lab/pod", "limit_bytes": 256 * MIB,
                "headroom_bytes": 256 * MIB, "node_available_bytes": 800 * MIB,
                "node_available_from": "root_memcg", "node_mem_available_bytes": 820 * MIB,
                "eviction_threshold_bytes": 100 * MIB, "eviction_after_bytes": 700 * MIB,
                "run_bytes": 300 * MIB, "first": "limit", "allow_node_oom": false},
            "predicted_oom": {"domain": "/lab/pod", "exempt": [], "totalpages": 65536,
                "ranking": ranking}})
    }

    /// An `oom_kill` line as `memstress watch` prints it.
    pub fn kill(pid: u64, comm: &str, points: i64, why: &str, candidates: Vec<Value>) -> Value {
        json!({"type": "oom_kill", "candidates": candidates, "candidates_complete": true,
            "collateral": [], "constraint": "memcg", "cpu": 1,
            "domain": {"cgroup": "/lab/pod", "cgroup_id": 447, "found_by": "oom_control",
                "limit_bytes": 256 * MIB, "source": "kernel", "usage_bytes": 256 * MIB},
            "group_kill": false, "kill_confirmed": true, "oom_control": null, "pressure": null,
            "seq": 1025, "skipped": [], "sources": ["tp_btf", "tracepoint"],
            "time": "2026-11-30T00:47:36.103Z", "totalpages": 65536,
            "trigger": {"cgroup_id": 587, "comm": "memstress-vm", "oom_score_adj": 0,
                "pid": 233, "tid": 233, "uid": 65534},
            "ts_ns": 30_348_033_072_u64,
            "victim": {"anon_rss_kib": 20864, "cgroup": "/lab/pod", "cgroup_id": 552,
                "comm": comm, "file_rss_kib": 0, "oom_score_adj": 0, "pgtables_kib": 96,
                "pid": pid, "points": points, "points_from": "formula", "shmem_rss_kib": 0,
                "source": "kernel", "swap_kib": 0, "tid": pid, "total_vm_kib": 30296, "uid": 0},
            "why": why})
    }

    /// A `replay_result` line: report `report` (its victim `expected`), reproduced with
    /// `chosen` (pid, comm) chosen here; `reason` when they differ.
    pub fn replay_result(
        report: u64,
        expected: (u64, &str),
        chosen: (u64, &str),
        reason: Option<&str>,
    ) -> Value {
        let same = reason.is_none();
        json!({"type": "replay_result", "time": "2026-12-01T10:00:00.000Z", "report": report,
            "line": 3 + report * 40, "same_victim": same,
            "expected": {"pid": expected.0, "comm": expected.1},
            "chosen": {"pid": chosen.0, "comm": chosen.1, "points": 8200,
                "row_pid": if same { expected.0 } else { 77 }, "role": "task"},
            "scale": 1.0, "limit_bytes": 32 * MIB, "adj_offset": 0,
            "tasks": [
                {"row_pid": expected.0, "comm": expected.1, "pid": 555, "bytes": 24 * MIB,
                    "oom_score_adj": 0, "expected_points": 6150, "kernel_points": 6151},
                {"row_pid": 77, "comm": "sh", "pid": 556, "bytes": MIB,
                    "oom_score_adj": 0, "expected_points": 256, "kernel_points": null}],
            "reason": reason, "notes": ["the limit is the report's"]})
    }

    /// A process as a forecast projects it: (pid, comm, points, oom_score_adj, MiB now, MiB
    /// at the OOM).
    pub fn projected(p: (u32, &str, i64, i64, u64, u64)) -> Value {
        json!({"pid": p.0, "comm": p.1, "points": p.2, "oom_score_adj": p.3,
            "memory_kib": p.4 * 1024, "projected_kib": p.5 * 1024})
    }

    /// A forecast naming `victim` ahead of `runner_up` (see [`projected`]), the OOM
    /// `oom_in_ms` away (`None`: none coming), `unreclaimable_mib` of the 320 MiB limit.
    pub fn forecast(
        oom_in_ms: Option<u64>,
        victim: (u32, &str, i64, i64, u64, u64),
        runner_up: (u32, &str, i64, i64, u64, u64),
        unreclaimable_mib: u64,
    ) -> Value {
        json!({"oom_in_ms": oom_in_ms, "victim": projected(victim),
            "runner_up": projected(runner_up), "margin_points": victim.2 - runner_up.2,
            "domain": "/lab/pod", "limit_bytes": 320 * MIB,
            "unreclaimable_bytes": unreclaimable_mib * MIB,
            "growth_bytes_per_s": oom_in_ms.map(|_| 15 * MIB),
            "basis": "unreclaimable memory rising"})
    }

    /// A run's `sample` line at `t_ms` of the run, carrying `forecast`.
    pub fn sample(t_ms: u64, forecast: Value) -> Value {
        json!({"type": "sample", "t_ms": t_ms, "stressors_held_bytes": 0,
            "stressors_charge_bytes": 0, "stressors_alive": 1, "usage_bytes": 0,
            "working_set_bytes": 0, "inactive_file_bytes": 0, "limit_hits": 0,
            "oom_kills": 0, "under_oom": false, "run_limit_hits": 0, "run_oom_kills": 0,
            "limit_bytes": 320 * MIB, "forecast": forecast})
    }

    /// An `oom_kill` line's `forecast`: `predicted` (pid, comm), hit or not, the lead, and the
    /// time-to-OOM check (ahead ms, forecast ms).
    pub fn kill_forecast(
        predicted: (u32, &str),
        hit: bool,
        lead_ms: Option<u64>,
        eta: Option<(u64, Option<u64>)>,
    ) -> Value {
        let eta = eta.map(|(ahead, said)| {
            json!({"ahead_ms": ahead, "forecast_ms": said,
            "error_pct": said.map(|f| {
                ((f as f64 - ahead as f64) / ahead as f64 * 1000.0).round() / 10.0
            })})
        });
        json!({"predicted_pid": predicted.0, "predicted_comm": predicted.1, "hit": hit,
            "lead_ms": lead_ms,
            "missed_because": if hit { None } else { Some("the victim jumped") }, "eta": eta})
    }

    /// The events of a `forecast`-like scenario: `batch` (pid 300, oom_score_adj 650) tops the
    /// ranking until the forecast names the ramped stressor (pid 500) from 3 s on; the kernel
    /// kills the stressor at 12 s; the run's kill line carries `kill_forecast`, its summary
    /// `score`. The scenario's clock starts at CLOCK_MONOTONIC 1 s.
    pub fn forecast_scenario(kill_forecast: Value, score: Value) -> Vec<Value> {
        let record = |t_ms: u64, source: &str, line: Value| {
            json!({"type": "memstress", "t_ms": t_ms, "source": source,
                "step": if source == "run" { Some(0) } else { None }, "event": line})
        };
        let mut ev = vec![
            json!({"type": "scenario", "name": "forecast", "description": "d",
                "kernel": "6.12.117+deb12-cloud-amd64", "kernel_label": "6.12",
                "cgroup_version": 2, "started": "2026-12-01T10:00:00.000Z", "t_ms": 0,
                "monotonic_start_us": 1_000_000}),
            json!({"type": "app", "t_ms": 50, "name": "batch", "event": "started",
                "pid": 300, "oom_score_adj": 650, "cgroup": "pod/batch"}),
            json!({"type": "step", "t_ms": 500, "index": 0, "phase": "start",
                "what": "memstress run -o json --cgroup /lab/pod/leak --size 300Mi --ramp 21s"}),
        ];
        for t in (1000..12_000).step_by(100) {
            let stressor_mib = (t - 1000) * 20 / 1000;
            let usage = (80 + stressor_mib) * MIB;
            ev.push(
                json!({"type": "sample", "t_ms": t, "cgroup": "pod", "usage_bytes": usage,
                "working_set_bytes": usage, "limit_bytes": 320 * MIB}),
            );
            let batch = (300, "batch", 57_777, 650, 16, 16);
            let f = if t < 3000 {
                forecast(
                    None,
                    batch,
                    (500, "memstress-vm", 1000, 0, stressor_mib, stressor_mib),
                    80 + stressor_mib,
                )
            } else {
                forecast(
                    Some(12_000 - t),
                    (500, "memstress-vm", 61_000, 0, stressor_mib, 238),
                    batch,
                    80 + stressor_mib,
                )
            };
            ev.push(record(t, "run", sample(t - 500, f)));
        }
        let mut kill = kill(500, "memstress-vm", 61_000, "the highest points", vec![]);
        kill["ts_ns"] = json!(13_000_000_000_u64);
        ev.push(record(12_030, "watch", kill.clone()));
        kill["forecast"] = kill_forecast;
        kill["stressor"] = json!(true);
        ev.push(record(12_050, "run", kill));
        let mut end = summary("stopped_by_oom");
        end["forecast"] = score;
        ev.push(record(12_100, "run", end));
        ev.push(
            json!({"type": "step", "t_ms": 12_100, "index": 0, "phase": "end",
            "exit_code": 3}),
        );
        ev.push(json!({"type": "dmesg_kill", "t_ms": 12_001, "pid": 500,
            "comm": "memstress-vm", "anon_rss_kb": 240_000, "oom_score_adj": 0,
            "replay_step": null}));
        ev.push(
            json!({"type": "result", "t_ms": 12_500, "passed": true, "skipped": null,
            "duration_ms": 12_500}),
        );
        ev
    }

    /// A run's `summary` forecast score.
    pub fn score(kills: u64, hits: u64, lead_ms: Option<u64>, eta_pct: Option<f64>) -> Value {
        json!({"kills": kills, "hits": hits, "median_lead_ms": lead_ms,
            "median_eta_error_pct": eta_pct})
    }

    /// An `attached` line with one program.
    pub fn attached(program: &str, on: bool) -> Value {
        json!({"type": "attached", "cgroup": null, "unknown_kernel_facts": [], "probes": [
            {"program": program, "kind": "fexit", "hook": "oom_badness",
                "purpose": "every candidate's points", "attached": on}]})
    }

    /// A `summary` line.
    pub fn summary(outcome: &str) -> Value {
        json!({"type": "summary", "outcome": outcome, "requested_bytes": 300 * MIB,
            "charged_bytes": 251 * MIB, "baseline_usage_bytes": 0, "controller_bytes": null,
            "peak_usage_bytes": 256 * MIB,
            "oom_kills_stressors": 1, "oom_kills_others": 1, "oom_kills_outside_target": 0,
            "dropped_records": 0, "fill_ms": null, "fill_to_bytes": null, "follows": 0,
            "held_bytes": 0, "hold_ms": 0, "kernel_peak_scope": "run",
            "kernel_peak_usage_bytes": 256 * MIB, "limit_bytes": 256 * MIB, "restarts": 0,
            "signal": null, "stressor_charge_bytes": 0, "stressors_charged_bytes": null,
            "target": "/lab/pod", "total_ms": 5000})
    }

    #[test]
    fn each_is_a_line_memstress_prints() {
        use memstress::output::line::Line;
        use serde::Deserialize as _;
        for line in [
            plan(vec![ranked(Some(1), "a", 1, 0, "predicted")]),
            kill(1, "a", 1, "why", vec![ranked(Some(1), "a", 1, 0, "kernel")]),
            attached("oom_badness_exit", true),
            summary("completed"),
            sample(
                100,
                forecast(
                    Some(5000),
                    (9, "v", 100, 0, 10, 20),
                    (8, "r", 90, 500, 1, 1),
                    30,
                ),
            ),
            {
                let mut k = kill(1, "a", 1, "why", vec![]);
                k["forecast"] = kill_forecast((1, "a"), true, Some(3000), Some((5000, Some(4800))));
                k
            },
            {
                let mut s = summary("stopped_by_oom");
                s["forecast"] = serde_json::json!({"kills": 1, "hits": 1,
                    "median_lead_ms": 3000, "median_eta_error_pct": 4.0});
                s
            },
        ] {
            Line::deserialize(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        }
    }
}
