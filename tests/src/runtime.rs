//! Real container runtimes for the privileged tests: containerd 1.6 (with runc) and Docker
//! 20.10, installed by `cargo xtask setup` and started and stopped here, each with its own
//! state under a temporary directory.
//!
//! * [`Containerd::start`] runs `containerd` with `root`, `state` and the gRPC socket under its
//!   directory (the CRI plugin is disabled: no CNI needed). [`Pod`] makes Kubernetes-shaped
//!   pods on it the way containerd 1.6's CRI plugin does (namespace `k8s.io`, cgroupfs driver
//!   cgroup `/kubepods[/<qos>]/pod<uid>/<id>`, a sandbox container and app containers with the
//!   CRI's annotations, see `pkg/cri/server/sandbox_run_linux.go` and
//!   `container_create_linux.go` at v1.6.20), through `ctr run --rootfs`.
//! * [`Docker::start`] runs `dockerd` with its own data root, exec root and socket, the
//!   cgroupfs driver, no iptables and no bridge, and the containerd it manages itself (its
//!   bundles land under `<exec-root>/containerd/daemon/io.containerd.runtime.v2.task/moby/`).
//!   [`Docker::run`] runs containers of an image imported from [`build_rootfs`].
//!
//! Containers run a root file system of busybox-static (`sh`, `sleep`, …) and the tests'
//! `memstress-test-helper` with its libraries ([`hog_argv`] allocates and holds memory).
//!
//! Dropping a harness removes everything it made: containers and tasks, the daemon, leftover
//! shims, mounts under its directory, the cgroups its containers and pods caused in every
//! hierarchy (only the ones that did not exist before), the directories the runtimes create
//! in `/run` when they did not exist before, and its directory. [`Footprint`] checks it.

use std::{
    cell::RefCell,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::test_name;

/// The CRI annotation keys (containerd 1.6 `pkg/cri/annotations/annotations.go`).
pub mod annotations {
    /// `sandbox` or `container`.
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    /// [`CONTAINER_TYPE`] of a pod's sandbox.
    pub const CONTAINER_TYPE_SANDBOX: &str = "sandbox";
    /// [`CONTAINER_TYPE`] of an app container.
    pub const CONTAINER_TYPE_CONTAINER: &str = "container";
    /// The sandbox's container id.
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    /// The pod's Kubernetes namespace.
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    /// The pod's UID.
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    /// The pod's name.
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    /// The pod's log directory (`/var/log/pods/<namespace>_<name>_<uid>`).
    pub const SANDBOX_LOG_DIRECTORY: &str = "io.kubernetes.cri.sandbox-log-directory";
    /// The container's name in the pod spec.
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    /// The container's image reference.
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
}

/// The containerd namespace of the CRI plugin.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// The image name app containers carry in their [`annotations::IMAGE_NAME`].
pub const POD_IMAGE: &str = "docker.io/library/busybox:1.35";
/// The image [`Docker`] imports from the root file system.
pub const DOCKER_IMAGE: &str = "memstress-busybox:latest";
/// Where the helper lives in the containers' root file system.
pub const HELPER_IN_ROOTFS: &str = "/memstress-test-helper";

const SLEEP_FOREVER: &[&str] = &["/bin/sleep", "2147483647"];
const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "sleep", "cat", "echo", "head", "ls", "ps", "true", "false", "kill", "dd", "tr",
];

/// The argv of a process that allocates `bytes` of anonymous memory, touches every page and
/// holds it until killed (`memstress-test-helper shared-mm`: two processes sharing the mm).
pub fn hog_argv(bytes: u64) -> Vec<String> {
    vec![
        HELPER_IN_ROOTFS.into(),
        "shared-mm".into(),
        bytes.to_string(),
    ]
}

/// The tests' `memstress-test-helper` (`MEMSTRESS_TEST_HELPER`, else next to the test
/// binary's `deps/` directory, where cargo builds it).
pub fn test_helper() -> PathBuf {
    if let Some(p) = std::env::var_os("MEMSTRESS_TEST_HELPER") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("the test binary's directory");
    let up = if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    up.join("memstress-test-helper")
}

/// Builds a root file system at `dir`: busybox-static with a few applets in `/bin`, and the
/// test helper at [`HELPER_IN_ROOTFS`] with the libraries `ldd` lists at their own paths.
pub fn build_rootfs(dir: &Path) {
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "run"] {
        fs::create_dir_all(dir.join(d)).unwrap_or_else(|e| panic!("mkdir {d}: {e}"));
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| is_static(Path::new(p)))
        .expect("a static busybox (busybox-static; `cargo xtask setup` installs it)");
    fs::copy(busybox, dir.join("bin/busybox")).expect("copy busybox");
    for applet in BUSYBOX_APPLETS {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))
            .unwrap_or_else(|e| panic!("symlink {applet}: {e}"));
    }
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").expect("passwd");
    fs::write(dir.join("etc/group"), "root:x:0:\n").expect("group");
    let helper = test_helper();
    assert!(
        helper.is_file(),
        "no memstress-test-helper at {} (build the tests with cargo, or set \
         MEMSTRESS_TEST_HELPER)",
        helper.display()
    );
    fs::copy(&helper, dir.join(&HELPER_IN_ROOTFS[1..])).expect("copy the test helper");
    for lib in ldd(&helper) {
        let to = dir.join(lib.strip_prefix("/").expect("absolute library path"));
        fs::create_dir_all(to.parent().expect("parent")).expect("mkdir lib dir");
        fs::copy(&lib, &to).unwrap_or_else(|e| panic!("copy {}: {e}", lib.display()));
    }
}

