//! The command line. Every flag's help reads like a man page; `memstress <cmd> --help` has
//! examples.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    output::Format,
    size::SizeSpec,
    spec::{Kind, MAX_WORKERS, OnOom, Pattern},
    target::kube::{Runtime, RuntimeState},
};

const EXIT_CODES: &str = "\
EXIT CODES:
  0  done (an OOM kill of a stressor under --on-oom report is a result, not an error)
  1  error: bad input, missing privileges or kernel support, a stressor that failed
  2  command-line usage error
  3  --on-oom stop: a stressor was OOM-killed and the run ended there
  4  the target cgroup disappeared during the run
  5  another memstress run already targets that cgroup
  130, 143  interrupted by SIGINT (Ctrl-C) or SIGTERM before the run did what was asked
     (mid-fill, mid-ramp, before --hold ended; watch: before --duration ended), after
     cleaning up. Stopping an unbounded hold (no --hold) or watch is its normal end: 0.

SIZES:
  Ki Mi Gi Ti (and KiB MiB …) are powers of 1024; k M G T (and kB MB …) powers of 1000,
  as in Kubernetes. A bare number is bytes. 80% is a percent of the target's memory limit.";

/// memstress: memory pressure inside a cgroup, and the kernel's own account of every OOM kill.
///
/// memstress runs memory stressors inside a chosen cgroup (v1 or v2) with exact, stated sizes,
/// and attaches eBPF programs to the kernel's OOM path to report, as it happens, which
/// process the OOM killer chose, in which cgroup, with what memory, and whose allocation
/// triggered it.
#[derive(Debug, Parser)]
#[command(name = "memstress", version, after_long_help = EXIT_CODES, max_term_width = 100)]
pub struct Cli {
    /// Output: `text` (one readable line per event) or `json` (one JSON object per line on
    /// stdout, documented in docs/events.md). Diagnostics always go to stderr.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Text)]
    pub output: Format,

    /// The running kernel's BTF, used to find kernel struct offsets.
    #[arg(long, global = true, value_name = "FILE", default_value = crate::probe::btf::VMLINUX)]
    pub btf: PathBuf,

    /// Size of the BPF ring buffer that carries OOM records to memstress (rounded up to a
    /// power of two, at least one page). Records that find it full are counted and reported
    /// as dropped, never lost silently; a bigger buffer rides out longer stalls of the reader.
    #[arg(long, global = true, value_name = "SIZE", default_value = "4Mi", value_parser = parse_ring_size)]
    pub ring_buffer: u32,

    /// More diagnostics on stderr (-v: info, -vv: debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Resolve cgroups under DIR instead of the real mounts: a tree shaped like /sys/fs/cgroup
    /// (cgroup v1 when it has a `memory` directory, v2 when its cgroup.controllers lists
    /// `memory`). Every target (--cgroup, --pid, --self, --new, --pod, --container) and
    /// watch's --cgroup is resolved there, a /proc/PID/cgroup path mapped under it. On a copy
    /// of a node's tree, `run --dry-run` needs neither BPF nor privileges.
    #[arg(long, global = true, value_name = "DIR")]
    pub cgroup_root: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Report every OOM kill on this node (or under one cgroup) as the kernel makes it.
    #[command(after_long_help = "\
EXAMPLES:
  sudo memstress watch
  sudo memstress watch --cgroup /kubepods/burstable -o json
  sudo memstress watch --cgroup /sys/fs/cgroup/memory/my-sandbox --duration 60s
  sudo memstress watch --explain-probes
  # One pod's app container, by name (still watched after it restarts), or a namespace:
  sudo memstress watch --pod 7c9e6679 --container app
  sudo memstress watch --namespace shop -o json
  # Docker with a non-default --data-root (names on every kill come from its state files):
  sudo memstress watch --runtime-state docker=/data/docker
  # A Prometheus/OpenMetrics endpoint at http://127.0.0.1:9464/metrics:
  sudo memstress watch --metrics 127.0.0.1:9464
  # The same for one pod, with its memory gauges (port 0: any free port, printed at start):
  sudo memstress watch --cgroup /kubepods/burstable/pod1234 --metrics 127.0.0.1:0")]
    Watch(WatchArgs),

