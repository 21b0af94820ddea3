//! Memory cgroups, v1 and v2: finding the memory controller's hierarchy, resolving the
//! paths users give, reading what the kernel counts, and creating and removing sandboxes.
//!
//! Paths are handled in two forms: the *cgroup path* as `/proc/PID/cgroup` shows it (`/a/b`,
//! relative to the hierarchy's root) and the directory under the mount point. On hybrid
//! systems (cgroup2 mounted but the memory controller on v1, as on this project's CI) the
//! memory controller's hierarchy is the v1 one.

use std::{
    collections::HashMap,
    fmt, fs,
    io::{self, ErrorKind},
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
    time::{Duration, Instant},
};

/// The kernel's "no limit" for v1 `memory.limit_in_bytes` is `PAGE_COUNTER_MAX` pages; any
/// value at or above this is treated as unlimited.
const V1_UNLIMITED: u64 = 0x7fff_ffff_ffff_f000 / 2;

/// Errors about cgroups. Each names the input and what would be accepted.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no memory cgroup controller is mounted (looked for a cgroup v1 `memory` mount and a cgroup2 mount listing `memory`)"
    )]
    NoMemoryController,
    #[error("cgroup path `{0}` is empty")]
    Empty(String),
    #[error("cgroup path `{0}` contains `..` or `.`; give a plain path such as /kubepods/pod1")]
    Dots(String),
    #[error("`{path}` is not on the memory controller's hierarchy, which is mounted at {mount}")]
    OutsideMount { path: String, mount: String },
    #[error(
        "cgroup path `{0}` must start with `/` (as /proc/PID/cgroup shows it) or with the mount point"
    )]
    Relative(String),
    #[error("no cgroup `{path}` (looked for {dir})")]
    NotFound { path: String, dir: String },
    #[error("cgroup `{0}` has no memory controller files")]
    NoMemoryFiles(String),
    #[error(
        "cgroup `{0}` already exists; memstress only creates (and removes) cgroups of its own: pick another name, or target it with --cgroup"
    )]
    Exists(String),
    #[error(
        "the memory controller is not enabled for children of `{0}` (add it with: echo +memory > {1}/cgroup.subtree_control)"
    )]
    ControllerNotEnabled(String, String),
    #[error("no process {0}")]
    NoSuchPid(u32),
    #[error("cannot find the memory cgroup of process {0} in /proc/{0}/cgroup")]
    PidWithoutMemcg(u32),
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("cgroup `{0}` still has processes after {1:?}; it was left in place")]
    Busy(String, Duration),
    #[error(
        "--cgroup-root {0} is not shaped like /sys/fs/cgroup: it has neither a `memory` directory (cgroup v1) nor a cgroup.controllers file listing `memory` (cgroup v2)"
    )]
    NotARoot(String),
    #[error(
        "{0} is not on a cgroup filesystem (a copy or a fixture under --cgroup-root?): processes cannot join it; only --dry-run works there"
    )]
    NotCgroupfs(String),
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> CgroupError + use<'a> {
    move |source| CgroupError::Io {
        action,
        path: path.display().to_string(),
        source,
    }
}

/// cgroup v1 or v2.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub enum Version {
    /// cgroup v1 (the `memory` hierarchy).
    #[serde(rename = "1")]
    V1,
    /// cgroup v2 (unified).
    #[serde(rename = "2")]
    V2,
}

impl Version {
    /// 1 or 2.
    pub fn number(self) -> u8 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
        }
    }
}

/// The hierarchy the memory controller lives on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    /// v1 or v2.
    pub version: Version,
    /// Where it is mounted.
    pub mount: PathBuf,
    /// The cgroup path the mount point shows (`/` unless a container sees only a subtree).
    pub mount_root: String,
}

impl Hierarchy {
    /// Finds the memory controller's hierarchy from /proc/self/mountinfo.
    pub fn discover() -> Result<Self, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(path).map_err(io_err("cannot read", path))?;
        Self::from_mountinfo(&text, |mount| {
            fs::read_to_string(mount.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        })
    }

