//! `scaleot report`: the paper's protocol at our scale. For each task: Full ZS and Full FT;
//! for each emulator method (and SRC setting): Emulator ZS, Emulator FT, Plug-in, and the
//! emulator's size. Every cell runs typed requests of the commands a user would run, and records
//! their command lines (generated from the same requests); finished cells are cached in
//! `OUT/results.json` with those commands, emulators and adapters under names hashed from their
//! settings, so an interrupted report continues where it stopped and a changed setting never
//! reuses a stale result. Writes `report.md`, `report.json` and `privacy-utility.svg`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use scaleot::emulator::replace::{HarmonizerLoss, ScoreOn};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::build_emulator::{EmulatorArgs, Method};
use crate::commands::EvalArgs;
use crate::device::DeviceArgs;
use crate::model_files::write_file;
use crate::tuning::FinetuneArgs;

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Tasks to tune and evaluate on.
    #[arg(long, default_value = "arc_easy,piqa,sciq")]
    tasks: String,
    /// Emulator methods: uniform-drop, uniform-drop-distill, dynamic-drop, scaleot.
    #[arg(long, default_value = "uniform-drop,dynamic-drop,scaleot")]
    methods: String,
    /// `scaleot importance` output (for dynamic-drop and scaleot).
    #[arg(long)]
    importance: Option<PathBuf>,
    #[arg(long, default_value = "2+2")]
    adapters: String,
    /// Share of middle layers dropped / replaced (uniform-drop keeps the same number).
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,
    /// SRC settings, comma-separated (1 = no rank compression).
    #[arg(long, default_value = "1")]
    betas: String,
    /// The methods that also get the betas below 1 (the others run at beta 1 only).
    #[arg(long, default_value = "scaleot")]
    src_methods: String,
    /// The attention projections SRC compresses (comma-separated from q,k,v,o).
    #[arg(long, default_value = "q,k,v,o")]
    src_projections: String,
    /// Fine-tuning steps for every FT cell.
    #[arg(long, default_value_t = 150)]
    steps: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Tune LoRA factors of this rank instead of whole adapter layers (0: whole layers).
    #[arg(long, default_value_t = 0)]
    lora_rank: usize,
    /// Share of each task's training data held out to report the FT cells' loss before and
    /// after tuning.
    #[arg(long, default_value_t = 0.05)]
    held_out: f64,
    /// Distillation steps for uniform-drop-distill.
    #[arg(long, default_value_t = 200)]
    distill_steps: usize,
    /// Skip Full FT (adapters tuned on the full model).
    #[arg(long)]
    skip_full_ft: bool,
    /// Only the first N evaluation documents per task (for quick runs).
    #[arg(long)]
    limit: Option<usize>,
    /// Base model (.gguf or HF folder) for every emulator and evaluation; default: the
    /// fetched SmolLM2-135M.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Where every fine-tuning, evaluation and distillation computes.
    #[command(flatten)]
    device: DeviceArgs,
    #[arg(long, default_value = "report")]
    out: PathBuf,
}

/// What a cell measures.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Setting {
    /// The full model, zero-shot.
    FullZs,
    /// The adapter layers tuned on the full model.
    FullFt,
    /// One stage of an emulator setting (`label`: method and SRC strength, `scaleot b=0.5`).
    Emulator { label: String, stage: Stage },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// The emulator alone.
    Zs,
    /// The emulator with the adapters tuned on it.
    Ft,
    /// Those adapters in the full model.
    PlugIn,
}

impl Stage {
    const ALL: [Stage; 3] = [Stage::Zs, Stage::Ft, Stage::PlugIn];

    fn name(self) -> &'static str {
        match self {
            Self::Zs => "emu-zs",
            Self::Ft => "emu-ft",
            Self::PlugIn => "plug-in",
        }
    }
}

impl Setting {
    fn emulator(label: &str, stage: Stage) -> Self {
        Self::Emulator {
            label: label.into(),
            stage,
        }
    }
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::FullZs => f.write_str("full-zs"),
            Self::FullFt => f.write_str("full-ft"),
            Self::Emulator { label, stage } => write!(f, "{label}/{}", stage.name()),
        }
    }
}

/// A cell of the report: a setting on a task. Written `setting/task` in the JSON files
/// (`full-zs/arc_easy`, `scaleot b=0.5/plug-in/piqa`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct CellKey {
    setting: Setting,
    task: String,
}

