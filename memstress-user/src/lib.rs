//! memstress: cgroup-scoped memory pressure, with the kernel's own account of every OOM kill.
//!
//! The `memstress` binary is a thin layer over this library, which is a pipeline; each stage
//! is a folder whose module doc says what enters it and what leaves:
//!
//! ```text
//!  input ──▶ target ──▶ stress ──────────────▶ output
//!  (flags,    (which     (plan, stressors      (text and JSON lines,
//!   files)     cgroup)    in the cgroup)        metrics)
//!                           │                     ▲
//!                  probe ──▶ explain ─────────────┘
//!                  (BPF on    (records → why this
//!                   the OOM    victim)
//!                   path)
//! ```
//!
//! * [`input`]: the command line and a StressChaos file, lowered into one set of options.
//! * [`target`]: the memory cgroup to stress: v1/v2 hierarchies, Kubernetes pods and
//!   containers, a sandbox to create, the lock that keeps one run per target.
//! * [`stress`]: the plan (exact sizes), the stressor processes, the run's event loop.
//! * [`probe`]: the BPF programs, loaded with offsets read from the running kernel's BTF.
//! * [`explain`]: ring-buffer records decoded and joined into explained OOM kills.
//! * [`forecast`]: the next OOM kill of a domain, forecast from its samples and /proc, and
//!   scored against each kill the probes report.
//! * [`replay`]: an incident from the kernel's OOM report (dmesg, the journal): parsed, and
//!   its tasks ranked with the kernel's formula.
//! * [`output`]: what the user reads: typed lines as text or JSON, and metrics.
//!
//! [`observer`] is the loop both commands share (probes → records → explanations);
//! [`watch`] is the observing command. [`abi`] is the `#[repr(C)]` record layout shared with
//! the BPF programs, and the programs' names.

pub use memstress_ebpf as abi;

pub use self::error::{Error, Result};

pub mod cli;
pub mod error;
pub mod exit;
pub mod explain;
pub mod forecast;
pub mod input;
pub mod observer;
pub mod output;
pub mod privilege;
pub mod probe;
pub mod replay;
pub mod signals;
pub mod size;
pub mod spec;
pub mod stress;
pub mod target;
pub mod watch;

/// An error and all its causes on one line: "outer: cause: root cause".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        // aya's load errors end in "Verifier output: " and the log, which can be empty.
        let text = text.trim_end();
        let text = text
            .strip_suffix("Verifier output:")
            .map_or(text, |t| t.trim_end().trim_end_matches('.'));
        // Many errors repeat their source in their own message: say each part once.
        if !text.is_empty() && !parts.iter().any(|p| p.contains(text)) {
            parts.push(text.to_owned());
        }
        next = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use std::{error::Error, fmt, io};

    #[derive(Debug)]
    struct Wrap(&'static str, io::Error);
    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.1)
        }
    }

    #[test]
    fn error_chain_says_each_part_once() {
        let denied = || io::Error::from_raw_os_error(1);
        let e = Wrap(
            "the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1). Verifier output: ",
            denied(),
        );
        assert_eq!(
            super::error_chain(&e),
            "the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1)"
        );
        let e = Wrap("cannot open memory.max", denied());
        assert_eq!(
            super::error_chain(&e),
            "cannot open memory.max: Operation not permitted (os error 1)"
        );
    }
}
