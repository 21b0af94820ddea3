//! Kills that were not the OOM killer's: who sent a SIGKILL (or a SIGTERM the process then
//! exited on), and what that sender is.
//!
//! Enters: [`Signalled`] records (every SIGKILL `signal_generate` saw delivered, every SIGTERM
//! followed by an exit), and the tasks the OOM killer took ([`Kills::note_oom`]). Leaves:
//! [`KillReport`]s, the `kill` line's payload.
//!
//! Telling the OOM killer's SIGKILLs apart: `__oom_kill_process()` sends its SIGKILL with
//! `SEND_SIG_PRIV`, from the task that ran into the limit, a few microseconds *before*
//! `mark_victim` fires; `kill(2)`, `tgkill(2)` and `pidfd_send_signal(2)` never use
//! `SEND_SIG_PRIV`. So a SIGKILL without it is reported at once, and one with it is held for
//! [`PRIV_HOLD_NS`] and dropped if an OOM record (a victim, a `memory.oom.group` member, a
//! process killed with a victim) names the same task by then: an OOM kill is reported as
//! `oom_kill` only, never twice.

use std::collections::HashMap;

use memstress_ebpf::{pf, signal};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    Scope,
    record::{Signalled, Task},
    who,
};
use crate::target::workload::Workload;

/// How long a SIGKILL the kernel sent itself (`SEND_SIG_PRIV`) is held before it is reported,
/// waiting for the OOM record that would make it an OOM kill. That record is written by the
/// same task microseconds after the SIGKILL (the victim is marked right after it is
/// signalled), so 200 ms leaves room for a reader that is late to wake, and delays a kernel
/// kill's line by no more than that.
pub const PRIV_HOLD_NS: u64 = 200_000_000;

/// OOM-killed tasks are remembered this long, for kernel SIGKILLs read after their OOM record.
const OOM_MEMORY_NS: u64 = 2 * PRIV_HOLD_NS;

/// Held kernel SIGKILLs (and remembered OOM victims) kept at most: a kill storm cannot grow
/// the explainer without bound.
const MAX_HELD: usize = 4096;

/// The signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SignalName {
    /// SIGKILL.
    #[serde(rename = "SIGKILL")]
    Sigkill,
    /// SIGTERM (reported once the process exited).
    #[serde(rename = "SIGTERM")]
    Sigterm,
}

impl SignalName {
    /// `SIGKILL`, `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sigkill => "SIGKILL",
            Self::Sigterm => "SIGTERM",
        }
    }
}

/// Who sent a signal, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KilledBy {
    /// A container runtime or its helpers (runc, crun, containerd, a containerd shim, conmon,
    /// dockerd, docker-init, CRI-O, …): a container stop, kill or restart.
    ContainerRuntime,
    /// The kubelet: a pod deleted or evicted, or a liveness probe that failed.
    Kubelet,
    /// The OOM killer (never printed as a `kill` line: those are `oom_kill` lines).
    OomKiller,
    /// The kernel itself: a signal sent with `SEND_SIG_PRIV`, from a kernel thread, or the
    /// teardown of a PID namespace whose init exited.
    Kernel,
    /// Any other process (`kill(2)` and its kin: a user, a script, a supervisor).
    Process,
}

impl KilledBy {
    /// Every value, for metrics and tests.
    pub const ALL: [Self; 5] = [
        Self::ContainerRuntime,
        Self::Kubelet,
        Self::OomKiller,
        Self::Kernel,
        Self::Process,
    ];

    /// `container_runtime`, `kubelet`, …
    pub fn name(self) -> &'static str {
        match self {
            Self::ContainerRuntime => "container_runtime",
            Self::Kubelet => "kubelet",
            Self::OomKiller => "oom_killer",
            Self::Kernel => "kernel",
            Self::Process => "process",
        }
    }
}

/// Container runtimes and their helpers, by `comm` (at most 15 characters: the kernel cuts
/// longer names, `containerd-shim-runc-v2` reads `containerd-shim`).
const RUNTIMES: [&str; 14] = [
    "runc",
    "crun",
    "youki",
    "runsc",
    "containerd",
    "containerd-shim",
    "conmon",
    "dockerd",
    "docker-init",
    "docker",
    "crio",
    "cri-o",
    "podman",
    "kata-agent",
];

