//! The next OOM kill, forecast: when the memory of an OOM domain that reclaim cannot free will
//! reach its limit, and whom the kernel's badness formula will choose then.
//!
//! Enters: samples of one OOM domain (the cgroup whose limit applies to the target) and of its
//! processes from /proc. Leaves: a [`Forecast`] at each sample (`sample` lines), a
//! [`KillForecast`] for each OOM kill in the domain (the forecast scored against the kernel's
//! choice: `oom_kill` lines) and a [`ForecastScore`] (`summary`, `end`).
//!
//! * **When.** The domain's usage less its file LRU pages (page cache, which reclaim frees
//!   first) is anon, shmem, unevictable and kernel memory. Its growth is a least-squares fit
//!   over the last 5 s (over the last 60 s when that rose less than 1 MiB); the OOM is
//!   expected when it reaches the limit. Less than 1 MiB of rise over either window, or a
//!   fall: no OOM is coming (`oom_in_ms` `null`). A drop (a kill, a process that freed)
//!   restarts the fit.
//! * **Who.** `oom_badness()` ([`points`]) of every process in the domain, its RSS + swap +
//!   page tables projected to the expected OOM by its own growth over the same window (as it
//!   is now when no OOM is coming), its `oom_score_adj` as last read; `-1000` is exempt, and
//!   a victim already killed is left out.
//! * **Cost.** /proc is read for the processes at most every 250 ms, and at most 1 % of the
//!   time: a scan that took 2 ms is made again 200 ms later at the earliest.
//! * **Score.** Each kill is compared with the victim the last forecast before it named; the
//!   lead is how long forecasts had named the actual victim without interruption.

use std::collections::{HashMap, VecDeque};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    explain::{Explained, points, predict},
    size::Bytes,
    target::cgroup::{Cgroup, Counters},
};

const SEC: u64 = 1_000_000_000;
/// The fit's windows: the short one first, the long one for slow growth.
const WINDOWS_NS: [u64; 2] = [5 * SEC, 60 * SEC];
/// Less rise than this over a window is no growth.
const FLAT_BYTES: f64 = (1 << 20) as f64;
/// The processes are read at most this often ...
const SCAN_EVERY_NS: u64 = SEC / 4;
/// ... and a scan's own time times this apart at least (1 % of the time).
const SCAN_BUDGET: u64 = 100;
/// Beyond this, no OOM is said to be coming.
const HORIZON_MS: u64 = 24 * 3600 * 1000;
/// How far before a kill its time-to-OOM forecast is checked.
const ETA_AHEAD_NS: u64 = 5 * SEC;
/// How long a killed victim is left out of the forecasts (it may linger while it exits).
const KILLED_FOR_NS: u64 = 30 * SEC;

/// A forecast of the domain's next OOM kill (`sample` lines' `forecast`). Predicted from
/// /proc and the cgroup's files, never from the kernel's OOM path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Forecast {
    /// Expected time until the domain's OOM (`null`: its unreclaimable memory is flat or
    /// falling, or too few samples yet).
    pub oom_in_ms: Option<u64>,
    /// Whom the kernel would choose then (if an OOM came now, when `oom_in_ms` is `null`);
    /// `null`: no eligible process.
    pub victim: Option<Projected>,
    /// The next in line.
    pub runner_up: Option<Projected>,
    /// The victim's points less the runner-up's.
    pub margin_points: Option<i64>,
    /// The OOM domain: the cgroup whose limit applies.
    pub domain: String,
    /// Its limit.
    pub limit_bytes: u64,
    /// Its usage less its page cache (active and inactive file): anon, shmem, unevictable
    /// and kernel memory, which reclaim cannot free without swap.
    pub unreclaimable_bytes: u64,
    /// How fast that grows, fitted over the window the forecast used (`null`: too few
    /// samples).
    pub growth_bytes_per_s: Option<i64>,
    /// What the forecast rests on, in words.
    pub basis: String,
}

/// A process as the forecast expects it at the OOM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Projected {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// Its badness points at the expected OOM (`oom_badness()` on the projected memory).
    pub points: i64,
    /// `oom_score_adj`, as last read.
    pub oom_score_adj: i16,
    /// RSS + swap + page tables now.
    pub memory_kib: u64,
    /// The same, projected to the expected OOM from its own growth.
    pub projected_kib: u64,
}

/// What the forecast said before an OOM kill (`oom_kill` lines' `forecast`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KillForecast {
    /// The victim the last forecast before the kill named (`null`: none yet).
    pub predicted_pid: Option<u32>,
    /// Its comm.
    pub predicted_comm: Option<String>,
    /// Whether that is the kernel's victim.
    pub hit: bool,
    /// How long forecasts had named the actual victim without interruption before the kill
    /// (`null` on a miss).
    pub lead_ms: Option<u64>,
    /// On a miss: what the forecast did not foresee.
    pub missed_because: Option<String>,
    /// The time-to-OOM forecast made about 5 s before the kill, against the truth (`null`:
    /// none was made 4-6 s before it).
    pub eta: Option<EtaCheck>,
}

/// A time-to-OOM forecast checked against the kill.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EtaCheck {
    /// How long before the kill the forecast was made: the true time to OOM then.
    pub ahead_ms: u64,
    /// What it said (`null`: no OOM coming).
    pub forecast_ms: Option<u64>,
    /// `(forecast − truth) / truth`, in percent (`null` when it said none was coming).
    pub error_pct: Option<f64>,
}

/// How the forecasts did over a run or a watch (`summary` and `end`'s `forecast`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ForecastScore {
    /// OOM kills in the forecast's domain.
    pub kills: u64,
    /// Of those, kills whose victim the last forecast before them named.
    pub hits: u64,
    /// The median lead of the hits (`null`: none).
    pub median_lead_ms: Option<u64>,
    /// The median absolute error of the time-to-OOM forecasts made about 5 s before the
    /// kills, in percent (`null`: none was checked).
    pub median_eta_error_pct: Option<f64>,
}

