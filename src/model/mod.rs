//! The LLaMA-family model: config, layers, and loading from weight files.

pub mod config;
pub mod harmonizer;
pub mod llama;
pub mod load;
pub mod lora;

pub use config::LlamaConfig;
pub use harmonizer::Harmonizer;
pub use llama::{KvCache, LayerSlot, Llama, token_tensor};
pub use load::{LoadedModel, ModelBytes, OpenedModel};
pub use lora::LoraConfig;