fn is_static(path: &Path) -> bool {
    path.is_file()
        && Command::new("ldd").arg(path).output().is_ok_and(|o| {
            !o.status.success() || String::from_utf8_lossy(&o.stdout).contains("not a dynamic")
        })
}

/// The libraries (and loader) `ldd` lists for `binary`.
fn ldd(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// A fresh temporary directory `/tmp/memstress-test-<pid>-<kind>-<n>`.
fn temp_dir(kind: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(test_name(&format!("{kind}-{n}")));
    if dir.exists() {
        unmount_under(&dir);
        fs::remove_dir_all(&dir).ok();
    }
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    dir
}

/// A pod UID in the form the API server gives (`8-4-4-4-12` hex digits), fresh each call.
pub fn new_pod_uid() -> String {
    let id = new_id();
    format!(
        "{}-{}-{}-{}-{}",
        &id[0..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..32]
    )
}

/// 64 random hex digits, like the CRI's container ids.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    let mut f = fs::File::open("/dev/urandom").expect("open /dev/urandom");
    std::io::Read::read_exact(&mut f, &mut bytes).expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Cgroups, mounts, processes.

/// Mount points of every cgroup hierarchy (v1 and v2).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    mountinfo()
        .into_iter()
        .filter(|(_, fstype)| fstype == "cgroup" || fstype == "cgroup2")
        .map(|(at, _)| PathBuf::from(at))
        .collect()
}

/// The memory controller's mount point (v1 `memory`, else the v2 mount).
pub fn memory_mount() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mut v2 = None;
    for l in info.lines() {
        let at = l.split(' ').nth(4).unwrap_or_default();
        let Some((_, rest)) = l.split_once(" - ") else {
            continue;
        };
        let mut f = rest.split(' ');
        let fstype = f.next().unwrap_or_default();
        let opts = f.nth(1).unwrap_or_default();
        if fstype == "cgroup" && opts.split(',').any(|o| o == "memory") {
            return PathBuf::from(at);
        }
        if fstype == "cgroup2" && v2.is_none() {
            v2 = Some(PathBuf::from(at));
        }
    }
    v2.expect("a memory cgroup hierarchy")
}

/// (mount point, fstype) of every mount, with octal escapes (`\040`) undone.
fn mountinfo() -> Vec<(String, String)> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let at = unescape(l.split(' ').nth(4)?);
            let fstype = l.split_once(" - ")?.1.split(' ').next()?.to_owned();
            Some((at, fstype))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(b) = u8::from_str_radix(&code, 8) {
                out.push(b as char);
                continue;
            }
            out.push(c);
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

/// Mount points at or under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mountinfo()
        .into_iter()
        .map(|(at, _)| PathBuf::from(at))
        .filter(|at| at.starts_with(dir))
        .collect()
}

/// Lazily unmounts everything at or under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let mut mounts = mounts_under(dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in mounts {
        let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: a valid NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            eprintln!(
                "runtime: cannot unmount {}: {}",
                m.display(),
                std::io::Error::last_os_error()
            );
        }
    }
}

/// The directories for cgroup `path` (`/a/b/c`) and its ancestors that do not exist yet, in
/// every hierarchy: what creating it will make, and so what to remove afterwards.
fn missing_cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut out = Vec::new();
    for mount in cgroup_mounts() {
        let mut dir = mount.clone();
        for p in &parts {
            dir.push(p);
            if !dir.exists() {
                out.push(dir.clone());
            }
        }
    }
    out
}

/// Removes cgroup directories, deepest first, retrying a busy one for up to 10 s (a killed
/// task leaves its cgroup a moment later). Only empty cgroups can be removed: the kernel
/// refuses the others, and they are reported.
fn remove_cgroup_dirs(dirs: &[PathBuf]) {
    let mut dirs = dirs.to_vec();
    dirs.sort();
    dirs.dedup();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match fs::remove_dir(&d) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    eprintln!("runtime: cannot remove cgroup {}: {e}", d.display());
                    break;
                }
            }
        }
    }
}

/// A running process: pid, comm and argv.
#[derive(Clone, Debug)]
pub struct Proc {
    /// Its pid.
    pub pid: u32,
    /// `/proc/PID/comm`.
    pub comm: String,
    /// `/proc/PID/cmdline`, split.
    pub argv: Vec<String>,
}

