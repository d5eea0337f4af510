//! LLaMA-family hyper-parameters, read from GGUF metadata or a Hugging Face `config.json`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::weights::gguf::{Gguf, MetaValue};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// The attention head width when it is not `hidden_size / num_attention_heads` (the query
    /// and output projections are then `[heads · head_dim, hidden]` and its transpose).
    #[serde(default, rename = "head_dim", skip_serializing_if = "Option::is_none")]
    pub explicit_head_dim: Option<usize>,
    /// Llama 3.1's long-context RoPE frequency scaling, when the checkpoint asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Llama3RopeScaling>,
}

/// Llama 3.1's RoPE scaling (transformers' `rope_type: "llama3"`): frequencies whose
/// wavelength exceeds `original_max_position_embeddings / low_freq_factor` are divided by
/// `factor`, those below `original / high_freq_factor` kept, the band between interpolated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// Most layers a config may declare (the largest open models have under 200).
pub const MAX_LAYERS: usize = 1024;
/// Widest hidden size a config may declare.
pub const MAX_WIDTH: usize = 65_536;
/// Largest vocabulary a config may declare.
pub const MAX_VOCAB: usize = 1 << 22;

impl LlamaConfig {
    /// The attention head width.
    pub fn head_dim(&self) -> usize {
        self.explicit_head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Width of the query (and attention output) projection: heads × head width.
    pub fn attention_width(&self) -> usize {
        self.num_attention_heads * self.head_dim()
    }

    /// `[out, in]` of a decoder projection (`q_proj` ... `down_proj`), as Hugging Face stores it.
    pub fn projection_shape(&self, proj: &str) -> Option<[usize; 2]> {
        let (h, f, q) = (
            self.hidden_size,
            self.intermediate_size,
            self.attention_width(),
        );
        let kv = self.num_key_value_heads * self.head_dim();
        Some(match proj {
            "q_proj" => [q, h],
            "k_proj" | "v_proj" => [kv, h],
            "o_proj" => [h, q],
            "gate_proj" | "up_proj" => [f, h],
            "down_proj" => [h, f],
            _ => return None,
        })
    }

    /// RoPE's inverse frequencies `theta^(-2i/head_dim)`, `i < head_dim / 2`, with Llama 3's
    /// scaling applied when the config has it (as transformers' `_compute_llama3_parameters`).
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim();
        let base = (0..d / 2).map(|i| self.rope_theta.powf(-((2 * i) as f64) / d as f64));
        let Some(s) = &self.rope_scaling else {
            return base.collect();
        };
        let low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
        let high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
        base.map(|f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen < high_freq_wavelen {
                f
            } else if wavelen > low_freq_wavelen {
                f / s.factor
            } else {
                let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * f / s.factor + smooth * f
            }
        })
        .collect()
    }

    /// Checks the relations the model code relies on, so a bad config is an error, not a panic.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("invalid model config: {m}")));
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 {
            return bad("vocab, hidden size and layer count must be positive".into());
        }
        if self.num_attention_heads == 0
            || (self.explicit_head_dim.is_none()
                && !self.hidden_size.is_multiple_of(self.num_attention_heads))
        {
            return bad(format!(
                "hidden size {} is not divisible by {} heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.head_dim() == 0 || !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head dim {} must be even for RoPE",
                self.head_dim()
            ));
        }
        if self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        // Counts far beyond any real model are a damaged or crafted file: refused before
        // anything is allocated for them.
        if self.num_hidden_layers > MAX_LAYERS
            || self.hidden_size > MAX_WIDTH
            || self.intermediate_size > 4 * MAX_WIDTH
            || self.num_attention_heads > self.hidden_size
            || self.vocab_size > MAX_VOCAB
        {
            return bad(format!(
                "{} layers, width {} (MLP {}), {} heads, {} vocabulary entries: beyond any model this can run (at most {MAX_LAYERS} layers, width {MAX_WIDTH}, {MAX_VOCAB} tokens)",
                self.num_hidden_layers,
                self.hidden_size,
                self.intermediate_size,
                self.num_attention_heads,
                self.vocab_size
            ));
        }
        if self.max_position_embeddings == 0 {
            return bad("the context length must be positive".into());
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return bad(format!(
                "the RMSNorm epsilon must be positive, not {}",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!(
                "the RoPE base (rope_theta) must be positive, not {}",
                self.rope_theta
            ));
        }
        if let Some(s) = &self.rope_scaling {
            let ok = |x: f64| x.is_finite() && x > 0.0;
            if !(ok(s.factor)
                && ok(s.low_freq_factor)
                && ok(s.original_max_position_embeddings)
                && s.high_freq_factor.is_finite()
                && s.high_freq_factor > s.low_freq_factor)
            {
                return bad(format!(
                    "llama3 rope scaling needs positive factors with high_freq_factor > low_freq_factor, not {s:?}"
                ));
            }
        }
        Ok(())
    }

    /// The `llama.*` GGUF metadata llama.cpp reads, the inverse of [`Self::from_gguf`].
    /// RoPE scaling has no GGUF form here (`from_gguf` refuses it too).
    pub fn to_gguf_metadata(&self) -> Result<Vec<(String, MetaValue)>> {
        if self.rope_scaling.is_some() {
            return Err(Error::Invalid(
                "this model uses Llama-3 RoPE scaling, which the GGUF export does not write: use the Hugging Face folder (`plugin --out`) instead".into(),
            ));
        }
        let n = |v: usize| MetaValue::UInt(v as u64);
        let mut meta = vec![
            ("general.architecture", MetaValue::Str("llama".into())),
            ("llama.block_count", n(self.num_hidden_layers)),
            ("llama.context_length", n(self.max_position_embeddings)),
            ("llama.embedding_length", n(self.hidden_size)),
            ("llama.feed_forward_length", n(self.intermediate_size)),
            ("llama.attention.head_count", n(self.num_attention_heads)),
            ("llama.attention.head_count_kv", n(self.num_key_value_heads)),
            ("llama.rope.freq_base", MetaValue::Float(self.rope_theta)),
            (
                "llama.attention.layer_norm_rms_epsilon",
                MetaValue::Float(self.rms_norm_eps),
            ),
            ("llama.vocab_size", n(self.vocab_size)),
            ("llama.rope.dimension_count", n(self.head_dim())),
        ];
        if self.explicit_head_dim.is_some() {
            meta.push(("llama.attention.key_length", n(self.head_dim())));
            meta.push(("llama.attention.value_length", n(self.head_dim())));
        }
        Ok(meta.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    /// From `<arch>.*` GGUF metadata. The vocabulary size falls back to the token list.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = g
            .get("general.architecture")
            .and_then(MetaValue::as_str)
            .ok_or_else(|| Error::MissingMetadata {
                key: "general.architecture".into(),
                hint: "not a model GGUF, or written by a very old converter",
            })?
            .to_owned();
        if !matches!(arch.as_str(), "llama" | "mistral" | "smollm") {
            return Err(Error::Architecture(arch));
        }
        let hint = "the GGUF lacks LLaMA hyper-parameters; re-convert it with llama.cpp";
        let num = |key: &str| -> Result<f64> {
            let full = format!("{arch}.{key}");
            g.get(&full)
                .and_then(MetaValue::as_f64)
                .ok_or(Error::MissingMetadata { key: full, hint })
        };
        let vocab_size = match num("vocab_size") {
            Ok(v) => v as usize,
            Err(e) => g
                .get("tokenizer.ggml.tokens")
                .and_then(MetaValue::as_array)
                .map(<[_]>::len)
                .ok_or(e)?,
        };
        let heads = num("attention.head_count")? as usize;
        let tied = g.tensor_info("output.weight").is_none();
        // Llama 3.1 GGUFs carry their RoPE scaling as per-frequency factors; other scalings
        // are named in metadata. Neither is implemented for GGUF: refuse rather than misread.
        let scaling = g
            .get(&format!("{arch}.rope.scaling.type"))
            .and_then(MetaValue::as_str)
            .unwrap_or("none");
        if g.tensor_info("rope_freqs.weight").is_some() || scaling != "none" {
            return Err(Error::Invalid(format!(
                "this GGUF uses RoPE frequency scaling ({}), which is not implemented for GGUF: load the model's Hugging Face checkpoint (config.json with rope_scaling) instead",
                if scaling == "none" {
                    "rope_freqs"
                } else {
                    scaling
                }
            )));
        }
        let hidden = num("embedding_length")? as usize;
        let head_dim = num("attention.key_length").ok().map(|v| v as usize);
        if let Some(value) = num("attention.value_length").ok().map(|v| v as usize)
            && Some(value) != head_dim
        {
            return Err(Error::Invalid(format!(
                "this GGUF's key and value head widths differ ({head_dim:?} and {value}), which LLaMA does not have"
            )));
        }
        let cfg = Self {
            vocab_size,
            hidden_size: hidden,
            intermediate_size: num("feed_forward_length")? as usize,
            num_hidden_layers: num("block_count")? as usize,
            num_attention_heads: heads,
            num_key_value_heads: num("attention.head_count_kv").map_or(heads, |v| v as usize),
            rope_theta: num("rope.freq_base").unwrap_or(10_000.0),
            rms_norm_eps: num("attention.layer_norm_rms_epsilon")?,
            max_position_embeddings: num("context_length").map_or(2048, |v| v as usize),
            tie_word_embeddings: tied,
            explicit_head_dim: head_dim.filter(|&d| heads == 0 || d != hidden / heads),
            rope_scaling: None,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// A Hugging Face `config.json` for this model (what plug-in writes next to the weights).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim(),
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "torch_dtype": "float32"
        });
        if let Some(s) = &self.rope_scaling {
            json["rope_scaling"] = serde_json::json!({
                "rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            });
        }
        json
    }

    /// From a Hugging Face `config.json` (LlamaForCausalLM and relatives).
    pub fn from_hf_json(json: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Hf {
            #[serde(default)]
            model_type: Option<String>,
            vocab_size: usize,
            hidden_size: usize,
            intermediate_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            #[serde(default = "default_theta")]
            rope_theta: f64,
            #[serde(default)]
            rope_parameters: Option<serde_json::Value>,
            #[serde(default)]
            rope_scaling: Option<serde_json::Value>,
            #[serde(default)]
            head_dim: Option<usize>,
            #[serde(default)]
            hidden_act: Option<String>,
            #[serde(default)]
            attention_bias: bool,
            #[serde(default)]
            mlp_bias: bool,
            #[serde(default)]
            partial_rotary_factor: Option<f64>,
            #[serde(default = "default_eps")]
            rms_norm_eps: f64,
            #[serde(default = "default_ctx")]
            max_position_embeddings: usize,
            #[serde(default)]
            tie_word_embeddings: bool,
        }
        fn default_theta() -> f64 {
            10_000.0
        }
        fn default_eps() -> f64 {
            1e-6
        }
        fn default_ctx() -> usize {
            2048
        }
        let hf: Hf = serde_json::from_str(json).map_err(|error| Error::Json {
            what: "config.json".into(),
            error,
        })?;
        if let Some(t) = hf.model_type.as_deref()
            && !matches!(t, "llama" | "mistral")
        {
            return Err(Error::Architecture(t.to_owned()));
        }
        // What this decoder does not implement is refused, never silently ignored.
        let unsupported = |what: String| {
            Err(Error::Invalid(format!(
                "config.json: {what} is not supported (LLaMA-family decoders with SiLU MLPs, no biases, full rotary embeddings)"
            )))
        };
        if let Some(act) = hf.hidden_act.as_deref().filter(|a| *a != "silu") {
            return unsupported(format!("hidden_act `{act}`"));
        }
        if hf.attention_bias || hf.mlp_bias {
            return unsupported("a projection bias (attention_bias / mlp_bias)".into());
        }
        if let Some(f) = hf.partial_rotary_factor.filter(|f| *f != 1.0) {
            return unsupported(format!("partial_rotary_factor {f}"));
        }
        // transformers ≥ 5 moves rope_theta and the scaling into `rope_parameters`.
        let rope_theta = hf
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(hf.rope_theta);
        let rope_scaling = match (&hf.rope_scaling, &hf.rope_parameters) {
            (Some(s), _) if !s.is_null() => rope_scaling(s)?,
            (_, Some(p)) => rope_scaling(p)?,
            _ => None,
        };
        let cfg = Self {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            rope_theta,
            rms_norm_eps: hf.rms_norm_eps,
            max_position_embeddings: hf.max_position_embeddings,
            tie_word_embeddings: hf.tie_word_embeddings,
            explicit_head_dim: hf.head_dim.filter(|&d| {
                hf.num_attention_heads == 0 || d != hf.hidden_size / hf.num_attention_heads
            }),
            rope_scaling,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// A config's RoPE scaling (`rope_scaling`, or transformers 5's `rope_parameters`): none for
/// the default type, Llama 3's, or a refusal naming the type.
fn rope_scaling(v: &serde_json::Value) -> Result<Option<Llama3RopeScaling>> {
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => {
            let num = |key: &str| {
                v.get(key)
                    .and_then(serde_json::Value::as_f64)
                    .ok_or_else(|| {
                        Error::Invalid(format!("config.json: llama3 rope scaling lacks `{key}`"))
                    })
            };
            Ok(Some(Llama3RopeScaling {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            }))
        }
        other => Err(Error::Invalid(format!(
            "config.json: RoPE scaling `{other}` is not supported (only llama3): the model's positions would be misread"
        ))),
    }
}