/// … and name prefixes (`runc:[2:INIT]`, `containerd-shim-…`, `runsc-gofer`).
const RUNTIME_PREFIXES: [&str; 4] = ["runc:", "containerd-shim", "runsc-", "kata-"];

/// What a sender's `comm` says it is: a container runtime, the kubelet, or another process.
/// Only the name counts (this is what the kernel gives in the signal's context).
pub fn by_comm(comm: &str) -> KilledBy {
    if comm == "kubelet" {
        KilledBy::Kubelet
    } else if RUNTIMES.contains(&comm) || RUNTIME_PREFIXES.iter().any(|p| comm.starts_with(p)) {
        KilledBy::ContainerRuntime
    } else {
        KilledBy::Process
    }
}

/// Why the kernel sent a signal itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelWhy {
    /// The sender is a kernel thread.
    Thread,
    /// `SEND_SIG_PRIV` from an exiting task: the init of a PID namespace exited, and
    /// `zap_pid_ns_processes()` kills everything left in the namespace.
    PidNamespace,
    /// `SEND_SIG_PRIV` otherwise.
    Other,
}

/// Classifies a sender: by its flags and the signal's `SEND_SIG_PRIV` (the kernel), else by
/// its comm ([`by_comm`]).
pub fn classify(
    comm: Option<&str>,
    flags: Option<u32>,
    privileged: bool,
) -> (KilledBy, Option<KernelWhy>) {
    let flags = flags.unwrap_or(0);
    if flags & pf::KTHREAD != 0 {
        return (KilledBy::Kernel, Some(KernelWhy::Thread));
    }
    if privileged {
        let why = if flags & pf::EXITING != 0 {
            KernelWhy::PidNamespace
        } else {
            KernelWhy::Other
        };
        return (KilledBy::Kernel, Some(why));
    }
    (comm.map_or(KilledBy::Process, by_comm), None)
}

/// The killed process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KillVictim {
    /// Who.
    #[serde(flatten)]
    pub task: Task,
    /// Its memory cgroup's path from the hierarchy root (`null` if unknown).
    pub cgroup: Option<String>,
    /// Its container and pod.
    #[serde(flatten, default)]
    pub workload: Workload,
}

/// The task in whose context the signal was sent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KillSender {
    /// Process id (tgid).
    pub pid: Option<u32>,
    /// Thread id.
    pub tid: Option<u32>,
    /// Command name (`comm`).
    pub comm: Option<String>,
    /// Real uid.
    pub uid: Option<u32>,
    /// Its memory cgroup's path from the hierarchy root (`null` if unknown).
    pub cgroup: Option<String>,
    /// Its container and pod (a runtime's own processes are in none).
    #[serde(flatten, default)]
    pub workload: Workload,
}

/// A SIGKILL that was not the OOM killer's, or a SIGTERM the process exited after.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KillReport {
    /// CLOCK_MONOTONIC ns of the signal.
    pub ts_ns: u64,
    /// `SIGKILL` or `SIGTERM`.
    pub signal: SignalName,
    /// The process it was sent to.
    pub victim: KillVictim,
    /// Who sent it.
    pub sender: KillSender,
    /// What the sender is.
    pub by: KilledBy,
    /// One sentence.
    pub why: String,
    /// SIGTERM: how long after the signal the process exited (`null` for a SIGKILL).
    pub exited_after_ms: Option<f64>,
    /// SIGTERM: how it exited (`signal 15 (SIGTERM)`, `exit code 0`, …; `null` if unknown).
    pub exit: Option<String>,
    /// SIGKILL: how long after a SIGTERM to the same process it came (a stop whose grace
    /// period ran out; `null`: none seen).
    pub after_sigterm_ms: Option<f64>,
}

/// `exit code N`, `signal N (NAME)`, as `task_struct.exit_code` says.
fn exit_text(code: u32) -> String {
    let signo = code & 0x7f;
    if signo == 0 {
        return format!("exit code {}", (code >> 8) & 0xff);
    }
    let name = match signo {
        signal::SIGKILL => " (SIGKILL)",
        signal::SIGTERM => " (SIGTERM)",
        2 => " (SIGINT)",
        1 => " (SIGHUP)",
        _ => "",
    };
    format!("signal {signo}{name}")
}

fn ms(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64 / 1e6
}

