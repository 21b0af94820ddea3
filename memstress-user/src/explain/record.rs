//! Records from the BPF ring buffer, decoded into what memstress reports.
//!
//! The JSON form of every event is documented in docs/events.md; fields are only ever added.
//! A figure the kernel did not give (a BTF member this kernel lacks, a probe that did not
//! attach) is `null`, never a guess.

use std::{mem::size_of, ptr};

use memstress_ebpf::{
    Aftermath as RawAftermath, CgroupPath, Chain, Collateral, OomVictim, Pressure, RSS_ANON,
    RSS_FILE, RSS_SHMEM, RSS_SWAP, SignalKill, TaskFacts, aftermath, domain, killed, kind, level,
    signal, skip, source, valid,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::target::workload::Workload;

/// Which program filled a victim record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordSource {
    /// The BTF tracepoint on `mark_victim` (the victim's `task_struct`).
    TpBtf,
    /// The classic `oom:mark_victim` tracepoint (the kernel's own formatted figures).
    Tracepoint,
}

/// Why the OOM killer passed over a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SkipReason {
    /// pid 1.
    #[serde(rename = "init")]
    Init,
    /// No memory left to free (exiting).
    #[serde(rename = "no mm (exiting)")]
    NoMm,
    /// `oom_score_adj` -1000 exempts it.
    #[serde(rename = "oom_score_adj -1000")]
    AdjMin,
    /// A victim of an earlier OOM whose memory the reaper already freed.
    #[serde(rename = "earlier OOM victim, already reaped")]
    EarlierVictim,
    /// A reason this memstress does not know.
    #[serde(rename = "unknown")]
    Unknown,
}

/// What happened to a victim after its kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Aftermath {
    /// It exited (its memory is being freed).
    Exited,
    /// The OOM reaper started on it (it did not exit in time).
    ReaperStarted,
    /// The OOM reaper freed its memory.
    ReaperFinished,
    /// The OOM reaper skipped it.
    ReaperSkipped,
    /// A state this memstress does not know.
    Unknown,
}

/// How the OOM domain was recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FoundBy {
    /// The kernel's `struct oom_control` named it (fentry).
    OomControl,
    /// The v1 code locked its subtree for this OOM.
    OomLock,
    /// The lowest memcg at its limit on the victim's chain.
    UsageAtLimit,
    /// The lowest memcg on the victim's chain with more OOMs invoked for it than kills seen
    /// (its other signs were gone by the kill).
    OomEvents,
}

/// Why a process was killed along with a victim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CollateralReason {
    /// It shares the victim's `mm` (`__oom_kill_process` kills every such process).
    #[serde(rename = "shares the victim's memory (mm)")]
    SharesMm,
}

impl CollateralReason {
    /// In words.
    pub fn text(self) -> &'static str {
        match self {
            Self::SharesMm => "shares the victim's memory (mm)",
        }
    }
}

/// Errors decoding a ring-buffer record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is too short")]
    Short(usize),
    #[error("unknown record kind {0}")]
    Kind(u32),
}

/// A decoded record.
#[derive(Clone, Debug)]
pub enum Record {
    /// `mark_victim` fired.
    Victim(Box<OomKill>),
    /// A task the OOM killer considered (sent before its OOM's victim).
    Candidate(Candidate),
    /// A process SIGKILLed with the victim.
    Collateral(CollateralKill),
    /// A victim exited or was reaped.
    Aftermath(VictimAftermath),
    /// A SIGKILL, or a SIGTERM followed by the process's exit (OOM kills included: the
    /// explainer tells them apart).
    Signal(Box<Signalled>),
}

