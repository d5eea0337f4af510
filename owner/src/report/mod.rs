//! `scaleot report`: the paper's protocol at our scale, swept over emulator sizes. For each
//! task: Full ZS and Full FT (the adapter layers tuned on the full model, and LoRA or whole
//! layers tuned everywhere: the upper bound); for each emulator method, share of middle layers
//! emulated (alpha) and SRC strength (beta): Emulator ZS, Emulator FT, Plug-in, and the
//! emulator's size. Every cell runs typed requests of the commands a user would run, and records
//! their command lines (generated from the same requests) and each document's correctness;
//! finished cells are cached in `OUT/results.json` with those commands, emulators and adapters
//! under names hashed from their settings, so an interrupted report continues where it stopped
//! and a changed setting never reuses a stale result. Writes `report.md` (accuracies, every
//! difference with a paired bootstrap interval, the targets), `report.json` and two plots.

mod bootstrap;
mod plot;
mod write;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use scaleot::emulator::SrcRule;
use scaleot::emulator::replace::{HarmonizerLoss, ScoreOn};
use scaleot::eval::Task;
use serde::{Deserialize, Serialize};

use crate::build_emulator::{EmulatorArgs, Method};
use crate::commands::EvalArgs;
use crate::device::DeviceArgs;
use crate::model_files::write_file;
use crate::tuning::FinetuneArgs;

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Tasks to tune and evaluate on.
    #[arg(long, default_value = "arc_easy,piqa,sciq,openbookqa")]
    tasks: String,
    /// Emulator methods: uniform-drop, uniform-drop-distill, dynamic-drop, scaleot; `NAME@A`
    /// runs a method at alpha A only (one of --alphas).
    #[arg(
        long,
        default_value = "uniform-drop,dynamic-drop,scaleot,uniform-drop-distill@0.5"
    )]
    methods: String,
    /// `scaleot importance` output (for dynamic-drop and scaleot).
    #[arg(long)]
    importance: Option<PathBuf>,
    #[arg(long, default_value = "2+2")]
    adapters: String,
    /// Shares of middle layers dropped / replaced (uniform-drop keeps the same number), in the
    /// order they run; the report sorts them.
    #[arg(long, default_value = "0.25,0.5,0.75")]
    alphas: String,
    /// SRC settings, comma-separated (1 = no rank compression).
    #[arg(long, default_value = "1,0.5")]
    betas: String,
    /// The methods that also get the betas below 1 (the others run at beta 1 only).
    #[arg(long, default_value = "scaleot")]
    src_methods: String,
    /// The attention projections SRC compresses (comma-separated from q,k,v,o).
    #[arg(long, default_value = "q,k,v,o")]
    src_projections: String,
    /// How SRC picks ranks, comma-separated (`scaleot emulator --src-rule`): each rule runs
    /// for every SRC method and beta below 1; `RULE@A` at alpha A only.
    #[arg(long, default_value = "share")]
    src_rules: String,
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
    /// The Full FT upper bounds, comma-separated (empty: none): `adapters` tunes the adapter
    /// layers on the full model, `all` tunes every layer (with --lora-rank: LoRA on every
    /// layer) at the same settings.
    #[arg(long, default_value = "adapters,all")]
    full_ft: String,
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
    /// Write the report from the cells already in OUT's cache and run nothing: a long sweep's
    /// results so far, with every cell still to run listed (and shown as —).
    #[arg(long)]
    cached_only: bool,
}

/// What a cell measures.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Setting {
    /// The full model, zero-shot.
    FullZs,
    /// The adapter layers tuned on the full model.
    FullFt,
    /// Every layer tuned on the full model (LoRA on every layer, or whole layers).
    FullFtAll,
    /// One stage of an emulator setting (`label`: method, alpha and SRC strength,
    /// `scaleot a=0.5 b=0.5`).
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

    fn title(self) -> &'static str {
        match self {
            Self::Zs => "Emulator ZS",
            Self::Ft => "Emulator FT",
            Self::PlugIn => "Plug-in",
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
            Self::FullFtAll => f.write_str("full-ft-all"),
            Self::Emulator { label, stage } => write!(f, "{label}/{}", stage.name()),
        }
    }
}

