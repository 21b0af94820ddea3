//! What the bench needs from the system: clocks, its own cgroups (removed on every exit
//! path), processes started inside them and read line by line with arrival times, CPU time
//! and peak RSS of other processes, and the kernel log.
//!
//! xtask cannot use the `memstress` library for cgroups: that would make building xtask
//! need the BPF toolchain xtask itself installs.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _},
    os::{
        fd::AsRawFd as _,
        unix::{fs::OpenOptionsExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Every cgroup the bench makes is named `memstress-bench-<pid>-<tag>`.
pub const PREFIX: &str = "memstress-bench-";

/// CLOCK_MONOTONIC in ns: the clock of BPF timestamps (`bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes Ctrl-C and SIGTERM end the bench through its normal paths (every guard dropped, so
/// every cgroup removed) instead of killing it where it stands.
pub fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Fails once the bench was asked to stop.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps, waking early (with an error) when interrupted.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Niceness of the bench and of everything it starts.
const NICE: i32 = -10;

/// Runs the bench, and everything it starts (children inherit it), at nice -10: on a
/// machine shared with builds at nice 0, the measured processes then get most of a CPU when
/// they want one, so that the figures measure them rather than the neighbours. Every tool
/// and peer runs at the same priority.
pub fn raise_priority() {
    // SAFETY: setpriority on this thread (the main one, before any other starts: new
    // threads and children inherit it).
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) } != 0 {
        eprintln!(
            "bench: warning: cannot run at nice {NICE} ({}); figures will be noisier",
            std::io::Error::last_os_error()
        );
    }
}

/// The memory controller's hierarchy.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    /// Its mount point.
    pub root: PathBuf,
    /// cgroup v2 (else v1).
    pub v2: bool,
}

impl Hierarchy {
    /// Finds it: the v1 `memory` mount, else a cgroup2 mount whose root lists `memory`.
    pub fn discover() -> Result<Self> {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        if v1.join("memory.limit_in_bytes").exists() || v1.join("memory.usage_in_bytes").exists() {
            return Ok(Self {
                root: v1.to_owned(),
                v2: false,
            });
        }
        let v2 = Path::new("/sys/fs/cgroup");
        if fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"))
        {
            return Ok(Self {
                root: v2.to_owned(),
                v2: true,
            });
        }
        bail!("no memory cgroup controller is mounted (neither v1 at /sys/fs/cgroup/memory nor v2)")
    }

    /// Removes cgroups an earlier bench left behind: named `memstress-bench-<pid>-*` where
    /// process <pid> is gone. Nothing else is touched.
    pub fn sweep(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let owner = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if let Some(pid) = owner
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                eprintln!("bench: removing leftover cgroup {}", entry.path().display());
                if let Err(e) = remove_tree(&entry.path()) {
                    eprintln!("bench: warning: {}: {e}", entry.path().display());
                }
            }
        }
    }
}

/// A cgroup the bench made; dropping it kills what is inside and removes it (children
/// first).
#[derive(Debug)]
pub struct BenchCgroup {
    /// Directory under the mount.
    pub dir: PathBuf,
    /// Path as /proc/PID/cgroup shows it (what `memstress --cgroup` takes).
    pub path: String,
    v2: bool,
    owned: bool,
}

impl BenchCgroup {
    /// Creates `memstress-bench-<pid>-<tag>` under the hierarchy's root, with `limit` bytes.
    pub fn new(h: &Hierarchy, tag: &str, limit: Option<u64>) -> Result<Self> {
        let name = format!("{PREFIX}{}-{tag}", std::process::id());
        Self::create(&h.root, &format!("/{name}"), h.v2, limit, true)
    }

    /// A child cgroup (removed with its parent, or on its own when dropped).
    pub fn child(&self, name: &str, limit: Option<u64>) -> Result<Self> {
        if self.v2 {
            let control = self.dir.join("cgroup.subtree_control");
            fs::write(&control, "+memory")
                .with_context(|| format!("enabling memory in {}", control.display()))?;
        }
        let root = self
            .dir
            .ancestors()
            .nth(self.path.matches('/').count())
            .context("cgroup directory above the mount")?
            .to_owned();
        Self::create(
            &root,
            &format!("{}/{name}", self.path),
            self.v2,
            limit,
            true,
        )
    }