/// Reads a `T` from the front of `bytes`.
fn pod<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: at least size_of::<T>() bytes are there; T is one of the ABI's plain types
    // (integers and arrays only), for which any bit pattern is valid; read_unaligned copes
    // with any alignment.
    Ok(unsafe { ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let kind: u32 = pod(bytes)?;
    let page = crate::size::page_size();
    match kind {
        kind::OOM_VICTIM => Ok(Record::Victim(Box::new(OomKill::from_raw(
            &pod::<OomVictim>(bytes)?,
            page,
        )))),
        kind::CANDIDATE => {
            let raw: memstress_ebpf::Candidate = pod(bytes)?;
            Ok(Record::Candidate(Candidate {
                seq: raw.seq,
                skip: raw.skip,
                task: task(&raw.task),
                memory: memory(&raw.task, page),
                kernel_points: (raw.task.valid & valid::KERNEL_POINTS != 0)
                    .then_some(raw.task.kernel_points),
            }))
        }
        kind::COLLATERAL => {
            let raw: Collateral = pod(bytes)?;
            Ok(Record::Collateral(CollateralKill {
                seq: raw.seq,
                ts_ns: raw.ts_ns,
                victim_tid: raw.victim_tid,
                task: task(&raw.task),
                reason: CollateralReason::SharesMm,
                cgroup: None,
                workload: Workload::default(),
            }))
        }
        kind::AFTERMATH => {
            let raw: RawAftermath = pod(bytes)?;
            Ok(Record::Aftermath(VictimAftermath {
                seq: raw.seq,
                ts_ns: raw.ts_ns,
                tid: raw.tid,
                what: match raw.what {
                    aftermath::EXITED => Aftermath::Exited,
                    aftermath::REAP_START => Aftermath::ReaperStarted,
                    aftermath::REAP_FINISH => Aftermath::ReaperFinished,
                    aftermath::REAP_SKIP => Aftermath::ReaperSkipped,
                    _ => Aftermath::Unknown,
                },
            }))
        }
        kind::SIGNAL => Ok(Record::Signal(Box::new(Signalled::from_raw(&pod::<
            SignalKill,
        >(
            bytes
        )?)))),
        other => Err(DecodeError::Kind(other)),
    }
}

/// A SIGKILL or SIGTERM as `signal_generate` (and, for a SIGTERM, the exit) saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signalled {
    /// CLOCK_MONOTONIC ns of the signal.
    pub ts_ns: u64,
    /// 9 or 15.
    pub signal: u32,
    /// Sent with `SEND_SIG_PRIV`: by the kernel itself (the OOM killer among others).
    pub privileged: bool,
    /// The task in whose context it was sent.
    pub sender: Task,
    /// The sender's `task_struct.flags` (`None`: not read).
    pub sender_flags: Option<u32>,
    /// The sender's memory cgroup path.
    pub sender_cgroup: Option<String>,
    /// The task it was sent to.
    pub victim: Task,
    /// Its memory cgroup path.
    pub victim_cgroup: Option<String>,
    /// Kernfs ids of its cgroup and ancestors, leaf first.
    pub victim_cgroup_chain: Vec<u64>,
    /// SIGTERM: when the process exited.
    pub exit_ns: Option<u64>,
    /// SIGTERM: its `exit_code` then.
    pub exit_code: Option<u32>,
    /// SIGKILL: when a SIGTERM reached it before.
    pub term_ns: Option<u64>,
}

impl Signalled {
    /// Decodes a raw record.
    pub fn from_raw(raw: &SignalKill) -> Self {
        let has = |bit| raw.flags & bit != 0;
        // The hierarchy's root has no components: "/".
        let path = |read: bool, p: &CgroupPath| -> (Option<String>, Vec<u64>) {
            if !read {
                return (None, Vec::new());
            }
            let (path, _, ids) = cgroup_path(p);
            (path.or_else(|| Some("/".to_owned())), ids)
        };
        let (victim_cgroup, victim_cgroup_chain) =
            path(has(signal::VICTIM_CGROUP), &raw.victim_cgroup);
        let (sender_cgroup, _) = path(has(signal::SENDER_CGROUP), &raw.sender_cgroup);
        Self {
            ts_ns: raw.ts_ns,
            signal: raw.signal,
            privileged: has(signal::PRIV),
            sender: task(&raw.sender),
            sender_flags: (raw.sender.valid & valid::FLAGS != 0).then_some(raw.sender.flags),
            sender_cgroup,
            victim: task(&raw.victim),
            victim_cgroup,
            victim_cgroup_chain,
            exit_ns: has(signal::EXITED).then_some(raw.exit_ns),
            exit_code: has(signal::EXIT_CODE).then_some(raw.exit_code),
            term_ns: has(signal::AFTER_TERM).then_some(raw.term_ns),
        }
    }