impl std::fmt::Display for CellKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.setting, self.task)
    }
}

impl std::str::FromStr for CellKey {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (setting, task) = s
            .rsplit_once('/')
            .with_context(|| format!("`{s}` is not a report cell"))?;
        let setting = match setting {
            "full-zs" => Setting::FullZs,
            "full-ft" => Setting::FullFt,
            other => {
                let (label, stage) = other
                    .rsplit_once('/')
                    .with_context(|| format!("`{s}` is not a report cell"))?;
                let stage = Stage::ALL
                    .into_iter()
                    .find(|st| st.name() == stage)
                    .with_context(|| format!("`{s}` names no stage of an emulator"))?;
                Setting::emulator(label, stage)
            }
        };
        Ok(Self {
            setting,
            task: task.into(),
        })
    }
}

impl Serialize for CellKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CellKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One evaluated cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cell {
    acc: f64,
    acc_stderr: f64,
    acc_norm: f64,
    acc_norm_stderr: f64,
    docs: usize,
    /// The commands that produced it: a cached cell counts only while they stay the same.
    commands: Vec<String>,
    seconds: f64,
}

/// An emulator's identity and size.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EmulatorInfo {
    method: String,
    beta: f64,
    params: u64,
    full_params: u64,
    bytes: u64,
    plan: Vec<String>,
    build_seconds: f64,
    command: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Results {
    cells: BTreeMap<CellKey, Cell>,
    emulators: BTreeMap<String, EmulatorInfo>,
}

impl Results {
    fn acc(&self, setting: &Setting, task: &str) -> Option<f64> {
        let key = CellKey {
            setting: setting.clone(),
            task: task.into(),
        };
        self.cells.get(&key).map(|c| c.acc)
    }
}

/// The first 12 hex digits of the sha256 of `parts`: the name suffix of a cached file, so that
/// a file made with other settings is never taken for this one.
fn settings_hash(parts: &[&str]) -> String {
    let bytes: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    scaleot::sha256_hex(&bytes)[..12].to_string()
}

struct Runner {
    out: PathBuf,
    results: Results,
    limit: Option<usize>,
    device: DeviceArgs,
    model: Option<PathBuf>,
}

impl Runner {
    fn save(&self) -> Result<()> {
        write_file(
            &self.out.join("results.json"),
            serde_json::to_string_pretty(&self.results)?.as_bytes(),
        )
    }

    /// The evaluation of a cell: `task` scored with `target` (emulator and adapter paths).
    fn eval_request(
        &self,
        task: &str,
        emulator: Option<&Path>,
        adapter: Option<&Path>,
    ) -> EvalArgs {
        let mut eval = EvalArgs::new(task);
        eval.limit = self.limit;
        eval.target.model.model = self.model.clone();
        eval.target.model.device = self.device;
        eval.target.emulator = emulator.map(Path::to_path_buf);
        eval.target.adapter = adapter.map(Path::to_path_buf);
        eval
    }

    /// Evaluates a cell unless it is cached with the same commands; `finetune` (when the
    /// cell needs tuned adapters) runs first unless its adapter file exists.
    fn cell(
        &mut self,
        key: CellKey,
        eval: EvalArgs,
        finetune: Option<&FinetuneArgs>,
    ) -> Result<()> {
        let mut commands: Vec<String> = finetune
            .iter()
            .map(|f| f.command_line().to_string())
            .collect();
        commands.push(eval.command_line().to_string());
        if self
            .results
            .cells
            .get(&key)
            .is_some_and(|c| c.commands == commands)
        {
            return Ok(());
        }
        eprintln!("== report: {key}");
        let start = Instant::now();
        if let Some(f) = finetune
            && !f.out.exists()
        {
            crate::tuning::finetune(f)?;
        }
        let r = crate::commands::evaluate(&eval)?;
        let r = r.first().context("the evaluation returned nothing")?;
        self.results.cells.insert(
            key,
            Cell {
                acc: r.acc.value,
                acc_stderr: r.acc.stderr,
                acc_norm: r.acc_norm.value,
                acc_norm_stderr: r.acc_norm.stderr,
                docs: r.docs,
                commands,
                seconds: start.elapsed().as_secs_f64(),
            },
        );
        self.save()
    }

