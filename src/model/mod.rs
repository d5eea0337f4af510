//! The LLaMA-family model: config, layers, and loading from weight files.

pub mod attention;
pub mod config;
#[cfg(any(feature = "flex", test, target_family = "wasm"))]
mod cpu_kernels;
pub mod cross_entropy;
pub mod frozen;
pub mod harmonizer;
pub mod layers;
pub mod llama;
pub mod load;
pub mod lora;
pub mod rms_norm;
pub mod rotary;
pub mod swiglu;
#[cfg(any(feature = "wgpu", target_family = "wasm"))]
pub mod wgsl_matmul;

pub use config::LlamaConfig;
pub use harmonizer::Harmonizer;
pub use layers::{Linear, Lora, RmsNorm, read_named, read_scalar, read_vec};
pub use llama::{
    HEAD_CHUNK_LOGITS, HeadLoss, KvCache, LayerSlot, LayerSource, Llama, Positions,
    SCORING_CHUNK_LOGITS, token_tensor,
};
pub use load::{LoadedModel, ModelBytes, OpenedModel, write_checkpoint};
pub use lora::LoraConfig;
