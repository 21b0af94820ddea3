//! The privileged integration tests, as one test binary (it compiles once; each file was a
//! binary of its own, and CI spent most of this phase linking them). Each module is one
//! concern; `cargo xtask test` runs them as root, one at a time (they share dmesg and
//! memory). See `memstress_tests` for the helpers.

mod cli;
mod containers;
mod deploy;
mod events;
mod explain;
mod faults;
mod follow_real;
mod forecast;
mod input;
mod k8s;
mod kill;
mod metrics;
mod replay;
mod run;
mod runtime;
mod security;
mod sidecar;
mod watch;
