//! The data owner's side natively: fine-tune adapters on an emulator; and the owner's plug-in.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail};
use futures_lite::future::block_on;
use scaleot::data;
use scaleot::emulator::Emulator;
use scaleot::model::frozen::FrozenStorage;
use scaleot::model::{LoraConfig, ModelBytes};
use scaleot::session::{Checkpoint, Progress, RunClock, RunHost, Session, Settings};
use scaleot::train::{TrainConfig, Trainer};
use serde_json::json;

use crate::command_line::CommandLine;
use crate::device::DeviceArgs;
use crate::model_files::{
    default_model, mib, read, read_model, read_pair, replace_file, weights_beside, write_file,
};
use crate::progress;

#[derive(clap::Args, Debug, PartialEq, serde::Serialize)]
pub struct FinetuneArgs {
    /// The emulator manifest (its .safetensors beside it).
    #[arg(long)]
    pub(crate) emulator: PathBuf,
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) device: DeviceArgs,
    /// Private data: .txt, or .jsonl with text / prompt+completion / messages / multiple-choice.
    #[arg(long)]
    pub(crate) data: PathBuf,
    #[arg(long, default_value_t = 100)]
    pub(crate) steps: usize,
    #[arg(long, default_value_t = 8)]
    pub(crate) batch_size: usize,
    #[arg(long, default_value_t = 1)]
    pub(crate) grad_accum: usize,
    #[arg(long, default_value_t = 1e-4)]
    pub(crate) lr: f64,
    #[arg(long, default_value_t = 10)]
    pub(crate) warmup: usize,
    #[arg(long, default_value_t = 0.0)]
    pub(crate) weight_decay: f32,
    /// Clip each gradient tensor's norm to this (0 disables).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) clip: f32,
    /// Longest training sequence in tokens.
    #[arg(long, default_value_t = 256)]
    pub(crate) seq_len: usize,
    /// Share of the data held out for before/after evaluation.
    #[arg(long, default_value_t = 0.1)]
    pub(crate) held_out: f64,
    /// Cut over-long examples from the start (keeping the learned end) instead of refusing them.
    #[arg(long)]
    pub(crate) truncate: bool,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Output adapter manifest; weights go beside it as .safetensors. A name ending in
    /// .safetensors writes the single file the page saves instead (manifest inside).
    #[arg(long, default_value = "adapter.json")]
    pub(crate) out: PathBuf,
    /// Save a checkpoint (OUT with extension .ckpt) every N steps (0: never).
    #[arg(long, default_value_t = 50)]
    pub(crate) checkpoint_every: usize,
    /// Continue from the .ckpt file of an earlier run with the same settings.
    #[arg(long)]
    pub(crate) resume: Option<PathBuf>,
    /// Tune LoRA factors of this rank on the adapter layers' projections (0: whole layers).
    #[arg(long, default_value_t = 0)]
    pub(crate) lora_rank: usize,
    /// LoRA alpha; updates are scaled by alpha / rank (default: 2 × rank).
    #[arg(long)]
    pub(crate) lora_alpha: Option<f64>,
    /// Projections that get LoRA: `all`, or a list such as q_proj,v_proj.
    #[arg(long, default_value = "all")]
    pub(crate) lora_targets: String,
}

impl FinetuneArgs {
    /// `scaleot finetune --emulator E --data D --out O` with every other flag at its default.
    pub fn new(emulator: PathBuf, data: PathBuf, out: PathBuf) -> Self {
        Self {
            emulator,
            device: DeviceArgs::default(),
            data,
            steps: 100,
            batch_size: 8,
            grad_accum: 1,
            lr: 1e-4,
            warmup: 10,
            weight_decay: 0.0,
            clip: 1.0,
            seq_len: 256,
            held_out: 0.1,
            truncate: false,
            seed: 0,
            out,
            checkpoint_every: 50,
            resume: None,
            lora_rank: 0,
            lora_alpha: None,
            lora_targets: "all".into(),
        }
    }

