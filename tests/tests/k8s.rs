//! Kubernetes targets (`--pod`, `--container`, `--cgroup-root`), `--from-stresschaos`, a target
//! that disappears, and `--follow`: fixture trees for the plan, real cgroups for the runs.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use memstress::target::{
    cgroup::{Cgroup, Version},
    fixture::{self, Tree, container_id},
    kube::{Driver, Qos, Runtime},
};
use memstress_tests::{
    Memstress, TestCgroup, alive, assert_one_line_error, hierarchy, memstress_bin,
    memstress_output, require_root,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const UID: &str = "3f2c8a1e-9b7d-4e6f-a5c4-1d2e3f4a5b6c";

/// The StressChaos example from Chaos Mesh's documentation, verbatim (the file cites it).
fn docs_example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../memstress-user/tests/fixtures/memory-stress.yaml")
}

/// `memstress <args>` as user `nobody`: no privileges, no BPF.
fn unprivileged(args: &[&str]) -> std::process::Output {
    Command::new(memstress_bin())
        .args(args)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run memstress as nobody")
}

fn plan_of(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "memstress failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(plan["type"], "plan");
    plan
}

/// `run --dry-run -o json` resolves `--pod`/`--container` in fixture trees of every shape
/// (v1 and v2, systemd and cgroupfs drivers, each runtime and QoS class), as user nobody:
/// the plan carries the resolved path, version, limit and who the container is.
#[test]
fn dry_run_resolves_every_shape_without_privileges() {
    for version in [Version::V1, Version::V2] {
        for driver in [Driver::Systemd, Driver::Cgroupfs] {
            for (runtime, qos) in [
                (Runtime::Containerd, Qos::Burstable),
                (Runtime::CriO, Qos::Guaranteed),
                (Runtime::Docker, Qos::BestEffort),
            ] {
                let tree = Tree::new(version);
                let pod = tree.pod(driver, qos, UID, Some(512 * MIB));
                let sandbox = container_id(1);
                let app = container_id(2);
                tree.container(&pod, driver, runtime, &sandbox, None, MIB);
                let ctr = tree.container(&pod, driver, runtime, &app, Some(200 * MIB), 20 * MIB);
                tree.state(runtime, &sandbox, UID, "shop", "web-0", None);
                tree.state(runtime, &app, UID, "shop", "web-0", Some("app"));
                let root = tree.root().to_str().unwrap().to_owned();
                let state = tree.state_root().to_str().unwrap().to_owned();
                let what = format!("{version:?} {driver:?} {runtime} {qos:?}");
                for target in [
                    vec!["--pod", UID, "--container", "app"],
                    vec!["--container", &app[..8]],
                ] {
                    let mut args = vec![
                        "run",
                        "--cgroup-root",
                        &root,
                        "--runtime-root",
                        &state,
                        "--size",
                        "50%",
                        "--dry-run",
                        "-o",
                        "json",
                    ];
                    args.extend(&target);
                    let plan = plan_of(&unprivileged(&args));
                    let t = &plan["target"];
                    assert_eq!(t["path"], ctr.as_str(), "{what}");
                    assert_eq!(t["version"], version.number(), "{what}");
                    assert_eq!(t["limit_bytes"], 200 * MIB, "{what}");
                    assert_eq!(t["usage_bytes"], 20 * MIB, "{what}");
                    assert_eq!(t["kubernetes"]["container_name"], "app", "{what}");
                    assert_eq!(t["kubernetes"]["container_id"], app.as_str(), "{what}");
                    assert_eq!(t["kubernetes"]["pod_uid"], UID, "{what}");
                    assert_eq!(plan["total_bytes"], 100 * MIB, "{what}");
                }
            }
        }
    }
}

