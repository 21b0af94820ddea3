//! Records from the BPF ring buffer (whatever their bytes, decoding never panics).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = memstress::explain::record::decode(data);
});
