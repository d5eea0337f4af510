//! Weight formats. Each format is read from bytes and answers "give me tensor X by its
//! Hugging Face name, as f32 row-major", so the model builder never knows the file format.

pub mod gguf;
pub mod quant;
pub mod safetensors;

use crate::error::Result;

/// A dequantized tensor: row-major shape and values.
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Anything that can hand out tensors under Hugging Face LLaMA names
/// (`model.layers.3.self_attn.q_proj.weight`, ...), with HF's layouts.
pub trait WeightSource {
    /// `Ok(None)` when the tensor is absent (e.g. a tied `lm_head.weight`).
    fn tensor(&self, hf_name: &str) -> Result<Option<HostTensor>>;
}

/// Tensors from `top` where it has them, else from `base` (adapters over a model).
pub struct Overlay<'a> {
    pub top: &'a dyn WeightSource,
    pub base: &'a dyn WeightSource,
}

impl WeightSource for Overlay<'_> {
    fn tensor(&self, hf_name: &str) -> Result<Option<HostTensor>> {
        match self.top.tensor(hf_name)? {
            Some(t) => Ok(Some(t)),
            None => self.base.tensor(hf_name),
        }
    }
}

/// Selective Rank Compression's storage: a projection kept as factors
/// `{module}.lowrank_u.weight` `[out, r]` (U·Σ) and `{module}.lowrank_v.weight` `[r, in]` (Vᵀ).
pub fn lowrank_names(module: &str) -> [String; 2] {
    [
        format!("{module}.lowrank_u.weight"),
        format!("{module}.lowrank_v.weight"),
    ]
}

/// A source whose low-rank projections read as dense weights: `X.weight` absent but its
/// factors present → `U·V`. Models load low-rank layers like raw ones through it.
pub struct Factored<'a>(pub &'a dyn WeightSource);

impl WeightSource for Factored<'_> {
    fn tensor(&self, hf_name: &str) -> Result<Option<HostTensor>> {
        if let Some(t) = self.0.tensor(hf_name)? {
            return Ok(Some(t));
        }
        let Some(module) = hf_name.strip_suffix(".weight") else {
            return Ok(None);
        };
        let [u_name, v_name] = lowrank_names(module);
        let (Some(u), Some(v)) = (self.0.tensor(&u_name)?, self.0.tensor(&v_name)?) else {
            return Ok(None);
        };
        let (out, r, inp) = match (&u.shape[..], &v.shape[..]) {
            ([o, r1], [r2, i]) if r1 == r2 => (*o, *r1, *i),
            _ => {
                return Err(crate::error::Error::ShapeMismatch {
                    tensor: v_name,
                    expected: vec![u.shape.get(1).copied().unwrap_or(0), 0],
                    found: v.shape,
                });
            }
        };
        let mut w = vec![0f32; out * inp];
        for o in 0..out {
            let row = &mut w[o * inp..(o + 1) * inp];
            for k in 0..r {
                let c = u.data[o * r + k];
                for (x, &vv) in row.iter_mut().zip(&v.data[k * inp..(k + 1) * inp]) {
                    *x += c * vv;
                }
            }
        }
        Ok(Some(HostTensor {
            shape: vec![out, inp],
            data: w,
        }))
    }
}

/// Tensors held in memory by name (e.g. computed by the emulator builder).
pub struct HostTensors(pub std::collections::HashMap<String, HostTensor>);

impl WeightSource for HostTensors {
    fn tensor(&self, hf_name: &str) -> Result<Option<HostTensor>> {
        Ok(self.0.get(hf_name).cloned())
    }
}

pub use self::gguf::Gguf;
pub use self::safetensors::SafetensorsSource;

/// Maps a Hugging Face LLaMA tensor name to its llama.cpp GGUF name.
fn gguf_name(hf: &str) -> Option<String> {
    Some(match hf {
        "model.embed_tokens.weight" => "token_embd.weight".into(),
        "model.norm.weight" => "output_norm.weight".into(),
        "lm_head.weight" => "output.weight".into(),
        _ => {
            let rest = hf.strip_prefix("model.layers.")?;
            let (layer, part) = rest.split_once('.')?;
            let short = match part {
                "input_layernorm.weight" => "attn_norm.weight",
                "post_attention_layernorm.weight" => "ffn_norm.weight",
                "self_attn.q_proj.weight" => "attn_q.weight",
                "self_attn.k_proj.weight" => "attn_k.weight",
                "self_attn.v_proj.weight" => "attn_v.weight",
                "self_attn.o_proj.weight" => "attn_output.weight",
                "mlp.gate_proj.weight" => "ffn_gate.weight",
                "mlp.up_proj.weight" => "ffn_up.weight",
                "mlp.down_proj.weight" => "ffn_down.weight",
                _ => return None,
            };
            format!("blk.{layer}.{short}")
        }
    })
}

/// llama.cpp stores Q and K rows permuted for its interleaved RoPE; this restores HF's
/// half-split order: rows of each head go from (pair, 2) to (2, pair).
fn unpermute_rows(data: &[f32], rows: usize, cols: usize, n_heads: usize) -> Vec<f32> {
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * head_dim + i * 2 + j;
                let dst = h * head_dim + j * half + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// GGUF as a [`WeightSource`], undoing llama.cpp's Q/K permutation.
pub struct GgufSource<'a> {
    pub gguf: Gguf<'a>,
    n_heads: usize,
    n_kv_heads: usize,
}

impl<'a> GgufSource<'a> {
    pub fn new(gguf: Gguf<'a>, n_heads: usize, n_kv_heads: usize) -> Self {
        Self {
            gguf,
            n_heads,
            n_kv_heads,
        }
    }
}

impl WeightSource for GgufSource<'_> {
    fn tensor(&self, hf_name: &str) -> Result<Option<HostTensor>> {
        let Some(name) = gguf_name(hf_name) else {
            return Ok(None);
        };
        let Some(info) = self.gguf.tensor_info(&name) else {
            return Ok(None);
        };
        let shape = info.shape();
        let mut data = self.gguf.tensor_f32(info)?;
        let heads = if hf_name.ends_with("q_proj.weight") {
            Some(self.n_heads)
        } else if hf_name.ends_with("k_proj.weight") {
            Some(self.n_kv_heads)
        } else {
            None
        };
        if let (Some(h), [rows, cols]) = (heads, shape.as_slice())
            && h > 0
            && rows % (2 * h) == 0
        {
            data = unpermute_rows(&data, *rows, *cols, h);
        }
        Ok(Some(HostTensor { shape, data }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(n_head, 2, half, cols).swapaxes(1, 2)
        let (heads, head_dim, cols) = (2, 4, 3);
        let rows = heads * head_dim;
        let hf: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let mut permuted = vec![0f32; hf.len()];
        let half = head_dim / 2;
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..half {
                    let src = h * head_dim + j * half + i;
                    let dst = h * head_dim + i * 2 + j;
                    permuted[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_eq!(unpermute_rows(&permuted, rows, cols, heads), hf);
    }

    #[test]
    fn names_map_to_llama_cpp() {
        assert_eq!(
            gguf_name("model.layers.12.mlp.down_proj.weight").as_deref(),
            Some("blk.12.ffn_down.weight")
        );
        assert_eq!(gguf_name("model.bogus"), None);
    }
}
