//! The LLaMA-family decoder: RMSNorm, rotary embeddings (HF half-split layout), grouped-query
//! causal attention, SwiGLU MLP, tied or untied head. f32 compute on any burn device.
//!
//! Layers sit in [`LayerSlot`]s so that later stages (emulators) can put a harmonizer or a
//! low-rank variant in a slot, or leave a layer out, without touching the rest of the model.

use burn::module::{Module, Param};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::config::LlamaConfig;
use super::cross_entropy::softmax_cross_entropy;
use super::frozen::{self, FrozenStorage};
use super::harmonizer::Harmonizer;
use super::layers::{Linear, RmsNorm, check_shape, hf_flat, named_param};
use crate::error::{Error, Result};
use crate::names;
use crate::weights::{HostTensor, WeightSource};

/// Logits alive at once when the head runs chunk by chunk for training (16 MiB of f32; 85
/// rows of SmolLM2's 49,152-token vocabulary).
pub const HEAD_CHUNK_LOGITS: usize = 4 << 20;

/// Logits alive at once when the head only scores (no gradient: one chunk of logits and its
/// log-softmax at a time): 64 MiB of f32, 341 rows of SmolLM2's vocabulary, so evaluation's
/// batches mostly stay one matmul (smaller chunks cost it ~15 %).
pub const SCORING_CHUNK_LOGITS: usize = 16 << 20;

/// A training loss through the frozen vocabulary head ([`Llama::head_loss`]).
pub struct HeadLoss {
    /// The mean cross-entropy, detached: what to report.
    pub mean: Tensor<1>,
    /// `Σ hidden · ∂mean/∂hidden` with the gradient held constant: its backward gives every
    /// tensor upstream of the hidden states exactly the gradient of `mean`. Its value means
    /// nothing.
    pub surrogate: Tensor<1>,
}

/// `(start, rows)` of consecutive chunks of at most `chunk_rows` rows covering `0..n`.
fn row_chunks(n: usize, chunk_rows: usize) -> impl Iterator<Item = (usize, usize)> {
    let chunk_rows = chunk_rows.max(1);
    (0..n)
        .step_by(chunk_rows)
        .map(move |start| (start, chunk_rows.min(n - start)))
}

/// Where the input tokens sit: rotary tables `cos`, `sin` of shape `[1 or batch, 1, len,
/// head_dim]` for their positions and, when a row packs several sequences that share a prefix
/// (see `eval::loglik`), which tokens each may attend to.
pub struct Positions {
    pub cos: Tensor<4>,
    pub sin: Tensor<4>,
    /// `[batch, 1, len, len]`, true where attention is forbidden; `None`: plain causal rows.
    pub mask: Option<Tensor<4, Bool>>,
}

impl Positions {
    /// Consecutive positions `start..start + len` in every row.
    /// `inv_freq`: the `head_dim / 2` inverse frequencies (`LlamaConfig::rope_inv_freq`).
    pub fn new(inv_freq: &[f64], start: usize, len: usize, device: &Device) -> Self {
        let (cos, sin) = rotary_tables(inv_freq, &[(start..start + len).collect()], device);
        Self {
            cos,
            sin,
            mask: None,
        }
    }

    /// Packed rows: `positions[row][i]` is token i's position, and token i may attend to an
    /// earlier token j of its row when `branch[row][j]` is 0 (the shared prefix) or equals its
    /// own branch. All rows have the same length.
    pub fn packed(
        inv_freq: &[f64],
        positions: &[Vec<usize>],
        branch: &[Vec<u32>],
        device: &Device,
    ) -> Self {
        let (cos, sin) = rotary_tables(inv_freq, positions, device);
        let (b, t) = (branch.len(), branch.first().map_or(0, Vec::len));
        let mut forbidden = Vec::with_capacity(b * t * t);
        for row in branch {
            for (q, &bq) in row.iter().enumerate() {
                forbidden.extend(
                    row.iter()
                        .enumerate()
                        .map(|(k, &bk)| k > q || (bk != 0 && bk != bq)),
                );
            }
        }
        let mask = Tensor::<3, Bool>::from_data(TensorData::new(forbidden, [b, t, t]), device);
        Self {
            cos,
            sin,
            mask: Some(mask.unsqueeze_dim(1)),
        }
    }

