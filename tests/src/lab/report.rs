//! Renders a lab scenario's recorded events (its `events.jsonl`) into what a person would
//! rather look at than read: `report.md` (verdict, facts, expectations, every OOM kill with the
//! candidates it beat, predicted against actual, the OOM forecast against reality, each
//! replayed OOM report) and `timeline.svg` (memory over time, with the steps and the kills
//! marked, and for each kill a run forecast, since when the forecast named its victim and the
//! time-to-OOM forecast made about 5 s before it).
//!
//! Both renderers take the events as recorded and tolerate anything: unknown types, missing or
//! mistyped fields, an empty list. A report is needed most when a scenario went wrong, so
//! rendering one never panics and never gives up on odd input: what it cannot read, it leaves
//! out. memstress's own lines are read through the library's line types ([`super::lines`]),
//! and a kill is written with the library's own words (`who`, `describe_pressure`), so the
//! report says what `memstress watch` says.

use std::{fmt::Write as _, fs, io, path::Path};

use memstress::{
    explain::{Constraint, Ranked, Source, describe_pressure, who},
    forecast::{ForecastScore, Projected},
    output::line::{KillLine, Line, Outcome},
};
use serde_json::Value;

use super::lines::{ForecastSample, ScoredKill, forecast_samples, forecast_scores, scored_kills};

/// `write!` into a `String`, which cannot fail.
macro_rules! put {
    ($out:expr, $($arg:tt)*) => {{
        let _ = write!($out, $($arg)*);
    }};
}

/// `writeln!` into a `String`, which cannot fail.
macro_rules! putln {
    ($out:expr) => {
        $out.push('\n')
    };
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

const MIB: f64 = 1024.0 * 1024.0;

/// Writes `report.md` and `timeline.svg` into `dir` from the scenario's events
/// (the parsed lines of its events.jsonl, in order).
pub fn write_report(dir: &Path, events: &[Value]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join("timeline.svg"), timeline_svg(events))?;
    fs::write(dir.join("report.md"), report_markdown(events))
}

// ---------------------------------------------------------------------------------------------
// Reading the events
// ---------------------------------------------------------------------------------------------

/// The value at `path` under `v`, if there is one and it is not `null`.
fn field<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(v, |v, key| v.get(*key))
        .filter(|v| !v.is_null())
}

/// A scalar at `path` as text (numbers and booleans as JSON writes them).
fn text(v: &Value, path: &[&str]) -> Option<String> {
    match field(v, path)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A finite number at `path`.
fn number(v: &Value, path: &[&str]) -> Option<f64> {
    field(v, path)?.as_f64().filter(|n| n.is_finite())
}

/// The event's time in seconds since the scenario started.
fn seconds(v: &Value) -> Option<f64> {
    number(v, &["t_ms"]).map(|ms| ms / 1000.0)
}

/// One sample of a scenario cgroup, in bytes.
struct Sample {
    t: f64,
    usage: Option<f64>,
    working_set: Option<f64>,
    limit: Option<f64>,
    /// v2 `memory.high` (`None`: `max`, or v1).
    high: Option<f64>,
    /// v2 `memory.pressure` `some` avg10, percent.
    psi: Option<f64>,
}

/// A scenario cgroup's samples, in order.
struct Series {
    name: String,
    samples: Vec<Sample>,
}

struct Step {
    index: Option<String>,
    what: Option<String>,
    start: Option<f64>,
    end: Option<f64>,
    /// Whether its `end` line was seen (which may lack a time).
    ended: bool,
    exit_code: Option<String>,
}

/// A candidate in a kill report or a predicted ranking.
struct Candidate {
    pid: Option<u32>,
    comm: Option<String>,
    points: i64,
    oom_score_adj: Option<i16>,
    source: Source,
}

impl From<&Ranked> for Candidate {
    fn from(r: &Ranked) -> Self {
        Self {
            pid: r.pid,
            comm: r.comm.clone(),
            points: r.points,
            oom_score_adj: r.oom_score_adj,
            source: r.source,
        }
    }
}

/// An OOM kill, from memstress's watch or from the kernel's own `Killed process` line.
#[derive(Default)]
struct Kill {
    t: Option<f64>,
    pid: Option<u32>,
    comm: Option<String>,
    points: Option<i64>,
    cgroup: Option<String>,
    domain: Option<String>,
    constraint: Option<Constraint>,
    totalpages: Option<u64>,
    why: Option<String>,
    group_kill: bool,
    stressor: bool,
    pressure: Option<String>,
    candidates: Vec<Candidate>,
    anon_rss_kb: Option<u64>,
    oom_score_adj: Option<i64>,
}

impl Kill {
    fn from_watch(t: Option<f64>, line: &KillLine) -> Self {
        let k = &line.kill;
        let task = &k.victim.victim.task;
        Self {
            t,
            pid: task.pid,
            comm: task.comm.clone(),
            points: k.victim.points,
            cgroup: k.victim.victim.cgroup.clone(),
            domain: k.domain.as_ref().and_then(|d| d.cgroup.clone()),
            constraint: Some(k.constraint),
            totalpages: k.totalpages,
            why: Some(k.why.clone()),
            group_kill: k.group_kill,
            stressor: line.context.stressor == Some(true),
            pressure: k.pressure.as_ref().and_then(describe_pressure),
            candidates: k.candidates.iter().map(Candidate::from).collect(),
            ..Self::default()
        }
    }

    fn from_dmesg(ev: &Value) -> Self {
        Self {
            t: seconds(ev),
            pid: field(ev, &["pid"])
                .and_then(Value::as_u64)
                .and_then(|p| u32::try_from(p).ok()),
            comm: text(ev, &["comm"]),
            anon_rss_kb: field(ev, &["anon_rss_kb"]).and_then(Value::as_u64),
            oom_score_adj: field(ev, &["oom_score_adj"]).and_then(Value::as_i64),
            ..Self::default()
        }
    }

    /// `pid (comm)`, or whichever of the two is known, as memstress writes it.
    fn who(&self) -> String {
        who(self.pid, self.comm.as_deref())
    }
}

/// A value as memstress's JSON writes it (an enum's word).
fn word(v: &impl serde::Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_owned(),
    }
}

/// A `memstress run` plan's predicted OOM.
struct Plan {
    t: Option<f64>,
    domain: String,
    totalpages: u64,
    ranking: Vec<Candidate>,
}

/// A `memstress run` summary.
struct Summary {
    /// The scenario step that ran it (0-based, as the events carry it).
    step: Option<u64>,
    /// A `memstress replay`'s (its reproduction's stressors), not a `run`'s.
    replay: bool,
    outcome: Outcome,
    requested: u64,
    charged: Option<u64>,
    peak: u64,
    kills_stressors: u32,
    kills_others: u32,
}

/// A task of a replayed report, as its reproduction ran it.
struct ReplayTask {
    row_pid: Option<String>,
    comm: Option<String>,
    pid: Option<String>,
    bytes: Option<f64>,
    oom_score_adj: Option<String>,
    expected_points: Option<String>,
    kernel_points: Option<String>,
}

/// A `replay_result` line: one OOM report of a kernel log, reproduced here. memstress's line
/// types do not know it yet: it is read as JSON.
struct Replay {
    step: Option<u64>,
    report: Option<String>,
    line: Option<String>,
    same_victim: Option<bool>,
    expected: Option<(Option<u32>, Option<String>)>,
    chosen: Option<(Option<u32>, Option<String>)>,
    chosen_points: Option<String>,
    chosen_row: Option<String>,
    chosen_role: Option<String>,
    scale: Option<f64>,
    limit: Option<f64>,
    adj_offset: Option<i64>,
    tasks: Vec<ReplayTask>,
    reason: Option<String>,
    notes: Vec<String>,
}

impl Replay {
    fn from_record(record: &Value, line: &Value) -> Self {
        let party = |path: &str| {
            field(line, &[path]).filter(|v| v.is_object()).map(|v| {
                (
                    field(v, &["pid"])
                        .and_then(Value::as_u64)
                        .and_then(|p| u32::try_from(p).ok()),
                    text(v, &["comm"]),
                )
            })
        };
        let tasks = field(line, &["tasks"])
            .and_then(Value::as_array)
            .map(|tasks| {
                tasks
                    .iter()
                    .filter(|t| t.is_object())
                    .map(|t| ReplayTask {
                        row_pid: text(t, &["row_pid"]),
                        comm: text(t, &["comm"]),
                        pid: text(t, &["pid"]),
                        bytes: number(t, &["bytes"]),
                        oom_score_adj: text(t, &["oom_score_adj"]),
                        expected_points: text(t, &["expected_points"]),
                        kernel_points: text(t, &["kernel_points"]),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            step: field(record, &["step"]).and_then(Value::as_u64),
            report: text(line, &["report"]),
            line: text(line, &["line"]),
            same_victim: field(line, &["same_victim"]).and_then(Value::as_bool),
            expected: party("expected"),
            chosen: party("chosen"),
            chosen_points: text(line, &["chosen", "points"]),
            chosen_row: text(line, &["chosen", "row_pid"]),
            chosen_role: text(line, &["chosen", "role"]),
            scale: number(line, &["scale"]),
            limit: number(line, &["limit_bytes"]),
            adj_offset: field(line, &["adj_offset"]).and_then(Value::as_i64),
            tasks,
            reason: text(line, &["reason"]),
            notes: field(line, &["notes"])
                .and_then(Value::as_array)
                .map(|n| n.iter().filter_map(|n| text(n, &[])).collect())
                .unwrap_or_default(),
        }
    }
}

struct Expectation {
    name: Option<String>,
    expected: Option<String>,
    actual: Option<String>,
    passed: Option<bool>,
}

/// The `result` event.
struct Ended {
    passed: Option<bool>,
    skipped: Option<String>,
    error: Option<String>,
    duration_ms: Option<f64>,
}

enum Verdict {
    Pass,
    Fail,
    Skipped,
    /// No `result` event (the scenario did not finish), or one without `passed`.
    Unknown,
}

impl Verdict {
    fn label(&self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::Skipped => "SKIPPED",
            Self::Unknown => "NO RESULT",
        }
    }

    fn colour(&self) -> &'static str {
        match self {
            Self::Pass => "#1a7f37",
            Self::Fail => "#cf222e",
            Self::Skipped | Self::Unknown => "#9a6700",
        }
    }
}

/// Everything both renderers need, gathered from the events in one pass.
#[derive(Default)]
struct Scenario {
    name: Option<String>,
    description: Option<String>,
    kernel: Option<String>,
    kernel_label: Option<String>,
    cgroup_version: Option<String>,
    started: Option<String>,
    cgroups: Vec<Series>,
    /// Stressor-held bytes over time, one segment per `memstress run`.
    held: Vec<Vec<(f64, f64)>>,
    steps: Vec<Step>,
    /// Kills memstress's watch reported, in time order.
    kills: Vec<Kill>,
    /// The kernel's `Killed process` lines, in time order (but a replay's).
    dmesg: Vec<Kill>,
    /// `Killed process` lines of a replay's reproductions.
    replay_dmesg: usize,
    /// The replayed OOM reports.
    replays: Vec<Replay>,
    plans: Vec<Plan>,
    /// `run --pressure` goals: (metric, percent, from, to) in seconds (`to`: the run's
    /// summary, `None` while it had none).
    goals: Vec<(String, f64, f64, Option<f64>)>,
    summaries: Vec<Summary>,
    /// The kills the runs' forecasts scored, in time order.
    forecast_kills: Vec<ScoredKill>,
    /// The runs' forecasts (`sample` lines).
    forecasts: Vec<ForecastSample>,
    /// The runs' forecast scores (`summary` lines): (step, score).
    forecast_scores: Vec<(Option<u64>, ForecastScore)>,
    expectations: Vec<Expectation>,
    notes: Vec<String>,
    result: Option<Ended>,
    /// The latest time any event mentions, in seconds.
    end: f64,
}

impl Scenario {
    fn parse(events: &[Value]) -> Self {
        let mut s = Self::default();
        // The run (and step) each stressor sample belongs to, so each run's curve starts afresh.
        let mut held_run: Option<(usize, Option<String>)> = None;
        let mut runs = 0usize;
        for ev in events {
            let t = seconds(ev);
            if let Some(t) = t {
                s.end = s.end.max(t);
            }
            match ev.get("type").and_then(Value::as_str) {
                Some("scenario") => {
                    s.name = text(ev, &["name"]);
                    s.description = text(ev, &["description"]);
                    s.kernel = text(ev, &["kernel"]);
                    s.kernel_label = text(ev, &["kernel_label"]);
                    s.cgroup_version = text(ev, &["cgroup_version"]);
                    s.started = text(ev, &["started"]);
                }
                Some("sample") => s.sample(ev, t),
                Some("step") => s.step(ev, t),
                Some("memstress") => {
                    if let Some(line) = ev.get("event")
                        && line.get("type").and_then(Value::as_str) == Some("replay_result")
                    {
                        s.replays.push(Replay::from_record(ev, line));
                        continue;
                    }
                    // Read through memstress's own line types: a line they do not accept is
                    // left out, as anything else unreadable is.
                    let Some(line) = super::lines::line(ev) else {
                        continue;
                    };
                    let source = ev.get("source").and_then(Value::as_str);
                    match (line, source) {
                        (Line::Sample(sample), Some("run")) => {
                            let Some(t) = t else { continue };
                            let run = (runs, text(ev, &["step"]));
                            if held_run.as_ref() != Some(&run) || s.held.is_empty() {
                                s.held.push(Vec::new());
                                held_run = Some(run);
                            }
                            if let Some(segment) = s.held.last_mut() {
                                segment.push((t, sample.stressors_held_bytes as f64));
                            }
                        }
                        // A replay's plans are its sandbox's, not the scenario's.
                        (Line::Plan(plan), source) if source != Some("replay") => {
                            runs += 1;
                            if let (Some(p), Some(t)) = (&plan.pressure, t) {
                                s.goals
                                    .push((p.metric.name().to_owned(), p.goal_pct, t, None));
                            }
                            if let Some(p) = &plan.predicted_oom {
                                s.plans.push(Plan {
                                    t,
                                    domain: p.domain.clone(),
                                    totalpages: p.totalpages,
                                    ranking: p.ranking.iter().map(Candidate::from).collect(),
                                });
                            }
                        }
                        (Line::Summary(summary), _) => {
                            runs += 1;
                            if summary.pressure.is_some()
                                && let Some(goal) = s.goals.iter_mut().rev().find(|g| g.3.is_none())
                            {
                                goal.3 = t;
                            }
                            s.summaries.push(Summary {
                                step: ev.get("step").and_then(Value::as_u64),
                                replay: source == Some("replay"),
                                outcome: summary.outcome,
                                requested: summary.requested_bytes,
                                charged: summary.charged_bytes,
                                peak: summary.peak_usage_bytes,
                                kills_stressors: summary.oom_kills_stressors,
                                kills_others: summary.oom_kills_others,
                            });
                        }
                        // `run` reports its own stressors' kills too; the watch sees every kill
                        // once, so it alone is counted.
                        (Line::OomKill(kill), Some("watch")) => {
                            s.kills.push(Kill::from_watch(t, &kill));
                        }
                        _ => {}
                    }
                }
                Some("dmesg_kill") if field(ev, &["replay_step"]).is_some() => s.replay_dmesg += 1,
                Some("dmesg_kill") => s.dmesg.push(Kill::from_dmesg(ev)),
                Some("expectation") => s.expectations.push(Expectation {
                    name: text(ev, &["name"]),
                    expected: text(ev, &["expected"]),
                    actual: text(ev, &["actual"]),
                    passed: field(ev, &["passed"]).and_then(Value::as_bool),
                }),
                Some("note") => s.notes.extend(text(ev, &["text"])),
                Some("result") => {
                    let duration_ms = number(ev, &["duration_ms"]);
                    if let Some(ms) = duration_ms {
                        s.end = s.end.max(ms / 1000.0);
                    }
                    s.result = Some(Ended {
                        passed: field(ev, &["passed"]).and_then(Value::as_bool),
                        // Only `null` (or absence) means "not skipped"; any reason counts.
                        skipped: field(ev, &["skipped"])
                            .map(|v| text(v, &[]).unwrap_or_else(|| "no reason given".to_owned())),
                        error: text(ev, &["error"]),
                        duration_ms,
                    });
                }
                _ => {}
            }
        }
        // The recorder appends dmesg's kills after the scenario: put them in time order.
        let by_time = |a: &Kill, b: &Kill| {
            a.t.unwrap_or(f64::INFINITY)
                .total_cmp(&b.t.unwrap_or(f64::INFINITY))
        };
        s.kills.sort_by(by_time);
        s.dmesg.sort_by(by_time);
        s.forecast_kills = scored_kills(events);
        s.forecast_kills.sort_by_key(|k| k.t_ms.unwrap_or(u64::MAX));
        s.forecasts = forecast_samples(events);
        s.forecast_scores = forecast_scores(events);
        // In step order (a background run ends after the ones that followed it).
        s.forecast_scores.sort_by_key(|(step, _)| *step);
        s
    }

