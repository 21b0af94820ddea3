//! Figures 4 and 5: time to tell, and nothing lost under a storm.
//!
//! Small memcgs (a few MiB each) under one parent; in each, a process touches twice its
//! limit and the OOM killer ends it. `memstress watch --cgroup <parent> -o json` runs
//! throughout, its stdout read through a pipe: each `oom_kill` line's arrival
//! (CLOCK_MONOTONIC) minus its `ts_ns` (CLOCK_MONOTONIC at `mark_victim`, taken in BPF) is
//! memstress's time to tell. Beside it, a /dev/kmsg reader (how cAdvisor learns of OOM
//! kills): the arrival of each `Killed process` record minus the same kill's `mark_victim`
//! time. Kills come one at a time: each is timed alone.
//!
//! The storm runs one OOMing process after another in every memcg at once, as fast as the
//! machine allows, and compares the kills memstress reported with the kills the kernel
//! counted (each memcg's `oom_kill` counter), and the ring-buffer drops memstress's `end`
//! line states.

use std::{
    collections::{HashMap, HashSet},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{Ctx, Row, Sample, median, quantile, sys};

/// The parent memcg, its small children, a kernel-log reader and `memstress watch`.
struct Setup {
    parent: sys::BenchCgroup,
    kids: Vec<sys::BenchCgroup>,
    kmsg: sys::Kmsg,
    watch: sys::Proc,
}

fn setup(ctx: &Ctx, tag: &str, kids: usize) -> Result<Setup> {
    let parent = sys::BenchCgroup::new(&ctx.hierarchy, tag, None)?;
    let kids = (0..kids)
        .map(|i| parent.child(&format!("oom{i}"), Some(ctx.plan.oom_limit)))
        .collect::<Result<Vec<_>>>()?;
    let kmsg = sys::Kmsg::open()?;
    let mut cmd = ctx.memstress(&["watch", "--cgroup", &parent.path])?;
    // Each kill's stages on stderr, for the tell breakdown.
    cmd.env("MEMSTRESS_TELL_TIMING", "1");
    let mut watch = sys::Proc::spawn("memstress watch", &mut cmd)?;
    watch.wait_line("attached", Duration::from_secs(60), |l| {
        l.contains("\"type\":\"attached\"")
    })?;
    Ok(Setup {
        parent,
        kids,
        kmsg,
        watch,
    })
}

/// One OOMing process: its pid, whether the OOM killer (SIGKILL) ended it, and the CPU time
/// it used (user + system: the OOM path it ran, and every probe on it).
pub(super) struct Oomed {
    pub pid: u32,
    pub killed: bool,
    pub cpu_ns: u64,
}

/// Starts one process that touches past its memcg's limit (at `adj`, if given) and waits for
/// its end.
pub(super) fn oom_once(ctx: &Ctx, cg: &sys::BenchCgroup, adj: Option<i32>) -> Result<Oomed> {
    let mut cmd = cg.command(&ctx.helper)?;
    cmd.args(["oom".to_owned(), ctx.plan.oom_touch.to_string()])
        .args(adj.map(|a| a.to_string()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().context("starting memstress-bench-helper oom")?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waiting for our own child (never waited through `child`), into values we
        // own.
        let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if got == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e).context("waiting for memstress-bench-helper oom");
        }
    }
    drop(child);
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    Ok(Oomed {
        pid: pid as u32,
        killed: libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
        cpu_ns: ns(usage.ru_utime) + ns(usage.ru_stime),
    })
}

/// A kill as memstress reported it.
struct Reported {
    pid: u32,
    ts_ns: u64,
    at_ns: u64,
}

/// memstress's `oom_kill` lines among `lines`.
fn reported(lines: &[sys::Line]) -> Vec<Reported> {
    lines
        .iter()
        .filter(|l| l.text.contains("\"type\":\"oom_kill\""))
        .filter_map(|l| {
            let v: Value = serde_json::from_str(&l.text).ok()?;
            Some(Reported {
                pid: u32::try_from(v["victim"]["pid"].as_u64()?).ok()?,
                ts_ns: v["ts_ns"].as_u64()?,
                at_ns: l.at_ns,
            })
        })
        .collect()
}

