//! Probe: memstress's BPF programs, loaded and attached as this kernel allows.
//!
//! Enters: [`Options`] (the BTF file, the ring buffer's size). Leaves: [`Probes`]: what
//! attached ([`Status`], the kernel facts this kernel lacks), and the ring buffer of records
//! ([`EventStream`]) with the in-kernel counters (drops, reclaim pressure). It prints nothing:
//! what attached is the caller's to report.
//!
//! Start-up: check privileges, read the running kernel's BTF and resolve the struct offsets
//! ([`layout`], [`btf`]), read the classic tracepoint formats ([`tracefs`]), load the object
//! with the offsets as a read-only global, then attach every program the kernel accepts. A
//! program that cannot attach is reported once and the rest keep working; only when no
//! `mark_victim` program attaches is there nothing to watch.

pub mod btf;
pub mod diagnostics;
pub mod layout;
pub mod tracefs;

use std::{io, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader, Endianness,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FEntry, FExit, Program, TracePoint},
};
use memstress_ebpf::{Pressure, RuntimeConfig, Throttle, UNKNOWN, counters, names, source};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

pub use self::diagnostics::{DiagnosticCounts, Diagnostics, DiagnosticsError};
use crate::{
    privilege,
    probe::{
        btf::{Btf, BtfError},
        tracefs::{Tracefs, TracefsError},
    },
};

/// The BPF object, built by build.rs from memstress-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memstress-ebpf"));

/// Why the probes could not start. Each message is one line that says what is missing and
/// how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "memstress {0} needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load its BPF \
         programs; run it as root, e.g. `sudo memstress {0}`"
    )]
    Privileges(&'static str),
    #[error(
        "this kernel exposes no BTF at {0}, which memstress needs to read kernel structures \
         (a kernel built with CONFIG_DEBUG_INFO_BTF=y provides it); give this kernel's BTF \
         with --btf FILE"
    )]
    NoBtf(String),
    #[error("cannot use the kernel BTF at {path}")]
    Btf { path: String, source: BtfError },
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error("aya cannot parse the kernel BTF at {path}")]
    AyaBtf { path: String, source: aya::BtfError },
    #[error("cannot load memstress's BPF programs")]
    Load(#[from] aya::EbpfError),
    #[error("the BPF object has no map {0}")]
    NoMap(&'static str),
    #[error("cannot configure the BPF programs")]
    Map(#[from] aya::maps::MapError),
    #[error("no OOM probe could be attached ({0}); memstress cannot see OOM kills on this kernel")]
    NothingAttached(String),
}

/// Where to look for things, and who is asking (for messages).
#[derive(Clone, Debug)]
pub struct Options {
    /// Kernel BTF file.
    pub btf: PathBuf,
    /// The subcommand, for error messages.
    pub command: &'static str,
    /// Size of the `EVENTS` ring buffer in bytes (a power of two, at least a page).
    pub ring_bytes: u32,
    /// Load the `memory.high` throttle programs: only `run` reports what they count, and
    /// where the kernel calls the hooked function on every return to user mode after a
    /// context switch (before its inline wrapper) their trampoline costs each such return
    /// about 325 instructions (docs/benchmarks.md), which a watch left running on a node
    /// should not add. `run` loads them only where throttling can happen: with
    /// `--throttle`, or a `memory.high` already set on its target or an ancestor.
    pub throttle: bool,
}

/// The ring buffer's default size: 4 MiB holds thousands of kills' records.
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

impl Default for Options {
    fn default() -> Self {
        Self {
            btf: PathBuf::from(btf::VMLINUX),
            command: "watch",
            ring_bytes: DEFAULT_RING_BYTES,
            throttle: false,
        }
    }
}

/// How a program hooks into the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// A BTF tracepoint (raw tracepoint with typed arguments).
    TpBtf,
    /// A classic tracepoint (tracefs format).
    Tracepoint,
    /// Entry of a kernel function (trampoline).
    Fentry,
    /// Exit of a kernel function, with its return value (trampoline).
    Fexit,
}

impl ProbeKind {
    /// `tp_btf`, `tracepoint`, `fentry`, `fexit`.
    pub fn name(self) -> &'static str {
        match self {
            Self::TpBtf => "tp_btf",
            Self::Tracepoint => "tracepoint",
            Self::Fentry => "fentry",
            Self::Fexit => "fexit",
        }
    }

    /// fentry and fexit: kernels that refuse trampolines refuse both.
    pub fn is_trampoline(self) -> bool {
        matches!(self, Self::Fentry | Self::Fexit)
    }
}

