//! `cargo xtask bench`: seven figures, each measured side by side with a peer (stress-ng, a
//! bpftrace script, a /dev/kmsg reader) or with the machine's own limit (a minimal
//! `mmap(MAP_POPULATE)` program, or no probes at all), in one run on one machine. Absolute
//! times drift on a shared machine; ratios of runs made back to back do not drift as much,
//! so each figure is a ratio, taken per run and reported as the median of the runs with
//! their min and max.
//!
//! 1. `fault`: page-fault throughput in a memcg with no probes, memstress's, or bpftrace's.
//! 2. `fill`: time until a cgroup is charged N GiB, memstress vs stress-ng vs the limit.
//! 3. `hold`: CPU used while holding, memstress vs stress-ng.
//! 4. `tell`: from the kernel's kill to the line on memstress's stdout, vs a kmsg reader.
//! 5. `storm`: kills reported vs kills the kernel counted, several memcgs OOMing at once.
//! 6. `startup`: exec to all probes attached, and the controller's peak RSS, vs bpftrace.
//! 7. `scale`: an OOM loop's kill rate with memstress watching vs nothing watching, with 0,
//!    1,000 and 10,000 idle processes elsewhere on the node, and 4,096 tasks in the domain.
//!
//! Progress goes to stderr; the table to stdout (Markdown, as docs/benchmarks.md records
//! it); every figure with its runs to target/bench/results.json. A goal missed is reported,
//! never an error: the bench fails only when it cannot measure.

mod fault;
mod fill;
mod hold;
mod scale;
mod startup;
mod sys;
mod tell;

use std::{
    fmt::Write as _,
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::root;

/// Debian packages the bench runs as peers.
pub const PACKAGES: &[&str] = &["stress-ng", "bpftrace"];

/// Figures, in the order they run.
pub const FIGURES: [&str; 7] = ["startup", "fault", "fill", "hold", "tell", "storm", "scale"];

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// What to run.
#[derive(Clone, Debug)]
pub struct Args {
    /// Fewer runs and smaller sizes (CI: a few minutes, every figure present).
    pub quick: bool,
    /// Runs per figure (default 5; 3 with `quick`).
    pub runs: Option<usize>,
    /// Only these figures (default: all).
    pub only: Vec<String>,
}

/// Sizes and counts for one bench.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Runs of each figure.
    pub runs: usize,
    /// Fault throughput: bytes touched per mapping, and mappings per measurement (the first a
    /// warm-up).
    pub fault_bytes: u64,
    pub fault_reps: u32,
    /// Fill: bytes the cgroup must be charged.
    pub fill_bytes: u64,
    /// Hold: bytes held, and for how long.
    pub hold_bytes: u64,
    pub hold: Duration,
    /// Time to tell: kills per run.
    pub tell_kills: usize,
    /// Storm: memcgs OOMing in parallel, and for how long per run.
    pub storm_cgroups: usize,
    pub storm_for: Duration,
    /// Limit of each small OOMing memcg (tell, storm) and what its process touches.
    pub oom_limit: u64,
    pub oom_touch: u64,
    /// Scale: kills per block, and passes (a block each way) per run.
    pub scale_kills: usize,
    pub scale_passes: usize,
}

impl Plan {
    fn new(args: &Args) -> Self {
        let runs = args.runs.unwrap_or(if args.quick { 3 } else { 5 }).max(1);
        if args.quick {
            Self {
                runs,
                fault_bytes: 256 * MIB,
                fault_reps: 4,
                fill_bytes: 256 * MIB,
                hold_bytes: 256 * MIB,
                hold: Duration::from_secs(3),
                tell_kills: 50usize.div_ceil(runs),
                storm_cgroups: 4,
                storm_for: Duration::from_secs(2),
                oom_limit: 8 * MIB,
                oom_touch: 16 * MIB,
                scale_kills: 40,
                scale_passes: 1,
            }
        } else {
            Self {
                runs,
                fault_bytes: 512 * MIB,
                fault_reps: 6,
                fill_bytes: 2 * GIB,
                hold_bytes: GIB,
                hold: Duration::from_secs(30),
                tell_kills: 250usize.div_ceil(runs).max(40),
                storm_cgroups: 8,
                storm_for: Duration::from_secs(10),
                oom_limit: 8 * MIB,
                oom_touch: 16 * MIB,
                scale_kills: 40,
                scale_passes: 5,
            }
        }
    }
}

/// What every figure needs.
pub struct Ctx {
    /// The memory controller's hierarchy.
    pub hierarchy: sys::Hierarchy,
    /// target/release/memstress.
    pub memstress: PathBuf,
    /// target/release/memstress-bench-helper.
    pub helper: PathBuf,
    /// A cgroup without a limit where the tools being measured run (memstress's controller,
    /// bpftrace, stress-ng's parent when it is not the thing measured): never the bench's own
    /// cgroup.
    pub tools: sys::BenchCgroup,
    /// Sizes.
    pub plan: Plan,
}

