//! The kernel's OOM reports as a log holds them (`memstress replay`): whatever the text,
//! parsing and planning never panic, a report is whole or names what it lacks on one line,
//! and every row of a whole report is ranked or skipped.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memstress::replay::{self, parse};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        let _ = parse::strip_prefix(line);
    }
    for report in parse::parse(&text) {
        match report {
            Ok(report) => {
                assert!(!report.tasks.is_empty(), "a whole report has task rows");
                let rows = report.tasks.len();
                let victim = report.victim.pid;
                let plan = replay::plan(report);
                assert_eq!(plan.ranking.len() + plan.skipped.len(), rows);
                assert!(plan.page_size >= 4096 && plan.page_size.is_power_of_two());
                assert_eq!(plan.agrees, plan.reason.is_none(), "victim {victim}");
                // The plan's JSON form reads back.
                let json = serde_json::to_string(&plan).expect("a plan encodes");
                let _: replay::ReplayPlan = serde_json::from_str(&json).expect("and decodes");
            }
            Err(e) => {
                let message = e.to_string();
                assert!(!message.is_empty());
                assert!(!e.missing.is_empty(), "{message}");
            }
        }
    }
});