/// Every process but zombies.
pub fn processes() -> Vec<Proc> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
        if state == "Z" || state == "X" {
            return None;
        }
        let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()?
            .trim()
            .to_owned();
        let argv = fs::read(format!("/proc/{pid}/cmdline"))
            .ok()?
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        Some(Proc { pid, comm, argv })
    })
    .collect()
}

/// Processes whose command line mentions `dir` (daemons and shims started with paths under
/// it): what must be gone once a harness is dropped.
pub fn processes_using(dir: &Path) -> Vec<Proc> {
    let dir = dir.to_string_lossy();
    let me = std::process::id();
    processes()
        .into_iter()
        .filter(|p| p.pid != me && p.argv.iter().any(|a| a.contains(&*dir)))
        .collect()
}

/// SIGKILLs the shims (`containerd-shim*`) whose `-address` is under `dir`.
fn kill_shims(dir: &Path) {
    for p in processes() {
        let is_shim = p.comm.starts_with("containerd-shim")
            || p.argv
                .first()
                .is_some_and(|a| a.contains("containerd-shim"));
        let ours = p
            .argv
            .windows(2)
            .any(|w| w[0] == "-address" && Path::new(&w[1]).starts_with(dir));
        if is_shim && ours {
            eprintln!("runtime: killing leftover shim {}", p.pid);
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(p.pid as i32, libc::SIGKILL) };
        }
    }
}

/// Stops `child`: SIGTERM, then SIGKILL after `grace`; reaps it.
fn stop_child(child: &mut Child, grace: Duration) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions; the child is not reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!("runtime: {} ignored SIGTERM; killing it", child.id());
    child.kill().ok();
    child.wait().ok();
}

/// Directories a runtime creates under `/run` whatever its configuration (containerd 1.6's
/// shim sockets in `/run/containerd/s`, dockerd's `/run/docker/plugins`): the ones that do
/// not exist yet, to remove afterwards when they are empty.
fn missing_run_dirs(paths: &[&str]) -> Vec<PathBuf> {
    paths
        .iter()
        .map(PathBuf::from)
        .filter(|p| !p.exists())
        .collect()
}

/// Removes `dirs` (deepest first) when nothing but empty directories is left in them.
fn remove_empty_trees(dirs: &[PathBuf]) {
    let mut dirs = dirs.to_vec();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        remove_empty_tree(&d);
    }
}

fn remove_empty_tree(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return !dir.exists();
    };
    let mut empty = true;
    for e in entries.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            empty &= remove_empty_tree(&p);
        } else {
            empty = false;
        }
    }
    empty && fs::remove_dir(dir).is_ok()
}

