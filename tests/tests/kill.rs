//! `kill` lines: SIGKILLs that were not the OOM killer's, and SIGTERMs followed by an exit,
//! with who sent them. Each test sends real signals to real processes in a cgroup of its own
//! and checks what `watch` (or `run`) said; each one that expects silence first sees a kill
//! it must report, so that silence is not a watch that stopped looking.

use std::{
    os::unix::process::ExitStatusExt as _,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use memstress::target::cgroup::Cgroup;
use memstress_tests::{App, ChildGuard, Memstress, TestCgroup, command_in, require_root};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const LINE_WAIT: Duration = Duration::from_secs(10);
/// Longer than memstress holds a kernel SIGKILL back (200 ms) before it reports it.
const SETTLE: Duration = Duration::from_millis(800);

/// `watch -o json --cgroup PATH`, once its probes are attached.
fn watch_in(cgroup: &TestCgroup) -> Memstress {
    let mut watch = Memstress::start(&["watch", "-o", "json", "--cgroup", cgroup.path()]);
    let attached = watch.wait_type("attached", LINE_WAIT);
    let signal = attached["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .find(|p| p["hook"] == "signal_generate")
        .expect("a signal_generate probe");
    assert_eq!(signal["attached"], true, "{attached}");
    watch
}

/// `sleep 60` in `cgroup`.
fn sleeper(cgroup: &Cgroup) -> ChildGuard {
    ChildGuard::spawn(command_in(cgroup, "sleep", None).arg("60"))
}

/// `sh -c 'kill -SIG PID'`: the shell's builtin `kill`, from outside the test's cgroups.
fn shell_kill(signal: &str, pid: u32) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{signal} {pid}"))
        .status()
        .expect("run sh");
    assert!(status.success(), "sh -c 'kill -{signal} {pid}': {status}");
}

fn is_kill_of(line: &Value, pid: u32) -> bool {
    line["type"] == "kill" && line["victim"]["pid"].as_u64() == Some(u64::from(pid))
}

fn kills_of(lines: &[Value], pid: u32) -> Vec<&Value> {
    lines.iter().filter(|l| is_kill_of(l, pid)).collect()
}

/// Waits for `child` to exit and returns the signal that ended it, if any.
fn ended_by(child: &mut ChildGuard) -> Option<i32> {
    child
        .wait_timeout(Duration::from_secs(10))
        .expect("the process exits")
        .signal()
}

/// `kill -9` from a shell: one `kill` line, a SIGKILL from a process, with the shell as the
/// sender and the victim in the test's cgroup.
#[test]
fn a_shells_sigkill_is_reported_with_its_sender() {
    require_root();
    let cgroup = TestCgroup::new("kill-sh", None);
    let mut watch = watch_in(&cgroup);
    let mut victim = sleeper(&cgroup.cgroup);
    let pid = victim.pid();
    shell_kill("9", pid);
    assert_eq!(ended_by(&mut victim), Some(libc::SIGKILL));
    let line = watch.wait_for("the kill line", LINE_WAIT, |l| is_kill_of(l, pid));
    thread::sleep(SETTLE);
    let done = watch.interrupt(LINE_WAIT);
    assert!(done.status.success(), "{}", done.stderr);

    assert_eq!(kills_of(&done.lines, pid).len(), 1, "{:?}", done.lines);
    assert_eq!(line["signal"], "SIGKILL", "{line}");
    assert_eq!(line["by"], "process", "{line}");
    let sender = line["sender"]["comm"].as_str().unwrap_or_default();
    assert!(matches!(sender, "sh" | "kill"), "{line}");
    assert_ne!(
        line["sender"]["pid"].as_u64(),
        Some(u64::from(pid)),
        "{line}"
    );
    assert_eq!(line["victim"]["comm"], "sleep", "{line}");
    assert_eq!(
        line["victim"]["tid"].as_u64(),
        Some(u64::from(pid)),
        "{line}"
    );
    assert_eq!(line["victim"]["cgroup"], cgroup.path(), "{line}");
    assert!(line["exited_after_ms"].is_null(), "{line}");
    let why = line["why"].as_str().expect("why");
    assert!(
        why.starts_with(&format!("killed {pid} (sleep): SIGKILL from {sender}"))
            && why.ends_with("not the OOM killer"),
        "{line}"
    );
    let end = done.of_type("end");
    assert_eq!(end.len(), 1);
    assert_eq!(end[0]["kills"], 1, "{}", end[0]);
    assert_eq!(end[0]["oom_kills"], 0, "{}", end[0]);
}

/// A SIGTERM the process dies of, and one it handles and then exits after: each one `kill`
/// line, when the process exits, with how long that took and how it exited.
#[test]
fn a_sigterm_is_reported_when_the_process_exits() {
    require_root();
    let cgroup = TestCgroup::new("kill-term", None);
    let mut watch = watch_in(&cgroup);

    let mut dies = sleeper(&cgroup.cgroup);
    let pid = dies.pid();
    let sent = Instant::now();
    shell_kill("TERM", pid);
    assert_eq!(ended_by(&mut dies), Some(libc::SIGTERM));
    let took = sent.elapsed();
    let line = watch.wait_for("the SIGTERM line", LINE_WAIT, |l| is_kill_of(l, pid));
    assert_eq!(line["signal"], "SIGTERM", "{line}");
    assert_eq!(line["by"], "process", "{line}");
    assert_eq!(line["exit"], "signal 15 (SIGTERM)", "{line}");
    let after = line["exited_after_ms"].as_f64().expect("exited_after_ms");
    assert!(
        (0.0..=took.as_secs_f64() * 1000.0).contains(&after),
        "{after} ms, but it was dead {took:?} after the kill: {line}"
    );

    // It handles SIGTERM: it finishes its current 0.3 s nap, then exits with code 3.
    let mut handles = ChildGuard::spawn(
        command_in(&cgroup.cgroup, "sh", None)
            .args(["-c", "trap 'exit 3' TERM; while :; do sleep 0.3; done"]),
    );
    let handler = handles.pid();
    // Let the shell set its trap up.
    thread::sleep(Duration::from_millis(300));
    shell_kill("TERM", handler);
    let status = handles
        .wait_timeout(Duration::from_secs(10))
        .expect("the shell exits");
    assert_eq!(status.code(), Some(3), "{status}");
    let line = watch.wait_for("the handled SIGTERM line", LINE_WAIT, |l| {
        is_kill_of(l, handler)
    });
    assert_eq!(line["signal"], "SIGTERM", "{line}");
    assert_eq!(line["exit"], "exit code 3", "{line}");
    assert_eq!(line["victim"]["comm"], "sh", "{line}");
    let after = line["exited_after_ms"].as_f64().expect("exited_after_ms");
    assert!((0.0..2000.0).contains(&after), "{line}");

    thread::sleep(SETTLE);
    let done = watch.interrupt(LINE_WAIT);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(kills_of(&done.lines, pid).len(), 1, "{:?}", done.lines);
    assert_eq!(kills_of(&done.lines, handler).len(), 1, "{:?}", done.lines);
}

/// A SIGTERM the process ignores (`trap '' TERM`) ends nothing: no line, even when the
/// process exits by itself afterwards.
#[test]
fn an_ignored_sigterm_is_not_reported() {
    require_root();
    let cgroup = TestCgroup::new("kill-ignored", None);
    let mut watch = watch_in(&cgroup);
    let mut ignores = ChildGuard::spawn(
        command_in(&cgroup.cgroup, "sh", None).args(["-c", "trap '' TERM; sleep 1.5; exit 0"]),
    );
    let pid = ignores.pid();
    thread::sleep(Duration::from_millis(300));
    shell_kill("TERM", pid);
    let status = ignores
        .wait_timeout(Duration::from_secs(10))
        .expect("the shell exits");
    assert_eq!(
        status.code(),
        Some(0),
        "the SIGTERM was not ignored: {status}"
    );

    // The watch is looking: a kill after it is reported.
    let mut control = sleeper(&cgroup.cgroup);
    let control_pid = control.pid();
    shell_kill("9", control_pid);
    assert_eq!(ended_by(&mut control), Some(libc::SIGKILL));
    watch.wait_for("the control kill line", LINE_WAIT, |l| {
        is_kill_of(l, control_pid)
    });
    thread::sleep(SETTLE);
    let done = watch.interrupt(LINE_WAIT);
    assert!(done.status.success(), "{}", done.stderr);
    assert!(
        kills_of(&done.lines, pid).is_empty(),
        "an ignored SIGTERM was reported: {:?}",
        kills_of(&done.lines, pid)
    );
}

/// A real OOM kill: an `oom_kill` line, and no `kill` line for it. The OOM killer's SIGKILL
/// comes from the kernel, in the context of the task that hit the limit (here another
/// process than the victim), and its OOM record claims it.
#[test]
fn an_oom_kill_is_not_a_kill_line() {
    require_root();
    let cgroup = TestCgroup::new("kill-oom", Some(64 * MIB));
    let mut watch = watch_in(&cgroup);
    // The victim: oom_score_adj 1000 makes it the OOM killer's choice, whoever triggers.
    let mut victim = App::start(&cgroup.cgroup, "oom-victim", 8 * MIB, Some(1000));
    let pid = victim.pid();
    let mut grower = App::start(&cgroup.cgroup, "oom-trigger", MIB, None);
    let trigger = grower.pid();
    grower.grow(128 * MIB);
    assert_eq!(victim.wait_signal(), Some(libc::SIGKILL));
    let oom = watch.wait_for("the oom_kill line", LINE_WAIT, |l| {
        l["type"] == "oom_kill" && l["victim"]["pid"].as_u64() == Some(u64::from(pid))
    });
    assert_eq!(oom["kill_confirmed"], true, "{oom}");
    assert_eq!(
        oom["trigger"]["pid"].as_u64(),
        Some(u64::from(trigger)),
        "the OOM killer ran in the victim's own context, which this test does not cover: {oom}"
    );
    // Past the time a kernel SIGKILL is held back, a kill made now is reported: the watch
    // would have reported the OOM killer's SIGKILL by then, had it taken it for one.
    thread::sleep(SETTLE);
    let mut control = sleeper(&cgroup.cgroup);
    let control_pid = control.pid();
    shell_kill("9", control_pid);
    assert_eq!(ended_by(&mut control), Some(libc::SIGKILL));
    watch.wait_for("the control kill line", LINE_WAIT, |l| {
        is_kill_of(l, control_pid)
    });
    thread::sleep(SETTLE);
    let done = watch.interrupt(LINE_WAIT);
    assert!(done.status.success(), "{}", done.stderr);
    drop(grower);
    let oom_victims: Vec<u64> = done
        .of_type("oom_kill")
        .iter()
        .filter_map(|l| l["victim"]["pid"].as_u64())
        .collect();
    assert!(oom_victims.contains(&u64::from(pid)), "{oom_victims:?}");
    let kills = done.of_type("kill");
    let twice: Vec<&&Value> = kills
        .iter()
        .filter(|l| {
            l["by"] == "oom_killer"
                || l["victim"]["pid"]
                    .as_u64()
                    .is_some_and(|p| oom_victims.contains(&p))
        })
        .collect();
    assert!(twice.is_empty(), "OOM kills reported twice: {twice:?}");
    assert_eq!(kills.len(), 1, "{kills:?}");
}

/// The init of a PID namespace exits: the kernel SIGKILLs every process left in it. Those
/// are the kernel's kills, sent from the exiting init.
#[test]
fn a_pid_namespace_teardown_is_the_kernels_kill() {
    require_root();
    let cgroup = TestCgroup::new("kill-pidns", None);
    let mut watch = watch_in(&cgroup);
    // The namespace's init is the shell, which execs `sleep 0.5`; the two `sleep 60` are left
    // when it exits.
    let mut unshare = ChildGuard::spawn(command_in(&cgroup.cgroup, "unshare", None).args([
        "--fork",
        "--pid",
        "sh",
        "-c",
        "sleep 60 & sleep 60 & exec sleep 0.5",
    ]));
    let status = unshare
        .wait_timeout(Duration::from_secs(10))
        .expect("unshare exits");
    assert!(status.success(), "unshare: {status}");
    // Both kills are made together and held back together (they come from the kernel):
    // the second line follows the first at once.
    watch.wait_for("a kernel kill line", LINE_WAIT, |l| {
        l["type"] == "kill" && l["by"] == "kernel"
    });
    thread::sleep(SETTLE);
    let done = watch.interrupt(LINE_WAIT);
    assert!(done.status.success(), "{}", done.stderr);
    let kills: Vec<&Value> = done.of_type("kill");
    assert_eq!(kills.len(), 2, "{kills:?}");
    for line in &kills {
        assert_eq!(line["by"], "kernel", "{line}");
        assert_eq!(line["signal"], "SIGKILL", "{line}");
        assert_eq!(line["victim"]["comm"], "sleep", "{line}");
        assert_eq!(line["victim"]["cgroup"], cgroup.path(), "{line}");
        // The sender is the namespace's init, exiting: `sleep 0.5`.
        assert_eq!(line["sender"]["comm"], "sleep", "{line}");
        assert_eq!(line["sender"]["cgroup"], cgroup.path(), "{line}");
        let why = line["why"].as_str().expect("why");
        assert!(why.contains("the init of its PID namespace"), "{line}");
    }
    assert_ne!(kills[0]["victim"]["pid"], kills[1]["victim"]["pid"]);
    assert_eq!(kills[0]["sender"]["pid"], kills[1]["sender"]["pid"]);
}

/// `watch --cgroup A` reports a kill in A, and not one in B.
#[test]
fn watch_cgroup_leaves_out_kills_elsewhere() {
    require_root();
    let inside = TestCgroup::new("kill-in", None);
    let outside = TestCgroup::new("kill-out", None);
    let mut watch = watch_in(&inside);
    let mut elsewhere = sleeper(&outside.cgroup);
    let elsewhere_pid = elsewhere.pid();
    shell_kill("9", elsewhere_pid);
    assert_eq!(ended_by(&mut elsewhere), Some(libc::SIGKILL));
    let mut here = sleeper(&inside.cgroup);
    let here_pid = here.pid();
    shell_kill("9", here_pid);
    assert_eq!(ended_by(&mut here), Some(libc::SIGKILL));
    watch.wait_for("the kill line of the watched cgroup", LINE_WAIT, |l| {
        is_kill_of(l, here_pid)
    });
    thread::sleep(SETTLE);
    let done = watch.interrupt(LINE_WAIT);
    assert!(done.status.success(), "{}", done.stderr);
    assert!(
        kills_of(&done.lines, elsewhere_pid).is_empty(),
        "a kill outside {} was reported: {:?}",
        inside.path(),
        kills_of(&done.lines, elsewhere_pid)
    );
    assert_eq!(done.of_type("kill").len(), 1, "{:?}", done.of_type("kill"));
}

/// `run --on-oom restart`: a stressor `kill -9`ed from a shell is reported with its sender
/// (a `kill` line, and `killed_by` on its `exited` line), and is not restarted: whoever
/// sent the signal meant it to stop. The run's own stop of its stressors is not reported.
#[test]
fn run_reports_a_stressor_killed_from_a_shell_and_does_not_restart_it() {
    require_root();
    let cgroup = TestCgroup::new("kill-run", Some(256 * MIB));
    let mut run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--cgroup",
        cgroup.path(),
        "--size",
        "16Mi",
        "--on-oom",
        "restart",
    ]);
    run.wait_type("full", Duration::from_secs(30));
    let stressor = run.wait_type("started", Duration::from_secs(1))["pid"]
        .as_u64()
        .expect("a stressor pid") as u32;
    shell_kill("9", stressor);
    let line = run.wait_for("the stressor's kill line", LINE_WAIT, |l| {
        is_kill_of(l, stressor)
    });
    assert_eq!(line["stressor"], true, "{line}");
    assert_eq!(line["by"], "process", "{line}");
    assert_eq!(line["signal"], "SIGKILL", "{line}");
    let sender = line["sender"]["comm"].as_str().unwrap_or_default();
    assert!(matches!(sender, "sh" | "kill"), "{line}");
    let exited = run.wait_for("the stressor's exited line", LINE_WAIT, |l| {
        l["type"] == "exited" && l["pid"].as_u64() == Some(u64::from(stressor))
    });
    assert_eq!(exited["killed_by"]["by"], "process", "{exited}");
    assert_eq!(exited["killed_by"]["signal"], "SIGKILL", "{exited}");
    assert_eq!(exited["killed_by"]["sender"]["comm"], sender, "{exited}");
    let exit = exited["exit"].as_str().expect("exit");
    assert!(
        exit.starts_with("SIGKILL (not by the OOM killer) from "),
        "{exited}"
    );
    // Well past the restart delay (200 ms): nothing restarted.
    thread::sleep(Duration::from_secs(2));
    let done = run.interrupt(Duration::from_secs(15));
    assert!(
        done.of_type("restarted").is_empty(),
        "a stressor killed on purpose was restarted: {:?}",
        done.of_type("restarted")
    );
    let summary = done.of_type("summary");
    assert_eq!(summary.len(), 1, "{}", done.stderr);
    assert_eq!(summary[0]["restarts"], 0, "{}", summary[0]);
    assert_eq!(summary[0]["oom_kills_stressors"], 0, "{}", summary[0]);
    // One kill line: the shell's. memstress stopping its own stressors at the end is not one.
    assert_eq!(done.of_type("kill").len(), 1, "{:?}", done.of_type("kill"));
}
