//! The `memstress` binary: parses the command line and hands over to the library.

use std::{ffi::OsString, fmt, io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use memstress::{
    Error,
    cli::{self, Cli, Command},
    error_chain, exit, input,
    output::{Reporter, line},
    probe,
    size::Bytes,
    stress::{self, janitor, stressor},
    watch,
};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// `memstress: warning: …` lines on stderr; the level in colour only when [`color_wanted`].
struct Plain;

/// Colour on stderr: only on a terminal, and never when `NO_COLOR` is set to anything but
/// the empty string (https://no-color.org).
fn color_wanted(stderr_is_terminal: bool, no_color: Option<OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Bold red / bold yellow, as cargo and rustc show them.
        let (level, style) = match *event.metadata().level() {
            Level::ERROR => ("error: ", "\x1b[1;31m"),
            Level::WARN => ("warning: ", "\x1b[1;33m"),
            Level::INFO => ("", ""),
            Level::DEBUG => ("debug: ", "\x1b[2m"),
            Level::TRACE => ("trace: ", "\x1b[2m"),
        };
        if writer.has_ansi_escapes() && !style.is_empty() {
            write!(writer, "memstress: {style}{level}\x1b[0m")?;
        } else {
            write!(writer, "memstress: {level}")?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn,memstress=info",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter =
        EnvFilter::try_from_env("MEMSTRESS_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let color = color_wanted(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR"),
    );
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(color)
        .with_writer(std::io::stderr)
        .event_format(Plain)
        .init();
}

/// Allocations of 256 KiB or more get pages of their own, returned when freed. glibc's
/// default threshold rises to the size of each large block freed (the BTF parse's buffers are
/// megabytes), after which such blocks come from the heap and are not given back: loading the
/// probes then peaked at 30.4-31.0 MiB of RSS, against 25.4-25.5 MiB with the threshold fixed
/// (`memstress watch`, this machine). Fixing it turns the adjustment off.
fn fixed_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

fn main() -> ExitCode {
    // The hidden worker runs before clap: its memory is charged to the target, so it stays
    // as small as it can be.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "__stressor")
    {
        // A worker may run in a container's PID namespace, where the container's processes
        // see it: non-dumpable for good, so that none of them (even one of the same user) can
        // ptrace it or open its /proc/PID/root, the node's root file system. Started there,
        // it was exec'd non-dumpable (real and effective group ids apart): it stays so before
        // its group ids are made whole again.
        // SAFETY: prctl(PR_SET_DUMPABLE) has no memory arguments.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        if let Err(e) = stressor::settle_gid() {
            eprintln!("memstress __stressor: cannot set its group ids: {e}");
            return code(exit::FAILURE);
        }
        return code(stressor::worker_entry(std::env::args().skip(2)));
    }
    // The controller only: a stressor's footprint is measured from an idle one and must
    // stay what glibc's defaults make it.
    fixed_mmap_threshold();
    if let Err(e) = memstress::privilege::refuse_setuid() {
        eprintln!("memstress: {e}");
        return code(exit::FAILURE);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            eprintln!("{}", cli::one_line_usage_error(&e.render().to_string()));
            return code(exit::USAGE);
        }
    };
    // The hidden worker subcommands run without logging or an async runtime: they must stay
    // small (their memory is charged to the target).
    match cli.command {
        Command::Stressor => unreachable!("handled before clap"),
        Command::Janitor => return code(janitor::janitor_main()),
        // None of these needs privileges, logging or the event loop.
        Command::Completions(args) => {
            cli::completions(args.shell, &mut std::io::stdout());
            return code(exit::SUCCESS);
        }
        Command::Man(args) => return code(man(args.dir.as_deref())),
        Command::Schema(args) => return code(schema(args.check.as_deref())),
        _ => {}
    }
    init_logging(cli.verbose, cli.quiet);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the event loop: {e}");
            return code(exit::FAILURE);
        }
    };
    let reporter = Reporter::new(cli.output);
    match runtime.block_on(dispatch(cli, &reporter)) {
        Ok(c) => code(c),
        Err(Error::Usage(message)) => {
            eprintln!("memstress: error: {message} (see --help)");
            code(exit::USAGE)
        }
        Err(e) => {
            // One line, the whole chain of causes, no backtrace.
            tracing::error!("{}", error_chain(&e));
            code(e.exit_code())
        }
    }
}

