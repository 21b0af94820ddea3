//! What can go wrong, as one type whose variants keep their sources (the stages' own error
//! types, aya's), and which decides the exit code.

use std::io;

use crate::{
    exit,
    privilege::UserError,
    probe::ProbeError,
    target::{TargetError, cgroup::CgroupError, kube::KubeError, lock::LockError},
};

/// An error of memstress's library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request that cannot work as given (exit code 2, like a command-line usage error).
    #[error("{0}")]
    Usage(String),
    /// A request this machine cannot serve as given (a percent without a limit anywhere, a
    /// size past what the node has): exit code 1.
    #[error("{0}")]
    Refused(String),
    /// A memory cgroup could not be read or changed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The target could not be resolved.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A Kubernetes pod or container could not be resolved.
    #[error(transparent)]
    Kube(#[from] KubeError),
    /// Another run holds the target (exit code 5), or the lock failed.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The BPF programs could not start.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// Stressors cannot run as asked.
    #[error(transparent)]
    User(#[from] UserError),
    /// An input adapter refused its input (a StressChaos file): its own error type, kept.
    #[error(transparent)]
    Input(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A system call or file failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// An I/O error, with what was being done.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) => exit::USAGE,
            Self::User(e) if e.is_usage() => exit::USAGE,
            Self::Lock(LockError::Busy(_)) => exit::BUSY,
            _ => exit::FAILURE,
        }
    }
}

/// Adds what was being done to an I/O error.
pub trait Context<T> {
    /// Wraps the error with `what`.
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> Context<T> for Result<T, io::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::io(what(), source))
    }
}

/// `Result` with memstress's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
