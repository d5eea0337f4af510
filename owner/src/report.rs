//! `scaleot report`: the paper's protocol at our scale. For each task: Full ZS and Full FT;
//! for each emulator method (and SRC setting): Emulator ZS, Emulator FT, Plug-in, and the
//! emulator's size. Every cell is the same command a user would run (recorded in the JSON);
//! finished cells are cached in `OUT/results.json`, so an interrupted report continues where
//! it stopped. Writes `report.md`, `report.json` and `privacy-utility.svg`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use scaleot::emulator::replace::{HarmonizerLoss, ScoreOn};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::device::DeviceArgs;
use crate::model_files::write_file;

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

/// One evaluated cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cell {
    acc: f64,
    acc_stderr: f64,
    acc_norm: f64,
    acc_norm_stderr: f64,
    docs: usize,
    /// The commands that produced it.
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
    /// "setting/task" → cell, e.g. "full-zs/arc_easy", "uniform-drop b=1/emu-ft/piqa".
    cells: BTreeMap<String, Cell>,
    emulators: BTreeMap<String, EmulatorInfo>,
}

/// Parses a sub-command's arguments exactly as the command line would.
fn parse<T: clap::Args>(argv: &[String]) -> Result<T> {
    #[derive(Parser)]
    struct Wrap<A: clap::Args> {
        #[command(flatten)]
        inner: A,
    }
    let full = std::iter::once("scaleot".to_string()).chain(argv.iter().cloned());
    Ok(Wrap::<T>::try_parse_from(full)
        .with_context(|| format!("internal command line `{}`", argv.join(" ")))?
        .inner)
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

struct Runner {
    out: PathBuf,
    results: Results,
    limit: Option<usize>,
    device: DeviceArgs,
    /// `--model M` for the sub-commands that read the base model (none for the default).
    model: Vec<String>,
}

impl Runner {
    fn save(&self) -> Result<()> {
        write_file(
            &self.out.join("results.json"),
            serde_json::to_string_pretty(&self.results)?.as_bytes(),
        )
    }

    fn path(&self, rel: &str) -> String {
        self.out.join(rel).display().to_string()
    }

    /// Evaluates a cell unless cached; `prepare` runs first (fine-tuning) and adds its commands.
    fn cell(
        &mut self,
        key: &str,
        task: &str,
        eval: &[&str],
        prepare: Option<&dyn Fn() -> Result<Vec<String>>>,
    ) -> Result<()> {
        let key = format!("{key}/{task}");
        if self.results.cells.contains_key(&key) {
            return Ok(());
        }
        eprintln!("== report: {key}");
        let start = Instant::now();
        let mut commands = match prepare {
            Some(f) => f()?,
            None => Vec::new(),
        };
        let mut args = argv(&["--tasks", task]);
        args.extend(eval.iter().map(|s| s.to_string()));
        if let Some(n) = self.limit {
            args.extend(["--limit".to_string(), n.to_string()]);
        }
        args.extend(self.device.cli_args());
        args.extend(self.model.iter().cloned());
        commands.push(format!("scaleot eval {}", args.join(" ")));
        let r = crate::commands::evaluate(&parse(&args)?)?;
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
}

fn model_args(a: &ReportArgs) -> Vec<String> {
    a.model
        .iter()
        .flat_map(|m| ["--model".to_string(), m.display().to_string()])
        .collect()
}

/// Fine-tunes adapters on an emulator unless the adapter file exists; returns the command.
fn finetune(emulator: &str, data: &str, adapter: &str, a: &ReportArgs) -> Result<Vec<String>> {
    let mut args = argv(&[
        "--emulator",
        emulator,
        "--data",
        data,
        "--steps",
        &a.steps.to_string(),
        "--batch-size",
        &a.batch_size.to_string(),
        "--lr",
        &a.lr.to_string(),
        "--warmup",
        &(a.steps / 10).to_string(),
        "--held-out",
        "0.05",
        "--checkpoint-every",
        "0",
        // SciQ's support passages can exceed 256 tokens: cut their prompts from the left.
        "--truncate",
        "--out",
        adapter,
    ]);
    if a.lora_rank > 0 {
        args.extend(["--lora-rank".to_string(), a.lora_rank.to_string()]);
    }
    args.extend(a.device.cli_args());
    let line = format!("scaleot finetune {}", args.join(" "));
    if !Path::new(adapter).exists() {
        crate::tuning::finetune(parse(&args)?)?;
    }
    Ok(vec![line])
}

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
        let needs_importance = matches!(m.as_str(), "dynamic-drop" | "scaleot");
        if !matches!(
            m.as_str(),
            "uniform-drop" | "uniform-drop-distill" | "dynamic-drop" | "scaleot"
        ) {
            bail!(
                "unknown method `{m}`: uniform-drop, uniform-drop-distill, dynamic-drop, scaleot"
            );
        }
        if needs_importance && a.importance.is_none() {
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
        model: model_args(&a),
    };
    scaleot::emulator::AdapterSplit::parse(&a.adapters)?;
    let data: BTreeMap<&str, String> = tasks
        .iter()
        .map(|t| (t.as_str(), run.path(&format!("data/{t}.jsonl"))))
        .collect();
    for t in &tasks {
        if !Path::new(&data[t.as_str()]).exists() {
            let task = scaleot::eval::Task::from_name(t)?;
            let docs = crate::datasets::load_train_docs(&crate::model_files::assets_dir(), task)?;
            crate::datasets::write_mc_jsonl(&docs, Path::new(&data[t.as_str()]))?;
        }
        run.cell("full-zs", t, &[], None)?;
    }
    let mut emulators: Vec<(String, String)> = Vec::new(); // (label, manifest path)
    if !a.skip_full_ft {
        // The same adapter layers tuned on the full model: an emulator that keeps every layer.
        let path = run.path("emulators/full.json");
        build_emulator(&mut run, "full", &path, &["--alpha", "0"], &a, 1.0)?;
        for t in &tasks {
            let adapter = run.path(&format!("adapters/full-ft-{t}.json"));
            let prep = || finetune(&path, &data[t.as_str()], &adapter, &a);
            run.cell("full-ft", t, &["--adapter", &adapter], Some(&prep))?;
        }
    }
    let src_methods: Vec<&str> = a.src_methods.split(',').map(str::trim).collect();
    for m in &methods {
        let with_src = src_methods.contains(&m.as_str());
        for &beta in betas.iter().filter(|&&b| b >= 1.0 || with_src) {
            let label = format!("{m} b={beta}");
            let path = run.path(&format!("emulators/{m}-b{beta}.json"));
            let imp = a.importance.as_ref().map(|p| p.display().to_string());
            let alpha = a.alpha.to_string();
            let steps_s = a.distill_steps.to_string();
            let device = a.device.cli_args();
            let mut extra: Vec<&str> = vec!["--alpha", &alpha];
            match m.as_str() {
                "uniform-drop" => extra.extend(["--method", "uniform-drop"]),
                "uniform-drop-distill" => {
                    extra.extend([
                        "--method",
                        "uniform-drop",
                        "--distill",
                        "--distill-steps",
                        &steps_s,
                    ]);
                    extra.extend(device.iter().map(String::as_str));
                }
                other => {
                    extra.extend(["--method", other]);
                    if let Some(p) = &imp {
                        extra.extend(["--importance", p]);
                    }
                }
            }
            build_emulator(&mut run, &label, &path, &extra, &a, beta)?;
            emulators.push((label.clone(), path.clone()));
            for t in &tasks {
                run.cell(&format!("{label}/emu-zs"), t, &["--emulator", &path], None)?;
                let adapter = run.path(&format!("adapters/{m}-b{beta}-{t}.json"));
                let prep = || finetune(&path, &data[t.as_str()], &adapter, &a);
                run.cell(
                    &format!("{label}/emu-ft"),
                    t,
                    &["--emulator", &path, "--adapter", &adapter],
                    Some(&prep),
                )?;
                run.cell(
                    &format!("{label}/plug-in"),
                    t,
                    &["--adapter", &adapter],
                    None,
                )?;
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

/// Builds an emulator bundle unless it exists; records its size.
fn build_emulator(
    run: &mut Runner,
    label: &str,
    path: &str,
    method_args: &[&str],
    a: &ReportArgs,
    beta: f64,
) -> Result<()> {
    let mut args = argv(&["--adapters", &a.adapters, "--out", path]);
    args.extend(method_args.iter().map(|s| s.to_string()));
    args.extend(model_args(a));
    if beta < 1.0 {
        args.extend(["--beta".to_string(), beta.to_string()]);
        args.extend(["--src-projections".to_string(), a.src_projections.clone()]);
    }
    let start = Instant::now();
    if !Path::new(path).exists() {
        eprintln!("== report: emulator {label}");
        crate::build_emulator::emulator(parse(&args)?)?;
    }
    let manifest: scaleot::emulator::EmulatorManifest =
        serde_json::from_slice(&std::fs::read(path)?)?;
    run.results
        .emulators
        .entry(label.to_string())
        .or_insert_with(|| EmulatorInfo {
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
            command: format!("scaleot emulator {}", args.join(" ")),
        });
    run.save()
}

fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// The average accuracy of a setting over the tasks that have it.
fn average(r: &Results, setting: &str, tasks: &[String]) -> Option<f64> {
    let v: Vec<f64> = tasks
        .iter()
        .filter_map(|t| r.cells.get(&format!("{setting}/{t}")).map(|c| c.acc))
        .collect();
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
    emulators: &[(String, String)],
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
    let cell = |key: &str, t: &str| r.cells.get(&format!("{key}/{t}")).map(|c| c.acc);
    let docs: Vec<String> = tasks
        .iter()
        .map(|t| {
            let n = r.cells.get(&format!("full-zs/{t}")).map_or(0, |c| c.docs);
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
    let mut row = |name: &str, size: &str, key: &str| {
        let vals: Vec<String> = tasks.iter().map(|t| pct(cell(key, t))).collect();
        md += &format!(
            "| {name} | {size} | {} | {} |\n",
            vals.join(" | "),
            pct(average(r, key, tasks))
        );
    };
    row("Full ZS", "100%", "full-zs");
    if full_ft {
        row(
            "Full FT (adapters tuned on the full model)",
            "100%",
            "full-ft",
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
        row(&format!("{l}: Emulator ZS"), &size, &format!("{l}/emu-zs"));
        row(&format!("{l}: Emulator FT"), &size, &format!("{l}/emu-ft"));
        row(&format!("{l}: Plug-in"), &size, &format!("{l}/plug-in"));
    }
    md += "\n## Targets (task averages, points of accuracy)\n\n";
    let avg = |k: &str| average(r, k, tasks).map(|v| 100.0 * v);
    let plug = |l: &str| avg(&format!("{l}/plug-in"));
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
        if let (Some(p), Some(f)) = (plug(l), avg("full-ft")) {
            let d = p - f;
            targets.push((
                format!("{l}: Plug-in − Full FT"),
                d,
                "within ±1.5",
                d.abs() <= 1.5,
            ));
        }
        if let (Some(p), Some(e)) = (plug(l), avg(&format!("{l}/emu-ft"))) {
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
        for (what, key) in [("Emulator ZS", "emu-zs"), ("Emulator FT", "emu-ft")] {
            if let (Some(x), Some(y)) = (avg(&format!("{l}/{key}")), avg(&format!("{plain}/{key}")))
            {
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
            let x = average(r, &format!("{l}/emu-ft"), tasks)?;
            let y = average(r, &format!("{l}/plug-in"), tasks)?;
            Some((l.clone(), 100.0 * x, 100.0 * y))
        })
        .collect();
    let refs: Vec<(&str, f64)> = [("Full ZS", "full-zs"), ("Full FT", "full-ft")]
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
