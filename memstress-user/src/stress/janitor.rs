//! The janitor: removes what a run created even when the controller is SIGKILLed.
//!
//! Stressors die with the controller on their own (`PR_SET_PDEATHSIG`), but a cgroup or a
//! file outlives any process. So before creating anything, the controller starts the janitor
//! (this executable as `memstress __janitor`, in a session of its own, outside the target)
//! and writes each thing it is about to create on the janitor's stdin, one line each:
//!
//! * `cgroup <version> <dir>`: kill everything in it and remove it.
//! * `file <path>`: unlink it.
//! * `high <original> <set> <dir>`: write `<original>` (bytes or `max`) back to the cgroup's
//!   `memory.high`, if it still holds `<set>`, what the controller wrote (`run --throttle`;
//!   recorded before the controller writes it). A value someone else wrote since is left.
//! * `done`: the controller cleaned up itself; nothing to do.
//!
//! When its stdin reaches end-of-file (the controller exited, however it exited) without a
//! `done`, the janitor removes the recorded things, newest first, and exits.
//!
//! A janitor started with [`Janitor::start_holding`] inherits the target's lock (the same
//! open file description, so the same `flock(2)`): the target stays locked until the
//! janitor has restored it and exits, and no other run can read a throttled `memory.high` as
//! its original in between.

use std::{
    fs::File,
    io::{self, BufRead as _, Write as _},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    stress::{
        spawn::{self, Spec, Stdio},
        stressor::set_comm,
    },
    target::cgroup::{Cgroup, Hierarchy, Version},
};

/// A running janitor, fed by the controller.
#[derive(Debug)]
pub struct Janitor {
    manifest: File,
}

/// One thing to clean up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A cgroup directory.
    Cgroup(Version, PathBuf),
    /// A file.
    File(PathBuf),
    /// A cgroup's `memory.high` to restore: the original (`None`: `max`), the value the
    /// controller set, the cgroup's directory.
    High {
        /// What it was before the run.
        original: Option<u64>,
        /// What the run set.
        set: u64,
        /// The cgroup's directory.
        dir: PathBuf,
    },
    /// All clean.
    Done,
}

impl Entry {
    /// The manifest line.
    pub fn line(&self) -> String {
        match self {
            Self::Cgroup(v, dir) => format!("cgroup {} {}\n", v.number(), dir.display()),
            Self::File(path) => format!("file {}\n", path.display()),
            Self::High { original, set, dir } => format!(
                "high {} {set} {}\n",
                original.map_or_else(|| "max".to_owned(), |b| b.to_string()),
                dir.display()
            ),
            Self::Done => "done\n".to_owned(),
        }
    }

    /// Parses a manifest line.
    pub fn parse(line: &str) -> Option<Self> {
        let line = line.trim_end_matches('\n');
        if line == "done" {
            return Some(Self::Done);
        }
        if let Some(rest) = line.strip_prefix("file ") {
            return Some(Self::File(PathBuf::from(rest)));
        }
        if let Some(rest) = line.strip_prefix("high ") {
            let mut parts = rest.splitn(3, ' ');
            let original = match parts.next()? {
                "max" => None,
                bytes => Some(bytes.parse().ok()?),
            };
            let set = parts.next()?.parse().ok()?;
            let dir = PathBuf::from(parts.next().filter(|d| !d.is_empty())?);
            return Some(Self::High { original, set, dir });
        }
        let rest = line.strip_prefix("cgroup ")?;
        let (version, dir) = rest.split_once(' ')?;
        let version = match version {
            "1" => Version::V1,
            "2" => Version::V2,
            _ => return None,
        };
        Some(Self::Cgroup(version, PathBuf::from(dir)))
    }
}

impl Janitor {
    /// Starts the janitor.
    pub fn start() -> io::Result<Self> {
        let mut spec = Spec::new(
            Path::new(spawn::SELF_EXE),
            vec!["memstress".to_owned(), "__janitor".to_owned()],
        );
        spec.die_with_parent = false;
        spec.new_session = true;
        spec.stdin = Stdio::Pipe;
        spec.stdout = Stdio::Null;
        spec.stderr = Stdio::Inherit;
        let mut child = spawn::spawn(&spec)?;
        let manifest = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("janitor has no stdin"))?;
        child.disown();
        Ok(Self { manifest })
    }

    /// Starts the janitor holding `lock` (the target's lock, see [`crate::target::lock`]):
    /// it inherits the same open file description, so the lock is released only once both
    /// the controller and the janitor are gone.
    pub fn start_holding(lock: std::os::fd::BorrowedFd<'_>) -> io::Result<Self> {
        use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
        // dup(2) leaves FD_CLOEXEC clear on the copy: the janitor inherits it across exec.
        // Nothing else is started meanwhile (the run's workers start later).
        // SAFETY: dup of a valid borrowed fd; the new fd is owned by nobody else.
        let copy = unsafe { libc::dup(lock.as_raw_fd()) };
        if copy < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `copy` was just returned by dup and is ours alone.
        let copy = unsafe { OwnedFd::from_raw_fd(copy) };
        let started = Self::start();
        drop(copy);
        started
    }

    /// Records something about to be created. Call *before* creating it.
    pub fn record(&mut self, entry: &Entry) -> io::Result<()> {
        self.manifest.write_all(entry.line().as_bytes())
    }

    /// Tells the janitor everything was cleaned up; it exits without touching anything.
    pub fn dismiss(mut self) {
        let _ = self.record(&Entry::Done);
    }
}

