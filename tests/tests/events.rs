//! Every JSON line type of docs/events.md, produced for real and checked against
//! docs/events.schema.json (the helpers validate each line as they read it).

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use memstress_tests::{
    Memstress, TestCgroup, command_in, memstress_output, require_root, schema, test_name,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// Types no command produces on demand. Their examples in docs/events.md are validated by the
/// tests crate's unit tests instead.
const NOT_ON_DEMAND: [(&str, &str); 4] = [
    (
        "oom_victim_exiting",
        "the OOM killer must pick a task that is already exiting",
    ),
    (
        "oom_collateral",
        "a process sharing the victim's mm whose SIGKILL is read after the victim's line",
    ),
    ("error", "printed only when a line cannot be encoded"),
    (
        "oom_kills_before_probes",
        "something other than the stressors must OOM the target while the probes load",
    ),
];

/// Types that need a whole fault to produce; the named tests produce them and, like every test
/// here, validate each line they read against the schema.
const PRODUCED_ELSEWHERE: [(&str, &str); 4] = [
    (
        "dropped",
        "faults.rs: a_full_ring_buffer_is_counted_and_reported",
    ),
    (
        "replay_plan",
        "replay.rs: replay_dry_run_reads_a_live_oom_report_exactly",
    ),
    (
        "replay_result",
        "replay.rs: replay_reproduces_a_live_oom_report",
    ),
    (
        "target_followed",
        "k8s.rs: follow_reinjects_into_the_restarted_container",
    ),
];

fn types(lines: &[Value]) -> BTreeSet<String> {
    lines
        .iter()
        .map(|l| l["type"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn every_line_type_is_produced_and_matches_the_schema() {
    require_root();
    let mut seen: BTreeSet<String> = BTreeSet::new();

    // plan (with predicted_oom), alone with --dry-run.
    let dry = TestCgroup::new("events-dry", Some(64 * MIB));
    let out = memstress_output(&[
        "run",
        "-o",
        "json",
        "--cgroup",
        dry.path(),
        "--size",
        "96Mi",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{out:?}");
    let plan = schema::parse_line(String::from_utf8_lossy(&out.stdout).trim());
    assert!(plan["predicted_oom"].is_object(), "{plan}");
    seen.insert("plan".to_owned());

    // The demo: plan, attached, started, sample, oom_kill, oom_reaped, summary.
    let demo = Memstress::start(&["demo", "-o", "json"]).wait(Duration::from_secs(90));
    assert!(demo.status.success(), "{}", demo.stderr);
    seen.extend(types(&demo.lines));

    // watch --metrics: attached, metrics, oom_kill, end.
    let watched = TestCgroup::new("events-watch", Some(32 * MIB));
    let mut watch = Memstress::start(&[
        "watch",
        "-o",
        "json",
        "--cgroup",
        watched.path(),
        "--metrics",
        "127.0.0.1:0",
    ]);
    watch.wait_type("metrics", Duration::from_secs(10));
    command_in(&watched.cgroup, "tail", None)
        .arg("/dev/zero")
        .status()
        .expect("run tail");
    watch.wait_type("oom_kill", Duration::from_secs(10));
    let watch = watch.interrupt(Duration::from_secs(10));
    seen.extend(types(&watch.lines));

    // restarted: --on-oom restart brings a killed stressor back.
    let name = test_name("events-restart");
    let mut restart = Memstress::start(&[
        "run", "-o", "json", "--new", &name, "--limit", "32Mi", "--size", "48Mi", "--on-oom",
        "restart",
    ]);
    restart.wait_type("restarted", Duration::from_secs(30));
    let restart = restart.interrupt(Duration::from_secs(15));
    seen.extend(types(&restart.lines));

    // full, then exited and target_gone: the target's processes are killed and the cgroup
    // removed under the run, as a container restart does.
    let gone = TestCgroup::new("events-gone", Some(256 * MIB));
    let mut run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--cgroup",
        gone.path(),
        "--size",
        "16Mi",
    ]);
    run.wait_type("full", Duration::from_secs(30));
    let stressor = run.wait_type("started", Duration::from_secs(1))["pid"]
        .as_u64()
        .expect("a stressor pid");
    // SAFETY: kill(2) of a stressor this test's memstress started.
    unsafe { libc::kill(stressor as i32, libc::SIGKILL) };
    run.wait_type("exited", Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = gone.cgroup.kill_all();
        if std::fs::remove_dir(&gone.cgroup.dir).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "cannot remove {}", gone.path());
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = run.wait(Duration::from_secs(15));
    assert_eq!(run.status.code(), Some(4), "{}", run.stderr);
    seen.extend(types(&run.lines));

    let all: BTreeSet<String> = schema::schema_types().into_iter().collect();
    let exempt: BTreeSet<String> = NOT_ON_DEMAND
        .iter()
        .chain(PRODUCED_ELSEWHERE.iter())
        .map(|(t, _)| t.to_string())
        .collect();
    let missing: Vec<&String> = all
        .difference(&seen)
        .filter(|t| !exempt.contains(*t))
        .collect();
    assert!(
        missing.is_empty(),
        "no command produced {missing:?} (seen: {seen:?})"
    );
    assert!(
        seen.is_superset(
            &[
                "attached",
                "metrics",
                "oom_kill",
                "oom_reaped",
                "end",
                "plan",
                "started",
                "restarted",
                "exited",
                "full",
                "target_gone",
                "sample",
                "summary"
            ]
            .iter()
            .map(|t| t.to_string())
            .collect()
        ),
        "{seen:?}"
    );
    // Each exempt type has a valid example in the docs.
    for (t, why) in NOT_ON_DEMAND {
        assert!(all.contains(t), "{t} is no longer a line type");
        let documented = schema::documented_examples()
            .iter()
            .any(|b| b.contains(&format!("\"type\":\"{t}\"")));
        let inline = schema::documented_types()
            .iter()
            .any(|(name, text)| name == t && text.contains(&format!("\"type\":\"{t}\"")));
        assert!(
            documented || inline || t == "oom_victim_exiting",
            "{t} ({why}) has no example in docs/events.md"
        );
    }
}
