//! `memstress watch`: every OOM kill on the node (or under one cgroup), the moment the kernel
//! makes it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    cgroup::{Cgroup, Hierarchy},
    event::{self, Record},
    explain::{Explainer, Output},
    metrics::{self, Metrics},
    probe::{self, Probes},
    report::{KillContext, Reporter, monotonic_ns},
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
    /// Serve Prometheus/OpenMetrics metrics at this address.
    pub metrics: Option<SocketAddr>,
    /// Probe options.
    pub probe: probe::Options,
    /// `--cgroup-root`: resolve `cgroup` under this tree instead of the real mounts.
    pub cgroup_root: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct MetricsLine {
    /// The address the endpoint listens on (the port the kernel picked for port 0).
    address: String,
    /// The URL to scrape.
    url: String,
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
            let hierarchy = Hierarchy::locate(opts.cgroup_root.as_deref())?;
            let cgroup = Cgroup::resolve(&hierarchy, path)?;
            let id = cgroup.id()?;
            Some((cgroup, id))
        }
        None => None,
    };
    // Bound before the probes load, so a port in use fails before anything is attached.
    let listener = match opts.metrics.filter(|_| !opts.explain_probes) {
        Some(addr) => Some(metrics::bind(addr).await?),
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
    let metrics = match listener {
        Some(listener) => {
            let metrics = Arc::new(Metrics::new(
                &probes.status,
                filter.as_ref().map(|(c, _)| c.clone()),
            ));
            let address = listener.local_addr()?;
            let url = format!("http://{address}/metrics");
            reporter.json(
                "metrics",
                &MetricsLine {
                    address: address.to_string(),
                    url: url.clone(),
                },
            );
            tracing::info!("serving metrics at {url}");
            let server = tokio::spawn(metrics::serve(listener, metrics.clone()));
            Some((metrics, server))
        }
        None => None,
    };
    // The drop counter is read from the BPF side every second for the endpoint.
    let mut refresh = tokio::time::interval(Duration::from_secs(1));

    let mut ring = probes.events()?;
    let mut shutdown = signals::Shutdown::new()?;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    let mut explainer = Explainer::new(Hierarchy::discover().ok(), monotonic_ns())
        .with_constraints(probes.constraints.clone());
    if let Some((cgroup, id)) = &filter {
        explainer = explainer.only_in(*id, &cgroup.path);
        explainer.seed(cgroup, monotonic_ns());
    }
    let mut counts = Counts::default();
    let mut done = false;
    while !done {
        let mut records = Vec::new();
        tokio::select! {
            biased;
            _ = shutdown.recv() => done = true,
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => done = true,
            _ = refresh.tick(), if metrics.is_some() => {}
            res = ring.drain(|bytes| records.push(event::decode(bytes))) => {
                res.context("reading the BPF ring buffer")?;
            }
        }
        if done {
            // Anything already in the ring buffer when the watch ends is still reported.
            ring.drain_now(|bytes| records.push(event::decode(bytes)));
        }
        let records = decoded(records);
        for output in explainer.batch(records, &|id| probes.pressure(id)) {
            counts.add(&output);
            if let (Some((m, _)), Output::Kill(kill)) = (&metrics, &output) {
                m.kill(kill);
            }
            reporter.output(&output, &KillContext::default());
        }
        probes.report_new_drops(reporter);
        if let Some((m, _)) = &metrics {
            m.set_drops(probes.drops());
        }
    }
    if let Some((_, server)) = metrics {
        server.abort();
    }
    let drops = probes.drops();
    reporter.json(
        "end",
        &EndLine {
            oom_kills: counts.kills,
            victims_exiting: counts.exiting,
            dropped_records: drops,
        },
    );
    if drops > 0 {
        tracing::warn!("{drops} records were dropped: the ring buffer overflowed");
    }
    tracing::info!("{} OOM kill(s) seen", counts.kills);
    Ok(())
}

#[derive(Default)]
struct Counts {
    kills: u64,
    exiting: u64,
}

impl Counts {
    fn add(&mut self, output: &Output) {
        if let Output::Kill(kill) = output {
            if kill.kill_confirmed == Some(false) {
                self.exiting += 1;
            } else {
                self.kills += 1;
            }
        }
    }
}

/// Drops undecodable records, with a warning.
fn decoded(records: Vec<Result<Record, event::DecodeError>>) -> Vec<Record> {
    records
        .into_iter()
        .filter_map(|r| {
            r.map_err(|e| tracing::warn!("undecodable record: {e}"))
                .ok()
        })
        .collect()
}