    /// The fine-tuning of the adapters for `task` on `emulator`, its adapter file named
    /// `adapters/{name}-{settings hash}.json`.
    fn finetune_request(
        &self,
        emulator: &Path,
        data: &Path,
        name: &str,
        a: &ReportArgs,
    ) -> FinetuneArgs {
        let mut f = FinetuneArgs::new(emulator.into(), data.into(), PathBuf::new());
        f.device = self.device;
        f.steps = a.steps;
        f.batch_size = a.batch_size;
        f.lr = a.lr;
        f.warmup = a.steps / 10;
        f.held_out = a.held_out;
        f.checkpoint_every = 0;
        // SciQ's support passages can exceed 256 tokens: cut their prompts from the left.
        f.truncate = true;
        f.lora_rank = a.lora_rank;
        let hash = settings_hash(&[&f.command_line().to_string()]);
        f.out = self.out.join(format!("adapters/{name}-{hash}.json"));
        f
    }

    /// Builds an emulator bundle unless it exists (its file is named by a hash of the request
    /// and of the importance scores it reads); records its size. Returns its manifest path.
    fn emulator(
        &mut self,
        label: &str,
        name: &str,
        mut request: EmulatorArgs,
        beta: f64,
    ) -> Result<PathBuf> {
        let importance_sha = match &request.importance {
            Some(path) => {
                let m: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)
                    .with_context(|| format!("{} is not an importance file", path.display()))?;
                m["weights_sha256"].as_str().unwrap_or_default().to_string()
            }
            None => String::new(),
        };
        let hash = settings_hash(&[&request.command_line().to_string(), &importance_sha]);
        request.out = self.out.join(format!("emulators/{name}-{hash}.json"));
        let path = request.out.clone();
        let command = request.command_line().to_string();
        let start = Instant::now();
        if !path.exists() {
            eprintln!("== report: emulator {label}");
            crate::build_emulator::emulator(&request)?;
        }
        let manifest: scaleot::emulator::EmulatorManifest =
            serde_json::from_slice(&std::fs::read(&path)?)?;
        let recorded = self.results.emulators.get(label);
        if recorded.is_none_or(|e| e.command != command) {
            self.results.emulators.insert(
                label.to_string(),
                EmulatorInfo {
                    method: manifest.method.clone(),
                    beta,
                    params: manifest.emulator_params,
                    full_params: manifest.full_params,
                    bytes: manifest.weights_bytes,
                    plan: manifest
                        .plan
                        .iter()
                        .map(|k| format!("{k:?}").to_lowercase())
                        .collect(),
                    build_seconds: start.elapsed().as_secs_f64(),
                    command,
                },
            );
        }
        self.save()?;
        Ok(path)
    }
}

/// The report's emulator methods.
const METHODS: [&str; 4] = [
    "uniform-drop",
    "uniform-drop-distill",
    "dynamic-drop",
    "scaleot",
];

