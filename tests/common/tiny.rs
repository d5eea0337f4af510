//! A tiny random LLaMA (6 layers, hidden 32) and its byte-level tokenizer, for tests that
//! need a whole model but not a real one; plus helpers to compare models.
#![allow(dead_code)]

use burn::tensor::Device;
use scaleot::emulator::{
    AdapterSplit, BundleSpec, Emulator, EmulatorManifest, FrozenDtype, uniform_drop, write_bundle,
};
use scaleot::model::{LayerSlot, Llama, LlamaConfig, ModelBytes, token_tensor};
use scaleot::tokenizer::Tokenizer;
use scaleot::weights::HostTensor;
use scaleot::weights::safetensors::write_tensors;

/// A byte-level tokenizer with all 256 byte symbols, a few merges and ChatML specials.
pub fn tiny_tokenizer() -> Tokenizer {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    for t in ["th", "the", "<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        tokens.push(t.into());
    }
    let specials = vec![
        ("<|endoftext|>".to_string(), 258),
        ("<|im_start|>".to_string(), 259),
        ("<|im_end|>".to_string(), 260),
    ];
    Tokenizer::new(
        tokens,
        &["t h".into(), "th e".into()],
        specials,
        true,
        Some(259),
        Some(260),
    )
    .unwrap()
}

/// GPT-2's byte → printable character map.
pub fn byte_char(b: u8) -> char {
    let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable {
        return b as char;
    }
    let rank = (0..b)
        .filter(|&x| !((b'!'..=b'~').contains(&x) || (0xA1..=0xAC).contains(&x) || x >= 0xAE))
        .count();
    char::from_u32(256 + rank as u32).unwrap()
}

pub fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 261,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 6,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 128,
        tie_word_embeddings: true,
        explicit_head_dim: None,
        rope_scaling: None,
    }
}

/// A random tiny model as Hugging Face files (deterministic LCG weights).
pub fn tiny_model_bytes() -> ModelBytes {
    tiny_model_bytes_with(|_| false)
}

/// The tiny model with the layers for which `identity(i)` holds turned into identities
/// (zero attention output and MLP down projections: they add nothing to the residual).
pub fn tiny_model_bytes_with(identity: impl Fn(usize) -> bool) -> ModelBytes {
    tiny_model_edited(|name, data| {
        let layer = name
            .strip_prefix("model.layers.")
            .and_then(|r| r.split('.').next())
            .and_then(|i| i.parse::<usize>().ok());
        let silent = name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight");
        if silent && layer.is_some_and(&identity) {
            data.iter_mut().for_each(|x| *x = 0.0);
        }
    })
}

/// The tiny model with `edit(name, values)` applied to each of its tensors.
pub fn tiny_model_edited(edit: impl Fn(&str, &mut Vec<f32>)) -> ModelBytes {
    let cfg = tiny_config();
    let mut uniform = lcg_uniform(42);
    let mut rand =
        |n: usize, scale: f32| -> Vec<f32> { (0..n).map(|_| uniform() * 2.0 * scale).collect() };
    let mut tensors = Vec::new();
    for name in scaleot::names::checkpoint(cfg.num_hidden_layers, cfg.tie_word_embeddings) {
        let (shape, scale) = tiny_shape(&cfg, &name);
        let n = shape.iter().product();
        let mut data: Vec<f32> = if name.ends_with("norm.weight") {
            rand(n, 0.1).into_iter().map(|x| 1.0 + x).collect()
        } else {
            rand(n, scale)
        };
        edit(&name, &mut data);
        tensors.push((name, HostTensor { shape, data }));
    }
    ModelBytes::Hf {
        config: cfg.to_hf_json().to_string(),
        tokenizer: tiny_tokenizer().to_hf_json().to_string(),
        tokenizer_config: None,
        shards: vec![write_tensors(&tensors, "pt").unwrap()],
    }
}

