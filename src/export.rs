//! The tuned model in the forms people load models with: a Hugging Face folder
//! (transformers' `AutoModelForCausalLM` / `AutoTokenizer`), a PEFT adapter folder
//! (`PeftModel.from_pretrained`), and a GGUF file (llama.cpp and its ecosystem).
//! Each returns the files' bytes; the caller writes them.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::adapter::Adapter;
use crate::error::{Error, Result};
use crate::model::LlamaConfig;
use crate::names;
use crate::tokenizer::Tokenizer;
use crate::weights::gguf::{self, MetaValue, TensorBytes};
use crate::weights::quant::{self, GgmlType};
use crate::weights::{HostTensor, WeightSource, permute_rows};

/// One file of an export: its name in the output folder and its bytes.
pub type File = (&'static str, Vec<u8>);

fn json_file(name: &'static str, value: &Value) -> Result<File> {
    let text = serde_json::to_string_pretty(value).map_err(|error| Error::Json {
        what: name.into(),
        error,
    })?;
    Ok((name, text.into_bytes()))
}

/// A Hugging Face checkpoint folder: `model.safetensors` (f32), `config.json` (with the
/// special token ids), `generation_config.json`, and the tokenizer as `tokenizer.json` +
/// `tokenizer_config.json` (special tokens by role, chat template).
pub fn hf_folder(
    cfg: &LlamaConfig,
    tokenizer: &Tokenizer,
    weights: &dyn WeightSource,
) -> Result<Vec<File>> {
    let ids = json!({
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.eos_id,
    });
    let mut config = cfg.to_hf_json();
    for (key, id) in ids.as_object().into_iter().flatten() {
        config[key] = id.clone();
    }
    Ok(vec![
        (
            "model.safetensors",
            crate::model::write_checkpoint(cfg, weights)?,
        ),
        json_file("config.json", &config)?,
        json_file("generation_config.json", &ids)?,
        (
            "tokenizer.json",
            tokenizer.to_hf_json().to_string().into_bytes(),
        ),
        json_file(
            "tokenizer_config.json",
            &tokenizer.to_hf_config(cfg.max_position_embeddings),
        )?,
    ])
}

/// A PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`) that
/// `PeftModel.from_pretrained(base, DIR)` applies to the full model `base_model` names: the
/// factors keep their PEFT names and layouts, and their layers are `layers_to_transform`.
/// Whole-layer adapters have no PEFT LoRA form: refused, pointing at the merged checkpoint.
pub fn peft_adapter(adapter: &Adapter, base_model: &str) -> Result<Vec<File>> {
    let Some(lora) = &adapter.manifest.lora else {
        return Err(Error::Invalid(
            "these adapters are whole tuned layers, not LoRA factors, so a PEFT LoRA adapter cannot express them: write the merged checkpoint with `scaleot plugin --out DIR` and load it with AutoModelForCausalLM.from_pretrained(DIR)".into(),
        ));
    };
    // An integral alpha is written as PEFT writes it (an int).
    let alpha = match lora.alpha.fract() == 0.0 && lora.alpha.abs() < 1e15 {
        true => json!(lora.alpha as i64),
        false => json!(lora.alpha),
    };
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": lora.rank,
        "lora_alpha": alpha,
        "target_modules": lora.targets,
        "layers_to_transform": adapter.manifest.layers,
        "layers_pattern": "layers",
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
    });
    let tensors = adapter.required_all(adapter.expected_tensors()?)?;
    Ok(vec![
        json_file("adapter_config.json", &config)?,
        (
            "adapter_model.safetensors",
            crate::weights::safetensors::write_tensors(&tensors, "pt")?,
        ),
    ])
}

/// The precision of a GGUF export's matrices (norms stay f32, as llama.cpp keeps them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufPrecision {
    F16,
    Q8_0,
}

impl GgufPrecision {
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "f16" => Ok(Self::F16),
            "q8_0" => Ok(Self::Q8_0),
            _ => Err(Error::setting(
                "gguf_type",
                name,
                "the GGUF export writes f16 or q8_0; quantize further with llama.cpp's llama-quantize",
            )),
        }
    }

    fn ggml(self) -> GgmlType {
        match self {
            Self::F16 => GgmlType::F16,
            Self::Q8_0 => GgmlType::Q8_0,
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_MOSTLY_*`).
    fn file_type(self) -> u64 {
        match self {
            Self::F16 => 1,
            Self::Q8_0 => 7,
        }
    }
}

/// The model as one GGUF file in llama.cpp's layout: its tensor names, Q/K rows in its
/// rotary order, matrices in `precision` (a Q8_0 matrix whose rows are not whole blocks
/// goes out f16, as llama.cpp does), norms f32. Metadata is the config's and the
/// tokenizer's; with `base` (the GGUF the model came from) its own `general.*` and
/// `tokenizer.*` entries are kept as they were.
pub fn gguf_file(
    cfg: &LlamaConfig,
    tokenizer: &Tokenizer,
    weights: &dyn WeightSource,
    precision: GgufPrecision,
    base: Option<&BTreeMap<String, MetaValue>>,
) -> Result<Vec<u8>> {
    let mut meta: BTreeMap<String, MetaValue> = cfg.to_gguf_metadata()?.into_iter().collect();
    meta.extend(tokenizer.to_gguf_metadata());
    let kept = |k: &&String| k.starts_with("general.") || k.starts_with("tokenizer.");
    for (key, value) in base.into_iter().flatten().filter(|(k, _)| kept(k)) {
        meta.insert(key.clone(), value.clone());
    }
    meta.insert(
        "general.file_type".into(),
        MetaValue::UInt(precision.file_type()),
    );
    meta.insert("general.quantization_version".into(), MetaValue::UInt(2));
    // The architecture first, as llama.cpp's converter writes it.
    let arch = meta.remove_entry("general.architecture");
    let meta: Vec<(String, MetaValue)> = arch.into_iter().chain(meta).collect();
    let mut tensors = Vec::new();
    for name in names::checkpoint(cfg.num_hidden_layers, cfg.tie_word_embeddings) {
        let t = weights.required(&name)?;
        let gguf_name = names::gguf(&name).ok_or_else(|| {
            Error::Invalid(format!("`{name}` has no GGUF name: cannot export it"))
        })?;
        tensors.push(gguf_tensor(cfg, &name, gguf_name, t, precision)?);
    }
    Ok(gguf::write(&meta, &tensors))
}

/// One tensor in llama.cpp's form (see [`gguf_file`]).
fn gguf_tensor(
    cfg: &LlamaConfig,
    hf_name: &str,
    gguf_name: String,
    t: HostTensor,
    precision: GgufPrecision,
) -> Result<TensorBytes> {
    let HostTensor { shape, mut data } = t;
    let heads = match names::is_query_or_key(hf_name) {
        Some(true) => Some(cfg.num_attention_heads),
        Some(false) => Some(cfg.num_key_value_heads),
        None => None,
    };
    if let (Some(h), [rows, cols]) = (heads, shape.as_slice()) {
        data = permute_rows(&data, *rows, *cols, h);
    }
    let kind = match (shape.as_slice(), precision.ggml()) {
        ([_], _) => GgmlType::F32,
        ([_, cols], GgmlType::Q8_0) if !cols.is_multiple_of(32) => GgmlType::F16,
        (_, kind) => kind,
    };
    let bytes = quant::quantize(kind, &data)
        .ok_or_else(|| Error::Invalid(format!("`{hf_name}` cannot be written as {kind:?}")))?;
    Ok(TensorBytes {
        name: gguf_name,
        shape,
        kind,
        bytes,
    })
}
