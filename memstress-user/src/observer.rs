//! The loop both commands share: probes → records → explanations → names.
//!
//! Enters: loaded [`Probes`], an [`Explainer`] (with its filter and seeds) and [`Names`] (the
//! runtimes' state files). Leaves: batches of [`Output`]s (explained kills, collateral kills,
//! aftermath, kills that were not the OOM killer's), each task named with its container and
//! pod, and the records the BPF side dropped since the last batch. `watch` and `run` differ
//! only in what they do with a batch. A kernel SIGKILL is held back a moment (it may be the
//! OOM killer's: see [`crate::explain::kill`]); the loop wakes when its wait ends.
//!
//! **Looking out for an OOM.** The ring buffer's wake-up is an irq_work queued on the CPU that
//! wrote the record. Right after `mark_victim` that CPU prints `Killed process …` at KERN_ERR,
//! and a slow console (a serial `ttyS0`) prints it with interrupts off: the wake-up, and so
//! the line, waited 4-5 ms behind it (docs/benchmarks.md). A memcg reclaim that frees nothing
//! comes before every memcg OOM (the charge retries it, then invokes the OOM killer); the BPF
//! side then sends a hint through a ring buffer of its own, whose wake-up is not delayed. From
//! a hint (or a kill) on, for [`LOOKOUT_NS`], a thread of its own asks the kernel every
//! [`LOOKOUT_EVERY`] whether records are available (`poll(2)` with no timeout counts them
//! whether or not the wake-up has run), and wakes the loop when they are. Nothing polls while
//! no memcg is failing to reclaim.

use std::{
    io,
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;

use crate::{
    error_chain,
    explain::{
        Explainer, Output,
        record::{self, Record},
    },
    output::monotonic_ns,
    probe::{Diagnostics, EventStream, Probes},
    target::workload::Names,
};

/// Sleeps until CLOCK_MONOTONIC `deadline_ns` (tokio's clock is CLOCK_MONOTONIC too), or
/// forever without one.
async fn until(deadline_ns: Option<u64>) {
    match deadline_ns {
        Some(at) => {
            let wait = std::time::Duration::from_nanos(at.saturating_sub(monotonic_ns()));
            tokio::time::sleep(wait).await;
        }
        None => std::future::pending().await,
    }
}

/// The next diagnostics, or never when they cannot be read.
async fn next_diagnostics(diagnostics: Option<&mut Diagnostics>) -> io::Result<()> {
    match diagnostics {
        Some(d) => d.next().await,
        None => std::future::pending().await,
    }
}

/// What one read of the ring buffer amounts to.
#[derive(Debug, Default)]
pub struct Batch {
    /// Explained kills, collateral kills and aftermath, in order.
    pub outputs: Vec<Output>,
    /// Records the BPF side dropped since the last batch, and in all (`None`: none).
    pub dropped: Option<(u64, u64)>,
    /// When each stage of this batch ended.
    pub stages: Stages,
}

/// When (CLOCK_MONOTONIC ns) a batch passed each stage between the ring buffer and the
/// lines: what `MEMSTRESS_TELL_TIMING=1` prints beside each kill, for the bench's breakdown
/// of the time to tell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stages {
    /// The reader woke: the ring buffer became readable.
    pub woke_ns: u64,
    /// Every available record was read and decoded.
    pub drained_ns: u64,
    /// The explainer turned them into outputs.
    pub explained_ns: u64,
    /// Every task was named (container, pod).
    pub named_ns: u64,
    /// What woke the reader: `wakeup` (the ring buffer's), `lookout` (the thread polling
    /// near an OOM) or `deadline` (a held SIGKILL's wait ended).
    pub by: &'static str,
}

/// How long the lookout polls after a hint or a kill.
pub const LOOKOUT_NS: u64 = 250_000_000;
/// How often the lookout polls.
pub const LOOKOUT_EVERY: Duration = Duration::from_micros(200);

