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
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks the relations the model code relies on, so a bad config is an error, not a panic.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("invalid model config: {m}")));
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 {
            return bad("vocab, hidden size and layer count must be positive".into());
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return bad(format!(
                "hidden size {} is not divisible by {} heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
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
        Ok(())
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
        let cfg = Self {
            vocab_size,
            hidden_size: num("embedding_length")? as usize,
            intermediate_size: num("feed_forward_length")? as usize,
            num_hidden_layers: num("block_count")? as usize,
            num_attention_heads: heads,
            num_key_value_heads: num("attention.head_count_kv").map_or(heads, |v| v as usize),
            rope_theta: num("rope.freq_base").unwrap_or(10_000.0),
            rms_norm_eps: num("attention.layer_norm_rms_epsilon")?,
            max_position_embeddings: num("context_length").map_or(2048, |v| v as usize),
            tie_word_embeddings: tied,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// A Hugging Face `config.json` for this model (what plug-in writes next to the weights).
    pub fn to_hf_json(&self) -> serde_json::Value {
        serde_json::json!({
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
        })
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
        let hf: Hf = serde_json::from_str(json).map_err(|source| Error::Json {
            what: "config.json".into(),
            source,
        })?;
        if let Some(t) = hf.model_type.as_deref()
            && !matches!(t, "llama" | "mistral")
        {
            return Err(Error::Architecture(t.to_owned()));
        }
        // transformers ≥ 5 moves rope_theta into `rope_parameters`.
        let rope_theta = hf
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(hf.rope_theta);
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
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