impl Ctx {
    /// `memstress -o json <args>`, started in the tools cgroup.
    pub fn memstress(&self, args: &[&str]) -> Result<std::process::Command> {
        let mut cmd = self.tools.command(&self.memstress)?;
        cmd.args(["-o", "json"]).args(args);
        Ok(cmd)
    }

    /// bpftrace running the equivalent script (equivalent.bt), started in the tools cgroup.
    pub fn bpftrace(&self) -> Result<std::process::Command> {
        let script = root().join("target/bench/equivalent.bt");
        fs::create_dir_all(root().join("target/bench"))?;
        fs::write(&script, include_str!("bench/equivalent.bt"))?;
        let mut cmd = self.tools.command("bpftrace")?;
        cmd.arg(script);
        Ok(cmd)
    }

    /// The run order of `n` configurations in run `run`: rotated each run, so that no
    /// configuration always goes first (a machine warms up and cools down).
    pub fn order(n: usize, run: usize) -> Vec<usize> {
        (0..n).map(|i| (i + run) % n).collect()
    }
}

/// One run's measurement of one figure.
#[derive(Clone, Debug)]
pub struct Sample {
    /// memstress's value.
    pub memstress: f64,
    /// The peer's (or the limit's) value.
    pub peer: f64,
    /// Their ratio as the row defines it.
    pub ratio: f64,
}

impl Sample {
    /// A sample whose ratio is memstress ÷ peer.
    pub fn over(memstress: f64, peer: f64) -> Self {
        Self {
            memstress,
            peer,
            ratio: if peer == 0.0 {
                f64::NAN
            } else {
                memstress / peer
            },
        }
    }
}

/// One line of the table.
#[derive(Clone, Debug)]
pub struct Row {
    /// Machine-readable name.
    pub name: String,
    /// What is measured, as the table says it.
    pub figure: String,
    /// What memstress is compared with.
    pub peer_name: String,
    /// Unit of the memstress and peer values.
    pub unit: &'static str,
    /// Headline values: medians over runs unless the figure says otherwise.
    pub memstress: f64,
    pub peer: f64,
    pub ratio: f64,
    /// The goal, as text, and whether it was met.
    pub goal: String,
    pub met: bool,
    /// Every run.
    pub runs: Vec<Sample>,
    /// What else a reader needs to read the figure.
    pub note: Option<String>,
}

impl Row {
    /// A row with medians of `runs` as its headline values; `met` is decided by the caller.
    pub fn from_runs(
        name: &str,
        figure: &str,
        peer_name: &str,
        unit: &'static str,
        runs: Vec<Sample>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            figure: figure.to_owned(),
            peer_name: peer_name.to_owned(),
            unit,
            memstress: median(runs.iter().map(|s| s.memstress)),
            peer: median(runs.iter().map(|s| s.peer)),
            ratio: median(runs.iter().map(|s| s.ratio)),
            goal: "—".to_owned(),
            met: true,
            runs,
            note: None,
        }
    }

    /// Goal: the ratio at least `min`.
    pub fn ratio_at_least(mut self, min: f64) -> Self {
        self.goal = format!("ratio ≥ {min}");
        self.met = self.ratio >= min;
        self
    }

    /// Goal: the ratio above `min`.
    pub fn ratio_above(mut self, min: f64, text: &str) -> Self {
        self.goal = text.to_owned();
        self.met = self.ratio > min;
        self
    }

    /// Goal: the ratio within [`lo`, `hi`] (an A/A check: 1 ± a tolerance).
    pub fn ratio_within(mut self, lo: f64, hi: f64) -> Self {
        self.goal = format!("ratio {:.2} ± {:.2}", (lo + hi) / 2.0, (hi - lo) / 2.0);
        self.met = (lo..=hi).contains(&self.ratio);
        self
    }

    /// Goal: memstress's value at most `max`.
    pub fn at_most(mut self, max: f64) -> Self {
        self.goal = format!("≤ {}", value(max, self.unit));
        self.met = self.memstress <= max;
        self
    }

    /// Goal: the ratio at most `max`.
    pub fn ratio_at_most(mut self, max: f64) -> Self {
        self.goal = format!("ratio ≤ {max}");
        self.met = self.ratio <= max;
        self
    }

    /// Adds to the goal: the ratio at most `max` too.
    pub fn and_ratio_at_most(mut self, max: f64) -> Self {
        self.goal = format!("{} and ratio ≤ {max}", self.goal);
        self.met &= self.ratio <= max;
        self
    }

    /// Context, without a goal of its own.
    pub fn context(mut self) -> Self {
        self.goal = "— (context)".to_owned();
        self.met = true;
        self
    }

    /// Adds a note.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    fn spread(&self, pick: impl Fn(&Sample) -> f64) -> (f64, f64) {
        let values: Vec<f64> = self
            .runs
            .iter()
            .map(pick)
            .filter(|v| v.is_finite())
            .collect();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (min, max)
    }

    fn cell(&self, headline: f64, pick: impl Fn(&Sample) -> f64) -> String {
        let (min, max) = self.spread(pick);
        if self.runs.len() < 2 || !min.is_finite() {
            return value(headline, self.unit);
        }
        format!(
            "{} ({}–{})",
            value(headline, self.unit),
            number(min, self.unit),
            number(max, self.unit)
        )
    }

    fn ratio_cell(&self) -> String {
        let (min, max) = self.spread(|s| s.ratio);
        if self.runs.len() < 2 || !min.is_finite() {
            return format!("{:.3}", self.ratio);
        }
        format!("{:.3} ({min:.3}–{max:.3})", self.ratio)
    }

    fn json(&self) -> Value {
        let finite = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
        json!({
            "name": self.name,
            "figure": self.figure,
            "memstress": finite(self.memstress),
            "peer": finite(self.peer),
            "peer_name": self.peer_name,
            "unit": self.unit,
            "ratio": finite(self.ratio),
            "goal": self.goal,
            "met": self.met,
            "runs": self.runs.iter().map(|s| json!({
                "memstress": finite(s.memstress),
                "peer": finite(s.peer),
                "ratio": finite(s.ratio),
            })).collect::<Vec<_>>(),
            "note": self.note,
        })
    }
}