    /// The forecast a run scored the kill of `pid` with.
    fn forecast_of(&self, pid: Option<u32>) -> Option<&ScoredKill> {
        self.forecast_kills
            .iter()
            .find(|k| pid.is_some() && k.pid == pid)
    }

    /// The forecast of `kill`'s run recorded closest to `t_ms` (within `within` ms), before
    /// the kill.
    fn forecast_near(&self, kill: &ScoredKill, t_ms: u64, within: u64) -> Option<&ForecastSample> {
        let end = kill.t_ms?;
        self.forecasts
            .iter()
            .filter(|f| f.step == kill.step && f.t_ms < end && f.t_ms.abs_diff(t_ms) <= within)
            .min_by_key(|f| f.t_ms.abs_diff(t_ms))
    }

    fn sample(&mut self, ev: &Value, t: Option<f64>) {
        let Some(t) = t else { return };
        let name = text(ev, &["cgroup"]).unwrap_or_else(|| "?".to_owned());
        let sample = Sample {
            t,
            usage: number(ev, &["usage_bytes"]),
            working_set: number(ev, &["working_set_bytes"]),
            limit: number(ev, &["limit_bytes"]),
            high: number(ev, &["memory_high"]),
            psi: number(ev, &["psi_some_avg10"]),
        };
        match self.cgroups.iter_mut().find(|c| c.name == name) {
            Some(series) => series.samples.push(sample),
            None => self.cgroups.push(Series {
                name,
                samples: vec![sample],
            }),
        }
    }

    fn step(&mut self, ev: &Value, t: Option<f64>) {
        let index = text(ev, &["index"]);
        if ev.get("phase").and_then(Value::as_str) == Some("end") {
            let open = self
                .steps
                .iter_mut()
                .rev()
                .find(|s| !s.ended && (index.is_none() || s.index == index));
            let exit_code = text(ev, &["exit_code"]);
            match open {
                Some(step) => {
                    step.end = t;
                    step.ended = true;
                    step.exit_code = exit_code;
                }
                None => self.steps.push(Step {
                    index,
                    what: text(ev, &["what"]),
                    start: None,
                    end: t,
                    ended: true,
                    exit_code,
                }),
            }
        } else {
            self.steps.push(Step {
                index,
                what: text(ev, &["what"]),
                start: t,
                end: None,
                ended: false,
                exit_code: None,
            });
        }
    }

    fn verdict(&self) -> Verdict {
        match &self.result {
            Some(Ended {
                skipped: Some(_), ..
            }) => Verdict::Skipped,
            Some(Ended {
                passed: Some(true), ..
            }) => Verdict::Pass,
            Some(Ended {
                passed: Some(false),
                ..
            }) => Verdict::Fail,
            _ => Verdict::Unknown,
        }
    }

    /// The kills to mark and list as "actual": memstress's when it saw any, else dmesg's.
    fn actual_kills(&self) -> (&[Kill], bool) {
        if self.kills.is_empty() {
            (&self.dmesg, true)
        } else {
            (&self.kills, false)
        }
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("(unnamed scenario)")
    }

    fn kernel_label(&self) -> &str {
        self.kernel_label
            .as_deref()
            .or(self.kernel.as_deref())
            .unwrap_or("unknown kernel")
    }