/// Waits until memstress reported a kill of every pid in `pids` (or `timeout` passed);
/// returns the lines printed since line `from`.
fn wait_reported(
    watch: &sys::Proc,
    from: usize,
    pids: &HashSet<u32>,
    timeout: Duration,
) -> Result<Vec<sys::Line>> {
    let end = Instant::now() + timeout;
    loop {
        let lines: Vec<sys::Line> = watch.lines().into_iter().skip(from).collect();
        let seen = reported(&lines)
            .iter()
            .filter(|r| pids.contains(&r.pid))
            .count();
        if seen >= pids.len() || Instant::now() > end {
            return Ok(lines);
        }
        sys::sleep(Duration::from_millis(20))?;
    }
}

fn end_line(watch: sys::Proc) -> Result<(u64, u64)> {
    let (_, lines) = watch.finish(Some(libc::SIGINT), Duration::from_secs(30))?;
    let end = lines
        .iter()
        .rev()
        .find(|l| l.text.contains("\"type\":\"end\""))
        .context("memstress watch printed no `end` line")?;
    let v: Value = serde_json::from_str(&end.text)?;
    Ok((
        v["dropped_records"].as_u64().unwrap_or(u64::MAX),
        v["oom_kills"].as_u64().unwrap_or(0),
    ))
}

/// Measures figure 4.
pub fn measure_tell(ctx: &Ctx) -> Result<Vec<Row>> {
    // As in the scale figure: the OOMing processes on one CPU, memstress and both readers
    // (the threads that take each line's and each kmsg record's arrival) on the other(s).
    // On two CPUs a woken reader would otherwise often be queued on the OOMing CPU, which
    // prints `Killed process …` on the console with interrupts off: the reader's own
    // wake-up, not the tool's, would be timed; a node with more CPUs spares its readers that.
    let cpus = sys::allowed_cpus();
    let split = (cpus.len() >= 2).then(|| {
        let (last, others) = cpus.split_last().expect("two CPUs");
        (*last, others.to_vec())
    });
    if let Some((_, others)) = &split {
        sys::pin_thread(others)?;
    }
    let measured = tell_pinned(ctx, split.as_ref().map(|(cpu, _)| *cpu));
    if split.is_some() {
        sys::pin_thread(&cpus)?;
    }
    measured
}

