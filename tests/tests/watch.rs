//! `memstress watch` against the kernel's own record of OOM kills.

use std::{collections::HashMap, process::Command, time::Duration};

use memstress_tests::{
    App, DmesgKill, Kmsg, Memstress, TestCgroup, assert_one_line_error, command_in, memstress_bin,
    require_root,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn kills_by_tid(lines: &[Value]) -> HashMap<u64, Vec<&Value>> {
    let mut map: HashMap<u64, Vec<&Value>> = HashMap::new();
    for line in lines.iter().filter(|l| l["type"] == "oom_kill") {
        let tid = line["victim"]["tid"]
            .as_u64()
            .expect("oom_kill has victim.tid");
        map.entry(tid).or_default().push(line);
    }
    map
}

fn assert_matches_dmesg(reported: &Value, kernel: &DmesgKill) {
    let v = &reported["victim"];
    let ctx = format!("memstress said {reported}\nthe kernel said {kernel:?}");
    assert_eq!(v["comm"], kernel.comm.as_str(), "{ctx}");
    assert_eq!(
        v["oom_score_adj"].as_i64(),
        Some(i64::from(kernel.oom_score_adj)),
        "{ctx}"
    );
    // memstress reports what the kernel read at mark_victim; dmesg's line is printed a few
    // microseconds later, while a victim that was still faulting on another CPU can finish
    // that fault (one huge page with MADV_HUGEPAGE, which stress-ng uses): the kernel's two
    // reads of the same counter may differ by that much, never more.
    let anon = v["anon_rss_kib"].as_u64().expect("anon_rss_kib");
    assert!(
        anon.abs_diff(kernel.anon_rss_kb) <= 2048 + 64,
        "anon {anon} kB vs dmesg {} kB: {ctx}",
        kernel.anon_rss_kb
    );
    assert_eq!(
        v["file_rss_kib"].as_u64(),
        Some(kernel.file_rss_kb),
        "{ctx}"
    );
    assert_eq!(
        v["shmem_rss_kib"].as_u64(),
        Some(kernel.shmem_rss_kb),
        "{ctx}"
    );
    assert_eq!(
        v["pgtables_kib"].as_u64(),
        Some(kernel.pgtables_kb),
        "{ctx}"
    );
    assert_eq!(v["uid"].as_u64(), Some(u64::from(kernel.uid)), "{ctx}");
    assert_eq!(reported["kill_confirmed"], true, "{ctx}");
}

/// stress-ng is OOM-killed over and over in a 64 MiB memcg while `tail /dev/zero` is killed in
/// another one. Every `Killed process` line dmesg printed for the first cgroup must appear
/// exactly once in the filtered watch, with the kernel's pid, comm, oom_score_adj and memory
/// figures, and nothing else may appear there; an unfiltered watch must report both.
#[test]
fn watch_reports_every_kill_dmesg_printed() {
    require_root();
    let target = TestCgroup::new("watch-a", Some(64 * MIB));
    let other = TestCgroup::new("watch-b", Some(32 * MIB));
    let mut kmsg = Kmsg::open();
    let mut filtered = Memstress::start(&["watch", "-o", "json", "--cgroup", target.path()]);
    let mut everything = Memstress::start(&["watch", "-o", "json"]);
    filtered.wait_type("attached", Duration::from_secs(10));
    everything.wait_type("attached", Duration::from_secs(10));

    let mut stress = command_in(&target.cgroup, "stress-ng", None)
        .args([
            "--vm",
            "2",
            "--vm-bytes",
            "96M",
            "--vm-keep",
            "--timeout",
            "4s",
            "--quiet",
        ])
        .spawn()
        .expect("start stress-ng");
    // tail keeps what it reads from /dev/zero (it looks for a newline that never comes).
    for _ in 0..3 {
        let status = command_in(&other.cgroup, "tail", Some(300))
            .arg("/dev/zero")
            .status()
            .expect("run tail");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
    }
    let status = stress.wait().expect("wait for stress-ng");
    assert!(status.code().is_some(), "stress-ng ended by {status}");
    std::thread::sleep(Duration::from_millis(500));

    let filtered = filtered.interrupt(Duration::from_secs(10));
    let everything = everything.interrupt(Duration::from_secs(10));
    assert!(
        filtered.status.success(),
        "watch failed: {}",
        filtered.stderr
    );
    assert!(
        everything.status.success(),
        "watch failed: {}",
        everything.stderr
    );
    let kernel = kmsg.kills();
    let stress_kills: Vec<&DmesgKill> = kernel
        .iter()
        .filter(|k| k.comm.starts_with("stress-ng"))
        .collect();
    let tail_kills: Vec<&DmesgKill> = kernel.iter().filter(|k| k.comm == "tail").collect();
    assert!(
        !stress_kills.is_empty(),
        "stress-ng was never OOM-killed: dmesg {kernel:?}"
    );
    assert_eq!(
        tail_kills.len(),
        3,
        "tail should be killed 3 times: dmesg {kernel:?}"
    );
    assert_eq!(
        stress_kills.len() + tail_kills.len(),
        kernel.len(),
        "an OOM kill from outside this test happened: {kernel:?}"
    );

    let reported = kills_by_tid(&filtered.lines);
    for k in &stress_kills {
        let lines = reported
            .get(&u64::from(k.pid))
            .unwrap_or_else(|| panic!("kill of {} ({}) missing from the watch", k.pid, k.comm));
        assert_eq!(
            lines.len(),
            1,
            "kill of {} reported {} times",
            k.pid,
            lines.len()
        );
        assert_matches_dmesg(lines[0], k);
        assert_eq!(lines[0]["victim"]["cgroup"], target.path());
        assert!(lines[0]["trigger"]["pid"].as_u64().is_some());
    }
    assert_eq!(
        reported.values().map(Vec::len).sum::<usize>(),
        stress_kills.len(),
        "the filtered watch reported kills dmesg did not print for its cgroup"
    );
    let end = filtered.of_type("end");
    assert_eq!(end.len(), 1);
    assert_eq!(
        end[0]["oom_kills"].as_u64(),
        Some(stress_kills.len() as u64)
    );
    assert_eq!(end[0]["dropped_records"], 0);

    let all = kills_by_tid(&everything.lines);
    for k in stress_kills.iter().chain(tail_kills.iter()) {
        let lines = all
            .get(&u64::from(k.pid))
            .unwrap_or_else(|| panic!("unfiltered watch missed {} ({})", k.pid, k.comm));
        assert_eq!(lines.len(), 1);
        assert_matches_dmesg(lines[0], k);
    }
    assert_eq!(all.values().map(Vec::len).sum::<usize>(), kernel.len());
    for k in &tail_kills {
        let line = all[&u64::from(k.pid)][0];
        assert_eq!(line["victim"]["cgroup"], other.path());
        assert_eq!(line["victim"]["oom_score_adj"], 300);
    }
}

/// Text mode prints one readable line per kill.
#[test]
fn watch_text_mode_is_one_line_per_kill() {
    require_root();
    let target = TestCgroup::new("watch-text", Some(32 * MIB));
    let mut kmsg = Kmsg::open();
    let watch = Command::new(memstress_bin())
        .args(["watch", "--cgroup", target.path(), "--duration", "4s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start watch");
    std::thread::sleep(Duration::from_millis(1500));
    let status = command_in(&target.cgroup, "tail", None)
        .arg("/dev/zero")
        .status()
        .expect("run tail");
    assert!(!status.success());
    let out = watch.wait_with_output().expect("wait for watch");
    assert!(out.status.success(), "{out:?}");
    let kills = kmsg.kills();
    assert_eq!(kills.len(), 1, "{kills:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one line per kill, nothing else on stdout:\n{stdout}"
    );
    let text = lines[0];
    assert!(
        text.contains(&format!(
            "OOM KILL {} (tail) in {}",
            kills[0].pid,
            target.path()
        )),
        "{text}"
    );
    assert!(text.contains("oom_score_adj 0]"), "{text}");
    assert!(
        text.contains(&format!(
            "in {} (limit 32 MiB hit by {} (tail))",
            target.path(),
            kills[0].pid
        )),
        "{text}"
    );
    assert!(text.contains("points"), "{text}");
}

#[test]
fn watch_refuses_without_privileges() {
    require_root();
    let out = Command::new(memstress_bin())
        .arg("watch")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run memstress as nobody");
    assert_eq!(out.status.code(), Some(1));
    assert_one_line_error(
        &String::from_utf8_lossy(&out.stderr),
        &["CAP_BPF", "CAP_PERFMON", "root"],
    );
}

use std::os::unix::process::CommandExt as _;

/// Runs `memstress watch` in a private mount namespace after `prepare` (shell commands).
fn watch_in_mount_ns(prepare: &str) -> std::process::Output {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "{prepare} && exec {} watch --duration 1s",
            memstress_bin().display()
        ))
        .output()
        .expect("run unshare")
}

