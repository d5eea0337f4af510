//! The adapter training loop, shared by `scaleot finetune` and the browser worker.
//!
//! It is driven from outside, one micro-batch at a time, so that the only synchronisation
//! point — reading the loss back from the device — is the caller's: blocking natively,
//! `into_data_async().await` in the browser:
//!
//! ```text
//! let loss = trainer.micro_step(&data.train, pad)?;   // forward + backward, on the device
//! let value = read(loss);                              // the caller's readback
//! if let Some(report) = trainer.complete_micro_step(value)? { progress(report) }
//! ```

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::data::Example;
use crate::error::{Error, Result};
use crate::model::Llama;
use crate::optim::AdamW;
use crate::replicas::{next_weights_version, share_gradients, split_shares};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub lr: f64,
    /// The cosine schedule ends at `lr * min_lr_ratio`.
    pub min_lr_ratio: f64,
    pub warmup_steps: usize,
    pub weight_decay: f32,
    /// Clip each gradient tensor's norm to this (burn's rule; None: no clipping).
    pub clip_norm: Option<f32>,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 100,
            batch_size: 8,
            grad_accum: 1,
            lr: 1e-4,
            min_lr_ratio: 0.1,
            warmup_steps: 10,
            weight_decay: 0.0,
            clip_norm: Some(1.0),
            seed: 0,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("steps", self.steps),
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
        ] {
            if value == 0 {
                return Err(Error::setting(field, 0, "must be at least 1"));
            }
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::setting("lr", self.lr, "must be positive"));
        }
        Ok(())
    }

    /// Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at the last step.
    pub fn lr_at(&self, step: usize) -> f64 {
        crate::optim::warmup_cosine(
            self.lr,
            self.warmup_steps,
            self.steps,
            self.min_lr_ratio,
            step,
        )
    }
}

/// What a checkpoint belongs to. Resuming against another emulator, other data or other
/// settings would silently train a different run, so a resume compares these first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunIdentity {
    pub emulator_sha256: String,
    pub data_sha256: String,
    /// How the data was read (sequence length, held-out share, seed, truncation).
    pub data_options: serde_json::Value,
    pub train: TrainConfig,
    pub lora: Option<crate::model::LoraConfig>,
}

impl RunIdentity {
    /// Refuses a resume whose checkpoint was made by a different run, naming what differs.
    pub fn check_resume(&self, saved: &RunIdentity) -> Result<()> {
        let mut differs = Vec::new();
        if self.emulator_sha256 != saved.emulator_sha256 {
            differs.push("the emulator");
        }
        if self.data_sha256 != saved.data_sha256 {
            differs.push("the data file");
        }
        if self.data_options != saved.data_options {
            differs.push("the data options (sequence length, held-out share, seed, truncation)");
        }
        // The step count (and the warmup it caps) may change: that extends or shortens a run.
        let comparable = |t: &TrainConfig| TrainConfig {
            steps: 0,
            warmup_steps: 0,
            ..t.clone()
        };
        if comparable(&self.train) != comparable(&saved.train) {
            differs.push("the training settings");
        }
        if self.lora != saved.lora {
            differs.push("the LoRA settings");
        }
        if differs.is_empty() {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "this checkpoint belongs to another run ({} differ): resume with the same emulator, data and settings, or start afresh",
            differs.join(", ")
        )))
    }
}

/// Where the loop stands; saved with checkpoints so that a resumed run continues exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    /// Micro-batches done in the current optimizer step.
    pub micro: usize,
    pub epoch: usize,
    /// Next example position in this epoch's order.
    pub cursor: usize,
    pub tokens_seen: usize,
    /// (step, mean loss of that step's micro-batches).
    pub losses: Vec<(usize, f32)>,
    #[serde(skip)]
    pending: Vec<f32>,
}

/// What one finished optimizer step reports.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: usize,
    pub steps: usize,
    pub loss: f32,
    pub lr: f64,
    pub tokens_seen: usize,
}

