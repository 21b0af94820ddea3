//! Test fixtures: directory trees shaped like /sys/fs/cgroup (for `--cgroup-root`), with the
//! memory files the kernel would show, Kubernetes pods and containers laid out as the kubelet
//! and each runtime lay them out, and the runtimes' state files that carry container names.
//!
//! The shapes are written out here independently of [`crate::target::kube`], from the layouts the
//! kubelet and the runtimes document, so that a test checks the resolver against them rather
//! than against itself. Used by the tests (always compiled: a feature for it made the tests
//! package build the library a second time).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::target::{
    cgroup::{Hierarchy, Version},
    kube::{Driver, Qos, Runtime},
};

/// The UID of [`Tree::sample_pod`]'s pod.
pub const SAMPLE_POD_UID: &str = "5b1d4c7e-1f2a-4b3c-9d8e-7f6a5b4c3d2e";

/// `memory.limit_in_bytes` of an unlimited v1 cgroup on 4 KiB pages.
pub const V1_UNLIMITED: u64 = 9_223_372_036_854_771_712;

/// A pod's cgroup path for `driver`, as the kubelet makes it (UID with dashes).
pub fn pod_path(driver: Driver, qos: Qos, uid: &str) -> String {
    match driver {
        Driver::Systemd => {
            // systemd reads `-` in a slice name as nesting: the kubelet escapes it.
            let u = uid.replace('-', "_");
            match qos {
                Qos::Guaranteed => format!("/kubepods.slice/kubepods-pod{u}.slice"),
                Qos::Burstable => format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"
                ),
                Qos::BestEffort => format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice"
                ),
            }
        }
        Driver::Cgroupfs => match qos {
            Qos::Guaranteed => format!("/kubepods/pod{uid}"),
            Qos::Burstable => format!("/kubepods/burstable/pod{uid}"),
            Qos::BestEffort => format!("/kubepods/besteffort/pod{uid}"),
        },
    }
}

/// A container's cgroup name inside its pod's, as each runtime makes it.
pub fn container_name(driver: Driver, runtime: Runtime, id: &str) -> String {
    match (driver, runtime) {
        (Driver::Systemd, Runtime::Containerd) => format!("cri-containerd-{id}.scope"),
        (Driver::Systemd, Runtime::CriO) => format!("crio-{id}.scope"),
        (Driver::Systemd, Runtime::Docker) => format!("docker-{id}.scope"),
        (Driver::Cgroupfs, Runtime::CriO) => format!("crio-{id}"),
        (Driver::Cgroupfs, Runtime::Containerd | Runtime::Docker) => id.to_owned(),
    }
}

/// A 64-hex-digit container id made from `seed`; distinct seeds give ids that differ in
/// their first 8 digits (multiplying by an odd constant is a bijection on u32).
pub fn container_id(seed: u32) -> String {
    format!("{:08x}", seed.wrapping_mul(0x9e37_79b1)).repeat(8)
}

/// A tree shaped like /sys/fs/cgroup in a temporary directory, removed when dropped.
#[derive(Debug)]
pub struct Tree {
    root: PathBuf,
    version: Version,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh, empty directory under the system's temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!(
        "memstress-fixture-{}-{n}-{tag}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

impl Tree {
    /// An empty hierarchy of `version`: v1 as `<root>/memory/` (the memory controller's own
    /// tree, as on hybrid systems, next to an empty `unified/`), v2 as `<root>/` with
    /// `cgroup.controllers` listing memory.
    pub fn new(version: Version) -> Self {
        let root = temp_dir(match version {
            Version::V1 => "v1",
            Version::V2 => "v2",
        });
        let tree = Self { root, version };
        match version {
            Version::V1 => {
                fs::create_dir_all(tree.root.join("unified")).expect("unified");
                fs::create_dir_all(tree.root.join("cpu")).expect("cpu");
            }
            Version::V2 => {
                write(
                    &tree.root.join("cgroup.controllers"),
                    "cpuset cpu io memory hugetlb pids rdma misc\n",
                );
                write(
                    &tree.root.join("cgroup.subtree_control"),
                    "cpu io memory pids\n",
                );
                write(&tree.root.join("cgroup.procs"), "");
            }
        }
        tree.files(&tree.mount(), None, 0, true);
        tree
    }

    /// The directory to pass as `--cgroup-root`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Its version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Where the memory hierarchy is (`<root>/memory` on v1, `<root>` on v2).
    pub fn mount(&self) -> PathBuf {
        match self.version {
            Version::V1 => self.root.join("memory"),
            Version::V2 => self.root.clone(),
        }
    }

