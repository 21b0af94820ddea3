//! Text read from /proc and cgroup files, and the line protocols between memstress's own
//! processes: the first byte picks the parser, the rest is its input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memstress::{target::cgroup, stress::janitor, target::lock, privilege, stress::stressor};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 9 {
        0 => {
            let _ = stressor::charge_from_status(&text);
        }
        1 => {
            let _ = privilege::parse_cap(&text, "CapEff:");
        }
        2 => {
            let _ = cgroup::parse_flat_keyed(&text);
        }
        3 => {
            let _ = cgroup::memcg_path_from_proc(&text, cgroup::Version::V1);
            let _ = cgroup::memcg_path_from_proc(&text, cgroup::Version::V2);
        }
        4 => {
            let _ = lock::holder_in(&text, 0, 0);
        }
        5 => {
            if let Ok(path) = cgroup::normalize(&text) {
                assert!(path.starts_with('/'), "{path:?}");
                assert!(!path.split('/').any(|c| c == ".." || c == "."), "{path:?}");
                assert_eq!(cgroup::normalize(&path).ok().as_deref(), Some(path.as_str()));
            }
        }
        6 => {
            // The janitor's manifest: what parses must print back to itself.
            if let Some(entry) = janitor::Entry::parse(&text) {
                let line = entry.line();
                assert_eq!(janitor::Entry::parse(&line), Some(entry));
            }
        }
        7 => {
            let _ = stressor::Report::parse(&text);
        }
        _ => {
            let _ = stressor::Command::parse(&text);
            let _ = stressor::WorkerArgs::parse(text.split(' ').map(str::to_owned));
        }
    }
});
