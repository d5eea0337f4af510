//! Shared helpers for the integration tests: the real model's location and the goldens.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real SmolLM2-135M GGUF. Tests need it: `bash scripts/fetch-assets.sh` puts it there.
pub fn smollm2_bytes() -> Vec<u8> {
    let dir =
        std::env::var_os("SCALEOT_ASSETS").map_or_else(|| root().join("assets"), PathBuf::from);
    let path = dir.join("model/SmolLM2-135M-Instruct.Q4_1.gguf");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. Run `bash scripts/fetch-assets.sh` first.",
            path.display()
        )
    })
}

pub fn golden(name: &str) -> serde_json::Value {
    let path = root().join("tests/golden").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden file is valid JSON")
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}
pub mod session_run;
pub mod tiny;
