//! Figure 1: probe overhead on the hot path. A program touches N bytes of fresh anonymous
//! memory inside a memcg, one page fault per page, a few times per configuration: with no
//! probes, with everything `memstress watch` attaches (the same set `memstress run`
//! attaches, charge-path probes included), and with the equivalent bpftrace script. The
//! configurations alternate within each run ([`CYCLES`] times, in an order that rotates),
//! so that each run's ratio compares throughputs measured seconds apart; each measurement
//! starts after the same pause ([`SETTLE`]), since the kernel's deferred work after a tool
//! detaches its programs (freeing them, their maps, a 4 MiB ring buffer) slows the next
//! second or so of page faults whichever configuration comes next.
//!
//! Throughput is bytes faulted per second of the toucher's own CPU time: page faults, and
//! every probe they could trigger, run on the faulting thread, so its CPU clock counts them
//! all, while the wall clock of a shared machine also counts the time other processes held
//! the CPU (the wall-clock figure is printed in the progress lines).

use std::{process::Stdio, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::{Ctx, GIB, MIB, Row, Sample, median, sys};

const CONFIGS: [&str; 3] = ["no probes", "memstress", "bpftrace"];

/// Passes over the three configurations per run. Each pass gives one ratio of throughputs
/// measured a few seconds apart; a run's ratio is the median of its passes', and the
/// headline the median of every pass of every run: on a shared machine throughput swings
/// by a third over tens of seconds, so only ratios of neighbouring measurements are
/// comparable.
const CYCLES: usize = 4;

/// Pause before each measurement, whatever ran before it.
const SETTLE: Duration = Duration::from_millis(700);

/// Runs the toucher in `cg`; returns its median throughput in GiB per CPU-second and per
/// wall-clock second.
fn touch(ctx: &Ctx, cg: &sys::BenchCgroup) -> Result<(f64, f64)> {
    let bytes = ctx.plan.fault_bytes;
    let mut cmd = cg.command(&ctx.helper)?;
    cmd.args([
        "touch",
        &bytes.to_string(),
        &ctx.plan.fault_reps.to_string(),
    ])
    .stdin(Stdio::null());
    let p = sys::Proc::spawn("memstress-bench-helper touch", &mut cmd)?;
    let (status, lines) = p.finish(None, Duration::from_secs(300))?;
    if !status.success() {
        bail!("the toucher failed ({status})");
    }
    let gib = bytes as f64 / GIB as f64;
    let (wall, cpu): (Vec<f64>, Vec<f64>) = lines
        .iter()
        .filter_map(|l| {
            // "ns WALL cpu CPU"
            let mut w = l.text.split_whitespace();
            let wall: f64 = w.nth(1)?.parse().ok()?;
            let cpu: f64 = w.nth(1)?.parse().ok()?;
            Some((gib / (wall / 1e9), gib / (cpu / 1e9)))
        })
        .unzip();
    if cpu.len() != ctx.plan.fault_reps as usize {
        bail!(
            "the toucher printed {} of {} timings",
            cpu.len(),
            ctx.plan.fault_reps
        );
    }
    Ok((median(cpu.into_iter()), median(wall.into_iter())))
}

/// Measures figure 1.
pub fn measure(ctx: &Ctx) -> Result<Vec<Row>> {
    let cg = sys::BenchCgroup::new(
        &ctx.hierarchy,
        "fault",
        Some(ctx.plan.fault_bytes + 256 * MIB),
    )?;
    let mut vs_none = Vec::new();
    let mut vs_bpftrace = Vec::new();
    // Every pass's ratios: memstress ÷ none, memstress ÷ bpftrace, bpftrace ÷ none.
    let mut passes: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for run in 0..ctx.plan.runs {
        let mut cpu_rates = [Vec::new(), Vec::new(), Vec::new()];
        let mut wall_rates = [Vec::new(), Vec::new(), Vec::new()];
        let mut ratios: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for (step, which) in (0..CYCLES).flat_map(|c| Ctx::order(3, run + c)).enumerate() {
            let probe = match which {
                0 => None,
                1 => {
                    let mut p = sys::Proc::spawn(
                        "memstress watch",
                        &mut ctx.memstress(&["watch", "--cgroup", &cg.path])?,
                    )?;
                    p.wait_line("attached", Duration::from_secs(60), |l| {
                        l.contains("\"type\":\"attached\"")
                    })?;
                    Some(p)
                }
                _ => {
                    let mut p = sys::Proc::spawn("bpftrace", &mut ctx.bpftrace()?)?;
                    p.wait_line("ready", Duration::from_secs(60), |l| l == "ready")?;
                    Some(p)
                }
            };
            sys::sleep(SETTLE)?;
            let (cpu, wall) =
                touch(ctx, &cg).with_context(|| format!("with {}", CONFIGS[which]))?;
            cpu_rates[which].push(cpu);
            wall_rates[which].push(wall);
            if let Some(mut p) = probe {
                if p.exited() {
                    bail!(
                        "{} exited during the measurement: {}",
                        CONFIGS[which],
                        p.stderr()
                    );
                }
                p.finish(Some(libc::SIGINT), Duration::from_secs(30))?;
            }
            if step % 3 == 2 {
                let last = |c: usize| *cpu_rates[c].last().expect("one per pass");
                ratios[0].push(last(1) / last(0));
                ratios[1].push(last(1) / last(2));
                ratios[2].push(last(2) / last(0));
            }
        }
        let got = cpu_rates.map(|r| median(r.into_iter()));
        let wall = wall_rates.map(|r| median(r.into_iter()));
        let ratio = ratios.clone().map(|r| median(r.into_iter()));
        for (all, these) in passes.iter_mut().zip(ratios) {
            all.extend(these);
        }
        eprintln!(
            "bench:   run {}: GiB per CPU-second {:.3} without probes, {:.3} with memstress's \
             ({:.3}), {:.3} with bpftrace's ({:.3}); per wall second {:.3}, {:.3}, {:.3}",
            run + 1,
            got[0],
            got[1],
            ratio[0],
            got[2],
            ratio[2],
            wall[0],
            wall[1],
            wall[2]
        );
        let sample = |memstress: f64, peer: f64, ratio: f64| Sample {
            memstress,
            peer,
            ratio,
        };
        vs_none.push(sample(got[1], got[0], ratio[0]));
        vs_bpftrace.push(sample(got[1], got[2], ratio[1]));
    }
    let pooled = |mut row: Row, i: usize| {
        row.ratio = median(passes[i].iter().copied());
        row
    };
    let n = passes[0].len();
    let mib = ctx.plan.fault_bytes / MIB;
    Ok(vec![
        pooled(
            Row::from_runs(
                "fault_throughput_probed",
                &format!("1. page-fault throughput, {mib} MiB in a memcg, memstress's probes on"),
                "no probes",
                "GiB/CPU-s",
                vs_none,
            ),
            0,
        )
        .ratio_at_least(0.98)
        .note(format!(
            "throughput per CPU-second of the faulting thread; ratio: median of all {n} passes \
             (each pass measures the configurations seconds apart), runs' medians in brackets; \
             the bpftrace script's ratio against no probes: {:.3}",
            median(passes[2].iter().copied())
        )),
        pooled(
            Row::from_runs(
                "fault_throughput_vs_bpftrace",
                &format!("1. page-fault throughput, {mib} MiB in a memcg, memstress's probes on"),
                "bpftrace equivalent's probes on",
                "GiB/CPU-s",
                vs_bpftrace,
            ),
            1,
        )
        .context(),
    ])
}
