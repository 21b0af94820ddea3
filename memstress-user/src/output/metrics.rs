//! `memstress watch --metrics ADDR`: a Prometheus/OpenMetrics endpoint at
//! `http://ADDR/metrics`.
//!
//! What it serves (docs/metrics.md has the reference):
//!
//! * `memstress_oom_kills_total{cgroup, comm, memstress, namespace, pod, container}`: OOM
//!   kills seen by this watch (the victims the kernel SIGKILLed, as `end`'s `oom_kills`
//!   counts them). `namespace`, `pod` and `container` are the names kube-state-metrics and
//!   cAdvisor use (empty outside a pod; `container` is Docker's name outside one). `memstress` says
//!   whether memstress caused the kill, from what the kernel read in the OOM path: `stressor`
//!   (the victim was a memstress stressor), `domain` (a memstress stressor was in the OOM
//!   domain, among the tasks the kernel ranked or passed over, and something else was
//!   killed: the injection's collateral damage) or `no`.
//! * `memstress_kills_total{by, signal}`: `kill` lines of this watch: SIGKILLs that were not
//!   the OOM killer's, and SIGTERMs the process exited after, by what sent them
//!   (`container_runtime`, `kubelet`, `kernel`, `process`) and the signal.
//! * `memstress_memcg_oom_forecast_seconds{cgroup}` (absent when no OOM is coming) and
//!   `memstress_memcg_oom_forecast_victim_info{cgroup, domain, pid, comm}`: the watched
//!   cgroup's forecast (crate::forecast), as of its last sample.
//! * `memstress_memcg_*{cgroup}` for the watched cgroup (`--cgroup`), read from its own files
//!   at each scrape: usage, working set (usage − inactive_file, as the kubelet computes it),
//!   the limit that applies, limit hits and the cgroup's own OOM-kill count.
//! * `memstress_probe_dropped_records_total`: records the BPF programs could not deliver.
//! * `memstress_probe_diagnostics_total{level}`: the BPF programs' own diagnostics (a kernel
//!   read that failed, a candidate scan cut short, a record the ring buffer refused), shown
//!   on stderr under `-vv`.
//! * `memstress_probe_attached{program, kind, hook}`: 1 for each probe this kernel accepted.
//!
//! Label cardinality is bounded: `cgroup` × `comm` pairs of the kill counter are capped at
//! [`MAX_KILL_SERIES`] (further kills count under `(other)`); `memstress` has three values;
//! `by` × `signal` of the other kills at most ten;
//! the memcg gauges cover the one watched cgroup; the probe labels are fixed by the binary.
//!
//! The endpoint is a small HTTP/1.1 responder on tokio (one request per connection, then
//! `Connection: close`): scrapes need nothing more, and the tree already has tokio.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        info::Info,
    },
    registry::{Registry, Unit},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::{
    explain::{Explained, kill::KillReport},
    forecast::Forecast,
    probe::{DiagnosticCounts, Status},
    spec::STRESSOR_COMM,
    target::cgroup::Cgroup,
};

/// At most this many `cgroup` × `comm` pairs get their own kill series; kills beyond them
/// count under `cgroup="(other)",comm="(other)"`, so a long-running watch on a node whose
/// pods come and go keeps a bounded number of series.
pub const MAX_KILL_SERIES: usize = 1000;

/// The label value for kills past [`MAX_KILL_SERIES`], and for a figure the kernel did not
/// give.
const OTHER: &str = "(other)";
const UNKNOWN: &str = "(unknown)";

/// OpenMetrics text 1.0.0 (what Prometheus asks for first).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The labels of one OOM-kill series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KillLabels {
    /// The victim's memory cgroup (as /proc/PID/cgroup shows it on the node).
    cgroup: String,
    /// The victim's comm.
    comm: String,
    /// `stressor`, `domain` or `no`.
    memstress: &'static str,
    /// The victim's pod's namespace (empty outside a pod, or when no state file was
    /// readable).
    namespace: String,
    /// The victim's pod's name (as `namespace`).
    pod: String,
    /// The victim's container's name: the pod spec's in a pod, Docker's outside one (empty
    /// when it has none).
    container: String,
}

