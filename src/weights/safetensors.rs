//! Hugging Face checkpoints: one or more `*.safetensors` shards (F32, F16 or BF16), read from bytes.

use half::{bf16, f16};
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
