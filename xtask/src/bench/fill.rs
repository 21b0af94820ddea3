//! Figure 2: fill rate. From exec of each tool to the moment its cgroup is charged N bytes
//! (the cgroup's own usage counter, read every millisecond): memstress (default, and
//! `--populate`), stress-ng (`--vm-keep`, and with `--vm-populate`), and a minimal
//! `mmap(MAP_POPULATE)` program: the machine's practical limit for one process. Each tool
//! gets a fresh cgroup with the same limit (N + 256 MiB); the order rotates every run.
//!
//! Each run takes every tool's best of [`TRIALS`] fills, interleaved: a fill is CPU-bound
//! (zeroing pages), and on a shared machine a neighbour's burst only ever slows one down, so
//! the best of a few is the tool's own speed and the median over runs is robust.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{Ctx, GIB, MIB, Row, Sample, median, sys};

const VARIANTS: [&str; 5] = [
    "mmap+MAP_POPULATE (limit)",
    "memstress --populate",
    "memstress",
    "stress-ng --vm-keep --vm-populate",
    "stress-ng --vm-keep",
];

/// The cgroup counts as charged N bytes at N − 1 MiB: usage moves in per-CPU batches, and
/// memstress holds its size within a page *below* it (its own footprint included).
const SLACK: u64 = MIB;

/// Fills per tool and run; the fastest counts.
const TRIALS: usize = 2;

struct Fill {
    /// Seconds from exec to charged.
    secs: f64,
    /// memstress only: seconds from its `started` line (the stressor running) to charged.
    fill_phase: Option<f64>,
}

fn one(ctx: &Ctx, variant: usize, run: usize) -> Result<Fill> {
    let bytes = ctx.plan.fill_bytes;
    let cg = sys::BenchCgroup::new(
        &ctx.hierarchy,
        &format!("fill-{run}-{variant}"),
        Some(bytes + 256 * MIB),
    )?;
    let size = bytes.to_string();
    let stress_ng = |populate: bool| -> Result<std::process::Command> {
        let mut cmd = cg.command("stress-ng")?;
        cmd.args([
            "--vm",
            "1",
            "--vm-bytes",
            &size,
            "--vm-keep",
            "--timeout",
            "600s",
        ]);
        if populate {
            cmd.arg("--vm-populate");
        }
        Ok(cmd)
    };
    let mut cmd = match variant {
        0 => {
            let mut cmd = cg.command(&ctx.helper)?;
            cmd.args(["populate", &size]).stdin(Stdio::piped());
            cmd
        }
        1 => ctx.memstress(&["run", "--cgroup", &cg.path, "--size", &size, "--populate"])?,
        2 => ctx.memstress(&["run", "--cgroup", &cg.path, "--size", &size])?,
        3 => stress_ng(true)?,
        _ => stress_ng(false)?,
    };
    let mut p = sys::Proc::spawn(VARIANTS[variant], &mut cmd)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let charged_ns = loop {
        if cg.usage() + SLACK >= bytes {
            break sys::monotonic_ns();
        }
        sys::check_interrupted()?;
        if p.exited() {
            bail!(
                "{} exited before the cgroup was charged: {}",
                VARIANTS[variant],
                p.stderr()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not charge {} MiB within 2 minutes ({} MiB)",
                VARIANTS[variant],
                bytes / MIB,
                cg.usage() / MIB
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let secs = (charged_ns - p.started_ns) as f64 / 1e9;
    let fill_phase = p
        .lines()
        .iter()
        .find(|l| l.text.contains("\"type\":\"started\""))
        .map(|l| charged_ns.saturating_sub(l.at_ns) as f64 / 1e9);
    // stdin (the limit program's) closes when `p` is finished.
    drop(p.take_stdin());
    p.finish(Some(libc::SIGINT), Duration::from_secs(30))
        .with_context(|| format!("stopping {}", VARIANTS[variant]))?;
    cg.wait_drained(u64::MAX, Duration::from_secs(30))?;
    Ok(Fill { secs, fill_phase })
}

/// Measures figure 2.
pub fn measure(ctx: &Ctx) -> Result<Vec<Row>> {
    let gib = ctx.plan.fill_bytes as f64 / GIB as f64;
    let mut rates = vec![Vec::new(); VARIANTS.len()];
    let mut phase = Vec::new();
    for run in 0..ctx.plan.runs {
        let mut got = [0.0f64; 5];
        let mut best_phase = 0.0f64;
        for trial in 0..TRIALS {
            for v in Ctx::order(VARIANTS.len(), run + trial) {
                let fill = one(ctx, v, run * TRIALS + trial).with_context(|| VARIANTS[v])?;
                got[v] = got[v].max(gib / fill.secs);
                if v == 1
                    && let Some(p) = fill.fill_phase
                {
                    best_phase = best_phase.max(gib / p);
                }
            }
        }
        phase.push(best_phase / got[0]);
        eprintln!(
            "bench:   run {}: {}",
            run + 1,
            VARIANTS
                .iter()
                .zip(got)
                .map(|(name, r)| format!("{name} {r:.2} GiB/s ({:.0} ms)", gib / r * 1000.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (v, r) in got.into_iter().enumerate() {
            rates[v].push(r);
        }
    }
    let pair = |a: usize, b: usize| -> Vec<Sample> {
        rates[a]
            .iter()
            .zip(&rates[b])
            .map(|(&m, &p)| Sample::over(m, p))
            .collect()
    };
    let mib = ctx.plan.fill_bytes / MIB;
    let phase = median(phase.into_iter());
    Ok(vec![
        Row::from_runs(
            "fill_populate_vs_limit",
            &format!("2. fill rate to {mib} MiB charged, memstress --populate"),
            VARIANTS[0],
            "GiB/s",
            pair(1, 0),
        )
        .ratio_at_least(0.9)
        .note(format!(
            "rates are N ÷ (exec → cgroup charged N), each run the best of {TRIALS} fills per \
             tool; memstress --populate from its `started` line (its stressor running) to \
             charged: {phase:.3} of the limit's rate (median of runs)"
        )),
        Row::from_runs(
            "fill_populate_vs_stress_ng_populate",
            &format!("2. fill rate to {mib} MiB charged, memstress --populate"),
            VARIANTS[3],
            "GiB/s",
            pair(1, 3),
        )
        .ratio_above(1.0, "faster (ratio > 1)"),
        Row::from_runs(
            "fill_populate_vs_stress_ng",
            &format!("2. fill rate to {mib} MiB charged, memstress --populate"),
            VARIANTS[4],
            "GiB/s",
            pair(1, 4),
        )
        .ratio_above(1.0, "faster (ratio > 1)"),
        Row::from_runs(
            "fill_default_vs_limit",
            &format!("2. fill rate to {mib} MiB charged, memstress (default: one write per page)"),
            VARIANTS[0],
            "GiB/s",
            pair(2, 0),
        )
        .context(),
    ])
}