    /// The duration the result reports, else the latest event's time.
    fn duration(&self) -> f64 {
        self.result
            .as_ref()
            .and_then(|r| r.duration_ms)
            .map_or(self.end, |ms| ms / 1000.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Text helpers
// ---------------------------------------------------------------------------------------------

/// At most `max` characters of `s`, with `…` when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Text for XML content and attribute values: the five specials escaped, and characters XML
/// 1.0 forbids (control characters a `comm` may carry) replaced.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Plain text for Markdown prose and table cells: what Markdown (or a GFM table) would
/// interpret is backslash-escaped, and line breaks are flattened so a cell stays one row.
fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '&' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// The scenario's description, which its author wrote as Markdown (the scenario files put
/// names like `memory.oom.group` in backticks): kept as written, except that raw HTML is
/// neutralised (a `<` outside code spans becomes `&lt;`). Should a code span be left open, the
/// text is escaped as plain text instead, since then there is no telling what is code.
fn md_authored(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    // The length of the backtick run that opened the current code span.
    let mut fence: Option<usize> = None;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '`' => {
                let mut run = 1;
                while chars.next_if_eq(&'`').is_some() {
                    run += 1;
                }
                out.extend(std::iter::repeat_n('`', run));
                fence = match fence {
                    None => Some(run),
                    Some(open) if open == run => None,
                    open => open,
                };
            }
            '<' if fence.is_none() => out.push_str("&lt;"),
            '\n' | '\t' => out.push(c),
            '\r' => {}
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    if fence.is_some() {
        return s.lines().map(md).collect::<Vec<_>>().join("\n");
    }
    out
}

/// An inline code span. In a table cell a `|` must still be escaped (GFM splits cells first).
fn code(s: &str, in_table: bool) -> String {
    let mut body: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if body.trim().is_empty() {
        return "(empty)".to_owned();
    }
    if in_table {
        body = body.replace('|', "\\|");
    }
    // The fence must be longer than any run of backticks inside.
    let longest = body.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    let pad = if body.starts_with('`') || body.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{body}{pad}{fence}")
}

/// A table cell: escaped text, or `—` when unknown.
fn cell(s: Option<&str>) -> String {
    s.map_or_else(|| "—".to_owned(), md)
}

/// A table cell of a number, or `—` when unknown.
fn number_cell(n: Option<impl std::fmt::Display>) -> String {
    n.map_or_else(|| "—".to_owned(), |n| n.to_string())
}

fn mib(bytes: Option<f64>) -> String {
    bytes.map_or_else(|| "n/a".to_owned(), |b| format!("{:.1} MiB", b / MIB))
}

fn secs(t: Option<f64>) -> String {
    t.map_or_else(|| "?".to_owned(), |t| format!("{t:.1} s"))
}

// ---------------------------------------------------------------------------------------------
// report.md
// ---------------------------------------------------------------------------------------------

/// The Markdown report as a string.
pub fn report_markdown(events: &[Value]) -> String {
    let s = Scenario::parse(events);
    let mut out = String::new();
    let verdict = s.verdict();
    putln!(
        out,
        "# {} — {} — {}",
        md(s.name()),
        md(s.kernel_label()),
        verdict.label()
    );
    putln!(out);
    if let Some(result) = &s.result {
        if let Some(reason) = &result.skipped {
            putln!(out, "> **⚠️ SKIPPED:** {}", md(reason));
            putln!(out);
        }
        if let Some(error) = &result.error {
            putln!(out, "> **❌ Error:** {}", md(error));
            putln!(out);
        }
    } else {
        putln!(
            out,
            "> **⚠️ No result:** the events end without a `result` line; the scenario did not \
             finish."
        );
        putln!(out);
    }
    if let Some(description) = s.description.as_deref().filter(|d| !d.trim().is_empty()) {
        putln!(out, "{}", md_authored(description));
        putln!(out);
    }
    facts(&mut out, &s);
    expectations(&mut out, &s);
    kills(&mut out, &s);
    predicted_vs_actual(&mut out, &s);
    forecast_vs_reality(&mut out, &s);
    replays(&mut out, &s);
    node_memory(&mut out, &s, events);
    steps(&mut out, &s);
    if !s.notes.is_empty() {
        putln!(out, "## Notes");
        putln!(out);
        for note in &s.notes {
            putln!(out, "- {}", md(note));
        }
        putln!(out);
    }
    putln!(out, "## Timeline");
    putln!(out);
    putln!(out, "![timeline](timeline.svg)");
    putln!(out);
    putln!(out, "Every recorded event: [events.jsonl](events.jsonl).");
    out
}

fn facts(out: &mut String, s: &Scenario) {
    match (&s.kernel, &s.kernel_label) {
        (Some(kernel), Some(label)) => {
            putln!(out, "- **Kernel:** {} ({})", code(kernel, false), md(label));
        }
        (Some(kernel), None) => putln!(out, "- **Kernel:** {}", code(kernel, false)),
        (None, Some(label)) => putln!(out, "- **Kernel:** {}", md(label)),
        (None, None) => putln!(out, "- **Kernel:** unknown"),
    }
    putln!(
        out,
        "- **cgroup version:** {}",
        s.cgroup_version.as_deref().map_or("unknown".to_owned(), md)
    );
    if let Some(started) = &s.started {
        putln!(out, "- **Started:** {}", md(started));
    }
    putln!(out, "- **Duration:** {}", secs(Some(s.duration())));
    put!(
        out,
        "- **OOM kills:** {} reported by memstress, {} in dmesg",
        s.kills.len(),
        s.dmesg.len()
    );
    if s.replay_dmesg > 0 {
        put!(out, " (and {} by replays' reproductions)", s.replay_dmesg);
    }
    putln!(out);
    let several = s.summaries.len() > 1;
    // In step order (a background run ends after the ones that followed it), numbered from 0
    // as the scenario file's expectations number steps.
    let mut summaries: Vec<&Summary> = s.summaries.iter().collect();
    summaries.sort_by_key(|summary| summary.step);
    for (i, summary) in summaries.into_iter().enumerate() {
        let what = if summary.replay {
            "Replay's stressors"
        } else {
            "Stressors"
        };
        let label = match (several, summary.step) {
            (false, _) => what.to_owned(),
            (true, Some(step)) => format!("{what} (step {step})"),
            (true, None) => format!("{what} (run {})", i + 1),
        };
        put!(
            out,
            "- **{label}:** requested {}, charged {}, peak usage {}",
            mib(Some(summary.requested as f64)),
            mib(summary.charged.map(|b| b as f64)),
            mib(Some(summary.peak as f64))
        );
        putln!(
            out,
            "; outcome {}; OOM kills of stressors {}, of others {}",
            code(&word(&summary.outcome), false),
            summary.kills_stressors,
            summary.kills_others
        );
    }
    putln!(out);
}

fn expectations(out: &mut String, s: &Scenario) {
    putln!(out, "## Expectations");
    putln!(out);
    if s.expectations.is_empty() {
        putln!(out, "None recorded.");
        putln!(out);
        return;
    }
    putln!(out, "| expectation | expected | actual | result |");
    putln!(out, "|---|---|---|:---:|");
    for e in &s.expectations {
        let result = match e.passed {
            Some(true) => "✅",
            Some(false) => "❌",
            None => "—",
        };
        putln!(
            out,
            "| {} | {} | {} | {result} |",
            cell(e.name.as_deref()),
            cell(e.expected.as_deref()),
            cell(e.actual.as_deref())
        );
    }
    putln!(out);
}

fn kills(out: &mut String, s: &Scenario) {
    putln!(out, "## OOM kills");
    putln!(out);
    if s.kills.is_empty() && s.dmesg.is_empty() {
        putln!(out, "None: neither memstress nor dmesg saw one.");
        putln!(out);
        return;
    }
    if s.kills.is_empty() {
        putln!(
            out,
            "memstress reported none; the kernel logged {} (below).",
            s.dmesg.len()
        );
        putln!(out);
    }
    for (i, k) in s.kills.iter().enumerate() {
        put!(out, "### {}. {} — {}", i + 1, secs(k.t), md(&k.who()));
        if k.group_kill {
            put!(out, " — group kill");
        }
        putln!(out);
        putln!(out);
        put!(
            out,
            "- **Victim:** {}, {} points",
            md(&k.who()),
            k.points.map_or("?".to_owned(), |p| p.to_string())
        );
        if k.stressor {
            put!(out, " (a memstress stressor)");
        }
        putln!(out);
        if let Some(f) = s.forecast_of(k.pid) {
            putln!(out, "- **Forecast:** {}", md(&f.forecast.text()));
        }
        putln!(
            out,
            "- **cgroup:** {}",
            k.cgroup
                .as_deref()
                .map_or("unknown".to_owned(), |c| code(c, false))
        );
        put!(
            out,
            "- **Domain:** {}",
            match (&k.domain, k.constraint) {
                (Some(d), _) => code(d, false),
                (None, Some(Constraint::Global)) => "the whole machine".to_owned(),
                (None, _) => "unknown".to_owned(),
            }
        );
        if let Some(c) = &k.constraint {
            put!(out, " ({}", word(c));
            if let Some(pages) = k.totalpages {
                put!(out, ", totalpages {pages}");
            }
            put!(out, ")");
        }
        putln!(out);
        if k.group_kill {
            putln!(
                out,
                "- **Group kill:** killed with the rest of its `memory.oom.group` cgroup, not \
                 chosen on its own"
            );
        }
        if let Some(p) = &k.pressure {
            putln!(out, "- **Pressure:** {}", md(p));
        }
        putln!(out);
        if let Some(why) = &k.why {
            putln!(out, "> {}", md(why));
            putln!(out);
        }
        if !k.candidates.is_empty() {
            candidates_table(out, &k.candidates, 5);
            if k.candidates.len() > 5 {
                putln!(out, "_Top 5 of {} candidates._", k.candidates.len());
            }
            putln!(out);
        }
    }
    if !s.dmesg.is_empty() {
        putln!(out, "### dmesg");
        putln!(out);
        putln!(out, "The kernel's own `Killed process` lines:");
        putln!(out);
        putln!(out, "| time | pid | comm | anon RSS | oom_score_adj |");
        putln!(out, "|---:|---:|---|---:|---:|");
        for k in &s.dmesg {
            putln!(
                out,
                "| {} | {} | {} | {} | {} |",
                secs(k.t),
                number_cell(k.pid),
                k.comm.as_deref().map_or("—".to_owned(), |c| code(c, true)),
                k.anon_rss_kb
                    .map_or("—".to_owned(), |kb| format!("{kb} kB")),
                number_cell(k.oom_score_adj)
            );
        }
        putln!(out);
    }
}

fn candidates_table(out: &mut String, candidates: &[Candidate], max: usize) {
    putln!(out, "| pid | comm | points | oom_score_adj | source |");
    putln!(out, "|---:|---|---:|---:|---|");
    for c in candidates.iter().take(max) {
        putln!(
            out,
            "| {} | {} | {} | {} | {} |",
            number_cell(c.pid),
            c.comm.as_deref().map_or("—".to_owned(), |c| code(c, true)),
            c.points,
            number_cell(c.oom_score_adj),
            word(&c.source)
        );
    }
}

/// Rows of the predicted ranking shown beside the actual kills (beyond those, a ranking of a
/// big domain would only repeat processes that were never in danger).
const RANKING_ROWS: usize = 10;

fn predicted_vs_actual(out: &mut String, s: &Scenario) {
    if s.plans.is_empty() {
        return;
    }
    putln!(out, "## Predicted vs actual");
    putln!(out);
    let (actual, from_dmesg) = s.actual_kills();
    if from_dmesg && !actual.is_empty() {
        putln!(
            out,
            "The actual kills are dmesg's (memstress reported none)."
        );
        putln!(out);
    }
    for (i, plan) in s.plans.iter().enumerate() {
        // The kills a plan predicted are those before the next plan.
        let next = s.plans.get(i + 1).and_then(|p| p.t);
        let kills: Vec<&Kill> = actual
            .iter()
            .filter(|k| match k.t {
                Some(t) => plan.t.is_none_or(|p| t >= p) && next.is_none_or(|n| t < n),
                None => true,
            })
            .collect();
        if s.plans.len() > 1 {
            putln!(out, "### Plan {} (at {})", i + 1, secs(plan.t));
            putln!(out);
        }
        putln!(
            out,
            "Predicted for domain {}, totalpages {}.",
            code(&plan.domain, false),
            plan.totalpages
        );
        putln!(out);
        putln!(
            out,
            "| # | predicted: comm (points) | actual kill: comm (pid) | same |"
        );
        putln!(out, "|---:|---|---|:---:|");
        let shown = plan.ranking.len().min(RANKING_ROWS);
        for row in 0..shown.max(kills.len()) {
            let predicted = plan.ranking.get(row).filter(|_| row < shown);
            let kill = kills.get(row);
            let left = predicted.map_or(String::new(), |c| {
                format!(
                    "{} ({})",
                    c.comm.as_deref().map_or("?".to_owned(), |c| code(c, true)),
                    c.points
                )
            });
            let right = kill.map_or(String::new(), |k| {
                format!(
                    "{} ({})",
                    k.comm.as_deref().map_or("?".to_owned(), |c| code(c, true)),
                    k.pid.map_or("?".to_owned(), |p| p.to_string())
                )
            });
            let same = match (predicted, kill) {
                (Some(p), Some(k)) => {
                    // A prediction may name no pid (a stressor not yet started): then the comm
                    // decides.
                    let same = match (&p.pid, &k.pid) {
                        (Some(a), Some(b)) => a == b,
                        _ => p.comm.is_some() && p.comm == k.comm,
                    };
                    if same { "✅" } else { "❌" }
                }
                _ => "",
            };
            putln!(out, "| {} | {left} | {right} | {same} |", row + 1);
        }
        if plan.ranking.len() > shown {
            putln!(
                out,
                "\n_Predicted ranking: top {shown} of {}._",
                plan.ranking.len()
            );
        }
        putln!(out);
    }
}

/// How long before a kill the forecast is shown (ms), besides its first.
const FORECAST_CHECKPOINTS_MS: [u64; 6] = [15_000, 10_000, 5_000, 3_000, 2_000, 1_000];

fn ms_secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// `comm` (pid) points (now N): a projected process, with its points as it is now (its
/// projected growth taken off).
fn projected_cell(p: Option<&Projected>) -> String {
    let Some(p) = p else {
        return "—".to_owned();
    };
    let page_kib = (memstress::size::page_size() / 1024).max(1);
    let growth =
        i64::try_from(p.projected_kib.saturating_sub(p.memory_kib) / page_kib).unwrap_or(i64::MAX);
    let now = p.points.saturating_sub(growth);
    let mut cell = format!("{} ({}) {}", code(&p.comm, true), p.pid, p.points);
    if now != p.points {
        put!(cell, " (now {now})");
    }
    cell
}

fn forecast_vs_reality(out: &mut String, s: &Scenario) {
    if s.forecast_kills.is_empty() && s.forecast_scores.is_empty() {
        return;
    }
    putln!(out, "## Forecast vs reality");
    putln!(out);
    putln!(
        out,
        "Every `sample` line of a run forecasts its OOM domain's next kill: when the memory \
         reclaim cannot free (usage less page cache) reaches the limit at its recent growth, \
         and whom the kernel's formula chooses then, on each process's memory projected to \
         that moment. Each kill is scored against the last forecast before it; the lead is \
         how long the forecasts had named its victim without interruption; the time-to-OOM \
         forecast made about 5 s before it is checked against the truth. Below, a process's \
         points are on its memory projected to the OOM; _now_, on its memory at the time."
    );
    putln!(out);
    if s.forecast_kills.is_empty() {
        putln!(out, "No OOM kill in a forecast domain.");
        putln!(out);
    } else {
        putln!(
            out,
            "| # | run of step | kill at | victim | forecast named | hit | lead | named since | time to OOM forecast ~5 s before |"
        );
        putln!(out, "|---:|---:|---:|---|---|:---:|---:|---:|---|");
        for (i, k) in s.forecast_kills.iter().enumerate() {
            let f = &k.forecast;
            let actual = match (&k.comm, k.pid) {
                (Some(c), Some(p)) => format!("{} ({p})", code(c, true)),
                _ => md(&who(k.pid, k.comm.as_deref())),
            };
            let predicted = match (&f.predicted_comm, f.predicted_pid) {
                (Some(c), Some(p)) => format!("{} ({p})", code(c, true)),
                (None, Some(p)) => p.to_string(),
                _ => "nobody".to_owned(),
            };
            let eta = match &f.eta {
                None => "none made 4-6 s before".to_owned(),
                Some(e) => match (e.forecast_ms, e.error_pct) {
                    (Some(said), Some(error)) => format!(
                        "{} before: {} forecast ({error:+.1}%)",
                        ms_secs(e.ahead_ms),
                        ms_secs(said)
                    ),
                    _ => format!("{} before: no OOM coming", ms_secs(e.ahead_ms)),
                },
            };
            putln!(
                out,
                "| {} | {} | {} | {actual} | {predicted} | {} | {} | {} | {eta} |",
                i + 1,
                number_cell(k.step),
                secs(k.t_ms.map(|t| t as f64 / 1000.0)),
                if f.hit { "✅" } else { "❌" },
                f.lead_ms.map_or("—".to_owned(), ms_secs),
                k.named_since_ms.map_or("—".to_owned(), ms_secs)
            );
        }
        putln!(out);
    }
    for (step, score) in &s.forecast_scores {
        let label = step.map_or("A run".to_owned(), |s| format!("Step {s}'s run"));
        putln!(out, "- **{label}:** {}", md(&score.text()));
    }
    if !s.forecast_scores.is_empty() {
        putln!(out);
    }
    for (i, k) in s.forecast_kills.iter().enumerate() {
        let Some(end) = k.t_ms else { continue };
        putln!(
            out,
            "### Kill {}: {} — what the forecast of step {}'s run said before it",
            i + 1,
            md(&who(k.pid, k.comm.as_deref())),
            number_cell(k.step)
        );
        putln!(out);
        if let Some(why) = &k.forecast.missed_because {
            putln!(out, "> **Missed:** {}", md(why));
            putln!(out);
        }
        let first = s
            .forecasts
            .iter()
            .find(|f| f.step == k.step && f.t_ms < end);
        let mut rows: Vec<&ForecastSample> = first.into_iter().collect();
        for ahead in FORECAST_CHECKPOINTS_MS {
            let Some(at) = end.checked_sub(ahead) else {
                continue;
            };
            if let Some(f) = s.forecast_near(k, at, 250)
                && rows.iter().all(|r| r.t_ms < f.t_ms)
            {
                rows.push(f);
            }
        }
        if rows.is_empty() {
            putln!(out, "No forecast before it.");
            putln!(out);
            continue;
        }
        putln!(
            out,
            "| before the kill | OOM in (forecast) | error | victim, points at the OOM | runner-up | margin | unreclaimable / limit |"
        );
        putln!(out, "|---:|---:|---:|---|---|---:|---|");
        for f in rows {
            let truth = end.saturating_sub(f.t_ms);
            let fc = &f.forecast;
            let (when, error) = match fc.oom_in_ms {
                Some(ms) => (
                    ms_secs(ms),
                    format!(
                        "{:+.0}%",
                        (ms as f64 - truth as f64) / truth.max(1) as f64 * 100.0
                    ),
                ),
                None => ("none coming".to_owned(), "—".to_owned()),
            };
            // Never `-0%`.
            let error = if error == "-0%" || error == "+0%" {
                "0%".to_owned()
            } else {
                error
            };
            putln!(
                out,
                "| {} | {when} | {error} | {} | {} | {} | {} of {} |",
                ms_secs(truth),
                projected_cell(fc.victim.as_ref()),
                projected_cell(fc.runner_up.as_ref()),
                fc.margin_points
                    .map_or("—".to_owned(), |m| format!("{m:+}")),
                mib(Some(fc.unreclaimable_bytes as f64)),
                mib(Some(fc.limit_bytes as f64))
            );
        }
        putln!(out);
    }
}

fn replays(out: &mut String, s: &Scenario) {
    if s.replays.is_empty() {
        return;
    }
    putln!(out, "## Replay");
    putln!(out);
    putln!(
        out,
        "Each OOM report of the kernel log, reproduced here: its tasks at the report's sizes \
         in a sandbox cgroup at the report's limit (both times the scale), until the kernel \
         chooses a victim."
    );
    putln!(out);
    let party = |p: &Option<(Option<u32>, Option<String>)>| match p {
        Some((pid, comm)) => md(&who(*pid, comm.as_deref())),
        None => "none".to_owned(),
    };
    for r in &s.replays {
        put!(
            out,
            "### Report {}",
            r.report.as_deref().map_or("?".to_owned(), md)
        );
        let mut whence = Vec::new();
        if let Some(line) = &r.line {
            whence.push(format!("line {}", md(line)));
        }
        if let Some(step) = r.step {
            whence.push(format!("step {step}"));
        }
        if !whence.is_empty() {
            put!(out, " ({})", whence.join(", "));
        }
        putln!(
            out,
            " — {}",
            match r.same_victim {
                Some(true) => "same victim ✅",
                Some(false) => "a different victim ❌",
                None => "no verdict",
            }
        );
        putln!(out);
        putln!(
            out,
            "- **Kernel's victim (the report):** {}",
            party(&r.expected)
        );
        put!(out, "- **Chosen here:** {}", party(&r.chosen));
        if let Some(points) = &r.chosen_points {
            put!(out, ", {} points", md(points));
        }
        let mut of = Vec::new();
        if let Some(row) = &r.chosen_row {
            of.push(format!("row {} of the report", md(row)));
        }
        if let Some(role) = &r.chosen_role {
            of.push(format!("role {}", md(role)));
        }
        if !of.is_empty() {
            put!(out, " ({})", of.join(", "));
        }
        putln!(out);
        put!(
            out,
            "- **Scale:** {}; **limit:** {}",
            r.scale.map_or("?".to_owned(), |x| format!("{x}")),
            mib(r.limit)
        );
        if let Some(offset) = r.adj_offset.filter(|o| *o != 0) {
            put!(out, "; **oom_score_adj offset:** {offset:+}");
        }
        putln!(out);
        putln!(out);
        if r.same_victim != Some(true) {
            putln!(
                out,
                "> **Why not the same:** {}",
                r.reason.as_deref().map_or("no reason given".to_owned(), md)
            );
            putln!(out);
        }
        if !r.tasks.is_empty() {
            putln!(
                out,
                "| row pid | comm | pid here | bytes | oom_score_adj | expected points | kernel points |"
            );
            putln!(out, "|---:|---|---:|---:|---:|---:|---:|");
            for t in &r.tasks {
                putln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    cell(t.row_pid.as_deref()),
                    t.comm.as_deref().map_or("—".to_owned(), |c| code(c, true)),
                    cell(t.pid.as_deref()),
                    t.bytes.map_or("—".to_owned(), |b| mib(Some(b))),
                    cell(t.oom_score_adj.as_deref()),
                    cell(t.expected_points.as_deref()),
                    cell(t.kernel_points.as_deref())
                );
            }
            putln!(out);
        }
        for note in &r.notes {
            putln!(out, "- {}", md(note));
        }
        if !r.notes.is_empty() {
            putln!(out);
        }
    }
}

/// The node's memory by step, where the lab read it (`node_sample`): its `memory.available`
/// as the kubelet computes it and the kernel's MemAvailable, beside what the runs' `sample`
/// lines said.
fn node_memory(out: &mut String, s: &Scenario, events: &[Value]) {
    let t = |e: &Value| number(e, &["t_ms"]).map(|ms| ms / 1000.0);
    let lab: Vec<(f64, Option<f64>, Option<f64>)> = events
        .iter()
        .filter(|e| e["type"] == "node_sample")
        .filter_map(|e| {
            Some((
                t(e)?,
                number(e, &["available_bytes"]),
                number(e, &["mem_available_bytes"]),
            ))
        })
        .collect();
    if lab.is_empty() {
        return;
    }
    let runs: Vec<(f64, f64)> = events
        .iter()
        .filter(|e| e["type"] == "memstress" && e["source"] == "run")
        .filter(|e| e["event"]["type"] == "sample")
        .filter_map(|e| Some((t(e)?, number(e, &["event", "node_available_bytes"])?)))
        .collect();
    let range = |v: &mut dyn Iterator<Item = f64>| {
        v.fold(None, |r: Option<(f64, f64)>, x| {
            Some(r.map_or((x, x), |(lo, hi)| (lo.min(x), hi.max(x))))
        })
        .map_or_else(
            || "—".to_owned(),
            |(lo, hi)| format!("{} – {}", mib(Some(lo)), mib(Some(hi))),
        )
    };
    putln!(out, "## The node's memory");
    putln!(out);
    putln!(
        out,
        "`memory.available` as the kubelet computes it (MemTotal − the root cgroup's working \
         set), read by the lab every 100 ms, beside the runs' own `node_available_bytes`; \
         MemAvailable is the kernel's."
    );
    putln!(out);
    putln!(
        out,
        "| # | step | memory.available (lab) | MemAvailable (lab) | memory.available (runs) |"
    );
    putln!(out, "|---:|---|---|---|---|");
    for step in &s.steps {
        let (Some(start), Some(end)) = (step.start, step.end) else {
            continue;
        };
        let inside = |at: f64| at >= start && at <= end;
        putln!(
            out,
            "| {} | {} | {} | {} | {} |",
            cell(step.index.as_deref()),
            step.what
                .as_deref()
                .map_or("—".to_owned(), |w| code(w, true)),
            range(&mut lab.iter().filter(|r| inside(r.0)).filter_map(|r| r.1)),
            range(&mut lab.iter().filter(|r| inside(r.0)).filter_map(|r| r.2)),
            range(&mut runs.iter().filter(|r| inside(r.0)).map(|r| r.1)),
        );
    }
    putln!(out);
}

fn steps(out: &mut String, s: &Scenario) {
    if s.steps.is_empty() {
        return;
    }
    putln!(out, "## Steps");
    putln!(out);
    putln!(out, "| # | start | end | exit | step |");
    putln!(out, "|---:|---:|---:|---:|---|");
    for step in &s.steps {
        putln!(
            out,
            "| {} | {} | {} | {} | {} |",
            cell(step.index.as_deref()),
            secs(step.start),
            secs(step.end),
            cell(step.exit_code.as_deref()),
            step.what
                .as_deref()
                .map_or("—".to_owned(), |w| code(w, true))
        );
    }
    putln!(out);
}

// ---------------------------------------------------------------------------------------------
// timeline.svg
// ---------------------------------------------------------------------------------------------

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 480.0;
const PLOT_LEFT: f64 = 72.0;
const PLOT_RIGHT: f64 = 756.0;
const PLOT_BOTTOM: f64 = 428.0;
const LEGEND_LEFT: f64 = 770.0;
/// Where the step labels' band starts (below the title and subtitle).
const BAND_TOP: f64 = 58.0;
const BAND_ROW: f64 = 13.0;
const BAND_ROWS: usize = 3;
const FONT: &str = "DejaVu Sans, Helvetica, Arial, sans-serif";
/// Average glyph width per pixel of font size, to fit labels without measuring text.
const GLYPH: f64 = 0.6;
/// memory.high's dash (dash-dot), and PSI's.
const HIGH_DASH: &str = "8 3 2 3";
const PSI_DASH: &str = "2 2";
/// A `--pressure` goal, at its percent on PSI's scale.
const GOAL_DASH: &str = "6 2";

/// Whether any cgroup's PSI was sampled (v2): the timeline then plots it.
fn psi_shown(s: &Scenario) -> bool {
    s.cgroups
        .iter()
        .any(|c| c.samples.iter().any(|p| p.psi.is_some()))
}
/// Cgroup colours: distinct, and none of them the stressors' orange or the kills' red.
const PALETTE: [&str; 8] = [
    "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22",
];
const HELD: &str = "#ff7f0e";
const KILL: &str = "#d62728";
const GROUP_KILL: &str = "#8b0000";
const STEP: &str = "#b8b8b8";
/// The forecast's marks: since when it named a kill's victim, and its time-to-OOM.
const FORECAST: &str = "#00695c";
/// A limit more than this many times the highest usage would flatten every curve to the axis:
/// it is left off the chart (and the legend says so).
const LIMIT_ZOOM: f64 = 4.0;
const LEGEND_CGROUPS: usize = 8;

/// A step of 1, 2 or 5 × 10ⁿ that cuts `range` into about `target` parts.
fn nice_step(range: f64, target: f64) -> f64 {
    let raw = range / target;
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let norm = raw / magnitude;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// Multiples of `step` from 0 to `max` (bounded, whatever the input).
fn ticks(max: f64, step: f64) -> Vec<f64> {
    let n = (max / step + 1e-9).floor().clamp(0.0, 100.0) as usize;
    (0..=n).map(|i| i as f64 * step).collect()
}

/// Decimals that tell ticks `step` apart.
fn decimals(step: f64) -> usize {
    if step >= 1.0 || !step.is_finite() || step <= 0.0 {
        0
    } else {
        (-step.log10().floor()).clamp(0.0, 6.0) as usize
    }
}

/// A linear map from `[0, max]` onto `[from, to]`, clamped to that range.
struct Axis {
    max: f64,
    from: f64,
    to: f64,
}

impl Axis {
    fn at(&self, v: f64) -> f64 {
        let f = (v / self.max).clamp(0.0, 1.0);
        let f = if f.is_finite() { f } else { 0.0 };
        self.from + f * (self.to - self.from)
    }
}

/// Path data through the points, starting a new subpath after each gap (`None`).
fn path_data(points: impl IntoIterator<Item = Option<(f64, f64)>>) -> String {
    let mut d = String::new();
    let mut run = 0usize;
    let end_run = |d: &mut String, run: usize| {
        // A lone point draws nothing: give it a stub so it shows.
        if run == 1 {
            d.push_str(" h1");
        }
    };
    for p in points {
        match p {
            Some((x, y)) => {
                put!(d, "{}{x:.1},{y:.1}", if run == 0 { " M" } else { " L" });
                run += 1;
            }
            None => {
                end_run(&mut d, run);
                run = 0;
            }
        }
    }
    end_run(&mut d, run);
    d.trim_start().to_owned()
}

/// A step label placed in the band above the plot.
struct Placed {
    x: f64,
    row: usize,
    text: String,
}

/// Places step labels left to right in the band's rows, each in the first row where it does
/// not overprint its predecessor. When every row is taken, it goes where the earlier label
/// ends soonest, and that label is cut short (down to its step's index) to make room.
fn place_step_labels(steps: &[(f64, String, String)]) -> Vec<Placed> {
    const GAP: f64 = 6.0;
    let char_w = 10.0 * GLYPH;
    let end = |p: &Placed| p.x + p.text.chars().count() as f64 * char_w;
    let mut placed: Vec<Placed> = Vec::new();
    // Per row: the latest label in it (an index into `placed` and `steps`).
    let mut last: [Option<usize>; BAND_ROWS] = [None; BAND_ROWS];
    for (x, _, full) in steps {
        let x = x + 2.0;
        let ends = last.map(|l| l.map_or(f64::NEG_INFINITY, |i| end(&placed[i])));
        let row = (0..BAND_ROWS)
            .find(|&r| ends[r] + GAP <= x)
            .or_else(|| (0..BAND_ROWS).min_by(|&a, &b| ends[a].total_cmp(&ends[b])))
            .unwrap_or(0);
        if let Some(i) = last[row]
            && ends[row] + GAP > x
        {
            let (_, index, full) = &steps[i];
            let fit = ((x - GAP - placed[i].x) / char_w).floor().max(0.0) as usize;
            // Less than a few characters of the command says nothing: the index alone then.
            placed[i].text = if fit >= index.chars().count() + 6 {
                truncate(full, fit)
            } else {
                index.clone()
            };
        }
        let room = ((WIDTH - 6.0 - x) / char_w).floor().max(1.0) as usize;
        placed.push(Placed {
            x,
            row,
            text: truncate(full, room.min(48)),
        });
        last[row] = Some(placed.len() - 1);
    }
    placed
}

/// The SVG timeline as a string (write_report writes it to timeline.svg).
pub fn timeline_svg(events: &[Value]) -> String {
    let s = Scenario::parse(events);
    let mut out = String::new();
    putln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="{FONT}" font-size="11">"#
    );
    putln!(
        out,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );

    // Scales. The y axis fits the usage, working sets and stressors, and the limits unless one
    // is so far above them that it would squash everything else.
    let data_max = s
        .cgroups
        .iter()
        .flat_map(|c| c.samples.iter())
        .flat_map(|p| [p.usage, p.working_set])
        .flatten()
        .chain(s.held.iter().flatten().map(|&(_, b)| b))
        .fold(0.0, f64::max);
    let fits = |limit: f64| data_max <= 0.0 || limit <= data_max * LIMIT_ZOOM;
    let scale_max = s
        .cgroups
        .iter()
        .flat_map(|c| c.samples.iter())
        .flat_map(|p| [p.limit, p.high])
        .flatten()
        .filter(|&l| fits(l))
        .fold(data_max, f64::max);
    let top_mib = if scale_max > 0.0 {
        scale_max / MIB * 1.08
    } else {
        100.0
    };
    let y_step = nice_step(top_mib, 6.0);
    let y_max = ((top_mib / y_step).ceil() * y_step).min(f64::MAX);
    let t_max = if s.end > 0.0 { s.end } else { 1.0 };
    let x_step = nice_step(t_max, 9.0);
    let x = Axis {
        max: t_max,
        from: PLOT_LEFT,
        to: PLOT_RIGHT,
    };

    // The step labels decide how far down the plot starts.
    let step_marks: Vec<(f64, String, String)> = s
        .steps
        .iter()
        .filter_map(|st| {
            let t = st.start?;
            let index = st.index.clone().unwrap_or_else(|| "?".to_owned());
            let full = match &st.what {
                Some(what) => format!("{index}: {what}"),
                None => index.clone(),
            };
            Some((x.at(t), index, full))
        })
        .collect();
    let labels = place_step_labels(&step_marks);
    let rows = labels.iter().map(|l| l.row + 1).max().unwrap_or(0);
    let plot_top = BAND_TOP + rows as f64 * BAND_ROW + if rows > 0 { 8.0 } else { 4.0 };
    let y = Axis {
        max: y_max,
        from: PLOT_BOTTOM,
        to: plot_top,
    };
    let yb = |bytes: f64| y.at(bytes / MIB);

    // Grid and tick labels.
    for v in ticks(y_max, y_step) {
        let py = y.at(v);
        putln!(
            out,
            r##"<line x1="{PLOT_LEFT}" y1="{py:.1}" x2="{PLOT_RIGHT}" y2="{py:.1}" stroke="#e6e6e6"/>"##
        );
        putln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#333">{v:.*}</text>"##,
            PLOT_LEFT - 7.0,
            py + 4.0,
            decimals(y_step)
        );
    }
    for v in ticks(t_max, x_step) {
        let px = x.at(v);
        putln!(
            out,
            r##"<line x1="{px:.1}" y1="{plot_top:.1}" x2="{px:.1}" y2="{PLOT_BOTTOM}" stroke="#f0f0f0"/>"##
        );
        putln!(
            out,
            r##"<line x1="{px:.1}" y1="{PLOT_BOTTOM}" x2="{px:.1}" y2="{:.1}" stroke="#333"/>"##,
            PLOT_BOTTOM + 5.0
        );
        putln!(
            out,
            r##"<text x="{px:.1}" y="{:.1}" text-anchor="middle" fill="#333">{v:.*}</text>"##,
            PLOT_BOTTOM + 18.0,
            decimals(x_step)
        );
    }

    // Steps: a grey line from each label down through the plot.
    for l in &labels {
        let top = BAND_TOP + l.row as f64 * BAND_ROW + 2.0;
        putln!(
            out,
            r#"<line x1="{:.1}" y1="{top:.1}" x2="{:.1}" y2="{PLOT_BOTTOM}" stroke="{STEP}" stroke-width="1"/>"#,
            l.x - 2.0,
            l.x - 2.0
        );
    }

    // Stressors' held bytes, under the cgroup lines.
    for segment in &s.held {
        let (Some(first), Some(last)) = (segment.first(), segment.last()) else {
            continue;
        };
        let line = path_data(segment.iter().map(|&(t, b)| Some((x.at(t), yb(b)))));
        putln!(
            out,
            r#"<path d="M{:.1},{PLOT_BOTTOM} L{} L{:.1},{PLOT_BOTTOM} Z" fill="{HELD}" fill-opacity="0.18" stroke="none"/>"#,
            x.at(first.0),
            line.trim_start_matches('M').replace(" M", " L"),
            x.at(last.0)
        );
        putln!(
            out,
            r#"<path d="{line}" fill="none" stroke="{HELD}" stroke-width="2.5" stroke-linejoin="round"/>"#
        );
    }

    // Cgroups: limit (dotted, stepwise), working set (dashed), usage (solid).
    let mut off_chart = vec![false; s.cgroups.len()];
    for (i, c) in s.cgroups.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let mut limit = String::new();
        let mut open = false;
        for p in &c.samples {
            match p.limit {
                Some(l) if fits(l) => {
                    let (px, py) = (x.at(p.t), yb(l));
                    if open {
                        put!(limit, " H{px:.1} V{py:.1}");
                    } else {
                        put!(limit, " M{px:.1},{py:.1}");
                        open = true;
                    }
                }
                Some(_) => {
                    off_chart[i] = true;
                    open = false;
                }
                None => open = false,
            }
        }
        if !limit.is_empty() {
            putln!(
                out,
                r#"<path d="{}" fill="none" stroke="{colour}" stroke-width="1.2" stroke-dasharray="1.5 3"/>"#,
                limit.trim_start()
            );
        }
        let ws = path_data(
            c.samples
                .iter()
                .map(|p| p.working_set.map(|b| (x.at(p.t), yb(b)))),
        );
        if !ws.is_empty() {
            putln!(
                out,
                r#"<path d="{ws}" fill="none" stroke="{colour}" stroke-width="1.5" stroke-dasharray="6 4"/>"#
            );
        }
        let usage = path_data(
            c.samples
                .iter()
                .map(|p| p.usage.map(|b| (x.at(p.t), yb(b)))),
        );
        if !usage.is_empty() {
            putln!(
                out,
                r#"<path d="{usage}" fill="none" stroke="{colour}" stroke-width="2" stroke-linejoin="round"/>"#
            );
        }
    }
    // memory.high (dash-dot, stepwise) where it is set, and PSI some avg10 (thin, on a
    // 0-100 % scale of its own, labelled inside the right edge).
    for (i, c) in s.cgroups.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let mut high = String::new();
        let mut open = false;
        for p in &c.samples {
            match p.high.filter(|&h| fits(h)) {
                Some(h) => {
                    let (px, py) = (x.at(p.t), yb(h));
                    if open {
                        put!(high, " H{px:.1} V{py:.1}");
                    } else {
                        put!(high, " M{px:.1},{py:.1}");
                        open = true;
                    }
                }
                None => open = false,
            }
        }
        if !high.is_empty() {
            putln!(
                out,
                r#"<path d="{}" fill="none" stroke="{colour}" stroke-width="1.4" stroke-dasharray="{HIGH_DASH}"/>"#,
                high.trim_start()
            );
        }
    }
    if psi_shown(&s) {
        let yp = |pct: f64| PLOT_BOTTOM - pct.clamp(0.0, 100.0) / 100.0 * (PLOT_BOTTOM - plot_top);
        for pct in [50.0, 100.0] {
            putln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#777" font-size="10">PSI {pct:.0}%</text>"##,
                PLOT_RIGHT - 3.0,
                yp(pct) + 10.0
            );
        }
        for (_, pct, from, to) in &s.goals {
            putln!(
                out,
                r##"<path d="M{:.1},{:.1} H{:.1}" fill="none" stroke="#555" stroke-width="1" stroke-dasharray="{GOAL_DASH}"/>"##,
                x.at(*from),
                yp(*pct),
                x.at(to.unwrap_or(s.end))
            );
        }
        for (i, c) in s.cgroups.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let psi = path_data(c.samples.iter().map(|p| p.psi.map(|v| (x.at(p.t), yp(v)))));
            if !psi.is_empty() {
                putln!(
                    out,
                    r#"<path d="{psi}" fill="none" stroke="{colour}" stroke-width="1" stroke-opacity="0.8" stroke-dasharray="{PSI_DASH}"/>"#
                );
            }
        }
    }
    if s.cgroups.is_empty() && s.held.is_empty() {
        putln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#888" font-size="14">no samples recorded</text>"##,
            (PLOT_LEFT + PLOT_RIGHT) / 2.0,
            (plot_top + PLOT_BOTTOM) / 2.0
        );
    }

    // Axes.
    putln!(
        out,
        r##"<path d="M{PLOT_LEFT},{plot_top:.1} V{PLOT_BOTTOM} H{PLOT_RIGHT}" fill="none" stroke="#333"/>"##
    );
    putln!(
        out,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#333" font-size="12">time (s)</text>"##,
        (PLOT_LEFT + PLOT_RIGHT) / 2.0,
        HEIGHT - 14.0
    );
    putln!(
        out,
        r##"<text transform="translate(20,{:.1}) rotate(-90)" text-anchor="middle" fill="#333" font-size="12">MiB</text>"##,
        (plot_top + PLOT_BOTTOM) / 2.0
    );

    forecast_markers(&mut out, &s, &x, &y);
    let (kills, from_dmesg) = s.actual_kills();
    kill_markers(&mut out, kills, &x, plot_top);

    // Step labels last among the plot's texts, over everything, with a white halo.
    for l in &labels {
        putln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="10" fill="#555" stroke="white" stroke-width="3" paint-order="stroke">{}</text>"##,
            l.x,
            BAND_TOP + l.row as f64 * BAND_ROW + 10.0,
            xml(&l.text)
        );
    }

    legend(&mut out, &s, &off_chart, kills, from_dmesg, plot_top);

    // Title and subtitle.
    let verdict = s.verdict();
    putln!(
        out,
        r##"<text x="16" y="28" font-size="18" font-weight="bold" fill="#222">{} — {} — <tspan fill="{}">{}</tspan></text>"##,
        xml(&truncate(s.name(), 48)),
        xml(&truncate(s.kernel_label(), 24)),
        verdict.colour(),
        verdict.label()
    );
    let mut sub = Vec::new();
    if let Some(k) = &s.kernel {
        sub.push(format!("kernel {k}"));
    }
    if let Some(v) = &s.cgroup_version {
        sub.push(format!("cgroup v{v}"));
    }
    if let Some(started) = &s.started {
        sub.push(format!("started {started}"));
    }
    sub.push(format!("{:.1} s", s.duration()));
    if let Some(reason) = s.result.as_ref().and_then(|r| r.skipped.as_ref()) {
        sub.push(format!("skipped: {reason}"));
    }
    if let Some(error) = s.result.as_ref().and_then(|r| r.error.as_ref()) {
        sub.push(format!("error: {error}"));
    }
    let room = ((WIDTH - 32.0) / (11.0 * GLYPH)) as usize;
    putln!(
        out,
        r##"<text x="16" y="46" fill="#555">{}</text>"##,
        xml(&truncate(&sub.join(" · "), room))
    );
    out.push_str("</svg>\n");
    out
}