    /// Whether the victim's cgroup is the cgroup with kernfs id `id` (or below it), or,
    /// when ids are not known, whether its path is `path` or below it.
    pub fn in_cgroup(&self, id: u64, path: &str) -> bool {
        if self.victim_cgroup_chain.contains(&id) {
            return true;
        }
        match &self.victim_cgroup {
            Some(victim) => {
                path == "/"
                    || victim == path
                    || victim
                        .strip_prefix(path)
                        .is_some_and(|rest| rest.starts_with('/'))
            }
            None => false,
        }
    }
}

/// A process as the report shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Task {
    /// Process id (tgid).
    pub pid: Option<u32>,
    /// Thread id (the `Killed process` number in dmesg; equals `pid` for a main thread).
    pub tid: Option<u32>,
    /// Command name (`comm`).
    pub comm: Option<String>,
    /// Real uid.
    pub uid: Option<u32>,
    /// `oom_score_adj`.
    #[schemars(range(min = -1000, max = 1000))]
    pub oom_score_adj: Option<i16>,
    /// Kernfs id of its memory cgroup.
    pub cgroup_id: Option<u64>,
}

/// A task's memory as the kernel counted it in the OOM path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Memory {
    /// Resident anonymous memory.
    pub anon_rss_kib: Option<u64>,
    /// Resident file-backed memory.
    pub file_rss_kib: Option<u64>,
    /// Resident shared memory.
    pub shmem_rss_kib: Option<u64>,
    /// Swapped-out pages.
    pub swap_kib: Option<u64>,
    /// Page tables.
    pub pgtables_kib: Option<u64>,
    /// Virtual size.
    pub total_vm_kib: Option<u64>,
    /// The raw counters (pages, and page-table bytes), for the points formula.
    #[serde(skip)]
    pub raw: Option<RawCounters>,
}

/// The counters `oom_badness()` adds up, as the kernel holds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawCounters {
    /// MM_FILEPAGES + MM_ANONPAGES + MM_SHMEMPAGES.
    pub rss_pages: u64,
    /// MM_SWAPENTS.
    pub swap_pages: u64,
    /// `mm_pgtables_bytes()`.
    pub pgtables_bytes: u64,
}

/// A candidate of an OOM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The OOM.
    pub seq: u64,
    /// `memstress_ebpf::skip` reason (0: eligible).
    pub skip: u32,
    /// Who.
    pub task: Task,
    /// Its memory.
    pub memory: Memory,
    /// `oom_badness()`'s own result in this OOM (where fexit loads).
    pub kernel_points: Option<i64>,
}

/// The kernel's `struct oom_control` for an OOM (where fentry loads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomControl {
    /// `enum oom_constraint` value.
    pub constraint: u32,
    /// `totalpages`.
    pub totalpages: u64,
    /// The chosen task's points.
    pub chosen_points: i64,
    /// The chosen task's tid.
    pub chosen_tid: u32,
    /// Allocation order.
    pub order: i32,
    /// Allocation gfp mask.
    pub gfp_mask: u32,
    /// The domain memcg's kernel id (0: none).
    pub memcg_id: u64,
}

impl Candidate {
    /// Why the kernel passed over it, in words (`None`: eligible).
    pub fn skip_reason(&self) -> Option<SkipReason> {
        match self.skip {
            skip::ELIGIBLE => None,
            skip::INIT => Some(SkipReason::Init),
            skip::NO_MM => Some(SkipReason::NoMm),
            skip::ADJ_MIN => Some(SkipReason::AdjMin),
            skip::EARLIER_VICTIM => Some(SkipReason::EarlierVictim),
            _ => Some(SkipReason::Unknown),
        }
    }
}

/// A process killed along with a victim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CollateralKill {
    /// The OOM.
    #[serde(skip)]
    pub seq: u64,
    /// When.
    #[serde(skip)]
    pub ts_ns: u64,
    /// The victim it died with.
    #[serde(skip)]
    pub victim_tid: u32,
    /// Who.
    #[serde(flatten)]
    pub task: Task,
    /// Why.
    pub reason: CollateralReason,
    /// Its memory cgroup's path (`null`: not known).
    #[serde(default)]
    pub cgroup: Option<String>,
    /// Its container and pod.
    #[serde(flatten, default)]
    pub workload: Workload,
}

/// A victim's exit or reaping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VictimAftermath {
    /// The OOM.
    pub seq: u64,
    /// When.
    pub ts_ns: u64,
    /// The victim's tid.
    pub tid: u32,
    /// `exited`, `reaper_started`, `reaper_finished`, `reaper_skipped`.
    pub what: Aftermath,
}