    /// Hold exactly sized memory inside a cgroup and report the OOM kills that follow.
    #[command(after_long_help = "\
EXAMPLES:
  # A 256 MiB sandbox, pushed past its limit by 2 stressors holding 384 MiB in total:
  sudo memstress run --new sandbox --limit 256Mi --size 384Mi --workers 2
  # 80% of an existing cgroup's limit, held for 10 minutes:
  sudo memstress run --cgroup /kubepods/burstable/pod1234 --size 80% --hold 10m
  # The memory cgroup of process 4242; show the plan only:
  sudo memstress run --pid 4242 --size 200Mi --dry-run
  # Throttle a cgroup (v2): memory.high at 64 MiB for 5 minutes, restored afterwards:
  sudo memstress run --cgroup /pod1234 --throttle 64Mi --hold 5m
  # Keep a pod's working set at 90% of its limit while the app's own use moves:
  sudo memstress run --cgroup /kubepods/pod1234 --fill-to 90%
  # Hold the node's memory.available (the kubelet's eviction signal) at 150 MiB, just under
  # an eviction threshold of 200Mi, for 2 minutes (eviction: needs --allow-node-oom):
  sudo memstress run --cgroup /kubepods/besteffort/pod5678 --fill-to available=150Mi \\
    --eviction-threshold 200Mi --allow-node-oom --hold 2m
  # Hold a container's memory pressure (PSI some avg10, cgroup v2) at 20% for 10 minutes:
  sudo memstress run --cgroup /kubepods/pod1234/ctr --pressure some=20% --hold 10m
  # A leak: 1 GiB of page cache over 5 minutes:
  sudo memstress run --new leak --limit 2Gi --size 1Gi --kind file --ramp 5m
  # A Kubernetes pod's container, by name (systemd or cgroupfs driver, cgroup v1 or v2):
  sudo memstress run --pod 7c9e6679-7425-40de-944b-e07fc1f90ae7 --container app --size 200Mi
  # A container by id, as the pod's status shows it (a unique prefix of 4+ digits is enough):
  sudo memstress run --container containerd://4f1c2ab8 --size 80% --hold 5m
  # Keep at it across container restarts: its new cgroup is found and re-injected:
  sudo memstress run --pod 7c9e6679 --container app --size 200Mi --follow
  # A Chaos Mesh StressChaos, run on one pod of this node; the plan states the differences:
  sudo memstress run --from-stresschaos memory-stress.yaml --pod 7c9e6679 --dry-run
  # The plan against a copy of a node's cgroup tree, without privileges:
  memstress run --cgroup-root ./node-tree --pod 7c9e6679 --container app --size 50% \\
    --dry-run -o json

CONTAINER NAMES:
  A cgroup tree holds container ids only. A name (--pod UID --container NAME, a
  StressChaos's containerNames or selector.pods) is read from the container runtime's own
  state files on the node, under --runtime-root: containerd's
  run/containerd/io.containerd.runtime.v2.task/k8s.io/ID/config.json, CRI-O's
  {run,var/lib}/containers/storage/overlay-containers/ID/userdata/config.json, Docker's
  var/lib/docker/containers/ID/config.v2.json. memstress reads them as files (no runtime
  socket, no cluster API): run it on the node, as root. Where none is readable (another
  runtime, a different state directory, a container without them), names are refused with
  the ids listed: give the id. Label, namespace and field selectors need the cluster API
  and are never evaluated.")]
    Run(Box<RunArgs>),

    /// A self-contained demonstration: a sandbox cgroup, an app, stressors past the limit, and
    /// the OOM kill reported live; everything is removed afterwards.
    #[command(after_long_help = "\
EXAMPLES:
  sudo memstress demo
  # A bigger sandbox, as JSON lines (docs/events.md):
  sudo memstress demo --limit 512Mi -o json
  # Give up sooner if no OOM kill comes:
  sudo memstress demo --timeout 20s")]
    Demo(DemoArgs),

    /// Read the kernel's OOM reports from a log (dmesg, `dmesg -T`, `journalctl -k`, or
    /// plain text) and rank each report's tasks with the kernel's own formula: the plan of a
    /// replay of the incident. Only `--dry-run` is built so far.
    #[command(after_long_help = "\
EXAMPLES:
  # The last OOM kills on this node, ranked again from the kernel's task tables:
  dmesg | memstress replay --dry-run -
  # A report saved from a node, as JSON lines (docs/events.md, `replay_plan`):
  journalctl -k -b -1 > incident.log
  memstress replay --dry-run -o json incident.log

WHAT IS READ:
  Every report from `COMM invoked oom-killer:` to its `Killed process` line, as kernels 4.14
  to 6.18 print it, for a memory cgroup (v1 or v2) or the whole node: the trigger (comm,
  pid, gfp_mask, order, oom_score_adj), the constraint, oom_memcg and task_memcg, the
  memcg's usage and limit (or the node's RAM and swap), the task table, and the victim.
  Timestamps of dmesg, dmesg -T, the journal, syslog and /dev/kmsg are accepted, or none.
  Each task's points are rss + swapents + page tables / page size + oom_score_adj ×
  totalpages / 1000, as oom_badness() computes them; the plan says how totalpages was
  found (a memcg report does not print the node's swap) and whether the kernel's victim is
  the formula's first, and if not, the likely reason. A report cut short (no task table, a
  truncated row or line, no Killed process line, no limit) is refused with the missing
  part named (exit code 1): nothing is guessed.

REPRODUCTION:
  Without --dry-run, replay refuses (exit code 1): the reproduction is not built yet.")]
    Replay(ReplayArgs),

    /// Print a shell completion script for memstress on stdout.
    #[command(after_long_help = "\
EXAMPLES:
  memstress completions bash > /etc/bash_completion.d/memstress
  memstress completions zsh > \"${fpath[1]}/_memstress\"
  memstress completions fish > ~/.config/fish/completions/memstress.fish")]
    Completions(CompletionsArgs),

    /// Print memstress's man page (roff) on stdout, or write one page per command to a
    /// directory.
    #[command(after_long_help = "\
EXAMPLES:
  memstress man | man -l -
  memstress man --dir /usr/local/share/man/man1")]
    Man(ManArgs),

    /// Print the JSON Schema (draft 2020-12) of every line `-o json` writes, generated from
    /// memstress's own types (docs/events.schema.json is this output).
    #[command(after_long_help = "\
EXAMPLES:
  memstress schema > events.schema.json
  # Whether a file is this version's schema (exit code 1 and the first difference if not):
  memstress schema --check docs/events.schema.json")]
    Schema(SchemaArgs),

    /// (internal) a stressor worker.
    #[command(name = "__stressor", hide = true)]
    Stressor,

