//! `--from-stresschaos FILE`: a Chaos Mesh StressChaos with a memory stressor, run as memstress
//! runs things, with every difference from what Chaos Mesh would do stated.
//!
//! What Chaos Mesh does with `spec.stressors.memory` (checked against its sources):
//!
//! * The controller turns it into memStress flags: `--workers N --size S` plus `options`
//!   verbatim, and nothing at all when `workers` is 0 or missing (`Stressors.Normalize` in
//!   api/v1alpha1/stresschaos_types.go). chaos-daemon starts memStress in the target
//!   container's cgroup, entering only its PID namespace (pkg/chaosdaemon/stress_server_linux.go).
//! * memStress keeps `workers` client processes running, each mapping and touching
//!   `size / workers` bytes, and starts a new one about a second after one exits, an OOM kill
//!   included (chaos-mesh/memStress main.go; chaos-mesh PR #3186 made the workers split the
//!   size). The docs' "the final sum is `workers * size`" and the API comment's "per vm
//!   worker" are not what runs: `size` is the total.
//! * `size` is parsed by go-humanize: `MB`, `GB` are powers of 1000, `MiB`, `GiB` of 1024,
//!   units in any case. A percent is of the limit memStress finds at /sys/fs/cgroup in its own
//!   mount namespace (chaos-daemon's, not the target's), or of the node's memory without one.
//! * `time` grows the memory linearly (memStress `--time`); `oomScoreAdj` runs memStress
//!   under `choom` (chaos-mesh PR #3070); `duration` counts from injection.

use std::{collections::BTreeMap, fmt, fs, io::Read as _, path::Path, time::Duration};

use serde::{Deserialize, de::IgnoredAny};

use crate::{
    output::line::{Plan, SelectorLine, StressChaosLine, Summary},
    size::{Bytes, SizeSpec, group},
    spec::OnOom,
    target::{
        self,
        cgroup::Hierarchy,
        kube::{self, KubeError, Node, RuntimeState},
    },
};

/// A StressChaos file larger than this is refused before it is parsed (real ones are a few
/// hundred bytes; a `kubectl get -o yaml` with status and managed fields a few KiB).
pub const MAX_FILE_BYTES: u64 = 256 << 10;