/// The median (the mean of the middle two for an even count); NaN when empty.
pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The `q` quantile (0..=1) by the nearest-rank method; NaN when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = (q * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn number(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "?".to_owned();
    }
    match unit {
        "kills" | "drops" => format!("{v:.0}"),
        "GiB/s" | "GiB/CPU-s" | "%" => format!("{v:.2}"),
        "kills/s" => format!("{v:.0}"),
        _ if v.abs() >= 100.0 => format!("{v:.0}"),
        _ if v.abs() >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

fn value(v: f64, unit: &str) -> String {
    format!("{} {unit}", number(v, unit))
}

/// The machine, in one line: CPU model, cores, RAM, kernel, memory cgroup version.
pub fn machine(h: &sys::Hierarchy) -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let ram_kib: u64 = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} cores, {:.1} GiB RAM, Linux {}, memory cgroup v{}",
        ram_kib as f64 / (1 << 20) as f64,
        kernel.trim(),
        if h.v2 { 2 } else { 1 }
    )
}

fn table(rows: &[Row]) -> String {
    let header = [
        "figure",
        "memstress",
        "peer / limit",
        "ratio",
        "goal",
        "met?",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                format!("{} (vs {})", r.figure, r.peer_name),
                r.cell(r.memstress, |s| s.memstress),
                r.cell(r.peer, |s| s.peer),
                r.ratio_cell(),
                r.goal.clone(),
                if r.goal.starts_with('—') {
                    "—".to_owned()
                } else if r.met {
                    "yes".to_owned()
                } else {
                    "**no**".to_owned()
                },
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String]| {
        let mut s = String::from("|");
        for (c, w) in cols.iter().zip(widths) {
            let pad = w - c.chars().count();
            let _ = write!(s, " {c}{} |", " ".repeat(pad));
        }
        s.push('\n');
        s
    };
    let mut out = line(&header.map(str::to_owned));
    out.push_str(&line(&widths.map(|w| "-".repeat(w))));
    for row in &cells {
        out.push_str(&line(row));
    }
    let notes: Vec<String> = rows
        .iter()
        .filter_map(|r| r.note.as_ref().map(|n| format!("* {}: {n}", r.figure)))
        .collect();
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes.join("\n"));
        out.push('\n');
    }
    out
}

fn build() -> Result<(PathBuf, PathBuf)> {
    eprintln!("bench: building memstress and the bench helper (release)");
    crate::build_with_helper("memstress-bench-helper")
}

