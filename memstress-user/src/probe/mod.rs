//! Loading and attaching memstress's BPF programs, chosen at run time.
//!
//! Start-up: check privileges, read the running kernel's BTF and resolve the struct offsets
//! (`layout`), read the classic tracepoint formats from tracefs, load the object with the
//! offsets as a read-only global, then attach every program the kernel accepts. A program
//! that cannot attach is reported once and the rest keep working; only when no `mark_victim`
//! program attaches is there nothing to watch.

pub mod btf;
pub mod layout;
pub mod tracefs;


use std::{io, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader, Endianness,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FEntry, FExit, Program, TracePoint},
};
use memstress_ebpf::{Pressure, RuntimeConfig, counters, names, source};
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use crate::{
    probe::btf::{Btf, BtfError}, privilege,
    probe::tracefs::{Tracefs, TracefsError},
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
    #[error("cannot load memstress's BPF programs: {0}")]
    Load(String),
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
}

/// The ring buffer's default size: 4 MiB holds thousands of kills' records.
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

impl Default for Options {
    fn default() -> Self {
        Self {
            btf: PathBuf::from(btf::VMLINUX),
            command: "watch",
            ring_bytes: DEFAULT_RING_BYTES,
        }
    }
}

/// One program and whether it attached.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Program name in the object.
    pub program: &'static str,
    /// `tp_btf` or `tracepoint`.
    pub kind: &'static str,
    /// The hook.
    pub hook: &'static str,
    /// What it contributes.
    pub purpose: &'static str,
    /// Whether it is attached.
    pub attached: bool,
    /// Why not, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// fentry/fexit programs: the OOM killer's own state, exact. They load on most production
/// kernels; where they do not (no trampolines, or a kernel that refuses them), the
/// explanation uses what `mark_victim` reads, and says so.
const FENTRY_FEXIT: [(&str, &str, &str, &str); 4] = [
    (
        names::PROG_OUT_OF_MEMORY,
        "fentry",
        "out_of_memory",
        "marks an OOM in progress (so oom_score reads are not taken for candidates)",
    ),
    (
        names::PROG_OOM_BADNESS,
        "fexit",
        "oom_badness",
        "every candidate's points exactly as the kernel computed them",
    ),
    (
        names::PROG_OOM_KILL_PROCESS,
        "fentry",
        "oom_kill_process",
        "struct oom_control: constraint, totalpages, the domain memcg, the chosen points",
    ),
    (
        names::PROG_MEMCG_RECLAIM_ASK,
        "fentry",
        "try_to_free_mem_cgroup_pages",
        "the pages direct reclaim was asked for",
    ),
];

/// BTF tracepoints that add to the report and are not needed to see kills.
const OPTIONAL_BTF: [(&str, &str, &str); 6] = [
    (
        names::PROG_PROCESS_EXIT,
        "sched_process_exit",
        "when each victim exited (its memory was being freed)",
    ),
    (
        names::PROG_START_REAPING,
        "start_task_reaping",
        "the OOM reaper starting on a victim that did not exit",
    ),
    (
        names::PROG_FINISH_REAPING,
        "finish_task_reaping",
        "the OOM reaper having freed a victim's memory",
    ),
    (
        names::PROG_SKIP_REAPING,
        "skip_task_reaping",
        "the OOM reaper skipping a victim",
    ),
    (
        names::PROG_RECLAIM_BEGIN,
        "mm_vmscan_memcg_reclaim_begin",
        "direct reclaim before the OOM (runs, time), per memcg",
    ),
    (
        names::PROG_RECLAIM_END,
        "mm_vmscan_memcg_reclaim_end",
        "direct reclaim before the OOM (pages freed), per memcg",
    ),
];

/// The `attached` line.
#[derive(Serialize)]
struct Attached<'a> {
    probes: &'a [Status],
    unknown_kernel_facts: &'a [String],
    cgroup: Option<&'a str>,
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
}

/// The `dropped` line: records the BPF side could not queue since the last such line.
#[derive(Serialize)]
struct Dropped {
    records: u64,
    total: u64,
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
        drop(btf);
        tracing::debug!("start-up: layout resolved at {:?}", started.elapsed());
        // aya's loader always parses the kernel's BTF itself when it is made; only one of
        // those large parses is alive at a time: the loader's is dropped before ours (which
        // attaching BTF programs needs) is made.
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        tracing::debug!("start-up: loader made at {:?}", started.elapsed());
        let aya_btf = aya::Btf::parse_file(&opts.btf, Endianness::default()).map_err(|e| {
            ProbeError::Load(format!("aya cannot parse {}: {e}", opts.btf.display()))
        })?;
        tracing::debug!("start-up: BTF parsed for aya at {:?}", started.elapsed());
        raise_memlock();
        let mut ebpf = loader
            .btf(Some(&aya_btf))
            .override_global(names::LAYOUT_GLOBAL, &resolved.layout, true)
            .map_max_entries(
                names::EVENTS,
                opts.ring_bytes
                    .max(u32::try_from(crate::explain::record::page_size()).unwrap_or(4096)),
            )
            .load(OBJECT)
            .map_err(|e| ProbeError::Load(e.to_string()))?;
        tracing::debug!("start-up: object loaded at {:?}", started.elapsed());

