//! `cargo xtask setup`: everything a fresh machine needs, done idempotently and quickly when
//! nothing is missing. Each step prints what it found or did.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{is_root, run, run_quiet};

/// The bpf-linker release that builds against the nightly toolchain's own LLVM here.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages, by what needs them. `containerd`, `runc` and `docker.io` are the real
/// container runtimes the runtime tests start and stop themselves (`memstress_tests::runtime`);
/// `busybox-static` makes their containers' root file system.
pub const PACKAGES_TEST: &[&str] = &[
    "stress-ng",
    "bpftrace",
    "containerd",
    "runc",
    "docker.io",
    "busybox-static",
];

/// Packages whose maintainer scripts start a daemon when `invoke-rc.d` lets them (docker.io's
/// postinst runs `/etc/init.d/docker start`), with the daemon's process name. Without systemd
/// nothing else starts them, so [`debian`] installs them under a `policy-rc.d` that forbids
/// starting services and stops any of these daemons the install started anyway: the tests
/// start their own, each with its own state.
const DAEMONS: &[&str] = &["dockerd", "containerd"];

/// Debian's `invoke-rc.d` asks this program whether it may start a service; 101 means no.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// PyPI packages the tests run, pinned: `kubernetes-validate` checks deploy/*.yaml against the
/// Kubernetes API schemas it bundles (offline); `prometheus-client` holds the reference
/// parsers of the Prometheus text and OpenMetrics formats the metrics test scrapes with.
pub const PYTHON_TOOLS: &[(&str, &str)] = &[
    ("kubernetes-validate", "1.37.0"),
    ("prometheus-client", "0.26.0"),
];

/// The virtualenv holding [`PYTHON_TOOLS`]: under the user's cache, not the system and not
/// target/ (it is 150 MB of schemas, kept across `cargo clean` and fresh clones).
pub fn tools_venv() -> PathBuf {
    env::var_os("MEMSTRESS_TOOLS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from("/root/.cache"))
                .join("memstress/venv")
        })
}

