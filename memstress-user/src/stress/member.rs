//! The processes a run starts in its target: stressors, and apps (the demo's victim).
//!
//! Each worker process is owned by a supervisor task that forwards its reports and its exit
//! to the engine and passes commands to it; the engine only keeps the bookkeeping.

use std::{
    io::{self, Write as _},
    path::Path,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    net::unix::pipe,
    sync::mpsc,
};

use crate::{
    Error, Result,
    error::Context as _,
    output::line::{KilledByLine, MemberLine, Role},
    stress::{
        spawn::{self, Exit, Spec, Stdio},
        stressor::{Command, Report, WorkerArgs},
    },
    target::cgroup::Cgroup,
};

/// From the engine to a supervisor.
#[derive(Debug)]
pub enum Ctl {
    /// Send this command to the worker.
    Send(Command),
    /// SIGKILL it.
    Kill,
}

/// From a supervisor to the engine: (member index, incarnation, what).
#[derive(Debug)]
pub enum MemberEvent {
    /// A report line.
    Report(usize, u32, Report),
    /// The worker exited.
    Exited(usize, u32, Exit),
}

/// One worker and what the engine knows of it.
#[derive(Debug)]
pub struct Member {
    /// Position in the run.
    pub index: usize,
    /// Stressor or app.
    pub role: Role,
    /// How to start it (its initial command is filled in at each start).
    pub worker: WorkerArgs,
    /// Its share of the plan (the charge it holds when full).
    pub share: u64,
    /// oom_score_adj to start it with.
    pub oom_score_adj: Option<i32>,
    /// Join the target before exec (false when the target is the controller's own cgroup).
    pub join: bool,
    /// Switch to these credentials before exec (`None`: keep the controller's).
    pub credentials: Option<crate::privilege::Credentials>,
    /// Start in this PID namespace (a container's: the kernel kills the worker when the
    /// container's init exits).
    pub pid_ns: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// Current pid.
    pub pid: Option<u32>,
    /// Incarnation (restarts increment it; stale events are ignored).
    pub generation: u32,
    /// Running.
    pub alive: bool,
    /// Payload held (last report).
    pub held: u64,
    /// Its charge by its own account (last report).
    pub charge: u64,
    /// Charge last commanded.
    pub target: u64,
    /// Sequence number of the last command sent.
    pub sent_seq: u64,
    /// Sequence number of the last command completed.
    pub acked_seq: u64,
    /// The kernel OOM-killed this incarnation.
    pub oom_killed: bool,
    /// When to start it again (`--on-oom restart`).
    pub restart_at: Option<tokio::time::Instant>,
    /// When it exited without an OOM kill being seen yet.
    pub exited_at: Option<Instant>,
    /// Times restarted.
    pub restarts: u32,
    /// The signal (not the OOM killer's) a `kill` line reported for this incarnation.
    pub killed_by: Option<KilledByLine>,
    ctl: Option<mpsc::UnboundedSender<Ctl>>,
}

impl Member {
    /// A member that has not started.
    pub fn new(index: usize, role: Role, worker: WorkerArgs, share: u64, adj: Option<i32>) -> Self {
        Self {
            index,
            role,
            worker,
            share,
            oom_score_adj: adj,
            join: true,
            credentials: None,
            pid_ns: None,
            pid: None,
            generation: 0,
            alive: false,
            held: 0,
            charge: 0,
            target: 0,
            sent_seq: 0,
            acked_seq: 0,
            oom_killed: false,
            restart_at: None,
            exited_at: None,
            restarts: 0,
            killed_by: None,
            ctl: None,
        }
    }

    /// Whether it completed its last command.
    pub fn settled(&self) -> bool {
        self.alive && self.acked_seq == self.sent_seq
    }