    /// x: `[batch, heads, len, head_dim]`; HF's `x*cos + rotate_half(x)*sin`.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        super::rotary::rotary(x, self.cos.clone(), self.sin.clone())
    }
}

/// `cos`, `sin` `[rows, 1, len, head_dim]` for the given positions of each row (HF's layout:
/// the `head_dim / 2` angles twice).
fn rotary_tables(
    inv_freq: &[f64],
    positions: &[Vec<usize>],
    device: &Device,
) -> (Tensor<4>, Tensor<4>) {
    let head_dim = 2 * inv_freq.len();
    let (rows, len) = (positions.len(), positions.first().map_or(0, Vec::len));
    let mut cos = Vec::with_capacity(rows * len * head_dim);
    let mut sin = Vec::with_capacity(rows * len * head_dim);
    for &p in positions.iter().flatten() {
        let angles: Vec<f64> = inv_freq.iter().map(|f| p as f64 * f).collect();
        for _ in 0..2 {
            cos.extend(angles.iter().map(|a| a.cos() as f32));
            sin.extend(angles.iter().map(|a| a.sin() as f32));
        }
    }
    let shape = [rows, 1, len, head_dim];
    (
        Tensor::from_data(TensorData::new(cos, shape), device),
        Tensor::from_data(TensorData::new(sin, shape), device),
    )
}

/// Cached keys/values of one layer, `[batch, kv_heads, past_len, head_dim]`.
#[derive(Clone, Default)]
pub struct LayerCache {
    pub kv: Option<(Tensor<4>, Tensor<4>)>,
}

#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl Attention {
    pub fn forward(
        &self,
        x: Tensor<3>,
        positions: &Positions,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (nh, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let heads =
            |p: &Linear, n: usize| p.forward(x.clone()).reshape([b, t, n, hd]).swap_dims(1, 2);
        let q = positions.apply(heads(&self.q_proj, nh));
        let mut k = positions.apply(heads(&self.k_proj, nkv));
        let mut v = heads(&self.v_proj, nkv);
        let mut past = 0;
        if let Some(cache) = cache {
            if let Some((pk, pv)) = cache.kv.take() {
                past = pk.dims()[2];
                k = Tensor::cat(vec![pk, k], 2);
                v = Tensor::cat(vec![pv, v], 2);
            }
            cache.kv = Some((k.clone(), v.clone()));
        }
        let total = past + t;
        // Grouped-query attention: each KV head serves n_heads / n_kv_heads query heads.
        let rep = nh / nkv;
        let expand = |z: Tensor<4>| {
            if rep == 1 {
                z
            } else {
                z.unsqueeze_dim::<5>(2)
                    .expand([b, nkv, rep, total, hd])
                    .reshape([b, nh, total, hd])
            }
        };
        let (k, v) = (expand(k), expand(v));
        // Query i (absolute past+i) sees keys j <= past+i. Without a cache that is plain causal
        // masking, which backends fuse; one new token sees everything; otherwise an explicit
        // mask (`tril_mask` is true where attention is forbidden).
        let (mask, is_causal) = if let Some(mask) = &positions.mask {
            debug_assert_eq!(past, 0, "packed rows are scored without a cache");
            (Some(mask.clone().expand([b, nh, t, total])), false)
        } else if past == 0 {
            (None, t > 1)
        } else if t == 1 {
            (None, false)
        } else {
            let mask = Tensor::<2, Bool>::tril_mask([t, total], past as i64, &q.device())
                .unsqueeze::<4>()
                .expand([b, nh, t, total]);
            (Some(mask), false)
        };
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal,
        };
        // Training: our attention, whose backward pass keeps one score-sized tensor per layer
        // (`model::attention`); it takes the causal mask explicitly.
        let out = if q.is_autodiff() {
            let mask = mask.unwrap_or_else(|| {
                Tensor::<2, Bool>::tril_mask([t, total], past as i64, &q.device())
                    .unsqueeze::<4>()
                    .expand([b, nh, t, total])
            });
            super::attention::attention(q, k, v, mask)
        } else {
            attention(q, k, v, mask, None, options)
        };
        let out = out.swap_dims(1, 2).reshape([b, t, nh * hd]);
        self.o_proj.forward(out)
    }
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = self.gate_proj.forward(x.clone());
        let up = self.up_proj.forward(x);
        self.down_proj.forward(super::swiglu::swiglu(gate, up))
    }
}

