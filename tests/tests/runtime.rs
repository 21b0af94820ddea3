//! The real container runtimes harness (`memstress_tests::runtime`): containerd pods laid out
//! like the CRI plugin's, Docker containers, memory that containers hold, restarts, and that a
//! dropped harness leaves no daemon, shim, mount or cgroup behind.

use std::{fs, path::Path, time::Duration};

use memstress_tests::{
    require_root,
    runtime::{
        Containerd, Docker, Footprint, K8S_NAMESPACE, POD_IMAGE, Pod, Qos, annotations as ann,
        cgroup_mounts, hog_argv, memory_file, new_pod_uid, record, wait_for,
    },
};
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn assert_clean(footprints: &[Footprint], cgroups: &[String]) {
    for f in footprints {
        let left = f.leftovers();
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
    for cg in cgroups {
        for m in cgroup_mounts() {
            let d = m.join(cg.trim_start_matches('/'));
            assert!(!d.exists(), "cgroup {} left behind", d.display());
        }
    }
}

fn ns_of(pid: impl std::fmt::Display, ns: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .unwrap_or_else(|e| panic!("readlink /proc/{pid}/ns/{ns}: {e}"))
        .to_string_lossy()
        .into_owned()
}

fn annotation<'a>(spec: &'a Value, key: &str) -> &'a str {
    spec["annotations"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no annotation {key} in {}", spec["annotations"]))
}

fn in_cgroup(pid: u32, cgroup: &str) -> bool {
    fs::read_to_string(memory_file(cgroup, "cgroup.procs"))
        .is_ok_and(|p| p.lines().any(|l| l.trim() == pid.to_string()))
}

/// A kubepods tree the harness did not make must survive it; one it made must go.
fn kubepods_preexisting() -> bool {
    memory_file("/kubepods", "").exists()
}