impl std::fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One program and whether it attached.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Status {
    /// Program name in the object.
    pub program: String,
    /// How it hooks into the kernel.
    pub kind: ProbeKind,
    /// The hook.
    pub hook: String,
    /// What it contributes.
    pub purpose: String,
    /// Whether it is attached.
    pub attached: bool,
    /// Why not, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One program of the object: where it hooks, and what it contributes.
#[derive(Clone, Copy, Debug)]
struct ProbeSpec {
    /// Its name in the object ([`names`]).
    program: &'static str,
    kind: ProbeKind,
    /// The function or tracepoint (`group:event` for a classic one).
    hook: &'static str,
    purpose: &'static str,
}

/// Every program, in the order of the `attached` line. The first two see kills: at least one
/// must attach. fentry/fexit give the OOM killer's own state, exact; they load on most
/// production kernels, and where they do not (no trampolines, or a kernel that refuses them)
/// the explanation uses what `mark_victim` reads, and says so. The rest add to the report
/// and are not needed to see kills.
const PROBES: [ProbeSpec; 15] = [
    ProbeSpec {
        program: names::PROG_MARK_VICTIM_BTF,
        kind: ProbeKind::TpBtf,
        hook: "mark_victim",
        purpose: "the victim's task_struct: ids, cgroup, memory counters; the trigger",
    },
    ProbeSpec {
        program: names::PROG_MARK_VICTIM_TP,
        kind: ProbeKind::Tracepoint,
        hook: "oom:mark_victim",
        purpose: "the kernel's own rss/pgtables figures for the victim (as dmesg prints them)",
    },
    ProbeSpec {
        program: names::PROG_SIGNAL_GENERATE_BTF,
        kind: ProbeKind::TpBtf,
        hook: "signal_generate",
        purpose: "confirms the OOM killer's SIGKILL (a victim that was only marked is not a kill); \
                  who sent every other SIGKILL and SIGTERM (kill lines)",
    },
    ProbeSpec {
        program: names::PROG_OUT_OF_MEMORY,
        kind: ProbeKind::Fentry,
        hook: "out_of_memory",
        purpose: "marks an OOM in progress (so oom_score reads are not taken for candidates)",
    },
    ProbeSpec {
        program: names::PROG_OOM_BADNESS,
        kind: ProbeKind::Fexit,
        hook: "oom_badness",
        purpose: "every candidate's points exactly as the kernel computed them",
    },
    ProbeSpec {
        program: names::PROG_OOM_KILL_PROCESS,
        kind: ProbeKind::Fentry,
        hook: "oom_kill_process",
        purpose: "struct oom_control: constraint, totalpages, the domain memcg, the chosen points",
    },
    ProbeSpec {
        program: names::PROG_MEMCG_RECLAIM_ASK,
        kind: ProbeKind::Fentry,
        hook: "try_to_free_mem_cgroup_pages",
        purpose: "the pages direct reclaim was asked for",
    },
    // The exit before the entry: an exit that comes without its entry (a task already in the
    // function when the entry attached) finds nothing and counts nothing, where an entry
    // without its exit would leave a start that a later exit took for its own.
    ProbeSpec {
        program: names::PROG_THROTTLE_EXIT,
        kind: ProbeKind::Fexit,
        hook: names::THROTTLE_HOOK,
        purpose: "how long memory.high throttling held each cgroup's tasks (reclaim and \
                  penalty sleep), per memcg",
    },
    ProbeSpec {
        program: names::PROG_THROTTLE_ENTRY,
        kind: ProbeKind::Fentry,
        hook: names::THROTTLE_HOOK,
        purpose: "when a task with pages over memory.high enters the throttle (returns at \
                  once for every other return to user mode)",
    },
    ProbeSpec {
        program: names::PROG_PROCESS_EXIT,
        kind: ProbeKind::TpBtf,
        hook: "sched_process_exit",
        purpose: "when each victim exited (its memory was being freed); a SIGTERM's exit",
    },
    ProbeSpec {
        program: names::PROG_START_REAPING,
        kind: ProbeKind::TpBtf,
        hook: "start_task_reaping",
        purpose: "the OOM reaper starting on a victim that did not exit",
    },
    ProbeSpec {
        program: names::PROG_FINISH_REAPING,
        kind: ProbeKind::TpBtf,
        hook: "finish_task_reaping",
        purpose: "the OOM reaper having freed a victim's memory",
    },
    ProbeSpec {
        program: names::PROG_SKIP_REAPING,
        kind: ProbeKind::TpBtf,
        hook: "skip_task_reaping",
        purpose: "the OOM reaper skipping a victim",
    },
    ProbeSpec {
        program: names::PROG_RECLAIM_BEGIN,
        kind: ProbeKind::TpBtf,
        hook: "mm_vmscan_memcg_reclaim_begin",
        purpose: "direct reclaim before the OOM (runs, time), per memcg",
    },
    ProbeSpec {
        program: names::PROG_RECLAIM_END,
        kind: ProbeKind::TpBtf,
        hook: "mm_vmscan_memcg_reclaim_end",
        purpose: "direct reclaim before the OOM (pages freed), per memcg",
    },
];

/// Why one program did not attach.
#[derive(Debug, thiserror::Error)]
enum AttachError {
    #[error("program {0} missing from the object")]
    Missing(&'static str),
    #[error(transparent)]
    Program(#[from] aya::programs::ProgramError),
    #[error("no oom:mark_victim tracepoint under {0}")]
    NoTracepoint(String),
    #[error("not loaded: {0}")]
    Unavailable(&'static str),
    #[error("loading panicked")]
    Panicked,
}

impl AttachError {
    /// The kernel refused to load it at all (`EPERM` from `BPF_PROG_LOAD`, with an empty
    /// verifier log): a kernel that refuses one trampoline refuses them all.
    fn refused(&self) -> bool {
        matches!(
            self,
            Self::Program(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EPERM)
        )
    }
}

/// Loaded and attached programs. Dropping it detaches everything (links are never pinned).
pub struct Probes {
    ebpf: Ebpf,
    /// Each program's status.
    pub status: Vec<Status>,
    /// Kernel facts this kernel does not have (reported as unknown).
    pub missing: Vec<String>,
    /// `enum oom_constraint`: value -> name, from this kernel's BTF.
    pub constraints: Vec<(u32, String)>,
    /// Dropped records already reported.
    drops_reported: std::cell::Cell<u64>,
    /// The programs' own diagnostics, until the observer takes them.
    diagnostics: Option<Result<Diagnostics, DiagnosticsError>>,
    /// Their counts (zero when unreadable).
    diagnostic_counts: DiagnosticCounts,
    /// Both throttle programs are attached.
    throttle_attached: bool,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("status", &self.status)
            .finish()
    }
}

/// Checks everything the probes need before touching the kernel, in the order a user would
/// fix them: privileges, BTF, tracefs.
pub fn preflight(opts: &Options) -> Result<(Btf, Tracefs), ProbeError> {
    let tracefs = access(opts)?;
    Ok((parse_btf(opts)?, tracefs))
}

/// The checks of [`preflight`] that read nothing large: privileges, a BTF file, tracefs.
fn access(opts: &Options) -> Result<Tracefs, ProbeError> {
    if !privilege::can_trace(privilege::effective()) {
        return Err(ProbeError::Privileges(opts.command));
    }
    if !opts.btf.is_file() {
        return Err(ProbeError::NoBtf(opts.btf.display().to_string()));
    }
    Ok(Tracefs::find()?)
}

fn parse_btf(opts: &Options) -> Result<Btf, ProbeError> {
    Btf::from_file(&opts.btf).map_err(|source| ProbeError::Btf {
        path: opts.btf.display().to_string(),
        source,
    })
}

/// Raises RLIMIT_MEMLOCK for kernels before 5.11, which charge BPF maps against it.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass; failure is harmless (newer kernels account
    // BPF memory to the memcg instead).
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

/// What [`preflight`] checked and read, handed to [`Probes::load_checked`] so that the
/// kernel's BTF is parsed once.
pub struct Checked {
    /// Parsed already, or to be parsed by the loader.
    btf: Option<Btf>,
    tracefs: Tracefs,
}

/// [`preflight`], keeping what it read for [`Probes::load_checked`].
pub fn check(opts: &Options) -> Result<Checked, ProbeError> {
    let (btf, tracefs) = preflight(opts)?;
    Ok(Checked {
        btf: Some(btf),
        tracefs,
    })
}

/// [`check`] without parsing the BTF (left to [`Probes::load_checked`]): for `run`, which
/// loads the probes on a thread of its own while its stressors start, and has nothing to
/// parse on the way to its first stressor.
pub fn check_access(opts: &Options) -> Result<Checked, ProbeError> {
    Ok(Checked {
        btf: None,
        tracefs: access(opts)?,
    })
}

impl std::fmt::Debug for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checked").field("btf", &self.btf).finish()
    }
}

/// Returns the heap's free pages to the kernel (glibc keeps them otherwise): loading parses
/// the kernel's BTF (~6 MB) into ~20 MB of short-lived structures, which would stay in the
/// controller's RSS for the whole run.
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Probes {
    /// Loads the object and attaches every program this kernel accepts.
    pub fn load(opts: &Options) -> Result<Self, ProbeError> {
        Self::load_checked(opts, check(opts)?)
    }

    /// [`Self::load`] with what [`check`] already read.
    pub fn load_checked(opts: &Options, checked: Checked) -> Result<Self, ProbeError> {
        let started = std::time::Instant::now();
        let Checked { btf, tracefs } = checked;
        let btf = match btf {
            Some(btf) => btf,
            None => parse_btf(opts)?,
        };
        let mark_victim_format = tracefs.format("oom", "mark_victim").ok();
        let resolved = layout::resolve(&btf, mark_victim_format.as_ref());
        let constraints = layout::oom_constraints(&btf);
        let hooks = Hooks::resolve(&btf, &resolved.layout, opts.throttle);
        drop(btf);
        tracing::debug!("start-up: layout resolved at {:?}", started.elapsed());
        // aya's loader always parses the kernel's BTF itself when it is made; only one of
        // those large parses is alive at a time: the loader's is dropped before ours (which
        // attaching BTF programs needs) is made.
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        tracing::debug!("start-up: loader made at {:?}", started.elapsed());
        let aya_btf = aya::Btf::parse_file(&opts.btf, Endianness::default()).map_err(|e| {
            ProbeError::AyaBtf {
                path: opts.btf.display().to_string(),
                source: e,
            }
        })?;
        tracing::debug!("start-up: BTF parsed for aya at {:?}", started.elapsed());
        raise_memlock();
        let mut ebpf = loader
            .btf(Some(&aya_btf))
            .override_global(names::LAYOUT_GLOBAL, &resolved.layout, true)
            .map_max_entries(
                names::EVENTS,
                opts.ring_bytes
                    .max(u32::try_from(crate::size::page_size()).unwrap_or(4096)),
            )
            .load(OBJECT)?;
        tracing::debug!("start-up: object loaded at {:?}", started.elapsed());

        let (status, heavy_ms) = attach_all(
            &mut ebpf,
            &aya_btf,
            &hooks,
            mark_victim_format.is_some(),
            &tracefs,
        );
        tracing::debug!(
            "start-up: mark_victim_btf verified in {heavy_ms:?} (beside the other programs)"
        );

        let attached = |program: &str| status.iter().any(|s| s.program == program && s.attached);
        let mut victim_sources = 0;
        if attached(names::PROG_MARK_VICTIM_BTF) {
            victim_sources |= source::BTF;
        }
        if attached(names::PROG_MARK_VICTIM_TP) {
            victim_sources |= source::TRACEPOINT;
        }
        if victim_sources == 0 {
            let why = status
                .iter()
                .filter_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.hook)))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ProbeError::NothingAttached(why));
        }
        let throttle_attached =
            attached(names::PROG_THROTTLE_ENTRY) && attached(names::PROG_THROTTLE_EXIT);
        let runtime = RuntimeConfig {
            victim_sources,
            signal_attached: u32::from(attached(names::PROG_SIGNAL_GENERATE_BTF)),
        };
        let mut config: Array<_, RuntimeConfig> = ebpf
            .map_mut(names::RUNTIME)
            .ok_or(ProbeError::NoMap(names::RUNTIME))?
            .try_into()?;
        config.set(0, runtime, 0)?;
        let diagnostics = Diagnostics::take(&mut ebpf);
        drop(aya_btf);
        trim_heap();
        tracing::debug!("start-up: every probe attached at {:?}", started.elapsed());

        Ok(Self {
            ebpf,
            status,
            missing: resolved.missing,
            constraints,
            drops_reported: std::cell::Cell::new(0),
            diagnostic_counts: diagnostics
                .as_ref()
                .map(Diagnostics::counts)
                .unwrap_or_default(),
            diagnostics: Some(diagnostics),
            throttle_attached,
        })
    }

    /// Takes the programs' diagnostics for reading (`None`: taken already; an error: the
    /// programs work, but their diagnostics cannot be read).
    pub fn diagnostics(&mut self) -> Option<Result<Diagnostics, DiagnosticsError>> {
        self.diagnostics.take()
    }

    /// The BPF programs' diagnostics so far, by level.
    pub fn diagnostic_counts(&self) -> &DiagnosticCounts {
        &self.diagnostic_counts
    }

    /// Takes the ring buffer for reading. Call once.
    pub fn events(&mut self) -> io::Result<EventStream> {
        let map = self
            .ebpf
            .take_map(names::EVENTS)
            .ok_or_else(|| io::Error::other("the events ring buffer is gone"))?;
        let ring = RingBuf::try_from(map).map_err(io::Error::other)?;
        // SAFETY: the ring buffer owns its map fd, which stays open for as long as the
        // AsyncFd owns the ring buffer.
        let ring = unsafe { AsyncFd::register(ring) }?;
        Ok(EventStream { ring })
    }

    /// A BPF-side counter, summed over CPUs.
    pub fn counter(&self, index: u32) -> u64 {
        let Some(map) = self.ebpf.map(names::COUNTERS) else {
            return 0;
        };
        let Ok(array) = PerCpuArray::<_, u64>::try_from(map) else {
            return 0;
        };
        array
            .get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    /// Records the BPF side could not put in the ring buffer.
    pub fn drops(&self) -> u64 {
        self.counter(counters::RINGBUF_DROPS)
    }

    /// Records dropped since the last call, and in all (`None`: none since), as soon as the
    /// reader catches up: a full ring buffer is never silent.
    pub fn new_drops(&self) -> Option<(u64, u64)> {
        let total = self.drops();
        let new = total.saturating_sub(self.drops_reported.get());
        if new == 0 {
            return None;
        }
        self.drops_reported.set(total);
        Some((new, total))
    }

    /// Direct reclaim done so far by the tasks of memcg `id`, read now (a kill's record
    /// carries the figures as they stood at the kill; this is for records without them).
    pub fn pressure(&self, id: u64) -> Option<Pressure> {
        let map = self.ebpf.map(names::PRESSURE)?;
        let map = aya::maps::HashMap::<_, u64, Pressure>::try_from(map).ok()?;
        map.get(&id, 0).ok()
    }

    /// How long `memory.high` throttling has held the tasks of memcg `id` since the probes
    /// attached (all zero: never), or `None` when the throttle probes are not attached: then
    /// nothing is known, and nothing is to be reported as zero.
    pub fn throttle(&self, id: u64) -> Option<Throttle> {
        if !self.throttle_attached {
            return None;
        }
        let map = self.ebpf.map(names::THROTTLE)?;
        let map = aya::maps::HashMap::<_, u64, Throttle>::try_from(map).ok()?;
        match map.get(&id, 0) {
            Ok(t) => Some(t),
            Err(aya::maps::MapError::KeyNotFound) => Some(Throttle::default()),
            Err(_) => None,
        }
    }
}

