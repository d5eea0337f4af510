//! One error type for the shared core. Every variant says what is wrong *and* what to do,
//! because these messages reach people who did not write the code (CLI users, the browser page).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("not a GGUF file (magic bytes {found:?}, expected \"GGUF\"): pass a .gguf model file")]
    NotGguf { found: [u8; 4] },

    #[error(
        "GGUF version {0} is not supported (only v2 and v3): re-convert the model with a recent llama.cpp"
    )]
    GgufVersion(u32),

    #[error(
        "the weight file is truncated or corrupt: {what} needs {needed} bytes at offset {offset}, but the file has {len}; download it again"
    )]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        len: u64,
    },

    #[error("malformed weight file: {0}")]
    Malformed(String),

    #[error(
        "tensor `{tensor}` uses type {kind}, which is not supported; supported: {supported}. {remedy}"
    )]
    UnsupportedQuant {
        tensor: String,
        kind: String,
        supported: &'static str,
        /// What to do, in the file format's own terms.
        remedy: &'static str,
    },

    #[error("missing metadata `{key}` in the model file: {hint}")]
    MissingMetadata { key: String, hint: &'static str },

    #[error(
        "missing tensor `{0}` in the weights: is this a LLaMA-family checkpoint of the expected size?"
    )]
    MissingTensor(String),

    #[error(
        "tensor `{tensor}` has shape {found:?} but the model config needs {expected:?}: the weights do not match their config"
    )]
    ShapeMismatch {
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error(
        "unsupported model architecture `{0}`: only LLaMA-family decoders (llama, mistral, smollm) are supported"
    )]
    Architecture(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The parser's message is part of this one (not a separate `source()`, which error
    /// chains would print a second time).
    #[error("invalid JSON in {what}: {error}")]
    Json {
        what: String,
        error: serde_json::Error,
    },

    #[error("safetensors: {0}")]
    Safetensors(String),

    #[error("unknown task `{name}`: choose from {known}")]
    UnknownTask { name: String, known: String },

    #[error(
        "the emulator weights are corrupted (sha256 {actual}, the manifest says {expected}): download the bundle again"
    )]
    BundleCorrupt { expected: String, actual: String },

    #[error(
        "training diverged at step {step} (loss {loss}): the last good weights were kept; lower the learning rate and resume"
    )]
    Diverged { step: usize, loss: f32 },

    /// The loss is not finite before any weight has changed: the learning rate cannot be the
    /// cause.
    #[error(
        "the loss is {loss} before any training step: the model's weights or config are broken (not the learning rate); check the model or emulator files"
    )]
    BrokenModel { loss: f32 },

    #[error(
        "the compute device failed ({0}): training stopped; reload to continue from the last checkpoint"
    )]
    Device(String),

    /// A helper worker of the page's CPU fallback ([`crate::replicas`]) failed or lost step.
    #[error(
        "a helper worker failed ({0}): training stopped; train again to continue from the last checkpoint on one core"
    )]
    Helper(String),

    /// A setting the caller chose is out of range or unknown. `field` is the setting's name
    /// in the library's config (`beta`, `src_projections`): the CLI maps it to its flag
    /// (`--beta`), the page to its control; messages name no flags.
    #[error("{field} `{value}`: {reason}")]
    Setting {
        field: &'static str,
        value: String,
        reason: String,
    },

    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// An invalid setting: `field` = `value`, and why.
    pub fn setting(field: &'static str, value: impl ToString, reason: impl Into<String>) -> Self {
        Self::Setting {
            field,
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// A non-finite loss after `step` optimizer steps: divergence once weights have been
    /// trained, broken weights or config before that.
    pub fn non_finite_loss(step: usize, loss: f32) -> Self {
        match step {
            0 => Self::BrokenModel { loss },
            _ => Self::Diverged { step, loss },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
