//! A container's end as a real runtime makes it (containerd, the way the kubelet restarts a
//! container): memstress sees the container's init exit, not only its cgroup disappear; its
//! stressors run in the container's PID namespace and die with it, so that the runtime can
//! remove the cgroup; `--follow` re-injects into the replacement; nothing is left behind,
//! whichever way the run ends, a SIGKILLed controller included.

use std::{
    fs,
    time::{Duration, Instant},
};

use memstress_tests::{
    Memstress, alive, require_root,
    runtime::{
        Containerd, Ctr, Docker, Footprint, Pod, Qos, hog_argv, memory_file, new_pod_uid, record,
        wait_for,
    },
};
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// The app container's limit; `--size 50%` is half of it.
const LIMIT: u64 = 128 * MIB;
/// What the container's own process holds.
const HOG: u64 = 4 * MIB;

fn pid_ns(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|l| l.to_string_lossy().into_owned())
}

fn procs(cgroup: &str) -> Vec<u32> {
    fs::read_to_string(memory_file(cgroup, "cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn cgroup_exists(cgroup: &str) -> bool {
    memory_file(cgroup, "").exists()
}

fn pid_of(line: &Value) -> u32 {
    line["pid"].as_u64().expect("a started line's pid") as u32
}

/// The stressor started in `ctr`: in its cgroup and in its PID namespace.
fn assert_inside(ctr: &Ctr, stressor: u32) {
    assert_inside_container(&ctr.cgroup_path, ctr.init_pid, stressor);
}

/// The stressor started in the container of `cgroup` and init `init`: in that cgroup and in
/// its PID namespace, not dumpable.
fn assert_inside_container(cgroup: &str, init: u32, stressor: u32) {
    assert!(
        procs(cgroup).contains(&stressor),
        "stressor {stressor} is not in {cgroup}: {:?}",
        procs(cgroup)
    );
    assert_eq!(
        pid_ns(stressor),
        pid_ns(init),
        "stressor {stressor} is not in the PID namespace of the container's init {init}"
    );
    // Non-dumpable: its /proc files are root's, not its user's, so that the container's
    // processes can neither ptrace it nor open its /proc/PID/root (the node's root).
    let status = fs::read_to_string(format!("/proc/{stressor}/status")).unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|u| u.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();
    assert_ne!(uid, "0", "the stressor runs as its own user");
    // Exec'd with its real group id apart (so that exec left it non-dumpable), then made whole.
    let gids: Vec<String> = status
        .lines()
        .find_map(|l| l.strip_prefix("Gid:"))
        .map(|g| g.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    assert!(
        gids.len() == 4 && gids.iter().all(|g| *g == gids[0]),
        "stressor {stressor}'s group ids: {gids:?}"
    );
    // That exec was a secure one (AT_SECURE 1 in its auxiliary vector): the kernel made it
    // non-dumpable from its first instruction on.
    assert_eq!(at_secure(stressor), Some(1), "stressor {stressor}'s exec");
    let owner = fs::metadata(format!("/proc/{stressor}/status"))
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .ok();
    assert_eq!(owner, Some(0), "stressor {stressor} is dumpable");
}

/// `AT_SECURE` from process `pid`'s auxiliary vector.
fn at_secure(pid: u32) -> Option<u64> {
    const AT_SECURE: u64 = 23;
    let auxv = fs::read(format!("/proc/{pid}/auxv")).ok()?;
    auxv.chunks_exact(16).find_map(|pair| {
        let key = u64::from_ne_bytes(pair[..8].try_into().ok()?);
        let value = u64::from_ne_bytes(pair[8..].try_into().ok()?);
        (key == AT_SECURE).then_some(value)
    })
}

/// After the harnesses dropped: no daemon, shim, mount, directory or cgroup left.
fn assert_clean(footprint: &Footprint, cgroups: &[String], stressors: &[u32]) {
    let left = footprint.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
    for cg in cgroups {
        assert!(!cgroup_exists(cg), "cgroup {cg} left behind");
    }
    for &pid in stressors {
        assert!(!alive(pid), "stressor {pid} left behind");
    }
}

/// The kubelet's restart of a container under `run --follow`: memstress sees its init exit
/// (`target_gone`, `init_exited`), its stressor dies with the container so that the runtime
/// removes the old cgroup, and it re-injects into the replacement (`target_followed`), whose
/// usage rises by the size with the stressor in its cgroup and PID namespace.
#[test]
fn follow_sees_the_init_exit_and_reinjects_into_the_new_container() {
    require_root();
    let uid = new_pod_uid();
    let footprint;
    let (pod_cg, old_cg, new_cg);
    let mut stressors = Vec::new();
    {
        let rt = Containerd::start();
        let pod = Pod::new(&rt, "shop", "web-0", &uid, Qos::Burstable);
        let app = pod.container("app", Some(LIMIT), &hog_argv(HOG));
        pod_cg = pod.cgroup_path();
        old_cg = app.cgroup_path.clone();
        let state = rt.state_flag();
        let mut run = Memstress::start(&[
            "run",
            "-o",
            "json",
            "--runtime-state",
            &state,
            "--pod",
            &uid,
            "--container",
            "app",
            "--size",
            "50%",
            "--workers",
            "1",
            "--follow",
            "--hold",
            "20s",
        ]);
        let plan = run.wait_type("plan", Duration::from_secs(20));
        assert_eq!(plan["target"]["path"], app.cgroup_path.as_str());
        assert_eq!(plan["follow"], true);
        let first = pid_of(&run.wait_type("started", Duration::from_secs(20)));
        stressors.push(first);
        run.wait_type("full", Duration::from_secs(30));
        assert_inside(&app, first);

        // What the kubelet does: kill, task delete, container delete, a new container.
        let restarted = Instant::now();
        let new = pod.restart("app");
        record("restart under memstress", restarted.elapsed());
        new_cg = new.cgroup_path.clone();
        assert!(
            wait_for(Duration::from_secs(10), || !cgroup_exists(&old_cg)),
            "runc could not remove the old container's cgroup {old_cg}: {:?}",
            procs(&old_cg)
        );
        assert!(!alive(first), "the first stressor outlived its container");

        let gone = run.wait_type("target_gone", Duration::from_secs(10));
        assert_eq!(gone["cause"], "init_exited", "{gone}");
        assert_eq!(gone["init_pid"], app.init_pid);
        assert_eq!(gone["following"], true);
        assert!(
            gone["reason"].as_str().unwrap_or_default().contains("init"),
            "{gone}"
        );
        let followed = run.wait_type("target_followed", Duration::from_secs(30));
        assert_eq!(followed["container_id"], new.id.as_str());
        assert_eq!(followed["previous_container_id"], app.id.as_str());
        assert_eq!(followed["container_name"], "app");
        assert_eq!(followed["cgroup"], new.cgroup_path.as_str());
        assert_eq!(followed["init_pid"], new.init_pid);
        assert_eq!(followed["in_pid_namespace"], true);
        let second = pid_of(&run.wait_for(
            "the stressor's second start",
            Duration::from_secs(10),
            |v| v["type"] == "started" && v["pid"] != first,
        ));
        stressors.push(second);
        let full = run.wait_for("a full after the follow", Duration::from_secs(30), |v| {
            v["type"] == "full" && v["t_ms"].as_u64() >= followed["t_ms"].as_u64()
        });
        assert_inside(&new, second);
        let size = LIMIT / 2;
        let usage = new.memory_value("memory.usage_in_bytes");
        eprintln!(
            "follow_real: the new container's usage: {} MiB",
            usage / MIB
        );
        assert!(
            usage >= size && usage <= LIMIT,
            "the new container holds {usage} bytes; expected the size {size} and its own"
        );
        let charged = full["charged_bytes"].as_u64().unwrap_or_default();
        assert!(
            charged.abs_diff(size) <= size / 10 + HOG,
            "the follow charged {charged} bytes, not about {size}"
        );

        let finished = run.interrupt(Duration::from_secs(15));
        let summary = finished.of_type("summary")[0];
        assert_eq!(summary["follows"], 1, "{summary}");
        assert_eq!(summary["target"], new.cgroup_path.as_str());
        assert_eq!(finished.of_type("target_gone").len(), 1);
        assert!(
            finished.of_type("exited").is_empty(),
            "the container's end is no stressor failure: {:?}",
            finished.of_type("exited")
        );
        assert!(
            finished.stderr.contains("init"),
            "stderr: {}",
            finished.stderr
        );
        assert!(!alive(second));
        assert!(!procs(&new.cgroup_path).contains(&second));
        footprint = rt.footprint();
    }
    assert_clean(&footprint, &[old_cg, new_cg, pod_cg], &stressors);
}

/// Without `--follow`, the container's death ends the run at once with exit code 4 (not after
/// the hold), even while its runtime has not removed the cgroup yet: the stressor is gone from
/// the cgroup, so the runtime can remove it.
#[test]
fn a_dead_container_ends_the_run_with_exit_code_4_promptly() {
    require_root();
    let uid = new_pod_uid();
    let footprint;
    let (pod_cg, app_cg);
    let stressor;
    {
        let rt = Containerd::start();
        let pod = Pod::new(&rt, "shop", "web-0", &uid, Qos::Burstable);
        let app = pod.container("app", Some(LIMIT), &hog_argv(HOG));
        pod_cg = pod.cgroup_path();
        app_cg = app.cgroup_path.clone();
        let state = rt.state_flag();
        let mut run = Memstress::start(&[
            "run",
            "-o",
            "json",
            "--runtime-state",
            &state,
            "--pod",
            &uid,
            "--container",
            "app",
            "--size",
            "50%",
            "--workers",
            "1",
            "--hold",
            "20s",
        ]);
        stressor = pid_of(&run.wait_type("started", Duration::from_secs(20)));
        run.wait_type("full", Duration::from_secs(30));
        assert_inside(&app, stressor);
        // The container dies; its task is not deleted yet (its cgroup is still there).
        let killed = Instant::now();
        app.kill(libc::SIGKILL);
        let finished = run.wait(Duration::from_secs(10));
        let took = killed.elapsed();
        record("container death to memstress exit", took);
        assert_eq!(
            finished.status.code(),
            Some(4),
            "stderr: {}",
            finished.stderr
        );
        assert!(took < Duration::from_secs(5), "took {took:?}");
        let gone = finished.of_type("target_gone");
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0]["cause"], "init_exited");
        assert_eq!(gone[0]["init_pid"], app.init_pid);
        assert_eq!(gone[0]["following"], false);
        assert_eq!(finished.of_type("summary")[0]["outcome"], "target_gone");
        assert!(
            finished.stderr.contains("init process"),
            "stderr: {}",
            finished.stderr
        );
        assert!(!alive(stressor));
        assert!(
            cgroup_exists(&app_cg) && procs(&app_cg).is_empty(),
            "the dead container's cgroup holds {:?}",
            procs(&app_cg)
        );
        pod.delete(&app);
        assert!(
            wait_for(Duration::from_secs(10), || !cgroup_exists(&app_cg)),
            "runc could not remove {app_cg}"
        );
        footprint = rt.footprint();
    }
    assert_clean(&footprint, &[app_cg, pod_cg], &[stressor]);
}

/// A SIGKILLed controller leaves nothing in a live container: its stressors die (the
/// parent-death signal) and the container's cgroup holds only the container's own processes.
#[test]
fn a_sigkilled_controller_leaves_nothing_in_the_container() {
    require_root();
    let uid = new_pod_uid();
    let footprint;
    let (pod_cg, app_cg);
    let mut stressors = Vec::new();
    {
        let rt = Containerd::start();
        let pod = Pod::new(&rt, "shop", "web-0", &uid, Qos::Burstable);
        let app = pod.container("app", Some(LIMIT), &hog_argv(HOG));
        pod_cg = pod.cgroup_path();
        app_cg = app.cgroup_path.clone();
        let state = rt.state_flag();
        let mut run = Memstress::start(&[
            "run",
            "-o",
            "json",
            "--runtime-state",
            &state,
            "--pod",
            &uid,
            "--container",
            "app",
            "--size",
            "50%",
            "--workers",
            "2",
            "--hold",
            "60s",
        ]);
        run.wait_type("full", Duration::from_secs(30));
        for _ in 0..2 {
            let pid = pid_of(
                &run.wait_for("a started stressor", Duration::from_secs(5), |v| {
                    v["type"] == "started"
                        && !stressors.contains(&(v["pid"].as_u64().unwrap_or(0) as u32))
                }),
            );
            assert_inside(&app, pid);
            stressors.push(pid);
        }
        // The container's own processes (its init and the helper's second process).
        let before: Vec<u32> = procs(&app_cg)
            .into_iter()
            .filter(|p| !stressors.contains(p))
            .collect();
        let killed = Instant::now();
        run.signal(libc::SIGKILL);
        assert!(
            wait_for(Duration::from_secs(5), || stressors
                .iter()
                .all(|&p| !alive(p))),
            "stressors outlived the SIGKILLed controller: {stressors:?}"
        );
        record("controller SIGKILL to stressors gone", killed.elapsed());
        let _ = run.wait(Duration::from_secs(5));
        assert!(app.running(), "the container itself must survive");
        let now = procs(&app_cg);
        let comms: Vec<String> = now
            .iter()
            .map(|p| fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default())
            .collect();
        assert!(
            now.iter().all(|p| before.contains(p))
                && !comms.iter().any(|c| c.trim() == "memstress-vm"),
            "the container's cgroup holds memstress's processes: {now:?} {comms:?} (the \
             container's own: {before:?})"
        );
        footprint = rt.footprint();
    }
    assert_clean(&footprint, &[app_cg, pod_cg], &stressors);
}

/// A Docker container of its own (`--container NAME`, outside pods): its init is Docker's
/// `State.Pid`; the stressor runs in its PID namespace, and `docker kill` ends the run with
/// exit code 4 at once, leaving the cgroup to Docker to remove.
#[test]
fn a_killed_docker_container_ends_the_run_with_exit_code_4() {
    require_root();
    let had_docker = cgroup_exists("/docker");
    let footprint;
    let cgroup;
    let stressor;
    {
        let docker = Docker::start();
        let name = format!("follow-{}", &memstress_tests::runtime::new_id()[..8]);
        let c = docker.run(&name, Some(LIMIT), &hog_argv(HOG));
        cgroup = c.cgroup.clone();
        let state = docker.state_flag();
        let mut run = Memstress::start(&[
            "run",
            "-o",
            "json",
            "--runtime-state",
            &state,
            "--container",
            &name,
            "--size",
            "50%",
            "--workers",
            "1",
            "--hold",
            "20s",
        ]);
        let plan = run.wait_type("plan", Duration::from_secs(20));
        assert_eq!(plan["target"]["path"], c.cgroup.as_str());
        stressor = pid_of(&run.wait_type("started", Duration::from_secs(20)));
        run.wait_type("full", Duration::from_secs(30));
        assert_inside_container(&c.cgroup, c.init_pid, stressor);
        let killed = Instant::now();
        let out = docker.docker(&["kill", &name]);
        assert!(out.status.success(), "docker kill: {out:?}");
        let finished = run.wait(Duration::from_secs(10));
        record("docker kill to memstress exit", killed.elapsed());
        assert_eq!(
            finished.status.code(),
            Some(4),
            "stderr: {}",
            finished.stderr
        );
        let gone = finished.of_type("target_gone");
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0]["cause"], "init_exited");
        assert_eq!(gone[0]["init_pid"], c.init_pid);
        assert!(!alive(stressor));
        let out = docker.docker(&["rm", "--force", &name]);
        assert!(out.status.success(), "docker rm: {out:?}");
        assert!(
            wait_for(Duration::from_secs(10), || !cgroup_exists(&cgroup)),
            "Docker could not remove {cgroup}: {:?}",
            procs(&cgroup)
        );
        footprint = docker.footprint();
    }
    let mut gone = vec![cgroup];
    if !had_docker {
        gone.push("/docker".into());
    }
    assert_clean(&footprint, &gone, &[stressor]);
}

