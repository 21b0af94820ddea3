//! The loop both commands share: probes → records → explanations.
//!
//! Enters: loaded [`Probes`] and an [`Explainer`] (with its filter and seeds). Leaves: batches
//! of [`Output`]s (explained kills, collateral kills, aftermath) and the records the BPF side
//! dropped since the last batch. `watch` and `run` differ only in what they do with a batch.

use std::io;

use crate::{
    explain::{
        Explainer, Output,
        record::{self, Record},
    },
    probe::{EventStream, Probes},
};

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
    /// kernel's names for OOM constraints).
    pub fn new(mut probes: Probes, mut explainer: Explainer) -> io::Result<Self> {
        let ring = probes.events()?;
        explainer.set_constraints(probes.constraints.clone());
        Ok(Self {
            probes,
            ring,
            explainer,
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

    /// Waits until records are available, and explains them.
    pub async fn next(&mut self) -> io::Result<Batch> {
        let mut records = Vec::new();
        self.ring
            .drain(|bytes| records.push(record::decode(bytes)))
            .await?;
        Ok(self.explain(records))
    }

    /// Explains what is already in the ring buffer, without waiting (at the end).
    pub fn drain_now(&mut self) -> Batch {
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
        let outputs = self.explainer.batch(records, &|id| probes.pressure(id));
        Batch {
            outputs,
            dropped: self.probes.new_drops(),
        }
    }
}
