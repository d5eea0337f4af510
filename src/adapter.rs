//! The adapter file that goes back to the model owner, and plugging it into the full model.
//!
//! File = safetensors with the tuned layers under the base model's Hugging Face names
//! (PEFT's `modules_to_save` convention for whole layers, PEFT's `lora_A`/`lora_B` names for
//! LoRA) + a JSON manifest naming the emulator and base model it belongs to, the training
//! config and metrics. No training data inside.

use crate::sha256_hex;
use burn::tensor::{Device, Tensor};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::emulator::bundle::{Emulator, EmulatorManifest};
use crate::emulator::plan::{LayerKind, adapter_layers, load_plan};
use crate::error::{Error, Result};
use crate::model::lora::{self, LoraConfig};
use crate::model::{LayerSlot, Llama};
use crate::names;
use crate::weights::safetensors::decode_floats;
use crate::weights::{Factored, HostTensor, Overlay, SafetensorsSource, WeightSource};

pub const FORMAT: &str = "scaleot-adapter/1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdapterManifest {
    pub format: String,
    /// The emulator's weights hash: adapters from another emulator are refused.
    pub emulator_sha256: String,
    pub base_model_sha256: String,
    /// Original layer indices of the tuned layers.
    pub layers: Vec<usize>,
    /// PEFT-style description: whole layers as `modules_to_save`, or LoRA as adapter_config.json.
    pub peft: serde_json::Value,
    /// Set when the adapters are LoRA factors rather than whole layers.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    pub train: serde_json::Value,
    pub metrics: serde_json::Value,
    /// sha256 of the weights file's tensor data (the bytes after its header), so that the same
    /// weights verify in the two-file form and in the single file that embeds this manifest.
    pub weights_sha256: String,
}

impl crate::manifest::Manifest for AdapterManifest {
    const WHAT: &'static str = "adapter";
    const FORMAT: &'static str = FORMAT;
    fn format(&self) -> &str {
        &self.format
    }
}

/// Header key under which a single-file adapter carries its manifest.
pub const EMBEDDED_MANIFEST_KEY: &str = "scaleot_adapter";

/// The adapters' tensors, flattened on the device in HF layout, with their HF names and
/// shapes: whole layers (`[out, in]` projections), or only the LoRA factors of layers that
/// carry LoRA. The caller reads them back (sync natively, async in wasm).
pub fn adapter_tensors(model: &Llama, plan: &[LayerKind]) -> Vec<(String, Vec<usize>, Tensor<1>)> {
    let mut out = Vec::new();
    let flat = crate::model::layers::hf_flat;
    for (slot, &orig) in model.layers.iter().zip(&model.layer_index) {
        if plan.get(orig) != Some(&LayerKind::Adapter) {
            continue;
        }
        let LayerSlot::Decoder(l) = slot else {
            continue; // adapters are decoder layers; a harmonizer is never one
        };
        if l.has_lora() {
            for (module, proj) in l.projections(orig) {
                let Some(pair) = &proj.lora else { continue };
                let [a_name, b_name] = names::lora_factors(&module);
                let (a_shape, a) = flat(pair.a.val().transpose());
                let (b_shape, b) = flat(pair.b.val().transpose());
                out.push((a_name, a_shape, a));
                out.push((b_name, b_shape, b));
            }
            continue;
        }
        out.extend(l.hf_tensors(orig));
    }
    out
}