    /// (internal) the cleanup guard.
    #[command(name = "__janitor", hide = true)]
    Janitor,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); give e.g. 30s, 10m, 1h30m, 500ms"))?;
    if d.is_zero() {
        return Err(format!("duration `{s}` must be greater than zero"));
    }
    Ok(d)
}

/// `watch --interval`: 100 ms to 1 h.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!(
            "interval `{s}` is out of range: give 100ms to 1h (e.g. 1s, 500ms)"
        ));
    }
    Ok(d)
}

fn parse_size(s: &str) -> Result<SizeArg, String> {
    Ok(SizeArg {
        spec: SizeSpec::parse(s).map_err(|e| e.to_string())?,
        given: s.trim().to_owned(),
    })
}

/// `--fill-to`: `SIZE` (the target's working set) or `available=SIZE` (the node's
/// `memory.available`, as the kubelet computes it).
fn parse_fill_to(s: &str) -> Result<FillToArg, String> {
    let Some((key, value)) = s.split_once('=') else {
        return parse_size(s).map(|size| FillToArg {
            goal: FillGoal::WorkingSet,
            size,
        });
    };
    if key.trim() != "available" {
        return Err(format!(
            "`{}` is not a --fill-to goal: give SIZE (the target's working set: 90%, 200Mi) or \
             available=SIZE (the node's memory.available: 100Mi, or 5% of MemTotal)",
            s.escape_debug()
        ));
    }
    if value.trim().is_empty() {
        return Err(
            "--fill-to available= needs a size: e.g. available=100Mi (the kubelet's \
             memory.available<100Mi) or available=5% (of the node's MemTotal)"
                .to_owned(),
        );
    }
    let spec = SizeSpec::parse(value).map_err(|e| format!("--fill-to available=: {e}"))?;
    if let SizeSpec::Percent(p) = spec
        && p >= 100.0
    {
        return Err(format!(
            "--fill-to available={}: a percent of MemTotal must be below 100% (memory.available \
             cannot be all of the node's memory while anything runs)",
            value.trim()
        ));
    }
    Ok(FillToArg {
        goal: FillGoal::Available,
        size: SizeArg {
            spec,
            given: s.trim().to_owned(),
        },
    })
}

/// What `--fill-to` holds at its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillGoal {
    /// The target's working set (usage − inactive_file): `--fill-to 90%`.
    WorkingSet,
    /// The node's `memory.available` as the kubelet computes it: `--fill-to available=100Mi`.
    Available,
}

/// `--fill-to` as given: what it holds, and at what size (`given` is the whole argument,
/// `available=100Mi`).
#[derive(Clone, Debug, PartialEq)]
pub struct FillToArg {
    /// The working set or the node's memory.available.
    pub goal: FillGoal,
    /// The size (for `available=`, bytes or a percent of MemTotal).
    pub size: SizeArg,
}

/// [`parse_size`], boxed: a flag that is rarely given keeps `RunArgs` small.
fn parse_boxed_size(s: &str) -> Result<Box<SizeArg>, String> {
    parse_size(s).map(Box::new)
}

/// A size as the user typed it (echoed in the plan as given) and what it means.
#[derive(Clone, Debug, PartialEq)]
pub struct SizeArg {
    /// The parsed size.
    pub spec: SizeSpec,
    /// The text given (`64M`, `80%`).
    pub given: String,
}

fn parse_pressure(s: &str) -> Result<crate::stress::pressure::Goal, String> {
    crate::stress::pressure::Goal::parse(s)
}

fn parse_limit(s: &str) -> Result<u64, String> {
    SizeSpec::parse_bytes(s).map_err(|e| e.to_string())
}

/// `--eviction-threshold`: bytes, or 0 for none.
fn parse_threshold(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    SizeSpec::parse_bytes(s).map_err(|e| e.to_string())
}

fn parse_pid(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(format!(
            "`{s}` is not a pid; give the number of a running process"
        )),
    }
}

/// Clap's error text as one line: its message (with the lines that continue it), without the
/// usage block; e.g. `the following required arguments were not provided: --limit <SIZE>`.
pub fn one_line_usage_error(rendered: &str) -> String {
    let message = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect::<Vec<_>>()
        .join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    format!("memstress: error: {message} (see --help)")
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let bytes = SizeSpec::parse_bytes(s).map_err(|e| e.to_string())?;
    let rounded = bytes.max(4096).checked_next_power_of_two();
    match rounded
        .and_then(|b| u32::try_from(b).ok())
        .filter(|&b| b <= 1 << 30)
    {
        Some(b) => Ok(b),
        None => Err(format!(
            "ring buffer size `{s}` is too large; give at most 1Gi (e.g. 4Mi, 64Mi)"
        )),
    }
}

fn parse_adj(s: &str) -> Result<i32, String> {
    let v: i32 = s.parse().map_err(|_| {
        format!("`{s}` is not an oom_score_adj; give an integer from -1000 to 1000")
    })?;
    if !(-1000..=1000).contains(&v) {
        return Err(format!(
            "oom_score_adj {v} is out of range; give -1000 to 1000"
        ));
    }
    Ok(v)
}