/// For each kill a run's forecast scored: a dashed line from when the forecasts started
/// naming its victim (the uninterrupted stretch of the run's samples before the kill), with
/// an arrow to the kill near the bottom of the plot; and the time-to-OOM forecast made about
/// 5 s before it, drawn as the straight line it extrapolated, from the unreclaimable memory
/// then to the limit at the forecast moment.
fn forecast_markers(out: &mut String, s: &Scenario, x: &Axis, y: &Axis) {
    let at = |ms: u64| x.at(ms as f64 / 1000.0);
    for (i, k) in s.forecast_kills.iter().enumerate() {
        let Some(end) = k.t_ms else { continue };
        let victim = who(k.pid, k.comm.as_deref());
        if let Some(e) = &k.forecast.eta
            && let Some(said) = e.forecast_ms
            && let Some(f) = s.forecast_near(k, end.saturating_sub(e.ahead_ms), 150)
        {
            let (x0, y0) = (
                at(f.t_ms),
                y.at(f.forecast.unreclaimable_bytes as f64 / MIB),
            );
            let (x1, y1) = (at(f.t_ms + said), y.at(f.forecast.limit_bytes as f64 / MIB));
            let tip = format!(
                "{} before the kill of {victim}, the forecast said: OOM in {}{}",
                ms_secs(e.ahead_ms),
                ms_secs(said),
                e.error_pct
                    .map_or_else(String::new, |p| format!(" ({p:+.1}%)"))
            );
            putln!(out, "<g><title>{}</title>", xml(&tip));
            putln!(
                out,
                r#"<line x1="{x0:.1}" y1="{y0:.1}" x2="{x1:.1}" y2="{y1:.1}" stroke="{FORECAST}" stroke-width="1.5" stroke-dasharray="1.5 2"/>"#
            );
            putln!(
                out,
                r#"<circle cx="{x0:.1}" cy="{y0:.1}" r="2.5" fill="{FORECAST}"/><circle cx="{x1:.1}" cy="{y1:.1}" r="3" fill="none" stroke="{FORECAST}" stroke-width="1.5"/>"#
            );
            // Its label left of the point it was made at, clear of the line it starts.
            putln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="10" fill="{FORECAST}" stroke="white" stroke-width="3" paint-order="stroke">{}</text></g>"#,
                x0 - 5.0,
                y0 - 5.0,
                xml(&format!("forecast here: OOM in {}", ms_secs(said)))
            );
        }
        let Some(since) = k.named_since_ms else {
            continue;
        };
        let (xs, xk) = (at(since), at(end));
        // Near the top of the plot, where the limits leave room, one row per kill (three).
        let yb = y.to + 12.0 + (i % 3) as f64 * 14.0;
        let lead = k.forecast.lead_ms.unwrap_or(end.saturating_sub(since));
        let tip = format!(
            "the forecast named {victim} from {} on: {} before the kill",
            ms_secs(since),
            ms_secs(lead)
        );
        putln!(out, "<g><title>{}</title>", xml(&tip));
        putln!(
            out,
            r#"<line x1="{xs:.1}" y1="{:.1}" x2="{xs:.1}" y2="{PLOT_BOTTOM}" stroke="{FORECAST}" stroke-width="1.5" stroke-dasharray="4 3"/>"#,
            y.to
        );
        putln!(
            out,
            r#"<path d="M{xs:.1},{yb:.1} H{xk:.1} M{xk:.1},{yb:.1} l-6,-3 v6 Z" fill="{FORECAST}" stroke="{FORECAST}" stroke-width="1.2"/></g>"#
        );
        let comm = k.comm.as_deref().unwrap_or("?");
        let label = truncate(
            &format!("forecast: {comm}, {} ahead", ms_secs(lead)),
            ((WIDTH - 6.0 - xs) / (10.0 * GLYPH)).max(4.0) as usize,
        );
        putln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" fill="{FORECAST}" stroke="white" stroke-width="3" paint-order="stroke">{}</text>"#,
            xs + 3.0,
            yb - 3.0,
            xml(&label)
        );
    }
}