/// Deterministic uniform values in [-0.5, 0.5) from a 64-bit LCG seeded with `seed`: random
/// weights that are the same on every machine.
pub fn lcg_uniform(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed;
    move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

pub fn tiny_shape(cfg: &LlamaConfig, name: &str) -> (Vec<usize>, f32) {
    let (h, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let kv = cfg.num_key_value_heads * cfg.head_dim();
    let s = 0.3;
    match name.rsplit('.').nth(1).unwrap_or("") {
        "embed_tokens" => (vec![v, h], 1.0),
        "q_proj" | "o_proj" => (vec![h, h], s),
        "k_proj" | "v_proj" => (vec![kv, h], s),
        "gate_proj" | "up_proj" => (vec![f, h], s),
        "down_proj" => (vec![h, f], s),
        _ => (vec![h], 0.1),
    }
}

/// An emulator bundle of a tiny model: adapters 1+1, `keep` of the 4 middle layers kept.
pub fn bundle(base: &ModelBytes, keep: usize) -> (Vec<u8>, EmulatorManifest) {
    bundle_storing(base, keep, FrozenDtype::F32)
}

/// [`bundle`] with its frozen weights stored as `frozen_dtype`.
pub fn bundle_storing(
    base: &ModelBytes,
    keep: usize,
    frozen_dtype: FrozenDtype,
) -> (Vec<u8>, EmulatorManifest) {
    let opened = base.open().unwrap();
    let plan = uniform_drop(6, AdapterSplit::parse("1+1").unwrap(), keep).unwrap();
    let spec = BundleSpec {
        config: &opened.config,
        tokenizer: &opened.tokenizer,
        plan,
        method: "uniform-drop".into(),
        params: serde_json::json!({"keep": keep}),
        base_model_sha256: opened.sha256.clone(),
        frozen_dtype,
    };
    write_bundle(spec, opened.source.as_ref()).unwrap()
}

/// An emulator bundle loaded on `device`.
pub fn load_emulator(weights: &[u8], manifest: &EmulatorManifest, device: &Device) -> Emulator {
    Emulator::load(&serde_json::to_string(manifest).unwrap(), weights, device).unwrap()
}

/// The adapters' tensors of `model` read back to the host, by name (what an adapter file holds).
pub fn read_adapter_tensors(
    model: &Llama,
    plan: &[scaleot::emulator::LayerKind],
) -> Vec<(String, HostTensor)> {
    scaleot::adapter::adapter_tensors(model, plan)
        .into_iter()
        .map(|(n, shape, t)| {
            (
                n,
                HostTensor {
                    shape,
                    data: t.into_data().try_into_vec().unwrap(),
                },
            )
        })
        .collect()
}

/// Every weight of the model by name: embedding, norms, projections, LoRA factors.
pub fn all_weights(model: &Llama) -> Vec<(String, Vec<f32>)> {
    let host = |t: burn::tensor::Tensor<2>| -> Vec<f32> { t.into_data().try_into_vec().unwrap() };
    let mut out = vec![("embed".to_string(), host(model.embed_tokens.val()))];
    for (slot, &orig) in model.layers.iter().zip(&model.layer_index) {
        let LayerSlot::Decoder(l) = slot else {
            continue;
        };
        for (norm, w) in [
            ("input_layernorm", &l.input_layernorm.weight),
            (
                "post_attention_layernorm",
                &l.post_attention_layernorm.weight,
            ),
        ] {
            let v: Vec<f32> = w.val().into_data().try_into_vec().unwrap();
            out.push((format!("model.layers.{orig}.{norm}"), v));
        }
        for (module, proj) in l.projections(orig) {
            out.push((format!("{module}.weight"), host(proj.weight.val())));
            if let Some(lora) = &proj.lora {
                out.push((format!("{module}.lora_A"), host(lora.a.val())));
                out.push((format!("{module}.lora_B"), host(lora.b.val())));
            }
        }
    }
    out
}

pub fn logits(model: &Llama, device: &Device) -> Vec<f32> {
    let ids = vec![vec![5u32, 80, 100, 3, 250, 17, 42, 9]];
    model
        .forward(token_tensor(&ids, device))
        .into_data()
        .try_into_vec()
        .unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}
