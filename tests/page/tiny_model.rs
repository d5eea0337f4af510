//! Writes the tests' tiny random LLaMA (6 layers, hidden 32, byte-level tokenizer) as a
//! Hugging Face folder, so that the browser page test can build a tiny emulator with the real
//! owner binary: `cargo run --release --example tiny_model -- OUT_DIR`.

#[path = "../common/tiny.rs"]
mod tiny;

use scaleot::model::ModelBytes;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1).ok_or("usage: tiny_model OUT_DIR")?;
    let out = std::path::Path::new(&out);
    std::fs::create_dir_all(out)?;
    let ModelBytes::Hf {
        config,
        tokenizer,
        shards,
        ..
    } = tiny::tiny_model_bytes()
    else {
        return Err("the tiny model is a Hugging Face checkpoint".into());
    };
    std::fs::write(out.join("config.json"), config)?;
    std::fs::write(out.join("tokenizer.json"), tokenizer)?;
    for shard in shards {
        std::fs::write(out.join("model.safetensors"), shard)?;
    }
    println!("tiny model written to {}", out.display());
    Ok(())
}
