//! Runs a scenario: creates its cgroups under a lab root, starts its applications under a
//! supervisor that checks their liveness, runs its steps (memstress runs, resizes, waits)
//! while `memstress watch` reports every OOM kill and a sampler records the cgroups' own
//! counters every 100 ms, then checks the expectations and writes `events.jsonl`,
//! `report.md`, `timeline.svg` and `dmesg.txt` (the kernel's messages of the scenario, as
//! `dmesg` prints them). A `replay` step runs `memstress replay` on a kernel log: a file
//! beside the scenario, or the messages the scenario has seen so far.

use std::{
    collections::HashMap,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use memstress::{
    size::SizeSpec,
    target::cgroup::{Cgroup, Hierarchy, Version},
};
use serde_json::{Value, json};

use super::{
    app::AppArgs,
    report,
    scenario::{AppSpec, CgroupSpec, DMESG, Liveness, Scenario},
};
use crate::{Kmsg, command_in, parse_kill};

/// Where and how to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The memstress binary.
    pub memstress: PathBuf,
    /// `host`, `6.12`, `6.1`: how the report names the kernel.
    pub kernel_label: String,
    /// Name of the lab root cgroup, under the memory hierarchy's root.
    pub root_name: String,
    /// Output: `<out>/<scenario name>/`.
    pub out: PathBuf,
    /// What `{filedir}` stands for: a directory on a disk (page cache on tmpfs is shmem).
    pub file_dir: PathBuf,
}

/// How a scenario ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Every expectation held.
    pub passed: bool,
    /// Why it was not run (then `passed` is true).
    pub skipped: Option<String>,
}

/// The events of one scenario, timestamped from its start.
#[derive(Clone)]
struct Recorder {
    start: Instant,
    /// CLOCK_MONOTONIC at `start`, in µs: kmsg timestamps are on that clock.
    start_us: u64,
    events: Arc<Mutex<Vec<Value>>>,
}

impl Recorder {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            start_us: memstress::output::monotonic_ns() / 1000,
            events: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn t_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn push(&self, mut event: Value) {
        if let Value::Object(map) = &mut event
            && !map.contains_key("t_ms")
        {
            map.insert("t_ms".into(), json!(self.t_ms()));
        }
        self.events.lock().expect("recorder lock").push(event);
    }

    fn snapshot(&self) -> Vec<Value> {
        self.events.lock().expect("recorder lock").clone()
    }
}

/// The kernel's messages of one scenario: read from /dev/kmsg as they come, kept in order.
struct Dmesg {
    kmsg: Kmsg,
    /// Every message so far: (µs since boot, text as /dev/kmsg gives it).
    seen: Vec<(u64, String)>,
}

impl Dmesg {
    fn open() -> Self {
        Self {
            kmsg: Kmsg::open(),
            seen: Vec::new(),
        }
    }

    /// Takes in what the kernel logged since the last call (after letting the reader catch
    /// up, 100 ms).
    fn catch_up(&mut self) {
        let new = self.kmsg.entries();
        self.seen.extend(new);
    }

    /// The `Killed process` lines so far.
    fn kills(&self) -> usize {
        self.seen
            .iter()
            .filter(|(_, m)| parse_kill(m).is_some())
            .count()
    }
}

/// Kernel messages as `dmesg` (util-linux, reading /dev/kmsg) prints them:
/// `[%5lu.%06lu] message`, from their /dev/kmsg timestamps (µs since boot). /dev/kmsg escapes
/// a backslash and every byte that is not printable ASCII as `\xNN`; dmesg undoes that, then
/// prints a control character (or a byte of invalid UTF-8) as `\xNN` again, and a line break
/// inside a message (6.1 prints a memcg's memory.stat as one message) as a new line indented
/// under the message.
pub fn dmesg_text(entries: &[(u64, String)]) -> String {
    let mut out = String::new();
    for (us, message) in entries {
        let prefix = format!("[{:5}.{:06}] ", us / 1_000_000, us % 1_000_000);
        out.push_str(&prefix);
        out.push_str(&dmesg_message(&kmsg_bytes(message), prefix.len()));
        out.push('\n');
    }
    out
}

/// A /dev/kmsg message's bytes, its `\xNN` escapes undone.
fn kmsg_bytes(message: &str) -> Vec<u8> {
    let raw = message.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw
            .get(i + 2..i + 4)
            .filter(|_| raw[i] == b'\\' && raw[i + 1] == b'x')
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(raw[i]);
                i += 1;
            }
        }
    }
    out
}

/// What dmesg prints of a message's bytes, continuation lines indented by `indent`.
fn dmesg_message(bytes: &[u8], indent: usize) -> String {
    let mut out = String::with_capacity(bytes.len());
    let hex = |out: &mut String, bytes: &[u8]| {
        for b in bytes {
            out.push_str(&format!("\\x{b:02x}"));
        }
    };
    let mut chunks = bytes.utf8_chunks().peekable();
    while let Some(chunk) = chunks.next() {
        let mut chars = chunk.valid().chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\n' {
                out.push('\n');
                let more = chars.peek().is_some() || chunks.peek().is_some();
                if more || !chunk.invalid().is_empty() {
                    out.extend(std::iter::repeat_n(' ', indent));
                }
            } else if c.is_control() && !c.is_whitespace() {
                hex(&mut out, c.encode_utf8(&mut [0; 4]).as_bytes());
            } else {
                out.push(c);
            }
        }
        hex(&mut out, chunk.invalid());
    }
    out
}

