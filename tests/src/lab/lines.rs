//! memstress's own lines in a lab recording (`{"type": "memstress", "source", "step", "event"}`),
//! read through the library's line types rather than JSON paths: a field the library renames
//! or retypes breaks the lab at compile time, not silently in a report.

use memstress::output::line::{KillLine, Line};
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
        ] {
            Line::deserialize(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        }
    }
}