/// Where the programs whose hook differs between kernels attach, those this kernel cannot
/// have, and those the command does not load.
#[derive(Debug)]
struct Hooks {
    /// The `memory.high` handler's function.
    throttle: &'static str,
    /// Why the throttle programs are not loaded (`None`: they are).
    throttle_unavailable: Option<&'static str>,
    /// The command loads the throttle programs ([`Options::throttle`]).
    throttle_wanted: bool,
}

const THROTTLE_PROGRAMS: [&str; 2] = [names::PROG_THROTTLE_ENTRY, names::PROG_THROTTLE_EXIT];

impl Hooks {
    fn resolve(btf: &Btf, layout: &memstress_ebpf::KernelLayout, throttle_wanted: bool) -> Self {
        // Recent kernels test `memcg_nr_pages_over_high` in an inline wrapper and call the
        // body only with pages to pay for; the body is the function to hook where it exists.
        let inner = btf
            .find(btf::Kind::Func, names::THROTTLE_HOOK_INNER)
            .is_ok();
        Self {
            throttle: if inner {
                names::THROTTLE_HOOK_INNER
            } else {
                names::THROTTLE_HOOK
            },
            // Without the counter the entry program cannot return early, and would look up a
            // map on every return to user mode: it is not loaded at all.
            throttle_unavailable: (layout.task_memcg_nr_pages_over_high == UNKNOWN).then_some(
                "this kernel's BTF has no task_struct.memcg_nr_pages_over_high (a kernel \
                 without CONFIG_MEMCG)",
            ),
            throttle_wanted,
        }
    }