/// Red lines at the kills, labelled with the victims. Kills a few pixels apart (a group kill's
/// victims die together) share one label, and labels that would overprint move right.
fn kill_markers(out: &mut String, kills: &[Kill], x: &Axis, plot_top: f64) {
    let placed: Vec<(f64, &Kill)> = kills.iter().filter_map(|k| Some((x.at(k.t?), k))).collect();
    // Group kills first, so a chosen victim's solid line at the same moment stays on top.
    let (group, chosen): (Vec<_>, Vec<_>) = placed.iter().partition(|(_, k)| k.group_kill);
    for &(px, k) in group.into_iter().chain(chosen) {
        let (colour, dash, mark) = if k.group_kill {
            // A diamond for a group kill, a downward triangle for a chosen victim.
            (
                GROUP_KILL,
                r#" stroke-dasharray="5 3""#,
                format!("M{:.1},{:.1} l4,4 l-4,4 l-4,-4 Z", px, plot_top - 4.0),
            )
        } else {
            (
                KILL,
                "",
                format!("M{:.1},{plot_top:.1} l8,0 l-4,7 Z", px - 4.0),
            )
        };
        let mut tip = format!("OOM kill at {}: {}", secs(k.t), k.who());
        if let Some(why) = &k.why {
            put!(tip, " — {why}");
        }
        putln!(out, "<g><title>{}</title>", xml(&tip));
        putln!(
            out,
            r#"<line x1="{px:.1}" y1="{plot_top:.1}" x2="{px:.1}" y2="{PLOT_BOTTOM}" stroke="{colour}" stroke-width="1.5"{dash}/>"#
        );
        putln!(out, r#"<path d="{mark}" fill="{colour}"/></g>"#);
    }
    let mut last_label = f64::NEG_INFINITY;
    let mut i = 0;
    while i < placed.len() {
        let (px, first) = placed[i];
        let together = placed[i..]
            .iter()
            .take_while(|(qx, _)| qx - px < 4.0)
            .count()
            .max(1);
        // Comm first: it is what a reader recognises.
        let who = match (&first.comm, &first.pid) {
            (Some(comm), Some(pid)) => format!("{comm} ({pid})"),
            _ => first.who(),
        };
        let mut label = truncate(&who, 26);
        if together > 1 {
            put!(label, " +{}", together - 1);
        }
        if placed[i..i + together].iter().any(|(_, k)| k.group_kill) {
            label.push_str(", group kill");
        }
        let lx = (px + 3.0).max(last_label + 12.0);
        last_label = lx;
        putln!(
            out,
            r#"<text transform="translate({lx:.1},{:.1}) rotate(90)" font-size="10" font-weight="bold" fill="{KILL}" stroke="white" stroke-width="3" paint-order="stroke">{}</text>"#,
            plot_top + 10.0,
            xml(&label)
        );
        i += together;
    }
}

/// The key, right of the plot: one colour per cgroup, then what each line style means.
fn legend(
    out: &mut String,
    s: &Scenario,
    off_chart: &[bool],
    kills: &[Kill],
    from_dmesg: bool,
    top: f64,
) {
    const ROW: f64 = 18.0;
    let width = WIDTH - LEGEND_LEFT - 8.0;
    let room = ((width - 40.0) / (11.0 * GLYPH)) as usize;
    // Each entry: swatch (stroke colour, width, dash, filled area) and text.
    struct Entry {
        colour: &'static str,
        width: f64,
        dash: &'static str,
        area: bool,
        text: String,
        note: Option<&'static str>,
    }
    let line = |colour, width, dash, text: &str| Entry {
        colour,
        width,
        dash,
        area: false,
        text: truncate(text, room),
        note: None,
    };
    let mut entries = Vec::new();
    for (i, c) in s.cgroups.iter().enumerate().take(LEGEND_CGROUPS) {
        let mut e = line(PALETTE[i % PALETTE.len()], 3.0, "", &c.name);
        if off_chart.get(i) == Some(&true) {
            e.note = Some("limit above the chart");
        }
        entries.push(e);
    }
    if s.cgroups.len() > LEGEND_CGROUPS {
        let more = format!("+{} more cgroups", s.cgroups.len() - LEGEND_CGROUPS);
        entries.push(line("none", 0.0, "", &more));
    }
    if !s.cgroups.is_empty() {
        entries.push(line("#555", 2.0, "", "usage"));
        entries.push(line("#555", 1.5, "6 4", "working set"));
        entries.push(line("#555", 1.2, "1.5 3", "limit"));
    }
    if s.cgroups
        .iter()
        .any(|c| c.samples.iter().any(|p| p.high.is_some()))
    {
        entries.push(line("#555", 1.4, HIGH_DASH, "memory.high"));
    }
    if psi_shown(s) {
        entries.push(line("#555", 1.0, PSI_DASH, "PSI some avg10 (%)"));
        if let Some((metric, ..)) = s.goals.first() {
            entries.push(line("#555", 1.0, GOAL_DASH, &format!("PSI {metric} goal")));
        }
    }
    if !s.held.is_empty() {
        let mut e = line(HELD, 2.5, "", "held by stressors");
        e.area = true;
        entries.push(e);
    }
    if kills.iter().any(|k| !k.group_kill) {
        let text = if from_dmesg {
            "OOM kill (dmesg)"
        } else {
            "OOM kill"
        };
        entries.push(line(KILL, 1.5, "", text));
    }
    if kills.iter().any(|k| k.group_kill) {
        entries.push(line(GROUP_KILL, 1.5, "5 3", "group OOM kill"));
    }
    if s.forecast_kills.iter().any(|k| k.named_since_ms.is_some()) {
        entries.push(line(FORECAST, 1.5, "4 3", "forecast names victim"));
    }
    if s.forecast_kills.iter().any(|k| {
        k.forecast
            .eta
            .as_ref()
            .is_some_and(|e| e.forecast_ms.is_some())
    }) {
        entries.push(line(FORECAST, 1.5, "1.5 2", "time to OOM 5 s ahead"));
    }
    if !s.steps.is_empty() {
        entries.push(line(STEP, 1.0, "", "step"));
    }
    if entries.is_empty() {
        return;
    }
    let rows = entries.len() + entries.iter().filter(|e| e.note.is_some()).count();
    putln!(
        out,
        r##"<rect x="{LEGEND_LEFT}" y="{top:.1}" width="{width}" height="{:.1}" fill="white" stroke="#ccc" rx="3"/>"##,
        rows as f64 * ROW + 8.0
    );
    let mut y = top + 4.0 + ROW / 2.0;
    for e in &entries {
        let (x0, x1) = (LEGEND_LEFT + 8.0, LEGEND_LEFT + 30.0);
        if e.area {
            putln!(
                out,
                r#"<rect x="{x0}" y="{:.1}" width="22" height="8" fill="{}" fill-opacity="0.18"/>"#,
                y - 4.0,
                e.colour
            );
        }
        if e.width > 0.0 {
            let dash = if e.dash.is_empty() {
                String::new()
            } else {
                format!(r#" stroke-dasharray="{}""#, e.dash)
            };
            putln!(
                out,
                r#"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="{}" stroke-width="{}"{dash}/>"#,
                e.colour,
                e.width
            );
        }
        putln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" fill="#222">{}</text>"##,
            x1 + 6.0,
            y + 4.0,
            xml(&e.text)
        );
        y += ROW;
        if let Some(note) = e.note {
            putln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" fill="#777" font-size="10">{note}</text>"##,
                x1 + 6.0,
                y + 1.0
            );
            y += ROW;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::lab::lines::fixture;

    const MIB_U: u64 = 1024 * 1024;

    /// A `qos`-like scenario: two cgroups filling up under a limit, a run with a prediction,
    /// two kills (the second a group kill of a process with an awkward name), expectations.
    /// memstress's lines are whole, as it prints them: the report reads them through its
    /// types, which take nothing less.
    fn scenario() -> Vec<Value> {
        let mut ev = vec![json!({
            "type": "scenario", "name": "qos", "description": "Burstable dies before guaranteed.",
            "kernel": "6.12.117+deb12-cloud-amd64", "kernel_label": "6.12", "cgroup_version": 2,
            "started": "2026-11-28T01:02:50.662Z", "t_ms": 0
        })];
        ev.push(json!({"type": "app", "t_ms": 50, "name": "web", "event": "started", "pid": 77}));
        ev.push(json!({"type": "step", "t_ms": 1000, "index": 0,
            "what": "memstress run --cgroup pod --size 300Mi", "phase": "start"}));
        let ranking = vec![
            fixture::ranked(None, "memstress", 812, 0, "predicted"),
            fixture::ranked(Some(77), "a<b&c", 300, 0, "predicted"),
            fixture::ranked(Some(78), "db", 10, -900, "predicted"),
        ];
        ev.push(
            json!({"type": "memstress", "t_ms": 1100, "source": "run", "step": 0,
            "event": fixture::plan(ranking)}),
        );
        for i in 0..=80u64 {
            let t = i * 100;
            let pod = (i.min(50) * 5 + 20) * MIB_U;
            ev.push(
                json!({"type": "sample", "t_ms": t, "cgroup": "pod", "usage_bytes": pod,
                "working_set_bytes": pod - 8 * MIB_U, "limit_bytes": 256 * MIB_U}),
            );
            ev.push(json!({"type": "sample", "t_ms": t, "cgroup": "besteffort",
                "usage_bytes": 40 * MIB_U + i * MIB_U / 4, "working_set_bytes": 30 * MIB_U,
                "limit_bytes": null}));
            if (11..60).contains(&i) {
                ev.push(
                    json!({"type": "memstress", "t_ms": t, "source": "run", "step": 0,
                    "event": {"type": "sample", "t_ms": t - 1000,
                        "stressors_held_bytes": (i - 10) * 5 * MIB_U,
                        "stressors_charge_bytes": (i - 10) * 5 * MIB_U, "stressors_alive": 1,
                        "usage_bytes": pod, "working_set_bytes": pod, "inactive_file_bytes": 0,
                        "limit_hits": 0, "oom_kills": 0, "under_oom": false,
                        "run_limit_hits": 0, "run_oom_kills": 0, "limit_bytes": 256 * MIB_U}}),
                );
            }
        }
        let candidates: Vec<Value> = (0..7)
            .map(|n| {
                fixture::ranked(
                    Some(4242 + n),
                    &format!("memstress-{n}"),
                    800 - n as i64 * 10,
                    0,
                    "kernel",
                )
            })
            .collect();
        let mut first = fixture::kill(
            4242,
            "memstress",
            812,
            "memstress was chosen: highest points (812) in /lab/pod.",
            candidates,
        );
        first["pressure"] = json!({"since_ms": 1400, "limit_hits": 312, "reclaim_runs": 40,
            "reclaimed_kib": 2048, "reclaim_ms": 12.0, "reclaim_asked_kib": 4096});
        ev.push(json!({"type": "memstress", "t_ms": 5300, "source": "watch", "event": first}));
        let mut second = fixture::kill(
            77,
            "a<b&c",
            300,
            "a<b&c died with its memory.oom.group cgroup.",
            vec![],
        );
        second["group_kill"] = json!(true);
        ev.push(json!({"type": "memstress", "t_ms": 5310, "source": "watch", "event": second}));
        ev.push(
            json!({"type": "memstress", "t_ms": 6000, "source": "run", "step": 0,
                "event": fixture::summary("stopped_by_oom")}),
        );
        ev.push(json!({"type": "step", "t_ms": 6000, "index": 0, "phase": "end", "exit_code": 3}));
        ev.push(
            json!({"type": "step", "t_ms": 6000, "index": 1, "what": "sleep 2s",
            "phase": "start"}),
        );
        ev.push(json!({"type": "step", "t_ms": 8000, "index": 1, "phase": "end"}));
        ev.push(
            json!({"type": "dmesg_kill", "t_ms": 5301, "pid": 4242, "comm": "memstress",
            "anon_rss_kb": 240000, "oom_score_adj": 0}),
        );
        ev.push(
            json!({"type": "dmesg_kill", "t_ms": 5311, "pid": 77, "comm": "a<b&c",
            "anon_rss_kb": 1200, "oom_score_adj": 0}),
        );
        ev.push(
            json!({"type": "expectation", "name": "usage rises by 50 MiB ± 2%",
            "expected": "50 MiB ± 2%", "actual": "50.2 MiB", "passed": true}),
        );
        ev.push(
            json!({"type": "expectation", "name": "first victim is the stressor",
            "expected": "memstress", "actual": "memstress", "passed": true}),
        );
        ev.push(
            json!({"type": "result", "t_ms": 8100, "passed": true, "skipped": null,
            "duration_ms": 8100}),
        );
        ev
    }

    #[test]
    fn a_line_memstress_would_not_print_is_left_out() {
        let mut events = scenario();
        let kill = events
            .iter_mut()
            .find(|e| e["event"]["type"] == "oom_kill")
            .expect("a kill");
        kill["event"]["constraint"] = json!("sideways");
        let md = report_markdown(&events);
        assert!(
            md.contains("- **OOM kills:** 1 reported by memstress, 2 in dmesg"),
            "{md}"
        );
    }

    /// On v2 the lab samples memory.high and PSI: the timeline draws memory.high stepwise
    /// where it is set and PSI on its own 0-100 % scale, and the legend names both; on v1
    /// (no such samples) neither appears.
    #[test]
    fn plots_memory_high_and_psi_where_sampled() {
        let plain = timeline_svg(&scenario());
        assert!(!plain.contains(HIGH_DASH) && !plain.contains("PSI some"));
        let mut events = scenario();
        for i in 0..=40u64 {
            let t = 2000 + i * 100;
            let high = if (10..30).contains(&i) {
                json!(64 * MIB_U)
            } else {
                json!("max")
            };
            events.push(json!({"type": "sample", "t_ms": t, "cgroup": "throttled",
                "usage_bytes": 60 * MIB_U, "working_set_bytes": 60 * MIB_U,
                "limit_bytes": 256 * MIB_U, "memory_high": high,
                "psi_some_avg10": (i as f64) * 1.5}));
        }
        let svg = timeline_svg(&events);
        assert_well_formed(&svg);
        let dashed = format!("stroke-dasharray=\"{HIGH_DASH}\"");
        assert_eq!(
            svg.matches(&dashed).count(),
            2,
            "one path and the legend's swatch"
        );
        assert!(svg.contains(">memory.high<"), "legend");
        assert!(svg.contains(">PSI some avg10 (%)<") && svg.contains(">PSI 100%<"));
        assert!(svg.contains(&format!("stroke-dasharray=\"{PSI_DASH}\"")));
        assert!(!svg.contains(GOAL_DASH), "no --pressure run, no goal");
        // A `--pressure` run: its goal, from its plan to its summary.
        let record = |t: u64, line: Value| json!({"type": "memstress", "source": "run", "step": 0, "t_ms": t, "event": line});
        let mut plan = fixture::plan(vec![]);
        plan["pressure"] = json!({"goal_pct": 20.0, "metric": "some", "limit_bytes": 256 * MIB_U,
            "limit_from": "/lab/pod", "ceiling_bytes": 256 * MIB_U, "margin_bytes": 32 * MIB_U,
            "cap_bytes": 200 * MIB_U});
        let mut summary = fixture::summary("interrupted");
        summary["pressure"] = json!({"goal_pct": 20.0, "metric": "some", "reached_ms": 1000,
            "avg10_min": 18.0, "avg10_max": 21.0, "avg10_mean": 19.5, "out_of_reach": false,
            "back_offs": 0});
        events.push(record(2100, plan));
        events.push(record(5900, summary));
        let svg = timeline_svg(&events);
        assert_well_formed(&svg);
        assert_eq!(
            svg.matches(&format!("stroke-dasharray=\"{GOAL_DASH}\""))
                .count(),
            2,
            "the goal and the legend's swatch"
        );
        assert!(svg.contains(">PSI some goal<"), "legend");
    }

    /// Checks that `svg` is well-formed as far as this renderer's output goes: tags balance,
    /// attributes are quoted, and no text or attribute holds a raw `<` or a stray `&`.
    fn assert_well_formed(svg: &str) {
        let mut stack: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(open) = rest.find('<') {
            assert_entities(&rest[..open]);
            let close = rest[open..].find('>').expect("unclosed tag") + open;
            let tag = &rest[open + 1..close];
            assert_eq!(
                tag.matches('"').count() % 2,
                0,
                "unbalanced quotes in <{tag}>"
            );
            assert!(!tag.contains('<'), "raw < inside <{tag}>");
            assert_entities(tag);
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name.trim()), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().expect("tag name");
                stack.push(name);
            }
            rest = &rest[close + 1..];
        }
        assert!(stack.is_empty(), "unclosed elements: {stack:?}");
    }

    fn assert_entities(s: &str) {
        for (i, _) in s.match_indices('&') {
            let entity = &s[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                    .iter()
                    .any(|e| entity.starts_with(e)),
                "stray & in {s:?}"
            );
        }
    }

    #[test]
    fn renders_a_realistic_scenario() {
        let events = scenario();
        let svg = timeline_svg(&events);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_well_formed(&svg);
        assert!(svg.contains("<path d=\"M"), "a plotted line");
        assert!(svg.contains("memstress"));
        assert!(svg.contains("a&lt;b&amp;c"), "comm escaped");
        assert!(!svg.contains("a<b&c"));
        assert!(svg.contains("qos — 6.12 — "));
        assert!(svg.contains(">PASS</tspan>"));
        assert!(svg.contains("besteffort") && svg.contains("pod"));
        assert!(svg.contains("group kill"));

        let md = report_markdown(&events);
        assert!(md.starts_with("# qos — 6.12 — PASS\n"), "{md}");
        assert!(md.contains("Burstable dies before guaranteed."));
        assert!(
            md.contains("| usage rises by 50 MiB ± 2% | 50 MiB ± 2% | 50.2 MiB | ✅ |"),
            "{md}"
        );
        assert!(md.contains("| first victim is the stressor | memstress | memstress | ✅ |"));
        assert!(md.contains("- **OOM kills:** 2 reported by memstress, 2 in dmesg"));
        assert!(md.contains(
            "requested 300.0 MiB, charged 251.0 MiB, peak usage 256.0 MiB; outcome \
             `stopped_by_oom`; OOM kills of stressors 1, of others 1"
        ));
        assert!(md.contains("### 1. 5.3 s — 4242 (memstress)\n"), "{md}");
        assert!(
            md.contains("### 2. 5.3 s — 77 (a\\<b\\&c) — group kill\n"),
            "{md}"
        );
        assert!(md.contains("> memstress was chosen: highest points (812) in /lab/pod."));
        assert!(md.contains("> a\\<b\\&c died with its memory.oom.group cgroup."));
        assert!(md.contains(
            "- **Pressure:** limit hit 312× in 1.4 s, direct reclaim ran 40× (12.0 ms) and \
             freed 2 MiB, then OOM"
        ));
        assert!(md.contains("| 4242 | `memstress-0` | 800 | 0 | kernel |"));
        assert!(md.contains("| 4246 | `memstress-4` | 760 | 0 | kernel |"));
        assert!(!md.contains("memstress-5"), "only the top 5 candidates");
        assert!(md.contains("_Top 5 of 7 candidates._"));
        assert!(md.contains("## Predicted vs actual"));
        assert!(
            md.contains("| 1 | `memstress` (812) | `memstress` (4242) | ✅ |"),
            "{md}"
        );
        assert!(
            md.contains("| 2 | `a<b&c` (300) | `a<b&c` (77) | ✅ |"),
            "{md}"
        );
        assert!(md.contains("| 3 | `db` (10) |  |  |"), "{md}");
        assert!(md.contains("| 0 | 1.0 s | 6.0 s | 3 | `memstress run --cgroup pod"));
        assert!(md.contains("![timeline](timeline.svg)"));
        assert!(md.contains("[events.jsonl](events.jsonl)"));
    }

    #[test]
    fn falls_back_to_dmesg_and_says_why_a_scenario_was_skipped() {
        let events = vec![
            json!({"type": "scenario", "name": "group", "kernel_label": "5.10", "t_ms": 0}),
            json!({"type": "dmesg_kill", "t_ms": 2000, "pid": 9, "comm": "x|y"}),
            json!({"type": "dmesg_kill", "t_ms": 1000, "pid": 8, "comm": "first"}),
            json!({"type": "result", "passed": true, "skipped": "needs cgroup v2",
                "duration_ms": 3000}),
        ];
        let md = report_markdown(&events);
        assert!(md.starts_with("# group — 5.10 — SKIPPED\n"), "{md}");
        assert!(md.contains("> **⚠️ SKIPPED:** needs cgroup v2"));
        assert!(md.contains("memstress reported none; the kernel logged 2"));
        let first = md.find("`first`").expect("first kill listed");
        let second = md.find("`x\\|y`").expect("pipe escaped in a cell");
        assert!(first < second, "dmesg kills in time order");
        let svg = timeline_svg(&events);
        assert_well_formed(&svg);
        assert!(svg.contains("first (8)") && svg.contains("OOM kill (dmesg)"));
        assert!(svg.contains("skipped: needs cgroup v2"));
    }

    #[test]
    fn empty_input_still_renders() {
        let svg = timeline_svg(&[]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_well_formed(&svg);
        assert!(svg.contains("NO RESULT"));
        let md = report_markdown(&[]);
        assert!(md.starts_with("# (unnamed scenario) — unknown kernel — NO RESULT"));
        assert!(md.contains("## Expectations") && md.contains("## Timeline"));
    }

    #[test]
    fn garbage_input_does_not_panic() {
        let events = vec![
            json!(null),
            json!(42),
            json!("sample"),
            json!([1, 2, 3]),
            json!({}),
            json!({"type": 7}),
            json!({"type": "scenario", "name": ["x"], "kernel_label": {"a": 1}, "description": 3}),
            json!({"type": "sample", "t_ms": "soon", "cgroup": 5, "usage_bytes": "lots"}),
            json!({"type": "sample", "t_ms": -50, "cgroup": null, "usage_bytes": -1}),
            json!({"type": "sample", "t_ms": 1e300, "cgroup": "huge", "usage_bytes": 1.7e308,
                "limit_bytes": 1.7e308}),
            json!({"type": "sample", "t_ms": 100, "cgroup": "huge", "usage_bytes": u64::MAX}),
            json!({"type": "step", "phase": "end"}),
            json!({"type": "step", "t_ms": 5, "index": {"i": 1}, "what": ["w"], "phase": 3}),
            json!({"type": "memstress", "source": "watch", "event": "oom_kill"}),
            json!({"type": "memstress", "source": "watch", "t_ms": 10,
                "event": {"type": "oom_kill", "victim": 5, "candidates": {"pid": 1},
                    "domain": [1], "group_kill": "yes", "pressure": "high"}}),
            json!({"type": "memstress", "source": "run", "event": {"type": "plan",
                "predicted_oom": {"ranking": "none"}}}),
            json!({"type": "memstress", "source": "run", "event": {"type": "plan",
                "predicted_oom": 1}}),
            json!({"type": "memstress", "source": "run", "t_ms": 20, "event": {"type": "sample",
                "stressors_held_bytes": "many"}}),
            json!({"type": "memstress", "source": "run", "event": {"type": "summary",
                "requested_bytes": "x", "outcome": {"nested": true}}}),
            json!({"type": "dmesg_kill", "pid": "p", "comm": "\u{1}\u{0}<>"}),
            json!({"type": "memstress", "source": "replay", "event": {"type": "replay_result",
                "report": [1], "expected": 5, "chosen": {"pid": "x", "comm": 3},
                "tasks": [1, {"bytes": "many", "row_pid": {}}], "notes": "n", "scale": "big"}}),
            json!({"type": "memstress", "source": "replay", "event": {"type": "replay_result",
                "tasks": {"a": 1}, "notes": [1, null, "ok"]}}),
            json!({"type": "dmesg_kill", "replay_step": "x"}),
            json!({"type": "expectation", "passed": "yes", "name": "a|b\nc"}),
            json!({"type": "note", "text": 5}),
            json!({"type": "result", "passed": "true", "skipped": false, "duration_ms": "1"}),
        ];
        let svg = timeline_svg(&events);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_well_formed(&svg);
        assert!(!svg.contains('\u{0}') && !svg.contains('\u{1}'));
        let md = report_markdown(&events);
        assert!(md.starts_with('#'));
        assert!(md.contains("a\\|b c"), "{md}");
    }

    #[test]
    fn writes_both_files() {
        let dir = std::env::temp_dir().join(format!("memstress-report-{}", std::process::id()));
        write_report(&dir, &scenario()).expect("write_report");
        let md = fs::read_to_string(dir.join("report.md")).expect("report.md");
        let svg = fs::read_to_string(dir.join("timeline.svg")).expect("timeline.svg");
        let _ = fs::remove_dir_all(&dir);
        assert!(md.starts_with("# qos"));
        assert!(svg.starts_with("<svg"));
    }

    #[test]
    fn lists_each_replayed_report() {
        let record = |line: Value| {
            json!({"type": "memstress", "source": "replay", "step": 2, "t_ms": 9000,
                "event": line})
        };
        let mut events = scenario();
        events.push(record(fixture::replay_result(
            1,
            (1234, "tail"),
            (555, "tail"),
            None,
        )));
        let mut other = fixture::replay_result(2, (1234, "tail"), (556, "a|b"), Some("a|b grew"));
        other["adj_offset"] = json!(-300);
        events.push(record(other));
        events.push(record(fixture::plan(vec![fixture::ranked(
            Some(9),
            "sandboxed",
            1,
            0,
            "predicted",
        )])));
        events.push(
            json!({"type": "dmesg_kill", "t_ms": 9001, "pid": 555, "comm": "tail",
            "replay_step": 2}),
        );
        let md = report_markdown(&events);
        assert!(md.contains("## Replay\n"), "{md}");
        assert!(
            md.contains("### Report 1 (line 43, step 2) — same victim ✅\n"),
            "{md}"
        );
        assert!(md.contains("- **Kernel's victim (the report):** 1234 (tail)\n"));
        assert!(
            md.contains(
                "- **Chosen here:** 555 (tail), 8200 points (row 1234 of the report, role task)\n"
            ),
            "{md}"
        );
        assert!(md.contains("- **Scale:** 1; **limit:** 32.0 MiB\n"), "{md}");
        assert!(md.contains(
            "| row pid | comm | pid here | bytes | oom_score_adj | expected points | kernel points |"
        ));
        assert!(
            md.contains("| 1234 | `tail` | 555 | 24.0 MiB | 0 | 6150 | 6151 |"),
            "{md}"
        );
        assert!(
            md.contains("| 77 | `sh` | 556 | 1.0 MiB | 0 | 256 | — |"),
            "{md}"
        );
        assert!(md.contains("- the limit is the report's\n"));
        assert!(md.contains("### Report 2 (line 83, step 2) — a different victim ❌\n"));
        assert!(
            md.contains("- **Chosen here:** 556 (a\\|b), 8200 points"),
            "{md}"
        );
        assert!(md.contains("; **oom_score_adj offset:** -300\n"), "{md}");
        assert!(md.contains("> **Why not the same:** a\\|b grew\n"), "{md}");
        assert_eq!(md.matches("Why not the same").count(), 1);
        // The replay's own plan is not the scenario's prediction, and its kill is apart.
        assert!(!md.contains("sandboxed"), "{md}");
        assert!(
            md.contains("- **OOM kills:** 2 reported by memstress, 2 in dmesg (and 1 by replays' reproductions)"),
            "{md}"
        );
        // Replay comes after the predictions, before the steps.
        let at = |s: &str| md.find(s).unwrap_or_else(|| panic!("no {s}"));
        assert!(at("## Predicted vs actual") < at("## Replay") && at("## Replay") < at("## Steps"));
        assert!(!report_markdown(&scenario()).contains("## Replay"));
    }

    #[test]
    fn shows_the_forecast_against_reality() {
        let events = fixture::forecast_scenario(
            fixture::kill_forecast(
                (500, "memstress-vm"),
                true,
                Some(9000),
                Some((5000, Some(4800))),
            ),
            fixture::score(1, 1, Some(9000), Some(4.0)),
        );
        let md = report_markdown(&events);
        assert!(md.contains("## Forecast vs reality\n"), "{md}");
        assert!(
            md.contains(
                "| 1 | 0 | 12.0 s | `memstress-vm` (500) | `memstress-vm` (500) | ✅ | 9.0 s | 3.0 s \
                 | 5.0 s before: 4.8 s forecast (-4.0%) |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "- **Step 0's run:** forecast: 1 of 1 victim(s) named beforehand, median lead \
                 9.0s, time to OOM 5 s ahead off by 4% (median)"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "### Kill 1: 500 (memstress-vm) — what the forecast of step 0's run said before it"
            ),
            "{md}"
        );
        // The first forecast named batch, if an OOM came then; 5 s before the kill the
        // stressor, whose points now are below batch's.
        assert!(
            md.contains(
                "| 11.0 s | none coming | — | `batch` (300) 57777 | `memstress-vm` (500) 1000 | \
                 +56777 | 80.0 MiB of 320.0 MiB |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| 5.0 s | 5.0 s | 0% | `memstress-vm` (500) 61000 (now 30792) | `batch` (300) \
                 57777 | +3223 | 200.0 MiB of 320.0 MiB |"
            ),
            "{md}"
        );
        assert!(
            md.contains("- **Forecast:** forecast named it 9.0s ahead"),
            "{md}"
        );
        let at = |s: &str| md.find(s).unwrap_or_else(|| panic!("no {s}"));
        assert!(at("## OOM kills") < at("## Forecast vs reality"));
        assert!(at("## Forecast vs reality") < at("## Steps"));

        let svg = timeline_svg(&events);
        assert_well_formed(&svg);
        assert!(
            svg.contains(">forecast: memstress-vm, 9.0 s ahead</text>"),
            "{svg}"
        );
        assert!(svg.contains(
            "<title>the forecast named 500 (memstress-vm) from 3.0 s on: 9.0 s before the kill</title>"
        ));
        assert!(svg.contains(
            "<title>5.0 s before the kill of 500 (memstress-vm), the forecast said: OOM in 4.8 s \
             (-4.0%)</title>"
        ));
        assert!(svg.contains(">forecast names victim</text>"));
        assert!(svg.contains(">time to OOM 5 s ahead</text>"));
        // Nothing of it where no run forecast.
        assert!(!report_markdown(&scenario()).contains("Forecast vs reality"));
        assert!(!timeline_svg(&scenario()).contains("forecast names"));
    }

    /// Where the lab read the node, the report lists its memory.available by step.
    #[test]
    fn the_node_s_memory_by_step() {
        let mut ev = scenario();
        assert!(!report_markdown(&ev).contains("## The node's memory"));
        for i in 0..20u64 {
            ev.push(json!({"type": "node_sample", "t_ms": 1000 + i * 100,
                "available_bytes": (300 - i * 5) * MIB_U, "mem_available_bytes": (250 - i * 5) * MIB_U,
                "mem_total_bytes": 463 * MIB_U}));
        }
        let md = report_markdown(&ev);
        assert!(md.contains("## The node's memory\n"), "{md}");
        assert!(
            md.contains("| 205.0 MiB – 300.0 MiB | 155.0 MiB – 250.0 MiB |"),
            "{md}"
        );
        let at = |s: &str| md.find(s).unwrap();
        assert!(at("## The node's memory") < at("## Steps"));
    }

    #[test]
    fn markdown_and_xml_escaping() {
        assert_eq!(xml(r#"a<b&c>"'"#), "a&lt;b&amp;c&gt;&quot;&apos;");
        assert_eq!(md("x|y*z_"), "x\\|y\\*z\\_");
        assert_eq!(code("a`b", false), "``a`b``");
        assert_eq!(code("`a", false), "`` `a ``");
        assert_eq!(code("a|b", true), "`a\\|b`");
        assert_eq!(
            md_authored("uses `a<b` and <b>bold</b>\nline two"),
            "uses `a<b` and &lt;b>bold&lt;/b>\nline two"
        );
        assert_eq!(md_authored("open `a<b"), "open \\`a\\<b");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
