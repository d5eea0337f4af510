//! ScaleOT's Dynamic LayerReplace, on the owner's side: one harmonizer per middle layer and an
//! importance score per middle layer, learned together.
//!
//! - Harmonizer step: sample a mask (in each group of `group` middle layers draw
//!   `u_i ~ U(0,1)·p_i` with `p_i = sigmoid(s_i)`, keep the top half, replace the rest by their
//!   harmonizers), run the mixed network on owner text, update only the harmonizers with the
//!   LM loss (raw layers frozen) — or, with [`HarmonizerLoss::Layer`], each harmonizer against
//!   its own raw layer's output on the mixed network's hidden state (a forward pass, no
//!   backward through the raw layers: the cheap option measured against distillation).
//! - RL step: sample `candidates` masks, score each by validation loss `L_j`, reward
//!   `r_j = exp(-L_j) - mean_j exp(-L_j)` (the paper's, [`Reward::Absolute`]) or that divided by
//!   the mean (default, [`Reward::Relative`]), and for every layer kept in candidate `j`:
//!   `s_i += eta · r_j · p_i (1 - p_i)`. The relative form is our choice: at the losses of a
//!   half-replaced network (7-10 nats) `exp(-L)` is ~1e-4 and absolute rewards barely move the
//!   scores; divided by the mean they are `exp(-(L_j - L̄))`-like, independent of the loss level.
//!
//! Important layers end up with high scores (they are kept when they are sampled as kept,
//! and that lowers the loss); the harmonizers learn to stand in for whichever layers get
//! replaced. The assembled emulator replaces the lowest-scored layers.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::plan::AdapterSplit;
use crate::error::{Error, Result};
use crate::model::llama::Positions;
use crate::model::{Harmonizer, Llama, token_tensor};
use crate::optim::AdamW;

/// How candidate losses become rewards.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Reward {
    /// `exp(-L_j) - mean exp(-L)`.
    Absolute,
    /// `exp(-L_j) / mean exp(-L) - 1`.
    Relative,
}

/// Which text the RL step scores its candidate masks on.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreOn {
    /// A held-out validation batch, fixed for the run: `N_c` fresh masks, `N_c` forward passes.
    #[default]
    Validation,
    /// This iteration's training batch, before the harmonizers learn from it (so still unseen
    /// text, a fresh sample each step): the harmonizer step's own mask is candidate 0 and its
    /// forward pass is reused, so an RL step costs `N_c - 1` passes instead of `N_c`.
    Training,
}

/// What the harmonizers learn from.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum HarmonizerLoss {
    /// The mixed network's next-token loss, backpropagated through the frozen raw layers above
    /// each replaced one (the paper's): the harmonizers learn to make up for each other too.
    #[default]
    Lm,
    /// Layer-wise: on the mixed network's hidden state before each middle layer, the
    /// harmonizer's output against the raw layer's (squared error, relative to what the middle
    /// layers add), for every middle layer in every step. One forward pass without the top layers
    /// and the vocabulary head, and no backward through raw layers: about half the step.
    Layer,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplaceConfig {
    pub adapters: AdapterSplit,
    /// Harmonizer rank `r`.
    pub rank: usize,
    /// Middle layers per sampling group `N_g`.
    pub group: usize,
    /// Candidate masks per RL step `N_c`.
    pub candidates: usize,
    /// Iterations; each is one harmonizer step, every `rl_every`-th also one RL step.
    pub steps: usize,
    /// An RL step after every `rl_every`-th harmonizer step (1: after each, as the paper's
    /// description reads; larger values trade score updates for owner-side time).
    #[serde(default = "one")]
    pub rl_every: usize,
    /// LM losses at every `loss_stride`-th position only (1: all positions).
    #[serde(default = "one")]
    pub loss_stride: usize,
    /// Where candidate masks are scored.
    #[serde(default)]
    pub score_on: ScoreOn,
    /// Candidates in antithetic pairs: a mask, then the one keeping what it replaces, so each
    /// pair compares every layer kept against replaced on the same text (variance reduction).
    #[serde(default)]
    pub antithetic: bool,
    /// Stop scoring once the ranking has settled: the layers replaced at each of
    /// [`SETTLE_SHARES`] stayed the same through this many RL steps in a row (0: score to the
    /// end). Harmonizer training goes on, its masks drawn from the settled scores.
    #[serde(default)]
    pub settle: usize,
    /// RL steps only in the first this many iterations (`None`: all of them); the harmonizers
    /// train on to `steps`, their masks drawn from the scores as they were then.
    #[serde(default)]
    pub rl_steps: Option<usize>,
    /// Score learning rate `eta`.
    pub eta: f64,
    pub reward: Reward,
    /// Harmonizer learning rate (AdamW, warmup then cosine).
    pub lr: f64,
    /// The harmonizers' training objective.
    #[serde(default)]
    pub harmonizer_loss: HarmonizerLoss,
    pub seed: u64,
}

