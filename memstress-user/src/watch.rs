//! `memstress watch`: every OOM kill on the node (or under one cgroup), the moment the kernel
//! makes it.

use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    cgroup::{Cgroup, Hierarchy},
    event::{self, Record},
    probe::{self, Probes},
    report::{KillContext, Reporter},
    signals,
};

/// Options of `memstress watch`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Only kills in this cgroup or below it.
    pub cgroup: Option<String>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Print which probes attached and exit.
    pub explain_probes: bool,
    /// Probe options.
    pub probe: probe::Options,
}

#[derive(Serialize)]
struct EndLine {
    oom_kills: u64,
    victims_exiting: u64,
    dropped_records: u64,
}

/// Runs `watch` until interrupted or `duration` passes.
pub async fn watch(opts: Options, reporter: &Reporter) -> Result<()> {
    // Resolve the filter first: a typo should not need root to be reported.
    let filter = match &opts.cgroup {
        Some(path) => {
            let hierarchy = Hierarchy::discover()?;
            let cgroup = Cgroup::resolve(&hierarchy, path)?;
            let id = cgroup.id()?;
            Some((cgroup, id))
        }
        None => None,
    };
    let mut probes = Probes::load(&opts.probe)?;
    probes.announce(reporter, filter.as_ref().map(|(c, _)| c.path.as_str()));
    if opts.explain_probes {
        for s in &probes.status {
            let state = if s.attached {
                "attached"
            } else {
                "NOT attached"
            };
            let why = s
                .error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            reporter.text(&format!(
                "{:<10} {:<18} {state}{why}: {}",
                s.kind, s.hook, s.purpose
            ));
        }
        for m in &probes.missing {
            reporter.text(&format!("unknown on this kernel: {m}"));
        }
        return Ok(());
    }
    let scope = filter.as_ref().map_or_else(
        || "on this node".to_owned(),
        |(c, _)| format!("in {}", c.path),
    );
    tracing::info!("watching OOM kills {scope} ({})", probes.summary());

    let mut ring = probes.events()?;
    let mut shutdown = signals::Shutdown::new()?;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    let mut kills = 0;
    let mut exiting = 0;
    loop {
        let mut records = Vec::new();
        tokio::select! {
            biased;
            _ = shutdown.recv() => break,
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => break,
            res = ring.drain(|bytes| records.push(event::decode(bytes))) => {
                res.context("reading the BPF ring buffer")?;
            }
        }
        for record in records {
            let Record::Victim(kill) = match record {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("undecodable record: {e}");
                    continue;
                }
            };
            if let Some((cgroup, id)) = &filter
                && !kill.in_cgroup(*id, &cgroup.path)
            {
                continue;
            }
            if kill.kill_confirmed == Some(false) {
                exiting += 1;
            } else {
                kills += 1;
            }
            reporter.oom_kill(&kill, &KillContext::default());
        }
    }
    // Anything already in the ring buffer when the watch ends is still reported.
    let mut records = Vec::new();
    ring.drain_now(|bytes| records.push(event::decode(bytes)));
    for Record::Victim(kill) in records.into_iter().flatten() {
        if filter
            .as_ref()
            .is_none_or(|(cgroup, id)| kill.in_cgroup(*id, &cgroup.path))
        {
            kills += u64::from(kill.kill_confirmed != Some(false));
            reporter.oom_kill(&kill, &KillContext::default());
        }
    }
    let drops = probes.drops();
    reporter.json(
        "end",
        &EndLine {
            oom_kills: kills,
            victims_exiting: exiting,
            dropped_records: drops,
        },
    );
    if drops > 0 {
        tracing::warn!("{drops} records were dropped: the ring buffer overflowed");
    }
    tracing::info!("{kills} OOM kill(s) seen");
    Ok(())
}