impl Forecast {
    /// One line of text: `OOM in ~4.2s in /pod: leaky (pid 12) 51234 points, +2300 over web
    /// (pid 13)`.
    pub fn text(&self) -> String {
        let when = match self.oom_in_ms {
            Some(ms) => format!("OOM in ~{} in {}", seconds(ms), self.domain),
            None => format!("no OOM coming in {} (if one came now", self.domain),
        };
        let who = match (&self.victim, &self.runner_up) {
            (None, _) => "no process could be chosen".to_owned(),
            (Some(v), None) => format!("{} (pid {}) {} points", v.comm, v.pid, group(v.points)),
            (Some(v), Some(r)) => format!(
                "{} (pid {}) {} points, {} more than {} (pid {})",
                v.comm,
                v.pid,
                group(v.points),
                group(v.points - r.points),
                r.comm,
                r.pid
            ),
        };
        match self.oom_in_ms {
            Some(_) => format!("{when}: victim {who}"),
            None => format!("{when}: {who})"),
        }
    }
}

impl KillForecast {
    /// What the forecast said, for the kill's text line.
    pub fn text(&self) -> String {
        match (self.hit, self.lead_ms, self.predicted_pid) {
            (true, Some(lead), _) if lead < 1000 => {
                format!("forecast named it, {lead} ms ahead")
            }
            (true, Some(lead), _) => format!("forecast named it {} ahead", seconds(lead)),
            (true, None, _) => "forecast named it".to_owned(),
            (false, _, None) => format!(
                "no forecast before it ({})",
                self.missed_because.as_deref().unwrap_or("too few samples")
            ),
            (false, _, Some(pid)) => format!(
                "forecast had named {} (pid {pid}): {}",
                self.predicted_comm.as_deref().unwrap_or("?"),
                self.missed_because.as_deref().unwrap_or("missed")
            ),
        }
    }
}

impl ForecastScore {
    /// One line: `forecast: 3 of 3 victims named beforehand, median lead 4.2s`.
    pub fn text(&self) -> String {
        let lead = self
            .median_lead_ms
            .map_or_else(String::new, |ms| format!(", median lead {}", seconds(ms)));
        let eta = self.median_eta_error_pct.map_or_else(String::new, |e| {
            format!(", time to OOM 5 s ahead off by {e:.0}% (median)")
        });
        format!(
            "forecast: {} of {} victim(s) named beforehand{lead}{eta}",
            self.hits, self.kills
        )
    }
}

fn group(n: i64) -> String {
    crate::size::group(i128::from(n))
}

fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// One process as a scan read it.
#[derive(Clone, Debug)]
struct Reading {
    pid: u32,
    /// RSS + swap + page tables, in pages.
    pages: u64,
    adj: i16,
    comm: String,
}

/// A process followed from scan to scan.
#[derive(Clone, Debug)]
struct Track {
    /// (CLOCK_MONOTONIC ns, RSS + swap + page tables in pages), oldest first.
    samples: VecDeque<(u64, u64)>,
    adj: i16,
    comm: String,
}

/// A stretch of forecasts that named the same victim.
#[derive(Clone, Debug)]
struct Run {
    pid: Option<u32>,
    comm: Option<String>,
    first_ns: u64,
}

/// The forecast's last ranking, for explaining a miss.
#[derive(Clone, Debug)]
struct Ranked {
    pid: u32,
    comm: String,
    points: i64,
    adj: i16,
    projected_kib: u64,
}

#[derive(Clone, Debug, Default)]
struct Tally {
    kills: u64,
    hits: u64,
    leads: Vec<u64>,
    eta_errors: Vec<f64>,
}

/// What a run's own stressors will still add to the domain, so that a forecast does not
/// extrapolate them past their size (a ramp that stops below the limit is no OOM coming).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Planned {
    /// Bytes the stressors will still be charged before they hold their shares.
    pub remaining_bytes: u64,
    /// How fast they are told to grow (a ramp), bytes/s; `None`: as fast as they can (the
    /// domain's measured growth is theirs until they are full).
    pub rate_bytes_per_s: Option<f64>,
}

/// Forecasts one OOM domain's next kill, and scores each forecast against the kernel.
#[derive(Debug)]
pub struct Forecaster {
    domain: Cgroup,
    domain_id: u64,
    limit: u64,
    totalpages: u64,
    page: u64,
    swap_total_pages: u64,
    /// (ns, unreclaimable bytes), the last 60 s.
    usage: VecDeque<(u64, u64)>,
    tasks: HashMap<u32, Track>,
    killed: HashMap<u32, u64>,
    next_scan_ns: u64,
    scanned_ns: u64,
    scan_cost_ns: u64,
    runs: VecDeque<Run>,
    /// (ns, oom_in_ms) of the forecasts of the last 15 s.
    etas: VecDeque<(u64, Option<u64>)>,
    ranking: Vec<Ranked>,
    tally: Tally,
    /// The victim last said to be coming ([`Self::is_news`]).
    announced: Option<u32>,
    /// What the run's stressors will still add ([`Self::set_planned`]).
    planned: Option<Planned>,
}

/// This thread's CPU time, ns (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(SEC)
        .saturating_add(ts.tv_nsec as u64)
}

/// Least-squares slope (per second) of `(ns, value)` points at or after `since`, with how
/// long they span (s); `None` below 3 points or half a second.
fn fit(points: &VecDeque<(u64, u64)>, since: u64) -> Option<(f64, f64)> {
    let mut pts = points.iter().filter(|(t, _)| *t >= since);
    let &(t0, v0) = pts.next()?;
    let (mut n, mut sx, mut sy, mut sxx, mut sxy, mut last) = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0f64);
    for &(t, v) in pts {
        let x = (t - t0) as f64 / SEC as f64;
        let y = v as f64 - v0 as f64;
        n += 1.0;
        sx += x;
        sy += y;
        sxx += x * x;
        sxy += x * y;
        last = x;
    }
    if n < 3.0 || last < 0.5 {
        return None;
    }
    let den = n * sxx - sx * sx;
    (den > 0.0).then(|| ((n * sxy - sx * sy) / den, last))
}