/// One pre-norm decoder block.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl DecoderLayer {
    pub fn forward(
        &self,
        x: Tensor<3>,
        positions: &Positions,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let h = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), positions, cache);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}

impl DecoderLayer {
    /// The layer's tensors flattened on the device in HF layout (`[out, in]` projections),
    /// with the HF names of original layer `layer` and their shapes (LoRA factors excluded).
    pub fn hf_tensors(&self, layer: usize) -> Vec<(String, Vec<usize>, Tensor<1>)> {
        let flat = |t: Tensor<2>| hf_flat(t.transpose());
        let norm = |t: Tensor<1>| (vec![t.dims()[0]], t.detach());
        let projections = self.projections(layer);
        let (attn, mlp) = projections.split_at(4);
        let mut parts = vec![norm(self.input_layernorm.weight.val())];
        parts.extend(attn.iter().map(|(_, p)| flat(p.weight.val())));
        parts.push(norm(self.post_attention_layernorm.weight.val()));
        parts.extend(mlp.iter().map(|(_, p)| flat(p.weight.val())));
        names::layer_tensors(layer)
            .into_iter()
            .zip(parts)
            .map(|(name, (shape, t))| (name, shape, t))
            .collect()
    }

    /// The projection named `target` (one of [`names::PROJECTIONS`]).
    pub(crate) fn projection_mut(&mut self, target: &str) -> Option<&mut Linear> {
        Some(match target {
            "q_proj" => &mut self.self_attn.q_proj,
            "k_proj" => &mut self.self_attn.k_proj,
            "v_proj" => &mut self.self_attn.v_proj,
            "o_proj" => &mut self.self_attn.o_proj,
            "gate_proj" => &mut self.mlp.gate_proj,
            "up_proj" => &mut self.mlp.up_proj,
            "down_proj" => &mut self.mlp.down_proj,
            _ => return None,
        })
    }

    /// The layer's projections with their HF module names (in original layer `layer`).
    pub fn projections(&self, layer: usize) -> Vec<(String, &Linear)> {
        let a = &self.self_attn;
        let m = &self.mlp;
        let all = [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ];
        names::PROJECTIONS
            .iter()
            .zip(all)
            .map(|(t, l)| (names::projection(layer, t), l))
            .collect()
    }

    pub fn has_lora(&self) -> bool {
        self.projections(0).iter().any(|(_, l)| l.lora.is_some())
    }
}

/// What occupies one position of the layer stack.
// One slot per layer in a Vec: the size difference between variants costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum LayerSlot {
    /// The original decoder layer (raw, or with low-rank attention rebuilt from its factors).
    Decoder(DecoderLayer),
    /// ScaleOT's stand-in for a replaced layer.
    Harmonizer(Harmonizer),
}

impl LayerSlot {
    pub fn forward(
        &self,
        x: Tensor<3>,
        positions: &Positions,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        match self {
            Self::Decoder(layer) => layer.forward(x, positions, cache),
            Self::Harmonizer(h) => h.forward(x),
        }
    }
}