fn log_tail(path: &Path) -> String {
    let log = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn check(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a harness left to check after it is dropped: its directory, its daemon's pid, the
/// cgroups and `/run` directories it was responsible for.
#[derive(Clone, Debug)]
pub struct Footprint {
    dir: PathBuf,
    daemon: u32,
    cgroups: Vec<PathBuf>,
    run_dirs: Vec<PathBuf>,
}

impl Footprint {
    /// Everything still there that should not be: processes using the directory (daemons,
    /// shims), the daemon itself, mounts under the directory, the directory, cgroups and
    /// `/run` directories. Empty after a clean drop.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in processes_using(&self.dir) {
            out.push(format!(
                "process {} ({}): {}",
                p.pid,
                p.comm,
                p.argv.join(" ")
            ));
        }
        if processes().iter().any(|p| p.pid == self.daemon) {
            out.push(format!("daemon {} still runs", self.daemon));
        }
        for m in mounts_under(&self.dir) {
            out.push(format!("mount {}", m.display()));
        }
        if self.dir.exists() {
            out.push(format!("directory {}", self.dir.display()));
        }
        for c in self.cgroups.iter().chain(&self.run_dirs) {
            if c.exists() {
                out.push(format!("directory {}", c.display()));
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// containerd.

/// A containerd of the test's own (state under a temporary directory), stopped and cleaned
/// up when dropped.
pub struct Containerd {
    dir: PathBuf,
    child: Child,
    startup: Duration,
    rootfs: PathBuf,
    /// Cgroup directories that did not exist before a pod or container of ours.
    cgroups: RefCell<Vec<PathBuf>>,
    run_dirs: Vec<PathBuf>,
}

impl Containerd {
    /// Starts containerd and waits until it answers (30 s at most).
    pub fn start() -> Self {
        crate::require_root();
        let dir = temp_dir("containerd");
        let run_dirs = missing_run_dirs(&["/run/containerd", "/run/containerd/s"]);
        let rootfs = dir.join("rootfs");
        build_rootfs(&rootfs);
        let config = format!(
            "version = 2\nroot = {root:?}\nstate = {state:?}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n[grpc]\n  address = {sock:?}\n",
            root = dir.join("root"),
            state = dir.join("state"),
            sock = dir.join("containerd.sock"),
        );
        fs::write(dir.join("config.toml"), config).expect("write config.toml");
        let log = fs::File::create(dir.join("containerd.log")).expect("create containerd.log");
        let started = Instant::now();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start containerd (`cargo xtask setup` installs it)");
        let mut this = Self {
            dir,
            child,
            startup: Duration::ZERO,
            rootfs,
            cgroups: RefCell::new(Vec::new()),
            run_dirs,
        };
        let deadline = started + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = this.child.try_wait() {
                panic!(
                    "containerd exited ({status}):\n{}",
                    log_tail(&this.dir.join("containerd.log"))
                );
            }
            if this.socket().exists()
                && this
                    .ctr_cmd("default")
                    .arg("version")
                    .output()
                    .is_ok_and(|o| o.status.success())
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer in 30 s:\n{}",
                log_tail(&this.dir.join("containerd.log"))
            );
            thread::sleep(Duration::from_millis(10));
        }
        this.startup = started.elapsed();
        this
    }

    /// How long containerd took to answer.
    pub fn startup(&self) -> Duration {
        self.startup
    }

    /// Its gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// Its state directory: bundles are in
    /// `<state>/io.containerd.runtime.v2.task/<namespace>/<id>/config.json`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// memstress's `--runtime-state` value for this containerd's state.
    pub fn state_flag(&self) -> String {
        format!("containerd={}", self.state_dir().display())
    }

    /// The bundle directory of container `id` in `namespace`.
    pub fn bundle(&self, namespace: &str, id: &str) -> PathBuf {
        self.state_dir()
            .join("io.containerd.runtime.v2.task")
            .join(namespace)
            .join(id)
    }

    /// The bundle's `config.json` (the OCI spec) of container `id`.
    pub fn config_json(&self, namespace: &str, id: &str) -> serde_json::Value {
        let path = self.bundle(namespace, id).join("config.json");
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_json::from_str(&text).expect("config.json is JSON")
    }

    /// The root file system the containers run.
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    /// The harness's temporary directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What to check once this is dropped.
    pub fn footprint(&self) -> Footprint {
        Footprint {
            dir: self.dir.clone(),
            daemon: self.child.id(),
            cgroups: self.cgroups.borrow().clone(),
            run_dirs: self.run_dirs.clone(),
        }
    }

    /// `ctr --address SOCKET --namespace NAMESPACE` (add the arguments).
    pub fn ctr_cmd(&self, namespace: &str) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.socket())
            .args(["--namespace", namespace]);
        cmd
    }

    /// Runs `ctr` with `args` in `namespace`.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Output {
        self.ctr_cmd(namespace)
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// Runs a detached container with `ctr run --rootfs` (runc's root and the IO FIFOs under
    /// our directory): `flags` go before the positional arguments. Returns its init pid.
    pub fn run(
        &self,
        namespace: &str,
        id: &str,
        cgroup: &str,
        flags: &[String],
        argv: &[String],
    ) -> u32 {
        self.run_from(namespace, id, cgroup, flags, None, argv)
    }

    /// Like [`Self::run`], from `image` (imported in `namespace`, see [`Self::import`];
    /// `None`: our root file system). A container of an image gets a snapshot of its own,
    /// which [`Self::remove`] deletes with the container.
    pub fn run_from(
        &self,
        namespace: &str,
        id: &str,
        cgroup: &str,
        flags: &[String],
        image: Option<&str>,
        argv: &[String],
    ) -> u32 {
        self.cgroups
            .borrow_mut()
            .extend(missing_cgroup_dirs(cgroup));
        let mut cmd = self.ctr_cmd(namespace);
        cmd.args(["run", "-d", "--null-io", "--cgroup", cgroup])
            .arg("--runc-root")
            .arg(self.dir.join("runc"))
            .arg("--fifo-dir")
            .arg(self.dir.join("fifo"))
            .args(flags);
        match image {
            Some(image) => cmd.arg(image),
            None => cmd.arg("--rootfs").arg(&self.rootfs),
        };
        let out = cmd.arg(id).args(argv).output().expect("run ctr run");
        check(out, &format!("ctr run {id}"));
        let pid_file = self.bundle(namespace, id).join("init.pid");
        let pid = fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("read {}: {e}", pid_file.display()));
        pid.trim().parse().expect("init.pid holds a pid")
    }

    /// Imports an image tarball (`ctr images import`) into `namespace`; returns the names
    /// it was imported as. The images go with the daemon's root when it is dropped, or with
    /// [`Self::remove_image`].
    pub fn import(&self, namespace: &str, tarball: &Path) -> Vec<String> {
        let out = self
            .ctr_cmd(namespace)
            .args(["images", "import", "--no-unpack"])
            .arg(tarball)
            .output()
            .expect("run ctr images import");
        check(out, &format!("ctr images import {}", tarball.display()));
        let list = self.ctr(namespace, &["images", "list", "--quiet"]);
        check(list, "ctr images list")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Removes image `name` from `namespace` (quiet when it is gone).
    pub fn remove_image(&self, namespace: &str, name: &str) {
        let _ = self.ctr(namespace, &["images", "remove", "--sync", name]);
    }

    /// Kills the task of `id` (SIGKILL), deletes it and the container. Quiet when either is
    /// already gone.
    pub fn remove(&self, namespace: &str, id: &str) {
        let _ = self.ctr(namespace, &["task", "kill", "--signal", "SIGKILL", id]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.ctr(namespace, &["task", "delete", "--force", id]);
            let err = String::from_utf8_lossy(&out.stderr);
            if out.status.success() || err.contains("not found") || Instant::now() > deadline {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.ctr(namespace, &["containers", "delete", id]);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let namespaces = self.ctr("default", &["namespaces", "list", "--quiet"]);
            for ns in String::from_utf8_lossy(&namespaces.stdout).lines() {
                let containers = self.ctr(ns, &["containers", "list", "--quiet"]);
                for id in String::from_utf8_lossy(&containers.stdout).lines() {
                    self.remove(ns, id);
                }
            }
        }
        stop_child(&mut self.child, Duration::from_secs(10));
        kill_shims(&self.dir);
        // Shims that were killed may leave their containers' processes: kill what is left in
        // our cgroups before removing them.
        kill_cgroup_members(&self.cgroups.borrow());
        remove_cgroup_dirs(&self.cgroups.borrow());
        unmount_under(&self.dir);
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("runtime: cannot remove {}: {e}", self.dir.display());
        }
        remove_empty_trees(&self.run_dirs);
    }
}

