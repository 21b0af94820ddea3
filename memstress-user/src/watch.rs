//! `memstress watch`: every OOM kill on the node (or under one cgroup), the moment the kernel
//! makes it.

use std::{borrow::Cow, collections::HashSet, net::SocketAddr, sync::Arc, time::Duration};

use crate::{
    Error, Result, exit,
    explain::{Explainer, Output, Scope},
    forecast::{Forecaster, KillForecast},
    observer::Observer,
    output::{
        Reporter,
        line::{EndLine, KillContext, Line, MetricsLine, SampleLine},
        metrics::{self, Metrics},
        monotonic_ns, text,
    },
    probe::{self, Probes},
    signals,
    target::{
        Spec, Target, TargetError,
        cgroup::{Cgroup, Hierarchy},
        kube::{Node, RuntimeState},
        workload::{Names, Workload, parse_path},
    },
};

/// Options of `memstress watch`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Only kills in this cgroup or below it.
    pub cgroup: Option<String>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// How often a watched cgroup is sampled (and its next OOM kill forecast); `None`: 1 s.
    pub interval: Option<Duration>,
    /// Print which probes attached and exit.
    pub explain_probes: bool,
    /// Serve Prometheus/OpenMetrics metrics at this address.
    pub metrics: Option<SocketAddr>,
    /// Probe options.
    pub probe: probe::Options,
    /// `--cgroup-root`: resolve `cgroup` under this tree instead of the real mounts.
    pub cgroup_root: Option<std::path::PathBuf>,
    /// Where the container runtimes' state files are (container and pod names).
    pub runtime_state: RuntimeState,
    /// `--pod UID`: only kills in this pod.
    pub pod: Option<String>,
    /// `--container ID|NAME`: only kills in this container.
    pub container: Option<String>,
    /// `--namespace NS`: only kills in pods of this namespace.
    pub namespace: Option<String>,
}

/// `--container`, `--namespace`: which kills a watch reports, by the names of the victim's
/// container and pod (read when the kill is named, so a container given by name is still
/// watched after it restarts under a new id).
#[derive(Clone, Debug, Default)]
pub struct NameFilter {
    namespace: Option<String>,
    container: Option<Wanted>,
    /// The OOMs whose kills were reported (their aftermath and late collateral follow).
    admitted: HashSet<u64>,
}

#[derive(Clone, Debug)]
struct Wanted {
    id: String,
    /// Matched when the user gave a name (not an id).
    name: Option<String>,
    pod_uid: Option<String>,
}

impl NameFilter {
    /// Whether any name is filtered on.
    pub fn is_active(&self) -> bool {
        self.namespace.is_some() || self.container.is_some()
    }

    /// Whether a task of `workload` is in scope.
    pub fn admits(&self, w: &Workload) -> bool {
        if let Some(ns) = &self.namespace
            && w.kubernetes.as_ref().and_then(|k| k.namespace.as_deref()) != Some(ns.as_str())
        {
            return false;
        }
        let Some(want) = &self.container else {
            return true;
        };
        if w.container.as_ref().is_some_and(|c| c.id == want.id) {
            return true;
        }
        let Some(name) = &want.name else {
            return false;
        };
        let pod = w.kubernetes.as_ref().map(|k| k.pod_uid.as_str());
        let named = w
            .kubernetes
            .as_ref()
            .and_then(|k| k.container_name.as_deref())
            .or_else(|| w.container.as_ref().and_then(|c| c.name.as_deref()));
        named == Some(name.as_str()) && pod == want.pod_uid.as_deref()
    }

    /// Keeps the outputs in scope.
    pub fn retain(&mut self, outputs: &mut Vec<Output>) {
        if !self.is_active() {
            return;
        }
        outputs.retain(|o| match o {
            Output::Kill(k) => {
                let keep = self.admits(&k.victim.workload);
                if keep {
                    self.admitted.insert(k.seq);
                }
                keep
            }
            Output::LateCollateral(c) => self.admitted.contains(&c.seq),
            Output::Signalled(k) => self.admits(&k.victim.workload),
            Output::Reaped(r) => self.admitted.contains(&r.seq),
        });
    }
}

