//! The forecast of the next OOM kill, against what the kernel then did: `run` past a limit
//! beside steady processes whose oom_score_adj makes one of them lead the ranking at first,
//! and `watch --cgroup` when an oom_score_adj moves just before a kill.

use std::time::Duration;

use memstress_tests::{App, Kmsg, Memstress, TestCgroup, kills_in, require_root, scrape_metrics};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// The victim's pid the forecast of a `sample` line named (`None`: no forecast or victim).
fn named(sample: &Value) -> Option<u64> {
    sample["forecast"]["victim"]["pid"].as_u64()
}

/// For each `oom_kill` line in `lines` (stream order): the kill, and the `sample` lines
/// printed since the previous kill, oldest first.
fn kills_with_samples(lines: &[Value]) -> Vec<(&Value, Vec<&Value>)> {
    let mut out = Vec::new();
    let mut samples = Vec::new();
    for line in lines {
        match line["type"].as_str() {
            Some("sample") => samples.push(line),
            Some("oom_kill") => out.push((line, std::mem::take(&mut samples))),
            _ => {}
        }
    }
    out
}

/// Every kill's `forecast.hit` says whether the last forecast printed before it named its
/// victim, and its `predicted_pid` is that forecast's; returns, for each kill, how long
/// (ms, by the samples' clock) the forecasts before it had named its victim without a break.
fn check_scores(lines: &[Value]) -> Vec<u64> {
    let mut spans = Vec::new();
    for (kill, samples) in kills_with_samples(lines) {
        let victim = kill["victim"]["pid"].as_u64().expect("a victim pid");
        let forecast = &kill["forecast"];
        assert!(forecast.is_object(), "the kill has no forecast: {kill}");
        // A kill right after another, before the next sample, is scored against the same
        // forecast's next in line: no sample of its own to check it against.
        let Some(last) = samples.last().copied() else {
            continue;
        };
        assert_eq!(
            forecast["predicted_pid"].as_u64(),
            named(last),
            "the kill's predicted victim is the last forecast's: {forecast} / {last}"
        );
        let hit = forecast["hit"].as_bool().expect("hit");
        assert_eq!(hit, named(last) == Some(victim), "{forecast}");
        let stretch: Vec<&Value> = samples
            .iter()
            .rev()
            .take_while(|s| named(s) == Some(victim))
            .copied()
            .collect();
        let span = match (stretch.last(), stretch.first()) {
            (Some(first), Some(last)) => {
                last["t_ms"].as_u64().unwrap() - first["t_ms"].as_u64().unwrap()
            }
            _ => 0,
        };
        if hit {
            let lead = forecast["lead_ms"].as_u64().expect("a hit has a lead");
            assert!(lead >= span, "lead {lead} ms < the samples' {span} ms");
            assert!(forecast["missed_because"].is_null());
        } else {
            assert!(forecast["lead_ms"].is_null());
            assert!(forecast["missed_because"].is_string(), "{forecast}");
        }
        spans.push(span);
    }
    spans
}

