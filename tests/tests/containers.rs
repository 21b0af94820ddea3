//! Names on every kill, from real container runtimes: a containerd pod laid out as the CRI
//! plugin lays one out, and Docker's own containers (`memstress_tests::runtime` starts both
//! with private state and stops them). What memstress names is checked against what the
//! runtime says (its ids, the names it was given) and against dmesg (which process died).

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use memstress_tests::{
    Kmsg, Memstress, memstress_bin, memstress_output, require_root,
    runtime::{Containerd, Docker, Layout, Pod, Qos, hog_argv, new_pod_uid, wait_for},
    scrape_metrics,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// `victim.kubernetes` and `victim.container` of `kill` are those of container `id` named
/// `name` in pod `uid` (`shop/cart`).
fn assert_named(who: &Value, uid: &str, id: &str, name: &str, what: &str) {
    assert_named_qos(who, uid, id, name, "Burstable", what);
}

fn assert_named_qos(who: &Value, uid: &str, id: &str, name: &str, qos: &str, what: &str) {
    let k = &who["kubernetes"];
    assert_eq!(k["pod_uid"], uid, "{what}: {who}");
    assert_eq!(k["namespace"], "shop", "{what}: {who}");
    assert_eq!(k["pod_name"], "cart", "{what}: {who}");
    assert_eq!(k["container_name"], name, "{what}: {who}");
    assert_eq!(k["qos"], qos, "{what}: {who}");
    let c = &who["container"];
    assert_eq!(c["id"], id, "{what}: {who}");
    assert_eq!(c["runtime"], "containerd", "{what}: {who}");
    assert_eq!(c["name"], name, "{what}: {who}");
}

/// A node-wide watch names the victim and the trigger of a kill in a real containerd pod
/// container (ids equal to the runtime's, names as the CRI annotations give them), the text
/// line says `namespace/pod/container`, and the kill counter carries the same names.
#[test]
fn node_watch_names_a_kill_in_a_containerd_pod() {
    require_root();
    let rt = Containerd::start();
    let mut kmsg = Kmsg::open();
    let state = rt.state_flag();
    // The text form, from a second watch (its stdout is sentences, not JSON); started first,
    // so that it is attached by the time the JSON one is.
    let text = Command::new(memstress_bin())
        .args(["watch", "--runtime-state", &state])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a text watch");
    let mut watch = Memstress::start(&[
        "watch",
        "-o",
        "json",
        "--runtime-state",
        &state,
        "--metrics",
        "127.0.0.1:0",
    ]);
    watch.wait_type("attached", Duration::from_secs(30));
    let address = watch.wait_type("metrics", Duration::from_secs(10))["address"]
        .as_str()
        .expect("an address")
        .to_owned();
    std::thread::sleep(Duration::from_secs(1));
    let pod_uid = new_pod_uid();
    let pod = Pod::new(&rt, "shop", "cart", &pod_uid, Qos::Burstable);
    // The app holds more than its limit: the kernel kills it in its own cgroup.
    let app = pod.container("app", Some(32 * MIB), &hog_argv(64 * MIB));
    let kill = watch.wait_for("the app's kill", Duration::from_secs(30), |v| {
        v["type"] == "oom_kill" && v["victim"]["container"]["id"] == app.id.as_str()
    });
    assert_named(&kill["victim"], &pod_uid, &app.id, "app", "victim");
    assert_named(&kill["trigger"], &pod_uid, &app.id, "app", "trigger");
    assert_eq!(
        kill["trigger"]["cgroup"],
        app.cgroup_path.as_str(),
        "{kill}"
    );
    assert_eq!(kill["victim"]["cgroup"], app.cgroup_path.as_str(), "{kill}");
    // The kernel's own account: the same process died.
    let pid = kill["victim"]["pid"].as_u64().expect("a pid") as u32;
    assert!(
        wait_for(Duration::from_secs(10), || kmsg
            .kills()
            .iter()
            .any(|k| k.pid == pid)),
        "dmesg has no kill of {pid}"
    );
    // The helper's second process shares the victim's memory: collateral, named too.
    for c in kill["collateral"].as_array().expect("collateral") {
        assert_named(c, &pod_uid, &app.id, "app", "collateral");
    }
    let series = "namespace=\"shop\",pod=\"cart\",container=\"app\"} ";
    assert!(
        wait_for(Duration::from_secs(5), || scrape_metrics(&address)
            .lines()
            .any(
                |l| l.starts_with("memstress_oom_kills_total{") && l.contains(series)
            )),
        "no kill series with the pod's names: {}",
        scrape_metrics(&address)
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(text.id() as i32, libc::SIGINT) };
    let out = text.wait_with_output().expect("the text watch ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = format!("OOM KILL shop/cart/app ({pid} ");
    if let Some(l) = stdout.lines().find(|l| l.contains(&expected)) {
        eprintln!("text: {l}");
    }
    assert!(
        stdout.lines().any(|l| l.contains(&expected)),
        "no text line with `{expected}`: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    watch.interrupt(Duration::from_secs(10));
}

/// `watch --pod UID --container NAME` reports kills in that container only, across a restart
/// (a new id, the same name); `--namespace NS` only kills in that namespace's pods.
#[test]
fn watch_filters_by_pod_container_and_namespace() {
    require_root();
    let rt = Containerd::start();
    let state = rt.state_flag();
    let shop_uid = new_pod_uid();
    let other_uid = new_pod_uid();
    let shop = Pod::new(&rt, "shop", "cart", &shop_uid, Qos::Burstable);
    let other = Pod::new(&rt, "other", "cart", &other_uid, Qos::Burstable);
    // Present before the watch resolves its filter (a name needs its container).
    let idle = shop.container("app", Some(64 * MIB), &["/bin/sleep".into(), "600".into()]);
    let mut all = Memstress::start(&["watch", "-o", "json", "--runtime-state", &state]);
    let mut app = Memstress::start(&[
        "watch",
        "-o",
        "json",
        "--runtime-state",
        &state,
        "--pod",
        &shop_uid[..8],
        "--container",
        "app",
    ]);
    let mut ns = Memstress::start(&[
        "watch",
        "-o",
        "json",
        "--runtime-state",
        &state,
        "--namespace",
        "other",
    ]);
    for w in [&mut all, &mut app, &mut ns] {
        w.wait_type("attached", Duration::from_secs(30));
    }
    // The app restarts as a hog (new id, same name); a sidecar and the other pod's app OOM too.
    shop.delete(&idle);
    let hog = shop.container("app", Some(32 * MIB), &hog_argv(64 * MIB));
    let side = shop.container("side", Some(32 * MIB), &hog_argv(64 * MIB));
    let theirs = other.container("app", Some(32 * MIB), &hog_argv(64 * MIB));
    for c in [&hog, &side, &theirs] {
        all.wait_for("a kill in each container", Duration::from_secs(30), |v| {
            v["type"] == "oom_kill" && v["victim"]["container"]["id"] == c.id.as_str()
        });
    }
    // The filtered watches had the same records; give them a moment to print.
    std::thread::sleep(Duration::from_millis(500));
    let ids = |f: &memstress_tests::Finished| -> Vec<String> {
        f.of_type("oom_kill")
            .iter()
            .map(|k| {
                k["victim"]["container"]["id"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned()
            })
            .collect()
    };
    let app = app.interrupt(Duration::from_secs(10));
    let app_ids = ids(&app);
    assert!(
        !app_ids.is_empty(),
        "no kill for --container app: {:?}",
        app.lines
    );
    assert!(
        app_ids.iter().all(|i| *i == hog.id),
        "{app_ids:?} vs {}",
        hog.id
    );
    let ns = ns.interrupt(Duration::from_secs(10));
    let ns_ids = ids(&ns);
    assert!(!ns_ids.is_empty(), "no kill for --namespace other");
    assert!(ns_ids.iter().all(|i| *i == theirs.id), "{ns_ids:?}");
    for k in ns.of_type("oom_kill") {
        assert_eq!(k["victim"]["kubernetes"]["namespace"], "other", "{k}");
    }
    all.interrupt(Duration::from_secs(10));
    // A filter that names nothing is refused before anything loads.
    let out = memstress_output(&[
        "watch",
        "--runtime-state",
        &state,
        "--pod",
        &shop_uid,
        "--container",
        "nosuch",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no container `nosuch`"), "{stderr}");
}

/// `run --container` on a plain `docker run -m 128m` container, by name, id and id prefix:
/// the plan names the container, the stressors land in its cgroup, and a kill there is
/// reported with Docker's id and name.
#[test]
fn run_targets_docker_containers_by_name_and_id() {
    require_root();
    let docker = Docker::start();
    let state = docker.state_flag();
    let web = docker.run("web", Some(128 * MIB), &["/bin/sleep".into(), "600".into()]);
    for given in [web.name.as_str(), web.id.as_str(), &web.id[..12]] {
        let out = memstress_output(&[
            "run",
            "--dry-run",
            "-o",
            "json",
            "--runtime-state",
            &state,
            "--container",
            given,
            "--size",
            "50%",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "--container {given}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let plan: Value = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["type"] == "plan")
            .expect("a plan line");
        let target = &plan["target"];
        assert_eq!(target["path"], web.cgroup.as_str(), "{given}: {plan}");
        assert_eq!(target["container"]["id"], web.id.as_str(), "{given}");
        assert_eq!(target["container"]["name"], "web", "{given}");
        assert_eq!(target["container"]["runtime"], "docker", "{given}");
        assert_eq!(target["limit_bytes"], 128 * MIB, "{given}");
    }
    // A real run past the limit: the stressor is killed in the container, and named.
    let mut kmsg = Kmsg::open();
    let run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--runtime-state",
        &state,
        "--container",
        "web",
        "--size",
        "160Mi",
        "--on-oom",
        "stop",
    ]);
    let done = run.wait(Duration::from_secs(60));
    let kills = done.of_type("oom_kill");
    assert!(
        !kills.is_empty(),
        "no kill: {:?}\n{}",
        done.lines,
        done.stderr
    );
    let v = &kills[0]["victim"];
    assert_eq!(v["container"]["id"], web.id.as_str(), "{v}");
    assert_eq!(v["container"]["name"], "web", "{v}");
    assert_eq!(v["container"]["runtime"], "docker", "{v}");
    assert_eq!(v["kubernetes"], Value::Null, "{v}");
    let pid = v["pid"].as_u64().expect("a pid") as u32;
    assert!(
        wait_for(Duration::from_secs(10), || kmsg
            .kills()
            .iter()
            .any(|k| k.pid == pid)),
        "dmesg has no kill of {pid}"
    );
    // Nothing of the run is left in the container.
    let procs =
        std::fs::read_to_string(format!("/sys/fs/cgroup/memory{}/cgroup.procs", web.cgroup))
            .expect("the container's procs");
    assert_eq!(
        procs.lines().collect::<Vec<_>>(),
        vec![web.init_pid.to_string()],
        "only the container's own process is left"
    );
    // A name no container has is refused, saying what was looked for.
    let out = memstress_output(&[
        "run",
        "--dry-run",
        "--runtime-state",
        &state,
        "--container",
        "nosuch",
        "--size",
        "1Mi",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no container `nosuch`") && stderr.contains("web"),
        "{stderr}"
    );
}

/// The systemd driver's shape (`kubepods.slice/…-pod<uid_>.slice/cri-containerd-<id>.scope`,
/// made by runc's cgroupfs driver: no systemd runs here) and every QoS class: the kill is
/// named the same way, and `run --pod UID --container NAME` resolves the real container.
#[test]
fn systemd_shaped_pods_of_every_qos_class_are_named() {
    require_root();
    let rt = Containerd::start();
    let state = rt.state_flag();
    let mut watch = Memstress::start(&["watch", "-o", "json", "--runtime-state", &state]);
    watch.wait_type("attached", Duration::from_secs(30));
    for (qos, name) in [
        (Qos::Guaranteed, "Guaranteed"),
        (Qos::Burstable, "Burstable"),
        (Qos::BestEffort, "BestEffort"),
    ] {
        let pod_uid = new_pod_uid();
        let pod = Pod::with_layout(&rt, "shop", "cart", &pod_uid, qos, Layout::Systemd);
        let idle = pod.container("idle", Some(64 * MIB), &["/bin/sleep".into(), "600".into()]);
        let out = memstress_output(&[
            "run",
            "--dry-run",
            "-o",
            "json",
            "--runtime-state",
            &state,
            "--pod",
            &pod_uid,
            "--container",
            "idle",
            "--size",
            "10Mi",
        ]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let plan: Value =
            serde_json::from_str(stdout.lines().next().expect("a plan")).expect("JSON");
        assert_eq!(plan["target"]["path"], idle.cgroup_path.as_str(), "{name}");
        assert_eq!(
            plan["target"]["kubernetes"]["driver"], "systemd",
            "{name}: {plan}"
        );
        let app = pod.container("app", Some(32 * MIB), &hog_argv(64 * MIB));
        assert!(
            app.cgroup_path
                .ends_with(&format!("cri-containerd-{}.scope", app.id))
        );
        let kill = watch.wait_for("the app's kill", Duration::from_secs(30), |v| {
            v["type"] == "oom_kill" && v["victim"]["container"]["id"] == app.id.as_str()
        });
        assert_named_qos(&kill["victim"], &pod_uid, &app.id, "app", name, name);
    }
    watch.interrupt(Duration::from_secs(10));
}

/// Kills that were not the OOM killer's, from real senders: `docker kill`, `docker restart`
/// and `ctr task kill` are the container runtime's (runc sends them), `kill -9` from a shell
/// is a process's; each is a `kill` line naming the container, never an `oom_kill`; and an
/// OOM kill in a container is an `oom_kill` only.
#[test]
fn runtime_and_shell_kills_are_told_apart_from_oom_kills() {
    require_root();
    let docker = Docker::start();
    let rt = Containerd::start();
    let docker_state = docker.state_flag();
    let containerd_state = rt.state_flag();
    let mut watch = Memstress::start(&[
        "watch",
        "-o",
        "json",
        "--runtime-state",
        &docker_state,
        "--runtime-state",
        &containerd_state,
    ]);
    watch.wait_type("attached", Duration::from_secs(30));
    let sleep: Vec<String> = vec!["/bin/sleep".into(), "600".into()];
    let kill_of = |watch: &mut Memstress, id: &str, what: &str| -> Value {
        let id = id.to_owned();
        watch.wait_for(what, Duration::from_secs(30), move |v| {
            v["type"] == "kill" && v["victim"]["container"]["id"] == id.as_str()
        })
    };
    // docker kill: SIGKILL through containerd's shim and runc.
    let killed = docker.run("killed", Some(128 * MIB), &sleep);
    let out = docker.docker(&["kill", "killed"]);
    assert!(out.status.success(), "{out:?}");
    let k = kill_of(&mut watch, &killed.id, "docker kill's line");
    eprintln!("docker kill: {}", k["why"]);
    assert_eq!(k["signal"], "SIGKILL", "{k}");
    assert_eq!(k["by"], "container_runtime", "{k}");
    assert_eq!(k["victim"]["pid"], killed.init_pid, "{k}");
    assert_eq!(k["victim"]["container"]["name"], "killed", "{k}");
    assert_eq!(k["victim"]["container"]["runtime"], "docker", "{k}");
    assert!(
        k["why"]
            .as_str()
            .unwrap_or_default()
            .contains("not the OOM killer"),
        "{k}"
    );
    // docker restart: the init ignores SIGTERM (a PID namespace's init without a handler),
    // so the grace period runs out and runc SIGKILLs it.
    let restarted = docker.run("restarted", Some(128 * MIB), &sleep);
    let out = docker.docker(&["restart", "-t", "1", "restarted"]);
    assert!(out.status.success(), "{out:?}");
    let k = kill_of(&mut watch, &restarted.id, "docker restart's line");
    eprintln!("docker restart: {}", k["why"]);
    assert_eq!(
        (&k["signal"], &k["by"]),
        (&"SIGKILL".into(), &"container_runtime".into()),
        "{k}"
    );
    assert_eq!(k["victim"]["pid"], restarted.init_pid, "{k}");
    // ctr task kill of a pod's container: the runtime, named with its pod.
    let pod_uid = new_pod_uid();
    let pod = Pod::new(&rt, "shop", "cart", &pod_uid, Qos::Burstable);
    let app = pod.container("app", Some(64 * MIB), &sleep);
    let out = rt.ctr(
        memstress_tests::runtime::K8S_NAMESPACE,
        &["task", "kill", "--signal", "SIGKILL", &app.id],
    );
    assert!(out.status.success(), "{out:?}");
    let k = kill_of(&mut watch, &app.id, "ctr task kill's line");
    assert_eq!(
        (&k["signal"], &k["by"]),
        (&"SIGKILL".into(), &"container_runtime".into()),
        "{k}"
    );
    assert_named(&k["victim"], &pod_uid, &app.id, "app", "ctr task kill");
    // kill -9 from a shell on the node: a process.
    let other = pod.container("other", Some(64 * MIB), &sleep);
    let status = Command::new("sh")
        .args(["-c", &format!("kill -9 {}", other.init_pid)])
        .status()
        .expect("run sh");
    assert!(status.success());
    let k = kill_of(&mut watch, &other.id, "kill -9's line");
    assert_eq!(
        (&k["signal"], &k["by"]),
        (&"SIGKILL".into(), &"process".into()),
        "{k}"
    );
    assert!(
        ["sh", "kill"].contains(&k["sender"]["comm"].as_str().unwrap_or_default()),
        "{k}"
    );
    // An OOM kill in a container: an oom_kill line, and no kill line for that process.
    let hog = pod.container("hog", Some(32 * MIB), &hog_argv(64 * MIB));
    let oom = watch.wait_for("the hog's OOM kill", Duration::from_secs(30), |v| {
        v["type"] == "oom_kill" && v["victim"]["container"]["id"] == hog.id.as_str()
    });
    let victim = oom["victim"]["pid"].clone();
    // Past the 200 ms a kernel SIGKILL is held for.
    std::thread::sleep(Duration::from_millis(600));
    let done = watch.interrupt(Duration::from_secs(10));
    let twice: Vec<&Value> = done
        .of_type("kill")
        .into_iter()
        .filter(|k| k["victim"]["pid"] == victim)
        .collect();
    assert!(
        twice.is_empty(),
        "an OOM kill reported as a kill too: {twice:?}"
    );
    // Each container above was killed once, by one sender.
    for id in [&killed.id, &app.id, &other.id] {
        let n = done
            .of_type("kill")
            .iter()
            .filter(|k| k["victim"]["container"]["id"] == id.as_str() && k["signal"] == "SIGKILL")
            .count();
        assert_eq!(n, 1, "SIGKILL lines for {id}");
    }
}

/// `run --pod UID --container NAME --size 80%` on a real pod container whose app already holds
/// 40 % of its limit: the stressors land in the container (its cgroup is charged), the
/// domain is the container's, and the OOM kill that follows is reported in the run with the
/// pod's names and checked against dmesg.
#[test]
fn run_on_a_real_pod_container_reports_its_kill() {
    require_root();
    let rt = Containerd::start();
    let state = rt.state_flag();
    let pod_uid = new_pod_uid();
    let pod = Pod::new(&rt, "shop", "cart", &pod_uid, Qos::Burstable);
    // The helper holds its size in one mm shared by two processes.
    let app = pod.container("app", Some(64 * MIB), &hog_argv(26 * MIB));
    assert!(wait_for(Duration::from_secs(10), || app
        .memory_value("memory.usage_in_bytes")
        >= 25 * MIB));
    let mut kmsg = Kmsg::open();
    let run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--runtime-state",
        &state,
        "--pod",
        &pod_uid,
        "--container",
        "app",
        "--size",
        "80%",
        "--hold",
        "2s",
    ]);
    let done = run.wait(Duration::from_secs(60));
    // The stressor (51 MiB) outranks the app (26 MiB): the kernel takes it, and the run
    // ends there (`all_stressors_killed`).
    assert_eq!(
        done.of_type("summary")[0]["outcome"],
        "all_stressors_killed"
    );
    assert!(done.status.success(), "{:?}\n{}", done.status, done.stderr);
    let plan = done.of_type("plan")[0];
    assert_eq!(plan["target"]["path"], app.cgroup_path.as_str(), "{plan}");
    assert_eq!(plan["target"]["container"]["id"], app.id.as_str(), "{plan}");
    assert_eq!(plan["total_bytes"], 64 * MIB * 8 / 10, "{plan}");
    let kills = done.of_type("oom_kill");
    assert!(!kills.is_empty(), "no kill: {:?}", done.lines);
    let dmesg = kmsg.kills();
    for k in &kills {
        assert_eq!(k["in_target"], true, "{k}");
        assert_eq!(k["domain"]["cgroup"], app.cgroup_path.as_str(), "{k}");
        assert_named(&k["victim"], &pod_uid, &app.id, "app", "run's kill");
        let pid = k["victim"]["tid"].as_u64().expect("a tid") as u32;
        assert!(
            dmesg.iter().any(|d| d.pid == pid),
            "{pid} not in dmesg: {dmesg:?}"
        );
    }
}