/// The labels of one series of kills that were not the OOM killer's.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabels {
    /// `container_runtime`, `kubelet`, `kernel` or `process`.
    by: &'static str,
    /// `SIGKILL` or `SIGTERM`.
    signal: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CgroupLabel {
    cgroup: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VictimLabels {
    cgroup: String,
    domain: String,
    pid: String,
    comm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LevelLabel {
    level: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    program: String,
    kind: String,
    hook: String,
}

/// Whether memstress caused an OOM kill, from the kernel's own view of it: `stressor` (the
/// victim is a memstress stressor), `domain` (a stressor was in the OOM domain: among the
/// candidates the kernel ranked or the tasks it passed over) or `no`. A stressor is known by
/// its comm, `memstress-vm`, which memstress gives every stressor and nothing else (the
/// demo's app is `demo-app`).
pub fn caused_by_memstress(kill: &Explained) -> &'static str {
    let is_stressor = |comm: Option<&str>| comm == Some(STRESSOR_COMM);
    if is_stressor(kill.victim.victim.task.comm.as_deref()) {
        "stressor"
    } else if kill
        .candidates
        .iter()
        .any(|c| is_stressor(c.comm.as_deref()))
        || kill.skipped.iter().any(|s| is_stressor(s.comm.as_deref()))
    {
        "domain"
    } else {
        "no"
    }
}

/// What the scrape reads live: the watched cgroup's files, the drop count, the probes.
#[derive(Debug)]
struct Live {
    cgroup: Option<Cgroup>,
    /// The watched cgroup's last forecast.
    forecast: Arc<Mutex<Option<Forecast>>>,
    drops: Arc<AtomicU64>,
    diagnostics: DiagnosticCounts,
    probes: Vec<ProbeLabels>,
    attached: Vec<bool>,
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let drops = ConstCounter::new(self.drops.load(Ordering::Relaxed));
        let metric = encoder.encode_descriptor(
            "memstress_probe_dropped_records",
            "Records the BPF programs could not put in their ring buffer (never silent: also in the end line)",
            None,
            drops.metric_type(),
        )?;
        drops.encode(metric)?;

        let mut metric = encoder.encode_descriptor(
            "memstress_probe_diagnostics",
            "The BPF programs' own diagnostics, by level: a kernel read that failed, a candidate scan cut short, a record the ring buffer refused (shown on stderr under -vv)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (level, count) in DiagnosticCounts::LEVELS
            .iter()
            .zip(self.diagnostics.by_level())
        {
            ConstCounter::new(count).encode(metric.encode_family(&LevelLabel {
                level: (*level).to_owned(),
            })?)?;
        }

        let mut metric = encoder.encode_descriptor(
            "memstress_probe_attached",
            "1 for each probe this kernel accepted, 0 for one it refused",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (labels, attached) in self.probes.iter().zip(&self.attached) {
            ConstGauge::new(i64::from(*attached)).encode(metric.encode_family(labels)?)?;
        }

        let Some(cgroup) = &self.cgroup else {
            return Ok(());
        };
        // Read at each scrape: the figures are the cgroup's own files at that moment. A
        // cgroup that is gone (a pod deleted) has no series.
        let counters = match cgroup.counters() {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("metrics: cannot read {}: {e}", cgroup.path);
                return Ok(());
            }
        };
        let limit = cgroup.effective_limit().ok().flatten().map(|(l, _)| l);
        let labels = CgroupLabel {
            cgroup: cgroup.path.clone(),
        };
        let gauges: [(&str, &str, Option<u64>); 4] = [
            (
                "memstress_memcg_usage",
                "Memory charged to the watched cgroup (v1 memory.usage_in_bytes, v2 memory.current)",
                Some(counters.usage_bytes),
            ),
            (
                "memstress_memcg_working_set",
                "Working set of the watched cgroup: usage - inactive_file, as the kubelet computes it",
                Some(counters.working_set_bytes),
            ),
            (
                "memstress_memcg_inactive_file",
                "Page cache of the watched cgroup that is not recently used (reclaimed first)",
                Some(counters.inactive_file_bytes),
            ),
            (
                "memstress_memcg_limit",
                "The memory limit that applies to the watched cgroup: its own, or its nearest limited ancestor's (no series: unlimited)",
                limit,
            ),
        ];
        for (name, help, value) in gauges {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(value as i64);
            let mut metric =
                encoder.encode_descriptor(name, help, Some(&Unit::Bytes), gauge.metric_type())?;
            gauge.encode(metric.encode_family(&labels)?)?;
        }
        let counters_: [(&str, &str, u64); 2] = [
            (
                "memstress_memcg_limit_hits",
                "Times a charge hit the watched cgroup's limit (v1 memory.failcnt, v2 memory.events max)",
                counters.limit_hits,
            ),
            (
                "memstress_memcg_oom_kills",
                "OOM kills the kernel counted in the watched cgroup (v1 memory.oom_control oom_kill, v2 memory.events oom_kill), whoever watched",
                counters.oom_kills,
            ),
        ];
        for (name, help, value) in counters_ {
            let counter = ConstCounter::new(value);
            let mut metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric.encode_family(&labels)?)?;
        }
        let forecast = self.forecast.lock().map(|f| f.clone()).unwrap_or(None);
        let Some(forecast) = forecast else {
            return Ok(());
        };
        if let Some(ms) = forecast.oom_in_ms {
            let gauge = ConstGauge::new(ms as f64 / 1000.0);
            let mut metric = encoder.encode_descriptor(
                "memstress_memcg_oom_forecast",
                "Expected time until the next OOM kill of the watched cgroup's OOM domain, from the growth of the memory reclaim cannot free (no series: no OOM coming); predicted, never from the kernel's OOM path",
                Some(&Unit::Seconds),
                gauge.metric_type(),
            )?;
            gauge.encode(metric.encode_family(&labels)?)?;
        }
        if let Some(v) = &forecast.victim {
            let info = Info::new(VictimLabels {
                cgroup: cgroup.path.clone(),
                domain: forecast.domain.clone(),
                pid: v.pid.to_string(),
                comm: v.comm.clone(),
            });
            let metric = encoder.encode_descriptor(
                "memstress_memcg_oom_forecast_victim",
                "The process the kernel's badness formula would choose at the forecast OOM of the watched cgroup's domain (now, when none is coming)",
                None,
                info.metric_type(),
            )?;
            info.encode(metric)?;
        }
        Ok(())
    }
}

