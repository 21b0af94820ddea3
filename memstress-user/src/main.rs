//! The `memstress` binary: parses the command line and hands over to the library.

use std::{ffi::OsString, fmt, io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use memstress::{
    cli::{self, Cli, Command},
    exit, stress::janitor, probe,
    output::Reporter,
    stress::{self, App},
    size::SizeSpec,
    input::stresschaos,
    spec::Fill,
    stress::stressor,
    target, watch,
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

fn main() -> ExitCode {
    // The hidden worker runs before clap: its memory is charged to the target, so it stays
    // as small as it can be.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "__stressor")
    {
        return code(stressor::worker_entry(std::env::args().skip(2)));
    }
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
            eprintln!(
                "{}",
                memstress::cli::one_line_usage_error(&e.render().to_string())
            );
            return code(exit::USAGE);
        }
    };
    // The hidden worker subcommands run without logging or an async runtime: they must stay
    // small (their memory is charged to the target).
    match cli.command {
        Command::Stressor => unreachable!("handled before clap"),
        Command::Janitor => return code(janitor::janitor_main()),
        // Neither needs privileges, logging or the event loop.
        Command::Completions(args) => {
            cli::completions(args.shell, &mut std::io::stdout());
            return code(exit::SUCCESS);
        }
        Command::Man(args) => return code(man(args.dir.as_deref())),
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
    let mut probe_opts = probe::Options {
        btf: cli.btf.clone(),
        ring_bytes: cli.ring_buffer,
        ..probe::Options::default()
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Watch(args) => {
                probe_opts.command = "watch";
                watch::watch(
                    watch::Options {
                        cgroup_root: cli.cgroup_root,
                        cgroup: args.cgroup,
                        duration: args.duration,
                        explain_probes: args.explain_probes,
                        metrics: args.metrics,
                        probe: probe_opts,
                    },
                    &reporter,
                )
                .await
            }
            Command::Run(args) => {
                probe_opts.command = "run";
                run_command(args, cli.cgroup_root, probe_opts, &reporter).await
            }
            Command::Demo(args) => {
                probe_opts.command = "demo";
                demo(args, probe_opts, &reporter).await
            }
            Command::Stressor | Command::Janitor | Command::Completions(_) | Command::Man(_) => {
                unreachable!("handled above")
            }
        }
    });
    match result {
        Ok(c) => code(c),
        Err(e) => {
            // One line, the whole chain of causes, no backtrace.
            tracing::error!("{e:#}");
            let busy = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<memstress::target::lock::LockError>(),
                    Some(memstress::target::lock::LockError::Busy(_))
                )
            });
            let usage = e
                .chain()
                .any(|c| c.downcast_ref::<memstress::stress::UsageError>().is_some());
            code(if busy {
                exit::BUSY
            } else if usage {
                exit::USAGE
            } else {
                exit::FAILURE
            })
        }
    }
}