/// A memstress process whose JSON lines are recorded.
struct Recorded {
    child: Child,
    reader: Option<JoinHandle<()>>,
}

impl Recorded {
    fn start(
        rec: &Recorder,
        memstress: &Path,
        args: &[String],
        source: &'static str,
        step: Option<usize>,
        kills: Option<Arc<AtomicU32>>,
    ) -> Result<Self> {
        let mut child = Command::new(memstress)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {} {}", memstress.display(), args.join(" ")))?;
        let out = child.stdout.take().context("memstress stdout")?;
        let rec = rec.clone();
        let reader = thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let Ok(event) = serde_json::from_str::<Value>(&line) else {
                    rec.push(json!({"type": "note", "text": format!("{source}: {line}")}));
                    continue;
                };
                if event["type"] == "oom_kill"
                    && let Some(k) = &kills
                {
                    k.fetch_add(1, Ordering::SeqCst);
                }
                rec.push(
                    json!({"type": "memstress", "source": source, "step": step, "event": event}),
                );
            }
        });
        Ok(Self {
            child,
            reader: Some(reader),
        })
    }

    fn interrupt(&self) {
        self.signal(libc::SIGINT);
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child (not reaped yet: its pid is still ours).
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits until `deadline`; kills it past that. Returns the exit code (None: signal).
    fn wait(mut self, deadline: Instant) -> Option<i32> {
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                break self.child.wait().ok();
            }
            thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        status.and_then(|s| s.code())
    }
}

/// A supervised application.
struct AppHandle {
    name: String,
    resize: mpsc::Sender<u64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// One incarnation of an application process.
struct AppProcess {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    seq: u64,
}

impl AppProcess {
    fn start(
        launch: &Launch,
        cgroup: &Cgroup,
        name: &str,
        bytes: u64,
        adj: Option<i32>,
    ) -> Result<Self> {
        let (program, args) = match launch {
            Launch::Idle(memstress) => (
                memstress,
                ["__stressor", "--name", name, "--size", &bytes.to_string()]
                    .map(str::to_owned)
                    .to_vec(),
            ),
            Launch::Reread(agent, app) => (
                agent,
                AppArgs {
                    name: name.to_owned(),
                    size: bytes,
                    ..app.clone()
                }
                .to_args(),
            ),
        };
        let mut child = command_in(cgroup, program.to_str().context("app program path")?, adj)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start app {name}"))?;
        let stdin = child.stdin.take().context("app stdin")?;
        let stdout = child.stdout.take().context("app stdout")?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut app = Self {
            child,
            stdin,
            lines,
            seq: 0,
        };
        if !app.answers(Duration::from_secs(20), 0) {
            let _ = app.child.kill();
            bail!("app {name} did not come up");
        }
        Ok(app)
    }

