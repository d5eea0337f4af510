//! `scaleot importance`: Dynamic LayerReplace on the owner's side — harmonizers for every
//! middle layer and RL-learned importance scores — with progress, checkpoints and resume.
//! Writes `importance.json` (scores, ranking, settings, history) and `importance.safetensors`
//! (the harmonizers), which `scaleot emulator --method scaleot|dynamic-drop` assembles from.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use scaleot::emulator::AdapterSplit;
use scaleot::emulator::replace::{
    HarmonizerLoss, Harmonizers, LayerReplace, ReplaceConfig, ReplaceState, Reward, ScoreOn,
};
use scaleot::model::{Harmonizer, Llama};
use scaleot::weights::safetensors::write_tensors;
use scaleot::weights::{HostTensor, SafetensorsSource, WeightSource};
use serde::{Deserialize, Serialize};

use crate::build_emulator::corpus_rows;
use crate::device::DeviceArgs;
use crate::model_files::{default_model, read, read_model, read_pair, weights_beside, write_file};
use crate::progress;

pub const FORMAT: &str = "scaleot-importance/1";

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ScoreOnArg {
    Validation,
    Training,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum HarmonizerLossArg {
    Lm,
    Layer,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum RewardArg {
    Relative,
    Absolute,
}

#[derive(clap::Args)]
pub struct ImportanceArgs {
    /// Base model (.gguf or HF folder); default: the fetched SmolLM2-135M.
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
    /// Public text files (.txt); default: the fetched WordNet glosses.
    #[arg(long, num_args = 1..)]
    corpus: Vec<PathBuf>,
    #[arg(long, default_value = "2+2")]
    adapters: String,
    /// Harmonizer rank.
    #[arg(long, default_value_t = 64)]
    rank: usize,
    /// Middle layers per sampling group (N_g).
    #[arg(long, default_value_t = 4)]
    group: usize,
    /// Candidate masks per RL step (N_c).
    #[arg(long, default_value_t = 4)]
    candidates: usize,
    /// Iterations (one harmonizer step each; an RL step after every --rl-every-th).
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// RL step (scoring --candidates masks) after every N-th harmonizer step. Scale --eta by
    /// the same factor: the scores then drift as far as with an RL step every iteration. The
    /// default, 4 with --eta 4, costs 0.81x the wall time of Offsite-Tuning's distillation on
    /// SmolLM2-135M; `--rl-every 1 --eta 1` (the paper's description, 1.49x) made the committed
    /// report (README: "Owner-side cost").
    #[arg(long, default_value_t = 4)]
    rl_every: usize,
    /// Language-model losses (harmonizer training and candidate scores) at every N-th
    /// position only: less vocabulary-head work, the same expected loss.
    #[arg(long, default_value_t = 1)]
    loss_stride: usize,
    /// Score learning rate (per RL step; see --rl-every).
    #[arg(long, default_value_t = 4.0)]
    eta: f64,
    /// Reward: relative (exp(-L_j)/mean - 1, default) or absolute (exp(-L_j) - mean, the paper's).
    #[arg(long, value_enum, default_value = "relative")]
    reward: RewardArg,
    /// Harmonizer learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// What the harmonizers learn from: `lm` (the mixed network's next-token loss, through the
    /// frozen layers above them; the paper's) or `layer` (each harmonizer against its raw
    /// layer's output on the mixed network's hidden state; no backward through raw layers or
    /// the vocabulary head, about half the harmonizer step).
    #[arg(long, value_enum, default_value = "lm")]
    harmonizer_loss: HarmonizerLossArg,
    /// Sequences per harmonizer step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Where RL candidates are scored: `validation` (--val-batch held-out sequences, N_c
    /// passes) or `training` (each step's batch before the harmonizers learn from it; the
    /// harmonizer step's pass is candidate 0, so N_c - 1 extra passes).
    #[arg(long, value_enum, default_value = "validation")]
    score_on: ScoreOnArg,
    /// Candidates in antithetic pairs: each mask followed by the one that keeps the layers it
    /// replaces (within each group), a paired comparison on the same text.
    #[arg(long)]
    antithetic: bool,
    /// Stop scoring once the ranking has settled: the layers replaced at α = 0.25, 0.5 and 0.75
    /// unchanged through N RL steps in a row (0: score every step). The harmonizers keep
    /// training to --steps; a settled run skips the candidate passes that remain.
    #[arg(long, default_value_t = 0)]
    settle: usize,
    /// Score only in the first N iterations (default: all); the harmonizers keep training to
    /// --steps with masks drawn from the scores as they were then.
    #[arg(long)]
    rl_steps: Option<usize>,
    /// Held-out sequences that score the RL candidates (with --score-on validation).
    #[arg(long, default_value_t = 4)]
    val_batch: usize,
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save a checkpoint every N iterations (0: never).
    #[arg(long, default_value_t = 20)]
    checkpoint_every: usize,
    /// Continue from the .ckpt folder of an earlier run with the same settings.
    #[arg(long)]
    resume: Option<PathBuf>,
    #[arg(long, default_value = "importance.json")]
    out: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportanceManifest {
    pub format: String,
    pub base_model_sha256: String,
    pub config: ReplaceConfig,
    /// Original index of the first middle layer; `scores[k]` belongs to layer `middle_start + k`.
    pub middle_start: usize,
    pub scores: Vec<f64>,
    pub keep_probabilities: Vec<f64>,
    /// Middle layers from most to least important.
    pub ranking: Vec<usize>,
    pub history: Vec<(f32, f64)>,
    /// The scores after each iteration.
    #[serde(default)]
    pub score_history: Vec<Vec<f64>>,
    /// The iteration whose RL step settled the ranking (`--settle`); no scoring after it.
    #[serde(default)]
    pub settled_at: Option<usize>,
    pub corpus: serde_json::Value,
    pub seconds: f64,
    pub peak_rss_mib: Option<f64>,
    /// Sequences per harmonizer step, per RL scoring, and their length (for cost comparisons).
    #[serde(default)]
    pub batch: Option<usize>,
    #[serde(default)]
    pub val_batch: Option<usize>,
    #[serde(default)]
    pub seq_len: Option<usize>,
    pub weights_sha256: String,
}

/// A read importance file: manifest + harmonizer weights, integrity-checked.
pub struct ImportanceFile {
    pub manifest: ImportanceManifest,
    pub sha256: String,
    weights: Vec<u8>,
}

impl ImportanceFile {
    pub fn read(path: &Path) -> Result<Self> {
        let (json, weights) = read_pair(path, "importance file")?;
        let manifest: ImportanceManifest = serde_json::from_str(&json)
            .with_context(|| format!("{} is not an importance manifest", path.display()))?;
        if manifest.format != FORMAT {
            bail!(
                "{} has format `{}`, expected {FORMAT}",
                path.display(),
                manifest.format
            );
        }
        let sha256 = scaleot::sha256_hex(&[&weights]);
        if sha256 != manifest.weights_sha256 {
            bail!(
                "the harmonizer weights beside {} are corrupted (sha256 mismatch): run `scaleot importance` again",
                path.display()
            );
        }
        Ok(Self {
            manifest,
            sha256,
            weights,
        })
    }

    /// Refuses scores made for another model or another adapter split.
    pub fn check(
        &self,
        base_sha256: &str,
        split: AdapterSplit,
        middle: std::ops::Range<usize>,
    ) -> Result<()> {
        if self.manifest.base_model_sha256 != base_sha256 {
            bail!(
                "the importance scores belong to another base model: run `scaleot importance` on this one"
            );
        }
        if self.manifest.config.adapters != split
            || self.manifest.middle_start != middle.start
            || self.manifest.scores.len() != middle.len()
        {
            bail!(
                "the importance scores were made with --adapters {}; use the same split",
                self.manifest.config.adapters
            );
        }
        Ok(())
    }

    pub fn tensor(&self, name: &str) -> Result<HostTensor> {
        SafetensorsSource::new(&[&self.weights])?
            .tensor(name)?
            .with_context(|| format!("the importance file lacks {name}"))
    }
}

fn harmonizer_tensors(h: &Harmonizers, middle_start: usize) -> Result<Vec<(String, HostTensor)>> {
    let mut out = Vec::new();
    for (k, harmonizer) in h.list.iter().enumerate() {
        for (name, shape, t) in harmonizer.hf_tensors(middle_start + k) {
            out.push((
                name,
                HostTensor {
                    shape,
                    data: crate::read_vec(t)?,
                },
            ));
        }
    }
    Ok(out)
}

fn load_harmonizers(
    src: &dyn WeightSource,
    middle: std::ops::Range<usize>,
    hidden: usize,
    eps: f64,
    device: &Device,
) -> Result<Harmonizers> {
    let list = middle
        .map(|i| Harmonizer::load(src, i, hidden, eps, device))
        .collect::<scaleot::Result<Vec<_>>>()?;
    Ok(Harmonizers { list })
}

pub fn importance(a: ImportanceArgs) -> Result<()> {
    let base_path = a.model.clone().unwrap_or_else(default_model);
    let bytes = read_model(&base_path)?;
    let opened = bytes.open()?;
    let cfg = ReplaceConfig {
        adapters: AdapterSplit::parse(&a.adapters)?,
        rank: a.rank,
        group: a.group,
        candidates: a.candidates,
        steps: a.steps,
        rl_every: a.rl_every,
        loss_stride: a.loss_stride,
        score_on: match a.score_on {
            ScoreOnArg::Validation => ScoreOn::Validation,
            ScoreOnArg::Training => ScoreOn::Training,
        },
        antithetic: a.antithetic,
        settle: a.settle,
        rl_steps: a.rl_steps,
        eta: a.eta,
        reward: match a.reward {
            RewardArg::Relative => Reward::Relative,
            RewardArg::Absolute => Reward::Absolute,
        },
        lr: a.lr,
        harmonizer_loss: match a.harmonizer_loss {
            HarmonizerLossArg::Lm => HarmonizerLoss::Lm,
            HarmonizerLossArg::Layer => HarmonizerLoss::Layer,
        },
        seed: a.seed,
    };
    cfg.validate()?;
    let (mut rows, corpus) = corpus_rows(&a.corpus, &opened.tokenizer, a.seq_len, a.seed)?;
    let val_batch = match cfg.score_on {
        ScoreOn::Validation => a.val_batch,
        ScoreOn::Training => 0,
    };
    if rows.len() < a.batch + val_batch {
        bail!(
            "the corpus gives {} sequences of {} tokens; need at least {} (--batch + --val-batch)",
            rows.len(),
            a.seq_len,
            a.batch + val_batch
        );
    }
    let val = rows.split_off(rows.len() - val_batch);
    let device = a.device.open_autodiff()?;
    let model = Llama::load(&opened.config, opened.source.as_ref(), &device)?;
    let middle = cfg.adapters.middle(opened.config.num_hidden_layers)?;
    let ckpt = a.out.with_extension("ckpt");
    let mut run = match &a.resume {
        None => LayerReplace::new(model, cfg.clone(), None)?,
        Some(dir) => {
            let hint = "pass the .ckpt folder of an earlier run";
            let saved = read(
                &dir.join("harmonizers.safetensors"),
                "checkpoint harmonizers",
                hint,
            )?;
            let src = SafetensorsSource::new(&[&saved])?;
            let h = load_harmonizers(
                &src,
                middle.clone(),
                opened.config.hidden_size,
                opened.config.rms_norm_eps,
                &device,
            )?;
            let saved: serde_json::Value =
                serde_json::from_slice(&read(&dir.join("run.json"), "checkpoint identity", hint)?)?;
            let same_steps = |c: &ReplaceConfig| ReplaceConfig {
                steps: 0,
                ..c.clone()
            };
            let saved_cfg: ReplaceConfig = serde_json::from_value(saved["config"].clone())
                .context("the checkpoint's run.json is unreadable")?;
            if same_steps(&saved_cfg) != same_steps(&cfg) || saved["corpus"] != corpus {
                bail!(
                    "this checkpoint belongs to another run (other settings or corpus): resume with the same ones, or start afresh"
                );
            }
            let mut run = LayerReplace::new(model, cfg.clone(), Some(h))?;
            let state: ReplaceState =
                serde_json::from_slice(&read(&dir.join("state.json"), "checkpoint state", hint)?)?;
            let optim = read(&dir.join("optimizer.bin"), "optimizer state", hint)?;
            run.resume(state, &optim)?;
            eprintln!("resumed at step {}", run.state.step);
            run
        }
    };
    eprintln!(
        "Dynamic LayerReplace: {} middle layers, groups of {}, {} candidates, {} iterations on {} sequences",
        middle.len(),
        cfg.group,
        cfg.candidates,
        cfg.steps,
        rows.len()
    );
    let pb = progress::bar(cfg.steps as u64, "importance", "steps");
    pb.set_position(run.state.step as u64);
    let start = Instant::now();
    let batches: Vec<&[Vec<u32>]> = rows.chunks_exact(a.batch).collect();
    while !run.finished() {
        let batch = batches[run.state.step % batches.len()];
        let settling = run.state.settled_at.is_none();
        let (lm, val_loss) = run.iterate(batch, &val)?;
        let step = run.state.step;
        if settling && let Some(at) = run.state.settled_at {
            pb.suspend(|| {
                eprintln!(
                    "the ranking settled at iteration {}: scoring stops, the harmonizers train on",
                    at + 1
                )
            });
        }
        pb.set_position(step as u64);
        let line = format!("harmonizer loss {lm:.3} candidates {val_loss:.3}");
        if pb.is_hidden() && (step % 10 == 0 || step == cfg.steps) {
            eprintln!("step {step}/{} {line}", cfg.steps);
        }
        pb.set_message(line);
        if a.checkpoint_every > 0 && step % a.checkpoint_every == 0 && !run.finished() {
            save_checkpoint(&ckpt, &run, middle.start, &corpus)?;
        }
    }
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let tensors = harmonizer_tensors(&run.harmonizers, middle.start)?;
    let weights = write_tensors(&tensors, FORMAT)?;
    let scores = run.state.scores.clone();
    let mut ranking: Vec<usize> = (0..scores.len()).collect();
    ranking.sort_by(|&x, &y| scores[y].total_cmp(&scores[x]));
    let manifest = ImportanceManifest {
        format: FORMAT.into(),
        base_model_sha256: opened.sha256.clone(),
        config: cfg,
        middle_start: middle.start,
        keep_probabilities: run.keep_probabilities(),
        ranking: ranking.iter().map(|k| k + middle.start).collect(),
        scores,
        history: run.state.history.clone(),
        score_history: run.state.score_history.clone(),
        settled_at: run.state.settled_at,
        corpus,
        seconds: secs,
        peak_rss_mib: crate::commands::peak_rss_mib(),
        batch: Some(a.batch),
        val_batch: (val_batch > 0).then_some(val_batch),
        seq_len: Some(a.seq_len),
        weights_sha256: scaleot::sha256_hex(&[&weights]),
    };
    write_file(&weights_beside(&a.out), &weights)?;
    write_file(&a.out, serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    println!(
        "importance of middle layers {}..{} in {secs:.0}s (most → least important): {:?}",
        middle.start, middle.end, manifest.ranking
    );
    println!("written to {}", a.out.display());
    Ok(())
}

fn save_checkpoint(
    dir: &Path,
    run: &LayerReplace,
    middle_start: usize,
    corpus: &serde_json::Value,
) -> Result<()> {
    let tensors = harmonizer_tensors(&run.harmonizers, middle_start)?;
    let identity = serde_json::json!({"config": run.cfg, "corpus": corpus});
    let parts: [(&str, Vec<u8>); 4] = [
        ("run.json", serde_json::to_vec_pretty(&identity)?),
        (
            "harmonizers.safetensors",
            write_tensors(&tensors, "scaleot-checkpoint")?,
        ),
        ("optimizer.bin", run.optimizer_record()?),
        ("state.json", serde_json::to_vec_pretty(&run.state)?),
    ];
    crate::model_files::write_atomically(dir, &parts)
}
