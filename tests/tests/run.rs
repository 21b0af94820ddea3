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

fn working_set(cgroup: &memstress::target::cgroup::Cgroup) -> u64 {
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
        let mut args = vec![
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
        ];
        // --rewrite-every is refused without keep-dirty (it would change nothing).
        if dirty_expected {
            args.extend(["--rewrite-every", "1s"]);
        }
        let mut run = Memstress::start(&args);
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

/// A size past the limit gets a stressor OOM-killed before all are full: the hold starts when
/// the survivors are full and ends, with `--on-oom report` and with `restart` (it ran until an
/// outside timeout before). The summary counts what the survivors hold, as the last sample
/// does, not the dead stressor's share.
#[test]
fn a_hold_ends_after_a_stressor_is_killed_before_all_are_full() {
    require_root();
    for policy in ["report", "restart"] {
        let name = test_name(&format!("hold-{policy}"));
        let started = Instant::now();
        let run = Memstress::start(&[
            "run",
            "-o",
            "json",
            "--new",
            &name,
            "--limit",
            "128Mi",
            "--size",
            "192Mi",
            "--workers",
            "2",
            "--hold",
            "3s",
            "--on-oom",
            policy,
        ]);
        let finished = run.wait(Duration::from_secs(40));
        assert!(finished.status.success(), "{policy}: {}", finished.stderr);
        let summary = finished.of_type("summary")[0];
        assert_eq!(summary["outcome"], "completed", "{policy}: {summary}");
        assert!(summary["hold_ms"].as_u64() >= Some(3000), "{summary}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{policy}: took {:?}",
            started.elapsed()
        );
        assert!(
            summary["oom_kills_stressors"].as_u64() >= Some(1),
            "{summary}"
        );
        let full = finished.of_type("full")[0];
        assert!(full["stressors_oom_killed"].as_u64() >= Some(1), "{full}");
        if policy == "report" {
            // One stressor is dead: what is held is the survivor's share, as sampled.
            let last = finished.of_type("sample").last().copied().unwrap().clone();
            assert_eq!(last["stressors_alive"], 1, "{last}");
            assert_eq!(
                summary["held_bytes"], last["stressors_held_bytes"],
                "{summary}"
            );
            assert!(summary["held_bytes"].as_u64() < Some(97 * MIB), "{summary}");
            // Every kill the run reported counts, in the samples as in the summary.
            assert_eq!(
                last["run_oom_kills"],
                summary["oom_kills_stressors"].as_u64().unwrap()
                    + summary["oom_kills_others"].as_u64().unwrap(),
                "{last}"
            );
        } else {
            assert!(summary["restarts"].as_u64() >= Some(1), "{summary}");
        }
        assert!(!hierarchy().mount.join(&name).exists());
    }
}

/// A run reports every kill its pressure caused: here the app in a sibling cgroup under the
/// shared limit of the parent (dmesg: `oom_memcg=/p … task_memcg=/p/c1`), marked as outside
/// the target.
#[test]
fn a_kill_in_the_domain_outside_the_target_is_reported() {
    require_root();
    let parent = TestCgroup::new("domain", Some(128 * MIB));
    let c1 = parent.child("c1", None);
    let c2 = parent.child("c2", None);
    let mut kmsg = Kmsg::open();
    let mut app = memstress_tests::App::start(&c1, "domain-app", 70 * MIB, None);
    let finished = Memstress::start(&[
        "run", "-o", "json", "--cgroup", &c2.path, "--size", "50%", "--hold", "2s",
    ])
    .wait(Duration::from_secs(60));
    assert!(finished.status.success(), "{}", finished.stderr);
    assert_eq!(
        app.wait_signal(),
        Some(libc::SIGKILL),
        "the app was not killed"
    );
    let kills = finished.of_type("oom_kill");
    let app_kill = kills
        .iter()
        .find(|k| k["victim"]["pid"] == u64::from(app.pid()))
        .unwrap_or_else(|| panic!("no oom_kill of the app {}: {kills:?}", app.pid()));
    assert_eq!(app_kill["in_target"], false, "{app_kill}");
    assert_eq!(app_kill["stressor"], false, "{app_kill}");
    assert_eq!(app_kill["domain"]["cgroup"], parent.path(), "{app_kill}");
    assert_eq!(app_kill["victim"]["cgroup"], c1.path.as_str(), "{app_kill}");
    let summary = finished.of_type("summary")[0];
    assert_eq!(summary["oom_kills_others"], 1, "{summary}");
    assert_eq!(summary["oom_kills_outside_target"], 1, "{summary}");
    let messages = kmsg.messages();
    assert!(
        memstress_tests::kills_in(&messages)
            .iter()
            .any(|k| k.pid == app.pid()),
        "dmesg has no kill of the app {}: {messages:?}",
        app.pid()
    );
    // The report's summary line names the domain, where the kernel printed it (its OOM
    // report is rate-limited; the `Killed process` line is not).
    for o in messages
        .iter()
        .filter_map(|m| memstress_tests::parse_oom_summary(m))
        .filter(|o| o.pid == app.pid())
    {
        assert_eq!(o.oom_memcg.as_deref(), Some(parent.path()), "{o:?}");
        assert_eq!(o.task_memcg.as_deref(), Some(c1.path.as_str()), "{o:?}");
    }
}

/// A share below a stressor's own footprint would hold nothing and still be charged it: the
/// plan refuses it, naming the most workers that work, and that many workers charge the
/// cgroup exactly the size.
#[test]
fn shares_below_a_stressors_footprint_are_refused() {
    require_root();
    let name = test_name("shares");
    let out = memstress_output(&[
        "run",
        "--new",
        &name,
        "--limit",
        "512Mi",
        "--size",
        "20Mi",
        "--workers",
        "100",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_one_line_error(&stderr, &["--workers 100", "footprint", "at most"]);
    assert!(!hierarchy().mount.join(&name).exists());
    let most: u32 = stderr
        .split("at most ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no worker count in `{stderr}`"));
    assert!((10..100).contains(&most), "{stderr}");
    // That many workers fit, and charge exactly 20 MiB.
    let target = TestCgroup::new("shares-fit", Some(512 * MIB));
    let before = target.usage();
    let workers = most.to_string();
    let mut run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--cgroup",
        target.path(),
        "--size",
        "20Mi",
        "--workers",
        &workers,
    ]);
    let plan = run.wait_type("plan", Duration::from_secs(10));
    let line = plan["bytes_per_worker"].as_array().unwrap();
    assert_eq!(line.len(), most as usize);
    run.wait_type("full", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let grown = target.usage() - before;
    let finished = run.interrupt(Duration::from_secs(15));
    assert!(finished.status.success(), "{}", finished.stderr);
    let want = 20 * MIB;
    // The kernel charges a memcg in batches of 64 pages per CPU (memcg_stock): each CPU the
    // workers ran on can hold up to a batch charged and not yet used (CI once read 50
    // workers 0.46 MiB over 20 MiB on this 2-CPU machine).
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as u64;
    let stock = 64 * memstress::size::page_size() * cpus;
    assert!(
        grown.abs_diff(want) <= want / 50 + stock,
        "{most} workers: usage grew by {grown}, want {want} ± 2% + {stock} (the per-CPU charge stock)"
    );
    // The text plan states the shares in at most two terms, whatever the number of workers.
    let out = memstress_output(&[
        "run",
        "--cgroup",
        target.path(),
        "--size",
        "20Mi",
        "--workers",
        &workers,
        "--dry-run",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let stress = text.lines().find(|l| l.starts_with("stress ")).unwrap();
    assert!(stress.matches(" × ").count() <= 2, "{stress}");
}

/// Every kind of memory is charged exactly: the cgroup's usage rises by the size ± 2 %, and
/// never went higher on the way (the kernel's peak). Page cache costs its cgroup buffer heads
/// and tree nodes beside the pages (3 % on ext4), which a stressor must count.
#[test]
fn every_kind_is_charged_within_two_percent() {
    require_root();
    for kind in ["anon", "shmem", "file"] {
        let name = test_name(&format!("kind-{kind}"));
        let mut run = Memstress::start(&[
            "run", "-o", "json", "--new", &name, "--limit", "1Gi", "--size", "192Mi", "--kind",
            kind,
        ]);
        run.wait_type("full", Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(300));
        let cgroup =
            memstress::target::cgroup::Cgroup::locate(&hierarchy(), &format!("/{name}")).unwrap();
        let usage = cgroup.usage().unwrap();
        let finished = run.interrupt(Duration::from_secs(15));
        assert!(finished.status.success(), "{kind}: {}", finished.stderr);
        let want = 192 * MIB;
        assert!(
            usage.abs_diff(want) <= want / 50,
            "{kind}: usage {usage}, want {want} ± 2%"
        );
        let summary = finished.of_type("summary")[0];
        assert_eq!(summary["kernel_peak_scope"], "run", "{summary}");
        let peak = summary["kernel_peak_usage_bytes"].as_u64().unwrap();
        assert!(
            peak <= want + want / 50,
            "{kind}: the cgroup's peak was {peak}: the fill overshot {want} on the way"
        );
    }
}

/// The kernel's high-water mark of an existing v1 cgroup is its lifetime's (memstress does not
/// reset it for everyone): it is labelled so, not passed off as this run's peak.
#[test]
fn the_kernel_peak_says_what_it_covers() {
    require_root();
    let target = TestCgroup::new("peak", Some(512 * MIB));
    // An earlier, bigger user of the cgroup.
    drop(memstress_tests::App::start(
        &target.cgroup,
        "peak-app",
        200 * MIB,
        None,
    ));
    let finished = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--cgroup",
        target.path(),
        "--size",
        "96Mi",
        "--hold",
        "1s",
    ])
    .wait(Duration::from_secs(30));
    assert!(finished.status.success(), "{}", finished.stderr);
    let summary = finished.of_type("summary")[0];
    let peak = summary["kernel_peak_usage_bytes"].as_u64().unwrap();
    match (hierarchy().version, summary["kernel_peak_scope"].as_str()) {
        (memstress::target::cgroup::Version::V1, Some("cgroup_lifetime")) => {
            assert!(peak >= 200 * MIB, "{summary}");
        }
        (memstress::target::cgroup::Version::V2, Some("run")) => {
            assert!(
                peak < 100 * MIB,
                "a reset peak saw the earlier app: {summary}"
            );
        }
        (memstress::target::cgroup::Version::V2, Some("cgroup_lifetime")) => {}
        (version, scope) => panic!("{version:?}: scope {scope:?}: {summary}"),
    }
    // The run's own peak does not take the lifetime's.
    assert!(
        summary["peak_usage_bytes"].as_u64() < Some(110 * MIB),
        "{summary}"
    );
    let out = memstress_output(&[
        "run",
        "--cgroup",
        target.path(),
        "--size",
        "16Mi",
        "--hold",
        "1s",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    if hierarchy().version == memstress::target::cgroup::Version::V1 {
        assert!(text.contains("lifetime peak"), "{text}");
    }
}

/// What a run shows counts from its start: a cgroup with earlier limit hits and an OOM kill
/// starts the run at 0 of each, and ends with what the run caused.
#[test]
fn counters_count_from_the_run_s_start() {
    require_root();
    let target = TestCgroup::new("since", Some(64 * MIB));
    let mut app = memstress_tests::App::start(&target.cgroup, "since-app", 8 * MIB, None);
    app.grow(96 * MIB);
    assert_eq!(app.wait_signal(), Some(libc::SIGKILL));
    let before = target.cgroup.counters().unwrap();
    assert!(before.oom_kills >= 1 && before.limit_hits > 0, "{before:?}");
    let finished = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--cgroup",
        target.path(),
        "--size",
        "16Mi",
        "--hold",
        "1s",
    ])
    .wait(Duration::from_secs(30));
    assert!(finished.status.success(), "{}", finished.stderr);
    let samples = finished.of_type("sample");
    for s in &samples {
        assert_eq!(s["run_oom_kills"], 0, "{s}");
        assert_eq!(s["run_limit_hits"], 0, "{s}");
        assert!(s["oom_kills"].as_u64() >= Some(before.oom_kills), "{s}");
    }
    let summary = finished.of_type("summary")[0];
    assert_eq!(summary["oom_kills_stressors"], 0);
    assert_eq!(summary["oom_kills_others"], 0);
}

/// The summary says what the stressors were charged, and the cgroup's change beside it when
/// other processes moved it (here an app that freed 64 MiB while the stressors filled).
#[test]
fn the_summary_separates_the_stressors_charge_from_the_cgroups_change() {
    require_root();
    let target = TestCgroup::new("charged", Some(512 * MIB));
    let mut app = memstress_tests::App::start(&target.cgroup, "charged-app", 64 * MIB, None);
    let mut run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--cgroup",
        target.path(),
        "--size",
        "32Mi",
        "--ramp",
        "2s",
        "--hold",
        "1s",
    ]);
    run.wait_type("started", Duration::from_secs(10));
    app.resize(0);
    let finished = run.wait(Duration::from_secs(30));
    assert!(finished.status.success(), "{}", finished.stderr);
    let summary = finished.of_type("summary")[0];
    let stressors = summary["stressors_charged_bytes"].as_u64().unwrap();
    assert!(
        stressors.abs_diff(32 * MIB) <= 32 * MIB / 50,
        "stressors charged {stressors}: {summary}"
    );
    let cgroup = summary["charged_bytes"].as_u64().unwrap();
    assert!(cgroup < 8 * MIB, "the app freed 64 MiB: {summary}");
    // In words, both.
    let out = memstress_output(&[
        "run",
        "--cgroup",
        target.path(),
        "--size",
        "16Mi",
        "--hold",
        "1s",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("summary (")).unwrap();
    assert!(line.contains("the stressors were charged 16 MiB"), "{line}");
}