#[test]
fn containerd_pod_is_laid_out_like_the_cri() {
    require_root();
    let had_kubepods = kubepods_preexisting();
    let uid = new_pod_uid();
    let guaranteed_uid = new_pod_uid();
    let footprint;
    let (sandbox_cg, app_cg);
    {
        let rt = Containerd::start();
        record("containerd start", rt.startup());
        let pod = Pod::new(&rt, "default", "web", &uid, Qos::Burstable);
        let app = pod.container("app", Some(64 * MIB), &["/bin/sleep".into(), "3600".into()]);
        sandbox_cg = pod.sandbox.cgroup_path.clone();
        app_cg = app.cgroup_path.clone();

        // Cgroups: /kubepods/burstable/pod<uid>/<id>, with the processes in them.
        assert_eq!(
            sandbox_cg,
            format!("/kubepods/burstable/pod{uid}/{}", pod.sandbox.id)
        );
        assert_eq!(app_cg, format!("/kubepods/burstable/pod{uid}/{}", app.id));
        assert_eq!(app.id.len(), 64);
        assert!(app.id.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(in_cgroup(pod.sandbox.init_pid, &sandbox_cg));
        assert!(in_cgroup(app.init_pid, &app_cg));
        assert_eq!(app.memory_value("memory.limit_in_bytes"), 64 * MIB);

        // The bundles' specs carry the CRI's annotations and the cgroup path.
        let bundle = rt.state_dir().join("io.containerd.runtime.v2.task/k8s.io");
        assert!(bundle.join(&app.id).join("config.json").is_file());
        let s = rt.config_json(K8S_NAMESPACE, &pod.sandbox.id);
        assert_eq!(annotation(&s, ann::CONTAINER_TYPE), "sandbox");
        assert_eq!(annotation(&s, ann::SANDBOX_ID), pod.sandbox.id);
        assert_eq!(annotation(&s, ann::SANDBOX_NAME), "web");
        assert_eq!(annotation(&s, ann::SANDBOX_NAMESPACE), "default");
        assert_eq!(annotation(&s, ann::SANDBOX_UID), uid);
        assert_eq!(
            annotation(&s, ann::SANDBOX_LOG_DIRECTORY),
            format!("/var/log/pods/default_web_{uid}")
        );
        assert_eq!(s["linux"]["cgroupsPath"], sandbox_cg.as_str());
        let a = rt.config_json(K8S_NAMESPACE, &app.id);
        assert_eq!(annotation(&a, ann::CONTAINER_TYPE), "container");
        assert_eq!(annotation(&a, ann::CONTAINER_NAME), "app");
        assert_eq!(annotation(&a, ann::SANDBOX_ID), pod.sandbox.id);
        assert_eq!(annotation(&a, ann::SANDBOX_NAME), "web");
        assert_eq!(annotation(&a, ann::SANDBOX_NAMESPACE), "default");
        assert_eq!(annotation(&a, ann::SANDBOX_UID), uid);
        assert_eq!(annotation(&a, ann::IMAGE_NAME), POD_IMAGE);
        assert_eq!(a["linux"]["cgroupsPath"], app_cg.as_str());
        assert_eq!(a["linux"]["resources"]["memory"]["limit"], 64 * MIB);

        // The app joins the sandbox's network, IPC and UTS namespaces, not its PID namespace.
        for ns in ["net", "ipc", "uts"] {
            assert_eq!(
                ns_of(app.init_pid, ns),
                ns_of(pod.sandbox.init_pid, ns),
                "{ns}"
            );
        }
        assert_ne!(
            ns_of(app.init_pid, "pid"),
            ns_of(pod.sandbox.init_pid, "pid")
        );
        assert_ne!(ns_of(app.init_pid, "pid"), ns_of("self", "pid"));

        // A Guaranteed pod sits right under /kubepods.
        let g = Pod::new(&rt, "default", "db", &guaranteed_uid, Qos::Guaranteed);
        let c = g.container("db", Some(32 * MIB), &["/bin/sleep".into(), "3600".into()]);
        assert_eq!(
            c.cgroup_path,
            format!("/kubepods/pod{guaranteed_uid}/{}", c.id)
        );
        assert!(in_cgroup(c.init_pid, &c.cgroup_path));
        assert_eq!(c.memory_value("memory.limit_in_bytes"), 32 * MIB);

        footprint = rt.footprint();
        drop(g);
        drop(pod);
    }
    let mut gone = vec![
        sandbox_cg,
        app_cg,
        format!("/kubepods/burstable/pod{uid}"),
        format!("/kubepods/pod{guaranteed_uid}"),
    ];
    if !had_kubepods {
        gone.push("/kubepods".into());
    }
    assert_clean(&[footprint], &gone);
}

#[test]
fn containerd_container_holds_memory() {
    require_root();
    let rt = Containerd::start();
    let uid = new_pod_uid();
    let pod = Pod::new(&rt, "default", "hog", &uid, Qos::BestEffort);
    let idle = pod.container(
        "idle",
        Some(128 * MIB),
        &["/bin/sleep".into(), "3600".into()],
    );
    let before = idle.memory_value("memory.usage_in_bytes");
    let hog = pod.container("hog", Some(128 * MIB), &hog_argv(20 * MIB));
    assert!(
        hog.cgroup_path
            .starts_with(&format!("/kubepods/besteffort/pod{uid}/"))
    );
    let held = wait_for(Duration::from_secs(10), || {
        hog.memory_value("memory.usage_in_bytes") >= 20 * MIB
    });
    let usage = hog.memory_value("memory.usage_in_bytes");
    assert!(held, "the hog's cgroup holds {usage} bytes, not 20 MiB");
    // And keeps it: nothing in it is reclaimable anonymous memory without swap pressure.
    std::thread::sleep(Duration::from_millis(500));
    let later = hog.memory_value("memory.usage_in_bytes");
    eprintln!(
        "runtime: idle container uses {} KiB; the 20 MiB hog's cgroup {} KiB, then {} KiB",
        before >> 10,
        usage >> 10,
        later >> 10
    );
    assert!((20 * MIB..40 * MIB).contains(&later), "{later}");
    assert!(hog.running());
    let footprint = rt.footprint();
    drop(pod);
    drop(rt);
    assert_clean(&[footprint], &[format!("/kubepods/besteffort/pod{uid}")]);
}

#[test]
fn containerd_restart_gives_a_new_id_with_the_same_name() {
    require_root();
    let rt = Containerd::start();
    let uid = new_pod_uid();
    let pod = Pod::new(&rt, "team-a", "api", &uid, Qos::Burstable);
    let old = pod.container(
        "server",
        Some(48 * MIB),
        &["/bin/sleep".into(), "3600".into()],
    );
    let new = pod.restart("server");
    assert_ne!(new.id, old.id);
    assert_eq!(new.name, "server");
    assert_eq!(new.memory_limit(), Some(48 * MIB));
    assert_eq!(new.memory_value("memory.limit_in_bytes"), 48 * MIB);
    assert!(
        !old.running(),
        "the old container's process survived the restart"
    );
    assert!(
        !memory_file(&old.cgroup_path, "").exists(),
        "the old container's cgroup survived the restart"
    );
    assert!(!rt.bundle(K8S_NAMESPACE, &old.id).exists());
    let spec = rt.config_json(K8S_NAMESPACE, &new.id);
    assert_eq!(annotation(&spec, ann::CONTAINER_NAME), "server");
    assert_eq!(annotation(&spec, ann::SANDBOX_ID), pod.sandbox.id);
    assert_eq!(pod.containers().len(), 1);
    let footprint = rt.footprint();
    drop(pod);
    drop(rt);
    assert_clean(&[footprint], &[format!("/kubepods/burstable/pod{uid}")]);
}

#[test]
fn docker_container_has_its_limit_name_and_memory() {
    require_root();
    let had_docker = memory_file("/docker", "").exists();
    let footprint;
    let cgroup;
    {
        let docker = Docker::start();
        record("dockerd start", docker.startup());
        record("image build and import", docker.import_time());
        let c = docker.run("memstress-hog", Some(128 * MIB), &hog_argv(20 * MIB));
        cgroup = c.cgroup.clone();
        assert_eq!(c.cgroup, format!("/docker/{}", c.id));
        assert!(in_cgroup(c.init_pid, &c.cgroup));
        assert_eq!(c.memory_value("memory.limit_in_bytes"), 128 * MIB);
        let config = docker
            .data_root()
            .join("containers")
            .join(&c.id)
            .join("config.v2.json");
        let config: Value =
            serde_json::from_str(&fs::read_to_string(&config).expect("read config.v2.json"))
                .expect("config.v2.json is JSON");
        assert_eq!(config["Name"], "/memstress-hog");
        assert!(docker.bundle(&c.id).join("config.json").is_file());
        assert!(wait_for(Duration::from_secs(10), || {
            c.memory_value("memory.usage_in_bytes") >= 20 * MIB
        }));
        footprint = docker.footprint();
    }
    let mut gone = vec![cgroup];
    if !had_docker {
        gone.push("/docker".into());
    }
    assert_clean(&[footprint], &gone);
}

#[test]
fn both_runtimes_at_once_leave_nothing() {
    require_root();
    let had = ["/kubepods", "/docker"].map(|c| memory_file(c, "").exists());
    let uid = new_pod_uid();
    let footprints;
    {
        let rt = Containerd::start();
        let docker = Docker::start();
        let pod = Pod::new(&rt, "default", "both", &uid, Qos::Burstable);
        let a = pod.container("a", Some(64 * MIB), &hog_argv(4 * MIB));
        let d = docker.run(
            "both",
            Some(64 * MIB),
            &["/bin/sleep".into(), "3600".into()],
        );
        assert!(a.running());
        assert!(Path::new(&format!("/proc/{}", d.init_pid)).exists());
        footprints = [rt.footprint(), docker.footprint()];
        // The harnesses clean up on their own even when a pod is never dropped by hand.
        std::mem::forget(pod);
    }
    let mut gone = vec![format!("/kubepods/burstable/pod{uid}")];
    for (cg, had) in ["/kubepods", "/docker"].into_iter().zip(had) {
        if !had {
            gone.push(cg.into());
        }
    }
    assert_clean(&footprints, &gone);
}