pub struct Trainer {
    pub model: Llama,
    pub cfg: TrainConfig,
    pub state: TrainState,
    optim: AdamW,
    accum: GradientsAccumulator<Llama>,
    /// The model before the latest optimizer step: what a divergence rolls back to.
    last_good: Llama,
    n_examples: usize,
    /// The current epoch's example order (epoch, order), computed once per epoch.
    order: (usize, Vec<usize>),
    /// Which state of the trainable weights `model` holds ([`crate::replicas`]).
    weights_version: u64,
}

impl Trainer {
    /// `model` lives on an autodiff device; only the layers at `trainable` stack positions learn
    /// (only their LoRA factors where they carry LoRA).
    pub fn new(
        model: Llama,
        trainable: &[usize],
        cfg: TrainConfig,
        n_examples: usize,
    ) -> Result<Self> {
        cfg.validate()?;
        if n_examples == 0 {
            return Err(Error::Invalid("the training set is empty".into()));
        }
        if trainable.is_empty() {
            return Err(Error::Invalid(
                "no trainable layers: the emulator has no adapters".into(),
            ));
        }
        let model = model.with_trainable_layers(trainable);
        let optim = AdamW::new(cfg.weight_decay, cfg.clip_norm);
        let order = (0, epoch_order(cfg.seed, 0, n_examples));
        Ok(Self {
            last_good: model.clone(),
            model,
            cfg,
            state: TrainState {
                step: 0,
                micro: 0,
                epoch: 0,
                cursor: 0,
                tokens_seen: 0,
                losses: Vec::new(),
                pending: Vec::new(),
            },
            optim,
            accum: GradientsAccumulator::new(),
            order,
            n_examples,
            weights_version: next_weights_version(),
        })
    }

    pub fn finished(&self) -> bool {
        self.state.step >= self.cfg.steps
    }

