//! Hugging Face checkpoints: one or more `*.safetensors` shards (F32, F16 or BF16), read from bytes.

use half::{bf16, f16};
use std::collections::HashMap;

use safetensors::{Dtype, SafeTensors};

use super::{HostTensor, WeightSource};
use crate::error::{Error, Result};

pub struct SafetensorsSource<'a> {
    shards: Vec<SafeTensors<'a>>,
}

impl<'a> SafetensorsSource<'a> {
    /// Parses every shard's header; tensor data is decoded on request.
    pub fn new(shards: &[&'a [u8]]) -> Result<Self> {
        let shards = shards
            .iter()
            .enumerate()
            .map(|(i, b)| {
                SafeTensors::deserialize(b).map_err(|e| {
                    Error::Safetensors(format!(
                        "shard #{i} is not a readable safetensors file ({e}); download it again"
                    ))
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { shards })
    }
}

/// Decodes little-endian F32/F16/BF16 bytes to f32.
pub fn decode_floats(dtype: Dtype, bytes: &[u8], name: &str) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::UnsupportedQuant {
                tensor: name.to_owned(),
                kind: format!("{other:?}"),
                supported: "F32, F16, BF16",
                remedy: "save the weights in one of those (e.g. `model.to(torch.bfloat16).save_pretrained(...)`)",
            });
        }
    })
}

impl WeightSource for SafetensorsSource<'_> {
    fn tensor(&self, hf_name: &str) -> Result<Option<HostTensor>> {
        for shard in &self.shards {
            if let Ok(view) = shard.tensor(hf_name) {
                let data = decode_floats(view.dtype(), view.data(), hf_name)?;
                return Ok(Some(HostTensor {
                    shape: view.shape().to_vec(),
                    data,
                }));
            }
        }
        Ok(None)
    }
}

/// Serializes raw little-endian tensors `(name, dtype, shape, bytes)` with a `format` tag.
pub fn encode(items: &[(String, Dtype, Vec<usize>, Vec<u8>)], format: &str) -> Result<Vec<u8>> {
    encode_with(items, &[("format", format)])
}

/// [`encode`] with any header metadata (`__metadata__` string pairs).
pub fn encode_with(
    items: &[(String, Dtype, Vec<usize>, Vec<u8>)],
    metadata: &[(&str, &str)],
) -> Result<Vec<u8>> {
    let views = items
        .iter()
        .map(|(n, dtype, shape, b)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Safetensors(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::Safetensors(e.to_string()))
}

/// Serializes host tensors as f32.
pub fn write_tensors(tensors: &[(String, HostTensor)], format: &str) -> Result<Vec<u8>> {
    encode(&f32_items(tensors), format)
}

/// The header field of a sealed file ([`encode_sealed`]) with the hash of its tensors.
const TENSORS_HASH_KEY: &str = "tensors_sha256";

/// One safetensors file carrying text `fields` in its header (besides `format`) and the hash
/// of its tensors: storage writes it whole (a rename, an OPFS file), and [`open_sealed`] reads it
/// back only undamaged. Checkpoints are sealed files.
pub fn encode_sealed(
    items: &[(String, Dtype, Vec<usize>, Vec<u8>)],
    format: &str,
    fields: &[(&str, &str)],
) -> Result<Vec<u8>> {
    let digest = tensors_digest(items.iter().map(|(name, dtype, shape, data)| {
        (name.as_str(), *dtype, shape.as_slice(), data.as_slice())
    }));
    let mut metadata = vec![("format", format), (TENSORS_HASH_KEY, digest.as_str())];
    metadata.extend_from_slice(fields);
    encode_with(items, &metadata)
}

/// A sealed file's header fields and tensors. `what` names the file in messages ("training
/// checkpoint"); a file of another format, or whose tensors do not match their hash, is
/// refused with advice to start afresh.
pub fn open_sealed<'a>(
    bytes: &'a [u8],
    format: &str,
    what: &str,
) -> Result<(HashMap<String, String>, SafeTensors<'a>)> {
    let (meta, _) = header_and_data(bytes).map_err(|e| {
        Error::Invalid(format!(
            "the {what} is damaged or not one ({e}): start afresh"
        ))
    })?;
    if meta.get("format").map(String::as_str) != Some(format) {
        return Err(Error::Invalid(format!(
            "this is not a {what} (its format is {:?}): pass the checkpoint file of an earlier run, or start afresh",
            meta.get("format").map(String::as_str).unwrap_or("none")
        )));
    }
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::Invalid(format!("the {what} is damaged ({e}): start afresh")))?;
    let digest = tensors_digest(
        file.tensors()
            .iter()
            .map(|(name, view)| (name.as_str(), view.dtype(), view.shape(), view.data())),
    );
    if meta.get(TENSORS_HASH_KEY) != Some(&digest) {
        return Err(Error::Invalid(format!(
            "the {what} is damaged (its tensors do not match the hash it was written with): start afresh"
        )));
    }
    Ok((meta, file))
}

/// sha256 over every tensor's name, dtype, shape and bytes, in name order: the same for the
/// items a file is written from and for the file read back, whatever order the safetensors
/// writer lays them out in.
fn tensors_digest<'a>(
    tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>,
) -> String {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<_> = tensors.collect();
    sorted.sort_by_key(|(name, ..)| *name);
    let mut h = Sha256::new();
    for (name, dtype, shape, data) in sorted {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(format!("{dtype:?}{shape:?}").as_bytes());
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Host tensors as raw little-endian f32 items for [`encode`].
pub fn f32_items(tensors: &[(String, HostTensor)]) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    tensors
        .iter()
        .map(|(n, t)| {
            let bytes = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            (n.clone(), Dtype::F32, t.shape.clone(), bytes)
        })
        .collect()
}

/// A safetensors file's `__metadata__` and its tensor data (the bytes after the header).
pub fn header_and_data(bytes: &[u8]) -> Result<(HashMap<String, String>, &[u8])> {
    let (n, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::Safetensors(format!("not a readable safetensors file ({e})")))?;
    let data = bytes.get(8 + n..).unwrap_or_default();
    Ok((meta.metadata().clone().unwrap_or_default(), data))
}
