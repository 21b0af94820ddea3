//! `cargo xtask lab`: memstress scenarios end to end, on this machine's kernel (`host`) and on
//! Debian's cloud kernels booted under qemu (`6.12`, `6.1`: memory controller on cgroup v2,
//! fentry available), with a report per scenario and kernel in `target/lab/`.
//!
//! A guest boots from an initramfs holding busybox, memstress, the lab agent
//! (`memstress-lab`, from the tests package), the scenarios and the files their steps read
//! (a `replay` step's log); its init script runs the agent and prints the agent's output files
//! over the serial console between markers, base64 encoded; this side decodes them. Each boot
//! has a timeout; its console log is kept. A guest has 2 GiB of memory unless its scenarios
//! ask for another size (`memory = "512Mi"`): one boot per size, each with its scenarios.
//!
//! `cargo xtask lab replay FILE` replays a kernel log's OOM reports: it writes a one-off
//! scenario (`replay-<file stem>`: a `replay` step of a copy of FILE, and the
//! `replay_same_victim` expectation) under target/lab/generated/ and runs it like any other.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{root, run, run_quiet, setup};

/// Kernels the lab knows: label and the Debian package name pattern.
const KERNELS: [(&str, &str); 2] = [
    ("6.12", r"^linux-image-6\.12\..*-cloud-amd64-unsigned$"),
    ("6.1", r"^linux-image-6\.1\.0-.*-cloud-amd64-unsigned$"),
];

/// Debian packages the lab needs.
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
    "stress-ng",
];

/// What to run.
pub struct Args {
    /// One scenario (by name or file); all when `None`.
    pub scenario: Option<String>,
    /// Instead of scenarios: a kernel log whose OOM reports a one-off scenario replays.
    pub replay: Option<PathBuf>,
    /// Kernels by label.
    pub kernels: Vec<String>,
    /// Bound on one guest boot.
    pub boot_timeout: Duration,
}

fn scenario_dir() -> PathBuf {
    root().join("xtask/scenarios")
}

fn out_dir() -> PathBuf {
    root().join("target/lab")
}

/// The scenario files to run.
fn scenarios(which: Option<&str>) -> Result<Vec<PathBuf>> {
    let toml_in = |dir: PathBuf| -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        found.sort();
        found
    };
    let mut all = toml_in(scenario_dir());
    let Some(which) = which else {
        return Ok(all);
    };
    // Scenarios run only when named (`by-name/`): not yet reliable enough to gate CI.
    all.extend(toml_in(scenario_dir().join("by-name")));
    let as_path = PathBuf::from(which);
    if as_path.is_file() {
        return Ok(vec![as_path]);
    }
    let found: Vec<PathBuf> = all
        .iter()
        .filter(|p| p.file_stem().is_some_and(|s| s == which))
        .cloned()
        .collect();
    if found.is_empty() {
        let names: Vec<String> = all
            .iter()
            .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .collect();
        bail!("no scenario `{which}`; there are: {}", names.join(", "));
    }
    Ok(found)
}