/// Why a StressChaos file was refused. Each message names the file and what is accepted.
#[derive(Debug, thiserror::Error)]
pub enum StressChaosError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is {size} bytes; a StressChaos is at most {MAX_FILE_BYTES} bytes here")]
    TooBig { path: String, size: u64 },
    #[error("{path} is not valid YAML: {message}")]
    Yaml { path: String, message: String },
    #[error(
        "{path} is a `{kind}`, not a StressChaos (apiVersion chaos-mesh.org/v1alpha1, kind StressChaos)"
    )]
    NotStressChaos { path: String, kind: String },
    #[error(
        "{path} has no spec.stressors.memory: memstress runs only a StressChaos's memory stressor"
    )]
    NoMemory { path: String },
    #[error(
        "{path}: spec.stressors.memory.workers is {0}: Chaos Mesh starts no memory stressor then (Stressors.Normalize skips it); give 1 to 8192", workers.map_or_else(|| "missing".to_owned(), |w| w.to_string())
    )]
    Workers { path: String, workers: Option<i64> },
    #[error(
        "{path}: spec.stressors.memory.size is missing: memStress would then allocate nothing; give e.g. 256MB or 25%"
    )]
    NoSize { path: String },
    #[error(
        "{path}: spec.stressors.memory.size `{size}` is not a size as Chaos Mesh reads it (a number with B, KB, KiB, MB, MiB, GB, GiB, TB, TiB, or a percent such as 25%)"
    )]
    BadSize { path: String, size: String },
    #[error(
        "{path}: spec.{field} `{value}` is not a duration (Go syntax as Chaos Mesh reads it: 30s, 10m, 1h30m, 500ms)"
    )]
    BadDuration {
        path: String,
        field: &'static str,
        value: String,
    },
    #[error(
        "{path}: spec.stressors.memory.oomScoreAdj {0} is out of range: -1000 to 1000",
        adj
    )]
    BadAdj { path: String, adj: i64 },
    #[error(
        "{path}: no target: the selector's {keys} need the cluster API (labels, namespaces and fields are not in a node's cgroup tree or its runtimes' files); give the target with --pod UID [--container NAME], --container ID or --cgroup PATH"
    )]
    NeedsCluster { path: String, keys: String },
    #[error(
        "{path}: selector.pods {namespace}/{name}: no such pod on this node (pod names come from the runtimes' state files under {root}); give --pod UID"
    )]
    PodNotHere {
        path: String,
        namespace: String,
        name: String,
        root: String,
    },
    #[error(
        "{path}: the selector matches {count} targets on this node ({found}); memstress stresses one per run: pick one with --pod or --container"
    )]
    TooMany {
        path: String,
        count: usize,
        found: String,
    },
    #[error(transparent)]
    Kube(#[from] KubeError),
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: SpecDoc,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecDoc {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    value: Option<Scalar>,
    #[serde(default)]
    selector: Option<SelectorDoc>,
    #[serde(default)]
    container_names: Option<Vec<String>>,
    #[serde(default)]
    stressors: Option<StressorsDoc>,
    #[serde(default)]
    stressng_stressors: Option<String>,
    #[serde(default)]
    duration: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SelectorDoc {
    #[serde(default)]
    pods: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    namespaces: Option<IgnoredAny>,
    #[serde(default)]
    nodes: Option<IgnoredAny>,
    #[serde(default)]
    label_selectors: Option<IgnoredAny>,
    #[serde(default)]
    expression_selectors: Option<IgnoredAny>,
    #[serde(default)]
    annotation_selectors: Option<IgnoredAny>,
    #[serde(default)]
    field_selectors: Option<IgnoredAny>,
    #[serde(default)]
    node_selectors: Option<IgnoredAny>,
    #[serde(default)]
    pod_phase_selectors: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
struct StressorsDoc {
    #[serde(default)]
    memory: Option<MemoryDoc>,
    #[serde(default)]
    cpu: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MemoryDoc {
    #[serde(default)]
    workers: Option<i64>,
    #[serde(default)]
    size: Option<Scalar>,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    oom_score_adj: Option<i64>,
    #[serde(default)]
    options: Option<Vec<String>>,
}

/// A YAML scalar Chaos Mesh types as a string that people write bare (`size: 1024`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(s) => f.write_str(s),
            Self::Int(i) => write!(f, "{i}"),
            Self::Float(x) => write!(f, "{x}"),
        }
    }
}

/// A StressChaos's memory stressor, read and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct StressChaos {
    /// What the file says, as the plan echoes it.
    pub line: StressChaosLine,
    /// `size` as Chaos Mesh reads it.
    pub size: SizeSpec,
    /// `time` (the ramp).
    pub ramp: Option<Duration>,
    /// `spec.duration`.
    pub hold: Option<Duration>,
    /// A cpu stressor is there too (not run).
    cpu: bool,
    /// `stressngStressors` is there too (not run).
    stressng: bool,
    /// Parse notes (a duration memStress would refuse, …).
    parse_notes: Vec<String>,
}

/// Reads and checks a StressChaos file.
pub fn load(path: &Path) -> Result<StressChaos, StressChaosError> {
    let shown = path.display().to_string();
    let read_err = |source| StressChaosError::Read {
        path: shown.clone(),
        source,
    };
    let file = fs::File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    if size > MAX_FILE_BYTES {
        return Err(StressChaosError::TooBig { path: shown, size });
    }
    let mut text = String::new();
    // A pipe or /proc file reports size 0: read one byte past the cap to catch it anyway.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(StressChaosError::TooBig {
            path: shown,
            size: text.len() as u64,
        });
    }
    parse(&text, path)
}

/// One line: saphyr's message and where, without the source snippet.
fn yaml_error(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unreadable")
        .to_owned();
    match e.location() {
        Some(at) if !first.contains("line") => {
            format!("{first} (line {}, column {})", at.line(), at.column())
        }
        _ => first,
    }
}

