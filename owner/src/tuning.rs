//! Offsite-tuning commands: build an emulator, fine-tune adapters on it, plug them in.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use clap::ValueEnum;
use scaleot::adapter::{self, Adapter};
use scaleot::data::{self, DataOptions, Dataset};
use scaleot::emulator::{
    AdapterSplit, BundleSpec, DistillConfig, Distiller, Emulator, FrozenDtype, LayerKind,
    uniform_drop, write_bundle,
};
use scaleot::eval::loglik::ScoringBatch;
use scaleot::model::{Llama, LoraConfig};
use scaleot::train::{TrainConfig, TrainState, Trainer};
use scaleot::weights::{HostTensor, SafetensorsSource, WeightSource};
use serde_json::json;

use crate::model_files::{default_model, read, read_model, read_pair, weights_beside};
use crate::progress;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Method {
    /// Offsite-Tuning's uniform LayerDrop: keep every n-th middle layer.
    UniformDrop,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Precision {
    F16,
    F32,
}

#[derive(clap::Args)]
pub struct EmulatorArgs {
    /// Base model (.gguf or HF folder); default: the fetched SmolLM2-135M.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "uniform-drop")]
    method: Method,
    /// Adapter layers at the bottom and top, e.g. 2+2.
    #[arg(long, default_value = "2+2")]
    adapters: String,
    /// Middle layers to keep (default: half of them).
    #[arg(long)]
    keep: Option<usize>,
    /// Storage precision of the frozen layers (adapters are always f32).
    #[arg(long, value_enum, default_value = "f16")]
    frozen_dtype: Precision,
    /// Output manifest path; the weights go beside it as .safetensors.
    #[arg(long, default_value = "emulator.json")]
    out: PathBuf,
    #[command(flatten)]
    distill: DistillArgs,
}

/// Offsite-Tuning's emulator distillation on the owner's public corpus.
#[derive(clap::Args)]
struct DistillArgs {
    /// Distill the kept middle layers towards the full model's middle block.
    #[arg(long)]
    distill: bool,
    /// Public text files (.txt) to distill on; default: the fetched WordNet glosses.
    #[arg(long, num_args = 1..)]
    corpus: Vec<PathBuf>,
    #[arg(long, default_value_t = 200)]
    distill_steps: usize,
    #[arg(long, default_value_t = 4)]
    distill_batch: usize,
    #[arg(long, default_value_t = 128)]
    distill_seq_len: usize,
    #[arg(long, default_value_t = 1e-4)]
    distill_lr: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn emulator(a: EmulatorArgs) -> Result<()> {
    let base_path = a.model.clone().unwrap_or_else(default_model);
    let bytes = read_model(&base_path)?;
    let opened = bytes.open()?;
    let split = AdapterSplit::parse(&a.adapters)?;
    let n = opened.config.num_hidden_layers;
    let middle = split.middle(n)?.len();
    let keep = a.keep.unwrap_or(middle.div_ceil(2));
    let plan = match a.method {
        Method::UniformDrop => uniform_drop(n, split, keep)?,
    };
    let mut params = json!({"adapters": split.to_string(), "keep": keep});
    let distilled = if a.distill.distill {
        let (tensors, report) = distill(&opened, &plan, split, &a.distill)?;
        params["distill"] = report;
        Some(scaleot::weights::safetensors::write_tensors(
            &tensors,
            "distilled",
        )?)
    } else {
        None
    };
    let distilled_src = distilled
        .as_deref()
        .map(|bytes| SafetensorsSource::new(&[bytes]))
        .transpose()?;
    let weights_src: Box<dyn WeightSource + '_> = match &distilled_src {
        Some(top) => Box::new(scaleot::weights::Overlay {
            top,
            base: opened.source.as_ref(),
        }),
        None => Box::new(BorrowedSource(opened.source.as_ref())),
    };
    let spec = BundleSpec {
        config: &opened.config,
        tokenizer: &opened.tokenizer,
        plan,
        method: "uniform-drop".into(),
        params,
        base_model_sha256: opened.sha256.clone(),
        frozen_dtype: match a.frozen_dtype {
            Precision::F16 => FrozenDtype::F16,
            Precision::F32 => FrozenDtype::F32,
        },
    };
    let (weights, manifest) = write_bundle(spec, weights_src.as_ref())?;
    write_file(&weights_beside(&a.out), &weights)?;
    write_file(&a.out, serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    let count = |k: LayerKind| manifest.plan.iter().filter(|p| **p == k).count();
    println!(
        "emulator {}: {} adapter + {} kept + {} dropped layers",
        a.out.display(),
        count(LayerKind::Adapter),
        count(LayerKind::Raw),
        count(LayerKind::Dropped)
    );
    println!(
        "parameters {:.1}M of {:.1}M ({:.0}%), weights {:.1} MiB, sha256 {}",
        manifest.emulator_params as f64 / 1e6,
        manifest.full_params as f64 / 1e6,
        100.0 * manifest.emulator_params as f64 / manifest.full_params as f64,
        mib(manifest.weights_bytes),
        manifest.weights_sha256
    );
    Ok(())
}

/// A borrowed weight source, boxed beside owned ones.
struct BorrowedSource<'a>(&'a dyn WeightSource);

impl WeightSource for BorrowedSource<'_> {
    fn tensor(&self, hf_name: &str) -> scaleot::Result<Option<HostTensor>> {
        self.0.tensor(hf_name)
    }
}