#[derive(Module, Debug)]
pub struct Llama {
    /// `[vocab, hidden]`
    pub embed_tokens: Param<Tensor<2>>,
    pub layers: Vec<LayerSlot>,
    pub norm: RmsNorm,
    /// `[hidden, vocab]`; `None` when tied to the embedding.
    pub lm_head: Option<Linear>,
    /// RoPE's inverse frequencies (`head_dim / 2` of them, Llama 3 scaling applied).
    pub rope_inv_freq: Vec<f64>,
    /// For each stack position, the index of the layer in the full model it came from.
    pub layer_index: Vec<usize>,
}

/// Per-layer caches for incremental decoding.
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    pub len: usize,
}

/// How the loader fills one layer position of the full model. Emulators map their layer plan
/// onto this (`emulator::plan::LayerKind::source`); the full model is all `Decoder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerSource {
    /// The decoder layer's tensors (low-rank factors read as dense weights where the source
    /// multiplies them out), its matrices kept as the storage given (f16 for frozen layers only).
    Decoder(FrozenStorage),
    /// A harmonizer's tensors: ScaleOT's stand-in for the layer.
    Harmonizer(FrozenStorage),
    /// Nothing: the layer is left out of the stack.
    Absent,
}

impl Llama {
    /// Builds the full model from any weight source, checking every tensor's shape.
    pub fn load(cfg: &LlamaConfig, src: &dyn WeightSource, device: &Device) -> Result<Self> {
        let layers = vec![LayerSource::Decoder(FrozenStorage::F32); cfg.num_hidden_layers];
        Self::load_layers(cfg, src, &layers, FrozenStorage::F32, device)
    }

    /// Builds the layers `layers` asks for (one entry per layer of the full model), each
    /// under its original names; the embedding and the head kept as `vocabulary` (they are
    /// always frozen).
    pub fn load_layers(
        cfg: &LlamaConfig,
        src: &dyn WeightSource,
        layers_wanted: &[LayerSource],
        vocabulary: FrozenStorage,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        if layers_wanted.len() != cfg.num_hidden_layers {
            return Err(Error::Invalid(format!(
                "the layer plan covers {} layers but the model has {}",
                layers_wanted.len(),
                cfg.num_hidden_layers
            )));
        }
        let (h, f, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim());
        let q = cfg.attention_width();
        let fetch = |name: &str, shape: &[usize]| -> Result<HostTensor> {
            let t = src.required(name)?;
            check_shape(name, &t, shape)?;
            Ok(t)
        };
        let vector = |name: &str| -> Result<Param<Tensor<1>>> {
            let t = fetch(name, &[h])?;
            Ok(named_param(
                name,
                Tensor::from_data(TensorData::new(t.data, [h]), device),
            ))
        };
        // HF stores projections `[out, in]`; burn wants `[in, out]`.
        let proj = |name: &str, out: usize, inp: usize, storage| -> Result<Linear> {
            let t = fetch(name, &[out, inp])?;
            Ok(Linear::from_hf(name, &t.data, [out, inp], device, storage))
        };
        let norm = |name: &str| -> Result<RmsNorm> {
            Ok(RmsNorm {
                weight: vector(name)?,
                eps: cfg.rms_norm_eps,
            })
        };
        let embed = fetch(names::EMBED, &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let mut layer_index = Vec::with_capacity(cfg.num_hidden_layers);
        for (i, source) in layers_wanted.iter().enumerate() {
            let storage = match *source {
                LayerSource::Decoder(storage) => storage,
                LayerSource::Absent => continue,
                LayerSource::Harmonizer(storage) => {
                    layer_index.push(i);
                    let harmonizer =
                        Harmonizer::load(src, i, h, cfg.rms_norm_eps, device, storage)?;
                    layers.push(LayerSlot::Harmonizer(harmonizer));
                    continue;
                }
            };
            layer_index.push(i);
            let p = |proj: &str| names::projection_weight(i, proj);
            let kv = cfg.num_key_value_heads * hd;
            layers.push(LayerSlot::Decoder(DecoderLayer {
                input_layernorm: norm(&names::input_norm(i))?,
                self_attn: Attention {
                    q_proj: proj(&p("q_proj"), q, h, storage)?,
                    k_proj: proj(&p("k_proj"), kv, h, storage)?,
                    v_proj: proj(&p("v_proj"), kv, h, storage)?,
                    o_proj: proj(&p("o_proj"), h, q, storage)?,
                    n_heads: cfg.num_attention_heads,
                    n_kv_heads: cfg.num_key_value_heads,
                    head_dim: hd,
                },
                post_attention_layernorm: norm(&names::post_attention_norm(i))?,
                mlp: Mlp {
                    gate_proj: proj(&p("gate_proj"), f, h, storage)?,
                    up_proj: proj(&p("up_proj"), f, h, storage)?,
                    down_proj: proj(&p("down_proj"), h, f, storage)?,
                },
            }));
        }
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            match src.tensor(names::LM_HEAD)? {
                Some(_) => Some(proj(names::LM_HEAD, cfg.vocab_size, h, vocabulary)?),
                None => None, // many checkpoints tie without saying so
            }
        };
        Ok(Self {
            embed_tokens: named_param(
                names::EMBED,
                Tensor::from_data(
                    TensorData::new(embed.data, [cfg.vocab_size, h]),
                    (device, vocabulary.dtype()),
                ),
            ),
            layers,
            norm: norm(names::FINAL_NORM)?,
            lm_head,
            rope_inv_freq: cfg.rope_inv_freq(),
            layer_index,
        })
    }