    /// Picks the memory hierarchy from mountinfo text. `v2_has_memory` tells whether a
    /// cgroup2 mount has the memory controller (its `cgroup.controllers` lists it).
    ///
    /// A later mount at the same place hides an earlier one, and mountinfo lists both: a
    /// container given the node's /sys/fs/cgroup (a hostPath volume) over the one its runtime
    /// mounted (showing only its own cgroup) sees the node's, so the last one counts.
    pub fn from_mountinfo(
        text: &str,
        v2_has_memory: impl Fn(&Path) -> bool,
    ) -> Result<Self, CgroupError> {
        let mut v1: Option<Self> = None;
        let mut v2: Option<Self> = None;
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (Some(root), Some(mount), Some(fstype)) = (left.get(3), left.get(4), right.first())
            else {
                continue;
            };
            let mount = PathBuf::from(unescape_mountinfo(mount));
            let root = unescape_mountinfo(root);
            match *fstype {
                "cgroup" => {
                    let opts = right.get(2).copied().unwrap_or("");
                    if opts.split(',').any(|o| o == "memory")
                        && v1.as_ref().is_none_or(|h| h.mount == mount)
                    {
                        v1 = Some(Self {
                            version: Version::V1,
                            mount,
                            mount_root: root,
                        });
                    }
                }
                "cgroup2"
                    if v2.as_ref().is_none_or(|h| h.mount == mount) && v2_has_memory(&mount) =>
                {
                    v2 = Some(Self {
                        version: Version::V2,
                        mount,
                        mount_root: root,
                    });
                }
                _ => {}
            }
        }
        v1.or(v2).ok_or(CgroupError::NoMemoryController)
    }

    /// The memory hierarchy under `root`, a directory shaped like /sys/fs/cgroup
    /// (`--cgroup-root`): cgroup v1 when it has a `memory` directory (the v1 memory
    /// controller's own tree, as on hybrid systems), cgroup v2 when its `cgroup.controllers`
    /// lists `memory`; a v1 memory mount given directly (it has `memory.limit_in_bytes`) is
    /// taken as it is. Decided from the tree at run time, never assumed.
    pub fn at_root(root: &Path) -> Result<Self, CgroupError> {
        let memory = root.join("memory");
        if memory.is_dir() {
            return Ok(Self::at(Version::V1, memory));
        }
        let lists_memory = fs::read_to_string(root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        if lists_memory {
            return Ok(Self::at(Version::V2, root));
        }
        if root.join("memory.limit_in_bytes").is_file() {
            return Ok(Self::at(Version::V1, root));
        }
        Err(CgroupError::NotARoot(root.display().to_string()))
    }

    /// The memory hierarchy under `root` (`--cgroup-root`), or the real one from the mounts.
    pub fn locate(root: Option<&Path>) -> Result<Self, CgroupError> {
        match root {
            Some(root) => Self::at_root(root),
            None => Self::discover(),
        }
    }

    /// A hierarchy at an explicit directory (used with `--cgroup-root` and in tests).
    pub fn at(version: Version, mount: impl Into<PathBuf>) -> Self {
        Self {
            version,
            mount: mount.into(),
            mount_root: "/".to_owned(),
        }
    }

    /// The root cgroup.
    pub fn root(&self) -> Cgroup {
        Cgroup {
            hierarchy: self.clone(),
            path: "/".to_owned(),
            dir: self.mount.clone(),
        }
    }

    /// The directory of cgroup path `path` (which must be normalised).
    fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let root = self.mount_root.trim_end_matches('/');
        let rest = if root.is_empty() {
            path
        } else if path == root {
            "/"
        } else {
            path.strip_prefix(root)
                .filter(|rest| rest.starts_with('/'))?
        };
        let rest = rest.trim_start_matches('/');
        Some(if rest.is_empty() {
            self.mount.clone()
        } else {
            self.mount.join(rest)
        })
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| {
            bytes[i] == b'\\'
                && d.iter()
                    .all(|b| (b'0'..=b'3').contains(&d[0]) && (b'0'..=b'7').contains(b))
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Normalises a cgroup path: one leading `/`, no trailing `/`, no empty components; rejects
/// `.` and `..`.
pub fn normalize(path: &str) -> Result<String, CgroupError> {
    if path.trim().is_empty() {
        return Err(CgroupError::Empty(path.to_owned()));
    }
    if !path.starts_with('/') {
        return Err(CgroupError::Relative(path.to_owned()));
    }
    let mut parts = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::RootDir => {}
            Component::Normal(name) => parts.push(
                name.to_str()
                    .ok_or_else(|| CgroupError::NotFound {
                        path: path.to_owned(),
                        dir: "a UTF-8 path".to_owned(),
                    })?
                    .to_owned(),
            ),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(CgroupError::Dots(path.to_owned()));
            }
        }
    }
    // `Path::components` silently drops `.`; catch it in the raw text too.
    if path.split('/').any(|p| p == "." || p == "..") {
        return Err(CgroupError::Dots(path.to_owned()));
    }
    Ok(format!("/{}", parts.join("/")))
}

