//! Writing events: one JSON object per line on stdout (`--output json`), or one readable line
//! per event (`--output text`). Diagnostics never go to stdout.

pub mod metrics;


use std::{
    io::{self, Write as _},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::{
    explain::record::CollateralKill,
    explain::{self, Explained, Output, Reaped},
    size::Bytes,
};

/// Output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One readable line per event.
    #[default]
    Text,
    /// One JSON object per line (documented in docs/events.md).
    Json,
}

/// Converts CLOCK_MONOTONIC timestamps (what BPF's `bpf_ktime_get_ns` returns) to wall time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// realtime − monotonic, in ns.
    offset_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// CLOCK_MONOTONIC now, in ns (the clock BPF timestamps use).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

impl Clock {
    /// Measures the current offset.
    pub fn new() -> Self {
        Self {
            offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
        }
    }

    /// Unix time in ns of monotonic timestamp `ts_ns`.
    pub fn unix_ns(&self, ts_ns: u64) -> i128 {
        i128::from(ts_ns) + self.offset_ns
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// RFC 3339 UTC with milliseconds: `2026-11-27T23:58:53.123Z`.
pub fn rfc3339(unix_ns: i128) -> String {
    let ms_total = unix_ns.div_euclid(1_000_000);
    let secs = ms_total.div_euclid(1000) as i64;
    let ms = ms_total.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// `HH:MM:SS.mmm` UTC, for text lines.
pub fn time_of_day(unix_ns: i128) -> String {
    rfc3339(unix_ns)[11..23].to_owned()
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Wall-clock time now as RFC 3339.
pub fn now_rfc3339() -> String {
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    rfc3339(ns)
}

#[derive(Serialize)]
struct Line<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(flatten)]
    body: &'a T,
}

/// Extra facts about an OOM kill that the caller knows (a `run` knows its own stressors).
#[derive(Clone, Debug, Default, Serialize)]
pub struct KillContext {
    /// Whether the victim was one of this run's stressors (absent in `watch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stressor: Option<bool>,
    /// Whether the victim was in the run's target, rather than elsewhere in the OOM domain
    /// that contains it (absent in `watch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_target: Option<bool>,
}

#[derive(Serialize)]
struct OomKillLine<'a> {
    time: String,
    #[serde(flatten)]
    kill: &'a Explained,
    #[serde(flatten)]
    context: &'a KillContext,
}

#[derive(Serialize)]
struct CollateralLine<'a> {
    time: String,
    ts_ns: u64,
    seq: u64,
    victim_tid: u32,
    #[serde(flatten)]
    task: &'a CollateralKill,
}

/// Writes events in the chosen format.
#[derive(Debug)]
pub struct Reporter {
    format: Format,
    clock: Clock,
}

impl Reporter {
    /// A reporter for `format`.
    pub fn new(format: Format) -> Self {
        Self {
            format,
            clock: Clock::new(),
        }
    }

