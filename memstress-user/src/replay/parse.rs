//! The kernel's OOM report, as text, parsed.
//!
//! Reads what `dmesg`, `dmesg -T`, `journalctl -k` (`Nov 30 03:02:48 host kernel: …`, also
//! `-o short-iso`), /dev/kmsg records (`6,1234,5678,-;…`) or plain text hold, with or without
//! `[   12.345678]`/`[Mon Nov 30 …]` timestamps and `[  T71]` caller ids, and finds every OOM
//! report in it: from `COMM invoked oom-killer:` to the `Killed process` line. The formats are
//! the printk formats of mm/oom_kill.c (`dump_header`, `dump_tasks`/`dump_task`,
//! `oom_kill_process`, `__oom_kill_process`) and mm/memcontrol.c
//! (`mem_cgroup_print_oom_context`, `mem_cgroup_print_oom_meminfo`, 4.14's
//! `mem_cgroup_print_oom_info`) of kernels 4.14 to 6.18:
//!
//! * the trigger: `%s invoked oom-killer: gfp_mask=%#x(%pGg), [nodemask=%*pbl, ]order=%d,
//!   oom_score_adj=%hd` and `CPU: %d [UID: %u ]PID: %d Comm: %s …tainted VERSION #…`;
//! * a memcg's counters: `memory: usage %llukB, limit %llukB, failcnt %lu`, then
//!   `memory+swap: …` and `kmem: …` (v1) or `swap: …` (v2), and `Memory cgroup stats for
//!   PATH:`; 4.14 names the domain in `Task in PATH killed as a result of limit of PATH`;
//! * the node's memory for a global OOM (`show_mem`): `N pages RAM`, `N pages reserved`,
//!   `Total swap = NkB`;
//! * the task table, whose header says its columns (`[  pid  ]   uid  tgid total_vm rss
//!   [rss_anon rss_file rss_shmem] pgtables_bytes swapents oom_score_adj name`; 4.14: `[ pid ]
//!   … rss nr_ptes nr_pmds swapents …`; older kernels without `tgid`): rows are read by it;
//! * `oom-kill:constraint=…,nodemask=…,cpuset=…,mems_allowed=…,oom_memcg=…|global_oom,
//!   task_memcg=…,task=…,pid=…,uid=…` (4.19 on);
//! * up to 5.0, `… Kill process %d (%s) score %u or sacrifice child` (the task chosen; the one
//!   killed may be its child);
//! * `[MESSAGE: ]Killed process %d (%s) total-vm:%lukB, anon-rss:%lukB, file-rss:%lukB,
//!   shmem-rss:%lukB[, UID:%u pgtables:%lukB oom_score_adj:%hd]`.
//!
//! A report cut short (no task table, a row or line truncated, no `Killed process` line, a
//! memcg OOM without its limit, a global one without the node's RAM) is a [`CutShort`] that
//! names what is missing: nothing is half-used.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `oom_score_adj` of a task the OOM killer never picks.
pub const OOM_SCORE_ADJ_MIN: i16 = -1000;

/// One OOM report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Report {
    /// The line of the input its trigger is on (1-based).
    pub line: usize,
    /// The trigger line's timestamp as the log wrote it (`15856.390909`, `Mon Nov 30 03:57:08
    /// 2026`, `Nov 30 03:02:48`); `null` without one.
    pub time: Option<String>,
    /// The kernel version from the `CPU: … Comm: …` line; `null` when the report has none.
    pub kernel: Option<String>,
    /// `CONSTRAINT_MEMCG`, `CONSTRAINT_NONE`, … from the `oom-kill:` line (4.19 on); `null`
    /// before.
    pub constraint: Option<String>,
    /// The memory cgroup whose limit was hit (`oom_memcg=`; 4.14: `killed as a result of limit
    /// of`); `null` for a global OOM.
    pub oom_memcg: Option<String>,
    /// The victim's memory cgroup (`task_memcg=`; 4.14: `Task in`).
    pub task_memcg: Option<String>,
    /// The memcg's `memory: limit` in bytes; `null` for a global OOM.
    pub limit_bytes: Option<u64>,
    /// The memcg's `memory: usage` in bytes; `null` for a global OOM.
    pub usage_bytes: Option<u64>,
    /// The memcg's swap counter: v1 `memory+swap` (memory and swap together), v2 `swap`.
    pub swap: Option<SwapCounter>,
    /// The node's memory, printed for a global OOM.
    pub node: Option<NodeMemory>,
    /// Whose allocation triggered it.
    pub trigger: Trigger,
    /// The task table's columns, as its header names them.
    pub columns: Vec<String>,
    /// Every row of the task table, in the kernel's order (its scan order).
    pub tasks: Vec<TaskRow>,
    /// Up to 5.0: the task the kernel chose (`Kill process … score … or sacrifice child`).
    pub chosen: Option<Chosen>,
    /// The `Killed process` line.
    pub victim: Victim,
}

