//! Faults memstress must survive: `kill -9` of the controller in every phase, every stressor
//! OOM-killed, pressure on the controller's own memcg, a ring buffer filled faster than it is
//! read, and a second run on a target that is taken.

use std::{
    collections::BTreeSet,
    fs,
    path::Path,
    time::{Duration, Instant},
};

use memstress_tests::{
    App, Kmsg, Memstress, TestCgroup, alive, assert_one_line_error, bpf::Held, command_in,
    hierarchy, memstress_bin, require_root, test_name,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn started(lines: &[Value]) -> Vec<u32> {
    lines
        .iter()
        .filter(|l| l["type"] == "started")
        .filter_map(|l| l["pid"].as_u64())
        .map(|p| p as u32)
        .collect()
}

/// The controller's children with this comm (the janitor is `memstress-clean`).
fn children_named(parent: u32, comm: &str) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((head, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let name = head.split_once('(').map_or("", |(_, n)| n);
            let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
            name == comm && ppid == Some(parent)
        })
        .collect()
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Starts a run with `args` on a new cgroup, waits until `ready` says the phase is reached,
/// SIGKILLs the controller, and checks that within 3 s nothing it made is left: no stressor,
/// no janitor, no cgroup, no file, and none of the BPF programs, links and maps it held.
fn kill9_in_phase(phase: &str, args: &[&str], ready: impl Fn(&mut Memstress)) {
    require_root();
    let name = test_name(&format!("kill9-{phase}"));
    let dir = hierarchy().mount.join(&name);
    let file_dir = std::env::temp_dir();
    let files_before = files_in(&file_dir);
    let mut full = vec!["run", "-o", "json", "--new", &name];
    full.extend_from_slice(args);
    let mut run = Memstress::start(&full);
    let controller = run.pid();
    run.wait_type("attached", Duration::from_secs(30));
    ready(&mut run);
    let held = Held::by(controller);
    assert_eq!(
        held.still_loaded(),
        held,
        "{phase}: the BPF existence check is broken"
    );
    assert!(
        !held.programs.is_empty() && !held.maps.is_empty(),
        "{phase}: the controller holds no BPF objects? {held:?}"
    );
    let janitors = children_named(controller, "memstress-clean");
    assert_eq!(janitors.len(), 1, "{phase}: janitor not found");
    assert!(dir.is_dir(), "{phase}: {} not created", dir.display());

    run.signal(libc::SIGKILL);
    let finished = run.wait(Duration::from_secs(5));
    let stressors = started(&finished.lines);
    assert!(!stressors.is_empty(), "{phase}: no stressor started");
    let deadline = Instant::now() + Duration::from_secs(3);
    let left = || {
        let mut left = Vec::new();
        left.extend(
            stressors
                .iter()
                .chain(&janitors)
                .filter(|&&p| alive(p))
                .map(|p| format!("process {p}")),
        );
        if dir.exists() {
            left.push(format!("cgroup {}", dir.display()));
        }
        let bpf = held.still_loaded();
        if !bpf.is_empty() {
            left.push(format!("BPF objects {bpf:?}"));
        }
        left
    };
    while Instant::now() < deadline && !left().is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        left(),
        Vec::<String>::new(),
        "{phase}: left behind after kill -9"
    );
    let new_files: Vec<_> = files_in(&file_dir)
        .difference(&files_before)
        .filter(|f| f.contains("memstress"))
        .cloned()
        .collect();
    assert!(new_files.is_empty(), "{phase}: files left: {new_files:?}");
}

#[test]
fn kill9_while_ramping_leaves_nothing() {
    kill9_in_phase(
        "ramp",
        &[
            "--limit",
            "256Mi",
            "--size",
            "96Mi",
            "--workers",
            "3",
            "--ramp",
            "30s",
        ],
        |run| {
            run.wait_for("a sample while filling", Duration::from_secs(30), |l| {
                l["type"] == "sample" && l["stressors_charge_bytes"].as_u64() > Some(4 * MIB)
            });
        },
    );
}

#[test]
fn kill9_while_holding_leaves_nothing() {
    kill9_in_phase(
        "hold",
        &["--limit", "128Mi", "--size", "48Mi", "--workers", "3"],
        |run| {
            run.wait_type("full", Duration::from_secs(30));
        },
    );
}

#[test]
fn kill9_during_an_oom_leaves_nothing() {
    kill9_in_phase(
        "oom",
        &[
            "--limit",
            "64Mi",
            "--size",
            "256Mi",
            "--workers",
            "2",
            "--on-oom",
            "restart",
        ],
        |run| {
            run.wait_type("oom_kill", Duration::from_secs(30));
        },
    );
}

#[test]
fn kill9_while_holding_page_cache_leaves_nothing() {
    let dir = std::env::temp_dir();
    let dir = dir.to_str().expect("UTF-8 temp dir");
    kill9_in_phase(
        "file",
        &[
            "--limit",
            "128Mi",
            "--size",
            "32Mi",
            "--kind",
            "file",
            "--file-dir",
            dir,
        ],
        |run| {
            run.wait_type("full", Duration::from_secs(30));
        },
    );
}