    /// The command line of this request.
    pub fn command_line(&self) -> CommandLine {
        CommandLine::of("finetune", self)
    }
}

/// `scaleot finetune`'s world for the training loop: a progress bar (or a line every 10 steps
/// without a terminal) and checkpoints in a file, replaced whole.
struct Terminal<'a> {
    start: Instant,
    pb: &'a indicatif::ProgressBar,
    checkpoint: &'a Path,
}

impl RunHost for Terminal<'_> {
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    async fn save(&mut self, checkpoint: Checkpoint) -> scaleot::Result<()> {
        replace_file(self.checkpoint, &checkpoint.bytes)
            .map_err(|e| scaleot::Error::Invalid(format!("{e:#}")))
    }

    fn progress(&mut self, p: &Progress) {
        self.pb.set_position(p.step as u64);
        let line = format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s",
            p.loss, p.lr, p.tokens_per_second
        );
        if self.pb.is_hidden() && (p.step.is_multiple_of(10) || p.step == p.steps) {
            eprintln!(
                "step {}/{} {line} ETA {:.0}s",
                p.step, p.steps, p.eta_seconds
            );
        }
        self.pb.set_message(line);
    }
}

/// The page's training session (`scaleot::session`), driven from the command line: flags in,
/// progress on the terminal, checkpoints and the adapter as files.
pub fn finetune(a: &FinetuneArgs) -> Result<()> {
    let (manifest_json, weights) = read_pair(&a.emulator, "emulator")?;
    let device = a.device.open_autodiff()?;
    let frozen = a.device.frozen_storage(&device);
    let emu = Emulator::load_storing(&manifest_json, &weights, frozen, &device)?;
    let name = a
        .data
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Checked before reading: a file larger than memory must not be read to be refused.
    if let Ok(meta) = std::fs::metadata(&a.data) {
        scaleot::data::check_data_size(&name, meta.len())?;
    }
    let data_bytes = read(&a.data, "data file", "pass your training data with --data")?;
    let settings = Settings {
        steps: a.steps,
        batch_size: a.batch_size,
        grad_accum: a.grad_accum,
        lr: a.lr,
        warmup: a.warmup,
        weight_decay: a.weight_decay,
        clip_norm: (a.clip > 0.0).then_some(a.clip),
        seq_len: a.seq_len,
        held_out: a.held_out,
        lora_rank: a.lora_rank,
        lora_alpha: a.lora_alpha,
        lora_targets: a.lora_targets.clone(),
        seed: a.seed,
        truncate: a.truncate,
        eval_examples: u32::MAX as usize, // all of them (and still a valid wasm32 usize)
        checkpoint_every: a.checkpoint_every,
    };
    let mut session = Session::new(&emu, &data_bytes, &name, &settings)?;
    let summary = session.data_summary();
    eprintln!(
        "data: {:?}, {} train examples ({} target tokens), {} held out",
        summary.format,
        summary.train_examples,
        summary.train_target_tokens,
        summary.held_out_examples
    );
    let before = block_on(session.held_out_loss())?;
    let ckpt = a.out.with_extension("ckpt");
    if let Some(path) = &a.resume {
        let bytes = read(path, "checkpoint", "pass the .ckpt file of an earlier run")?;
        session.resume(&weights, &Checkpoint::from_bytes(bytes)?)?;
        eprintln!("resumed at step {}", session.trainer.state.step);
    }
    let pb = progress::bar(settings.steps as u64, "finetune", "steps");
    pb.set_position(session.trainer.state.step as u64);
    let mut host = Terminal {
        start: Instant::now(),
        pb: &pb,
        checkpoint: &ckpt,
    };
    let mut clock = RunClock::start(&session, host.now());
    let diverged = match block_on(session.run(&mut host, &mut clock)) {
        Ok(_) => None,
        Err(e @ scaleot::Error::Diverged { .. }) => Some(e.to_string()),
        Err(e) => return Err(e.into()),
    };
    pb.finish_and_clear();
    let after = block_on(session.held_out_loss())?;
    let mut metrics = clock.metrics(&session, host.now(), before, after);
    metrics.diverged = diverged.clone();
    metrics.backend = Some(format!("{:?}", a.device.device).to_lowercase());
    let (w, m) = block_on(session.adapter(&metrics))?;
    // Each file whole or not at all; the manifest names the weights' hash, so a crash between
    // the two leaves a pair that `plugin` refuses rather than a mismatched one it accepts.
    if a.out.extension().is_some_and(|e| e == "safetensors") {
        replace_file(&a.out, &scaleot::adapter::embed_manifest(&w, &m)?)?;
    } else {
        replace_file(&weights_beside(&a.out), &w)?;
        replace_file(&a.out, serde_json::to_string_pretty(&m)?.as_bytes())?;
    }
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

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("outputs").required(true).multiple(true).args(["out", "peft", "gguf"])))]
pub struct PluginArgs {
    /// The full base model (.gguf or HF folder) the emulator was made from.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The adapter returned by the data owner: its .json manifest (weights beside it) or the
    /// single .safetensors file the browser page saves.
    #[arg(long)]
    adapter: PathBuf,
    /// Output folder: the plugged model as a Hugging Face checkpoint (transformers'
    /// AutoModelForCausalLM / AutoTokenizer load it).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Output folder: LoRA adapters as a PEFT adapter (`PeftModel.from_pretrained(base, DIR)`
    /// applies them to the full model).
    #[arg(long)]
    peft: Option<PathBuf>,
    /// Output file: the plugged model as GGUF for llama.cpp (see --gguf-type).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Precision of the GGUF's matrices: f16 or q8_0.
    #[arg(long, default_value = "f16")]
    gguf_type: String,
}