        let (status, heavy_ms) =
            attach_all(&mut ebpf, &aya_btf, mark_victim_format.is_some(), &tracefs);
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
        let runtime = RuntimeConfig {
            victim_sources,
            signal_attached: u32::from(attached(names::PROG_SIGNAL_GENERATE_BTF)),
        };
        let mut config: Array<_, RuntimeConfig> = ebpf
            .map_mut(names::RUNTIME)
            .ok_or_else(|| ProbeError::Load(format!("no map {}", names::RUNTIME)))?
            .try_into()
            .map_err(|e: aya::maps::MapError| ProbeError::Load(e.to_string()))?;
        config
            .set(0, runtime, 0)
            .map_err(|e| ProbeError::Load(e.to_string()))?;
        drop(aya_btf);
        trim_heap();
        tracing::debug!("start-up: every probe attached at {:?}", started.elapsed());

        Ok(Self {
            ebpf,
            status,
            missing: resolved.missing,
            constraints,
            drops_reported: std::cell::Cell::new(0),
        })
    }

    /// Reports what attached: the `attached` JSON line, and one warning on stderr for each
    /// program that did not attach and each fact this kernel lacks.
    pub fn announce(&self, reporter: &crate::output::Reporter, cgroup: Option<&str>) {
        reporter.json(
            "attached",
            &Attached {
                probes: &self.status,
                unknown_kernel_facts: &self.missing,
                cgroup,
            },
        );
        self.warn_degraded();
    }

    /// Warns once on stderr for each program that did not attach and each unknown fact.
    pub fn warn_degraded(&self) {
        let trampoline = |s: &&Status| s.kind == "fentry" || s.kind == "fexit";
        for s in self.status.iter().filter(|s| !s.attached && !trampoline(s)) {
            tracing::warn!(
                "probe {} {} not attached ({}); without it: {}",
                s.kind,
                s.hook,
                s.error.as_deref().unwrap_or("unknown error"),
                s.purpose
            );
        }
        // A kernel without fentry/fexit refuses all of them for one reason: say it once.
        let refused: Vec<&Status> = self
            .status
            .iter()
            .filter(|s| !s.attached && trampoline(s))
            .collect();
        if let Some(first) = refused.first() {
            let hooks: Vec<String> = refused
                .iter()
                .map(|s| format!("{} {}", s.kind, s.hook))
                .collect();
            tracing::info!(
                "{} not available on this kernel ({}): points come from the kernel's formula \
                 applied to what mark_victim reads, and the domain from the memcg counters",
                hooks.join(", "),
                first.error.as_deref().unwrap_or("unknown error")
            );
        }
        if !self.missing.is_empty() {
            tracing::warn!(
                "this kernel lacks {}; those figures are reported as unknown (null)",
                self.missing.join(", ")
            );
        }
    }

    /// A one-line summary of what is attached, for text mode.
    pub fn summary(&self) -> String {
        self.status
            .iter()
            .filter(|s| s.attached)
            .map(|s| format!("{} {}", s.kind, s.hook))
            .collect::<Vec<_>>()
            .join(", ")
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

    /// Reports records dropped since the last call (a `dropped` line and a warning), as soon
    /// as the reader catches up: a full ring buffer is never silent.
    pub fn report_new_drops(&self, reporter: &crate::output::Reporter) {
        let total = self.drops();
        let new = total.saturating_sub(self.drops_reported.get());
        if new == 0 {
            return;
        }
        self.drops_reported.set(total);
        reporter.json(
            "dropped",
            &Dropped {
                records: new,
                total,
            },
        );
        tracing::warn!(
            "{new} OOM record(s) dropped: the BPF ring buffer was full (reader stalled?); \
             {total} in all; --ring-buffer sets its size"
        );
    }

    /// Direct reclaim done so far by the tasks of memcg `id`, read now (a kill's record
    /// carries the figures as they stood at the kill; this is for records without them).
    pub fn pressure(&self, id: u64) -> Option<Pressure> {
        let map = self.ebpf.map(names::PRESSURE)?;
        let map = aya::maps::HashMap::<_, u64, Pressure>::try_from(map).ok()?;
        map.get(&id, 0).ok()
    }
}