/// Distills the plan's kept middle layers; returns their tuned tensors (HF names) and a
/// report for the manifest.
fn distill(
    opened: &scaleot::model::OpenedModel<'_>,
    plan: &[LayerKind],
    split: AdapterSplit,
    a: &DistillArgs,
) -> Result<(Vec<(String, HostTensor)>, serde_json::Value)> {
    let device = Device::flex().autodiff();
    let corpus = if a.corpus.is_empty() {
        vec![crate::model_files::assets_dir().join("corpus/wordnet-glosses.txt")]
    } else {
        a.corpus.clone()
    };
    let mut rows: Vec<Vec<u32>> = Vec::new();
    let mut corpus_files = Vec::new();
    for path in &corpus {
        let bytes = read(
            path,
            "corpus",
            "run `bash scripts/fetch-assets.sh` for the default corpus, or pass --corpus FILE.txt",
        )?;
        corpus_files.push(json!({
            "file": path.file_name().map(|n| n.to_string_lossy().into_owned()),
            "bytes": bytes.len(), "sha256": scaleot::sha256_hex(&[&bytes]),
        }));
        let opts = DataOptions {
            max_len: a.distill_seq_len,
            held_out: 0.0,
            seed: a.seed,
            truncate: false,
        };
        let name = format!("{}.txt", path.display());
        let set = data::load(&bytes, &name, &opened.tokenizer, &opts)
            .with_context(|| format!("reading corpus {}", path.display()))?;
        rows.extend(
            set.train
                .into_iter()
                .filter(|e| e.ids.len() == a.distill_seq_len)
                .map(|e| e.ids),
        );
    }
    let needed = a.distill_steps * a.distill_batch;
    if rows.len() < a.distill_batch {
        bail!(
            "the corpus gives {} sequences of {} tokens; distillation needs at least a batch of {}",
            rows.len(),
            a.distill_seq_len,
            a.distill_batch
        );
    }
    let teacher = Llama::load(&opened.config, opened.source.as_ref(), &device)?;
    let student = Llama::load_plan(&opened.config, opened.source.as_ref(), plan, &device)?;
    let cfg = DistillConfig {
        steps: a.distill_steps,
        batch_size: a.distill_batch,
        lr: a.distill_lr,
        warmup_steps: (a.distill_steps / 10).max(1),
    };
    let mut distiller = Distiller::new(teacher, student, plan, split, cfg)?;
    eprintln!(
        "distilling on {} sequences of {} tokens ({} needed for {} steps)",
        rows.len(),
        a.distill_seq_len,
        needed,
        a.distill_steps
    );
    let pb = progress::bar(a.distill_steps as u64, "distill", "steps");
    let start = Instant::now();
    let mut losses = Vec::with_capacity(a.distill_steps);
    for (step, batch) in rows.chunks_exact(a.distill_batch).cycle().enumerate() {
        if distiller.finished() {
            break;
        }
        let loss: f32 = distiller
            .step(batch)?
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?[0];
        if !loss.is_finite() {
            bail!("distillation diverged at step {step} (loss {loss}): lower --distill-lr");
        }
        losses.push(loss);
        pb.inc(1);
        pb.set_message(format!("relative loss {loss:.4}"));
        if pb.is_hidden() && (step + 1) % 20 == 0 {
            eprintln!(
                "distill step {}/{} relative loss {loss:.4}",
                step + 1,
                a.distill_steps
            );
        }
    }
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let mean = |s: &[f32]| s.iter().sum::<f32>() / s.len().max(1) as f32;
    let window = (losses.len() / 10).max(1);
    let (first, last) = (
        mean(&losses[..window]),
        mean(&losses[losses.len() - window..]),
    );
    eprintln!("distilled in {secs:.0}s: relative loss {first:.4} → {last:.4}");
    let student = distiller.student;
    let mut tensors = Vec::new();
    for (slot, &orig) in student.layers.iter().zip(&student.layer_index) {
        if plan[orig] != LayerKind::Raw {
            continue;
        }
        let scaleot::model::LayerSlot::Decoder(layer) = slot else {
            continue;
        };
        for (name, shape, t) in layer.hf_tensors(orig) {
            let data: Vec<f32> = t
                .into_data()
                .try_into_vec()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            tensors.push((name, HostTensor { shape, data }));
        }
    }
    let report = json!({
        "steps": a.distill_steps, "batch": a.distill_batch, "seq_len": a.distill_seq_len,
        "lr": a.distill_lr, "seed": a.seed, "corpus": corpus_files, "relative_loss_first": first,
        "relative_loss_last": last, "seconds": secs, "peak_rss_mib": crate::commands::peak_rss_mib(),
    });
    Ok((tensors, report))
}