/// `memstress watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only report kills in this cgroup or below it: a path as /proc/PID/cgroup shows it
    /// (`/kubepods/burstable/pod1`) or a directory under the cgroup mount
    /// (`/sys/fs/cgroup/memory/kubepods/burstable/pod1`).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,

    /// Stop after this long (e.g. 30s, 10m). Default: until Ctrl-C or SIGTERM.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// With --cgroup, --pod or --container: sample the watched cgroup this often (100ms to
    /// 1h): a `sample` line each time, with the forecast of its OOM domain's next kill (when
    /// it comes, and whom the kernel's formula will choose then); every kill in that domain
    /// is scored against it. A node-wide watch does not sample. Default: 1s.
    #[arg(long, value_name = "D", value_parser = parse_interval)]
    pub interval: Option<Duration>,

    /// Print which probes this kernel accepted and what each contributes, then exit.
    #[arg(long)]
    pub explain_probes: bool,

    /// Serve Prometheus/OpenMetrics metrics at http://ADDR/metrics: OOM kills by cgroup,
    /// comm and whether memstress caused them; the --cgroup's memory usage, working set and
    /// limit; records the probes dropped. Port 0 picks a free port (printed at start).
    /// docs/metrics.md lists every metric.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// Only report kills in this Kubernetes pod (its metadata.uid, or a unique prefix of at
    /// least 4 characters): its cgroup and every container in it, across restarts.
    #[arg(long, value_name = "UID", conflicts_with = "cgroup")]
    pub pod: Option<String>,

    /// Only report kills in this container: its id (or a unique prefix) or, with --pod, its
    /// name in the pod; outside pods, a Docker or containerd container's id or name. A
    /// container given by name is still watched after it restarts under a new id.
    #[arg(long, value_name = "ID|NAME", conflicts_with = "cgroup")]
    pub container: Option<String>,

    /// Only report kills in pods of this Kubernetes namespace (names come from the runtimes'
    /// state files; a kill whose pod cannot be named is left out).
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,

    /// Where the container runtimes' state files are.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Where the container runtimes keep their state (`run`, `watch`): container and pod names
/// are read from it.
#[derive(Clone, Debug, Args)]
pub struct RuntimeArgs {
    /// Read the runtimes' state files under this directory instead of `/` (a DaemonSet that
    /// mounts the node's `/` at `/host`: --runtime-root /host).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub runtime_root: PathBuf,

    /// A runtime's state directory where it is not the default (a node path, read under
    /// --runtime-root; repeatable): `containerd=DIR` (containerd's `state`; default
    /// /run/containerd and k3s's /run/k3s/containerd), `docker=DIR` (dockerd's
    /// `--data-root`; default /var/lib/docker), `cri-o=DIR` (its storage run or graph root).
    #[arg(long, value_name = "RUNTIME=DIR", value_parser = parse_runtime_state)]
    pub runtime_state: Vec<(Runtime, PathBuf)>,
}

impl RuntimeArgs {
    /// The state files these name.
    pub fn state(&self) -> RuntimeState {
        self.runtime_state.iter().fold(
            RuntimeState::new(self.runtime_root.clone()),
            |state, (runtime, dir)| state.with_dir(*runtime, dir.clone()),
        )
    }
}

fn parse_runtime_state(s: &str) -> Result<(Runtime, PathBuf), String> {
    let (runtime, dir) = s.split_once('=').ok_or_else(|| {
        format!(
            "`{s}` is not RUNTIME=DIR; e.g. containerd=/run/k3s/containerd or docker=/data/docker"
        )
    })?;
    let runtime = match runtime.trim() {
        "containerd" => Runtime::Containerd,
        "docker" => Runtime::Docker,
        "cri-o" | "crio" => Runtime::CriO,
        other => {
            return Err(format!(
                "unknown runtime `{other}`; give containerd, docker or cri-o"
            ));
        }
    };
    if dir.is_empty() {
        return Err(format!("`{s}` names no directory"));
    }
    Ok((runtime, PathBuf::from(dir)))
}

/// `memstress schema`.
#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Compare FILE with the schema instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub check: Option<PathBuf>,
}

/// `memstress completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `memstress man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write memstress.1 and one page per subcommand (memstress-run.1, …) into this
    /// directory instead of printing memstress.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `memstress run`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").args(["new", "cgroup", "pid", "self_"])))]
#[command(group(clap::ArgGroup::new("amount").args(["size", "fill_to", "pressure"])))]
pub struct RunArgs {
    /// Create a sandbox cgroup NAME (under the memory hierarchy's root, or an absolute cgroup
    /// path whose parent exists) for this run, with --limit; it is removed afterwards.
    #[arg(long, value_name = "NAME", requires = "limit")]
    pub new: Option<String>,

    /// Memory limit of the --new cgroup (e.g. 128Mi, 1Gi).
    #[arg(long, value_name = "SIZE", value_parser = parse_limit, requires = "new", allow_hyphen_values = true)]
    pub limit: Option<u64>,

    /// Stress an existing cgroup: a path as /proc/PID/cgroup shows it, or a directory under
    /// the cgroup mount.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,

    /// Stress the memory cgroup process PID is in (a container's process, seen from the node).
    #[arg(long, value_name = "PID", value_parser = parse_pid)]
    pub pid: Option<u32>,

    /// Stress the cgroup memstress itself runs in (a sidecar in the pod it stresses). In a
    /// container, its own memory cgroup is found from /proc/self/cgroup and the cgroup mount
    /// the runtime gives it (also inside a cgroup namespace, where both say `/`).
    #[arg(long = "self")]
    pub self_: bool,

    /// Stress a Kubernetes pod, found in the node's cgroup tree (systemd or cgroupfs
    /// driver, cgroup v1 or v2, any QoS class): its metadata.uid, with dashes or
    /// underscores, or a unique prefix of at least 4 characters. Alone, the target is the
    /// pod's own cgroup (cgroup v1 only: on v2 a pod's cgroup cannot hold processes; add
    /// --container).
    #[arg(long, value_name = "UID", conflicts_with = "target")]
    pub pod: Option<String>,