/// A memory cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    /// Its hierarchy.
    pub hierarchy: Hierarchy,
    /// The cgroup path, as /proc/PID/cgroup shows it.
    pub path: String,
    /// Its directory.
    pub dir: PathBuf,
}

impl fmt::Display for Cgroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

/// What the kernel counts for a memory cgroup at one moment.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Counters {
    /// `memory.usage_in_bytes` (v1) / `memory.current` (v2).
    pub usage_bytes: u64,
    /// usage − inactive_file, as the kubelet computes it.
    pub working_set_bytes: u64,
    /// Page cache not recently used (reclaimable first).
    pub inactive_file_bytes: u64,
    /// Times the limit was hit: v1 `memory.failcnt`, v2 `memory.events` `max`.
    pub limit_hits: u64,
    /// OOM kills inside: v1 `memory.oom_control` / v2 `memory.events` `oom_kill`.
    pub oom_kills: u64,
    /// v1 `under_oom` (an OOM is being handled right now); always 0 on v2.
    pub under_oom: bool,
    /// Page cache on the file LRU lists (active + inactive): what reclaim can free without
    /// swap. Usage less this is what the OOM forecast follows.
    #[serde(skip)]
    #[schemars(skip)]
    pub file_bytes: u64,
}

/// What the kernel's peak usage figure covers.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PeakScope {
    /// This run only.
    Run,
    /// The cgroup's whole life.
    CgroupLifetime,
}

/// Reads the kernel's peak usage of a cgroup (see [`Cgroup::peak_reader`]).
#[derive(Debug)]
pub struct PeakReader {
    path: PathBuf,
    /// A file descriptor whose own view of `memory.peak` was reset.
    own: Option<fs::File>,
    run_only: bool,
}

impl PeakReader {
    /// The peak, in bytes.
    pub fn read(&self) -> Result<u64, CgroupError> {
        use std::os::unix::fs::FileExt as _;
        let text = match &self.own {
            Some(file) => {
                let mut buf = [0u8; 32];
                let n = file
                    .read_at(&mut buf, 0)
                    .map_err(io_err("cannot read", &self.path))?;
                String::from_utf8_lossy(&buf[..n]).into_owned()
            }
            None => fs::read_to_string(&self.path).map_err(io_err("cannot read", &self.path))?,
        };
        text.trim().parse().map_err(|_| CgroupError::Io {
            action: "cannot parse",
            path: self.path.display().to_string(),
            source: io::Error::new(ErrorKind::InvalidData, text.trim().to_owned()),
        })
    }

    /// Whether the figure covers this run only, or the cgroup's whole life.
    pub fn scope(&self) -> PeakScope {
        if self.run_only {
            PeakScope::Run
        } else {
            PeakScope::CgroupLifetime
        }
    }
}

impl Cgroup {
    /// Resolves a user-given path: a cgroup path (`/kubepods/pod1`) or a directory under the
    /// hierarchy's mount point (`/sys/fs/cgroup/memory/kubepods/pod1`). It must exist and
    /// have the memory controller.
    pub fn resolve(hierarchy: &Hierarchy, spec: &str) -> Result<Self, CgroupError> {
        let cgroup = Self::locate(hierarchy, spec)?;
        cgroup.check_exists()?;
        Ok(cgroup)
    }

    /// Like [`Self::resolve`] without checking that the cgroup exists.
    pub fn locate(hierarchy: &Hierarchy, spec: &str) -> Result<Self, CgroupError> {
        if spec.trim().is_empty() {
            return Err(CgroupError::Empty(spec.to_owned()));
        }
        let mount = hierarchy.mount.to_string_lossy();
        let mount = mount.trim_end_matches('/');
        let path = if let Some(rest) = spec
            .strip_prefix(mount)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        {
            let rest = normalize(if rest.is_empty() { "/" } else { rest })?;
            let root = hierarchy.mount_root.trim_end_matches('/');
            if rest == "/" {
                hierarchy.mount_root.clone()
            } else {
                format!("{root}{rest}")
            }
        } else if spec.starts_with("/sys/fs/cgroup") {
            return Err(CgroupError::OutsideMount {
                path: spec.to_owned(),
                mount: hierarchy.mount.display().to_string(),
            });
        } else {
            normalize(spec)?
        };
        let dir = hierarchy
            .dir_of(&path)
            .ok_or_else(|| CgroupError::OutsideMount {
                path: path.clone(),
                mount: format!(
                    "{} (showing cgroup {})",
                    hierarchy.mount.display(),
                    hierarchy.mount_root
                ),
            })?;
        Ok(Self {
            hierarchy: hierarchy.clone(),
            path,
            dir,
        })
    }