impl KillReport {
    /// The report of one record.
    pub fn from_record(s: &Signalled) -> Self {
        let signal = if s.signal == signal::SIGTERM {
            SignalName::Sigterm
        } else {
            SignalName::Sigkill
        };
        let (by, kernel) = classify(s.sender.comm.as_deref(), s.sender_flags, s.privileged);
        let sender = KillSender {
            pid: s.sender.pid,
            tid: s.sender.tid,
            comm: s.sender.comm.clone(),
            uid: s.sender.uid,
            cgroup: s.sender_cgroup.clone(),
            workload: Workload::default(),
        };
        let mut report = Self {
            ts_ns: s.ts_ns,
            signal,
            victim: KillVictim {
                task: s.victim.clone(),
                cgroup: s.victim_cgroup.clone(),
                workload: Workload::default(),
            },
            sender,
            by,
            why: String::new(),
            exited_after_ms: s.exit_ns.map(|e| ms(s.ts_ns, e)),
            exit: s.exit_code.map(exit_text),
            after_sigterm_ms: s.term_ns.map(|t| ms(t, s.ts_ns)),
        };
        report.why = report.sentence(kernel);
        report
    }

    /// "killed 4211 (sleep): SIGKILL from sh (pid 99), not the OOM killer".
    fn sentence(&self, kernel: Option<KernelWhy>) -> String {
        let sig = self.signal.name();
        let sender = &self.sender;
        let comm = sender.comm.as_deref().unwrap_or("an unknown task");
        let named = match sender.pid {
            Some(pid) => format!("{comm} (pid {pid})"),
            None => comm.to_owned(),
        };
        let from = match (self.by, kernel) {
            (KilledBy::Kernel, Some(KernelWhy::Thread)) => {
                format!("{sig} from kernel thread {comm}")
            }
            (KilledBy::Kernel, Some(KernelWhy::PidNamespace)) => format!(
                "{sig} from the kernel: {named}, the init of its PID namespace, exited, and \
                 the kernel kills every process left in the namespace"
            ),
            (KilledBy::Kernel, _) => format!("{sig} from the kernel (in the context of {named})"),
            (KilledBy::ContainerRuntime, _) => {
                format!("{sig} from {named} (container stop or restart)")
            }
            (KilledBy::Kubelet, _) => {
                format!("{sig} from {named} (pod deletion or eviction, or a failed liveness probe)")
            }
            (KilledBy::OomKiller | KilledBy::Process, _) => format!("{sig} from {named}"),
        };
        let victim = who(
            self.victim.task.pid.or(self.victim.task.tid),
            self.victim.task.comm.as_deref(),
        );
        match self.signal {
            SignalName::Sigterm => {
                let after = self
                    .exited_after_ms
                    .map_or_else(String::new, |ms| format!(" {ms:.0} ms"));
                let how = match self.exit.as_deref() {
                    Some(e) if e.starts_with("exit code") => {
                        format!(": it handled the signal and exited ({e})")
                    }
                    Some(e) => format!(": {e}"),
                    None => String::new(),
                };
                format!("{victim} exited{after} after a {from}{how}")
            }
            SignalName::Sigkill => {
                let grace = self.after_sigterm_ms.map_or_else(String::new, |ms| {
                    format!(", {ms:.0} ms after a SIGTERM (its grace period ran out)")
                });
                format!("killed {victim}: {from}{grace}, not the OOM killer")
            }
        }
    }
}

/// Joins signal records with the OOM kills: reports the others, each once.
#[derive(Debug, Default)]
pub struct Kills {
    /// Signals sent by this process (a run stopping its own stressors) are not news.
    own_pid: Option<u32>,
    /// Kernel SIGKILLs waiting for [`PRIV_HOLD_NS`] (an OOM record may claim them).
    held: Vec<Signalled>,
    /// Tasks the OOM killer took lately: tid or pid -> when.
    oom: HashMap<u32, u64>,
}

impl Kills {
    /// A tracker that leaves out signals sent by process `own_pid` (memstress itself).
    pub fn new(own_pid: Option<u32>) -> Self {
        Self {
            own_pid,
            ..Self::default()
        }
    }

    /// The OOM killer took this task (a victim, or a process killed with one).
    pub fn note_oom(&mut self, task: &Task, ts_ns: u64) {
        if self.oom.len() >= MAX_HELD {
            let newest = self.oom.values().copied().max().unwrap_or(0);
            self.oom
                .retain(|_, t| newest.saturating_sub(*t) <= OOM_MEMORY_NS);
            if self.oom.len() >= MAX_HELD {
                self.oom.clear();
            }
        }
        for id in [task.tid, task.pid].into_iter().flatten() {
            self.oom.insert(id, ts_ns);
        }
        // A held kernel SIGKILL of that task was the OOM killer's.
        self.held.retain(|s| !claims(task, &s.victim));
    }