/// Runs the lab. Fails if any scenario failed on any kernel.
pub fn lab(args: &Args) -> Result<()> {
    for k in &args.kernels {
        if k != "host" && !KERNELS.iter().any(|(label, _)| label == k) {
            let known: Vec<&str> = std::iter::once("host")
                .chain(KERNELS.iter().map(|(l, _)| *l))
                .collect();
            bail!("unknown kernel `{k}`; known: {}", known.join(", "));
        }
    }
    let files = match &args.replay {
        Some(log) => vec![replay_scenario(log)?],
        None => scenarios(args.scenario.as_deref())?,
    };
    setup::setup(PACKAGES)?;
    let (memstress, agent) = build()?;
    // Refuse a bad scenario before booting anything.
    run(Command::new(&agent).arg("validate").args(&files)).context("a scenario file is invalid")?;
    let extras = extra_files(&agent, &files)?;
    let mut results: BTreeMap<(String, String), Verdict> = BTreeMap::new();
    let mut failures = Vec::new();
    for kernel in &args.kernels {
        let dir = out_dir().join(kernel);
        // Results of an earlier run of the same scenarios would be mistaken for this one's.
        for f in &files {
            if let Some(stem) = f.file_stem().and_then(|s| s.to_str()) {
                let _ = fs::remove_dir_all(dir.join(stem));
                // A failed run's report kept beside a retry (a scenario's `attempts`).
                let attempt = format!("{stem}-attempt-");
                for old in fs::read_dir(&dir).into_iter().flatten().flatten() {
                    if old.file_name().to_string_lossy().starts_with(&attempt) {
                        let _ = fs::remove_dir_all(old.path());
                    }
                }
            }
        }
        let _ = fs::remove_file(dir.join("results.json"));
        if kernel == "host" {
            if let Err(e) = run_host(&memstress, &agent, &files, &dir) {
                failures.push(format!("{kernel}: {e:#}"));
            }
        } else {
            // One guest per memory size the scenarios ask for; each boot's results.json is
            // taken before the next boot writes its own.
            let mut results = Vec::new();
            for (mib, group) in by_guest_memory(&agent, &files)? {
                let guest = Guest {
                    memstress: &memstress,
                    agent: &agent,
                    files: &group,
                    extras: &extras,
                    memory_mib: mib,
                };
                if let Err(e) = run_guest(kernel, &guest, &dir, args.boot_timeout) {
                    failures.push(format!("{kernel} ({mib} MiB guest): {e:#}"));
                }
                results.extend(take_results(&dir));
            }
            fs::write(
                dir.join("results.json"),
                serde_json::to_string_pretty(&results)?,
            )?;
        }
        for (scenario, verdict) in read_results(&dir, &files) {
            if verdict == Verdict::Fail || verdict == Verdict::Missing {
                failures.push(format!(
                    "{scenario} on {kernel}: {verdict:?}{}",
                    why_failed(&dir.join(&scenario))
                ));
            }
            results.insert((scenario, kernel.clone()), verdict);
        }
    }
    write_index(&results, &args.kernels)?;
    eprintln!("xtask: lab index: {}", out_dir().join("index.md").display());
    if !failures.is_empty() {
        failures.dedup();
        bail!("lab failures:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// Writes the one-off scenario that replays `log` (a copy of it beside the scenario, so that
/// it travels into a guest as any scenario's file does); returns the scenario file.
fn replay_scenario(log: &Path) -> Result<PathBuf> {
    if !log.is_file() {
        bail!("{}: no such file", log.display());
    }
    let (name, text) = replay_scenario_text(log);
    let dir = out_dir().join("generated").join(&name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::copy(log, dir.join(format!("{name}.log")))
        .with_context(|| format!("copying {}", log.display()))?;
    let file = dir.join(format!("{name}.toml"));
    fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    eprintln!("xtask: replaying {} as scenario {name}", log.display());
    Ok(file)
}

/// The name (`replay-<stem>`, the stem cut to what a scenario name allows) and the text of
/// the scenario replaying `log`, which it reads as `<name>.log` beside it.
fn replay_scenario_text(log: &Path) -> (String, String) {
    let stem: String = log
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64 - "replay-".len())
        .collect();
    let name = format!("replay-{}", if stem.is_empty() { "log" } else { &stem });
    // A JSON string is a TOML basic string.
    let quoted = |s: &str| serde_json::Value::from(s).to_string();
    let description = format!(
        "Replays the OOM reports of `{}` (`cargo xtask lab replay`): each report's tasks, at \
         its sizes, in a sandbox cgroup at its limit, until the kernel chooses; the victim must \
         be the report's.",
        log.display()
    );
    let text = format!(
        "name = {}\ndescription = {}\n# A reproduction runs real tasks to an OOM: slow under TCG.\n\
         timeout = \"5m\"\n\n[[step]]\nreplay = {}\n\n[[expect]]\nkind = \"replay_same_victim\"\n",
        quoted(&name),
        quoted(&description),
        quoted(&format!("{name}.log"))
    );
    (name, text)
}

/// The files each scenario's steps read (the agent knows), as (where it is, where it goes
/// relative to the guest's scenario directory).
fn extra_files(agent: &Path, files: &[PathBuf]) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut extras: Vec<(PathBuf, PathBuf)> = Vec::new();
    for scenario in files {
        let listed = run_quiet(Command::new(agent).arg("files").arg(scenario))?;
        let dir = scenario.parent().unwrap_or(Path::new("."));
        for rel in listed.lines().filter(|l| !l.is_empty()) {
            let (from, to) = (dir.join(rel), PathBuf::from(rel));
            match extras.iter().find(|(_, t)| *t == to) {
                Some((other, _)) if fs::read(other)? != fs::read(&from)? => bail!(
                    "{} and {} would both be {rel} in a guest's scenario directory",
                    other.display(),
                    from.display()
                ),
                Some(_) => {}
                None => extras.push((from, to)),
            }
        }
    }
    Ok(extras)
}

/// The guest memory (`-m`, MiB) when a scenario does not ask for one: the agent's default
/// (tests/src/lab/scenario.rs, `DEFAULT_GUEST_MEMORY_MIB`); its boot's console log is
/// `console.log`, another size's `console-<N>Mi.log`.
const DEFAULT_GUEST_MIB: u64 = 2048;

/// The scenario files by the memory of the guest each runs in (the agent reads their
/// `memory`), in the order of the first file of each size.
fn by_guest_memory(agent: &Path, files: &[PathBuf]) -> Result<Vec<(u64, Vec<PathBuf>)>> {
    let mut groups: Vec<(u64, Vec<PathBuf>)> = Vec::new();
    for file in files {
        let said = run_quiet(Command::new(agent).arg("guest-memory").arg(file))?;
        let mib: u64 = said
            .trim()
            .parse()
            .with_context(|| format!("guest-memory of {}: `{}`", file.display(), said.trim()))?;
        match groups.iter_mut().find(|(m, _)| *m == mib) {
            Some((_, group)) => group.push(file.clone()),
            None => groups.push((mib, vec![file.clone()])),
        }
    }
    Ok(groups)
}

/// The results one boot wrote to `dir/results.json` (removed: the next boot writes its own).
fn take_results(dir: &Path) -> Vec<serde_json::Value> {
    let path = dir.join("results.json");
    let results = fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<Vec<serde_json::Value>>(&t).ok())
        .unwrap_or_default();
    let _ = fs::remove_file(path);
    results
}

fn build() -> Result<(PathBuf, PathBuf)> {
    eprintln!("xtask: building memstress and the lab agent (release)");
    crate::build_with_helper("memstress-lab")
}

fn run_host(memstress: &Path, agent: &Path, files: &[PathBuf], dir: &Path) -> Result<()> {
    eprintln!("xtask: lab on this machine's kernel");
    fs::create_dir_all(dir)?;
    let status = Command::new(agent)
        .args(["run", "--kernel-label", "host", "--memstress"])
        .arg(memstress)
        .arg("--out")
        .arg(dir)
        .args(files)
        .status()
        .context("cannot run the lab agent")?;
    // Exit 1 means some scenario failed: the index says which.
    if status.code() == Some(2) || status.code().is_none() {
        bail!("the lab agent failed ({status})");
    }
    Ok(())
}

/// A Debian cloud kernel, extracted: its image and the `brd` (RAM disk) module.
struct Kernel {
    package: String,
    vmlinuz: PathBuf,
    brd: PathBuf,
}

fn fetch_kernel(label: &str) -> Result<Kernel> {
    let pattern = KERNELS
        .iter()
        .find(|(l, _)| *l == label)
        .map(|(_, p)| *p)
        .context("unknown kernel")?;
    let search = || {
        run_quiet(Command::new("apt-cache").args(["search", "--names-only", pattern])).map(|out| {
            out.lines()
                .filter_map(|l| l.split(" - ").next())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
    };
    let mut packages = search()?;
    if packages.is_empty() {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        packages = search()?;
    }
    // The newest: sort by Debian version order of the names (6.12.117 after 6.12.99).
    packages.sort_by_key(|p| version_key(p));
    let package = packages
        .pop()
        .with_context(|| format!("no Debian package matches {pattern}"))?;
    let cache = out_dir().join("kernels");
    let extracted = cache.join(&package);
    let boot = extracted.join("boot");
    let find = |dir: &Path, prefix: &str| -> Option<PathBuf> {
        fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
    };
    if find(&boot, "vmlinuz-").is_none() {
        eprintln!("xtask: fetching {package}");
        fs::create_dir_all(&cache)?;
        run(Command::new("apt-get")
            .current_dir(&cache)
            .args(["download", "-q", &package]))?;
        let deb = find(&cache, &format!("{package}_")).context("the downloaded .deb is missing")?;
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&extracted))?;
        let _ = fs::remove_file(&deb);
    }
    let vmlinuz = find(&boot, "vmlinuz-").context("no vmlinuz in the package")?;
    let modules = fs::read_dir(extracted.join("lib/modules"))?
        .flatten()
        .next()
        .context("no modules in the package")?
        .path();
    let brd_dir = modules.join("kernel/drivers/block");
    let brd = if brd_dir.join("brd.ko").is_file() {
        brd_dir.join("brd.ko")
    } else {
        let xz = brd_dir.join("brd.ko.xz");
        let plain = cache.join(format!("{package}-brd.ko"));
        if !plain.is_file() {
            let out = Command::new("xz")
                .arg("-dc")
                .arg(&xz)
                .output()
                .context("xz")?;
            if !out.status.success() {
                bail!("cannot decompress {}", xz.display());
            }
            fs::write(&plain, out.stdout)?;
        }
        plain
    };
    Ok(Kernel {
        package,
        vmlinuz,
        brd,
    })
}

/// Sort key for package names by their numeric parts.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Copies `binary` and the shared libraries `ldd` lists for it under `root`.
fn copy_with_libs(binary: &Path, dest: &Path, root: &Path) -> Result<()> {
    fs::copy(binary, dest).with_context(|| format!("copying {}", binary.display()))?;
    let out = run_quiet(Command::new("ldd").arg(binary))?;
    for lib in out.split_whitespace().filter(|w| w.starts_with('/')) {
        let target = root.join(lib.trim_start_matches('/'));
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        if !target.exists() {
            fs::copy(lib, &target).with_context(|| format!("copying {lib}"))?;
        }
    }
    Ok(())
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mkdir -p /sys/fs/cgroup /sys/kernel/tracing /sys/fs/bpf /mnt/cache /out
mount -t cgroup2 none /sys/fs/cgroup
mount -t tracefs nodev /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
echo +memory > /sys/fs/cgroup/cgroup.subtree_control
# Only emergencies on the console: it carries the results.
echo 1 > /proc/sys/kernel/printk
# A CPU stuck in the kernel panics rather than hanging the guest until the boot's timeout
# with nothing said; every CPU's stack is taken first, and the panic prints the whole kernel
# log (the stacks and the OOM reports the console level kept off it) before the guest stops.
echo 1 > /proc/sys/kernel/softlockup_all_cpu_backtrace
echo 1 > /proc/sys/kernel/softlockup_panic
echo 32 > /proc/sys/kernel/panic_print
# A RAM disk with ext2, for page cache that is page cache (on tmpfs it would be shmem).
insmod /lib/brd.ko rd_nr=1 rd_size=524288 && mke2fs -q /dev/ram0 && mount /dev/ram0 /mnt/cache && chmod 1777 /mnt/cache
echo "@@LAB:BEGIN $(uname -r)"
# The agent's log goes to the console as it is written: a guest that hangs or panics then
# shows which scenario it was in, beside what its kernel said.
{ /bin/memstress-lab run --memstress /bin/memstress --out /out --kernel-label @LABEL@ \
    --root-name lab --file-dir /mnt/cache /scenarios/*.toml; echo $? > /tmp/agent.rc; } 2>&1 \
    | sed 's/^/@@LOG /'
echo "@@LAB:EXIT $(cat /tmp/agent.rc)"
for f in $(find /out -type f); do
    echo "@@FILE ${f#/out/}"
    base64 "$f" | sed 's/^/@@B64 /'
    echo "@@EOF"
done
echo "@@LAB:END"
poweroff -f
"#;

/// What a guest boots with.
struct Guest<'a> {
    memstress: &'a Path,
    agent: &'a Path,
    /// The scenario files.
    files: &'a [PathBuf],
    /// The files their steps read: (where it is, path relative to the scenario directory).
    extras: &'a [(PathBuf, PathBuf)],
    /// Its memory (qemu's `-m`), in MiB.
    memory_mib: u64,
}

fn build_initramfs(label: &str, kernel: &Kernel, guest: &Guest) -> Result<PathBuf> {
    let work = out_dir().join("initramfs").join(label);
    let _ = fs::remove_dir_all(&work);
    let tree = work.join("root");
    for d in [
        "bin",
        "lib",
        "scenarios",
        "proc",
        "sys",
        "dev",
        "tmp",
        "mnt",
        "out",
    ] {
        fs::create_dir_all(tree.join(d))?;
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        bail!("/bin/busybox is missing: install busybox-static");
    }
    fs::copy(busybox, tree.join("bin/busybox"))?;
    copy_with_libs(guest.memstress, &tree.join("bin/memstress"), &tree)?;
    copy_with_libs(guest.agent, &tree.join("bin/memstress-lab"), &tree)?;
    fs::copy(&kernel.brd, tree.join("lib/brd.ko"))?;
    for f in guest.files {
        let name = f.file_name().context("scenario file name")?;
        fs::copy(f, tree.join("scenarios").join(name))?;
    }
    for (from, rel) in guest.extras {
        let to = tree.join("scenarios").join(rel);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
    }
    let init = tree.join("init");
    fs::write(&init, INIT.replace("@LABEL@", label))?;
    run(Command::new("chmod").arg("+x").arg(&init))?;
    let image = work.join("initrd.gz");
    run(Command::new("sh").current_dir(&tree).arg("-c").arg(format!(
        "find . | cpio -o -H newc --quiet | gzip -1 > {}",
        image.display()
    )))?;
    Ok(image)
}

fn run_guest(label: &str, guest: &Guest, dir: &Path, timeout: Duration) -> Result<()> {
    let kernel = fetch_kernel(label)?;
    eprintln!(
        "xtask: lab on {label} ({}) under qemu, {} MiB",
        kernel.package, guest.memory_mib
    );
    let initrd = build_initramfs(label, &kernel, guest)?;
    fs::create_dir_all(dir)?;
    let log_path = dir.join(console_log(guest.memory_mib));
    let mut log = fs::File::create(&log_path)?;
    let memory = guest.memory_mib.to_string();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", &memory, "-smp", "2"])
        .args([
            "-nodefaults",
            "-nographic",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let mut stderr = child.stderr.take().context("qemu stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    let mut ended = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                writeln!(log, "{line}")?;
                if let Some(rest) = line.strip_prefix("@@LOG ") {
                    eprintln!("  [{label}] {rest}");
                }
                ended |= line.starts_with("@@LAB:END");
                lines.push(line);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the {label} guest did not finish within {timeout:?}; its console log is {}{}",
                log_path.display(),
                kernel_said(&lines)
            );
        }
    }
    let status = child.wait()?;
    let mut err = String::new();
    let _ = stderr.read_to_string(&mut err);
    if !ended {
        bail!(
            "the {label} guest stopped before reporting ({status}{}); its console log is {}{}",
            if err.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", err.trim())
            },
            log_path.display(),
            kernel_said(&lines)
        );
    }
    extract_files(&lines, dir)
}

/// The guest's last words on its console, for an error: the last lines after the agent
/// started, its log and its kernel's messages, without the results' protocol. The kernel's
/// are emergencies only (a soft lockup, a panic with its stack: the init script makes a soft
/// lockup panic), and CI keeps only what xtask prints.
fn kernel_said(lines: &[String]) -> String {
    const LAST: usize = 150;
    let begun = lines
        .iter()
        .position(|l| l.starts_with("@@LAB:BEGIN"))
        .map_or(0, |i| i + 1);
    let said: Vec<&str> = lines[begun..]
        .iter()
        .filter_map(|l| match l.strip_prefix("@@LOG ") {
            Some(agent) => Some(agent),
            None => (!l.starts_with("@@")).then_some(l.as_str()),
        })
        .filter(|l| !l.trim().is_empty())
        .collect();
    if said.is_empty() {
        return String::new();
    }
    let from = said.len().saturating_sub(LAST);
    format!(
        "; its kernel said ({} of {} lines):\n    {}",
        said.len() - from,
        said.len(),
        said[from..].join("\n    ")
    )
}

/// The console log of a guest of `memory_mib`.
fn console_log(memory_mib: u64) -> String {
    if memory_mib == DEFAULT_GUEST_MIB {
        "console.log".to_owned()
    } else {
        format!("console-{memory_mib}Mi.log")
    }
}

/// Writes the files the guest printed between `@@FILE path` and `@@EOF`.
fn extract_files(lines: &[String], dir: &Path) -> Result<()> {
    let mut current: Option<(PathBuf, String)> = None;
    for line in lines {
        if let Some(path) = line.strip_prefix("@@FILE ") {
            let rel = Path::new(path.trim());
            if rel.is_absolute()
                || rel
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                bail!("the guest sent a file path outside the output: {path}");
            }
            current = Some((dir.join(rel), String::new()));
        } else if let Some(chunk) = line.strip_prefix("@@B64 ") {
            if let Some((_, data)) = &mut current {
                data.push_str(chunk.trim());
            }
        } else if line.starts_with("@@EOF")
            && let Some((path, data)) = current.take()
        {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(
                &path,
                base64_decode(&data).with_context(|| format!("decoding {}", path.display()))?,
            )?;
        }
    }
    Ok(())
}

fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in text.as_bytes() {
        if c == b'=' {
            break;
        }
        let v = value(c).with_context(|| format!("bad base64 byte {c:#x}"))?;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    Fail,
    Skip,
    Missing,
}

fn read_results(dir: &Path, files: &[PathBuf]) -> Vec<(String, Verdict)> {
    let text = fs::read_to_string(dir.join("results.json")).unwrap_or_default();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    files
        .iter()
        .filter_map(|f| f.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|name| {
            let entry = value
                .as_array()
                .and_then(|a| a.iter().find(|r| r["scenario"] == name.as_str()));
            let verdict = match entry {
                None => Verdict::Missing,
                Some(r) if !r["skipped"].is_null() => Verdict::Skip,
                Some(r) if r["passed"] == true => Verdict::Pass,
                Some(_) => Verdict::Fail,
            };
            (name, verdict)
        })
        .collect()
}

/// What a failed scenario's events say went wrong: its failed expectations (expected and
/// actual) and its error, one per line, so that a CI log names the cause without the report.
fn why_failed(dir: &Path) -> String {
    let Ok(text) = fs::read_to_string(dir.join("events.jsonl")) else {
        return String::new();
    };
    let mut out = String::new();
    for event in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let failed = (event["type"] == "expectation" && event["passed"] == false)
            || (event["type"] == "result" && !event["error"].is_null())
            || event["type"] == "note";
        if !failed {
            continue;
        }
        let text = match event["type"].as_str() {
            Some("expectation") => format!(
                "{}: expected {}, got {}",
                event["name"].as_str().unwrap_or("?"),
                event["expected"],
                event["actual"]
            ),
            Some("result") => format!("error: {}", event["error"].as_str().unwrap_or("?")),
            _ => format!("note: {}", event["text"].as_str().unwrap_or("?")),
        };
        out.push_str("\n      ");
        out.push_str(&text);
    }
    out
}

fn write_index(results: &BTreeMap<(String, String), Verdict>, kernels: &[String]) -> Result<()> {
    let path = out_dir().join("index.md");
    // Merge with an existing index so that a run of one kernel keeps the others' results.
    let mut table: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut all_kernels: Vec<String> = Vec::new();
    if let Ok(old) = fs::read_to_string(&path)
        && let Some(header) = old.lines().find(|l| l.starts_with("| scenario |"))
    {
        all_kernels = header
            .split('|')
            .skip(2)
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect();
        for row in old.lines().filter(|l| {
            l.starts_with("| ") && !l.starts_with("| scenario") && !l.starts_with("|--")
        }) {
            let cells: Vec<String> = row.split('|').map(|c| c.trim().to_owned()).collect();
            if cells.len() < 3 {
                continue;
            }
            let scenario = cells[1].clone();
            for (k, cell) in all_kernels.iter().zip(cells.iter().skip(2)) {
                table
                    .entry(scenario.clone())
                    .or_default()
                    .insert(k.clone(), cell.clone());
            }
        }
    }
    for k in kernels {
        if !all_kernels.contains(k) {
            all_kernels.push(k.clone());
        }
    }
    for ((scenario, kernel), verdict) in results {
        let word = match verdict {
            Verdict::Pass => "✅ pass",
            Verdict::Fail => "❌ FAIL",
            Verdict::Skip => "⏭ skipped",
            Verdict::Missing => "❌ no result",
        };
        let cell = if *verdict == Verdict::Missing {
            format!("{word} ([log]({kernel}/console.log))")
        } else {
            format!("[{word}]({kernel}/{scenario}/report.md)")
        };
        table
            .entry(scenario.clone())
            .or_default()
            .insert(kernel.clone(), cell);
    }
    let mut md = String::from(
        "# memstress lab\n\nEach scenario on each kernel: `cargo xtask lab --all` (re)writes this table.\n\
         `host` is the machine's own kernel; the others are Debian cloud kernels under qemu.\n\n",
    );
    md.push_str(&format!("| scenario | {} |\n", all_kernels.join(" | ")));
    md.push_str(&format!("|---|{}\n", "---|".repeat(all_kernels.len())));
    for (scenario, row) in &table {
        let cells: Vec<String> = all_kernels
            .iter()
            .map(|k| row.get(k).cloned().unwrap_or_else(|| "–".to_owned()))
            .collect();
        md.push_str(&format!("| {scenario} | {} |\n", cells.join(" | ")));
    }
    fs::create_dir_all(out_dir())?;
    let mut f = fs::File::create(&path)?;
    f.write_all(md.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_base64() {
        assert_eq!(base64_decode("aGVsbG8gd29ybGQ=").unwrap(), b"hello world");
        assert_eq!(base64_decode("YWJj").unwrap(), b"abc");
        assert!(base64_decode("a$b").is_err());
    }

    #[test]
    fn orders_kernel_packages_by_version() {
        let mut v = [
            "linux-image-6.12.99+deb12-cloud-amd64-unsigned".to_owned(),
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned".to_owned(),
            "linux-image-6.12.107+deb12-cloud-amd64-unsigned".to_owned(),
        ];
        v.sort_by_key(|p| version_key(p));
        assert!(v.last().unwrap().contains("117"));
    }

    #[test]
    fn a_replay_scenario_is_named_after_the_log() {
        let (name, text) = replay_scenario_text(Path::new("/tmp/node 7: \"oom\".txt"));
        assert_eq!(name, "replay-node-7---oom-");
        assert!(
            text.starts_with("name = \"replay-node-7---oom-\"\n"),
            "{text}"
        );
        assert!(text.contains("`/tmp/node 7: \\\"oom\\\".txt`"), "{text}");
        assert!(text.contains("\n[[step]]\nreplay = \"replay-node-7---oom-.log\"\n"));
        assert!(text.contains("\n[[expect]]\nkind = \"replay_same_victim\"\n"));
        let (long, _) = replay_scenario_text(Path::new(&"x".repeat(200)));
        assert_eq!(long.len(), 64);
        assert_eq!(replay_scenario_text(Path::new("/")).0, "replay-log");
    }

    #[test]
    fn refuses_paths_outside_the_output() {
        let dir = std::env::temp_dir().join("xtask-lab-test");
        let lines = vec!["@@FILE ../../etc/passwd".to_owned(), "@@EOF".to_owned()];
        assert!(extract_files(&lines, &dir).is_err());
    }
}
