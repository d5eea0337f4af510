//! From file bytes to a ready model + tokenizer, for both GGUF and Hugging Face checkpoints.

use crate::sha256_hex;
use burn::tensor::Device;

use super::{Llama, LlamaConfig};
use crate::error::Result;
use crate::names;
use crate::tokenizer::Tokenizer;
use crate::weights::{Gguf, GgufSource, SafetensorsSource, WeightSource};

/// A model with its tokenizer and the identity of the bytes it came from.
pub struct LoadedModel {
    pub config: LlamaConfig,
    pub model: Llama,
    pub tokenizer: Tokenizer,
    /// sha256 of the weight bytes (all shards in order), hex.
    pub weights_sha256: String,
}

/// The raw files of a base model, held in memory so weight sources can borrow them.
pub enum ModelBytes {
    Gguf(Vec<u8>),
    Hf {
        config: String,
        tokenizer: String,
        /// `tokenizer_config.json`: special tokens by role and the chat template (optional).
        tokenizer_config: Option<String>,
        shards: Vec<Vec<u8>>,
    },
}

/// An opened base model: config, tokenizer, and its tensors by HF name.
pub struct OpenedModel<'a> {
    pub config: LlamaConfig,
    pub tokenizer: Tokenizer,
    pub source: Box<dyn WeightSource + 'a>,
    pub sha256: String,
}

impl<'a> OpenedModel<'a> {
    /// A GGUF file: config, tokenizer and weights all come from it.
    pub fn gguf(bytes: &'a [u8]) -> Result<Self> {
        let gguf = Gguf::parse(bytes)?;
        let config = LlamaConfig::from_gguf(&gguf)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        tokenizer.check_fits(config.vocab_size)?;
        let heads = (config.num_attention_heads, config.num_key_value_heads);
        Ok(Self {
            config,
            tokenizer,
            source: Box::new(GgufSource::new(gguf, heads.0, heads.1)),
            sha256: sha256_hex(&[bytes]),
        })
    }

    /// A Hugging Face checkpoint: `config.json`, `tokenizer.json`, optionally
    /// `tokenizer_config.json` (special tokens by role, the chat template), and safetensors shards.
    pub fn hf(
        config_json: &str,
        tokenizer_json: &str,
        tokenizer_config: Option<&str>,
        shards: &[&'a [u8]],
    ) -> Result<Self> {
        let config = LlamaConfig::from_hf_json(config_json)?;
        let tokenizer = Tokenizer::from_hf_files(tokenizer_json, tokenizer_config)?;
        tokenizer.check_fits(config.vocab_size)?;
        Ok(Self {
            config,
            tokenizer,
            source: Box::new(SafetensorsSource::new(shards)?),
            sha256: sha256_hex(shards),
        })
    }
}

impl ModelBytes {
    /// Parses headers and metadata; tensors are decoded on request.
    pub fn open(&self) -> Result<OpenedModel<'_>> {
        match self {
            Self::Gguf(bytes) => OpenedModel::gguf(bytes),
            Self::Hf {
                config,
                tokenizer,
                tokenizer_config,
                shards,
            } => {
                let refs: Vec<&[u8]> = shards.iter().map(Vec::as_slice).collect();
                OpenedModel::hf(config, tokenizer, tokenizer_config.as_deref(), &refs)
            }
        }
    }
}

impl LoadedModel {
    /// Builds the full model from an opened base model.
    pub fn from_opened(opened: OpenedModel<'_>, device: &Device) -> Result<Self> {
        let model = Llama::load(&opened.config, opened.source.as_ref(), device)?;
        Ok(Self {
            config: opened.config,
            model,
            tokenizer: opened.tokenizer,
            weights_sha256: opened.sha256,
        })
    }

    /// A GGUF file, from its bytes.
    pub fn from_gguf(bytes: &[u8], device: &Device) -> Result<Self> {
        Self::from_opened(OpenedModel::gguf(bytes)?, device)
    }

    /// A Hugging Face checkpoint, from its files' contents.
    pub fn from_hf(
        config_json: &str,
        tokenizer_json: &str,
        shards: &[&[u8]],
        device: &Device,
    ) -> Result<Self> {
        Self::from_opened(
            OpenedModel::hf(config_json, tokenizer_json, None, shards)?,
            device,
        )
    }
}

