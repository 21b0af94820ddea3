//! deploy/: the manifests validate against the Kubernetes API schema (offline, strict: an
//! unknown field is an error), a broken manifest does not, and the privileges they grant are
//! enough for memstress on this kernel (and one fewer is not).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use memstress_tests::{
    Memstress, TestCgroup, command_in, memstress_bin, require_root, tools_python, tools_python_run,
    workspace,
};
use serde_json::Value;

/// The oldest and newest Kubernetes versions the manifests are checked against.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

const MIB: u64 = 1 << 20;

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace().join("deploy"))
        .expect("deploy/ exists")
        .map(|e| e.expect("read deploy/").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// `kubernetes-validate --strict` on `file` for `version`: Ok(its report) or Err(its report).
fn validate(file: &Path, version: &str) -> Result<String, String> {
    let validator = tools_python().with_file_name("kubernetes-validate");
    let out = Command::new(&validator)
        .args(["--strict", "--kubernetes-version", version])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", validator.display()));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(report)
    } else {
        Err(report)
    }
}

/// Every document of a YAML file, as JSON (PyYAML from the tools' venv).
fn documents(file: &Path) -> Vec<Value> {
    let out = tools_python_run(
        "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
        &[file.to_str().expect("UTF-8 path")],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("PyYAML printed JSON")
}

pub(crate) fn containers_of(file: &str, kind: &str) -> Vec<Value> {
    let doc = documents(&workspace().join("deploy").join(file))
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("{file} has no {kind}"));
    let spec = if kind == "Pod" {
        &doc["spec"]
    } else {
        &doc["spec"]["template"]["spec"]
    };
    spec["containers"].as_array().expect("containers").clone()
}

/// The capabilities a container adds, as setpriv names them (`bpf`, `perfmon`).
pub(crate) fn added_capabilities(container: &Value) -> Vec<String> {
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{} must drop every capability it does not add",
        container["name"]
    );
    container["securityContext"]["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|c| c.as_str().expect("a name").to_lowercase())
        .collect()
}

/// A command that runs memstress as uid 0 with only `caps` (its bounding set: what a container
/// with `drop: [ALL]` and `add: caps` has).
fn memstress_with_caps(caps: &[String]) -> Command {
    let mut bounding = String::from("-all");
    for c in caps {
        bounding.push_str(&format!(",+{c}"));
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(["--bounding-set", &bounding, "--"])
        .arg(memstress_bin());
    cmd
}

#[test]
fn the_manifests_validate_against_the_kubernetes_api() {
    let files = manifests();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["daemonset-watch.yaml", "job-inject.yaml", "sidecar.yaml"],
        "deploy/ changed: list the new manifest here"
    );
    for file in &files {
        for version in KUBERNETES_VERSIONS {
            match validate(file, version) {
                Ok(report) => assert!(
                    report.contains("passed") && !report.contains("ERROR"),
                    "{}: {report}",
                    file.display()
                ),
                Err(report) => panic!(
                    "{} does not validate against Kubernetes {version}:\n{report}",
                    file.display()
                ),
            }
        }
    }
}

/// The validation can fail: a misspelt field, a wrong type and a missing required field are
/// each rejected, and the report names the field.
#[test]
fn a_broken_manifest_does_not_validate() {
    let good = std::fs::read_to_string(workspace().join("deploy/daemonset-watch.yaml"))
        .expect("read the DaemonSet");
    let dir = std::env::temp_dir().join(format!("memstress-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "automountServiceAccountToken: false",
            "automountServiceAcountToken: false",
            "automountServiceAcountToken",
        ),
        (
            "containerPort: 9464",
            "containerPort: \"nine\"",
            "containerPort",
        ),
        (
            "      containers:\n        - name: watch\n",
            "      initContainers:\n        - name: watch\n",
            "containers",
        ),
    ];
    for (from, to, field) in cases {
        assert!(good.contains(from), "the DaemonSet no longer has `{from}`");
        let broken = dir.join("broken.yaml");
        std::fs::write(&broken, good.replacen(from, to, 1)).unwrap();
        match validate(&broken, KUBERNETES_VERSIONS[1]) {
            Ok(report) => panic!("a DaemonSet with `{to}` validated:\n{report}"),
            Err(report) => assert!(report.contains(field), "{report}"),
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The DaemonSet's capabilities (and uid 0) are enough for `watch` to see and explain an OOM
/// kill on this kernel; without PERFMON it refuses.
#[test]
fn watch_works_with_the_daemonsets_capabilities() {
    require_root();
    let caps = added_capabilities(&containers_of("daemonset-watch.yaml", "DaemonSet")[0]);
    assert_eq!(
        caps,
        ["bpf", "perfmon"],
        "the DaemonSet grants more than watch needs"
    );
    let target = TestCgroup::new("deploy-watch", Some(32 * MIB));
    let mut watch = Memstress::start_command(memstress_with_caps(&caps).args([
        "watch",
        "-o",
        "json",
        "--cgroup",
        target.path(),
    ]));
    watch.wait_type("attached", Duration::from_secs(10));
    let status = command_in(&target.cgroup, "tail", None)
        .arg("/dev/zero")
        .status()
        .expect("run tail");
    assert!(!status.success());
    let kill = watch.wait_type("oom_kill", Duration::from_secs(10));
    assert_eq!(kill["victim"]["comm"], "tail");
    assert_eq!(kill["domain"]["cgroup"], target.path());
    let finished = watch.interrupt(Duration::from_secs(10));
    assert!(finished.status.success(), "{}", finished.stderr);

    let fewer = memstress_with_caps(&["bpf".to_owned()])
        .args(["watch", "--duration", "1s"])
        .output()
        .expect("run watch");
    assert_eq!(fewer.status.code(), Some(1), "{fewer:?}");
    assert!(String::from_utf8_lossy(&fewer.stderr).contains("CAP_PERFMON"));
}

/// The Job's capabilities without SYS_ADMIN (which only its cgroup v2 nsenter needs) are
/// enough for `run` against an existing cgroup on this cgroup v1 node: the stressors join
/// the target and hold their memory.
#[test]
fn run_works_with_the_jobs_capabilities() {
    require_root();
    let container = &containers_of("job-inject.yaml", "Job")[0];
    let caps: Vec<String> = added_capabilities(container)
        .into_iter()
        .filter(|c| c != "sys_admin")
        .collect();
    assert_eq!(caps, ["bpf", "perfmon", "setuid", "setgid"]);
    assert_eq!(container["command"][0], "nsenter");
    let target = TestCgroup::new("deploy-run", Some(256 * MIB));
    let before = target.usage();
    let mut run = Memstress::start_command(memstress_with_caps(&caps).args([
        "run",
        "-o",
        "json",
        "--cgroup",
        target.path(),
        "--size",
        "32Mi",
    ]));
    run.wait_type("full", Duration::from_secs(30));
    let grown = target.usage().saturating_sub(before);
    let finished = run.interrupt(Duration::from_secs(15));
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(
        grown.abs_diff(32 * MIB) <= 32 * MIB / 50,
        "usage grew by {grown}, want 32 MiB"
    );
}
