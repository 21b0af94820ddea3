//! Stress: stressors inside the target, sized exactly, and the run around them.
//!
//! Enters: [`Options`] (from the command line or a StressChaos file). Leaves: the run's lines (plan, started,
//! samples, full, summary) and the explained OOM kills its pressure caused, through the
//! [`Reporter`]; the [`Ended`] outcome.
//!
//! The run is planned completely before anything is created ([`mod@plan`]; a run whose domain
//! is the node and that would reach its eviction threshold or a global OOM is refused there,
//! [`radius`]); then, in order:
//! the janitor starts, the sandbox cgroup (if any) is created, the probes load on a thread
//! while the workers start inside the target (`member`, [`spawn`], [`stressor`]), and the engine
//! samples the cgroup every 100 ms while reporting kills (and, with `--pressure`, steers what
//! the stressors hold by the target's PSI: [`pressure`]). Every exit path removes what the
//! run created; a SIGKILLed controller is cleaned up by the janitor and the workers'
//! `PR_SET_PDEATHSIG`.

pub mod available;
mod engine;
pub mod janitor;
mod member;
pub mod plan;
pub mod pressure;
pub mod radius;
pub mod spawn;
pub mod stressor;

use std::{borrow::Cow, time::Duration};

pub use self::{
    engine::Ended,
    member::{Idle, measure_footprint, measure_idle, split},
    plan::{Amount, App, DEFAULT_FOOTPRINT, Options, min_share, plan},
};
use self::{
    janitor::{Entry, Janitor},
    spawn::{Spec, Stdio},
};
use crate::{
    Error, Result,
    output::{
        Reporter,
        line::{Line, Outcome, Plan},
    },
    privilege,
    probe::{self, Probes},
    size::Bytes,
    spec::Kind,
    target::{
        Target,
        cgroup::{self, Cgroup, Hierarchy},
        lock::TargetLock,
    },
};

/// Fails before the run if the stressors cannot be given `adj`: lowering oom_score_adj below
/// what this process may set needs CAP_SYS_RESOURCE. Tried for real, in a throwaway child,
/// because the kernel's rule (`oom_score_adj_min`) is not visible from userspace.
pub fn check_oom_score_adj(adj: i32) -> Result<()> {
    let mut spec = Spec::new(
        std::path::Path::new(spawn::SELF_EXE),
        vec!["memstress".to_owned(), "__stressor".to_owned()],
    );
    spec.oom_score_adj = Some(adj);
    spec.stdin = Stdio::Null;
    spec.stdout = Stdio::Null;
    spec.stderr = Stdio::Null;
    match spawn::spawn(&spec) {
        Ok(child) => {
            // The worker reads EOF on stdin and exits at once; Drop reaps it.
            drop(child);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let own = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap_or_default();
            let has = privilege::has(privilege::effective(), privilege::CAP_SYS_RESOURCE);
            Err(Error::io(
                format!(
                    "--oom-score-adj {adj} is not allowed: it is below this process's \
                     oom_score_adj ({}) and lowering it needs CAP_SYS_RESOURCE{}",
                    own.trim(),
                    if has {
                        ""
                    } else {
                        ", which memstress does not have"
                    }
                ),
                e,
            ))
        }
        Err(e) => Err(Error::io("cannot check --oom-score-adj", e)),
    }
}

/// `--thp` asks; the kernel's THP settings decide. Says so when they refuse.
fn warn_thp(opts: &Options) {
    if !opts.thp {
        return;
    }
    let (file, what) = match opts.kind {
        Kind::Shmem => ("shmem_enabled", "shared memory"),
        _ => ("enabled", "anonymous memory"),
    };
    let path = format!("/sys/kernel/mm/transparent_hugepage/{file}");
    if let Some(mode) = std::fs::read_to_string(&path)
        .ok()
        .as_deref()
        .and_then(thp_mode)
        && matches!(mode, "never" | "deny")
    {
        tracing::warn!(
            "--thp: {path} is `{mode}`: the kernel gives {what} no huge pages, whatever \
             memstress asks"
        );
    }
}

/// The selected mode of a THP sysfs file: `always [madvise] never` → `madvise`.
fn thp_mode(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
}

