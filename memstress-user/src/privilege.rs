//! What this process is allowed to do: effective capabilities, read from /proc/self/status.

use std::fs;

/// `CAP_SYS_ADMIN`
pub const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_SYS_RESOURCE` (needed to lower `oom_score_adj` below its current value).
pub const CAP_SYS_RESOURCE: u32 = 24;
/// `CAP_PERFMON`
pub const CAP_PERFMON: u32 = 38;
/// `CAP_BPF`
pub const CAP_BPF: u32 = 39;

/// The effective capability set of this process (0 when it cannot be read).
pub fn effective() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| parse_cap(&status, "CapEff:"))
        .unwrap_or(0)
}

/// Reads a hex capability mask such as `CapEff:\t000001ffffffffff`.
pub fn parse_cap(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Whether `caps` includes capability `cap`.
pub fn has(caps: u64, cap: u32) -> bool {
    caps & (1 << cap) != 0
}

/// Whether this process may load and attach tracing BPF programs.
pub fn can_trace(caps: u64) -> bool {
    has(caps, CAP_SYS_ADMIN) || (has(caps, CAP_BPF) && has(caps, CAP_PERFMON))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_masks() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000000000\n";
        let caps = parse_cap(status, "CapEff:").unwrap();
        assert!(has(caps, CAP_BPF) && has(caps, CAP_PERFMON));
        assert!(can_trace(caps));
        assert!(!can_trace(parse_cap(status, "CapInh:").unwrap()));
        assert!(can_trace(1 << CAP_SYS_ADMIN));
        assert_eq!(parse_cap("nothing", "CapEff:"), None);
    }
}