/// SIGKILLs every process in the given cgroup directories.
fn kill_cgroup_members(dirs: &[PathBuf]) {
    for d in dirs {
        let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) else {
            continue;
        };
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A pod's QoS class: where the kubelet's cgroupfs driver puts its cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    /// `/kubepods/pod<uid>`.
    Guaranteed,
    /// `/kubepods/burstable/pod<uid>`.
    Burstable,
    /// `/kubepods/besteffort/pod<uid>`.
    BestEffort,
}

/// How the kubelet's cgroup driver names a pod's cgroups. Both are made by runc's cgroupfs
/// driver here (no systemd runs on this machine): the systemd shape is its path, not a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `/kubepods/burstable/pod<uid>/<id>`.
    Cgroupfs,
    /// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope`.
    Systemd,
}

impl Qos {
    fn slice(self) -> &'static str {
        match self {
            Self::Guaranteed => "/kubepods.slice",
            Self::Burstable => "/kubepods.slice/kubepods-burstable.slice",
            Self::BestEffort => "/kubepods.slice/kubepods-besteffort.slice",
        }
    }

    /// The pod's cgroup in `layout`.
    pub fn pod_cgroup(self, layout: Layout, uid: &str) -> String {
        match layout {
            Layout::Cgroupfs => format!("{}/pod{uid}", self.parent()),
            Layout::Systemd => {
                let class = match self {
                    Self::Guaranteed => String::new(),
                    Self::Burstable => "-burstable".to_owned(),
                    Self::BestEffort => "-besteffort".to_owned(),
                };
                format!(
                    "{}/kubepods{class}-pod{}.slice",
                    self.slice(),
                    uid.replace('-', "_")
                )
            }
        }
    }

    /// The QoS class's cgroup (`/kubepods`, `/kubepods/burstable`, `/kubepods/besteffort`).
    pub fn parent(self) -> &'static str {
        match self {
            Self::Guaranteed => "/kubepods",
            Self::Burstable => "/kubepods/burstable",
            Self::BestEffort => "/kubepods/besteffort",
        }
    }
}

/// A container's cgroup in its pod's.
fn container_cgroup(pod: &str, layout: Layout, id: &str) -> String {
    match layout {
        Layout::Cgroupfs => format!("{pod}/{id}"),
        Layout::Systemd => format!("{pod}/cri-containerd-{id}.scope"),
    }
}

/// A container of a [`Pod`] (or its sandbox).
#[derive(Clone, Debug)]
pub struct Ctr {
    /// The container id (64 hex digits).
    pub id: String,
    /// The container's name (`POD` for the sandbox).
    pub name: String,
    /// Its init process, as the host sees it.
    pub init_pid: u32,
    /// Its cgroup (`/kubepods/…/pod<uid>/<id>`).
    pub cgroup_path: String,
    memory_limit: Option<u64>,
    argv: Vec<String>,
    socket: PathBuf,
}

impl Ctr {
    /// Sends `signal` to the container's init process (through containerd).
    pub fn kill(&self, signal: i32) {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", K8S_NAMESPACE, "task", "kill", "--signal"])
            .arg(signal.to_string())
            .arg(&self.id)
            .output()
            .expect("run ctr task kill");
        check(out, &format!("ctr task kill {}", self.id));
    }

