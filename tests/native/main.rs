//! The native integration tests, as one test binary: the model stack is linked once, not once
//! per file (`cargo test --release --test native [NAME]`).

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod browser_session;
mod exports;
mod fuzz;
mod model_golden;
mod offsite_tuning;
mod quant_golden;
mod scaleot_emulator;
mod tokenizer_golden;
