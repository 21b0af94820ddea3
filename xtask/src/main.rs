//! `cargo xtask`: memstress's automation.
//!
//! * `setup`: toolchain pieces, bpf-linker, Debian packages, mounts (idempotent).
//! * `build`: the release binary.
//! * `image`: the container image deploy/ names, as an OCI/Docker tarball
//!   (target/memstress-image.tar) that `docker load` and `ctr images import` accept.
//! * `demo`: the main job on its built-in default (setup and build included).
//! * `test`: formatting, lints, unit tests, then the privileged integration tests as root
//!   (with the manifest validation and metrics parsing tools of `setup::python_tools`).
//! * `assets`: man pages and shell completions, generated from the CLI, in target/assets/.
//! * `schema`: docs/events.schema.json from the line types (`--check`: unchanged?).
//! * `lab`: scenarios end to end on real kernels; `lab replay FILE`: a kernel log's OOM
//!   reports reproduced there.
//! * `fuzz`: the parsers under cargo-fuzz.
//! * `bench`: the seven figures of docs/benchmarks.md, each against a peer or the machine's
//!   limit.

mod bench;
mod fuzz;
mod image;
mod lab;
mod setup;

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "memstress automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent; prints what it did).
    Setup,
    /// Build the release `memstress` binary (target/release/memstress).
    Build,
    /// Build the container image `ghcr.io/memstress/memstress:<version>` (the release
    /// binary, its shared libraries, entrypoint memstress) as target/memstress-image.tar, an
    /// OCI image layout with a Docker manifest.json: `docker load -i` and `ctr images import`
    /// both take it.
    Image,
    /// Write man pages (target/assets/man/) and shell completions (target/assets/completions/),
    /// generated from the CLI by the release binary.
    Assets,
    /// Run `memstress demo` (a sandbox cgroup, an app, stressors, a reported OOM kill).
    Demo {
        /// Extra arguments for `memstress demo`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run lab scenarios end to end on real kernels (this machine's; Debian's under qemu) and
    /// write reports to target/lab/ (index.md, and per kernel and scenario: events.jsonl,
    /// report.md, timeline.svg, dmesg.txt).
    #[command(args_conflicts_with_subcommands = true)]
    Lab {
        #[command(subcommand)]
        action: Option<LabCmd>,
        /// One scenario (a name from xtask/scenarios/, or a file); default: all.
        scenario: Option<String>,
        /// Kernel: `host`, `6.12` or `6.1` (repeatable; default: host).
        #[arg(long = "kernel", value_name = "K")]
        kernels: Vec<String>,
        /// Every scenario on every kernel.
        #[arg(long)]
        all: bool,
        /// Bound on one guest boot, in seconds.
        #[arg(long, default_value_t = 900)]
        boot_timeout: u64,
    },
    /// Fuzz memstress's parsers (sizes, /proc and cgroup files, tracefs formats, BTF,
    /// mountinfo, ring-buffer records) with cargo-fuzz, each target for --time seconds.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Only these targets (default: all).
        targets: Vec<String>,
    },
    /// Write docs/events.schema.json from memstress's line types (`memstress schema`); with
    /// --check, fail when the file differs from what the types generate.
    Schema {
        /// Compare instead of writing.
        #[arg(long)]
        check: bool,
    },
    /// Measure memstress against its peers and the machine's own limits, side by side:
    /// probe overhead, fill rate, cost of holding, time to tell, a kill storm, start-up and
    /// footprint. Prints a table (stdout) and writes target/bench/results.json; a missed
    /// goal is reported, not an error.
    Bench {
        /// Fewer runs and smaller sizes (every figure present, 3-4 minutes; what CI runs).
        #[arg(long)]
        quick: bool,
        /// Runs per figure (default 5, or 3 with --quick).
        #[arg(long, value_name = "N")]
        runs: Option<usize>,
        /// Only these figures (startup, fault, fill, hold, tell, storm, scale; repeatable or
        /// comma-separated).
        #[arg(long, value_name = "FIGURE", value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Run the whole test suite: fmt, clippy, unit tests, privileged integration tests, a
    /// short fuzzing pass, the quick bench, and the lab on every kernel.
    Test {
        /// Only the unit tests (no root needed).
        #[arg(long)]
        unit: bool,
        /// Only the privileged integration tests.
        #[arg(long)]
        privileged: bool,
        /// Skip fmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Skip the lab.
        #[arg(long)]
        no_lab: bool,
        /// Skip the fuzzing pass.
        #[arg(long)]
        no_fuzz: bool,
        /// Skip the quick bench.
        #[arg(long)]
        no_bench: bool,
        /// Only integration tests whose name contains this.
        filter: Option<String>,
    },
}