/// The emulator with a training checkpoint's adapters in place (resuming): whole layers
/// swapped in, or LoRA factors attached to the adapter layers at stack `positions`.
/// `checkpoint` holds what [`adapter_tensors`] returned, as safetensors.
pub fn checkpointed_model(
    manifest: &EmulatorManifest,
    emulator: &[u8],
    checkpoint: &[u8],
    (positions, lora): (&[usize], Option<&LoraConfig>),
    device: &Device,
) -> Result<Llama> {
    let stored = SafetensorsSource::new(&[emulator])?;
    let shape_of = |proj: &str| manifest.config.projection_shape(proj);
    let base = Factored::new(&stored, &shape_of);
    let saved = SafetensorsSource::new(&[checkpoint])?;
    if let Some(l) = lora {
        return load_plan(&manifest.config, &base, &manifest.plan, device)?.with_lora(
            positions,
            l,
            0,
            Some(&saved),
        );
    }
    let first = manifest.plan.iter().position(|k| *k == LayerKind::Adapter);
    let probe = first.map(|i| names::projection_weight(i, "q_proj"));
    if let Some(name) = probe.filter(|n| matches!(saved.tensor(n), Ok(None))) {
        return Err(Error::Invalid(format!(
            "the checkpoint has no `{name}`: it was made with LoRA; resume with the same LoRA settings"
        )));
    }
    let whole_layers = Overlay {
        top: &saved,
        base: &base,
    };
    load_plan(&manifest.config, &whole_layers, &manifest.plan, device)
}

/// An emulator with `adapter` plugged in over its stored weights (`None`: the emulator as
/// it is); adapters tuned on another emulator are refused.
pub fn load_emulator(
    manifest_json: &str,
    weights: &[u8],
    adapter: Option<&Adapter>,
    device: &Device,
) -> Result<Emulator> {
    Emulator::load_through(manifest_json, weights, |manifest, stored| match adapter {
        None => load_plan(&manifest.config, stored, &manifest.plan, device),
        Some(adapter) => {
            adapter.check_emulator(manifest)?;
            let plugged = adapter.plugged_into(stored);
            load_plan(&manifest.config, &plugged, &manifest.plan, device)
        }
    })
}

/// Serializes read-back adapter tensors into `(safetensors bytes, manifest)`.
pub fn write_adapter(
    tensors: Vec<(String, HostTensor)>,
    emulator: &EmulatorManifest,
    lora: Option<&LoraConfig>,
    train: serde_json::Value,
    metrics: serde_json::Value,
) -> Result<(Vec<u8>, AdapterManifest)> {
    let layers = adapter_layers(&emulator.plan);
    let weights = crate::weights::safetensors::write_tensors(&tensors, FORMAT)?;
    let peft = match lora {
        None => {
            let modules: Vec<String> = layers.iter().map(|&i| names::layer(i)).collect();
            serde_json::json!({"peft_type": "FULL_LAYERS", "modules_to_save": modules})
        }
        // PEFT's adapter_config.json fields.
        Some(l) => serde_json::json!({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": l.rank, "lora_alpha": l.alpha,
            "target_modules": l.targets, "layers_to_transform": layers, "lora_dropout": 0.0,
            "bias": "none",
        }),
    };
    let manifest = AdapterManifest {
        format: FORMAT.into(),
        emulator_sha256: emulator.weights_sha256.clone(),
        base_model_sha256: emulator.base_model_sha256.clone(),
        layers,
        peft,
        lora: lora.cloned(),
        train,
        metrics,
        weights_sha256: weights_digest(&weights)?,
    };
    Ok((weights, manifest))
}

/// The `weights_sha256` of a weights file: sha256 of its tensor data.
pub fn weights_digest(weights: &[u8]) -> Result<String> {
    let (_, data) = crate::weights::safetensors::header_and_data(weights)?;
    Ok(sha256_hex(&[data]))
}

/// One file holding both: the weights with the manifest in their safetensors header. This is
/// what the browser hands back (a single download); `scaleot plugin` reads either form.
pub fn embed_manifest(weights: &[u8], manifest: &AdapterManifest) -> Result<Vec<u8>> {
    let tensors =
        SafeTensors::deserialize(weights).map_err(|e| Error::Safetensors(e.to_string()))?;
    let items: Vec<_> = tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let shape = view.shape().to_vec();
            (name, view.dtype(), shape, view.data().to_vec())
        })
        .collect();
    let json = serde_json::to_string(manifest).map_err(|error| Error::Json {
        what: "adapter manifest".into(),
        error,
    })?;
    crate::weights::safetensors::encode_with(
        &items,
        &[("format", FORMAT), (EMBEDDED_MANIFEST_KEY, &json)],
    )
}

