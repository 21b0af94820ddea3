//! The lab agent: runs scenarios on the kernel it runs on (this machine's, or one booted
//! under qemu by `cargo xtask lab`), and renders their reports.
//!
//! ```text
//! memstress-lab run --memstress BIN --out DIR --kernel-label LABEL [--root-name NAME]
//!                   [--file-dir DIR] FILE...
//! memstress-lab validate FILE...
//! memstress-lab files FILE
//! memstress-lab guest-memory FILE
//! memstress-lab report DIR
//! memstress-lab app --name NAME --size BYTES --reread BYTES --dir DIR [--work N]
//! ```
//! `app` is a scenario's application that re-reads a file working set (`[[app]]` with
//! `reread`; see `memstress_tests::lab::app`): the lab starts it, nobody else.
//! `files` prints the files a scenario's steps read (a `replay` step's log), one a line,
//! relative to the scenario file's directory: what must travel with it into a guest.
//! `guest-memory` prints the memory of the guest it runs in, in MiB (its `memory`, or the
//! default): `cargo xtask lab` boots one guest per size.
//! `run` exits 0 when every scenario passed (or was skipped with a reason), 1 otherwise,
//! 2 for bad input; it writes
//! `<out>/<scenario>/{events.jsonl,report.md,timeline.svg,dmesg.txt}` and `<out>/results.json`.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use memstress_tests::lab::{
    app, report,
    runner::{self, Options},
    scenario::Scenario,
};
use serde_json::{Value, json};

fn usage() -> ExitCode {
    eprintln!(
        "usage: memstress-lab run --memstress BIN --out DIR --kernel-label LABEL [--root-name NAME] [--file-dir DIR] FILE...\n\
         \x20      memstress-lab validate FILE...\n\
         \x20      memstress-lab files FILE\n\
         \x20      memstress-lab guest-memory FILE\n\
         \x20      memstress-lab report DIR"
    );
    ExitCode::from(2)
}

fn load_all(files: &[PathBuf]) -> Result<Vec<Scenario>, String> {
    files
        .iter()
        .map(|f| Scenario::load(f).map_err(|e| e.to_string()))
        .collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("validate") => {
            let files: Vec<PathBuf> = args[1..].iter().map(PathBuf::from).collect();
            match load_all(&files) {
                Ok(s) => {
                    for s in s {
                        println!("{}: ok", s.name);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("memstress-lab: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Some("files") => {
            let [_, file] = args.as_slice() else {
                return usage();
            };
            match Scenario::load(Path::new(file)) {
                Ok(s) => {
                    for f in s.files() {
                        println!("{f}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("memstress-lab: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Some("guest-memory") => {
            let [_, file] = args.as_slice() else {
                return usage();
            };
            match Scenario::load(Path::new(file)) {
                Ok(s) => {
                    println!("{}", s.guest_memory_mib());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("memstress-lab: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Some("report") => {
            let Some(dir) = args.get(1) else {
                return usage();
            };
            let dir = Path::new(dir);
            let text = match std::fs::read_to_string(dir.join("events.jsonl")) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("memstress-lab: {}: {e}", dir.join("events.jsonl").display());
                    return ExitCode::from(2);
                }
            };
            let events: Vec<Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            match report::write_report(dir, &events) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("memstress-lab: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("run") => run(&args[1..]),
        Some("app") => match app::AppArgs::parse(&args[1..]) {
            Ok(parsed) => ExitCode::from(u8::try_from(app::main(&parsed)).unwrap_or(1)),
            Err(e) => {
                eprintln!("memstress-lab app: {e}");
                ExitCode::from(2)
            }
        },
        _ => usage(),
    }
}

fn run(args: &[String]) -> ExitCode {
    let mut memstress = None;
    let mut out = None;
    let mut label = None;
    let mut root = format!("memstress-lab-{}", std::process::id());
    let mut file_dir = memstress::stress::stressor::default_file_dir();
    let mut files = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--memstress" => memstress = it.next().map(PathBuf::from),
            "--out" => out = it.next().map(PathBuf::from),
            "--kernel-label" => label = it.next().cloned(),
            "--root-name" => {
                if let Some(r) = it.next() {
                    root = r.clone();
                }
            }
            "--file-dir" => {
                if let Some(d) = it.next() {
                    file_dir = PathBuf::from(d);
                }
            }
            f if !f.starts_with("--") => files.push(PathBuf::from(f)),
            _ => return usage(),
        }
    }
    let (Some(memstress), Some(out), Some(label)) = (memstress, out, label) else {
        return usage();
    };
    let scenarios = match load_all(&files) {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => return usage(),
        Err(e) => {
            eprintln!("memstress-lab: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = Options {
        memstress,
        kernel_label: label,
        root_name: root,
        out: out.clone(),
        file_dir,
    };
    let mut results = Vec::new();
    let mut all_passed = true;
    for scenario in &scenarios {
        let started = Instant::now();
        eprintln!(
            "memstress-lab: {} on {} …",
            scenario.name, opts.kernel_label
        );
        let attempts = scenario.attempts.max(1);
        let mut attempt = 1;
        let (passed, skipped, error) = loop {
            let ran = match runner::run(scenario, &opts) {
                Ok(o) => (o.passed, o.skipped, None),
                Err(e) => (false, None, Some(format!("{e:#}"))),
            };
            if ran.0 || attempt == attempts {
                break ran;
            }
            // Kept beside the next run's report, which takes the scenario's own name.
            let dir = opts.out.join(&scenario.name);
            let kept = opts
                .out
                .join(format!("{}-attempt-{attempt}", scenario.name));
            let _ = std::fs::rename(&dir, &kept);
            eprintln!(
                "memstress-lab: {} on {}: run {attempt} of {attempts} failed{}; its report is \
                 {}; again from scratch",
                scenario.name,
                opts.kernel_label,
                ran.2
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default(),
                kept.display()
            );
            attempt += 1;
        };
        all_passed &= passed;
        let verdict = match (&skipped, passed) {
            (Some(_), _) => "SKIP",
            (None, true) => "PASS",
            (None, false) => "FAIL",
        };
        eprintln!(
            "memstress-lab: {verdict} {} on {} ({:.1} s{}){}",
            scenario.name,
            opts.kernel_label,
            started.elapsed().as_secs_f64(),
            if attempt > 1 {
                format!(", run {attempt} of {attempts}")
            } else {
                String::new()
            },
            skipped
                .as_deref()
                .or(error.as_deref())
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        results.push(
            json!({"scenario": scenario.name, "kernel": opts.kernel_label,
            "passed": passed, "skipped": skipped, "error": error, "runs": attempt,
            "seconds": started.elapsed().as_secs_f64()}),
        );
    }
    let _ = std::fs::create_dir_all(&out);
    if let Err(e) = std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results).unwrap_or_default(),
    ) {
        eprintln!("memstress-lab: {}: {e}", out.join("results.json").display());
        return ExitCode::FAILURE;
    }
    if all_passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