/// Resolves `--pod`, `--container` and `--namespace`: the pod's cgroup (a subtree, like
/// `--cgroup`) and the names to match.
fn resolve_names(opts: &Options) -> Result<(Option<Cgroup>, NameFilter)> {
    let mut filter = NameFilter {
        namespace: opts.namespace.clone(),
        ..NameFilter::default()
    };
    if opts.pod.is_none() && opts.container.is_none() {
        return Ok((None, filter));
    }
    let hierarchy = Hierarchy::locate(opts.cgroup_root.as_deref())?;
    let state = &opts.runtime_state;
    let Some(what) = &opts.container else {
        let uid = opts.pod.as_deref().expect("a pod");
        let node = Node::scan(&hierarchy).map_err(TargetError::from)?;
        let pod = node.pod(uid).map_err(TargetError::from)?;
        return Ok((Some(pod.cgroup.clone()), filter));
    };
    let spec = Spec::Kube {
        pod: opts.pod.clone(),
        container: Some(what.clone()),
    };
    let target = Target::resolve(&hierarchy, &spec, true, state)?;
    let container = target
        .container
        .expect("a --container target names its container");
    let by_name = container.name.as_deref() == Some(what.trim().trim_start_matches('/'));
    filter.container = Some(Wanted {
        name: by_name.then(|| container.name.clone()).flatten(),
        pod_uid: target.kube.as_ref().map(|k| k.pod_uid.clone()),
        id: container.id,
    });
    // A pod's container: the pod's cgroup bounds the kills the explainer looks at (an
    // ancestor: crun's `<scope>/container` sits one level further down).
    let mut pod_cgroup = target.kube.as_ref().and(target.cgroup.parent());
    while let Some(c) = &pod_cgroup {
        let facts = parse_path(&c.path);
        if facts.pod.is_some() && facts.container.is_none() {
            break;
        }
        pod_cgroup = c.parent();
    }
    Ok((pod_cgroup, filter))
}