    /// Starts (or restarts) the worker, holding `initial` bytes of charge from the start.
    pub fn start(
        &mut self,
        cgroup: &Cgroup,
        initial: u64,
        events: &mpsc::UnboundedSender<MemberEvent>,
    ) -> Result<()> {
        let mut worker = self.worker.clone();
        worker.initial = Some(Command::Charge {
            bytes: initial,
            seq: 0,
        });
        let mut args = vec!["memstress".to_owned()];
        args.extend(worker.to_args());
        let mut spec = Spec::new(Path::new(spawn::SELF_EXE), args);
        spec.cgroup = self.join.then_some(cgroup);
        spec.oom_score_adj = self.oom_score_adj;
        // Workers hold memory and nothing else: no capabilities, the run's stressor user.
        spec.credentials = self.credentials;
        spec.pid_ns = self.pid_ns.as_deref().map(std::os::fd::AsFd::as_fd);
        spec.drop_privileges = true;
        // mlock beyond RLIMIT_MEMLOCK needs CAP_IPC_LOCK: the one capability a stressor may
        // keep, and only with --mlock.
        if self.worker.mlock {
            spec.keep_capabilities = 1 << crate::privilege::CAP_IPC_LOCK;
        }
        spec.stdin = Stdio::Pipe;
        spec.stdout = Stdio::Pipe;
        spec.stderr = Stdio::Inherit;
        let mut child = spawn::spawn(&spec).context(|| {
            format!(
                "cannot start {} {} in {}",
                self.role.name(),
                self.index,
                cgroup.path
            )
        })?;
        let missing = |what: &str| {
            Error::io(
                format!("worker without {what}"),
                io::ErrorKind::BrokenPipe.into(),
            )
        };
        let stdout = child.stdout.take().ok_or_else(|| missing("stdout"))?;
        let stdin = child.stdin.take().ok_or_else(|| missing("stdin"))?;
        self.generation += 1;
        self.pid = Some(child.pid);
        self.alive = true;
        self.held = 0;
        self.charge = 0;
        self.target = initial;
        self.sent_seq = 0;
        self.acked_seq = u64::MAX;
        self.oom_killed = false;
        self.exited_at = None;
        self.killed_by = None;
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        self.ctl = Some(ctl_tx);
        let stdout = pipe::Receiver::from_file(stdout).context(|| "worker stdout".to_owned())?;
        tokio::spawn(supervise(
            self.index,
            self.generation,
            child,
            stdin,
            stdout,
            ctl_rx,
            events.clone(),
        ));
        Ok(())
    }

    /// Commands the worker to hold `bytes` of charge (no-op if that is the current target).
    pub fn set_target(&mut self, bytes: u64) {
        if !self.alive || bytes == self.target {
            return;
        }
        self.sent_seq += 1;
        self.target = bytes;
        self.send(Ctl::Send(Command::Charge {
            bytes,
            seq: self.sent_seq,
        }));
    }

    /// Asks the supervisor to SIGKILL the worker.
    pub fn kill(&self) {
        self.send(Ctl::Kill);
    }

    fn send(&self, ctl: Ctl) {
        if let Some(tx) = &self.ctl {
            let _ = tx.send(ctl);
        }
    }

    /// Applies a report of the current incarnation.
    pub fn on_report(&mut self, report: &Report) {
        match *report {
            Report::Filling { payload, charge } => {
                self.held = payload;
                self.charge = charge;
            }
            Report::Held {
                payload,
                charge,
                seq,
            } => {
                self.held = payload;
                self.charge = charge;
                self.acked_seq = seq;
            }
            Report::Error(_) => {}
        }
    }

    /// Its `started`, `restarted` or `exited` line.
    pub fn line(&self, exit: Option<String>) -> MemberLine {
        let killed_by = exit.as_ref().and(self.killed_by.clone());
        MemberLine {
            index: self.index,
            role: self.role,
            name: self.worker.name.clone(),
            pid: self.pid,
            bytes: self.share,
            exit,
            restarts: (self.restarts > 0).then_some(self.restarts),
            killed_by,
        }
    }

    /// "stressor 2 (pid 4242) exited: exit code 1".
    pub fn describe_exit(&self, exit: Exit) -> String {
        format!(
            "{} {} (pid {}) exited: {exit}",
            self.role.name(),
            self.index,
            self.pid.unwrap_or(0)
        )
    }
}

