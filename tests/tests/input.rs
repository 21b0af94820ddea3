//! Bad input: each gets a one-line error naming the input (and what would be accepted), a
//! non-zero exit code, and nothing is created first.

use std::{path::PathBuf, process::Command};

use memstress_tests::{
    TestCgroup, assert_one_line_error, hierarchy, memstress_output, require_root, test_name,
};

/// Runs `memstress run --new NAME --limit 64Mi <args>` and checks the error, the exit code,
/// and that NAME was not created.
fn refused_run(args: &[&str], code: i32, needles: &[&str]) {
    let name = test_name("input");
    let mut full = vec!["run", "--new", &name, "--limit", "64Mi"];
    full.extend_from_slice(args);
    refused(&full, code, needles);
    assert!(
        !hierarchy().mount.join(&name).exists(),
        "{args:?} created the cgroup"
    );
}

fn refused(args: &[&str], code: i32, needles: &[&str]) {
    let out = memstress_output(args);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_one_line_error(&stderr, needles);
}

#[test]
fn bad_sizes_are_refused() {
    require_root();
    let hint = "Mi";
    for (size, needles) in [
        ("12Qi", vec!["`12Qi`", "Qi", hint]),
        ("-5Mi", vec!["`-5Mi`", "negative"]),
        ("%", vec!["`%`", hint]),
        ("0", vec!["`0`", "greater than zero"]),
        ("0%", vec!["`0%`", "greater than zero"]),
        ("abc", vec!["`abc`", hint]),
        ("", vec!["empty", hint]),
        ("1.5.5Mi", vec!["`1.5.5Mi`", hint]),
        ("99999999999999999999Ti", vec!["too large"]),
        ("17179869184Gi", vec!["too large"]),
    ] {
        refused_run(&["--size", size], 2, &needles);
    }
    let name = test_name("input-limit");
    refused(
        &["run", "--new", &name, "--limit", "0", "--size", "1Mi"],
        2,
        &["`0`", "greater than zero"],
    );
    assert!(!hierarchy().mount.join(&name).exists());
}