impl Report {
    /// Whether the OOM was a memory cgroup's.
    pub fn is_memcg(&self) -> bool {
        self.limit_bytes.is_some()
    }
}

/// A memcg's swap counter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SwapCounter {
    /// `memory+swap` (cgroup v1: memory and swap together) or `swap` (v2: swap alone).
    pub counter: String,
    /// Its usage, in bytes.
    pub usage_bytes: u64,
    /// Its limit, in bytes (the kernel prints 9007199254740988kB for "no limit").
    pub limit_bytes: u64,
}

/// The node's memory as `show_mem` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeMemory {
    /// `N pages RAM`.
    pub ram_pages: u64,
    /// `N pages reserved`; `null` when absent.
    pub reserved_pages: Option<u64>,
    /// `Total swap = NkB`, in bytes; `null` when absent.
    pub swap_total_bytes: Option<u64>,
}

/// The task whose allocation failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Trigger {
    /// Its command name.
    pub comm: String,
    /// Its pid, from the `CPU: … PID: …` line; `null` when the report has none.
    pub pid: Option<u32>,
    /// `gfp_mask=` as printed (`0xcc0(GFP_KERNEL)`).
    pub gfp_mask: String,
    /// `order=` (-1: a forced OOM, sysrq or memory.oom_control).
    pub order: i32,
    /// Its own `oom_score_adj`.
    pub oom_score_adj: i16,
}

/// One row of the task table (memory values in pages, page tables in bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskRow {
    /// `pid`.
    pub pid: u32,
    /// `uid` (as printed: signed).
    pub uid: i64,
    /// `tgid`; `null` for kernels without the column.
    pub tgid: Option<u32>,
    /// `total_vm`, pages.
    pub total_vm: u64,
    /// `rss` (anon + file + shmem), pages.
    pub rss: u64,
    /// `rss_anon`, `rss_file`, `rss_shmem` (6.x), pages; `null` without the columns.
    pub rss_anon: Option<u64>,
    /// See `rss_anon`.
    pub rss_file: Option<u64>,
    /// See `rss_anon`.
    pub rss_shmem: Option<u64>,
    /// `pgtables_bytes` (4.15 on); `null` with `nr_ptes`.
    pub pgtables_bytes: Option<u64>,
    /// `nr_ptes` (up to 4.14: page-table pages); `null` with `pgtables_bytes`.
    pub nr_ptes: Option<u64>,
    /// `nr_pmds` (up to 4.14: PMD pages).
    pub nr_pmds: Option<u64>,
    /// `swapents`, pages.
    pub swapents: u64,
    /// `oom_score_adj`.
    pub oom_score_adj: i16,
    /// `name` (the command; it may hold spaces).
    pub name: String,
}

/// The task the kernel chose, before 5.1 (`Kill process %d (%s) score %u or sacrifice child`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Chosen {
    /// Its pid.
    pub pid: u32,
    /// Its command.
    pub comm: String,
    /// The kernel's score (those kernels print it normalised to 0..1000).
    pub score: u64,
}

/// The `Killed process` line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Victim {
    /// Its pid.
    pub pid: u32,
    /// Its command.
    pub comm: String,
    /// What precedes `Killed process` (`Memory cgroup out of memory`, `Out of memory`); empty
    /// on kernels that print nothing there.
    pub message: String,
    /// `total-vm:`, KiB.
    pub total_vm_kib: u64,
    /// `anon-rss:`, KiB.
    pub anon_rss_kib: u64,
    /// `file-rss:`, KiB.
    pub file_rss_kib: u64,
    /// `shmem-rss:`, KiB.
    pub shmem_rss_kib: u64,
    /// `UID:` (5.x on); `null` before.
    pub uid: Option<u32>,
    /// `pgtables:`, KiB (5.x on); `null` before.
    pub pgtables_kib: Option<u64>,
    /// `oom_score_adj:` (5.x on); `null` before.
    pub oom_score_adj: Option<i16>,
}