/// A read adapter file, checked against its manifest.
pub struct Adapter<'a> {
    pub manifest: AdapterManifest,
    tensors: SafeTensors<'a>,
}

impl<'a> Adapter<'a> {
    /// Reads a single-file adapter (see [`embed_manifest`]).
    pub fn load_single(file: &'a [u8]) -> Result<Self> {
        let (meta, _) = crate::weights::safetensors::header_and_data(file).map_err(|e| {
            Error::Invalid(format!(
                "the adapter file is corrupted or truncated ({e}): ask for the file again"
            ))
        })?;
        let Some(json) = meta.get(EMBEDDED_MANIFEST_KEY) else {
            return Err(Error::Invalid(
                "this safetensors file carries no adapter manifest: pass the adapter's .json manifest (its weights beside it) or the single file the browser saved".into(),
            ));
        };
        Self::load(json, file)
    }

    /// Reads an adapter from its manifest and weights file, checking one against the other.
    pub fn load(manifest_json: &str, weights: &'a [u8]) -> Result<Self> {
        let manifest: AdapterManifest = crate::manifest::parse(manifest_json)?;
        let actual = weights_digest(weights).map_err(|e| {
            Error::Invalid(format!(
                "the adapter weights are corrupted or truncated ({e}): ask for the file again"
            ))
        })?;
        if actual != manifest.weights_sha256 {
            return Err(Error::Invalid(format!(
                "the adapter weights are corrupted (sha256 {actual}, the manifest says {}): ask for the file again",
                manifest.weights_sha256
            )));
        }
        let tensors =
            SafeTensors::deserialize(weights).map_err(|e| Error::Safetensors(e.to_string()))?;
        let adapter = Self { manifest, tensors };
        let expected = adapter.expected_tensors()?;
        if let Some(missing) = expected.iter().find(|n| adapter.tensors.tensor(n).is_err()) {
            return Err(Error::Invalid(format!(
                "the adapter file lacks `{missing}`, which its manifest promises: ask for the file again"
            )));
        }
        // Only the declared adapter layers may change the model: anything else (an embedding,
        // a frozen layer) would be written into the plugged model unasked.
        let mut names = adapter.tensors.names();
        names.sort();
        if let Some(extra) = names
            .into_iter()
            .find(|n| !expected.iter().any(|e| e == *n))
        {
            return Err(Error::Invalid(format!(
                "the adapter file carries `{extra}`, which is not part of the adapter layers {:?} its manifest declares: refusing it",
                adapter.manifest.layers
            )));
        }
        Ok(adapter)
    }