fn python_tools_ok(venv: &Path) -> bool {
    let check = PYTHON_TOOLS
        .iter()
        .map(|(name, version)| format!("v('{name}') == '{version}'"))
        .collect::<Vec<_>>()
        .join(" and ");
    Command::new(venv.join("bin/python"))
        .args([
            "-c",
            &format!(
                "import sys; from importlib.metadata import version as v; sys.exit(0 if {check} else 1)"
            ),
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The test tools' virtualenv (idempotent: nothing is fetched when the pinned versions are
/// there).
pub fn python_tools() -> Result<()> {
    let venv = tools_venv();
    let pins: Vec<String> = PYTHON_TOOLS
        .iter()
        .map(|(name, version)| format!("{name}=={version}"))
        .collect();
    if python_tools_ok(&venv) {
        say(
            "Python test tools",
            &format!("present ({})", venv.display()),
        );
        return Ok(());
    }
    say(
        "Python test tools",
        &format!("installing {} into {}", pins.join(" "), venv.display()),
    );
    if !venv.join("bin/python").exists() {
        if let Some(parent) = venv.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        if run_quiet(Command::new("python3").args(["-m", "venv"]).arg(&venv)).is_err() {
            // Debian's python3 keeps venv (and ensurepip) in a package of its own.
            debian(&["python3-venv"])?;
            run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        }
    }
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(&pins))?;
    if !python_tools_ok(&venv) {
        bail!(
            "{} does not have {} after pip install",
            venv.display(),
            pins.join(" ")
        );
    }
    Ok(())
}

pub fn say(step: &str, what: &str) {
    eprintln!("setup: {step:<26} {what}");
}

/// Runs every step. `packages` lists the Debian packages the caller needs.
pub fn setup(packages: &[&str]) -> Result<()> {
    nightly()?;
    rust_src()?;
    bpf_linker()?;
    debian(packages)?;
    mounts()?;
    Ok(())
}

fn nightly() -> Result<()> {
    let list = run_quiet(Command::new("rustup").args(["toolchain", "list"]))?;
    if list.lines().any(|l| l.starts_with("nightly")) {
        say("nightly toolchain", "present");
        return Ok(());
    }
    say("nightly toolchain", "installing");
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

fn rust_src() -> Result<()> {
    let installed = run_quiet(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        say("rust-src (nightly)", "present");
        return Ok(());
    }
    say("rust-src (nightly)", "installing");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The directory cargo installs binaries into.
fn cargo_bin() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// The nightly toolchain's LLVM shared library: (lib dir, library name for -l, major).
fn nightly_llvm() -> Result<(PathBuf, String, u32)> {
    let sysroot = run_quiet(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    for entry in fs::read_dir(&lib).with_context(|| format!("listing {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        // libLLVM-22-rust-1.97.0-nightly.so
        if let Some(stem) = name
            .strip_prefix("libLLVM-")
            .and_then(|n| n.strip_suffix(".so"))
        {
            let major = stem
                .split('-')
                .next()
                .and_then(|m| m.parse().ok())
                .with_context(|| format!("cannot read the LLVM version in {name}"))?;
            return Ok((lib, format!("LLVM-{stem}"), major));
        }
    }
    bail!(
        "no libLLVM-*.so in {}: is the nightly toolchain complete?",
        lib.display()
    )
}

fn bpf_linker_ok(path: &Path) -> bool {
    Command::new(path).arg("--version").output().is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
    })
}

fn bpf_linker() -> Result<()> {
    let path = cargo_bin().join("bpf-linker");
    if bpf_linker_ok(&path) {
        say("bpf-linker", &format!("{BPF_LINKER_VERSION} present"));
        return Ok(());
    }
    let why = if path.exists() {
        "present but unusable (wrong version, or its LLVM moved); rebuilding"
    } else {
        "missing; building (about 2 minutes)"
    };
    say("bpf-linker", why);
    // A plain `cargo install bpf-linker` wants a system libLLVM of the newest version; link it
    // against the nightly toolchain's own LLVM instead (the one rustc uses for BPF code).
    let (lib, name, major) = nightly_llvm()?;
    let rustflags = format!(
        "-L native={dir} -l dylib={name} -C link-arg=-Wl,-rpath,{dir}",
        dir = lib.display()
    );
    run(Command::new("cargo").env("RUSTFLAGS", rustflags).args([
        "install",
        "bpf-linker",
        "--locked",
        "--force",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        &format!("llvm-{major},no-llvm-linking"),
    ]))?;
    if !bpf_linker_ok(&path) {
        bail!(
            "bpf-linker was built but `{} --version` does not work",
            path.display()
        );
    }
    Ok(())
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn debian(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        say(
            "Debian packages",
            &format!("present ({})", packages.join(" ")),
        );
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {}; install them as root: apt-get install -y {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    say(
        "Debian packages",
        &format!("installing {}", missing.join(" ")),
    );
    // Refuse service starts for the install, unless the machine already has a policy (a
    // container image's `exit 101`, or the administrator's own): that one is left alone.
    let _policy = NoServiceStarts::install()?;
    let before = daemon_pids();
    let install = |cmd: &mut Command| {
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing);
        run(cmd)
    };
    if install(&mut Command::new("apt-get")).is_err() {
        // A fresh machine may have no package lists yet.
        run(Command::new("apt-get").args(["update", "-q"]))?;
        install(&mut Command::new("apt-get"))?;
    }
    stop_new_daemons(&before);
    Ok(())
}

/// A `policy-rc.d` of ours for as long as this lives (none is written if one exists).
struct NoServiceStarts(Option<&'static Path>);

impl NoServiceStarts {
    fn install() -> Result<Self> {
        let path = Path::new(POLICY_RC_D);
        if path.exists() {
            return Ok(Self(None));
        }
        use std::os::unix::fs::PermissionsExt as _;
        fs::write(
            path,
            "#!/bin/sh\n# Written by `cargo xtask setup` for the length of an install.\nexit 101\n",
        )
        .with_context(|| format!("cannot write {POLICY_RC_D}"))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
        Ok(Self(Some(path)))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            fs::remove_file(path).ok();
        }
    }
}

/// Pids of running [`DAEMONS`] (by `/proc/PID/comm`).
fn daemon_pids() -> Vec<(u32, String)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let comm = comm.trim();
        DAEMONS.contains(&comm).then(|| (pid, comm.to_owned()))
    })
    .collect()
}

/// Stops (SIGTERM, then SIGKILL after 10 s) the [`DAEMONS`] that were not running `before`
/// the install: a package script started them despite the policy.
fn stop_new_daemons(before: &[(u32, String)]) {
    let new: Vec<(u32, String)> = daemon_pids()
        .into_iter()
        .filter(|d| !before.contains(d))
        .collect();
    for (pid, comm) in &new {
        say(
            "Debian packages",
            &format!("stopping {comm} ({pid}), started by the install"),
        );
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for (pid, comm) in &new {
        let alive =
            || fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm);
        while alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if alive() {
            // SAFETY: as above.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
    }
}

fn mounted(fstype: &str, at: &str) -> bool {
    fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines().any(|l| {
            let mut fields = l.split(' ');
            let mount = fields.nth(4);
            let fs = l.split(" - ").nth(1).and_then(|r| r.split(' ').next());
            mount == Some(at) && fs == Some(fstype)
        })
    })
}

fn mounts() -> Result<()> {
    for (fstype, at) in [("tracefs", "/sys/kernel/tracing"), ("bpf", "/sys/fs/bpf")] {
        if mounted(fstype, at) {
            say(&format!("{fstype} at {at}"), "mounted");
            continue;
        }
        if !is_root() {
            say(
                &format!("{fstype} at {at}"),
                "not mounted (needs root; skipped)",
            );
            continue;
        }
        fs::create_dir_all(at).ok();
        run_quiet(Command::new("mount").args(["-t", fstype, "nodev", at]))
            .with_context(|| format!("mounting {fstype} at {at}"))?;
        say(&format!("{fstype} at {at}"), "mounted now");
    }
    Ok(())
}
