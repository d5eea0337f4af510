//! One fine-tuning run of the adapters, the one driver of both the browser worker and
//! `scaleot finetune`: an emulator, the private data and the settings in; steps with
//! asynchronous readback (the only kind WebGPU allows; native code blocks on the futures);
//! checkpoints as one file; the adapter out; the run's bookkeeping (rate, ETA, when to
//! checkpoint, the metrics record). It never touches files or the network: the caller owns
//! storage.

use burn::module::Module;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::adapter::{self, AdapterManifest};
use crate::data::{self, DataFormat, DataOptions, Dataset, Example};
use crate::emulator::{Emulator, EmulatorManifest, LayerKind};
use crate::error::{Error, Result};
use crate::eval::loglik::ScoringBatch;
use crate::model::{LayerSlot, Llama, LoraConfig};
use crate::readback::{read_named, read_scalar, read_vec};
use crate::replicas::{
    Alone, Replica, Replicas, add_gradients, read_flat, share_gradients, trainable_values,
};
use crate::train::{RunIdentity, StepReport, TrainConfig, TrainState, Trainer};
use crate::weights::HostTensor;

/// What the data owner sets (on the page, or as `finetune` flags); defaults are the page's, the
/// ones that transferred best natively (LoRA r=8 on every projection of the adapter layers,
/// lr 5e-4).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Settings {
    pub steps: usize,
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub lr: f64,
    pub warmup: usize,
    pub weight_decay: f32,
    /// Clip each gradient tensor's norm to this (burn's rule; None: no clipping).
    pub clip_norm: Option<f32>,
    /// Longest training sequence in tokens (capped by the model's context).
    pub seq_len: usize,
    /// Share of the data held out for the before/after evaluation.
    pub held_out: f64,
    /// LoRA rank on the adapter layers (0: tune the whole adapter layers).
    pub lora_rank: usize,
    /// LoRA alpha; updates are scaled by alpha / rank (None: 2 × rank).
    pub lora_alpha: Option<f64>,
    /// Projections that get LoRA: `all`, or a comma list such as `q_proj,v_proj`.
    pub lora_targets: String,
    pub seed: u64,
    /// Cut over-long examples from the start instead of refusing them.
    pub truncate: bool,
    /// At most this many held-out examples are scored before and after (keeps it quick).
    pub eval_examples: usize,
    /// A checkpoint every this many optimizer steps (0: none on the way).
    pub checkpoint_every: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            steps: 50,
            batch_size: 4,
            grad_accum: 1,
            lr: 5e-4,
            warmup: 5,
            weight_decay: 0.0,
            clip_norm: Some(1.0),
            seq_len: 256,
            held_out: 0.1,
            lora_rank: 8,
            lora_alpha: None,
            lora_targets: "all".into(),
            seed: 0,
            truncate: true,
            eval_examples: 64,
            checkpoint_every: 10,
        }
    }
}

impl Settings {
    fn train_config(&self) -> TrainConfig {
        TrainConfig {
            steps: self.steps,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            lr: self.lr,
            min_lr_ratio: 0.1,
            warmup_steps: self.warmup.min(self.steps),
            weight_decay: self.weight_decay,
            clip_norm: self.clip_norm,
            seed: self.seed,
        }
    }

    fn lora(&self) -> Result<Option<LoraConfig>> {
        let alpha = self.lora_alpha.unwrap_or(2.0 * self.lora_rank as f64);
        (self.lora_rank > 0)
            .then(|| LoraConfig::new(self.lora_rank, alpha, &self.lora_targets))
            .transpose()
    }

    fn data_options(&self, manifest: &EmulatorManifest) -> DataOptions {
        DataOptions {
            max_len: self.seq_len.min(manifest.config.max_position_embeddings),
            held_out: self.held_out,
            seed: self.seed,
            truncate: self.truncate,
        }
    }
}

/// The model a run of `settings` trains on `emu` (LoRA attached where asked, everything but the
/// adapters frozen) and the adapters' stack positions: the session's, and its replicas'.
pub fn training_model(emu: &Emulator, settings: &Settings) -> Result<(Llama, Vec<usize>)> {
    let adapters = emu.adapter_positions();
    let model = match settings.lora()? {
        Some(l) => emu
            .model
            .clone()
            .with_lora(&adapters, &l, settings.seed, None)?,
        None => emu.model.clone(),
    };
    Ok((model.with_trainable_layers(&adapters), adapters))
}

