//! memstress as a sidecar, for real: the image `cargo xtask image` builds
//! (target/memstress-image.tar), imported into a containerd of the tests' own and run as a
//! container of a Kubernetes-shaped pod with exactly what deploy/sidecar.yaml grants: the
//! capabilities BPF, PERFMON, SETUID and SETGID (SYS_RESOURCE too in the manifest; this
//! machine's bounding set lacks it, so memstress says it cannot shield itself), every other
//! capability dropped, no new privileges, the runtime's default seccomp profile, a read-only
//! root file system, the node's PID namespace (hostPID) and tracefs read-only. The busybox of
//! the harness is bound at /bin (read-only) for the container's idle process and a hog; the
//! image itself holds only memstress and its libraries.
//!
//! memstress runs in the container with `ctr task exec` (in the container's cgroup, with its
//! capabilities), and the tests read the container's cgroup from the node.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use memstress_tests::{
    Finished, Kmsg, Memstress, memstress_bin, require_root,
    runtime::{Containerd, Ctr, K8S_NAMESPACE, Pod, Qos, new_id, record},
    workspace,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// The name deploy/ uses, with the workspace's version.
const IMAGE: &str = concat!("ghcr.io/memstress/memstress:", env!("CARGO_PKG_VERSION"));
const LIMIT: u64 = 256 * MIB;
/// What deploy/sidecar.yaml adds (SYS_RESOURCE aside: see the module's documentation).
const SIDECAR_CAPS: &[&str] = &["CAP_BPF", "CAP_PERFMON", "CAP_SETGID", "CAP_SETUID"];
/// Every capability Linux 6.x knows: all but the sidecar's are dropped.
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];
const MEMSTRESS: &str = "/usr/local/bin/memstress";

/// target/memstress-image.tar (`MEMSTRESS_IMAGE` overrides), built from the binary under test.
fn image_tarball() -> PathBuf {
    let path = std::env::var_os("MEMSTRESS_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/memstress-image.tar"));
    assert!(
        path.is_file(),
        "no image tarball at {}: run `cargo xtask image` (`cargo xtask test` does)",
        path.display()
    );
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    assert!(
        modified(&path) >= modified(&memstress_bin()),
        "{} is older than {}: run `cargo xtask image` again",
        path.display(),
        memstress_bin().display()
    );
    path
}

/// A pod on a containerd of our own, with the image imported.
struct Setup {
    rt: Containerd,
}

impl Setup {
    fn new() -> Self {
        require_root();
        let rt = Containerd::start();
        let started = Instant::now();
        let names = rt.import(K8S_NAMESPACE, &image_tarball());
        record("importing the memstress image", started.elapsed());
        assert!(names.iter().any(|n| n == IMAGE), "imported as {names:?}");
        Self { rt }
    }

    fn pod(&self, name: &str) -> Pod<'_> {
        Pod::new(&self.rt, "default", name, &new_id()[..36], Qos::Burstable)
    }
}

/// The `ctr run` flags for what deploy/sidecar.yaml grants; `extra` adds to them.
fn sidecar_flags(rt: &Containerd, extra: &[String]) -> Vec<String> {
    let mut flags = Vec::new();
    for cap in ALL_CAPS.iter().filter(|c| !SIDECAR_CAPS.contains(c)) {
        flags.extend(["--cap-drop".to_owned(), (*cap).to_owned()]);
    }
    for cap in SIDECAR_CAPS {
        flags.extend(["--cap-add".to_owned(), (*cap).to_owned()]);
    }
    flags.extend([
        // What the CRI plugin gives every container (and `ctr run` does not): the cgroup
        // file system, read-only, at /sys/fs/cgroup (runc mounts the container's own cgroup
        // of each hierarchy there).
        "--mount".to_owned(),
        "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro:nosuid:noexec:nodev".to_owned(),
        // seccompProfile RuntimeDefault, readOnlyRootFilesystem, hostPID.
        "--seccomp".to_owned(),
        "--read-only".to_owned(),
        "--with-ns".to_owned(),
        format!("pid:/proc/{}/ns/pid", std::process::id()),
        "--mount".to_owned(),
        "type=bind,src=/sys/kernel/tracing,dst=/sys/kernel/tracing,options=rbind:ro".to_owned(),
        "--mount".to_owned(),
        format!(
            "type=bind,src={},dst=/bin,options=rbind:ro",
            rt.rootfs().join("bin").display()
        ),
    ]);
    flags.extend(extra.iter().cloned());
    flags
}