pub fn report(a: ReportArgs) -> Result<()> {
    let tasks: Vec<String> = a.tasks.split(',').map(|t| t.trim().to_string()).collect();
    let methods: Vec<String> = a.methods.split(',').map(|t| t.trim().to_string()).collect();
    let betas: Vec<f64> = a
        .betas
        .split(',')
        .map(|b| {
            b.trim()
                .parse::<f64>()
                .with_context(|| format!("--betas: `{b}` is not a number"))
        })
        .collect::<Result<_>>()?;
    for m in &methods {
        if !METHODS.contains(&m.as_str()) {
            bail!("unknown method `{m}`: {}", METHODS.join(", "));
        }
        if matches!(m.as_str(), "dynamic-drop" | "scaleot") && a.importance.is_none() {
            bail!("method {m} needs --importance FILE.json (run `scaleot importance` first)");
        }
    }
    std::fs::create_dir_all(a.out.join("data"))?;
    let cache = a.out.join("results.json");
    let results = match std::fs::read(&cache) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a report cache: delete it", cache.display()))?,
        Err(_) => Results::default(),
    };
    let mut run = Runner {
        out: a.out.clone(),
        results,
        limit: a.limit,
        device: a.device,
        model: a.model.clone(),
    };
    scaleot::emulator::AdapterSplit::parse(&a.adapters)?;
    let data: BTreeMap<&str, PathBuf> = tasks
        .iter()
        .map(|t| (t.as_str(), a.out.join(format!("data/{t}.jsonl"))))
        .collect();
    let key = |setting: Setting, task: &str| CellKey {
        setting,
        task: task.into(),
    };
    for t in &tasks {
        if !data[t.as_str()].exists() {
            let task = scaleot::eval::Task::from_name(t)?;
            let docs = crate::datasets::load_train_docs(&crate::model_files::assets_dir(), task)?;
            crate::datasets::write_mc_jsonl(&docs, &data[t.as_str()])?;
        }
        let eval = run.eval_request(t, None, None);
        run.cell(key(Setting::FullZs, t), eval, None)?;
    }
    let emulator_request = |method: Method| {
        let mut e = EmulatorArgs::new(method, PathBuf::new());
        e.model = a.model.clone();
        e.adapters = a.adapters.clone();
        e
    };
    let mut emulators: Vec<(String, PathBuf)> = Vec::new(); // (label, manifest path)
    if !a.skip_full_ft {
        // The same adapter layers tuned on the full model: an emulator that keeps every layer.
        let mut full = emulator_request(Method::UniformDrop);
        full.alpha = 0.0;
        let path = run.emulator("full", "full", full, 1.0)?;
        for t in &tasks {
            let ft = run.finetune_request(&path, &data[t.as_str()], &format!("full-ft-{t}"), &a);
            let eval = run.eval_request(t, None, Some(&ft.out));
            run.cell(key(Setting::FullFt, t), eval, Some(&ft))?;
        }
    }
    let src_methods: Vec<&str> = a.src_methods.split(',').map(str::trim).collect();
    for m in &methods {
        let with_src = src_methods.contains(&m.as_str());
        for &beta in betas.iter().filter(|&&b| b >= 1.0 || with_src) {
            let label = format!("{m} b={beta}");
            let mut request = emulator_request(match m.as_str() {
                "uniform-drop" | "uniform-drop-distill" => Method::UniformDrop,
                "dynamic-drop" => Method::DynamicDrop,
                _ => Method::Scaleot,
            });
            request.alpha = a.alpha;
            if m == "uniform-drop-distill" {
                request.distill.distill = true;
                request.distill.distill_steps = a.distill_steps;
                request.distill.device = a.device;
            }
            if request.method != Method::UniformDrop {
                request.importance = a.importance.clone();
            }
            if beta < 1.0 {
                request.beta = beta;
                request.src_projections = a.src_projections.clone();
            }
            let path = run.emulator(&label, &format!("{m}-b{beta}"), request, beta)?;
            emulators.push((label.clone(), path.clone()));
            for t in &tasks {
                let eval = run.eval_request(t, Some(&path), None);
                run.cell(key(Setting::emulator(&label, Stage::Zs), t), eval, None)?;
                let ft =
                    run.finetune_request(&path, &data[t.as_str()], &format!("{m}-b{beta}-{t}"), &a);
                let eval = run.eval_request(t, Some(&path), Some(&ft.out));
                run.cell(
                    key(Setting::emulator(&label, Stage::Ft), t),
                    eval,
                    Some(&ft),
                )?;
                let eval = run.eval_request(t, None, Some(&ft.out));
                run.cell(key(Setting::emulator(&label, Stage::PlugIn), t), eval, None)?;
            }
        }
    }
    let labels: Vec<String> = emulators.iter().map(|(l, _)| l.clone()).collect();
    let costs = owner_costs(a.importance.as_deref(), &emulators)?;
    let model = a
        .model
        .clone()
        .unwrap_or_else(crate::model_files::default_model);
    write_outputs(
        &a.out,
        &run.results,
        &tasks,
        &labels,
        !a.skip_full_ft,
        &costs,
        &model.display().to_string(),
    )?;
    println!("report written to {}", a.out.join("report.md").display());
    Ok(())
}

fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// The average accuracy of a setting over the tasks that have it.
fn average(r: &Results, setting: &Setting, tasks: &[String]) -> Option<f64> {
    let v: Vec<f64> = tasks.iter().filter_map(|t| r.acc(setting, t)).collect();
    (v.len() == tasks.len()).then(|| mean(&v)).flatten()
}

/// What making an emulator cost the owner: one row per training run behind the report.
#[derive(Debug, Serialize)]
struct OwnerCost {
    run: String,
    steps: u64,
    /// Sequences x length per step (the RL's scoring batch comes on top for ScaleOT).
    batch: String,
    seconds: f64,
    peak_rss_mib: Option<f64>,
}

