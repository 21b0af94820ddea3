//! Helpers for memstress's privileged integration tests.
//!
//! These tests create real cgroups, run real stressors (stress-ng, and memstress's own), cause
//! real OOM kills, and compare what memstress reported with what the kernel did: dmesg's
//! `Killed process` lines (read from /dev/kmsg) and the cgroup's own files. They need root and
//! run one at a time (`cargo xtask test` arranges both). A helper that cannot do its job
//! panics with the reason: a test never passes by skipping.
//!
//! Every JSON line memstress prints through these helpers is checked against
//! docs/events.schema.json ([`schema`]): a line that does not match fails the test with the
//! line and what is wrong with it.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use memstress::target::cgroup::{Cgroup, Hierarchy};

pub mod bpf;
pub mod lab;
pub mod runtime;
pub mod schema;
use serde_json::Value;

/// The memstress binary under test (`MEMSTRESS_BIN`, set by `cargo xtask test`).
pub fn memstress_bin() -> PathBuf {
    let path = std::env::var_os("MEMSTRESS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/memstress")
        });
    assert!(
        path.is_file(),
        "no memstress binary at {}: run these tests with `cargo xtask test`",
        path.display()
    );
    path
}

/// Panics unless running as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "privileged integration tests need root: run them with `sudo cargo xtask test`"
    );
}

/// The memory controller's hierarchy on this machine.
pub fn hierarchy() -> Hierarchy {
    Hierarchy::discover().expect("a memory cgroup controller is mounted")
}

/// A cgroup made for one test, removed (with everything in it) when dropped.
pub struct TestCgroup {
    /// The cgroup.
    pub cgroup: Cgroup,
}

impl TestCgroup {
    /// Creates `memstress-test-<pid>-<tag>` under the root with `limit` bytes (if any).
    pub fn new(tag: &str, limit: Option<u64>) -> Self {
        require_root();
        let name = test_name(tag);
        let cgroup = hierarchy()
            .root()
            .create_child(&name)
            .unwrap_or_else(|e| panic!("cannot create test cgroup {name}: {e}"));
        let this = Self { cgroup };
        if let Some(limit) = limit {
            this.cgroup
                .set_limit(limit)
                .unwrap_or_else(|e| panic!("cannot set the limit of {name}: {e}"));
        }
        this
    }

    /// A child cgroup of this one (removed with it).
    pub fn child(&self, name: &str, limit: Option<u64>) -> Cgroup {
        let child = self
            .cgroup
            .create_child(name)
            .unwrap_or_else(|e| panic!("cannot create {}/{name}: {e}", self.cgroup.path));
        if let Some(limit) = limit {
            child.set_limit(limit).expect("set child limit");
        }
        child
    }

    /// Its cgroup path (`/memstress-test-…`).
    pub fn path(&self) -> &str {
        &self.cgroup.path
    }

    /// `memory.usage_in_bytes` / `memory.current`.
    pub fn usage(&self) -> u64 {
        self.cgroup.usage().expect("read usage")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.cgroup.remove(Duration::from_secs(10)) {
            eprintln!("warning: could not remove {}: {e}", self.cgroup.path);
        }
    }
}

/// `memstress-test-<pid>-<tag>`: unique per test process, and recognisable by the sweep in
/// `cargo xtask test`.
pub fn test_name(tag: &str) -> String {
    format!("memstress-test-{}-{tag}", std::process::id())
}

/// Stops `watch` (SIGSTOP), runs an OOM storm in `cgroup` (four stress-ng workers of 32 MiB
/// each for 4 s: hundreds of kills under a 16 MiB limit) and lets `watch` go on: the BPF
/// side meanwhile finds its ring buffer full.
pub fn storm_while_stopped(watch: &Memstress, cgroup: &Cgroup) {
    use std::os::unix::process::ExitStatusExt as _;
    watch.signal(libc::SIGSTOP);
    let status = command_in(cgroup, "stress-ng", None)
        .args([
            "--vm",
            "4",
            "--vm-bytes",
            "32M",
            "--vm-keep",
            "--timeout",
            "4s",
            "--quiet",
        ])
        .status()
        .expect("start stress-ng");
    // The storm may take stress-ng's parent too (its workers' oom_score_adj is raised, but
    // the parent's footprint still makes it a candidate, and nothing here may lower its
    // adj without CAP_SYS_RESOURCE): a SIGKILL is part of the storm, any other end is not.
    assert!(
        status.code().is_some() || status.signal() == Some(libc::SIGKILL),
        "stress-ng: {status:?}"
    );
    // Orphaned workers end on their own --timeout; the storm is over when they are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cgroup.procs().is_ok_and(|p| !p.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "stress-ng's workers outlived the storm"
        );
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(300));
    watch.signal(libc::SIGCONT);
}