/// Parses a StressChaos from its text (`path` is only named in messages).
pub fn parse(text: &str, path: &Path) -> Result<StressChaos, StressChaosError> {
    let shown = path.display().to_string();
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    let mut budget = serde_saphyr::Budget::default();
    // One object, no anchor games: far below the defaults, far above any real StressChaos.
    budget.max_documents = 1;
    budget.max_events = 100_000;
    budget.max_aliases = 1_000;
    budget.max_depth = 32;
    options.budget = Some(budget);
    let doc: Document =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| StressChaosError::Yaml {
            path: shown.clone(),
            message: yaml_error(&e),
        })?;
    let kind = doc.kind.clone().unwrap_or_else(|| "(no kind)".to_owned());
    let api_ok = doc
        .api_version
        .as_deref()
        .is_some_and(|v| v.starts_with("chaos-mesh.org/"));
    if kind != "StressChaos" || !api_ok {
        return Err(StressChaosError::NotStressChaos { path: shown, kind });
    }
    let spec = doc.spec;
    let stressors = spec.stressors.unwrap_or_default();
    let Some(memory) = stressors.memory else {
        return Err(StressChaosError::NoMemory { path: shown });
    };
    let workers = match memory.workers {
        Some(w @ 1..=8192) => w as u32,
        other => {
            return Err(StressChaosError::Workers {
                path: shown,
                workers: other,
            });
        }
    };
    let Some(size_text) = memory.size.map(|s| s.to_string()) else {
        return Err(StressChaosError::NoSize { path: shown });
    };
    let size = parse_humanize(&size_text).ok_or_else(|| StressChaosError::BadSize {
        path: shown.clone(),
        size: size_text.clone(),
    })?;
    let mut parse_notes = Vec::new();
    let mut duration_of = |field: &'static str, value: &str| match go_duration(value) {
        Some(d) => Ok(d),
        None => match humantime::parse_duration(value) {
            Ok(d) if !d.is_zero() => {
                parse_notes.push(format!(
                    "{field} `{value}` is read as {}; Chaos Mesh reads it with Go's time.ParseDuration, which refuses it (it takes 30s, 10m, 1h30m)",
                    humantime::format_duration(d)
                ));
                Ok(d)
            }
            _ => Err(StressChaosError::BadDuration {
                path: shown.clone(),
                field,
                value: value.to_owned(),
            }),
        },
    };
    let ramp = memory
        .time
        .as_deref()
        .map(|t| duration_of("stressors.memory.time", t))
        .transpose()?
        .filter(|d| !d.is_zero());
    let hold = spec
        .duration
        .as_deref()
        .map(|d| duration_of("duration", d))
        .transpose()?
        .filter(|d| !d.is_zero());
    let oom_score_adj = match memory.oom_score_adj {
        None => None,
        Some(adj @ -1000..=1000) => Some(adj as i32),
        Some(adj) => return Err(StressChaosError::BadAdj { path: shown, adj }),
    };
    let sel = spec.selector.unwrap_or_default();
    let mut cluster_only = Vec::new();
    for (present, key) in [
        (sel.namespaces.is_some(), "namespaces"),
        (sel.nodes.is_some(), "nodes"),
        (sel.label_selectors.is_some(), "labelSelectors"),
        (sel.expression_selectors.is_some(), "expressionSelectors"),
        (sel.annotation_selectors.is_some(), "annotationSelectors"),
        (sel.field_selectors.is_some(), "fieldSelectors"),
        (sel.node_selectors.is_some(), "nodeSelectors"),
        (sel.pod_phase_selectors.is_some(), "podPhaseSelectors"),
    ] {
        if present {
            cluster_only.push(key.to_owned());
        }
    }
    Ok(StressChaos {
        line: StressChaosLine {
            file: path.to_owned(),
            name: doc.metadata.name,
            namespace: doc.metadata.namespace,
            workers,
            size_text,
            time: memory.time,
            oom_score_adj,
            options: memory.options.unwrap_or_default(),
            duration: spec.duration,
            selector: SelectorLine {
                pods: sel.pods.unwrap_or_default(),
                container_names: spec.container_names.unwrap_or_default(),
                cluster_only,
                mode: spec.mode,
                value: spec.value.map(|v| v.to_string()),
            },
        },
        size,
        ramp,
        hold,
        cpu: stressors.cpu.is_some(),
        stressng: spec
            .stressng_stressors
            .is_some_and(|s| !s.trim().is_empty()),
        parse_notes,
    })
}