    /// Stress one container: its id as the runtime has it (containerd, CRI-O, Docker;
    /// `containerd://…` as the pod's status shows it is accepted), in full or a unique
    /// prefix of at least 4 hex digits. With --pod, also its name (see CONTAINER NAMES
    /// below). Ambiguous or missing ids are refused with the candidates listed.
    #[arg(long, value_name = "ID|NAME", conflicts_with = "target")]
    pub container: Option<String>,

    /// With --pod/--container: when the container ends (its init process exits, or its
    /// cgroup disappears: a restart), wait for its replacement (the container of the same
    /// name in the same pod; without names, the one new container cgroup in that pod) and
    /// start the stressors again there, reporting both. Without it, the run stops its
    /// stressors and ends with exit code 4.
    #[arg(long)]
    pub follow: bool,

    /// Where the container runtimes' state files are.
    #[command(flatten)]
    pub runtime: RuntimeArgs,

    /// Run a Chaos Mesh StressChaos's memory stressor (workers, size, time, oomScoreAdj,
    /// duration) as memstress runs things; the plan lists every difference from what Chaos
    /// Mesh would do (its size is the total across workers, MB is 1000², …). The target comes
    /// from --pod/--container/--cgroup/… when given, else from the file's selector.pods on
    /// this node. --size, --workers, --ramp, --hold and --oom-score-adj replace the file's.
    #[arg(long, value_name = "FILE")]
    pub from_stresschaos: Option<PathBuf>,

    /// Total memory to hold, across all workers: bytes (256Mi, 1.5Gi, 500M) or a percent of
    /// the target's memory limit (80%; the nearest limited ancestor's if the target has none).
    /// It is what the cgroup is charged: each stressor's own footprint is included. Above the
    /// limit is allowed: it forces OOM kills on purpose. When memstress itself is charged to
    /// the target (--self, or a target containing its own cgroup), the size is the cgroup's
    /// rise over its usage once the controller has loaded its probes and settled: the
    /// controller's own memory (tens of MiB while it parses the kernel's BTF) is not part of
    /// it; the summary states it as `controller_bytes`.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, allow_hyphen_values = true)]
    pub size: Option<SizeArg>,

    /// Instead of a fixed size: top the cgroup's working set (usage − inactive_file, as the
    /// kubelet computes it) up to this (90%, or bytes) and keep it there as the
    /// application's own use moves (stressors shrink when it grows, and grow when it frees).
    ///
    /// `available=SIZE` (100Mi, or a percent of MemTotal: 5%) holds the node's
    /// memory.available at SIZE instead: the figure the kubelet's eviction thresholds compare
    /// against (`memory.available<100Mi`), computed as the kubelet does: MemTotal − the root
    /// cgroup's working set (v1: memory.usage_in_bytes − total_inactive_file; v2: anon + file −
    /// inactive_file of the root's memory.stat). The stressors in the target grow until the
    /// node is there and follow the rest of the node (shrink when others grow, grow when they
    /// free), so that eviction can be tested rather than an OOM kill. The plan says which
    /// comes first: the target's limit (an OOM kill in its cgroup) or the node's
    /// --eviction-threshold; a goal within the loop's deadband of the threshold, or below it,
    /// is eviction and needs --allow-node-oom. memstress never takes the kernel's MemAvailable
    /// below a floor (1/64 of MemTotal, at least 32 MiB): the kubelet's figure leaves out
    /// kernel memory (slab, page tables, BPF maps), so on a node whose page cache is gone it
    /// runs ahead of MemAvailable (in a 512 MiB guest by 46-50 MiB, 61-68 MiB once the run
    /// holds its goal), and a goal that would need
    /// MemAvailable under the floor is refused, naming the lowest goal that works (a global
    /// OOM would come before it); a node that gets under the floor anyway makes the stressors
    /// shed memory, whatever the goal.
    #[arg(long, value_name = "SIZE|available=SIZE", value_parser = parse_fill_to, allow_hyphen_values = true)]
    pub fill_to: Option<FillToArg>,

    /// Instead of a size: hold the target's memory pressure (cgroup v2 PSI, memory.pressure)
    /// at a goal, `some=PCT` (the share of time at least one of its tasks waited on memory,
    /// avg10) or `full=PCT` (every task at once), by moving what the stressors hold. Pressure
    /// comes only from tasks that allocate or read: the stressors squeeze the rest of the
    /// domain under its memory.max (or under memory.high, with --throttle), so the target's
    /// page cache is reclaimed and refaults, its allocations reclaim first, and above
    /// memory.high they are throttled. An app that neither reads files nor allocates feels
    /// none of it: the loop then holds the most it may and says the goal is out of reach.
    /// avg10 is a 10 s average: the loop measures the stall share of its last ~2 s from the
    /// file's total, acts at most every 2 s in bounded steps, and reaches a goal in 10-30 s.
    /// It never lets the domain reach memory.max: the stressors hold at most the limit less
    /// a margin (an eighth of it, at least 16 MiB) less what else in the domain reclaim
    /// cannot free, and when the app grows into that margin (or an OOM kill comes anyway)
    /// it backs off at once and says so (`backing off: …`). Sample lines carry the goal and
    /// what the loop does. Needs a memory limit on the target or an ancestor, and a kernel
    /// with PSI (not booted with psi=0); refused on cgroup v1. With --hold, the hold starts
    /// when the goal is first reached (or found out of reach). Not with --size, --fill-to,
    /// --ramp, --kind file (page cache the stressors held would be reclaimed first: it
    /// squeezes nothing), --follow or --from-stresschaos.
    #[arg(long, value_name = "some=PCT|full=PCT", value_parser = parse_pressure)]
    pub pressure: Option<crate::stress::pressure::Goal>,