    /// The memory limit it was created with.
    pub fn memory_limit(&self) -> Option<u64> {
        self.memory_limit
    }

    /// The file `name` of its memory cgroup.
    pub fn memory_file(&self, name: &str) -> PathBuf {
        memory_file(&self.cgroup_path, name)
    }

    /// A number from its memory cgroup (`memory.usage_in_bytes`, `memory.limit_in_bytes`).
    pub fn memory_value(&self, name: &str) -> u64 {
        read_u64(&self.memory_file(name))
    }

    /// Whether its init process still runs.
    pub fn running(&self) -> bool {
        processes().iter().any(|p| p.pid == self.init_pid)
    }
}

/// `<memory mount><cgroup>/<name>`.
pub fn memory_file(cgroup: &str, name: &str) -> PathBuf {
    memory_mount()
        .join(cgroup.trim_start_matches('/'))
        .join(name)
}

fn read_u64(path: &Path) -> u64 {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let text = text.trim();
    if text == "max" {
        return u64::MAX;
    }
    text.parse()
        .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", path.display()))
}

/// A Kubernetes pod on [`Containerd`], laid out the way containerd 1.6's CRI plugin lays it
/// out with the kubelet's cgroupfs driver: a sandbox container running `sleep` as the pause
/// process, and app containers joining its network, IPC and UTS namespaces (each in a PID
/// namespace of its own, the Kubernetes default). Dropping it removes its containers.
pub struct Pod<'a> {
    rt: &'a Containerd,
    pub layout: Layout,
    /// Its Kubernetes namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID.
    pub uid: String,
    /// Its QoS class.
    pub qos: Qos,
    /// The sandbox ("pause") container.
    pub sandbox: Ctr,
    containers: RefCell<Vec<Ctr>>,
}

impl<'a> Pod<'a> {
    /// Creates the pod's cgroup and sandbox.
    pub fn new(rt: &'a Containerd, namespace: &str, name: &str, uid: &str, qos: Qos) -> Self {
        Self::with_layout(rt, namespace, name, uid, qos, Layout::Cgroupfs)
    }

    /// A pod whose cgroups are named as `layout`'s driver names them.
    pub fn with_layout(
        rt: &'a Containerd,
        namespace: &str,
        name: &str,
        uid: &str,
        qos: Qos,
        layout: Layout,
    ) -> Self {
        let id = new_id();
        let cgroup_path = container_cgroup(&qos.pod_cgroup(layout, uid), layout, &id);
        let log_dir = format!("/var/log/pods/{namespace}_{name}_{uid}");
        let annotations = [
            (
                annotations::CONTAINER_TYPE,
                annotations::CONTAINER_TYPE_SANDBOX,
            ),
            (annotations::SANDBOX_ID, &id),
            (annotations::SANDBOX_NAMESPACE, namespace),
            (annotations::SANDBOX_UID, uid),
            (annotations::SANDBOX_NAME, name),
            (annotations::SANDBOX_LOG_DIRECTORY, &log_dir),
        ];
        let mut flags = vec![
            "--label".to_owned(),
            "io.cri-containerd.kind=sandbox".to_owned(),
        ];
        for (k, v) in annotations {
            flags.push("--annotation".into());
            flags.push(format!("{k}={v}"));
        }
        let argv: Vec<String> = SLEEP_FOREVER.iter().map(|s| (*s).to_owned()).collect();
        let init_pid = rt.run(K8S_NAMESPACE, &id, &cgroup_path, &flags, &argv);
        let sandbox = Ctr {
            id,
            name: "POD".into(),
            init_pid,
            cgroup_path,
            memory_limit: None,
            argv,
            socket: rt.socket(),
        };
        Self {
            rt,
            layout,
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            qos,
            sandbox,
            containers: RefCell::new(Vec::new()),
        }
    }

    /// The pod's cgroup (`/kubepods/…/pod<uid>`, or the systemd shape's slice).
    pub fn cgroup_path(&self) -> String {
        self.qos.pod_cgroup(self.layout, &self.uid)
    }

    /// Starts app container `name` running `argv` (with `memory_limit` bytes, if any).
    pub fn container(&self, name: &str, memory_limit: Option<u64>, argv: &[String]) -> Ctr {
        self.container_with(name, memory_limit, &[], None, argv)
    }

