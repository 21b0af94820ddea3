//! Sizes as users write them (`--size`, `--limit`, `--fill-to`, `--ring-buffer`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memstress::size::SizeSpec;

fuzz_target!(|input: &str| {
    match SizeSpec::parse(input) {
        Ok(SizeSpec::Bytes(b)) => {
            assert!(b > 0, "`{input}` parsed to 0 bytes");
            assert_eq!(SizeSpec::parse_bytes(input).ok(), Some(b));
        }
        Ok(SizeSpec::Percent(p)) => {
            assert!(p > 0.0 && p.is_finite(), "`{input}` parsed to {p}%");
            // A percent resolves against any limit without overflowing.
            let _ = SizeSpec::Percent(p).resolve(u64::MAX);
        }
        Err(e) => {
            // Every error names what was wrong, on one line.
            let text = e.to_string();
            assert!(!text.is_empty() && !text.contains('\n'), "{text:?}");
        }
    }
});