/// In `--self` mode the controller shares the target: it tries to keep the OOM killer off
/// itself, and says what it could not do.
/// Sets the controller's own oom_score_adj to -1000; returns the value it had (`None` when it
/// could not be changed).
fn protect_controller() -> Option<i32> {
    let previous = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|a| a.trim().parse().ok())?;
    match std::fs::write("/proc/self/oom_score_adj", "-1000") {
        Ok(()) => {
            tracing::info!("controller protected from the OOM killer (oom_score_adj -1000)");
            Some(previous)
        }
        Err(_) => {
            let rss = std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .map(|v| v.trim().to_owned())
                })
                .unwrap_or_default();
            tracing::warn!(
                "cannot protect the controller (pid {}, {rss}) from the OOM killer in its own \
                 cgroup (lowering oom_score_adj needs CAP_SYS_RESOURCE): it may be chosen \
                 instead of a stressor",
                std::process::id()
            );
            None
        }
    }
}

/// How much nicer than the controller the probe-loading thread runs.
const LOADER_NICE: i32 = 5;

/// Makes the calling thread `by` nicer (negative: less nice), within what this process may
/// set; returns the change made, to undo it. Linux keeps a nice value per thread.
fn nice_this_thread(by: i32) -> i32 {
    // SAFETY: gettid and getpriority/setpriority on this thread have no preconditions;
    // getpriority can return -1 legitimately, so errno is cleared first.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        if now == -1 && *libc::__errno_location() != 0 {
            return 0;
        }
        let want = (now + by).clamp(-20, 19);
        if libc::setpriority(libc::PRIO_PROCESS, tid, want) == 0 {
            want - now
        } else {
            0
        }
    }
}

/// Runs the whole thing. Returns the outcome; every path cleans up.
/// Runs the whole thing. Returns how it ended; every path cleans up.
pub async fn run(opts: Options, reporter: &Reporter) -> Result<Ended> {
    let hierarchy = Hierarchy::locate(opts.cgroup_root.as_deref())?;
    let mut opts = opts;
    if opts.footprint.is_none() {
        // Measuring starts a worker: a run refused for its blast radius starts nothing.
        plan::check_node_bounds(&opts, &hierarchy)?;
        opts.footprint = member::measure_footprint()
            .map_err(|e| tracing::debug!("cannot measure a stressor's footprint: {e}"))
            .ok();
    }
    let (mut plan, target) = plan(&opts, &hierarchy)?;
    warn_thp(&opts);
    warn_tmpfs(&opts);
    reporter.emit(&Line::Plan(Cow::Borrowed(&plan)));
    if opts.dry_run {
        return Ok(Ended {
            outcome: Outcome::Completed,
            signal: None,
            done: true,
            summary: None,
            plan: Box::new(plan),
            first_kill: None,
            pids: Vec::new(),
        });
    }
    let checked = check(&opts, &target)?;
    // One run per target: refuse before anything is created (exit code 5).
    let mut lock = match target.create {
        None => Some(crate::target::lock::lock(
            &target.cgroup.dir,
            &target.cgroup.path,
        )?),
        Some(_) => None,
    };
    let in_own = protect_in_own_cgroup(&mut opts, &mut plan, &hierarchy, &target);
    let mut janitor = None;
    let mut created = None;
    let mut throttled = None;
    let result = async {
        if let Some(limit) = target.create {
            let (j, cgroup, l) = create_sandbox(&hierarchy, &target, limit)?;
            janitor = Some(j);
            created = Some(cgroup);
            lock = Some(l);
        }
        if let Some(throttle) = &mut plan.throttle {
            throttled = Some(throttle_target(
                &mut janitor,
                lock.as_ref(),
                &target.cgroup,
                throttle,
            )?);
        }
        let context = engine_context(&opts, &hierarchy, &target);
        // The probes load on a thread of their own while the engine starts the stressors,
        // yielding the CPU to them: until the probes are attached the stressors stay below
        // the limit (see engine::pre_probe_cap), so loading a little later costs nothing,
        // while a stressor that waits for the CPU is pressure that arrives late.
        let mut probe_opts = opts.probe.clone();
        // The throttle programs tax every return to user mode on the node (on kernels
        // before the handler's inline wrapper): loaded only where throttling can happen,
        // with --throttle or a memory.high already set on the target or above it. Patching
        // a function every CPU runs all the time is also what hung the lab's qemu guests
        // (TCG, 6.1: a CPU stuck at the patched call at mem_cgroup_handle_over_high+0 as
        // memstress attached) when every run and watch attached these.
        probe_opts.throttle &= plan.throttle.is_some() || target.cgroup.high_applies();
        let loading = tokio::task::spawn_blocking(move || {
            let niced = nice_this_thread(LOADER_NICE);
            let probes = Probes::load_checked(&probe_opts, checked);
            nice_this_thread(-niced);
            probes
        });
        engine::engine(
            &opts,
            &plan,
            &target.cgroup,
            !in_own,
            loading,
            reporter,
            context,
        )
        .await
    }
    .await;
    if let Some((original, set)) = throttled {
        restore_throttle(&target.cgroup, original, set);
    }
    drop(lock);
    if let Some(cgroup) = created
        && let Err(e) = cgroup.remove(Duration::from_secs(10))
    {
        tracing::error!("{}", crate::error_chain(&e));
    }
    if let Some(j) = janitor {
        j.dismiss();
    }
    result
}