/// A cell of the report: a setting on a task. Written `setting/task` in the JSON files
/// (`full-zs/arc_easy`, `scaleot a=0.5 b=0.5/plug-in/piqa`).
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
            "full-ft-all" => Setting::FullFtAll,
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
    /// Each document's acc in split order, `1` or `0`: what the paired bootstrap resamples.
    #[serde(default)]
    correct: String,
    /// The commands that produced it: a cached cell counts only while they stay the same.
    commands: Vec<String>,
    seconds: f64,
}

impl Cell {
    /// Each document's acc, or nothing for a cell cached before they were recorded.
    fn correct(&self) -> Option<Vec<f64>> {
        let flags: Vec<f64> = self
            .correct
            .bytes()
            .map(|b| f64::from(u8::from(b == b'1')))
            .collect();
        (flags.len() == self.docs && self.docs > 0).then_some(flags)
    }
}

/// An emulator's identity and size.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EmulatorInfo {
    method: String,
    #[serde(default)]
    alpha: f64,
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
    fn cell(&self, setting: &Setting, task: &str) -> Option<&Cell> {
        self.cells.get(&CellKey {
            setting: setting.clone(),
            task: task.into(),
        })
    }

    fn acc(&self, setting: &Setting, task: &str) -> Option<f64> {
        self.cell(setting, task).map(|c| c.acc)
    }

    /// The mean accuracy of a setting over `tasks`, if it has every one.
    fn average(&self, setting: &Setting, tasks: &[String]) -> Option<f64> {
        let v: Vec<f64> = tasks.iter().filter_map(|t| self.acc(setting, t)).collect();
        (!v.is_empty() && v.len() == tasks.len()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }

    /// `a − b` in points over `tasks` (one task: that task's), with its paired bootstrap
    /// interval; `None` while either side misses a task or its per-document record.
    fn difference(
        &self,
        a: &Setting,
        b: &Setting,
        tasks: &[String],
    ) -> Option<bootstrap::Difference> {
        let pairs: Vec<(Vec<f64>, Vec<f64>)> = tasks
            .iter()
            .map(|t| Some((self.cell(a, t)?.correct()?, self.cell(b, t)?.correct()?)))
            .collect::<Option<_>>()?;
        let refs: Vec<(&[f64], &[f64])> = pairs
            .iter()
            .map(|(x, y)| (x.as_slice(), y.as_slice()))
            .collect();
        bootstrap::paired(&refs).ok()
    }
}

/// An emulator setting of the sweep: method, alpha, SRC strength and rule.
#[derive(Debug, Clone, PartialEq)]
struct EmulatorSetting {
    method: String,
    alpha: f64,
    beta: f64,
    src_rule: SrcRule,
}

impl EmulatorSetting {
    /// `scaleot a=0.5 b=1`, `scaleot a=0.5 b=0.5 energy`: the report's name for it.
    fn label(&self) -> String {
        format!(
            "{} a={} b={}{}",
            self.method,
            self.alpha,
            self.beta,
            self.rule_suffix()
        )
    }

    /// The method and SRC strength and rule: one line through the alphas in the plots.
    fn series(&self) -> String {
        format!("{} b={}{}", self.method, self.beta, self.rule_suffix())
    }

    /// Nothing for the paper's rule, ` energy` for another.
    fn rule_suffix(&self) -> String {
        match self.src_rule {
            SrcRule::Share => String::new(),
            other => format!(" {}", other.name()),
        }
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
    /// `--cached-only`: what would run is only listed in `missing`.
    cached_only: bool,
    missing: Vec<String>,
}

impl Runner {
    /// The task's training documents as the report writes them for `finetune`.
    fn data_path(&self, task: Task) -> PathBuf {
        self.out.join(format!("data/{}.jsonl", task.name()))
    }