    /// Waits for the `held … seq` answer to command `seq`.
    fn answers(&mut self, timeout: Duration, seq: u64) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("held ") && line.ends_with(&format!(" {seq}")) => {
                    return true;
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    /// The liveness check: holding `bytes`, it must answer a command within a second.
    fn live(&mut self, bytes: u64) -> bool {
        self.seq += 1;
        if writeln!(self.stdin, "size {bytes} {}", self.seq).is_err() {
            return false;
        }
        self.answers(Duration::from_secs(1), self.seq)
    }

    fn exit_signal(&mut self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt as _;
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.signal();
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How an application process is started.
#[derive(Clone, Debug)]
enum Launch {
    /// `memstress __stressor`: it holds its memory and sleeps.
    Idle(PathBuf),
    /// `memstress-lab app` (this agent): it holds its memory and re-reads a file working set.
    Reread(PathBuf, AppArgs),
}

impl Launch {
    fn of(spec: &AppSpec, opts: &Options) -> Result<Self> {
        let Some(reread) = &spec.reread else {
            return Ok(Self::Idle(opts.memstress.clone()));
        };
        let agent = std::env::current_exe().context("the lab agent's own path")?;
        Ok(Self::Reread(
            agent,
            AppArgs {
                name: spec.name.clone(),
                size: 0,
                reread: SizeSpec::parse_bytes(reread)?,
                dir: opts.file_dir.clone(),
                threads: spec.threads.unwrap_or(1),
                block: spec
                    .block
                    .as_deref()
                    .map(SizeSpec::parse_bytes)
                    .transpose()?
                    .unwrap_or(4096),
                mmap: spec.mmap,
                work: spec.work.unwrap_or(0),
                skew: spec.skew.unwrap_or(1),
            },
        ))
    }
}

/// What the supervisor needs to restart a container.
struct Container {
    cgroup: Cgroup,
    spec: CgroupSpec,
}

fn apply_cgroup_settings(cgroup: &Cgroup, spec: &CgroupSpec) -> Result<()> {
    if let Some(limit) = &spec.limit {
        cgroup.set_limit(SizeSpec::parse_bytes(limit)?)?;
    }
    if spec.oom_group {
        fs::write(cgroup.dir.join("memory.oom.group"), "1")
            .with_context(|| format!("memory.oom.group on {}", cgroup.path))?;
    }
    Ok(())
}

/// An app the lab keeps alive (its liveness probe) on a thread of its own.
struct Supervised {
    rec: Recorder,
    launch: Launch,
    spec: AppSpec,
    container: Container,
    process: AppProcess,
    bytes: u64,
    adj: Option<i32>,
    resize: mpsc::Receiver<u64>,
    stop: Arc<AtomicBool>,
}

fn supervise(app: Supervised) {
    let Supervised {
        rec,
        launch,
        spec,
        container,
        mut process,
        mut bytes,
        adj,
        resize,
        stop,
    } = app;
    let name = spec.name.clone();
    let mut alive = true;
    while !stop.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(200));
        if !alive {
            continue;
        }
        while let Ok(new) = resize.try_recv() {
            bytes = new;
        }
        if process.live(bytes) || stop.load(Ordering::SeqCst) {
            continue;
        }
        let pid = process.child.id();
        rec.push(json!({"type": "app", "name": name, "event": "liveness_failed", "pid": pid}));
        let signal = process.exit_signal();
        let running = matches!(process.child.try_wait(), Ok(None));
        if running && spec.liveness == Liveness::None {
            // Alive but too slow to answer (throttled, say): not dead, and checked again.
            rec.push(json!({"type": "app", "name": name, "event": "unresponsive", "pid": pid}));
            continue;
        }
        rec.push(
            json!({"type": "app", "name": name, "event": "killed", "pid": pid, "signal": signal}),
        );
        let restart = match spec.liveness {
            Liveness::None => {
                alive = false;
                continue;
            }
            Liveness::Restart => Ok(()),
            Liveness::RestartCgroup => {
                // A container restart: everything in the cgroup dies with the app, and the
                // cgroup is made anew.
                let removed = container.cgroup.remove(Duration::from_secs(10));
                removed.map_err(anyhow::Error::from).and_then(|()| {
                    let parent = container.cgroup.parent().context("container parent")?;
                    let leaf = container.cgroup.name().to_owned();
                    let fresh = parent.create_child(&leaf)?;
                    apply_cgroup_settings(&fresh, &container.spec)
                })
            }
        };
        if let Err(e) = restart {
            rec.push(json!({"type": "note", "text": format!("cannot restart {name}: {e:#}")}));
            alive = false;
            continue;
        }
        match AppProcess::start(&launch, &container.cgroup, &name, bytes, adj) {
            Ok(p) => {
                rec.push(json!({
                    "type": "app", "name": name, "event": "restarted", "pid": p.child.id(),
                    "container_restart": spec.liveness == Liveness::RestartCgroup,
                }));
                process = p;
            }
            Err(e) => {
                rec.push(json!({"type": "note", "text": format!("cannot restart {name}: {e:#}")}));
                alive = false;
            }
        }
    }
    let pid = process.child.id();
    process.kill();
    rec.push(json!({"type": "app", "name": name, "event": "stopped", "pid": pid}));
}

fn start_app(
    rec: &Recorder,
    opts: &Options,
    spec: &AppSpec,
    cgroups: &HashMap<String, (Cgroup, CgroupSpec)>,
) -> Result<AppHandle> {
    let (cgroup, cgroup_spec) = cgroups
        .get(&spec.cgroup)
        .with_context(|| format!("no cgroup {}", spec.cgroup))?;
    let bytes = SizeSpec::parse_bytes(&spec.size)?;
    let mut adj = spec.oom_score_adj;
    let launch = Launch::of(spec, opts)?;
    let process = match AppProcess::start(&launch, cgroup, &spec.name, bytes, adj) {
        Ok(p) => p,
        Err(e) if spec.fallback_oom_score_adj.is_some() => {
            adj = spec.fallback_oom_score_adj;
            let show = |a: Option<i32>| a.map_or_else(|| "inherited".to_owned(), |a| a.to_string());
            rec.push(json!({"type": "note", "text": format!(
                "{}: oom_score_adj {} could not be set ({e:#}; lowering it needs CAP_SYS_RESOURCE): using {}",
                spec.name, show(spec.oom_score_adj), show(adj)
            )}));
            AppProcess::start(&launch, cgroup, &spec.name, bytes, adj)?
        }
        Err(e) => return Err(e),
    };
    rec.push(
        json!({"type": "app", "name": spec.name, "event": "started", "pid": process.child.id(),
        "oom_score_adj": adj, "bytes": bytes, "cgroup": spec.cgroup}),
    );
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let container = Container {
        cgroup: cgroup.clone(),
        spec: cgroup_spec.clone(),
    };
    let thread = {
        let (rec, spec, stop) = (rec.clone(), spec.clone(), stop.clone());
        thread::spawn(move || {
            supervise(Supervised {
                rec,
                launch,
                spec,
                container,
                process,
                bytes,
                adj,
                resize: rx,
                stop,
            })
        })
    };
    Ok(AppHandle {
        name: spec.name.clone(),
        resize: tx,
        stop,
        thread: Some(thread),
    })
}

fn sampler(rec: Recorder, cgroups: Vec<(String, Cgroup)>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut tick = 0u64;
        while !stop.load(Ordering::SeqCst) {
            for (name, cgroup) in &cgroups {
                let Ok(c) = cgroup.counters() else { continue };
                let limit = cgroup.limit().ok().flatten();
                let mut sample = json!({"type": "sample", "cgroup": name, "usage_bytes": c.usage_bytes,
                    "working_set_bytes": c.working_set_bytes, "limit_bytes": limit,
                    "limit_hits": c.limit_hits, "oom_kills": c.oom_kills});
                // v2: memory.high (bytes, or "max"), memory.events `high` and the cgroup's
                // PSI, read from the files themselves (not from memstress).
                if cgroup.hierarchy.version == Version::V2 {
                    if let Ok(high) = fs::read_to_string(cgroup.dir.join("memory.high")) {
                        let high = high.trim();
                        sample["memory_high"] = high
                            .parse::<u64>()
                            .map_or_else(|_| json!(high), |b| json!(b));
                    }
                    if let Ok(n) = cgroup.high_events() {
                        sample["high_events"] = json!(n);
                    }
                    // Once a second, the reclaim counters that say where the pressure
                    // came from (the app's refaults counted as workingset, or reclaim only).
                    if tick.is_multiple_of(10)
                        && let Ok(stat) = cgroup.stat()
                    {
                        sample["stat"] = reclaim_counters(&stat);
                    }
                    if let Ok(text) = fs::read_to_string(cgroup.dir.join("memory.pressure")) {
                        for line in ["some", "full"] {
                            if let Some(avg10) = psi_avg10(&text, line) {
                                sample[format!("psi_{line}_avg10")] = json!(avg10);
                            }
                        }
                    }
                }
                rec.push(sample);
            }
            thread::sleep(Duration::from_millis(100));
            tick += 1;
        }
    })
}

