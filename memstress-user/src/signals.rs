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
            _ = self.int.recv() => Stop(libc::SIGINT),
            _ = self.term.recv() => Stop(libc::SIGTERM),
            _ = self.hup.recv() => Stop(libc::SIGHUP),
        }
    }
}

/// The signal that stopped memstress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stop(pub i32);

impl Stop {
    /// The exit code of a command interrupted before it did what was asked: 128 + the
    /// signal's number, as a shell reports a process killed by it (130 for SIGINT, 143 for
    /// SIGTERM).
    pub fn exit_code(self) -> i32 {
        128 + self.0
    }

    /// `SIGINT`, `SIGTERM`, `SIGHUP`.
    pub fn name(self) -> &'static str {
        match self.0 {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            libc::SIGHUP => "SIGHUP",
            _ => "a signal",
        }
    }
}

impl serde::Serialize for Stop {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}
