//! The friendly edges: NO_COLOR, completions, man pages, usage errors. No root needed.

use std::process::Command;

use memstress_tests::memstress_bin;

/// Runs `memstress watch --cgroup /no/such/cgroup` (an error before anything needs root) on a
/// pseudo-terminal (util-linux `script`), with `NO_COLOR` set to `no_color` or unset, and
/// returns what the terminal showed.
fn error_on_a_terminal(no_color: Option<&str>) -> String {
    let mut cmd = Command::new("script");
    cmd.args(["--quiet", "--return", "--command"])
        .arg(format!(
            "{} watch --cgroup /no/such/cgroup",
            memstress_bin().display()
        ))
        .arg("/dev/null")
        .env_remove("NO_COLOR");
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().expect("run script(1)");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Colour only on a terminal, and never with NO_COLOR set: the check can fail (a terminal
/// without NO_COLOR does get colour).
#[test]
fn no_color_turns_colour_off() {
    let coloured = error_on_a_terminal(None);
    assert!(
        coloured.contains("\x1b["),
        "a terminal without NO_COLOR gets a coloured error: {coloured:?}"
    );
    assert!(coloured.contains("error: "), "{coloured:?}");
    let plain = error_on_a_terminal(Some("1"));
    assert!(
        !plain.contains('\x1b'),
        "NO_COLOR=1 still coloured: {plain:?}"
    );
    assert!(plain.contains("memstress: error: no cgroup"), "{plain:?}");
    // An empty NO_COLOR counts as unset (no-color.org).
    assert!(error_on_a_terminal(Some("")).contains("\x1b["));
    // Not a terminal: no colour whatever the environment says.
    let piped = Command::new(memstress_bin())
        .args(["watch", "--cgroup", "/no/such/cgroup"])
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&piped.stderr).contains('\x1b'));
}

#[test]
fn completions_are_valid_shell() {
    let bash = Command::new(memstress_bin())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(bash.status.success());
    let script = String::from_utf8(bash.stdout).unwrap();
    assert!(script.contains("--fill-to") && script.contains("--metrics"));
    let check = Command::new("bash")
        .args(["-n", "-c", &script])
        .output()
        .unwrap();
    assert!(check.status.success(), "bash -n: {check:?}");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = Command::new(memstress_bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
    let bad = Command::new(memstress_bin())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "a usage error exits 2");
}

#[test]
fn man_pages_render() {
    let dir = std::env::temp_dir().join(format!("memstress-man-{}", std::process::id()));
    let out = Command::new(memstress_bin())
        .args(["man", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for page in [
        "memstress.1",
        "memstress-watch.1",
        "memstress-run.1",
        "memstress-demo.1",
    ] {
        let path = dir.join(page);
        assert!(path.is_file(), "no {page}");
        // groff (through man) formats it without complaint.
        let shown = Command::new("man")
            .arg("-l")
            .arg(&path)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .expect("run man");
        let text = String::from_utf8_lossy(&shown.stdout);
        assert!(shown.status.success(), "{page}: {shown:?}");
        if page != "memstress.1" {
            assert!(text.contains("EXAMPLES:"), "{page}:\n{text}");
        } else {
            assert!(text.contains("EXIT CODES:"), "{page}:\n{text}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `memstress schema --check` (what `cargo xtask schema --check` runs) accepts the committed
/// schema, and refuses one that lacks a field a line type has (a field added to a type
/// without regenerating the schema), naming where.
#[test]
fn the_schema_check_catches_a_type_that_changed() {
    let committed = memstress_tests::workspace().join("docs/events.schema.json");
    let ok = Command::new(memstress_bin())
        .args(["schema", "--check"])
        .arg(&committed)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "docs/events.schema.json is stale: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The same file as it was before `dropped_records` was added to `end`.
    let mut schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&committed).unwrap()).unwrap();
    let end = &mut schema["$defs"]["EndLine"];
    end["properties"]
        .as_object_mut()
        .unwrap()
        .remove("dropped_records")
        .expect("EndLine has dropped_records");
    end["required"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f != "dropped_records");
    let stale = std::env::temp_dir().join(format!("stale-schema-{}.json", std::process::id()));
    std::fs::write(
        &stale,
        serde_json::to_string_pretty(&schema).unwrap() + "\n",
    )
    .unwrap();
    let out = Command::new(memstress_bin())
        .args(["schema", "--check"])
        .arg(&stale)
        .output()
        .unwrap();
    std::fs::remove_file(&stale).unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cargo xtask schema") && stderr.contains("dropped_records"),
        "{stderr}"
    );
}