/// The `memory.stat` (v2) counters of reclaim and refaults the lab records once a second.
const RECLAIM_COUNTERS: [&str; 7] = [
    "pgscan",
    "pgsteal",
    "pgmajfault",
    "workingset_refault_file",
    "workingset_activate_file",
    "workingset_restore_file",
    "file",
];

/// [`RECLAIM_COUNTERS`] of a parsed `memory.stat`, as a JSON object (absent keys left out).
fn reclaim_counters(stat: &HashMap<String, u64>) -> Value {
    RECLAIM_COUNTERS
        .iter()
        .filter_map(|&key| Some((key.to_owned(), json!(stat.get(key)?))))
        .collect()
}

/// The node's memory as the lab reads it, in bytes: the kubelet's `memory.available` and
/// the kernel's MemAvailable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeReading {
    /// MemTotal.
    pub mem_total: u64,
    /// MemAvailable.
    pub mem_available: u64,
    /// `memory.available` as the kubelet computes it: MemTotal − the root cgroup's working
    /// set (`None`: the root memcg cannot be read).
    pub available: Option<u64>,
}

/// `KEY: N kB` of /proc/meminfo, in bytes.
fn meminfo(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

/// `KEY N` of a memory.stat.
fn stat(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))?
        .trim()
        .parse()
        .ok()
}

/// The node's memory from /proc/meminfo and the root memcg's files, computed here the way
/// the kubelet (cAdvisor) does, apart from memstress's own code: v1, `memory.usage_in_bytes`
/// − `total_inactive_file`; v2 (no `memory.current` at the root), `anon` + `file` −
/// `inactive_file` of the root's `memory.stat`.
pub fn node_reading(meminfo_text: &str, version: Version, root: &Path) -> Option<NodeReading> {
    let mem_total = meminfo(meminfo_text, "MemTotal")?;
    let mem_available = meminfo(meminfo_text, "MemAvailable")?;
    let memory_stat = fs::read_to_string(root.join("memory.stat")).unwrap_or_default();
    let working_set = match version {
        Version::V1 => fs::read_to_string(root.join("memory.usage_in_bytes"))
            .ok()
            .and_then(|u| u.trim().parse::<u64>().ok())
            .zip(stat(&memory_stat, "total_inactive_file"))
            .map(|(usage, inactive)| usage.saturating_sub(inactive)),
        Version::V2 => stat(&memory_stat, "anon")
            .zip(stat(&memory_stat, "file"))
            .zip(stat(&memory_stat, "inactive_file"))
            .map(|((anon, file), inactive)| (anon + file).saturating_sub(inactive)),
    };
    Some(NodeReading {
        mem_total,
        mem_available,
        available: working_set.map(|ws| mem_total.saturating_sub(ws)),
    })
}