/// A command that starts inside `cgroup` (it joins before exec, so every page it touches is
/// charged there), optionally with an `oom_score_adj`.
pub fn command_in(cgroup: &Cgroup, program: &str, adj: Option<i32>) -> Command {
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(cgroup.procs_file())
        .unwrap_or_else(|e| panic!("open {}: {e}", cgroup.procs_file().display()));
    let mut cmd = Command::new(program);
    let adj = adj.map(|a| a.to_string());
    // SAFETY: the closure only makes raw system calls (write, open, close) with data prepared
    // before the fork; nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(adj) = &adj {
                let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, adj.as_ptr().cast(), adj.len()) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            Ok(())
        });
    }
    cmd
}

/// A child process that is killed and reaped when dropped, so that a test leaves none behind
/// on any exit path (a failed assertion included).
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Starts `cmd`.
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")),
        )
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits (up to `timeout`) for it to exit; `None` if it did not.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().expect("wait for child") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `Killed process` line from the kernel log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmesgKill {
    /// `task_pid_nr(victim)`.
    pub pid: u32,
    /// comm.
    pub comm: String,
    /// total-vm in kB.
    pub total_vm_kb: u64,
    /// anon-rss in kB.
    pub anon_rss_kb: u64,
    /// file-rss in kB.
    pub file_rss_kb: u64,
    /// shmem-rss in kB.
    pub shmem_rss_kb: u64,
    /// UID.
    pub uid: u32,
    /// pgtables in kB.
    pub pgtables_kb: u64,
    /// oom_score_adj.
    pub oom_score_adj: i32,
}

/// Parses `…Killed process 10090 (stress-ng-vm) total-vm:132356kB, anon-rss:31492kB,
/// file-rss:392kB, shmem-rss:0kB, UID:0 pgtables:176kB oom_score_adj:1000`.
pub fn parse_kill(line: &str) -> Option<DmesgKill> {
    let rest = &line[line.find("Killed process ")? + "Killed process ".len()..];
    let (pid, rest) = rest.split_once(" (")?;
    let close = rest.rfind(") total-vm:")?;
    let comm = rest[..close].to_owned();
    let fields = &rest[close + 2..];
    let num = |key: &str| -> Option<i64> {
        let start = fields.find(key)? + key.len();
        let digits: String = fields[start..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        digits.parse().ok()
    };
    Some(DmesgKill {
        pid: pid.trim().parse().ok()?,
        comm,
        total_vm_kb: num("total-vm:")? as u64,
        anon_rss_kb: num("anon-rss:")? as u64,
        file_rss_kb: num("file-rss:")? as u64,
        shmem_rss_kb: num("shmem-rss:")? as u64,
        uid: num("UID:")? as u32,
        pgtables_kb: num("pgtables:")? as u64,
        oom_score_adj: num("oom_score_adj:")? as i32,
    })
}

/// The kernel log from the moment it was opened, read continuously by a thread: the
/// kernel's log buffer wraps during an OOM storm, and a reader that falls behind loses lines.
pub struct Kmsg {
    lines: Arc<Mutex<Vec<(u64, String)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    reader: Option<JoinHandle<()>>,
    lost: Arc<std::sync::atomic::AtomicU64>,
}

impl Kmsg {
    /// Opens /dev/kmsg positioned at its end: only messages logged from now on are read.
    pub fn open() -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let mut file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .expect("open /dev/kmsg (needs root)");
        // SAFETY: lseek on an fd we own.
        unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(AtomicU64::new(0));
        let (sink, stopping, lost_count) = (lines.clone(), stop.clone(), lost.clone());
        let reader = thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            loop {
                match file.read(&mut buf) {
                    Ok(0) => {}
                    Ok(n) => {
                        let record = String::from_utf8_lossy(&buf[..n]);
                        // "prio,seq,usec,flags;message"
                        if let Some((head, msg)) = record.split_once(';') {
                            let ts = head
                                .split(',')
                                .nth(2)
                                .and_then(|t| t.parse().ok())
                                .unwrap_or(0);
                            let msg = msg.lines().next().unwrap_or_default().to_owned();
                            sink.lock().unwrap().push((ts, msg));
                        }
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if stopping.load(Ordering::SeqCst) {
                            return;
                        }
                        let mut pfd = libc::pollfd {
                            fd: file.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: poll on one pollfd we own.
                        unsafe { libc::poll(&mut pfd, 1, 20) };
                    }
                    // EPIPE: records were overwritten before we read them.
                    Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                        lost_count.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => panic!("reading /dev/kmsg: {e}"),
                }
            }
        });
        Self {
            lines,
            stop,
            reader: Some(reader),
            lost,
        }
    }

    /// Every message logged since the last call (after letting the reader catch up).
    pub fn messages(&mut self) -> Vec<String> {
        let entries = self.entries();
        let lost = self.lost.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            lost, 0,
            "the kernel log wrapped before it was read: lines were lost"
        );
        entries.into_iter().map(|(_, m)| m).collect()
    }

    /// Every message logged since the last call, with its timestamp (µs of CLOCK_MONOTONIC).
    pub fn entries(&mut self) -> Vec<(u64, String)> {
        thread::sleep(Duration::from_millis(100));
        std::mem::take(&mut *self.lines.lock().unwrap())
    }

    /// Every `Killed process` line logged since the last call.
    pub fn kills(&mut self) -> Vec<DmesgKill> {
        kills_in(&self.messages())
    }
}