/// Writes each (name, bytes) of an export into `dir`.
fn write_folder(dir: &Path, files: &[scaleot::export::File]) -> Result<()> {
    for (name, bytes) in files {
        write_file(&dir.join(name), bytes)?;
    }
    Ok(())
}

pub fn plugin(a: PluginArgs) -> Result<()> {
    // Settings first: a bad one is refused before minutes of work.
    let gguf_type = scaleot::export::GgufPrecision::parse(&a.gguf_type)?;
    let base_path = a.model.clone().unwrap_or_else(default_model);
    let bytes = read_model(&base_path)?;
    let opened = bytes.open()?;
    let files = crate::model_files::AdapterFiles::read(&a.adapter)?;
    let adapter = files.adapter()?;
    adapter.check_base(&opened.sha256)?;
    adapter.check_layers(opened.config.num_hidden_layers)?;
    let described = format!(
        "{} adapter layers{}",
        adapter.manifest.layers.len(),
        match &adapter.manifest.lora {
            Some(l) => format!(" (LoRA r={} alpha={})", l.rank, l.alpha),
            None => String::new(),
        },
    );
    if let Some(dir) = &a.peft {
        let base_name = std::path::absolute(&base_path).unwrap_or(base_path.clone());
        let peft = scaleot::export::peft_adapter(&adapter, &base_name.to_string_lossy())?;
        write_folder(dir, &peft)?;
        println!("{described} as a PEFT adapter in {}", dir.display());
    }
    let merged = adapter.plugged_into(opened.source.as_ref());
    if let Some(dir) = &a.out {
        let folder = scaleot::export::hf_folder(&opened.config, &opened.tokenizer, &merged)?;
        write_folder(dir, &folder)?;
        println!(
            "plugged {described} into {}; Hugging Face checkpoint in {}",
            base_path.display(),
            dir.display()
        );
    }
    if let Some(path) = &a.gguf {
        let base_gguf = match &bytes {
            ModelBytes::Gguf(b) => Some(scaleot::weights::Gguf::parse(b)?.metadata),
            ModelBytes::Hf { .. } => None,
        };
        let file = scaleot::export::gguf_file(
            &opened.config,
            &opened.tokenizer,
            &merged,
            gguf_type,
            base_gguf.as_ref(),
        )?;
        write_file(path, &file)?;
        println!(
            "plugged {described} into {}; GGUF ({}) in {}",
            base_path.display(),
            a.gguf_type.to_ascii_lowercase(),
            path.display()
        );
    }
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
    /// LoRA of this rank on every projection of the adapter layers (alpha 2r, as the page
    /// trains) instead of whole adapter layers; 0: whole layers.
    #[arg(long, default_value_t = 0)]
    lora_rank: usize,
    /// Frozen weights in f32 on a GPU too (by default they stay f16 where the GPU computes with
    /// it, as in the page; the CPU keeps f32).
    #[arg(long)]
    frozen_f32: bool,
    /// Frozen weights' products on a wgpu device with burn's kernel instead of ours
    /// (shaders/matmul_*.wgsl), to compare the two on one device.
    #[arg(long)]
    burn_matmul: bool,
}