impl ReplaceConfig {
    pub fn validate(&self) -> Result<()> {
        for (field, value, least) in [
            ("rank", self.rank, 1),
            ("group", self.group, 2),
            ("candidates", self.candidates, 2),
            ("steps", self.steps, 1),
            ("rl_every", self.rl_every, 1),
            ("loss_stride", self.loss_stride, 1),
        ] {
            if value < least {
                return Err(Error::setting(
                    field,
                    value,
                    format!("must be at least {least}"),
                ));
            }
        }
        if self.rl_steps == Some(0) {
            return Err(Error::setting(
                "rl_steps",
                0,
                "would learn no scores: give at least 1, or leave it out to score every iteration",
            ));
        }
        if self.harmonizer_loss == HarmonizerLoss::Layer && self.score_on == ScoreOn::Training {
            return Err(Error::setting(
                "harmonizer_loss",
                "layer",
                "makes no LM pass for candidates scored on training batches to reuse: score on validation",
            ));
        }
        for (field, value) in [("lr", self.lr), ("eta", self.eta)] {
            if !(value > 0.0 && value.is_finite()) {
                return Err(Error::setting(field, value, "must be positive"));
            }
        }
        Ok(())
    }
}

/// What an iteration with [`ScoreOn::Training`] did.
#[derive(Debug, Clone)]
pub struct TrainingScored {
    /// The harmonizer step's LM loss (= `losses[0]`).
    pub lm: f32,
    /// Mean candidate loss.
    pub mean: f64,
    pub masks: Vec<Vec<bool>>,
    pub losses: Vec<f64>,
}

/// All middle layers' harmonizers, as one module for the optimizer.
#[derive(Module, Debug)]
pub struct Harmonizers {
    pub list: Vec<Harmonizer>,
}

/// What the run saves to continue exactly where it stopped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplaceState {
    pub step: usize,
    pub scores: Vec<f64>,
    /// Per iteration: (harmonizer loss — LM, or layer-wise with [`HarmonizerLoss::Layer`] —,
    /// mean candidate validation loss).
    pub history: Vec<(f32, f64)>,
    /// Per iteration: the scores after it (how the ranking settled).
    #[serde(default)]
    pub score_history: Vec<Vec<f64>>,
    /// RL steps in a row that left the replaced layers at every [`SETTLE_SHARES`] unchanged.
    #[serde(default)]
    pub unchanged_rl_steps: usize,
    /// The iteration whose RL step settled the ranking (no scoring after it).
    #[serde(default)]
    pub settled_at: Option<usize>,
}

/// The shares of replaced middle layers whose choice must hold still for the ranking to count
/// as settled ([`ReplaceConfig::settle`]): the emulator sizes an owner is likely to build.
pub const SETTLE_SHARES: [f64; 3] = [0.25, 0.5, 0.75];

pub struct LayerReplace {
    model: Llama,
    pub harmonizers: Harmonizers,
    pub cfg: ReplaceConfig,
    pub state: ReplaceState,
    optim: AdamW,
    /// Original indices of the middle layers.
    middle: std::ops::Range<usize>,
}

