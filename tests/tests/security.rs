//! Least privilege: what each mode needs (tested with exactly those capabilities), stressors
//! that hold none, no setuid, and `--dry-run` without privileges.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use memstress::privilege::parse_cap;
use memstress_tests::{
    App, Memstress, TestCgroup, assert_one_line_error, hierarchy, memstress_bin, require_root,
    test_name,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// `memstress args…` as uid 0 with only `caps` (e.g. `+bpf,+perfmon`) in its bounding set,
/// which is what a uid-0 exec gets.
fn with_caps(caps: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!(
        "--bounding-set=-all{}",
        if caps.is_empty() {
            String::new()
        } else {
            format!(",{caps}")
        }
    ))
    .arg("--")
    .arg(memstress_bin())
    .args(args);
    cmd
}

/// `memstress args…` as `nobody`, with `caps` as ambient capabilities.
fn as_nobody(caps: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]);
    if !caps.is_empty() {
        cmd.arg(format!("--inh-caps={caps}"))
            .arg(format!("--ambient-caps={caps}"));
    }
    cmd.arg("--").arg(memstress_bin()).args(args);
    cmd
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn stderr_without_notices(out: &Output) -> String {
    // The one-line notice about fentry/fexit on kernels that refuse them is not an error.
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.contains("not available on this kernel"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn status_of(pid: u64) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).expect("stressor status")
}

/// Stressors run as `nobody` (or `--user`), with every capability set empty and
/// no_new_privs, inside the target cgroup.
#[test]
fn stressors_hold_no_privileges() {
    require_root();
    for (user, uid) in [(None, 65534), (Some("1234:4321"), 1234), (Some("root"), 0)] {
        let target = TestCgroup::new("creds", Some(128 * MIB));
        let mut args = vec![
            "run",
            "-o",
            "json",
            "--cgroup",
            target.path(),
            "--size",
            "16Mi",
        ];
        if let Some(u) = user {
            args.extend(["--user", u]);
        }
        let mut run = Memstress::start(&args);
        let plan = run.wait_type("plan", Duration::from_secs(10));
        assert_eq!(plan["stressor_user"]["uid"], uid, "{user:?}");
        let started = run.wait_type("started", Duration::from_secs(30));
        run.wait_type("full", Duration::from_secs(30));
        let pid = started["pid"].as_u64().unwrap();
        let status = status_of(pid);
        let uids = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
        assert!(
            uids.split_whitespace().all(|u| u == uid.to_string()),
            "{user:?}: Uid {uids}"
        );
        for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert_eq!(
                parse_cap(&status, set),
                Some(0),
                "{user:?}: {set} in\n{status}"
            );
        }
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
        assert!(
            target.usage() >= 15 * MIB,
            "the stressor is not charged to the target"
        );
        let finished = run.interrupt(Duration::from_secs(20));
        assert!(finished.status.success(), "{}", finished.stderr);
    }
}

/// With `--mlock`, stressors keep CAP_IPC_LOCK and nothing else, and their memory is locked.
#[test]
fn mlock_keeps_only_ipc_lock() {
    require_root();
    let target = TestCgroup::new("mlock", Some(128 * MIB));
    let mut run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--cgroup",
        target.path(),
        "--size",
        "16Mi",
        "--mlock",
    ]);
    let plan = run.wait_type("plan", Duration::from_secs(10));
    assert_eq!(plan["stressor_user"]["capabilities"], "CAP_IPC_LOCK");
    let pid = run.wait_type("started", Duration::from_secs(30))["pid"]
        .as_u64()
        .unwrap();
    run.wait_type("full", Duration::from_secs(30));
    let status = status_of(pid);
    let ipc_lock = 1u64 << 14;
    for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(
            parse_cap(&status, set),
            Some(ipc_lock),
            "{set} in\n{status}"
        );
    }
    let locked_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(locked_kib >= 15 * 1024, "VmLck {locked_kib} kB");
    let finished = run.interrupt(Duration::from_secs(20));
    assert!(finished.status.success(), "{}", finished.stderr);
}

