//! What this process is allowed to do (effective capabilities, read from /proc/self/status),
//! and who stressors run as.

use std::{ffi::CString, fs};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `CAP_SETGID`
pub const CAP_SETGID: u32 = 6;
/// `CAP_SETUID`
pub const CAP_SETUID: u32 = 7;
/// `CAP_SETPCAP` (needed to drop capabilities from the bounding set).
pub const CAP_SETPCAP: u32 = 8;
/// `CAP_IPC_LOCK` (mlock beyond RLIMIT_MEMLOCK).
pub const CAP_IPC_LOCK: u32 = 14;
/// `CAP_SYS_ADMIN`
pub const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_SYS_RESOURCE` (needed to lower `oom_score_adj` below its current value).
pub const CAP_SYS_RESOURCE: u32 = 24;
/// `CAP_PERFMON`
pub const CAP_PERFMON: u32 = 38;
/// `CAP_BPF`
pub const CAP_BPF: u32 = 39;

/// The effective capability set of this process (0 when it cannot be read).
pub fn effective() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| parse_cap(&status, "CapEff:"))
        .unwrap_or(0)
}

/// Reads a hex capability mask such as `CapEff:\t000001ffffffffff`.
pub fn parse_cap(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Whether `caps` includes capability `cap`.
pub fn has(caps: u64, cap: u32) -> bool {
    caps & (1 << cap) != 0
}

/// Whether this process may load and attach tracing BPF programs.
pub fn can_trace(caps: u64) -> bool {
    has(caps, CAP_SYS_ADMIN) || (has(caps, CAP_BPF) && has(caps, CAP_PERFMON))
}

/// The user and group a child process is switched to before it execs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Credentials {
    /// User id.
    pub uid: u32,
    /// Group id (the only group: supplementary groups are cleared).
    pub gid: u32,
}

/// The user stressors run as when `--user` is not given.
pub const DEFAULT_USER: &str = "nobody";

/// Who stressors run as, as the plan states it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StressorUser {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Where it came from: `--user NAME`, `default (nobody)`, or `own (…)` when this process
    /// cannot switch users.
    pub from: String,
    /// What stressors keep: `none`, or `CAP_IPC_LOCK` with `--mlock` (dropped before exec,
    /// everything else).
    pub capabilities: String,
}

/// Why stressors cannot run as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// Not a user name, uid or uid:gid (a usage error).
    #[error("--user `{0}` is not a user; give a name from /etc/passwd, a uid, or uid:gid")]
    NotAUser(String),
    /// An id the kernel reads specially (a usage error).
    #[error(
        "--user `{spec}`: {what} {id} is (uid_t)-1, which the kernel reads as \"leave \
         unchanged\": the stressors would keep this process's own {what}; give another id"
    )]
    Unchanged {
        /// The `--user` given.
        spec: String,
        /// `uid` or `gid`.
        what: &'static str,
        /// The id.
        id: u32,
    },
    /// A privilege this process lacks.
    #[error("{0}")]
    Privilege(String),
}

impl UserError {
    /// Whether it is the input's fault (exit code 2) rather than missing privileges.
    pub fn is_usage(&self) -> bool {
        !matches!(self, Self::Privilege(_))
    }
}

/// Resolves `USER`, `UID`, or `UID:GID` (a name is looked up in the user database; its
/// primary group is used).
pub fn resolve_user(spec: &str) -> Result<Credentials, UserError> {
    let bad = || UserError::NotAUser(spec.to_owned());
    if spec.is_empty() {
        return Err(bad());
    }
    let credentials = if let Some((u, g)) = spec.split_once(':') {
        let uid = u.parse().map_err(|_| bad())?;
        let gid = g.parse().map_err(|_| bad())?;
        Credentials { uid, gid }
    } else if let Ok(uid) = spec.parse::<u32>() {
        // A numeric uid: its primary group when it has an entry, else the same number.
        let gid = lookup(None, Some(uid)).map_or(uid, |c| c.gid);
        Credentials { uid, gid }
    } else {
        lookup(Some(spec), None).ok_or_else(bad)?
    };
    // setresuid(2) and setresgid(2) read (uid_t)-1 as "leave this id unchanged": a stressor
    // asked to run as 4294967295 would keep the controller's ids (root).
    for (what, id) in [("uid", credentials.uid), ("gid", credentials.gid)] {
        if id == UNCHANGED_ID {
            return Err(UserError::Unchanged {
                spec: spec.to_owned(),
                what,
                id,
            });
        }
    }
    Ok(credentials)
}

/// `(uid_t)-1`: to `setresuid(2)`/`setresgid(2)` (and `chown(2)`), "leave this id as it is".
pub const UNCHANGED_ID: u32 = u32::MAX;

fn lookup(name: Option<&str>, uid: Option<u32>) -> Option<Credentials> {
    // SAFETY: passwd is a C struct of integers and pointers, for which all-zero is valid.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = match (name, uid) {
        (Some(name), _) => {
            let name = CString::new(name).ok()?;
            // SAFETY: getpwnam_r writes into pwd and buf, both ours and sized as passed.
            unsafe {
                libc::getpwnam_r(
                    name.as_ptr(),
                    &mut pwd,
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut result,
                )
            }
        }
        // SAFETY: as above.
        (None, Some(uid)) => unsafe {
            libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result)
        },
        (None, None) => return None,
    };
    (rc == 0 && !result.is_null()).then_some(Credentials {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

/// This process's real uid and gid.
pub fn own() -> Credentials {
    // SAFETY: getuid/getgid cannot fail.
    unsafe {
        Credentials {
            uid: libc::getuid(),
            gid: libc::getgid(),
        }
    }
}

/// Decides who stressors run as. With CAP_SETUID and CAP_SETGID: `requested`, or `nobody`
/// (uid/gid 65534 when the user database has no such entry). Without them this process
/// cannot switch: its own uid is kept when nothing was asked, and asking for another user is
/// an error.
pub fn stressor_user(
    requested: Option<&str>,
    mlock: bool,
) -> Result<(Option<Credentials>, StressorUser), UserError> {
    let caps = effective();
    if mlock && !has(caps, CAP_IPC_LOCK) {
        return Err(UserError::Privilege(
            "--mlock needs CAP_IPC_LOCK (stressors keep it, and only it, to lock their memory)"
                .to_owned(),
        ));
    }
    let can_switch = has(caps, CAP_SETUID) && has(caps, CAP_SETGID);
    let own = own();
    let (wanted, from) = match requested {
        Some(spec) => (resolve_user(spec)?, format!("--user {spec}")),
        None => (
            resolve_user(DEFAULT_USER).unwrap_or(Credentials {
                uid: 65534,
                gid: 65534,
            }),
            format!("default: {DEFAULT_USER}"),
        ),
    };
    let user = |c: Credentials, from: String| StressorUser {
        uid: c.uid,
        gid: c.gid,
        from,
        capabilities: if mlock { "CAP_IPC_LOCK" } else { "none" }.to_owned(),
    };
    // A uid-0 stressor regains its bounding set at exec unless the set can be emptied,
    // which needs CAP_SETPCAP.
    let check_root = |c: Credentials| {
        let bounding = fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| parse_cap(&s, "CapBnd:"))
            .unwrap_or(u64::MAX);
        if c.uid == 0 && bounding != 0 && !has(caps, CAP_SETPCAP) {
            return Err(UserError::Privilege(format!(
                "stressors would run as uid 0 and regain capabilities at exec; give memstress \
                 CAP_SETUID and CAP_SETGID (stressors then run as {DEFAULT_USER}) or CAP_SETPCAP"
            )));
        }
        Ok(())
    };
    if wanted == own {
        check_root(own)?;
        return Ok((None, user(own, from)));
    }
    if can_switch {
        check_root(wanted)?;
        return Ok((Some(wanted), user(wanted, from)));
    }
    check_root(own)?;
    match requested {
        Some(spec) => Err(UserError::Privilege(format!(
            "--user {spec} needs CAP_SETUID and CAP_SETGID, which this process lacks; \
             leave --user out to run stressors as uid {} (this process's own)",
            own.uid
        ))),
        None => Ok((
            None,
            user(
                own,
                format!("own: cannot switch to {DEFAULT_USER} without CAP_SETUID"),
            ),
        )),
    }
}

/// Refuses a setuid or setgid installation: memstress is run by root or given capabilities,
/// never raised from an unprivileged user's invocation.
pub fn refuse_setuid() -> Result<(), UserError> {
    // SAFETY: these getters cannot fail.
    let (uid, euid, gid, egid) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    };
    if uid != euid || gid != egid {
        return Err(UserError::Privilege(format!(
            "memstress refuses to run setuid/setgid (real uid {uid}, effective uid {euid}); \
             run it as root or with file capabilities (see docs/security.md)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_users() {
        assert_eq!(resolve_user("root"), Ok(Credentials { uid: 0, gid: 0 }));
        assert_eq!(resolve_user("0"), Ok(Credentials { uid: 0, gid: 0 }));
        assert_eq!(
            resolve_user("1234:5678"),
            Ok(Credentials {
                uid: 1234,
                gid: 5678
            })
        );
        // An unknown numeric uid keeps its number as gid.
        assert_eq!(
            resolve_user("4000000000"),
            Ok(Credentials {
                uid: 4_000_000_000,
                gid: 4_000_000_000
            })
        );
        for bad in ["", "no-such-user-here", "1:x", ":", "-1"] {
            let e = resolve_user(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
            assert!(e.is_usage());
        }
        // (uid_t)-1 means "unchanged" to setresuid: it would keep root.
        for special in ["4294967295", "65534:4294967295", "4294967295:65534"] {
            let e = resolve_user(special).unwrap_err();
            assert!(e.to_string().contains("unchanged"), "{special}: {e}");
            assert!(e.is_usage());
        }
    }

    #[test]
    fn parses_status_masks() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000000000\n";
        let caps = parse_cap(status, "CapEff:").unwrap();
        assert!(has(caps, CAP_BPF) && has(caps, CAP_PERFMON));
        assert!(can_trace(caps));
        assert!(!can_trace(parse_cap(status, "CapInh:").unwrap()));
        assert!(can_trace(1 << CAP_SYS_ADMIN));
        assert_eq!(parse_cap("nothing", "CapEff:"), None);
    }
}
