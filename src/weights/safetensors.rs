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
