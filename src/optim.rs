//! What every training loop here shares: AdamW with gradient-norm clipping, its state as
//! tensors a checkpoint can hold, and the warmup + cosine learning-rate schedule.
//!
//! The optimizer is ours rather than burn's `AdamWConfig` only so that its state is reachable:
//! burn's optimizer record reads the moments back synchronously, which WebGPU in a page cannot
//! do, so a browser checkpoint could not hold them. The arithmetic is burn's, op for op
//! (β₁ 0.9, β₂ 0.999, ε 1e-5, decoupled weight decay, each gradient tensor clipped to its own
//! norm), so runs give the same numbers as with burn's optimizer.

use std::collections::{BTreeMap, HashMap};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::weights::{HostTensor, SafetensorsSource, WeightSource};

const BETA_1: f32 = 0.9;
const BETA_2: f32 = 0.999;
const EPSILON: f32 = 1e-5;

/// Adam's running moments of one parameter (flattened) and its step count.
#[derive(Clone)]
struct Moments {
    shape: Vec<usize>,
    first: Tensor<1>,
    second: Tensor<1>,
    time: usize,
}

/// AdamW with optional per-tensor gradient-norm clipping.
#[derive(Clone)]
pub struct AdamW {
    weight_decay: f32,
    clip_norm: Option<f32>,
    moments: BTreeMap<u64, Moments>,
}

/// Name of a moment tensor in a saved state: `{param id as 16 hex digits}.moment_{1,2}`.
fn moment_name(id: u64, which: u8) -> String {
    format!("{id:016x}.moment_{which}")
}

impl AdamW {
    pub fn new(weight_decay: f32, clip_norm: Option<f32>) -> Self {
        Self {
            weight_decay,
            clip_norm,
            moments: BTreeMap::new(),
        }
    }

    /// One step on every parameter of `module` that has a gradient in `grads`.
    pub fn step<M: Module>(&mut self, lr: f64, module: M, mut grads: GradientsParams) -> M {
        module.map(&mut Step {
            optim: self,
            lr,
            grads: &mut grads,
        })
    }

    /// The state on the device: read its tensors back (blocking or asynchronously), then
    /// [`encode_state`].
    pub fn device_state(&self) -> DeviceState {
        let mut tensors = Vec::with_capacity(2 * self.moments.len());
        let mut times = BTreeMap::new();
        for (&id, m) in &self.moments {
            tensors.push((moment_name(id, 1), m.shape.clone(), m.first.clone()));
            tensors.push((moment_name(id, 2), m.shape.clone(), m.second.clone()));
            times.insert(format!("{id:016x}"), m.time);
        }
        DeviceState { tensors, times }
    }

    /// Restores a state written by [`encode_state`] for `module`'s trainable parameters on
    /// `device`. A state that names a parameter `module` does not train, or gives a moment
    /// another shape, is refused.
    pub fn load_state<M: Module>(
        &mut self,
        saved: &[u8],
        module: &M,
        device: &Device,
    ) -> Result<()> {
        let unreadable = |why: String| {
            Error::Invalid(format!(
                "the checkpoint's optimizer state is unreadable: {why}"
            ))
        };
        let (meta, _) = crate::weights::safetensors::header_and_data(saved)
            .map_err(|e| unreadable(e.to_string()))?;
        let times: BTreeMap<String, usize> = meta
            .get("times")
            .ok_or_else(|| unreadable("no step counts".into()))
            .and_then(|t| serde_json::from_str(t).map_err(|e| unreadable(e.to_string())))?;
        let stored = safetensors::SafeTensors::deserialize(saved)
            .map_err(|e| unreadable(e.to_string()))?
            .len();
        if stored != 2 * times.len() {
            return Err(unreadable(format!(
                "{stored} moment tensors for {} parameters",
                times.len()
            )));
        }
        let source = SafetensorsSource::new(&[saved]).map_err(|e| unreadable(e.to_string()))?;
        let mut shapes = TrainableShapes::default();
        module.visit(&mut shapes);
        let mut moments = BTreeMap::new();
        for (key, &time) in &times {
            let id = u64::from_str_radix(key, 16)
                .map_err(|_| unreadable(format!("`{key}` is not a parameter id")))?;
            let shape = shapes.0.get(&id).ok_or_else(|| {
                Error::Invalid(
                    "the checkpoint's optimizer state is for parameters this run does not train"
                        .into(),
                )
            })?;
            let moment = |which| -> Result<Tensor<1>> {
                let name = moment_name(id, which);
                let t = source
                    .tensor(&name)
                    .map_err(|e| unreadable(e.to_string()))?
                    .ok_or_else(|| unreadable(format!("no {name}")))?;
                if &t.shape != shape {
                    return Err(Error::Invalid(format!(
                        "the checkpoint's optimizer state has shape {:?} for a parameter of shape {shape:?}",
                        t.shape
                    )));
                }
                let n = t.data.len();
                Ok(Tensor::from_data(TensorData::new(t.data, [n]), device).inner())
            };
            let (first, second) = (moment(1)?, moment(2)?);
            moments.insert(
                id,
                Moments {
                    shape: shape.clone(),
                    first,
                    second,
                    time,
                },
            );
        }
        self.moments = moments;
        Ok(())
    }
}

