//! Input adapters: what a user brings, lowered into the options the stages run on.
//!
//! Enters: the command line ([`crate::cli`]) and the files it names (a Chaos Mesh
//! StressChaos). Leaves: one [`stress::Options`], with the notes that say how the run
//! differs from what its source would do. Nothing past planning knows where a value came
//! from: a StressChaos's selector is resolved to a pod or container here, and its closing
//! sentence ([`stresschaos::StressChaos::closing`]) is written from the run's summary.

pub mod stresschaos;

use std::path::PathBuf;

use self::stresschaos::{Overrides, StressChaos};
use crate::{
    Error, Result,
    cli::{FillGoal, RunArgs},
    probe,
    size::SizeSpec,
    spec::Fill,
    stress::{self, Amount, App},
    target::{self, cgroup::Hierarchy, kube::RuntimeState},
};

/// `memstress run`'s flags (and the StressChaos file they name) as run options; the
/// StressChaos, when there is one, for its closing sentence.
pub fn run_options(
    args: RunArgs,
    cgroup_root: Option<PathBuf>,
    probe: probe::Options,
) -> Result<(stress::Options, Option<StressChaos>)> {
    args.check().map_err(Error::Usage)?;
    let stresschaos = args
        .from_stresschaos
        .as_deref()
        .map(stresschaos::load)
        .transpose()?;
    let target = target_spec(&args, stresschaos.is_some())?;
    let given = match (&args.size, &args.fill_to, args.pressure) {
        (_, _, Some(goal)) => Some(Amount::Pressure(goal)),
        (_, Some(goal), None) if goal.goal == FillGoal::Available => {
            Some(Amount::Available(goal.size.spec))
        }
        (_, Some(goal), None) => Some(Amount::FillTo(goal.size.spec)),
        (Some(size), None, None) => Some(Amount::Size(size.spec)),
        (None, None, None) => None,
    };
    let amount_given = args
        .fill_to
        .as_ref()
        .map(|f| &f.size)
        .or(args.size.as_ref())
        .map(|a| a.given.clone())
        .or_else(|| args.pressure.map(|g| g.to_string()));
    let runtime_state = args.runtime.state();
    let mut opts = match (&stresschaos, given) {
        (Some(sc), given) => {
            let hierarchy = Hierarchy::locate(cgroup_root.as_deref())?;
            from_stresschaos(sc, &args, given, target, &hierarchy, &runtime_state, probe)?
        }
        (None, Some(amount)) => {
            let mut opts = stress::Options::new(target, amount, probe);
            opts.workers = args.workers.unwrap_or(1);
            opts.ramp = args.ramp;
            opts.hold = args.hold;
            opts.oom_score_adj = args.oom_score_adj;
            opts
        }
        (None, None) if args.throttle.is_some() => {
            let mut opts = stress::Options::new(target, Amount::Nothing, probe);
            opts.hold = args.hold;
            if args.workers.is_some() || args.ramp.is_some() || args.oom_score_adj.is_some() {
                return Err(Error::Usage(
                    "--throttle alone starts no stressors: --workers, --ramp and \
                     --oom-score-adj need --size or --fill-to"
                        .to_owned(),
                ));
            }
            opts
        }
        (None, None) => {
            return Err(Error::Usage(
                "an amount is required: --size SIZE, --fill-to SIZE or --pressure some=PCT (or \
                 --from-stresschaos FILE), or --throttle SIZE alone"
                    .to_owned(),
            ));
        }
    };
    opts.throttle = args.throttle.map(|t| (t.spec, t.given));
    if given.is_some() {
        opts.amount_given = amount_given;
    }
    opts.allow_root = args.allow_root_cgroup;
    opts.allow_node_oom = args.allow_node_oom;
    if let Some(threshold) = args.eviction_threshold {
        opts.eviction_threshold = threshold;
    }
    opts.user = args.user;
    opts.of_node = args.of_node;
    opts.on_oom = args.on_oom;
    opts.kind = args.kind;
    opts.pattern = args.pattern;
    opts.rewrite_every = args.rewrite_every.unwrap_or(opts.rewrite_every);
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
    opts.runtime_state = runtime_state;
    opts.follow = args.follow;
    Ok((opts, stresschaos))
}