/// Tokens/s and peak memory of one adapter training step (forward, backward, AdamW) at
/// batch x length, loss on every token; `tools/bench/train_step.sh` runs PyTorch beside it.
pub fn bench_train(a: BenchTrainArgs) -> Result<()> {
    let (json, weights) = read_pair(&a.emulator, "emulator")?;
    #[cfg(feature = "wgpu")]
    scaleot::model::wgsl_matmul::set_enabled(!a.burn_matmul);
    #[cfg(not(feature = "wgpu"))]
    if a.burn_matmul {
        bail!("--burn-matmul compares kernels on wgpu: build with --features wgpu");
    }
    let device = a.device.open_autodiff()?;
    let storage = if a.frozen_f32 {
        FrozenStorage::F32
    } else {
        a.device.frozen_storage(&device)
    };
    let emu = Emulator::load_storing(&json, &weights, storage, &device)?;
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
    let (model, what) = match a.lora_rank {
        0 => (emu.model, "whole adapter layers".to_string()),
        r => {
            let lora = LoraConfig::new(r, 2.0 * r as f64, "all")?;
            let model = emu.model.with_lora(&adapters, &lora, 0, None)?;
            (
                model,
                format!("LoRA r={r} alpha={} on all projections", 2 * r),
            )
        }
    };
    let mut trainer = Trainer::new(model, &adapters, cfg, examples.len())?;
    let step = |trainer: &mut Trainer| -> Result<f32> {
        let v = crate::read_scalar(trainer.micro_step(&examples, 0)?)?;
        trainer.complete_micro_step(v)?;
        Ok(v)
    };
    let warm_up = Instant::now();
    step(&mut trainer)?;
    let first_step_seconds = warm_up.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut loss = 0.0;
    for _ in 0..a.iters {
        loss = step(&mut trainer)?;
    }
    let secs = start.elapsed().as_secs_f64() / a.iters as f64;
    // The device allocator's pools (GPU backends): they keep the pages of the step's peak.
    let pools = device.memory_pool_usage();
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    println!(
        "{}",
        json!({
            "impl": format!("scaleot (burn {} autodiff, f32)", a.device.backend()), "trains": what,
            "frozen_weights": format!("{storage:?}").to_lowercase(),
            "device_mib_in_use": pools.as_ref().map(|p| mib(p.bytes_in_use)),
            "device_mib_reserved": pools.as_ref().map(|p| mib(p.bytes_reserved)),
            "batch": a.batch, "len": a.len, "iters": a.iters,
            "seconds_per_step": secs, "tokens_per_second": (a.batch * a.len) as f64 / secs,
            "first_step_seconds": first_step_seconds,
            "peak_rss_mib": crate::commands::peak_rss_mib(),
            "threads": crate::commands::bench_threads(),
            "loss": loss,
        })
    );
    Ok(())
}