impl Drop for Kmsg {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// The `Killed process` lines among `messages`.
pub fn kills_in(messages: &[String]) -> Vec<DmesgKill> {
    messages.iter().filter_map(|m| parse_kill(m)).collect()
}

/// dmesg's `oom-kill:constraint=…` summary line (printed with the kill unless the OOM
/// report is rate-limited).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmesgOom {
    /// `CONSTRAINT_MEMCG`, `CONSTRAINT_NONE`, …
    pub constraint: String,
    /// The memcg whose limit was hit.
    pub oom_memcg: Option<String>,
    /// The victim's memcg.
    pub task_memcg: Option<String>,
    /// The victim's pid.
    pub pid: u32,
}

/// Parses `oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,
/// oom_memcg=/a,task_memcg=/a/b,task=tail,pid=123,uid=0`.
pub fn parse_oom_summary(line: &str) -> Option<DmesgOom> {
    let rest = &line[line.find("oom-kill:")? + "oom-kill:".len()..];
    let field = |key: &str| -> Option<String> {
        rest.split(',')
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .map(str::to_owned)
    };
    Some(DmesgOom {
        constraint: field("constraint")?,
        oom_memcg: field("oom_memcg"),
        task_memcg: field("task_memcg"),
        pid: field("pid")?.parse().ok()?,
    })
}

/// A memstress worker standing in for an application: it holds what the test tells it, in
/// the cgroup it was started in.
pub struct App {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
    seq: u64,
}