/// Slope (per second) of a process's samples since `since`: a fit from 3 samples, the
/// difference of 2; when the scans came further apart than the window (they back off when
/// a scan is slow), the difference of its last 2 samples; else none.
fn task_slope(samples: &VecDeque<(u64, u64)>, since: u64) -> f64 {
    if let Some((slope, _)) = fit(samples, since) {
        return slope;
    }
    let in_window = samples.iter().filter(|(t, _)| *t >= since).count();
    let first = samples.len() - in_window.max(2).min(samples.len());
    match (samples.get(first), samples.back()) {
        (Some(&(t0, v0)), Some(&(t1, v1))) if t1 > t0 => {
            (v1 as f64 - v0 as f64) / ((t1 - t0) as f64 / SEC as f64)
        }
        _ => 0.0,
    }
}

impl Forecaster {
    /// A forecaster for the OOM domain of `target` (the cgroup whose limit applies to it);
    /// `None` when no limit applies (the domain is the node: no forecast).
    pub fn new(target: &Cgroup) -> Option<Self> {
        let (limit, domain) = target.effective_limit().ok().flatten()?;
        let domain_id = domain.id().ok()?;
        let page = crate::size::page_size();
        let (_, swap_total_pages) = points::node_pages(page);
        let mut forecaster = Self::blank(domain, domain_id, limit, page, swap_total_pages);
        forecaster.read_limit();
        Some(forecaster)
    }

    /// A forecaster of `domain` that has seen nothing yet.
    fn blank(domain: Cgroup, domain_id: u64, limit: u64, page: u64, swap_total_pages: u64) -> Self {
        Self {
            domain,
            domain_id,
            limit,
            totalpages: limit / page,
            page,
            swap_total_pages,
            usage: VecDeque::new(),
            tasks: HashMap::new(),
            killed: HashMap::new(),
            next_scan_ns: 0,
            scanned_ns: 0,
            scan_cost_ns: 0,
            runs: VecDeque::new(),
            etas: VecDeque::new(),
            ranking: Vec::new(),
            tally: Tally::default(),
            announced: None,
            planned: None,
        }
    }

    /// Tells the forecaster what the run's own stressors will still add (`None`: nothing
    /// is known, as for `watch`, whose growth is extrapolated as measured).
    pub fn set_planned(&mut self, planned: Option<Planned>) {
        self.planned = planned;
    }

    /// The domain.
    pub fn domain(&self) -> &Cgroup {
        &self.domain
    }

    /// Whether `forecast` names a victim other than the last one said while an OOM is
    /// coming: text mode says such a forecast in a line of its own. A kill starts afresh.
    pub fn is_news(&mut self, forecast: &Forecast) -> bool {
        let victim = forecast.victim.as_ref().map(|v| v.pid);
        if forecast.oom_in_ms.is_none() || victim == self.announced {
            return false;
        }
        self.announced = victim;
        true
    }