/// Wrong pod and container inputs are refused with one line that names the input and lists
/// what was found; a name without the runtime's state files says to give the id.
#[test]
fn bad_kubernetes_targets_are_refused_in_one_line() {
    let tree = Tree::new(Version::V1);
    let pod = tree.pod(Driver::Systemd, Qos::Burstable, UID, None);
    let a = format!("beef{}", "1".repeat(60));
    let b = format!("beef{}", "2".repeat(60));
    tree.container(&pod, Driver::Systemd, Runtime::Containerd, &a, None, 0);
    tree.container(&pod, Driver::Systemd, Runtime::Containerd, &b, None, 0);
    let root = tree.root().to_str().unwrap().to_owned();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--cgroup-root", &root, "--size", "1Mi", "--dry-run"];
        args.extend(extra);
        let out = unprivileged(&args);
        assert!(!out.status.success(), "{extra:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert_one_line_error(
        &run(&["--container", "beef"]),
        &["`beef`", "beef11111111", "beef22222222"],
    );
    assert_one_line_error(&run(&["--pod", "0000aaaa"]), &["no pod `0000aaaa`", UID]);
    assert_one_line_error(
        &run(&["--pod", UID, "--container", "app"]),
        &["`app`", "state files", "beef11111111"],
    );
    assert_one_line_error(&run(&["--container", "app"]), &["--pod"]);
    let empty = fixture::temp_dir("not-a-root");
    let out = unprivileged(&[
        "run",
        "--cgroup-root",
        empty.to_str().unwrap(),
        "--pod",
        UID,
        "--size",
        "1Mi",
        "--dry-run",
    ]);
    fs::remove_dir_all(&empty).unwrap();
    assert_one_line_error(
        &String::from_utf8_lossy(&out.stderr),
        &["not shaped like /sys/fs/cgroup"],
    );
    // A real run refuses a tree that is not a cgroup filesystem before starting anything.
    let out = memstress_output(&[
        "run",
        "--cgroup-root",
        &root,
        "--container",
        "beef1",
        "--size",
        "1Mi",
    ]);
    assert_one_line_error(
        &String::from_utf8_lossy(&out.stderr),
        &["not on a cgroup filesystem"],
    );
}

/// Chaos Mesh's own StressChaos example (4 workers, size '256MB') runs against a real cgroup:
/// the plan says the size is 256 000 000 bytes in total across the workers, the cgroup's usage
/// rises by that (± 2%), and the summary states the real total.
#[test]
fn stresschaos_from_the_docs_runs_with_its_real_total() {
    require_root();
    let target = TestCgroup::new("stresschaos", Some(1024 * MIB));
    let file = docs_example();
    let before = target.usage();
    let mut run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--from-stresschaos",
        file.to_str().unwrap(),
        "--cgroup",
        target.path(),
    ]);
    let plan = run.wait_type("plan", Duration::from_secs(10));
    assert_eq!(plan["total_bytes"], 256_000_000);
    assert_eq!(plan["workers"], 4);
    assert_eq!(plan["stresschaos"]["name"], "memory-stress-example");
    let notes = plan["notes"].to_string();
    assert!(
        notes.contains("256 000 000 bytes") && notes.contains("total across 4 workers"),
        "{notes}"
    );
    assert!(
        notes.contains("labelSelectors") && notes.contains("not used"),
        "{notes}"
    );
    run.wait_type("full", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let grown = target.usage() - before;
    let finished = run.interrupt(Duration::from_secs(15));
    assert!(finished.status.success(), "{}", finished.stderr);
    let want = 256_000_000u64;
    assert!(
        grown.abs_diff(want) <= want / 50,
        "usage grew by {grown}, want {want} ± 2%"
    );
    let summary = finished.of_type("summary")[0];
    assert_eq!(summary["requested_bytes"], want);
    // Text mode: the summary says the total, in bytes as the file meant it.
    let out = memstress_output(&[
        "run",
        "--from-stresschaos",
        file.to_str().unwrap(),
        "--cgroup",
        target.path(),
        "--hold",
        "1s",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = text
        .lines()
        .find(|l| l.starts_with("StressChaos "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        summary.contains("256 000 000 bytes")
            && summary.contains("in total")
            && summary.contains("4 workers"),
        "{summary}"
    );
}

/// Removes a tree of test cgroups and a temporary directory, whatever happens.
struct Cleanup(Vec<Cgroup>, Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in self.0.iter().rev() {
            let _ = c.remove(Duration::from_secs(10));
        }
        for d in &self.1 {
            let _ = fs::remove_dir_all(d);
        }
    }
}

/// What a container runtime does to a container's cgroup on a restart: SIGKILL everything in
/// it, then remove it.
fn restart_away(cgroup: &Cgroup) {
    cgroup.kill_all().expect("kill the container's processes");
    cgroup
        .remove(Duration::from_secs(10))
        .expect("remove the container's cgroup");
}

/// The target disappears mid-run (a container restart): memstress says so, its stressors are
/// gone, and it exits with code 4.
#[test]
fn a_disappearing_target_stops_the_run_with_exit_code_4() {
    require_root();
    let parent = TestCgroup::new("gone", Some(256 * MIB));
    let ctr = parent.child("ctr", None);
    let mut run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--cgroup",
        &ctr.path,
        "--size",
        "16Mi",
        "--workers",
        "2",
    ]);
    run.wait_type("full", Duration::from_secs(30));
    restart_away(&ctr);
    let finished = run.wait(Duration::from_secs(15));
    assert_eq!(
        finished.status.code(),
        Some(4),
        "stderr: {}",
        finished.stderr
    );
    let gone = finished.of_type("target_gone");
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0]["cgroup"], ctr.path.as_str());
    assert_eq!(gone[0]["following"], false);
    assert!(
        finished.stderr.contains("was removed"),
        "{}",
        finished.stderr
    );
    assert_eq!(finished.of_type("summary")[0]["outcome"], "target_gone");
    for l in finished.of_type("started") {
        assert!(!alive(l["pid"].as_u64().unwrap() as u32));
    }
}