/// The metrics of one watch.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    kills: Family<KillLabels, Counter>,
    signals: Family<SignalLabels, Counter>,
    series: Mutex<HashSet<(String, String)>>,
    drops: Arc<AtomicU64>,
    forecast: Arc<Mutex<Option<Forecast>>>,
}

impl Metrics {
    /// Metrics for a watch with these probes, of `cgroup` if one is watched.
    pub fn new(probes: &[Status], diagnostics: DiagnosticCounts, cgroup: Option<Cgroup>) -> Self {
        let mut registry = Registry::default();
        let kills = Family::<KillLabels, Counter>::default();
        registry.register(
            "memstress_oom_kills",
            "OOM kills seen by memstress watch, by the victim's cgroup, comm, and pod namespace, pod and container names where it is in one; memstress=stressor: the victim was a memstress stressor, domain: a stressor was in the OOM domain, no: neither",
            kills.clone(),
        );
        let signals = Family::<SignalLabels, Counter>::default();
        registry.register(
            "memstress_kills",
            "Kills that were not the OOM killer's, as memstress watch reported them (kill lines): SIGKILLs, and SIGTERMs the process exited after, by what sent them (container_runtime, kubelet, kernel, process) and the signal",
            signals.clone(),
        );
        let drops = Arc::new(AtomicU64::new(0));
        let forecast = Arc::new(Mutex::new(None));
        registry.register_collector(Box::new(Live {
            cgroup,
            forecast: forecast.clone(),
            drops: drops.clone(),
            diagnostics,
            probes: probes
                .iter()
                .map(|s| ProbeLabels {
                    program: s.program.to_owned(),
                    kind: s.kind.name().to_owned(),
                    hook: s.hook.to_owned(),
                })
                .collect(),
            attached: probes.iter().map(|s| s.attached).collect(),
        }));
        Self {
            registry,
            kills,
            signals,
            series: Mutex::new(HashSet::new()),
            drops,
            forecast,
        }
    }

