//! Emulator recipes: every way this project turns the full model into an emulator, as one
//! typed description, and its assembly into a bundle.
//!
//! 1. [`Recipe::plan`]: which layer becomes what — Offsite-Tuning's uniform LayerDrop, or the
//!    `alpha` share of least important middle layers (scores from Dynamic LayerReplace)
//!    dropped (Dynamic LayerDrop) or replaced by their harmonizers (ScaleOT).
//! 2. Optionally [`Assembly::add_distilled`] (Offsite-Tuning's distillation, [`super::distill`]).
//! 3. Optionally [`Assembly::compress`]: Selective Rank Compression of the kept middle layers.
//! 4. [`Assembly::write`]: the bundle (weights + manifest).

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use super::bundle::{BundleSpec, EmulatorManifest, FrozenDtype, write_bundle};
use super::distill::{DistillConfig, Distilled};
use super::importance::ImportanceFile;
use super::plan::{AdapterSplit, LayerKind, uniform_drop};
use super::rank::{Compression, SrcRule};
use super::replace::least_important;
use crate::error::{Error, Result};
use crate::model::OpenedModel;
use crate::names;
use crate::weights::{HostTensor, HostTensors, Overlay};

/// How the middle layers are thinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Offsite-Tuning's uniform LayerDrop: middle layers kept evenly spaced.
    UniformDrop,
    /// The least important middle layers dropped, no harmonizers (needs importance scores).
    DynamicDrop,
    /// ScaleOT: harmonizers replace the least important middle layers (needs importance).
    ScaleOt,
}

impl Method {
    /// The name manifests and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Self::UniformDrop => "uniform-drop",
            Self::DynamicDrop => "dynamic-drop",
            Self::ScaleOt => "scaleot",
        }
    }

    pub fn needs_importance(self) -> bool {
        self != Self::UniformDrop
    }
}

/// How the `alpha` share is chosen from the importance scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    /// The alpha share of all middle layers with the lowest scores.
    Global,
    /// The alpha share within each importance group.
    Group,
}

/// A whole emulator recipe.
#[derive(Clone, Debug)]
pub struct Recipe {
    pub method: Method,
    pub adapters: AdapterSplit,
    /// Uniform LayerDrop: middle layers kept (default: the `1 - alpha` share).
    pub keep: Option<usize>,
    /// Share of middle layers dropped or replaced.
    pub alpha: f64,
    /// Selective Rank Compression: share of singular values kept (1 = none).
    pub beta: f64,
    /// The attention projections SRC factors (`q_proj`, ...).
    pub src_projections: Vec<&'static str>,
    /// How SRC chooses each matrix's rank.
    pub src_rule: SrcRule,
    pub select: Select,
    /// Storage precision of the frozen layers (adapters are always f32).
    pub frozen_dtype: FrozenDtype,
}

/// A recipe on its way to a bundle: the plan, the tensors that differ from the base model
/// (harmonizers, distilled layers, low-rank factors) and the manifest's `params`.
pub struct Assembly {
    pub plan: Vec<LayerKind>,
    pub tensors: HashMap<String, HostTensor>,
    pub params: serde_json::Value,
    /// Dynamic LayerReplace's keep probability per middle layer (empty without importance).
    pub keep_probability: BTreeMap<usize, f64>,
}

impl Recipe {
    /// Checks the settings that need no model.
    pub fn validate(&self) -> Result<()> {
        check_beta(self.beta)?;
        if self.src_rule != SrcRule::Share && self.beta >= 1.0 {
            return Err(Error::setting(
                "src_rule",
                self.src_rule.name(),
                "chooses ranks for Selective Rank Compression: give a beta below 1",
            ));
        }
        if !(0.0..1.0).contains(&self.alpha) {
            return Err(Error::setting("alpha", self.alpha, "must be in [0, 1)"));
        }
        Ok(())
    }

    /// Step 1: the layer plan for `base`, with the harmonizers it needs from `importance`
    /// (required for Dynamic LayerDrop and ScaleOT, checked against `base` and the split).
    pub fn plan(
        &self,
        base: &OpenedModel<'_>,
        importance: Option<&ImportanceFile>,
    ) -> Result<Assembly> {
        self.validate()?;
        let split = self.adapters;
        let n = base.config.num_hidden_layers;
        let middle = split.middle(n)?;
        let mut tensors = HashMap::new();
        let mut keep_probability = BTreeMap::new();
        let mut params = json!({"adapters": split.to_string(), "beta": self.beta});
        let plan = match self.method {
            Method::UniformDrop => {
                let dropped = (self.alpha * middle.len() as f64).round() as usize;
                let keep = self.keep.unwrap_or(middle.len() - dropped);
                params["keep"] = json!(keep);
                uniform_drop(n, split, keep)?
            }
            Method::DynamicDrop | Method::ScaleOt => {
                let imp = importance.ok_or_else(|| {
                    Error::setting(
                        "importance",
                        "none",
                        format!(
                            "{} needs the importance scores of Dynamic LayerReplace",
                            self.method.name()
                        ),
                    )
                })?;
                imp.check(&base.sha256, split, middle.clone())?;
                keep_probability = (middle.clone())
                    .zip(imp.manifest.keep_probabilities.iter().copied())
                    .collect();
                let group = (self.select == Select::Group).then_some(imp.manifest.config.group);
                let replaced =
                    least_important(&imp.manifest.scores, middle.start, self.alpha, group)?;
                let kind = match self.method {
                    Method::ScaleOt => LayerKind::Harmonizer,
                    _ => LayerKind::Dropped,
                };
                let mut plan = uniform_drop(n, split, middle.len())?;
                for &i in &replaced {
                    plan[i] = kind;
                    if kind == LayerKind::Harmonizer {
                        for name in names::harmonizer_tensors(i) {
                            let t = imp.tensor(&name)?;
                            tensors.insert(name, t);
                        }
                    }
                }
                params["alpha"] = json!(self.alpha);
                params["select"] = json!(match self.select {
                    Select::Global => "global",
                    Select::Group => "group",
                });
                params["replaced"] = json!(replaced);
                params["importance_sha256"] = json!(imp.sha256);
                plan
            }
        };
        Ok(Assembly {
            plan,
            tensors,
            params,
            keep_probability,
        })
    }
}

