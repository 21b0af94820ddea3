//! Who a cgroup belongs to: the container and the Kubernetes pod a task's memory cgroup path
//! names, with the names the runtimes' state files give them.
//!
//! Enters: a cgroup path as `/proc/PID/cgroup` shows it (`/kubepods/burstable/pod<uid>/<id>`,
//! `/docker/<id>`, `/system.slice/docker-<id>.scope`, `…/cri-containerd-<id>.scope`).
//! Leaves: a [`Workload`]: `container` (`runtime`, `id`, `name`) when the path names a
//! container, `kubernetes` (`pod_uid`, `namespace`, `pod_name`, `container_name`, `qos`) when
//! it is in a pod. [`Names`] caches both per path, so a kill is named with at most one read of
//! each state file; a name the state files do not give (yet) is `null`, never a wait, and is
//! looked for again a little later.

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    explain::{Output, record::CollateralKill},
    target::{
        cgroup::{Cgroup, Hierarchy},
        kube::{self, Meta, Qos, Runtime, RuntimeState},
    },
};

/// A container, as its runtime knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerRef {
    /// `containerd`, `cri-o` or `docker` (`null`: the cgroup's name does not say, and no
    /// state file was readable).
    pub runtime: Option<Runtime>,
    /// Its id, as the runtime has it (64 hex digits).
    pub id: String,
    /// Its name: the pod spec's container name in a pod, Docker's `--name` outside one
    /// (`null`: none readable; containerd's own containers have none).
    pub name: Option<String>,
}

/// The Kubernetes pod (and container) a task is in, with the names kube-state-metrics and
/// cAdvisor use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KubeRef {
    /// The pod's `metadata.uid`, from the cgroup path.
    pub pod_uid: String,
    /// The pod's namespace (`null`: no runtime state file readable).
    pub namespace: Option<String>,
    /// The pod's name (`null`: as `namespace`).
    pub pod_name: Option<String>,
    /// The container's name in the pod spec (`null`: the pod's own cgroup, the sandbox, or
    /// nothing readable).
    pub container_name: Option<String>,
    /// The pod's QoS class, from the cgroup path.
    pub qos: Qos,
}

/// Which container and pod a task is in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Workload {
    /// The container (`null`: the task is not in one, or it could not be told).
    pub container: Option<ContainerRef>,
    /// The Kubernetes pod (`null`: not in a pod's cgroup).
    pub kubernetes: Option<KubeRef>,
}

impl Workload {
    /// `shop/cart-7d9f/app`, `docker/web` or `containerd/4f1c9a2b7e3d`; `None` outside a
    /// container and a pod.
    pub fn label(&self) -> Option<String> {
        if let Some(k) = &self.kubernetes {
            let pod = match (&k.namespace, &k.pod_name) {
                (Some(ns), Some(name)) => format!("{ns}/{name}"),
                _ => format!("pod {}", k.pod_uid),
            };
            let container = k
                .container_name
                .clone()
                .or_else(|| self.container.as_ref().map(|c| short(&c.id).to_owned()));
            return Some(match container {
                Some(c) => format!("{pod}/{c}"),
                None => pod,
            });
        }
        let c = self.container.as_ref()?;
        let runtime = c
            .runtime
            .map_or_else(|| "container".to_owned(), |r| r.to_string());
        Some(format!(
            "{runtime}/{}",
            c.name.as_deref().unwrap_or_else(|| short(&c.id))
        ))
    }
}

/// The first 12 characters of an id, as `docker ps` shows it.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// What a cgroup path says, before any state file: the pod and the container id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathFacts {
    /// The pod's UID and QoS class.
    pub pod: Option<(String, Qos)>,
    /// The container's id and the runtime its cgroup's name gives.
    pub container: Option<(String, Option<Runtime>)>,
}

/// Reads the pod and container from a cgroup path (either driver, v1 or v2).
pub fn parse_path(path: &str) -> PathFacts {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut facts = PathFacts {
        pod: None,
        container: None,
    };
    if let Some(at) = parts.iter().position(|p| kube::is_kubepods(p).is_some()) {
        let driver = kube::is_kubepods(parts[at]).expect("just found");
        let mut i = at + 1;
        let qos = match parts.get(i).and_then(|p| kube::qos_dir(p, driver)) {
            Some(qos) => {
                i += 1;
                qos
            }
            None => Qos::Guaranteed,
        };
        if let Some(uid) = parts.get(i).and_then(|p| kube::pod_dir(p, driver)) {
            facts.pod = Some((uid, qos));
            facts.container = parts.get(i + 1).and_then(|p| kube::container_dir(p));
        }
        return facts;
    }
    // Outside a pod: the deepest cgroup named like a runtime's container (a full id).
    for (i, part) in parts.iter().enumerate().rev() {
        if let Some((id, runtime)) = kube::container_dir(part)
            && id.len() == 64
        {
            let runtime = runtime.or_else(|| match i.checked_sub(1).map(|p| parts[p]) {
                Some("docker") => Some(Runtime::Docker),
                _ => None,
            });
            facts.container = Some((id, runtime));
            break;
        }
    }
    facts
}

