//! Builds the BPF object from `memstress-ebpf` (its binary target, for bpfel-unknown-none,
//! with the nightly toolchain and bpf-linker) and leaves it in OUT_DIR for
//! `include_bytes_aligned!`. `AYA_BUILD_SKIP=1` skips it (editors, metadata-only checks).

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../memstress-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "memstress-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