/// `watch` works as uid 0 with CAP_BPF and CAP_PERFMON and nothing else (and reports a real
/// kill); without CAP_PERFMON it says what is missing. As a non-root user it also needs
/// CAP_DAC_READ_SEARCH (tracefs is root's), and says so without it.
#[test]
fn watch_needs_bpf_and_perfmon() {
    require_root();
    let sandbox = TestCgroup::new("lp-watch", Some(32 * MIB));
    let mut watch = Memstress::start_command(&mut with_caps(
        "+bpf,+perfmon",
        &["watch", "-o", "json", "--cgroup", sandbox.path()],
    ));
    watch.wait_type("attached", Duration::from_secs(30));
    let mut app = App::start(&sandbox.cgroup, "victim", 4 * MIB, None);
    let pid = app.pid();
    app.grow(256 * MIB);
    assert_eq!(app.wait_signal(), Some(libc::SIGKILL));
    let kill = watch.wait_type("oom_kill", Duration::from_secs(10));
    assert_eq!(kill["victim"]["pid"], pid);
    let finished = watch.interrupt(Duration::from_secs(10));
    assert!(finished.status.success(), "{}", finished.stderr);

    let out = output(&mut with_caps("+bpf", &["watch"]));
    assert_eq!(out.status.code(), Some(1));
    assert_one_line_error(
        &String::from_utf8_lossy(&out.stderr),
        &["CAP_BPF", "CAP_PERFMON"],
    );

    let out = output(&mut as_nobody(
        "+bpf,+perfmon",
        &["watch", "--duration", "1s"],
    ));
    assert_eq!(out.status.code(), Some(1));
    assert_one_line_error(
        &String::from_utf8_lossy(&out.stderr),
        &["tracefs", "CAP_DAC_READ_SEARCH"],
    );
    let out = output(&mut as_nobody(
        "+bpf,+perfmon,+dac_read_search",
        &["watch", "-o", "json", "--duration", "1s"],
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(json_lines(&out).iter().any(|l| l["type"] == "attached"));
}

/// `run` on an existing cgroup works as uid 0 with CAP_BPF, CAP_PERFMON, CAP_SETUID and
/// CAP_SETGID; `--new` adds CAP_DAC_OVERRIDE where the hierarchy's root directory is not
/// writable (cgroup v1 mounts it 0555). Without a way to shed the stressors' capabilities
/// (CAP_SETUID or CAP_SETPCAP) it refuses before creating anything.
#[test]
fn run_needs_setuid_to_shed_stressor_privileges() {
    require_root();
    let target = TestCgroup::new("lp-run", Some(128 * MIB));
    let out = output(&mut with_caps(
        "+bpf,+perfmon,+setuid,+setgid",
        &[
            "run",
            "-o",
            "json",
            "--cgroup",
            target.path(),
            "--size",
            "16Mi",
            "--hold",
            "1s",
        ],
    ));
    assert!(out.status.success(), "{}", stderr_without_notices(&out));
    let lines = json_lines(&out);
    let summary = lines
        .iter()
        .find(|l| l["type"] == "summary")
        .expect("summary");
    assert_eq!(summary["outcome"], "completed");
    assert!(summary["charged_bytes"].as_u64() > Some(15 * MIB));

    let name = test_name("lp-new");
    let root_writable = {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(&hierarchy().mount).unwrap();
        m.uid() == 0 && m.mode() & 0o200 != 0
    };
    let caps = if root_writable {
        "+bpf,+perfmon,+setuid,+setgid"
    } else {
        "+bpf,+perfmon,+setuid,+setgid,+dac_override"
    };
    let out = output(&mut with_caps(
        caps,
        &[
            "run", "-o", "json", "--new", &name, "--limit", "64Mi", "--size", "8Mi", "--hold", "1s",
        ],
    ));
    assert!(
        out.status.success(),
        "{caps}: {}",
        stderr_without_notices(&out)
    );
    assert!(!hierarchy().mount.join(&name).exists());

    let out = output(&mut with_caps(
        "+bpf,+perfmon",
        &["run", "--new", &name, "--limit", "64Mi", "--size", "8Mi"],
    ));
    assert_eq!(out.status.code(), Some(1));
    assert_one_line_error(
        &stderr_without_notices(&out),
        &["CAP_SETUID", "CAP_SETPCAP"],
    );
    assert!(!hierarchy().mount.join(&name).exists());
}

/// `--dry-run` needs no privileges at all; the real run then says what it lacks.
#[test]
fn dry_run_needs_no_privileges() {
    require_root();
    let target = TestCgroup::new("lp-dry", Some(64 * MIB));
    let out = output(&mut as_nobody(
        "",
        &[
            "run",
            "-o",
            "json",
            "--cgroup",
            target.path(),
            "--size",
            "50%",
            "--dry-run",
        ],
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = json_lines(&out)
        .into_iter()
        .find(|l| l["type"] == "plan")
        .expect("plan");
    assert_eq!(plan["total_bytes"], 32 * MIB);
    assert_eq!(plan["target"]["limit_bytes"], 64 * MIB);
    let name = test_name("lp-dry-new");
    let out = output(&mut as_nobody(
        "",
        &[
            "run",
            "-o",
            "json",
            "--new",
            &name,
            "--limit",
            "64Mi",
            "--size",
            "8Mi",
            "--dry-run",
        ],
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!hierarchy().mount.join(&name).exists());
    let out = output(&mut as_nobody(
        "",
        &[
            "run", "-o", "json", "--new", &name, "--limit", "64Mi", "--size", "8Mi",
        ],
    ));
    assert_eq!(out.status.code(), Some(1));
    assert_one_line_error(&String::from_utf8_lossy(&out.stderr), &["CAP_BPF"]);
    assert!(!hierarchy().mount.join(&name).exists());
}

/// A setuid-root copy of memstress, run by `nobody`, refuses to do anything.
#[test]
fn refuses_to_run_setuid() {
    require_root();
    // A directory on a filesystem that honours setuid bits.
    let dir = [
        std::env::temp_dir(),
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    ]
    .into_iter()
    .find(|d| !nosuid(d))
    .expect("no directory without nosuid");
    let copy = dir.join(format!("memstress-setuid-{}", std::process::id()));
    std::fs::copy(memstress_bin(), &copy).expect("copy memstress");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(&copy)
        .args([
            "run",
            "--new",
            "x",
            "--limit",
            "64Mi",
            "--size",
            "8Mi",
            "--dry-run",
        ])
        .output()
        .expect("run the setuid copy");
    std::fs::remove_file(&copy).unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_one_line_error(&String::from_utf8_lossy(&out.stderr), &["setuid"]);
    assert!(out.stdout.is_empty(), "it printed a plan");
}

fn nosuid(dir: &Path) -> bool {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs writes into the struct we pass.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the path is NUL-terminated.
    unsafe { libc::statvfs(c.as_ptr(), &mut s) == 0 && s.f_flag & libc::ST_NOSUID != 0 }
}
