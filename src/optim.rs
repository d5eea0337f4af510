//! What every training loop here shares: AdamW with global-norm clipping, its state as bytes
//! for checkpoints, and the warmup + cosine learning-rate schedule.

use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, ModuleOptimizer, OptimizerRecord};

use crate::error::{Error, Result};

/// AdamW; `clip_norm` clips the global gradient norm.
pub fn adamw(weight_decay: f32, clip_norm: Option<f32>) -> ModuleOptimizer {
    AdamWConfig::new()
        .with_weight_decay(weight_decay)
        .with_grad_clipping(clip_norm.map(GradientClippingConfig::Norm))
        .init()
}

/// The optimizer's state (Adam moments) as bytes.
pub fn save(optim: &ModuleOptimizer) -> Result<Vec<u8>> {
    let bytes = optim
        .to_record()
        .into_bytes()
        .map_err(|e| Error::Invalid(format!("saving optimizer state: {e:?}")))?;
    Ok(bytes.to_vec())
}

/// `fresh` with the state saved by [`save`].
pub fn restore(fresh: ModuleOptimizer, saved: &[u8]) -> Result<ModuleOptimizer> {
    let record = OptimizerRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(saved.to_vec()))
        .map_err(|e| {
        Error::Invalid(format!(
            "the checkpoint's optimizer state is unreadable: {e:?}"
        ))
    })?;
    Ok(fresh.load_record(record))
}

/// Linear warmup to `lr` over `warmup` steps, then cosine decay to `lr * min_ratio` at `steps`.
pub fn warmup_cosine(lr: f64, warmup: usize, steps: usize, min_ratio: f64, step: usize) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = steps.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    let min = lr * min_ratio;
    min + (lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}