/// A copy of the model a run of `settings` trains, for a helper ([`crate::replicas`]).
pub fn replica(emu: &Emulator, settings: &Settings) -> Result<Replica> {
    let (model, _) = training_model(emu, settings)?;
    Ok(Replica::new(model, emu.tokenizer.eos_id.unwrap_or(0)))
}

/// How much a run will need, shown before training starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Estimate {
    pub emulator_params: u64,
    /// f32 weights on the device.
    pub weight_bytes: u64,
    /// Activations kept for the backward pass of one micro-batch, and one chunk of logits.
    pub activation_bytes: u64,
    /// The largest single activation of a micro-batch (attention scores, the MLP's inner
    /// width, or a chunk of logits): what must fit one GPU buffer.
    pub largest_buffer_bytes: u64,
    pub tokens_per_step: usize,
    /// Arithmetic of the whole run: forward + backward ≈ 6 × parameters × tokens per step
    /// (the gradient flows back through every layer above the first adapter).
    pub total_flops: f64,
    pub train_examples: usize,
    pub train_target_tokens: usize,
    pub held_out_examples: usize,
}

impl Estimate {
    pub fn total_bytes(&self) -> u64 {
        self.weight_bytes + self.activation_bytes
    }

    /// Seconds the run takes at `flops_per_second` of sustained GPU throughput.
    pub fn seconds_at(&self, flops_per_second: f64) -> f64 {
        self.total_flops / flops_per_second
    }
}

fn mib(bytes: f64) -> f64 {
    bytes / 1048576.0
}

/// What a browser tab can hold: wasm32 addresses 4 GiB, and the page needs room besides the model.
pub const BROWSER_MEMORY_BYTES: f64 = 3.0 * 1024.0 * 1024.0 * 1024.0;

/// Refuses an emulator a browser cannot train, before its weights are downloaded: more tab
/// memory than [`BROWSER_MEMORY_BYTES`], or (on a GPU, `max_buffer` = WebGPU's
/// `maxStorageBufferBindingSize`/`maxBufferSize`) an embedding larger than one buffer. The tab
/// keeps the downloaded file; on the CPU fallback it also holds every weight in f32, while on a
/// GPU the weights live in GPU memory and the tab holds only the tensors being uploaded (at most
/// the embedding and a copy of the largest matrix besides it).
pub fn check_fits(manifest: &EmulatorManifest, max_buffer: Option<f64>) -> Result<()> {
    let c = &manifest.config;
    // In f64: on wasm32 the product of a file's dimensions can exceed a 32-bit usize.
    let embedding = c.vocab_size as f64 * c.hidden_size as f64 * 4.0;
    let largest = embedding.max(c.intermediate_size as f64 * c.hidden_size as f64 * 4.0);
    let on_gpu = manifest.weights_bytes as f64 + embedding + 2.0 * largest;
    let on_cpu = manifest.weights_bytes as f64 + manifest.emulator_params as f64 * 4.0;
    let memory = if max_buffer.is_some() { on_gpu } else { on_cpu };
    if memory > BROWSER_MEMORY_BYTES {
        let gib = |bytes: f64| bytes / 1073741824.0;
        let (place, advice) = match max_buffer {
            None if on_gpu <= BROWSER_MEMORY_BYTES => (
                " on the CPU",
                format!(
                    " (with WebGPU its weights would live on the GPU and the page would need about {:.1} GiB: use a browser with WebGPU)",
                    gib(on_gpu)
                ),
            ),
            None => (" on the CPU", String::new()),
            Some(_) => ("", String::new()),
        };
        return Err(Error::Invalid(format!(
            "this emulator is too large for a browser tab{place}: it needs about {:.1} GiB of memory, and a page can hold about {:.0} GiB{advice}. Ask the model owner for a smaller emulator (fewer kept layers, stronger rank compression, f16 frozen weights)",
            gib(memory),
            gib(BROWSER_MEMORY_BYTES)
        )));
    }
    if let Some(limit) = max_buffer.filter(|&l| embedding > l) {
        return Err(Error::Invalid(format!(
            "this emulator is too large for this GPU: its embedding needs {:.0} MiB in one buffer, and this GPU allows {:.0} MiB. Ask the model owner for a smaller emulator (a smaller model or vocabulary) or use a device with a larger GPU",
            mib(embedding),
            mib(limit)
        )));
    }
    Ok(())
}

