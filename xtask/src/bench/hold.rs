//! Figure 3: the cost of holding. memstress (default: each page written once, then the
//! stressor sleeps) and stress-ng `--vm-keep` (which re-dirties its memory in a loop) hold
//! the same amount in two cgroups at the same time; once both are full, the CPU time of
//! every process of each (memstress: controller and stressors) is taken over the hold
//! period, from each process's CPU-time clock (nanoseconds, all threads).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{Ctx, MIB, Row, Sample, sys};

const SLACK: u64 = MIB;

/// Each process's CPU time so far: all its threads (exited ones too: memstress's probe
/// loader thread ends during the hold), and the children it reaped.
fn snapshot(pids: &[u32]) -> HashMap<u32, u64> {
    pids.iter()
        .map(|&p| (p, sys::process_cpu_ns(p) + sys::children_cpu_ns(p)))
        .collect()
}

/// CPU used between two snapshots: a process that started in between counts whole; one
/// that ended in between was reaped by a parent in the set, whose children's time holds
/// it (stress-ng restarts its workers).
fn used(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> u64 {
    after
        .iter()
        .map(|(pid, a)| a.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum()
}

/// Measures figure 3.
pub fn measure(ctx: &Ctx) -> Result<Vec<Row>> {
    let bytes = ctx.plan.hold_bytes;
    let size = bytes.to_string();
    let mut samples = Vec::new();
    let mut rss = Vec::new();
    for run in 0..ctx.plan.runs {
        let cg_m = sys::BenchCgroup::new(
            &ctx.hierarchy,
            &format!("hold-m-{run}"),
            Some(bytes + 256 * MIB),
        )?;
        let cg_s = sys::BenchCgroup::new(
            &ctx.hierarchy,
            &format!("hold-s-{run}"),
            Some(bytes + 256 * MIB),
        )?;
        let mut m = sys::Proc::spawn(
            "memstress run",
            &mut ctx.memstress(&["run", "--cgroup", &cg_m.path, "--size", &size])?,
        )?;
        let mut s = sys::Proc::spawn(
            "stress-ng",
            cg_s.command("stress-ng")?.args([
                "--vm",
                "1",
                "--vm-bytes",
                &size,
                "--vm-keep",
                "--timeout",
                "600s",
            ]),
        )?;
        m.wait_line("full", Duration::from_secs(120), |l| {
            l.contains("\"type\":\"full\"")
        })?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while cg_s.usage() + SLACK < bytes {
            sys::check_interrupted()?;
            if s.exited() || Instant::now() > deadline {
                bail!("stress-ng did not fill {} MiB: {}", bytes / MIB, s.stderr());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let pids = |cg: &sys::BenchCgroup, also: Option<u32>| {
            let mut p = cg.procs();
            p.extend(also);
            p
        };
        let m_pids = pids(&cg_m, Some(m.pid()));
        let s_pids = pids(&cg_s, None);
        let (m0, s0, t0) = (snapshot(&m_pids), snapshot(&s_pids), sys::monotonic_ns());
        sys::sleep(ctx.plan.hold)?;
        let (m1, s1, t1) = (
            snapshot(&pids(&cg_m, Some(m.pid()))),
            snapshot(&pids(&cg_s, None)),
            sys::monotonic_ns(),
        );
        if m.exited() || s.exited() {
            bail!(
                "a holder exited during the hold: {} {}",
                m.stderr(),
                s.stderr()
            );
        }
        let wall = (t1 - t0) as f64;
        let (mp, sp) = (
            used(&m0, &m1) as f64 / wall * 100.0,
            used(&s0, &s1) as f64 / wall * 100.0,
        );
        let hwm = sys::status_kib(m.pid(), "VmHWM").unwrap_or(0) as f64 / 1024.0;
        eprintln!(
            "bench:   run {}: memstress {mp:.3}% of one CPU ({} processes), stress-ng {sp:.1}% \
             ({} processes); memstress run's controller peak RSS {hwm:.1} MiB",
            run + 1,
            m_pids.len(),
            s_pids.len()
        );
        samples.push(Sample::over(mp, sp));
        rss.push(hwm);
        m.finish(Some(libc::SIGINT), Duration::from_secs(30))?;
        s.finish(Some(libc::SIGINT), Duration::from_secs(30))?;
    }
    let mib = bytes / MIB;
    let secs = ctx.plan.hold.as_secs();
    let rss_max = rss.iter().copied().fold(0.0, f64::max);
    Ok(vec![
        Row::from_runs(
            "hold_cpu_percent",
            &format!("3. CPU while holding {mib} MiB for {secs} s (% of one CPU)"),
            "stress-ng --vm-keep",
            "%",
            samples,
        )
        .at_most(1.0)
        .note(format!(
            "memstress counts its controller (sampling the cgroup every 100 ms and forecasting its \
             next OOM kill from it and /proc, `-o json`) and its stressor; the `memstress run` controller's peak RSS was at most {rss_max:.1} \
             MiB"
        )),
    ])
}