    /// Whether the command loads `spec` at all (one it does not is left out of the status).
    fn wanted(&self, spec: &ProbeSpec) -> bool {
        self.throttle_wanted || !THROTTLE_PROGRAMS.contains(&spec.program)
    }

    /// The hook of `spec` on this kernel.
    fn hook(&self, spec: &ProbeSpec) -> &'static str {
        if spec.hook == names::THROTTLE_HOOK {
            self.throttle
        } else {
            spec.hook
        }
    }

    /// Why `spec` is not to be loaded on this kernel.
    fn unavailable(&self, spec: &ProbeSpec) -> Option<&'static str> {
        THROTTLE_PROGRAMS
            .contains(&spec.program)
            .then_some(self.throttle_unavailable)
            .flatten()
    }
}

/// Loads and attaches every program, in the order of [`PROBES`]. The kernel's verifier
/// takes most of start-up on `mark_victim_btf` (the largest program: it walks the OOM
/// domain's tasks); it is verified on a thread of its own while the others load beside it.
/// Returns each program's status and how long that one took.
fn attach_all(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    hooks: &Hooks,
    have_mark_victim_format: bool,
    tracefs: &Tracefs,
) -> (Vec<Status>, std::time::Duration) {
    let mut programs: Vec<(&str, &mut Program)> = ebpf.programs_mut().collect();
    let mut taken: Vec<Option<&mut Program>> = PROBES
        .iter()
        .map(|spec| {
            programs
                .iter()
                .position(|(n, _)| *n == spec.program)
                .map(|i| programs.swap_remove(i).1)
        })
        .collect();
    let status = |spec: &ProbeSpec, result: Result<(), AttachError>| Status {
        program: spec.program.to_owned(),
        kind: spec.kind,
        hook: hooks.hook(spec).to_owned(),
        purpose: spec.purpose.to_owned(),
        attached: result.is_ok(),
        error: result.err().map(|e| error_chain(&e)),
    };
    let heavy = taken[0].take();
    std::thread::scope(|scope| {
        let heavy = scope.spawn(move || {
            let t = std::time::Instant::now();
            (attach(&PROBES[0], PROBES[0].hook, heavy, btf), t.elapsed())
        });
        let mut all = Vec::with_capacity(PROBES.len());
        // A kernel that refuses trampolines refuses them all: the first refusal stands for
        // the rest instead of more loads of the same answer.
        let mut refused: Option<String> = None;
        for (spec, prog) in PROBES.iter().zip(taken).skip(1) {
            if !hooks.wanted(spec) {
                continue;
            }
            if let Some(why) = hooks.unavailable(spec) {
                all.push(status(spec, Err(AttachError::Unavailable(why))));
                continue;
            }
            let result = match (spec.kind, &refused) {
                (ProbeKind::Tracepoint, _) if !have_mark_victim_format => Err(
                    AttachError::NoTracepoint(tracefs.root().display().to_string()),
                ),
                (kind, Some(why)) if kind.is_trampoline() => {
                    all.push(Status {
                        error: Some(why.clone()),
                        ..status(spec, Ok(()))
                    });
                    all.last_mut().expect("just pushed").attached = false;
                    continue;
                }
                _ => attach(spec, hooks.hook(spec), prog, btf),
            };
            if spec.kind.is_trampoline()
                && let Err(e) = &result
                && e.refused()
            {
                refused = Some(error_chain(e));
            }
            all.push(status(spec, result));
        }
        let (result, took) = heavy
            .join()
            .unwrap_or((Err(AttachError::Panicked), std::time::Duration::ZERO));
        all.insert(0, status(&PROBES[0], result));
        (all, took)
    })
}