    /// Consecutive positions `start..start + len` in every row.
    pub fn positions(&self, start: usize, len: usize, device: &Device) -> Positions {
        Positions::new(&self.rope_inv_freq, start, len, device)
    }

    pub fn vocab_size(&self) -> usize {
        self.embed_tokens.dims()[0]
    }

    pub fn device(&self) -> Device {
        self.embed_tokens.val().device()
    }

    /// Token ids `[batch, len]` → embeddings `[batch, len, hidden]`.
    pub fn embed(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = tokens.dims();
        let hidden = self.embed_tokens.dims()[1];
        let rows = self.embed_tokens.val().select(0, tokens.reshape([b * t]));
        frozen::widened(rows).reshape([b, t, hidden])
    }

    /// Runs the layers at stack positions `range` over hidden states `x` that start at
    /// position 0 (no cache): the building block of layer-wise distillation.
    pub fn run_layers(&self, x: Tensor<3>, range: std::ops::Range<usize>) -> Tensor<3> {
        let [_, t, _] = x.dims();
        let positions = self.positions(0, t, &x.device());
        self.layers[range]
            .iter()
            .fold(x, |h, layer| layer.forward(h, &positions, None))
    }

    /// Final-normed hidden states `[batch, len, hidden]`; `cache` enables incremental decoding.
    pub fn hidden(&self, tokens: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3> {
        let [_, t] = tokens.dims();
        let start = cache.as_ref().map_or(0, |c| c.len);
        let positions = self.positions(start, t, &tokens.device());
        self.hidden_at(tokens, &positions, cache)
    }

    /// [`Self::hidden`] for tokens at the given positions (e.g. packed rows).
    pub fn hidden_at(
        &self,
        tokens: Tensor<2, Int>,
        positions: &Positions,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [_, t] = tokens.dims();
        let mut x = self.embed(tokens);
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(x, positions, layer_cache);
        }
        if let Some(c) = cache {
            c.len += t;
        }
        self.norm.forward(x)
    }