fn tell_pinned(ctx: &Ctx, loop_cpu: Option<usize>) -> Result<Vec<Row>> {
    let s = setup(ctx, "tell", 4)?;
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let (mut all_m, mut all_k) = (Vec::new(), Vec::new());
    // mark_victim → the printk stamp of the same kill's `Killed process` line.
    let mut printk_gap = Vec::new();
    let mut unreported = 0;
    let mut all_pids = HashSet::new();
    for run in 0..ctx.plan.runs {
        let from = s.watch.line_count();
        s.kmsg.take();
        let mut pids = HashSet::new();
        for i in 0..ctx.plan.tell_kills {
            sys::check_interrupted()?;
            let kid = &s.kids[i % s.kids.len()];
            let Oomed { pid, killed, .. } = std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        if let Some(cpu) = loop_cpu {
                            sys::pin_thread(&[cpu])?;
                        }
                        oom_once(ctx, kid, None)
                    })
                    .join()
                    .expect("the OOM thread")
            })?;
            if !killed {
                bail!("process {pid} was not OOM-killed: is the memcg limit set?");
            }
            pids.insert(pid);
            // One kill at a time: the next starts once both readers were told (or after a
            // second), so that each is timed alone, not queued behind the next one's work.
            let end = Instant::now() + Duration::from_secs(1);
            while Instant::now() < end
                && !(s.kmsg.seen(|r| sys::killed_pid(&r.text) == Some(pid))
                    && reported(&s.watch.lines()[from..])
                        .iter()
                        .any(|r| r.pid == pid))
            {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        all_pids.extend(pids.iter().copied());
        let lines = wait_reported(&s.watch, from, &pids, Duration::from_secs(10))?;
        sys::sleep(Duration::from_millis(200))?;
        let kills: HashMap<u32, Reported> = reported(&lines)
            .into_iter()
            .filter(|r| pids.contains(&r.pid))
            .map(|r| (r.pid, r))
            .collect();
        unreported += pids.len() - kills.len();
        let m: Vec<f64> = kills
            .values()
            .map(|r| r.at_ns.saturating_sub(r.ts_ns) as f64 / 1e6)
            .collect();
        let k: Vec<f64> = s
            .kmsg
            .take()
            .iter()
            .filter_map(|rec| {
                let pid = sys::killed_pid(&rec.text)?;
                if !pids.contains(&pid) {
                    return None;
                }
                // From the same kill's mark_victim when memstress saw it; else from the
                // record's own stamp (printed right after mark_victim).
                let stamped = (rec.ts_ns as i64 - s.kmsg.offset_ns) as u64;
                let from = kills.get(&pid).map_or(stamped, |r| {
                    printk_gap.push((stamped as f64 - r.ts_ns as f64) / 1e6);
                    r.ts_ns
                });
                Some(rec.at_ns.saturating_sub(from) as f64 / 1e6)
            })
            .collect();
        eprintln!(
            "bench:   run {}: {} kills; memstress p50 {:.2} ms p99 {:.2} ms; kmsg reader ({} \
             records) p50 {:.2} ms p99 {:.2} ms",
            run + 1,
            pids.len(),
            quantile(&m, 0.5),
            quantile(&m, 0.99),
            k.len(),
            quantile(&k, 0.5),
            quantile(&k, 0.99)
        );
        p50.push(Sample::over(quantile(&m, 0.5), quantile(&k, 0.5)));
        p99.push(Sample::over(quantile(&m, 0.99), quantile(&k, 0.99)));
        all_m.extend(m);
        all_k.extend(k);
    }
    let hwm = sys::status_kib(s.watch.pid(), "VmHWM").unwrap_or(0) as f64 / 1024.0;
    let stages = stages(&s.watch.stderr(), &all_pids);
    let Setup {
        watch,
        kmsg,
        kids,
        parent,
        ..
    } = s;
    let (drops, _) = end_line(watch)?;
    let lost = kmsg.lost();
    drop((kmsg, kids, parent));
    let n = all_m.len();
    // The headline figures are over every kill of every run, as the goal states them.
    let pooled = |mut row: Row, q: f64| {
        row.memstress = quantile(&all_m, q);
        row.peer = quantile(&all_k, q);
        row.ratio = row.memstress / row.peer;
        row
    };
    let note = format!(
        "over all {n} kills of all runs (runs' spread in brackets); memstress missed {unreported} \
         kills, dropped {drops} records; its controller's peak RSS after them {hwm:.1} MiB; the \
         kmsg reader lost {lost} records; the kernel stamped each `Killed process` line {:.2} ms \
         (median) after mark_victim",
        median(printk_gap.into_iter())
    );
    let mut rows = vec![
        pooled(
            Row::from_runs(
                "time_to_tell_p50_ms",
                "4. time to tell, mark_victim → line on stdout, p50",
                "/dev/kmsg reader",
                "ms",
                p50,
            ),
            0.5,
        )
        .context(),
        pooled(
            Row::from_runs(
                "time_to_tell_p99_ms",
                "4. time to tell, mark_victim → line on stdout, p99",
                "/dev/kmsg reader",
                "ms",
                p99,
            ),
            0.99,
        )
        .at_most(2.0)
        .and_ratio_at_most(0.5)
        .note(note),
    ];
    rows.extend(breakdown(&stages));
    Ok(rows)
}