    /// Its limit, as last read.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn read_limit(&mut self) {
        if let Ok(Some(limit)) = self.domain.limit() {
            self.limit = limit;
        }
        let swap = self.domain.swap_limit().ok().flatten().unwrap_or(u64::MAX);
        self.totalpages = points::totalpages_memcg(
            self.domain.hierarchy.version,
            self.limit / self.page,
            swap / self.page,
            self.swap_total_pages,
            60,
        );
    }

    /// Reads the domain's processes (their memory, oom_score_adj and comm).
    fn scan(&mut self, now_ns: u64) {
        let started = thread_cpu_ns();
        self.read_limit();
        let mut pids = Vec::new();
        predict::procs_below(&self.domain, &mut pids);
        let readings = pids
            .into_iter()
            .filter(|pid| !self.killed.contains_key(pid))
            .filter_map(|pid| {
                let (raw, adj, comm) = predict::process(pid, self.page)?;
                let pages = raw
                    .rss_pages
                    .saturating_add(raw.swap_pages)
                    .saturating_add(raw.pgtables_bytes / self.page);
                Some(Reading {
                    pid,
                    pages,
                    adj,
                    comm,
                })
            })
            .collect();
        self.take(now_ns, readings);
        // CPU time, not wall time: on a busy machine (a guest under a loaded host) the wall
        // clock of a scan stretches with the waiting, and the scans would back off for it.
        self.scan_cost_ns = thread_cpu_ns().saturating_sub(started);
        self.next_scan_ns = now_ns + SCAN_EVERY_NS.max(self.scan_cost_ns * SCAN_BUDGET);
    }

    /// The processes as read at `now_ns`: those not read are gone.
    fn take(&mut self, now_ns: u64, readings: Vec<Reading>) {
        let mut seen = HashMap::with_capacity(readings.len());
        for r in readings {
            if self.killed.contains_key(&r.pid) {
                continue;
            }
            let mut track = self.tasks.remove(&r.pid).unwrap_or_else(|| Track {
                samples: VecDeque::new(),
                adj: r.adj,
                comm: r.comm.clone(),
            });
            if track.comm != r.comm {
                // An exec, or the pid reused: its past says nothing of it.
                track.samples.clear();
                track.comm = r.comm;
            }
            track.adj = r.adj;
            track.samples.push_back((now_ns, r.pages));
            while track
                .samples
                .front()
                .is_some_and(|(t, _)| *t + WINDOWS_NS[1] < now_ns)
            {
                track.samples.pop_front();
            }
            seen.insert(r.pid, track);
        }
        self.tasks = seen;
        self.killed.retain(|_, at| *at + KILLED_FOR_NS > now_ns);
        self.scanned_ns = now_ns;
    }

    /// A forecast at `now_ns` (CLOCK_MONOTONIC), from `counters`, read just now of the cgroup
    /// with kernel id `id`, when that is the domain; else from the domain's own files.
    /// `None`: the domain cannot be read.
    pub fn sample(&mut self, now_ns: u64, id: u64, counters: &Counters) -> Option<Forecast> {
        let read;
        let counters = if id == self.domain_id {
            counters
        } else {
            read = self.domain.counters().ok()?;
            &read
        };
        let unreclaimable = counters.usage_bytes.saturating_sub(counters.file_bytes);
        if now_ns >= self.next_scan_ns {
            self.scan(now_ns);
        }
        Some(self.step(now_ns, unreclaimable))
    }

    /// The forecast at `now_ns` with the domain's unreclaimable memory at `unreclaimable`.
    fn step(&mut self, now_ns: u64, unreclaimable: u64) -> Forecast {
        if let Some(&(_, last)) = self.usage.back()
            && unreclaimable + (8 << 20).max(self.limit / 16) < last
        {
            self.usage.clear();
        }
        self.usage.push_back((now_ns, unreclaimable));
        while self
            .usage
            .front()
            .is_some_and(|(t, _)| *t + WINDOWS_NS[1] < now_ns)
        {
            self.usage.pop_front();
        }
        let forecast = self.forecast(now_ns, unreclaimable);
        self.remember(now_ns, &forecast);
        forecast
    }

    /// Seconds until `headroom` bytes are taken at the measured `rate` (bytes/s, over
    /// `window` ns), or `None` when they never are: the run's stressors stop once they hold
    /// their shares ([`Planned`]), after which only the rest of the domain's growth (the
    /// measured rate less the stressors' planned one) goes on, if it moves at all.
    fn time_to_fill(&self, headroom: f64, rate: f64, window: u64) -> Option<f64> {
        let Some(plan) = self.planned else {
            return Some(headroom / rate);
        };
        let theirs = plan.rate_bytes_per_s.map_or(rate, |r| r.min(rate));
        let others = rate - theirs;
        let remaining = plan.remaining_bytes as f64;
        // Until the stressors are full the domain grows as measured.
        let until_full = if theirs > 0.0 {
            remaining / theirs
        } else {
            0.0
        };
        if headroom <= rate * until_full {
            return Some(headroom / rate);
        }
        let moving = others * (window as f64 / SEC as f64) >= FLAT_BYTES;
        moving.then(|| until_full + (headroom - remaining - others * until_full) / others)
    }

    /// The growth to forecast from: the short window's fit when it rose or fell by 1 MiB,
    /// else the long one's; with the window used (ns) and whether it is growth at all.
    fn growth(&self, now_ns: u64) -> Option<(f64, u64, bool)> {
        let mut found = None;
        for window in WINDOWS_NS {
            let Some((slope, span)) = fit(&self.usage, now_ns.saturating_sub(window)) else {
                continue;
            };
            let moved = (slope * span).abs() >= FLAT_BYTES;
            found = Some((slope, window, moved && slope > 0.0));
            if moved {
                break;
            }
        }
        found
    }

    fn forecast(&mut self, now_ns: u64, unreclaimable: u64) -> Forecast {
        let growth = self.growth(now_ns);
        let headroom = self.limit.saturating_sub(unreclaimable);
        let oom_in_ms = match growth {
            Some((rate, window, true)) => self
                .time_to_fill(headroom as f64, rate, window)
                .map(|s| (s * 1000.0).round() as u64)
                .filter(|&ms| ms <= HORIZON_MS),
            _ => None,
        };
        let window = growth.map_or(WINDOWS_NS[0], |(_, w, _)| w);
        // Each process's memory at the expected OOM: its own growth over the same window,
        // from its last reading on. Together they cannot grow by more than the domain can
        // still take: when their trends add up to more (noise, or memory that moves between
        // them), each one's growth is scaled down to its share of the headroom.
        let at_ns = now_ns + oom_in_ms.unwrap_or(0) * 1_000_000;
        let page_kib = self.page / 1024;
        let grown: Vec<(u32, &Track, u64, f64)> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.adj != -1000)
            .filter_map(|(&pid, t)| {
                let &(last_ns, pages) = t.samples.back()?;
                let slope = task_slope(&t.samples, now_ns.saturating_sub(window));
                let ahead = at_ns.saturating_sub(last_ns) as f64 / SEC as f64;
                Some((pid, t, pages, slope * ahead))
            })
            .collect();
        let rising: f64 = grown.iter().map(|g| g.3.max(0.0)).sum();
        let room = (headroom / self.page) as f64;
        let scale = if oom_in_ms.is_some() && rising > room && rising > 0.0 {
            room / rising
        } else {
            1.0
        };
        let mut ranked: Vec<(Projected, u64)> = grown
            .into_iter()
            .map(|(pid, t, pages, growth)| {
                let growth = if growth > 0.0 { growth * scale } else { growth };
                let projected = (pages as f64 + growth).max(0.0) as u64;
                let points = i64::try_from(projected)
                    .unwrap_or(i64::MAX)
                    .saturating_add(points::adj_points(t.adj, self.totalpages));
                (
                    Projected {
                        pid,
                        comm: t.comm.clone(),
                        points,
                        oom_score_adj: t.adj,
                        memory_kib: pages * page_kib,
                        projected_kib: projected * page_kib,
                    },
                    u64::from(pid),
                )
            })
            .collect();
        // Highest points first; among equals the kernel keeps the one it met last, which
        // this cannot know: the higher pid, for a stable answer.
        ranked.sort_by(|a, b| b.0.points.cmp(&a.0.points).then(b.1.cmp(&a.1)));
        self.ranking = ranked
            .iter()
            .map(|(p, _)| Ranked {
                pid: p.pid,
                comm: p.comm.clone(),
                points: p.points,
                adj: p.oom_score_adj,
                projected_kib: p.projected_kib,
            })
            .collect();
        let mut ranked = ranked.into_iter().map(|(p, _)| p);
        let victim = ranked.next();
        let runner_up = ranked.next();
        let basis = self.basis(now_ns, unreclaimable, growth, oom_in_ms);
        Forecast {
            oom_in_ms,
            margin_points: victim
                .as_ref()
                .zip(runner_up.as_ref())
                .map(|(v, r)| v.points - r.points),
            victim,
            runner_up,
            domain: self.domain.path.clone(),
            limit_bytes: self.limit,
            unreclaimable_bytes: unreclaimable,
            growth_bytes_per_s: growth.map(|(rate, _, _)| rate.round() as i64),
            basis,
        }
    }

    fn basis(
        &self,
        now_ns: u64,
        unreclaimable: u64,
        growth: Option<(f64, u64, bool)>,
        oom_in_ms: Option<u64>,
    ) -> String {
        let usage = format!(
            "unreclaimable memory (anon, shmem, kernel; page cache left out) {} of the {} limit",
            Bytes(unreclaimable),
            Bytes(self.limit)
        );
        let trend = match growth {
            None => "too few samples for a trend yet".to_owned(),
            Some((rate, window, growing)) => {
                let per_s = format!(
                    "{}{}/s over the last {}s",
                    if rate < 0.0 { "-" } else { "+" },
                    Bytes(rate.abs() as u64),
                    window / SEC
                );
                match (growing, oom_in_ms) {
                    (true, Some(_)) => format!("rising {per_s}"),
                    (true, None) => match self.planned {
                        Some(plan) => format!(
                            "rising {per_s}, but the run's stressors add at most {} more and \
                             the rest does not grow: no OOM coming",
                            Bytes(plan.remaining_bytes)
                        ),
                        None => format!("rising {per_s}, too slowly for an OOM within a day"),
                    },
                    (false, _) => format!("flat or falling ({per_s}): no OOM coming"),
                }
            }
        };
        let procs = self.tasks.values().filter(|t| t.adj != -1000).count();
        let age = now_ns.saturating_sub(self.scanned_ns) as f64 / SEC as f64;
        let who = match oom_in_ms {
            Some(ms) => format!(
                "{procs} process(es)' memory projected {} ahead from their own growth",
                seconds(ms)
            ),
            None => format!("{procs} process(es) ranked as they are"),
        };
        format!("{usage}, {trend}; {who} (read {age:.1}s ago)")
    }

    fn remember(&mut self, now_ns: u64, forecast: &Forecast) {
        let pid = forecast.victim.as_ref().map(|v| v.pid);
        if self.runs.back().is_none_or(|r| r.pid != pid) {
            self.runs.push_back(Run {
                pid,
                comm: forecast.victim.as_ref().map(|v| v.comm.clone()),
                first_ns: now_ns,
            });
            if self.runs.len() > 64 {
                self.runs.pop_front();
            }
        }
        self.etas.push_back((now_ns, forecast.oom_in_ms));
        while self
            .etas
            .front()
            .is_some_and(|(t, _)| *t + ETA_AHEAD_NS + 10 * SEC < now_ns)
        {
            self.etas.pop_front();
        }
    }

    /// Scores the forecast against an OOM kill: `None` for a kill outside the domain (or a
    /// victim that was only marked, already exiting). The victim is left out of the next
    /// forecasts, and the domain's trend starts again: its memory is being freed.
    pub fn score(&mut self, kill: &Explained) -> Option<KillForecast> {
        if kill.kill_confirmed == Some(false) {
            return None;
        }
        if kill.domain.as_ref()?.cgroup_id != self.domain_id {
            return None;
        }
        let pid = kill.victim.victim.task.pid?;
        let at = kill.ts_ns;
        let run = self.runs.iter().rev().find(|r| r.first_ns <= at);
        let mut predicted = run.map(|r| (r.pid, r.comm.clone(), r.first_ns));
        // The forecast named a victim the kernel has killed since (a second kill milliseconds
        // after the first, before the next sample): its next in line is what it says now,
        // since that kill.
        if let Some((Some(pid), _, _)) = predicted
            && let Some(&killed_at) = self.killed.get(&pid)
            && killed_at <= at
        {
            let next = self
                .ranking
                .iter()
                .find(|r| !self.killed.contains_key(&r.pid) && r.pid != pid);
            predicted = Some((next.map(|r| r.pid), next.map(|r| r.comm.clone()), killed_at));
        }
        let predicted_pid = predicted.as_ref().and_then(|p| p.0);
        let hit = predicted_pid == Some(pid);
        let lead_ms = predicted
            .as_ref()
            .filter(|_| hit)
            .map(|p| (at - p.2) / 1_000_000);
        let missed_because =
            (!hit).then(|| self.why_missed(kill, predicted.is_some(), predicted_pid));
        let result = KillForecast {
            predicted_pid,
            predicted_comm: predicted.and_then(|p| p.1),
            hit,
            lead_ms,
            missed_because,
            eta: self.eta_check(at),
        };
        self.tally.kills += 1;
        if hit {
            self.tally.hits += 1;
            self.tally.leads.extend(lead_ms);
        }
        if let Some(e) = result.eta.as_ref().and_then(|e| e.error_pct) {
            self.tally.eta_errors.push(e.abs());
        }
        self.killed.insert(pid, at);
        self.tasks.remove(&pid);
        self.usage.clear();
        self.announced = None;
        // The time-to-OOM forecasts so far were of this kill.
        self.etas.retain(|(t, _)| *t > at);
        Some(result)
    }

    /// The time-to-OOM forecast made closest to 5 s before `at` (within a second of it).
    fn eta_check(&self, at: u64) -> Option<EtaCheck> {
        let want = at.checked_sub(ETA_AHEAD_NS)?;
        let &(ns, forecast_ms) = self
            .etas
            .iter()
            .filter(|(t, _)| *t < at && t.abs_diff(want) <= SEC)
            .min_by_key(|(t, _)| t.abs_diff(want))?;
        let ahead_ms = (at - ns) / 1_000_000;
        Some(EtaCheck {
            ahead_ms,
            forecast_ms,
            error_pct: forecast_ms.map(|f| {
                // `+ 0.0`: no `-0` in the line.
                ((f as f64 - ahead_ms as f64) / ahead_ms.max(1) as f64 * 1000.0).round() / 10.0
                    + 0.0
            }),
        })
    }

    /// What the forecast did not foresee: the kernel's figures at the kill against the last
    /// ranking.
    fn why_missed(&self, kill: &Explained, any: bool, predicted: Option<u32>) -> String {
        let Some(predicted) = predicted else {
            return if any {
                "no eligible process in the domain at the last forecast".to_owned()
            } else {
                "the kill came before the first forecast".to_owned()
            };
        };
        let task = &kill.victim.victim.task;
        let who = format!(
            "{} (pid {})",
            task.comm.as_deref().unwrap_or("?"),
            task.pid.unwrap_or(0)
        );
        let Some(mine) = self.ranking.iter().find(|r| Some(r.pid) == task.pid) else {
            return format!(
                "{who} was not among the domain's processes at the last forecast: it started \
                 or moved in since"
            );
        };
        if let Some(adj) = task.oom_score_adj
            && adj != mine.adj
        {
            return format!("{who}'s oom_score_adj moved from {} to {adj}", mine.adj);
        }
        let theirs = self.ranking.iter().find(|r| r.pid == predicted);
        let kernel = kill.candidates.iter().find(|c| c.pid == Some(predicted));
        if let (Some(theirs), Some(kernel)) = (theirs, kernel)
            && let Some(adj) = kernel.oom_score_adj
            && adj != theirs.adj
        {
            return format!(
                "the forecast victim (pid {predicted})'s oom_score_adj moved from {} to {adj}",
                theirs.adj
            );
        }
        let victim_jump = kill.victim.points.map(|p| p - mine.points);
        let predicted_short = theirs.zip(kernel).map(|(t, k)| t.points - k.points);
        match (victim_jump, predicted_short) {
            (_, None) if kernel.is_none() => format!(
                "the forecast victim (pid {predicted}) was not a candidate at the kill (it \
                 exited, or was exempt)"
            ),
            (Some(jump), short) if jump >= short.unwrap_or(0) => format!(
                "{who} jumped: {} points at the kill, {} forecast ({} forecast)",
                kill.victim.points.unwrap_or(0),
                mine.points,
                Bytes(mine.projected_kib * 1024)
            ),
            (_, Some(short)) => format!(
                "the forecast victim (pid {predicted}) grew less than its trend: {} points \
                 at the kill, {} forecast",
                theirs.map_or(0, |t| t.points) - short,
                theirs.map_or(0, |t| t.points)
            ),
            _ => "the kernel's figures at the kill differ from the forecast's".to_owned(),
        }
    }

    /// How the forecasts did so far.
    pub fn score_so_far(&self) -> ForecastScore {
        ForecastScore {
            kills: self.tally.kills,
            hits: self.tally.hits,
            median_lead_ms: median_u64(&self.tally.leads),
            median_eta_error_pct: median_f64(&self.tally.eta_errors)
                .map(|e| (e * 10.0).round() / 10.0),
        }
    }
}

