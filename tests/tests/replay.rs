//! `memstress replay --dry-run` on an OOM report this kernel printed moments before: every
//! task row and the limit exactly as the kernel printed them, and the ranking agrees with the
//! kernel's victim. `memstress replay` on such a report: the reproduction's kill, checked
//! against the kernel's own new report.

use std::{os::unix::process::ExitStatusExt as _, path::PathBuf, time::Duration};

use memstress_tests::{
    App, ChildGuard, Kmsg, TestCgroup, alive, assert_one_line_error, command_in, hierarchy,
    memstress_output, require_root, schema,
};
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

/// A file in the test's temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, text: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("memstress-test-{}-{tag}.log", std::process::id()));
        std::fs::write(&path, text).expect("write the report");
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The kernel prints at most 10 OOM reports per 5 s (`oom_rs` in mm/oom_kill.c), and only
/// the `Killed process` line of the others: after the OOMs of earlier tests, the window must
/// pass for this test's report to be whole.
fn let_the_oom_report_rate_limit_pass() {
    std::thread::sleep(Duration::from_millis(5200));
}

/// The report of the kill of `victim`: from the last `invoked oom-killer` before its
/// `Killed process` line through that line.
fn report_of(messages: &[String], victim: u32) -> Vec<String> {
    let killed = format!("Killed process {victim} (");
    let end = messages
        .iter()
        .position(|m| m.contains(&killed))
        .unwrap_or_else(|| panic!("no `{killed}` in the kernel log:\n{}", messages.join("\n")));
    let start = messages[..end]
        .iter()
        .rposition(|m| m.contains(" invoked oom-killer: "))
        .expect("an `invoked oom-killer` line before the kill");
    messages[start..=end].to_vec()
}

/// The task table as the kernel printed it, read here independently of memstress's parser:
/// one JSON object per row, keyed by the header's columns.
fn kernel_rows(report: &[String]) -> Vec<Value> {
    let header = report
        .iter()
        .find(|m| m.starts_with("[  pid  ]"))
        .expect("a task table header");
    let columns: Vec<&str> = header
        .trim_start_matches("[  pid  ]")
        .split_whitespace()
        .collect();
    report
        .iter()
        .filter(|m| {
            m.strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .is_some_and(|(p, _)| p.trim().parse::<u32>().is_ok())
        })
        .map(|m| {
            let (pid, rest) = m[1..].split_once(']').unwrap();
            let mut row = serde_json::Map::new();
            row.insert("pid".into(), json!(pid.trim().parse::<u64>().unwrap()));
            let words: Vec<&str> = rest.split_whitespace().collect();
            let numbers = columns.len() - 1;
            for (column, word) in columns[..numbers].iter().zip(&words) {
                row.insert((*column).into(), json!(word.parse::<i64>().unwrap()));
            }
            row.insert("name".into(), json!(words[numbers..].join(" ")));
            Value::Object(row)
        })
        .collect()
}

/// `memory: usage NkB, limit NkB, failcnt N` → the limit in bytes.
fn printed_limit(report: &[String]) -> u64 {
    let line = report
        .iter()
        .find_map(|m| m.strip_prefix("memory: usage "))
        .expect("a `memory: usage` line");
    let kib: u64 = line
        .split_once("limit ")
        .and_then(|(_, r)| r.split_once("kB"))
        .and_then(|(k, _)| k.parse().ok())
        .expect("a limit in kB");
    kib * 1024
}

