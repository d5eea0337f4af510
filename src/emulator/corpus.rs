//! The model owner's public corpus: the text that distillation and Dynamic LayerReplace learn
//! from, cut into equal token rows. Files come in as bytes; reading them is the caller's job.

use serde_json::json;

use crate::data::{self, DataOptions};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// One corpus file: its name as recorded (`None` when the path has none), the stem the
/// loader names it by, and its bytes.
pub struct CorpusFile {
    pub file_name: Option<String>,
    pub stem: String,
    pub bytes: Vec<u8>,
}

/// Token rows of exactly `seq_len` from every file in order (packed text, split with the
/// data owner's loader), and a record of the files (name, size, sha256) for manifests.
pub fn corpus_rows(
    files: &[CorpusFile],
    tok: &Tokenizer,
    seq_len: usize,
    seed: u64,
) -> Result<(Vec<Vec<u32>>, serde_json::Value)> {
    let mut rows = Vec::new();
    let mut record = Vec::new();
    for file in files {
        record.push(json!({
            "file": file.file_name,
            "bytes": file.bytes.len(), "sha256": crate::sha256_hex(&[&file.bytes]),
        }));
        let opts = DataOptions {
            max_len: seq_len,
            held_out: 0.0,
            seed,
            truncate: false,
        };
        let name = format!("{}.txt", file.stem);
        let set = data::load(&file.bytes, &name, tok, &opts)
            .map_err(|e| Error::Invalid(format!("reading corpus {name}: {e}")))?;
        rows.extend(
            set.train
                .into_iter()
                .filter(|e| e.ids.len() == seq_len)
                .map(|e| e.ids),
        );
    }
    Ok((rows, json!(record)))
}