    /// Hidden states `[batch, len, hidden]` → logits `[batch, len, vocab]`.
    pub fn head(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                let [b, t, d] = hidden.dims();
                let embed = self.embed_tokens.val().transpose();
                frozen::product(hidden.reshape([b * t, d]), embed).reshape([
                    b,
                    t,
                    self.vocab_size(),
                ])
            }
        }
    }

    /// The vocabulary head as one `[hidden, vocab]` matrix (the tied embedding, transposed,
    /// or the untied head's weight; the head never carries LoRA), as stored: multiply with
    /// [`frozen::product`].
    fn head_matrix(&self) -> Tensor<2> {
        match &self.lm_head {
            Some(head) => head.weight.val(),
            None => self.embed_tokens.val().transpose(),
        }
    }

    /// Rows of hidden states per vocabulary chunk: at most [`HEAD_CHUNK_LOGITS`] logits exist
    /// at once, whatever the batch.
    pub fn head_chunk_rows(&self) -> usize {
        self.rows_for_logits(HEAD_CHUNK_LOGITS)
    }

    /// Rows per chunk when only scoring ([`SCORING_CHUNK_LOGITS`]).
    pub fn scoring_chunk_rows(&self) -> usize {
        self.rows_for_logits(SCORING_CHUNK_LOGITS)
    }

    fn rows_for_logits(&self, logits: usize) -> usize {
        (logits / self.vocab_size().max(1)).max(1)
    }

    /// Log-probabilities of `targets` (`[n]`) given final hidden states `[n, hidden]`,
    /// computed chunk by chunk over the rows so the full `[n, vocab]` logits never exist.
    pub fn head_logprobs(&self, hidden: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
        self.head_logprobs_in_chunks(hidden, targets, self.scoring_chunk_rows())
    }

    /// [`Self::head_logprobs`] with `chunk_rows` rows per chunk.
    pub fn head_logprobs_in_chunks(
        &self,
        hidden: Tensor<2>,
        targets: Tensor<1, Int>,
        chunk_rows: usize,
    ) -> Tensor<1> {
        self.head_scores_in_chunks(hidden, targets, chunk_rows).0
    }

    /// [`Self::head_logprobs`] and, per target, its logit minus the largest logit: 0 exactly
    /// when the target is the greedy choice (lm-eval's `is_greedy`, ties counted as greedy).
    pub fn head_scores(
        &self,
        hidden: Tensor<2>,
        targets: Tensor<1, Int>,
    ) -> (Tensor<1>, Tensor<1>) {
        self.head_scores_in_chunks(hidden, targets, self.scoring_chunk_rows())
    }

    fn head_scores_in_chunks(
        &self,
        hidden: Tensor<2>,
        targets: Tensor<1, Int>,
        chunk_rows: usize,
    ) -> (Tensor<1>, Tensor<1>) {
        let [n, _] = hidden.dims();
        let head = self.head_matrix();
        let (logprobs, margins): (Vec<Tensor<1>>, Vec<Tensor<1>>) = row_chunks(n, chunk_rows)
            .map(|(start, c)| {
                let logits = frozen::product(hidden.clone().narrow(0, start, c), head.clone());
                let target = targets.clone().narrow(0, start, c).reshape([c, 1]);
                // log p(target) = logit − max − log Σ exp(logit − max): one exp and one sum
                // over the vocabulary, the log on one value per row. (Taking the log of
                // softmax's largest entry instead was off by up to 2e-4: burn's fused
                // softmax is less exact than its exp and sum.)
                let max = logits.clone().max_dim(1);
                let log_total = (logits.clone() - max.clone()).exp().sum_dim(1).log();
                let margin = logits.gather(1, target) - max;
                (
                    (margin.clone() - log_total).reshape([c]),
                    margin.reshape([c]),
                )
            })
            .unzip();
        (Tensor::cat(logprobs, 0), Tensor::cat(margins, 0))
    }

    /// Mean cross-entropy of `targets` (`[n]`) given final hidden states `[n, hidden]`, for
    /// training. The head is frozen, so backward only needs the gradient with respect to
    /// `hidden`: each chunk's logits give it at once (softmax − one-hot, times the head) and
    /// are dropped, so neither the forward nor the autodiff graph ever holds `[n, vocab]`
    /// logits (201 MB for SmolLM2 at 8 × 128 tokens). See [`HeadLoss`].
    pub fn head_loss(&self, hidden: Tensor<2>, targets: Tensor<1, Int>) -> HeadLoss {
        self.head_loss_in_chunks(hidden, targets, self.head_chunk_rows())
    }

    /// [`Self::head_loss`] with `chunk_rows` rows per chunk.
    pub fn head_loss_in_chunks(
        &self,
        hidden: Tensor<2>,
        targets: Tensor<1, Int>,
        chunk_rows: usize,
    ) -> HeadLoss {
        let [n, d] = hidden.dims();
        // Nothing here is differentiated: the gradient is computed by hand, off autodiff.
        let head = self.head_matrix().inner();
        let rows = hidden.clone().inner();
        let mut nll_sum = Tensor::<1>::zeros([1], &rows.device());
        let mut grads = Vec::new();
        for (start, c) in row_chunks(n, chunk_rows) {
            let logits = frozen::product(rows.clone().narrow(0, start, c), head.clone());
            let target = targets.clone().narrow(0, start, c);
            let (nll, d_logits) = softmax_cross_entropy(logits, target);
            nll_sum = nll_sum + nll.sum();
            grads.push(frozen::product(d_logits, head.clone().transpose()));
        }
        let d_hidden = Tensor::cat(grads, 0).div_scalar(n.max(1) as f64);
        debug_assert_eq!(d_hidden.dims(), [n, d]);
        HeadLoss {
            mean: nll_sum.div_scalar(n.max(1) as f64),
            surrogate: (hidden * d_hidden).sum(),
        }
    }

    /// Mean next-token cross-entropy of `tokens` (`[batch, len]`) given the last layer's
    /// output `x` (before the final norm), at positions `offset, offset + stride, ...` only
    /// (`stride` 1: every position; `offset` is taken modulo the stride, so a step counter
    /// rotates through all positions). The last position predicts nothing and is skipped.
    pub fn next_token_loss(
        &self,
        x: Tensor<3>,
        tokens: Tensor<2, Int>,
        stride: usize,
        offset: usize,
    ) -> Tensor<1> {
        let [b, t] = tokens.dims();
        let stride = stride.max(1);
        let (x, targets) = if stride == 1 {
            (x.slice([0..b, 0..t - 1]), tokens.slice([0..b, 1..t]))
        } else {
            let offset = offset % stride.min(t - 1);
            let at: Vec<u32> = (offset..t - 1).step_by(stride).map(|p| p as u32).collect();
            let n = at.len();
            let at = token_tensor(&[at], &tokens.device()).reshape([n]);
            (x.select(1, at.clone()), tokens.select(1, at.add_scalar(1)))
        };
        let n = targets.dims()[1];
        let logits = self.head(self.norm.forward(x));
        let vocab = logits.dims()[2];
        let logp = burn::tensor::activation::log_softmax(logits.reshape([b * n, vocab]), 1);
        logp.gather(1, targets.reshape([b * n, 1])).mean().neg()
    }

    /// Logits `[batch, len, vocab]` for token ids `[batch, len]`.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.head(self.hidden(tokens, None))
    }

    /// Makes only the layers at `trainable` (stack positions) receive gradients — only their
    /// LoRA factors where they carry LoRA; the embedding, final norm, head and every other
    /// layer are frozen.
    pub fn with_trainable_layers(self, trainable: &[usize]) -> Self {
        let layers = self
            .layers
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                if trainable.contains(&i) {
                    match l {
                        LayerSlot::Decoder(d) if d.has_lora() => LayerSlot::Decoder(d.lora_only()),
                        l => l.unfreeze(),
                    }
                } else {
                    l.freeze()
                }
            })
            .collect();
        Self {
            embed_tokens: self.embed_tokens.set_require_grad(false),
            layers,
            norm: self.norm.freeze(),
            lm_head: self.lm_head.map(Module::freeze),
            ..self
        }
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: vec![LayerCache::default(); self.layers.len()],
            len: 0,
        }
    }
}

/// Token ids as an Int tensor `[batch, len]` (rows must have equal length).
pub fn token_tensor(rows: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let len = rows.first().map_or(0, Vec::len);
    let flat: Vec<i64> = rows.iter().flatten().map(|&x| x as i64).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), len]), device)
}