/// A full f32 checkpoint in Hugging Face layout (`model.safetensors`) from any weight source
/// (what plug-in writes).
pub fn write_checkpoint(cfg: &LlamaConfig, src: &dyn WeightSource) -> Result<Vec<u8>> {
    let tensors = src.required_all(names::checkpoint(
        cfg.num_hidden_layers,
        cfg.tie_word_embeddings,
    ))?;
    crate::weights::safetensors::write_tensors(&tensors, "pt")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::weights::gguf::MetaValue;
    use crate::weights::gguf::write_f32;

    fn llama_meta() -> Vec<(&'static str, MetaValue)> {
        vec![
            ("general.architecture", MetaValue::Str("llama".into())),
            ("llama.block_count", MetaValue::UInt(1)),
            ("llama.embedding_length", MetaValue::UInt(8)),
            ("llama.feed_forward_length", MetaValue::UInt(16)),
            ("llama.attention.head_count", MetaValue::UInt(2)),
            (
                "llama.attention.layer_norm_rms_epsilon",
                MetaValue::Float(1e-5),
            ),
            ("llama.vocab_size", MetaValue::UInt(4)),
        ]
    }

    #[test]
    fn gguf_without_tokenizer_says_so() {
        let bytes = write_f32(&llama_meta(), &[]);
        let err = LoadedModel::from_gguf(&bytes, &Device::flex())
            .err()
            .unwrap();
        assert!(
            matches!(&err, Error::MissingMetadata { key, .. } if key == "tokenizer.ggml.model"),
            "{err}"
        );
    }

    #[test]
    fn gguf_head_width_is_honoured_and_rope_scaling_refused() {
        let mut meta = llama_meta();
        meta.push(("llama.attention.key_length", MetaValue::UInt(6)));
        meta.push(("llama.attention.value_length", MetaValue::UInt(6)));
        let cfg = LlamaConfig::from_gguf(&Gguf::parse(&write_f32(&meta, &[])).unwrap()).unwrap();
        assert_eq!((cfg.head_dim(), cfg.attention_width()), (6, 12));
        meta.push(("llama.rope.scaling.type", MetaValue::Str("yarn".into())));
        let err = LlamaConfig::from_gguf(&Gguf::parse(&write_f32(&meta, &[])).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("yarn") && err.contains("not implemented"),
            "{err}"
        );
    }

    #[test]
    fn foreign_architecture_is_refused() {
        let mut meta = llama_meta();
        meta[0].1 = MetaValue::Str("bert".into());
        let bytes = write_f32(&meta, &[]);
        let err = LoadedModel::from_gguf(&bytes, &Device::flex())
            .err()
            .unwrap();
        assert!(
            matches!(err, Error::Architecture(ref a) if a == "bert"),
            "{err}"
        );
    }

    #[test]
    fn wrong_tensor_shape_is_named() {
        let mut meta = llama_meta();
        meta.push(("tokenizer.ggml.model", MetaValue::Str("gpt2".into())));
        let toks = ["a", "b", "c", "ab"]
            .map(|t| MetaValue::Str(t.into()))
            .to_vec();
        meta.push(("tokenizer.ggml.tokens", MetaValue::Array(toks)));
        meta.push((
            "tokenizer.ggml.merges",
            MetaValue::Array(vec![MetaValue::Str("a b".into())]),
        ));
        // Embedding should be [4, 8]; give [4, 6].
        let bytes = write_f32(&meta, &[("token_embd.weight", vec![4, 6], vec![0.0; 24])]);
        let err = LoadedModel::from_gguf(&bytes, &Device::flex())
            .err()
            .unwrap();
        match err {
            Error::ShapeMismatch {
                tensor,
                expected,
                found,
            } => {
                assert_eq!(tensor, "model.embed_tokens.weight");
                assert_eq!((expected, found), (vec![4, 8], vec![4, 6]));
            }
            other => panic!("unexpected: {other}"),
        }
    }

    #[test]
    fn unsupported_quant_type_is_named() {
        let mut bytes = write_f32(&[], &[("w", vec![2, 16], vec![0.0; 32])]);
        // Patch the tensor's type id (after name, n_dims and dims) to 10 = Q2_K.
        let mut info = vec![1u8, 0, 0, 0, 0, 0, 0, 0, b'w', 2, 0, 0, 0];
        info.extend(16u64.to_le_bytes());
        info.extend(2u64.to_le_bytes());
        let at = bytes.windows(info.len()).position(|w| w == info).unwrap() + info.len();
        bytes[at] = 10;
        let g = Gguf::parse(&bytes).unwrap();
        let err = g.tensor_f32(&g.tensors[0]).unwrap_err();
        assert!(matches!(err, Error::UnsupportedQuant { .. }), "{err}");
        assert!(err.to_string().contains("ggml type id 10"), "{err}");
    }
}