    /// Counts one OOM kill (a victim that was only marked, being already exiting, is not a
    /// kill).
    pub fn kill(&self, kill: &Explained) {
        if kill.kill_confirmed == Some(false) {
            return;
        }
        let v = &kill.victim.victim;
        let w = &kill.victim.workload;
        let k = w.kubernetes.as_ref();
        let mut labels = KillLabels {
            cgroup: v.cgroup.clone().unwrap_or_else(|| UNKNOWN.to_owned()),
            comm: v.task.comm.clone().unwrap_or_else(|| UNKNOWN.to_owned()),
            memstress: caused_by_memstress(kill),
            namespace: k.and_then(|k| k.namespace.clone()).unwrap_or_default(),
            pod: k.and_then(|k| k.pod_name.clone()).unwrap_or_default(),
            container: k
                .and_then(|k| k.container_name.clone())
                .or_else(|| w.container.as_ref().and_then(|c| c.name.clone()))
                .unwrap_or_default(),
        };
        {
            // The names follow from the cgroup (one container per cgroup), so the cap on
            // cgroup × comm pairs bounds every label.
            let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
            let pair = (labels.cgroup.clone(), labels.comm.clone());
            if !series.contains(&pair) {
                if series.len() >= MAX_KILL_SERIES {
                    labels.cgroup = OTHER.to_owned();
                    labels.comm = OTHER.to_owned();
                    labels.namespace = String::new();
                    labels.pod = String::new();
                    labels.container = String::new();
                } else {
                    series.insert(pair);
                }
            }
        }
        self.kills.get_or_create(&labels).inc();
    }

    /// Counts one kill that was not the OOM killer's.
    pub fn signal_kill(&self, kill: &KillReport) {
        self.signals
            .get_or_create(&SignalLabels {
                by: kill.by.name(),
                signal: kill.signal.name(),
            })
            .inc();
    }

    /// Sets the watched cgroup's latest forecast (`None`: none).
    pub fn set_forecast(&self, forecast: Option<&Forecast>) {
        if let Ok(mut f) = self.forecast.lock() {
            *f = forecast.cloned();
        }
    }

    /// Sets the BPF side's drop count (read from its counters by the watch loop).
    pub fn set_drops(&self, drops: u64) {
        self.drops.store(drops, Ordering::Relaxed);
    }

    /// The exposition: OpenMetrics text when `openmetrics`, else Prometheus text 0.0.4.
    pub fn render(&self, openmetrics: bool) -> (String, &'static str) {
        let mut body = String::new();
        let result = if openmetrics {
            prometheus_client::encoding::text::encode(&mut body, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut body, &self.registry)
        };
        if let Err(e) = result {
            tracing::warn!("metrics: cannot encode: {e}");
        }
        let content_type = if openmetrics {
            OPENMETRICS
        } else {
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE
        };
        (body, content_type)
    }
}

/// Binds the endpoint's socket (before anything else starts, so a taken port fails early).
pub async fn bind(addr: SocketAddr) -> crate::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        crate::Error::io(
            format!("cannot serve metrics on {addr}; give another --metrics address"),
            e,
        )
    })
}