/// This machine's memory now.
fn node_memory() -> Option<NodeReading> {
    let hierarchy = Hierarchy::discover().ok()?;
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    node_reading(&text, hierarchy.version, &hierarchy.root().dir)
}

/// Reads the node's memory every 100 ms: `node_sample` events.
fn node_sampler(rec: Recorder, root: Cgroup, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            if let Some(n) = fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|t| node_reading(&t, root.hierarchy.version, &root.dir))
            {
                rec.push(
                    json!({"type": "node_sample", "mem_total_bytes": n.mem_total,
                    "mem_available_bytes": n.mem_available, "available_bytes": n.available}),
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    })
}

/// `avg10` of a PSI file's `line` (`some` or `full`: `some avg10=12.34 avg60=… total=…`).
fn psi_avg10(text: &str, line: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' '))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?
        .parse()
        .ok()
}

/// Creates the scenario's cgroups under `root` (parents first, implicit ones too).
fn create_cgroups(
    root: &Cgroup,
    specs: &[CgroupSpec],
) -> Result<HashMap<String, (Cgroup, CgroupSpec)>> {
    let mut made: HashMap<String, (Cgroup, CgroupSpec)> = HashMap::new();
    let mut sorted: Vec<&CgroupSpec> = specs.iter().collect();
    sorted.sort_by_key(|s| s.name.matches('/').count());
    for spec in sorted {
        let mut parent = root.clone();
        let mut prefix = String::new();
        for part in spec.name.split('/') {
            prefix = if prefix.is_empty() {
                part.to_owned()
            } else {
                format!("{prefix}/{part}")
            };
            if let Some((c, _)) = made.get(&prefix) {
                parent = c.clone();
                continue;
            }
            enable_memory(&parent)?;
            let child = parent.create_child(part)?;
            let implicit = CgroupSpec {
                name: prefix.clone(),
                limit: None,
                oom_group: false,
            };
            made.insert(prefix.clone(), (child.clone(), implicit));
            parent = child;
        }
        apply_cgroup_settings(&parent, spec)?;
        made.insert(spec.name.clone(), (parent, spec.clone()));
    }
    Ok(made)
}

/// On v2, children of `cgroup` get the memory controller only if it is enabled in its
/// `cgroup.subtree_control`.
fn enable_memory(cgroup: &Cgroup) -> Result<()> {
    if cgroup.hierarchy.version == Version::V2 {
        fs::write(cgroup.dir.join("cgroup.subtree_control"), "+memory")
            .with_context(|| format!("enabling memory in {}", cgroup.path))?;
    }
    Ok(())
}

fn expand(
    run: &str,
    cgroups: &HashMap<String, (Cgroup, CgroupSpec)>,
    file_dir: &Path,
) -> Vec<String> {
    run.split_whitespace()
        .map(
            |word| match word.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
                Some("filedir") => file_dir.display().to_string(),
                Some(name) => cgroups
                    .get(name)
                    .map_or_else(|| word.to_owned(), |(c, _)| c.path.clone()),
                None => word.to_owned(),
            },
        )
        .collect()
}

/// Runs step `i`, `replay = file`: `memstress replay -o json` of the file, or of the kernel
/// messages seen so far (`{dmesg}`, written to a temporary file first), its lines recorded
/// like a run's. Returns its exit code.
#[allow(clippy::too_many_arguments)]
fn replay_step(
    i: usize,
    file: &str,
    scenario: &Scenario,
    opts: &Options,
    rec: &Recorder,
    dmesg: &mut Dmesg,
    kills: u32,
    deadline: Instant,
) -> Result<Option<i32>> {
    let (path, what, temporary) = if file == DMESG {
        // The watch reports a kill as the kernel logs it: give the log reader a moment to have
        // every kill's report.
        let caught_up = Instant::now() + Duration::from_secs(3);
        loop {
            dmesg.catch_up();
            if dmesg.kills() >= kills as usize || Instant::now() >= caught_up {
                break;
            }
        }
        let path = std::env::temp_dir().join(format!(
            "memstress-lab-{}-{}-step{i}-dmesg.txt",
            std::process::id(),
            scenario.name
        ));
        fs::write(&path, dmesg_text(&dmesg.seen))
            .with_context(|| format!("writing {}", path.display()))?;
        let what = format!(
            "memstress replay -o json {DMESG} ({} kernel messages so far)",
            dmesg.seen.len()
        );
        (path.clone(), what, Some(path))
    } else {
        let what = format!("memstress replay -o json {file}");
        (scenario.dir.join(file), what, None)
    };
    let args = vec![
        "replay".to_owned(),
        "-o".to_owned(),
        "json".to_owned(),
        path.display().to_string(),
    ];
    rec.push(json!({"type": "step", "index": i, "what": what, "phase": "start", "replay": file}));
    let code = Recorded::start(rec, &opts.memstress, &args, "replay", Some(i), None)
        .map(|child| child.wait(deadline));
    if let Some(t) = temporary {
        let _ = fs::remove_file(t);
    }
    code
}

