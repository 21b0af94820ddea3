//! The loop both commands share: probes → records → explanations → names.
//!
//! Enters: loaded [`Probes`], an [`Explainer`] (with its filter and seeds) and [`Names`] (the
//! runtimes' state files). Leaves: batches of [`Output`]s (explained kills, collateral kills,
//! aftermath, kills that were not the OOM killer's), each task named with its container and
//! pod, and the records the BPF side dropped since the last batch. `watch` and `run` differ
//! only in what they do with a batch. A kernel SIGKILL is held back a moment (it may be the
//! OOM killer's: see [`crate::explain::kill`]); the loop wakes when its wait ends.

use std::io;

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
    /// What woke the reader: `wakeup` (the ring buffer's) or `deadline` (a held SIGKILL's
    /// wait ended).
    pub by: &'static str,
}

/// Reads the probes' records and explains them.
pub struct Observer {
    probes: Probes,
    ring: EventStream,
    explainer: Explainer,
    names: Names,
    /// The programs' own diagnostics (`None`: unreadable on this kernel).
    diagnostics: Option<Diagnostics>,
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
        Ok(Self {
            probes,
            ring,
            explainer,
            names,
            diagnostics,
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
                logged = next_diagnostics(self.diagnostics.as_mut()) => {
                    if let Err(e) = logged {
                        tracing::warn!("cannot read the BPF programs' log any more: {e}");
                        self.diagnostics = None;
                    }
                }
            }
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