/// A warning when a micro-batch's largest activation would not fit one GPU buffer of
/// `max_buffer` bytes.
pub fn batch_warning(e: &Estimate, max_buffer: f64) -> Option<String> {
    let largest = e.largest_buffer_bytes as f64;
    (largest > max_buffer).then(|| {
        format!(
            "a batch's largest activation needs {:.0} MiB in one buffer, over this GPU's {:.0} MiB limit: lower the batch size or the sequence length",
            mib(largest),
            mib(max_buffer)
        )
    })
}

/// A training checkpoint: the adapter weights so far with the run's identity, the loop's
/// state and the settings in the safetensors header, and the optimizer's state (Adam's moments,
/// read back asynchronously like the weights, so in a browser too) as the byte tensor
/// [`OPTIMIZER_TENSOR`](crate::optim::OPTIMIZER_TENSOR) — one file, so that storage that writes files atomically (OPFS) never
/// holds half a checkpoint. A resumed run continues exactly as if it had not stopped.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub identity: RunIdentity,
    pub state: TrainState,
    pub settings: Settings,
    /// The optimizer's state ([`crate::optim::encode_state`]), when the checkpoint has one.
    pub optimizer: Option<Vec<u8>>,
    /// The whole file (safetensors).
    pub bytes: Vec<u8>,
}

/// The format tag of a training checkpoint (a sealed file, see
/// [`crate::weights::safetensors::encode_sealed`]).
const CHECKPOINT_FORMAT: &str = "scaleot-checkpoint";

impl Checkpoint {
    /// Reads a checkpoint file; anything else (or a damaged one) is a clear error.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let (meta, file) = crate::weights::safetensors::open_sealed(
            &bytes,
            CHECKPOINT_FORMAT,
            "training checkpoint",
        )?;
        let field = |key: &str| -> Result<serde_json::Value> {
            let text = meta.get(key).ok_or_else(|| {
                Error::Invalid(format!(
                    "this is not a training checkpoint (no `{key}` in its header); start afresh"
                ))
            })?;
            serde_json::from_str(text).map_err(|error| Error::Json {
                what: format!("checkpoint {key}"),
                error,
            })
        };
        let (run, state, settings) = (field("run")?, field("state")?, field("settings")?);
        let optimizer = file
            .tensor(crate::optim::OPTIMIZER_TENSOR)
            .ok()
            .map(|view| view.data().to_vec());
        let json_err = |what: &str| {
            let what = what.to_string();
            move |error| Error::Json { what, error }
        };
        Ok(Self {
            identity: serde_json::from_value(run).map_err(json_err("checkpoint run"))?,
            state: serde_json::from_value(state).map_err(json_err("checkpoint state"))?,
            settings: serde_json::from_value(settings).map_err(json_err("checkpoint settings"))?,
            optimizer,
            bytes,
        })
    }
}

pub struct Session {
    pub manifest: EmulatorManifest,
    pub trainer: Trainer,
    pub identity: RunIdentity,
    pub data: Dataset,
    lora: Option<LoraConfig>,
    adapters: Vec<usize>,
    pad: u32,
    settings: Settings,
}