/// The janitor process's main. Returns the exit code.
pub fn janitor_main() -> i32 {
    set_comm("memstress-clean");
    // The janitor must outlive Ctrl-C and a `kill` of the controller's process group.
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE] {
        // SAFETY: setting a signal to SIG_IGN has no memory-safety preconditions.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    let mut entries = Vec::new();
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match Entry::parse(&line) {
            Some(Entry::Done) => return 0,
            Some(entry) => entries.push(entry),
            None => eprintln!("memstress janitor: ignoring manifest line `{line}`"),
        }
    }
    let mut failed = false;
    for entry in entries.iter().rev() {
        if let Err(e) = clean(entry) {
            eprintln!("memstress janitor: {e}");
            failed = true;
        }
    }
    i32::from(failed)
}

/// Removes one recorded thing (already gone is fine).
pub fn clean(entry: &Entry) -> io::Result<()> {
    match entry {
        Entry::Cgroup(version, dir) => {
            let Some(parent) = dir.parent() else {
                return Ok(());
            };
            // The hierarchy's mount does not matter for removal: only the directory does.
            let hierarchy = Hierarchy::at(*version, parent);
            let name = dir
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| io::Error::other(format!("bad cgroup dir {}", dir.display())))?;
            let cgroup = Cgroup {
                path: format!("/{name}"),
                dir: dir.clone(),
                hierarchy,
            };
            cgroup
                .remove(Duration::from_secs(10))
                .map_err(|e| io::Error::other(crate::error_chain(&e)))
        }
        Entry::File(path) => match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
        Entry::High { original, set, dir } => restore_high(dir, *original, *set).map(|_| ()),
        Entry::Done => Ok(()),
    }
}

/// What [`restore_high`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restored {
    /// The original is back.
    Restored,
    /// The cgroup is gone: nothing to restore.
    Gone,
    /// Someone else wrote `memory.high` since the run set it (`Some`: to that, `None`: `max`);
    /// their value is left.
    ChangedBy(Option<u64>),
}

/// Writes `original` (`None`: `max`) back to `dir`'s `memory.high` if it still holds `set`.
pub fn restore_high(dir: &Path, original: Option<u64>, set: u64) -> io::Result<Restored> {
    let file = dir.join("memory.high");
    let now = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Restored::Gone),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", file.display()))),
    };
    let now = match now.trim() {
        "max" => None,
        bytes => bytes.parse::<u64>().ok(),
    };
    if now != Some(set) {
        eprintln!(
            "memstress: {}: memory.high is {}, not the {set} memstress set: someone else \
             changed it; left as it is (it was {} before the run)",
            dir.display(),
            now.map_or_else(|| "max".to_owned(), |b| b.to_string()),
            original.map_or_else(|| "max".to_owned(), |b| b.to_string())
        );
        return Ok(Restored::ChangedBy(now));
    }
    let value = original.map_or_else(|| "max".to_owned(), |b| b.to_string());
    match std::fs::write(&file, &value) {
        Ok(()) => Ok(Restored::Restored),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Restored::Gone),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot restore {} to {value}: {e}", file.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lines_round_trip() {
        for entry in [
            Entry::Cgroup(Version::V1, PathBuf::from("/sys/fs/cgroup/memory/a b")),
            Entry::Cgroup(Version::V2, PathBuf::from("/sys/fs/cgroup/x")),
            Entry::File(PathBuf::from("/tmp/f")),
            Entry::High {
                original: None,
                set: 64 << 20,
                dir: PathBuf::from("/sys/fs/cgroup/a b"),
            },
            Entry::High {
                original: Some(1 << 30),
                set: 4096,
                dir: PathBuf::from("/x"),
            },
            Entry::Done,
        ] {
            assert_eq!(Entry::parse(&entry.line()), Some(entry));
        }
        assert_eq!(Entry::parse("cgroup 3 /x"), None);
        assert_eq!(Entry::parse("rm -rf /"), None);
        assert_eq!(Entry::parse("high max 12"), None);
        assert_eq!(Entry::parse("high 1x 12 /x"), None);
    }

    #[test]
    fn restores_memory_high_only_where_the_run_left_it() {
        let dir = std::env::temp_dir().join(format!("memstress-high-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("memory.high");
        std::fs::write(&file, "67108864\n").unwrap();
        assert_eq!(
            restore_high(&dir, None, 64 << 20).unwrap(),
            Restored::Restored
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "max");
        // Someone else's value is left.
        std::fs::write(&file, "1048576\n").unwrap();
        assert_eq!(
            restore_high(&dir, None, 64 << 20).unwrap(),
            Restored::ChangedBy(Some(1 << 20))
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "1048576\n");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(restore_high(&dir, None, 1).unwrap(), Restored::Gone);
    }
}