/// One memcg of the victim's chain, as read in the OOM path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Level {
    /// Kernfs id.
    pub id: u64,
    /// Usage in pages.
    pub usage_pages: u64,
    /// Limit in pages.
    pub max_pages: u64,
    /// Swap (v2) or memory+swap (v1) limit in pages.
    pub swap_max_pages: u64,
    /// Limit hits at the kill: v1 `memory.failcnt` (`None`: not read).
    pub failcnt: Option<u64>,
    /// … v2 `memory.events` `max`.
    pub events_max: Option<u64>,
    /// `oom_lock` set.
    pub oom_lock: bool,
    /// `memory.oom.group` set.
    pub oom_group: bool,
    /// The hierarchy's root.
    pub root: bool,
    /// Depth below the root.
    pub level: u32,
}

/// One OOM victim as `mark_victim` reported it, with what the BPF side saw around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomKill {
    /// CLOCK_MONOTONIC nanoseconds at `mark_victim`.
    pub ts_ns: u64,
    /// CPU the OOM killer ran on.
    pub cpu: u32,
    /// The OOM's sequence number.
    pub seq: u64,
    /// The victim.
    pub victim: Victim,
    /// The task whose allocation started the OOM (the OOM killer runs in its context).
    pub trigger: Task,
    /// `true`: the OOM killer SIGKILLed it; `false`: it was only marked, being already
    /// exiting; `None`: the signal probe is not attached, so this cannot be told.
    pub kill_confirmed: Option<bool>,
    /// Which programs contributed: `tp_btf` and/or `tracepoint`.
    pub sources: Vec<RecordSource>,
    /// The victim's memcg chain, leaf first (empty without the BTF program).
    pub chain: Vec<Level>,
    /// Index of the OOM domain in `chain` (`None`: global).
    pub domain: Option<usize>,
    /// How the domain was recognised.
    pub domain_by: Option<FoundBy>,
    /// A `memory.oom.group` kill following the chosen victim.
    pub group_kill: bool,
    /// The candidate scan: (visited, sent, dropped, truncated).
    pub scan: (u32, u32, u32, bool),
    /// How long the scan took, and the kernel's OOM path before it (from the trigger's last
    /// memcg reclaim to `mark_victim`; 0: unknown), ns.
    pub scan_ns: u64,
    pub since_reclaim_ns: u64,
    /// The kernel's `struct oom_control` (where fentry loads).
    pub oc: Option<OomControl>,
    /// Direct reclaim by the trigger's memcg so far, as the kernel-side counters stood at
    /// the kill (`None`: not read).
    pub pressure: Option<Pressure>,
}

/// The victim: a task, its memory and its cgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Victim {
    /// Who.
    #[serde(flatten)]
    pub task: Task,
    /// Its memory.
    #[serde(flatten)]
    pub memory: Memory,
    /// Its memory cgroup's path from the hierarchy root (`null` if unknown).
    pub cgroup: Option<String>,
    /// Path components, leaf first (not in JSON; the domain's path is cut from them).
    #[serde(skip)]
    pub cgroup_names: Vec<String>,
    /// Kernfs ids of the cgroup and its ancestors, leaf first (not in JSON).
    #[serde(skip)]
    pub cgroup_chain: Vec<u64>,
    /// Whether the path was cut short (deeper than the BPF side records).
    #[serde(skip)]
    pub cgroup_truncated: bool,
}

fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn task(facts: &TaskFacts) -> Task {
    let has = |bit| facts.valid & bit != 0;
    Task {
        pid: has(valid::IDS).then_some(facts.tgid),
        tid: has(valid::IDS).then_some(facts.pid),
        comm: has(valid::COMM).then(|| cstr(&facts.comm)),
        uid: has(valid::UID).then_some(facts.uid),
        oom_score_adj: has(valid::OOM_SCORE_ADJ).then_some(facts.oom_score_adj),
        cgroup_id: has(valid::MEMCG).then_some(facts.memcg_id),
    }
}

