//! The loop both commands share: probes → records → explanations → names.
//!
//! Enters: loaded [`Probes`], an [`Explainer`] (with its filter and seeds) and [`Names`] (the
//! runtimes' state files). Leaves: batches of [`Output`]s (explained kills, collateral kills,
//! aftermath), each task named with its container and pod, and the records the BPF side
//! dropped since the last batch. `watch` and `run` differ only in what they do with a batch.

use std::io;

use crate::{
    error_chain,
    explain::{
        Explainer, Output,
        record::{self, Record},
    },
    probe::{Diagnostics, EventStream, Probes},
    target::workload::Names,
};

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
        loop {
            tokio::select! {
                drained = self.ring.drain(|bytes| records.push(record::decode(bytes))) => {
                    drained?;
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
        Ok(self.explain(records))
    }

    /// Explains what is already in the ring buffer, without waiting (at the end).
    pub fn drain_now(&mut self) -> Batch {
        if let Some(d) = &mut self.diagnostics {
            d.flush();
        }
        let mut records = Vec::new();
        self.ring
            .drain_now(|bytes| records.push(record::decode(bytes)));
        self.explain(records)
    }

    fn explain(&mut self, records: Vec<Result<Record, record::DecodeError>>) -> Batch {
        let records = records
            .into_iter()
            .filter_map(|r| {
                r.map_err(|e| tracing::warn!("undecodable record: {e}"))
                    .ok()
            })
            .collect();
        let probes = &self.probes;
        let mut outputs = self.explainer.batch(records, &|id| probes.pressure(id));
        for output in &mut outputs {
            self.names.name(output);
        }
        Batch {
            outputs,
            dropped: self.probes.new_drops(),
        }
    }
}