    fn next_examples<'a>(&mut self, data: &'a [Example]) -> Vec<&'a Example> {
        let mut picked = Vec::with_capacity(self.cfg.batch_size);
        while picked.len() < self.cfg.batch_size {
            if self.state.cursor >= self.n_examples {
                self.state.epoch += 1;
                self.state.cursor = 0;
            }
            if self.order.0 != self.state.epoch {
                self.order = (
                    self.state.epoch,
                    epoch_order(self.cfg.seed, self.state.epoch, self.n_examples),
                );
            }
            picked.push(&data[self.order.1[self.state.cursor]]);
            self.state.cursor += 1;
        }
        picked
    }

    /// Forward and backward on the next micro-batch; gradients are accumulated. Returns the
    /// mean loss per target token, still on the device.
    pub fn micro_step(&mut self, data: &[Example], pad: u32) -> Result<Tensor<1>> {
        let (shares, total_targets) = self.next_shares(data, 1)?;
        let (loss, grads) = share_gradients(&self.model, &shares[0], pad, total_targets)?;
        self.accumulate(grads);
        Ok(loss)
    }

    /// The next micro-batch, split into at most `parts` shares for replicas
    /// ([`crate::replicas::split_shares`]), and its number of target tokens (counted as seen).
    pub fn next_shares<'a>(
        &mut self,
        data: &'a [Example],
        parts: usize,
    ) -> Result<(Vec<Vec<&'a Example>>, usize)> {
        if data.len() != self.n_examples {
            return Err(Error::Invalid(
                "the training set changed under the trainer".into(),
            ));
        }
        if self.finished() {
            return Err(Error::Invalid("training is already finished".into()));
        }
        let examples = self.next_examples(data);
        let total: usize = examples.iter().map(|e| e.target_tokens()).sum();
        if total == 0 {
            return Err(Error::Invalid("a batch without any target tokens".into()));
        }
        self.state.tokens_seen += total;
        Ok((split_shares(&examples, parts), total))
    }

    /// Adds a micro-batch's gradients (all its shares') to the accumulation window.
    pub fn accumulate(&mut self, grads: GradientsParams) {
        self.accum.accumulate(&self.model, grads);
    }

    /// Which state of the trainable weights the model holds: a new value after every change.
    pub fn weights_version(&self) -> u64 {
        self.weights_version
    }

    /// Takes the micro-batch's loss (read back by the caller). Non-finite loss stops training
    /// and rolls the model back to the last good weights. At the end of an accumulation
    /// window the optimizer steps and a report comes back.
    pub fn complete_micro_step(&mut self, loss: f32) -> Result<Option<StepReport>> {
        if !loss.is_finite() {
            self.model = self.last_good.clone();
            self.weights_version = next_weights_version();
            self.accum = GradientsAccumulator::new();
            self.state.pending.clear();
            self.state.micro = 0;
            return Err(Error::non_finite_loss(self.state.step, loss));
        }
        self.state.pending.push(loss);
        self.state.micro += 1;
        if self.state.micro < self.cfg.grad_accum {
            return Ok(None);
        }
        let lr = self.cfg.lr_at(self.state.step);
        let grads = self.accum.grads();
        let scaled = scale_grads(grads, &self.model, 1.0 / self.cfg.grad_accum as f64);
        let before = self.model.clone();
        self.model = self.optim.step(lr, self.model.clone(), scaled);
        self.weights_version = next_weights_version();
        self.last_good = before;
        let mean = self.state.pending.iter().sum::<f32>() / self.state.pending.len() as f32;
        self.state.pending.clear();
        self.state.micro = 0;
        self.state.losses.push((self.state.step, mean));
        self.state.step += 1;
        Ok(Some(StepReport {
            step: self.state.step,
            steps: self.cfg.steps,
            loss: mean,
            lr,
            tokens_seen: self.state.tokens_seen,
        }))
    }

    /// The optimizer (its state goes into checkpoints).
    pub fn optimizer(&self) -> &AdamW {
        &self.optim
    }

    /// Restores a checkpoint: the model's adapter weights come in with `model`, the rest here.
    /// Without `optimizer` state (a checkpoint that has none) Adam's moments start afresh.
    pub fn resume(
        &mut self,
        model: Llama,
        trainable: &[usize],
        state: TrainState,
        optimizer: Option<&[u8]>,
    ) -> Result<()> {
        let damaged = |why: String| {
            Err(Error::Invalid(format!(
                "the checkpoint's training state cannot belong to this run: {why}"
            )))
        };
        if state.step > self.cfg.steps {
            return damaged(format!(
                "it is at step {}, beyond the run's {} steps",
                state.step, self.cfg.steps
            ));
        }
        if state.cursor > self.n_examples {
            return damaged(format!(
                "its data position {} is past the {} training examples",
                state.cursor, self.n_examples
            ));
        }
        if state.micro >= self.cfg.grad_accum || state.losses.len() > state.step {
            return damaged(format!(
                "{} micro-batches into a step of {}, {} losses for {} steps",
                state.micro,
                self.cfg.grad_accum,
                state.losses.len(),
                state.step
            ));
        }
        let model = model.with_trainable_layers(trainable);
        let mut optim = AdamW::new(self.cfg.weight_decay, self.cfg.clip_norm);
        if let Some(saved) = optimizer {
            optim.load_state(saved, &model, &model.device())?;
        }
        self.optim = optim;
        self.model = model;
        self.weights_version = next_weights_version();
        self.last_good = self.model.clone();
        self.state = state;
        self.accum = GradientsAccumulator::new();
        Ok(())
    }
}

/// The example order of an epoch: a seeded shuffle, the same on every run.
fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(
        seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    ));
    order
}

/// Averages accumulated gradients over the accumulation window.
fn scale_grads(grads: GradientsParams, model: &Llama, factor: f64) -> GradientsParams {
    if factor == 1.0 {
        return grads;
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl burn::module::ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.grads.register(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    let mut grads = grads;
    model.visit(&mut Scale {
        grads: &mut grads,
        factor,
    });
    grads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let cfg = TrainConfig {
            steps: 100,
            warmup_steps: 10,
            lr: 1.0,
            min_lr_ratio: 0.1,
            ..TrainConfig::default()
        };
        assert!((cfg.lr_at(0) - 0.1).abs() < 1e-12);
        assert!((cfg.lr_at(9) - 1.0).abs() < 1e-12);
        assert!((cfg.lr_at(10) - 1.0).abs() < 1e-12);
        assert!((cfg.lr_at(100) - 0.1).abs() < 1e-12);
        assert!(cfg.lr_at(50) < cfg.lr_at(20));
    }
}