/// The median (the mean of the middle two of an even count).
pub fn median_u64(values: &[u64]) -> Option<u64> {
    let mut v = values.to_vec();
    v.sort_unstable();
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2),
    }
}

fn median_f64(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        explain::{Explainer, Output, record::Record},
        target::cgroup::{Hierarchy, Version},
    };

    const MIB: u64 = 1 << 20;
    const PAGE: u64 = 4096;
    const MS: u64 = 1_000_000;

    /// A forecaster of a 128 MiB domain (kernel id 70, as the sample kill's) that never reads
    /// /proc: the tests give it the processes.
    fn forecaster() -> Forecaster {
        let domain = Cgroup {
            hierarchy: Hierarchy::at(Version::V2, "/nonexistent"),
            path: "/pod".to_owned(),
            dir: "/nonexistent/pod".into(),
        };
        let mut f = Forecaster::blank(domain, 70, 128 * MIB, PAGE, 0);
        f.next_scan_ns = u64::MAX;
        f
    }

    fn reading(pid: u32, mib: u64, adj: i16, comm: &str) -> Reading {
        Reading {
            pid,
            pages: mib * MIB / PAGE,
            adj,
            comm: comm.to_owned(),
        }
    }

    /// `steady` holds 20 MiB at oom_score_adj 500 (62.5 MiB's worth of points in a 128 MiB
    /// domain); `leaky` starts at 10 MiB and grows 10 MiB/s, as does the domain's
    /// unreclaimable memory (from 30 MiB). One sample every 100 ms for `ms`.
    fn leak(f: &mut Forecaster, from_ms: u64, ms: u64) -> Forecast {
        let mut last = None;
        for t in (from_ms..=from_ms + ms).step_by(100) {
            let leaky = 10 + t / 100;
            f.take(
                t * MS,
                vec![
                    reading(100, 20, 500, "steady"),
                    reading(200, leaky, 0, "leaky"),
                ],
            );
            last = Some(f.step(t * MS, (30 + t / 100) * MIB));
        }
        last.expect("a sample")
    }

    fn kill_of(pid: u32, at_ns: u64) -> Explained {
        let raw = crate::explain::record::tests::sample_raw();
        let kill = crate::explain::record::OomKill::from_raw(&raw, PAGE);
        let mut explainer = Explainer::new(None, 0);
        let out = explainer.batch(vec![Record::Victim(Box::new(kill))], &|_| None);
        let Output::Kill(e) = &out[0] else {
            panic!("a kill")
        };
        let mut e = (**e).clone();
        e.ts_ns = at_ns;
        e.victim.victim.task.pid = Some(pid);
        e.victim.victim.task.tid = Some(pid);
        e.victim.victim.task.oom_score_adj = Some(0);
        e
    }

    #[test]
    fn the_fit_is_exact_on_a_line() {
        let points: VecDeque<(u64, u64)> = (0..20).map(|i| (i * 100 * MS, 1000 + i * 50)).collect();
        let (slope, span) = fit(&points, 0).expect("a fit");
        assert!((slope - 500.0).abs() < 1e-6, "{slope}");
        assert!((span - 1.9).abs() < 1e-9);
        assert!(fit(&points, 18 * 100 * MS).is_none(), "two points");
    }

    #[test]
    fn a_leak_is_timed_and_its_victim_named_before_it_leads_the_ranking() {
        let mut f = forecaster();
        let forecast = leak(&mut f, 0, 2000);
        // At 2 s: 50 MiB unreclaimable, +10 MiB/s: the limit in 7.8 s.
        let ms = forecast.oom_in_ms.expect("an OOM is coming");
        assert!((7700..=7900).contains(&ms), "{ms}");
        // Now steady leads (5120 + 16000 points against leaky's 7680); at the OOM leaky
        // holds 108 MiB (27648 points).
        let v = forecast.victim.expect("a victim");
        assert_eq!((v.pid, v.comm.as_str()), (200, "leaky"));
        assert!((27_400..=27_900).contains(&v.points), "{}", v.points);
        let r = forecast.runner_up.expect("a runner-up");
        assert_eq!((r.pid, r.points), (100, 5120 + 16_000));
        assert_eq!(forecast.margin_points, Some(v.points - r.points));
        assert!(forecast.basis.contains("rising"), "{}", forecast.basis);
    }

    #[test]
    fn a_run_that_stops_below_the_limit_is_no_oom_coming() {
        // The domain grows 10 MiB/s from 30 MiB, all of it a ramp that has 20 MiB still to
        // add: it stops at ~80 MiB of the 128 MiB limit.
        let mut f = forecaster();
        f.set_planned(Some(Planned {
            remaining_bytes: 20 * MIB,
            rate_bytes_per_s: Some(10.0 * MIB as f64),
        }));
        let forecast = leak(&mut f, 0, 3000);
        assert_eq!(forecast.oom_in_ms, None, "{}", forecast.basis);
        assert!(
            forecast.basis.contains("no OOM coming"),
            "{}",
            forecast.basis
        );
        // The same growth with 200 MiB still to add reaches the limit as measured.
        let mut f = forecaster();
        f.set_planned(Some(Planned {
            remaining_bytes: 200 * MIB,
            rate_bytes_per_s: Some(10.0 * MIB as f64),
        }));
        let forecast = leak(&mut f, 0, 3000);
        let ms = forecast.oom_in_ms.expect("an OOM coming");
        assert!((6_700..=6_900).contains(&ms), "{ms}");
        // Half the growth is the rest of the domain's: 68 MiB of headroom at 3 s; 4 s at
        // 10 MiB/s until the stressors' 20 MiB are in, then the other 28 MiB at 5 MiB/s.
        let mut f = forecaster();
        f.set_planned(Some(Planned {
            remaining_bytes: 20 * MIB,
            rate_bytes_per_s: Some(5.0 * MIB as f64),
        }));
        let ms = leak(&mut f, 0, 3000).oom_in_ms.expect("an OOM coming");
        assert!((9_500..=9_900).contains(&ms), "{ms}");
        // A size taken at once: the measured growth is the stressors'.
        let mut f = forecaster();
        f.set_planned(Some(Planned {
            remaining_bytes: 20 * MIB,
            rate_bytes_per_s: None,
        }));
        assert_eq!(leak(&mut f, 0, 3000).oom_in_ms, None);
    }

    #[test]
    fn flat_memory_has_no_time_but_still_a_victim() {
        let mut f = forecaster();
        let mut last = None;
        for t in (0..3000u64).step_by(100) {
            f.take(
                t * MS,
                vec![reading(100, 20, 500, "steady"), reading(200, 30, 0, "big")],
            );
            // Jitter of a few pages, as the kernel's per-CPU charge batches give.
            last = Some(f.step(t * MS, 60 * MIB + (t % 300) * 1024));
        }
        let forecast = last.expect("a sample");
        assert_eq!(forecast.oom_in_ms, None, "{}", forecast.basis);
        assert_eq!(forecast.victim.map(|v| v.pid), Some(100));
        assert!(
            forecast.basis.contains("no OOM coming"),
            "{}",
            forecast.basis
        );
    }

    #[test]
    fn page_cache_does_not_make_it_cry_wolf() {
        let mut f = forecaster();
        let mut last = None;
        for t in (0..3000u64).step_by(100) {
            // A file being written: usage and page cache rise together, 20 MiB/s.
            let cache = t / 50 * MIB;
            let counters = Counters {
                usage_bytes: 40 * MIB + cache,
                file_bytes: cache,
                ..Counters::default()
            };
            last = f.sample(t * MS, 70, &counters);
        }
        let forecast = last.expect("a sample");
        assert_eq!(forecast.unreclaimable_bytes, 40 * MIB);
        assert_eq!(forecast.oom_in_ms, None, "{}", forecast.basis);
    }

    #[test]
    fn slow_growth_is_found_over_the_long_window() {
        let mut f = forecaster();
        let mut last = None;
        // 100 KiB/s: 0.5 MiB in 5 s, 3 MiB in 30 s.
        for t in (0..30_000u64).step_by(500) {
            last = Some(f.step(t * MS, 64 * MIB + t * 100 * 1024 / 1000));
        }
        let forecast = last.expect("a sample");
        let ms = forecast.oom_in_ms.expect("an OOM is coming");
        // 61 MiB left at 100 KiB/s: 625 s.
        assert!((620_000..=630_000).contains(&ms), "{ms}");
        assert!(forecast.basis.contains("60s"), "{}", forecast.basis);
    }

    #[test]
    fn a_drop_starts_the_trend_again() {
        let mut f = forecaster();
        leak(&mut f, 0, 3000);
        // Something freed 40 MiB: the fit must not see a fall.
        let forecast = f.step(3100 * MS, 20 * MIB);
        assert_eq!(forecast.growth_bytes_per_s, None, "{}", forecast.basis);
    }

    #[test]
    fn a_kill_is_scored_with_its_lead_and_its_time_to_oom() {
        let mut f = forecaster();
        leak(&mut f, 0, 7700);
        // The limit is reached at 9.8 s; the kill comes then.
        let scored = f.score(&kill_of(200, 9800 * MS)).expect("in the domain");
        assert!(scored.hit, "{scored:?}");
        assert_eq!(scored.predicted_pid, Some(200));
        // Named from the first forecast with a trend (the fit needs 0.5 s).
        let lead = scored.lead_ms.expect("a lead");
        assert!((9_000..=9_800).contains(&lead), "{lead}");
        let eta = scored.eta.expect("a forecast 5 s before");
        assert_eq!(eta.ahead_ms, 5000);
        let error = eta.error_pct.expect("an error");
        assert!(error.abs() <= 5.0, "{eta:?}");
        let score = f.score_so_far();
        assert_eq!((score.kills, score.hits), (1, 1));
        assert_eq!(score.median_lead_ms, Some(lead));
        // The victim is gone from the forecasts; steady is next.
        let next = f.step(9900 * MS, 30 * MIB);
        assert_eq!(next.victim.map(|v| v.pid), Some(100));
    }

    #[test]
    fn a_miss_says_what_the_forecast_did_not_foresee() {
        let mut f = forecaster();
        leak(&mut f, 0, 3000);
        // A process the forecast never saw is killed.
        let scored = f.score(&kill_of(999, 3050 * MS)).expect("in the domain");
        assert!(!scored.hit);
        assert_eq!(scored.predicted_pid, Some(200));
        assert_eq!(scored.lead_ms, None);
        let why = scored.missed_because.clone().expect("why");
        assert!(why.contains("not among the domain's processes"), "{why}");
        assert!(scored.text().contains("forecast had named leaky (pid 200)"));
        // Its oom_score_adj moved: steady at 1000 by the kill.
        let mut f = forecaster();
        leak(&mut f, 0, 3000);
        let mut kill = kill_of(100, 3050 * MS);
        kill.victim.victim.task.oom_score_adj = Some(1000);
        let why = f.score(&kill).and_then(|s| s.missed_because).expect("why");
        assert!(
            why.contains("oom_score_adj moved from 500 to 1000"),
            "{why}"
        );
        assert_eq!(f.score_so_far().median_lead_ms, None);
    }

    #[test]
    fn kills_elsewhere_are_not_scored() {
        let mut f = forecaster();
        leak(&mut f, 0, 1000);
        let mut kill = kill_of(200, 1100 * MS);
        kill.domain.as_mut().expect("a domain").cgroup_id = 71;
        assert!(f.score(&kill).is_none());
        let mut kill = kill_of(200, 1100 * MS);
        kill.kill_confirmed = Some(false);
        assert!(f.score(&kill).is_none());
        assert_eq!(f.score_so_far().kills, 0);
    }

    #[test]
    fn a_second_kill_right_after_the_first_is_scored_against_the_next_in_line() {
        let mut f = forecaster();
        leak(&mut f, 0, 7700);
        f.score(&kill_of(200, 9800 * MS)).expect("scored");
        // No sample in between: the forecast still named leaky, now dead; steady is next.
        let second = f.score(&kill_of(100, 9803 * MS)).expect("scored");
        assert!(second.hit, "{second:?}");
        assert_eq!(second.predicted_pid, Some(100));
        assert_eq!(second.predicted_comm.as_deref(), Some("steady"));
        assert_eq!(second.lead_ms, Some(3));
        assert_eq!(f.score_so_far().hits, 2);
    }

    #[test]
    fn projections_share_what_the_domain_can_still_take() {
        let mut f = forecaster();
        // Two processes each trend +10 MiB/s while the domain grows 10 MiB/s (one frees what
        // the other takes, say): each may not be projected to take the whole headroom.
        for t in (0..=2000u64).step_by(100) {
            f.take(
                t * MS,
                vec![
                    reading(100, 10 + t / 100, 0, "a"),
                    reading(200, 12 + t / 100, 0, "b"),
                ],
            );
            f.step(t * MS, (30 + t / 100) * MIB);
        }
        let forecast = f.step(2100 * MS, 51 * MIB);
        let ms = forecast.oom_in_ms.expect("an OOM is coming") as f64;
        let v = forecast.victim.expect("a victim");
        let r = forecast.runner_up.expect("a runner-up");
        // 77 MiB of headroom, shared: together they grow by that much, not twice it.
        let grown = (v.projected_kib + r.projected_kib) - (v.memory_kib + r.memory_kib);
        assert!(grown.abs_diff(77 * 1024) <= 1024, "{grown} KiB in {ms} ms");
        assert_eq!(v.pid, 200);
    }

    #[test]
    fn a_second_kill_is_not_checked_against_the_first_ones_time() {
        let mut f = forecaster();
        leak(&mut f, 0, 7700);
        f.score(&kill_of(200, 9800 * MS)).expect("scored");
        // 2 s later, another kill: the forecasts 5 s before it were of the first.
        f.step(10_000 * MS, 30 * MIB);
        let second = f.score(&kill_of(100, 11_800 * MS)).expect("scored");
        assert_eq!(second.eta, None);
    }

    #[test]
    fn text_says_when_and_who() {
        let mut f = forecaster();
        let forecast = leak(&mut f, 0, 2000);
        let text = forecast.text();
        assert!(
            text.starts_with("OOM in ~7.8s in /pod: victim leaky (pid 200)"),
            "{text}"
        );
        assert!(text.contains("more than steady (pid 100)"), "{text}");
        let score = ForecastScore {
            kills: 3,
            hits: 2,
            median_lead_ms: Some(4200),
            median_eta_error_pct: Some(7.5),
        };
        assert_eq!(
            score.text(),
            "forecast: 2 of 3 victim(s) named beforehand, median lead 4.2s, time to OOM 5 s \
             ahead off by 8% (median)"
        );
    }

    #[test]
    fn a_process_scanned_less_often_than_the_window_keeps_its_growth() {
        // 1000 pages a second, scanned every 3 s: at 10 s, the 5 s window holds one sample.
        let samples: VecDeque<(u64, u64)> = [(0, 0), (3 * SEC, 3000), (6 * SEC, 6000)]
            .into_iter()
            .collect();
        let slope = task_slope(&samples, 5 * SEC);
        assert!((slope - 1000.0).abs() < 1e-6, "{slope}");
        // Two in the window: their difference, as before.
        assert!((task_slope(&samples, 2 * SEC) - 1000.0).abs() < 1e-6);
        // One sample in all says nothing.
        let one: VecDeque<(u64, u64)> = [(6 * SEC, 6000)].into_iter().collect();
        assert_eq!(task_slope(&one, 5 * SEC), 0.0);
        assert_eq!(task_slope(&VecDeque::new(), 5 * SEC), 0.0);
    }
}
