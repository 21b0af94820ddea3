//! Target: which memory cgroup a run stresses.
//!
//! Enters: a [`Spec`] (`--new NAME --limit`, `--cgroup PATH`, `--pid`, `--self`, a Kubernetes
//! `--pod`/`--container`). Leaves: a resolved [`Target`] on a [`cgroup::Hierarchy`] (v1 or v2,
//! or a tree under `--cgroup-root`), with the limit that applies and, for a pod or container,
//! who it is ([`kube`]: pods and containers found in the node's cgroup tree, names from the
//! runtimes' state files). [`lock`] keeps one run per target; [`fixture`] builds trees shaped
//! like a node's for tests and `--cgroup-root`; [`node`] reads the node's memory as the kubelet
//! and the kernel see it.

pub mod cgroup;
pub mod fixture;
pub mod init;
pub mod kube;
pub mod lock;
pub mod node;
pub mod psi;
pub mod workload;

use crate::{
    size::Bytes,
    target::{
        cgroup::{Cgroup, CgroupError, Hierarchy},
        kube::{Identity, KubeError, RuntimeState},
        workload::ContainerRef,
    },
};

/// What the user asked to target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spec {
    /// A new sandbox cgroup with this limit, removed after the run.
    New {
        /// Name (under the hierarchy root) or absolute cgroup path whose parent exists.
        name: String,
        /// Its memory limit.
        limit: u64,
    },
    /// An existing cgroup (a cgroup path or a directory under the mount).
    Cgroup(String),
    /// The memory cgroup of a process.
    Pid(u32),
    /// The cgroup memstress itself runs in.
    SelfCgroup,
    /// A Kubernetes pod (its cgroup) or one of its containers: `--pod UID`, `--container
    /// ID`, or both (the container then may be a name).
    Kube {
        /// Pod UID (or a unique prefix).
        pod: Option<String>,
        /// Container id (or a unique prefix), or a name within `pod`.
        container: Option<String>,
    },
    /// The target the `--from-stresschaos` file's selector names on this node (replaced by a
    /// [`Spec::Kube`] before resolving).
    FromSelector,
}

impl Spec {
    /// Whether `--follow` can find this target again after it disappears.
    pub fn followable(&self) -> bool {
        matches!(self, Self::Kube { .. })
    }
}

/// Why a target was refused.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error(
        "refusing to target the root cgroup: pressure there reaches every process on the node; \
         pass --allow-root-cgroup to do it anyway (a size that would reach the node's eviction \
         threshold or a global OOM also needs --allow-node-oom)"
    )]
    Root,
    #[error(
        "refusing to create `{new}` inside memstress's own cgroup `{own}`: its processes would \
         share a limit with the controller; create it elsewhere (e.g. --new /{name})"
    )]
    InsideOwn {
        new: String,
        own: String,
        name: String,
    },
    #[error(
        "no target: give one of --new, --cgroup, --pid, --self, --pod, --container (or --from-stresschaos with a selector.pods)"
    )]
    NoTarget,
    #[error("--new needs a name such as `memstress-sandbox` or `/parent/sandbox`, not `{0}`")]
    BadName(String),
    #[error("--limit {0} is too small to run anything in; give at least 8Mi")]
    LimitTooSmall(Bytes),
}

/// A resolved target: an existing cgroup, or one to be created.
#[derive(Clone, Debug)]
pub struct Target {
    /// The cgroup (not created yet when `create` is set).
    pub cgroup: Cgroup,
    /// Limit to set on creation (`Some` only for `--new`).
    pub create: Option<u64>,
    /// The pod or container it is (`--pod`, `--container`).
    pub kube: Option<Identity>,
    /// The container it is (`--container`, in a pod or not).
    pub container: Option<ContainerRef>,
}

/// The smallest limit a sandbox can have and still run a stressor.
pub const MIN_LIMIT: u64 = 8 << 20;

