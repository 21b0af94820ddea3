//! Pressure stall information for memory: the share of time tasks waited on memory (reclaim,
//! refaults, throttling). A cgroup's own on v2 (`memory.pressure`), the node's
//! (`/proc/pressure/memory`) on any kernel built with PSI and not booted with `psi=0`.

use std::{fs, path::Path};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cgroup::{Cgroup, Version};

/// One reading of a memory pressure file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Psi {
    /// `some`: share of the last 10 s in which at least one task waited on memory, percent.
    pub some_avg10: f64,
    /// The same over 60 s.
    pub some_avg60: f64,
    /// `full`: share of the last 10 s in which every non-idle task waited on memory at once.
    pub full_avg10: f64,
    /// The same over 60 s.
    pub full_avg60: f64,
    /// Total time with some task waiting, µs (since boot, or since the cgroup was made).
    pub some_total_us: u64,
    /// Total time with every task waiting, µs.
    pub full_total_us: u64,
}

impl Psi {
    /// Parses a pressure file (`some avg10=… avg60=… avg300=… total=…` and a `full` line);
    /// `None` without a `some` line.
    pub fn parse(text: &str) -> Option<Self> {
        let mut psi = Self::default();
        let mut some = false;
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let kind = words.next()?;
            let mut avg10 = 0.0;
            let mut avg60 = 0.0;
            let mut total = 0;
            for word in words {
                let (key, value) = word.split_once('=')?;
                match key {
                    "avg10" => avg10 = value.parse().ok()?,
                    "avg60" => avg60 = value.parse().ok()?,
                    "total" => total = value.parse().ok()?,
                    _ => {}
                }
            }
            match kind {
                "some" => {
                    some = true;
                    (psi.some_avg10, psi.some_avg60, psi.some_total_us) = (avg10, avg60, total);
                }
                "full" => {
                    (psi.full_avg10, psi.full_avg60, psi.full_total_us) = (avg10, avg60, total)
                }
                _ => {}
            }
        }
        some.then_some(psi)
    }

    fn read(path: &Path) -> Option<Self> {
        Self::parse(&fs::read_to_string(path).ok()?)
    }

    /// The node's memory pressure (`None`: the kernel has no PSI, or it is off).
    pub fn node() -> Option<Self> {
        Self::read(Path::new("/proc/pressure/memory"))
    }

    /// `cgroup`'s own memory pressure (v2 `memory.pressure`; `None` on v1, or off).
    pub fn of(cgroup: &Cgroup) -> Option<Self> {
        match cgroup.hierarchy.version {
            Version::V1 => None,
            Version::V2 => Self::read(&cgroup.dir.join("memory.pressure")),
        }
    }

    /// `some 12.3% full 4.0%` (avg10).
    pub fn text(&self) -> String {
        format!("some {:.1}% full {:.1}%", self.some_avg10, self.full_avg10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernels_format() {
        let psi = Psi::parse(
            "some avg10=21.37 avg60=8.02 avg300=1.90 total=321087454\n\
             full avg10=3.50 avg60=0.75 avg300=0.00 total=103196520\n",
        )
        .expect("a reading");
        assert_eq!(psi.some_avg10, 21.37);
        assert_eq!(psi.some_avg60, 8.02);
        assert_eq!(psi.full_avg10, 3.5);
        assert_eq!(psi.full_avg60, 0.75);
        assert_eq!(psi.some_total_us, 321_087_454);
        assert_eq!(psi.full_total_us, 103_196_520);
        assert_eq!(psi.text(), "some 21.4% full 3.5%");
        // Kernels before 5.13 have no `full` line for the node's CPU file; a memory file
        // without one still reads.
        let some = Psi::parse("some avg10=1.00 avg60=0.00 avg300=0.00 total=5\n").unwrap();
        assert_eq!((some.some_avg10, some.full_total_us), (1.0, 0));
        assert_eq!(Psi::parse(""), None);
        assert_eq!(Psi::parse("some avg10=x total=1\n"), None);
    }
}