/// The target the flags name (`FromSelector` when only a StressChaos file can name it).
fn target_spec(args: &RunArgs, stresschaos: bool) -> Result<target::Spec> {
    Ok(if let Some(name) = &args.new {
        target::Spec::New {
            name: name.clone(),
            limit: args.limit.unwrap_or_default(),
        }
    } else if let Some(path) = &args.cgroup {
        target::Spec::Cgroup(path.clone())
    } else if let Some(pid) = args.pid {
        target::Spec::Pid(pid)
    } else if args.self_ {
        target::Spec::SelfCgroup
    } else if args.pod.is_some() || args.container.is_some() {
        target::Spec::Kube {
            pod: args.pod.clone(),
            container: args.container.clone(),
        }
    } else if stresschaos {
        target::Spec::FromSelector
    } else {
        return Err(Error::Usage(
            "a target is required: one of --new NAME, --cgroup PATH, --pid PID, --self, --pod \
             UID, --container ID (or --from-stresschaos FILE with a selector.pods)"
                .to_owned(),
        ));
    })
}

/// The run a StressChaos describes, with the flags given beside it replacing its values;
/// its selector is resolved on this node when no target flag was given.
fn from_stresschaos(
    sc: &StressChaos,
    args: &RunArgs,
    given: Option<Amount>,
    target: target::Spec,
    hierarchy: &Hierarchy,
    state: &RuntimeState,
    probe: probe::Options,
) -> Result<stress::Options> {
    let settings = sc.settings(
        &Overrides {
            amount: given.and_then(|a| match a {
                Amount::Size(s) => Some(format!("--size {s}")),
                Amount::FillTo(s) => Some(format!("--fill-to {s}")),
                Amount::Available(s) => Some(format!("--fill-to available={s}")),
                Amount::Pressure(_) | Amount::Nothing => None,
            }),
            workers: args.workers,
            ramp: args.ramp,
            hold: args.hold,
            oom_score_adj: args.oom_score_adj,
        },
        args.on_oom,
    );
    let amount = match (given, settings.size) {
        (Some(a), _) => a,
        (None, Some(size)) => Amount::Size(size),
        (None, None) => Amount::Size(sc.size),
    };
    let (target, more) = sc.target(&target, hierarchy, state)?;
    let mut opts = stress::Options::new(target, amount, probe);
    opts.workers = settings.workers;
    opts.ramp = settings.ramp;
    opts.hold = settings.hold;
    opts.oom_score_adj = settings.oom_score_adj;
    // The file's size, as it is written there.
    if given.is_none() {
        opts.amount_given = Some(sc.line.size_text.clone());
    }
    opts.stresschaos = Some(sc.line.clone());
    opts.notes = settings.notes;
    opts.notes.extend(more);
    Ok(opts)
}

/// `memstress demo`: a sandbox limited to `limit`, an app holding a quarter of it, and two
/// stressors asking for half as much again as the limit, ending at the first kill.
pub fn demo_options(
    limit: u64,
    timeout: std::time::Duration,
    probe: probe::Options,
) -> stress::Options {
    let target = target::Spec::New {
        name: format!("memstress-demo-{}", std::process::id()),
        limit,
    };
    let mut opts =
        stress::Options::new(target, Amount::Size(SizeSpec::Bytes(limit * 3 / 2)), probe);
    opts.workers = 2;
    opts.apps = vec![App {
        name: "demo-app".to_owned(),
        bytes: limit / 4,
        oom_score_adj: None,
    }];
    opts.stop_after_kills = Some(1);
    opts.deadline = Some(timeout);
    opts
}

