//! `memstress run` and `memstress demo`: real stressors in real cgroups, checked against what
//! the kernel counts.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use memstress_tests::{
    Kmsg, Memstress, TestCgroup, alive, assert_one_line_error, hierarchy, memstress_output,
    require_root, test_name,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn pids_started(lines: &[Value]) -> Vec<u64> {
    lines
        .iter()
        .filter(|l| l["type"] == "started" || l["type"] == "restarted")
        .filter_map(|l| l["pid"].as_u64())
        .collect()
}

/// `--size` is the total across workers, and it is what the cgroup is charged: 4 workers and
/// 50 MiB raise the cgroup's usage (read here, not from memstress) by 50 MiB ± 2%.
#[test]
fn size_is_the_total_charge_across_workers() {
    require_root();
    let target = TestCgroup::new("size", Some(512 * MIB));
    let before = target.usage();
    let mut run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--cgroup",
        target.path(),
        "--size",
        "50Mi",
        "--workers",
        "4",
    ]);
    let plan = run.wait_type("plan", Duration::from_secs(10));
    assert_eq!(plan["total_bytes"], 50 * MIB);
    assert_eq!(plan["workers"], 4);
    let shares: Vec<u64> = plan["bytes_per_worker"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(shares.iter().sum::<u64>(), 50 * MIB);
    run.wait_type("full", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let grown = target.usage() - before;
    let finished = run.interrupt(Duration::from_secs(15));
    assert!(finished.status.success(), "{}", finished.stderr);
    let want = 50 * MIB;
    assert!(
        grown.abs_diff(want) <= want / 50,
        "usage grew by {grown} bytes, want {want} ± 2%"
    );
    let summary = finished.of_type("summary")[0];
    assert_eq!(summary["outcome"], "interrupted");
    assert_eq!(summary["requested_bytes"], want);
    // Stressors are gone and the target (not ours to remove) is left in place.
    for pid in pids_started(&finished.lines) {
        assert!(!alive(pid as u32), "stressor {pid} outlived the run");
    }
    assert!(target.cgroup.dir.is_dir());
    assert!(target.cgroup.procs().unwrap().is_empty());
}

/// A percent size is a percent of the target's limit (here set on its parent).
#[test]
fn percent_size_is_of_the_nearest_limit() {
    require_root();
    let parent = TestCgroup::new("pct", Some(200 * MIB));
    let child = parent.child("ctr", None);
    let out = memstress_output(&[
        "run",
        "-o",
        "json",
        "--cgroup",
        &child.path,
        "--size",
        "50%",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{out:?}");
    let plan: Value = serde_json::from_slice(&out.stdout).expect("one JSON plan line");
    assert_eq!(plan["type"], "plan");
    assert_eq!(plan["total_bytes"], 100 * MIB);
    assert_eq!(plan["target"]["limit_bytes"], 200 * MIB);
    assert_eq!(plan["target"]["limit_from"], parent.path());
    assert_eq!(plan["target"]["version"], hierarchy().version.number());
}

/// Crossing the limit gets a stressor OOM-killed; `--on-oom stop` ends the run with exit
/// code 3, the kill is reported with the stressor's pid (the one dmesg names), and the
/// sandbox cgroup is gone afterwards.
#[test]
fn crossing_the_limit_reports_the_kill_and_stops() {
    require_root();
    let name = test_name("stop");
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
        "128Mi",
        "--workers",
        "2",
        "--on-oom",
        "stop",
    ]);
    let finished = run.wait(Duration::from_secs(60));
    assert_eq!(
        finished.status.code(),
        Some(3),
        "stderr: {}",
        finished.stderr
    );
    let kills = finished.of_type("oom_kill");
    assert_eq!(kills.len(), 1, "stop ends at the first kill: {kills:?}");
    let started = pids_started(&finished.lines);
    let victim = kills[0]["victim"]["pid"].as_u64().unwrap();
    assert!(
        started.contains(&victim),
        "victim {victim} is not a stressor {started:?}"
    );
    assert_eq!(kills[0]["stressor"], true);
    assert_eq!(kills[0]["victim"]["cgroup"], format!("/{name}"));
    assert_eq!(kills[0]["victim"]["comm"], "memstress-vm");
    let dmesg = kmsg.kills();
    assert!(
        dmesg
            .iter()
            .any(|k| u64::from(k.pid) == victim && k.comm == "memstress-vm"),
        "dmesg has no kill of {victim}: {dmesg:?}"
    );
    let summary = finished.of_type("summary")[0];
    assert_eq!(summary["outcome"], "stopped_by_oom");
    assert_eq!(summary["oom_kills_stressors"], 1);
    assert!(
        !hierarchy().mount.join(&name).exists(),
        "sandbox left behind"
    );
    for pid in started {
        assert!(!alive(pid as u32));
    }
}

/// `--on-oom restart` brings killed stressors back, and every kill is reported.
#[test]
fn restart_policy_brings_stressors_back() {
    require_root();
    let name = test_name("restart");
    let mut run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--new",
        &name,
        "--limit",
        "48Mi",
        "--size",
        "64Mi",
        "--workers",
        "1",
        "--on-oom",
        "restart",
    ]);
    run.wait_for("a second restart", Duration::from_secs(30), |v| {
        v["type"] == "restarted" && v["restarts"].as_u64() >= Some(2)
    });
    let finished = run.interrupt(Duration::from_secs(15));
    assert!(finished.status.success(), "{}", finished.stderr);
    let kills = finished.of_type("oom_kill");
    let started = pids_started(&finished.lines);
    assert!(kills.len() >= 2, "{kills:?}");
    for k in &kills {
        assert!(started.contains(&k["victim"]["pid"].as_u64().unwrap()));
    }
    let summary = finished.of_type("summary")[0];
    assert!(summary["restarts"].as_u64() >= Some(2));
    assert!(!hierarchy().mount.join(&name).exists());
}