    /// Refuses a manifest whose adapter layers do not exist in a model of `n_layers`
    /// layers, or that names a layer twice.
    pub fn check_layers(&self, n_layers: usize) -> Result<()> {
        let layers = &self.manifest.layers;
        if let Some(&bad) = layers.iter().find(|&&i| i >= n_layers) {
            return Err(Error::Invalid(format!(
                "the adapter declares layer {bad}, but the model has {n_layers} layers"
            )));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(&twice) = layers.iter().find(|&&i| !seen.insert(i)) {
            return Err(Error::Invalid(format!(
                "the adapter declares layer {twice} twice"
            )));
        }
        Ok(())
    }

    /// The tensor names the manifest promises.
    pub(crate) fn expected_tensors(&self) -> Result<Vec<String>> {
        let layers = &self.manifest.layers;
        Ok(match &self.manifest.lora {
            None => layers
                .iter()
                .flat_map(|&i| names::layer_tensors(i))
                .collect(),
            Some(l) => {
                l.validate()?;
                layers
                    .iter()
                    .flat_map(|&i| l.targets.iter().map(move |t| names::projection(i, t)))
                    .flat_map(|m| names::lora_factors(&m))
                    .collect()
            }
        })
    }

    /// The adapters plugged into `base` (the full model or the emulator): whole layers
    /// replace the base's, LoRA factors merge into its weights as `W + B·A·alpha/r`.
    pub fn plugged_into<'b>(&'b self, base: &'b dyn WeightSource) -> PluggedIn<'b> {
        PluggedIn {
            adapter: self,
            base,
        }
    }

    /// The adapter's tensor `hf_name`, refused when it holds NaN or infinite values.
    pub(crate) fn stored(&self, hf_name: &str) -> Result<Option<HostTensor>> {
        let Ok(view) = self.tensors.tensor(hf_name) else {
            return Ok(None);
        };
        let data = decode_floats(view.dtype(), view.data(), hf_name)?;
        if data.iter().any(|x| !x.is_finite()) {
            return Err(Error::Invalid(format!(
                "the adapter's `{hf_name}` holds NaN or infinite values: training diverged; ask for an adapter from before it did"
            )));
        }
        Ok(Some(HostTensor {
            shape: view.shape().to_vec(),
            data,
        }))
    }

    /// Refuses adapters trained against another emulator.
    pub fn check_emulator(&self, emulator: &EmulatorManifest) -> Result<()> {
        if self.manifest.emulator_sha256 != emulator.weights_sha256 {
            return Err(Error::Invalid(format!(
                "these adapters were trained on emulator {}…, not on this one ({}…): use the emulator they were tuned on",
                crate::short_hash(&self.manifest.emulator_sha256, 12),
                crate::short_hash(&emulator.weights_sha256, 12)
            )));
        }
        let planned = adapter_layers(&emulator.plan);
        if self.manifest.layers != planned {
            return Err(Error::Invalid(format!(
                "the adapter declares layers {:?}, but the emulator's adapter layers are {planned:?}",
                self.manifest.layers
            )));
        }
        Ok(())
    }

    /// Refuses adapters made for another base model.
    pub fn check_base(&self, base_sha256: &str) -> Result<()> {
        if self.manifest.base_model_sha256 != base_sha256 {
            return Err(Error::Invalid(format!(
                "these adapters belong to base model {}…, not to this one ({}…): plug them into the model the emulator was made from",
                crate::short_hash(&self.manifest.base_model_sha256, 12),
                crate::short_hash(base_sha256, 12)
            )));
        }
        Ok(())
    }
}

/// The adapter file's own tensors (LoRA factors or whole layers), by their names.
impl WeightSource for Adapter<'_> {
    fn tensor(&self, hf_name: &str) -> Result<Option<HostTensor>> {
        self.stored(hf_name)
    }
}

/// A base model's weights with adapters plugged in, as one weight source.
pub struct PluggedIn<'a> {
    adapter: &'a Adapter<'a>,
    base: &'a dyn WeightSource,
}

impl WeightSource for PluggedIn<'_> {
    fn tensor(&self, hf_name: &str) -> Result<Option<HostTensor>> {
        let Some(cfg) = &self.adapter.manifest.lora else {
            let Some(tuned) = self.adapter.stored(hf_name)? else {
                return self.base.tensor(hf_name);
            };
            let base_shape = self.base.tensor(hf_name)?.map(|t| t.shape);
            if base_shape.as_ref() != Some(&tuned.shape) {
                return Err(Error::Invalid(format!(
                    "the adapter's `{hf_name}` has shape {:?}, but the model's is {:?}",
                    tuned.shape,
                    base_shape.unwrap_or_default()
                )));
            }
            return Ok(Some(tuned));
        };
        let base = self.base.tensor(hf_name)?;
        let (Some(mut w), Some(module)) = (base, names::module_of_weight(hf_name)) else {
            return self.base.tensor(hf_name);
        };
        let [a_name, b_name] = names::lora_factors(module);
        if let (Some(a), Some(b)) = (self.adapter.stored(&a_name)?, self.adapter.stored(&b_name)?) {
            if a.shape.first() != Some(&cfg.rank) {
                return Err(Error::Invalid(format!(
                    "the adapter's `{a_name}` has shape {:?}: not rank {} as its manifest says",
                    a.shape, cfg.rank
                )));
            }
            lora::merge(&mut w, &a, &b, cfg.scale() as f32)?;
        }
        Ok(Some(w))
    }
}
