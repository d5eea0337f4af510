//! `scaleot emulator`: the flags of an emulator recipe (`scaleot::emulator::recipe`), the
//! files it reads and writes, and its progress. The method itself lives in the library.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use scaleot::emulator::corpus::{CorpusFile, corpus_rows};
use scaleot::emulator::distill::distill as run_distillation;
use scaleot::emulator::importance::ImportanceFile;
use scaleot::emulator::rank::parse_projections;
use scaleot::emulator::{AdapterSplit, DistillConfig, FrozenDtype, LayerKind, Recipe, SrcRule};
use scaleot::model::OpenedModel;
use scaleot::tokenizer::Tokenizer;
use serde_json::json;

use crate::command_line::CommandLine;
use crate::device::DeviceArgs;
use crate::model_files::{
    assets_dir, default_model, mib, read, read_model, read_pair, weights_beside, write_file,
};
use crate::progress;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Offsite-Tuning's uniform LayerDrop: keep middle layers evenly spaced.
    UniformDrop,
    /// Drop the least important middle layers (needs --importance), no harmonizers.
    DynamicDrop,
    /// ScaleOT: harmonizers replace the least important middle layers (needs --importance).
    Scaleot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    F16,
    F32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Select {
    /// The alpha share of all middle layers with the lowest scores.
    Global,
    /// The alpha share within each importance group.
    Group,
}

#[derive(clap::Args, Debug, PartialEq, serde::Serialize)]
pub struct EmulatorArgs {
    /// Base model (.gguf or HF folder); default: the fetched SmolLM2-135M.
    #[arg(long)]
    pub(crate) model: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "uniform-drop")]
    pub(crate) method: Method,
    /// Adapter layers at the bottom and top, e.g. 2+2.
    #[arg(long, default_value = "2+2")]
    pub(crate) adapters: String,
    /// uniform-drop: middle layers to keep (default: the 1 - alpha share).
    #[arg(long)]
    pub(crate) keep: Option<usize>,
    /// Share of middle layers dropped (uniform-drop, dynamic-drop) or replaced by harmonizers
    /// (scaleot).
    #[arg(long, default_value_t = 0.5)]
    pub(crate) alpha: f64,
    /// Selective Rank Compression: share of singular values kept in the kept middle layers'
    /// q/k/v/o projections (1 = no compression).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) beta: f64,
    /// The attention projections SRC compresses (comma-separated from q,k,v,o).
    #[arg(long, default_value = "q,k,v,o")]
    pub(crate) src_projections: String,
    /// How SRC picks each matrix's rank: `share` (the paper's: beta of every matrix),
    /// `energy` (the same total rank, one share of spectrum energy for all), `importance` (the
    /// same total rank, more for important layers), `least` (only the less important half of
    /// the kept layers, at beta). Left out of command lines at its default.
    #[arg(long, default_value = "share")]
    #[serde(skip_serializing_if = "is_share")]
    pub(crate) src_rule: String,
    /// The output of `scaleot importance` (scores + harmonizers).
    #[arg(long)]
    pub(crate) importance: Option<PathBuf>,
    /// How the alpha share is chosen from the scores.
    #[arg(long, value_enum, default_value = "global")]
    pub(crate) select: Select,
    /// Storage precision of the frozen layers (adapters are always f32).
    #[arg(long, value_enum, default_value = "f16")]
    pub(crate) frozen_dtype: Precision,
    /// Output manifest path; the weights go beside it as .safetensors.
    #[arg(long, default_value = "emulator.json")]
    pub(crate) out: PathBuf,
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) distill: DistillArgs,
}

/// Offsite-Tuning's emulator distillation on the owner's public corpus.
#[derive(clap::Args, Debug, PartialEq, serde::Serialize)]
pub struct DistillArgs {
    /// Distill the kept middle layers towards the full model's middle block.
    #[arg(long)]
    pub(crate) distill: bool,
    /// Where the distillation computes.
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) device: DeviceArgs,
    /// Public text files (.txt) to distill on; default: the fetched WordNet glosses.
    #[arg(long, num_args = 1..)]
    pub(crate) corpus: Vec<PathBuf>,
    #[arg(long, default_value_t = 200)]
    pub(crate) distill_steps: usize,
    #[arg(long, default_value_t = 4)]
    pub(crate) distill_batch: usize,
    #[arg(long, default_value_t = 128)]
    pub(crate) distill_seq_len: usize,
    #[arg(long, default_value_t = 1e-4)]
    pub(crate) distill_lr: f64,
    /// Weight of the emulator's next-token loss (Offsite-Tuning's recipe: 1; 0 skips it).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub(crate) distill_lm_weight: f64,
    /// Weight of the middle block's hidden-state loss (Offsite-Tuning's recipe: 30).
    #[arg(long, default_value_t = 30.0, allow_negative_numbers = true)]
    pub(crate) distill_kd_weight: f64,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
}