/// After `kill -9` of the controller, no stressor and no created cgroup remains within 2 s.
#[test]
fn sigkill_of_the_controller_leaves_nothing() {
    require_root();
    let name = test_name("kill9");
    let mut run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--new",
        &name,
        "--limit",
        "128Mi",
        "--size",
        "64Mi",
        "--workers",
        "3",
    ]);
    run.wait_type("full", Duration::from_secs(30));
    let dir = hierarchy().mount.join(&name);
    assert!(dir.is_dir());
    run.signal(libc::SIGKILL);
    let finished = run.wait(Duration::from_secs(5));
    let started = pids_started(&finished.lines);
    assert_eq!(started.len(), 3);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && (dir.exists() || started.iter().any(|&p| alive(p as u32))) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<_> = started.iter().filter(|&&p| alive(p as u32)).collect();
    assert!(left.is_empty(), "stressors survived: {left:?}");
    assert!(
        !Path::new(&dir).exists(),
        "cgroup {} survived",
        dir.display()
    );
}

/// Bad input is refused with one line naming it, and nothing is created.
#[test]
fn bad_input_is_refused_before_anything_is_created() {
    require_root();
    let name = test_name("bad");
    for (args, needles) in [
        (vec!["--size", "12Qi"], vec!["12Qi", "Mi"]),
        (vec!["--size", "-5Mi"], vec!["-5Mi"]),
        (vec!["--size", "0"], vec!["`0`"]),
        (vec!["--size", "abc"], vec!["abc"]),
        (vec!["--size", "10Mi", "--workers", "0"], vec!["--workers"]),
    ] {
        let mut full = vec!["run", "--new", &name, "--limit", "64Mi"];
        full.extend(args.iter().copied());
        let out = memstress_output(&full);
        assert!(!out.status.success(), "{full:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for needle in &needles {
            assert!(
                stderr.contains(needle),
                "{full:?}: `{stderr}` lacks {needle}"
            );
        }
        assert!(
            !hierarchy().mount.join(&name).exists(),
            "{full:?} created the cgroup"
        );
    }
    let out = memstress_output(&["run", "--cgroup", "/", "--size", "10Mi"]);
    assert_one_line_error(
        &String::from_utf8_lossy(&out.stderr),
        &["root cgroup", "--allow-root-cgroup"],
    );
    let target = TestCgroup::new("nolimit", None);
    let out = memstress_output(&["run", "--cgroup", target.path(), "--size", "50%"]);
    assert_one_line_error(&String::from_utf8_lossy(&out.stderr), &["50%", "--of-node"]);
    let out = memstress_output(&[
        "run",
        "--new",
        target.path(),
        "--limit",
        "64Mi",
        "--size",
        "1Mi",
    ]);
    assert_one_line_error(&String::from_utf8_lossy(&out.stderr), &["already exists"]);
}

/// The README's main job: the demo sees and reports its kill, and cleans up.
#[test]
fn demo_reports_a_kill_and_cleans_up() {
    require_root();
    let mut kmsg = Kmsg::open();
    let run = Memstress::start(&["demo", "-o", "json"]);
    let pid = run.pid();
    let finished = run.wait(Duration::from_secs(90));
    assert!(finished.status.success(), "{}", finished.stderr);
    let kills = finished.of_type("oom_kill");
    assert_eq!(kills.len(), 1);
    let dmesg = kmsg.kills();
    let victim = kills[0]["victim"]["pid"].as_u64().unwrap();
    assert!(
        dmesg.iter().any(|k| u64::from(k.pid) == victim),
        "{dmesg:?}"
    );
    assert!(
        !hierarchy()
            .mount
            .join(format!("memstress-demo-{pid}"))
            .exists()
    );
}
