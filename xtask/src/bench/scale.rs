//! Figure 7: scale. The kill rate of an OOM loop with `memstress watch` on it, against the
//! same loop with nothing watching, as the node holds more processes.
//!
//! One small memcg (the tell and storm figures' limit; the process touches twice it, with
//! `oom_score_adj` 1000), one OOMing process after another, each started the moment the last
//! one was killed: [`Plan::scale_kills`](super::Plan) kills per block, kill rate = kills ÷ the
//! block's time. Blocks alternate between nothing watching and `memstress watch --cgroup
//! <that memcg>` (started before the block, its `attached` line awaited, stopped after it),
//! in an order that flips every pass; each block starts after the same pause ([`SETTLE`]),
//! and a watched block ends only once every BPF program and map memstress held is gone
//! (its detach is over before the next block starts). A pass's ratio is watched ÷
//! unwatched; a run's, the median of its passes'; the headline, the median of every pass.
//!
//! The loop (the bench's thread that starts and reaps the OOMing processes, and so the
//! processes) runs on one CPU, memstress on the others: on a two-CPU machine memstress's
//! controller would otherwise take turns with the loop on its CPU, which a node with more
//! CPUs spares its workloads, and the figure is about what each kill costs where it runs (the
//! OOM path under `oom_lock`, every probe on it). The controller's CPU time per kill is
//! reported beside.
//!
//! Settings, one row each, measured one after the other in the same bench:
//!
//! * +0, +1,000, +10,000 idle processes elsewhere on the node (`memstress-bench-helper idle`
//!   in a cgroup of their own, no limit): the memcg OOM only weighs the memcg's own tasks
//!   (the kill itself still walks every process on the node, to find others sharing the
//!   victim's memory: the unwatched rate falls too), so what the watcher adds with them is
//!   its own walk over the node.
//! * 4,096 tasks in the OOMing domain: a parent memcg whose limit is its usage with the idle
//!   processes in it plus the small limit, the idle processes in one child, the OOMing process
//!   in another; the domain then holds 4,096 tasks, every one a candidate the kernel weighs
//!   and memstress reports. The idle ones keep `oom_score_adj` 0 and hold about 100 KiB each:
//!   the toucher, at 1000 and a few MiB, is always the victim.
//!
//! The idle processes are stopped and reaped after their setting (and killed with their
//! cgroup on every other exit path); the bench waits until the node's task count is back.

