//! `memstress run` and `memstress demo`: real stressors in real cgroups, checked against what
//! the kernel counts.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use memstress_tests::{
    Kmsg, Memstress, TestCgroup, alive, assert_one_line_error, command_in, hierarchy,
    memstress_bin, memstress_output, require_root, test_name,
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

/// `--size 50%` of a 200 MiB limit (set on the parent) charges 100 MiB ± 2%.
#[test]
fn percent_size_charges_that_share_of_the_limit() {
    require_root();
    let parent = TestCgroup::new("pct-run", Some(200 * MIB));
    let child = parent.child("ctr", None);
    let before = child.usage().unwrap();
    let mut run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--cgroup",
        &child.path,
        "--size",
        "50%",
        "--workers",
        "2",
    ]);
    run.wait_type("full", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let grown = child.usage().unwrap() - before;
    let finished = run.interrupt(Duration::from_secs(15));
    assert!(finished.status.success(), "{}", finished.stderr);
    let want = 100 * MIB;
    assert!(
        grown.abs_diff(want) <= want / 50,
        "usage grew by {grown}, want {want} ± 2%"
    );
}

fn working_set(cgroup: &memstress::cgroup::Cgroup) -> u64 {
    cgroup.counters().expect("read counters").working_set_bytes
}

/// `--fill-to` keeps the working set within ±3% of its goal while another process in the
/// cgroup (an app: memstress's own worker, driven by this test) allocates and frees.
#[test]
fn fill_to_holds_the_working_set_as_the_app_moves() {
    require_root();
    let target = TestCgroup::new("fill", Some(256 * MIB));
    let goal = ((256 * MIB) as f64 * 0.6).round() as u64;
    let mut app = command_in(&target.cgroup, memstress_bin().to_str().unwrap(), None)
        .args([
            "__stressor",
            "--name",
            "test-app",
            "--size",
            &(40 * MIB).to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the app");
    let mut app_in = app.stdin.take().unwrap();
    let mut app_out = BufReader::new(app.stdout.take().unwrap());
    let wait_app = |app_out: &mut BufReader<std::process::ChildStdout>| loop {
        let mut line = String::new();
        assert!(app_out.read_line(&mut line).unwrap() > 0, "the app died");
        if line.starts_with("held ") {
            break;
        }
    };
    wait_app(&mut app_out);
    let mut run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--cgroup",
        target.path(),
        "--fill-to",
        "60%",
        "--workers",
        "2",
    ]);
    let plan = run.wait_type("plan", Duration::from_secs(10));
    assert_eq!(plan["fill_to_bytes"], goal);
    run.wait_type("full", Duration::from_secs(30));
    let check = |when: &str| {
        // Let the controller see the change and settle (it acts on 100 ms samples).
        std::thread::sleep(Duration::from_millis(1500));
        let ws = working_set(&target.cgroup);
        assert!(
            ws.abs_diff(goal) <= goal * 3 / 100,
            "{when}: working set {ws}, goal {goal} ± 3%"
        );
    };
    check("at the start");
    for (bytes, when) in [
        (90 * MIB, "after the app grew by 50 MiB"),
        (10 * MIB, "after the app freed 80 MiB"),
        (60 * MIB, "after the app grew again"),
    ] {
        writeln!(app_in, "size {bytes} 1").unwrap();
        wait_app(&mut app_out);
        check(when);
    }
    let finished = run.interrupt(Duration::from_secs(15));
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(
        finished.of_type("oom_kill").is_empty(),
        "fill-to must not cause OOM kills"
    );
    drop(app_in);
    app.wait().unwrap();
}

fn cpu_ticks(pid: u64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the comm.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// During the hold, stressors use under 1% of one CPU with the default pattern.
#[test]
fn holding_costs_no_cpu() {
    require_root();
    let target = TestCgroup::new("cpu", Some(512 * MIB));
    let mut run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--cgroup",
        target.path(),
        "--size",
        "256Mi",
        "--workers",
        "2",
    ]);
    run.wait_type("full", Duration::from_secs(30));
    let pids: Vec<u64> = {
        let started = run.wait_type("started", Duration::from_secs(1));
        assert!(started["pid"].as_u64().is_some());
        target
            .cgroup
            .procs()
            .unwrap()
            .into_iter()
            .map(u64::from)
            .collect()
    };
    assert_eq!(pids.len(), 2);
    let before: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
    let window = Duration::from_secs(3);
    std::thread::sleep(window);
    let used: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>() - before;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let share = used as f64 / hz / window.as_secs_f64();
    assert!(
        share < 0.01,
        "stressors used {:.2}% of a CPU while holding",
        share * 100.0
    );
    run.interrupt(Duration::from_secs(15));
}