    /// The format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The clock used for timestamps.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Writes one JSON line of type `kind` (JSON mode only).
    pub fn json<T: Serialize>(&self, kind: &str, body: &T) {
        if self.format != Format::Json {
            return;
        }
        let line = serde_json::to_string(&Line { kind, body }).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","message":"cannot encode {kind}: {e}"}}"#)
        });
        emit(&line);
    }

    /// Writes a text line (text mode only).
    pub fn text(&self, line: &str) {
        if self.format == Format::Text {
            emit(line);
        }
    }

    /// Reports one output of the explainer.
    pub fn output(&self, output: &Output, context: &KillContext) {
        match output {
            Output::Kill(kill) => self.oom_kill(kill, context),
            Output::LateCollateral(c) => self.collateral(c),
            Output::Reaped(r) => self.reaped(r),
        }
    }

    /// Reports an OOM kill (or an OOM victim that was only marked, being already exiting).
    pub fn oom_kill(&self, kill: &Explained, context: &KillContext) {
        let kind = if kill.kill_confirmed == Some(false) {
            "oom_victim_exiting"
        } else {
            "oom_kill"
        };
        let unix = self.clock.unix_ns(kill.ts_ns);
        match self.format {
            Format::Json => self.json(
                kind,
                &OomKillLine {
                    time: rfc3339(unix),
                    kill,
                    context,
                },
            ),
            Format::Text => emit(&format!(
                "{} {}",
                time_of_day(unix),
                describe_kill(kill, context)
            )),
        }
    }

    fn collateral(&self, c: &CollateralKill) {
        let unix = self.clock.unix_ns(c.ts_ns);
        self.json(
            "oom_collateral",
            &CollateralLine {
                time: rfc3339(unix),
                ts_ns: c.ts_ns,
                seq: c.seq,
                victim_tid: c.victim_tid,
                task: c,
            },
        );
        self.text(&format!(
            "{} OOM KILL {} with victim {}: {}",
            time_of_day(unix),
            who(c.task.pid, c.task.comm.as_deref()),
            c.victim_tid,
            c.reason
        ));
    }

    fn reaped(&self, r: &Reaped) {
        self.json("oom_reaped", r);
        // A victim that simply exits is the normal case; the reaper stepping in is news.
        if r.what != "exited" {
            let what = match r.what {
                "reaper_started" => "the OOM reaper started on",
                "reaper_finished" => "the OOM reaper freed the memory of",
                _ => "the OOM reaper skipped",
            };
            self.text(&format!(
                "             {what} {} {:.0} ms after the kill",
                who(r.pid, r.comm.as_deref()),
                r.after_ms
            ));
        }
    }
}

fn emit(line: &str) {
    // One write(2) per line, newline included, flushed at once: `writeln!` on the
    // line-buffered stdout wrote a long line and its newline in two system calls, so a
    // reader of a pipe (jq, the bench) could wake to half a line.
    let mut text = String::with_capacity(line.len() + 1);
    text.push_str(line);
    text.push('\n');
    let mut out = io::stdout().lock();
    // A closed stdout (a pipe whose reader left) must not kill the controller before it
    // cleans up; the error is ignored and the run ends through its own paths.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn kib(value: Option<u64>) -> String {
    value.map_or_else(|| "?".to_owned(), |k| Bytes(k * 1024).to_string())
}

/// "4211 (stress-ng-vm)", or what is known of it.
pub(crate) fn who(pid: Option<u32>, comm: Option<&str>) -> String {
    match (pid, comm) {
        (Some(pid), Some(comm)) => format!("{pid} ({comm})"),
        (Some(pid), None) => pid.to_string(),
        (None, Some(comm)) => format!("({comm})"),
        (None, None) => "an unknown task".to_owned(),
    }
}

