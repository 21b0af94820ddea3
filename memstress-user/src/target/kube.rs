//! Kubernetes pods and containers as a node's cgroup tree shows them: `--pod UID` and
//! `--container ID` resolved to a memory cgroup without any cluster API.
//!
//! The kubelet and the container runtimes lay the tree out in two shapes (the kubelet's
//! `--cgroup-driver`), the same on cgroup v1 (under the memory controller's own tree) and v2:
//!
//! * systemd: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice/<runtime>-<id>.scope`,
//!   with the UID's dashes turned into underscores (a dash means nesting to systemd) and the
//!   runtime prefix `cri-containerd`, `crio` or `docker`;
//! * cgroupfs: `kubepods/<qos>/pod<uid>/<id>` (`crio-<id>` for CRI-O).
//!
//! Guaranteed pods sit directly under `kubepods` (`kubepods-pod<uid>.slice`). The `kubepods`
//! cgroup itself may sit below a prefix (kind's `kubelet.slice/kubelet-kubepods.slice`, a
//! node in a container): it is looked for up to three levels down. CRI-O's `crio-conmon-<id>`
//! cgroups hold its monitor, not the container, and are skipped.
//!
//! A cgroup tree holds ids only. Container *names* (and pod names) come from the runtimes'
//! own state files on the node, read as plain files (see [`RuntimeState`]): containerd's OCI
//! bundle `config.json` annotations, CRI-O's container `config.json` annotations, Docker's
//! `config.v2.json` labels. Where none is readable, ids work and names are refused, saying so.

use std::{
    collections::BTreeMap,
    fmt, fs,
    io::Read as _,
    path::{Path, PathBuf},
};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::target::cgroup::{Cgroup, CgroupError, Hierarchy, Version};

/// The shortest id or UID prefix accepted (as git's shortest abbreviation): long enough not
/// to match by accident on a busy node, short enough to type. Longer is fine; ambiguity is
/// refused with the candidates listed.
pub const MIN_PREFIX: usize = 4;

/// How deep below the hierarchy's root a `kubepods` cgroup is looked for.
const KUBEPODS_DEPTH: usize = 3;

/// A pod's QoS class, as Kubernetes names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Qos {
    /// Limits equal requests: the pod sits directly under `kubepods`.
    Guaranteed,
    /// Some request or limit.
    Burstable,
    /// Neither.
    BestEffort,
}

/// The kubelet's cgroup driver, recognised from the tree's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// `kubepods.slice/…/…-pod<uid>.slice/<runtime>-<id>.scope`.
    Systemd,
    /// `kubepods/<qos>/pod<uid>/<id>`.
    Cgroupfs,
}

/// A container runtime, recognised from a cgroup name or from its state files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Runtime {
    /// containerd's CRI plugin (`cri-containerd-<id>.scope`).
    #[serde(rename = "containerd")]
    Containerd,
    /// CRI-O (`crio-<id>`).
    #[serde(rename = "cri-o")]
    CriO,
    /// Docker through cri-dockerd or dockershim (`docker-<id>.scope`).
    #[serde(rename = "docker")]
    Docker,
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Docker => "docker",
        })
    }
}

/// What a runtime's state files say about a container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Meta {
    /// The container's name in its pod (`spec.containers[].name`).
    pub name: Option<String>,
    /// The pod's name.
    pub pod_name: Option<String>,
    /// The pod's namespace.
    pub namespace: Option<String>,
    /// The pod's UID.
    pub pod_uid: Option<String>,
    /// The pod's sandbox ("pause") container rather than one of its containers.
    pub sandbox: bool,
    /// The file this was read from.
    pub source: PathBuf,
    /// The runtime that wrote it.
    pub runtime: Option<Runtime>,
}

/// A container's cgroup.
#[derive(Clone, Debug)]
pub struct Container {
    /// Its id (64 hex digits as runtimes make them; whatever the cgroup name holds).
    pub id: String,
    /// The runtime, from the cgroup name (systemd driver, CRI-O) or its state files.
    pub runtime: Option<Runtime>,
    /// Its memory cgroup.
    pub cgroup: Cgroup,
    /// What the runtime's state files say (after [`Node::with_meta`]).
    pub meta: Option<Meta>,
}

impl Container {
    /// Its name, if the runtime's state files gave one.
    pub fn name(&self) -> Option<&str> {
        self.meta.as_ref().and_then(|m| m.name.as_deref())
    }

    /// Whether it is the pod's sandbox (known only from state files).
    pub fn is_sandbox(&self) -> bool {
        self.meta.as_ref().is_some_and(|m| m.sandbox)
    }

    fn describe(&self) -> String {
        let short = &self.id[..self.id.len().min(12)];
        let mut facts = Vec::new();
        if self.is_sandbox() {
            facts.push("sandbox".to_owned());
        } else if let Some(name) = self.name() {
            facts.push(format!("name {name}"));
        }
        if let Some(r) = self.runtime {
            facts.push(r.to_string());
        }
        if facts.is_empty() {
            short.to_owned()
        } else {
            format!("{short} ({})", facts.join(", "))
        }
    }
}

/// A pod's cgroup and its containers'.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Its UID, with dashes.
    pub uid: String,
    /// Its QoS class.
    pub qos: Qos,
    /// The cgroup driver that laid it out.
    pub driver: Driver,
    /// Its memory cgroup.
    pub cgroup: Cgroup,
    /// Its containers' cgroups (the sandbox's included, where the runtime gives it one).
    pub containers: Vec<Container>,
}

impl Pod {
    fn describe(&self) -> String {
        let named = self
            .containers
            .iter()
            .find_map(|c| c.meta.as_ref().and_then(|m| m.pod_name.clone()));
        match named {
            Some(name) => format!("{} ({name}, {:?})", self.uid, self.qos),
            None => format!("{} ({:?})", self.uid, self.qos),
        }
    }

    /// Its name and namespace, if a runtime's state files gave them.
    pub fn name(&self) -> Option<(&str, &str)> {
        self.containers.iter().find_map(|c| {
            let m = c.meta.as_ref()?;
            Some((m.namespace.as_deref()?, m.pod_name.as_deref()?))
        })
    }
}