/// StressChaos files lowered into run options and planned against fixture trees.
#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::{
        cli::{Cli, Command},
        target::{
            cgroup::Version,
            fixture::{SAMPLE_POD_UID as UID, Tree},
            kube::Driver,
        },
    };

    const MIB: u64 = 1 << 20;

    fn pod_tree(version: Version, driver: Driver) -> (Tree, String) {
        let (tree, ctr, _) = Tree::sample_pod(version, driver);
        (tree, ctr)
    }

    /// `memstress run ARGS --dry-run` lowered and planned against `tree`.
    fn plan(tree: &Tree, args: &[&str]) -> Result<crate::output::line::Plan> {
        let root = tree.root().display().to_string();
        let state = tree.state_root().display().to_string();
        let mut argv = vec!["memstress", "--cgroup-root", &root, "run"];
        argv.extend_from_slice(args);
        argv.extend(["--runtime-root", &state, "--dry-run"]);
        let cli = Cli::try_parse_from(argv).expect("valid flags");
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        let (opts, _) = run_options(*run, cli.cgroup_root, probe::Options::default())?;
        let hierarchy = Hierarchy::locate(opts.cgroup_root.as_deref())?;
        Ok(stress::plan(&opts, &hierarchy)?.0)
    }

    #[test]
    fn plans_the_docs_stresschaos_with_its_real_total() {
        let (tree, ctr) = pod_tree(Version::V1, Driver::Systemd);
        let file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/memory-stress.yaml"
        );
        let planned = plan(
            &tree,
            &[
                "--from-stresschaos",
                file,
                "--pod",
                UID,
                "--container",
                "app",
            ],
        )
        .unwrap();
        let json = serde_json::to_value(&planned).unwrap();
        assert_eq!(json["total_bytes"], 256_000_000);
        assert_eq!(json["workers"], 4);
        assert_eq!(json["size"], "256MB");
        assert_eq!(json["target"]["path"], ctr.as_str());
        assert_eq!(json["stresschaos"]["name"], "memory-stress-example");
        assert_eq!(json["stresschaos"]["size_text"], "256MB");
        let notes: Vec<&str> = json["notes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert!(notes[0].contains("total across 4 workers"), "{notes:?}");
        assert!(
            notes
                .iter()
                .any(|n| n.contains("labelSelectors") && n.contains("not used")),
            "{notes:?}"
        );
        // Without a target flag, its labelSelectors need the cluster API.
        let e = plan(&tree, &["--from-stresschaos", file])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("labelSelectors") && e.contains("cluster API") && e.contains("--pod"),
            "{e}"
        );
    }

    /// `--pressure` lowers into a goal the plan states, in JSON and in words; what cannot go
    /// with it is a usage error.
    #[test]
    fn lowers_a_pressure_goal_and_states_it() {
        use std::borrow::Cow;

        use crate::output::{
            Clock,
            line::{Line, Mode},
            text,
        };
        let (tree, ctr) = pod_tree(Version::V2, Driver::Systemd);
        let planned = plan(
            &tree,
            &[
                "--cgroup",
                &ctr,
                "--pressure",
                "full=12.5%",
                "--workers",
                "2",
            ],
        )
        .unwrap();
        assert_eq!(planned.mode, Mode::Pressure);
        assert_eq!(planned.size, "full=12.5%");
        assert_eq!(planned.bytes_per_worker, vec![0, 0]);
        let p = planned.pressure.clone().unwrap();
        assert_eq!((p.goal_pct, p.limit_bytes), (12.5, 256 * MIB));
        let lines = text::render(&Line::Plan(Cow::Borrowed(&planned)), &Clock::new());
        assert!(
            lines.iter().any(|l| l.starts_with(
                "hold memory.pressure full avg10 at 12.5% with 2 stressor(s) of anonymous memory"
            )),
            "{lines:#?}"
        );
        for (extra, needle) in [
            (&["--size", "8Mi"][..], "cannot be used with"),
            (&["--ramp", "5s"], "--ramp"),
            (&["--from-stresschaos", "x.yaml"], "--from-stresschaos"),
        ] {
            let mut args = vec!["--cgroup", ctr.as_str(), "--pressure", "some=20%"];
            args.extend_from_slice(extra);
            let root = tree.root().display().to_string();
            let mut argv = vec!["memstress", "--cgroup-root", root.as_str(), "run"];
            argv.extend_from_slice(&args);
            let e = match Cli::try_parse_from(argv) {
                Err(e) => e.to_string(),
                Ok(cli) => {
                    let Command::Run(run) = cli.command else {
                        panic!("not run")
                    };
                    run_options(*run, cli.cgroup_root, probe::Options::default())
                        .and_then(|(opts, _)| {
                            let hierarchy = Hierarchy::locate(opts.cgroup_root.as_deref())?;
                            stress::plan(&opts, &hierarchy).map(drop)
                        })
                        .unwrap_err()
                        .to_string()
                }
            };
            assert!(e.contains(needle), "{extra:?}: {e}");
        }
    }

    #[test]
    fn a_selector_by_pod_name_is_found_on_the_node() {
        let (tree, ctr) = pod_tree(Version::V2, Driver::Systemd);
        let file = tree.root().join("sc.yaml");
        std::fs::write(
            &file,
            "apiVersion: chaos-mesh.org/v1alpha1\nkind: StressChaos\nmetadata: {name: s}\nspec:\n  mode: one\n  selector:\n    pods:\n      shop: [web-0]\n  containerNames: [app]\n  stressors:\n    memory: {workers: 2, size: 10%}\n",
        )
        .unwrap();
        let planned = plan(&tree, &["--from-stresschaos", file.to_str().unwrap()]).unwrap();
        assert_eq!(planned.target.path, ctr);
        assert_eq!(planned.total_bytes, (256 * MIB) / 10 + 1);
        assert!(
            planned.notes.iter().any(|n| n.contains("pod shop/web-0")),
            "{:?}",
            planned.notes
        );
    }
}