    /// Set the target's memory.high to this for the run (cgroup v2): bytes (64Mi) or a
    /// percent of the limit that applies (50%). Above it the kernel makes the cgroup's tasks
    /// reclaim and throttles them (they slow down; nothing is OOM-killed for it). Alone, it
    /// starts no stressors: the target's own processes are throttled, until --hold ends or
    /// the run is interrupted; with --size or --fill-to, the stressors push the cgroup into
    /// it. The original value is written back on every exit path, a SIGKILL of memstress
    /// included (its cleanup guard recorded it before the change, and keeps the target
    /// locked until it is restored); a value someone else wrote meanwhile is left. Samples
    /// say how often the cgroup went over it and, where fentry/fexit load, how long the
    /// kernel held its tasks (run_throttle). Refused on cgroup v1, which has no memory.high.
    #[arg(long, value_name = "SIZE", value_parser = parse_boxed_size, allow_hyphen_values = true)]
    pub throttle: Option<Box<SizeArg>>,

    /// Grow linearly to the size over this long (e.g. 30s), like a leak, from when the probes
    /// are attached; default: at once.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub ramp: Option<Duration>,

    /// Kind of memory: `anon` (default), `shmem` (a memfd: shared memory), or `file` (page
    /// cache of a file written in --file-dir: charged to the cgroup but reclaimable, so the
    /// usage rises while the working set does not).
    #[arg(long, value_enum, default_value_t = Kind::Anon, value_name = "KIND")]
    pub kind: Kind,

    /// Directory for --kind file (default /var/tmp). The file is unnamed (O_TMPFILE) and
    /// disappears with the stressor, whatever kills it. On tmpfs the pages are shmem.
    #[arg(long, value_name = "DIR")]
    pub file_dir: Option<PathBuf>,

    /// `hold` (default): touch each page once, then sleep with ~0% CPU. `keep-dirty`:
    /// rewrite every page once per --rewrite-every, so the pages stay active and dirty.
    #[arg(long, value_enum, default_value_t = Pattern::Hold, value_name = "PATTERN")]
    pub pattern: Pattern,

    /// With --pattern keep-dirty: rewrite every page once per this period (default 5s).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub rewrite_every: Option<Duration>,

    /// A percent --size means a percent of the node's MemTotal instead of a limit.
    #[arg(long)]
    pub of_node: bool,

    /// Number of stressor processes (1 to 1024, default 1); --size is split evenly between
    /// them (to the page). Each stressor is a process whose own footprint (~0.5 MiB: its
    /// runtime, page tables, kernel stack) is part of its share, so a share must be larger
    /// than that: the plan refuses more workers than the size can feed.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_WORKERS as i64))]
    pub workers: Option<u32>,

    /// Once all stressors are full, hold for this long (e.g. 30s, 10m). Default: until
    /// Ctrl-C or SIGTERM.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub hold: Option<Duration>,

    /// When the kernel OOM-kills a stressor: `report` it and keep going with the rest,
    /// `restart` it, or `stop` the run (exit code 3). Every kill is reported whatever the
    /// policy.
    #[arg(long, value_enum, default_value_t = OnOom::Report, value_name = "POLICY")]
    pub on_oom: OnOom,

    /// oom_score_adj for the stressors (-1000..1000; default: inherited). Lowering it below
    /// the current value needs CAP_SYS_RESOURCE.
    #[arg(long, value_name = "N", value_parser = parse_adj, allow_hyphen_values = true)]
    pub oom_score_adj: Option<i32>,

    /// Fault pages in with MADV_POPULATE_WRITE (fastest fill) instead of one write per page.
    #[arg(long)]
    pub populate: bool,

    /// Ask for transparent huge pages.
    #[arg(long)]
    pub thp: bool,

    /// Lock the stressors' memory (mlock) so it cannot be reclaimed.
    #[arg(long)]
    pub mlock: bool,

    /// Allow the root cgroup as a target (pressure on the whole node).
    #[arg(long)]
    pub allow_root_cgroup: bool,

    /// Allow a run whose OOM domain is the node to reach the node's eviction threshold or a
    /// global OOM. A target with no memory limit on it or any ancestor (or one larger than
    /// the node can give) is bounded only by the node: a size that would take the node's
    /// memory.available below --eviction-threshold, or past MemAvailable, is refused without
    /// this flag (exit code 1), because the kubelet's eviction or the global OOM kill it causes
    /// can take any process on the node (the kubelet, the container runtime, sshd).
    #[arg(long)]
    pub allow_node_oom: bool,

    /// The node's memory.available below which the kubelet evicts pods (default 100Mi, the
    /// kubelet's own `memory.available<100Mi`; 0: no eviction, only a global OOM counts).
    /// memory.available is computed as the kubelet does: MemTotal − the root cgroup's working
    /// set (usage − inactive_file). The plan says which the run meets first: the target's
    /// limit (an OOM kill in its cgroup) or this threshold.
    #[arg(long, value_name = "SIZE", value_parser = parse_threshold)]
    pub eviction_threshold: Option<u64>,

    /// Run the stressors as this user: a name, a uid, or uid:gid (default: nobody, when
    /// memstress may switch users; else its own uid). Stressors drop every capability and set
    /// no_new_privs before they exec, whatever the user.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Print the resolved plan (target, version, limit, usage, bytes per worker) and exit.
    #[arg(long)]
    pub dry_run: bool,
}

