//! Starting child processes inside a cgroup, before they touch a page.
//!
//! Children are created with `clone3(CLONE_PIDFD)`, so the controller holds a pidfd for each:
//! signals go to the right process even after pid reuse, and exits are awaited with the pidfd
//! readable in the event loop (where a seccomp profile refuses clone3 with ENOSYS, as
//! container runtimes' default ones do, with `clone(CLONE_PIDFD)`). On cgroup v2 the child is born in the target cgroup
//! (`CLONE_INTO_CGROUP`, Linux 5.7); otherwise its first act is to write `0` to the target's
//! `cgroup.procs`, before it execs and allocates anything. Between clone and exec the child
//! only makes raw system calls with memory prepared by the parent (async-signal-safe), as
//! after any fork in a multi-threaded program.

use std::{
    ffi::CString,
    fs::File,
    io::{self, Read as _},
    mem::size_of,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use tokio::io::unix::AsyncFd;

use crate::target::cgroup::{Cgroup, Version};

/// What to do with a child's standard stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stdio {
    /// Share the controller's.
    Inherit,
    /// /dev/null.
    Null,
    /// A pipe the controller keeps the other end of.
    Pipe,
}

/// How to start a child.
#[derive(Debug)]
pub struct Spec<'a> {
    /// Executable.
    pub program: &'a Path,
    /// Arguments, `argv[0]` included.
    pub args: Vec<String>,
    /// Cgroup to start it in.
    pub cgroup: Option<&'a Cgroup>,
    /// SIGKILL it when the controller dies (`PR_SET_PDEATHSIG`).
    pub die_with_parent: bool,
    /// Put it in a process group of its own, so terminal signals reach only the controller.
    pub new_process_group: bool,
    /// Start a new session instead (detached from the terminal).
    pub new_session: bool,
    /// `oom_score_adj` to set before exec.
    pub oom_score_adj: Option<i32>,
    /// Switch to this user and group (supplementary groups cleared) before exec.
    pub credentials: Option<crate::privilege::Credentials>,
    /// Drop every capability (bounding, ambient, inheritable, permitted, effective) and set
    /// `no_new_privs` before exec, after joining the cgroup and setting `oom_score_adj`.
    pub drop_privileges: bool,
    /// Capabilities kept through the drop (a mask of `1 << CAP_*`): `--mlock` keeps
    /// CAP_IPC_LOCK, nothing else keeps anything.
    pub keep_capabilities: u64,
    /// Standard input.
    pub stdin: Stdio,
    /// Standard output.
    pub stdout: Stdio,
    /// Standard error.
    pub stderr: Stdio,
    /// Start it in this PID namespace (an open `/proc/PID/ns/pid`): the controller's thread
    /// joins it for its children (`setns(CLONE_NEWPID)`) just for the clone and returns to
    /// its own at once. A container's: the kernel kills the child with the container's own
    /// processes when its init exits. Needs CAP_SYS_ADMIN.
    pub pid_ns: Option<BorrowedFd<'a>>,
}