/// A ramped stress in a 128 MiB cgroup beside two steady processes: `steady-hi` (20 MiB,
/// oom_score_adj 300: 57.5 MiB's worth of points) leads the ranking until the stressor has
/// grown past it, which it does only near the limit. The forecast, which projects each
/// process to the expected OOM, names the stressor seconds before the kill; the kernel kills
/// it; the kill line says the forecast hit, with its lead and its time-to-OOM 5 s ahead.
#[test]
fn run_forecasts_the_victim_before_it_leads() {
    require_root();
    let target = TestCgroup::new("forecast-run", Some(128 * MIB));
    let mut kmsg = Kmsg::open();
    let hi = App::start(&target.cgroup, "steady-hi", 20 * MIB, Some(300));
    let _lo = App::start(&target.cgroup, "steady-lo", 12 * MIB, Some(100));
    let run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--cgroup",
        target.path(),
        "--size",
        "150Mi",
        "--ramp",
        "12s",
        "--on-oom",
        "stop",
    ]);
    let finished = run.wait(Duration::from_secs(60));
    let kills = kills_in(&kmsg.messages());
    let kernel = kills.first().expect("the kernel killed something");
    let lines = &finished.lines;

    // At first steady-hi leads as things are, and the forecast already looks ahead.
    let samples: Vec<&Value> = lines.iter().filter(|l| l["type"] == "sample").collect();
    let early = samples
        .iter()
        .find(|s| s["forecast"]["oom_in_ms"].is_u64())
        .expect("a forecast with a time to OOM");
    assert!(early["t_ms"].as_u64().unwrap() < 3000, "{early}");
    let ranked_now = samples
        .iter()
        .find(|s| s["forecast"]["oom_in_ms"].is_null() && named(s).is_some())
        .expect("a forecast before the ramp showed a trend");
    assert_eq!(named(ranked_now), Some(u64::from(hi.pid())), "{ranked_now}");

    let (kill, _) = kills_with_samples(lines)
        .into_iter()
        .next()
        .expect("an oom_kill line");
    assert_eq!(kill["victim"]["pid"], u64::from(kernel.pid), "{kernel:?}");
    assert_eq!(kill["victim"]["comm"], "memstress-vm");
    let spans = check_scores(lines);
    assert!(
        spans[0] >= 1000,
        "named only {} ms before the kill",
        spans[0]
    );
    let forecast = &kill["forecast"];
    eprintln!("the kill's forecast: {forecast}");
    assert_eq!(forecast["hit"], true, "{forecast}");
    let eta = &forecast["eta"];
    let error = eta["error_pct"].as_f64().unwrap_or_else(|| panic!("{eta}"));
    assert!(
        error.abs() <= 25.0,
        "time to OOM 5 s ahead off by {error}%: {eta}"
    );

    // Pressure beside the forecast: the node's PSI where the kernel has it, the target's own
    // on v2 only; totals never go back.
    let node_psi = std::path::Path::new("/proc/pressure/memory").exists();
    let v2 = memstress_tests::hierarchy().version == memstress::target::cgroup::Version::V2;
    let mut last = (0, 0);
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("MemTotal")
        * 1024;
    for s in &samples {
        // The kubelet's memory.available: MemTotal less the root's working set.
        let available = s["node_available_bytes"]
            .as_u64()
            .expect("node_available_bytes");
        assert!(available > 0 && available < mem_total, "{s}");
        assert_eq!(s["node_psi"].is_object(), node_psi, "{s}");
        assert_eq!(s["psi"].is_object(), v2, "{s}");
        if node_psi {
            let total = s["node_psi"]["some_total_us"].as_u64().unwrap();
            let full = s["node_psi"]["full_total_us"].as_u64().unwrap();
            assert!(total >= last.0 && full >= last.1, "{s}");
            last = (total, full);
        }
    }
    let summary = finished
        .lines
        .iter()
        .find(|l| l["type"] == "summary")
        .expect("a summary");
    let score = &summary["forecast"];
    assert_eq!(score["kills"], 1, "{score}");
    assert_eq!(score["hits"], 1, "{score}");
    assert!(score["median_lead_ms"].as_u64().unwrap() >= 1000, "{score}");
}