/// With only the Job's capabilities (no CAP_SYS_ADMIN, no CAP_SYS_PTRACE), memstress cannot
/// enter the container's PID namespace: it says so once, starts the stressor outside it, and
/// still sees the container's init exit and stops the stressor at once, so nothing keeps the
/// dead container's cgroup.
#[test]
fn without_cap_sys_admin_the_init_is_watched_instead() {
    require_root();
    let uid = new_pod_uid();
    let footprint;
    let (pod_cg, app_cg);
    let stressor;
    {
        let rt = Containerd::start();
        let pod = Pod::new(&rt, "shop", "web-0", &uid, Qos::Burstable);
        let app = pod.container("app", Some(LIMIT), &hog_argv(HOG));
        pod_cg = pod.cgroup_path();
        app_cg = app.cgroup_path.clone();
        let state = rt.state_flag();
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--bounding-set", "-all,+bpf,+perfmon,+setuid,+setgid", "--"])
            .arg(memstress_tests::memstress_bin())
            .args([
                "run",
                "-o",
                "json",
                "--runtime-state",
                &state,
                "--pod",
                &uid,
                "--container",
                "app",
                "--size",
                "50%",
                "--workers",
                "1",
                "--hold",
                "20s",
            ]);
        let mut run = Memstress::start_command(&mut cmd);
        stressor = pid_of(&run.wait_type("started", Duration::from_secs(20)));
        run.wait_type("full", Duration::from_secs(30));
        assert!(procs(&app_cg).contains(&stressor));
        assert_eq!(
            pid_ns(stressor),
            pid_ns(std::process::id()),
            "without CAP_SYS_ADMIN the stressor stays in memstress's PID namespace"
        );
        let killed = Instant::now();
        app.kill(libc::SIGKILL);
        let finished = run.wait(Duration::from_secs(10));
        record(
            "container death to memstress exit (no CAP_SYS_ADMIN)",
            killed.elapsed(),
        );
        assert_eq!(
            finished.status.code(),
            Some(4),
            "stderr: {}",
            finished.stderr
        );
        assert_eq!(
            finished
                .stderr
                .matches("cannot start the stressors in the container's PID namespace")
                .count(),
            1,
            "said once: {}",
            finished.stderr
        );
        assert_eq!(finished.of_type("target_gone")[0]["cause"], "init_exited");
        assert!(!alive(stressor));
        assert!(
            procs(&app_cg).is_empty(),
            "the dead container's cgroup holds {:?}",
            procs(&app_cg)
        );
        footprint = rt.footprint();
    }
    assert_clean(&footprint, &[app_cg, pod_cg], &[stressor]);
}