/// A report that ends before it says everything a replay needs: which one, and what is
/// missing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the OOM report at line {line} (`{trigger} invoked oom-killer`) is cut short: {missing}")]
pub struct CutShort {
    /// The line of its trigger (1-based).
    pub line: usize,
    /// The trigger's command.
    pub trigger: String,
    /// What is missing, in words.
    pub missing: String,
}

/// Every OOM report in `text`, in order; each is whole or a [`CutShort`].
pub fn parse(text: &str) -> Vec<Result<Report, CutShort>> {
    let mut reports = Vec::new();
    let mut current: Option<Builder> = None;
    for (n, raw) in text.lines().enumerate() {
        let (time, message) = strip_prefix(raw);
        let message = message.trim();
        if let Some(trigger) = parse_trigger(message) {
            if let Some(b) = current.take() {
                reports.push(b.finish());
            }
            current = Some(Builder::new(n + 1, time.map(str::to_owned), trigger));
            continue;
        }
        let Some(builder) = current.as_mut() else {
            continue;
        };
        builder.feed(message);
        if (builder.victim.is_some() || builder.error.is_some())
            && let Some(b) = current.take()
        {
            reports.push(b.finish());
        }
    }
    if let Some(b) = current {
        reports.push(b.finish());
    }
    reports
}

/// A line without its log prefix: (the timestamp, if any; the kernel's message).
pub fn strip_prefix(line: &str) -> (Option<&str>, &str) {
    let mut rest = line.trim_end_matches(['\r', '\n']);
    let mut time = None;
    // /dev/kmsg: "PRI,SEQ,TS_USEC,FLAGS[,…];MESSAGE".
    if let Some((head, message)) = rest.split_once(';') {
        let mut fields = head.split(',');
        if fields.clone().count() >= 4
            && fields
                .by_ref()
                .take(3)
                .all(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
        {
            time = head.split(',').nth(2);
            rest = message;
        }
    }
    // syslog and journalctl: "Nov 30 03:02:48 host kernel: …", "2026-11-30T03:02:48+0000 host
    // kernel: …".
    if let Some(at) = rest.find(" kernel: ")
        && at <= 120
    {
        let head = &rest[..at];
        let month = head.len() >= 4
            && head.as_bytes()[..3].iter().all(u8::is_ascii_alphabetic)
            && head.as_bytes()[3] == b' ';
        let iso = head.len() >= 5
            && head.as_bytes()[..4].iter().all(u8::is_ascii_digit)
            && head.as_bytes()[4] == b'-';
        if (month || iso) && head.contains(':') {
            // The timestamp: all but the last word (the host).
            time = Some(head.rsplit_once(' ').map_or(head, |(t, _)| t).trim());
            rest = &rest[at + " kernel: ".len()..];
        }
    }
    // "[   12.345678]", "[Mon Nov 30 03:57:08 2026]", "[  T71]": one after another.
    loop {
        let trimmed = rest.trim_start();
        let Some(inner_end) = trimmed.strip_prefix('[').and_then(|t| t.find(']')) else {
            break;
        };
        let inner = trimmed[1..=inner_end].trim();
        let after = &trimmed[inner_end + 2..];
        let after = after.strip_prefix(' ').unwrap_or(after);
        let digits_dot = !inner.is_empty()
            && inner.contains('.')
            && inner.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        let caller = inner.len() >= 2
            && matches!(inner.as_bytes()[0], b'T' | b'C')
            && inner[1..].bytes().all(|b| b.is_ascii_digit());
        let date = inner.len() >= 15
            && inner.contains(':')
            && inner.bytes().any(|b| b.is_ascii_alphabetic());
        if digits_dot || date {
            time = Some(inner);
        } else if !caller {
            break;
        }
        rest = after;
    }
    (time, rest)
}

/// `COMM invoked oom-killer: gfp_mask=…, order=…, oom_score_adj=…`: the trigger, or an
/// error naming what the line lacks (in `Err`'s `missing`, with the comm).
fn parse_trigger(message: &str) -> Option<Result<Trigger, (String, String)>> {
    let (comm, rest) = message.split_once(" invoked oom-killer:")?;
    let comm = comm.trim().to_owned();
    let mut gfp_mask = None;
    let mut order = None;
    let mut adj = None;
    for part in rest.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            continue;
        };
        match key {
            "gfp_mask" => gfp_mask = Some(value.trim().to_owned()),
            "order" => order = value.trim().parse::<i32>().ok(),
            "oom_score_adj" => adj = value.trim().parse::<i16>().ok(),
            _ => {}
        }
    }
    Some(match (gfp_mask, order, adj) {
        (Some(gfp_mask), Some(order), Some(oom_score_adj)) => Ok(Trigger {
            comm,
            pid: None,
            gfp_mask,
            order,
            oom_score_adj,
        }),
        (g, o, _) => {
            let what = if g.is_none() {
                "gfp_mask"
            } else if o.is_none() {
                "order"
            } else {
                "oom_score_adj"
            };
            Err((
                comm,
                format!("its `invoked oom-killer` line has no {what}= (the line is truncated)"),
            ))
        }
    })
}