/// `--throttle`: sets the target's `memory.high`, after the cleanup guard has recorded the
/// original (read again now, under the target's lock); returns (original, set). The guard
/// holds the target's lock too, so that no other run can take the target before the original
/// is back, even after a SIGKILL of this process.
fn throttle_target(
    janitor: &mut Option<Janitor>,
    lock: Option<&TargetLock>,
    cgroup: &Cgroup,
    throttle: &mut crate::output::line::ThrottlePlan,
) -> Result<(Option<u64>, u64)> {
    let original = cgroup.high()?;
    if original != throttle.original_bytes {
        tracing::warn!(
            "the memory.high of {} changed since the plan (now {}): that is the original \
             restored after the run",
            cgroup.path,
            original.map_or_else(|| "max".to_owned(), |b| Bytes(b).to_string())
        );
        throttle.original_bytes = original;
    }
    let janitor = match janitor {
        Some(j) => j,
        None => {
            let started = match lock {
                Some(lock) => Janitor::start_holding(lock.fd()),
                None => Janitor::start(),
            };
            janitor.insert(started.map_err(|e| Error::io("cannot start the cleanup guard", e))?)
        }
    };
    let set = throttle.high_bytes;
    janitor
        .record(&Entry::High {
            original,
            set,
            dir: cgroup.dir.clone(),
        })
        .map_err(|e| Error::io("cannot brief the cleanup guard", e))?;
    cgroup.set_high(Some(set))?;
    tracing::info!(
        "memory.high of {} set to {} (was {})",
        cgroup.path,
        Bytes(set),
        original.map_or_else(|| "max".to_owned(), |b| Bytes(b).to_string())
    );
    Ok((original, set))
}

/// Writes the original `memory.high` back at the end of a throttled run (unless someone else
/// changed it meanwhile: then theirs stays, and it is said).
fn restore_throttle(cgroup: &Cgroup, original: Option<u64>, set: u64) {
    match janitor::restore_high(&cgroup.dir, original, set) {
        Ok(janitor::Restored::Restored) => tracing::info!(
            "memory.high of {} restored to {}",
            cgroup.path,
            original.map_or_else(|| "max".to_owned(), |b| Bytes(b).to_string())
        ),
        Ok(_) => {}
        Err(e) => tracing::error!("{e}"),
    }
}

/// `--kind file` on tmpfs holds shmem, not page cache: says so.
fn warn_tmpfs(opts: &Options) {
    if opts.kind != Kind::File {
        return;
    }
    let dir = opts
        .file_dir
        .clone()
        .unwrap_or_else(stressor::default_file_dir);
    if stressor::is_tmpfs(&dir) {
        tracing::warn!(
            "{} is on tmpfs: its pages are shmem (in the working set, not reclaimable page \
             cache); give --file-dir on a disk for page cache",
            dir.display()
        );
    }
}

