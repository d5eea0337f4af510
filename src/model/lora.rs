//! LoRA on a decoder layer's projections: `y = x·W + (x·A)·B · alpha/r` with `W` frozen and
//! only the small factors `A`, `B` learning. Tensor names and layouts follow PEFT
//! (`base_model.model.<module>.lora_A.weight` `[r, in]`, `lora_B.weight` `[out, r]`), so the
//! adapter file reads like a PEFT checkpoint and merging is PEFT's `W + B·A·alpha/r`.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::layers::{Lora, named_param};
use super::llama::{DecoderLayer, LayerSlot, Llama};
use crate::error::{Error, Result};
use crate::names;
use crate::weights::{HostTensor, WeightSource};

/// The projections LoRA can attach to, by their Hugging Face module names.
pub const TARGETS: [&str; 7] = names::PROJECTIONS;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    /// Module names from [`TARGETS`].
    pub targets: Vec<String>,
}

impl LoraConfig {
    /// Parses `--lora-targets`: `all`, or a comma list such as `q_proj,v_proj`.
    pub fn new(rank: usize, alpha: f64, targets: &str) -> Result<Self> {
        let targets: Vec<String> = if targets.trim() == "all" {
            TARGETS.iter().map(|t| t.to_string()).collect()
        } else {
            targets
                .split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect()
        };
        let cfg = Self {
            rank,
            alpha,
            targets,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::setting("lora_rank", 0, "must be at least 1"));
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return Err(Error::setting("lora_alpha", self.alpha, "must be positive"));
        }
        if self.targets.is_empty() {
            return Err(Error::setting(
                "lora_targets",
                "",
                "name at least one target module",
            ));
        }
        if let Some(bad) = self.targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
            return Err(Error::setting(
                "lora_targets",
                bad,
                format!(
                    "not a LoRA target; choose from {} or `all`",
                    TARGETS.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// PEFT's scaling `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

impl Lora {
    /// PEFT's initialisation: `A ~ U(±1/sqrt(in))` (kaiming-uniform, a = sqrt 5), `B = 0`, so
    /// the model starts exactly where it was. Seeded per module name: order-independent.
    fn init(module: &str, inp: usize, out: usize, cfg: &LoraConfig, seed: u64) -> HostPair {
        let digest = crate::sha256_hex(&[module.as_bytes(), &seed.to_le_bytes()]);
        let mut rng = StdRng::seed_from_u64(u64::from_str_radix(&digest[..16], 16).unwrap_or(seed));
        let bound = 1.0 / (inp as f32).sqrt();
        HostPair {
            a: (0..cfg.rank * inp)
                .map(|_| rng.random_range(-bound..bound))
                .collect(),
            b: vec![0.0; out * cfg.rank],
        }
    }
}

/// PEFT-layout factor values: `a` is `[r, in]`, `b` is `[out, r]`, row-major.
struct HostPair {
    a: Vec<f32>,
    b: Vec<f32>,
}

impl DecoderLayer {
    /// Freezes the layer except its LoRA factors.
    pub fn lora_only(self) -> Self {
        let mut layer = self.freeze();
        for t in TARGETS {
            if let Some(lora) = layer.projection_mut(t).and_then(|p| p.lora.as_mut()) {
                lora.a = lora.a.clone().set_require_grad(true);
                lora.b = lora.b.clone().set_require_grad(true);
            }
        }
        layer
    }
}

impl Llama {
    /// Attaches LoRA factors to the target projections of the layers at stack `positions`:
    /// PEFT's initialisation seeded by `seed`, or, when resuming, the factors `init` holds
    /// under their PEFT names (all of them must be there).
    pub fn with_lora(
        mut self,
        positions: &[usize],
        cfg: &LoraConfig,
        seed: u64,
        init: Option<&dyn WeightSource>,
    ) -> Result<Self> {
        cfg.validate()?;
        let device = self.device();
        for &pos in positions {
            let Some(&orig) = self.layer_index.get(pos) else {
                return Err(Error::Invalid(format!(
                    "no layer at stack position {pos} for LoRA"
                )));
            };
            let LayerSlot::Decoder(layer) = &mut self.layers[pos] else {
                return Err(Error::Invalid(format!(
                    "stack position {pos} holds a harmonizer, which takes no LoRA"
                )));
            };
            for target in &cfg.targets {
                let module = names::projection(orig, target);
                let proj = layer
                    .projection_mut(target)
                    .ok_or_else(|| Error::Invalid(format!("`{target}` is not a LoRA target")))?;
                let [inp, out] = proj.weight.dims();
                let pair = match init {
                    Some(src) => read_pair(src, &module, inp, out, cfg.rank)?.ok_or_else(|| {
                        Error::Invalid(format!(
                            "the checkpoint has no LoRA factors for {module}: resume with the LoRA settings it was made with"
                        ))
                    })?,
                    None => Lora::init(&module, inp, out, cfg, seed),
                };
                let [a_name, b_name] = names::lora_factors(&module);
                proj.lora = Some(Lora {
                    a: named_param(&a_name, burn_layout(&pair.a, cfg.rank, inp, &device)),
                    b: named_param(&b_name, burn_layout(&pair.b, out, cfg.rank, &device)),
                    scale: cfg.scale(),
                });
            }
        }
        Ok(self)
    }
}

/// Row-major `[rows, cols]` host values → a `[cols, rows]` device tensor.
fn burn_layout(values: &[f32], rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::<2>::from_data(TensorData::new(values.to_vec(), [rows, cols]), device).transpose()
}

/// Both factors of `module` from a weight source, shape-checked; `None` if it has neither.
fn read_pair(
    src: &dyn WeightSource,
    module: &str,
    inp: usize,
    out: usize,
    rank: usize,
) -> Result<Option<HostPair>> {
    let [a_name, b_name] = names::lora_factors(module);
    let (a, b) = match (src.tensor(&a_name)?, src.tensor(&b_name)?) {
        (None, None) => return Ok(None),
        (Some(a), Some(b)) => (a, b),
        _ => {
            return Err(Error::Invalid(format!(
                "LoRA factors of {module} are incomplete: the file has only one of A and B"
            )));
        }
    };
    let check = |name: &str, t: &HostTensor, expected: [usize; 2]| {
        if t.shape != expected {
            return Err(Error::ShapeMismatch {
                tensor: name.to_owned(),
                expected: expected.to_vec(),
                found: t.shape.clone(),
            });
        }
        Ok(())
    };
    check(&a_name, &a, [rank, inp])?;
    check(&b_name, &b, [out, rank])?;
    Ok(Some(HostPair {
        a: a.data,
        b: b.data,
    }))
}

/// `W + B·A·scale` in HF layout: `w` is `[out, in]`, `a` `[r, in]`, `b` `[out, r]`.
pub fn merge(w: &mut HostTensor, a: &HostTensor, b: &HostTensor, scale: f32) -> Result<()> {
    let (out, inp) = match w.shape[..] {
        [o, i] => (o, i),
        _ => return Err(Error::Invalid("LoRA merges into 2-d weights only".into())),
    };
    let r = a.shape.first().copied().unwrap_or(0);
    if a.shape != [r, inp] || b.shape != [out, r] {
        return Err(Error::Invalid(format!(
            "LoRA factors {:?}·{:?} do not fit a weight of shape {:?}",
            b.shape, a.shape, w.shape
        )));
    }
    for o in 0..out {
        let row = &mut w.data[o * inp..(o + 1) * inp];
        for k in 0..r {
            let coef = b.data[o * r + k] * scale;
            if coef == 0.0 {
                continue;
            }
            let a_row = &a.data[k * inp..(k + 1) * inp];
            for (x, &av) in row.iter_mut().zip(a_row) {
                *x += coef * av;
            }
        }
    }
    Ok(())
}