/// Loads and attaches every program, in the order of the `attached` line. The kernel's
/// verifier takes most of start-up on `mark_victim_btf` (the largest program: it walks the
/// OOM domain's tasks); it is verified on a thread of its own while the others load beside
/// it. Returns each program's status and how long that one took.
fn attach_all(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    have_mark_victim_format: bool,
    tracefs: &Tracefs,
) -> (Vec<Status>, std::time::Duration) {
    let mut programs: Vec<(&str, &mut Program)> = ebpf.programs_mut().collect();
    let mut take = |name: &str| {
        programs
            .iter()
            .position(|(n, _)| *n == name)
            .map(|i| programs.swap_remove(i).1)
    };
    let heavy = take(names::PROG_MARK_VICTIM_BTF);
    let tracepoint = take(names::PROG_MARK_VICTIM_TP);
    let signal = take(names::PROG_SIGNAL_GENERATE_BTF);
    let trampolines: Vec<_> = FENTRY_FEXIT.iter().map(|t| take(t.0)).collect();
    let optional: Vec<_> = OPTIONAL_BTF.iter().map(|t| take(t.0)).collect();
    let status = |program, kind, hook, purpose, result: Result<(), String>| Status {
        program,
        kind,
        hook,
        purpose,
        attached: result.is_ok(),
        error: result.err(),
    };
    std::thread::scope(|scope| {
        let heavy = scope.spawn(move || {
            let t = std::time::Instant::now();
            let result = attach_btf(heavy, names::PROG_MARK_VICTIM_BTF, btf, "mark_victim");
            (result, t.elapsed())
        });
        let mut rest = Vec::new();
        let result = if have_mark_victim_format {
            attach_tracepoint(tracepoint, names::PROG_MARK_VICTIM_TP, "oom", "mark_victim")
        } else {
            Err(format!(
                "no oom:mark_victim tracepoint under {}",
                tracefs.root().display()
            ))
        };
        rest.push(status(
            names::PROG_MARK_VICTIM_TP,
            "tracepoint",
            "oom:mark_victim",
            "the kernel's own rss/pgtables figures for the victim (as dmesg prints them)",
            result,
        ));
        rest.push(status(
            names::PROG_SIGNAL_GENERATE_BTF,
            "tp_btf",
            "signal_generate",
            "confirms the OOM killer's SIGKILL (a victim that was only marked is not a kill)",
            attach_btf(
                signal,
                names::PROG_SIGNAL_GENERATE_BTF,
                btf,
                "signal_generate",
            ),
        ));
        // A kernel that refuses trampolines (EPERM) refuses them all: the first refusal
        // stands for the rest instead of four more loads of the same answer.
        let mut refused: Option<String> = None;
        for ((program, kind, hook, purpose), prog) in FENTRY_FEXIT.into_iter().zip(trampolines) {
            let result = match &refused {
                Some(e) => Err(e.clone()),
                None => attach_trampoline(prog, program, btf, kind, hook),
            };
            if let Err(e) = &result
                && e.contains("Operation not permitted")
            {
                refused = Some(e.clone());
            }
            rest.push(status(program, kind, hook, purpose, result));
        }
        for ((program, hook, purpose), prog) in OPTIONAL_BTF.into_iter().zip(optional) {
            rest.push(status(
                program,
                "tp_btf",
                hook,
                purpose,
                attach_btf(prog, program, btf, hook),
            ));
        }
        let (result, took) = heavy.join().unwrap_or_else(|_| {
            (
                Err("loading panicked".to_owned()),
                std::time::Duration::ZERO,
            )
        });
        let mut all = vec![status(
            names::PROG_MARK_VICTIM_BTF,
            "tp_btf",
            "mark_victim",
            "the victim's task_struct: ids, cgroup, memory counters; the trigger",
            result,
        )];
        all.append(&mut rest);
        (all, took)
    })
}

fn attach_btf(
    prog: Option<&mut Program>,
    program: &str,
    btf: &aya::Btf,
    hook: &str,
) -> Result<(), String> {
    let prog: &mut BtfTracePoint = prog
        .ok_or_else(|| format!("program {program} missing from the object"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    prog.load(hook, btf).map_err(|e| error_chain(&e))?;
    prog.attach().map_err(|e| error_chain(&e))?;
    Ok(())
}

fn attach_trampoline(
    prog: Option<&mut Program>,
    program: &str,
    btf: &aya::Btf,
    kind: &str,
    function: &str,
) -> Result<(), String> {
    let prog = prog.ok_or_else(|| format!("program {program} missing from the object"))?;
    if kind == "fexit" {
        let prog: &mut FExit = prog.try_into().map_err(|e| format!("{e}"))?;
        prog.load(function, btf).map_err(|e| error_chain(&e))?;
        prog.attach().map_err(|e| error_chain(&e))?;
    } else {
        let prog: &mut FEntry = prog.try_into().map_err(|e| format!("{e}"))?;
        prog.load(function, btf).map_err(|e| error_chain(&e))?;
        prog.attach().map_err(|e| error_chain(&e))?;
    }
    Ok(())
}

fn attach_tracepoint(
    prog: Option<&mut Program>,
    program: &str,
    group: &str,
    event: &str,
) -> Result<(), String> {
    let prog: &mut TracePoint = prog
        .ok_or_else(|| format!("program {program} missing from the object"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    prog.load().map_err(|e| error_chain(&e))?;
    prog.attach(group, event).map_err(|e| error_chain(&e))?;
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
