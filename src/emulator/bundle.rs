//! The emulator bundle a data owner receives: one safetensors file (weights under the base
//! model's Hugging Face names) and a JSON manifest (config, layer plan, tokenizer, hashes).
//! Read and written from bytes, so the browser and the native binary share it.

use crate::sha256_hex;
use burn::tensor::Device;
use half::f16;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use super::plan::{LayerKind, load_plan_storing};
use crate::error::{Error, Result};
use crate::model::frozen::FrozenStorage;
use crate::model::{Llama, LlamaConfig};
use crate::names;
use crate::tokenizer::Tokenizer;
use crate::weights::{Factored, HostTensor, SafetensorsSource, WeightSource};

pub const FORMAT: &str = "scaleot-emulator/1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EmulatorManifest {
    pub format: String,
    pub config: LlamaConfig,
    /// One entry per layer of the full model.
    pub plan: Vec<LayerKind>,
    /// How it was made: `uniform-drop`, `dynamic-drop`, `scaleot`, with its parameters.
    pub method: String,
    pub params: serde_json::Value,
    /// sha256 of the base model's weight file(s): adapters name it too.
    pub base_model_sha256: String,
    /// sha256 of the bundle's safetensors bytes: the integrity check and the emulator's identity.
    pub weights_sha256: String,
    pub weights_bytes: u64,
    /// Parameter count of the emulator and of the full model.
    pub emulator_params: u64,
    pub full_params: u64,
    /// The tokenizer as a Hugging Face `tokenizer.json` document.
    pub tokenizer: serde_json::Value,
    /// Its `tokenizer_config.json`: special tokens by role and the chat template (for
    /// `messages` data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_config: Option<serde_json::Value>,
    /// The chat template as bundles made before `tokenizer_config` kept it (read only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
}

impl crate::manifest::Manifest for EmulatorManifest {
    const WHAT: &'static str = "emulator";
    const FORMAT: &'static str = FORMAT;
    const HINT: &'static str = "; ask the model owner for a current bundle";
    fn format(&self) -> &str {
        &self.format
    }
}

/// Storage precision of frozen (non-adapter) weights in the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrozenDtype {
    F32,
    F16,
}

/// Everything needed to write a bundle from a base model.
pub struct BundleSpec<'a> {
    pub config: &'a LlamaConfig,
    pub tokenizer: &'a Tokenizer,
    pub plan: Vec<LayerKind>,
    pub method: String,
    pub params: serde_json::Value,
    pub base_model_sha256: String,
    pub frozen_dtype: FrozenDtype,
}

