//! Figure 6: start-up and footprint. From exec to the `attached` line of `memstress watch`
//! (every probe attached), and the controller's peak RSS (`VmHWM`); beside them, bpftrace
//! running the equivalent script, from exec to its `BEGIN` line (bpftrace runs `BEGIN` once
//! every probe is attached).

use std::time::Duration;

use anyhow::Result;

use super::{Ctx, Row, Sample, sys};

/// One start: milliseconds to attached, and peak RSS in MiB.
fn start(name: &str, mut cmd: std::process::Command, ready: &str) -> Result<(f64, f64)> {
    let mut p = sys::Proc::spawn(name, &mut cmd)?;
    let line = p.wait_line(ready, Duration::from_secs(60), |l| l.contains(ready))?;
    let ms = (line.at_ns - p.started_ns) as f64 / 1e6;
    // Let it settle into its event loop, as it would when watching.
    sys::sleep(Duration::from_millis(200))?;
    let hwm = sys::status_kib(p.pid(), "VmHWM").unwrap_or(0) as f64 / 1024.0;
    p.finish(Some(libc::SIGINT), Duration::from_secs(30))?;
    Ok((ms, hwm))
}

/// Measures figure 6.
pub fn measure(ctx: &Ctx) -> Result<Vec<Row>> {
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for run in 0..ctx.plan.runs {
        let mut got = [(0.0, 0.0); 2];
        for which in Ctx::order(2, run) {
            got[which] = if which == 0 {
                let cmd = ctx.memstress(&["watch", "--cgroup", &ctx.tools.path])?;
                start("memstress watch", cmd, "\"type\":\"attached\"")?
            } else {
                start("bpftrace", ctx.bpftrace()?, "ready")?
            };
        }
        eprintln!(
            "bench:   run {}: memstress {:.0} ms, {:.1} MiB; bpftrace {:.0} ms, {:.1} MiB",
            run + 1,
            got[0].0,
            got[0].1,
            got[1].0,
            got[1].1
        );
        times.push(Sample::over(got[0].0, got[1].0));
        rss.push(Sample::over(got[0].1, got[1].1));
    }
    Ok(vec![
        Row::from_runs(
            "startup_ms",
            "6. start-up: exec → all probes attached",
            "bpftrace equivalent",
            "ms",
            times,
        )
        .at_most(300.0),
        Row::from_runs(
            "controller_peak_rss_mib",
            "6. controller peak RSS (VmHWM)",
            "bpftrace equivalent",
            "MiB",
            rss,
        )
        .at_most(30.0),
    ])
}
