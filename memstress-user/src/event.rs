//! Records from the BPF ring buffer, decoded into the events memstress reports.
//!
//! The JSON form of every event is documented in docs/events.md; fields are only ever added.
//! A figure the kernel did not give (a BTF member this kernel lacks, a probe that did not
//! attach) is `null`, never a guess.

use std::{mem::size_of, ptr};

use memstress_ebpf::{
    CgroupPath, OomVictim, RSS_ANON, RSS_FILE, RSS_SHMEM, RSS_SWAP, TaskFacts, killed, kind,
    source, valid,
};
use serde::Serialize;

/// Page size the kernel counts RSS in.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
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
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    if bytes.len() < 4 {
        return Err(DecodeError::Short(bytes.len()));
    }
    let kind = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    match kind {
        kind::OOM_VICTIM => {
            if bytes.len() < size_of::<OomVictim>() {
                return Err(DecodeError::Short(bytes.len()));
            }
            // SAFETY: the buffer holds at least size_of::<OomVictim>() bytes written by the
            // BPF program from the same type; every bit pattern is a valid OomVictim (only
            // integers), and read_unaligned copes with any alignment.
            let raw = unsafe { ptr::read_unaligned(bytes.as_ptr().cast::<OomVictim>()) };
            Ok(Record::Victim(Box::new(OomKill::from_raw(
                &raw,
                page_size(),
            ))))
        }
        other => Err(DecodeError::Kind(other)),
    }
}

/// A process as the report shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
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
    pub oom_score_adj: Option<i16>,
    /// Kernfs id of its memory cgroup.
    pub cgroup_id: Option<u64>,
}

/// A victim's memory as the kernel counted it when it was chosen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
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
}

/// One OOM victim as `mark_victim` reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OomKill {
    /// CLOCK_MONOTONIC nanoseconds at `mark_victim`.
    pub ts_ns: u64,
    /// CPU the OOM killer ran on.
    pub cpu: u32,
    /// The victim.
    pub victim: Victim,
    /// The task whose allocation started the OOM (the OOM killer runs in its context).
    pub trigger: Task,
    /// `true`: the OOM killer SIGKILLed it; `false`: it was only marked, being already
    /// exiting; `null`: the signal probe is not attached, so this cannot be told.
    pub kill_confirmed: Option<bool>,
    /// Which programs contributed: `tp_btf` and/or `tracepoint`.
    pub sources: Vec<&'static str>,
}

/// The victim: a task, its memory and its cgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Victim {
    /// Who.
    #[serde(flatten)]
    pub task: Task,
    /// Its memory.
    #[serde(flatten)]
    pub memory: Memory,
    /// Its memory cgroup's path from the hierarchy root (`null` if unknown).
    pub cgroup: Option<String>,
    /// Kernfs ids of the cgroup and its ancestors, leaf first (not in JSON).
    #[serde(skip)]
    pub cgroup_chain: Vec<u64>,
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

fn cgroup_path(path: &CgroupPath) -> (Option<String>, Vec<u64>) {
    let depth = (path.depth as usize).min(path.names.len());
    if depth == 0 {
        return (None, Vec::new());
    }
    let mut parts: Vec<String> = path.names[..depth].iter().map(|n| cstr(n)).collect();
    parts.reverse();
    let prefix = if path.truncated != 0 { "/…" } else { "" };
    (
        Some(format!("{prefix}/{}", parts.join("/"))),
        path.ids[..depth].to_vec(),
    )
}

impl OomKill {
    /// Builds the report from a raw record; `page` is the page size in bytes.
    pub fn from_raw(raw: &OomVictim, page: u64) -> Self {
        let btf = raw.sources & source::BTF != 0;
        let tp = raw.sources & source::TRACEPOINT != 0;
        let v = &raw.victim;
        let kib = |pages: i64| (pages.max(0) as u64) * page / 1024;
        let has_rss = btf && v.valid & valid::RSS != 0;
        // The tracepoint's figures are the kernel's own kB numbers (what dmesg prints): prefer
        // them; fall back to the counters the BTF program read.
        let tp_kib = |value: u64| (tp && value != u64::MAX).then_some(value);
        let memory = Memory {
            anon_rss_kib: tp_kib(raw.tp.anon_rss_kb).or(has_rss.then(|| kib(v.rss[RSS_ANON]))),
            file_rss_kib: tp_kib(raw.tp.file_rss_kb).or(has_rss.then(|| kib(v.rss[RSS_FILE]))),
            shmem_rss_kib: tp_kib(raw.tp.shmem_rss_kb).or(has_rss.then(|| kib(v.rss[RSS_SHMEM]))),
            swap_kib: has_rss.then(|| kib(v.rss[RSS_SWAP])),
            pgtables_kib: tp_kib(raw.tp.pgtables_kb)
                .or((btf && v.valid & valid::PGTABLES != 0).then_some(v.pgtables_bytes / 1024)),
            total_vm_kib: tp_kib(raw.tp.total_vm_kb)
                .or((btf && v.valid & valid::TOTAL_VM != 0).then(|| v.total_vm * page / 1024)),
        };
        let mut victim_task = if btf { task(v) } else { Task::default() };
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
        let (cgroup, cgroup_chain) = if btf {
            cgroup_path(&raw.victim_cgroup)
        } else {
            (None, Vec::new())
        };
        let mut sources = Vec::new();
        if btf {
            sources.push("tp_btf");
        }
        if tp {
            sources.push("tracepoint");
        }
        Self {
            ts_ns: raw.ts_ns,
            cpu: raw.cpu,
            victim: Victim {
                task: victim_task,
                memory,
                cgroup,
                cgroup_chain,
            },
            trigger: task(&raw.trigger),
            kill_confirmed: match raw.killed {
                killed::YES => Some(true),
                killed::NO => Some(false),
                _ => None,
            },
            sources,
        }
    }