impl App {
    /// Starts `name` in `cgroup` with `oom_score_adj` `adj`, holding `bytes`.
    pub fn start(cgroup: &Cgroup, name: &str, bytes: u64, adj: Option<i32>) -> Self {
        let mut child = command_in(cgroup, memstress_bin().to_str().expect("UTF-8 path"), adj)
            .args(["__stressor", "--name", name, "--size", &bytes.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start app {name}: {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut app = Self {
            child,
            stdin,
            stdout,
            seq: 0,
        };
        app.wait_held();
        app
    }

    fn wait_held(&mut self) {
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).expect("read app");
            assert!(n > 0, "app {} exited", self.child.id());
            if line.starts_with("held ") || line.starts_with("error ") {
                assert!(line.starts_with("held "), "app failed: {line}");
                return;
            }
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tells it to hold `bytes`, without waiting (it may be OOM-killed on the way).
    pub fn grow(&mut self, bytes: u64) {
        use std::io::Write as _;
        self.seq += 1;
        let _ = writeln!(self.stdin, "size {bytes} {}", self.seq);
    }

    /// Tells it to hold `bytes` and waits until it does.
    pub fn resize(&mut self, bytes: u64) {
        self.grow(bytes);
        self.wait_held();
    }

    /// Waits for it to exit; returns the signal that killed it, if any.
    pub fn wait_signal(&mut self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt as _;
        self.child.wait().expect("wait app").signal()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use std::os::unix::fs::OpenOptionsExt as _;

/// A running memstress, its stdout collected as JSON lines.
pub struct Memstress {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    /// Lines that are not JSON or do not match the schema, with why.
    bad_lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

/// What a finished memstress printed.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// JSON lines from stdout.
    pub lines: Vec<Value>,
    /// stderr.
    pub stderr: String,
}

impl Finished {
    /// Lines of one `type`.
    pub fn of_type(&self, kind: &str) -> Vec<&Value> {
        self.lines.iter().filter(|l| l["type"] == kind).collect()
    }
}

impl Memstress {
    /// Starts `memstress <args>` (add `-o json` yourself).
    pub fn start(args: &[&str]) -> Self {
        Self::start_command(Command::new(memstress_bin()).args(args))
    }

    /// Starts a prepared command (its stdout must be JSON lines).
    pub fn start_command(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let bad_lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("stdout piped");
        let err = child.stderr.take().expect("stderr piped");
        let (sink, bad) = (lines.clone(), bad_lines.clone());
        let stdout_reader = thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                // A panic here would only end this thread: the test reports it instead.
                let value: Value = match serde_json::from_str(&line) {
                    Ok(v) => v,
                    Err(e) => {
                        bad.lock()
                            .unwrap()
                            .push(format!("memstress printed a non-JSON line ({e}): {line}"));
                        continue;
                    }
                };
                if let Err(e) = schema::check(&value) {
                    bad.lock().unwrap().push(format!(
                        "memstress printed a line that docs/events.schema.json rejects: {e}\n  \
                         line: {line}"
                    ));
                }
                sink.lock().unwrap().push(value);
            }
        });
        let sink = stderr.clone();
        let stderr_reader = thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(err).read_to_string(&mut text);
            sink.lock().unwrap().push_str(&text);
        });
        Self {
            child,
            lines,
            bad_lines,
            stderr,
            readers: vec![stdout_reader, stderr_reader],
        }
    }