/// Owns one worker process: forwards its reports and exit, passes commands, kills it on
/// request (or when the engine goes away).
async fn supervise(
    index: usize,
    generation: u32,
    child: spawn::Child,
    stdin: std::fs::File,
    stdout: pipe::Receiver,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
    events: mpsc::UnboundedSender<MemberEvent>,
) {
    let mut stdin = Some(stdin);
    let mut lines = BufReader::new(stdout).lines();
    let mut reading = true;
    let mut listening = true;
    loop {
        tokio::select! {
            exit = child.wait() => {
                let exit = exit.unwrap_or(Exit::Code(-1));
                let _ = events.send(MemberEvent::Exited(index, generation, exit));
                return;
            }
            line = lines.next_line(), if reading => match line {
                Ok(Some(line)) => {
                    if let Some(report) = Report::parse(&line) {
                        let _ = events.send(MemberEvent::Report(index, generation, report));
                    }
                }
                _ => reading = false,
            },
            msg = ctl.recv(), if listening => match msg {
                // Commands are a few dozen bytes and the worker reads them promptly: the
                // pipe never fills, so this write does not block the event loop.
                Some(Ctl::Send(command)) => {
                    if let Some(stdin) = &mut stdin {
                        let _ = stdin.write_all(command.line().as_bytes());
                    }
                }
                // Closing its stdin ends a worker by itself (it exits on EOF), which needs no
                // permission: a worker running as another user cannot be signalled without
                // CAP_KILL. SIGKILL too, for a worker stuck in a page fault.
                Some(Ctl::Kill) => { stdin = None; let _ = child.kill(); }
                None => { listening = false; stdin = None; let _ = child.kill(); }
            },
        }
    }
}

/// What a stressor costs its cgroup while it holds nothing, by its own account (anonymous
/// RSS, page tables, kernel stack and accounted kernel objects): an idle worker is started
/// (in this process's cgroup, holding nothing) and asked. A few milliseconds.
pub fn measure_footprint() -> std::io::Result<u64> {
    Ok(measure_idle()?.charge)
}

/// An idle worker, measured: its own charge, and what it maps of memstress's executable.
#[derive(Clone, Copy, Debug)]
pub struct Idle {
    /// Its charge while holding nothing (see [`measure_footprint`]).
    pub charge: u64,
    /// `RssFile` (and `RssShmem` where the executable is on tmpfs, as in an initramfs):
    /// pages in its RSS, and so in its badness points, that its cgroup is not charged for
    /// (they were charged to whoever read them first).
    pub file_rss: u64,
}

/// Starts an idle worker, reads its answer and its /proc status while it waits, and lets
/// it go (its stdin closes; Drop reaps it).
pub fn measure_idle() -> std::io::Result<Idle> {
    use std::io::{BufRead as _, BufReader};
    let args = ["memstress", "__stressor", "--charge", "0"]
        .map(str::to_owned)
        .to_vec();
    let mut spec = Spec::new(Path::new(spawn::SELF_EXE), args);
    spec.stdin = Stdio::Pipe;
    spec.stdout = Stdio::Pipe;
    spec.stderr = Stdio::Null;
    let mut child = spawn::spawn(&spec)?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("worker without stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let charge = match Report::parse(line.trim_end()) {
        Some(Report::Held { charge, .. }) => charge,
        _ => {
            return Err(std::io::Error::other(format!(
                "an idle worker answered `{}`",
                line.trim()
            )));
        }
    };
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.pid))?;
    drop(child.stdin.take());
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    let file_rss = (kib("RssFile:").unwrap_or(0) + kib("RssShmem:").unwrap_or(0)) * 1024;
    Ok(Idle { charge, file_rss })
}

/// Splits `total` bytes into `n` page-multiple shares that add up to `total` rounded up to a
/// page; the first shares get the extra pages.
pub fn split(total: u64, n: usize, page: u64) -> Vec<u64> {
    let n = n.max(1) as u64;
    let pages = total.div_ceil(page);
    (0..n)
        .map(|i| (pages / n + u64::from(i < pages % n)) * page)
        .collect()
}

/// How long a restarted stressor waits, so that an OOM loop does not spin.
pub const RESTART_DELAY: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_exactly_into_pages() {
        let page = 4096;
        let shares = split(50 << 20, 4, page);
        assert_eq!(shares.iter().sum::<u64>(), 50 << 20);
        assert!(shares.iter().all(|s| s % page == 0));
        let odd = split(10 * page + 1, 3, page);
        assert_eq!(odd, vec![4 * page, 4 * page, 3 * page]);
        assert_eq!(split(1, 1, page), vec![page]);
        assert_eq!(split(0, 2, page), vec![0, 0]);
    }
}