/// Runs the bench: builds, measures every figure asked for, prints the table and writes
/// target/bench/results.json and target/bench/table.md.
pub fn bench(args: &Args) -> Result<()> {
    for f in &args.only {
        if !FIGURES.contains(&f.as_str()) {
            bail!("no figure `{f}`; the figures are {}", FIGURES.join(", "));
        }
    }
    let started = Instant::now();
    let (memstress, helper) = build()?;
    sys::catch_signals();
    sys::raise_priority();
    let hierarchy = sys::Hierarchy::discover()?;
    hierarchy.sweep();
    let tools = sys::BenchCgroup::new(&hierarchy, "tools", None)?;
    let plan = Plan::new(args);
    let machine = machine(&hierarchy);
    eprintln!(
        "bench: {} ({} runs per figure) on {machine}",
        if args.quick { "quick" } else { "full" },
        plan.runs
    );
    let ctx = Ctx {
        hierarchy,
        memstress,
        helper,
        tools,
        plan,
    };
    let mut rows = Vec::new();
    for figure in FIGURES {
        if !args.only.is_empty() && !args.only.iter().any(|f| f == figure) {
            continue;
        }
        let t = Instant::now();
        eprintln!("bench: {figure}");
        let mut got = match figure {
            "startup" => startup::measure(&ctx),
            "fault" => fault::measure(&ctx),
            "fill" => fill::measure(&ctx),
            "hold" => hold::measure(&ctx),
            "tell" => tell::measure_tell(&ctx),
            "storm" => tell::measure_storm(&ctx),
            "scale" => scale::measure(&ctx),
            _ => unreachable!("checked above"),
        }
        .with_context(|| format!("figure {figure}"))?;
        eprintln!("bench: {figure} took {:.0?}", t.elapsed());
        rows.append(&mut got);
    }
    let took = started.elapsed();
    let text = table(&rows);
    println!("{text}");
    let out = root().join("target/bench");
    fs::create_dir_all(&out)?;
    let results: Vec<Value> = rows.iter().map(Row::json).collect();
    fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    if let Some(svg) = scale::plot(&rows) {
        fs::write(out.join("scale.svg"), svg)?;
    }
    let sizes = &ctx.plan;
    fs::write(
        out.join("table.md"),
        format!(
            "`cargo xtask bench{}` on {machine}; {} runs per figure; fault {} MiB × {}, fill {} \
             MiB, hold {} MiB for {:?}, {} kills per tell run, storm {} memcgs × {:?}, scale {} \
             passes per run of {} kills each way; took {:.0?}.\n\n{text}",
            if args.quick { " --quick" } else { "" },
            sizes.runs,
            sizes.fault_bytes / MIB,
            sizes.fault_reps,
            sizes.fill_bytes / MIB,
            sizes.hold_bytes / MIB,
            sizes.hold,
            sizes.tell_kills,
            sizes.storm_cgroups,
            sizes.storm_for,
            sizes.scale_passes,
            sizes.scale_kills,
            took
        ),
    )?;
    let missed: Vec<&str> = rows
        .iter()
        .filter(|r| !r.met)
        .map(|r| r.figure.as_str())
        .collect();
    eprintln!(
        "bench: done in {took:.0?}; {} of {} goals met{}; wrote target/bench/results.json and \
         table.md",
        rows.iter()
            .filter(|r| r.met && !r.goal.starts_with('—'))
            .count(),
        rows.iter().filter(|r| !r.goal.starts_with('—')).count(),
        if missed.is_empty() {
            String::new()
        } else {
            format!(" (missed: {}; see docs/benchmarks.md)", missed.join("; "))
        }
    );
    drop(ctx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_quantiles() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
        assert!(median(std::iter::empty()).is_nan());
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 100.0);
        assert_eq!(quantile(&v, 0.99), 198.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn rows_judge_their_goals() {
        let runs = vec![
            Sample::over(0.99, 1.0),
            Sample::over(0.97, 1.0),
            Sample::over(1.0, 1.0),
        ];
        let row = Row::from_runs("x", "x", "none", "GiB/s", runs).ratio_at_least(0.98);
        assert!((row.ratio - 0.99).abs() < 1e-9);
        assert!(row.met);
        let aa = |r: f64| Row::from_runs("a", "a", "a", "GiB/s", vec![Sample::over(r, 1.0)]);
        assert!(aa(1.0).ratio_within(0.98, 1.02).met);
        assert!(aa(0.985).ratio_within(0.98, 1.02).met);
        assert!(!aa(1.03).ratio_within(0.98, 1.02).met);
        assert!(!aa(0.97).ratio_within(0.98, 1.02).met);
        assert!(!aa(f64::NAN).ratio_within(0.98, 1.02).met);
        assert_eq!(aa(1.0).ratio_within(0.98, 1.02).goal, "ratio 1.00 ± 0.02");
        let row =
            Row::from_runs("t", "t", "p", "ms", vec![Sample::over(310.0, 900.0)]).at_most(300.0);
        assert!(!row.met);
        let text = table(&[row]);
        assert!(text.contains("**no**"), "{text}");
        assert!(
            text.lines()
                .all(|l| l.is_empty() || l.starts_with('|') || l.starts_with('*'))
        );
    }

    #[test]
    fn order_rotates() {
        assert_eq!(Ctx::order(3, 0), vec![0, 1, 2]);
        assert_eq!(Ctx::order(3, 1), vec![1, 2, 0]);
        assert_eq!(Ctx::order(3, 5), vec![2, 0, 1]);
    }
}