    /// The hierarchy, as memstress finds it from the root.
    pub fn hierarchy(&self) -> Hierarchy {
        Hierarchy::at_root(&self.root).expect("a fixture is a cgroup root")
    }

    /// The directory of cgroup `path`.
    pub fn dir(&self, path: &str) -> PathBuf {
        self.mount().join(path.trim_start_matches('/'))
    }

    fn files(&self, dir: &Path, limit: Option<u64>, usage: u64, root: bool) {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        write(&dir.join("cgroup.procs"), "");
        let inactive = usage / 8;
        match self.version {
            Version::V1 => {
                let limit = limit.unwrap_or(V1_UNLIMITED);
                write(&dir.join("memory.limit_in_bytes"), &format!("{limit}\n"));
                write(&dir.join("memory.usage_in_bytes"), &format!("{usage}\n"));
                write(
                    &dir.join("memory.max_usage_in_bytes"),
                    &format!("{usage}\n"),
                );
                write(&dir.join("memory.failcnt"), "0\n");
                write(
                    &dir.join("memory.oom_control"),
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
                );
                write(
                    &dir.join("memory.stat"),
                    &format!(
                        "cache {inactive}\nrss {}\ninactive_file {inactive}\ntotal_inactive_file {inactive}\ntotal_rss {}\n",
                        usage - inactive,
                        usage - inactive
                    ),
                );
                write(&dir.join("tasks"), "");
            }
            Version::V2 => {
                if !root {
                    let max = limit.map_or_else(|| "max".to_owned(), |l| l.to_string());
                    write(&dir.join("memory.max"), &format!("{max}\n"));
                    write(&dir.join("memory.current"), &format!("{usage}\n"));
                    write(&dir.join("memory.peak"), &format!("{usage}\n"));
                    write(
                        &dir.join("memory.events"),
                        "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
                    );
                    write(&dir.join("memory.swap.max"), "max\n");
                    write(&dir.join("memory.high"), "max\n");
                    write(&dir.join("cgroup.subtree_control"), "memory\n");
                    write(&dir.join("cgroup.controllers"), "cpu io memory pids\n");
                }
                write(
                    &dir.join("memory.stat"),
                    &format!(
                        "anon {}\nfile {inactive}\ninactive_file {inactive}\n",
                        usage - inactive
                    ),
                );
                write(
                    &dir.join("memory.pressure"),
                    "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n\
                     full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
                );
            }
        }
    }

    /// Creates cgroup `path` (and any missing ancestor, unlimited and empty) with `limit`
    /// (`None`: unlimited) and `usage` bytes charged; returns its directory.
    pub fn cgroup(&self, path: &str, limit: Option<u64>, usage: u64) -> PathBuf {
        let mut at = self.mount();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            at = at.join(part);
            if i + 1 == parts.len() {
                self.files(&at, limit, usage, false);
            } else if !at.join("cgroup.procs").exists() {
                self.files(&at, None, 0, false);
            }
        }
        at
    }

    /// Creates a pod's cgroup with `limit`; returns its cgroup path.
    pub fn pod(&self, driver: Driver, qos: Qos, uid: &str, limit: Option<u64>) -> String {
        let path = pod_path(driver, qos, uid);
        self.cgroup(&path, limit, 0);
        path
    }

    /// Creates a container's cgroup in pod `pod` (a path from [`Tree::pod`]); returns its
    /// cgroup path.
    pub fn container(
        &self,
        pod: &str,
        driver: Driver,
        runtime: Runtime,
        id: &str,
        limit: Option<u64>,
        usage: u64,
    ) -> String {
        let path = format!("{pod}/{}", container_name(driver, runtime, id));
        self.cgroup(&path, limit, usage);
        path
    }

    /// The usual pod of the tests, on a tree of `version` laid out by `driver`: Burstable
    /// pod [`SAMPLE_POD_UID`] (`shop/web-0`, limit 512 MiB) with one containerd container
    /// `app` (limit 256 MiB, 40 MiB used). Returns the tree, the container's cgroup path and
    /// its id.
    pub fn sample_pod(version: Version, driver: Driver) -> (Self, String, String) {
        const MIB: u64 = 1 << 20;
        let tree = Self::new(version);
        let pod = tree.pod(driver, Qos::Burstable, SAMPLE_POD_UID, Some(512 * MIB));
        let id = container_id(1);
        let ctr = tree.container(
            &pod,
            driver,
            Runtime::Containerd,
            &id,
            Some(256 * MIB),
            40 * MIB,
        );
        tree.state(
            Runtime::Containerd,
            &id,
            SAMPLE_POD_UID,
            "shop",
            "web-0",
            Some("app"),
        );
        (tree, ctr, id)
    }

