//! What a run is asked to do, in the words every stage shares: the kind of memory, how
//! it is faulted in and held, what happens on an OOM kill. The command line parses these
//! (clap value enums), the plan and the stressors act on them, the output echoes them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The most stressor processes one run starts.
pub const MAX_WORKERS: u32 = 1024;

/// The comm of every stressor (and of nothing else memstress starts): `watch --metrics` knows
/// memstress's stressors by it.
pub const STRESSOR_COMM: &str = "memstress-vm";

/// How pages are faulted in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Fill {
    /// Write one byte per page.
    #[default]
    Touch,
    /// `MADV_POPULATE_WRITE` (Linux 5.14): the kernel faults the range in one call.
    Populate,
}

/// What kind of memory is held.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Anonymous memory (`mmap` private): counted in the working set, never reclaimable
    /// without swap.
    #[default]
    Anon,
    /// Shared memory (a `memfd`): counted as shmem, in the working set, reclaimable only to
    /// swap.
    Shmem,
    /// Page cache (a file written in --file-dir): charged to the cgroup but reclaimable, so
    /// usage rises while the working set (usage − inactive_file) barely does.
    File,
}

/// What a worker does with its memory once it holds it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// Touch each page once, then sleep: ~0% CPU.
    #[default]
    Hold,
    /// Rewrite every page once per --rewrite-every, spread evenly: the pages stay recently
    /// used (active) and dirty, so LRU aging and writeback cannot make them cheap to reclaim.
    KeepDirty,
}

/// What happens when the kernel OOM-kills a stressor.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnOom {
    /// Report it and keep holding with the stressors that are left.
    #[default]
    Report,
    /// Report it and start the stressor again.
    Restart,
    /// Report it and end the run (exit code 3).
    Stop,
}

impl std::fmt::Display for OnOom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Report => "report",
            Self::Restart => "restart",
            Self::Stop => "stop",
        })
    }
}
