//! /proc/self/mountinfo: finding the memory controller's hierarchy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memstress::target::cgroup::Hierarchy;

fuzz_target!(|text: &str| {
    let _ = Hierarchy::from_mountinfo(text, |_| true);
    let _ = Hierarchy::from_mountinfo(text, |_| false);
});
