//! ScaleOT shared core: the LLaMA-family model, weight formats, tokenizer and evaluation,
//! compiled natively (owner binary) and to wasm32 (the data owner's browser app).

pub mod adapter;
pub mod data;
pub mod emulator;
pub mod error;
pub mod eval;
pub mod generate;
pub mod model;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use error::{Error, Result};

#[cfg(target_arch = "wasm32")]
pub mod web;
