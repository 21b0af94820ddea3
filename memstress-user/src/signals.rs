//! Ending cleanly on Ctrl-C and SIGTERM.

use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Resolves when SIGINT, SIGTERM or SIGHUP arrives.
#[derive(Debug)]
pub struct Shutdown {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Shutdown {
    /// Installs the handlers.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for one of the signals; returns which.
    pub async fn recv(&mut self) -> Stop {
        tokio::select! {
            _ = self.int.recv() => Stop::Sigint,
            _ = self.term.recv() => Stop::Sigterm,
            _ = self.hup.recv() => Stop::Sighup,
        }
    }
}

/// The signal that stopped memstress.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Stop {
    /// Ctrl-C.
    Sigint,
    /// `kill`, a container runtime stopping its container.
    Sigterm,
    /// The terminal went away.
    Sighup,
}

impl Stop {
    /// The signal's number.
    pub fn number(self) -> i32 {
        match self {
            Self::Sigint => libc::SIGINT,
            Self::Sigterm => libc::SIGTERM,
            Self::Sighup => libc::SIGHUP,
        }
    }

    /// The exit code of a command interrupted before it did what was asked: 128 + the
    /// signal's number, as a shell reports a process killed by it (130 for SIGINT, 143 for
    /// SIGTERM).
    pub fn exit_code(self) -> i32 {
        128 + self.number()
    }

    /// `SIGINT`, `SIGTERM`, `SIGHUP`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sigint => "SIGINT",
            Self::Sigterm => "SIGTERM",
            Self::Sighup => "SIGHUP",
        }
    }
}