impl EmulatorArgs {
    /// `scaleot emulator --method METHOD --out OUT` with every other flag at its default.
    pub fn new(method: Method, out: PathBuf) -> Self {
        Self {
            model: None,
            method,
            adapters: "2+2".into(),
            keep: None,
            alpha: 0.5,
            beta: 1.0,
            src_projections: "q,k,v,o".into(),
            src_rule: "share".into(),
            importance: None,
            select: Select::Global,
            frozen_dtype: Precision::F16,
            out,
            distill: DistillArgs {
                distill: false,
                device: DeviceArgs::default(),
                corpus: Vec::new(),
                distill_steps: 200,
                distill_batch: 4,
                distill_seq_len: 128,
                distill_lr: 1e-4,
                distill_lm_weight: 1.0,
                distill_kd_weight: 30.0,
                seed: 0,
            },
        }
    }

    /// The command line of this request.
    pub fn command_line(&self) -> CommandLine {
        CommandLine::of("emulator", self)
    }
}

pub fn emulator(a: &EmulatorArgs) -> Result<()> {
    let base_path = a.model.clone().unwrap_or_else(default_model);
    let bytes = read_model(&base_path)?;
    let opened = bytes.open()?;
    let recipe = Recipe {
        method: match a.method {
            Method::UniformDrop => scaleot::emulator::Method::UniformDrop,
            Method::DynamicDrop => scaleot::emulator::Method::DynamicDrop,
            Method::Scaleot => scaleot::emulator::Method::ScaleOt,
        },
        adapters: AdapterSplit::parse(&a.adapters)?,
        keep: a.keep,
        alpha: a.alpha,
        beta: a.beta,
        src_projections: parse_projections(&a.src_projections)?,
        src_rule: SrcRule::from_name(&a.src_rule)?,
        select: match a.select {
            Select::Global => scaleot::emulator::Select::Global,
            Select::Group => scaleot::emulator::Select::Group,
        },
        frozen_dtype: match a.frozen_dtype {
            Precision::F16 => FrozenDtype::F16,
            Precision::F32 => FrozenDtype::F32,
        },
    };
    recipe.validate()?;
    if a.distill.distill && a.method != Method::UniformDrop {
        bail!("--distill is Offsite-Tuning's baseline: use it with --method uniform-drop");
    }
    let importance = match (&a.importance, recipe.method.needs_importance()) {
        (Some(path), true) => Some(read_importance(path)?),
        (None, true) => bail!(
            "--method {:?} needs --importance FILE.json from `scaleot importance`",
            a.method
        ),
        (_, false) => None,
    };
    let mut assembly = recipe.plan(&opened, importance.as_ref())?;
    if a.distill.distill {
        let (cfg, distilled, run) = distill(&opened, &assembly.plan, recipe.adapters, &a.distill)?;
        assembly.add_distilled(&recipe, &cfg, distilled, run)?;
    }
    if recipe.beta < 1.0 {
        let svds = assembly.compression(&recipe).svd_count(&assembly.plan)?;
        let pb = progress::bar(svds as u64, "SVD", "matrices");
        assembly.compress(&recipe, &opened, &mut || pb.inc(1))?;
        pb.finish_and_clear();
    }
    let (weights, manifest) = assembly.write(&recipe, &opened)?;
    write_file(&weights_beside(&a.out), &weights)?;
    write_file(&a.out, serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    let count = |k: LayerKind| manifest.plan.iter().filter(|p| **p == k).count();
    println!(
        "emulator {} ({}): {} adapter + {} raw + {} low-rank + {} harmonizer layers, {} dropped",
        a.out.display(),
        recipe.method.name(),
        count(LayerKind::Adapter),
        count(LayerKind::Raw),
        count(LayerKind::LowRank),
        count(LayerKind::Harmonizer),
        count(LayerKind::Dropped)
    );
    let full_bytes = manifest.full_params * 4;
    println!(
        "parameters {:.1}M of {:.1}M ({:.0}%), weights {:.1} MiB (full model in f32: {:.1} MiB), sha256 {}",
        manifest.emulator_params as f64 / 1e6,
        manifest.full_params as f64 / 1e6,
        100.0 * manifest.emulator_params as f64 / manifest.full_params as f64,
        mib(manifest.weights_bytes),
        mib(full_bytes),
        manifest.weights_sha256
    );
    Ok(())
}

/// The default SRC rule: cached command lines made before the flag existed stay the same.
fn is_share(rule: &str) -> bool {
    rule == SrcRule::Share.name()
}

/// Reads an importance file (manifest + the harmonizer weights beside it).
pub fn read_importance(path: &Path) -> Result<ImportanceFile> {
    let (json, weights) = read_pair(path, "importance file")?;
    ImportanceFile::parse(&json, weights).with_context(|| format!("reading {}", path.display()))
}

/// Reads the public corpus files (default: the fetched WordNet glosses) and cuts them into
/// token rows of `seq_len`; also returns their record for manifests.
pub fn read_corpus(
    paths: &[PathBuf],
    tok: &Tokenizer,
    seq_len: usize,
    seed: u64,
) -> Result<(Vec<Vec<u32>>, serde_json::Value)> {
    let default = [assets_dir().join("corpus/wordnet-glosses.txt")];
    let paths: &[PathBuf] = if paths.is_empty() { &default } else { paths };
    let files = paths
        .iter()
        .map(|path| {
            let bytes = read(
                path,
                "corpus",
                "run `bash scripts/fetch-assets.sh` for the default corpus, or pass --corpus FILE.txt",
            )?;
            Ok(CorpusFile {
                file_name: path.file_name().map(|n| n.to_string_lossy().into_owned()),
                stem: display_name(path),
                bytes,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(corpus_rows(&files, tok, seq_len, seed)?)
}

fn display_name(path: &Path) -> String {
    path.file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "corpus".into())
}

/// Runs Offsite-Tuning's distillation with a progress bar; returns its settings, result and
/// the run's record for the manifest.
fn distill(
    opened: &OpenedModel<'_>,
    plan: &[LayerKind],
    split: AdapterSplit,
    a: &DistillArgs,
) -> Result<(
    DistillConfig,
    scaleot::emulator::distill::Distilled,
    serde_json::Value,
)> {
    let device = a.device.open_autodiff()?;
    let (rows, corpus) = read_corpus(&a.corpus, &opened.tokenizer, a.distill_seq_len, a.seed)?;
    let cfg = DistillConfig {
        steps: a.distill_steps,
        batch_size: a.distill_batch,
        lr: a.distill_lr,
        warmup_steps: (a.distill_steps / 10).max(1),
        lm_weight: a.distill_lm_weight,
        kd_weight: a.distill_kd_weight,
    };
    eprintln!(
        "distilling on {} sequences of {} tokens ({} used by {} steps)",
        rows.len(),
        a.distill_seq_len,
        a.distill_steps * a.distill_batch,
        a.distill_steps
    );
    let pb = progress::bar(a.distill_steps as u64, "distill", "steps");
    let start = Instant::now();
    let mut on_step = |step: usize, kd: f32, lm: f32| {
        pb.inc(1);
        let line = match lm.is_finite() {
            true => format!("relative loss {kd:.4} LM loss {lm:.3}"),
            false => format!("relative loss {kd:.4}"),
        };
        if pb.is_hidden() && (step + 1).is_multiple_of(20) {
            eprintln!("distill step {}/{} {line}", step + 1, a.distill_steps);
        }
        pb.set_message(line);
    };
    let distilled = run_distillation(
        opened,
        plan,
        split,
        cfg.clone(),
        &rows,
        &device,
        &mut on_step,
    )?;
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let lm_part = match distilled.lm_loss_first.is_finite() {
        true => format!(
            ", LM loss {:.3} → {:.3}",
            distilled.lm_loss_first, distilled.lm_loss_last
        ),
        false => String::new(),
    };
    eprintln!(
        "distilled in {secs:.0}s: relative loss {:.4} → {:.4}{lm_part}",
        distilled.relative_loss_first, distilled.relative_loss_last
    );
    let run = json!({
        "seq_len": a.distill_seq_len, "seed": a.seed, "corpus": corpus, "seconds": secs,
        "peak_rss_mib": crate::commands::peak_rss_mib(),
    });
    Ok((cfg, distilled, run))
}