fn memory(facts: &TaskFacts, page: u64) -> Memory {
    let has = |bit| facts.valid & bit != 0;
    let pages = |i: usize| facts.rss[i].max(0) as u64;
    // Saturating: a record is the kernel's, but a corrupt one must not wrap (or panic in a
    // build with overflow checks; the ring_record fuzz target found it).
    let kib = |p: u64| p.saturating_mul(page) / 1024;
    let rss = has(valid::RSS);
    Memory {
        anon_rss_kib: rss.then(|| kib(pages(RSS_ANON))),
        file_rss_kib: rss.then(|| kib(pages(RSS_FILE))),
        shmem_rss_kib: rss.then(|| kib(pages(RSS_SHMEM))),
        swap_kib: rss.then(|| kib(pages(RSS_SWAP))),
        pgtables_kib: has(valid::PGTABLES).then_some(facts.pgtables_bytes / 1024),
        total_vm_kib: has(valid::TOTAL_VM).then(|| kib(facts.total_vm)),
        raw: (rss && has(valid::PGTABLES)).then(|| RawCounters {
            rss_pages: pages(RSS_FILE)
                .saturating_add(pages(RSS_ANON))
                .saturating_add(pages(RSS_SHMEM)),
            swap_pages: pages(RSS_SWAP),
            pgtables_bytes: facts.pgtables_bytes,
        }),
    }
}

fn cgroup_path(path: &CgroupPath) -> (Option<String>, Vec<String>, Vec<u64>) {
    let depth = (path.depth as usize).min(path.names.len());
    if depth == 0 {
        return (None, Vec::new(), Vec::new());
    }
    let names: Vec<String> = path.names[..depth].iter().map(|n| cstr(n)).collect();
    let prefix = if path.truncated != 0 { "/…" } else { "" };
    let mut parts = names.clone();
    parts.reverse();
    (
        Some(format!("{prefix}/{}", parts.join("/"))),
        names,
        path.ids[..depth].to_vec(),
    )
}

fn chain(raw: &Chain) -> (Vec<Level>, Option<usize>, Option<FoundBy>) {
    let depth = (raw.depth as usize).min(raw.levels.len());
    let levels: Vec<Level> = raw.levels[..depth]
        .iter()
        .map(|l| Level {
            id: l.id,
            usage_pages: l.usage,
            max_pages: l.max,
            swap_max_pages: l.swap_max,
            failcnt: (l.flags & level::FAILCNT != 0).then_some(l.failcnt),
            events_max: (l.flags & level::EVENTS_MAX != 0).then_some(l.events_max),
            oom_lock: l.flags & level::OOM_LOCK != 0,
            oom_group: l.flags & level::OOM_GROUP != 0,
            root: l.flags & level::ROOT != 0,
            level: l.level,
        })
        .collect();
    let found = (raw.domain != domain::GLOBAL && (raw.domain as usize) < depth)
        .then_some(raw.domain as usize);
    let by = found.map(|_| match raw.domain_by {
        domain::BY_OOM_LOCK => FoundBy::OomLock,
        domain::BY_OOM_EVENTS => FoundBy::OomEvents,
        _ => FoundBy::UsageAtLimit,
    });
    (levels, found, by)
}