/// Runs `scenario` and writes its files to `opts.out/<name>/`.
pub fn run(scenario: &Scenario, opts: &Options) -> Result<Outcome> {
    let dir = opts.out.join(&scenario.name);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let rec = Recorder::new();
    let hierarchy = Hierarchy::discover()?;
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    rec.push(json!({"type": "scenario", "name": scenario.name, "description": scenario.description,
        "kernel": kernel, "kernel_label": opts.kernel_label, "cgroup_version": hierarchy.version.number(),
        "started": memstress::output::now_rfc3339(), "monotonic_start_us": rec.start_us}));
    // A scenario that drives the node's own memory runs only in the guest it asks for: never
    // on this machine's own kernel, whatever its size.
    let too_big = scenario.memory.as_ref().and_then(|memory| {
        if opts.kernel_label == "host" {
            return Some(format!(
                "drives the node's own memory, so it runs only in a guest of {memory} \
                 (`memory`), never on this machine's own kernel"
            ));
        }
        scenario.skip_for_memory(node_memory().map_or(u64::MAX, |n| n.mem_total))
    });
    let outcome = if let Some(reason) = too_big {
        rec.push(
            json!({"type": "result", "passed": true, "skipped": reason, "duration_ms": rec.t_ms()}),
        );
        Outcome {
            passed: true,
            skipped: Some(reason),
        }
    } else if scenario.requires.as_deref() == Some("cgroup-v2") && hierarchy.version != Version::V2
    {
        let reason =
            "needs the memory controller on cgroup v2; this kernel has it on v1".to_owned();
        rec.push(
            json!({"type": "result", "passed": true, "skipped": reason, "duration_ms": rec.t_ms()}),
        );
        Outcome {
            passed: true,
            skipped: Some(reason),
        }
    } else {
        let root = hierarchy.root().create_child(&opts.root_name)?;
        let mut dmesg = Dmesg::open();
        let result = run_in(scenario, opts, &rec, &root, &mut dmesg);
        if let Err(e) = root.remove(Duration::from_secs(15)) {
            rec.push(json!({"type": "note", "text": format!("cleanup: {e}")}));
        }
        dmesg.catch_up();
        fs::write(dir.join("dmesg.txt"), dmesg_text(&dmesg.seen))
            .with_context(|| format!("writing {}", dir.join("dmesg.txt").display()))?;
        let (passed, error) = match result {
            Ok(passed) => (passed, None),
            Err(e) => (false, Some(format!("{e:#}"))),
        };
        rec.push(json!({"type": "result", "passed": passed, "skipped": null, "error": error, "duration_ms": rec.t_ms()}));
        Outcome {
            passed,
            skipped: None,
        }
    };
    let events = rec.snapshot();
    let mut file = fs::File::create(dir.join("events.jsonl"))?;
    for e in &events {
        writeln!(file, "{e}")?;
    }
    report::write_report(&dir, &events)?;
    Ok(outcome)
}