/// `cargo xtask lab` subcommands.
#[derive(Subcommand)]
enum LabCmd {
    /// Replay a kernel log's OOM reports (dmesg, dmesg -T, journalctl -k, plain lines) on
    /// the chosen kernels: `memstress replay` reproduces each in a sandbox cgroup, and the
    /// victim must be the report's (a one-off scenario, `replay-<file stem>`).
    Replay {
        /// The kernel log.
        file: Option<PathBuf>,
        /// Kernel: `host`, `6.12` or `6.1` (repeatable; default: host).
        #[arg(long = "kernel", value_name = "K")]
        kernels: Vec<String>,
        /// Bound on one guest boot, in seconds.
        #[arg(long, default_value_t = 900)]
        boot_timeout: u64,
    },
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Whether we run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a command with inherited output; fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Runs a command and returns its stdout; fails on a non-zero exit.
pub fn run_quiet(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// cargo, in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Builds `memstress` and one program of the tests package (`helper`) in release; returns
/// their paths.
pub fn build_with_helper(helper: &str) -> Result<(PathBuf, PathBuf)> {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "memstress-user",
        "-p",
        "memstress-tests",
        "--bin",
        "memstress",
        "--bin",
        helper,
    ]))?;
    let bin = root().join("target/release");
    Ok((bin.join("memstress"), bin.join(helper)))
}

/// cargo of the nightly toolchain (through rustup: `$CARGO` is the stable one, which does
/// not understand `+nightly`).
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(root())
        .args(["run", "nightly", "cargo"])
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    cmd
}

fn build() -> Result<PathBuf> {
    eprintln!("xtask: building target/release/memstress");
    run(cargo().args(["build", "--release", "-p", "memstress-user"]))?;
    Ok(root().join("target/release/memstress"))
}

fn need_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("{what} needs root (it creates cgroups and loads BPF programs): run it with sudo");
    }
    Ok(())
}

/// docs/events.schema.json, generated by the release binary from its own types.
const SCHEMA_FILE: &str = "docs/events.schema.json";

fn schema(check: bool) -> Result<()> {
    let bin = build()?;
    let file = root().join(SCHEMA_FILE);
    if check {
        eprintln!("xtask: {SCHEMA_FILE} is what the line types generate?");
        return run(Command::new(&bin).arg("schema").arg("--check").arg(&file));
    }
    let text = run_quiet(Command::new(&bin).arg("schema"))?;
    std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
    eprintln!("xtask: wrote {}", file.display());
    Ok(())
}

fn lint() -> Result<()> {
    eprintln!("xtask: cargo fmt --check (nightly rustfmt, for the import-grouping options)");
    run(nightly_cargo().args(["fmt", "--all", "--check"]))?;
    eprintln!("xtask: clippy (host)");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    eprintln!("xtask: clippy (BPF programs, bpfel-unknown-none)");
    run(nightly_cargo().args([
        "clippy",
        "-p",
        "memstress-ebpf",
        "--bins",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))
}

fn unit_tests() -> Result<()> {
    eprintln!("xtask: unit tests");
    run(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "memstress-tests",
        "--exclude",
        "memstress-ebpf",
    ]))?;
    run(cargo().args(["test", "-p", "memstress-ebpf", "--lib"]))
}

