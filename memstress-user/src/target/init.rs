//! A container's init process: how memstress sees a container end the way its runtime does.
//!
//! A container ends when its init process exits; its cgroup outlives it until the runtime
//! removes it, and the runtime cannot while anything else is in it. So for a container target
//! memstress finds the init (from the runtime's state files, else the process in the target
//! cgroup that is PID 1 of a PID namespace of its own), watches it through a pidfd, and opens
//! its PID namespace, so that the stressors can be started in it: the kernel then kills them
//! with the container's own processes when the init exits.

use std::{
    fs,
    io::{self, Read as _},
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::Path,
};

use tokio::io::unix::AsyncFd;

use crate::{
    stress::spawn,
    target::{
        cgroup::{self, Cgroup},
        kube::RuntimeState,
    },
};

/// Where an init process was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A runtime's state file (its path).
    StateFile(String),
    /// The target cgroup: the process that is PID 1 of a PID namespace of its own.
    Cgroup,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::StateFile(path) => write!(f, "{path}"),
            Self::Cgroup => f.write_str("the container's cgroup (PID 1 of its PID namespace)"),
        }
    }
}

/// The init process of container `id` (if known) whose cgroup is `cgroup`: the runtime's
/// record when it names a process in that cgroup, else the process in it that is PID 1 of a
/// PID namespace other than memstress's.
pub fn find(state: &RuntimeState, id: Option<&str>, cgroup: &Cgroup) -> Option<(u32, Source)> {
    if let Some((pid, path)) = id.and_then(|id| state.init_pid(id))
        && in_cgroup(pid, cgroup)
    {
        return Some((pid, Source::StateFile(path.display().to_string())));
    }
    let procs = fs::read_to_string(cgroup.procs_file()).ok()?;
    procs
        .lines()
        .filter_map(|l| l.trim().parse::<u32>().ok())
        .find(|&pid| is_ns_init(pid))
        .map(|pid| (pid, Source::Cgroup))
}

/// Whether process `pid` is in `cgroup` (its memory cgroup, as /proc says).
pub fn in_cgroup(pid: u32, cgroup: &Cgroup) -> bool {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|text| cgroup::memcg_path_from_proc(&text, cgroup.hierarchy.version))
        .is_some_and(|path| path == cgroup.path)
}

/// Whether `pid` is PID 1 of a nested PID namespace (`NSpid:` ends in 1, after its pid here).
fn is_ns_init(pid: u32) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .is_some_and(nested_init)
}

/// `NSpid:` fields: the pid in each PID namespace, outermost first.
fn nested_init(fields: &str) -> bool {
    let ids: Vec<&str> = fields.split_whitespace().collect();
    ids.len() >= 2 && ids.last() == Some(&"1")
}

/// Whether `cgroup` holds no process (a container's cgroup before its init joined it).
pub fn is_empty(cgroup: &Cgroup) -> bool {
    fs::read_to_string(cgroup.procs_file()).is_ok_and(|p| p.trim().is_empty())
}

/// A container's init process, watched.
#[derive(Debug)]
pub struct Init {
    /// Its pid.
    pub pid: u32,
    /// Where it was found.
    pub source: Source,
    pidfd: AsyncFd<OwnedFd>,
    /// Its PID namespace, when it is not memstress's.
    pid_ns: Option<OwnedFd>,
    /// Why its PID namespace could not be opened (reading `/proc/PID/ns/pid` of a process
    /// with capabilities memstress lacks needs CAP_SYS_PTRACE).
    pub pid_ns_error: Option<io::Error>,
}

impl Init {
    /// Watches init `pid` of `cgroup`: `Ok(None)` when it is no longer there (exited, or
    /// the pid is someone else's now).
    pub fn watch(pid: u32, source: Source, cgroup: &Cgroup) -> io::Result<Option<Self>> {
        let pidfd = match spawn::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut pid_ns_error = None;
        let pid_ns = match fs::File::open(format!("/proc/{pid}/ns/pid")) {
            Ok(file) => {
                let own = fs::metadata("/proc/self/ns/pid")?;
                let theirs = file.metadata()?;
                ((own.ino(), own.dev()) != (theirs.ino(), theirs.dev())).then(|| file.into())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            // Watched all the same: a pidfd needs no permission.
            Err(e) => {
                pid_ns_error = Some(io::Error::new(
                    e.kind(),
                    format!("cannot open /proc/{pid}/ns/pid: {e}"),
                ));
                None
            }
        };
        // Checked after the pidfd was opened: if the process behind it is still running and
        // in the cgroup, the pidfd (and the namespace opened meanwhile) are the init's.
        if exited(pidfd.as_fd()) || !in_cgroup(pid, cgroup) {
            return Ok(None);
        }
        Ok(Some(Self {
            pid,
            source,
            // SAFETY: the pidfd is owned by the AsyncFd and stays open as long as it lives.
            pidfd: unsafe { AsyncFd::register(pidfd) }?,
            pid_ns,
            pid_ns_error,
        }))
    }

    /// Resolves when it has exited.
    pub async fn exited(&self) {
        loop {
            if exited(self.pidfd.get_ref().as_fd()) {
                return;
            }
            match self.pidfd.readable().await {
                Ok(mut guard) => guard.clear_ready(),
                // Cannot happen with a valid fd; never end a run for it.
                Err(_) => std::future::pending::<()>().await,
            }
        }
    }

    /// Its PID namespace, when it is not memstress's.
    pub fn pid_ns(&self) -> Option<BorrowedFd<'_>> {
        self.pid_ns.as_ref().map(|fd| fd.as_fd())
    }

    /// Gives up its PID namespace (the stressors are not started there).
    pub fn forget_pid_ns(&mut self) {
        self.pid_ns = None;
    }

    /// Its PID namespace, shared (for the stressors' spawns).
    pub fn share_pid_ns(&self) -> io::Result<Option<OwnedFd>> {
        self.pid_ns.as_ref().map(OwnedFd::try_clone).transpose()
    }
}

/// Whether the process behind `pidfd` has exited (its pidfd is readable).
fn exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid fd, without waiting.
    unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
}

/// Process `pid`'s `comm`, for messages.
pub fn comm(pid: u32) -> Option<String> {
    let mut text = String::new();
    fs::File::open(Path::new(&format!("/proc/{pid}/comm")))
        .ok()?
        .take(64)
        .read_to_string(&mut text)
        .ok()?;
    Some(text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_a_nested_pid_namespace_init() {
        assert!(nested_init("\t4242\t1"));
        assert!(nested_init("4242 17 1"));
        assert!(!nested_init("1"));
        assert!(!nested_init("4242"));
        assert!(!nested_init("4242 7"));
        assert!(!nested_init(""));
    }

    #[test]
    fn watches_a_process_and_sees_it_exit() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut child = std::process::Command::new("sleep")
                .arg("0.2")
                .spawn()
                .expect("sleep");
            let hierarchy = match cgroup::Hierarchy::discover() {
                Ok(h) => h,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            };
            let Ok(cg) = Cgroup::of_pid(&hierarchy, child.id()) else {
                let _ = child.kill();
                let _ = child.wait();
                return;
            };
            let init = Init::watch(child.id(), Source::Cgroup, &cg)
                .expect("watch")
                .expect("running");
            // In memstress's own PID namespace: nothing to join.
            assert!(init.pid_ns().is_none());
            let reaper = std::thread::spawn(move || child.wait());
            tokio::time::timeout(std::time::Duration::from_secs(5), init.exited())
                .await
                .expect("its exit is seen");
            let _ = reaper.join();
        });
    }
}