/// `--follow` on a real kubepods-shaped tree under the real v1 hierarchy (a `--cgroup-root`
/// whose `memory` entry leads to a test cgroup holding `kubepods/burstable/pod<uid>/<id>`):
/// when the container restarts (its processes killed, its cgroup removed, a new one made with
/// a new id and the runtime's state file naming it `app`), memstress reports both, re-injects
/// into the new cgroup, and the new cgroup's usage rises by the size.
#[test]
fn follow_reinjects_into_the_restarted_container() {
    require_root();
    let root_cg = TestCgroup::new("k8s", None);
    let root = fixture::temp_dir("follow-root");
    let state = root.join("node");
    std::os::unix::fs::symlink(&root_cg.cgroup.dir, root.join("memory")).expect("memory link");
    let kubepods = root_cg.child("kubepods", None);
    let burstable = kubepods.create_child("burstable").unwrap();
    let pod = burstable.create_child(&format!("pod{UID}")).unwrap();
    pod.set_limit(256 * MIB).unwrap();
    let first = container_id(11);
    let ctr1 = pod.create_child(&first).unwrap();
    fixture::write_state(
        &state,
        Runtime::Containerd,
        &first,
        UID,
        "shop",
        "web-0",
        Some("app"),
    );
    let cleanup = Cleanup(
        vec![kubepods.clone(), burstable.clone(), pod.clone()],
        vec![root.clone()],
    );
    let root_arg = root.to_str().unwrap();
    let mut run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--cgroup-root",
        root_arg,
        "--runtime-root",
        state.to_str().unwrap(),
        "--pod",
        &UID[..8],
        "--container",
        "app",
        "--size",
        "16Mi",
        "--workers",
        "2",
        "--follow",
    ]);
    let plan = run.wait_type("plan", Duration::from_secs(10));
    assert_eq!(
        plan["target"]["path"],
        format!("/kubepods/burstable/pod{UID}/{first}")
    );
    assert_eq!(plan["target"]["version"], 1);
    assert_eq!(plan["target"]["limit_bytes"], 256 * MIB);
    assert_eq!(plan["target"]["kubernetes"]["driver"], "cgroupfs");
    assert_eq!(plan["follow"], true);
    run.wait_type("full", Duration::from_secs(30));
    assert!(ctr1.usage().unwrap() >= 15 * MIB);
    // The container restarts.
    restart_away(&ctr1);
    let second = container_id(12);
    let ctr2 = pod.create_child(&second).unwrap();
    fixture::write_state(
        &state,
        Runtime::Containerd,
        &second,
        UID,
        "shop",
        "web-0",
        Some("app"),
    );
    let followed = run.wait_type("target_followed", Duration::from_secs(15));
    assert_eq!(followed["container_id"], second.as_str());
    assert_eq!(followed["previous_container_id"], first.as_str());
    assert_eq!(followed["container_name"], "app");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ctr2.usage().unwrap() < 15 * MIB {
        assert!(
            Instant::now() < deadline,
            "the new container was never filled"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run.wait_for("a second full", Duration::from_secs(30), |v| {
        v["type"] == "full" && v["t_ms"].as_u64() >= followed["t_ms"].as_u64()
    });
    let grown = ctr2.usage().unwrap();
    let finished = run.interrupt(Duration::from_secs(15));
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(
        grown.abs_diff(16 * MIB) <= 16 * MIB / 50 + MIB,
        "the new container holds {grown}"
    );
    let gone = finished.of_type("target_gone");
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0]["following"], true);
    let summary = finished.of_type("summary")[0];
    assert_eq!(summary["follows"], 1);
    assert_eq!(
        summary["target"],
        format!("/kubepods/burstable/pod{UID}/{second}")
    );
    assert!(finished.stderr.contains("--follow"), "{}", finished.stderr);
    assert_eq!(
        finished.of_type("started").len(),
        4,
        "2 stressors, started twice"
    );
    let mut all = cleanup;
    all.0.push(ctr2);
    drop(all);
    assert!(
        !hierarchy()
            .mount
            .join(root_cg.path().trim_start_matches('/'))
            .join("kubepods")
            .exists()
    );
}
