//! The building blocks every layer shares: a bias-free projection with an optional LoRA update,
//! RMSNorm, and the helpers that move Hugging Face `[out, in]` weights onto the device.

use burn::module::{Module, Param, ParamId};
use burn::tensor::module::linear;
use burn::tensor::{Device, Tensor, TensorData};
use sha2::{Digest, Sha256};

use super::frozen::{self, FrozenStorage};
use crate::error::{Error, Result};
use crate::weights::HostTensor;

/// A bias-free projection, weight stored `[in, out]` as burn's `linear` expects, with an
/// optional LoRA update beside it.
#[derive(Module, Debug)]
pub struct Linear {
    pub weight: Param<Tensor<2>>,
    pub lora: Option<Lora>,
}

impl Linear {
    /// From a Hugging Face `[out, in]` weight (row-major), transposed to burn's `[in, out]`,
    /// kept on the device as `storage` (converted on the host: no wide copy on the device).
    pub(crate) fn from_hf(
        name: &str,
        data: &[f32],
        [out, inp]: [usize; 2],
        device: &Device,
        storage: FrozenStorage,
    ) -> Self {
        let weight = TensorData::new(transpose(data, out, inp), [inp, out]);
        Self {
            weight: named_param(name, Tensor::from_data(weight, (device, storage.dtype()))),
            lora: None,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match &self.lora {
            None => self.project(x),
            Some(lora) => self.project(x.clone()) + lora.delta(x),
        }
    }

    fn project<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        times_weight(x, self.weight.val())
    }
}

/// `x [.., in] · weight [in, out]`, through [`frozen::weight_matmul`] where
/// [`frozen::through_weight_matmul`] says so, else burn's `linear`.
fn times_weight<const D: usize>(x: Tensor<D>, weight: Tensor<2>) -> Tensor<D> {
    if !frozen::through_weight_matmul(&weight) {
        return linear(x, weight, None);
    }
    let mut shape = x.dims();
    let inp = shape[D - 1];
    let rows = x.shape().num_elements() / inp.max(1);
    shape[D - 1] = weight.dims()[1];
    frozen::weight_matmul(x.reshape([rows, inp]), weight).reshape(shape)
}

#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        super::rms_norm::rms_norm(x, self.weight.val(), self.eps)
    }
}

/// A parameter whose id derives from its checkpoint name, so optimizer state saved in one
/// process finds its parameter again in the next (checkpoint resume).
pub(crate) fn named_param<const D: usize>(name: &str, tensor: Tensor<D>) -> Param<Tensor<D>> {
    let digest = Sha256::digest(name.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    let mut param = Param::from_tensor(tensor);
    param.id = ParamId::from(u64::from_le_bytes(id));
    param
}

pub(crate) fn check_shape(name: &str, t: &HostTensor, expected: &[usize]) -> Result<()> {
    if t.shape != expected || t.data.len() != expected.iter().product::<usize>() {
        return Err(Error::ShapeMismatch {
            tensor: name.to_owned(),
            expected: expected.to_vec(),
            found: t.shape.clone(),
        });
    }
    Ok(())
}

/// Row-major `[rows, cols]` → `[cols, rows]`.
pub(crate) fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// A matrix already in HF layout, flattened for readback, with its shape.
pub(crate) fn hf_flat(t: Tensor<2>) -> (Vec<usize>, Tensor<1>) {
    let [rows, cols] = t.dims();
    (vec![rows, cols], t.reshape([rows * cols]).detach())
}

/// The trainable low-rank update of one projection.
#[derive(Module, Debug)]
pub struct Lora {
    /// `[in, r]` (PEFT's `lora_A.weight` transposed).
    pub a: Param<Tensor<2>>,
    /// `[r, out]` (PEFT's `lora_B.weight` transposed).
    pub b: Param<Tensor<2>>,
    pub scale: f64,
}

impl Lora {
    pub fn delta<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let (a, b) = (self.a.val(), self.b.val());
        // On the CPU, burn's batched product: through `linear` a resumed run stopped being
        // bit-identical to an uninterrupted one (tools/kill_resume.sh).
        let low = if frozen::through_weight_matmul(&a) && !frozen::on_cpu(&a.device()) {
            times_weight(times_weight(x, a), b)
        } else {
            x.matmul(a.unsqueeze()).matmul(b.unsqueeze())
        };
        low.mul_scalar(self.scale)
    }
}

/// Reads a device tensor back to the host, blocking (native backends; in the browser read
/// with `into_data_async`).
pub fn read_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    // A device failure (out of memory, a lost device) is an error here, not a panic.
    frozen::widened(t)
        .try_into_data()
        .map_err(|e| Error::Device(format!("the device failed: {e}")))?
        .try_into_vec::<f32>()
        .map_err(|e| Error::Device(format!("reading a tensor back: {e:?}")))
}

/// Reads named device tensors (`hf_tensors` of a layer or harmonizer) back to the host,
/// blocking.
pub fn read_named(
    tensors: Vec<(String, Vec<usize>, Tensor<1>)>,
) -> Result<Vec<(String, HostTensor)>> {
    tensors
        .into_iter()
        .map(|(name, shape, t)| {
            Ok((
                name,
                HostTensor {
                    shape,
                    data: read_vec(t)?,
                },
            ))
        })
        .collect()
}

/// Reads a one-element tensor (a loss) back to the host, blocking.
pub fn read_scalar(t: Tensor<1>) -> Result<f32> {
    read_vec(t)?
        .first()
        .copied()
        .ok_or_else(|| Error::Device("an empty loss tensor".into()))
}
