//! memstress: cgroup-scoped memory pressure, with the kernel's own account of every OOM kill.
//!
//! The `memstress` binary is a thin layer over this library. One module per concept:
//! [`cgroup`] (memory cgroups v1/v2), [`size`] (sizes as users write them), [`btf`] and
//! [`layout`] (kernel struct offsets from BTF), [`tracefs`] (tracepoint formats), [`probe`]
//! (loading and attaching the BPF programs), [`event`] (decoding what they report),
//! [`points`] and [`explain`] (why this victim), [`report`] (text and JSON output), [`stressor`] (the worker that holds memory),
//! [`spawn`] (starting workers inside a cgroup), [`janitor`] (cleanup that survives
//! SIGKILL), [`target`] and [`run`] (the injector), [`watch`] (the observer).

pub mod btf;
pub mod cgroup;
pub mod cli;
pub mod event;
pub mod exit;
pub mod explain;
pub mod janitor;
pub mod layout;
pub mod points;
pub mod predict;
pub mod privilege;
pub mod probe;
pub mod report;
pub mod run;
pub mod signals;
pub mod size;
pub mod spawn;
pub mod stressor;
pub mod target;
pub mod tracefs;
pub mod watch;

/// An error and all its causes on one line: "outer: cause: root cause".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