/// The console this machine prints the OOM killer's `Killed process` line on, if any: every
/// console with a loglevel above 3 prints it synchronously, interrupts off, on the OOMing CPU,
/// and a thread woken onto that CPU meanwhile waits for it. Measured on this VM (serial ttyS0,
/// console_loglevel 4, two CPUs) with the readers free to run anywhere: memstress's time to
/// tell p50 3.95 ms, p99 10.8 ms, though it had written each line by 0.37 ms (p50): the
/// bench's own reader, not memstress, waited. With the OOMing processes on one CPU and the
/// readers on the other: p50 0.34 ms, p99 0.63 ms; the kmsg reader waits for the print itself.
fn console_note() -> String {
    let level = std::fs::read_to_string("/proc/sys/kernel/printk")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u32>().ok());
    let consoles: Vec<String> = std::fs::read_to_string("/proc/consoles")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    match level {
        Some(level) if level > 3 && !consoles.is_empty() => format!(
            "; this machine prints KERN_ERR lines on its console ({}, console_loglevel \
             {level}): the OOMing CPU prints `Killed process …` there with interrupts off \
             right after mark_victim, and a reader woken onto that CPU waits for it; the \
             OOMing processes run on one CPU and memstress and both readers on the others",
            consoles.join(", ")
        ),
        _ => String::new(),
    }
}

/// One kill's stages as `MEMSTRESS_TELL_TIMING=1` prints them (CLOCK_MONOTONIC ns).
struct Stages {
    mark: u64,
    woke: u64,
    named: u64,
    written: u64,
    /// What woke memstress's reader (`wakeup`, `lookout`, `deadline`).
    by: String,
}

/// The stages of the kills of `pids` in memstress's stderr.
fn stages(stderr: &str, pids: &HashSet<u32>) -> Vec<Stages> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("memstress-tell "))
        .filter_map(|l| {
            let field = |k: &str| -> Option<u64> {
                l.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            let pid = u32::try_from(field("pid")?).ok()?;
            pids.contains(&pid).then_some(())?;
            Some(Stages {
                mark: field("mark")?,
                woke: field("woke")?,
                named: field("named")?,
                written: field("written")?,
                by: l
                    .split_whitespace()
                    .find_map(|kv| kv.strip_prefix("by="))
                    .unwrap_or("?")
                    .to_owned(),
            })
        })
        .collect()
}