    /// Panics if memstress printed a line that is not JSON or does not match the schema.
    pub fn assert_lines_valid(&self) {
        // Copied out: a panic while holding the lock would poison it for the reader thread.
        let bad = self.bad_lines.lock().unwrap().clone();
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a printed line satisfies `pred`, and returns it.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_lines_valid();
            if let Some(v) = self.lines.lock().unwrap().iter().find(|v| pred(v)) {
                return v.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                thread::sleep(Duration::from_millis(100));
                if let Some(v) = self.lines.lock().unwrap().iter().find(|v| pred(v)) {
                    return v.clone();
                }
                panic!(
                    "memstress exited ({status}) before printing {what}; stderr: {}",
                    self.stderr.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "memstress printed no {what} within {timeout:?}; stderr: {}",
                self.stderr.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a line of `type`.
    pub fn wait_type(&mut self, kind: &str, timeout: Duration) -> Value {
        self.wait_for(kind, timeout, |v| v["type"] == kind)
    }

    /// Sends `signal` to it.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for it to exit by itself.
    pub fn wait(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for memstress") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "memstress did not exit within {timeout:?}; stderr: {}",
                    self.stderr.lock().unwrap()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        for reader in self.readers.drain(..) {
            reader.join().expect("reader thread");
        }
        self.assert_lines_valid();
        Finished {
            status,
            lines: std::mem::take(&mut *self.lines.lock().unwrap()),
            stderr: std::mem::take(&mut *self.stderr.lock().unwrap()),
        }
    }

    /// Sends SIGINT (as Ctrl-C would) and waits for it to exit.
    pub fn interrupt(self, timeout: Duration) -> Finished {
        self.signal(libc::SIGINT);
        self.wait(timeout)
    }
}

impl Drop for Memstress {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs memstress to completion with `args` and returns what it printed (stdout as text).
/// With `-o json` every stdout line is checked against the schema.
pub fn memstress_output(args: &[&str]) -> std::process::Output {
    let out = Command::new(memstress_bin())
        .args(args)
        .output()
        .expect("run memstress");
    if json_output(args) {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            schema::parse_line(line);
        }
    }
    out
}

/// Whether `args` ask for JSON output.
pub fn json_output(args: &[&str]) -> bool {
    args.windows(2)
        .any(|w| matches!(w[0], "-o" | "--output") && w[1] == "json")
        || args
            .iter()
            .any(|a| matches!(*a, "-ojson" | "--output=json"))
}

/// Whether process `pid` exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// Asserts stderr is one line of error, with no panic or backtrace.
pub fn assert_one_line_error(stderr: &str, must_contain: &[&str]) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected a one-line error, got:\n{stderr}");
    assert!(
        !stderr.contains("panicked")
            && !stderr.contains("backtrace")
            && !stderr.contains("RUST_BACKTRACE"),
        "error output looks like a crash:\n{stderr}"
    );
    for needle in must_contain {
        assert!(
            stderr.contains(needle),
            "error `{}` does not mention `{needle}`",
            lines[0]
        );
    }
}

/// The Python of the test tools' virtualenv (`MEMSTRESS_TOOLS_VENV`, set by `cargo xtask
/// test`; else where `cargo xtask setup` puts it).
pub fn tools_python() -> PathBuf {
    let venv = std::env::var_os("MEMSTRESS_TOOLS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from("/root/.cache"))
                .join("memstress/venv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "no test tools at {}: run `cargo xtask setup` (it installs kubernetes-validate and \
         prometheus-client there)",
        venv.display()
    );
    python
}

/// Runs the tools' Python with `script` (a `-c` program) and `args`; returns its output.
pub fn tools_python_run(script: &str, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    use std::io::Write as _;
    let mut child = Command::new(tools_python())
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the tools' python");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(data) = stdin {
        input.write_all(data).expect("write to python");
    }
    drop(input);
    child.wait_with_output().expect("wait for python")
}

/// The workspace root (deploy/, docs/ are read from there).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_owned()
}

/// The body of `GET /metrics` at `address` (`host:port`), over plain HTTP/1.1.
pub fn scrape_metrics(address: &str) -> String {
    use std::io::Write as _;
    let mut stream =
        std::net::TcpStream::connect(address).expect("connect to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dmesg_oom_summaries() {
        let o = parse_oom_summary(
            "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,\
             oom_memcg=/pod,task_memcg=/pod/ctr,task=tail,pid=123,uid=0",
        )
        .unwrap();
        assert_eq!(o.constraint, "CONSTRAINT_MEMCG");
        assert_eq!(o.oom_memcg.as_deref(), Some("/pod"));
        assert_eq!(o.task_memcg.as_deref(), Some("/pod/ctr"));
        assert_eq!(o.pid, 123);
    }

    #[test]
    fn parses_dmesg_kill_lines() {
        let k = parse_kill(
            "Memory cgroup out of memory: Killed process 10090 (stress-ng-vm) total-vm:132356kB, \
             anon-rss:31492kB, file-rss:392kB, shmem-rss:0kB, UID:0 pgtables:176kB oom_score_adj:-1000",
        )
        .unwrap();
        assert_eq!(k.pid, 10090);
        assert_eq!(k.comm, "stress-ng-vm");
        assert_eq!(k.anon_rss_kb, 31492);
        assert_eq!(k.oom_score_adj, -1000);
        let odd = parse_kill("Out of memory: Killed process 7 (a (b) c) total-vm:1kB, anon-rss:2kB, file-rss:3kB, shmem-rss:4kB, UID:5 pgtables:6kB oom_score_adj:7").unwrap();
        assert_eq!(odd.comm, "a (b) c");
        assert_eq!(parse_kill("Killed process x"), None);
    }
}