/// One line describing an OOM kill: who, where, what memory, then why.
pub fn describe_kill(kill: &Explained, context: &KillContext) -> String {
    let v = &kill.victim.victim;
    let what = match kill.kill_confirmed {
        Some(false) => "OOM VICTIM",
        _ => "OOM KILL",
    };
    let mine = match context.stressor {
        Some(true) => " [memstress stressor]",
        _ => "",
    };
    let mut line = format!(
        "{what} {}{mine} in {} [anon {}, file {}, shmem {}, oom_score_adj {}]: {}",
        who(v.task.pid.or(v.task.tid), v.task.comm.as_deref()),
        v.cgroup.as_deref().unwrap_or("an unknown cgroup"),
        kib(v.memory.anon_rss_kib),
        kib(v.memory.file_rss_kib),
        kib(v.memory.shmem_rss_kib),
        v.task
            .oom_score_adj
            .map_or_else(|| "?".to_owned(), |a| a.to_string()),
        kill.reason,
    );
    if !kill.collateral.is_empty() {
        let names: Vec<String> = kill
            .collateral
            .iter()
            .map(|c| who(c.task.pid, c.task.comm.as_deref()))
            .collect();
        line.push_str(&format!(
            "; also killed, sharing its memory: {}",
            names.join(", ")
        ));
    }
    if let Some(pressure) = kill.pressure.as_ref().and_then(explain::describe_pressure) {
        line.push_str(&format!(
            ". {}{}",
            pressure[..1].to_uppercase(),
            &pressure[1..]
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::record::tests::sample_raw;

    #[test]
    fn formats_utc_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // 2026-11-27T23:58:53.123Z
        assert_eq!(
            rfc3339(1_795_823_933_123_000_000),
            "2026-11-27T23:58:53.123Z"
        );
        assert_eq!(time_of_day(1_795_823_933_123_000_000), "23:58:53.123");
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000Z");
    }

    /// The README shows what `watch` prints: its example line has the shape of a real one.
    #[test]
    fn the_readme_shows_the_real_kill_line() {
        let readme = include_str!("../../README.md");
        let example = readme
            .lines()
            .find(|l| l.get(12..22) == Some(" OOM KILL "))
            .expect("README has a `watch` example line");
        let real = {
            let kill = crate::explain::record::OomKill::from_raw(&sample_raw(), 4096);
            let mut explainer = crate::explain::Explainer::new(None, 0);
            let out = explainer.batch(vec![crate::explain::record::Record::Victim(Box::new(kill))], &|_| {
                None
            });
            let Output::Kill(e) = &out[0] else { panic!() };
            format!("00:00:00.000 {}", describe_kill(e, &KillContext::default()))
        };
        // The same words in the same order, whatever the figures.
        let shape = |line: &str| -> Vec<String> {
            let head = &line[..line.find("]: ").expect("`]: ` ends the victim's figures") + 3];
            head.split(|c: char| c.is_ascii_digit() || c == '.' || c == ' ')
                .filter(|w| w.chars().any(char::is_alphabetic))
                .filter(|w| !w.starts_with('(') && !w.starts_with('/'))
                .map(|w| w.trim_end_matches(',').to_owned())
                .collect()
        };
        let (want, got) = (shape(&real), shape(example));
        // Size units differ with the figures (KiB, MiB): compare the labels.
        let labels = |words: &[String]| -> Vec<String> {
            words
                .iter()
                .filter(|w| !matches!(w.as_str(), "B" | "KiB" | "MiB" | "GiB"))
                .cloned()
                .collect()
        };
        assert_eq!(
            labels(&got),
            labels(&want),
            "README: {example}\nreal:   {real}"
        );
    }

    #[test]
    fn describes_a_kill_in_one_line() {
        let raw = sample_raw();
        let kill = crate::explain::record::OomKill::from_raw(&raw, 4096);
        let mut explainer = crate::explain::Explainer::new(None, 0);
        let out = explainer.batch(vec![crate::explain::record::Record::Victim(Box::new(kill))], &|_| {
            None
        });
        let Output::Kill(e) = &out[0] else { panic!() };
        let line = describe_kill(e, &KillContext::default());
        assert!(
            line.starts_with(
                "OOM KILL 4211 (stress-ng-vm) in /pod/ctr [anon 58.6 MiB, file 40 KiB, shmem 8 KiB, \
                 oom_score_adj 1000]: "
            ),
            "{line}"
        );
        assert!(
            line.contains("in /pod (limit 64 MiB hit by 4190 (node))"),
            "{line}"
        );
        assert_eq!(line.lines().count(), 1);
        let json = serde_json::to_value(OomKillLine {
            time: "t".into(),
            kill: e,
            context: &KillContext {
                stressor: Some(true),
                in_target: None,
            },
        })
        .unwrap();
        assert_eq!(json["victim"]["oom_score_adj"], 1000);
        assert_eq!(json["victim"]["cgroup"], "/pod/ctr");
        assert!(json["victim"]["points"].as_i64().is_some());
        assert_eq!(json["victim"]["source"], "kernel");
        assert_eq!(json["trigger"]["pid"], 4190);
        assert_eq!(json["domain"]["cgroup"], "/pod");
        assert_eq!(json["constraint"], "memcg");
        assert_eq!(json["stressor"], true);
        assert!(
            json["why"]
                .as_str()
                .unwrap()
                .starts_with("killed 4211 (stress-ng-vm): ")
        );
    }
}