impl Assembly {
    /// Step 2 (uniform LayerDrop only): the distilled middle layers replace the base's, and the
    /// manifest records the run (`run`: corpus, seed, sequence length, seconds, memory).
    pub fn add_distilled(
        &mut self,
        recipe: &Recipe,
        cfg: &DistillConfig,
        distilled: Distilled,
        run: serde_json::Value,
    ) -> Result<()> {
        if recipe.method != Method::UniformDrop {
            return Err(Error::setting(
                "distill",
                recipe.method.name(),
                "distillation is Offsite-Tuning's baseline: use it with uniform-drop",
            ));
        }
        let mut report = json!({
            "steps": cfg.steps, "batch": cfg.batch_size, "lr": cfg.lr,
            "lm_weight": cfg.lm_weight, "kd_weight": cfg.kd_weight,
            "relative_loss_first": distilled.relative_loss_first,
            "relative_loss_last": distilled.relative_loss_last,
            "lm_loss_first": finite_or_null(distilled.lm_loss_first),
            "lm_loss_last": finite_or_null(distilled.lm_loss_last),
        });
        if let (Some(obj), Some(extra)) = (report.as_object_mut(), run.as_object()) {
            obj.extend(extra.clone());
        }
        self.params["distill"] = report;
        self.tensors.extend(distilled.tensors);
        Ok(())
    }

    /// Step 3's compression: Selective Rank Compression as `recipe` asks, reading this
    /// assembly's importance.
    pub fn compression<'a>(&'a self, recipe: &'a Recipe) -> Compression<'a> {
        compression(recipe, &self.keep_probability)
    }

    /// Step 3: Selective Rank Compression at `recipe.beta` (nothing at 1); `on_matrix`
    /// follows each SVD.
    #[cfg(not(target_family = "wasm"))]
    pub fn compress(
        &mut self,
        recipe: &Recipe,
        base: &OpenedModel<'_>,
        on_matrix: &mut dyn FnMut(),
    ) -> Result<()> {
        if recipe.beta >= 1.0 {
            return Ok(());
        }
        let ranks = compression(recipe, &self.keep_probability).apply(
            &mut self.plan,
            &mut self.tensors,
            base.source.as_ref(),
            on_matrix,
        )?;
        self.params["src_rule"] = json!(recipe.src_rule.name());
        self.params["src_ranks"] = json!(ranks);
        Ok(())
    }

    /// Step 4: the bundle, `(safetensors bytes, manifest)`.
    pub fn write(
        self,
        recipe: &Recipe,
        base: &OpenedModel<'_>,
    ) -> Result<(Vec<u8>, EmulatorManifest)> {
        let tensors = HostTensors(self.tensors);
        let weights = Overlay {
            top: &tensors,
            base: base.source.as_ref(),
        };
        let spec = BundleSpec {
            config: &base.config,
            tokenizer: &base.tokenizer,
            plan: self.plan,
            method: recipe.method.name().into(),
            params: self.params,
            base_model_sha256: base.sha256.clone(),
            frozen_dtype: recipe.frozen_dtype,
        };
        write_bundle(spec, &weights)
    }
}

/// `recipe`'s Selective Rank Compression with the keep probabilities of its plan.
fn compression<'a>(
    recipe: &'a Recipe,
    keep_probability: &'a BTreeMap<usize, f64>,
) -> Compression<'a> {
    Compression {
        beta: recipe.beta,
        rule: recipe.src_rule,
        projections: &recipe.src_projections,
        importance: (!keep_probability.is_empty()).then_some(keep_probability),
    }
}

/// Checks `beta`, the share of singular values Selective Rank Compression keeps: in (0, 1].
pub fn check_beta(beta: f64) -> Result<()> {
    if !(beta > 0.0 && beta <= 1.0) {
        return Err(Error::setting("beta", beta, "must be in (0, 1]"));
    }
    Ok(())
}

/// JSON has no NaN: a loss that was not computed is `null`.
fn finite_or_null(x: f32) -> serde_json::Value {
    if x.is_finite() {
        json!(x)
    } else {
        serde_json::Value::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_out_of_range_name_their_field() {
        let recipe = Recipe {
            method: Method::UniformDrop,
            adapters: AdapterSplit { bottom: 2, top: 2 },
            keep: None,
            alpha: 0.5,
            beta: 1.0,
            src_projections: vec!["q_proj"],
            src_rule: SrcRule::Share,
            select: Select::Global,
            frozen_dtype: FrozenDtype::F16,
        };
        assert!(recipe.validate().is_ok());
        for (bad, field) in [
            (
                Recipe {
                    beta: 0.0,
                    ..recipe.clone()
                },
                "beta",
            ),
            (
                Recipe {
                    beta: 1.5,
                    ..recipe.clone()
                },
                "beta",
            ),
            (
                Recipe {
                    src_rule: SrcRule::Energy,
                    ..recipe.clone()
                },
                "src_rule",
            ),
            (
                Recipe {
                    alpha: 1.0,
                    ..recipe.clone()
                },
                "alpha",
            ),
        ] {
            match bad.validate() {
                Err(Error::Setting { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected a {field} error, got {other:?}"),
            }
        }
    }
}
