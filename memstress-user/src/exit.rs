//! memstress's exit codes (documented in `memstress --help` and the README).

/// The run did what was asked (an OOM kill of a stressor under `--on-oom report` is a result,
/// not a failure).
pub const SUCCESS: i32 = 0;
/// An error: bad input, missing privileges or kernel support, a stressor that failed.
pub const FAILURE: i32 = 1;
/// Command-line usage error (clap's own code).
pub const USAGE: i32 = 2;
/// `--on-oom stop`: a stressor was OOM-killed and the run ended there.
pub const OOM_STOP: i32 = 3;
/// The target cgroup disappeared during the run.
pub const TARGET_GONE: i32 = 4;
/// Another memstress run already targets that cgroup.
pub const BUSY: i32 = 5;