impl RunArgs {
    /// Refuses flags that would be silently ignored in combination (a usage error, exit code
    /// 2): every flag given must change what the run does.
    pub fn check(&self) -> Result<(), String> {
        let file = self.kind == Kind::File;
        if self.limit.is_some() && self.new.is_none() {
            return Err(
                "--limit sets the limit of a --new sandbox; an existing target keeps its own \
                 limit (a percent --size is of that limit)"
                    .to_owned(),
            );
        }
        if self.rewrite_every.is_some() && self.pattern != Pattern::KeepDirty {
            return Err(
                "--rewrite-every applies to --pattern keep-dirty (the default pattern touches \
                 each page once)"
                    .to_owned(),
            );
        }
        if self.file_dir.is_some() && !file {
            return Err(
                "--file-dir applies to --kind file (anon and shmem memory has no file)".to_owned(),
            );
        }
        for (given, flag) in [
            (self.mlock, "--mlock"),
            (self.populate, "--populate"),
            (self.thp, "--thp"),
        ] {
            if given && file {
                return Err(format!(
                    "{flag} applies to mapped memory (--kind anon or shmem); --kind file holds \
                     page cache written with write(2), which is not mapped"
                ));
            }
        }
        let percent =
            |a: Option<&SizeArg>| a.is_some_and(|a| matches!(a.spec, SizeSpec::Percent(_)));
        let available = self
            .fill_to
            .as_ref()
            .filter(|f| f.goal == FillGoal::Available);
        if let Some(goal) = available
            && self.of_node
        {
            return Err(format!(
                "--of-node with --fill-to {}: memory.available is the node's already (a percent \
                 is of its MemTotal)",
                goal.size.given
            ));
        }
        let fill_to_size = self.fill_to.as_ref().map(|f| &f.size);
        if self.of_node && !percent(self.size.as_ref()) && !percent(fill_to_size) {
            return Err(
                "--of-node makes a percent --size or --fill-to a percent of the node's memory; \
                 with an absolute size it changes nothing"
                    .to_owned(),
            );
        }
        if self.pressure.is_some() && self.from_stresschaos.is_some() {
            return Err(
                "--from-stresschaos runs the file's fixed size; --pressure's closed loop decides \
                 what the stressors hold: give one of them"
                    .to_owned(),
            );
        }
        if self.ramp.is_some() && self.fill_to.is_some() {
            return Err(
                "--ramp grows a fixed --size over time; --fill-to follows the working set (or \
                 the node's memory.available), which has no ramp: give one of them"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// `memstress replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The log to read: a file, or `-` for standard input.
    #[arg(value_name = "FILE|-")]
    pub file: PathBuf,

    /// Print the plan of each report (its tasks ranked with the kernel's formula) and exit;
    /// needs no privileges. Without it (root): each report is reproduced in a sandbox cgroup
    /// at its limit (scaled), one process per task that matters holding that task's size
    /// with its oom_score_adj, then an allocation until the OOM; the kernel's choice is
    /// reported as `replay_result`, with whether it is the report's victim.
    #[arg(long)]
    pub dry_run: bool,

    /// Scale the report's limit and every task's size by this factor (e.g. 0.25). Default:
    /// 1, or what keeps the limit under a quarter of this node's available memory. The
    /// ranking is kept: every task's points scale alike.
    #[arg(long, value_name = "F", value_parser = parse_scale)]
    pub scale: Option<f64>,

    /// Replay at most this many tasks one process each: the first by the kernel's formula,
    /// and the kernel's victim. The others' memory is held by a filler that is no candidate.
    #[arg(long, value_name = "N", default_value_t = crate::replay::reproduce::DEFAULT_TASKS,
          value_parser = parse_tasks)]
    pub tasks: usize,

    /// Only the Nth report of the input (1-based); default: every report, in order.
    #[arg(long, value_name = "N", value_parser = parse_report)]
    pub report: Option<usize>,

    /// Give up on a reproduction that has not ended in an OOM kill after this long.
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "60s")]
    pub timeout: Duration,
}

fn parse_tasks(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(format!("`{text}` is not a number of tasks from 1 to 64")),
    }
}

fn parse_report(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{text}` is not a report number (1 is the first)")),
    }
}

fn parse_scale(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if f > 0.0 && f.is_finite() => Ok(f),
        _ => Err(format!(
            "`{text}` is not a scale: give a factor above 0, e.g. 0.5"
        )),
    }
}

/// `memstress demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Limit of the demo's sandbox cgroup.
    #[arg(long, value_name = "SIZE", value_parser = parse_limit, default_value = "128Mi")]
    pub limit: u64,

    /// Give up if no OOM kill was seen after this long.
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "60s")]
    pub timeout: Duration,
}

/// Writes the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut cmd, "memstress", out);
}

