//! Offsite-Tuning's emulator distillation (`--method uniform-drop --distill`): the emulator's
//! kept middle layers learn to do what the full model's whole middle block does — map the
//! bottom adapters' output to the top adapters' input — on the owner's public corpus.
//!
//! Loss, as Offsite-Tuning's published recipe (`run_clm.py --lm_weight 1 --kd_weight 30`):
//! `lm_weight · LM + kd_weight · KD`. KD: squared error of the middle block's output hidden
//! states relative to the teacher's (0 = identical, 1 = as far as predicting zeros). LM: the
//! emulator's own next-token loss through the (frozen) top adapters and head, which is what
//! makes a distillation step cost more than the middle block alone.

use std::collections::HashMap;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::plan::{AdapterSplit, LayerKind, load_plan};
use crate::error::{Error, Result};
use crate::model::{LayerSlot, Llama, OpenedModel, read_named, read_scalar, token_tensor};
use crate::optim::AdamW;
use crate::weights::HostTensor;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DistillConfig {
    pub steps: usize,
    /// Sequences per step.
    pub batch_size: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    /// Weight of the emulator's next-token loss (Offsite-Tuning: 1).
    pub lm_weight: f64,
    /// Weight of the hidden-state loss (Offsite-Tuning: 30).
    pub kd_weight: f64,
}

/// One step's losses, on the device.
pub struct DistillLosses {
    /// Relative squared error of the middle block's output.
    pub kd: Tensor<1>,
    /// The emulator's next-token loss (`None` when its weight is 0: not computed).
    pub lm: Option<Tensor<1>>,
}

/// Teacher (full model, frozen) and student (emulator, middle layers learning) side by side.
pub struct Distiller {
    teacher: Llama,
    pub student: Llama,
    split: AdapterSplit,
    cfg: DistillConfig,
    optim: AdamW,
    pub step: usize,
}

impl Distiller {
    /// Both models on the same autodiff device; `plan` is the student's layer plan.
    pub fn new(
        teacher: Llama,
        student: Llama,
        plan: &[LayerKind],
        split: AdapterSplit,
        cfg: DistillConfig,
    ) -> Result<Self> {
        if cfg.steps == 0 || cfg.batch_size == 0 || !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
            return Err(Error::Invalid(
                "distillation needs at least one step, one sequence per batch and a positive learning rate".into(),
            ));
        }
        let weight_ok = |w: f64| w.is_finite() && w >= 0.0;
        if !(weight_ok(cfg.lm_weight) && weight_ok(cfg.kd_weight))
            || cfg.lm_weight + cfg.kd_weight == 0.0
        {
            return Err(Error::Invalid(
                "distillation loss weights must be finite, not negative, and not both 0".into(),
            ));
        }
        let n = teacher.layers.len();
        if plan.len() != n {
            return Err(Error::Invalid(
                "the teacher must be the full model the emulator plan was made for".into(),
            ));
        }
        if split.middle(n)?.is_empty() {
            return Err(Error::setting(
                "adapters",
                split,
                "leaves no middle layers to distill",
            ));
        }
        let middle: Vec<usize> = (split.bottom..student.layers.len() - split.top).collect();
        let student = student.with_trainable_layers(&middle);
        Ok(Self {
            teacher: teacher.freeze(),
            student,
            split,
            optim: AdamW::new(0.0, Some(1.0)),
            cfg,
            step: 0,
        })
    }

    pub fn finished(&self) -> bool {
        self.step >= self.cfg.steps
    }

    fn lr(&self) -> f64 {
        let warm = self.cfg.warmup_steps.max(1);
        crate::optim::warmup_cosine(self.cfg.lr, warm, self.cfg.steps, 0.0, self.step)
    }

    /// One optimizer step on equal-length token rows; returns its losses, on device.
    pub fn step(&mut self, rows: &[Vec<u32>]) -> Result<DistillLosses> {
        if rows.is_empty() || rows.iter().any(|r| r.len() != rows[0].len() || r.len() < 2) {
            return Err(Error::Invalid(
                "a distillation batch needs rows of equal length, at least 2 tokens".into(),
            ));
        }
        let device = self.student.device();
        let tokens = token_tensor(rows, &device);
        let (b, t) = (self.split.bottom, self.split.top);
        let n_teacher = self.teacher.layers.len();
        let n_student = self.student.layers.len();
        // The bottom adapters are identical in both: their output is the shared input.
        let x = self
            .teacher
            .run_layers(self.teacher.embed(tokens.clone()), 0..b)
            .detach();
        let target = self
            .teacher
            .run_layers(x.clone(), b..n_teacher - t)
            .detach();
        let out = self.student.run_layers(x, b..n_student - t);
        let norm = target.clone().powi_scalar(2).sum_dim(2);
        let err = (out.clone() - target).powi_scalar(2).sum_dim(2);
        let kd = err.div(norm.add_scalar(1e-6)).mean();
        let lm = (self.cfg.lm_weight > 0.0).then(|| {
            let top = self.student.run_layers(out, n_student - t..n_student);
            self.student.next_token_loss(top, tokens, 1, 0)
        });
        let mut loss = kd.clone().mul_scalar(self.cfg.kd_weight);
        if let Some(lm) = &lm {
            loss = loss + lm.clone().mul_scalar(self.cfg.lm_weight);
        }
        let grads = GradientsParams::from_grads(loss.backward(), &self.student);
        let lr = self.lr();
        self.student = self.optim.step(lr, self.student.clone(), grads);
        self.step += 1;
        Ok(DistillLosses {
            kd: kd.detach(),
            lm: lm.map(|l| l.detach()),
        })
    }
}

