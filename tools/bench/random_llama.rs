//! Writes a LLaMA of a real model's shape with random weights (f16) and the tests' byte-level
//! tokenizer as a Hugging Face folder, for measuring speed and memory at sizes whose weights are
//! not at hand (speed and memory do not depend on the weights' values):
//! `cargo run --release --example random_llama -- SHAPE OUT_DIR`, SHAPE one of
//!   smollm2-135m  SmolLM2-135M's shape (30 layers x 576, vocabulary 49,152)
//!   llama-1b      a ~1B LLaMA (16 layers x 2048, MLP 8192, 32 heads / 8 KV heads, vocabulary 32,000,
//!                 tied head: Llama-3.2-1B's shape with a 32k vocabulary)

#[path = "../../tests/common/tiny.rs"]
mod tiny;

use half::f16;
use safetensors::Dtype;
use scaleot::model::LlamaConfig;
use scaleot::weights::safetensors::encode;

fn shape(name: &str) -> Option<LlamaConfig> {
    let base = tiny::tiny_config();
    match name {
        "smollm2-135m" => Some(LlamaConfig {
            vocab_size: 49_152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            rope_theta: 100_000.0,
            max_position_embeddings: 8192,
            ..base
        }),
        "llama-1b" => Some(LlamaConfig {
            vocab_size: 32_000,
            hidden_size: 2048,
            intermediate_size: 8192,
            num_hidden_layers: 16,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            rope_theta: 500_000.0,
            max_position_embeddings: 8192,
            ..base
        }),
        _ => None,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [shape_name, out] = args.as_slice() else {
        return Err("usage: random_llama smollm2-135m|llama-1b OUT_DIR".into());
    };
    let cfg = shape(shape_name).ok_or("unknown shape: smollm2-135m or llama-1b")?;
    let out = std::path::Path::new(out);
    std::fs::create_dir_all(out)?;
    // Uniform values of standard deviation 0.02 (the usual initialisation), norms near 1.
    let mut uniform = tiny::lcg_uniform(7);
    let mut items = Vec::new();
    let mut params = 0usize;
    for name in scaleot::names::checkpoint(cfg.num_hidden_layers, cfg.tie_word_embeddings) {
        let (dims, _) = tiny::tiny_shape(&cfg, &name);
        let n: usize = dims.iter().product();
        params += n;
        let norm = name.ends_with("norm.weight");
        let bytes: Vec<u8> = (0..n)
            .flat_map(|_| {
                let x = uniform();
                let v = if norm { 1.0 + 0.2 * x } else { 0.069 * x };
                f16::from_f32(v).to_le_bytes()
            })
            .collect();
        items.push((name, Dtype::F16, dims, bytes));
    }
    std::fs::write(out.join("model.safetensors"), encode(&items, "pt")?)?;
    std::fs::write(out.join("config.json"), cfg.to_hf_json().to_string())?;
    let tokenizer = tiny::tiny_tokenizer().to_hf_json().to_string();
    std::fs::write(out.join("tokenizer.json"), tokenizer)?;
    println!(
        "{shape_name}: {:.1}M random parameters written to {}",
        params as f64 / 1e6,
        out.display()
    );
    Ok(())
}