/// Serves `metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like: wait a little rather than spin.
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // A client that sends nothing does not hold a connection for long.
            match tokio::time::timeout(Duration::from_secs(10), respond(stream, &metrics)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("metrics: {peer}: {e}"),
                Err(_) => tracing::debug!("metrics: {peer}: timed out"),
            }
        });
    }
}

/// The parts of a request the endpoint looks at.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    openmetrics: bool,
}

/// Parses the request head (up to the blank line). `None`: not HTTP.
fn parse_request(head: &str) -> Option<Request> {
    let mut lines = head.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let method = parts.next()?.to_owned();
    let target = parts.next()?;
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target).to_owned();
    let openmetrics = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
        })
    });
    Some(Request {
        method,
        path,
        openmetrics,
    })
}

async fn respond(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 16 * 1024 {
            return write(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
    }
    let head = String::from_utf8_lossy(&head);
    let Some(request) = parse_request(&head) else {
        return write(&mut stream, "400 Bad Request", "text/plain", "not HTTP\n").await;
    };
    let (status, content_type, body) = answer(&request, metrics);
    // HEAD: the headers GET would send, Content-Length included (RFC 9110 §9.3.2), no body.
    let body = if request.method == "HEAD" {
        Body::HeadOf(body.len())
    } else {
        Body::Full(&body)
    };
    write_response(&mut stream, status, content_type, body).await
}

/// The answer to a parsed request: status, content type, body (as GET would send it).
fn answer(request: &Request, metrics: &Metrics) -> (&'static str, &'static str, String) {
    match (request.method.as_str(), request.path.as_str()) {
        ("GET" | "HEAD", "/metrics") => {
            let (body, content_type) = metrics.render(request.openmetrics);
            ("200 OK", content_type, body)
        }
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "memstress watch: metrics at /metrics\n".to_owned(),
        ),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain",
            "not found: the metrics are at /metrics\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n".to_owned(),
        ),
    }
}

/// What follows the headers.
enum Body<'a> {
    /// This body.
    Full(&'a str),
    /// No body, but the length GET's would have (a HEAD request).
    HeadOf(usize),
}

async fn write(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    write_response(stream, status, content_type, Body::Full(body)).await
}

/// The response head, for a body of `length` bytes.
fn response_head(status: &str, content_type: &str, length: usize) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    )
}