impl Session {
    /// `emu` must be loaded on an autodiff device; the session trains a copy of its model.
    /// Bad data (empty, malformed, too long) comes back as an error naming the line.
    pub fn new(
        emu: &Emulator,
        data_bytes: &[u8],
        data_name: &str,
        settings: &Settings,
    ) -> Result<Self> {
        let opts = settings.data_options(&emu.manifest);
        let data = data::load(data_bytes, data_name, &emu.tokenizer, &opts)?;
        let cfg = settings.train_config();
        let lora = settings.lora()?;
        let (model, adapters) = training_model(emu, settings)?;
        let trainer = Trainer::new(model, &adapters, cfg.clone(), data.train.len())?;
        let identity = RunIdentity {
            emulator_sha256: emu.manifest.weights_sha256.clone(),
            data_sha256: crate::sha256_hex(&[data_bytes]),
            data_options: json!({"seq_len": opts.max_len, "held_out": opts.held_out, "seed": opts.seed, "truncate": opts.truncate}),
            train: cfg,
            lora: lora.clone(),
        };
        Ok(Self {
            pad: emu.tokenizer.eos_id.unwrap_or(0),
            manifest: emu.manifest.clone(),
            trainer,
            identity,
            data,
            lora,
            adapters,
            settings: settings.clone(),
        })
    }

    /// Device memory a run of these settings needs, roughly (f32 weights and, per micro-batch,
    /// the activations autodiff keeps plus the logits and their gradient).
    pub fn estimate(&self) -> Estimate {
        let c = &self.manifest.config;
        let tokens = self.trainer.cfg.batch_size
            * self
                .data
                .train
                .iter()
                .map(|e| e.ids.len())
                .max()
                .unwrap_or(0);
        let longest = tokens / self.trainer.cfg.batch_size.max(1);
        let layers = self.trainer.model.layers.len() as u64;
        let per_token_layer = (12 * c.hidden_size + 4 * c.intermediate_size) as u64 * 4;
        // The head runs in chunks of rows (`Llama::head_loss`): logits, exponentials and
        // their gradient for one chunk at a time; held-out scoring takes larger chunks.
        let model = &self.trainer.model;
        let logit_chunk = tokens.min(model.head_chunk_rows()) as u64 * c.vocab_size as u64 * 4;
        let scoring_chunk = tokens.min(model.scoring_chunk_rows()) as u64 * c.vocab_size as u64 * 4;
        let attention_scores = tokens as u64 * c.num_attention_heads as u64 * longest as u64 * 4;
        // Each decoder layer's attention keeps its probabilities for the backward pass
        // (`model::attention`).
        let attention_layers = model
            .layers
            .iter()
            .filter(|l| matches!(l, LayerSlot::Decoder(_)))
            .count() as u64;
        let mlp = tokens as u64 * c.intermediate_size as u64 * 4;
        Estimate {
            emulator_params: self.manifest.emulator_params,
            weight_bytes: self.manifest.emulator_params * 4,
            activation_bytes: tokens as u64 * layers * per_token_layer
                + attention_layers * attention_scores
                + 3 * logit_chunk,
            largest_buffer_bytes: scoring_chunk.max(attention_scores).max(mlp),
            tokens_per_step: tokens,
            total_flops: 6.0
                * self.manifest.emulator_params as f64
                * tokens as f64
                * self.trainer.cfg.steps as f64,
            train_examples: self.data.train.len(),
            train_target_tokens: self.data.train_tokens(),
            held_out_examples: self.data.held_out.len(),
        }
    }

    /// Mean loss per target token on (a slice of) the held-out examples; None without any.
    pub async fn held_out_loss(&self) -> Result<Option<f64>> {
        let n = self
            .data
            .held_out
            .len()
            .min(self.settings.eval_examples.max(1));
        mean_loss(
            &self.trainer.model.valid(),
            &self.data.held_out[..n],
            self.pad,
            self.trainer.cfg.batch_size,
        )
        .await
    }

    /// One micro-batch forward and backward, the loss read back, and the optimizer step when
    /// it completes one. A non-finite loss rolls back to the last good weights and errors.
    pub async fn step(&mut self) -> Result<Option<StepReport>> {
        self.step_with(&mut Alone).await
    }

