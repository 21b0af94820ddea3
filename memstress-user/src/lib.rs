//! memstress: cgroup-scoped memory pressure, with the kernel's own account of every OOM kill.
//!
//! The `memstress` binary is a thin layer over this library. One module per concept:
//! [`cgroup`] (memory cgroups v1/v2), [`size`] (sizes as users write them), [`btf`] and
//! [`layout`] (kernel struct offsets from BTF), [`tracefs`] (tracepoint formats), [`probe`]
//! (loading and attaching the BPF programs), [`event`] (decoding what they report),
//! [`points`] and [`explain`] (why this victim), [`report`] (text and JSON output), [`metrics`] (the Prometheus endpoint of `watch`), [`stressor`] (the worker that holds memory),
//! [`spawn`] (starting workers inside a cgroup), [`janitor`] (cleanup that survives
//! SIGKILL), [`target`] and [`run`] (the injector), [`kube`] (Kubernetes pods and containers
//! in the cgroup tree), [`stresschaos`] (Chaos Mesh's StressChaos read as a run), [`watch`]
//! (the observer). [`abi`] is the
//! `#[repr(C)]` record layout shared with the BPF programs, and the programs' names.

pub use memstress_ebpf as abi;

pub mod btf;
pub mod cgroup;
pub mod cli;
pub mod event;
pub mod exit;
pub mod explain;
pub mod fixture;
pub mod janitor;
pub mod kube;
pub mod layout;
pub mod lock;
pub mod metrics;
pub mod points;
pub mod predict;
pub mod privilege;
pub mod probe;
pub mod report;
pub mod run;
pub mod signals;
pub mod size;
pub mod spawn;
pub mod stresschaos;
pub mod stressor;
pub mod target;
pub mod tracefs;
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