/// Runs the command; returns its exit code.
async fn dispatch(cli: Cli, reporter: &Reporter) -> Result<i32, Error> {
    let probe = |command| probe::Options {
        btf: cli.btf.clone(),
        ring_bytes: cli.ring_buffer,
        command,
        throttle: command == "run",
    };
    match cli.command {
        Command::Watch(args) => {
            let opts = watch::Options {
                cgroup_root: cli.cgroup_root.clone(),
                cgroup: args.cgroup,
                duration: args.duration,
                interval: args.interval,
                explain_probes: args.explain_probes,
                metrics: args.metrics,
                probe: probe("watch"),
                runtime_state: args.runtime.state(),
                pod: args.pod,
                container: args.container,
                namespace: args.namespace,
            };
            watch::watch(opts, reporter).await
        }
        Command::Run(args) => {
            let (opts, stresschaos) =
                input::run_options(*args, cli.cgroup_root.clone(), probe("run"))?;
            let ended = stress::run(opts, reporter).await?;
            if let (Some(sc), Some(summary)) = (&stresschaos, &ended.summary)
                && let Some(sentence) = sc.closing(&ended.plan, summary)
            {
                reporter.text(&sentence);
            }
            Ok(ended.exit_code())
        }
        Command::Demo(args) => demo(args, probe("demo"), reporter).await,
        Command::Replay(args) => replay(&args, probe("replay"), reporter).await,
        Command::Stressor
        | Command::Janitor
        | Command::Completions(_)
        | Command::Man(_)
        | Command::Schema(_) => unreachable!("handled before the event loop"),
    }
}

async fn demo(
    args: cli::DemoArgs,
    probe: probe::Options,
    reporter: &Reporter,
) -> Result<i32, Error> {
    let limit = args.limit;
    reporter.text(&format!(
        "memstress demo: a sandbox cgroup limited to {}, an app holding {} in it, and 2 stressors \
         asking for {} in total; the kernel must OOM-kill something, and memstress reports what.",
        Bytes(limit),
        Bytes(limit / 4),
        Bytes(limit * 3 / 2),
    ));
    let ended = stress::run(input::demo_options(limit, args.timeout, probe), reporter).await?;
    match ended.outcome {
        line::Outcome::Completed => {
            reporter.text(
                "demo done: the kill above came from the kernel's mark_victim tracepoint; the \
                 sandbox is gone.",
            );
            Ok(exit::SUCCESS)
        }
        line::Outcome::Interrupted => Ok(ended.exit_code()),
        outcome => {
            tracing::error!("the demo ended without an OOM kill ({outcome})");
            Ok(exit::FAILURE)
        }
    }
}

