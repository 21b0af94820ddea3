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

    /// Waits for one of the signals.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}