fn sleep_argv() -> Vec<String> {
    vec!["/bin/sleep".into(), "2147483647".into()]
}

/// The sidecar container: the image, the manifest's privileges, `limit`, idle.
fn sidecar(pod: &Pod, rt: &Containerd, extra: &[String]) -> Ctr {
    let ctr = pod.container_with(
        "memstress",
        Some(LIMIT),
        &sidecar_flags(rt, extra),
        Some(IMAGE),
        &sleep_argv(),
    );
    // Exactly the manifest's capabilities, in every set the runtime gives.
    let spec = rt.config_json(K8S_NAMESPACE, &ctr.id);
    for set in ["bounding", "effective", "permitted"] {
        let mut caps: Vec<&str> = spec["process"]["capabilities"][set]
            .as_array()
            .unwrap_or_else(|| panic!("no {set} capabilities in {spec}"))
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        caps.sort_unstable();
        assert_eq!(caps, SIDECAR_CAPS, "{set}");
    }
    assert_eq!(spec["process"]["noNewPrivileges"], true);
    assert_eq!(spec["root"]["readonly"], true);
    ctr
}

/// `argv` in container `ctr` (`ctr task exec`: its cgroup, namespaces and capabilities), its
/// stdout read as JSON lines.
fn exec(rt: &Containerd, ctr: &Ctr, argv: &[&str]) -> Memstress {
    let mut cmd = rt.ctr_cmd(K8S_NAMESPACE);
    cmd.args(["task", "exec", "--fifo-dir"])
        .arg(rt.dir().join("fifo"))
        .args(["--exec-id", &new_id()[..16], &ctr.id])
        .args(argv);
    Memstress::start_command(&mut cmd)
}