/// `watch --cgroup` samples the cgroup and forecasts while nothing grows: no time to OOM,
/// and the biggest process as the victim if one came now (also as a metric). Then a small
/// process's oom_score_adj is raised to 1000 and, at once, the big one allocates past the
/// limit. The kernel kills the small one; unless a forecast read the new oom_score_adj in
/// the few milliseconds between, the kill line says the forecast missed, and why.
#[test]
fn watch_scores_a_kill_its_forecast_could_not_see_coming() {
    require_root();
    let target = TestCgroup::new("forecast-watch", Some(96 * MIB));
    let mut kmsg = Kmsg::open();
    let mut big = App::start(&target.cgroup, "big", 40 * MIB, Some(0));
    let small = App::start(&target.cgroup, "small", 8 * MIB, Some(0));
    let mut watch = Memstress::start(&[
        "watch",
        "-o",
        "json",
        "--cgroup",
        target.path(),
        "--interval",
        "200ms",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let metrics = watch.wait_type("metrics", Duration::from_secs(20));
    let address = metrics["address"].as_str().expect("an address").to_owned();
    // Five forecasts in a row name the big one, with no OOM coming.
    let big_pid = u64::from(big.pid());
    watch.wait_for("five samples", Duration::from_secs(10), |l| {
        l["type"] == "sample" && l["t_ms"].as_u64().unwrap_or(0) >= 1000
    });
    let body = scrape_metrics(&address);
    let info = format!("pid=\"{big_pid}\"");
    assert!(
        body.lines().any(
            |l| l.starts_with("memstress_memcg_oom_forecast_victim_info{")
                && l.contains(&info)
                && l.contains("comm=\"big\"")
        ),
        "{body}"
    );
    assert!(
        !body.contains("memstress_memcg_oom_forecast_seconds"),
        "{body}"
    );

    std::fs::write(format!("/proc/{}/oom_score_adj", small.pid()), "1000").expect("set adj");
    // Past the limit with small's 8 MiB (and each app's 2-3 MiB of runtime), within it
    // without: one kill.
    big.grow(88 * MIB);
    watch.wait_type("oom_kill", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let finished = watch.interrupt(Duration::from_secs(10));
    let kills = kills_in(&kmsg.messages());
    let kernel = kills.first().expect("the kernel killed something");
    assert_eq!(kernel.pid, small.pid(), "{kernel:?}");
    let lines = &finished.lines;
    let samples: Vec<&Value> = lines.iter().filter(|l| l["type"] == "sample").collect();
    assert!(samples.len() >= 5, "{} samples", samples.len());
    let before: Vec<&&Value> = samples.iter().filter(|s| named(s).is_some()).collect();
    assert!(
        before
            .iter()
            .take(5)
            .all(|s| named(s) == Some(big_pid) && s["forecast"]["oom_in_ms"].is_null()),
        "{before:?}"
    );
    check_scores(lines);
    let (kill, _) = kills_with_samples(lines)
        .into_iter()
        .next()
        .expect("an oom_kill line");
    assert_eq!(kill["victim"]["pid"], u64::from(small.pid()));
    let forecast = &kill["forecast"];
    eprintln!("the kill's forecast: {forecast}");
    if forecast["hit"] == false {
        let why = forecast["missed_because"].as_str().unwrap();
        assert!(why.contains("oom_score_adj moved from 0 to 1000"), "{why}");
        assert_eq!(forecast["predicted_pid"], big_pid);
    }
    let end = lines
        .iter()
        .find(|l| l["type"] == "end")
        .expect("an end line");
    let scored = end["forecast"]["kills"].as_u64().expect("kills");
    assert_eq!(scored, kills_with_samples(lines).len() as u64, "{end}");
}

/// A ramp that stops below the limit is no OOM coming: the run tells the forecast what its
/// stressors will still add, so their growth is not extrapolated past their size, while the
/// domain's unreclaimable memory, read by the forecast, rises as the ramp says.
#[test]
fn a_ramp_that_stops_below_the_limit_forecasts_no_oom() {
    require_root();
    let target = TestCgroup::new("forecast-cap", Some(128 * MIB));
    let run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--cgroup",
        target.path(),
        "--size",
        "80Mi",
        "--ramp",
        "6s",
        "--hold",
        "2s",
    ]);
    let finished = run.wait(Duration::from_secs(60));
    let samples: Vec<&Value> = finished
        .lines
        .iter()
        .filter(|l| l["type"] == "sample")
        .collect();
    let rising: Vec<&&Value> = samples
        .iter()
        .filter(|s| s["forecast"]["growth_bytes_per_s"].as_i64().unwrap_or(0) > 4 << 20)
        .collect();
    assert!(
        rising.len() >= 10,
        "the ramp's growth was seen: {}",
        rising.len()
    );
    for s in &samples {
        let forecast = &s["forecast"];
        assert!(forecast["oom_in_ms"].is_null(), "{forecast}");
        assert!(
            forecast["unreclaimable_bytes"].as_u64().unwrap() < 100 * MIB,
            "{forecast}"
        );
    }
    let basis = rising[rising.len() / 2]["forecast"]["basis"]
        .as_str()
        .unwrap();
    assert!(basis.contains("the run's stressors add at most"), "{basis}");
    assert!(basis.contains("no OOM coming"), "{basis}");
    let top = samples
        .iter()
        .filter_map(|s| s["forecast"]["unreclaimable_bytes"].as_u64())
        .max()
        .unwrap();
    assert!(top >= 78 * MIB, "the ramp reached its size: {top}");
}
