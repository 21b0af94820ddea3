//! Measurement programs for `cargo xtask bench`. The bench starts each one already inside the
//! cgroup it measures (it joins before exec), so every page it touches is charged there.
//!
//! * `memstress-bench-helper touch BYTES REPS`: REPS times, maps BYTES of fresh private
//!   anonymous memory, writes one byte per page (one page fault each), and unmaps it; prints
//!   `ns WALL cpu CPU` per repetition: the nanoseconds the writes took, on the clock and on
//!   this thread's CPU clock. Page-fault throughput is what the probes could slow down; the
//!   faults (and any probe they trigger) run on this thread, so its CPU time measures them
//!   without the time other processes of a shared machine took the CPU away.
//! * `memstress-bench-helper populate BYTES`: one `mmap(MAP_POPULATE)` of BYTES, then prints
//!   `done` and waits for stdin to close: the machine's practical fill limit (one call, the
//!   kernel faults every page in; nothing faster exists for one process).
//! * `memstress-bench-helper oom BYTES`: touches BYTES page by page, which is meant to be
//!   past its cgroup's limit: the OOM killer ends it. Exits 3 if it survives.

use std::{
    io::{Read as _, Write as _},
    ptr,
};

const PAGE: usize = 4096;

fn map(bytes: usize, flags: i32) -> *mut u8 {
    // SAFETY: a fresh private anonymous mapping; the kernel picks the address.
    let mem = unsafe {
        libc::mmap(
            ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    assert!(
        mem != libc::MAP_FAILED,
        "mmap {bytes}: {}",
        std::io::Error::last_os_error()
    );
    mem.cast()
}

/// Writes one byte per page: one page fault each (no THP: the toucher asks for none).
fn touch(mem: *mut u8, bytes: usize) {
    for offset in (0..bytes).step_by(PAGE) {
        // SAFETY: offset < bytes, inside the writable mapping.
        unsafe { ptr::write_volatile(mem.add(offset), 1) };
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn fault_throughput(bytes: usize, reps: u32) {
    let mut out = std::io::stdout().lock();
    for _ in 0..reps {
        let mem = map(bytes, 0);
        // THP is `madvise` on most distributions; say "none" explicitly so that every run
        // faults 4 KiB pages whatever the machine's default.
        // SAFETY: advice on our own mapping; failure only loses a hint.
        unsafe { libc::madvise(mem.cast(), bytes, libc::MADV_NOHUGEPAGE) };
        let (wall, cpu) = (
            clock_ns(libc::CLOCK_MONOTONIC),
            clock_ns(libc::CLOCK_THREAD_CPUTIME_ID),
        );
        touch(mem, bytes);
        let (wall, cpu) = (
            clock_ns(libc::CLOCK_MONOTONIC) - wall,
            clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) - cpu,
        );
        // SAFETY: unmapping the mapping made above.
        unsafe { libc::munmap(mem.cast(), bytes) };
        writeln!(out, "ns {wall} cpu {cpu}")
            .and_then(|()| out.flush())
            .ok();
    }
}

fn populate(bytes: usize) {
    let _mem = map(bytes, libc::MAP_POPULATE);
    let mut out = std::io::stdout().lock();
    writeln!(out, "done").and_then(|()| out.flush()).ok();
    drop(out);
    // Hold until the bench closes stdin (or kills us).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

fn oom(bytes: usize) -> ! {
    let mem = map(bytes, 0);
    touch(mem, bytes);
    eprintln!("memstress-bench-helper oom: {bytes} bytes touched and not OOM-killed");
    std::process::exit(3)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize, what: &str| -> usize {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{what}: a number expected as argument {i}"))
    };
    match args.get(1).map(String::as_str) {
        Some("touch") => fault_throughput(num(2, "BYTES"), num(3, "REPS") as u32),
        Some("populate") => populate(num(2, "BYTES")),
        Some("oom") => oom(num(2, "BYTES")),
        _ => {
            eprintln!(
                "usage: memstress-bench-helper touch BYTES REPS | populate BYTES | oom BYTES"
            );
            std::process::exit(2);
        }
    }
}