impl Target {
    /// Resolves `spec` on `hierarchy` without creating anything; container names are read
    /// from the runtimes' files under `state`.
    pub fn resolve(
        hierarchy: &Hierarchy,
        spec: &Spec,
        allow_root: bool,
        state: &RuntimeState,
    ) -> Result<Self, TargetError> {
        let target = match spec {
            Spec::New { name, limit } => {
                if *limit < MIN_LIMIT {
                    return Err(TargetError::LimitTooSmall(Bytes(*limit)));
                }
                let path = if name.starts_with('/') {
                    cgroup::normalize(name)?
                } else if !name.is_empty() && !name.contains('/') {
                    format!("/{name}")
                } else {
                    return Err(TargetError::BadName(name.clone()));
                };
                if path == "/" {
                    return Err(TargetError::BadName(name.clone()));
                }
                let cgroup = Cgroup::locate(hierarchy, &path)?;
                if cgroup.dir.exists() {
                    return Err(CgroupError::Exists(cgroup.path).into());
                }
                let parent = cgroup
                    .parent()
                    .ok_or_else(|| TargetError::BadName(name.clone()))?;
                if !parent.dir.is_dir() {
                    return Err(CgroupError::NotFound {
                        path: parent.path.clone(),
                        dir: parent.dir.display().to_string(),
                    }
                    .into());
                }
                if let Ok(own) = cgroup::own_cgroup(hierarchy)
                    && !own.is_root()
                    && cgroup.is_within(&own)
                {
                    let leaf = cgroup.name().to_owned();
                    return Err(TargetError::InsideOwn {
                        new: cgroup.path,
                        own: own.path,
                        name: leaf,
                    });
                }
                Self {
                    cgroup,
                    create: Some(*limit),
                    kube: None,
                    container: None,
                }
            }
            Spec::Cgroup(path) => Self::existing(Cgroup::resolve(hierarchy, path)?),
            Spec::Pid(pid) => Self::existing(Cgroup::of_pid(hierarchy, *pid)?),
            Spec::SelfCgroup => Self::existing(cgroup::own_cgroup(hierarchy)?),
            Spec::FromSelector => return Err(TargetError::NoTarget),
            Spec::Kube { pod, container } => {
                match kube::resolve(hierarchy, state, pod.as_deref(), container.as_deref()) {
                    Ok(found) => {
                        let mut target = Self::existing(found.cgroup);
                        target.cgroup.check_exists()?;
                        target.container =
                            found.identity.container_id.as_ref().map(|id| ContainerRef {
                                runtime: found.identity.runtime,
                                id: id.clone(),
                                name: found.identity.container_name.clone(),
                            });
                        target.kube = Some(found.identity);
                        target
                    }
                    // Not in a pod: one of Docker's or containerd's own containers.
                    Err(
                        e @ (KubeError::NoKubepods(_)
                        | KubeError::ContainerNotFound { .. }
                        | KubeError::BadContainer(_)),
                    ) if pod.is_none() => {
                        let what = container.as_deref().expect("a pod or a container");
                        let Some((cgroup, found)) = kube::plain_container(hierarchy, state, what)?
                        else {
                            return Err(KubeError::NoContainer {
                                what: what.to_owned(),
                                kube: e.to_string(),
                                root: state.root.display().to_string(),
                                found: kube::plain_containers(state),
                            }
                            .into());
                        };
                        let mut target = Self::existing(cgroup);
                        target.container = Some(ContainerRef {
                            runtime: found.meta.runtime,
                            id: found.id,
                            name: found.meta.name,
                        });
                        target
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        if target.cgroup.is_node_root() && !allow_root {
            return Err(TargetError::Root);
        }
        Ok(target)
    }

    /// An existing cgroup, not a pod's or a container's.
    pub fn existing(cgroup: Cgroup) -> Self {
        Self {
            cgroup,
            create: None,
            kube: None,
            container: None,
        }
    }

    /// The limit that applies to the target and the cgroup that sets it (for a new cgroup:
    /// its own limit, which is then the nearest).
    pub fn effective_limit(&self) -> Result<Option<(u64, Cgroup)>, CgroupError> {
        match self.create {
            Some(limit) => Ok(Some((limit, self.cgroup.clone()))),
            None => self.cgroup.effective_limit(),
        }
    }
}

/// MemTotal from /proc/meminfo, in bytes.
pub fn node_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo_value(&text, "MemTotal:")
}

/// MemAvailable from /proc/meminfo, in bytes.
pub fn node_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo_value(&text, "MemAvailable:")
}

fn meminfo_value(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_meminfo() {
        let text = "MemTotal:       24608564 kB\nMemFree:  1 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(meminfo_value(text, "MemTotal:"), Some(24_608_564 * 1024));
        assert_eq!(meminfo_value(text, "MemAvailable:"), Some(2048 * 1024));
        assert_eq!(meminfo_value(text, "Nope:"), None);
    }
}