/// One report being read.
struct Builder {
    line: usize,
    time: Option<String>,
    trigger: Trigger,
    error: Option<String>,
    kernel: Option<String>,
    constraint: Option<String>,
    oom_memcg: Option<String>,
    task_memcg: Option<String>,
    stats_for: Option<String>,
    memory: Option<(u64, u64)>,
    swap: Option<SwapCounter>,
    ram_pages: Option<u64>,
    reserved_pages: Option<u64>,
    swap_total_bytes: Option<u64>,
    global_oom: bool,
    columns: Option<Vec<String>>,
    tasks: Vec<TaskRow>,
    chosen: Option<Chosen>,
    victim: Option<Victim>,
}

impl Builder {
    fn new(line: usize, time: Option<String>, trigger: Result<Trigger, (String, String)>) -> Self {
        let (trigger, error) = match trigger {
            Ok(t) => (t, None),
            Err((comm, missing)) => (
                Trigger {
                    comm,
                    pid: None,
                    gfp_mask: String::new(),
                    order: 0,
                    oom_score_adj: 0,
                },
                Some(missing),
            ),
        };
        Self {
            line,
            time,
            trigger,
            error,
            kernel: None,
            constraint: None,
            oom_memcg: None,
            task_memcg: None,
            stats_for: None,
            memory: None,
            swap: None,
            ram_pages: None,
            reserved_pages: None,
            swap_total_bytes: None,
            global_oom: false,
            columns: None,
            tasks: Vec::new(),
            chosen: None,
            victim: None,
        }
    }