fn one() -> usize {
    1
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl LayerReplace {
    /// `model` is the full model on an autodiff device (it is frozen here); harmonizers start
    /// fresh (or come from `harmonizers` when resuming).
    pub fn new(model: Llama, cfg: ReplaceConfig, harmonizers: Option<Harmonizers>) -> Result<Self> {
        cfg.validate()?;
        let n = model.layers.len();
        if model.layer_index != (0..n).collect::<Vec<_>>() {
            return Err(Error::Invalid(
                "Dynamic LayerReplace starts from the full model, not an emulator".into(),
            ));
        }
        let middle = cfg.adapters.middle(n)?;
        if middle.is_empty() {
            return Err(Error::setting(
                "adapters",
                cfg.adapters,
                "leaves no middle layers to score",
            ));
        }
        let device = model.device();
        let hidden = model.embed_tokens.dims()[1];
        let eps = model.norm.eps;
        let harmonizers = match harmonizers {
            Some(h) if h.list.len() == middle.len() => h,
            Some(_) => {
                return Err(Error::Invalid(
                    "the checkpoint's harmonizers do not match this model's middle layers".into(),
                ));
            }
            None => Harmonizers {
                list: middle
                    .clone()
                    .map(|i| Harmonizer::fresh(i, hidden, cfg.rank, eps, cfg.seed, &device))
                    .collect(),
            },
        };
        Ok(Self {
            model: model.freeze(),
            harmonizers,
            state: ReplaceState {
                step: 0,
                scores: vec![0.0; middle.len()],
                history: Vec::new(),
                score_history: Vec::new(),
                unchanged_rl_steps: 0,
                settled_at: None,
            },
            optim: optimizer(),
            middle,
            cfg,
        })
    }

    pub fn finished(&self) -> bool {
        self.state.step >= self.cfg.steps
    }

    pub fn middle(&self) -> std::ops::Range<usize> {
        self.middle.clone()
    }

    /// `p_i = sigmoid(s_i)` for each middle layer.
    pub fn keep_probabilities(&self) -> Vec<f64> {
        self.state.scores.iter().map(|&s| sigmoid(s)).collect()
    }

    /// A mask over the middle layers (`true` = raw layer kept), drawn from an RNG that
    /// depends only on the seed, the step and the draw: the same run gives the same masks.
    /// `antithetic` keeps, in each group, the layers with the lowest draws instead of the
    /// highest: with even groups, exactly the layers the plain draw replaces.
    fn sample_mask(&self, draw: u64, antithetic: bool) -> Vec<bool> {
        let mut rng = StdRng::seed_from_u64(
            self.cfg.seed ^ (self.state.step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ draw,
        );
        let p = self.keep_probabilities();
        let mut keep = vec![false; p.len()];
        for start in (0..p.len()).step_by(self.cfg.group) {
            let end = (start + self.cfg.group).min(p.len());
            let mut u: Vec<(f64, usize)> = (start..end)
                .map(|i| (rng.random::<f64>() * p[i], i))
                .collect();
            u.sort_by(|a, b| b.0.total_cmp(&a.0));
            if antithetic {
                u.reverse();
            }
            for &(_, i) in u.iter().take((end - start).div_ceil(2)) {
                keep[i] = true;
            }
        }
        keep
    }

    /// The `candidates` masks of an RL step, draws `first..`: independent, or with
    /// [`ReplaceConfig::antithetic`] in pairs (a draw, then its antithetic twin).
    fn candidate_masks(&self, first: u64) -> Vec<Vec<bool>> {
        (0..self.cfg.candidates as u64)
            .map(|j| match self.cfg.antithetic {
                false => self.sample_mask(first + j, false),
                true => self.sample_mask(first + j / 2, j % 2 == 1),
            })
            .collect()
    }

    /// Layer `i` of the mixed network: the raw layer, or its harmonizer where `keep` says so.
    fn mixed_layer(
        &self,
        model: &Llama,
        harmonizers: &Harmonizers,
        keep: &[bool],
        i: usize,
        x: Tensor<3>,
        positions: &Positions,
    ) -> Tensor<3> {
        let middle = &self.middle;
        match middle.contains(&i) && !keep[i - middle.start] {
            true => harmonizers.list[i - middle.start].forward(x),
            false => model.layers[i].forward(x, positions, None),
        }
    }

    /// Mean next-token loss at every `loss_stride`-th position (the vocabulary head is a
    /// third of a mixed network's work; a strided subset, shifted each iteration, estimates
    /// the same mean).
    fn lm_loss(&self, model: &Llama, x: Tensor<3>, tokens: Tensor<2, Int>) -> Tensor<1> {
        model.next_token_loss(x, tokens, self.cfg.loss_stride, self.state.step)
    }

    /// The mixed network's loss on `tokens`: one plain forward pass through every layer.
    fn mixed_loss(
        &self,
        model: &Llama,
        harmonizers: &Harmonizers,
        keep: &[bool],
        tokens: Tensor<2, Int>,
    ) -> Tensor<1> {
        let positions = Self::positions(model, &tokens);
        let mut x = model.embed(tokens.clone());
        for i in 0..model.layers.len() {
            x = self.mixed_layer(model, harmonizers, keep, i, x, &positions);
        }
        self.lm_loss(model, x, tokens)
    }

    fn positions(model: &Llama, tokens: &Tensor<2, Int>) -> Positions {
        model.positions(0, tokens.dims()[1], &tokens.device())
    }

    /// One harmonizer step on `rows` (equal lengths) with the configured
    /// [`HarmonizerLoss`]; returns that loss on the device.
    pub fn harmonizer_step(&mut self, rows: &[Vec<u32>]) -> Result<Tensor<1>> {
        check_rows(rows)?;
        let keep = self.sample_mask(0, false);
        let loss = match self.cfg.harmonizer_loss {
            HarmonizerLoss::Lm => {
                let tokens = token_tensor(rows, &self.model.device());
                self.mixed_loss(&self.model, &self.harmonizers, &keep, tokens)
            }
            HarmonizerLoss::Layer => self.layer_loss(rows, &keep),
        };
        let grads = GradientsParams::from_grads(loss.backward(), &self.harmonizers);
        let lr = self.lr();
        self.harmonizers = self.optim.step(lr, self.harmonizers.clone(), grads);
        Ok(loss.detach())
    }

    /// [`HarmonizerLoss::Layer`] on `rows` along the mixed network of mask `keep`:
    /// `Σ_i |h_i(x_i) - L_i(x_i)|² / Σ_i |L_i(x_i) - x_i|²` over the middle layers, `x_i` the
    /// hidden state the mixed network feeds layer `i` — 1 for fresh harmonizers (identities),
    /// and a layer that adds nothing costs nothing. (AdamW scales each harmonizer's step on
    /// its own, so one shared denominator does not favour the layers that add the most.)
    /// Raw layers run without autodiff; only the harmonizers' small graphs are differentiated.
    fn layer_loss(&self, rows: &[Vec<u32>], keep: &[bool]) -> Tensor<1> {
        let model = self.model.valid();
        let tokens = token_tensor(rows, &model.device());
        let positions = Self::positions(&model, &tokens);
        let mut x = model.run_layers(model.embed(tokens), 0..self.middle.start);
        let (mut errors, mut added) = (Vec::new(), Vec::new());
        for (d, i) in self.middle.clone().enumerate() {
            let raw = model.layers[i].forward(x.clone(), &positions, None);
            added.push((raw.clone() - x.clone()).square().mean());
            let stand_in = self.harmonizers.list[d].forward(x.autodiff());
            errors.push((stand_in.clone() - raw.clone().autodiff()).square().mean());
            x = match keep[d] {
                true => raw,
                false => stand_in.inner(),
            };
        }
        let added = Tensor::cat(added, 0).sum().clamp_min(1e-12).autodiff();
        Tensor::cat(errors, 0).sum() / added
    }

    /// One iteration with [`ScoreOn::Training`]: candidate masks scored on `rows` with the
    /// harmonizers as they are, then the harmonizer step on the same `rows`, whose mask and
    /// forward pass are candidate 0's.
    pub fn harmonizer_and_rl_step(&mut self, rows: &[Vec<u32>]) -> Result<TrainingScored> {
        check_rows(rows)?;
        let masks = self.candidate_masks(0);
        let model = self.model.valid();
        let harmonizers = self.harmonizers.valid();
        let tokens = token_tensor(rows, &model.device());
        let positions = Self::positions(&model, &tokens);
        // The bottom adapters learn nothing here: computed once, without autodiff.
        let bottom = model.run_layers(model.embed(tokens.clone()), 0..self.middle.start);

        let train_tokens = token_tensor(rows, &self.model.device());
        let train_positions = Self::positions(&self.model, &train_tokens);
        let mut x = bottom.clone().autodiff();
        let mut path = Vec::with_capacity(self.middle.len());
        for i in self.middle.clone() {
            x = self.mixed_layer(
                &self.model,
                &self.harmonizers,
                &masks[0],
                i,
                x,
                &train_positions,
            );
            path.push(x.clone().inner());
        }
        let x = self
            .model
            .run_layers(x, self.middle.end..self.model.layers.len());
        let loss = self.lm_loss(&self.model, x, train_tokens);
        let lm = self.read_loss(loss.clone())?;

        let losses = self.score_masks(
            &model,
            &harmonizers,
            &masks,
            bottom,
            tokens,
            &positions,
            Some((path, lm)),
        )?;
        let grads = GradientsParams::from_grads(loss.backward(), &self.harmonizers);
        let lr = self.lr();
        self.harmonizers = self.optim.step(lr, self.harmonizers.clone(), grads);
        let mean = self.update_scores(&masks, &losses);
        Ok(TrainingScored {
            lm: lm as f32,
            mean,
            masks,
            losses,
        })
    }

    /// Whether this iteration ends with an RL step: every `rl_every`-th one does, within the
    /// first `rl_steps` iterations and until the ranking has settled.
    pub fn rl_due(&self) -> bool {
        self.state.settled_at.is_none()
            && self.cfg.rl_steps.is_none_or(|n| self.state.step < n)
            && self.state.step.is_multiple_of(self.cfg.rl_every.max(1))
    }

    /// The middle layers (positions) replaced at each of [`SETTLE_SHARES`], by the current scores.
    fn replaced_sets(&self) -> Vec<Vec<usize>> {
        SETTLE_SHARES
            .iter()
            .filter_map(|&share| least_important(&self.state.scores, 0, share, None).ok())
            .collect()
    }

    /// One RL step on validation `rows`: scores `candidates` masks and updates the scores.
    /// Readback is synchronous (the owner's native binary). Returns the mean candidate loss.
    pub fn rl_step(&mut self, rows: &[Vec<u32>]) -> Result<f64> {
        let (masks, losses) = self.candidate_losses(rows)?;
        Ok(self.update_scores(&masks, &losses))
    }

    /// The score update from candidates' losses; returns their mean loss.
    fn update_scores(&mut self, masks: &[Vec<bool>], losses: &[f64]) -> f64 {
        let replaced_before = self.replaced_sets();
        let utility: Vec<f64> = losses.iter().map(|l| (-l).exp()).collect();
        let mean = utility.iter().sum::<f64>() / utility.len() as f64;
        let p = self.keep_probabilities();
        for (mask, u) in masks.iter().zip(&utility) {
            let reward = match self.cfg.reward {
                Reward::Absolute => u - mean,
                Reward::Relative => u / mean - 1.0,
            };
            for (i, &kept) in mask.iter().enumerate() {
                if kept {
                    self.state.scores[i] += self.cfg.eta * reward * p[i] * (1.0 - p[i]);
                }
            }
        }
        self.state.unchanged_rl_steps = match self.replaced_sets() == replaced_before {
            true => self.state.unchanged_rl_steps + 1,
            false => 0,
        };
        if self.cfg.settle > 0 && self.state.unchanged_rl_steps >= self.cfg.settle {
            self.state.settled_at = Some(self.state.step);
        }
        losses.iter().sum::<f64>() / losses.len() as f64
    }

    /// This step's candidate masks and their validation losses on `rows`.
    pub fn candidate_losses(&self, rows: &[Vec<u32>]) -> Result<(Vec<Vec<bool>>, Vec<f64>)> {
        check_rows(rows)?;
        let model = self.model.valid();
        let harmonizers = self.harmonizers.valid();
        let tokens = token_tensor(rows, &model.device());
        let positions = Self::positions(&model, &tokens);
        let masks = self.candidate_masks(1);
        let bottom = model.run_layers(model.embed(tokens.clone()), 0..self.middle.start);
        let losses = self.score_masks(
            &model,
            &harmonizers,
            &masks,
            bottom,
            tokens,
            &positions,
            None,
        )?;
        Ok((masks, losses))
    }

    /// The losses of `masks` on `tokens`, from the bottom adapters' output `bottom`.
    ///
    /// Candidates share work exactly: masks are visited in order so each continues from the
    /// hidden state where it parts from the previous one, a mask drawn twice is scored once,
    /// and `known` — mask 0's hidden states after each middle layer and its loss, from a pass
    /// already made — costs nothing. The losses are the ones separate forward passes give.
    #[allow(clippy::too_many_arguments)]
    fn score_masks(
        &self,
        model: &Llama,
        harmonizers: &Harmonizers,
        masks: &[Vec<bool>],
        bottom: Tensor<3>,
        tokens: Tensor<2, Int>,
        positions: &Positions,
        mut known: Option<(Vec<Tensor<3>>, f64)>,
    ) -> Result<Vec<f64>> {
        let mut order: Vec<usize> = (0..masks.len()).collect();
        order.sort_by(|&a, &b| masks[a].cmp(&masks[b]).then(a.cmp(&b)));
        // `path[d]`: the previous candidate's hidden state after middle layer `d`.
        let mut path: Vec<Tensor<3>> = Vec::with_capacity(self.middle.len());
        let mut previous: Option<(usize, f64)> = None;
        let mut losses = vec![0.0f64; masks.len()];
        for &j in &order {
            if j == 0
                && let Some((known_path, loss)) = known.take()
            {
                path = known_path;
                losses[0] = loss;
                previous = Some((0, loss));
                continue;
            }
            let shared = match previous {
                Some((k, _)) => masks[j]
                    .iter()
                    .zip(&masks[k])
                    .take_while(|(a, b)| a == b)
                    .count(),
                None => 0,
            };
            if let Some((_, loss)) = previous.filter(|_| shared == self.middle.len()) {
                losses[j] = loss;
                continue;
            }
            path.truncate(shared);
            let mut x = path.last().cloned().unwrap_or_else(|| bottom.clone());
            for d in shared..self.middle.len() {
                x = self.mixed_layer(
                    model,
                    harmonizers,
                    &masks[j],
                    self.middle.start + d,
                    x,
                    positions,
                );
                path.push(x.clone());
            }
            let x = model.run_layers(x, self.middle.end..model.layers.len());
            losses[j] = self.read_loss(self.lm_loss(model, x, tokens.clone()))?;
            previous = Some((j, losses[j]));
        }
        Ok(losses)
    }

    /// The validation loss of one mask by a plain forward pass of the whole mixed network
    /// (the reference that [`LayerReplace::candidate_losses`] must equal).
    pub fn mask_loss(&self, rows: &[Vec<u32>], keep: &[bool]) -> Result<f64> {
        check_rows(rows)?;
        let model = self.model.valid();
        let harmonizers = self.harmonizers.valid();
        let tokens = token_tensor(rows, &model.device());
        self.read_loss(self.mixed_loss(&model, &harmonizers, keep, tokens))
    }

    /// A loss read back to the host (synchronously); a non-finite one is divergence.
    fn read_loss(&self, loss: Tensor<1>) -> Result<f64> {
        let value: Vec<f32> = loss
            .into_data()
            .try_into_vec()
            .map_err(|e| Error::Invalid(format!("reading a loss back: {e:?}")))?;
        match value.first() {
            Some(v) if v.is_finite() => Ok(*v as f64),
            _ => Err(Error::non_finite_loss(
                self.state.step,
                value.first().copied().unwrap_or(f32::NAN),
            )),
        }
    }

    /// One whole iteration on training `batch`: the harmonizer step, then the RL step when one
    /// is due — on the held-out `val` rows, or on `batch` itself with [`ScoreOn::Training`] —
    /// recorded with [`LayerReplace::complete_step`]. Returns what the history records: the
    /// harmonizer LM loss and the latest mean candidate loss.
    pub fn iterate(&mut self, batch: &[Vec<u32>], val: &[Vec<u32>]) -> Result<(f32, f64)> {
        let (lm, scored) = match (self.rl_due(), self.cfg.score_on) {
            (true, ScoreOn::Training) => {
                let scored = self.harmonizer_and_rl_step(batch)?;
                (scored.lm, Some(scored.mean))
            }
            (rl_due, _) => {
                let loss = self.harmonizer_step(batch)?;
                let lm = self.read_loss(loss)? as f32;
                let scored = match rl_due {
                    true => Some(self.rl_step(val)?),
                    false => None,
                };
                (lm, scored)
            }
        };
        // Iterations without an RL step repeat the latest candidate loss in the history.
        let latest = self.state.history.last().map_or(f64::NAN, |h| h.1);
        let val_loss = scored.unwrap_or(latest);
        self.complete_step(lm, val_loss)?;
        Ok((lm, val_loss))
    }

    /// Records a finished iteration.
    pub fn complete_step(&mut self, lm_loss: f32, val_loss: f64) -> Result<()> {
        if !lm_loss.is_finite() {
            return Err(Error::non_finite_loss(self.state.step, lm_loss));
        }
        self.state.history.push((lm_loss, val_loss));
        self.state.score_history.push(self.state.scores.clone());
        self.state.step += 1;
        Ok(())
    }

    fn lr(&self) -> f64 {
        let warm = (self.cfg.steps / 10).max(1);
        crate::optim::warmup_cosine(self.cfg.lr, warm, self.cfg.steps, 0.1, self.state.step)
    }

    /// The optimizer's state, for checkpoints.
    pub fn optimizer_record(&self) -> Result<Vec<u8>> {
        crate::optim::save(&self.optim)
    }

    /// Continues from a checkpoint (harmonizers come in through [`LayerReplace::new`]).
    pub fn resume(&mut self, state: ReplaceState, saved_optimizer: &[u8]) -> Result<()> {
        if state.scores.len() != self.middle.len() {
            return Err(Error::Invalid(
                "the checkpoint's scores do not match this model's middle layers".into(),
            ));
        }
        let mut optim = optimizer();
        optim.load_state(saved_optimizer, &self.harmonizers, &self.model.device())?;
        self.optim = optim;
        self.state = state;
        Ok(())
    }

    pub fn device(&self) -> Device {
        self.model.device()
    }
}

/// The owner's corpus rows as a run uses them: training rows taken `batch` at a time in turn,
/// and the last `val_batch` rows held out to score candidates on (none when they are scored
/// on the training batches).
pub struct ReplaceData {
    pub train: Vec<Vec<u32>>,
    pub val: Vec<Vec<u32>>,
    pub batch: usize,
}

impl ReplaceData {
    pub fn split(
        mut rows: Vec<Vec<u32>>,
        batch: usize,
        val_batch: usize,
        score_on: ScoreOn,
    ) -> Result<Self> {
        let val_batch = match score_on {
            ScoreOn::Validation => val_batch,
            ScoreOn::Training => 0,
        };
        if batch == 0 {
            return Err(Error::setting("batch", 0, "must be at least 1"));
        }
        if rows.len() < batch + val_batch {
            return Err(Error::Invalid(format!(
                "the corpus gives {} sequences; need at least {} (a batch of {batch} and {val_batch} held out)",
                rows.len(),
                batch + val_batch
            )));
        }
        let val = rows.split_off(rows.len() - val_batch);
        Ok(Self {
            train: rows,
            val,
            batch,
        })
    }

    /// The training batch of iteration `step` (the batches in turn, cycling).
    pub fn batch_at(&self, step: usize) -> &[Vec<u32>] {
        let batches = self.train.len() / self.batch;
        let k = step % batches.max(1);
        &self.train[k * self.batch..(k + 1) * self.batch]
    }
}

impl LayerReplace {
    /// Runs the remaining iterations on `data`; `after_each(run, harmonizer loss, candidate
    /// loss)` follows every one (progress, checkpoints).
    pub fn run(
        &mut self,
        data: &ReplaceData,
        after_each: &mut dyn FnMut(&LayerReplace, f32, f64) -> Result<()>,
    ) -> Result<()> {
        while !self.finished() {
            let (lm, val_loss) = self.iterate(data.batch_at(self.state.step), &data.val)?;
            after_each(self, lm, val_loss)?;
        }
        Ok(())
    }
}

fn optimizer() -> AdamW {
    AdamW::new(0.0, Some(1.0))
}

fn check_rows(rows: &[Vec<u32>]) -> Result<()> {
    if rows.is_empty() || rows[0].len() < 2 || rows.iter().any(|r| r.len() != rows[0].len()) {
        return Err(Error::Invalid(
            "a batch needs rows of equal length, at least 2 tokens".into(),
        ));
    }
    Ok(())
}

/// Which middle layers (original indices) the `alpha` share with the lowest scores is:
/// globally, or the same share within each group of `group` layers.
pub fn least_important(
    scores: &[f64],
    middle_start: usize,
    alpha: f64,
    group: Option<usize>,
) -> Result<Vec<usize>> {
    if !(0.0..1.0).contains(&alpha) {
        return Err(Error::setting("alpha", alpha, "must be in [0, 1)"));
    }
    let pick = |idx: &mut Vec<usize>, count: usize| -> Vec<usize> {
        idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
        idx.iter().take(count).map(|i| i + middle_start).collect()
    };
    let mut out = match group {
        None => {
            let count = (alpha * scores.len() as f64).round() as usize;
            pick(&mut (0..scores.len()).collect(), count)
        }
        Some(g) => (0..scores.len())
            .step_by(g.max(1))
            .flat_map(|start| {
                let end = (start + g.max(1)).min(scores.len());
                let count = (alpha * (end - start) as f64).round() as usize;
                pick(&mut (start..end).collect(), count)
            })
            .collect(),
    };
    out.sort();
    Ok(out)
}