    /// [`Self::step`] with the micro-batch shared out to `replicas` (the trainer computes the
    /// first share while they compute theirs, then adds their gradients to its own).
    pub async fn step_with<R: Replicas>(&mut self, replicas: &mut R) -> Result<Option<StepReport>> {
        if replicas.count() == 0 {
            let loss = self.trainer.micro_step(&self.data.train, self.pad)?;
            let value = read_scalar(loss).await?;
            return self.trainer.complete_micro_step(value);
        }
        let (shares, total) = self
            .trainer
            .next_shares(&self.data.train, replicas.count() + 1)?;
        let model = &self.trainer.model;
        let mut loss = 0.0;
        let grads = if let Some((own, theirs)) = shares.split_first()
            && !theirs.is_empty()
        {
            let version = self.trainer.weights_version();
            let weights = match replicas.holds() == Some(version) {
                true => None,
                false => {
                    Some(read_flat(trainable_values(model).into_iter().map(Some).collect()).await?)
                }
            };
            let theirs = theirs
                .iter()
                .map(|s| s.iter().map(|e| (*e).clone()).collect())
                .collect();
            replicas.hand_out(version, weights, theirs, total)?;
            let (own_loss, mut grads) = share_gradients(model, own, self.pad, total)?;
            loss += read_scalar(own_loss).await?;
            for share in replicas.collect().await? {
                loss += share.loss;
                add_gradients(model, &mut grads, &share.grads)?;
            }
            grads
        } else {
            // One share (a batch of one example): nothing to hand out.
            let (own_loss, grads) = share_gradients(model, &shares[0], self.pad, total)?;
            loss += read_scalar(own_loss).await?;
            grads
        };
        self.trainer.accumulate(grads);
        self.trainer.complete_micro_step(loss)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn finished(&self) -> bool {
        self.trainer.finished()
    }

    pub async fn checkpoint(&self) -> Result<Checkpoint> {
        let tensors = read_adapters(&self.trainer.model, &self.manifest.plan).await?;
        let json = |v: serde_json::Result<String>| {
            v.map_err(|error| Error::Json {
                what: "checkpoint".into(),
                error,
            })
        };
        let (run, state) = (
            json(serde_json::to_string(&self.identity))?,
            json(serde_json::to_string(&self.trainer.state))?,
        );
        let settings = json(serde_json::to_string(&self.settings))?;
        let optimizer = self.trainer.optimizer().device_state();
        let moments = read_named(optimizer.tensors).await?;
        let optimizer = crate::optim::encode_state(&moments, &optimizer.times)?;
        let mut items = crate::weights::safetensors::f32_items(&tensors);
        items.push((
            crate::optim::OPTIMIZER_TENSOR.into(),
            safetensors::Dtype::U8,
            vec![optimizer.len()],
            optimizer.clone(),
        ));
        let bytes = crate::weights::safetensors::encode_sealed(
            &items,
            CHECKPOINT_FORMAT,
            &[("run", &run), ("state", &state), ("settings", &settings)],
        )?;
        Ok(Checkpoint {
            identity: self.identity.clone(),
            state: self.trainer.state.clone(),
            settings: self.settings.clone(),
            optimizer: Some(optimizer),
            bytes,
        })
    }

    /// Continues from a checkpoint of this same run (another run's is refused, naming what
    /// differs). `emulator_weights` are the bundle's safetensors bytes.
    pub fn resume(&mut self, emulator_weights: &[u8], ckpt: &Checkpoint) -> Result<()> {
        self.identity.check_resume(&ckpt.identity)?;
        let device = self.trainer.model.device();
        let model = adapter::checkpointed_model(
            &self.manifest,
            emulator_weights,
            &ckpt.bytes,
            (&self.adapters, self.lora.as_ref()),
            &device,
        )?;
        self.trainer.resume(
            model,
            &self.adapters,
            ckpt.state.clone(),
            ckpt.optimizer.as_deref(),
        )
    }

    /// Trains until the run is finished or the user stops it, the one loop of the page and
    /// the CLI: before each step the host's [`Control`] (a pause saves a checkpoint and waits),
    /// after it the progress line and, when due, a checkpoint. A divergence saves the rolled-back
    /// weights and ends with [`Error::Diverged`]. Returns true when stopped early.
    pub async fn run<H: RunHost>(&mut self, host: &mut H, clock: &mut RunClock) -> Result<bool> {
        self.run_with(host, &mut Alone, clock).await
    }

    /// [`Self::run`] with every micro-batch shared out to `replicas`.
    pub async fn run_with<H: RunHost, R: Replicas>(
        &mut self,
        host: &mut H,
        replicas: &mut R,
        clock: &mut RunClock,
    ) -> Result<bool> {
        while !self.finished() {
            match host.control() {
                Control::Stop => return Ok(true),
                Control::Pause => {
                    host.save(self.checkpoint().await?).await?;
                    host.paused(self.trainer.state.step).await;
                    continue;
                }
                Control::Run => {}
            }
            match self.step_with(replicas).await {
                Ok(Some(r)) => {
                    host.progress(&clock.progress(&r, host.now()));
                    if self.checkpoint_due(r.step) {
                        host.save(self.checkpoint().await?).await?;
                    }
                }
                Ok(None) => {}
                Err(e @ Error::Diverged { .. }) => {
                    host.save(self.checkpoint().await?).await?;
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
            host.between_steps().await;
        }
        Ok(false)
    }

    /// Whether a checkpoint is due after optimizer step `step` (every
    /// [`Settings::checkpoint_every`] steps, not after the last: the adapter is written then).
    pub fn checkpoint_due(&self, step: usize) -> bool {
        let every = self.settings.checkpoint_every;
        every > 0 && step.is_multiple_of(every) && !self.finished()
    }

    /// The adapter to hand back as `(safetensors bytes, manifest)` (`scaleot finetune` writes
    /// both files).
    pub async fn adapter(&self, metrics: &Metrics) -> Result<(Vec<u8>, AdapterManifest)> {
        let tensors = read_adapters(&self.trainer.model, &self.manifest.plan).await?;
        let json = |v: serde_json::Result<serde_json::Value>, what: &str| {
            v.map_err(|error| Error::Json {
                what: what.into(),
                error,
            })
        };
        let train = json(serde_json::to_value(&self.trainer.cfg), "training settings")?;
        let metrics = json(serde_json::to_value(metrics), "training metrics")?;
        adapter::write_adapter(tensors, &self.manifest, self.lora.as_ref(), train, metrics)
    }

    /// The adapter file to hand back from the page: one safetensors file with its manifest in
    /// the header, which `scaleot plugin --adapter FILE` accepts.
    pub async fn adapter_file(&self, metrics: &Metrics) -> Result<Vec<u8>> {
        let (weights, manifest) = self.adapter(metrics).await?;
        adapter::embed_manifest(&weights, &manifest)
    }

    /// What the data looked like, for the metrics record.
    pub fn data_summary(&self) -> DataSummary {
        DataSummary {
            format: self.data.format,
            train_examples: self.data.train.len(),
            train_target_tokens: self.data.train_tokens(),
            held_out_examples: self.data.held_out.len(),
        }
    }

    /// Original indices of the layers being tuned.
    pub fn adapter_layers(&self) -> Vec<usize> {
        crate::emulator::plan::adapter_layers(&self.manifest.plan)
    }
}

/// What the user wants of a run in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Run,
    Pause,
    Stop,
}

/// The world [`Session::run`] lives in: a clock, the user's controls, storage for
/// checkpoints and a display. The page's worker and `scaleot finetune` each implement it.
#[allow(async_fn_in_trait)] // used with concrete hosts only, on one thread
pub trait RunHost {
    /// Seconds on the host's clock.
    fn now(&self) -> f64;
    /// What the user wants now (asked before every step).
    fn control(&self) -> Control {
        Control::Run
    }
    /// Keeps a checkpoint (browser storage, a file).
    async fn save(&mut self, checkpoint: Checkpoint) -> Result<()>;
    /// A finished optimizer step.
    fn progress(&mut self, progress: &Progress);
    /// The run paused after `step` (its checkpoint saved): returns when the user continues
    /// or stops.
    async fn paused(&mut self, _step: usize) {}
    /// Between steps: lets the host's own events in (the page's messages).
    async fn between_steps(&mut self) {}
}

/// What an adapter's manifest records of the run that made it (`metrics`), in the CLI and in
/// the page alike.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    /// Mean loss per target token on the held-out examples, before and after training.
    pub held_out_loss_before: Option<f64>,
    pub held_out_loss_after: Option<f64>,
    /// (optimizer step, mean loss of its micro-batches).
    pub train_losses: Vec<(usize, f32)>,
    pub steps_done: usize,
    /// Of this invocation (a resumed run counts from the resume).
    pub seconds: f64,
    pub tokens_per_second: f64,
    /// Why training stopped early, if it diverged.
    pub diverged: Option<String>,
    /// Where it ran: the page's backend (`WebGPU`, the CPU fallback) or the native device.
    pub backend: Option<String>,
    pub data: Option<DataSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataSummary {
    pub format: DataFormat,
    pub train_examples: usize,
    pub train_target_tokens: usize,
    pub held_out_examples: usize,
}

/// A run's clock-driven bookkeeping, shared by both drivers: progress with tokens/s and ETA
/// measured from the end of this invocation's first step (on a GPU that step is mostly kernel
/// compilation), and the timing part of the metrics. Times are the caller's clock, in seconds.
pub struct RunClock {
    started: f64,
    first_step: usize,
    tokens_at_start: usize,
    /// (time, tokens seen, step) at the end of this invocation's first step.
    steady: Option<(f64, usize, usize)>,
}

/// One optimizer step, as the user sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    pub step: usize,
    pub steps: usize,
    pub loss: f32,
    pub lr: f64,
    pub tokens_per_second: f64,
    pub eta_seconds: f64,
    /// Seconds from the start to the first finished step (kernel compilation included).
    pub first_step_seconds: Option<f64>,
}

impl RunClock {
    /// Starts timing `session` from where it stands (fresh or resumed) at `now`.
    pub fn start(session: &Session, now: f64) -> Self {
        Self {
            started: now,
            first_step: session.trainer.state.step,
            tokens_at_start: session.trainer.state.tokens_seen,
            steady: None,
        }
    }