/// Samples a cgroup's usage every 5 ms until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<u64>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(ctr: &Ctr) -> Self {
        let file = ctr.memory_file("memory.usage_in_bytes");
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stopping, sink) = (stop.clone(), samples.clone());
        let thread = thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                if let Ok(text) = std::fs::read_to_string(&file)
                    && let Ok(v) = text.trim().parse()
                {
                    sink.lock().unwrap().push(v);
                }
                thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn within(actual: u64, expected: u64, percent: u64) -> bool {
    actual.abs_diff(expected) * 100 <= expected * percent
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

/// Runs `run --self --size SIZE --hold 3s` in the sidecar and checks that the container's
/// cgroup rose by `expected` over the run's baseline (±2 %), as read from the node.
fn self_run_charges(rt: &Containerd, ctr: &Ctr, size: &str, expected: u64) -> Finished {
    let before = ctr.memory_value("memory.usage_in_bytes");
    let sampler = Sampler::start(ctr);
    let mut run = exec(
        rt,
        ctr,
        &[
            MEMSTRESS, "run", "-o", "json", "--self", "--size", size, "--hold", "3s",
        ],
    );
    let full = run.wait_type("full", Duration::from_secs(60));
    thread::sleep(Duration::from_millis(300));
    let at_full = ctr.memory_value("memory.usage_in_bytes");
    let finished = run.wait(Duration::from_secs(60));
    let samples = sampler.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let summary = finished.of_type("summary")[0].clone();
    let baseline = summary["baseline_usage_bytes"].as_u64().unwrap();
    let controller = summary["controller_bytes"]
        .as_u64()
        .expect("controller_bytes: the controller is in its own target");
    let charged = summary["charged_bytes"].as_u64().unwrap();
    eprintln!(
        "sidecar: --size {size}: before {:.1} MiB, baseline {:.1} MiB (controller's own {:.1} \
         MiB), at full {:.1} MiB: rise {:.2} MiB for {:.1} MiB (memstress: charged {:.2} MiB, \
         full line {:?})",
        mib(before),
        mib(baseline),
        mib(controller),
        mib(at_full),
        mib(at_full - baseline),
        mib(expected),
        mib(charged),
        full["charged_bytes"]
    );
    // The node's reading: the cgroup's rise over the run's baseline is the size.
    assert!(
        within(at_full - baseline, expected, 2),
        "--size {size}: the cgroup rose {:.2} MiB over its baseline",
        mib(at_full - baseline)
    );
    assert!(within(charged, expected, 2), "charged_bytes {charged}");
    // The baseline is a level the node saw before the stressors started, not a figure of
    // memstress's own: the cgroup sat there (±1 MiB) while the controller settled.
    assert!(
        samples.iter().any(|&s| s.abs_diff(baseline) <= MIB),
        "the node never saw the baseline {baseline}"
    );
    // It is what the cgroup held before, plus the controller's own share (and what the
    // controller held before its first reading: its binary, its first allocations), less
    // what the kernel uncharged meanwhile (a previous run's leftovers).
    assert!(controller < baseline, "{baseline} {before} {controller}");
    assert!(
        baseline.saturating_sub(before + controller) < 24 * MIB,
        "baseline {:.1} MiB, before {:.1} MiB, controller {:.1} MiB",
        mib(baseline),
        mib(before),
        mib(controller)
    );
    assert_eq!(summary["target"], ctr.cgroup_path);
    finished
}

/// The warning memstress gives once without CAP_SYS_RESOURCE.
fn says_once_it_cannot_shield_itself(stderr: &str) {
    assert_eq!(
        stderr.matches("cannot protect the controller").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("CAP_SYS_RESOURCE"), "{stderr}");
}

/// `run --self --size 100Mi` and `--size 50%` in a 256 MiB sidecar: the cgroup's rise over
/// the baseline (with the controller's own memory, probes loaded) is the size, ±2 %, read
/// from the node; the summary states the controller's share. Then a size past the limit: the
/// kill memstress reports is the kernel's (dmesg), by node pid (hostPID).
#[test]
fn run_self_in_a_sidecar_charges_its_size() {
    let setup = Setup::new();
    let pod = setup.pod("self");
    let ctr = sidecar(&pod, &setup.rt, &[]);
    // Inside: its own memcg is found, with its limit.
    let finished = self_run_charges(&setup.rt, &ctr, "100Mi", 100 * MIB);
    says_once_it_cannot_shield_itself(&finished.stderr);
    let plan = finished.of_type("plan")[0];
    assert_eq!(plan["target"]["path"], ctr.cgroup_path);
    assert_eq!(plan["target"]["limit_bytes"], LIMIT);
    let attached = finished.of_type("attached");
    assert!(!attached.is_empty(), "no attached line");
    self_run_charges(&setup.rt, &ctr, "50%", LIMIT / 2);

    let mut kmsg = Kmsg::open();
    let run = exec(
        &setup.rt,
        &ctr,
        &[
            MEMSTRESS, "run", "-o", "json", "--self", "--size", "300Mi", "--on-oom", "stop",
        ],
    );
    let finished = run.wait(Duration::from_secs(60));
    assert_eq!(finished.status.code(), Some(3), "{}", finished.stderr);
    let kills = finished.of_type("oom_kill");
    assert!(!kills.is_empty(), "{}", finished.stderr);
    let victim = &kills[0]["victim"];
    assert_eq!(victim["comm"], "memstress-vm", "{kills:?}");
    let dmesg = kmsg.kills();
    assert!(
        dmesg
            .iter()
            .any(|k| Some(u64::from(k.pid)) == victim["pid"].as_u64() && k.comm == "memstress-vm"),
        "reported {victim}; dmesg: {dmesg:?}"
    );
    assert_eq!(finished.of_type("summary")[0]["outcome"], "stopped_by_oom");
    assert!(ctr.running(), "the sidecar's own process was killed");
}

/// `watch --cgroup <its own>` in the sidecar reports the kill of another process of its
/// container (a hog past the limit), as the kernel logged it.
#[test]
fn watch_in_a_sidecar_reports_a_kill_in_its_container() {
    let setup = Setup::new();
    let pod = setup.pod("watch");
    let ctr = sidecar(&pod, &setup.rt, &[]);
    let mut kmsg = Kmsg::open();
    let mut watch = exec(
        &setup.rt,
        &ctr,
        &[
            MEMSTRESS,
            "watch",
            "-o",
            "json",
            "--cgroup",
            &ctr.cgroup_path,
        ],
    );
    watch.wait_type("attached", Duration::from_secs(60));
    // busybox dd allocates its block (300 MiB) and touches it reading /dev/zero.
    let hog = setup
        .rt
        .ctr_cmd(K8S_NAMESPACE)
        .args(["task", "exec", "--fifo-dir"])
        .arg(setup.rt.dir().join("fifo"))
        .args(["--exec-id", "hog", &ctr.id])
        .args([
            "/bin/dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=300M",
            "count=1",
        ])
        .output()
        .expect("run ctr task exec");
    assert!(!hog.status.success(), "the hog was not killed");
    let kill = watch.wait_for("the hog's kill", Duration::from_secs(30), |v| {
        v["type"] == "oom_kill" && v["victim"]["comm"] == "dd"
    });
    let dmesg = kmsg.kills();
    assert!(
        dmesg
            .iter()
            .any(|k| Some(u64::from(k.pid)) == kill["victim"]["pid"].as_u64() && k.comm == "dd"),
        "reported {kill}; dmesg: {dmesg:?}"
    );
    // SIGINT reaches it through `ctr task exec`, which forwards signals.
    let finished = watch.interrupt(Duration::from_secs(15));
    assert!(!finished.stderr.contains("error:"), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("1 OOM kill(s) seen"),
        "{}",
        finished.stderr
    );
}

/// A sidecar stressing the app container of its pod: with the node's /sys/fs/cgroup mounted
/// over the runtime's (read-write, as the Job has it) and hostPID, `run --cgroup <the app's>`
/// and `run --pid <the app's pid>` put the stressors in the app's cgroup, which is charged
/// the size (±2 %), and not the sidecar's.
#[test]
fn a_sidecar_stresses_the_app_container_of_its_pod() {
    let setup = Setup::new();
    let pod = setup.pod("app");
    let app = pod.container("app", Some(LIMIT), &sleep_argv());
    let cgroupfs = vec![
        "--mount".to_owned(),
        "type=bind,src=/sys/fs/cgroup,dst=/sys/fs/cgroup,options=rbind:rw".to_owned(),
    ];
    let ctr = sidecar(&pod, &setup.rt, &cgroupfs);
    let pid = app.init_pid.to_string();
    for target in [
        ["--cgroup", app.cgroup_path.as_str()],
        ["--pid", pid.as_str()],
    ] {
        let before = app.memory_value("memory.usage_in_bytes");
        let own_before = ctr.memory_value("memory.usage_in_bytes");
        let mut run = exec(
            &setup.rt,
            &ctr,
            &[
                MEMSTRESS, "run", "-o", "json", target[0], target[1], "--size", "64Mi", "--hold",
                "2s",
            ],
        );
        run.wait_type("full", Duration::from_secs(60));
        thread::sleep(Duration::from_millis(300));
        let at_full = app.memory_value("memory.usage_in_bytes");
        let own_at_full = ctr.memory_value("memory.usage_in_bytes");
        let finished = run.wait(Duration::from_secs(60));
        assert!(finished.status.success(), "{}", finished.stderr);
        let summary = finished.of_type("summary")[0];
        eprintln!(
            "sidecar: {target:?}: the app's cgroup rose {:.2} MiB, the sidecar's {:.2} MiB",
            mib(at_full - before),
            mib(own_at_full.saturating_sub(own_before))
        );
        assert_eq!(summary["target"], app.cgroup_path);
        assert_eq!(summary["controller_bytes"], Value::Null);
        assert!(
            within(at_full - before, 64 * MIB, 2),
            "{target:?}: the app's cgroup rose {} bytes",
            at_full - before
        );
        assert!(own_at_full.saturating_sub(own_before) < 64 * MIB / 2);
    }
}

/// The same tarball loads into Docker 20.10 (`docker load`, which reads its `manifest.json`)
/// under the same name, and its entrypoint is memstress.
#[test]
fn docker_loads_the_image() {
    require_root();
    let docker = memstress_tests::runtime::Docker::start();
    let tarball = image_tarball();
    let out = docker.docker(&["load", "--input", tarball.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "docker load: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("Loaded image: {IMAGE}")),
        "{stdout}"
    );
    let out = docker.docker(&["run", "--rm", "--network", "none", IMAGE, "--version"]);
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && version.contains(env!("CARGO_PKG_VERSION")),
        "docker run {IMAGE} --version: {version}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = docker.docker(&["rmi", IMAGE]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// In a cgroup namespace (what runtimes give containers on cgroup v2 nodes), /proc/self/cgroup
/// and the cgroup mount both say `/`: `run --self` still finds its own memcg, its limit and
/// its usage, is not refused as the node's root cgroup, and charges the size over its
/// baseline.
#[test]
fn run_self_in_a_cgroup_namespace() {
    require_root();
    let target = memstress_tests::TestCgroup::new("cgroupns", Some(LIMIT));
    let mount = memstress_tests::runtime::memory_mount();
    // A private mount namespace: the node's memory hierarchy is unmounted there and mounted
    // again from inside the new cgroup namespace, as a runtime does for a container.
    let script = format!(
        "set -e; mount --make-rprivate /; umount -l {m}; \
         mount -t cgroup -o rw,nosuid,nodev,noexec,relatime,memory cgroup {m}; \
         grep -qx '[0-9]*:memory:/' /proc/self/cgroup; \
         exec {bin} run -o json --self --size 50% --hold 1s",
        m = mount.display(),
        bin = memstress_bin().display()
    );
    let mut cmd = memstress_tests::command_in(&target.cgroup, "unshare", None);
    cmd.args(["--cgroup", "--mount", "sh", "-c", &script]);
    let finished = Memstress::start_command(&mut cmd).wait(Duration::from_secs(60));
    assert!(finished.status.success(), "{}", finished.stderr);
    let plan = finished.of_type("plan")[0];
    assert_eq!(plan["target"]["path"], "/");
    assert_eq!(plan["target"]["limit_bytes"], LIMIT);
    let summary = finished.of_type("summary")[0];
    assert!(summary["controller_bytes"].as_u64().is_some(), "{summary}");
    let charged = summary["charged_bytes"].as_u64().unwrap();
    assert!(within(charged, LIMIT / 2, 2), "charged {charged}");
}

/// The DaemonSet for real: the image in a container with exactly the manifest's capabilities
/// (BPF, PERFMON), its read-only host paths (tracefs, the node's /sys/fs/cgroup, the
/// runtimes' state directories under /host) and its args (`--runtime-root /host`). A kill in
/// another pod's container is reported with that pod's names, and the kill counter carries
/// them, scraped from inside the pod's network namespace at the manifest's port.
#[test]
fn the_daemonset_names_a_kill_in_another_pod() {
    let setup = Setup::new();
    let rt = &setup.rt;
    let manifest = &crate::deploy::containers_of("daemonset-watch.yaml", "DaemonSet")[0];
    let caps: Vec<String> = crate::deploy::added_capabilities(manifest)
        .iter()
        .map(|c| format!("CAP_{}", c.to_uppercase()))
        .collect();
    assert_eq!(caps, ["CAP_BPF", "CAP_PERFMON"]);
    let mut flags = Vec::new();
    for cap in ALL_CAPS.iter().filter(|c| !caps.iter().any(|k| k == *c)) {
        flags.extend(["--cap-drop".to_owned(), (*cap).to_owned()]);
    }
    for cap in &caps {
        flags.extend(["--cap-add".to_owned(), cap.clone()]);
    }
    // Every host path the manifest mounts, read-only, at its place; containerd's task
    // directory is this test's containerd's.
    let mut mounted = Vec::new();
    for m in manifest["volumeMounts"].as_array().expect("volumeMounts") {
        let dst = m["mountPath"].as_str().expect("mountPath");
        assert_eq!(m["readOnly"], true, "{dst} is mounted writable");
        let src = match dst {
            "/host/run/containerd/io.containerd.runtime.v2.task" => rt
                .state_dir()
                .join("io.containerd.runtime.v2.task")
                .display()
                .to_string(),
            other if other.starts_with("/host/") => {
                // A runtime this node does not run: an empty directory, as the kubelet makes.
                let dir = rt.dir().join(format!("empty{}", mounted.len()));
                std::fs::create_dir_all(&dir).expect("mkdir");
                dir.display().to_string()
            }
            other => other.to_owned(),
        };
        flags.extend([
            "--mount".to_owned(),
            format!("type=bind,src={src},dst={dst},options=rbind:ro"),
        ]);
        mounted.push(dst.to_owned());
    }
    flags.extend([
        "--seccomp".to_owned(),
        "--read-only".to_owned(),
        "--mount".to_owned(),
        format!(
            "type=bind,src={},dst=/bin,options=rbind:ro",
            rt.rootfs().join("bin").display()
        ),
    ]);
    let pod = setup.pod("memstress-watch");
    let ds = pod.container_with("watch", Some(128 * MIB), &flags, Some(IMAGE), &sleep_argv());
    let args: Vec<String> = manifest["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("a string").to_owned())
        .collect();
    let mut argv = vec![MEMSTRESS];
    argv.extend(args.iter().map(String::as_str));
    let mut watch = exec(rt, &ds, &argv);
    watch.wait_type("attached", Duration::from_secs(60));
    let address = watch.wait_type("metrics", Duration::from_secs(10))["address"]
        .as_str()
        .expect("an address")
        .replace("0.0.0.0", "127.0.0.1");
    // An app pod whose container outgrows its limit.
    let uid = new_id()[..36].to_owned();
    let app_pod = Pod::new(rt, "shop", "cart", &uid, Qos::Burstable);
    let app = app_pod.container(
        "app",
        Some(32 * MIB),
        &memstress_tests::runtime::hog_argv(64 * MIB),
    );
    let kill = watch.wait_for("the app's kill", Duration::from_secs(30), |v| {
        v["type"] == "oom_kill" && v["victim"]["container"]["id"] == app.id.as_str()
    });
    let k = &kill["victim"]["kubernetes"];
    assert_eq!(
        (
            &k["pod_uid"],
            &k["namespace"],
            &k["pod_name"],
            &k["container_name"]
        ),
        (
            &Value::from(uid.as_str()),
            &Value::from("shop"),
            &Value::from("cart"),
            &Value::from("app")
        ),
        "{kill}"
    );
    let body = scrape_in(pod.sandbox.init_pid, &address);
    assert!(
        body.lines()
            .any(|l| l.starts_with("memstress_oom_kills_total{")
                && l.contains("namespace=\"shop\",pod=\"cart\",container=\"app\"")),
        "{body}"
    );
    let finished = watch.interrupt(Duration::from_secs(15));
    assert!(!finished.stderr.contains("error:"), "{}", finished.stderr);
}

/// The body of GET /metrics at `address`, from the network namespace of process `pid` (a
/// thread of this test joins it).
fn scrape_in(pid: u32, address: &str) -> String {
    let address = address.to_owned();
    thread::spawn(move || {
        use std::os::fd::AsRawFd as _;
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("open the netns");
        // SAFETY: setns(2) on this thread only, with a namespace fd we hold open.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        memstress_tests::scrape_metrics(&address)
    })
    .join()
    .expect("the scraping thread")
}