/// Interrupting a run before it did what was asked exits 128 + the signal's number after
/// cleaning up; stopping an unbounded hold is its normal end (0). Text output names outcomes
/// in words.
#[test]
fn an_interrupted_run_says_so_in_its_exit_code() {
    require_root();
    // During an explicit --hold: SIGINT, 130.
    let name = test_name("int-hold");
    let mut run = Memstress::start(&[
        "run", "-o", "json", "--new", &name, "--limit", "128Mi", "--size", "16Mi", "--hold", "60s",
    ]);
    run.wait_type("full", Duration::from_secs(30));
    let finished = run.interrupt(Duration::from_secs(15));
    assert_eq!(finished.status.code(), Some(130), "{}", finished.stderr);
    let summary = finished.of_type("summary")[0];
    assert_eq!(summary["outcome"], "interrupted");
    assert_eq!(summary["signal"], "SIGINT");
    assert!(!hierarchy().mount.join(&name).exists());
    // Mid-ramp: SIGTERM, 143.
    let name = test_name("term-ramp");
    let mut run = Memstress::start(&[
        "run", "-o", "json", "--new", &name, "--limit", "128Mi", "--size", "64Mi", "--ramp", "60s",
    ]);
    run.wait_type("sample", Duration::from_secs(30));
    run.signal(libc::SIGTERM);
    let finished = run.wait(Duration::from_secs(15));
    assert_eq!(finished.status.code(), Some(143), "{}", finished.stderr);
    assert_eq!(finished.of_type("summary")[0]["signal"], "SIGTERM");
    assert!(!hierarchy().mount.join(&name).exists());
    // An unbounded hold, once full: 0.
    let name = test_name("int-unbounded");
    let mut run = Memstress::start(&[
        "run", "-o", "json", "--new", &name, "--limit", "128Mi", "--size", "16Mi",
    ]);
    run.wait_type("full", Duration::from_secs(30));
    let finished = run.interrupt(Duration::from_secs(15));
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    // In text, the outcome in words.
    let name = test_name("words");
    let out = memstress_output(&[
        "run", "--new", &name, "--limit", "64Mi", "--size", "128Mi", "--on-oom", "stop",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("summary (stopped by an OOM kill (--on-oom stop)): "),
        "{text}"
    );
    assert!(!text.contains("StoppedByOom"), "{text}");
}

/// On a terminal, the status line's bar is the stressors' progress towards the size (a full
/// run shows 100 %, not usage ÷ limit), its counters count from the run's start, and a
/// restarted stressor gets a line of its own.
#[test]
fn the_status_line_shows_progress_and_restarts() {
    require_root();
    let name = test_name("tty");
    let command = format!(
        "timeout 60 {} run --new {name} --limit 48Mi --size 64Mi --workers 1 --on-oom restart \
         --hold 2s",
        memstress_bin().display()
    );
    // util-linux script(1) runs it on a pseudo-terminal and copies what it prints.
    let out = std::process::Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .output()
        .expect("run script(1)");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("restarted memstress-vm 0 as pid "), "{text}");
    let statuses: Vec<&str> = text
        .split(['\r', '\n'])
        .filter(|l| l.contains(" stressor(s) holding "))
        .collect();
    let last = statuses
        .last()
        .unwrap_or_else(|| panic!("no status line: {text}"));
    assert!(last.contains("since the start: limit hits "), "{last}");
    assert!(!hierarchy().mount.join(&name).exists());
    // A run that fills completely shows 100 %.
    let name = test_name("tty-full");
    let command = format!(
        "timeout 60 {} run --new {name} --limit 256Mi --size 64Mi --hold 1s",
        memstress_bin().display()
    );
    let out = std::process::Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .output()
        .expect("run script(1)");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text
        .split(['\r', '\n'])
        .rfind(|l| l.contains(" stressor(s) holding "))
        .unwrap_or_else(|| panic!("no status line: {text}"));
    assert!(last.contains("] 100% "), "{last}");
    assert!(last.contains("OOM kills 0"), "{last}");
}

