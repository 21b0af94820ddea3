//! `cargo xtask fuzz`: runs memstress's cargo-fuzz targets (memstress-user/fuzz) on their
//! kept corpus, each for a bounded time; a crash fails the command and leaves the input in
//! memstress-user/fuzz/artifacts/<target>/ (add it to the corpus once fixed).

use std::{path::PathBuf, process::Command};

use anyhow::{Result, bail};

use crate::{root, run, run_quiet, setup::say};

/// The version of cargo-fuzz `setup` installs.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Every target (`fuzz_targets/<name>.rs`).
pub const TARGETS: &[&str] = &[
    "size",
    "proc_text",
    "tracefs_format",
    "btf",
    "mountinfo",
    "ring_record",
    "oom_report",
];

fn dir() -> PathBuf {
    root().join("memstress-user/fuzz")
}

/// Installs cargo-fuzz when it is missing or another version (idempotent).
pub fn install() -> Result<()> {
    let present = run_quiet(Command::new("cargo").args(["fuzz", "--version"]))
        .is_ok_and(|v| v.contains(CARGO_FUZZ_VERSION));
    if present {
        say("cargo-fuzz", &format!("{CARGO_FUZZ_VERSION} present"));
        return Ok(());
    }
    say("cargo-fuzz", "missing; installing (about 2 minutes)");
    run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--force",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}

fn cargo_fuzz() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(dir())
        .args(["run", "nightly", "cargo", "fuzz"])
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    cmd
}

/// How the targets are built.
#[derive(Clone, Copy)]
pub enum Build {
    /// `-O`: optimised, with debug assertions; for fuzzing that is meant to find something.
    Optimized,
    /// `--dev`: builds in under half the time (2 min rather than 5 on two cores), runs about
    /// ten times slower; for the smoke pass of `cargo xtask test`, which replays the kept
    /// corpus and mutates for a few seconds so that the targets cannot rot.
    Dev,
}

impl Build {
    fn flag(self) -> &'static str {
        match self {
            Self::Optimized => "-O",
            Self::Dev => "--dev",
        }
    }
}

/// Fuzzes `targets` (all when empty) for `seconds` each.
pub fn fuzz(targets: &[String], seconds: u64, build: Build) -> Result<()> {
    install()?;
    let chosen: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!(
                    "no fuzz target `{t}`; the targets are: {}",
                    TARGETS.join(", ")
                );
            }
        }
        targets.iter().map(String::as_str).collect()
    };
    eprintln!(
        "xtask: building the fuzz targets (nightly, address sanitizer, {})",
        build.flag()
    );
    run(cargo_fuzz().args(["build", build.flag()]))?;
    for t in chosen {
        eprintln!("xtask: fuzzing {t} for {seconds}s, starting from corpus/{t}");
        // New inputs go to a scratch directory: the kept corpus changes only on purpose
        // (`cargo fuzz cmin`), never as a side effect of a test run.
        let scratch = root().join("target/fuzz-corpus").join(t);
        std::fs::create_dir_all(&scratch)?;
        run(cargo_fuzz()
            .args(["run", build.flag(), t])
            .arg(&scratch)
            .arg(dir().join("corpus").join(t))
            .args(["--", "-max_len=65536", "-timeout=10", "-rss_limit_mb=2048"])
            .arg(format!("-max_total_time={seconds}"))
            .arg("-print_final_stats=1"))?;
    }
    Ok(())
}
