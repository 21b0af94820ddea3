//! Output: what the user reads.
//!
//! Enters: typed [`line::Line`]s from every stage (the plan and samples of a run, the
//! explained kills, what the probes attached). Leaves: one JSON object per line on stdout
//! (`-o json`, docs/events.md, the schema generated from the types), or the text each line
//! renders to ([`text`]); the status line of a run on a terminal (stderr); the Prometheus
//! endpoint of `watch` ([`metrics`]). Diagnostics never go to stdout.

pub mod line;
pub mod metrics;
pub mod text;

use std::{
    borrow::Cow,
    cell::{Cell, RefCell},
    io::{self, Write as _},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::{BufMut as _, BytesMut};

use self::line::{
    Attached, CollateralLine, Dropped, ErrorLine, KillContext, KillLine, Line, SignalLine,
};
use crate::{
    explain::{Explained, Output},
    probe::Probes,
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

/// RFC 3339 UTC with milliseconds: `2026-11-27T23:58:53.123Z` (times before 1970 read as
/// 1970).
pub fn rfc3339(unix_ns: i128) -> String {
    let ns = u64::try_from(unix_ns.max(0)).unwrap_or(u64::MAX);
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

/// `HH:MM:SS.mmm` UTC, for text lines.
pub fn time_of_day(unix_ns: i128) -> String {
    rfc3339(unix_ns)[11..23].to_owned()
}

/// Wall-clock time now as RFC 3339.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Writes lines in the chosen format: one `write(2)` per line, from a buffer reused across
/// lines. Owns the status line of a run on a terminal (stderr).
#[derive(Debug)]
pub struct Reporter {
    format: Format,
    clock: Clock,
    buf: RefCell<BytesMut>,
    status_shown: Cell<bool>,
    /// `MEMSTRESS_TELL_TIMING=1`: each OOM kill's stages go to stderr (the bench reads them).
    tell_timing: bool,
}

impl Reporter {
    /// A reporter for `format`.
    pub fn new(format: Format) -> Self {
        Self {
            format,
            clock: Clock::new(),
            buf: RefCell::new(BytesMut::with_capacity(4096)),
            status_shown: Cell::new(false),
            tell_timing: std::env::var_os("MEMSTRESS_TELL_TIMING").is_some_and(|v| v == "1"),
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

    /// Writes one line: its JSON object, or the text it renders to.
    pub fn emit(&self, line: &Line<'_>) {
        match self.format {
            Format::Json => self.json(line),
            Format::Text => {
                let lines = text::render(line, &self.clock);
                if !lines.is_empty() {
                    self.clear_status();
                }
                for text in lines {
                    self.write(text.as_bytes());
                }
            }
        }
    }

    fn json(&self, line: &Line<'_>) {
        let mut buf = self.buf.borrow_mut();
        buf.clear();
        if let Err(e) = serde_json::to_writer((&mut *buf).writer(), line) {
            buf.clear();
            let error = Line::Error(Cow::Owned(ErrorLine {
                message: format!("cannot encode a line: {e}"),
            }));
            let _ = serde_json::to_writer((&mut *buf).writer(), &error);
        }
        buf.put_u8(b'\n');
        emit(&buf);
    }

    /// Writes a sentence that only text mode shows (prose around the lines).
    pub fn text(&self, line: &str) {
        if self.format == Format::Text {
            self.clear_status();
            self.write(line.as_bytes());
        }
    }

    fn write(&self, text: &[u8]) {
        let mut buf = self.buf.borrow_mut();
        buf.clear();
        buf.extend_from_slice(text);
        buf.put_u8(b'\n');
        emit(&buf);
    }

    /// Reports one output of the explainer, with what the caller knows of its victim.
    pub fn output(&self, output: &Output, context: &KillContext) {
        match output {
            Output::Kill(kill) => self.kill(kill, context),
            Output::LateCollateral(c) => {
                self.emit(&Line::OomCollateral(Cow::Owned(CollateralLine {
                    time: rfc3339(self.clock.unix_ns(c.ts_ns)),
                    ts_ns: c.ts_ns,
                    seq: c.seq,
                    victim_tid: c.victim_tid,
                    task: (**c).clone(),
                })))
            }
            Output::Reaped(r) => self.emit(&Line::OomReaped(Cow::Borrowed(r))),
            Output::Signalled(k) => self.emit(&Line::Kill(Cow::Owned(SignalLine {
                time: rfc3339(self.clock.unix_ns(k.ts_ns)),
                kill: (**k).clone(),
                context: context.clone(),
            }))),
        }
    }

    /// With `MEMSTRESS_TELL_TIMING=1`, after a batch's lines are written: one stderr line per
    /// OOM kill in it with when (CLOCK_MONOTONIC ns) the kernel marked the victim, the batch
    /// passed each stage, and its lines were written.
    pub fn tell_timing(&self, batch: &crate::observer::Batch) {
        if !self.tell_timing {
            return;
        }
        let written_ns = monotonic_ns();
        let s = &batch.stages;
        for output in &batch.outputs {
            if let Output::Kill(kill) = output {
                eprintln!(
                    "memstress-tell seq={} pid={} mark={} woke={} drained={} explained={} \
                     named={} written={written_ns} by={}",
                    kill.seq,
                    kill.victim.victim.task.pid.unwrap_or(0),
                    kill.ts_ns,
                    s.woke_ns,
                    s.drained_ns,
                    s.explained_ns,
                    s.named_ns,
                    s.by,
                );
            }
        }
    }

    /// Reports an OOM kill (or an OOM victim that was only marked, being already exiting).
    pub fn kill(&self, kill: &Explained, context: &KillContext) {
        let line = KillLine {
            time: rfc3339(self.clock.unix_ns(kill.ts_ns)),
            kill: kill.clone(),
            context: context.clone(),
            forecast: context.forecast.clone(),
        };
        self.emit(&if kill.kill_confirmed == Some(false) {
            Line::OomVictimExiting(Cow::Owned(line))
        } else {
            Line::OomKill(Cow::Owned(line))
        });
    }

    /// What the probes attached: the `attached` line, and one warning on stderr for each
    /// program that did not attach and each kernel fact this kernel lacks.
    pub fn attached(&self, probes: &Probes, cgroup: Option<&str>) {
        self.emit(&Line::Attached(Cow::Owned(Attached {
            probes: probes.status.clone(),
            unknown_kernel_facts: probes.missing.clone(),
            cgroup: cgroup.map(str::to_owned),
        })));
        text::warn_degraded(&probes.status, &probes.missing);
    }

    /// Records the BPF side dropped: a `dropped` line and a warning (never silent).
    pub fn dropped(&self, records: u64, total: u64) {
        self.emit(&Line::Dropped(Cow::Owned(Dropped { records, total })));
        self.clear_status();
        tracing::warn!(
            "{records} OOM record(s) dropped: the BPF ring buffer was full (reader stalled?); \
             {total} in all; --ring-buffer sets its size"
        );
    }

    /// Text mode: a forecast worth a line of its own (a new victim named while an OOM is
    /// coming). JSON has it in every `sample` line.
    pub fn forecast(&self, forecast: &crate::forecast::Forecast) {
        if self.format == Format::Text {
            let now = self.clock.unix_ns(monotonic_ns());
            self.text(&format!(
                "{} forecast: {}",
                time_of_day(now),
                forecast.text()
            ));
        }
    }

    /// Whether a status line can be shown: text mode on a terminal.
    pub fn status_wanted(&self) -> bool {
        use std::io::IsTerminal as _;
        self.format == Format::Text && io::stderr().is_terminal()
    }

    /// Replaces the status line on stderr with `text`.
    pub fn status(&self, text: &str) {
        eprint!("\r\x1b[2K{text}");
        let _ = io::stderr().flush();
        self.status_shown.set(true);
    }

    /// Erases the status line, so that a line can be printed in its place.
    pub fn clear_status(&self) {
        if self.status_shown.replace(false) {
            eprint!("\r\x1b[2K");
            let _ = io::stderr().flush();
        }
    }
}

fn emit(bytes: &[u8]) {
    // One write(2) per line, newline included, flushed at once: a reader of a pipe (jq, the
    // bench) never wakes to half a line.
    let mut out = io::stdout().lock();
    // A closed stdout (a pipe whose reader left) must not kill the controller before it
    // cleans up; the error is ignored and the run ends through its own paths.
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::{
        Explainer,
        record::{OomKill, Record, tests::sample_raw},
    };

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

    fn sample_kill(context: KillContext) -> KillLine {
        let kill = OomKill::from_raw(&sample_raw(), 4096);
        let mut explainer = Explainer::new(None, 0);
        let out = explainer.batch(vec![Record::Victim(Box::new(kill))], &|_| None);
        let Output::Kill(e) = &out[0] else { panic!() };
        KillLine {
            time: "t".into(),
            kill: (**e).clone(),
            context,
            forecast: None,
        }
    }

    /// The README shows what `watch` prints: its example line has the shape of a real one.
    #[test]
    fn the_readme_shows_the_real_kill_line() {
        let readme = include_str!("../../../README.md");
        let example = readme
            .lines()
            .find(|l| l.get(12..22) == Some(" OOM KILL "))
            .expect("README has a `watch` example line");
        let real = format!(
            "00:00:00.000 {}",
            text::describe_kill(&sample_kill(KillContext::default()))
        );
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
        let kill = sample_kill(KillContext {
            stressor: Some(true),
            in_target: None,
            forecast: None,
        });
        let line = text::describe_kill(&kill);
        assert!(
            line.starts_with(
                "OOM KILL 4211 (stress-ng-vm) [memstress stressor] in /pod/ctr [anon 58.6 MiB, \
                 file 40 KiB, shmem 8 KiB, oom_score_adj 1000]: "
            ),
            "{line}"
        );
        assert!(
            line.contains("in /pod (limit 64 MiB hit by 4190 (node))"),
            "{line}"
        );
        assert_eq!(line.lines().count(), 1);
        let json = serde_json::to_value(Line::OomKill(Cow::Borrowed(&kill))).unwrap();
        assert_eq!(json["type"], "oom_kill");
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
        // The line reads back into the same types (the lab does).
        let back: Line<'static> = serde_json::from_value(json).unwrap();
        let Line::OomKill(back) = back else { panic!() };
        assert_eq!(back.kill.victim.victim.task.pid, Some(4211));
        assert_eq!(back.context.stressor, Some(true));
    }
}