/// The man pages: `memstress.1`, then `memstress-<sub>.1` for every visible subcommand, as
/// (file name, roff).
pub fn man_pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let mut pages = Vec::new();
    let mut top = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut top)?;
    pages.push(("memstress.1".to_owned(), top));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("memstress-{}", sub.get_name());
        // clap names are `&'static str` (without its `string` feature): a few bytes, once.
        let static_name: &'static str = name.clone().leak();
        let sub = sub.clone().name(static_name).bin_name(static_name);
        let mut page = Vec::new();
        clap_mangen::Man::new(sub).render(&mut page)?;
        pages.push((format!("{name}.1"), page));
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[test]
    fn usage_errors_are_one_line() {
        for args in [
            &["memstress", "run", "--new", "x", "--size", "1Mi"][..],
            &[
                "memstress",
                "run",
                "--new",
                "x",
                "--limit",
                "0",
                "--size",
                "1Mi",
            ],
            &["memstress", "run", "--pid", "abc", "--size", "1Mi"],
            &["memstress", "run", "--pid", "-1", "--size", "1Mi"],
            &["memstress", "frobnicate"],
        ] {
            let e = Cli::try_parse_from(args).unwrap_err();
            let line = one_line_usage_error(&e.render().to_string());
            assert!(!line.contains('\n'), "{line}");
            assert!(line.starts_with("memstress: error: "), "{line}");
            assert!(!line.contains("Usage:"), "{line}");
        }
        let e =
            Cli::try_parse_from(["memstress", "run", "--new", "x", "--size", "1Mi"]).unwrap_err();
        assert!(one_line_usage_error(&e.render().to_string()).contains("--limit <SIZE>"));
    }

    #[test]
    fn parses_fill_to_available() {
        let ok = |s: &str| parse_fill_to(s).unwrap();
        assert_eq!(ok("90%").goal, FillGoal::WorkingSet);
        let a = ok("available=100Mi");
        assert_eq!(a.goal, FillGoal::Available);
        assert_eq!(a.size.spec, SizeSpec::Bytes(100 << 20));
        assert_eq!(a.size.given, "available=100Mi");
        assert_eq!(ok(" available = 5% ").size.spec, SizeSpec::Percent(5.0));
        for (bad, needle) in [
            ("available=", "needs a size"),
            ("available= ", "needs a size"),
            ("available=-5Mi", "negative"),
            ("available=0", "greater than zero"),
            ("available=lots", "not a number"),
            ("available=12Qi", "unknown unit"),
            ("available=100%", "below 100%"),
            ("available=250%", "below 100%"),
            ("availble=100Mi", "not a --fill-to goal"),
            ("=100Mi", "not a --fill-to goal"),
        ] {
            let e = parse_fill_to(bad).unwrap_err();
            assert!(e.contains(needle), "`{bad}`: {e}");
            assert!(!e.contains('\n'), "`{bad}`: {e}");
        }
    }

    /// `--fill-to available=` with flags it cannot go with: a usage error (exit code 2), one
    /// line each.
    #[test]
    fn fill_to_available_refuses_what_it_cannot_use() {
        let run = |extra: &[&str]| {
            let mut args = vec![
                "memstress",
                "run",
                "--cgroup",
                "/x",
                "--fill-to",
                "available=100Mi",
            ];
            args.extend_from_slice(extra);
            match Cli::try_parse_from(&args) {
                Ok(Cli {
                    command: Command::Run(run),
                    ..
                }) => run.check().err(),
                Ok(_) => unreachable!(),
                Err(e) => Some(one_line_usage_error(&e.render().to_string())),
            }
        };
        assert_eq!(run(&[]), None);
        assert_eq!(run(&["--workers", "4", "--hold", "1m"]), None);
        for (extra, needle) in [
            (&["--size", "1Mi"][..], "cannot be used with"),
            (&["--ramp", "10s"], "has no ramp"),
            (&["--of-node"], "the node's already"),
        ] {
            let e = run(extra).unwrap_or_else(|| panic!("{extra:?} was accepted"));
            assert!(e.contains(needle), "{extra:?}: {e}");
            assert!(!e.contains('\n'), "{extra:?}: {e}");
        }
    }

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `memstress <cmd> --help` shows examples for every command a user can run.
    #[test]
    fn every_subcommand_has_examples() {
        let mut cmd = Cli::command();
        cmd.build();
        for sub in cmd
            .get_subcommands_mut()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            let help = sub.render_long_help().to_string();
            assert!(
                help.contains("EXAMPLES:\n  "),
                "`memstress {} --help` has no examples:\n{help}",
                sub.get_name()
            );
        }
    }

    #[test]
    fn exit_codes_are_in_the_help() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("  130, 143  interrupted"), "{help}");
        for code in [
            crate::exit::SUCCESS,
            crate::exit::FAILURE,
            crate::exit::USAGE,
            crate::exit::OOM_STOP,
            crate::exit::TARGET_GONE,
            crate::exit::BUSY,
        ] {
            assert!(
                help.lines().any(|l| l.starts_with(&format!("  {code}  "))),
                "exit code {code} is not documented in --help:\n{help}"
            );
        }
    }

    #[test]
    fn man_pages_cover_every_command() {
        let pages = man_pages().unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        for want in [
            "memstress.1",
            "memstress-watch.1",
            "memstress-run.1",
            "memstress-demo.1",
            "memstress-replay.1",
        ] {
            assert!(names.contains(&want), "{names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("__")), "{names:?}");
        let top = String::from_utf8(pages[0].1.clone()).unwrap();
        assert!(top.starts_with(".ie"), "{top}");
        assert!(top.contains(".TH memstress 1"), "{top}");
        let run = String::from_utf8(pages[2].1.clone()).unwrap();
        assert!(run.contains("\\-\\-size"), "run's page documents --size");
    }

    #[test]
    fn completions_know_the_subcommands() {
        let mut out = Vec::new();
        completions(clap_complete::Shell::Bash, &mut out);
        let script = String::from_utf8(out).unwrap();
        for word in ["watch", "run", "demo", "--fill-to", "--metrics"] {
            assert!(script.contains(word), "bash completion lacks {word}");
        }
    }
}