use std::{
    os::unix::process::CommandExt as _,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{Ctx, Row, Sample, median, sys};

/// Idle processes elsewhere on the node, one row each.
pub const EXTRA: [usize; 3] = [0, 1_000, 10_000];

/// Tasks in the OOMing domain for the last row.
pub const DOMAIN_TASKS: usize = 4_096;

/// The OOMing process's `oom_score_adj`: it is the victim.
const TOUCHER_ADJ: i32 = 1000;

/// What the kernel spends on one idle process, and more (task, stack, page tables, mm): for
/// the check that the machine can take them.
const PER_IDLE: u64 = 256 << 10;

/// Pause before each block.
const SETTLE: Duration = Duration::from_millis(300);

/// A setting: where the idle processes are, and how many.
#[derive(Clone, Copy, Debug)]
enum Setting {
    /// Elsewhere on the node.
    Extra(usize),
    /// Inside the OOMing domain, with the toucher: this many tasks in all.
    Domain(usize),
}

impl Setting {
    fn name(self) -> String {
        match self {
            Self::Extra(n) => format!("scale_kill_rate_extra_{n}"),
            Self::Domain(n) => format!("scale_kill_rate_domain_{n}"),
        }
    }

    fn figure(self) -> String {
        match self {
            Self::Extra(n) => format!(
                "7. scale: kill rate, memstress watching / nothing, +{} idle tasks",
                thousands(n)
            ),
            Self::Domain(n) => format!(
                "7. scale: kill rate, memstress watching / nothing, {} tasks in the domain",
                thousands(n)
            ),
        }
    }

    fn short(self) -> String {
        match self {
            Self::Extra(n) => format!("+{n} idle"),
            Self::Domain(n) => format!("{n} in the domain"),
        }
    }
}

/// `10000` → `10,000`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Idle processes: `memstress-bench-helper idle` and its children.
struct Idle {
    proc: Option<sys::Proc>,
}

impl Idle {
    /// Starts `n` idle processes (the helper and its children) in `cg`.
    fn start(ctx: &Ctx, cg: &sys::BenchCgroup, n: usize) -> Result<Self> {
        if n == 0 {
            return Ok(Self { proc: None });
        }
        sys::can_take_processes(n as u64, PER_IDLE)
            .with_context(|| format!("{n} idle processes"))?;
        let mut cmd = cg.command(&ctx.helper)?;
        cmd.args(["idle", &n.to_string()]).stdin(Stdio::piped());
        let t = Instant::now();
        let mut p = sys::Proc::spawn("memstress-bench-helper idle", &mut cmd)?;
        p.wait_line("ready", Duration::from_secs(300), |l| {
            l.starts_with("ready")
        })?;
        let there = cg.procs().len();
        if there != n {
            bail!("{there} of {n} idle processes are in {}", cg.path);
        }
        eprintln!(
            "bench:   {n} idle processes started in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        Ok(Self { proc: Some(p) })
    }

    /// Stops them: the helper ends its children, reaps them and exits.
    fn stop(mut self) -> Result<()> {
        let Some(mut p) = self.proc.take() else {
            return Ok(());
        };
        drop(p.take_stdin());
        let (status, lines) = p.finish(None, Duration::from_secs(120))?;
        if !status.success() || !lines.iter().any(|l| l.text.starts_with("reaped")) {
            bail!("the idle processes' parent ended with {status} without reaping them all");
        }
        Ok(())
    }
}

/// Waits until the node's task count is back to about `before` (the idle processes reaped).
fn wait_tasks(before: u64, extra: usize) -> Result<()> {
    if extra == 0 {
        return Ok(());
    }
    // The machine's other work comes and goes; the idle processes were thousands.
    let slack = 300;
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let now = sys::nr_tasks()?;
        if now <= before + slack {
            return Ok(());
        }
        if Instant::now() > end {
            bail!(
                "{now} tasks on the node 60 s after stopping {extra} idle processes ({before} \
                 before them)"
            );
        }
        sys::sleep(Duration::from_millis(50))?;
    }
}

/// One OOMing process's CPU time (ns): the OOM path it ran, and every probe on it.
fn oom_timed(ctx: &Ctx, cg: &sys::BenchCgroup) -> Result<u64> {
    let o = super::tell::oom_once(ctx, cg, Some(TOUCHER_ADJ))?;
    if !o.killed {
        bail!("process {} was not OOM-killed in {}", o.pid, cg.path);
    }
    Ok(o.cpu_ns)
}

/// One block's result.
struct Block {
    /// Kills per second: kills ÷ the block's time.
    rate: f64,
    /// Median CPU time of an OOMing process, ms.
    cpu_ms: f64,
    /// Watched blocks: CPU time memstress's controller used per kill (ms), and the kills it
    /// reported.
    watcher: Option<(f64, usize)>,
    /// Watched blocks: each reported kill's `scan_us` and `oom_path_us` (the scan's time in
    /// the OOM path, and the kernel's own path before it).
    scan: Vec<(f64, f64)>,
}

/// [`Plan::scale_kills`](super::Plan) OOM kills in a row in `oom`, with `memstress watch
/// --cgroup <watch>` on or not.
fn block(ctx: &Ctx, oom: &sys::BenchCgroup, watch: &str, watched: bool) -> Result<Block> {
    let cpus = sys::allowed_cpus();
    let pin = std::env::var("SCALE_NOPIN").is_err() && cpus.len() >= 2;
    let (loop_cpu, others) = cpus
        .split_last()
        .map(|(l, o)| (*l, o.to_vec()))
        .unwrap_or_default();
    let tool = if watched {
        let mut cmd = ctx.memstress(&["watch", "--cgroup", watch])?;
        if pin {
            let others = others.clone();
            // SAFETY: sched_setaffinity in the child before exec; the set is built before the
            // call, nothing allocates in it.
            unsafe {
                cmd.pre_exec(move || {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    for &c in &others {
                        libc::CPU_SET(c, &mut set);
                    }
                    if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut p = sys::Proc::spawn("memstress watch", &mut cmd)?;
        p.wait_line("attached", Duration::from_secs(60), |l| {
            l.contains("\"type\":\"attached\"")
        })?;
        let held = sys::bpf_held(p.pid());
        Some((p, held))
    } else {
        None
    };
    sys::sleep(SETTLE)?;
    let kills = ctx.plan.scale_kills;
    let watcher_cpu = tool.as_ref().map(|(p, _)| sys::process_cpu_ns(p.pid()));
    let (rate, cpu) = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<(f64, Vec<f64>)> {
                if pin {
                    sys::pin_thread(&[loop_cpu])?;
                }
                let start = Instant::now();
                let mut cpu = Vec::with_capacity(kills);
                for _ in 0..kills {
                    sys::check_interrupted()?;
                    cpu.push(oom_timed(ctx, oom)? as f64 / 1e6);
                }
                Ok((kills as f64 / start.elapsed().as_secs_f64(), cpu))
            })
            .join()
            .expect("the kill loop's thread")
    })?;
    let mut scan = Vec::new();
    let watcher = match tool {
        Some((mut p, held)) => {
            let used = sys::process_cpu_ns(p.pid()).saturating_sub(watcher_cpu.unwrap_or(0));
            if p.exited() {
                bail!("memstress watch exited during the block: {}", p.stderr());
            }
            let (_, lines) = p.finish(Some(libc::SIGINT), Duration::from_secs(30))?;
            // Its detach over before anything else is measured.
            sys::wait_bpf_released(&held, Duration::from_secs(30))?;
            let killed: Vec<serde_json::Value> = lines
                .iter()
                .filter(|l| l.text.contains("\"type\":\"oom_kill\""))
                .filter_map(|l| serde_json::from_str(&l.text).ok())
                .collect();
            scan.extend(
                killed
                    .iter()
                    .filter_map(|k| Some((k["scan_us"].as_f64()?, k["oom_path_us"].as_f64()?))),
            );
            Some((used as f64 / 1e6 / kills as f64, killed.len()))
        }
        None => None,
    };
    Ok(Block {
        rate,
        cpu_ms: median(cpu.into_iter()),
        watcher,
        scan,
    })
}

/// One setting's rows: the kill rate, and the scan's share of the OOM path.
fn setting(ctx: &Ctx, setting: Setting) -> Result<Vec<Row>> {
    let tasks_before = sys::nr_tasks()?;
    let (idle_cg, oom, domain, idle_n) = match setting {
        Setting::Extra(n) => {
            let idle_cg = sys::BenchCgroup::new(&ctx.hierarchy, "scale-idle", None)?;
            let oom = sys::BenchCgroup::new(&ctx.hierarchy, "scale-oom", Some(ctx.plan.oom_limit))?;
            (idle_cg, oom, None, n)
        }
        Setting::Domain(n) => {
            let domain = sys::BenchCgroup::new(&ctx.hierarchy, "scale-domain", None)?;
            let idle_cg = domain.child("idle", None)?;
            let oom = domain.child("oom", None)?;
            // Every task but the toucher.
            (idle_cg, oom, Some(domain), n - 1)
        }
    };
    // Dropped before the cgroups (declared after them): the helper killed first.
    let idle = Idle::start(ctx, &idle_cg, idle_n)?;
    let watch = match &domain {
        Some(domain) => {
            // Full with the idle processes in it, but for the small limit.
            domain.set_limit(domain.usage() + ctx.plan.oom_limit)?;
            domain.path.clone()
        }
        None => oom.path.clone(),
    };
    let passes = ctx.plan.scale_passes;
    let mut runs = Vec::new();
    let mut all = Vec::new();
    let (mut scan_runs, mut scan_all) = (Vec::new(), Vec::new());
    let (mut added_ms, mut added_cpu_ms, mut watcher_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut reported, mut watched_kills) = (0, 0);
    for run in 0..ctx.plan.runs {
        let mut samples = Vec::new();
        let mut scans: Vec<(f64, f64)> = Vec::new();
        for pass in 0..passes {
            let mut blocks = [None, None];
            for which in Ctx::order(2, run * passes + pass) {
                let b = block(ctx, &oom, &watch, which == 1).with_context(|| {
                    format!("{}, {}", setting.short(), ["unwatched", "watched"][which])
                })?;
                blocks[which] = Some(b);
            }
            let [Some(unwatched), Some(watched)] = blocks else {
                unreachable!("both configurations ran");
            };
            scans.extend(&watched.scan);
            let (controller_ms, seen) = watched.watcher.unwrap_or_default();
            reported += seen;
            watched_kills += ctx.plan.scale_kills;
            let ms = 1e3 / watched.rate - 1e3 / unwatched.rate;
            eprintln!(
                "bench:   {}, run {} pass {}: {:.0} kills/s unwatched, {:.0} watched ({:.3}; \
                 {ms:+.2} ms per kill); the OOMing process's CPU {:.2} / {:.2} ms; memstress's \
                 controller {controller_ms:.2} ms of CPU per kill",
                setting.short(),
                run + 1,
                pass + 1,
                unwatched.rate,
                watched.rate,
                watched.rate / unwatched.rate,
                unwatched.cpu_ms,
                watched.cpu_ms,
            );
            samples.push(Sample::over(watched.rate, unwatched.rate));
            added_ms.push(ms);
            added_cpu_ms.push(watched.cpu_ms - unwatched.cpu_ms);
            watcher_ms.push(controller_ms);
        }
        runs.push(Sample {
            memstress: median(samples.iter().map(|s| s.memstress)),
            peer: median(samples.iter().map(|s| s.peer)),
            ratio: median(samples.iter().map(|s| s.ratio)),
        });
        all.extend(samples);
        if !scans.is_empty() {
            scan_runs.push(Sample {
                memstress: median(scans.iter().map(|s| s.0)),
                peer: median(scans.iter().map(|s| s.1)),
                ratio: median(scans.iter().map(|s| s.0 / s.1)),
            });
            scan_all.extend(scans);
        }
    }
    idle.stop()?;
    wait_tasks(tasks_before, idle_n)?;
    let mut row = Row::from_runs(
        &setting.name(),
        &setting.figure(),
        "nothing watching",
        "kills/s",
        runs,
    );
    row.ratio = median(all.iter().map(|s| s.ratio));
    let note = format!(
        "{:+.2} ms per kill with memstress watching (1/rate watched − 1/rate unwatched; median \
         of all {} passes of {} kills each way, runs' medians in brackets), of which {:+.2} ms \
         in the OOMing process's own CPU time (the OOM path and every probe on it); memstress's \
         controller used {:.2} ms of CPU per kill and reported {reported} of {watched_kills} \
         kills",
        median(added_ms.into_iter()),
        all.len(),
        ctx.plan.scale_kills,
        median(added_cpu_ms.into_iter()),
        median(watcher_ms.into_iter()),
    );
    let rate = match setting {
        Setting::Extra(_) => row.ratio_at_least(0.95),
        Setting::Domain(_) => row.context(),
    }
    .note(note);
    let mut rows = vec![rate];
    if !scan_all.is_empty() {
        let mut share = Row::from_runs(
            &setting.name().replace("kill_rate", "scan_share"),
            &setting.figure().replace(
                "7. scale: kill rate, memstress watching / nothing",
                "7b. scale: the scan's time in the OOM path (µs)",
            ),
            "the kernel's own OOM path: the trigger's last reclaim → mark_victim",
            "µs",
            scan_runs,
        );
        share.ratio = median(scan_all.iter().map(|s| s.0 / s.1));
        let share = match setting {
            Setting::Extra(_) => share.ratio_at_most(0.10),
            Setting::Domain(_) => share.context(),
        };
        rows.push(share.note(format!(
            "each watched kill's `scan_us` (the candidate scan memstress's mark_victim program \
             runs while the kernel holds oom_lock, timed in the program) over its \
             `oom_path_us` (from the end of the OOMing task's last memcg reclaim, after which \
             the charge gave up, to mark_victim: selection and the report the kernel prints); \
             ratio: median over all {} kills, runs' medians in brackets; p90 of the ratio {:.3}",
            scan_all.len(),
            super::quantile(&scan_all.iter().map(|s| s.0 / s.1).collect::<Vec<_>>(), 0.9),
        )));
    }
    Ok(rows)
}

/// Measures figure 7.
pub fn measure(ctx: &Ctx) -> Result<Vec<Row>> {
    EXTRA
        .into_iter()
        .map(Setting::Extra)
        .chain([Setting::Domain(DOMAIN_TASKS)])
        .map(|s| setting(ctx, s).with_context(|| s.short()))
        .collect::<Result<Vec<_>>>()
        .map(|rows| rows.into_iter().flatten().collect())
}

/// The scale figure as a small SVG (`target/bench/scale.svg`): per setting, the kill rate
/// with memstress watching and with nothing watching (left), and the scan's time in the OOM
/// path beside the kernel's own path (right, log scale). `None` without the scale rows.
pub fn plot(rows: &[Row]) -> Option<String> {
    let settings: Vec<Setting> = EXTRA
        .into_iter()
        .map(Setting::Extra)
        .chain([Setting::Domain(DOMAIN_TASKS)])
        .collect();
    let find = |name: String| rows.iter().find(|r| r.name == name);
    let rates: Vec<Option<&Row>> = settings.iter().map(|s| find(s.name())).collect();
    if rates.iter().all(Option::is_none) {
        return None;
    }
    let scans: Vec<Option<&Row>> = settings
        .iter()
        .map(|s| find(s.name().replace("kill_rate", "scan_share")))
        .collect();
    let (w, h, top, bottom) = (860.0_f64, 300.0_f64, 40.0_f64, 250.0_f64);
    let panel = |x0: f64| (x0 + 50.0, x0 + 400.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"{w}\" height=\"{h}\" \
         fill=\"white\"/>\n"
    );
    let label = |s: &Setting| match s {
        Setting::Extra(n) => format!("+{} idle", thousands(*n)),
        Setting::Domain(n) => format!("{} in domain", thousands(*n)),
    };
    let bars = |svg: &mut String,
                x0: f64,
                title: &str,
                pairs: &[(Option<f64>, Option<f64>)],
                y: &dyn Fn(f64) -> f64,
                ticks: &[(f64, String)],
                names: [&str; 2]| {
        let (left, right) = panel(x0);
        svg.push_str(&format!(
            "<text x=\"{left}\" y=\"20\" font-weight=\"bold\">{title}</text>\n\
             <line x1=\"{left}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\" \
             stroke=\"black\"/>\n<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" \
             y2=\"{bottom}\" stroke=\"black\"/>\n"
        ));
        for (v, text) in ticks {
            let ty = y(*v);
            svg.push_str(&format!(
                "<line x1=\"{}\" y1=\"{ty:.1}\" x2=\"{right}\" y2=\"{ty:.1}\" \
                 stroke=\"#ddd\"/>\n<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{text}\
                 </text>\n",
                left,
                left - 4.0,
                ty + 4.0
            ));
        }
        let slot = (right - left) / pairs.len() as f64;
        for (i, (a, b)) in pairs.iter().enumerate() {
            let x = left + slot * i as f64;
            for (j, (v, colour)) in [(a, "#1f77b4"), (b, "#bbbbbb")].into_iter().enumerate() {
                let Some(v) = v else { continue };
                let bx = x + slot * (0.15 + 0.35 * j as f64);
                let by = y(*v).min(bottom);
                svg.push_str(&format!(
                    "<rect x=\"{bx:.1}\" y=\"{by:.1}\" width=\"{:.1}\" height=\"{:.1}\" \
                     fill=\"{colour}\"/>\n",
                    slot * 0.33,
                    bottom - by
                ));
            }
            svg.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">{}</text>\n",
                x + slot / 2.0,
                bottom + 15.0,
                label(&settings[i])
            ));
        }
        for (j, (name, colour)) in names.iter().zip(["#1f77b4", "#bbbbbb"]).enumerate() {
            let ly = bottom + 32.0 + 14.0 * j as f64;
            svg.push_str(&format!(
                "<rect x=\"{left}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{colour}\"/>\
                 <text x=\"{}\" y=\"{:.1}\">{name}</text>\n",
                ly - 9.0,
                left + 14.0,
                ly
            ));
        }
    };
    let rate_pairs: Vec<(Option<f64>, Option<f64>)> = rates
        .iter()
        .map(|r| (r.map(|r| r.memstress), r.map(|r| r.peer)))
        .collect();
    let max_rate = rate_pairs
        .iter()
        .flat_map(|(a, b)| [*a, *b])
        .flatten()
        .fold(1.0_f64, f64::max);
    let step = [10.0, 20.0, 50.0, 100.0, 200.0]
        .into_iter()
        .find(|s| max_rate / s <= 6.0)
        .unwrap_or(500.0);
    let scale_max = (max_rate / step).ceil() * step;
    let linear = |v: f64| bottom - (bottom - top) * v / scale_max;
    let rate_ticks: Vec<(f64, String)> = (0..=(scale_max / step) as usize)
        .map(|i| (i as f64 * step, format!("{}", i as f64 * step)))
        .collect();
    bars(
        &mut svg,
        0.0,
        "OOM kills/s",
        &rate_pairs,
        &linear,
        &rate_ticks,
        ["memstress watching", "nothing watching"],
    );
    let scan_pairs: Vec<(Option<f64>, Option<f64>)> = scans
        .iter()
        .map(|r| (r.map(|r| r.memstress), r.map(|r| r.peer)))
        .collect();
    let log = |v: f64| {
        let v = v.clamp(1.0, 1e5).log10();
        bottom - (bottom - top) * v / 5.0
    };
    let log_ticks: Vec<(f64, String)> = [
        (1.0, "1 µs"),
        (10.0, "10 µs"),
        (100.0, "100 µs"),
        (1e3, "1 ms"),
        (1e4, "10 ms"),
        (1e5, "100 ms"),
    ]
    .into_iter()
    .map(|(v, t)| (v, t.to_owned()))
    .collect();
    bars(
        &mut svg,
        430.0,
        "Time in the OOM path per kill (log)",
        &scan_pairs,
        &log,
        &log_ticks,
        [
            "memstress's scan (under oom_lock)",
            "the kernel's own path (last reclaim → mark_victim)",
        ],
    );
    svg.push_str("</svg>\n");
    Some(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn the_plot_has_a_pair_of_bars_per_setting_and_figure() {
        assert_eq!(plot(&[]), None);
        let row = |name: String, m: f64, p: f64| {
            Row::from_runs(&name, "f", "p", "kills/s", vec![Sample::over(m, p)])
        };
        let mut rows = Vec::new();
        for (i, s) in EXTRA
            .into_iter()
            .map(Setting::Extra)
            .chain([Setting::Domain(DOMAIN_TASKS)])
            .enumerate()
        {
            rows.push(row(s.name(), 100.0 - 10.0 * i as f64, 100.0));
            rows.push(row(s.name().replace("kill_rate", "scan_share"), 27.0, 18.0));
        }
        let svg = plot(&rows).expect("a plot");
        assert_eq!(svg.matches("<rect x=").count(), 2 * 8 + 4, "{svg}");
        for label in ["+0 idle", "+1,000 idle", "+10,000 idle", "4,096 in domain"] {
            assert_eq!(svg.matches(label).count(), 2, "{label}");
        }
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }
}
