//! The layer plan of an emulator: what each layer of the original model became.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::frozen::FrozenStorage;
use crate::model::{LayerSource, Llama, LlamaConfig};
use crate::weights::WeightSource;

/// What happened to one decoder layer of the full model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayerKind {
    /// Trainable by the data owner; goes back to the model owner.
    Adapter,
    /// Kept as is, frozen.
    Raw,
    /// Kept with low-rank (SVD) attention projections, frozen.
    LowRank,
    /// Replaced by a small harmonizer network, frozen.
    Harmonizer,
    /// Removed.
    Dropped,
}

impl LayerKind {
    /// What the model loader reads for a layer of this kind, the frozen matrices that a bundle
    /// stores in f16 kept as `frozen` (adapters train; low-rank layers load as f16 factors
    /// multiplied out, which f16 would round again: both stay f32).
    pub fn source(self, frozen: FrozenStorage) -> LayerSource {
        match self {
            Self::Adapter | Self::LowRank => LayerSource::Decoder(FrozenStorage::F32),
            Self::Raw => LayerSource::Decoder(frozen),
            Self::Harmonizer => LayerSource::Harmonizer(frozen),
            Self::Dropped => LayerSource::Absent,
        }
    }
}

/// The model a layer plan describes, built from `src` (the base model, or an emulator
/// bundle's weights): the layers it keeps, under their original names.
pub fn load_plan(
    cfg: &LlamaConfig,
    src: &dyn WeightSource,
    plan: &[LayerKind],
    device: &Device,
) -> Result<Llama> {
    load_plan_storing(cfg, src, plan, FrozenStorage::F32, device)
}

/// [`load_plan`] with the frozen weights (kept raw and harmonizer layers, the embedding, the
/// head) kept as `frozen`: f16 only where `src` holds f16 values, so that nothing changes but
/// their memory.
pub fn load_plan_storing(
    cfg: &LlamaConfig,
    src: &dyn WeightSource,
    plan: &[LayerKind],
    frozen: FrozenStorage,
    device: &Device,
) -> Result<Llama> {
    let layers: Vec<LayerSource> = plan.iter().map(|k| k.source(frozen)).collect();
    Llama::load_layers(cfg, src, &layers, frozen, device)
}

/// Original indices of a plan's adapter layers (the layers being tuned).
pub fn adapter_layers(plan: &[LayerKind]) -> Vec<usize> {
    (0..plan.len())
        .filter(|&i| plan[i] == LayerKind::Adapter)
        .collect()
}

/// `adapters = "2+2"`: the first `bottom` and the last `top` layers are adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterSplit {
    pub bottom: usize,
    pub top: usize,
}

impl AdapterSplit {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "adapters `{s}`: expected BOTTOM+TOP layer counts such as 2+2"
            ))
        };
        let (a, b) = s.split_once('+').ok_or_else(bad)?;
        Ok(Self {
            bottom: a.trim().parse().map_err(|_| bad())?,
            top: b.trim().parse().map_err(|_| bad())?,
        })
    }

    /// Indices of the middle (emulated) layers of an `n`-layer model. Empty when every layer
    /// is an adapter (the full model tuned everywhere: the report's upper bound).
    pub fn middle(&self, n: usize) -> Result<std::ops::Range<usize>> {
        if self.bottom + self.top > n {
            return Err(Error::Invalid(format!(
                "{}+{} adapter layers are more than the {n} layers of the model",
                self.bottom, self.top
            )));
        }
        Ok(self.bottom..n - self.top)
    }
}

impl std::fmt::Display for AdapterSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}+{}", self.bottom, self.top)
    }
}

/// Offsite-Tuning's uniform LayerDrop: adapters at both ends, and `keep` of the middle layers
/// chosen evenly (`idx = round(i·(m−1)/(keep−1))`), the rest dropped.
pub fn uniform_drop(n_layers: usize, split: AdapterSplit, keep: usize) -> Result<Vec<LayerKind>> {
    let middle = split.middle(n_layers)?;
    let m = middle.len();
    if (keep == 0 && m > 0) || keep > m {
        return Err(Error::setting(
            "keep",
            keep,
            format!("choose between 1 and the {m} middle layers"),
        ));
    }
    let mut plan = vec![LayerKind::Dropped; n_layers];
    for (i, kind) in plan.iter_mut().enumerate() {
        if !middle.contains(&i) {
            *kind = LayerKind::Adapter;
        }
    }
    for i in 0..keep {
        let idx = if keep == 1 {
            0
        } else {
            ((i * (m - 1)) as f64 / (keep - 1) as f64).round() as usize
        };
        plan[middle.start + idx] = LayerKind::Raw;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_drop_keeps_ends_of_the_middle() {
        let split = AdapterSplit::parse("2+2").unwrap();
        let plan = uniform_drop(30, split, 13).unwrap();
        assert_eq!(plan.iter().filter(|k| **k == LayerKind::Adapter).count(), 4);
        assert_eq!(plan.iter().filter(|k| **k == LayerKind::Raw).count(), 13);
        assert_eq!(plan[2], LayerKind::Raw);
        assert_eq!(plan[27], LayerKind::Raw);
        assert_eq!(plan[0], LayerKind::Adapter);
        assert_eq!(plan[29], LayerKind::Adapter);
    }

    #[test]
    fn every_layer_can_be_an_adapter_but_not_more() {
        let split = AdapterSplit::parse("15+15").unwrap();
        let plan = uniform_drop(30, split, 0).unwrap();
        assert!(plan.iter().all(|k| *k == LayerKind::Adapter));
        assert!(uniform_drop(30, split, 1).is_err());
        let too_many = AdapterSplit::parse("16+15").unwrap();
        assert!(too_many.middle(30).is_err());
    }

    #[test]
    fn bad_splits_are_errors() {
        assert!(AdapterSplit::parse("2-2").is_err());
        let split = AdapterSplit::parse("3+3").unwrap();
        assert!(uniform_drop(6, split, 1).is_err());
        assert!(uniform_drop(10, split, 5).is_err());
        assert!(uniform_drop(10, split, 0).is_err());
    }
}