    /// Like [`Self::container`], with more `ctr run` flags (capabilities, mounts, namespaces)
    /// and from `image` (`None`: the harness's root file system).
    pub fn container_with(
        &self,
        name: &str,
        memory_limit: Option<u64>,
        extra: &[String],
        image: Option<&str>,
        argv: &[String],
    ) -> Ctr {
        let id = new_id();
        let cgroup_path = container_cgroup(&self.cgroup_path(), self.layout, &id);
        let annotations = [
            (
                annotations::CONTAINER_TYPE,
                annotations::CONTAINER_TYPE_CONTAINER,
            ),
            (annotations::SANDBOX_ID, &self.sandbox.id),
            (annotations::SANDBOX_NAMESPACE, &self.namespace),
            (annotations::SANDBOX_UID, &self.uid),
            (annotations::SANDBOX_NAME, &self.name),
            (annotations::CONTAINER_NAME, name),
            (annotations::IMAGE_NAME, image.unwrap_or(POD_IMAGE)),
        ];
        let mut flags = vec![
            "--label".to_owned(),
            "io.cri-containerd.kind=container".to_owned(),
        ];
        for (k, v) in annotations {
            flags.push("--annotation".into());
            flags.push(format!("{k}={v}"));
        }
        for (ns, file) in [("network", "net"), ("ipc", "ipc"), ("uts", "uts")] {
            flags.push("--with-ns".into());
            flags.push(format!("{ns}:/proc/{}/ns/{file}", self.sandbox.init_pid));
        }
        if let Some(limit) = memory_limit {
            flags.push("--memory-limit".into());
            flags.push(limit.to_string());
        }
        flags.extend(extra.iter().cloned());
        let init_pid = self
            .rt
            .run_from(K8S_NAMESPACE, &id, &cgroup_path, &flags, image, argv);
        let ctr = Ctr {
            id,
            name: name.into(),
            init_pid,
            cgroup_path,
            memory_limit,
            argv: argv.to_vec(),
            socket: self.rt.socket(),
        };
        self.containers.borrow_mut().push(ctr.clone());
        ctr
    }

    /// The app containers that are not deleted.
    pub fn containers(&self) -> Vec<Ctr> {
        self.containers.borrow().clone()
    }

    /// Kills (SIGKILL) and deletes app container `id`.
    pub fn delete(&self, ctr: &Ctr) {
        self.rt.remove(K8S_NAMESPACE, &ctr.id);
        self.containers.borrow_mut().retain(|c| c.id != ctr.id);
    }

    /// What the kubelet does when container `name` restarts: kills it, deletes its task and
    /// the container, and creates a new container of the same name, limit and argv (a new
    /// id). Returns the new one.
    pub fn restart(&self, name: &str) -> Ctr {
        let old = self
            .containers
            .borrow()
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no container {name} in pod {}", self.name));
        self.delete(&old);
        self.container(name, old.memory_limit, &old.argv)
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        for c in self.containers.take() {
            self.rt.remove(K8S_NAMESPACE, &c.id);
        }
        self.rt.remove(K8S_NAMESPACE, &self.sandbox.id);
    }
}

// ---------------------------------------------------------------------------------------------
// Docker.

/// A `dockerd` of the test's own (data root, exec root and socket under a temporary directory;
/// it manages its own containerd there), with [`DOCKER_IMAGE`] imported; stopped and cleaned
/// up when dropped.
pub struct Docker {
    dir: PathBuf,
    child: Child,
    startup: Duration,
    import: Duration,
    cgroups: RefCell<Vec<PathBuf>>,
    run_dirs: Vec<PathBuf>,
}

/// The Docker CLI that matches dockerd (docker.io's; `/usr/local/bin/docker` is another).
pub const DOCKER_CLI: &str = "/usr/bin/docker";

/// A container of [`Docker`].
#[derive(Clone, Debug)]
pub struct DockerCtr {
    /// Its full id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its init process, as the host sees it.
    pub init_pid: u32,
    /// Its cgroup (`/docker/<id>`).
    pub cgroup: String,
}

impl DockerCtr {
    /// A number from its memory cgroup.
    pub fn memory_value(&self, name: &str) -> u64 {
        read_u64(&memory_file(&self.cgroup, name))
    }
}