/// `memstress replay`: every OOM report of the log; with `--dry-run` its plan, else its
/// reproduction and `replay_result`.
async fn replay(
    args: &cli::ReplayArgs,
    probe: probe::Options,
    reporter: &Reporter,
) -> Result<i32, Error> {
    use std::{borrow::Cow, io::Read as _};

    use memstress::replay::reproduce;
    let mut bytes = Vec::new();
    let (read, name) = if args.file.as_os_str() == "-" {
        (
            std::io::stdin().read_to_end(&mut bytes),
            "standard input".to_owned(),
        )
    } else {
        (
            std::fs::File::open(&args.file).and_then(|mut f| f.read_to_end(&mut bytes)),
            args.file.display().to_string(),
        )
    };
    read.map_err(|e| Error::io(format!("cannot read {name}"), e))?;
    let text = String::from_utf8_lossy(&bytes);
    let plans = memstress::replay::plans(&text).map_err(|e| Error::Input(Box::new(e)))?;
    if plans.is_empty() {
        let bare = text
            .lines()
            .filter(|l| l.contains("Killed process "))
            .count();
        return Err(Error::Refused(if bare > 0 {
            format!(
                "no OOM report in {name}: {bare} `Killed process` line(s) without the report \
                 before them (the kernel prints at most 10 OOM reports per 5 s and then only \
                 that line, saying `oom_kill_process: N callbacks suppressed`)"
            )
        } else {
            format!("no OOM report in {name} (no `invoked oom-killer:` line)")
        }));
    }
    let count = plans.len();
    let selected: Vec<(usize, memstress::replay::ReplayPlan)> = match args.report {
        Some(n) if n > count => {
            return Err(Error::Usage(format!(
                "--report {n}: {name} holds {count} OOM report(s)"
            )));
        }
        Some(n) => vec![(n, plans.into_iter().nth(n - 1).expect("checked above"))],
        None => plans
            .into_iter()
            .enumerate()
            .map(|(i, p)| (i + 1, p))
            .collect(),
    };
    let available = memstress::target::node_available().unwrap_or(0);
    if args.dry_run {
        for (_, mut plan) in selected {
            // The scale a reproduction on this node would use.
            plan.scale = args.scale.unwrap_or_else(|| {
                reproduce::limit_of(&plan)
                    .map_or(1.0, |limit| reproduce::default_scale(limit, available))
            });
            reporter.emit(&line::Line::ReplayPlan(Cow::Owned(plan)));
        }
        return Ok(exit::SUCCESS);
    }
    let idle = stress::measure_idle()
        .map_err(|e| tracing::debug!("cannot measure an idle worker: {e}"))
        .ok();
    let means = reproduce::Means {
        page: memstress::size::page_size(),
        available,
        can_lower_adj: stress::check_oom_score_adj(-1000).is_ok(),
        footprint: idle.map_or(stress::DEFAULT_FOOTPRINT, |i| i.charge),
        file_rss: idle.map_or(0, |i| i.file_rss),
    };
    let asked = reproduce::Asked {
        scale: args.scale,
        tasks: args.tasks,
        timeout: args.timeout,
    };
    // Every report is checked before the first runs.
    let setups = selected
        .iter()
        .map(|(n, plan)| reproduce::setup(*n, plan, &asked, means, probe.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Refused(e.to_string()))?;
    let mut code = exit::SUCCESS;
    for ((n, plan), setup) in selected.iter().zip(setups) {
        reporter.text(&format!(
            "memstress replay: report {n} (line {}): {} task(s) in a {} sandbox (scale {}), \
             then an allocation until the OOM",
            plan.report.line,
            setup.tasks.len(),
            Bytes(setup.limit_bytes),
            setup.scale
        ));
        let ended = stress::run(setup.opts.clone(), reporter).await?;
        // Interrupted before the kernel chose: there is no verdict (the summary says so).
        if ended.signal.is_some() && ended.first_kill.is_none() {
            return Ok(ended.exit_code());
        }
        let result = reproduce::result(
            *n,
            plan.report.line,
            &setup,
            ended.first_kill.as_ref(),
            &ended.pids,
        );
        reporter.emit(&line::Line::ReplayResult(Cow::Owned(result.clone())));
        if ended.signal.is_some() {
            return Ok(ended.exit_code());
        }
        if result.chosen.is_none() {
            code = exit::FAILURE;
        }
    }
    Ok(code)
}

/// `memstress schema`: the JSON Schema of every `-o json` line, generated from their types;
/// with `--check FILE`, whether FILE is that schema (exit code 1, and the first difference,
/// when it is not).
fn schema(check: Option<&std::path::Path>) -> i32 {
    let generated = line::schema_text();
    let Some(file) = check else {
        print!("{generated}");
        return exit::SUCCESS;
    };
    match std::fs::read_to_string(file) {
        Ok(text) if text == generated => exit::SUCCESS,
        Ok(text) => {
            let (n, (want, got)) = generated
                .lines()
                .chain(std::iter::repeat(""))
                .zip(text.lines().chain(std::iter::repeat("")))
                .enumerate()
                .find(|(_, (a, b))| a != b)
                .unwrap_or((0, ("", "")));
            eprintln!(
                "memstress: error: {} is not the schema memstress's line types generate \
                 (line {}: `{}`, generated `{}`); run `cargo xtask schema` to regenerate it",
                file.display(),
                n + 1,
                got.trim(),
                want.trim()
            );
            exit::FAILURE
        }
        Err(e) => {
            eprintln!("memstress: error: cannot read {}: {e}", file.display());
            exit::FAILURE
        }
    }
}

/// `memstress man`: memstress.1 on stdout, or every page into `dir`.
fn man(dir: Option<&std::path::Path>) -> i32 {
    use std::io::Write as _;
    let pages = match cli::man_pages() {
        Ok(pages) => pages,
        Err(e) => {
            eprintln!("memstress: error: cannot render the man pages: {e}");
            return exit::FAILURE;
        }
    };
    let Some(dir) = dir else {
        let _ = std::io::stdout().write_all(&pages[0].1);
        return exit::SUCCESS;
    };
    for (name, roff) in &pages {
        let path = dir.join(name);
        if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, roff)) {
            eprintln!("memstress: error: cannot write {}: {e}", path.display());
            return exit::FAILURE;
        }
    }
    exit::SUCCESS
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::color_wanted;

    #[test]
    fn no_color_and_pipes_turn_colour_off() {
        assert!(color_wanted(true, None));
        assert!(
            color_wanted(true, Some("".into())),
            "an empty NO_COLOR is unset"
        );
        assert!(!color_wanted(true, Some("1".into())));
        assert!(!color_wanted(true, Some("0".into())), "any value counts");
        assert!(!color_wanted(false, None));
    }
}
