//! Why this victim: memstress's explanation against the kernel's own record (dmesg's kill
//! and `oom-kill:` lines, the cgroup's limit).

use std::time::Duration;

use memstress_tests::{
    App, ChildGuard, DmesgKill, Kmsg, Memstress, TestCgroup, command_in, kills_in,
    parse_oom_summary, require_root,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// `oom_badness()` applied to the numbers dmesg printed for the kill: rss (anon + file +
/// shmem) and page tables in pages, plus oom_score_adj × (totalpages / 1000). No swap here.
fn points_from_dmesg(k: &DmesgKill, totalpages: u64) -> i64 {
    ((k.anon_rss_kb + k.file_rss_kb + k.shmem_rss_kb + k.pgtables_kb) / 4) as i64
        + i64::from(k.oom_score_adj) * (totalpages / 1000) as i64
}

fn first_kill(lines: &[Value]) -> &Value {
    lines
        .iter()
        .find(|l| l["type"] == "oom_kill")
        .expect("memstress reported no oom_kill")
}

/// Three processes of different sizes and oom_score_adj share a 96 MiB memcg; the biggest
/// grows past the limit. The kernel kills the smallest, whose oom_score_adj 800 outweighs its
/// size: memstress names it, ranks it first among the three, and its points equal the
/// kernel's formula applied to dmesg's own numbers.
#[test]
fn names_ranks_and_scores_the_victim_the_kernel_chose() {
    require_root();
    let target = TestCgroup::new("rank", Some(96 * MIB));
    let mut kmsg = Kmsg::open();
    let mut watch = Memstress::start(&["watch", "-o", "json", "--cgroup", target.path()]);
    watch.wait_type("attached", Duration::from_secs(10));
    let mut a = App::start(&target.cgroup, "app-a", 40 * MIB, Some(0));
    let _b = App::start(&target.cgroup, "app-b", 25 * MIB, Some(300));
    let mut c = App::start(&target.cgroup, "app-c", 10 * MIB, Some(800));
    a.grow(70 * MIB);
    assert_eq!(c.wait_signal(), Some(libc::SIGKILL), "app-c was not killed");
    watch.wait_type("oom_kill", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let finished = watch.interrupt(Duration::from_secs(10));
    let messages = kmsg.messages();
    let kills = kills_in(&messages);
    let kernel = kills.first().expect("dmesg has the kill");
    assert_eq!(kernel.pid, c.pid(), "the kernel killed {kernel:?}");

    let kill = first_kill(&finished.lines);
    let totalpages = 96 * MIB / 4096;
    assert_eq!(kill["victim"]["pid"], u64::from(c.pid()));
    assert_eq!(kill["victim"]["comm"], "app-c");
    assert_eq!(kill["constraint"], "memcg");
    assert_eq!(kill["totalpages"], totalpages);
    assert_eq!(kill["domain"]["cgroup"], target.path());
    assert_eq!(kill["domain"]["limit_bytes"], 96 * MIB);
    assert_eq!(kill["domain"]["source"], "kernel");
    let expected = points_from_dmesg(kernel, totalpages);
    assert_eq!(kill["victim"]["points"], expected, "{kill}");
    assert_eq!(kill["victim"]["source"], "kernel");
    let candidates = kill["candidates"].as_array().unwrap();
    let pids: Vec<u64> = candidates
        .iter()
        .map(|c| c["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(candidates.len(), 3, "{candidates:?}");
    assert_eq!(
        pids[0],
        u64::from(c.pid()),
        "the victim is ranked first: {candidates:?}"
    );
    assert!(pids.contains(&u64::from(a.pid())));
    assert_eq!(candidates[0]["points"], expected);
    assert!(candidates.iter().all(|c| c["source"] == "kernel"));
    assert!(
        candidates
            .windows(2)
            .all(|w| w[0]["points"].as_i64() >= w[1]["points"].as_i64()),
        "ranked highest first: {candidates:?}"
    );
    assert_eq!(kill["candidates_complete"], true);
    let why = kill["why"].as_str().unwrap();
    assert!(
        why.starts_with(&format!("killed {} (app-c): highest points", c.pid())),
        "{why}"
    );
    assert!(why.contains("oom_score_adj 800 added"), "{why}");
    assert!(
        why.contains(&format!("(limit 96 MiB hit by {} (app-a))", a.pid())),
        "{why}"
    );
    assert_eq!(kill["trigger"]["pid"], u64::from(a.pid()));
    // The charge path: the limit was hit, and direct reclaim ran before the OOM.
    assert!(kill["pressure"]["limit_hits"].as_u64() >= Some(1), "{kill}");
    assert!(
        kill["pressure"]["reclaim_runs"].as_u64() >= Some(1),
        "{kill}"
    );
    // The victim's exit is reported after the kill.
    assert!(
        finished.lines.iter().any(|l| l["type"] == "oom_reaped"
            && l["tid"] == u64::from(c.pid())
            && l["what"] == "exited"),
        "no oom_reaped line for the victim {}: {:?}",
        c.pid(),
        finished.of_type("oom_reaped")
    );
    // dmesg's own summary line, when it was not rate-limited, names the same domain.
    if let Some(summary) = messages
        .iter()
        .filter_map(|m| parse_oom_summary(m))
        .find(|o| o.pid == c.pid())
    {
        assert_eq!(summary.constraint, "CONSTRAINT_MEMCG");
        assert_eq!(summary.oom_memcg.as_deref(), Some(target.path()));
    }
}

/// With the limit on the parent, the parent is named as the domain.
#[test]
fn names_the_parent_when_its_limit_was_hit() {
    require_root();
    let parent = TestCgroup::new("domain", Some(64 * MIB));
    let child = parent.child("ctr", None);
    let mut kmsg = Kmsg::open();
    let mut watch = Memstress::start(&["watch", "-o", "json", "--cgroup", parent.path()]);
    watch.wait_type("attached", Duration::from_secs(10));
    let mut app = App::start(&child, "hog", 8 * MIB, None);
    app.grow(128 * MIB);
    assert_eq!(app.wait_signal(), Some(libc::SIGKILL));
    watch.wait_type("oom_kill", Duration::from_secs(10));
    let finished = watch.interrupt(Duration::from_secs(10));
    let kill = first_kill(&finished.lines);
    assert_eq!(kill["victim"]["cgroup"], child.path.as_str());
    assert_eq!(kill["domain"]["cgroup"], parent.path(), "{kill}");
    assert_eq!(kill["domain"]["limit_bytes"], 64 * MIB);
    assert_eq!(kill["totalpages"], 64 * MIB / 4096);
    let why = kill["why"].as_str().unwrap();
    assert!(
        why.contains(&format!("in {} (limit 64 MiB", parent.path())),
        "{why}"
    );
    let messages = kmsg.messages();
    if let Some(summary) = messages
        .iter()
        .filter_map(|m| parse_oom_summary(m))
        .find(|o| o.pid == app.pid())
    {
        assert_eq!(summary.oom_memcg.as_deref(), Some(parent.path()));
        assert_eq!(summary.task_memcg.as_deref(), Some(child.path.as_str()));
    }
}

/// A process sharing the victim's mm is killed with it, and reported as collateral.
#[test]
fn reports_processes_killed_for_sharing_the_mm() {
    require_root();
    let target = TestCgroup::new("sharedmm", Some(48 * MIB));
    let mut watch = Memstress::start(&["watch", "-o", "json", "--cgroup", target.path()]);
    watch.wait_type("attached", Duration::from_secs(10));
    let helper = env!("CARGO_BIN_EXE_memstress-test-helper");
    let mut owner = memstress_tests::command_in(&target.cgroup, helper, None)
        .args(["shared-mm", &(64 * MIB).to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the helper");
    let mut out = std::io::BufReader::new(owner.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let sibling: u64 = line
        .trim()
        .strip_prefix("sibling ")
        .unwrap()
        .parse()
        .unwrap();
    let owner_pid = u64::from(owner.id());
    owner.wait().unwrap();
    watch.wait_type("oom_kill", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let finished = watch.interrupt(Duration::from_secs(10));
    let kill = first_kill(&finished.lines);
    let victim = kill["victim"]["pid"].as_u64().unwrap();
    assert!(victim == owner_pid || victim == sibling, "{kill}");
    let other = if victim == owner_pid {
        sibling
    } else {
        owner_pid
    };
    let mut collateral: Vec<&Value> = kill["collateral"].as_array().unwrap().iter().collect();
    collateral.extend(finished.of_type("oom_collateral"));
    assert_eq!(collateral.len(), 1, "{collateral:?}");
    assert_eq!(collateral[0]["pid"], other);
    assert_eq!(collateral[0]["reason"], "shares the victim's memory (mm)");
    assert!(
        !memstress_tests::alive(other as u32),
        "the collateral process survived"
    );
}

/// Under an OOM storm (more than 100 kills across two memcgs at once) no kill is missing,
/// each is reported once, none is mistaken for a collateral kill, and the BPF side's
/// dropped-record counter is reported as 0.
#[test]
fn storm_loses_nothing() {
    require_root();
    let cgroups = [
        TestCgroup::new("storm-a", Some(24 * MIB)),
        TestCgroup::new("storm-b", Some(24 * MIB)),
    ];
    let mut kmsg = Kmsg::open();
    let mut watch = Memstress::start(&["watch", "-o", "json"]);
    watch.wait_type("attached", Duration::from_secs(10));
    let mut storms: Vec<_> = cgroups
        .iter()
        .map(|c| {
            memstress_tests::command_in(&c.cgroup, "stress-ng", None)
                .args([
                    "--vm",
                    "4",
                    "--vm-bytes",
                    "48M",
                    "--vm-keep",
                    "--timeout",
                    "6s",
                    "--quiet",
                ])
                .spawn()
                .expect("start stress-ng")
        })
        .collect();
    for s in &mut storms {
        s.wait().unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let finished = watch.interrupt(Duration::from_secs(20));
    let kernel = kmsg.kills();
    assert!(
        kernel.len() >= 100,
        "only {} kills: not a storm",
        kernel.len()
    );
    let reported: Vec<u64> = finished
        .of_type("oom_kill")
        .iter()
        .map(|k| k["victim"]["tid"].as_u64().unwrap())
        .collect();
    for k in &kernel {
        let n = reported.iter().filter(|&&t| t == u64::from(k.pid)).count();
        assert_eq!(n, 1, "kill of {} ({}) reported {n} times", k.pid, k.comm);
    }
    assert_eq!(reported.len(), kernel.len());
    let end = finished.of_type("end");
    assert_eq!(end[0]["dropped_records"], 0, "records were dropped");
    assert_eq!(end[0]["oom_kills"], kernel.len() as u64);
    // stress-ng's workers are processes of their own: none shares a victim's mm, so none
    // died as collateral. (A trigger's next OOM SIGKILLs its own victim before marking it;
    // that SIGKILL is not a collateral kill of the trigger's previous victim.)
    let mut collateral: Vec<&Value> = finished.of_type("oom_collateral");
    for kill in finished.of_type("oom_kill") {
        collateral.extend(kill["collateral"].as_array().expect("collateral"));
    }
    assert!(
        collateral.is_empty(),
        "{} reported as collateral, though no process shares an mm: {collateral:?}",
        collateral.len()
    );

    // Workers exit and start all along, while scans walk their cgroup's task lists: every
    // candidate of every kill is still of the victim's cgroup (each storm cgroup is a domain
    // of its own), and each scan visits that cgroup's tasks only.
    for kill in finished.of_type("oom_kill") {
        let cgroup = &kill["victim"]["cgroup_id"];
        for c in kill["candidates"].as_array().expect("candidates") {
            assert_eq!(
                &c["cgroup_id"], cgroup,
                "a candidate from elsewhere: {kill}"
            );
        }
        let visited = kill["scan_visited"].as_u64().expect("scan_visited");
        assert!(visited <= 32, "visited {visited}: {kill}");
    }
}

/// The candidate scan runs inside the OOM path, under `oom_lock`: for a memcg OOM it walks
/// the domain's own cgroups and tasks (its child cgroup's too), not every process of the node.
/// 300 idle processes elsewhere on the node are not visited.
#[test]
fn the_scan_visits_the_domain_not_the_node() {
    require_root();
    let crowd = TestCgroup::new("scan-crowd", None);
    let _idle: Vec<ChildGuard> = (0..300)
        .map(|_| ChildGuard::spawn(command_in(&crowd.cgroup, "sleep", None).arg("120")))
        .collect();
    let processes = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count();
    assert!(processes > 300, "{processes} processes on the node");
    let target = TestCgroup::new("scan-domain", Some(64 * MIB));
    let inner = target.child("inner", None);
    let mut watch = Memstress::start(&["watch", "-o", "json", "--cgroup", target.path()]);
    watch.wait_type("attached", Duration::from_secs(10));
    let nested = App::start(&inner, "scan-nested", 8 * MIB, Some(0));
    let mut big = App::start(&target.cgroup, "scan-big", 40 * MIB, Some(0));
    big.grow(80 * MIB);
    assert_eq!(
        big.wait_signal(),
        Some(libc::SIGKILL),
        "scan-big was not killed"
    );
    watch.wait_type("oom_kill", Duration::from_secs(10));
    let finished = watch.interrupt(Duration::from_secs(10));
    let kill = first_kill(&finished.lines);
    assert_eq!(kill["victim"]["pid"], u64::from(big.pid()), "{kill}");
    let pids: Vec<u64> = kill["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{kill}");
    assert!(pids.contains(&u64::from(nested.pid())), "{kill}");
    assert_eq!(kill["candidates_complete"], true);
    // The victim is considered first, then the walk visits the other threads of the domain:
    // the nested app's (one thread); never the 300 sleepers.
    let visited = kill["scan_visited"].as_u64().expect("scan_visited");
    assert!((1..=8).contains(&visited), "visited {visited}: {kill}");
    // The scan is timed inside the OOM path, beside the kernel's own path before it (from
    // scan-big's last reclaim, which freed nothing, to mark_victim).
    let scan = kill["scan_us"].as_f64().expect("scan_us");
    let path = kill["oom_path_us"].as_f64().expect("oom_path_us");
    assert!(scan > 0.0 && scan < 100_000.0, "scan {scan} µs: {kill}");
    assert!(
        path > 0.0 && path < 10_000_000.0,
        "OOM path {path} µs: {kill}"
    );
}