/// `memstress run`: the flags (and a StressChaos file) turned into run options.
async fn run_command(
    args: memstress::cli::RunArgs,
    cgroup_root: Option<std::path::PathBuf>,
    probe: probe::Options,
    reporter: &Reporter,
) -> anyhow::Result<i32> {
    use clap::CommandFactory as _;
    let usage = |msg: &str| -> ! {
        let mut cli = Cli::command();
        cli.build();
        let mut run = cli
            .find_subcommand_mut("run")
            .expect("the run subcommand")
            .clone();
        let e = run.error(clap::error::ErrorKind::MissingRequiredArgument, msg);
        eprintln!(
            "{}",
            memstress::cli::one_line_usage_error(&e.render().to_string())
        );
        std::process::exit(exit::USAGE)
    };
    if let Err(msg) = args.check() {
        usage(&msg)
    }
    let stresschaos = args
        .from_stresschaos
        .as_deref()
        .map(stresschaos::load)
        .transpose()?;
    let target = if let Some(name) = args.new {
        target::Spec::New {
            name,
            limit: args.limit.unwrap_or_default(),
        }
    } else if let Some(path) = args.cgroup {
        target::Spec::Cgroup(path)
    } else if let Some(pid) = args.pid {
        target::Spec::Pid(pid)
    } else if args.self_ {
        target::Spec::SelfCgroup
    } else if args.pod.is_some() || args.container.is_some() {
        target::Spec::Kube {
            pod: args.pod,
            container: args.container,
        }
    } else if stresschaos.is_some() {
        target::Spec::FromSelector
    } else {
        usage(
            "a target is required: one of --new NAME, --cgroup PATH, --pid PID, --self, --pod UID, --container ID (or --from-stresschaos FILE with a selector.pods)",
        )
    };
    let given = match (&args.size, &args.fill_to) {
        (_, Some(goal)) => Some(stress::Amount::FillTo(goal.spec)),
        (Some(size), None) => Some(stress::Amount::Size(size.spec)),
        (None, None) => None,
    };
    let amount_given = args
        .fill_to
        .as_ref()
        .or(args.size.as_ref())
        .map(|a| a.given.clone());
    let mut notes = Vec::new();
    let mut workers = args.workers;
    let mut ramp = args.ramp;
    let mut hold = args.hold;
    let mut oom_score_adj = args.oom_score_adj;
    let amount = match &stresschaos {
        Some(sc) => {
            let settings = sc.settings(
                &stresschaos::Overrides {
                    amount: given.map(|a| match a {
                        stress::Amount::Size(s) => format!("--size {s}"),
                        stress::Amount::FillTo(s) => format!("--fill-to {s}"),
                    }),
                    workers: args.workers,
                    ramp: args.ramp,
                    hold: args.hold,
                    oom_score_adj: args.oom_score_adj,
                },
                args.on_oom,
            );
            workers = Some(settings.workers);
            ramp = settings.ramp;
            hold = settings.hold;
            oom_score_adj = settings.oom_score_adj;
            notes = settings.notes;
            match (given, settings.size) {
                (Some(a), _) => a,
                (None, Some(size)) => stress::Amount::Size(size),
                (None, None) => unreachable!("the file's size is used unless one is given"),
            }
        }
        None => given.unwrap_or_else(|| {
            usage(
                "an amount is required: --size SIZE or --fill-to SIZE (or --from-stresschaos FILE)",
            )
        }),
    };
    let mut opts = stress::Options::new(target, amount, probe);
    opts.allow_root = args.allow_root_cgroup;
    opts.user = args.user;
    opts.of_node = args.of_node;
    opts.workers = workers.unwrap_or(1);
    opts.ramp = ramp;
    opts.hold = hold;
    opts.on_oom = args.on_oom;
    opts.oom_score_adj = oom_score_adj;
    opts.kind = args.kind;
    opts.pattern = args.pattern;
    opts.rewrite_every = args.rewrite_every.unwrap_or(opts.rewrite_every);
    opts.amount_given = amount_given;
    opts.file_dir = args.file_dir;
    opts.fill = if args.populate {
        Fill::Populate
    } else {
        Fill::Touch
    };
    opts.thp = args.thp;
    opts.mlock = args.mlock;
    opts.dry_run = args.dry_run;
    opts.cgroup_root = cgroup_root;
    opts.runtime_state = memstress::target::kube::RuntimeState::new(args.runtime_root);
    opts.follow = args.follow;
    opts.stresschaos = stresschaos;
    opts.notes = notes;
    Ok(stress::run(opts, reporter).await?.exit_code())
}

async fn demo(
    args: memstress::cli::DemoArgs,
    probe: probe::Options,
    reporter: &Reporter,
) -> anyhow::Result<i32> {
    let limit = args.limit;
    reporter.text(&format!(
        "memstress demo: a sandbox cgroup limited to {}, an app holding {} in it, and 2 stressors \
         asking for {} in total; the kernel must OOM-kill something, and memstress reports what.",
        memstress::size::Bytes(limit),
        memstress::size::Bytes(limit / 4),
        memstress::size::Bytes(limit * 3 / 2),
    ));
    let target = target::Spec::New {
        name: format!("memstress-demo-{}", std::process::id()),
        limit,
    };
    let mut opts = stress::Options::new(
        target,
        stress::Amount::Size(SizeSpec::Bytes(limit * 3 / 2)),
        probe,
    );
    opts.workers = 2;
    opts.apps = vec![App {
        name: "demo-app".to_owned(),
        bytes: limit / 4,
        oom_score_adj: None,
    }];
    opts.stop_after_kills = Some(1);
    opts.deadline = Some(args.timeout);
    let ended = stress::run(opts, reporter).await?;
    match ended.outcome {
        stress::Outcome::Completed => {
            reporter.text("demo done: the kill above came from the kernel's mark_victim tracepoint; the sandbox is gone.");
            Ok(exit::SUCCESS)
        }
        stress::Outcome::Interrupted => Ok(ended.exit_code()),
        outcome => anyhow::bail!("the demo ended without an OOM kill ({outcome})"),
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