/// Every stressor OOM-killed: each kill reported (and in dmesg), the run ends with
/// `all_stressors_killed` and exit code 0, and the sandbox is removed.
#[test]
fn every_stressor_oom_killed_is_reported_and_the_run_ends() {
    require_root();
    let name = test_name("allkilled");
    let mut kmsg = Kmsg::open();
    let run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--new",
        &name,
        "--limit",
        "64Mi",
        "--size",
        "512Mi",
        "--workers",
        "4",
    ]);
    let finished = run.wait(Duration::from_secs(60));
    assert!(finished.status.success(), "{}", finished.stderr);
    let stressors = started(&finished.lines);
    assert_eq!(stressors.len(), 4);
    let kills: Vec<u64> = finished
        .of_type("oom_kill")
        .iter()
        .filter_map(|k| k["victim"]["pid"].as_u64())
        .collect();
    let dmesg: Vec<u64> = kmsg.kills().iter().map(|k| u64::from(k.pid)).collect();
    for pid in &stressors {
        assert!(
            kills.contains(&u64::from(*pid)),
            "kill of {pid} not reported"
        );
        assert!(
            dmesg.contains(&u64::from(*pid)),
            "{pid} not in dmesg: {dmesg:?}"
        );
    }
    let summary = finished.of_type("summary");
    assert_eq!(summary[0]["outcome"], "all_stressors_killed");
    assert_eq!(summary[0]["oom_kills_stressors"], 4);
    assert!(!hierarchy().mount.join(&name).exists());
}

/// The controller's own memcg OOMs (a hog beside it): the kernel kills the hog, and the
/// controller carries on, completes its run and cleans up.
#[test]
fn controller_survives_an_oom_in_its_own_memcg() {
    require_root();
    let home = TestCgroup::new("ctl-home", Some(96 * MIB));
    let name = test_name("ctl-target");
    let mut kmsg = Kmsg::open();
    let bin = memstress_bin();
    let mut cmd = command_in(&home.cgroup, bin.to_str().expect("UTF-8 path"), None);
    cmd.args([
        "run", "-o", "json", "--new", &name, "--limit", "128Mi", "--size", "32Mi", "--hold", "6s",
    ]);
    let mut run = Memstress::start_command(&mut cmd);
    run.wait_type("full", Duration::from_secs(30));
    let mut hog = App::start(&home.cgroup, "hog", 8 * MIB, None);
    let hog_pid = hog.pid();
    hog.grow(512 * MIB);
    assert_eq!(
        hog.wait_signal(),
        Some(libc::SIGKILL),
        "the hog was not killed"
    );
    let finished = run.wait(Duration::from_secs(30));
    assert!(
        finished.status.success(),
        "controller failed: {}",
        finished.stderr
    );
    assert_eq!(finished.of_type("summary")[0]["outcome"], "completed");
    let dmesg = kmsg.kills();
    assert!(
        dmesg.iter().any(|k| k.pid == hog_pid),
        "the hog's kill is not in dmesg: {dmesg:?}"
    );
    assert!(
        !dmesg.iter().any(|k| k.comm.starts_with("memstress")),
        "the kernel killed memstress: {dmesg:?}"
    );
    assert!(!hierarchy().mount.join(&name).exists());
}

/// A reader that stalls while kills pile up: the records the full ring buffer refused are
/// counted, reported in a `dropped` line once the reader resumes, and in the `end` line.
#[test]
fn a_full_ring_buffer_is_counted_and_reported() {
    require_root();
    let storm = TestCgroup::new("ring", Some(16 * MIB));
    let mut kmsg = Kmsg::open();
    let mut watch = Memstress::start(&["watch", "-o", "json", "--ring-buffer", "4Ki"]);
    watch.wait_type("attached", Duration::from_secs(30));
    memstress_tests::storm_while_stopped(&watch, &storm.cgroup);
    watch.wait_type("dropped", Duration::from_secs(10));
    let finished = watch.interrupt(Duration::from_secs(20));
    let kernel = kmsg.kills().len() as u64;
    let reported = finished.of_type("oom_kill").len() as u64;
    let dropped: u64 = finished
        .of_type("dropped")
        .iter()
        .map(|d| d["records"].as_u64().unwrap())
        .sum();
    let end = finished.of_type("end");
    assert!(
        kernel >= 20,
        "only {kernel} kills: the ring buffer was not stressed"
    );
    assert!(dropped > 0, "nothing was dropped with a 4 KiB ring buffer");
    assert_eq!(
        end[0]["dropped_records"], dropped,
        "dropped lines and end disagree"
    );
    assert!(
        reported < kernel,
        "{reported} of {kernel} kills reported despite drops"
    );
    assert!(
        finished.stderr.contains("dropped"),
        "no warning on stderr: {}",
        finished.stderr
    );
    // The BPF programs' own diagnostics of the same drops are for -vv only.
    assert!(
        !finished.stderr.contains("BPF warn"),
        "BPF diagnostics without -vv: {}",
        finished.stderr
    );
}

/// A second run on a target that is taken refuses at once (exit code 5), naming the first
/// run's pid, and creates nothing.
#[test]
fn a_second_run_on_one_target_is_refused() {
    require_root();
    let target = TestCgroup::new("taken", Some(128 * MIB));
    let mut first = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--cgroup",
        target.path(),
        "--size",
        "16Mi",
    ]);
    first.wait_type("full", Duration::from_secs(30));
    let usage = target.usage();
    let out = std::process::Command::new(memstress_bin())
        .args(["run", "-q", "--cgroup", target.path(), "--size", "16Mi"])
        .output()
        .expect("run memstress");
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_one_line_error(
        &String::from_utf8_lossy(&out.stderr),
        &[
            target.path(),
            &first.pid().to_string(),
            "already the target",
        ],
    );
    // Nothing was started by the second: the usage did not move by its 16 MiB.
    assert!(target.usage() < usage + 4 * MIB);
    let finished = first.interrupt(Duration::from_secs(20));
    assert!(finished.status.success(), "{}", finished.stderr);
    // Free again once the first is gone.
    let out = std::process::Command::new(memstress_bin())
        .args([
            "run",
            "-q",
            "--cgroup",
            target.path(),
            "--size",
            "4Mi",
            "--hold",
            "1s",
        ])
        .output()
        .expect("run memstress");
    assert!(out.status.success(), "{out:?}");
}