    /// Fails unless the cgroup exists and has the memory controller's files.
    pub fn check_exists(&self) -> Result<(), CgroupError> {
        if !self.dir.is_dir() {
            return Err(CgroupError::NotFound {
                path: self.path.clone(),
                dir: self.dir.display().to_string(),
            });
        }
        if !self.dir.join("memory.stat").is_file() {
            return Err(CgroupError::NoMemoryFiles(self.path.clone()));
        }
        Ok(())
    }

    /// The memory cgroup process `pid` is in.
    pub fn of_pid(hierarchy: &Hierarchy, pid: u32) -> Result<Self, CgroupError> {
        let file = PathBuf::from(format!("/proc/{pid}/cgroup"));
        let text = match fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(CgroupError::NoSuchPid(pid)),
            Err(e) => return Err(io_err("cannot read", &file)(e)),
        };
        let path = memcg_path_from_proc(&text, hierarchy.version)
            .ok_or(CgroupError::PidWithoutMemcg(pid))?;
        Self::resolve(hierarchy, &path)
    }

    /// Fails unless the directory is on a cgroup filesystem (cgroup v1 or cgroup2): a tree
    /// under `--cgroup-root` may be a copy, where writing a pid to `cgroup.procs` would
    /// silently do nothing and the stressors would run, and charge, elsewhere.
    pub fn check_cgroupfs(&self) -> Result<(), CgroupError> {
        const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
        const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
        let path = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes())
            .map_err(|_| CgroupError::NotCgroupfs(self.dir.display().to_string()))?;
        // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
        let (rc, magic) = unsafe {
            let mut buf: libc::statfs = std::mem::zeroed();
            let rc = libc::statfs(path.as_ptr(), &mut buf);
            (rc, buf.f_type as i64)
        };
        if rc != 0 {
            return Err(io_err("cannot statfs", &self.dir)(
                io::Error::last_os_error(),
            ));
        }
        if magic == CGROUP_SUPER_MAGIC || magic == CGROUP2_SUPER_MAGIC {
            Ok(())
        } else {
            Err(CgroupError::NotCgroupfs(self.dir.display().to_string()))
        }
    }

    /// Whether this is the hierarchy's root.
    pub fn is_root(&self) -> bool {
        self.path == "/"
    }

    /// Whether this is the node's root cgroup, not the root of a cgroup namespace (inside
    /// one, a container's own cgroup is `/`): the real root's directory is the cgroup
    /// file system's root, inode 1. A tree that is not cgroupfs (`--cgroup-root`) goes by the
    /// path.
    pub fn is_node_root(&self) -> bool {
        self.is_root() && (self.check_cgroupfs().is_err() || self.id().is_ok_and(|id| id == 1))
    }

    /// Its last path component (`/kubepods/pod1` → `pod1`; the root's is empty).
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or_default()
    }

    /// The parent cgroup (`None` for the root).
    pub fn parent(&self) -> Option<Self> {
        if self.is_root() {
            return None;
        }
        let parent = match self.path.rsplit_once('/') {
            Some(("", _)) | None => "/".to_owned(),
            Some((parent, _)) => parent.to_owned(),
        };
        Some(Self {
            hierarchy: self.hierarchy.clone(),
            dir: self.hierarchy.dir_of(&parent)?,
            path: parent,
        })
    }

    /// Whether `self` is `other` or below it.
    pub fn is_within(&self, other: &Self) -> bool {
        other.is_root()
            || self.path == other.path
            || self
                .path
                .strip_prefix(&other.path)
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// The kernel's id for this cgroup (its kernfs node id, which is the directory's inode
    /// number); BPF programs report cgroups by this id.
    pub fn id(&self) -> Result<u64, CgroupError> {
        fs::metadata(&self.dir)
            .map(|m| m.ino())
            .map_err(io_err("cannot stat", &self.dir))
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> Result<String, CgroupError> {
        let path = self.file(name);
        fs::read_to_string(&path).map_err(io_err("cannot read", &path))
    }

    fn read_u64(&self, name: &str) -> Result<u64, CgroupError> {
        let text = self.read(name)?;
        text.trim().parse().map_err(|_| CgroupError::Io {
            action: "cannot parse",
            path: self.file(name).display().to_string(),
            source: io::Error::new(ErrorKind::InvalidData, format!("`{}`", text.trim())),
        })
    }

    fn write(&self, name: &str, value: &str) -> Result<(), CgroupError> {
        let path = self.file(name);
        fs::write(&path, value).map_err(io_err("cannot write", &path))
    }

    /// The memory limit set on this cgroup itself (`None`: unlimited).
    pub fn limit(&self) -> Result<Option<u64>, CgroupError> {
        match self.hierarchy.version {
            Version::V1 => {
                let limit = self.read_u64("memory.limit_in_bytes")?;
                Ok((limit < V1_UNLIMITED).then_some(limit))
            }
            Version::V2 => {
                // The node's root has no memory.max; a cgroup namespace's root (a
                // container's own cgroup, shown as `/`) has its own.
                if !self.file("memory.max").exists() {
                    return Ok(None);
                }
                let text = self.read("memory.max")?;
                let text = text.trim();
                if text == "max" {
                    Ok(None)
                } else {
                    text.parse().map(Some).map_err(|_| CgroupError::Io {
                        action: "cannot parse",
                        path: self.file("memory.max").display().to_string(),
                        source: io::Error::new(ErrorKind::InvalidData, text.to_owned()),
                    })
                }
            }
        }
    }

    /// The swap limit: v2 `memory.swap.max`, v1 `memory.memsw.limit_in_bytes` (memory plus
    /// swap). `None`: unlimited, or no swap accounting.
    pub fn swap_limit(&self) -> Result<Option<u64>, CgroupError> {
        let file = match self.hierarchy.version {
            Version::V1 => "memory.memsw.limit_in_bytes",
            Version::V2 => "memory.swap.max",
        };
        if !self.file(file).exists() {
            return Ok(None);
        }
        let text = self.read(file)?;
        Ok(text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&v| v < V1_UNLIMITED))
    }

    /// This cgroup, then each ancestor up to the root.
    pub fn lineage(&self) -> impl Iterator<Item = Self> {
        std::iter::successors(Some(self.clone()), Self::parent)
    }

    /// The nearest limit that applies: this cgroup's own, or the nearest limited ancestor's.
    pub fn effective_limit(&self) -> Result<Option<(u64, Self)>, CgroupError> {
        for cgroup in self.lineage() {
            if let Some(limit) = cgroup.limit()? {
                return Ok(Some((limit, cgroup)));
            }
        }
        Ok(None)
    }

    /// Sets the memory limit (v1 `memory.limit_in_bytes`, v2 `memory.max`).
    pub fn set_limit(&self, bytes: u64) -> Result<(), CgroupError> {
        match self.hierarchy.version {
            Version::V1 => self.write("memory.limit_in_bytes", &bytes.to_string()),
            Version::V2 => self.write("memory.max", &bytes.to_string()),
        }
    }

    /// v2 `memory.high`: the usage above which the kernel throttles the cgroup's tasks and
    /// reclaims from them (`None`: `max`). v1 has no such file: an error there.
    pub fn high(&self) -> Result<Option<u64>, CgroupError> {
        let text = self.read("memory.high")?;
        match text.trim() {
            "max" => Ok(None),
            value => value.parse().map(Some).map_err(|_| CgroupError::Io {
                action: "cannot parse",
                path: self.file("memory.high").display().to_string(),
                source: io::Error::new(ErrorKind::InvalidData, value.to_owned()),
            }),
        }
    }

    /// Whether a v2 `memory.high` below `max` applies to this cgroup's tasks: its own or an
    /// ancestor's (the kernel throttles against each level's). Never on v1 (no such file).
    pub fn high_applies(&self) -> bool {
        if self.hierarchy.version != Version::V2 {
            return false;
        }
        self.lineage()
            .any(|cgroup| !cgroup.is_root() && matches!(cgroup.high(), Ok(Some(_))))
    }

    /// Sets v2 `memory.high` (`None`: `max`). The kernel reclaims down to it at once, as far
    /// as it can, in the writer (`memory_high_write()`), and returns even when it cannot.
    pub fn set_high(&self, bytes: Option<u64>) -> Result<(), CgroupError> {
        self.write(
            "memory.high",
            &bytes.map_or_else(|| "max".to_owned(), |b| b.to_string()),
        )
    }

    /// v2 `memory.events` `high`: how often a charge took the cgroup over its `memory.high`
    /// (each time its tasks were throttled and made to reclaim).
    pub fn high_events(&self) -> Result<u64, CgroupError> {
        Ok(parse_flat_keyed(&self.read("memory.events")?)
            .get("high")
            .copied()
            .unwrap_or(0))
    }

    /// Bytes charged to the cgroup now.
    pub fn usage(&self) -> Result<u64, CgroupError> {
        match self.hierarchy.version {
            Version::V1 => self.read_u64("memory.usage_in_bytes"),
            Version::V2 => self.read_u64("memory.current"),
        }
    }

    /// The kernel's high-water mark of usage over the cgroup's lifetime (v1
    /// `memory.max_usage_in_bytes`, v2 `memory.peak` where the kernel has it).
    pub fn kernel_peak(&self) -> Result<Option<u64>, CgroupError> {
        let file = match self.hierarchy.version {
            Version::V1 => "memory.max_usage_in_bytes",
            Version::V2 => "memory.peak",
        };
        if !self.file(file).exists() {
            return Ok(None);
        }
        self.read_u64(file).map(Some)
    }

    /// The kernel's peak usage over a run that starts now. v2 kernels with a per-reader
    /// reset of `memory.peak` (6.12+) give this run's own peak: the reset affects only the
    /// file descriptor written to, never another reader. Elsewhere the figure is the
    /// cgroup's lifetime peak (v1's `memory.max_usage_in_bytes` can only be reset for every
    /// reader at once, which memstress does not do to a cgroup it did not create), exactly
    /// this run's when the run created the cgroup. `None` where the kernel keeps no peak.
    pub fn peak_reader(&self, created_for_run: bool) -> Option<PeakReader> {
        use std::io::Write as _;
        let name = match self.hierarchy.version {
            Version::V1 => "memory.max_usage_in_bytes",
            Version::V2 => "memory.peak",
        };
        let path = self.file(name);
        if !path.exists() {
            return None;
        }
        if self.hierarchy.version == Version::V2
            && let Ok(mut file) = fs::OpenOptions::new().read(true).write(true).open(&path)
            && file.write_all(b"reset\n").is_ok()
        {
            return Some(PeakReader {
                path,
                own: Some(file),
                run_only: true,
            });
        }
        Some(PeakReader {
            path,
            own: None,
            run_only: created_for_run,
        })
    }

    /// `memory.stat` as name -> value.
    pub fn stat(&self) -> Result<HashMap<String, u64>, CgroupError> {
        Ok(parse_flat_keyed(&self.read("memory.stat")?))
    }

    /// How often a charge hit the limit: v1 `memory.failcnt`, v2 `max` of `memory.events`.
    /// One small file, unlike [`Self::counters`], which also reads `memory.stat` (the
    /// kernel flushes per-CPU statistics to produce it).
    pub fn limit_hits(&self) -> Result<u64, CgroupError> {
        match self.hierarchy.version {
            Version::V1 => self.read_u64("memory.failcnt"),
            Version::V2 => Ok(parse_flat_keyed(&self.read("memory.events")?)
                .get("max")
                .copied()
                .unwrap_or(0)),
        }
    }

    /// Usage, working set and the limit and OOM counters, read together.
    pub fn counters(&self) -> Result<Counters, CgroupError> {
        let usage_bytes = self.usage()?;
        let stat = self.stat()?;
        let key = |name: &str| match self.hierarchy.version {
            Version::V1 => stat.get(&format!("total_{name}")).copied().unwrap_or(0),
            Version::V2 => stat.get(name).copied().unwrap_or(0),
        };
        let inactive_file_bytes = key("inactive_file");
        let file_bytes = inactive_file_bytes.saturating_add(key("active_file"));
        let (limit_hits, oom_kills, under_oom) = match self.hierarchy.version {
            Version::V1 => {
                let oom = parse_flat_keyed(&self.read("memory.oom_control")?);
                (
                    self.read_u64("memory.failcnt")?,
                    oom.get("oom_kill").copied().unwrap_or(0),
                    oom.get("under_oom").copied().unwrap_or(0) != 0,
                )
            }
            Version::V2 => {
                let events = parse_flat_keyed(&self.read("memory.events")?);
                (
                    events.get("max").copied().unwrap_or(0),
                    events.get("oom_kill").copied().unwrap_or(0),
                    false,
                )
            }
        };
        Ok(Counters {
            usage_bytes,
            working_set_bytes: usage_bytes.saturating_sub(inactive_file_bytes),
            inactive_file_bytes,
            limit_hits,
            oom_kills,
            under_oom,
            file_bytes,
        })
    }

    /// Processes in this cgroup (not its children).
    pub fn procs(&self) -> Result<Vec<u32>, CgroupError> {
        Ok(self
            .read("cgroup.procs")?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// Child cgroups (directories).
    pub fn children(&self) -> Result<Vec<Self>, CgroupError> {
        let entries = fs::read_dir(&self.dir).map_err(io_err("cannot list", &self.dir))?;
        let mut children = Vec::new();
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let path = if self.is_root() {
                format!("/{name}")
            } else {
                format!("{}/{name}", self.path)
            };
            children.push(Self {
                hierarchy: self.hierarchy.clone(),
                path,
                dir: entry.path(),
            });
        }
        Ok(children)
    }

    /// Creates child `name` of `self`, with the memory controller available in it. Fails if it
    /// exists (memstress never adopts a cgroup it did not create).
    pub fn create_child(&self, name: &str) -> Result<Self, CgroupError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(CgroupError::Dots(name.to_owned()));
        }
        if self.hierarchy.version == Version::V2 {
            let enabled = self
                .read("cgroup.subtree_control")
                .unwrap_or_default()
                .split_whitespace()
                .any(|c| c == "memory");
            if !enabled {
                return Err(CgroupError::ControllerNotEnabled(
                    self.path.clone(),
                    self.dir.display().to_string(),
                ));
            }
        }
        let path = if self.is_root() {
            format!("/{name}")
        } else {
            format!("{}/{name}", self.path)
        };
        let child = Self {
            hierarchy: self.hierarchy.clone(),
            dir: self.dir.join(name),
            path,
        };
        match fs::create_dir(&child.dir) {
            Ok(()) => Ok(child),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(CgroupError::Exists(child.path)),
            Err(e) => Err(io_err("cannot create cgroup", &child.dir)(e)),
        }
    }

    /// SIGKILLs every process in this cgroup and its children (v2 `cgroup.kill` where the
    /// kernel has it, else one by one until none is left).
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        if self.hierarchy.version == Version::V2 && self.file("cgroup.kill").exists() {
            return self.write("cgroup.kill", "1");
        }
        for child in self.children()? {
            child.kill_all()?;
        }
        for pid in self.procs()? {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        Ok(())
    }

    /// Whether this cgroup or any child still has a process.
    pub fn populated(&self) -> Result<bool, CgroupError> {
        if !self.procs()?.is_empty() {
            return Ok(true);
        }
        for child in self.children()? {
            if child.populated()? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Kills everything inside and removes the cgroup and its children, waiting up to
    /// `timeout` for the processes to exit. Succeeds if the cgroup is already gone.
    pub fn remove(&self, timeout: Duration) -> Result<(), CgroupError> {
        if !self.dir.exists() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = (|| {
                self.kill_all()?;
                for child in self.children()? {
                    child.remove(deadline.saturating_duration_since(Instant::now()))?;
                }
                fs::remove_dir(&self.dir).map_err(io_err("cannot remove", &self.dir))
            })();
            match attempt {
                Ok(()) => return Ok(()),
                Err(_) if !self.dir.exists() => return Ok(()),
                Err(e) => {
                    if Instant::now() >= deadline {
                        return Err(if self.populated().unwrap_or(true) {
                            CgroupError::Busy(self.path.clone(), timeout)
                        } else {
                            e
                        });
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// Moves process `pid` into this cgroup.
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// Path of `cgroup.procs` (opened before a fork so the child can join with one write).
    pub fn procs_file(&self) -> PathBuf {
        self.file("cgroup.procs")
    }
}

/// Parses `key value` lines (memory.stat, memory.events, memory.oom_control).
pub fn parse_flat_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The memory cgroup path in the text of /proc/PID/cgroup: the v1 line listing `memory`, or
/// the v2 `0::` line.
pub fn memcg_path_from_proc(text: &str, version: Version) -> Option<String> {
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match version {
            Version::V1 => controllers.split(',').any(|c| c == "memory"),
            Version::V2 => controllers.is_empty(),
        };
        matches.then(|| path.to_owned())
    })
}

/// The memory cgroup of this process.
pub fn own_cgroup(hierarchy: &Hierarchy) -> Result<Cgroup, CgroupError> {
    Cgroup::of_pid(hierarchy, std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const UNIFIED: &str = "\
25 20 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn finds_the_memory_hierarchy() {
        let h = Hierarchy::from_mountinfo(HYBRID, |_| false).unwrap();
        assert_eq!(h.version, Version::V1);
        assert_eq!(h.mount, Path::new("/sys/fs/cgroup/memory"));
        // Hybrid with memory on v1 wins even if cgroup2 claimed memory.
        assert_eq!(
            Hierarchy::from_mountinfo(HYBRID, |_| true).unwrap().version,
            Version::V1
        );
        let v2 = Hierarchy::from_mountinfo(UNIFIED, |_| true).unwrap();
        assert_eq!(v2.version, Version::V2);
        assert_eq!(v2.mount, Path::new("/sys/fs/cgroup"));
        assert!(matches!(
            Hierarchy::from_mountinfo(UNIFIED, |_| false),
            Err(CgroupError::NoMemoryController)
        ));
    }

    #[test]
    fn a_later_mount_at_the_same_place_wins() {
        // runc's own view of the container's cgroup, then the node's /sys/fs/cgroup bound
        // over it (a hostPath volume): the node's is what the container sees.
        let text = "\
700 690 0:32 /kubepods/pod1/c1 /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory
710 690 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
711 710 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
720 690 0:32 / /host/memory rw,relatime - cgroup cgroup rw,memory
";
        let h = Hierarchy::from_mountinfo(text, |_| false).unwrap();
        assert_eq!(h.mount, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(h.mount_root, "/");
        let own = Hierarchy::from_mountinfo(text.lines().next().unwrap(), |_| false).unwrap();
        assert_eq!(own.mount_root, "/kubepods/pod1/c1");
    }

    #[test]
    fn resolves_both_path_forms() {
        let h = Hierarchy::at(Version::V1, "/sys/fs/cgroup/memory");
        let a = Cgroup::locate(&h, "/kubepods/pod1").unwrap();
        let b = Cgroup::locate(&h, "/sys/fs/cgroup/memory/kubepods/pod1/").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.dir, Path::new("/sys/fs/cgroup/memory/kubepods/pod1"));
        assert_eq!(
            Cgroup::locate(&h, "/sys/fs/cgroup/memory").unwrap().path,
            "/"
        );
        assert!(matches!(
            Cgroup::locate(&h, "/sys/fs/cgroup/cpu/x"),
            Err(CgroupError::OutsideMount { .. })
        ));
        assert!(matches!(
            Cgroup::locate(&h, "/a/../b"),
            Err(CgroupError::Dots(_))
        ));
        assert!(matches!(
            Cgroup::locate(&h, "/a/./b"),
            Err(CgroupError::Dots(_))
        ));
        assert!(matches!(
            Cgroup::locate(&h, "a/b"),
            Err(CgroupError::Relative(_))
        ));
        assert!(matches!(Cgroup::locate(&h, ""), Err(CgroupError::Empty(_))));
        assert_eq!(a.parent().unwrap().path, "/kubepods");
        assert_eq!(a.parent().unwrap().parent().unwrap().path, "/");
        assert!(a.is_within(&a.parent().unwrap()));
        assert!(!a.parent().unwrap().is_within(&a));
        let sibling = Cgroup::locate(&h, "/kubepods/pod10").unwrap();
        assert!(!sibling.is_within(&a));
    }

    #[test]
    fn resolves_inside_a_container_view() {
        // A container that sees only its pod's subtree mounted at /sys/fs/cgroup.
        let h = Hierarchy {
            version: Version::V2,
            mount: PathBuf::from("/sys/fs/cgroup"),
            mount_root: "/kubepods/pod1".to_owned(),
        };
        let c = Cgroup::locate(&h, "/kubepods/pod1/ctr").unwrap();
        assert_eq!(c.dir, Path::new("/sys/fs/cgroup/ctr"));
        assert!(Cgroup::locate(&h, "/kubepods/pod2").is_err());
        assert_eq!(
            Cgroup::locate(&h, "/sys/fs/cgroup/ctr").unwrap().path,
            "/kubepods/pod1/ctr"
        );
    }

    #[test]
    fn reads_proc_pid_cgroup() {
        let v1 = "9:name=systemd:/\n4:memory:/process_api/9e25\n0::/\n";
        assert_eq!(
            memcg_path_from_proc(v1, Version::V1).as_deref(),
            Some("/process_api/9e25")
        );
        assert_eq!(memcg_path_from_proc(v1, Version::V2).as_deref(), Some("/"));
        assert_eq!(
            memcg_path_from_proc("4:cpu,memory:/x\n", Version::V1).as_deref(),
            Some("/x")
        );
        assert_eq!(memcg_path_from_proc("garbage", Version::V1), None);
    }

    #[test]
    fn parses_flat_keyed_files() {
        let m = parse_flat_keyed("oom_kill_disable 0\nunder_oom 1\noom_kill 3\nbad line\n");
        assert_eq!(m["oom_kill"], 3);
        assert_eq!(m["under_oom"], 1);
        assert!(!m.contains_key("bad"));
    }

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/trail\04"), r"/trail\04");
    }
}