fn run_in(
    scenario: &Scenario,
    opts: &Options,
    rec: &Recorder,
    root: &Cgroup,
    dmesg: &mut Dmesg,
) -> Result<bool> {
    let deadline = Instant::now() + scenario.timeout;
    let cgroups = create_cgroups(root, &scenario.cgroups)?;
    let kills = Arc::new(AtomicU32::new(0));
    let watch = Recorded::start(
        rec,
        &opts.memstress,
        &[
            "watch".into(),
            "-o".into(),
            "json".into(),
            "--cgroup".into(),
            root.path.clone(),
        ],
        "watch",
        None,
        Some(kills.clone()),
    )?;
    let attached = Instant::now() + Duration::from_secs(20);
    while !rec
        .snapshot()
        .iter()
        .any(|e| e["event"]["type"] == "attached")
    {
        if Instant::now() > attached {
            bail!("memstress watch did not attach");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut names: Vec<(String, Cgroup)> = cgroups
        .iter()
        .filter(|(name, _)| scenario.cgroups.iter().any(|c| &c.name == *name))
        .map(|(n, (c, _))| (n.clone(), c.clone()))
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let sampler = sampler(rec.clone(), names, stop.clone());
    let node_sampler = scenario
        .watches_node()
        .then(|| node_sampler(rec.clone(), root.hierarchy.root(), stop.clone()));
    let mut apps = Vec::new();
    for spec in &scenario.apps {
        apps.push(start_app(rec, opts, spec, &cgroups)?);
    }
    let mut background = Vec::new();
    let mut failure = None;
    // When each replay ran, in kmsg time (µs since boot): the kills it reproduced are its own.
    let mut replays: Vec<(usize, u64, u64)> = Vec::new();
    for (i, step) in scenario.steps.iter().enumerate() {
        if Instant::now() >= deadline {
            failure = Some(format!(
                "the scenario's timeout ({:?}) passed at step {i}",
                scenario.timeout
            ));
            break;
        }
        if let Some(run) = &step.run {
            let mut args = vec!["run".to_owned(), "-o".to_owned(), "json".to_owned()];
            args.extend(expand(run, &cgroups, &opts.file_dir));
            rec.push(json!({"type": "step", "index": i, "what": format!("memstress {}", args.join(" ")), "phase": "start"}));
            let child = Recorded::start(rec, &opts.memstress, &args, "run", Some(i), None)?;
            if step.background {
                background.push((i, child));
            } else {
                let code = child.wait(deadline);
                rec.push(json!({"type": "step", "index": i, "phase": "end", "exit_code": code}));
            }
        } else if let Some(d) = step.sleep {
            rec.push(json!({"type": "step", "index": i, "what": format!("sleep {}", humantime::format_duration(d)), "phase": "start"}));
            thread::sleep(d.min(deadline.saturating_duration_since(Instant::now())));
            rec.push(json!({"type": "step", "index": i, "phase": "end"}));
        } else if let Some(app) = &step.resize {
            let size = step.size.as_deref().unwrap_or("0");
            rec.push(json!({"type": "step", "index": i, "what": format!("{app} holds {size}"), "phase": "start"}));
            let bytes = SizeSpec::parse_bytes(size)?;
            if let Some(a) = apps.iter().find(|a: &&AppHandle| &a.name == app) {
                let _ = a.resize.send(bytes);
            }
            rec.push(json!({"type": "step", "index": i, "phase": "end"}));
        } else if let Some(n) = step.wait_kills {
            rec.push(json!({"type": "step", "index": i, "what": format!("wait for {n} OOM kills"), "phase": "start"}));
            while kills.load(Ordering::SeqCst) < n && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            rec.push(json!({"type": "step", "index": i, "phase": "end", "kills": kills.load(Ordering::SeqCst)}));
        } else if let Some(target) = step.wait_full {
            rec.push(json!({"type": "step", "index": i, "what": format!("wait until the run of step {target} is full"), "phase": "start"}));
            let full = || {
                rec.snapshot().iter().any(|e| {
                    e["type"] == "memstress" && e["step"] == target && e["event"]["type"] == "full"
                })
            };
            while !full() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            rec.push(json!({"type": "step", "index": i, "phase": "end", "full": full()}));
        } else if let Some(target) = step.stop {
            let name = step.signal.as_deref().unwrap_or("SIGINT");
            let signal = super::scenario::SIGNALS
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(libc::SIGINT, |(_, s)| *s);
            rec.push(json!({"type": "step", "index": i, "what": format!("{name} to the run of step {target}"), "phase": "start"}));
            match background.iter().position(|(j, _)| *j == target) {
                Some(at) => {
                    let (j, child) = background.remove(at);
                    child.signal(signal);
                    let code = child.wait(Instant::now() + Duration::from_secs(15));
                    rec.push(json!({"type": "step", "index": j, "phase": "end", "exit_code": code, "signal": name}));
                }
                None => {
                    rec.push(json!({"type": "note", "text": format!("step {i}: step {target} runs no background run")}));
                }
            }
            rec.push(json!({"type": "step", "index": i, "phase": "end"}));
        } else if let Some(file) = &step.replay {
            let started_us = memstress::output::monotonic_ns() / 1000;
            let code = replay_step(
                i,
                file,
                scenario,
                opts,
                rec,
                dmesg,
                kills.load(Ordering::SeqCst),
                deadline,
            )?;
            rec.push(json!({"type": "step", "index": i, "phase": "end", "replay": file, "exit_code": code}));
            replays.push((i, started_us, memstress::output::monotonic_ns() / 1000));
        }
    }
    for (i, child) in background {
        child.interrupt();
        let code = child.wait(Instant::now() + Duration::from_secs(15));
        rec.push(json!({"type": "step", "index": i, "phase": "end", "exit_code": code}));
    }
    for app in &apps {
        app.stop.store(true, Ordering::SeqCst);
    }
    for mut app in apps {
        if let Some(t) = app.thread.take() {
            let _ = t.join();
        }
    }
    thread::sleep(Duration::from_millis(300));
    watch.interrupt();
    watch.wait(Instant::now() + Duration::from_secs(15));
    stop.store(true, Ordering::SeqCst);
    let _ = sampler.join();
    if let Some(n) = node_sampler {
        let _ = n.join();
    }
    dmesg.catch_up();
    for (ts_us, message) in &dmesg.seen {
        if let Some(k) = parse_kill(message) {
            let t_ms = ts_us.saturating_sub(rec.start_us) / 1000;
            let replay_step = replays
                .iter()
                .find(|(_, from, to)| (*from..=*to).contains(ts_us))
                .map(|(i, _, _)| *i);
            rec.push(json!({"type": "dmesg_kill", "t_ms": t_ms, "pid": k.pid, "comm": k.comm,
                "anon_rss_kb": k.anon_rss_kb, "file_rss_kb": k.file_rss_kb, "shmem_rss_kb": k.shmem_rss_kb,
                "pgtables_kb": k.pgtables_kb, "oom_score_adj": k.oom_score_adj,
                "replay_step": replay_step}));
        }
    }
    if let Some(f) = failure {
        rec.push(json!({"type": "note", "text": f}));
    }
    let events = rec.snapshot();
    let mut passed = true;
    for expect in &scenario.expects {
        let (name, expected, actual, ok) = super::expect::check(expect, &events, scenario);
        passed &= ok;
        rec.push(json!({"type": "expectation", "name": name, "expected": expected, "actual": actual, "passed": ok}));
    }
    // On every kernel the lab boots, memstress's output must keep to its documented schema
    // (fentry kernels fill fields this machine leaves null).
    let lines: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "memstress")
        .map(|e| &e["event"])
        .collect();
    let invalid: Vec<String> = lines
        .iter()
        .filter_map(|line| {
            crate::schema::check(line)
                .err()
                .map(|e| format!("{}: {e}", line["type"]))
        })
        .collect();
    passed &= invalid.is_empty();
    rec.push(json!({"type": "expectation",
        "name": "memstress's JSON lines match docs/events.schema.json",
        "expected": format!("{} valid lines", lines.len()),
        "actual": if invalid.is_empty() {
            format!("{} valid lines", lines.len())
        } else {
            format!("{} invalid, first: {}", invalid.len(), invalid[0])
        },
        "passed": invalid.is_empty()}));
    Ok(passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kubelet's figure, from the files as the kernels write them.
    #[test]
    fn reads_the_node_as_the_kubelet_does() {
        let dir = std::env::temp_dir().join(format!("memstress-lab-node-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let meminfo = "MemTotal:         474752 kB\nMemFree:          450256 kB\n\
                       MemAvailable:     444744 kB\n";
        fs::write(
            dir.join("memory.stat"),
            "anon 114688\nfile 1986560\nkernel 0\ninactive_anon 0\ninactive_file 4096\n",
        )
        .unwrap();
        let v2 = node_reading(meminfo, Version::V2, &dir).unwrap();
        assert_eq!(v2.mem_total, 474_752 * 1024);
        assert_eq!(v2.mem_available, 444_744 * 1024);
        assert_eq!(
            v2.available,
            Some(474_752 * 1024 - (114_688 + 1_986_560 - 4096))
        );
        fs::write(
            dir.join("memory.stat"),
            "cache 10\ninactive_file 7\ntotal_cache 500\ntotal_inactive_file 300\n",
        )
        .unwrap();
        fs::write(dir.join("memory.usage_in_bytes"), "1800\n").unwrap();
        let v1 = node_reading(meminfo, Version::V1, &dir).unwrap();
        assert_eq!(v1.available, Some(474_752 * 1024 - 1500));
        fs::remove_file(dir.join("memory.usage_in_bytes")).unwrap();
        assert_eq!(
            node_reading(meminfo, Version::V1, &dir).unwrap().available,
            None
        );
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(node_reading("MemTotal: 1 kB\n", Version::V2, &dir), None);
    }

    #[test]
    fn reads_psi_avg10() {
        let text = "some avg10=12.34 avg60=5.00 avg300=1.00 total=123456\n\
                    full avg10=10.00 avg60=4.00 avg300=0.50 total=100000\n";
        assert_eq!(psi_avg10(text, "some"), Some(12.34));
        assert_eq!(psi_avg10(text, "full"), Some(10.0));
        assert_eq!(psi_avg10("full avg10=1.00\n", "some"), None);
    }

    #[test]
    fn dmesg_text_is_what_dmesg_prints() {
        let entries = vec![
            (
                5_123_456,
                "tail invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0"
                    .to_owned(),
            ),
            (
                12_345_678_901,
                "Memory cgroup out of memory: Killed process 1234 (tail) total-vm:38384kB"
                    .to_owned(),
            ),
            // 6.1's memory.stat: one message of many lines.
            (
                7_404_341,
                "anon 49868800\\x0afile 0\\x0akernel 446464".to_owned(),
            ),
            // A backslash, a tab, UTF-8, a control character, invalid UTF-8, a stray `\x`.
            (
                7,
                "a \\x5c b\\x09c \\xc3\\xa9 \\x07 \\xff \\xzz \\x".to_owned(),
            ),
        ];
        assert_eq!(
            dmesg_text(&entries),
            "[    5.123456] tail invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, \
             oom_score_adj=0\n\
             [12345.678901] Memory cgroup out of memory: Killed process 1234 (tail) \
             total-vm:38384kB\n\
             [    7.404341] anon 49868800\n               file 0\n               kernel 446464\n\
             [    0.000007] a \\ b\tc é \\x07 \\xff \\xzz \\x\n"
        );
        assert_eq!(dmesg_text(&[]), "");
    }

    #[test]
    fn reclaim_counters_are_the_named_ones() {
        let stat = "anon 1000\nfile 4096\nfile_mapped 12\npgscan 30\npgsteal 20\n\
                    workingset_refault_file 7\nworkingset_restore_file x\npgfault 9\n";
        assert_eq!(
            reclaim_counters(&memstress::target::cgroup::parse_flat_keyed(stat)),
            json!({"file": 4096, "pgscan": 30, "pgsteal": 20, "workingset_refault_file": 7})
        );
    }
}