impl OomKill {
    /// Builds the report from a raw record; `page` is the page size in bytes.
    pub fn from_raw(raw: &OomVictim, page: u64) -> Self {
        let btf = raw.sources & source::BTF != 0;
        let tp = raw.sources & source::TRACEPOINT != 0;
        let mut mem = if btf {
            memory(&raw.victim, page)
        } else {
            Memory::default()
        };
        // The tracepoint's figures are the kernel's own kB numbers (what dmesg prints):
        // prefer them; keep the BTF ones where the tracepoint has none.
        let tp_kib = |value: u64| (tp && value != u64::MAX).then_some(value);
        if let Some(v) = tp_kib(raw.tp.anon_rss_kb) {
            mem.anon_rss_kib = Some(v);
        }
        if let Some(v) = tp_kib(raw.tp.file_rss_kb) {
            mem.file_rss_kib = Some(v);
        }
        if let Some(v) = tp_kib(raw.tp.shmem_rss_kb) {
            mem.shmem_rss_kib = Some(v);
        }
        if let Some(v) = tp_kib(raw.tp.pgtables_kb) {
            mem.pgtables_kib = Some(v);
        }
        if let Some(v) = tp_kib(raw.tp.total_vm_kb) {
            mem.total_vm_kib = Some(v);
        }
        let mut victim_task = if btf {
            task(&raw.victim)
        } else {
            Task::default()
        };
        if tp {
            let tid = raw.tp.pid as u32;
            victim_task.tid.get_or_insert(tid);
            if victim_task.oom_score_adj.is_none() && raw.tp.oom_score_adj != i16::MIN {
                victim_task.oom_score_adj = Some(raw.tp.oom_score_adj);
            }
            if victim_task.uid.is_none() && raw.tp.uid != u32::MAX {
                victim_task.uid = Some(raw.tp.uid);
            }
        }
        let (cgroup, cgroup_names, cgroup_chain) = if btf {
            cgroup_path(&raw.victim_cgroup)
        } else {
            (None, Vec::new(), Vec::new())
        };
        let (levels, domain, domain_by) = if btf {
            chain(&raw.chain)
        } else {
            (Vec::new(), None, None)
        };
        let mut sources = Vec::new();
        if btf {
            sources.push(RecordSource::TpBtf);
        }
        if tp {
            sources.push(RecordSource::Tracepoint);
        }
        Self {
            ts_ns: raw.ts_ns,
            cpu: raw.cpu,
            seq: raw.seq,
            victim: Victim {
                task: victim_task,
                memory: mem,
                cgroup,
                cgroup_names,
                cgroup_chain,
                cgroup_truncated: raw.victim_cgroup.truncated != 0,
            },
            trigger: task(&raw.trigger),
            kill_confirmed: match raw.killed {
                killed::YES => Some(true),
                killed::NO => Some(false),
                _ => None,
            },
            sources,
            chain: levels,
            domain,
            domain_by,
            group_kill: raw.group_kill != 0,
            scan: (
                raw.scan.visited,
                raw.scan.sent,
                raw.scan.dropped,
                raw.scan.truncated != 0,
            ),
            scan_ns: raw.scan.ns,
            since_reclaim_ns: raw.scan.since_reclaim_ns,
            oc: (btf && raw.oc.valid != 0).then_some(OomControl {
                constraint: raw.oc.constraint,
                totalpages: raw.oc.totalpages,
                chosen_points: raw.oc.chosen_points,
                chosen_tid: raw.oc.chosen_tid,
                order: raw.oc.order,
                gfp_mask: raw.oc.gfp_mask,
                memcg_id: raw.oc.memcg_id,
            }),
            pressure: (btf && raw.pressure_valid != 0).then_some(raw.pressure),
        }
    }

    /// Whether the victim's cgroup is the cgroup with kernfs id `id` (or below it), or,
    /// when ids are not known, whether its path is `path` or below it.
    pub fn in_cgroup(&self, id: u64, path: &str) -> bool {
        if self.victim.cgroup_chain.contains(&id) || self.chain.iter().any(|l| l.id == id) {
            return true;
        }
        match &self.victim.cgroup {
            Some(victim) => {
                path == "/"
                    || victim == path
                    || victim
                        .strip_prefix(path)
                        .is_some_and(|rest| rest.starts_with('/'))
            }
            None => false,
        }
    }

    /// The OOM domain's kernel id: `Some(Some(id))` for a memcg OOM, `Some(None)` for a
    /// global one, `None` when the record cannot tell (without the BTF program).
    pub fn domain_id(&self) -> Option<Option<u64>> {
        if let Some(oc) = &self.oc
            && oc.memcg_id != 0
        {
            return Some(Some(oc.memcg_id));
        }
        if self.chain.is_empty() {
            return None;
        }
        Some(self.domain.and_then(|i| self.chain.get(i)).map(|l| l.id))
    }