#[test]
fn watch_says_when_btf_is_missing() {
    require_root();
    let out = watch_in_mount_ns("mount -t tmpfs none /sys/kernel/btf");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_one_line_error(
        &String::from_utf8_lossy(&out.stderr),
        &["/sys/kernel/btf/vmlinux", "CONFIG_DEBUG_INFO_BTF", "--btf"],
    );
}

#[test]
fn watch_says_when_tracefs_is_not_mounted() {
    require_root();
    let out = watch_in_mount_ns(
        "(umount /sys/kernel/debug/tracing 2>/dev/null; umount /sys/kernel/tracing 2>/dev/null; true) \
         && ! test -d /sys/kernel/tracing/events",
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_one_line_error(
        &String::from_utf8_lossy(&out.stderr),
        &[
            "tracefs is not mounted",
            "mount -t tracefs nodev /sys/kernel/tracing",
        ],
    );
}

#[test]
fn watch_rejects_a_cgroup_that_does_not_exist() {
    require_root();
    let out = Command::new(memstress_bin())
        .args(["watch", "--cgroup", "/no/such/cgroup"])
        .output()
        .expect("run memstress");
    assert_eq!(out.status.code(), Some(1));
    assert_one_line_error(&String::from_utf8_lossy(&out.stderr), &["/no/such/cgroup"]);
    let out = Command::new(memstress_bin())
        .args(["watch", "--cgroup", "/a/../b"])
        .output()
        .expect("run memstress");
    assert_one_line_error(&String::from_utf8_lossy(&out.stderr), &["..", "/a/../b"]);
}

/// --explain-probes lists each probe and what it contributes.
#[test]
fn watch_explains_its_probes() {
    require_root();
    let out = Command::new(memstress_bin())
        .args(["watch", "--explain-probes"])
        .output()
        .expect("run memstress");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for hook in ["mark_victim", "oom:mark_victim", "signal_generate"] {
        assert!(
            text.lines()
                .any(|l| l.contains(hook) && l.contains("attached")),
            "{hook} missing:\n{text}"
        );
    }
}

/// What led to a kill is read by the kernel at the kill: a node-wide watch and one filtered
/// to the victim's cgroup report the same pressure for it, though the filtered one did not
/// report the kill before (same trigger cgroup, victim elsewhere). Each kill here has a single
/// allocating task, so no reclaim runs concurrently with the kill itself.
#[test]
fn two_watchers_report_the_same_pressure() {
    require_root();
    let parent = TestCgroup::new("watch-pressure", Some(64 * MIB));
    let c1 = parent.child("c1", None);
    let c2 = parent.child("c2", None);
    let mut everything = Memstress::start(&["watch", "-o", "json"]);
    let mut filtered = Memstress::start(&["watch", "-o", "json", "--cgroup", &c1.path]);
    everything.wait_type("attached", Duration::from_secs(10));
    filtered.wait_type("attached", Duration::from_secs(10));
    let mut app = App::start(&c1, "pressure-app", 30 * MIB, Some(500));
    // Kill 1: x in c2 grows past the limit and, with oom_score_adj 1000, is its own victim.
    let mut x = App::start(&c2, "pressure-x", 8 * MIB, Some(1000));
    x.grow(60 * MIB);
    assert_eq!(x.wait_signal(), Some(libc::SIGKILL));
    std::thread::sleep(Duration::from_millis(300));
    // Kill 2: y in c2 grows; the app in c1 (oom_score_adj 500) scores higher.
    let mut y = App::start(&c2, "pressure-y", 8 * MIB, None);
    y.grow(60 * MIB);
    assert_eq!(app.wait_signal(), Some(libc::SIGKILL));
    std::thread::sleep(Duration::from_millis(500));
    drop(y);
    let everything = everything.interrupt(Duration::from_secs(10));
    let filtered = filtered.interrupt(Duration::from_secs(10));
    let of = |lines: &[Value], pid: u32| -> Value {
        lines
            .iter()
            .find(|l| l["type"] == "oom_kill" && l["victim"]["pid"] == u64::from(pid))
            .unwrap_or_else(|| panic!("no kill of {pid}: {lines:?}"))["pressure"]
            .clone()
    };
    let (a, b) = (
        of(&everything.lines, app.pid()),
        of(&filtered.lines, app.pid()),
    );
    for field in ["reclaim_runs", "reclaimed_kib", "limit_hits"] {
        assert!(a[field].is_u64(), "{field}: {a}");
        assert_eq!(a[field], b[field], "{field}: node-wide {a}, filtered {b}");
    }
    assert!(
        !kills_by_tid(&filtered.lines).contains_key(&u64::from(x.pid())),
        "the filtered watch reported x"
    );
}

/// A signal is how an unbounded watch ends (0); one that cuts a `--duration` short exits
/// 128 + its number.
#[test]
fn watch_cut_short_exits_with_the_signal() {
    require_root();
    let mut bounded = Memstress::start(&["watch", "-o", "json", "--duration", "60s"]);
    bounded.wait_type("attached", Duration::from_secs(10));
    bounded.signal(libc::SIGTERM);
    let finished = bounded.wait(Duration::from_secs(10));
    assert_eq!(finished.status.code(), Some(143), "{}", finished.stderr);
    assert_eq!(finished.of_type("end").len(), 1);
    let mut unbounded = Memstress::start(&["watch", "-o", "json"]);
    unbounded.wait_type("attached", Duration::from_secs(10));
    let finished = unbounded.interrupt(Duration::from_secs(10));
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
}