/// A size as go-humanize's `ParseBytes` reads it (what memStress uses): a number (commas
/// allowed), optional space, a unit in any case: `b`, `k`/`kb` = 1000, `ki`/`kib` = 1024, and
/// so on to `e`/`eib`; or a percent.
pub fn parse_humanize(input: &str) -> Option<SizeSpec> {
    let s = input.trim();
    if let Some(p) = s.strip_suffix('%') {
        let p: f64 = p.trim().parse().ok()?;
        return (p > 0.0 && p <= 10_000.0).then_some(SizeSpec::Percent(p));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number.replace(',', "").parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let power = |base: f64, n: i32| base.powi(n);
    let multiplier = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => power(1000.0, 1),
        "ki" | "kib" => power(1024.0, 1),
        "m" | "mb" => power(1000.0, 2),
        "mi" | "mib" => power(1024.0, 2),
        "g" | "gb" => power(1000.0, 3),
        "gi" | "gib" => power(1024.0, 3),
        "t" | "tb" => power(1000.0, 4),
        "ti" | "tib" => power(1024.0, 4),
        "p" | "pb" => power(1000.0, 5),
        "pi" | "pib" => power(1024.0, 5),
        "e" | "eb" => power(1000.0, 6),
        "ei" | "eib" => power(1024.0, 6),
        _ => return None,
    };
    let bytes = number * multiplier;
    // go-humanize truncates to whole bytes.
    (bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64)
        .then_some(SizeSpec::Bytes(bytes as u64))
}

