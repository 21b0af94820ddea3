//! `memstress watch`: every OOM kill on the node (or under one cgroup), the moment the kernel
//! makes it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    target::cgroup::{Cgroup, Hierarchy},
    explain::record::{self, Record},
    exit,
    explain::{Explainer, Output, Scope},
    output::metrics::{self, Metrics},
    probe::{self, Probes},
    output::{KillContext, Reporter, monotonic_ns},
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

/// Runs `watch` until interrupted or `duration` passes. Returns the exit code: 0, or 128 +
/// the signal's number when a signal ended a `--duration` early.
pub async fn watch(opts: Options, reporter: &Reporter) -> Result<i32> {
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
        for line in explain_probes(&probes.status) {
            reporter.text(&line);
        }
        for m in &probes.missing {
            reporter.text(&format!("unknown on this kernel: {m}"));
        }
        return Ok(exit::SUCCESS);
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
    let real = Hierarchy::discover().ok();
    let mut explainer =
        Explainer::new(real.clone(), monotonic_ns()).with_constraints(probes.constraints.clone());
    // Limit hits are counted from now, for every cgroup a reported kill can have as domain.
    match (&filter, &real) {
        (Some((cgroup, id)), _) => {
            explainer = explainer.only_in(Scope::Subtree {
                id: *id,
                path: cgroup.path.clone(),
            });
            explainer.seed_scope(cgroup, monotonic_ns());
        }
        (None, Some(hierarchy)) => explainer.seed_tree(&hierarchy.root(), monotonic_ns()),
        (None, None) => {}
    }
    let mut counts = Counts::default();
    let mut done = false;
    let mut stopped_by = None;
    while !done {
        let mut records = Vec::new();
        tokio::select! {
            biased;
            stop = shutdown.recv() => {
                done = true;
                stopped_by = Some(stop);
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => done = true,
            _ = refresh.tick(), if metrics.is_some() => {}
            res = ring.drain(|bytes| records.push(record::decode(bytes))) => {
                res.context("reading the BPF ring buffer")?;
            }
        }
        if done {
            // Anything already in the ring buffer when the watch ends is still reported.
            ring.drain_now(|bytes| records.push(record::decode(bytes)));
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
    // Without --duration a signal is how a watch ends; with one, a signal cut it short.
    Ok(match (stopped_by, opts.duration) {
        (Some(stop), Some(_)) => stop.exit_code(),
        _ => exit::SUCCESS,
    })
}

/// One line per probe, in columns as wide as their widest entry: kind, hook, state, and
/// what it contributes (with why it did not attach).
fn explain_probes(status: &[probe::Status]) -> Vec<String> {
    let state = |s: &probe::Status| {
        if s.attached {
            "attached"
        } else {
            "NOT attached"
        }
    };
    let kind_w = status.iter().map(|s| s.kind.len()).max().unwrap_or(0);
    let hook_w = status.iter().map(|s| s.hook.len()).max().unwrap_or(0);
    let state_w = status.iter().map(|s| state(s).len()).max().unwrap_or(0);
    status
        .iter()
        .map(|s| {
            let why = s
                .error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            format!(
                "{:<kind_w$}  {:<hook_w$}  {:<state_w$}  {}{why}",
                s.kind,
                s.hook,
                state(s),
                s.purpose
            )
        })
        .collect()
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
fn decoded(records: Vec<Result<Record, record::DecodeError>>) -> Vec<Record> {
    records
        .into_iter()
        .filter_map(|r| {
            r.map_err(|e| tracing::warn!("undecodable record: {e}"))
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_columns_line_up() {
        let status = |kind, hook, attached, error: Option<&str>| probe::Status {
            program: "p",
            kind,
            hook,
            purpose: "what it gives",
            attached,
            error: error.map(str::to_owned),
        };
        let lines = explain_probes(&[
            status("tp_btf", "mark_victim", true, None),
            status(
                "fentry",
                "try_to_free_mem_cgroup_pages",
                false,
                Some("Operation not permitted"),
            ),
            status("tracepoint", "oom:mark_victim", true, None),
        ]);
        let at = |line: usize, needle: &str| lines[line].find(needle).unwrap();
        let hooks = [
            at(0, "mark_victim"),
            at(1, "try_to_free"),
            at(2, "oom:mark_victim"),
        ];
        assert!(hooks.windows(2).all(|w| w[0] == w[1]), "{lines:#?}");
        let purposes = [0, 1, 2].map(|l| at(l, "what it gives"));
        assert!(purposes.windows(2).all(|w| w[0] == w[1]), "{lines:#?}");
    }
}
