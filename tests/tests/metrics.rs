//! `memstress watch --metrics`: scraped over HTTP, parsed by the Prometheus project's own
//! parsers (prometheus-client's text 0.0.4 and OpenMetrics parsers), and checked against real
//! OOM kills and the watched cgroup's own files.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use memstress::target::cgroup::Version;
use memstress_tests::{
    App, Memstress, TestCgroup, command_in, hierarchy, require_root, tools_python_run,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// The families and samples of one scrape, as the reference parser read them.
struct Scrape {
    families: Vec<Value>,
}

impl Scrape {
    /// Samples named `name` (with their labels).
    fn samples(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.families
            .iter()
            .flat_map(|f| f["samples"].as_array().cloned().unwrap_or_default())
            .filter(|s| s["name"] == name)
            .map(|s| {
                let labels = s["labels"]
                    .as_object()
                    .expect("labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().expect("label value").to_owned()))
                    .collect();
                (labels, s["value"].as_f64().expect("numeric value"))
            })
            .collect()
    }

    /// The one sample `name` whose labels include `with`.
    fn value(&self, name: &str, with: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples(name)
            .into_iter()
            .filter(|(labels, _)| {
                with.iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| v)
            .collect();
        assert!(matching.len() <= 1, "{name} {with:?}: {matching:?}");
        matching.first().copied()
    }

    fn type_of(&self, family: &str) -> String {
        self.families
            .iter()
            .find(|f| f["name"] == family)
            .and_then(|f| f["type"].as_str())
            .unwrap_or_else(|| panic!("no family {family}"))
            .to_owned()
    }
}

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families as text_0_0_4
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
parse = openmetrics if sys.argv[1] == "openmetrics" else text_0_0_4
families = [
    {"name": f.name, "type": f.type, "unit": getattr(f, "unit", ""),
     "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}
    for f in parse(sys.stdin.read())
]
json.dump(families, sys.stdout)
"#;

/// GET /metrics; `openmetrics` asks for OpenMetrics text as Prometheus does.
fn scrape(address: &str, openmetrics: bool) -> Scrape {
    let mut stream = TcpStream::connect(address).expect("connect to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let accept = if openmetrics {
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    } else {
        "text/plain"
    };
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not HTTP: {response}"));
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case(&format!("content-type: {content_type}"))),
        "{head}"
    );
    let format = if openmetrics { "openmetrics" } else { "text" };
    let out = tools_python_run(PARSE, &[format], Some(body.as_bytes()));
    assert!(
        out.status.success(),
        "the {format} parser rejected the scrape: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    Scrape {
        families: serde_json::from_slice(&out.stdout).expect("the parser printed JSON"),
    }
}

/// The watched cgroup's own figures, read from its files here (not through memstress).
#[derive(Debug, PartialEq)]
struct Files {
    usage: u64,
    inactive_file: u64,
    limit: u64,
    limit_hits: u64,
    oom_kills: u64,
}

fn read_files(dir: &std::path::Path) -> Files {
    let read =
        |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("read {f}: {e}"));
    let key = |text: &str, k: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k} ")))
            .unwrap_or_else(|| panic!("no {k} in {text}"))
            .trim()
            .parse()
            .unwrap()
    };
    match hierarchy().version {
        Version::V1 => Files {
            usage: read("memory.usage_in_bytes").trim().parse().unwrap(),
            inactive_file: key(&read("memory.stat"), "total_inactive_file"),
            limit: read("memory.limit_in_bytes").trim().parse().unwrap(),
            limit_hits: read("memory.failcnt").trim().parse().unwrap(),
            oom_kills: key(&read("memory.oom_control"), "oom_kill"),
        },
        Version::V2 => Files {
            usage: read("memory.current").trim().parse().unwrap(),
            inactive_file: key(&read("memory.stat"), "inactive_file"),
            limit: read("memory.max").trim().parse().unwrap(),
            limit_hits: key(&read("memory.events"), "max"),
            oom_kills: key(&read("memory.events"), "oom_kill"),
        },
    }
}

/// memstress's definition of "caused by memstress", applied to a JSON oom_kill line.
fn cause(kill: &Value) -> &'static str {
    let stressor = |v: &Value| v["comm"] == "memstress-vm";
    if stressor(&kill["victim"]) {
        "stressor"
    } else if kill["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .chain(kill["skipped"].as_array().unwrap())
        .any(stressor)
    {
        "domain"
    } else {
        "no"
    }
}

