//! Processes of shapes the privileged tests need that neither stress-ng nor memstress makes.
//!
//! `memstress-test-helper shared-mm BYTES`: two processes sharing one mm (the second made
//! with `clone(CLONE_VM)` but not `CLONE_THREAD`, so it is its own thread group). Prints
//! `sibling PID`, then the first allocates BYTES and waits. When the OOM killer picks one of
//! them, `__oom_kill_process()` SIGKILLs the other too: a collateral kill.

use std::{ffi::c_void, io::Write as _, ptr};

extern "C" fn sibling(_arg: *mut c_void) -> i32 {
    // SAFETY: prctl and pause have no memory-safety preconditions.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"mm-sibling".as_ptr(), 0, 0, 0);
        loop {
            libc::pause();
        }
    }
}

fn shared_mm(bytes: usize) {
    // SAFETY: prctl with a static string.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"mm-owner".as_ptr(), 0, 0, 0) };
    // The sibling's stack; it lives as long as this process, which never returns.
    let stack: &'static mut [u8] = Box::leak(vec![0u8; 256 << 10].into_boxed_slice());
    // SAFETY: the stack grows down from its top, 16-byte aligned; the sibling shares our
    // memory (CLONE_VM) and only calls prctl and pause.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len()).cast::<c_void>();
        let top = (top as usize & !15) as *mut c_void;
        libc::clone(
            sibling,
            top,
            libc::CLONE_VM | libc::SIGCHLD,
            ptr::null_mut(),
        )
    };
    assert!(pid > 0, "clone: {}", std::io::Error::last_os_error());
    println!("sibling {pid}");
    std::io::stdout().flush().unwrap();
    // SAFETY: a fresh private anonymous mapping, touched page by page.
    unsafe {
        let mem = libc::mmap(
            ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
        .cast::<u8>();
        assert!(mem.cast::<c_void>() != libc::MAP_FAILED);
        for offset in (0..bytes).step_by(4096) {
            ptr::write_volatile(mem.add(offset), 1);
        }
        loop {
            libc::pause();
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("shared-mm") => shared_mm(args[2].parse().expect("BYTES")),
        _ => {
            eprintln!("usage: memstress-test-helper shared-mm BYTES");
            std::process::exit(2);
        }
    }
}