/// Loads and attaches one program as `spec` says, on `hook` (`spec.hook`, or what this
/// kernel calls it).
fn attach(
    spec: &ProbeSpec,
    hook: &str,
    prog: Option<&mut Program>,
    btf: &aya::Btf,
) -> Result<(), AttachError> {
    let prog = prog.ok_or(AttachError::Missing(spec.program))?;
    match spec.kind {
        ProbeKind::TpBtf => {
            let prog: &mut BtfTracePoint = prog.try_into()?;
            prog.load(hook, btf)?;
            prog.attach()?;
        }
        ProbeKind::Tracepoint => {
            let prog: &mut TracePoint = prog.try_into()?;
            let (group, event) = hook.split_once(':').unwrap_or(("", hook));
            prog.load()?;
            prog.attach(group, event)?;
        }
        ProbeKind::Fentry => {
            let prog: &mut FEntry = prog.try_into()?;
            prog.load(hook, btf)?;
            prog.attach()?;
        }
        ProbeKind::Fexit => {
            let prog: &mut FExit = prog.try_into()?;
            prog.load(hook, btf)?;
            prog.attach()?;
        }
    }
    Ok(())
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let full = crate::error_chain(e);
    // Verifier logs are long: the whole log at debug level (MEMSTRESS_LOG=debug), its
    // first and last lines in the status.
    tracing::debug!("{full}");
    let mut lines = full.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or_default().to_owned();
    match lines.next_back() {
        Some(last) if last != first => format!("{first} … {last}"),
        _ => first,
    }
}

/// The ring buffer, readable from async code.
pub struct EventStream {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventStream {
    /// Waits until records are available, then hands each to `f`.
    pub async fn drain(&mut self, mut f: impl FnMut(&[u8])) -> io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            f(&item);
        }
        guard.clear_ready();
        Ok(())
    }

    /// Hands every record already available to `f`, without waiting.
    pub fn drain_now(&mut self, mut f: impl FnMut(&[u8])) {
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            f(&item);
        }
    }
}