/// The importance run and any distillation among the emulators, from their own records.
fn owner_costs(
    importance: Option<&Path>,
    emulators: &[(String, PathBuf)],
) -> Result<Vec<OwnerCost>> {
    let mut costs = Vec::new();
    if let Some(path) = importance {
        let m: scaleot::emulator::importance::ImportanceManifest =
            serde_json::from_slice(&std::fs::read(path)?)
                .with_context(|| format!("{} is not an importance file", path.display()))?;
        let c = &m.config;
        let opt = |x: Option<usize>| x.map_or("?".to_string(), |v| v.to_string());
        let (scored_on, scored) = match c.score_on {
            ScoreOn::Validation => ("validation", format!("+{} scored", opt(m.val_batch))),
            ScoreOn::Training => ("training batches", "candidates scored on it".to_string()),
        };
        costs.push(OwnerCost {
            run: format!(
                "ScaleOT importance: harmonizers ({} loss) + RL (N_c={}{}, scored on {scored_on}, RL every {} steps with eta {}, loss stride {}{})",
                match c.harmonizer_loss {
                    HarmonizerLoss::Lm => "LM",
                    HarmonizerLoss::Layer => "layer-wise",
                },
                c.candidates,
                if c.antithetic { " antithetic" } else { "" },
                c.rl_every,
                c.eta,
                c.loss_stride,
                match m.settled_at {
                    Some(at) => format!(", ranking settled at step {}", at + 1),
                    None => String::new(),
                }
            ),
            steps: c.steps as u64,
            batch: format!("{} x {} ({scored})", opt(m.batch), opt(m.seq_len)),
            seconds: m.seconds,
            peak_rss_mib: m.peak_rss_mib,
        });
    }
    for (label, path) in emulators {
        let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
        let d = &manifest["params"]["distill"];
        if let Some(seconds) = d["seconds"].as_f64() {
            costs.push(OwnerCost {
                run: format!("Offsite-Tuning distillation ({label})"),
                steps: d["steps"].as_u64().unwrap_or(0),
                batch: format!("{} x {}", d["batch"], d["seq_len"]),
                seconds,
                peak_rss_mib: d["peak_rss_mib"].as_f64(),
            });
        }
    }
    Ok(costs)
}

