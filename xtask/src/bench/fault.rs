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

/// Passes over the three configurations per run; a run's figure for each is the best.
/// Interference only ever slows a fault down (a neighbour's cache footprint, the host
/// taking the vCPU away): the fastest pass is the cleanest view of what the probes cost.
const CYCLES: usize = 3;

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
    let mut bpftrace_vs_none = Vec::new();
    for run in 0..ctx.plan.runs {
        let mut cpu_rates = [Vec::new(), Vec::new(), Vec::new()];
        let mut wall_rates = [Vec::new(), Vec::new(), Vec::new()];
        for which in (0..CYCLES).flat_map(|c| Ctx::order(3, run + c)) {
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
        }
        let best = |r: Vec<f64>| r.into_iter().fold(0.0, f64::max);
        let got = cpu_rates.map(best);
        let wall = wall_rates.map(best);
        eprintln!(
            "bench:   run {}: GiB per CPU-second {:.3} without probes, {:.3} with memstress's \
             ({:.3}), {:.3} with bpftrace's ({:.3}); per wall second {:.3}, {:.3}, {:.3}",
            run + 1,
            got[0],
            got[1],
            got[1] / got[0],
            got[2],
            got[2] / got[0],
            wall[0],
            wall[1],
            wall[2]
        );
        vs_none.push(Sample::over(got[1], got[0]));
        vs_bpftrace.push(Sample::over(got[1], got[2]));
        bpftrace_vs_none.push(Sample::over(got[2], got[0]));
    }
    let bpftrace_ratio = median(bpftrace_vs_none.iter().map(|s| s.ratio));
    let mib = ctx.plan.fault_bytes / MIB;
    Ok(vec![
        Row::from_runs(
            "fault_throughput_probed",
            &format!("1. page-fault throughput, {mib} MiB in a memcg, memstress's probes on"),
            "no probes",
            "GiB/CPU-s",
            vs_none,
        )
        .ratio_at_least(0.98),
        Row::from_runs(
            "fault_throughput_vs_bpftrace",
            &format!("1. page-fault throughput, {mib} MiB in a memcg, memstress's probes on"),
            "bpftrace equivalent's probes on",
            "GiB/CPU-s",
            vs_bpftrace,
        )
        .context()
        .note(format!(
            "the bpftrace script's own throughput ratio against no probes: {bpftrace_ratio:.3} \
             (median of runs)"
        )),
    ])
}