/// The thread that polls the ring buffer while an OOM may be near (module docs).
struct Lookout {
    /// CLOCK_MONOTONIC ns until which it polls.
    until: Arc<AtomicU64>,
    /// It found records and woke the loop, which has not drained since.
    told: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    ready: Arc<Notify>,
    thread: std::thread::JoinHandle<()>,
}

impl Lookout {
    fn start(ring: OwnedFd) -> io::Result<Self> {
        let until = Arc::new(AtomicU64::new(0));
        let told = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(Notify::new());
        let thread = {
            let (until, told, stop, ready) =
                (until.clone(), told.clone(), stop.clone(), ready.clone());
            std::thread::Builder::new()
                .name("memstress-lookout".to_owned())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let left = until.load(Ordering::Acquire).saturating_sub(monotonic_ns());
                        if left == 0 {
                            std::thread::park_timeout(Duration::from_secs(1));
                            continue;
                        }
                        std::thread::sleep(LOOKOUT_EVERY);
                        if told.load(Ordering::Acquire) {
                            continue;
                        }
                        let mut pfd = libc::pollfd {
                            fd: ring.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd, no timeout.
                        if unsafe { libc::poll(&mut pfd, 1, 0) } > 0 {
                            told.store(true, Ordering::Release);
                            ready.notify_one();
                        }
                    }
                })?
        };
        Ok(Self {
            until,
            told,
            stop,
            ready,
            thread,
        })
    }

    /// Polls from now until [`LOOKOUT_NS`] from now.
    fn arm(&self) {
        self.until
            .store(monotonic_ns() + LOOKOUT_NS, Ordering::Release);
        self.thread.thread().unpark();
    }
}

impl Drop for Lookout {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.thread.thread().unpark();
    }
}

/// Whether the lookout told of records: waits for its word, or forever without one.
async fn lookout_ready(lookout: Option<&Lookout>) {
    match lookout {
        Some(l) => l.ready.notified().await,
        None => std::future::pending().await,
    }
}

/// The next hints, or never without their ring buffer.
async fn next_hints(hints: Option<&mut EventStream>) -> io::Result<usize> {
    match hints {
        Some(h) => {
            let mut n = 0;
            h.drain(|_| n += 1).await?;
            Ok(n)
        }
        None => std::future::pending().await,
    }
}

/// Reads the probes' records and explains them.
pub struct Observer {
    probes: Probes,
    ring: EventStream,
    explainer: Explainer,
    names: Names,
    /// The programs' own diagnostics (`None`: unreadable on this kernel).
    diagnostics: Option<Diagnostics>,
    /// Hints that an OOM is near, and the thread that then polls (`None`: without them, the
    /// ring buffer's own wake-up only).
    hints: Option<EventStream>,
    lookout: Option<Lookout>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("probes", &self.probes)
            .finish_non_exhaustive()
    }
}