/// Everything that can fail for want of privileges, kernel support or permissions, checked
/// before anything is created.
fn check(opts: &Options, target: &Target) -> Result<probe::Checked> {
    // A tree under --cgroup-root may be a copy: processes could not join it.
    if target.create.is_none() {
        target.cgroup.check_cgroupfs()?;
    } else if let Some(parent) = target.cgroup.parent() {
        parent.check_cgroupfs()?;
    }
    let checked = probe::check_access(&opts.probe)?;
    if let Some(adj) = opts.oom_score_adj {
        check_oom_score_adj(adj)?;
    }
    Ok(checked)
}

/// When the controller runs in the target (`--self`) or its domain: while the probes load,
/// the controller itself grows by tens of MiB (the kernel's BTF), a charge no cap on the
/// stressors can foresee, so they hold nothing until the probes are attached; in the target
/// itself, the controller protects itself, and its children get the oom_score_adj it had
/// (they would inherit its -1000). Returns whether the target is the controller's cgroup.
fn protect_in_own_cgroup(
    opts: &mut Options,
    plan: &mut Plan,
    hierarchy: &Hierarchy,
    target: &Target,
) -> bool {
    let own = cgroup::own_cgroup(hierarchy).ok();
    let in_own = own.as_ref().is_some_and(|o| *o == target.cgroup);
    if let (Some(own), Ok(Some((_, domain)))) = (&own, target.effective_limit())
        && own.is_within(&domain)
    {
        plan.headroom_bytes = Some(0);
    }
    if in_own && let Some(previous) = protect_controller() {
        opts.oom_score_adj.get_or_insert(previous);
        for app in &mut opts.apps {
            app.oom_score_adj.get_or_insert(previous);
        }
    }
    in_own
}

/// Creates the `--new` sandbox with its limit, after the janitor that removes it whatever
/// happens to the controller; returns the janitor, the cgroup and its lock.
fn create_sandbox(
    hierarchy: &Hierarchy,
    target: &Target,
    limit: u64,
) -> Result<(Janitor, Cgroup, TargetLock)> {
    let mut janitor =
        Janitor::start().map_err(|e| Error::io("cannot start the cleanup guard", e))?;
    janitor
        .record(&Entry::Cgroup(hierarchy.version, target.cgroup.dir.clone()))
        .map_err(|e| Error::io("cannot brief the cleanup guard", e))?;
    let parent = target.cgroup.parent().ok_or_else(|| {
        Error::Usage(format!(
            "{}: a new cgroup needs a parent",
            target.cgroup.path
        ))
    })?;
    let cgroup = parent.create_child(target.cgroup.name())?;
    let lock = crate::target::lock::lock(&cgroup.dir, &cgroup.path)?;
    cgroup.set_limit(limit)?;
    Ok((janitor, cgroup, lock))
}

/// What the engine needs besides the plan: the real hierarchy (kernel-reported paths are on
/// it, whatever `--cgroup-root` says) and how to follow a pod/container target.
fn engine_context(opts: &Options, hierarchy: &Hierarchy, target: &Target) -> engine::Context {
    let follow = match (&target.kube, opts.follow) {
        (Some(identity), true) => Some(engine::Follow {
            hierarchy: hierarchy.clone(),
            state: opts.runtime_state.clone(),
            identity: identity.clone(),
        }),
        _ => None,
    };
    let real = if opts.cgroup_root.is_some() {
        Hierarchy::discover().ok()
    } else {
        Some(hierarchy.clone())
    };
    engine::Context {
        real,
        follow,
        container: container_target(opts, target),
    }
}

/// A container target (`--container`, `--pod` with `--container`, or `--pid` of a process in
/// a PID namespace of its own): its end is its init's.
fn container_target(opts: &Options, target: &Target) -> Option<engine::ContainerTarget> {
    let id = match (&target.container, &opts.target) {
        (Some(c), _) => Some(c.id.clone()),
        (None, crate::target::Spec::Pid(pid)) if in_nested_pid_ns(*pid) => None,
        _ => return None,
    };
    Some(engine::ContainerTarget {
        id,
        state: opts.runtime_state.clone(),
    })
}

/// Whether process `pid` is in a PID namespace below memstress's (`NSpid:` lists more than
/// one pid).
fn in_nested_pid_ns(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .map(|f| f.split_whitespace().count() > 1)
        })
        .unwrap_or(false)
}
