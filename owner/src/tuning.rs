//! The data owner's side natively: fine-tune adapters on an emulator; and the owner's plug-in.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use scaleot::adapter;
use scaleot::data::{self, DataOptions, Dataset};
use scaleot::emulator::{Emulator, LayerKind};
use scaleot::model::{Llama, LoraConfig};
use scaleot::train::{RunIdentity, TrainConfig, TrainState, Trainer};
use scaleot::weights::HostTensor;
use serde_json::json;

use crate::device::DeviceArgs;
use crate::model_files::{
    default_model, mib, read, read_model, read_pair, weights_beside, write_file,
};
use crate::progress;

#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// The emulator manifest (its .safetensors beside it).
    #[arg(long)]
    emulator: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
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
    /// Cut over-long examples from the start (keeping the learned end) instead of refusing them.
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

/// Mean loss per target token over a set of examples (no gradients): the session's, blocking.
pub fn mean_loss(model: &Llama, examples: &[data::Example], pad: u32, batch: usize) -> Result<f64> {
    futures_lite::future::block_on(scaleot::session::mean_loss(model, examples, pad, batch))?
        .context("no target tokens to evaluate")
}

fn checkpoint_dir(out: &Path) -> PathBuf {
    out.with_extension("ckpt")
}

/// Reads back the adapter layers of a model as HF-named host tensors (the session's, blocking).
fn read_adapters(model: &Llama, plan: &[LayerKind]) -> Result<Vec<(String, HostTensor)>> {
    Ok(futures_lite::future::block_on(
        scaleot::session::read_adapters(model, plan),
    )?)
}

pub fn finetune(a: FinetuneArgs) -> Result<()> {
    let (manifest_json, weights) = read_pair(&a.emulator, "emulator")?;
    let device = a.device.open_autodiff()?;
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
    let identity = RunIdentity {
        emulator_sha256: emu.manifest.weights_sha256.clone(),
        data_sha256: scaleot::sha256_hex(&[&data_bytes]),
        data_options: json!({"seq_len": opts.max_len, "held_out": opts.held_out, "seed": opts.seed, "truncate": opts.truncate}),
        train: cfg.clone(),
        lora: lora.clone(),
    };
    if let Some(dir) = &a.resume {
        let saved: RunIdentity = serde_json::from_slice(&read(
            &dir.join("run.json"),
            "checkpoint identity",
            "the checkpoint folder is incomplete",
        )?)
        .context("the checkpoint's run.json is unreadable")?;
        identity.check_resume(&saved)?;
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
        trainer.resume(model, &adapters, state, Some(&optim))?;
        eprintln!("resumed at step {}", trainer.state.step);
    }
    let pb = progress::bar(cfg.steps as u64, "finetune", "steps");
    pb.set_position(trainer.state.step as u64);
    let start = Instant::now();
    let tokens_at_start = trainer.state.tokens_seen;
    let first_step = trainer.state.step;
    let mut diverged = None;
    while !trainer.finished() {
        let value = crate::read_scalar(trainer.micro_step(&train, pad)?)?;
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
                    save_checkpoint(&ckpt, &trainer, &plan, &identity)?;
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

fn save_checkpoint(
    dir: &Path,
    trainer: &Trainer,
    plan: &[LayerKind],
    identity: &RunIdentity,
) -> Result<()> {
    let tensors = read_adapters(&trainer.model, plan)?;
    let parts: [(&str, Vec<u8>); 4] = [
        ("run.json", serde_json::to_vec_pretty(identity)?),
        (
            "adapters.safetensors",
            scaleot::weights::safetensors::write_tensors(&tensors, "scaleot-checkpoint")?,
        ),
        ("optimizer.bin", trainer.optimizer_record()?),
        ("state.json", serde_json::to_vec_pretty(&trainer.state)?),
    ];
    crate::model_files::write_atomically(dir, &parts)
}

#[derive(clap::Args)]
pub struct PluginArgs {
    /// The full base model (.gguf or HF folder) the emulator was made from.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The adapter returned by the data owner: its .json manifest (weights beside it) or the
    /// single .safetensors file the browser page saves.
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
    let files = crate::model_files::AdapterFiles::read(&a.adapter)?;
    let adapter = files.adapter()?;
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
    #[command(flatten)]
    device: DeviceArgs,
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
    let device = a.device.open_autodiff()?;
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
        let v = crate::read_scalar(trainer.micro_step(&examples, 0)?)?;
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
            "impl": format!("scaleot (burn {} autodiff, f32)", a.device.backend()), "batch": a.batch, "len": a.len, "iters": a.iters,
            "seconds_per_step": secs, "tokens_per_second": (a.batch * a.len) as f64 / secs,
            "peak_rss_mib": crate::commands::peak_rss_mib(),
            "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "loss": loss,
        })
    );
    Ok(())
}