fn privileged_tests(filter: Option<&str>) -> Result<()> {
    need_root("the privileged test suite")?;
    let bin = build()?;
    // The sidecar tests run memstress from its image (tests/tests/sidecar.rs).
    image::image(&bin)?;
    eprintln!("xtask: privileged integration tests (one at a time: they share dmesg and memory)");
    let mut cmd = cargo();
    cmd.env("MEMSTRESS_BIN", &bin)
        .env("MEMSTRESS_TOOLS_VENV", setup::tools_venv())
        .args([
            "test",
            "--release",
            "--no-fail-fast",
            "-p",
            "memstress-tests",
        ])
        .args(["--", "--test-threads=1"]);
    if let Some(f) = filter {
        cmd.arg(f);
    }
    let result = run(&mut cmd);
    sweep_test_cgroups();
    result
}

/// Removes cgroups a crashed test left behind: named `memstress-test-<pid>-*`, and only when
/// process <pid> is gone (another test run on this machine keeps its own). Nothing else is
/// touched.
fn sweep_test_cgroups() {
    for root in ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"] {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let owner = name
                .strip_prefix("memstress-test-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if let Some(pid) = owner
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                eprintln!(
                    "xtask: removing leftover test cgroup {}",
                    entry.path().display()
                );
                let _ = remove_tree(&entry.path());
            }
        }
    }
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::remove_dir(dir)
}