    /// Whether the victim's cgroup is the cgroup with kernfs id `id` (or below it), or,
    /// when ids are not known, whether its path is `path` or below it.
    pub fn in_cgroup(&self, id: u64, path: &str) -> bool {
        if self.victim.cgroup_chain.contains(&id) {
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
}

#[cfg(test)]
pub(crate) mod tests {
    use memstress_ebpf::{CGROUP_DEPTH, CGROUP_NAME_LEN, TracepointVictim};

    use super::*;

    fn name(s: &str) -> [u8; CGROUP_NAME_LEN] {
        let mut out = [0; CGROUP_NAME_LEN];
        out[..s.len()].copy_from_slice(s.as_bytes());
        out
    }

    fn comm(s: &str) -> [u8; 16] {
        let mut out = [0; 16];
        out[..s.len()].copy_from_slice(s.as_bytes());
        out
    }

    /// A record as the BPF side writes it for a stress-ng worker killed in /pod/ctr.
    pub(crate) fn sample_raw() -> OomVictim {
        let facts = TaskFacts {
            pid: 4211,
            tgid: 4211,
            comm: comm("stress-ng-vm"),
            uid: 0,
            oom_score_adj: 1000,
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
            rss: [10, 15_000, 0, 2],
            pgtables_bytes: 65536,
            total_vm: 20_000,
            memcg_id: 77,
        };
        let mut names = [[0; CGROUP_NAME_LEN]; CGROUP_DEPTH];
        names[0] = name("ctr");
        names[1] = name("pod");
        let mut ids = [0; CGROUP_DEPTH];
        ids[0] = 77;
        ids[1] = 70;
        OomVictim {
            kind: kind::OOM_VICTIM,
            cpu: 1,
            ts_ns: 123,
            sources: source::BTF | source::TRACEPOINT,
            killed: killed::YES,
            victim: facts,
            trigger: TaskFacts {
                pid: 4190,
                tgid: 4190,
                comm: comm("node"),
                ..facts
            },
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
        }
    }

    #[test]
    fn decodes_a_joined_record() {
        let raw = sample_raw();
        // SAFETY: viewing a plain-old-data struct as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw as *const OomVictim).cast::<u8>(),
                size_of::<OomVictim>(),
            )
        };
        let Record::Victim(kill) = decode(bytes).unwrap();
        assert_eq!(kill.victim.task.pid, Some(4211));
        assert_eq!(kill.victim.task.comm.as_deref(), Some("stress-ng-vm"));
        assert_eq!(kill.victim.cgroup.as_deref(), Some("/pod/ctr"));
        // The tracepoint's kB figures win over pages × 4 KiB from the BTF counters.
        assert_eq!(kill.victim.memory.anon_rss_kib, Some(60_000));
        assert_eq!(kill.victim.memory.swap_kib, Some(0));
        assert_eq!(kill.trigger.comm.as_deref(), Some("node"));
        assert_eq!(kill.kill_confirmed, Some(true));
        assert_eq!(kill.sources, ["tp_btf", "tracepoint"]);
        assert!(kill.in_cgroup(70, "/x"));
        assert!(kill.in_cgroup(1, "/pod"));
        assert!(!kill.in_cgroup(1, "/po"));
        assert!(decode(&bytes[..10]).is_err());
    }

    #[test]
    fn unknown_fields_stay_null() {
        let mut raw = sample_raw();
        raw.sources = source::BTF;
        raw.victim.valid = valid::IDS | valid::COMM;
        raw.killed = killed::UNCONFIRMED;
        let kill = OomKill::from_raw(&raw, 4096);
        assert_eq!(kill.victim.memory.anon_rss_kib, None);
        assert_eq!(kill.victim.task.oom_score_adj, None);
        assert_eq!(kill.kill_confirmed, None);
        let json = serde_json::to_value(&kill).unwrap();
        assert!(json["victim"]["anon_rss_kib"].is_null());
        assert_eq!(json["victim"]["pid"], 4211);
    }
}