#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// The emulator manifest (its .safetensors beside it).
    #[arg(long)]
    emulator: PathBuf,
    /// Private data: .txt, or .jsonl with text / prompt+completion / messages / multiple-choice.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 100)]
    steps: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Clip the gradient norm (0 disables).
    #[arg(long, default_value_t = 1.0)]
    clip: f32,
    /// Longest training sequence in tokens.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Share of the data held out for before/after evaluation.
    #[arg(long, default_value_t = 0.1)]
    held_out: f64,
    /// Cut over-long examples instead of refusing them.
    #[arg(long)]
    truncate: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output adapter manifest; weights go beside it as .safetensors.
    #[arg(long, default_value = "adapter.json")]
    out: PathBuf,
    /// Save a checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 50)]
    checkpoint_every: usize,
    /// Continue from the checkpoint folder of an earlier run with the same settings.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Tune LoRA factors of this rank on the adapter layers' projections (0: whole layers).
    #[arg(long, default_value_t = 0)]
    lora_rank: usize,
    /// LoRA alpha; updates are scaled by alpha / rank (default: 2 × rank).
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// Projections that get LoRA: `all`, or a list such as q_proj,v_proj.
    #[arg(long, default_value = "all")]
    lora_targets: String,
}

/// Mean loss per target token over a set of examples (no gradients).
pub fn mean_loss(model: &Llama, examples: &[data::Example], pad: u32, batch: usize) -> Result<f64> {
    let mut total = 0.0;
    let mut n = 0usize;
    for chunk in examples.chunks(batch.max(1)) {
        let refs: Vec<&data::Example> = chunk.iter().collect();
        let b = ScoringBatch::from_examples(&refs, pad);
        let lp: Vec<f32> = b
            .token_logprobs(model)
            .into_data()
            .try_into_vec()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        total -= lp.iter().map(|&x| x as f64).sum::<f64>();
        n += lp.len();
    }
    if n == 0 {
        bail!("no target tokens to evaluate");
    }
    Ok(total / n as f64)
}