    /// Writes the cache (not with `--cached-only`: a sweep may be running on it).
    fn save(&self) -> Result<()> {
        if self.cached_only {
            return Ok(());
        }
        write_file(
            &self.out.join("results.json"),
            serde_json::to_string_pretty(&self.results)?.as_bytes(),
        )
    }

    /// The evaluation of a cell: `task` scored with `target` (emulator and adapter paths), on
    /// documents the adapters were never tuned on (SciQ: the half of its validation set the
    /// report does not tune on; the other tasks' command lines name no split).
    fn eval_request(
        &self,
        task: Task,
        emulator: Option<&Path>,
        adapter: Option<&Path>,
    ) -> EvalArgs {
        let mut eval = EvalArgs::new(task.name());
        let (_, held_out) = crate::datasets::tuning_split(task);
        eval.split = (held_out != "validation").then(|| held_out.to_string());
        eval.limit = self.limit;
        eval.target.model.model = self.model.clone();
        eval.target.model.device = self.device;
        eval.target.emulator = emulator.map(Path::to_path_buf);
        eval.target.adapter = adapter.map(Path::to_path_buf);
        eval
    }

    /// Evaluates a cell unless it is cached with the same commands and its per-document
    /// record; `finetune` (when the cell needs tuned adapters) runs first unless its adapter
    /// file exists.
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
            .is_some_and(|c| c.commands == commands && c.correct().is_some())
        {
            return Ok(());
        }
        if self.cached_only {
            self.missing.push(key.to_string());
            return Ok(());
        }
        eprintln!("== report: {key}");
        let start = Instant::now();
        if let Some(f) = finetune
            && !f.out.exists()
        {
            crate::tuning::finetune(f)?;
        }
        let evaluated = crate::commands::evaluate(&eval)?;
        let e = evaluated
            .first()
            .context("the evaluation returned nothing")?;
        let r = &e.result;
        self.results.cells.insert(
            key,
            Cell {
                acc: r.acc.value,
                acc_stderr: r.acc.stderr,
                acc_norm: r.acc_norm.value,
                acc_norm_stderr: r.acc_norm.stderr,
                docs: r.docs,
                correct: e
                    .samples
                    .iter()
                    .map(|s| if s.acc > 0.5 { '1' } else { '0' })
                    .collect(),
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
    /// and of the importance scores it reads); records its size. Returns its manifest path
    /// (none with `--cached-only` when it is not built yet).
    fn emulator(
        &mut self,
        label: &str,
        name: &str,
        mut request: EmulatorArgs,
        beta: f64,
    ) -> Result<Option<PathBuf>> {
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
            if self.cached_only {
                self.missing.push(format!("emulator {label} and its cells"));
                return Ok(None);
            }
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
                    alpha: request.alpha,
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
        Ok(Some(path))
    }

    /// Full FT: the adapters of `emulator` (one that keeps every layer) tuned on each task
    /// and plugged into the full model.
    fn full_ft(
        &mut self,
        setting: Setting,
        emulator: &Path,
        name: &str,
        tasks: &[Task],
        a: &ReportArgs,
    ) -> Result<()> {
        for &t in tasks {
            let data = self.data_path(t);
            let ft = self.finetune_request(emulator, &data, &format!("{name}-{}", t.name()), a);
            let eval = self.eval_request(t, None, Some(&ft.out));
            let key = CellKey {
                setting: setting.clone(),
                task: t.name().into(),
            };
            self.cell(key, eval, Some(&ft))?;
        }
        Ok(())
    }
}

/// The report's emulator methods.
const METHODS: [&str; 4] = [
    "uniform-drop",
    "uniform-drop-distill",
    "dynamic-drop",
    "scaleot",
];

/// `NAME` or `NAME@A` items of a comma-separated flag: each name with the one alpha it is
/// restricted to, checked against `alphas`.
fn restricted<'a>(
    flag: &str,
    list: &'a str,
    alphas: &[f64],
) -> Result<Vec<(&'a str, Option<f64>)>> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim) {
        let (name, only) = match item.split_once('@') {
            Some((name, at)) => (name, Some(numbers(flag, at)?[0])),
            None => (item, None),
        };
        if let Some(at) = only
            && !alphas.contains(&at)
        {
            bail!("--{flag} {item}: {at} is not one of the alphas");
        }
        out.push((name, only));
    }
    Ok(out)
}

/// Comma-separated numbers of a flag.
fn numbers(flag: &str, list: &str) -> Result<Vec<f64>> {
    list.split(',')
        .map(|x| {
            x.trim()
                .parse::<f64>()
                .with_context(|| format!("--{flag}: `{x}` is not a number"))
        })
        .collect()
}

/// The sweep's emulator settings in the order they run: alphas in the given order, then
/// methods, then betas.
fn sweep(a: &ReportArgs) -> Result<Vec<EmulatorSetting>> {
    let alphas = numbers("alphas", &a.alphas)?;
    let betas = numbers("betas", &a.betas)?;
    if let Some(x) = alphas.iter().find(|x| !(**x > 0.0 && **x < 1.0)) {
        bail!("--alphas: {x} is not a share of middle layers in (0, 1)");
    }
    if let Some(b) = betas.iter().find(|b| !(**b > 0.0 && **b <= 1.0)) {
        bail!("--betas: {b} is not an SRC strength in (0, 1]");
    }
    let src_methods: Vec<&str> = a.src_methods.split(',').map(str::trim).collect();
    let methods = restricted("methods", &a.methods, &alphas)?;
    for (name, _) in &methods {
        if !METHODS.contains(name) {
            bail!("unknown method `{name}`: {}", METHODS.join(", "));
        }
        if matches!(*name, "dynamic-drop" | "scaleot") && a.importance.is_none() {
            bail!("method {name} needs --importance FILE.json (run `scaleot importance` first)");
        }
    }
    let rules = restricted("src-rules", &a.src_rules, &alphas)?
        .into_iter()
        .map(|(name, only)| Ok((SrcRule::from_name(name)?, only)))
        .collect::<Result<Vec<_>>>()?;
    let at = |only: &Option<f64>, alpha: f64| only.is_none_or(|at| at == alpha);
    let mut settings = Vec::new();
    for &alpha in &alphas {
        for (method, _) in methods.iter().filter(|(_, only)| at(only, alpha)) {
            let with_src = src_methods.contains(method);
            for &beta in betas.iter().filter(|&&b| b >= 1.0 || with_src) {
                let setting = |src_rule| EmulatorSetting {
                    method: method.to_string(),
                    alpha,
                    beta,
                    src_rule,
                };
                if beta >= 1.0 {
                    settings.push(setting(SrcRule::Share));
                    continue;
                }
                for (rule, _) in rules.iter().filter(|(_, only)| at(only, alpha)) {
                    if rule.needs_importance() && !matches!(*method, "dynamic-drop" | "scaleot") {
                        bail!(
                            "--src-rules {}: needs importance, which {method} has not",
                            rule.name()
                        );
                    }
                    settings.push(setting(*rule));
                }
            }
        }
    }
    Ok(settings)
}

pub fn report(a: ReportArgs) -> Result<()> {
    let tasks = Task::parse_list(&a.tasks)?;
    if tasks.is_empty() {
        bail!("no tasks given: pass --tasks arc_easy,piqa,...");
    }
    let task_names: Vec<String> = tasks.iter().map(|t| t.name().to_string()).collect();
    let model = a
        .model
        .clone()
        .unwrap_or_else(crate::model_files::default_model);
    let settings = sweep(&a)?;
    let full_ft: Vec<&str> = a
        .full_ft
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(bad) = full_ft.iter().find(|f| !matches!(**f, "adapters" | "all")) {
        bail!("--full-ft: `{bad}` is neither `adapters` nor `all`");
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
        cached_only: a.cached_only,
        missing: Vec::new(),
    };
    scaleot::emulator::AdapterSplit::parse(&a.adapters)?;
    for &t in &tasks {
        let data = run.data_path(t);
        if !data.exists() && !a.cached_only {
            let docs = crate::datasets::load_train_docs(&crate::model_files::assets_dir(), t)?;
            crate::datasets::write_mc_jsonl(&docs, &data)?;
        }
        let eval = run.eval_request(t, None, None);
        let key = CellKey {
            setting: Setting::FullZs,
            task: t.name().into(),
        };
        run.cell(key, eval, None)?;
    }
    let emulator_request = |method: Method| {
        let mut e = EmulatorArgs::new(method, PathBuf::new());
        e.model = a.model.clone();
        e.adapters = a.adapters.clone();
        e
    };
    if full_ft.contains(&"adapters") {
        // The same adapter layers tuned on the full model: an emulator that keeps every layer.
        let mut full = emulator_request(Method::UniformDrop);
        full.alpha = 0.0;
        if let Some(path) = run.emulator("full", "full", full, 1.0)? {
            run.full_ft(Setting::FullFt, &path, "full-ft", &tasks, &a)?;
        }
    }
    // The built emulators by label, for the owner's costs.
    let mut built: Vec<(String, PathBuf)> = Vec::new();
    for s in &settings {
        let label = s.label();
        let name =
            format!("{}-a{}-b{}", s.method, s.alpha, s.beta) + &s.rule_suffix().replace(' ', "-");
        let mut request = emulator_request(match s.method.as_str() {
            "uniform-drop" | "uniform-drop-distill" => Method::UniformDrop,
            "dynamic-drop" => Method::DynamicDrop,
            _ => Method::Scaleot,
        });
        request.alpha = s.alpha;
        if s.method == "uniform-drop-distill" {
            request.distill.distill = true;
            request.distill.distill_steps = a.distill_steps;
            request.distill.device = a.device;
        }
        if request.method != Method::UniformDrop {
            request.importance = a.importance.clone();
        }
        if s.beta < 1.0 {
            request.beta = s.beta;
            request.src_projections = a.src_projections.clone();
            request.src_rule = s.src_rule.name().into();
        }
        // Not built (`--cached-only`): the setting's rows show —.
        let Some(path) = run.emulator(&label, &name, request, s.beta)? else {
            continue;
        };
        built.push((label.clone(), path.clone()));
        for &t in &tasks {
            let key = |stage| CellKey {
                setting: Setting::emulator(&label, stage),
                task: t.name().into(),
            };
            let eval = run.eval_request(t, Some(&path), None);
            run.cell(key(Stage::Zs), eval, None)?;
            let data = run.data_path(t);
            let ft = run.finetune_request(&path, &data, &format!("{name}-{}", t.name()), &a);
            let eval = run.eval_request(t, Some(&path), Some(&ft.out));
            run.cell(key(Stage::Ft), eval, Some(&ft))?;
            let eval = run.eval_request(t, None, Some(&ft.out));
            run.cell(key(Stage::PlugIn), eval, None)?;
        }
    }
    // The every-layer upper bound last: the sweep's own cells come first in a long run.
    if full_ft.contains(&"all") {
        // Every layer an adapter: LoRA (or whole layers) tuned everywhere on the full model.
        let layers = crate::model_files::read_model(&model)?
            .open()?
            .config
            .num_hidden_layers;
        let mut all = emulator_request(Method::UniformDrop);
        all.alpha = 0.0;
        all.adapters = format!("{}+{}", layers / 2, layers - layers / 2);
        if let Some(path) = run.emulator("full-all", "full-all", all, 1.0)? {
            run.full_ft(Setting::FullFtAll, &path, "full-ft-all", &tasks, &a)?;
        }
    }
    let costs = owner_costs(a.importance.as_deref(), &built)?;
    let what = match a.lora_rank {
        0 => "whole layers".to_string(),
        r => format!("LoRA r={r} (alpha {}) on every projection of", 2 * r),
    };
    let tuning = format!(
        "{what} the adapter layers (Full FT (every layer): {what} every layer of the full model), \
         {} steps of batch {}, learning rate {}",
        a.steps, a.batch_size, a.lr
    );
    write::write_outputs(
        &a.out,
        &run.results,
        &write::Layout {
            tasks: &task_names,
            settings: &settings,
            full_ft: &full_ft,
            // Shown relative to where the report was made (cells keep the full path).
            model: &std::env::current_dir()
                .ok()
                .and_then(|dir| model.strip_prefix(dir).ok())
                .unwrap_or(&model)
                .display()
                .to_string(),
            tuning: &tuning,
        },
        &costs,
    )?;
    println!("report written to {}", a.out.join("report.md").display());
    if !run.missing.is_empty() {
        println!(
            "{} still to run (the report shows them as —):\n  {}",
            run.missing.len(),
            run.missing.join("\n  ")
        );
    }
    Ok(())
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
    fn the_sweep_runs_alphas_in_order_restricts_at_methods_and_gives_src_to_its_methods() {
        let args = |extra: &[&str]| {
            let mut argv: Vec<String> = ["--importance", "imp.json"].map(String::from).to_vec();
            if !extra.contains(&"--alphas") {
                argv.extend(["--alphas", "0.5,0.25"].map(String::from));
            }
            argv.extend(extra.iter().map(|s| s.to_string()));
            parse::<ReportArgs>(&argv)
        };
        let labels = |a: &ReportArgs| -> Vec<String> {
            sweep(a)
                .unwrap()
                .iter()
                .map(EmulatorSetting::label)
                .collect()
        };
        let a = args(&["--methods", "uniform-drop,uniform-drop-distill@0.5,scaleot"]);
        assert_eq!(
            labels(&a),
            [
                "uniform-drop a=0.5 b=1",
                "uniform-drop-distill a=0.5 b=1",
                "scaleot a=0.5 b=1",
                "scaleot a=0.5 b=0.5",
                "uniform-drop a=0.25 b=1",
                "scaleot a=0.25 b=1",
                "scaleot a=0.25 b=0.5",
            ]
        );
        // Rules for every SRC method and beta below 1, `@` restricting them to one alpha;
        // a rule that reads importance needs a method that has it.
        let a = args(&[
            "--methods",
            "scaleot,dynamic-drop",
            "--src-methods",
            "scaleot,dynamic-drop",
            "--src-rules",
            "share,energy@0.5,least",
            "--alphas",
            "0.5,0.25",
        ]);
        assert_eq!(
            labels(&a)[..5],
            [
                "scaleot a=0.5 b=1",
                "scaleot a=0.5 b=0.5",
                "scaleot a=0.5 b=0.5 energy",
                "scaleot a=0.5 b=0.5 least",
                "dynamic-drop a=0.5 b=1",
            ]
        );
        assert_eq!(labels(&a).len(), 8 + 6);
        let a = args(&[
            "--methods",
            "uniform-drop",
            "--src-methods",
            "uniform-drop",
            "--src-rules",
            "importance",
        ]);
        assert!(sweep(&a).is_err(), "uniform-drop has no importance");
        for bad in [
            ["--methods", "scaleot@0.75"],
            ["--methods", "scaleot@x"],
            ["--methods", "layerdrop"],
            ["--alphas", "0"],
            ["--betas", "1.5"],
            ["--src-rules", "spectrum"],
            ["--src-rules", "energy@0.75"],
        ] {
            assert!(sweep(&args(&bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cell_keys_read_back_from_their_names() {
        for name in [
            "full-zs/arc_easy",
            "full-ft/piqa",
            "full-ft-all/sciq",
            "scaleot a=0.25 b=1/emu-ft/arc_easy",
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