/// Builds `(safetensors bytes, manifest)`. Adapter weights stay f32 so that plugging in
/// untouched adapters reproduces the base model exactly.
pub fn write_bundle(
    spec: BundleSpec,
    base: &dyn WeightSource,
) -> Result<(Vec<u8>, EmulatorManifest)> {
    let cfg = spec.config;
    if spec.plan.len() != cfg.num_hidden_layers {
        return Err(Error::Invalid(format!(
            "the plan covers {} layers, the model has {}",
            spec.plan.len(),
            cfg.num_hidden_layers
        )));
    }
    // (name, tensor, keep f32?)
    let mut tensors: Vec<(String, HostTensor, bool)> = Vec::new();
    let mut take = |name: String, exact: bool, required: bool| -> Result<()> {
        match base.tensor(&name)? {
            Some(t) => tensors.push((name, t, exact)),
            None if required => return Err(Error::MissingTensor(name)),
            None => {}
        }
        Ok(())
    };
    take(names::EMBED.into(), false, true)?;
    take(names::FINAL_NORM.into(), false, true)?;
    if !cfg.tie_word_embeddings {
        take(names::LM_HEAD.into(), false, false)?;
    }
    for (i, kind) in spec.plan.iter().enumerate() {
        match kind {
            LayerKind::Adapter | LayerKind::Raw => {
                for name in names::layer_tensors(i) {
                    take(name, *kind == LayerKind::Adapter, true)?;
                }
            }
            LayerKind::LowRank => {
                // Attention projections as SVD factors where the builder's source provides
                // them (SRC may compress only some of q/k/v/o), everything else raw.
                for name in names::layer_tensors(i) {
                    match names::module_of_weight(&name) {
                        Some(m) if m.contains(".self_attn.") => {
                            let factors = names::lowrank_factors(m);
                            if base.tensor(&factors[0])?.is_some() {
                                for factor in factors {
                                    take(factor, false, true)?;
                                }
                            } else {
                                take(name, false, true)?;
                            }
                        }
                        _ => take(name, false, true)?,
                    }
                }
            }
            LayerKind::Harmonizer => {
                for name in names::harmonizer_tensors(i) {
                    take(name, false, true)?;
                }
            }
            LayerKind::Dropped => {}
        }
    }
    let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    let mut emulator_params = 0u64;
    for (name, t, exact) in tensors {
        emulator_params += t.data.len() as u64;
        let f32_storage = exact || spec.frozen_dtype == FrozenDtype::F32;
        let (dtype, bytes) = if f32_storage {
            (
                Dtype::F32,
                t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        } else {
            (
                Dtype::F16,
                t.data
                    .iter()
                    .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                    .collect(),
            )
        };
        buffers.push((name, dtype, t.shape, bytes));
    }
    let weights = crate::weights::safetensors::encode(&buffers, FORMAT)?;
    let manifest = EmulatorManifest {
        format: FORMAT.into(),
        config: cfg.clone(),
        plan: spec.plan,
        method: spec.method,
        params: spec.params,
        base_model_sha256: spec.base_model_sha256,
        weights_sha256: sha256_hex(&[&weights]),
        weights_bytes: weights.len() as u64,
        emulator_params,
        full_params: full_param_count(cfg),
        tokenizer: spec.tokenizer.to_hf_json(),
        tokenizer_config: Some(spec.tokenizer.to_hf_config(cfg.max_position_embeddings)),
        chat_template: None,
    };
    Ok((weights, manifest))
}

/// Parameters of the full LLaMA model described by `cfg`.
pub fn full_param_count(cfg: &LlamaConfig) -> u64 {
    let (h, f, v) = (
        cfg.hidden_size as u64,
        cfg.intermediate_size as u64,
        cfg.vocab_size as u64,
    );
    let kv = (cfg.num_key_value_heads * cfg.head_dim()) as u64;
    let q = cfg.attention_width() as u64;
    let layer = 2 * h * q + 2 * h * kv + 3 * h * f + 2 * h;
    let head = if cfg.tie_word_embeddings { 0 } else { v * h };
    v * h + cfg.num_hidden_layers as u64 * layer + h + head
}

/// A loaded emulator: the model with only its kept layers, its tokenizer and manifest.
pub struct Emulator {
    pub manifest: EmulatorManifest,
    pub model: Llama,
    pub tokenizer: Tokenizer,
}

impl Emulator {
    /// Parses the manifest; needs no weights (for showing sizes before a download).
    pub fn read_manifest(json: &str) -> Result<EmulatorManifest> {
        let m: EmulatorManifest = crate::manifest::parse(json)?;
        Ok(m)
    }

    /// Checks the weights against the manifest's hash, then builds the model.
    pub fn load(manifest_json: &str, weights: &[u8], device: &Device) -> Result<Self> {
        Self::load_storing(manifest_json, weights, FrozenStorage::F32, device)
    }

    /// [`Self::load`] keeping the frozen weights as `frozen` (f16 on a GPU that computes with
    /// it: half their memory) where the bundle stores them in f16 (`--frozen-dtype f16`, the
    /// default), so that only their memory changes; see `LayerKind::source` for which.
    pub fn load_storing(
        manifest_json: &str,
        weights: &[u8],
        frozen: FrozenStorage,
        device: &Device,
    ) -> Result<Self> {
        // A header that does not parse is refused by `load_through`, after the hash check.
        let stored_f16 = SafeTensors::deserialize(weights)
            .ok()
            .and_then(|st| st.tensor(names::EMBED).ok().map(|t| t.dtype()))
            == Some(Dtype::F16);
        let frozen = if stored_f16 {
            frozen
        } else {
            FrozenStorage::F32
        };
        Self::load_through(manifest_json, weights, |manifest, stored| {
            load_plan_storing(&manifest.config, stored, &manifest.plan, frozen, device)
        })
    }

    /// Checks the weights against the manifest's hash, then builds the model with `build`
    /// from the manifest and the stored weights (low-rank factors reading as dense): adapters
    /// plug themselves in over them this way (`adapter::load_emulator`).
    pub fn load_through(
        manifest_json: &str,
        weights: &[u8],
        build: impl FnOnce(&EmulatorManifest, &dyn WeightSource) -> Result<Llama>,
    ) -> Result<Self> {
        let manifest = Self::read_manifest(manifest_json)?;
        let actual = sha256_hex(&[weights]);
        if actual != manifest.weights_sha256 {
            return Err(Error::BundleCorrupt {
                expected: manifest.weights_sha256.clone(),
                actual,
            });
        }
        SafeTensors::deserialize(weights).map_err(|e| Error::Safetensors(e.to_string()))?;
        let tokenizer_config = manifest.tokenizer_config.as_ref().map(|c| c.to_string());
        let mut tokenizer =
            Tokenizer::from_hf_files(&manifest.tokenizer.to_string(), tokenizer_config.as_deref())?;
        tokenizer.check_fits(manifest.config.vocab_size)?;
        if tokenizer.chat_template.is_none() {
            tokenizer.chat_template = manifest.chat_template.clone();
        }
        let stored = SafetensorsSource::new(&[weights])?;
        let shape_of = |proj: &str| manifest.config.projection_shape(proj);
        let model = build(&manifest, &Factored::new(&stored, &shape_of))?;
        Ok(Self {
            manifest,
            model,
            tokenizer,
        })
    }

    /// Stack positions (in `model.layers`) of the adapter layers.
    pub fn adapter_positions(&self) -> Vec<usize> {
        self.model
            .layer_index
            .iter()
            .enumerate()
            .filter(|(_, orig)| self.manifest.plan[**orig] == LayerKind::Adapter)
            .map(|(pos, _)| pos)
            .collect()
    }
}