/// Go's `time.ParseDuration` (what Chaos Mesh and memStress use): a sequence of decimal
/// numbers with units `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`; `0` alone.
pub fn go_duration(input: &str) -> Option<Duration> {
    let s = input.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[u..];
        total += number * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Flags given on the command line next to `--from-stresschaos` (they win over the file).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--size` or `--fill-to` was given.
    pub amount: Option<String>,
    /// `--workers`.
    pub workers: Option<u32>,
    /// `--ramp`.
    pub ramp: Option<Duration>,
    /// `--hold`.
    pub hold: Option<Duration>,
    /// `--oom-score-adj`.
    pub oom_score_adj: Option<i32>,
}

/// The run a StressChaos comes to, flags applied.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Total size (`None`: `--size`/`--fill-to` was given instead).
    pub size: Option<SizeSpec>,
    /// Number of stressors.
    pub workers: u32,
    /// Ramp.
    pub ramp: Option<Duration>,
    /// Hold once full.
    pub hold: Option<Duration>,
    /// oom_score_adj of the stressors.
    pub oom_score_adj: Option<i32>,
    /// What differs from Chaos Mesh, and what the flags changed.
    pub notes: Vec<String>,
}

impl From<StressChaosError> for crate::Error {
    fn from(e: StressChaosError) -> Self {
        Self::Input(Box::new(e))
    }
}

impl StressChaos {
    /// `StressChaos namespace/name`, or the file.
    pub fn label(&self) -> String {
        self.line.label()
    }

    /// The sentence that ends a run of this StressChaos (text mode): its size is the total,
    /// held by all its workers together (`None` when its size was not the run's).
    pub fn closing(&self, plan: &Plan, summary: &Summary) -> Option<String> {
        if plan.fill_to_bytes.is_some() || plan.size != self.line.size_text {
            return None;
        }
        let per = plan.bytes_per_worker.first().copied().unwrap_or(0);
        Some(format!(
            "{}: size {} = {} bytes ({}) held in total by {} workers ({} each), not {} × {}; {}",
            self.label(),
            self.line.size_text,
            group(plan.total_bytes.into()),
            Bytes(plan.total_bytes),
            plan.workers,
            Bytes(per),
            plan.workers,
            self.line.size_text,
            summary.stressors_charged_bytes.map_or_else(
                || "the stressors were never full".to_owned(),
                |c| format!("the stressors were charged {}", Bytes(c))
            )
        ))
    }

    /// The run's settings with `flags` applied, and the notes that say how it differs from
    /// what Chaos Mesh would run. `on_oom` is the policy the run will use.
    pub fn settings(&self, flags: &Overrides, on_oom: OnOom) -> Settings {
        let mut notes = self.parse_notes.clone();
        let workers = flags.workers.unwrap_or(self.line.workers);
        match self.size {
            SizeSpec::Bytes(total) => {
                let per = total / u64::from(workers.max(1));
                let si = !self.line.size_text.to_ascii_lowercase().contains('i')
                    && self.line.size_text.trim_end().ends_with(|c: char| c.is_ascii_alphabetic());
                notes.push(format!(
                    "size {} is {} bytes ({}){}: the total across {} worker{} ({} each), as memStress splits it between its workers since Chaos Mesh 2.2 (chaos-mesh PR #3186); Chaos Mesh's docs say the sum is workers × size ({}), which is not what it runs",
                    self.line.size_text,
                    group(total.into()),
                    Bytes(total),
                    if si { ", with MB and GB powers of 1000 as go-humanize reads them" } else { "" },
                    self.line.workers,
                    if self.line.workers == 1 { "" } else { "s" },
                    Bytes(total / u64::from(self.line.workers.max(1))),
                    Bytes(total.saturating_mul(u64::from(self.line.workers))),
                ));
                if flags.workers.is_some_and(|w| w != self.line.workers) {
                    notes.push(format!(
                        "--workers {workers} replaces the file's {}: the same total, {} each",
                        self.line.workers,
                        Bytes(per)
                    ));
                }
            }
            SizeSpec::Percent(p) => notes.push(format!(
                "size {p}% is of the target's memory limit here (the nearest limited ancestor's; --of-node for the node's memory); Chaos Mesh's memStress takes it of the limit it finds at /sys/fs/cgroup in its own mount namespace (chaos-daemon's, as it enters only the target's PID namespace) or of the node's memory, and splits it between its {} worker{}",
                self.line.workers,
                if self.line.workers == 1 { "" } else { "s" },
            )),
        }
        let size = match &flags.amount {
            Some(given) => {
                notes.push(format!(
                    "{given} given: it replaces the file's size {}",
                    self.line.size_text
                ));
                None
            }
            None => Some(self.size),
        };
        notes.push(
            "the size is what the cgroup is charged, the stressors' own footprint included; each memStress worker maps its share on top of its own Go runtime, so Chaos Mesh's target grows by somewhat more".to_owned(),
        );
        notes.push(match on_oom {
            OnOom::Restart => "an OOM-killed stressor is restarted (--on-oom restart), as memStress restarts its workers about a second later; here each kill is also reported".to_owned(),
            policy => format!(
                "memStress restarts an OOM-killed worker about a second later without saying so; memstress reports every kill and, with --on-oom {policy}, {} (--on-oom restart to restart)",
                if policy == OnOom::Stop { "ends the run" } else { "keeps holding with the rest" }
            ),
        });
        let ramp = flags.ramp.or(self.ramp);
        if let Some(t) = &self.line.time {
            notes.push(match flags.ramp {
                Some(r) => format!("--ramp {} replaces the file's time {t}", humantime::format_duration(r)),
                None => format!(
                    "time {t}: memstress grows linearly to the size over it (--ramp), as memStress does; Chaos Mesh's docs list `time` but its CRD (2.6) rejects it as an unknown field (chaos-mesh issue #4424)"
                ),
            });
        }
        let hold = flags.hold.or(self.hold);
        notes.push(match (&self.line.duration, flags.hold) {
            (_, Some(h)) => format!("--hold {} given: held that long once full", humantime::format_duration(h)),
            (Some(d), None) => format!(
                "duration {d}: held for {d} once every stressor is full; Chaos Mesh counts it from the injection, the filling included"
            ),
            (None, None) => "no duration: held until interrupted (Chaos Mesh: until the StressChaos is deleted)".to_owned(),
        });
        let oom_score_adj = flags.oom_score_adj.or(self.line.oom_score_adj);
        if let Some(adj) = self.line.oom_score_adj {
            notes.push(match flags.oom_score_adj {
                Some(a) if a != adj => format!("--oom-score-adj {a} replaces the file's oomScoreAdj {adj}"),
                _ => format!(
                    "oomScoreAdj {adj}: the stressors run with oom_score_adj {adj}, as Chaos Mesh runs memStress under choom (chaos-mesh PR #3070)"
                ),
            });
        }
        if !self.line.options.is_empty() {
            notes.push(format!(
                "options {:?} are not applied: they are memStress command-line flags",
                self.line.options
            ));
        }
        if self.cpu {
            notes.push("the cpu stressor is not run: memstress stresses memory only".to_owned());
        }
        if self.stressng {
            notes.push(
                "stressngStressors is not run; Chaos Mesh would run it instead of stressors, since it wins when both are set".to_owned(),
            );
        }
        Settings {
            size,
            workers,
            ramp,
            hold,
            oom_score_adj,
            notes,
        }
    }

    fn selector_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        if !self.line.selector.pods.is_empty() {
            keys.push("pods".to_owned());
        }
        keys.extend(self.line.selector.cluster_only.iter().cloned());
        if !self.line.selector.container_names.is_empty() {
            keys.push("containerNames".to_owned());
        }
        keys
    }

    /// The target: the one given by flags (`given`), or the one the selector names on this
    /// node; and notes on how that differs from Chaos Mesh's choice.
    pub fn target(
        &self,
        given: &target::Spec,
        hierarchy: &Hierarchy,
        state: &RuntimeState,
    ) -> Result<(target::Spec, Vec<String>), StressChaosError> {
        let path = self.line.file.display().to_string();
        let mode = self.line.selector.mode.as_deref().unwrap_or("one");
        let names = &self.line.selector.container_names;
        let mut notes = Vec::new();
        if !matches!(given, target::Spec::FromSelector) {
            let mut spec = given.clone();
            if let target::Spec::Kube {
                pod: Some(_),
                container: container @ None,
            } = &mut spec
                && names.len() == 1
            {
                *container = Some(names[0].clone());
                notes.push(format!(
                    "containerNames [{}] narrows --pod to that container",
                    names[0]
                ));
            }
            let keys = self.selector_keys();
            if !keys.is_empty() {
                notes.push(format!(
                    "the target comes from the command line: the file's selector ({}) and mode {mode} are not used",
                    keys.join(", ")
                ));
            }
            return Ok((spec, notes));
        }
        if self.line.selector.pods.is_empty() {
            let mut keys: Vec<&str> = self
                .line
                .selector
                .cluster_only
                .iter()
                .map(String::as_str)
                .collect();
            if keys.is_empty() {
                keys.push("(empty selector)");
            }
            return Err(StressChaosError::NeedsCluster {
                path,
                keys: keys.join(", "),
            });
        }
        let node = Node::scan(hierarchy)?.with_meta(state);
        let mut targets: Vec<(kube::Pod, Option<String>)> = Vec::new();
        for (namespace, pods) in &self.line.selector.pods {
            for name in pods {
                let found = node.pods_named(namespace, name);
                if found.is_empty() {
                    return Err(StressChaosError::PodNotHere {
                        path,
                        namespace: namespace.clone(),
                        name: name.clone(),
                        root: state.root.display().to_string(),
                    });
                }
                for pod in found {
                    if names.is_empty() {
                        targets.push((pod.clone(), None));
                    } else {
                        for c in names {
                            targets.push((pod.clone(), Some(c.clone())));
                        }
                    }
                }
            }
        }
        if targets.len() > 1 {
            let found = targets
                .iter()
                .map(|(p, c)| {
                    let (ns, name) = p.name().unwrap_or(("?", "?"));
                    match c {
                        Some(c) => format!("{ns}/{name} container {c}"),
                        None => format!("{ns}/{name}"),
                    }
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(StressChaosError::TooMany {
                path,
                count: targets.len(),
                found,
            });
        }
        let (pod, container) = targets.remove(0);
        let (ns, name) = pod.name().unwrap_or(("?", "?"));
        notes.push(format!(
            "target from the selector: pod {ns}/{name} (UID {}), found through the runtime's state files{}",
            pod.uid,
            container
                .as_deref()
                .map_or_else(String::new, |c| format!(", container {c}"))
        ));
        if !self.line.selector.cluster_only.is_empty() {
            notes.push(format!(
                "selector {} not checked: it needs the cluster API",
                self.line.selector.cluster_only.join(", ")
            ));
        }
        if mode != "one" && mode != "all" {
            notes.push(format!(
                "mode {mode}: memstress stresses the one target the selector names here"
            ));
        }
        if container.is_none() {
            notes.push(
                "Chaos Mesh injects one memStress into each container of the pod, each with the full size; memstress holds the size once, in the pod's cgroup".to_owned(),
            );
        }
        Ok((
            target::Spec::Kube {
                pod: Some(pod.uid.clone()),
                container,
            },
            notes,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The StressChaos example from Chaos Mesh's own documentation, verbatim:
    /// <https://chaos-mesh.org/docs/simulate-heavy-stress-on-kubernetes/> ("Create experiments
    /// using the YAML file", `memory-stress.yaml`).
    pub const DOCS_EXAMPLE: &str = include_str!("../../tests/fixtures/memory-stress.yaml");

    fn parse_str(text: &str) -> Result<StressChaos, StressChaosError> {
        parse(text, Path::new("t.yaml"))
    }

    #[test]
    fn reads_the_docs_example() {
        let sc = parse_str(DOCS_EXAMPLE).unwrap();
        assert_eq!(sc.line.name.as_deref(), Some("memory-stress-example"));
        assert_eq!(sc.line.namespace.as_deref(), Some("chaos-mesh"));
        assert_eq!(sc.line.workers, 4);
        assert_eq!(sc.size, SizeSpec::Bytes(256_000_000));
        assert_eq!(sc.line.selector.mode.as_deref(), Some("one"));
        assert_eq!(sc.line.selector.cluster_only, vec!["labelSelectors"]);
        let s = sc.settings(&Overrides::default(), OnOom::Report);
        assert_eq!(s.size, Some(SizeSpec::Bytes(256_000_000)));
        assert_eq!(s.workers, 4);
        assert!(s.notes[0].contains("256 000 000 bytes"), "{:?}", s.notes);
        assert!(
            s.notes[0].contains("total across 4 workers"),
            "{:?}",
            s.notes
        );
        assert!(s.notes.iter().any(|n| n.contains("until interrupted")));
    }

    #[test]
    fn sizes_as_go_humanize_reads_them() {
        assert_eq!(parse_humanize("256MB"), Some(SizeSpec::Bytes(256_000_000)));
        assert_eq!(parse_humanize("256mb"), Some(SizeSpec::Bytes(256_000_000)));
        assert_eq!(parse_humanize("256MiB"), Some(SizeSpec::Bytes(256 << 20)));
        assert_eq!(parse_humanize("1.5 GiB"), Some(SizeSpec::Bytes(3 << 29)));
        assert_eq!(parse_humanize("1,000k"), Some(SizeSpec::Bytes(1_000_000)));
        assert_eq!(parse_humanize("4096"), Some(SizeSpec::Bytes(4096)));
        assert_eq!(parse_humanize("25%"), Some(SizeSpec::Percent(25.0)));
        assert_eq!(parse_humanize("12Qi"), None);
        assert_eq!(parse_humanize("0"), None);
        assert_eq!(parse_humanize("-5MB"), None);
    }

    #[test]
    fn durations_as_go_reads_them() {
        assert_eq!(go_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(go_duration("10min"), None);
        assert_eq!(go_duration("abc"), None);
        assert_eq!(go_duration(""), None);
    }

    #[test]
    fn maps_every_memory_field() {
        let sc = parse_str(
            "apiVersion: chaos-mesh.org/v1alpha1\nkind: StressChaos\nmetadata: {name: m}\nspec:\n  mode: all\n  duration: 1m\n  containerNames: [app]\n  selector:\n    pods:\n      default: [web-0]\n  stressors:\n    memory:\n      workers: 2\n      size: 50MiB\n      time: 10min\n      oomScoreAdj: 500\n      options: ['--foo']\n    cpu: {workers: 1}\n",
        )
        .unwrap();
        assert_eq!(sc.ramp, Some(Duration::from_secs(600)));
        assert_eq!(sc.hold, Some(Duration::from_secs(60)));
        assert_eq!(sc.line.oom_score_adj, Some(500));
        assert_eq!(sc.line.selector.pods["default"], vec!["web-0"]);
        assert_eq!(sc.line.selector.container_names, vec!["app"]);
        let s = sc.settings(
            &Overrides {
                workers: Some(5),
                ..Overrides::default()
            },
            OnOom::Report,
        );
        assert_eq!(s.workers, 5);
        assert_eq!(s.ramp, Some(Duration::from_secs(600)));
        assert_eq!(s.oom_score_adj, Some(500));
        let all = s.notes.join("\n");
        for needle in [
            "10 MiB each",
            "--workers 5 replaces",
            "time.ParseDuration",
            "choom",
            "cpu stressor",
            "--foo",
            "duration 1m",
        ] {
            assert!(all.contains(needle), "no `{needle}` in:\n{all}");
        }
    }

    #[test]
    fn refuses_with_one_line_naming_the_problem() {
        let cases = [
            ("kind: Pod\napiVersion: v1\n", "a `Pod`"),
            (
                "apiVersion: chaos-mesh.org/v1alpha1\nkind: StressChaos\nspec: {}\n",
                "no spec.stressors.memory",
            ),
            (
                "apiVersion: chaos-mesh.org/v1alpha1\nkind: StressChaos\nspec: {stressors: {memory: {size: 1MB}}}\n",
                "workers is missing",
            ),
            (
                "apiVersion: chaos-mesh.org/v1alpha1\nkind: StressChaos\nspec: {stressors: {memory: {workers: 0, size: 1MB}}}\n",
                "workers is 0",
            ),
            (
                "apiVersion: chaos-mesh.org/v1alpha1\nkind: StressChaos\nspec: {stressors: {memory: {workers: 1}}}\n",
                "size is missing",
            ),
            (
                "apiVersion: chaos-mesh.org/v1alpha1\nkind: StressChaos\nspec: {stressors: {memory: {workers: 1, size: 12Qi}}}\n",
                "`12Qi`",
            ),
            (
                "apiVersion: chaos-mesh.org/v1alpha1\nkind: StressChaos\nspec: {duration: soon, stressors: {memory: {workers: 1, size: 1MB}}}\n",
                "`soon`",
            ),
            (
                "apiVersion: chaos-mesh.org/v1alpha1\nkind: StressChaos\nspec: {stressors: {memory: {workers: 1, size: 1MB, oomScoreAdj: 5000}}}\n",
                "5000",
            ),
            (
                "apiVersion: chaos-mesh.org/v1alpha1\nkind: StressChaos\nspec:\n  stressors: [\n",
                "not valid YAML",
            ),
            ("a: &x [*x]\n", "not valid YAML"),
            ("---\nkind: A\n---\nkind: B\n", "not valid YAML"),
            (
                "apiVersion: chaos-mesh.org/v1alpha1\nkind: StressChaos\nspec: {stressors: {memory: {workers: many, size: 1MB}}}\n",
                "not valid YAML",
            ),
        ];
        for (text, needle) in cases {
            let e = parse_str(text).unwrap_err().to_string();
            assert!(e.contains(needle), "`{e}` lacks `{needle}` for:\n{text}");
            assert!(!e.contains('\n'), "not one line: {e}");
            assert!(e.starts_with("t.yaml"), "does not name the file: {e}");
        }
    }

    #[test]
    fn refuses_oversized_files() {
        let dir = std::env::temp_dir().join(format!("memstress-sc-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.yaml");
        fs::write(&big, "#".repeat(MAX_FILE_BYTES as usize + 1)).unwrap();
        let e = load(&big).unwrap_err().to_string();
        fs::remove_dir_all(&dir).unwrap();
        assert!(e.contains("at most"), "{e}");
    }
}