/// A /proc/meminfo figure, in bytes.
fn meminfo(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/meminfo"))
        * 1024
}

/// Pids whose parent is this test process.
fn own_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().nth(1))
                    == Some(me.as_str())
            })
        })
        .collect()
}

/// A target whose OOM domain is the node (no limit on it or any ancestor; a `--new` limit
/// larger than the node; the root cgroup), with a size past the node's available memory:
/// refused with exit code 1 and one line naming the node as the domain, before anything is
/// created or started. Nothing approaches the node's memory: every run here is refused or
/// `--dry-run`.
#[test]
fn a_node_wide_run_is_refused_unless_allowed() {
    require_root();
    let target = TestCgroup::new("node", None);
    let size = (meminfo("MemAvailable:") + (1 << 30)).to_string();
    let huge = (2 * meminfo("MemTotal:")).to_string();
    let new = test_name("node-new");
    let root = hierarchy().root();
    let names = |c: &memstress::target::cgroup::Cgroup| -> Vec<String> {
        let mut n: Vec<String> = c
            .children()
            .unwrap()
            .iter()
            .map(|c| c.path.clone())
            .filter(|p| p.contains(&test_name("")))
            .collect();
        n.sort();
        n
    };
    let before = names(&root);
    // Orphans of memstress (a janitor, a worker) would become this process's children.
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes who reaps this process's orphans.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["run", "--cgroup", target.path(), "--size", &size],
            vec!["no memory limit on", target.path()],
        ),
        (
            vec![
                "run",
                "--cgroup",
                target.path(),
                "--size",
                &size,
                "--dry-run",
            ],
            vec!["no memory limit on", target.path()],
        ),
        (
            vec![
                "run",
                "--cgroup",
                target.path(),
                "--size",
                &size,
                "-o",
                "json",
                "--eviction-threshold",
                "0",
            ],
            vec!["global OOM"],
        ),
        (
            vec!["run", "--new", &new, "--limit", &huge, "--size", &size],
            vec!["the limit of", "more than the node can give"],
        ),
        (
            vec![
                "run",
                "--cgroup",
                "/",
                "--allow-root-cgroup",
                "--size",
                &size,
            ],
            vec!["the root cgroup"],
        ),
    ];
    for (args, needles) in &cases {
        let out = memstress_output(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let mut all = vec![
            "OOM domain is the node",
            "--allow-node-oom",
            "available memory",
        ];
        all.extend(needles.iter().copied());
        assert_one_line_error(&stderr, &all);
        assert!(out.stdout.is_empty(), "{args:?} printed a plan");
    }
    let orphans = own_children();
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) };
    assert!(orphans.is_empty(), "processes left behind: {orphans:?}");
    assert!(!root.dir.join(&new).exists(), "--new {new} was created");
    assert_eq!(names(&root), before, "a cgroup was created");
    assert!(target.cgroup.procs().unwrap().is_empty());
    assert!(target.cgroup.children().unwrap().is_empty());
    // Allowed, as a plan only: the node is the domain, and the ranking is a global OOM's,
    // every process of the node (this one among them), init exempt.
    let out = memstress_output(&[
        "run",
        "--cgroup",
        target.path(),
        "--size",
        &size,
        "--allow-node-oom",
        "--dry-run",
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let domain = &plan["domain"];
    assert_eq!(domain["kind"], "node", "{domain}");
    assert_eq!(domain["cgroup"], Value::Null);
    assert_eq!(domain["allow_node_oom"], true);
    assert!(
        domain["first"] == "eviction" || domain["first"] == "node_oom",
        "{domain}"
    );
    assert_eq!(domain["eviction_threshold_bytes"], 100 * MIB);
    let predicted = &plan["predicted_oom"];
    assert_eq!(predicted["domain"], "/");
    let ranking = predicted["ranking"].as_array().unwrap();
    assert!(
        ranking
            .iter()
            .any(|r| r["pid"] == u64::from(std::process::id())),
        "this test's process is no candidate: {predicted}"
    );
    assert!(ranking.iter().all(|r| r["pid"] != 1));
    let init = std::fs::read_to_string("/proc/1/comm").unwrap();
    assert!(
        predicted["exempt"]
            .as_array()
            .unwrap()
            .contains(&Value::from(format!("1 ({})", init.trim()))),
        "{predicted}"
    );
    let out = memstress_output(&[
        "run",
        "--cgroup",
        target.path(),
        "--size",
        &size,
        "--allow-node-oom",
        "--dry-run",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("OOM domain: the node") && text.contains("may take any process on the node"),
        "{text}"
    );
    assert!(target.cgroup.procs().unwrap().is_empty());
}

/// A limited target: its limit comes first (an OOM kill in it), and the plan says so.
#[test]
fn a_limited_plan_says_its_limit_comes_first() {
    require_root();
    let parent = TestCgroup::new("first", Some(64 * MIB));
    let child = parent.child("app", None);
    let out = memstress_output(&[
        "run",
        "--cgroup",
        &child.path,
        "--size",
        "128Mi",
        "--dry-run",
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let domain = &plan["domain"];
    assert_eq!(domain["kind"], "memcg", "{domain}");
    assert_eq!(domain["first"], "limit");
    assert_eq!(domain["cgroup"], parent.path());
    assert_eq!(domain["limit_bytes"], 64 * MIB);
    assert_eq!(plan["predicted_oom"]["domain"], parent.path());
    assert!(domain["node_available_bytes"].as_u64().unwrap() > 0);
    let text = memstress_output(&[
        "run",
        "--cgroup",
        &child.path,
        "--size",
        "128Mi",
        "--dry-run",
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("OOM domain: memcg {}", parent.path()))
            && text.contains("the limit comes first"),
        "{text}"
    );
}

/// The node's memory.available as the kubelet computes it, now (memstress's own reading).
fn node_available() -> u64 {
    memstress::target::node::NodeMemory::read()
        .expect("/proc/meminfo")
        .available
}

/// `--fill-to available=`: everything here is refused or a plan (`--dry-run`); goals are
/// relative to this machine's memory.available now, a GiB or more under it, so nothing comes
/// near its bounds. Each refusal is one line, with the exit code of its kind, before anything
/// is created or started.
#[test]
fn fill_to_available_is_refused_or_planned_as_its_goal_says() {
    require_root();
    let available = node_available();
    if available < 4 << 30 {
        eprintln!("skipped: memory.available is under 4 GiB here");
        return;
    }
    let free = TestCgroup::new("avail-free", None);
    let boxed = TestCgroup::new("avail-boxed", Some(64 * MIB));
    let goal = format!("available={}Mi", (available - (1 << 30)) >> 20);
    let threshold_above = format!("{}Mi", ((available - (1 << 30)) >> 20) + 64);
    let beyond = format!("available={}Mi", (2 * meminfo("MemTotal:")) >> 20);
    let filled = format!("available={}Mi", (available + (1 << 30)) >> 20);
    let cases: Vec<(Vec<&str>, i32, Vec<&str>)> = vec![
        // At or under the eviction threshold, with no limit: eviction, refused.
        (
            vec![
                "run",
                "--cgroup",
                free.path(),
                "--fill-to",
                &goal,
                "--eviction-threshold",
                &threshold_above,
            ],
            1,
            vec![
                "OOM domain is the node",
                "eviction threshold",
                "--allow-node-oom",
                "give at least available=",
            ],
        ),
        // Under the MemAvailable floor.
        (
            vec!["run", "--cgroup", free.path(), "--fill-to", "available=1Mi"],
            1,
            vec!["floor", "the lowest goal here is available="],
        ),
        // Already reached.
        (
            vec!["run", "--cgroup", free.path(), "--fill-to", &filled],
            1,
            vec!["nothing to fill"],
        ),
        // Beyond MemTotal.
        (
            vec!["run", "--cgroup", free.path(), "--fill-to", &beyond],
            2,
            vec!["MemTotal"],
        ),
        (
            vec!["run", "--cgroup", free.path(), "--fill-to", "available="],
            2,
            vec!["needs a size"],
        ),
        (
            vec![
                "run",
                "--cgroup",
                free.path(),
                "--fill-to",
                "available=-5Mi",
            ],
            2,
            vec!["negative"],
        ),
        (
            vec![
                "run",
                "--cgroup",
                free.path(),
                "--fill-to",
                "available=plenty",
            ],
            2,
            vec!["not a number"],
        ),
        (
            vec![
                "run",
                "--cgroup",
                free.path(),
                "--fill-to",
                &goal,
                "--size",
                "10Mi",
            ],
            2,
            vec!["cannot be used with"],
        ),
        (
            vec![
                "run",
                "--cgroup",
                free.path(),
                "--fill-to",
                &goal,
                "--kind",
                "file",
            ],
            2,
            vec!["--kind file"],
        ),
        (
            vec![
                "run",
                "--cgroup",
                free.path(),
                "--fill-to",
                &goal,
                "--ramp",
                "5s",
            ],
            2,
            vec!["no ramp"],
        ),
    ];
    for (args, code, needles) in &cases {
        let out = memstress_output(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {stderr}");
        assert_one_line_error(&stderr, needles);
        assert!(out.stdout.is_empty(), "{args:?} printed a plan");
        assert!(
            free.cgroup.procs().unwrap().is_empty(),
            "{args:?} started something"
        );
    }
    // Allowed, as a plan: the threshold comes first, and no global OOM (the floor).
    let plan = |args: &[&str]| -> Value {
        let out = memstress_output(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let evicts = plan(&[
        "run",
        "--cgroup",
        free.path(),
        "--fill-to",
        &goal,
        "--eviction-threshold",
        &threshold_above,
        "--allow-node-oom",
        "--dry-run",
        "-o",
        "json",
    ]);
    assert_eq!(evicts["mode"], "fill_to_available");
    assert_eq!(evicts["domain"]["kind"], "node");
    assert_eq!(evicts["domain"]["first"], "eviction");
    let a = &evicts["available"];
    assert_eq!(a["goal_bytes"], ((available - (1 << 30)) >> 20) << 20);
    assert!(a["floor_bytes"].as_u64().unwrap() >= 32 * MIB, "{a}");
    assert!(
        a["lowest_goal_bytes"].as_u64() < a["goal_bytes"].as_u64(),
        "{a}"
    );
    // The same goal above the threshold: nothing comes first.
    let neither = plan(&[
        "run",
        "--cgroup",
        free.path(),
        "--fill-to",
        &goal,
        "--dry-run",
        "-o",
        "json",
    ]);
    assert_eq!(neither["domain"]["first"], "neither");
    // A limit the node can give, before the goal: the limit comes first, in its memcg.
    let limit = plan(&[
        "run",
        "--cgroup",
        boxed.path(),
        "--fill-to",
        &goal,
        "--dry-run",
        "-o",
        "json",
    ]);
    assert_eq!(limit["domain"]["kind"], "memcg");
    assert_eq!(limit["domain"]["first"], "limit");
    assert_eq!(limit["predicted_oom"]["domain"], boxed.path());
    let text = memstress_output(&[
        "run",
        "--cgroup",
        boxed.path(),
        "--fill-to",
        &goal,
        "--dry-run",
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("keep the node's memory.available")
            && text.contains("the limit comes first: an OOM kill in"),
        "{text}"
    );
    assert!(free.cgroup.procs().unwrap().is_empty());
    assert!(boxed.cgroup.procs().unwrap().is_empty());
}

/// A real `--fill-to available=` on this shared machine, made safe by its own limit: the goal
/// is 512 MiB under the node's memory.available now (of some 20 GiB here), and the stressors are
/// in a cgroup limited to 1 GiB, so whatever the rest of the machine does, they can take at
/// most that from it
/// (past it, only they are OOM-killed, in their cgroup: when the machine frees more than that
/// meanwhile, they follow it there, and that is checked instead). The figures are the
/// machine's own and move with it: checked are what the lines say, not how still it keeps.
#[test]
fn fill_to_available_holds_the_node_near_its_goal() {
    require_root();
    let available = node_available();
    if available < 4 << 30 {
        eprintln!("skipped: memory.available is under 4 GiB here");
        return;
    }
    let target = TestCgroup::new("avail-hold", Some(1 << 30));
    let goal = ((available - 512 * MIB) >> 20) << 20;
    let goal_arg = format!("available={}Mi", goal >> 20);
    let run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--cgroup",
        target.path(),
        "--fill-to",
        &goal_arg,
        "--hold",
        "2s",
    ]);
    let done = run.wait(Duration::from_secs(60));
    let plan = done.of_type("plan")[0];
    assert_eq!(plan["mode"], "fill_to_available");
    assert_eq!(plan["domain"]["first"], "neither");
    let samples = done.of_type("sample");
    assert!(
        samples
            .iter()
            .all(|s| s["node_available_bytes"].as_u64().is_some()
                && s["node_mem_available_bytes"].as_u64().is_some()),
        "a sample without the node's figures"
    );
    let summary = done.of_type("summary")[0];
    assert_eq!(summary["available"]["goal_bytes"], goal);
    assert!(summary["stressor_charge_bytes"].as_u64().unwrap() <= 1 << 30);
    assert!(target.cgroup.procs().unwrap().is_empty());
    if summary["outcome"] == "all_stressors_killed" {
        // Others on this machine freed more than the cgroup can still be charged (a guest
        // that powered off): the stressors followed the node into their limit, which came
        // first, as it should: the kill is in their cgroup, at its limit.
        let kills = done.of_type("oom_kill");
        assert!(
            !kills.is_empty()
                && kills
                    .iter()
                    .all(|k| k["constraint"] == "memcg" && k["victim"]["cgroup"] == target.path()),
            "{kills:?}"
        );
        eprintln!("the node freed more than the limit's headroom meanwhile: killed at the limit");
        return;
    }
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(summary["outcome"], "completed");
    let band = plan["available"]["deadband_bytes"].as_u64().unwrap();
    assert!(
        samples
            .iter()
            .filter_map(|s| s["node_available_bytes"].as_u64())
            .any(|a| a.abs_diff(goal) <= band),
        "no sample within {band} of the goal {goal}"
    );
    assert_eq!(done.of_type("full").len(), 1);
    let held = &summary["available"];
    assert!(held["min_bytes"].as_u64().is_some() && held["end_bytes"].as_u64().is_some());
}

/// An unlimited target far from the node's bounds still runs: 16 MiB held for a second, the
/// plan naming the node as its domain and nothing reached.
#[test]
fn a_small_run_in_an_unlimited_cgroup_still_works() {
    require_root();
    let target = TestCgroup::new("unlimited", None);
    let out = memstress_output(&[
        "run",
        "-o",
        "json",
        "--cgroup",
        target.path(),
        "--size",
        "16Mi",
        "--hold",
        "1s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let plan = lines.iter().find(|l| l["type"] == "plan").unwrap();
    assert_eq!(plan["domain"]["kind"], "node");
    assert_eq!(plan["domain"]["first"], "neither");
    assert_eq!(plan["predicted_oom"], Value::Null);
    assert!(lines.iter().any(|l| l["type"] == "full"), "{lines:?}");
    let summary = lines.iter().find(|l| l["type"] == "summary").unwrap();
    assert_eq!(summary["requested_bytes"], 16 * MIB);
    assert!(target.cgroup.procs().unwrap().is_empty());
}

/// `args` (a v2-only option on a v1 memcg) exits 1 with one line holding `needles`, prints
/// nothing on stdout, and changes nothing: no `--new` sandbox `name`, no process in `target`,
/// its limit as it was.
fn assert_refused_on_v1(target: &TestCgroup, name: &str, args: &[&str], needles: &[&str]) {
    let limit_file = target.cgroup.dir.join("memory.limit_in_bytes");
    let before = std::fs::read_to_string(&limit_file).unwrap();
    let out = memstress_output(args);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
    assert_one_line_error(&String::from_utf8_lossy(&out.stderr), needles);
    assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
    assert!(
        !hierarchy().mount.join(name).exists(),
        "{args:?} created it"
    );
    assert!(
        target.cgroup.procs().unwrap().is_empty(),
        "{args:?} left processes"
    );
    assert_eq!(std::fs::read_to_string(&limit_file).unwrap(), before);
}

/// `--throttle` sets memory.high, which cgroup v1 does not have: on a v1 memcg it is refused
/// with one line saying cgroup v2 is needed (with `--dry-run` too, alone or with `--size`), and
/// nothing is created or changed. (The lab's `throttle` scenario runs it on v2 kernels.)
#[test]
fn throttle_needs_cgroup_v2() {
    require_root();
    if hierarchy().version != memstress::target::cgroup::Version::V1 {
        eprintln!("skipped: the memory controller is on cgroup v2 here (the lab covers v2)");
        return;
    }
    let target = TestCgroup::new("throttle-v1", Some(64 << 20));
    let name = test_name("throttle-new");
    for args in [
        vec!["run", "--cgroup", target.path(), "--throttle", "32Mi"],
        vec![
            "run",
            "--cgroup",
            target.path(),
            "--throttle",
            "50%",
            "--size",
            "8Mi",
        ],
        vec![
            "run",
            "--cgroup",
            target.path(),
            "--throttle",
            "32Mi",
            "--dry-run",
        ],
        vec![
            "run",
            "--new",
            &name,
            "--limit",
            "64Mi",
            "--throttle",
            "32Mi",
        ],
    ] {
        assert_refused_on_v1(
            &target,
            &name,
            &args,
            &[
                "--throttle",
                "memory.high",
                "cgroup v2",
                "nothing was changed",
            ],
        );
    }
}

/// `--pressure` holds the target's memory.pressure, which cgroup v1 does not have: on a v1
/// memcg it is refused with one line saying cgroup v2 is needed (with `--dry-run`, a `full=`
/// goal, `--workers` or a `--new` sandbox too), and nothing is created or changed. Bad goals are
/// usage errors of one line. (The lab's `psi-target` scenario runs it on v2 kernels.)
#[test]
fn pressure_needs_cgroup_v2() {
    require_root();
    if hierarchy().version != memstress::target::cgroup::Version::V1 {
        eprintln!("skipped: the memory controller is on cgroup v2 here (the lab covers v2)");
        return;
    }
    let target = TestCgroup::new("pressure-v1", Some(64 << 20));
    let name = test_name("pressure-new");
    for args in [
        vec!["run", "--cgroup", target.path(), "--pressure", "some=20%"],
        vec![
            "run",
            "--cgroup",
            target.path(),
            "--pressure",
            "full=5",
            "--workers",
            "2",
        ],
        vec![
            "run",
            "--cgroup",
            target.path(),
            "--pressure",
            "some=20%",
            "--dry-run",
        ],
        vec![
            "run",
            "--new",
            &name,
            "--limit",
            "64Mi",
            "--pressure",
            "some=20%",
        ],
    ] {
        assert_refused_on_v1(
            &target,
            &name,
            &args,
            &[
                "--pressure",
                "memory.pressure",
                "cgroup v2",
                "nothing was changed",
            ],
        );
    }
    // A goal that is no goal, or beside a size: a usage error (exit code 2), one line.
    for (goal, extra, needle) in [
        ("some=120%", None, "below 100%"),
        ("foo=2", None, "`foo` is not a pressure line"),
        ("some=", None, "gives no percent"),
        ("some=20%", Some("--size"), "cannot be used with"),
        ("some=20%", Some("--fill-to"), "cannot be used with"),
    ] {
        let mut args = vec!["run", "--cgroup", target.path(), "--pressure", goal];
        args.extend(extra.into_iter().flat_map(|flag| [flag, "8Mi"]));
        let out = memstress_output(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert_one_line_error(&String::from_utf8_lossy(&out.stderr), &[needle]);
        assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
        assert!(target.cgroup.procs().unwrap().is_empty());
    }
}