/// The workload a path names, with the names `state` gives, and whether the state files
/// said all they could (`false`: a container whose files were not readable).
pub fn workload(path: &str, state: &RuntimeState) -> (Workload, bool) {
    let facts = parse_path(path);
    let meta: Option<Meta> = facts
        .container
        .as_ref()
        .and_then(|(id, _)| state.lookup(id));
    let container = facts.container.map(|(id, runtime)| ContainerRef {
        runtime: runtime.or_else(|| meta.as_ref().and_then(|m| m.runtime)),
        id,
        name: meta
            .as_ref()
            .filter(|m| !m.sandbox)
            .and_then(|m| m.name.clone()),
    });
    let kubernetes = facts.pod.map(|(pod_uid, qos)| KubeRef {
        namespace: meta.as_ref().and_then(|m| m.namespace.clone()),
        pod_name: meta.as_ref().and_then(|m| m.pod_name.clone()),
        container_name: meta
            .as_ref()
            .filter(|m| !m.sandbox)
            .and_then(|m| m.name.clone()),
        pod_uid,
        qos,
    });
    let complete = container.is_none() || meta.is_some();
    (
        Workload {
            container,
            kubernetes,
        },
        complete,
    )
}

/// How long a workload whose names were not (all) readable is kept before its state files
/// are read again (a container being created writes them after its cgroup exists).
const RETRY: Duration = Duration::from_secs(1);

/// At most this many paths are remembered; past it, the cache starts again (a node whose
/// pods come and go must not grow it without bound).
const MAX_CACHED: usize = 4096;

/// Names the cgroups of kills, caching per path and per cgroup id.
#[derive(Debug)]
pub struct Names {
    state: RuntimeState,
    hierarchy: Option<Hierarchy>,
    by_path: HashMap<String, (Workload, bool, Instant)>,
    paths: HashMap<u64, String>,
}

impl Names {
    /// Names from `state`; `hierarchy` (where known) turns a task's cgroup id into a path.
    pub fn new(state: RuntimeState, hierarchy: Option<Hierarchy>) -> Self {
        Self {
            state,
            hierarchy,
            by_path: HashMap::new(),
            paths: HashMap::new(),
        }
    }

    /// The workload of the cgroup at `path`.
    pub fn of_path(&mut self, path: &str) -> Workload {
        if let Some((w, complete, at)) = self.by_path.get(path)
            && (*complete || at.elapsed() < RETRY)
        {
            return w.clone();
        }
        if self.by_path.len() >= MAX_CACHED {
            self.by_path.clear();
        }
        let (w, complete) = workload(path, &self.state);
        self.by_path
            .insert(path.to_owned(), (w.clone(), complete, Instant::now()));
        w
    }

    /// Remembers that cgroup `id` is at `path` (from a victim's record).
    pub fn learn(&mut self, id: u64, path: &str) {
        if self.paths.len() >= MAX_CACHED {
            self.paths.clear();
        }
        self.paths.insert(id, path.to_owned());
    }

    /// The path of a task's memory cgroup: known from an earlier record, or read from
    /// `/proc/PID/cgroup` and checked against `id` (a task that moved, or a pid reused, gives
    /// `None` rather than another task's cgroup).
    pub fn path_of(&mut self, pid: Option<u32>, id: Option<u64>) -> Option<String> {
        let id = id?;
        if let Some(path) = self.paths.get(&id) {
            return Some(path.clone());
        }
        let hierarchy = self.hierarchy.as_ref()?;
        let cgroup = Cgroup::of_pid(hierarchy, pid?).ok()?;
        if cgroup.id().ok()? != id {
            return None;
        }
        self.learn(id, &cgroup.path);
        Some(cgroup.path)
    }

    /// The state files' root (for messages).
    pub fn root(&self) -> &Path {
        &self.state.root
    }