/// Why a pod or container target was refused. Each names the input and what was found.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(
        "no Kubernetes pods under {0}: no `kubepods` or `kubepods.slice` cgroup within {KUBEPODS_DEPTH} levels (is this a Kubernetes node, and is --cgroup-root right?)"
    )]
    NoKubepods(String),
    #[error(
        "--pod `{0}` is not a pod UID: give metadata.uid (hex digits and dashes, e.g. 7c9e6679-7425-40de-944b-e07fc1f90ae7), at least {MIN_PREFIX} characters of it"
    )]
    BadPodUid(String),
    #[error("no pod `{uid}` on this node; pods found: {found}")]
    PodNotFound { uid: String, found: String },
    #[error("--pod `{uid}` matches {count} pods: {found}; give more of the UID")]
    PodAmbiguous {
        uid: String,
        count: usize,
        found: String,
    },
    #[error(
        "--container `{0}` is not a container id: give its id (hex, at least {MIN_PREFIX} digits; `containerd://…` as the pod's status shows it is accepted), or a container name together with --pod (names are unique only within a pod)"
    )]
    BadContainer(String),
    #[error("no container `{what}`{scope}; containers found: {found}")]
    ContainerNotFound {
        what: String,
        scope: String,
        found: String,
    },
    #[error("--container `{what}` matches {count} containers{scope}: {found}; give more of the id")]
    ContainerAmbiguous {
        what: String,
        scope: String,
        count: usize,
        found: String,
    },
    #[error(
        "container name `{name}` in pod {pod} needs the runtime's state files, and none was readable for this pod's containers (looked under {root} for containerd's, CRI-O's and Docker's); give the container id instead: {found}"
    )]
    NameWithoutState {
        name: String,
        pod: String,
        root: String,
        found: String,
    },
    #[error(
        "no container `{what}` on this node: not in a Kubernetes pod ({kube}), and no Docker or containerd container has that id or name (read under {root}; found: {found})"
    )]
    NoContainer {
        what: String,
        kube: String,
        root: String,
        found: String,
    },
    #[error("container `{what}` ({runtime}) is not running: it has no processes to stress")]
    NotRunning { what: String, runtime: String },
    #[error(
        "on cgroup v2 the cgroup of pod {pod} cannot hold processes of its own (only its containers' cgroups can): add --container NAME|ID; containers: {found}"
    )]
    PodNeedsContainer { pod: String, found: String },
}

/// Where the container runtimes keep their state: `/` on a node (or the root of a copy of
/// one, for tests), and the state directories within it.
///
/// Read, by container id, in this order:
/// * containerd (default state directories `/run/containerd`, and k3s's
///   `/run/k3s/containerd`): `<state>/io.containerd.runtime.v2.task/<namespace>/<id>/config.json`
///   (`io.containerd.runtime.v1.linux` for the old shim), namespace `k8s.io` (the CRI
///   plugin's) first, then every other (`moby` is Docker's, `default` is `ctr`'s): OCI
///   annotations `io.kubernetes.cri.container-name`, `…sandbox-name`, `…sandbox-namespace`,
///   `…sandbox-uid`, `…container-type`;
/// * CRI-O: `run/containers/storage/overlay-containers/<id>/userdata/config.json`, then
///   `var/lib/containers/storage/…` (the same path in the graph root): the kubelet's labels
///   in the `io.kubernetes.cri-o.Labels` annotation, `io.kubernetes.cri-o.ContainerType`;
/// * Docker (default data root `/var/lib/docker`): `<data-root>/containers/<id>/config.v2.json`:
///   `Config.Labels` `io.kubernetes.container.name`, `io.kubernetes.pod.*`,
///   `io.kubernetes.docker.type` in a pod; the container's `Name` otherwise;
/// * a containerd bundle without the CRI's annotations (a `ctr run` container): the
///   runtime and id only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeState {
    /// The root the paths above are under.
    pub root: PathBuf,
    /// State directories given with `--runtime-state RUNTIME=DIR` (node paths, read under
    /// `root`), looked at before the defaults.
    pub extra: Vec<(Runtime, PathBuf)>,
}

/// A state file bigger than this is not a runtime's (OCI configs are tens of KiB).
const MAX_STATE_FILE: u64 = 4 << 20;

/// containerd's per-task bundle directories, under its state directory.
const CONTAINERD_SHIMS: [&str; 2] = [
    "io.containerd.runtime.v2.task",
    "io.containerd.runtime.v1.linux",
];

/// The CRI plugin's containerd namespace.
const CRI_NAMESPACE: &str = "k8s.io";

impl Default for RuntimeState {
    fn default() -> Self {
        Self::new("/")
    }
}

/// A container a runtime's state files describe, found without its cgroup (Docker's and
/// containerd's own containers, outside any pod).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Its id.
    pub id: String,
    /// What the state files say.
    pub meta: Meta,
    /// Its init process, while it runs (`None`: stopped, or not recorded).
    pub pid: Option<u32>,
}