fn write_outputs(
    out: &Path,
    r: &Results,
    tasks: &[String],
    labels: &[String],
    full_ft: bool,
    costs: &[OwnerCost],
    model: &str,
) -> Result<()> {
    let pct = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{:.1}", 100.0 * v));
    let docs: Vec<String> = tasks
        .iter()
        .map(|t| {
            let key = CellKey {
                setting: Setting::FullZs,
                task: t.clone(),
            };
            let n = r.cells.get(&key).map_or(0, |c| c.docs);
            format!("{t} {n}")
        })
        .collect();
    let mut md = format!(
        "# ScaleOT report\n\nBase model: {model}. Accuracy (acc, %) on each task's validation split \
         (documents: {}); `avg` over the tasks.\n\n",
        docs.join(", ")
    );
    md += &format!(
        "| setting | emulator size | {} | avg |\n|---|---|",
        tasks.join(" | ")
    );
    md += &"---|".repeat(tasks.len() + 1);
    md += "\n";
    let mut row = |name: &str, size: &str, key: &Setting| {
        let vals: Vec<String> = tasks.iter().map(|t| pct(r.acc(key, t))).collect();
        md += &format!(
            "| {name} | {size} | {} | {} |\n",
            vals.join(" | "),
            pct(average(r, key, tasks))
        );
    };
    row("Full ZS", "100%", &Setting::FullZs);
    if full_ft {
        row(
            "Full FT (adapters tuned on the full model)",
            "100%",
            &Setting::FullFt,
        );
    }
    for l in labels {
        let size = r.emulators.get(l).map_or("?".to_string(), |e| {
            format!(
                "{:.0}% ({:.1}M, {:.0} MiB)",
                100.0 * e.params as f64 / e.full_params as f64,
                e.params as f64 / 1e6,
                e.bytes as f64 / 1048576.0
            )
        });
        for (stage, name) in [
            (Stage::Zs, "Emulator ZS"),
            (Stage::Ft, "Emulator FT"),
            (Stage::PlugIn, "Plug-in"),
        ] {
            row(&format!("{l}: {name}"), &size, &Setting::emulator(l, stage));
        }
    }
    md += "\n## Targets (task averages, points of accuracy)\n\n";
    let avg = |k: &Setting| average(r, k, tasks).map(|v| 100.0 * v);
    let stage = |l: &str, stage: Stage| avg(&Setting::emulator(l, stage));
    let plug = |l: &str| stage(l, Stage::PlugIn);
    // (what, measured, target, met)
    let mut targets: Vec<(String, f64, &str, bool)> = Vec::new();
    let base_of = |m: &str| labels.iter().find(|l| *l == &format!("{m} b=1"));
    if let (Some(ps), Some(pu)) = (
        base_of("scaleot").and_then(|s| plug(s)),
        base_of("uniform-drop").and_then(|u| plug(u)),
    ) {
        targets.push((
            "ScaleOT plug-in − uniform LayerDrop plug-in".into(),
            ps - pu,
            "> 0",
            ps > pu,
        ));
    }
    for l in labels {
        if let (Some(p), Some(f)) = (plug(l), avg(&Setting::FullFt)) {
            let d = p - f;
            targets.push((
                format!("{l}: Plug-in − Full FT"),
                d,
                "within ±1.5",
                d.abs() <= 1.5,
            ));
        }
        if let (Some(p), Some(e)) = (plug(l), stage(l, Stage::Ft)) {
            targets.push((
                format!("{l}: Plug-in − Emulator FT"),
                p - e,
                "≥ 3",
                p - e >= 3.0,
            ));
        }
        // SRC: against the same method without rank compression.
        let Some((method, beta)) = l.split_once(" b=") else {
            continue;
        };
        if beta == "1" {
            continue;
        }
        let plain = format!("{method} b=1");
        for (what, st) in [("Emulator ZS", Stage::Zs), ("Emulator FT", Stage::Ft)] {
            if let (Some(x), Some(y)) = (stage(l, st), stage(&plain, st)) {
                targets.push((format!("{l}: SRC change of {what}"), x - y, "< 0", x < y));
            }
        }
        if let (Some(x), Some(y)) = (plug(l), plug(&plain)) {
            targets.push((
                format!("{l}: SRC change of Plug-in"),
                x - y,
                "within ±0.5",
                (x - y).abs() < 0.5,
            ));
        }
    }
    md += "| target | measured | wanted | |\n|---|---:|---|---|\n";
    for (name, value, wanted, met) in &targets {
        md += &format!(
            "| {name} | {value:+.1} | {wanted} | {} |\n",
            if *met { "met" } else { "missed" }
        );
    }
    if !costs.is_empty() {
        md += "\n## Owner-side cost (from the runs' own records)\n\n";
        md += "| run | steps | batch | wall time | s/step | peak RSS |\n|---|---:|---|---:|---:|---:|\n";
        for c in costs {
            md += &format!(
                "| {} | {} | {} | {:.0} s | {:.2} | {} |\n",
                c.run,
                c.steps,
                c.batch,
                c.seconds,
                c.seconds / c.steps.max(1) as f64,
                c.peak_rss_mib.map_or("?".into(), |m| format!("{m:.0} MiB"))
            );
        }
    }
    md += "\n## Commands\n\nEvery cell's commands are in `report.json`; emulators:\n\n";
    for (l, e) in &r.emulators {
        md += &format!("- {l}: `{}`\n", e.command);
    }
    write_file(&out.join("report.md"), md.as_bytes())?;
    write_file(
        &out.join("report.json"),
        serde_json::to_string_pretty(
            &json!({"tasks": tasks, "settings": labels, "results": r, "owner_costs": costs}),
        )?
        .as_bytes(),
    )?;
    plot(&out.join("privacy-utility.svg"), r, tasks, labels)
}