/// Runs `watch` until interrupted or `duration` passes. Returns the exit code: 0, or 128 +
/// the signal's number when a signal ended a `--duration` early.
pub async fn watch(opts: Options, reporter: &Reporter) -> Result<i32> {
    // Ctrl-C and SIGTERM end the watch cleanly from the first moment (a reader may signal as
    // soon as the `attached` line is out).
    let shutdown = signals::Shutdown::new().map_err(|e| Error::io("cannot handle signals", e))?;
    // Resolve the filter first: a typo should not need root to be reported.
    let (pod_cgroup, names_filter) = resolve_names(&opts)?;
    let filter = match (&opts.cgroup, pod_cgroup) {
        (Some(path), _) => {
            let hierarchy = Hierarchy::locate(opts.cgroup_root.as_deref())?;
            let cgroup = Cgroup::resolve(&hierarchy, path)?;
            let id = cgroup.id()?;
            Some((cgroup, id))
        }
        (None, Some(cgroup)) => {
            let id = cgroup.id()?;
            Some((cgroup, id))
        }
        (None, None) => None,
    };
    // Bound before the probes load, so a port in use fails before anything is attached.
    let listener = match opts.metrics.filter(|_| !opts.explain_probes) {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let probes = Probes::load(&opts.probe)?;
    let scope = filter.as_ref().map(|(c, _)| c.path.as_str());
    reporter.attached(&probes, scope);
    if opts.explain_probes {
        for line in text::explain_probes(&probes.status) {
            reporter.text(&line);
        }
        for m in &probes.missing {
            reporter.text(&format!("unknown on this kernel: {m}"));
        }
        return Ok(exit::SUCCESS);
    }
    tracing::info!(
        "watching OOM kills {} ({})",
        scope.map_or_else(|| "on this node".to_owned(), |c| format!("in {c}")),
        text::attached(&probes.status)
    );
    let metrics = match listener {
        Some(listener) => Some(serve_metrics(
            listener,
            &probes,
            filter.as_ref().map(|(c, _)| c.clone()),
            reporter,
        )?),
        None => None,
    };
    let names = Names::new(opts.runtime_state.clone(), Hierarchy::discover().ok());
    let mut observer = Observer::new(probes, explainer(filter.as_ref()), names)
        .map_err(|e| Error::io("reading the BPF ring buffer", e))?;
    if filter.is_none() && opts.interval.is_some() {
        tracing::warn!(
            "--interval samples a watched cgroup (--cgroup, --pod, --container); a node-wide \
             watch does not sample"
        );
    }
    let interval = opts.interval.unwrap_or(Duration::from_secs(1));
    let mut sampler = filter
        .as_ref()
        .and_then(|(cgroup, _)| Sampler::new(cgroup, interval));
    let (counts, stopped_by) = observe(
        &mut observer,
        names_filter,
        (shutdown, opts.duration),
        sampler.as_mut(),
        metrics.as_ref(),
        reporter,
    )
    .await?;
    if let Some((_, server)) = metrics {
        server.abort();
    }
    let drops = observer.probes().drops();
    reporter.emit(&Line::End(Cow::Owned(EndLine {
        oom_kills: counts.kills,
        victims_exiting: counts.exiting,
        kills: counts.signalled,
        dropped_records: drops,
        forecast: sampler
            .as_ref()
            .and_then(|s| s.forecaster.as_ref())
            .map(Forecaster::score_so_far),
    })));
    if drops > 0 {
        tracing::warn!("{drops} records were dropped: the ring buffer overflowed");
    }
    tracing::info!("{} OOM kill(s) seen", counts.kills);
    if let Some(score) = sampler
        .as_ref()
        .and_then(|s| s.forecaster.as_ref())
        .map(Forecaster::score_so_far)
        .filter(|s| s.kills > 0)
    {
        tracing::info!("{}", score.text());
    }
    // Without --duration a signal is how a watch ends; with one, a signal cut it short.
    Ok(match (stopped_by, opts.duration) {
        (Some(stop), Some(_)) => stop.exit_code(),
        _ => exit::SUCCESS,
    })
}

/// The explainer of a watch: filtered to a cgroup, or the whole node. Limit hits are
/// counted from now, for every cgroup a reported kill can have as its domain.
fn explainer(filter: Option<&(Cgroup, u64)>) -> Explainer {
    let real = Hierarchy::discover().ok();
    let mut explainer = Explainer::new(real.clone(), monotonic_ns());
    match (filter, &real) {
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
    explainer
}

/// Serves the metrics endpoint on `listener`; says where.
fn serve_metrics(
    listener: tokio::net::TcpListener,
    probes: &Probes,
    cgroup: Option<Cgroup>,
    reporter: &Reporter,
) -> Result<(Arc<Metrics>, tokio::task::JoinHandle<()>)> {
    let metrics = Arc::new(Metrics::new(
        &probes.status,
        probes.diagnostic_counts().clone(),
        cgroup,
    ));
    let address = listener
        .local_addr()
        .map_err(|e| Error::io("the metrics listener", e))?;
    let url = format!("http://{address}/metrics");
    reporter.emit(&Line::Metrics(Cow::Owned(MetricsLine {
        address: address.to_string(),
        url: url.clone(),
    })));
    tracing::info!("serving metrics at {url}");
    let server = tokio::spawn(metrics::serve(listener, metrics.clone()));
    Ok((metrics, server))
}

/// `watch` of a cgroup: its counters every `--interval`, and the forecast of its OOM
/// domain's next kill.
#[derive(Debug)]
pub struct Sampler {
    cgroup: Cgroup,
    cgroup_id: u64,
    interval: Duration,
    started: std::time::Instant,
    /// Its limit hits when the watch started.
    start_limit_hits: u64,
    /// `None`: no limit applies to it (its domain is the node).
    forecaster: Option<Forecaster>,
    /// The node's root memcg (the kubelet's `memory.available`).
    node_root: Option<Cgroup>,
}

impl Sampler {
    /// A sampler of `cgroup`; `None` when it cannot be read.
    fn new(cgroup: &Cgroup, interval: Duration) -> Option<Self> {
        let start = cgroup.counters().ok()?;
        let forecaster = Forecaster::new(cgroup);
        if forecaster.is_none() {
            tracing::info!(
                "no memory limit applies to {}: its OOM domain is the node, and no OOM kill \
                 is forecast",
                cgroup.path
            );
        }
        Some(Self {
            cgroup: cgroup.clone(),
            cgroup_id: cgroup.id().ok()?,
            interval,
            started: std::time::Instant::now(),
            start_limit_hits: start.limit_hits,
            forecaster,
            node_root: crate::target::node::NodeMemory::root(),
        })
    }

    /// A `sample` line: the cgroup's counters and the forecast (`kills`: OOM kills the watch
    /// reported so far). Nothing when the cgroup cannot be read (gone).
    fn sample(&mut self, kills: u64, reporter: &Reporter) -> Option<SampleLine> {
        let counters = self.cgroup.counters().ok()?;
        let forecast = self.forecaster.as_mut().and_then(|f| {
            let forecast = f.sample(monotonic_ns(), self.cgroup_id, &counters)?;
            if f.is_news(&forecast) {
                reporter.forecast(&forecast);
            }
            Some(forecast)
        });
        let node = crate::target::node::NodeMemory::read_at(self.node_root.as_ref());
        Some(SampleLine {
            t_ms: self.started.elapsed().as_millis() as u64,
            // The forecaster re-reads the domain's limit; without one, none applies.
            limit_bytes: self.forecaster.as_ref().map(Forecaster::limit),
            run_limit_hits: counters.limit_hits.saturating_sub(self.start_limit_hits),
            counters,
            stressors_held_bytes: 0,
            stressors_charge_bytes: 0,
            stressors_alive: 0,
            run_oom_kills: kills,
            psi: crate::target::psi::Psi::of(&self.cgroup),
            node_psi: crate::target::psi::Psi::node(),
            node_available_bytes: node.map(|n| n.available),
            node_mem_available_bytes: node.map(|n| n.mem_available),
            forecast,
            memory_high_bytes: None,
            run_high_events: None,
            run_reclaim: None,
            run_throttle: None,
            pressure: None,
        })
    }

    /// What the forecast said before `kill` (`None`: outside the forecast's domain).
    fn score(&mut self, kill: &crate::explain::Explained) -> Option<KillForecast> {
        self.forecaster.as_mut()?.score(kill)
    }
}

/// Reports every batch until a signal or the deadline; what is already in the ring buffer
/// at the end is still reported.
async fn observe(
    observer: &mut Observer,
    mut names: NameFilter,
    (mut shutdown, duration): (signals::Shutdown, Option<Duration>),
    mut sampler: Option<&mut Sampler>,
    metrics: Option<&(Arc<Metrics>, tokio::task::JoinHandle<()>)>,
    reporter: &Reporter,
) -> Result<(Counts, Option<signals::Stop>)> {
    // The drop counter is read from the BPF side every second for the endpoint.
    let mut refresh = tokio::time::interval(Duration::from_secs(1));
    let mut tick = tokio::time::interval(
        sampler
            .as_ref()
            .map_or(Duration::from_secs(3600), |s| s.interval),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    let mut counts = Counts::default();
    loop {
        let (batch, done) = tokio::select! {
            biased;
            stop = shutdown.recv() => (observer.drain_now(), Some(Some(stop))),
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                (observer.drain_now(), Some(None))
            }
            _ = refresh.tick(), if metrics.is_some() => (Default::default(), None),
            _ = tick.tick(), if sampler.is_some() => {
                if let Some(s) = sampler.as_deref_mut()
                    && let Some(line) = s.sample(counts.kills, reporter)
                {
                    if let Some((m, _)) = metrics {
                        m.set_forecast(line.forecast.as_ref());
                    }
                    reporter.emit(&Line::Sample(Cow::Owned(line)));
                }
                (Default::default(), None)
            }
            batch = observer.next() => {
                (batch.map_err(|e| Error::io("reading the BPF ring buffer", e))?, None)
            }
        };
        let mut batch = batch;
        names.retain(&mut batch.outputs);
        // The lines first: the metrics can wait a few microseconds, a reader cannot.
        for output in &batch.outputs {
            let forecast = match (output, sampler.as_deref_mut()) {
                (Output::Kill(kill), Some(s)) => s.score(kill),
                _ => None,
            };
            reporter.output(
                output,
                &KillContext {
                    forecast,
                    ..KillContext::default()
                },
            );
        }
        reporter.tell_timing(&batch);
        for output in &batch.outputs {
            counts.add(output);
            match (metrics, output) {
                (Some((m, _)), Output::Kill(kill)) => m.kill(kill),
                (Some((m, _)), Output::Signalled(kill)) => m.signal_kill(kill),
                _ => {}
            }
        }
        if let Some((records, total)) = batch.dropped {
            reporter.dropped(records, total);
        }
        if let Some((m, _)) = metrics {
            m.set_drops(observer.probes().drops());
        }
        if let Some(stopped_by) = done {
            return Ok((counts, stopped_by));
        }
    }
}

#[derive(Default)]
struct Counts {
    kills: u64,
    exiting: u64,
    signalled: u64,
}

impl Counts {
    fn add(&mut self, output: &Output) {
        match output {
            Output::Kill(kill) if kill.kill_confirmed == Some(false) => self.exiting += 1,
            Output::Kill(_) => self.kills += 1,
            Output::Signalled(_) => self.signalled += 1,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        output::text::explain_probes,
        probe::{ProbeKind, Status},
    };

    #[test]
    fn probe_columns_line_up() {
        let status = |kind, hook: &str, attached, error: Option<&str>| Status {
            program: "p".to_owned(),
            kind,
            hook: hook.to_owned(),
            purpose: "what it gives".to_owned(),
            attached,
            error: error.map(str::to_owned),
        };
        let lines = explain_probes(&[
            status(ProbeKind::TpBtf, "mark_victim", true, None),
            status(
                ProbeKind::Fentry,
                "try_to_free_mem_cgroup_pages",
                false,
                Some("Operation not permitted"),
            ),
            status(ProbeKind::Tracepoint, "oom:mark_victim", true, None),
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
