//! Weight formats. Each format is read from bytes and answers "give me tensor X by its
//! Hugging Face name, as f32 row-major", so the model builder never knows the file format.

pub mod gguf;
pub mod quant;
pub mod safetensors;

use crate::error::Result;
use crate::names;

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

    /// The tensor `hf_name`, whose absence is an error naming it.
    fn required(&self, hf_name: &str) -> Result<HostTensor> {
        self.tensor(hf_name)?
            .ok_or_else(|| crate::Error::MissingTensor(hf_name.to_owned()))
    }

    /// Every tensor of `names`, paired with its name (for writing them out).
    fn required_all(&self, names: Vec<String>) -> Result<Vec<(String, HostTensor)>> {
        let pair = |name: String| {
            let t = self.required(&name)?;
            Ok((name, t))
        };
        names.into_iter().map(pair).collect()
    }
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

/// A source whose low-rank projections read as dense weights: `X.weight` absent but its
/// factors present (Selective Rank Compression's storage, [`names::lowrank_factors`]) → `U·V`.
/// Models load low-rank layers like raw ones through it. The factors must multiply to the
/// projection's shape (`shape_of("q_proj")`: `[out, in]` from the model's config) before any
/// product is formed: two small factors can describe a matrix of any size.
pub struct Factored<'a> {
    source: &'a dyn WeightSource,
    shape_of: &'a dyn Fn(&str) -> Option<[usize; 2]>,
}

impl<'a> Factored<'a> {
    pub fn new(
        source: &'a dyn WeightSource,
        shape_of: &'a dyn Fn(&str) -> Option<[usize; 2]>,
    ) -> Self {
        Self { source, shape_of }
    }
}

impl WeightSource for Factored<'_> {
    fn tensor(&self, hf_name: &str) -> Result<Option<HostTensor>> {
        if let Some(t) = self.source.tensor(hf_name)? {
            return Ok(Some(t));
        }
        let Some(module) = names::module_of_weight(hf_name) else {
            return Ok(None);
        };
        let [u_name, v_name] = names::lowrank_factors(module);
        let (Some(u), Some(v)) = (self.source.tensor(&u_name)?, self.source.tensor(&v_name)?)
        else {
            return Ok(None);
        };
        let projection = module.rsplit('.').next().unwrap_or_default();
        let Some([out, inp]) = (self.shape_of)(projection) else {
            return Err(crate::error::Error::Invalid(format!(
                "`{u_name}` factors no projection of the model"
            )));
        };
        let r = u.shape.get(1).copied().unwrap_or(0);
        if u.shape != [out, r] || v.shape != [r, inp] || r == 0 {
            return Err(crate::error::Error::ShapeMismatch {
                tensor: u_name,
                expected: vec![out, inp],
                found: vec![
                    u.shape.first().copied().unwrap_or(0),
                    r,
                    v.shape.last().copied().unwrap_or(0),
                ],
            });
        }
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

/// llama.cpp stores Q and K rows permuted for its interleaved RoPE: within each head, its row
/// `2i + j` is row `j·half + i` of HF's half-split order. `to_hf` restores HF's order (reading
/// a GGUF); otherwise HF's rows go into llama.cpp's (writing one).
fn reorder_rope_rows(
    data: &[f32],
    rows: usize,
    cols: usize,
    n_heads: usize,
    to_hf: bool,
) -> Vec<f32> {
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let (gguf_row, hf_row) = (h * head_dim + i * 2 + j, h * head_dim + j * half + i);
                let (src, dst) = if to_hf {
                    (gguf_row, hf_row)
                } else {
                    (hf_row, gguf_row)
                };
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// llama.cpp's Q/K rows in HF's order (see [`reorder_rope_rows`]).
fn unpermute_rows(data: &[f32], rows: usize, cols: usize, n_heads: usize) -> Vec<f32> {
    reorder_rope_rows(data, rows, cols, n_heads, true)
}

/// HF's Q/K rows in llama.cpp's order, for writing a GGUF (see [`reorder_rope_rows`]).
pub fn permute_rows(data: &[f32], rows: usize, cols: usize, n_heads: usize) -> Vec<f32> {
    reorder_rope_rows(data, rows, cols, n_heads, false)
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
        let Some(name) = names::gguf(hf_name) else {
            return Ok(None);
        };
        let Some(info) = self.gguf.tensor_info(&name) else {
            return Ok(None);
        };
        let shape = info.shape();
        let mut data = self.gguf.tensor_f32(info)?;
        let heads = match names::is_query_or_key(hf_name) {
            Some(true) => Some(self.n_heads),
            Some(false) => Some(self.n_kv_heads),
            None => None,
        };
        // `cols > 0`: the rows of an empty tensor are not bounded by the file's size (a
        // crafted [2^40, 0] tensor made this loop run for hours; found by fuzzing).
        if let (Some(h), [rows, cols]) = (heads, shape.as_slice())
            && h > 0
            && *cols > 0
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

    /// Found by fuzzing: an empty query tensor with 2^40 rows (its size bounded by nothing in
    /// the file) must not be walked row by row.
    #[test]
    fn an_empty_tensor_with_countless_rows_reads_at_once() {
        let bytes = gguf::write_f32(&[], &[("blk.0.attn_q.weight", vec![1 << 40, 0], vec![])]);
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let source = GgufSource::new(Gguf::parse(&bytes).unwrap(), 4, 2);
            let t = source
                .tensor("model.layers.0.self_attn.q_proj.weight")
                .unwrap()
                .unwrap();
            done.send(t.shape).unwrap();
        });
        let shape = finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading an empty tensor took more than 10 s");
        assert_eq!(shape, vec![1 << 40, 0]);
    }

    /// Two small factors may describe a matrix of any size (here 2^40 elements): they are
    /// refused against the projection's shape before any product is formed.
    #[test]
    fn factors_that_do_not_make_the_projection_are_refused_before_multiplying() {
        let module = "model.layers.0.self_attn.q_proj";
        let [u, v] = names::lowrank_factors(module);
        let factor = |shape: Vec<usize>| HostTensor {
            data: vec![1.0; shape.iter().product()],
            shape,
        };
        let stored = HostTensors(
            [(u, factor(vec![1 << 20, 1])), (v, factor(vec![1, 1 << 20]))]
                .into_iter()
                .collect(),
        );
        let shape_of = |_: &str| Some([32, 32]);
        let err = Factored::new(&stored, &shape_of)
            .tensor(&names::weight(module))
            .unwrap_err();
        assert!(err.to_string().contains("q_proj"), "{err}");
        let fitting = HostTensors(
            [
                (
                    names::lowrank_factors(module)[0].clone(),
                    factor(vec![32, 2]),
                ),
                (
                    names::lowrank_factors(module)[1].clone(),
                    factor(vec![2, 32]),
                ),
            ]
            .into_iter()
            .collect(),
        );
        let dense = Factored::new(&fitting, &shape_of).tensor(&names::weight(module));
        assert_eq!(
            dense.unwrap().map(|t| (t.shape, t.data[0])),
            Some((vec![32, 32], 2.0))
        );
    }

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
        assert_eq!(permute_rows(&hf, rows, cols, heads), permuted);
    }
}
