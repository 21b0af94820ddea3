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
//! * `memstress-bench-helper oom BYTES [ADJ]`: sets its `oom_score_adj` to ADJ (when given),
//!   then touches BYTES page by page, which is meant to be past its cgroup's limit: the OOM
//!   killer ends it. Exits 3 if it survives.
//! * `memstress-bench-helper idle N [ADJ]`: sets its `oom_score_adj` to ADJ (when given; its
//!   children inherit it), then forks N − 1 children, so that N processes are idle: each child
//!   closes its standard streams and blocks in `read(2)` on a pipe whose only writer is this
//!   process, with `PR_SET_PDEATHSIG` SIGKILL. Prints `ready N` once all are forked, then waits
//!   for stdin to close; then it closes the pipe (every child reads EOF and exits), reaps every
//!   child, and prints `reaped N−1`. Killed instead, it takes its children with it (the death
//!   signal; init reaps them). Each idle process costs the kernel about 100 KiB.

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

/// Writes `/proc/self/oom_score_adj`.
fn oom_score_adj(adj: i32) {
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", adj.to_string()) {
        eprintln!("memstress-bench-helper: oom_score_adj {adj}: {e}");
        std::process::exit(2);
    }
}

fn oom(bytes: usize, adj: Option<i32>) -> ! {
    if let Some(adj) = adj {
        oom_score_adj(adj);
    }
    let mem = map(bytes, 0);
    touch(mem, bytes);
    eprintln!("memstress-bench-helper oom: {bytes} bytes touched and not OOM-killed");
    std::process::exit(3)
}

/// A child of `idle`: only async-signal-safe calls between fork and exit.
fn idle_child(pipe: [libc::c_int; 2], parent: libc::pid_t) -> ! {
    // SAFETY: plain system calls on fds this process owns; no allocation, no locks.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // The parent died before the death signal was armed: nobody would end this one.
        if libc::getppid() != parent {
            libc::_exit(0);
        }
        libc::close(pipe[1]);
        for fd in 0..3 {
            libc::close(fd);
        }
        let mut byte = 0u8;
        loop {
            let n = libc::read(pipe[0], (&raw mut byte).cast(), 1);
            // (Reading errno allocates nothing.)
            if n == 0
                || (n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR))
            {
                libc::_exit(0);
            }
        }
    }
}

fn idle(n: usize, adj: Option<i32>) {
    if let Some(adj) = adj {
        oom_score_adj(adj);
    }
    let mut pipe = [0; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        eprintln!(
            "memstress-bench-helper idle: pipe: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(1);
    }
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let mut kids = 0usize;
    let mut failed = None;
    for _ in 1..n {
        // SAFETY: this process has one thread; the child only makes system calls.
        match unsafe { libc::fork() } {
            -1 => {
                failed = Some(std::io::Error::last_os_error());
                break;
            }
            0 => idle_child(pipe, me),
            _ => kids += 1,
        }
    }
    // SAFETY: closing our copy of the read end: only the children read.
    unsafe { libc::close(pipe[0]) };
    let mut out = std::io::stdout().lock();
    if let Some(e) = &failed {
        eprintln!("memstress-bench-helper idle: fork {} of {n}: {e}", kids + 2);
    } else {
        writeln!(out, "ready {}", kids + 1)
            .and_then(|()| out.flush())
            .ok();
        // Hold until the bench closes stdin.
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    }
    // SAFETY: closing the only write end: every child's read returns 0 and it exits.
    unsafe { libc::close(pipe[1]) };
    let mut reaped = 0usize;
    loop {
        // SAFETY: waiting for our own children.
        let pid = unsafe { libc::waitpid(-1, ptr::null_mut(), 0) };
        if pid > 0 {
            reaped += 1;
        } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    writeln!(out, "reaped {reaped}")
        .and_then(|()| out.flush())
        .ok();
    if failed.is_some() || reaped != kids {
        std::process::exit(1);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize, what: &str| -> usize {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{what}: a number expected as argument {i}"))
    };
    let adj = |i: usize| -> Option<i32> {
        args.get(i).map(|a| {
            a.parse()
                .unwrap_or_else(|_| panic!("ADJ: an oom_score_adj expected as argument {i}"))
        })
    };
    match args.get(1).map(String::as_str) {
        Some("touch") => fault_throughput(num(2, "BYTES"), num(3, "REPS") as u32),
        Some("populate") => populate(num(2, "BYTES")),
        Some("oom") => oom(num(2, "BYTES"), adj(3)),
        Some("idle") => idle(num(2, "N"), adj(3)),
        _ => {
            eprintln!(
                "usage: memstress-bench-helper touch BYTES REPS | populate BYTES | oom BYTES \
                 [ADJ] | idle N [ADJ]"
            );
            std::process::exit(2);
        }
    }
}