fn checkpoint_dir(out: &Path) -> PathBuf {
    out.with_extension("ckpt")
}

/// Reads back the adapter layers of a model as HF-named host tensors.
fn read_adapters(model: &Llama, plan: &[LayerKind]) -> Result<Vec<(String, HostTensor)>> {
    adapter::adapter_tensors(model, plan)
        .into_iter()
        .map(|(name, shape, t)| {
            let data: Vec<f32> = t
                .into_data()
                .try_into_vec()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            Ok((name, HostTensor { shape, data }))
        })
        .collect()
}

pub fn finetune(a: FinetuneArgs) -> Result<()> {
    let (manifest_json, weights) = read_pair(&a.emulator, "emulator")?;
    let device = Device::flex().autodiff();
    let emu = Emulator::load(&manifest_json, &weights, &device)?;
    let data_bytes = read(&a.data, "data file", "pass your training data with --data")?;
    let name = a
        .data
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let opts = DataOptions {
        max_len: a.seq_len.min(emu.manifest.config.max_position_embeddings),
        held_out: a.held_out,
        seed: a.seed,
        truncate: a.truncate,
    };
    let Dataset {
        format,
        train,
        held_out,
    } = data::load(&data_bytes, &name, &emu.tokenizer, &opts)?;
    let pad = emu.tokenizer.eos_id.unwrap_or(0);
    let train_tokens: usize = train.iter().map(data::Example::target_tokens).sum();
    eprintln!(
        "data: {format:?}, {} train examples ({train_tokens} target tokens), {} held out",
        train.len(),
        held_out.len()
    );
    let cfg = TrainConfig {
        steps: a.steps,
        batch_size: a.batch_size,
        grad_accum: a.grad_accum,
        lr: a.lr,
        min_lr_ratio: 0.1,
        warmup_steps: a.warmup.min(a.steps),
        weight_decay: a.weight_decay,
        clip_norm: (a.clip > 0.0).then_some(a.clip),
        seed: a.seed,
    };
    let lora = (a.lora_rank > 0)
        .then(|| {
            let alpha = a.lora_alpha.unwrap_or(2.0 * a.lora_rank as f64);
            LoraConfig::new(a.lora_rank, alpha, &a.lora_targets)
        })
        .transpose()?;
    let adapters = emu.adapter_positions();
    let before = if held_out.is_empty() {
        None
    } else {
        Some(mean_loss(&emu.model.valid(), &held_out, pad, a.batch_size)?)
    };
    let plan = emu.manifest.plan.clone();
    let model = match &lora {
        Some(l) => emu.model.with_lora(&adapters, l, a.seed, None)?,
        None => emu.model,
    };
    let mut trainer = Trainer::new(model, &adapters, cfg.clone(), train.len())?;
    let ckpt = checkpoint_dir(&a.out);
    if let Some(dir) = &a.resume {
        let state: TrainState = serde_json::from_slice(&read(
            &dir.join("state.json"),
            "checkpoint state",
            "pass the .ckpt folder of an earlier run",
        )?)?;
        let optim = read(
            &dir.join("optimizer.bin"),
            "optimizer state",
            "the checkpoint folder is incomplete",
        )?;
        let adapter_bytes = read(
            &dir.join("adapters.safetensors"),
            "checkpoint adapters",
            "the checkpoint folder is incomplete",
        )?;
        let model = adapter::checkpointed_model(
            &emu.manifest,
            &weights,
            &adapter_bytes,
            (&adapters, lora.as_ref()),
            &device,
        )?;
        trainer.resume(model, &adapters, state, &optim)?;
        eprintln!("resumed at step {}", trainer.state.step);
    }
    let pb = progress::bar(cfg.steps as u64, "finetune", "steps");
    pb.set_position(trainer.state.step as u64);
    let start = Instant::now();
    let tokens_at_start = trainer.state.tokens_seen;
    let first_step = trainer.state.step;
    let mut diverged = None;
    while !trainer.finished() {
        let loss = trainer.micro_step(&train, pad)?;
        let value: f32 = loss
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?[0];
        match trainer.complete_micro_step(value) {
            Ok(Some(r)) => {
                let secs = start.elapsed().as_secs_f64().max(1e-9);
                pb.set_position(r.step as u64);
                let line = format!(
                    "loss {:.4} lr {:.2e} {:.0} tok/s",
                    r.loss,
                    r.lr,
                    (r.tokens_seen - tokens_at_start) as f64 / secs
                );
                // Without a terminal the bar is hidden: log a line every 10 steps instead.
                if pb.is_hidden() && (r.step % 10 == 0 || r.step == r.steps) {
                    let done = r.step - first_step;
                    let eta = secs / done.max(1) as f64 * (r.steps - r.step) as f64;
                    eprintln!("step {}/{} {line} ETA {eta:.0}s", r.step, r.steps);
                }
                pb.set_message(line);
                if a.checkpoint_every > 0 && r.step % a.checkpoint_every == 0 && !trainer.finished()
                {
                    save_checkpoint(&ckpt, &trainer, &plan)?;
                }
            }
            Ok(None) => {}
            Err(e) => {
                diverged = Some(e.to_string());
                break;
            }
        }
    }
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let after = if held_out.is_empty() {
        None
    } else {
        Some(mean_loss(
            &trainer.model.valid(),
            &held_out,
            pad,
            a.batch_size,
        )?)
    };
    let tensors = read_adapters(&trainer.model, &plan)?;
    let metrics = json!({
        "held_out_loss_before": before, "held_out_loss_after": after,
        "train_losses": trainer.state.losses, "steps_done": trainer.state.step,
        "seconds": secs, "tokens_per_second": (trainer.state.tokens_seen - tokens_at_start) as f64 / secs.max(1e-9),
        "diverged": diverged,
        "data": {"format": format, "train_examples": train.len(), "train_target_tokens": train_tokens, "held_out_examples": held_out.len()},
    });
    let (w, m) = adapter::write_adapter(
        tensors,
        &emu.manifest,
        lora.as_ref(),
        serde_json::to_value(&cfg)?,
        metrics,
    )?;
    write_file(&weights_beside(&a.out), &w)?;
    write_file(&a.out, serde_json::to_string_pretty(&m)?.as_bytes())?;
    if let (Some(b), Some(f)) = (before, after) {
        println!("held-out loss {b:.4} → {f:.4}");
    }
    println!(
        "adapter written to {} ({:.1} MiB)",
        a.out.display(),
        mib(w.len() as u64)
    );
    if let Some(d) = diverged {
        bail!("{d}");
    }
    Ok(())
}

