//! The adapter file that goes back to the model owner, and plugging it into the full model.
//!
//! File = safetensors with the tuned layers under the base model's Hugging Face names
//! (PEFT's `modules_to_save` convention for whole layers) + a JSON manifest naming the emulator
//! and base model it belongs to, the training config and metrics. No training data inside.

use crate::sha256_hex;
use burn::tensor::Tensor;
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::emulator::bundle::{EmulatorManifest, layer_tensor_names};
use crate::emulator::plan::LayerKind;
use crate::error::{Error, Result};
use crate::model::{LayerSlot, Llama};
use crate::weights::safetensors::decode_floats;
use crate::weights::{HostTensor, WeightSource};

pub const FORMAT: &str = "scaleot-adapter/1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdapterManifest {
    pub format: String,
    /// The emulator's weights hash: adapters from another emulator are refused.
    pub emulator_sha256: String,
    pub base_model_sha256: String,
    /// Original layer indices of the tuned layers.
    pub layers: Vec<usize>,
    /// PEFT-style description: whole layers are `modules_to_save`.
    pub peft: serde_json::Value,
    pub train: serde_json::Value,
    pub metrics: serde_json::Value,
    pub weights_sha256: String,
}

/// The adapter layers' tensors, flattened on the device in HF layout (`[out, in]`), with
/// their HF names and shapes. The caller reads them back (sync natively, async in wasm).
pub fn adapter_tensors(model: &Llama, plan: &[LayerKind]) -> Vec<(String, Vec<usize>, Tensor<1>)> {
    let mut out = Vec::new();
    for (slot, &orig) in model.layers.iter().zip(&model.layer_index) {
        if plan.get(orig) != Some(&LayerKind::Adapter) {
            continue;
        }
        let LayerSlot::Decoder(l) = slot;
        let names = layer_tensor_names(orig);
        let vec1 = |t: Tensor<1>| {
            let n = t.dims()[0];
            (vec![n], t)
        };
        let mat = |t: Tensor<2>| {
            let [inp, outp] = t.dims();
            (vec![outp, inp], t.transpose().reshape([inp * outp]))
        };
        let a = &l.self_attn;
        let parts = [
            vec1(l.input_layernorm.weight.val()),
            mat(a.q_proj.weight.val()),
            mat(a.k_proj.weight.val()),
            mat(a.v_proj.weight.val()),
            mat(a.o_proj.weight.val()),
            vec1(l.post_attention_layernorm.weight.val()),
            mat(l.mlp.gate_proj.weight.val()),
            mat(l.mlp.up_proj.weight.val()),
            mat(l.mlp.down_proj.weight.val()),
        ];
        for (name, (shape, t)) in names.into_iter().zip(parts) {
            out.push((name, shape, t.detach()));
        }
    }
    out
}

/// Serializes read-back adapter tensors into `(safetensors bytes, manifest)`.
pub fn write_adapter(
    tensors: Vec<(String, HostTensor)>,
    emulator: &EmulatorManifest,
    train: serde_json::Value,
    metrics: serde_json::Value,
) -> Result<(Vec<u8>, AdapterManifest)> {
    let layers: Vec<usize> = emulator
        .plan
        .iter()
        .enumerate()
        .filter(|(_, k)| **k == LayerKind::Adapter)
        .map(|(i, _)| i)
        .collect();
    let weights = crate::weights::safetensors::write_tensors(&tensors, FORMAT)?;
    let modules: Vec<String> = layers.iter().map(|i| format!("model.layers.{i}")).collect();
    let manifest = AdapterManifest {
        format: FORMAT.into(),
        emulator_sha256: emulator.weights_sha256.clone(),
        base_model_sha256: emulator.base_model_sha256.clone(),
        layers,
        peft: serde_json::json!({"peft_type": "FULL_LAYERS", "modules_to_save": modules}),
        train,
        metrics,
        weights_sha256: sha256_hex(&[&weights]),
    };
    Ok((weights, manifest))
}

/// A read adapter file, checked against its manifest.
pub struct Adapter<'a> {
    pub manifest: AdapterManifest,
    tensors: SafeTensors<'a>,
}

impl<'a> Adapter<'a> {
    pub fn load(manifest_json: &str, weights: &'a [u8]) -> Result<Self> {
        let manifest: AdapterManifest =
            serde_json::from_str(manifest_json).map_err(|source| Error::Json {
                what: "adapter manifest".into(),
                source,
            })?;
        if manifest.format != FORMAT {
            return Err(Error::Invalid(format!(
                "adapter format `{}` is not supported (expected {FORMAT})",
                manifest.format
            )));
        }
        let actual = sha256_hex(&[weights]);
        if actual != manifest.weights_sha256 {
            return Err(Error::Invalid(format!(
                "the adapter weights are corrupted (sha256 {actual}, the manifest says {}): ask for the file again",
                manifest.weights_sha256
            )));
        }
        let tensors =
            SafeTensors::deserialize(weights).map_err(|e| Error::Safetensors(e.to_string()))?;
        Ok(Self { manifest, tensors })
    }

    /// Refuses adapters trained against another emulator.
    pub fn check_emulator(&self, emulator: &EmulatorManifest) -> Result<()> {
        if self.manifest.emulator_sha256 != emulator.weights_sha256 {
            return Err(Error::Invalid(format!(
                "these adapters were trained on emulator {}…, not on this one ({}…): use the emulator they were tuned on",
                &self.manifest.emulator_sha256[..12.min(self.manifest.emulator_sha256.len())],
                &emulator.weights_sha256[..12.min(emulator.weights_sha256.len())]
            )));
        }
        Ok(())
    }

    /// Refuses adapters made for another base model.
    pub fn check_base(&self, base_sha256: &str) -> Result<()> {
        if self.manifest.base_model_sha256 != base_sha256 {
            return Err(Error::Invalid(format!(
                "these adapters belong to base model {}…, not to this one ({}…): plug them into the model the emulator was made from",
                &self.manifest.base_model_sha256[..12.min(self.manifest.base_model_sha256.len())],
                &base_sha256[..12.min(base_sha256.len())]
            )));
        }
        Ok(())
    }
}

impl WeightSource for Adapter<'_> {
    fn tensor(&self, hf_name: &str) -> Result<Option<HostTensor>> {
        match self.tensors.tensor(hf_name) {
            Ok(view) => Ok(Some(HostTensor {
                shape: view.shape().to_vec(),
                data: decode_floats(view.dtype(), view.data(), hf_name)?,
            })),
            Err(_) => Ok(None),
        }
    }
}