    /// Where [`Tree::state`] writes runtime state files (pass as `--runtime-root`).
    pub fn state_root(&self) -> PathBuf {
        self.root.join("node")
    }

    /// Writes the state file `runtime` keeps for container `id` of pod `namespace/pod_name`
    /// (`container`: its name; `None`: the pod's sandbox).
    pub fn state(
        &self,
        runtime: Runtime,
        id: &str,
        pod_uid: &str,
        namespace: &str,
        pod_name: &str,
        container: Option<&str>,
    ) {
        write_state(
            &self.state_root(),
            runtime,
            id,
            pod_uid,
            namespace,
            pod_name,
            container,
        );
    }
}

/// An OCI bundle's `config.json`, as much of it as runtimes' readers look at.
#[derive(serde::Serialize)]
struct OciConfig<'a> {
    #[serde(rename = "ociVersion")]
    oci_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    process: Option<OciProcess<'a>>,
    annotations: BTreeMap<&'a str, String>,
}

#[derive(serde::Serialize)]
struct OciProcess<'a> {
    args: [&'a str; 1],
}

/// Docker's `config.v2.json`, as much of it as its readers look at.
#[derive(serde::Serialize)]
struct DockerConfig<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    #[serde(rename = "Config")]
    config: DockerLabels<'a>,
}

#[derive(serde::Serialize)]
struct DockerLabels<'a> {
    #[serde(rename = "Labels")]
    labels: BTreeMap<&'a str, String>,
}

/// Writes the state file `runtime` keeps for a container under `root` (see [`Tree::state`]).
pub fn write_state(
    root: &Path,
    runtime: Runtime,
    id: &str,
    pod_uid: &str,
    namespace: &str,
    pod_name: &str,
    container: Option<&str>,
) {
    let kind = |container_word: &str, sandbox_word: &str| {
        if container.is_some() {
            container_word
        } else {
            sandbox_word
        }
        .to_owned()
    };
    let pod_labels = |labels: &mut BTreeMap<&str, String>| {
        labels.insert("io.kubernetes.pod.name", pod_name.to_owned());
        labels.insert("io.kubernetes.pod.namespace", namespace.to_owned());
        labels.insert("io.kubernetes.pod.uid", pod_uid.to_owned());
    };
    let (path, body) = match runtime {
        Runtime::Containerd => {
            let mut a = BTreeMap::new();
            a.insert(
                "io.kubernetes.cri.container-type",
                kind("container", "sandbox"),
            );
            a.insert("io.kubernetes.cri.sandbox-name", pod_name.to_owned());
            a.insert("io.kubernetes.cri.sandbox-namespace", namespace.to_owned());
            a.insert("io.kubernetes.cri.sandbox-uid", pod_uid.to_owned());
            if let Some(name) = container {
                a.insert("io.kubernetes.cri.container-name", name.to_owned());
            }
            let config = OciConfig {
                oci_version: "1.2.0",
                process: Some(OciProcess { args: ["/app"] }),
                annotations: a,
            };
            (
                root.join("run/containerd/io.containerd.runtime.v2.task/k8s.io")
                    .join(id)
                    .join("config.json"),
                serde_json::to_string(&config),
            )
        }
        Runtime::CriO => {
            let mut labels = BTreeMap::new();
            pod_labels(&mut labels);
            if let Some(name) = container {
                labels.insert("io.kubernetes.container.name", name.to_owned());
            }
            let mut a = BTreeMap::new();
            a.insert(
                "io.kubernetes.cri-o.ContainerType",
                kind("container", "sandbox"),
            );
            a.insert("io.kubernetes.cri-o.ContainerID", id.to_owned());
            a.insert(
                "io.kubernetes.cri-o.Labels",
                serde_json::to_string(&labels).expect("labels encode"),
            );
            let config = OciConfig {
                oci_version: "1.0.2",
                process: None,
                annotations: a,
            };
            (
                root.join("var/lib/containers/storage/overlay-containers")
                    .join(id)
                    .join("userdata/config.json"),
                serde_json::to_string(&config),
            )
        }
        Runtime::Docker => {
            let mut labels = BTreeMap::new();
            labels.insert("io.kubernetes.docker.type", kind("container", "podsandbox"));
            pod_labels(&mut labels);
            labels.insert(
                "io.kubernetes.container.name",
                container.unwrap_or("POD").to_owned(),
            );
            let config = DockerConfig {
                id,
                config: DockerLabels { labels },
            };
            (
                root.join("var/lib/docker/containers")
                    .join(id)
                    .join("config.v2.json"),
                serde_json::to_string(&config),
            )
        }
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
    }
    write(&path, &body.expect("state file encodes"));
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}