    fn create(root: &Path, path: &str, v2: bool, limit: Option<u64>, owned: bool) -> Result<Self> {
        let dir = root.join(path.trim_start_matches('/'));
        fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        let cg = Self {
            dir,
            path: path.to_owned(),
            v2,
            owned,
        };
        if let Some(limit) = limit {
            cg.set_limit(limit)?;
        }
        Ok(cg)
    }

    /// Sets its memory limit: `memory.limit_in_bytes` (v1) or `memory.max` (v2).
    pub fn set_limit(&self, limit: u64) -> Result<()> {
        let file = if self.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        fs::write(self.dir.join(file), limit.to_string())
            .with_context(|| format!("setting {file} of {}", self.path))
    }

    /// `cgroup.procs`.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Processes in it (not in its children).
    pub fn procs(&self) -> Vec<u32> {
        fs::read_to_string(self.procs_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Its memory usage: `memory.usage_in_bytes` (v1) or `memory.current` (v2).
    pub fn usage(&self) -> u64 {
        let file = if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// OOM kills the kernel made in it: `oom_kill` of `memory.oom_control` (v1) or
    /// `memory.events` (v2).
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until nothing runs in it and its usage fell below `bytes`.
    pub fn wait_drained(&self, below: u64, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        while !(self.procs().is_empty() && self.usage() < below) {
            check_interrupted()?;
            if Instant::now() > end {
                bail!(
                    "{} still has processes {:?} or {} bytes charged after {timeout:?}",
                    self.path,
                    self.procs(),
                    self.usage()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// A command that starts inside this cgroup: the child joins before exec, so the
    /// program's first page is already charged here.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(self.procs_file())
            .with_context(|| format!("opening {}", self.procs_file().display()))?;
        let mut cmd = Command::new(program);
        // SAFETY: the closure makes one raw write(2) on an fd opened before the fork;
        // nothing allocates.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        if self.owned
            && self.dir.exists()
            && let Err(e) = remove_tree(&self.dir)
        {
            eprintln!(
                "bench: warning: could not remove {}: {e}",
                self.dir.display()
            );
        }
    }
}

/// Kills everything in `dir` and below, then removes the directories, children first.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    let mut last = None;
    for _ in 0..500 {
        for pid in fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
        {
            // SAFETY: kill(2) on a process in a cgroup the bench made.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("cannot remove")))
}

/// One line a process printed, with CLOCK_MONOTONIC at its arrival.
#[derive(Clone, Debug)]
pub struct Line {
    /// When the bench read it.
    pub at_ns: u64,
    /// The text (without the newline).
    pub text: String,
}

/// A process the bench started, its stdout read line by line as it comes (each line
/// timestamped on arrival) and its stderr kept for error messages. Dropping it kills it.
pub struct Proc {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<Line>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    /// When it was started (just before fork).
    pub started_ns: u64,
}

impl Proc {
    /// Starts `cmd` with piped stdout and stderr (stdin: null unless the caller set it).
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let started_ns = monotonic_ns();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().context("stdout")?;
        let err = child.stderr.take().context("stderr")?;
        let sink = lines.clone();
        let stdout_reader = thread::spawn(move || {
            let mut reader = BufReader::new(out);
            let mut buf = String::new();
            loop {
                buf.clear();
                match reader.read_line(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let at_ns = monotonic_ns();
                        let text = buf.trim_end_matches('\n').to_owned();
                        sink.lock().unwrap().push(Line { at_ns, text });
                    }
                }
            }
        });
        let sink = stderr.clone();
        // Line by line, so that what it wrote is readable while it runs.
        let stderr_reader = thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut sink = sink.lock().unwrap();
                sink.push_str(&line);
                sink.push('\n');
            }
        });
        Ok(Self {
            name: name.to_owned(),
            child,
            lines,
            stderr,
            readers: vec![stdout_reader, stderr_reader],
            started_ns,
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stdin (when the command had `Stdio::piped()`).
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.stdin.take()
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<Line> {
        self.lines.lock().unwrap().clone()
    }

    /// How many lines so far.
    pub fn line_count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// What it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for a line satisfying `pred` (from the first line on).
    pub fn wait_line(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<Line> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| pred(&l.text)) {
                return Ok(l.clone());
            }
            check_interrupted()?;
            if let Some(status) = self.child.try_wait()? {
                thread::sleep(Duration::from_millis(50));
                if let Some(l) = self.lines.lock().unwrap().iter().find(|l| pred(&l.text)) {
                    return Ok(l.clone());
                }
                bail!(
                    "{} exited ({status}) before printing {what}; stderr: {}",
                    self.name,
                    self.stderr().trim()
                );
            }
            if Instant::now() > end {
                bail!(
                    "{} printed no {what} within {timeout:?}; stderr: {}",
                    self.name,
                    self.stderr().trim()
                );
            }
            thread::sleep(Duration::from_micros(500));
        }
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child, not yet reaped (we only reap in `finish`).
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Sends `sig` (if any), waits up to `timeout` for the exit (then SIGKILLs it), and
    /// for its output to be read to the end.
    pub fn finish(
        mut self,
        sig: Option<i32>,
        timeout: Duration,
    ) -> Result<(ExitStatus, Vec<Line>)> {
        if let Some(sig) = sig {
            self.signal(sig);
        }
        let end = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let status = self.child.wait()?;
                eprintln!(
                    "bench: warning: {} did not exit within {timeout:?}; killed",
                    self.name
                );
                break status;
            }
            thread::sleep(Duration::from_millis(2));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Ok((status, self.lines()))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// CPU time a whole process has used, its exited threads included, in ns: the process's
/// CPU-time clock (`clock_getcpuclockid`), nanosecond-exact like the scheduler's counters
/// and, unlike a sum over /proc/PID/task, not lowered when a thread exits. 0 when the
/// process is gone.
pub fn process_cpu_ns(pid: u32) -> u64 {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: clock_getcpuclockid writes the clock id into the variable we own.
    if unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) } != 0 {
        return 0;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time a process's reaped children used (`cutime` + `cstime` of /proc/PID/stat), in
/// ns: where the time of a worker that exited goes.
pub fn children_cpu_ns(pid: u32) -> u64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the `)` that closes comm: state is field 3, cutime 16, cstime 17.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(13)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    fields.iter().sum::<u64>() * 1_000_000_000 / hz
}

/// A `/proc/PID/status` field in KiB (`VmHWM`, `VmRSS`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// One record of the kernel log.
#[derive(Clone, Debug)]
pub struct KmsgRecord {
    /// The record's own timestamp (printk's clock), in ns; `- Kmsg::offset_ns` converts it to
    /// CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// CLOCK_MONOTONIC when the reader got it.
    pub at_ns: u64,
    /// The message.
    pub text: String,
}

/// A reader of /dev/kmsg, the way cAdvisor learns of OOM kills: a thread blocked in
/// poll(2), reading each record as it is logged.
pub struct Kmsg {
    records: Arc<Mutex<Vec<KmsgRecord>>>,
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicU64>,
    reader: Option<JoinHandle<()>>,
    /// Record timestamp − CLOCK_MONOTONIC, in ns (printk stamps records with the local
    /// scheduler clock, which can drift from CLOCK_MONOTONIC; measured by [`Self::open`]).
    pub offset_ns: i64,
}

impl Kmsg {
    /// Opens /dev/kmsg at its end and calibrates its clock against CLOCK_MONOTONIC by
    /// logging a line of its own.
    pub fn open() -> Result<Self> {
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .context("opening /dev/kmsg (needs root)")?;
        // SAFETY: lseek on an fd we own.
        unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(AtomicU64::new(0));
        let (sink, stopping, lost_count) = (records.clone(), stop.clone(), lost.clone());
        let reader = thread::spawn(move || kmsg_reader(file, &sink, &stopping, &lost_count));
        let mut kmsg = Self {
            records,
            stop,
            lost,
            reader: Some(reader),
            offset_ns: 0,
        };
        kmsg.offset_ns = kmsg.calibrate()?;
        Ok(kmsg)
    }

    fn calibrate(&mut self) -> Result<i64> {
        let mut offsets = Vec::new();
        for i in 0..5 {
            let marker = format!(
                "memstress-bench[{}]: clock calibration {i}",
                std::process::id()
            );
            let before = monotonic_ns();
            fs::write("/dev/kmsg", format!("<7>{marker}\n")).context("writing to /dev/kmsg")?;
            let after = monotonic_ns();
            let end = Instant::now() + Duration::from_secs(2);
            loop {
                let found = self
                    .records
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|r| r.text.ends_with(&marker))
                    .map(|r| r.ts_ns);
                if let Some(ts) = found {
                    // The stamp is taken between `before` and `after`; the midpoint is
                    // within (after − before) / 2 of it.
                    offsets.push((ts as i64 - ((before + after) / 2) as i64, after - before));
                    break;
                }
                if Instant::now() > end {
                    bail!("the kernel log did not show the bench's calibration line");
                }
                thread::sleep(Duration::from_millis(1));
            }
        }
        // The write that took least bounds the offset best.
        offsets.sort_by_key(|&(_, width)| width);
        Ok(offsets[0].0)
    }

    /// Every record since the last call.
    pub fn take(&self) -> Vec<KmsgRecord> {
        std::mem::take(&mut *self.records.lock().unwrap())
    }

    /// Whether a record not yet taken satisfies `pred`.
    pub fn seen(&self, pred: impl Fn(&KmsgRecord) -> bool) -> bool {
        self.records.lock().unwrap().iter().any(pred)
    }

    /// Records overwritten before they were read (the log wrapped).
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::SeqCst)
    }
}

fn kmsg_reader(
    mut file: fs::File,
    sink: &Mutex<Vec<KmsgRecord>>,
    stop: &AtomicBool,
    lost: &AtomicU64,
) {
    let mut buf = vec![0u8; 8192];
    loop {
        match file.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => {
                let at_ns = monotonic_ns();
                let record = String::from_utf8_lossy(&buf[..n]);
                // "prio,seq,usec,flags;message"
                if let Some((head, msg)) = record.split_once(';') {
                    let us: u64 = head
                        .split(',')
                        .nth(2)
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0);
                    sink.lock().unwrap().push(KmsgRecord {
                        ts_ns: us * 1000,
                        at_ns,
                        text: msg.lines().next().unwrap_or_default().to_owned(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let mut pfd = libc::pollfd {
                    fd: file.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll on one pollfd we own.
                unsafe { libc::poll(&mut pfd, 1, 50) };
            }
            // EPIPE: records were overwritten before we read them.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                lost.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => return,
        }
    }
}

impl Drop for Kmsg {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// The pid of a `Killed process N (comm) …` line.
pub fn killed_pid(text: &str) -> Option<u32> {
    let rest = &text[text.find("Killed process ")? + "Killed process ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// A kind of BPF object with an id the kernel lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BpfKind {
    Prog,
    Map,
}

/// The ids of every BPF object of `kind` loaded on the machine (`BPF_*_GET_NEXT_ID`).
pub fn bpf_ids(kind: BpfKind) -> Result<std::collections::HashSet<u32>> {
    #[repr(C)]
    struct GetNextId {
        start_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
    const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;
    let cmd = match kind {
        BpfKind::Prog => BPF_PROG_GET_NEXT_ID,
        BpfKind::Map => BPF_MAP_GET_NEXT_ID,
    };
    let mut ids = std::collections::HashSet::new();
    let mut attr = GetNextId {
        start_id: 0,
        next_id: 0,
        open_flags: 0,
    };
    loop {
        // SAFETY: bpf(2) reads and writes the attribute we own, of the size we pass.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                &raw mut attr,
                std::mem::size_of::<GetNextId>(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(ids);
            }
            return Err(e).context("listing BPF ids (bpf(2) as root)");
        }
        ids.insert(attr.next_id);
        attr.start_id = attr.next_id;
    }
}

/// The BPF programs and maps process `pid` holds (through fds of programs, maps and links,
/// as /proc/PID/fdinfo shows them).
pub fn bpf_held(pid: u32) -> std::collections::HashSet<(BpfKind, u32)> {
    let mut held = std::collections::HashSet::new();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return held;
    };
    for fd in fds.flatten() {
        let info = fs::read_to_string(fd.path()).unwrap_or_default();
        for line in info.lines() {
            let (key, value) = line.split_once(':').unwrap_or_default();
            let kind = match key {
                "prog_id" => BpfKind::Prog,
                "map_id" => BpfKind::Map,
                _ => continue,
            };
            if let Ok(id) = value.trim().parse() {
                held.insert((kind, id));
            }
        }
    }
    held
}

/// Waits until none of `held` (what a tool held while it ran, [`bpf_held`]) is still loaded:
/// its exit released the last reference of each, and the kernel's freeing of them (RCU
/// callbacks, a workqueue) is under way or done. Returns how long that took.
pub fn wait_bpf_released(
    held: &std::collections::HashSet<(BpfKind, u32)>,
    timeout: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let progs = bpf_ids(BpfKind::Prog)?;
        let maps = bpf_ids(BpfKind::Map)?;
        let left = held
            .iter()
            .filter(|(kind, id)| match kind {
                BpfKind::Prog => progs.contains(id),
                BpfKind::Map => maps.contains(id),
            })
            .count();
        if left == 0 {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!(
                "{left} of a tool's {} BPF objects still loaded after {timeout:?}",
                held.len()
            );
        }
        check_interrupted()?;
        thread::sleep(Duration::from_millis(2));
    }
}

/// Tasks (threads, zombies included) the kernel has: the total of /proc/loadavg.
pub fn nr_tasks() -> Result<u64> {
    let loadavg = fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
    loadavg
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split_once('/'))
        .and_then(|(_, total)| total.parse().ok())
        .context("parsing /proc/loadavg")
}

/// Fails unless the machine can take `n` more processes: pids (`kernel.pid_max`), threads
/// (`kernel.threads-max`), this user's process limit, and memory (`per` bytes each).
pub fn can_take_processes(n: u64, per: u64) -> Result<()> {
    let read = |f: &str| -> Result<u64> {
        fs::read_to_string(f)
            .with_context(|| format!("reading {f}"))?
            .trim()
            .parse()
            .with_context(|| format!("parsing {f}"))
    };
    let tasks = nr_tasks()?;
    // Room for the rest of the machine too (other tests, builds).
    let margin = 2_000;
    for (file, max) in [
        (
            "/proc/sys/kernel/pid_max",
            read("/proc/sys/kernel/pid_max")?,
        ),
        (
            "/proc/sys/kernel/threads-max",
            read("/proc/sys/kernel/threads-max")?,
        ),
    ] {
        if tasks + n + margin > max {
            bail!(
                "{file} is {max}: {tasks} tasks now, and {n} more (with {margin} spare) would not fit"
            );
        }
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut limit) };
    // root (CAP_SYS_RESOURCE) is not held to it.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0
        && limit.rlim_cur != libc::RLIM_INFINITY
        && tasks + n > limit.rlim_cur
    {
        bail!(
            "RLIMIT_NPROC is {}: {n} more processes would not fit",
            limit.rlim_cur
        );
    }
    let available = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    if n * per > available / 2 {
        bail!(
            "{n} processes of {} KiB need more than half of the {} MiB available",
            per / 1024,
            available >> 20
        );
    }
    Ok(())
}

/// The CPUs this thread may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is the empty set; sched_getaffinity fills the one we own.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above, with the set's own size.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads the set we own, at an index below its size.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Restricts the calling thread (and so what it starts from now on) to `cpus`.
pub fn pin_thread(cpus: &[usize]) -> Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: CPU_SET writes the set we own; `c` came from `allowed_cpus`.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: sched_setaffinity on the calling thread, with a set of its own size.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
    }
    Ok(())
}