    fn feed(&mut self, m: &str) {
        if let Some(rest) = m.strip_prefix("CPU: ")
            && let Some((_, after_pid)) = rest.split_once("PID: ")
            && let Some((pid, after_comm)) = after_pid.split_once(" Comm: ")
        {
            self.trigger.pid = pid.trim().parse().ok();
            let tail = [" Not tainted", " Tainted:"]
                .iter()
                .find_map(|t| after_comm.split_once(t).map(|(_, r)| r));
            self.kernel = tail.and_then(|t| {
                let words: Vec<&str> = t.split_whitespace().collect();
                let hash = words.iter().position(|w| w.starts_with('#'))?;
                (hash > 0).then(|| words[hash - 1].to_owned())
            });
        } else if let Some(rest) = m.strip_prefix("memory: usage ") {
            self.memory = usage_limit(rest);
            if self.memory.is_none() {
                self.error = Some(format!(
                    "its `memory: usage …kB, limit …kB` line is truncated (`{m}`)"
                ));
            }
        } else if let Some((counter, rest)) = m
            .strip_prefix("memory+swap: usage ")
            .map(|r| ("memory+swap", r))
            .or_else(|| m.strip_prefix("swap: usage ").map(|r| ("swap", r)))
        {
            if let Some((usage_bytes, limit_bytes)) = usage_limit(rest) {
                self.swap = Some(SwapCounter {
                    counter: counter.to_owned(),
                    usage_bytes,
                    limit_bytes,
                });
            }
        } else if let Some(rest) = m.strip_prefix("Memory cgroup stats for ") {
            let path = rest.split_once(':').map_or(rest, |(p, _)| p);
            self.stats_for = Some(path.trim().to_owned());
        } else if let Some(rest) = m.strip_prefix("Task in ")
            && let Some((task, oom)) = rest.split_once(" killed as a result of limit of ")
        {
            self.task_memcg = Some(task.trim().to_owned());
            self.oom_memcg = Some(oom.trim().to_owned());
        } else if let Some(n) = m.strip_suffix(" pages RAM") {
            self.ram_pages = n.trim().parse().ok();
        } else if let Some(n) = m.strip_suffix(" pages reserved") {
            self.reserved_pages = n.trim().parse().ok();
        } else if let Some(kb) = m.strip_prefix("Total swap = ") {
            self.swap_total_bytes = kb
                .trim()
                .strip_suffix("kB")
                .and_then(|k| k.parse::<u64>().ok())
                .map(|k| k.saturating_mul(1024));
        } else if m.starts_with('[') && m.ends_with(" name") && m.contains("pid") {
            self.columns = Some(parse_header(m));
            if self.table_lacks().is_some() {
                self.error = self.table_lacks();
            }
        } else if let Some(columns) = &self.columns
            && is_row(m)
        {
            match parse_row(columns, m) {
                Some(row) => self.tasks.push(row),
                None => {
                    self.error = Some(format!(
                        "row {} of its task table is truncated (`{m}`)",
                        self.tasks.len() + 1
                    ))
                }
            }
        } else if m.starts_with("Out of memory and no killable processes") {
            self.error = Some(
                "no `Killed process` line: the kernel found no killable process (`Out of \
                 memory and no killable processes...`)"
                    .to_owned(),
            );
        } else if let Some(rest) = m.strip_prefix("oom-kill:") {
            self.oom_kill_line(rest);
        } else if let Some(at) = m.find("Kill process ")
            && m.ends_with(" or sacrifice child")
        {
            let rest = &m[at + "Kill process ".len()..];
            if let Some((pid, comm, tail)) = pid_comm(rest, " score ") {
                self.chosen = Some(Chosen {
                    pid,
                    comm,
                    score: tail
                        .split_whitespace()
                        .next()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                });
            }
        } else if let Some(at) = m.find("Killed process ") {
            let message = m[..at].trim().trim_end_matches(':').to_owned();
            let since_5_4 = self.kernel.as_deref().and_then(major_minor) >= Some((5, 4));
            match parse_killed(&m[at + "Killed process ".len()..], message, since_5_4) {
                Ok(v) => self.victim = Some(v),
                Err(what) => {
                    self.error = Some(format!("its `Killed process` line is truncated ({what})"))
                }
            }
        }
    }