/// Man pages and completion scripts, from the binary's own CLI definition.
fn assets(bin: &Path) -> Result<()> {
    let dir = root().join("target/assets");
    let man = dir.join("man");
    run(Command::new(bin).arg("man").arg("--dir").arg(&man))?;
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)?;
    for (shell, file) in [
        ("bash", "memstress.bash"),
        ("zsh", "_memstress"),
        ("fish", "memstress.fish"),
        ("elvish", "memstress.elv"),
        ("powershell", "_memstress.ps1"),
    ] {
        let script = run_quiet(Command::new(bin).args(["completions", shell]))?;
        std::fs::write(completions.join(file), script)?;
    }
    eprintln!(
        "xtask: man pages in {}, completions in {}",
        man.display(),
        completions.display()
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => {
            setup::setup(setup::PACKAGES_TEST)?;
            setup::python_tools()
        }
        Cmd::Build => setup::setup(&[]).and_then(|()| build().map(drop)),
        Cmd::Image => {
            setup::setup(&[])?;
            image::image(&build()?).map(drop)
        }
        Cmd::Assets => {
            setup::setup(&[])?;
            assets(&build()?)
        }
        Cmd::Demo { args } => {
            need_root("the demo")?;
            setup::setup(&[])?;
            let bin = build()?;
            run(Command::new(bin).arg("demo").args(args))
        }
        Cmd::Lab {
            action:
                Some(LabCmd::Replay {
                    file,
                    kernels,
                    boot_timeout,
                }),
            ..
        } => {
            let Some(file) = file else {
                bail!(
                    "lab replay needs FILE, a kernel log holding OOM reports (to run the \
                     `replay` scenario: cargo xtask lab xtask/scenarios/replay.toml)"
                );
            };
            need_root("the lab")?;
            lab::lab(&lab::Args {
                scenario: None,
                replay: Some(file),
                kernels: if kernels.is_empty() {
                    vec!["host".to_owned()]
                } else {
                    kernels
                },
                boot_timeout: std::time::Duration::from_secs(boot_timeout),
            })
        }
        Cmd::Lab {
            action: None,
            scenario,
            kernels,
            all,
            boot_timeout,
        } => {
            need_root("the lab")?;
            let kernels = if all {
                vec!["host".to_owned(), "6.12".to_owned(), "6.1".to_owned()]
            } else if kernels.is_empty() {
                vec!["host".to_owned()]
            } else {
                kernels
            };
            lab::lab(&lab::Args {
                scenario,
                replay: None,
                kernels,
                boot_timeout: std::time::Duration::from_secs(boot_timeout),
            })
        }
        Cmd::Fuzz { time, targets } => fuzz::fuzz(&targets, time, fuzz::Build::Optimized),
        Cmd::Schema { check } => {
            setup::setup(&[])?;
            schema(check)
        }
        Cmd::Bench { quick, runs, only } => {
            need_root("the bench")?;
            setup::setup(bench::PACKAGES)?;
            bench::bench(&bench::Args { quick, runs, only })
        }
        Cmd::Test {
            unit,
            privileged,
            no_lint,
            no_lab,
            no_fuzz,
            no_bench,
            filter,
        } => {
            let all = !unit && !privileged;
            let packages: Vec<&str> = if all || privileged {
                let mut p = lab::PACKAGES.to_vec();
                // setup::PACKAGES_TEST: the runtimes the privileged tests start themselves.
                for b in bench::PACKAGES.iter().chain(setup::PACKAGES_TEST) {
                    if !p.contains(b) {
                        p.push(b);
                    }
                }
                p
            } else {
                Vec::new()
            };
            setup::setup(&packages)?;
            if (all || unit) && !no_lint {
                lint()?;
            }
            if all || unit {
                unit_tests()?;
                schema(true)?;
            }
            if all || privileged {
                setup::python_tools()?;
                privileged_tests(filter.as_deref())?;
            }
            if all && !no_fuzz && filter.is_none() {
                // A smoke pass: the kept corpus replayed and a few seconds of mutation per target.
                fuzz::fuzz(&[], 5, fuzz::Build::Dev)?;
            }
            // Not a speed test: it fails only when it cannot measure, so that it cannot rot.
            if all && !no_bench && filter.is_none() {
                bench::bench(&bench::Args {
                    quick: true,
                    runs: None,
                    only: Vec::new(),
                })?;
            }
            if all && !no_lab && filter.is_none() {
                lab::lab(&lab::Args {
                    scenario: None,
                    replay: None,
                    kernels: vec!["host".to_owned(), "6.12".to_owned(), "6.1".to_owned()],
                    boot_timeout: std::time::Duration::from_secs(900),
                })?;
            }
            eprintln!("xtask: all tests passed");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn lab(args: &[&str]) -> Result<Cmd, String> {
        Cli::try_parse_from(["cargo xtask", "lab"].iter().chain(args))
            .map(|cli| cli.command)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn lab_takes_a_scenario_or_the_replay_subcommand() {
        let Ok(Cmd::Lab {
            action: None,
            scenario: Some(scenario),
            kernels,
            all: false,
            ..
        }) = lab(&["qos", "--kernel", "6.12"])
        else {
            panic!("lab qos --kernel 6.12");
        };
        assert_eq!(
            (scenario.as_str(), kernels),
            ("qos", vec!["6.12".to_owned()])
        );
        assert!(matches!(
            lab(&["--all"]),
            Ok(Cmd::Lab {
                action: None,
                scenario: None,
                all: true,
                ..
            })
        ));
        assert!(matches!(
            lab(&[]),
            Ok(Cmd::Lab {
                action: None,
                scenario: None,
                all: false,
                ..
            })
        ));
        let Ok(Cmd::Lab {
            action:
                Some(LabCmd::Replay {
                    file: Some(file),
                    kernels,
                    ..
                }),
            ..
        }) = lab(&[
            "replay",
            "incident.log",
            "--kernel",
            "6.1",
            "--kernel",
            "host",
        ])
        else {
            panic!("lab replay incident.log --kernel 6.1 --kernel host");
        };
        assert_eq!(file, PathBuf::from("incident.log"));
        assert_eq!(kernels, ["6.1", "host"]);
        // FILE is checked by the command, with a one-line error.
        assert!(matches!(
            lab(&["replay"]),
            Ok(Cmd::Lab {
                action: Some(LabCmd::Replay { file: None, .. }),
                ..
            })
        ));
    }
}
