//! One run per target: an exclusive `flock(2)` on the target cgroup's directory.
//!
//! The lock needs no file of its own (nothing to clean up, nothing to leave behind), works for
//! any user who can open the directory, and is released by the kernel when the holder dies,
//! `kill -9` included. The holder's pid is read back from `/proc/locks` to name it.

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd as _, linux::fs::MetadataExt as _},
    path::Path,
};

/// Another process holds the target.
#[derive(Debug, thiserror::Error)]
#[error("{}", busy_message(.target, *.holder))]
pub struct Busy {
    /// The target cgroup's path.
    pub target: String,
    /// The holder's pid, when /proc/locks names it.
    pub holder: Option<u32>,
}

fn busy_message(target: &str, holder: Option<u32>) -> String {
    let who = holder.map_or_else(
        || "another memstress run".to_owned(),
        |pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .split('\0')
                        .filter(|a| !a.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            if cmdline.is_empty() {
                format!("memstress pid {pid}")
            } else {
                format!("memstress pid {pid} ({cmdline})")
            }
        },
    );
    format!("{target} is already the target of {who}; stop it first, or pick another cgroup")
}

/// Holds the lock until dropped (or the process dies).
#[derive(Debug)]
pub struct TargetLock {
    _dir: File,
}

impl TargetLock {
    /// The locked directory's descriptor: a process that inherits it holds the same lock
    /// (the cleanup guard of a `run --throttle`, until it has restored `memory.high`).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd as _;
        self._dir.as_fd()
    }
}

/// Takes the lock on `dir` (the target cgroup's directory), without waiting.
pub fn lock(dir: &Path, target: &str) -> Result<TargetLock, LockError> {
    let file = File::open(dir).map_err(|source| LockError::Open {
        path: dir.display().to_string(),
        source,
    })?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let meta = file.metadata().ok();
            let holder = meta.and_then(|m| {
                let locks = std::fs::read_to_string("/proc/locks").ok()?;
                holder_in(&locks, m.st_dev(), m.st_ino())
            });
            return Err(LockError::Busy(Busy {
                target: target.to_owned(),
                holder,
            }));
        }
        return Err(LockError::Open {
            path: dir.display().to_string(),
            source: err,
        });
    }
    Ok(TargetLock { _dir: file })
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone holds it.
    #[error(transparent)]
    Busy(Busy),
    /// The directory could not be opened or locked.
    #[error("cannot lock {path}")]
    Open {
        /// The directory.
        path: String,
        /// Why.
        source: io::Error,
    },
}

/// The pid holding an exclusive flock on (`dev`, `ino`), from the text of /proc/locks
/// (`1: FLOCK  ADVISORY  WRITE 15870 00:20:18179 0 EOF`; device numbers in hex).
pub fn holder_in(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    locks.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_, kind, _, _, pid, id) = (
            f.next()?,
            f.next()?,
            f.next()?,
            f.next()?,
            f.next()?,
            f.next()?,
        );
        if kind != "FLOCK" {
            return None;
        }
        let mut parts = id.split(':');
        let ma = u32::from_str_radix(parts.next()?, 16).ok()?;
        let mi = u32::from_str_radix(parts.next()?, 16).ok()?;
        let inode: u64 = parts.next()?.parse().ok()?;
        (ma == major && mi == minor && inode == ino).then(|| pid.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_holder_in_proc_locks() {
        let locks = "1: FLOCK  ADVISORY  WRITE 15858 fe:00:5620051 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 99 00:20:18179 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 15870 00:20:18179 0 EOF\n\
                     3: -> FLOCK  ADVISORY  WRITE 15999 00:20:18179 0 EOF\n";
        assert_eq!(holder_in(locks, libc::makedev(0, 0x20), 18179), Some(15870));
        assert_eq!(
            holder_in(locks, libc::makedev(0xfe, 0), 5620051),
            Some(15858)
        );
        assert_eq!(holder_in(locks, libc::makedev(0, 0x20), 1), None);
        assert_eq!(holder_in("garbage\n\n1:", 0, 0), None);
    }

    #[test]
    fn a_second_lock_is_refused_and_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("memstress-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = lock(&dir, "/t").unwrap();
        match lock(&dir, "/t") {
            Err(LockError::Busy(b)) => {
                assert_eq!(b.holder, Some(std::process::id()));
                assert!(b.to_string().contains(&std::process::id().to_string()));
            }
            other => panic!("second lock: {other:?}"),
        }
        drop(first);
        assert!(lock(&dir, "/t").is_ok());
        std::fs::remove_dir(&dir).unwrap();
    }
}
