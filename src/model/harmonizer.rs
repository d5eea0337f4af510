//! ScaleOT's harmonizer: the lightweight stand-in for a dropped middle layer,
//! `h(x) = x + W_up · silu(W_down · norm(x))` with rank `r`. `W_up` starts at zero, so a fresh
//! harmonizer is exactly "drop the layer"; training teaches it what the layer contributed.
//! Stored under `model.layers.{i}.harmonizer.{norm,down_proj,up_proj}.weight` (HF layout,
//! [`names::harmonizer_tensors`]).

use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::frozen::FrozenStorage;
use super::layers::{Linear, RmsNorm, check_shape, hf_flat, named_param, transpose};
use crate::error::{Error, Result};
use crate::names;
use crate::weights::{HostTensor, WeightSource};

#[derive(Module, Debug)]
pub struct Harmonizer {
    pub norm: RmsNorm,
    /// `[hidden, r]`
    pub down: Linear,
    /// `[r, hidden]`, zero-initialised.
    pub up: Linear,
}

impl Harmonizer {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let inner = silu(self.down.forward(self.norm.forward(x.clone())));
        x + self.up.forward(inner)
    }

    pub fn rank(&self) -> usize {
        self.down.weight.dims()[1]
    }

    /// A fresh harmonizer for layer `layer`: unit norm, `W_down ~ U(±1/sqrt(hidden))`
    /// (seeded), `W_up = 0`.
    pub fn fresh(
        layer: usize,
        hidden: usize,
        rank: usize,
        eps: f64,
        seed: u64,
        device: &Device,
    ) -> Self {
        let mut rng =
            StdRng::seed_from_u64(seed ^ (layer as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        let bound = 1.0 / (hidden as f32).sqrt();
        let down: Vec<f32> = (0..hidden * rank)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let host = [
            HostTensor {
                shape: vec![hidden],
                data: vec![1.0; hidden],
            },
            HostTensor {
                shape: vec![rank, hidden],
                data: transpose(&down, hidden, rank),
            },
            HostTensor {
                shape: vec![hidden, rank],
                data: vec![0.0; hidden * rank],
            },
        ];
        Self::from_host(layer, host, eps, device, FrozenStorage::F32)
    }

    /// Reads harmonizer `layer` from a weight source, shape-checked against `hidden`, its
    /// matrices kept as `storage` (frozen ones only: a narrow weight gets no gradient).
    pub fn load(
        src: &dyn WeightSource,
        layer: usize,
        hidden: usize,
        eps: f64,
        device: &Device,
        storage: FrozenStorage,
    ) -> Result<Self> {
        let [norm, down, up] = names::harmonizer_tensors(layer);
        let (n, d, u) = (
            src.required(&norm)?,
            src.required(&down)?,
            src.required(&up)?,
        );
        let rank = d.shape.first().copied().unwrap_or(0);
        check_shape(&norm, &n, &[hidden])?;
        check_shape(&down, &d, &[rank, hidden])?;
        check_shape(&up, &u, &[hidden, rank])?;
        if rank == 0 {
            return Err(Error::Invalid(format!("harmonizer {layer} has rank 0")));
        }
        Ok(Self::from_host(layer, [n, d, u], eps, device, storage))
    }

    /// From HF-layout host tensors `[norm, down [r, h], up [h, r]]`.
    fn from_host(
        layer: usize,
        [n, d, u]: [HostTensor; 3],
        eps: f64,
        device: &Device,
        storage: FrozenStorage,
    ) -> Self {
        let [norm_name, down_name, up_name] = names::harmonizer_tensors(layer);
        let proj = |name: &str, t: HostTensor| {
            Linear::from_hf(name, &t.data, [t.shape[0], t.shape[1]], device, storage)
        };
        let hidden = n.data.len();
        Self {
            norm: RmsNorm {
                weight: named_param(
                    &norm_name,
                    Tensor::from_data(TensorData::new(n.data, [hidden]), device),
                ),
                eps,
            },
            down: proj(&down_name, d),
            up: proj(&up_name, u),
        }
    }

    /// The tensors in HF layout with their names, flattened on the device.
    pub fn hf_tensors(&self, layer: usize) -> Vec<(String, Vec<usize>, Tensor<1>)> {
        let [norm, down, up] = names::harmonizer_tensors(layer);
        let flat = |t: Tensor<2>| hf_flat(t.transpose());
        let n = self.norm.weight.val();
        let (ds, d) = flat(self.down.weight.val());
        let (us, u) = flat(self.up.weight.val());
        vec![
            (norm, vec![n.dims()[0]], n.detach()),
            (down, ds, d),
            (up, us, u),
        ]
    }
}