    /// The `oom-kill:` line's fields. `nodemask` and `mems_allowed` are node lists that may
    /// hold commas (`0,2-3`): a part that is not `key=value` continues the previous value.
    fn oom_kill_line(&mut self, rest: &str) {
        let mut fields: Vec<(String, String)> = Vec::new();
        for part in rest.split(',') {
            match part.split_once('=') {
                Some((key, value)) if key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') => {
                    fields.push((key.to_owned(), value.to_owned()))
                }
                _ if part == "global_oom" => self.global_oom = true,
                _ => {
                    if let Some((_, value)) = fields.last_mut() {
                        value.push(',');
                        value.push_str(part);
                    }
                }
            }
        }
        // `task=…,pid=…,uid=…` close the line: a line without them was cut (the kernel's
        // line limit, long cgroup paths).
        for key in ["task", "pid", "uid"] {
            if !fields.iter().any(|(k, _)| k == key) {
                self.error = Some(format!("its `oom-kill:` line is truncated (no {key}=)"));
            }
        }
        for (key, value) in fields {
            match key.as_str() {
                "constraint" => self.constraint = Some(value),
                "oom_memcg" => self.oom_memcg = Some(value),
                "task_memcg" => self.task_memcg = Some(value),
                _ => {}
            }
        }
    }

    /// What the table's header lacks for a replay, if anything.
    fn table_lacks(&self) -> Option<String> {
        let columns = self.columns.as_ref()?;
        let has = |c: &str| columns.iter().any(|x| x == c);
        let lacks = [
            "pid",
            "uid",
            "total_vm",
            "rss",
            "swapents",
            "oom_score_adj",
            "name",
        ]
        .into_iter()
        .find(|c| !has(c))
        .or((!has("pgtables_bytes") && !has("nr_ptes")).then_some("pgtables_bytes"))?;
        Some(format!(
            "its task table's header has no `{lacks}` column (the header is truncated)"
        ))
    }

    fn finish(self) -> Result<Report, CutShort> {
        let cut = |missing: String| CutShort {
            line: self.line,
            trigger: self.trigger.comm.clone(),
            missing,
        };
        if let Some(e) = &self.error {
            return Err(cut(e.clone()));
        }
        let Some(columns) = self.columns.clone() else {
            return Err(cut(
                "no task table (`Tasks state (memory values in pages):` and its rows; \
                 vm.oom_dump_tasks=0 leaves it out)"
                    .to_owned(),
            ));
        };
        if self.tasks.is_empty() {
            return Err(cut("its task table has no rows".to_owned()));
        }
        let Some(victim) = self.victim.clone() else {
            return Err(cut(
                "no `Killed process` line (the log ends, or the next report starts, before \
                 the kill)"
                    .to_owned(),
            ));
        };
        let memcg = self.oom_memcg.is_some()
            || self.constraint.as_deref() == Some("CONSTRAINT_MEMCG")
            || victim.message.starts_with("Memory cgroup")
            || (self.memory.is_some() && !self.global_oom);
        let (limit_bytes, usage_bytes, node) = if memcg {
            let Some((usage, limit)) = self.memory else {
                return Err(cut(
                    "no `memory: usage …kB, limit …kB` line (the memory cgroup's limit)".to_owned(),
                ));
            };
            (Some(limit), Some(usage), None)
        } else {
            let Some(ram_pages) = self.ram_pages else {
                return Err(cut(
                    "no `N pages RAM` line (the node's memory, for a global OOM)".to_owned(),
                ));
            };
            let node = NodeMemory {
                ram_pages,
                reserved_pages: self.reserved_pages,
                swap_total_bytes: self.swap_total_bytes,
            };
            (None, None, Some(node))
        };
        Ok(Report {
            line: self.line,
            time: self.time.clone(),
            kernel: self.kernel.clone(),
            constraint: self.constraint.clone(),
            oom_memcg: self
                .oom_memcg
                .clone()
                .or_else(|| memcg.then(|| self.stats_for.clone()).flatten()),
            task_memcg: self.task_memcg.clone(),
            limit_bytes,
            usage_bytes,
            swap: if memcg { self.swap.clone() } else { None },
            node,
            trigger: self.trigger.clone(),
            columns,
            tasks: self.tasks.clone(),
            chosen: self.chosen.clone(),
            victim,
        })
    }
}

/// `5.10.0-23-amd64` → (5, 10).
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// `%llukB, limit %llukB, failcnt %lu` → (usage, limit) in bytes.
fn usage_limit(rest: &str) -> Option<(u64, u64)> {
    let (usage, rest) = rest.split_once("kB, limit ")?;
    let (limit, rest) = rest.split_once("kB")?;
    if !rest.starts_with(", failcnt ") {
        return None;
    }
    let kib = |s: &str| s.trim().parse::<u64>().ok().map(|k| k.saturating_mul(1024));
    Some((kib(usage)?, kib(limit)?))
}

/// The header's columns: `[  pid  ]   uid  tgid total_vm …` → `pid uid tgid total_vm …`.
fn parse_header(m: &str) -> Vec<String> {
    let m = m.replacen('[', " ", 1).replacen(']', " ", 1);
    m.split_whitespace().map(str::to_owned).collect()
}

/// A row starts `[` digits `]`.
fn is_row(m: &str) -> bool {
    m.strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .is_some_and(|(pid, _)| {
            let pid = pid.trim();
            !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
        })
}

