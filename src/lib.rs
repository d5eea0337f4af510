//! ScaleOT shared core: the LLaMA-family model, weight formats, tokenizer and evaluation,
//! compiled natively (owner binary) and to wasm32 (the data owner's browser app).

pub mod adapter;
pub mod chat;
pub mod data;
pub mod emulator;
pub mod error;
pub mod eval;
pub mod export;
pub mod generate;
pub mod manifest;
pub mod model;
pub mod names;
pub mod optim;
pub mod readback;
pub mod replicas;
pub mod session;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use error::{Error, Result};

/// The first `n` characters of a hash, for messages and file names. Hashes read from files
/// are user input: any string, so never sliced by bytes.
pub fn short_hash(hash: &str, n: usize) -> String {
    hash.chars().take(n).collect()
}

/// Hex sha256 of byte parts taken in order: the identity of weight files, bundles, adapters.
pub fn sha256_hex(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of everything `reader` yields, read in 1 MiB pieces (files larger than memory).
pub fn sha256_hex_of(mut reader: impl std::io::Read) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf)? {
            0 => break,
            n => h.update(&buf[..n]),
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(target_arch = "wasm32")]
pub mod web;