fn save_checkpoint(dir: &Path, trainer: &Trainer, plan: &[LayerKind]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let tensors = read_adapters(&trainer.model, plan)?;
    let bytes = scaleot::weights::safetensors::write_tensors(&tensors, "scaleot-checkpoint")?;
    // Write to temporary names first so a crash never leaves a half-written checkpoint.
    let parts: [(&str, Vec<u8>); 3] = [
        ("adapters.safetensors", bytes),
        ("optimizer.bin", trainer.optimizer_record()?),
        ("state.json", serde_json::to_vec_pretty(&trainer.state)?),
    ];
    for (name, data) in &parts {
        std::fs::write(dir.join(format!("{name}.tmp")), data)?;
    }
    for (name, _) in &parts {
        std::fs::rename(dir.join(format!("{name}.tmp")), dir.join(name))?;
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct PluginArgs {
    /// The full base model (.gguf or HF folder) the emulator was made from.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The adapter manifest returned by the data owner.
    #[arg(long)]
    adapter: PathBuf,
    /// Output folder: a Hugging Face checkpoint (config.json, tokenizer.json, model.safetensors).
    #[arg(long)]
    out: PathBuf,
}

pub fn plugin(a: PluginArgs) -> Result<()> {
    let base_path = a.model.clone().unwrap_or_else(default_model);
    let bytes = read_model(&base_path)?;
    let opened = bytes.open()?;
    let (json, weights) = read_pair(&a.adapter, "adapter")?;
    let adapter = Adapter::load(&json, &weights)?;
    adapter.check_base(&opened.sha256)?;
    let merged = adapter.plugged_into(opened.source.as_ref());
    let ckpt = scaleot::weights::safetensors::write_checkpoint(&opened.config, &merged)?;
    std::fs::create_dir_all(&a.out)?;
    write_file(&a.out.join("model.safetensors"), &ckpt)?;
    write_file(
        &a.out.join("config.json"),
        serde_json::to_string_pretty(&opened.config.to_hf_json())?.as_bytes(),
    )?;
    write_file(
        &a.out.join("tokenizer.json"),
        opened.tokenizer.to_hf_json().to_string().as_bytes(),
    )?;
    if let Some(template) = &opened.tokenizer.chat_template {
        let config = json!({"chat_template": template});
        write_file(
            &a.out.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&config)?.as_bytes(),
        )?;
    }
    println!(
        "plugged {} adapter layers{} into {}; checkpoint in {}",
        adapter.manifest.layers.len(),
        match &adapter.manifest.lora {
            Some(l) => format!(" (LoRA r={} alpha={} merged)", l.rank, l.alpha),
            None => String::new(),
        },
        base_path.display(),
        a.out.display()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct BenchTrainArgs {
    /// The emulator manifest.
    #[arg(long)]
    emulator: PathBuf,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    len: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    iters: usize,
}

/// Tokens/s and peak memory of one adapter training step (forward, backward, AdamW) at
/// batch x length, loss on every token; `tools/bench/train_step.sh` runs PyTorch beside it.
pub fn bench_train(a: BenchTrainArgs) -> Result<()> {
    let (json, weights) = read_pair(&a.emulator, "emulator")?;
    let device = Device::flex().autodiff();
    let emu = Emulator::load(&json, &weights, &device)?;
    let vocab = emu.model.vocab_size() as u32;
    let examples: Vec<data::Example> = (0..a.batch)
        .map(|b| {
            let ids: Vec<u32> = (0..a.len)
                .map(|i| ((b * 7919 + i * 104_729) as u32 % (vocab - 17)) + 17)
                .collect();
            data::Example {
                loss: vec![true; ids.len()],
                ids,
            }
        })
        .collect();
    let cfg = TrainConfig {
        steps: a.iters + 1,
        batch_size: a.batch,
        lr: 1e-5,
        warmup_steps: 0,
        ..TrainConfig::default()
    };
    let adapters = emu.adapter_positions();
    let mut trainer = Trainer::new(emu.model, &adapters, cfg, examples.len())?;
    let step = |trainer: &mut Trainer| -> Result<f32> {
        let loss = trainer.micro_step(&examples, 0)?;
        let v = loss
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?[0];
        trainer.complete_micro_step(v)?;
        Ok(v)
    };
    step(&mut trainer)?;
    let start = Instant::now();
    let mut loss = 0.0;
    for _ in 0..a.iters {
        loss = step(&mut trainer)?;
    }
    let secs = start.elapsed().as_secs_f64() / a.iters as f64;
    println!(
        "{}",
        json!({
            "impl": "scaleot (burn flex autodiff, f32)", "batch": a.batch, "len": a.len, "iters": a.iters,
            "seconds_per_step": secs, "tokens_per_second": (a.batch * a.len) as f64 / secs,
            "peak_rss_mib": crate::commands::peak_rss_mib(),
            "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "loss": loss,
        })
    );
    Ok(())
}