    /// The cgroup path of chain level `index` (0: the victim's own cgroup), cut from the
    /// victim's path.
    pub fn path_of_level(&self, index: usize) -> Option<String> {
        let names = &self.victim.cgroup_names;
        if self.victim.cgroup_truncated || index > names.len() {
            return None;
        }
        let mut parts: Vec<&str> = names[index..].iter().map(String::as_str).collect();
        parts.reverse();
        Some(format!("/{}", parts.join("/")))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use memstress_ebpf::{
        CGROUP_DEPTH, CGROUP_NAME_LEN, CHAIN_DEPTH, MemcgLevel, OomControlFacts, ScanStats,
        TracepointVictim,
    };

    use super::*;

    fn name(s: &str) -> [u8; CGROUP_NAME_LEN] {
        let mut out = [0; CGROUP_NAME_LEN];
        out[..s.len()].copy_from_slice(s.as_bytes());
        out
    }

    pub(crate) fn comm(s: &str) -> [u8; 16] {
        let mut out = [0; 16];
        out[..s.len()].copy_from_slice(s.as_bytes());
        out
    }

    pub(crate) fn facts(pid: u32, name: &str, adj: i16, anon_pages: i64) -> TaskFacts {
        TaskFacts {
            pid,
            tgid: pid,
            comm: comm(name),
            uid: 0,
            oom_score_adj: adj,
            _pad: 0,
            flags: 0,
            valid: valid::IDS
                | valid::COMM
                | valid::UID
                | valid::OOM_SCORE_ADJ
                | valid::RSS
                | valid::PGTABLES
                | valid::TOTAL_VM
                | valid::MEMCG,
            rss: [10, anon_pages, 0, 2],
            pgtables_bytes: 65536,
            total_vm: 20_000,
            memcg_id: 77,
            kernel_points: 0,
        }
    }

    /// A record as the BPF side writes it for a stress-ng worker killed in /pod/ctr, whose
    /// parent /pod (limit 16384 pages) hit its limit.
    pub(crate) fn sample_raw() -> OomVictim {
        let victim = facts(4211, "stress-ng-vm", 1000, 15_000);
        let mut names = [[0; CGROUP_NAME_LEN]; CGROUP_DEPTH];
        names[0] = name("ctr");
        names[1] = name("pod");
        let mut ids = [0; CGROUP_DEPTH];
        ids[0] = 77;
        ids[1] = 70;
        let mut levels = [MemcgLevel::default(); CHAIN_DEPTH];
        let unlimited = 1 << 51;
        levels[0] = MemcgLevel {
            id: 77,
            usage: 16_000,
            max: unlimited,
            swap_max: unlimited,
            flags: level::VALID | level::OOM_LOCK,
            level: 2,
            ..MemcgLevel::default()
        };
        levels[1] = MemcgLevel {
            id: 70,
            usage: 16_380,
            max: 16_384,
            swap_max: unlimited,
            flags: level::VALID | level::OOM_LOCK | level::FAILCNT,
            level: 1,
            failcnt: 312,
            ..MemcgLevel::default()
        };
        levels[2] = MemcgLevel {
            id: 1,
            usage: 900_000,
            max: unlimited,
            swap_max: unlimited,
            flags: level::VALID | level::ROOT,
            level: 0,
            ..MemcgLevel::default()
        };
        OomVictim {
            kind: kind::OOM_VICTIM,
            cpu: 1,
            ts_ns: 123,
            sources: source::BTF | source::TRACEPOINT,
            killed: killed::YES,
            victim,
            trigger: facts(4190, "node", 0, 100),
            victim_cgroup: CgroupPath {
                depth: 2,
                truncated: 0,
                ids,
                names,
            },
            tp: TracepointVictim {
                pid: 4211,
                uid: 0,
                total_vm_kb: 80_000,
                anon_rss_kb: 60_000,
                file_rss_kb: 40,
                shmem_rss_kb: 8,
                pgtables_kb: 64,
                oom_score_adj: 1000,
                _pad: [0; 6],
            },
            seq: 5 << 10,
            group_kill: 0,
            pressure_valid: 1,
            pressure: Pressure {
                runs: 40,
                reclaimed: 512,
                ns: 12_000_000,
                asked: 0,
            },
            chain: Chain {
                depth: 3,
                domain: 1,
                domain_by: domain::BY_OOM_LOCK,
                _pad: 0,
                levels,
            },
            scan: ScanStats {
                visited: 40,
                sent: 3,
                dropped: 0,
                truncated: 0,
                ns: 41_000,
                since_reclaim_ns: 820_000,
            },
            oc: OomControlFacts::default(),
        }
    }

    fn bytes_of<T>(value: &T) -> &[u8] {
        // SAFETY: viewing a plain-old-data struct as bytes.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
    }

    /// The domain found by its OOM-event count (its v1 lock and usage gone by the kill) is
    /// reported as such.
    #[test]
    fn a_domain_found_by_its_oom_events_says_so() {
        let mut raw = sample_raw();
        raw.chain.domain_by = domain::BY_OOM_EVENTS;
        let kill = OomKill::from_raw(&raw, 4096);
        assert_eq!(kill.domain, Some(1));
        assert_eq!(kill.domain_by, Some(FoundBy::OomEvents));
    }

    #[test]
    fn decodes_a_joined_record() {
        let raw = sample_raw();
        let Ok(Record::Victim(kill)) = decode(bytes_of(&raw)) else {
            panic!("not a victim record");
        };
        assert_eq!(kill.victim.task.pid, Some(4211));
        assert_eq!(kill.victim.task.comm.as_deref(), Some("stress-ng-vm"));
        assert_eq!(kill.victim.cgroup.as_deref(), Some("/pod/ctr"));
        // The tracepoint's kB figures win over pages × 4 KiB from the BTF counters.
        assert_eq!(kill.victim.memory.anon_rss_kib, Some(60_000));
        assert_eq!(kill.victim.memory.swap_kib, Some(0));
        assert_eq!(
            kill.victim.memory.raw.unwrap().rss_pages,
            10 + 15_000 + 2,
            "points use the kernel's page counters"
        );
        assert_eq!(kill.trigger.comm.as_deref(), Some("node"));
        assert_eq!(kill.kill_confirmed, Some(true));
        assert_eq!(
            kill.sources,
            [RecordSource::TpBtf, RecordSource::Tracepoint]
        );
        assert_eq!(kill.domain, Some(1));
        assert_eq!(kill.domain_by, Some(FoundBy::OomLock));
        assert_eq!(kill.path_of_level(1).as_deref(), Some("/pod"));
        assert_eq!(kill.path_of_level(2).as_deref(), Some("/"));
        assert_eq!(kill.chain[1].max_pages, 16_384);
        assert!(kill.in_cgroup(70, "/x"));
        assert!(kill.in_cgroup(1, "/pod"));
        assert!(!kill.in_cgroup(2, "/po"));
        assert!(decode(&bytes_of(&raw)[..10]).is_err());
    }

    #[test]
    fn decodes_candidates_collateral_and_aftermath() {
        let c = memstress_ebpf::Candidate {
            kind: kind::CANDIDATE,
            skip: skip::ADJ_MIN,
            seq: 9,
            task: facts(7, "db", -1000, 500),
        };
        let Ok(Record::Candidate(c)) = decode(bytes_of(&c)) else {
            panic!("not a candidate");
        };
        assert_eq!(c.skip_reason(), Some(SkipReason::AdjMin));
        assert_eq!(c.task.comm.as_deref(), Some("db"));
        let a = RawAftermath {
            kind: kind::AFTERMATH,
            what: aftermath::REAP_FINISH,
            ts_ns: 5,
            tid: 7,
            _pad: 0,
            seq: 9,
        };
        let Ok(Record::Aftermath(a)) = decode(bytes_of(&a)) else {
            panic!("not an aftermath");
        };
        assert_eq!(a.what, Aftermath::ReaperFinished);
        let col = Collateral {
            kind: kind::COLLATERAL,
            reason: 1,
            seq: 9,
            ts_ns: 1,
            victim_tid: 7,
            _pad: 0,
            task: facts(8, "child", 0, 1),
        };
        let Ok(Record::Collateral(col)) = decode(bytes_of(&col)) else {
            panic!("not collateral");
        };
        assert_eq!(col.task.pid, Some(8));
        assert!(matches!(decode(&[9, 0, 0, 0]), Err(DecodeError::Kind(9))));
    }

    #[test]
    fn unknown_fields_stay_null() {
        let mut raw = sample_raw();
        raw.sources = source::BTF;
        raw.victim.valid = valid::IDS | valid::COMM;
        raw.killed = killed::UNCONFIRMED;
        let kill = OomKill::from_raw(&raw, 4096);
        assert_eq!(kill.victim.memory.anon_rss_kib, None);
        assert_eq!(kill.victim.memory.raw, None);
        assert_eq!(kill.victim.task.oom_score_adj, None);
        assert_eq!(kill.kill_confirmed, None);
        let json = serde_json::to_value(&kill.victim).unwrap();
        assert!(json["anon_rss_kib"].is_null());
        assert_eq!(json["pid"], 4211);
    }
}
