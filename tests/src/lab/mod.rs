//! The lab: memstress scenarios run end to end, on this machine's kernel or on other real
//! kernels booted under qemu (`cargo xtask lab`), with reports a person can read.

pub mod app;
pub mod expect;
pub mod lines;
pub mod report;
pub mod runner;
pub mod scenario;