    /// Takes one record: `Some` to report now (a SIGTERM's exit, a SIGKILL from userspace),
    /// `None` when left out (not in `scope`, sent by memstress itself, an OOM kill) or held.
    pub fn admit(&mut self, s: Signalled, scope: Option<&Scope>) -> Option<KillReport> {
        if s.sender.pid.is_some() && s.sender.pid == self.own_pid {
            return None;
        }
        if let Some(scope) = scope {
            let (id, path) = scope.cgroup();
            if !s.in_cgroup(id, path) {
                return None;
            }
        }
        if s.signal == signal::SIGKILL && s.privileged {
            if self.is_oom(&s) {
                return None;
            }
            if self.held.len() >= MAX_HELD {
                // Release the oldest rather than lose it.
                tracing::debug!("too many kernel SIGKILLs held; releasing the oldest");
                self.held.remove(0);
            }
            self.held.push(s);
            return None;
        }
        Some(KillReport::from_record(&s))
    }

    fn is_oom(&self, s: &Signalled) -> bool {
        [s.victim.tid, s.victim.pid]
            .into_iter()
            .flatten()
            .any(|id| {
                self.oom
                    .get(&id)
                    .is_some_and(|&t| t.abs_diff(s.ts_ns) <= OOM_MEMORY_NS)
            })
    }

    /// When the next held SIGKILL is due (CLOCK_MONOTONIC ns).
    pub fn deadline(&self) -> Option<u64> {
        self.held.iter().map(|s| s.ts_ns + PRIV_HOLD_NS).min()
    }

    /// The held SIGKILLs due at `now_ns` (CLOCK_MONOTONIC), reported: no OOM record claimed
    /// them.
    pub fn release(&mut self, now_ns: u64) -> Vec<KillReport> {
        let (due, held): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|s| s.ts_ns + PRIV_HOLD_NS <= now_ns);
        self.held = held;
        self.oom
            .retain(|_, t| now_ns.saturating_sub(*t) <= OOM_MEMORY_NS);
        due.iter()
            .filter(|s| !self.is_oom(s))
            .map(KillReport::from_record)
            .collect()
    }
}