async fn write_response(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: Body<'_>,
) -> std::io::Result<()> {
    let (length, bytes) = match body {
        Body::Full(text) => (text.len(), text.as_bytes()),
        Body::HeadOf(length) => (length, &b""[..]),
    };
    stream
        .write_all(response_head(status, content_type, length).as_bytes())
        .await?;
    stream.write_all(bytes).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::{
        Explainer, Output,
        record::{OomKill, Record, tests::sample_raw},
    };

    fn explained(comm: &str) -> Explained {
        let mut raw = sample_raw();
        raw.victim.comm = crate::explain::record::tests::comm(comm);
        let kill = OomKill::from_raw(&raw, 4096);
        let mut ex = Explainer::new(None, 0);
        let out = ex.batch(vec![Record::Victim(Box::new(kill))], &|_| None);
        let Output::Kill(e) = out.into_iter().next().unwrap() else {
            panic!()
        };
        *e
    }

    /// `HEAD /metrics` announces the length `GET /metrics` sends, and sends no body.
    #[test]
    fn head_answers_with_gets_length() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let metrics = Arc::new(Metrics::new(&[], DiagnosticCounts::default(), None));
            metrics.kill(&explained("memstress-vm"));
            let server = tokio::spawn(serve(listener, metrics));
            let ask = |method: &'static str| async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(format!("{method} /metrics HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                out
            };
            let get = ask("GET").await;
            let head = ask("HEAD").await;
            server.abort();
            let (get_head, get_body) = get.split_once("\r\n\r\n").unwrap();
            let (head_head, head_body) = head.split_once("\r\n\r\n").unwrap();
            assert!(get_body.contains("memstress_oom_kills_total"), "{get}");
            assert!(
                get_head.contains(&format!("Content-Length: {}\r\n", get_body.len())),
                "{get_head}"
            );
            assert_eq!(head_body, "", "HEAD sends no body");
            assert_eq!(head_head, get_head, "HEAD sends GET's headers");
        });
    }

    #[test]
    fn parses_requests() {
        let r = parse_request(
            "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/metrics");
        assert!(r.openmetrics);
        let r = parse_request("GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        assert!(!r.openmetrics);
        assert_eq!(parse_request("hello\r\n\r\n"), None);
        assert_eq!(parse_request("GET /metrics SPDY/3\r\n\r\n"), None);
    }

    #[test]
    fn says_whether_memstress_caused_a_kill() {
        assert_eq!(caused_by_memstress(&explained("memstress-vm")), "stressor");
        let mut app = explained("postgres");
        assert_eq!(caused_by_memstress(&app), "no");
        app.skipped.push(crate::explain::Skipped {
            pid: Some(9),
            comm: Some("memstress-vm".to_owned()),
            reason: crate::explain::SkipReason::AdjMin,
        });
        assert_eq!(caused_by_memstress(&app), "domain");
    }

    #[test]
    fn counts_kills_with_bounded_labels() {
        let metrics = Metrics::new(&[], DiagnosticCounts::default(), None);
        metrics.kill(&explained("memstress-vm"));
        metrics.kill(&explained("memstress-vm"));
        let mut exiting = explained("memstress-vm");
        exiting.kill_confirmed = Some(false);
        metrics.kill(&exiting);
        let (text, content_type) = metrics.render(true);
        assert_eq!(content_type, OPENMETRICS);
        assert!(
            text.contains(
                "memstress_oom_kills_total{cgroup=\"/pod/ctr\",comm=\"memstress-vm\",memstress=\"stressor\",namespace=\"\",pod=\"\",container=\"\"} 2\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        // Past the cap, new pairs share one series.
        for i in 0..MAX_KILL_SERIES + 5 {
            let mut k = explained("app");
            k.victim.victim.cgroup = Some(format!("/pod{i}"));
            metrics.kill(&k);
        }
        let (text, _) = metrics.render(false);
        let series = text
            .lines()
            .filter(|l| l.starts_with("memstress_oom_kills_total{"))
            .count();
        assert_eq!(series, MAX_KILL_SERIES + 1, "the cap plus (other)");
        assert!(
            text.contains(
                "memstress_oom_kills_total{cgroup=\"(other)\",comm=\"(other)\",memstress=\"no\",namespace=\"\",pod=\"\",container=\"\"} 6\n"
            ),
            "{}",
            text.lines().last().unwrap_or_default()
        );
    }

    #[test]
    fn counts_other_kills_by_sender_kind_and_signal() {
        use crate::explain::kill::{KillReport, KillSender, KillVictim, KilledBy, SignalName};
        let metrics = Metrics::new(&[], DiagnosticCounts::default(), None);
        let kill = |by, signal| KillReport {
            ts_ns: 1,
            signal,
            victim: KillVictim::default(),
            sender: KillSender::default(),
            by,
            why: String::new(),
            exited_after_ms: None,
            exit: None,
            after_sigterm_ms: None,
        };
        metrics.signal_kill(&kill(KilledBy::ContainerRuntime, SignalName::Sigkill));
        metrics.signal_kill(&kill(KilledBy::ContainerRuntime, SignalName::Sigkill));
        metrics.signal_kill(&kill(KilledBy::Kubelet, SignalName::Sigterm));
        let (text, _) = metrics.render(false);
        assert!(
            text.contains("memstress_kills_total{by=\"container_runtime\",signal=\"SIGKILL\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("memstress_kills_total{by=\"kubelet\",signal=\"SIGTERM\"} 1\n"),
            "{text}"
        );
    }
}