/// A size above the limit is legitimate: it forces OOM kills on purpose, and the plan says so.
#[test]
fn sizes_above_the_limit_are_accepted() {
    require_root();
    let name = test_name("above");
    let out = memstress_output(&[
        "run",
        "-o",
        "json",
        "--new",
        &name,
        "--limit",
        "64Mi",
        "--size",
        "200%",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{out:?}");
    let plan: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(plan["total_bytes"], 128u64 << 20);
    assert_eq!(plan["crosses_limit"], true);
}

#[test]
fn bad_options_are_refused() {
    require_root();
    for (args, code, needles) in [
        // Bad values are usage errors (2), whichever part of memstress sees them.
        (
            vec!["--size", "10Mi", "--workers", "0"],
            2,
            vec!["'0'", "--workers", "1..=1024"],
        ),
        (
            vec!["--size", "10Mi", "--workers", "5000"],
            2,
            vec!["'5000'", "--workers", "1..=1024"],
        ),
        (
            vec!["--size", "10Mi", "--oom-score-adj", "2000"],
            2,
            vec!["2000", "-1000"],
        ),
        (vec!["--size", "10Mi", "--hold", "0s"], 2, vec!["`0s`"]),
        (
            vec!["--size", "10Mi", "--hold", "abc"],
            2,
            vec!["`abc`", "30s"],
        ),
        (vec!["--size", "10Mi", "--ramp=-1s"], 2, vec!["`-1s`"]),
        (
            vec!["--size", "10Mi", "--ring-buffer", "2Gi"],
            2,
            vec!["`2Gi`", "1Gi"],
        ),
        (
            vec!["--size", "10Mi", "--user", "no-such-user"],
            2,
            vec!["`no-such-user`", "uid"],
        ),
        // (uid_t)-1 is "leave unchanged" to setresuid: the stressors would stay root.
        (
            vec!["--size", "10Mi", "--user", "4294967295"],
            2,
            vec!["`4294967295`", "uid 4294967295", "unchanged"],
        ),
        (
            vec!["--size", "10Mi", "--user", "65534:4294967295"],
            2,
            vec!["gid 4294967295", "unchanged"],
        ),
        // Flags that would change nothing in this combination are refused, not ignored.
        (
            vec!["--size", "10Mi", "--rewrite-every", "1s"],
            2,
            vec!["--rewrite-every", "keep-dirty"],
        ),
        (
            vec!["--size", "10Mi", "--file-dir", "/var/tmp"],
            2,
            vec!["--file-dir", "--kind file"],
        ),
        (
            vec!["--size", "10Mi", "--kind", "file", "--mlock"],
            2,
            vec!["--mlock", "--kind file"],
        ),
        (
            vec!["--size", "10Mi", "--kind", "file", "--populate"],
            2,
            vec!["--populate", "--kind file"],
        ),
        (
            vec!["--size", "10Mi", "--kind", "file", "--thp"],
            2,
            vec!["--thp", "--kind file"],
        ),
        (
            vec!["--size", "10Mi", "--of-node"],
            2,
            vec!["--of-node", "absolute"],
        ),
        (
            vec!["--fill-to", "50%", "--ramp", "5s"],
            2,
            vec!["--ramp", "--fill-to"],
        ),
        (
            vec!["--fill-to", "50%", "--kind", "file"],
            2,
            vec!["--fill-to", "--kind file"],
        ),
        (vec!["--size", "10Mi", "--kind", "bogus"], 2, vec!["bogus"]),
        (
            vec![
                "--size",
                "10Mi",
                "--kind",
                "file",
                "--file-dir",
                "/no/such/dir",
            ],
            1,
            vec!["/no/such/dir"],
        ),
        (
            vec!["--size", "10Mi", "--fill-to", "50%"],
            2,
            vec!["--size", "--fill-to"],
        ),
    ] {
        refused_run(&args, code, &needles);
    }
    // --limit is the --new sandbox's: on an existing target it would be ignored.
    let existing = TestCgroup::new("input-limit-existing", Some(256 << 20));
    refused(
        &[
            "run",
            "--cgroup",
            existing.path(),
            "--limit",
            "64Mi",
            "--size",
            "1Mi",
        ],
        2,
        &["--limit", "--new"],
    );
    // An inherited hold time and size are echoed as given; so is --oom-score-adj.
    let out = memstress_output(&[
        "run",
        "--cgroup",
        existing.path(),
        "--size",
        "64M",
        "--hold",
        "1h30m",
        "--oom-score-adj",
        "500",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--size 64M = 61 MiB"), "{text}");
    assert!(text.contains("held for 1h 30m"), "{text}");
    assert!(
        text.contains("oom_score_adj 500 (--oom-score-adj)"),
        "{text}"
    );
}

/// `--thp` asks; where the kernel's THP settings refuse, memstress says so (the kernel decides).
#[test]
fn thp_the_kernel_refuses_is_warned_about() {
    require_root();
    let mode = |file: &str| {
        std::fs::read_to_string(format!("/sys/kernel/mm/transparent_hugepage/{file}"))
            .ok()
            .and_then(|t| {
                t.split_whitespace()
                    .find_map(|w| w.strip_prefix('[')?.strip_suffix(']').map(str::to_owned))
            })
    };
    let existing = TestCgroup::new("input-thp", Some(256 << 20));
    for (kind, file) in [("shmem", "shmem_enabled"), ("anon", "enabled")] {
        let refused = mode(file).is_some_and(|m| m == "never" || m == "deny");
        let out = memstress_output(&[
            "run",
            "--cgroup",
            existing.path(),
            "--size",
            "8Mi",
            "--kind",
            kind,
            "--thp",
            "--dry-run",
        ]);
        assert!(out.status.success(), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.contains("--thp:") && stderr.contains(file),
            refused,
            "{kind}: THP {file} is {:?}; stderr: {stderr}",
            mode(file)
        );
    }
}

#[test]
fn bad_targets_are_refused() {
    require_root();
    let mount = hierarchy().mount;
    let dotdot = format!("{}/../../../etc", mount.display());
    for (args, code, needles) in [
        (
            vec!["--cgroup", "/no/such/cgroup"],
            1,
            vec!["/no/such/cgroup"],
        ),
        (vec!["--cgroup", &dotdot], 1, vec!["..", "plain path"]),
        (
            vec!["--cgroup", "relative/path"],
            1,
            vec!["relative/path", "/"],
        ),
        (vec!["--cgroup", ""], 1, vec!["empty"]),
        (
            vec!["--new", "../escape", "--limit", "64Mi"],
            1,
            vec!["../escape"],
        ),
        (
            vec!["--new", "a/../../b", "--limit", "64Mi"],
            1,
            vec!["a/../../b"],
        ),
        (vec!["--new", "x"], 2, vec!["--limit"]),
        (vec!["--pid", "99999999"], 1, vec!["99999999"]),
        (vec!["--pid", "0"], 2, vec!["`0`", "pid"]),
        (vec!["--pid", "abc"], 2, vec!["`abc`", "pid"]),
        (
            vec!["--cgroup", "/"],
            1,
            vec!["root cgroup", "--allow-root-cgroup"],
        ),
        (
            vec!["--cgroup", "/", "--allow-root-cgroup", "--size", "100Ti"],
            1,
            vec!["available memory"],
        ),
    ] {
        let mut full = vec!["run"];
        full.extend_from_slice(&args);
        if !args.contains(&"--size") {
            full.extend(["--size", "10Mi"]);
        }
        full.push("--dry-run");
        refused(&full, code, &needles);
    }
    assert!(!mount.join("escape").exists() && !mount.join("b").exists());
}

/// A directory of another controller (cgroup v1 mounts each controller apart) is not a
/// memory cgroup.
#[test]
fn a_cgroup_without_the_memory_controller_is_refused() {
    require_root();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let Some(other) = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup") && !f[3].split(',').any(|o| o == "memory"))
            .then(|| PathBuf::from(f[1]))
    }) else {
        eprintln!("skipped: no cgroup v1 hierarchy without the memory controller here");
        return;
    };
    let path = other.display().to_string();
    refused(
        &["run", "--cgroup", &path, "--size", "10Mi", "--dry-run"],
        1,
        &[&path, "memory controller"],
    );
    let new = format!("{path}/{}", test_name("wrong-hierarchy"));
    refused(
        &["run", "--new", &new, "--limit", "64Mi", "--size", "10Mi"],
        1,
        &[&new, "memory controller"],
    );
    assert!(!PathBuf::from(&new).exists());
}

#[test]
fn bad_watch_options_are_refused() {
    require_root();
    refused(&["watch", "--cgroup", "/no/such"], 1, &["/no/such"]);
    refused(&["watch", "--duration", "0"], 2, &["`0`"]);
    refused(&["watch", "--duration", "soon"], 2, &["`soon`"]);
    refused(&["frobnicate"], 2, &["frobnicate"]);
}

/// Scenario files (the lab's input) that are malformed, oversized, binary or hostile are
/// refused with one line naming the file and the problem.
#[test]
fn bad_scenario_files_are_refused() {
    let lab = PathBuf::from(env!("CARGO_BIN_EXE_memstress-lab"));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(test_name("scenarios"));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("malformed", b"name = \"x\"\ndescription = \n".to_vec(), "malformed"),
        (
            "oversized",
            format!("name = \"x\"\ndescription = \"{}\"\n", "a".repeat(100_000)).into_bytes(),
            "too large",
        ),
        ("binary", vec![0xff, 0xfe, 0x00, 0x80, 0x81], "UTF-8"),
        (
            "unknown-field",
            b"name = \"x\"\ndescription = \"\"\nrm = \"-rf /\"\n".to_vec(),
            "rm",
        ),
        (
            "escaping-cgroup",
            b"name = \"x\"\ndescription = \"\"\n[[cgroup]]\nname = \"../../etc\"\nlimit = \"1Mi\"\n"
                .to_vec(),
            "../../etc",
        ),
        (
            "unknown-reference",
            b"name = \"x\"\ndescription = \"\"\n[[step]]\nrun = \"--cgroup {nope} --size 1Mi\"\n"
                .to_vec(),
            "nope",
        ),
    ];
    for (name, body, needle) in cases {
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, body).unwrap();
        let out = Command::new(&lab)
            .arg("validate")
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_one_line_error(&stderr, &[&file.display().to_string()]);
        assert!(
            stderr.to_lowercase().contains(&needle.to_lowercase()),
            "{name}: `{stderr}` lacks {needle}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
    // Nothing about a refused scenario touched the cgroups.
    let _ = TestCgroup::new("after-scenarios", None);
}
