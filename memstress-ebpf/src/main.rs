//! memstress's BPF programs.
//!
//! One module per hook family: [`oom`] (`mark_victim`, both as a BTF tracepoint and as the
//! classic `oom:mark_victim` tracepoint: the victim, the OOM domain, the candidates),
//! [`signal`] (`signal_generate`: confirms the OOM killer's SIGKILL, and finds the processes
//! killed with the victim), [`aftermath`] (the victim's exit and the OOM reaper) and
//! [`pressure`] (direct memcg reclaim, aggregated in the kernel) and, where fentry/fexit
//! load, [`control`] (the OOM killer's own `struct oom_control` and points) and [`throttle`]
//! (how long `memory.high` held each memcg's tasks). [`kernel`] reads kernel
//! structures through the offsets userspace resolved from BTF; [`maps`] holds every map.
//!
//! Each program is a thin entry point that calls a `try_*` function returning `Result`, and
//! never unwraps: a failed read leaves a field marked unknown rather than aborting the record.
//!
//! On the host this file builds to an empty `main` so that `cargo check --workspace` works;
//! the real object is built for `bpfel-unknown-none` by `memstress-user/build.rs`.

#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The BPF object is built with the nightly toolchain: atomic adds and compare-and-swap on
// shared map values need the intrinsics (see `pressure::add`, `throttle::raise`).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    expect(
        internal_features,
        reason = "core_intrinsics, for atomic_xadd and atomic_cxchg"
    )
)]

#[cfg(target_arch = "bpf")]
mod aftermath;
#[cfg(target_arch = "bpf")]
mod control;
#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod oom;
#[cfg(target_arch = "bpf")]
mod pressure;
#[cfg(target_arch = "bpf")]
mod signal;
#[cfg(target_arch = "bpf")]
mod throttle;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; nothing in the programs panics.
    loop {}
}

/// tp_btf programs and `bpf_probe_read_kernel` are GPL-only.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "memstress-ebpf holds BPF programs; memstress-user/build.rs builds it for bpfel-unknown-none"
    );
}