/// One row, read by the header's columns; `None` when it is truncated.
fn parse_row(columns: &[String], m: &str) -> Option<TaskRow> {
    let (pid, mut rest) = m.strip_prefix('[')?.split_once(']')?;
    let mut values: Vec<&str> = Vec::new();
    // Every column but `pid` (in brackets) and `name` (the rest of the line) is one word.
    for _ in 0..columns.len().saturating_sub(2) {
        rest = rest.trim_start();
        let end = rest.find(char::is_whitespace)?;
        values.push(&rest[..end]);
        rest = &rest[end..];
    }
    let name = rest.trim();
    if name.is_empty() {
        return None;
    }
    let value = |column: &str| -> Option<Option<&str>> {
        match columns[1..].iter().position(|c| c == column) {
            Some(i) => values.get(i).map(|v| Some(*v)),
            None => Some(None),
        }
    };
    let u64_of = |column: &str| -> Option<Option<u64>> {
        match value(column)? {
            Some(v) => v.parse().ok().map(Some),
            None => Some(None),
        }
    };
    let pgtables_bytes = u64_of("pgtables_bytes")?;
    let nr_ptes = u64_of("nr_ptes")?;
    Some(TaskRow {
        pid: pid.trim().parse().ok()?,
        uid: value("uid")??.parse().ok()?,
        tgid: match value("tgid")? {
            Some(v) => Some(v.parse().ok()?),
            None => None,
        },
        total_vm: u64_of("total_vm")??,
        rss: u64_of("rss")??,
        rss_anon: u64_of("rss_anon")?,
        rss_file: u64_of("rss_file")?,
        rss_shmem: u64_of("rss_shmem")?,
        pgtables_bytes,
        nr_ptes,
        nr_pmds: u64_of("nr_pmds")?,
        swapents: u64_of("swapents")??,
        oom_score_adj: value("oom_score_adj")??.parse().ok()?,
        name: name.to_owned(),
    })
    .filter(|_| pgtables_bytes.is_some() || nr_ptes.is_some())
}

/// `PID (COMM)` followed by `after`: the comm is up to the last `)` before it (a comm may
/// hold parentheses and spaces).
fn pid_comm<'a>(rest: &'a str, after: &str) -> Option<(u32, String, &'a str)> {
    let (pid, rest) = rest.split_once(" (")?;
    let at = rest.find(after)?;
    let comm = rest[..at].strip_suffix(')')?;
    Some((
        pid.trim().parse().ok()?,
        comm.to_owned(),
        &rest[at + after.len()..],
    ))
}

/// `PID (COMM) total-vm:…kB, anon-rss:…kB, file-rss:…kB, shmem-rss:…kB[, UID:… pgtables:…kB
/// oom_score_adj:…]`.
fn parse_killed(rest: &str, message: String, since_5_4: bool) -> Result<Victim, String> {
    let (pid, comm, tail) =
        pid_comm(rest, " total-vm:").ok_or_else(|| "no `total-vm:`".to_owned())?;
    let tail = format!("total-vm:{tail}");
    let field = |key: &str| -> Option<&str> {
        let at = tail.find(key)?;
        let value = &tail[at + key.len()..];
        let end = value
            .find(|c: char| !(c.is_ascii_digit() || c == '-'))
            .unwrap_or(value.len());
        (end > 0).then(|| &value[..end])
    };
    let kib = |key: &str| -> Result<u64, String> {
        let v = field(key).ok_or_else(|| format!("no `{key}`"))?;
        if !tail[tail.find(key).unwrap_or(0) + key.len() + v.len()..].starts_with("kB") {
            return Err(format!("`{key}{v}` has no kB"));
        }
        v.parse().map_err(|_| format!("`{key}{v}` is not a number"))
    };
    let victim = Victim {
        pid,
        comm,
        message,
        total_vm_kib: kib("total-vm:")?,
        anon_rss_kib: kib("anon-rss:")?,
        file_rss_kib: kib("file-rss:")?,
        shmem_rss_kib: kib("shmem-rss:")?,
        uid: field("UID:").and_then(|v| v.parse().ok()),
        pgtables_kib: field("pgtables:").and_then(|v| v.parse().ok()),
        oom_score_adj: field("oom_score_adj:").and_then(|v| v.parse().ok()),
    };
    // 5.4 on, the line ends `, UID:%u pgtables:%lukB oom_score_adj:%hd`: once `UID:` is
    // printed, or on a kernel that prints it, the rest must be there too. (On a report
    // without a `CPU:` line, a line cut right after `shmem-rss:…kB` reads as an older one.)
    if (since_5_4 || tail.contains("UID:"))
        && (victim.uid.is_none() || victim.pgtables_kib.is_none() || victim.oom_score_adj.is_none())
    {
        return Err("it ends before `UID:… pgtables:…kB oom_score_adj:…`".to_owned());
    }
    Ok(victim)
}