/// Privacy versus utility: x = Emulator FT (what the data owner's tuning reveals of the
/// model; lower is more private), y = Plug-in (what the owner gets back), one point per
/// emulator setting (task average), with Full ZS / Full FT as reference lines.
fn plot(path: &Path, r: &Results, tasks: &[String], labels: &[String]) -> Result<()> {
    use plotters::prelude::*;
    let points: Vec<(String, f64, f64)> = labels
        .iter()
        .filter_map(|l| {
            let x = average(r, &Setting::emulator(l, Stage::Ft), tasks)?;
            let y = average(r, &Setting::emulator(l, Stage::PlugIn), tasks)?;
            Some((l.clone(), 100.0 * x, 100.0 * y))
        })
        .collect();
    let refs: Vec<(&str, f64)> = [("Full ZS", Setting::FullZs), ("Full FT", Setting::FullFt)]
        .iter()
        .filter_map(|(n, k)| average(r, k, tasks).map(|v| (*n, 100.0 * v)))
        .collect();
    let ys = points.iter().map(|p| p.2).chain(refs.iter().map(|r| r.1));
    let (lo, hi) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    let (lo, hi) = if lo > hi {
        (0.0, 100.0)
    } else {
        (lo - 3.0, hi + 3.0)
    };
    let xs = points.iter().map(|p| p.1);
    let (xlo, xhi) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (xlo, xhi) = if xlo > xhi {
        (0.0, 100.0)
    } else {
        (xlo - 3.0, xhi + 3.0)
    };
    let root = SVGBackend::new(path, (720, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "privacy vs utility (task average, acc %)",
            ("sans-serif", 18),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(xlo..xhi, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("Emulator FT (lower = more private)")
        .y_desc("Plug-in (higher = more useful)")
        .draw()?;
    for (i, (name, y)) in refs.iter().enumerate() {
        let color = if i == 0 { BLACK } else { BLUE };
        chart
            .draw_series(LineSeries::new(
                [(xlo, *y), (xhi, *y)],
                color.stroke_width(1),
            ))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
    }
    for (i, (label, x, y)) in points.iter().enumerate() {
        let color = Palette99::pick(i + 2).to_rgba();
        chart
            .draw_series([Circle::new((*x, *y), 5, color.filled())])?
            .label(label.as_str())
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Parses `scaleot CMD ARGS` into `T` as the binary would.
    fn parse<T: clap::Args>(args: &[String]) -> T {
        #[derive(Parser)]
        struct Wrap<A: clap::Args> {
            #[command(flatten)]
            inner: A,
        }
        let argv = std::iter::once("scaleot".to_string()).chain(args.iter().cloned());
        Wrap::<T>::try_parse_from(argv).unwrap().inner
    }

    #[test]
    fn requests_start_at_the_flags_defaults_and_their_command_lines_say_exactly_what_runs() {
        let emu = EmulatorArgs::new(Method::UniformDrop, "e.json".into());
        assert_eq!(emu, parse(&["--out".into(), "e.json".into()]));
        let ft = FinetuneArgs::new("e.json".into(), "d.jsonl".into(), "adapter.json".into());
        let required = ["--emulator", "e.json", "--data", "d.jsonl"].map(String::from);
        assert_eq!(ft, parse(&required));
        assert_eq!(EvalArgs::new("arc_easy,piqa"), parse(&[]));

        // The report's requests, as it changes them, read back from their command lines.
        let mut emu = EmulatorArgs::new(Method::Scaleot, "out dir/e.json".into());
        emu.importance = Some("imp.json".into());
        emu.beta = 0.5;
        emu.src_projections = "q,k".into();
        emu.distill.distill = true;
        emu.distill.distill_steps = 7;
        emu.distill.device = DeviceArgs {
            device: crate::device::DeviceChoice::Gpu,
        };
        assert_eq!(emu, parse(emu.command_line().args()));
        let mut ft = FinetuneArgs::new("e.json".into(), "d.jsonl".into(), "a.json".into());
        (ft.steps, ft.lr, ft.truncate, ft.lora_rank, ft.held_out) = (3, 5e-4, true, 8, 0.05);
        assert_eq!(ft, parse(ft.command_line().args()));
        let mut eval = EvalArgs::new("piqa");
        eval.limit = Some(4);
        eval.target.emulator = Some("e.json".into());
        eval.target.adapter = Some("a.json".into());
        assert_eq!(eval, parse(eval.command_line().args()));
        assert!(
            emu.command_line()
                .to_string()
                .contains("--out 'out dir/e.json'")
        );
    }

    #[test]
    fn cell_keys_read_back_from_their_names() {
        for name in [
            "full-zs/arc_easy",
            "full-ft/piqa",
            "scaleot b=0.5/plug-in/openbookqa",
            "uniform-drop-distill b=1/emu-zs/sciq",
        ] {
            let key: CellKey = name.parse().unwrap();
            assert_eq!(key.to_string(), name);
        }
        assert!("scaleot b=1/nonsense/piqa".parse::<CellKey>().is_err());
        assert!("piqa".parse::<CellKey>().is_err());
    }
}