impl Observer {
    /// Starts reading `probes`' ring buffer, explaining with `explainer` (which learns this
    /// kernel's names for OOM constraints) and naming tasks' containers with `names`.
    pub fn new(mut probes: Probes, mut explainer: Explainer, names: Names) -> io::Result<Self> {
        let ring = probes.events()?;
        explainer.set_constraints(probes.constraints.clone());
        let diagnostics = match probes.diagnostics() {
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                tracing::warn!("{}; the probes work without it", error_chain(&e));
                None
            }
            None => None,
        };
        let hints = match probes.hints() {
            Some(Ok(h)) => Some(h),
            Some(Err(e)) => {
                tracing::debug!("no OOM hints: {e}");
                None
            }
            None => None,
        };
        let lookout = match hints
            .is_some()
            .then(|| ring.dup_fd().and_then(Lookout::start))
        {
            Some(Ok(l)) => Some(l),
            Some(Err(e)) => {
                tracing::debug!("no lookout for OOMs: {e}");
                None
            }
            None => None,
        };
        Ok(Self {
            probes,
            ring,
            explainer,
            names,
            diagnostics,
            hints: lookout.is_some().then_some(hints).flatten(),
            lookout,
        })
    }

    /// The probes.
    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    /// The explainer (a followed target moves its filter).
    pub fn explainer_mut(&mut self) -> &mut Explainer {
        &mut self.explainer
    }

    /// Waits until records are available, and explains them. The programs' diagnostics
    /// are reported as they arrive meanwhile.
    pub async fn next(&mut self) -> io::Result<Batch> {
        let mut records = Vec::new();
        let mut woke_ns = 0;
        let mut by = "wakeup";
        loop {
            let held = self.explainer.kills_deadline();
            tokio::select! {
                drained = self.ring.drain(|bytes| {
                    if woke_ns == 0 {
                        woke_ns = monotonic_ns();
                    }
                    records.push(record::decode(bytes));
                }) => {
                    drained?;
                    break;
                }
                () = until(held) => {
                    // What is in the ring buffer now comes first: an OOM record there claims
                    // the SIGKILL held for it.
                    self.ring.drain_now(|bytes| records.push(record::decode(bytes)));
                    by = "deadline";
                    break;
                }
                () = lookout_ready(self.lookout.as_ref()) => {
                    self.ring.drain_now(|bytes| {
                        if woke_ns == 0 {
                            woke_ns = monotonic_ns();
                        }
                        records.push(record::decode(bytes));
                    });
                    if let Some(l) = &self.lookout {
                        l.told.store(false, Ordering::Release);
                    }
                    if !records.is_empty() {
                        by = "lookout";
                        break;
                    }
                }
                hinted = next_hints(self.hints.as_mut()) => {
                    match hinted {
                        Ok(_) => {
                            if let Some(l) = &self.lookout {
                                l.arm();
                            }
                        }
                        Err(e) => {
                            tracing::warn!("cannot read the OOM hints any more: {e}");
                            self.hints = None;
                        }
                    }
                }
                logged = next_diagnostics(self.diagnostics.as_mut()) => {
                    if let Err(e) = logged {
                        tracing::warn!("cannot read the BPF programs' log any more: {e}");
                        self.diagnostics = None;
                    }
                }
            }
        }
        // An OOM storm's kills follow one another: look out for the next.
        if let Some(l) = &self.lookout
            && records.iter().any(|r| matches!(r, Ok(Record::Victim(_))))
        {
            l.arm();
        }
        let mut batch = self.explain(records);
        if woke_ns != 0 {
            batch.stages.woke_ns = woke_ns;
        }
        batch.stages.by = by;
        Ok(batch)
    }

    /// Explains what is already in the ring buffer, without waiting (at the end). Kernel
    /// SIGKILLs still held back are reported: the OOM record that would claim one is written
    /// microseconds after it, and is in this drain if it is coming.
    pub fn drain_now(&mut self) -> Batch {
        if let Some(d) = &mut self.diagnostics {
            d.flush();
        }
        let mut records = Vec::new();
        self.ring
            .drain_now(|bytes| records.push(record::decode(bytes)));
        let mut batch = self.explain(records);
        batch
            .outputs
            .extend(self.explainer.release_kills(u64::MAX / 2));
        batch
    }

    fn explain(&mut self, records: Vec<Result<Record, record::DecodeError>>) -> Batch {
        let drained_ns = monotonic_ns();
        let records = records
            .into_iter()
            .filter_map(|r| {
                r.map_err(|e| tracing::warn!("undecodable record: {e}"))
                    .ok()
            })
            .collect();
        let probes = &self.probes;
        let mut outputs = self.explainer.batch(records, &|id| probes.pressure(id));
        outputs.extend(self.explainer.release_kills(monotonic_ns()));
        let explained_ns = monotonic_ns();
        for output in &mut outputs {
            self.names.name(output);
        }
        Batch {
            outputs,
            dropped: self.probes.new_drops(),
            stages: Stages {
                woke_ns: drained_ns,
                drained_ns,
                explained_ns,
                named_ns: monotonic_ns(),
                by: "drain",
            },
        }
    }
}
