//! Building the BPF binary needs `bpf-linker`, which cargo cannot express as a dependency.
//! Rebuild when the linker on PATH changes, and say how to get it when it is missing.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    if env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("bpf") {
        return;
    }
    let linker = env::var_os("PATH").and_then(|path| {
        env::split_paths(&path)
            .map(|dir| dir.join("bpf-linker"))
            .find(|candidate: &PathBuf| candidate.is_file())
    });
    match linker {
        Some(path) => println!("cargo:rerun-if-changed={}", path.display()),
        None => println!("cargo:warning=bpf-linker is not on PATH; `cargo xtask setup` builds it"),
    }
}
