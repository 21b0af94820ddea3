//! Tracepoint `format` files from tracefs (the classic oom:mark_victim layout).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memstress::probe::tracefs::Format;

fuzz_target!(|text: &str| {
    if let Ok(format) = Format::parse(text) {
        for name in ["pid", "comm", "total_vm", "anon_rss", "file_rss", "shmem_rss", "uid"] {
            let _ = format.field(name);
        }
    }
});