/// Whether an OOM record for `oom` names the task `victim`.
fn claims(oom: &Task, victim: &Task) -> bool {
    (oom.tid.is_some() && oom.tid == victim.tid) || (oom.pid.is_some() && oom.pid == victim.pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_are_classified_by_comm() {
        for comm in [
            "runc",
            "runc:[2:INIT]",
            "crun",
            "containerd",
            "containerd-shim",
            "conmon",
            "dockerd",
            "docker-init",
            "crio",
        ] {
            assert_eq!(by_comm(comm), KilledBy::ContainerRuntime, "{comm}");
        }
        assert_eq!(by_comm("kubelet"), KilledBy::Kubelet);
        for comm in [
            "sh", "kill", "bash", "systemd", "runcible", "kubectl", "crond",
        ] {
            assert_eq!(by_comm(comm), KilledBy::Process, "{comm}");
        }
    }

    #[test]
    fn the_kernel_is_told_by_flags_and_priv() {
        assert_eq!(
            classify(Some("kworker/0:1"), Some(pf::KTHREAD), false),
            (KilledBy::Kernel, Some(KernelWhy::Thread))
        );
        assert_eq!(
            classify(Some("sh"), Some(pf::EXITING), true),
            (KilledBy::Kernel, Some(KernelWhy::PidNamespace))
        );
        assert_eq!(
            classify(Some("runc"), Some(0), true),
            (KilledBy::Kernel, Some(KernelWhy::Other))
        );
        // Exiting, but sent through kill(2): the process's own doing.
        assert_eq!(
            classify(Some("runc"), Some(pf::EXITING), false),
            (KilledBy::ContainerRuntime, None)
        );
        assert_eq!(classify(None, None, false), (KilledBy::Process, None));
    }

    pub(crate) fn signalled(signo: u32, victim: u32, sender: (u32, &str), ts_ns: u64) -> Signalled {
        let task = |pid: u32, comm: &str| Task {
            pid: Some(pid),
            tid: Some(pid),
            comm: Some(comm.to_owned()),
            uid: Some(0),
            oom_score_adj: Some(0),
            cgroup_id: Some(77),
        };
        Signalled {
            ts_ns,
            signal: signo,
            privileged: false,
            sender: task(sender.0, sender.1),
            sender_flags: Some(0),
            sender_cgroup: Some("/".to_owned()),
            victim: task(victim, "sleep"),
            victim_cgroup: Some("/pod/ctr".to_owned()),
            victim_cgroup_chain: vec![77, 70],
            exit_ns: None,
            exit_code: None,
            term_ns: None,
        }
    }

    #[test]
    fn a_userspace_sigkill_is_reported_at_once() {
        let mut kills = Kills::new(Some(1));
        let r = kills
            .admit(signalled(9, 40, (30, "runc"), 1_000), None)
            .expect("reported");
        assert_eq!(r.by, KilledBy::ContainerRuntime);
        assert_eq!(r.signal, SignalName::Sigkill);
        assert_eq!(
            r.why,
            "killed 40 (sleep): SIGKILL from runc (pid 30) (container stop or restart), not \
             the OOM killer"
        );
        assert_eq!(r.victim.cgroup.as_deref(), Some("/pod/ctr"));
        // memstress's own kills are not news.
        assert!(
            kills
                .admit(signalled(9, 40, (1, "memstress"), 1_000), None)
                .is_none()
        );
    }

    #[test]
    fn the_oom_killers_sigkill_is_never_a_kill_line() {
        let mut kills = Kills::new(None);
        let mut oom = signalled(9, 40, (41, "stress-ng-vm"), 1_000);
        oom.privileged = true;
        let mut teardown = signalled(9, 50, (49, "sh"), 2_000);
        teardown.privileged = true;
        teardown.sender_flags = Some(pf::EXITING);
        assert!(kills.admit(oom.clone(), None).is_none());
        assert!(kills.admit(teardown, None).is_none());
        assert_eq!(kills.deadline(), Some(1_000 + PRIV_HOLD_NS));
        assert!(kills.release(1_000 + PRIV_HOLD_NS - 1).is_empty());
        // mark_victim's record arrives: the first SIGKILL was the OOM killer's.
        kills.note_oom(&oom.victim, 1_010);
        let released = kills.release(2_000 + PRIV_HOLD_NS);
        assert_eq!(released.len(), 1, "{released:?}");
        assert_eq!(released[0].by, KilledBy::Kernel);
        assert_eq!(released[0].victim.task.pid, Some(50));
        assert!(
            released[0].why.contains("the init of its PID namespace"),
            "{}",
            released[0].why
        );
        assert_eq!(kills.deadline(), None);
        // A kernel SIGKILL read after its OOM record is dropped too.
        assert!(kills.admit(oom, None).is_none());
        assert!(kills.release(u64::MAX / 2).is_empty());
    }

    #[test]
    fn a_sigterm_says_when_and_how_the_process_exited() {
        let mut kills = Kills::new(None);
        let mut s = signalled(15, 40, (30, "kubelet"), 1_000_000);
        s.exit_ns = Some(121_000_000);
        s.exit_code = Some(15);
        let r = kills.admit(s, None).expect("reported");
        assert_eq!(r.signal, SignalName::Sigterm);
        assert_eq!(r.by, KilledBy::Kubelet);
        assert_eq!(r.exited_after_ms, Some(120.0));
        assert_eq!(r.exit.as_deref(), Some("signal 15 (SIGTERM)"));
        assert_eq!(
            r.why,
            "40 (sleep) exited 120 ms after a SIGTERM from kubelet (pid 30) (pod deletion or \
             eviction, or a failed liveness probe): signal 15 (SIGTERM)"
        );
        assert_eq!(exit_text(3 << 8), "exit code 3");
    }

    #[test]
    fn scope_leaves_out_kills_elsewhere() {
        let mut kills = Kills::new(None);
        let inside = Scope::Subtree {
            id: 70,
            path: "/pod".to_owned(),
        };
        let elsewhere = Scope::Subtree {
            id: 5,
            path: "/other".to_owned(),
        };
        assert!(
            kills
                .admit(signalled(9, 40, (30, "sh"), 1), Some(&inside))
                .is_some()
        );
        assert!(
            kills
                .admit(signalled(9, 40, (30, "sh"), 1), Some(&elsewhere))
                .is_none()
        );
    }
}
