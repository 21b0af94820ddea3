//! Builds the BPF object from `memstress-ebpf` (its binary target, for bpfel-unknown-none,
//! with the nightly toolchain and bpf-linker) and leaves it in OUT_DIR for
//! `include_bytes_aligned!`. `AYA_BUILD_SKIP=1` skips it (editors, metadata-only checks).
//!
//! aya-build compiles the BPF crate (and `core` for the BPF target) in a target directory
//! under OUT_DIR, which differs for every profile and feature set of this package: clippy,
//! the unit tests, the release binary, the tests package and the fuzz targets would each
//! compile it again (about 45 s apiece on two cores). Every build of this package therefore
//! hands aya-build one shared directory, `target/memstress-ebpf` (under `CARGO_TARGET_DIR`
//! when that is set), serialised by a lock there, and copies the object it made to its own
//! OUT_DIR.

use std::{env, fs, path::PathBuf};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        println!("cargo:warning=AYA_BUILD_SKIP is set; the BPF object is not built");
        return Ok(());
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| manifest.join("../target"), PathBuf::from)
        .join("memstress-ebpf");
    fs::create_dir_all(&shared).with_context(|| format!("cannot create {}", shared.display()))?;
    let lock = fs::File::create(shared.join(".lock"))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", shared.display()))?;
    // SAFETY: a build script is single-threaded; aya-build reads OUT_DIR only to place its
    // target directory and the object.
    unsafe { env::set_var("OUT_DIR", &shared) };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "memstress-ebpf",
            root_dir: manifest
                .join("../memstress-ebpf")
                .to_str()
                .context("path")?,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;
    let object = shared.join("memstress-ebpf");
    fs::copy(&object, out_dir.join("memstress-ebpf"))
        .with_context(|| format!("cannot copy {}", object.display()))?;
    Ok(())
}