/// An optimizer state still on the device: the moment tensors, named for [`encode_state`] and
/// with their parameter's shape, and each parameter's step count (by parameter id).
pub struct DeviceState {
    pub tensors: Vec<(String, Vec<usize>, Tensor<1>)>,
    pub times: BTreeMap<String, usize>,
}

/// The checkpoint tensor (U8) that holds an optimizer's encoded state ([`encode_state`]).
pub const OPTIMIZER_TENSOR: &str = "scaleot.optimizer";

/// A state read back to the host, as bytes (safetensors; step counts in the header).
pub fn encode_state(
    tensors: &[(String, HostTensor)],
    times: &BTreeMap<String, usize>,
) -> Result<Vec<u8>> {
    let times = serde_json::to_string(times).map_err(|error| Error::Json {
        what: "optimizer state".into(),
        error,
    })?;
    crate::weights::safetensors::encode_with(
        &crate::weights::safetensors::f32_items(tensors),
        &[("format", "scaleot-adamw"), ("times", &times)],
    )
}

/// The state of `optim` as bytes, read back blocking (native backends, the wasm CPU backend).
pub fn save(optim: &AdamW) -> Result<Vec<u8>> {
    let state = optim.device_state();
    encode_state(&crate::model::read_named(state.tensors)?, &state.times)
}

/// Shapes of the parameters that receive gradients, by id.
#[derive(Default)]
struct TrainableShapes(HashMap<u64, Vec<usize>>);

impl ModuleVisitor for TrainableShapes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        if t.is_require_grad() {
            self.0.insert(param.id.val(), t.dims().to_vec());
        }
    }
}

struct Step<'a> {
    optim: &'a mut AdamW,
    lr: f64,
    grads: &'a mut GradientsParams,
}

impl ModuleMapper for Step<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let tensor = tensor.inner();
        let grad = match self.optim.clip_norm {
            Some(threshold) => clip_by_norm(grad, threshold),
            None => grad,
        };
        let dims = tensor.dims();
        let n: usize = dims.iter().product();
        let factor_1 = 1.0 - BETA_1;
        let factor_2 = 1.0 - BETA_2;
        let moments = match self.optim.moments.remove(&id.val()) {
            Some(m) => Moments {
                first: m
                    .first
                    .mul_scalar(BETA_1)
                    .add(grad.clone().reshape([n]).mul_scalar(factor_1)),
                second: m
                    .second
                    .mul_scalar(BETA_2)
                    .add(grad.square().reshape([n]).mul_scalar(factor_2)),
                time: m.time + 1,
                shape: m.shape,
            },
            None => Moments {
                first: grad.clone().reshape([n]).mul_scalar(factor_1),
                second: grad.square().reshape([n]).mul_scalar(factor_2),
                time: 1,
                shape: dims.to_vec(),
            },
        };
        let time = moments.time as i32;
        let first = moments.first.clone().div_scalar(1f32 - BETA_1.powi(time));
        let second = moments.second.clone().div_scalar(1f32 - BETA_2.powi(time));
        let delta: Tensor<D> = first.div(second.sqrt().add_scalar(EPSILON)).reshape(dims);
        let decay_rate = self.lr * self.optim.weight_decay as f64;
        let decayed = match decay_rate == 0.0 {
            true => tensor,
            false => tensor.mul_scalar(1.0 - decay_rate),
        };
        let updated = decayed - delta.mul_scalar(self.lr);
        self.optim.moments.insert(id.val(), moments);
        let updated = Tensor::from_inner(updated);
        let updated = match require_grad {
            true => updated.require_grad(),
            false => updated,
        };
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// Scales `grad` down to norm `threshold` when its norm is above it (burn's clip_by_norm).
fn clip_by_norm<const D: usize>(grad: Tensor<D>, threshold: f32) -> Tensor<D> {
    let norm = grad.clone().square().sum().sqrt();
    let coef = norm
        .add_scalar(f32::MIN_POSITIVE)
        .recip()
        .mul_scalar(threshold);
    grad.mul(coef.clamp_max(1.0).unsqueeze())
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