/// Three kinds of OOM kill in one watched 64 MiB cgroup: `tail` alone (memstress played no
/// part), an app with oom_score_adj 1000 killed while memstress stressors pushed the cgroup
/// past its limit (`domain`), then a stressor itself (`stressor`). Scraped in both formats,
/// the kill counter has exactly the watch's kills with those labels, and the memcg gauges
/// equal the cgroup's own files.
#[test]
fn metrics_count_kills_and_match_the_cgroups_own_files() {
    require_root();
    let target = TestCgroup::new("metrics", Some(64 * MIB));
    let mut watch = Memstress::start(&[
        "watch",
        "-o",
        "json",
        "--cgroup",
        target.path(),
        "--metrics",
        "127.0.0.1:0",
    ]);
    watch.wait_type("attached", Duration::from_secs(10));
    let endpoint = watch.wait_type("metrics", Duration::from_secs(10));
    let address = endpoint["address"].as_str().expect("address").to_owned();
    assert_eq!(endpoint["url"], format!("http://{address}/metrics"));

    let before = scrape(&address, false);
    assert!(before.samples("memstress_oom_kills_total").is_empty());
    assert_eq!(
        before.value("memstress_probe_dropped_records_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        before.value("memstress_probe_attached", &[("hook", "mark_victim")]),
        Some(1.0)
    );
    assert_eq!(
        before.value("memstress_memcg_limit_bytes", &[("cgroup", target.path())]),
        Some((64 * MIB) as f64)
    );

    // 1. Nothing of memstress's in the cgroup.
    let status = command_in(&target.cgroup, "tail", None)
        .arg("/dev/zero")
        .status()
        .expect("run tail");
    assert!(!status.success());
    watch.wait_type("oom_kill", Duration::from_secs(10));
    // 2. and 3. An app the kernel prefers (oom_score_adj 1000), then memstress's stressors
    // past the limit: the app goes first, then a stressor, which ends the run.
    let mut app = App::start(&target.cgroup, "victim-app", 8 * MIB, Some(1000));
    let run = Memstress::start(&[
        "run",
        "-o",
        "json",
        "--cgroup",
        target.path(),
        "--size",
        "96Mi",
        "--on-oom",
        "stop",
    ]);
    let ran = run.wait(Duration::from_secs(60));
    assert_eq!(ran.status.code(), Some(3), "{}", ran.stderr);
    assert_eq!(app.wait_signal(), Some(libc::SIGKILL));
    // The gauges are compared with the files only when the cgroup stood still around the
    // scrape: after the run the kernel still uncharges now and then (per-CPU charge stocks
    // drained, slab freed after an RCU grace period), a few pages at a time.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (files, om, text) = loop {
        let files = read_files(&target.cgroup.dir);
        let om = scrape(&address, true);
        let text = scrape(&address, false);
        if read_files(&target.cgroup.dir) == files {
            break (files, om, text);
        }
        assert!(
            Instant::now() < deadline,
            "the cgroup moved during every scrape for 15 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let finished = watch.interrupt(Duration::from_secs(10));
    assert!(finished.status.success(), "{}", finished.stderr);

    // What the watch printed, counted by (comm, cause).
    let mut want: BTreeMap<(String, &str), f64> = BTreeMap::new();
    for kill in finished.of_type("oom_kill") {
        assert_eq!(kill["victim"]["cgroup"], target.path());
        let comm = kill["victim"]["comm"].as_str().unwrap().to_owned();
        *want.entry((comm, cause(kill))).or_default() += 1.0;
    }
    assert_eq!(want.get(&("tail".to_owned(), "no")), Some(&1.0), "{want:?}");
    assert_eq!(
        want.get(&("victim-app".to_owned(), "domain")),
        Some(&1.0),
        "{want:?}"
    );
    assert!(
        want.get(&("memstress-vm".to_owned(), "stressor"))
            .is_some_and(|n| *n >= 1.0),
        "{want:?}"
    );
    let total: f64 = want.values().sum();
    assert_eq!(
        total, files.oom_kills as f64,
        "the watch and the cgroup's own OOM-kill count disagree"
    );
    assert_eq!(
        finished.of_type("end")[0]["oom_kills"].as_f64(),
        Some(total)
    );

    for scrape in [&om, &text] {
        assert_eq!(scrape.type_of("memstress_oom_kills"), "counter");
        let kills = scrape.samples("memstress_oom_kills_total");
        let got: BTreeMap<(String, &str), f64> = kills
            .iter()
            .map(|(labels, v)| {
                assert_eq!(labels["cgroup"], target.path());
                let cause = match labels["memstress"].as_str() {
                    "stressor" => "stressor",
                    "domain" => "domain",
                    "no" => "no",
                    other => panic!("memstress=\"{other}\""),
                };
                ((labels["comm"].clone(), cause), *v)
            })
            .collect();
        assert_eq!(
            got, want,
            "the kill counter does not match the watch's kills"
        );

        let cg = [("cgroup", target.path())];
        let value = |name: &str| {
            scrape
                .value(name, &cg)
                .unwrap_or_else(|| panic!("no {name} for {}", target.path()))
        };
        assert_eq!(value("memstress_memcg_usage_bytes"), files.usage as f64);
        assert_eq!(
            value("memstress_memcg_working_set_bytes"),
            files.usage.saturating_sub(files.inactive_file) as f64
        );
        assert_eq!(
            value("memstress_memcg_inactive_file_bytes"),
            files.inactive_file as f64
        );
        assert_eq!(value("memstress_memcg_limit_bytes"), files.limit as f64);
        assert_eq!(
            value("memstress_memcg_limit_hits_total"),
            files.limit_hits as f64
        );
        assert!(files.limit_hits > 0);
        assert_eq!(
            value("memstress_memcg_oom_kills_total"),
            files.oom_kills as f64
        );
        assert_eq!(
            scrape.value("memstress_probe_dropped_records_total", &[]),
            Some(0.0)
        );
    }
    // OpenMetrics carries the unit of the byte gauges.
    assert!(
        om.families
            .iter()
            .any(|f| f["name"] == "memstress_memcg_usage_bytes" && f["unit"] == "bytes"),
        "{:?}",
        om.families
    );
}

/// Other paths and methods are refused; a port in use is a one-line error before any probe
/// is loaded.
#[test]
fn metrics_endpoint_edges() {
    require_root();
    let mut watch = Memstress::start(&["watch", "-o", "json", "--metrics", "127.0.0.1:0"]);
    let endpoint = watch.wait_type("metrics", Duration::from_secs(10));
    let address = endpoint["address"].as_str().unwrap().to_owned();
    let request = |req: &str| {
        let mut s = TcpStream::connect(&address).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(request("GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(request("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    assert!(request("hello\r\n\r\n").starts_with("HTTP/1.1 400"));
    let taken = memstress_tests::memstress_output(&["watch", "--metrics", &address]);
    assert_eq!(taken.status.code(), Some(1));
    memstress_tests::assert_one_line_error(
        &String::from_utf8_lossy(&taken.stderr),
        &["cannot serve metrics on", &address],
    );
    let finished = watch.interrupt(Duration::from_secs(10));
    assert!(finished.status.success(), "{}", finished.stderr);
}

/// The BPF programs' own diagnostics (here: the records a full ring buffer refused, which
/// the programs name as they refuse them) reach stderr under `-vv`, and the metrics count
/// them. A reader that stalls while kills pile up fills a 4 KiB ring buffer.
#[test]
fn bpf_diagnostics_reach_vv_and_are_counted() {
    require_root();
    let storm = TestCgroup::new("diagnostics", Some(16 * MIB));
    let mut watch = Memstress::start(&[
        "watch",
        "-vv",
        "-o",
        "json",
        "--ring-buffer",
        "4Ki",
        "--metrics",
        "127.0.0.1:0",
    ]);
    watch.wait_type("attached", Duration::from_secs(30));
    let endpoint = watch.wait_type("metrics", Duration::from_secs(10));
    let address = endpoint["address"].as_str().expect("address").to_owned();
    let warnings = |scrape: &Scrape| {
        scrape
            .value("memstress_probe_diagnostics_total", &[("level", "warn")])
            .expect("a warn series")
    };
    assert_eq!(warnings(&scrape(&address, false)), 0.0);
    memstress_tests::storm_while_stopped(&watch, &storm.cgroup);
    watch.wait_type("dropped", Duration::from_secs(10));
    // The diagnostics travel in a ring buffer of their own, read beside the records.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut counted = 0.0;
    while counted == 0.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        counted = warnings(&scrape(&address, true));
    }
    let finished = watch.interrupt(Duration::from_secs(20));
    let shown: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|l| l.contains("debug: BPF warn: "))
        .collect();
    assert!(counted >= 1.0, "no diagnostic counted");
    assert!(
        shown.len() as f64 >= counted,
        "{counted} counted, {} shown: {}",
        shown.len(),
        finished.stderr
    );
    assert!(
        shown
            .iter()
            .any(|l| l.contains(": ring buffer full: ") && l.contains("OOM ")),
        "no ring-buffer diagnostic naming its OOM: {shown:?}"
    );
    let dropped: u64 = finished
        .of_type("dropped")
        .iter()
        .map(|d| d["records"].as_u64().expect("records"))
        .sum();
    assert!(
        dropped > 0,
        "nothing dropped: the ring buffer was not stressed"
    );
}