/// Page cache is charged but not in the working set: usage rises by the size, the working
/// set barely moves (the difference the kubelet acts on).
#[test]
fn page_cache_raises_usage_but_not_the_working_set() {
    require_root();
    let target = TestCgroup::new("cache", Some(512 * MIB));
    let before = target.cgroup.counters().unwrap();
    let mut run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--cgroup",
        target.path(),
        "--size",
        "64Mi",
        "--kind",
        "file",
    ]);
    run.wait_type("full", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let after = target.cgroup.counters().unwrap();
    let finished = run.interrupt(Duration::from_secs(15));
    assert!(finished.status.success(), "{}", finished.stderr);
    let usage = after.usage_bytes - before.usage_bytes;
    let ws = after
        .working_set_bytes
        .saturating_sub(before.working_set_bytes);
    assert!(usage >= 63 * MIB, "usage rose by only {usage}");
    assert!(
        ws < 8 * MIB,
        "working set rose by {ws}: page cache counted as working set"
    );
    // The unnamed file left nothing behind.
    assert!(target.cgroup.procs().unwrap().is_empty());
}

/// `--pid` targets the memory cgroup the process is in.
#[test]
fn pid_targets_its_memory_cgroup() {
    require_root();
    let target = TestCgroup::new("pid", Some(128 * MIB));
    let mut sleeper = command_in(&target.cgroup, "sleep", None)
        .arg("30")
        .spawn()
        .unwrap();
    let pid = sleeper.id().to_string();
    let out = memstress_output(&[
        "run",
        "-o",
        "json",
        "--pid",
        &pid,
        "--size",
        "10Mi",
        "--dry-run",
    ]);
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    assert!(out.status.success(), "{out:?}");
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["target"]["path"], target.path());
    assert_eq!(plan["target"]["limit_bytes"], 128 * MIB);
    let out = memstress_output(&["run", "--pid", "999999999", "--size", "10Mi"]);
    assert_one_line_error(
        &String::from_utf8_lossy(&out.stderr),
        &["no process 999999999"],
    );
}

/// `--self` stresses the cgroup memstress runs in, and says that it cannot protect itself
/// from the OOM killer without CAP_SYS_RESOURCE (which this machine's root lacks).
#[test]
fn self_targets_its_own_cgroup() {
    require_root();
    let target = TestCgroup::new("self", Some(256 * MIB));
    let mut cmd = command_in(&target.cgroup, memstress_bin().to_str().unwrap(), None);
    cmd.args([
        "run", "-o", "json", "--self", "--size", "32Mi", "--hold", "1s",
    ]);
    let finished = Memstress::start_command(&mut cmd).wait(Duration::from_secs(30));
    assert!(finished.status.success(), "{}", finished.stderr);
    let plan = finished.of_type("plan")[0];
    assert_eq!(plan["target"]["path"], target.path());
    let has_sys_resource = memstress::privilege::has(
        memstress::privilege::effective(),
        memstress::privilege::CAP_SYS_RESOURCE,
    );
    if has_sys_resource {
        assert!(
            !finished.stderr.contains("cannot protect"),
            "{}",
            finished.stderr
        );
    } else {
        assert!(
            finished.stderr.contains("CAP_SYS_RESOURCE"),
            "{}",
            finished.stderr
        );
    }
    let summary = finished.of_type("summary")[0];
    assert_eq!(summary["outcome"], "completed");
    assert!(summary["charged_bytes"].as_u64().unwrap() >= 31 * MIB);
}

/// `--self` past the limit: the controller protects itself (oom_score_adj -1000), but its
/// stressors keep the value it had, so the OOM killer takes a stressor, not nothing.
#[test]
fn self_past_the_limit_kills_a_stressor() {
    require_root();
    let target = TestCgroup::new("self-oom", Some(64 * MIB));
    let mut cmd = command_in(&target.cgroup, memstress_bin().to_str().unwrap(), None);
    cmd.args([
        "run", "-o", "json", "--self", "--size", "128Mi", "--on-oom", "stop",
    ]);
    let finished = Memstress::start_command(&mut cmd).wait(Duration::from_secs(60));
    assert_eq!(finished.status.code(), Some(3), "{}", finished.stderr);
    let kills = finished.of_type("oom_kill");
    assert_eq!(kills[0]["victim"]["comm"], "memstress-vm", "{kills:?}");
    assert_eq!(
        kills[0]["victim"]["oom_score_adj"], 0,
        "the stressor inherited -1000?"
    );
    assert_eq!(finished.of_type("summary")[0]["outcome"], "stopped_by_oom");
}

/// `--pattern keep-dirty` keeps rewriting: page cache held that way stays dirty, while the
/// default pattern leaves it clean (written back).
#[test]
fn keep_dirty_keeps_pages_dirty() {
    require_root();
    for (pattern, dirty_expected) in [("hold", false), ("keep-dirty", true)] {
        let target = TestCgroup::new(&format!("dirty-{pattern}"), Some(512 * MIB));
        let mut run = Memstress::start(&[
            "run",
            "-o",
            "json",
            "--cgroup",
            target.path(),
            "--size",
            "32Mi",
            "--kind",
            "file",
            "--pattern",
            pattern,
            "--rewrite-every",
            "1s",
        ]);
        run.wait_type("full", Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(1500));
        let dirty = target.cgroup.stat().unwrap()["dirty"];
        run.interrupt(Duration::from_secs(15));
        if dirty_expected {
            assert!(dirty > 16 * MIB, "{pattern}: only {dirty} bytes dirty");
        } else {
            assert!(dirty < 4 * MIB, "{pattern}: {dirty} bytes dirty");
        }
    }
}