impl Docker {
    /// Starts dockerd, waits until it answers (60 s at most) and imports [`DOCKER_IMAGE`].
    pub fn start() -> Self {
        crate::require_root();
        let dir = temp_dir("docker");
        let run_dirs = missing_run_dirs(&[
            "/run/docker",
            "/run/docker/plugins",
            "/run/containerd",
            "/run/containerd/s",
        ]);
        let cgroups = missing_cgroup_dirs("/docker");
        let log = fs::File::create(dir.join("dockerd.log")).expect("create dockerd.log");
        let started = Instant::now();
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("docker"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .args([
                "--exec-opt",
                "native.cgroupdriver=cgroupfs",
                "--iptables=false",
                "--ip-masq=false",
                "--bridge=none",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd (`cargo xtask setup` installs docker.io)");
        let mut this = Self {
            dir,
            child,
            startup: Duration::ZERO,
            import: Duration::ZERO,
            cgroups: RefCell::new(cgroups),
            run_dirs,
        };
        let deadline = started + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = this.child.try_wait() {
                panic!(
                    "dockerd exited ({status}):\n{}",
                    log_tail(&this.dir.join("dockerd.log"))
                );
            }
            if this.dir.join("docker.sock").exists() && this.docker(&["version"]).status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer in 60 s:\n{}",
                log_tail(&this.dir.join("dockerd.log"))
            );
            thread::sleep(Duration::from_millis(20));
        }
        this.startup = started.elapsed();
        let started = Instant::now();
        let rootfs = this.dir.join("rootfs");
        build_rootfs(&rootfs);
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run tar");
        let out = this
            .docker_cmd()
            .args(["import", "-", DOCKER_IMAGE])
            .stdin(tar.stdout.take().expect("tar's stdout"))
            .output()
            .expect("run docker import");
        assert!(tar.wait().expect("wait for tar").success(), "tar failed");
        check(out, "docker import");
        this.import = started.elapsed();
        this
    }

    /// How long dockerd took to answer.
    pub fn startup(&self) -> Duration {
        self.startup
    }

    /// How long building and importing the image took.
    pub fn import_time(&self) -> Duration {
        self.import
    }

    /// Its data root: names are in `<data-root>/containers/<id>/config.v2.json`.
    pub fn data_root(&self) -> PathBuf {
        self.dir.join("docker")
    }

    /// memstress's `--runtime-state` value for this dockerd's data root.
    pub fn state_flag(&self) -> String {
        format!("docker={}", self.data_root().display())
    }

    /// Its exec root.
    pub fn exec_root(&self) -> PathBuf {
        self.dir.join("exec")
    }

    /// The state directory of the containerd dockerd manages.
    pub fn containerd_state_dir(&self) -> PathBuf {
        self.exec_root().join("containerd/daemon")
    }

    /// The OCI bundle of container `id` (`config.json` in it).
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.containerd_state_dir()
            .join("io.containerd.runtime.v2.task/moby")
            .join(id)
    }

    /// Its socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// The harness's temporary directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `docker` with `DOCKER_HOST` set to our daemon.
    pub fn docker_cmd(&self) -> Command {
        let mut cmd = Command::new(DOCKER_CLI);
        cmd.env("DOCKER_HOST", format!("unix://{}", self.socket().display()));
        cmd
    }

    /// Runs `docker args`.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_cmd().args(args).output().expect("run docker")
    }

    /// `docker run -d --name NAME [-m BYTES] memstress-busybox argv`.
    pub fn run(&self, name: &str, mem_limit: Option<u64>, argv: &[String]) -> DockerCtr {
        let mut cmd = self.docker_cmd();
        cmd.args(["run", "-d", "--name", name]);
        if let Some(limit) = mem_limit {
            cmd.arg("--memory").arg(limit.to_string());
        }
        let out = cmd
            .arg(DOCKER_IMAGE)
            .args(argv)
            .output()
            .expect("run docker run");
        let id = check(out, &format!("docker run {name}")).trim().to_owned();
        let cgroup = format!("/docker/{id}");
        self.cgroups
            .borrow_mut()
            .extend(cgroup_mounts().into_iter().map(|m| m.join(&cgroup[1..])));
        let pid = check(
            self.docker(&["inspect", "--format", "{{.State.Pid}}", &id]),
            "docker inspect",
        );
        DockerCtr {
            id,
            name: name.into(),
            init_pid: pid.trim().parse().expect("a pid"),
            cgroup,
        }
    }

    /// What to check once this is dropped.
    pub fn footprint(&self) -> Footprint {
        Footprint {
            dir: self.dir.clone(),
            daemon: self.child.id(),
            cgroups: self.cgroups.borrow().clone(),
            run_dirs: self.run_dirs.clone(),
        }
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let ids = self.docker(&["ps", "--all", "--quiet", "--no-trunc"]);
            for id in String::from_utf8_lossy(&ids.stdout).lines() {
                let out = self.docker(&["rm", "--force", "--volumes", id]);
                if !out.status.success() {
                    eprintln!(
                        "runtime: docker rm {id}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
            }
        }
        stop_child(&mut self.child, Duration::from_secs(15));
        // dockerd stops the containerd it manages; one that survived a SIGKILLed dockerd runs
        // with our exec root in its command line.
        for p in processes_using(&self.dir) {
            eprintln!("runtime: killing leftover {} ({})", p.pid, p.comm);
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(p.pid as i32, libc::SIGKILL) };
        }
        kill_shims(&self.dir);
        kill_cgroup_members(&self.cgroups.borrow());
        unmount_under(&self.dir);
        remove_cgroup_dirs(&self.cgroups.borrow());
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("runtime: cannot remove {}: {e}", self.dir.display());
        }
        remove_empty_trees(&self.run_dirs);
    }
}

/// Waits until `cond` holds (polling every 50 ms), for `timeout` at most; returns whether it
/// did.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Prints `what took DURATION` on stderr (the tests' timing record).
pub fn record(what: &str, took: Duration) {
    let _ = writeln!(std::io::stderr(), "runtime: {what} took {took:.2?}");
}