/// What a whole distillation run leaves: the kept middle layers' tuned tensors (HF names) and
/// the losses at its start and end (means over the first and last tenth of the steps; the LM
/// loss is NaN when its weight is 0).
pub struct Distilled {
    pub tensors: HashMap<String, HostTensor>,
    pub relative_loss_first: f32,
    pub relative_loss_last: f32,
    pub lm_loss_first: f32,
    pub lm_loss_last: f32,
}

/// Offsite-Tuning's distillation of `plan`'s kept middle layers, start to end: teacher = the
/// full model `base`, student = its emulator, `cfg.steps` steps over `rows` (cycled, in
/// batches of `cfg.batch_size`) on an autodiff `device`. `on_step(step, relative loss, LM
/// loss)` follows each step (LM NaN when not computed). Stops with an error on divergence.
pub fn distill(
    base: &OpenedModel<'_>,
    plan: &[LayerKind],
    split: AdapterSplit,
    cfg: DistillConfig,
    rows: &[Vec<u32>],
    device: &Device,
    on_step: &mut dyn FnMut(usize, f32, f32),
) -> Result<Distilled> {
    if rows.len() < cfg.batch_size {
        return Err(Error::Invalid(format!(
            "the corpus gives {} sequences; distillation needs at least a batch of {}",
            rows.len(),
            cfg.batch_size
        )));
    }
    let teacher = Llama::load(&base.config, base.source.as_ref(), device)?;
    let student = load_plan(&base.config, base.source.as_ref(), plan, device)?;
    let steps = cfg.steps;
    let batch_size = cfg.batch_size;
    let mut distiller = Distiller::new(teacher, student, plan, split, cfg)?;
    // Per step: (relative hidden-state loss, next-token loss or NaN when not computed).
    let mut losses: Vec<(f32, f32)> = Vec::with_capacity(steps);
    for (step, batch) in rows.chunks_exact(batch_size).cycle().enumerate() {
        if distiller.finished() {
            break;
        }
        let step_losses = distiller.step(batch)?;
        let kd = read_scalar(step_losses.kd)?;
        let (lm, lm_ok) = match step_losses.lm {
            Some(lm) => {
                let lm = read_scalar(lm)?;
                (lm, lm.is_finite())
            }
            None => (f32::NAN, true),
        };
        if !kd.is_finite() || !lm_ok {
            return Err(Error::Invalid(format!(
                "distillation diverged at step {step} (relative loss {kd}, LM loss {lm}): lower the distillation learning rate"
            )));
        }
        losses.push((kd, lm));
        on_step(step, kd, lm);
    }
    let window = (losses.len() / 10).max(1);
    let mean = |s: &[(f32, f32)], pick: fn(&(f32, f32)) -> f32| {
        s.iter().map(pick).sum::<f32>() / s.len().max(1) as f32
    };
    let (head, tail) = (&losses[..window], &losses[losses.len() - window..]);
    let student = distiller.student;
    let mut tensors = HashMap::new();
    for (slot, &orig) in student.layers.iter().zip(&student.layer_index) {
        let LayerSlot::Decoder(layer) = slot else {
            continue;
        };
        if plan[orig] != LayerKind::Raw {
            continue;
        }
        tensors.extend(read_named(layer.hf_tensors(orig))?);
    }
    Ok(Distilled {
        tensors,
        relative_loss_first: mean(head, |l| l.0),
        relative_loss_last: mean(tail, |l| l.0),
        lm_loss_first: mean(head, |l| l.1),
        lm_loss_last: mean(tail, |l| l.1),
    })
}