#[test]
fn replay_dry_run_reads_a_live_oom_report_exactly() {
    require_root();
    let_the_oom_report_rate_limit_pass();
    let mut kmsg = Kmsg::open();
    let cgroup = TestCgroup::new("replay", Some(32 * MIB));
    let mut tail = ChildGuard::spawn(command_in(&cgroup.cgroup, "tail", None).arg("/dev/zero"));
    let victim = tail.pid();
    let status = tail
        .wait_timeout(Duration::from_secs(30))
        .expect("tail /dev/zero is OOM-killed within 30 s");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let report = report_of(&kmsg.messages(), victim);
    let file = TempFile::new("replay", &(report.join("\n") + "\n"));

    let out = memstress_output(&["replay", "--dry-run", "-o", "json", file.path()]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one report, one line:\n{stdout}");
    let plan = schema::parse_line(lines[0]);
    assert_eq!(plan["type"], "replay_plan");
    let r = &plan["report"];

    // The limit, exactly as the kernel printed it, and as the test set it.
    assert_eq!(r["limit_bytes"], json!(printed_limit(&report)));
    assert_eq!(r["limit_bytes"], json!(32 * MIB));
    assert_eq!(r["constraint"], "CONSTRAINT_MEMCG");
    assert_eq!(r["oom_memcg"], json!(cgroup.path()));
    assert_eq!(r["task_memcg"], json!(cgroup.path()));
    assert_eq!(r["trigger"]["comm"], "tail");
    assert_eq!(r["trigger"]["pid"], json!(victim));
    assert_eq!(r["victim"]["pid"], json!(victim));
    assert_eq!(r["victim"]["comm"], "tail");

    // Every task row, every column the kernel printed, exactly.
    let want = kernel_rows(&report);
    let got = r["tasks"].as_array().expect("tasks");
    assert_eq!(got.len(), want.len(), "{got:?}\n{want:?}");
    assert!(want.iter().any(|w| w["pid"] == json!(victim)), "{want:?}");
    for (got, want) in got.iter().zip(&want) {
        for (column, value) in want.as_object().unwrap() {
            assert_eq!(&got[column], value, "column {column} of {want}");
        }
    }

    // The formula ranks the kernel's victim first.
    assert_eq!(plan["ranking"][0]["pid"], json!(victim), "{plan}");
    assert_eq!(plan["agrees"], true, "{plan}");
    assert_eq!(plan["reason"], Value::Null);
    let row = want.iter().find(|w| w["pid"] == json!(victim)).unwrap();
    let points = row["rss"].as_i64().unwrap()
        + row["swapents"].as_i64().unwrap()
        + row["pgtables_bytes"].as_i64().unwrap() / 4096;
    assert_eq!(plan["ranking"][0]["points"], json!(points));

    // Cut short (no Killed process line): refused, one line naming it, exit code 1.
    let cut = TempFile::new("replay-cut", &report[..report.len() - 1].join("\n"));
    let out = memstress_output(&["replay", "--dry-run", cut.path()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert_one_line_error(
        &String::from_utf8_lossy(&out.stderr),
        &["cut short", "no `Killed process` line"],
    );
}

/// The `replay_result` lines of a replay's JSON output (every line checked against the
/// schema).
fn results(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(schema::parse_line)
        .filter(|l| l["type"] == "replay_result")
        .collect()
}

/// The row of `pid` in a kernel report's task table.
fn row_of(report: &[String], pid: u64) -> Value {
    kernel_rows(report)
        .into_iter()
        .find(|r| r["pid"] == json!(pid))
        .unwrap_or_else(|| panic!("no row of {pid} in:\n{}", report.join("\n")))
}

#[test]
fn replay_reproduces_a_live_oom_report() {
    require_root();
    let_the_oom_report_rate_limit_pass();
    let mut kmsg = Kmsg::open();
    // The victim is not the biggest: sidecar's oom_score_adj 600 puts it first.
    let cgroup = TestCgroup::new("replay-live", Some(48 * MIB));
    let java = App::start(&cgroup.cgroup, "java", 20 * MIB, Some(0));
    let mut sidecar = App::start(&cgroup.cgroup, "sidecar", 12 * MIB, Some(600));
    let nginx = App::start(&cgroup.cgroup, "nginx", 4 * MIB, Some(100));
    let victim = sidecar.pid();
    let tail = ChildGuard::spawn(command_in(&cgroup.cgroup, "tail", None).arg("/dev/zero"));
    assert_eq!(sidecar.wait_signal(), Some(libc::SIGKILL));
    drop(tail);
    let report = report_of(&kmsg.messages(), victim);
    let file = TempFile::new("replay-live", &(report.join("\n") + "\n"));
    drop((java, nginx));

    let out = memstress_output(&["replay", "-o", "json", file.path()]);
    assert!(out.status.success(), "{out:?}");
    let first = results(&out.stdout);
    assert_eq!(first.len(), 1, "{out:?}");
    let r = &first[0];
    assert_eq!(r["report"], 1);
    assert_eq!(r["expected"], json!({"pid": victim, "comm": "sidecar"}));
    assert_eq!(r["same_victim"], true, "{r:#}");
    assert_eq!(r["chosen"]["role"], "task");
    assert_eq!(r["chosen"]["row_pid"], json!(victim));
    assert_eq!(r["chosen"]["comm"], "sidecar");
    assert_eq!(r["scale"], 1.0);
    // The report's limit, unless its rows (each counting the executables it maps, which the
    // processes here share) do not fit under it with a filler: then it is raised, by no more
    // than a few MiB, and a note says so.
    let limit = r["limit_bytes"].as_u64().expect("limit_bytes");
    if limit != 48 * MIB {
        assert!((48 * MIB..=56 * MIB).contains(&limit), "{r:#}");
        let notes = r["notes"].to_string();
        assert!(notes.contains("the limit is raised to"), "{r:#}");
    }
    assert_eq!(r["reason"], Value::Null);
    // Every row of the table is a task of the replay (there are fewer than 8), each with the
    // row's oom_score_adj (offset only below 0, and none is), and scored by the kernel within
    // 2% of the row's points, which the test computes from the row itself.
    let rows = kernel_rows(&report);
    let tasks = r["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), rows.len(), "{tasks:?}");
    let totalpages = (limit / 4096) as i64;
    for row in &rows {
        let task = tasks
            .iter()
            .find(|t| t["row_pid"] == row["pid"])
            .unwrap_or_else(|| panic!("row {row} is not replayed: {tasks:?}"));
        assert_eq!(task["oom_score_adj"], row["oom_score_adj"], "{task}");
        let adj = row["oom_score_adj"].as_i64().unwrap();
        let points = row["rss"].as_i64().unwrap()
            + row["swapents"].as_i64().unwrap()
            + row["pgtables_bytes"].as_i64().unwrap() / 4096
            + adj * (totalpages / 1000);
        assert_eq!(task["expected_points"], json!(points), "{task}");
        // Tiny rows (tail's own table row can be a few hundred pages) are held at a
        // process's smallest size: compare the big ones.
        if row["rss"].as_i64().unwrap() > 1024 {
            let kernel = task["kernel_points"].as_i64().expect("kernel points");
            assert!(
                (kernel - points).abs() * 50 <= points.abs(),
                "{task}: the kernel scored {kernel}, the row {points}"
            );
        }
    }

    // The kernel's own account of the reproduction: its new report kills the process memstress
    // named, in a sandbox at the limit, whose table holds every task with its oom_score_adj.
    let chosen = r["chosen"]["pid"].as_u64().unwrap();
    let again = report_of(&kmsg.messages(), chosen as u32);
    assert_eq!(printed_limit(&again), limit);
    assert!(
        again
            .last()
            .unwrap()
            .contains(&format!("Killed process {chosen} (sidecar)")),
        "{again:?}"
    );
    for task in tasks {
        let row = row_of(&again, task["pid"].as_u64().unwrap());
        assert_eq!(row["oom_score_adj"], task["oom_score_adj"], "{row}");
        assert_eq!(row["name"], task["comm"], "{row}");
    }
    // Nothing is left: no process, no sandbox.
    for task in tasks {
        assert!(!alive(task["pid"].as_u64().unwrap() as u32), "{task}");
    }
    let sandboxes: Vec<String> = std::fs::read_dir(&hierarchy().root().dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("memstress-replay-"))
        .collect();
    assert!(sandboxes.is_empty(), "{sandboxes:?}");

    // Scaled by half: the same victim, in half the limit.
    let out = memstress_output(&["replay", "-o", "json", "--scale", "0.5", file.path()]);
    assert!(out.status.success(), "{out:?}");
    let r = &results(&out.stdout)[0];
    assert_eq!(r["same_victim"], true, "{r:#}");
    assert_eq!(r["scale"], 0.5);
    assert_eq!(r["limit_bytes"], json!(24 * MIB));

    // Bad input: one line each, nothing run.
    for (args, words, code) in [
        (&["--scale", "0"][..], &["not a scale"][..], 2),
        (&["--report", "2"], &["--report 2", "holds 1 OOM report"], 2),
        (&["--tasks", "0"], &["not a number of tasks"], 2),
    ] {
        let mut argv = vec!["replay"];
        argv.extend_from_slice(args);
        argv.push(file.path());
        let out = memstress_output(&argv);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        assert_one_line_error(&String::from_utf8_lossy(&out.stderr), words);
    }
    // Only the `Killed process` line (the kernel's rate limit suppressed the report): named.
    let bare = TempFile::new("replay-live-bare", &report[report.len() - 1]);
    let out = memstress_output(&["replay", bare.path()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_one_line_error(
        &String::from_utf8_lossy(&out.stderr),
        &[
            "1 `Killed process` line(s) without the report",
            "callbacks suppressed",
        ],
    );
    let cut = TempFile::new("replay-live-cut", &report[..report.len() - 1].join("\n"));
    let out = memstress_output(&["replay", cut.path()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_one_line_error(
        &String::from_utf8_lossy(&out.stderr),
        &["cut short", "no `Killed process` line"],
    );
}