impl<'a> Spec<'a> {
    /// A child running `program` with `args` (`argv[0]` included), streams inherited.
    pub fn new(program: &'a Path, args: Vec<String>) -> Self {
        Self {
            program,
            args,
            cgroup: None,
            die_with_parent: true,
            new_process_group: true,
            new_session: false,
            oom_score_adj: None,
            credentials: None,
            drop_privileges: false,
            keep_capabilities: 0,
            stdin: Stdio::Inherit,
            stdout: Stdio::Inherit,
            stderr: Stdio::Inherit,
            pid_ns: None,
        }
    }
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// exit(code).
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(c) => write!(f, "exit code {c}"),
            Self::Signal(libc::SIGKILL) => write!(f, "SIGKILL"),
            Self::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// A started child.
#[derive(Debug)]
pub struct Child {
    /// Its pid.
    pub pid: u32,
    pidfd: AsyncFd<OwnedFd>,
    /// Write end of its stdin pipe.
    pub stdin: Option<File>,
    /// Read end of its stdout pipe.
    pub stdout: Option<File>,
    /// Read end of its stderr pipe.
    pub stderr: Option<File>,
    reaped: std::sync::OnceLock<Exit>,
    disowned: bool,
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in argument"))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn open_raw(path: &Path, flags: i32) -> io::Result<OwnedFd> {
    let c = cstring(path.as_os_str().as_bytes())?;
    // SAFETY: open with a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pidfd for process `pid` (close-on-exec).
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open with a pid and no flags; the fd is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Joins the PID namespace `ns` for this thread's future children; restores its own when
/// dropped.
struct PidNsGuard {
    own: OwnedFd,
}

impl PidNsGuard {
    fn enter(ns: BorrowedFd<'_>) -> io::Result<Self> {
        // The process's own (active) PID namespace: where this thread's children go back to.
        let own = open_raw(Path::new("/proc/self/ns/pid"), libc::O_RDONLY)?;
        // SAFETY: setns on an open namespace fd; only this thread's pid_ns_for_children
        // changes.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { own })
    }
}

impl Drop for PidNsGuard {
    fn drop(&mut self) {
        // SAFETY: as above. Going back to the active namespace is always allowed.
        if unsafe { libc::setns(self.own.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
            // Later children of this thread would be born in the container: never go on.
            let err = io::Error::last_os_error();
            eprintln!("memstress: cannot return to its own PID namespace: {err}");
            std::process::abort();
        }
    }
}

/// Whether this process may start children in PID namespace `ns` (tried, and undone).
pub fn can_enter_pid_ns(ns: BorrowedFd<'_>) -> io::Result<()> {
    PidNsGuard::enter(ns).map(drop)
}

/// Everything the child needs, prepared before the clone so the child allocates nothing.
struct Prepared {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    procs_fd: Option<OwnedFd>,
    cgroup_dir: Option<OwnedFd>,
    adj_path: CString,
    adj_value: Option<Vec<u8>>,
    null: OwnedFd,
    /// A pidfd of the controller, for a child in another PID namespace: there `getppid()`
    /// is 0 whoever the parent is, so the child asks the pidfd whether the controller died.
    parent_pidfd: Option<OwnedFd>,
}

impl Prepared {
    /// Everything `spec`'s child needs: its arguments and environment as C strings, and the
    /// files it writes to.
    fn new(spec: &Spec<'_>) -> io::Result<Self> {
        let argv = spec
            .args
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let envp = std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                cstring(&kv)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let (procs_fd, cgroup_dir) = match spec.cgroup {
            Some(cgroup) => (
                Some(open_raw(&cgroup.procs_file(), libc::O_WRONLY)?),
                if cgroup.hierarchy.version == Version::V2 {
                    open_raw(&cgroup.dir, libc::O_PATH | libc::O_DIRECTORY).ok()
                } else {
                    None
                },
            ),
            None => (None, None),
        };
        Ok(Self {
            program: cstring(spec.program.as_os_str().as_bytes())?,
            argv,
            envp,
            procs_fd,
            cgroup_dir,
            adj_path: cstring(b"/proc/self/oom_score_adj")?,
            adj_value: spec.oom_score_adj.map(|a| a.to_string().into_bytes()),
            null: open_raw(Path::new("/dev/null"), libc::O_RDWR)?,
            parent_pidfd: match spec.pid_ns {
                Some(_) => Some(pidfd_open(std::process::id())?),
                None => None,
            },
        })
    }
}

/// The parent's and the child's ends of each piped stdio stream (stdin, stdout, stderr).
type Ends = [Option<OwnedFd>; 3];

fn stdio_pipes(spec: &Spec<'_>) -> io::Result<(Ends, Ends)> {
    let mut parent_ends: Ends = [None, None, None];
    let mut child_ends: Ends = [None, None, None];
    for (i, stdio) in [spec.stdin, spec.stdout, spec.stderr]
        .into_iter()
        .enumerate()
    {
        if stdio == Stdio::Pipe {
            let (r, w) = pipe()?;
            if i == 0 {
                parent_ends[0] = Some(w);
                child_ends[0] = Some(r);
            } else {
                parent_ends[i] = Some(r);
                child_ends[i] = Some(w);
            }
        }
    }
    Ok((parent_ends, child_ends))
}

/// What the child reported on its error pipe before it exited (nothing: it exec'd), as an
/// error naming the step that failed. A child that failed is reaped here.
fn child_failure(err_read: OwnedFd, pid: u32) -> Option<io::Error> {
    let mut err_read = File::from(err_read);
    let mut buf = [0u8; 8];
    let n = err_read.read(&mut buf).unwrap_or(0);
    if n < 8 {
        return None;
    }
    let stage = i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    // Reap it: it has exited.
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    let what = match stage {
        STAGE_CGROUP => "join the cgroup",
        STAGE_ADJ => "set oom_score_adj",
        STAGE_EXEC => "exec",
        STAGE_USER => "switch user",
        STAGE_CAPS => "drop capabilities",
        STAGE_IDS => "switch user (getresuid/getresgid show other ids than asked)",
        _ => "start",
    };
    let os = io::Error::from_raw_os_error(errno);
    Some(io::Error::new(
        os.kind(),
        format!("child could not {what}: {os}"),
    ))
}

/// Starts a child as `spec` says.
pub fn spawn(spec: &Spec<'_>) -> io::Result<Child> {
    let prepared = Prepared::new(spec)?;
    let (parent_ends, child_ends) = stdio_pipes(spec)?;
    let (err_read, err_write) = pipe()?;

    let mut attempt_into_cgroup = prepared.cgroup_dir.is_some();
    // Container runtimes' default seccomp profiles (Docker's, containerd's: Kubernetes'
    // `RuntimeDefault`) answer clone3 with ENOSYS, so that libc falls back to clone: so do we.
    let mut legacy_clone = false;
    loop {
        let mut pidfd: RawFd = -1;
        let mut args = CloneArgs {
            flags: CLONE_PIDFD,
            pidfd: (&raw mut pidfd) as u64,
            exit_signal: libc::SIGCHLD as u64,
            ..CloneArgs::default()
        };
        if attempt_into_cgroup && let Some(dir) = &prepared.cgroup_dir {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = dir.as_raw_fd() as u64;
        }
        let parent = std::process::id() as i32;
        // In the target's PID namespace just for this clone; back in ours right after it (in
        // the parent only: the child execs or exits inside child_main).
        let pid_ns = spec.pid_ns.map(PidNsGuard::enter).transpose()?;
        // SAFETY: clone3 without a new stack behaves like fork: the child continues here on a
        // copy of this stack and only runs `child_main`, which makes raw system calls on data
        // prepared above and then execs or exits; the parent continues normally.
        let ret = if legacy_clone {
            // clone(2) with CLONE_PIDFD stores the pidfd at parent_tid (the third argument);
            // no new stack, no child_tid or tls (the fourth and fifth, in either order).
            // SAFETY: as for clone3 below: fork-like, the child only runs `child_main`.
            unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    (CLONE_PIDFD | libc::SIGCHLD as u64) as libc::c_ulong,
                    0 as libc::c_ulong,
                    &raw mut pidfd,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                )
            }
        } else {
            // SAFETY: see above.
            unsafe { libc::syscall(libc::SYS_clone3, &raw const args, size_of::<CloneArgs>()) }
        };
        if ret == 0 {
            let in_cgroup = args.flags & CLONE_INTO_CGROUP != 0;
            // SAFETY: we are the child of a fork-like clone; see child_main.
            unsafe {
                child_main(
                    spec,
                    &prepared,
                    &child_ends,
                    err_write.as_raw_fd(),
                    parent,
                    in_cgroup,
                )
            }
        }
        let clone_error = (ret < 0).then(io::Error::last_os_error);
        drop(pid_ns);
        if let Some(err) = clone_error {
            // Kernels before 5.7 reject CLONE_INTO_CGROUP: join through cgroup.procs instead.
            if attempt_into_cgroup
                && matches!(
                    err.raw_os_error(),
                    Some(libc::EINVAL | libc::E2BIG | libc::ENOSYS)
                )
            {
                attempt_into_cgroup = false;
                continue;
            }
            if !legacy_clone && err.raw_os_error() == Some(libc::ENOSYS) {
                legacy_clone = true;
                continue;
            }
            return Err(err);
        }
        let pid = ret as u32;
        // SAFETY: clone3 stored a fresh pidfd for the child.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        drop(child_ends);
        drop(err_write);
        if let Some(err) = child_failure(err_read, pid) {
            return Err(err);
        }
        let [stdin, stdout, stderr] = parent_ends;
        return Ok(Child {
            pid,
            // SAFETY: the pidfd is owned by the AsyncFd and stays open as long as it lives.
            pidfd: unsafe { AsyncFd::register(pidfd) }?,
            stdin: stdin.map(File::from),
            stdout: stdout.map(File::from),
            stderr: stderr.map(File::from),
            reaped: std::sync::OnceLock::new(),
            disowned: false,
        });
    }
}

const STAGE_CGROUP: i32 = 1;
const STAGE_ADJ: i32 = 2;
const STAGE_EXEC: i32 = 3;
const STAGE_SETUP: i32 = 4;
const STAGE_USER: i32 = 5;
const STAGE_CAPS: i32 = 6;
const STAGE_IDS: i32 = 7;

/// `struct __user_cap_header_struct`
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct`
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Drops every capability but those in `keep` (a mask; only `--mlock`'s CAP_IPC_LOCK is
/// ever kept) and switches credentials. Raw system calls only (it runs between clone and
/// exec). Order matters: the bounding set can only be shrunk while CAP_SETPCAP is held, and
/// the user switched while CAP_SETUID is (with `PR_SET_KEEPCAPS` so that `keep` survives the
/// switch); `no_new_privs` keeps exec from granting anything back, a bounding set reduced to
/// `keep` keeps a uid-0 exec from regaining the rest, and `keep` is raised as ambient so a
/// non-root exec holds it.
///
/// # Safety
/// Only in the child of a fork-like clone (see [`child_main`]). On error, errno is left as
/// the failing call set it, and the stage is returned.
unsafe fn drop_privileges(
    credentials: Option<crate::privilege::Credentials>,
    keep: u64,
    hidden: bool,
) -> Result<(), i32> {
    // SAFETY: raw system calls with valid arguments.
    unsafe {
        // In another PID namespace (a container's) the child is visible to that namespace's
        // processes: exec must leave it non-dumpable, or until its first instruction one of
        // them of the same user could ptrace it or open its /proc/PID/root (the node's root).
        // Exec does so when the real and effective group ids differ: the real one is set
        // apart here, and the worker sets it back first thing (`stressor::settle_gid`).
        let real_gid = |egid: u32| if egid == 0 { 1 } else { 0 };
        if hidden && credentials.is_none() {
            let egid = libc::getegid();
            if libc::syscall(libc::SYS_setresgid, real_gid(egid), egid, egid) != 0 {
                return Err(STAGE_USER);
            }
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(STAGE_CAPS);
        }
        for cap in 0..64u64 {
            if keep & (1 << cap) != 0 {
                continue;
            }
            // EPERM without CAP_SETPCAP, EINVAL past the kernel's last capability: what is
            // left is checked below.
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                && *libc::__errno_location() == libc::EINVAL
            {
                break;
            }
        }
        let bounding_left = (0..64u64).any(|cap| {
            keep & (1 << cap) == 0 && libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) == 1
        });
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ) != 0
            && *libc::__errno_location() != libc::EINVAL
        {
            return Err(STAGE_CAPS);
        }
        if let Some(c) = credentials {
            if keep != 0 && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
                return Err(STAGE_CAPS);
            }
            // Raw system calls, not glibc's wrappers: in a multi-threaded parent those
            // broadcast the change to every thread glibc knows of (SIGSETXID, then a futex
            // wait for their answers), and this child of a raw clone3 inherited that thread
            // list but none of the threads: it waited forever whenever a thread of the
            // controller was starting or exiting at the moment of the clone.
            if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(
                    libc::SYS_setresgid,
                    if hidden { real_gid(c.gid) } else { c.gid },
                    c.gid,
                    c.gid,
                ) != 0
                || libc::syscall(libc::SYS_setresuid, c.uid, c.uid, c.uid) != 0
            {
                return Err(STAGE_USER);
            }
            // Check what the kernel actually gave, not what was asked: an id it reads
            // specially ((uid_t)-1 is "unchanged") or a security module could leave the child
            // with other ids than the plan states, and a stressor must never run as someone
            // else than it says.
            let (mut r, mut e, mut s) = (0u32, 0u32, 0u32);
            let uids_ok = libc::syscall(libc::SYS_getresuid, &raw mut r, &raw mut e, &raw mut s)
                == 0
                && [r, e, s] == [c.uid; 3];
            let real = if hidden { real_gid(c.gid) } else { c.gid };
            let gids_ok = libc::syscall(libc::SYS_getresgid, &raw mut r, &raw mut e, &raw mut s)
                == 0
                && [r, e, s] == [real, c.gid, c.gid];
            let no_groups =
                libc::syscall(libc::SYS_getgroups, 0, std::ptr::null_mut::<libc::gid_t>()) == 0;
            if !(uids_ok && gids_ok && no_groups) {
                *libc::__errno_location() = libc::EPERM;
                return Err(STAGE_IDS);
            }
        }
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let (low, high) = (keep as u32, (keep >> 32) as u32);
        let data = [
            CapData {
                effective: low,
                permitted: low,
                inheritable: low,
            },
            CapData {
                effective: high,
                permitted: high,
                inheritable: high,
            },
        ];
        if libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) != 0 {
            return Err(STAGE_CAPS);
        }
        for cap in (0..64u64).filter(|c| keep & (1 << c) != 0) {
            if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0 {
                return Err(STAGE_CAPS);
            }
        }
        // As uid 0 with a bounding set we could not reduce, exec would grant capabilities
        // back: refuse rather than run a stressor with privileges.
        if bounding_left && libc::geteuid() == 0 {
            *libc::__errno_location() = libc::EPERM;
            return Err(STAGE_CAPS);
        }
    }
    Ok(())
}

/// Whether the controller died (the child is then an orphan that `PR_SET_PDEATHSIG` may
/// have missed). In another PID namespace `getppid()` is 0 whoever the parent is: the
/// controller's pidfd is readable once it exited.
///
/// # Safety
/// As [`child_main`].
unsafe fn parent_died(p: &Prepared, parent: i32) -> bool {
    // SAFETY: getppid and poll on an fd the parent prepared.
    unsafe {
        match &p.parent_pidfd {
            Some(fd) => {
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                libc::poll(&mut pfd, 1, 0) != 0
            }
            None => libc::getppid() != parent,
        }
    }
}

/// The child's side. Never returns.
///
/// # Safety
/// Must only be called in the child of a fork-like clone. Uses only async-signal-safe system
/// calls on memory prepared by the parent.
unsafe fn child_main(
    spec: &Spec<'_>,
    p: &Prepared,
    child_ends: &[Option<OwnedFd>; 3],
    err_fd: RawFd,
    parent: i32,
    in_cgroup: bool,
) -> ! {
    let fail = |stage: i32| -> ! {
        // SAFETY: errno location and write/_exit are async-signal-safe.
        unsafe {
            let errno = *libc::__errno_location();
            let mut buf = [0u8; 8];
            buf[..4].copy_from_slice(&stage.to_ne_bytes());
            buf[4..].copy_from_slice(&errno.to_ne_bytes());
            libc::write(err_fd, buf.as_ptr().cast(), buf.len());
            libc::_exit(127)
        }
    };
    // SAFETY: raw system calls with valid arguments, in a fresh single-threaded child.
    unsafe {
        if spec.die_with_parent {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                fail(STAGE_SETUP);
            }
            // The parent may have died before the prctl took effect.
            if parent_died(p, parent) {
                libc::_exit(1);
            }
        }
        if spec.new_session {
            libc::setsid();
        } else if spec.new_process_group {
            libc::setpgid(0, 0);
        }
        if !in_cgroup
            && let Some(fd) = &p.procs_fd
            && libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1
        {
            fail(STAGE_CGROUP);
        }
        if let Some(value) = &p.adj_value {
            let fd = libc::open(p.adj_path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, value.as_ptr().cast(), value.len()) != value.len() as isize
            {
                fail(STAGE_ADJ);
            }
            libc::close(fd);
        }
        if spec.drop_privileges || spec.credentials.is_some() {
            if let Err(stage) = drop_privileges(
                spec.credentials,
                spec.keep_capabilities,
                spec.pid_ns.is_some(),
            ) {
                fail(stage);
            }
            // Changing credentials clears the parent-death signal (commit_creds): set it
            // again, and check the parent did not die in between.
            if spec.die_with_parent {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    fail(STAGE_SETUP);
                }
                if parent_died(p, parent) {
                    libc::_exit(1);
                }
            }
        }
        for (target, (stdio, end)) in [spec.stdin, spec.stdout, spec.stderr]
            .iter()
            .zip(child_ends.iter())
            .enumerate()
        {
            let source = match (stdio, end) {
                (Stdio::Pipe, Some(fd)) => fd.as_raw_fd(),
                (Stdio::Null, _) => p.null.as_raw_fd(),
                _ => continue,
            };
            if libc::dup2(source, target as i32) < 0 {
                fail(STAGE_SETUP);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // Build the pointer arrays on the stack: no allocation in the child.
        const MAX_ARGS: usize = 64;
        const MAX_ENV: usize = 512;
        let mut argv: [*const libc::c_char; MAX_ARGS + 1] = [std::ptr::null(); MAX_ARGS + 1];
        for (slot, arg) in argv.iter_mut().zip(p.argv.iter().take(MAX_ARGS)) {
            *slot = arg.as_ptr();
        }
        let mut envp: [*const libc::c_char; MAX_ENV + 1] = [std::ptr::null(); MAX_ENV + 1];
        for (slot, var) in envp.iter_mut().zip(p.envp.iter().take(MAX_ENV)) {
            *slot = var.as_ptr();
        }
        libc::execve(p.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(STAGE_EXEC)
    }
}

impl Child {
    /// Sends `signal` through the pidfd (never to a recycled pid).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        if self.reaped.get().is_some() {
            return Ok(());
        }
        // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.get_ref().as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            // ESRCH: already exited (a zombie waiting to be reaped); that is fine.
            if err.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(err);
        }
        Ok(())
    }

    /// SIGKILLs it.
    pub fn kill(&self) -> io::Result<()> {
        self.signal(libc::SIGKILL)
    }

    /// Reaps it if it has exited.
    pub fn try_wait(&self) -> io::Result<Option<Exit>> {
        if let Some(exit) = self.reaped.get() {
            return Ok(Some(*exit));
        }
        // SAFETY: siginfo is plain data; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own pidfd.
        let ret = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                self.pidfd.get_ref().as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: si_pid/si_status are valid for SIGCHLD siginfo; zero pid means not exited.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        let exit = match info.si_code {
            libc::CLD_EXITED => Exit::Code(status),
            _ => Exit::Signal(status),
        };
        let _ = self.reaped.set(exit);
        Ok(Some(exit))
    }

    /// Waits for it to exit.
    pub async fn wait(&self) -> io::Result<Exit> {
        loop {
            if let Some(exit) = self.try_wait()? {
                return Ok(exit);
            }
            let mut guard = self.pidfd.readable().await?;
            guard.clear_ready();
        }
    }

    /// Its pidfd.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.get_ref().as_fd()
    }

    /// Lets it outlive this handle: dropping the handle will neither kill nor reap it (for
    /// the janitor, which must outlive the controller).
    pub fn disown(mut self) {
        self.disowned = true;
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Never leave a zombie or a stray child: a dropped Child is killed and reaped.
        if self.reaped.get().is_none() && !self.disowned {
            let _ = self.kill();
            // SAFETY: waiting for our own child, identified by its pidfd.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            unsafe {
                libc::waitid(
                    libc::P_PIDFD,
                    self.pidfd.get_ref().as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED,
                )
            };
        }
    }
}

/// This executable, for re-executing hidden subcommands. `/proc/self/exe` keeps working
/// even if the file was replaced on disk since start-up (a rebuild during a long run).
pub const SELF_EXE: &str = "/proc/self/exe";