impl RuntimeState {
    /// State files under `root`, in the default places.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            extra: Vec::new(),
        }
    }

    /// Also reads `runtime`'s state from `dir` (a node path), before the defaults.
    pub fn with_dir(mut self, runtime: Runtime, dir: impl Into<PathBuf>) -> Self {
        self.extra.push((runtime, dir.into()));
        self
    }

    /// `dir` (a node path) under the root.
    fn under_root(&self, dir: &Path) -> PathBuf {
        self.root.join(dir.strip_prefix("/").unwrap_or(dir))
    }

    /// Where `runtime` keeps its state: the given directories, then the defaults.
    pub fn dirs(&self, runtime: Runtime) -> Vec<PathBuf> {
        let defaults: &[&str] = match runtime {
            Runtime::Containerd => &["run/containerd", "run/k3s/containerd"],
            Runtime::CriO => &["run/containers/storage", "var/lib/containers/storage"],
            Runtime::Docker => &["var/lib/docker"],
        };
        self.extra
            .iter()
            .filter(|(r, _)| *r == runtime)
            .map(|(_, dir)| self.under_root(dir))
            .chain(defaults.iter().map(|d| self.root.join(d)))
            .collect()
    }

    /// containerd's namespace directories under each state directory, `k8s.io` first.
    fn containerd_namespaces(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for state in self.dirs(Runtime::Containerd) {
            for shim in CONTAINERD_SHIMS {
                let base = state.join(shim);
                let mut names: Vec<String> = fs::read_dir(&base)
                    .map(|entries| {
                        entries
                            .filter_map(|e| e.ok()?.file_name().into_string().ok())
                            .filter(|n| n != CRI_NAMESPACE)
                            .collect()
                    })
                    .unwrap_or_default();
                names.sort();
                found.push(base.join(CRI_NAMESPACE));
                found.extend(names.into_iter().map(|n| base.join(n)));
            }
        }
        found
    }

    /// The state files that may describe container `id`, with their runtime.
    pub fn paths(&self, id: &str) -> Vec<(Runtime, PathBuf)> {
        let mut paths: Vec<(Runtime, PathBuf)> = self
            .containerd_namespaces()
            .into_iter()
            .map(|ns| (Runtime::Containerd, ns.join(id).join("config.json")))
            .collect();
        paths.extend(self.dirs(Runtime::CriO).into_iter().map(|dir| {
            (
                Runtime::CriO,
                dir.join("overlay-containers")
                    .join(id)
                    .join("userdata/config.json"),
            )
        }));
        paths.extend(self.dirs(Runtime::Docker).into_iter().map(|dir| {
            (
                Runtime::Docker,
                dir.join("containers").join(id).join("config.v2.json"),
            )
        }));
        paths
    }

    /// What the runtime's state files say about container `id` (`None`: nothing readable).
    /// A runtime's own description (the CRI's annotations, CRI-O's labels, Docker's config)
    /// wins over a bare containerd bundle (Docker's containers have one too, in `moby`).
    pub fn lookup(&self, id: &str) -> Option<Meta> {
        // An id is a file name here: nothing that could climb out of the state directories.
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return None;
        }
        let mut bare = None;
        for (runtime, path) in self.paths(id) {
            let Some(json) = read_json(&path) else {
                continue;
            };
            let meta = match runtime {
                Runtime::Containerd => match from_containerd(&json) {
                    Some(meta) => Some(meta),
                    None => {
                        if bare.is_none() {
                            bare = Some(Meta {
                                source: path.clone(),
                                runtime: Some(runtime),
                                ..Meta::default()
                            });
                        }
                        None
                    }
                },
                Runtime::CriO => from_crio(&json),
                Runtime::Docker => from_docker(&json),
            };
            if let Some(mut meta) = meta {
                meta.source = path;
                meta.runtime = Some(runtime);
                return Some(meta);
            }
        }
        bare
    }

    /// The init process of container `id` while it runs, as its runtime recorded it, and the
    /// file that says so: containerd's `<state>/io.containerd.runtime.v2.task/<ns>/<id>/init.pid`,
    /// CRI-O's `userdata/pidfile`, Docker's `State.Pid` in `config.v2.json` (while `Running`).
    /// Unchecked: the caller makes sure the pid is still the container's.
    pub fn init_pid(&self, id: &str) -> Option<(u32, PathBuf)> {
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return None;
        }
        let pid_in = |path: PathBuf| {
            let pid = fs::read_to_string(&path)
                .ok()?
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|&p| p > 0)?;
            Some((pid, path))
        };
        for (runtime, path) in self.paths(id) {
            let found = match runtime {
                Runtime::Containerd => path.parent().and_then(|b| pid_in(b.join("init.pid"))),
                Runtime::CriO => path.parent().and_then(|u| pid_in(u.join("pidfile"))),
                Runtime::Docker => read_json(&path).and_then(|json| {
                    let state = &json["State"];
                    let pid = (state["Running"].as_bool() == Some(true))
                        .then(|| state["Pid"].as_u64())
                        .flatten()
                        .and_then(|p| u32::try_from(p).ok())
                        .filter(|&p| p > 0)?;
                    Some((pid, path.clone()))
                }),
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// Every container Docker's and containerd's state files describe (CRI-O's run only in
    /// pods, which the cgroup tree finds), each once, Docker's first.
    pub fn list(&self) -> Vec<Listed> {
        let mut found: Vec<Listed> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for dir in self.dirs(Runtime::Docker) {
            for (id, entry) in id_dirs(&dir.join("containers")) {
                let Some(json) = read_json(&entry.join("config.v2.json")) else {
                    continue;
                };
                let Some(mut meta) = from_docker(&json) else {
                    continue;
                };
                meta.source = entry.join("config.v2.json");
                meta.runtime = Some(Runtime::Docker);
                let state = &json["State"];
                let pid = (state["Running"].as_bool() == Some(true))
                    .then(|| state["Pid"].as_u64())
                    .flatten()
                    .and_then(|p| u32::try_from(p).ok())
                    .filter(|&p| p > 0);
                if seen.insert(id.clone()) {
                    found.push(Listed { id, meta, pid });
                }
            }
        }
        for ns in self.containerd_namespaces() {
            for (id, entry) in id_dirs(&ns) {
                if seen.contains(&id) {
                    continue;
                }
                let Some(meta) = self.lookup(&id) else {
                    continue;
                };
                let pid = fs::read_to_string(entry.join("init.pid"))
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .filter(|&p: &u32| p > 0);
                seen.insert(id.clone());
                found.push(Listed { id, meta, pid });
            }
        }
        found
    }
}

/// Subdirectories of `dir` named like a container id.
fn id_dirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let e = e.ok()?;
                    let name = e.file_name().into_string().ok()?;
                    (!name.starts_with('.') && e.path().is_dir()).then(|| (name, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    let file = fs::File::open(path).ok()?;
    let mut text = String::new();
    file.take(MAX_STATE_FILE).read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

fn string_map(value: &serde_json::Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn from_containerd(json: &serde_json::Value) -> Option<Meta> {
    let a = string_map(&json["annotations"]);
    let kind = a.get("io.kubernetes.cri.container-type")?;
    Some(Meta {
        name: a.get("io.kubernetes.cri.container-name").cloned(),
        pod_name: a.get("io.kubernetes.cri.sandbox-name").cloned(),
        namespace: a.get("io.kubernetes.cri.sandbox-namespace").cloned(),
        pod_uid: a.get("io.kubernetes.cri.sandbox-uid").cloned(),
        sandbox: kind == "sandbox",
        ..Meta::default()
    })
}

fn from_labels(labels: &BTreeMap<String, String>, sandbox: bool) -> Meta {
    Meta {
        name: labels
            .get("io.kubernetes.container.name")
            .filter(|_| !sandbox)
            .cloned(),
        pod_name: labels.get("io.kubernetes.pod.name").cloned(),
        namespace: labels.get("io.kubernetes.pod.namespace").cloned(),
        pod_uid: labels.get("io.kubernetes.pod.uid").cloned(),
        sandbox,
        ..Meta::default()
    }
}

fn from_crio(json: &serde_json::Value) -> Option<Meta> {
    let a = string_map(&json["annotations"]);
    let kind = a.get("io.kubernetes.cri-o.ContainerType")?;
    let labels: BTreeMap<String, String> = a
        .get("io.kubernetes.cri-o.Labels")
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    Some(from_labels(&labels, kind == "sandbox"))
}

fn from_docker(json: &serde_json::Value) -> Option<Meta> {
    let labels = string_map(&json["Config"]["Labels"]);
    if let Some(kind) = labels.get("io.kubernetes.docker.type") {
        return Some(from_labels(&labels, kind == "podsandbox"));
    }
    // A container of Docker's own: its name (`/web`, as the API keeps it).
    let name = json["Name"].as_str()?.trim_start_matches('/');
    Some(Meta {
        name: (!name.is_empty()).then(|| name.to_owned()),
        ..Meta::default()
    })
}

/// The pods on a node, from its cgroup tree.
#[derive(Clone, Debug)]
pub struct Node {
    /// Every pod found, in tree order.
    pub pods: Vec<Pod>,
    /// The hierarchy they were found on.
    pub hierarchy: Hierarchy,
}

/// `7c9e6679_7425_…` or `pod7c9e…` as typed or as a cgroup name holds it -> lowercase, dashes.
fn normalize_uid(uid: &str) -> String {
    uid.trim()
        .trim_start_matches("pod")
        .to_ascii_lowercase()
        .replace('_', "-")
}

fn is_uid(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// `containerd://<id>` (as a pod's status shows it) or an id -> lowercase id, if it is one.
fn normalize_id(input: &str) -> Option<String> {
    let s = input.trim();
    let s = s.split_once("://").map_or(s, |(_, id)| id);
    let s = s.to_ascii_lowercase();
    (!s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit())).then_some(s)
}

pub(crate) fn is_kubepods(name: &str) -> Option<Driver> {
    if name == "kubepods" {
        Some(Driver::Cgroupfs)
    } else if name == "kubepods.slice" || name.ends_with("-kubepods.slice") {
        Some(Driver::Systemd)
    } else {
        None
    }
}

/// A QoS cgroup's class (`burstable`, `kubepods-besteffort.slice`, …).
pub(crate) fn qos_dir(name: &str, driver: Driver) -> Option<Qos> {
    let base = match driver {
        Driver::Cgroupfs => name,
        Driver::Systemd => name.strip_suffix(".slice")?.rsplit('-').next()?,
    };
    match base {
        "burstable" => Some(Qos::Burstable),
        "besteffort" => Some(Qos::BestEffort),
        _ => None,
    }
}

/// A pod cgroup's UID (`pod<uid>`, `kubepods-burstable-pod<uid_>.slice`).
pub(crate) fn pod_dir(name: &str, driver: Driver) -> Option<String> {
    let base = match driver {
        Driver::Cgroupfs => name,
        Driver::Systemd => name.strip_suffix(".slice")?.rsplit('-').next()?,
    };
    let uid = base.strip_prefix("pod")?;
    let uid = normalize_uid(uid);
    is_uid(&uid).then_some(uid)
}

/// A container cgroup's id and runtime (`cri-containerd-<id>.scope`, `crio-<id>`, `<id>`);
/// `None` for anything else (CRI-O's `crio-conmon-<id>`, stray cgroups).
pub(crate) fn container_dir(name: &str) -> Option<(String, Option<Runtime>)> {
    let base = name.strip_suffix(".scope").unwrap_or(name);
    let (prefix, id) = match base.rsplit_once('-') {
        Some((prefix, id)) => (Some(prefix), id),
        None => (None, base),
    };
    let runtime = match prefix {
        None => None,
        Some("cri-containerd") => Some(Runtime::Containerd),
        Some("crio") => Some(Runtime::CriO),
        Some("docker") => Some(Runtime::Docker),
        Some(_) => return None,
    };
    // Runtime ids are 64 hex digits; shorter hex names are still taken (never a prefix).
    (id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| (id.to_ascii_lowercase(), runtime))
}

fn child_dirs(cgroup: &Cgroup) -> Vec<Cgroup> {
    let mut children = cgroup.children().unwrap_or_default();
    children.sort_by(|a, b| a.path.cmp(&b.path));
    children
}

impl Node {
    /// Scans `hierarchy` for pods and their containers (cgroup names only: no state files).
    pub fn scan(hierarchy: &Hierarchy) -> Result<Self, KubeError> {
        let root = hierarchy.root();
        if !root.dir.is_dir() {
            return Err(CgroupError::NotFound {
                path: "/".to_owned(),
                dir: root.dir.display().to_string(),
            }
            .into());
        }
        let mut roots = Vec::new();
        let mut level = vec![root.clone()];
        for _ in 0..KUBEPODS_DEPTH {
            let mut next = Vec::new();
            for cgroup in level {
                for child in child_dirs(&cgroup) {
                    let name = child.name().to_owned();
                    match is_kubepods(&name) {
                        Some(driver) => roots.push((child, driver)),
                        None => next.push(child),
                    }
                }
            }
            if !roots.is_empty() {
                break;
            }
            level = next;
        }
        if roots.is_empty() {
            return Err(KubeError::NoKubepods(root.dir.display().to_string()));
        }
        let mut pods = Vec::new();
        for (kubepods, driver) in roots {
            for child in child_dirs(&kubepods) {
                let name = child.name();
                if let Some(qos) = qos_dir(name, driver) {
                    for pod in child_dirs(&child) {
                        let name = pod.name();
                        if let Some(uid) = pod_dir(name, driver) {
                            pods.push(Self::read_pod(uid, qos, driver, pod));
                        }
                    }
                } else if let Some(uid) = pod_dir(name, driver) {
                    pods.push(Self::read_pod(uid, Qos::Guaranteed, driver, child));
                }
            }
        }
        Ok(Self {
            pods,
            hierarchy: hierarchy.clone(),
        })
    }

    fn read_pod(uid: String, qos: Qos, driver: Driver, cgroup: Cgroup) -> Pod {
        let containers = child_dirs(&cgroup)
            .into_iter()
            .filter_map(|c| {
                let name = c.name();
                let (id, runtime) = container_dir(name)?;
                // crun on cgroup v2 with the systemd driver puts the processes one level
                // down, in `<scope>/container`: that is the cgroup that can take more.
                let inner = c
                    .children()
                    .unwrap_or_default()
                    .into_iter()
                    .find(|g| g.path.ends_with("/container"));
                Some(Container {
                    id,
                    runtime,
                    cgroup: inner.unwrap_or(c),
                    meta: None,
                })
            })
            .collect();
        Pod {
            uid,
            qos,
            driver,
            cgroup,
            containers,
        }
    }

    /// Adds what the runtimes' state files say to every container.
    pub fn with_meta(mut self, state: &RuntimeState) -> Self {
        for pod in &mut self.pods {
            for c in &mut pod.containers {
                c.meta = state.lookup(&c.id);
                if c.runtime.is_none() {
                    c.runtime = c.meta.as_ref().and_then(|m| m.runtime);
                }
            }
        }
        self
    }

    fn list_pods<'a>(pods: impl Iterator<Item = &'a Pod>) -> String {
        list(pods.map(Pod::describe).collect())
    }

    /// The pod whose UID is `uid` or starts with it.
    pub fn pod(&self, uid: &str) -> Result<&Pod, KubeError> {
        let want = normalize_uid(uid);
        if want.len() < MIN_PREFIX || !is_uid(&want) {
            return Err(KubeError::BadPodUid(uid.to_owned()));
        }
        if let Some(exact) = self.pods.iter().find(|p| p.uid == want) {
            return Ok(exact);
        }
        let matches: Vec<&Pod> = self
            .pods
            .iter()
            .filter(|p| p.uid.starts_with(&want))
            .collect();
        match matches.len() {
            1 => Ok(matches[0]),
            0 => Err(KubeError::PodNotFound {
                uid: uid.to_owned(),
                found: Self::list_pods(self.pods.iter()),
            }),
            count => Err(KubeError::PodAmbiguous {
                uid: uid.to_owned(),
                count,
                found: Self::list_pods(matches.into_iter()),
            }),
        }
    }

    /// Pods whose namespace and name the runtimes' state files give as these.
    pub fn pods_named(&self, namespace: &str, name: &str) -> Vec<&Pod> {
        self.pods
            .iter()
            .filter(|p| p.name() == Some((namespace, name)))
            .collect()
    }

    /// The container `what` (an id or unique id prefix; with `pod`, also a name).
    pub fn container<'a>(
        &'a self,
        pod: Option<&'a Pod>,
        what: &str,
        state: &RuntimeState,
    ) -> Result<(&'a Pod, &'a Container), KubeError> {
        let all: Vec<(&Pod, &Container)> = match pod {
            Some(p) => p.containers.iter().map(|c| (p, c)).collect(),
            None => self
                .pods
                .iter()
                .flat_map(|p| p.containers.iter().map(move |c| (p, c)))
                .collect(),
        };
        let scope = pod.map_or_else(String::new, |p| format!(" in pod {}", p.uid));
        let found = || list(all.iter().map(|(_, c)| c.describe()).collect());
        let id = normalize_id(what);
        if let Some(id) = &id
            && id.len() >= MIN_PREFIX
        {
            let matches: Vec<_> = all
                .iter()
                .filter(|(_, c)| c.id.starts_with(id.as_str()))
                .copied()
                .collect();
            match matches.len() {
                1 => return Ok(matches[0]),
                0 => {}
                count => {
                    return Err(KubeError::ContainerAmbiguous {
                        what: what.to_owned(),
                        scope,
                        count,
                        found: list(matches.iter().map(|(_, c)| c.describe()).collect()),
                    });
                }
            }
        }
        let Some(pod) = pod else {
            return Err(if id.as_ref().is_some_and(|i| i.len() >= MIN_PREFIX) {
                KubeError::ContainerNotFound {
                    what: what.to_owned(),
                    scope,
                    found: found(),
                }
            } else {
                KubeError::BadContainer(what.to_owned())
            });
        };
        // A name: only the runtime's state files know it.
        let named: Vec<_> = all
            .iter()
            .filter(|(_, c)| !c.is_sandbox() && c.name() == Some(what))
            .copied()
            .collect();
        match named.len() {
            1 => Ok(named[0]),
            0 if pod.containers.iter().all(|c| c.meta.is_none()) => {
                Err(KubeError::NameWithoutState {
                    name: what.to_owned(),
                    pod: pod.uid.clone(),
                    root: state.root.display().to_string(),
                    found: found(),
                })
            }
            0 => Err(KubeError::ContainerNotFound {
                what: what.to_owned(),
                scope,
                found: found(),
            }),
            // Two cgroups of one name: a restart caught halfway; the newest is not knowable
            // from the tree, so say so.
            count => Err(KubeError::ContainerAmbiguous {
                what: what.to_owned(),
                scope,
                count,
                found: list(named.iter().map(|(_, c)| c.describe()).collect()),
            }),
        }
    }
}

/// Up to 8 items, then how many more.
fn list(items: Vec<String>) -> String {
    const SHOWN: usize = 8;
    if items.is_empty() {
        return "none".to_owned();
    }
    let more = items.len().saturating_sub(SHOWN);
    let mut text = items.into_iter().take(SHOWN).collect::<Vec<_>>().join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

/// Who a pod or container target is, as the plan reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Identity {
    /// The pod's UID.
    pub pod_uid: String,
    /// Its QoS class.
    pub qos: Qos,
    /// The kubelet's cgroup driver, from the tree's shape.
    pub driver: Driver,
    /// The pod's namespace and name (from a runtime's state files; `null`: none readable).
    pub namespace: Option<String>,
    /// See `namespace`.
    pub pod_name: Option<String>,
    /// The container's id (`null`: the target is the pod's cgroup).
    pub container_id: Option<String>,
    /// The container's name (from a runtime's state files).
    pub container_name: Option<String>,
    /// The container runtime.
    pub runtime: Option<Runtime>,
    /// The state file the names were read from.
    pub names_from: Option<String>,
}

/// A resolved pod or container target.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The cgroup to stress.
    pub cgroup: Cgroup,
    /// Who it is.
    pub identity: Identity,
}

/// Resolves `--pod`/`--container` on `hierarchy`.
pub fn resolve(
    hierarchy: &Hierarchy,
    state: &RuntimeState,
    pod: Option<&str>,
    container: Option<&str>,
) -> Result<Resolved, KubeError> {
    let node = Node::scan(hierarchy)?.with_meta(state);
    let pod = pod.map(|uid| node.pod(uid)).transpose()?;
    let (pod, container) = match container {
        Some(what) => {
            let (p, c) = node.container(pod, what, state)?;
            (p, Some(c))
        }
        None => (pod.expect("a pod or a container"), None),
    };
    resolved(hierarchy, pod, container)
}

/// The target for `pod` (and `container`), with the v2 rule checked.
pub fn resolved(
    hierarchy: &Hierarchy,
    pod: &Pod,
    container: Option<&Container>,
) -> Result<Resolved, KubeError> {
    if container.is_none() && hierarchy.version == Version::V2 {
        return Err(KubeError::PodNeedsContainer {
            pod: pod.uid.clone(),
            found: list(pod.containers.iter().map(Container::describe).collect()),
        });
    }
    let meta = container
        .and_then(|c| c.meta.as_ref())
        .or_else(|| pod.containers.iter().find_map(|c| c.meta.as_ref()));
    Ok(Resolved {
        cgroup: container.map_or_else(|| pod.cgroup.clone(), |c| c.cgroup.clone()),
        identity: Identity {
            pod_uid: pod.uid.clone(),
            qos: pod.qos,
            driver: pod.driver,
            namespace: meta.and_then(|m| m.namespace.clone()),
            pod_name: meta.and_then(|m| m.pod_name.clone()),
            container_id: container.map(|c| c.id.clone()),
            container_name: container.and_then(|c| c.name().map(str::to_owned)),
            runtime: container.and_then(|c| c.runtime),
            names_from: meta.map(|m| m.source.display().to_string()),
        },
    })
}

/// After the target's cgroup disappeared (`--follow`): the container that replaced it.
///
/// The same pod (by UID) must be back or still there. A pod target is followed when its
/// cgroup exists again. A container is followed to the one of the same name (runtime state
/// files); without names, to the one container cgroup in the pod that was not there before
/// (`known`: the ids seen so far). `Ok(None)`: not (yet) there; an error when the choice is
/// not clear.
pub fn follow(
    hierarchy: &Hierarchy,
    state: &RuntimeState,
    was: &Identity,
    known: &[String],
) -> Result<Option<Resolved>, KubeError> {
    let node = match Node::scan(hierarchy) {
        Ok(node) => node,
        Err(KubeError::NoKubepods(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(mut pod) = node.pods.into_iter().find(|p| p.uid == was.pod_uid) else {
        return Ok(None);
    };
    // Only this pod's state files: this runs every 250 ms while the target is gone.
    for c in &mut pod.containers {
        c.meta = state.lookup(&c.id);
        if c.runtime.is_none() {
            c.runtime = c.meta.as_ref().and_then(|m| m.runtime);
        }
    }
    let pod = &pod;
    let Some(old_id) = &was.container_id else {
        return resolved(hierarchy, pod, None).map(Some);
    };
    let fresh: Vec<&Container> = pod
        .containers
        .iter()
        .filter(|c| &c.id != old_id && !c.is_sandbox())
        .collect();
    let candidates: Vec<&Container> = match &was.container_name {
        Some(name) => fresh
            .into_iter()
            .filter(|c| c.name() == Some(name.as_str()))
            .collect(),
        None => fresh
            .into_iter()
            .filter(|c| !known.contains(&c.id))
            .collect(),
    };
    match candidates.len() {
        0 => Ok(None),
        1 => resolved(hierarchy, pod, Some(candidates[0])).map(Some),
        count => Err(KubeError::ContainerAmbiguous {
            what: was.container_name.clone().unwrap_or_else(|| old_id.clone()),
            scope: format!(" (new in pod {})", pod.uid),
            count,
            found: list(candidates.iter().map(|c| c.describe()).collect()),
        }),
    }
}

/// `--container ID|NAME` outside any pod: one of Docker's or containerd's own containers, by
/// id, unique id prefix (at least [`MIN_PREFIX`] hex digits) or name, and its memory cgroup
/// (its init process's). `Ok(None)`: no such container (the caller says what else was
/// looked for).
pub fn plain_container(
    hierarchy: &Hierarchy,
    state: &RuntimeState,
    what: &str,
) -> Result<Option<(Cgroup, Listed)>, KubeError> {
    let all: Vec<Listed> = state
        .list()
        .into_iter()
        .filter(|c| c.meta.pod_uid.is_none())
        .collect();
    let name = what.trim().trim_start_matches('/');
    let id = normalize_id(what).filter(|id| id.len() >= MIN_PREFIX);
    let mut matches: Vec<&Listed> = all
        .iter()
        .filter(|c| c.meta.name.as_deref() == Some(name))
        .collect();
    if matches.is_empty()
        && let Some(id) = &id
    {
        matches = all
            .iter()
            .filter(|c| c.id.starts_with(id.as_str()))
            .collect();
    }
    match matches.len() {
        0 => Ok(None),
        1 => {
            let found = matches[0];
            let Some(pid) = found.pid else {
                return Err(KubeError::NotRunning {
                    what: what.to_owned(),
                    runtime: found
                        .meta
                        .runtime
                        .map_or_else(|| "unknown runtime".to_owned(), |r| r.to_string()),
                });
            };
            let cgroup = Cgroup::of_pid(hierarchy, pid)?;
            Ok(Some((cgroup, found.clone())))
        }
        count => Err(KubeError::ContainerAmbiguous {
            what: what.to_owned(),
            scope: String::new(),
            count,
            found: list(matches.iter().map(|c| describe_listed(c)).collect()),
        }),
    }
}

/// The containers [`plain_container`] chooses among, for an error message.
pub fn plain_containers(state: &RuntimeState) -> String {
    list(
        state
            .list()
            .into_iter()
            .filter(|c| c.meta.pod_uid.is_none())
            .map(|c| describe_listed(&c))
            .collect(),
    )
}

fn describe_listed(c: &Listed) -> String {
    let short = &c.id[..c.id.len().min(12)];
    match (&c.meta.name, c.meta.runtime) {
        (Some(n), _) => format!("{short} ({n})"),
        (None, Some(r)) => format!("{short} ({r})"),
        (None, None) => short.to_owned(),
    }
}

/// Every container id in the pod with UID `uid` now (for [`follow`]).
pub fn container_ids(hierarchy: &Hierarchy, uid: &str) -> Vec<String> {
    Node::scan(hierarchy)
        .map(|n| {
            n.pods
                .into_iter()
                .filter(|p| p.uid == uid)
                .flat_map(|p| p.containers.into_iter().map(|c| c.id))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cgroup_names() {
        assert_eq!(
            pod_dir(
                "kubepods-burstable-pod7c9e6679_7425_40de_944b_e07fc1f90ae7.slice",
                Driver::Systemd
            )
            .as_deref(),
            Some("7c9e6679-7425-40de-944b-e07fc1f90ae7")
        );
        assert_eq!(
            pod_dir("kubepods-podabc123.slice", Driver::Systemd).as_deref(),
            Some("abc123")
        );
        assert_eq!(pod_dir("burstable", Driver::Cgroupfs), None);
        assert_eq!(
            qos_dir("kubepods-besteffort.slice", Driver::Systemd),
            Some(Qos::BestEffort)
        );
        assert_eq!(
            qos_dir("kubelet-kubepods-burstable.slice", Driver::Systemd),
            Some(Qos::Burstable)
        );
        let id = "a".repeat(64);
        assert_eq!(
            container_dir(&format!("cri-containerd-{id}.scope")),
            Some((id.clone(), Some(Runtime::Containerd)))
        );
        assert_eq!(
            container_dir(&format!("crio-{id}")),
            Some((id.clone(), Some(Runtime::CriO)))
        );
        assert_eq!(container_dir(&format!("crio-conmon-{id}.scope")), None);
        assert_eq!(container_dir(&id), Some((id.clone(), None)));
        assert_eq!(container_dir("init.scope"), None);
        assert_eq!(
            normalize_id(&format!("containerd://{}", id.to_uppercase())),
            Some(id)
        );
        assert_eq!(normalize_id("app"), None);
        assert_eq!(is_kubepods("kubelet-kubepods.slice"), Some(Driver::Systemd));
    }

    #[test]
    fn lists_briefly() {
        assert_eq!(list(vec![]), "none");
        let many: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        assert_eq!(list(many), "0, 1, 2, 3, 4, 5, 6, 7 and 2 more");
    }
}

/// Every resolver shape, against fixture trees built the way the kubelet and the runtimes
/// lay them out.
#[cfg(test)]
mod shapes {
    use super::*;
    use crate::target::fixture::{self, Tree, container_id};

    const UID: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
    const MIB: u64 = 1 << 20;

    struct Built {
        tree: Tree,
        app: String,
        sandbox: String,
        pod_path: String,
        app_path: String,
    }

    fn build(version: Version, driver: Driver, runtime: Runtime, qos: Qos, names: bool) -> Built {
        let tree = Tree::new(version);
        // A neighbour pod, so that nothing resolves by being alone.
        let other = tree.pod(
            driver,
            Qos::BestEffort,
            "0a1b2c3d-0000-4000-8000-000000000001",
            None,
        );
        tree.container(&other, driver, runtime, &container_id(9), None, 0);
        let pod_path = tree.pod(driver, qos, UID, Some(512 * MIB));
        let sandbox = container_id(1);
        let app = container_id(2);
        tree.container(&pod_path, driver, runtime, &sandbox, None, MIB);
        let app_path = tree.container(&pod_path, driver, runtime, &app, Some(256 * MIB), 40 * MIB);
        if names {
            tree.state(runtime, &sandbox, UID, "shop", "web-0", None);
            tree.state(runtime, &app, UID, "shop", "web-0", Some("app"));
        }
        Built {
            tree,
            app,
            sandbox,
            pod_path,
            app_path,
        }
    }

    #[test]
    fn every_driver_version_runtime_and_qos() {
        for version in [Version::V1, Version::V2] {
            for driver in [Driver::Systemd, Driver::Cgroupfs] {
                for runtime in [Runtime::Containerd, Runtime::CriO, Runtime::Docker] {
                    for qos in [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort] {
                        let b = build(version, driver, runtime, qos, true);
                        let h = b.tree.hierarchy();
                        assert_eq!(h.version, version);
                        let state = RuntimeState::new(b.tree.state_root());
                        let what = format!("{version:?} {driver:?} {runtime} {qos:?}");
                        // --container with a full id, a prefix, and as the pod status shows it.
                        for given in [
                            b.app.clone(),
                            b.app[..4].to_owned(),
                            format!("{runtime}://{}", b.app),
                        ] {
                            let r = resolve(&h, &state, None, Some(&given))
                                .unwrap_or_else(|e| panic!("{what} --container {given}: {e}"));
                            assert_eq!(r.cgroup.path, b.app_path, "{what}");
                            assert_eq!(r.identity.pod_uid, UID, "{what}");
                            assert_eq!(r.identity.qos, qos, "{what}");
                            assert_eq!(r.identity.driver, driver, "{what}");
                            assert_eq!(r.identity.runtime, Some(runtime), "{what}");
                            assert_eq!(r.identity.container_name.as_deref(), Some("app"));
                            assert_eq!(r.identity.pod_name.as_deref(), Some("web-0"));
                            assert_eq!(r.identity.namespace.as_deref(), Some("shop"));
                        }
                        // --pod (with dashes, underscores, a prefix) and a container name.
                        for pod in [UID.to_owned(), UID.replace('-', "_"), UID[..8].to_owned()] {
                            let r =
                                resolve(&h, &state, Some(&pod), Some("app")).unwrap_or_else(|e| {
                                    panic!("{what} --pod {pod} --container app: {e}")
                                });
                            assert_eq!(r.cgroup.path, b.app_path, "{what}");
                            assert_eq!(r.identity.container_id.as_deref(), Some(b.app.as_str()));
                        }
                        // --pod alone: the pod's cgroup on v1; refused on v2, listing containers.
                        match (version, resolve(&h, &state, Some(UID), None)) {
                            (Version::V1, Ok(r)) => {
                                assert_eq!(r.cgroup.path, b.pod_path, "{what}");
                                assert!(r.cgroup.effective_limit().unwrap().is_some());
                            }
                            (Version::V2, Err(e @ KubeError::PodNeedsContainer { .. })) => {
                                let e = e.to_string();
                                assert!(e.contains("--container") && e.contains("name app"), "{e}");
                                assert!(e.contains("sandbox"), "{e}");
                            }
                            (_, other) => panic!("{what} --pod alone: {other:?}"),
                        }
                        // The sandbox is not a container name.
                        let e = resolve(&h, &state, Some(UID), Some("POD")).unwrap_err();
                        assert!(
                            matches!(e, KubeError::ContainerNotFound { .. }),
                            "{what}: {e}"
                        );
                        // The sandbox can still be named by id.
                        let r = resolve(&h, &state, None, Some(&b.sandbox)).unwrap();
                        assert!(
                            r.cgroup
                                .path
                                .ends_with(&fixture::container_name(driver, runtime, &b.sandbox))
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn names_need_the_runtime_state_and_ids_do_not() {
        let b = build(
            Version::V1,
            Driver::Systemd,
            Runtime::Containerd,
            Qos::Burstable,
            false,
        );
        let h = b.tree.hierarchy();
        let state = RuntimeState::new(b.tree.state_root());
        let e = resolve(&h, &state, Some(UID), Some("app"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`app`") && e.contains("state files"), "{e}");
        assert!(e.contains(&b.app[..12]), "the ids are listed: {e}");
        assert!(!e.contains('\n'));
        let r = resolve(&h, &state, Some(UID), Some(&b.app[..6])).unwrap();
        assert_eq!(r.cgroup.path, b.app_path);
        assert_eq!(r.identity.container_name, None);
        // Without --pod, a name is not taken for an id.
        let e = resolve(&h, &state, None, Some("app")).unwrap_err();
        assert!(matches!(e, KubeError::BadContainer(_)), "{e}");
    }

    #[test]
    fn ambiguous_missing_and_short_inputs_list_what_was_found() {
        let tree = Tree::new(Version::V2);
        let pod = tree.pod(Driver::Systemd, Qos::Burstable, UID, None);
        // Two ids sharing a prefix.
        let a = format!("abcd{}", "1".repeat(60));
        let b2 = format!("abcd{}", "2".repeat(60));
        tree.container(&pod, Driver::Systemd, Runtime::Containerd, &a, None, 0);
        tree.container(&pod, Driver::Systemd, Runtime::Containerd, &b2, None, 0);
        let twin = tree.pod(
            Driver::Systemd,
            Qos::BestEffort,
            "7c9e0000-1111-4222-8333-444455556666",
            None,
        );
        tree.container(
            &twin,
            Driver::Systemd,
            Runtime::Containerd,
            &container_id(5),
            None,
            0,
        );
        let h = tree.hierarchy();
        let state = RuntimeState::new(tree.state_root());
        let e = resolve(&h, &state, None, Some("abcd"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("matches 2 containers")
                && e.contains("abcd11111111")
                && e.contains("abcd22222222"),
            "{e}"
        );
        assert!(resolve(&h, &state, None, Some("abcd1")).is_ok());
        let e = resolve(&h, &state, None, Some("abc"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 4"), "{e}");
        let e = resolve(&h, &state, None, Some("ffffffff"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no container `ffffffff`") && e.contains("abcd11111111"),
            "{e}"
        );
        let e = resolve(&h, &state, Some("7c9e"), Some("abcd1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("matches 2 pods") && e.contains(UID), "{e}");
        let e = resolve(&h, &state, Some("deadbeef"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no pod `deadbeef`") && e.contains(UID), "{e}");
        let e = resolve(&h, &state, Some("not-a-uid!"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a pod UID"), "{e}");
        // A container of another pod is not found within this one.
        let e = resolve(&h, &state, Some(UID), Some(&container_id(5)))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("in pod {UID}")), "{e}");
        let empty = Tree::new(Version::V1);
        let e = resolve(&empty.hierarchy(), &state, Some(UID), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no Kubernetes pods"), "{e}");
    }

    #[test]
    fn kubepods_below_a_prefix_and_crun_subgroups() {
        // kind: --cgroup-root=/kubelet with the systemd driver.
        let tree = Tree::new(Version::V2);
        let u = UID.replace('-', "_");
        let pod = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{u}.slice"
        );
        tree.cgroup(&pod, None, 0);
        let id = container_id(7);
        let scope = format!("{pod}/crio-{id}.scope");
        tree.cgroup(&scope, None, 0);
        // crun with the systemd driver on v2: the processes live in `<scope>/container`.
        tree.cgroup(&format!("{scope}/container"), None, 0);
        tree.cgroup(&format!("{pod}/crio-conmon-{id}.scope"), None, 0);
        let h = tree.hierarchy();
        let r = resolve(
            &h,
            &RuntimeState::new(tree.state_root()),
            Some(UID),
            Some(&id[..8]),
        )
        .unwrap();
        assert_eq!(r.cgroup.path, format!("{scope}/container"));
        assert_eq!(r.identity.qos, Qos::Burstable);
        assert_eq!(r.identity.runtime, Some(Runtime::CriO));
        let node = Node::scan(&h).unwrap();
        assert_eq!(
            node.pods[0].containers.len(),
            1,
            "conmon is not a container"
        );
    }

    #[test]
    fn follow_finds_the_replacement() {
        let b = build(
            Version::V1,
            Driver::Cgroupfs,
            Runtime::Containerd,
            Qos::Burstable,
            true,
        );
        let h = b.tree.hierarchy();
        let state = RuntimeState::new(b.tree.state_root());
        let was = resolve(&h, &state, Some(UID), Some("app"))
            .unwrap()
            .identity;
        let known = container_ids(&h, UID);
        assert_eq!(known.len(), 2);
        assert!(
            follow(&h, &state, &was, &known).unwrap().is_none(),
            "still the same"
        );
        std::fs::remove_dir_all(b.tree.dir(&b.app_path)).unwrap();
        assert!(
            follow(&h, &state, &was, &known).unwrap().is_none(),
            "not back yet"
        );
        let new = container_id(3);
        let new_path = b.tree.container(
            &b.pod_path,
            Driver::Cgroupfs,
            Runtime::Containerd,
            &new,
            None,
            0,
        );
        // Without its state file yet, a named container is not taken for another.
        assert!(follow(&h, &state, &was, &known).unwrap().is_none());
        b.tree
            .state(Runtime::Containerd, &new, UID, "shop", "web-0", Some("app"));
        let found = follow(&h, &state, &was, &known).unwrap().expect("followed");
        assert_eq!(found.cgroup.path, new_path);
        assert_eq!(found.identity.container_id.as_deref(), Some(new.as_str()));
        // By id only: the one new cgroup in the pod.
        let mut by_id = was.clone();
        by_id.container_name = None;
        let found = follow(&h, &RuntimeState::new("/nonexistent"), &by_id, &known)
            .unwrap()
            .unwrap();
        assert_eq!(found.cgroup.path, new_path);
        let second = container_id(4);
        b.tree.container(
            &b.pod_path,
            Driver::Cgroupfs,
            Runtime::Containerd,
            &second,
            None,
            0,
        );
        let e = follow(&h, &RuntimeState::new("/nonexistent"), &by_id, &known).unwrap_err();
        assert!(e.to_string().contains("matches 2 containers"), "{e}");
        let _ = b.sandbox;
    }
}