/// Rows 4a-4c: where the time to tell goes, each stage's p50 and p99 beside the whole
/// (mark_victim → written) at the same quantile.
fn breakdown(stages: &[Stages]) -> Vec<Row> {
    let ms = |f: &dyn Fn(&Stages) -> (u64, u64)| -> Vec<f64> {
        stages
            .iter()
            .map(|s| {
                let (a, b) = f(s);
                b.saturating_sub(a) as f64 / 1e6
            })
            .collect()
    };
    let whole = ms(&|s| (s.mark, s.written));
    let parts: [(&str, &str, Vec<f64>); 3] = [
        (
            "tell_wake",
            "4a. mark_victim → the reader wakes on the ring buffer",
            ms(&|s| (s.mark, s.woke)),
        ),
        (
            "tell_explain",
            "4b. reader woke → records read, explained, named",
            ms(&|s| (s.woke, s.named)),
        ),
        (
            "tell_write",
            "4c. named → the line written to stdout",
            ms(&|s| (s.named, s.written)),
        ),
    ];
    let mut rows = Vec::new();
    let mut by: Vec<(String, usize)> = Vec::new();
    for s in stages {
        match by.iter_mut().find(|(k, _)| *k == s.by) {
            Some((_, n)) => *n += 1,
            None => by.push((s.by.clone(), 1)),
        }
    }
    by.sort_by_key(|b| std::cmp::Reverse(b.1));
    let by = by
        .iter()
        .map(|(k, n)| format!("{n} by {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    let console = format!("; what woke the reader: {by}{}", console_note());
    for (name, figure, values) in parts {
        for (q, tag) in [(0.5, "p50"), (0.99, "p99")] {
            let sample = Sample::over(quantile(&values, q), quantile(&whole, q));
            rows.push(
                Row::from_runs(
                    &format!("{name}_{tag}_ms"),
                    &format!("{figure}, {tag}"),
                    "the whole time to tell (same quantile)",
                    "ms",
                    vec![sample],
                )
                .context()
                .note(format!(
                    "{} kills timed by MEMSTRESS_TELL_TIMING=1; the ratio is this stage's \
                     share{}",
                    stages.len(),
                    if name == "tell_wake" { &console } else { "" }
                )),
            );
        }
    }
    rows
}

/// Measures figure 5.
pub fn measure_storm(ctx: &Ctx) -> Result<Vec<Row>> {
    let s = setup(ctx, "storm", ctx.plan.storm_cgroups)?;
    let mut samples = Vec::new();
    let mut rates = Vec::new();
    let mut kmsg_seen = Vec::new();
    for run in 0..ctx.plan.runs {
        let from = s.watch.line_count();
        s.kmsg.take();
        let before: u64 = s.kids.iter().map(sys::BenchCgroup::oom_kills).sum();
        let start = Instant::now();
        let deadline = start + ctx.plan.storm_for;
        // One thread per memcg, each starting its next OOMing process as soon as the last
        // one died.
        let pids: Vec<u32> = std::thread::scope(|scope| {
            let workers: Vec<_> = s
                .kids
                .iter()
                .map(|cg| {
                    scope.spawn(move || -> Result<Vec<u32>> {
                        let mut pids = Vec::new();
                        while Instant::now() < deadline {
                            sys::check_interrupted()?;
                            pids.push(oom_once(ctx, cg, None)?.pid);
                        }
                        Ok(pids)
                    })
                })
                .collect();
            let mut all = Vec::new();
            for w in workers {
                all.extend(w.join().expect("storm thread")?);
            }
            Ok::<_, anyhow::Error>(all)
        })?;
        let took = start.elapsed().as_secs_f64();
        let kernel = s.kids.iter().map(sys::BenchCgroup::oom_kills).sum::<u64>() - before;
        let set: HashSet<u32> = pids.iter().copied().collect();
        let lines = wait_reported(&s.watch, from, &set, Duration::from_secs(20))?;
        let reported = reported(&lines)
            .iter()
            .filter(|r| set.contains(&r.pid))
            .count() as u64;
        let seen = s
            .kmsg
            .take()
            .iter()
            .filter(|r| sys::killed_pid(&r.text).is_some_and(|p| set.contains(&p)))
            .count();
        let rate = kernel as f64 / took;
        eprintln!(
            "bench:   run {}: {} memcgs, {kernel} kills in {took:.1} s ({rate:.0}/s); memstress \
             reported {reported}; a kmsg reader saw {seen}",
            run + 1,
            s.kids.len()
        );
        samples.push(Sample::over(reported as f64, kernel as f64));
        rates.push(rate);
        kmsg_seen.push(seen as f64);
    }
    let Setup {
        watch,
        kmsg,
        kids,
        parent,
        ..
    } = s;
    let (drops, _) = end_line(watch)?;
    let lost = kmsg.lost();
    drop((kmsg, kids, parent));
    let all_reported = samples.iter().all(|s| s.memstress == s.peer);
    let mut row = Row::from_runs(
        "storm_kills_reported",
        &format!(
            "5. storm: {} memcgs OOMing in parallel, kills reported",
            ctx.plan.storm_cgroups
        ),
        "kernel's oom_kill counters",
        "kills",
        samples,
    )
    .note(format!(
        "{:.0} kills/s (median of runs; min {:.0}, max {:.0}); ring-buffer drops: {drops}; a \
         /dev/kmsg reader saw {:.0} (median) and lost {lost} records",
        median(rates.iter().copied()),
        rates.iter().copied().fold(f64::INFINITY, f64::min),
        rates.iter().copied().fold(0.0, f64::max),
        median(kmsg_seen.into_iter())
    ));
    row.goal = "every kill, 0 drops".to_owned();
    row.met = all_reported && drops == 0;
    Ok(vec![row])
}
