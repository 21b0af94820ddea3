//! The janitor: removes what a run created even when the controller is SIGKILLed.
//!
//! Stressors die with the controller on their own (`PR_SET_PDEATHSIG`), but a cgroup or a
//! file outlives any process. So before creating anything, the controller starts the janitor
//! (this executable as `memstress __janitor`, in a session of its own, outside the target)
//! and writes each thing it is about to create on the janitor's stdin, one line each:
//!
//! * `cgroup <version> <dir>`: kill everything in it and remove it.
//! * `file <path>`: unlink it.
//! * `done`: the controller cleaned up itself; nothing to do.
//!
//! When its stdin reaches end-of-file (the controller exited, however it exited) without a
//! `done`, the janitor removes the recorded things, newest first, and exits.

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
    /// All clean.
    Done,
}

impl Entry {
    /// The manifest line.
    pub fn line(&self) -> String {
        match self {
            Self::Cgroup(v, dir) => format!("cgroup {} {}\n", v.number(), dir.display()),
            Self::File(path) => format!("file {}\n", path.display()),
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
        Entry::Done => Ok(()),
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
            Entry::Done,
        ] {
            assert_eq!(Entry::parse(&entry.line()), Some(entry));
        }
        assert_eq!(Entry::parse("cgroup 3 /x"), None);
        assert_eq!(Entry::parse("rm -rf /"), None);
    }
}
