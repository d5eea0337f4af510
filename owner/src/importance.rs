//! `scaleot importance`: the flags of Dynamic LayerReplace (`scaleot::emulator::replace`),
//! progress, and the files: `importance.json` + `importance.safetensors`
//! (`scaleot::emulator::importance`), checkpoints in `importance.ckpt`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use scaleot::emulator::AdapterSplit;
use scaleot::emulator::importance::{RunRecord, checkpoint_file, resume, write_importance};
use scaleot::emulator::replace::{
    HarmonizerLoss, LayerReplace, ReplaceConfig, ReplaceData, Reward, ScoreOn,
};
use scaleot::model::Llama;

use crate::build_emulator::read_corpus;
use crate::device::DeviceArgs;
use crate::model_files::{
    default_model, read, read_model, replace_file, weights_beside, write_file,
};
use crate::progress;

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
    /// report (docs/results.md: "Owner-side cost").
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
    /// Continue from the .ckpt file of an earlier run with the same settings.
    #[arg(long)]
    resume: Option<PathBuf>,
    #[arg(long, default_value = "importance.json")]
    out: PathBuf,
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
    let (rows, corpus) = read_corpus(&a.corpus, &opened.tokenizer, a.seq_len, a.seed)?;
    let data = ReplaceData::split(rows, a.batch, a.val_batch, cfg.score_on)?;
    let device = a.device.open_autodiff()?;
    let model = Llama::load(&opened.config, opened.source.as_ref(), &device)?;
    let middle = cfg.adapters.middle(opened.config.num_hidden_layers)?;
    let ckpt = a.out.with_extension("ckpt");
    let mut run = match &a.resume {
        None => LayerReplace::new(model, cfg.clone(), None)?,
        Some(path) => {
            let saved = read(path, "checkpoint", "pass the .ckpt file of an earlier run")?;
            let run = resume(model, cfg.clone(), &corpus, &saved)?;
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
        data.train.len()
    );
    let pb = progress::bar(cfg.steps as u64, "importance", "steps");
    pb.set_position(run.state.step as u64);
    let start = Instant::now();
    let mut settled = run.state.settled_at;
    run.run(&data, &mut |run, lm, val_loss| {
        let step = run.state.step;
        if settled.is_none()
            && let Some(at) = run.state.settled_at
        {
            settled = Some(at);
            pb.suspend(|| {
                eprintln!(
                    "the ranking settled at iteration {}: scoring stops, the harmonizers train on",
                    at + 1
                )
            });
        }
        pb.set_position(step as u64);
        let line = format!("harmonizer loss {lm:.3} candidates {val_loss:.3}");
        if pb.is_hidden() && (step.is_multiple_of(10) || step == cfg.steps) {
            eprintln!("step {step}/{} {line}", cfg.steps);
        }
        pb.set_message(line);
        if a.checkpoint_every > 0 && step.is_multiple_of(a.checkpoint_every) && !run.finished() {
            let file = checkpoint_file(run, &corpus)?;
            replace_file(&ckpt, &file).map_err(|e| scaleot::Error::Invalid(format!("{e:#}")))?;
        }
        Ok(())
    })?;
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let record = RunRecord {
        base_model_sha256: opened.sha256.clone(),
        corpus,
        seconds: secs,
        peak_rss_mib: crate::commands::peak_rss_mib(),
        batch: a.batch,
        val_batch: data.val.len(),
        seq_len: a.seq_len,
    };
    let (weights, manifest) = write_importance(&run, record)?;
    write_file(&weights_beside(&a.out), &weights)?;
    write_file(&a.out, serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    println!(
        "importance of middle layers {}..{} in {secs:.0}s (most → least important): {:?}",
        middle.start, middle.end, manifest.ranking
    );
    println!("written to {}", a.out.display());
    Ok(())
}