    /// Names every task of `output`: the victim (from its recorded path), the trigger and
    /// collateral kills (from their cgroup ids).
    pub fn name(&mut self, output: &mut Output) {
        match output {
            Output::Kill(kill) => {
                let victim = &kill.victim.victim;
                if let Some(path) = victim.cgroup.clone() {
                    // Every ancestor the record named, for the trigger and the collateral.
                    if !victim.cgroup_truncated {
                        let mut at = path.as_str();
                        for id in &victim.cgroup_chain {
                            self.learn(*id, at);
                            at = match at.rsplit_once('/') {
                                Some(("", _)) | None => "/",
                                Some((parent, _)) => parent,
                            };
                        }
                    }
                    kill.victim.workload = self.of_path(&path);
                }
                let t = &kill.trigger.task;
                kill.trigger.cgroup = self.path_of(t.pid, t.cgroup_id);
                if let Some(path) = kill.trigger.cgroup.clone() {
                    kill.trigger.workload = self.of_path(&path);
                }
                for c in &mut kill.collateral {
                    self.name_collateral(c);
                }
            }
            Output::LateCollateral(c) => self.name_collateral(c),
            Output::Signalled(k) => {
                if let Some(path) = k.victim.cgroup.clone() {
                    k.victim.workload = self.of_path(&path);
                }
                if let Some(path) = k.sender.cgroup.clone() {
                    k.sender.workload = self.of_path(&path);
                }
            }
            Output::Reaped(_) => {}
        }
    }

    fn name_collateral(&mut self, c: &mut CollateralKill) {
        c.cgroup = self.path_of(c.task.pid, c.task.cgroup_id);
        if let Some(path) = c.cgroup.clone() {
            c.workload = self.of_path(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::fixture::{self, container_id};

    const UID: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

    #[test]
    fn reads_both_drivers_and_plain_containers() {
        let id = container_id(2);
        let f = parse_path(&format!("/kubepods/burstable/pod{UID}/{id}"));
        assert_eq!(f.pod, Some((UID.to_owned(), Qos::Burstable)));
        assert_eq!(f.container, Some((id.clone(), None)));
        let f = parse_path(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
            UID.replace('-', "_")
        ));
        assert_eq!(f.pod, Some((UID.to_owned(), Qos::BestEffort)));
        assert_eq!(f.container, Some((id.clone(), Some(Runtime::Containerd))));
        let f = parse_path(&format!("/kubepods/pod{UID}"));
        assert_eq!(f.pod, Some((UID.to_owned(), Qos::Guaranteed)));
        assert_eq!(f.container, None);
        let f = parse_path(&format!("/docker/{id}"));
        assert_eq!(f.pod, None);
        assert_eq!(f.container, Some((id.clone(), Some(Runtime::Docker))));
        let f = parse_path(&format!("/system.slice/docker-{id}.scope"));
        assert_eq!(f.container, Some((id.clone(), Some(Runtime::Docker))));
        let f = parse_path(&format!("/default/{id}"));
        assert_eq!(f.container, Some((id, None)));
        // Hex-named cgroups that are not full ids are not containers.
        assert_eq!(parse_path("/user.slice/deadbeefcafe").container, None);
        assert_eq!(
            parse_path("/"),
            PathFacts {
                pod: None,
                container: None
            }
        );
    }

    #[test]
    fn names_from_state_files_and_labels() {
        let tree = fixture::Tree::new(crate::target::cgroup::Version::V1);
        let app = container_id(2);
        let sandbox = container_id(1);
        for runtime in [Runtime::Containerd, Runtime::CriO, Runtime::Docker] {
            let root = tree.state_root().join(runtime.to_string());
            fixture::write_state(&root, runtime, &app, UID, "shop", "cart-7d9f", Some("app"));
            fixture::write_state(&root, runtime, &sandbox, UID, "shop", "cart-7d9f", None);
            let state = RuntimeState::new(&root);
            let (w, complete) = workload(&format!("/kubepods/burstable/pod{UID}/{app}"), &state);
            assert!(complete);
            assert_eq!(
                w.label().as_deref(),
                Some("shop/cart-7d9f/app"),
                "{runtime}"
            );
            let k = w.kubernetes.as_ref().expect("a pod");
            assert_eq!(k.container_name.as_deref(), Some("app"));
            assert_eq!(k.qos, Qos::Burstable);
            let c = w.container.as_ref().expect("a container");
            assert_eq!((c.runtime, c.id.as_str()), (Some(runtime), app.as_str()));
            let (w, _) = workload(&format!("/kubepods/burstable/pod{UID}/{sandbox}"), &state);
            assert_eq!(w.kubernetes.as_ref().unwrap().container_name, None);
            assert_eq!(
                w.label().unwrap(),
                format!("shop/cart-7d9f/{}", short(&sandbox))
            );
        }
        // Nothing readable: ids from the path, names null.
        let (w, complete) = workload(
            &format!("/kubepods/burstable/pod{UID}/{app}"),
            &RuntimeState::new("/nonexistent"),
        );
        assert_eq!(w.kubernetes.as_ref().unwrap().namespace, None);
        assert_eq!(w.label().unwrap(), format!("pod {UID}/{}", short(&app)));
        assert!(!complete);
        assert_eq!(
            workload("/user.slice", &RuntimeState::default()),
            (Workload::default(), true)
        );
    }
}