    /// The progress line of finished step `r` at `now`.
    pub fn progress(&mut self, r: &StepReport, now: f64) -> Progress {
        let (t0, tok0, step0) = *self.steady.get_or_insert((now, r.tokens_seen, r.step));
        let (secs, done, tokens) = if r.step > step0 {
            (
                (now - t0).max(1e-9),
                (r.step - step0) as f64,
                r.tokens_seen - tok0,
            )
        } else {
            (
                (now - self.started).max(1e-9),
                (r.step - self.first_step).max(1) as f64,
                r.tokens_seen - self.tokens_at_start,
            )
        };
        Progress {
            step: r.step,
            steps: r.steps,
            loss: r.loss,
            lr: r.lr,
            tokens_per_second: tokens as f64 / secs,
            eta_seconds: secs / done * (r.steps - r.step) as f64,
            first_step_seconds: (r.step == step0).then_some(now - self.started),
        }
    }

    /// The metrics record of `session` at `now`, with the held-out losses measured around it.
    pub fn metrics(
        &self,
        session: &Session,
        now: f64,
        held_out_loss_before: Option<f64>,
        held_out_loss_after: Option<f64>,
    ) -> Metrics {
        let state = &session.trainer.state;
        let seconds = now - self.started;
        Metrics {
            held_out_loss_before,
            held_out_loss_after,
            train_losses: state.losses.clone(),
            steps_done: state.step,
            seconds,
            tokens_per_second: (state.tokens_seen - self.tokens_at_start) as f64
                / seconds.max(1e-9),
            diverged: None,
            backend: None,
            data: Some(session.data_summary()),
        }
    }
}

/// The adapter tensors of `model` read back to the host under their HF names (whole layers, or
/// only the LoRA factors): what checkpoints and adapter files hold.
pub async fn read_adapters(model: &Llama, plan: &[LayerKind]) -> Result<Vec<(String, HostTensor)>> {
    read_named(adapter::adapter_tensors(model, plan)).await
}

/// Mean loss per target token over `examples`, in batches (no gradients kept).
pub async fn mean_loss(
    model: &Llama,
    examples: &[Example],
    pad: u32,
    batch: usize,
) -> Result<Option<f64>> {
    let mut total = 0.0;
    let mut n = 0usize;
    for chunk in examples.chunks(batch.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let lp = read_vec(ScoringBatch::from_examples(&refs, pad).token_logprobs(model)).await?;
        total -= lp.iter().map(|&x| x as f64).sum::<f64>();
        n += lp.len();
    }
    Ok((n > 0).then(|| total / n as f64))
}
