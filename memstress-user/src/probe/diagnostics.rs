//! The BPF programs' own diagnostics: a kernel read that failed, a candidate scan cut
//! short, a record the ring buffer refused. The programs write them with `aya-log-ebpf` into
//! a ring buffer of their own (so a full events ring buffer does not silence them); aya-log
//! reads them here as `log` records. Each is counted (by level, for the metrics) and shown
//! at debug level (`-vv`), so that a new kernel's surprises explain themselves.

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;

/// Diagnostics counted so far, by level.
#[derive(Clone, Debug, Default)]
pub struct DiagnosticCounts(Arc<[AtomicU64; 5]>);

impl DiagnosticCounts {
    /// The levels, in the order of [`Self::by_level`].
    pub const LEVELS: [&'static str; 5] = ["error", "warn", "info", "debug", "trace"];

    /// How many of each level, in the order of [`Self::LEVELS`].
    pub fn by_level(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }

    /// All of them.
    pub fn total(&self) -> u64 {
        self.by_level().iter().sum()
    }

    fn count(&self, level: log::Level) {
        self.0[level as usize - 1].fetch_add(1, Ordering::Relaxed);
    }
}

/// Where aya-log hands each diagnostic.
#[derive(Debug)]
struct Sink(DiagnosticCounts);

impl log::Log for Sink {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        self.0.count(record.level());
        tracing::debug!(
            target: "memstress::bpf",
            "BPF {}: {}",
            record.level().as_str().to_lowercase(),
            record.args()
        );
    }

    fn flush(&self) {}
}

/// The programs' diagnostic ring buffer, read as it fills.
pub struct Diagnostics {
    logger: AsyncFd<EbpfLogger<Sink>>,
    counts: DiagnosticCounts,
}

impl std::fmt::Debug for Diagnostics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Diagnostics")
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

/// Why the diagnostics cannot be read (the programs work without them).
#[derive(Debug, thiserror::Error)]
pub enum DiagnosticsError {
    /// aya-log found no log ring buffer, or could not open it.
    #[error("cannot read the BPF programs' log")]
    Logger(#[from] aya_log::Error),
    /// Its fd cannot be polled.
    #[error("cannot poll the BPF programs' log")]
    Poll(#[from] io::Error),
}

impl Diagnostics {
    /// Takes the object's log ring buffer.
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DiagnosticsError> {
        let counts = DiagnosticCounts::default();
        let logger = EbpfLogger::init_with_logger(ebpf, Sink(counts.clone()))?;
        // SAFETY: the logger owns its ring buffer's map fd, which stays open for as long as
        // the AsyncFd owns the logger.
        let logger = unsafe { AsyncFd::register(logger) }.map_err(io::Error::from)?;
        Ok(Self { logger, counts })
    }

    /// The counts, shared with whoever reports them.
    pub fn counts(&self) -> DiagnosticCounts {
        self.counts.clone()
    }

    /// Waits until diagnostics arrive, and reports them.
    pub async fn next(&mut self) -> io::Result<()> {
        let mut guard = self.logger.readable_mut().await?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
        Ok(())
    }

    /// Reports what already arrived, without waiting.
    pub fn flush(&mut self) {
        self.logger.get_mut().flush();
    }
}
